//! The daemon's state and the handling of one request: everything between a decoded message
//! and its reply plus the watch events it causes. Pure with respect to I/O.

use std::collections::{BTreeSet, HashMap};

use xen_abi::xs_wire::{msg, XENSTORE_ABS_PATH_MAX, XENSTORE_PAYLOAD_MAX};
use xen_abi::{DomId, DOMID_FIRST_RESERVED};
use xen_store::perms::Perm;
use xen_store::wire::{join_fields, split_fields, Message};
use xen_store::{path, XsErrno};

use super::tree::{self, Caller, Change, Nodes, Quotas, Tree};
use super::txn::{Transaction, TxView};
use super::watches::WatchReg;

/// Identifies a client connection.
pub type ConnId = u64;

/// One connection's state.
#[derive(Debug)]
pub struct Conn {
    /// The connection's domain (fixed at accept: it cannot act as another).
    pub domid: DomId,
    /// Its watches.
    pub watches: Vec<WatchReg>,
    /// Its open transactions.
    pub transactions: HashMap<u32, Transaction>,
}

/// What handling one request produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The reply to the requester.
    pub reply: Option<Message>,
    /// Watch events for connections (possibly including the requester).
    pub events: Vec<(ConnId, Message)>,
    /// Connections to close (a released domain's).
    pub close: Vec<ConnId>,
}

/// Counters for the benchmark and for people.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Requests handled.
    pub requests: u64,
    /// Requests refused with an error.
    pub errors: u64,
    /// Watch events queued.
    pub watch_events: u64,
}

/// The whole daemon state.
#[derive(Debug)]
pub struct State {
    /// The nodes.
    pub tree: Tree,
    /// Limits for unprivileged domains.
    pub quotas: Quotas,
    /// Connections.
    pub conns: HashMap<ConnId, Conn>,
    /// Introduced domains.
    pub introduced: BTreeSet<DomId>,
    /// `SET_TARGET` grants: domain → the domain it may act for.
    pub targets: HashMap<DomId, DomId>,
    /// Features set per domain with `SET_FEATURE`.
    pub features: HashMap<DomId, u32>,
    /// Counters.
    pub stats: Stats,
    next_conn: ConnId,
    next_tx: u32,
    toolstack: Option<ConnId>,
}

fn ok() -> Vec<u8> {
    join_fields([&b"OK"[..]])
}

impl State {
    /// A fresh store with the standard top-level nodes.
    pub fn new(quotas: Quotas) -> Self {
        Self {
            tree: Tree::default(),
            quotas,
            conns: HashMap::new(),
            introduced: BTreeSet::new(),
            targets: HashMap::new(),
            features: HashMap::new(),
            stats: Stats::default(),
            next_conn: 1,
            next_tx: 1,
            toolstack: None,
        }
    }

    /// Registers a connection of `domid`.
    pub fn add_conn(&mut self, domid: DomId) -> ConnId {
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(
            id,
            Conn {
                domid,
                watches: Vec::new(),
                transactions: HashMap::new(),
            },
        );
        id
    }

    /// The daemon's own dom0 connection for toolstack requests (created on first use).
    pub fn toolstack_conn(&mut self) -> ConnId {
        if let Some(id) = self.toolstack {
            return id;
        }
        let id = self.add_conn(0);
        self.toolstack = Some(id);
        id
    }

    /// Forgets a connection (its watches and transactions go with it).
    pub fn remove_conn(&mut self, id: ConnId) {
        self.conns.remove(&id);
    }

    fn caller(&self, domid: DomId) -> Caller {
        Caller {
            domid,
            target: self.targets.get(&domid).copied(),
        }
    }

    /// Marks a domain introduced and fires `@introduceDomain`.
    pub fn introduce(&mut self, domid: DomId) -> Outcome {
        let mut out = Outcome::default();
        if self.introduced.insert(domid) {
            self.fire(&[self.special_change("@introduceDomain")], &mut out);
        }
        out
    }

    /// Releases a domain: fires `@releaseDomain` and closes the domain's connections.
    pub fn release(&mut self, domid: DomId) -> Outcome {
        let mut out = Outcome::default();
        if self.introduced.remove(&domid) {
            self.targets.remove(&domid);
            self.features.remove(&domid);
            out.close = self
                .conns
                .iter()
                .filter(|(_, c)| c.domid == domid)
                .map(|(id, _)| *id)
                .collect();
            for id in &out.close {
                self.conns.remove(id);
            }
            self.fire(&[self.special_change("@releaseDomain")], &mut out);
        }
        out
    }

    fn special_change(&self, name: &str) -> Change {
        let perms = self
            .tree
            .peek(name)
            .map(|n| n.perms.clone())
            .unwrap_or_default();
        Change {
            path: name.to_string(),
            exact: true,
            perms,
        }
    }

    /// Queues watch events for `changes`.
    fn fire(&mut self, changes: &[Change], out: &mut Outcome) {
        for (&id, conn) in &self.conns {
            let caller = Caller {
                domid: conn.domid,
                target: self.targets.get(&conn.domid).copied(),
            };
            for w in &conn.watches {
                for change in changes {
                    if let Some(path) = w.event_path(caller, change) {
                        let payload = join_fields([path.as_bytes(), w.token.as_bytes()]);
                        out.events.push((
                            id,
                            Message {
                                type_: msg::WATCH_EVENT,
                                req_id: 0,
                                tx_id: 0,
                                payload,
                            },
                        ));
                    }
                }
            }
        }
        self.stats.watch_events += out.events.len() as u64;
    }

    /// Handles one request of connection `id`.
    pub fn handle(&mut self, id: ConnId, request: Message) -> Outcome {
        self.stats.requests += 1;
        let mut out = Outcome::default();
        let (type_, req_id, tx_id) = (request.type_, request.req_id, request.tx_id);
        let result = match self.conns.get(&id).map(|c| c.domid) {
            Some(domid) => self.dispatch(id, domid, &request, &mut out),
            None => Err(XsErrno::EIO),
        };
        let (reply_type, payload) = match result {
            Ok(payload) => (type_, payload),
            Err(errno) => {
                self.stats.errors += 1;
                (msg::ERROR, join_fields([errno.name().as_bytes()]))
            }
        };
        out.reply = Some(Message {
            type_: reply_type,
            req_id,
            tx_id,
            payload,
        });
        out
    }

    /// Resolves a request path: relative paths are under the caller's domain path.
    fn resolve(domid: DomId, raw: &[u8]) -> Result<(String, Option<String>), XsErrno> {
        let text = std::str::from_utf8(raw).map_err(|_| XsErrno::EINVAL)?;
        if path::check(text).is_some() {
            return Err(XsErrno::EINVAL);
        }
        if text.starts_with('/') || text.starts_with('@') {
            return Ok((text.to_string(), None));
        }
        let base = path::domain_path(domid);
        let full = format!("{base}/{text}");
        if full.len() > XENSTORE_ABS_PATH_MAX {
            return Err(XsErrno::EINVAL);
        }
        Ok((full, Some(base)))
    }

    fn dispatch(
        &mut self,
        id: ConnId,
        domid: DomId,
        req: &Message,
        out: &mut Outcome,
    ) -> Result<Vec<u8>, XsErrno> {
        let caller = self.caller(domid);
        let fields = split_fields(&req.payload);
        let arg = |i: usize| fields.get(i).copied().ok_or(XsErrno::EINVAL);
        let privileged = || {
            if caller.privileged() {
                Ok(())
            } else {
                Err(XsErrno::EACCES)
            }
        };
        let domid_arg = |i: usize| -> Result<DomId, XsErrno> {
            let text = std::str::from_utf8(arg(i)?).map_err(|_| XsErrno::EINVAL)?;
            text.parse().map_err(|_| XsErrno::EINVAL)
        };
        match req.type_ {
            msg::READ
            | msg::DIRECTORY
            | msg::DIRECTORY_PART
            | msg::GET_PERMS
            | msg::WRITE
            | msg::MKDIR
            | msg::RM
            | msg::SET_PERMS => self.node_op(id, caller, req, out),
            msg::WATCH => {
                let (path, relative_to) = Self::resolve(domid, arg(0)?)?;
                let token = String::from_utf8(arg(1)?.to_vec()).map_err(|_| XsErrno::EINVAL)?;
                let depth = match fields.get(2) {
                    Some(d) => Some(
                        std::str::from_utf8(d)
                            .ok()
                            .and_then(|s| s.parse().ok())
                            .ok_or(XsErrno::EINVAL)?,
                    ),
                    None => None,
                };
                let quota = self.quotas.watches;
                let conn = self.conns.get_mut(&id).ok_or(XsErrno::EIO)?;
                if conn
                    .watches
                    .iter()
                    .any(|w| w.path == path && w.token == token)
                {
                    return Err(XsErrno::EEXIST);
                }
                if !caller.privileged() && conn.watches.len() >= quota {
                    return Err(XsErrno::E2BIG);
                }
                let reg = WatchReg {
                    path: path.clone(),
                    token: token.clone(),
                    relative_to,
                    depth,
                };
                // The immediate first event, always, whether or not the node exists.
                let payload = join_fields([reg.reported(&path).as_bytes(), token.as_bytes()]);
                conn.watches.push(reg);
                out.events.push((
                    id,
                    Message {
                        type_: msg::WATCH_EVENT,
                        req_id: 0,
                        tx_id: 0,
                        payload,
                    },
                ));
                Ok(ok())
            }
            msg::UNWATCH => {
                let (path, _) = Self::resolve(domid, arg(0)?)?;
                let token = arg(1)?;
                let conn = self.conns.get_mut(&id).ok_or(XsErrno::EIO)?;
                let before = conn.watches.len();
                conn.watches
                    .retain(|w| !(w.path == path && w.token.as_bytes() == token));
                if conn.watches.len() == before {
                    return Err(XsErrno::ENOENT);
                }
                Ok(ok())
            }
            msg::RESET_WATCHES => {
                let conn = self.conns.get_mut(&id).ok_or(XsErrno::EIO)?;
                conn.watches.clear();
                conn.transactions.clear();
                Ok(ok())
            }
            msg::TRANSACTION_START => {
                if req.tx_id != 0 {
                    return Err(XsErrno::EBUSY);
                }
                let quota = self.quotas.transactions;
                let tx_id = self.next_tx;
                let conn = self.conns.get_mut(&id).ok_or(XsErrno::EIO)?;
                if !caller.privileged() && conn.transactions.len() >= quota {
                    return Err(XsErrno::ENOSPC);
                }
                conn.transactions.insert(tx_id, Transaction::default());
                self.next_tx = self.next_tx.wrapping_add(1).max(1);
                Ok(join_fields([tx_id.to_string().as_bytes()]))
            }
            msg::TRANSACTION_END => {
                let commit = match arg(0)? {
                    b"T" => true,
                    b"F" => false,
                    _ => return Err(XsErrno::EINVAL),
                };
                let conn = self.conns.get_mut(&id).ok_or(XsErrno::EIO)?;
                let tx = conn
                    .transactions
                    .remove(&req.tx_id)
                    .ok_or(XsErrno::ENOENT)?;
                if commit {
                    let changes = tx.commit(&mut self.tree)?;
                    self.fire(&changes, out);
                }
                Ok(ok())
            }
            msg::GET_DOMAIN_PATH => Ok(join_fields([path::domain_path(domid_arg(0)?).as_bytes()])),
            msg::IS_DOMAIN_INTRODUCED => {
                let d = domid_arg(0)?;
                let yes = d == 0 || self.introduced.contains(&d);
                Ok(join_fields([if yes { &b"T"[..] } else { &b"F"[..] }]))
            }
            msg::INTRODUCE => {
                privileged()?;
                let d = domid_arg(0)?;
                if d == 0 || d >= DOMID_FIRST_RESERVED {
                    return Err(XsErrno::EINVAL);
                }
                arg(1)?;
                arg(2)?;
                let o = self.introduce(d);
                out.events.extend(o.events);
                Ok(ok())
            }
            msg::RELEASE | msg::RESUME => {
                privileged()?;
                let d = domid_arg(0)?;
                if !self.introduced.contains(&d) {
                    return Err(XsErrno::ENOENT);
                }
                if req.type_ == msg::RELEASE {
                    let o = self.release(d);
                    out.events.extend(o.events);
                    out.close.extend(o.close);
                }
                Ok(ok())
            }
            msg::SET_TARGET => {
                privileged()?;
                let (d, t) = (domid_arg(0)?, domid_arg(1)?);
                self.targets.insert(d, t);
                Ok(ok())
            }
            msg::CONTROL => {
                privileged()?;
                match arg(0)? {
                    b"print" => {
                        let text = fields
                            .get(1)
                            .map(|t| String::from_utf8_lossy(t).into_owned())
                            .unwrap_or_default();
                        tracing::info!(target: "xenstored", "control print: {text}");
                        Ok(ok())
                    }
                    b"log" => Ok(ok()),
                    _ => Err(XsErrno::EINVAL),
                }
            }
            msg::GET_FEATURE => {
                let d = if fields.is_empty() {
                    domid
                } else {
                    domid_arg(0)?
                };
                Ok(join_fields([self
                    .features
                    .get(&d)
                    .copied()
                    .unwrap_or(0)
                    .to_string()
                    .as_bytes()]))
            }
            msg::SET_FEATURE => {
                privileged()?;
                let d = domid_arg(0)?;
                let v = std::str::from_utf8(arg(1)?)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or(XsErrno::EINVAL)?;
                self.features.insert(d, v);
                Ok(ok())
            }
            msg::GET_QUOTA => {
                let q = self.quotas;
                let pairs = [
                    ("nodes", q.nodes),
                    ("node-size", q.node_size),
                    ("watches", q.watches),
                    ("transactions", q.transactions),
                    ("permissions", q.permissions),
                ];
                let texts: Vec<String> = pairs
                    .iter()
                    .flat_map(|(n, v)| [n.to_string(), v.to_string()])
                    .collect();
                Ok(join_fields(texts.iter().map(|t| t.as_bytes())))
            }
            msg::SET_QUOTA => {
                privileged()?;
                let name = arg(0)?;
                let value: usize = std::str::from_utf8(arg(1)?)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or(XsErrno::EINVAL)?;
                let q = &mut self.quotas;
                let slot = match name {
                    b"nodes" => &mut q.nodes,
                    b"node-size" => &mut q.node_size,
                    b"watches" => &mut q.watches,
                    b"transactions" => &mut q.transactions,
                    b"permissions" => &mut q.permissions,
                    _ => return Err(XsErrno::EINVAL),
                };
                *slot = value;
                Ok(ok())
            }
            _ => Err(XsErrno::EINVAL),
        }
    }

    /// Operations on nodes, inside or outside a transaction.
    fn node_op(
        &mut self,
        id: ConnId,
        caller: Caller,
        req: &Message,
        out: &mut Outcome,
    ) -> Result<Vec<u8>, XsErrno> {
        // The path is everything up to the first NUL; WRITE's value is everything after it.
        let (raw_path, rest) = match req.payload.iter().position(|&b| b == 0) {
            Some(i) => (
                req.payload.get(..i).unwrap_or_default(),
                req.payload.get(i + 1..).unwrap_or_default(),
            ),
            None if req.type_ == msg::WRITE => return Err(XsErrno::EINVAL),
            None => (req.payload.as_slice(), &[][..]),
        };
        let (path, _) = Self::resolve(caller.domid, raw_path)?;
        let quotas = self.quotas;
        let mut changes = Vec::new();
        let result = if req.tx_id == 0 {
            node_request(
                &mut self.tree,
                caller,
                &quotas,
                req.type_,
                &path,
                rest,
                &mut changes,
            )
        } else {
            let conn = self.conns.get_mut(&id).ok_or(XsErrno::EIO)?;
            let tx = conn
                .transactions
                .get_mut(&req.tx_id)
                .ok_or(XsErrno::ENOENT)?;
            let mut view = TxView {
                live: &self.tree,
                tx,
            };
            let r = node_request(
                &mut view,
                caller,
                &quotas,
                req.type_,
                &path,
                rest,
                &mut changes,
            );
            view.tx.changes.append(&mut changes);
            r
        };
        if !changes.is_empty() {
            self.fire(&changes, out);
        }
        result
    }
}

fn node_request(
    nodes: &mut impl Nodes,
    caller: Caller,
    quotas: &Quotas,
    type_: u32,
    path: &str,
    rest: &[u8],
    changes: &mut Vec<Change>,
) -> Result<Vec<u8>, XsErrno> {
    match type_ {
        msg::READ => tree::read(nodes, caller, path),
        msg::DIRECTORY => {
            let children = tree::directory(nodes, caller, path)?;
            let payload = join_fields(children.iter().map(|c| c.as_bytes()));
            if payload.len() > XENSTORE_PAYLOAD_MAX {
                return Err(XsErrno::E2BIG);
            }
            Ok(payload)
        }
        msg::DIRECTORY_PART => {
            let offset: usize = split_fields(rest)
                .first()
                .and_then(|o| std::str::from_utf8(o).ok())
                .and_then(|o| o.parse().ok())
                .ok_or(XsErrno::EINVAL)?;
            let generation = nodes.get(path).map(|n| n.generation).unwrap_or(0);
            let all = join_fields(
                tree::directory(nodes, caller, path)?
                    .iter()
                    .map(|c| c.as_bytes()),
            );
            let mut payload = join_fields([generation.to_string().as_bytes()]);
            let tail = all.get(offset..).ok_or(XsErrno::EINVAL)?;
            let room = XENSTORE_PAYLOAD_MAX - payload.len() - 1;
            let mut taken = 0;
            for entry in tail.split_inclusive(|&b| b == 0) {
                if taken + entry.len() > room {
                    break;
                }
                payload.extend_from_slice(entry);
                taken += entry.len();
            }
            if taken == tail.len() {
                payload.push(0);
            }
            Ok(payload)
        }
        msg::GET_PERMS => {
            let perms = tree::get_perms(nodes, caller, path)?;
            let texts: Vec<String> = perms.iter().map(Perm::to_string).collect();
            Ok(join_fields(texts.iter().map(|t| t.as_bytes())))
        }
        msg::WRITE => tree::write(nodes, caller, quotas, path, rest, changes).map(|()| ok()),
        msg::MKDIR => tree::mkdir(nodes, caller, quotas, path, changes).map(|()| ok()),
        msg::RM => tree::rm(nodes, caller, path, changes).map(|()| ok()),
        msg::SET_PERMS => {
            let perms = split_fields(rest)
                .into_iter()
                .map(|f| Perm::parse(f).ok_or(XsErrno::EINVAL))
                .collect::<Result<Vec<_>, _>>()?;
            tree::set_perms(nodes, caller, quotas, path, perms, changes).map(|()| ok())
        }
        _ => Err(XsErrno::EINVAL),
    }
}
