//! The frontend end of a shared ring (used by the simulated guests' frontends).

use std::marker::PhantomData;
use std::sync::atomic::{fence, Ordering};

use xen_abi::ring::offsets::{REQ_EVENT, REQ_PROD, RSP_EVENT, RSP_PROD};
use xen_abi::ring::RING_HEADER_SIZE;

use crate::memory::{Shared, SharedMemory};
use crate::{RingEntry, RingError, RingGeometry};

/// The frontend's private state of a ring (`req_prod_pvt`, `rsp_cons`) over shared memory.
///
/// The backend may be untrusted too (`trusted` = 0): responses are copied out once and the
/// response producer index is checked against the requests actually outstanding.
pub struct FrontRing<M, Req, Rsp> {
    shared: Shared<M>,
    geometry: RingGeometry,
    req_prod_pvt: u32,
    rsp_cons: u32,
    _entries: PhantomData<fn() -> (Req, Rsp)>,
}

impl<M: SharedMemory, Req: RingEntry, Rsp: RingEntry> FrontRing<M, Req, Rsp> {
    /// `SHARED_RING_INIT` + `FRONT_RING_INIT`: zeroes the header and starts at index 0.
    pub fn init(mem: M) -> Result<Self, RingError> {
        Self::init_at(mem, 0)
    }

    /// Initialises the ring with every index at `index` (tests use this to cross the 2^32 wrap).
    pub fn init_at(mem: M, index: u32) -> Result<Self, RingError> {
        let geometry = RingGeometry::new::<Req, Rsp>(mem.len())?;
        let shared = Shared::new(mem)?;
        shared.zero(0, RING_HEADER_SIZE);
        shared.store(REQ_PROD, index, Ordering::Relaxed);
        shared.store(RSP_PROD, index, Ordering::Relaxed);
        shared.store(REQ_EVENT, index.wrapping_add(1), Ordering::Relaxed);
        shared.store(RSP_EVENT, index.wrapping_add(1), Ordering::Release);
        Ok(Self {
            shared,
            geometry,
            req_prod_pvt: index,
            rsp_cons: index,
            _entries: PhantomData,
        })
    }

    /// Slots in the ring.
    pub fn size(&self) -> u32 {
        self.geometry.size
    }

    /// Requests produced (privately) but not yet answered.
    pub fn outstanding(&self) -> u32 {
        self.req_prod_pvt.wrapping_sub(self.rsp_cons)
    }

    /// `RING_FREE_REQUESTS`.
    pub fn free_requests(&self) -> u32 {
        self.geometry.size - self.outstanding().min(self.geometry.size)
    }

    /// The shared memory (a misbehaving frontend in tests scribbles on it directly).
    pub fn memory(&self) -> &M {
        self.shared.memory()
    }

    /// Gives the shared memory back.
    pub fn into_memory(self) -> M {
        self.shared.into_inner()
    }

    /// Writes a request into the next free slot (not yet visible to the backend).
    pub fn push_request(&mut self, req: &Req) -> Result<(), RingError> {
        if self.free_requests() == 0 {
            return Err(RingError::Full);
        }
        let offset = self.geometry.slot_offset(self.req_prod_pvt);
        self.shared.write_bytes(offset, req.as_bytes());
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`.
    pub fn push_requests_and_check_notify(&mut self) -> bool {
        let old = self.shared.load(REQ_PROD, Ordering::Relaxed);
        let new = self.req_prod_pvt;
        // Release (`wmb()`): request bodies are visible before the new `req_prod`.
        self.shared.store(REQ_PROD, new, Ordering::Release);
        // Full barrier (`mb()`): the `req_prod` store is ordered before the `req_event` load, so
        // a backend going idle either sees our requests or has its new `req_event` seen here.
        fence(Ordering::SeqCst);
        let event = self.shared.load(REQ_EVENT, Ordering::Relaxed);
        new.wrapping_sub(event) < new.wrapping_sub(old)
    }

    /// Responses available, after checking that the backend does not claim more responses than
    /// requests outstanding.
    pub fn unconsumed_responses(&self) -> Result<u32, RingError> {
        // Acquire pairs with the backend's release of `rsp_prod`: response bodies below it are
        // visible to the copies in `pop_response`.
        let prod = self.shared.load(RSP_PROD, Ordering::Acquire);
        let available = prod.wrapping_sub(self.rsp_cons);
        if available > self.outstanding() {
            return Err(RingError::ProducerOverflow {
                prod,
                consumer_base: self.rsp_cons,
                size: self.geometry.size,
            });
        }
        Ok(available)
    }

    /// Copies the next response out once, if one is available.
    pub fn pop_response(&mut self) -> Result<Option<Rsp>, RingError> {
        if self.unconsumed_responses()? == 0 {
            return Ok(None);
        }
        let rsp = self
            .shared
            .read::<Rsp>(self.geometry.slot_offset(self.rsp_cons));
        self.rsp_cons = self.rsp_cons.wrapping_add(1);
        Ok(Some(rsp))
    }

    /// A final check that asks for an event only once `batch` more responses are published
    /// (at least one), as Linux netfront once did for its TX ring (`rsp_event` half-way to the
    /// requests outstanding): completions that free buffers need not wake the frontend one by
    /// one. True if `batch` responses are already waiting.
    pub fn final_check_for_responses_batched(&mut self, batch: u32) -> Result<bool, RingError> {
        let batch = batch.max(1);
        if self.unconsumed_responses()? >= batch {
            return Ok(true);
        }
        self.shared.store(
            RSP_EVENT,
            self.rsp_cons.wrapping_add(batch),
            Ordering::Relaxed,
        );
        // Full barrier: the `rsp_event` store is ordered before re-reading `rsp_prod`, so a
        // backend that published past it meanwhile is either seen here or saw our event.
        fence(Ordering::SeqCst);
        Ok(self.unconsumed_responses()? >= batch)
    }

    /// `RING_FINAL_CHECK_FOR_RESPONSES`: re-arms `rsp_event` and re-checks.
    pub fn final_check_for_responses(&mut self) -> Result<bool, RingError> {
        if self.unconsumed_responses()? > 0 {
            return Ok(true);
        }
        self.shared
            .store(RSP_EVENT, self.rsp_cons.wrapping_add(1), Ordering::Relaxed);
        // Full barrier: the `rsp_event` store is ordered before re-reading `rsp_prod`.
        fence(Ordering::SeqCst);
        Ok(self.unconsumed_responses()? > 0)
    }
}
