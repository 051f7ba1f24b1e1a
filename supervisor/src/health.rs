//! The health file: what the supervisor knows of its backend, rewritten whole (aside, then
//! renamed) at every change and once a second, so a reader never sees half of it.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Where the backend stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Being started for the first time.
    Starting,
    /// Running.
    Running,
    /// Died; waiting to be started again.
    Restarting,
    /// Stopped on request (the supervisor is ending).
    Stopped,
}

/// The contents of the health file.
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    /// The driver domain's role (`storage`, `network`).
    pub role: String,
    /// The backend program's name.
    pub service: String,
    /// Where it stands.
    pub state: State,
    /// Its process id while it runs.
    pub pid: Option<u32>,
    /// When the current run started (seconds since the epoch).
    pub started: Option<u64>,
    /// Times it ended on its own (each is followed by a new start unless the supervisor
    /// stops meanwhile).
    pub restarts: u64,
    /// How its last run ended (e.g. `killed by signal 9`).
    pub last_exit: Option<String>,
    /// The backend's own counters (its stats file), when it has written them.
    pub counters: Option<serde_json::Value>,
}

impl Health {
    /// A backend about to start for the first time.
    pub fn new(role: &str, service: &str) -> Self {
        Self {
            role: role.into(),
            service: service.into(),
            state: State::Starting,
            pid: None,
            started: None,
            restarts: 0,
            last_exit: None,
            counters: None,
        }
    }

    /// Seconds since the epoch now.
    pub(crate) fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    /// Reads the backend's counters from its stats file (kept as they were if it cannot be
    /// read: the backend writes it once a second, and not at all before its first device).
    pub(crate) fn refresh_counters(&mut self, stats_file: Option<&Path>) {
        let read = stats_file
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice(&b).ok());
        if read.is_some() {
            self.counters = read;
        }
    }

    /// Writes the file (aside, then renamed).
    pub(crate) fn write(&self, path: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, path)
    }
}
