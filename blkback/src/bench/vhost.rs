//! `blkback-bench --vhost-user`: `blkback-vhost-user` against QEMU's own vhost-user-blk backend,
//! `qemu-storage-daemon` (io_uring, O_DIRECT, one iothread), on the same file in the same run.
//! Both are separate processes driven by the same frontend in this process (a VMM's and a
//! virtio driver's side: shared guest memory, split virtqueues, event index, one thread per
//! queue polling its call eventfd), so the ratio is the backends' alone. CPU per I/O is the
//! backend process's (user + system), read from /proc.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{median_with_range, row, test_file, Offsets, Result, Selection, Workload, WORKLOADS};
use vhost::VhostBackend;

use crate::vhost_user::frontend::{self, header, GuestMemory, Virtqueue};

/// Entries per virtqueue (QEMU's vhost-user-blk default is 128; 256 leaves room for QD32
/// chains of three descriptors either way).
const QUEUE_SIZE: u16 = 256;

/// One request's buffers in guest memory.
#[derive(Clone, Copy)]
struct Slot {
    header: u64,
    data: u64,
    status: u64,
}

/// A backend under measurement.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Backend {
    Ours,
    QemuStorageDaemon,
}

/// The `blkback-vhost-user` binary beside this one.
fn our_binary() -> std::result::Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let ours = exe.with_file_name("blkback-vhost-user");
    if ours.exists() {
        Ok(ours)
    } else {
        Err(format!(
            "{} is missing: build it with the benchmark (cargo build --release -p blkback --bins)",
            ours.display()
        ))
    }
}

fn spawn(
    backend: Backend,
    file: &Path,
    socket: &Path,
    queues: usize,
) -> std::result::Result<Child, String> {
    let _ = std::fs::remove_file(socket);
    let mut cmd = match backend {
        Backend::Ours => {
            let mut c = Command::new(our_binary()?);
            c.arg("--socket")
                .arg(socket)
                .arg("--disk")
                .arg(file)
                .arg("--queues")
                .arg(queues.to_string())
                .env("RUST_LOG", "warn");
            c
        }
        Backend::QemuStorageDaemon => {
            let mut c = Command::new("qemu-storage-daemon");
            c.arg("--blockdev").arg(format!(
                "driver=file,node-name=file0,filename={},cache.direct=on,aio=io_uring",
                file.display()
            ));
            c.args(["--blockdev", "driver=raw,node-name=disk0,file=file0"]);
            c.args(["--object", "iothread,id=io0"]);
            c.arg("--export").arg(format!(
                "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path={},writable=on,num-queues={queues},iothread=io0",
                socket.display()
            ));
            c
        }
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| match backend {
            Backend::QemuStorageDaemon => format!(
                "cannot start qemu-storage-daemon ({e}): apt-get install qemu-system-common"
            ),
            Backend::Ours => format!("cannot start blkback-vhost-user: {e}"),
        })
}

/// User + system CPU seconds of process `pid` so far.
fn process_cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start at ") ".
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks / hz
}

/// One run: starts `backend` on `file`, drives it with `w` on `queues` queues for `seconds`.
fn measure(
    backend: Backend,
    dir: &Path,
    file: &Path,
    file_bytes: u64,
    w: Workload,
    queues: usize,
    seconds: u32,
) -> std::result::Result<Result, String> {
    let socket = dir.join("vhost-bench.sock");
    let mut child = spawn(backend, file, &socket, queues)?;
    let result = drive_all(&child, &socket, file_bytes, w, queues, seconds);
    stop_child(&mut child);
    let _ = std::fs::remove_file(&socket);
    result
}

/// SIGTERM, and SIGKILL if it has not gone within 5 s (qemu-storage-daemon 7.2 sometimes
/// waits forever for a vhost-user client that has already gone).
fn stop_child(child: &mut Child) {
    // SAFETY: kill(2) on our own child's pid; it has not been waited for yet.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn drive_all(
    child: &Child,
    socket: &Path,
    file_bytes: u64,
    w: Workload,
    queues: usize,
    seconds: u32,
) -> std::result::Result<Result, String> {
    let per_queue = w.depth as u64 * (w.block as u64 + 3 * 4096);
    let size = (queues as u64 * (frontend::RING_STRIDE + per_queue) + (1 << 20)) as usize;
    let mut mem = GuestMemory::new(size, queues).map_err(|e| e.to_string())?;
    let mut slots = Vec::new();
    for _ in 0..queues {
        let mut q = Vec::new();
        for _ in 0..w.depth {
            let slot = Slot {
                header: mem.alloc(16).map_err(|e| e.to_string())?,
                data: mem.alloc(w.block as u64).map_err(|e| e.to_string())?,
                status: mem.alloc(1).map_err(|e| e.to_string())?,
            };
            if w.write {
                mem.write(slot.data, &vec![0x5a; w.block])
                    .map_err(|e| e.to_string())?;
            }
            q.push(slot);
        }
        slots.push(q);
    }
    let mut connection = frontend::connect(
        socket,
        &mem,
        queues,
        QUEUE_SIZE,
        u64::MAX,
        Duration::from_secs(10),
    )
    .map_err(|e| e.to_string())?;
    let stop = AtomicBool::new(false);
    let cpu0 = process_cpu_seconds(child.id());
    let t0 = Instant::now();
    let region = file_bytes / queues as u64;
    let mem = &mem;
    let ios = std::thread::scope(|s| {
        let threads: Vec<_> = std::mem::take(&mut connection.queues)
            .into_iter()
            .zip(&slots)
            .enumerate()
            .map(|(q, (vq, slots))| {
                let stop = &stop;
                s.spawn(move || drive(vq, mem, slots, w, q as u64 * region, region, stop))
            })
            .collect();
        std::thread::sleep(Duration::from_secs(u64::from(seconds)));
        stop.store(true, Ordering::Release);
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .map_err(|_| "a frontend thread panicked".to_string())?
            })
            .sum::<std::result::Result<u64, String>>()
    })?;
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds(child.id()) - cpu0;
    // Stop the rings as a VMM does before it goes (the backend finishes what is in flight),
    // so that no backend is left completing requests for a frontend that has gone.
    for q in 0..queues {
        let _ = connection.frontend.get_vring_base(q);
    }
    let iops = ios as f64 / elapsed;
    Ok(Result {
        iops,
        mbps: iops * w.block as f64 / 1e6,
        cpu_us: cpu * 1e6 / ios.max(1) as f64,
    })
}

/// Keeps `w.depth` requests in flight on `vq` until `stop`; returns the I/Os completed.
fn drive(
    mut vq: Virtqueue,
    mem: &GuestMemory,
    slots: &[Slot],
    w: Workload,
    base: u64,
    region: u64,
    stop: &AtomicBool,
) -> std::result::Result<u64, String> {
    let e = |e: frontend::FrontendError| e.to_string();
    let mut offsets = Offsets::new(w, base, region);
    let mut free: Vec<usize> = (0..slots.len()).collect();
    let mut by_head = vec![None; usize::from(QUEUE_SIZE)];
    let mut done = 0u64;
    let kind = if w.write { 1 } else { 0 };
    while !stop.load(Ordering::Acquire) {
        while let Some(i) = free.pop() {
            let Some(slot) = slots.get(i) else { break };
            let sector = offsets.next_sector();
            mem.write(slot.header, &header(kind, sector)).map_err(e)?;
            let chain = [
                (slot.header, 16, false),
                (slot.data, w.block as u32, !w.write),
                (slot.status, 1, true),
            ];
            let head = vq.add(mem, &chain).map_err(e)?;
            if let Some(h) = by_head.get_mut(usize::from(head)) {
                *h = Some(i);
            }
        }
        vq.notify_if_needed(mem).map_err(e)?;
        for (head, _) in vq.wait_used(mem, 1, Duration::from_secs(5)).map_err(e)? {
            let Some(i) = by_head.get_mut(usize::from(head)).and_then(Option::take) else {
                return Err(format!(
                    "the backend answered head {head}, which was not in flight (after {done} I/Os)"
                ));
            };
            let status = slots
                .get(i)
                .map(|s| mem.read(s.status, 1))
                .transpose()
                .map_err(e)?;
            if status.as_deref() != Some(&[0]) {
                return Err(format!("I/O failed with status {status:?}"));
            }
            free.push(i);
            done += 1;
        }
    }
    Ok(done)
}

/// Runs the selected workloads against both backends and prints the table.
pub fn run(
    dir: &Path,
    file_mib: u64,
    seconds: u32,
    selection: &Selection,
    out: &mut dyn std::io::Write,
) -> std::result::Result<(), String> {
    our_binary()?;
    let file = test_file(dir, file_mib)?;
    let bytes = file_mib << 20;
    let w = |e: std::io::Error| e.to_string();
    writeln!(out, "blkback-vhost-user vs qemu-storage-daemon (vhost-user-blk, io_uring, O_DIRECT) on the same {file_mib} MiB file, {seconds} s per run").map_err(w)?;
    writeln!(
        out,
        "{:<20} {:>2}  {:>10} {:>9} {:>8}  {:>10} {:>9} {:>8}  {:>6}",
        "workload",
        "q",
        "qsd IOPS",
        "qsd MB/s",
        "qsd us",
        "ours IOPS",
        "ours MB/s",
        "ours us",
        "ratio"
    )
    .map_err(w)?;
    let queue_counts = selection.queue_counts();
    for &queues in &queue_counts {
        for wl in WORKLOADS.into_iter().filter(|w| selection.wants(w)) {
            let mut pairs = Vec::new();
            for _ in 0..selection.repeat.max(1) {
                let limit = measure(
                    Backend::QemuStorageDaemon,
                    dir,
                    &file,
                    bytes,
                    wl,
                    queues,
                    seconds,
                )?;
                let ours = measure(Backend::Ours, dir, &file, bytes, wl, queues, seconds)?;
                pairs.push((ours.iops / limit.iops, (limit, ours)));
            }
            let Some((ratio, (limit, ours), spread)) = median_with_range(pairs) else {
                continue;
            };
            writeln!(
                out,
                "{}",
                row(wl.name, queues, &limit, &ours, ratio, &spread)
            )
            .map_err(w)?;
        }
    }
    writeln!(
        out,
        "(us = the backend process's CPU microseconds per I/O; ratio = ours / qemu-storage-daemon IOPS; with --repeat, the median pair and the range of ratios)"
    )
    .map_err(w)?;
    Ok(())
}
