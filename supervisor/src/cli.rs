//! The command line the role binaries share (`storage-dd` runs `blkback`, `network-dd` runs
//! `netback`): where the backend is, where the health and stats files go, and the backend's
//! own arguments after `--`. The supervisor stops its backend and ends on `SIGTERM` or
//! `SIGINT`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{supervise, Backoff, Health, ServiceSpec};

/// A driver domain's role: which backend it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Role {
    /// The role's name (`storage`).
    pub name: &'static str,
    /// The backend program's name (`blkback`).
    pub backend: &'static str,
}

/// The storage driver domain: block backends.
pub const STORAGE: Role = Role {
    name: "storage",
    backend: "blkback",
};

/// The network driver domain: network backends.
pub const NETWORK: Role = Role {
    name: "network",
    backend: "netback",
};

/// Options every role binary takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// The backend program (default: the backend next to this program, else found on PATH).
    #[arg(long)]
    pub backend: Option<PathBuf>,
    /// Directory for `health.json` and the backend's stats file (default: `/run/<role>-dd`).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Seconds a backend asked to stop has before it is killed.
    #[arg(long, default_value_t = 5)]
    pub stop_grace: u64,
    /// The backend's own arguments, after `--` (e.g. `-- --max-queues 8`).
    #[arg(last = true)]
    pub backend_args: Vec<OsString>,
}

/// The backend program: `--backend`, else the one beside this program, else its bare name
/// (found on PATH when started).
fn backend_path(role: Role, given: Option<PathBuf>) -> PathBuf {
    given.unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join(role.backend)))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from(role.backend))
    })
}

/// The service to run for `role` with `options`, its files in `run_dir`.
pub fn service_spec(role: Role, options: Options, run_dir: &Path) -> ServiceSpec {
    let stats_file = run_dir.join(format!("{}-stats.json", role.backend));
    let mut args = options.backend_args;
    let has_stats = args.iter().any(|a| a == "--stats-file");
    if !has_stats {
        args.push("--stats-file".into());
        args.push(stats_file.clone().into());
    }
    ServiceSpec {
        program: backend_path(role, options.backend),
        args,
        env: Vec::new(),
        stats_file: (!has_stats).then_some(stats_file),
        health_file: Some(run_dir.join("health.json")),
        backoff: Backoff::default(),
        stop_grace: Duration::from_secs(options.stop_grace),
    }
}

/// Completes on `SIGTERM` or `SIGINT`.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            tracing::warn!("cannot watch for SIGTERM; stop with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
}

/// The body of a role binary's `main`.
pub fn run(role: Role, options: Options) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let program = format!("{}-dd", role.name);
    let fail = |message: String| {
        eprintln!("{program}: {message}");
        ExitCode::FAILURE
    };
    let run_dir = options
        .run_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/run/{program}")));
    if let Err(e) = std::fs::create_dir_all(&run_dir) {
        return fail(format!(
            "cannot create {}: {e}; give a writable directory with --run-dir",
            run_dir.display()
        ));
    }
    // One thread: the backend's parent-death signal follows the thread that started it.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start the async runtime: {e}")),
    };
    let spec = service_spec(role, options, &run_dir);
    let health = Arc::new(Mutex::new(Health::new(role.name, role.backend)));
    match runtime.block_on(supervise(spec, health, stop_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backend_writes_its_stats_where_the_health_file_reads_them() {
        let options = Options {
            backend: Some("/opt/blkback".into()),
            run_dir: None,
            stop_grace: 5,
            backend_args: vec!["--max-queues".into(), "8".into()],
        };
        let spec = service_spec(STORAGE, options.clone(), Path::new("/run/x"));
        assert_eq!(spec.program, PathBuf::from("/opt/blkback"));
        assert_eq!(
            spec.args,
            [
                "--max-queues",
                "8",
                "--stats-file",
                "/run/x/blkback-stats.json"
            ]
            .map(OsString::from)
        );
        assert_eq!(
            spec.stats_file.as_deref(),
            Some(Path::new("/run/x/blkback-stats.json"))
        );
        assert_eq!(
            spec.health_file.as_deref(),
            Some(Path::new("/run/x/health.json"))
        );
        // A stats file the operator chose is left alone.
        let mut own = options;
        own.backend_args = ["--stats-file", "/srv/s.json"].map(OsString::from).to_vec();
        let spec = service_spec(NETWORK, own, Path::new("/run/x"));
        assert_eq!(spec.args.len(), 2);
        assert_eq!(spec.stats_file, None);
    }
}
