//! `struct ifreq`, the argument of the TUN and network-device ioctls.

use std::io;

/// An interface request: a device name and one union member.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub(crate) struct IfReq(pub(crate) libc::ifreq);

// SAFETY: an ifreq is plain data; its union's pointer member (`ifru_data`) is never set or
// dereferenced by this crate, so moving or sharing a copy between threads is sound.
unsafe impl Send for IfReq {}
// SAFETY: as above; shared access only reads plain bytes.
unsafe impl Sync for IfReq {}

impl IfReq {
    /// A request naming `name` (at most 15 bytes, no NUL), union zeroed.
    pub(crate) fn named(name: &str) -> io::Result<Self> {
        if name.len() >= libc::IFNAMSIZ || name.bytes().any(|b| b == 0 || b == b'/') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("interface name {name:?} must be 1-15 bytes without '/' or NUL"),
            ));
        }
        // SAFETY: ifreq is plain old data; all-zero is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        Ok(Self(req))
    }

    /// The name the kernel wrote back.
    pub(crate) fn name(&self) -> String {
        let bytes: Vec<u8> = self
            .0
            .ifr_name
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    pub(crate) fn set_flags(&mut self, flags: libc::c_short) {
        self.0.ifr_ifru.ifru_flags = flags;
    }

    pub(crate) fn flags(&self) -> libc::c_short {
        // SAFETY: every member of the union is plain data; reading flags is always defined.
        unsafe { self.0.ifr_ifru.ifru_flags }
    }

    pub(crate) fn set_int(&mut self, value: libc::c_int) {
        self.0.ifr_ifru.ifru_ifindex = value;
    }

    pub(crate) fn int(&self) -> libc::c_int {
        // SAFETY: as in `flags`.
        unsafe { self.0.ifr_ifru.ifru_ifindex }
    }

    pub(crate) fn set_mac(&mut self, mac: [u8; 6]) {
        // SAFETY: a zeroed sockaddr is valid; we fill family and the first six data bytes.
        let mut sa: libc::sockaddr = unsafe { std::mem::zeroed() };
        sa.sa_family = libc::ARPHRD_ETHER;
        for (dst, src) in sa.sa_data.iter_mut().zip(mac) {
            *dst = src as libc::c_char;
        }
        self.0.ifr_ifru.ifru_hwaddr = sa;
    }
}
