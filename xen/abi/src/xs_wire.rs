//! `xen/include/public/io/xs_wire.h`: the xenstore wire protocol.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Header of every xenstore message (16 bytes); `len` payload bytes follow.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct XsdSockmsg {
    /// `XS_*` message type.
    pub type_: u32,
    /// Request id, echoed in the reply.
    pub req_id: u32,
    /// Transaction id (0 = none).
    pub tx_id: u32,
    /// Payload length.
    pub len: u32,
}

/// Largest payload of one message.
pub const XENSTORE_PAYLOAD_MAX: usize = 4096;
/// Longest absolute path.
pub const XENSTORE_ABS_PATH_MAX: usize = 3072;
/// Longest relative path.
pub const XENSTORE_REL_PATH_MAX: usize = 2048;

/// Message types (`enum xsd_sockmsg_type`).
pub mod msg {
    /// `XS_CONTROL` (was `XS_DEBUG`).
    pub const CONTROL: u32 = 0;
    /// `XS_DIRECTORY`.
    pub const DIRECTORY: u32 = 1;
    /// `XS_READ`.
    pub const READ: u32 = 2;
    /// `XS_GET_PERMS`.
    pub const GET_PERMS: u32 = 3;
    /// `XS_WATCH`.
    pub const WATCH: u32 = 4;
    /// `XS_UNWATCH`.
    pub const UNWATCH: u32 = 5;
    /// `XS_TRANSACTION_START`.
    pub const TRANSACTION_START: u32 = 6;
    /// `XS_TRANSACTION_END`.
    pub const TRANSACTION_END: u32 = 7;
    /// `XS_INTRODUCE`.
    pub const INTRODUCE: u32 = 8;
    /// `XS_RELEASE`.
    pub const RELEASE: u32 = 9;
    /// `XS_GET_DOMAIN_PATH`.
    pub const GET_DOMAIN_PATH: u32 = 10;
    /// `XS_WRITE`.
    pub const WRITE: u32 = 11;
    /// `XS_MKDIR`.
    pub const MKDIR: u32 = 12;
    /// `XS_RM`.
    pub const RM: u32 = 13;
    /// `XS_SET_PERMS`.
    pub const SET_PERMS: u32 = 14;
    /// `XS_WATCH_EVENT` (server to client only).
    pub const WATCH_EVENT: u32 = 15;
    /// `XS_ERROR` (server to client only).
    pub const ERROR: u32 = 16;
    /// `XS_IS_DOMAIN_INTRODUCED`.
    pub const IS_DOMAIN_INTRODUCED: u32 = 17;
    /// `XS_RESUME`.
    pub const RESUME: u32 = 18;
    /// `XS_SET_TARGET`.
    pub const SET_TARGET: u32 = 19;
    /// `XS_RESET_WATCHES`.
    pub const RESET_WATCHES: u32 = 21;
    /// `XS_DIRECTORY_PART`.
    pub const DIRECTORY_PART: u32 = 22;
    /// `XS_GET_FEATURE`.
    pub const GET_FEATURE: u32 = 23;
    /// `XS_SET_FEATURE`.
    pub const SET_FEATURE: u32 = 24;
    /// `XS_GET_QUOTA`.
    pub const GET_QUOTA: u32 = 25;
    /// `XS_SET_QUOTA`.
    pub const SET_QUOTA: u32 = 26;
    /// `XS_TYPE_COUNT`.
    pub const TYPE_COUNT: u32 = 27;
    /// `XS_INVALID`.
    pub const INVALID: u32 = 0xffff;
}

/// Size of each byte ring in the shared xenstore page.
pub const XENSTORE_RING_SIZE: usize = 1024;

/// `MASK_XENSTORE_IDX`.
pub const fn mask_xenstore_idx(idx: u32) -> usize {
    (idx as usize) & (XENSTORE_RING_SIZE - 1)
}

/// The shared page between a domain and xenstored (2080 bytes used).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenstoreDomainInterface {
    /// Requests to xenstored.
    pub req: [u8; XENSTORE_RING_SIZE],
    /// Replies and watch events.
    pub rsp: [u8; XENSTORE_RING_SIZE],
    /// Request consumer index.
    pub req_cons: u32,
    /// Request producer index.
    pub req_prod: u32,
    /// Response consumer index.
    pub rsp_cons: u32,
    /// Response producer index.
    pub rsp_prod: u32,
    /// `XENSTORE_SERVER_FEATURE_*`.
    pub server_features: u32,
    /// `XENSTORE_CONNECTED` / `XENSTORE_RECONNECT`.
    pub connection: u32,
    /// `XENSTORE_ERROR_*`.
    pub error: u32,
    /// Event channel port of the connection.
    pub evtchn_port: u32,
}

/// Server feature: reconnection.
pub const XENSTORE_SERVER_FEATURE_RECONNECTION: u32 = 1;
/// Server feature: error reporting.
pub const XENSTORE_SERVER_FEATURE_ERROR: u32 = 2;
/// Server feature: watch depth.
pub const XENSTORE_SERVER_FEATURE_WATCHDEPTH: u32 = 4;
/// Server feature: DOMID_ANY.
pub const XENSTORE_SERVER_FEATURE_DOMID_ANY: u32 = 8;
/// Connection state: connected.
pub const XENSTORE_CONNECTED: u32 = 0;
/// Connection state: reconnecting.
pub const XENSTORE_RECONNECT: u32 = 1;
/// Ring error: none.
pub const XENSTORE_ERROR_NONE: u32 = 0;
/// Ring error: communication.
pub const XENSTORE_ERROR_COMM: u32 = 1;
/// Ring error: bad ring index.
pub const XENSTORE_ERROR_RINGIDX: u32 = 2;
/// Ring error: protocol.
pub const XENSTORE_ERROR_PROTO: u32 = 3;
