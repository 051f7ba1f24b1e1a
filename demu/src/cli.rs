//! The `demu` command: emulate the vGPUs of one or more HVM guests from this domain (dom0 or
//! a GPU driver domain made their device model), all sharing one renderer: those named on the
//! command line, and with `--serve` those the toolstack attaches through xenstore. `SIGUSR1` writes
//! a PNG screenshot of every vGPU into `--screenshot-dir`; `SIGTERM`/`SIGINT` stop cleanly
//! (every ioreq server destroyed, the framebuffers released with the guests).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use clap::Parser;
use serde::Serialize;
use xen_devicemodel::DeviceModel;
use xen_evtchn::EventChannel;

use crate::bochs::{Vgpu, VgpuConfig};
use crate::display;
use crate::ioreq::Server;
use crate::mux::Renderer;
use crate::runner::{self, Running};
use crate::serve;
use crate::vnc::VncServer;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    name = "demu",
    about = "Discrete vGPU emulator: an ioreq server per HVM guest, one shared renderer"
)]
pub struct Options {
    /// Where the Xen facilities come from: `sim` (the simulated host named by XEN_SIM) or `xen`
    /// (/dev/xen/*). Default: `sim` when XEN_SIM is set, else `xen`.
    #[arg(long)]
    pub platform: Option<String>,
    /// A vGPU to emulate: `domid=N[,bdf=00:02.0][,weight=1][,vnc=127.0.0.1:5900][,buffered=on]`
    /// (`buffered=off`: no buffered ioreq ring, every VGA-memory write is synchronous). Repeat
    /// for several guests.
    #[arg(long = "vgpu", required_unless_present = "serve")]
    pub vgpus: Vec<VgpuSpec>,
    /// Also serve every vGPU the toolstack places under this domain's `backend/vgpu/<guest>/<id>`
    /// in xenstore (keys `bdf`, and optionally `weight`, `vnc`, `buffered`), as a GPU driver
    /// domain does, until the directory goes away or `online` becomes 0.
    #[arg(long)]
    pub serve: bool,
    /// First gfn of each framebuffer's home in its guest while BAR0 is not programmed (must be
    /// free guest-physical space; the guest's maxmem must leave 16 MiB for it).
    #[arg(long, default_value = "0x100000", value_parser = parse_u64)]
    pub vram_home_gfn: u64,
    /// Most 2D commands one vGPU may have queued at the renderer.
    #[arg(long, default_value_t = 256)]
    pub queue_limit: usize,
    /// Where SIGUSR1 writes `vgpu-<domid>.png` for every vGPU.
    #[arg(long)]
    pub screenshot_dir: Option<PathBuf>,
    /// Write every vGPU's counters to this file as JSON, once a second.
    #[arg(long)]
    pub stats_file: Option<PathBuf>,
}

/// One `--vgpu`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VgpuSpec {
    /// The guest.
    pub domid: u16,
    /// Its PCI function (bus << 8 | device << 3 | function).
    pub bdf: u16,
    /// Renderer weight.
    pub weight: u32,
    /// Where to serve VNC, if anywhere.
    pub vnc: Option<SocketAddr>,
    /// Whether the ioreq server has a buffered ring.
    pub buffered: bool,
}

fn parse_u64(s: &str) -> Result<u64, String> {
    let parsed = match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|_| format!("{s:?} is not a number (decimal, or hex with 0x)"))
}

fn parse_bdf(s: &str) -> Option<u16> {
    let (bus, rest) = s.split_once(':')?;
    let (dev, func) = rest.split_once('.')?;
    let bus = u16::from_str_radix(bus, 16).ok().filter(|&b| b <= 0xff)?;
    let dev = u16::from_str_radix(dev, 16).ok().filter(|&d| d <= 0x1f)?;
    let func = u16::from_str_radix(func, 16).ok().filter(|&f| f <= 7)?;
    Some(bus << 8 | dev << 3 | func)
}

impl FromStr for VgpuSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut spec = VgpuSpec {
            domid: 0,
            bdf: 2 << 3,
            weight: 1,
            vnc: None,
            buffered: true,
        };
        let mut domid = None;
        for part in s.split(',') {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not key=value (in --vgpu {s:?})"))?;
            match key {
                "domid" => {
                    domid = Some(value.parse::<u16>().map_err(|_| {
                        format!("domid={value:?} is not a domain id (in --vgpu {s:?})")
                    })?)
                }
                "bdf" => {
                    spec.bdf = parse_bdf(value).ok_or_else(|| {
                        format!("bdf={value:?} is not a PCI address like 00:02.0 (in --vgpu {s:?})")
                    })?
                }
                "weight" => {
                    spec.weight = value.parse().ok().filter(|&w| w >= 1).ok_or_else(|| {
                        format!("weight={value:?} is not a positive number (in --vgpu {s:?})")
                    })?
                }
                "vnc" => {
                    spec.vnc = Some(value.parse().map_err(|_| {
                        format!(
                            "vnc={value:?} is not an address like 127.0.0.1:5900 (in --vgpu {s:?})"
                        )
                    })?)
                }
                "buffered" => {
                    spec.buffered = match value {
                        "on" => true,
                        "off" => false,
                        _ => {
                            return Err(format!(
                                "buffered={value:?} is neither on nor off (in --vgpu {s:?})"
                            ))
                        }
                    }
                }
                other => {
                    return Err(format!(
                        "unknown key {other:?} in --vgpu {s:?} (known: domid, bdf, weight, vnc, buffered)"
                    ))
                }
            }
        }
        spec.domid = domid.ok_or_else(|| format!("--vgpu {s:?} names no domid="))?;
        if spec.domid == 0 {
            return Err(format!("--vgpu {s:?}: domain 0 is not an HVM guest"));
        }
        Ok(spec)
    }
}

/// Counters of one vGPU, as written to the stats file.
#[derive(Debug, Serialize)]
struct VgpuStats {
    domid: u16,
    requests: u64,
    buffered: u64,
    malformed: u64,
    commands: u64,
    pixels: u64,
    busy_ns: u64,
    rejected: u64,
    engine_errors: u32,
}

/// One running vGPU.
pub(crate) struct Emulated<D: DeviceModel + 'static> {
    domid: u16,
    running: Arc<Running<Vgpu<D>>>,
    _vnc: Option<VncServer>,
}

pub(crate) fn start_vgpu<D, E>(
    dm: D,
    evtchn: E,
    spec: &VgpuSpec,
    options: &Options,
    renderer: &Renderer,
) -> Result<Emulated<D>, String>
where
    D: DeviceModel + 'static,
    E: EventChannel + 'static,
{
    let domid = spec.domid;
    let dm = Arc::new(dm);
    let config = VgpuConfig {
        home_gfn: options.vram_home_gfn,
        weight: spec.weight,
        queue_limit: options.queue_limit.max(1),
    };
    let vgpu = Vgpu::new(Arc::clone(&dm), spec.bdf, config, renderer).map_err(|e| {
        format!("cannot set up the framebuffer of domain {domid}: {e} (is this domain its device model, with 16 MiB of maxmem to spare?)")
    })?;
    let server = Server::start(dm, evtchn, domid, vgpu, spec.buffered)
        .map_err(|e| format!("cannot start the ioreq server for domain {domid}: {e}"))?;
    server
        .deprivilege()
        .map_err(|e| format!("cannot restrict the handles to domain {domid}: {e}"))?;
    let running = Arc::new(
        runner::spawn(server, &format!("demu-{domid}"))
            .map_err(|e| format!("cannot start a thread: {e}"))?,
    );
    let vnc = match spec.vnc {
        Some(addr) => {
            let source = Arc::clone(&running);
            let frames = Arc::new(move || source.with(|v, _| display::capture(v)).flatten());
            let server = VncServer::start(addr, &format!("domain {domid}"), frames)
                .map_err(|e| format!("cannot serve VNC on {addr}: {e}"))?;
            tracing::info!(domid, addr = %server.local_addr(), "VNC server listening");
            Some(server)
        }
        None => None,
    };
    tracing::info!(domid, bdf = spec.bdf, "emulating the vGPU");
    Ok(Emulated {
        domid,
        running,
        _vnc: vnc,
    })
}

fn stats<D: DeviceModel + 'static>(vgpus: &[Arc<Emulated<D>>]) -> Vec<VgpuStats> {
    vgpus
        .iter()
        .filter_map(|e| {
            e.running.with({
                let domid = e.domid;
                move |v, c| {
                    let r = v.engine().client().counters();
                    VgpuStats {
                        domid,
                        requests: c.requests,
                        buffered: c.buffered,
                        malformed: c.malformed,
                        commands: r.commands,
                        pixels: r.pixels,
                        busy_ns: r.busy_ns,
                        rejected: r.rejected,
                        engine_errors: v.engine().read(crate::engine::reg::ERRORS),
                    }
                }
            })
        })
        .collect()
}

fn screenshots<D: DeviceModel + 'static>(vgpus: &[Arc<Emulated<D>>], dir: &std::path::Path) {
    for e in vgpus {
        let path = dir.join(format!("vgpu-{}.png", e.domid));
        let shot = e
            .running
            .with(|v, _| Some((display::capture(v)?, v.mode()?, v.vram_gfn())))
            .flatten();
        match shot {
            Some((screen, mode, vram_gfn)) => {
                let written = std::fs::File::create(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|f| {
                        screen
                            .write_png(std::io::BufWriter::new(f))
                            .map_err(|e| e.to_string())
                    });
                let (colours, dominant) = palette(&screen);
                match written {
                    Ok(()) => tracing::info!(
                        "screenshot written: {} width={} height={} colours={colours} dominant={:02x}{:02x}{:02x} \
                         (bpp {}, stride {}, scanout at VRAM offset {:#x}, VRAM at gfn {vram_gfn:#x})",
                        path.display(),
                        screen.width,
                        screen.height,
                        dominant[0],
                        dominant[1],
                        dominant[2],
                        mode.bpp,
                        mode.stride,
                        mode.offset,
                    ),
                    Err(err) => {
                        tracing::warn!(path = %path.display(), "cannot write the screenshot: {err}")
                    }
                }
            }
            None => tracing::info!(domid = e.domid, "no screenshot: the guest's display is off"),
        }
    }
}

/// How many distinct colours a screen has (counting stops at 4096) and its most common one.
fn palette(screen: &display::Screen) -> (usize, [u8; 3]) {
    let mut counts: std::collections::HashMap<[u8; 3], u64> = std::collections::HashMap::new();
    for px in screen.rgb.chunks_exact(3) {
        let key = [
            px.first().copied().unwrap_or(0),
            px.get(1).copied().unwrap_or(0),
            px.get(2).copied().unwrap_or(0),
        ];
        if counts.len() < 4096 || counts.contains_key(&key) {
            *counts.entry(key).or_default() += 1;
        }
    }
    let dominant = counts
        .iter()
        .max_by_key(|(_, n)| **n)
        .map_or([0; 3], |(c, _)| *c);
    (counts.len(), dominant)
}

async fn serve<D, E>(
    options: Options,
    open: serve::Open<D, E>,
    xs: Option<xen_store::Xs>,
) -> Result<(), String>
where
    D: DeviceModel + 'static,
    E: EventChannel + 'static,
{
    let renderer =
        Arc::new(Renderer::start().map_err(|e| format!("cannot start the renderer: {e}"))?);
    let vgpus: serve::Running<D> = Arc::default();
    for spec in &options.vgpus {
        let (dm, evtchn) = open(spec.domid)?;
        let started = start_vgpu(dm, evtchn, spec, &options, &renderer)?;
        serve::lock(&vgpus).push(Arc::new(started));
    }
    let now = |v: &serve::Running<D>| serve::lock(v).clone();
    if let Some(path) = options.stats_file.clone() {
        let v = Arc::clone(&vgpus);
        xen_backend::spawn_stats_writer(path, move || {
            serde_json::to_vec_pretty(&stats(&now(&v))).ok()
        });
    }
    let options = Arc::new(options);
    let served = xs.map(|xs| {
        tokio::spawn(serve::serve_xenstore(
            xs,
            open,
            Arc::clone(&options),
            Arc::clone(&renderer),
            Arc::clone(&vgpus),
        ))
    });
    use tokio::signal::unix::{signal, SignalKind};
    let sig = |kind| signal(kind).map_err(|e| format!("cannot handle signals: {e}"));
    let (mut usr1, mut term, mut int) = (
        sig(SignalKind::user_defined1())?,
        sig(SignalKind::terminate())?,
        sig(SignalKind::interrupt())?,
    );
    loop {
        tokio::select! {
            _ = usr1.recv() => match &options.screenshot_dir {
                Some(dir) => screenshots(&now(&vgpus), dir),
                None => tracing::warn!("SIGUSR1: no --screenshot-dir to write screenshots into"),
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("stopping: destroying the ioreq servers");
    if let Some(task) = served {
        task.abort();
        let _ = task.await;
    }
    serve::lock(&vgpus).clear();
    Ok(())
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(options: Options) -> Result<(), String> {
    let sim = match options.platform.as_deref() {
        Some("sim") => true,
        Some("xen") => false,
        Some(other) => return Err(format!("--platform {other:?}: choose sim or xen")),
        None => std::env::var_os(xen_sim::domain::ENV).is_some(),
    };
    if let Some(dir) = &options.screenshot_dir {
        std::fs::create_dir_all(dir).map_err(|e| {
            format!(
                "cannot create the screenshot directory {}: {e}",
                dir.display()
            )
        })?;
    }
    if sim {
        let domain = Arc::new(xen_sim::SimDomain::from_env().map_err(|e| e.to_string())?);
        let xs = match options.serve {
            true => Some(domain.xenstore().await.map_err(|e| e.to_string())?),
            false => None,
        };
        let open: serve::Open<_, _> = Arc::new(move |domid| {
            let dm = domain.device_model(domid).map_err(|e| e.to_string())?;
            let evtchn = domain.evtchn().map_err(|e| e.to_string())?;
            Ok((dm, evtchn))
        });
        serve(options, open, xs).await
    } else {
        let xs = match options.serve {
            true => Some(xen_store::Xs::open().await.map_err(|e| {
                format!("cannot reach xenstore ({e}); is this a Xen domain with xenfs mounted?")
            })?),
            false => None,
        };
        let open: serve::Open<_, _> = Arc::new(|domid| {
            let dm = xen_devicemodel::linux::Privcmd::open(domid).map_err(|e| {
                format!("{e}; demu needs /dev/xen/privcmd in dom0 or in the guest's device-model domain")
            })?;
            let evtchn = xen_evtchn::linux::DevEvtchn::open()
                .map_err(|e| format!("cannot open /dev/xen/evtchn: {e}"))?;
            Ok((dm, evtchn))
        });
        serve(options, open, xs).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vgpu_specs() {
        let s: VgpuSpec = "domid=5,bdf=00:05.0,weight=3,vnc=127.0.0.1:5901,buffered=off"
            .parse()
            .unwrap();
        assert_eq!(
            s,
            VgpuSpec {
                domid: 5,
                bdf: 5 << 3,
                weight: 3,
                vnc: Some("127.0.0.1:5901".parse().unwrap()),
                buffered: false,
            }
        );
        let d: VgpuSpec = "domid=7".parse().unwrap();
        assert_eq!(
            (d.bdf, d.weight, d.vnc, d.buffered),
            (2 << 3, 1, None, true)
        );
        for bad in [
            "",
            "domid=x",
            "bdf=00:02.0",
            "domid=3,bdf=0:40.0",
            "domid=3,weight=0",
            "domid=3,color=red",
            "domid=3,buffered=yes",
            "domid=0",
        ] {
            let e = bad.parse::<VgpuSpec>().unwrap_err();
            assert!(!e.is_empty() && !e.contains('\n'), "{bad}: {e}");
        }
    }
}
