//! The transmit rate limit from the toolstack's `rate` key ("bytes,microseconds"), as Linux
//! netback's credit scheduler applies it: every period the credit grows by `bytes`, capped at a
//! burst of `max(bytes, 128 KiB)`; a packet goes when it fits in the credit.

use std::time::{Duration, Instant};

/// Largest burst when the period's credit is smaller (Linux: 131072).
const MIN_BURST: u64 = 131_072;

/// A rate: `bytes` per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Credit added each period.
    pub bytes: u64,
    /// The period.
    pub period: Duration,
}

impl Rate {
    /// Parses the `rate` key ("bytes,usec"); `None` for an absent, malformed or zero rate,
    /// which means unlimited.
    pub fn parse(value: &str) -> Option<Rate> {
        let (b, u) = value.trim().split_once(',')?;
        let bytes: u64 = b.trim().parse().ok()?;
        let usec: u64 = u.trim().parse().ok()?;
        (bytes > 0 && usec > 0).then(|| Rate {
            bytes,
            period: Duration::from_micros(usec),
        })
    }
}

/// A credit account.
#[derive(Debug, Clone)]
pub struct Credit {
    rate: Option<Rate>,
    remaining: u64,
    next_refill: Instant,
}

impl Credit {
    /// An account at full credit.
    pub fn new(rate: Option<Rate>, now: Instant) -> Self {
        let mut c = Self {
            rate: None,
            remaining: 0,
            next_refill: now,
        };
        c.set_rate(rate, now);
        c
    }

    /// Changes the rate (the key changed); the credit restarts full.
    pub fn set_rate(&mut self, rate: Option<Rate>, now: Instant) {
        self.rate = rate;
        self.remaining = rate.map_or(0, |r| r.bytes);
        self.next_refill = now + rate.map_or(Duration::ZERO, |r| r.period);
    }

    /// The rate in force.
    pub fn rate(&self) -> Option<Rate> {
        self.rate
    }

    fn refill(&mut self, now: Instant) {
        let Some(rate) = self.rate else { return };
        let burst = rate.bytes.max(MIN_BURST);
        while now >= self.next_refill && self.remaining < burst {
            self.remaining = (self.remaining + rate.bytes).min(burst);
            self.next_refill += rate.period;
        }
        if now >= self.next_refill {
            // Full: skip the periods that passed.
            self.next_refill = now + rate.period;
        }
    }

    /// Takes `bytes` of credit if they fit; otherwise returns when to try again.
    pub fn take(&mut self, bytes: u64, now: Instant) -> Result<(), Instant> {
        if self.rate.is_none() {
            return Ok(());
        }
        self.refill(now);
        if bytes <= self.remaining {
            self.remaining -= bytes;
            Ok(())
        } else {
            Err(self.next_refill)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse() {
        assert_eq!(
            Rate::parse("12500000,50000"),
            Some(Rate {
                bytes: 12_500_000,
                period: Duration::from_millis(50)
            })
        );
        for bad in ["", "1", "a,b", "0,100", "100,0", "-1,5"] {
            assert_eq!(Rate::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn credit_limits_bytes_per_period() {
        let t0 = Instant::now();
        let rate = Rate {
            bytes: 200_000,
            period: Duration::from_millis(100),
        };
        let mut c = Credit::new(Some(rate), t0);
        let mut sent = 0u64;
        let mut now = t0;
        // One second of 1500-byte packets, trying every millisecond.
        while now < t0 + Duration::from_secs(1) {
            while c.take(1500, now).is_ok() {
                sent += 1500;
            }
            now += Duration::from_millis(1);
        }
        // About 200 kB per 100 ms: 2 MB in a second, plus the initial credit.
        assert!((1_900_000..=2_300_000).contains(&sent), "{sent}");
        let mut unlimited = Credit::new(None, t0);
        assert!(unlimited.take(u64::MAX, t0).is_ok());
    }

    #[test]
    fn a_refused_packet_learns_when_to_retry() {
        let t0 = Instant::now();
        let rate = Rate {
            bytes: 1000,
            period: Duration::from_millis(10),
        };
        let mut c = Credit::new(Some(rate), t0);
        assert!(c.take(1000, t0).is_ok());
        let retry = c.take(1000, t0).unwrap_err();
        assert_eq!(retry, t0 + Duration::from_millis(10));
        assert!(c.take(1000, retry).is_ok());
    }
}
