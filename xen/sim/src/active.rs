//! Active grant words: the in-use state of every grant entry of a domain, in memory the
//! hypervisor shares with the processes that perform grant copies on their own threads (as Xen
//! performs a grant copy on the calling vCPU, with its active-entry lock and pin counts).
//!
//! One 64-bit word per grant reference, after which comes one status word for the domain
//! ([`DEAD`] once it is destroyed). A word holds:
//! - a read bit and a write bit per copy slot (a caller's thread copying the grant now;
//!   [`COPY_SLOTS`] host-wide, handed out by the hypervisor with a record of what each slot
//!   is working on, so that the slot of a killed caller can be cleaned up);
//! - whether the hypervisor maps the grant for reading and for writing (its own pin counts
//!   say how often);
//! - [`DEFERRED`]: the granter ended access while the grant was in use, the hypervisor frees
//!   it when the last pin goes;
//! - the holder of the word's lock (0 when free): every change to the word and to the
//!   entry's `GTF_reading`/`GTF_writing` happens under it, so the flags always say whether
//!   anybody holds the grant. A granter ends access by compare-and-swap on its entry (as a
//!   Linux guest does), which fails while either flag is set.
//!
//! A process that copies on its own thread is trusted to follow this protocol, as hypervisor
//! code on a vCPU is; every value it reads from a granter's table is still checked as Xen
//! checks it.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use xen_abi::grant_table::{
    status, GTF_PERMIT_ACCESS, GTF_READING, GTF_READONLY, GTF_TYPE_MASK, GTF_WRITING,
};
use xen_abi::DomId;

/// Copy slots on the host: callers' threads that may hold a copy pin at the same time.
pub(crate) const COPY_SLOTS: u32 = 28;
const READERS: u64 = (1 << COPY_SLOTS) - 1;
const WRITERS: u64 = READERS << COPY_SLOTS;
const HV_READ: u64 = 1 << 56;
const HV_WRITE: u64 = 1 << 57;
/// The granter ended access while the grant was in use.
pub(crate) const DEFERRED: u64 = 1 << 58;
const HOLDER_SHIFT: u32 = 59;
const HOLDER: u64 = 0x1f << HOLDER_SHIFT;
/// The hypervisor's holder id; copy slot `n` holds as `n + 1`.
pub(crate) const HV_HOLDER: u32 = 31;
/// The domain's status word: it was destroyed.
pub(crate) const DEAD: u64 = 1;
/// Spins on a held lock before yielding the CPU (it is held for a few atomic operations).
const SPINS: u32 = 64;

/// The holder id of copy slot `slot`.
pub(crate) fn slot_holder(slot: u32) -> u32 {
    slot + 1
}

/// The bits copy slot `slot` sets for a copy from (`writing` false) or to a grant.
pub(crate) fn slot_bits(slot: u32, writing: bool) -> u64 {
    let read = 1u64 << slot;
    if writing {
        read | read << COPY_SLOTS
    } else {
        read
    }
}

/// Takes the lock of `word` for `holder` and returns the word's value (without the holder).
/// While another holder has it, spins, then yields; `abandoned(h)` is asked from time to time
/// whether holder `h` died holding it, in which case the lock is taken over (the dead
/// holder's bits stay until its slot is cleaned up).
pub(crate) fn lock(word: &AtomicU64, holder: u32, abandoned: &mut dyn FnMut(u32) -> bool) -> u64 {
    let mine = u64::from(holder) << HOLDER_SHIFT;
    let mut waited = 0u32;
    loop {
        let current = word.load(Ordering::Acquire);
        let held_by = ((current & HOLDER) >> HOLDER_SHIFT) as u32;
        let free = held_by == 0 || (waited % SPINS == SPINS - 1 && abandoned(held_by));
        if free {
            let value = current & !HOLDER;
            if word
                .compare_exchange(current, value | mine, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return value;
            }
            continue;
        }
        waited = waited.wrapping_add(1);
        if waited < SPINS {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

/// Stores `value` and releases the lock.
pub(crate) fn unlock(word: &AtomicU64, value: u64) {
    word.store(value & !HOLDER, Ordering::Release);
}

/// Whether anybody holds the grant for reading (writers read too).
pub(crate) fn reading_held(value: u64) -> bool {
    value & (READERS | HV_READ) != 0
}

fn writing_held(value: u64) -> bool {
    value & (WRITERS | HV_WRITE) != 0
}

/// `value` with one more hypervisor map pin (for reading, and writing if `writing`).
pub(crate) fn with_hv_pin(value: u64, writing: bool) -> u64 {
    value | HV_READ | if writing { HV_WRITE } else { 0 }
}

/// `value` with the hypervisor's map pins as its counts say.
pub(crate) fn with_hv_pins(value: u64, readers: u32, writers: u32) -> u64 {
    let mut v = value & !(HV_READ | HV_WRITE);
    if readers > 0 {
        v |= HV_READ;
    }
    if writers > 0 {
        v |= HV_WRITE;
    }
    v
}

/// Clears `GTF_reading`/`GTF_writing` of `entry` where `value` says nobody holds them.
pub(crate) fn release_unheld(entry: &AtomicU32, value: u64) {
    let mut clear = 0u16;
    if !writing_held(value) {
        clear |= GTF_WRITING;
    }
    if !reading_held(value) {
        clear |= GTF_READING;
    }
    if clear != 0 {
        entry.fetch_and(!u32::from(clear), Ordering::AcqRel);
    }
}

/// Checks that `entry` (`{flags, domid}`) permits `grantee` access, write access if
/// `writing`, and marks it in use with compare-and-swap, so that a granter ending access
/// concurrently sees it busy. Call with the entry's word locked.
pub(crate) fn claim(entry: &AtomicU32, grantee: DomId, writing: bool) -> Result<(), i16> {
    let mut current = entry.load(Ordering::Acquire);
    loop {
        let flags = (current & 0xffff) as u16;
        let domid = (current >> 16) as u16;
        if flags & GTF_TYPE_MASK != GTF_PERMIT_ACCESS || domid != grantee {
            return Err(status::GENERAL_ERROR);
        }
        if writing && flags & GTF_READONLY != 0 {
            return Err(status::GENERAL_ERROR);
        }
        let set = GTF_READING | if writing { GTF_WRITING } else { 0 };
        match entry.compare_exchange(
            current,
            current | u32::from(set),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => return Ok(()),
            Err(seen) => current = seen,
        }
    }
}

/// Ends access to `entry` the way a granter does: compare-and-swap to invalid, refused
/// (`false`) while `GTF_reading` or `GTF_writing` is set.
pub(crate) fn end_entry(entry: &AtomicU32) -> bool {
    let mut current = entry.load(Ordering::Acquire);
    loop {
        if (current & 0xffff) as u16 & (GTF_READING | GTF_WRITING) != 0 {
            return false;
        }
        match entry.compare_exchange(current, 0, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return true,
            Err(seen) => current = seen,
        }
    }
}

/// A copy slot's record: the grant its thread works on (locking, pinned or unpinning), so
/// that the hypervisor can clean up after a caller killed at any point.
pub(crate) fn record_value(granter: DomId, gref: u32) -> u64 {
    (u64::from(granter) + 1) << 32 | u64::from(gref)
}

/// The grant a record names, if any.
pub(crate) fn recorded(value: u64) -> Option<(DomId, u32)> {
    let granter = (value >> 32).checked_sub(1)?;
    Some((DomId::try_from(granter).ok()?, value as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(flags: u16, domid: DomId) -> AtomicU32 {
        AtomicU32::new(u32::from(flags) | u32::from(domid) << 16)
    }

    #[test]
    fn claim_checks_the_entry_and_marks_it_in_use() {
        let e = entry(GTF_PERMIT_ACCESS, 7);
        assert_eq!(claim(&e, 8, false), Err(status::GENERAL_ERROR));
        claim(&e, 7, true).unwrap();
        assert_eq!(
            e.load(Ordering::Relaxed) as u16,
            GTF_PERMIT_ACCESS | GTF_READING | GTF_WRITING
        );
        let ro = entry(GTF_PERMIT_ACCESS | GTF_READONLY, 7);
        assert_eq!(claim(&ro, 7, true), Err(status::GENERAL_ERROR));
        claim(&ro, 7, false).unwrap();
        assert!(!end_entry(&ro), "a grant in use cannot be ended");
    }

    #[test]
    fn flags_are_released_only_when_nobody_holds_them() {
        let e = entry(GTF_PERMIT_ACCESS | GTF_READING | GTF_WRITING, 1);
        // Slot 3 writes, the hypervisor maps read-only: writing goes, reading stays.
        let v = with_hv_pins(slot_bits(3, true), 1, 0) & !slot_bits(3, true);
        release_unheld(&e, v);
        assert_eq!(
            e.load(Ordering::Relaxed) as u16,
            GTF_PERMIT_ACCESS | GTF_READING
        );
        release_unheld(&e, with_hv_pins(v, 0, 0));
        assert_eq!(e.load(Ordering::Relaxed) as u16, GTF_PERMIT_ACCESS);
        assert!(end_entry(&e));
        assert_eq!(e.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn lock_waits_for_its_holder_and_takes_over_an_abandoned_one() {
        let w = AtomicU64::new(DEFERRED);
        let v = lock(&w, slot_holder(0), &mut |_| false);
        assert_eq!(v, DEFERRED);
        // Held by slot 0, which is declared dead: the hypervisor takes over.
        let mut asked = Vec::new();
        let v = lock(&w, HV_HOLDER, &mut |h| {
            asked.push(h);
            true
        });
        assert_eq!((v, asked.first().copied()), (DEFERRED, Some(1)));
        unlock(&w, v | HV_READ);
        assert_eq!(w.load(Ordering::Relaxed), DEFERRED | HV_READ);
        // Two threads increment a count kept in the word under the lock.
        let w = std::sync::Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..2)
            .map(|slot| {
                let w = std::sync::Arc::clone(&w);
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        let v = lock(&w, slot_holder(slot), &mut |_| false);
                        unlock(&w, v + 1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(w.load(Ordering::Relaxed), 20_000);
    }

    #[test]
    fn records_round_trip() {
        assert_eq!(recorded(0), None);
        assert_eq!(recorded(record_value(0, 5)), Some((0, 5)));
        assert_eq!(recorded(record_value(0x7fef, 16383)), Some((0x7fef, 16383)));
    }
}
