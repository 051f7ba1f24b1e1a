//! Runs an ioreq server on its own thread (one per vGPU), and lets others reach its device
//! between requests: a screenshot, counters, reconfiguration.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use xen_abi::dm_op::IoServId;
use xen_devicemodel::DeviceModel;
use xen_evtchn::EventChannel;

use crate::ioreq::{Counters, Device, Server};

/// How long the thread waits for events before looking at its mailbox.
const MAILBOX_INTERVAL: Duration = Duration::from_millis(10);
/// How soon the thread comes back while its device has work waiting.
const BUSY_INTERVAL: Duration = Duration::from_millis(1);

type Job<V> = Box<dyn FnOnce(&mut V, Counters) + Send>;

/// A server running on its thread; stopped (and its ioreq server destroyed) on drop.
pub struct Running<V> {
    id: IoServId,
    jobs: Option<mpsc::Sender<Job<V>>>,
    thread: Option<JoinHandle<()>>,
}

/// Starts serving on a new thread named `name`.
pub fn spawn<D, E, V>(mut server: Server<D, E, V>, name: &str) -> std::io::Result<Running<V>>
where
    D: DeviceModel + 'static,
    E: EventChannel + 'static,
    V: Device + 'static,
{
    let id = server.id();
    let (tx, rx) = mpsc::channel::<Job<V>>();
    let thread = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || loop {
            let busy = server.device_mut().service();
            let wait = if busy {
                BUSY_INTERVAL
            } else {
                MAILBOX_INTERVAL
            };
            if let Err(e) = server.poll_once(wait) {
                tracing::error!("the ioreq server stopped: {e}");
                return;
            }
            loop {
                match rx.try_recv() {
                    Ok(job) => {
                        let counters = server.counters();
                        job(server.device_mut(), counters);
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => return,
                }
            }
        })?;
    Ok(Running {
        id,
        jobs: Some(tx),
        thread: Some(thread),
    })
}

impl<V: 'static> Running<V> {
    /// The ioreq server's id.
    pub fn server_id(&self) -> IoServId {
        self.id
    }

    /// Runs `f` on the server's thread between two requests and returns its result; `None`
    /// if the server has stopped.
    pub fn with<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut V, Counters) -> R + Send + 'static,
    ) -> Option<R> {
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job<V> = Box::new(move |device, counters| {
            let _ = tx.send(f(device, counters));
        });
        self.jobs.as_ref()?.send(job).ok()?;
        rx.recv().ok()
    }
}

impl<V> Drop for Running<V> {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
