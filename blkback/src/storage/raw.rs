//! Raw files and block devices on io_uring, with `O_DIRECT` where the backing allows it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use io_uring::{opcode, types, IoUring};

use super::{Completion, Disk, DiskInfo, Op, Queue, QueueFull};

/// `BLKGETSIZE64`: device size in bytes.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
/// `BLKSSZGET`: logical sector size.
const BLKSSZGET: libc::c_ulong = 0x1268;
/// `BLKPBSZGET`: physical sector size.
const BLKPBSZGET: libc::c_ulong = 0x127b;

/// How to open a raw disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RawOptions {
    /// Open read-only (the `mode` key is `r`).
    pub read_only: bool,
    /// Logical sector size to present for a regular file (block devices report their own).
    pub sector_size: Option<u32>,
    /// Never use `O_DIRECT` (for tests that want the page cache).
    pub buffered: bool,
}

/// A raw file or block device.
pub struct RawDisk {
    file: Arc<File>,
    info: DiskInfo,
    block_device: bool,
}

/// Bytes of `file` now: `BLKGETSIZE64` for a block device, the length of a regular file.
fn size_in_bytes(file: &File, block_device: bool) -> io::Result<u64> {
    if block_device {
        ioctl_value(file, BLKGETSIZE64)
    } else {
        Ok(file.metadata()?.len())
    }
}

/// 512-byte sectors in the whole physical sectors of `bytes`.
fn usable_sectors(bytes: u64, physical: u32) -> u64 {
    (bytes - bytes % u64::from(physical)) / 512
}

fn ioctl_value<T: Default>(file: &File, request: libc::c_ulong) -> io::Result<T> {
    let mut value = T::default();
    // SAFETY: `request` is a block-device ioctl that writes one `T` into the pointer we pass,
    // which is valid for the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), request as _, &mut value as *mut T) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

fn open(path: &Path, read_only: bool, direct: bool) -> io::Result<File> {
    let mut flags = libc::O_CLOEXEC;
    if direct {
        flags |= libc::O_DIRECT;
    }
    OpenOptions::new()
        .read(true)
        .write(!read_only)
        .custom_flags(flags)
        .open(path)
}

impl RawDisk {
    /// Opens `path` (a regular file or a block device).
    pub fn open(path: &Path, options: RawOptions) -> io::Result<Self> {
        let direct = !options.buffered;
        let (file, buffered) = match open(path, options.read_only, direct) {
            Ok(f) => (f, !direct),
            // tmpfs and some filesystems refuse O_DIRECT: fall back to the page cache, and
            // make flushes real fdatasyncs (they always are).
            Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => {
                (open(path, options.read_only, false)?, true)
            }
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        let block_device = meta.file_type().is_block_device();
        let (bytes, logical, physical, discard) = if block_device {
            let bytes = size_in_bytes(&file, true)?;
            let logical: libc::c_int = ioctl_value(&file, BLKSSZGET)?;
            let physical: libc::c_uint = ioctl_value(&file, BLKPBSZGET)?;
            (bytes, logical.max(512) as u32, physical.max(512), true)
        } else if meta.file_type().is_file() {
            let logical = options.sector_size.unwrap_or(512);
            (meta.len(), logical, logical, true)
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is neither a file nor a block device", path.display()),
            ));
        };
        if !logical.is_power_of_two() || logical < 512 || physical % logical != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("sector size {logical} (physical {physical}) is not usable"),
            ));
        }
        let info = DiskInfo {
            sectors: usable_sectors(bytes, physical),
            sector_size: logical,
            physical_sector_size: physical,
            read_only: options.read_only,
            discard: discard && !options.read_only,
            buffered,
        };
        Ok(Self {
            file: Arc::new(file),
            info,
            block_device,
        })
    }
}

impl Disk for RawDisk {
    fn info(&self) -> DiskInfo {
        self.info
    }

    fn sectors_now(&self) -> io::Result<u64> {
        let bytes = size_in_bytes(&self.file, self.block_device)?;
        Ok(usable_sectors(bytes, self.info.physical_sector_size))
    }

    fn open_queue(&self, depth: u32) -> io::Result<Box<dyn Queue>> {
        Ok(Box::new(UringQueue::new(
            Arc::clone(&self.file),
            self.block_device,
            depth,
        )?))
    }
}

/// Tags of the polls [`Queue::wait`] keeps on watched descriptors: `WATCH_TAG + index`, far
/// above any operation tag a worker uses (its slot numbers).
const WATCH_TAG: u64 = 1 << 63;

/// Most descriptors one queue watches.
const MAX_WATCHED: usize = 8;

/// One io_uring per worker; the worker sleeps in it, for completions and for its watched
/// descriptors at once.
struct UringQueue {
    ring: IoUring,
    file: Arc<File>,
    block_device: bool,
    in_flight: usize,
    depth: usize,
    /// Which watched descriptors have a poll armed (one-shot polls, re-armed after they fire,
    /// so a descriptor that stays readable is reported again: level-triggered).
    armed: [bool; MAX_WATCHED],
}

impl UringQueue {
    fn new(file: Arc<File>, block_device: bool, depth: u32) -> io::Result<Self> {
        let depth = depth.clamp(1, 4096).next_power_of_two();
        let entries = depth + MAX_WATCHED as u32;
        let ring = IoUring::builder()
            .setup_cqsize(entries.next_power_of_two() * 2)
            .build(entries)?;
        Ok(Self {
            ring,
            file,
            block_device,
            in_flight: 0,
            depth: depth as usize,
            armed: [false; MAX_WATCHED],
        })
    }
}

impl Queue for UringQueue {
    unsafe fn push(&mut self, op: Op, tag: u64) -> Result<(), QueueFull> {
        if self.in_flight >= self.depth {
            return Err(QueueFull);
        }
        let fd = types::Fd(self.file.as_raw_fd());
        let entry = match op {
            Op::Read {
                offset,
                iov,
                iov_len,
            } => opcode::Readv::new(fd, iov, iov_len).offset(offset).build(),
            Op::Write {
                offset,
                iov,
                iov_len,
            } => opcode::Writev::new(fd, iov, iov_len).offset(offset).build(),
            Op::Flush => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            Op::Discard { offset, len } => opcode::Fallocate::new(fd, len)
                .offset(offset)
                .mode(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)
                .build(),
            // A file may give the space back (a hole reads as zeros); a block device zeroes
            // in place (BLKZEROOUT's path, which unmaps where the device can).
            Op::WriteZeroes { offset, len, unmap } => {
                let mode = if unmap && !self.block_device {
                    libc::FALLOC_FL_PUNCH_HOLE
                } else {
                    libc::FALLOC_FL_ZERO_RANGE
                };
                opcode::Fallocate::new(fd, len)
                    .offset(offset)
                    .mode(mode | libc::FALLOC_FL_KEEP_SIZE)
                    .build()
            }
        }
        .user_data(tag);
        // SAFETY: the caller guarantees (this method's contract) that the buffers and iovecs
        // outlive the operation; the file is kept open by `self.file` for the queue's life.
        unsafe { self.ring.submission().push(&entry) }.map_err(|_| QueueFull)?;
        self.in_flight += 1;
        Ok(())
    }

    fn submit(&mut self) -> io::Result<()> {
        loop {
            match self.ring.submit() {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    fn completions(&mut self, out: &mut Vec<Completion>) {
        self.harvest(out, &mut []);
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn completion_fd(&self) -> RawFd {
        // An io_uring descriptor polls readable while its completion queue holds entries.
        self.ring.as_raw_fd()
    }

    fn wait(
        &mut self,
        watch: &[RawFd],
        done: &mut Vec<Completion>,
        readable: &mut [bool],
    ) -> io::Result<()> {
        if watch.len() > MAX_WATCHED {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "too many descriptors to watch",
            ));
        }
        for (i, &fd) in watch.iter().enumerate() {
            let Some(armed) = self.armed.get_mut(i).filter(|a| !**a) else {
                continue;
            };
            let poll = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
                .build()
                .user_data(WATCH_TAG + i as u64);
            // SAFETY: a poll references no memory of ours; the descriptor is the caller's and
            // a poll on a closed descriptor completes with an error.
            unsafe { self.ring.submission().push(&poll) }
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
            *armed = true;
        }
        // Sleep only if nothing is waiting in the completion queue already.
        let want = usize::from(self.ring.completion().is_empty());
        match self.ring.submit_and_wait(want) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EBUSY | libc::EAGAIN | libc::ETIME)
                ) => {}
            Err(e) => return Err(e),
        }
        self.harvest(done, readable);
        Ok(())
    }
}

impl UringQueue {
    /// Moves completions out of the ring: operations to `out`, fired polls to `readable`.
    fn harvest(&mut self, out: &mut Vec<Completion>, readable: &mut [bool]) {
        for cqe in self.ring.completion() {
            let tag = cqe.user_data();
            if let Some(watched) = tag.checked_sub(WATCH_TAG) {
                let i = watched as usize;
                if let Some(armed) = self.armed.get_mut(i) {
                    *armed = false;
                }
                if let Some(r) = readable.get_mut(i) {
                    *r = true;
                }
                continue;
            }
            self.in_flight = self.in_flight.saturating_sub(1);
            out.push(Completion {
                tag,
                result: cqe.result(),
            });
        }
    }
}

impl Drop for UringQueue {
    /// Waits for every operation still in the kernel: their buffers belong to the caller, who
    /// must not see them released while the kernel may still write into them.
    fn drop(&mut self) {
        let mut sink = Vec::new();
        while self.in_flight > 0 {
            if self.ring.submit_and_wait(1).is_err() {
                // Cannot wait: leak the ring rather than free memory the kernel may touch.
                let ring = std::mem::replace(
                    &mut self.ring,
                    match IoUring::new(1) {
                        Ok(r) => r,
                        Err(_) => return,
                    },
                );
                std::mem::forget(ring);
                return;
            }
            self.completions(&mut sink);
        }
    }
}
