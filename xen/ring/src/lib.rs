//! Generic Xen shared rings, as `xen/include/public/io/ring.h` defines them.
//!
//! A shared ring is one or more contiguous pages shared between a frontend and a backend: a
//! 64-byte header of free-running producer/consumer indices and event thresholds, then a
//! power-of-two array of slots, each the union of a request and a response.
//!
//! [`BackRing`] is the backend's view and treats the other side as hostile: each request is
//! copied out of the ring exactly once ([`BackRing::pop_request`]) so that nothing downstream
//! reads shared memory again (the `RING_COPY_REQUEST` defence of XSA-155); the producer index is
//! checked against `RING_REQUEST_PROD_OVERFLOW` at attach and at every pass; a pass consumes at
//! most one ring's worth of requests; responses are published with
//! `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY` semantics and the request side is re-armed with
//! `RING_FINAL_CHECK_FOR_REQUESTS`. [`FrontRing`] is the frontend's view, used by the simulated
//! guests' frontends, with the mirror checks on the response side.
//!
//! All access to shared memory goes through volatile copies of whole entries and atomic
//! accesses to the indices; no reference into shared memory is ever formed.

mod back;
mod front;
mod memory;
pub mod script;

pub use back::BackRing;
pub use front::FrontRing;
pub use memory::{HeapPages, SharedMemory, SharedView};

use xen_abi::ring::RING_HEADER_SIZE;
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Errors of ring setup and of a misbehaving peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The shared area is not 4-byte aligned or too small for one entry.
    #[error(
        "shared ring area of {len} bytes cannot hold a header and one {entry_size}-byte entry"
    )]
    TooSmall {
        /// Bytes of shared memory.
        len: usize,
        /// Bytes per slot.
        entry_size: usize,
    },
    /// The shared area is not aligned for atomic index access.
    #[error("shared ring area is not 4-byte aligned")]
    Misaligned,
    /// Guest fault: the producer index claims more entries than the ring can hold.
    #[error(
        "peer provided bogus ring producer index ({prod} - {consumer_base} = {} > {size}); halting ring processing",
        prod.wrapping_sub(*consumer_base)
    )]
    ProducerOverflow {
        /// The producer index read from shared memory.
        prod: u32,
        /// Our index that bounds it (backend: `rsp_prod_pvt`; frontend: `rsp_cons`).
        consumer_base: u32,
        /// Ring size in slots.
        size: u32,
    },
    /// Caller fault: a response was pushed without an outstanding request.
    #[error("no consumed request is waiting for a response")]
    NoOutstandingRequest,
    /// Caller fault: the frontend has no free slot for another request.
    #[error("ring is full")]
    Full,
}

/// A type that can live in a ring slot: plain bytes, copyable.
pub trait RingEntry: FromBytes + IntoBytes + Immutable + Copy {}
impl<T: FromBytes + IntoBytes + Immutable + Copy> RingEntry for T {}

/// Geometry of a ring: slot size and number of slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingGeometry {
    /// Bytes per slot (the size of the request/response union).
    pub entry_size: usize,
    /// Slots (a power of two).
    pub size: u32,
}

impl RingGeometry {
    /// The geometry of a ring of `Req`/`Rsp` over `len` bytes (`__CONST_RING_SIZE`).
    pub fn new<Req, Rsp>(len: usize) -> Result<Self, RingError> {
        let entry_size = core::mem::size_of::<Req>().max(core::mem::size_of::<Rsp>());
        let size = xen_abi::ring::ring_size(len, entry_size);
        if size == 0 {
            return Err(RingError::TooSmall { len, entry_size });
        }
        Ok(Self { entry_size, size })
    }

    /// Byte offset of the slot that index `idx` refers to.
    fn slot_offset(&self, idx: u32) -> usize {
        RING_HEADER_SIZE + (idx & (self.size - 1)) as usize * self.entry_size
    }
}
