//! The backend as a whole: watches the driver domain's `backend/<kind>` directory and runs one
//! device task per device the toolstack places there.

use std::sync::Arc;

use xen_backend::XenbusDevice;
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

    /// Serves devices until the xenstore connection closes.
    pub async fn run(&self) -> xen_store::Result<()> {
        let root = path::backend_root(self.platform.domid(), &self.config.kind);
        xen_backend::serve_devices(&self.xs, &root, |frontend, devid| {
            let dev = XenbusDevice::new(
                self.xs.clone(),
                path::backend_path(self.platform.domid(), &self.config.kind, frontend, devid),
                frontend,
                devid,
                "blkback",
            );
            let driver = Device::new(
                Arc::clone(&self.platform),
                Arc::clone(&self.config),
                Arc::clone(&self.stats),
                frontend,
                devid,
            );
            // A qdisk or vbd3 backend also serves frontends under `device/vbd`.
            let kinds = [self.config.kind.clone(), "vbd".to_string()];
            async move {
                let kinds: Vec<&str> = kinds.iter().map(String::as_str).collect();
                xen_backend::run_device(dev, driver, &kinds).await
            }
        })
        .await
    }
}
