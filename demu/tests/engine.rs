//! The 2D engine from the guest's side: commands in a ring in guest RAM, the doorbell, the
//! fence and its MSI, and the pixels the screenshot shows afterwards; bad commands are
//! refused one by one while the engine keeps working.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::*;
use demu::display;
use demu::engine::{opcode, reg, Command, CONTROL_ENABLE, CONTROL_IRQ, REGS_OFFSET};
use xen_abi::ioreq::{
    Ioreq, IOREQ_TYPE_INVALIDATE, IOREQ_WRITE, STATE_IOREQ_READY, STATE_IORESP_READY,
};
use xen_devicemodel::DeviceModel;
use xen_sim::hv::proto::Interrupt;
use xen_sim::SimDomain;
use zerocopy::{FromBytes, IntoBytes};

const RING: u64 = 0x10_0000;
const ENTRIES: u32 = 64;
const IMAGE: u64 = 0x20_0000;
const MSI_ADDR: u64 = 0xfee0_0000;
const MSI_DATA: u64 = 0x4041;
const STRIDE: u32 = 4096;

struct Guest {
    drv: Driver,
    ram: xen_sim::domain::SimVcpu,
    tail: u32,
}

impl Guest {
    fn engine_write(&self, r: u64, v: u64) {
        self.drv
            .cpu
            .mmio_write(MMIO_BAR + REGS_OFFSET + r, 4, v)
            .unwrap();
    }
    fn engine_read(&self, r: u64) -> u64 {
        self.drv
            .cpu
            .mmio_read(MMIO_BAR + REGS_OFFSET + r, 4)
            .unwrap()
    }
    /// Puts commands in the ring and rings the doorbell.
    fn submit(&mut self, commands: &[Command]) {
        for c in commands {
            let at = RING + u64::from(self.tail % ENTRIES) * 64;
            self.ram.write_ram(at, c.as_bytes()).unwrap();
            self.tail = self.tail.wrapping_add(1);
        }
        self.engine_write(reg::TAIL, self.tail.into());
    }
    fn wait_msi(&self) {
        let irq = self
            .drv
            .cpu
            .wait_interrupt(Duration::from_secs(10))
            .unwrap();
        assert_eq!(
            irq,
            Some(Interrupt::Msi {
                addr: MSI_ADDR,
                data: MSI_DATA as u32
            })
        );
    }
}

fn fill(x: u32, y: u32, w: u32, h: u32, color: u32) -> Command {
    Command {
        opcode: opcode::FILL,
        arg: color,
        dst_offset: y * STRIDE + 4 * x,
        dst_pitch: STRIDE,
        width: w,
        height: h,
        ..Command::default()
    }
}

fn copy(sx: u32, sy: u32, dx: u32, dy: u32, w: u32, h: u32) -> Command {
    Command {
        opcode: opcode::COPY,
        src: u64::from(sy * STRIDE + 4 * sx),
        src_pitch: STRIDE,
        dst_offset: dy * STRIDE + 4 * dx,
        dst_pitch: STRIDE,
        width: w,
        height: h,
        ..Command::default()
    }
}

fn fence(value: u32) -> Command {
    Command {
        opcode: opcode::FENCE,
        arg: value,
        ..Command::default()
    }
}

/// The guest's own model of its screen (XRGB pixels).
struct Model(Vec<u32>);

impl Model {
    fn at(&mut self, x: u32, y: u32) -> &mut u32 {
        &mut self.0[(y * 1024 + x) as usize]
    }
    fn rgb(&self, x: u32, y: u32) -> (u8, u8, u8) {
        let p = self.0[(y * 1024 + x) as usize];
        ((p >> 16) as u8, (p >> 8) as u8, p as u8)
    }
}

async fn setup(rig: &Rig) -> (Guest, Model) {
    let drv = Driver { cpu: rig.vcpu(0) };
    drv.enable(FB_BAR, MMIO_BAR);
    // MSI: the capability the config space lists.
    let cap = drv.cfg_read(0x34, 1) as u8;
    assert_eq!(drv.cfg_read(cap, 1), 0x05);
    drv.cfg_write(cap + 4, 4, MSI_ADDR);
    drv.cfg_write(cap + 8, 4, 0);
    drv.cfg_write(cap + 12, 2, MSI_DATA);
    drv.cfg_write(cap + 2, 2, 1);
    drv.set_mode(1024, 768, 32);
    let mut ram = rig.vcpu(1);
    ram.write_ram(FB_BAR, &pattern(1024, 768, STRIDE)).unwrap();
    let mut model = Model(vec![0; 1024 * 768]);
    for y in 0..768 {
        for x in 0..1024 {
            let (r, g, b) = pattern_pixel(x, y);
            *model.at(x, y) = u32::from(r) << 16 | u32::from(g) << 8 | u32::from(b);
        }
    }
    let guest = Guest { drv, ram, tail: 0 };
    assert_eq!(guest.engine_read(0), u64::from(demu::engine::ENGINE_ID));
    guest.engine_write(reg::RING_LO, RING);
    guest.engine_write(reg::RING_HI, 0);
    guest.engine_write(reg::RING_ENTRIES, ENTRIES.into());
    guest.engine_write(reg::CONTROL, u64::from(CONTROL_ENABLE | CONTROL_IRQ));
    (guest, model)
}

fn assert_screen(demu: &demu::runner::Running<SimVgpu>, model: &Model) {
    let screen = demu.with(|v, _| display::capture(v)).unwrap().unwrap();
    for y in 0..768 {
        for x in 0..1024 {
            assert_eq!(screen.pixel(x, y), Some(model.rgb(x, y)), "({x},{y})");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fill_copy_blit_then_fence_and_msi() {
    let rig = rig(2).await;
    let demu = rig.start_demu();
    let (mut guest, mut model) = setup(&rig).await;

    // A 32x32 image in guest RAM for the blit.
    let image: Vec<u32> = (0..32 * 32).map(|i| 0x0010_0000 * (i % 7) + i).collect();
    guest.ram.write_ram(IMAGE, image.as_bytes()).unwrap();
    let blit = Command {
        opcode: opcode::BLIT,
        src: IMAGE,
        src_pitch: 128,
        dst_offset: 500 * STRIDE + 4 * 700,
        dst_pitch: STRIDE,
        width: 32,
        height: 32,
        ..Command::default()
    };
    guest.submit(&[
        fill(10, 10, 100, 50, 0x00ff_0000),
        copy(0, 0, 500, 300, 64, 64),
        copy(500, 300, 520, 310, 64, 64), // overlapping
        blit,
        fence(7),
    ]);
    guest.wait_msi();
    assert_eq!(guest.engine_read(reg::FENCE), 7);
    assert_eq!(guest.engine_read(reg::HEAD), 5);
    assert_eq!(guest.engine_read(reg::STATUS), 0);

    for y in 10..60 {
        for x in 10..110 {
            *model.at(x, y) = 0x00ff_0000;
        }
    }
    for (sx, sy, dx, dy) in [(0, 0, 500, 300), (500, 300, 520, 310)] {
        let block: Vec<u32> = (0..64)
            .flat_map(|y| (0..64).map(move |x| (x, y)))
            .map(|(x, y)| *model.at(sx + x, sy + y))
            .collect();
        for y in 0..64 {
            for x in 0..64 {
                *model.at(dx + x, dy + y) = block[(y * 64 + x) as usize];
            }
        }
    }
    for y in 0..32 {
        for x in 0..32 {
            *model.at(700 + x, 500 + y) = image[(y * 32 + x) as usize] & 0x00ff_ffff;
        }
    }
    assert_screen(&demu, &model);
    let counters = demu.with(|v, _| v.engine().client().counters()).unwrap();
    assert_eq!(counters.commands, 5);
    assert_eq!(counters.pixels, 100 * 50 + 2 * 64 * 64 + 32 * 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_commands_are_refused_and_the_engine_keeps_going() {
    let rig = rig(1).await;
    let demu = rig.start_demu();
    let (mut guest, model) = setup(&rig).await;
    let past_vram = Command {
        dst_offset: (16 << 20) - 8,
        ..fill(0, 0, 4, 1, 0xffff_ffff)
    };
    let overflowing = Command {
        dst_pitch: u32::MAX,
        height: 3,
        ..fill(0, 0, 4, 1, 0xffff_ffff)
    };
    let unknown = Command {
        opcode: 99,
        ..Command::default()
    };
    let blit_from_mmio = Command {
        opcode: opcode::BLIT,
        src: MMIO_BAR,
        src_pitch: 16,
        dst_offset: 0,
        dst_pitch: STRIDE,
        width: 4,
        height: 1,
        ..Command::default()
    };
    let blit_past_ram = Command {
        src: 16384 * 4096 - 8,
        ..blit_from_mmio
    };
    guest.submit(&[
        past_vram,
        overflowing,
        unknown,
        blit_from_mmio,
        blit_past_ram,
        fence(9),
    ]);
    guest.wait_msi();
    assert_eq!(guest.engine_read(reg::FENCE), 9);
    assert_eq!(guest.engine_read(reg::ERRORS), 5);
    let status = guest.engine_read(reg::STATUS);
    assert_eq!(status & 1, 1);
    assert_eq!(status >> 8, u64::from(demu::engine::error::BAD_DMA));
    guest.engine_write(reg::STATUS, 1);
    assert_eq!(guest.engine_read(reg::STATUS), 0);
    assert_screen(&demu, &model);

    // A tail more than a ring ahead is refused; the engine still takes good work.
    guest.engine_write(reg::TAIL, u64::from(guest.tail + ENTRIES + 1));
    assert_eq!(
        guest.engine_read(reg::STATUS) >> 8,
        u64::from(demu::engine::error::BAD_TAIL)
    );
    guest.submit(&[fence(10)]);
    guest.wait_msi();
    assert_eq!(guest.engine_read(reg::FENCE), 10);

    // Without bus mastering the engine reads nothing.
    guest.drv.cfg_write(0x04, 2, 0x3);
    guest.submit(&[fence(11)]);
    assert_eq!(
        guest.engine_read(reg::STATUS) >> 8,
        u64::from(demu::engine::error::NO_BUS_MASTER)
    );
    assert_eq!(guest.engine_read(reg::FENCE), 10);
    guest.drv.cfg_write(0x04, 2, 0x7);
    guest.engine_write(reg::TAIL, u64::from(guest.tail));
    guest.wait_msi();
    assert_eq!(guest.engine_read(reg::FENCE), 11);
}

/// Xen's INVALIDATE (the guest gave memory back): the engine maps its ring afresh, so a ring
/// page the guest has replaced is read from the new page, not from the one it gave away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_invalidate_the_engine_reads_the_ring_page_the_guest_has_now() {
    let rig = rig(2).await;
    let demu = rig.start_demu();
    let (mut guest, _model) = setup(&rig).await;
    guest.submit(&[fill(0, 0, 8, 8, 0x0011_2233), fence(1)]);
    guest.wait_msi();
    assert_eq!(guest.engine_read(reg::FENCE), 1);

    // The ring's page is swapped (what ballooning it out and back in does): the old page
    // moves out of the guest's RAM, a fresh one takes its gfn.
    let target = rig.guests[0].domid();
    let dm = rig.gpu_dd.device_model(target).unwrap();
    dm.relocate_memory(RING >> 12, 0x4_0000, 1).unwrap();
    dm.populate_ram(&[RING >> 12]).unwrap();
    // Xen tells every ioreq server of the guest (count 0, as `send_invalidate_req` sends it).
    let control = SimDomain::new(rig.host.dom0().clone()).control().unwrap();
    let id = demu.server_id();
    let probe = control
        .inject_ioreq(target, id, 0, [0; 32], Duration::from_millis(1))
        .unwrap();
    let vp_eport = Ioreq::read_from_bytes(&probe).unwrap().vp_eport;
    let invalidate = Ioreq {
        addr: 0,
        data: u64::MAX,
        count: 0,
        size: 4,
        vp_eport,
        _pad0: 0,
        flags: Ioreq::pack_flags(STATE_IOREQ_READY, false, IOREQ_WRITE, false),
        type_: IOREQ_TYPE_INVALIDATE,
    };
    let out = control
        .inject_ioreq(
            target,
            id,
            0,
            invalidate.as_bytes().try_into().unwrap(),
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(
        Ioreq::read_from_bytes(&out).unwrap().state(),
        STATE_IORESP_READY
    );

    guest.submit(&[fill(0, 0, 8, 8, 0x0044_5566), fence(2)]);
    guest.wait_msi();
    assert_eq!(guest.engine_read(reg::FENCE), 2);
    assert_eq!(guest.engine_read(reg::ERRORS), 0);
    let screen = demu.with(|v, _| display::capture(v)).unwrap().unwrap();
    assert_eq!(screen.pixel(3, 3), Some((0x44, 0x55, 0x66)));
    assert_eq!(demu.with(|_, c| c.malformed).unwrap(), 0);
}
