//! How long to wait before restarting a backend that died: at once the first time, then
//! doubling up to a ceiling while it keeps dying young, and back to the start once a run
//! lasted long enough to count as healthy.

use std::time::Duration;

/// The restart delay policy and where it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first quick death.
    pub first: Duration,
    /// Largest delay.
    pub max: Duration,
    /// A run at least this long resets the delay.
    pub healthy_after: Duration,
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(
            Duration::from_millis(100),
            Duration::from_secs(5),
            Duration::from_secs(30),
        )
    }
}

impl Backoff {
    /// A policy starting at `first`, doubling up to `max`, reset by a run of `healthy_after`.
    pub fn new(first: Duration, max: Duration, healthy_after: Duration) -> Self {
        Self {
            first,
            max,
            healthy_after,
            next: Duration::ZERO,
        }
    }

    /// The delay before the next start, given how long the run that just ended lasted.
    pub fn after_run(&mut self, lasted: Duration) -> Duration {
        if lasted >= self.healthy_after {
            self.next = Duration::ZERO;
        }
        let delay = self.next;
        self.next = if delay.is_zero() {
            self.first
        } else {
            (delay * 2).min(self.max)
        };
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_deaths_back_off_to_the_ceiling_and_a_healthy_run_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(500), Duration::from_secs(10));
        let quick = ms(5);
        let delays: Vec<_> = (0..6).map(|_| b.after_run(quick)).collect();
        assert_eq!(delays, [ms(0), ms(100), ms(200), ms(400), ms(500), ms(500)]);
        assert_eq!(
            b.after_run(Duration::from_secs(10)),
            ms(0),
            "healthy run: at once"
        );
        assert_eq!(b.after_run(quick), ms(100));
    }
}
