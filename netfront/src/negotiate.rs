//! The frontend side of the netif XenBus handshake, as Linux netfront runs it: wait for the
//! backend's `InitWait`, read its features, grant the rings (and the control ring when asked),
//! allocate the event channels, write our keys in one transaction, switch to `Connected` and
//! wait for the backend to follow.
//!
//! The keys pass through a caller's edit before they are written, so hostile-frontend tests can
//! drop or corrupt any of them and watch the backend refuse.

use xen_abi::netif::{NetifCtrlRequest, NetifCtrlResponse};
use xen_abi::{DomId, Port};
use xen_evtchn::EventChannel;
use xen_grant::{GrantAllocator, GrantedPages};
use xen_ring::FrontRing;
use xen_store::{XenbusState, Xs};

use crate::queue::{Negotiated, QueueParts, RING_SLOTS};
use crate::{flag, read, setup, wait_state, xs_err, Error, NetfrontOptions, Result};

/// The frontend's keys, `(path, value)`, just before they are written.
pub type FrontendKeys = Vec<(String, String)>;

/// The control ring's pages and port.
pub struct CtrlParts<P: GrantedPages, E: EventChannel> {
    /// The ring.
    pub ring: FrontRing<P, NetifCtrlRequest, NetifCtrlResponse>,
    /// One page granted read-only to the backend, for keys and mapping tables.
    pub data: P,
    /// Event channel handle.
    pub evtchn: E,
    /// Our port.
    pub port: Port,
}

/// Everything the handshake set up.
pub struct Negotiation<P: GrantedPages, E: EventChannel> {
    /// The backend's directory.
    pub backend: String,
    /// One per queue.
    pub parts: Vec<QueueParts<P, E>>,
    /// The control ring, when asked for and offered.
    pub ctrl: Option<CtrlParts<P, E>>,
    /// What the data path may use.
    pub negotiated: Negotiated,
    /// The backend offered `feature-gso-tcpv4` and we asked for GSO.
    pub gso4: bool,
    /// The backend offered `feature-gso-tcpv6` and we asked for GSO.
    pub gso6: bool,
}

impl<P: GrantedPages, E: EventChannel> Negotiation<P, E> {
    /// Queues negotiated.
    pub fn queues(&self) -> u32 {
        u32::try_from(self.parts.len()).unwrap_or(u32::MAX)
    }
}

fn ring_ref(pages: &impl GrantedPages) -> Result<u32> {
    pages
        .refs()
        .first()
        .copied()
        .ok_or_else(|| setup("no ring grant"))
}

/// Runs the handshake for the vif whose frontend directory is `dir`. `edit` sees (and may
/// change) the keys before they are written.
pub async fn negotiate<A, E>(
    xs: &Xs,
    dir: &str,
    alloc: &A,
    evtchn: &mut impl FnMut() -> std::io::Result<E>,
    opts: NetfrontOptions,
    ctrl_ring: bool,
    edit: &mut dyn FnMut(&mut FrontendKeys),
) -> Result<Negotiation<A::Pages, E>>
where
    A: GrantAllocator,
    E: EventChannel,
{
    let backend = read(xs, &format!("{dir}/backend")).await?;
    let backend_id: DomId = read(xs, &format!("{dir}/backend-id"))
        .await?
        .parse()
        .map_err(|_| Error::Xenstore("bad backend-id".into()))?;
    wait_state(xs, &format!("{backend}/state"), |s| {
        matches!(s, XenbusState::InitWait | XenbusState::Connected)
    })
    .await?;
    let max_queues: u32 = read(xs, &format!("{backend}/multi-queue-max-queues"))
        .await
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let queues = opts.queues.clamp(1, max_queues.max(1));
    let split = opts.split && flag(xs, &format!("{backend}/feature-split-event-channels")).await?;
    let gso4 = opts.gso && flag(xs, &format!("{backend}/feature-gso-tcpv4")).await?;
    let gso6 = opts.gso && flag(xs, &format!("{backend}/feature-gso-tcpv6")).await?;
    let with_ctrl = ctrl_ring && flag(xs, &format!("{backend}/feature-ctrl-ring")).await?;
    let negotiated = Negotiated {
        sg: opts.sg,
        gso_tx: (gso4 || gso6) && opts.sg && opts.csum,
    };
    let mut parts = Vec::new();
    let mut keys: FrontendKeys = Vec::new();
    for q in 0..queues {
        let qdir = if queues == 1 {
            dir.to_string()
        } else {
            format!("{dir}/queue-{q}")
        };
        let tx_pages = alloc.grant_pages(backend_id, 1, true).map_err(setup)?;
        let rx_pages = alloc.grant_pages(backend_id, 1, true).map_err(setup)?;
        keys.push((
            format!("{qdir}/tx-ring-ref"),
            ring_ref(&tx_pages)?.to_string(),
        ));
        keys.push((
            format!("{qdir}/rx-ring-ref"),
            ring_ref(&rx_pages)?.to_string(),
        ));
        let tx_pool = alloc
            .grant_pages(backend_id, RING_SLOTS, false)
            .map_err(setup)?;
        let rx_pool = alloc
            .grant_pages(backend_id, RING_SLOTS, true)
            .map_err(setup)?;
        let e = evtchn().map_err(setup)?;
        let tx_port = e.bind_unbound_port(backend_id).map_err(setup)?;
        let rx_port = if split {
            e.bind_unbound_port(backend_id).map_err(setup)?
        } else {
            tx_port
        };
        if split {
            keys.push((format!("{qdir}/event-channel-tx"), tx_port.to_string()));
            keys.push((format!("{qdir}/event-channel-rx"), rx_port.to_string()));
        } else {
            keys.push((format!("{qdir}/event-channel"), tx_port.to_string()));
        }
        parts.push(QueueParts {
            tx_ring: FrontRing::init(tx_pages).map_err(setup)?,
            rx_ring: FrontRing::init(rx_pages).map_err(setup)?,
            tx_pool,
            rx_pool,
            evtchn: e,
            tx_port,
            rx_port,
        });
    }
    let ctrl = if with_ctrl {
        let pages = alloc.grant_pages(backend_id, 1, true).map_err(setup)?;
        let data = alloc.grant_pages(backend_id, 1, false).map_err(setup)?;
        let e = evtchn().map_err(setup)?;
        let port = e.bind_unbound_port(backend_id).map_err(setup)?;
        keys.push((
            format!("{dir}/ctrl-ring-ref"),
            ring_ref(&pages)?.to_string(),
        ));
        keys.push((format!("{dir}/event-channel-ctrl"), port.to_string()));
        Some(CtrlParts {
            ring: FrontRing::init(pages).map_err(setup)?,
            data,
            evtchn: e,
            port,
        })
    } else {
        None
    };
    let flag_str = |b: bool| u8::from(b).to_string();
    if queues > 1 {
        keys.push((format!("{dir}/multi-queue-num-queues"), queues.to_string()));
    }
    for (k, v) in [
        ("request-rx-copy", "1".to_string()),
        ("feature-rx-notify", "1".to_string()),
        ("feature-sg", flag_str(opts.sg)),
        ("feature-gso-tcpv4", flag_str(opts.gso)),
        ("feature-gso-tcpv6", flag_str(opts.gso)),
        ("feature-no-csum-offload", flag_str(!opts.csum)),
        ("feature-ipv6-csum-offload", flag_str(opts.ipv6_csum)),
        (
            "request-multicast-control",
            flag_str(opts.multicast_control),
        ),
    ] {
        keys.push((format!("{dir}/{k}"), v));
    }
    edit(&mut keys);
    xs.transaction(|tx| {
        let keys = keys.clone();
        async move {
            for (k, v) in &keys {
                tx.write(k, v.as_bytes()).await?;
            }
            Ok(())
        }
    })
    .await
    .map_err(xs_err)?;
    xs.write_state(&format!("{dir}/state"), XenbusState::Connected)
        .await
        .map_err(xs_err)?;
    let state = wait_state(xs, &format!("{backend}/state"), |s| {
        matches!(
            s,
            XenbusState::Connected | XenbusState::Closing | XenbusState::Closed
        )
    })
    .await?;
    if state != XenbusState::Connected {
        return Err(Error::Refused);
    }
    Ok(Negotiation {
        backend,
        parts,
        ctrl,
        negotiated,
        gso4,
        gso6,
    })
}
