//! blkback: a userspace Xen block backend.
//!
//! - [`storage`]: the disks it serves (raw files and block devices on io_uring).

pub mod storage;
