//! `xensim bench`: what the simulated host's primitives cost, each next to the limit that the
//! same machine sets in the same run (these machines are shared and noisy, so ratios are what
//! compare across runs):
//!
//! - xenstored requests per second over its unix socket, against a bare request/reply echo over
//!   a unix socket;
//! - a grant map + unmap, against `mmap` + `munmap` of one memfd page;
//! - a grant copy of 4 KiB, against `memcpy` of 4 KiB;
//! - an event-channel round trip between two domains, against an eventfd ping-pong between two
//!   threads.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use xen_evtchn::EventChannel;
use xen_grant::{CopyOp, GrantAllocator, GrantMapper, GrantPtr, GrantedPages};

use crate::{Host, SimDomain};

type Error = String;

fn per_op(elapsed: Duration, n: u32) -> f64 {
    elapsed.as_secs_f64() * 1e6 / f64::from(n.max(1))
}

fn line(
    out: &mut dyn Write,
    what: &str,
    ours: f64,
    unit: &str,
    limit: f64,
    limit_name: &str,
) -> Result<(), Error> {
    writeln!(
        out,
        "{what:<34} {ours:>10.2} {unit:<6} limit ({limit_name}) {limit:>9.2} {unit:<6} ratio {:.2}",
        ours / limit
    )
    .map_err(|e| e.to_string())
}

fn wait_readable(fd: RawFd) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, 5000) };
}

/// A request/reply echo over a unix socket pair: the floor under any xenstored round trip.
fn socket_echo_rate(n: u32) -> Result<f64, Error> {
    let (mut a, mut b) = std::os::unix::net::UnixStream::pair().map_err(|e| e.to_string())?;
    let server = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while b.read_exact(&mut buf).is_ok() {
            if b.write_all(&buf).is_err() {
                break;
            }
        }
    });
    let mut buf = [0u8; 64];
    let start = Instant::now();
    for _ in 0..n {
        a.write_all(&buf).map_err(|e| e.to_string())?;
        a.read_exact(&mut buf).map_err(|e| e.to_string())?;
    }
    let rate = f64::from(n) / start.elapsed().as_secs_f64();
    drop(a);
    let _ = server.join();
    Ok(rate)
}

/// An eventfd ping-pong between two threads: the floor under an event round trip.
fn eventfd_round_trip(n: u32) -> Result<f64, Error> {
    use nix::sys::eventfd::{EfdFlags, EventFd};
    let ping = EventFd::from_flags(EfdFlags::EFD_NONBLOCK).map_err(|e| e.to_string())?;
    let pong = EventFd::from_flags(EfdFlags::EFD_NONBLOCK).map_err(|e| e.to_string())?;
    let (ping_fd, pong_fd) = (ping.as_fd().as_raw_fd(), pong.as_fd().as_raw_fd());
    let one = 1u64.to_ne_bytes();
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 8];
        for _ in 0..n {
            wait_readable(ping_fd);
            // SAFETY: valid eventfds owned by the outer function, which joins this thread.
            unsafe {
                libc::read(ping_fd, buf.as_mut_ptr().cast(), 8);
                libc::write(pong_fd, one.as_ptr().cast(), 8);
            }
        }
    });
    let mut buf = [0u8; 8];
    let start = Instant::now();
    for _ in 0..n {
        // SAFETY: as above.
        unsafe { libc::write(ping_fd, one.as_ptr().cast(), 8) };
        wait_readable(pong_fd);
        // SAFETY: as above.
        unsafe { libc::read(pong_fd, buf.as_mut_ptr().cast(), 8) };
    }
    let us = per_op(start.elapsed(), n);
    let _ = echo.join();
    Ok(us)
}

fn mmap_floor(n: u32) -> Result<f64, Error> {
    let fd = nix::sys::memfd::memfd_create(c"bench", nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)
        .map_err(|e| e.to_string())?;
    let file = std::fs::File::from(fd);
    file.set_len(4096).map_err(|e| e.to_string())?;
    let start = Instant::now();
    for _ in 0..n {
        // SAFETY: a fresh shared mapping of our own memfd, touched once and unmapped.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            );
            if p == libc::MAP_FAILED {
                return Err("mmap failed".into());
            }
            std::ptr::write_volatile(p.cast::<u8>(), 1);
            libc::munmap(p, 4096);
        }
    }
    Ok(per_op(start.elapsed(), n))
}

/// Runs the benchmark with a host in `run_dir`.
pub async fn run(run_dir: &Path, iterations: u32, out: &mut dyn Write) -> Result<(), Error> {
    let host = Host::start(run_dir)
        .await
        .map_err(|e| format!("cannot start the host: {e}"))?;
    let n = iterations.max(100);
    writeln!(
        out,
        "simulated host benchmark, {n} iterations each (ratio = ours / limit)"
    )
    .map_err(|e| e.to_string())?;

    // xenstored.
    let xs = xen_store::Xs::connect_unix(&host.xenstored_socket())
        .await
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    for i in 0..n {
        xs.write(&format!("/bench/k{}", i % 256), b"value")
            .await
            .map_err(|e| e.to_string())?;
    }
    let writes = f64::from(n) / start.elapsed().as_secs_f64();
    let start = Instant::now();
    for i in 0..n {
        xs.read(&format!("/bench/k{}", i % 256))
            .await
            .map_err(|e| e.to_string())?;
    }
    let reads = f64::from(n) / start.elapsed().as_secs_f64();
    let start = Instant::now();
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let xs = xs.clone();
            tokio::spawn(async move {
                for i in 0..n / 16 {
                    let _ = xs.read(&format!("/bench/k{}", (i + t) % 256)).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.map_err(|e| e.to_string())?;
    }
    let pipelined = f64::from(n / 16 * 16) / start.elapsed().as_secs_f64();
    let echo = socket_echo_rate(n)?;
    line(
        out,
        "xenstored write (ops/s)",
        writes / 1e3,
        "kops",
        echo / 1e3,
        "socket echo",
    )?;
    line(
        out,
        "xenstored read (ops/s)",
        reads / 1e3,
        "kops",
        echo / 1e3,
        "socket echo",
    )?;
    line(
        out,
        "xenstored read, 16 in flight",
        pipelined / 1e3,
        "kops",
        echo / 1e3,
        "socket echo",
    )?;

    // Grants.
    let a = SimDomain::new(
        host.create_domain("bench-a", 1024)
            .map_err(|e| e.to_string())?,
    );
    let b = SimDomain::new(
        host.create_domain("bench-b", 1024)
            .map_err(|e| e.to_string())?,
    );
    let (ga, gb) = (
        a.grants().map_err(|e| e.to_string())?,
        b.grants().map_err(|e| e.to_string())?,
    );
    let floor = mmap_floor(n)?;
    for pages in [1usize, 11] {
        let granted = ga
            .grant_pages(b.domid(), pages, true)
            .map_err(|e| e.to_string())?;
        let refs = granted.refs().to_vec();
        let start = Instant::now();
        for _ in 0..n {
            let m = gb.map(a.domid(), &refs, true).map_err(|e| e.to_string())?;
            // SAFETY: touches the first byte of the fresh mapping.
            unsafe { std::ptr::write_volatile(xen_grant::SharedMemory::as_ptr(&m), 1) };
        }
        let us = per_op(start.elapsed(), n);
        line(
            out,
            &format!("grant map+unmap, {pages} page(s) (us)"),
            us,
            "us",
            floor * pages as f64,
            "mmap+munmap",
        )?;
    }
    let granted = ga
        .grant_pages(b.domid(), 16, true)
        .map_err(|e| e.to_string())?;
    let mut bufs = vec![[0u8; 4096]; 16];
    let start = Instant::now();
    for _ in 0..n / 16 {
        let mut ops: Vec<CopyOp<'_>> = bufs
            .iter_mut()
            .zip(granted.refs())
            .map(|(buf, &gref)| CopyOp::FromGrant {
                src: GrantPtr {
                    domid: a.domid(),
                    gref,
                    offset: 0,
                },
                dst: buf,
            })
            .collect();
        let mut st = vec![0i16; ops.len()];
        gb.copy(&mut ops, &mut st).map_err(|e| e.to_string())?;
    }
    let copy_us = per_op(start.elapsed(), n / 16 * 16);
    let src = vec![7u8; 4096];
    let mut dst = vec![0u8; 4096];
    let start = Instant::now();
    for i in 0..n * 16 {
        dst.copy_from_slice(&src);
        std::hint::black_box((&dst, i));
    }
    let memcpy_us = per_op(start.elapsed(), n * 16);
    line(
        out,
        "grant copy 4 KiB, batches of 16 (us)",
        copy_us,
        "us",
        memcpy_us,
        "memcpy",
    )?;

    // Event channels.
    let (ea, eb) = (
        a.evtchn().map_err(|e| e.to_string())?,
        b.evtchn().map_err(|e| e.to_string())?,
    );
    let pa = ea.bind_unbound_port(b.domid()).map_err(|e| e.to_string())?;
    let pb = eb
        .bind_interdomain(a.domid(), pa)
        .map_err(|e| e.to_string())?;
    let echo_thread = std::thread::spawn(move || {
        for _ in 0..n {
            loop {
                if let Ok(Some(p)) = eb.pending() {
                    let _ = eb.unmask(p);
                    break;
                }
                wait_readable(eb.readiness_fd());
            }
            let _ = eb.notify(pb);
        }
        eb
    });
    let start = Instant::now();
    for _ in 0..n {
        ea.notify(pa).map_err(|e| e.to_string())?;
        loop {
            if let Some(p) = ea.pending().map_err(|e| e.to_string())? {
                ea.unmask(p).map_err(|e| e.to_string())?;
                break;
            }
            wait_readable(ea.readiness_fd());
        }
    }
    let rtt = per_op(start.elapsed(), n);
    let _ = echo_thread.join();
    line(
        out,
        "event channel round trip (us)",
        rtt,
        "us",
        eventfd_round_trip(n)?,
        "eventfd ping-pong",
    )?;
    Ok(())
}
