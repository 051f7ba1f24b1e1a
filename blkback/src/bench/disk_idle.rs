//! How much of a run the backing disk had nothing to do: a thread samples the block device's
//! requests in flight (`/sys/dev/block/MAJOR:MINOR/inflight`) every millisecond, and counts
//! the idle samples in the middle 70% of the stretch from the first to the last busy one (so
//! that a run's setup, ramp-up and teardown do not count).
//!
//! At queue depth 32 the limit (fio) and ours keep about as many requests in flight while the
//! disk is busy; what separates them is how often the disk sits idle between a completed batch
//! and the next submissions, which for ours includes the guest's round trip.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// A running sampler.
pub(super) struct DiskIdle {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<bool>>,
}

/// The `inflight` file of the block device holding `file`, if it has one (not on tmpfs or
/// overlay, whose device number names no block device).
fn inflight_path(file: &Path) -> Option<PathBuf> {
    let dev = std::fs::metadata(file).ok()?.dev();
    let path = PathBuf::from(format!(
        "/sys/dev/block/{}:{}/inflight",
        libc::major(dev),
        libc::minor(dev)
    ));
    path.exists().then_some(path)
}

/// Reads one sample: reads plus writes in flight.
fn in_flight(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.split_whitespace()
        .map(|n| n.parse::<u64>().ok())
        .sum::<Option<u64>>()
}

impl DiskIdle {
    /// Starts sampling the disk holding `file`; `None` where it cannot be sampled.
    pub(super) fn start(file: &Path) -> Option<Self> {
        let path = inflight_path(file)?;
        in_flight(&path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("disk-idle".into())
            .spawn(move || {
                let mut busy = Vec::new();
                while !flag.load(Ordering::Relaxed) {
                    if let Some(n) = in_flight(&path) {
                        busy.push(n > 0);
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                busy
            })
            .ok()?;
        Some(Self { stop, thread })
    }

    /// Stops sampling: the share of samples with nothing in flight in the middle 70% of the
    /// stretch between the first and the last busy one, if the disk was ever busy.
    pub(super) fn finish(self) -> Option<f64> {
        self.stop.store(true, Ordering::Relaxed);
        let busy = self.thread.join().ok()?;
        let first = busy.iter().position(|&b| b)?;
        let last = busy.iter().rposition(|&b| b)?;
        let trim = (last - first) * 15 / 100;
        let window = busy.get(first + trim..=last - trim)?;
        let idle = window.iter().filter(|&&b| !b).count();
        Some(idle as f64 / window.len() as f64)
    }
}
