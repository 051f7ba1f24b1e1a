//! `/dev/xen/evtchn`: event channels of a domain under real Xen.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

use xen_abi::linux::evtchn::*;
use xen_abi::{DomId, Port};
use zerocopy::IntoBytes;

use crate::{Error, EventChannel, Result};

/// Most ports one `read()` returns (one page of `u32`s, as the driver allows).
const READ_BATCH: usize = 1024;

/// A handle on `/dev/xen/evtchn`.
pub struct DevEvtchn {
    file: File,
    fired: Mutex<VecDeque<Port>>,
}

impl DevEvtchn {
    /// Opens `/dev/xen/evtchn` (non-blocking).
    pub fn open() -> Result<Self> {
        Self::open_path(Path::new("/dev/xen/evtchn"))
    }

    /// Opens an evtchn device at `path`.
    pub fn open_path(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| Error::Os {
                op: "open",
                source: e,
            })?;
        Ok(Self {
            file,
            fired: Mutex::new(VecDeque::new()),
        })
    }

    fn ioctl<T: IntoBytes + zerocopy::Immutable>(
        &self,
        op: &'static str,
        request: u32,
        arg: &T,
    ) -> Result<u32> {
        // SAFETY: `request` is an evtchn ioctl whose argument layout is `T` (xen-abi asserts the
        // sizes); the kernel only reads `size_of::<T>()` bytes from `arg`, which outlives the call.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), request as _, arg as *const T) };
        if rc < 0 {
            return Err(Error::Os {
                op,
                source: io::Error::last_os_error(),
            });
        }
        Ok(rc as u32)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Port>> {
        self.fired
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl EventChannel for DevEvtchn {
    fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> Result<Port> {
        let arg = IoctlEvtchnBindInterdomain {
            remote_domain: remote.into(),
            remote_port,
        };
        self.ioctl("bind-interdomain", IOCTL_EVTCHN_BIND_INTERDOMAIN, &arg)
    }

    fn bind_unbound_port(&self, remote: DomId) -> Result<Port> {
        self.ioctl(
            "bind-unbound-port",
            IOCTL_EVTCHN_BIND_UNBOUND_PORT,
            &IoctlEvtchnU32 {
                value: remote.into(),
            },
        )
    }

    fn unbind(&self, port: Port) -> Result<()> {
        self.lock().retain(|&p| p != port);
        self.ioctl(
            "unbind",
            IOCTL_EVTCHN_UNBIND,
            &IoctlEvtchnU32 { value: port },
        )
        .map(drop)
    }

    fn notify(&self, port: Port) -> Result<()> {
        self.ioctl(
            "notify",
            IOCTL_EVTCHN_NOTIFY,
            &IoctlEvtchnU32 { value: port },
        )
        .map(drop)
    }

    fn pending(&self) -> Result<Option<Port>> {
        let mut fired = self.lock();
        if let Some(p) = fired.pop_front() {
            return Ok(Some(p));
        }
        let mut buf = [0u32; READ_BATCH];
        match (&self.file).read(buf.as_mut_bytes()) {
            Ok(n) => {
                fired.extend(buf.iter().take(n / 4).copied());
                Ok(fired.pop_front())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(Error::Os {
                op: "read",
                source: e,
            }),
        }
    }

    fn unmask(&self, port: Port) -> Result<()> {
        (&self.file)
            .write_all(port.as_bytes())
            .map_err(|e| Error::Os {
                op: "unmask",
                source: e,
            })
    }

    fn restrict(&self, domid: DomId) -> Result<()> {
        self.ioctl(
            "restrict-domid",
            IOCTL_EVTCHN_RESTRICT_DOMID,
            &IoctlEvtchnRestrictDomid { domid },
        )
        .map(drop)
    }

    fn readiness_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
