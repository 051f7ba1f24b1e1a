//! Encoding of `struct xen_dm_op` arguments (pure; unit-tested).

use xen_abi::dm_op::*;
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::{BufIoreq, IoRange, IoRangeKind};

fn with<T: IntoBytes + Immutable>(op: u32, arg: &T) -> XenDmOp {
    let mut out = XenDmOp {
        op,
        ..Default::default()
    };
    let bytes = arg.as_bytes();
    let n = bytes.len().min(out.u.len());
    if let (Some(dst), Some(src)) = (out.u.get_mut(..n), bytes.get(..n)) {
        dst.copy_from_slice(src);
    }
    out
}

/// Reads the argument struct back out of the union (after the hypervisor filled it).
pub fn result<T: FromBytes>(op: &XenDmOp) -> Option<T> {
    T::read_from_prefix(&op.u).ok().map(|(v, _)| v)
}

/// `create_ioreq_server`.
pub fn create_ioreq_server(bufioreq: BufIoreq) -> XenDmOp {
    let handle_bufioreq = match bufioreq {
        BufIoreq::Off => HVM_IOREQSRV_BUFIOREQ_OFF,
        BufIoreq::Legacy => HVM_IOREQSRV_BUFIOREQ_LEGACY,
        BufIoreq::Atomic => HVM_IOREQSRV_BUFIOREQ_ATOMIC,
    };
    with(
        XEN_DMOP_CREATE_IOREQ_SERVER,
        &DmOpCreateIoreqServer {
            handle_bufioreq,
            ..Default::default()
        },
    )
}

/// `get_ioreq_server_info` without gfns.
pub fn get_ioreq_server_info(id: IoServId) -> XenDmOp {
    with(
        XEN_DMOP_GET_IOREQ_SERVER_INFO,
        &DmOpGetIoreqServerInfo {
            id,
            flags: XEN_DMOP_NO_GFNS,
            ..Default::default()
        },
    )
}

/// `map_io_range_to_ioreq_server` (`map`) or `unmap_io_range_from_ioreq_server`.
pub fn io_range(id: IoServId, range: IoRange, map: bool) -> XenDmOp {
    let type_ = match range.kind {
        IoRangeKind::Port => XEN_DMOP_IO_RANGE_PORT,
        IoRangeKind::Memory => XEN_DMOP_IO_RANGE_MEMORY,
        IoRangeKind::Pci => XEN_DMOP_IO_RANGE_PCI,
    };
    let op = if map {
        XEN_DMOP_MAP_IO_RANGE_TO_IOREQ_SERVER
    } else {
        XEN_DMOP_UNMAP_IO_RANGE_FROM_IOREQ_SERVER
    };
    with(
        op,
        &DmOpIoreqServerRange {
            id,
            pad: 0,
            type_,
            start: range.start,
            end: range.end,
        },
    )
}

/// `set_ioreq_server_state`.
pub fn set_ioreq_server_state(id: IoServId, enabled: bool) -> XenDmOp {
    with(
        XEN_DMOP_SET_IOREQ_SERVER_STATE,
        &DmOpSetIoreqServerState {
            id,
            enabled: u8::from(enabled),
            pad: 0,
        },
    )
}

/// `destroy_ioreq_server`.
pub fn destroy_ioreq_server(id: IoServId) -> XenDmOp {
    with(
        XEN_DMOP_DESTROY_IOREQ_SERVER,
        &DmOpDestroyIoreqServer { id, pad: 0 },
    )
}

/// `inject_msi`.
pub fn inject_msi(addr: u64, data: u32) -> XenDmOp {
    with(XEN_DMOP_INJECT_MSI, &DmOpInjectMsi { data, pad: 0, addr })
}

/// `set_pci_intx_level`.
pub fn set_pci_intx_level(domain: u16, bus: u8, device: u8, intx: u8, level: u8) -> XenDmOp {
    with(
        XEN_DMOP_SET_PCI_INTX_LEVEL,
        &DmOpSetPciIntxLevel {
            domain,
            bus,
            device,
            intx,
            level,
        },
    )
}

/// `nr_vcpus` (the hypervisor writes a `u32` into the union).
pub fn nr_vcpus() -> XenDmOp {
    with(XEN_DMOP_NR_VCPUS, &0u32)
}

/// `relocate_memory`.
pub fn relocate_memory(src_gfn: u64, dst_gfn: u64, size: u32) -> XenDmOp {
    with(
        XEN_DMOP_RELOCATE_MEMORY,
        &DmOpRelocateMemory {
            size,
            pad: 0,
            src_gfn,
            dst_gfn,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_land_in_the_union() {
        let op = io_range(
            3,
            IoRange {
                kind: IoRangeKind::Pci,
                start: pci_sbdf(0, 0, 3, 0),
                end: pci_sbdf(0, 0, 3, 0),
            },
            true,
        );
        assert_eq!(op.op, XEN_DMOP_MAP_IO_RANGE_TO_IOREQ_SERVER);
        let r: DmOpIoreqServerRange = result(&op).unwrap();
        assert_eq!(
            (r.id, r.type_, r.start, r.end),
            (3, XEN_DMOP_IO_RANGE_PCI, 0x18, 0x18)
        );
        let op = create_ioreq_server(BufIoreq::Atomic);
        assert_eq!(
            (op.op, op.u[0]),
            (XEN_DMOP_CREATE_IOREQ_SERVER, HVM_IOREQSRV_BUFIOREQ_ATOMIC)
        );
        let op = inject_msi(0xfee0_0000, 0x4041);
        let m: DmOpInjectMsi = result(&op).unwrap();
        assert_eq!((m.addr, m.data), (0xfee0_0000, 0x4041));
        let op = get_ioreq_server_info(7);
        let i: DmOpGetIoreqServerInfo = result(&op).unwrap();
        assert_eq!((i.id, i.flags), (7, XEN_DMOP_NO_GFNS));
        assert_eq!(set_ioreq_server_state(2, true).u[..3], [2, 0, 1]);
        assert_eq!(op.as_bytes().len(), 32);
        let op = relocate_memory(0x10_0000, 0xe_0000, 256);
        let r: DmOpRelocateMemory = result(&op).unwrap();
        assert_eq!(
            (op.op, r.size, r.src_gfn, r.dst_gfn),
            (XEN_DMOP_RELOCATE_MEMORY, 256, 0x10_0000, 0xe_0000)
        );
    }
}
