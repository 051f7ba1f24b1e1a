//! Grant copies on the caller's thread, as Xen performs `GNTTABOP_copy` on the calling vCPU:
//! with a copy slot from the hypervisor, each segment is checked against the granter's grant
//! table, pinned in the grant's active word (`crate::active`, setting `GTF_reading` and
//! `GTF_writing` as the hypervisor does), copied, and unpinned, without a hypervisor round
//! trip. A copy that ends the last pin of a grant whose end-access was deferred asks the
//! hypervisor to finish it. Without a free slot, copies go through the hypervisor.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use memmap2::{MmapOptions, MmapRaw};
use xen_abi::grant_table::status;
use xen_abi::{DomId, GrantRef, PAGE_SIZE};
use xen_grant::CopyOp;

use super::HvConn;
use crate::active;
use crate::hv::proto::{Reply, Request};

/// A granting domain's memory, grant table and active words, mapped here.
struct Granter {
    memory_file: File,
    /// The memory as last mapped (remapped when a frame lies beyond it: memory can grow).
    memory: RwLock<Arc<MmapRaw>>,
    gnttab: MmapRaw,
    active: MmapRaw,
    entries: u32,
}

impl Granter {
    fn open(fds: Vec<OwnedFd>, entries: u32) -> std::io::Result<Self> {
        let [memory, gnttab, active] = <[OwnedFd; 3]>::try_from(fds)
            .map_err(|_| std::io::Error::other("three descriptors expected"))?;
        let memory_file = File::from(memory);
        let gnttab = MmapRaw::map_raw(&File::from(gnttab))?;
        let active = MmapRaw::map_raw(&File::from(active))?;
        let table_bytes = entries as usize * 8;
        if gnttab.len() < table_bytes || active.len() < table_bytes + 8 {
            return Err(std::io::Error::other("grant table shorter than announced"));
        }
        let memory = RwLock::new(Arc::new(MmapRaw::map_raw(&memory_file)?));
        Ok(Self {
            memory_file,
            memory,
            gnttab,
            active,
            entries,
        })
    }

    /// The `{flags, domid}` and `frame` words of entry `gref`, and its active word.
    fn entry(&self, gref: GrantRef) -> Option<(&AtomicU32, &AtomicU32, &AtomicU64)> {
        if gref >= self.entries {
            return None;
        }
        let at = gref as usize * 8;
        // SAFETY: gref < entries and both mappings hold at least `entries` 8-byte words
        // (checked in `open`); the mappings are page-aligned, so the words are aligned; they
        // live as long as `self`; the granter and the hypervisor change them concurrently and
        // every access is atomic.
        unsafe {
            let table = self.gnttab.as_mut_ptr().add(at);
            Some((
                AtomicU32::from_ptr(table.cast::<u32>()),
                AtomicU32::from_ptr(table.add(4).cast::<u32>()),
                AtomicU64::from_ptr(self.active.as_mut_ptr().add(at).cast::<u64>()),
            ))
        }
    }

    /// Whether the domain was destroyed.
    fn dead(&self) -> bool {
        let at = self.entries as usize * 8;
        // SAFETY: the status word follows the entries' words inside the mapping (checked in
        // `open`), aligned, written atomically by the hypervisor.
        let word = unsafe { AtomicU64::from_ptr(self.active.as_mut_ptr().add(at).cast::<u64>()) };
        word.load(Ordering::Acquire) & active::DEAD != 0
    }

    /// The memory as mapped now.
    fn memory(&self) -> Arc<MmapRaw> {
        Arc::clone(&*self.memory.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Page `frame` of the memory, if it has it, within `map` (a mapping of it a caller keeps
    /// for a batch), which is replaced by a new mapping if the memory grew past it.
    fn page(&self, map: &mut Arc<MmapRaw>, frame: u32) -> Option<*mut u8> {
        let at = frame as usize * PAGE_SIZE;
        if at + PAGE_SIZE > map.len() {
            // The domain may have grown since we mapped it.
            let grown = Arc::new(MmapOptions::new().map_raw(&self.memory_file).ok()?);
            *self.memory.write().unwrap_or_else(|e| e.into_inner()) = Arc::clone(&grown);
            *map = grown;
        }
        if at + PAGE_SIZE > map.len() {
            return None;
        }
        // SAFETY: the page lies inside the mapping (checked), which `map` keeps.
        Some(unsafe { map.as_mut_ptr().add(at) })
    }
}

/// One connection's state for copies on the caller's thread.
pub(crate) struct FastCopy {
    /// Our own domain: the grantee every entry must name.
    grantee: DomId,
    records: Mutex<Option<Arc<MmapRaw>>>,
    /// Our slots not in use now.
    free: Mutex<Vec<u32>>,
    /// The hypervisor had no slot for us: copy through it from now on.
    no_slots: AtomicBool,
    granters: Mutex<HashMap<DomId, Arc<Granter>>>,
}

/// A slot in use by this thread, returned to the connection's free list on drop.
struct SlotGuard<'a> {
    owner: &'a FastCopy,
    slot: u32,
    record: &'a AtomicU64,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.owner
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(self.slot);
    }
}

impl FastCopy {
    pub(crate) fn new(grantee: DomId) -> Self {
        Self {
            grantee,
            records: Mutex::new(None),
            free: Mutex::new(Vec::new()),
            no_slots: AtomicBool::new(false),
            granters: Mutex::new(HashMap::new()),
        }
    }

    /// Performs `ops` on this thread, their statuses in `status`; false (nothing done) if no
    /// copy slot could be had.
    pub(crate) fn copy(&self, conn: &HvConn, ops: &mut [CopyOp<'_>], status: &mut [i16]) -> bool {
        let Some(records) = self.records_map(conn) else {
            return false;
        };
        let Some(guard) = self.slot(conn, &records) else {
            return false;
        };
        let started = std::time::Instant::now();
        let mut moved = 0;
        // The granter of the previous segment and its memory (a batch mostly has one).
        let mut last: Option<(DomId, Arc<Granter>, Arc<MmapRaw>)> = None;
        for (op, result) in ops.iter_mut().zip(status.iter_mut()) {
            let domid = op.grant().domid;
            if usize::from(op.grant().offset) + op.len() > PAGE_SIZE {
                *result = status::BAD_COPY_ARG;
                continue;
            }
            let granter = match last.take() {
                Some((d, g, m)) if d == domid && !g.dead() => Ok((g, m)),
                _ => self.granter(conn, domid).map(|g| {
                    let m = g.memory();
                    (g, m)
                }),
            };
            *result = match granter {
                Ok((granter, mut memory)) => {
                    let r = self.copy_one(conn, &guard, &granter, &mut memory, op);
                    last = Some((domid, granter, memory));
                    r
                }
                Err(refused) => refused,
            };
            if *result == status::OKAY {
                moved += op.len();
            }
        }
        super::copybuf::count_copy_call(moved, started);
        true
    }

    fn records_map(&self, conn: &HvConn) -> Option<Arc<MmapRaw>> {
        if self.no_slots.load(Ordering::Relaxed) {
            return None;
        }
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(map) = records.as_ref() {
            return Some(Arc::clone(map));
        }
        // The first slot brings the records' descriptor.
        let slot = self.acquire(conn, &mut records)?;
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(slot);
        records.clone()
    }

    /// Asks the hypervisor for a slot (mapping the records if not yet done).
    fn acquire(&self, conn: &HvConn, records: &mut Option<Arc<MmapRaw>>) -> Option<u32> {
        let (slot, fds) = match conn.call(&Request::AcquireCopySlot) {
            Ok((Reply::CopySlot { slot }, fds)) => (slot, fds),
            _ => {
                // None at all: copy through the hypervisor from now on. Some: this call
                // does, while our other slots are busy.
                if records.is_none() {
                    self.no_slots.store(true, Ordering::Relaxed);
                }
                return None;
            }
        };
        if records.is_none() {
            let map = fds
                .into_iter()
                .next()
                .and_then(|fd| MmapRaw::map_raw(fd.as_raw_fd()).ok())
                .filter(|map| map.len() >= active::COPY_SLOTS as usize * 8);
            let Some(map) = map else {
                // Unusable records: do not ask again (the slot goes back when we close).
                self.no_slots.store(true, Ordering::Relaxed);
                return None;
            };
            *records = Some(Arc::new(map));
        }
        Some(slot)
    }

    fn slot<'a>(&'a self, conn: &HvConn, records: &'a MmapRaw) -> Option<SlotGuard<'a>> {
        let free = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let slot = match free {
            Some(slot) => slot,
            None => {
                let mut held = self.records.lock().unwrap_or_else(|e| e.into_inner());
                self.acquire(conn, &mut held)?
            }
        };
        if slot >= active::COPY_SLOTS {
            return None;
        }
        // SAFETY: slot < COPY_SLOTS and the records hold COPY_SLOTS words (checked when
        // mapped); aligned; kept alive by `records` for the guard's life; atomic accesses.
        let record =
            unsafe { AtomicU64::from_ptr(records.as_mut_ptr().add(slot as usize * 8).cast()) };
        Some(SlotGuard {
            owner: self,
            slot,
            record,
        })
    }

    /// The granter's tables, opened at first use; `Err(status)` if it has none.
    fn granter(&self, conn: &HvConn, domid: DomId) -> Result<Arc<Granter>, i16> {
        let mut granters = self.granters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(g) = granters.get(&domid) {
            if !g.dead() {
                return Ok(Arc::clone(g));
            }
            // Let a dead domain's memory go.
            granters.remove(&domid);
            return Err(status::BAD_DOMAIN);
        }
        match conn.call(&Request::OpenGrantCopy { domid }) {
            Ok((Reply::GrantCopyDomain { gnttab_entries }, fds)) => {
                let g = Arc::new(
                    Granter::open(fds, gnttab_entries).map_err(|_| status::GENERAL_ERROR)?,
                );
                granters.insert(domid, Arc::clone(&g));
                Ok(g)
            }
            Err(super::Error::Refused { errno, .. }) if errno == libc::ENODEV => {
                Err(status::BAD_GNTREF)
            }
            _ => Err(status::BAD_DOMAIN),
        }
    }

    /// One segment, whose offset and length `copy` checked to lie within a page.
    fn copy_one(
        &self,
        conn: &HvConn,
        guard: &SlotGuard<'_>,
        granter: &Granter,
        memory: &mut Arc<MmapRaw>,
        op: &mut CopyOp<'_>,
    ) -> i16 {
        let g = op.grant();
        let len = op.len();
        let writing = matches!(op, CopyOp::ToGrant { .. });
        let pin = match self.pin(guard, granter, g.domid, g.gref, writing) {
            Ok(pin) => pin,
            Err(refused) => return refused,
        };
        let result = match granter.page(memory, pin.frame) {
            Some(page) => {
                let remote = page.wrapping_add(usize::from(g.offset));
                // SAFETY: `remote..remote + len` lies within one page of the granter's memory
                // (offset + len <= PAGE_SIZE, checked by `copy`), kept mapped by `memory`; the local
                // side is the caller's slice of exactly `len` bytes. The granter may write
                // its page concurrently, which can only yield arbitrary bytes.
                unsafe {
                    match op {
                        CopyOp::FromGrant { dst, .. } => {
                            std::ptr::copy(remote.cast_const(), dst.as_mut_ptr(), len)
                        }
                        CopyOp::ToGrant { src, .. } => std::ptr::copy(src.as_ptr(), remote, len),
                    }
                }
                status::OKAY
            }
            None => status::BAD_PAGE,
        };
        self.unpin(conn, guard, pin);
        result
    }

    /// Checks grant `gref` of `domid` for a copy by `guard`'s slot and pins it.
    fn pin<'g>(
        &self,
        guard: &SlotGuard<'_>,
        granter: &'g Granter,
        domid: DomId,
        gref: GrantRef,
        writing: bool,
    ) -> Result<Pin<'g>, i16> {
        let (entry, frame, word) = granter.entry(gref).ok_or(status::BAD_GNTREF)?;
        let holder = active::slot_holder(guard.slot);
        let bits = active::slot_bits(guard.slot, writing);
        // Recorded before the lock is taken, cleared after it is released for the last time
        // (in `unpin`): if we die anywhere between, the hypervisor undoes what we did.
        guard
            .record
            .store(active::record_value(domid, gref), Ordering::Release);
        let value = active::lock(word, holder, &mut |_| false);
        if let Err(refused) = active::claim(entry, self.grantee, writing) {
            active::unlock(word, value);
            guard.record.store(0, Ordering::Release);
            return Err(refused);
        }
        active::unlock(word, value | bits);
        Ok(Pin {
            domid,
            gref,
            entry,
            word,
            bits,
            // Read after the flags (the granter writes frame, then flags).
            frame: frame.load(Ordering::Acquire),
        })
    }

    /// Drops `pin`; asks the hypervisor to finish a deferred end-access it was the last
    /// holder of.
    fn unpin(&self, conn: &HvConn, guard: &SlotGuard<'_>, pin: Pin<'_>) {
        let holder = active::slot_holder(guard.slot);
        let value = active::lock(pin.word, holder, &mut |_| false) & !pin.bits;
        active::release_unheld(pin.entry, value);
        active::unlock(pin.word, value);
        guard.record.store(0, Ordering::Release);
        if value & active::DEFERRED != 0 && !active::reading_held(value) {
            let _ = conn.call(&Request::FinishDeferredEnd {
                domid: pin.domid,
                gref: pin.gref,
            });
        }
    }
}

/// A grant pinned by one of our slots.
struct Pin<'g> {
    domid: DomId,
    gref: GrantRef,
    entry: &'g AtomicU32,
    word: &'g AtomicU64,
    bits: u64,
    frame: u32,
}

#[cfg(test)]
mod tests;
