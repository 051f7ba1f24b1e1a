//! The vGPU's display device, compatible with the Bochs/QEMU "std VGA" programming model that
//! Linux's `bochs` DRM driver and OVMF drive: PCI 1234:1111 (class VGA), the VBE DISPI
//! registers at ports 0x1ce/0x1cf and again in the MMIO BAR (BAR2, QEMU's layout: VGA ports at
//! 0x400, DISPI registers at 0x500, the "qext" block at 0x600), and a 16 MiB framebuffer BAR
//! (BAR0).
//!
//! The framebuffer is guest memory: demu populates it at a home gfn above the guest's RAM,
//! maps it once (foreign mapping, so it stays reachable wherever it is placed), and moves it
//! behind BAR0 with `relocate_memory` whenever the guest places BAR0 with memory decoding on
//! (and home again when decoding goes off), as QEMU does for Xen guests.

use std::sync::Arc;

use xen_abi::PAGE_SIZE;
use xen_devicemodel::{DeviceModel, IoRange, IoRangeKind};

use crate::engine::{Engine, Interrupt as EngineIrq, REGS_BYTES, REGS_OFFSET as ENGINE_REGS};
use crate::ioreq::{Access, Device, Space};
use crate::mux::{Renderer, SharedSurface, Surface};
use crate::pci::{Bar, BarKind, ConfigSpace, Identity, COMMAND_INTX_DISABLE, COMMAND_MASTER};

/// Framebuffer bytes.
pub const VRAM_BYTES: usize = 16 << 20;
/// The MMIO BAR's size.
pub const MMIO_BAR_BYTES: u32 = 4096;
/// Largest mode.
pub const MAX_XRES: u16 = 2560;
/// Largest mode.
pub const MAX_YRES: u16 = 1600;
/// Deepest mode.
pub const MAX_BPP: u16 = 32;
/// VBE index port.
pub const VBE_INDEX_PORT: u16 = 0x1ce;
/// VBE data port.
pub const VBE_DATA_PORT: u16 = 0x1cf;

/// DISPI register indices (`VBE_DISPI_INDEX_*`).
pub mod dispi {
    /// Interface version.
    pub const ID: u16 = 0;
    /// Width.
    pub const XRES: u16 = 1;
    /// Height.
    pub const YRES: u16 = 2;
    /// Bits per pixel.
    pub const BPP: u16 = 3;
    /// Enable flags.
    pub const ENABLE: u16 = 4;
    /// Bank (banked mode).
    pub const BANK: u16 = 5;
    /// Virtual width (pixels per line).
    pub const VIRT_WIDTH: u16 = 6;
    /// Virtual height.
    pub const VIRT_HEIGHT: u16 = 7;
    /// Panning, x.
    pub const X_OFFSET: u16 = 8;
    /// Panning, y.
    pub const Y_OFFSET: u16 = 9;
    /// Framebuffer size in 64 KiB units.
    pub const VIDEO_MEMORY_64K: u16 = 10;
    /// `ENABLE`: display on.
    pub const ENABLED: u16 = 0x01;
    /// `ENABLE`: XRES/YRES/BPP read the maxima.
    pub const GETCAPS: u16 = 0x02;
    /// `ENABLE`: 8-bit DAC.
    pub const DAC_8BIT: u16 = 0x20;
    /// `ENABLE`: linear framebuffer.
    pub const LFB_ENABLED: u16 = 0x40;
    /// `ENABLE`: keep the framebuffer's contents.
    pub const NOCLEARMEM: u16 = 0x80;
    /// The newest interface id.
    pub const ID5: u16 = 0xb0c5;
}

const REGS: usize = 11;
/// The banked window of legacy VGA memory: 64 KiB of the framebuffer chosen by `BANK`.
const BANK_WINDOW: u64 = 0xa_0000;
const BANK_BYTES: u64 = 0x1_0000;
const MMIO_VGA: u64 = 0x400;
const MMIO_DISPI: u64 = 0x500;
const MMIO_QEXT: u64 = 0x600;
const QEXT_SIZE: u32 = 8;
const QEXT_LITTLE_ENDIAN: u32 = 0xbebe_bebe;

/// The scanout as the guest programmed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    /// Visible width in pixels.
    pub width: u32,
    /// Visible height.
    pub height: u32,
    /// Bits per pixel (8, 15, 16, 24 or 32).
    pub bpp: u32,
    /// Bytes per line.
    pub stride: u32,
    /// Byte offset of the visible top-left pixel (panning).
    pub offset: u32,
}

/// How to build a vGPU.
#[derive(Debug, Clone, Copy)]
pub struct VgpuConfig {
    /// First gfn of the framebuffer's home while BAR0 does not decode (above the guest's RAM).
    pub home_gfn: u64,
    /// Its share of the renderer relative to other vGPUs (at least 1).
    pub weight: u32,
    /// Most 2D commands it may have queued at the renderer.
    pub queue_limit: usize,
}

impl Default for VgpuConfig {
    fn default() -> Self {
        Self {
            home_gfn: 0x10_0000,
            weight: 1,
            queue_limit: 256,
        }
    }
}

/// The display device.
pub struct Vgpu<D: DeviceModel> {
    dm: Arc<D>,
    bdf: u16,
    config: ConfigSpace,
    index: u16,
    regs: [u16; REGS],
    vga: [u8; 0x20],
    qext_endian: u32,
    vram: Arc<SharedSurface<D::Foreign>>,
    engine: Engine<D>,
    home_gfn: u64,
    vram_gfn: u64,
}

fn vram_pages() -> u64 {
    (VRAM_BYTES / PAGE_SIZE) as u64
}

impl<D: DeviceModel + 'static> Vgpu<D> {
    /// Builds the device at PCI `bdf`, allocates its framebuffer and registers it with the
    /// renderer.
    pub fn new(
        dm: Arc<D>,
        bdf: u16,
        settings: VgpuConfig,
        renderer: &Renderer,
    ) -> xen_devicemodel::Result<Self> {
        let gfns: Vec<u64> = (0..vram_pages()).map(|i| settings.home_gfn + i).collect();
        dm.populate_ram(&gfns)?;
        let vram = Arc::new(SharedSurface(dm.map_foreign(&gfns, true)?));
        let client = renderer.client(
            Arc::clone(&vram) as Arc<dyn Surface>,
            settings.weight,
            settings.queue_limit,
        );
        let engine = Engine::new(Arc::clone(&dm), client, VRAM_BYTES as u64);
        let config = ConfigSpace::new(
            Identity {
                vendor: 0x1234,
                device: 0x1111,
                revision: 2,
                class: 0x03_00_00,
                subsystem_vendor: 0x1af4,
                subsystem: 0x1100,
            },
            &[
                (
                    0,
                    Bar {
                        kind: BarKind::Memory32 { prefetchable: true },
                        size: VRAM_BYTES as u32,
                    },
                ),
                (
                    2,
                    Bar {
                        kind: BarKind::Memory32 {
                            prefetchable: false,
                        },
                        size: MMIO_BAR_BYTES,
                    },
                ),
            ],
        );
        let mut vgpu = Self {
            dm,
            bdf,
            config,
            index: 0,
            regs: [0; REGS],
            vga: [0; 0x20],
            qext_endian: QEXT_LITTLE_ENDIAN,
            vram,
            engine,
            home_gfn: settings.home_gfn,
            vram_gfn: settings.home_gfn,
        };
        vgpu.set_reg(dispi::ID, dispi::ID5);
        vgpu.set_reg(dispi::VIDEO_MEMORY_64K, (VRAM_BYTES >> 16) as u16);
        Ok(vgpu)
    }

    fn set_reg(&mut self, index: u16, value: u16) {
        if let Some(r) = self.regs.get_mut(usize::from(index)) {
            *r = value;
        }
    }

    fn reg(&self, index: u16) -> u16 {
        self.regs.get(usize::from(index)).copied().unwrap_or(0)
    }

    /// The PCI configuration space.
    pub fn config(&self) -> &ConfigSpace {
        &self.config
    }

    /// The framebuffer (a mapping of guest memory).
    pub fn vram(&self) -> &SharedSurface<D::Foreign> {
        &self.vram
    }

    /// The 2D engine.
    pub fn engine(&self) -> &Engine<D> {
        &self.engine
    }

    /// How a completed fence interrupts the guest now.
    fn interrupt(&self) -> EngineIrq {
        if let Some((addr, data)) = self.config.msi() {
            return EngineIrq::Msi(addr, data);
        }
        if self.config.command() & COMMAND_INTX_DISABLE != 0 {
            return EngineIrq::None;
        }
        EngineIrq::Intx {
            bus: (self.bdf >> 8) as u8,
            device: ((self.bdf >> 3) & 0x1f) as u8,
        }
    }

    fn bus_master(&self) -> bool {
        self.config.command() & COMMAND_MASTER != 0
    }

    /// Where the framebuffer is in the guest's physical memory now (first gfn).
    pub fn vram_gfn(&self) -> u64 {
        self.vram_gfn
    }

    /// The device-model handle.
    pub fn device_model(&self) -> &Arc<D> {
        &self.dm
    }

    /// The current mode, if the display is enabled with a mode that fits the framebuffer.
    pub fn mode(&self) -> Option<Mode> {
        let enable = self.reg(dispi::ENABLE);
        if enable & dispi::ENABLED == 0 {
            return None;
        }
        let (width, height) = (
            u32::from(self.reg(dispi::XRES)),
            u32::from(self.reg(dispi::YRES)),
        );
        let bpp = u32::from(self.reg(dispi::BPP));
        if width == 0 || height == 0 || width > MAX_XRES.into() || height > MAX_YRES.into() {
            return None;
        }
        let bytes = match bpp {
            8 => 1,
            15 | 16 => 2,
            24 => 3,
            32 => 4,
            _ => return None,
        };
        let virt_width = u32::from(self.reg(dispi::VIRT_WIDTH)).max(width);
        let stride = virt_width * bytes;
        let offset = u32::from(self.reg(dispi::Y_OFFSET)) * stride
            + u32::from(self.reg(dispi::X_OFFSET)) * bytes;
        let end = u64::from(offset)
            + u64::from(height - 1) * u64::from(stride)
            + u64::from(width * bytes);
        (end <= VRAM_BYTES as u64).then_some(Mode {
            width,
            height,
            bpp,
            stride,
            offset,
        })
    }

    fn dispi_read(&self, index: u16) -> u16 {
        let caps = self.reg(dispi::ENABLE) & dispi::GETCAPS != 0;
        match index {
            dispi::XRES if caps => MAX_XRES,
            dispi::YRES if caps => MAX_YRES,
            dispi::BPP if caps => MAX_BPP,
            dispi::VIRT_HEIGHT => {
                let bytes = match self.reg(dispi::BPP) {
                    8 => 1,
                    15 | 16 => 2,
                    24 => 3,
                    _ => 4,
                };
                let line = u32::from(
                    self.reg(dispi::VIRT_WIDTH)
                        .max(self.reg(dispi::XRES))
                        .max(1),
                ) * bytes;
                (VRAM_BYTES as u32 / line).min(u32::from(u16::MAX)) as u16
            }
            _ => self.reg(index),
        }
    }

    fn dispi_write(&mut self, index: u16, value: u16) {
        match index {
            dispi::ID => {
                if (0xb0c0..=dispi::ID5).contains(&value) {
                    self.set_reg(dispi::ID, value);
                }
            }
            dispi::ENABLE => {
                let was = self.reg(dispi::ENABLE) & dispi::ENABLED != 0;
                self.set_reg(dispi::ENABLE, value);
                if value & dispi::ENABLED != 0 && !was {
                    self.set_reg(dispi::X_OFFSET, 0);
                    self.set_reg(dispi::Y_OFFSET, 0);
                    if value & dispi::NOCLEARMEM == 0 {
                        self.clear_visible();
                    }
                }
            }
            dispi::VIDEO_MEMORY_64K | dispi::VIRT_HEIGHT => {}
            i => self.set_reg(i, value),
        }
    }

    fn clear_visible(&mut self) {
        let Some(mode) = self.mode() else { return };
        let len = (mode.stride as usize * mode.height as usize).min(self.vram.len());
        // SAFETY: `len <= vram.len()`; the framebuffer is guest memory, written bytewise.
        unsafe { std::ptr::write_bytes(self.vram.ptr(), 0, len) };
    }

    /// A VGA register port (0x3c0–0x3df).
    fn vga_read(&self, port: u64) -> u8 {
        self.vga
            .get(port.wrapping_sub(0x3c0) as usize)
            .copied()
            .unwrap_or(0xff)
    }

    fn vga_write(&mut self, port: u64, value: u8) {
        if let Some(r) = self.vga.get_mut(port.wrapping_sub(0x3c0) as usize) {
            *r = value;
        }
    }

    fn mmio_read(&self, offset: u64, size: u32) -> u64 {
        match offset {
            o if (MMIO_VGA..MMIO_VGA + 0x20).contains(&o) => (0..u64::from(size))
                .fold(0, |v, i| {
                    v | u64::from(self.vga_read(0x3c0 + o - MMIO_VGA + i)) << (8 * i)
                }),
            o if (MMIO_DISPI..MMIO_DISPI + 2 * REGS as u64).contains(&o) && size == 2 => {
                self.dispi_read(((o - MMIO_DISPI) / 2) as u16).into()
            }
            o if o == MMIO_QEXT && size == 4 => QEXT_SIZE.into(),
            o if (ENGINE_REGS..ENGINE_REGS + REGS_BYTES).contains(&o) && size == 4 => {
                self.engine.read(o - ENGINE_REGS).into()
            }
            o if o == MMIO_QEXT + 4 && size == 4 => self.qext_endian.into(),
            _ => 0, // EDID block and unused registers
        }
    }

    fn mmio_write(&mut self, offset: u64, size: u32, value: u64) {
        match offset {
            o if (MMIO_VGA..MMIO_VGA + 0x20).contains(&o) => {
                for i in 0..u64::from(size) {
                    self.vga_write(0x3c0 + o - MMIO_VGA + i, (value >> (8 * i)) as u8);
                }
            }
            o if (MMIO_DISPI..MMIO_DISPI + 2 * REGS as u64).contains(&o) && size == 2 => {
                self.dispi_write(((o - MMIO_DISPI) / 2) as u16, value as u16);
            }
            o if (ENGINE_REGS..ENGINE_REGS + REGS_BYTES).contains(&o) && size == 4 => {
                let (bus_master, irq) = (self.bus_master(), self.interrupt());
                self.engine
                    .write(o - ENGINE_REGS, value as u32, bus_master, irq);
            }
            o if o == MMIO_QEXT + 4 && size == 4 => {
                // Only little-endian framebuffers are supported; the register keeps its value.
                let _ = value;
            }
            _ => {}
        }
    }

    /// An access to the banked window: framebuffer bytes at `BANK` × 64 KiB + offset.
    fn banked(&mut self, addr: u64, size: u32, write: Option<u64>) -> u64 {
        let at = u64::from(self.reg(dispi::BANK)) * BANK_BYTES + (addr - BANK_WINDOW);
        let len = u64::from(size.min(8));
        if at + len > self.vram.len() as u64 {
            return u64::MAX;
        }
        // SAFETY: `at + len <= vram.len()` (checked); guest memory, accessed bytewise.
        let p = unsafe { self.vram.ptr().add(at as usize) };
        let mut value = 0u64;
        for i in 0..len {
            // SAFETY: i < len, inside the checked range.
            unsafe {
                match write {
                    Some(v) => p.add(i as usize).write_volatile((v >> (8 * i)) as u8),
                    None => value |= u64::from(p.add(i as usize).read_volatile()) << (8 * i),
                }
            }
        }
        value
    }

    /// Moves the framebuffer behind BAR0 if it decodes, else home.
    fn place_vram(&mut self) {
        let want = self
            .config
            .bar_address(0)
            .map_or(self.home_gfn, |a| a / PAGE_SIZE as u64);
        if want == self.vram_gfn {
            return;
        }
        let count = vram_pages() as u32;
        match self.dm.relocate_memory(self.vram_gfn, want, count) {
            Ok(()) => self.vram_gfn = want,
            Err(e) => tracing::warn!("cannot place the framebuffer at gfn {want:#x}: {e}"),
        }
    }
}

impl<D: DeviceModel + 'static> Device for Vgpu<D> {
    fn bdf(&self) -> u16 {
        self.bdf
    }

    fn claims(&self) -> Vec<IoRange> {
        let mut ranges = vec![
            IoRange {
                kind: IoRangeKind::Port,
                start: VBE_INDEX_PORT.into(),
                // A 16-bit access to the data port covers 0x1d0 too (QEMU decodes it).
                end: u64::from(VBE_DATA_PORT) + 1,
            },
            IoRange {
                kind: IoRangeKind::Port,
                start: 0x3c0,
                end: 0x3df,
            },
            IoRange {
                kind: IoRangeKind::Memory,
                start: BANK_WINDOW,
                end: BANK_WINDOW + BANK_BYTES - 1,
            },
        ];
        if let Some(base) = self.config.bar_address(2) {
            ranges.push(IoRange {
                kind: IoRangeKind::Memory,
                start: base,
                end: base + u64::from(MMIO_BAR_BYTES) - 1,
            });
        }
        ranges
    }

    fn service(&mut self) -> bool {
        let (bus_master, irq) = (self.bus_master(), self.interrupt());
        self.engine.service(bus_master, irq);
        self.engine.pending()
    }

    fn invalidate_mappings(&mut self) {
        // The framebuffer is demu's own memory; only the engine maps the guest's.
        self.engine.unmap_ring();
    }

    fn read(&mut self, a: &Access) -> u64 {
        match a.space {
            Space::PciConfig => self.config.read(a.addr as u32, a.size).into(),
            Space::Port => match a.addr {
                0x1ce => self.index.into(),
                0x1cf => self.dispi_read(self.index).into(),
                p @ 0x3c0..=0x3df => self.vga_read(p).into(),
                _ => u64::MAX,
            },
            Space::Memory if (BANK_WINDOW..BANK_WINDOW + BANK_BYTES).contains(&a.addr) => {
                self.banked(a.addr, a.size, None)
            }
            Space::Memory => match self.config.bar_address(2) {
                Some(base) if a.addr >= base && a.addr - base < u64::from(MMIO_BAR_BYTES) => {
                    self.mmio_read(a.addr - base, a.size)
                }
                _ => u64::MAX,
            },
        }
    }

    fn write(&mut self, a: &Access) {
        match a.space {
            Space::PciConfig => {
                self.config.write(a.addr as u32, a.size, a.value as u32);
                self.place_vram();
            }
            Space::Port => match a.addr {
                0x1ce => self.index = a.value as u16,
                0x1cf => self.dispi_write(self.index, a.value as u16),
                p @ 0x3c0..=0x3df => self.vga_write(p, a.value as u8),
                _ => {}
            },
            Space::Memory if (BANK_WINDOW..BANK_WINDOW + BANK_BYTES).contains(&a.addr) => {
                self.banked(a.addr, a.size, Some(a.value));
            }
            Space::Memory => {
                if let Some(base) = self.config.bar_address(2) {
                    if a.addr >= base && a.addr - base < u64::from(MMIO_BAR_BYTES) {
                        self.mmio_write(a.addr - base, a.size, a.value);
                    }
                }
            }
        }
    }
}
