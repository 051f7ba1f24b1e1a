//! The caller-thread copy protocol against the real hypervisor: a deferred end-access
//! finished by the copier, a copier that dies holding a pin or a lock, a destroyed granter.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use xen_abi::grant_table::{GTF_READING, GTF_WRITING};
use xen_grant::{GrantAllocator, GrantedPages, SharedMemory};

use super::*;
use crate::{Credentials, Host, SimDomain};

struct Setup {
    host: Host,
    a: SimDomain,
    b: Credentials,
    dir: PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn setup(name: &str) -> Setup {
    let dir = std::env::temp_dir().join(format!("xen-sim-fast-{name}-{}", std::process::id()));
    let host = Host::start(&dir).await.unwrap();
    let a = SimDomain::new(host.create_domain("a", 64).unwrap());
    let b = host.create_domain("b", 64).unwrap();
    Setup { host, a, b, dir }
}

/// One page of domain a granted to b.
fn grant(s: &Setup, writable: bool) -> crate::domain::SimGrantedPages {
    s.a.grants()
        .unwrap()
        .grant_pages(s.b.domid, 1, writable)
        .unwrap()
}

/// A caller in domain b: its own hypervisor connection and copier.
fn copier(s: &Setup) -> (HvConn, FastCopy) {
    (HvConn::open(&s.b, false).unwrap(), FastCopy::new(s.b.domid))
}

fn flags(s: &Setup, gref: GrantRef) -> u16 {
    s.a.memory().unwrap().grant_entry(gref).unwrap().flags
}

/// Waits until grant `gref` of domain a has been ended (its entry cleared).
fn wait_ended(s: &Setup, gref: GrantRef) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while flags(s, gref) != 0 {
        assert!(Instant::now() < deadline, "grant {gref} never ended");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_access_deferred_by_a_copy_is_finished_when_the_copy_unpins() {
    let s = setup("defer").await;
    let pages = grant(&s, true);
    let gref = pages.refs()[0];
    let (conn, fast) = copier(&s);
    let records = fast.records_map(&conn).unwrap();
    let guard = fast.slot(&conn, &records).unwrap();
    let granter = fast.granter(&conn, s.a.domid()).unwrap();
    let pin = fast.pin(&guard, &granter, s.a.domid(), gref, true).unwrap();
    assert_eq!(
        flags(&s, gref) & (GTF_READING | GTF_WRITING),
        GTF_READING | GTF_WRITING
    );
    assert_eq!(
        s.host.hypervisor().grant_in_use(s.a.domid(), gref),
        Some(true)
    );
    // The granter ends access while the copy holds the grant: deferred.
    drop(pages);
    assert_ne!(flags(&s, gref), 0, "a grant being copied cannot be ended");
    fast.unpin(&conn, &guard, pin);
    assert_eq!(
        flags(&s, gref),
        0,
        "the copier's unpin finished the end-access"
    );
    assert_eq!(
        s.host.hypervisor().grant_in_use(s.a.domid(), gref),
        Some(false)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copier_that_dies_holding_a_pin_or_a_lock_is_cleaned_up() {
    let s = setup("dead").await;
    for hold_lock in [false, true] {
        let mut pages = Some(grant(&s, false));
        let gref = pages.as_ref().unwrap().refs()[0];
        let (conn, fast) = copier(&s);
        let records = fast.records_map(&conn).unwrap();
        let guard = fast.slot(&conn, &records).unwrap();
        let granter = fast.granter(&conn, s.a.domid()).unwrap();
        // A read-only grant refuses a copy into it, and leaves no pin behind.
        assert_eq!(
            fast.pin(&guard, &granter, s.a.domid(), gref, true).err(),
            Some(status::GENERAL_ERROR)
        );
        assert_eq!(flags(&s, gref) & GTF_READING, 0);
        let pin = fast
            .pin(&guard, &granter, s.a.domid(), gref, false)
            .unwrap();
        if hold_lock {
            // Killed inside the lock, as it began to unpin. (The granter does not end access
            // first here: the hypervisor would wait for the lock of a holder whose process,
            // this one, is still alive.)
            active::lock(pin.word, active::slot_holder(guard.slot), &mut |_| false);
        } else {
            drop(pages.take());
            assert_ne!(flags(&s, gref), 0, "deferred while pinned");
        }
        // The copier's process goes away without unpinning: its connection closes.
        let _never_unpinned = pin;
        drop(guard);
        drop(conn);
        if hold_lock {
            let deadline = Instant::now() + Duration::from_secs(10);
            while flags(&s, gref) & GTF_READING != 0 {
                assert!(Instant::now() < deadline, "the dead copier's pin stayed");
                std::thread::sleep(Duration::from_millis(5));
            }
            drop(pages.take());
        }
        wait_ended(&s, gref);
        // The slot went back to the host: a new caller copies the same way.
        let fresh = grant(&s, true);
        let (conn, fast) = copier(&s);
        let mut ops = [CopyOp::ToGrant {
            src: b"after",
            dst: xen_grant::GrantPtr {
                domid: s.a.domid(),
                gref: fresh.refs()[0],
                offset: 0,
            },
        }];
        let mut st = [1i16];
        assert!(fast.copy(&conn, &mut ops, &mut st));
        assert_eq!(st, [status::OKAY]);
        let mut seen = [0u8; 5];
        // SAFETY: our own granted page, at least 5 bytes, mapped while `fresh` lives.
        unsafe { std::ptr::copy_nonoverlapping(fresh.as_ptr(), seen.as_mut_ptr(), 5) };
        assert_eq!(&seen, b"after");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destroyed_granter_refuses_copies() {
    let s = setup("gone").await;
    let pages = grant(&s, true);
    let gref = pages.refs()[0];
    let (conn, fast) = copier(&s);
    let read = || {
        let mut buf = [0u8; 8];
        let src = xen_grant::GrantPtr {
            domid: s.a.domid(),
            gref,
            offset: 0,
        };
        let mut st = [1i16];
        assert!(fast.copy(
            &conn,
            &mut [CopyOp::FromGrant { src, dst: &mut buf }],
            &mut st
        ));
        st[0]
    };
    assert_eq!(read(), status::OKAY);
    assert!(s.host.destroy_domain(s.a.domid()));
    assert_eq!(read(), status::BAD_DOMAIN);
    assert!(
        fast.granters.lock().unwrap().is_empty(),
        "a dead granter's memory is let go"
    );
}

#[test]
fn a_frame_past_the_mapped_memory_is_found_once_the_memory_grew() {
    let memfd = |pages: usize| {
        let fd = nix::sys::memfd::memfd_create(
            c"fastcopy-test",
            nix::sys::memfd::MemFdCreateFlag::empty(),
        )
        .unwrap();
        let file = File::from(fd);
        file.set_len((pages * PAGE_SIZE) as u64).unwrap();
        file
    };
    let memory = memfd(4);
    let fds = vec![
        OwnedFd::from(memory.try_clone().unwrap()),
        OwnedFd::from(memfd(1)),
        OwnedFd::from(memfd(1)),
    ];
    let granter = Granter::open(fds, 8).unwrap();
    let mut map = granter.memory();
    assert!(granter.page(&mut map, 3).is_some());
    assert!(granter.page(&mut map, 4).is_none(), "beyond the memory");
    memory.set_len((8 * PAGE_SIZE) as u64).unwrap();
    let page = granter.page(&mut map, 6).expect("found after remapping");
    assert!(map.len() >= 8 * PAGE_SIZE);
    // SAFETY: a page of the mapping `map` keeps.
    unsafe { page.write(0x42) };
    let mut byte = [0u8];
    std::os::unix::fs::FileExt::read_exact_at(&memory, &mut byte, (6 * PAGE_SIZE) as u64).unwrap();
    assert_eq!(byte, [0x42]);
}
