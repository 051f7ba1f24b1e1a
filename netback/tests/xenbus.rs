//! netback's XenBus side against misbehaving and departing frontends, with good guests
//! talking throughout: keys that must be refused (hostile item 7), key-rewrite floods (item
//! 21), hot-unplug as `xl network-detach` does it (everything released, the vif gone), and a
//! guest driver reload that reconnects with new rings.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::raw::{proves_alive, scene};
use common::{attach_vif, ping};
use netback::device::NetbackConfig;
use netfront::negotiate::FrontendKeys;
use netfront::NetfrontOptions;
use xen_backend::Platform;
use xen_grant::GrantedPages;
use xen_sim::toolstack::request_detach;
use xen_store::XenbusState;

fn set(keys: &mut FrontendKeys, suffix: &str, value: &str) {
    let entry = keys
        .iter_mut()
        .find(|(k, _)| k.ends_with(suffix))
        .unwrap_or_else(|| panic!("no key ending in {suffix}"));
    entry.1 = value.to_string();
}

fn remove(keys: &mut FrontendKeys, suffix: &str) {
    let before = keys.len();
    keys.retain(|(k, _)| !k.ends_with(suffix));
    assert!(keys.len() < before, "no key ending in {suffix}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frontend_keys_are_refused() {
    let s = scene("keys", 3, NetbackConfig::default()).await;
    type Edit = fn(&mut FrontendKeys);
    let one = NetfrontOptions::default();
    let two = NetfrontOptions { queues: 2, ..one };
    let cases: [(&str, NetfrontOptions, Edit); 10] = [
        ("no tx-ring-ref", one, |k| remove(k, "/tx-ring-ref")),
        ("a tx-ring-ref never granted", one, |k| {
            set(k, "/tx-ring-ref", "65000")
        }),
        ("an rx-ring-ref that is not a number", one, |k| {
            set(k, "/rx-ring-ref", "ring")
        }),
        ("an unbound event channel", one, |k| {
            set(k, "/event-channel-tx", "4000")
        }),
        ("no request-rx-copy", one, |k| remove(k, "/request-rx-copy")),
        ("request-rx-copy = 0", one, |k| {
            set(k, "/request-rx-copy", "0")
        }),
        ("multi-queue-num-queues = 0", two, |k| {
            set(k, "/multi-queue-num-queues", "0")
        }),
        ("more queues than offered", two, |k| {
            set(k, "/multi-queue-num-queues", "9")
        }),
        ("queue-1 keys missing", two, |k| {
            k.retain(|(key, _)| !key.contains("/queue-1/"))
        }),
        ("no feature-rx-notify", one, |k| {
            remove(k, "/feature-rx-notify")
        }),
    ];
    for (devid, (what, opts, edit)) in cases.iter().enumerate() {
        let devid = devid as u32 + 1;
        attach_vif(&s.rig, 2, devid, &[]).await;
        let edit = *edit;
        let result = s
            .rig
            .connect_raw(2, devid, *opts, false, &mut |k| edit(k))
            .await;
        assert!(
            matches!(result, Err(netfront::Error::Refused)),
            "{what}: refused"
        );
        let xs = s.rig.host_xs().await;
        let be = xen_store::path::backend_path(
            s.rig.dd.domid(),
            "vif",
            s.rig.guests[2].domain.domid(),
            devid,
        );
        let error = xs.read_string(&format!("{be}/error")).await.unwrap();
        assert!(
            !error.is_empty(),
            "{what}: the reason is written for the toolstack"
        );
    }
    // The guest's properly configured vif 0 still connects and works.
    let mut good = s.rig.raw_vif(2, 0).await;
    proves_alive(&mut good.queues[0], &s.inj, 2, 1, 0);
    s.good.finish(3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frontend_key_floods_do_not_disturb_connected_vifs() {
    let s = scene("flood", 3, NetbackConfig::default()).await;
    let opts = NetfrontOptions {
        multicast_control: true,
        ..NetfrontOptions::default()
    };
    let mut bad = s
        .rig
        .connect_raw(2, 0, opts, false, &mut |_| {})
        .await
        .unwrap();
    proves_alive(&mut bad.queues[0], &s.inj, 2, 1, 0);
    let gxs = s.rig.guests[2].domain.xenstore().await.unwrap();
    let dir = bad.dir.clone();
    for k in 0..2000u32 {
        gxs.write(&format!("{dir}/state"), b"4").await.unwrap();
        gxs.write(
            &format!("{dir}/request-multicast-control"),
            (k % 2).to_string().as_bytes(),
        )
        .await
        .unwrap();
        gxs.write(&format!("{dir}/tx-ring-ref"), k.to_string().as_bytes())
            .await
            .unwrap();
        gxs.write(&format!("{dir}/junk-{}", k % 64), b"x")
            .await
            .unwrap();
    }
    // The flood changed nothing the backend had read at connect time.
    assert_eq!(
        s.rig.backend_state(2, 0).await,
        Some(XenbusState::Connected)
    );
    proves_alive(&mut bad.queues[0], &s.inj, 2, 2, 1);
    s.good.finish(3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_unplug_releases_everything_and_reconnect_uses_new_rings() {
    let common::raw::Scene { mut rig, inj, good } =
        scene("unplug", 3, NetbackConfig::default()).await;
    let mut bad = rig.raw_vif(2, 0).await;
    proves_alive(&mut bad.queues[0], &inj, 2, 1, 0);
    let q = &bad.queues[0];
    let refs: Vec<u32> = [q.tx_ring.memory().refs(), q.rx_ring.memory().refs()].concat();
    let ports = [q.tx_port(), q.rx_port];
    let vif = rig.vif_name(2, 0);
    assert!(rig.dd_ns.exec(&["ip", "link", "show", &vif]).0);
    // `xl network-detach`: online = 0, backend asked to close; the frontend follows.
    let host_xs = rig.host_xs().await;
    let guest = rig.guests[2].domain.domid();
    request_detach(&host_xs, "vif", rig.dd.domid(), guest, 0)
        .await
        .unwrap();
    assert!(rig.wait_backend_state(2, 0, XenbusState::Closing).await);
    let gxs = rig.guests[2].domain.xenstore().await.unwrap();
    gxs.write_state(&format!("{}/state", bad.dir), XenbusState::Closed)
        .await
        .unwrap();
    assert!(rig.wait_backend_removed(2, 0).await);
    let hv = rig.host.hypervisor();
    for r in refs {
        assert_ne!(
            hv.grant_in_use(guest, r),
            Some(true),
            "ring ref {r} unmapped"
        );
    }
    for p in ports {
        assert_ne!(hv.port_bound(guest, p), Some(true), "port {p} unbound");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while rig.dd_ns.exec(&["ip", "link", "show", &vif]).0 {
        assert!(std::time::Instant::now() < deadline, "{vif} removed");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(bad);

    // Guest 0 reloads its driver: closes, comes back with new rings, and talks again.
    good.finish(2);
    let g0xs = rig.guests[0].domain.xenstore().await.unwrap();
    let front = rig.guests[0].front.take().unwrap();
    front.close(&g0xs).await.unwrap();
    let dir = xen_store::path::frontend_path(rig.guests[0].domain.domid(), "vif", 0);
    g0xs.write_state(&format!("{dir}/state"), XenbusState::Initialising)
        .await
        .unwrap();
    assert!(rig.wait_backend_state(0, 0, XenbusState::InitWait).await);
    rig.connect(0, NetfrontOptions::default()).await;
    ping(&rig.guests[0].ns, &rig.guests[1].ipv4, 3);
    let again = common::raw::GoodTraffic::start(&rig);
    again.finish(2);
}
