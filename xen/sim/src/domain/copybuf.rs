//! The client side of a connection's copy buffer (see the hypervisor's `copybuf`): a sealed
//! memfd shared with the hypervisor, so that only the segment list crosses the socket. Its
//! first part stages copies from and to ordinary memory (each byte is copied once here and
//! once by the hypervisor); the rest is handed out in slots as [`CopyBuf`]s, which the
//! hypervisor copies to and from directly (each byte once, as on Xen).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use memmap2::MmapRaw;
use xen_grant::{CopyBuf, CopyBufSource, CopyOp, Error as GrantError};

use super::{Error, HvConn};
use crate::hv::proto::{BufferedSegment, Reply, Request};

/// Bytes of a copy buffer that stage copies (batches beyond it are split).
pub(crate) const COPY_BUFFER_BYTES: usize = 8 << 20;
/// Bytes of one slot handed out as a [`CopyBuf`]: a 64 KiB frame and a header.
pub(crate) const COPY_SLOT_BYTES: usize = 68 << 10;
/// Slots after the staging part (memory is only used as they are touched).
const COPY_SLOTS: usize = 256;
/// The whole shared buffer.
const SHARED_BYTES: usize = COPY_BUFFER_BYTES + COPY_SLOTS * COPY_SLOT_BYTES;
/// Segments per hypercall.
const MAX_SEGMENTS: usize = 4096;

static COPY_CALLS: AtomicU64 = AtomicU64::new(0);
static COPY_BYTES: AtomicU64 = AtomicU64::new(0);
static COPY_WAITED_NS: AtomicU64 = AtomicU64::new(0);

/// Grant-copy calls this process made, the bytes they moved and the time it waited for their
/// answers, over all its connections (for benchmarks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyCallStats {
    /// Hypervisor calls.
    pub calls: u64,
    /// Bytes copied by them.
    pub bytes: u64,
    /// Time from sending each request to its reply, summed.
    pub waited: std::time::Duration,
}

/// This process's grant-copy calls so far.
pub fn copy_call_stats() -> CopyCallStats {
    CopyCallStats {
        calls: COPY_CALLS.load(Ordering::Relaxed),
        bytes: COPY_BYTES.load(Ordering::Relaxed),
        waited: std::time::Duration::from_nanos(COPY_WAITED_NS.load(Ordering::Relaxed)),
    }
}

/// Counts one grant-copy call that moved `bytes` and began at `started`.
pub(crate) fn count_copy_call(bytes: usize, started: std::time::Instant) {
    COPY_CALLS.fetch_add(1, Ordering::Relaxed);
    COPY_BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
    COPY_WAITED_NS.fetch_add(
        u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
}

/// A copy buffer registered on one hypervisor connection.
pub(crate) struct ClientCopyBuffer {
    map: Arc<MmapRaw>,
    slots: Arc<Slots>,
    _file: File,
}

/// The slots of a copy buffer not handed out; keeps the buffer mapped while any is.
struct Slots {
    _map: Arc<MmapRaw>,
    free: Mutex<Vec<usize>>,
}

impl CopyBufSource for Slots {
    fn release(&self, token: usize) {
        self.free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(token);
    }
}

fn invalid(reason: &'static str) -> GrantError {
    GrantError::Invalid { op: "copy", reason }
}

impl ClientCopyBuffer {
    /// Creates the buffer and registers it on `conn`.
    pub(crate) fn register(conn: &HvConn) -> Result<Self, Error> {
        let fd = nix::sys::memfd::memfd_create(
            c"xen-sim-copy-buffer",
            nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC
                | nix::sys::memfd::MemFdCreateFlag::MFD_ALLOW_SEALING,
        )
        .map_err(std::io::Error::from)?;
        let file = File::from(fd);
        file.set_len(SHARED_BYTES as u64)?;
        nix::fcntl::fcntl(
            file.as_raw_fd(),
            nix::fcntl::FcntlArg::F_ADD_SEALS(
                nix::fcntl::SealFlag::F_SEAL_SHRINK
                    | nix::fcntl::SealFlag::F_SEAL_GROW
                    | nix::fcntl::SealFlag::F_SEAL_SEAL,
            ),
        )
        .map_err(std::io::Error::from)?;
        let map = Arc::new(MmapRaw::map_raw(&file)?);
        conn.call_with_fds(
            &Request::RegisterCopyBuffer {
                len: SHARED_BYTES as u64,
            },
            &[file.as_raw_fd()],
        )?;
        let slots = Arc::new(Slots {
            _map: Arc::clone(&map),
            free: Mutex::new((0..COPY_SLOTS).rev().collect()),
        });
        Ok(Self {
            map,
            slots,
            _file: file,
        })
    }

    /// A free slot as a buffer of `len` bytes, if `len` fits one and one is free.
    pub(crate) fn slot(&self, len: usize) -> Option<CopyBuf> {
        if len > COPY_SLOT_BYTES || self.map.len() < SHARED_BYTES {
            return None;
        }
        let slot = self
            .slots
            .free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()?;
        let at = COPY_BUFFER_BYTES + slot * COPY_SLOT_BYTES;
        let ptr = NonNull::new(self.map.as_mut_ptr().wrapping_add(at))?;
        let source: Arc<dyn CopyBufSource> = self.slots.clone();
        // SAFETY: slot `slot` lies inside the mapping (`at + COPY_SLOT_BYTES <= SHARED_BYTES
        // <= map.len()`, checked above), is memfd memory (initialized), and was just taken off
        // the free list, so nothing else uses it until the buffer's drop puts it back; the
        // hypervisor touches it only during copies the holder passes it to. `Slots` holds the
        // mapping.
        let mut buf = unsafe { CopyBuf::from_raw(ptr, COPY_SLOT_BYTES, slot, source) };
        buf.set_len(len);
        Some(buf)
    }

    /// The buffer offset of `len` bytes at `ptr` if they lie in the slots (copied there
    /// directly, without staging).
    fn direct(&self, ptr: *const u8, len: usize) -> Option<u32> {
        let start = (ptr as usize).checked_sub(self.map.as_ptr() as usize)?;
        let in_slots = start >= COPY_BUFFER_BYTES && start.checked_add(len)? <= SHARED_BYTES;
        in_slots.then(|| u32::try_from(start).ok()).flatten()
    }

    /// The local bytes of `op`: where they are and how many.
    fn local(op: &CopyOp<'_>) -> (*const u8, usize) {
        match op {
            CopyOp::FromGrant { dst, .. } => (dst.as_ptr(), dst.len()),
            CopyOp::ToGrant { src, .. } => (src.as_ptr(), src.len()),
        }
    }

    /// Bytes `op` needs in the staging part.
    fn staged_len(&self, op: &CopyOp<'_>) -> usize {
        let (ptr, len) = Self::local(op);
        if self.direct(ptr, len).is_some() {
            0
        } else {
            len
        }
    }

    /// Performs `ops` through the buffer, in batches that fit it.
    pub(crate) fn copy(
        &self,
        conn: &HvConn,
        ops: &mut [CopyOp<'_>],
        status: &mut [i16],
    ) -> Result<(), GrantError> {
        let mut start = 0;
        while start < ops.len() {
            let mut end = start;
            let mut bytes = 0usize;
            while let Some(op) = ops.get(end) {
                let staged = self.staged_len(op);
                if end - start == MAX_SEGMENTS || bytes + staged > COPY_BUFFER_BYTES {
                    break;
                }
                bytes += staged;
                end += 1;
            }
            if end == start {
                return Err(invalid("segment larger than the copy buffer"));
            }
            let (Some(batch), Some(results)) =
                (ops.get_mut(start..end), status.get_mut(start..end))
            else {
                return Err(invalid("batch bounds"));
            };
            self.copy_batch(conn, batch, results)?;
            start = end;
        }
        Ok(())
    }

    fn copy_batch(
        &self,
        conn: &HvConn,
        ops: &mut [CopyOp<'_>],
        status: &mut [i16],
    ) -> Result<(), GrantError> {
        let base = self.map.as_mut_ptr();
        let mut at = 0usize;
        let mut moved = 0usize;
        let mut segments = Vec::with_capacity(ops.len());
        // Where each staged segment's bytes are in the staging part (`None`: copied directly).
        let mut staged_at = Vec::with_capacity(ops.len());
        for op in ops.iter() {
            let g = op.grant();
            let len = u16::try_from(op.len()).map_err(|_| invalid("segment over 64 KiB"))?;
            moved += usize::from(len);
            let (ptr, _) = Self::local(op);
            let offset = match self.direct(ptr, usize::from(len)) {
                Some(offset) => {
                    staged_at.push(None);
                    offset
                }
                None => {
                    if let CopyOp::ToGrant { src, .. } = op {
                        // SAFETY: the batch's staged bytes fit the staging part (checked by
                        // `copy`), so `at + src.len() <= COPY_BUFFER_BYTES`; it is ours and
                        // mapped.
                        unsafe {
                            std::ptr::copy_nonoverlapping(src.as_ptr(), base.add(at), src.len())
                        };
                    }
                    let staged = u32::try_from(at).map_err(|_| invalid("buffer offset"))?;
                    staged_at.push(Some(at));
                    at += usize::from(len);
                    staged
                }
            };
            segments.push(BufferedSegment {
                domid: g.domid,
                gref: g.gref,
                offset: g.offset,
                len,
                to_grant: matches!(op, CopyOp::ToGrant { .. }),
                at: offset,
            });
        }
        let started = std::time::Instant::now();
        let answer = conn.call(&Request::CopyGrantsBuffered { segments });
        count_copy_call(moved, started);
        let (reply, _) = answer.map_err(|e| super::grant::os("copy", e))?;
        let Reply::CopiedBuffered { status: results } = reply else {
            return Err(super::grant::os(
                "copy",
                Error::Protocol("unexpected copy reply".into()),
            ));
        };
        if results.len() != ops.len() {
            return Err(invalid(
                "the hypervisor answered a different number of segments",
            ));
        }
        for ((op, slot), (result, staged)) in ops
            .iter_mut()
            .zip(status.iter_mut())
            .zip(results.into_iter().zip(staged_at))
        {
            *slot = result;
            if let (CopyOp::FromGrant { dst, .. }, Some(at)) = (op, staged) {
                if result == xen_abi::grant_table::status::OKAY {
                    // SAFETY: as above, a staged segment's `at + dst.len()` lies inside the
                    // staging part.
                    unsafe {
                        std::ptr::copy_nonoverlapping(base.add(at), dst.as_mut_ptr(), dst.len())
                    };
                }
            }
        }
        Ok(())
    }
}
