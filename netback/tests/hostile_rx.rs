//! The RX and control-ring items of `shared/hostile-frontends.md` against the running netback:
//! a guest that takes no frames (bounded queue, stall, drain), one that posts a single slot
//! while segmentation-offload packets wait, and a control ring fed invalid and racing
//! requests, then used for real: the guest's Toeplitz key and mapping steer its received
//! frames to the queue it chose, with the hash it can check. Two good guests keep talking.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::raw::{
    mac, post_rx, proves_alive, received, rx_responses, scene, stats, test_frame, RawQueue,
    RawSimVif, Scene, INJECTOR_MAC,
};
use netback::device::NetbackConfig;
use netback::queue::RxLimits;
use netfront::NetfrontOptions;
use xen_abi::netif::ctrl_type::*;
use xen_abi::netif::{
    NetifCtrlRequest, NetifCtrlResponse, NetifExtraInfo, NETRXF_EXTRA_INFO, NETRXF_MORE_DATA,
    XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ, XEN_NETIF_CTRL_HASH_TYPE_IPV4,
    XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP, XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW,
    XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER, XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED,
    XEN_NETIF_CTRL_STATUS_SUCCESS, XEN_NETIF_EXTRA_FLAG_MORE, XEN_NETIF_EXTRA_TYPE_HASH,
};
use xen_netif::vnet::{VirtioNetHdr, F_NEEDS_CSUM, GSO_TCPV4};
use xen_ring::SharedMemory;
use zerocopy::{FromBytes, IntoBytes};

/// An Ethernet + IPv4 + TCP frame with `payload` bytes (IPv4 header checksum filled in).
fn tcp4_frame(dst: [u8; 6], sport: u16, dport: u16, payload: usize) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&INJECTOR_MAC);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = (20 + 20 + payload) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&[10, 9, 0, 200]);
    ip[16..20].copy_from_slice(&[10, 9, 0, 3]);
    let sum: u32 = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x18;
    tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
    f.extend_from_slice(&tcp);
    f.extend((0..payload).map(|k| (k * 31 + usize::from(sport)) as u8));
    f
}

fn carrier_down(s: &Scene, ifname: &str) -> bool {
    s.rig
        .dd_ns
        .ip(&["link", "show", ifname])
        .contains("NO-CARRIER")
}

/// Frames the kernel dropped on the vif's TAP device (its queue toward netback was full).
fn tap_dropped(s: &Scene, ifname: &str) -> u64 {
    let json = s.rig.dd_ns.ip(&["-j", "-s", "link", "show", "dev", ifname]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v[0]["stats64"]["tx"]["dropped"].as_u64().unwrap()
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_that_takes_no_frames_costs_bounded_memory_and_recovers() {
    let limits = RxLimits {
        queue_bytes: 64 << 10,
        stall_timeout: Duration::from_secs(1),
        drain_timeout: Duration::from_millis(500),
    };
    let s = scene(
        "rxstall",
        3,
        NetbackConfig {
            rx_limits: limits,
            ..NetbackConfig::default()
        },
    )
    .await;
    let mut bad = s.rig.raw_vif(2, 0).await;
    let vif = s.rig.vif_name(2, 0);
    let q = &mut bad.queues[0];
    proves_alive(q, &s.inj, 2, 60, 0);
    // No RX buffers: a flood toward the guest fills netback's queue to its byte limit, then
    // netback stops reading the vif (back-pressure, as Linux stops the vif's transmit queue):
    // the kernel keeps what its own bounded TAP queue holds and drops the rest.
    for k in 0..1500 {
        s.inj.send(
            &test_frame(mac(2), INJECTOR_MAC, 1000 + k, 1400),
            VirtioNetHdr::default(),
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let st = stats(&s.rig, 2, 0);
    assert!(
        st.rx_queue_bytes <= (64 << 10) + 1410 && st.rx_queue_len > 0,
        "{st:?}"
    );
    assert!(
        tap_dropped(&s, &vif) > 0,
        "the kernel's TAP queue overflowed"
    );
    // After the stall timeout the queue is dropped and the carrier goes down.
    wait_until("the queue stalls", || stats(&s.rig, 2, 0).rx_stalls == 1);
    assert!(carrier_down(&s, &vif));
    assert_eq!(stats(&s.rig, 2, 0).rx_queue_bytes, 0);
    // One buffer ends the stall. A segmentation-offload packet that needs more slots than
    // that waits, never overruns the ring, and expires after the drain timeout.
    post_rx(q, 0, 1);
    wait_until("the carrier comes back", || !carrier_down(&s, &vif));
    let expired = stats(&s.rig, 2, 0).rx_drop_expired;
    let gso = tcp4_frame(mac(2), 4000, 5000, 20_000);
    let hdr = VirtioNetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
    };
    s.inj.send(&gso, hdr);
    wait_until("the waiting packet expires", || {
        stats(&s.rig, 2, 0).rx_drop_expired > expired
    });
    assert_eq!(stats(&s.rig, 2, 0).rx_stalls, 1, "waiting is not stalling");
    // With buffers, frames arrive intact, and so does the segmentation-offload packet.
    post_rx(q, 1, 255);
    let frame = test_frame(mac(2), INJECTOR_MAC, 61, 1000);
    s.inj.send(&frame, VirtioNetHdr::default());
    assert!(received(q, &frame));
    let before = stats(&s.rig, 2, 0).rx_gso_packets;
    s.inj.send(&gso, hdr);
    wait_until("the offload packet is delivered", || {
        stats(&s.rig, 2, 0).rx_gso_packets > before
    });
    s.good.finish(3);
}

fn ctrl_call(vif: &mut RawSimVif, type_: u16, data: [u32; 3]) -> NetifCtrlResponse {
    let ctrl = vif.ctrl.as_mut().expect("a control ring");
    ctrl.ring
        .push_request(&NetifCtrlRequest {
            id: type_ ^ 0x5a5a,
            type_,
            data,
        })
        .unwrap();
    ctrl.ring.push_requests_and_check_notify();
    ctrl.notify().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(rsp) = ctrl.ring.pop_response().unwrap() {
            assert_eq!((rsp.id, rsp.type_), (type_ ^ 0x5a5a, type_));
            return rsp;
        }
        assert!(Instant::now() < deadline, "no control response");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn status(vif: &mut RawSimVif, type_: u16, data: [u32; 3]) -> u32 {
    ctrl_call(vif, type_, data).status
}

fn write_mapping(vif: &RawSimVif, entries: &[u32]) {
    let ctrl = vif.ctrl.as_ref().unwrap();
    assert!(ctrl.write_data(0, entries.as_bytes()));
}

/// Test frames (single data slot) received on `q` so far, each with its hash extra if any.
fn frames_on(q: &mut RawQueue) -> Vec<(Vec<u8>, Option<u32>)> {
    let mut out = Vec::new();
    let mut rsps = rx_responses(q, 1).into_iter().collect::<Vec<_>>();
    while let Some(r) = q.rx_ring.pop_response().unwrap() {
        rsps.push(r);
    }
    let mut it = rsps.into_iter();
    while let Some(first) = it.next() {
        let data = usize::try_from(first.status).ok().and_then(|len| {
            q.read_rx_buffer(usize::from(first.id), usize::from(first.offset), len)
        });
        let mut hash = None;
        let mut more = first.flags & NETRXF_EXTRA_INFO != 0;
        while more {
            let Some(slot) = it.next() else { break };
            let extra = NetifExtraInfo::read_from_bytes(slot.as_bytes()).unwrap();
            if extra.type_ == XEN_NETIF_EXTRA_TYPE_HASH {
                hash = Some(u32::from_le_bytes(extra.u[2..6].try_into().unwrap()));
            }
            more = extra.flags & XEN_NETIF_EXTRA_FLAG_MORE != 0;
        }
        assert_eq!(
            first.flags & NETRXF_MORE_DATA,
            0,
            "small frames use one slot"
        );
        if let Some(d) = data {
            out.push((d, hash));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_ring_is_validated_on_a_private_copy_and_steers() {
    let s = scene("ctrl", 3, NetbackConfig::default()).await;
    let opts = NetfrontOptions {
        queues: 2,
        ..NetfrontOptions::default()
    };
    let mut bad = s
        .rig
        .connect_raw(2, 0, opts, true, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(bad.queues.len(), 2);
    proves_alive(&mut bad.queues[0], &s.inj, 2, 70, 0);
    let gref = bad.ctrl.as_ref().unwrap().data_gref().unwrap();
    let invalid = XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER;
    let rsp = ctrl_call(&mut bad, GET_HASH_MAPPING_SIZE, [0; 3]);
    assert_eq!((rsp.status, rsp.data), (XEN_NETIF_CTRL_STATUS_SUCCESS, 128));
    assert_eq!(
        status(&mut bad, SET_HASH_MAPPING_SIZE, [129, 0, 0]),
        invalid
    );
    assert_eq!(
        status(&mut bad, SET_HASH_KEY, [gref, 41, 0]),
        XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW
    );
    assert_eq!(
        status(&mut bad, SET_HASH_KEY, [0x00ff_fff0, 40, 0]),
        invalid
    );
    assert_eq!(status(&mut bad, SET_HASH_ALGORITHM, [7, 0, 0]), invalid);
    assert_eq!(status(&mut bad, SET_HASH_FLAGS, [1 << 7, 0, 0]), invalid);
    assert_eq!(
        status(&mut bad, 99, [0; 3]),
        XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED
    );
    assert_eq!(status(&mut bad, SET_HASH_MAPPING_SIZE, [8, 0, 0]), 0);
    write_mapping(&bad, &[0, 1, 0, 1]);
    assert_eq!(
        status(&mut bad, SET_HASH_MAPPING, [gref, 2, u32::MAX]),
        invalid
    );
    assert_eq!(status(&mut bad, SET_HASH_MAPPING, [gref, 4, 6]), invalid);
    assert_eq!(status(&mut bad, SET_HASH_MAPPING, [gref, 4, 0]), 0);
    write_mapping(&bad, &[0, 1, 2, 0]);
    assert_eq!(
        status(&mut bad, SET_HASH_MAPPING, [gref, 4, 0]),
        invalid,
        "entries name queues that exist"
    );
    // A racing writer flips a mapping entry between a valid and an invalid queue while the
    // backend validates it: each request is judged on one private copy.
    let page = bad.ctrl.as_ref().unwrap().data.as_ptr() as usize;
    let stop = Arc::new(AtomicBool::new(false));
    let racer = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut k = 0u32;
            while !stop.load(Ordering::Acquire) {
                // SAFETY: the first word of the bad guest's data page, alive until the racer is
                // joined below.
                unsafe { AtomicU32::from_ptr(page as *mut u32) }
                    .store(if k % 2 == 0 { 1 } else { 9 }, Ordering::Relaxed);
                k = k.wrapping_add(1);
            }
        })
    };
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..300 {
        match status(&mut bad, SET_HASH_MAPPING, [gref, 1, 0]) {
            0 => ok += 1,
            s if s == invalid => refused += 1,
            other => panic!("status {other}"),
        }
    }
    stop.store(true, Ordering::Release);
    racer.join().unwrap();
    assert_eq!(ok + refused, 300);

    // Now for real: a key, TCP/IPv4 hashing, and every bucket on queue 1.
    let key: Vec<u8> = (0..40u8).map(|k| k.wrapping_mul(37) ^ 0x6d).collect();
    assert!(bad.ctrl.as_ref().unwrap().write_data(0, &key));
    assert_eq!(status(&mut bad, SET_HASH_KEY, [gref, 40, 0]), 0);
    let flags = XEN_NETIF_CTRL_HASH_TYPE_IPV4 | XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP;
    assert_eq!(status(&mut bad, SET_HASH_FLAGS, [flags, 0, 0]), 0);
    assert_eq!(
        status(
            &mut bad,
            SET_HASH_ALGORITHM,
            [XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ, 0, 0]
        ),
        0
    );
    let key: [u8; 40] = key.try_into().unwrap();
    let mut posted = [0u32; 2];
    for target in [1usize, 0] {
        write_mapping(&bad, &[target as u32; 8]);
        assert_eq!(status(&mut bad, SET_HASH_MAPPING, [gref, 8, 0]), 0);
        for (q, at) in bad.queues.iter_mut().zip(posted.iter_mut()) {
            post_rx(q, *at, 64);
            *at += 64;
        }
        let sent: Vec<Vec<u8>> = (0..16u16)
            .map(|k| tcp4_frame(mac(2), 1000 + k * 7 + target as u16, 80, 100))
            .collect();
        for f in &sent {
            s.inj.send(f, VirtioNetHdr::default());
        }
        let mut got: Vec<Vec<(Vec<u8>, Option<u32>)>> = vec![Vec::new(), Vec::new()];
        let deadline = Instant::now() + Duration::from_secs(5);
        while got[target].iter().filter(|(f, _)| sent.contains(f)).count() < sent.len()
            && Instant::now() < deadline
        {
            for (qi, q) in bad.queues.iter_mut().enumerate() {
                got[qi].extend(frames_on(q));
            }
        }
        let other = 1 - target;
        assert!(
            got[other].iter().all(|(f, _)| !sent.contains(f)),
            "no steered frame on queue {other}"
        );
        let arrived: Vec<_> = got[target]
            .iter()
            .filter(|(f, _)| sent.contains(f))
            .collect();
        assert_eq!(arrived.len(), sent.len(), "every frame on queue {target}");
        for (frame, hash) in arrived {
            let want = xen_netif::hash::hash_frame(&key, flags, frame)
                .unwrap()
                .value;
            assert_eq!(
                *hash,
                Some(want),
                "the hash extra is the guest's Toeplitz hash"
            );
        }
    }
    s.good.finish(3);
}
