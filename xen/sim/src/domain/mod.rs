//! The domain side of the simulated host: what a process running "inside" a simulated domain
//! uses to reach the hypervisor (grants, event channels, its own memory) and xenstore.
//!
//! A process learns its domain from the `XEN_SIM` environment variable
//! (`<run-dir>:<domid>:<token>`), set by whoever started it (the host's `spawn`, the
//! controller). [`SimDomain::boot`] binds the domain's life to this process: when it exits or
//! is killed, the domain crashes and the host cleans up after it.

mod copybuf;
mod evtchn;
mod fastcopy;
mod grant;
mod hvm;
mod memory;

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use xen_abi::DomId;

pub use copybuf::{copy_call_stats, CopyCallStats};
pub use evtchn::SimEvtchn;
pub use grant::{SimGrantedPages, SimGrants, SimMapping};
pub use hvm::{SimDeviceModel, SimPages, SimVcpu};
pub use memory::DomainMemory;

use crate::hv::proto::{decode, encode, recv_frame, send_frame, Hello, Reply, Request};

/// Name of the environment variable that carries a domain's credentials.
pub const ENV: &str = "XEN_SIM";
/// The hypervisor socket in a run directory.
pub const HYPERVISOR_SOCKET: &str = "hypervisor.sock";
/// The dom0 xenstored socket in a run directory (point `XENSTORED_PATH` at it).
pub const XENSTORED_SOCKET: &str = "xenstored.sock";
/// The socket through which domains reach xenstored.
pub const XENSTORED_DOMAIN_SOCKET: &str = "xenstored-domains.sock";

/// Errors of the domain side.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `XEN_SIM` is missing or malformed.
    #[error("{0}")]
    Environment(String),
    /// The host could not be reached.
    #[error("cannot reach the simulated host at {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The hypervisor refused.
    #[error("simulated hypervisor refused: {message} (errno {errno})")]
    Refused {
        /// errno.
        errno: i32,
        /// Its sentence.
        message: String,
    },
    /// The connection broke (the host stopped, or our domain was destroyed).
    #[error("simulated hypervisor connection: {0}")]
    Io(#[from] io::Error),
    /// An answer of the wrong kind.
    #[error("unexpected answer from the simulated hypervisor: {0}")]
    Protocol(String),
}

/// Result of domain-side operations.
pub type Result<T> = std::result::Result<T, Error>;

/// Who a process is: the host's run directory, its domain and that domain's secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The host's run directory.
    pub run_dir: PathBuf,
    /// The domain.
    pub domid: DomId,
    /// Its secret.
    pub token: String,
}

impl Credentials {
    /// Reads `XEN_SIM`.
    pub fn from_env() -> Result<Self> {
        let value = std::env::var(ENV).map_err(|_| {
            Error::Environment(format!(
                "{ENV} is not set: start this program inside a simulated domain (xensim spawns it), \
                 or set {ENV}=<run-dir>:<domid>:<token>"
            ))
        })?;
        Self::parse(&value)
    }

    /// Parses `<run-dir>:<domid>:<token>`.
    pub fn parse(value: &str) -> Result<Self> {
        let bad = || {
            Error::Environment(format!(
                "{ENV}={value:?} is not of the form <run-dir>:<domid>:<token>"
            ))
        };
        let (rest, token) = value.rsplit_once(':').ok_or_else(bad)?;
        let (dir, domid) = rest.rsplit_once(':').ok_or_else(bad)?;
        let domid = domid.parse().map_err(|_| bad())?;
        if dir.is_empty() || token.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            run_dir: PathBuf::from(dir),
            domid,
            token: token.to_string(),
        })
    }

    /// The `XEN_SIM` value.
    pub fn to_env_value(&self) -> String {
        format!("{}:{}:{}", self.run_dir.display(), self.domid, self.token)
    }

    fn socket(&self, name: &str) -> PathBuf {
        self.run_dir.join(name)
    }
}

/// One connection to the hypervisor; calls are serialised on it.
pub(crate) struct HvConn {
    stream: Mutex<UnixStream>,
}

impl HvConn {
    pub(crate) fn open(creds: &Credentials, primary: bool) -> Result<Self> {
        let path = creds.socket(HYPERVISOR_SOCKET);
        let stream = UnixStream::connect(&path).map_err(|e| Error::Connect {
            path: path.clone(),
            source: e,
        })?;
        let conn = Self {
            stream: Mutex::new(stream),
        };
        let hello = Request::Hello(Hello {
            domid: creds.domid,
            token: creds.token.clone(),
            primary,
        });
        match conn.call(&hello)?.0 {
            Reply::Ok => Ok(conn),
            other => Err(Error::Protocol(format!("{other:?}"))),
        }
    }

    /// One request and its reply.
    pub(crate) fn call(&self, request: &Request) -> Result<(Reply, Vec<OwnedFd>)> {
        self.call_with_fds(request, &[])
    }

    /// One request sent with descriptors, and its reply.
    pub(crate) fn call_with_fds(
        &self,
        request: &Request,
        fds: &[std::os::fd::RawFd],
    ) -> Result<(Reply, Vec<OwnedFd>)> {
        let stream = self
            .stream
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        send_frame(&stream, &encode(request)?, fds)?;
        let (bytes, fds) = recv_frame(&stream)?;
        match decode::<Reply>(&bytes)? {
            Reply::Error { errno, message } => Err(Error::Refused { errno, message }),
            reply => Ok((reply, fds)),
        }
    }
}

/// A process's view of its simulated domain.
pub struct SimDomain {
    creds: Credentials,
    primary: Option<HvConn>,
}

impl SimDomain {
    /// The domain named by `XEN_SIM`.
    pub fn from_env() -> Result<Self> {
        Ok(Self::new(Credentials::from_env()?))
    }

    /// The domain of `creds`.
    pub fn new(creds: Credentials) -> Self {
        Self {
            creds,
            primary: None,
        }
    }

    /// Binds the domain's life to this process (its "kernel" is now running).
    pub fn boot(&mut self) -> Result<()> {
        if self.primary.is_none() {
            self.primary = Some(HvConn::open(&self.creds, true)?);
        }
        Ok(())
    }

    /// Our domain id.
    pub fn domid(&self) -> DomId {
        self.creds.domid
    }

    /// Our credentials.
    pub fn credentials(&self) -> &Credentials {
        &self.creds
    }

    /// A new event channel handle (like opening `/dev/xen/evtchn`).
    pub fn evtchn(&self) -> Result<SimEvtchn> {
        SimEvtchn::open(&self.creds)
    }

    /// A new grant handle (like opening `/dev/xen/gntdev` and `/dev/xen/gntalloc`).
    pub fn grants(&self) -> Result<SimGrants> {
        SimGrants::open(&self.creds)
    }

    /// Our own memory and grant table, mapped (to inspect or scribble on them).
    pub fn memory(&self) -> Result<DomainMemory> {
        DomainMemory::open(&HvConn::open(&self.creds, false)?)
    }

    /// vCPU `index` of this HVM guest, to issue trapped accesses with.
    pub fn vcpu(&self, index: u32) -> Result<SimVcpu> {
        SimVcpu::open(&self.creds, index)
    }

    /// A device-model handle on HVM guest `target` (like opening `/dev/xen/privcmd`); the
    /// hypervisor allows it for dom0 and for the domain made `target`'s device model.
    pub fn device_model(&self, target: DomId) -> Result<SimDeviceModel> {
        SimDeviceModel::open(&self.creds, target)
    }

    /// A xenstore connection as this domain (like opening `/dev/xen/xenbus`).
    pub async fn xenstore(&self) -> Result<xen_store::Xs> {
        connect_xenstore(&self.creds).await
    }

    /// A connection for dom0-only requests (create, destroy and list domains).
    pub fn control(&self) -> Result<Control> {
        Ok(Control {
            conn: Arc::new(HvConn::open(&self.creds, false)?),
        })
    }
}

/// dom0's domain-management calls.
pub struct Control {
    conn: Arc<HvConn>,
}

impl Control {
    /// Creates a domain; returns its credentials.
    pub fn create_domain(&self, run_dir: &Path, name: &str, mem_pages: u32) -> Result<Credentials> {
        match self
            .conn
            .call(&Request::CreateDomain {
                name: name.to_string(),
                mem_pages,
            })?
            .0
        {
            Reply::Created { domid, token } => Ok(Credentials {
                run_dir: run_dir.to_path_buf(),
                domid,
                token,
            }),
            other => Err(Error::Protocol(format!("{other:?}"))),
        }
    }

    /// Creates an HVM guest with `vcpus` vCPUs; returns its credentials.
    pub fn create_hvm_domain(
        &self,
        run_dir: &Path,
        name: &str,
        mem_pages: u32,
        vcpus: u32,
    ) -> Result<Credentials> {
        match self
            .conn
            .call(&Request::CreateHvmDomain {
                name: name.to_string(),
                mem_pages,
                vcpus,
            })?
            .0
        {
            Reply::Created { domid, token } => Ok(Credentials {
                run_dir: run_dir.to_path_buf(),
                domid,
                token,
            }),
            other => Err(Error::Protocol(format!("{other:?}"))),
        }
    }

    /// Makes `dm` the device model of HVM guest `target` (`XEN_DOMCTL_set_target`).
    pub fn set_target(&self, dm: DomId, target: DomId) -> Result<()> {
        self.conn.call(&Request::SetTarget { dm, target }).map(drop)
    }

    /// Robustness tests: writes `raw` into vCPU `vcpu`'s slot of ioreq server `id` of
    /// `target`, notifies the emulator and waits up to `wait` for its answer; the slot's
    /// bytes afterwards.
    pub fn inject_ioreq(
        &self,
        target: DomId,
        id: u16,
        vcpu: u32,
        raw: [u8; 32],
        wait: std::time::Duration,
    ) -> Result<Vec<u8>> {
        let request = Request::InjectIoreq {
            target,
            id,
            vcpu,
            raw: serde_bytes::ByteBuf::from(raw.to_vec()),
            wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
        };
        match self.conn.call(&request)?.0 {
            Reply::Raw(bytes) => Ok(bytes.into_vec()),
            other => Err(Error::Protocol(format!("{other:?}"))),
        }
    }

    /// Robustness tests: writes raw buffered-ring slots and pointers of ioreq server `id` of
    /// `target` and notifies the emulator.
    pub fn inject_buffered(
        &self,
        target: DomId,
        id: u16,
        slots: Vec<(u32, u64)>,
        read_pointer: Option<u32>,
        write_pointer: u32,
    ) -> Result<()> {
        let request = Request::InjectBuffered {
            target,
            id,
            slots,
            read_pointer,
            write_pointer,
        };
        self.conn.call(&request).map(drop)
    }

    /// Destroys a domain (kills its primary process).
    pub fn destroy_domain(&self, domid: DomId) -> Result<()> {
        self.conn.call(&Request::DestroyDomain { domid }).map(drop)
    }

    /// Lists the live domains.
    pub fn list_domains(&self) -> Result<Vec<crate::hv::proto::DomainInfo>> {
        match self.conn.call(&Request::ListDomains)?.0 {
            Reply::Domains(list) => Ok(list),
            other => Err(Error::Protocol(format!("{other:?}"))),
        }
    }
}

/// Opens a xenstore connection as the domain of `creds`.
pub async fn connect_xenstore(creds: &Credentials) -> Result<xen_store::Xs> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let path = creds.socket(XENSTORED_DOMAIN_SOCKET);
    let mut stream = tokio::net::UnixStream::connect(&path)
        .await
        .map_err(|e| Error::Connect {
            path: path.clone(),
            source: e,
        })?;
    let hello = encode(&Hello {
        domid: creds.domid,
        token: creds.token.clone(),
        primary: false,
    })?;
    let mut frame = (hello.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&hello);
    stream.write_all(&frame).await?;
    let mut ack = [0u8; 1];
    stream
        .read_exact(&mut ack)
        .await
        .map_err(|_| Error::Refused {
            errno: libc::EACCES,
            message: format!(
                "xenstored refused the credentials of domain {}",
                creds.domid
            ),
        })?;
    Ok(xen_store::Xs::from_stream(stream))
}
