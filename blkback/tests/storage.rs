//! The raw disk on io_uring: reads, writes, flushes and discards against a real file.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::os::unix::fs::FileExt;

use blkback::storage::raw::{RawDisk, RawOptions};
use blkback::storage::{Completion, Disk, Op, Queue};
use xen_ring::{HeapPages, SharedMemory};

fn wait(queue: &mut dyn Queue, n: usize) -> Vec<Completion> {
    let mut out = Vec::new();
    while out.len() < n {
        queue.wait(&[], &mut out, &mut []).unwrap();
    }
    out
}

fn iov(mem: &HeapPages, offset: usize, len: usize) -> libc::iovec {
    assert!(offset + len <= mem.len());
    libc::iovec {
        iov_base: mem.as_ptr().wrapping_add(offset).cast(),
        iov_len: len,
    }
}

#[test]
fn write_read_flush_discard_round_trip() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("disk.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let disk = RawDisk::open(&path, RawOptions::default()).unwrap();
    let info = disk.info();
    assert_eq!(
        (info.sectors, info.sector_size, info.read_only, info.discard),
        (2048, 512, false, true)
    );
    let mut q = disk.open_queue(32).unwrap();

    let src = HeapPages::new(2);
    // SAFETY: fills the 2-page allocation we own.
    unsafe { std::ptr::write_bytes(src.as_ptr(), 0x5a, 8192) };
    let iovs = [iov(&src, 0, 4096), iov(&src, 4096, 512)];
    // SAFETY: `src` and `iovs` outlive the wait below.
    unsafe {
        q.push(
            Op::Write {
                offset: 8192,
                iov: iovs.as_ptr(),
                iov_len: 2,
            },
            1,
        )
        .unwrap()
    };
    q.submit().unwrap();
    assert_eq!(
        wait(q.as_mut(), 1),
        vec![Completion {
            tag: 1,
            result: 4608
        }]
    );
    // SAFETY: no buffers.
    unsafe { q.push(Op::Flush, 2).unwrap() };
    q.submit().unwrap();
    assert_eq!(wait(q.as_mut(), 1), vec![Completion { tag: 2, result: 0 }]);

    let dst = HeapPages::new(2);
    let iovs = [iov(&dst, 512, 4608)];
    // SAFETY: as above.
    unsafe {
        q.push(
            Op::Read {
                offset: 8192,
                iov: iovs.as_ptr(),
                iov_len: 1,
            },
            3,
        )
        .unwrap()
    };
    q.submit().unwrap();
    assert_eq!(wait(q.as_mut(), 1)[0].result, 4608);
    assert!(dst.to_vec()[512..5120].iter().all(|&b| b == 0x5a));

    // SAFETY: no buffers.
    unsafe {
        q.push(
            Op::Discard {
                offset: 8192,
                len: 4096,
            },
            4,
        )
        .unwrap()
    };
    q.submit().unwrap();
    assert_eq!(wait(q.as_mut(), 1)[0].result, 0);
    let mut back = vec![0xffu8; 4608];
    std::fs::File::open(&path)
        .unwrap()
        .read_exact_at(&mut back, 8192)
        .unwrap();
    assert!(back[..4096].iter().all(|&b| b == 0), "punched");
    assert!(back[4096..].iter().all(|&b| b == 0x5a), "the rest kept");

    // Write zeroes, in place (zero range) and giving the space back (hole punch).
    for (tag, unmap) in [(10, false), (11, true)] {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .write_all_at(&[0x66; 1024], 16384)
            .unwrap();
        // SAFETY: no buffers.
        unsafe {
            q.push(
                Op::WriteZeroes {
                    offset: 16384,
                    len: 512,
                    unmap,
                },
                tag,
            )
            .unwrap()
        };
        q.submit().unwrap();
        assert_eq!(wait(q.as_mut(), 1)[0].result, 0, "unmap {unmap}");
        let mut back = vec![0xffu8; 1024];
        std::fs::File::open(&path)
            .unwrap()
            .read_exact_at(&mut back, 16384)
            .unwrap();
        assert!(back[..512].iter().all(|&b| b == 0), "zeroed, unmap {unmap}");
        assert!(back[512..].iter().all(|&b| b == 0x66), "the rest kept");
    }

    // Reads past the end return short, not garbage.
    let iovs = [iov(&dst, 0, 4096)];
    // SAFETY: as above.
    unsafe {
        q.push(
            Op::Read {
                offset: (1 << 20) - 512,
                iov: iovs.as_ptr(),
                iov_len: 1,
            },
            5,
        )
        .unwrap()
    };
    q.submit().unwrap();
    assert_eq!(wait(q.as_mut(), 1)[0].result, 512);
}

#[test]
fn read_only_and_sector_size_options() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("ro.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len((1 << 20) + 1000)
        .unwrap();
    let disk = RawDisk::open(
        &path,
        RawOptions {
            read_only: true,
            sector_size: Some(4096),
            buffered: false,
        },
    )
    .unwrap();
    let info = disk.info();
    assert_eq!(
        (
            info.sector_size,
            info.physical_sector_size,
            info.read_only,
            info.discard
        ),
        (4096, 4096, true, false)
    );
    assert_eq!(
        info.sectors, 2048,
        "size rounded down to whole physical sectors"
    );
    // Resized under the open disk: the size now, in whole physical sectors.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len((2 << 20) + 5000)
        .unwrap();
    assert_eq!(disk.sectors_now().unwrap(), 4096 + 8);
    assert_eq!(disk.info().sectors, 2048, "info keeps the size at open");
    assert!(RawDisk::open(
        &path,
        RawOptions {
            sector_size: Some(1000),
            ..Default::default()
        }
    )
    .is_err());
    assert!(
        RawDisk::open(dir.path(), RawOptions::default()).is_err(),
        "a directory is not a disk"
    );
}

/// A loop device over a file: the block-device path (size, logical and physical sector size
/// from the device's ioctls; discard through fallocate on the device). Needs root, as CI runs.
#[test]
fn block_device_reports_its_geometry_and_serves_io() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("loop.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let out = std::process::Command::new("losetup")
        .args(["-f", "--show", "--sector-size", "4096"])
        .arg(&path)
        .output()
        .expect("losetup (util-linux) is needed for the block-device test");
    assert!(
        out.status.success(),
        "losetup failed (this test needs root): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dev = String::from_utf8(out.stdout).unwrap().trim().to_string();
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup")
                .args(["-d", &self.0])
                .status();
        }
    }
    let _detach = Detach(dev.clone());
    let disk = RawDisk::open(std::path::Path::new(&dev), RawOptions::default()).unwrap();
    let info = disk.info();
    assert_eq!(
        (info.sectors, info.sector_size, info.physical_sector_size),
        (16384, 4096, 4096)
    );
    let mut q = disk.open_queue(8).unwrap();
    let buf = HeapPages::new(1);
    // SAFETY: fills the page we own.
    unsafe { std::ptr::write_bytes(buf.as_ptr(), 0x77, 4096) };
    let iovs = [iov(&buf, 0, 4096)];
    // SAFETY: `buf` and `iovs` outlive the wait.
    unsafe {
        q.push(
            Op::Write {
                offset: 4096 * 10,
                iov: iovs.as_ptr(),
                iov_len: 1,
            },
            1,
        )
        .unwrap()
    };
    q.submit().unwrap();
    assert_eq!(wait(q.as_mut(), 1)[0].result, 4096);
    // SAFETY: no buffers.
    unsafe { q.push(Op::Flush, 2).unwrap() };
    q.submit().unwrap();
    assert_eq!(wait(q.as_mut(), 1)[0].result, 0);
    let mut back = vec![0u8; 4096];
    std::fs::File::open(&path)
        .unwrap()
        .read_exact_at(&mut back, 4096 * 10)
        .unwrap();
    assert!(
        back.iter().all(|&b| b == 0x77),
        "the write reached the backing file"
    );
    // SAFETY: no buffers.
    unsafe {
        q.push(
            Op::Discard {
                offset: 4096 * 10,
                len: 4096,
            },
            3,
        )
        .unwrap()
    };
    q.submit().unwrap();
    assert_eq!(
        wait(q.as_mut(), 1)[0].result,
        0,
        "discard on a block device"
    );
    // Write zeroes on a block device zeroes in place.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all_at(&[0x55; 8192], 4096 * 12)
        .unwrap();
    // SAFETY: no buffers.
    unsafe {
        q.push(
            Op::WriteZeroes {
                offset: 4096 * 12,
                len: 4096,
                unmap: true,
            },
            4,
        )
        .unwrap()
    };
    q.submit().unwrap();
    assert_eq!(
        wait(q.as_mut(), 1)[0].result,
        0,
        "write zeroes on a block device"
    );
    let mut back = vec![0xffu8; 8192];
    std::fs::File::open(&path)
        .unwrap()
        .read_exact_at(&mut back, 4096 * 12)
        .unwrap();
    assert!(back[..4096].iter().all(|&b| b == 0), "zeroed");
    assert!(back[4096..].iter().all(|&b| b == 0x55), "the rest kept");
    // The device grows (its backing file grows and the loop device re-reads its capacity,
    // as a resized logical volume would): the disk reports the new size.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(12 << 20)
        .unwrap();
    let status = std::process::Command::new("losetup")
        .args(["-c", &dev])
        .status()
        .unwrap();
    assert!(status.success(), "losetup -c {dev}");
    assert_eq!(disk.sectors_now().unwrap(), 24576);
}
