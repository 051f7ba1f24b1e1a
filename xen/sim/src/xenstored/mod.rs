//! A real xenstored for the simulated host: `xs_wire` over unix sockets, with the semantics of
//! the C xenstored that backends and toolstacks rely on — watches (including `@introduceDomain`
//! and `@releaseDomain` and the immediate first event), transactions with per-node conflict
//! detection (`EAGAIN`), owner-first node permissions, per-domain quotas, payload and path
//! limits.
//!
//! Each connection belongs to one domain, fixed when it is accepted: the public socket serves
//! dom0 (as the real daemon's socket does), and the hypervisor broker hands each domain its own
//! connections. A connection that sends an oversize or malformed frame, or stops reading its
//! watch events, is dropped; the daemon and every other connection carry on.

mod daemon;
pub mod tree;
mod txn;
mod watches;

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, Notify};
use xen_abi::DomId;
use xen_store::wire::{decode_header, Message, HEADER_SIZE};

pub use daemon::{ConnId, Stats};
use daemon::{Outcome, State};
pub use tree::Quotas;

/// Messages queued towards one client before it is considered stuck and dropped.
const OUTPUT_QUEUE_DEPTH: usize = 1024;

struct ConnHandle {
    output: mpsc::Sender<Message>,
    kill: Arc<Notify>,
}

struct Shared {
    state: Mutex<State>,
    handles: Mutex<std::collections::HashMap<ConnId, ConnHandle>>,
}

/// The daemon. Cheap to clone; clones share one store.
#[derive(Clone)]
pub struct Xenstored {
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Xenstored {
    /// A daemon with the given quotas for unprivileged domains.
    pub fn new(quotas: Quotas) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::new(quotas)),
                handles: Mutex::new(std::collections::HashMap::new()),
            }),
        }
    }

    /// Binds the dom0 socket at `path` (replacing a stale one) and serves it in the background.
    pub fn listen(&self, path: &Path) -> std::io::Result<tokio::task::JoinHandle<()>> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        let me = self.clone();
        Ok(tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => me.serve(stream, 0),
                    Err(e) => {
                        tracing::warn!("xenstored accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        }))
    }

    /// Serves one connection as domain `domid`.
    pub fn serve(&self, stream: UnixStream, domid: DomId) {
        let id = lock(&self.shared.state).add_conn(domid);
        let (tx, mut rx) = mpsc::channel::<Message>(OUTPUT_QUEUE_DEPTH);
        let kill = Arc::new(Notify::new());
        lock(&self.shared.handles).insert(
            id,
            ConnHandle {
                output: tx.clone(),
                kill: Arc::clone(&kill),
            },
        );
        let (mut reader, mut writer) = stream.into_split();
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if writer.write_all(&m.encode()).await.is_err() {
                    break;
                }
            }
        });
        let me = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                reason = me.read_requests(id, &mut reader, &tx) => {
                    if let Err(reason) = reason {
                        tracing::info!(target: "xenstored", conn = id, domid, "dropping connection: {reason}");
                    }
                }
                () = kill.notified() => {}
            }
            me.drop_conn(id);
        });
    }

    async fn read_requests(
        &self,
        id: ConnId,
        reader: &mut tokio::net::unix::OwnedReadHalf,
        output: &mpsc::Sender<Message>,
    ) -> Result<(), String> {
        loop {
            let mut head = [0u8; HEADER_SIZE];
            if reader.read_exact(&mut head).await.is_err() {
                return Ok(());
            }
            let header = decode_header(&head).map_err(|e| e.to_string())?;
            let mut payload = vec![0u8; header.len as usize];
            reader
                .read_exact(&mut payload)
                .await
                .map_err(|e| format!("short payload: {e}"))?;
            let request = Message {
                type_: header.type_,
                req_id: header.req_id,
                tx_id: header.tx_id,
                payload,
            };
            let outcome = lock(&self.shared.state).handle(id, request);
            let reply = outcome.reply.clone();
            self.deliver(outcome);
            if let Some(reply) = reply {
                if output.send(reply).await.is_err() {
                    return Ok(());
                }
            }
        }
    }

    /// Queues watch events and closes connections as an outcome asks.
    fn deliver(&self, outcome: Outcome) {
        let mut stuck = Vec::new();
        {
            let handles = lock(&self.shared.handles);
            for (conn, event) in outcome.events {
                if let Some(h) = handles.get(&conn) {
                    if h.output.try_send(event).is_err() {
                        stuck.push(conn);
                    }
                }
            }
            for conn in &outcome.close {
                if let Some(h) = handles.get(conn) {
                    h.kill.notify_one();
                }
            }
        }
        for conn in stuck {
            tracing::warn!(target: "xenstored", conn, "client does not read its watch events; dropping it");
            if let Some(h) = lock(&self.shared.handles).get(&conn) {
                h.kill.notify_one();
            }
        }
    }

    fn drop_conn(&self, id: ConnId) {
        lock(&self.shared.state).remove_conn(id);
        lock(&self.shared.handles).remove(&id);
    }

    /// Tells watchers a domain exists (`@introduceDomain`); the toolstack's `XS_INTRODUCE`.
    pub fn introduce(&self, domid: DomId) {
        let outcome = lock(&self.shared.state).introduce(domid);
        self.deliver(outcome);
    }

    /// Tells watchers a domain is gone (`@releaseDomain`) and drops its connections.
    pub fn release(&self, domid: DomId) {
        let outcome = lock(&self.shared.state).release(domid);
        self.deliver(outcome);
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        lock(&self.shared.state).stats
    }

    /// Nodes in the store.
    pub fn node_count(&self) -> usize {
        lock(&self.shared.state).tree.len()
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        lock(&self.shared.state).conns.len()
    }

    /// Runs one request as dom0, synchronously, without a client: the simulated toolstack's
    /// own writes (domain directories at create, their removal at destroy).
    pub fn dom0_request(
        &self,
        type_: u32,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, xen_store::XsErrno> {
        let outcome = {
            let mut state = lock(&self.shared.state);
            let conn = state.toolstack_conn();
            state.handle(
                conn,
                Message {
                    type_,
                    req_id: 0,
                    tx_id: 0,
                    payload,
                },
            )
        };
        let reply = outcome.reply.clone();
        self.deliver(outcome);
        match reply {
            Some(m) if m.type_ == xen_abi::xs_wire::msg::ERROR => {
                let name = xen_store::wire::split_fields(&m.payload)
                    .first()
                    .and_then(|n| {
                        std::str::from_utf8(n)
                            .ok()
                            .and_then(xen_store::XsErrno::from_name)
                    });
                Err(name.unwrap_or(xen_store::XsErrno::EIO))
            }
            Some(m) => Ok(m.payload),
            None => Err(xen_store::XsErrno::EIO),
        }
    }

    /// A dom0 client connected through an in-process socket pair (for the host's toolstack).
    pub fn dom0_client(&self) -> std::io::Result<xen_store::Xs> {
        self.client_for(0)
    }

    /// A client connected as `domid` through an in-process socket pair.
    pub fn client_for(&self, domid: DomId) -> std::io::Result<xen_store::Xs> {
        let (ours, theirs) = UnixStream::pair()?;
        self.serve(ours, domid);
        Ok(xen_store::Xs::from_stream(theirs))
    }
}
