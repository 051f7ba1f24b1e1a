//! The simulated Xen host: everything the backends need from Xen, without Xen.
//!
//! - [`xenstored`]: a real xenstored speaking `xs_wire` on unix sockets.
//!
//! See ARCHITECTURE.md for how the pieces fit and what the simulation does and does not
//! enforce.

pub mod xenstored;
