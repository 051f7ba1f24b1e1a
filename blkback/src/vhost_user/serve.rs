//! The vhost-user socket: listen, serve one frontend connection with a fresh device (new
//! engines, new io_uring queues), and when the VMM goes away (guest shut down, VMM restarted or
//! crashed) wait for the next one on the same socket.

use std::path::Path;

use tracing::{info, warn};
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use super::{BlkDevice, DeviceSpec};

/// Why serving stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The socket could not be made.
    #[error("cannot listen on {path}: {reason}")]
    Listen {
        /// The socket's path.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The disk's storage queues could not be opened.
    #[error("cannot open the disk's I/O queues: {0}")]
    Queues(std::io::Error),
    /// The vhost-user daemon could not start.
    #[error("vhost-user: {0}")]
    Daemon(String),
}

/// What was served before [`serve`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    /// Frontend connections served to their end.
    pub connections: u64,
}

/// Serves `spec` on `socket` (made anew; an old file there is replaced), one frontend at a
/// time, until `connections` have come and gone (forever when `None`).
pub fn serve(
    socket: &Path,
    spec: &DeviceSpec,
    connections: Option<u64>,
) -> Result<Served, ServeError> {
    let mut listener = Listener::new(socket, true).map_err(|e| ServeError::Listen {
        path: socket.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut served = Served { connections: 0 };
    info!(socket = %socket.display(), queues = spec.queues, "vhost-user-blk: listening");
    while connections.is_none_or(|n| served.connections < n) {
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let device = BlkDevice::new(spec, mem.clone()).map_err(ServeError::Queues)?;
        let mut daemon = VhostUserDaemon::new("vhost-user-blk".into(), device.clone(), mem)
            .map_err(|e| ServeError::Daemon(e.to_string()))?;
        let handlers = daemon.get_epoll_handlers();
        for (q, handler) in handlers.iter().enumerate() {
            let Some(fd) = device.engine(q).map(|e| e.completion_fd()) else {
                continue;
            };
            handler
                .register_listener(fd, EventSet::IN, device.completion_event(q))
                .map_err(|e| ServeError::Daemon(format!("cannot watch queue {q}: {e}")))?;
        }
        daemon
            .start(&mut listener)
            .map_err(|e| ServeError::Daemon(e.to_string()))?;
        info!("vhost-user-blk: frontend connected");
        match daemon.wait() {
            Ok(())
            | Err(vhost_user_backend::Error::HandleRequest(
                vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
            )) => info!("vhost-user-blk: frontend disconnected"),
            Err(e) => warn!(error = %e, "vhost-user-blk: connection ended"),
        }
        for handler in &handlers {
            handler.send_exit_event();
        }
        served.connections += 1;
    }
    Ok(served)
}
