//! vhost-user-blk: blkback's storage engine (the [`crate::storage`] traits, io_uring on raw
//! files and block devices) exported as a virtio block device to a KVM hypervisor's VMM (QEMU,
//! cloud-hypervisor) over a vhost-user socket, through rust-vmm's `vhost-user-backend`.
//!
//! - [`config`]: the virtio features and configuration space offered;
//! - [`request`]: one descriptor chain parsed and checked (pure);
//! - [`queue`]: one virtqueue's engine on its own thread and its own io_uring;
//! - [`serve`]: the socket, one frontend connection after another;
//! - [`frontend`]: the VMM's and the guest driver's side, for the tests and the benchmark.
//!
//! Offered: `VIRTIO_F_VERSION_1`, event index, indirect descriptors, `SEG_MAX`, `BLK_SIZE`
//! (512 or 4096), `TOPOLOGY`, `FLUSH` (fdatasync), `DISCARD` (hole punch / BLKDISCARD),
//! `WRITE_ZEROES` (zero range, or a hole), `RO` for read-only disks, `MQ`; requests `IN`,
//! `OUT`, `FLUSH`, `GET_ID`, `DISCARD`, `WRITE_ZEROES`.

pub mod cli;
pub mod config;
pub mod frontend;
pub mod queue;
pub mod request;
mod serve;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringRwLock};
use vm_memory::GuestMemoryAtomic;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

pub use serve::{serve, ServeError, Served};

use crate::stats::{QueueSnapshot, QueueStats};
use crate::storage::{Disk, DiskInfo};
use config::BlkConfig;
use queue::{Memory, QueueEngine};
use request::Limits;

/// Largest virtqueue offered (QEMU's `queue-size` may be up to this); also each queue's
/// bound on requests in flight.
pub const MAX_QUEUE_SIZE: usize = 1024;

/// Largest number of request queues.
pub const MAX_QUEUES: u16 = 64;

/// What one device serves.
#[derive(Clone)]
pub struct DeviceSpec {
    /// The disk.
    pub disk: Arc<dyn Disk>,
    /// Request queues offered (1..=[`MAX_QUEUES`]).
    pub queues: u16,
    /// The identity answered to `GET_ID` (at most 20 bytes).
    pub serial: String,
    /// Counters per queue, kept across frontend connections.
    pub stats: Vec<Arc<QueueStats>>,
}

impl DeviceSpec {
    /// `disk` served on `queues` queues (clamped to 1..=[`MAX_QUEUES`]) answering `serial`.
    pub fn new(disk: Arc<dyn Disk>, queues: u16, serial: String) -> Self {
        let queues = queues.clamp(1, MAX_QUEUES);
        Self {
            disk,
            queues,
            serial,
            stats: (0..queues).map(|_| Arc::default()).collect(),
        }
    }

    /// The counters of every queue now.
    pub fn snapshot(&self) -> Vec<QueueSnapshot> {
        self.stats.iter().map(|s| s.snapshot()).collect()
    }
}

/// One vhost-user-blk device for one frontend connection: a queue engine per virtqueue, each
/// served by its own thread of the vhost-user daemon.
#[derive(Clone)]
pub struct BlkDevice {
    inner: Arc<Inner>,
}

struct Inner {
    info: DiskInfo,
    config: BlkConfig,
    engines: Vec<Mutex<QueueEngine>>,
    mem: GuestMemoryAtomic<Memory>,
    acked: AtomicU64,
}

impl BlkDevice {
    /// A device over `spec.disk` whose guest memory is `mem` (the daemon's).
    pub fn new(spec: &DeviceSpec, mem: GuestMemoryAtomic<Memory>) -> io::Result<Self> {
        let info = spec.disk.info();
        let queues = spec.queues.clamp(1, MAX_QUEUES);
        let mut serial = [0u8; 20];
        for (dst, src) in serial.iter_mut().zip(spec.serial.bytes()) {
            *dst = src;
        }
        let limits = Limits {
            sectors: info.sectors,
            block: info.sector_size,
            read_only: info.read_only,
            discard: info.discard,
        };
        let engines = (0..usize::from(queues))
            .map(|q| {
                let storage = spec.disk.open_queue(MAX_QUEUE_SIZE as u32)?;
                let stats = spec.stats.get(q).cloned().unwrap_or_default();
                Ok(Mutex::new(QueueEngine::new(
                    storage,
                    MAX_QUEUE_SIZE,
                    limits,
                    serial,
                    stats,
                )))
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self {
            inner: Arc::new(Inner {
                info,
                config: BlkConfig::new(&info, queues),
                engines,
                mem,
                acked: AtomicU64::new(0),
            }),
        })
    }

    /// The virtio features the frontend acknowledged.
    pub fn acked_features(&self) -> u64 {
        self.inner.acked.load(Ordering::Relaxed)
    }

    /// The epoll event id of queue `q`'s completions on its thread (past the ids the daemon
    /// reserves for the vrings and its exit event).
    fn completion_event(&self, q: usize) -> u64 {
        (self.inner.engines.len() + 1 + q) as u64
    }

    fn engine(&self, q: usize) -> Option<MutexGuard<'_, QueueEngine>> {
        let engine = self.inner.engines.get(q)?;
        Some(
            engine
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

impl VhostUserBackend for BlkDevice {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        self.inner.engines.len()
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        config::features(&self.inner.info)
    }

    fn acked_features(&self, features: u64) {
        self.inner.acked.store(features, Ordering::Relaxed);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ
    }

    fn set_event_idx(&self, _enabled: bool) {
        // The daemon sets it on every vring; the engines ask the vring when to notify.
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        self.inner.config.read(offset, size)
    }

    fn set_config(&self, _offset: u32, _buf: &[u8]) -> io::Result<()> {
        // No writable field is offered (`VIRTIO_BLK_F_CONFIG_WCE` is not).
        Err(io::Error::from_raw_os_error(libc::EPERM))
    }

    fn update_memory(&self, _mem: GuestMemoryAtomic<Memory>) -> io::Result<()> {
        // The daemon replaced the map inside the atomic the engines already read from.
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.inner.engines.len()).map(|q| 1u64 << q).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        match self.engine(queue_index as usize) {
            Some(mut engine) => engine.drain(),
            None => Ok(()),
        }
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        thread_id: usize,
    ) -> io::Result<()> {
        if !evset.contains(EventSet::IN) {
            return Ok(());
        }
        // One queue per thread (`queues_per_thread`): the daemon numbers a thread's vrings
        // from 0, so the queue is the thread's index and its vring the thread's only one;
        // any other event is that queue's io_uring (`completion_event`).
        let Some(mut engine) = self.engine(thread_id) else {
            return Ok(());
        };
        match vrings.get(usize::from(device_event)) {
            Some(vring) => engine.kick(vring, &self.inner.mem),
            None => engine.complete(&self.inner.mem),
        }
    }
}
