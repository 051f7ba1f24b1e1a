//! The ring/transport and TX items of `shared/hostile-frontends.md`, each played against the
//! running netback by a raw frontend, while two well-behaved guests on the same backend keep a
//! hashed TCP transfer going; an injector on the bridge proves what the bad guest's packets
//! became (delivered byte for byte, or not at all).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::raw::{
    extra_slot, gso_extra, mac, peek_u32, poke_u32, post_rx, proves_alive, push_tx, received,
    rx_responses, scene, stats, test_frame, tx_chain, tx_responses, tx_simple, RawQueue,
    INJECTOR_MAC,
};
use common::{attach_vif, Rig};
use netback::device::NetbackConfig;
use netfront::NetfrontOptions;
use xen_abi::netif::{
    NetifTxRequest, NETIF_RSP_ERROR, NETIF_RSP_NULL, NETIF_RSP_OKAY, NETTXF_EXTRA_INFO,
    NETTXF_MORE_DATA, XEN_NETIF_EXTRA_FLAG_MORE, XEN_NETIF_EXTRA_TYPE_GSO,
    XEN_NETIF_EXTRA_TYPE_MCAST_ADD, XEN_NETIF_EXTRA_TYPE_MCAST_DEL, XEN_NETIF_GSO_TYPE_TCPV4,
};
use xen_netif::vnet::VirtioNetHdr;
use xen_ring::SharedMemory;
use xen_store::XenbusState;

/// Offset of the first slot in a shared ring page (after the producer/consumer header).
const RING_HEADER: usize = 64;
/// Bytes per TX ring slot (the request/response union).
const TX_SLOT: usize = 12;

async fn disabled(rig: &Rig, i: usize, devid: u32) {
    assert!(
        rig.wait_backend_state(i, devid, XenbusState::Closing).await,
        "guest {i}'s vif {devid} was disabled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bogus_producer_indices_disable_only_that_vif() {
    let s = scene("bogus", 4, NetbackConfig::default()).await;
    // TX ring.
    let mut bad = s.rig.raw_vif(2, 0).await;
    let q = &mut bad.queues[0];
    proves_alive(q, &s.inj, 2, 1, 0);
    let prod = peek_u32(q.tx_ring.memory(), 0);
    poke_u32(q.tx_ring.memory(), 0, prod.wrapping_add(1000));
    q.notify_tx().unwrap();
    disabled(&s.rig, 2, 0).await;
    for _ in 0..1000 {
        q.notify_tx().unwrap();
    }
    // RX ring: a producer index far beyond what the ring holds, then a frame to deliver.
    let mut bad = s.rig.raw_vif(3, 0).await;
    let q = &mut bad.queues[0];
    post_rx(q, 0, 8);
    poke_u32(q.rx_ring.memory(), 0, 8u32.wrapping_sub(5000));
    q.notify_rx().unwrap();
    s.inj.send(
        &test_frame(mac(3), INJECTOR_MAC, 2, 100),
        VirtioNetHdr::default(),
    );
    disabled(&s.rig, 3, 0).await;
    s.good.finish(3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writer_cannot_change_what_was_validated() {
    let s = scene("race", 3, NetbackConfig::default()).await;
    let mut bad = s.rig.raw_vif(2, 0).await;
    let q = &mut bad.queues[0];
    // The racer flips the first slot's `size` of the packet in flight between the true size
    // and two sizes that make it malformed (runt; smaller than its second fragment).
    let ring = q.tx_ring.memory().as_ptr() as usize;
    let current = Arc::new(AtomicU16::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let racer = {
        let (current, stop) = (Arc::clone(&current), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut k = 0u32;
            while !stop.load(Ordering::Acquire) {
                let slot = usize::from(current.load(Ordering::Acquire)) % 256;
                let at = ring + RING_HEADER + slot * TX_SLOT + 10;
                let size = [1500u16, 10, 400][(k % 3) as usize];
                // SAFETY: the `size` field of a slot inside the bad guest's TX ring page, which
                // lives as long as the test (the racer is joined before it is dropped).
                unsafe { AtomicU16::from_ptr(at as *mut u16) }.store(size, Ordering::Relaxed);
                k = k.wrapping_add(1);
            }
        })
    };
    let (mut ok, mut dropped) = (0u32, 0u32);
    let mut delivered = Vec::new();
    for n in 0..600u32 {
        let marker = 1000 + n;
        let frame = test_frame(INJECTOR_MAC, mac(2), marker, 1500);
        let (a, b) = frame.split_at(1000);
        let page = (2 * n as usize) % 256;
        let slots = tx_chain(q, page, &[(0, a), (0, b)], 1500);
        current.store((2 * n) as u16, Ordering::Release);
        push_tx(q, &slots);
        let rsp = tx_responses(q, 2);
        assert_eq!(rsp.len(), 2, "both slots answered");
        assert!(rsp
            .iter()
            .all(|r| r.id == page as u16 || r.id == page as u16 + 1));
        assert_eq!(rsp[0].status, rsp[1].status, "one verdict per packet");
        match rsp[0].status {
            NETIF_RSP_OKAY => ok += 1,
            NETIF_RSP_ERROR => dropped += 1,
            other => panic!("status {other}"),
        }
        if n % 50 == 49 {
            delivered.extend(s.inj.collect(Duration::from_millis(20)));
        }
    }
    stop.store(true, Ordering::Release);
    racer.join().unwrap();
    delivered.extend(s.inj.collect(Duration::from_millis(300)));
    assert!(
        ok > 0 && dropped > 0,
        "the race took both ways ({ok} ok, {dropped} dropped)"
    );
    assert_eq!(delivered.len() as u32, ok, "one frame per OKAY");
    for frame in &delivered {
        let marker = u32::from_le_bytes(frame[14..18].try_into().unwrap());
        assert_eq!(
            frame,
            &test_frame(INJECTOR_MAC, mac(2), marker, 1500),
            "a delivered frame is exactly what was validated"
        );
    }
    assert_eq!(
        s.rig.backend_state(2, 0).await,
        Some(XenbusState::Connected)
    );
    s.good.finish(3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_storm_costs_bounded_work() {
    let s = scene("storm", 3, NetbackConfig::default()).await;
    let mut bad = s.rig.raw_vif(2, 0).await;
    let q = &mut bad.queues[0];
    proves_alive(q, &s.inj, 2, 1, 0);
    let before = stats(&s.rig, 2, 0).wakeups;
    let storm = 100_000u64;
    for _ in 0..storm {
        q.notify_tx().unwrap();
        q.notify_rx().unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let woke = stats(&s.rig, 2, 0).wakeups - before;
    // Notifications to a port that has not been unmasked coalesce: the worker wakes at most
    // once per pass, never once per notification.
    assert!(
        woke < storm,
        "{woke} wake-ups for {} notifications",
        2 * storm
    );
    proves_alive(q, &s.inj, 2, 2, 1);
    s.good.finish(3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_grants_fail_only_their_packets() {
    let s = scene("grants", 3, NetbackConfig::default()).await;
    let mut bad = s.rig.raw_vif(2, 0).await;
    let q = &mut bad.queues[0];
    // TX: a fragment in a page that was never granted.
    let frame = test_frame(INJECTOR_MAC, mac(2), 7, 300);
    let mut slots = tx_simple(q, 0, &frame);
    slots[0].gref = 0x00ff_fff0;
    push_tx(q, &slots);
    let rsp = tx_responses(q, 1);
    assert_eq!(rsp[0].status, NETIF_RSP_ERROR);
    assert_eq!(stats(&s.rig, 2, 0).tx_copy_errors, 1);
    assert!(s.inj.collect(Duration::from_millis(200)).is_empty());
    proves_alive(q, &s.inj, 2, 8, 1);
    // RX: a buffer that was never granted, then good buffers.
    q.rx_ring
        .push_request(&xen_abi::netif::NetifRxRequest {
            id: 0,
            _pad: 0,
            gref: 0x00ff_fff1,
        })
        .unwrap();
    q.rx_ring.push_requests_and_check_notify();
    q.notify_rx().unwrap();
    s.inj.send(
        &test_frame(mac(2), INJECTOR_MAC, 9, 200),
        VirtioNetHdr::default(),
    );
    // (Whichever frame took the bad buffer, a broadcast of the good guests' or ours, it
    // failed alone.)
    let rsp = rx_responses(q, 1);
    assert_eq!(rsp.len(), 1);
    assert_eq!(rsp[0].status, NETIF_RSP_ERROR);
    assert_eq!(stats(&s.rig, 2, 0).rx_copy_errors, 1);
    post_rx(q, 1, 64);
    let frame = test_frame(mac(2), INJECTOR_MAC, 10, 600);
    s.inj.send(&frame, VirtioNetHdr::default());
    assert!(
        received(q, &frame),
        "a good buffer receives the frame intact"
    );
    s.good.finish(3);
}

/// Builds a packet's slots on a queue.
type BuildSlots = Box<dyn Fn(&RawQueue) -> Vec<NetifTxRequest>>;

/// The slots of a frame split into fragments of the given lengths (the first holds the rest).
fn split(q: &RawQueue, page: usize, frame: &[u8], lens: &[usize]) -> Vec<NetifTxRequest> {
    let rest: usize = lens.iter().sum();
    let mut parts = vec![(0u16, &frame[..frame.len() - rest])];
    let mut at = frame.len() - rest;
    for &len in lens {
        parts.push((0, &frame[at..at + len]));
        at += len;
    }
    tx_chain(q, page, &parts, frame.len() as u16)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tx_chains_are_judged_as_linux_does() {
    let s = scene("chains", 4, NetbackConfig::default()).await;
    for devid in 1..=3 {
        attach_vif(&s.rig, 3, devid, &[]).await;
    }
    let mut bad = s.rig.raw_vif(2, 0).await;
    let q = &mut bad.queues[0];
    let mut page = 0;
    let mut next_page = |n: usize| {
        let p = page;
        page = (page + n) % 256;
        p
    };
    let frame = test_frame(INJECTOR_MAC, mac(2), 20, 1000);
    // 1 + 19 and 1 + 20 slots: dropped with an error for every slot (Linux counts the
    // following slots against XEN_NETBK_LEGACY_SLOTS_MAX = 18).
    for following in [19, 20] {
        let lens = vec![10; following];
        let slots = split(q, next_page(following + 1), &frame, &lens);
        push_tx(q, &slots);
        let rsp = tx_responses(q, following + 1);
        assert_eq!(rsp.len(), following + 1);
        assert!(rsp.iter().all(|r| r.status == NETIF_RSP_ERROR), "{rsp:?}");
    }
    assert_eq!(stats(&s.rig, 2, 0).tx_drop_slots, 2);
    // The first fragment shorter than an Ethernet header.
    let slots = split(q, next_page(2), &frame, &[990]);
    push_tx(q, &slots);
    assert!(tx_responses(q, 2)
        .iter()
        .all(|r| r.status == NETIF_RSP_ERROR));
    // Later fragments larger than the packet's declared size (also beyond 65535 in all).
    let mut slots = split(q, next_page(2), &frame, &[500]);
    slots[0].size = 400;
    push_tx(q, &slots);
    assert!(tx_responses(q, 2)
        .iter()
        .all(|r| r.status == NETIF_RSP_ERROR));
    let big = vec![0u8; 4096];
    let mut parts: Vec<(u16, &[u8])> = vec![(0, &big[..100])];
    parts.extend(std::iter::repeat_n((0u16, &big[..]), 16));
    let slots = tx_chain(q, next_page(17), &parts, 65535);
    push_tx(q, &slots);
    assert!(tx_responses(q, 17)
        .iter()
        .all(|r| r.status == NETIF_RSP_ERROR));
    assert_eq!(stats(&s.rig, 2, 0).tx_drop_size, 3);
    assert!(s.inj.collect(Duration::from_millis(200)).is_empty());
    // Zero-length fragments in the middle are skipped (XSA-448) and the frame is intact.
    let frame = test_frame(INJECTOR_MAC, mac(2), 21, 700);
    let slots = tx_chain(
        q,
        next_page(4),
        &[
            (0, &frame[..300]),
            (0, &[]),
            (100, &frame[300..700]),
            (0, &[]),
        ],
        700,
    );
    push_tx(q, &slots);
    assert!(tx_responses(q, 4)
        .iter()
        .all(|r| r.status == NETIF_RSP_OKAY));
    assert_eq!(s.inj.expect(21).as_deref(), Some(&frame[..]));
    // Headers split over the most slots a packet may use (1 + 18), the first holding only the
    // Ethernet header (XSA-423/432): delivered intact.
    let frame = test_frame(INJECTOR_MAC, mac(2), 22, 14 + 18 * 4);
    let slots = split(q, next_page(19), &frame, &[4; 18]);
    push_tx(q, &slots);
    assert!(tx_responses(q, 19)
        .iter()
        .all(|r| r.status == NETIF_RSP_OKAY));
    assert_eq!(s.inj.expect(22).as_deref(), Some(&frame[..]));
    proves_alive(q, &s.inj, 2, 23, next_page(1));
    assert_eq!(
        s.rig.backend_state(2, 0).await,
        Some(XenbusState::Connected)
    );

    // Malicious chains disable the vif (Linux xenvif_fatal_tx_err), one vif each.
    let fatal_cases: [(&str, BuildSlots); 4] = [
        (
            "1 + 21 slots",
            Box::new(|q| split(q, 0, &test_frame(INJECTOR_MAC, mac(3), 30, 1000), &[10; 21])),
        ),
        (
            "a chain that never ends",
            Box::new(|q| {
                let mut slots = split(q, 0, &test_frame(INJECTOR_MAC, mac(3), 31, 1000), &[10; 3]);
                slots.last_mut().unwrap().flags |= NETTXF_MORE_DATA;
                slots
            }),
        ),
        (
            "a fragment crossing its page",
            Box::new(|q| {
                let mut slots = split(q, 0, &test_frame(INJECTOR_MAC, mac(3), 32, 1000), &[100]);
                slots[1].offset = 4000;
                slots
            }),
        ),
        (
            "a first fragment crossing its page",
            Box::new(|q| {
                let mut slots = tx_simple(q, 0, &test_frame(INJECTOR_MAC, mac(3), 33, 1000));
                slots[0].offset = 3500;
                slots
            }),
        ),
    ];
    for (devid, (what, build)) in fatal_cases.iter().enumerate() {
        let devid = devid as u32;
        let mut bad = s.rig.raw_vif(3, devid).await;
        let q = &mut bad.queues[0];
        let slots = build(q);
        push_tx(q, &slots);
        assert!(
            s.rig
                .wait_backend_state(3, devid, XenbusState::Closing)
                .await,
            "{what} disables the vif"
        );
        assert!(
            s.inj.collect(Duration::from_millis(100)).is_empty(),
            "{what}"
        );
    }
    s.good.finish(3);
}

/// A packet with one extra-info slot after its first slot.
fn with_extra(q: &RawQueue, frame: &[u8], extra: NetifTxRequest) -> Vec<NetifTxRequest> {
    let mut slots = tx_simple(q, 0, frame);
    slots[0].flags |= NETTXF_EXTRA_INFO;
    slots.push(extra);
    slots
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_info_abuse_disables_the_vif() {
    let s = scene("extras", 3, NetbackConfig::default()).await;
    let frame = test_frame(INJECTOR_MAC, mac(2), 40, 200);
    let cases: [(&str, NetifTxRequest); 5] = [
        ("extra type 0", extra_slot(0, 0, [0; 6])),
        ("extra type 5", extra_slot(5, 0, [0; 6])),
        (
            "an extra chain running off the ring",
            extra_slot(
                XEN_NETIF_EXTRA_TYPE_GSO,
                XEN_NETIF_EXTRA_FLAG_MORE,
                gso_extra(1448, 1),
            ),
        ),
        (
            "GSO size 0",
            extra_slot(
                XEN_NETIF_EXTRA_TYPE_GSO,
                0,
                gso_extra(0, XEN_NETIF_GSO_TYPE_TCPV4),
            ),
        ),
        (
            "an unknown GSO type",
            extra_slot(XEN_NETIF_EXTRA_TYPE_GSO, 0, gso_extra(1448, 7)),
        ),
    ];
    for (devid, (what, extra)) in cases.iter().enumerate() {
        let devid = devid as u32;
        if devid > 0 {
            attach_vif(&s.rig, 2, devid, &[]).await;
        }
        let mut bad = s.rig.raw_vif(2, devid).await;
        let q = &mut bad.queues[0];
        push_tx(q, &with_extra(q, &frame, *extra));
        assert!(
            s.rig
                .wait_backend_state(2, devid, XenbusState::Closing)
                .await,
            "{what} disables the vif"
        );
    }
    assert!(s.inj.collect(Duration::from_millis(100)).is_empty());
    s.good.finish(3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multicast_control_is_capped_at_64_and_filters() {
    let s = scene("mcast", 3, NetbackConfig::default()).await;
    let opts = NetfrontOptions {
        multicast_control: true,
        ..NetfrontOptions::default()
    };
    let mut bad = s
        .rig
        .connect_raw(2, 0, opts, false, &mut |_| {})
        .await
        .unwrap();
    let q = &mut bad.queues[0];
    proves_alive(q, &s.inj, 2, 50, 0);
    let group = |k: u8| [0x01, 0x00, 0x5e, 0x00, 0x01, k];
    let mcast = |q: &mut RawQueue, type_: u8, addr: [u8; 6], page: usize| {
        let first = NetifTxRequest {
            gref: q.tx_gref(page).unwrap(),
            offset: 0,
            flags: NETTXF_EXTRA_INFO,
            id: page as u16,
            size: 0,
        };
        push_tx(q, &[first, extra_slot(type_, 0, addr)]);
        let rsp = tx_responses(q, 2);
        assert_eq!(rsp.len(), 2);
        assert_eq!(rsp[1].status, NETIF_RSP_NULL, "the extra slot's answer");
        rsp[0].status
    };
    for k in 0..64u8 {
        let status = mcast(q, XEN_NETIF_EXTRA_TYPE_MCAST_ADD, group(k), usize::from(k));
        assert_eq!(status, NETIF_RSP_OKAY, "group {k}");
    }
    for k in 64..100u8 {
        let status = mcast(q, XEN_NETIF_EXTRA_TYPE_MCAST_ADD, group(k), usize::from(k));
        assert_eq!(
            status, NETIF_RSP_ERROR,
            "group {k} is beyond the 64 allowed"
        );
    }
    assert_eq!(
        mcast(q, XEN_NETIF_EXTRA_TYPE_MCAST_DEL, group(5), 100),
        NETIF_RSP_OKAY
    );
    // The guest receives the groups it joined (and broadcasts), not the others.
    post_rx(q, 0, 128);
    let before = stats(&s.rig, 2, 0).rx_drop_mcast;
    let joined = test_frame(group(7), INJECTOR_MAC, 51, 300);
    s.inj.send(
        &test_frame(group(70), INJECTOR_MAC, 52, 300),
        VirtioNetHdr::default(),
    );
    s.inj.send(
        &test_frame(group(5), INJECTOR_MAC, 53, 300),
        VirtioNetHdr::default(),
    );
    s.inj.send(&joined, VirtioNetHdr::default());
    assert!(received(q, &joined), "a joined group's frame arrives");
    assert!(
        stats(&s.rig, 2, 0).rx_drop_mcast >= before + 2,
        "frames for groups not joined (or left) are filtered"
    );
    s.good.finish(3);
}
