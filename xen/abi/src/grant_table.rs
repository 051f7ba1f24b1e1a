//! `xen/include/public/grant_table.h`: v1 grant entries, flags, status codes and the
//! hypercall argument layouts the simulated hypervisor mirrors.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::{DomId, GrantRef};

/// A v1 grant entry, kept in the granting domain's grant table (8 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct GrantEntryV1 {
    /// `GTF_*`.
    pub flags: u16,
    /// The domain allowed to use this grant.
    pub domid: DomId,
    /// The granted frame (the page number in the granting domain's memory).
    pub frame: u32,
}

/// Grant entries in one 4 KiB grant-table frame.
pub const GRANT_ENTRIES_PER_PAGE: usize = crate::PAGE_SIZE / 8;

/// Type field mask of `flags`.
pub const GTF_TYPE_MASK: u16 = 3;
/// Entry type: unused.
pub const GTF_INVALID: u16 = 0;
/// Entry type: the frame may be mapped or copied by `domid`.
pub const GTF_PERMIT_ACCESS: u16 = 1;
/// Entry type: `domid` may transfer a frame to us.
pub const GTF_ACCEPT_TRANSFER: u16 = 2;
/// Entry type: a transfer completed.
pub const GTF_TRANSFER_COMPLETED: u16 = 3;
/// The grantee may only read.
pub const GTF_READONLY: u16 = 1 << 2;
/// Set by the hypervisor while the grantee reads (maps or copies from) the frame.
pub const GTF_READING: u16 = 1 << 3;
/// Set by the hypervisor while the grantee writes (maps writable or copies to) the frame.
pub const GTF_WRITING: u16 = 1 << 4;
/// Sub-page grant (v2 only).
pub const GTF_SUB_PAGE: u16 = 1 << 8;

/// `GNTTABOP_map_grant_ref`.
pub const GNTTABOP_MAP_GRANT_REF: u32 = 0;
/// `GNTTABOP_unmap_grant_ref`.
pub const GNTTABOP_UNMAP_GRANT_REF: u32 = 1;
/// `GNTTABOP_setup_table`.
pub const GNTTABOP_SETUP_TABLE: u32 = 2;
/// `GNTTABOP_copy`.
pub const GNTTABOP_COPY: u32 = 5;
/// `GNTTABOP_query_size`.
pub const GNTTABOP_QUERY_SIZE: u32 = 6;

/// Map flag: map for device access.
pub const GNTMAP_DEVICE_MAP: u32 = 1;
/// Map flag: map into the host address space.
pub const GNTMAP_HOST_MAP: u32 = 2;
/// Map flag: map read-only.
pub const GNTMAP_READONLY: u32 = 4;

/// Copy flag: the source is a grant reference.
pub const GNTCOPY_SOURCE_GREF: u16 = 1;
/// Copy flag: the destination is a grant reference.
pub const GNTCOPY_DEST_GREF: u16 = 2;

/// Grant operation status codes (`GNTST_*`).
pub mod status {
    /// Success.
    pub const OKAY: i16 = 0;
    /// General error.
    pub const GENERAL_ERROR: i16 = -1;
    /// Unrecognised domain id.
    pub const BAD_DOMAIN: i16 = -2;
    /// Unrecognised or inappropriate grant reference.
    pub const BAD_GNTREF: i16 = -3;
    /// Unrecognised mapping handle.
    pub const BAD_HANDLE: i16 = -4;
    /// Inappropriate virtual address.
    pub const BAD_VIRT_ADDR: i16 = -5;
    /// Inappropriate device address.
    pub const BAD_DEV_ADDR: i16 = -6;
    /// Out of space in I/O MMU.
    pub const NO_DEVICE_SPACE: i16 = -7;
    /// Not enough privilege for the operation.
    pub const PERMISSION_DENIED: i16 = -8;
    /// Specified page was invalid for the operation.
    pub const BAD_PAGE: i16 = -9;
    /// Copy arguments cross a page boundary.
    pub const BAD_COPY_ARG: i16 = -10;
    /// Page address size too large.
    pub const ADDRESS_TOO_BIG: i16 = -11;
    /// Operation not done; try again.
    pub const EAGAIN: i16 = -12;
    /// Out of space (handles are exhausted).
    pub const NO_SPACE: i16 = -13;

    /// Xen's text for a status code (`GNTTABOP_error_msgs`).
    pub fn describe(code: i16) -> &'static str {
        match code {
            OKAY => "okay",
            GENERAL_ERROR => "undefined error",
            BAD_DOMAIN => "unrecognised domain id",
            BAD_GNTREF => "invalid grant reference",
            BAD_HANDLE => "invalid mapping handle",
            BAD_VIRT_ADDR => "invalid virtual address",
            BAD_DEV_ADDR => "invalid device address",
            NO_DEVICE_SPACE => "no spare translation slot in the I/O MMU",
            PERMISSION_DENIED => "permission denied",
            BAD_PAGE => "bad page",
            BAD_COPY_ARG => "copy arguments cross page boundary",
            ADDRESS_TOO_BIG => "page address size too large",
            EAGAIN => "operation not done; try again",
            NO_SPACE => "out of space",
            _ => "unknown grant status",
        }
    }
}

/// `struct gnttab_map_grant_ref` (32 bytes).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GnttabMapGrantRef {
    /// Where to map (IN).
    pub host_addr: u64,
    /// `GNTMAP_*` (IN).
    pub flags: u32,
    /// The grant reference (IN).
    pub ref_: GrantRef,
    /// The granting domain (IN).
    pub dom: DomId,
    /// `GNTST_*` (OUT).
    pub status: i16,
    /// Mapping handle (OUT).
    pub handle: u32,
    /// Bus address for device mappings (OUT).
    pub dev_bus_addr: u64,
}

/// One side of a `gnttab_copy` (16 bytes): a grant reference or a frame, a domain and an offset.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GnttabCopyPtr {
    /// `ref` (u32) or `gmfn` (u64) union.
    pub u: u64,
    /// The domain.
    pub domid: DomId,
    /// Byte offset within the page.
    pub offset: u16,
    /// Padding.
    pub _pad: u32,
}

/// `struct gnttab_copy` (40 bytes).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GnttabCopy {
    /// Where to copy from.
    pub source: GnttabCopyPtr,
    /// Where to copy to.
    pub dest: GnttabCopyPtr,
    /// Bytes to copy; source and destination ranges may not cross a page.
    pub len: u16,
    /// `GNTCOPY_*`.
    pub flags: u16,
    /// `GNTST_*` (OUT).
    pub status: i16,
    /// Tail padding.
    pub _pad: u16,
}
