//! Frame buffers: where the grant mapper has memory it copies to and from at least cost (the
//! simulated host's shared copy slots, [`xen_grant::CopyBuf`]), large frames live there, so a
//! frame's bytes are copied once between the guest and us; otherwise an ordinary vector.

use xen_grant::{CopyBuf, GrantMapper};
use xen_netif::vnet::VNET_HDR_LEN;

/// Frames at least this large (virtio header included) are worth a copy buffer.
pub const COPY_BUFFER_MIN: usize = 16 << 10;

/// Where a frame starts in a copy buffer: after room such that the frame proper, past its
/// virtio header, starts a page, lining its pages up with the guest's (netfronts put a slot's
/// data at offset 0 of its page), so that each page-sized fragment is one aligned copy. The
/// slot (68 KiB) holds the room, the header and a 64 KiB frame exactly.
const FRAME_START: usize = xen_abi::PAGE_SIZE - VNET_HDR_LEN % xen_abi::PAGE_SIZE;

/// A frame's bytes: a grant mapper's copy buffer or a vector.
#[derive(Debug)]
pub enum FrameBuf {
    /// Ordinary memory.
    Heap(Vec<u8>),
    /// Memory the grant mapper copies to and from directly; the frame is its bytes from
    /// a page less its header on (room that lines the frame up with guest pages).
    Copy(CopyBuf),
}

impl Default for FrameBuf {
    fn default() -> Self {
        Self::Heap(Vec::new())
    }
}

impl From<Vec<u8>> for FrameBuf {
    fn from(v: Vec<u8>) -> Self {
        Self::Heap(v)
    }
}

impl FrameBuf {
    /// A buffer of `len` bytes: from `grants`' copy memory if `len` is large enough to be
    /// worth it and some is free, else zeroed on the heap.
    pub fn new<G: GrantMapper + ?Sized>(grants: &G, len: usize) -> Self {
        Self::in_copy_buffer(grants, len).unwrap_or_else(|| Self::Heap(vec![0; len]))
    }

    /// A buffer of `len` bytes in `grants`' copy memory, if `len` is large enough to be worth
    /// it and some is free.
    pub fn in_copy_buffer<G: GrantMapper + ?Sized>(grants: &G, len: usize) -> Option<Self> {
        if len < COPY_BUFFER_MIN {
            return None;
        }
        let mut buf = grants.copy_buffer(FRAME_START + len)?;
        buf.set_len(FRAME_START + len);
        Some(Self::Copy(buf))
    }

    /// Whether it is a copy buffer.
    pub fn is_copy(&self) -> bool {
        matches!(self, Self::Copy(_))
    }

    /// Bytes it can hold without moving.
    pub fn capacity(&self) -> usize {
        match self {
            Self::Heap(v) => v.capacity(),
            Self::Copy(c) => c.capacity().saturating_sub(FRAME_START),
        }
    }

    /// Sets the length to `len`. Bytes beyond the old length are zero in a vector and hold
    /// earlier frames' bytes in a copy buffer (every user writes before reading); a copy
    /// buffer too small for `len` becomes a vector.
    pub fn set_len(&mut self, len: usize) {
        match self {
            Self::Heap(v) => v.resize(len, 0),
            Self::Copy(c) if FRAME_START + len <= c.capacity() => {
                c.set_len(FRAME_START + len);
            }
            Self::Copy(_) => *self = Self::Heap(vec![0; len]),
        }
    }
}

impl std::ops::Deref for FrameBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Self::Heap(v) => v,
            Self::Copy(c) => c.get(FRAME_START..).unwrap_or_default(),
        }
    }
}

impl std::ops::DerefMut for FrameBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        match self {
            Self::Heap(v) => v,
            Self::Copy(c) => c.get_mut(FRAME_START..).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use xen_grant::CopyBufSource;

    /// One region of heap memory handed out as a copy buffer; counts releases.
    struct Region {
        bytes: Mutex<Vec<u8>>,
        released: AtomicUsize,
    }

    impl CopyBufSource for Region {
        fn release(&self, _token: usize) {
            self.released.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn copy_buf(region: &Arc<Region>) -> CopyBuf {
        let ptr = region.bytes.lock().unwrap().as_mut_ptr();
        let len = region.bytes.lock().unwrap().len();
        let source: Arc<dyn CopyBufSource> = region.clone();
        // SAFETY: the vector lives (unmoved, never resized) as long as `region`, which the
        // buffer holds; nothing else touches it in this test.
        unsafe { CopyBuf::from_raw(std::ptr::NonNull::new(ptr).unwrap(), len, 7, source) }
    }

    #[test]
    fn a_copy_buffer_frame_starts_after_its_room_and_moves_to_the_heap_when_too_small() {
        let region = Arc::new(Region {
            bytes: Mutex::new(vec![0u8; FRAME_START + 100]),
            released: AtomicUsize::new(0),
        });
        let mut f = FrameBuf::Copy(copy_buf(&region));
        assert_eq!(f.capacity(), 100);
        f.set_len(10);
        assert_eq!(f.len(), 10);
        f.copy_from_slice(&[9; 10]);
        assert_eq!(
            region.bytes.lock().unwrap()[FRAME_START..FRAME_START + 10],
            [9; 10]
        );
        assert_eq!(
            region.bytes.lock().unwrap()[FRAME_START - 1],
            0,
            "the room is untouched"
        );
        f.set_len(100);
        assert!(f.is_copy());
        f.set_len(101);
        assert!(!f.is_copy(), "too large for the copy buffer: a vector now");
        assert_eq!((f.len(), region.released.load(Ordering::Relaxed)), (101, 1));
    }

    #[test]
    fn a_vector_frame_zero_fills_and_a_dropped_copy_buffer_goes_back() {
        let region = Arc::new(Region {
            bytes: Mutex::new(vec![0u8; 8]),
            released: AtomicUsize::new(0),
        });
        drop(copy_buf(&region));
        assert_eq!(region.released.load(Ordering::Relaxed), 1);
        let mut f = FrameBuf::from(vec![1, 2, 3]);
        f.set_len(5);
        assert_eq!(&f[..], &[1, 2, 3, 0, 0]);
        assert!(!f.is_copy());
    }
}
