//! blkback under the storage driver domain's supervisor (`dd-supervisor`, what `storage-dd`
//! runs): the backend process is SIGKILLed during a workload of writes and flushes; the
//! supervisor starts it again, the restarted backend re-attaches to the guest's live ring, and
//! the guest carries on without any action of its own and loses no acknowledged write. The
//! supervisor's health file shows the restart and the backend's counters.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use blkfront::xenbus::FrontOptions;
use dd_supervisor::{supervise, Backoff, Health, ServiceSpec, State};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_supervisor_restarts_a_killed_backend_and_no_acknowledged_write_is_lost() {
    let common::ProcessRig {
        host,
        dd_creds,
        dd,
        guest,
        dir,
    } = common::process_rig().await;

    let spec = ServiceSpec {
        program: env!("CARGO_BIN_EXE_blkback").into(),
        args: vec![
            "--platform".into(),
            "sim".into(),
            "--stats-file".into(),
            dir.path().join("blkback-stats.json").into(),
        ],
        env: vec![(xen_sim::domain::ENV.into(), dd_creds.to_env_value().into())],
        stats_file: Some(dir.path().join("blkback-stats.json")),
        health_file: Some(dir.path().join("health.json")),
        backoff: Backoff::default(),
        stop_grace: Duration::from_secs(5),
    };
    let health = Arc::new(Mutex::new(Health::new("storage", "blkback")));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let supervisor = tokio::spawn(supervise(spec, Arc::clone(&health), async {
        let _ = stop_rx.await;
    }));

    let (_gxs, mut dev) = common::attach_disk_and_connect(
        &host,
        dd.domid(),
        &guest,
        &dir.path().join("disk.img"),
        64 << 20,
        FrontOptions::default(),
    )
    .await;

    let first = health.lock().unwrap().pid.expect("blkback runs");
    // Writes and flushes on the guest's thread while the backend is killed under it.
    let workload = tokio::task::spawn_blocking(move || {
        let front = &mut dev.queues[0];
        for batch in 0..300u64 {
            let ids: Vec<u64> = (0..8)
                .map(|k| {
                    let i = batch * 8 + k;
                    front.submit_write(i * 8, &common::block(i)).unwrap()
                })
                .collect();
            front.kick().unwrap();
            for id in ids {
                let done = front.wait_for(id, Duration::from_secs(30)).unwrap();
                assert_eq!(done.status, xen_abi::blkif::BLKIF_RSP_OKAY);
            }
            front.flush().unwrap();
        }
        dev
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !workload.is_finished(),
        "the workload runs when blkback is killed"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let mut dev = workload.await.unwrap();
    let (second, restarts, last_exit) = {
        let h = health.lock().unwrap();
        (h.pid, h.restarts, h.last_exit.clone())
    };
    assert!(second.is_some_and(|p| p != first), "a new blkback runs");
    assert_eq!(restarts, 1);
    assert_eq!(last_exit.as_deref(), Some("killed by signal 9"));
    let front = &mut dev.queues[0];
    for i in 0..300 * 8 {
        assert_eq!(
            front.read(i * 8, 4096).unwrap(),
            common::block(i),
            "block {i}"
        );
    }
    // The health file carries the restarted backend's counters.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("health.json")).unwrap()).unwrap();
    assert_eq!(file["state"], "running");
    assert_eq!(file["restarts"], 1);
    assert_eq!(file["counters"][0]["devid"], 51712, "{file}");
    stop_tx.send(()).unwrap();
    supervisor.await.unwrap().unwrap();
    assert_eq!(health.lock().unwrap().state, State::Stopped);
}
