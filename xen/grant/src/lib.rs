//! Xen grant tables, from both sides.
//!
//! - [`GrantMapper`] is the backend's side: map a frontend's grants into our address space
//!   (RAII: the mapping is unmapped when dropped) or copy to and from granted pages without
//!   mapping them (grant copy, in batches, with a `GNTST_*` status per segment).
//!   [`CopyBuf`]s from [`GrantMapper::copy_buffer`] are local buffers such copies cost the
//!   least to and from.
//! - [`GrantAllocator`] is the frontend's side: grant pages of our own to another domain.
//!
//! Implementations: [`linux::Gntdev`] over `/dev/xen/gntdev` (real Xen), and the simulated
//! host's in `xen-sim`. Mappings implement [`xen_ring::SharedMemory`], so rings run straight
//! over them.

mod copybuf;
pub mod linux;

pub use copybuf::{CopyBuf, CopyBufSource};

use xen_abi::{DomId, GrantRef};
pub use xen_ring::SharedMemory;

/// Grant errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The hypervisor refused the grant (`GNTST_*`): a guest fault for backends.
    #[error("grant {op} of ref {gref} from domain {domid}: {}", xen_abi::grant_table::status::describe(*status))]
    Refused {
        /// Which operation.
        op: &'static str,
        /// The granting domain.
        domid: DomId,
        /// The (first failing) grant reference.
        gref: GrantRef,
        /// `GNTST_*`.
        status: i16,
    },
    /// Arguments the interface cannot express (empty list, page-crossing copy, ...).
    #[error("invalid grant {op}: {reason}")]
    Invalid {
        /// Which operation.
        op: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// The kernel or the simulated hypervisor failed.
    #[error("grant {op}: {source}")]
    Os {
        /// Which operation.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Result of grant operations.
pub type Result<T> = std::result::Result<T, Error>;

/// One side of a grant copy: a granted page of another domain, and a byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantPtr {
    /// The granting domain.
    pub domid: DomId,
    /// The grant.
    pub gref: GrantRef,
    /// Offset within the 4 KiB page.
    pub offset: u16,
}

/// One grant-copy segment. The local buffer's length is the copy length; the granted range
/// (`offset + len`) may not cross the page.
#[derive(Debug)]
pub enum CopyOp<'a> {
    /// Copy from a granted page into a local buffer.
    FromGrant {
        /// Source.
        src: GrantPtr,
        /// Destination.
        dst: &'a mut [u8],
    },
    /// Copy from a local buffer into a granted page.
    ToGrant {
        /// Source.
        src: &'a [u8],
        /// Destination.
        dst: GrantPtr,
    },
}

impl CopyOp<'_> {
    /// The granted side.
    pub fn grant(&self) -> GrantPtr {
        match self {
            Self::FromGrant { src, .. } => *src,
            Self::ToGrant { dst, .. } => *dst,
        }
    }

    /// Bytes to copy.
    pub fn len(&self) -> usize {
        match self {
            Self::FromGrant { dst, .. } => dst.len(),
            Self::ToGrant { src, .. } => src.len(),
        }
    }

    /// Whether the copy is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `GNTST_bad_copy_arg` if the granted range leaves the page, else `GNTST_okay`.
    pub fn check_bounds(&self) -> i16 {
        let g = self.grant();
        if usize::from(g.offset) + self.len() > xen_abi::PAGE_SIZE {
            xen_abi::grant_table::status::BAD_COPY_ARG
        } else {
            xen_abi::grant_table::status::OKAY
        }
    }
}

/// Mapped grants: contiguous pages in our address space, unmapped on drop. Shareable between
/// threads: all access to the pages goes through raw pointers.
pub trait GrantMapping: SharedMemory + Sync {
    /// Number of pages.
    fn pages(&self) -> usize {
        self.len() / xen_abi::PAGE_SIZE
    }
    /// Whether the mapping is writable.
    fn writable(&self) -> bool;
}

/// The backend side: mapping and copying other domains' grants.
pub trait GrantMapper: Send + Sync {
    /// The mapping type.
    type Mapping: GrantMapping + 'static;

    /// Maps `refs` of `domid` contiguously (`IOCTL_GNTDEV_MAP_GRANT_REF` + `mmap`). A writable
    /// map of a read-only grant, or any bad ref, fails the whole map.
    fn map(&self, domid: DomId, refs: &[GrantRef], writable: bool) -> Result<Self::Mapping>;

    /// Runs a batch of copies (`IOCTL_GNTDEV_GRANT_COPY`), writing each segment's `GNTST_*`
    /// status into `status` (same length as `ops`). `Err` means the batch could not be run.
    fn copy(&self, ops: &mut [CopyOp<'_>], status: &mut [i16]) -> Result<()>;

    /// A buffer of at least `len` bytes for the local side of this mapper's copies, where the
    /// implementation copies to and from some memory with less work than from any other (the
    /// simulated host: memory it shares with its hypervisor, so no staging copy). `None` where
    /// all memory is alike (gntdev) or none is left: use an ordinary buffer then.
    fn copy_buffer(&self, len: usize) -> Option<CopyBuf> {
        let _ = len;
        None
    }
}

/// Pages of our own that we granted to another domain; access is revoked when dropped.
pub trait GrantedPages: SharedMemory {
    /// One grant reference per page.
    fn refs(&self) -> &[GrantRef];
}

/// The frontend side: granting our pages to another domain.
pub trait GrantAllocator: Send + Sync {
    /// The granted pages type.
    type Pages: GrantedPages + 'static;

    /// Allocates `count` zeroed pages and grants them to `domid` (read-only unless
    /// `writable`).
    fn grant_pages(&self, domid: DomId, count: usize, writable: bool) -> Result<Self::Pages>;

    /// Like [`grant_pages`](Self::grant_pages) with `count` separate single pages, each with
    /// its own lifetime (a frontend's pool of persistent grants). Implementations that can
    /// grant them in one operation should; by default, one page at a time.
    fn grant_single_pages(
        &self,
        domid: DomId,
        count: usize,
        writable: bool,
    ) -> Result<Vec<Self::Pages>> {
        (0..count)
            .map(|_| self.grant_pages(domid, 1, writable))
            .collect()
    }
}
