//! The thread behind one ring (a block queue, a network queue, a control ring): a stop signal
//! it polls beside its event channel, a failure flag it raises when the frontend misbehaves, and
//! the handle the control plane keeps to stop it and join it.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nix::sys::eventfd::{EfdFlags, EventFd};

/// What a worker thread and its handle share.
#[derive(Debug, Clone)]
pub struct WorkerSignals {
    stop: Arc<OwnedFd>,
    failed: Arc<AtomicBool>,
}

impl WorkerSignals {
    /// A fresh pair: not stopped, not failed.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            stop: Arc::new(OwnedFd::from(EventFd::from_flags(
                EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK,
            )?)),
            failed: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Polls readable once a stop was requested (register it in the worker's epoll).
    pub fn stop_fd(&self) -> RawFd {
        self.stop.as_raw_fd()
    }

    /// Consumes a stop request's wake-up (the request itself is the worker's to remember).
    pub fn clear_stop(&self) {
        let mut buf = [0u8; 8];
        let _ = nix::unistd::read(self.stop.as_raw_fd(), &mut buf);
    }

    /// The frontend misbehaved: the control plane will take the device down.
    pub fn fail(&self) {
        self.failed.store(true, Ordering::Release);
    }

    fn request_stop(&self) {
        let _ = nix::unistd::write(&*self.stop, &1u64.to_ne_bytes());
    }
}

/// A running worker thread; stopping it (or dropping the handle) waits for the thread, which
/// releases its mappings and ports before it ends.
#[derive(Debug)]
pub struct WorkerHandle {
    signals: WorkerSignals,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WorkerHandle {
    /// Runs `body` on a thread named `name`, signalled through `signals`.
    pub fn spawn(
        name: String,
        signals: WorkerSignals,
        body: impl FnOnce() + Send + 'static,
    ) -> io::Result<Self> {
        let thread = std::thread::Builder::new().name(name).spawn(body)?;
        Ok(Self {
            signals,
            thread: Some(thread),
        })
    }

    /// Whether the worker stopped because the frontend misbehaved.
    pub fn failed(&self) -> bool {
        self.signals.failed.load(Ordering::Acquire)
    }

    /// Asks the worker to stop and waits until it has.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.signals.request_stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Stops every worker of a device (each waits for its in-flight work) off the async runtime,
/// and returns when all have ended.
pub async fn stop_all(workers: Vec<WorkerHandle>) {
    if workers.is_empty() {
        return;
    }
    let _ =
        tokio::task::spawn_blocking(move || workers.into_iter().for_each(WorkerHandle::stop)).await;
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_wakes_the_worker_and_failure_is_reported() {
        let signals = WorkerSignals::new().unwrap();
        let theirs = signals.clone();
        let handle = WorkerHandle::spawn("t".into(), signals, move || {
            let mut fds = [nix::poll::PollFd::new(
                // SAFETY: the descriptor is owned by `theirs`, alive for this closure.
                unsafe { std::os::fd::BorrowedFd::borrow_raw(theirs.stop_fd()) },
                nix::poll::PollFlags::POLLIN,
            )];
            let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE);
            theirs.clear_stop();
            theirs.fail();
        })
        .unwrap();
        assert!(!handle.failed());
        handle.signals.request_stop();
        while !handle.failed() {
            std::thread::yield_now();
        }
        handle.stop();
    }
}
