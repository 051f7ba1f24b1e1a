//! Asserts every size and offset that `shared/xen-abi.md` lists, so a layout change cannot slip
//! through unnoticed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use core::mem::{offset_of, size_of};

use xen_abi::blkif::*;
use xen_abi::dm_op::*;
use xen_abi::grant_table::*;
use xen_abi::ioreq::*;
use xen_abi::linux::{evtchn::*, gntalloc::*, gntdev::*, privcmd::*, xenbus_backend::*};
use xen_abi::netif::*;
use xen_abi::ring::*;
use xen_abi::xenbus::XenbusState;
use xen_abi::xs_wire::*;

macro_rules! layout {
    ($t:ty, $size:expr $(, $field:ident @ $off:expr)* $(,)?) => {{
        assert_eq!(size_of::<$t>(), $size, "size of {}", stringify!($t));
        $( assert_eq!(offset_of!($t, $field), $off, "{}.{}", stringify!($t), stringify!($field)); )*
    }};
}

#[test]
fn ring_header_layout() {
    layout!(SringHeader, 64, req_prod @ 0, req_event @ 4, rsp_prod @ 8, rsp_event @ 12, pvt @ 16, pad @ 20);
    assert_eq!(offsets::REQ_PROD, 0);
    assert_eq!(offsets::RSP_EVENT, 12);
}

#[test]
fn ring_size_rounds_down_to_power_of_two() {
    assert_eq!(ring_size(4096, 112), 32);
    assert_eq!(ring_size(16 * 4096, 112), 512);
    assert_eq!(ring_size(4096, 12), 256);
    assert_eq!(ring_size(4096, 8), 256);
    assert_eq!(ring_size(4096, 16), 128);
    assert_eq!(ring_size(4096, 108), 32);
    assert_eq!(ring_size(64, 8), 0);
    assert_eq!(ring_size(100, 0), 0);
}

#[test]
fn blkif_native_layout() {
    layout!(BlkifRequestSegment, 8, gref @ 0, first_sect @ 4, last_sect @ 5);
    layout!(BlkifRequest, 112, operation @ 0, nr_segments @ 1, handle @ 2, id @ 8, sector_number @ 16, seg @ 24);
    layout!(BlkifRequestDiscard, 32, operation @ 0, flag @ 1, handle @ 2, id @ 8, sector_number @ 16, nr_sectors @ 24);
    layout!(BlkifRequestIndirect, 64, operation @ 0, indirect_op @ 1, nr_segments @ 2, id @ 8,
        sector_number @ 16, handle @ 24, indirect_grefs @ 28);
    layout!(BlkifResponse, 16, id @ 0, operation @ 8, status @ 10);
    assert_eq!(BLKIF_NATIVE_SLOT_SIZE, 112);
    assert_eq!(SEGS_PER_INDIRECT_FRAME, 512);
    assert_eq!(
        (BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER),
        (0, 1, 2)
    );
    assert_eq!(
        (
            BLKIF_OP_FLUSH_DISKCACHE,
            BLKIF_OP_RESERVED_1,
            BLKIF_OP_DISCARD,
            BLKIF_OP_INDIRECT
        ),
        (3, 4, 5, 6)
    );
    assert_eq!(
        (BLKIF_RSP_OKAY, BLKIF_RSP_ERROR, BLKIF_RSP_EOPNOTSUPP),
        (0, -1, -2)
    );
    assert_eq!((VDISK_CDROM, VDISK_REMOVABLE, VDISK_READONLY), (1, 2, 4));
    assert_eq!(
        (
            BLKIF_MAX_SEGMENTS_PER_REQUEST,
            BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST
        ),
        (11, 8)
    );
}

#[test]
fn blkif_x86_32_layout() {
    layout!(BlkifX86_32Request, 108, operation @ 0, nr_segments @ 1, handle @ 2, id @ 4, sector_number @ 12, seg @ 20);
    layout!(BlkifX86_32RequestDiscard, 28, operation @ 0, flag @ 1, id @ 4, sector_number @ 12, nr_sectors @ 20);
    layout!(BlkifX86_32RequestIndirect, 64, operation @ 0, indirect_op @ 1, nr_segments @ 2, id @ 4,
        sector_number @ 12, handle @ 20, indirect_grefs @ 24);
    layout!(BlkifX86_32Response, 11, id @ 0, operation @ 8, status @ 9);
    assert_eq!(BLKIF_X86_32_SLOT_SIZE, 108);
    assert_eq!(ring_size(4096, BLKIF_X86_32_SLOT_SIZE), 32);
}

#[test]
fn netif_layout() {
    layout!(NetifTxRequest, 12, gref @ 0, offset @ 4, flags @ 6, id @ 8, size @ 10);
    layout!(NetifTxResponse, 4, id @ 0, status @ 2);
    layout!(NetifRxRequest, 8, id @ 0, gref @ 4);
    layout!(NetifRxResponse, 8, id @ 0, offset @ 2, flags @ 4, status @ 6);
    layout!(NetifExtraInfo, 8, type_ @ 0, flags @ 1, u @ 2);
    layout!(NetifExtraGso, 6, size @ 0, type_ @ 2, pad @ 3, features @ 4);
    layout!(NetifExtraHash, 6, type_ @ 0, algorithm @ 1, value @ 2);
    layout!(NetifCtrlRequest, 16, id @ 0, type_ @ 2, data @ 4);
    layout!(NetifCtrlResponse, 12, id @ 0, type_ @ 2, status @ 4, data @ 8);
    layout!(NetifGref, 8, ref_ @ 0, flags @ 4, status @ 6);
    assert_eq!(ring_size(4096, 12), 256);
    assert_eq!(ring_size(4096, 16), 128);
    assert_eq!(
        (
            NETTXF_CSUM_BLANK,
            NETTXF_DATA_VALIDATED,
            NETTXF_MORE_DATA,
            NETTXF_EXTRA_INFO
        ),
        (1, 2, 4, 8)
    );
    assert_eq!(
        (
            NETRXF_DATA_VALIDATED,
            NETRXF_CSUM_BLANK,
            NETRXF_MORE_DATA,
            NETRXF_EXTRA_INFO,
            NETRXF_GSO_PREFIX
        ),
        (1, 2, 4, 8, 16)
    );
    assert_eq!(
        (
            XEN_NETIF_EXTRA_TYPE_GSO,
            XEN_NETIF_EXTRA_TYPE_HASH,
            XEN_NETIF_EXTRA_TYPE_MAX
        ),
        (1, 4, 5)
    );
    assert_eq!(
        (
            NETIF_RSP_DROPPED,
            NETIF_RSP_ERROR,
            NETIF_RSP_OKAY,
            NETIF_RSP_NULL
        ),
        (-2, -1, 0, 1)
    );
    assert_eq!(
        (XEN_NETIF_NR_SLOTS_MIN, XEN_NETIF_MAX_TX_SIZE),
        (18, 0xffff)
    );
    assert_eq!(
        (ctrl_type::GET_HASH_FLAGS, ctrl_type::DEL_GREF_MAPPING),
        (1, 10)
    );
}

#[test]
fn xs_wire_layout() {
    layout!(XsdSockmsg, 16, type_ @ 0, req_id @ 4, tx_id @ 8, len @ 12);
    layout!(XenstoreDomainInterface, 2080, req @ 0, rsp @ 1024, req_cons @ 2048, req_prod @ 2052,
        rsp_cons @ 2056, rsp_prod @ 2060, server_features @ 2064, connection @ 2068, error @ 2072, evtchn_port @ 2076);
    assert_eq!(
        (
            XENSTORE_PAYLOAD_MAX,
            XENSTORE_ABS_PATH_MAX,
            XENSTORE_REL_PATH_MAX
        ),
        (4096, 3072, 2048)
    );
    assert_eq!(
        (
            msg::DIRECTORY,
            msg::WATCH_EVENT,
            msg::ERROR,
            msg::RESET_WATCHES,
            msg::SET_QUOTA
        ),
        (1, 15, 16, 21, 26)
    );
    assert_eq!((msg::TYPE_COUNT, msg::INVALID), (27, 0xffff));
    assert_eq!(mask_xenstore_idx(1025), 1);
}

#[test]
fn grant_table_layout() {
    layout!(GrantEntryV1, 8, flags @ 0, domid @ 2, frame @ 4);
    layout!(GnttabMapGrantRef, 32, host_addr @ 0, flags @ 8, ref_ @ 12, dom @ 16, status @ 18, handle @ 20, dev_bus_addr @ 24);
    layout!(GnttabCopyPtr, 16, u @ 0, domid @ 8, offset @ 10);
    layout!(GnttabCopy, 40, source @ 0, dest @ 16, len @ 32, flags @ 34, status @ 36);
    assert_eq!(
        (GTF_PERMIT_ACCESS, GTF_READONLY, GTF_READING, GTF_WRITING),
        (1, 4, 8, 16)
    );
    assert_eq!(
        (
            status::OKAY,
            status::BAD_DOMAIN,
            status::BAD_GNTREF,
            status::PERMISSION_DENIED
        ),
        (0, -2, -3, -8)
    );
    assert_eq!(
        (GNTMAP_DEVICE_MAP, GNTMAP_HOST_MAP, GNTMAP_READONLY),
        (1, 2, 4)
    );
}

#[test]
fn ioreq_layout() {
    layout!(Ioreq, 32, addr @ 0, data @ 8, count @ 16, size @ 20, vp_eport @ 24, _pad0 @ 28, flags @ 30, type_ @ 31);
    layout!(BufIoreq, 8, word @ 0, data @ 4);
    layout!(BufferedIopage, 4096, read_pointer @ 0, write_pointer @ 4, buf_ioreq @ 8);
    assert_eq!(IOREQ_STATE_BYTE_OFFSET, 30);
    assert_eq!(IOREQS_PER_PAGE, 128);
    let flags = Ioreq::pack_flags(STATE_IOREQ_READY, true, IOREQ_READ, false);
    let r = Ioreq {
        flags,
        ..Default::default()
    };
    assert_eq!(
        (r.state(), r.data_is_ptr(), r.dir(), r.df()),
        (1, true, 1, false)
    );
    let b = BufIoreq {
        word: BufIoreq::pack(IOREQ_TYPE_COPY, IOREQ_WRITE, 3, 0xabcde),
        data: 0,
    };
    assert_eq!(
        (b.type_(), b.dir(), b.size_bytes(), b.addr()),
        (1, 0, 8, 0xabcde)
    );
}

#[test]
fn dm_op_layout() {
    layout!(DmOpRelocateMemory, 24, size @ 0, src_gfn @ 8, dst_gfn @ 16);
    layout!(XenMemoryReservation, 32, extent_start @ 0, nr_extents @ 8, extent_order @ 16, mem_flags @ 20, domid @ 24);
    layout!(XenDmOp, 32, op @ 0, u @ 8);
    layout!(DmOpCreateIoreqServer, 6, handle_bufioreq @ 0, id @ 4);
    layout!(DmOpGetIoreqServerInfo, 24, id @ 0, flags @ 2, bufioreq_port @ 4, ioreq_gfn @ 8, bufioreq_gfn @ 16);
    layout!(DmOpIoreqServerRange, 24, id @ 0, type_ @ 4, start @ 8, end @ 16);
    layout!(DmOpSetIoreqServerState, 4, id @ 0, enabled @ 2);
    layout!(DmOpDestroyIoreqServer, 4, id @ 0);
    layout!(DmOpSetPciIntxLevel, 6, domain @ 0, bus @ 2, device @ 3, intx @ 4, level @ 5);
    layout!(DmOpInjectMsi, 16, data @ 0, addr @ 8);
    layout!(XenMemAcquireResource, 32, domid @ 0, type_ @ 2, id @ 4, nr_frames @ 8, frame @ 16, frame_list @ 24);
    assert_eq!(pci_sbdf(0, 0, 3, 0), 0x18);
    assert_eq!(pci_sbdf(1, 2, 31, 7), 0x0001_02ff);
    assert_eq!(xenmem_resource_ioreq_server_frame_ioreq(0), 1);
    assert_eq!(
        (
            XEN_DMOP_CREATE_IOREQ_SERVER,
            XEN_DMOP_INJECT_MSI,
            XEN_DMOP_NR_VCPUS
        ),
        (1, 14, 20)
    );
}

#[test]
fn linux_ioctl_numbers_and_layouts() {
    assert_eq!(IOCTL_GNTDEV_MAP_GRANT_REF, 0x0018_4700);
    assert_eq!(IOCTL_GNTDEV_UNMAP_GRANT_REF, 0x0010_4701);
    assert_eq!(IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR, 0x0018_4702);
    assert_eq!(IOCTL_GNTDEV_SET_MAX_GRANTS, 0x0004_4703);
    assert_eq!(IOCTL_GNTDEV_SET_UNMAP_NOTIFY, 0x0010_4707);
    assert_eq!(IOCTL_GNTDEV_GRANT_COPY, 0x0010_4708);
    assert_eq!(IOCTL_GNTDEV_DMABUF_EXP_FROM_REFS, 0x0014_4709);
    assert_eq!(IOCTL_GNTDEV_DMABUF_EXP_WAIT_RELEASED, 0x0008_470a);
    assert_eq!(IOCTL_GNTDEV_DMABUF_IMP_TO_REFS, 0x0014_470b);
    assert_eq!(IOCTL_GNTDEV_DMABUF_IMP_RELEASE, 0x0008_470c);
    layout!(IoctlGntdevMapGrantRef, 24, count @ 0, index @ 8, refs @ 16);
    layout!(IoctlGntdevUnmapGrantRef, 16, index @ 0, count @ 8);
    layout!(IoctlGntdevGetOffsetForVaddr, 24, vaddr @ 0, offset @ 8, count @ 16);
    layout!(IoctlGntdevUnmapNotify, 16, index @ 0, action @ 8, event_channel_port @ 12);
    layout!(GntdevGrantCopySegment, 24, source @ 0, dest @ 8, len @ 16, flags @ 18, status @ 20);
    layout!(IoctlGntdevGrantCopy, 16, count @ 0, segments @ 8);
    layout!(IoctlGntdevDmabufExpFromRefs, 20, flags @ 0, count @ 4, domid @ 8, fd @ 12, refs @ 16);
    assert_eq!(copy_foreign(7, 0x10, 3), 0x0003_0010_0000_0007);

    layout!(IoctlGntallocAllocGref, 24, domid @ 0, flags @ 2, count @ 4, index @ 8, gref_ids @ 16);
    layout!(IoctlGntallocDeallocGref, 16, index @ 0, count @ 8);
    assert_eq!(IOCTL_GNTALLOC_ALLOC_GREF, 0x0018_4705);
    assert_eq!(IOCTL_GNTALLOC_DEALLOC_GREF, 0x0010_4706);
    assert_eq!(IOCTL_GNTALLOC_SET_UNMAP_NOTIFY, 0x0010_4707);

    assert_eq!(IOCTL_EVTCHN_BIND_VIRQ, 0x0004_4500);
    assert_eq!(IOCTL_EVTCHN_BIND_INTERDOMAIN, 0x0008_4501);
    assert_eq!(IOCTL_EVTCHN_BIND_UNBOUND_PORT, 0x0004_4502);
    assert_eq!(IOCTL_EVTCHN_UNBIND, 0x0004_4503);
    assert_eq!(IOCTL_EVTCHN_NOTIFY, 0x0004_4504);
    assert_eq!(IOCTL_EVTCHN_RESET, 0x0000_4505);
    assert_eq!(IOCTL_EVTCHN_RESTRICT_DOMID, 0x0002_4506);
    layout!(IoctlEvtchnBindInterdomain, 8, remote_domain @ 0, remote_port @ 4);

    assert_eq!(IOCTL_PRIVCMD_HYPERCALL, 0x0030_5000);
    assert_eq!(IOCTL_PRIVCMD_MMAP, 0x0010_5002);
    assert_eq!(IOCTL_PRIVCMD_MMAPBATCH, 0x0018_5003);
    assert_eq!(IOCTL_PRIVCMD_MMAPBATCH_V2, 0x0020_5004);
    assert_eq!(IOCTL_PRIVCMD_DM_OP, 0x0010_5005);
    assert_eq!(IOCTL_PRIVCMD_RESTRICT, 0x0002_5006);
    assert_eq!(IOCTL_PRIVCMD_MMAP_RESOURCE, 0x0020_5007);
    assert_eq!(IOCTL_PRIVCMD_IRQFD, 0x4018_5008);
    assert_eq!(IOCTL_PRIVCMD_IOEVENTFD, 0x4030_5009);
    assert_eq!(IOCTL_PRIVCMD_PCIDEV_GET_GSI, 0x0008_500a);
    layout!(PrivcmdHypercall, 48, op @ 0, arg @ 8);
    layout!(PrivcmdMmapBatchV2, 32, num @ 0, dom @ 4, addr @ 8, arr @ 16, err @ 24);
    layout!(PrivcmdDmOp, 16, dom @ 0, num @ 2, ubufs @ 8);
    layout!(PrivcmdDmOpBuf, 16, uptr @ 0, size @ 8);
    layout!(PrivcmdMmapResource, 32, dom @ 0, type_ @ 4, id @ 8, idx @ 12, num @ 16, addr @ 24);
    layout!(PrivcmdIrqfd, 24, dm_op @ 0, size @ 8, fd @ 12, flags @ 16, dom @ 20);
    layout!(PrivcmdIoeventfd, 48, ioreq @ 0, ports @ 8, addr @ 16, addr_len @ 24, event_fd @ 28,
        vcpus @ 32, vq @ 36, flags @ 40, dom @ 44);
    assert_eq!(IOCTL_XENBUS_BACKEND_EVTCHN, 0x4200);
    assert_eq!(IOCTL_XENBUS_BACKEND_SETUP, 0x4201);
}

#[test]
fn xenbus_states_round_trip() {
    for n in 0..=8u32 {
        let s = XenbusState::from_number(n).unwrap();
        assert_eq!(s as u32, n);
        assert_eq!(XenbusState::parse(s.as_text().as_bytes()), Some(s));
    }
    assert_eq!(XenbusState::from_number(9), None);
    assert_eq!(XenbusState::parse(b" 4\n"), Some(XenbusState::Connected));
    assert_eq!(XenbusState::parse(b"x"), None);
}
