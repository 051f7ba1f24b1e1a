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
        idle_share(&self.thread.join().ok()?)
    }
}

/// The share of idle samples in the middle 70% of the stretch from the first to the last busy
/// sample; `None` if none was busy.
fn idle_share(busy: &[bool]) -> Option<f64> {
    let first = busy.iter().position(|&b| b)?;
    let last = busy.iter().rposition(|&b| b)?;
    let trim = (last - first) * 15 / 100;
    let window = busy.get(first + trim..=last - trim)?;
    let idle = window.iter().filter(|&&b| !b).count();
    Some(idle as f64 / window.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::idle_share;

    #[test]
    fn setup_and_ramps_do_not_count_and_a_never_busy_disk_has_no_share() {
        assert_eq!(idle_share(&[false; 10]), None);
        assert_eq!(idle_share(&[]), None);
        assert_eq!(idle_share(&[true]), Some(0.0));
        // 100 idle samples of setup, then 100 samples alternating busy/idle ending busy, then
        // 50 idle of teardown: only the alternating middle counts.
        let mut samples = vec![false; 100];
        samples.extend((0..100).map(|i| i % 2 == 1));
        samples.extend([false; 50]);
        let share = idle_share(&samples).unwrap();
        assert!((0.45..=0.55).contains(&share), "{share}");
        // A ramp at the start (mostly idle) is trimmed away.
        let mut ramped = vec![true, false, false, false, false, false, false, false];
        ramped.extend([true; 92]);
        assert_eq!(idle_share(&ramped), Some(0.0));
    }

    #[test]
    fn the_sampled_file_reads_as_a_count() {
        let dir = std::env::temp_dir().join(format!("disk-idle-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("inflight");
        std::fs::write(&f, "       3        4\n").unwrap();
        assert_eq!(super::in_flight(&f), Some(7));
        std::fs::write(&f, "x 4\n").unwrap();
        assert_eq!(super::in_flight(&f), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
