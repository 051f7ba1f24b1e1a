//! `demu`: emulate the vGPUs of HVM guests (see `demu --help`).

use clap::Parser;

fn main() -> std::process::ExitCode {
    let options = demu::cli::Options::parse();
    xen_backend::main_with("demu", demu::cli::run(options))
}
