//! Time as an interface, so that expiry, key ages and caches can be tested with a controlled clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of the current wall-clock time.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> SystemTime;

    /// The current time as whole seconds since the Unix epoch (0 for times before it).
    fn unix_seconds(&self) -> u64 {
        self.now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that only moves when told to; for tests.
#[derive(Debug)]
pub struct ManualClock {
    millis: AtomicU64,
}

impl ManualClock {
    /// A clock standing at `unix_seconds` since the epoch.
    pub fn at_unix(unix_seconds: u64) -> Self {
        Self {
            millis: AtomicU64::new(unix_seconds.saturating_mul(1000)),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.millis.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the clock to `unix_seconds` since the epoch.
    pub fn set_unix(&self, unix_seconds: u64) {
        self.millis
            .store(unix_seconds.saturating_mul(1000), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.millis.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::at_unix(1_000);
        assert_eq!(c.unix_seconds(), 1_000);
        c.advance(Duration::from_secs(61));
        assert_eq!(c.unix_seconds(), 1_061);
        c.set_unix(5);
        assert_eq!(c.unix_seconds(), 5);
    }
}
