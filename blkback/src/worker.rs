//! One ring worker: a thread per queue that owns its ring, its event channel, its io_uring
//! queue and its grant mappings, and serves the frontend's requests.
//!
//! The loop: sleep in the storage queue (one io_uring wait covers completions, the event
//! channel and the stop request, and submits what is queued); finish completed I/O (unmapping
//! before responding); then run passes over the ring — copy each request once, validate it,
//! map its data, submit its first operation — until the final check finds nothing; only then
//! unmask the event channel, so a frontend that notifies in a loop costs at most one pass per
//! wake-up. A bogus producer index halts this ring only.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use xen_abi::blkif::{BLKIF_RSP_ERROR, BLKIF_RSP_OKAY, SEGS_PER_INDIRECT_FRAME};
use xen_abi::{DomId, GrantRef, Port};
use xen_backend::WorkerSignals;
use xen_blkif::{
    check_extent, parse_indirect_page, parse_slot, Abi, Limits, Request, RwOp, Segment, SegmentList,
};
use xen_evtchn::EventChannel;
use xen_grant::GrantMapper;

use crate::grants::{GrantCache, Held};
use crate::ring::AnyRing;
use crate::stats::QueueStats;
use crate::storage::{Completion, Disk, Op, Queue};

/// Most segments a request may have for its data to be grant-copied (when copying is chosen
/// for frontends without persistent grants): a direct request's worth. Larger (indirect)
/// requests map their pages in one batch, which the benchmark shows faster for them.
pub const GRANT_COPY_MAX_SEGMENTS: usize = xen_abi::blkif::BLKIF_MAX_SEGMENTS_PER_REQUEST;

/// Requests handed to the storage queue per submission while a pass parses the ring. A pass
/// that submitted only at its end left the disk idle while it parsed and mapped the rest (a
/// frontend that refills 32 slots at once waits for a whole pass): on the simulated host's
/// benchmark, 4 KiB reads at queue depth 32 went from 0.70 to about 0.84 of fio.
const SUBMIT_EVERY: usize = 4;

/// A device's size in 512-byte sectors, shared by its queues: the control plane updates it
/// when the backing is resized, and each queue checks requests against it from its next pass
/// on (a request that was already checked finishes against the size it was checked with).
#[derive(Debug, Clone)]
pub struct LiveSize(Arc<AtomicU64>);

impl LiveSize {
    /// A size of `sectors`.
    pub fn new(sectors: u64) -> Self {
        Self(Arc::new(AtomicU64::new(sectors)))
    }

    /// The size now.
    pub fn sectors(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Changes the size.
    pub fn set(&self, sectors: u64) {
        self.0.store(sectors, Ordering::Relaxed);
    }
}

/// What the control plane negotiated for one queue.
#[derive(Debug, Clone)]
pub struct RingSpec {
    /// The frontend domain.
    pub frontend: DomId,
    /// Grants of the ring pages, in order.
    pub ring_refs: Vec<GrantRef>,
    /// The frontend's event channel port for this queue.
    pub port: Port,
    /// The frontend's ABI.
    pub abi: Abi,
    /// Persistent grants negotiated.
    pub persistent: bool,
    /// Most persistent grants this queue keeps mapped.
    pub max_persistent_grants: usize,
    /// Without persistent grants: move the data of requests with at most
    /// [`GRANT_COPY_MAX_SEGMENTS`] segments by grant copy through a private bounce buffer
    /// instead of mapping the guest's pages (larger ones are mapped in one batch).
    pub grant_copy: bool,
    /// What requests are checked against (its `sectors` is replaced by `size` at every pass).
    pub limits: Limits,
    /// The disk's size now.
    pub size: LiveSize,
    /// Thread name (`blkback-d<fe>-<devid>-q<n>`).
    pub name: String,
    /// Re-attach to a live ring at its published response index (backend restart).
    pub reattach: bool,
}

/// Why a queue could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Guest fault: the ring grants could not be mapped.
    #[error("cannot map the ring: {0}")]
    MapRing(xen_grant::Error),
    /// Guest fault: the ring is unusable (too small, bogus indices).
    #[error("bad ring: {0}")]
    Ring(xen_ring::RingError),
    /// Guest fault: the event channel could not be bound.
    #[error("cannot bind the event channel: {0}")]
    Bind(xen_evtchn::Error),
    /// Host fault.
    #[error("cannot start the queue: {0}")]
    Io(#[from] std::io::Error),
}

impl From<nix::errno::Errno> for StartError {
    fn from(e: nix::errno::Errno) -> Self {
        Self::Io(e.into())
    }
}

/// A running queue. Stopping it: no new requests are taken, in-flight I/O completes and is
/// answered, every grant is unmapped and the port unbound; `stop` returns when all of that is
/// done.
pub type RingHandle = xen_backend::WorkerHandle;

/// `iovec`s into this worker's grant mappings.
struct IoVecs(Vec<libc::iovec>);

// SAFETY: the pointers refer to grant mappings owned by the same worker (held by its in-flight
// entry or its cache); they move with the worker to its thread and are used only there.
unsafe impl Send for IoVecs {}

enum Phase {
    Data { write: bool, offset: u64 },
    Flush,
    Discard { offset: u64, len: u64 },
}

struct InFlight<M> {
    /// The ring index the request was popped at: its place in the response order.
    seq: u32,
    id: u64,
    operation: u8,
    phases: VecDeque<Phase>,
    /// Whether the operation in the kernel now is the data transfer.
    in_data_phase: bool,
    /// For a read through a bounce buffer: the segments to copy the data back to.
    copy_back: Option<Vec<Segment>>,
    /// The `iovec`s the current data phase points the kernel at; never resized while in flight.
    iovecs: IoVecs,
    expected: usize,
    held: Vec<Held<M>>,
    started: Instant,
    kind: Kind,
    sectors: u64,
    barrier: bool,
}

#[derive(Clone, Copy)]
enum Kind {
    Read,
    Write,
    Flush,
    Discard,
}

/// Starts a queue: maps its ring, binds its port, opens its storage queue, spawns its thread.
pub fn start_ring<G, E>(
    spec: RingSpec,
    mapper: Arc<G>,
    evtchn: E,
    disk: &dyn Disk,
    stats: Arc<QueueStats>,
) -> Result<RingHandle, StartError>
where
    G: GrantMapper + 'static,
    E: EventChannel + 'static,
{
    let mem = mapper
        .map(spec.frontend, &spec.ring_refs, true)
        .map_err(StartError::MapRing)?;
    let ring = AnyRing::attach(spec.abi, mem, spec.reattach).map_err(StartError::Ring)?;
    let local_port = evtchn
        .bind_interdomain(spec.frontend, spec.port)
        .map_err(StartError::Bind)?;
    let queue = disk.open_queue(ring.size())?;
    let signals = WorkerSignals::new()?;
    let slots = ring.size() as usize;
    let mut worker = Worker {
        queue,
        inflight: (0..slots).map(|_| None).collect(),
        free: (0..slots).rev().collect(),
        blocked: None,
        answers: std::collections::VecDeque::new(),
        publish_base: ring.req_cons(),
        barrier_active: false,
        cache: GrantCache::new(
            mapper,
            spec.frontend,
            spec.persistent,
            spec.max_persistent_grants,
            Arc::clone(&stats),
        ),
        ring,
        evtchn,
        local_port,
        signals: signals.clone(),
        abi: spec.abi,
        limits: spec.limits,
        size: spec.size,
        stats,
        persistent: spec.persistent,
        grant_copy: spec.grant_copy,
        reattached: spec.reattach,
        notify: false,
        halted: false,
        deferred: false,
    };
    Ok(RingHandle::spawn(spec.name.clone(), signals, move || {
        worker.run()
    })?)
}

struct Worker<G: GrantMapper, E: EventChannel> {
    // Field order is drop order: the storage queue goes first (its drop waits for every
    // operation the kernel still holds), then the in-flight requests and the cache that own
    // the grant mappings those operations pointed into, then the ring mapping.
    queue: Box<dyn Queue>,
    inflight: Vec<Option<InFlight<G::Mapping>>>,
    free: Vec<usize>,
    blocked: Option<(Request, u32)>,
    /// Answers not yet published, in request order from `publish_base`: responses are
    /// published in the order requests were taken, so that `rsp_prod` always marks a prefix of
    /// answered requests and a restarted backend attaching there re-serves exactly the others.
    answers: std::collections::VecDeque<Option<(u64, u8, i16)>>,
    publish_base: u32,
    barrier_active: bool,
    cache: GrantCache<G>,
    ring: AnyRing<G::Mapping>,
    evtchn: E,
    local_port: Port,
    signals: WorkerSignals,
    abi: Abi,
    limits: Limits,
    size: LiveSize,
    stats: Arc<QueueStats>,
    persistent: bool,
    grant_copy: bool,
    /// Attached to a live ring (restart).
    reattached: bool,
    notify: bool,
    halted: bool,
    /// A pass stopped early (a barrier draining, or every slot in flight) without re-arming
    /// `req_event`: run it again when completions free the way.
    deferred: bool,
}

impl<G: GrantMapper, E: EventChannel> Worker<G, E> {
    fn in_flight(&self) -> usize {
        self.inflight.len() - self.free.len()
    }

    fn run(&mut self) {
        let mut stopping = false;
        // The queue polls these while it waits for completions: the event channel, the stop
        // signal. Both stay open for as long as the queue (fields of this worker).
        let watch = [self.evtchn.readiness_fd(), self.signals.stop_fd()];
        let mut done = Vec::new();
        // A frontend may have queued requests before we bound the port.
        self.service_ring();
        if self.reattached {
            // A backend that died between publishing responses and notifying left the frontend
            // waiting for an event that never came: one (possibly spurious) event covers it.
            self.notify = true;
        }
        if std::mem::take(&mut self.notify) {
            let _ = self.evtchn.notify(self.local_port);
        }
        loop {
            if stopping && self.in_flight() == 0 {
                break;
            }
            done.clear();
            let mut readable = [false; 2];
            if let Err(e) = self.queue.wait(&watch, &mut done, &mut readable) {
                tracing::error!("blkback queue: waiting failed: {e}");
                break;
            }
            let [kicked, stop] = readable;
            if stop {
                self.signals.clear_stop();
                stopping = true;
            }
            tracing::trace!(
                kicked,
                completions = done.len(),
                in_flight = self.in_flight(),
                "blkback queue woke"
            );
            for c in done.drain(..) {
                self.complete(c);
            }
            if kicked {
                self.stats.wakeups.fetch_add(1, Ordering::Relaxed);
                let mut ports = Vec::new();
                while let Ok(Some(p)) = self.evtchn.pending() {
                    ports.push(p);
                }
                if !stopping {
                    self.service_ring();
                }
                for p in ports {
                    let _ = self.evtchn.unmask(p);
                }
            } else if !stopping && self.deferred {
                self.service_ring();
            }
            if std::mem::take(&mut self.notify) {
                if let Err(e) = self.evtchn.notify(self.local_port) {
                    tracing::warn!("blkback queue: notify failed: {e}");
                }
            }
        }
        self.cache.clear();
        let _ = self.evtchn.unbind(self.local_port);
    }

    /// Records the answer to the request popped at `seq` and publishes every answer that is
    /// now next in order.
    fn respond(&mut self, seq: u32, id: u64, operation: u8, status: i16) {
        if status != BLKIF_RSP_OKAY {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        let at = seq.wrapping_sub(self.publish_base) as usize;
        if at >= self.ring.size() as usize {
            tracing::error!(
                seq,
                base = self.publish_base,
                "blkback queue: answer out of the ring's window dropped"
            );
            return;
        }
        if self.answers.len() <= at {
            self.answers.resize(at + 1, None);
        }
        if let Some(slot) = self.answers.get_mut(at) {
            *slot = Some((id, operation, status));
        }
        while let Some(Some((id, operation, status))) = self.answers.front().copied() {
            self.answers.pop_front();
            self.publish_base = self.publish_base.wrapping_add(1);
            match self.ring.respond(id, operation, status) {
                Ok(notify) => self.notify |= notify,
                Err(e) => tracing::error!("blkback queue: cannot respond: {e}"),
            }
        }
    }

    fn halt(&mut self, e: xen_ring::RingError) {
        if !self.halted {
            tracing::warn!("blkback queue: {e}");
        }
        self.halted = true;
        self.signals.fail();
    }

    /// Runs passes over the ring until the final check finds nothing (or a barrier waits).
    fn service_ring(&mut self) {
        self.deferred = false;
        if self.halted {
            return;
        }
        self.limits.sectors = self.size.sectors();
        loop {
            if let Some((req, seq)) = self.blocked.take() {
                if self.in_flight() > 0 {
                    self.blocked = Some((req, seq));
                    self.deferred = true;
                    return;
                }
                self.start(req, seq);
            }
            if self.barrier_active {
                self.deferred = true;
                return;
            }
            let room = self.free.len() as u32;
            if room == 0 {
                self.deferred = true;
                return;
            }
            if let Err(e) = self.ring.begin_pass(room) {
                return self.halt(e);
            }
            let mut started = 0usize;
            loop {
                let seq = self.ring.req_cons();
                let Some(slot) = self.ring.pop() else { break };
                tracing::trace!(operation = slot[0], "blkback request");
                match parse_slot(self.abi, &slot, &self.limits) {
                    Err(rej) => {
                        tracing::debug!(
                            id = rej.id,
                            op = rej.operation,
                            "blkback: refused request: {}",
                            rej.reason
                        );
                        self.respond(seq, rej.id, rej.operation, rej.status);
                    }
                    Ok(req) if needs_drain(&req) && self.in_flight() > 0 => {
                        self.blocked = Some((req, seq));
                        self.deferred = true;
                        return;
                    }
                    Ok(req) => {
                        self.start(req, seq);
                        started += 1;
                        if started % SUBMIT_EVERY == 0 {
                            if let Err(e) = self.queue.submit() {
                                tracing::error!("blkback queue: submit failed: {e}");
                            }
                        }
                    }
                }
                if self.barrier_active {
                    self.deferred = true;
                    return;
                }
            }
            if let Err(e) = self.queue.submit() {
                tracing::error!("blkback queue: submit failed: {e}");
            }
            match self.ring.final_check() {
                Ok(true) => continue,
                Ok(false) => return,
                Err(e) => return self.halt(e),
            }
        }
    }

    /// Reads the segment descriptors of an indirect request out of its pages.
    fn indirect_segments(
        &mut self,
        nr: u16,
        pages: &[GrantRef],
    ) -> Result<Vec<Segment>, &'static str> {
        let copy = self
            .cache
            .read_pages(pages)
            .map_err(|_| "cannot map indirect pages")?;
        let mut out = Vec::with_capacity(usize::from(nr));
        let mut left = usize::from(nr);
        for page in copy.chunks(xen_abi::PAGE_SIZE) {
            let n = left.min(SEGS_PER_INDIRECT_FRAME);
            out.extend(parse_indirect_page(page, n, &self.limits)?);
            left -= n;
        }
        Ok(out)
    }

    fn start(&mut self, req: Request, seq: u32) {
        let id = req.id();
        let operation = req.operation();
        let (phases, kind, segments, writable, sectors, barrier) = match req {
            Request::ReadWrite {
                op,
                sector,
                segments,
                flush_after,
                barrier,
                ..
            } => {
                let segments = match segments {
                    SegmentList::Direct(s) => s,
                    SegmentList::Indirect { nr_segments, pages } => {
                        self.stats.indirect.fetch_add(1, Ordering::Relaxed);
                        match self.indirect_segments(nr_segments, &pages) {
                            Ok(s) => s,
                            Err(reason) => {
                                tracing::debug!(id, "blkback: bad indirect request: {reason}");
                                return self.respond(seq, id, operation, BLKIF_RSP_ERROR);
                            }
                        }
                    }
                };
                let total: u64 = segments.iter().map(Segment::sectors).sum();
                if let Err(reason) = check_extent(sector, total, &self.limits) {
                    tracing::debug!(id, "blkback: bad request extent: {reason}");
                    return self.respond(seq, id, operation, BLKIF_RSP_ERROR);
                }
                let write = op == RwOp::Write;
                let data = Phase::Data {
                    write,
                    offset: sector * 512,
                };
                let phases: VecDeque<Phase> = match (barrier, flush_after) {
                    (true, _) => [Phase::Flush, data, Phase::Flush].into(),
                    (false, true) => [data, Phase::Flush].into(),
                    _ => [data].into(),
                };
                let kind = if write { Kind::Write } else { Kind::Read };
                (phases, kind, segments, !write, total, barrier)
            }
            Request::Flush { .. } => {
                let barrier = operation == xen_abi::blkif::BLKIF_OP_WRITE_BARRIER;
                (
                    [Phase::Flush].into(),
                    Kind::Flush,
                    Vec::new(),
                    false,
                    0,
                    barrier,
                )
            }
            Request::Discard {
                sector, nr_sectors, ..
            } => {
                let phase = Phase::Discard {
                    offset: sector * 512,
                    len: nr_sectors * 512,
                };
                (
                    [phase].into(),
                    Kind::Discard,
                    Vec::new(),
                    false,
                    nr_sectors,
                    false,
                )
            }
        };
        // Grant copy is faster for small requests, one batched map for large ones (see the
        // benchmark in README.md): copy up to a direct request's worth of segments.
        let copy = self.grant_copy
            && !self.persistent
            && !segments.is_empty()
            && segments.len() <= GRANT_COPY_MAX_SEGMENTS;
        let write = matches!(kind, Kind::Write);
        let mapped = if segments.is_empty() {
            Ok((Vec::new(), Vec::new()))
        } else if copy {
            self.cache.bounce(&segments, write)
        } else {
            self.cache.map(&segments, writable)
        };
        let (iovecs, held) = match mapped {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(id, "blkback: grant map or copy failed: {e}");
                return self.respond(seq, id, operation, BLKIF_RSP_ERROR);
            }
        };
        let copy_back = (copy && !write).then_some(segments);
        let Some(tag) = self.free.pop() else {
            self.cache.release(held);
            return self.respond(seq, id, operation, BLKIF_RSP_ERROR);
        };
        let expected = iovecs.iter().map(|v| v.iov_len).sum();
        let iovecs = IoVecs(iovecs);
        let req = InFlight {
            seq,
            id,
            operation,
            phases,
            in_data_phase: false,
            copy_back,
            iovecs,
            expected,
            held,
            started: Instant::now(),
            kind,
            sectors,
            barrier,
        };
        if let Some(slot) = self.inflight.get_mut(tag) {
            *slot = Some(req);
        }
        self.barrier_active |= barrier;
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        self.next_phase(tag);
    }

    /// Submits the next phase of request `tag`, or finishes it.
    fn next_phase(&mut self, tag: usize) {
        let Some(req) = self.inflight.get_mut(tag).and_then(Option::as_mut) else {
            return;
        };
        let Some(phase) = req.phases.pop_front() else {
            return self.finish(tag, BLKIF_RSP_OKAY);
        };
        req.in_data_phase = matches!(phase, Phase::Data { .. });
        let op = match phase {
            Phase::Data { write, offset } => {
                let (iov, iov_len) = (req.iovecs.0.as_ptr(), req.iovecs.0.len() as u32);
                if write {
                    Op::Write {
                        offset,
                        iov,
                        iov_len,
                    }
                } else {
                    Op::Read {
                        offset,
                        iov,
                        iov_len,
                    }
                }
            }
            Phase::Flush => Op::Flush,
            Phase::Discard { offset, len } => Op::Discard { offset, len },
        };
        // SAFETY: the iovecs live in the in-flight entry and point into grant mappings it holds;
        // neither is touched or released until this tag's completion (the queue is dropped
        // before the in-flight table, see `Worker`).
        if unsafe { self.queue.push(op, tag as u64) }.is_err() {
            self.finish(tag, BLKIF_RSP_ERROR);
        }
    }

    fn complete(&mut self, c: Completion) {
        let tag = c.tag as usize;
        let Some(req) = self.inflight.get(tag).and_then(Option::as_ref) else {
            return;
        };
        // A data transfer must move every byte (a short read at the end of the disk cannot
        // happen for a validated extent, so short means failed); flushes and discards return 0.
        let ok = if req.in_data_phase {
            c.result >= 0 && c.result as usize == req.expected
        } else {
            c.result == 0
        };
        if !ok {
            tracing::debug!(id = req.id, result = c.result, "blkback: I/O failed");
            return self.finish(tag, BLKIF_RSP_ERROR);
        }
        if req.in_data_phase {
            if let Some(segments) = &req.copy_back {
                if let Err(e) = self.cache.copy(segments, &req.iovecs.0, true) {
                    tracing::debug!(id = req.id, "blkback: grant copy to the guest failed: {e}");
                    return self.finish(tag, BLKIF_RSP_ERROR);
                }
            }
        }
        self.next_phase(tag);
    }

    /// Unmaps, then answers (the frontend may reuse its pages once it sees the response).
    fn finish(&mut self, tag: usize, status: i16) {
        let Some(req) = self.inflight.get_mut(tag).and_then(Option::take) else {
            return;
        };
        self.free.push(tag);
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.cache.release(req.held);
        if req.barrier {
            self.barrier_active = false;
        }
        if status == BLKIF_RSP_OKAY {
            let counter = match req.kind {
                Kind::Read => {
                    self.stats
                        .sectors_read
                        .fetch_add(req.sectors, Ordering::Relaxed);
                    &self.stats.reads
                }
                Kind::Write => {
                    self.stats
                        .sectors_written
                        .fetch_add(req.sectors, Ordering::Relaxed);
                    &self.stats.writes
                }
                Kind::Flush => &self.stats.flushes,
                Kind::Discard => &self.stats.discards,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        self.stats.record_latency(req.started.elapsed());
        self.respond(req.seq, req.id, req.operation, status);
    }
}

/// Barriers wait for everything before them.
fn needs_drain(req: &Request) -> bool {
    match req {
        Request::ReadWrite { barrier, .. } => *barrier,
        Request::Flush { operation, .. } => *operation == xen_abi::blkif::BLKIF_OP_WRITE_BARRIER,
        Request::Discard { .. } => false,
    }
}
