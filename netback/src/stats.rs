//! Counters per vif queue, readable by the driver domain's supervisor while the queue runs.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Live counters of one queue (TX is guest to host, RX host to guest).
        #[derive(Debug, Default)]
        pub struct QueueStats {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A copy of the counters.
        #[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
        pub struct QueueSnapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl QueueStats {
            /// Copies the counters.
            pub fn snapshot(&self) -> QueueSnapshot {
                QueueSnapshot {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }
        }
    };
}

counters! {
    /// Packets the guest sent that reached the host side.
    tx_packets,
    /// Bytes of those packets.
    tx_bytes,
    /// TX slots answered with `NETIF_RSP_ERROR`.
    tx_errors,
    /// TX packets dropped for using too many slots.
    tx_drop_slots,
    /// TX packets dropped for inconsistent sizes (larger than the frame, runt header).
    tx_drop_size,
    /// TX packets whose checksum or GSO metadata could not be set up.
    tx_drop_offload,
    /// TX packets whose grant copy failed.
    tx_copy_errors,
    /// TX packets the TAP device refused.
    tx_tap_errors,
    /// TX packets with segmentation offload.
    tx_gso_packets,
    /// Times TX waited for rate-limit credit.
    tx_throttled,
    /// Multicast-control requests handled.
    mcast_ops,
    /// Packets delivered to the guest.
    rx_packets,
    /// Bytes of those packets.
    rx_bytes,
    /// RX packets delivered with segmentation offload.
    rx_gso_packets,
    /// RX packets dropped because the queue toward the guest was full.
    rx_drop_queue_full,
    /// RX packets dropped while the guest's RX ring was stalled.
    rx_drop_stalled,
    /// RX packets dropped after waiting longer than the drain timeout.
    rx_drop_expired,
    /// RX packets the guest cannot take (too large, no scatter-gather, unsupported offload).
    rx_drop_unfit,
    /// RX multicast packets filtered out by multicast control.
    rx_drop_mcast,
    /// RX slots whose grant copy failed.
    rx_copy_errors,
    /// Times the RX ring stalled (no buffers for the stall timeout).
    rx_stalls,
    /// Packets waiting toward the guest now.
    rx_queue_len,
    /// Bytes of those packets (bounded by the RX queue limit).
    rx_queue_bytes,
    /// Unconsumed TX requests seen at the last pass.
    tx_ring_pending,
    /// RX buffers posted by the guest at the last pass.
    rx_ring_posted,
    /// Times the worker woke up.
    wakeups,
}

/// Adds one to a counter.
pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Adds `n` to a counter.
pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Sets a gauge.
pub(crate) fn set(c: &AtomicU64, n: u64) {
    c.store(n, Ordering::Relaxed);
}

/// Counters of one vif, by (frontend, devid).
#[derive(Debug, Clone, serde::Serialize)]
pub struct VifSnapshot {
    /// The frontend domain.
    pub frontend: u16,
    /// The device id.
    pub devid: u32,
    /// The host-side device name.
    pub ifname: String,
    /// Per queue.
    pub queues: Vec<QueueSnapshot>,
}
