//! The `blkback` command: serve every block device placed on this driver domain.

use std::sync::Arc;

use clap::Parser;

use crate::backend::Backend;
use crate::device::BackendConfig;
use crate::platform::{Platform, SimPlatform, XenPlatform};

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
    /// For frontends without persistent grants, map their pages per request instead of
    /// grant-copying the data.
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
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Ok(json) = serde_json::to_vec_pretty(&crate::device::snapshot(&registry))
                else {
                    continue;
                };
                // Written aside and renamed, so a reader never sees half a file.
                let tmp = path.with_extension("tmp");
                if std::fs::write(&tmp, json)
                    .and_then(|()| std::fs::rename(&tmp, &path))
                    .is_err()
                {
                    tracing::warn!(path = %path.display(), "cannot write the stats file");
                }
            }
        });
    }
    backend.run().await.map_err(|e| format!("xenstore: {e}"))
}

/// Runs the backend until xenstore goes away.
pub async fn run(options: Options) -> Result<(), String> {
    let platform = options.platform.clone().unwrap_or_else(|| {
        if std::env::var_os(xen_sim::domain::ENV).is_some() {
            "sim".into()
        } else {
            "xen".into()
        }
    });
    let config = options.config();
    match platform.as_str() {
        "sim" => {
            let domain = xen_sim::SimDomain::from_env().map_err(|e| e.to_string())?;
            let xs = domain.xenstore().await.map_err(|e| e.to_string())?;
            serve(
                SimPlatform::new(domain),
                xs,
                config,
                options.stats_file.clone(),
            )
            .await
        }
        "xen" => {
            let xs = xen_store::Xs::open().await.map_err(|e| {
                format!("cannot reach xenstore ({e}); is this a Xen domain with xenfs mounted?")
            })?;
            let domid = xs
                .read_u64("domid")
                .await
                .map_err(|e| e.to_string())?
                .and_then(|d| u16::try_from(d).ok())
                .ok_or("cannot read this domain's id from xenstore (key `domid`)")?;
            serve(
                XenPlatform::new(domid),
                xs,
                config,
                options.stats_file.clone(),
            )
            .await
        }
        other => Err(format!("unknown platform {other:?}: use `sim` or `xen`")),
    }
}
