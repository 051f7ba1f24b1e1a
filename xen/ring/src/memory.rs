//! The shared-memory accessor rings run over, and a private page-aligned buffer for tests.

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::RingError;

/// Memory that another domain may read and write at any time.
///
/// # Safety
///
/// An implementor guarantees that `as_ptr()..as_ptr() + len()` stays mapped, readable and
/// writable, and 4-byte aligned, for as long as the value lives, and that `len()` never changes.
pub unsafe trait SharedMemory: Send {
    /// Start of the region.
    fn as_ptr(&self) -> *mut u8;
    /// Length of the region in bytes.
    fn len(&self) -> usize;
    /// Whether the region is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Volatile and atomic accessors over a `SharedMemory`, bounds-checked.
pub(crate) struct Shared<M> {
    mem: M,
}

impl<M: SharedMemory> Shared<M> {
    pub(crate) fn new(mem: M) -> Result<Self, RingError> {
        if mem.as_ptr() as usize % 4 != 0 {
            return Err(RingError::Misaligned);
        }
        Ok(Self { mem })
    }

    pub(crate) fn memory(&self) -> &M {
        &self.mem
    }

    pub(crate) fn into_inner(self) -> M {
        self.mem
    }

    /// The atomic 32-bit word at `offset` (which must be 4-aligned and in bounds).
    fn atomic(&self, offset: usize) -> &AtomicU32 {
        assert!(
            offset % 4 == 0 && offset + 4 <= self.mem.len(),
            "ring header offset {offset}"
        );
        // SAFETY: the region is mapped for the life of `self.mem` (SharedMemory contract),
        // `offset` is in bounds and 4-aligned on a 4-aligned base (checked above and in `new`),
        // and the other domain only ever accesses these words atomically or as plain u32 stores,
        // which is what AtomicU32 models.
        unsafe { AtomicU32::from_ptr(self.mem.as_ptr().add(offset).cast::<u32>()) }
    }

    pub(crate) fn load(&self, offset: usize, order: Ordering) -> u32 {
        self.atomic(offset).load(order)
    }

    pub(crate) fn store(&self, offset: usize, value: u32, order: Ordering) {
        self.atomic(offset).store(value, order)
    }

    /// Copies `T` out of shared memory at `offset` with one volatile read.
    pub(crate) fn read<T: zerocopy::FromBytes + Copy>(&self, offset: usize) -> T {
        let size = core::mem::size_of::<T>();
        assert!(offset + size <= self.mem.len(), "ring slot offset {offset}");
        // SAFETY: in bounds (checked above) of a mapped region; `T: FromBytes` so any bytes the
        // peer wrote are a valid `T`; the read is unaligned-safe and volatile, so the compiler
        // performs exactly one copy and never re-reads shared memory.
        unsafe {
            core::ptr::read_volatile(
                self.mem
                    .as_ptr()
                    .add(offset)
                    .cast::<core::mem::MaybeUninit<T>>(),
            )
            .assume_init()
        }
    }

    /// Writes `bytes` into shared memory at `offset` with volatile stores.
    pub(crate) fn write_bytes(&self, offset: usize, bytes: &[u8]) {
        assert!(
            offset + bytes.len() <= self.mem.len(),
            "ring slot offset {offset}"
        );
        let base = self.mem.as_ptr();
        for (i, b) in bytes.iter().enumerate() {
            // SAFETY: `offset + i` is in bounds of the mapped, writable region (checked above).
            unsafe { core::ptr::write_volatile(base.add(offset + i), *b) }
        }
    }

    /// Zeroes `len` bytes at `offset`.
    pub(crate) fn zero(&self, offset: usize, len: usize) {
        assert!(
            offset + len <= self.mem.len(),
            "ring zero range {offset}+{len}"
        );
        // SAFETY: in bounds of the mapped, writable region (checked above).
        unsafe { core::ptr::write_bytes(self.mem.as_ptr().add(offset), 0, len) }
    }
}

/// Page-aligned private memory standing in for shared pages: rings in unit tests, buffers.
pub struct HeapPages {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: HeapPages owns its allocation exclusively; the raw pointer is not shared with any
// thread-affine state.
unsafe impl Send for HeapPages {}

impl HeapPages {
    /// Allocates `pages` zeroed 4 KiB pages.
    pub fn new(pages: usize) -> Self {
        let size = pages.max(1) * xen_abi::PAGE_SIZE;
        let layout = match Layout::from_size_align(size, xen_abi::PAGE_SIZE) {
            Ok(l) => l,
            Err(_) => panic!("{pages} pages do not form a valid allocation"),
        };
        // SAFETY: `layout` has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout)
        };
        Self { ptr, layout }
    }

    /// Copies the contents out.
    pub fn to_vec(&self) -> Vec<u8> {
        // SAFETY: the allocation is `layout.size()` initialised (zeroed) bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }.to_vec()
    }
}

impl Drop for HeapPages {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this same layout and not freed before.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

// SAFETY: the allocation is page-aligned, lives as long as the HeapPages, and its size is fixed.
unsafe impl SharedMemory for HeapPages {
    fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    fn len(&self) -> usize {
        self.layout.size()
    }
}

/// A shared view of memory owned elsewhere (for two ring ends over one buffer in tests).
///
/// # Safety
///
/// Created only by [`SharedView::new`], whose caller guarantees the lifetime.
pub struct SharedView {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: a SharedView is a plain address range; thread-safety of the accesses is provided by
// the atomic and volatile accessors that rings use.
unsafe impl Send for SharedView {}

impl SharedView {
    /// A view of `len` bytes at `ptr`.
    ///
    /// # Safety
    ///
    /// The range must stay mapped, readable, writable and 4-byte aligned for the whole life of
    /// the view.
    pub unsafe fn new(ptr: *mut u8, len: usize) -> Self {
        Self { ptr, len }
    }

    /// A view of another `SharedMemory`.
    ///
    /// # Safety
    ///
    /// `mem` must outlive the view.
    pub unsafe fn of<M: SharedMemory>(mem: &M) -> Self {
        Self {
            ptr: mem.as_ptr(),
            len: mem.len(),
        }
    }
}

// SAFETY: the constructor's contract makes the range valid for the view's life.
unsafe impl SharedMemory for SharedView {
    fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
    fn len(&self) -> usize {
        self.len
    }
}
