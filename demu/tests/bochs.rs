//! The Linux bochs driver's sequence against demu on the simulated host: PCI probe, BAR
//! sizing and placement, the DISPI registers through ports and MMIO, a 1024x768x32 mode, a
//! pattern drawn in the framebuffer (guest RAM behind BAR0), and screenshots that show it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::*;
use demu::display;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bochs_driver_sets_a_mode_and_the_screenshot_shows_its_pattern() {
    let rig = rig(2).await;
    let demu = rig.start_demu();
    let drv = Driver { cpu: rig.vcpu(0) };

    // PCI probe: our function answers, its neighbours do not.
    assert_eq!(drv.cfg_read(0x00, 4), 0x1111_1234);
    assert_eq!(drv.cfg_read(0x08, 4) >> 8, 0x03_00_00, "VGA class");
    assert_eq!(
        drv.cpu.pci_read(3 << 3, 0x00, 4).unwrap(),
        0xffff_ffff,
        "unclaimed function"
    );
    assert_eq!(drv.size_bar(0), 16 << 20);
    assert_eq!(drv.size_bar(2), 4096);
    assert_eq!(drv.size_bar(1), 0, "BAR1 absent");
    drv.enable(FB_BAR, MMIO_BAR);

    // The DISPI interface through MMIO and through the legacy ports.
    assert_eq!(drv.dispi_read(0), 0xb0c5);
    assert_eq!(drv.dispi_read(10), 256, "16 MiB in 64 KiB units");
    assert_eq!(
        drv.cpu.mmio_read(MMIO_BAR + 0x600, 4).unwrap(),
        8,
        "qext size"
    );
    drv.cpu.pio_write(0x1ce, 2, 0).unwrap();
    assert_eq!(drv.cpu.pio_read(0x1cf, 2).unwrap(), 0xb0c5);
    drv.dispi_write(4, 0x02); // GETCAPS
    assert_eq!(
        (drv.dispi_read(1), drv.dispi_read(2), drv.dispi_read(3)),
        (2560, 1600, 32)
    );
    // Unclaimed ports and MMIO read all-ones.
    assert_eq!(drv.cpu.pio_read(0x80, 1).unwrap(), 0xff);
    assert_eq!(
        drv.cpu.mmio_read(MMIO_BAR + 0x1000, 4).unwrap(),
        0xffff_ffff
    );

    drv.set_mode(1024, 768, 32);
    let fb = pattern(1024, 768, 4096);
    let mut cpu = rig.vcpu(1);
    cpu.write_ram(FB_BAR, &fb).unwrap();

    let screen = demu.with(|v, _| display::capture(v)).unwrap().unwrap();
    assert_eq!((screen.width, screen.height), (1024, 768));
    for y in 0..768 {
        for x in 0..1024 {
            assert_eq!(screen.pixel(x, y), Some(pattern_pixel(x, y)), "({x},{y})");
        }
    }
    // The PNG holds exactly those pixels.
    let mut png_bytes = Vec::new();
    screen.write_png(&mut png_bytes).unwrap();
    let mut reader = png::Decoder::new(&png_bytes[..]).read_info().unwrap();
    let mut decoded = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut decoded).unwrap();
    assert_eq!((info.width, info.height), (1024, 768));
    assert_eq!(&decoded[..info.buffer_size()], &screen.rgb[..]);

    // Panning: the visible window starts 100 lines down.
    drv.dispi_write(7, 1024);
    drv.dispi_write(9, 100);
    let panned = demu.with(|v, _| display::capture(v)).unwrap().unwrap();
    assert_eq!(panned.pixel(5, 0), screen.pixel(5, 100));
    assert_eq!(panned.pixel(5, 667), screen.pixel(5, 767));
    assert_eq!(panned.pixel(5, 668), Some((0, 0, 0)), "below the pattern");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_framebuffer_follows_bar0_and_the_mmio_bar_moves() {
    let rig = rig(1).await;
    let demu = rig.start_demu();
    let mut drv = Driver { cpu: rig.vcpu(0) };
    drv.enable(FB_BAR, MMIO_BAR);
    drv.cpu.write_ram(FB_BAR + 8, &[1, 2, 3, 4]).unwrap();
    // Decoding off: the framebuffer leaves the BAR (no RAM there any more).
    drv.cfg_write(0x04, 2, 0);
    assert!(drv.cpu.read_ram(FB_BAR, 16).is_err());
    assert_eq!(drv.cpu.mmio_read(DISPI, 2).unwrap(), 0xffff, "MMIO BAR off");
    // Placed elsewhere: the same memory, and the registers at the new MMIO address.
    let (fb2, mmio2) = (0xd000_0000, 0xd100_0000);
    drv.enable(fb2, mmio2);
    assert_eq!(drv.cpu.read_ram(fb2 + 8, 4).unwrap(), vec![1, 2, 3, 4]);
    assert_eq!(drv.cpu.mmio_read(mmio2 + 0x500, 2).unwrap(), 0xb0c5);
    assert_eq!(drv.cpu.mmio_read(DISPI, 2).unwrap(), 0xffff, "old address");
    let at = demu.with(|v, _| v.vram_gfn()).unwrap();
    assert_eq!(at, fb2 >> 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn banked_window_writes_go_through_the_buffered_ring() {
    let counters = banked_window_writes(true).await;
    assert!(counters.buffered > 0, "{counters:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_buffered_ring_banked_window_writes_are_synchronous() {
    let counters = banked_window_writes(false).await;
    assert_eq!(counters.buffered, 0, "{counters:?}");
    assert!(counters.requests >= 600, "{counters:?}");
}

/// Writes 600 words through bank 3 of the VGA window and checks they land; the counters.
async fn banked_window_writes(buffered: bool) -> demu::ioreq::Counters {
    let rig = rig(1).await;
    let demu = rig.start_demu_with(0, 1, buffered);
    let drv = Driver { cpu: rig.vcpu(0) };
    drv.enable(FB_BAR, MMIO_BAR);
    drv.dispi_write(5, 3); // bank 3: framebuffer bytes 192 KiB..256 KiB
    for i in 0..600u64 {
        // More writes than the ring holds: the hypervisor falls back to synchronous requests
        // when it is full. 8-byte writes take two slots.
        drv.cpu
            .mmio_write(0xa_0000 + 8 * i, 8, 0x0102_0304_0506_0708 + i)
            .unwrap();
    }
    // A read is synchronous, so it is answered after every buffered write before it.
    assert_eq!(
        drv.cpu.mmio_read(0xa_0000 + 8 * 599, 8).unwrap(),
        0x0102_0304_0506_0708 + 599
    );
    let (first, counters) = demu
        .with(|v, c| {
            let vram = demu::mux::Surface::ptr(v.vram());
            // SAFETY: bank 3 starts 192 KiB into the 16 MiB framebuffer mapping.
            let first = unsafe { vram.add(3 << 16).cast::<u64>().read_volatile() };
            (first, c)
        })
        .unwrap();
    assert_eq!(first, 0x0102_0304_0506_0708);
    assert_eq!(counters.malformed, 0);
    counters
}
