//! A type-0 PCI configuration space: 256 bytes with a writable mask per byte, BARs whose
//! size the guest discovers by writing all-ones, the command register that gates decoding,
//! and an MSI capability. Accesses outside the space, or of a size other than 1, 2 or 4,
//! read as all-ones and write nothing.

/// Bytes of configuration space (no extended space).
pub const CONFIG_SIZE: usize = 256;

/// Command register: I/O space decoding.
pub const COMMAND_IO: u16 = 1 << 0;
/// Command register: memory space decoding.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command register: bus mastering (DMA).
pub const COMMAND_MASTER: u16 = 1 << 2;
/// Command register: INTx disabled.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;

const REG_COMMAND: usize = 0x04;
const REG_STATUS: usize = 0x06;
const REG_BAR0: usize = 0x10;
const REG_CAPABILITIES: usize = 0x34;
const STATUS_CAPABILITIES: u16 = 1 << 4;
/// Where the MSI capability lives.
const MSI_CAP: usize = 0x50;
const CAP_ID_MSI: u8 = 0x05;
const MSI_ENABLE: u16 = 1 << 0;
const MSI_64BIT: u16 = 1 << 7;

/// What a BAR decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// 32-bit memory.
    Memory32 {
        /// Prefetchable.
        prefetchable: bool,
    },
    /// I/O ports.
    Io,
}

/// A BAR's fixed properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    /// What it decodes.
    pub kind: BarKind,
    /// Bytes; a power of two (at least 16 for memory, 4 for I/O).
    pub size: u32,
}

/// The device's identity.
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    /// Vendor id.
    pub vendor: u16,
    /// Device id.
    pub device: u16,
    /// Revision.
    pub revision: u8,
    /// Class code (class, subclass, programming interface).
    pub class: u32,
    /// Subsystem vendor id.
    pub subsystem_vendor: u16,
    /// Subsystem id.
    pub subsystem: u16,
}

/// One function's configuration space.
pub struct ConfigSpace {
    bytes: [u8; CONFIG_SIZE],
    writable: [u8; CONFIG_SIZE],
    bars: [Option<Bar>; 6],
}

impl ConfigSpace {
    /// A space for `id` with `bars` (index → BAR) and an MSI capability.
    pub fn new(id: Identity, bars: &[(usize, Bar)]) -> Self {
        let mut s = Self {
            bytes: [0; CONFIG_SIZE],
            writable: [0; CONFIG_SIZE],
            bars: [None; 6],
        };
        s.put(0x00, 2, id.vendor.into());
        s.put(0x02, 2, id.device.into());
        s.put(0x08, 1, id.revision.into());
        s.put(0x09, 3, id.class);
        s.put(0x2c, 2, id.subsystem_vendor.into());
        s.put(0x2e, 2, id.subsystem.into());
        s.put(0x3d, 1, 1); // interrupt pin INTA
        s.mask(
            REG_COMMAND,
            2,
            u32::from(COMMAND_IO | COMMAND_MEMORY | COMMAND_MASTER | COMMAND_INTX_DISABLE),
        );
        s.mask(0x0c, 1, 0xff); // cache line size
        s.mask(0x0d, 1, 0xff); // latency timer
        s.mask(0x3c, 1, 0xff); // interrupt line
        for &(index, bar) in bars {
            if let Some(slot) = s.bars.get_mut(index) {
                *slot = Some(bar);
                let (flags, mask) = match bar.kind {
                    BarKind::Memory32 { prefetchable } => {
                        (u32::from(prefetchable) << 3, !(bar.size.max(16) - 1))
                    }
                    BarKind::Io => (1, !(bar.size.max(4) - 1)),
                };
                s.put(REG_BAR0 + 4 * index, 4, flags);
                s.mask(REG_BAR0 + 4 * index, 4, mask);
            }
        }
        // The MSI capability: 64-bit address, one vector.
        s.put(REG_STATUS, 2, STATUS_CAPABILITIES.into());
        s.put(REG_CAPABILITIES, 1, MSI_CAP as u32);
        s.put(MSI_CAP, 1, CAP_ID_MSI.into());
        s.put(MSI_CAP + 1, 1, 0);
        s.put(MSI_CAP + 2, 2, MSI_64BIT.into());
        s.mask(MSI_CAP + 2, 2, u32::from(MSI_ENABLE) | 0x70);
        s.mask(MSI_CAP + 4, 4, 0xffff_fffc);
        s.mask(MSI_CAP + 8, 4, 0xffff_ffff);
        s.mask(MSI_CAP + 12, 2, 0xffff);
        s
    }

    fn put(&mut self, at: usize, len: usize, value: u32) {
        for (i, b) in value.to_le_bytes().iter().take(len).enumerate() {
            if let Some(slot) = self.bytes.get_mut(at + i) {
                *slot = *b;
            }
        }
    }

    fn mask(&mut self, at: usize, len: usize, mask: u32) {
        for (i, b) in mask.to_le_bytes().iter().take(len).enumerate() {
            if let Some(slot) = self.writable.get_mut(at + i) {
                *slot = *b;
            }
        }
    }

    fn get(&self, at: usize, len: usize) -> u32 {
        let mut v = [0u8; 4];
        for (i, b) in v.iter_mut().take(len).enumerate() {
            *b = self.bytes.get(at + i).copied().unwrap_or(0xff);
        }
        u32::from_le_bytes(v)
    }

    /// A guest read of `size` bytes at `reg`.
    pub fn read(&self, reg: u32, size: u32) -> u32 {
        let (reg, len) = (reg as usize, size as usize);
        if !matches!(len, 1 | 2 | 4) || reg + len > CONFIG_SIZE {
            return u32::MAX >> (32 - 8 * len.clamp(1, 4));
        }
        self.get(reg, len)
    }

    /// A guest write of `size` bytes at `reg`: only the writable bits change.
    pub fn write(&mut self, reg: u32, size: u32, value: u32) {
        let (reg, len) = (reg as usize, size as usize);
        if !matches!(len, 1 | 2 | 4) || reg + len > CONFIG_SIZE {
            return;
        }
        for (i, b) in value.to_le_bytes().iter().take(len).enumerate() {
            let at = reg + i;
            if let (Some(old), Some(&mask)) = (self.bytes.get(at), self.writable.get(at)) {
                let new = (old & !mask) | (b & mask);
                if let Some(slot) = self.bytes.get_mut(at) {
                    *slot = new;
                }
            }
        }
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.get(REG_COMMAND, 2) as u16
    }

    /// Where BAR `index` decodes now: `None` if absent, its decoding is off in the command
    /// register, or it is unprogrammed (zero, or the all-ones of sizing).
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let bar = (*self.bars.get(index)?)?;
        let raw = self.get(REG_BAR0 + 4 * index, 4);
        let (enabled, address) = match bar.kind {
            BarKind::Memory32 { .. } => (self.command() & COMMAND_MEMORY != 0, raw & !0xf),
            BarKind::Io => (self.command() & COMMAND_IO != 0, raw & !0x3),
        };
        let sizing = address == !(bar.size - 1) & !0xf || address == 0;
        (enabled && !sizing).then_some(u64::from(address))
    }

    /// BAR `index`, if present.
    pub fn bar(&self, index: usize) -> Option<Bar> {
        self.bars.get(index).copied().flatten()
    }

    /// The MSI message (address, data) if the guest enabled MSI.
    pub fn msi(&self) -> Option<(u64, u32)> {
        let control = self.get(MSI_CAP + 2, 2) as u16;
        if control & MSI_ENABLE == 0 {
            return None;
        }
        let addr =
            u64::from(self.get(MSI_CAP + 4, 4)) | (u64::from(self.get(MSI_CAP + 8, 4)) << 32);
        Some((addr, self.get(MSI_CAP + 12, 2)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space() -> ConfigSpace {
        ConfigSpace::new(
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
                        size: 16 << 20,
                    },
                ),
                (
                    2,
                    Bar {
                        kind: BarKind::Memory32 {
                            prefetchable: false,
                        },
                        size: 4096,
                    },
                ),
            ],
        )
    }

    #[test]
    fn identity_is_read_only_and_bars_size_as_hardware() {
        let mut s = space();
        assert_eq!(s.read(0, 4), 0x1111_1234);
        s.write(0, 4, 0xdead_beef);
        assert_eq!(s.read(0, 4), 0x1111_1234, "ids are read-only");
        assert_eq!(s.read(0x08, 4) >> 8, 0x03_00_00);
        s.write(0x10, 4, 0xffff_ffff);
        assert_eq!(s.read(0x10, 4), 0xff00_0008, "16 MiB prefetchable");
        s.write(0x18, 4, 0xffff_ffff);
        assert_eq!(s.read(0x18, 4), 0xffff_f000);
        assert_eq!(s.read(0x14, 4), 0, "absent BAR");
        s.write(0x10, 4, 0xe000_0000);
        assert_eq!(s.bar_address(0), None, "decoding is off");
        s.write(0x04, 2, u32::from(COMMAND_MEMORY));
        assert_eq!(s.bar_address(0), Some(0xe000_0000));
        s.write(0x10, 4, 0xffff_ffff);
        assert_eq!(s.bar_address(0), None, "being sized");
    }

    #[test]
    fn bad_accesses_read_all_ones_and_change_nothing() {
        let mut s = space();
        assert_eq!(s.read(0xfe, 4), u32::MAX);
        assert_eq!(s.read(0, 3), 0xff_ffff);
        assert_eq!(s.read(0x1000, 1), 0xff);
        s.write(0xfe, 4, 0);
        s.write(0x04, 8, 0xffff);
        assert_eq!(s.command(), 0);
    }

    #[test]
    fn msi_capability() {
        let mut s = space();
        assert_eq!(s.read(0x06, 2) & 0x10, 0x10);
        let cap = s.read(0x34, 1);
        assert_eq!(s.read(cap, 1), 0x05);
        assert_eq!(s.msi(), None);
        s.write(cap + 4, 4, 0xfee0_1003);
        s.write(cap + 12, 2, 0x4041);
        s.write(cap + 2, 2, 1);
        assert_eq!(s.msi(), Some((0xfee0_1000, 0x4041)));
    }
}
