//! Watches: a bounded per-watch event queue that coalesces on overflow.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use tokio::sync::mpsc;

use crate::client::Inner;

/// Events buffered per watch before further ones coalesce into one "re-read" event.
pub(crate) const WATCH_QUEUE_DEPTH: usize = 256;

/// One watch firing: the path that changed (or the watched path itself for the first event and
/// after coalescing) and the watch's token. Handlers must re-read state: events may be spurious.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// The path that changed.
    pub path: String,
    /// The watch's token.
    pub token: String,
}

/// The client side of one registered watch.
pub(crate) struct WatchSlot {
    pub(crate) tx: mpsc::Sender<WatchEvent>,
    pub(crate) overflow: Arc<AtomicBool>,
}

impl WatchSlot {
    /// Queues an event; when the queue is full, remembers that events were coalesced.
    pub(crate) fn deliver(&self, event: WatchEvent) {
        if self.tx.try_send(event).is_err() {
            self.overflow.store(true, Ordering::Release);
        }
    }
}

/// A registered watch. Dropping it unregisters it (asynchronously).
pub struct Watch {
    pub(crate) rx: mpsc::Receiver<WatchEvent>,
    pub(crate) overflow: Arc<AtomicBool>,
    pub(crate) path: String,
    pub(crate) token: String,
    pub(crate) client: Weak<Inner>,
}

impl Watch {
    pub(crate) fn new(client: &Arc<Inner>, path: String, token: String) -> (Self, WatchSlot) {
        let (tx, rx) = mpsc::channel(WATCH_QUEUE_DEPTH);
        let overflow = Arc::new(AtomicBool::new(false));
        let slot = WatchSlot {
            tx,
            overflow: Arc::clone(&overflow),
        };
        (
            Self {
                rx,
                overflow,
                path,
                token,
                client: Arc::downgrade(client),
            },
            slot,
        )
    }

    /// The watched path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The next event; `None` once the connection is closed.
    pub async fn next(&mut self) -> Option<WatchEvent> {
        match self.rx.try_recv() {
            Ok(event) => return Some(event),
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
            Err(mpsc::error::TryRecvError::Empty) => {}
        }
        // Events were coalesced while the queue was full: report one for the watched path so
        // the handler re-reads what it watches.
        if self.overflow.swap(false, Ordering::AcqRel) {
            return Some(WatchEvent {
                path: self.path.clone(),
                token: self.token.clone(),
            });
        }
        self.rx.recv().await
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(inner) = self.client.upgrade() {
            inner.forget_watch(&self.path, &self.token);
        }
    }
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("path", &self.path)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}
