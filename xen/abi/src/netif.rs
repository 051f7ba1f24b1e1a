//! `xen/include/public/io/netif.h`: the network protocol (tx/rx rings, extra info, control ring).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::GrantRef;

/// TX flag: the protocol checksum field is blank (the backend must fill it).
pub const NETTXF_CSUM_BLANK: u16 = 1;
/// TX flag: the packet's checksum has been validated.
pub const NETTXF_DATA_VALIDATED: u16 = 2;
/// TX flag: more fragments of this packet follow.
pub const NETTXF_MORE_DATA: u16 = 4;
/// TX flag: an extra-info slot follows this request.
pub const NETTXF_EXTRA_INFO: u16 = 8;

/// RX flag: the packet's checksum has been validated.
pub const NETRXF_DATA_VALIDATED: u16 = 1;
/// RX flag: the protocol checksum field is blank.
pub const NETRXF_CSUM_BLANK: u16 = 2;
/// RX flag: more fragments follow.
pub const NETRXF_MORE_DATA: u16 = 4;
/// RX flag: an extra-info slot follows.
pub const NETRXF_EXTRA_INFO: u16 = 8;
/// RX flag: GSO prefix descriptor (legacy).
pub const NETRXF_GSO_PREFIX: u16 = 16;

/// Extra-info type: none (invalid on the wire).
pub const XEN_NETIF_EXTRA_TYPE_NONE: u8 = 0;
/// Extra-info type: GSO parameters.
pub const XEN_NETIF_EXTRA_TYPE_GSO: u8 = 1;
/// Extra-info type: add a multicast address.
pub const XEN_NETIF_EXTRA_TYPE_MCAST_ADD: u8 = 2;
/// Extra-info type: remove a multicast address.
pub const XEN_NETIF_EXTRA_TYPE_MCAST_DEL: u8 = 3;
/// Extra-info type: packet hash.
pub const XEN_NETIF_EXTRA_TYPE_HASH: u8 = 4;
/// One past the last extra-info type.
pub const XEN_NETIF_EXTRA_TYPE_MAX: u8 = 5;
/// Extra-info flag: another extra-info slot follows.
pub const XEN_NETIF_EXTRA_FLAG_MORE: u8 = 1;

/// GSO type: none.
pub const XEN_NETIF_GSO_TYPE_NONE: u8 = 0;
/// GSO type: TCP over IPv4.
pub const XEN_NETIF_GSO_TYPE_TCPV4: u8 = 1;
/// GSO type: TCP over IPv6.
pub const XEN_NETIF_GSO_TYPE_TCPV6: u8 = 2;

/// Response status: the packet was dropped.
pub const NETIF_RSP_DROPPED: i16 = -2;
/// Response status: error.
pub const NETIF_RSP_ERROR: i16 = -1;
/// Response status: success.
pub const NETIF_RSP_OKAY: i16 = 0;
/// Response status: a null response (for extra-info slots).
pub const NETIF_RSP_NULL: i16 = 1;

/// A backend must accept packets of up to this many slots.
pub const XEN_NETIF_NR_SLOTS_MIN: usize = 18;
/// Largest packet on the TX ring.
pub const XEN_NETIF_MAX_TX_SIZE: usize = 0xFFFF;

/// A TX request (12 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct NetifTxRequest {
    /// Grant of the page holding the fragment.
    pub gref: GrantRef,
    /// Offset of the fragment in the page.
    pub offset: u16,
    /// `NETTXF_*`.
    pub flags: u16,
    /// Echoed in the response.
    pub id: u16,
    /// Fragment size; in the first slot, the whole packet's size.
    pub size: u16,
}

/// A TX response (4 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct NetifTxResponse {
    /// The request's id.
    pub id: u16,
    /// `NETIF_RSP_*`.
    pub status: i16,
}

/// An RX request: a buffer the frontend posts (8 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct NetifRxRequest {
    /// Echoed in the response.
    pub id: u16,
    /// Padding.
    pub _pad: u16,
    /// Grant of the buffer page.
    pub gref: GrantRef,
}

/// An RX response (8 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct NetifRxResponse {
    /// The request's id.
    pub id: u16,
    /// Offset of the data in the page.
    pub offset: u16,
    /// `NETRXF_*`.
    pub flags: u16,
    /// Bytes received (> 0) or `NETIF_RSP_*` (≤ 0).
    pub status: i16,
}

/// An extra-info slot (8 bytes): a type, flags and a 6-byte union.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct NetifExtraInfo {
    /// `XEN_NETIF_EXTRA_TYPE_*`.
    pub type_: u8,
    /// `XEN_NETIF_EXTRA_FLAG_*`.
    pub flags: u8,
    /// The union (`gso`, `mcast`, `hash`); decode with the view structs below.
    pub u: [u8; 6],
}

/// The `gso` member of the extra-info union (at offset 2 of the slot).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct NetifExtraGso {
    /// Maximum segment size.
    pub size: u16,
    /// `XEN_NETIF_GSO_TYPE_*`.
    pub type_: u8,
    /// Padding.
    pub pad: u8,
    /// `XEN_NETIF_GSO_FEAT_*`.
    pub features: u16,
}

/// The `hash` member of the extra-info union.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct NetifExtraHash {
    /// `XEN_NETIF_CTRL_HASH_TYPE_*` bit number.
    pub type_: u8,
    /// `XEN_NETIF_CTRL_HASH_ALGORITHM_*`.
    pub algorithm: u8,
    /// The hash value, little-endian.
    pub value: [u8; 4],
}

/// Offset of the union within `NetifExtraInfo`.
pub const NETIF_EXTRA_UNION_OFFSET: usize = 2;

/// Control request types (`XEN_NETIF_CTRL_TYPE_*`).
pub mod ctrl_type {
    /// Get the enabled hash types.
    pub const GET_HASH_FLAGS: u16 = 1;
    /// Set the enabled hash types.
    pub const SET_HASH_FLAGS: u16 = 2;
    /// Set the Toeplitz key from a granted page.
    pub const SET_HASH_KEY: u16 = 3;
    /// Get the maximum mapping table size.
    pub const GET_HASH_MAPPING_SIZE: u16 = 4;
    /// Set the mapping table size.
    pub const SET_HASH_MAPPING_SIZE: u16 = 5;
    /// Set mapping table entries from a granted page.
    pub const SET_HASH_MAPPING: u16 = 6;
    /// Choose the hash algorithm.
    pub const SET_HASH_ALGORITHM: u16 = 7;
    /// Get the size of the staging-grant table.
    pub const GET_GREF_MAPPING_SIZE: u16 = 8;
    /// Add staging grants.
    pub const ADD_GREF_MAPPING: u16 = 9;
    /// Remove staging grants.
    pub const DEL_GREF_MAPPING: u16 = 10;
}

/// Control response status: success.
pub const XEN_NETIF_CTRL_STATUS_SUCCESS: u32 = 0;
/// Control response status: not supported.
pub const XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED: u32 = 1;
/// Control response status: invalid parameter.
pub const XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER: u32 = 2;
/// Control response status: buffer overflow.
pub const XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW: u32 = 3;
/// Hash algorithm: Toeplitz.
pub const XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ: u32 = 1;
/// Hash type bit: IPv4.
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV4: u32 = 1 << 0;
/// Hash type bit: IPv4 + TCP.
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP: u32 = 1 << 1;
/// Hash type bit: IPv6.
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV6: u32 = 1 << 2;
/// Hash type bit: IPv6 + TCP.
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP: u32 = 1 << 3;

/// A control-ring request (16 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct NetifCtrlRequest {
    /// Echoed in the response.
    pub id: u16,
    /// `ctrl_type::*`.
    pub type_: u16,
    /// Type-specific arguments.
    pub data: [u32; 3],
}

/// A control-ring response (12 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct NetifCtrlResponse {
    /// The request's id.
    pub id: u16,
    /// The request's type.
    pub type_: u16,
    /// `XEN_NETIF_CTRL_STATUS_*`.
    pub status: u32,
    /// Type-specific result.
    pub data: u32,
}

/// A staging-grant table entry (`struct xen_netif_gref`, 8 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct NetifGref {
    /// The grant reference.
    pub ref_: GrantRef,
    /// `XEN_NETIF_GNTTAB_*` flags.
    pub flags: u16,
    /// `GNTST_*` result, written by the backend.
    pub status: i16,
}
