//! blkback: a userspace Xen block backend.
//!
//! - [`storage`]: the disks it serves (raw files and block devices on io_uring).
//! - [`worker`]: one thread per queue serving a frontend's ring.
//! - [`stats`]: counters per queue.

mod grants;
mod ring;
pub mod stats;
pub mod storage;
pub mod worker;

pub use grants::MAX_PERSISTENT_GRANTS;
