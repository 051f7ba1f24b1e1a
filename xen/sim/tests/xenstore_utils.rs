//! Debian's xenstore-utils (libxenstore's client side) against the simulated xenstored, pointed
//! at it with `XENSTORED_PATH`. CI installs the `xenstore-utils` package.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use xen_sim::xenstored::{Quotas, Xenstored};

struct Fixture {
    dir: PathBuf,
    socket: PathBuf,
}

impl Fixture {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("xs-utils-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("socket");
        Self { dir, socket }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tool(name: &str) -> String {
    let path = format!("/usr/bin/{name}");
    assert!(
        Path::new(&path).exists(),
        "{path} is missing: install Debian's xenstore-utils package"
    );
    path
}

async fn run(socket: &Path, name: &str, args: &[&str]) -> Output {
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(tool(name))
            .args(args)
            .env("XENSTORED_PATH", socket)
            .output(),
    )
    .await
    .expect("tool finished in time")
    .expect("tool ran");
    out
}

async fn ok(socket: &Path, name: &str, args: &[&str]) -> String {
    let out = run(socket, name, args).await;
    assert!(
        out.status.success(),
        "{name} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xenstore_utils_work_against_the_simulated_daemon() {
    let fx = Fixture::new("compat");
    let xsd = Xenstored::new(Quotas::default());
    xsd.listen(&fx.socket).unwrap();
    let s = fx.socket.as_path();

    ok(
        s,
        "xenstore-write",
        &["/vm/test/name", "guest-one", "/vm/test/memory", "512"],
    )
    .await;
    assert_eq!(
        ok(s, "xenstore-read", &["/vm/test/name"]).await,
        "guest-one\n"
    );
    assert_eq!(ok(s, "xenstore-exists", &["/vm/test/memory"]).await, "");
    assert!(!run(s, "xenstore-exists", &["/vm/none"])
        .await
        .status
        .success());
    assert_eq!(
        ok(s, "xenstore-list", &["/vm/test"]).await,
        "memory\nname\n"
    );
    let ls = ok(s, "xenstore-ls", &["/vm"]).await;
    assert!(ls.contains("test = \"\""), "{ls}");
    assert!(ls.contains(" name = \"guest-one\""), "{ls}");

    ok(s, "xenstore-chmod", &["/vm/test/name", "n5", "r7"]).await;
    let perms = xsd
        .dom0_client()
        .unwrap()
        .get_perms("/vm/test/name")
        .await
        .unwrap();
    assert_eq!(
        perms.iter().map(ToString::to_string).collect::<Vec<_>>(),
        vec!["n5", "r7"]
    );
    let ls_perms = ok(s, "xenstore-ls", &["-p", "/vm/test"]).await;
    assert!(ls_perms.contains("n5,r7"), "{ls_perms}");

    ok(s, "xenstore-rm", &["/vm/test/memory"]).await;
    assert!(!run(s, "xenstore-read", &["/vm/test/memory"])
        .await
        .status
        .success());

    // xenstore-watch prints the first event at once, then one per change; -n bounds it.
    let socket = fx.socket.clone();
    let watcher =
        tokio::spawn(async move { ok(&socket, "xenstore-watch", &["-n", "3", "/vm/test"]).await });
    let xs = xsd.dom0_client().unwrap();
    // Wait for the watch to be registered (the first event is its own).
    for _ in 0..200 {
        if xsd.connection_count() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    xs.write("/vm/test/state", b"1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    xs.write("/vm/test/state", b"2").await.unwrap();
    let printed = tokio::time::timeout(Duration::from_secs(20), watcher)
        .await
        .expect("watch ended")
        .unwrap();
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(
        lines,
        vec!["/vm/test", "/vm/test/state", "/vm/test/state"],
        "{printed}"
    );

    // Errors come back as the tool's own messages, and the daemon carries on.
    let out = run(s, "xenstore-read", &["/does/not/exist"]).await;
    assert!(!out.status.success());
    assert_eq!(
        ok(s, "xenstore-read", &["/vm/test/name"]).await,
        "guest-one\n"
    );
}
