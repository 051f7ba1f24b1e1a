//! `blkback`: serve the block devices placed on this driver domain.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let options = blkback::cli::Options::parse();
    xen_backend::main_with("blkback", blkback::cli::run(options))
}
