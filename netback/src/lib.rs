//! netback: a userspace Xen network backend.
//!
//! - [`backend`]: watches the driver domain's `backend/vif` directory; one task per vif.
//! - [`device`]: the XenBus handshake of one vif and its host side (TAP, bridge, hotplug).
//! - [`queue`]: one thread per queue moving packets by grant copy (`tx` and `rx` sides).
//! - [`ctrl`]: the control ring (hash key, types and mapping).
//! - [`shared`]: what a vif's queues share (hash, multicast filter, rate, steering inboxes).
//! - [`framebuf`]: frame buffers in the grant mapper's cheapest copy memory.
//! - [`rate`]: the credit scheduler behind the `rate` key.
//! - [`stats`]: counters per queue.
//! - [`bench`](mod@bench): iperf3 through netback on the simulated host against a veth pair.

pub mod backend;
pub mod bench;
pub mod cli;
pub mod ctrl;
pub mod device;
pub mod framebuf;
pub mod queue;
pub mod rate;
mod rx;
pub mod shared;
pub mod stats;
mod tx;
