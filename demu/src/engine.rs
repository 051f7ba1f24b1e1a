//! The vGPU's 2D engine: a ring of 64-byte commands in guest memory (fill, copy within the
//! framebuffer, blit from guest memory, fence), a doorbell register, a completion fence and an
//! MSI when a fence completes. Registers live in the MMIO BAR at [`REGS_OFFSET`]:
//!
//! | offset | register | |
//! |---|---|---|
//! | 0x00 | `ID` | reads [`ENGINE_ID`] |
//! | 0x04, 0x08 | `RING_LO`, `RING_HI` | guest-physical address of the ring (page-aligned) |
//! | 0x0c | `RING_ENTRIES` | a power of two, 1..=4096 |
//! | 0x10 | `HEAD` | next command the engine will take (read-only) |
//! | 0x14 | `TAIL` | the guest's producer index; writing it rings the doorbell |
//! | 0x18 | `FENCE` | value of the last completed fence (read-only) |
//! | 0x1c | `CONTROL` | bit 0 enable, bit 1 interrupt on fence |
//! | 0x20 | `STATUS` | bit 0 error (write 1 to clear), bits 8–15 the last error code |
//! | 0x24 | `ERRORS` | commands refused so far (read-only) |
//!
//! Everything the guest supplies is checked before use: the ring must be guest RAM (foreign
//! mapping fails otherwise), bus mastering must be on for the engine to read it or blit, the
//! tail may not run more than a ring ahead, and every rectangle must lie inside the
//! framebuffer or inside the guest RAM it names. A bad command is skipped and counted; the
//! engine keeps going.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use xen_abi::PAGE_SIZE;
use xen_devicemodel::DeviceModel;
use xen_ring::SharedMemory;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::mux::{Client, Op, Rect, SharedSurface, Surface};

/// Where the engine's registers are in the MMIO BAR.
pub const REGS_OFFSET: u64 = 0x800;
/// Bytes of registers.
pub const REGS_BYTES: u64 = 0x28;
/// What `ID` reads.
pub const ENGINE_ID: u32 = 0x3244_0001;
/// Most ring entries.
pub const MAX_ENTRIES: u32 = 4096;
/// Largest blit source, in bytes.
pub const MAX_BLIT_BYTES: u64 = 16 << 20;

/// Register offsets (from [`REGS_OFFSET`]).
pub mod reg {
    /// Identification.
    pub const ID: u64 = 0x00;
    /// Ring address, low half.
    pub const RING_LO: u64 = 0x04;
    /// Ring address, high half.
    pub const RING_HI: u64 = 0x08;
    /// Ring size in entries.
    pub const RING_ENTRIES: u64 = 0x0c;
    /// Consumer index.
    pub const HEAD: u64 = 0x10;
    /// Producer index (doorbell).
    pub const TAIL: u64 = 0x14;
    /// Completed fence.
    pub const FENCE: u64 = 0x18;
    /// Control bits.
    pub const CONTROL: u64 = 0x1c;
    /// Status.
    pub const STATUS: u64 = 0x20;
    /// Refused commands.
    pub const ERRORS: u64 = 0x24;
}

/// `CONTROL`: the engine runs.
pub const CONTROL_ENABLE: u32 = 1;
/// `CONTROL`: a completed fence raises the interrupt.
pub const CONTROL_IRQ: u32 = 2;

/// Opcodes.
pub mod opcode {
    /// Fill a rectangle with `arg` (XRGB).
    pub const FILL: u32 = 1;
    /// Copy a rectangle within the framebuffer (`src` is a framebuffer offset).
    pub const COPY: u32 = 2;
    /// Copy from guest memory (`src` is a guest-physical address).
    pub const BLIT: u32 = 3;
    /// Publish `arg` in `FENCE` once everything before has run.
    pub const FENCE: u32 = 4;
}

/// Error codes in `STATUS` bits 8–15.
pub mod error {
    /// Unknown opcode.
    pub const BAD_OPCODE: u32 = 1;
    /// A rectangle outside the framebuffer.
    pub const BAD_RECT: u32 = 2;
    /// A blit source that is not guest RAM, or too large.
    pub const BAD_DMA: u32 = 3;
    /// The ring is not guest RAM, or its size is not a power of two up to 4096.
    pub const BAD_RING: u32 = 4;
    /// The tail ran more than a ring ahead of the head.
    pub const BAD_TAIL: u32 = 5;
    /// Bus mastering is off.
    pub const NO_BUS_MASTER: u32 = 6;
}

/// One command (64 bytes, little-endian).
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Command {
    /// `opcode::*`.
    pub opcode: u32,
    /// Colour (fill) or fence value.
    pub arg: u32,
    /// Source: framebuffer offset (copy) or guest-physical address (blit).
    pub src: u64,
    /// Source bytes per line.
    pub src_pitch: u32,
    /// Destination framebuffer offset.
    pub dst_offset: u32,
    /// Destination bytes per line.
    pub dst_pitch: u32,
    /// Width in 32-bit pixels.
    pub width: u32,
    /// Height in lines.
    pub height: u32,
    /// Must be zero.
    pub reserved: [u32; 7],
}

/// Bytes per command.
pub const COMMAND_BYTES: usize = 64;

/// How interrupts reach the guest when a fence completes.
#[derive(Debug, Clone, Copy)]
pub enum Interrupt {
    /// MSI with this address and data.
    Msi(u64, u32),
    /// A pulse on INTA of this device.
    Intx {
        /// PCI bus.
        bus: u8,
        /// Device number.
        device: u8,
    },
    /// None (masked or disabled).
    None,
}

/// The engine's state.
pub struct Engine<D: DeviceModel> {
    dm: Arc<D>,
    client: Client,
    framebuffer_len: u64,
    ring_base: u64,
    entries: u32,
    head: u32,
    tail: u32,
    control: u32,
    status: u32,
    errors: u32,
    fence: Arc<AtomicU32>,
    ring: Option<D::Foreign>,
}

impl<D: DeviceModel + 'static> Engine<D> {
    /// An engine drawing into a framebuffer of `framebuffer_len` bytes through `client`.
    pub fn new(dm: Arc<D>, client: Client, framebuffer_len: u64) -> Self {
        Self {
            dm,
            client,
            framebuffer_len,
            ring_base: 0,
            entries: 0,
            head: 0,
            tail: 0,
            control: 0,
            status: 0,
            errors: 0,
            fence: Arc::new(AtomicU32::new(0)),
            ring: None,
        }
    }

    /// The renderer client (for its counters).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A register read (32-bit).
    pub fn read(&self, offset: u64) -> u32 {
        match offset {
            reg::ID => ENGINE_ID,
            reg::RING_LO => self.ring_base as u32,
            reg::RING_HI => (self.ring_base >> 32) as u32,
            reg::RING_ENTRIES => self.entries,
            reg::HEAD => self.head,
            reg::TAIL => self.tail,
            reg::FENCE => self.fence.load(Ordering::Acquire),
            reg::CONTROL => self.control,
            reg::STATUS => self.status,
            reg::ERRORS => self.errors,
            _ => 0,
        }
    }

    /// A register write (32-bit). `bus_master` and `irq` describe the device's PCI state now.
    pub fn write(&mut self, offset: u64, value: u32, bus_master: bool, irq: Interrupt) {
        match offset {
            reg::RING_LO => self.set_ring(
                (self.ring_base & !0xffff_ffff) | u64::from(value),
                self.entries,
            ),
            reg::RING_HI => self.set_ring(
                (self.ring_base & 0xffff_ffff) | (u64::from(value) << 32),
                self.entries,
            ),
            reg::RING_ENTRIES => self.set_ring(self.ring_base, value),
            reg::TAIL => {
                if value.wrapping_sub(self.head) > self.entries {
                    self.fail(error::BAD_TAIL);
                } else {
                    self.tail = value;
                    self.service(bus_master, irq);
                }
            }
            reg::CONTROL => {
                self.control = value & (CONTROL_ENABLE | CONTROL_IRQ);
                self.service(bus_master, irq);
            }
            reg::STATUS if value & 1 != 0 => self.status = 0,
            _ => {}
        }
    }

    fn set_ring(&mut self, base: u64, entries: u32) {
        self.ring_base = base;
        self.entries = entries;
        self.head = 0;
        self.tail = 0;
        self.ring = None;
    }

    fn fail(&mut self, code: u32) {
        self.status = 1 | (code << 8);
        self.errors = self.errors.wrapping_add(1);
    }

    /// Drops the ring's mapping; the next command is read through a fresh one (the guest's
    /// memory map changed).
    pub fn unmap_ring(&mut self) {
        self.ring = None;
    }

    /// Whether commands wait in the ring (the renderer's queue was full).
    pub fn pending(&self) -> bool {
        self.control & CONTROL_ENABLE != 0 && self.head != self.tail && self.ring.is_some()
    }

    /// Takes commands from the ring and queues them at the renderer until the ring is empty
    /// or the queue is full.
    pub fn service(&mut self, bus_master: bool, irq: Interrupt) {
        if self.control & CONTROL_ENABLE == 0 || self.head == self.tail {
            return;
        }
        if !bus_master {
            self.fail(error::NO_BUS_MASTER);
            return;
        }
        if self.ring.is_none() && !self.map_ring() {
            self.fail(error::BAD_RING);
            self.head = self.tail;
            return;
        }
        while self.head != self.tail {
            let Some(command) = self.command(self.head) else {
                return;
            };
            match self.translate(&command, irq) {
                Ok(op) => {
                    if let Err((_, _full)) = self.client.submit(op) {
                        return; // retried on the next service
                    }
                }
                Err(code) => self.fail(code),
            }
            self.head = self.head.wrapping_add(1);
        }
    }

    fn map_ring(&mut self) -> bool {
        if !self.entries.is_power_of_two()
            || self.entries > MAX_ENTRIES
            || self.ring_base % PAGE_SIZE as u64 != 0
        {
            return false;
        }
        let pages = (self.entries as usize * COMMAND_BYTES).div_ceil(PAGE_SIZE) as u64;
        let first = self.ring_base / PAGE_SIZE as u64;
        let gfns: Vec<u64> = (first..first + pages).collect();
        match self.dm.map_foreign(&gfns, false) {
            Ok(m) => {
                self.ring = Some(m);
                true
            }
            Err(_) => false,
        }
    }

    /// A private copy of the command at index `i`.
    fn command(&self, i: u32) -> Option<Command> {
        let ring = self.ring.as_ref()?;
        let at = (i % self.entries.max(1)) as usize * COMMAND_BYTES;
        if at + COMMAND_BYTES > ring.len() {
            return None;
        }
        let mut bytes = [0u8; COMMAND_BYTES];
        for (k, b) in bytes.iter_mut().enumerate() {
            // SAFETY: at + 64 <= ring.len() (checked); guest memory, copied bytewise once.
            *b = unsafe { ring.as_ptr().add(at + k).read_volatile() };
        }
        Command::read_from_bytes(&bytes).ok()
    }

    fn translate(&self, c: &Command, irq: Interrupt) -> Result<Op, u32> {
        let dst = Rect {
            offset: c.dst_offset.into(),
            pitch: c.dst_pitch.into(),
            width: c.width.into(),
            height: c.height.into(),
        };
        let src_rect = |offset| Rect {
            offset,
            pitch: c.src_pitch.into(),
            width: c.width.into(),
            height: c.height.into(),
        };
        match c.opcode {
            opcode::FILL if dst.fits(self.framebuffer_len) => Ok(Op::Fill { dst, color: c.arg }),
            opcode::COPY
                if dst.fits(self.framebuffer_len) && src_rect(c.src).fits(self.framebuffer_len) =>
            {
                Ok(Op::Copy {
                    src: src_rect(c.src),
                    dst,
                })
            }
            opcode::BLIT if dst.fits(self.framebuffer_len) => self.blit(c, dst),
            opcode::FILL | opcode::COPY | opcode::BLIT => Err(error::BAD_RECT),
            opcode::FENCE => Ok(self.fence_op(c.arg, irq)),
            _ => Err(error::BAD_OPCODE),
        }
    }

    fn blit(&self, c: &Command, dst: Rect) -> Result<Op, u32> {
        let span = Rect {
            offset: c.src % PAGE_SIZE as u64,
            pitch: c.src_pitch.into(),
            width: c.width.into(),
            height: c.height.into(),
        };
        if span.pixels() == 0 {
            return Ok(Op::Fill { dst, color: 0 }); // nothing to move
        }
        let bytes = u64::from(c.src_pitch)
            .checked_mul(u64::from(c.height) - 1)
            .and_then(|b| b.checked_add(u64::from(c.width) * 4))
            .filter(|&b| b <= MAX_BLIT_BYTES)
            .ok_or(error::BAD_DMA)?;
        let end = c.src.checked_add(bytes).ok_or(error::BAD_DMA)?;
        let first = c.src / PAGE_SIZE as u64;
        let gfns: Vec<u64> = (first..end.div_ceil(PAGE_SIZE as u64)).collect();
        let source = self
            .dm
            .map_foreign(&gfns, false)
            .map_err(|_| error::BAD_DMA)?;
        if !span.fits(source.len() as u64) {
            return Err(error::BAD_DMA);
        }
        Ok(Op::Blit {
            source: Box::new(SharedSurface(source)),
            src: span,
            dst,
        })
    }

    fn fence_op(&self, value: u32, irq: Interrupt) -> Op {
        let fence = Arc::clone(&self.fence);
        let dm = Arc::clone(&self.dm);
        let raise = self.control & CONTROL_IRQ != 0;
        Op::Fence {
            done: Box::new(move || {
                fence.store(value, Ordering::Release);
                if !raise {
                    return;
                }
                let result = match irq {
                    Interrupt::Msi(addr, data) => dm.inject_msi(addr, data),
                    Interrupt::Intx { bus, device } => dm
                        .set_pci_intx_level(0, bus, device, 0, 1)
                        .and_then(|()| dm.set_pci_intx_level(0, bus, device, 0, 0)),
                    Interrupt::None => Ok(()),
                };
                if let Err(e) = result {
                    tracing::warn!("cannot raise the 2D engine's interrupt: {e}");
                }
            }),
        }
    }
}

/// The framebuffer as the renderer sees it.
pub fn surface<M: SharedMemory + 'static>(vram: Arc<SharedSurface<M>>) -> Arc<dyn Surface> {
    vram
}
