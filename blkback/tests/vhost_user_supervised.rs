//! `blkback-vhost-user` under the storage supervisor (`dd-supervisor`, what
//! `storage-dd --backend blkback-vhost-user` runs): the backend is SIGKILLed while a VMM is
//! connected; the supervisor starts it again on the same socket, the VMM connects again (as
//! QEMU does with `reconnect=1`) and finds every write it had flushed; the health file shows
//! the restart and the backend's counters.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blkback::vhost_user::frontend::{self, header, GuestMemory};
use dd_supervisor::{supervise, Backoff, Health, ServiceSpec, State};

const WAIT: Duration = Duration::from_secs(10);

/// Writes (or reads back) 16 blocks of 4 KiB with a flush, over a fresh connection.
fn session(socket: &std::path::Path, write: bool) -> Vec<Vec<u8>> {
    let mut mem = GuestMemory::new(16 << 20, 1).unwrap();
    let mut dev = frontend::connect(socket, &mem, 1, 128, u64::MAX, WAIT).unwrap();
    let vq = &mut dev.queues[0];
    let mut out = Vec::new();
    for i in 0..16u64 {
        let (hdr, data, status) = (
            mem.alloc(16).unwrap(),
            mem.alloc(4096).unwrap(),
            mem.alloc(1).unwrap(),
        );
        let kind = if write { 1 } else { 0 };
        mem.write(hdr, &header(kind, i * 8)).unwrap();
        let block: Vec<u8> = (0..4096).map(|b| (b as u64 * 7 + i) as u8).collect();
        if write {
            mem.write(data, &block).unwrap();
        }
        vq.add(
            &mem,
            &[(hdr, 16, false), (data, 4096, !write), (status, 1, true)],
        )
        .unwrap();
        vq.notify().unwrap();
        assert_eq!(vq.wait_used(&mem, 1, WAIT).unwrap().len(), 1);
        assert_eq!(mem.read(status, 1).unwrap(), [0]);
        out.push(if write {
            block
        } else {
            mem.read(data, 4096).unwrap()
        });
    }
    if write {
        let (hdr, status) = (mem.alloc(16).unwrap(), mem.alloc(1).unwrap());
        mem.write(hdr, &header(4, 0)).unwrap();
        vq.add(&mem, &[(hdr, 16, false), (status, 1, true)])
            .unwrap();
        vq.notify().unwrap();
        assert_eq!(vq.wait_used(&mem, 1, WAIT).unwrap().len(), 1);
        assert_eq!(mem.read(status, 1).unwrap(), [0], "flush");
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_supervisor_restarts_a_killed_vhost_user_backend_and_the_vmm_finds_its_data() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 4 << 20]).unwrap();
    let socket = dir.path().join("vhost.sock");
    let stats = dir.path().join("blkback-vhost-user-stats.json");
    let spec = ServiceSpec {
        program: env!("CARGO_BIN_EXE_blkback-vhost-user").into(),
        args: vec![
            "--socket".into(),
            socket.clone().into(),
            "--disk".into(),
            disk.into(),
            "--stats-file".into(),
            stats.clone().into(),
        ],
        env: Vec::new(),
        stats_file: Some(stats),
        health_file: Some(dir.path().join("health.json")),
        backoff: Backoff::default(),
        stop_grace: Duration::from_secs(5),
    };
    let health = Arc::new(Mutex::new(Health::new("storage", "blkback-vhost-user")));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let supervisor = tokio::spawn(supervise(spec, Arc::clone(&health), async {
        let _ = stop_rx.await;
    }));

    let s = socket.clone();
    let written = tokio::task::spawn_blocking(move || session(&s, true))
        .await
        .unwrap();
    let first = health.lock().unwrap().pid.expect("the backend runs");
    // SAFETY: kill(2) on the backend's pid, which the supervisor has not reaped yet.
    unsafe { libc::kill(first as libc::pid_t, libc::SIGKILL) };
    let deadline = Instant::now() + WAIT;
    loop {
        let h = health.lock().unwrap().clone();
        if h.restarts == 1 && h.state == State::Running && h.pid != Some(first) {
            break;
        }
        assert!(Instant::now() < deadline, "not restarted: {h:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let s = socket.clone();
    let back = tokio::task::spawn_blocking(move || session(&s, false))
        .await
        .unwrap();
    assert_eq!(
        back, written,
        "every flushed write reads back after the restart"
    );

    // The health file carries the restarted backend's counters (written once a second).
    let deadline = Instant::now() + WAIT;
    loop {
        let h = health.lock().unwrap().clone();
        let reads = h
            .counters
            .as_ref()
            .and_then(|c| c["queues"][0]["reads"].as_u64());
        if reads == Some(16) {
            assert_eq!(h.last_exit.as_deref(), Some("killed by signal 9"));
            break;
        }
        assert!(Instant::now() < deadline, "no counters: {h:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_tx.send(()).unwrap();
    supervisor.await.unwrap().unwrap();
}
