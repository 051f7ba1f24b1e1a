//! The `blkback` command: serve every block device placed on this driver domain.

use std::sync::Arc;

use clap::Parser;

use crate::backend::Backend;
use crate::device::BackendConfig;
use crate::platform::Platform;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    name = "blkback",
    about = "Userspace Xen block backend (blkif on io_uring)"
)]
pub struct Options {
    /// Where the Xen facilities come from: `sim` (the simulated host named by XEN_SIM) or `xen`
    /// (/dev/xen/*). Default: `sim` when XEN_SIM is set, else `xen`.
    #[arg(long)]
    pub platform: Option<String>,
    /// The device kind to serve (the `backend/<kind>` directory).
    #[arg(long, default_value = "vbd")]
    pub kind: String,
    /// Largest `multi-queue-num-queues` accepted.
    #[arg(long, default_value_t = 4)]
    pub max_queues: u32,
    /// Largest `ring-page-order` accepted (0..=4).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(0..=4))]
    pub max_ring_page_order: u32,
    /// Segments per indirect request offered (0 disables indirect descriptors).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u16).range(0..=4096))]
    pub max_indirect_segments: u16,
    /// Do not offer persistent grants.
    #[arg(long)]
    pub no_persistent: bool,
    /// Do not offer discard.
    #[arg(long)]
    pub no_discard: bool,
    /// For frontends without persistent grants, map the pages of every request instead of
    /// grant-copying the data of small ones (up to 11 segments; larger requests are always
    /// mapped in one batch).
    #[arg(long)]
    pub map_non_persistent: bool,
    /// Most persistent grants each queue keeps mapped (Linux blkback's default is 1056, what
    /// Linux blkfront's defaults keep in flight; frontends with more in flight make the
    /// least-recently-used ones be unmapped and mapped again).
    #[arg(long, default_value_t = crate::MAX_PERSISTENT_GRANTS)]
    pub max_persistent_grants: usize,
    /// Write every connected device's counters to this file as JSON, once a second (for the
    /// driver domain's supervisor).
    #[arg(long)]
    pub stats_file: Option<std::path::PathBuf>,
}

impl Options {
    fn config(&self) -> BackendConfig {
        BackendConfig {
            kind: self.kind.clone(),
            max_ring_page_order: self.max_ring_page_order,
            max_queues: self.max_queues.max(1),
            max_indirect_segments: self.max_indirect_segments,
            persistent: !self.no_persistent,
            flush: true,
            barrier: true,
            discard: !self.no_discard,
            grant_copy: !self.map_non_persistent,
            max_persistent_grants: self.max_persistent_grants.max(1),
        }
    }
}

async fn serve<P: Platform>(
    platform: P,
    xs: xen_store::Xs,
    config: BackendConfig,
    stats_file: Option<std::path::PathBuf>,
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
    let config = options.config();
    let stats_file = options.stats_file.clone();
    match xen_backend::connect(options.platform.as_deref()).await? {
        xen_backend::Connected::Sim(p, xs) => serve(p, xs, config, stats_file).await,
        xen_backend::Connected::Xen(p, xs) => serve(p, xs, config, stats_file).await,
    }
}
