//! The backend as a whole: watches the driver domain's `backend/<kind>` directory and runs one
//! device task per device the toolstack places there.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use xen_abi::DomId;
use xen_store::{path, Xs};

use crate::device::{BackendConfig, Device, StatsRegistry};
use crate::platform::Platform;

/// A block backend serving every device of its kind in its driver domain.
pub struct Backend<P: Platform> {
    platform: Arc<P>,
    xs: Xs,
    config: Arc<BackendConfig>,
    stats: StatsRegistry,
}

fn parse<T: std::str::FromStr>(s: &str) -> Option<T> {
    s.parse().ok()
}

impl<P: Platform> Backend<P> {
    /// A backend of `platform`'s domain, talking to xenstore through `xs`.
    pub fn new(platform: Arc<P>, xs: Xs, config: BackendConfig) -> Self {
        Self {
            platform,
            xs,
            config: Arc::new(config),
            stats: StatsRegistry::default(),
        }
    }

    /// Counters of the connected devices' queues.
    pub fn stats(&self) -> StatsRegistry {
        Arc::clone(&self.stats)
    }

    async fn devices(&self, root: &str) -> xen_store::Result<Vec<(DomId, u32)>> {
        let mut out = Vec::new();
        let frontends = match self.xs.directory(root).await {
            Ok(f) => f,
            Err(e) if e.is_not_found() => return Ok(out),
            Err(e) => return Err(e),
        };
        for fe in frontends {
            let Some(fe_id) = parse::<DomId>(&fe) else {
                continue;
            };
            let devids = match self.xs.directory(&format!("{root}/{fe}")).await {
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

    /// Serves devices until the xenstore connection closes.
    pub async fn run(&self) -> xen_store::Result<()> {
        let root = path::backend_root(self.platform.domid(), &self.config.kind);
        let mut watch = self.xs.watch(&root).await?;
        let mut running: HashMap<(DomId, u32), tokio::task::JoinHandle<()>> = HashMap::new();
        // Devices whose task ended (closed and offline, or failed): not restarted until their
        // directory is removed and written again.
        let mut ended: HashSet<(DomId, u32)> = HashSet::new();
        tracing::info!(root = %root, "blkback serving");
        while watch.next().await.is_some() {
            let present: HashSet<(DomId, u32)> = self.devices(&root).await?.into_iter().collect();
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
                let device = Device::new(
                    Arc::clone(&self.platform),
                    self.xs.clone(),
                    Arc::clone(&self.config),
                    Arc::clone(&self.stats),
                    key.0,
                    key.1,
                );
                running.insert(key, tokio::spawn(device.run()));
            }
        }
        for (_, task) in running {
            let _ = task.await;
        }
        Ok(())
    }
}
