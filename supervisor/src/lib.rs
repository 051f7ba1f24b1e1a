//! The driver-domain supervisor that `storage-dd` and `network-dd` are made of: it runs the
//! domain's backend as a child process, restarts it when it dies (its frontends then
//! reconnect, or the restarted backend re-attaches to their live rings), stops it when asked,
//! and keeps a health file for whoever watches the domain: the backend's state, pid, restarts,
//! how it last ended, and its own counters (read from the stats file it writes).
//!
//! [`Backoff`] spaces restarts; [`supervise`] is the loop; [`cli`] is the shared command line
//! of the role binaries.

pub mod backoff;
pub mod cli;
mod health;
mod service;

pub use backoff::Backoff;
pub use health::{Health, State};
pub use service::{supervise, Error, ServiceSpec};
