//! Grant operations, as Xen's `grant_table.c` performs them on v1 entries: map (pin with
//! `GTF_reading`/`GTF_writing`), unmap (unpin, clearing the bits at zero), copy, and the
//! granting side's allocate and end-access.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

use xen_abi::grant_table::{status, GTF_PERMIT_ACCESS, GTF_READONLY};
use xen_abi::{DomId, GrantRef, PAGE_SIZE};

use serde_bytes::ByteBuf;

use super::proto::{CopySegment, Reply};
use super::{error, Answer, ConnId, Domain, MapRecord, State};
use crate::active;

fn grant_failure(status: i16, gref: GrantRef) -> Reply {
    Reply::GrantStatus { status, gref }
}

impl State {
    /// Runs `change` on grant `gref` of `granter` with its active word locked by the
    /// hypervisor: `change` gets the domain, the entry's `{flags, domid}` word and the active
    /// word's value, and returns the value to store and a result. A lock held by a caller
    /// whose process has exited (or whose slot was freed) is taken over.
    pub(super) fn with_active_word<T>(
        &self,
        granter: DomId,
        gref: GrantRef,
        change: impl FnOnce(&Domain, &AtomicU32, u64) -> (u64, T),
    ) -> Result<T, i16> {
        let dom = self.domains.get(&granter).ok_or(status::BAD_DOMAIN)?;
        let (Some(entry), Some(word)) = (dom.grant_word(gref), dom.active_word(gref)) else {
            return Err(status::BAD_GNTREF);
        };
        let value = active::lock(word, active::HV_HOLDER, &mut |h| {
            self.copy_slots.abandoned(h)
        });
        let (value, result) = change(dom, entry, value);
        active::unlock(word, value);
        Ok(result)
    }

    /// Pins one grant of `granter` for `grantee`: checks the entry and sets the in-use bits with
    /// compare-and-swap, so a granter ending access concurrently sees it busy, and marks the
    /// hypervisor's pin in the grant's active word (under its lock, against callers copying on
    /// their own threads). Returns the frame.
    pub(super) fn pin(
        &mut self,
        granter: DomId,
        gref: GrantRef,
        grantee: DomId,
        writable: bool,
    ) -> Result<u32, i16> {
        let frame = self.with_active_word(granter, gref, |dom, entry, value| {
            match active::claim(entry, grantee, writable) {
                // The frame is read after the flags (the granter writes frame, then flags,
                // with a barrier between); it shares the entry's bounds, so it exists.
                Ok(()) => (
                    active::with_hv_pin(value, writable),
                    Ok(dom
                        .grant_frame(gref)
                        .map_or(u32::MAX, |f| f.load(Ordering::Acquire))),
                ),
                Err(refused) => (value, Err(refused)),
            }
        })??;
        let dom = self.domains.get_mut(&granter).ok_or(status::BAD_DOMAIN)?;
        let pin = dom.pins.entry(gref).ok_or(status::BAD_GNTREF)?;
        pin.readers += 1;
        if writable {
            pin.writers += 1;
        }
        if frame >= dom.mem_pages {
            self.unpin(granter, gref, writable);
            return Err(status::BAD_PAGE);
        }
        Ok(frame)
    }

    /// Drops one pin; clears `GTF_writing`/`GTF_reading` when nobody holds them any more, and
    /// finishes a deferred end-access.
    pub(super) fn unpin(&mut self, granter: DomId, gref: GrantRef, writable: bool) {
        let Some(pin) = self
            .domains
            .get_mut(&granter)
            .and_then(|d| d.pins.pinned(gref))
        else {
            return;
        };
        pin.readers = pin.readers.saturating_sub(1);
        if writable {
            pin.writers = pin.writers.saturating_sub(1);
        }
        let (readers, writers) = (pin.readers, pin.writers);
        let unused = self.with_active_word(granter, gref, |_, entry, value| {
            let value = active::with_hv_pins(value, readers, writers);
            active::release_unheld(entry, value);
            (value, !active::reading_held(value))
        });
        if unused == Ok(true) {
            self.finish_deferred_end(granter, gref);
        }
    }

    pub(crate) fn release_map(&mut self, _grantee: DomId, map: &MapRecord) {
        for &gref in &map.refs {
            self.unpin(map.granter, gref, map.writable);
        }
    }

    pub(crate) fn map_grants(
        &mut self,
        conn: ConnId,
        grantee: DomId,
        granter: DomId,
        refs: &[GrantRef],
        writable: bool,
    ) -> Answer {
        if refs.is_empty() || refs.len() > 1024 {
            return error(libc::EINVAL, "a map takes 1 to 1024 grant references").into();
        }
        let mut frames = Vec::with_capacity(refs.len());
        for &gref in refs {
            match self.pin(granter, gref, grantee, writable) {
                Ok(frame) => frames.push(frame),
                Err(st) => {
                    for &done in refs.iter().take(frames.len()) {
                        self.unpin(granter, done, writable);
                    }
                    return grant_failure(st, gref).into();
                }
            }
        }
        let handle = self.next_handle;
        self.next_handle += 1;
        let mut fds = Vec::new();
        let need_fd = self
            .conns
            .get(&conn)
            .is_some_and(|c| !c.fds_sent.contains(&(granter, writable)));
        if need_fd {
            match self.memory_fd(granter, writable) {
                Ok(fd) => fds.push(fd),
                Err(e) => {
                    for &gref in refs {
                        self.unpin(granter, gref, writable);
                    }
                    return error(
                        libc::EIO,
                        format!("cannot share memory of domain {granter}: {e}"),
                    )
                    .into();
                }
            }
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.fds_sent.insert((granter, writable));
            c.maps.insert(
                handle,
                MapRecord {
                    granter,
                    refs: refs.to_vec(),
                    writable,
                },
            );
        }
        Answer {
            reply: Reply::Mapped {
                handle,
                frames,
                fd_attached: need_fd,
            },
            fds,
        }
    }

    /// A descriptor for a domain's memory: read-write, or a read-only reopening so that even
    /// `mprotect` cannot make the mapping writable.
    fn memory_fd(&self, domid: DomId, writable: bool) -> std::io::Result<OwnedFd> {
        let dom = self
            .domains
            .get(&domid)
            .ok_or_else(|| std::io::Error::other("no such domain"))?;
        let (file, _) = dom
            .memory
            .as_ref()
            .ok_or_else(|| std::io::Error::other("domain has no memory"))?;
        if writable {
            return file.as_fd().try_clone_to_owned();
        }
        let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(file));
        Ok(std::fs::OpenOptions::new().read(true).open(path)?.into())
    }

    pub(crate) fn unmap_grants(&mut self, conn: ConnId, handle: u64) -> Reply {
        let Some(c) = self.conns.get_mut(&conn) else {
            return error(libc::ENOTCONN, "no connection");
        };
        let grantee = c.domid;
        match c.maps.remove(&handle) {
            Some(map) => {
                self.release_map(grantee, &map);
                Reply::Ok
            }
            None => grant_failure(status::BAD_HANDLE, 0),
        }
    }

    pub(crate) fn copy_grants(&mut self, grantee: DomId, segments: Vec<CopySegment>) -> Reply {
        if segments.len() > 4096 {
            return error(libc::EINVAL, "at most 4096 copy segments per batch");
        }
        let mut statuses = Vec::with_capacity(segments.len());
        let mut data = Vec::new();
        for seg in segments {
            let (domid, gref, offset, len, writing) = match &seg {
                CopySegment::FromGrant {
                    domid,
                    gref,
                    offset,
                    len,
                } => (*domid, *gref, *offset, usize::from(*len), false),
                CopySegment::ToGrant {
                    domid,
                    gref,
                    offset,
                    data,
                } => (*domid, *gref, *offset, data.len(), true),
            };
            let is_read = !writing;
            if usize::from(offset) + len > PAGE_SIZE {
                statuses.push(status::BAD_COPY_ARG);
                if is_read {
                    data.push(ByteBuf::new());
                }
                continue;
            }
            let frame = match self.pin(domid, gref, grantee, writing) {
                Ok(f) => f,
                Err(st) => {
                    statuses.push(st);
                    if is_read {
                        data.push(ByteBuf::new());
                    }
                    continue;
                }
            };
            let page = self.domains.get(&domid).and_then(|d| d.page(frame));
            match (page, seg) {
                (Some(page), CopySegment::FromGrant { .. }) => {
                    let mut buf = vec![0u8; len];
                    // SAFETY: offset + len <= PAGE_SIZE (checked) within a page of the mapped
                    // memfd; the granting domain may write concurrently, which can only yield
                    // arbitrary bytes in `buf` (u8 has no invalid values).
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            page.add(usize::from(offset)),
                            buf.as_mut_ptr(),
                            len,
                        )
                    };
                    data.push(ByteBuf::from(buf));
                    statuses.push(status::OKAY);
                }
                (Some(page), CopySegment::ToGrant { data: bytes, .. }) => {
                    // SAFETY: as above; we write within the granted page only.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            bytes.as_ptr(),
                            page.add(usize::from(offset)),
                            len,
                        )
                    };
                    statuses.push(status::OKAY);
                }
                (None, _) => {
                    statuses.push(status::BAD_PAGE);
                    if is_read {
                        data.push(ByteBuf::new());
                    }
                }
            }
            self.unpin(domid, gref, writing);
        }
        Reply::Copied {
            status: statuses,
            data,
        }
    }

    /// The granting guest's kernel: allocate pages and fill grant entries for them (frame and
    /// domid first, then the flags, with release ordering, as a guest must).
    pub(crate) fn grant_pages(
        &mut self,
        granter: DomId,
        remote: DomId,
        count: u32,
        writable: bool,
    ) -> Reply {
        let Some(dom) = self.domains.get_mut(&granter) else {
            return error(libc::ESRCH, "no such domain");
        };
        if count == 0
            || count as usize > dom.free_pages.len()
            || count as usize > dom.free_refs.len()
        {
            return error(
                libc::ENOMEM,
                format!("cannot grant {count} pages: the domain's memory or grant table is full"),
            );
        }
        let mut refs = Vec::with_capacity(count as usize);
        let mut frames = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let (Some(frame), Some(gref)) = (dom.free_pages.pop_first(), dom.free_refs.pop())
            else {
                break;
            };
            if let Some(page) = dom.page(frame) {
                // SAFETY: `page` is a whole page of the domain's mapped memory.
                unsafe { std::ptr::write_bytes(page, 0, PAGE_SIZE) };
            }
            if let (Some(f), Some(w)) = (dom.grant_frame(gref), dom.grant_word(gref)) {
                f.store(frame, Ordering::Relaxed);
                let flags = GTF_PERMIT_ACCESS | if writable { 0 } else { GTF_READONLY };
                w.store(
                    u32::from(flags) | (u32::from(remote) << 16),
                    Ordering::Release,
                );
            }
            dom.granted.insert(gref, frame);
            refs.push(gref);
            frames.push(frame);
        }
        Reply::Granted { refs, frames }
    }

    /// Ends access to one grant and frees its page; false (busy) while it is mapped or being
    /// copied, which defers it: it is finished when the last pin goes.
    pub(crate) fn end_one(&mut self, granter: DomId, gref: GrantRef) -> bool {
        let ended = self.with_active_word(granter, gref, |_, entry, value| {
            let ended = active::end_entry(entry);
            let value = if ended {
                value & !active::DEFERRED
            } else {
                value | active::DEFERRED
            };
            (value, ended)
        });
        let (Ok(ended), Some(dom)) = (ended, self.domains.get_mut(&granter)) else {
            return true;
        };
        if !ended {
            dom.deferred_end.insert(gref);
            return false;
        }
        dom.deferred_end.remove(&gref);
        if let Some(frame) = dom.granted.remove(&gref) {
            dom.free_pages.insert(frame);
            dom.free_refs.push(gref);
        }
        true
    }

    pub(crate) fn end_access(&mut self, granter: DomId, refs: &[GrantRef]) -> Reply {
        let mut deferred = Vec::new();
        for &gref in refs {
            let ours = self
                .domains
                .get(&granter)
                .is_some_and(|d| d.granted.contains_key(&gref));
            if !ours {
                return error(
                    libc::EINVAL,
                    format!("grant {gref} was not made through this host"),
                );
            }
            if !self.end_one(granter, gref) {
                deferred.push(gref);
            }
        }
        Reply::Ended { deferred }
    }

    pub(crate) fn own_memory(&self, domid: DomId) -> Answer {
        let Some(dom) = self.domains.get(&domid) else {
            return error(libc::ESRCH, "no such domain").into();
        };
        let (Some((mem, _)), Some((gt, _))) = (&dom.memory, &dom.gnttab) else {
            return error(libc::ENODEV, "dom0 has no simulated memory").into();
        };
        match (
            mem.as_fd().try_clone_to_owned(),
            gt.as_fd().try_clone_to_owned(),
        ) {
            (Ok(m), Ok(g)) => Answer {
                reply: Reply::Memory {
                    mem_pages: dom.mem_pages,
                    gnttab_entries: super::domain::GNTTAB_ENTRIES,
                },
                fds: vec![m, g],
            },
            _ => error(libc::EMFILE, "cannot duplicate memory descriptors").into(),
        }
    }
}
