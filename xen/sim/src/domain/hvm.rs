//! HVM on the domain side: a guest's vCPU ([`SimVcpu`], which issues port, MMIO and PCI
//! configuration accesses the hypervisor routes to ioreq servers) and a device model's handle
//! on its guest ([`SimDeviceModel`], the simulated `/dev/xen/privcmd` behind
//! `xen_devicemodel::DeviceModel`).

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use xen_abi::dm_op::IoServId;
use xen_abi::{DomId, PAGE_SIZE};
use xen_devicemodel::{BufIoreq, DeviceModel, IoRange, IoRangeKind, IoreqServerInfo};
use xen_ring::SharedMemory;

use super::memory::{map_frames, Pages};
use super::{Credentials, Error, HvConn, Result};
use crate::hv::proto::{Access, DmOp, Interrupt, Reply, Request};

/// Pages of another domain (ioreq pages, foreign frames) mapped into this process.
pub struct SimPages(Pages);

// SAFETY: the pages stay mapped for the life of the value; their length is fixed.
unsafe impl SharedMemory for SimPages {
    fn as_ptr(&self) -> *mut u8 {
        self.0.ptr.as_ptr()
    }
    fn len(&self) -> usize {
        self.0.len
    }
}

/// One vCPU of an HVM guest.
pub struct SimVcpu {
    conn: HvConn,
    vcpu: u32,
    memory: Option<OwnedFd>,
}

impl SimVcpu {
    pub(crate) fn open(creds: &Credentials, vcpu: u32) -> Result<Self> {
        Ok(Self {
            conn: HvConn::open(creds, false)?,
            vcpu,
            memory: None,
        })
    }

    /// Issues `access` as this vCPU (its `vcpu` field is set here); the value read.
    pub fn access(&self, access: Access) -> Result<u64> {
        let access = Access {
            vcpu: self.vcpu,
            ..access
        };
        match self.conn.call(&Request::Access(access))?.0 {
            Reply::Accessed { data } => Ok(data),
            other => Err(Error::Protocol(format!("{other:?}"))),
        }
    }

    fn simple(&self, pio: bool, addr: u64, size: u32, write: Option<u64>) -> Result<u64> {
        self.access(Access {
            pio,
            addr,
            size,
            count: 1,
            write: write.is_some(),
            data: write.unwrap_or(0),
            ..Access::default()
        })
    }

    /// `in` of `size` bytes.
    pub fn pio_read(&self, port: u16, size: u32) -> Result<u64> {
        self.simple(true, port.into(), size, None)
    }

    /// `out` of `size` bytes.
    pub fn pio_write(&self, port: u16, size: u32, value: u64) -> Result<()> {
        self.simple(true, port.into(), size, Some(value)).map(drop)
    }

    /// A load of `size` bytes from guest-physical `gpa`.
    pub fn mmio_read(&self, gpa: u64, size: u32) -> Result<u64> {
        self.simple(false, gpa, size, None)
    }

    /// A store of `size` bytes to guest-physical `gpa`.
    pub fn mmio_write(&self, gpa: u64, size: u32, value: u64) -> Result<()> {
        self.simple(false, gpa, size, Some(value)).map(drop)
    }

    /// A PCI configuration read through ports 0xcf8/0xcfc (configuration mechanism #1, as
    /// Linux's `pci_conf1_read`): `bdf` = bus << 8 | device << 3 | function.
    pub fn pci_read(&self, bdf: u16, reg: u8, size: u32) -> Result<u64> {
        self.pio_write(0xcf8, 4, conf1_address(bdf, reg))?;
        self.pio_read(0xcfc + u16::from(reg & 3), size)
    }

    /// A PCI configuration write through ports 0xcf8/0xcfc.
    pub fn pci_write(&self, bdf: u16, reg: u8, size: u32, value: u64) -> Result<()> {
        self.pio_write(0xcf8, 4, conf1_address(bdf, reg))?;
        self.pio_write(0xcfc + u16::from(reg & 3), size, value)
    }

    fn ram(&mut self, gpa: u64, len: usize) -> Result<(Pages, usize)> {
        let first = gpa / PAGE_SIZE as u64;
        let offset = (gpa % PAGE_SIZE as u64) as usize;
        let pages = (offset + len).div_ceil(PAGE_SIZE).max(1) as u64;
        let gfns: Vec<u64> = (first..first + pages).collect();
        let frames = match self
            .conn
            .call(&Request::Translate { gfns: gfns.clone() })?
            .0
        {
            Reply::Frames(f) => f,
            other => return Err(Error::Protocol(format!("{other:?}"))),
        };
        let frames: Vec<u32> = frames
            .iter()
            .zip(&gfns)
            .map(|(f, g)| {
                f.ok_or_else(|| Error::Refused {
                    errno: libc::EFAULT,
                    message: format!("gfn {g:#x} is not RAM"),
                })
            })
            .collect::<Result<_>>()?;
        if self.memory.is_none() {
            let (_, mut fds) = self.conn.call(&Request::OwnMemory)?;
            self.memory = Some(fds.swap_remove(0));
        }
        let fd = self
            .memory
            .as_ref()
            .ok_or_else(|| Error::Protocol("no memory descriptor".into()))?;
        Ok((map_frames(fd, &frames, true)?, offset))
    }

    /// Writes `bytes` into guest RAM at `gpa` (what the guest's CPU does with plain stores:
    /// a framebuffer, a command ring). Fails where the range is not RAM.
    pub fn write_ram(&mut self, gpa: u64, bytes: &[u8]) -> Result<()> {
        let (pages, offset) = self.ram(gpa, bytes.len())?;
        // SAFETY: `pages` maps `offset + bytes.len()` bytes or more of our RAM, writable.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                pages.ptr.as_ptr().add(offset),
                bytes.len(),
            );
        }
        Ok(())
    }

    /// Reads `len` bytes of guest RAM at `gpa`.
    pub fn read_ram(&mut self, gpa: u64, len: usize) -> Result<Vec<u8>> {
        let (pages, offset) = self.ram(gpa, len)?;
        let mut out = vec![0u8; len];
        // SAFETY: `pages` maps `offset + len` bytes or more of our RAM.
        unsafe {
            std::ptr::copy_nonoverlapping(pages.ptr.as_ptr().add(offset), out.as_mut_ptr(), len);
        }
        Ok(out)
    }

    /// Waits up to `timeout` for an interrupt a device model raised in this guest.
    pub fn wait_interrupt(&self, timeout: Duration) -> Result<Option<Interrupt>> {
        let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        match self.conn.call(&Request::WaitInterrupt { timeout_ms })?.0 {
            Reply::Interrupt(i) => Ok(i),
            other => Err(Error::Protocol(format!("{other:?}"))),
        }
    }
}

fn conf1_address(bdf: u16, reg: u8) -> u64 {
    0x8000_0000 | (u64::from(bdf) << 8) | u64::from(reg & 0xfc)
}

/// A device model's handle on one HVM guest (the simulated `/dev/xen/privcmd`).
pub struct SimDeviceModel {
    conn: Arc<HvConn>,
    target: DomId,
}

impl SimDeviceModel {
    pub(crate) fn open(creds: &Credentials, target: DomId) -> Result<Self> {
        Ok(Self {
            conn: Arc::new(HvConn::open(creds, false)?),
            target,
        })
    }

    /// The guest.
    pub fn target(&self) -> DomId {
        self.target
    }

    /// A handle on another guest over the same connection (one privcmd descriptor used for
    /// several guests; a restriction applies to all of them).
    pub fn for_target(&self, target: DomId) -> Self {
        Self {
            conn: Arc::clone(&self.conn),
            target,
        }
    }

    fn op(&self, name: &'static str, op: DmOp) -> xen_devicemodel::Result<Reply> {
        self.conn
            .call(&Request::DmOp {
                target: self.target,
                op,
            })
            .map(|(r, _)| r)
            .map_err(|e| dm_error(name, e))
    }
}

fn dm_error(op: &'static str, e: Error) -> xen_devicemodel::Error {
    let source = match e {
        Error::Refused { errno, message } => std::io::Error::new(
            std::io::Error::from_raw_os_error(errno).kind(),
            format!("{message} (errno {errno})"),
        ),
        Error::Io(e) => e,
        other => std::io::Error::other(other.to_string()),
    };
    xen_devicemodel::Error::Os { op, source }
}

fn unexpected(op: &'static str) -> xen_devicemodel::Error {
    xen_devicemodel::Error::Invalid {
        op,
        reason: "unexpected answer from the simulated hypervisor",
    }
}

fn range_kind(kind: IoRangeKind) -> u32 {
    match kind {
        IoRangeKind::Port => xen_abi::dm_op::XEN_DMOP_IO_RANGE_PORT,
        IoRangeKind::Memory => xen_abi::dm_op::XEN_DMOP_IO_RANGE_MEMORY,
        IoRangeKind::Pci => xen_abi::dm_op::XEN_DMOP_IO_RANGE_PCI,
    }
}

impl DeviceModel for SimDeviceModel {
    type IoreqPages = SimPages;
    type Foreign = SimPages;

    fn create_ioreq_server(&self, bufioreq: BufIoreq) -> xen_devicemodel::Result<IoServId> {
        let bufioreq = match bufioreq {
            BufIoreq::Off => xen_abi::dm_op::HVM_IOREQSRV_BUFIOREQ_OFF,
            BufIoreq::Legacy => xen_abi::dm_op::HVM_IOREQSRV_BUFIOREQ_LEGACY,
            BufIoreq::Atomic => xen_abi::dm_op::HVM_IOREQSRV_BUFIOREQ_ATOMIC,
        };
        match self.op("create-ioreq-server", DmOp::CreateServer { bufioreq })? {
            Reply::ServerId(id) => Ok(id),
            _ => Err(unexpected("create-ioreq-server")),
        }
    }

    fn ioreq_server_info(&self, id: IoServId) -> xen_devicemodel::Result<IoreqServerInfo> {
        match self.op("get-ioreq-server-info", DmOp::ServerInfo { id })? {
            Reply::ServerInfo { bufioreq_port } => Ok(IoreqServerInfo { bufioreq_port }),
            _ => Err(unexpected("get-ioreq-server-info")),
        }
    }

    fn map_io_range(&self, id: IoServId, range: IoRange) -> xen_devicemodel::Result<()> {
        let op = DmOp::MapRange {
            id,
            kind: range_kind(range.kind),
            start: range.start,
            end: range.end,
        };
        self.op("map-io-range", op).map(drop)
    }

    fn unmap_io_range(&self, id: IoServId, range: IoRange) -> xen_devicemodel::Result<()> {
        let op = DmOp::UnmapRange {
            id,
            kind: range_kind(range.kind),
            start: range.start,
            end: range.end,
        };
        self.op("unmap-io-range", op).map(drop)
    }

    fn set_ioreq_server_state(&self, id: IoServId, enabled: bool) -> xen_devicemodel::Result<()> {
        self.op("set-ioreq-server-state", DmOp::SetState { id, enabled })
            .map(drop)
    }

    fn destroy_ioreq_server(&self, id: IoServId) -> xen_devicemodel::Result<()> {
        self.op("destroy-ioreq-server", DmOp::Destroy { id })
            .map(drop)
    }

    fn map_ioreq_pages(
        &self,
        id: IoServId,
        buffered: bool,
        sync_pages: u32,
    ) -> xen_devicemodel::Result<SimPages> {
        const OP: &str = "map-ioreq-pages";
        let (reply, mut fds) = self
            .conn
            .call(&Request::MapIoreqPages {
                target: self.target,
                id,
            })
            .map_err(|e| dm_error(OP, e))?;
        let Reply::IoreqPages {
            buffered: has_buffered,
            sync_pages: available,
        } = reply
        else {
            return Err(unexpected(OP));
        };
        if (buffered && !has_buffered) || sync_pages == 0 || sync_pages > available {
            return Err(xen_devicemodel::Error::Invalid {
                op: OP,
                reason: "the server has no such pages",
            });
        }
        let fd = fds.pop().ok_or_else(|| unexpected(OP))?;
        // Resource frame 0 is the buffered page, 1 + n the n-th slot page.
        let first = u32::from(!buffered);
        let frames: Vec<u32> = (first..=sync_pages).collect();
        map_frames(&fd, &frames, true)
            .map(SimPages)
            .map_err(|source| xen_devicemodel::Error::Os { op: OP, source })
    }

    fn map_foreign(&self, gfns: &[u64], writable: bool) -> xen_devicemodel::Result<SimPages> {
        const OP: &str = "map-foreign";
        let (reply, mut fds) = self
            .conn
            .call(&Request::MapForeign {
                target: self.target,
                gfns: gfns.to_vec(),
            })
            .map_err(|e| dm_error(OP, e))?;
        let Reply::Frames(frames) = reply else {
            return Err(unexpected(OP));
        };
        let failed: Vec<u64> = frames
            .iter()
            .zip(gfns)
            .filter(|(f, _)| f.is_none())
            .map(|(_, &g)| g)
            .collect();
        if let Some(&first_gfn) = failed.first() {
            return Err(xen_devicemodel::Error::ForeignMap {
                failed: failed.len(),
                total: gfns.len(),
                first_gfn,
                errno: libc::EFAULT,
            });
        }
        let frames: Vec<u32> = frames.into_iter().flatten().collect();
        let fd = fds.pop().ok_or_else(|| unexpected(OP))?;
        map_frames(&fd, &frames, writable)
            .map(SimPages)
            .map_err(|source| xen_devicemodel::Error::Os { op: OP, source })
    }

    fn inject_msi(&self, addr: u64, data: u32) -> xen_devicemodel::Result<()> {
        self.op("inject-msi", DmOp::InjectMsi { addr, data })
            .map(drop)
    }

    fn set_pci_intx_level(
        &self,
        segment: u16,
        bus: u8,
        device: u8,
        intx: u8,
        level: u8,
    ) -> xen_devicemodel::Result<()> {
        let sbdf = xen_abi::dm_op::pci_sbdf(segment.into(), bus.into(), device.into(), 0) as u32;
        self.op(
            "set-pci-intx-level",
            DmOp::SetPciIntx {
                sbdf,
                pin: intx,
                level,
            },
        )
        .map(drop)
    }

    fn nr_vcpus(&self) -> xen_devicemodel::Result<u32> {
        match self.op("nr-vcpus", DmOp::NrVcpus)? {
            Reply::Count(n) => Ok(n),
            _ => Err(unexpected("nr-vcpus")),
        }
    }

    fn populate_ram(&self, gfns: &[u64]) -> xen_devicemodel::Result<()> {
        self.op(
            "populate-physmap",
            DmOp::Populate {
                gfns: gfns.to_vec(),
            },
        )
        .map(drop)
    }

    fn relocate_memory(
        &self,
        src_gfn: u64,
        dst_gfn: u64,
        count: u32,
    ) -> xen_devicemodel::Result<()> {
        self.op(
            "relocate-memory",
            DmOp::Relocate {
                src: src_gfn,
                dst: dst_gfn,
                count,
            },
        )
        .map(drop)
    }

    fn restrict(&self) -> xen_devicemodel::Result<()> {
        self.conn
            .call(&Request::RestrictPrivcmd { domid: self.target })
            .map(drop)
            .map_err(|e| dm_error("restrict", e))
    }
}
