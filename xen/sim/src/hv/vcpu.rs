//! A vCPU's trapped access, routed as Xen's `ioreq_server_select` and `hvm_send_ioreq` do.
//!
//! - Port 0xcf8 (4 bytes) is the PCI configuration address latch, kept by the hypervisor;
//!   ports 0xcfc–0xcff with the latch's enable bit become `IOREQ_TYPE_PCI_CONFIG` requests
//!   (`addr` = SBDF << 32 | register) for the server that claimed that SBDF.
//! - An MMIO access to a populated gfn is RAM: the hypervisor performs it.
//! - Otherwise the first enabled server whose range holds the whole access (all `count`
//!   repetitions for MMIO) gets it. Writes to legacy VGA memory (0xa0000–0xbffff) of a server
//!   with a buffered ring go there (two slots for 8 bytes) while the ring has room.
//! - A synchronous request is written into the vCPU's slot, marked READY after a release
//!   fence, and the vCPU's port is notified; the vCPU then waits for IORESP_READY (reading
//!   `data` for a read) and frees the slot. A server destroyed meanwhile completes the access
//!   with all-ones, as does an access nobody claimed.
//!
//! The simulated vCPU passes sizes and counts through as the guest issued them, so tests can
//! send the malformed requests a hostile guest can provoke.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use memmap2::MmapRaw;
use xen_abi::dm_op::{
    IoServId, XEN_DMOP_IO_RANGE_MEMORY, XEN_DMOP_IO_RANGE_PCI, XEN_DMOP_IO_RANGE_PORT,
};
use xen_abi::ioreq::{
    BufIoreq, Ioreq, IOREQ_BUFFER_SLOT_NUM, IOREQ_READ, IOREQ_STATE_BYTE_OFFSET, IOREQ_TYPE_COPY,
    IOREQ_TYPE_PCI_CONFIG, IOREQ_TYPE_PIO, IOREQ_WRITE, STATE_IOREQ_NONE, STATE_IOREQ_READY,
    STATE_IORESP_READY,
};
use xen_abi::{DomId, PAGE_SIZE};
use zerocopy::IntoBytes;

use super::hvm::IoreqServer;
use super::proto::{Access, Reply};
use super::{error, ConnId, Hypervisor, State};

/// How long a vCPU waits for its emulator before the access fails.
const EMULATOR_TIMEOUT: Duration = Duration::from_secs(30);
/// Legacy VGA memory, where writes may be buffered.
const VGA_MEMORY: std::ops::RangeInclusive<u64> = 0xa_0000..=0xb_ffff;

/// Pointer to vCPU `v`'s synchronous slot in `server`'s pages.
pub(crate) fn slot_ptr(server: &IoreqServer, v: usize) -> Option<*mut u8> {
    if v >= server.vcpu_ports.len() {
        return None;
    }
    let offset = PAGE_SIZE + v * std::mem::size_of::<Ioreq>();
    // SAFETY: the pages hold one buffered page and `sync_pages(vcpus)` slot pages, so
    // `offset + 32` lies inside the mapping for every v < vcpus.
    Some(unsafe { server.pages.1.as_mut_ptr().add(offset) })
}

/// All-ones of `size` bytes (as an unclaimed read returns).
fn all_ones(size: u32) -> u64 {
    match size {
        0 => 0,
        1..=7 => (1u64 << (size * 8)) - 1,
        _ => u64::MAX,
    }
}

/// What the hypervisor decided under its lock.
enum Route {
    Done(Reply),
    Sync(Pending),
}

/// A synchronous request to hand to an emulator and wait for.
struct Pending {
    target: DomId,
    id: IoServId,
    pages: Arc<(std::fs::File, MmapRaw)>,
    slot: usize,
    ioreq: Ioreq,
    /// The vCPU port's descriptors: `rx` fires when the emulator notifies, `tx` notifies it.
    rx: Arc<OwnedFd>,
    tx: Arc<OwnedFd>,
}

impl Hypervisor {
    /// Runs one access of HVM guest vCPU `access.vcpu` (connection `conn`).
    pub(crate) fn access(&self, conn: ConnId, access: &Access) -> Reply {
        let (domid, route) = {
            let mut st = self.lock();
            let Some(domid) = st.conns.get(&conn).map(|c| c.domid) else {
                return error(libc::ENOTCONN, "connection is closed");
            };
            match st.claim_vcpu(domid, access.vcpu) {
                Ok(()) => {}
                Err(reply) => return reply,
            }
            let route = st.route(domid, access);
            (domid, route)
        };
        let reply = match route {
            Route::Done(reply) => reply,
            Route::Sync(pending) => self.run_sync(&pending, access.size),
        };
        let mut st = self.lock();
        if let Some(busy) = st
            .domains
            .get_mut(&domid)
            .and_then(|d| d.hvm.as_mut())
            .and_then(|h| h.busy.get_mut(access.vcpu as usize))
        {
            *busy = false;
        }
        reply
    }

    fn run_sync(&self, p: &Pending, size: u32) -> Reply {
        // SAFETY: `slot_ptr` checked the slot lies inside `p.pages`, which this Arc keeps mapped.
        let slot = unsafe { p.pages.1.as_mut_ptr().add(PAGE_SIZE + p.slot * 32) };
        // SAFETY: the state byte of our slot, inside the mapping; only accessed atomically.
        let state = unsafe { AtomicU8::from_ptr(slot.add(IOREQ_STATE_BYTE_OFFSET)) };
        let mut ioreq = p.ioreq;
        ioreq.flags = Ioreq::pack_flags(
            STATE_IOREQ_NONE,
            ioreq.data_is_ptr(),
            ioreq.dir(),
            ioreq.df(),
        );
        let bytes = ioreq.as_bytes();
        for (i, b) in bytes.iter().enumerate() {
            if i == IOREQ_STATE_BYTE_OFFSET {
                continue;
            }
            // SAFETY: i < 32, inside our slot.
            unsafe { slot.add(i).write_volatile(*b) };
        }
        fence(Ordering::Release);
        state.store(
            Ioreq::pack_flags(
                STATE_IOREQ_READY,
                ioreq.data_is_ptr(),
                ioreq.dir(),
                ioreq.df(),
            ),
            Ordering::Release,
        );
        notify(&p.tx);
        let deadline = Instant::now() + EMULATOR_TIMEOUT;
        loop {
            if state.load(Ordering::Acquire) & 0x0f == STATE_IORESP_READY {
                // SAFETY: `data` at offset 8 of our slot, 8-aligned.
                let data = unsafe { slot.add(8).cast::<u64>().read_volatile() };
                state.store(STATE_IOREQ_NONE, Ordering::Release);
                let data = if p.ioreq.dir() == IOREQ_READ {
                    data & all_ones(size)
                } else {
                    0
                };
                return Reply::Accessed { data };
            }
            if !self.server_alive(p) {
                return Reply::Accessed {
                    data: all_ones(size),
                };
            }
            if Instant::now() >= deadline {
                return error(libc::ETIMEDOUT, "the emulator did not answer the access");
            }
            wait_readable(&p.rx, Duration::from_millis(100));
        }
    }

    fn server_alive(&self, p: &Pending) -> bool {
        self.lock()
            .domains
            .get(&p.target)
            .and_then(|d| d.hvm.as_ref())
            .and_then(|h| h.servers.get(&p.id))
            .is_some_and(|s| Arc::ptr_eq(&s.pages, &p.pages))
    }
}

impl State {
    fn claim_vcpu(&mut self, domid: DomId, vcpu: u32) -> Result<(), Reply> {
        let hvm = self
            .domains
            .get_mut(&domid)
            .and_then(|d| d.hvm.as_mut())
            .ok_or_else(|| error(libc::EOPNOTSUPP, "only an HVM guest has trapped accesses"))?;
        match hvm.busy.get_mut(vcpu as usize) {
            Some(true) => Err(error(
                libc::EBUSY,
                format!("vCPU {vcpu} already has an access in flight"),
            )),
            Some(b) => {
                *b = true;
                Ok(())
            }
            None => Err(error(libc::EINVAL, format!("the guest has no vCPU {vcpu}"))),
        }
    }

    fn route(&mut self, domid: DomId, a: &Access) -> Route {
        let Some(dom) = self.domains.get_mut(&domid) else {
            return Route::Done(error(libc::ESRCH, "no such domain"));
        };
        let Some(hvm) = dom.hvm.as_mut() else {
            return Route::Done(error(libc::EOPNOTSUPP, "not HVM"));
        };
        let dir = if a.write { IOREQ_WRITE } else { IOREQ_READ };
        let (type_, kind, addr, start, end) = if a.pio {
            let port = a.addr & 0xffff;
            if port == 0xcf8 && a.size == 4 && a.count == 1 && !a.data_is_ptr {
                if a.write {
                    hvm.cf8 = a.data as u32;
                }
                return Route::Done(Reply::Accessed {
                    data: if a.write { 0 } else { u64::from(hvm.cf8) },
                });
            }
            if (0xcfc..=0xcff).contains(&port) && hvm.cf8 & 0x8000_0000 != 0 {
                let sbdf = u64::from((hvm.cf8 >> 8) & 0xffff);
                let reg = u64::from(hvm.cf8 & 0xfc) | (port & 3);
                (
                    IOREQ_TYPE_PCI_CONFIG,
                    XEN_DMOP_IO_RANGE_PCI,
                    (sbdf << 32) | reg,
                    sbdf,
                    Some(sbdf),
                )
            } else {
                let end = port
                    .checked_add(u64::from(a.size))
                    .and_then(|e| e.checked_sub(1));
                (IOREQ_TYPE_PIO, XEN_DMOP_IO_RANGE_PORT, port, port, end)
            }
        } else {
            if !a.data_is_ptr && a.count == 1 && a.size <= 8 {
                if let Some(reply) = dom.ram_access(a) {
                    return Route::Done(reply);
                }
            }
            let Some(hvm) = dom.hvm.as_mut() else {
                return Route::Done(error(libc::EOPNOTSUPP, "not HVM"));
            };
            let span = u64::from(a.size).checked_mul(u64::from(a.count));
            let (start, end) = match span {
                Some(span) if a.df => (
                    a.addr.checked_sub(span.saturating_sub(u64::from(a.size))),
                    a.addr
                        .checked_add(u64::from(a.size))
                        .and_then(|e| e.checked_sub(1)),
                ),
                Some(span) => (
                    Some(a.addr),
                    a.addr.checked_add(span).and_then(|e| e.checked_sub(1)),
                ),
                None => (None, None),
            };
            let _ = hvm;
            (
                IOREQ_TYPE_COPY,
                XEN_DMOP_IO_RANGE_MEMORY,
                a.addr,
                start.unwrap_or(u64::MAX),
                end,
            )
        };
        let Some(hvm) = dom.hvm.as_mut() else {
            return Route::Done(error(libc::EOPNOTSUPP, "not HVM"));
        };
        let unclaimed = Route::Done(Reply::Accessed {
            data: if a.write { 0 } else { all_ones(a.size) },
        });
        let Some(end) = end else { return unclaimed };
        let Some((&id, server)) = hvm
            .servers
            .iter()
            .find(|(_, s)| s.enabled && s.claims(kind, start, end))
        else {
            return unclaimed;
        };
        let buffered_write = a.write
            && server.buffered
            && type_ == IOREQ_TYPE_COPY
            && a.count == 1
            && !a.data_is_ptr
            && matches!(a.size, 1 | 2 | 4 | 8)
            && VGA_MEMORY.contains(&a.addr);
        if buffered_write && push_buffered(server, a) {
            if let Some(port) = server.buf_port.and_then(|p| dom.ports.get(&p)) {
                notify(&port.tx);
            }
            return Route::Done(Reply::Accessed { data: 0 });
        }
        let Some(&vp_eport) = server.vcpu_ports.get(a.vcpu as usize) else {
            return unclaimed;
        };
        let Some(port) = dom.ports.get(&vp_eport) else {
            return unclaimed;
        };
        let pages = Arc::clone(&server.pages);
        Route::Sync(Pending {
            target: domid,
            id,
            pages,
            slot: a.vcpu as usize,
            ioreq: Ioreq {
                addr,
                data: if a.write || a.data_is_ptr { a.data } else { 0 },
                count: a.count,
                size: a.size,
                vp_eport,
                _pad0: 0,
                flags: Ioreq::pack_flags(STATE_IOREQ_NONE, a.data_is_ptr, dir, a.df),
                type_,
            },
            rx: Arc::clone(&port.rx),
            tx: Arc::clone(&port.tx),
        })
    }
}

impl super::domain::Domain {
    /// Performs an access to populated RAM; `None` if the address is not RAM.
    fn ram_access(&mut self, a: &Access) -> Option<Reply> {
        let hvm = self.hvm.as_ref()?;
        let len = a.size as usize;
        hvm.p2m.get(&(a.addr / PAGE_SIZE as u64))?;
        let mut bytes = a.data.to_le_bytes();
        for (i, b) in bytes.iter_mut().enumerate().take(len) {
            let gpa = a.addr + i as u64;
            let frame = *hvm.p2m.get(&(gpa / PAGE_SIZE as u64))?;
            let page = self.page(frame)?;
            // SAFETY: `page` is a whole page of the domain's memory; the offset is < PAGE_SIZE.
            let p = unsafe { page.add((gpa % PAGE_SIZE as u64) as usize) };
            if a.write {
                // SAFETY: as above; guest memory is shared, so volatile.
                unsafe { p.write_volatile(*b) };
            } else {
                // SAFETY: as above.
                *b = unsafe { p.read_volatile() };
            }
        }
        Some(Reply::Accessed {
            data: if a.write {
                0
            } else {
                u64::from_le_bytes(bytes) & all_ones(a.size)
            },
        })
    }
}

/// Puts a write on `server`'s buffered ring; false if the ring is full.
fn push_buffered(server: &IoreqServer, a: &Access) -> bool {
    let base = server.pages.1.as_mut_ptr();
    // SAFETY: page 0 of the server's pages is the buffered page: the read and write pointers
    // are its first two 4-aligned words, also addressable together as one 8-aligned u64.
    let (read, write, both) = unsafe {
        (
            AtomicU32::from_ptr(base.cast::<u32>()),
            AtomicU32::from_ptr(base.add(4).cast::<u32>()),
            AtomicU64::from_ptr(base.cast::<u64>()),
        )
    };
    let qw = a.size == 8;
    let slots = IOREQ_BUFFER_SLOT_NUM as u32;
    let rp = read.load(Ordering::Acquire);
    let wp = write.load(Ordering::Relaxed);
    if wp.wrapping_sub(rp) >= slots - u32::from(qw) {
        return false;
    }
    let size_log2 = a.size.trailing_zeros() as u8;
    let word = BufIoreq::pack(IOREQ_TYPE_COPY, IOREQ_WRITE, size_log2, a.addr as u32);
    let entries = [
        BufIoreq {
            word,
            data: a.data as u32,
        },
        BufIoreq {
            word,
            data: (a.data >> 32) as u32,
        },
    ];
    for (k, entry) in entries.iter().take(1 + usize::from(qw)).enumerate() {
        let index = (wp.wrapping_add(k as u32) % slots) as usize;
        // SAFETY: slot `index` < 511 lies at 8 + 8 * index < 4096 inside the buffered page.
        unsafe {
            base.add(8 + index * 8)
                .cast::<u64>()
                .write_volatile(u64::from(entry.word) | (u64::from(entry.data) << 32));
        }
    }
    fence(Ordering::Release);
    write.store(wp.wrapping_add(1 + u32::from(qw)), Ordering::Release);
    if server.atomic {
        // Keep both pointers small (Xen does this for BUFIOREQ_ATOMIC): subtract whole rings
        // once the reader is past one, in one 64-bit compare-and-swap.
        loop {
            let cur = both.load(Ordering::Acquire);
            let (r, w) = (cur as u32, (cur >> 32) as u32);
            if r < slots {
                break;
            }
            let new = u64::from(r - slots) | (u64::from(w.wrapping_sub(slots)) << 32);
            if both
                .compare_exchange(cur, new, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                break;
            }
        }
    }
    true
}

fn notify(fd: &OwnedFd) {
    let _ = nix::unistd::write(fd.as_fd(), &1u64.to_ne_bytes());
}

/// Waits until `fd` (an eventfd) is readable or `timeout` passes, and clears it.
fn wait_readable(fd: &OwnedFd, timeout: Duration) {
    let mut fds = [nix::poll::PollFd::new(
        fd.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)).is_ok_and(|n| n > 0) {
        let mut buf = [0u8; 8];
        let _ = nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(fd), &mut buf);
    }
}

impl Hypervisor {
    /// Writes raw bytes into a slot and waits for the emulator (robustness tests).
    pub(crate) fn inject_ioreq(
        &self,
        target: DomId,
        id: IoServId,
        vcpu: u32,
        raw: &[u8],
        wait_ms: u32,
    ) -> Reply {
        let Ok(raw) = <[u8; 32]>::try_from(raw) else {
            return error(libc::EINVAL, "an ioreq slot is 32 bytes");
        };
        let (pages, rx, tx) = {
            let st = self.lock();
            let Some(dom) = st.domains.get(&target) else {
                return error(libc::ESRCH, "no such domain");
            };
            let Some(server) = dom.hvm.as_ref().and_then(|h| h.servers.get(&id)) else {
                return error(libc::ENOENT, format!("no ioreq server {id}"));
            };
            let Some(port) = server
                .vcpu_ports
                .get(vcpu as usize)
                .and_then(|p| dom.ports.get(p))
            else {
                return error(libc::EINVAL, format!("no vCPU {vcpu}"));
            };
            (
                Arc::clone(&server.pages),
                Arc::clone(&port.rx),
                Arc::clone(&port.tx),
            )
        };
        // SAFETY: vcpu < vcpus (its port exists), so the slot lies inside the pages.
        let slot = unsafe { pages.1.as_mut_ptr().add(PAGE_SIZE + vcpu as usize * 32) };
        for (i, b) in raw.iter().enumerate() {
            if i != IOREQ_STATE_BYTE_OFFSET {
                // SAFETY: i < 32, inside the slot.
                unsafe { slot.add(i).write_volatile(*b) };
            }
        }
        fence(Ordering::Release);
        // SAFETY: the state byte of the slot; accessed atomically.
        let state = unsafe { AtomicU8::from_ptr(slot.add(IOREQ_STATE_BYTE_OFFSET)) };
        state.store(raw[IOREQ_STATE_BYTE_OFFSET], Ordering::Release);
        notify(&tx);
        let deadline = Instant::now() + Duration::from_millis(wait_ms.into());
        while Instant::now() < deadline {
            if state.load(Ordering::Acquire) & 0x0f == STATE_IORESP_READY {
                break;
            }
            wait_readable(&rx, Duration::from_millis(5));
        }
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: i < 32, inside the slot.
            *b = unsafe { slot.add(i).read_volatile() };
        }
        if state.load(Ordering::Acquire) & 0x0f == STATE_IORESP_READY {
            state.store(STATE_IOREQ_NONE, Ordering::Release);
        }
        Reply::Raw(serde_bytes::ByteBuf::from(out.to_vec()))
    }

    /// Writes raw buffered slots and pointers, then notifies (robustness tests).
    pub(crate) fn inject_buffered(
        &self,
        target: DomId,
        id: IoServId,
        slots: &[(u32, u64)],
        read_pointer: Option<u32>,
        write_pointer: u32,
    ) -> Reply {
        let st = self.lock();
        let Some(dom) = st.domains.get(&target) else {
            return error(libc::ESRCH, "no such domain");
        };
        let Some(server) = dom.hvm.as_ref().and_then(|h| h.servers.get(&id)) else {
            return error(libc::ENOENT, format!("no ioreq server {id}"));
        };
        let base = server.pages.1.as_mut_ptr();
        for &(index, value) in slots {
            let index = index as usize % IOREQ_BUFFER_SLOT_NUM;
            // SAFETY: slot index < 511: 8 + 8 * index < 4096, inside the buffered page.
            unsafe { base.add(8 + 8 * index).cast::<u64>().write_volatile(value) };
        }
        fence(Ordering::Release);
        // SAFETY: the pointer words at the start of the buffered page; accessed atomically.
        let (read, write) = unsafe {
            (
                AtomicU32::from_ptr(base.cast::<u32>()),
                AtomicU32::from_ptr(base.add(4).cast::<u32>()),
            )
        };
        if let Some(r) = read_pointer {
            read.store(r, Ordering::Release);
        }
        write.store(write_pointer, Ordering::Release);
        if let Some(port) = server.buf_port.and_then(|p| dom.ports.get(&p)) {
            notify(&port.tx);
        }
        Reply::Ok
    }
}
