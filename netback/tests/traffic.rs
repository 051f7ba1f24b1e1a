//! Two simulated guests, each in its own network namespace, talk through netback in a network
//! driver domain and a bridge: ping both ways over IPv4 and IPv6, and a TCP transfer whose bytes
//! are hashed on both ends, with offloads on and off, with 1 and 4 queues.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::{attach, ping, rig, tcp_transfer};
use netback::device::NetbackConfig;
use netfront::NetfrontOptions;

async fn two_guests_talk(tag: &str, opts: NetfrontOptions, bytes: usize) {
    let mut rig = rig(tag, 2, NetbackConfig::default()).await;
    for i in 0..2 {
        attach(&rig, i, &[]).await;
        rig.connect(i, opts).await;
        assert_eq!(rig.guests[i].front.as_ref().unwrap().queues(), opts.queues);
    }
    let bridge = rig.dd_ns.ip(&["link", "show", "master", "xenbr0"]);
    assert!(
        bridge.contains("vif1.0")
            || bridge.contains(&format!("vif{}.0", rig.guests[0].domain.domid())),
        "{bridge}"
    );
    let (g0, g1) = (&rig.guests[0], &rig.guests[1]);
    ping(&g0.ns, &g1.ipv4, 3);
    ping(&g1.ns, &g0.ipv4, 3);
    ping(&g0.ns, &g1.ipv6, 3);
    ping(&g1.ns, &g0.ipv6, 3);
    let (sent, received, total) = tcp_transfer(&g0.ns, &g1.ns, &g1.ipv4, 5001, bytes);
    assert_eq!(total, bytes);
    assert_eq!(sent, received, "TCP payload differs");
    let (sent, received, total) = tcp_transfer(&g1.ns, &g0.ns, &g0.ipv6, 5002, bytes);
    assert_eq!(total, bytes);
    assert_eq!(sent, received, "TCP payload differs (IPv6)");
    let snap = netback::device::snapshot(&rig.stats);
    assert_eq!(snap.len(), 2);
    for vif in &snap {
        assert_eq!(vif.queues.len(), opts.queues as usize);
        let tx: u64 = vif.queues.iter().map(|q| q.tx_packets).sum();
        let rx: u64 = vif.queues.iter().map(|q| q.rx_packets).sum();
        let errors: u64 = vif
            .queues
            .iter()
            .map(|q| q.tx_errors + q.rx_copy_errors)
            .sum();
        assert!(tx > 0 && rx > 0, "{vif:?}");
        assert_eq!(errors, 0, "{vif:?}");
        let gso: u64 = vif
            .queues
            .iter()
            .map(|q| q.tx_gso_packets + q.rx_gso_packets)
            .sum();
        assert_eq!(
            gso > 0,
            opts.gso,
            "segmentation offload used iff negotiated: {vif:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offloads_on_one_queue() {
    two_guests_talk("on1", NetfrontOptions::default(), 4 << 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offloads_off_one_queue() {
    let opts = NetfrontOptions {
        sg: false,
        gso: false,
        csum: false,
        ipv6_csum: false,
        split: false,
        ..NetfrontOptions::default()
    };
    two_guests_talk("off1", opts, 1 << 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offloads_on_four_queues() {
    let opts = NetfrontOptions {
        queues: 4,
        ..NetfrontOptions::default()
    };
    two_guests_talk("on4", opts, 4 << 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offloads_off_four_queues() {
    let opts = NetfrontOptions {
        queues: 4,
        sg: false,
        gso: false,
        csum: false,
        ipv6_csum: false,
        ..NetfrontOptions::default()
    };
    two_guests_talk("off4", opts, 1 << 20).await;
}
