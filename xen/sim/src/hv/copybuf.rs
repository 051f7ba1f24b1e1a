//! A connection's copy buffer: a sealed memfd the client shares with the hypervisor so that
//! grant copies move their bytes through shared memory instead of the socket (one copy on each
//! side, as a real hypervisor does one), while the hypervisor still validates and performs
//! every copy itself.
//!
//! The client may write the buffer at any time; the hypervisor reads and writes it only through
//! raw byte copies, where racing writes can only yield arbitrary bytes. The memfd must be
//! sealed against shrinking, so that a client cannot truncate it under the hypervisor (SIGBUS).

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};

use memmap2::MmapRaw;
use xen_abi::grant_table::status;
use xen_abi::{DomId, PAGE_SIZE};

use std::sync::Arc;

use super::proto::{BufferedSegment, Reply};
use super::State;

/// Largest copy buffer a client may register.
pub const MAX_COPY_BUFFER: u64 = 64 << 20;

/// A registered copy buffer.
pub(crate) struct CopyBuffer {
    map: MmapRaw,
}

impl CopyBuffer {
    /// Maps the buffer passed with `RegisterCopyBuffer`, after checking its seal and size.
    pub(crate) fn register(fds: Vec<OwnedFd>, len: u64) -> Result<Self, String> {
        let mut fds = fds.into_iter();
        let (Some(fd), None) = (fds.next(), fds.next()) else {
            return Err("exactly one descriptor must come with the copy buffer".into());
        };
        if len == 0 || len > MAX_COPY_BUFFER {
            return Err(format!(
                "a copy buffer holds 1..={MAX_COPY_BUFFER} bytes, not {len}"
            ));
        }
        let seals = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GET_SEALS)
            .map_err(|e| format!("the copy buffer is not a sealable memfd: {e}"))?;
        if seals & libc::F_SEAL_SHRINK == 0 {
            return Err("the copy buffer must be sealed against shrinking".into());
        }
        let file = File::from(fd);
        let size = file.metadata().map_err(|e| e.to_string())?.len();
        if size < len {
            return Err(format!("the copy buffer has {size} bytes, not {len}"));
        }
        let map = MmapRaw::map_raw(&file).map_err(|e| e.to_string())?;
        if (map.len() as u64) < len {
            return Err("the copy buffer mapping is short".into());
        }
        Ok(Self { map })
    }

    /// The buffer's bytes `at..at + len`, if inside it.
    fn range(&self, at: u32, len: usize) -> Option<*mut u8> {
        let at = at as usize;
        (at.checked_add(len)? <= self.map.len()).then(|| self.map.as_mut_ptr().wrapping_add(at))
    }
}

/// One segment's copy, checked and pinned under the hypervisor's lock and performed outside it.
struct PlannedCopy {
    from: *const u8,
    to: *mut u8,
    len: usize,
    domid: DomId,
    gref: xen_abi::GrantRef,
    writing: bool,
}

/// A batch's copies, planned: statuses of the segments refused so far, the copies to do, and
/// the memory mappings they use (kept alive until the copies are done).
pub(crate) struct CopyPlan {
    statuses: Vec<i16>,
    copies: Vec<PlannedCopy>,
    memories: Vec<(DomId, Arc<MmapRaw>)>,
}

impl CopyPlan {
    /// Performs the planned copies (outside the hypervisor's lock: the grants stay pinned, so
    /// the granter cannot end access meanwhile, and the mappings are held by the plan).
    pub(crate) fn copy(&self) {
        for c in &self.copies {
            // SAFETY: `from` and `to` were computed under the lock: one lies within one page of
            // the granting domain's memory (offset + len <= PAGE_SIZE, checked), whose mapping
            // the plan keeps alive, the other within the connection's copy buffer (checked by
            // `range`), which the caller keeps alive; the two mappings are distinct. Both may be
            // written concurrently by their owners, which can only yield arbitrary bytes (u8
            // has no invalid values).
            unsafe { std::ptr::copy(c.from, c.to, c.len) };
        }
    }
}

impl State {
    /// Checks and pins a batch of copies between granted pages and the connection's copy
    /// buffer, to be done with [`CopyPlan::copy`] and released with [`State::release_copies`].
    pub(crate) fn plan_buffered_copies(
        &mut self,
        grantee: DomId,
        segments: &[BufferedSegment],
        buffer: &CopyBuffer,
    ) -> CopyPlan {
        let mut plan = CopyPlan {
            statuses: vec![status::OKAY; segments.len()],
            copies: Vec::with_capacity(segments.len()),
            memories: Vec::new(),
        };
        for (seg, slot) in segments.iter().zip(plan.statuses.iter_mut()) {
            match self.plan_one(grantee, seg, buffer, &mut plan.memories) {
                Ok(copy) => plan.copies.push(copy),
                Err(refused) => *slot = refused,
            }
        }
        plan
    }

    fn plan_one(
        &mut self,
        grantee: DomId,
        seg: &BufferedSegment,
        buffer: &CopyBuffer,
        memories: &mut Vec<(DomId, Arc<MmapRaw>)>,
    ) -> Result<PlannedCopy, i16> {
        let len = usize::from(seg.len);
        let writing = seg.to_grant;
        let local = buffer.range(seg.at, len).ok_or(status::BAD_COPY_ARG)?;
        if usize::from(seg.offset) + len > PAGE_SIZE {
            return Err(status::BAD_COPY_ARG);
        }
        let frame = self.pin(seg.domid, seg.gref, grantee, writing)?;
        let dom = self.domains.get(&seg.domid);
        let page = dom.and_then(|d| d.page(frame));
        // The memory mapping is kept once per domain and batch, not cloned per segment.
        let kept = memories.iter().any(|(d, _)| *d == seg.domid);
        let map = if kept {
            None
        } else {
            dom.and_then(|d| d.memory_map())
        };
        let Some(page) = page.filter(|_| kept || map.is_some()) else {
            self.unpin(seg.domid, seg.gref, writing);
            return Err(status::BAD_PAGE);
        };
        if let Some(map) = map {
            memories.push((seg.domid, map));
        }
        let remote = page.wrapping_add(usize::from(seg.offset));
        let (from, to) = if writing {
            (local.cast_const(), remote)
        } else {
            (remote.cast_const(), local)
        };
        Ok(PlannedCopy {
            from,
            to,
            len,
            domid: seg.domid,
            gref: seg.gref,
            writing,
        })
    }

    /// Unpins a plan's grants once its copies are done; the batch's statuses.
    pub(crate) fn release_copies(&mut self, plan: CopyPlan) -> Reply {
        for c in &plan.copies {
            self.unpin(c.domid, c.gref, c.writing);
        }
        Reply::CopiedBuffered {
            status: plan.statuses,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memfd(len: u64, seal: bool) -> OwnedFd {
        let fd = nix::sys::memfd::memfd_create(
            c"copybuf-test",
            nix::sys::memfd::MemFdCreateFlag::MFD_ALLOW_SEALING,
        )
        .unwrap();
        let file = File::from(fd);
        file.set_len(len).unwrap();
        if seal {
            nix::fcntl::fcntl(
                file.as_raw_fd(),
                nix::fcntl::FcntlArg::F_ADD_SEALS(nix::fcntl::SealFlag::F_SEAL_SHRINK),
            )
            .unwrap();
        }
        OwnedFd::from(file)
    }

    #[test]
    fn only_sealed_buffers_of_sane_size_are_taken() {
        assert!(CopyBuffer::register(vec![memfd(8192, false)], 8192).is_err());
        assert!(CopyBuffer::register(vec![memfd(4096, true)], 8192).is_err());
        assert!(CopyBuffer::register(vec![], 8192).is_err());
        assert!(CopyBuffer::register(vec![memfd(8192, true), memfd(8192, true)], 8192).is_err());
        assert!(CopyBuffer::register(vec![memfd(8192, true)], 0).is_err());
        assert!(CopyBuffer::register(vec![memfd(8192, true)], MAX_COPY_BUFFER + 1).is_err());
        let b = CopyBuffer::register(vec![memfd(8192, true)], 8192).unwrap();
        assert!(b.range(0, 8192).is_some());
        assert!(b.range(4096, 4096).is_some());
        assert!(b.range(4097, 4096).is_none());
        assert!(b.range(u32::MAX, 2).is_none());
    }
}
