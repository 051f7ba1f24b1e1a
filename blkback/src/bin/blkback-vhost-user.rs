//! `blkback-vhost-user`: serve a disk as a vhost-user-blk device for a KVM hypervisor's VMM.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let options = blkback::vhost_user::cli::Options::parse();
    xen_backend::main_with("blkback-vhost-user", blkback::vhost_user::cli::run(options))
}
