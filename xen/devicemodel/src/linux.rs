//! `/dev/xen/privcmd`: device-model operations under real Xen.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::ptr::NonNull;

use xen_abi::dm_op::{
    xenmem_resource_ioreq_server_frame_ioreq, DmOpCreateIoreqServer, DmOpGetIoreqServerInfo,
    IoServId, XenDmOp, XenMemoryReservation, HYPERVISOR_MEMORY_OP, XENMEM_POPULATE_PHYSMAP,
    XENMEM_RESOURCE_IOREQ_SERVER, XENMEM_RESOURCE_IOREQ_SERVER_FRAME_BUFIOREQ,
};
use xen_abi::linux::privcmd::*;
use xen_abi::{DomId, PAGE_SIZE};
use zerocopy::IntoBytes;

use crate::{op, BufIoreq, DeviceModel, Error, IoRange, IoreqServerInfo, Result, SharedMemory};

/// A privcmd handle targeting one guest.
pub struct Privcmd {
    file: File,
    domid: DomId,
}

/// Pages mapped through privcmd (ioreq pages or foreign frames); unmapped on drop.
pub struct PrivcmdPages {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a mapping owned by this value; accessed through raw pointers by its holder.
unsafe impl Send for PrivcmdPages {}

impl Drop for PrivcmdPages {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map_privcmd`, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

// SAFETY: `ptr..ptr+len` stays mapped until drop; privcmd mappings are page-aligned.
unsafe impl SharedMemory for PrivcmdPages {
    fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    fn len(&self) -> usize {
        self.len
    }
}

impl Privcmd {
    /// Opens `/dev/xen/privcmd` for operations on guest `domid`.
    pub fn open(domid: DomId) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/xen/privcmd")
            .map_err(|e| Error::Os {
                op: "open",
                source: e,
            })?;
        Ok(Self { file, domid })
    }

    fn ioctl(&self, op: &'static str, request: u32, arg: *mut u8) -> Result<()> {
        // SAFETY: `arg` points to the argument struct `request` expects, alive for the call
        // (callers pass a local of the matching xen-abi type).
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), request as _, arg) };
        if rc < 0 {
            return Err(Error::Os {
                op,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Runs one DM_OP; the hypervisor may write results back into `dm`.
    fn dm_op(&self, name: &'static str, dm: &mut XenDmOp) -> Result<()> {
        let mut buf = PrivcmdDmOpBuf {
            uptr: dm as *mut XenDmOp as u64,
            size: std::mem::size_of::<XenDmOp>() as u64,
        };
        let mut arg = PrivcmdDmOp {
            dom: self.domid,
            num: 1,
            pad: 0,
            ubufs: &mut buf as *mut PrivcmdDmOpBuf as u64,
        };
        self.ioctl(name, IOCTL_PRIVCMD_DM_OP, arg.as_mut_bytes().as_mut_ptr())
    }

    fn map_privcmd(&self, op: &'static str, pages: usize) -> Result<PrivcmdPages> {
        let len = pages * PAGE_SIZE;
        // SAFETY: a fresh shared mapping of the privcmd device, populated by the ioctl that
        // follows; the kernel chooses the address.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::Os {
                op,
                source: io::Error::last_os_error(),
            });
        }
        let ptr = NonNull::new(ptr.cast()).ok_or(Error::Invalid {
            op,
            reason: "mmap returned null",
        })?;
        Ok(PrivcmdPages { ptr, len })
    }
}

impl DeviceModel for Privcmd {
    type IoreqPages = PrivcmdPages;
    type Foreign = PrivcmdPages;

    fn create_ioreq_server(&self, bufioreq: BufIoreq) -> Result<IoServId> {
        let mut dm = op::create_ioreq_server(bufioreq);
        self.dm_op("create-ioreq-server", &mut dm)?;
        op::result::<DmOpCreateIoreqServer>(&dm)
            .map(|r| r.id)
            .ok_or(Error::Invalid {
                op: "create",
                reason: "short reply",
            })
    }

    fn ioreq_server_info(&self, id: IoServId) -> Result<IoreqServerInfo> {
        let mut dm = op::get_ioreq_server_info(id);
        self.dm_op("get-ioreq-server-info", &mut dm)?;
        let info = op::result::<DmOpGetIoreqServerInfo>(&dm).ok_or(Error::Invalid {
            op: "info",
            reason: "short reply",
        })?;
        Ok(IoreqServerInfo {
            bufioreq_port: (info.bufioreq_port != 0).then_some(info.bufioreq_port),
        })
    }

    fn map_io_range(&self, id: IoServId, range: IoRange) -> Result<()> {
        self.dm_op("map-io-range", &mut op::io_range(id, range, true))
    }

    fn unmap_io_range(&self, id: IoServId, range: IoRange) -> Result<()> {
        self.dm_op("unmap-io-range", &mut op::io_range(id, range, false))
    }

    fn set_ioreq_server_state(&self, id: IoServId, enabled: bool) -> Result<()> {
        self.dm_op(
            "set-ioreq-server-state",
            &mut op::set_ioreq_server_state(id, enabled),
        )
    }

    fn destroy_ioreq_server(&self, id: IoServId) -> Result<()> {
        self.dm_op("destroy-ioreq-server", &mut op::destroy_ioreq_server(id))
    }

    fn map_ioreq_pages(
        &self,
        id: IoServId,
        buffered: bool,
        sync_pages: u32,
    ) -> Result<PrivcmdPages> {
        let first = if buffered {
            XENMEM_RESOURCE_IOREQ_SERVER_FRAME_BUFIOREQ
        } else {
            xenmem_resource_ioreq_server_frame_ioreq(0)
        };
        let num = sync_pages + u32::from(buffered);
        if num == 0 {
            return Err(Error::Invalid {
                op: "map-ioreq-pages",
                reason: "no pages",
            });
        }
        let pages = self.map_privcmd("map-ioreq-pages", num as usize)?;
        let mut arg = PrivcmdMmapResource {
            dom: self.domid,
            pad: 0,
            type_: XENMEM_RESOURCE_IOREQ_SERVER,
            id: u32::from(id),
            idx: first,
            num: u64::from(num),
            addr: pages.ptr.as_ptr() as u64,
        };
        self.ioctl(
            "map-ioreq-pages",
            IOCTL_PRIVCMD_MMAP_RESOURCE,
            arg.as_mut_bytes().as_mut_ptr(),
        )?;
        Ok(pages)
    }

    fn map_foreign(&self, gfns: &[u64], writable: bool) -> Result<PrivcmdPages> {
        if gfns.is_empty() {
            return Err(Error::Invalid {
                op: "map-foreign",
                reason: "no frames",
            });
        }
        let pages = self.map_privcmd("map-foreign", gfns.len())?;
        if !writable {
            // SAFETY: our own fresh mapping; narrowing its protection.
            unsafe { libc::mprotect(pages.ptr.as_ptr().cast(), pages.len, libc::PROT_READ) };
        }
        let mut errs = vec![0i32; gfns.len()];
        let mut arg = PrivcmdMmapBatchV2 {
            num: u32::try_from(gfns.len()).map_err(|_| Error::Invalid {
                op: "map-foreign",
                reason: "too many frames",
            })?,
            dom: self.domid,
            pad: 0,
            addr: pages.ptr.as_ptr() as u64,
            arr: gfns.as_ptr() as u64,
            err: errs.as_mut_ptr() as u64,
        };
        let result = self.ioctl(
            "map-foreign",
            IOCTL_PRIVCMD_MMAPBATCH_V2,
            arg.as_mut_bytes().as_mut_ptr(),
        );
        let failed: Vec<(u64, i32)> = gfns
            .iter()
            .zip(&errs)
            .filter(|(_, &e)| e != 0)
            .map(|(&g, &e)| (g, e))
            .collect();
        if let Some(&(first_gfn, errno)) = failed.first() {
            return Err(Error::ForeignMap {
                failed: failed.len(),
                total: gfns.len(),
                first_gfn,
                errno: -errno,
            });
        }
        result.map(|()| pages)
    }

    fn inject_msi(&self, addr: u64, data: u32) -> Result<()> {
        self.dm_op("inject-msi", &mut op::inject_msi(addr, data))
    }

    fn set_pci_intx_level(
        &self,
        segment: u16,
        bus: u8,
        device: u8,
        intx: u8,
        level: u8,
    ) -> Result<()> {
        self.dm_op(
            "set-pci-intx-level",
            &mut op::set_pci_intx_level(segment, bus, device, intx, level),
        )
    }

    fn nr_vcpus(&self) -> Result<u32> {
        let mut dm = op::nr_vcpus();
        self.dm_op("nr-vcpus", &mut dm)?;
        op::result::<u32>(&dm).ok_or(Error::Invalid {
            op: "nr-vcpus",
            reason: "short reply",
        })
    }

    fn populate_ram(&self, gfns: &[u64]) -> Result<()> {
        const OP: &str = "populate-physmap";
        if gfns.is_empty() {
            return Ok(());
        }
        // The reservation and its extent list must be memory the hypervisor may read: a
        // hypercall buffer from /dev/xen/hypercall (what libxencall uses).
        let buffer = HypercallBuffer::new()?;
        for chunk in gfns.chunks(HypercallBuffer::EXTENTS) {
            let arg = buffer.reservation(self.domid, chunk);
            let mut call = PrivcmdHypercall {
                op: HYPERVISOR_MEMORY_OP,
                arg: [XENMEM_POPULATE_PHYSMAP, arg, 0, 0, 0],
            };
            // SAFETY: `call` is the 48-byte argument IOCTL_PRIVCMD_HYPERCALL expects; the
            // reservation and extent list it points to live in `buffer`, alive for the call.
            let done = unsafe {
                libc::ioctl(
                    self.file.as_raw_fd(),
                    IOCTL_PRIVCMD_HYPERCALL as _,
                    call.as_mut_bytes().as_mut_ptr(),
                )
            };
            if done < 0 {
                return Err(Error::Os {
                    op: OP,
                    source: io::Error::last_os_error(),
                });
            }
            if done as usize != chunk.len() {
                return Err(Error::Os {
                    op: OP,
                    source: io::Error::from_raw_os_error(libc::ENOMEM),
                });
            }
        }
        Ok(())
    }

    fn relocate_memory(&self, src_gfn: u64, dst_gfn: u64, count: u32) -> Result<()> {
        self.dm_op(
            "relocate-memory",
            &mut op::relocate_memory(src_gfn, dst_gfn, count),
        )
    }

    fn restrict(&self) -> Result<()> {
        let mut arg = PrivcmdRestrict { domid: self.domid };
        self.ioctl(
            "restrict",
            IOCTL_PRIVCMD_RESTRICT,
            arg.as_mut_bytes().as_mut_ptr(),
        )
    }
}

/// One page of `/dev/xen/hypercall` memory: safe to hand to the hypervisor by address.
struct HypercallBuffer {
    _file: File,
    pages: PrivcmdPages,
}

impl HypercallBuffer {
    fn new() -> Result<Self> {
        const OP: &str = "hypercall-buffer";
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/xen/hypercall")
            .map_err(|e| Error::Os { op: OP, source: e })?;
        // SAFETY: a fresh shared mapping of one page of the hypercall device; the kernel
        // chooses the address.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::Os {
                op: OP,
                source: io::Error::last_os_error(),
            });
        }
        let ptr = NonNull::new(ptr.cast()).ok_or(Error::Invalid {
            op: OP,
            reason: "mmap returned null",
        })?;
        Ok(Self {
            _file: file,
            pages: PrivcmdPages {
                ptr,
                len: PAGE_SIZE,
            },
        })
    }

    /// Extents per call: the page less the reservation in front of them.
    const EXTENTS: usize = (PAGE_SIZE - Self::LIST_OFFSET) / 8;
    const LIST_OFFSET: usize = 64;

    /// Writes a reservation of `gfns` (at most `EXTENTS`) for `domid` into the buffer and
    /// returns the reservation's address.
    fn reservation(&self, domid: DomId, gfns: &[u64]) -> u64 {
        let base = self.pages.ptr.as_ptr();
        let gfns = gfns.get(..Self::EXTENTS).unwrap_or(gfns);
        for (i, gfn) in gfns.iter().enumerate() {
            // SAFETY: LIST_OFFSET + 8 * i < PAGE_SIZE (i < EXTENTS), inside our one-page,
            // page-aligned mapping, 8-aligned.
            unsafe {
                base.add(Self::LIST_OFFSET)
                    .cast::<u64>()
                    .add(i)
                    .write_volatile(*gfn);
            }
        }
        let reservation = XenMemoryReservation {
            extent_start: base as u64 + Self::LIST_OFFSET as u64,
            nr_extents: gfns.len() as u64,
            domid,
            ..XenMemoryReservation::default()
        };
        // SAFETY: the 32-byte reservation fits before LIST_OFFSET in our page; the page is
        // 8-aligned.
        unsafe {
            base.cast::<XenMemoryReservation>()
                .write_volatile(reservation)
        };
        base as u64
    }
}
