//! Browser sessions, kept in the server's memory: random 256-bit ids stored only as SHA-256
//! hashes, an idle timeout and an absolute lifetime, a CSRF token per session, and revocation of
//! every session of an account.
//!
//! Why memory and not the store: a session id is a bearer secret, and keeping it out of every
//! file means a copy of the data directory (or a backup) holds no live session; one process serves
//! the browser pages, and a restart signing people out is acceptable for 15-minute sessions.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use parking_lot::Mutex;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use carevault_crypto::{Clock, Random};

/// Default idle timeout.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(15 * 60);
/// Default absolute lifetime.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);
/// More live sessions than this and the oldest are dropped first.
pub const MAX_SESSIONS: usize = 100_000;

/// How far a session has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Nobody signed in yet: it carries the CSRF token of the sign-in form.
    Anonymous,
    /// Password accepted for an account without a second factor: it may only enrol TOTP.
    MfaEnrolment,
    /// Signed in with both factors.
    Complete,
}

/// What a session knows.
#[derive(Clone)]
pub struct Session {
    /// The account, once a password was accepted.
    pub user: Option<String>,
    /// How far the sign-in has come.
    pub stage: Stage,
    /// The CSRF token forms of this session carry.
    pub csrf: String,
    /// The account's session epoch when the session began; a change ends the session.
    pub epoch: u64,
    /// When it began.
    pub created: SystemTime,
    /// When it was last used.
    pub last_seen: SystemTime,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("user", &self.user)
            .field("stage", &self.stage)
            .field("csrf", &"[redacted]")
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Compares a submitted CSRF token with this session's, in constant time.
    pub fn check_csrf(&self, submitted: &str) -> bool {
        !self.csrf.is_empty()
            && self.csrf.len() == submitted.len()
            && bool::from(self.csrf.as_bytes().ct_eq(submitted.as_bytes()))
    }
}

/// Why a session could not be made.
#[derive(Debug, thiserror::Error)]
#[error("a session could not be created: the random source failed")]
pub struct SessionError;

/// The live sessions of this process.
pub struct Sessions {
    clock: Arc<dyn Clock>,
    rng: Arc<dyn Random>,
    idle: Duration,
    lifetime: Duration,
    by_hash: Mutex<HashMap<[u8; 32], Session>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("idle", &self.idle)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl Sessions {
    /// An empty set with the given timeouts.
    pub fn new(
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Random>,
        idle: Duration,
        lifetime: Duration,
    ) -> Self {
        Self {
            clock,
            rng,
            idle,
            lifetime,
            by_hash: Mutex::new(HashMap::new()),
        }
    }

    /// The idle timeout.
    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// The absolute lifetime.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Starts a session; returns its id (the cookie value, 43 base64url characters, shown
    /// once: only its hash is kept) and the session.
    pub fn create(
        &self,
        user: Option<String>,
        stage: Stage,
        epoch: u64,
    ) -> Result<(Zeroizing<String>, Session), SessionError> {
        let id = self.random_token()?;
        let csrf = self.random_token()?;
        let now = self.clock.now();
        let session = Session {
            user,
            stage,
            csrf: csrf.to_string(),
            epoch,
            created: now,
            last_seen: now,
        };
        let mut map = self.by_hash.lock();
        if map.len() >= MAX_SESSIONS {
            self.prune_locked(&mut map, now);
            if map.len() >= MAX_SESSIONS
                && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.last_seen).map(|(k, _)| *k)
            {
                map.remove(&oldest);
            }
        }
        map.insert(hash_id(&id), session.clone());
        Ok((id, session))
    }

    /// The live session with cookie value `id`, its idle timer restarted; `None` when unknown,
    /// idle too long or past its lifetime (an expired one is forgotten).
    pub fn touch(&self, id: &str) -> Option<Session> {
        let now = self.clock.now();
        let key = hash_id(id);
        let mut map = self.by_hash.lock();
        let live = match map.get(&key) {
            Some(s) => self.is_live(s, now),
            None => return None,
        };
        if !live {
            map.remove(&key);
            return None;
        }
        let s = map.get_mut(&key)?;
        s.last_seen = now;
        Some(s.clone())
    }

    /// Ends the session with cookie value `id`.
    pub fn remove(&self, id: &str) {
        self.by_hash.lock().remove(&hash_id(id));
    }

    /// Ends every session of account `name`.
    pub fn revoke_user(&self, name: &str) {
        self.by_hash
            .lock()
            .retain(|_, s| s.user.as_deref() != Some(name));
    }

    /// Number of live sessions (for tests and metrics).
    pub fn len(&self) -> usize {
        let now = self.clock.now();
        let mut map = self.by_hash.lock();
        self.prune_locked(&mut map, now);
        map.len()
    }

    /// True when no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn is_live(&self, s: &Session, now: SystemTime) -> bool {
        let idle_ok = now
            .duration_since(s.last_seen)
            .map_or(true, |d| d < self.idle);
        let life_ok = now
            .duration_since(s.created)
            .map_or(true, |d| d < self.lifetime);
        idle_ok && life_ok
    }

    fn prune_locked(&self, map: &mut HashMap<[u8; 32], Session>, now: SystemTime) {
        map.retain(|_, s| self.is_live(s, now));
    }

    fn random_token(&self) -> Result<Zeroizing<String>, SessionError> {
        let mut raw = Zeroizing::new([0u8; 32]);
        self.rng.fill(&mut raw[..]).map_err(|_| SessionError)?;
        Ok(Zeroizing::new(
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw[..]),
        ))
    }
}

fn hash_id(id: &str) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, id.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use carevault_crypto::{ManualClock, SystemRng};

    fn sessions(clock: Arc<ManualClock>) -> Sessions {
        Sessions::new(
            clock,
            Arc::new(SystemRng::new()),
            DEFAULT_IDLE,
            DEFAULT_LIFETIME,
        )
    }

    #[test]
    fn ids_are_random_and_only_their_hash_is_kept() {
        let clock = Arc::new(ManualClock::at_unix(1_000));
        let s = sessions(clock);
        let (a, sa) = s.create(Some("amy".into()), Stage::Complete, 0).unwrap();
        let (b, _) = s.create(Some("amy".into()), Stage::Complete, 0).unwrap();
        assert_ne!(*a, *b);
        assert_eq!(a.len(), 43);
        assert_eq!(sa.csrf.len(), 43);
        assert_ne!(*a, sa.csrf);
        let keys: Vec<[u8; 32]> = s.by_hash.lock().keys().copied().collect();
        assert!(keys.iter().all(|k| k != a.as_bytes() && k != b.as_bytes()));
        assert!(s.touch(&a).is_some());
        assert!(s.touch("not-a-session").is_none());
        assert!(!format!("{sa:?}").contains(&sa.csrf));
    }

    #[test]
    fn idle_timeout_and_absolute_lifetime() {
        let clock = Arc::new(ManualClock::at_unix(1_000));
        let s = sessions(clock.clone());
        let (id, _) = s.create(Some("amy".into()), Stage::Complete, 0).unwrap();
        // Used every 14 minutes it stays alive...
        for _ in 0..51 {
            clock.advance(Duration::from_secs(14 * 60));
            assert!(s.touch(&id).is_some());
        }
        // ...until 12 hours have passed since it began (51 * 14 min = 11 h 54 min; 12 h 8 min next).
        clock.advance(Duration::from_secs(14 * 60));
        assert!(s.touch(&id).is_none(), "absolute lifetime");
        let (id2, _) = s.create(Some("amy".into()), Stage::Complete, 0).unwrap();
        clock.advance(DEFAULT_IDLE);
        assert!(s.touch(&id2).is_none(), "idle timeout");
        assert!(s.is_empty());
    }

    #[test]
    fn revoke_and_remove() {
        let clock = Arc::new(ManualClock::at_unix(1_000));
        let s = sessions(clock);
        let (a, _) = s.create(Some("amy".into()), Stage::Complete, 0).unwrap();
        let (b, _) = s.create(Some("bob".into()), Stage::Complete, 0).unwrap();
        let (c, _) = s.create(None, Stage::Anonymous, 0).unwrap();
        s.revoke_user("amy");
        assert!(s.touch(&a).is_none());
        assert!(s.touch(&b).is_some());
        s.remove(&b);
        assert!(s.touch(&b).is_none());
        assert!(s.touch(&c).is_some());
    }

    #[test]
    fn csrf_check() {
        let clock = Arc::new(ManualClock::at_unix(1_000));
        let s = sessions(clock);
        let (_, sess) = s.create(None, Stage::Anonymous, 0).unwrap();
        let token = sess.csrf.clone();
        assert!(sess.check_csrf(&token));
        assert!(!sess.check_csrf(""));
        assert!(!sess.check_csrf(&token[..42]));
        let mut wrong = token.clone();
        wrong.replace_range(0..1, if token.starts_with('A') { "B" } else { "A" });
        assert!(!sess.check_csrf(&wrong));
    }
}
