//! The supervision loop: start the backend, wait for it to end, start it again after the
//! [`Backoff`] delay, until asked to stop; then end it (`SIGTERM`, then `SIGKILL` after a grace
//! period). The backend gets `SIGKILL` from the kernel if the supervisor itself dies
//! (`PR_SET_PDEATHSIG`), so a restarted supervisor never finds a second copy still serving the
//! same devices.

use std::ffi::OsString;
use std::future::Future;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::backoff::Backoff;
use crate::health::{Health, State};

/// What to run and how.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// The backend program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Environment variables it gets besides ours.
    pub env: Vec<(OsString, OsString)>,
    /// The stats file the backend writes (read into the health file's counters).
    pub stats_file: Option<PathBuf>,
    /// Where the health file goes.
    pub health_file: Option<PathBuf>,
    /// Restart delays.
    pub backoff: Backoff,
    /// How long a backend asked to stop (`SIGTERM`) has before it is killed.
    pub stop_grace: Duration,
}

/// Why supervision could not begin.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backend could not be started at all.
    #[error("cannot start {program}: {source}; give the backend's path with --backend")]
    Start {
        /// The program.
        program: String,
        /// What `exec` said.
        source: std::io::Error,
    },
}

fn lock(health: &Mutex<Health>) -> std::sync::MutexGuard<'_, Health> {
    health.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How a run ended, in words.
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "ended".into(),
    }
}

fn spawn(spec: &ServiceSpec) -> std::io::Result<tokio::process::Child> {
    let mut cmd = tokio::process::Command::new(&spec.program);
    cmd.args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let parent = std::process::id();
    // SAFETY: the closure runs in the child between fork and exec and only makes the
    // async-signal-safe system calls prctl and getppid.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The supervisor died before the prctl: the signal will never come.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        })
    };
    cmd.spawn()
}

/// Publishes `health` to the health file, if there is one.
fn publish(spec: &ServiceSpec, health: &Mutex<Health>, quiet: bool) {
    let Some(path) = &spec.health_file else {
        return;
    };
    let mut h = lock(health);
    h.refresh_counters(spec.stats_file.as_deref());
    if let Err(e) = h.write(path) {
        if quiet {
            tracing::debug!(path = %path.display(), "cannot write the health file: {e}");
        } else {
            tracing::warn!(path = %path.display(), "cannot write the health file: {e}");
        }
    }
}

/// Ends a backend: `SIGTERM`, then `SIGKILL` after `grace`.
async fn terminate(child: &mut tokio::process::Child, grace: Duration) {
    if let Some(pid) = child.id() {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

/// Runs the backend of `spec` until `stop` completes, restarting it whenever it ends;
/// `health` is kept up to date (and written to the health file). Fails only if the backend
/// cannot be started the first time (a wrong path); later failures to start are retried.
pub async fn supervise(
    spec: ServiceSpec,
    health: Arc<Mutex<Health>>,
    stop: impl Future<Output = ()>,
) -> Result<(), Error> {
    let mut backoff = spec.backoff.clone();
    let name = spec.program.display().to_string();
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut first = true;
    loop {
        let started = Instant::now();
        let ended = match spawn(&spec) {
            Ok(mut child) => {
                {
                    let mut h = lock(&health);
                    h.state = State::Running;
                    h.pid = child.id();
                    h.started = Some(Health::now());
                }
                tracing::info!(pid = child.id(), "{name} started");
                publish(&spec, &health, false);
                first = false;
                loop {
                    tokio::select! {
                        status = child.wait() => break Some(match status {
                            Ok(s) => describe(s),
                            Err(e) => format!("lost ({e})"),
                        }),
                        () = &mut stop => {
                            terminate(&mut child, spec.stop_grace).await;
                            break None;
                        }
                        _ = tick.tick() => publish(&spec, &health, true),
                    }
                }
            }
            Err(source) if first => {
                return Err(Error::Start {
                    program: name,
                    source,
                })
            }
            Err(e) => Some(format!("could not be started again: {e}")),
        };
        let Some(how) = ended else {
            break;
        };
        let delay = backoff.after_run(started.elapsed());
        tracing::warn!(
            "{name} {how} after {:.1} s; starting it again in {:.1} s",
            started.elapsed().as_secs_f64(),
            delay.as_secs_f64()
        );
        {
            let mut h = lock(&health);
            h.state = State::Restarting;
            h.pid = None;
            h.last_exit = Some(how);
            h.restarts += 1;
        }
        publish(&spec, &health, false);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = &mut stop => break,
        }
    }
    {
        let mut h = lock(&health);
        h.state = State::Stopped;
        h.pid = None;
    }
    publish(&spec, &health, false);
    tracing::info!("{name} stopped");
    Ok(())
}
