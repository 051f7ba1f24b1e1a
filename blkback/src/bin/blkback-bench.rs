//! `blkback-bench`: blkback on the simulated host against fio on the same file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(about = "Benchmark blkback on the simulated host against fio on the same file")]
struct Args {
    /// Directory for the test file and the host's sockets (on the filesystem to measure).
    #[arg(long, default_value = "target/blkback-bench")]
    dir: PathBuf,
    /// Size of the test file in MiB.
    #[arg(long, default_value_t = 1024)]
    file_mib: u64,
    /// Seconds per run.
    #[arg(long, default_value_t = 3)]
    seconds: u32,
    /// Only workloads whose name contains this (e.g. "qd32", "1M seqwrite").
    #[arg(long)]
    workload: Option<String>,
    /// Queue counts to run, e.g. `--queues 1` (default: 1 and 2).
    #[arg(long, value_delimiter = ',')]
    queues: Vec<usize>,
    /// Only the main table against fio.
    #[arg(long)]
    main_only: bool,
    /// Measure each row of the main table this many times (fio and ours alternating) and
    /// show the median: the machine is noisy.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=15))]
    repeat: u32,
    /// Measure blkback-vhost-user against qemu-storage-daemon's vhost-user-blk export instead
    /// (needs qemu-storage-daemon: apt-get install qemu-system-common).
    #[arg(long)]
    vhost_user: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.queues.iter().any(|&q| q == 0 || q > 16) {
        eprintln!("blkback-bench: --queues takes counts from 1 to 16, e.g. --queues 1,2");
        return ExitCode::FAILURE;
    }
    let selection = blkback::bench::Selection {
        workload: args.workload,
        queues: args.queues,
        main_only: args.main_only,
        repeat: args.repeat as usize,
    };
    let mut stdout = std::io::stdout();
    if args.vhost_user {
        let result = blkback::bench::vhost::run(
            &args.dir,
            args.file_mib,
            args.seconds,
            &selection,
            &mut stdout,
        );
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("blkback-bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("blkback-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(blkback::bench::run(
        &args.dir,
        args.file_mib,
        args.seconds,
        &selection,
        &mut stdout,
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blkback-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
