//! The netback benchmark: iperf3 between two guests of the simulated host through netback
//! (each guest's Rust netfront exposing `eth0` in its own network namespace; netback's vifs on a
//! bridge in the driver domain's namespace), against the same iperf3 over a plain veth pair
//! between two namespaces in the same run: the limit. Two floors (the `relay` module) join two
//! TAP-fed namespaces like the simulated guests' with a relay thread per queue: directly (what
//! a backend costing nothing would reach between simulated guests), and through a TAP device
//! per guest on a bridge (netback's host side, without rings, grants or event channels), to
//! tell netback's own cost from the simulation's and from its host side's.
//!
//! Each configuration (queues, offloads on or off) runs a TCP throughput test (one stream per
//! queue) and a small-packet test (UDP, 64-byte payloads, unlimited rate). CPU is the whole
//! machine's busy time from `/proc/stat` over the run (every process and the kernel), divided
//! by the packets moved: full-size TCP segments of 1448 bytes for TCP, datagrams received for
//! UDP. Needs root, iperf3, iproute2 and ethtool.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xen_backend::Platform;
use xen_sim::toolstack::{attach_device, DeviceSpec};
use xen_sim::{Host, SimDomain};

use crate::backend::Backend;
use crate::device::NetbackConfig;

/// Benchmark failures, as sentences.
type Result<T> = std::result::Result<T, String>;

mod relay;

/// A named network namespace, deleted on drop.
struct Ns {
    name: String,
}

impl Ns {
    fn new(tag: &str) -> Result<Self> {
        let name = format!("nbb-{tag}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        command("ip", &["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        command("ip", &all)
    }

    fn exec(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(args);
        cmd
    }

    fn path(&self) -> std::path::PathBuf {
        tap::netns_path(&self.name)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn command(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e} (is it installed?)"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Busy CPU seconds of the whole machine so far (every core, user and kernel).
fn cpu_busy_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").map_err(|e| format!("/proc/stat: {e}"))?;
    let line = stat.lines().next().unwrap_or_default();
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy: u64 = [0usize, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| fields.get(i))
        .sum();
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    Ok(busy as f64 / hz as f64)
}

/// One measurement: rate and CPU per packet.
#[derive(Debug, Clone, Copy)]
struct Measure {
    /// Bits per second (TCP) or packets per second (UDP).
    rate: f64,
    /// Busy CPU nanoseconds per packet.
    cpu_ns: f64,
    /// The simulated hypervisor's grant copies during a netback run.
    copies: Option<CopyDiag>,
}

/// Grant copies during a run: how many, how large, how long each took its caller, and, for
/// copies served by the hypervisor's thread, how much of that it worked on them (the rest is
/// scheduling: the call crosses threads). Copies done on the caller's thread have no work
/// figure.
#[derive(Debug, Clone, Copy)]
struct CopyDiag {
    per_second: f64,
    kib_per_call: f64,
    call_us: f64,
    work_us: Option<f64>,
}

/// Grant-copy counters at one instant (this process's calls; the host's hypervisor's work).
struct CopySnapshot {
    calls: xen_sim::domain::CopyCallStats,
    work: xen_sim::hv::CopyWorkStats,
    at: Instant,
}

impl CopySnapshot {
    fn take(host: &Host) -> Self {
        Self {
            calls: xen_sim::domain::copy_call_stats(),
            work: host.hypervisor().copy_work(),
            at: Instant::now(),
        }
    }

    /// What happened since `self`; `None` without calls.
    fn since(&self, host: &Host) -> Option<CopyDiag> {
        let now = Self::take(host);
        let calls = now.calls.calls.checked_sub(self.calls.calls)?;
        let served = now.work.calls.checked_sub(self.work.calls)?;
        if calls == 0 {
            return None;
        }
        let secs = now.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let bytes = now.calls.bytes.saturating_sub(self.calls.bytes);
        let waited = now.calls.waited.saturating_sub(self.calls.waited);
        let busy = now.work.busy.saturating_sub(self.work.busy);
        Some(CopyDiag {
            per_second: calls as f64 / secs,
            kib_per_call: bytes as f64 / 1024.0 / calls as f64,
            call_us: waited.as_secs_f64() * 1e6 / calls as f64,
            work_us: (served > 0).then(|| busy.as_secs_f64() * 1e6 / served as f64),
        })
    }
}

/// Runs iperf3 through netback, noting the grant copies it caused.
fn iperf_netback(pair: &NetbackPair, seconds: u32, queues: u32, udp: bool) -> Result<Measure> {
    let (g0, g1) = match pair.guests.as_slice() {
        [g0, g1] => (g0, g1),
        _ => return Err("two guests expected".into()),
    };
    let before = CopySnapshot::take(&pair.host);
    let mut m = iperf(g0, g1, "10.78.0.2", queues, seconds, udp)?;
    m.copies = before.since(&pair.host);
    Ok(m)
}

/// A floor's line under a row: the relay's rate and netback's ratio to it.
fn floor_line(name: &str, m: &Median, udp: bool) -> String {
    let rate = if udp {
        format!("{:.0} p/s", m.veth.rate)
    } else {
        format!("{:.2} Gb/s", m.veth.rate / 1e9)
    };
    format!(
        "{:<17}floor, {name}: {rate}, {:.0} ns/p; netback / floor {:.2}{}",
        "", m.veth.cpu_ns, m.ratio, m.spread
    )
}

fn copy_line(m: &Measure) -> String {
    match m.copies {
        Some(c) => {
            let how = match c.work_us {
                Some(work) => format!(
                    "round trip {:.0} us (hypervisor work {work:.0} us)",
                    c.call_us
                ),
                None => format!("{:.0} us each on the caller's thread", c.call_us),
            };
            format!(
                "{:<17}grant copies: {:.0}/s, {:.1} KiB each, {how}",
                "", c.per_second, c.kib_per_call
            )
        }
        None => format!("{:<17}grant copies: none", ""),
    }
}

const TCP_SEGMENT: f64 = 1448.0;

/// The run with the median ratio, and the range of ratios when there were several (`veth`
/// holds the limit the ratio was taken against: veth, or the relay for the floor).
struct Median {
    ratio: f64,
    veth: Measure,
    ours: Measure,
    spread: String,
}

/// Picks the median of `(ratio, veth, ours)` runs.
fn median(runs: &mut [(f64, Measure, Measure)]) -> Option<Median> {
    runs.sort_by(|x, y| x.0.total_cmp(&y.0));
    let spread = match (runs.first(), runs.last()) {
        (Some(lo), Some(hi)) if runs.len() > 1 => format!("  ({:.2}-{:.2})", lo.0, hi.0),
        _ => String::new(),
    };
    let &(ratio, veth, ours) = runs.get(runs.len() / 2)?;
    Some(Median {
        ratio,
        veth,
        ours,
        spread,
    })
}

fn json_f64(v: &serde_json::Value, path: &[&str]) -> Result<f64> {
    let mut at = v;
    for p in path {
        at = at
            .get(p)
            .ok_or_else(|| format!("iperf3 output lacks {}", path.join(".")))?;
    }
    at.as_f64()
        .ok_or_else(|| format!("iperf3 output: {} is not a number", path.join(".")))
}

/// Runs iperf3 from `client` to `addr` in `server`; `udp_small` for the small-packet test.
fn iperf(
    client: &Ns,
    server: &Ns,
    addr: &str,
    streams: u32,
    seconds: u32,
    udp_small: bool,
) -> Result<Measure> {
    let mut srv = server
        .exec(&["iperf3", "-s", "-1", "-p", "5299"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start iperf3 (is it installed?): {e}"))?;
    std::thread::sleep(Duration::from_millis(300));
    let (streams, seconds) = (streams.to_string(), seconds.to_string());
    let mut args = vec![
        "iperf3", "-c", addr, "-p", "5299", "-t", &seconds, "-P", &streams, "-J",
    ];
    if udp_small {
        args.extend_from_slice(&["-u", "-b", "0", "-l", "64"]);
    }
    let cpu0 = cpu_busy_seconds()?;
    let out = client
        .exec(&args)
        .output()
        .map_err(|e| format!("iperf3: {e}"))?;
    let cpu = cpu_busy_seconds()? - cpu0;
    let _ = srv.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "iperf3 printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
        return Err(format!("iperf3: {err}"));
    }
    if udp_small {
        let packets = json_f64(&v, &["end", "sum", "packets"])?;
        let lost = json_f64(&v, &["end", "sum", "lost_packets"])?;
        let secs = json_f64(&v, &["end", "sum", "seconds"])?.max(1e-9);
        let received = (packets - lost).max(1.0);
        Ok(Measure {
            rate: received / secs,
            cpu_ns: cpu * 1e9 / received,
            copies: None,
        })
    } else {
        let bps = json_f64(&v, &["end", "sum_received", "bits_per_second"])?;
        let secs = json_f64(&v, &["end", "sum_received", "seconds"])?.max(1e-9);
        let segments = (bps * secs / 8.0 / TCP_SEGMENT).max(1.0);
        Ok(Measure {
            rate: bps,
            cpu_ns: cpu * 1e9 / segments,
            copies: None,
        })
    }
}

/// The limit: two namespaces joined by a veth pair.
fn veth_pair(queues: u32, offloads: bool) -> Result<(Ns, Ns)> {
    let a = Ns::new("va")?;
    let b = Ns::new("vb")?;
    let q = queues.to_string();
    command(
        "ip",
        &[
            "link",
            "add",
            "nbbva",
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "netns",
            &a.name,
            "type",
            "veth",
            "peer",
            "name",
            "nbbvb",
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "netns",
            &b.name,
        ],
    )?;
    for (ns, dev, addr) in [(&a, "nbbva", "10.77.0.1/24"), (&b, "nbbvb", "10.77.0.2/24")] {
        ns.ip(&["addr", "add", addr, "dev", dev])?;
        ns.ip(&["link", "set", dev, "up"])?;
        if !offloads {
            let out = ns
                .exec(&[
                    "ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off", "tx", "off",
                    "rx", "off", "sg", "off",
                ])
                .output()
                .map_err(|e| format!("cannot run ethtool (apt-get install ethtool): {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "ethtool -K {dev}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
    }
    Ok((a, b))
}

/// Two guests talking through netback on a fresh simulated host.
struct NetbackPair {
    _fronts: Vec<netfront::Netfront>,
    guests: Vec<Ns>,
    _dd_ns: Ns,
    backend: tokio::task::JoinHandle<()>,
    host: Host,
}

impl Drop for NetbackPair {
    fn drop(&mut self) {
        self.backend.abort();
    }
}

async fn netback_pair(dir: &Path, queues: u32, offloads: bool) -> Result<NetbackPair> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let host = Host::start(&dir.join("run")).await.map_err(|x| e(&x))?;
    let dd_ns = Ns::new("dd")?;
    dd_ns.ip(&["link", "add", "xenbr0", "type", "bridge"])?;
    dd_ns.ip(&["link", "set", "xenbr0", "up"])?;
    let mut domain = SimDomain::new(host.create_domain("network-dd", 64).map_err(|x| e(&x))?);
    domain.boot().map_err(|x| e(&x))?;
    let dd = Arc::new(xen_backend::SimPlatform::new(domain));
    let xs = dd.domain().xenstore().await.map_err(|x| e(&x))?;
    let config = NetbackConfig {
        netns: Some(dd_ns.path()),
        ..NetbackConfig::default()
    };
    let backend = Backend::new(Arc::clone(&dd), xs, config);
    let backend = tokio::spawn(async move {
        let _ = backend.run().await;
    });
    let host_xs = xen_store::Xs::connect_unix(&host.xenstored_socket())
        .await
        .map_err(|x| e(&x))?;
    let mut fronts = Vec::new();
    let mut guests = Vec::new();
    for i in 0..2u8 {
        let guest = SimDomain::new(
            host.create_domain(&format!("guest{i}"), 4096)
                .map_err(|x| e(&x))?,
        );
        let ns = Ns::new(&format!("g{i}"))?;
        let mac = format!("00:16:3e:00:00:{:02x}", i + 1);
        attach_device(
            &host_xs,
            &DeviceSpec {
                kind: "vif".into(),
                backend: dd.domid(),
                frontend: guest.domid(),
                devid: 0,
                backend_keys: vec![
                    ("mac".into(), mac.clone()),
                    ("bridge".into(), "xenbr0".into()),
                    ("script".into(), "vif-bridge".into()),
                ],
                frontend_keys: vec![("mac".into(), mac), ("handle".into(), "0".into())],
            },
        )
        .await
        .map_err(|x| e(&x))?;
        let xs = guest.xenstore().await.map_err(|x| e(&x))?;
        let grants = guest.grants().map_err(|x| e(&x))?;
        let dir = xen_store::path::frontend_path(guest.domid(), "vif", 0);
        let opts = netfront::NetfrontOptions {
            queues,
            sg: offloads,
            gso: offloads,
            csum: offloads,
            ipv6_csum: offloads,
            ..netfront::NetfrontOptions::default()
        };
        let front = netfront::connect(
            &xs,
            &dir,
            &grants,
            || {
                guest
                    .evtchn()
                    .map_err(|x| std::io::Error::other(x.to_string()))
            },
            "eth0",
            Some(&ns.path()),
            opts,
        )
        .await
        .map_err(|x| e(&x))?;
        ns.ip(&[
            "addr",
            "add",
            &format!("10.78.0.{}/24", i + 1),
            "dev",
            "eth0",
        ])?;
        fronts.push(front);
        guests.push(ns);
    }
    // Let the bridge learn both guests before measuring.
    let ping = guests.first().map(|g| {
        g.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.78.0.2"])
            .output()
    });
    if !matches!(ping, Some(Ok(ref o)) if o.status.success()) {
        return Err("the two guests cannot reach each other through netback".into());
    }
    Ok(NetbackPair {
        _fronts: fronts,
        guests,
        _dd_ns: dd_ns,
        backend,
        host,
    })
}

/// What the floors' lines call them, in [`Setup::floors`] order.
const FLOOR_NAMES: [&str; 2] = ["bare TAP relay", "relay via vif TAPs on a bridge"];

/// One configuration's three setups, measured in turn.
struct Setup {
    veth: (Ns, Ns),
    floors: [relay::Relay; 2],
    netback: NetbackPair,
    queues: u32,
    seconds: u32,
}

impl Setup {
    /// One run of each: veth, each floor, netback.
    fn measure(&self, udp: bool) -> Result<(Measure, Vec<Measure>, Measure)> {
        let (q, secs) = (self.queues, self.seconds);
        let veth = iperf(&self.veth.0, &self.veth.1, "10.77.0.2", q, secs, udp)?;
        let mut floors = Vec::new();
        for f in &self.floors {
            floors.push(iperf(&f.sides.0, &f.sides.1, "10.79.0.2", q, secs, udp)?);
        }
        let ours = iperf_netback(&self.netback, secs, q, udp)?;
        Ok((veth, floors, ours))
    }
}

/// One test's runs: netback against veth, and against each floor.
#[derive(Default)]
struct Runs {
    veth: Vec<(f64, Measure, Measure)>,
    floors: [Vec<(f64, Measure, Measure)>; 2],
}

impl Runs {
    fn record(&mut self, (veth, floors, ours): (Measure, Vec<Measure>, Measure)) {
        self.veth.push((ours.rate / veth.rate, veth, ours));
        for (runs, f) in self.floors.iter_mut().zip(floors) {
            runs.push((ours.rate / f.rate, f, ours));
        }
    }

    /// Prints the row, the floors' lines and the grant-copy line.
    fn report(
        &mut self,
        out: &mut dyn Write,
        queues: u32,
        label: &str,
        udp: bool,
    ) -> std::io::Result<()> {
        let Some(m) = median(&mut self.veth) else {
            return Ok(());
        };
        let rate = |r: f64| {
            if udp {
                format!("{r:>7.0} p/s")
            } else {
                format!("{:>6.2} Gb/s", r / 1e9)
            }
        };
        writeln!(
            out,
            "{:<9} {:>2} {:<8}  {} {:>9.0}  {} {:>9.0}  {:>6.2}{}",
            if udp { "udp 64B" } else { "tcp" },
            queues,
            label,
            rate(m.veth.rate),
            m.veth.cpu_ns,
            rate(m.ours.rate),
            m.ours.cpu_ns,
            m.ratio,
            m.spread
        )?;
        for (runs, name) in self.floors.iter_mut().zip(FLOOR_NAMES) {
            if let Some(f) = median(runs) {
                writeln!(out, "{}", floor_line(name, &f, udp))?;
            }
        }
        writeln!(out, "{}", copy_line(&m.ours))
    }
}

/// Fails with one sentence naming the first missing program and its Debian package.
fn check_tools() -> Result<()> {
    let on_path = |name: &str| {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
    };
    for (program, package) in [
        ("iperf3", "iperf3"),
        ("ip", "iproute2"),
        ("ethtool", "ethtool"),
        ("ping", "iputils-ping"),
    ] {
        if !on_path(program) {
            return Err(format!(
                "{program} is not installed; install it with `apt-get install {package}`"
            ));
        }
    }
    Ok(())
}

/// Runs each configuration (`queues` x `offloads`) and prints a table to `out`.
pub async fn run(
    dir: &Path,
    seconds: u32,
    queue_counts: &[u32],
    offload_settings: &[bool],
    repeat: u32,
    out: &mut dyn Write,
) -> Result<()> {
    check_tools()?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let w = |e: std::io::Error| e.to_string();
    writeln!(
        out,
        "netback on the simulated host vs a veth pair, iperf3 {seconds} s per run; CPU = whole machine busy time per packet; with --repeat, the run with the median ratio and the range"
    )
    .map_err(w)?;
    writeln!(
        out,
        "{:<9} {:>2} {:<8}  {:>11} {:>9}  {:>11} {:>9}  {:>6}",
        "test", "q", "offloads", "veth", "veth ns/p", "netback", "ours ns/p", "ratio"
    )
    .map_err(w)?;
    for &offloads in offload_settings {
        for &queues in queue_counts {
            // All set up once; veth, relay and netback runs alternate, `repeat` times.
            let setup = Setup {
                veth: veth_pair(queues, offloads)?,
                floors: [
                    relay::relay_pair(queues, offloads, false)?,
                    relay::relay_pair(queues, offloads, true)?,
                ],
                netback: netback_pair(dir, queues, offloads).await?,
                queues,
                seconds,
            };
            let (mut tcp, mut udp) = (Runs::default(), Runs::default());
            for _ in 0..repeat.max(1) {
                tcp.record(setup.measure(false)?);
                udp.record(setup.measure(true)?);
            }
            drop(setup);
            let label = if offloads { "on" } else { "off" };
            tcp.report(out, queues, label, false).map_err(w)?;
            udp.report(out, queues, label, true).map_err(w)?;
        }
    }
    Ok(())
}
