//! The block and ring items of `shared/hostile-frontends.md`, each played by a misbehaving
//! frontend while a well-behaved guest on the same backend keeps its I/O flowing and correct.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blkback::storage::raw::{RawDisk, RawOptions};
use blkfront::FrontConfig;
use common::{connect, connect_with, disk_file, pattern, rig, Front, Rig};
use xen_abi::blkif::*;
use xen_grant::{GrantedPages, SharedMemory};
use zerocopy::IntoBytes;

/// The good guest: writes and verifies in a loop until told to stop; returns how many rounds.
fn good_traffic(mut front: Front, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut rounds = 0u64;
        while !stop.load(Ordering::Acquire) {
            stop_progress(&stop, rounds);
            let data = pattern(rounds, 8192);
            let sector = (rounds % 64) * 16;
            front.write(sector, &data).expect("good guest write");
            assert_eq!(
                front.read(sector, 8192).expect("good guest read"),
                data,
                "good guest data"
            );
            rounds += 1;
        }
        rounds
    })
}

struct Scene {
    rig: Rig,
    _disks: Vec<RawDisk>,
}

/// A rig with a good guest running, and a second disk for the bad frontend.
async fn scene() -> (
    Scene,
    RawDisk,
    Arc<AtomicBool>,
    std::thread::JoinHandle<u64>,
    blkback::worker::RingHandle,
) {
    let rig = rig().await;
    let good_disk =
        RawDisk::open(&disk_file(&rig, "good.img", 4 << 20), RawOptions::default()).unwrap();
    let bad_disk =
        RawDisk::open(&disk_file(&rig, "bad.img", 4 << 20), RawOptions::default()).unwrap();
    let (good, good_handle, _) = connect(&rig, &good_disk, FrontConfig::default(), 256);
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = good_traffic(good, Arc::clone(&stop));
    (
        Scene {
            rig,
            _disks: vec![good_disk],
        },
        bad_disk,
        stop,
        traffic,
        good_handle,
    )
}

/// Progress of each good guest, keyed by its stop flag.
static PROGRESS: std::sync::Mutex<Vec<(usize, u64)>> = std::sync::Mutex::new(Vec::new());

fn stop_progress(stop: &Arc<AtomicBool>, rounds: u64) {
    let key = Arc::as_ptr(stop) as usize;
    let mut p = PROGRESS.lock().unwrap();
    match p.iter_mut().find(|(k, _)| *k == key) {
        Some(e) => e.1 = rounds,
        None => p.push((key, rounds)),
    }
}

fn progress(stop: &Arc<AtomicBool>) -> u64 {
    let key = Arc::as_ptr(stop) as usize;
    PROGRESS
        .lock()
        .unwrap()
        .iter()
        .find(|(k, _)| *k == key)
        .map_or(0, |e| e.1)
}

/// Checks that this test's good guest still makes progress after the misbehaviour (at least
/// `min` more verified rounds), then stops it.
fn finish(stop: &Arc<AtomicBool>, traffic: std::thread::JoinHandle<u64>, min: u64) {
    let start = progress(stop);
    let deadline = Instant::now() + Duration::from_secs(10);
    while progress(stop) < start + min && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Release);
    let rounds = traffic.join().expect("good guest thread");
    assert!(
        rounds >= start + min,
        "the good guest kept going ({start} rounds before, {rounds} after)"
    );
}

fn poke_u32(mem: &impl SharedMemory, offset: usize, value: u32) {
    assert!(offset + 4 <= mem.len());
    // SAFETY: a 4-aligned offset inside the ring pages the bad frontend owns.
    unsafe { std::sync::atomic::AtomicU32::from_ptr(mem.as_ptr().add(offset).cast()) }
        .store(value, Ordering::Release);
}

fn peek_u32(mem: &impl SharedMemory, offset: usize) -> u32 {
    assert!(offset + 4 <= mem.len());
    // SAFETY: as in `poke_u32`.
    unsafe { std::sync::atomic::AtomicU32::from_ptr(mem.as_ptr().add(offset).cast()) }
        .load(Ordering::Acquire)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bogus_producer_index_halts_only_that_ring() {
    let (scene, bad_disk, stop, traffic, _good) = scene().await;
    let (mut bad, handle, _) = connect(&scene.rig, &bad_disk, FrontConfig::default(), 256);
    bad.write(0, &[1u8; 512]).unwrap();
    let prod = peek_u32(bad.ring_memory(), 0);
    poke_u32(bad.ring_memory(), 0, prod.wrapping_add(1000));
    bad.notify().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !handle.failed() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(handle.failed(), "the ring was halted");
    // More notifications do nothing to a halted ring.
    for _ in 0..1000 {
        bad.notify().unwrap();
    }
    finish(&stop, traffic, 3);
    handle.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writer_cannot_change_what_the_backend_executes() {
    let (scene, bad_disk, stop, traffic, _good) = scene().await;
    let (mut bad, handle, stats) = connect(
        &scene.rig,
        &bad_disk,
        FrontConfig {
            persistent: false,
            ..FrontConfig::default()
        },
        256,
    );
    let ring = bad.ring_memory().as_ptr() as usize;
    let racing = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&racing);
    let flipper = std::thread::spawn(move || {
        let mut x = 0x9e37_79b9u32;
        while flag.load(Ordering::Acquire) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let slot = (x % 32) as usize;
            // Flip the operation, segment count, sector and segments, never the id.
            let offsets = [0usize, 1, 16, 17, 23, 24, 28, 29, 32, 36];
            let off = 64 + slot * 112 + offsets[(x >> 8) as usize % offsets.len()];
            // SAFETY: inside the first ring page, which stays granted and mapped in this process
            // until after the thread is joined.
            unsafe { std::ptr::write_volatile((ring + off) as *mut u8, (x >> 16) as u8) };
        }
    });
    /// Stops the racing writer before the ring pages go away, even if an assertion fails.
    struct StopOnDrop(Arc<AtomicBool>, Option<std::thread::JoinHandle<()>>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(false, Ordering::Release);
            if let Some(t) = self.1.take() {
                let _ = t.join();
            }
        }
    }
    let guard = StopOnDrop(Arc::clone(&racing), Some(flipper));
    // Flipping bytes 0 and 1 of a slot that already holds a response corrupts that response's
    // id (the frontend's own doing), so responses are counted, not matched by id.
    let mut answered = 0;
    for round in 0..200u64 {
        for k in 0..8 {
            bad.submit_write((round % 16) * 64 + k * 8, &pattern(k, 4096))
                .unwrap();
        }
        bad.kick().unwrap();
        let mut got = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while got < 8 {
            assert!(
                Instant::now() < deadline,
                "every request is answered (round {round}, {got} of 8)"
            );
            for done in bad.poll(Duration::from_millis(100)).unwrap() {
                assert!(
                    [BLKIF_RSP_OKAY, BLKIF_RSP_ERROR, BLKIF_RSP_EOPNOTSUPP].contains(&done.status)
                );
                got += 1;
            }
        }
        answered += got;
    }
    drop(guard);
    assert_eq!(answered, 1600);
    assert!(!handle.failed(), "slot contents alone never halt the ring");
    let s = stats.snapshot();
    assert!(s.writes + s.errors + s.reads + s.flushes + s.discards >= 1600);
    finish(&stop, traffic, 3);
    handle.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frontend_that_never_consumes_responses() {
    let (scene, bad_disk, stop, traffic, _good) = scene().await;
    let (mut bad, handle, stats) = connect(&scene.rig, &bad_disk, FrontConfig::default(), 256);
    let size = bad.ring_size();
    for k in 0..size {
        bad.submit_write(u64::from(k) * 8, &[3u8; 4096]).unwrap();
    }
    bad.kick().unwrap();
    assert!(
        bad.submit_write(0, &[0u8; 512]).is_err(),
        "the frontend's own ring is full"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while stats.snapshot().writes < u64::from(size) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let s = stats.snapshot();
    assert_eq!(
        (s.writes, s.in_flight),
        (u64::from(size), 0),
        "answered everything, holds nothing"
    );
    // Pretend more requests exist without consuming responses: the index check refuses them.
    let prod = peek_u32(bad.ring_memory(), 0);
    poke_u32(bad.ring_memory(), 0, prod.wrapping_add(1));
    bad.notify().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        stats.snapshot().writes,
        u64::from(size),
        "no slot was consumed over an unread response"
    );
    finish(&stop, traffic, 3);
    handle.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_storm_costs_bounded_work() {
    let (scene, bad_disk, stop, traffic, _good) = scene().await;
    let (bad, handle, stats) = connect(&scene.rig, &bad_disk, FrontConfig::default(), 256);
    let notifies = 200_000u64;
    for _ in 0..notifies {
        bad.notify().unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    let wakeups = stats.snapshot().wakeups;
    assert!(
        wakeups < notifies / 2,
        "{wakeups} wake-ups for {notifies} spurious events"
    );
    finish(&stop, traffic, 3);
    handle.stop();
}

/// Builds a native request slot.
fn slot(op: u8, nr: u8, id: u64, sector: u64, segs: &[(u32, u8, u8)]) -> Vec<u8> {
    let mut r = BlkifRequest {
        operation: op,
        nr_segments: nr,
        id,
        sector_number: sector,
        ..Default::default()
    };
    for (d, &(gref, first, last)) in r.seg.iter_mut().zip(segs) {
        *d = BlkifRequestSegment {
            gref,
            first_sect: first,
            last_sect: last,
            _pad: 0,
        };
    }
    r.as_bytes().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_grants_and_requests_get_error_responses_with_their_ids() {
    let (scene, bad_disk, stop, traffic, _good) = scene().await;
    // Both data paths for frontends without persistent grants: batched map, then grant copy.
    for grant_copy in [false, true] {
        bad_requests_round(&scene, &bad_disk, grant_copy);
    }
    finish(&stop, traffic, 3);
}

fn bad_requests_round(scene: &Scene, bad_disk: &RawDisk, grant_copy: bool) {
    let config = FrontConfig {
        persistent: false,
        ..FrontConfig::default()
    };
    let (mut bad, handle, _) = connect_with(&scene.rig, bad_disk, config, 256, grant_copy);
    let ro = bad.grant_page(false).unwrap();
    let rw = bad.grant_page(true).unwrap();
    let (ro_ref, rw_ref) = (ro.refs()[0], rw.refs()[0]);
    // An indirect page whose only descriptor is bad (last_sect 9).
    let ind = bad.grant_page(false).unwrap();
    // SAFETY: writes one 8-byte descriptor into the granted page this test owns.
    unsafe {
        std::ptr::copy_nonoverlapping(
            BlkifRequestSegment {
                gref: rw_ref,
                first_sect: 0,
                last_sect: 9,
                _pad: 0,
            }
            .as_bytes()
            .as_ptr(),
            ind.as_ptr(),
            8,
        )
    };
    let indirect = |id: u64, page: u32| {
        BlkifRequestIndirect {
            operation: BLKIF_OP_INDIRECT,
            indirect_op: BLKIF_OP_READ,
            nr_segments: 1,
            id,
            indirect_grefs: [page, 0, 0, 0, 0, 0, 0, 0],
            ..Default::default()
        }
        .as_bytes()
        .to_vec()
    };
    let cases: Vec<(u64, Vec<u8>, i16)> = vec![
        (
            101,
            slot(BLKIF_OP_WRITE, 1, 101, 0, &[(54_321, 0, 7)]),
            BLKIF_RSP_ERROR,
        ), // never granted
        (
            102,
            slot(BLKIF_OP_READ, 1, 102, 0, &[(ro_ref, 0, 7)]),
            BLKIF_RSP_ERROR,
        ), // read into a read-only grant
        (
            103,
            slot(BLKIF_OP_READ, 1, 103, 0, &[(rw_ref, 0, 8)]),
            BLKIF_RSP_ERROR,
        ), // last_sect beyond the page
        (104, slot(BLKIF_OP_READ, 0, 104, 0, &[]), BLKIF_RSP_ERROR), // no segments
        (
            105,
            slot(BLKIF_OP_READ, 1, 105, 1 << 40, &[(rw_ref, 0, 7)]),
            BLKIF_RSP_ERROR,
        ), // beyond the disk
        (
            106,
            slot(7, 1, 106, 0, &[(rw_ref, 0, 7)]),
            BLKIF_RSP_EOPNOTSUPP,
        ), // unknown operation
        (
            107,
            slot(BLKIF_OP_RESERVED_1, 0, 107, 0, &[]),
            BLKIF_RSP_EOPNOTSUPP,
        ),
        (108, indirect(108, 60_000), BLKIF_RSP_ERROR), // bad indirect page
        (109, indirect(109, ind.refs()[0]), BLKIF_RSP_ERROR), // bad descriptor inside
        (
            110,
            slot(BLKIF_OP_WRITE, 1, 110, 0, &[(ro_ref, 0, 7)]),
            BLKIF_RSP_OKAY,
        ), // write from a read-only grant is fine
        (
            110,
            slot(BLKIF_OP_WRITE, 1, 110, 8, &[(ro_ref, 0, 7)]),
            BLKIF_RSP_OKAY,
        ), // a duplicate id is echoed too
    ];
    for (id, bytes, _) in &cases {
        bad.submit_raw(*id, bytes).unwrap();
    }
    bad.kick().unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < cases.len() && Instant::now() < deadline {
        got.extend(bad.poll(Duration::from_millis(200)).unwrap());
    }
    assert_eq!(got.len(), cases.len(), "every slot was answered");
    // Answers may come in any order (a failed copy back is known only after the read).
    let mut want: Vec<(u64, i16)> = cases.iter().map(|(id, _, status)| (*id, *status)).collect();
    let mut have: Vec<(u64, i16)> = got.iter().map(|d| (d.id, d.status)).collect();
    want.sort_unstable();
    have.sort_unstable();
    assert_eq!(have, want, "copy={grant_copy}");
    // The ring still works.
    bad.write(16, &[5u8; 4096]).unwrap();
    assert_eq!(
        bad.read(16, 4096).unwrap(),
        vec![5u8; 4096],
        "copy={grant_copy}"
    );
    handle.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_grant_flood_is_capped_and_released() {
    let (scene, bad_disk, stop, traffic, _good) = scene().await;
    let (mut bad, handle, stats) = connect(
        &scene.rig,
        &bad_disk,
        FrontConfig {
            persistent: true,
            ..FrontConfig::default()
        },
        256,
    );
    let mut pages = Vec::new();
    let max_seen = AtomicU32::new(0);
    for round in 0..50u64 {
        // 30 requests of one fresh page each: 1500 distinct grants in all.
        let mut ids = Vec::new();
        for k in 0..30u64 {
            let page = bad.grant_page(true).unwrap();
            let id = 10_000 + round * 30 + k;
            bad.submit_raw(
                id,
                &slot(BLKIF_OP_READ, 1, id, k * 8, &[(page.refs()[0], 0, 7)]),
            )
            .unwrap();
            ids.push(id);
            pages.push(page);
        }
        bad.kick().unwrap();
        for id in ids {
            assert_eq!(
                bad.wait_for(id, Duration::from_secs(10)).unwrap().status,
                BLKIF_RSP_OKAY
            );
        }
        max_seen.fetch_max(stats.snapshot().persistent_grants as u32, Ordering::Relaxed);
    }
    let max_seen = max_seen.into_inner();
    assert!(
        max_seen as usize <= blkback::MAX_PERSISTENT_GRANTS,
        "cache capped ({max_seen})"
    );
    assert!(max_seen > 1000, "the cache was used ({max_seen})");
    handle.stop();
    let hv = scene.rig.host.hypervisor();
    let guest = scene.rig.guest.domid();
    assert!(
        pages
            .iter()
            .all(|p| hv.grant_in_use(guest, p.refs()[0]) == Some(false)),
        "everything unmapped at disconnect"
    );
    finish(&stop, traffic, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abi_mismatch_garbles_only_that_ring() {
    let (scene, bad_disk, stop, traffic, _good) = scene().await;
    // The frontend writes native slots but the backend was told `x86_32-abi`: every slot is
    // misread (and answered in the packed layout, at other offsets). Nothing else may notice.
    let front = blkfront::Blkfront::new(
        scene.rig.guest.grants().unwrap(),
        scene.rig.guest.evtchn().unwrap(),
        scene.rig.backend.domid(),
        FrontConfig {
            abi: xen_blkif::Abi::X86_64,
            ..FrontConfig::default()
        },
    )
    .unwrap();
    let spec = blkback::worker::RingSpec {
        frontend: scene.rig.guest.domid(),
        ring_refs: front.ring_refs().to_vec(),
        port: front.port(),
        abi: xen_blkif::Abi::X86_32,
        persistent: true,
        grant_copy: false,
        max_persistent_grants: blkback::MAX_PERSISTENT_GRANTS,
        limits: common::limits_for(&bad_disk, 256),
        size: blkback::worker::LiveSize::new(blkback::storage::Disk::info(&bad_disk).sectors),
        name: "blkback-mismatch".into(),
        reattach: false,
    };
    let stats = Arc::new(blkback::stats::QueueStats::default());
    let handle = blkback::worker::start_ring(
        spec,
        Arc::new(scene.rig.backend.grants().unwrap()),
        scene.rig.backend.evtchn().unwrap(),
        &bad_disk,
        Arc::clone(&stats),
    )
    .unwrap();
    let mut front = front;
    for k in 0..16u64 {
        front.submit_write(k * 8, &pattern(k, 4096)).unwrap();
    }
    front.kick().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while stats.snapshot().errors + stats.snapshot().writes < 16 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let s = stats.snapshot();
    assert_eq!(
        s.errors + s.writes + s.reads + s.flushes + s.discards,
        16,
        "every misread slot was answered"
    );
    assert_eq!(s.in_flight, 0);
    finish(&stop, traffic, 3);
    handle.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writer_on_indirect_pages_cannot_change_what_was_validated() {
    let (scene, bad_disk, stop, traffic, _good) = scene().await;
    let config = FrontConfig {
        persistent: false,
        indirect_segments: 256,
        ..FrontConfig::default()
    };
    let (mut bad, handle, stats) = connect(&scene.rig, &bad_disk, config, 256);
    // One indirect page describing 16 data pages, rewritten by a racing thread while the
    // backend reads it: it must act on the copy it validated, or refuse.
    let data: Vec<_> = (0..16).map(|_| bad.grant_page(true).unwrap()).collect();
    let indirect = bad.grant_page(true).unwrap();
    let descriptors: Vec<u8> = data
        .iter()
        .flat_map(|p| {
            BlkifRequestSegment {
                gref: p.refs()[0],
                first_sect: 0,
                last_sect: 7,
                _pad: 0,
            }
            .as_bytes()
            .to_vec()
        })
        .collect();
    let page = indirect.as_ptr() as usize;
    let racing = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&racing);
    let good_bytes = descriptors.clone();
    let flipper = std::thread::spawn(move || {
        let mut x = 0x1234_5678u32;
        while flag.load(Ordering::Acquire) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let at = (x as usize) % good_bytes.len();
            // Alternate between a garbage byte and the valid one.
            let value = if x & 1 == 0 {
                (x >> 8) as u8
            } else {
                good_bytes[at]
            };
            // SAFETY: inside the granted indirect page, which outlives the thread (joined below).
            unsafe { std::ptr::write_volatile((page + at) as *mut u8, value) };
        }
    });
    // SAFETY: the descriptors fit in the page (16 x 8 bytes).
    unsafe {
        std::ptr::copy_nonoverlapping(descriptors.as_ptr(), indirect.as_ptr(), descriptors.len())
    };
    let mut answered = 0;
    for round in 0..100u64 {
        let id = 50_000 + round;
        let req = BlkifRequestIndirect {
            operation: BLKIF_OP_INDIRECT,
            indirect_op: if round % 2 == 0 {
                BLKIF_OP_READ
            } else {
                BLKIF_OP_WRITE
            },
            nr_segments: 16,
            id,
            sector_number: (round % 8) * 128,
            indirect_grefs: [indirect.refs()[0], 0, 0, 0, 0, 0, 0, 0],
            ..Default::default()
        };
        bad.submit_raw(id, req.as_bytes()).unwrap();
        bad.kick().unwrap();
        let done = bad.wait_for(id, Duration::from_secs(10)).expect("answered");
        assert!([BLKIF_RSP_OKAY, BLKIF_RSP_ERROR].contains(&done.status));
        answered += 1;
    }
    racing.store(false, Ordering::Release);
    flipper.join().unwrap();
    assert_eq!(answered, 100);
    let s = stats.snapshot();
    assert_eq!(s.in_flight, 0);
    assert!(s.indirect >= 100);
    finish(&stop, traffic, 3);
    handle.stop();
}
