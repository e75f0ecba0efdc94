//! Sign-in throttling: exponential back-off per account name and per source address, and the
//! lockout threshold. Pure arithmetic over failure counts and times, so tests drive it with a
//! controlled clock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

/// Throttling and lockout settings (from `[identity]` in the config file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThrottleSettings {
    /// Consecutive failures of one account before it is locked until `carevault user unlock`.
    pub lockout_threshold: u32,
    /// Failures of one account allowed without delay; each later one doubles the wait.
    pub account_free_failures: u32,
    /// Longest wait imposed on one account between attempts, in seconds.
    pub account_max_delay_seconds: u64,
    /// Failures from one address allowed without delay; each later one doubles the wait.
    pub address_free_failures: u32,
    /// Longest wait imposed on one address, in seconds.
    pub address_max_delay_seconds: u64,
    /// An address's failures are forgotten this long after its last one, in seconds.
    pub address_forget_seconds: u64,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        Self {
            lockout_threshold: 10,
            account_free_failures: 3,
            account_max_delay_seconds: 300,
            address_free_failures: 10,
            address_max_delay_seconds: 900,
            address_forget_seconds: 3600,
        }
    }
}

/// The wait after `failures` consecutive failures when `free` are allowed without one:
/// 0 up to `free`, then 1 s, 2 s, 4 s, ... capped at `max`.
pub fn backoff(failures: u32, free: u32, max: Duration) -> Duration {
    if failures < free.max(1) {
        return Duration::ZERO;
    }
    let exp = (failures - free.max(1)).min(30);
    Duration::from_secs(1u64 << exp).min(max)
}

/// Failure counts held in memory: per source address, and per account name that does not exist
/// (so unknown names are throttled exactly like real ones; real accounts keep their count in
/// their record, where `user unlock` can reset it from another process).
#[derive(Debug, Default)]
pub(crate) struct MemoryCounts {
    pub addresses: HashMap<IpAddr, Failures>,
    pub unknown_names: HashMap<String, Failures>,
}

/// Consecutive failures and the time of the last, in ms since the epoch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Failures {
    pub count: u32,
    pub last_ms: u64,
}

impl MemoryCounts {
    /// Drops what is older than `forget` (called as the maps grow).
    pub fn prune(&mut self, now_ms: u64, forget: Duration) {
        let forget_ms = u64::try_from(forget.as_millis()).unwrap_or(u64::MAX);
        let keep = |f: &Failures| now_ms.saturating_sub(f.last_ms) < forget_ms;
        self.addresses.retain(|_, f| keep(f));
        self.unknown_names.retain(|_, f| keep(f));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let max = Duration::from_secs(300);
        let got: Vec<u64> = (0..14).map(|f| backoff(f, 3, max).as_secs()).collect();
        assert_eq!(got, [0, 0, 0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff(u32::MAX, 3, max), max);
    }
}
