//! The backend end of a shared ring.

use std::marker::PhantomData;
use std::sync::atomic::{fence, Ordering};

use xen_abi::ring::offsets::{REQ_EVENT, REQ_PROD, RSP_EVENT, RSP_PROD};

use crate::memory::{Shared, SharedMemory};
use crate::{RingEntry, RingError, RingGeometry};

/// The backend's private state of a ring (`rsp_prod_pvt`, `req_cons`) over shared memory.
///
/// The frontend is untrusted: every index it writes is checked before use and every request is
/// copied out once. Methods return [`RingError::ProducerOverflow`] when the frontend claims more
/// requests than can exist; the caller must then stop serving this ring (and only this ring).
pub struct BackRing<M, Req, Rsp> {
    shared: Shared<M>,
    geometry: RingGeometry,
    req_cons: u32,
    rsp_prod_pvt: u32,
    /// Requests still allowed in the current pass (see [`BackRing::begin_pass`]).
    pass_budget: u32,
    _entries: PhantomData<fn() -> (Req, Rsp)>,
}

impl<M: SharedMemory, Req: RingEntry, Rsp: RingEntry> BackRing<M, Req, Rsp> {
    /// `BACK_RING_INIT`: attaches to a ring the frontend has just initialised.
    pub fn new(mem: M) -> Result<Self, RingError> {
        Self::attach(mem, 0)
    }

    /// `BACK_RING_ATTACH`: attaches at `index` (`rsp_prod_pvt = req_cons = index`), as a
    /// restarted backend does with the ring's current `rsp_prod`. Requests the frontend produced
    /// after `index` are then served (again).
    pub fn attach(mem: M, index: u32) -> Result<Self, RingError> {
        let geometry = RingGeometry::new::<Req, Rsp>(mem.len())?;
        let ring = Self {
            shared: Shared::new(mem)?,
            geometry,
            req_cons: index,
            rsp_prod_pvt: index,
            pass_budget: 0,
            _entries: PhantomData,
        };
        ring.check_producer()?;
        Ok(ring)
    }

    /// Attaches at the ring's published `rsp_prod`: the restart case of [`BackRing::attach`].
    pub fn attach_at_published(mem: M) -> Result<Self, RingError> {
        let shared = Shared::new(mem)?;
        let index = shared.load(RSP_PROD, Ordering::Acquire);
        Self::attach(shared.into_inner(), index)
    }

    /// Slots in the ring.
    pub fn size(&self) -> u32 {
        self.geometry.size
    }

    /// Our request consumer index.
    pub fn req_cons(&self) -> u32 {
        self.req_cons
    }

    /// Our private response producer index.
    pub fn rsp_prod_pvt(&self) -> u32 {
        self.rsp_prod_pvt
    }

    /// Requests consumed but not yet answered.
    pub fn outstanding(&self) -> u32 {
        self.req_cons.wrapping_sub(self.rsp_prod_pvt)
    }

    /// Gives the shared memory back (for unmapping after disconnect).
    pub fn into_memory(self) -> M {
        self.shared.into_inner()
    }

    /// Reads `req_prod` and applies `RING_REQUEST_PROD_OVERFLOW`.
    fn check_producer(&self) -> Result<u32, RingError> {
        // Acquire pairs with the frontend's write barrier before it published `req_prod`: every
        // request slot below `prod` is visible to our copies below (the `rmb()` of ring.h).
        let prod = self.shared.load(REQ_PROD, Ordering::Acquire);
        if prod.wrapping_sub(self.rsp_prod_pvt) > self.geometry.size {
            return Err(RingError::ProducerOverflow {
                prod,
                consumer_base: self.rsp_prod_pvt,
                size: self.geometry.size,
            });
        }
        Ok(prod)
    }

    /// `RING_HAS_UNCONSUMED_REQUESTS` with the overflow check: requests we may consume now.
    ///
    /// The second bound (`size - outstanding`) is what caps a lying `req_prod`: we never consume
    /// a slot whose response we have not yet written.
    pub fn unconsumed_requests(&self) -> Result<u32, RingError> {
        let prod = self.check_producer()?;
        let produced = prod.wrapping_sub(self.req_cons);
        let room = self.geometry.size - self.outstanding().min(self.geometry.size);
        Ok(produced.min(room))
    }

    /// Starts a pass: checks the producer index and allows at most one ring's worth of
    /// requests (further capped by `max`) to be popped until the next pass. Returns the budget.
    pub fn begin_pass(&mut self, max: u32) -> Result<u32, RingError> {
        self.pass_budget = self.unconsumed_requests()?.min(max).min(self.geometry.size);
        Ok(self.pass_budget)
    }

    /// `RING_COPY_REQUEST`: copies the next request out of the ring once and advances
    /// `req_cons`. Returns `None` when the pass budget is spent.
    pub fn pop_request(&mut self) -> Option<Req> {
        if self.pass_budget == 0 {
            return None;
        }
        self.pass_budget -= 1;
        let req = self
            .shared
            .read::<Req>(self.geometry.slot_offset(self.req_cons));
        self.req_cons = self.req_cons.wrapping_add(1);
        Some(req)
    }

    /// Writes a response into the next response slot (not yet visible to the frontend).
    ///
    /// The whole response is written, padding included, so no stale bytes reach the guest.
    pub fn push_response(&mut self, rsp: &Rsp) -> Result<(), RingError> {
        if self.outstanding() == 0 {
            return Err(RingError::NoOutstandingRequest);
        }
        let offset = self.geometry.slot_offset(self.rsp_prod_pvt);
        self.shared.write_bytes(offset, rsp.as_bytes());
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`: publishes the responses written so far and tells
    /// whether the frontend asked to be notified of them.
    pub fn push_responses_and_check_notify(&mut self) -> bool {
        let old = self.shared.load(RSP_PROD, Ordering::Relaxed);
        let new = self.rsp_prod_pvt;
        // Release (the `wmb()` of ring.h): the response bodies written above become visible
        // before the frontend can observe the new `rsp_prod`.
        self.shared.store(RSP_PROD, new, Ordering::Release);
        // Full barrier (the `mb()`): our `rsp_prod` store is ordered before the `rsp_event` load,
        // so either we see the frontend's new `rsp_event` or it sees our `rsp_prod` on its final
        // check; an event cannot be lost between the two.
        fence(Ordering::SeqCst);
        let event = self.shared.load(RSP_EVENT, Ordering::Relaxed);
        new.wrapping_sub(event) < new.wrapping_sub(old)
    }

    /// Whether at least `needed` requests are waiting; if not, asks the frontend for an event as
    /// soon as it produces any more (`req_event = req_prod + 1`) and checks again, so a request
    /// produced concurrently is either seen now or notified. Linux netback's
    /// `xenvif_rx_ring_slots_available`, for consumers that need several slots at once.
    pub fn requests_available_or_arm(&mut self, needed: u32) -> Result<bool, RingError> {
        // Bounded: a frontend that keeps producing meanwhile sees our `req_event` and notifies.
        for _ in 0..4 {
            let prod = self.check_producer()?;
            if self.unconsumed_requests()? >= needed {
                return Ok(true);
            }
            self.shared
                .store(REQ_EVENT, prod.wrapping_add(1), Ordering::Relaxed);
            // Full barrier: the `req_event` store is ordered before re-reading `req_prod`.
            fence(Ordering::SeqCst);
            if self.shared.load(REQ_PROD, Ordering::Acquire) == prod {
                return Ok(false);
            }
        }
        Ok(self.unconsumed_requests()? >= needed)
    }

    /// `RING_FINAL_CHECK_FOR_REQUESTS`: if no request is pending, asks for an event at the next
    /// one (`req_event = req_cons + 1`) and checks again. True means more work is waiting.
    pub fn final_check_for_requests(&mut self) -> Result<bool, RingError> {
        if self.unconsumed_requests()? > 0 {
            return Ok(true);
        }
        self.shared
            .store(REQ_EVENT, self.req_cons.wrapping_add(1), Ordering::Relaxed);
        // Full barrier: the `req_event` store is ordered before re-reading `req_prod`, so a
        // request produced concurrently is either seen now or notified (the frontend reads our
        // `req_event` after publishing `req_prod`).
        fence(Ordering::SeqCst);
        Ok(self.unconsumed_requests()? > 0)
    }
}
