//! `demu --serve`: the vGPUs the toolstack assigns to this domain through xenstore, as a GPU
//! driver domain runs them. Every device directory `backend/vgpu/<guest>/<devid>` under this
//! domain's home names one vGPU with the keys of `--vgpu` (`bdf`, and optionally `weight`,
//! `vnc`, `buffered`); demu emulates it with the shared renderer, then writes `hotplug-status`
//! = `connected` (or `error`, with the reason in `hotplug-error`, as the Xen hotplug scripts
//! report), and stops emulating it, destroying its ioreq server, when the directory goes away
//! or `online` becomes 0.

use std::sync::{Arc, Mutex};

use xen_devicemodel::DeviceModel;
use xen_evtchn::EventChannel;
use xen_store::Xs;

use crate::cli::{start_vgpu, Emulated, Options, VgpuSpec};
use crate::mux::Renderer;

/// Where the toolstack puts this domain's vGPUs.
pub const ROOT: &str = "backend/vgpu";

/// The vGPUs running now (screenshots and counters read it).
pub(crate) type Running<D> = Arc<Mutex<Vec<Arc<Emulated<D>>>>>;

/// Opens the device-model and event-channel handles for a guest.
pub(crate) type Open<D, E> = Arc<dyn Fn(u16) -> Result<(D, E), String> + Send + Sync>;

/// What the toolstack asked for, checked like `--vgpu`.
async fn read_spec(xs: &Xs, dir: &str, domid: u16) -> Result<VgpuSpec, String> {
    let mut parts = vec![format!("domid={domid}")];
    for key in ["bdf", "weight", "vnc", "buffered"] {
        let value = xs
            .read_opt(&format!("{dir}/{key}"))
            .await
            .map_err(|e| format!("cannot read {dir}/{key}: {e}"))?;
        if let Some(value) = value {
            let value = String::from_utf8(value).map_err(|_| format!("{dir}/{key} is not text"))?;
            if value.contains(',') {
                return Err(format!("{dir}/{key} = {value:?} holds a comma"));
            }
            parts.push(format!("{key}={value}"));
        }
    }
    if !parts.iter().any(|p| p.starts_with("bdf=")) {
        return Err(format!(
            "{dir} names no bdf (the vGPU's PCI address, e.g. 00:05.0)"
        ));
    }
    parts
        .join(",")
        .parse()
        .map_err(|e: String| format!("{dir}: {e}"))
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Serves one vGPU directory until it goes away.
async fn serve_one<D, E>(
    xs: Xs,
    dir: String,
    domid: u16,
    open: Open<D, E>,
    options: Arc<Options>,
    renderer: Arc<Renderer>,
    running: Running<D>,
) where
    D: DeviceModel + 'static,
    E: EventChannel + 'static,
{
    let started = match read_spec(&xs, &dir, domid).await {
        Ok(spec) => {
            open(domid).and_then(|(dm, evtchn)| start_vgpu(dm, evtchn, &spec, &options, &renderer))
        }
        Err(e) => Err(e),
    };
    let vgpu = match started {
        Ok(e) => Arc::new(e),
        Err(reason) => {
            tracing::warn!(%dir, "cannot emulate the vGPU: {reason}");
            let _ = xs
                .write(&format!("{dir}/hotplug-error"), reason.as_bytes())
                .await;
            let _ = xs.write(&format!("{dir}/hotplug-status"), b"error").await;
            return;
        }
    };
    lock(&running).push(Arc::clone(&vgpu));
    let _ = xs
        .write(&format!("{dir}/hotplug-status"), b"connected")
        .await;
    match xs.watch(&dir).await {
        Ok(mut watch) => {
            while watch.next().await.is_some() {
                let gone = !xs.exists(&dir).await.unwrap_or(false);
                let offline = xs
                    .read_opt(&format!("{dir}/online"))
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|v| v == b"0");
                if gone || offline {
                    break;
                }
            }
        }
        Err(e) => tracing::warn!(%dir, "cannot watch the vGPU's directory, so it stops: {e}"),
    }
    lock(&running).retain(|e| !Arc::ptr_eq(e, &vgpu));
    drop(vgpu);
    tracing::info!(%dir, "vGPU detached: its ioreq server is destroyed");
}

/// Serves every vGPU under [`ROOT`] until the connection ends.
pub(crate) async fn serve_xenstore<D, E>(
    xs: Xs,
    open: Open<D, E>,
    options: Arc<Options>,
    renderer: Arc<Renderer>,
    running: Running<D>,
) -> Result<(), String>
where
    D: DeviceModel + 'static,
    E: EventChannel + 'static,
{
    let watcher = xs.clone();
    xen_backend::serve_devices(&watcher, ROOT, move |domid, devid| {
        serve_one(
            xs.clone(),
            format!("{ROOT}/{domid}/{devid}"),
            domid,
            Arc::clone(&open),
            Arc::clone(&options),
            Arc::clone(&renderer),
            Arc::clone(&running),
        )
    })
    .await
    .map_err(|e| format!("cannot watch {ROOT} in xenstore: {e}"))
}
