//! `xen/include/public/io/blkif.h`: the block protocol, with the native (x86_64) layout and the
//! packed `x86_32-abi` layout that Linux blkback's `common.h` defines.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::GrantRef;

/// Read sectors into the granted pages.
pub const BLKIF_OP_READ: u8 = 0;
/// Write sectors from the granted pages.
pub const BLKIF_OP_WRITE: u8 = 1;
/// Write with barrier semantics (`feature-barrier`).
pub const BLKIF_OP_WRITE_BARRIER: u8 = 2;
/// Flush the disk cache (`feature-flush-cache`).
pub const BLKIF_OP_FLUSH_DISKCACHE: u8 = 3;
/// Reserved (was an extension of one vendor's).
pub const BLKIF_OP_RESERVED_1: u8 = 4;
/// Discard a sector range (`feature-discard`).
pub const BLKIF_OP_DISCARD: u8 = 5;
/// Read or write with segments held in indirect pages (`feature-max-indirect-segments`).
pub const BLKIF_OP_INDIRECT: u8 = 6;

/// The request succeeded.
pub const BLKIF_RSP_OKAY: i16 = 0;
/// The request failed.
pub const BLKIF_RSP_ERROR: i16 = -1;
/// The operation is not supported.
pub const BLKIF_RSP_EOPNOTSUPP: i16 = -2;

/// `info` bit: the disk is a CD-ROM.
pub const VDISK_CDROM: u32 = 0x1;
/// `info` bit: the media is removable.
pub const VDISK_REMOVABLE: u32 = 0x2;
/// `info` bit: the disk is read-only.
pub const VDISK_READONLY: u32 = 0x4;

/// `BLKIF_DISCARD_SECURE`: the discard must be a secure erase.
pub const BLKIF_DISCARD_SECURE: u8 = 1;

/// Segments in a direct request.
pub const BLKIF_MAX_SEGMENTS_PER_REQUEST: usize = 11;
/// Indirect pages in one indirect request.
pub const BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST: usize = 8;
/// Segment descriptors that fit in one indirect page.
pub const SEGS_PER_INDIRECT_FRAME: usize = crate::PAGE_SIZE / 8;
/// The unit of `sector_number`, `first_sect`/`last_sect`, `sectors` and discard `nr_sectors`.
pub const SECTOR_SIZE: u64 = 512;
/// Sectors of 512 bytes in one 4 KiB frame.
pub const SECTORS_PER_PAGE: u8 = 8;

/// `protocol` value of the native ABI of x86_64 guests.
pub const XEN_IO_PROTO_ABI_X86_64: &str = "x86_64-abi";
/// `protocol` value of 32-bit x86 guests.
pub const XEN_IO_PROTO_ABI_X86_32: &str = "x86_32-abi";
/// `protocol` value of Arm guests.
pub const XEN_IO_PROTO_ABI_ARM: &str = "arm-abi";

/// One data segment: a granted frame and an inclusive 512-byte sector range within it.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct BlkifRequestSegment {
    /// Grant of the data frame.
    pub gref: GrantRef,
    /// First 512-byte sector of the frame to transfer (0..=7).
    pub first_sect: u8,
    /// Last 512-byte sector of the frame to transfer, inclusive (first..=7).
    pub last_sect: u8,
    /// Padding to 8 bytes.
    pub _pad: u16,
}

/// A READ, WRITE, WRITE_BARRIER or FLUSH_DISKCACHE request (native x86_64 layout, 112 bytes).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct BlkifRequest {
    /// `BLKIF_OP_*`.
    pub operation: u8,
    /// Number of valid entries in `seg`.
    pub nr_segments: u8,
    /// Device handle (`blkif_vdev_t`), echoed by nothing and checked by nothing.
    pub handle: u16,
    /// Padding before `id`.
    pub _pad: u32,
    /// Private value of the frontend, echoed in the response.
    pub id: u64,
    /// Start sector, in 512-byte units.
    pub sector_number: u64,
    /// The data segments.
    pub seg: [BlkifRequestSegment; BLKIF_MAX_SEGMENTS_PER_REQUEST],
}

/// A DISCARD request (native layout, 32 bytes; shares the 112-byte ring slot).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct BlkifRequestDiscard {
    /// `BLKIF_OP_DISCARD`.
    pub operation: u8,
    /// `BLKIF_DISCARD_SECURE` or 0.
    pub flag: u8,
    /// Device handle.
    pub handle: u16,
    /// Padding before `id`.
    pub _pad: u32,
    /// Echoed in the response.
    pub id: u64,
    /// Start sector, in 512-byte units.
    pub sector_number: u64,
    /// Number of 512-byte sectors to discard.
    pub nr_sectors: u64,
}

/// An INDIRECT request (native layout, 64 bytes): segments live in `indirect_grefs` pages.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct BlkifRequestIndirect {
    /// `BLKIF_OP_INDIRECT`.
    pub operation: u8,
    /// `BLKIF_OP_READ` or `BLKIF_OP_WRITE`.
    pub indirect_op: u8,
    /// Total number of segments in the indirect pages.
    pub nr_segments: u16,
    /// Padding before `id`.
    pub _pad: u32,
    /// Echoed in the response.
    pub id: u64,
    /// Start sector, in 512-byte units.
    pub sector_number: u64,
    /// Device handle.
    pub handle: u16,
    /// Padding before `indirect_grefs`.
    pub _pad1: u16,
    /// Grants of the pages holding `BlkifRequestSegment` arrays.
    pub indirect_grefs: [GrantRef; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST],
    /// Tail padding to 64 bytes.
    pub _pad2: u32,
}

/// A response (native layout, 16 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct BlkifResponse {
    /// The request's `id`.
    pub id: u64,
    /// The request's `operation`.
    pub operation: u8,
    /// Padding before `status`.
    pub _pad: u8,
    /// `BLKIF_RSP_*`.
    pub status: i16,
    /// Tail padding to 16 bytes.
    pub _pad1: u32,
}

/// Size of one native ring slot: the union of request (112) and response (16).
pub const BLKIF_NATIVE_SLOT_SIZE: usize = 112;

/// A READ/WRITE/flush request in the packed `x86_32-abi` layout (108 bytes).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C, packed)]
pub struct BlkifX86_32Request {
    /// `BLKIF_OP_*`.
    pub operation: u8,
    /// Number of valid entries in `seg`.
    pub nr_segments: u8,
    /// Device handle.
    pub handle: [u8; 2],
    /// Echoed in the response (little-endian).
    pub id: [u8; 8],
    /// Start sector (little-endian).
    pub sector_number: [u8; 8],
    /// The data segments, each 8 bytes as in the native layout.
    pub seg: [[u8; 8]; BLKIF_MAX_SEGMENTS_PER_REQUEST],
}

/// A DISCARD request in the packed `x86_32-abi` layout (28 bytes).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C, packed)]
pub struct BlkifX86_32RequestDiscard {
    /// `BLKIF_OP_DISCARD`.
    pub operation: u8,
    /// `BLKIF_DISCARD_SECURE` or 0.
    pub flag: u8,
    /// Was `handle`.
    pub _pad1: [u8; 2],
    /// Echoed in the response.
    pub id: [u8; 8],
    /// Start sector.
    pub sector_number: [u8; 8],
    /// Number of 512-byte sectors.
    pub nr_sectors: [u8; 8],
}

/// An INDIRECT request in the packed `x86_32-abi` layout (64 bytes).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C, packed)]
pub struct BlkifX86_32RequestIndirect {
    /// `BLKIF_OP_INDIRECT`.
    pub operation: u8,
    /// `BLKIF_OP_READ` or `BLKIF_OP_WRITE`.
    pub indirect_op: u8,
    /// Total number of segments.
    pub nr_segments: [u8; 2],
    /// Echoed in the response.
    pub id: [u8; 8],
    /// Start sector.
    pub sector_number: [u8; 8],
    /// Device handle.
    pub handle: [u8; 2],
    /// Padding before the grants.
    pub _pad1: [u8; 2],
    /// Grants of the indirect pages (little-endian u32 each).
    pub indirect_grefs: [[u8; 4]; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST],
    /// Tail padding to 64 bytes.
    pub _pad2: [u8; 8],
}

/// A response in the packed `x86_32-abi` layout (11 bytes written; the slot is 108 bytes).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C, packed)]
pub struct BlkifX86_32Response {
    /// The request's `id` (little-endian).
    pub id: [u8; 8],
    /// The request's `operation`.
    pub operation: u8,
    /// `BLKIF_RSP_*` (little-endian).
    pub status: [u8; 2],
}

/// Size of one `x86_32-abi` ring slot.
pub const BLKIF_X86_32_SLOT_SIZE: usize = 108;
