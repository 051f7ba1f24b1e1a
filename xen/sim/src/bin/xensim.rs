//! `xensim`: run the simulated Xen host, or its demo.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use xen_sim::demo::Role;

#[derive(Parser)]
#[command(about = "The simulated Xen host: hypervisor, xenstored and domains as processes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the host until interrupted; prints how to reach its xenstored.
    Host {
        /// Directory for the host's sockets.
        #[arg(long, default_value = "/run/xen-sim")]
        run_dir: PathBuf,
    },
    /// Start a host and two guest domains that share a page and signal each other.
    Demo {
        /// Directory for the host's sockets (a fresh temporary one by default).
        #[arg(long)]
        run_dir: Option<PathBuf>,
    },
    /// Measure xenstored, grant and event-channel costs against their limits on this machine.
    Bench {
        /// Iterations per measurement.
        #[arg(long, default_value_t = 20000)]
        iterations: u32,
    },
    /// One guest of the demo (run inside a domain by `demo`).
    #[command(hide = true)]
    DemoGuest {
        #[arg(long, value_enum)]
        role: Role,
        #[arg(long)]
        peer: u16,
        /// Stay up, holding grants and ports, until killed.
        #[arg(long)]
        hold: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("xensim: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout();
    let result = runtime.block_on(async {
        match cli.command {
            Command::Host { run_dir } => xen_sim::demo::run_host(&run_dir, &mut stdout).await,
            Command::Demo { run_dir } => {
                let dir = run_dir.unwrap_or_else(|| {
                    std::env::temp_dir().join(format!("xen-sim-demo-{}", std::process::id()))
                });
                let exe = std::env::current_exe()
                    .map_err(|e| format!("cannot find this program: {e}"))?;
                let r = xen_sim::demo::run_demo(&exe, &dir, &mut stdout).await;
                let _ = std::fs::remove_dir_all(&dir);
                r
            }
            Command::Bench { iterations } => {
                let dir =
                    std::env::temp_dir().join(format!("xen-sim-bench-{}", std::process::id()));
                let r = xen_sim::bench::run(&dir, iterations, &mut stdout).await;
                let _ = std::fs::remove_dir_all(&dir);
                r
            }
            Command::DemoGuest { role, peer, hold } => {
                xen_sim::demo::run_guest(role, peer, hold, &mut stdout).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xensim: {e}");
            ExitCode::FAILURE
        }
    }
}
