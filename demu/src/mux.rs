//! The renderer mux of gpu-dd: one renderer thread executes the 2D work of every vGPU, picked
//! by a weighted deficit-round-robin scheduler (each backlogged vGPU earns `QUANTUM × weight`
//! pixels of credit per round and runs commands while its credit covers their cost), with a
//! bound on each vGPU's queue and counters per vGPU (commands, pixels, busy time).
//!
//! Operations carry validated offsets into the vGPU's framebuffer (checked by the engine
//! before submission, and again here against the surface's length), so the renderer never
//! touches memory outside it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use xen_ring::SharedMemory;

/// Pixels of credit per round per unit of weight.
pub const QUANTUM: u64 = 16 * 1024;
/// Fixed cost of any command, in pixels (so empty commands are not free).
pub const COMMAND_COST: u64 = 64;

/// Memory the renderer draws into or reads from: a framebuffer, or guest pages mapped for a
/// blit. Accessed only through raw pointers, bytewise or by `copy`.
pub trait Surface: Send + Sync {
    /// Start.
    fn ptr(&self) -> *mut u8;
    /// Bytes.
    fn len(&self) -> usize;
    /// Whether empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Shares a mapping between the vGPU's thread and the renderer.
pub struct SharedSurface<M>(pub M);

// SAFETY: the wrapped mapping is only ever accessed through raw pointers (never through Rust
// references to its bytes), and guest memory is concurrently written by the guest anyway, so
// accesses from several threads are no less defined than from one.
unsafe impl<M: SharedMemory> Sync for SharedSurface<M> {}

impl<M: SharedMemory> Surface for SharedSurface<M> {
    fn ptr(&self) -> *mut u8 {
        self.0.as_ptr()
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

/// A rectangle in a surface: byte offset of its top-left pixel, bytes per line, size in
/// 32-bit pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    /// Byte offset of the top-left pixel.
    pub offset: u64,
    /// Bytes per line.
    pub pitch: u64,
    /// Pixels per line.
    pub width: u64,
    /// Lines.
    pub height: u64,
}

impl Rect {
    /// Whether the rectangle lies inside `len` bytes (with 4-byte pixels).
    pub fn fits(&self, len: u64) -> bool {
        if self.width == 0 || self.height == 0 {
            return true;
        }
        let line = self.width.checked_mul(4);
        // The end of the last line; lines may overlap (pitch < line), which stays in bounds.
        let last = self
            .pitch
            .checked_mul(self.height - 1)
            .and_then(|l| l.checked_add(self.offset))
            .zip(line)
            .and_then(|(start, line)| start.checked_add(line));
        matches!((line, last), (Some(_), Some(end)) if end <= len)
    }

    /// Pixels covered.
    pub fn pixels(&self) -> u64 {
        self.width.saturating_mul(self.height)
    }
}

/// One unit of work.
pub enum Op {
    /// Fill `dst` of the framebuffer with a 32-bit colour.
    Fill {
        /// Where.
        dst: Rect,
        /// XRGB colour.
        color: u32,
    },
    /// Copy within the framebuffer (overlap allowed).
    Copy {
        /// From.
        src: Rect,
        /// To (same size as `src`).
        dst: Rect,
    },
    /// Copy from guest memory (mapped for this op) into the framebuffer.
    Blit {
        /// The mapped source pages.
        source: Box<dyn Surface>,
        /// The rectangle in `source`.
        src: Rect,
        /// Where in the framebuffer.
        dst: Rect,
    },
    /// Completes when everything queued before it has run: runs `done`.
    Fence {
        /// What to do then (publish the fence value, raise the interrupt).
        done: Box<dyn FnOnce() + Send>,
    },
}

impl Op {
    fn cost(&self) -> u64 {
        COMMAND_COST
            + match self {
                Op::Fill { dst, .. } => dst.pixels(),
                Op::Copy { dst, .. } | Op::Blit { dst, .. } => dst.pixels(),
                Op::Fence { .. } => 0,
            }
    }
}

/// Counters of one vGPU at the renderer.
#[derive(Debug, Default)]
pub struct ClientCounters {
    /// Commands executed.
    pub commands: AtomicU64,
    /// Pixels written.
    pub pixels: AtomicU64,
    /// The renderer's CPU time spent executing this vGPU's commands, in nanoseconds (thread
    /// CPU time, so time the renderer was preempted does not count).
    pub busy_ns: AtomicU64,
    /// Commands refused because a rectangle did not fit its surface.
    pub rejected: AtomicU64,
}

/// A snapshot of [`ClientCounters`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// Commands executed.
    pub commands: u64,
    /// Pixels written.
    pub pixels: u64,
    /// Busy time in nanoseconds.
    pub busy_ns: u64,
    /// Commands refused.
    pub rejected: u64,
}

impl ClientCounters {
    /// A snapshot.
    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            commands: self.commands.load(Ordering::Relaxed),
            pixels: self.pixels.load(Ordering::Relaxed),
            busy_ns: self.busy_ns.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
        }
    }
}

struct Queue {
    weight: u64,
    limit: usize,
    deficit: u64,
    ops: VecDeque<Op>,
    framebuffer: Arc<dyn Surface>,
    counters: Arc<ClientCounters>,
}

struct Shared {
    /// One slot per attached vGPU; a detached vGPU's slot is emptied (releasing its
    /// framebuffer) and reused by the next vGPU attached.
    queues: Vec<Option<Queue>>,
    stop: bool,
}

struct Inner {
    state: Mutex<Shared>,
    work: Condvar,
}

/// The renderer: one thread, many vGPUs.
pub struct Renderer {
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
}

/// A vGPU's handle on the renderer.
pub struct Client {
    inner: Arc<Inner>,
    index: usize,
    counters: Arc<ClientCounters>,
}

/// The vGPU's queue is at its limit; try again once it drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the vGPU's renderer queue is full")]
pub struct QueueFull;

impl Renderer {
    /// Starts the renderer thread.
    pub fn start() -> std::io::Result<Self> {
        let inner = Arc::new(Inner {
            state: Mutex::new(Shared {
                queues: Vec::new(),
                stop: false,
            }),
            work: Condvar::new(),
        });
        let worker = Arc::clone(&inner);
        let thread = std::thread::Builder::new()
            .name("renderer".into())
            .spawn(move || run(&worker))?;
        Ok(Self {
            inner,
            thread: Some(thread),
        })
    }

    /// Registers a vGPU drawing into `framebuffer`, with a scheduling `weight` (≥ 1) and at
    /// most `limit` queued commands.
    pub fn client(&self, framebuffer: Arc<dyn Surface>, weight: u32, limit: usize) -> Client {
        let counters = Arc::new(ClientCounters::default());
        let queue = Queue {
            weight: u64::from(weight.max(1)),
            limit: limit.max(1),
            deficit: 0,
            ops: VecDeque::new(),
            framebuffer,
            counters: Arc::clone(&counters),
        };
        let mut st = lock(&self.inner.state);
        let index = match st.queues.iter().position(Option::is_none) {
            Some(free) => free,
            None => {
                st.queues.push(None);
                st.queues.len() - 1
            }
        };
        if let Some(slot) = st.queues.get_mut(index) {
            *slot = Some(queue);
        }
        Client {
            inner: Arc::clone(&self.inner),
            index,
            counters,
        }
    }
}

impl Drop for Renderer {
    fn drop(&mut self) {
        lock(&self.inner.state).stop = true;
        self.inner.work.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Client {
    /// Queues `op`, or gives it back when the queue is full.
    pub fn submit(&self, op: Op) -> Result<(), (Op, QueueFull)> {
        let mut st = lock(&self.inner.state);
        let Some(q) = st.queues.get_mut(self.index).and_then(Option::as_mut) else {
            return Err((op, QueueFull));
        };
        if q.ops.len() >= q.limit {
            return Err((op, QueueFull));
        }
        q.ops.push_back(op);
        drop(st);
        self.inner.work.notify_one();
        Ok(())
    }

    /// Commands queued and not yet run.
    pub fn queued(&self) -> usize {
        lock(&self.inner.state)
            .queues
            .get(self.index)
            .and_then(Option::as_ref)
            .map_or(0, |q| q.ops.len())
    }

    /// This vGPU's counters.
    pub fn counters(&self) -> CounterSnapshot {
        self.counters.snapshot()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let mut st = lock(&self.inner.state);
        if let Some(slot) = st.queues.get_mut(self.index) {
            *slot = None;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// CPU time of the calling thread in nanoseconds (0 if the clock cannot be read).
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass, which lives across the call.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// The scheduler loop: deficit round robin over backlogged queues.
fn run(inner: &Inner) {
    let mut next = 0usize;
    loop {
        // Pick the next op under the lock, run it outside.
        let picked = {
            let mut st = lock(&inner.state);
            loop {
                if st.stop {
                    return;
                }
                if let Some(p) = pick(&mut st, &mut next) {
                    break p;
                }
                st = inner
                    .work
                    .wait(st)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
        };
        let (op, framebuffer, counters) = picked;
        let started = thread_cpu_ns();
        // A fence completes after the counters include everything before it.
        let (pixels, completion) = match op {
            Op::Fence { done } => (0, Some(done)),
            op => (execute(op, framebuffer.as_ref(), &counters), None),
        };
        counters
            .busy_ns
            .fetch_add(thread_cpu_ns().saturating_sub(started), Ordering::Relaxed);
        counters.commands.fetch_add(1, Ordering::Relaxed);
        counters.pixels.fetch_add(pixels, Ordering::Relaxed);
        if let Some(done) = completion {
            done();
        }
    }
}

type Picked = (Op, Arc<dyn Surface>, Arc<ClientCounters>);

/// Deficit round robin: the queue at `next` runs while its credit covers its head command;
/// when it does not, it earns `QUANTUM × weight` for its next turn and the turn passes. Every
/// full round adds credit to every backlogged queue, so some head fits within finitely many
/// rounds (costs are bounded by the framebuffer's size).
fn pick(st: &mut Shared, next: &mut usize) -> Option<Picked> {
    if !st.queues.iter().flatten().any(|q| !q.ops.is_empty()) {
        return None;
    }
    let n = st.queues.len();
    loop {
        let i = *next % n;
        *next = i + 1;
        let Some(q) = st.queues.get_mut(i)?.as_mut() else {
            continue;
        };
        match q.ops.front().map(Op::cost) {
            Some(cost) if q.deficit >= cost => {
                q.deficit -= cost;
                let op = q.ops.pop_front()?;
                // The same queue goes on while its credit lasts.
                *next = i;
                return Some((op, Arc::clone(&q.framebuffer), Arc::clone(&q.counters)));
            }
            Some(_) => q.deficit = q.deficit.saturating_add(QUANTUM * q.weight),
            None => q.deficit = 0, // an idle queue keeps no credit
        }
    }
}

/// Runs one op; returns the pixels written.
fn execute(op: Op, fb: &dyn Surface, counters: &ClientCounters) -> u64 {
    let len = fb.len() as u64;
    let reject = || {
        counters.rejected.fetch_add(1, Ordering::Relaxed);
        0
    };
    match op {
        Op::Fill { dst, color } => {
            if !dst.fits(len) {
                return reject();
            }
            let pattern = color.to_le_bytes();
            let line: Vec<u8> = pattern
                .iter()
                .copied()
                .cycle()
                .take(dst.width as usize * 4)
                .collect();
            for y in 0..dst.height {
                let at = (dst.offset + y * dst.pitch) as usize;
                // SAFETY: `dst.fits(len)`: every line lies inside the framebuffer.
                unsafe {
                    std::ptr::copy_nonoverlapping(line.as_ptr(), fb.ptr().add(at), line.len())
                };
            }
            dst.pixels()
        }
        Op::Copy { src, dst } => {
            if !src.fits(len)
                || !dst.fits(len)
                || (src.width, src.height) != (dst.width, dst.height)
            {
                return reject();
            }
            let line = dst.width as usize * 4;
            // Overlapping rectangles: walk lines in the direction that does not overwrite
            // source lines before they are read (as memmove does within a line).
            let rows: Box<dyn Iterator<Item = u64>> = if dst.offset > src.offset {
                Box::new((0..dst.height).rev())
            } else {
                Box::new(0..dst.height)
            };
            for y in rows {
                let (from, to) = (
                    (src.offset + y * src.pitch) as usize,
                    (dst.offset + y * dst.pitch) as usize,
                );
                // SAFETY: both rectangles fit the framebuffer; `copy` allows overlap.
                unsafe { std::ptr::copy(fb.ptr().add(from), fb.ptr().add(to), line) };
            }
            dst.pixels()
        }
        Op::Blit { source, src, dst } => {
            if !src.fits(source.len() as u64)
                || !dst.fits(len)
                || (src.width, src.height) != (dst.width, dst.height)
            {
                return reject();
            }
            let line = dst.width as usize * 4;
            for y in 0..dst.height {
                let (from, to) = (
                    (src.offset + y * src.pitch) as usize,
                    (dst.offset + y * dst.pitch) as usize,
                );
                // SAFETY: `src` fits the source mapping and `dst` the framebuffer; distinct
                // mappings of distinct guest pages.
                unsafe { std::ptr::copy(source.ptr().add(from), fb.ptr().add(to), line) };
            }
            dst.pixels()
        }
        Op::Fence { .. } => 0, // completed by the caller
    }
}

#[cfg(test)]
mod tests;
