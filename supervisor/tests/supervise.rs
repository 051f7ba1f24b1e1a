//! The supervision loop with ordinary programs as backends: restarts with backoff and a
//! health file that says so, a killed backend replaced, a clean stop, a wrong path refused
//! with a sentence.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dd_supervisor::{supervise, Backoff, Health, ServiceSpec, State};

fn spec(program: &str, args: &[&str], dir: &std::path::Path) -> ServiceSpec {
    ServiceSpec {
        program: program.into(),
        args: args.iter().map(Into::into).collect(),
        env: vec![("DD_TEST".into(), "1".into())],
        stats_file: Some(dir.join("stats.json")),
        health_file: Some(dir.join("health.json")),
        backoff: Backoff::new(
            Duration::from_millis(20),
            Duration::from_millis(80),
            Duration::from_secs(30),
        ),
        stop_grace: Duration::from_secs(2),
    }
}

fn health_file(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("health.json")).unwrap()).unwrap()
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

fn alive(pid: u32) -> bool {
    // A zombie still answers kill(0): count it as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

#[tokio::test]
async fn a_backend_that_keeps_dying_is_restarted_with_growing_delays() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("stats.json"), br#"[{"devid": 51712}]"#).unwrap();
    let health = Arc::new(Mutex::new(Health::new("storage", "sh")));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(supervise(
        spec(
            "/bin/sh",
            &["-c", "test \"$DD_TEST\" = 1 && exit 3"],
            dir.path(),
        ),
        Arc::clone(&health),
        async {
            let _ = stop_rx.await;
        },
    ));
    wait_until("four restarts", || health.lock().unwrap().restarts >= 4).await;
    let file = health_file(dir.path());
    assert_eq!(file["last_exit"], "exited with status 3", "{file}");
    assert_eq!(file["role"], "storage");
    assert_eq!(
        file["counters"][0]["devid"], 51712,
        "the backend's own counters"
    );
    stop_tx.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(health.lock().unwrap().state, State::Stopped);
    assert_eq!(health_file(dir.path())["state"], "stopped");
}

#[tokio::test]
async fn a_killed_backend_is_replaced_and_a_stop_ends_it() {
    let dir = tempfile::tempdir().unwrap();
    let health = Arc::new(Mutex::new(Health::new("network", "sleep")));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(supervise(
        spec("/bin/sleep", &["1000"], dir.path()),
        Arc::clone(&health),
        async {
            let _ = stop_rx.await;
        },
    ));
    let pid = || health.lock().unwrap().pid;
    wait_until("the backend runs", || pid().is_some()).await;
    let first = pid().unwrap();
    assert_eq!(health.lock().unwrap().state, State::Running);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until("a new backend runs", || pid().is_some_and(|p| p != first)).await;
    let second = pid().unwrap();
    {
        let h = health.lock().unwrap();
        assert_eq!(h.restarts, 1);
        assert_eq!(h.last_exit.as_deref(), Some("killed by signal 9"));
    }
    assert!(!alive(first));
    stop_tx.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert!(!alive(second), "stopping the supervisor ends its backend");
}

#[tokio::test]
async fn a_backend_that_cannot_start_is_reported_in_a_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let health = Arc::new(Mutex::new(Health::new("storage", "blkback")));
    let err = supervise(
        spec("/nonexistent/blkback", &[], dir.path()),
        health,
        std::future::pending(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("cannot start /nonexistent/blkback: ") && err.contains("--backend"),
        "{err}"
    );
}
