//! The toolstack's keys take effect: `rate` (the credit scheduler limits what a guest sends, and
//! a new value applies live) and `mtu` (the vif's MTU). Only lower bounds on time are asserted:
//! a loaded machine can make a transfer slower, never faster than its rate allows.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::{Duration, Instant};

use common::{attach, ping, rig, tcp_transfer};
use netback::device::NetbackConfig;
use netfront::NetfrontOptions;
use xen_backend::Platform;

/// Moves `bytes` over TCP from guest `from` to guest `to`, checks them, returns how long it took.
fn timed_transfer(rig: &common::Rig, from: usize, to: usize, bytes: usize) -> Duration {
    let started = Instant::now();
    let (g, h) = (&rig.guests[from], &rig.guests[to]);
    let (sent, received, total) = tcp_transfer(&g.ns, &h.ns, &h.ipv4, 0, bytes);
    let took = started.elapsed();
    assert_eq!(
        (total, sent),
        (bytes, received),
        "the transfer arrived intact"
    );
    took
}

fn throttled(rig: &common::Rig, i: usize) -> u64 {
    let domid = rig.guests[i].domain.domid();
    netback::device::snapshot(&rig.stats)
        .iter()
        .filter(|v| v.frontend == domid)
        .flat_map(|v| v.queues.iter().map(|q| q.tx_throttled))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_what_a_guest_sends_and_changes_live() {
    let mut rig = rig("rate", 2, NetbackConfig::default()).await;
    // 2.5 MB/s for guest 0: 125000 bytes of credit every 50 ms.
    attach(&rig, 0, &[("rate", "125000,50000"), ("mtu", "9000")]).await;
    attach(&rig, 1, &[]).await;
    for i in 0..2 {
        rig.connect(i, NetfrontOptions::default()).await;
    }
    let vif = format!("vif{}.0", rig.guests[0].domain.domid());
    let link = rig.dd_ns.ip(&["link", "show", &vif]);
    assert!(link.contains("mtu 9000"), "{link}");
    ping(&rig.guests[0].ns, &rig.guests[1].ipv4, 1);

    let bytes = 2 << 20;
    let took = timed_transfer(&rig, 0, 1, bytes);
    // 2 MiB at 2.5 MB/s, less the first period's credit: at least 0.7 s.
    assert!(
        took >= Duration::from_millis(700),
        "{took:?} for 2 MiB at 2.5 MB/s"
    );
    let before = throttled(&rig, 0);
    assert!(before > 0, "the credit scheduler held packets back");

    // The toolstack halves the rate while the guest runs.
    let xs = rig.host_xs().await;
    let be = xen_store::path::backend_path(rig.dd.domid(), "vif", rig.guests[0].domain.domid(), 0);
    xs.write(&format!("{be}/rate"), b"62500,50000")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let took = timed_transfer(&rig, 0, 1, bytes);
    assert!(
        took >= Duration::from_millis(1500),
        "{took:?} for 2 MiB at 1.25 MB/s"
    );
    assert!(throttled(&rig, 0) > before);
    // The other direction is not limited by guest 0's rate (netback limits what a guest sends).
    timed_transfer(&rig, 1, 0, bytes);
    assert_eq!(throttled(&rig, 1), 0);
}
