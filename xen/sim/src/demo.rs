//! The demo the README runs first: a simulated host with two guest domains, each its own
//! process, that share memory through grants and signal each other through an event channel,
//! coordinating through xenstore — the same steps a frontend and a backend take.
//!
//! The two guest roles are also what the end-to-end tests drive: the *granter* grants one
//! writable and one read-only page and offers an unbound port; the *mapper* maps them, checks
//! that the read-only grant refuses writes, answers through the shared page and binds the port.
//! A third role, the *copier*, only grant-copies from the granter's page until it is killed.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use xen_abi::grant_table::status;
use xen_abi::DomId;
use xen_evtchn::{AsyncEventChannel, EventChannel};
use xen_grant::{GrantAllocator, GrantMapper, GrantedPages, SharedMemory};
use xen_store::perms::{Perm, PermKind};
use xen_store::Xs;

use crate::domain::SimDomain;
use crate::host::Host;

/// How long a guest waits for its peer at each step.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// The message the granter leaves in the shared page.
pub const PING: &[u8] = b"ping from the granter";
/// The mapper's answer.
pub const PONG: &[u8] = b"pong from the mapper";
/// The content of the read-only page.
pub const READ_ONLY_TEXT: &[u8] = b"read-only data";

/// A guest's part in the demo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Grants pages and offers a port.
    Granter,
    /// Maps the grants and binds the port.
    Mapper,
    /// Grant-copies from the granter's writable page without pause until killed (for the
    /// tests of a copier that dies mid-copy).
    Copier,
}

type Error = String;

fn err<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> Error + '_ {
    move |e| format!("{what}: {e}")
}

async fn timeout<T>(what: &str, fut: impl std::future::Future<Output = T>) -> Result<T, Error> {
    tokio::time::timeout(STEP_TIMEOUT, fut)
        .await
        .map_err(|_| format!("timed out waiting for {what}"))
}

/// Waits until `path` exists and returns its value.
async fn wait_for_key(xs: &Xs, path: &str) -> Result<Vec<u8>, Error> {
    let mut watch = xs.watch(path).await.map_err(err("watch"))?;
    loop {
        if let Some(v) = xs.read_opt(path).await.map_err(err("read"))? {
            return Ok(v);
        }
        timeout(path, watch.next()).await?;
    }
}

fn read_bytes(mem: &impl SharedMemory, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len.min(mem.len())];
    // SAFETY: `out.len() <= mem.len()`, inside the mapping; the peer may write concurrently,
    // which only changes the bytes we see.
    unsafe { std::ptr::copy_nonoverlapping(mem.as_ptr(), out.as_mut_ptr(), out.len()) };
    out
}

fn write_bytes(mem: &impl SharedMemory, data: &[u8]) {
    let len = data.len().min(mem.len());
    // SAFETY: `len <= mem.len()` within a writable mapping owned by `mem`.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), mem.as_ptr(), len) };
}

fn parse<T: std::str::FromStr>(bytes: &[u8], what: &str) -> Result<T, Error> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| format!("bad {what}"))
}

/// Reads key `key` of the granter's demo directory `base`.
async fn read_key<T: std::str::FromStr>(xs: &Xs, base: &str, key: &str) -> Result<T, Error> {
    parse(
        &xs.read(&format!("{base}/{key}"))
            .await
            .map_err(err("read"))?,
        key,
    )
}

/// Runs one guest role inside the domain named by `XEN_SIM`. With `hold`, the guest stays up
/// (with its grants, mappings and port live) until killed.
pub async fn run_guest(
    role: Role,
    peer: DomId,
    hold: bool,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let mut dom = SimDomain::from_env().map_err(|e| e.to_string())?;
    dom.boot().map_err(err("boot"))?;
    let xs = dom.xenstore().await.map_err(err("xenstore"))?;
    let evtchn =
        AsyncEventChannel::new(dom.evtchn().map_err(err("evtchn"))?).map_err(err("evtchn"))?;
    let grants = dom.grants().map_err(err("grants"))?;
    let me = dom.domid();
    match role {
        Role::Granter => {
            let rw = grants.grant_pages(peer, 1, true).map_err(err("grant"))?;
            let ro = grants.grant_pages(peer, 1, false).map_err(err("grant"))?;
            write_bytes(&rw, PING);
            write_bytes(&ro, READ_ONLY_TEXT);
            let port = evtchn
                .bind_unbound_port(peer)
                .map_err(err("alloc unbound"))?;
            xs.mkdir("data/demo").await.map_err(err("mkdir"))?;
            xs.set_perms(
                "data/demo",
                &[
                    Perm::new(me, PermKind::None),
                    Perm::new(peer, PermKind::Read),
                ],
            )
            .await
            .map_err(err("set perms"))?;
            let (rw_ref, ro_ref) = (
                rw.refs().first().copied().unwrap_or(0),
                ro.refs().first().copied().unwrap_or(0),
            );
            for (k, v) in [
                ("rw-ref", rw_ref),
                ("ro-ref", ro_ref),
                ("port", port),
                ("ready", 1),
            ] {
                xs.write(&format!("data/demo/{k}"), v.to_string().as_bytes())
                    .await
                    .map_err(err("write"))?;
            }
            writeln!(
                out,
                "granter d{me}: granted rw ref {rw_ref} and ro ref {ro_ref}, port {port}"
            )
            .map_err(err("out"))?;
            let fired = timeout("the mapper's event", evtchn.wait())
                .await?
                .map_err(err("wait"))?;
            evtchn.unmask(fired).map_err(err("unmask"))?;
            let answer = read_bytes(&rw, PONG.len());
            if answer != PONG {
                return Err(format!(
                    "shared page holds {:?}, expected the mapper's answer",
                    String::from_utf8_lossy(&answer)
                ));
            }
            writeln!(
                out,
                "granter d{me}: event on port {fired}; page says {:?}",
                String::from_utf8_lossy(&answer)
            )
            .map_err(err("out"))?;
            evtchn.notify(port).map_err(err("notify"))?;
            xs.write("data/demo/result", b"ok")
                .await
                .map_err(err("write"))?;
            if hold {
                std::future::pending::<()>().await;
            }
            let fired = timeout("the mapper's done event", evtchn.wait())
                .await?
                .map_err(err("wait"))?;
            evtchn.unmask(fired).map_err(err("unmask"))?;
            let deferred = rw.end_access().map_err(err("end access"))?;
            let deferred_ro = ro.end_access().map_err(err("end access"))?;
            if !deferred.is_empty() || !deferred_ro.is_empty() {
                return Err("grants still in use after the mapper unmapped them".into());
            }
            writeln!(out, "granter d{me}: ended access to both grants").map_err(err("out"))?;
        }
        Role::Mapper => {
            let base = format!("/local/domain/{peer}/data/demo");
            wait_for_key(&xs, &format!("{base}/ready")).await?;
            let rw_ref: u32 = read_key(&xs, &base, "rw-ref").await?;
            let ro_ref: u32 = read_key(&xs, &base, "ro-ref").await?;
            let port: u32 = read_key(&xs, &base, "port").await?;
            let rw = grants
                .map(peer, &[rw_ref], true)
                .map_err(err("map rw grant"))?;
            let ping = read_bytes(&rw, PING.len());
            if ping != PING {
                return Err(format!(
                    "granted page holds {:?}",
                    String::from_utf8_lossy(&ping)
                ));
            }
            write_bytes(&rw, PONG);
            match grants.map(peer, &[ro_ref], true) {
                Err(xen_grant::Error::Refused {
                    status: status::GENERAL_ERROR,
                    ..
                }) => {}
                Ok(_) => return Err("a read-only grant was mapped writable".into()),
                Err(e) => {
                    return Err(format!(
                        "unexpected error mapping a read-only grant writable: {e}"
                    ))
                }
            }
            let ro = grants
                .map(peer, &[ro_ref], false)
                .map_err(err("map ro grant"))?;
            if read_bytes(&ro, READ_ONLY_TEXT.len()) != READ_ONLY_TEXT {
                return Err("read-only page content differs".into());
            }
            // SAFETY: changes the protection of our own mapping only; expected to fail.
            let rc = unsafe {
                libc::mprotect(
                    ro.as_ptr().cast(),
                    ro.len(),
                    libc::PROT_READ | libc::PROT_WRITE,
                )
            };
            if rc == 0 {
                return Err("the kernel let a read-only grant mapping become writable".into());
            }
            writeln!(out, "mapper d{me}: mapped rw ref {rw_ref} (read the ping, wrote the pong); ro ref {ro_ref} refuses writes")
                .map_err(err("out"))?;
            let local = evtchn.bind_interdomain(peer, port).map_err(err("bind"))?;
            evtchn.notify(local).map_err(err("notify"))?;
            let fired = timeout("the granter's event", evtchn.wait())
                .await?
                .map_err(err("wait"))?;
            evtchn.unmask(fired).map_err(err("unmask"))?;
            writeln!(
                out,
                "mapper d{me}: bound port {local} to d{peer}:{port}; event came back"
            )
            .map_err(err("out"))?;
            if hold {
                xs.write("data/holding", b"1").await.map_err(err("write"))?;
                std::future::pending::<()>().await;
            }
            drop(rw);
            drop(ro);
            evtchn.notify(local).map_err(err("notify"))?;
        }
        Role::Copier => copy_until_killed(&xs, &grants, peer).await?,
    }
    Ok(())
}

/// The copier's part: copies the granter's writable page into a buffer, 64 times per batch,
/// batch after batch, and says so in `data/copying` once the first batch is done.
async fn copy_until_killed(
    xs: &Xs,
    grants: &crate::domain::SimGrants,
    peer: DomId,
) -> Result<(), Error> {
    let base = format!("/local/domain/{peer}/data/demo");
    wait_for_key(xs, &format!("{base}/ready")).await?;
    let rw_ref: u32 = read_key(xs, &base, "rw-ref").await?;
    let mut buffers = vec![[0u8; xen_abi::PAGE_SIZE]; 64];
    let mut announced = false;
    loop {
        let mut ops: Vec<xen_grant::CopyOp<'_>> = buffers
            .iter_mut()
            .map(|b| xen_grant::CopyOp::FromGrant {
                src: xen_grant::GrantPtr {
                    domid: peer,
                    gref: rw_ref,
                    offset: 0,
                },
                dst: b,
            })
            .collect();
        let mut st = vec![status::GENERAL_ERROR; ops.len()];
        grants.copy(&mut ops, &mut st).map_err(err("copy"))?;
        if st.iter().any(|&s| s != status::OKAY) {
            return Err(format!("grant copy refused: {st:?}"));
        }
        if !announced {
            xs.write("data/copying", b"1").await.map_err(err("write"))?;
            announced = true;
        }
    }
}

/// Starts a host in `run_dir`, runs the two guests as processes of `exe demo-guest`, and
/// reports what happened.
pub async fn run_demo(exe: &Path, run_dir: &Path, out: &mut dyn Write) -> Result<(), Error> {
    let host = Host::start(run_dir).await.map_err(err("start host"))?;
    writeln!(out, "simulated Xen host up in {}", host.run_dir().display()).map_err(err("out"))?;
    let dom0 = host.xenstored().dom0_client().map_err(err("xenstore"))?;
    let granter = host.create_domain("demo-granter", 256)?;
    let mapper = host.create_domain("demo-mapper", 256)?;
    let spawn = |creds: &crate::Credentials, role: &str, peer: DomId| {
        let mut cmd = Host::command(creds, exe);
        cmd.args(["demo-guest", "--role", role, "--peer", &peer.to_string()]);
        cmd.kill_on_drop(true);
        cmd.output()
    };
    let (g, m) = tokio::join!(
        spawn(&granter, "granter", mapper.domid),
        spawn(&mapper, "mapper", granter.domid)
    );
    let (g, m) = (
        g.map_err(err("run granter"))?,
        m.map_err(err("run mapper"))?,
    );
    out.write_all(&g.stdout).map_err(err("out"))?;
    out.write_all(&m.stdout).map_err(err("out"))?;
    if !g.status.success() || !m.status.success() {
        return Err(format!(
            "a guest failed:\n{}{}",
            String::from_utf8_lossy(&g.stderr),
            String::from_utf8_lossy(&m.stderr)
        ));
    }
    // Both guest processes exited, so both domains are gone and the toolstack removed them.
    for d in [granter.domid, mapper.domid] {
        for _ in 0..100 {
            if !dom0
                .exists(&format!("/local/domain/{d}"))
                .await
                .map_err(err("read"))?
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let left = host.hypervisor().domains().len();
    writeln!(out, "both guests exited; domains left: {left} (dom0)").map_err(err("out"))?;
    Ok(())
}

/// Runs a host in `run_dir` until Ctrl-C or SIGTERM.
pub async fn run_host(run_dir: &Path, out: &mut dyn Write) -> Result<(), Error> {
    let host = Host::start(run_dir).await.map_err(|e| {
        format!(
            "cannot start the host in {}: {e} (choose another directory with --run-dir)",
            run_dir.display()
        )
    })?;
    writeln!(
        out,
        "simulated Xen host running in {}",
        host.run_dir().display()
    )
    .map_err(err("out"))?;
    writeln!(
        out,
        "  xenstore-ls:  XENSTORED_PATH={} xenstore-ls",
        host.xenstored_socket().display()
    )
    .map_err(err("out"))?;
    writeln!(
        out,
        "  dom0 programs: source {}/dom0.env",
        host.run_dir().display()
    )
    .map_err(err("out"))?;
    out.flush().map_err(err("out"))?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(err("signal"))?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}
