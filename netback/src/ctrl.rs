//! The control ring (`feature-ctrl-ring`): a thread that answers the guest's hashing requests.
//! Each request is copied out of the ring once; key and mapping data are grant-copied into a
//! private buffer and validated there ([`xen_netif::ctrl::handle`]); the new configuration is
//! published to the vif's queues only when a request succeeds.

use std::os::fd::BorrowedFd;
use std::sync::{Arc, PoisonError};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use xen_abi::grant_table::status::OKAY;
use xen_abi::netif::{NetifCtrlRequest, NetifCtrlResponse};
use xen_abi::{DomId, GrantRef, Port};
use xen_backend::WorkerSignals;
use xen_evtchn::EventChannel;
use xen_grant::{CopyOp, GrantMapper, GrantPtr};
use xen_ring::BackRing;

use crate::queue::StartError;
use crate::shared::VifShared;

/// Requests handled per wake-up.
const CTRL_BUDGET: u32 = 64;

/// A running control ring.
pub type CtrlHandle = xen_backend::WorkerHandle;

/// Maps the control ring, binds its port and serves it on a thread.
#[allow(clippy::too_many_arguments)]
pub fn start_ctrl<G, E>(
    frontend: DomId,
    ring_ref: GrantRef,
    port: Port,
    reattach: bool,
    grants: Arc<G>,
    evtchn: E,
    shared: Arc<VifShared>,
    name: String,
) -> Result<CtrlHandle, StartError>
where
    G: GrantMapper + 'static,
    E: EventChannel + 'static,
{
    let mem = grants
        .map(frontend, &[ring_ref], true)
        .map_err(|e| StartError::MapRing("control", e))?;
    let ring: BackRing<G::Mapping, NetifCtrlRequest, NetifCtrlResponse> = if reattach {
        BackRing::attach_at_published(mem)
    } else {
        BackRing::new(mem)
    }
    .map_err(|e| StartError::Ring("control", e))?;
    let local = evtchn
        .bind_interdomain(frontend, port)
        .map_err(StartError::Bind)?;
    let signals = WorkerSignals::new()?;
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    for (fd, token) in [(evtchn.readiness_fd(), 0u64), (signals.stop_fd(), 1)] {
        // SAFETY: the descriptors belong to `evtchn` and `signals`, which outlive `epoll` (the
        // thread owns `evtchn`, `epoll` and a clone of `signals`).
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        epoll.add(fd, EpollEvent::new(EpollFlags::EPOLLIN, token))?;
    }
    let theirs = signals.clone();
    let mut ring = ring;
    Ok(CtrlHandle::spawn(name, signals, move || {
        let mut events = [EpollEvent::empty(); 2];
        let copy = |gref: GrantRef, dst: &mut [u8]| {
            let mut ops = [CopyOp::FromGrant {
                src: GrantPtr {
                    domid: frontend,
                    gref,
                    offset: 0,
                },
                dst,
            }];
            let mut status = [OKAY];
            grants.copy(&mut ops, &mut status).is_ok() && status == [OKAY]
        };
        let mut timeout = EpollTimeout::ZERO;
        loop {
            let n = match epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break,
            };
            timeout = EpollTimeout::NONE;
            if events.iter().take(n).any(|e| e.data() == 1) {
                break;
            }
            let fired = evtchn.pending().ok().flatten();
            match serve(&mut ring, &shared, &mut &copy) {
                Ok(notify) => {
                    if notify {
                        let _ = evtchn.notify(local);
                    }
                }
                Err(e) => {
                    tracing::warn!(frontend, "control ring halted: {e}");
                    theirs.fail();
                    break;
                }
            }
            if let Some(p) = fired {
                let _ = evtchn.unmask(p);
            }
        }
        let _ = evtchn.unbind(local);
    })?)
}

/// Answers waiting requests; true if the frontend wants an event.
fn serve<M: xen_ring::SharedMemory>(
    ring: &mut BackRing<M, NetifCtrlRequest, NetifCtrlResponse>,
    shared: &VifShared,
    copy: &mut dyn FnMut(GrantRef, &mut [u8]) -> bool,
) -> Result<bool, xen_ring::RingError> {
    let mut notify = false;
    loop {
        ring.begin_pass(CTRL_BUDGET)?;
        while let Some(req) = ring.pop_request() {
            let mut config = shared
                .hash
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let rsp = xen_netif::ctrl::handle(&req, &mut config, shared.queues(), copy);
            if rsp.status == xen_abi::netif::XEN_NETIF_CTRL_STATUS_SUCCESS {
                *shared.hash.write().unwrap_or_else(PoisonError::into_inner) = config;
            }
            // Published at once, as the data rings do (restart safety).
            ring.push_response(&rsp)?;
            notify |= ring.push_responses_and_check_notify();
        }
        if !ring.final_check_for_requests()? {
            return Ok(notify);
        }
    }
}
