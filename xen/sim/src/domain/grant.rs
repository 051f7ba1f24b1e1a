//! Grants on the simulated host: the same `GrantMapper`/`GrantAllocator` traits as gntdev and
//! gntalloc, through the hypervisor.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use xen_abi::{DomId, GrantRef};
use xen_grant::{
    CopyOp, Error as GrantError, GrantAllocator, GrantMapper, GrantMapping, GrantedPages,
    SharedMemory,
};

use super::copybuf::ClientCopyBuffer;
use super::fastcopy::FastCopy;
use super::memory::{map_frames, Pages};
use super::{Credentials, Error, HvConn};
use crate::hv::proto::{CopySegment, Reply, Request};

pub(super) fn os(op: &'static str, e: Error) -> GrantError {
    let source = match e {
        Error::Io(io) => io,
        Error::Refused { errno, message } => {
            std::io::Error::new(std::io::Error::from_raw_os_error(errno).kind(), message)
        }
        other => std::io::Error::other(other.to_string()),
    };
    GrantError::Os { op, source }
}

/// Pages just granted: their references, their frames, and our memory to map them from.
type GrantedFrames = (Vec<GrantRef>, Vec<u32>, Arc<OwnedFd>);

/// A grant handle: maps and copies other domains' grants, and grants our own pages.
pub struct SimGrants {
    conn: Arc<HvConn>,
    /// Memory descriptors of granters, by (domain, writable), sent once per connection.
    memory: Mutex<HashMap<(DomId, bool), Arc<OwnedFd>>>,
    /// Our own memory descriptor, for the allocator side.
    own: Mutex<Option<Arc<OwnedFd>>>,
    /// The connection's copy buffer: `None` until first used, then `Some(None)` if it could
    /// not be set up (copies then carry their bytes in the messages).
    copy_buffer: Mutex<Option<Option<ClientCopyBuffer>>>,
    /// Grant copies on the caller's thread (unless switched off, or no slot is free).
    fast: FastCopy,
    fast_enabled: AtomicBool,
}

impl SimGrants {
    /// Asks the hypervisor for `count` granted pages of our memory: their references, frames
    /// and our memory's descriptor to map them from (access ends again if that fails).
    fn grant_frames(
        &self,
        domid: DomId,
        count: usize,
        writable: bool,
    ) -> Result<GrantedFrames, GrantError> {
        let count32 = u32::try_from(count).map_err(|_| GrantError::Invalid {
            op: "grant",
            reason: "too many pages",
        })?;
        let (reply, _) = self
            .conn
            .call(&Request::GrantPages {
                remote: domid,
                count: count32,
                writable,
            })
            .map_err(|e| os("grant", e))?;
        let Reply::Granted { refs, frames } = reply else {
            return Err(os(
                "grant",
                Error::Protocol("unexpected grant reply".into()),
            ));
        };
        match self.own_memory() {
            Ok(fd) => Ok((refs, frames, fd)),
            Err(e) => {
                let _ = self.conn.call(&Request::EndAccess { refs });
                Err(e)
            }
        }
    }

    pub(crate) fn open(creds: &Credentials) -> super::Result<Self> {
        Ok(Self {
            conn: Arc::new(HvConn::open(creds, false)?),
            memory: Mutex::new(HashMap::new()),
            own: Mutex::new(None),
            copy_buffer: Mutex::new(None),
            fast: FastCopy::new(creds.domid),
            fast_enabled: AtomicBool::new(true),
        })
    }

    /// Performs grant copies as hypercalls served by the hypervisor's thread (through the
    /// connection's copy buffer) instead of on the calling thread: for tests of that path
    /// and for comparisons.
    pub fn copy_through_hypervisor(&self) {
        self.fast_enabled.store(false, Ordering::Relaxed);
    }

    /// The connection's copy buffer, registered at first use (`Some(None)` if it could not
    /// be: copies then carry their bytes in the messages).
    fn shared_buffer(&self) -> std::sync::MutexGuard<'_, Option<Option<ClientCopyBuffer>>> {
        let mut buffer = self
            .copy_buffer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buffer.is_none() {
            *buffer = Some(match ClientCopyBuffer::register(&self.conn) {
                Ok(b) => Some(b),
                Err(e) => {
                    tracing::debug!("no shared copy buffer, copies go through messages: {e}");
                    None
                }
            });
        }
        buffer
    }

    fn own_memory(&self) -> Result<Arc<OwnedFd>, GrantError> {
        let mut own = self
            .own
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(fd) = own.as_ref() {
            return Ok(Arc::clone(fd));
        }
        let (_, fds) = self
            .conn
            .call(&Request::OwnMemory)
            .map_err(|e| os("grant", e))?;
        let fd = Arc::new(fds.into_iter().next().ok_or(GrantError::Invalid {
            op: "grant",
            reason: "no memory descriptor",
        })?);
        *own = Some(Arc::clone(&fd));
        Ok(fd)
    }
}

/// Grants of another domain mapped into this process.
pub struct SimMapping {
    /// Always `Some` until drop, which unmaps the pages before telling the hypervisor.
    pages: Option<Pages>,
    handle: u64,
    writable: bool,
    conn: Arc<HvConn>,
}

impl Drop for SimMapping {
    fn drop(&mut self) {
        // Unmap our pages first, then release the pin: the granter may reuse the page only
        // once nothing maps it any more (gntdev's order: munmap, then the unmap ioctl).
        drop(self.pages.take());
        let _ = self.conn.call(&Request::UnmapGrants {
            handle: self.handle,
        });
    }
}

// SAFETY: `pages` stays mapped for the life of the value; its length is fixed.
unsafe impl SharedMemory for SimMapping {
    fn as_ptr(&self) -> *mut u8 {
        self.pages
            .as_ref()
            .map_or(std::ptr::null_mut(), |p| p.ptr.as_ptr())
    }
    fn len(&self) -> usize {
        self.pages.as_ref().map_or(0, |p| p.len)
    }
}

impl GrantMapping for SimMapping {
    fn writable(&self) -> bool {
        self.writable
    }
}

impl GrantMapper for SimGrants {
    type Mapping = SimMapping;

    fn copy_buffer(&self, len: usize) -> Option<xen_grant::CopyBuf> {
        // Copies on the caller's thread treat all memory alike: no buffer is worth its memory.
        if self.fast_enabled.load(Ordering::Relaxed) {
            return None;
        }
        self.shared_buffer().as_ref()?.as_ref()?.slot(len)
    }

    fn map(
        &self,
        domid: DomId,
        refs: &[GrantRef],
        writable: bool,
    ) -> Result<SimMapping, GrantError> {
        if refs.is_empty() {
            return Err(GrantError::Invalid {
                op: "map",
                reason: "no grant references",
            });
        }
        let (reply, fds) = self
            .conn
            .call(&Request::MapGrants {
                granter: domid,
                refs: refs.to_vec(),
                writable,
            })
            .map_err(|e| os("map", e))?;
        let (handle, frames, fd_attached) = match reply {
            Reply::Mapped {
                handle,
                frames,
                fd_attached,
            } => (handle, frames, fd_attached),
            Reply::GrantStatus { status, gref } => {
                return Err(GrantError::Refused {
                    op: "map",
                    domid,
                    gref,
                    status,
                })
            }
            other => return Err(os("map", Error::Protocol(format!("{other:?}")))),
        };
        let fd = {
            let mut memory = self
                .memory
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if fd_attached {
                if let Some(fd) = fds.into_iter().next() {
                    memory.insert((domid, writable), Arc::new(fd));
                }
            }
            memory.get(&(domid, writable)).cloned()
        };
        let unmap = |conn: &HvConn| {
            let _ = conn.call(&Request::UnmapGrants { handle });
        };
        let Some(fd) = fd else {
            unmap(&self.conn);
            return Err(GrantError::Invalid {
                op: "map",
                reason: "hypervisor sent no memory descriptor",
            });
        };
        match map_frames(&fd, &frames, writable) {
            Ok(pages) => Ok(SimMapping {
                pages: Some(pages),
                handle,
                writable,
                conn: Arc::clone(&self.conn),
            }),
            Err(e) => {
                unmap(&self.conn);
                Err(GrantError::Os {
                    op: "map",
                    source: e,
                })
            }
        }
    }

    fn copy(&self, ops: &mut [CopyOp<'_>], status: &mut [i16]) -> Result<(), GrantError> {
        if status.len() != ops.len() {
            return Err(GrantError::Invalid {
                op: "copy",
                reason: "status slice length differs from ops",
            });
        }
        if self.fast_enabled.load(Ordering::Relaxed) && self.fast.copy(&self.conn, ops, status) {
            return Ok(());
        }
        let mut buffer = self.shared_buffer();
        if let Some(buffer) = buffer.as_mut().and_then(Option::as_mut) {
            return buffer.copy(&self.conn, ops, status);
        }
        let mut segments = Vec::with_capacity(ops.len());
        for op in ops.iter() {
            let g = op.grant();
            let len = u16::try_from(op.len()).map_err(|_| GrantError::Invalid {
                op: "copy",
                reason: "segment over 64 KiB",
            })?;
            segments.push(match op {
                CopyOp::FromGrant { .. } => CopySegment::FromGrant {
                    domid: g.domid,
                    gref: g.gref,
                    offset: g.offset,
                    len,
                },
                CopyOp::ToGrant { src, .. } => CopySegment::ToGrant {
                    domid: g.domid,
                    gref: g.gref,
                    offset: g.offset,
                    data: serde_bytes::ByteBuf::from(src.to_vec()),
                },
            });
        }
        let (reply, _) = self
            .conn
            .call(&Request::CopyGrants { segments })
            .map_err(|e| os("copy", e))?;
        let Reply::Copied {
            status: results,
            data,
        } = reply
        else {
            return Err(os("copy", Error::Protocol("unexpected copy reply".into())));
        };
        let mut data = data.into_iter();
        for ((op, slot), result) in ops.iter_mut().zip(status.iter_mut()).zip(results) {
            *slot = result;
            if let CopyOp::FromGrant { dst, .. } = op {
                if let Some(bytes) = data.next() {
                    if result == xen_abi::grant_table::status::OKAY && bytes.len() == dst.len() {
                        dst.copy_from_slice(&bytes);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Pages of our memory granted to another domain; access ends when dropped (deferred by the
/// hypervisor while the grantee still maps them).
pub struct SimGrantedPages {
    pages: Pages,
    refs: Vec<GrantRef>,
    conn: Arc<HvConn>,
}

impl Drop for SimGrantedPages {
    fn drop(&mut self) {
        let _ = self.conn.call(&Request::EndAccess {
            refs: std::mem::take(&mut self.refs),
        });
    }
}

// SAFETY: `pages` stays mapped for the life of the value; its length is fixed.
unsafe impl SharedMemory for SimGrantedPages {
    fn as_ptr(&self) -> *mut u8 {
        self.pages.ptr.as_ptr()
    }
    fn len(&self) -> usize {
        self.pages.len
    }
}

impl GrantedPages for SimGrantedPages {
    fn refs(&self) -> &[GrantRef] {
        &self.refs
    }
}

impl SimGrantedPages {
    /// Ends access now, reporting grants the peer still maps (their revocation is deferred).
    pub fn end_access(mut self) -> Result<Vec<GrantRef>, GrantError> {
        let refs = std::mem::take(&mut self.refs);
        match self
            .conn
            .call(&Request::EndAccess { refs })
            .map_err(|e| os("end-access", e))?
            .0
        {
            Reply::Ended { deferred } => Ok(deferred),
            other => Err(os("end-access", Error::Protocol(format!("{other:?}")))),
        }
    }
}

impl GrantAllocator for SimGrants {
    type Pages = SimGrantedPages;

    /// One hypervisor call for all pages (the lowest free frames, so usually consecutive),
    /// each page then mapped on its own.
    fn grant_single_pages(
        &self,
        domid: DomId,
        count: usize,
        writable: bool,
    ) -> Result<Vec<SimGrantedPages>, GrantError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let (refs, frames, fd) = self.grant_frames(domid, count, writable)?;
        let end_all = |refs: Vec<GrantRef>| {
            let _ = self.conn.call(&Request::EndAccess { refs });
        };
        let mut out = Vec::with_capacity(refs.len());
        for (i, (&gref, &frame)) in refs.iter().zip(&frames).enumerate() {
            match map_frames(&fd, &[frame], true) {
                Ok(pages) => out.push(SimGrantedPages {
                    pages,
                    refs: vec![gref],
                    conn: Arc::clone(&self.conn),
                }),
                Err(e) => {
                    // The pages made so far end their access when `out` drops.
                    end_all(refs.get(i..).map(<[GrantRef]>::to_vec).unwrap_or_default());
                    return Err(GrantError::Os {
                        op: "grant",
                        source: e,
                    });
                }
            }
        }
        Ok(out)
    }

    fn grant_pages(
        &self,
        domid: DomId,
        count: usize,
        writable: bool,
    ) -> Result<SimGrantedPages, GrantError> {
        let (refs, frames, fd) = self.grant_frames(domid, count, writable)?;
        match map_frames(&fd, &frames, true) {
            Ok(pages) => Ok(SimGrantedPages {
                pages,
                refs,
                conn: Arc::clone(&self.conn),
            }),
            Err(e) => {
                let _ = self.conn.call(&Request::EndAccess { refs });
                Err(GrantError::Os {
                    op: "grant",
                    source: e,
                })
            }
        }
    }
}

impl std::fmt::Debug for SimMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimMapping")
            .field("len", &self.len())
            .field("writable", &self.writable)
            .finish()
    }
}

impl std::fmt::Debug for SimGrantedPages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimGrantedPages")
            .field("refs", &self.refs)
            .finish()
    }
}
