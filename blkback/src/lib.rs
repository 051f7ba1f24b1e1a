//! blkback: a userspace Xen block backend.
//!
//! - [`backend`]: watches the driver domain's backend directory; one device task per device.
//! - [`device`]: the XenBus handshake of one device (features, connect, disconnect, restart).
//! - [`worker`]: one thread per queue serving a frontend's ring on io_uring.
//! - [`storage`]: the disks it serves (raw files and block devices).
//! - [`platform`]: real Xen or the simulated host.
//! - [`stats`]: counters per queue.
//! - [`vhost_user`]: the same storage engine exported as a vhost-user-blk device (KVM).

pub mod backend;
pub mod bench;
pub mod cli;
pub mod device;
mod grants;
pub use xen_backend::platform;
mod ring;
pub mod stats;
pub mod storage;
pub mod vhost_user;
pub mod worker;

pub use grants::MAX_PERSISTENT_GRANTS;
