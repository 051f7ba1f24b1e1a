//! The `netback` command: serve every vif placed on this network driver domain.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use xen_backend::Platform;

use crate::backend::Backend;
use crate::device::NetbackConfig;
use crate::queue::RxLimits;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    name = "netback",
    about = "Userspace Xen network backend (netif over TAP)"
)]
pub struct Options {
    /// Where the Xen facilities come from: `sim` (the simulated host named by XEN_SIM) or `xen`
    /// (/dev/xen/*). Default: `sim` when XEN_SIM is set, else `xen`.
    #[arg(long)]
    pub platform: Option<String>,
    /// Largest `multi-queue-num-queues` accepted (1..=8).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=8))]
    pub max_queues: u32,
    /// Do not offer TCP segmentation offload.
    #[arg(long)]
    pub no_gso: bool,
    /// Do not offer IPv6 checksum offload.
    #[arg(long)]
    pub no_ipv6_csum: bool,
    /// Do not offer multicast control.
    #[arg(long)]
    pub no_multicast_control: bool,
    /// Do not offer the control ring (hashing).
    #[arg(long)]
    pub no_ctrl_ring: bool,
    /// Do not offer split event channels.
    #[arg(long)]
    pub no_split_event_channels: bool,
    /// Create the vifs' TAP devices in this named network namespace (`ip netns add <name>`),
    /// where their bridges must be.
    #[arg(long)]
    pub netns: Option<String>,
    /// Seconds without guest RX buffers before a queue counts as stalled.
    #[arg(long, default_value_t = 60)]
    pub rx_stall_timeout: u64,
    /// Seconds a frame may wait for the guest before it is dropped.
    #[arg(long, default_value_t = 10)]
    pub rx_drain_timeout: u64,
    /// Write every connected vif's counters to this file as JSON, once a second.
    #[arg(long)]
    pub stats_file: Option<PathBuf>,
}

impl Options {
    /// The configuration these options describe.
    pub fn config(&self) -> Result<NetbackConfig, String> {
        let netns = match &self.netns {
            Some(name) => {
                let path = tap::netns_path(name);
                if !path.exists() {
                    return Err(format!(
                        "network namespace {name:?} does not exist; create it with `ip netns add {name}`"
                    ));
                }
                Some(path)
            }
            None => None,
        };
        Ok(NetbackConfig {
            max_queues: self.max_queues,
            gso: !self.no_gso,
            ipv6_csum: !self.no_ipv6_csum,
            multicast_control: !self.no_multicast_control,
            ctrl_ring: !self.no_ctrl_ring,
            split_event_channels: !self.no_split_event_channels,
            netns,
            rx_limits: RxLimits {
                stall_timeout: Duration::from_secs(self.rx_stall_timeout.max(1)),
                drain_timeout: Duration::from_secs(self.rx_drain_timeout.max(1)),
                ..RxLimits::default()
            },
        })
    }
}

async fn serve<P: Platform>(
    platform: P,
    xs: xen_store::Xs,
    config: NetbackConfig,
    stats_file: Option<PathBuf>,
) -> Result<(), String> {
    let backend = Backend::new(Arc::new(platform), xs, config);
    if let Some(path) = stats_file {
        let registry = backend.stats();
        xen_backend::spawn_stats_writer(path, move || {
            serde_json::to_vec_pretty(&crate::device::snapshot(&registry)).ok()
        });
    }
    backend.run().await.map_err(|e| format!("xenstore: {e}"))
}

/// Runs the backend until xenstore goes away.
pub async fn run(options: Options) -> Result<(), String> {
    let config = options.config()?;
    let stats_file = options.stats_file.clone();
    match xen_backend::connect(options.platform.as_deref()).await? {
        xen_backend::Connected::Sim(p, xs) => serve(p, xs, config, stats_file).await,
        xen_backend::Connected::Xen(p, xs) => serve(p, xs, config, stats_file).await,
    }
}
