//! One vif's part of the XenBus handshake (the state machine itself is `xen_backend::xenbus`,
//! as Linux netback's `xenbus.c` runs it), plus the host-side work the Xen `vif-bridge`
//! hotplug script does.
//!
//! Probe: read the toolstack's keys (`mac`, `bridge`, `mtu`, `rate`), create the TAP device
//! `vif<domid>.<devid>` (kept alive by a detached anchor queue across reconnects), bridge it,
//! write `hotplug-status` = connected, advertise the features. Connect: read and check the
//! frontend's keys, attach one TAP queue and start one worker per ring queue (and the control
//! ring). Disconnect: stop the workers (rings unmapped, ports unbound). The `rate` key and the
//! frontend's `request-multicast-control` are watched and apply live.

use std::path::PathBuf;
use std::sync::Arc;

use tap::{Tap, TapQueue};
use xen_abi::{DomId, GrantRef, Port};
use xen_backend::Platform;
use xen_backend::{DeviceDriver, XenbusDevice};
use xen_netif::tx::TxFeatures;

use crate::ctrl::{start_ctrl, CtrlHandle};
use crate::queue::{start_queue, FrontFeatures, QueueHandle, QueueSpec, RxLimits};
use crate::rate::Rate;
use crate::shared::VifShared;
use crate::stats::{QueueStats, VifSnapshot};

/// What this backend offers every frontend, and where its host side lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetbackConfig {
    /// `multi-queue-max-queues` (1..=8).
    pub max_queues: u32,
    /// `feature-gso-tcpv4` / `feature-gso-tcpv6`.
    pub gso: bool,
    /// `feature-ipv6-csum-offload`.
    pub ipv6_csum: bool,
    /// `feature-multicast-control` and `feature-dynamic-multicast-control`.
    pub multicast_control: bool,
    /// `feature-ctrl-ring`.
    pub ctrl_ring: bool,
    /// `feature-split-event-channels`.
    pub split_event_channels: bool,
    /// The network namespace the TAP devices and bridges live in (`None`: ours).
    pub netns: Option<PathBuf>,
    /// Bounds toward the guest.
    pub rx_limits: RxLimits,
}

impl Default for NetbackConfig {
    fn default() -> Self {
        Self {
            max_queues: 8,
            gso: true,
            ipv6_csum: true,
            multicast_control: true,
            ctrl_ring: true,
            split_event_channels: true,
            netns: None,
            rx_limits: RxLimits::default(),
        }
    }
}

/// Counters of every connected vif.
pub type StatsRegistry =
    Arc<std::sync::Mutex<std::collections::BTreeMap<(DomId, u32), (String, Vec<Arc<QueueStats>>)>>>;

/// A copy of every connected vif's counters.
pub fn snapshot(registry: &StatsRegistry) -> Vec<VifSnapshot> {
    registry
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .map(|(&(frontend, devid), (ifname, queues))| VifSnapshot {
            frontend,
            devid,
            ifname: ifname.clone(),
            queues: queues.iter().map(|q| q.snapshot()).collect(),
        })
        .collect()
}

/// Parses a `mac` key ("00:16:3e:12:34:56").
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for byte in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// One queue's keys.
struct QueueKeys {
    tx_ref: GrantRef,
    rx_ref: GrantRef,
    tx_port: Port,
    rx_port: Option<Port>,
}

/// A vif being served.
pub(crate) struct Device<P: Platform> {
    platform: Arc<P>,
    config: Arc<NetbackConfig>,
    frontend: DomId,
    devid: u32,
    ifname: String,
    /// Keeps the TAP device alive between connections; detached, so it is handed no frames.
    anchor: Option<TapQueue>,
    rate: Option<Rate>,
    shared: Option<Arc<VifShared>>,
    queues: Vec<QueueHandle>,
    ctrl: Option<CtrlHandle>,
    registry: StatsRegistry,
}

impl<P: Platform> Device<P> {
    pub(crate) fn new(
        platform: Arc<P>,
        config: Arc<NetbackConfig>,
        registry: StatsRegistry,
        frontend: DomId,
        devid: u32,
    ) -> Self {
        Self {
            platform,
            config,
            frontend,
            devid,
            ifname: format!("vif{frontend}.{devid}"),
            anchor: None,
            rate: None,
            shared: None,
            queues: Vec::new(),
            ctrl: None,
            registry,
        }
    }

    /// Reads the toolstack's keys, sets up the host side, advertises features.
    async fn probe_vif(&mut self, dev: &XenbusDevice) -> Result<(), String> {
        let mac = dev.backend_key("mac").await?;
        // Validated as Linux netback does; the guest uses it, the host side does not.
        mac.as_deref()
            .and_then(parse_mac)
            .ok_or("no valid mac key (expected six hex bytes like 00:16:3e:00:00:01)")?;
        let bridge = dev.backend_key("bridge").await?;
        let mtu = match dev.backend_key("mtu").await? {
            Some(m) => m
                .parse::<u32>()
                .ok()
                .filter(|m| (68..=65535).contains(m))
                .ok_or(format!("bad mtu key {m:?}"))?,
            None => 1500,
        };
        self.rate = dev.backend_key("rate").await?.and_then(|r| Rate::parse(&r));
        self.setup_host_side(bridge.as_deref(), mtu)?;
        dev.write_backend_key("hotplug-status", "connected").await?;
        let c = Arc::clone(&self.config);
        let be = dev.be.clone();
        dev.xs
            .transaction(|tx| {
                let (c, be) = (Arc::clone(&c), be.clone());
                async move {
                    let flag = |b: bool| u8::from(b).to_string();
                    let keys: Vec<(&str, String)> = vec![
                        ("feature-sg", "1".into()),
                        ("feature-gso-tcpv4", flag(c.gso)),
                        ("feature-gso-tcpv6", flag(c.gso)),
                        ("feature-ipv6-csum-offload", flag(c.ipv6_csum)),
                        ("feature-rx-copy", "1".into()),
                        ("feature-rx-flip", "0".into()),
                        ("feature-multicast-control", flag(c.multicast_control)),
                        (
                            "feature-dynamic-multicast-control",
                            flag(c.multicast_control),
                        ),
                        ("feature-split-event-channels", flag(c.split_event_channels)),
                        ("multi-queue-max-queues", c.max_queues.to_string()),
                        ("feature-ctrl-ring", flag(c.ctrl_ring)),
                    ];
                    for (k, v) in keys {
                        tx.write(&format!("{be}/{k}"), v.as_bytes()).await?;
                    }
                    Ok(())
                }
            })
            .await
            .map_err(|e| e.to_string())
    }

    /// Creates the TAP device, names its MAC as the vif scripts do (fe:ff:ff:ff:ff:ff, so the
    /// bridge never takes the guest's address), sets its MTU, bridges it and brings it up.
    fn setup_host_side(&mut self, bridge: Option<&str>, mtu: u32) -> Result<(), String> {
        let netns = self.config.netns.as_deref();
        let mut tap = Tap::create(&self.ifname, 1, netns)
            .map_err(|e| format!("cannot create TAP device {}: {e}", self.ifname))?;
        let anchor = tap
            .take_queues()
            .pop()
            .ok_or("TAP device without a queue")?;
        Tap::detach(&anchor).map_err(|e| format!("cannot detach the anchor queue: {e}"))?;
        let link = tap.link();
        link.set_mac([0xfe, 0xff, 0xff, 0xff, 0xff, 0xff])
            .and_then(|()| link.set_mtu(mtu))
            .map_err(|e| format!("cannot configure {}: {e}", self.ifname))?;
        if let Some(bridge) = bridge.filter(|b| !b.is_empty()) {
            link.add_to_bridge(bridge)
                .map_err(|e| format!("cannot add {} to bridge {bridge}: {e}", self.ifname))?;
        }
        link.set_up(true)
            .map_err(|e| format!("cannot bring {} up: {e}", self.ifname))?;
        self.anchor = Some(anchor);
        Ok(())
    }

    /// Applies the live settings: the `rate` key and `request-multicast-control`.
    async fn refresh_live(&mut self, dev: &XenbusDevice) -> Result<(), String> {
        let rate = dev.backend_key("rate").await?.and_then(|r| Rate::parse(&r));
        if rate != self.rate {
            self.rate = rate;
            if let Some(shared) = &self.shared {
                shared.set_rate(rate);
            }
        }
        if let Some(shared) = &self.shared {
            let on = self.config.multicast_control
                && dev.frontend_key("request-multicast-control").await? == Some("1".into());
            shared
                .mcast
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .enabled = on;
        }
        Ok(())
    }

    async fn flag(dev: &XenbusDevice, key: &str) -> Result<Option<bool>, String> {
        Ok(dev.frontend_key(key).await?.map(|v| v == "1"))
    }

    async fn queue_keys(dev: &XenbusDevice, dir: &str, split: bool) -> Result<QueueKeys, String> {
        let tx_ref = dev.number(&format!("{dir}/tx-ring-ref")).await?;
        let rx_ref = dev.number(&format!("{dir}/rx-ring-ref")).await?;
        let has_split = dev
            .read(&format!("{dir}/event-channel-tx"))
            .await?
            .is_some();
        let (tx_port, rx_port) = if split && has_split {
            (
                dev.number(&format!("{dir}/event-channel-tx")).await?,
                Some(dev.number(&format!("{dir}/event-channel-rx")).await?),
            )
        } else {
            (dev.number(&format!("{dir}/event-channel")).await?, None)
        };
        if tx_ref == rx_ref {
            return Err("tx-ring-ref and rx-ring-ref are the same grant".into());
        }
        Ok(QueueKeys {
            tx_ref,
            rx_ref,
            tx_port,
            rx_port,
        })
    }

    /// Reads and checks the frontend's keys and starts the queues.
    async fn start(&mut self, dev: &XenbusDevice, reattach: bool) -> Result<(), String> {
        let queues = match dev.frontend_key("multi-queue-num-queues").await? {
            None => 1,
            Some(v) => v.parse::<u32>().map_err(|_| "bad multi-queue-num-queues")?,
        };
        if queues == 0 || queues > self.config.max_queues {
            return Err(format!(
                "frontend asked for {queues} queues; the maximum is {}",
                self.config.max_queues
            ));
        }
        if Self::flag(dev, "request-rx-copy").await? != Some(true) {
            return Err("frontend does not support rx-copy (request-rx-copy)".into());
        }
        if Self::flag(dev, "feature-rx-notify").await? != Some(true) {
            return Err("feature-rx-notify is mandatory".into());
        }
        let front = FrontFeatures {
            sg: Self::flag(dev, "feature-sg").await?.unwrap_or(false),
            gso_tcpv4: Self::flag(dev, "feature-gso-tcpv4").await?.unwrap_or(false),
            gso_tcpv6: Self::flag(dev, "feature-gso-tcpv6").await?.unwrap_or(false),
            csum: !Self::flag(dev, "feature-no-csum-offload")
                .await?
                .unwrap_or(false),
            ipv6_csum: Self::flag(dev, "feature-ipv6-csum-offload")
                .await?
                .unwrap_or(false),
        };
        let mcast = self.config.multicast_control
            && Self::flag(dev, "request-multicast-control")
                .await?
                .unwrap_or(false);
        let mut keys = Vec::new();
        for q in 0..queues {
            let dir = if queues == 1 {
                dev.fe.clone()
            } else {
                format!("{}/queue-{q}", dev.fe)
            };
            keys.push(Self::queue_keys(dev, &dir, self.config.split_event_channels).await?);
        }
        let ctrl_keys = if self.config.ctrl_ring {
            match dev.frontend_key("ctrl-ring-ref").await? {
                Some(_) => Some((
                    dev.number(&format!("{}/ctrl-ring-ref", dev.fe)).await?,
                    dev.number(&format!("{}/event-channel-ctrl", dev.fe))
                        .await?,
                )),
                None => None,
            }
        } else {
            None
        };
        let netns = self.config.netns.as_deref();
        let mut taps = Tap::create(&self.ifname, queues as usize, netns)
            .map_err(|e| format!("cannot attach TAP queues to {}: {e}", self.ifname))?
            .take_queues();
        if let Some(first) = taps.first() {
            Tap::set_offload(first, front.tap_offloads())
                .map_err(|e| format!("cannot set offloads on {}: {e}", self.ifname))?;
        }
        let shared = Arc::new(VifShared::new(queues, mcast, self.rate).map_err(|e| e.to_string())?);
        let grants = self.platform.grants().map_err(|e| e.to_string())?;
        let advertised = TxFeatures {
            gso_tcpv4: self.config.gso,
            gso_tcpv6: self.config.gso,
        };
        let mut all_stats = Vec::new();
        for (q, (k, tap)) in keys.into_iter().zip(taps.drain(..)).enumerate() {
            let spec = QueueSpec {
                frontend: self.frontend,
                index: q as u32,
                tx_ring_ref: k.tx_ref,
                rx_ring_ref: k.rx_ref,
                tx_port: k.tx_port,
                rx_port: k.rx_port,
                front,
                advertised,
                limits: self.config.rx_limits,
                name: format!("netback-d{}-{}-q{q}", self.frontend, self.devid),
                reattach,
            };
            let evtchn = self.platform.evtchn().map_err(|e| e.to_string())?;
            // A grant handle per queue, as an event channel: queues copy in parallel.
            let queue_grants = if q == 0 {
                Arc::clone(&grants)
            } else {
                self.platform.grants().map_err(|e| e.to_string())?
            };
            let stats = Arc::new(QueueStats::default());
            let started = start_queue(
                spec,
                queue_grants,
                evtchn,
                tap,
                Arc::clone(&shared),
                Arc::clone(&stats),
            );
            match started {
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
        if let Some((ring_ref, port)) = ctrl_keys {
            let evtchn = self.platform.evtchn().map_err(|e| e.to_string())?;
            match start_ctrl(
                self.frontend,
                ring_ref,
                port,
                reattach,
                Arc::clone(&grants),
                evtchn,
                Arc::clone(&shared),
                format!("netback-d{}-{}-ctrl", self.frontend, self.devid),
            ) {
                Ok(h) => self.ctrl = Some(h),
                Err(e) => {
                    self.stop_queues().await;
                    return Err(format!("control ring: {e}"));
                }
            }
        }
        self.shared = Some(shared);
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                (self.frontend, self.devid),
                (self.ifname.clone(), all_stats),
            );
        tracing::info!(
            frontend = self.frontend,
            devid = self.devid,
            queues,
            ?front,
            ctrl = self.ctrl.is_some(),
            "netback connected"
        );
        Ok(())
    }

    /// Stops every queue and the control ring, unmapping and unbinding everything.
    async fn stop_queues(&mut self) {
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&(self.frontend, self.devid));
        self.shared = None;
        let mut workers = std::mem::take(&mut self.queues);
        workers.extend(self.ctrl.take());
        xen_backend::worker::stop_all(workers).await;
    }
}

impl<P: Platform> DeviceDriver for Device<P> {
    async fn probe(&mut self, dev: &XenbusDevice) -> Result<(), String> {
        self.probe_vif(dev).await
    }

    async fn connect(&mut self, dev: &XenbusDevice, reattach: bool) -> Result<(), String> {
        self.start(dev, reattach).await
    }

    async fn disconnect(&mut self) {
        self.stop_queues().await;
    }

    fn failed(&self) -> bool {
        self.queues.iter().any(QueueHandle::failed)
            || self.ctrl.as_ref().is_some_and(CtrlHandle::failed)
    }

    fn frontend_watches(&self) -> &'static [&'static str] {
        &["request-multicast-control"]
    }

    async fn refresh(&mut self, dev: &XenbusDevice) -> Result<(), String> {
        self.refresh_live(dev).await
    }

    async fn remove(&mut self, dev: &XenbusDevice) {
        let _ = dev.xs.rm(&format!("{}/hotplug-status", dev.be)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::parse_mac;

    #[test]
    fn mac_keys() {
        assert_eq!(
            parse_mac("00:16:3e:0a:ff:01"),
            Some([0, 0x16, 0x3e, 0x0a, 0xff, 0x01])
        );
        for bad in [
            "",
            "00:16:3e:0a:ff",
            "00:16:3e:0a:ff:01:02",
            "0:16:3e:0a:ff:01",
            "zz:16:3e:0a:ff:01",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }
}
