//! The simulated hypervisor ("broker"): domains, their memory, grant tables and event
//! channels, enforced the way Xen enforces them.
//!
//! Every domain is one or more OS processes that talk to the broker over unix sockets
//! (`proto.rs`). A domain's memory is a memfd; its grant table is a second memfd of real
//! `grant_entry_v1` entries that the domain writes and the broker reads and updates atomically
//! (setting `GTF_reading`/`GTF_writing` while a grant is mapped or copied, as Xen does). Event
//! channels are eventfd pairs. When a domain's primary process dies, the broker tears the
//! domain down as Xen does on a crash: its ports close (peers see them unbound), its mappings
//! of others' grants are released, `@releaseDomain` fires and the toolstack's directory for it
//! goes away.

mod copybuf;
mod domain;
mod evtchn;
mod fastcopy;
mod grants;
mod hvm;
pub mod proto;
mod server;
mod vcpu;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard};

use xen_abi::DomId;

use crate::xenstored::Xenstored;
use domain::Domain;
pub use domain::DomainConfig;
use proto::{DomainInfo, Reply, Request};
pub use server::serve;

/// Connections one domain may hold open (each is a thread in the broker).
const MAX_CONNECTIONS_PER_DOMAIN: usize = 256;

/// Identifies a connection to the broker.
pub(crate) type ConnId = u64;

/// A grant map held by a connection.
#[derive(Debug, Clone)]
pub(crate) struct MapRecord {
    pub(crate) granter: DomId,
    pub(crate) refs: Vec<u32>,
    pub(crate) writable: bool,
}

/// One connection's state.
pub(crate) struct Conn {
    pub(crate) domid: DomId,
    /// A clone of the socket, to hang up on the process when its domain dies.
    pub(crate) stream: Option<UnixStream>,
    pub(crate) maps: HashMap<u64, MapRecord>,
    /// Memory descriptors already sent: (granter, writable).
    pub(crate) fds_sent: HashSet<(DomId, bool)>,
    /// `IOCTL_EVTCHN_RESTRICT_DOMID`.
    pub(crate) evtchn_restrict: Option<DomId>,
    /// `IOCTL_PRIVCMD_RESTRICT`.
    pub(crate) privcmd_restrict: Option<DomId>,
}

/// The broker's state.
pub(crate) struct State {
    pub(crate) domains: BTreeMap<DomId, Domain>,
    pub(crate) conns: HashMap<ConnId, Conn>,
    next_domid: DomId,
    next_conn: ConnId,
    pub(crate) next_handle: u64,
    /// Copy slots of callers that copy grants on their own threads.
    pub(crate) copy_slots: fastcopy::CopySlots,
}

/// What a request produced: a reply, descriptors to pass, and follow-up work outside the lock.
pub(crate) struct Answer {
    pub(crate) reply: Reply,
    pub(crate) fds: Vec<OwnedFd>,
}

impl From<Reply> for Answer {
    fn from(reply: Reply) -> Self {
        Self {
            reply,
            fds: Vec::new(),
        }
    }
}

/// An errno reply with a sentence.
pub(crate) fn error(errno: i32, message: impl Into<String>) -> Reply {
    Reply::Error {
        errno,
        message: message.into(),
    }
}

/// The simulated hypervisor.
pub struct Hypervisor {
    state: Mutex<State>,
    xenstored: Xenstored,
    copy_work: CopyWork,
}

/// Grant-copy calls the hypervisor served and the time it spent on them (for benchmarks: set
/// against the callers' round trips, it tells the hypervisor's work from their waiting).
#[derive(Debug, Default)]
struct CopyWork {
    calls: std::sync::atomic::AtomicU64,
    busy_ns: std::sync::atomic::AtomicU64,
}

/// What [`Hypervisor::copy_work`] reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyWorkStats {
    /// Buffered grant-copy calls served.
    pub calls: u64,
    /// Time spent serving them, from the decoded request to the reply ready to send.
    pub busy: std::time::Duration,
}

impl Hypervisor {
    /// A hypervisor with only dom0, whose token is `dom0_token`.
    pub fn new(xenstored: Xenstored, dom0_token: String) -> Arc<Self> {
        let mut domains = BTreeMap::new();
        domains.insert(0, Domain::dom0(dom0_token));
        Arc::new(Self {
            state: Mutex::new(State {
                domains,
                conns: HashMap::new(),
                next_domid: 1,
                next_conn: 1,
                next_handle: 1,
                copy_slots: fastcopy::CopySlots::default(),
            }),
            xenstored,
            copy_work: CopyWork::default(),
        })
    }

    /// Grant-copy calls served so far and the time spent on them.
    pub fn copy_work(&self) -> CopyWorkStats {
        use std::sync::atomic::Ordering::Relaxed;
        CopyWorkStats {
            calls: self.copy_work.calls.load(Relaxed),
            busy: std::time::Duration::from_nanos(self.copy_work.busy_ns.load(Relaxed)),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The xenstored this host runs.
    pub fn xenstored(&self) -> &Xenstored {
        &self.xenstored
    }

    /// Creates a domain (the toolstack's `xl create` up to starting its kernel): memory, a
    /// grant table, its xenstore directory, and `@introduceDomain`.
    pub fn create_domain(&self, config: &DomainConfig) -> Result<(DomId, String), String> {
        let (domid, token) = {
            let mut st = self.lock();
            let domid = st.next_domid;
            if domid >= xen_abi::DOMID_FIRST_RESERVED {
                return Err("no domain ids left".into());
            }
            let domain = Domain::create(domid, config)
                .map_err(|e| format!("cannot create domain memory: {e}"))?;
            let token = domain.token.clone();
            st.domains.insert(domid, domain);
            st.next_domid += 1;
            (domid, token)
        };
        crate::toolstack::write_domain_directory(&self.xenstored, domid, &config.name)
            .map_err(|e| format!("cannot write the xenstore directory of domain {domid}: {e}"))?;
        self.xenstored.introduce(domid);
        tracing::info!(domid, name = %config.name, "domain created");
        Ok((domid, token))
    }

    /// Destroys a domain: kills its primary process if `kill`, then cleans up after it.
    pub fn destroy_domain(&self, domid: DomId, kill: bool) -> bool {
        let released = {
            let mut st = self.lock();
            if domid == 0 {
                return false;
            }
            st.teardown_domain(domid, kill)
        };
        if released {
            self.after_release(domid);
        }
        released
    }

    fn after_release(&self, domid: DomId) {
        self.xenstored.release(domid);
        if let Err(e) = crate::toolstack::remove_domain_directory(&self.xenstored, domid) {
            tracing::warn!(
                domid,
                "cannot remove the xenstore directory of a dead domain: {e}"
            );
        }
        tracing::info!(domid, "domain destroyed");
    }

    /// Whether `token` is the secret of live domain `domid`.
    pub fn check_credentials(&self, domid: DomId, token: &str) -> bool {
        self.lock()
            .domains
            .get(&domid)
            .is_some_and(|d| d.token_matches(token))
    }

    /// Whether grant `gref` of `domid` is mapped or being copied (`GTF_reading`/`GTF_writing`).
    pub fn grant_in_use(&self, domid: DomId, gref: xen_abi::GrantRef) -> Option<bool> {
        let st = self.lock();
        let word = st
            .domains
            .get(&domid)?
            .grant_word(gref)?
            .load(std::sync::atomic::Ordering::Acquire);
        let busy = xen_abi::grant_table::GTF_READING | xen_abi::grant_table::GTF_WRITING;
        Some((word & 0xffff) as u16 & busy != 0)
    }

    /// The state of an event channel port: `None` if closed, else whether it is bound to a
    /// peer (`Some(true)`) or waiting unbound (`Some(false)`).
    pub fn port_bound(&self, domid: DomId, port: xen_abi::Port) -> Option<bool> {
        let st = self.lock();
        let p = st.domains.get(&domid)?.ports.get(&port)?;
        Some(matches!(p.kind, domain::PortKind::Interdomain { .. }))
    }

    /// The live domains.
    pub fn domains(&self) -> Vec<DomainInfo> {
        self.lock()
            .domains
            .iter()
            .map(|(&id, d)| d.info(id))
            .collect()
    }

    /// Checks a connection's credentials and registers it.
    pub(crate) fn connect(
        &self,
        hello: &proto::Hello,
        stream: &UnixStream,
    ) -> Result<ConnId, Reply> {
        let mut st = self.lock();
        let Some(domain) = st.domains.get(&hello.domid) else {
            return Err(error(
                libc::ESRCH,
                format!("domain {} does not exist", hello.domid),
            ));
        };
        if !domain.token_matches(&hello.token) {
            return Err(error(
                libc::EACCES,
                format!("wrong credentials for domain {}", hello.domid),
            ));
        }
        if hello.primary && (hello.domid == 0 || domain.primary.is_some()) {
            return Err(error(
                libc::EBUSY,
                format!("domain {} already has a primary process", hello.domid),
            ));
        }
        let open = st.conns.values().filter(|c| c.domid == hello.domid).count();
        if hello.domid != 0 && open >= MAX_CONNECTIONS_PER_DOMAIN {
            return Err(error(
                libc::EMFILE,
                format!("domain {} has too many hypervisor connections", hello.domid),
            ));
        }
        let id = st.next_conn;
        st.next_conn += 1;
        if hello.primary {
            let pid =
                nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
                    .map(|c| c.pid())
                    .ok();
            if let Some(d) = st.domains.get_mut(&hello.domid) {
                d.primary = Some((id, pid));
            }
        }
        st.conns.insert(
            id,
            Conn {
                domid: hello.domid,
                stream: stream.try_clone().ok(),
                maps: HashMap::new(),
                fds_sent: HashSet::new(),
                evtchn_restrict: None,
                privcmd_restrict: None,
            },
        );
        Ok(id)
    }

    /// A connection closed (its process released the handle, or died).
    pub(crate) fn disconnect(&self, conn: ConnId) {
        let released = {
            let mut st = self.lock();
            let primary_of = st
                .domains
                .iter()
                .find(|(_, d)| d.primary.is_some_and(|(c, _)| c == conn))
                .map(|(&id, _)| id);
            st.close_conn(conn);
            match primary_of {
                Some(domid) => st.teardown_domain(domid, false).then_some(domid),
                None => None,
            }
        };
        if let Some(domid) = released {
            tracing::info!(
                domid,
                "primary process of the domain exited: the domain crashed"
            );
            self.after_release(domid);
        }
    }

    /// `CopyGrantsBuffered` on connection `conn`, through its copy buffer.
    pub(crate) fn copy_grants_buffered(
        &self,
        conn: ConnId,
        segments: &[proto::BufferedSegment],
        buffer: Option<&copybuf::CopyBuffer>,
    ) -> Reply {
        let Some(buffer) = buffer else {
            return error(libc::EINVAL, "no copy buffer registered on this connection");
        };
        if segments.len() > 4096 {
            return error(libc::EINVAL, "at most 4096 copy segments per batch");
        }
        let started = std::time::Instant::now();
        // Checked and pinned under the lock, copied outside it (the pins keep the granter
        // from ending access meanwhile), unpinned under it again: other connections' calls
        // are not held up by this one's bytes.
        let plan = {
            let mut state = self.lock();
            match state.conns.get(&conn).map(|c| c.domid) {
                Some(domid) => state.plan_buffered_copies(domid, segments, buffer),
                None => return error(libc::ENOTCONN, "connection is closed"),
            }
        };
        plan.copy();
        let reply = self.lock().release_copies(plan);
        let busy = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.copy_work
            .calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.copy_work
            .busy_ns
            .fetch_add(busy, std::sync::atomic::Ordering::Relaxed);
        reply
    }

    /// Handles one request of connection `conn`.
    pub(crate) fn handle(&self, conn: ConnId, request: Request) -> Answer {
        let domid = match self.lock().conns.get(&conn) {
            Some(c) => c.domid,
            None => return error(libc::ENOTCONN, "connection is closed").into(),
        };
        let dom0_only = |what: &str| error(libc::EPERM, format!("only dom0 may {what}"));
        match request {
            Request::Hello(_) => error(libc::EISCONN, "already connected").into(),
            Request::CreateDomain { name, mem_pages } => {
                if domid != 0 {
                    return dom0_only("create domains").into();
                }
                match self.create_domain(&DomainConfig {
                    name,
                    mem_pages,
                    hvm_vcpus: None,
                }) {
                    Ok((domid, token)) => Reply::Created { domid, token }.into(),
                    Err(e) => error(libc::ENOMEM, e).into(),
                }
            }
            Request::DestroyDomain { domid: target } => {
                if domid != 0 {
                    return dom0_only("destroy domains").into();
                }
                if self.destroy_domain(target, true) {
                    Reply::Ok.into()
                } else {
                    error(libc::ESRCH, format!("domain {target} does not exist")).into()
                }
            }
            Request::CreateHvmDomain {
                name,
                mem_pages,
                vcpus,
            } => {
                if domid != 0 {
                    return dom0_only("create domains").into();
                }
                match self.create_domain(&DomainConfig {
                    name,
                    mem_pages,
                    hvm_vcpus: Some(vcpus),
                }) {
                    Ok((domid, token)) => Reply::Created { domid, token }.into(),
                    Err(e) => error(libc::ENOMEM, e).into(),
                }
            }
            Request::SetTarget { dm, target } => {
                if domid != 0 {
                    return dom0_only("make a domain another's device model").into();
                }
                self.lock().set_target(dm, target).into()
            }
            Request::Access(access) => self.access(conn, &access).into(),
            Request::InjectIoreq {
                target,
                id,
                vcpu,
                raw,
                wait_ms,
            } => {
                if domid != 0 {
                    return dom0_only("inject ioreqs").into();
                }
                self.inject_ioreq(target, id, vcpu, &raw, wait_ms).into()
            }
            Request::InjectBuffered {
                target,
                id,
                slots,
                read_pointer,
                write_pointer,
            } => {
                if domid != 0 {
                    return dom0_only("inject buffered ioreqs").into();
                }
                self.inject_buffered(target, id, &slots, read_pointer, write_pointer)
                    .into()
            }
            Request::WaitInterrupt { timeout_ms } => self.wait_interrupt(domid, timeout_ms).into(),
            Request::ListDomains => {
                if domid != 0 {
                    return dom0_only("list domains").into();
                }
                Reply::Domains(self.domains()).into()
            }
            other => self.lock().handle_domain_request(conn, domid, other),
        }
    }
}

impl State {
    fn close_conn(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        for (_, map) in c.maps {
            self.release_map(c.domid, &map);
        }
        self.release_copy_slots(conn);
        let owned: Vec<(DomId, u32)> = self
            .domains
            .iter()
            .flat_map(|(&d, dom)| {
                dom.ports
                    .iter()
                    .filter(|(_, p)| p.owner == conn)
                    .map(move |(&port, _)| (d, port))
            })
            .collect();
        for (d, port) in owned {
            self.close_port(d, port);
        }
        if let Some(stream) = c.stream {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Removes a domain and everything it held. Returns false if it did not exist.
    fn teardown_domain(&mut self, domid: DomId, kill: bool) -> bool {
        let Some(domain) = self.domains.get(&domid) else {
            return false;
        };
        if kill {
            if let Some((_, Some(pid))) = domain.primary {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let conns: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.domid == domid)
            .map(|(&id, _)| id)
            .collect();
        for conn in conns {
            self.close_conn(conn);
        }
        let ports: Vec<u32> = self
            .domains
            .get(&domid)
            .map(|d| d.ports.keys().copied().collect())
            .unwrap_or_default();
        for port in ports {
            self.close_port(domid, port);
        }
        self.mark_dead(domid);
        self.domains.remove(&domid);
        true
    }

    fn handle_domain_request(&mut self, conn: ConnId, domid: DomId, request: Request) -> Answer {
        match request {
            Request::OwnMemory => self.own_memory(domid),
            Request::AcquireCopySlot => self.acquire_copy_slot(conn),
            Request::OpenGrantCopy { domid: granter } => self.open_grant_copy(granter),
            Request::FinishDeferredEnd {
                domid: granter,
                gref,
            } => self.finish_deferred_end(granter, gref).into(),
            Request::MapGrants {
                granter,
                refs,
                writable,
            } => self.map_grants(conn, domid, granter, &refs, writable),
            Request::UnmapGrants { handle } => self.unmap_grants(conn, handle).into(),
            Request::CopyGrants { segments } => self.copy_grants(domid, segments).into(),
            Request::GrantPages {
                remote,
                count,
                writable,
            } => self.grant_pages(domid, remote, count, writable).into(),
            Request::EndAccess { refs } => self.end_access(domid, &refs).into(),
            Request::AllocUnbound { remote } => self.alloc_unbound(conn, domid, remote),
            Request::BindInterdomain {
                remote,
                remote_port,
            } => self.bind_interdomain(conn, domid, remote, remote_port),
            Request::Unbind { port } => self.unbind(conn, domid, port).into(),
            Request::DmOp { target, op } => self.dm_op(conn, domid, target, op).into(),
            Request::MapIoreqPages { target, id } => self.map_ioreq_pages(conn, domid, target, id),
            Request::MapForeign { target, gfns } => self.map_foreign(conn, domid, target, &gfns),
            Request::RestrictPrivcmd { domid: target } => {
                self.restrict_privcmd(conn, target).into()
            }
            Request::Translate { gfns } => match self.translate(domid, &gfns) {
                Some(frames) => Reply::Frames(frames).into(),
                None => error(libc::EOPNOTSUPP, "not an HVM guest").into(),
            },
            Request::RestrictEvtchn { domid: target } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.evtchn_restrict = Some(target);
                }
                Reply::Ok.into()
            }
            _ => error(libc::EINVAL, "unexpected request").into(),
        }
    }
}
