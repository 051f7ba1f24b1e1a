//! Where the Xen facilities come from: real Xen (`/dev/xen/*`) or the simulated host. The
//! backend code is the same on both.

use std::sync::Arc;

use xen_abi::DomId;
use xen_evtchn::EventChannel;
use xen_grant::GrantMapper;

/// A source of Xen handles for one driver domain.
pub trait Platform: Send + Sync + 'static {
    /// Grant mapping.
    type Grants: GrantMapper + 'static;
    /// Event channels.
    type Evtchn: EventChannel + 'static;

    /// Our domain id.
    fn domid(&self) -> DomId;
    /// A grant handle (shared by a device's queues).
    fn grants(&self) -> std::io::Result<Arc<Self::Grants>>;
    /// A new event-channel handle (one per queue).
    fn evtchn(&self) -> std::io::Result<Self::Evtchn>;
}

/// The simulated host.
pub struct SimPlatform {
    domain: xen_sim::SimDomain,
}

impl SimPlatform {
    /// The platform of the simulated domain `domain`.
    pub fn new(domain: xen_sim::SimDomain) -> Self {
        Self { domain }
    }

    /// The domain.
    pub fn domain(&self) -> &xen_sim::SimDomain {
        &self.domain
    }
}

fn io(e: xen_sim::domain::Error) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl Platform for SimPlatform {
    type Grants = xen_sim::domain::SimGrants;
    type Evtchn = xen_sim::domain::SimEvtchn;

    fn domid(&self) -> DomId {
        self.domain.domid()
    }

    fn grants(&self) -> std::io::Result<Arc<Self::Grants>> {
        self.domain.grants().map(Arc::new).map_err(io)
    }

    fn evtchn(&self) -> std::io::Result<Self::Evtchn> {
        self.domain.evtchn().map_err(io)
    }
}

/// Real Xen, from inside dom0 or a driver domain.
pub struct XenPlatform {
    domid: DomId,
}

impl XenPlatform {
    /// The platform of domain `domid` (read it from xenstore's `domid` key).
    pub fn new(domid: DomId) -> Self {
        Self { domid }
    }
}

impl Platform for XenPlatform {
    type Grants = xen_grant::linux::Gntdev;
    type Evtchn = xen_evtchn::linux::DevEvtchn;

    fn domid(&self) -> DomId {
        self.domid
    }

    fn grants(&self) -> std::io::Result<Arc<Self::Grants>> {
        xen_grant::linux::Gntdev::open()
            .map(Arc::new)
            .map_err(|e| std::io::Error::other(e.to_string()))
    }

    fn evtchn(&self) -> std::io::Result<Self::Evtchn> {
        xen_evtchn::linux::DevEvtchn::open().map_err(|e| std::io::Error::other(e.to_string()))
    }
}
