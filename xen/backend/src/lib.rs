//! What every Xen backend (blkback, netback) shares.
//!
//! - [`platform`]: where a backend's Xen handles come from, real Xen (`/dev/xen/*`) or the
//!   simulated host, behind one trait so the backend code is the same on both.
//! - [`serve_devices`]: the driver domain's side of device discovery: watch
//!   `backend/<kind>` and run one task per `<frontend-domid>/<devid>` the toolstack places there.

pub mod platform;

pub use platform::{Platform, SimPlatform, XenPlatform};

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
