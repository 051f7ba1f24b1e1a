//! Device-model operations on one HVM guest: the ioreq-server lifecycle (`XEN_DMOP_*`), the
//! ioreq pages (by resource mapping), foreign mapping of guest memory, and interrupt injection.
//!
//! [`DeviceModel`] is the trait an emulator (demu) programs against; [`linux::Privcmd`] is the
//! implementation over `/dev/xen/privcmd` (`IOCTL_PRIVCMD_DM_OP`, `IOCTL_PRIVCMD_MMAP_RESOURCE`,
//! `IOCTL_PRIVCMD_MMAPBATCH_V2`, `IOCTL_PRIVCMD_RESTRICT`). The argument encoding is pure and
//! lives in [`op`], where it is unit-tested.

pub mod linux;
pub mod op;

use xen_abi::dm_op::IoServId;
use xen_abi::Port;
pub use xen_ring::SharedMemory;

/// Device-model errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel or the hypervisor refused.
    #[error("device model {op}: {source}")]
    Os {
        /// Which operation.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Some frames of a foreign mapping failed.
    #[error("foreign mapping of {failed} of {total} guest frames failed (first: gfn {first_gfn:#x}, errno {errno})")]
    ForeignMap {
        /// Frames that failed.
        failed: usize,
        /// Frames asked for.
        total: usize,
        /// The first failing gfn.
        first_gfn: u64,
        /// Its errno.
        errno: i32,
    },
    /// Arguments the interface cannot express.
    #[error("invalid device model {op}: {reason}")]
    Invalid {
        /// Which operation.
        op: &'static str,
        /// Why.
        reason: &'static str,
    },
}

/// Result of device-model operations.
pub type Result<T> = std::result::Result<T, Error>;

/// Whether an ioreq server gets a buffered-ioreq page, and how its pointers are updated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufIoreq {
    /// No buffered page (`HVM_IOREQSRV_BUFIOREQ_OFF`).
    Off,
    /// Legacy pointer update.
    Legacy,
    /// Atomic pointer update.
    Atomic,
}

/// The kind of an emulated range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoRangeKind {
    /// I/O ports.
    Port,
    /// MMIO (guest-physical addresses).
    Memory,
    /// PCI config space of the devices in `start..=end` (SBDF, see `xen_abi::dm_op::pci_sbdf`).
    Pci,
}

/// An inclusive range claimed by an ioreq server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoRange {
    /// Its kind.
    pub kind: IoRangeKind,
    /// First address.
    pub start: u64,
    /// Last address (inclusive).
    pub end: u64,
}

/// What `get_ioreq_server_info` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoreqServerInfo {
    /// The buffered ring's event channel port (of the guest), if the server has one.
    pub bufioreq_port: Option<Port>,
}

/// Operations on one target guest.
pub trait DeviceModel: Send + Sync {
    /// Mapped ioreq-server pages.
    type IoreqPages: SharedMemory + 'static;
    /// Foreign-mapped guest frames.
    type Foreign: SharedMemory + 'static;

    /// `XEN_DMOP_create_ioreq_server`.
    fn create_ioreq_server(&self, bufioreq: BufIoreq) -> Result<IoServId>;
    /// `XEN_DMOP_get_ioreq_server_info` (without gfns: pages come by resource mapping).
    fn ioreq_server_info(&self, id: IoServId) -> Result<IoreqServerInfo>;
    /// `XEN_DMOP_map_io_range_to_ioreq_server`.
    fn map_io_range(&self, id: IoServId, range: IoRange) -> Result<()>;
    /// `XEN_DMOP_unmap_io_range_from_ioreq_server`.
    fn unmap_io_range(&self, id: IoServId, range: IoRange) -> Result<()>;
    /// `XEN_DMOP_set_ioreq_server_state`: no requests reach the server until enabled.
    fn set_ioreq_server_state(&self, id: IoServId, enabled: bool) -> Result<()>;
    /// `XEN_DMOP_destroy_ioreq_server`.
    fn destroy_ioreq_server(&self, id: IoServId) -> Result<()>;
    /// Maps the server's pages: the buffered page (if `buffered`) then `sync_pages` pages of
    /// synchronous ioreq slots (one per vCPU, 128 per page).
    fn map_ioreq_pages(
        &self,
        id: IoServId,
        buffered: bool,
        sync_pages: u32,
    ) -> Result<Self::IoreqPages>;
    /// Maps guest frames (for `data_is_ptr` ioreqs and guest-programmed DMA).
    fn map_foreign(&self, gfns: &[u64], writable: bool) -> Result<Self::Foreign>;
    /// `XEN_DMOP_inject_msi`.
    fn inject_msi(&self, addr: u64, data: u32) -> Result<()>;
    /// `XEN_DMOP_set_pci_intx_level`.
    fn set_pci_intx_level(
        &self,
        segment: u16,
        bus: u8,
        device: u8,
        intx: u8,
        level: u8,
    ) -> Result<()>;
    /// `XEN_DMOP_nr_vcpus`.
    fn nr_vcpus(&self) -> Result<u32>;
    /// `XENMEM_populate_physmap` for the target: gives it fresh RAM at `gfns` (an emulator's
    /// VRAM, allocated before deprivileging).
    fn populate_ram(&self, gfns: &[u64]) -> Result<()>;
    /// `XEN_DMOP_relocate_memory`: moves `count` frames from `src_gfn` to `dst_gfn` (VRAM
    /// following the framebuffer BAR the guest programmed).
    fn relocate_memory(&self, src_gfn: u64, dst_gfn: u64, count: u32) -> Result<()>;
    /// `IOCTL_PRIVCMD_RESTRICT`: from now on this handle may only touch its target guest.
    fn restrict(&self) -> Result<()>;
}
