//! A Xen block frontend: the guest side of blkif, as Linux xen-blkfront drives it, with every
//! feature switchable so a backend can be tested against each combination: ring size, ABI,
//! persistent grants, indirect descriptors.
//!
//! It runs over the `xen-grant` allocator and `xen-evtchn` traits (the simulated host's, or
//! gntalloc and evtchn in a real guest). The XenBus handshake is the caller's: this type owns
//! the shared ring, the data pages and the port, and moves requests and responses.

mod ring;
pub mod xenbus;

use std::collections::HashMap;

use xen_abi::blkif::*;
use xen_abi::{DomId, GrantRef, Port, PAGE_SIZE};
use xen_blkif::Abi;
use xen_evtchn::EventChannel;
use xen_grant::{GrantAllocator, GrantedPages};

use ring::FrontRingAny;

/// Frontend errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Granting pages failed.
    #[error("grant: {0}")]
    Grant(#[from] xen_grant::Error),
    /// The event channel failed.
    #[error("event channel: {0}")]
    Evtchn(#[from] xen_evtchn::Error),
    /// The ring failed (the backend misbehaved, or it is full).
    #[error("ring: {0}")]
    Ring(#[from] xen_ring::RingError),
    /// A request the frontend cannot express.
    #[error("invalid request: {0}")]
    Invalid(&'static str),
    /// The backend answered with an error status.
    #[error("backend answered status {0}")]
    Status(i16),
    /// No answer in time.
    #[error("no response from the backend in time")]
    Timeout,
    /// The XenBus handshake failed.
    #[error("xenstore: {0}")]
    Xenstore(String),
}

/// Result of frontend operations.
pub type Result<T> = std::result::Result<T, Error>;

/// What the frontend negotiates (each feature can be switched off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrontConfig {
    /// Ring pages (1, 2, 4, 8 or 16: `ring-page-order` 0..=4).
    pub ring_pages: u32,
    /// The ABI to speak (`protocol`).
    pub abi: Abi,
    /// Reuse granted data pages (`feature-persistent`).
    pub persistent: bool,
    /// Segments per indirect request (0: never use INDIRECT).
    pub indirect_segments: u16,
}

impl Default for FrontConfig {
    fn default() -> Self {
        Self {
            ring_pages: 1,
            abi: Abi::X86_64,
            persistent: true,
            indirect_segments: 0,
        }
    }
}

/// A finished request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    /// The id it was submitted with.
    pub id: u64,
    /// The operation echoed.
    pub operation: u8,
    /// `BLKIF_RSP_*`.
    pub status: i16,
    /// For reads: the data.
    pub data: Option<Vec<u8>>,
}

struct Pending<P> {
    pages: Granted<P>,
    indirect: Granted<P>,
    read_len: Option<usize>,
}

/// One block frontend queue.
pub struct Blkfront<A: GrantAllocator, E: EventChannel> {
    alloc: A,
    evtchn: E,
    backend: DomId,
    config: FrontConfig,
    ring: FrontRingAny<A::Pages>,
    port: Port,
    pending: HashMap<u64, Pending<A::Pages>>,
    /// Granted single pages for reuse (persistent grants).
    pool: Vec<A::Pages>,
    /// Answers collected while waiting for another request.
    unclaimed: Vec<Done>,
    next_id: u64,
}

/// A request's granted pages: single pages from the persistent pool, or one batch granted
/// (and, when dropped, revoked) for this request only, in one hypervisor operation each.
enum Granted<P> {
    Pooled(Vec<P>),
    Batch(Option<P>),
}

impl<P: GrantedPages> Granted<P> {
    fn none() -> Self {
        Self::Batch(None)
    }

    fn count(&self) -> usize {
        match self {
            Self::Pooled(pages) => pages.len(),
            Self::Batch(batch) => batch.as_ref().map_or(0, |b| b.refs().len()),
        }
    }

    /// Page `i`: where it is mapped here (a whole page) and its grant reference.
    fn page(&self, i: usize) -> Option<(*mut u8, GrantRef)> {
        match self {
            Self::Pooled(pages) => {
                let p = pages.get(i).filter(|p| p.len() >= PAGE_SIZE)?;
                Some((p.as_ptr(), *p.refs().first()?))
            }
            Self::Batch(batch) => {
                let b = batch.as_ref()?;
                let gref = *b.refs().get(i)?;
                ((i + 1) * PAGE_SIZE <= b.len())
                    .then(|| (b.as_ptr().wrapping_add(i * PAGE_SIZE), gref))
            }
        }
    }

    fn copy_in(&self, data: &[u8]) {
        for (i, chunk) in data.chunks(PAGE_SIZE).enumerate() {
            if let Some((page, _)) = self.page(i) {
                // SAFETY: `page` is a whole writable granted page; `chunk.len() <= PAGE_SIZE`.
                unsafe { std::ptr::copy_nonoverlapping(chunk.as_ptr(), page, chunk.len()) };
            }
        }
    }

    fn copy_out(&self, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        for (i, chunk) in out.chunks_mut(PAGE_SIZE).enumerate() {
            if let Some((page, _)) = self.page(i) {
                // SAFETY: as in `copy_in`, reading.
                unsafe { std::ptr::copy_nonoverlapping(page, chunk.as_mut_ptr(), chunk.len()) };
            }
        }
        out
    }
}

impl<A: GrantAllocator, E: EventChannel> Blkfront<A, E> {
    /// Grants the ring pages to `backend` and allocates the port.
    pub fn new(alloc: A, evtchn: E, backend: DomId, config: FrontConfig) -> Result<Self> {
        if !config.ring_pages.is_power_of_two() || config.ring_pages > 16 {
            return Err(Error::Invalid("ring pages must be 1, 2, 4, 8 or 16"));
        }
        let pages = alloc.grant_pages(backend, config.ring_pages as usize, true)?;
        let ring = FrontRingAny::init(config.abi, pages)?;
        let port = evtchn.bind_unbound_port(backend)?;
        Ok(Self {
            alloc,
            evtchn,
            backend,
            config,
            ring,
            port,
            pending: HashMap::new(),
            pool: Vec::new(),
            unclaimed: Vec::new(),
            next_id: 1,
        })
    }

    /// Grants of the ring pages (`ring-ref` / `ring-refN`).
    pub fn ring_refs(&self) -> &[GrantRef] {
        self.ring.refs()
    }

    /// The port to publish (`event-channel`).
    pub fn port(&self) -> Port {
        self.port
    }

    /// `ring-page-order`.
    pub fn ring_page_order(&self) -> u32 {
        self.config.ring_pages.trailing_zeros()
    }

    /// The configuration.
    pub fn config(&self) -> FrontConfig {
        self.config
    }

    /// Requests not yet answered.
    pub fn outstanding(&self) -> usize {
        self.pending.len()
    }

    /// The shared ring pages, for tests that play a misbehaving frontend.
    pub fn ring_memory(&self) -> &A::Pages {
        self.ring.memory()
    }

    /// Notifies the backend unconditionally.
    pub fn notify(&self) -> Result<()> {
        self.evtchn.notify(self.port).map_err(Error::from)
    }

    /// Grants one more page to the backend (for tests that build raw requests).
    pub fn grant_page(&self, writable: bool) -> Result<A::Pages> {
        self.alloc
            .grant_pages(self.backend, 1, writable)
            .map_err(Error::from)
    }

    /// Slots in the ring.
    pub fn ring_size(&self) -> u32 {
        self.ring.size()
    }

    /// Free slots.
    pub fn free_slots(&self) -> u32 {
        self.ring.free()
    }

    fn data_pages(&mut self, count: usize, backend_writes: bool) -> Result<Granted<A::Pages>> {
        if self.config.persistent {
            if let Some(short) = count.checked_sub(self.pool.len()).filter(|&n| n > 0) {
                // Grow the pool by the shortfall in one operation, ordered so that this
                // request takes the pages in the order they were granted.
                let fresh = self.alloc.grant_single_pages(self.backend, short, true)?;
                self.pool.extend(fresh.into_iter().rev());
            }
            let keep = self.pool.len().saturating_sub(count);
            let mut pages = self.pool.split_off(keep);
            pages.reverse();
            return Ok(Granted::Pooled(pages));
        }
        // Without persistent grants, as Linux blkfront: writable only if the backend writes.
        let batch = self
            .alloc
            .grant_pages(self.backend, count, backend_writes)?;
        Ok(Granted::Batch(Some(batch)))
    }

    fn segments(pages: &Granted<A::Pages>, bytes: usize) -> Vec<BlkifRequestSegment> {
        let mut left = bytes / 512;
        (0..pages.count())
            .map(|i| {
                let n = left.clamp(1, 8);
                left = left.saturating_sub(8);
                BlkifRequestSegment {
                    gref: pages.page(i).map_or(0, |(_, gref)| gref),
                    first_sect: 0,
                    last_sect: (n - 1) as u8,
                    _pad: 0,
                }
            })
            .collect()
    }

    fn submit_data(
        &mut self,
        operation: u8,
        sector: u64,
        data: Option<&[u8]>,
        read_len: Option<usize>,
    ) -> Result<u64> {
        let bytes = data.map_or(read_len.unwrap_or(0), <[u8]>::len);
        if bytes == 0 || bytes % 512 != 0 {
            return Err(Error::Invalid("transfers are whole 512-byte sectors"));
        }
        let nr = bytes.div_ceil(PAGE_SIZE);
        let indirect = nr > BLKIF_MAX_SEGMENTS_PER_REQUEST;
        if indirect && nr > usize::from(self.config.indirect_segments) {
            return Err(Error::Invalid("too many segments for this configuration"));
        }
        if self.ring.free() == 0 {
            return Err(Error::Ring(xen_ring::RingError::Full));
        }
        let pages = self.data_pages(nr, read_len.is_some())?;
        if let Some(d) = data {
            pages.copy_in(d);
        }
        let segs = Self::segments(&pages, bytes);
        let id = self.next_id;
        self.next_id += 1;
        let mut indirect_pages = Granted::none();
        if indirect {
            // Descriptor pages: from the persistent pool when negotiated (granted writable, as
            // Linux blkfront does), else granted read-only for this request.
            let count = nr.div_ceil(SEGS_PER_INDIRECT_FRAME);
            indirect_pages = self.data_pages(count, false)?;
            // Each descriptor page holds its segments' descriptors, zero-padded to the page.
            let mut raw = Vec::with_capacity(count * PAGE_SIZE);
            for chunk in segs.chunks(SEGS_PER_INDIRECT_FRAME) {
                let start = raw.len();
                for s in chunk {
                    raw.extend_from_slice(zerocopy::IntoBytes::as_bytes(s));
                }
                raw.resize(start + PAGE_SIZE, 0);
            }
            indirect_pages.copy_in(&raw);
            let refs: Vec<GrantRef> = (0..indirect_pages.count())
                .filter_map(|i| indirect_pages.page(i).map(|(_, gref)| gref))
                .collect();
            let rw = if read_len.is_some() {
                BLKIF_OP_READ
            } else {
                BLKIF_OP_WRITE
            };
            self.ring.push_indirect(id, rw, sector, nr as u16, &refs)?;
        } else {
            self.ring.push_rw(id, operation, sector, &segs)?;
        }
        self.pending.insert(
            id,
            Pending {
                pages,
                indirect: indirect_pages,
                read_len,
            },
        );
        Ok(id)
    }

    /// Queues a read of `len` bytes from `sector` (not yet visible: see [`Blkfront::kick`]).
    pub fn submit_read(&mut self, sector: u64, len: usize) -> Result<u64> {
        self.submit_data(BLKIF_OP_READ, sector, None, Some(len))
    }

    /// Queues a write.
    pub fn submit_write(&mut self, sector: u64, data: &[u8]) -> Result<u64> {
        self.submit_data(BLKIF_OP_WRITE, sector, Some(data), None)
    }

    /// Queues a FUA-style write: `FLUSH_DISKCACHE` carrying data, as Linux blkfront sends.
    pub fn submit_write_flush(&mut self, sector: u64, data: &[u8]) -> Result<u64> {
        self.submit_data(BLKIF_OP_FLUSH_DISKCACHE, sector, Some(data), None)
    }

    /// Queues a cache flush (`FLUSH_DISKCACHE`, or `WRITE_BARRIER` if `barrier`) without data.
    pub fn submit_flush(&mut self, barrier: bool) -> Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let op = if barrier {
            BLKIF_OP_WRITE_BARRIER
        } else {
            BLKIF_OP_FLUSH_DISKCACHE
        };
        self.ring.push_rw(id, op, 0, &[])?;
        self.track_without_data(id);
        Ok(id)
    }

    /// Remembers a request that carries no data pages.
    fn track_without_data(&mut self, id: u64) {
        self.pending.insert(
            id,
            Pending {
                pages: Granted::none(),
                indirect: Granted::none(),
                read_len: None,
            },
        );
    }

    /// Queues a discard.
    pub fn submit_discard(&mut self, sector: u64, nr_sectors: u64, secure: bool) -> Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        self.ring.push_discard(id, sector, nr_sectors, secure)?;
        self.track_without_data(id);
        Ok(id)
    }

    /// Queues raw slot bytes, as a misbehaving frontend would; `id` is what the slot carries.
    pub fn submit_raw(&mut self, id: u64, slot: &[u8]) -> Result<()> {
        self.ring.push_raw(slot)?;
        self.track_without_data(id);
        Ok(())
    }

    /// Publishes queued requests and notifies the backend if it asked.
    pub fn kick(&mut self) -> Result<()> {
        if self.ring.publish() {
            self.evtchn.notify(self.port)?;
        }
        Ok(())
    }

    /// Collects answered requests; waits up to `timeout` for the first if `wait`.
    pub fn poll(&mut self, timeout: std::time::Duration) -> Result<Vec<Done>> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let mut done = std::mem::take(&mut self.unclaimed);
            loop {
                while let Some((id, operation, status)) = self.ring.pop()? {
                    let entry = self.pending.remove(&id);
                    let data = match &entry {
                        Some(Pending {
                            pages,
                            read_len: Some(len),
                            ..
                        }) if status == BLKIF_RSP_OKAY => Some(pages.copy_out(*len)),
                        _ => None,
                    };
                    if let Some(Pending {
                        pages, indirect, ..
                    }) = entry
                    {
                        for granted in [pages, indirect] {
                            if let Granted::Pooled(pages) = granted {
                                self.pool.extend(pages);
                            }
                        }
                    }
                    done.push(Done {
                        id,
                        operation,
                        status,
                        data,
                    });
                }
                if !self.ring.final_check()? {
                    break;
                }
            }
            while let Some(p) = self.evtchn.pending()? {
                self.evtchn.unmask(p)?;
            }
            if !done.is_empty() || self.pending.is_empty() {
                return Ok(done);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(done);
            }
            let mut pfd = libc::pollfd {
                fd: self.evtchn.readiness_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(1000) as i32) };
        }
    }

    /// Waits for request `id`; other answers that arrive meanwhile are kept for later polls.
    pub fn wait_for(&mut self, id: u64, timeout: std::time::Duration) -> Result<Done> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let batch = self.poll(deadline.saturating_duration_since(std::time::Instant::now()))?;
            let mut found = None;
            for d in batch {
                if d.id == id && found.is_none() {
                    found = Some(d);
                } else {
                    self.unclaimed.push(d);
                }
            }
            if let Some(d) = found {
                return Ok(d);
            }
            if std::time::Instant::now() >= deadline {
                return Err(Error::Timeout);
            }
            if !self.unclaimed.is_empty() && !self.pending.contains_key(&id) {
                return Err(Error::Invalid("no such request outstanding"));
            }
        }
    }

    fn sync(&mut self, id: u64) -> Result<Done> {
        self.kick()?;
        let done = self.wait_for(id, std::time::Duration::from_secs(30))?;
        if done.status != BLKIF_RSP_OKAY {
            return Err(Error::Status(done.status));
        }
        Ok(done)
    }

    /// Reads `len` bytes at `sector` and waits for them.
    pub fn read(&mut self, sector: u64, len: usize) -> Result<Vec<u8>> {
        let id = self.submit_read(sector, len)?;
        Ok(self.sync(id)?.data.unwrap_or_default())
    }

    /// Writes `data` at `sector` and waits for the acknowledgement.
    pub fn write(&mut self, sector: u64, data: &[u8]) -> Result<()> {
        let id = self.submit_write(sector, data)?;
        self.sync(id).map(drop)
    }

    /// Flushes the disk cache and waits.
    pub fn flush(&mut self) -> Result<()> {
        let id = self.submit_flush(false)?;
        self.sync(id).map(drop)
    }

    /// Discards and waits.
    pub fn discard(&mut self, sector: u64, nr_sectors: u64) -> Result<()> {
        let id = self.submit_discard(sector, nr_sectors, false)?;
        self.sync(id).map(drop)
    }
}
