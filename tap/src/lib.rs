//! Linux TAP devices for virtual interfaces, and the link settings around them.
//!
//! A [`Tap`] is opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` (every frame is preceded by a
//! 10-byte `virtio_net_hdr`, so checksum and segmentation offload cross the device intact) and,
//! with more than one queue, `IFF_MULTI_QUEUE`: one descriptor per queue, each owned by one
//! worker. [`Tap::set_offload`] tells the kernel which offloads the reader accepts.
//!
//! Everything can happen inside a named network namespace (`/run/netns/<name>`): the work runs
//! on a short-lived thread that enters the namespace, so the caller's threads stay where they
//! are. A TAP descriptor keeps working from any thread afterwards.
//!
//! The `tun` crates on crates.io process offloads themselves (GRO tables, segmentation in user
//! space) instead of handing the raw virtio header through, and none creates devices inside
//! another namespace; the ioctls here are few and plain.

mod ifreq;
mod link;

pub use link::Link;

use std::fs::OpenOptions;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ifreq::IfReq;

/// `TUN_F_CSUM`: the reader takes frames with partial checksums.
pub const TUN_F_CSUM: u32 = 0x01;
/// `TUN_F_TSO4`: the reader takes TCPv4 segmentation offload.
pub const TUN_F_TSO4: u32 = 0x02;
/// `TUN_F_TSO6`: the reader takes TCPv6 segmentation offload.
pub const TUN_F_TSO6: u32 = 0x04;
/// `TUN_F_TSO_ECN`: the reader takes TSO with ECN.
pub const TUN_F_TSO_ECN: u32 = 0x08;

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const IFF_DETACH_QUEUE: libc::c_short = 0x0400;

nix::ioctl_write_ptr_bad!(
    /// `TUNSETIFF`.
    tunsetiff, 0x4004_54ca, IfReq);
nix::ioctl_write_int_bad!(
    /// `TUNSETOFFLOAD`.
    tunsetoffload, 0x4004_54d0);
nix::ioctl_write_ptr_bad!(
    /// `TUNSETQUEUE`.
    tunsetqueue,
    0x4004_54d9,
    IfReq
);
nix::ioctl_write_ptr_bad!(
    /// `TUNSETCARRIER`.
    tunsetcarrier, 0x4004_54e2, libc::c_int);

/// Runs `f` on a thread inside the network namespace at `netns` (or here, if `None`).
pub fn in_netns<T: Send>(
    netns: Option<&Path>,
    f: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    let Some(netns) = netns else {
        return f();
    };
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let ns = std::fs::File::open(netns).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot open network namespace {}: {e}", netns.display()),
                    )
                })?;
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(io::Error::from)?;
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("network namespace thread panicked")))
    })
}

/// The path of a named network namespace (`ip netns add <name>`).
pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

/// One queue of a TAP device: frames (each with its virtio header) are read and written whole.
#[derive(Debug)]
pub struct TapQueue {
    fd: OwnedFd,
}

impl TapQueue {
    /// Reads one frame (non-blocking: `WouldBlock` when none is waiting).
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        nix::unistd::read(self.fd.as_raw_fd(), buf).map_err(io::Error::from)
    }

    /// Reads one frame scattered over several buffers (non-blocking).
    pub fn read_vectored(&self, bufs: &mut [std::io::IoSliceMut<'_>]) -> io::Result<usize> {
        nix::sys::uio::readv(&self.fd, bufs).map_err(io::Error::from)
    }

    /// Writes one frame from several pieces.
    pub fn write(&self, parts: &[IoSlice<'_>]) -> io::Result<usize> {
        nix::sys::uio::writev(&self.fd, parts).map_err(io::Error::from)
    }
}

impl AsFd for TapQueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for TapQueue {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

/// A TAP device: its name, namespace and queues. The device goes away when every queue is
/// closed (it is not persistent).
#[derive(Debug)]
pub struct Tap {
    name: String,
    netns: Option<PathBuf>,
    queues: Vec<TapQueue>,
}

impl Tap {
    /// Creates the multi-queue TAP device `name` with `queues` queues in `netns`, or attaches
    /// `queues` more queues to it if it exists (and was created by this function).
    pub fn create(name: &str, queues: usize, netns: Option<&Path>) -> io::Result<Tap> {
        let req = IfReq::named(name)?;
        let flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE;
        let (name, fds) = in_netns(netns, || {
            let mut fds = Vec::new();
            let mut name = String::new();
            for _ in 0..queues.max(1) {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                    .open("/dev/net/tun")?;
                let mut r = req;
                r.set_flags(flags);
                // SAFETY: `r` is a valid ifreq that outlives the call; TUNSETIFF reads it and
                // writes the chosen name back into it.
                unsafe { tunsetiff(file.as_raw_fd(), &r) }.map_err(io::Error::from)?;
                name = r.name();
                fds.push(OwnedFd::from(file));
            }
            Ok((name, fds))
        })?;
        Ok(Tap {
            name,
            netns: netns.map(Path::to_path_buf),
            queues: fds.into_iter().map(|fd| TapQueue { fd }).collect(),
        })
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Link settings of this device (in its namespace).
    pub fn link(&self) -> Link {
        Link::new(&self.name, self.netns.as_deref())
    }

    /// Takes the queues out (one per worker); the device lives while any is open.
    pub fn take_queues(&mut self) -> Vec<TapQueue> {
        std::mem::take(&mut self.queues)
    }

    /// The queues.
    pub fn queues(&self) -> &[TapQueue] {
        &self.queues
    }

    /// `TUNSETOFFLOAD`: which offloads (`TUN_F_*`) frames read from the device may carry.
    pub fn set_offload(queue: &TapQueue, flags: u32) -> io::Result<()> {
        let arg = libc::c_int::try_from(flags).map_err(|_| io::Error::other("bad flags"))?;
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        unsafe { tunsetoffload(queue.as_raw_fd(), arg) }
            .map(drop)
            .map_err(io::Error::from)
    }

    /// `TUNSETQUEUE` with `IFF_DETACH_QUEUE`: the queue stays open (keeping the device alive)
    /// but the kernel no longer hands it frames.
    pub fn detach(queue: &TapQueue) -> io::Result<()> {
        let mut req = IfReq::named("")?;
        req.set_flags(IFF_DETACH_QUEUE);
        // SAFETY: `req` is a valid ifreq that outlives the call; TUNSETQUEUE only reads it.
        unsafe { tunsetqueue(queue.as_raw_fd(), &req) }
            .map(drop)
            .map_err(io::Error::from)
    }

    /// `TUNSETCARRIER`: raises or drops the device's carrier.
    pub fn set_carrier(queue: &TapQueue, on: bool) -> io::Result<()> {
        let arg: libc::c_int = on.into();
        // SAFETY: TUNSETCARRIER reads one int through the pointer, which outlives the call.
        unsafe { tunsetcarrier(queue.as_raw_fd(), &arg) }
            .map(drop)
            .map_err(io::Error::from)
    }
}
