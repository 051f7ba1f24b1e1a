//! Event channels on the simulated host, with `/dev/xen/evtchn` semantics: ports bound through
//! a handle fire on it, and a fired port stays masked until unmasked.
//!
//! Each port is an eventfd pair (receive, notify) from the hypervisor. The handle watches the
//! receive descriptors with one epoll instance, which is also its readiness descriptor; masking
//! a port disarms its epoll entry, so an event that arrives meanwhile stays counted in the
//! eventfd and fires on unmask.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, MutexGuard};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use xen_abi::{DomId, Port};
use xen_evtchn::{Error as EvtchnError, EventChannel, Result};

use super::{Credentials, Error, HvConn};
use crate::hv::proto::{Reply, Request};

struct PortFds {
    rx: OwnedFd,
    tx: OwnedFd,
}

/// An event channel handle on the simulated host.
pub struct SimEvtchn {
    conn: HvConn,
    epoll: Epoll,
    ports: Mutex<HashMap<Port, PortFds>>,
    fired: Mutex<VecDeque<Port>>,
    restrict: Mutex<Option<DomId>>,
}

fn refused(op: &'static str, e: Error) -> EvtchnError {
    match e {
        Error::Refused { message, .. } => EvtchnError::Refused {
            op,
            reason: message,
        },
        Error::Io(source) => EvtchnError::Os { op, source },
        other => EvtchnError::Refused {
            op,
            reason: other.to_string(),
        },
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SimEvtchn {
    pub(crate) fn open(creds: &Credentials) -> super::Result<Self> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(std::io::Error::from)?;
        Ok(Self {
            conn: HvConn::open(creds, false)?,
            epoll,
            ports: Mutex::new(HashMap::new()),
            fired: Mutex::new(VecDeque::new()),
            restrict: Mutex::new(None),
        })
    }

    fn check_restrict(&self, op: &'static str, remote: DomId) -> Result<()> {
        match *lock(&self.restrict) {
            Some(r) if r != remote => Err(EvtchnError::Refused {
                op,
                reason: format!("handle is restricted to domain {r}"),
            }),
            _ => Ok(()),
        }
    }

    fn add_port(&self, op: &'static str, reply: Reply, fds: Vec<OwnedFd>) -> Result<Port> {
        let Reply::Port(port) = reply else {
            return Err(EvtchnError::Refused {
                op,
                reason: format!("unexpected reply {reply:?}"),
            });
        };
        let [rx, tx] = <[OwnedFd; 2]>::try_from(fds).map_err(|_| EvtchnError::Refused {
            op,
            reason: "port descriptors missing".into(),
        })?;
        self.epoll
            .add(
                rx.as_fd(),
                EpollEvent::new(EpollFlags::EPOLLIN, u64::from(port)),
            )
            .map_err(|e| EvtchnError::Os {
                op,
                source: e.into(),
            })?;
        lock(&self.ports).insert(port, PortFds { rx, tx });
        Ok(port)
    }
}

impl EventChannel for SimEvtchn {
    fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> Result<Port> {
        self.check_restrict("bind-interdomain", remote)?;
        let (reply, fds) = self
            .conn
            .call(&Request::BindInterdomain {
                remote,
                remote_port,
            })
            .map_err(|e| refused("bind-interdomain", e))?;
        self.add_port("bind-interdomain", reply, fds)
    }

    fn bind_unbound_port(&self, remote: DomId) -> Result<Port> {
        self.check_restrict("bind-unbound-port", remote)?;
        let (reply, fds) = self
            .conn
            .call(&Request::AllocUnbound { remote })
            .map_err(|e| refused("bind-unbound-port", e))?;
        self.add_port("bind-unbound-port", reply, fds)
    }

    fn unbind(&self, port: Port) -> Result<()> {
        let fds = lock(&self.ports)
            .remove(&port)
            .ok_or(EvtchnError::NotBound(port))?;
        // Remove the epoll entry explicitly: the peer holds a duplicate of our receive
        // eventfd, so closing ours would not remove it.
        let _ = self.epoll.delete(fds.rx.as_fd());
        lock(&self.fired).retain(|&p| p != port);
        self.conn
            .call(&Request::Unbind { port })
            .map(drop)
            .map_err(|e| refused("unbind", e))
    }

    fn notify(&self, port: Port) -> Result<()> {
        let ports = lock(&self.ports);
        let fds = ports.get(&port).ok_or(EvtchnError::NotBound(port))?;
        match nix::unistd::write(&fds.tx, &1u64.to_ne_bytes()) {
            // A saturated counter already means "pending".
            Ok(_) | Err(nix::errno::Errno::EAGAIN) => Ok(()),
            Err(e) => Err(EvtchnError::Os {
                op: "notify",
                source: e.into(),
            }),
        }
    }

    fn pending(&self) -> Result<Option<Port>> {
        let mut fired = lock(&self.fired);
        if let Some(p) = fired.pop_front() {
            return Ok(Some(p));
        }
        let mut events = [EpollEvent::empty(); 64];
        let n = self
            .epoll
            .wait(&mut events, EpollTimeout::ZERO)
            .map_err(|e| EvtchnError::Os {
                op: "read",
                source: e.into(),
            })?;
        let ports = lock(&self.ports);
        for event in events.iter().take(n) {
            let port = event.data() as Port;
            let Some(fds) = ports.get(&port) else {
                continue;
            };
            let mut counter = [0u8; 8];
            let _ = nix::unistd::read(fds.rx.as_raw_fd(), &mut counter);
            // Mask: disarm the entry until unmask.
            let mut disarmed = EpollEvent::new(EpollFlags::empty(), u64::from(port));
            let _ = self.epoll.modify(fds.rx.as_fd(), &mut disarmed);
            fired.push_back(port);
        }
        Ok(fired.pop_front())
    }

    fn unmask(&self, port: Port) -> Result<()> {
        let ports = lock(&self.ports);
        let fds = ports.get(&port).ok_or(EvtchnError::NotBound(port))?;
        let mut armed = EpollEvent::new(EpollFlags::EPOLLIN, u64::from(port));
        self.epoll
            .modify(fds.rx.as_fd(), &mut armed)
            .map_err(|e| EvtchnError::Os {
                op: "unmask",
                source: e.into(),
            })
    }

    fn restrict(&self, domid: DomId) -> Result<()> {
        self.conn
            .call(&Request::RestrictEvtchn { domid })
            .map_err(|e| refused("restrict-domid", e))?;
        *lock(&self.restrict) = Some(domid);
        Ok(())
    }

    fn readiness_fd(&self) -> RawFd {
        self.epoll.0.as_raw_fd()
    }
}

impl Drop for SimEvtchn {
    /// Closing the handle unbinds its ports synchronously, as closing `/dev/xen/evtchn` does
    /// (the hypervisor would also do it when it sees the connection close, but later).
    fn drop(&mut self) {
        let ports: Vec<Port> = lock(&self.ports).keys().copied().collect();
        for port in ports {
            let _ = self.conn.call(&Request::Unbind { port });
        }
    }
}
