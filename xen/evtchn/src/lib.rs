//! Xen event channels.
//!
//! [`EventChannel`] is one handle on the domain's event channels, as an open of
//! `/dev/xen/evtchn` is: ports bound through it fire on it, and a fired port stays **masked**
//! until [`EventChannel::unmask`] — the user-space analogue of late EOI that bounds an event storm
//! from a hostile peer (XSA-332): a backend unmasks only after it has drained the work.
//!
//! Implementations: [`linux::DevEvtchn`] over `/dev/xen/evtchn` (real Xen), and the simulated
//! host's in `xen-sim`. [`AsyncEventChannel`] adds tokio readiness to any of them.

pub mod linux;

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use xen_abi::{DomId, Port};

/// Event-channel errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operation failed in the kernel or the hypervisor.
    #[error("event channel {op}: {source}")]
    Os {
        /// Which operation.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The port is not bound through this handle.
    #[error("event channel port {0} is not bound on this handle")]
    NotBound(Port),
    /// The peer refused or does not exist.
    #[error("event channel {op} refused: {reason}")]
    Refused {
        /// Which operation.
        op: &'static str,
        /// Why.
        reason: String,
    },
}

/// Result of event-channel operations.
pub type Result<T> = std::result::Result<T, Error>;

/// One handle on a domain's event channels.
pub trait EventChannel: Send + Sync {
    /// `IOCTL_EVTCHN_BIND_INTERDOMAIN`: binds a local port to `remote`'s unbound port.
    fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> Result<Port>;
    /// `IOCTL_EVTCHN_BIND_UNBOUND_PORT`: allocates a port that `remote` may bind to.
    fn bind_unbound_port(&self, remote: DomId) -> Result<Port>;
    /// `IOCTL_EVTCHN_UNBIND`: closes a port bound through this handle.
    fn unbind(&self, port: Port) -> Result<()>;
    /// `IOCTL_EVTCHN_NOTIFY`: sends an event to the port's peer.
    fn notify(&self, port: Port) -> Result<()>;
    /// The next fired port, without blocking. A returned port stays masked until unmasked.
    fn pending(&self) -> Result<Option<Port>>;
    /// Unmasks a fired port (a `write()` of the port): it may fire again, at once if an event
    /// arrived meanwhile.
    fn unmask(&self, port: Port) -> Result<()>;
    /// `IOCTL_EVTCHN_RESTRICT_DOMID`: from now on, only bind to `domid`.
    fn restrict(&self, domid: DomId) -> Result<()>;
    /// A descriptor that polls readable while a port is pending.
    fn readiness_fd(&self) -> RawFd;
}

struct Readiness(RawFd);

impl AsRawFd for Readiness {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// An event channel with async waiting (tokio).
pub struct AsyncEventChannel<E> {
    // Field order matters: `ready` deregisters the descriptor on drop, before `inner` closes it.
    ready: AsyncFd<Readiness>,
    inner: E,
}

impl<E: EventChannel> AsyncEventChannel<E> {
    /// Registers the handle's readiness descriptor with the tokio reactor.
    pub fn new(inner: E) -> io::Result<Self> {
        let fd = inner.readiness_fd();
        // SAFETY: `fd` belongs to `inner`, which this struct owns and drops only after `ready`
        // (field order above), so the descriptor stays open and the same for `ready`'s life.
        let ready = unsafe { AsyncFd::register_with_interest(Readiness(fd), Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Self { ready, inner })
    }

    /// The wrapped handle.
    pub fn get(&self) -> &E {
        &self.inner
    }

    /// Waits for the next fired port (masked until [`EventChannel::unmask`]).
    pub async fn wait(&self) -> Result<Port> {
        loop {
            if let Some(port) = self.inner.pending()? {
                return Ok(port);
            }
            let mut guard = self.ready.readable().await.map_err(|e| Error::Os {
                op: "wait",
                source: e,
            })?;
            // Re-check under the guard; clear readiness only when nothing is pending, so an
            // event that raced in is never lost.
            match self.inner.pending()? {
                Some(port) => return Ok(port),
                None => guard.clear_ready(),
            }
        }
    }
}

impl<E: EventChannel> std::ops::Deref for AsyncEventChannel<E> {
    type Target = E;
    fn deref(&self) -> &E {
        &self.inner
    }
}
