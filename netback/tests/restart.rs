//! Backend restart: netback runs as its own process in the network driver domain; it is killed
//! with SIGKILL in the middle of a TCP transfer between two guests and started again. Without
//! any action of the guests, the restarted netback re-attaches to their live rings, recreates
//! the vifs on the bridge, and the transfer completes with every byte intact.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{attach, bare_rig, ping, tcp_transfer_counted};
use netfront::NetfrontOptions;
use xen_sim::Host;

fn spawn_netback(
    creds: &xen_sim::Credentials,
    netns: &str,
    stats: &std::path::Path,
) -> tokio::process::Child {
    let mut cmd = Host::command(creds, env!("CARGO_BIN_EXE_netback"));
    cmd.args(["--platform", "sim", "--netns", netns, "--stats-file"])
        .arg(stats)
        .stdout(Stdio::null())
        .stderr(match std::env::var_os("NETBACK_TEST_LOG") {
            Some(p) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .unwrap(),
            ),
            None => Stdio::null(),
        })
        .env("RUST_LOG", "netback=debug,xen_backend=debug")
        .kill_on_drop(true);
    cmd.spawn().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_netback_restarts_and_the_transfer_completes() {
    let mut rig = bare_rig("restart", 2).await;
    let stats_file = rig.dir.path().join("netback-stats.json");
    let mut backend = spawn_netback(&rig.dd_creds, &rig.dd_ns.name, &stats_file);
    let opts = NetfrontOptions {
        queues: 2,
        ..NetfrontOptions::default()
    };
    for i in 0..2 {
        attach(&rig, i, &[]).await;
        rig.connect(i, opts).await;
    }
    ping(&rig.guests[0].ns, &rig.guests[1].ipv4, 2);

    let bytes = 192 << 20;
    let progress = Arc::new(AtomicUsize::new(0));
    let transfer = {
        let (from, to) = (rig.guests[0].ns.path(), rig.guests[1].ns.path());
        let addr = rig.guests[1].ipv4.clone();
        let progress = Arc::clone(&progress);
        std::thread::spawn(move || {
            tcp_transfer_counted(&from, &to, &addr, 0, bytes, Some(progress))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while progress.load(Ordering::Acquire) < 8 << 20 {
        assert!(Instant::now() < deadline, "the transfer got going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    backend.kill().await.unwrap();
    let at_kill = progress.load(Ordering::Acquire);
    assert!(at_kill < bytes, "netback was killed mid-transfer");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut backend = spawn_netback(&rig.dd_creds, &rig.dd_ns.name, &stats_file);

    let (sent, received, total) = tokio::task::spawn_blocking(move || transfer.join().unwrap())
        .await
        .unwrap();
    assert_eq!(total, bytes, "every byte arrived");
    assert_eq!(sent, received, "and intact");
    ping(&rig.guests[1].ns, &rig.guests[0].ipv6, 2);
    // The restarted netback serves both vifs on the bridge and publishes its counters.
    let ports = rig.dd_ns.ip(&["link", "show", "master", "xenbr0"]);
    for g in &rig.guests {
        assert!(
            ports.contains(&format!("vif{}.0", g.domain.domid())),
            "{ports}"
        );
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let stats: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&stats_file).unwrap()).unwrap();
    let vifs = stats.as_array().unwrap();
    assert_eq!(vifs.len(), 2, "{stats}");
    for vif in vifs {
        assert_eq!(vif["queues"].as_array().unwrap().len(), 2, "{stats}");
    }
    backend.kill().await.unwrap();
}
