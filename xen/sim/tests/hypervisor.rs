//! Grant and event-channel semantics of the simulated hypervisor, driven through the same
//! `xen-grant` / `xen-evtchn` traits the backends use.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::PathBuf;

use xen_abi::grant_table::{status, GrantEntryV1, GTF_PERMIT_ACCESS, GTF_READONLY};
use xen_evtchn::EventChannel;
use xen_grant::{CopyOp, GrantAllocator, GrantMapper, GrantPtr, GrantedPages, SharedMemory};
use xen_sim::{Credentials, Host, SimDomain};

struct World {
    host: Host,
    a: SimDomain,
    b: SimDomain,
    dir: PathBuf,
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn world(name: &str) -> World {
    let dir = std::env::temp_dir().join(format!("xen-sim-hv-{name}-{}", std::process::id()));
    let host = Host::start(&dir).await.unwrap();
    let a = SimDomain::new(host.create_domain("a", 64).unwrap());
    let b = SimDomain::new(host.create_domain("b", 64).unwrap());
    World { host, a, b, dir }
}

fn refused_status(e: xen_grant::Error) -> i16 {
    match e {
        xen_grant::Error::Refused { status, .. } => status,
        other => panic!("expected a grant status, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_map_checks_entries_like_xen() {
    let w = world("map").await;
    let (ga, gb) = (w.a.grants().unwrap(), w.b.grants().unwrap());
    let pages = ga.grant_pages(w.b.domid(), 2, true).unwrap();
    let refs = pages.refs().to_vec();
    // SAFETY: writes within the granter's own 2-page mapping.
    unsafe { std::ptr::copy_nonoverlapping(b"abc".as_ptr(), pages.as_ptr().add(4096), 3) };

    let map = gb.map(w.a.domid(), &refs, true).unwrap();
    assert_eq!(map.len(), 8192);
    let mut seen = [0u8; 3];
    // SAFETY: reads within the 2-page mapping.
    unsafe { std::ptr::copy_nonoverlapping(map.as_ptr().add(4096), seen.as_mut_ptr(), 3) };
    assert_eq!(&seen, b"abc", "pages map contiguously in ref order");

    let a = w.a.domid();
    assert_eq!(
        refused_status(gb.map(a, &[100_000], false).unwrap_err()),
        status::BAD_GNTREF,
        "out of range"
    );
    assert_eq!(
        refused_status(gb.map(a, &[5000], false).unwrap_err()),
        status::GENERAL_ERROR,
        "inactive entry"
    );
    assert_eq!(
        refused_status(gb.map(999, &[8], false).unwrap_err()),
        status::BAD_DOMAIN
    );
    // Only the domain named in the entry may map it.
    let c = SimDomain::new(w.host.create_domain("c", 16).unwrap());
    assert_eq!(
        refused_status(c.grants().unwrap().map(a, &refs, false).unwrap_err()),
        status::GENERAL_ERROR
    );
    // A bad ref in a batch fails the whole batch and pins nothing.
    let fresh = ga.grant_pages(w.b.domid(), 1, true).unwrap();
    let batch = [fresh.refs()[0], 5000];
    assert_eq!(
        refused_status(gb.map(a, &batch, false).unwrap_err()),
        status::GENERAL_ERROR
    );
    assert_eq!(
        w.host.hypervisor().grant_in_use(a, fresh.refs()[0]),
        Some(false)
    );

    // A hostile granter points an entry outside its memory.
    let mem = w.a.memory().unwrap();
    mem.set_grant_entry(
        5001,
        GrantEntryV1 {
            flags: GTF_PERMIT_ACCESS,
            domid: w.b.domid(),
            frame: 1 << 30,
        },
    );
    assert_eq!(
        refused_status(gb.map(a, &[5001], false).unwrap_err()),
        status::BAD_PAGE
    );
    assert_eq!(
        w.host.hypervisor().grant_in_use(a, 5001),
        Some(false),
        "failed map leaves no pin"
    );
    // A hand-made read-only grant of a page the domain owns.
    mem.set_grant_entry(
        5002,
        GrantEntryV1 {
            flags: GTF_PERMIT_ACCESS | GTF_READONLY,
            domid: w.b.domid(),
            frame: 40,
        },
    );
    assert!(mem.write(40 * 4096, b"guest data"));
    assert_eq!(
        refused_status(gb.map(a, &[5002], true).unwrap_err()),
        status::GENERAL_ERROR,
        "ro grant, rw map"
    );
    let ro = gb.map(a, &[5002], false).unwrap();
    let mut text = [0u8; 10];
    // SAFETY: reads within the 1-page mapping.
    unsafe { std::ptr::copy_nonoverlapping(ro.as_ptr(), text.as_mut_ptr(), 10) };
    assert_eq!(&text, b"guest data");
    drop(map);
}

/// Single pages granted in one call: each its own page and grant, each revoked alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_pages_granted_together_live_and_end_apart() {
    let w = world("single").await;
    let (ga, gb) = (w.a.grants().unwrap(), w.b.grants().unwrap());
    let mut pages = ga.grant_single_pages(w.b.domid(), 4, true).unwrap();
    assert_eq!(pages.len(), 4);
    for (i, p) in pages.iter().enumerate() {
        assert_eq!((p.len(), p.refs().len()), (4096, 1));
        // SAFETY: writes the first byte of the granter's own page.
        unsafe { p.as_ptr().write(b'a' + i as u8) };
    }
    let refs: Vec<_> = pages.iter().map(|p| p.refs()[0]).collect();
    let map = gb.map(w.a.domid(), &refs, false).unwrap();
    for i in 0..4 {
        // SAFETY: reads within the 4-page mapping.
        let seen = unsafe { map.as_ptr().add(i * 4096).read() };
        assert_eq!(seen, b'a' + i as u8);
    }
    drop(map);
    drop(pages.remove(1));
    let a = w.a.domid();
    assert_eq!(
        refused_status(gb.map(a, &refs[1..2], false).unwrap_err()),
        status::GENERAL_ERROR,
        "the dropped page's grant ended"
    );
    assert!(gb.map(a, &[refs[0], refs[2], refs[3]], false).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapped_grant_is_busy_for_the_granter() {
    let w = world("busy").await;
    let (ga, gb) = (w.a.grants().unwrap(), w.b.grants().unwrap());
    let hv = w.host.hypervisor().clone();
    let pages = ga.grant_pages(w.b.domid(), 1, true).unwrap();
    let gref = pages.refs()[0];
    let map = gb.map(w.a.domid(), &[gref], true).unwrap();
    let entry = w.a.memory().unwrap().grant_entry(gref).unwrap();
    assert_ne!(
        entry.flags & xen_abi::grant_table::GTF_READING,
        0,
        "GTF_reading set while mapped"
    );
    assert_ne!(
        entry.flags & xen_abi::grant_table::GTF_WRITING,
        0,
        "GTF_writing set for a writable map"
    );
    assert_eq!(
        pages.end_access().unwrap(),
        vec![gref],
        "ending access is deferred while mapped"
    );
    assert_eq!(hv.grant_in_use(w.a.domid(), gref), Some(true));
    // A second map and a copy through the same grant leave it busy until the last unmap.
    let second = gb.map(w.a.domid(), &[gref], false).unwrap();
    let mut byte = [0u8; 1];
    let mut ops = [CopyOp::FromGrant {
        src: GrantPtr {
            domid: w.a.domid(),
            gref,
            offset: 0,
        },
        dst: &mut byte,
    }];
    let mut st = [0i16];
    gb.copy(&mut ops, &mut st).unwrap();
    assert_eq!(st[0], status::OKAY);
    drop(map);
    assert_eq!(hv.grant_in_use(w.a.domid(), gref), Some(true));
    let entry = w.a.memory().unwrap().grant_entry(gref).unwrap();
    assert_eq!(
        entry.flags & xen_abi::grant_table::GTF_WRITING,
        0,
        "GTF_writing cleared with the last writable map"
    );
    drop(second);
    assert_eq!(hv.grant_in_use(w.a.domid(), gref), Some(false));
    let entry = w.a.memory().unwrap().grant_entry(gref).unwrap();
    assert_eq!(
        entry.flags, 0,
        "deferred end-access completed after the unmap"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_copy_reports_status_per_segment() {
    // On the caller's thread (the default) and as hypercalls served by the hypervisor.
    grant_copy_statuses(false).await;
    grant_copy_statuses(true).await;
}

async fn grant_copy_statuses(through_hypervisor: bool) {
    let w = world(&format!("copy{through_hypervisor}")).await;
    let (ga, gb) = (w.a.grants().unwrap(), w.b.grants().unwrap());
    if through_hypervisor {
        gb.copy_through_hypervisor();
    }
    let rw = ga.grant_pages(w.b.domid(), 1, true).unwrap();
    let ro = ga.grant_pages(w.b.domid(), 1, false).unwrap();
    let a = w.a.domid();
    let ptr = |gref, offset| GrantPtr {
        domid: a,
        gref,
        offset,
    };
    let mut into = [0u8; 5];
    let mut bad = [0u8; 8];
    let mut ops = vec![
        CopyOp::ToGrant {
            src: b"hello",
            dst: ptr(rw.refs()[0], 100),
        },
        CopyOp::ToGrant {
            src: b"nope",
            dst: ptr(ro.refs()[0], 0),
        },
        CopyOp::ToGrant {
            src: &[1u8; 10],
            dst: ptr(rw.refs()[0], 4090),
        },
        CopyOp::FromGrant {
            src: ptr(9999, 0),
            dst: &mut bad,
        },
    ];
    let mut st = vec![0i16; ops.len()];
    gb.copy(&mut ops, &mut st).unwrap();
    assert_eq!(
        st,
        vec![
            status::OKAY,
            status::GENERAL_ERROR,
            status::BAD_COPY_ARG,
            status::GENERAL_ERROR
        ]
    );
    let mut ops = vec![CopyOp::FromGrant {
        src: ptr(rw.refs()[0], 100),
        dst: &mut into,
    }];
    let mut st = vec![0i16; 1];
    let (calls, work) = (
        xen_sim::domain::copy_call_stats(),
        w.host.hypervisor().copy_work(),
    );
    gb.copy(&mut ops, &mut st).unwrap();
    assert_eq!((st[0], &into), (status::OKAY, b"hello"));
    assert_eq!(
        w.host.hypervisor().grant_in_use(a, rw.refs()[0]),
        Some(false),
        "copies leave no pin"
    );
    // The counters the benchmarks read (process-wide: other tests may add to them meanwhile).
    let (calls_after, work_after) = (
        xen_sim::domain::copy_call_stats(),
        w.host.hypervisor().copy_work(),
    );
    assert!(calls_after.calls > calls.calls && calls_after.bytes >= calls.bytes + 5);
    assert!(calls_after.waited > calls.waited);
    if through_hypervisor {
        assert!(work_after.calls > work.calls && work_after.busy > work.busy);
    } else {
        assert_eq!(
            work_after.calls, work.calls,
            "copied on the caller's thread"
        );
    }
    // A domain that does not exist, and one without a grant table.
    let mut buf = [0u8; 4];
    let mut ops = vec![
        CopyOp::FromGrant {
            src: GrantPtr {
                domid: 999,
                gref: 8,
                offset: 0,
            },
            dst: &mut buf,
        },
        CopyOp::ToGrant {
            src: b"x",
            dst: GrantPtr {
                domid: 0,
                gref: 8,
                offset: 0,
            },
        },
    ];
    let mut st = vec![0i16; 2];
    gb.copy(&mut ops, &mut st).unwrap();
    assert_eq!(st[0], status::BAD_DOMAIN);
    assert_ne!(st[1], status::OKAY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_buffers_are_copied_directly_and_mix_with_ordinary_memory() {
    let w = world("copydirect").await;
    let (ga, gb) = (w.a.grants().unwrap(), w.b.grants().unwrap());
    gb.copy_through_hypervisor();
    let pages = ga.grant_pages(w.b.domid(), 2, true).unwrap();
    let a = w.a.domid();
    let ptr = |k: usize, offset| GrantPtr {
        domid: a,
        gref: pages.refs()[k],
        offset,
    };
    assert!(gb.copy_buffer(1 << 20).is_none(), "larger than a slot");
    let mut out = gb.copy_buffer(4096).unwrap();
    assert_eq!(out.len(), 4096);
    out.iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = (i % 253) as u8);
    let ordinary = vec![0x5au8; 4096];
    let before = xen_sim::domain::copy_call_stats();
    let mut ops = vec![
        CopyOp::ToGrant {
            src: &out,
            dst: ptr(0, 0),
        },
        CopyOp::ToGrant {
            src: &ordinary,
            dst: ptr(1, 0),
        },
    ];
    let mut st = vec![-1i16; 2];
    gb.copy(&mut ops, &mut st).unwrap();
    assert_eq!(st, vec![status::OKAY; 2]);
    // The granter sees both pages' bytes.
    // SAFETY: the granted pages are two mapped pages of domain a's memory, alive meanwhile.
    let granted = unsafe { std::slice::from_raw_parts(pages.as_ptr(), 8192) };
    assert_eq!(&granted[..4096], &out[..]);
    assert!(granted[4096..].iter().all(|&b| b == 0x5a));
    assert!(xen_sim::domain::copy_call_stats().bytes >= before.bytes + 8192);

    // Back the other way, a slot and ordinary memory in one batch, at offsets.
    let mut back = gb.copy_buffer(100).unwrap();
    let mut plain = [0u8; 100];
    let mut ops = vec![
        CopyOp::FromGrant {
            src: ptr(0, 7),
            dst: &mut back,
        },
        CopyOp::FromGrant {
            src: ptr(1, 3000),
            dst: &mut plain,
        },
    ];
    let mut st = vec![-1i16; 2];
    gb.copy(&mut ops, &mut st).unwrap();
    assert_eq!(st, vec![status::OKAY; 2]);
    assert_eq!(&back[..], &out[7..107]);
    assert_eq!(plain, [0x5a; 100]);

    // A slot given to another connection's copy is staged there, with the same result.
    let other = w.b.grants().unwrap();
    back.set_len(10);
    let mut ops = vec![CopyOp::FromGrant {
        src: ptr(0, 0),
        dst: &mut back,
    }];
    let mut st = vec![-1i16; 1];
    other.copy(&mut ops, &mut st).unwrap();
    assert_eq!((st[0], &back[..]), (status::OKAY, &out[..10]));

    // Slots run out, and a dropped one comes back.
    let mut held = Vec::new();
    while let Some(b) = gb.copy_buffer(64 << 10) {
        held.push(b);
        assert!(held.len() < 10_000);
    }
    assert!(!held.is_empty());
    held.pop();
    assert!(gb.copy_buffer(64 << 10).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_copy_batches_larger_than_the_copy_buffer_are_split() {
    let w = world("copybig").await;
    let (ga, gb) = (w.a.grants().unwrap(), w.b.grants().unwrap());
    gb.copy_through_hypervisor();
    let pages = ga.grant_pages(w.b.domid(), 4, true).unwrap();
    let a = w.a.domid();
    // 3000 page-sized segments (12 MiB, more than the 8 MiB copy buffer), spread over four
    // pages; the last writer of each page wins.
    let chunks: Vec<Vec<u8>> = (0..3000u32).map(|k| vec![(k % 251) as u8; 4096]).collect();
    let mut ops: Vec<CopyOp<'_>> = chunks
        .iter()
        .enumerate()
        .map(|(k, c)| CopyOp::ToGrant {
            src: c,
            dst: GrantPtr {
                domid: a,
                gref: pages.refs()[k % 4],
                offset: 0,
            },
        })
        .collect();
    let mut st = vec![1i16; ops.len()];
    gb.copy(&mut ops, &mut st).unwrap();
    assert!(st.iter().all(|&s| s == status::OKAY));
    for page in 0..4usize {
        let last = (0..3000u32)
            .rev()
            .find(|k| *k as usize % 4 == page)
            .unwrap();
        let mut back = vec![0u8; 4096];
        let mut ops = vec![CopyOp::FromGrant {
            src: GrantPtr {
                domid: a,
                gref: pages.refs()[page],
                offset: 0,
            },
            dst: &mut back,
        }];
        let mut st = vec![1i16];
        gb.copy(&mut ops, &mut st).unwrap();
        assert_eq!(st[0], status::OKAY);
        assert_eq!(back, vec![(last % 251) as u8; 4096], "page {page}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_channels_mask_until_unmask_and_survive_peer_restart() {
    let w = world("evtchn").await;
    let (ea, eb) = (w.a.evtchn().unwrap(), w.b.evtchn().unwrap());
    let pa = ea.bind_unbound_port(w.b.domid()).unwrap();
    assert!(
        eb.bind_interdomain(w.a.domid(), pa + 100).is_err(),
        "no such port"
    );
    let pb = eb.bind_interdomain(w.a.domid(), pa).unwrap();
    assert!(
        eb.bind_interdomain(w.a.domid(), pa).is_err(),
        "already bound"
    );
    assert_eq!(ea.pending().unwrap(), None);

    eb.notify(pb).unwrap();
    assert_eq!(ea.pending().unwrap(), Some(pa));
    // Masked: more events are held, not delivered.
    eb.notify(pb).unwrap();
    eb.notify(pb).unwrap();
    assert_eq!(ea.pending().unwrap(), None);
    ea.unmask(pa).unwrap();
    assert_eq!(
        ea.pending().unwrap(),
        Some(pa),
        "held events fire once on unmask"
    );
    ea.unmask(pa).unwrap();
    assert_eq!(ea.pending().unwrap(), None);
    ea.notify(pa).unwrap();
    assert_eq!(eb.pending().unwrap(), Some(pb), "the other direction");
    eb.unmask(pb).unwrap();

    // The peer closes (a backend restarting) and binds again: the same local port works.
    drop(eb);
    assert_eq!(w.host.hypervisor().port_bound(w.a.domid(), pa), Some(false));
    let eb2 = w.b.evtchn().unwrap();
    let pb2 = eb2.bind_interdomain(w.a.domid(), pa).unwrap();
    ea.notify(pa).unwrap();
    // A spurious event from before the restart may come first; then ours.
    let mut got = false;
    for _ in 0..2 {
        if eb2.pending().unwrap() == Some(pb2) {
            got = true;
            eb2.unmask(pb2).unwrap();
        }
    }
    assert!(got);
    eb2.notify(pb2).unwrap();
    assert_eq!(ea.pending().unwrap(), Some(pa));

    // Unbinding through another handle is refused; restriction limits binding.
    let ea_other = w.a.evtchn().unwrap();
    assert!(ea_other.unbind(pa).is_err());
    ea_other.restrict(w.b.domid()).unwrap();
    let c = SimDomain::new(w.host.create_domain("c", 16).unwrap());
    assert!(
        ea_other.bind_unbound_port(c.domid()).is_err(),
        "restricted to domain b"
    );
    assert!(ea_other.bind_unbound_port(w.b.domid()).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_wait_wakes_on_events() {
    let w = world("async").await;
    let ea = xen_evtchn::AsyncEventChannel::new(w.a.evtchn().unwrap()).unwrap();
    let eb = w.b.evtchn().unwrap();
    let pa = ea.bind_unbound_port(w.b.domid()).unwrap();
    let pb = eb.bind_interdomain(w.a.domid(), pa).unwrap();
    let waiter = tokio::spawn(async move {
        let p = ea.wait().await.unwrap();
        ea.unmask(p).unwrap();
        p
    });
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    eb.notify(pb).unwrap();
    assert_eq!(
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap(),
        pa
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_and_privileges_are_checked() {
    let w = world("creds").await;
    let forged = Credentials {
        token: "0".repeat(32),
        ..w.a.credentials().clone()
    };
    assert!(
        SimDomain::new(forged.clone()).evtchn().is_err(),
        "wrong token refused"
    );
    assert!(
        xen_sim::domain::connect_xenstore(&forged).await.is_err(),
        "xenstore refuses it too"
    );
    let control = w.a.control().unwrap();
    assert!(
        control.create_domain(&w.dir, "x", 16).is_err(),
        "only dom0 creates domains"
    );
    let dom0 = SimDomain::new(w.host.dom0().clone());
    let list = dom0.control().unwrap().list_domains().unwrap();
    assert_eq!(
        list.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
        vec!["Domain-0", "a", "b"]
    );
    // A domain's second primary process is refused; the first one binds the domain's life.
    let mut a = SimDomain::new(w.a.credentials().clone());
    a.boot().unwrap();
    let mut again = SimDomain::new(w.a.credentials().clone());
    assert!(again.boot().is_err());
    drop(a);
    for _ in 0..200 {
        if w.host.hypervisor().domains().iter().all(|d| d.name != "a") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        w.host.hypervisor().domains().iter().all(|d| d.name != "a"),
        "primary gone: domain gone"
    );
    let xs = w.host.xenstored().dom0_client().unwrap();
    assert!(!xs
        .exists(&format!("/local/domain/{}", w.a.domid()))
        .await
        .unwrap());
    assert_eq!(
        xs.read_string(&format!("/local/domain/{}/name", w.b.domid()))
            .await
            .unwrap(),
        "b"
    );
    let b_xs = w.b.xenstore().await.unwrap();
    b_xs.write("data/k", b"v").await.unwrap();
    assert_eq!(b_xs.read_string("name").await.unwrap(), "b");
    assert!(
        b_xs.write("name", b"evil").await.is_err(),
        "the toolstack's keys are read-only to the guest"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_hypercall_clients_lose_only_their_connection() {
    use std::io::{Read, Write};
    let w = world("hostile").await;
    let socket = w.dir.join(xen_sim::domain::HYPERVISOR_SOCKET);
    // Garbage instead of a hello, then a frame announcing 4 GiB.
    let mut raw = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    raw.write_all(&[0xff; 64]).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(raw.read(&mut buf).unwrap_or(0), 0, "hung up");
    let mut raw = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    raw.write_all(&u32::MAX.to_le_bytes()).unwrap();
    assert_eq!(raw.read(&mut buf).unwrap_or(0), 0, "hung up");
    // A domain that does not exist, and too many connections for one domain.
    let ghost = Credentials {
        domid: 999,
        ..w.a.credentials().clone()
    };
    assert!(SimDomain::new(ghost).evtchn().is_err());
    let mut held = Vec::new();
    let mut refused = false;
    for _ in 0..300 {
        match w.a.evtchn() {
            Ok(h) => held.push(h),
            Err(e) => {
                assert!(e.to_string().contains("too many"), "{e}");
                refused = true;
                break;
            }
        }
    }
    assert!(refused, "connections per domain are capped");
    drop(held);
    // Everyone else is still served.
    let eb = w.b.evtchn().unwrap();
    assert!(eb.bind_unbound_port(w.a.domid()).is_ok());
}
