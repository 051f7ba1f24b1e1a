//! Mapping a request's data pages: from the persistent-grant cache when the frontend
//! negotiated `feature-persistent`, else in one batched map per request.
//!
//! Grants a request needs that are not cached yet are mapped together in one batch (one
//! hypervisor operation); each page of the batch becomes a cache entry sharing the batch
//! mapping, which is unmapped when its last entry is evicted. When the batch does not fit, it
//! serves this request only, and the cache is purged as Linux blkback purges it: at most once
//! per [`PURGE_INTERVAL`], the least recently used idle tenth (or the excess, if larger). A
//! frontend that cycles through more grants than the cache holds (deep queues of large
//! requests) thus keeps hitting on the grants that stay cached, instead of evicting, on every
//! miss, exactly the grants it will need next.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use xen_abi::{DomId, GrantRef, PAGE_SIZE};
use xen_blkif::Segment;
use xen_grant::{GrantMapper, SharedMemory};

use crate::stats::QueueStats;

/// Most persistent grants one queue keeps mapped by default (Linux blkback's
/// `max_persistent_grants`: 32 slots of a one-page ring times 33 grants, which is what Linux
/// blkfront's defaults can have in flight).
pub const MAX_PERSISTENT_GRANTS: usize = 1056;

/// Least time between two purges of a full cache (Linux blkback's `LRU_INTERVAL`).
pub const PURGE_INTERVAL: Duration = Duration::from_millis(100);

struct Entry<M> {
    mapping: Arc<M>,
    page: usize,
    in_use: u32,
    last_used: u64,
}

impl<M: SharedMemory> Entry<M> {
    fn base(&self) -> *mut u8 {
        self.mapping.as_ptr().wrapping_add(self.page * PAGE_SIZE)
    }
}

/// What a request holds until its I/O completes.
pub(crate) enum Held<M> {
    /// A persistent grant (released back to the cache).
    Persistent(GrantRef),
    /// A mapping for this request only (unmapped when the last holder drops it).
    Mapped {
        /// Kept only to be dropped after the I/O.
        _mapping: Arc<M>,
    },
    /// A private bounce buffer the data is grant-copied through.
    Bounce {
        /// Kept until the I/O and the copy back are done.
        _buffer: xen_ring::HeapPages,
    },
}

/// A request's mapped data: one `iovec` per segment, and what keeps them mapped.
pub(crate) type MappedData<M> = (Vec<libc::iovec>, Vec<Held<M>>);

/// Per-queue grant mapping state.
pub(crate) struct GrantCache<G: GrantMapper> {
    mapper: Arc<G>,
    domid: DomId,
    persistent: bool,
    max: usize,
    entries: HashMap<GrantRef, Entry<G::Mapping>>,
    clock: u64,
    last_purge: Option<Instant>,
    stats: Arc<QueueStats>,
}

fn iovec(base: *mut u8, s: &Segment) -> libc::iovec {
    libc::iovec {
        iov_base: base.wrapping_add(s.offset()).cast(),
        iov_len: s.len(),
    }
}

impl<G: GrantMapper> GrantCache<G> {
    pub(crate) fn new(
        mapper: Arc<G>,
        domid: DomId,
        persistent: bool,
        max: usize,
        stats: Arc<QueueStats>,
    ) -> Self {
        Self {
            mapper,
            domid,
            persistent,
            max: max.max(1),
            entries: HashMap::new(),
            clock: 0,
            last_purge: None,
            stats,
        }
    }

    fn publish_size(&self) {
        self.stats
            .persistent_grants
            .store(self.entries.len() as u64, Ordering::Relaxed);
    }

    /// Whether `needed` more entries fit; when they do not and the last purge is
    /// [`PURGE_INTERVAL`] ago, evicts least-recently-used idle entries first.
    fn make_room(&mut self, needed: usize) -> bool {
        if self.entries.len() + needed <= self.max {
            return true;
        }
        let now = Instant::now();
        if self
            .last_purge
            .is_some_and(|t| now.duration_since(t) < PURGE_INTERVAL)
        {
            return false;
        }
        self.last_purge = Some(now);
        let mut idle: Vec<(u64, GrantRef)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.in_use == 0)
            .map(|(&g, e)| (e.last_used, g))
            .collect();
        idle.sort_unstable();
        // Purge at least a tenth at a time, as Linux does, so the cost is amortised.
        let excess = self.entries.len() + needed - self.max;
        for (_, gref) in idle.into_iter().take(excess.max(self.max / 10)) {
            self.entries.remove(&gref);
        }
        self.publish_size();
        self.entries.len() + needed <= self.max
    }

    /// Maps the pages of `segments` and returns one `iovec` per segment, plus what must be
    /// held until the I/O completes. A grant that fails to map fails the whole request.
    pub(crate) fn map(
        &mut self,
        segments: &[Segment],
        writable: bool,
    ) -> Result<MappedData<G::Mapping>, xen_grant::Error> {
        if !self.persistent {
            let refs: Vec<GrantRef> = segments.iter().map(|s| s.gref).collect();
            let mapping = self.mapper.map(self.domid, &refs, writable)?;
            self.stats
                .grants_mapped
                .fetch_add(refs.len() as u64, Ordering::Relaxed);
            let base = mapping.as_ptr();
            let iovecs = segments
                .iter()
                .enumerate()
                .map(|(i, s)| iovec(base.wrapping_add(i * PAGE_SIZE), s))
                .collect();
            return Ok((
                iovecs,
                vec![Held::Mapped {
                    _mapping: Arc::new(mapping),
                }],
            ));
        }
        // Persistent grants are mapped writable (blkif.h allows it for every direction).
        let mut misses: Vec<GrantRef> = Vec::new();
        let mut hits = 0u64;
        for s in segments {
            if self.entries.contains_key(&s.gref) {
                hits += 1;
            } else {
                misses.push(s.gref);
            }
        }
        // In reference order, each once: frontends grant pages in order, so this tends to put
        // consecutive frames next to each other, which the simulated host maps in one piece.
        misses.sort_unstable();
        misses.dedup();
        self.stats.grant_hits.fetch_add(hits, Ordering::Relaxed);
        let mut batch: Option<Arc<G::Mapping>> = None;
        if !misses.is_empty() {
            let mapping = Arc::new(self.mapper.map(self.domid, &misses, true)?);
            self.stats
                .grants_mapped
                .fetch_add(misses.len() as u64, Ordering::Relaxed);
            if self.make_room(misses.len()) {
                for (page, &gref) in misses.iter().enumerate() {
                    let entry = Entry {
                        mapping: Arc::clone(&mapping),
                        page,
                        in_use: 0,
                        last_used: 0,
                    };
                    self.entries.insert(gref, entry);
                }
                self.publish_size();
            } else {
                batch = Some(mapping);
            }
        }
        let mut iovecs = Vec::with_capacity(segments.len());
        let mut held = Vec::with_capacity(segments.len() + 1);
        for s in segments {
            self.clock += 1;
            if let Some(entry) = self.entries.get_mut(&s.gref) {
                entry.in_use += 1;
                entry.last_used = self.clock;
                iovecs.push(iovec(entry.base(), s));
                held.push(Held::Persistent(s.gref));
            } else if let (Some(m), Ok(page)) = (&batch, misses.binary_search(&s.gref)) {
                iovecs.push(iovec(m.as_ptr().wrapping_add(page * PAGE_SIZE), s));
            }
        }
        if let Some(m) = batch {
            held.push(Held::Mapped { _mapping: m });
        }
        Ok((iovecs, held))
    }

    /// The grant-copy data path (no mapping): a private buffer with one page per segment at the
    /// segment's offset; for a write, the guest's data is copied in now (one batch).
    pub(crate) fn bounce(
        &mut self,
        segments: &[Segment],
        write: bool,
    ) -> Result<MappedData<G::Mapping>, xen_grant::Error> {
        let buffer = xen_ring::HeapPages::new(segments.len());
        let base = buffer.as_ptr();
        let iovecs: Vec<libc::iovec> = segments
            .iter()
            .enumerate()
            .map(|(i, s)| iovec(base.wrapping_add(i * PAGE_SIZE), s))
            .collect();
        if write {
            self.copy(segments, &iovecs, false)?;
        }
        Ok((iovecs, vec![Held::Bounce { _buffer: buffer }]))
    }

    /// Grant-copies between the guest's segments and the bounce buffer `iovecs` point into:
    /// `to_guest` after a read, from the guest before a write.
    pub(crate) fn copy(
        &self,
        segments: &[Segment],
        iovecs: &[libc::iovec],
        to_guest: bool,
    ) -> Result<(), xen_grant::Error> {
        let mut ops = Vec::with_capacity(segments.len());
        for (s, v) in segments.iter().zip(iovecs) {
            let grant = xen_grant::GrantPtr {
                domid: self.domid,
                gref: s.gref,
                offset: s.offset() as u16,
            };
            // SAFETY: each iovec covers `len` bytes of a bounce buffer this queue owns and no
            // other reference to it exists during the copy.
            let local =
                unsafe { std::slice::from_raw_parts_mut(v.iov_base.cast::<u8>(), v.iov_len) };
            ops.push(if to_guest {
                xen_grant::CopyOp::ToGrant {
                    src: local,
                    dst: grant,
                }
            } else {
                xen_grant::CopyOp::FromGrant {
                    src: grant,
                    dst: local,
                }
            });
        }
        let mut status = vec![0i16; ops.len()];
        self.mapper.copy(&mut ops, &mut status)?;
        match status
            .iter()
            .zip(segments)
            .find(|(st, _)| **st != xen_abi::grant_table::status::OKAY)
        {
            Some((&st, s)) => Err(xen_grant::Error::Refused {
                op: "copy",
                domid: self.domid,
                gref: s.gref,
                status: st,
            }),
            None => Ok(()),
        }
    }

    /// Copies the contents of granted pages (indirect descriptor pages) into private memory.
    /// With persistent grants they come from the cache when the frontend granted them
    /// writable; otherwise (or if that fails) they are mapped read-only for this copy only.
    pub(crate) fn read_pages(&mut self, refs: &[GrantRef]) -> Result<Vec<u8>, xen_grant::Error> {
        let mut out = vec![0u8; refs.len() * PAGE_SIZE];
        let whole: Vec<Segment> = refs
            .iter()
            .map(|&gref| Segment {
                gref,
                first_sect: 0,
                last_sect: 7,
            })
            .collect();
        if self.persistent {
            if let Ok((iovecs, held)) = self.map(&whole, true) {
                for (iov, dst) in iovecs.iter().zip(out.chunks_mut(PAGE_SIZE)) {
                    // SAFETY: `iov` covers one whole mapped page held by `held` until after the
                    // copy; concurrent changes by the frontend only change our private copy,
                    // which is validated afterwards.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            iov.iov_base.cast::<u8>(),
                            dst.as_mut_ptr(),
                            dst.len(),
                        )
                    };
                }
                self.release(held);
                return Ok(out);
            }
        }
        let mapping = self.mapper.map(self.domid, refs, false)?;
        let len = out.len().min(mapping.len());
        // SAFETY: `len` bytes lie within the mapping, mapped until after the copy; see above.
        unsafe { std::ptr::copy_nonoverlapping(mapping.as_ptr(), out.as_mut_ptr(), len) };
        Ok(out)
    }

    /// Releases what a request held.
    pub(crate) fn release(&mut self, held: Vec<Held<G::Mapping>>) {
        for h in held {
            if let Held::Persistent(gref) = h {
                if let Some(e) = self.entries.get_mut(&gref) {
                    e.in_use = e.in_use.saturating_sub(1);
                }
            }
        }
    }

    /// Unmaps every persistent grant (at disconnect, once nothing is in flight).
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.publish_size();
    }
}

#[cfg(test)]
mod tests;
