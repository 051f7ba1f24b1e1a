//! Local buffers for grant copies that an implementation copies to and from without staging.
//!
//! With gntdev, Xen copies between a granted page and any page of the caller, so any memory
//! serves. The simulated host's hypervisor is another process: it reaches only memory the
//! caller shares with it, so a copy through an ordinary buffer is staged (copied once more)
//! through that shared memory. A [`CopyBuf`] handed out by
//! [`GrantMapper::copy_buffer`](crate::GrantMapper::copy_buffer) already lies in it: copies to
//! and from it move each byte once, as on Xen.

use std::ptr::NonNull;
use std::sync::Arc;

/// Where a [`CopyBuf`]'s memory comes from: keeps it mapped and takes it back.
pub trait CopyBufSource: Send + Sync {
    /// Takes back the region handed out with `token`; it is no longer used.
    fn release(&self, token: usize);
}

/// A byte buffer of fixed capacity in memory an implementation copies to and from directly,
/// returned to its source on drop. Dereferences to its first `len` bytes.
pub struct CopyBuf {
    ptr: NonNull<u8>,
    capacity: usize,
    len: usize,
    token: usize,
    source: Arc<dyn CopyBufSource>,
}

// SAFETY: a `CopyBuf` owns its region exclusively (see `from_raw`); moving it to another
// thread moves that ownership, and `&CopyBuf` only reads.
unsafe impl Send for CopyBuf {}
// SAFETY: as above; shared references give only `&[u8]`.
unsafe impl Sync for CopyBuf {}

impl CopyBuf {
    /// A buffer over `capacity` bytes at `ptr`, of length `capacity`.
    ///
    /// # Safety
    ///
    /// `ptr..ptr + capacity` must be initialized memory valid for reads and writes, used by
    /// nothing else until `source.release(token)` is called (which the drop does), except by
    /// copies the caller passes this buffer's bytes to; `source` must keep it mapped as long
    /// as it lives.
    pub unsafe fn from_raw(
        ptr: NonNull<u8>,
        capacity: usize,
        token: usize,
        source: Arc<dyn CopyBufSource>,
    ) -> Self {
        Self {
            ptr,
            capacity,
            len: capacity,
            token,
            source,
        }
    }

    /// Bytes it can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Sets the length to `len`, at most the capacity (bytes beyond the old length keep
    /// whatever they held). Returns the new length.
    pub fn set_len(&mut self, len: usize) -> usize {
        self.len = len.min(self.capacity);
        self.len
    }
}

impl std::ops::Deref for CopyBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `len <= capacity`, and the region is initialized, mapped and ours (from_raw).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for CopyBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for `deref`; `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for CopyBuf {
    fn drop(&mut self) {
        self.source.release(self.token);
    }
}

impl std::fmt::Debug for CopyBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyBuf")
            .field("len", &self.len)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}
