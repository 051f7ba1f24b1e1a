//! The simulated guests' own floor: two namespaces, each with a TAP device made as netfront
//! makes a guest's `eth0` (multi-queue, virtio header, the same offload flags), joined by a
//! relay thread per queue that moves each frame from one TAP straight to the other.
//!
//! A simulated guest's Linux stack reaches its driver through a TAP device, which costs a
//! copy and a system call each way that a real guest's netfront does not pay. The bare relay
//! is what a backend that cost nothing would reach between two such guests. The bridged relay
//! adds netback's host side as the toolstack asks for it (a TAP device per vif, both on a
//! bridge in a third namespace) and leaves out only the Xen parts: rings, grant copies, event
//! channels. netback's rate against each separates its own cost from the simulation's and
//! from its host side's.

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
    _host: Option<Ns>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Creates the TAP device `name` in `ns` with `queues` queues and the offload flags netfront
/// and netback set, on `bridge` if given, up; its queues.
fn tap_device(
    ns: &Ns,
    name: &str,
    queues: u32,
    offloads: bool,
    bridge: Option<&str>,
) -> Result<Vec<TapQueue>> {
    let setup = |e: std::io::Error| format!("relay TAP device {name} in {}: {e}", ns.name);
    let mut tap = Tap::create(name, queues as usize, Some(&ns.path())).map_err(setup)?;
    let queues = tap.take_queues();
    if let Some(first) = queues.first() {
        Tap::set_offload(first, offload_flags(offloads)).map_err(setup)?;
    }
    let link = tap.link();
    if let Some(bridge) = bridge {
        link.add_to_bridge(bridge).map_err(setup)?;
    }
    link.set_up(true).map_err(setup)?;
    Ok(queues)
}

/// Makes one side: a namespace with `eth0` as netfront would make it, addressed `addr`.
fn side(tag: &str, queues: u32, offloads: bool, addr: &str) -> Result<(Ns, Vec<TapQueue>)> {
    let ns = Ns::new(tag)?;
    let queues = tap_device(&ns, "eth0", queues, offloads, None)?;
    ns.ip(&["addr", "add", addr, "dev", "eth0"])?;
    Ok((ns, queues))
}

/// The host side of a bridged relay: a namespace with a bridge and one TAP device per guest
/// on it, with netback's offload flags.
fn host_side(queues: u32, offloads: bool) -> Result<(Ns, [Vec<TapQueue>; 2])> {
    let ns = Ns::new("rd")?;
    ns.ip(&["link", "add", "rbr0", "type", "bridge"])?;
    ns.ip(&["link", "set", "rbr0", "up"])?;
    let a = tap_device(&ns, "rvif0", queues, offloads, Some("rbr0"))?;
    let b = tap_device(&ns, "rvif1", queues, offloads, Some("rbr0"))?;
    Ok((ns, [a, b]))
}

fn offload_flags(offloads: bool) -> u32 {
    if offloads {
        tap::TUN_F_CSUM | tap::TUN_F_TSO4 | tap::TUN_F_TSO6
    } else {
        0
    }
}

/// Two namespaces (10.79.0.1 and .2) joined by a relay with `queues` queues:
/// directly, or through a TAP device each on a bridge (`bridged`).
pub(super) fn relay_pair(queues: u32, offloads: bool, bridged: bool) -> Result<Relay> {
    let tag = if bridged { "b" } else { "" };
    let (a, a_queues) = side(&format!("ra{tag}"), queues, offloads, "10.79.0.1/24")?;
    let (b, b_queues) = side(&format!("rb{tag}"), queues, offloads, "10.79.0.2/24")?;
    let mut pairs = Vec::new();
    let mut host = None;
    if bridged {
        let (ns, [vif_a, vif_b]) = host_side(queues, offloads)?;
        pairs.extend(a_queues.into_iter().zip(vif_a));
        pairs.extend(b_queues.into_iter().zip(vif_b));
        host = Some(ns);
    } else {
        pairs.extend(a_queues.into_iter().zip(b_queues));
    }
    // Threads join the relay as they start, so that a failure stops those already running.
    let mut joined = Relay {
        stop: Arc::new(AtomicBool::new(false)),
        threads: Vec::new(),
        sides: (a, b),
        _host: host,
    };
    for (i, (qa, qb)) in pairs.into_iter().enumerate() {
        let stop = Arc::clone(&joined.stop);
        let thread = std::thread::Builder::new()
            .name(format!("relay-{i}"))
            .spawn(move || relay(&qa, &qb, &stop))
            .map_err(|e| format!("cannot start a relay thread: {e}"))?;
        joined.threads.push(thread);
    }
    let mut ping = joined
        .sides
        .0
        .exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.79.0.2"]);
    if !matches!(ping.output(), Ok(ref o) if o.status.success()) {
        return Err("the two relay namespaces cannot reach each other".into());
    }
    Ok(joined)
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
