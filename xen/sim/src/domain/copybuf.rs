//! The client side of a connection's copy buffer (see the hypervisor's `copybuf`): grant
//! copies stage their bytes in a sealed memfd shared with the hypervisor, so each byte is
//! copied once here and once by the hypervisor, and only the segment list crosses the socket.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::MmapRaw;
use xen_grant::{CopyOp, Error as GrantError};

use super::{Error, HvConn};
use crate::hv::proto::{BufferedSegment, Reply, Request};

/// Bytes of a copy buffer (batches beyond it are split).
pub(crate) const COPY_BUFFER_BYTES: usize = 8 << 20;
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

/// A copy buffer registered on one hypervisor connection.
pub(crate) struct ClientCopyBuffer {
    map: MmapRaw,
    _file: File,
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
        file.set_len(COPY_BUFFER_BYTES as u64)?;
        nix::fcntl::fcntl(
            file.as_raw_fd(),
            nix::fcntl::FcntlArg::F_ADD_SEALS(
                nix::fcntl::SealFlag::F_SEAL_SHRINK
                    | nix::fcntl::SealFlag::F_SEAL_GROW
                    | nix::fcntl::SealFlag::F_SEAL_SEAL,
            ),
        )
        .map_err(std::io::Error::from)?;
        let map = MmapRaw::map_raw(&file)?;
        conn.call_with_fds(
            &Request::RegisterCopyBuffer {
                len: COPY_BUFFER_BYTES as u64,
            },
            &[file.as_raw_fd()],
        )?;
        Ok(Self { map, _file: file })
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
                if end - start == MAX_SEGMENTS || bytes + op.len() > COPY_BUFFER_BYTES {
                    break;
                }
                bytes += op.len();
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
        let mut segments = Vec::with_capacity(ops.len());
        for op in ops.iter() {
            let g = op.grant();
            let len = u16::try_from(op.len()).map_err(|_| invalid("segment over 64 KiB"))?;
            if let CopyOp::ToGrant { src, .. } = op {
                // SAFETY: the batch's bytes fit the buffer (checked by `copy`), so
                // `at + src.len() <= COPY_BUFFER_BYTES`; the buffer is ours and mapped.
                unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), base.add(at), src.len()) };
            }
            segments.push(BufferedSegment {
                domid: g.domid,
                gref: g.gref,
                offset: g.offset,
                len,
                to_grant: matches!(op, CopyOp::ToGrant { .. }),
                at: u32::try_from(at).map_err(|_| invalid("buffer offset"))?,
            });
            at += usize::from(len);
        }
        let started = std::time::Instant::now();
        let answer = conn.call(&Request::CopyGrantsBuffered { segments });
        COPY_CALLS.fetch_add(1, Ordering::Relaxed);
        COPY_BYTES.fetch_add(at as u64, Ordering::Relaxed);
        COPY_WAITED_NS.fetch_add(
            u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
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
        let mut at = 0usize;
        for ((op, slot), result) in ops.iter_mut().zip(status.iter_mut()).zip(results) {
            *slot = result;
            let len = op.len();
            if let CopyOp::FromGrant { dst, .. } = op {
                if result == xen_abi::grant_table::status::OKAY {
                    // SAFETY: as above, `at + dst.len()` lies inside the buffer.
                    unsafe { std::ptr::copy_nonoverlapping(base.add(at), dst.as_mut_ptr(), len) };
                }
            }
            at += len;
        }
        Ok(())
    }
}
