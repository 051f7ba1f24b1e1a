//! Backend restart: blkback runs as its own process in the driver domain; it is killed during a
//! write-heavy workload with flushes and started again. The guest carries on without any action
//! of its own, and every write acknowledged before the last completed flush reads back intact.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use blkfront::xenbus::FrontOptions;
use xen_abi::blkif::BLKIF_RSP_OKAY;
use xen_sim::Host;

fn spawn_blkback(creds: &xen_sim::Credentials, stats: &std::path::Path) -> tokio::process::Child {
    let mut cmd = Host::command(creds, env!("CARGO_BIN_EXE_blkback"));
    cmd.args(["--platform", "sim", "--stats-file"])
        .arg(stats)
        .stdout(Stdio::null())
        .stderr(match std::env::var_os("BLKBACK_TEST_LOG") {
            Some(p) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .unwrap(),
            ),
            None => Stdio::null(),
        })
        .env(
            "RUST_LOG",
            std::env::var("BLKBACK_TEST_LEVEL").unwrap_or_else(|_| "blkback=debug".into()),
        )
        .kill_on_drop(true);
    cmd.spawn().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_restarts_and_no_acknowledged_write_is_lost() {
    let common::ProcessRig {
        host,
        dd_creds,
        dd,
        guest,
        dir,
    } = common::process_rig().await;
    let stats_file = dir.path().join("blkback-stats.json");
    let mut backend = spawn_blkback(&dd_creds, &stats_file);

    let disk = dir.path().join("disk.img");
    let opts = FrontOptions {
        ring_pages: 2,
        ..FrontOptions::default()
    };
    let (gxs, mut dev) =
        common::attach_disk_and_connect(&host, dd.domid(), &guest, &disk, 256 << 20, opts).await;

    let running = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&running);
    let progress = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&progress);
    let workload = tokio::task::spawn_blocking(move || {
        let front = &mut dev.queues[0];
        let mut durable = 0u64; // blocks [0, durable) were acknowledged before a completed flush
        let mut batch = 0u64;
        while flag.load(Ordering::Acquire) || batch < 40 {
            let ids: Vec<u64> = (0..16)
                .map(|k| {
                    front
                        .submit_write((batch * 16 + k) * 8, &common::block(batch * 16 + k))
                        .unwrap()
                })
                .collect();
            front.kick().unwrap();
            for id in ids {
                let done = front.wait_for(id, Duration::from_secs(30)).unwrap();
                assert_eq!(done.status, BLKIF_RSP_OKAY);
            }
            front.flush().unwrap();
            batch += 1;
            durable = batch * 16;
            seen.store(batch, Ordering::Release);
            if batch >= 4000 {
                break;
            }
        }
        (dev, durable)
    });

    // Let the workload run, then kill blkback mid-flight and start it again.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let at_kill = progress.load(Ordering::Acquire);
    assert!(
        at_kill > 0 && at_kill < 4000,
        "the workload is running when blkback is killed ({at_kill} batches)"
    );
    backend.kill().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut backend = spawn_blkback(&dd_creds, &stats_file);
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.store(false, Ordering::Release);
    let (mut dev, durable) = workload.await.unwrap();
    assert!(durable >= 40 * 16);
    assert!(
        durable / 16 > at_kill,
        "the guest carried on after the restart"
    );

    let front = &mut dev.queues[0];
    for i in 0..durable {
        assert_eq!(
            front.read(i * 8, 4096).unwrap(),
            common::block(i),
            "block {i} lost"
        );
    }
    // The restarted backend publishes its counters for the supervisor.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let stats: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&stats_file).unwrap()).unwrap();
    let queue = &stats[0]["queues"][0];
    assert_eq!(stats[0]["devid"], 51712);
    assert!(
        queue["writes"].as_u64().unwrap() + queue["flushes"].as_u64().unwrap() > 0
            && queue["reads"].as_u64().unwrap() > 0,
        "{stats}"
    );

    // The disk grows while no backend runs: the restarted one re-attaches and announces the
    // new size (the frontend learns of it from a state event, as Linux blkfront does).
    backend.kill().await.unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .unwrap()
        .set_len(320 << 20)
        .unwrap();
    let mut backend = spawn_blkback(&dd_creds, &stats_file);
    let sectors = dev
        .wait_for_resize(&gxs, Duration::from_secs(10))
        .await
        .expect("the restarted backend announces the new size");
    assert_eq!(sectors, 320 << 11);
    let front = &mut dev.queues[0];
    front.write(300 << 11, &common::block(7)).unwrap();
    assert_eq!(front.read(300 << 11, 4096).unwrap(), common::block(7));
    backend.kill().await.unwrap();
}
