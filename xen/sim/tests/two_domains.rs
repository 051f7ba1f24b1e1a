//! End to end on the simulated host: two domain processes share a page and an event channel;
//! killing one is cleaned up by the host as Xen cleans up after a crashed domain.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use xen_sim::Host;

fn run_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("xen-sim-test-{name}-{}", std::process::id()))
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Starts `xensim demo-guest` in the domain of `creds`, holding its state until killed.
fn spawn_guest(creds: &xen_sim::Credentials, role: &str, peer: u16) -> tokio::process::Child {
    let mut cmd = Host::command(creds, env!("CARGO_BIN_EXE_xensim"));
    cmd.args([
        "demo-guest",
        "--role",
        role,
        "--peer",
        &peer.to_string(),
        "--hold",
    ]);
    cmd.stdout(Stdio::null()).kill_on_drop(true);
    cmd.spawn().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_guests_share_a_page_and_events_both_ways() {
    let dir = run_dir("demo");
    let mut out = Vec::new();
    xen_sim::demo::run_demo(
        PathBuf::from(env!("CARGO_BIN_EXE_xensim")).as_path(),
        &dir,
        &mut out,
    )
    .await
    .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("page says \"pong from the mapper\""),
        "{text}"
    );
    assert!(text.contains("refuses writes"), "{text}");
    assert!(text.contains("event came back"), "{text}");
    assert!(text.contains("ended access to both grants"), "{text}");
    assert!(text.contains("domains left: 1"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_domain_process_is_cleaned_up_by_the_host() {
    let dir = run_dir("kill");
    let host = Host::start(&dir).await.unwrap();
    let hv = host.hypervisor().clone();
    let xs = host.xenstored().dom0_client().unwrap();
    let granter = host.create_domain("granter", 64).unwrap();
    let mapper = host.create_domain("mapper", 64).unwrap();
    let (g, m) = (granter.domid, mapper.domid);
    let mut release = xs.watch("@releaseDomain").await.unwrap();
    release.next().await.unwrap();

    let mut granter_proc = spawn_guest(&granter, "granter", m);
    let mut mapper_proc = spawn_guest(&mapper, "mapper", g);

    // The mapper holds its mappings and its bound port.
    let holding = format!("/local/domain/{m}/data/holding");
    for _ in 0..500 {
        if xs.exists(&holding).await.unwrap() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        xs.exists(&holding).await.unwrap(),
        "mapper reached its holding point"
    );
    let base = format!("/local/domain/{g}/data/demo");
    let rw_ref: u32 = xs
        .read_string(&format!("{base}/rw-ref"))
        .await
        .unwrap()
        .parse()
        .unwrap();
    let ro_ref: u32 = xs
        .read_string(&format!("{base}/ro-ref"))
        .await
        .unwrap()
        .parse()
        .unwrap();
    let port: u32 = xs
        .read_string(&format!("{base}/port"))
        .await
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        hv.grant_in_use(g, rw_ref),
        Some(true),
        "rw grant mapped by the mapper"
    );
    assert_eq!(
        hv.grant_in_use(g, ro_ref),
        Some(true),
        "ro grant mapped by the mapper"
    );
    assert_eq!(
        hv.port_bound(g, port),
        Some(true),
        "granter's port bound by the mapper"
    );

    // Crash the mapper domain.
    mapper_proc.kill().await.unwrap();
    eventually("the mapper domain to go", || {
        hv.domains().iter().all(|d| d.domid != m)
    })
    .await;
    assert_eq!(
        hv.grant_in_use(g, rw_ref),
        Some(false),
        "its mappings were released"
    );
    assert_eq!(hv.grant_in_use(g, ro_ref), Some(false));
    assert_eq!(
        hv.port_bound(g, port),
        Some(false),
        "the granter's port is unbound again"
    );
    let fired = tokio::time::timeout(Duration::from_secs(5), release.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fired.path, "@releaseDomain");
    // The toolstack removes the directory right after firing `@releaseDomain`.
    let mut removed = false;
    for _ in 0..500 {
        removed = !xs.exists(&format!("/local/domain/{m}")).await.unwrap();
        if removed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(removed, "toolstack removed its directory");
    assert!(
        xs.exists(&format!("/local/domain/{g}")).await.unwrap(),
        "the other domain is untouched"
    );

    // The granter's port is offered to the dead domain only: another domain cannot take it,
    // nor read the granter's keys.
    let other = host.create_domain("other", 64).unwrap();
    let other_dom = xen_sim::SimDomain::new(other.clone());
    let evtchn = other_dom.evtchn().unwrap();
    let refused = xen_evtchn::EventChannel::bind_interdomain(&evtchn, g, port).unwrap_err();
    assert!(
        refused.to_string().contains("not open to domain"),
        "{refused}"
    );
    let other_xs = other_dom.xenstore().await.unwrap();
    assert_eq!(
        other_xs
            .read(&format!("{base}/port"))
            .await
            .unwrap_err()
            .errno(),
        Some(xen_store::XsErrno::EACCES)
    );

    // dom0 destroys the granter: its process is killed.
    assert!(host.destroy_domain(g));
    let status = tokio::time::timeout(Duration::from_secs(10), granter_proc.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(!status.success());
    assert_eq!(hv.domains().len(), 2, "dom0 and the other domain");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copier_killed_mid_copy_leaves_no_pin() {
    let dir = run_dir("copykill");
    let host = Host::start(&dir).await.unwrap();
    let hv = host.hypervisor().clone();
    let xs = host.xenstored().dom0_client().unwrap();
    let granter = host.create_domain("granter", 64).unwrap();
    let copier = host.create_domain("copier", 64).unwrap();
    let (g, c) = (granter.domid, copier.domid);
    let _granter_proc = spawn_guest(&granter, "granter", c);
    let mut copier_proc = spawn_guest(&copier, "copier", g);
    let copying = xs
        .watch(&format!("/local/domain/{c}/data/copying"))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut copying = copying;
        while !xs
            .exists(&format!("/local/domain/{c}/data/copying"))
            .await
            .unwrap()
        {
            copying.next().await.unwrap();
        }
    })
    .await
    .expect("the copier copies");
    let rw_ref: u32 = xs
        .read_string(&format!("/local/domain/{g}/data/demo/rw-ref"))
        .await
        .unwrap()
        .parse()
        .unwrap();
    // Killed while it copies (most of its time is spent holding the grant).
    tokio::time::sleep(Duration::from_millis(50)).await;
    copier_proc.kill().await.unwrap();
    eventually("the copier domain to go", || {
        hv.domains().iter().all(|d| d.domid != c)
    })
    .await;
    eventually("the grant to be free", || {
        hv.grant_in_use(g, rw_ref) == Some(false)
    })
    .await;
    drop(host);
    let _ = std::fs::remove_dir_all(&dir);
}
