//! Mapping pages of a domain's memory descriptor into this process, and the domain's own view
//! of its memory and grant table.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;

use xen_abi::grant_table::GrantEntryV1;
use xen_abi::{GrantRef, PAGE_SIZE};

use super::{Error, HvConn, Result};
use crate::hv::proto::{Reply, Request};

/// A contiguous mapping of pages, unmapped on drop.
pub(crate) struct Pages {
    pub(crate) ptr: NonNull<u8>,
    pub(crate) len: usize,
}

// SAFETY: a plain memory mapping owned by this value.
unsafe impl Send for Pages {}
// SAFETY: shared access goes through raw pointers with volatile/atomic discipline by users.
unsafe impl Sync for Pages {}

impl Drop for Pages {
    fn drop(&mut self) {
        // SAFETY: the mapping was created by `map_frames` with this length and is unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Maps `frames` of the memory behind `fd`, in order, into one contiguous range: the way
/// gntdev presents several grants as one mapping.
pub(crate) fn map_frames(fd: &OwnedFd, frames: &[u32], writable: bool) -> io::Result<Pages> {
    if frames.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no frames"));
    }
    let len = frames.len() * PAGE_SIZE;
    // SAFETY: reserves a fresh anonymous range; nothing else refers to it.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let pages = Pages {
        ptr: NonNull::new(base.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?,
        len,
    };
    let prot = if writable {
        libc::PROT_READ | libc::PROT_WRITE
    } else {
        libc::PROT_READ
    };
    // One mmap per run of consecutive frames (grants of consecutive pages are common).
    let mut i = 0;
    while let Some(&first) = frames.get(i) {
        let mut run = 1;
        while frames
            .get(i + run)
            .is_some_and(|&f| u64::from(f) == u64::from(first) + run as u64)
        {
            run += 1;
        }
        // SAFETY: replaces pages `i..i + run` of our own reserved range (MAP_FIXED within it)
        // with a shared mapping of the memfd at a page-aligned offset the hypervisor validated.
        let at = unsafe {
            libc::mmap(
                pages.ptr.as_ptr().add(i * PAGE_SIZE).cast(),
                run * PAGE_SIZE,
                prot,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd.as_raw_fd(),
                (first as usize * PAGE_SIZE) as libc::off_t,
            )
        };
        if at == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        i += run;
    }
    Ok(pages)
}

/// A domain's own memory and grant table, mapped read-write.
pub struct DomainMemory {
    memory: Pages,
    gnttab: Pages,
    mem_pages: u32,
    gnttab_entries: u32,
}

impl DomainMemory {
    pub(crate) fn open(conn: &HvConn) -> Result<Self> {
        let (reply, fds) = conn.call(&Request::OwnMemory)?;
        let Reply::Memory {
            mem_pages,
            gnttab_entries,
        } = reply
        else {
            return Err(Error::Protocol(format!("{reply:?}")));
        };
        let [mem_fd, gt_fd] = <[OwnedFd; 2]>::try_from(fds)
            .map_err(|_| Error::Protocol("memory descriptors missing".into()))?;
        let frames: Vec<u32> = (0..mem_pages).collect();
        let memory = map_frames(&mem_fd, &frames, true)?;
        let gt_frames: Vec<u32> =
            (0..(gnttab_entries as usize * 8).div_ceil(PAGE_SIZE) as u32).collect();
        let gnttab = map_frames(&gt_fd, &gt_frames, true)?;
        Ok(Self {
            memory,
            gnttab,
            mem_pages,
            gnttab_entries,
        })
    }

    /// Pages of memory.
    pub fn pages(&self) -> u32 {
        self.mem_pages
    }

    /// Grant-table entries.
    pub fn gnttab_entries(&self) -> u32 {
        self.gnttab_entries
    }

    /// Reads grant entry `gref`.
    pub fn grant_entry(&self, gref: GrantRef) -> Option<GrantEntryV1> {
        if gref >= self.gnttab_entries {
            return None;
        }
        // SAFETY: gref < entries, so the 8-byte entry lies inside the mapped table; a volatile
        // read because the hypervisor updates flags concurrently.
        Some(unsafe {
            std::ptr::read_volatile(
                self.gnttab
                    .ptr
                    .as_ptr()
                    .add(gref as usize * 8)
                    .cast::<GrantEntryV1>(),
            )
        })
    }

    /// Overwrites grant entry `gref` (frame, then domid and flags), as a guest's kernel would —
    /// or a hostile one.
    pub fn set_grant_entry(&self, gref: GrantRef, entry: GrantEntryV1) -> bool {
        if gref >= self.gnttab_entries {
            return false;
        }
        // SAFETY: in bounds as above; 4-aligned words of the mapped table.
        unsafe {
            let base = self.gnttab.ptr.as_ptr().add(gref as usize * 8);
            std::sync::atomic::AtomicU32::from_ptr(base.add(4).cast())
                .store(entry.frame, std::sync::atomic::Ordering::Relaxed);
            std::sync::atomic::AtomicU32::from_ptr(base.cast()).store(
                u32::from(entry.flags) | (u32::from(entry.domid) << 16),
                std::sync::atomic::Ordering::Release,
            );
        }
        true
    }

    /// Copies bytes out of our memory at byte address `addr`.
    pub fn read(&self, addr: usize, buf: &mut [u8]) -> bool {
        if addr
            .checked_add(buf.len())
            .is_none_or(|end| end > self.memory.len)
        {
            return false;
        }
        // SAFETY: the range is inside the mapping (checked above).
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.memory.ptr.as_ptr().add(addr),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        true
    }

    /// Writes bytes into our memory at byte address `addr`.
    pub fn write(&self, addr: usize, data: &[u8]) -> bool {
        if addr
            .checked_add(data.len())
            .is_none_or(|end| end > self.memory.len)
        {
            return false;
        }
        // SAFETY: the range is inside the writable mapping (checked above).
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.memory.ptr.as_ptr().add(addr),
                data.len(),
            )
        };
        true
    }
}
