//! Mapping a request's data pages: from the persistent-grant cache when the frontend
//! negotiated `feature-persistent`, else in one batched map per request.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use xen_abi::{DomId, GrantRef, PAGE_SIZE};
use xen_blkif::Segment;
use xen_grant::{GrantMapper, SharedMemory};

use crate::stats::QueueStats;

/// Most persistent grants one queue keeps mapped (Linux blkback's `max_persistent_grants`).
pub const MAX_PERSISTENT_GRANTS: usize = 1056;

struct Entry<M> {
    mapping: M,
    in_use: u32,
    last_used: u64,
}

/// What a request holds until its I/O completes.
pub(crate) enum Held<M> {
    /// A persistent grant (released back to the cache).
    Persistent(GrantRef),
    /// A one-shot mapping (unmapped when dropped).
    Mapped(M),
}

/// A request's mapped data: one `iovec` per segment, and what keeps them mapped.
pub(crate) type MappedData<M> = (Vec<libc::iovec>, Vec<Held<M>>);

/// Per-queue grant mapping state.
pub(crate) struct GrantCache<G: GrantMapper> {
    mapper: Arc<G>,
    domid: DomId,
    persistent: bool,
    entries: HashMap<GrantRef, Entry<G::Mapping>>,
    clock: u64,
    stats: Arc<QueueStats>,
}

impl<G: GrantMapper> GrantCache<G> {
    pub(crate) fn new(
        mapper: Arc<G>,
        domid: DomId,
        persistent: bool,
        stats: Arc<QueueStats>,
    ) -> Self {
        Self {
            mapper,
            domid,
            persistent,
            entries: HashMap::new(),
            clock: 0,
            stats,
        }
    }

    /// Evicts least-recently-used idle entries until there is room for one more.
    fn make_room(&mut self) -> bool {
        if self.entries.len() < MAX_PERSISTENT_GRANTS {
            return true;
        }
        let mut idle: Vec<(u64, GrantRef)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.in_use == 0)
            .map(|(&g, e)| (e.last_used, g))
            .collect();
        idle.sort_unstable();
        // Purge a tenth at a time, as Linux does, so the cost is amortised.
        for (_, gref) in idle.into_iter().take((MAX_PERSISTENT_GRANTS / 10).max(1)) {
            self.entries.remove(&gref);
        }
        self.stats
            .persistent_grants
            .store(self.entries.len() as u64, Ordering::Relaxed);
        self.entries.len() < MAX_PERSISTENT_GRANTS
    }

    /// Maps the pages of `segments` and returns one `iovec` per segment, plus what must be
    /// held until the I/O completes. A grant that fails to map fails the whole request.
    pub(crate) fn map(
        &mut self,
        segments: &[Segment],
        writable: bool,
    ) -> Result<MappedData<G::Mapping>, xen_grant::Error> {
        let mut iovecs = Vec::with_capacity(segments.len());
        let mut held = Vec::new();
        if !self.persistent {
            let refs: Vec<GrantRef> = segments.iter().map(|s| s.gref).collect();
            let mapping = self.mapper.map(self.domid, &refs, writable)?;
            let base = mapping.as_ptr();
            for (i, s) in segments.iter().enumerate() {
                let at = i * PAGE_SIZE + s.offset();
                iovecs.push(libc::iovec {
                    iov_base: base.wrapping_add(at).cast(),
                    iov_len: s.len(),
                });
            }
            held.push(Held::Mapped(mapping));
            return Ok((iovecs, held));
        }
        for s in segments {
            self.clock += 1;
            if let Some(entry) = self.entries.get_mut(&s.gref) {
                entry.in_use += 1;
                entry.last_used = self.clock;
                let base = entry.mapping.as_ptr();
                iovecs.push(libc::iovec {
                    iov_base: base.wrapping_add(s.offset()).cast(),
                    iov_len: s.len(),
                });
                held.push(Held::Persistent(s.gref));
                continue;
            }
            // Persistent grants are mapped writable (blkif.h allows it for every direction).
            let mapping = match self.mapper.map(self.domid, &[s.gref], true) {
                Ok(m) => m,
                Err(e) => {
                    self.release(held);
                    return Err(e);
                }
            };
            let base = mapping.as_ptr();
            iovecs.push(libc::iovec {
                iov_base: base.wrapping_add(s.offset()).cast(),
                iov_len: s.len(),
            });
            if self.make_room() {
                self.entries.insert(
                    s.gref,
                    Entry {
                        mapping,
                        in_use: 1,
                        last_used: self.clock,
                    },
                );
                self.stats
                    .persistent_grants
                    .store(self.entries.len() as u64, Ordering::Relaxed);
                held.push(Held::Persistent(s.gref));
            } else {
                // The cache is full of grants in use: this one is mapped for this request only.
                held.push(Held::Mapped(mapping));
            }
        }
        Ok((iovecs, held))
    }

    /// Copies the contents of granted pages (indirect descriptor pages) into private memory.
    /// They are mapped read-only for this copy only, whatever was negotiated: a frontend may
    /// grant them read-only even with persistent grants.
    pub(crate) fn read_pages(&mut self, refs: &[GrantRef]) -> Result<Vec<u8>, xen_grant::Error> {
        let mapping = self.mapper.map(self.domid, refs, false)?;
        let mut out = vec![0u8; refs.len() * PAGE_SIZE];
        let len = out.len().min(mapping.len());
        // SAFETY: `len` bytes lie within the mapping, which stays mapped until after the copy;
        // the frontend may change the pages concurrently, which only changes the bytes of our
        // private copy, validated afterwards.
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
        self.stats.persistent_grants.store(0, Ordering::Relaxed);
    }
}
