//! One virtual block device's control plane: the backend half of the XenBus handshake, as
//! Linux blkback's `xenbus.c` runs it.
//!
//! Probe: open the disk named by `params`, write the features in one transaction, go to
//! `InitWait`. When the frontend is `Initialised` (or `Connected`): read and check its keys
//! against what we advertised, start one worker per queue, write the disk's geometry, go to
//! `Connected`. When it is `Closing`/`Closed`: stop the workers (in-flight I/O completes and is
//! answered, every grant is unmapped, every port unbound) and follow it; with `online` = 0 the
//! device is then gone. A backend started while its device is already `Connected` (a restart)
//! re-attaches to the live rings.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use xen_abi::blkif::{VDISK_READONLY, XEN_IO_PROTO_ABI_X86_32};
use xen_abi::{DomId, GrantRef, Port};
use xen_blkif::{Abi, DiscardLimits, Limits};
use xen_store::{path, XenbusState, Xs};

use crate::platform::Platform;
use crate::stats::QueueStats;
use crate::storage::raw::{RawDisk, RawOptions};
use crate::storage::Disk;
use crate::worker::{start_ring, RingHandle, RingSpec};

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
    xs: Xs,
    config: Arc<BackendConfig>,
    be: String,
    fe: String,
    frontend: DomId,
    devid: u32,
    disk: Option<Arc<RawDisk>>,
    limits: Option<Limits>,
    queues: Vec<RingHandle>,
    registry: StatsRegistry,
    state: XenbusState,
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
        xs: Xs,
        config: Arc<BackendConfig>,
        registry: StatsRegistry,
        frontend: DomId,
        devid: u32,
    ) -> Self {
        let be = path::backend_path(platform.domid(), &config.kind, frontend, devid);
        Self {
            platform,
            xs,
            config,
            be,
            fe: String::new(),
            frontend,
            devid,
            disk: None,
            limits: None,
            queues: Vec::new(),
            registry,
            state: XenbusState::Unknown,
        }
    }

    async fn set_state(&mut self, state: XenbusState) -> xen_store::Result<()> {
        self.xs
            .write_state(&format!("{}/state", self.be), state)
            .await?;
        self.state = state;
        tracing::info!(
            frontend = self.frontend,
            devid = self.devid,
            "blkback device is {state}"
        );
        Ok(())
    }

    /// `xenbus_dev_fatal`: reports the error in the backend directory and closes.
    async fn fatal(&mut self, message: &str) {
        tracing::warn!(
            frontend = self.frontend,
            devid = self.devid,
            "blkback device failed: {message}"
        );
        let _ = self
            .xs
            .write(&format!("{}/error", self.be), message.as_bytes())
            .await;
        self.disconnect().await;
        let _ = self.set_state(XenbusState::Closing).await;
    }

    /// Runs the device until its backend directory goes away, or it is closed and offline.
    pub(crate) async fn run(mut self) {
        match self.probe().await {
            Ok(()) => {}
            Err(e) => return self.fatal(&e).await,
        }
        let fe_state = format!("{}/state", self.fe);
        let (Ok(mut fe_watch), Ok(mut be_watch)) = (
            self.xs.watch(&fe_state).await,
            self.xs.watch(&self.be).await,
        ) else {
            return self.fatal("cannot watch the device's xenstore keys").await;
        };
        let mut health = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                ev = fe_watch.next() => if ev.is_none() { break },
                ev = be_watch.next() => if ev.is_none() { break },
                _ = health.tick() => {
                    if self.queues.iter().any(RingHandle::failed) {
                        self.fatal("frontend provided a bogus ring; device halted").await;
                    }
                    continue;
                }
            }
            match self.step().await {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => self.fatal(&e).await,
            }
        }
        self.disconnect().await;
    }

    /// Reads the toolstack's keys, opens the disk, advertises features.
    async fn probe(&mut self) -> Result<(), String> {
        let xs = &self.xs;
        let read = |key: &'static str| {
            let p = format!("{}/{key}", self.be);
            async move { xs.read_opt(&p).await.map_err(|e| e.to_string()) }
        };
        let fe = read("frontend").await?.ok_or("no frontend key")?;
        self.fe = String::from_utf8(fe).map_err(|_| "frontend path is not text")?;
        if self.fe != path::frontend_path(self.frontend, &self.config.kind, self.devid)
            && self.fe != path::frontend_path(self.frontend, "vbd", self.devid)
        {
            return Err(format!(
                "frontend path {:?} does not belong to domain {}",
                self.fe, self.frontend
            ));
        }
        let params = read("params")
            .await?
            .ok_or("no params key: nothing to serve")?;
        let params = String::from_utf8(params).map_err(|_| "params is not a path")?;
        let target = params.strip_prefix("aio:").unwrap_or(&params).to_string();
        let read_only = read("mode")
            .await?
            .is_some_and(|m| m.first() == Some(&b'r'));
        let sector_size = read("sector-size-hint").await?.and_then(|v| parse_u32(&v));
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
        let discard_enabled = read("discard-enable")
            .await?
            .is_none_or(|v| v.first() != Some(&b'0'));
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
        self.disk = Some(Arc::new(disk));
        let c = Arc::clone(&self.config);
        let be = self.be.clone();
        self.xs
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
            .map_err(|e| e.to_string())?;
        // A backend restarted under a connected frontend re-attaches to its live rings.
        let ours = self
            .xs
            .read_state(&format!("{}/state", self.be))
            .await
            .map_err(|e| e.to_string())?;
        let theirs = self
            .xs
            .read_state(&format!("{}/state", self.fe))
            .await
            .map_err(|e| e.to_string())?;
        if ours == XenbusState::Connected && theirs == XenbusState::Connected {
            tracing::info!(
                frontend = self.frontend,
                devid = self.devid,
                "re-attaching to a connected frontend"
            );
            self.connect(true).await?;
            self.state = XenbusState::Connected;
            return Ok(());
        }
        self.set_state(XenbusState::InitWait)
            .await
            .map_err(|e| e.to_string())
    }

    /// One watch event: re-read everything and act. `Ok(false)` ends the device.
    async fn step(&mut self) -> Result<bool, String> {
        let online = self
            .xs
            .read_opt(&format!("{}/online", self.be))
            .await
            .map_err(|e| e.to_string())?;
        let Some(_) = self
            .xs
            .read_opt(&format!("{}/state", self.be))
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(false); // the backend directory is gone: hot-unplugged
        };
        let online = online.is_some_and(|v| v.first() == Some(&b'1'));
        let theirs = self
            .xs
            .read_state(&format!("{}/state", self.fe))
            .await
            .map_err(|e| e.to_string())?;
        match theirs {
            XenbusState::Initialising | XenbusState::InitWait
                if self.state == XenbusState::Closed && online =>
            {
                self.set_state(XenbusState::InitWait)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            XenbusState::Initialised | XenbusState::Connected
                if self.state == XenbusState::InitWait =>
            {
                self.connect(false).await?;
                self.write_geometry().await?;
                self.set_state(XenbusState::Connected)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            XenbusState::Closing
                if self.state != XenbusState::Closing && self.state != XenbusState::Closed =>
            {
                self.disconnect().await;
                self.set_state(XenbusState::Closing)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            XenbusState::Closed | XenbusState::Unknown => {
                if self.state != XenbusState::Closed {
                    self.disconnect().await;
                    self.set_state(XenbusState::Closed)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                if !online {
                    return Ok(false);
                }
            }
            _ => {}
        }
        Ok(true)
    }

    async fn write_geometry(&self) -> Result<(), String> {
        let Some(limits) = self.limits else {
            return Err("no disk".into());
        };
        let info = self.disk.as_ref().map(|d| d.info()).ok_or("no disk")?;
        let flags = if limits.read_only { VDISK_READONLY } else { 0 };
        for (k, v) in [
            ("sectors", info.sectors.to_string()),
            ("info", flags.to_string()),
            ("sector-size", info.sector_size.to_string()),
            (
                "physical-sector-size",
                info.physical_sector_size.to_string(),
            ),
        ] {
            self.xs
                .write(&format!("{}/{k}", self.be), v.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Reads one queue's keys from `dir`.
    async fn queue_keys(&self, dir: &str, order: u32) -> Result<QueueKeys, String> {
        let xs = &self.xs;
        let num = |key: String| async move {
            xs.read_opt(&key)
                .await
                .map_err(|e| e.to_string())?
                .and_then(|v| parse_u32(&v))
                .ok_or(format!("missing or bad {key}"))
        };
        let refs = if order == 0 {
            vec![num(format!("{dir}/ring-ref")).await?]
        } else {
            let mut refs = Vec::new();
            for i in 0..(1u32 << order) {
                refs.push(num(format!("{dir}/ring-ref{i}")).await?);
            }
            refs
        };
        if refs.iter().collect::<HashSet<_>>().len() != refs.len() {
            return Err("duplicated ring-ref".into());
        }
        let port = num(format!("{dir}/event-channel")).await?;
        Ok(QueueKeys { refs, port })
    }

    /// Reads and checks the frontend's keys against what we advertised, and starts the queues.
    async fn connect(&mut self, reattach: bool) -> Result<(), String> {
        let xs = &self.xs;
        let fe = self.fe.clone();
        let opt = |key: &'static str| {
            let p = format!("{fe}/{key}");
            async move { xs.read_opt(&p).await.map_err(|e| e.to_string()) }
        };
        let queues = match opt("multi-queue-num-queues").await? {
            None => 1,
            Some(v) => parse_u32(&v).ok_or("bad multi-queue-num-queues")?,
        };
        if queues == 0 || queues > self.config.max_queues {
            return Err(format!(
                "frontend asked for {queues} queues; the maximum is {}",
                self.config.max_queues
            ));
        }
        let order = match opt("ring-page-order").await? {
            None => 0,
            Some(v) => parse_u32(&v).ok_or("bad ring-page-order")?,
        };
        if order > self.config.max_ring_page_order {
            return Err(format!(
                "ring-page-order {order} is above the advertised {}",
                self.config.max_ring_page_order
            ));
        }
        let abi =
            Abi::from_protocol(opt("protocol").await?.as_deref()).map_err(|e| e.to_string())?;
        let persistent = self.config.persistent
            && opt("feature-persistent")
                .await?
                .is_some_and(|v| v.first() == Some(&b'1'));
        let mut keys = Vec::new();
        for q in 0..queues {
            let dir = if queues == 1 {
                fe.clone()
            } else {
                format!("{fe}/queue-{q}")
            };
            keys.push(self.queue_keys(&dir, order).await?);
        }
        let (Some(disk), Some(limits)) = (self.disk.clone(), self.limits) else {
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
                    self.disconnect().await;
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
    async fn disconnect(&mut self) {
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&(self.frontend, self.devid));
        let queues = std::mem::take(&mut self.queues);
        if queues.is_empty() {
            return;
        }
        let _ = tokio::task::spawn_blocking(move || queues.into_iter().for_each(RingHandle::stop))
            .await;
    }
}
