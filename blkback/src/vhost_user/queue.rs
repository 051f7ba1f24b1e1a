//! One virtqueue's engine: takes descriptor chains off the available ring, checks each
//! ([`super::request`]), hands reads, writes, flushes and discards to the disk's storage queue
//! (io_uring) with `iovec`s straight into guest memory, and on completion writes the status
//! byte, puts the chain on the used ring and notifies the guest if it asked.
//!
//! Bounded: at most `depth` requests are in flight; past that the rest stay on the available
//! ring until completions free room (a guest that lists the same head again and again gets no
//! more than that). Every request holds the guest memory map it points into, so a memory table
//! replaced mid-flight is unmapped only after the I/O that uses it has completed.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tracing::debug;
use vhost_user_backend::{VringRwLock, VringT};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK};
use virtio_queue::QueueOwnedT;
use vm_memory::{
    Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap,
};

use super::request::{self, Limits, Parsed, Request, Segment};
use crate::stats::QueueStats;
use crate::storage::{Completion, Op, Queue};

/// Guest memory as vhost-user maps it (no dirty-page bitmap: live migration is not offered).
pub type Memory = GuestMemoryMmap<()>;

/// Most descriptors read from one chain: header, [`request::MAX_SEGMENTS`] data segments and
/// a status descriptor. Longer chains (an indirect table can list 2^28) are not read on.
const MAX_CHAIN: usize = request::MAX_SEGMENTS + 2;

/// A request the storage queue holds.
struct InFlight {
    /// The chain's head, for the used ring.
    head: u16,
    /// Guest address of the status byte.
    status: u64,
    /// Bytes the operation must transfer to succeed (reads and writes).
    expect: u64,
    /// Bytes written into the chain's writable buffers when it succeeds.
    used_len: u32,
    /// Which sector counter its bytes go to.
    counted: Counted,
    /// When it was handed to storage.
    started: Instant,
    /// The `iovec`s handed to the storage queue, pointing into `mem`.
    iov: Vec<libc::iovec>,
    /// The guest memory map `iov` points into, kept mapped until completion.
    mem: Arc<Memory>,
}

// SAFETY: the raw pointers in `iov` point into `mem`'s mappings, which `InFlight` keeps alive;
// they are only handed to the kernel, never dereferenced by this process, so moving the record
// to another thread is sound.
unsafe impl Send for InFlight {}

/// The engine of one virtqueue.
pub struct QueueEngine {
    /// Dropped first: its drop waits for every operation, so `slots` outlive them.
    storage: Box<dyn Queue>,
    slots: Vec<Option<InFlight>>,
    free: Vec<u32>,
    limits: Limits,
    serial: [u8; VIRTIO_BLK_ID_BYTES as usize],
    /// The vring last served: completions are answered on it.
    vring: Option<VringRwLock>,
    /// More chains were waiting when the storage queue filled up.
    stalled: bool,
    /// The available ring could not be read at the last pass.
    unusable: bool,
    done: Vec<Completion>,
    stats: Arc<QueueStats>,
}

/// Which sector counter a completed request adds to.
#[derive(Clone, Copy)]
enum Counted {
    Read,
    Written,
    Neither,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl QueueEngine {
    /// An engine over `storage`, holding at most `depth` requests in flight and counting
    /// into `stats`.
    pub fn new(
        storage: Box<dyn Queue>,
        depth: usize,
        limits: Limits,
        serial: [u8; VIRTIO_BLK_ID_BYTES as usize],
        stats: Arc<QueueStats>,
    ) -> Self {
        Self {
            storage,
            slots: (0..depth).map(|_| None).collect(),
            free: (0..depth as u32).rev().collect(),
            limits,
            serial,
            vring: None,
            stalled: false,
            unusable: false,
            done: Vec::new(),
            stats,
        }
    }

    /// The storage queue's descriptor: readable while completions wait to be collected.
    pub fn completion_fd(&self) -> std::os::fd::RawFd {
        self.storage.completion_fd()
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// The guest kicked `vring`: serve what it made available.
    pub fn kick(&mut self, vring: &VringRwLock, mem: &GuestMemoryAtomic<Memory>) -> io::Result<()> {
        bump(&self.stats.wakeups, 1);
        self.vring = Some(vring.clone());
        self.serve(vring, mem)
    }

    /// Collects finished operations and answers them; then serves chains left waiting.
    pub fn complete(&mut self, mem: &GuestMemoryAtomic<Memory>) -> io::Result<()> {
        let mut done = std::mem::take(&mut self.done);
        self.storage.completions(&mut done);
        let answered = self.answer(&mut done);
        self.done = done;
        let Some(vring) = self.vring.clone() else {
            return Ok(());
        };
        if answered {
            notify(&vring)?;
        }
        if self.stalled {
            self.serve(&vring, mem)?;
        }
        Ok(())
    }

    /// Waits until every operation in flight has completed and is answered (the frontend is
    /// stopping the ring: `GET_VRING_BASE` must see them on the used ring).
    pub fn drain(&mut self) -> io::Result<()> {
        let mut done = std::mem::take(&mut self.done);
        while self.storage.in_flight() > 0 {
            self.storage.wait(&[], &mut done, &mut [])?;
            self.answer(&mut done);
        }
        self.done = done;
        self.stalled = false;
        if let Some(vring) = &self.vring {
            notify(vring)?;
        }
        Ok(())
    }

    fn serve(&mut self, vring: &VringRwLock, mem: &GuestMemoryAtomic<Memory>) -> io::Result<()> {
        loop {
            vring.disable_notification().map_err(io::Error::other)?;
            let answered = self.take_chains(vring, mem)?;
            self.storage.submit()?;
            if answered {
                notify(vring)?;
            }
            if self.stalled
                || self.unusable
                || !vring.enable_notification().map_err(io::Error::other)?
            {
                return Ok(());
            }
        }
    }

    /// Takes chains while there is room; true if some were answered at once.
    fn take_chains(
        &mut self,
        vring: &VringRwLock,
        mem: &GuestMemoryAtomic<Memory>,
    ) -> io::Result<bool> {
        let guard = mem.memory();
        let map: Arc<Memory> = guard.clone().into_inner();
        let mut state = vring.get_mut();
        let mut answered = false;
        self.stalled = false;
        self.unusable = false;
        loop {
            if self.free.is_empty() {
                self.stalled = true;
                break;
            }
            let chain = match state.get_queue_mut().iter(guard.clone()) {
                Ok(mut avail) => avail.next(),
                // Not ready (reset), or an available index more than a ring ahead: nothing
                // can be taken until the frontend sets the ring up again.
                Err(e) => {
                    debug!(error = %e, "vhost-user-blk: available ring unusable");
                    self.unusable = true;
                    None
                }
            };
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let descs: Vec<(u64, u32, bool)> = chain
                .take(MAX_CHAIN + 1)
                .map(|d| (d.addr().0, d.len(), d.is_write_only()))
                .collect();
            let parsed = if descs.len() > MAX_CHAIN {
                None
            } else {
                request::parse(&descs, |addr, out| read(&map, addr, out), &self.limits)
            };
            match self.start(parsed, head, &map) {
                Started::InFlight => {}
                Started::Answered(len) => {
                    state.add_used(head, len).map_err(io::Error::other)?;
                    answered = true;
                }
            }
        }
        Ok(answered)
    }

    /// Starts one parsed chain: queued to storage, or answered at once with the bytes written.
    fn start(&mut self, parsed: Option<Parsed>, head: u16, map: &Arc<Memory>) -> Started {
        let stats = Arc::clone(&self.stats);
        let Some(Parsed { status, request }) = parsed else {
            bump(&stats.errors, 1);
            return Started::Answered(0);
        };
        let refuse = |code: u32| {
            if code != VIRTIO_BLK_S_OK {
                bump(&stats.errors, 1);
            }
            let _ = map.write_obj(code as u8, GuestAddress(status));
            Started::Answered(1)
        };
        let counter = match &request {
            Ok(Request::Read { .. }) => Some(&stats.reads),
            Ok(Request::Write { .. }) => Some(&stats.writes),
            Ok(Request::Flush) => Some(&stats.flushes),
            Ok(Request::Discard { .. }) => Some(&stats.discards),
            Ok(Request::WriteZeroes { .. }) => Some(&stats.write_zeroes),
            Ok(Request::GetId { .. }) | Err(_) => None,
        };
        if let Some(c) = counter {
            bump(c, 1);
        }
        let (op, iov, expect, used_len) = match request {
            Err(code) => return refuse(u32::from(code)),
            Ok(Request::GetId { segments }) => {
                let written = write_segments(map, &segments, &self.serial);
                let _ = map.write_obj(VIRTIO_BLK_S_OK as u8, GuestAddress(status));
                return Started::Answered(written + 1);
            }
            Ok(Request::Flush) => (OpKind::Flush, Vec::new(), 0, 1),
            Ok(Request::Discard { offset, len }) => {
                (OpKind::Discard(offset, len), Vec::new(), 0, 1)
            }
            Ok(Request::WriteZeroes { offset, len, unmap }) => {
                (OpKind::WriteZeroes(offset, len, unmap), Vec::new(), 0, 1)
            }
            Ok(Request::Read { len: 0, .. } | Request::Write { len: 0, .. }) => {
                return refuse(VIRTIO_BLK_S_OK);
            }
            Ok(Request::Read {
                offset,
                segments,
                len,
            }) => match iovecs(map, &segments) {
                Some(iov) => (OpKind::Read(offset), iov, len, len as u32 + 1),
                None => return refuse(VIRTIO_BLK_S_IOERR),
            },
            Ok(Request::Write {
                offset,
                segments,
                len,
            }) => match iovecs(map, &segments) {
                Some(iov) => (OpKind::Write(offset), iov, len, 1),
                None => return refuse(VIRTIO_BLK_S_IOERR),
            },
        };
        let Some(tag) = self.free.pop() else {
            return refuse(VIRTIO_BLK_S_IOERR);
        };
        let Some(slot) = self.slots.get_mut(tag as usize) else {
            return refuse(VIRTIO_BLK_S_IOERR);
        };
        let record = slot.insert(InFlight {
            head,
            status,
            expect,
            used_len,
            counted: match op {
                OpKind::Read(_) => Counted::Read,
                OpKind::Write(_) => Counted::Written,
                _ => Counted::Neither,
            },
            started: Instant::now(),
            iov,
            mem: Arc::clone(map),
        });
        let (ptr, count) = (record.iov.as_ptr(), record.iov.len() as u32);
        let op = match op {
            OpKind::Read(offset) => Op::Read {
                offset,
                iov: ptr,
                iov_len: count,
            },
            OpKind::Write(offset) => Op::Write {
                offset,
                iov: ptr,
                iov_len: count,
            },
            OpKind::Flush => Op::Flush,
            OpKind::Discard(offset, len) => Op::Discard { offset, len },
            OpKind::WriteZeroes(offset, len, unmap) => Op::WriteZeroes { offset, len, unmap },
        };
        // SAFETY: the iovecs live in the slot's record and point into the guest memory map
        // the record holds; the record stays in its slot, unchanged, until this tag's
        // completion is collected (and the storage queue is dropped before the slots).
        match unsafe { self.storage.push(op, u64::from(tag)) } {
            Ok(()) => {
                bump(&self.stats.in_flight, 1);
                Started::InFlight
            }
            Err(_) => {
                if let Some(slot) = self.slots.get_mut(tag as usize) {
                    *slot = None;
                }
                self.free.push(tag);
                refuse(VIRTIO_BLK_S_IOERR)
            }
        }
    }

    /// Answers completed operations on the vring; true if any was answered.
    fn answer(&mut self, done: &mut Vec<Completion>) -> bool {
        let Some(vring) = self.vring.clone() else {
            done.clear();
            return false;
        };
        let mut state = vring.get_mut();
        let mut answered = false;
        for c in done.drain(..) {
            let Some(f) = u32::try_from(c.tag)
                .ok()
                .and_then(|tag| self.slots.get_mut(tag as usize)?.take().map(|f| (tag, f)))
            else {
                continue;
            };
            let (tag, f) = f;
            self.free.push(tag);
            let ok = c.result >= 0 && c.result as u64 == f.expect;
            self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
            self.stats.record_latency(f.started.elapsed());
            match (ok, f.counted) {
                (true, Counted::Read) => bump(&self.stats.sectors_read, f.expect / 512),
                (true, Counted::Written) => bump(&self.stats.sectors_written, f.expect / 512),
                (true, Counted::Neither) => {}
                (false, _) => bump(&self.stats.errors, 1),
            }
            let (code, len) = if ok {
                (VIRTIO_BLK_S_OK, f.used_len)
            } else {
                debug!(
                    result = c.result,
                    expected = f.expect,
                    "vhost-user-blk: I/O failed"
                );
                (VIRTIO_BLK_S_IOERR, 1)
            };
            let _ = f.mem.write_obj(code as u8, GuestAddress(f.status));
            if let Err(e) = state.add_used(f.head, len) {
                debug!(error = %e, "vhost-user-blk: used ring unusable");
            }
            answered = true;
        }
        answered
    }
}

enum OpKind {
    Read(u64),
    Write(u64),
    Flush,
    Discard(u64, u64),
    WriteZeroes(u64, u64, bool),
}

enum Started {
    InFlight,
    /// Answered at once; the bytes written into the chain.
    Answered(u32),
}

/// Signals the guest if it asked to be told about new used entries.
fn notify(vring: &VringRwLock) -> io::Result<()> {
    if vring.needs_notification().map_err(io::Error::other)? {
        vring.signal_used_queue()?;
    }
    Ok(())
}

/// Reads guest memory at `addr` into `out`; false if any of it is outside guest memory.
fn read(map: &Memory, addr: u64, out: &mut [u8]) -> bool {
    map.read_slice(out, GuestAddress(addr)).is_ok()
}

/// Writes `data` across `segments` (as far as they reach); returns the bytes written.
fn write_segments(map: &Memory, segments: &[Segment], data: &[u8]) -> u32 {
    let mut written = 0usize;
    for s in segments {
        let Some(rest) = data.get(written..) else {
            break;
        };
        let n = rest.len().min(s.len as usize);
        let Some(chunk) = rest.get(..n) else { break };
        if n == 0 || map.write_slice(chunk, GuestAddress(s.addr)).is_err() {
            break;
        }
        written += n;
    }
    written as u32
}

/// The host `iovec`s of `segments` (a segment crossing memory regions becomes several), or
/// `None` if any byte is outside guest memory or there would be too many.
fn iovecs(map: &Memory, segments: &[Segment]) -> Option<Vec<libc::iovec>> {
    let mut iov = Vec::with_capacity(segments.len());
    for s in segments {
        for slice in map.get_slices(GuestAddress(s.addr), s.len as usize) {
            let slice = slice.ok()?;
            iov.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            });
        }
        if iov.len() > request::MAX_SEGMENTS {
            return None;
        }
    }
    Some(iov)
}
