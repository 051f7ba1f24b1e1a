//! A byte-script driver for [`BackRing`] with a hostile frontend, shared by the fuzz target
//! (`fuzz/fuzz_targets/back_ring.rs`) and the property tests, so the fuzz harness itself is
//! exercised in every CI run.
//!
//! Each step of the script is decoded from the input bytes: the "frontend" scribbles on the
//! header and the slots at will, the backend runs passes, answers, re-arms and restarts. After
//! every step the backend's invariants are checked: it never has more requests outstanding than
//! the ring holds, never consumes more than its pass budget, and once it reports an overflow it
//! is halted.

use std::sync::atomic::{AtomicU32, Ordering};

use xen_abi::blkif::{BlkifRequest, BlkifResponse};
use xen_abi::ring::offsets::{REQ_EVENT, REQ_PROD, RSP_PROD};

use crate::{BackRing, HeapPages, RingError, SharedMemory, SharedView};

/// What a script run did, for assertions by callers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScriptOutcome {
    /// Requests the backend copied out.
    pub consumed: u64,
    /// Responses it wrote.
    pub responded: u64,
    /// Whether it detected a bogus producer index and halted.
    pub halted: bool,
}

struct Cursor<'a> {
    data: &'a [u8],
}

impl Cursor<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(b)
    }
    fn word(&mut self) -> Option<u32> {
        let mut v = [0u8; 4];
        for b in &mut v {
            *b = self.byte()?;
        }
        Some(u32::from_le_bytes(v))
    }
}

fn store(mem: &HeapPages, offset: usize, value: u32) {
    // SAFETY: `offset` is one of the 4-aligned header offsets, inside the page-aligned
    // allocation that `mem` owns for the duration of this call.
    let word = unsafe { AtomicU32::from_ptr(mem.as_ptr().add(offset).cast::<u32>()) };
    word.store(value, Ordering::Release);
}

/// Runs `data` as a script against a one- or two-page blkif ring. Panics only if the backend
/// breaks one of its invariants (which is what the fuzzer looks for).
pub fn run_back_ring_script(data: &[u8]) -> ScriptOutcome {
    let mut cur = Cursor { data };
    let pages = if cur.byte().unwrap_or(0) & 1 == 0 {
        1
    } else {
        2
    };
    let mem = HeapPages::new(pages);
    let start = cur.word().unwrap_or(0);
    for offset in [REQ_PROD, RSP_PROD] {
        store(&mem, offset, start);
    }
    store(&mem, REQ_EVENT, start.wrapping_add(1));
    // SAFETY: `mem` outlives `ring` (both are locals; `ring` is dropped first at every exit).
    let view = unsafe { SharedView::of(&mem) };
    let mut outcome = ScriptOutcome::default();
    let mut ring = match BackRing::<_, BlkifRequest, BlkifResponse>::new(view) {
        Ok(r) => r,
        Err(_) => return outcome,
    };
    let size = ring.size();
    while let Some(op) = cur.byte() {
        let result = match op % 6 {
            0 => {
                let prod = cur.word().unwrap_or(0);
                store(&mem, REQ_PROD, prod);
                Ok(())
            }
            1 => {
                let slot = cur.byte().unwrap_or(0) as usize % size as usize;
                let fill = cur.byte().unwrap_or(0);
                let offset = 64 + slot * core::mem::size_of::<BlkifRequest>();
                for i in 0..core::mem::size_of::<BlkifRequest>() {
                    // SAFETY: offset + i lies within the ring's slots, inside `mem`.
                    unsafe { mem.as_ptr().add(offset + i).write_volatile(fill ^ i as u8) };
                }
                Ok(())
            }
            2 => {
                let max = u32::from(cur.byte().unwrap_or(0));
                ring.begin_pass(max).map(|budget| {
                    let mut popped = 0;
                    while let Some(req) = ring.pop_request() {
                        popped += 1;
                        outcome.consumed += 1;
                        let rsp = BlkifResponse {
                            id: req.id,
                            operation: req.operation,
                            ..Default::default()
                        };
                        if ring.push_response(&rsp).is_ok() {
                            outcome.responded += 1;
                        }
                    }
                    assert_eq!(popped, budget, "pass consumed more or less than its budget");
                })
            }
            3 => ring.final_check_for_requests().map(|_| ()),
            4 => {
                ring.push_responses_and_check_notify();
                Ok(())
            }
            _ => {
                // A backend restart: re-attach at the published response index.
                ring.push_responses_and_check_notify();
                // SAFETY: as above, `mem` outlives the new ring.
                let view = unsafe { SharedView::of(&mem) };
                BackRing::attach_at_published(view).map(|r| ring = r)
            }
        };
        assert!(
            ring.outstanding() <= size,
            "more requests outstanding than ring slots"
        );
        match result {
            Ok(()) => {}
            Err(RingError::ProducerOverflow { .. }) => {
                outcome.halted = true;
                break;
            }
            Err(e) => panic!("unexpected ring error {e}"),
        }
    }
    outcome
}
