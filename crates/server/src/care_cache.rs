//! A per-process memo of the patient sets a request's visibility is built from (care
//! relationships, billing relationships, live break-the-glass grants), so that a request costs a
//! hash lookup instead of an index scan.
//!
//! An entry lives at most [`TTL`] (writes by other processes such as `carevault import`, windows
//! that move with time, grants that expire), and every entry is dropped at once when this process
//! writes anything or grants break-the-glass (the generation counter), so a new Encounter counts
//! from the very next request. Errors are never cached: the caller fails closed with an empty set.

use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long an entry may be served without looking at the store again.
pub const TTL: Duration = Duration::from_secs(1);

/// Entries kept before the memo is emptied (bounded memory under many users).
const MAX_ENTRIES: usize = 10_000;

/// Which set an entry holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SetKind {
    /// Patients of a practitioner's care relationships (keyed by `Practitioner/ID`).
    Care,
    /// Patients of the billing relationship (one key).
    Billing,
    /// Patients under a user's live break-the-glass grants (keyed by user name).
    Grants,
}

struct Entry {
    at: Instant,
    generation: u64,
    set: Arc<HashSet<String>>,
}

/// The memo; one per server process, on `App`.
#[derive(Default)]
pub struct CareCache {
    generation: AtomicU64,
    entries: Mutex<HashMap<(SetKind, String), Entry>>,
}

impl CareCache {
    /// An empty memo.
    pub fn new() -> Self {
        Self::default()
    }

    /// Drops every entry: called after any write or grant by this process.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The current generation; read it before computing a set to [`put`](Self::put) afterwards,
    /// so a set computed across a write is never served after it.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A fresh entry, if any.
    pub fn get(&self, kind: SetKind, key: &str) -> Option<Arc<HashSet<String>>> {
        let generation = self.generation();
        let entries = self.entries.lock();
        let e = entries.get(&(kind, key.to_owned()))?;
        (e.generation == generation && e.at.elapsed() < TTL).then(|| e.set.clone())
    }

    /// Stores a set computed after reading `generation`.
    pub fn put(
        &self,
        kind: SetKind,
        key: &str,
        generation: u64,
        set: HashSet<String>,
    ) -> Arc<HashSet<String>> {
        let set = Arc::new(set);
        let mut entries = self.entries.lock();
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(
            (kind, key.to_owned()),
            Entry {
                at: Instant::now(),
                generation,
                set: set.clone(),
            },
        );
        set
    }

    /// The fresh entry, or `compute()` stored; an error (`None`) is answered with an empty set
    /// and not stored.
    pub fn get_or_compute(
        &self,
        kind: SetKind,
        key: &str,
        compute: impl FnOnce() -> Option<HashSet<String>>,
    ) -> Arc<HashSet<String>> {
        if let Some(s) = self.get(kind, key) {
            return s;
        }
        let generation = self.generation();
        match compute() {
            Some(set) => self.put(kind, key, generation, set),
            None => Arc::new(HashSet::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[&str]) -> HashSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn serves_a_stored_set_until_invalidated() {
        let c = CareCache::new();
        let first = c.get_or_compute(SetKind::Care, "Practitioner/p", || Some(set(&["a"])));
        assert!(first.contains("a"));
        let again = c.get_or_compute(SetKind::Care, "Practitioner/p", || Some(set(&["b"])));
        assert!(
            again.contains("a"),
            "a fresh entry is served without recomputing"
        );
        c.invalidate();
        let after = c.get_or_compute(SetKind::Care, "Practitioner/p", || Some(set(&["b"])));
        assert!(after.contains("b") && !after.contains("a"));
    }

    #[test]
    fn a_set_computed_across_a_write_is_not_served_after_it() {
        let c = CareCache::new();
        let generation = c.generation();
        c.invalidate(); // a write commits while the set is being computed
        c.put(SetKind::Grants, "u", generation, set(&["stale"]));
        assert!(c.get(SetKind::Grants, "u").is_none());
    }

    #[test]
    fn errors_are_not_cached_and_kinds_do_not_mix() {
        let c = CareCache::new();
        assert!(c.get_or_compute(SetKind::Care, "k", || None).is_empty());
        assert!(c.get(SetKind::Care, "k").is_none());
        c.get_or_compute(SetKind::Billing, "k", || Some(set(&["x"])));
        assert!(c.get(SetKind::Care, "k").is_none());
        assert!(c.get(SetKind::Billing, "k").is_some());
    }
}
