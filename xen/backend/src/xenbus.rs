//! The backend half of the XenBus handshake, as Linux's backends (`xenbus.c` of blkback and
//! netback) run it, shared by every backend here; what differs per device type is a
//! [`DeviceDriver`].
//!
//! Probe: check the `frontend` key names the frontend's own directory, let the driver read the
//! toolstack's keys and advertise its features, go to `InitWait` — or, if both ends are already
//! `Connected` (a restarted backend), re-attach to the live rings. Then on every watch event
//! (the frontend's `state`, our own directory, and keys the driver names) re-read and act:
//! frontend `Initialised`/`Connected` → driver connects → `Connected`; `Closing` → driver
//! disconnects (every mapping and port released first) → `Closing`; `Closed` → `Closed`, and
//! with `online` = 0 (or the backend directory gone) the device ends (in a driver domain we then
//! remove the backend directory, as `xl devd` would); a frontend that starts over
//! (`Initialising`) takes the device back through `Closed` to `InitWait`. A driver that reports a
//! misbehaving frontend gets the device taken down with an `error` key (`xenbus_dev_fatal`).

use std::future::Future;
use std::time::Duration;

use xen_abi::DomId;
use xen_store::{path, XenbusState, Xs};

/// One device's place in xenstore and its backend state.
#[derive(Debug)]
pub struct XenbusDevice {
    /// Our xenstore connection.
    pub xs: Xs,
    /// The backend directory.
    pub be: String,
    /// The frontend directory (checked at probe).
    pub fe: String,
    /// The frontend domain.
    pub frontend: DomId,
    /// The device id.
    pub devid: u32,
    /// For logs: `blkback`, `netback`.
    pub label: &'static str,
    state: XenbusState,
}

impl XenbusDevice {
    /// The device at `be` (`/local/domain/<us>/backend/<kind>/<frontend>/<devid>`).
    pub fn new(xs: Xs, be: String, frontend: DomId, devid: u32, label: &'static str) -> Self {
        Self {
            xs,
            be,
            fe: String::new(),
            frontend,
            devid,
            label,
            state: XenbusState::Unknown,
        }
    }

    /// Reads a key (absolute path) as trimmed text, `None` if absent.
    pub async fn read(&self, key: &str) -> Result<Option<String>, String> {
        let v = self.xs.read_opt(key).await.map_err(|e| e.to_string())?;
        Ok(v.map(|v| String::from_utf8_lossy(&v).trim().to_string()))
    }

    /// Reads a key of the backend directory.
    pub async fn backend_key(&self, key: &str) -> Result<Option<String>, String> {
        self.read(&format!("{}/{key}", self.be)).await
    }

    /// Reads a key of the frontend directory.
    pub async fn frontend_key(&self, key: &str) -> Result<Option<String>, String> {
        self.read(&format!("{}/{key}", self.fe)).await
    }

    /// Reads a number from a key (absolute path); an error naming the key if absent or bad.
    pub async fn number(&self, key: &str) -> Result<u32, String> {
        self.read(key)
            .await?
            .and_then(|v| v.parse().ok())
            .ok_or(format!("missing or bad {key}"))
    }

    /// Writes a key of the backend directory.
    pub async fn write_backend_key(&self, key: &str, value: &str) -> Result<(), String> {
        self.xs
            .write(&format!("{}/{key}", self.be), value.as_bytes())
            .await
            .map_err(|e| e.to_string())
    }

    /// Our state, as last written.
    pub fn state(&self) -> XenbusState {
        self.state
    }

    async fn set_state(&mut self, state: XenbusState) -> Result<(), String> {
        self.xs
            .write_state(&format!("{}/state", self.be), state)
            .await
            .map_err(|e| e.to_string())?;
        self.state = state;
        tracing::info!(
            frontend = self.frontend,
            devid = self.devid,
            "{} device is {state}",
            self.label
        );
        Ok(())
    }

    async fn states(&self) -> Result<(XenbusState, XenbusState), String> {
        let ours = self.xs.read_state(&format!("{}/state", self.be)).await;
        let theirs = self.xs.read_state(&format!("{}/state", self.fe)).await;
        Ok((
            ours.map_err(|e| e.to_string())?,
            theirs.map_err(|e| e.to_string())?,
        ))
    }
}

/// What one device type does at each step of the handshake.
pub trait DeviceDriver: Send {
    /// Reads the toolstack's keys, prepares the device and advertises its features.
    fn probe(&mut self, dev: &XenbusDevice) -> impl Future<Output = Result<(), String>> + Send;

    /// Reads and checks the frontend's keys against what was advertised and starts serving;
    /// `reattach`: the rings are live (a restarted backend).
    fn connect(
        &mut self,
        dev: &XenbusDevice,
        reattach: bool,
    ) -> impl Future<Output = Result<(), String>> + Send;

    /// Stops serving; every mapping and port is released before it returns.
    fn disconnect(&mut self) -> impl Future<Output = ()> + Send;

    /// Whether a running queue found the frontend misbehaving.
    fn failed(&self) -> bool;

    /// Frontend keys (relative) watched besides `state`; [`DeviceDriver::refresh`] runs when
    /// any of them or our directory changes.
    fn frontend_watches(&self) -> &'static [&'static str] {
        &[]
    }

    /// Applies live settings after a watch event, before the state step.
    fn refresh(&mut self, dev: &XenbusDevice) -> impl Future<Output = Result<(), String>> + Send {
        let _ = dev;
        async { Ok(()) }
    }

    /// Periodic work while the device exists (every health check, 4 times a second): for
    /// blkback, noticing that its backing disk was resized.
    fn tick(&mut self, dev: &XenbusDevice) -> impl Future<Output = ()> + Send {
        let _ = dev;
        async {}
    }

    /// Cleans up once the device ends (after `disconnect`).
    fn remove(&mut self, dev: &XenbusDevice) -> impl Future<Output = ()> + Send {
        let _ = dev;
        async {}
    }
}

/// `xenbus_dev_fatal`: reports the error in the backend directory and closes.
async fn fatal<D: DeviceDriver>(dev: &mut XenbusDevice, driver: &mut D, message: &str) {
    tracing::warn!(
        frontend = dev.frontend,
        devid = dev.devid,
        "{} device failed: {message}",
        dev.label
    );
    let _ = dev.write_backend_key("error", message).await;
    driver.disconnect().await;
    let _ = dev.set_state(XenbusState::Closing).await;
}

/// Probes: the frontend check, the driver's probe, then `InitWait` or re-attach.
async fn probe<D: DeviceDriver>(
    dev: &mut XenbusDevice,
    driver: &mut D,
    frontend_kinds: &[&str],
) -> Result<(), String> {
    let fe = dev
        .backend_key("frontend")
        .await?
        .ok_or("no frontend key")?;
    if !frontend_kinds
        .iter()
        .any(|kind| fe == path::frontend_path(dev.frontend, kind, dev.devid))
    {
        return Err(format!(
            "frontend path {fe:?} does not belong to domain {}",
            dev.frontend
        ));
    }
    dev.fe = fe;
    driver.probe(dev).await?;
    if dev.states().await? == (XenbusState::Connected, XenbusState::Connected) {
        tracing::info!(
            frontend = dev.frontend,
            devid = dev.devid,
            "{}: re-attaching to a connected frontend",
            dev.label
        );
        driver.connect(dev, true).await?;
        dev.state = XenbusState::Connected;
        return Ok(());
    }
    dev.set_state(XenbusState::InitWait).await
}

/// One watch event: re-read everything and act. `Ok(false)` ends the device.
async fn step<D: DeviceDriver>(dev: &mut XenbusDevice, driver: &mut D) -> Result<bool, String> {
    let online = dev.backend_key("online").await?.is_some_and(|v| v == "1");
    if dev.backend_key("state").await?.is_none() {
        return Ok(false); // the backend directory is gone: hot-unplugged
    }
    driver.refresh(dev).await?;
    let (_, theirs) = dev.states().await?;
    let ours = dev.state;
    match theirs {
        XenbusState::Initialising | XenbusState::InitWait
            if online && ours != XenbusState::InitWait && ours != XenbusState::Unknown =>
        {
            // A frontend that starts over. Watch events coalesce, so its `Closed` may never
            // have been seen: walk Closing → Closed → InitWait as Linux netback's
            // `set_backend_state` does, releasing everything on the way.
            if ours != XenbusState::Closed {
                driver.disconnect().await;
                if ours != XenbusState::Closing {
                    dev.set_state(XenbusState::Closing).await?;
                }
                dev.set_state(XenbusState::Closed).await?;
            }
            dev.set_state(XenbusState::InitWait).await?;
        }
        XenbusState::Initialised | XenbusState::Connected if ours == XenbusState::InitWait => {
            driver.connect(dev, false).await?;
            dev.set_state(XenbusState::Connected).await?;
        }
        XenbusState::Closing if ours != XenbusState::Closing && ours != XenbusState::Closed => {
            driver.disconnect().await;
            dev.set_state(XenbusState::Closing).await?;
        }
        XenbusState::Closed | XenbusState::Unknown => {
            if ours != XenbusState::Closed {
                driver.disconnect().await;
                dev.set_state(XenbusState::Closed).await?;
            }
            if !online {
                return Ok(false);
            }
        }
        _ => {}
    }
    Ok(true)
}

/// Runs a device until its backend directory goes away, or it is closed and offline.
/// `frontend_kinds`: the device kinds whose frontend directory the `frontend` key may name.
pub async fn run_device<D: DeviceDriver>(
    mut dev: XenbusDevice,
    mut driver: D,
    frontend_kinds: &[&str],
) {
    if let Err(e) = probe(&mut dev, &mut driver, frontend_kinds).await {
        return fatal(&mut dev, &mut driver, &e).await;
    }
    let mut watches = Vec::new();
    let paths = [format!("{}/state", dev.fe), dev.be.clone()]
        .into_iter()
        .chain(
            driver
                .frontend_watches()
                .iter()
                .map(|k| format!("{}/{k}", dev.fe)),
        );
    for p in paths {
        match dev.xs.watch(&p).await {
            Ok(w) => watches.push(w),
            Err(_) => {
                return fatal(
                    &mut dev,
                    &mut driver,
                    "cannot watch the device's xenstore keys",
                )
                .await
            }
        }
    }
    let (tx, mut events) = tokio::sync::mpsc::channel::<()>(1);
    let forwarders: Vec<_> = watches
        .into_iter()
        .map(|mut w| {
            let tx = tx.clone();
            tokio::spawn(async move {
                while w.next().await.is_some() {
                    // A full channel already holds a wake-up: events coalesce.
                    let _ = tx.try_send(());
                }
            })
        })
        .collect();
    drop(tx);
    let mut health = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            ev = events.recv() => if ev.is_none() { break },
            _ = health.tick() => {
                if driver.failed() {
                    fatal(&mut dev, &mut driver, "the frontend misbehaved on a ring; device halted")
                        .await;
                }
                driver.tick(&dev).await;
                continue;
            }
        }
        match step(&mut dev, &mut driver).await {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => fatal(&mut dev, &mut driver, &e).await,
        }
    }
    forwarders.iter().for_each(tokio::task::JoinHandle::abort);
    driver.disconnect().await;
    driver.remove(&dev).await;
    remove_offline_directory(&dev).await;
}

/// Removes the backend directory of a device the toolstack took offline, when we run in a
/// driver domain. There `xl devd` would remove it after running the hotplug scripts, and libxl
/// in dom0 waits for that before it removes the frontend's directory (until then the guest
/// keeps the device); our backends do devd's part for their own devices, as they already write
/// `hotplug-status`. In dom0, libxl removes the directory itself.
async fn remove_offline_directory(dev: &XenbusDevice) {
    if path::parse_backend_path(&dev.be).is_none_or(|(backend, ..)| backend == 0) {
        return;
    }
    let offline = matches!(dev.backend_key("online").await, Ok(v) if v.as_deref() != Some("1"));
    let present = matches!(dev.backend_key("state").await, Ok(Some(_)));
    if offline && present {
        match dev.xs.rm(&dev.be).await {
            Ok(()) => tracing::info!(
                frontend = dev.frontend,
                devid = dev.devid,
                "{}: device removed; its backend directory is gone",
                dev.label
            ),
            Err(e) => tracing::warn!(
                frontend = dev.frontend,
                devid = dev.devid,
                "{}: cannot remove the backend directory {}: {e}",
                dev.label,
                dev.be
            ),
        }
    }
}
