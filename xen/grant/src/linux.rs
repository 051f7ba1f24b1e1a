//! `/dev/xen/gntdev` (map and copy other domains' grants) and `/dev/xen/gntalloc` (grant our
//! own pages) under real Xen.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Arc;

use xen_abi::grant_table::{GNTCOPY_DEST_GREF, GNTCOPY_SOURCE_GREF};
use xen_abi::linux::gntalloc::*;
use xen_abi::linux::gntdev::*;
use xen_abi::{DomId, GrantRef, PAGE_SIZE};
use zerocopy::{FromBytes, IntoBytes};

use crate::{
    CopyOp, Error, GrantAllocator, GrantMapper, GrantMapping, GrantedPages, Result, SharedMemory,
};

fn open(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::Os {
            op: "open",
            source: e,
        })
}

/// Calls an ioctl whose argument is the byte buffer `arg` (header plus trailing array).
fn ioctl_bytes(file: &File, op: &'static str, request: u32, arg: &mut [u8]) -> Result<()> {
    // SAFETY: `arg` is a buffer laid out as `request` expects (built from the xen-abi structs
    // plus the trailing array the count field describes); it outlives the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), request as _, arg.as_mut_ptr()) };
    if rc < 0 {
        return Err(Error::Os {
            op,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// `mmap`s `len` bytes of a Xen device at `offset`.
fn map_device(
    file: &File,
    op: &'static str,
    len: usize,
    writable: bool,
    offset: u64,
) -> Result<NonNull<u8>> {
    let prot = if writable {
        libc::PROT_READ | libc::PROT_WRITE
    } else {
        libc::PROT_READ
    };
    // SAFETY: a fresh shared mapping chosen by the kernel; the device validates `offset`.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            offset as libc::off_t,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(Error::Os {
            op,
            source: io::Error::last_os_error(),
        });
    }
    NonNull::new(ptr.cast()).ok_or(Error::Invalid {
        op,
        reason: "mmap returned null",
    })
}

/// A handle on `/dev/xen/gntdev`.
#[derive(Clone)]
pub struct Gntdev {
    file: Arc<File>,
}

impl Gntdev {
    /// Opens `/dev/xen/gntdev`.
    pub fn open() -> Result<Self> {
        Ok(Self {
            file: Arc::new(open(Path::new("/dev/xen/gntdev"))?),
        })
    }
}

/// Grants mapped through gntdev; unmapped (munmap, then the unmap ioctl) on drop.
pub struct GntdevMapping {
    file: Arc<File>,
    ptr: NonNull<u8>,
    len: usize,
    index: u64,
    count: u32,
    writable: bool,
}

// SAFETY: the mapping is plain shared memory owned by this value; access is through raw
// pointers by whoever holds it.
unsafe impl Send for GntdevMapping {}

// SAFETY: `&GntdevMapping` only hands out the address and length; the memory itself is shared
// with another domain anyway and accessed with volatile/atomic discipline by its users.
unsafe impl Sync for GntdevMapping {}

impl Drop for GntdevMapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` is the mapping created in `map` and not unmapped before.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        let mut arg = IoctlGntdevUnmapGrantRef {
            index: self.index,
            count: self.count,
            pad: 0,
        };
        if let Err(e) = ioctl_bytes(
            &self.file,
            "unmap",
            IOCTL_GNTDEV_UNMAP_GRANT_REF,
            arg.as_mut_bytes(),
        ) {
            // Nothing else can be done in drop; the kernel reclaims it when the fd closes.
            let _ = e;
        }
    }
}

// SAFETY: `ptr..ptr+len` stays mapped until drop; gntdev maps page-aligned.
unsafe impl SharedMemory for GntdevMapping {
    fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    fn len(&self) -> usize {
        self.len
    }
}

impl GrantMapping for GntdevMapping {
    fn writable(&self) -> bool {
        self.writable
    }
}

impl GrantMapper for Gntdev {
    type Mapping = GntdevMapping;

    fn map(&self, domid: DomId, refs: &[GrantRef], writable: bool) -> Result<GntdevMapping> {
        let Some(&first) = refs.first() else {
            return Err(Error::Invalid {
                op: "map",
                reason: "no grant references",
            });
        };
        let count = u32::try_from(refs.len()).map_err(|_| Error::Invalid {
            op: "map",
            reason: "too many refs",
        })?;
        let header = IoctlGntdevMapGrantRef {
            count,
            pad: 0,
            index: 0,
            refs: [GntdevGrantRef {
                domid: domid.into(),
                ref_: first,
            }],
        };
        let mut buf = header.as_bytes().to_vec();
        for &r in refs.iter().skip(1) {
            buf.extend_from_slice(
                GntdevGrantRef {
                    domid: domid.into(),
                    ref_: r,
                }
                .as_bytes(),
            );
        }
        ioctl_bytes(&self.file, "map", IOCTL_GNTDEV_MAP_GRANT_REF, &mut buf)?;
        let out = IoctlGntdevMapGrantRef::read_from_prefix(&buf)
            .map_err(|_| Error::Invalid {
                op: "map",
                reason: "short ioctl reply",
            })?
            .0;
        let len = refs.len() * PAGE_SIZE;
        match map_device(&self.file, "map", len, writable, out.index) {
            Ok(ptr) => Ok(GntdevMapping {
                file: Arc::clone(&self.file),
                ptr,
                len,
                index: out.index,
                count,
                writable,
            }),
            Err(e) => {
                let mut arg = IoctlGntdevUnmapGrantRef {
                    index: out.index,
                    count,
                    pad: 0,
                };
                let _ = ioctl_bytes(
                    &self.file,
                    "unmap",
                    IOCTL_GNTDEV_UNMAP_GRANT_REF,
                    arg.as_mut_bytes(),
                );
                Err(match e {
                    Error::Os { source, .. } => Error::Refused {
                        op: "map",
                        domid,
                        gref: first,
                        status: if source.raw_os_error() == Some(libc::EINVAL) {
                            xen_abi::grant_table::status::BAD_GNTREF
                        } else {
                            xen_abi::grant_table::status::GENERAL_ERROR
                        },
                    },
                    other => other,
                })
            }
        }
    }

    fn copy(&self, ops: &mut [CopyOp<'_>], status: &mut [i16]) -> Result<()> {
        if status.len() != ops.len() {
            return Err(Error::Invalid {
                op: "copy",
                reason: "status slice length differs from ops",
            });
        }
        let mut segments = Vec::with_capacity(ops.len());
        for op in ops.iter_mut() {
            let g = op.grant();
            let foreign = copy_foreign(g.gref, g.offset, g.domid);
            let len = u16::try_from(op.len()).map_err(|_| Error::Invalid {
                op: "copy",
                reason: "segment over 64 KiB",
            })?;
            let seg = match op {
                CopyOp::FromGrant { dst, .. } => GntdevGrantCopySegment {
                    source: foreign,
                    dest: dst.as_mut_ptr() as u64,
                    len,
                    flags: GNTCOPY_SOURCE_GREF,
                    ..Default::default()
                },
                CopyOp::ToGrant { src, .. } => GntdevGrantCopySegment {
                    source: src.as_ptr() as u64,
                    dest: foreign,
                    len,
                    flags: GNTCOPY_DEST_GREF,
                    ..Default::default()
                },
            };
            segments.push(seg);
        }
        let mut arg = IoctlGntdevGrantCopy {
            count: u32::try_from(segments.len()).map_err(|_| Error::Invalid {
                op: "copy",
                reason: "too many segments",
            })?,
            pad: 0,
            segments: segments.as_mut_ptr() as u64,
        };
        // The local buffers in `ops` and `segments` stay borrowed across the ioctl.
        ioctl_bytes(
            &self.file,
            "copy",
            IOCTL_GNTDEV_GRANT_COPY,
            arg.as_mut_bytes(),
        )?;
        for (s, seg) in status.iter_mut().zip(&segments) {
            *s = seg.status;
        }
        Ok(())
    }
}

/// A handle on `/dev/xen/gntalloc`.
#[derive(Clone)]
pub struct Gntalloc {
    file: Arc<File>,
}

impl Gntalloc {
    /// Opens `/dev/xen/gntalloc`.
    pub fn open() -> Result<Self> {
        Ok(Self {
            file: Arc::new(open(Path::new("/dev/xen/gntalloc"))?),
        })
    }
}

/// Pages allocated and granted through gntalloc.
pub struct GntallocPages {
    file: Arc<File>,
    ptr: NonNull<u8>,
    len: usize,
    index: u64,
    refs: Vec<GrantRef>,
}

// SAFETY: as for GntdevMapping: plain shared memory owned by this value.
unsafe impl Send for GntallocPages {}

impl Drop for GntallocPages {
    fn drop(&mut self) {
        // SAFETY: the mapping created in `grant_pages`, not unmapped before.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        let mut arg = IoctlGntallocDeallocGref {
            index: self.index,
            count: self.refs.len() as u32,
            pad: 0,
        };
        // The driver defers the revocation while the peer still maps the pages.
        let _ = ioctl_bytes(
            &self.file,
            "dealloc",
            IOCTL_GNTALLOC_DEALLOC_GREF,
            arg.as_mut_bytes(),
        );
    }
}

// SAFETY: `ptr..ptr+len` stays mapped until drop, page-aligned.
unsafe impl SharedMemory for GntallocPages {
    fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    fn len(&self) -> usize {
        self.len
    }
}

impl GrantedPages for GntallocPages {
    fn refs(&self) -> &[GrantRef] {
        &self.refs
    }
}

impl GrantAllocator for Gntalloc {
    type Pages = GntallocPages;

    fn grant_pages(&self, domid: DomId, count: usize, writable: bool) -> Result<GntallocPages> {
        if count == 0 {
            return Err(Error::Invalid {
                op: "grant",
                reason: "no pages",
            });
        }
        let n = u32::try_from(count).map_err(|_| Error::Invalid {
            op: "grant",
            reason: "too many pages",
        })?;
        let header = IoctlGntallocAllocGref {
            domid,
            flags: if writable { GNTALLOC_FLAG_WRITABLE } else { 0 },
            count: n,
            ..Default::default()
        };
        // The header's trailing `gref_ids[1]` plus room for the rest.
        let mut buf = header.as_bytes().to_vec();
        buf.resize(16 + 4 * count.max(2), 0);
        ioctl_bytes(&self.file, "grant", IOCTL_GNTALLOC_ALLOC_GREF, &mut buf)?;
        let index = u64::read_from_bytes(buf.get(8..16).unwrap_or_default()).map_err(|_| {
            Error::Invalid {
                op: "grant",
                reason: "short ioctl reply",
            }
        })?;
        let refs: Vec<GrantRef> = buf
            .get(16..16 + 4 * count)
            .unwrap_or_default()
            .chunks_exact(4)
            .filter_map(|c| <[u8; 4]>::try_from(c).ok().map(u32::from_ne_bytes))
            .collect();
        let len = count * PAGE_SIZE;
        let ptr = map_device(&self.file, "grant", len, true, index)?;
        Ok(GntallocPages {
            file: Arc::clone(&self.file),
            ptr,
            len,
            index,
            refs,
        })
    }
}
