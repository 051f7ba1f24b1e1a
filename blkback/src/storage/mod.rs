//! The storage side of blkback, as traits: a [`Disk`] describes itself and opens one
//! [`Queue`] per ring worker; a queue accepts reads, writes, flushes and discards against the
//! disk and reports their completions. [`raw::RawDisk`] runs raw files and block devices on
//! io_uring; qcow2 or network storage can follow behind the same traits.

pub mod raw;

use std::io;
use std::os::fd::RawFd;

/// What a disk offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskInfo {
    /// Size in 512-byte sectors.
    pub sectors: u64,
    /// Logical sector size in bytes (512 or 4096).
    pub sector_size: u32,
    /// Physical sector size in bytes (a multiple of `sector_size`).
    pub physical_sector_size: u32,
    /// Writes, flushes and discards are refused.
    pub read_only: bool,
    /// Discard is supported (hole punching, or discard on a block device).
    pub discard: bool,
    /// Data is written through the host page cache (not `O_DIRECT`).
    pub buffered: bool,
}

/// One operation. Buffers are raw `iovec`s into memory (grant mappings) that the caller keeps
/// alive and unchanged until the operation's completion is returned.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    /// Read into the buffers from byte `offset`.
    Read {
        /// Byte offset on the disk.
        offset: u64,
        /// Start of the `iovec` array.
        iov: *const libc::iovec,
        /// Number of `iovec`s.
        iov_len: u32,
    },
    /// Write the buffers at byte `offset`.
    Write {
        /// Byte offset on the disk.
        offset: u64,
        /// Start of the `iovec` array.
        iov: *const libc::iovec,
        /// Number of `iovec`s.
        iov_len: u32,
    },
    /// Make every completed write stable (`fdatasync`).
    Flush,
    /// Discard `len` bytes from `offset`.
    Discard {
        /// Byte offset on the disk.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// Make `len` bytes from `offset` read as zeros. With `unmap` the space may be given back
    /// (a file's hole); without, it stays allocated.
    WriteZeroes {
        /// Byte offset on the disk.
        offset: u64,
        /// Bytes.
        len: u64,
        /// The space may be deallocated.
        unmap: bool,
    },
}

/// The queue refused an operation because it is full; retry after completions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

/// One completed operation: its tag and its result (bytes, or a negative errno).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The tag given to [`Queue::push`].
    pub tag: u64,
    /// Bytes transferred, or `-errno`.
    pub result: i32,
}

/// A submission queue owned by one ring worker.
pub trait Queue: Send {
    /// Queues `op` under `tag` (not yet submitted).
    ///
    /// # Safety
    ///
    /// The memory the op's `iovec`s describe, and the `iovec` array itself, must stay valid
    /// and must not be reused until this op's completion has been returned by
    /// [`Queue::completions`].
    unsafe fn push(&mut self, op: Op, tag: u64) -> Result<(), QueueFull>;
    /// Submits everything queued.
    fn submit(&mut self) -> io::Result<()>;
    /// Moves finished operations into `out`.
    fn completions(&mut self, out: &mut Vec<Completion>);
    /// Operations pushed and not yet completed.
    fn in_flight(&self) -> usize;
    /// A descriptor that polls readable while completions wait to be collected (for callers
    /// that sleep in their own event loop instead of in [`Queue::wait`]).
    fn completion_fd(&self) -> RawFd;
    /// Submits everything queued, then sleeps until an operation completes or a descriptor in
    /// `watch` polls readable (the worker's event channel and stop signal): finished
    /// operations go to `done`, and `readable[i]` is set for each `watch[i]` seen readable
    /// (possibly spuriously). One system call where the queue can (io_uring waits for both).
    fn wait(
        &mut self,
        watch: &[RawFd],
        done: &mut Vec<Completion>,
        readable: &mut [bool],
    ) -> io::Result<()>;
}

/// A disk.
pub trait Disk: Send + Sync {
    /// What it offers (its size as when it was opened).
    fn info(&self) -> DiskInfo;
    /// The backing's size now, in 512-byte sectors of whole physical sectors: it may have
    /// been resized since the disk was opened (a grown file or logical volume).
    fn sectors_now(&self) -> io::Result<u64>;
    /// Opens a queue of `depth` operations for one worker.
    fn open_queue(&self, depth: u32) -> io::Result<Box<dyn Queue>>;
}
