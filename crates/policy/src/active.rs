//! The active policy: the operator's policy kept in the store's sealed system records (kind
//! `policy`), or the built-in one; a running server picks up a change within a second.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use carevault_auth::RecordStore;
use carevault_crypto::Clock;
use parking_lot::RwLock;

use crate::engine::{BUILTIN_POLICY, Engine, PolicyError};

/// The system-record kind the active policy is stored under.
pub const POLICY_RECORD_KIND: &str = "policy";
/// The system-record key of the active policy.
pub const POLICY_RECORD_KEY: &str = "active";
/// How long [`ActivePolicy::engine`] trusts what it last read from the store.
pub const POLICY_POLL: Duration = Duration::from_secs(1);

/// Errors reading or writing the stored policy.
#[derive(Debug, thiserror::Error)]
pub enum ActivePolicyError {
    /// The policy is not usable.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The record store failed.
    #[error("the policy record could not be read or written: {0}")]
    Store(String),
    /// The stored record is not UTF-8 text.
    #[error("the stored policy is not UTF-8 text; set it again with `carevault policy set`")]
    NotText,
}

/// The operator's stored policy text, if one was set.
pub fn stored_policy(store: &dyn RecordStore) -> Result<Option<String>, ActivePolicyError> {
    match store
        .get(POLICY_RECORD_KIND, POLICY_RECORD_KEY)
        .map_err(ActivePolicyError::Store)?
    {
        None => Ok(None),
        Some(body) => String::from_utf8(body)
            .map(Some)
            .map_err(|_| ActivePolicyError::NotText),
    }
}

/// Validates `text` against the request schema and, only when it is valid, stores it as the
/// active policy; returns the compiled engine.
pub fn set_policy(store: &dyn RecordStore, text: &str) -> Result<Engine, ActivePolicyError> {
    let engine = Engine::from_text(text)?;
    store
        .put(POLICY_RECORD_KIND, POLICY_RECORD_KEY, text.as_bytes())
        .map_err(ActivePolicyError::Store)?;
    Ok(engine)
}

/// The engine of the active policy: the stored one, else the built-in one.
pub fn load_engine(store: &dyn RecordStore) -> Result<Engine, ActivePolicyError> {
    match stored_policy(store)? {
        Some(text) => Ok(Engine::from_text(&text)?),
        None => Ok(Engine::from_text(BUILTIN_POLICY)?),
    }
}

struct State {
    engine: Arc<Engine>,
    checked: SystemTime,
}

/// The active policy as a server holds it: [`ActivePolicy::engine`] re-reads the stored record
/// at most once per [`POLICY_POLL`] and compiles a new engine when its text changed (admin
/// commands run in another process). A stored policy that no longer compiles keeps the previous
/// engine in force (and is logged); at start it is an error.
pub struct ActivePolicy {
    store: Arc<dyn RecordStore>,
    clock: Arc<dyn Clock>,
    state: RwLock<State>,
}

impl std::fmt::Debug for ActivePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActivePolicy").finish_non_exhaustive()
    }
}

impl ActivePolicy {
    /// Loads the active policy from `store`.
    pub fn open(
        store: Arc<dyn RecordStore>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ActivePolicyError> {
        let engine = Arc::new(load_engine(&*store)?);
        let checked = clock.now();
        Ok(ActivePolicy {
            store,
            clock,
            state: RwLock::new(State { engine, checked }),
        })
    }

    /// The engine in force now.
    pub fn engine(&self) -> Arc<Engine> {
        let now = self.clock.now();
        {
            let s = self.state.read();
            let fresh = now
                .duration_since(s.checked)
                .is_ok_and(|age| age < POLICY_POLL);
            if fresh {
                return s.engine.clone();
            }
        }
        let mut s = self.state.write();
        // Another caller may have refreshed while this one waited for the lock.
        if now
            .duration_since(s.checked)
            .is_ok_and(|age| age < POLICY_POLL)
        {
            return s.engine.clone();
        }
        s.checked = now;
        let text = match stored_policy(&*self.store) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "the stored policy could not be read; the previous one stays in force");
                return s.engine.clone();
            }
        };
        let text = text.as_deref().unwrap_or(BUILTIN_POLICY);
        if text != s.engine.text() {
            match Engine::from_text(text) {
                Ok(e) => {
                    tracing::info!("a changed authorization policy is now in force");
                    s.engine = Arc::new(e);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the stored policy does not compile; the previous one stays in force");
                }
            }
        }
        s.engine.clone()
    }
}
