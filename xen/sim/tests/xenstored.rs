//! The simulated xenstored through the xen-store client: operations, permissions, watches,
//! transactions, quotas, and hostile clients.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use xen_sim::xenstored::{Quotas, Xenstored};
use xen_store::perms::{Perm, PermKind};
use xen_store::{Xs, XsErrno};

async fn next_event(w: &mut xen_store::Watch) -> String {
    tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .expect("watch event in time")
        .expect("watch open")
        .path
}

async fn no_event(w: &mut xen_store::Watch) {
    assert!(
        tokio::time::timeout(Duration::from_millis(100), w.next())
            .await
            .is_err(),
        "unexpected event"
    );
}

/// Sets up `/local/domain/<d>` as the toolstack does: owned by dom0, readable by the domain,
/// with a `data` directory the domain owns.
async fn make_domain(dom0: &Xs, d: u16) {
    let base = format!("/local/domain/{d}");
    dom0.write(&base, b"").await.unwrap();
    dom0.set_perms(
        &base,
        &[Perm::new(0, PermKind::None), Perm::new(d, PermKind::Read)],
    )
    .await
    .unwrap();
    dom0.write(&format!("{base}/data"), b"").await.unwrap();
    dom0.set_perms(&format!("{base}/data"), &[Perm::new(d, PermKind::None)])
        .await
        .unwrap();
}

#[tokio::test]
async fn basic_operations() {
    let xsd = Xenstored::new(Quotas::default());
    let xs = xsd.dom0_client().unwrap();
    xs.write("/a/b/c", b"hello").await.unwrap();
    assert_eq!(xs.read("/a/b/c").await.unwrap(), b"hello");
    assert_eq!(xs.read("/a/b").await.unwrap(), b"");
    assert_eq!(xs.directory("/a").await.unwrap(), vec!["b"]);
    xs.mkdir("/a/d").await.unwrap();
    xs.mkdir("/a/d").await.unwrap();
    assert_eq!(xs.directory("/a").await.unwrap(), vec!["b", "d"]);
    assert_eq!(
        xs.read("/nope").await.unwrap_err().errno(),
        Some(XsErrno::ENOENT)
    );
    xs.rm("/a/b").await.unwrap();
    assert!(!xs.exists("/a/b/c").await.unwrap());
    xs.rm("/a/missing").await.unwrap();
    assert_eq!(
        xs.rm("/zz/missing").await.unwrap_err().errno(),
        Some(XsErrno::ENOENT)
    );
    assert_eq!(xs.get_domain_path(7).await.unwrap(), "/local/domain/7");
    assert!(xs.is_domain_introduced(0).await.unwrap());
    assert!(!xs.is_domain_introduced(9).await.unwrap());
    let empty = xs.read("/a/d").await.unwrap();
    assert!(empty.is_empty());
    xs.write("/bin", &[0, 1, 2, 255]).await.unwrap();
    assert_eq!(xs.read("/bin").await.unwrap(), vec![0, 1, 2, 255]);
}

#[tokio::test]
async fn large_directory_uses_directory_part() {
    let xsd = Xenstored::new(Quotas::default());
    let xs = xsd.dom0_client().unwrap();
    let names: Vec<String> = (0..400)
        .map(|i| format!("child-with-a-longish-name-{i:04}"))
        .collect();
    for n in &names {
        xs.write(&format!("/big/{n}"), b"x").await.unwrap();
    }
    let listed = xs.directory("/big").await.unwrap();
    assert_eq!(listed, names);
}

#[tokio::test]
async fn permissions_isolate_domains() {
    let xsd = Xenstored::new(Quotas::default());
    let dom0 = xsd.dom0_client().unwrap();
    make_domain(&dom0, 5).await;
    make_domain(&dom0, 6).await;
    let d5 = xsd.client_for(5).unwrap();
    let d6 = xsd.client_for(6).unwrap();

    d5.write("data/secret", b"five").await.unwrap();
    assert_eq!(
        d5.read("/local/domain/5/data/secret").await.unwrap(),
        b"five"
    );
    let perms = d5.get_perms("data/secret").await.unwrap();
    assert_eq!(
        perms[0],
        Perm::new(5, PermKind::None),
        "creator owns what it creates"
    );

    let denied = d6.read("/local/domain/5/data/secret").await.unwrap_err();
    assert_eq!(denied.errno(), Some(XsErrno::EACCES));
    assert_eq!(
        d6.write("/local/domain/5/data/x", b"!")
            .await
            .unwrap_err()
            .errno(),
        Some(XsErrno::EACCES)
    );
    assert_eq!(
        d6.rm("/local/domain/5/data").await.unwrap_err().errno(),
        Some(XsErrno::EACCES)
    );
    assert_eq!(
        d5.write("/local/domain/5/name", b"x")
            .await
            .unwrap_err()
            .errno(),
        Some(XsErrno::EACCES)
    );
    assert_eq!(
        d5.write("/tool/x", b"x").await.unwrap_err().errno(),
        Some(XsErrno::EACCES)
    );
    assert_eq!(
        d5.directory("/local/domain").await.unwrap_err().errno(),
        Some(XsErrno::EACCES)
    );

    // Grant domain 6 read access; it can read but still not write, and cannot change perms.
    d5.set_perms(
        "data/secret",
        &[Perm::new(5, PermKind::None), Perm::new(6, PermKind::Read)],
    )
    .await
    .unwrap();
    assert_eq!(
        d6.read("/local/domain/5/data/secret").await.unwrap(),
        b"five"
    );
    assert_eq!(
        d6.write("/local/domain/5/data/secret", b"6")
            .await
            .unwrap_err()
            .errno(),
        Some(XsErrno::EACCES)
    );
    let steal = d6
        .set_perms(
            "/local/domain/5/data/secret",
            &[Perm::new(6, PermKind::Both)],
        )
        .await;
    assert_eq!(steal.unwrap_err().errno(), Some(XsErrno::EACCES));
    // An owner cannot give a node away (that would dodge its quota).
    let give = d5
        .set_perms("data/secret", &[Perm::new(6, PermKind::None)])
        .await;
    assert_eq!(give.unwrap_err().errno(), Some(XsErrno::EPERM));
    // Privileged-only operations.
    assert_eq!(
        d5.introduce(9, 0, 0).await.unwrap_err().errno(),
        Some(XsErrno::EACCES)
    );
    assert_eq!(
        d5.set_target(5, 6).await.unwrap_err().errno(),
        Some(XsErrno::EACCES)
    );
    // SET_TARGET lets a device-model domain act on its target's nodes.
    dom0.set_target(6, 5).await.unwrap();
    d6.write("/local/domain/5/data/from-dm", b"ok")
        .await
        .unwrap();
}

#[tokio::test]
async fn watches_fire_first_and_on_changes() {
    let xsd = Xenstored::new(Quotas::default());
    let xs = xsd.dom0_client().unwrap();
    let mut w = xs.watch("/w").await.unwrap();
    assert_eq!(next_event(&mut w).await, "/w", "the immediate first event");
    xs.write("/w/a", b"1").await.unwrap();
    assert_eq!(next_event(&mut w).await, "/w/a");
    // Creating /w/a also created /w: it may fire for both. Drain, then check ordering rules.
    while tokio::time::timeout(Duration::from_millis(50), w.next())
        .await
        .is_ok()
    {}
    xs.write("/wx", b"1").await.unwrap();
    no_event(&mut w).await;
    xs.write("/w/a/deep", b"2").await.unwrap();
    assert_eq!(next_event(&mut w).await, "/w/a/deep");
    let mut exact = xs.watch("/w/a/deep").await.unwrap();
    assert_eq!(next_event(&mut exact).await, "/w/a/deep");
    xs.rm("/w/a").await.unwrap();
    assert_eq!(
        next_event(&mut exact).await,
        "/w/a/deep",
        "removal below a removed node fires"
    );
    drop(w);
    tokio::time::sleep(Duration::from_millis(50)).await;
    xs.write("/w/b", b"").await.unwrap();
}

#[tokio::test]
async fn relative_watch_and_permission_filtered_events() {
    let xsd = Xenstored::new(Quotas::default());
    let dom0 = xsd.dom0_client().unwrap();
    make_domain(&dom0, 5).await;
    make_domain(&dom0, 6).await;
    let d5 = xsd.client_for(5).unwrap();
    let d6 = xsd.client_for(6).unwrap();
    let mut rel = d5.watch("data").await.unwrap();
    assert_eq!(next_event(&mut rel).await, "data");
    d5.write("data/k", b"v").await.unwrap();
    assert_eq!(next_event(&mut rel).await, "data/k");
    // Domain 6 watching domain 5's directory hears nothing about nodes it cannot read.
    let mut spy = d6.watch("/local/domain/5/data").await.unwrap();
    assert_eq!(next_event(&mut spy).await, "/local/domain/5/data");
    d5.write("data/k", b"v2").await.unwrap();
    assert_eq!(next_event(&mut rel).await, "data/k");
    no_event(&mut spy).await;
}

#[tokio::test]
async fn introduce_and_release_fire_special_watches() {
    let xsd = Xenstored::new(Quotas::default());
    let xs = xsd.dom0_client().unwrap();
    let mut intro = xs.watch("@introduceDomain").await.unwrap();
    let mut rel = xs.watch("@releaseDomain").await.unwrap();
    assert_eq!(next_event(&mut intro).await, "@introduceDomain");
    assert_eq!(next_event(&mut rel).await, "@releaseDomain");
    xs.introduce(3, 0x1234, 1).await.unwrap();
    assert_eq!(next_event(&mut intro).await, "@introduceDomain");
    assert!(xs.is_domain_introduced(3).await.unwrap());
    let d3 = xsd.client_for(3).unwrap();
    xs.release(3).await.unwrap();
    assert_eq!(next_event(&mut rel).await, "@releaseDomain");
    // The released domain's connections are closed.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(d3.read("/").await.is_err());
    // An unprivileged domain cannot watch @releaseDomain unless dom0 allows it.
    xsd.introduce(4);
    let d4 = xsd.client_for(4).unwrap();
    let mut w4 = d4.watch("@releaseDomain").await.unwrap();
    assert_eq!(next_event(&mut w4).await, "@releaseDomain");
    xsd.introduce(8);
    xsd.release(8);
    no_event(&mut w4).await;
    xs.set_perms(
        "@releaseDomain",
        &[Perm::new(0, PermKind::None), Perm::new(4, PermKind::Read)],
    )
    .await
    .unwrap();
    xsd.introduce(9);
    xsd.release(9);
    assert_eq!(next_event(&mut w4).await, "@releaseDomain");
}

#[tokio::test]
async fn transactions_commit_abort_and_conflict() {
    let xsd = Xenstored::new(Quotas::default());
    let xs = xsd.dom0_client().unwrap();
    let other = xsd.dom0_client().unwrap();
    xs.write("/t/x", b"0").await.unwrap();

    let tx = xs.transaction_start().await.unwrap();
    tx.write("/t/y", b"in-tx").await.unwrap();
    assert_eq!(tx.read("/t/y").await.unwrap(), b"in-tx");
    assert!(
        !other.exists("/t/y").await.unwrap(),
        "uncommitted writes are invisible"
    );
    assert_eq!(tx.directory("/t").await.unwrap(), vec!["x", "y"]);
    tx.transaction_end(true).await.unwrap();
    assert_eq!(other.read("/t/y").await.unwrap(), b"in-tx");

    let tx = xs.transaction_start().await.unwrap();
    tx.rm("/t/y").await.unwrap();
    tx.transaction_end(false).await.unwrap();
    assert!(other.exists("/t/y").await.unwrap(), "aborted");

    // Conflict: a node read in the transaction changes before commit.
    let tx = xs.transaction_start().await.unwrap();
    let _ = tx.read("/t/x").await.unwrap();
    tx.write("/t/z", b"1").await.unwrap();
    other.write("/t/x", b"changed").await.unwrap();
    assert_eq!(
        tx.transaction_end(true).await.unwrap_err().errno(),
        Some(XsErrno::EAGAIN)
    );
    assert!(!other.exists("/t/z").await.unwrap());

    // The helper retries the body until it commits.
    let mut attempts = 0;
    let value = xs
        .transaction(|tx| {
            attempts += 1;
            let other = other.clone();
            let first = attempts == 1;
            async move {
                let v = tx.read("/t/x").await?;
                if first {
                    other.write("/t/x", b"bump").await?;
                }
                tx.write("/t/copy", &v).await?;
                Ok(v)
            }
        })
        .await
        .unwrap();
    assert_eq!(attempts, 2);
    assert_eq!(value, b"bump");
    assert_eq!(other.read("/t/copy").await.unwrap(), b"bump");
    // A missing transaction id is refused.
    let bogus = xs.transaction_start().await.unwrap();
    bogus.transaction_end(false).await.unwrap();
    assert_eq!(
        bogus.read("/t/x").await.unwrap_err().errno(),
        Some(XsErrno::ENOENT)
    );
}

#[tokio::test]
async fn transaction_watches_fire_only_on_commit() {
    let xsd = Xenstored::new(Quotas::default());
    let xs = xsd.dom0_client().unwrap();
    let mut w = xs.watch("/c").await.unwrap();
    next_event(&mut w).await;
    let tx = xs.transaction_start().await.unwrap();
    tx.write("/c/k", b"v").await.unwrap();
    no_event(&mut w).await;
    tx.transaction_end(true).await.unwrap();
    assert_eq!(next_event(&mut w).await, "/c/k");
}

#[tokio::test]
async fn quotas_are_enforced_for_domains() {
    let quotas = Quotas {
        nodes: 20,
        node_size: 64,
        watches: 3,
        transactions: 2,
        permissions: 3,
    };
    let xsd = Xenstored::new(quotas);
    let dom0 = xsd.dom0_client().unwrap();
    make_domain(&dom0, 5).await;
    let d5 = xsd.client_for(5).unwrap();
    assert_eq!(
        d5.write("data/big", &[b'x'; 65]).await.unwrap_err().errno(),
        Some(XsErrno::ENOSPC)
    );
    d5.write("data/ok", &[b'x'; 64]).await.unwrap();
    let mut failed_at = None;
    for i in 0..30 {
        if let Err(e) = d5.write(&format!("data/n{i}"), b"").await {
            assert_eq!(e.errno(), Some(XsErrno::ENOSPC));
            failed_at = Some(i);
            break;
        }
    }
    assert!(failed_at.is_some_and(|i| i < 20), "node quota reached");
    let mut watches = Vec::new();
    for i in 0..3 {
        watches.push(d5.watch(&format!("data/w{i}")).await.unwrap());
    }
    assert_eq!(
        d5.watch("data/w9").await.unwrap_err().errno(),
        Some(XsErrno::E2BIG)
    );
    let _t1 = d5.transaction_start().await.unwrap();
    let _t2 = d5.transaction_start().await.unwrap();
    assert_eq!(
        d5.transaction_start().await.unwrap_err().errno(),
        Some(XsErrno::ENOSPC)
    );
    let perms: Vec<Perm> = (0..4)
        .map(|i| Perm::new(if i == 0 { 5 } else { 10 + i }, PermKind::Read))
        .collect();
    assert_eq!(
        d5.set_perms("data/ok", &perms).await.unwrap_err().errno(),
        Some(XsErrno::ENOSPC)
    );
    // dom0 is exempt.
    dom0.write("/local/domain/5/data/huge", &[b'y'; 3000])
        .await
        .unwrap();
    // The daemon still serves the domain after all those refusals.
    assert_eq!(d5.read("data/ok").await.unwrap().len(), 64);
}

#[tokio::test]
async fn hostile_frames_drop_only_that_connection() {
    let dir = std::env::temp_dir().join(format!("xsd-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("socket");
    let xsd = Xenstored::new(Quotas::default());
    xsd.listen(&socket).unwrap();
    let good = Xs::connect_unix(&socket).await.unwrap();
    good.write("/alive", b"yes").await.unwrap();

    // A header announcing a payload over XENSTORE_PAYLOAD_MAX: the daemon hangs up on it.
    let mut raw = UnixStream::connect(&socket).await.unwrap();
    let mut frame = Vec::new();
    for word in [xen_abi::xs_wire::msg::WRITE, 1, 0, 5000] {
        frame.extend_from_slice(&u32::to_le_bytes(word));
    }
    raw.write_all(&frame).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "connection closed");

    // Over-long paths and values are refused with EINVAL / client-side limits.
    let long = format!("/{}", "a".repeat(3100));
    assert!(matches!(
        good.read(&long).await,
        Err(xen_store::Error::InvalidPath { .. })
    ));
    let mut raw = UnixStream::connect(&socket).await.unwrap();
    let mut payload = long.into_bytes();
    payload.push(0);
    let msg = xen_store::wire::Message::new(xen_abi::xs_wire::msg::READ, 9, 0, payload).unwrap();
    raw.write_all(&msg.encode()).await.unwrap();
    let mut reply = [0u8; 64];
    let n = raw.read(&mut reply).await.unwrap();
    assert!(
        reply[..n].windows(6).any(|w| w == b"EINVAL"),
        "EINVAL reply"
    );
    assert!(
        good.write("/v", &vec![b'x'; 4097]).await.is_err(),
        "client refuses oversize payload"
    );

    // Unknown message types get EINVAL, not a crash.
    let msg = xen_store::wire::Message::new(200, 10, 0, vec![0]).unwrap();
    raw.write_all(&msg.encode()).await.unwrap();
    let n = raw.read(&mut reply).await.unwrap();
    assert!(reply[..n].windows(6).any(|w| w == b"EINVAL"));

    assert_eq!(
        good.read("/alive").await.unwrap(),
        b"yes",
        "daemon still serves others"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
