//! `xen/include/public/io/ring.h`: the shared-ring header that precedes the entries.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Byte offset of the first ring entry within the shared page(s).
pub const RING_HEADER_SIZE: usize = 64;

/// The header of every `DEFINE_RING_TYPES` shared ring (`struct NAME_sring` before `ring[]`).
///
/// Indices are free-running `RING_IDX` (u32) values masked with `size - 1`.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SringHeader {
    /// Requests produced by the frontend.
    pub req_prod: u32,
    /// The backend wants an event when `req_prod` reaches this value.
    pub req_event: u32,
    /// Responses produced by the backend.
    pub rsp_prod: u32,
    /// The frontend wants an event when `rsp_prod` reaches this value.
    pub rsp_event: u32,
    /// The `pvt` union (`netif.smartpoll_active`, `tapif_user.msg`, `pvt_pad[4]`).
    pub pvt: [u8; 4],
    /// `__pad[44]`.
    pub pad: [u8; 44],
}

/// Byte offsets of the header fields, for atomic access in shared memory.
pub mod offsets {
    /// `req_prod`.
    pub const REQ_PROD: usize = 0;
    /// `req_event`.
    pub const REQ_EVENT: usize = 4;
    /// `rsp_prod`.
    pub const RSP_PROD: usize = 8;
    /// `rsp_event`.
    pub const RSP_EVENT: usize = 12;
}

/// `__CONST_RING_SIZE`: entries that fit in `bytes` of shared memory, rounded down to a power
/// of two. Returns 0 when not even one entry fits.
pub const fn ring_size(bytes: usize, entry_size: usize) -> u32 {
    if entry_size == 0 || bytes <= RING_HEADER_SIZE {
        return 0;
    }
    let n = (bytes - RING_HEADER_SIZE) / entry_size;
    if n == 0 {
        return 0;
    }
    let pow = 1usize << (usize::BITS - 1 - n.leading_zeros());
    if pow > u32::MAX as usize {
        1 << 31
    } else {
        pow as u32
    }
}
