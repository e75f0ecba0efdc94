//! The `[identity]` settings: throttling, lockout and browser-session timeouts.

use std::time::Duration;

use serde::Deserialize;

use crate::throttle::ThrottleSettings;

/// `[identity]` in `carevault.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentitySettings {
    /// Consecutive failed sign-ins of one account before it is locked until `carevault user unlock`.
    pub lockout_threshold: u32,
    /// Failed sign-ins of one account allowed without a wait; each later one doubles the wait.
    pub account_free_failures: u32,
    /// Longest wait between sign-in attempts of one account, in seconds.
    pub account_max_delay_seconds: u64,
    /// Failed sign-ins from one address allowed without a wait; each later one doubles the wait.
    pub address_free_failures: u32,
    /// Longest wait between sign-in attempts from one address, in seconds.
    pub address_max_delay_seconds: u64,
    /// An address's failures are forgotten this long after its last one, in seconds.
    pub address_forget_seconds: u64,
    /// A browser session unused this long ends, in seconds.
    pub session_idle_seconds: u64,
    /// A browser session ends this long after sign-in whatever its use, in seconds.
    pub session_lifetime_seconds: u64,
}

impl Default for IdentitySettings {
    fn default() -> Self {
        let t = ThrottleSettings::default();
        Self {
            lockout_threshold: t.lockout_threshold,
            account_free_failures: t.account_free_failures,
            account_max_delay_seconds: t.account_max_delay_seconds,
            address_free_failures: t.address_free_failures,
            address_max_delay_seconds: t.address_max_delay_seconds,
            address_forget_seconds: t.address_forget_seconds,
            session_idle_seconds: crate::session::DEFAULT_IDLE.as_secs(),
            session_lifetime_seconds: crate::session::DEFAULT_LIFETIME.as_secs(),
        }
    }
}

impl IdentitySettings {
    /// The throttling part.
    pub fn throttle(&self) -> ThrottleSettings {
        ThrottleSettings {
            lockout_threshold: self.lockout_threshold,
            account_free_failures: self.account_free_failures,
            account_max_delay_seconds: self.account_max_delay_seconds,
            address_free_failures: self.address_free_failures,
            address_max_delay_seconds: self.address_max_delay_seconds,
            address_forget_seconds: self.address_forget_seconds,
        }
    }

    /// The idle timeout.
    pub fn session_idle(&self) -> Duration {
        Duration::from_secs(self.session_idle_seconds)
    }

    /// The absolute lifetime.
    pub fn session_lifetime(&self) -> Duration {
        Duration::from_secs(self.session_lifetime_seconds)
    }

    /// The first setting out of range, as a sentence naming it.
    pub fn problem(&self) -> Option<&'static str> {
        if !(1..=1000).contains(&self.lockout_threshold) {
            return Some("identity.lockout_threshold must be between 1 and 1000");
        }
        if !(60..=86_400).contains(&self.session_idle_seconds) {
            return Some("identity.session_idle_seconds must be between 60 and 86400");
        }
        if !(60..=7 * 86_400).contains(&self.session_lifetime_seconds)
            || self.session_lifetime_seconds < self.session_idle_seconds
        {
            return Some(
                "identity.session_lifetime_seconds must be between 60 and 604800 and not below the idle timeout",
            );
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_numbers() {
        let s = IdentitySettings::default();
        assert_eq!(s.lockout_threshold, 10);
        assert_eq!(s.session_idle_seconds, 900);
        assert_eq!(s.session_lifetime_seconds, 43_200);
        assert_eq!(s.problem(), None);
        assert_eq!(s.throttle(), ThrottleSettings::default());
        let bad = IdentitySettings {
            lockout_threshold: 0,
            ..s.clone()
        };
        assert!(bad.problem().unwrap().contains("lockout_threshold"));
        let bad = IdentitySettings {
            session_lifetime_seconds: 100,
            ..s
        };
        assert!(bad.problem().unwrap().contains("session_lifetime"));
    }
}
