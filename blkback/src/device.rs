//! One virtual block device's part of the XenBus handshake (the state machine itself is
//! `xen_backend::xenbus`, as Linux blkback's `xenbus.c` runs it).
//!
//! Probe: open the disk named by `params`, write the features in one transaction. Connect:
//! read and check the frontend's keys against what we advertised, start one worker per queue,
//! write the disk's geometry. Disconnect: stop the workers (in-flight I/O completes and is
//! answered, every grant is unmapped, every port unbound).
//!
//! Online resize, as Linux blkback's `xen_vbd_resize`: the backing's size is checked at every
//! health tick; a change is applied to the queues at once and, while connected, announced by
//! writing `sectors` and re-writing `state` in one transaction (Linux blkfront re-reads the
//! geometry when the backend's state is written again; Windows' XENVBD watches `sectors`).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use xen_abi::blkif::{VDISK_CDROM, VDISK_READONLY, XEN_IO_PROTO_ABI_X86_32};
use xen_abi::{DomId, GrantRef, Port};
use xen_backend::{DeviceDriver, XenbusDevice};
use xen_blkif::{Abi, DiscardLimits, Limits};
use xen_store::XenbusState;

use crate::platform::Platform;
use crate::stats::QueueStats;
use crate::storage::raw::{RawDisk, RawOptions};
use crate::storage::Disk;
use crate::worker::{start_ring, LiveSize, RingHandle, RingSpec};

/// What this backend offers every frontend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// The device kind served (`vbd` as the kernel backend; `qdisk` or `vbd3` to stand in for
    /// QEMU or tapdisk under a real toolstack).
    pub kind: String,
    /// `max-ring-page-order` (0..=4).
    pub max_ring_page_order: u32,
    /// `multi-queue-max-queues`.
    pub max_queues: u32,
    /// `feature-max-indirect-segments` (0: not offered).
    pub max_indirect_segments: u16,
    /// `feature-persistent`.
    pub persistent: bool,
    /// `feature-flush-cache`.
    pub flush: bool,
    /// `feature-barrier`.
    pub barrier: bool,
    /// `feature-discard` (also subject to the disk and the toolstack's `discard-enable`).
    pub discard: bool,
    /// For frontends without persistent grants: grant-copy the data through a bounce buffer
    /// (true) or map the guest's pages in one batch per request (false).
    pub grant_copy: bool,
    /// Most persistent grants a queue keeps mapped.
    pub max_persistent_grants: usize,
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            kind: "vbd".into(),
            max_ring_page_order: 4,
            max_queues: 4,
            max_indirect_segments: 256,
            persistent: true,
            flush: true,
            barrier: true,
            discard: true,
            grant_copy: true,
            max_persistent_grants: crate::MAX_PERSISTENT_GRANTS,
        }
    }
}

/// The device's view of one frontend queue, read from xenstore.
struct QueueKeys {
    refs: Vec<GrantRef>,
    port: Port,
}

/// A device being served.
pub(crate) struct Device<P: Platform> {
    platform: Arc<P>,
    config: Arc<BackendConfig>,
    frontend: DomId,
    devid: u32,
    disk: Option<Arc<RawDisk>>,
    limits: Option<Limits>,
    /// The disk's size now, shared with the queues.
    size: Option<LiveSize>,
    /// The size last written to `sectors`.
    announced: Option<u64>,
    /// The frontend's `device-type` is `cdrom` (`info` then carries `VDISK_CDROM`).
    cdrom: bool,
    queues: Vec<RingHandle>,
    registry: StatsRegistry,
}

/// A copy of every connected device's counters.
pub fn snapshot(registry: &StatsRegistry) -> Vec<crate::stats::DeviceSnapshot> {
    registry
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .map(
            |(&(frontend, devid), queues)| crate::stats::DeviceSnapshot {
                frontend,
                devid,
                queues: queues.iter().map(|q| q.snapshot()).collect(),
            },
        )
        .collect()
}

/// Counters of every connected device's queues, by (frontend, devid).
pub type StatsRegistry =
    Arc<std::sync::Mutex<std::collections::BTreeMap<(DomId, u32), Vec<Arc<QueueStats>>>>>;

fn parse_u32(v: &[u8]) -> Option<u32> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

impl<P: Platform> Device<P> {
    pub(crate) fn new(
        platform: Arc<P>,
        config: Arc<BackendConfig>,
        registry: StatsRegistry,
        frontend: DomId,
        devid: u32,
    ) -> Self {
        Self {
            platform,
            config,
            frontend,
            devid,
            disk: None,
            limits: None,
            size: None,
            announced: None,
            cdrom: false,
            queues: Vec::new(),
            registry,
        }
    }

    /// Reads the toolstack's keys, opens the disk, advertises features.
    async fn probe_disk(&mut self, dev: &XenbusDevice) -> Result<(), String> {
        let params = dev
            .backend_key("params")
            .await?
            .ok_or("no params key: nothing to serve")?;
        let target = params.strip_prefix("aio:").unwrap_or(&params).to_string();
        let read_only = dev
            .backend_key("mode")
            .await?
            .is_some_and(|m| m.starts_with('r'));
        // As Linux blkback: the toolstack's `device-type` in the frontend directory says
        // whether the guest should see a CD-ROM.
        self.cdrom = dev
            .frontend_key("device-type")
            .await?
            .is_some_and(|t| t == "cdrom");
        let sector_size = dev
            .backend_key("sector-size-hint")
            .await?
            .and_then(|v| parse_u32(v.as_bytes()));
        let disk = RawDisk::open(
            &PathBuf::from(&target),
            RawOptions {
                read_only,
                sector_size,
                buffered: false,
            },
        )
        .map_err(|e| format!("cannot open {target}: {e}"))?;
        let info = disk.info();
        let discard_enabled = dev
            .backend_key("discard-enable")
            .await?
            .is_none_or(|v| v != "0");
        let discard =
            (self.config.discard && discard_enabled && info.discard).then_some(DiscardLimits {
                granularity: info.physical_sector_size,
                alignment: 0,
                secure: false,
            });
        self.limits = Some(Limits {
            sectors: info.sectors,
            sector_size: info.sector_size,
            read_only,
            max_indirect_segments: self.config.max_indirect_segments,
            flush: self.config.flush,
            barrier: self.config.barrier,
            discard,
        });
        self.size = Some(LiveSize::new(info.sectors));
        self.disk = Some(Arc::new(disk));
        let c = Arc::clone(&self.config);
        let be = dev.be.clone();
        dev.xs
            .transaction(|tx| {
                let (c, be) = (Arc::clone(&c), be.clone());
                async move {
                    let mut keys: Vec<(&str, String)> = vec![
                        ("feature-flush-cache", u8::from(c.flush).to_string()),
                        ("feature-barrier", u8::from(c.barrier).to_string()),
                        ("feature-persistent", u8::from(c.persistent).to_string()),
                        ("max-ring-page-order", c.max_ring_page_order.to_string()),
                        ("multi-queue-max-queues", c.max_queues.to_string()),
                    ];
                    if c.max_indirect_segments > 0 {
                        keys.push((
                            "feature-max-indirect-segments",
                            c.max_indirect_segments.to_string(),
                        ));
                    }
                    match discard {
                        Some(d) => {
                            keys.push(("feature-discard", "1".into()));
                            keys.push(("discard-granularity", d.granularity.to_string()));
                            keys.push(("discard-alignment", d.alignment.to_string()));
                        }
                        None => keys.push(("feature-discard", "0".into())),
                    }
                    for (k, v) in keys {
                        tx.write(&format!("{be}/{k}"), v.as_bytes()).await?;
                    }
                    Ok(())
                }
            })
            .await
            .map_err(|e| e.to_string())
    }

    async fn write_geometry(&mut self, dev: &XenbusDevice) -> Result<(), String> {
        let (Some(limits), Some(size)) = (self.limits, self.size.as_ref()) else {
            return Err("no disk".into());
        };
        let info = self.disk.as_ref().map(|d| d.info()).ok_or("no disk")?;
        let sectors = size.sectors();
        let mut flags = if limits.read_only { VDISK_READONLY } else { 0 };
        if self.cdrom {
            flags |= VDISK_CDROM;
        }
        for (k, v) in [
            ("sectors", sectors.to_string()),
            ("info", flags.to_string()),
            ("sector-size", info.sector_size.to_string()),
            (
                "physical-sector-size",
                info.physical_sector_size.to_string(),
            ),
        ] {
            dev.write_backend_key(k, &v).await?;
        }
        self.announced = Some(sectors);
        Ok(())
    }

    /// Notices a resized backing disk: the queues check requests against the new size from
    /// their next pass, and a connected frontend is told.
    async fn check_size(&mut self, dev: &XenbusDevice) {
        let (Some(disk), Some(size)) = (self.disk.as_ref(), self.size.as_ref()) else {
            return;
        };
        match disk.sectors_now() {
            Ok(now) if now != size.sectors() => {
                tracing::info!(
                    frontend = self.frontend,
                    devid = self.devid,
                    before = size.sectors(),
                    now,
                    "blkback: the disk was resized"
                );
                size.set(now);
                if let Some(limits) = self.limits.as_mut() {
                    limits.sectors = now;
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(
                    frontend = self.frontend,
                    devid = self.devid,
                    "blkback: cannot read the disk's size: {e}"
                );
                return;
            }
        }
        let now = size.sectors();
        if dev.state() != XenbusState::Connected || self.announced.is_none_or(|a| a == now) {
            return;
        }
        let be = dev.be.clone();
        let state = dev.state();
        let written = dev
            .xs
            .transaction(|tx| {
                let be = be.clone();
                async move {
                    tx.write(&format!("{be}/sectors"), now.to_string().as_bytes())
                        .await?;
                    tx.write_state(&format!("{be}/state"), state).await
                }
            })
            .await;
        match written {
            Ok(()) => self.announced = Some(now),
            // Tried again at the next tick.
            Err(e) => tracing::warn!(
                frontend = self.frontend,
                devid = self.devid,
                "blkback: cannot announce the new disk size: {e}"
            ),
        }
    }

    /// Refuses a frontend that counts sectors in units of a `sector-size` above 512 where
    /// blkif counts 512-byte units. Windows PV blkfront writes `feature-large-sector-size`
    /// and uses `sector-size` units for `sectors`, `sector_number` and the segments' sectors
    /// (as QEMU's qdisk does); blkif.h has since deprecated that node and says every unit is
    /// 512 bytes, as Linux uses and we serve. With 512-byte logical sectors both agree; with
    /// larger ones such a frontend would read and write the wrong places, so it is refused
    /// with an error that says so instead.
    async fn check_sector_units(dev: &XenbusDevice, sector_size: u32) -> Result<(), String> {
        let large = dev
            .frontend_key("feature-large-sector-size")
            .await?
            .is_some_and(|v| v.trim() != "0");
        if large {
            return Err(format!(
                "the frontend counts sectors in units of sector-size (it writes \
                 feature-large-sector-size, as Windows PV drivers do) but blkif counts 512-byte \
                 units and this disk has {sector_size}-byte sectors: give this guest a disk with \
                 512-byte logical sectors"
            ));
        }
        Ok(())
    }

    /// Reads one queue's keys from `dir`.
    async fn queue_keys(dev: &XenbusDevice, dir: &str, order: u32) -> Result<QueueKeys, String> {
        let refs = if order == 0 {
            vec![dev.number(&format!("{dir}/ring-ref")).await?]
        } else {
            let mut refs = Vec::new();
            for i in 0..(1u32 << order) {
                refs.push(dev.number(&format!("{dir}/ring-ref{i}")).await?);
            }
            refs
        };
        if refs.iter().collect::<HashSet<_>>().len() != refs.len() {
            return Err("duplicated ring-ref".into());
        }
        let port = dev.number(&format!("{dir}/event-channel")).await?;
        Ok(QueueKeys { refs, port })
    }

    /// Reads and checks the frontend's keys against what we advertised, and starts the queues.
    async fn start(&mut self, dev: &XenbusDevice, reattach: bool) -> Result<(), String> {
        let fe = dev.fe.clone();
        let queues = match dev.frontend_key("multi-queue-num-queues").await? {
            None => 1,
            Some(v) => v.parse().map_err(|_| "bad multi-queue-num-queues")?,
        };
        if queues == 0 || queues > self.config.max_queues {
            return Err(format!(
                "frontend asked for {queues} queues; the maximum is {}",
                self.config.max_queues
            ));
        }
        let order = match dev.frontend_key("ring-page-order").await? {
            None => 0,
            Some(v) => v.parse().map_err(|_| "bad ring-page-order")?,
        };
        if order > self.config.max_ring_page_order {
            return Err(format!(
                "ring-page-order {order} is above the advertised {}",
                self.config.max_ring_page_order
            ));
        }
        let protocol = dev.frontend_key("protocol").await?;
        let abi = Abi::from_protocol(protocol.as_deref().map(str::as_bytes))
            .map_err(|e| e.to_string())?;
        let persistent = self.config.persistent
            && dev
                .frontend_key("feature-persistent")
                .await?
                .is_some_and(|v| v == "1");
        if let Some(limits) = self.limits.filter(|l| l.sector_size > 512) {
            Self::check_sector_units(dev, limits.sector_size).await?;
        }
        let mut keys = Vec::new();
        for q in 0..queues {
            let dir = if queues == 1 {
                fe.clone()
            } else {
                format!("{fe}/queue-{q}")
            };
            keys.push(Self::queue_keys(dev, &dir, order).await?);
        }
        let (Some(disk), Some(limits), Some(size)) =
            (self.disk.clone(), self.limits, self.size.clone())
        else {
            return Err("no disk".into());
        };
        let grants = self.platform.grants().map_err(|e| e.to_string())?;
        let mut all_stats = Vec::new();
        for (q, k) in keys.into_iter().enumerate() {
            let spec = RingSpec {
                frontend: self.frontend,
                ring_refs: k.refs,
                port: k.port,
                abi,
                persistent,
                grant_copy: self.config.grant_copy,
                max_persistent_grants: self.config.max_persistent_grants,
                limits,
                size: size.clone(),
                name: format!("blkback-d{}-{}-q{q}", self.frontend, self.devid),
                reattach,
            };
            let evtchn = self.platform.evtchn().map_err(|e| e.to_string())?;
            let stats = Arc::new(QueueStats::default());
            match start_ring(
                spec,
                Arc::clone(&grants),
                evtchn,
                disk.as_ref(),
                Arc::clone(&stats),
            ) {
                Ok(h) => {
                    self.queues.push(h);
                    all_stats.push(stats);
                }
                Err(e) => {
                    self.stop_queues().await;
                    return Err(format!("queue {q}: {e}"));
                }
            }
        }
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert((self.frontend, self.devid), all_stats);
        tracing::info!(
            frontend = self.frontend,
            devid = self.devid,
            queues,
            order,
            persistent,
            abi = if abi == Abi::X86_32 {
                XEN_IO_PROTO_ABI_X86_32
            } else {
                "native"
            },
            "blkback connected"
        );
        Ok(())
    }

    /// Stops every queue (waiting for in-flight I/O), unmapping and unbinding everything.
    async fn stop_queues(&mut self) {
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&(self.frontend, self.devid));
        xen_backend::worker::stop_all(std::mem::take(&mut self.queues)).await;
    }
}

impl<P: Platform> DeviceDriver for Device<P> {
    async fn probe(&mut self, dev: &XenbusDevice) -> Result<(), String> {
        self.probe_disk(dev).await
    }

    async fn connect(&mut self, dev: &XenbusDevice, reattach: bool) -> Result<(), String> {
        self.start(dev, reattach).await?;
        // A frontend we re-attach to knows the size its backend last wrote: if the disk was
        // resized meanwhile, the next tick announces it (a plain write of `sectors` would not
        // reach Linux blkfront, which re-reads it on a state event).
        let known = if reattach {
            dev.backend_key("sectors")
                .await?
                .and_then(|v| v.parse().ok())
        } else {
            None
        };
        self.write_geometry(dev).await?;
        if known.is_some() {
            self.announced = known;
        }
        Ok(())
    }

    async fn disconnect(&mut self) {
        self.stop_queues().await;
    }

    fn failed(&self) -> bool {
        self.queues.iter().any(RingHandle::failed)
    }

    async fn tick(&mut self, dev: &XenbusDevice) {
        self.check_size(dev).await;
    }
}
