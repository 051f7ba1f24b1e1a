//! Event channels: allocate unbound, bind interdomain, close — `event_channel.c` semantics,
//! with an eventfd pair per channel standing in for the pending bits.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use nix::sys::eventfd::{EfdFlags, EventFd};
use xen_abi::{DomId, Port};

use super::domain::{PortKind, PortState};
use super::proto::Reply;
use super::{error, Answer, ConnId, State};

pub(crate) fn eventfd() -> std::io::Result<Arc<OwnedFd>> {
    let fd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
    Ok(Arc::new(OwnedFd::from(fd)))
}

fn port_answer(port: Port, rx: &OwnedFd, tx: &OwnedFd) -> Answer {
    match (
        rx.as_fd().try_clone_to_owned(),
        tx.as_fd().try_clone_to_owned(),
    ) {
        (Ok(r), Ok(t)) => Answer {
            reply: Reply::Port(port),
            fds: vec![r, t],
        },
        _ => error(libc::EMFILE, "cannot duplicate event channel descriptors").into(),
    }
}

impl State {
    fn restricted(&self, conn: ConnId, remote: DomId) -> bool {
        self.conns
            .get(&conn)
            .and_then(|c| c.evtchn_restrict)
            .is_some_and(|r| r != remote)
    }

    /// Gives `domid` a new port in state `kind` with the eventfd pair `rx`/`tx`, owned by
    /// `conn`. Returns the answer and, on success, the port.
    fn insert_port(
        &mut self,
        conn: ConnId,
        domid: DomId,
        kind: PortKind,
        rx: Arc<OwnedFd>,
        tx: Arc<OwnedFd>,
    ) -> (Answer, Option<Port>) {
        let Some(dom) = self.domains.get_mut(&domid) else {
            return (error(libc::ESRCH, "no such domain").into(), None);
        };
        let Some(port) = dom.free_port() else {
            return (
                error(libc::ENOSPC, "no free event channel ports").into(),
                None,
            );
        };
        let answer = port_answer(port, &rx, &tx);
        dom.ports.insert(
            port,
            PortState {
                owner: conn,
                kind,
                rx,
                tx,
            },
        );
        (answer, Some(port))
    }

    pub(crate) fn alloc_unbound(&mut self, conn: ConnId, domid: DomId, remote: DomId) -> Answer {
        if self.restricted(conn, remote) {
            return error(
                libc::EPERM,
                format!("this handle may only bind to its restricted domain, not {remote}"),
            )
            .into();
        }
        if !self.domains.contains_key(&remote) {
            return error(libc::ESRCH, format!("domain {remote} does not exist")).into();
        }
        let (rx, tx) = match (eventfd(), eventfd()) {
            (Ok(r), Ok(t)) => (r, t),
            _ => return error(libc::EMFILE, "out of eventfds").into(),
        };
        self.insert_port(conn, domid, PortKind::Unbound { remote }, rx, tx)
            .0
    }

    pub(crate) fn bind_interdomain(
        &mut self,
        conn: ConnId,
        domid: DomId,
        remote: DomId,
        remote_port: Port,
    ) -> Answer {
        if self.restricted(conn, remote) {
            return error(
                libc::EPERM,
                format!("this handle may only bind to its restricted domain, not {remote}"),
            )
            .into();
        }
        let Some(rdom) = self.domains.get(&remote) else {
            return error(libc::ESRCH, format!("domain {remote} does not exist")).into();
        };
        let Some(rport) = rdom.ports.get(&remote_port) else {
            return error(
                libc::EINVAL,
                format!("port {remote_port} of domain {remote} is not allocated"),
            )
            .into();
        };
        if rport.kind != (PortKind::Unbound { remote: domid }) {
            return error(
                libc::EINVAL,
                format!("port {remote_port} of domain {remote} is not open to domain {domid}"),
            )
            .into();
        }
        // Our side receives on the remote's `tx` and notifies through its `rx`.
        let (rx, tx) = (Arc::clone(&rport.tx), Arc::clone(&rport.rx));
        let (answer, port) = self.insert_port(
            conn,
            domid,
            PortKind::Interdomain {
                remote,
                remote_port,
            },
            rx,
            tx,
        );
        let Some(port) = port else { return answer };
        if let Some(rport) = self
            .domains
            .get_mut(&remote)
            .and_then(|d| d.ports.get_mut(&remote_port))
        {
            rport.kind = PortKind::Interdomain {
                remote: domid,
                remote_port: port,
            };
        }
        answer
    }

    /// Closes a port; an interdomain peer goes back to unbound (and may be bound again).
    pub(crate) fn close_port(&mut self, domid: DomId, port: Port) {
        let Some(state) = self
            .domains
            .get_mut(&domid)
            .and_then(|d| d.ports.remove(&port))
        else {
            return;
        };
        if let PortKind::Interdomain {
            remote,
            remote_port,
        } = state.kind
        {
            if let Some(peer) = self
                .domains
                .get_mut(&remote)
                .and_then(|d| d.ports.get_mut(&remote_port))
            {
                if peer.kind
                    == (PortKind::Interdomain {
                        remote: domid,
                        remote_port: port,
                    })
                {
                    peer.kind = PortKind::Unbound { remote: domid };
                }
            }
        }
    }

    pub(crate) fn unbind(&mut self, conn: ConnId, domid: DomId, port: Port) -> Reply {
        let owned = self
            .domains
            .get(&domid)
            .and_then(|d| d.ports.get(&port))
            .is_some_and(|p| p.owner == conn);
        if !owned {
            return error(
                libc::ENOTCONN,
                format!("port {port} is not bound on this handle"),
            );
        }
        self.close_port(domid, port);
        Reply::Ok
    }
}
