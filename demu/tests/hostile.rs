//! The emulator items of `shared/hostile-frontends.md` (22–24): malformed requests written
//! straight into demu's ioreq slot (bad sizes and counts, `data_is_ptr` outside guest RAM,
//! addresses outside or straddling what demu claimed, unknown types, slots that are not
//! READY) and a corrupt buffered ring. demu answers each safely and keeps serving, and a
//! second vGPU in the same gpu-dd keeps working throughout.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use xen_abi::ioreq::{
    BufIoreq, Ioreq, IOREQ_READ, IOREQ_TYPE_COPY, IOREQ_TYPE_INVALIDATE, IOREQ_TYPE_PCI_CONFIG,
    IOREQ_TYPE_PIO, IOREQ_TYPE_TIMEOFFSET, IOREQ_WRITE, STATE_IOREQ_INPROCESS, STATE_IOREQ_READY,
    STATE_IORESP_READY,
};
use zerocopy::{FromBytes, IntoBytes};

struct Req {
    type_: u8,
    addr: u64,
    data: u64,
    size: u32,
    count: u32,
    read: bool,
    ptr: bool,
    df: bool,
    state: u8,
}

impl Default for Req {
    fn default() -> Self {
        Self {
            type_: IOREQ_TYPE_PIO,
            addr: 0x1ce,
            data: 0,
            size: 2,
            count: 1,
            read: true,
            ptr: false,
            df: false,
            state: STATE_IOREQ_READY,
        }
    }
}

impl Req {
    fn raw(&self, vp_eport: u32) -> [u8; 32] {
        let dir = if self.read { IOREQ_READ } else { IOREQ_WRITE };
        let r = Ioreq {
            addr: self.addr,
            data: self.data,
            count: self.count,
            size: self.size,
            vp_eport,
            _pad0: 0,
            flags: Ioreq::pack_flags(self.state, self.ptr, dir, self.df),
            type_: self.type_,
        };
        r.as_bytes().try_into().unwrap()
    }
}

/// A good guest hammering its own vGPU from a thread; counts checked round trips.
fn good_traffic(
    rig: &Rig,
    g: usize,
    stop: Arc<AtomicBool>,
) -> (std::thread::JoinHandle<()>, Arc<AtomicU64>) {
    let drv = Driver {
        cpu: rig.guests[g].vcpu(0).unwrap(),
    };
    drv.enable(FB_BAR, MMIO_BAR);
    let done = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&done);
    let thread = std::thread::spawn(move || {
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            assert_eq!(drv.dispi_read(0), 0xb0c5);
            drv.dispi_write(1, 640 + (i % 64));
            assert_eq!(drv.dispi_read(1), 640 + (i % 64));
            assert_eq!(drv.cfg_read(0x00, 4), 0x1111_1234);
            i += 1;
            counted.store(i, Ordering::Relaxed);
        }
    });
    (thread, done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_ioreqs_are_answered_safely_and_nothing_else_is_disturbed() {
    let rig = rig_with(2, 1).await;
    let bad = rig.start_demu_for(0, 1);
    let good = rig.start_demu_for(1, 1);
    let stop = Arc::new(AtomicBool::new(false));
    let (traffic, rounds) = good_traffic(&rig, 1, Arc::clone(&stop));

    let victim = Driver { cpu: rig.vcpu(0) };
    victim.enable(FB_BAR, MMIO_BAR);
    let target = rig.guests[0].domid();
    let id = bad.server_id();
    let control = SimDomain::new(rig.host.dom0().clone()).control().unwrap();
    // vCPU 0's port, as the hypervisor wrote it in the slot.
    let probe = control
        .inject_ioreq(target, id, 0, [0; 32], Duration::from_millis(1))
        .unwrap();
    let vp_eport = Ioreq::read_from_bytes(&probe).unwrap().vp_eport;
    let inject = |r: Req, wait_ms: u64| {
        let out = control
            .inject_ioreq(
                target,
                id,
                0,
                r.raw(vp_eport),
                Duration::from_millis(wait_ms),
            )
            .unwrap();
        Ioreq::read_from_bytes(&out).unwrap()
    };
    let answered = |r: Req| {
        let out = inject(r, 5000);
        assert_eq!(out.state(), STATE_IORESP_READY, "answered");
        out.data
    };
    let ones32 = 0xffff_ffffu64;

    // Item 22: sizes, counts, types, addresses.
    assert_eq!(
        answered(Req {
            type_: 9,
            size: 4,
            ..Req::default()
        }),
        ones32
    );
    assert_eq!(
        answered(Req {
            size: 3,
            ..Req::default()
        }),
        0xff_ffff
    );
    assert_eq!(
        answered(Req {
            size: 16,
            ..Req::default()
        }),
        u64::MAX
    );
    assert_eq!(
        answered(Req {
            size: 0,
            ..Req::default()
        }),
        u64::MAX
    );
    assert_eq!(
        answered(Req {
            count: 0,
            size: 4,
            ..Req::default()
        }),
        ones32
    );
    assert_eq!(
        answered(Req {
            addr: 0x80,
            size: 1,
            ..Req::default()
        }),
        0xff
    );
    let straddle = Req {
        type_: IOREQ_TYPE_COPY,
        addr: MMIO_BAR + 4094,
        size: 4,
        ..Req::default()
    };
    assert_eq!(answered(straddle), ones32);
    let huge_rep = Req {
        type_: IOREQ_TYPE_COPY,
        addr: MMIO_BAR + 0x500,
        size: 4,
        count: u32::MAX,
        ptr: true,
        data: 0x1000,
        ..Req::default()
    };
    answered(huge_rep);
    let mut ram = rig.vcpu(0);
    assert_eq!(
        ram.read_ram(0x1000, 64).unwrap(),
        vec![0; 64],
        "nothing written"
    );
    let rep_outside_ram = Req {
        type_: IOREQ_TYPE_COPY,
        addr: 0xa_0000,
        size: 4,
        count: 16,
        ptr: true,
        data: 0xf000_0000,
        ..Req::default()
    };
    answered(rep_outside_ram);
    let rep_underflow = Req {
        type_: IOREQ_TYPE_COPY,
        addr: 0xa_0000 + 64,
        size: 4,
        count: 8,
        ptr: true,
        df: true,
        data: 0x10,
        ..Req::default()
    };
    answered(rep_underflow);
    let other_function = Req {
        type_: IOREQ_TYPE_PCI_CONFIG,
        addr: (u64::from(BDF + 1) << 32),
        size: 4,
        ..Req::default()
    };
    assert_eq!(answered(other_function), ones32);
    let wide_config = Req {
        type_: IOREQ_TYPE_PCI_CONFIG,
        addr: u64::from(BDF) << 32,
        size: 8,
        ..Req::default()
    };
    assert_eq!(answered(wide_config), u64::MAX);
    let config_end = Req {
        type_: IOREQ_TYPE_PCI_CONFIG,
        addr: (u64::from(BDF) << 32) | 0xfe,
        size: 4,
        ..Req::default()
    };
    assert_eq!(answered(config_end), ones32);
    // Xen's broadcasts (count 0, as `send_invalidate_req` sends them) are not malformed.
    let refused = bad.with(|_, c| c.malformed).unwrap();
    for type_ in [IOREQ_TYPE_TIMEOFFSET, IOREQ_TYPE_INVALIDATE] {
        answered(Req {
            type_,
            read: false,
            count: 0,
            ..Req::default()
        });
    }
    assert_eq!(bad.with(|_, c| c.malformed).unwrap(), refused);
    // Item 23: a slot that is not READY is left alone.
    for state in [STATE_IOREQ_INPROCESS, 0x0f, 0] {
        let out = inject(
            Req {
                state,
                ..Req::default()
            },
            150,
        );
        assert_eq!(out.state(), state, "untouched");
    }

    // A well-formed rep write from guest RAM into the banked window still works.
    let words: Vec<u32> = (0..16).map(|i| 0x0a0b_0000 + i).collect();
    ram.write_ram(0x5000, words.as_bytes()).unwrap();
    answered(Req {
        type_: IOREQ_TYPE_COPY,
        addr: 0xa_0000,
        size: 4,
        count: 16,
        ptr: true,
        read: false,
        data: 0x5000,
        ..Req::default()
    });
    assert_eq!(victim.cpu.mmio_read(0xa_0000 + 60, 4).unwrap(), 0x0a0b_000f);

    // A corrupt buffered ring: pointers a long way apart, a read on a write-only ring.
    // Each is seen (and counted) before the next is injected.
    let refused_before = |n: u64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while bad.with(|_, c| c.malformed).unwrap() < n && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        bad.with(|_, c| c.malformed).unwrap()
    };
    control
        .inject_buffered(target, id, vec![], Some(0), 5000)
        .unwrap();
    assert_eq!(refused_before(refused + 1), refused + 1);
    let read_entry = BufIoreq::pack(IOREQ_TYPE_COPY, IOREQ_READ, 2, 0xa_0000);
    control
        .inject_buffered(target, id, vec![(0, u64::from(read_entry))], Some(0), 1)
        .unwrap();
    assert_eq!(refused_before(refused + 2), refused + 2);
    // The guest's own buffered writes still land.
    victim.cpu.mmio_write(0xa_0100, 4, 0x1234_5678).unwrap();
    assert_eq!(victim.cpu.mmio_read(0xa_0100, 4).unwrap(), 0x1234_5678);

    // demu serves the victim as before; its counters saw every malformed request.
    assert_eq!(victim.dispi_read(0), 0xb0c5);
    let counters = bad.with(|_, c| c).unwrap();
    assert_eq!(counters.malformed, refused + 2, "{counters:?}");
    let before = rounds.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        rounds.load(Ordering::Relaxed) > before,
        "the other guest kept going"
    );
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();
    assert_eq!(good.with(|_, c| c.malformed).unwrap(), 0);
}
