//! The queue worker against the Rust frontend on the simulated host: data integrity for every
//! feature combination, and the frontends' misbehaviour that the worker must survive.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::os::unix::fs::FileExt;
use std::time::Duration;

use blkback::storage::raw::{RawDisk, RawOptions};
use blkfront::FrontConfig;
use common::{connect, connect_with, disk_file, pattern, rig};
use xen_abi::blkif::*;
use xen_blkif::Abi;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_integrity_for_every_feature_combination() {
    let rig = rig().await;
    let mut combos = 0;
    for sector_size in [512u32, 4096] {
        let path = disk_file(&rig, &format!("disk-{sector_size}.img"), 8 << 20);
        let disk = RawDisk::open(
            &path,
            RawOptions {
                sector_size: Some(sector_size),
                ..Default::default()
            },
        )
        .unwrap();
        for ring_pages in [1u32, 2, 4, 8, 16] {
            for abi in [Abi::X86_64, Abi::X86_32] {
                for persistent in [true, false] {
                    for indirect in [0u16, 256] {
                        // Every ring order with the default features; the full matrix on 1 and 16 pages.
                        if !(ring_pages == 1 || ring_pages == 16)
                            && (abi == Abi::X86_32 || !persistent || indirect == 0)
                        {
                            continue;
                        }
                        combos += 1;
                        let config = FrontConfig {
                            ring_pages,
                            abi,
                            persistent,
                            indirect_segments: indirect,
                        };
                        // Without persistent grants, both data paths with and without
                        // indirect requests (switching with the ABI).
                        let grant_copy = !persistent && (abi == Abi::X86_32) != (indirect > 0);
                        let (mut front, handle, stats) =
                            connect_with(&rig, &disk, config, 256, grant_copy);
                        assert_eq!(
                            front.ring_size(),
                            Abi::X86_64.ring_slots(ring_pages as usize)
                        );
                        let big = if indirect > 0 { 96 * 1024 } else { 44 * 1024 };
                        let cases = [
                            (0u64, 4096usize),
                            (8, 512 * 16),
                            (200, big),
                            (16376 - 64, 32 * 1024),
                        ];
                        for (i, &(sector, len)) in cases.iter().enumerate() {
                            if sector_size == 4096 && (sector % 8 != 0 || len % 4096 != 0) {
                                continue;
                            }
                            let data = pattern(combos * 100 + i as u64, len);
                            front.write(sector, &data).unwrap_or_else(|e| {
                                panic!("{config:?} {sector_size} write {sector}+{len}: {e}")
                            });
                            assert_eq!(
                                front.read(sector, len).unwrap(),
                                data,
                                "{config:?} sector {sector} len {len}"
                            );
                            let mut on_disk = vec![0u8; len];
                            std::fs::File::open(&path)
                                .unwrap()
                                .read_exact_at(&mut on_disk, sector * 512)
                                .unwrap();
                            assert_eq!(on_disk, data, "the backing file holds what was written");
                        }
                        front.flush().unwrap();
                        // Many requests in flight at once, filling the ring.
                        let n = front.ring_size().min(64) as u64;
                        let ids: Vec<u64> = (0..n)
                            .map(|k| front.submit_write(1024 + k * 8, &pattern(k, 4096)).unwrap())
                            .collect();
                        front.kick().unwrap();
                        for id in ids {
                            assert_eq!(
                                front.wait_for(id, Duration::from_secs(30)).unwrap().status,
                                BLKIF_RSP_OKAY
                            );
                        }
                        for k in 0..n {
                            assert_eq!(front.read(1024 + k * 8, 4096).unwrap(), pattern(k, 4096));
                        }
                        let s = stats.snapshot();
                        assert_eq!(s.errors, 0, "{config:?}");
                        assert!(s.writes >= n && s.reads >= n && s.flushes == 1);
                        if indirect > 0 {
                            assert!(s.indirect > 0, "big transfers used indirect descriptors");
                        }
                        if persistent {
                            assert!(s.persistent_grants > 0);
                        } else {
                            assert_eq!(s.persistent_grants, 0, "{config:?} copy={grant_copy}");
                            // Copying serves direct requests only; indirect ones are mapped.
                            if grant_copy && indirect == 0 {
                                assert_eq!(s.grants_mapped, 0, "{config:?}");
                            } else {
                                assert!(s.grants_mapped > 0, "{config:?} copy={grant_copy}");
                            }
                        }
                        handle.stop();
                    }
                }
            }
        }
    }
    assert!(combos >= 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_with_data_discard_and_barrier() {
    let rig = rig().await;
    let path = disk_file(&rig, "ops.img", 4 << 20);
    let disk = RawDisk::open(&path, RawOptions::default()).unwrap();
    let (mut front, handle, stats) = connect(&rig, &disk, FrontConfig::default(), 0);
    let data = pattern(9, 8192);
    let id = front.submit_write_flush(64, &data).unwrap();
    front.kick().unwrap();
    let done = front.wait_for(id, Duration::from_secs(10)).unwrap();
    assert_eq!(
        (done.status, done.operation),
        (BLKIF_RSP_OKAY, BLKIF_OP_FLUSH_DISKCACHE)
    );
    assert_eq!(front.read(64, 8192).unwrap(), data);
    front.discard(64, 8).unwrap();
    assert!(
        front.read(64, 4096).unwrap().iter().all(|&b| b == 0),
        "discarded range reads zeroes"
    );
    assert_eq!(
        front.read(72, 4096).unwrap(),
        data[4096..],
        "the rest is kept"
    );
    let id = front.submit_flush(true).unwrap();
    front.kick().unwrap();
    assert_eq!(
        front.wait_for(id, Duration::from_secs(10)).unwrap().status,
        BLKIF_RSP_OKAY
    );
    let s = stats.snapshot();
    assert_eq!((s.discards, s.flushes, s.errors), (1, 1, 0));
    handle.stop();
}
