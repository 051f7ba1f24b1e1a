//! Four vGPUs in one gpu-dd share one renderer: under a saturating 2D load from every guest,
//! each gets its fair share (within 20%) of the renderer's pixels and busy time while all of
//! them have work queued.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::*;
use demu::engine::{opcode, reg, Command, CONTROL_ENABLE, CONTROL_IRQ, REGS_OFFSET};
use zerocopy::IntoBytes;

const RING: u64 = 0x10_0000;
const ENTRIES: u32 = 2048;

/// Guest `g`: BARs, MSI, a mode, and a ring holding `ENTRIES - 1` fills and a fence.
fn load(rig: &Rig, g: usize) -> xen_sim::domain::SimVcpu {
    let drv = Driver {
        cpu: rig.guests[g].vcpu(0).unwrap(),
    };
    drv.enable(FB_BAR, MMIO_BAR);
    let cap = drv.cfg_read(0x34, 1) as u8;
    drv.cfg_write(cap + 4, 4, 0xfee0_0000);
    drv.cfg_write(cap + 12, 2, 0x40 + g as u64);
    drv.cfg_write(cap + 2, 2, 1);
    drv.set_mode(1024, 768, 32);
    let mut ram = rig.guests[g].vcpu(1).unwrap();
    let mut ring = Vec::with_capacity(ENTRIES as usize * 64);
    for i in 0..ENTRIES - 1 {
        let c = Command {
            opcode: opcode::FILL,
            arg: i,
            dst_offset: 0,
            dst_pitch: 4096,
            width: 256,
            height: 128,
            ..Command::default()
        };
        ring.extend_from_slice(c.as_bytes());
    }
    let fence = Command {
        opcode: opcode::FENCE,
        arg: 1,
        ..Command::default()
    };
    ring.extend_from_slice(fence.as_bytes());
    ram.write_ram(RING, &ring).unwrap();
    let w = |r: u64, v: u64| {
        drv.cpu
            .mmio_write(MMIO_BAR + REGS_OFFSET + r, 4, v)
            .unwrap()
    };
    w(reg::RING_LO, RING);
    w(reg::RING_HI, 0);
    w(reg::RING_ENTRIES, ENTRIES.into());
    w(reg::CONTROL, u64::from(CONTROL_ENABLE | CONTROL_IRQ));
    drv.cpu
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_vgpus_under_saturating_load_get_fair_shares() {
    let rig = rig_with(4, 2).await;
    let demus: Vec<_> = (0..4).map(|g| rig.start_demu_for(g, 1)).collect();
    let cpus: Vec<_> = (0..4).map(|g| load(&rig, g)).collect();
    let counters = || -> Vec<_> {
        demus
            .iter()
            .map(|d| d.with(|v, _| v.engine().client().counters()).unwrap())
            .collect()
    };
    // Ring every doorbell, then wait for the first guest to finish. Shares are compared over
    // the window in which all four had work queued: from the last doorbell on (the first
    // guests' head start while the others' doorbells were rung is not the scheduler's doing;
    // on a loaded machine it was worth hundreds of commands).
    for cpu in &cpus {
        cpu.mmio_write(MMIO_BAR + REGS_OFFSET + reg::TAIL, 4, ENTRIES.into())
            .unwrap();
    }
    let start = counters();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiters: Vec<_> = cpus
        .into_iter()
        .enumerate()
        .map(|(g, cpu)| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let irq = cpu.wait_interrupt(Duration::from_secs(60)).unwrap();
                let _ = tx.send((g, irq));
            })
        })
        .collect();
    let (first, irq) = rx.recv_timeout(Duration::from_secs(60)).unwrap();
    assert!(irq.is_some(), "guest {first} finished");
    let shares: Vec<(u64, u64)> = counters()
        .iter()
        .zip(&start)
        .map(|(end, start)| (end.pixels - start.pixels, end.busy_ns - start.busy_ns))
        .collect();
    // The first guest to finish had the largest share when it finished; the others' counters,
    // read a little later, can only have grown since. So each must reach 0.8 of the first's
    // share: a one-sided check that a late reading on a loaded machine cannot fail.
    let Some(&(first_pixels, first_busy)) = shares.get(first) else {
        panic!("guest {first} is one of the four");
    };
    assert!(first_pixels > 0, "the renderer drew in the window");
    for &(pixels, busy_ns) in &shares {
        assert!(
            pixels as f64 >= 0.8 * first_pixels as f64,
            "pixels (and busy ns) per vGPU in the window, guest {first} first: {shares:?}"
        );
        assert!(
            busy_ns as f64 >= 0.8 * first_busy as f64,
            "busy ns (and pixels) per vGPU in the window, guest {first} first: {shares:?}"
        );
    }
    for w in waiters {
        w.join().unwrap();
    }
}
