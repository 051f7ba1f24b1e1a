//! The async xenstore client.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::UnixStream;
use tokio::sync::oneshot;
use xen_abi::xs_wire::msg;
use xen_abi::DomId;

use crate::error::{Error, XsErrno};
use crate::perms::Perm;
use crate::transport::{read_device, read_unix, Writer};
use crate::watch::{Watch, WatchEvent, WatchSlot};
use crate::wire::{join_fields, split_fields, Message};
use crate::{path, Result, XenbusState};

/// Attempts of [`Xs::transaction`] before it gives up on a conflicting transaction.
pub const MAX_TRANSACTION_ATTEMPTS: u32 = 32;

/// Default xenstored socket when `XENSTORED_PATH` is not set.
const DEFAULT_SOCKET: &str = "/var/run/xenstored/socket";
/// The xenbus device of a domain that does not run xenstored.
const XENBUS_DEVICE: &str = "/dev/xen/xenbus";

pub(crate) struct Inner {
    writer: tokio::sync::Mutex<Writer>,
    /// Held from sending a request until its reply, on the xenbus device only: Linux handles a
    /// `XS_WATCH` written to the device synchronously, holding the file's message mutex while
    /// it waits for xenstored, and its xenbus reader thread needs that same mutex to deliver
    /// the reply to any earlier request of the file; with two requests in flight both sleep
    /// forever (the backend hangs in `xs_watch`). libxenstore never has two in flight either.
    one_at_a_time: Option<tokio::sync::Mutex<()>>,
    pending: Mutex<HashMap<u32, oneshot::Sender<Message>>>,
    watches: Mutex<HashMap<String, WatchSlot>>,
    next_req: AtomicU32,
    next_token: AtomicU64,
    closed: AtomicBool,
}

impl Inner {
    fn dispatch(&self, message: Message) {
        if message.type_ == msg::WATCH_EVENT {
            let fields = split_fields(&message.payload);
            let (Some(path), Some(token)) = (fields.first(), fields.get(1)) else {
                tracing::warn!("malformed watch event from xenstored ignored");
                return;
            };
            let event = WatchEvent {
                path: String::from_utf8_lossy(path).into_owned(),
                token: String::from_utf8_lossy(token).into_owned(),
            };
            if let Some(slot) = lock(&self.watches).get(&event.token) {
                slot.deliver(event);
            }
            return;
        }
        match lock(&self.pending).remove(&message.req_id) {
            Some(waiter) => {
                let _ = waiter.send(message);
            }
            None => tracing::warn!(
                req_id = message.req_id,
                "xenstore reply to no request ignored"
            ),
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        lock(&self.pending).clear();
        lock(&self.watches).clear();
    }

    /// Unregisters a dropped watch and tells xenstored, if a runtime is there to do it.
    pub(crate) fn forget_watch(self: &Arc<Self>, wpath: &str, token: &str) {
        if lock(&self.watches).remove(token).is_none() || self.closed.load(Ordering::Acquire) {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let xs = Xs {
                inner: Arc::clone(self),
                tx_id: 0,
            };
            let payload = join_fields([wpath.as_bytes(), token.as_bytes()]);
            runtime.spawn(async move {
                let _ = xs.request(msg::UNWATCH, "unwatch", "", payload).await;
            });
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A xenstore connection, or a transaction on one (see [`Xs::transaction`]). Cheap to clone;
/// all clones share the connection.
#[derive(Clone)]
pub struct Xs {
    inner: Arc<Inner>,
    tx_id: u32,
}

impl Xs {
    /// Connects the way libxenstore does: the socket named by `XENSTORED_PATH`, else the
    /// default xenstored socket, else `/dev/xen/xenbus`.
    pub async fn open() -> Result<Self> {
        if let Some(p) = std::env::var_os("XENSTORED_PATH") {
            return Self::connect_unix(Path::new(&p)).await;
        }
        match Self::connect_unix(Path::new(DEFAULT_SOCKET)).await {
            Ok(xs) => Ok(xs),
            Err(_) => Self::open_device(Path::new(XENBUS_DEVICE)),
        }
    }

    /// Connects to a xenstored unix socket.
    pub async fn connect_unix(socket: &Path) -> Result<Self> {
        let stream = UnixStream::connect(socket).await.map_err(|e| Error::Io {
            target: socket.display().to_string(),
            source: e,
        })?;
        Ok(Self::from_stream(stream))
    }

    /// Runs the client over an already connected stream.
    pub fn from_stream(stream: UnixStream) -> Self {
        let (reader, writer) = stream.into_split();
        let inner = Self::new_inner(Writer::Unix(writer), false);
        let reader_inner = Arc::downgrade(&inner);
        tokio::spawn(async move {
            let result = read_unix(reader, |m| {
                if let Some(i) = reader_inner.upgrade() {
                    i.dispatch(m)
                }
            })
            .await;
            if let Err(e) = result {
                tracing::warn!("xenstore connection failed: {e}");
            }
            if let Some(i) = reader_inner.upgrade() {
                i.close();
            }
        });
        Self { inner, tx_id: 0 }
    }

    /// Opens the xenbus character device (`/dev/xen/xenbus`) of a domain.
    pub fn open_device(device: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(device)
            .map_err(|e| Error::Io {
                target: device.display().to_string(),
                source: e,
            })?;
        let file = Arc::new(file);
        let inner = Self::new_inner(Writer::Device(Arc::clone(&file)), true);
        let reader_inner = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("xenbus-reader".into())
            .spawn(move || {
                let result = read_device(&file, |m| {
                    if let Some(i) = reader_inner.upgrade() {
                        i.dispatch(m)
                    }
                });
                if let Err(e) = result {
                    tracing::warn!("xenbus device failed: {e}");
                }
                if let Some(i) = reader_inner.upgrade() {
                    i.close();
                }
            })
            .map_err(|e| Error::Io {
                target: device.display().to_string(),
                source: e,
            })?;
        Ok(Self { inner, tx_id: 0 })
    }

    fn new_inner(writer: Writer, one_at_a_time: bool) -> Arc<Inner> {
        Arc::new(Inner {
            writer: tokio::sync::Mutex::new(writer),
            one_at_a_time: one_at_a_time.then(|| tokio::sync::Mutex::new(())),
            pending: Mutex::new(HashMap::new()),
            watches: Mutex::new(HashMap::new()),
            next_req: AtomicU32::new(1),
            next_token: AtomicU64::new(1),
            closed: AtomicBool::new(false),
        })
    }

    /// The transaction id of this handle (0 outside a transaction).
    pub fn transaction_id(&self) -> u32 {
        self.tx_id
    }

    /// Sends one request and waits for its reply; `XS_ERROR` replies become [`Error::Xs`].
    async fn request(
        &self,
        type_: u32,
        op: &'static str,
        path: &str,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let _turn = match &self.inner.one_at_a_time {
            Some(turn) => Some(turn.lock().await),
            None => None,
        };
        let req_id = self.inner.next_req.fetch_add(1, Ordering::Relaxed);
        let message = Message::new(type_, req_id, self.tx_id, payload)?;
        let (tx, rx) = oneshot::channel();
        lock(&self.inner.pending).insert(req_id, tx);
        let sent = self.inner.writer.lock().await.send(message.encode()).await;
        if let Err(e) = sent {
            lock(&self.inner.pending).remove(&req_id);
            return Err(Error::Io {
                target: "xenstore".into(),
                source: e,
            });
        }
        let reply = rx.await.map_err(|_| Error::Closed)?;
        if reply.type_ == msg::ERROR {
            let name = split_fields(&reply.payload)
                .first()
                .map(|n| String::from_utf8_lossy(n).into_owned());
            let errno = name
                .as_deref()
                .and_then(XsErrno::from_name)
                .unwrap_or(XsErrno::EIO);
            return Err(Error::Xs {
                errno,
                op,
                path: path.to_string(),
            });
        }
        if reply.type_ != type_ {
            return Err(Error::Protocol(format!(
                "reply of type {} to a request of type {type_}",
                reply.type_
            )));
        }
        Ok(reply.payload)
    }

    async fn path_request(&self, type_: u32, op: &'static str, p: &str) -> Result<Vec<u8>> {
        path::validate(p)?;
        self.request(type_, op, p, join_fields([p.as_bytes()]))
            .await
    }

    /// `XS_READ`: the value of a node.
    pub async fn read(&self, p: &str) -> Result<Vec<u8>> {
        self.path_request(msg::READ, "read", p).await
    }

    /// Reads a node as UTF-8 text (lossy).
    pub async fn read_string(&self, p: &str) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.read(p).await?).into_owned())
    }

    /// Reads a node, with `None` for a missing one.
    pub async fn read_opt(&self, p: &str) -> Result<Option<Vec<u8>>> {
        match self.read(p).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads a decimal unsigned number; `None` if missing or not a number.
    pub async fn read_u64(&self, p: &str) -> Result<Option<u64>> {
        Ok(self.read_opt(p).await?.and_then(|v| {
            std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.trim().parse().ok())
        }))
    }

    /// Reads a XenBus `state` node; missing or malformed reads as `Unknown`.
    pub async fn read_state(&self, p: &str) -> Result<XenbusState> {
        Ok(self
            .read_opt(p)
            .await?
            .and_then(|v| XenbusState::parse(&v))
            .unwrap_or(XenbusState::Unknown))
    }

    /// Waits until the XenBus `state` node at `p` satisfies `pred` (checked at once and on every
    /// change); `None` if `timeout` passes first.
    pub async fn wait_state(
        &self,
        p: &str,
        timeout: std::time::Duration,
        pred: impl Fn(XenbusState) -> bool,
    ) -> Result<Option<XenbusState>> {
        let mut watch = self.watch(p).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let s = self.read_state(p).await?;
            if pred(s) {
                return Ok(Some(s));
            }
            if tokio::time::timeout_at(deadline, watch.next())
                .await
                .is_err()
            {
                return Ok(None);
            }
        }
    }

    /// Whether a node exists.
    pub async fn exists(&self, p: &str) -> Result<bool> {
        Ok(self.read_opt(p).await?.is_some())
    }

    /// `XS_WRITE`: creates or replaces a node (and its missing parents).
    pub async fn write(&self, p: &str, value: &[u8]) -> Result<()> {
        path::validate(p)?;
        let mut payload = join_fields([p.as_bytes()]);
        payload.extend_from_slice(value);
        self.request(msg::WRITE, "write", p, payload)
            .await
            .map(drop)
    }

    /// Writes a XenBus state.
    pub async fn write_state(&self, p: &str, state: XenbusState) -> Result<()> {
        self.write(p, state.as_text().as_bytes()).await
    }

    /// `XS_MKDIR`.
    pub async fn mkdir(&self, p: &str) -> Result<()> {
        self.path_request(msg::MKDIR, "mkdir", p).await.map(drop)
    }

    /// `XS_RM`: removes a node and everything below it.
    pub async fn rm(&self, p: &str) -> Result<()> {
        self.path_request(msg::RM, "rm", p).await.map(drop)
    }

    /// `XS_DIRECTORY`: the children's names, falling back to `XS_DIRECTORY_PART` for
    /// directories too large for one reply.
    pub async fn directory(&self, p: &str) -> Result<Vec<String>> {
        match self.path_request(msg::DIRECTORY, "directory", p).await {
            Ok(payload) => Ok(split_fields(&payload)
                .into_iter()
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect()),
            Err(e) if e.errno() == Some(XsErrno::E2BIG) => self.directory_parts(p).await,
            Err(e) => Err(e),
        }
    }

    async fn directory_parts(&self, p: &str) -> Result<Vec<String>> {
        'restart: for _ in 0..MAX_TRANSACTION_ATTEMPTS {
            let mut children = Vec::new();
            let mut generation: Option<Vec<u8>> = None;
            loop {
                let offset = children
                    .iter()
                    .map(|c: &String| c.len() + 1)
                    .sum::<usize>()
                    .to_string();
                let payload = join_fields([p.as_bytes(), offset.as_bytes()]);
                let reply = self
                    .request(msg::DIRECTORY_PART, "directory", p, payload)
                    .await?;
                // `<generation>|<child>|*`, with one more NUL after the last part.
                let finished = reply.ends_with(&[0, 0]);
                let gen_end = reply.iter().position(|&b| b == 0).unwrap_or(reply.len());
                let gen = reply.get(..gen_end).unwrap_or_default().to_vec();
                if generation.as_ref().is_some_and(|g| *g != gen) {
                    continue 'restart;
                }
                generation = Some(gen);
                let body = reply.get(gen_end + 1..).unwrap_or_default();
                let before = children.len();
                children.extend(
                    split_fields(body)
                        .into_iter()
                        .filter(|c| !c.is_empty())
                        .map(|c| String::from_utf8_lossy(c).into_owned()),
                );
                if finished || children.len() == before {
                    return Ok(children);
                }
            }
        }
        Err(Error::TooManyRetries(MAX_TRANSACTION_ATTEMPTS))
    }

    /// `XS_GET_PERMS`.
    pub async fn get_perms(&self, p: &str) -> Result<Vec<Perm>> {
        let payload = self.path_request(msg::GET_PERMS, "get-perms", p).await?;
        split_fields(&payload)
            .into_iter()
            .map(|f| Perm::parse(f).ok_or_else(|| Error::Protocol("malformed permission".into())))
            .collect()
    }

    /// `XS_SET_PERMS`: the first entry is the owner and everyone else's access.
    pub async fn set_perms(&self, p: &str, perms: &[Perm]) -> Result<()> {
        path::validate(p)?;
        let texts: Vec<String> = perms.iter().map(Perm::to_string).collect();
        let payload =
            join_fields(std::iter::once(p.as_bytes()).chain(texts.iter().map(|t| t.as_bytes())));
        self.request(msg::SET_PERMS, "set-perms", p, payload)
            .await
            .map(drop)
    }

    /// `XS_WATCH`: registers a watch on `p` and everything below it. xenstored fires it once
    /// at once; that first event is delivered like any other.
    pub async fn watch(&self, p: &str) -> Result<Watch> {
        path::validate(p)?;
        let token = format!(
            "xsw{}",
            self.inner.next_token.fetch_add(1, Ordering::Relaxed)
        );
        let (watch, slot) = Watch::new(&self.inner, p.to_string(), token.clone());
        lock(&self.inner.watches).insert(token.clone(), slot);
        let payload = join_fields([p.as_bytes(), token.as_bytes()]);
        // Watches are per connection, never per transaction.
        let conn = Xs {
            inner: Arc::clone(&self.inner),
            tx_id: 0,
        };
        if let Err(e) = conn.request(msg::WATCH, "watch", p, payload).await {
            lock(&self.inner.watches).remove(&token);
            return Err(e);
        }
        Ok(watch)
    }

    /// `XS_RESET_WATCHES`: drops every watch of this connection on the server.
    pub async fn reset_watches(&self) -> Result<()> {
        self.request(
            msg::RESET_WATCHES,
            "reset-watches",
            "",
            join_fields([&b""[..]]),
        )
        .await
        .map(drop)
    }

    /// `XS_TRANSACTION_START`: a handle whose operations run in a new transaction.
    pub async fn transaction_start(&self) -> Result<Xs> {
        let reply = self
            .request(
                msg::TRANSACTION_START,
                "transaction-start",
                "",
                join_fields([&b""[..]]),
            )
            .await?;
        let text = split_fields(&reply)
            .first()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .unwrap_or_default();
        let tx_id = text
            .trim()
            .parse()
            .map_err(|_| Error::Protocol(format!("bad transaction id {text:?}")))?;
        Ok(Xs {
            inner: Arc::clone(&self.inner),
            tx_id,
        })
    }

    /// `XS_TRANSACTION_END`: commits (`T`) or aborts (`F`) this transaction. A commit that
    /// conflicts fails with `EAGAIN`.
    pub async fn transaction_end(&self, commit: bool) -> Result<()> {
        let flag: &[u8] = if commit { b"T" } else { b"F" };
        self.request(
            msg::TRANSACTION_END,
            "transaction-end",
            "",
            join_fields([flag]),
        )
        .await
        .map(drop)
    }

    /// Runs `body` in a transaction and commits it, retrying the whole body when the commit
    /// conflicts (`EAGAIN`). An error from `body` aborts the transaction.
    pub async fn transaction<T, F, Fut>(&self, mut body: F) -> Result<T>
    where
        F: FnMut(Xs) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        for _ in 0..MAX_TRANSACTION_ATTEMPTS {
            let tx = self.transaction_start().await?;
            match body(tx.clone()).await {
                Ok(value) => match tx.transaction_end(true).await {
                    Ok(()) => return Ok(value),
                    Err(e) if e.is_again() => continue,
                    Err(e) => return Err(e),
                },
                Err(e) => {
                    let _ = tx.transaction_end(false).await;
                    if e.is_again() {
                        continue;
                    }
                    return Err(e);
                }
            }
        }
        Err(Error::TooManyRetries(MAX_TRANSACTION_ATTEMPTS))
    }

    /// `XS_GET_DOMAIN_PATH`.
    pub async fn get_domain_path(&self, domid: DomId) -> Result<String> {
        let reply = self
            .request(
                msg::GET_DOMAIN_PATH,
                "get-domain-path",
                "",
                join_fields([domid.to_string().as_bytes()]),
            )
            .await?;
        Ok(split_fields(&reply)
            .first()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .unwrap_or_default())
    }

    /// `XS_INTRODUCE`: tells xenstored about a new domain's store page and port (dom0 only).
    pub async fn introduce(&self, domid: DomId, mfn: u64, port: u32) -> Result<()> {
        let (d, m, p) = (domid.to_string(), mfn.to_string(), port.to_string());
        self.request(
            msg::INTRODUCE,
            "introduce",
            "",
            join_fields([d.as_bytes(), m.as_bytes(), p.as_bytes()]),
        )
        .await
        .map(drop)
    }

    /// `XS_RELEASE`: tells xenstored a domain is gone (dom0 only).
    pub async fn release(&self, domid: DomId) -> Result<()> {
        self.request(
            msg::RELEASE,
            "release",
            "",
            join_fields([domid.to_string().as_bytes()]),
        )
        .await
        .map(drop)
    }

    /// `XS_RESUME`.
    pub async fn resume(&self, domid: DomId) -> Result<()> {
        self.request(
            msg::RESUME,
            "resume",
            "",
            join_fields([domid.to_string().as_bytes()]),
        )
        .await
        .map(drop)
    }

    /// `XS_IS_DOMAIN_INTRODUCED`.
    pub async fn is_domain_introduced(&self, domid: DomId) -> Result<bool> {
        let reply = self
            .request(
                msg::IS_DOMAIN_INTRODUCED,
                "is-domain-introduced",
                "",
                join_fields([domid.to_string().as_bytes()]),
            )
            .await?;
        Ok(reply.first() == Some(&b'T'))
    }

    /// `XS_SET_TARGET`: lets `domid` act on `target`'s nodes (a device-model domain).
    pub async fn set_target(&self, domid: DomId, target: DomId) -> Result<()> {
        let (d, t) = (domid.to_string(), target.to_string());
        self.request(
            msg::SET_TARGET,
            "set-target",
            "",
            join_fields([d.as_bytes(), t.as_bytes()]),
        )
        .await
        .map(drop)
    }

    /// `XS_CONTROL`: a daemon-specific command (e.g. `["print", "text"]`).
    pub async fn control(&self, args: &[&str]) -> Result<Vec<u8>> {
        self.request(
            msg::CONTROL,
            "control",
            "",
            join_fields(args.iter().map(|a| a.as_bytes())),
        )
        .await
    }
}

impl std::fmt::Debug for Xs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Xs")
            .field("tx_id", &self.tx_id)
            .finish_non_exhaustive()
    }
}
