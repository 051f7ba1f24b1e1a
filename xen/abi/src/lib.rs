//! Wire layouts of the Xen interfaces a userspace backend speaks.
//!
//! Every struct here is `#[repr(C)]` (or `#[repr(C, packed)]` where the Linux backend packs the
//! 32-bit ABI) and mirrors one structure of the Xen public headers
//! (`xen/include/public/...`) or of the Linux uapi headers (`include/uapi/xen/...`). Implicit
//! padding is spelled out as named `_pad` fields, so every struct derives zerocopy's `IntoBytes`
//! and a response written from one of them never leaks uninitialised bytes (XSA-216).
//!
//! This crate holds layouts and constants only: no logic, no I/O. The numbers come from
//! `shared/xen-abi.md`; `tests/layout.rs` asserts every size and offset listed there.

pub mod blkif;
pub mod dm_op;
pub mod grant_table;
pub mod ioreq;
pub mod linux;
pub mod netif;
pub mod ring;
pub mod xenbus;
pub mod xs_wire;

/// Size of a Xen page (`XEN_PAGE_SIZE`); grants, rings and frames are counted in these.
pub const PAGE_SIZE: usize = 4096;
/// `XEN_PAGE_SHIFT`.
pub const PAGE_SHIFT: u32 = 12;

/// A domain identifier (`domid_t`).
pub type DomId = u16;
/// A grant reference (`grant_ref_t`).
pub type GrantRef = u32;
/// An event channel port (`evtchn_port_t`).
pub type Port = u32;

/// `DOMID_SELF`: the calling domain, where an interface accepts it.
pub const DOMID_SELF: DomId = 0x7ff0;
/// The first reserved domain id; real domains are below it.
pub const DOMID_FIRST_RESERVED: DomId = 0x7ff0;
