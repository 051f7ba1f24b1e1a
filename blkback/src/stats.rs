//! Counters per queue, readable by the driver domain's supervisor while the queue runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Latency histogram buckets: bucket `i` counts requests that took < 2^i microseconds.
pub const LATENCY_BUCKETS: usize = 24;

/// Live counters of one queue.
#[derive(Debug, Default)]
pub struct QueueStats {
    /// Read requests completed.
    pub reads: AtomicU64,
    /// Write requests completed (flush-with-data included).
    pub writes: AtomicU64,
    /// Flushes completed.
    pub flushes: AtomicU64,
    /// Discards completed.
    pub discards: AtomicU64,
    /// Write-zeroes requests (vhost-user-blk).
    pub write_zeroes: AtomicU64,
    /// Requests that used indirect descriptors.
    pub indirect: AtomicU64,
    /// Requests answered with an error or `EOPNOTSUPP`.
    pub errors: AtomicU64,
    /// 512-byte sectors read.
    pub sectors_read: AtomicU64,
    /// 512-byte sectors written.
    pub sectors_written: AtomicU64,
    /// Requests in flight now.
    pub in_flight: AtomicU64,
    /// Persistent grants mapped now.
    pub persistent_grants: AtomicU64,
    /// Data pages found already mapped in the persistent-grant cache.
    pub grant_hits: AtomicU64,
    /// Data pages mapped (a hypervisor operation per request's batch).
    pub grants_mapped: AtomicU64,
    /// Times the worker woke for the event channel.
    pub wakeups: AtomicU64,
    /// Latency histogram (log2 microseconds).
    pub latency: [AtomicU64; LATENCY_BUCKETS],
}

/// A copy of the counters.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QueueSnapshot {
    /// See [`QueueStats::reads`].
    pub reads: u64,
    /// See [`QueueStats::writes`].
    pub writes: u64,
    /// See [`QueueStats::flushes`].
    pub flushes: u64,
    /// See [`QueueStats::discards`].
    pub discards: u64,
    /// Write-zeroes requests (vhost-user-blk).
    pub write_zeroes: u64,
    /// See [`QueueStats::indirect`].
    pub indirect: u64,
    /// See [`QueueStats::errors`].
    pub errors: u64,
    /// See [`QueueStats::sectors_read`].
    pub sectors_read: u64,
    /// See [`QueueStats::sectors_written`].
    pub sectors_written: u64,
    /// See [`QueueStats::in_flight`].
    pub in_flight: u64,
    /// See [`QueueStats::persistent_grants`].
    pub persistent_grants: u64,
    /// See [`QueueStats::grant_hits`].
    pub grant_hits: u64,
    /// See [`QueueStats::grants_mapped`].
    pub grants_mapped: u64,
    /// See [`QueueStats::wakeups`].
    pub wakeups: u64,
    /// See [`QueueStats::latency`].
    pub latency: Vec<u64>,
}

impl QueueStats {
    /// Records one request's latency.
    pub fn record_latency(&self, took: Duration) {
        let us = took.as_micros().max(1) as u64;
        let bucket = (64 - us.leading_zeros() as usize).min(LATENCY_BUCKETS - 1);
        if let Some(b) = self.latency.get(bucket) {
            b.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Copies the counters.
    pub fn snapshot(&self) -> QueueSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        QueueSnapshot {
            reads: get(&self.reads),
            writes: get(&self.writes),
            flushes: get(&self.flushes),
            discards: get(&self.discards),
            write_zeroes: get(&self.write_zeroes),
            indirect: get(&self.indirect),
            errors: get(&self.errors),
            sectors_read: get(&self.sectors_read),
            sectors_written: get(&self.sectors_written),
            in_flight: get(&self.in_flight),
            persistent_grants: get(&self.persistent_grants),
            grant_hits: get(&self.grant_hits),
            grants_mapped: get(&self.grants_mapped),
            wakeups: get(&self.wakeups),
            latency: self.latency.iter().map(get).collect(),
        }
    }
}

/// The counters of every connected device, as the `--stats-file` JSON shows them.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct DeviceSnapshot {
    /// The frontend domain.
    pub frontend: u16,
    /// The device id.
    pub devid: u32,
    /// One entry per queue.
    pub queues: Vec<QueueSnapshot>,
}
