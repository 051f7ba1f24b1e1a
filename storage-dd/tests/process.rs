//! `storage-dd` as a process: it ends its backend on SIGTERM, its backend dies with it when
//! it is killed (no second copy serving the same devices after a restart), and a wrong
//! backend path is one sentence on stderr.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A stand-in backend that runs until killed, whatever its arguments.
fn backend(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("backend.sh");
    std::fs::write(&path, "#!/bin/sh\nexec sleep 1000\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn start(dir: &std::path::Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_storage-dd"))
        .arg("--backend")
        .arg(backend(dir))
        .arg("--run-dir")
        .arg(dir.join("run"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// The backend's pid, once the health file names it.
fn backend_pid(dir: &std::path::Path) -> i32 {
    for _ in 0..500 {
        if let Some(pid) = std::fs::read(dir.join("run/health.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|h| h["pid"].as_i64())
        {
            return pid as i32;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the health file never named the backend");
}

fn wait_gone(pid: i32) -> bool {
    (0..500).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        !alive(pid)
    })
}

#[test]
fn sigterm_stops_the_backend_and_the_supervisor() {
    let dir = tempfile::tempdir().unwrap();
    let mut dd = start(dir.path());
    let pid = backend_pid(dir.path());
    kill(Pid::from_raw(dd.id() as i32), Signal::SIGTERM).unwrap();
    assert!(dd.wait().unwrap().success());
    assert!(wait_gone(pid));
    let health: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("run/health.json")).unwrap())
            .unwrap();
    assert_eq!(health["state"], "stopped");
    assert_eq!(health["service"], "blkback");
}

#[test]
fn a_killed_supervisor_takes_its_backend_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut dd = start(dir.path());
    let pid = backend_pid(dir.path());
    dd.kill().unwrap();
    dd.wait().unwrap();
    assert!(
        wait_gone(pid),
        "the backend got SIGKILL when its supervisor died"
    );
}

#[test]
fn a_wrong_backend_path_is_one_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_storage-dd"))
        .args(["--backend", "/nonexistent/blkback", "--run-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("storage-dd: cannot start /nonexistent/blkback: "),
        "{stderr}"
    );
}
