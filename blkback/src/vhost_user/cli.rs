//! The `blkback-vhost-user` command: serve one disk as a vhost-user-blk device on a socket.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;

use super::{serve, DeviceSpec, MAX_QUEUES};
use crate::storage::raw::{RawDisk, RawOptions};

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    name = "blkback-vhost-user",
    about = "Serve a raw file or block device as a vhost-user-blk device (io_uring, O_DIRECT)"
)]
pub struct Options {
    /// The vhost-user socket to create (QEMU: `-chardev socket,path=...` with
    /// `-device vhost-user-blk-pci`).
    #[arg(long)]
    pub socket: PathBuf,
    /// The raw file or block device to serve.
    #[arg(long)]
    pub disk: PathBuf,
    /// Serve the disk read-only (`VIRTIO_BLK_F_RO`).
    #[arg(long)]
    pub read_only: bool,
    /// Request queues offered (one thread and one io_uring each).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_QUEUES)))]
    pub queues: u16,
    /// Logical block size of a file (512 or 4096; a block device reports its own).
    #[arg(long, value_parser = ["512", "4096"])]
    pub sector_size: Option<String>,
    /// Go through the host page cache instead of `O_DIRECT`.
    #[arg(long)]
    pub buffered: bool,
    /// The identity the guest reads (`GET_ID`, /sys/block/vdX/serial); at most 20 bytes.
    /// Default: the disk's file name.
    #[arg(long)]
    pub serial: Option<String>,
    /// Write the queues' counters to this file as JSON, once a second (for a supervisor:
    /// `storage-dd --backend blkback-vhost-user -- ...` passes it).
    #[arg(long)]
    pub stats_file: Option<PathBuf>,
}

/// Serves until the process is stopped.
pub async fn run(options: Options) -> Result<(), String> {
    let raw = RawOptions {
        read_only: options.read_only,
        sector_size: options.sector_size.as_deref().and_then(|s| s.parse().ok()),
        buffered: options.buffered,
    };
    let disk = RawDisk::open(&options.disk, raw)
        .map_err(|e| format!("cannot open the disk {}: {e}", options.disk.display()))?;
    let serial = match options.serial {
        Some(s) if s.len() > 20 => {
            return Err(format!(
                "the serial {s:?} has {} bytes; give at most 20",
                s.len()
            ))
        }
        Some(s) => s,
        None => options
            .disk
            .file_name()
            .map(|n| n.to_string_lossy().chars().take(20).collect())
            .unwrap_or_default(),
    };
    let spec = DeviceSpec::new(Arc::new(disk), options.queues, serial);
    let socket = options.socket;
    if let Some(path) = options.stats_file {
        let counters = spec.clone();
        let (socket, disk) = (socket.clone(), options.disk.clone());
        xen_backend::spawn_stats_writer(path, move || {
            let snapshot = serde_json::json!({
                "socket": socket,
                "disk": disk,
                "queues": counters.snapshot(),
            });
            serde_json::to_vec_pretty(&snapshot).ok()
        });
    }
    tokio::task::spawn_blocking(move || serve(&socket, &spec, None))
        .await
        .map_err(|e| format!("the server thread failed: {e}"))?
        .map(drop)
        .map_err(|e| e.to_string())
}
