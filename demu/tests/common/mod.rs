//! The test rig: a simulated host with a GPU driver domain (the test process acts as it) and
//! an HVM guest whose vCPU plays the Linux `bochs` DRM driver's register sequence.

#![allow(dead_code)]

use std::sync::Arc;

use demu::bochs::{Vgpu, VgpuConfig};
use demu::ioreq::Server;
use demu::mux::Renderer;
use demu::runner::{self, Running};
use xen_sim::domain::{SimDeviceModel, SimVcpu};
pub use xen_sim::{Host, SimDomain};

/// The vGPU's PCI function: 00:02.0, where QEMU puts its VGA device.
pub const BDF: u16 = 2 << 3;
/// Where the guest's "firmware" places the BARs.
pub const FB_BAR: u64 = 0xe000_0000;
/// The MMIO BAR.
pub const MMIO_BAR: u64 = 0xe100_0000;
/// Where demu keeps the framebuffer while BAR0 is off (4 GiB, above the guest's RAM).
pub const VRAM_HOME_GFN: u64 = 0x10_0000;

pub type SimVgpu = Vgpu<SimDeviceModel>;

pub struct Rig {
    pub host: Host,
    pub _dir: tempfile::TempDir,
    pub gpu_dd: SimDomain,
    pub guests: Vec<SimDomain>,
    pub renderer: Renderer,
}

pub async fn rig(vcpus: u32) -> Rig {
    rig_with(1, vcpus).await
}

/// A host with `guests` HVM guests of `vcpus` vCPUs, all emulated by one gpu-dd.
pub async fn rig_with(guests: usize, vcpus: u32) -> Rig {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let host = Host::start(&dir.path().join("run")).await.unwrap();
    let gpu_dd = SimDomain::new(host.create_domain("gpu-dd", 64).unwrap());
    let guests = (0..guests)
        .map(|i| {
            let g = SimDomain::new(
                host.create_hvm_domain(&format!("hvm-guest{i}"), 16384, vcpus)
                    .unwrap(),
            );
            host.set_device_model(gpu_dd.domid(), g.domid()).unwrap();
            g
        })
        .collect();
    Rig {
        host,
        _dir: dir,
        gpu_dd,
        guests,
        renderer: Renderer::start().unwrap(),
    }
}

impl Rig {
    /// Starts demu for the first guest's vGPU.
    pub fn start_demu(&self) -> Running<SimVgpu> {
        self.start_demu_for(0, 1)
    }

    /// Starts demu for guest `g`'s vGPU at `BDF` with renderer weight `weight`, deprivileged,
    /// on its own thread.
    pub fn start_demu_for(&self, g: usize, weight: u32) -> Running<SimVgpu> {
        self.start_demu_with(g, weight, true)
    }

    /// As `start_demu_for`, with or without a buffered ioreq ring.
    pub fn start_demu_with(&self, g: usize, weight: u32, buffered: bool) -> Running<SimVgpu> {
        let target = self.guests[g].domid();
        let dm = Arc::new(self.gpu_dd.device_model(target).unwrap());
        let config = VgpuConfig {
            home_gfn: VRAM_HOME_GFN,
            weight,
            queue_limit: 64,
        };
        let vgpu = Vgpu::new(Arc::clone(&dm), BDF, config, &self.renderer).unwrap();
        let evtchn = self.gpu_dd.evtchn().unwrap();
        let server = Server::start(dm, evtchn, target, vgpu, buffered).unwrap();
        server.deprivilege().unwrap();
        runner::spawn(server, &format!("demu-{target}")).unwrap()
    }

    pub fn vcpu(&self, n: u32) -> SimVcpu {
        self.guests[0].vcpu(n).unwrap()
    }
}

/// The guest side: what Linux's PCI core and `bochs` driver do, register by register.
pub struct Driver {
    pub cpu: SimVcpu,
}

pub const DISPI: u64 = MMIO_BAR + 0x500;

impl Driver {
    pub fn cfg_read(&self, reg: u8, size: u32) -> u64 {
        self.cpu.pci_read(BDF, reg, size).unwrap()
    }

    pub fn cfg_write(&self, reg: u8, size: u32, value: u64) {
        self.cpu.pci_write(BDF, reg, size, value).unwrap()
    }

    /// Sizes a 32-bit BAR as the PCI core does (decoding off meanwhile); its size.
    pub fn size_bar(&self, index: u8) -> u64 {
        let reg = 0x10 + 4 * index;
        let command = self.cfg_read(0x04, 2);
        self.cfg_write(0x04, 2, command & !0x3);
        let original = self.cfg_read(reg, 4);
        self.cfg_write(reg, 4, 0xffff_ffff);
        let mask = self.cfg_read(reg, 4) & !0xf;
        self.cfg_write(reg, 4, original);
        self.cfg_write(0x04, 2, command);
        (!mask).wrapping_add(1) & 0xffff_ffff
    }

    /// Places both BARs and turns decoding on.
    pub fn enable(&self, fb: u64, mmio: u64) {
        self.cfg_write(0x10, 4, fb);
        self.cfg_write(0x18, 4, mmio);
        self.cfg_write(0x04, 2, 0x7); // I/O, memory, bus master
    }

    pub fn dispi_read(&self, index: u64) -> u64 {
        self.cpu.mmio_read(DISPI + 2 * index, 2).unwrap()
    }

    pub fn dispi_write(&self, index: u64, value: u64) {
        self.cpu.mmio_write(DISPI + 2 * index, 2, value).unwrap()
    }

    /// `bochs_hw_setmode` of Linux's bochs driver (MMIO flavour).
    pub fn set_mode(&self, xres: u64, yres: u64, bpp: u64) {
        self.cpu.mmio_write(MMIO_BAR + 0x400, 1, 0x20).unwrap(); // unblank (0x3c0)
        self.dispi_write(4, 0);
        self.dispi_write(3, bpp);
        self.dispi_write(1, xres);
        self.dispi_write(2, yres);
        self.dispi_write(5, 0);
        self.dispi_write(6, xres);
        self.dispi_write(7, yres);
        self.dispi_write(8, 0);
        self.dispi_write(9, 0);
        self.dispi_write(4, 0x41); // ENABLED | LFB_ENABLED
    }
}

/// The test pattern: a distinct colour per pixel, as XRGB8888.
pub fn pattern_pixel(x: u32, y: u32) -> (u8, u8, u8) {
    (
        (x & 0xff) as u8,
        (y & 0xff) as u8,
        ((x >> 8) ^ (y >> 8) ^ (x * 7 + y * 3)) as u8,
    )
}

/// The pattern for a `width × height` framebuffer with `stride` bytes per line.
pub fn pattern(width: u32, height: u32, stride: u32) -> Vec<u8> {
    let mut fb = vec![0u8; (stride * height) as usize];
    for y in 0..height {
        for x in 0..width {
            let (r, g, b) = pattern_pixel(x, y);
            let at = (y * stride + x * 4) as usize;
            fb[at..at + 4].copy_from_slice(&[b, g, r, 0]);
        }
    }
    fb
}
