//! `storage-dd`: the storage driver domain's supervisor. It runs `blkback` (the block backend),
//! starts it again whenever it dies, so that its frontends reconnect or it re-attaches to their
//! live rings, and keeps `health.json` (state, pid, restarts, last exit, the backend's
//! counters) in its run directory.

use clap::Parser;

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "storage-dd",
    about = "Runs blkback in the storage driver domain, restarts it when it dies, reports its health"
)]
struct Cli {
    #[command(flatten)]
    options: dd_supervisor::cli::Options,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    dd_supervisor::cli::run(dd_supervisor::cli::STORAGE, cli.options)
}
