//! netfront: a Rust netif frontend for the simulated host.
//!
//! [`connect`] negotiates with a netback over xenstore as Linux netfront does (every feature
//! can be switched off through [`NetfrontOptions`]), grants the rings and one buffer page per
//! slot, and exposes the guest's interface as a TAP device inside the guest's own network
//! namespace, so the real Linux network stack runs on both ends of the simulated link. One
//! thread per queue moves frames ([`queue`]).

pub mod negotiate;
pub mod queue;
pub mod raw;

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::eventfd::{EfdFlags, EventFd};
use tap::Tap;
use xen_evtchn::EventChannel;
use xen_grant::GrantAllocator;
use xen_store::{XenbusState, Xs};

use crate::negotiate::{negotiate, Negotiation};
use crate::queue::run_queue;

/// Frontend errors, as sentences.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Xenstore failed or a key is missing.
    #[error("xenstore: {0}")]
    Xenstore(String),
    /// The backend did not reach the expected state in time.
    #[error("timed out waiting for the backend")]
    Timeout,
    /// Granting, event channels, rings or the TAP device failed.
    #[error("{0}")]
    Setup(String),
    /// The backend answered our keys by closing.
    #[error("the backend refused the connection")]
    Refused,
}

/// Result of frontend operations.
pub type Result<T> = std::result::Result<T, Error>;

fn xs_err(e: impl std::fmt::Display) -> Error {
    Error::Xenstore(e.to_string())
}

fn setup(e: impl std::fmt::Display) -> Error {
    Error::Setup(e.to_string())
}

/// What the frontend asks for; each can be switched off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetfrontOptions {
    /// Queues requested (capped by the backend's `multi-queue-max-queues`).
    pub queues: u32,
    /// `feature-sg`.
    pub sg: bool,
    /// `feature-gso-tcpv4` / `-tcpv6` (and sending GSO when the backend offers it).
    pub gso: bool,
    /// Checksum offload (`feature-no-csum-offload` = 0).
    pub csum: bool,
    /// `feature-ipv6-csum-offload`.
    pub ipv6_csum: bool,
    /// Split event channels when the backend offers them.
    pub split: bool,
    /// `request-multicast-control`.
    pub multicast_control: bool,
}

impl Default for NetfrontOptions {
    fn default() -> Self {
        Self {
            queues: 1,
            sg: true,
            gso: true,
            csum: true,
            ipv6_csum: true,
            split: true,
            multicast_control: false,
        }
    }
}

/// A connected interface; its queues stop when it is dropped.
pub struct Netfront {
    dir: String,
    ifname: String,
    queues: u32,
    stop: Arc<OwnedFd>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Netfront {
    /// The guest-side TAP device's name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Queues negotiated.
    pub fn queues(&self) -> u32 {
        self.queues
    }

    /// Closes the device as a frontend does: `Closing`, wait for the backend, `Closed`.
    pub async fn close(mut self, xs: &Xs) -> Result<()> {
        self.stop_threads();
        let backend = read(xs, &format!("{}/backend", self.dir)).await?;
        xs.write_state(&format!("{}/state", self.dir), XenbusState::Closing)
            .await
            .map_err(xs_err)?;
        wait_state(xs, &format!("{backend}/state"), |s| {
            matches!(s, XenbusState::Closing | XenbusState::Closed)
        })
        .await?;
        xs.write_state(&format!("{}/state", self.dir), XenbusState::Closed)
            .await
            .map_err(xs_err)
    }

    fn stop_threads(&mut self) {
        let _ = nix::unistd::write(&*self.stop, &1u64.to_ne_bytes());
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Netfront {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

async fn read(xs: &Xs, key: &str) -> Result<String> {
    let v = xs
        .read_opt(key)
        .await
        .map_err(xs_err)?
        .ok_or_else(|| Error::Xenstore(format!("{key} is missing")))?;
    Ok(String::from_utf8_lossy(&v).trim().to_string())
}

async fn flag(xs: &Xs, key: &str) -> Result<bool> {
    Ok(xs
        .read_opt(key)
        .await
        .map_err(xs_err)?
        .is_some_and(|v| v.first() == Some(&b'1')))
}

/// Waits until the state at `path` satisfies `pred` (10 s at most).
pub async fn wait_state(
    xs: &Xs,
    path: &str,
    pred: impl Fn(XenbusState) -> bool,
) -> Result<XenbusState> {
    xs.wait_state(path, Duration::from_secs(10), pred)
        .await
        .map_err(xs_err)?
        .ok_or(Error::Timeout)
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    Some(mac)
}

/// Negotiates the vif whose frontend directory is `dir` and brings up `ifname` in `netns`.
pub async fn connect<A, E>(
    xs: &Xs,
    dir: &str,
    alloc: &A,
    mut evtchn: impl FnMut() -> std::io::Result<E>,
    ifname: &str,
    netns: Option<&Path>,
    opts: NetfrontOptions,
) -> Result<Netfront>
where
    A: GrantAllocator,
    A::Pages: 'static,
    E: EventChannel + 'static,
{
    let Negotiation {
        parts,
        negotiated,
        gso4,
        gso6,
        ..
    } = negotiate(xs, dir, alloc, &mut evtchn, opts, false, &mut |_| {}).await?;
    let queues = u32::try_from(parts.len()).unwrap_or(1);
    let mut tap = Tap::create(ifname, queues as usize, netns).map_err(setup)?;
    let link = tap.link();
    if let Some(mac) = read(xs, &format!("{dir}/mac"))
        .await
        .ok()
        .as_deref()
        .and_then(parse_mac)
    {
        link.set_mac(mac).map_err(setup)?;
    }
    let mut offloads = 0;
    if opts.csum {
        offloads |= tap::TUN_F_CSUM;
        if negotiated.gso_tx && gso4 {
            offloads |= tap::TUN_F_TSO4;
        }
        if negotiated.gso_tx && gso6 && opts.ipv6_csum {
            offloads |= tap::TUN_F_TSO6;
        }
    }
    let tap_queues = tap.take_queues();
    if let Some(first) = tap_queues.first() {
        Tap::set_offload(first, offloads).map_err(setup)?;
    }
    link.set_up(true).map_err(setup)?;
    let stop = Arc::new(OwnedFd::from(
        EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK).map_err(setup)?,
    ));
    let mut threads = Vec::new();
    for (q, (p, t)) in parts.into_iter().zip(tap_queues).enumerate() {
        let stop = Arc::clone(&stop);
        threads.push(
            std::thread::Builder::new()
                .name(format!("netfront-q{q}"))
                .spawn(move || run_queue(p, t, negotiated, stop))
                .map_err(setup)?,
        );
    }
    Ok(Netfront {
        dir: dir.to_string(),
        ifname: tap.name().to_string(),
        queues,
        stop,
        threads,
    })
}
