//! The ioreq server: set up as QEMU and DEMU do (create the server, with an atomic buffered
//! ring or without one, map its pages by resource mapping, enable it, which makes Xen write each vCPU's port
//! into its slot, bind one event channel per vCPU and the ring's, then claim the device's PCI
//! function, ports and MMIO, and deprivilege), then serve.
//!
//! Each request is handled from a private copy: the state byte is read once (acquire), the
//! 32-byte slot is copied once, and only the copy is checked (type, size, count, address
//! against what we claimed, `data_is_ptr` bounds) and dispatched. Anything malformed
//! completes as a read of all-ones or an ignored write; the server never stops for it. A
//! port ↔ slot mapping is fixed at setup: an event on vCPU n's port only ever looks at slot n.

use std::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use xen_abi::dm_op::{pci_sbdf, IoServId};
use xen_abi::ioreq::{
    BufIoreq, Ioreq, IOREQS_PER_PAGE, IOREQ_BUFFER_SLOT_NUM, IOREQ_READ, IOREQ_STATE_BYTE_OFFSET,
    IOREQ_TYPE_COPY, IOREQ_TYPE_INVALIDATE, IOREQ_TYPE_PCI_CONFIG, IOREQ_TYPE_PIO,
    IOREQ_TYPE_TIMEOFFSET, STATE_IOREQ_INPROCESS, STATE_IOREQ_READY, STATE_IORESP_READY,
};
use xen_abi::{DomId, Port, PAGE_SIZE};
use xen_devicemodel::{BufIoreq as BufMode, DeviceModel, IoRange, IoRangeKind};
use xen_evtchn::EventChannel;
use xen_ring::SharedMemory;
use zerocopy::FromBytes;

/// Most bytes one request may move through guest memory (`data_is_ptr` × `count`).
pub const MAX_REP_BYTES: u64 = 64 * 1024;
/// Most repetitions of a request without `data_is_ptr`.
pub const MAX_REP_COUNT: u32 = 4096;

/// Errors of setting up or tearing down a server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A device-model operation failed.
    #[error(transparent)]
    DeviceModel(#[from] xen_devicemodel::Error),
    /// An event-channel operation failed.
    #[error(transparent)]
    Evtchn(#[from] xen_evtchn::Error),
    /// The guest has an impossible shape.
    #[error("{0}")]
    Setup(String),
}

/// What a request touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// I/O ports.
    Port,
    /// MMIO.
    Memory,
    /// PCI configuration space (`addr` is the register).
    PciConfig,
}

/// One validated access, element by element (rep requests are split).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// What it touches.
    pub space: Space,
    /// Port, guest-physical address or configuration register.
    pub addr: u64,
    /// 1, 2, 4 or 8.
    pub size: u32,
    /// The value of a write.
    pub value: u64,
}

/// An emulated device: what the server dispatches to.
pub trait Device: Send {
    /// The PCI function (segment 0) the device answers configuration cycles for.
    fn bdf(&self) -> u16;
    /// The port and MMIO ranges it decodes now (changes as the guest programs its BARs).
    fn claims(&self) -> Vec<IoRange>;
    /// A read; the value is masked to the access size by the caller.
    fn read(&mut self, access: &Access) -> u64;
    /// A write.
    fn write(&mut self, access: &Access);
    /// Background work between requests (a 2D engine feeding its renderer); returns whether
    /// work is still waiting, so the caller comes back soon.
    fn service(&mut self) -> bool {
        false
    }
    /// Xen's `INVALIDATE`: the guest's memory map changed (it gave memory back), so mappings
    /// of its memory kept from earlier (a command ring) must be made afresh before next use.
    fn invalidate_mappings(&mut self) {}
}

/// Counters of one server.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Synchronous requests answered.
    pub requests: u64,
    /// Buffered writes handled.
    pub buffered: u64,
    /// Requests refused as malformed (answered all-ones or ignored).
    pub malformed: u64,
}

/// A running ioreq server for one device of one guest.
pub struct Server<D: DeviceModel, E: EventChannel, V: Device> {
    dm: Arc<D>,
    evtchn: E,
    id: IoServId,
    target: DomId,
    pages: D::IoreqPages,
    /// Where the synchronous slots start in `pages` (after the buffered page, if mapped).
    sync_base: usize,
    /// Local port → vCPU, fixed at setup.
    vcpu_of: Vec<(Port, usize)>,
    vcpus: usize,
    buf_port: Option<Port>,
    claimed: Vec<IoRange>,
    device: V,
    counters: Counters,
}

fn all_ones(size: u32) -> u64 {
    match size {
        1..=7 => (1u64 << (size * 8)) - 1,
        _ => u64::MAX,
    }
}

impl<D: DeviceModel, E: EventChannel, V: Device> Server<D, E, V> {
    /// Creates the server for guest `target`, claims `device`'s ranges and enables it. With
    /// `buffered`, Xen may queue writes to buffered ranges (VGA memory) on the buffered ring
    /// (atomic pointer updates); without, every access is a synchronous ioreq.
    pub fn start(
        dm: Arc<D>,
        evtchn: E,
        target: DomId,
        device: V,
        buffered: bool,
    ) -> Result<Self, Error> {
        let mode = if buffered {
            BufMode::Atomic
        } else {
            BufMode::Off
        };
        let id = dm.create_ioreq_server(mode)?;
        match Self::setup(Arc::clone(&dm), evtchn, target, id, device, buffered) {
            Ok(server) => Ok(server),
            Err(e) => {
                let _ = dm.destroy_ioreq_server(id);
                Err(e)
            }
        }
    }

    fn setup(
        dm: Arc<D>,
        evtchn: E,
        target: DomId,
        id: IoServId,
        device: V,
        buffered: bool,
    ) -> Result<Self, Error> {
        let vcpus = dm.nr_vcpus()? as usize;
        if vcpus == 0 || vcpus > 4096 {
            return Err(Error::Setup(format!("the guest reports {vcpus} vCPUs")));
        }
        let sync_pages = vcpus.div_ceil(IOREQS_PER_PAGE) as u32;
        let pages = dm.map_ioreq_pages(id, buffered, sync_pages)?;
        let sync_base = if buffered { PAGE_SIZE } else { 0 };
        if pages.len() < sync_base + PAGE_SIZE * sync_pages as usize {
            return Err(Error::Setup("the ioreq pages are too small".into()));
        }
        let info = dm.ioreq_server_info(id)?;
        let mut server = Self {
            dm,
            evtchn,
            id,
            target,
            pages,
            sync_base,
            vcpu_of: Vec::with_capacity(vcpus),
            vcpus,
            buf_port: None,
            claimed: Vec::new(),
            device,
            counters: Counters::default(),
        };
        // Xen writes each vCPU's port into its slot when the server is enabled; nothing is
        // routed to the server before it claims a range, so enable, bind, then claim.
        server.dm.set_ioreq_server_state(id, true)?;
        for v in 0..vcpus {
            let remote = server.slot(v).map(|s| s.vp_eport).unwrap_or(0);
            let local = server.evtchn.bind_interdomain(target, remote)?;
            server.vcpu_of.push((local, v));
        }
        if let Some(remote) = info.bufioreq_port.filter(|_| buffered) {
            server.buf_port = Some(server.evtchn.bind_interdomain(target, remote)?);
        }
        let bdf = u64::from(server.device.bdf());
        let sbdf = pci_sbdf(
            0,
            (bdf >> 8) as u32,
            ((bdf >> 3) & 0x1f) as u32,
            (bdf & 7) as u32,
        );
        server.dm.map_io_range(
            id,
            IoRange {
                kind: IoRangeKind::Pci,
                start: sbdf,
                end: sbdf,
            },
        )?;
        server.reclaim()?;
        Ok(server)
    }

    /// Restricts the device-model and event-channel handles to the target guest.
    pub fn deprivilege(&self) -> Result<(), Error> {
        self.dm.restrict()?;
        self.evtchn.restrict(self.target)?;
        Ok(())
    }

    /// The device.
    pub fn device(&self) -> &V {
        &self.device
    }

    /// The device, mutably.
    pub fn device_mut(&mut self) -> &mut V {
        &mut self.device
    }

    /// The counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The server id.
    pub fn id(&self) -> IoServId {
        self.id
    }

    /// Brings the claimed port and MMIO ranges in line with what the device decodes now.
    fn reclaim(&mut self) -> Result<(), Error> {
        let want = self.device.claims();
        for r in self.claimed.clone() {
            if !want.contains(&r) {
                self.dm.unmap_io_range(self.id, r)?;
                self.claimed.retain(|c| *c != r);
            }
        }
        for r in want {
            if !self.claimed.contains(&r) {
                self.dm.map_io_range(self.id, r)?;
                self.claimed.push(r);
            }
        }
        Ok(())
    }

    /// A copy of slot `v`.
    fn slot(&self, v: usize) -> Option<Ioreq> {
        if v >= self.vcpus {
            return None;
        }
        let offset = self.sync_base + v * 32;
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            // SAFETY: offset + 32 <= sync_base + sync_pages pages, checked at setup.
            *b = unsafe { self.pages.as_ptr().add(offset + i).read_volatile() };
        }
        Ioreq::read_from_bytes(&bytes).ok()
    }

    fn state_byte(&self, v: usize) -> Option<&AtomicU8> {
        if v >= self.vcpus {
            return None;
        }
        // SAFETY: inside slot v (checked above); the byte is shared with the hypervisor and
        // only accessed atomically.
        Some(unsafe {
            AtomicU8::from_ptr(
                self.pages
                    .as_ptr()
                    .add(self.sync_base + v * 32 + IOREQ_STATE_BYTE_OFFSET),
            )
        })
    }

    /// Waits up to `timeout` for events and handles them. Returns whether any arrived.
    pub fn poll_once(&mut self, timeout: Duration) -> Result<bool, Error> {
        let fd = self.evtchn.readiness_fd();
        // SAFETY: the event channel owns `fd` for as long as `self.evtchn` lives.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let mut fds = [nix::poll::PollFd::new(
            borrowed,
            nix::poll::PollFlags::POLLIN,
        )];
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms));
        let mut any = false;
        while let Some(port) = self.evtchn.pending()? {
            any = true;
            if Some(port) == self.buf_port {
                self.drain_buffered();
            } else if let Some(&(_, v)) = self.vcpu_of.iter().find(|(p, _)| *p == port) {
                self.handle_slot(v, port)?;
            }
            self.evtchn.unmask(port)?;
        }
        Ok(any)
    }

    fn handle_slot(&mut self, v: usize, port: Port) -> Result<(), Error> {
        let Some(state) = self.state_byte(v) else {
            return Ok(());
        };
        if state.load(Ordering::Acquire) & 0x0f != STATE_IOREQ_READY {
            return Ok(()); // a spurious or replayed event: nothing to do
        }
        let Some(req) = self.slot(v) else {
            return Ok(());
        };
        state.store(
            (req.flags & 0xf0) | STATE_IOREQ_INPROCESS,
            Ordering::Release,
        );
        let data = self.dispatch(&req);
        if req.dir() == IOREQ_READ && !req.data_is_ptr() {
            // SAFETY: `data` at offset 8 of slot v, inside the pages; 8-aligned.
            unsafe {
                self.pages
                    .as_ptr()
                    .add(self.sync_base + v * 32 + 8)
                    .cast::<u64>()
                    .write_volatile(data);
            }
        }
        fence(Ordering::Release);
        if let Some(state) = self.state_byte(v) {
            state.store((req.flags & 0xf0) | STATE_IORESP_READY, Ordering::Release);
        }
        self.counters.requests += 1;
        self.evtchn.notify(port)?;
        Ok(())
    }

    /// Performs a copied request; the value for a read.
    fn dispatch(&mut self, req: &Ioreq) -> u64 {
        let size = req.size;
        let fail = |s: &mut Self| {
            s.counters.malformed += 1;
            // The first few are logged in full; a guest can provoke them, so no more.
            if s.counters.malformed <= 32 {
                tracing::debug!(
                    target = s.target,
                    type_ = req.type_,
                    addr = format_args!("{:#x}", req.addr),
                    size = req.size,
                    count = req.count,
                    data_is_ptr = req.data_is_ptr(),
                    dir = req.dir(),
                    "request refused"
                );
            }
            all_ones(size)
        };
        // Xen broadcasts these to every server, with a count of 0: the guest's memory map
        // changed (as QEMU drops its map cache, the device drops what it keeps mapped), or its
        // clock moved (demu keeps no clock).
        if req.type_ == IOREQ_TYPE_INVALIDATE {
            self.device.invalidate_mappings();
            return 0;
        }
        if req.type_ == IOREQ_TYPE_TIMEOFFSET {
            return 0;
        }
        if !matches!(size, 1 | 2 | 4 | 8) || req.count == 0 {
            return fail(self);
        }
        let space = match req.type_ {
            IOREQ_TYPE_PIO => Space::Port,
            IOREQ_TYPE_COPY => Space::Memory,
            IOREQ_TYPE_PCI_CONFIG => Space::PciConfig,
            _ => return fail(self),
        };
        if space == Space::PciConfig {
            let sbdf = req.addr >> 32;
            let reg = req.addr & 0xffff_ffff;
            let bdf = u64::from(self.device.bdf());
            if sbdf != bdf || req.count != 1 || req.data_is_ptr() || size > 4 {
                return fail(self);
            }
            let access = Access {
                space,
                addr: reg,
                size,
                value: req.data,
            };
            return if req.dir() == IOREQ_READ {
                self.device.read(&access) & all_ones(size)
            } else {
                self.device.write(&access);
                // BARs and decoding may have moved.
                if let Err(e) = self.reclaim() {
                    tracing::warn!(target = self.target, "cannot follow the device's BARs: {e}");
                }
                0
            };
        }
        let kind = if space == Space::Port {
            IoRangeKind::Port
        } else {
            IoRangeKind::Memory
        };
        let step = if space == Space::Port {
            0
        } else {
            u64::from(size)
        };
        let span = step.checked_mul(u64::from(req.count - 1));
        let (low, high) = match span {
            Some(span) if req.df() => (req.addr.checked_sub(span), Some(req.addr)),
            Some(span) => (Some(req.addr), req.addr.checked_add(span)),
            None => (None, None),
        };
        let end = high.and_then(|h| h.checked_add(u64::from(size) - 1));
        let inside = match (low, end) {
            (Some(l), Some(e)) => self
                .claimed
                .iter()
                .any(|r| r.kind == kind && r.start <= l && e <= r.end),
            _ => false,
        };
        if !inside {
            return fail(self);
        }
        if req.data_is_ptr() {
            return self.rep_through_memory(req, space, step);
        }
        if req.count > MAX_REP_COUNT {
            return fail(self);
        }
        let mut value = 0;
        for i in 0..u64::from(req.count) {
            let addr = if req.df() {
                req.addr - i * step
            } else {
                req.addr + i * step
            };
            let access = Access {
                space,
                addr,
                size,
                value: req.data,
            };
            if req.dir() == IOREQ_READ {
                value = self.device.read(&access) & all_ones(size);
            } else {
                self.device.write(&access);
            }
        }
        value
    }

    /// A rep request whose data lives in guest memory at `req.data`.
    fn rep_through_memory(&mut self, req: &Ioreq, space: Space, step: u64) -> u64 {
        let size = u64::from(req.size);
        let bytes = size * u64::from(req.count);
        let start = if req.df() {
            req.data.checked_sub(bytes - size)
        } else {
            Some(req.data)
        };
        let Some(start) = start.filter(|_| bytes <= MAX_REP_BYTES) else {
            self.counters.malformed += 1;
            return 0;
        };
        let Some(end) = start.checked_add(bytes) else {
            self.counters.malformed += 1;
            return 0;
        };
        let first = start / PAGE_SIZE as u64;
        let gfns: Vec<u64> = (first..end.div_ceil(PAGE_SIZE as u64)).collect();
        let Ok(mem) = self.dm.map_foreign(&gfns, true) else {
            self.counters.malformed += 1;
            return 0;
        };
        let base = (start % PAGE_SIZE as u64) as usize;
        for i in 0..u64::from(req.count) {
            let addr = if req.df() {
                req.addr - i * step
            } else {
                req.addr + i * step
            };
            let at = if req.df() {
                base + (bytes - size - i * size) as usize
            } else {
                base + (i * size) as usize
            };
            if at + size as usize > mem.len() {
                break;
            }
            // SAFETY: `at + size <= mem.len()` (checked), inside the foreign mapping.
            let p = unsafe { mem.as_ptr().add(at) };
            if req.dir() == IOREQ_READ {
                let value = self.device.read(&Access {
                    space,
                    addr,
                    size: req.size,
                    value: 0,
                });
                for (k, b) in value.to_le_bytes().iter().take(size as usize).enumerate() {
                    // SAFETY: k < size, inside the checked element.
                    unsafe { p.add(k).write_volatile(*b) };
                }
            } else {
                let mut v = [0u8; 8];
                for (k, b) in v.iter_mut().take(size as usize).enumerate() {
                    // SAFETY: as above.
                    *b = unsafe { p.add(k).read_volatile() };
                }
                let value = u64::from_le_bytes(v);
                self.device.write(&Access {
                    space,
                    addr,
                    size: req.size,
                    value,
                });
            }
        }
        0
    }

    /// Handles every write queued on the buffered ring.
    fn drain_buffered(&mut self) {
        let base = self.pages.as_ptr();
        // SAFETY: page 0 is the buffered page: the read and write pointers are its first two
        // 4-aligned words, also one 8-aligned u64 that Xen updates with a compare-and-swap
        // when it takes whole rings off both.
        let (read, both) = unsafe {
            (
                AtomicU32::from_ptr(base.cast::<u32>()),
                AtomicU64::from_ptr(base.cast::<u64>()),
            )
        };
        let slots = IOREQ_BUFFER_SLOT_NUM as u32;
        let slot = |i: u32| -> BufIoreq {
            let index = (i % slots) as usize;
            // SAFETY: 8 + 8 * index < 4096, inside the buffered page, 8-aligned.
            let raw = unsafe { base.add(8 + 8 * index).cast::<u64>().read_volatile() };
            BufIoreq {
                word: raw as u32,
                data: (raw >> 32) as u32,
            }
        };
        // One consistent snapshot of both pointers; the slot index is taken modulo the ring,
        // which whole-ring subtractions by Xen do not change, and the read pointer only ever
        // moves by atomic addition (as QEMU does), so the two compose.
        let snapshot = both.load(Ordering::Acquire);
        let (mut rp, wp) = (snapshot as u32, (snapshot >> 32) as u32);
        if wp.wrapping_sub(rp) > slots {
            // Corrupt pointers: skip what is there rather than read stale slots.
            self.counters.malformed += 1;
            read.fetch_add(wp.wrapping_sub(rp), Ordering::AcqRel);
            return;
        }
        while rp != wp {
            let first = slot(rp);
            let size = first.size_bytes();
            let mut value = u64::from(first.data);
            let mut used = 1;
            if size == 8 {
                if rp.wrapping_add(1) == wp {
                    break; // the second half is not there yet
                }
                value |= u64::from(slot(rp.wrapping_add(1)).data) << 32;
                used = 2;
            }
            let space = match first.type_() {
                IOREQ_TYPE_COPY => Some(Space::Memory),
                IOREQ_TYPE_PIO => Some(Space::Port),
                _ => None,
            };
            match space {
                Some(space) if first.dir() != IOREQ_READ => {
                    let access = Access {
                        space,
                        addr: first.addr().into(),
                        size,
                        value,
                    };
                    let kind = if space == Space::Port {
                        IoRangeKind::Port
                    } else {
                        IoRangeKind::Memory
                    };
                    let end = access.addr + u64::from(size) - 1;
                    if self
                        .claimed
                        .iter()
                        .any(|r| r.kind == kind && r.start <= access.addr && end <= r.end)
                    {
                        self.device.write(&access);
                        self.counters.buffered += 1;
                    } else {
                        self.counters.malformed += 1;
                    }
                }
                _ => self.counters.malformed += 1,
            }
            rp = rp.wrapping_add(used);
            read.fetch_add(used, Ordering::AcqRel);
        }
    }

    /// Stops serving: disables and destroys the server, closes its ports.
    pub fn stop(self) {
        drop(self);
    }
}

impl<D: DeviceModel, E: EventChannel, V: Device> Drop for Server<D, E, V> {
    fn drop(&mut self) {
        let _ = self.dm.set_ioreq_server_state(self.id, false);
        let _ = self.dm.destroy_ioreq_server(self.id);
        for (port, _) in &self.vcpu_of {
            let _ = self.evtchn.unbind(*port);
        }
        if let Some(p) = self.buf_port {
            let _ = self.evtchn.unbind(p);
        }
    }
}
