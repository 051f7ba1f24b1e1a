//! `netback-bench`: iperf3 between two simulated guests through netback against a veth pair.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    about = "Benchmark netback on the simulated host against a veth pair (needs root, iperf3, ethtool)"
)]
struct Args {
    /// Directory for the simulated host's sockets.
    #[arg(long, default_value = "target/netback-bench")]
    dir: PathBuf,
    /// Seconds per iperf3 run.
    #[arg(long, default_value_t = 3)]
    seconds: u32,
    /// Queue counts to measure (1..=8), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1u32, 4],
          value_parser = clap::value_parser!(u32).range(1..=8))]
    queues: Vec<u32>,
    /// Offload settings to measure (`on`, `off`), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [Offloads::On, Offloads::Off])]
    offloads: Vec<Offloads>,
    /// Runs per measurement (veth and netback alternating); the median is shown.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=15))]
    repeat: u32,
}

/// Offloads on or off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Offloads {
    On,
    Off,
}

impl std::fmt::Display for Offloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::On => "on",
            Self::Off => "off",
        })
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("netback-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout();
    let offloads: Vec<bool> = args.offloads.iter().map(|o| *o == Offloads::On).collect();
    match runtime.block_on(netback::bench::run(
        &args.dir,
        args.seconds,
        &args.queues,
        &offloads,
        args.repeat,
        &mut stdout,
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netback-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
