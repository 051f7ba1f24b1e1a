//! The shared ring of one queue in either ABI, behind one interface.

use xen_abi::blkif::{
    BlkifResponse, BlkifX86_32Response, BLKIF_NATIVE_SLOT_SIZE, BLKIF_X86_32_SLOT_SIZE,
};
use xen_blkif::Abi;
use xen_ring::{BackRing, RingError, SharedMemory};

/// A slot as copied out of the ring (the 108-byte x86_32 slot is zero-extended).
pub(crate) type Slot = [u8; BLKIF_NATIVE_SLOT_SIZE];

pub(crate) enum AnyRing<M> {
    Native(BackRing<M, [u8; BLKIF_NATIVE_SLOT_SIZE], BlkifResponse>),
    X86_32(BackRing<M, [u8; BLKIF_X86_32_SLOT_SIZE], BlkifX86_32Response>),
}

impl<M: SharedMemory> AnyRing<M> {
    /// Attaches to the ring: at 0 for a fresh connection, at the published response index for
    /// a restarted backend re-attaching to a live ring.
    pub(crate) fn attach(abi: Abi, mem: M, reattach: bool) -> Result<Self, RingError> {
        Ok(match (abi, reattach) {
            (Abi::X86_64, false) => Self::Native(BackRing::new(mem)?),
            (Abi::X86_64, true) => Self::Native(BackRing::attach_at_published(mem)?),
            (Abi::X86_32, false) => Self::X86_32(BackRing::new(mem)?),
            (Abi::X86_32, true) => Self::X86_32(BackRing::attach_at_published(mem)?),
        })
    }

    /// The index of the next request to be popped (its sequence number).
    pub(crate) fn req_cons(&self) -> u32 {
        match self {
            Self::Native(r) => r.req_cons(),
            Self::X86_32(r) => r.req_cons(),
        }
    }

    pub(crate) fn size(&self) -> u32 {
        match self {
            Self::Native(r) => r.size(),
            Self::X86_32(r) => r.size(),
        }
    }

    pub(crate) fn begin_pass(&mut self, max: u32) -> Result<u32, RingError> {
        match self {
            Self::Native(r) => r.begin_pass(max),
            Self::X86_32(r) => r.begin_pass(max),
        }
    }

    /// Copies the next request out (once).
    pub(crate) fn pop(&mut self) -> Option<Slot> {
        match self {
            Self::Native(r) => r.pop_request(),
            Self::X86_32(r) => r.pop_request().map(|packed| {
                let mut slot = [0u8; BLKIF_NATIVE_SLOT_SIZE];
                if let Some(dst) = slot.get_mut(..BLKIF_X86_32_SLOT_SIZE) {
                    dst.copy_from_slice(&packed);
                }
                slot
            }),
        }
    }

    /// Writes one response and publishes it at once (so that a crash cannot leave a written,
    /// unpublished response over a request a restarted backend would re-read); returns whether
    /// the frontend wants an event.
    pub(crate) fn respond(
        &mut self,
        id: u64,
        operation: u8,
        status: i16,
    ) -> Result<bool, RingError> {
        match self {
            Self::Native(r) => {
                r.push_response(&BlkifResponse {
                    id,
                    operation,
                    _pad: 0,
                    status,
                    _pad1: 0,
                })?;
                Ok(r.push_responses_and_check_notify())
            }
            Self::X86_32(r) => {
                let rsp = BlkifX86_32Response {
                    id: id.to_le_bytes(),
                    operation,
                    status: status.to_le_bytes(),
                };
                r.push_response(&rsp)?;
                Ok(r.push_responses_and_check_notify())
            }
        }
    }

    pub(crate) fn final_check(&mut self) -> Result<bool, RingError> {
        match self {
            Self::Native(r) => r.final_check_for_requests(),
            Self::X86_32(r) => r.final_check_for_requests(),
        }
    }
}
