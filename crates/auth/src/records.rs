//! The persistence interface auth needs: named records by kind and key, which the store adapts
//! to its sealed system-record table.

use std::collections::BTreeMap;

use parking_lot::RwLock;

/// A small key-value store of opaque records grouped by kind.
///
/// Implementations must keep bodies confidential at rest (the store seals them with its keyring):
/// auth keeps the token-signing private key here.
pub trait RecordStore: Send + Sync {
    /// Stores `body` under (`kind`, `key`), replacing any previous one, durably.
    fn put(&self, kind: &str, key: &str, body: &[u8]) -> Result<(), String>;
    /// The body under (`kind`, `key`), if any.
    fn get(&self, kind: &str, key: &str) -> Result<Option<Vec<u8>>, String>;
    /// Every (key, body) of `kind`, in key order.
    fn list(&self, kind: &str) -> Result<Vec<(String, Vec<u8>)>, String>;
    /// Removes the records of `kind` under each of `keys` (absent ones are no error), durably
    /// and all at once.
    fn delete(&self, kind: &str, keys: &[String]) -> Result<(), String>;
}

/// A [`RecordStore`] in memory, for tests and tools.
#[derive(Debug, Default)]
pub struct MemoryRecordStore {
    records: RwLock<BTreeMap<(String, String), Vec<u8>>>,
}

impl MemoryRecordStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl RecordStore for MemoryRecordStore {
    fn put(&self, kind: &str, key: &str, body: &[u8]) -> Result<(), String> {
        self.records
            .write()
            .insert((kind.to_owned(), key.to_owned()), body.to_vec());
        Ok(())
    }

    fn get(&self, kind: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(self
            .records
            .read()
            .get(&(kind.to_owned(), key.to_owned()))
            .cloned())
    }

    fn list(&self, kind: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
        Ok(self
            .records
            .read()
            .iter()
            .filter(|((k, _), _)| k == kind)
            .map(|((_, key), body)| (key.clone(), body.clone()))
            .collect())
    }

    fn delete(&self, kind: &str, keys: &[String]) -> Result<(), String> {
        let mut records = self.records.write();
        for key in keys {
            records.remove(&(kind.to_owned(), key.clone()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_store_round_trip() {
        let s = MemoryRecordStore::new();
        s.put("a", "2", b"two").unwrap();
        s.put("a", "1", b"one").unwrap();
        s.put("b", "1", b"other").unwrap();
        assert_eq!(s.get("a", "1").unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(s.get("a", "3").unwrap(), None);
        let keys: Vec<_> = s.list("a").unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["1", "2"]);
        s.delete("a", &["1".into(), "9".into()]).unwrap();
        assert_eq!(s.get("a", "1").unwrap(), None);
        assert_eq!(s.get("b", "1").unwrap().as_deref(), Some(&b"other"[..]));
    }
}
