//! The simulated Xen host: everything the backends need from Xen, without Xen.
//!
//! - [`xenstored`]: a real xenstored speaking `xs_wire` on unix sockets.
//! - [`hv`]: the hypervisor broker — domains as processes, memory, v1 grant tables enforced as
//!   Xen enforces them, event channels.
//! - [`domain`]: what a process inside a simulated domain uses: the same `xen-grant` and
//!   `xen-evtchn` traits as real Xen, its own memory, and a xenstore connection as its domain.
//! - [`host`]: starts all of it in one process with its sockets in a run directory.
//!
//! See ARCHITECTURE.md for how the pieces fit and what the simulation does and does not
//! enforce.

mod active;
pub mod bench;
pub mod demo;
pub mod domain;
pub mod host;
pub mod hv;
pub mod toolstack;
pub mod xenstored;

pub use domain::{Credentials, SimDomain};
pub use host::Host;
