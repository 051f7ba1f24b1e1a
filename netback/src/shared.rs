//! State one vif's queues share: the guest's hashing configuration (from the control ring),
//! its multicast filter (from TX extras), the rate limit (from xenstore), the per-queue inboxes
//! that steer received frames to the queue the guest's hash mapping names, and the count of
//! stalled queues that drives the host-side carrier.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::Instant;

use nix::sys::eventfd::{EfdFlags, EventFd};
use xen_netif::ctrl::HashConfig;
use xen_netif::tx::McastOp;

use crate::rate::Rate;

/// Most multicast addresses a guest may register (Linux: `XEN_NETBK_MCAST_MAX`).
pub const MCAST_MAX: usize = 64;

/// A frame on its way to the guest: the virtio header and the frame, as read from the TAP.
#[derive(Debug)]
pub struct RxFrame {
    /// Header then frame.
    pub buf: crate::framebuf::FrameBuf,
    /// The guest-configured flow hash, when hashing is on.
    pub hash: Option<xen_netif::hash::FrameHash>,
    /// When it was queued (for the drain timeout).
    pub queued_at: Instant,
}

/// Frames steered to one queue by another, bounded.
#[derive(Debug)]
pub struct Inbox {
    frames: Mutex<VecDeque<RxFrame>>,
    wake: OwnedFd,
}

/// Most frames waiting in one inbox.
const INBOX_MAX: usize = 256;

impl Inbox {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            frames: Mutex::new(VecDeque::new()),
            wake: OwnedFd::from(EventFd::from_flags(
                EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK,
            )?),
        })
    }

    /// Hands a frame over; gives it back if the inbox is full.
    pub fn push(&self, frame: RxFrame) -> Result<(), RxFrame> {
        let mut q = self.frames.lock().unwrap_or_else(PoisonError::into_inner);
        if q.len() >= INBOX_MAX {
            return Err(frame);
        }
        q.push_back(frame);
        drop(q);
        let _ = nix::unistd::write(&self.wake, &1u64.to_ne_bytes());
        Ok(())
    }

    /// Takes every waiting frame.
    pub fn drain(&self) -> VecDeque<RxFrame> {
        let mut buf = [0u8; 8];
        let _ = nix::unistd::read(self.wake.as_raw_fd(), &mut buf);
        std::mem::take(&mut *self.frames.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Polls readable when frames are waiting.
    pub fn fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }
}

/// The guest's multicast filter.
#[derive(Debug, Default)]
pub struct McastFilter {
    /// Whether the guest asked for filtering (`request-multicast-control`).
    pub enabled: bool,
    addrs: Vec<[u8; 6]>,
}

impl McastFilter {
    /// Applies an add or delete; false if the list is full (the request fails).
    pub fn apply(&mut self, op: McastOp) -> bool {
        match op {
            McastOp::Add(mac) => {
                if self.addrs.contains(&mac) {
                    return true;
                }
                if self.addrs.len() >= MCAST_MAX {
                    return false;
                }
                self.addrs.push(mac);
                true
            }
            McastOp::Del(mac) => {
                self.addrs.retain(|a| *a != mac);
                true
            }
        }
    }

    /// Whether a frame to `dest` passes: unicast and broadcast always, multicast when
    /// filtering is off or the group was added.
    pub fn passes(&self, dest: &[u8]) -> bool {
        let Some(&first) = dest.first() else {
            return false;
        };
        if !self.enabled || first & 1 == 0 || dest.iter().all(|&b| b == 0xff) {
            return true;
        }
        self.addrs.iter().any(|a| a[..] == *dest)
    }

    /// Registered groups.
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// Whether no group is registered.
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }
}

/// Shared by a vif's queues.
#[derive(Debug)]
pub struct VifShared {
    /// Hashing configuration from the control ring.
    pub hash: RwLock<HashConfig>,
    /// Multicast filter.
    pub mcast: Mutex<McastFilter>,
    rate: Mutex<Option<Rate>>,
    rate_version: AtomicU64,
    /// One inbox per queue.
    pub inboxes: Vec<Inbox>,
    /// Queues whose RX ring is stalled now.
    pub stalled_queues: AtomicU32,
}

impl VifShared {
    /// State for `queues` queues.
    pub fn new(queues: u32, multicast_control: bool, rate: Option<Rate>) -> std::io::Result<Self> {
        Ok(Self {
            hash: RwLock::new(HashConfig::default()),
            mcast: Mutex::new(McastFilter {
                enabled: multicast_control,
                addrs: Vec::new(),
            }),
            rate: Mutex::new(rate),
            rate_version: AtomicU64::new(0),
            inboxes: (0..queues.max(1))
                .map(|_| Inbox::new())
                .collect::<std::io::Result<_>>()?,
            stalled_queues: AtomicU32::new(0),
        })
    }

    /// Queues of the vif.
    pub fn queues(&self) -> u32 {
        self.inboxes.len() as u32
    }

    /// Changes the rate limit (the `rate` key changed).
    pub fn set_rate(&self, rate: Option<Rate>) {
        *self.rate.lock().unwrap_or_else(PoisonError::into_inner) = rate;
        self.rate_version.fetch_add(1, Ordering::Release);
    }

    /// The rate limit and its version (to notice changes cheaply).
    pub fn rate(&self) -> (Option<Rate>, u64) {
        let version = self.rate_version.load(Ordering::Acquire);
        (
            *self.rate.lock().unwrap_or_else(PoisonError::into_inner),
            version,
        )
    }

    /// Version of the rate limit.
    pub fn rate_version(&self) -> u64 {
        self.rate_version.load(Ordering::Acquire)
    }

    /// Applies a multicast request.
    pub fn mcast_apply(&self, op: McastOp) -> bool {
        self.mcast
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .apply(op)
    }

    /// Whether a frame to `dest` passes the multicast filter.
    pub fn mcast_passes(&self, dest: &[u8]) -> bool {
        self.mcast
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .passes(dest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multicast_filter() {
        let mut f = McastFilter::default();
        let group = [0x01, 0x00, 0x5e, 0, 0, 1];
        assert!(f.passes(&group), "no filtering until the guest asks");
        f.enabled = true;
        assert!(!f.passes(&group));
        assert!(f.passes(&[0xff; 6]));
        assert!(f.passes(&[0x02, 0, 0, 0, 0, 1]));
        assert!(f.apply(McastOp::Add(group)));
        assert!(f.passes(&group));
        for i in 0..(MCAST_MAX as u8 - 1) {
            assert!(f.apply(McastOp::Add([0x01, 0, 0x5e, 0, 1, i])));
        }
        assert_eq!(f.len(), MCAST_MAX);
        assert!(
            !f.apply(McastOp::Add([0x01, 0, 0x5e, 0, 2, 0])),
            "65th address refused"
        );
        assert!(f.apply(McastOp::Del(group)));
        assert!(!f.passes(&group));
    }
}
