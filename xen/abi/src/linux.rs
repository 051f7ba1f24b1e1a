//! Linux uapi for the Xen devices (`include/uapi/xen/{gntdev,evtchn,privcmd}.h`): ioctl numbers
//! and argument layouts. Pointers are carried as `u64` so the structs stay plain bytes.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `_IOC` direction: none.
pub const IOC_NONE: u32 = 0;
/// `_IOC` direction: userspace writes.
pub const IOC_WRITE: u32 = 1;
/// `_IOC` direction: userspace reads.
pub const IOC_READ: u32 = 2;

/// Linux `_IOC(dir, type, nr, size)`.
pub const fn ioc(dir: u32, type_: u8, nr: u8, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | ((type_ as u32) << 8) | nr as u32
}

/// `/dev/xen/gntdev`.
pub mod gntdev {
    use super::*;

    /// One (domain, grant) pair of a map request.
    #[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
    #[repr(C)]
    pub struct GntdevGrantRef {
        /// The granting domain.
        pub domid: u32,
        /// The grant reference.
        pub ref_: u32,
    }

    /// `struct ioctl_gntdev_map_grant_ref` with one ref (24 bytes); more refs follow in memory.
    #[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
    #[repr(C)]
    pub struct IoctlGntdevMapGrantRef {
        /// Number of refs.
        pub count: u32,
        /// Padding.
        pub pad: u32,
        /// mmap offset to use (OUT).
        pub index: u64,
        /// The first ref.
        pub refs: [GntdevGrantRef; 1],
    }

    /// `struct ioctl_gntdev_unmap_grant_ref` (16 bytes).
    #[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
    #[repr(C)]
    pub struct IoctlGntdevUnmapGrantRef {
        /// The mmap offset returned by the map.
        pub index: u64,
        /// Number of refs.
        pub count: u32,
        /// Padding.
        pub pad: u32,
    }

    /// `struct ioctl_gntdev_get_offset_for_vaddr` (24 bytes).
    #[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
    #[repr(C)]
    pub struct IoctlGntdevGetOffsetForVaddr {
        /// A mapped address (IN).
        pub vaddr: u64,
        /// Its mmap offset (OUT).
        pub offset: u64,
        /// Pages in its mapping (OUT).
        pub count: u32,
        /// Padding.
        pub pad: u32,
    }

    /// `struct ioctl_gntdev_set_max_grants` (4 bytes).
    #[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
    #[repr(C)]
    pub struct IoctlGntdevSetMaxGrants {
        /// Limit.
        pub count: u32,
    }

    /// `struct ioctl_gntdev_unmap_notify` (16 bytes).
    #[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
    #[repr(C)]
    pub struct IoctlGntdevUnmapNotify {
        /// Byte offset within the mapping (for `UNMAP_NOTIFY_CLEAR_BYTE`).
        pub index: u64,
        /// `UNMAP_NOTIFY_*`.
        pub action: u32,
        /// Port to notify (for `UNMAP_NOTIFY_SEND_EVENT`).
        pub event_channel_port: u32,
    }

    /// Unmap notification: clear a byte.
    pub const UNMAP_NOTIFY_CLEAR_BYTE: u32 = 0x1;
    /// Unmap notification: send an event.
    pub const UNMAP_NOTIFY_SEND_EVENT: u32 = 0x2;

    /// `struct gntdev_grant_copy_segment` (24 bytes). `source`/`dest` are the union
    /// `{ void *virt; struct { u32 ref; u16 offset; u16 domid; } foreign; }`.
    #[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
    #[repr(C)]
    pub struct GntdevGrantCopySegment {
        /// Source union.
        pub source: u64,
        /// Destination union.
        pub dest: u64,
        /// Bytes to copy.
        pub len: u16,
        /// `GNTCOPY_source_gref` / `GNTCOPY_dest_gref`.
        pub flags: u16,
        /// `GNTST_*` (OUT).
        pub status: i16,
        /// Padding.
        pub pad: u16,
    }

    /// Packs the `foreign` member of the copy-segment union.
    pub const fn copy_foreign(ref_: u32, offset: u16, domid: u16) -> u64 {
        (ref_ as u64) | ((offset as u64) << 32) | ((domid as u64) << 48)
    }

    /// `struct ioctl_gntdev_grant_copy` (16 bytes).
    #[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
    #[repr(C)]
    pub struct IoctlGntdevGrantCopy {
        /// Number of segments.
        pub count: u32,
        /// Padding.
        pub pad: u32,
        /// Pointer to the segments.
        pub segments: u64,
    }

    /// `struct ioctl_gntdev_dmabuf_exp_from_refs` with one ref (20 bytes).
    #[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
    #[repr(C)]
    pub struct IoctlGntdevDmabufExpFromRefs {
        /// `GNTDEV_DMA_FLAG_*`.
        pub flags: u32,
        /// Number of refs.
        pub count: u32,
        /// Granting domain.
        pub domid: u32,
        /// The dma-buf fd (OUT).
        pub fd: u32,
        /// The first ref.
        pub refs: [u32; 1],
    }

    /// `struct ioctl_gntdev_dmabuf_exp_wait_released` (8 bytes).
    #[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
    #[repr(C)]
    pub struct IoctlGntdevDmabufExpWaitReleased {
        /// The dma-buf fd.
        pub fd: u32,
        /// Timeout in milliseconds.
        pub wait_to_ms: u32,
    }

    /// `struct ioctl_gntdev_dmabuf_imp_to_refs` with one ref (20 bytes).
    #[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
    #[repr(C)]
    pub struct IoctlGntdevDmabufImpToRefs {
        /// The dma-buf fd.
        pub fd: u32,
        /// Number of refs.
        pub count: u32,
        /// Domain to grant to.
        pub domid: u32,
        /// Reserved.
        pub reserved: u32,
        /// The first ref (OUT).
        pub refs: [u32; 1],
    }

    /// `struct ioctl_gntdev_dmabuf_imp_release` (8 bytes).
    #[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
    #[repr(C)]
    pub struct IoctlGntdevDmabufImpRelease {
        /// The dma-buf fd.
        pub fd: u32,
        /// Reserved.
        pub reserved: u32,
    }

    const G: u8 = b'G';
    /// `IOCTL_GNTDEV_MAP_GRANT_REF`.
    pub const IOCTL_GNTDEV_MAP_GRANT_REF: u32 = ioc(IOC_NONE, G, 0, 24);
    /// `IOCTL_GNTDEV_UNMAP_GRANT_REF`.
    pub const IOCTL_GNTDEV_UNMAP_GRANT_REF: u32 = ioc(IOC_NONE, G, 1, 16);
    /// `IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR`.
    pub const IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR: u32 = ioc(IOC_NONE, G, 2, 24);
    /// `IOCTL_GNTDEV_SET_MAX_GRANTS`.
    pub const IOCTL_GNTDEV_SET_MAX_GRANTS: u32 = ioc(IOC_NONE, G, 3, 4);
    /// `IOCTL_GNTDEV_SET_UNMAP_NOTIFY`.
    pub const IOCTL_GNTDEV_SET_UNMAP_NOTIFY: u32 = ioc(IOC_NONE, G, 7, 16);
    /// `IOCTL_GNTDEV_GRANT_COPY`.
    pub const IOCTL_GNTDEV_GRANT_COPY: u32 = ioc(IOC_NONE, G, 8, 16);
    /// `IOCTL_GNTDEV_DMABUF_EXP_FROM_REFS`.
    pub const IOCTL_GNTDEV_DMABUF_EXP_FROM_REFS: u32 = ioc(IOC_NONE, G, 9, 20);
    /// `IOCTL_GNTDEV_DMABUF_EXP_WAIT_RELEASED`.
    pub const IOCTL_GNTDEV_DMABUF_EXP_WAIT_RELEASED: u32 = ioc(IOC_NONE, G, 10, 8);
    /// `IOCTL_GNTDEV_DMABUF_IMP_TO_REFS`.
    pub const IOCTL_GNTDEV_DMABUF_IMP_TO_REFS: u32 = ioc(IOC_NONE, G, 11, 20);
    /// `IOCTL_GNTDEV_DMABUF_IMP_RELEASE`.
    pub const IOCTL_GNTDEV_DMABUF_IMP_RELEASE: u32 = ioc(IOC_NONE, G, 12, 8);
}

/// `/dev/xen/evtchn`.
pub mod evtchn {
    use super::*;

    /// `struct ioctl_evtchn_bind_interdomain` (8 bytes).
    #[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
    #[repr(C)]
    pub struct IoctlEvtchnBindInterdomain {
        /// The remote domain.
        pub remote_domain: u32,
        /// Its unbound port.
        pub remote_port: u32,
    }

    /// A single-`u32` argument (`bind_virq`, `bind_unbound_port`, `unbind`, `notify`).
    #[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
    #[repr(C)]
    pub struct IoctlEvtchnU32 {
        /// The VIRQ, remote domain or port.
        pub value: u32,
    }

    /// `struct ioctl_evtchn_restrict_domid` (2 bytes).
    #[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
    #[repr(C)]
    pub struct IoctlEvtchnRestrictDomid {
        /// The only domain this fd may bind to afterwards.
        pub domid: u16,
    }

    const E: u8 = b'E';
    /// `IOCTL_EVTCHN_BIND_VIRQ`.
    pub const IOCTL_EVTCHN_BIND_VIRQ: u32 = ioc(IOC_NONE, E, 0, 4);
    /// `IOCTL_EVTCHN_BIND_INTERDOMAIN`.
    pub const IOCTL_EVTCHN_BIND_INTERDOMAIN: u32 = ioc(IOC_NONE, E, 1, 8);
    /// `IOCTL_EVTCHN_BIND_UNBOUND_PORT`.
    pub const IOCTL_EVTCHN_BIND_UNBOUND_PORT: u32 = ioc(IOC_NONE, E, 2, 4);
    /// `IOCTL_EVTCHN_UNBIND`.
    pub const IOCTL_EVTCHN_UNBIND: u32 = ioc(IOC_NONE, E, 3, 4);
    /// `IOCTL_EVTCHN_NOTIFY`.
    pub const IOCTL_EVTCHN_NOTIFY: u32 = ioc(IOC_NONE, E, 4, 4);
    /// `IOCTL_EVTCHN_RESET`.
    pub const IOCTL_EVTCHN_RESET: u32 = ioc(IOC_NONE, E, 5, 0);
    /// `IOCTL_EVTCHN_RESTRICT_DOMID`.
    pub const IOCTL_EVTCHN_RESTRICT_DOMID: u32 = ioc(IOC_NONE, E, 6, 2);
}

/// `/dev/xen/privcmd`.
pub mod privcmd {
    use super::*;

    /// `struct privcmd_hypercall` (48 bytes).
    #[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
    #[repr(C)]
    pub struct PrivcmdHypercall {
        /// Hypercall number.
        pub op: u64,
        /// Arguments.
        pub arg: [u64; 5],
    }

    /// `struct privcmd_mmapbatch_v2` (32 bytes).
    #[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
    #[repr(C)]
    pub struct PrivcmdMmapBatchV2 {
        /// Number of frames.
        pub num: u32,
        /// Target domain.
        pub dom: u16,
        /// Padding.
        pub pad: u16,
        /// Virtual address of the privcmd mapping to fill.
        pub addr: u64,
        /// Pointer to `xen_pfn_t` frames.
        pub arr: u64,
        /// Pointer to per-frame `int` errors (OUT).
        pub err: u64,
    }

    /// `struct privcmd_dm_op_buf` (16 bytes).
    #[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
    #[repr(C)]
    pub struct PrivcmdDmOpBuf {
        /// Pointer to the buffer.
        pub uptr: u64,
        /// Its size.
        pub size: u64,
    }

    /// `struct privcmd_dm_op` (16 bytes).
    #[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
    #[repr(C)]
    pub struct PrivcmdDmOp {
        /// Target domain.
        pub dom: u16,
        /// Number of buffers.
        pub num: u16,
        /// Padding.
        pub pad: u32,
        /// Pointer to `PrivcmdDmOpBuf` array.
        pub ubufs: u64,
    }

    /// `struct privcmd_mmap_resource` (32 bytes).
    #[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
    #[repr(C)]
    pub struct PrivcmdMmapResource {
        /// Target domain.
        pub dom: u16,
        /// Padding.
        pub pad: u16,
        /// `XENMEM_RESOURCE_*`.
        pub type_: u32,
        /// Resource id.
        pub id: u32,
        /// First frame.
        pub idx: u32,
        /// Number of frames (0 with `addr` 0 queries the size).
        pub num: u64,
        /// Address of a privcmd mapping.
        pub addr: u64,
    }

    /// `struct privcmd_irqfd` (24 bytes).
    #[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
    #[repr(C)]
    pub struct PrivcmdIrqfd {
        /// Pointer to a `xen_dm_op`.
        pub dm_op: u64,
        /// Its size.
        pub size: u32,
        /// The eventfd.
        pub fd: u32,
        /// `PRIVCMD_IRQFD_FLAG_DEASSIGN`.
        pub flags: u32,
        /// Target domain.
        pub dom: u16,
        /// Padding.
        pub pad: [u8; 2],
    }

    /// `struct privcmd_ioeventfd` (48 bytes).
    #[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
    #[repr(C)]
    pub struct PrivcmdIoeventfd {
        /// Pointer to the ioreq page.
        pub ioreq: u64,
        /// Pointer to the per-vCPU ports.
        pub ports: u64,
        /// MMIO address.
        pub addr: u64,
        /// Length of the MMIO range.
        pub addr_len: u32,
        /// The eventfd.
        pub event_fd: u32,
        /// Number of vCPUs.
        pub vcpus: u32,
        /// Virtqueue index.
        pub vq: u32,
        /// Flags.
        pub flags: u32,
        /// Target domain.
        pub dom: u16,
        /// Padding.
        pub pad: [u8; 2],
    }

    /// A `domid_t` argument (`IOCTL_PRIVCMD_RESTRICT`).
    #[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
    #[repr(C)]
    pub struct PrivcmdRestrict {
        /// The only domain this fd may target afterwards.
        pub domid: u16,
    }

    const P: u8 = b'P';
    /// `IOCTL_PRIVCMD_HYPERCALL`.
    pub const IOCTL_PRIVCMD_HYPERCALL: u32 = ioc(IOC_NONE, P, 0, 48);
    /// `IOCTL_PRIVCMD_MMAP`.
    pub const IOCTL_PRIVCMD_MMAP: u32 = ioc(IOC_NONE, P, 2, 16);
    /// `IOCTL_PRIVCMD_MMAPBATCH` (legacy).
    pub const IOCTL_PRIVCMD_MMAPBATCH: u32 = ioc(IOC_NONE, P, 3, 24);
    /// `IOCTL_PRIVCMD_MMAPBATCH_V2`.
    pub const IOCTL_PRIVCMD_MMAPBATCH_V2: u32 = ioc(IOC_NONE, P, 4, 32);
    /// `IOCTL_PRIVCMD_DM_OP`.
    pub const IOCTL_PRIVCMD_DM_OP: u32 = ioc(IOC_NONE, P, 5, 16);
    /// `IOCTL_PRIVCMD_RESTRICT`.
    pub const IOCTL_PRIVCMD_RESTRICT: u32 = ioc(IOC_NONE, P, 6, 2);
    /// `IOCTL_PRIVCMD_MMAP_RESOURCE`.
    pub const IOCTL_PRIVCMD_MMAP_RESOURCE: u32 = ioc(IOC_NONE, P, 7, 32);
    /// `IOCTL_PRIVCMD_IRQFD`.
    pub const IOCTL_PRIVCMD_IRQFD: u32 = ioc(IOC_WRITE, P, 8, 24);
    /// `IOCTL_PRIVCMD_IOEVENTFD`.
    pub const IOCTL_PRIVCMD_IOEVENTFD: u32 = ioc(IOC_WRITE, P, 9, 48);
    /// `IOCTL_PRIVCMD_PCIDEV_GET_GSI`.
    pub const IOCTL_PRIVCMD_PCIDEV_GET_GSI: u32 = ioc(IOC_NONE, P, 10, 8);

    /// Hypercall `memory_op`.
    pub const HYPERVISOR_MEMORY_OP: u64 = 12;
    /// Hypercall `grant_table_op`.
    pub const HYPERVISOR_GRANT_TABLE_OP: u64 = 20;
    /// Hypercall `event_channel_op`.
    pub const HYPERVISOR_EVENT_CHANNEL_OP: u64 = 32;
    /// Hypercall `hvm_op`.
    pub const HYPERVISOR_HVM_OP: u64 = 34;
    /// Hypercall `dm_op`.
    pub const HYPERVISOR_DM_OP: u64 = 41;
}

/// `/dev/xen/xenbus_backend`.
pub mod xenbus_backend {
    use super::*;
    /// `IOCTL_XENBUS_BACKEND_EVTCHN`.
    pub const IOCTL_XENBUS_BACKEND_EVTCHN: u32 = ioc(IOC_NONE, b'B', 0, 0);
    /// `IOCTL_XENBUS_BACKEND_SETUP`.
    pub const IOCTL_XENBUS_BACKEND_SETUP: u32 = ioc(IOC_NONE, b'B', 1, 0);
}

/// `/dev/xen/gntalloc` (`include/uapi/xen/gntalloc.h`): granting our own pages.
pub mod gntalloc {
    use super::*;

    /// `struct ioctl_gntalloc_alloc_gref` with one ref (24 bytes).
    #[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
    #[repr(C)]
    pub struct IoctlGntallocAllocGref {
        /// The domain to grant to.
        pub domid: u16,
        /// `GNTALLOC_FLAG_WRITABLE`.
        pub flags: u16,
        /// Pages to allocate.
        pub count: u32,
        /// mmap offset of the pages (OUT).
        pub index: u64,
        /// The first grant reference (OUT); more follow in memory.
        pub gref_ids: [u32; 1],
        /// Tail padding.
        pub pad: u32,
    }

    /// `struct ioctl_gntalloc_dealloc_gref` (16 bytes).
    #[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
    #[repr(C)]
    pub struct IoctlGntallocDeallocGref {
        /// The mmap offset from the allocation.
        pub index: u64,
        /// Pages.
        pub count: u32,
        /// Padding.
        pub pad: u32,
    }

    /// Grant write access too.
    pub const GNTALLOC_FLAG_WRITABLE: u16 = 1;
    /// `IOCTL_GNTALLOC_ALLOC_GREF`.
    pub const IOCTL_GNTALLOC_ALLOC_GREF: u32 = ioc(IOC_NONE, b'G', 5, 24);
    /// `IOCTL_GNTALLOC_DEALLOC_GREF`.
    pub const IOCTL_GNTALLOC_DEALLOC_GREF: u32 = ioc(IOC_NONE, b'G', 6, 16);
    /// `IOCTL_GNTALLOC_SET_UNMAP_NOTIFY`.
    pub const IOCTL_GNTALLOC_SET_UNMAP_NOTIFY: u32 = ioc(IOC_NONE, b'G', 7, 16);
}
