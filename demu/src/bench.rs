//! The demu benchmark, on the simulated host with 1..N HVM guests, each with its own vGPU
//! (one demu thread per guest, one shared renderer), all in this process:
//!
//! - **trapped access**: a guest vCPU reads a DISPI register (port 0x1cf) in a loop; the round
//!   trip goes guest → hypervisor → demu's ioreq slot and event channel → back. The limit in
//!   the same run is an access the hypervisor answers itself (an unclaimed port), so the ratio
//!   is what the emulator adds.
//! - **2D fill and copy**: each guest keeps its engine busy with full-screen fills (1024×768,
//!   32 bpp) or half-screen copies, batched in a ring and closed by a fence; throughput is the
//!   bytes written per second, against an in-process `memset`/`memcpy` of the same size in the
//!   same run (the limit).
//!
//! Every figure comes from the run that prints it; nothing is compared across runs.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xen_sim::domain::SimVcpu;
use xen_sim::{Host, SimDomain};
use zerocopy::IntoBytes;

use crate::bochs::{Vgpu, VgpuConfig};
use crate::engine::{opcode, reg, Command, CONTROL_ENABLE, REGS_OFFSET};
use crate::ioreq::Server;
use crate::mux::Renderer;
use crate::runner;

/// Benchmark failures, as sentences.
pub type Result<T> = std::result::Result<T, String>;

const BDF: u16 = 2 << 3;
const FB_BAR: u64 = 0xe000_0000;
const MMIO_BAR: u64 = 0xe100_0000;
const RING: u64 = 0x10_0000;
const BATCH: u32 = 32;
const WIDTH: u32 = 1024;
const HEIGHT: u32 = 768;
const FRAME: usize = (WIDTH * HEIGHT * 4) as usize;

/// One row of results.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    /// vGPUs running at once.
    pub vgpus: usize,
    /// Mean round trip of a trapped access, µs.
    pub access_us: f64,
    /// All guests' accesses per second together.
    pub accesses_per_s: f64,
    /// The hypervisor-only access in the same run, µs.
    pub limit_access_us: f64,
    /// All guests' fill throughput, GB/s.
    pub fill_gbps: f64,
    /// memset of the same size, GB/s.
    pub memset_gbps: f64,
    /// All guests' copy throughput, GB/s.
    pub copy_gbps: f64,
    /// memcpy of the same size, GB/s.
    pub memcpy_gbps: f64,
}

/// A guest's vCPU, set up as the bochs driver does, with the 2D engine on.
struct Guest {
    cpu: SimVcpu,
    ram: SimVcpu,
    /// The engine's producer index and the last fence value, kept across phases.
    tail: u32,
    batch: u32,
}

impl Guest {
    fn new(domain: &SimDomain) -> Result<Self> {
        let cpu = domain.vcpu(0).map_err(|e| e.to_string())?;
        let ram = domain.vcpu(0).map_err(|e| e.to_string())?;
        let g = Self {
            cpu,
            ram,
            tail: 0,
            batch: 0,
        };
        let cfg = |reg: u8, size: u32, v: u64| g.cpu.pci_write(BDF, reg, size, v);
        cfg(0x10, 4, FB_BAR)
            .and(cfg(0x18, 4, MMIO_BAR))
            .and(cfg(0x04, 2, 7))
            .map_err(|e| e.to_string())?;
        for (index, value) in [
            (4, 0),
            (3, 32),
            (1, WIDTH.into()),
            (2, HEIGHT.into()),
            (6, WIDTH.into()),
            (4, 0x41),
        ] {
            g.cpu
                .mmio_write(MMIO_BAR + 0x500 + 2 * index, 2, value)
                .map_err(|e| e.to_string())?;
        }
        for (r, v) in [
            (reg::RING_LO, RING),
            (reg::RING_HI, 0),
            (reg::RING_ENTRIES, u64::from(BATCH)),
            (reg::CONTROL, u64::from(CONTROL_ENABLE)),
        ] {
            g.engine(r, v)?;
        }
        Ok(g)
    }

    fn engine(&self, r: u64, v: u64) -> Result<()> {
        self.cpu
            .mmio_write(MMIO_BAR + REGS_OFFSET + r, 4, v)
            .map_err(|e| e.to_string())
    }

    /// Writes a ring of `BATCH - 1` copies of `command` and a fence.
    fn load_ring(&mut self, command: Command) -> Result<()> {
        let mut ring = Vec::with_capacity(BATCH as usize * 64);
        for _ in 0..BATCH - 1 {
            ring.extend_from_slice(command.as_bytes());
        }
        ring.extend_from_slice(Command::default().as_bytes()); // the fence, written per batch
        self.ram.write_ram(RING, &ring).map_err(|e| e.to_string())
    }

    /// Runs batches until `stop`; returns the commands completed (fences excluded). Each
    /// batch ends in a fence with a new value; the batch is done when `FENCE` shows it.
    fn pump(&mut self, stop: &AtomicBool) -> Result<u64> {
        let mut done = 0u64;
        while !stop.load(Ordering::Relaxed) {
            self.batch = self.batch.wrapping_add(1);
            let batch = self.batch;
            let fence = Command {
                opcode: opcode::FENCE,
                arg: batch,
                ..Command::default()
            };
            self.ram
                .write_ram(RING + u64::from(BATCH - 1) * 64, fence.as_bytes())
                .map_err(|e| e.to_string())?;
            self.tail = self.tail.wrapping_add(BATCH);
            self.engine(reg::TAIL, self.tail.into())?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while self
                .cpu
                .mmio_read(MMIO_BAR + REGS_OFFSET + reg::FENCE, 4)
                .map_err(|e| e.to_string())?
                != u64::from(batch)
            {
                if Instant::now() > deadline {
                    return Err("the 2D engine did not complete a batch within 10 s".into());
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            done += u64::from(BATCH - 1);
        }
        Ok(done)
    }
}

fn fill_command() -> Command {
    Command {
        opcode: opcode::FILL,
        arg: 0x0033_6699,
        dst_offset: 0,
        dst_pitch: WIDTH * 4,
        width: WIDTH,
        height: HEIGHT,
        ..Command::default()
    }
}

fn copy_command() -> Command {
    Command {
        opcode: opcode::COPY,
        src: 0,
        src_pitch: WIDTH * 4,
        dst_offset: WIDTH * 4 * (HEIGHT / 2),
        dst_pitch: WIDTH * 4,
        width: WIDTH,
        height: HEIGHT / 2,
        ..Command::default()
    }
}

/// Runs `f` on every guest at once for `secs`; the sum of what each returned and the time.
fn together<T: Send>(
    guests: &mut [T],
    secs: f64,
    f: impl Fn(&mut T, &AtomicBool) -> Result<u64> + Sync,
) -> Result<(u64, f64)> {
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let total = std::thread::scope(|s| {
        let (f, stop) = (&f, &stop);
        let handles: Vec<_> = guests
            .iter_mut()
            .map(|g| s.spawn(move || f(g, stop)))
            .collect();
        std::thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| "a guest thread panicked".to_string())?
            })
            .sum::<Result<u64>>()
    })?;
    Ok((total, started.elapsed().as_secs_f64()))
}

fn accesses(cpu: &SimVcpu, port: u16, stop: &AtomicBool) -> Result<u64> {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        cpu.pio_read(port, 2).map_err(|e| e.to_string())?;
        n += 1;
    }
    Ok(n)
}

/// memset (`copy = false`) or memcpy of one frame for `secs`: GB/s.
fn memory_limit(copy: bool, secs: f64) -> f64 {
    let src = vec![0x5au8; FRAME / 2];
    let mut dst = vec![0u8; FRAME];
    let mut half = vec![0u8; FRAME / 2];
    let counter = AtomicU64::new(0);
    let started = Instant::now();
    while started.elapsed().as_secs_f64() < secs {
        if copy {
            half.copy_from_slice(&src);
            std::hint::black_box(&half);
            counter.fetch_add((FRAME / 2) as u64, Ordering::Relaxed);
        } else {
            dst.fill(counter.load(Ordering::Relaxed) as u8);
            counter.fetch_add(FRAME as u64, Ordering::Relaxed);
        }
        std::hint::black_box(&dst);
    }
    counter.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64() / 1e9
}

/// Measures one row with `n` vGPUs for about `secs` seconds per figure.
pub async fn measure(n: usize, secs: f64) -> Result<Row> {
    let dir = std::env::temp_dir().join(format!("demu-bench-{}-{n}", std::process::id()));
    let host = Host::start(&dir)
        .await
        .map_err(|e| format!("cannot start the simulated host: {e}"))?;
    let result = measure_on(&host, n, secs);
    drop(host);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn measure_on(host: &Host, n: usize, secs: f64) -> Result<Row> {
    let dd = SimDomain::new(host.create_domain("gpu-dd", 64)?);
    let renderer = Renderer::start().map_err(|e| e.to_string())?;
    let mut domains = Vec::new();
    let mut running = Vec::new();
    for i in 0..n {
        let guest = SimDomain::new(host.create_hvm_domain(&format!("guest{i}"), 4096, 1)?);
        host.set_device_model(dd.domid(), guest.domid())?;
        let dm = Arc::new(dd.device_model(guest.domid()).map_err(|e| e.to_string())?);
        let vgpu = Vgpu::new(Arc::clone(&dm), BDF, VgpuConfig::default(), &renderer)
            .map_err(|e| e.to_string())?;
        let evtchn = dd.evtchn().map_err(|e| e.to_string())?;
        let server =
            Server::start(dm, evtchn, guest.domid(), vgpu, true).map_err(|e| e.to_string())?;
        server.deprivilege().map_err(|e| e.to_string())?;
        running.push(runner::spawn(server, &format!("demu-{i}")).map_err(|e| e.to_string())?);
        domains.push(guest);
    }
    let mut guests: Vec<Guest> = domains.iter().map(Guest::new).collect::<Result<_>>()?;

    let (hv_only, t) = together(guests.get_mut(..1).unwrap_or_default(), secs, |g, stop| {
        accesses(&g.cpu, 0x80, stop)
    })?;
    let limit_access_us = t * 1e6 / hv_only.max(1) as f64;
    let (total, t) = together(&mut guests, secs, |g, stop| accesses(&g.cpu, 0x1cf, stop))?;
    let accesses_per_s = total as f64 / t;
    let access_us = t * 1e6 * n as f64 / total.max(1) as f64;

    for g in &mut guests {
        g.load_ring(fill_command())?;
    }
    let (fills, t) = together(&mut guests, secs, Guest::pump)?;
    let fill_gbps = fills as f64 * FRAME as f64 / t / 1e9;
    for g in &mut guests {
        g.load_ring(copy_command())?;
    }
    let (copies, t) = together(&mut guests, secs, Guest::pump)?;
    let copy_gbps = copies as f64 * (FRAME / 2) as f64 / t / 1e9;
    drop(running);
    Ok(Row {
        vgpus: n,
        access_us,
        accesses_per_s,
        limit_access_us,
        fill_gbps,
        memset_gbps: memory_limit(false, secs),
        copy_gbps,
        memcpy_gbps: memory_limit(true, secs),
    })
}

/// The table header.
pub fn header() -> String {
    format!(
        "{:>5} | {:>10} {:>12} {:>10} {:>6} | {:>8} {:>8} {:>6} | {:>8} {:>8} {:>6}",
        "vGPUs",
        "access µs",
        "accesses/s",
        "hv-only µs",
        "ratio",
        "fill GB/s",
        "memset",
        "ratio",
        "copy GB/s",
        "memcpy",
        "ratio"
    )
}

impl Row {
    /// One line of the table.
    pub fn line(&self) -> String {
        format!(
            "{:>5} | {:>10.1} {:>12.0} {:>10.1} {:>6.2} | {:>8.2} {:>8.2} {:>6.2} | {:>8.2} {:>8.2} {:>6.2}",
            self.vgpus,
            self.access_us,
            self.accesses_per_s,
            self.limit_access_us,
            self.limit_access_us / self.access_us,
            self.fill_gbps,
            self.memset_gbps,
            self.fill_gbps / self.memset_gbps,
            self.copy_gbps,
            self.memcpy_gbps,
            self.copy_gbps / self.memcpy_gbps,
        )
    }
}
