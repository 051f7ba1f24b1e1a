//! Link settings of a network device, in its namespace: up, MTU, MAC, bridge port.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

use crate::ifreq::IfReq;
use crate::in_netns;

const SIOCBRADDIF: libc::c_ulong = 0x89a2;
const SIOCBRDELIF: libc::c_ulong = 0x89a3;

nix::ioctl_readwrite_bad!(siocgifflags, libc::SIOCGIFFLAGS, IfReq);
nix::ioctl_write_ptr_bad!(siocsifflags, libc::SIOCSIFFLAGS, IfReq);
nix::ioctl_write_ptr_bad!(siocsifmtu, libc::SIOCSIFMTU, IfReq);
nix::ioctl_write_ptr_bad!(siocsifhwaddr, libc::SIOCSIFHWADDR, IfReq);
nix::ioctl_readwrite_bad!(siocgifindex, libc::SIOCGIFINDEX, IfReq);
nix::ioctl_write_ptr_bad!(siocbraddif, SIOCBRADDIF, IfReq);
nix::ioctl_write_ptr_bad!(siocbrdelif, SIOCBRDELIF, IfReq);

/// A network device by name, in a namespace.
#[derive(Debug, Clone)]
pub struct Link {
    name: String,
    netns: Option<PathBuf>,
}

fn control_socket() -> io::Result<OwnedFd> {
    socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)
}

fn errno(what: &str, name: &str, e: nix::Error) -> io::Error {
    io::Error::new(
        io::Error::from(e).kind(),
        format!("{what} of {name}: {}", e.desc()),
    )
}

impl Link {
    /// The device `name` in `netns` (`None`: our own namespace).
    pub fn new(name: &str, netns: Option<&Path>) -> Self {
        Self {
            name: name.to_string(),
            netns: netns.map(Path::to_path_buf),
        }
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn with<T: Send>(
        &self,
        f: impl FnOnce(&OwnedFd, IfReq) -> io::Result<T> + Send,
    ) -> io::Result<T> {
        let req = IfReq::named(&self.name)?;
        in_netns(self.netns.as_deref(), || f(&control_socket()?, req))
    }

    /// The device's interface index (an error if it does not exist).
    pub fn index(&self) -> io::Result<i32> {
        let name = self.name.clone();
        self.with(move |sock, mut req| {
            // SAFETY: `req` is a valid ifreq that outlives the call.
            unsafe { siocgifindex(sock.as_raw_fd(), &mut req) }
                .map_err(|e| errno("index", &name, e))?;
            Ok(req.int())
        })
    }

    /// Brings the device up or down.
    pub fn set_up(&self, up: bool) -> io::Result<()> {
        let name = self.name.clone();
        self.with(move |sock, mut req| {
            // SAFETY: as in `index`.
            unsafe { siocgifflags(sock.as_raw_fd(), &mut req) }
                .map_err(|e| errno("flags", &name, e))?;
            let mut flags = req.flags();
            let up_flag = libc::IFF_UP as libc::c_short;
            if up {
                flags |= up_flag;
            } else {
                flags &= !up_flag;
            }
            req.set_flags(flags);
            // SAFETY: as in `index`.
            unsafe { siocsifflags(sock.as_raw_fd(), &req) }
                .map(drop)
                .map_err(|e| errno("set flags", &name, e))
        })
    }

    /// Sets the MTU.
    pub fn set_mtu(&self, mtu: u32) -> io::Result<()> {
        let name = self.name.clone();
        let mtu = libc::c_int::try_from(mtu).map_err(|_| io::Error::other("MTU out of range"))?;
        self.with(move |sock, mut req| {
            req.set_int(mtu);
            // SAFETY: as in `index`.
            unsafe { siocsifmtu(sock.as_raw_fd(), &req) }
                .map(drop)
                .map_err(|e| errno("MTU", &name, e))
        })
    }

    /// Sets the Ethernet address.
    pub fn set_mac(&self, mac: [u8; 6]) -> io::Result<()> {
        let name = self.name.clone();
        self.with(move |sock, mut req| {
            req.set_mac(mac);
            // SAFETY: as in `index`.
            unsafe { siocsifhwaddr(sock.as_raw_fd(), &req) }
                .map(drop)
                .map_err(|e| errno("MAC address", &name, e))
        })
    }

    /// Makes this device a port of `bridge` (which must exist in the same namespace).
    pub fn add_to_bridge(&self, bridge: &str) -> io::Result<()> {
        self.bridge_op(bridge, true)
    }

    /// Removes this device from `bridge`.
    pub fn remove_from_bridge(&self, bridge: &str) -> io::Result<()> {
        self.bridge_op(bridge, false)
    }

    fn bridge_op(&self, bridge: &str, add: bool) -> io::Result<()> {
        let index = self.index()?;
        let mut req = IfReq::named(bridge)?;
        let bridge = bridge.to_string();
        in_netns(self.netns.as_deref(), move || {
            let sock = control_socket()?;
            req.set_int(index);
            // SAFETY: `req` names the bridge and carries the port's index; it outlives the call.
            let r = unsafe {
                if add {
                    siocbraddif(sock.as_raw_fd(), &req)
                } else {
                    siocbrdelif(sock.as_raw_fd(), &req)
                }
            };
            r.map(drop).map_err(|e| errno("bridge port", &bridge, e))
        })
    }
}
