//! The simulated host: one process that is the hypervisor and runs xenstored, with a run
//! directory holding its sockets:
//!
//! - `hypervisor.sock`: hypercalls of every domain's processes (authenticated per domain);
//! - `xenstored.sock`: dom0's xenstore socket (point `XENSTORED_PATH` at it);
//! - `xenstored-domains.sock`: other domains' xenstore connections (authenticated);
//! - `dom0.env`: dom0's `XEN_SIM` credentials (mode 0600), for dom0 programs such as the
//!   controller.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xen_abi::DomId;

use crate::domain::{
    Credentials, ENV, HYPERVISOR_SOCKET, XENSTORED_DOMAIN_SOCKET, XENSTORED_SOCKET,
};
use crate::hv::proto::{decode, Hello};
use crate::hv::{DomainConfig, Hypervisor};
use crate::xenstored::{Quotas, Xenstored};

/// A running simulated host. Must be started inside a tokio runtime.
pub struct Host {
    run_dir: PathBuf,
    hv: Arc<Hypervisor>,
    dom0: Credentials,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Host {
    /// Starts the host with its sockets in `run_dir` (created if missing).
    pub async fn start(run_dir: &Path) -> std::io::Result<Self> {
        Self::start_with_quotas(run_dir, Quotas::default()).await
    }

    /// Starts the host with the given xenstored quotas.
    pub async fn start_with_quotas(run_dir: &Path, quotas: Quotas) -> std::io::Result<Self> {
        std::fs::create_dir_all(run_dir)?;
        let run_dir = run_dir.canonicalize()?;
        let xenstored = Xenstored::new(quotas);
        let mut tasks = vec![xenstored.listen(&run_dir.join(XENSTORED_SOCKET))?];
        let token = Credentials::parse(&format!("x:0:{}", random_hex()))
            .map(|c| c.token)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let hv = Hypervisor::new(xenstored.clone(), token.clone());
        let dom0 = Credentials {
            run_dir: run_dir.clone(),
            domid: 0,
            token,
        };
        let env_file = run_dir.join("dom0.env");
        std::fs::write(&env_file, format!("{ENV}={}\n", dom0.to_env_value()))?;
        std::fs::set_permissions(&env_file, std::fs::Permissions::from_mode(0o600))?;

        let hv_path = run_dir.join(HYPERVISOR_SOCKET);
        let _ = std::fs::remove_file(&hv_path);
        let listener = std::os::unix::net::UnixListener::bind(&hv_path)?;
        let hv_for_thread = Arc::clone(&hv);
        std::thread::Builder::new()
            .name("hv-accept".into())
            .spawn(move || crate::hv::serve(hv_for_thread, listener))?;

        let dom_path = run_dir.join(XENSTORED_DOMAIN_SOCKET);
        let _ = std::fs::remove_file(&dom_path);
        let listener = tokio::net::UnixListener::bind(&dom_path)?;
        let hv_for_xs = Arc::clone(&hv);
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let hv = Arc::clone(&hv_for_xs);
                tokio::spawn(async move { accept_domain_xenstore(&hv, stream).await });
            }
        }));
        tracing::info!(run_dir = %run_dir.display(), "simulated Xen host started");
        Ok(Self {
            run_dir,
            hv,
            dom0,
            tasks,
        })
    }

    /// The run directory.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// dom0's xenstore socket (for `XENSTORED_PATH`).
    pub fn xenstored_socket(&self) -> PathBuf {
        self.run_dir.join(XENSTORED_SOCKET)
    }

    /// dom0's credentials.
    pub fn dom0(&self) -> &Credentials {
        &self.dom0
    }

    /// The hypervisor.
    pub fn hypervisor(&self) -> &Arc<Hypervisor> {
        &self.hv
    }

    /// The xenstored.
    pub fn xenstored(&self) -> &Xenstored {
        self.hv.xenstored()
    }

    /// Creates a domain and returns the credentials its processes need.
    pub fn create_domain(&self, name: &str, mem_pages: u32) -> Result<Credentials, String> {
        let (domid, token) = self.hv.create_domain(&DomainConfig {
            name: name.to_string(),
            mem_pages,
            hvm_vcpus: None,
        })?;
        Ok(Credentials {
            run_dir: self.run_dir.clone(),
            domid,
            token,
        })
    }

    /// Creates an HVM guest with `vcpus` vCPUs and `mem_pages` pages of RAM at gfn 0.
    pub fn create_hvm_domain(
        &self,
        name: &str,
        mem_pages: u32,
        vcpus: u32,
    ) -> Result<Credentials, String> {
        let (domid, token) = self.hv.create_domain(&DomainConfig {
            name: name.to_string(),
            mem_pages,
            hvm_vcpus: Some(vcpus),
        })?;
        Ok(Credentials {
            run_dir: self.run_dir.clone(),
            domid,
            token,
        })
    }

    /// Makes `dm` the device model of HVM guest `target` (`XEN_DOMCTL_set_target`).
    pub fn set_device_model(&self, dm: DomId, target: DomId) -> Result<(), String> {
        match self.hv.lock().set_target(dm, target) {
            crate::hv::proto::Reply::Ok => Ok(()),
            crate::hv::proto::Reply::Error { message, .. } => Err(message),
            other => Err(format!("{other:?}")),
        }
    }

    /// Destroys a domain, killing its primary process.
    pub fn destroy_domain(&self, domid: DomId) -> bool {
        self.hv.destroy_domain(domid, true)
    }

    /// A command that runs `program` inside the domain of `creds`.
    pub fn command(
        creds: &Credentials,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(program);
        cmd.env(ENV, creds.to_env_value());
        cmd
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn random_hex() -> String {
    let mut bytes = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut bytes);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Authenticates a domain's xenstore connection, then hands it to xenstored as that domain.
async fn accept_domain_xenstore(hv: &Hypervisor, mut stream: tokio::net::UnixStream) {
    let mut len = [0u8; 4];
    if stream.read_exact(&mut len).await.is_err() {
        return;
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > 1024 {
        return;
    }
    let mut buf = vec![0u8; len];
    if stream.read_exact(&mut buf).await.is_err() {
        return;
    }
    let Ok(hello) = decode::<Hello>(&buf) else {
        return;
    };
    if !hv.check_credentials(hello.domid, &hello.token) {
        tracing::warn!(
            domid = hello.domid,
            "xenstore connection with wrong credentials refused"
        );
        return;
    }
    if stream.write_all(&[1]).await.is_err() {
        return;
    }
    hv.xenstored().serve(stream, hello.domid);
}
