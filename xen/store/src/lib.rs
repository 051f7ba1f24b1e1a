//! A complete async xenstore client, and the pure protocol pieces it shares with the simulated
//! xenstored: message framing with payload limits (`wire`), errno names (`error`), path
//! validation and the XenBus directory conventions (`path`), node permissions (`perms`).
//!
//! The client ([`Xs`]) speaks `xs_wire` over the xenstored unix socket (dom0, or a domain that
//! runs xenstored) or over `/dev/xen/xenbus` (a driver domain or guest). It multiplexes many
//! concurrent requests on one connection by `req_id`, delivers watch events per watch (the
//! immediate first event included) through bounded queues that coalesce on overflow, and runs
//! transactions with retry on `EAGAIN`.

mod client;
pub mod error;
pub mod path;
pub mod perms;
mod transport;
mod watch;
pub mod wire;

pub use client::{Xs, MAX_TRANSACTION_ATTEMPTS};
pub use error::{Error, XsErrno};
pub use perms::{Perm, PermKind};
pub use watch::{Watch, WatchEvent};
pub use xen_abi::xenbus::XenbusState;

/// Result of xenstore operations.
pub type Result<T> = std::result::Result<T, Error>;
