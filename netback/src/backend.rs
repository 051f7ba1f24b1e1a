//! The backend as a whole: watches the driver domain's `backend/vif` directory and runs one
//! task per vif the toolstack places there.

use std::sync::Arc;

use xen_backend::Platform;
use xen_backend::XenbusDevice;
use xen_store::{path, Xs};

use crate::device::{Device, NetbackConfig, StatsRegistry};

/// A network backend serving every vif of its driver domain.
pub struct Backend<P: Platform> {
    platform: Arc<P>,
    xs: Xs,
    config: Arc<NetbackConfig>,
    stats: StatsRegistry,
}

impl<P: Platform> Backend<P> {
    /// A backend of `platform`'s domain, talking to xenstore through `xs`.
    pub fn new(platform: Arc<P>, xs: Xs, config: NetbackConfig) -> Self {
        Self {
            platform,
            xs,
            config: Arc::new(config),
            stats: StatsRegistry::default(),
        }
    }

    /// Counters of the connected vifs' queues.
    pub fn stats(&self) -> StatsRegistry {
        Arc::clone(&self.stats)
    }

    /// Serves vifs until the xenstore connection closes.
    pub async fn run(&self) -> xen_store::Result<()> {
        let root = path::backend_root(self.platform.domid(), "vif");
        xen_backend::serve_devices(&self.xs, &root, |frontend, devid| {
            let dev = XenbusDevice::new(
                self.xs.clone(),
                path::backend_path(self.platform.domid(), "vif", frontend, devid),
                frontend,
                devid,
                "netback",
            );
            let driver = Device::new(
                Arc::clone(&self.platform),
                Arc::clone(&self.config),
                Arc::clone(&self.stats),
                frontend,
                devid,
            );
            xen_backend::run_device(dev, driver, &["vif"])
        })
        .await
    }
}
