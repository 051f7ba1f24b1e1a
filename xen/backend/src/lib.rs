//! What every Xen backend (blkback, netback) shares.
//!
//! - [`platform`]: where a backend's Xen handles come from, real Xen (`/dev/xen/*`) or the
//!   simulated host, behind one trait so the backend code is the same on both.
//! - [`serve_devices`]: the driver domain's side of device discovery: watch
//!   `backend/<kind>` and run one task per `<frontend-domid>/<devid>` the toolstack places there.
//! - [`worker`]: the thread behind one ring and the handle that stops it.
//! - [`xenbus`]: the backend half of the XenBus handshake; a device type plugs in a
//!   [`DeviceDriver`].

pub mod platform;
pub mod worker;
pub mod xenbus;

pub use platform::{Platform, SimPlatform, XenPlatform};
pub use worker::{WorkerHandle, WorkerSignals};
pub use xenbus::{run_device, DeviceDriver, XenbusDevice};

use std::collections::{HashMap, HashSet};
use std::future::Future;

use xen_abi::DomId;
use xen_store::Xs;

fn parse<T: std::str::FromStr>(s: &str) -> Option<T> {
    s.parse().ok()
}

/// The `(frontend, devid)` pairs under `root`.
pub async fn devices(xs: &Xs, root: &str) -> xen_store::Result<Vec<(DomId, u32)>> {
    let mut out = Vec::new();
    let frontends = match xs.directory(root).await {
        Ok(f) => f,
        Err(e) if e.is_not_found() => return Ok(out),
        Err(e) => return Err(e),
    };
    for fe in frontends {
        let Some(fe_id) = parse::<DomId>(&fe) else {
            continue;
        };
        let devids = match xs.directory(&format!("{root}/{fe}")).await {
            Ok(d) => d,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e),
        };
        out.extend(
            devids
                .iter()
                .filter_map(|d| parse::<u32>(d))
                .map(|d| (fe_id, d)),
        );
    }
    Ok(out)
}

/// Watches `root` (`/local/domain/<us>/backend/<kind>`) and runs `device(frontend, devid)` as a
/// task for every device that appears, until the xenstore connection closes. A device whose
/// task ended (closed and offline, or failed) is not started again until its directory is
/// removed and written anew.
pub async fn serve_devices<F, Fut>(xs: &Xs, root: &str, mut device: F) -> xen_store::Result<()>
where
    F: FnMut(DomId, u32) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut watch = xs.watch(root).await?;
    let mut running: HashMap<(DomId, u32), tokio::task::JoinHandle<()>> = HashMap::new();
    let mut ended: HashSet<(DomId, u32)> = HashSet::new();
    tracing::info!(root = %root, "serving devices");
    while watch.next().await.is_some() {
        let present: HashSet<(DomId, u32)> = devices(xs, root).await?.into_iter().collect();
        running.retain(|key, task| {
            if task.is_finished() {
                ended.insert(*key);
                false
            } else {
                true
            }
        });
        ended.retain(|key| present.contains(key));
        for key in present {
            if running.contains_key(&key) || ended.contains(&key) {
                continue;
            }
            running.insert(key, tokio::spawn(device(key.0, key.1)));
        }
    }
    for (_, task) in running {
        let _ = task.await;
    }
    Ok(())
}

/// A platform chosen on the command line, with its xenstore connection.
pub enum Connected {
    /// The simulated host named by `XEN_SIM`.
    Sim(SimPlatform, Xs),
    /// Real Xen.
    Xen(XenPlatform, Xs),
}

/// Opens the platform named `choice` (`sim` or `xen`; default `sim` when `XEN_SIM` is set,
/// else `xen`) and its xenstore. Errors are sentences for people.
pub async fn connect(choice: Option<&str>) -> Result<Connected, String> {
    let choice = choice.map(str::to_string).unwrap_or_else(|| {
        if std::env::var_os(xen_sim::domain::ENV).is_some() {
            "sim".into()
        } else {
            "xen".into()
        }
    });
    match choice.as_str() {
        "sim" => {
            let domain = xen_sim::SimDomain::from_env().map_err(|e| e.to_string())?;
            let xs = domain.xenstore().await.map_err(|e| e.to_string())?;
            Ok(Connected::Sim(SimPlatform::new(domain), xs))
        }
        "xen" => {
            let xs = Xs::open().await.map_err(|e| {
                format!("cannot reach xenstore ({e}); is this a Xen domain with xenfs mounted?")
            })?;
            let domid = xs
                .read_u64("domid")
                .await
                .map_err(|e| e.to_string())?
                .and_then(|d| u16::try_from(d).ok())
                .ok_or("cannot read this domain's id from xenstore (key `domid`)")?;
            Ok(Connected::Xen(XenPlatform::new(domid), xs))
        }
        other => Err(format!("unknown platform {other:?}: use `sim` or `xen`")),
    }
}

/// Writes `snapshot()` to `path` once a second (written aside and renamed, so a reader never
/// sees half a file), for the driver domain's supervisor.
pub fn spawn_stats_writer<F>(path: std::path::PathBuf, snapshot: F)
where
    F: Fn() -> Option<Vec<u8>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            let Some(bytes) = snapshot() else { continue };
            let tmp = path.with_extension("tmp");
            if std::fs::write(&tmp, bytes)
                .and_then(|()| std::fs::rename(&tmp, &path))
                .is_err()
            {
                tracing::warn!(path = %path.display(), "cannot write the stats file");
            }
        }
    });
}

/// The body of a backend's `main`: logs to stderr (`RUST_LOG`, default info), runs `body` on
/// a tokio runtime and turns an error into one line on stderr and a failing exit code.
pub fn main_with<F>(name: &str, body: F) -> std::process::ExitCode
where
    F: Future<Output = Result<(), String>>,
{
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(body) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
