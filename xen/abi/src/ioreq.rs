//! `xen/include/public/hvm/ioreq.h`: synchronous and buffered ioreqs of an ioreq server.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// No request in the slot.
pub const STATE_IOREQ_NONE: u8 = 0;
/// The vCPU has posted a request.
pub const STATE_IOREQ_READY: u8 = 1;
/// The emulator is handling the request.
pub const STATE_IOREQ_INPROCESS: u8 = 2;
/// The emulator has written the response.
pub const STATE_IORESP_READY: u8 = 3;

/// Port I/O.
pub const IOREQ_TYPE_PIO: u8 = 0;
/// MMIO (`COPY`).
pub const IOREQ_TYPE_COPY: u8 = 1;
/// PCI configuration space access.
pub const IOREQ_TYPE_PCI_CONFIG: u8 = 2;
/// Time offset notification.
pub const IOREQ_TYPE_TIMEOFFSET: u8 = 7;
/// Invalidate the map cache.
pub const IOREQ_TYPE_INVALIDATE: u8 = 8;

/// `dir` value of a read (the emulator supplies data).
pub const IOREQ_READ: u8 = 1;
/// `dir` value of a write.
pub const IOREQ_WRITE: u8 = 0;

/// One synchronous ioreq slot (32 bytes); one per vCPU in the shared ioreq page.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Ioreq {
    /// Port, MMIO guest-physical address, or encoded PCI config address.
    pub addr: u64,
    /// The value, or the guest-physical address of the data when `data_is_ptr`.
    pub data: u64,
    /// Repeat count (rep string I/O).
    pub count: u32,
    /// Access size in bytes.
    pub size: u32,
    /// The vCPU's event channel port.
    pub vp_eport: u32,
    /// Padding.
    pub _pad0: u16,
    /// Bitfield: `state:4`, `data_is_ptr:1`, `dir:1`, `df:1`.
    pub flags: u8,
    /// `IOREQ_TYPE_*`.
    pub type_: u8,
}

/// Byte offset of the bitfield byte that holds `state` within an `Ioreq`.
pub const IOREQ_STATE_BYTE_OFFSET: usize = 30;

impl Ioreq {
    /// The `state` bits.
    pub fn state(&self) -> u8 {
        self.flags & 0x0f
    }
    /// Whether `data` is a guest-physical pointer.
    pub fn data_is_ptr(&self) -> bool {
        self.flags & 0x10 != 0
    }
    /// `IOREQ_READ` or `IOREQ_WRITE`.
    pub fn dir(&self) -> u8 {
        (self.flags >> 5) & 1
    }
    /// The direction flag of rep string I/O.
    pub fn df(&self) -> bool {
        self.flags & 0x40 != 0
    }
    /// Builds the bitfield byte.
    pub fn pack_flags(state: u8, data_is_ptr: bool, dir: u8, df: bool) -> u8 {
        (state & 0x0f) | (u8::from(data_is_ptr) << 4) | ((dir & 1) << 5) | (u8::from(df) << 6)
    }
}

/// Ioreq slots in one 4 KiB shared ioreq page.
pub const IOREQS_PER_PAGE: usize = crate::PAGE_SIZE / 32;

/// A buffered ioreq (8 bytes): `type:8, pad:1, dir:1, size:2, addr:20` in the first word.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct BufIoreq {
    /// The bitfield word.
    pub word: u32,
    /// The data (low 32 bits; an 8-byte write puts the high half in the next slot).
    pub data: u32,
}

impl BufIoreq {
    /// `IOREQ_TYPE_*`.
    pub fn type_(&self) -> u8 {
        (self.word & 0xff) as u8
    }
    /// `IOREQ_READ` or `IOREQ_WRITE`.
    pub fn dir(&self) -> u8 {
        ((self.word >> 9) & 1) as u8
    }
    /// Access size in bytes (1, 2, 4 or 8).
    pub fn size_bytes(&self) -> u32 {
        1 << ((self.word >> 10) & 3)
    }
    /// The 20-bit address.
    pub fn addr(&self) -> u32 {
        self.word >> 12
    }
    /// Builds the bitfield word; `size_log2` is 0..=3.
    pub fn pack(type_: u8, dir: u8, size_log2: u8, addr: u32) -> u32 {
        u32::from(type_)
            | (u32::from(dir & 1) << 9)
            | (u32::from(size_log2 & 3) << 10)
            | ((addr & 0xfffff) << 12)
    }
}

/// Slots in the buffered ioreq page.
pub const IOREQ_BUFFER_SLOT_NUM: usize = 511;

/// The buffered ioreq page (4096 bytes).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct BufferedIopage {
    /// Consumer index (the emulator's).
    pub read_pointer: u32,
    /// Producer index (Xen's).
    pub write_pointer: u32,
    /// The slots.
    pub buf_ioreq: [BufIoreq; IOREQ_BUFFER_SLOT_NUM],
}
