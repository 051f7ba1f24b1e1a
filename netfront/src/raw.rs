//! A raw netif frontend, for hostile-frontend tests: the same handshake as [`crate::connect`]
//! (its keys open to the caller's edits), after which the rings, buffer pages and ports are the
//! caller's to misuse: any slot, any producer index, any notification pattern.

use xen_abi::{GrantRef, Port};
use xen_evtchn::EventChannel;
use xen_grant::{GrantAllocator, GrantedPages};
use xen_store::Xs;

use crate::negotiate::{negotiate, CtrlParts, FrontendKeys, Negotiation};
use crate::queue::{read_page, write_page, QueueParts};
use crate::{NetfrontOptions, Result};

/// A connected vif whose data path is driven by hand.
pub struct RawVif<P: GrantedPages, E: EventChannel> {
    /// The frontend directory.
    pub dir: String,
    /// The backend directory.
    pub backend: String,
    /// One per queue.
    pub queues: Vec<QueueParts<P, E>>,
    /// The control ring, when asked for and offered.
    pub ctrl: Option<CtrlParts<P, E>>,
}

/// Negotiates like [`crate::connect`] (plus a control ring when `ctrl_ring`), letting `edit`
/// change the keys first, and hands over the rings.
pub async fn connect_raw<A, E>(
    xs: &Xs,
    dir: &str,
    alloc: &A,
    mut evtchn: impl FnMut() -> std::io::Result<E>,
    opts: NetfrontOptions,
    ctrl_ring: bool,
    edit: &mut dyn FnMut(&mut FrontendKeys),
) -> Result<RawVif<A::Pages, E>>
where
    A: GrantAllocator,
    E: EventChannel,
{
    let Negotiation {
        backend,
        parts,
        ctrl,
        ..
    } = negotiate(xs, dir, alloc, &mut evtchn, opts, ctrl_ring, edit).await?;
    Ok(RawVif {
        dir: dir.to_string(),
        backend,
        queues: parts,
        ctrl,
    })
}

impl<P: GrantedPages, E: EventChannel> QueueParts<P, E> {
    /// The grant of TX buffer page `index`.
    pub fn tx_gref(&self, index: usize) -> Option<GrantRef> {
        self.tx_pool.refs().get(index).copied()
    }

    /// The grant of RX buffer page `index`.
    pub fn rx_gref(&self, index: usize) -> Option<GrantRef> {
        self.rx_pool.refs().get(index).copied()
    }

    /// Writes `data` at `offset` of TX buffer page `index`; false if it does not fit.
    pub fn write_tx_buffer(&self, index: usize, offset: usize, data: &[u8]) -> bool {
        write_page(&self.tx_pool, index, offset, data)
    }

    /// Reads `len` bytes at `offset` of RX buffer page `index`.
    pub fn read_rx_buffer(&self, index: usize, offset: usize, len: usize) -> Option<Vec<u8>> {
        read_page(&self.rx_pool, index, offset, len)
    }

    /// Notifies the backend's TX port.
    pub fn notify_tx(&self) -> std::io::Result<()> {
        self.evtchn
            .notify(self.tx_port)
            .map_err(|e| std::io::Error::other(e.to_string()))
    }

    /// Notifies the backend's RX port (the TX port without split channels).
    pub fn notify_rx(&self) -> std::io::Result<()> {
        self.evtchn
            .notify(self.rx_port)
            .map_err(|e| std::io::Error::other(e.to_string()))
    }

    /// Our TX port.
    pub fn tx_port(&self) -> Port {
        self.tx_port
    }
}

impl<P: GrantedPages, E: EventChannel> CtrlParts<P, E> {
    /// The grant of the data page.
    pub fn data_gref(&self) -> Option<GrantRef> {
        self.data.refs().first().copied()
    }

    /// Writes `data` at `offset` of the data page; false if it does not fit.
    pub fn write_data(&self, offset: usize, data: &[u8]) -> bool {
        write_page(&self.data, 0, offset, data)
    }

    /// Notifies the backend's control port.
    pub fn notify(&self) -> std::io::Result<()> {
        self.evtchn
            .notify(self.port)
            .map_err(|e| std::io::Error::other(e.to_string()))
    }
}
