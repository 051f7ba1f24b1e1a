//! Property tests of the ring against a model queue, and of the backend against hostile
//! producer indices.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::VecDeque;

use proptest::prelude::*;
use xen_abi::blkif::{BlkifRequest, BlkifResponse};
use xen_ring::script::run_back_ring_script;
use xen_ring::{BackRing, FrontRing, HeapPages, RingError, SharedView};

#[derive(Debug, Clone)]
enum Op {
    FrontPush(u8),
    FrontNotify,
    BackPass(u8),
    BackRespond(u8),
    BackPublish,
    FrontConsume(u8),
    BackFinalCheck,
    FrontFinalCheck,
    BackRestart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        any::<u8>().prop_map(Op::FrontPush),
        Just(Op::FrontNotify),
        any::<u8>().prop_map(Op::BackPass),
        any::<u8>().prop_map(Op::BackRespond),
        Just(Op::BackPublish),
        any::<u8>().prop_map(Op::FrontConsume),
        Just(Op::BackFinalCheck),
        Just(Op::FrontFinalCheck),
        Just(Op::BackRestart),
    ]
}

/// A second handle on the test's pages; every test keeps `mem` alive past both ring ends.
fn view(mem: &HeapPages) -> SharedView {
    // SAFETY: callers drop the rings (locals declared after `mem`) before `mem`.
    unsafe { SharedView::of(mem) }
}

type Front = FrontRing<SharedView, BlkifRequest, BlkifResponse>;
type Back = BackRing<SharedView, BlkifRequest, BlkifResponse>;

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Every request pushed is seen by the backend exactly once and in order, every response
    /// reaches the frontend in order, and notifications are never lost, from any start index
    /// (including across the 2^32 wrap) and with multi-page rings.
    #[test]
    fn ring_matches_model(start in prop_oneof![Just(0u32), Just(u32::MAX - 40), any::<u32>()],
                          pages in 1usize..=4, ops in proptest::collection::vec(op(), 1..200)) {
        let mem = HeapPages::new(pages);
        // SAFETY: `mem` outlives both ring ends, which are locals dropped before it.
        let mut front: Front = FrontRing::init_at(view(&mem), start).unwrap();
        let mut back: Back = BackRing::attach(view(&mem), start).unwrap();
        let size = front.size();
        prop_assert_eq!(size, back.size());
        let mut next_id = 0u64;
        let mut published_reqs: VecDeque<u64> = VecDeque::new(); // pushed and made visible
        let mut private_reqs: VecDeque<u64> = VecDeque::new(); // pushed, not yet visible
        let mut in_backend: VecDeque<u64> = VecDeque::new(); // consumed, not yet answered
        let mut answered_private: VecDeque<u64> = VecDeque::new();
        let mut answered_public: VecDeque<u64> = VecDeque::new();
        let mut backend_wants_event = false;
        let mut frontend_wants_event = false;

        for op in ops {
            match op {
                Op::FrontPush(n) => {
                    for _ in 0..n % 40 {
                        let req = BlkifRequest { id: next_id, ..Default::default() };
                        match front.push_request(&req) {
                            Ok(()) => { private_reqs.push_back(next_id); next_id += 1; }
                            Err(RingError::Full) => {
                                prop_assert_eq!(front.outstanding(), size);
                                break;
                            }
                            Err(e) => prop_assert!(false, "push: {}", e),
                        }
                    }
                }
                Op::FrontNotify => {
                    let had_new = !private_reqs.is_empty();
                    let notify = front.push_requests_and_check_notify();
                    if backend_wants_event && had_new {
                        prop_assert!(notify, "backend armed req_event but was not notified");
                        backend_wants_event = false;
                    }
                    published_reqs.extend(private_reqs.drain(..));
                }
                Op::BackPass(max) => {
                    let budget = back.begin_pass(u32::from(max)).unwrap();
                    let expect = (published_reqs.len() as u32).min(u32::from(max))
                        .min(size - in_backend.len() as u32 - answered_private.len() as u32);
                    prop_assert_eq!(budget, expect);
                    while let Some(req) = back.pop_request() {
                        prop_assert_eq!(Some(req.id), published_reqs.pop_front());
                        in_backend.push_back(req.id);
                    }
                }
                Op::BackRespond(n) => {
                    for _ in 0..n % 40 {
                        let Some(id) = in_backend.pop_front() else {
                            prop_assert_eq!(back.push_response(&BlkifResponse::default()),
                                Err(RingError::NoOutstandingRequest));
                            break;
                        };
                        back.push_response(&BlkifResponse { id, status: 0, ..Default::default() }).unwrap();
                        answered_private.push_back(id);
                    }
                }
                Op::BackPublish => {
                    let had_new = !answered_private.is_empty();
                    let notify = back.push_responses_and_check_notify();
                    if frontend_wants_event && had_new {
                        prop_assert!(notify, "frontend armed rsp_event but was not notified");
                        frontend_wants_event = false;
                    }
                    answered_public.extend(answered_private.drain(..));
                }
                Op::FrontConsume(n) => {
                    for _ in 0..n % 40 {
                        match front.pop_response().unwrap() {
                            Some(rsp) => prop_assert_eq!(Some(rsp.id), answered_public.pop_front()),
                            None => { prop_assert!(answered_public.is_empty()); break; }
                        }
                    }
                }
                Op::BackFinalCheck => {
                    let more = back.final_check_for_requests().unwrap();
                    let room = size - in_backend.len() as u32 - answered_private.len() as u32;
                    prop_assert_eq!(more, !published_reqs.is_empty() && room > 0);
                    backend_wants_event = !more;
                }
                Op::FrontFinalCheck => {
                    let more = front.final_check_for_responses().unwrap();
                    prop_assert_eq!(more, !answered_public.is_empty());
                    frontend_wants_event = !more;
                }
                Op::BackRestart => {
                    // A backend crashes at a publish point (a response written but not published
                    // has overwritten its request's slot, so replaying it is unsafe: ARCHITECTURE.md)
                    // and loses its private state; consumed-but-unanswered requests are served again.
                    let notify = back.push_responses_and_check_notify();
                    if frontend_wants_event && !answered_private.is_empty() {
                        prop_assert!(notify);
                        frontend_wants_event = false;
                    }
                    answered_public.extend(answered_private.drain(..));
                    let mut replay: VecDeque<u64> = std::mem::take(&mut in_backend);
                    replay.extend(published_reqs.drain(..));
                    published_reqs = replay;
                    back = BackRing::attach_at_published(view(&mem)).unwrap();
                }
            }
            prop_assert!(back.outstanding() <= size);
        }
    }

    /// A frontend that writes arbitrary producer indices never makes the backend consume more
    /// than the ring holds; indices past `rsp_prod_pvt + size` are refused.
    #[test]
    fn lying_producer_is_bounded(start in any::<u32>(), prod_delta in any::<u32>(), max in any::<u32>()) {
        let mem = HeapPages::new(1);
        let mut front: Front = FrontRing::init_at(view(&mem), start).unwrap();
        let mut back: Back = BackRing::attach(view(&mem), start).unwrap();
        let size = back.size();
        // Make the shared req_prod say start + prod_delta by pushing nothing and poking it.
        for _ in 0..(prod_delta.min(size)) { front.push_request(&BlkifRequest::default()).unwrap(); }
        front.push_requests_and_check_notify();
        let poked = start.wrapping_add(prod_delta);
        // SAFETY: offset 0 of the live allocation, written atomically as a frontend would.
        unsafe { std::sync::atomic::AtomicU32::from_ptr(xen_ring::SharedMemory::as_ptr(&mem).cast()) }
            .store(poked, std::sync::atomic::Ordering::Release);
        match back.begin_pass(max) {
            Ok(budget) => {
                prop_assert!(prod_delta <= size);
                prop_assert_eq!(budget, prod_delta.min(max));
            }
            Err(RingError::ProducerOverflow { prod, .. }) => {
                prop_assert!(prod_delta > size);
                prop_assert_eq!(prod, poked);
            }
            Err(e) => prop_assert!(false, "unexpected {}", e),
        }
        let reattach = BackRing::<_, BlkifRequest, BlkifResponse>::attach(view(&mem), start);
        prop_assert_eq!(reattach.is_ok(), prod_delta <= size);
    }

    /// The fuzz target's script never trips an invariant on random input.
    #[test]
    fn fuzz_script_holds_invariants(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let outcome = run_back_ring_script(&data);
        prop_assert!(outcome.responded <= outcome.consumed);
    }
}

#[test]
fn bogus_producer_index_halts_with_linux_message() {
    let mem = HeapPages::new(1);
    let mut front: Front = FrontRing::init(view(&mem)).unwrap();
    front.push_request(&BlkifRequest::default()).unwrap();
    front.push_requests_and_check_notify();
    let mut back: Back = BackRing::new(view(&mem)).unwrap();
    // SAFETY: offset 0 of the live allocation.
    unsafe { std::sync::atomic::AtomicU32::from_ptr(xen_ring::SharedMemory::as_ptr(&mem).cast()) }
        .store(1000, std::sync::atomic::Ordering::Release);
    let err = back.begin_pass(u32::MAX).unwrap_err();
    assert_eq!(
        err.to_string(),
        "peer provided bogus ring producer index (1000 - 0 = 1000 > 32); halting ring processing"
    );
    assert!(run_back_ring_script(&[0, 0, 0, 0, 0, 0, 0xe8, 3, 0, 0, 2, 255]).halted);
}

#[test]
fn backend_claiming_extra_responses_is_refused() {
    let mem = HeapPages::new(1);
    let mut front: Front = FrontRing::init(view(&mem)).unwrap();
    front.push_request(&BlkifRequest::default()).unwrap();
    front.push_requests_and_check_notify();
    // SAFETY: offset 8 (rsp_prod) of the live allocation.
    unsafe {
        std::sync::atomic::AtomicU32::from_ptr(xen_ring::SharedMemory::as_ptr(&mem).add(8).cast())
    }
    .store(5, std::sync::atomic::Ordering::Release);
    assert!(matches!(
        front.pop_response(),
        Err(RingError::ProducerOverflow { prod: 5, .. })
    ));
}

/// A consumer that needs several slots at once arms `req_event` at `req_prod + 1`, so the
/// frontend's next push notifies it.
#[test]
fn waiting_for_several_requests_arms_the_next_push() {
    let mem = HeapPages::new(1);
    let mut front: Front = FrontRing::init(view(&mem)).unwrap();
    let mut back: Back = BackRing::new(view(&mem)).unwrap();
    for _ in 0..2 {
        front.push_request(&BlkifRequest::default()).unwrap();
    }
    front.push_requests_and_check_notify();
    assert!(back.requests_available_or_arm(2).unwrap());
    assert!(!back.requests_available_or_arm(3).unwrap());
    front.push_request(&BlkifRequest::default()).unwrap();
    assert!(
        front.push_requests_and_check_notify(),
        "the push after arming must notify"
    );
    assert!(back.requests_available_or_arm(3).unwrap());
}

/// A frontend that asks for an event only after `n` responses is not notified before the
/// `n`-th is published, is notified by the push that reaches it, and sees at once a batch
/// that was already complete when it asked.
#[test]
fn batched_final_check_notifies_at_the_batch() {
    let mem = HeapPages::new(1);
    let mut front: Front = FrontRing::init(view(&mem)).unwrap();
    let mut back: Back = BackRing::new(view(&mem)).unwrap();
    for _ in 0..8 {
        front.push_request(&BlkifRequest::default()).unwrap();
    }
    front.push_requests_and_check_notify();
    assert_eq!(back.begin_pass(8).unwrap(), 8);
    while back.pop_request().is_some() {}
    assert!(!front.final_check_for_responses_batched(4).unwrap());
    for i in 1..=4 {
        back.push_response(&BlkifResponse::default()).unwrap();
        let notify = back.push_responses_and_check_notify();
        assert_eq!(
            notify,
            i == 4,
            "notified only by the fourth response (at {i})"
        );
    }
    assert!(front.final_check_for_responses_batched(4).unwrap());
    for _ in 0..4 {
        assert!(front.pop_response().unwrap().is_some());
    }
    // A batch of zero means one.
    assert!(!front.final_check_for_responses_batched(0).unwrap());
    back.push_response(&BlkifResponse::default()).unwrap();
    assert!(back.push_responses_and_check_notify());
}
