//! One vif queue: a thread that owns the queue's TX and RX rings, its event channel(s) and its
//! TAP queue, and moves packets both ways by grant copy.
//!
//! The loop: wait (epoll) for an event, a frame on the TAP queue, a frame steered here by
//! another queue, a timer or a stop request; read frames from the TAP device into a bounded
//! queue (`rx.rs`); run the TX side (guest to host, `tx.rs`) within a per-pass budget, its
//! first grant-copy call also filling the guest's buffers for the first RX batch; deliver
//! the rest the guest has buffers for; only then unmask the fired ports, so an
//! event storm costs at most one pass per wake-up. A malicious ring (bogus producer index,
//! fatal TX chain) disables this vif: the queue stops and reports failure to the control plane.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use tap::TapQueue;
use xen_abi::netif::{NetifRxRequest, NetifRxResponse, NetifTxRequest, NetifTxResponse};
use xen_abi::{DomId, GrantRef, Port};
use xen_backend::WorkerSignals;
use xen_evtchn::EventChannel;
use xen_grant::GrantMapper;
use xen_netif::tx::{TxFeatures, TxItem};
use xen_ring::BackRing;

use crate::framebuf::FrameBuf;
use crate::rate::Credit;
use crate::shared::{RxFrame, VifShared};
use crate::stats::{bump, QueueStats};

/// What the frontend can take on its receive side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrontFeatures {
    /// `feature-sg`: packets spanning several slots.
    pub sg: bool,
    /// `feature-gso-tcpv4`.
    pub gso_tcpv4: bool,
    /// `feature-gso-tcpv6`.
    pub gso_tcpv6: bool,
    /// IPv4 checksum offload (on unless `feature-no-csum-offload` = 1).
    pub csum: bool,
    /// `feature-ipv6-csum-offload`.
    pub ipv6_csum: bool,
}

impl FrontFeatures {
    /// The `TUN_F_*` offloads frames read from the TAP device may carry toward this guest.
    pub fn tap_offloads(&self) -> u32 {
        let mut flags = 0;
        if self.csum {
            flags |= tap::TUN_F_CSUM;
            if self.gso_tcpv4 && self.sg {
                flags |= tap::TUN_F_TSO4;
            }
            if self.gso_tcpv6 && self.ipv6_csum && self.sg {
                flags |= tap::TUN_F_TSO6;
            }
        }
        flags
    }
}

/// Bounds of the host-to-guest queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxLimits {
    /// Bytes of frames waiting toward the guest before new ones are dropped.
    pub queue_bytes: usize,
    /// No buffers from the guest for this long while frames wait: the queue is stalled, its
    /// frames are dropped and the carrier goes down until the guest posts buffers again.
    pub stall_timeout: Duration,
    /// Frames older than this are dropped.
    pub drain_timeout: Duration,
}

impl Default for RxLimits {
    fn default() -> Self {
        Self {
            queue_bytes: 512 * 1024,
            stall_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// What the control plane negotiated for one queue.
#[derive(Debug, Clone)]
pub struct QueueSpec {
    /// The frontend domain.
    pub frontend: DomId,
    /// This queue's index.
    pub index: u32,
    /// Grant of the TX ring page.
    pub tx_ring_ref: GrantRef,
    /// Grant of the RX ring page.
    pub rx_ring_ref: GrantRef,
    /// The frontend's TX port (its only port without split event channels).
    pub tx_port: Port,
    /// The frontend's RX port with split event channels.
    pub rx_port: Option<Port>,
    /// What the guest takes.
    pub front: FrontFeatures,
    /// What we advertised for its TX side.
    pub advertised: TxFeatures,
    /// Bounds toward the guest.
    pub limits: RxLimits,
    /// Thread name (`netback-d<fe>-<devid>-q<n>`).
    pub name: String,
    /// Re-attach to live rings at their published response indices (backend restart).
    pub reattach: bool,
}

/// Why a queue could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Guest fault: a ring grant could not be mapped.
    #[error("cannot map the {0} ring: {1}")]
    MapRing(&'static str, xen_grant::Error),
    /// Guest fault: a ring is unusable.
    #[error("bad {0} ring: {1}")]
    Ring(&'static str, xen_ring::RingError),
    /// Guest fault: an event channel could not be bound.
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

/// A running queue; stopping it unmaps its rings and unbinds its ports.
pub type QueueHandle = xen_backend::WorkerHandle;

pub(crate) type TxRing<M> = BackRing<M, NetifTxRequest, NetifTxResponse>;
pub(crate) type RxRing<M> = BackRing<M, NetifRxRequest, NetifRxResponse>;

/// The state a queue's thread owns.
pub(crate) struct Worker<G: GrantMapper, E: EventChannel> {
    pub(crate) spec: QueueSpec,
    pub(crate) grants: Arc<G>,
    pub(crate) evtchn: E,
    pub(crate) tx: TxRing<G::Mapping>,
    pub(crate) rx: RxRing<G::Mapping>,
    pub(crate) local_tx: Port,
    pub(crate) local_rx: Port,
    pub(crate) tap: TapQueue,
    pub(crate) shared: Arc<VifShared>,
    pub(crate) stats: Arc<QueueStats>,
    pub(crate) credit: Credit,
    pub(crate) rate_version: u64,
    /// A parsed packet waiting for rate-limit credit (its slots are not answered yet).
    pub(crate) deferred: Option<TxItem>,
    pub(crate) throttled_until: Option<Instant>,
    pub(crate) rx_queue: VecDeque<RxFrame>,
    pub(crate) rx_queue_bytes: usize,
    /// The TAP queue is out of the epoll set while the RX queue is full (back-pressure: the
    /// kernel holds further frames in the TAP device's own bounded queue, as Linux netback
    /// stops its transmit queue).
    pub(crate) tap_paused: bool,
    pub(crate) stalled: bool,
    pub(crate) last_rx_progress: Instant,
    pub(crate) read_buf: FrameBuf,
    /// TX packet buffers kept for reuse (at most `TX_SPARE_BUFFERS`).
    pub(crate) tx_spare: Vec<FrameBuf>,
    /// Full-size RX read buffers kept for reuse (at most `RX_SPARE_BUFFERS`).
    pub(crate) rx_spare: Vec<FrameBuf>,
}

/// Size of a TAP read buffer: a virtio header and the largest frame.
pub(crate) const READ_BUF_LEN: usize = xen_netif::vnet::VNET_HDR_LEN + 65536;

/// A malicious ring: the vif is disabled.
#[derive(Debug)]
pub(crate) struct Fatal(pub(crate) String);

impl From<xen_ring::RingError> for Fatal {
    fn from(e: xen_ring::RingError) -> Self {
        Fatal(e.to_string())
    }
}

/// Starts a queue: maps its rings, binds its port(s), spawns its thread.
pub fn start_queue<G, E>(
    spec: QueueSpec,
    grants: Arc<G>,
    evtchn: E,
    tap: TapQueue,
    shared: Arc<VifShared>,
    stats: Arc<QueueStats>,
) -> Result<QueueHandle, StartError>
where
    G: GrantMapper + 'static,
    E: EventChannel + 'static,
{
    let tx_mem = grants
        .map(spec.frontend, &[spec.tx_ring_ref], true)
        .map_err(|e| StartError::MapRing("TX", e))?;
    let rx_mem = grants
        .map(spec.frontend, &[spec.rx_ring_ref], true)
        .map_err(|e| StartError::MapRing("RX", e))?;
    let (tx, rx) = if spec.reattach {
        (
            BackRing::attach_at_published(tx_mem),
            BackRing::attach_at_published(rx_mem),
        )
    } else {
        (BackRing::new(tx_mem), BackRing::new(rx_mem))
    };
    let tx = tx.map_err(|e| StartError::Ring("TX", e))?;
    let rx = rx.map_err(|e| StartError::Ring("RX", e))?;
    let local_tx = evtchn
        .bind_interdomain(spec.frontend, spec.tx_port)
        .map_err(StartError::Bind)?;
    let local_rx = match spec.rx_port {
        Some(p) => match evtchn.bind_interdomain(spec.frontend, p) {
            Ok(l) => l,
            Err(e) => {
                let _ = evtchn.unbind(local_tx);
                return Err(StartError::Bind(e));
            }
        },
        None => local_tx,
    };
    let signals = WorkerSignals::new()?;
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    let index = usize::try_from(spec.index).unwrap_or(usize::MAX);
    let inbox_fd = shared
        .inboxes
        .get(index)
        .map(|i| i.fd())
        .ok_or_else(|| std::io::Error::other("queue index beyond the vif's queues"))?;
    for (fd, token) in [
        (evtchn.readiness_fd(), 0u64),
        (tap.as_raw_fd(), 1),
        (inbox_fd, 2),
        (signals.stop_fd(), 3),
    ] {
        // SAFETY: each descriptor is owned by `evtchn`, `tap`, `shared` or `signals`, which the
        // worker keeps for as long as `epoll`.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        epoll.add(fd, EpollEvent::new(EpollFlags::EPOLLIN, token))?;
    }
    let now = Instant::now();
    let (rate, rate_version) = shared.rate();
    let name = spec.name.clone();
    let read_buf = FrameBuf::new(&*grants, READ_BUF_LEN);
    let mut worker = Worker {
        spec,
        grants,
        evtchn,
        tx,
        rx,
        local_tx,
        local_rx,
        tap,
        shared,
        stats,
        credit: Credit::new(rate, now),
        rate_version,
        deferred: None,
        throttled_until: None,
        rx_queue: VecDeque::new(),
        rx_queue_bytes: 0,
        tap_paused: false,
        stalled: false,
        last_rx_progress: now,
        read_buf,
        tx_spare: Vec::new(),
        rx_spare: Vec::new(),
    };
    // The thread keeps the signals (whose stop descriptor is in its epoll) alive.
    let theirs = signals.clone();
    Ok(QueueHandle::spawn(name, signals, move || {
        if let Err(Fatal(why)) = worker.run(&epoll) {
            tracing::warn!(
                frontend = worker.spec.frontend,
                queue = worker.spec.index,
                "netback queue disabled: {why}"
            );
            theirs.fail();
        }
        worker.close();
    })?)
}

impl<G: GrantMapper, E: EventChannel> Worker<G, E> {
    fn timeout(&self, now: Instant) -> EpollTimeout {
        let mut wait = Duration::from_secs(1);
        if let Some(t) = self.throttled_until {
            wait = wait.min(t.saturating_duration_since(now));
        }
        if !self.rx_queue.is_empty() {
            wait = wait.min(Duration::from_millis(100));
        }
        EpollTimeout::try_from(wait).unwrap_or(EpollTimeout::ZERO)
    }

    fn run(&mut self, epoll: &Epoll) -> Result<(), Fatal> {
        let mut events = [EpollEvent::empty(); 4];
        let mut busy = true;
        if self.spec.reattach {
            // A backend that died between publishing responses and notifying left the frontend
            // waiting for an event that never came: one (possibly spurious) event covers it.
            self.notify(self.local_tx);
            if self.local_rx != self.local_tx {
                self.notify(self.local_rx);
            }
        }
        loop {
            let timeout = if busy {
                EpollTimeout::ZERO
            } else {
                self.timeout(Instant::now())
            };
            let n = match epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(Fatal(format!("epoll: {e}"))),
            };
            if events
                .iter()
                .take(n)
                .any(|e| e.data() == 3 && e.events().contains(EpollFlags::EPOLLIN))
            {
                return Ok(());
            }
            bump(&self.stats.wakeups);
            let mut fired = Vec::new();
            while let Ok(Some(port)) = self.evtchn.pending() {
                if !fired.contains(&port) {
                    fired.push(port);
                }
                if fired.len() > 2 {
                    break;
                }
            }
            let now = Instant::now();
            self.refresh_rate(now);
            self.rx_read_tap(now);
            self.rx_take_inbox(now);
            // The pass's first RX batch is copied in the same hypervisor call as its first TX
            // batch: a TCP stream's data one way and its ACKs the other cost one call.
            let rx_first = self.rx_collect(now)?;
            let mut rx_status = None;
            let tx_more = self.tx_pass(now, rx_first.as_ref(), &mut rx_status)?;
            if let Some(batch) = rx_first {
                let status = match rx_status {
                    Some(status) => status,
                    None => self.rx_copy(&batch),
                };
                self.rx_finish(batch, status)?;
            }
            self.rx_deliver(Instant::now())?;
            self.pause_tap_if_full(epoll);
            for port in fired {
                let _ = self.evtchn.unmask(port);
            }
            busy = tx_more;
        }
    }

    /// Takes the TAP queue out of the epoll set while the RX queue is full, and back when it
    /// has room.
    fn pause_tap_if_full(&mut self, epoll: &Epoll) {
        let full = self.rx_queue_full();
        if full == self.tap_paused {
            return;
        }
        let flags = if full {
            EpollFlags::empty()
        } else {
            EpollFlags::EPOLLIN
        };
        // SAFETY: the TAP queue is owned by `self`, which outlives `epoll`'s use here.
        let fd = unsafe { BorrowedFd::borrow_raw(self.tap.as_raw_fd()) };
        if epoll.modify(fd, &mut EpollEvent::new(flags, 1)).is_ok() {
            self.tap_paused = full;
        }
    }

    fn refresh_rate(&mut self, now: Instant) {
        if self.shared.rate_version() != self.rate_version {
            let (rate, version) = self.shared.rate();
            self.credit.set_rate(rate, now);
            self.rate_version = version;
            self.throttled_until = None;
        }
    }

    /// Releases everything: ports unbound here, rings unmapped when `self` drops.
    fn close(&mut self) {
        let _ = self.evtchn.unbind(self.local_tx);
        if self.local_rx != self.local_tx {
            let _ = self.evtchn.unbind(self.local_rx);
        }
        if self.stalled {
            self.shared.stalled_queues.fetch_sub(1, Ordering::AcqRel);
        }
    }

    pub(crate) fn notify(&self, port: Port) {
        if let Err(e) = self.evtchn.notify(port) {
            tracing::debug!(queue = self.spec.index, "notify failed: {e}");
        }
    }
}
