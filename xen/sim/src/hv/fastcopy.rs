//! Grant copies on the caller's thread (`crate::active`), the hypervisor's part: it hands out
//! copy slots and a granter's memory, grant table and active words, finishes end-access
//! deferred by a copy, and cleans up after a caller that closed its connection or was killed
//! mid-copy (its slots' records name the one grant each was working on).

use std::fs::File;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::MmapRaw;
use xen_abi::{DomId, GrantRef};

use super::domain::memfd;
use super::proto::Reply;
use super::{error, Answer, ConnId, State};
use crate::active::{self, COPY_SLOTS};

/// Copy slots one connection may hold (one per thread copying at the same time).
const SLOTS_PER_CONNECTION: usize = 8;

/// The process that holds a copy slot: its connection, and a pidfd that turns readable
/// when the process has exited.
pub(crate) struct SlotOwner {
    conn: ConnId,
    pidfd: OwnedFd,
}

/// The host's copy slots and their records.
#[derive(Default)]
pub(crate) struct CopySlots {
    owners: Vec<Option<SlotOwner>>,
    /// One word per slot (`active::record_value`), shared with the slots' holders.
    records: Option<(File, MmapRaw)>,
}

impl CopySlots {
    /// Whether lock holder `holder` is a slot whose process has exited (or a slot nobody
    /// owns any more): its lock is then taken over.
    pub(crate) fn abandoned(&self, holder: u32) -> bool {
        let Some(slot) = holder.checked_sub(1) else {
            return false;
        };
        if holder == active::HV_HOLDER {
            return false;
        }
        match self.owners.get(slot as usize) {
            Some(Some(owner)) => exited(&owner.pidfd),
            _ => true,
        }
    }

    fn record(&self, slot: u32) -> Option<&AtomicU64> {
        let (_, map) = self.records.as_ref()?;
        let at = slot as usize * 8;
        if at + 8 > map.len() {
            return None;
        }
        // SAFETY: inside the mapping (checked), 8-aligned (page-aligned mapping), alive as
        // long as `self`; holders write it concurrently, all accesses are atomic.
        Some(unsafe { AtomicU64::from_ptr(map.as_mut_ptr().add(at).cast::<u64>()) })
    }
}

/// Whether the process behind `pidfd` has exited.
fn exited(pidfd: &OwnedFd) -> bool {
    let mut fds = [nix::poll::PollFd::new(
        pidfd.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    matches!(nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO), Ok(n) if n > 0)
}

fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(std::io::Error::other)?;
    // SAFETY: `fd` is a descriptor the kernel just gave us and nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl State {
    /// `AcquireCopySlot`: a free slot for connection `conn`, with the records' descriptor.
    pub(crate) fn acquire_copy_slot(&mut self, conn: ConnId) -> Answer {
        let Some(stream) = self.conns.get(&conn).and_then(|c| c.stream.as_ref()) else {
            return error(libc::ENOTCONN, "connection is closed").into();
        };
        let pid = match nix::sys::socket::getsockopt(
            stream,
            nix::sys::socket::sockopt::PeerCredentials,
        ) {
            Ok(creds) => creds.pid(),
            Err(e) => return error(libc::EIO, format!("cannot identify the caller: {e}")).into(),
        };
        let slots = &mut self.copy_slots;
        if slots.owners.is_empty() {
            slots.owners = (0..COPY_SLOTS).map(|_| None).collect();
        }
        if slots.records.is_none() {
            match memfd("xen-sim-copy-slots", COPY_SLOTS as usize * 8) {
                Ok(records) => slots.records = Some(records),
                Err(e) => return error(libc::ENOMEM, format!("no copy slot records: {e}")).into(),
            }
        }
        let held = slots.owners.iter().flatten().filter(|o| o.conn == conn);
        if held.count() >= SLOTS_PER_CONNECTION {
            return error(libc::EBUSY, "this connection holds its most copy slots").into();
        }
        let Some(slot) = slots.owners.iter().position(Option::is_none) else {
            return error(libc::EBUSY, "every copy slot of the host is taken").into();
        };
        let (Some((file, _)), Some(record)) = (slots.records.as_ref(), slots.record(slot as u32))
        else {
            return error(libc::EIO, "copy slot records missing").into();
        };
        let fd = match (pidfd_open(pid), file.as_fd().try_clone_to_owned()) {
            (Ok(pidfd), Ok(fd)) => {
                record.store(0, Ordering::Release);
                if let Some(owner) = slots.owners.get_mut(slot) {
                    *owner = Some(SlotOwner { conn, pidfd });
                }
                fd
            }
            (Err(e), _) | (_, Err(e)) => {
                return error(libc::EIO, format!("cannot set up a copy slot: {e}")).into()
            }
        };
        Answer {
            reply: Reply::CopySlot { slot: slot as u32 },
            fds: vec![fd],
        }
    }

    /// `OpenGrantCopy`: domain `domid`'s memory, grant table and active words, for copies
    /// on the caller's thread.
    pub(crate) fn open_grant_copy(&self, domid: DomId) -> Answer {
        let Some(dom) = self.domains.get(&domid) else {
            return error(libc::ESRCH, format!("domain {domid} does not exist")).into();
        };
        let (Some((mem, _)), Some((gt, _)), Some((act, _))) =
            (&dom.memory, &dom.gnttab, &dom.active)
        else {
            return error(libc::ENODEV, format!("domain {domid} has no grant table")).into();
        };
        let fds: std::io::Result<Vec<OwnedFd>> = [mem, gt, act]
            .iter()
            .map(|f| f.as_fd().try_clone_to_owned())
            .collect();
        match fds {
            Ok(fds) => Answer {
                reply: Reply::GrantCopyDomain {
                    gnttab_entries: super::domain::GNTTAB_ENTRIES,
                },
                fds,
            },
            Err(e) => error(libc::EMFILE, format!("cannot share domain {domid}: {e}")).into(),
        }
    }

    /// Finishes a deferred end-access of grant `gref` once its last pin is gone
    /// (`FinishDeferredEnd`: a caller dropped it).
    pub(crate) fn finish_deferred_end(&mut self, granter: DomId, gref: GrantRef) -> Reply {
        let deferred = self
            .domains
            .get(&granter)
            .is_some_and(|d| d.deferred_end.contains(&gref));
        if deferred {
            self.end_one(granter, gref);
        }
        Reply::Ok
    }

    /// Frees the copy slots of connection `conn`, undoing whatever a slot's record says its
    /// holder was doing when it stopped (killed between pinning and unpinning, or holding the
    /// grant's lock: a freed slot's lock is taken over).
    pub(crate) fn release_copy_slots(&mut self, conn: ConnId) {
        let slots: Vec<u32> = (0..COPY_SLOTS)
            .filter(|&s| {
                matches!(self.copy_slots.owners.get(s as usize), Some(Some(o)) if o.conn == conn)
            })
            .collect();
        for slot in slots {
            let pending = self
                .copy_slots
                .record(slot)
                .and_then(|r| active::recorded(r.swap(0, Ordering::AcqRel)));
            if let Some(owner) = self.copy_slots.owners.get_mut(slot as usize) {
                *owner = None;
            }
            let Some((granter, gref)) = pending else {
                continue;
            };
            let unused = self.with_active_word(granter, gref, |_, entry, value| {
                let value = value & !active::slot_bits(slot, true);
                active::release_unheld(entry, value);
                (value, !active::reading_held(value))
            });
            if unused == Ok(true) {
                self.finish_deferred_end(granter, gref);
            }
        }
    }

    /// Marks a destroyed domain dead for callers that copy on their own threads.
    pub(crate) fn mark_dead(&self, domid: DomId) {
        if let Some(word) = self.domains.get(&domid).and_then(|d| d.status_word()) {
            word.fetch_or(active::DEAD, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pidfd_turns_readable_when_its_process_exits() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let fd = pidfd_open(child.id() as i32).unwrap();
        assert!(!exited(&fd));
        child.kill().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !exited(&fd) {
            assert!(std::time::Instant::now() < deadline, "pidfd never readable");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        child.wait().unwrap();
        // Our own process has not exited.
        assert!(!exited(&pidfd_open(std::process::id() as i32).unwrap()));
    }
}
