//! `blkback-bench`: blkback on the simulated host against fio on the same file in the same
//! run. fio (io_uring, O_DIRECT) is the limit: what the disk and kernel give one process with
//! no Xen in the way. Ours is a Rust blkfront in a guest domain driving blkback through shared
//! rings, grants and event channels, with blkback's io_uring underneath.
//!
//! CPU time per I/O counts everything in the measuring process: for fio, the fio process; for
//! ours, the frontend (the guest's work), blkback and the simulated hypervisor together.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xen_blkif::{Abi, DiscardLimits, Limits};

use crate::stats::QueueStats;
use crate::storage::raw::{RawDisk, RawOptions};
use crate::storage::Disk;
use crate::worker::{start_ring, RingSpec};

mod disk_idle;
pub mod vhost;

/// One workload.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    /// Short name.
    pub name: &'static str,
    /// Writes (else reads).
    pub write: bool,
    /// Random offsets (else sequential).
    pub random: bool,
    /// Block size in bytes.
    pub block: usize,
    /// Requests in flight per queue.
    pub depth: usize,
}

/// The workloads the issue asks for.
pub const WORKLOADS: [Workload; 6] = [
    Workload {
        name: "4k randread qd1",
        write: false,
        random: true,
        block: 4096,
        depth: 1,
    },
    Workload {
        name: "4k randread qd32",
        write: false,
        random: true,
        block: 4096,
        depth: 32,
    },
    Workload {
        name: "4k randwrite qd1",
        write: true,
        random: true,
        block: 4096,
        depth: 1,
    },
    Workload {
        name: "4k randwrite qd32",
        write: true,
        random: true,
        block: 4096,
        depth: 32,
    },
    Workload {
        name: "1M seqread qd8",
        write: false,
        random: false,
        block: 1 << 20,
        depth: 8,
    },
    Workload {
        name: "1M seqwrite qd8",
        write: true,
        random: false,
        block: 1 << 20,
        depth: 8,
    },
];

/// One measurement.
#[derive(Debug, Clone, Copy, Default)]
pub struct Result {
    /// I/Os per second.
    pub iops: f64,
    /// Megabytes (10^6) per second.
    pub mbps: f64,
    /// CPU microseconds per I/O.
    pub cpu_us: f64,
}

fn cpu_seconds(who: libc::c_int) -> f64 {
    // SAFETY: getrusage fills the zeroed struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(who, &mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// Runs fio for one workload; `None` if fio is missing or failed.
pub fn fio(
    file: &Path,
    file_bytes: u64,
    w: Workload,
    queues: usize,
    seconds: u32,
) -> Option<Result> {
    let rw = match (w.write, w.random) {
        (false, true) => "randread",
        (true, true) => "randwrite",
        (false, false) => "read",
        (true, false) => "write",
    };
    let before = cpu_seconds(libc::RUSAGE_CHILDREN);
    let out = Command::new("fio")
        .args([
            "--name=limit",
            &format!("--filename={}", file.display()),
            "--ioengine=io_uring",
            "--direct=1",
            &format!("--rw={rw}"),
            &format!("--bs={}", w.block),
            &format!("--iodepth={}", w.depth),
            &format!("--numjobs={queues}"),
            &format!("--size={file_bytes}"),
            &format!("--offset_increment={}", file_bytes / queues as u64),
            "--time_based",
            &format!("--runtime={seconds}"),
            "--group_reporting",
            "--output-format=json",
        ])
        .output()
        .ok()?;
    let cpu = cpu_seconds(libc::RUSAGE_CHILDREN) - before;
    if !out.status.success() {
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let job = json.get("jobs")?.get(0)?;
    let side = job.get(if w.write { "write" } else { "read" })?;
    let iops = side.get("iops")?.as_f64()?;
    let bw = side.get("bw_bytes")?.as_f64()?;
    let ios = side.get("total_ios")?.as_f64()?.max(1.0);
    Some(Result {
        iops,
        mbps: bw / 1e6,
        cpu_us: cpu * 1e6 / ios,
    })
}

/// How data pages reach blkback.
#[derive(Debug, Clone, Copy)]
pub struct DataPath {
    /// Persistent grants negotiated.
    pub persistent: bool,
    /// Without them: grant copy (true) or a batched map per request (false).
    pub grant_copy: bool,
    /// The backend's cache size.
    pub max_persistent_grants: usize,
}

/// The default: persistent grants.
pub const PERSISTENT: DataPath = DataPath {
    persistent: true,
    grant_copy: false,
    max_persistent_grants: crate::MAX_PERSISTENT_GRANTS,
};

/// Runs one workload through blkback on the simulated host.
pub async fn ours(
    dir: &Path,
    file: &Path,
    file_bytes: u64,
    w: Workload,
    queues: usize,
    seconds: u32,
    data: DataPath,
) -> std::result::Result<Result, String> {
    let host =
        xen_sim::Host::start(&dir.join(format!("run-{}-{queues}", w.name.replace(' ', "-"))))
            .await
            .map_err(|e| e.to_string())?;
    let dd = xen_sim::SimDomain::new(host.create_domain("storage-dd", 64)?);
    let guest = xen_sim::SimDomain::new(host.create_domain("guest", 65536)?);
    let disk = RawDisk::open(file, RawOptions::default()).map_err(|e| e.to_string())?;
    let info = disk.info();
    let limits = Limits {
        sectors: info.sectors,
        sector_size: info.sector_size,
        read_only: false,
        max_indirect_segments: 256,
        flush: true,
        barrier: true,
        discard: Some(DiscardLimits {
            granularity: 4096,
            alignment: 0,
            secure: false,
        }),
    };
    let grants = Arc::new(dd.grants().map_err(|e| e.to_string())?);
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    let mut threads = Vec::new();
    for q in 0..queues {
        let config = blkfront::FrontConfig {
            ring_pages: 4,
            abi: Abi::X86_64,
            persistent: data.persistent,
            indirect_segments: 256,
        };
        let front = blkfront::Blkfront::new(
            guest.grants().map_err(|e| e.to_string())?,
            guest.evtchn().map_err(|e| e.to_string())?,
            dd.domid(),
            config,
        )
        .map_err(|e| e.to_string())?;
        let spec = RingSpec {
            frontend: guest.domid(),
            ring_refs: front.ring_refs().to_vec(),
            port: front.port(),
            abi: Abi::X86_64,
            persistent: data.persistent,
            grant_copy: data.grant_copy,
            max_persistent_grants: data.max_persistent_grants,
            limits,
            size: crate::worker::LiveSize::new(limits.sectors),
            name: format!("bench-q{q}"),
            reattach: false,
        };
        let evtchn = dd.evtchn().map_err(|e| e.to_string())?;
        handles.push(
            start_ring(
                spec,
                Arc::clone(&grants),
                evtchn,
                &disk,
                Arc::new(QueueStats::default()),
            )
            .map_err(|e| e.to_string())?,
        );
        let stop = Arc::clone(&stop);
        let region = file_bytes / queues as u64;
        threads.push(
            std::thread::Builder::new()
                .name(format!("guest-front-q{q}"))
                .spawn(move || drive(front, w, q as u64 * region, region, &stop))
                .map_err(|e| format!("cannot start a frontend thread: {e}"))?,
        );
    }
    let cpu0 = cpu_seconds(libc::RUSAGE_SELF);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(u64::from(seconds))).await;
    stop.store(true, Ordering::Release);
    let mut ios = 0u64;
    for t in threads {
        ios += t
            .join()
            .map_err(|_| "a frontend thread panicked".to_string())??;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(libc::RUSAGE_SELF) - cpu0;
    drop(handles);
    let iops = ios as f64 / elapsed;
    Ok(Result {
        iops,
        mbps: iops * w.block as f64 / 1e6,
        cpu_us: cpu * 1e6 / ios.max(1) as f64,
    })
}

type Front = blkfront::Blkfront<xen_sim::domain::SimGrants, xen_sim::domain::SimEvtchn>;

/// Where a workload's requests go: random blocks (xorshift) or one block after another, in the
/// queue's own `region` of the file from byte `base`.
struct Offsets {
    x: u64,
    next: u64,
    blocks: u64,
    base: u64,
    w: Workload,
}

impl Offsets {
    fn new(w: Workload, base: u64, region: u64) -> Self {
        Self {
            x: 0x2545_f491_4f6c_dd1d ^ base,
            next: 0,
            blocks: (region / w.block as u64).max(1),
            base,
            w,
        }
    }

    /// The next request's first 512-byte sector.
    fn next_sector(&mut self) -> u64 {
        let index = if self.w.random {
            self.x ^= self.x << 13;
            self.x ^= self.x >> 7;
            self.x ^= self.x << 17;
            self.x % self.blocks
        } else {
            self.next = (self.next + 1) % self.blocks;
            self.next
        };
        (self.base + index * self.w.block as u64) / 512
    }
}

/// Keeps `w.depth` requests in flight until `stop`; returns the I/Os completed.
fn drive(
    mut front: Front,
    w: Workload,
    base: u64,
    region: u64,
    stop: &AtomicBool,
) -> std::result::Result<u64, String> {
    let data = vec![0x5au8; w.block];
    let mut offsets = Offsets::new(w, base, region);
    let mut done = 0u64;
    let mut submit = |front: &mut Front| -> std::result::Result<(), String> {
        let sector = offsets.next_sector();
        let r = if w.write {
            front.submit_write(sector, &data)
        } else {
            front.submit_read(sector, w.block)
        };
        r.map(drop).map_err(|e| e.to_string())
    };
    while !stop.load(Ordering::Acquire) {
        // Each request is published as it is queued, as Linux blkfront's queue_rq does: the
        // backend starts on the first while the guest copies the next one's data.
        while front.outstanding() < w.depth {
            submit(&mut front)?;
            front.kick().map_err(|e| e.to_string())?;
        }
        for d in front
            .poll(Duration::from_millis(500))
            .map_err(|e| e.to_string())?
        {
            if d.status != xen_abi::blkif::BLKIF_RSP_OKAY {
                return Err(format!("I/O failed with status {}", d.status));
            }
            done += 1;
        }
    }
    while front.outstanding() > 0 {
        if front
            .poll(Duration::from_secs(5))
            .map_err(|e| e.to_string())?
            .is_empty()
        {
            break;
        }
    }
    Ok(done)
}

/// Which parts of the benchmark to run.
#[derive(Debug, Clone)]
pub struct Selection {
    /// Only workloads whose name contains this (all when `None`).
    pub workload: Option<String>,
    /// Queue counts to run (1 and 2 when empty).
    pub queues: Vec<usize>,
    /// Only the main table (no larger-cache and no-persistent-grant tables).
    pub main_only: bool,
    /// Measurements per row of the main table (fio and ours alternating); the median is shown.
    pub repeat: usize,
}

impl Selection {
    /// The queue counts to measure: those asked for, else 1 and 2.
    fn queue_counts(&self) -> Vec<usize> {
        if self.queues.is_empty() {
            vec![1, 2]
        } else {
            self.queues.clone()
        }
    }

    fn wants(&self, w: &Workload) -> bool {
        self.workload.as_deref().is_none_or(|n| w.name.contains(n))
    }
}

/// Sorts measurements by their ratio and returns the median one with the range of ratios
/// ("  (lo-hi)", empty for a single measurement).
fn median_with_range<T: Copy>(mut pairs: Vec<(f64, T)>) -> Option<(f64, T, String)> {
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let spread = match (pairs.first(), pairs.last()) {
        (Some(lo), Some(hi)) if pairs.len() > 1 => format!("  ({:.2}-{:.2})", lo.0, hi.0),
        _ => String::new(),
    };
    let &(ratio, item) = pairs.get(pairs.len() / 2)?;
    Some((ratio, item, spread))
}

/// One row of a table comparing ours with a limit.
fn row(
    name: &str,
    queues: usize,
    limit: &Result,
    ours: &Result,
    ratio: f64,
    spread: &str,
) -> String {
    format!(
        "{:<20} {:>2}  {:>10.0} {:>9.1} {:>8.1}  {:>10.0} {:>9.1} {:>8.1}  {:>6.2}{spread}",
        name,
        queues,
        limit.iops,
        limit.mbps,
        limit.cpu_us,
        ours.iops,
        ours.mbps,
        ours.cpu_us,
        ratio,
    )
}

/// Makes `dir/bench.img`, `file_mib` MiB written in full (reads must hit the disk, not holes).
fn test_file(dir: &Path, file_mib: u64) -> std::result::Result<PathBuf, String> {
    use std::io::Write as _;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let file: PathBuf = dir.join("bench.img");
    let mut f = std::fs::File::create(&file).map_err(|e| e.to_string())?;
    let chunk = vec![0xa5u8; 1 << 20];
    for _ in 0..file_mib {
        f.write_all(&chunk).map_err(|e| e.to_string())?;
    }
    f.sync_all().map_err(|e| e.to_string())?;
    Ok(file)
}

/// Runs the selected workloads and prints the tables.
pub async fn run(
    dir: &Path,
    file_mib: u64,
    seconds: u32,
    selection: &Selection,
    out: &mut dyn std::io::Write,
) -> std::result::Result<(), String> {
    let file = test_file(dir, file_mib)?;
    let bytes = file_mib << 20;
    let w = |e: std::io::Error| e.to_string();
    writeln!(out, "blkback on the simulated host vs fio (io_uring, O_DIRECT) on the same {file_mib} MiB file, {seconds} s per run").map_err(w)?;
    writeln!(
        out,
        "{:<20} {:>2}  {:>10} {:>9} {:>8}  {:>10} {:>9} {:>8}  {:>6}",
        "workload",
        "q",
        "fio IOPS",
        "fio MB/s",
        "fio us",
        "ours IOPS",
        "ours MB/s",
        "ours us",
        "ratio"
    )
    .map_err(w)?;
    let mut limits = Vec::new();
    let queue_counts = selection.queue_counts();
    for &queues in &queue_counts {
        for wl in WORKLOADS.into_iter().filter(|w| selection.wants(w)) {
            // fio and ours alternate; the pair with the median ratio is shown.
            let mut pairs = Vec::new();
            for _ in 0..selection.repeat.max(1) {
                let sampler = disk_idle::DiskIdle::start(&file);
                let limit = fio(&file, bytes, wl, queues, seconds)
                    .ok_or("fio failed or is not installed (apt-get install fio)")?;
                let limit_idle = sampler.and_then(disk_idle::DiskIdle::finish);
                let sampler = disk_idle::DiskIdle::start(&file);
                let ours = ours(dir, &file, bytes, wl, queues, seconds, PERSISTENT).await?;
                let ours_idle = sampler.and_then(disk_idle::DiskIdle::finish);
                pairs.push((
                    ours.iops / limit.iops,
                    (limit, ours, (limit_idle, ours_idle)),
                ));
            }
            let Some((ratio, (limit, ours, idle), spread)) = median_with_range(pairs) else {
                continue;
            };
            limits.push((wl.name, queues, limit));
            writeln!(
                out,
                "{}",
                row(wl.name, queues, &limit, &ours, ratio, &spread)
            )
            .map_err(w)?;
            if let (Some(fio_idle), Some(our_idle)) = idle {
                writeln!(
                    out,
                    "{:<24}disk idle (nothing in flight, sampled each ms): fio {:.0}%, ours {:.0}%",
                    "",
                    fio_idle * 100.0,
                    our_idle * 100.0
                )
                .map_err(w)?;
            }
        }
    }
    writeln!(
        out,
        "(us = CPU microseconds per I/O; ratio = ours / fio IOPS, which for one block size is also the bandwidth ratio; with --repeat, the median pair and the range of ratios)"
    )
    .map_err(w)?;
    if selection.main_only {
        return Ok(());
    }
    writeln!(out).map_err(w)?;
    writeln!(out, "1 MiB with a larger grant cache (--max-persistent-grants 4096; 8 requests of 257 pages in flight)").map_err(w)?;
    let big = DataPath {
        max_persistent_grants: 4096,
        ..PERSISTENT
    };
    for &(name, queues, limit) in limits.iter().filter(|(name, _, _)| name.starts_with("1M")) {
        let Some(wl) = WORKLOADS.iter().find(|w| w.name == name) else {
            continue;
        };
        let r = ours(dir, &file, bytes, *wl, queues, seconds, big).await?;
        writeln!(
            out,
            "{:<20} {:>2}  {:>10.0} {:>9.1}  ratio {:>5.2}",
            name,
            queues,
            r.iops,
            r.mbps,
            r.mbps / limit.mbps
        )
        .map_err(w)?;
    }
    writeln!(out).map_err(w)?;
    writeln!(
        out,
        "without persistent grants, one queue: batched map per request vs grant copy (requests of more than 11 segments are mapped either way)"
    )
    .map_err(w)?;
    writeln!(
        out,
        "{:<20}  {:>10} {:>8}  {:>10} {:>8}  {:>8}",
        "workload", "map IOPS", "map us", "copy IOPS", "copy us", "copy/map"
    )
    .map_err(w)?;
    for wl in [WORKLOADS[1], WORKLOADS[3], WORKLOADS[4], WORKLOADS[5]]
        .into_iter()
        .filter(|w| selection.wants(w))
    {
        let without_persistent = |grant_copy| DataPath {
            persistent: false,
            grant_copy,
            max_persistent_grants: crate::MAX_PERSISTENT_GRANTS,
        };
        let map = ours(dir, &file, bytes, wl, 1, seconds, without_persistent(false)).await?;
        let copy = ours(dir, &file, bytes, wl, 1, seconds, without_persistent(true)).await?;
        writeln!(
            out,
            "{:<20}  {:>10.0} {:>8.1}  {:>10.0} {:>8.1}  {:>8.2}",
            wl.name,
            map.iops,
            map.cpu_us,
            copy.iops,
            copy.cpu_us,
            copy.iops / map.iops
        )
        .map_err(w)?;
    }
    Ok(())
}
