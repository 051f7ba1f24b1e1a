//! `netback`: serve the vifs placed on this network driver domain.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let options = netback::cli::Options::parse();
    xen_backend::main_with("netback", netback::cli::run(options))
}
