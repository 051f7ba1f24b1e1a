//! `xen/include/public/hvm/dm_op.h` and `public/memory.h`: device-model operations that create
//! and drive an ioreq server, and the resource-mapping argument.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::DomId;

/// Ioreq server id (`ioservid_t`).
pub type IoServId = u16;

/// `XEN_DMOP_create_ioreq_server`.
pub const XEN_DMOP_CREATE_IOREQ_SERVER: u32 = 1;
/// `XEN_DMOP_get_ioreq_server_info`.
pub const XEN_DMOP_GET_IOREQ_SERVER_INFO: u32 = 2;
/// `XEN_DMOP_map_io_range_to_ioreq_server`.
pub const XEN_DMOP_MAP_IO_RANGE_TO_IOREQ_SERVER: u32 = 3;
/// `XEN_DMOP_unmap_io_range_from_ioreq_server`.
pub const XEN_DMOP_UNMAP_IO_RANGE_FROM_IOREQ_SERVER: u32 = 4;
/// `XEN_DMOP_set_ioreq_server_state`.
pub const XEN_DMOP_SET_IOREQ_SERVER_STATE: u32 = 5;
/// `XEN_DMOP_destroy_ioreq_server`.
pub const XEN_DMOP_DESTROY_IOREQ_SERVER: u32 = 6;
/// `XEN_DMOP_track_dirty_vram`.
pub const XEN_DMOP_TRACK_DIRTY_VRAM: u32 = 7;
/// `XEN_DMOP_set_pci_intx_level`.
pub const XEN_DMOP_SET_PCI_INTX_LEVEL: u32 = 8;
/// `XEN_DMOP_set_isa_irq_level`.
pub const XEN_DMOP_SET_ISA_IRQ_LEVEL: u32 = 9;
/// `XEN_DMOP_set_pci_link_route`.
pub const XEN_DMOP_SET_PCI_LINK_ROUTE: u32 = 10;
/// `XEN_DMOP_modified_memory`.
pub const XEN_DMOP_MODIFIED_MEMORY: u32 = 11;
/// `XEN_DMOP_set_mem_type`.
pub const XEN_DMOP_SET_MEM_TYPE: u32 = 12;
/// `XEN_DMOP_inject_event`.
pub const XEN_DMOP_INJECT_EVENT: u32 = 13;
/// `XEN_DMOP_inject_msi`.
pub const XEN_DMOP_INJECT_MSI: u32 = 14;
/// `XEN_DMOP_map_mem_type_to_ioreq_server`.
pub const XEN_DMOP_MAP_MEM_TYPE_TO_IOREQ_SERVER: u32 = 15;
/// `XEN_DMOP_remote_shutdown`.
pub const XEN_DMOP_REMOTE_SHUTDOWN: u32 = 16;
/// `XEN_DMOP_relocate_memory`.
pub const XEN_DMOP_RELOCATE_MEMORY: u32 = 17;
/// `XEN_DMOP_pin_memory_cacheattr`.
pub const XEN_DMOP_PIN_MEMORY_CACHEATTR: u32 = 18;
/// `XEN_DMOP_set_irq_level`.
pub const XEN_DMOP_SET_IRQ_LEVEL: u32 = 19;
/// `XEN_DMOP_nr_vcpus`.
pub const XEN_DMOP_NR_VCPUS: u32 = 20;

/// No buffered ioreq page.
pub const HVM_IOREQSRV_BUFIOREQ_OFF: u8 = 0;
/// Buffered ioreqs, legacy (non-atomic) pointer update.
pub const HVM_IOREQSRV_BUFIOREQ_LEGACY: u8 = 1;
/// Buffered ioreqs with atomic pointer update.
pub const HVM_IOREQSRV_BUFIOREQ_ATOMIC: u8 = 2;

/// Range type: I/O ports.
pub const XEN_DMOP_IO_RANGE_PORT: u32 = 0;
/// Range type: MMIO.
pub const XEN_DMOP_IO_RANGE_MEMORY: u32 = 1;
/// Range type: PCI config space (SBDF).
pub const XEN_DMOP_IO_RANGE_PCI: u32 = 2;

/// `get_ioreq_server_info` flag: do not return gfns (pages come by resource mapping).
pub const XEN_DMOP_NO_GFNS: u16 = 1;

/// `XEN_DMOP_PCI_SBDF`: encodes segment, bus, device and function for a PCI range.
pub const fn pci_sbdf(seg: u32, bus: u32, dev: u32, func: u32) -> u64 {
    (((seg & 0xffff) << 16) | ((bus & 0xff) << 8) | ((dev & 0x1f) << 3) | (func & 7)) as u64
}

/// `XENMEM_acquire_resource`.
pub const XENMEM_ACQUIRE_RESOURCE: u32 = 28;
/// Resource type: an ioreq server's pages.
pub const XENMEM_RESOURCE_IOREQ_SERVER: u32 = 0;
/// Resource type: the grant table.
pub const XENMEM_RESOURCE_GRANT_TABLE: u32 = 1;
/// Resource type: a vmtrace buffer.
pub const XENMEM_RESOURCE_VMTRACE_BUF: u32 = 2;
/// Frame index of the buffered ioreq page within the ioreq-server resource.
pub const XENMEM_RESOURCE_IOREQ_SERVER_FRAME_BUFIOREQ: u32 = 0;

/// Frame index of synchronous ioreq page `n` within the ioreq-server resource.
pub const fn xenmem_resource_ioreq_server_frame_ioreq(n: u32) -> u32 {
    1 + n
}

/// `struct xen_dm_op` (32 bytes): the op number and a 24-byte union of argument structs.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenDmOp {
    /// `XEN_DMOP_*`.
    pub op: u32,
    /// Padding.
    pub pad: u32,
    /// The argument union, as bytes; fill it from one of the structs below.
    pub u: [u8; 24],
}

/// `struct xen_dm_op_create_ioreq_server` (6 bytes).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct DmOpCreateIoreqServer {
    /// `HVM_IOREQSRV_BUFIOREQ_*`.
    pub handle_bufioreq: u8,
    /// Padding.
    pub pad: [u8; 3],
    /// The new server's id (OUT).
    pub id: IoServId,
}

/// `struct xen_dm_op_get_ioreq_server_info` (24 bytes).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct DmOpGetIoreqServerInfo {
    /// Server id.
    pub id: IoServId,
    /// `XEN_DMOP_NO_GFNS`.
    pub flags: u16,
    /// Event channel of the buffered ring (OUT).
    pub bufioreq_port: u32,
    /// Gfn of the synchronous page (OUT).
    pub ioreq_gfn: u64,
    /// Gfn of the buffered page (OUT).
    pub bufioreq_gfn: u64,
}

/// `struct xen_dm_op_ioreq_server_range` (24 bytes).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct DmOpIoreqServerRange {
    /// Server id.
    pub id: IoServId,
    /// Padding.
    pub pad: u16,
    /// `XEN_DMOP_IO_RANGE_*`.
    pub type_: u32,
    /// First address (or SBDF).
    pub start: u64,
    /// Last address, inclusive.
    pub end: u64,
}

/// `struct xen_dm_op_set_ioreq_server_state` (4 bytes).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct DmOpSetIoreqServerState {
    /// Server id.
    pub id: IoServId,
    /// 1 to enable.
    pub enabled: u8,
    /// Padding.
    pub pad: u8,
}

/// `struct xen_dm_op_destroy_ioreq_server` (4 bytes).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct DmOpDestroyIoreqServer {
    /// Server id.
    pub id: IoServId,
    /// Padding.
    pub pad: u16,
}

/// `struct xen_dm_op_set_pci_intx_level` (6 bytes).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct DmOpSetPciIntxLevel {
    /// PCI segment.
    pub domain: u16,
    /// Bus.
    pub bus: u8,
    /// Device.
    pub device: u8,
    /// INTx pin (0 = INTA).
    pub intx: u8,
    /// Level (0 or 1).
    pub level: u8,
}

/// `struct xen_dm_op_inject_msi` (16 bytes).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct DmOpInjectMsi {
    /// MSI data.
    pub data: u32,
    /// Padding.
    pub pad: u32,
    /// MSI address.
    pub addr: u64,
}

/// `struct xen_dm_op_relocate_memory` (24 bytes): move `size` frames of the target from
/// `src_gfn` to `dst_gfn` (how an emulator places VRAM behind a framebuffer BAR).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct DmOpRelocateMemory {
    /// Frames to move.
    pub size: u32,
    /// Padding.
    pub pad: u32,
    /// First frame to move.
    pub src_gfn: u64,
    /// Where the first frame goes.
    pub dst_gfn: u64,
}

/// `XENMEM_populate_physmap` (`public/memory.h`).
pub const XENMEM_POPULATE_PHYSMAP: u64 = 6;
/// `__HYPERVISOR_memory_op` (`public/xen.h`).
pub const HYPERVISOR_MEMORY_OP: u64 = 12;

/// `struct xen_memory_reservation` (32 bytes).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenMemoryReservation {
    /// Guest handle of the `xen_pfn_t` array of gfns.
    pub extent_start: u64,
    /// Entries in it.
    pub nr_extents: u64,
    /// log2 of pages per extent.
    pub extent_order: u32,
    /// `XENMEMF_*`.
    pub mem_flags: u32,
    /// The domain.
    pub domid: u16,
    /// Padding.
    pub pad: [u8; 6],
}

/// `struct xen_mem_acquire_resource` (32 bytes).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenMemAcquireResource {
    /// Target domain.
    pub domid: DomId,
    /// `XENMEM_RESOURCE_*`.
    pub type_: u16,
    /// Resource id (the ioreq server id).
    pub id: u32,
    /// Frames to map (IN/OUT).
    pub nr_frames: u32,
    /// Flags (OUT).
    pub flags: u32,
    /// First frame index.
    pub frame: u64,
    /// Guest handle of the frame list.
    pub frame_list: u64,
}
