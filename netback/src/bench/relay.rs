//! The simulated guests' own floor: two namespaces, each with a TAP device made as netfront
//! makes a guest's `eth0` (multi-queue, virtio header, the same offload flags), joined by a
//! relay thread per queue that moves each frame from one TAP straight to the other.
//!
//! A simulated guest's Linux stack reaches its driver through a TAP device, which costs a
//! copy and a system call each way that a real guest's netfront does not pay. The relay is
//! what a backend that cost nothing would reach between two such guests; netback's rate
//! against it separates netback's own cost from the simulation's.

use std::io::IoSlice;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use tap::{Tap, TapQueue};

use super::{Ns, Result};

/// Largest frame a TAP hands over: its virtio header and a 64 KiB GSO frame.
const RELAY_BUF: usize = 128 << 10;
/// Frames moved from one side before looking at the other.
const RELAY_BUDGET: usize = 64;

/// Two namespaces whose TAP devices are joined by relay threads; stopped on drop.
pub(super) struct Relay {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// The namespaces, dropped (deleted) after the threads have closed the TAP devices.
    pub(super) sides: (Ns, Ns),
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Makes one side: a namespace with `eth0` as netfront would make it, addressed `addr`.
fn side(tag: &str, queues: u32, offloads: bool, addr: &str) -> Result<(Ns, Vec<TapQueue>)> {
    let ns = Ns::new(tag)?;
    let path = ns.path();
    let setup = |e: std::io::Error| format!("relay TAP device in {}: {e}", ns.name);
    let mut tap = Tap::create("eth0", queues as usize, Some(&path)).map_err(setup)?;
    let queues = tap.take_queues();
    let flags = if offloads {
        tap::TUN_F_CSUM | tap::TUN_F_TSO4 | tap::TUN_F_TSO6
    } else {
        0
    };
    if let Some(first) = queues.first() {
        Tap::set_offload(first, flags).map_err(setup)?;
    }
    tap.link().set_up(true).map_err(setup)?;
    ns.ip(&["addr", "add", addr, "dev", "eth0"])?;
    Ok((ns, queues))
}

/// Two namespaces (10.79.0.1 and .2) joined by a relay with `queues` queues.
pub(super) fn relay_pair(queues: u32, offloads: bool) -> Result<Relay> {
    let (a, a_queues) = side("ra", queues, offloads, "10.79.0.1/24")?;
    let (b, b_queues) = side("rb", queues, offloads, "10.79.0.2/24")?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for (i, (qa, qb)) in a_queues.into_iter().zip(b_queues).enumerate() {
        let stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(format!("relay-q{i}"))
            .spawn(move || relay(&qa, &qb, &stop))
            .map_err(|e| format!("cannot start a relay thread: {e}"))?;
        threads.push(thread);
    }
    Ok(Relay {
        stop,
        threads,
        sides: (a, b),
    })
}

/// Moves frames both ways between two TAP queues until `stop`.
fn relay(a: &TapQueue, b: &TapQueue, stop: &AtomicBool) {
    let mut buf = vec![0u8; RELAY_BUF];
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [
            nix::poll::PollFd::new(a.as_fd(), nix::poll::PollFlags::POLLIN),
            nix::poll::PollFd::new(b.as_fd(), nix::poll::PollFlags::POLLIN),
        ];
        if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16)).is_err() {
            continue;
        }
        let [ready_a, ready_b] = fds.map(|f| f.any().unwrap_or(false));
        if ready_a {
            pump(a, b, &mut buf);
        }
        if ready_b {
            pump(b, a, &mut buf);
        }
    }
}

/// Moves up to [`RELAY_BUDGET`] waiting frames from `from` to `to` (a frame the receiving
/// side refuses is dropped, as a full queue would drop it).
fn pump(from: &TapQueue, to: &TapQueue, buf: &mut [u8]) {
    for _ in 0..RELAY_BUDGET {
        let Ok(n) = from.read(buf) else {
            return;
        };
        let frame = buf.get(..n).unwrap_or_default();
        let _ = to.write(&[IoSlice::new(frame)]);
    }
}
