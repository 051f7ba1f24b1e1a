//! HVM domains: a physical-to-machine map, ioreq servers and the device-model operations on
//! them (`XEN_DMOP_*`, resource mapping of ioreq pages, foreign mapping, `populate_physmap`,
//! MSI/INTx delivery), with Xen's privilege rule: only dom0 or the domain made the target's
//! device model (`XEN_DOMCTL_set_target`) may operate on it, and a handle restricted with
//! `IOCTL_PRIVCMD_RESTRICT` only on its one target.
//!
//! How a vCPU's access reaches a server is in `vcpu.rs`.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::os::fd::AsFd;
use std::sync::{Arc, Condvar, Mutex};

use memmap2::MmapRaw;
use xen_abi::dm_op::{
    IoServId, XEN_DMOP_IO_RANGE_MEMORY, XEN_DMOP_IO_RANGE_PCI, XEN_DMOP_IO_RANGE_PORT,
};
use xen_abi::{DomId, Port, PAGE_SIZE};

use super::domain::{memfd, PortKind, PortState};
use super::proto::{DmOp, Interrupt, Reply};
use super::{error, Answer, ConnId, State};

/// The owner recorded on ports the hypervisor itself holds (ioreq servers' vCPU ports).
pub(crate) const XEN_OWNED: ConnId = 0;
/// Ioreq servers one HVM domain may have (Xen's `MAX_NR_IOREQ_SERVERS`).
const MAX_SERVERS: usize = 8;
/// Ranges one server may claim (Xen's `MAX_NR_IO_RANGES`).
const MAX_RANGES_PER_SERVER: usize = 256;
/// Pages `populate_physmap` may add to one domain over its life.
const MAX_POPULATED_PAGES: u32 = 256 << 8; // 256 MiB
/// Interrupts queued for a guest that does not take them.
const MAX_PENDING_INTERRUPTS: usize = 4096;
/// Frames of the legacy VGA hole.
const VGA_HOLE: std::ops::RangeInclusive<u32> = 0xa0..=0xbf;
/// Highest gfn a guest may have (a 44-bit physical address space).
const MAX_GFN: u64 = (1 << 32) - 1;

/// An inclusive range of ports, addresses or SBDFs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Range {
    pub(crate) kind: u32,
    pub(crate) start: u64,
    pub(crate) end: u64,
}

/// One ioreq server.
pub(crate) struct IoreqServer {
    /// The emulating domain.
    pub(crate) emulator: DomId,
    pub(crate) enabled: bool,
    /// Page 0 is the buffered ring (present only with `buffered`), then the synchronous slots.
    pub(crate) pages: Arc<(File, MmapRaw)>,
    pub(crate) buffered: bool,
    /// Whether the ring's pointers are canonicalised atomically (`BUFIOREQ_ATOMIC`).
    pub(crate) atomic: bool,
    /// The guest-side port of each vCPU (`vp_eport`).
    pub(crate) vcpu_ports: Vec<Port>,
    pub(crate) buf_port: Option<Port>,
    pub(crate) ranges: Vec<Range>,
}

impl IoreqServer {
    /// Synchronous slot pages (128 vCPUs per page).
    pub(crate) fn sync_pages(vcpus: u32) -> usize {
        (vcpus as usize)
            .div_ceil(xen_abi::ioreq::IOREQS_PER_PAGE)
            .max(1)
    }

    /// Whether `[start, end]` of `kind` lies entirely inside one claimed range.
    pub(crate) fn claims(&self, kind: u32, start: u64, end: u64) -> bool {
        self.ranges
            .iter()
            .any(|r| r.kind == kind && r.start <= start && end <= r.end)
    }
}

/// Interrupts delivered to the guest, and a way to wait for them.
pub(crate) type InterruptQueue = Arc<(Mutex<VecDeque<Interrupt>>, Condvar)>;

/// What makes a domain HVM.
pub(crate) struct Hvm {
    pub(crate) vcpus: u32,
    /// gfn → frame of the domain's memory.
    pub(crate) p2m: BTreeMap<u64, u32>,
    pub(crate) populated: u32,
    pub(crate) servers: BTreeMap<IoServId, IoreqServer>,
    next_server: IoServId,
    /// The last value written to port 0xcf8 (PCI configuration address).
    pub(crate) cf8: u32,
    /// The domain allowed to act as this guest's device model.
    pub(crate) device_model: Option<DomId>,
    pub(crate) interrupts: InterruptQueue,
    /// vCPUs with an access in flight (one at a time each, as hardware).
    pub(crate) busy: Vec<bool>,
}

impl Hvm {
    pub(crate) fn new(vcpus: u32, mem_pages: u32) -> Self {
        Self {
            vcpus,
            // RAM at gfn = frame, except the legacy VGA hole (0xa0000–0xbffff), which is
            // MMIO in every HVM guest.
            p2m: (0..mem_pages)
                .filter(|f| !VGA_HOLE.contains(f))
                .map(|f| (u64::from(f), f))
                .collect(),
            populated: 0,
            servers: BTreeMap::new(),
            next_server: 0,
            cf8: 0,
            device_model: None,
            interrupts: Arc::new((Mutex::new(VecDeque::new()), Condvar::new())),
            busy: vec![false; vcpus as usize],
        }
    }

    fn deliver(&self, interrupt: Interrupt) {
        let (queue, ready) = &*self.interrupts;
        let mut q = queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if q.len() < MAX_PENDING_INTERRUPTS {
            q.push_back(interrupt);
            ready.notify_all();
        }
    }
}

fn range_kind_ok(kind: u32) -> bool {
    matches!(
        kind,
        XEN_DMOP_IO_RANGE_PORT | XEN_DMOP_IO_RANGE_MEMORY | XEN_DMOP_IO_RANGE_PCI
    )
}

impl State {
    /// Checks that connection `conn` (of `domid`) may operate on HVM guest `target`.
    fn may_emulate(&self, conn: ConnId, domid: DomId, target: DomId) -> Result<(), Reply> {
        if let Some(r) = self.conns.get(&conn).and_then(|c| c.privcmd_restrict) {
            if r != target {
                return Err(error(
                    libc::EPERM,
                    format!("this handle is restricted to domain {r}, not {target}"),
                ));
            }
        }
        let Some(dom) = self.domains.get(&target) else {
            return Err(error(
                libc::ESRCH,
                format!("domain {target} does not exist"),
            ));
        };
        let Some(hvm) = &dom.hvm else {
            return Err(error(
                libc::EOPNOTSUPP,
                format!("domain {target} is not an HVM guest"),
            ));
        };
        if domid != 0 && hvm.device_model != Some(domid) {
            return Err(error(
                libc::EPERM,
                format!("domain {domid} is not the device model of domain {target}"),
            ));
        }
        Ok(())
    }

    /// `XEN_DOMCTL_set_target` (dom0 only, checked by the caller).
    pub(crate) fn set_target(&mut self, dm: DomId, target: DomId) -> Reply {
        if !self.domains.contains_key(&dm) {
            return error(libc::ESRCH, format!("domain {dm} does not exist"));
        }
        match self.domains.get_mut(&target).map(|d| d.hvm.as_mut()) {
            Some(Some(hvm)) => {
                hvm.device_model = Some(dm);
                Reply::Ok
            }
            Some(None) => error(libc::EINVAL, format!("domain {target} is not an HVM guest")),
            None => error(libc::ESRCH, format!("domain {target} does not exist")),
        }
    }

    /// `IOCTL_PRIVCMD_RESTRICT` on connection `conn`.
    pub(crate) fn restrict_privcmd(&mut self, conn: ConnId, target: DomId) -> Reply {
        match self.conns.get_mut(&conn) {
            Some(c) if c.privcmd_restrict.is_some_and(|r| r != target) => error(
                libc::EPERM,
                "this handle is already restricted to another domain",
            ),
            Some(c) => {
                c.privcmd_restrict = Some(target);
                Reply::Ok
            }
            None => error(libc::ENOTCONN, "connection is closed"),
        }
    }

    /// One device-model operation of `domid` (over `conn`) on `target`.
    pub(crate) fn dm_op(&mut self, conn: ConnId, domid: DomId, target: DomId, op: DmOp) -> Reply {
        if let Err(reply) = self.may_emulate(conn, domid, target) {
            return reply;
        }
        match op {
            DmOp::CreateServer { bufioreq } => self.create_server(domid, target, bufioreq),
            DmOp::Populate { gfns } => self.populate(target, &gfns),
            DmOp::Relocate { src, dst, count } => self.relocate(target, src, dst, count),
            DmOp::Destroy { id } => {
                let owner = self
                    .domains
                    .get(&target)
                    .and_then(|d| d.hvm.as_ref())
                    .and_then(|h| h.servers.get(&id))
                    .map(|s| s.emulator);
                match owner {
                    Some(e) if e == domid || domid == 0 => Ok(self.destroy_server(target, id)),
                    Some(_) => Err(error(
                        libc::EPERM,
                        "the ioreq server belongs to another domain",
                    )),
                    None => Err(error(libc::ENOENT, format!("no ioreq server {id}"))),
                }
            }
            op => {
                let Some(hvm) = self.domains.get_mut(&target).and_then(|d| d.hvm.as_mut()) else {
                    return error(libc::ESRCH, "no such HVM domain");
                };
                hvm_op(hvm, domid, op)
            }
        }
        .unwrap_or_else(|e| e)
    }

    fn create_server(
        &mut self,
        emulator: DomId,
        target: DomId,
        bufioreq: u8,
    ) -> Result<Reply, Reply> {
        if bufioreq > xen_abi::dm_op::HVM_IOREQSRV_BUFIOREQ_ATOMIC {
            return Err(error(
                libc::EINVAL,
                format!("bad bufioreq handling {bufioreq}"),
            ));
        }
        let buffered = bufioreq != xen_abi::dm_op::HVM_IOREQSRV_BUFIOREQ_OFF;
        let (vcpus, id) = {
            let hvm = self.hvm_mut(target)?;
            if hvm.servers.len() >= MAX_SERVERS {
                return Err(error(libc::ENOSPC, "too many ioreq servers"));
            }
            let id = (0..=IoServId::MAX)
                .map(|i| hvm.next_server.wrapping_add(i))
                .find(|i| !hvm.servers.contains_key(i))
                .ok_or_else(|| error(libc::ENOSPC, "no ioreq server ids left"))?;
            hvm.next_server = id.wrapping_add(1);
            (hvm.vcpus, id)
        };
        let pages = IoreqServer::sync_pages(vcpus) + 1;
        let pages = memfd(&format!("xen-sim-d{target}-ioreq{id}"), pages * PAGE_SIZE)
            .map_err(|e| error(libc::ENOMEM, format!("cannot allocate ioreq pages: {e}")))?;
        let mut ports = Vec::new();
        for _ in 0..=vcpus {
            match self.xen_port(target, emulator) {
                Ok(p) => ports.push(p),
                Err(e) => {
                    for p in ports {
                        self.close_port(target, p);
                    }
                    return Err(e);
                }
            }
        }
        let buf_port = ports.pop().filter(|_| buffered);
        let server = IoreqServer {
            emulator,
            enabled: false,
            pages: Arc::new(pages),
            buffered,
            atomic: bufioreq == xen_abi::dm_op::HVM_IOREQSRV_BUFIOREQ_ATOMIC,
            vcpu_ports: ports,
            buf_port,
            ranges: Vec::new(),
        };
        self.hvm_mut(target)?.servers.insert(id, server);
        Ok(Reply::ServerId(id))
    }

    /// An unbound port of `target` that `remote` may bind, held by the hypervisor.
    fn xen_port(&mut self, target: DomId, remote: DomId) -> Result<Port, Reply> {
        let (rx, tx) = match (super::evtchn::eventfd(), super::evtchn::eventfd()) {
            (Ok(r), Ok(t)) => (r, t),
            _ => return Err(error(libc::EMFILE, "out of eventfds")),
        };
        let dom = self
            .domains
            .get_mut(&target)
            .ok_or_else(|| error(libc::ESRCH, "no such domain"))?;
        let port = dom
            .free_port()
            .ok_or_else(|| error(libc::ENOSPC, "no free event channel ports"))?;
        dom.ports.insert(
            port,
            PortState {
                owner: XEN_OWNED,
                kind: PortKind::Unbound { remote },
                rx,
                tx,
            },
        );
        Ok(port)
    }

    fn hvm_mut(&mut self, target: DomId) -> Result<&mut Hvm, Reply> {
        self.domains
            .get_mut(&target)
            .and_then(|d| d.hvm.as_mut())
            .ok_or_else(|| error(libc::ESRCH, "no such HVM domain"))
    }

    /// Destroys server `id` of `target`: its ports close, pending accesses complete.
    pub(crate) fn destroy_server(&mut self, target: DomId, id: IoServId) -> Reply {
        let Ok(hvm) = self.hvm_mut(target) else {
            return error(libc::ESRCH, "no such HVM domain");
        };
        let Some(server) = hvm.servers.remove(&id) else {
            return error(libc::ENOENT, format!("no ioreq server {id}"));
        };
        for p in server.vcpu_ports.iter().chain(server.buf_port.iter()) {
            self.close_port(target, *p);
        }
        Reply::Ok
    }

    fn populate(&mut self, target: DomId, gfns: &[u64]) -> Result<Reply, Reply> {
        let count =
            u32::try_from(gfns.len()).map_err(|_| error(libc::EINVAL, "too many frames"))?;
        let dom = self
            .domains
            .get_mut(&target)
            .ok_or_else(|| error(libc::ESRCH, "no such domain"))?;
        let hvm = dom
            .hvm
            .as_ref()
            .ok_or_else(|| error(libc::EINVAL, "not HVM"))?;
        if hvm.populated.saturating_add(count) > MAX_POPULATED_PAGES {
            return Err(error(libc::ENOMEM, "the domain's memory limit is reached"));
        }
        if let Some(g) = gfns
            .iter()
            .find(|&&g| g > MAX_GFN || hvm.p2m.contains_key(&g))
        {
            return Err(error(
                libc::EEXIST,
                format!("gfn {g:#x} is taken or out of range"),
            ));
        }
        let first = dom.mem_pages;
        dom.grow_memory(count)
            .map_err(|e| error(libc::ENOMEM, format!("cannot grow guest memory: {e}")))?;
        let hvm = dom
            .hvm
            .as_mut()
            .ok_or_else(|| error(libc::EINVAL, "not HVM"))?;
        hvm.populated += count;
        for (i, &g) in gfns.iter().enumerate() {
            hvm.p2m.insert(g, first + i as u32);
        }
        Ok(Reply::Ok)
    }

    /// `XENMAPSPACE_gmfn_range`: frame by frame, what was at a destination is dropped.
    fn relocate(&mut self, target: DomId, src: u64, dst: u64, count: u32) -> Result<Reply, Reply> {
        let hvm = self.hvm_mut(target)?;
        let last = |base: u64| {
            base.checked_add(u64::from(count))
                .filter(|&e| e <= MAX_GFN + 1)
        };
        if last(src).is_none() || last(dst).is_none() {
            return Err(error(
                libc::EINVAL,
                "relocation out of the physical address space",
            ));
        }
        let moved: Vec<(u64, u32)> = (0..u64::from(count))
            .filter_map(|i| hvm.p2m.remove(&(src + i)).map(|f| (i, f)))
            .collect();
        if moved.len() != count as usize {
            // Put back what was taken: the operation fails as a whole.
            for (i, f) in moved {
                hvm.p2m.insert(src + i, f);
            }
            return Err(error(libc::ENOENT, "a source frame is not populated"));
        }
        for (i, f) in moved {
            hvm.p2m.insert(dst + i, f);
        }
        Ok(Reply::Ok)
    }

    /// The frames behind `gfns` of `target` (each `None` where unpopulated).
    pub(crate) fn translate(&self, target: DomId, gfns: &[u64]) -> Option<Vec<Option<u32>>> {
        let hvm = self.domains.get(&target)?.hvm.as_ref()?;
        Some(gfns.iter().map(|g| hvm.p2m.get(g).copied()).collect())
    }

    /// `IOCTL_PRIVCMD_MMAPBATCH_V2`: frames and the target's memory descriptor.
    pub(crate) fn map_foreign(
        &self,
        conn: ConnId,
        domid: DomId,
        target: DomId,
        gfns: &[u64],
    ) -> Answer {
        if let Err(reply) = self.may_emulate(conn, domid, target) {
            return reply.into();
        }
        let Some(frames) = self.translate(target, gfns) else {
            return error(libc::ESRCH, "no such HVM domain").into();
        };
        let Some((mem, _)) = self.domains.get(&target).and_then(|d| d.memory.as_ref()) else {
            return error(libc::ENODEV, "the domain has no memory").into();
        };
        match mem.as_fd().try_clone_to_owned() {
            Ok(fd) => Answer {
                reply: Reply::Frames(frames),
                fds: vec![fd],
            },
            Err(_) => error(libc::EMFILE, "cannot duplicate the memory descriptor").into(),
        }
    }

    /// `IOCTL_PRIVCMD_MMAP_RESOURCE` of an ioreq server's pages.
    pub(crate) fn map_ioreq_pages(
        &self,
        conn: ConnId,
        domid: DomId,
        target: DomId,
        id: IoServId,
    ) -> Answer {
        if let Err(reply) = self.may_emulate(conn, domid, target) {
            return reply.into();
        }
        let Some(server) = self
            .domains
            .get(&target)
            .and_then(|d| d.hvm.as_ref())
            .and_then(|h| h.servers.get(&id))
        else {
            return error(libc::ENOENT, format!("no ioreq server {id}")).into();
        };
        if server.emulator != domid {
            return error(libc::EPERM, "the ioreq server belongs to another domain").into();
        }
        match server.pages.0.as_fd().try_clone_to_owned() {
            Ok(fd) => Answer {
                reply: Reply::IoreqPages {
                    buffered: server.buffered,
                    sync_pages: IoreqServer::sync_pages(server.vcpu_ports.len() as u32) as u32,
                },
                fds: vec![fd],
            },
            Err(_) => error(libc::EMFILE, "cannot duplicate the ioreq pages").into(),
        }
    }

    /// The interrupt queue of HVM guest `domid` (for its vCPUs to wait on).
    pub(crate) fn interrupts(&self, domid: DomId) -> Option<InterruptQueue> {
        self.domains
            .get(&domid)?
            .hvm
            .as_ref()
            .map(|h| Arc::clone(&h.interrupts))
    }
}

/// The operations that only touch the guest's `Hvm` and one server.
fn hvm_op(hvm: &mut Hvm, emulator: DomId, op: DmOp) -> Result<Reply, Reply> {
    let own = |hvm: &mut Hvm, id: IoServId| -> Result<(), Reply> {
        match hvm.servers.get(&id) {
            Some(s) if s.emulator == emulator || emulator == 0 => Ok(()),
            Some(_) => Err(error(
                libc::EPERM,
                "the ioreq server belongs to another domain",
            )),
            None => Err(error(libc::ENOENT, format!("no ioreq server {id}"))),
        }
    };
    match op {
        DmOp::ServerInfo { id } => {
            own(hvm, id)?;
            let port = hvm.servers.get(&id).and_then(|s| s.buf_port);
            Ok(Reply::ServerInfo {
                bufioreq_port: port,
            })
        }
        DmOp::MapRange {
            id,
            kind,
            start,
            end,
        }
        | DmOp::UnmapRange {
            id,
            kind,
            start,
            end,
        } => {
            own(hvm, id)?;
            if !range_kind_ok(kind) || start > end {
                return Err(error(libc::EINVAL, "bad range"));
            }
            let map = matches!(op, DmOp::MapRange { .. });
            let server = hvm
                .servers
                .get_mut(&id)
                .ok_or_else(|| error(libc::ENOENT, "no server"))?;
            let range = Range { kind, start, end };
            if map {
                let overlaps = server
                    .ranges
                    .iter()
                    .any(|r| r.kind == kind && r.start <= end && start <= r.end);
                if overlaps {
                    return Err(error(
                        libc::EEXIST,
                        "the range overlaps one already claimed",
                    ));
                }
                if server.ranges.len() >= MAX_RANGES_PER_SERVER {
                    return Err(error(libc::ENOSPC, "too many ranges"));
                }
                server.ranges.push(range);
            } else {
                let before = server.ranges.len();
                server.ranges.retain(|r| *r != range);
                if server.ranges.len() == before {
                    return Err(error(libc::ENOENT, "no such range"));
                }
            }
            Ok(Reply::Ok)
        }
        DmOp::SetState { id, enabled } => {
            own(hvm, id)?;
            if let Some(s) = hvm.servers.get_mut(&id) {
                s.enabled = enabled;
                if enabled {
                    // As Xen's `ioreq_server_enable`: each slot names its vCPU's port now.
                    for (v, port) in s.vcpu_ports.iter().enumerate() {
                        if let Some(slot) = super::vcpu::slot_ptr(s, v) {
                            // SAFETY: `slot` points at vCPU v's 32-byte slot inside the
                            // server's pages; `vp_eport` is at offset 24, 4-aligned.
                            unsafe { slot.add(24).cast::<u32>().write_volatile(*port) };
                        }
                    }
                }
            }
            Ok(Reply::Ok)
        }
        DmOp::InjectMsi { addr, data } => {
            hvm.deliver(Interrupt::Msi { addr, data });
            Ok(Reply::Ok)
        }
        DmOp::SetPciIntx { sbdf, pin, level } => {
            hvm.deliver(Interrupt::Intx { sbdf, pin, level });
            Ok(Reply::Ok)
        }
        DmOp::NrVcpus => Ok(Reply::Count(hvm.vcpus)),
        DmOp::CreateServer { .. }
        | DmOp::Destroy { .. }
        | DmOp::Populate { .. }
        | DmOp::Relocate { .. } => Err(error(libc::EINVAL, "unexpected operation")),
    }
}

impl super::Hypervisor {
    /// Waits up to `timeout_ms` for an interrupt raised in HVM guest `domid`.
    pub(crate) fn wait_interrupt(&self, domid: DomId, timeout_ms: u32) -> Reply {
        let Some(queue) = self.lock().interrupts(domid) else {
            return error(libc::EOPNOTSUPP, "not an HVM guest");
        };
        let (pending, ready) = &*queue;
        let deadline =
            std::time::Instant::now() + std::time::Duration::from_millis(timeout_ms.into());
        let mut q = pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            if let Some(i) = q.pop_front() {
                return Reply::Interrupt(Some(i));
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return Reply::Interrupt(None);
            }
            q = ready
                .wait_timeout(q, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }
}
