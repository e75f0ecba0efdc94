//! Key hierarchy, record sealing (AEAD bound to the record's identity) and blind indexes.
//!
//! Everything that leaves the process for disk goes through a [`Keyring`]: resource bodies are
//! sealed with AES-256-GCM under a data key whose id travels with the ciphertext, and index values
//! derived from PHI become keyed HMAC tags ("blind indexes") that can be compared for equality but
//! never read back.
//!
//! The key hierarchy behind it (master key → wrapped data keys in `DIR/keys/data-keys.json`) lives
//! in [`keyfile`] and [`master`]; [`open_or_init`] is the one call a server or CLI makes at start.
#![forbid(unsafe_code)]

pub mod clock;
pub mod keyfile;
pub mod master;
pub mod random;

pub use clock::{Clock, ManualClock, SystemClock};
pub use keyfile::{
    AuditSigningKey, KeyError, KeyFileHandle, KeyInfo, KeyPurpose, KeyState, MasterRotation,
    NewMaster, OpenedKeys, key_file_path, open_or_init, open_or_init_with, pending_key_path,
};
pub use master::{
    KeyProvider, LocalKeyProvider, MasterKind, MasterSource, MasterSourceDescription,
};
pub use random::{Random, SystemRng};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// Errors from sealing, opening or key handling.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The ciphertext is too short, names an unknown key, or failed authentication.
    #[error("integrity check failed for record {record}: {reason}")]
    Integrity {
        /// The record identity the value was opened for.
        record: String,
        /// What was wrong.
        reason: &'static str,
    },
    /// The system random source failed.
    #[error("the system random number generator failed")]
    Random,
    /// A key had the wrong length or form.
    #[error("invalid key material: {0}")]
    InvalidKey(&'static str),
    /// The record was sealed under a patient key that `carevault patient erase` destroyed.
    #[error(
        "record {record} was sealed under patient key {key_id:#010x}, which was destroyed by a patient erasure; its content cannot be recovered"
    )]
    KeyDestroyed {
        /// The record identity the value was opened for.
        record: String,
        /// The destroyed key's id.
        key_id: u32,
    },
}

/// Length in bytes of a blind-index tag.
pub const BLIND_LEN: usize = 16;

/// A blind index tag: equal inputs (under the same key and domain) give equal tags.
pub type BlindTag = [u8; BLIND_LEN];

/// Sealed record layout: `version(1) | key_id(4, BE) | nonce(12) | ciphertext+tag`.
const SEAL_VERSION: u8 = 1;
const HEADER_LEN: usize = 1 + 4 + NONCE_LEN;

/// Key ids with this bit set name a per-patient key (kept in the store, wrapped by a data key);
/// the others name a data key of the key file.
pub const PATIENT_KEY_FLAG: u32 = 1 << 31;

/// The key id a sealed value names in its header, if it has a header.
pub fn sealed_key_id(sealed: &[u8]) -> Option<u32> {
    if sealed.len() < HEADER_LEN || sealed[0] != SEAL_VERSION {
        return None;
    }
    Some(u32::from_be_bytes([
        sealed[1], sealed[2], sealed[3], sealed[4],
    ]))
}

/// A data-encryption key with its id.
struct DataKey {
    id: u32,
    aead: LessSafeKey,
}

/// The blind-index key with its id; it outlives data-key rotations so indexes stay valid.
struct BlindKey {
    id: u32,
    mac: hmac::Key,
}

/// The data keys a keyring holds at one moment: the one new records are sealed under and the
/// older ones still needed to open records not yet re-encrypted.
struct DataKeys {
    current: DataKey,
    others: Vec<DataKey>,
}

/// A [`Keyring`]'s data keys taken once ([`Keyring::opener`]): each open then costs no lock and
/// no reference count on the shared key set, which two threads opening millions of values would
/// otherwise take turns on. A value under a key the snapshot lacks goes through the keyring
/// (which reloads), so it opens exactly as [`Keyring::open_into`] would.
pub struct Opener<'a> {
    keyring: &'a Keyring,
    keys: Arc<DataKeys>,
}

impl Opener<'_> {
    /// Opens like [`Keyring::open_into`].
    pub fn open_into(
        &self,
        record: &[u8],
        sealed: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        let held = sealed_key_id(sealed)
            .filter(|id| id & PATIENT_KEY_FLAG == 0)
            .and_then(|id| self.keys.key(id));
        match held {
            Some(key) => open_under_into(key, record, sealed, out),
            None => self.keyring.open_into(record, sealed, out),
        }
    }
}

/// Unwrapped data-key material as a [`KeySource`] hands it over: `(id, 32 bytes)`.
pub type KeyMaterial = (u32, Zeroizing<Vec<u8>>);

/// Where a running keyring re-reads its data keys from when they change on disk (a data-key
/// rotation run by `carevault keys rotate --data` in another process).
pub trait KeySource: Send + Sync {
    /// A cheap value that changes whenever the keys may have changed (e.g. the key file's inode
    /// and modification time); `None` when it cannot be read.
    fn generation(&self) -> Option<u64>;
    /// The current data key and every other data key still listed.
    fn load(&self) -> Result<(KeyMaterial, Vec<KeyMaterial>), String>;
}

/// How often sealing looks at the key file for a newer data key.
const RELOAD_CHECK_MS: u64 = 1000;
/// Least time between two reloads triggered by an unknown key id.
const RELOAD_MIN_GAP_MS: u64 = 100;

/// The keys a running store uses: the current data key for sealing, older ones for opening,
/// and the blind-index key (kept apart so that rotating the data key leaves every index valid).
///
/// When built with a [`KeySource`], the keyring picks up a new current data key within about a
/// second of it being written (checked on sealing), and reloads at once when it meets a sealed
/// value naming a data key it does not hold (a record re-encrypted by a rotation in another
/// process).
pub struct Keyring {
    data: RwLock<Arc<DataKeys>>,
    blind: BlindKey,
    rng: SystemRandom,
    source: Option<Box<dyn KeySource>>,
    generation: AtomicU64,
    epoch: Instant,
    last_check_ms: AtomicU64,
    last_reload_ms: AtomicU64,
    reloading: Mutex<()>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let data = self.keys();
        f.debug_struct("Keyring")
            .field("current_key_id", &data.current.id)
            .field(
                "retired_key_ids",
                &data.others.iter().map(|k| k.id).collect::<Vec<_>>(),
            )
            .field("blind_key_id", &self.blind.id)
            .finish_non_exhaustive()
    }
}

impl Keyring {
    /// Builds a keyring from raw 32-byte data key material (already unwrapped by the master key).
    ///
    /// The blind-index key is derived from the same material; [`Keyring::from_parts`] keeps them
    /// apart, which is what [`open_or_init`] does.
    pub fn from_data_key(id: u32, material: &[u8]) -> Result<Self, CryptoError> {
        Self::from_parts((id, material), &[], (id, material))
    }

    /// Builds a keyring from unwrapped key material: the current data key, the retired data keys
    /// still needed to open older records, and the blind-index key, each as `(id, 32 bytes)`.
    pub fn from_parts(
        current: (u32, &[u8]),
        retired: &[(u32, &[u8])],
        blind: (u32, &[u8]),
    ) -> Result<Self, CryptoError> {
        Ok(Self {
            data: RwLock::new(Arc::new(DataKeys {
                current: DataKey::new(current.0, current.1)?,
                others: retired
                    .iter()
                    .map(|(id, m)| DataKey::new(*id, m))
                    .collect::<Result<_, _>>()?,
            })),
            blind: BlindKey::new(blind.0, blind.1)?,
            rng: SystemRandom::new(),
            source: None,
            generation: AtomicU64::new(0),
            epoch: Instant::now(),
            last_check_ms: AtomicU64::new(0),
            last_reload_ms: AtomicU64::new(0),
            reloading: Mutex::new(()),
        })
    }

    /// Makes the keyring follow `source` (see the type's documentation).
    pub fn with_source(mut self, source: Box<dyn KeySource>) -> Self {
        self.generation = AtomicU64::new(source.generation().unwrap_or(0));
        self.source = Some(source);
        self
    }

    fn keys(&self) -> Arc<DataKeys> {
        // A poisoned lock only means a thread panicked while swapping in a complete key set.
        self.data.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Looks at the key source when the last look is older than a second.
    fn maybe_refresh(&self) {
        let Some(source) = &self.source else { return };
        let now = self.now_ms();
        let last = self.last_check_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < RELOAD_CHECK_MS
            || self
                .last_check_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        if let Some(g) = source.generation()
            && g != self.generation.load(Ordering::Relaxed)
        {
            self.reload();
        }
    }

    /// Reloads the data keys from the source now (at most every 100 ms); true when it did.
    pub fn reload(&self) -> bool {
        self.reload_unless(|_| false)
    }

    /// Reloads unless `have` says the keys held already suffice (checked after waiting for a
    /// reload another thread may be doing).
    fn reload_unless(&self, have: impl Fn(&DataKeys) -> bool) -> bool {
        let Some(source) = &self.source else {
            return false;
        };
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        if have(&self.keys()) {
            return true;
        }
        let now = self.now_ms();
        let last = self.last_reload_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < RELOAD_MIN_GAP_MS {
            return false;
        }
        self.last_reload_ms.store(now.max(1), Ordering::Relaxed);
        let generation = source.generation().unwrap_or(0);
        match source.load().and_then(|(current, others)| {
            let current = DataKey::new(current.0, &current.1).map_err(|e| e.to_string())?;
            let others = others
                .iter()
                .map(|(id, m)| DataKey::new(*id, m))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            Ok(DataKeys { current, others })
        }) {
            Ok(keys) => {
                let id = keys.current.id;
                *self.data.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
                self.generation.store(generation, Ordering::Relaxed);
                tracing::info!(
                    current_data_key = id,
                    "data keys reloaded from the key file"
                );
                true
            }
            Err(e) => {
                // Keep sealing and opening with the keys held; the next change is tried again.
                self.generation.store(generation, Ordering::Relaxed);
                tracing::warn!(error = %e, "could not reload the data keys; keeping the keys in memory (restart to pick up new keys)");
                false
            }
        }
    }

    /// Id of the key blind-index tags are computed under.
    pub fn blind_key_id(&self) -> u32 {
        self.blind.id
    }

    /// Ids of the retired data keys this keyring can still open.
    pub fn retired_key_ids(&self) -> Vec<u32> {
        self.keys().others.iter().map(|k| k.id).collect()
    }

    /// Generates fresh random key material of 32 bytes.
    pub fn generate_key_material() -> Result<Zeroizing<[u8; 32]>, CryptoError> {
        Self::generate_key_material_with(&SystemRng::new())
    }

    /// Generates fresh random key material of 32 bytes from `rng`.
    pub fn generate_key_material_with(
        rng: &dyn Random,
    ) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
        let mut k = Zeroizing::new([0u8; 32]);
        rng.fill(&mut k[..])?;
        Ok(k)
    }

    /// Id of the key new records are sealed under.
    pub fn current_key_id(&self) -> u32 {
        self.maybe_refresh();
        self.keys().current.id
    }

    /// Seals `plain`, binding it to `record` (e.g. `Patient/123/_history/2`) as associated data.
    pub fn seal(&self, record: &[u8], plain: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.maybe_refresh();
        let keys = self.keys();
        seal_under(&keys.current, &self.rng, record, plain)
    }

    /// Opens a value sealed by [`Keyring::seal`] for the same `record`.
    pub fn open(&self, record: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut body = Vec::with_capacity(sealed.len().saturating_sub(HEADER_LEN));
        self.open_into(record, sealed, &mut body)?;
        Ok(body)
    }

    /// Opens like [`Keyring::open`], but into `out` (cleared first) instead of a new vector, so
    /// that a caller opening many values in a row (the audit verifier) reuses one buffer.
    pub fn open_into(
        &self,
        record: &[u8],
        sealed: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        let fail = |reason| CryptoError::Integrity {
            record: String::from_utf8_lossy(record).into_owned(),
            reason,
        };
        let key_id = sealed_key_id(sealed).ok_or_else(|| fail("malformed ciphertext"))?;
        if key_id & PATIENT_KEY_FLAG != 0 {
            return Err(fail(
                "sealed under a patient key, which the store must supply",
            ));
        }
        let mut keys = self.keys();
        if keys.key(key_id).is_none() && self.reload_unless(|k| k.key(key_id).is_some()) {
            keys = self.keys();
        }
        let key = keys.key(key_id).ok_or_else(|| fail("unknown data key"))?;
        open_under_into(key, record, sealed, out)
    }

    /// The data keys as they are now, for opening many values in a row (the audit verifier)
    /// without looking the key set up for each one.
    pub fn opener(&self) -> Opener<'_> {
        Opener {
            keyring: self,
            keys: self.keys(),
        }
    }

    /// Whether this keyring holds data key `id`.
    pub fn has_data_key(&self, id: u32) -> bool {
        self.keys().key(id).is_some()
    }

    /// Blind index tag of `value` in `domain` (e.g. `Patient.family`), under the blind-index key.
    pub fn blind(&self, domain: &str, value: &[u8]) -> BlindTag {
        blind_under(&self.blind, domain, value)
    }
}

impl DataKeys {
    fn key(&self, id: u32) -> Option<&DataKey> {
        if self.current.id == id {
            Some(&self.current)
        } else {
            self.others.iter().find(|k| k.id == id)
        }
    }
}

/// A per-patient record key (crypto-shredding): 32 random bytes kept in the store wrapped by a
/// data key; destroying the wrapped copy makes every record sealed under it unreadable.
pub struct PatientKey {
    key: DataKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for PatientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PatientKey")
            .field("id", &self.key.id)
            .finish_non_exhaustive()
    }
}

impl PatientKey {
    /// A patient key with store row `row` (its key id is `row | PATIENT_KEY_FLAG`).
    pub fn new(row: u32, material: &[u8]) -> Result<Self, CryptoError> {
        if row & PATIENT_KEY_FLAG != 0 {
            return Err(CryptoError::InvalidKey("patient key row out of range"));
        }
        Ok(Self {
            key: DataKey::new(row | PATIENT_KEY_FLAG, material)?,
            rng: SystemRandom::new(),
        })
    }

    /// The key id sealed values carry.
    pub fn id(&self) -> u32 {
        self.key.id
    }

    /// Seals `plain` under this patient key, bound to `record`.
    pub fn seal(&self, record: &[u8], plain: &[u8]) -> Result<Vec<u8>, CryptoError> {
        seal_under(&self.key, &self.rng, record, plain)
    }

    /// Opens a value sealed by [`PatientKey::seal`] for the same `record`.
    pub fn open(&self, record: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed_key_id(sealed) != Some(self.key.id) {
            return Err(CryptoError::Integrity {
                record: String::from_utf8_lossy(record).into_owned(),
                reason: "sealed under another key",
            });
        }
        open_under(&self.key, record, sealed)
    }
}

#[cfg(not(feature = "insecure-plaintext-bench"))]
fn seal_under(
    key: &DataKey,
    rng: &SystemRandom,
    record: &[u8],
    plain: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut nonce).map_err(|_| CryptoError::Random)?;
    let mut out = Vec::with_capacity(HEADER_LEN + plain.len() + AES_256_GCM.tag_len());
    out.push(SEAL_VERSION);
    out.extend_from_slice(&key.id.to_be_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plain);
    let aad = aad_for(key.id, record);
    let tag = key
        .aead
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&aad[..]),
            &mut out[HEADER_LEN..],
        )
        .map_err(|_| CryptoError::InvalidKey("sealing failed"))?;
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

fn open_under(key: &DataKey, record: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let mut body = Vec::with_capacity(sealed.len().saturating_sub(HEADER_LEN));
    open_under_into(key, record, sealed, &mut body)?;
    Ok(body)
}

#[cfg(not(feature = "insecure-plaintext-bench"))]
fn open_under_into(
    key: &DataKey,
    record: &[u8],
    sealed: &[u8],
    body: &mut Vec<u8>,
) -> Result<(), CryptoError> {
    let fail = |reason| CryptoError::Integrity {
        record: String::from_utf8_lossy(record).into_owned(),
        reason,
    };
    body.clear();
    if sealed.len() < HEADER_LEN + AES_256_GCM.tag_len() {
        return Err(fail("malformed ciphertext"));
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&sealed[5..HEADER_LEN]);
    body.extend_from_slice(&sealed[HEADER_LEN..]);
    // Short record identities (every audit entry's) build their associated data on the stack.
    let mut short = [0u8; 64];
    let long;
    let aad: &[u8] = if record.len() <= short.len() - 4 {
        short[..4].copy_from_slice(&key.id.to_be_bytes());
        short[4..4 + record.len()].copy_from_slice(record);
        &short[..4 + record.len()]
    } else {
        long = aad_for(key.id, record);
        &long
    };
    let plain_len = key
        .aead
        .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), body)
        .map_err(|_| fail("authentication failed"))?
        .len();
    body.truncate(plain_len);
    Ok(())
}

#[cfg(not(feature = "insecure-plaintext-bench"))]
fn blind_under(key: &BlindKey, domain: &str, value: &[u8]) -> BlindTag {
    let mut ctx = hmac::Context::with_key(&key.mac);
    ctx.update(&(domain.len() as u32).to_be_bytes());
    ctx.update(domain.as_bytes());
    ctx.update(value);
    let tag = ctx.sign();
    let mut out = [0u8; BLIND_LEN];
    out.copy_from_slice(&tag.as_ref()[..BLIND_LEN]);
    out
}

// The benchmark-only plaintext mode: the same layout, no encryption, no authentication, an
// unkeyed hash for tags. Built only by `carevault-bench` into its own target directory to measure
// what encryption costs; `build.rs`-free guard: the feature name says what it is, and the shipped
// binary's `serve` refuses to start with it (see `INSECURE_PLAINTEXT`).
#[cfg(feature = "insecure-plaintext-bench")]
fn seal_under(
    key: &DataKey,
    _rng: &SystemRandom,
    _record: &[u8],
    plain: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let mut out = Vec::with_capacity(HEADER_LEN + plain.len() + 16);
    out.push(SEAL_VERSION);
    out.extend_from_slice(&key.id.to_be_bytes());
    out.extend_from_slice(&[0u8; NONCE_LEN]);
    out.extend_from_slice(plain);
    out.extend_from_slice(&[0u8; 16]);
    Ok(out)
}

#[cfg(feature = "insecure-plaintext-bench")]
fn open_under_into(
    _key: &DataKey,
    record: &[u8],
    sealed: &[u8],
    body: &mut Vec<u8>,
) -> Result<(), CryptoError> {
    body.clear();
    if sealed.len() < HEADER_LEN + 16 {
        return Err(CryptoError::Integrity {
            record: String::from_utf8_lossy(record).into_owned(),
            reason: "malformed ciphertext",
        });
    }
    body.extend_from_slice(&sealed[HEADER_LEN..sealed.len() - 16]);
    Ok(())
}

#[cfg(feature = "insecure-plaintext-bench")]
fn blind_under(_key: &BlindKey, domain: &str, value: &[u8]) -> BlindTag {
    use std::hash::{Hash, Hasher};
    let mut out = [0u8; BLIND_LEN];
    for (i, half) in out.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (i, domain, value).hash(&mut h);
        half.copy_from_slice(&h.finish().to_be_bytes());
    }
    out
}

/// True in the benchmark-only build whose "encryption" is a plain copy; `serve` refuses to run
/// such a build unless `CAREVAULT_INSECURE_PLAINTEXT_BENCH=1` is set.
pub const INSECURE_PLAINTEXT: bool = cfg!(feature = "insecure-plaintext-bench");

impl DataKey {
    fn new(id: u32, material: &[u8]) -> Result<Self, CryptoError> {
        if material.len() != 32 {
            return Err(CryptoError::InvalidKey("a data key must be 32 bytes"));
        }
        // Sub-keys are derived with HMAC under distinct labels, so the AEAD key and the blind-index
        // key never reveal each other even when they come from the same material.
        let enc = derive(material, b"carevault aead v1");
        let unbound = UnboundKey::new(&AES_256_GCM, &enc[..])
            .map_err(|_| CryptoError::InvalidKey("bad AES key"))?;
        Ok(Self {
            id,
            aead: LessSafeKey::new(unbound),
        })
    }
}

impl BlindKey {
    fn new(id: u32, material: &[u8]) -> Result<Self, CryptoError> {
        if material.len() != 32 {
            return Err(CryptoError::InvalidKey(
                "a blind-index key must be 32 bytes",
            ));
        }
        let mac = derive(material, b"carevault blind v1");
        Ok(Self {
            id,
            mac: hmac::Key::new(hmac::HMAC_SHA256, &mac[..]),
        })
    }
}

/// HMAC-SHA256(material, label): a labelled sub-key.
fn derive(material: &[u8], label: &[u8]) -> Zeroizing<Vec<u8>> {
    let prk = hmac::Key::new(hmac::HMAC_SHA256, material);
    Zeroizing::new(hmac::sign(&prk, label).as_ref().to_vec())
}

fn aad_for(key_id: u32, record: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(4 + record.len());
    aad.extend_from_slice(&key_id.to_be_bytes());
    aad.extend_from_slice(record);
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Keyring {
        Keyring::from_data_key(7, &[42u8; 32]).unwrap()
    }

    #[test]
    fn seal_open_round_trip() {
        let k = ring();
        let s = k.seal(b"Patient/1/_history/1", b"{\"a\":1}").unwrap();
        assert_eq!(k.open(b"Patient/1/_history/1", &s).unwrap(), b"{\"a\":1}");
    }

    #[test]
    fn ciphertext_moved_to_other_record_fails() {
        let k = ring();
        let s = k.seal(b"Patient/1/_history/1", b"secret").unwrap();
        assert!(k.open(b"Patient/2/_history/1", &s).is_err());
    }

    #[test]
    fn flipped_byte_fails() {
        let k = ring();
        let mut s = k.seal(b"r", b"secret").unwrap();
        let last = s.len() - 1;
        s[last] ^= 1;
        assert!(matches!(
            k.open(b"r", &s),
            Err(CryptoError::Integrity { .. })
        ));
    }

    #[test]
    fn open_into_reuses_the_buffer_and_checks_like_open() {
        let k = ring();
        let opener = k.opener();
        type OpenInto<'a> = &'a dyn Fn(&[u8], &[u8], &mut Vec<u8>) -> Result<(), CryptoError>;
        let opens: [OpenInto; 2] = [&|r, s, o| k.open_into(r, s, o), &|r, s, o| {
            opener.open_into(r, s, o)
        }];
        let long_record = [b'x'; 200];
        for open_into in opens {
            let mut out = b"previous, longer contents of the buffer".to_vec();
            for (record, plain) in [
                (&b"audit/7"[..], &b"short"[..]),
                (&long_record[..], &b"{\"a\":1}"[..]),
                (&b"audit/8"[..], &b""[..]),
            ] {
                let s = k.seal(record, plain).unwrap();
                open_into(record, &s, &mut out).unwrap();
                assert_eq!(out, plain);
                assert!(open_into(b"audit/9", &s, &mut out).is_err());
                let mut bad = s.clone();
                bad[HEADER_LEN] ^= 1;
                assert!(matches!(
                    open_into(record, &bad, &mut out),
                    Err(CryptoError::Integrity { .. })
                ));
            }
            assert!(open_into(b"r", &[1, 0, 0, 0, 7], &mut out).is_err());
            // Under a key neither holds: refused, by the keyring's own path.
            let other = Keyring::from_data_key(8, &[1u8; 32]).unwrap();
            let s = other.seal(b"audit/7", b"x").unwrap();
            assert!(matches!(
                open_into(b"audit/7", &s, &mut out),
                Err(CryptoError::Integrity { .. })
            ));
        }
    }

    #[test]
    fn blind_tags_depend_on_domain_and_key() {
        let k = ring();
        assert_eq!(k.blind("a", b"x"), k.blind("a", b"x"));
        assert_ne!(k.blind("a", b"x"), k.blind("b", b"x"));
        let other = Keyring::from_data_key(8, &[1u8; 32]).unwrap();
        assert_ne!(k.blind("a", b"x"), other.blind("a", b"x"));
    }

    #[test]
    fn blind_tags_survive_data_key_rotation() {
        let before = Keyring::from_parts((1, &[1u8; 32]), &[], (2, &[2u8; 32])).unwrap();
        let after =
            Keyring::from_parts((3, &[3u8; 32]), &[(1, &[1u8; 32])], (2, &[2u8; 32])).unwrap();
        assert_eq!(
            before.blind("Patient.family", b"smith"),
            after.blind("Patient.family", b"smith")
        );
        let sealed = before.seal(b"Patient/1/_history/1", b"x").unwrap();
        assert_eq!(after.open(b"Patient/1/_history/1", &sealed).unwrap(), b"x");
        assert_eq!(after.current_key_id(), 3);
        let newer = after.seal(b"r", b"y").unwrap();
        assert!(before.open(b"r", &newer).is_err());
    }

    struct Swappable(std::sync::Mutex<(u64, u32)>);
    impl KeySource for Swappable {
        fn generation(&self) -> Option<u64> {
            Some(self.0.lock().unwrap().0)
        }
        fn load(&self) -> Result<(KeyMaterial, Vec<KeyMaterial>), String> {
            let id = self.0.lock().unwrap().1;
            let old = (1, Zeroizing::new(vec![1u8; 32]));
            if id == 1 {
                Ok((old, vec![]))
            } else {
                Ok(((id, Zeroizing::new(vec![id as u8; 32])), vec![old]))
            }
        }
    }

    #[test]
    fn a_keyring_with_a_source_opens_values_under_a_newer_key_at_once() {
        let src = std::sync::Arc::new(Swappable(std::sync::Mutex::new((1, 1))));
        struct Shared(std::sync::Arc<Swappable>);
        impl KeySource for Shared {
            fn generation(&self) -> Option<u64> {
                self.0.generation()
            }
            fn load(&self) -> Result<(KeyMaterial, Vec<KeyMaterial>), String> {
                self.0.load()
            }
        }
        let ring = Keyring::from_parts((1, &[1u8; 32]), &[], (9, &[9u8; 32]))
            .unwrap()
            .with_source(Box::new(Shared(src.clone())));
        // Another process rotated: key 2 is current there and sealed a value.
        *src.0.lock().unwrap() = (2, 2);
        let other = Keyring::from_parts((2, &[2u8; 32]), &[], (9, &[9u8; 32])).unwrap();
        let sealed = other.seal(b"r", b"new").unwrap();
        assert_eq!(ring.open(b"r", &sealed).unwrap(), b"new");
        assert_eq!(ring.current_key_id(), 2);
        // Without a source, an unknown key stays unknown.
        let plain = Keyring::from_parts((1, &[1u8; 32]), &[], (9, &[9u8; 32])).unwrap();
        assert!(plain.open(b"r", &sealed).is_err());
    }

    #[test]
    fn patient_keys_are_apart_from_data_keys() {
        let pk = PatientKey::new(5, &[3u8; 32]).unwrap();
        assert_eq!(pk.id(), 5 | PATIENT_KEY_FLAG);
        let s = pk.seal(b"Observation/1/_history/1", b"x").unwrap();
        assert_eq!(sealed_key_id(&s), Some(5 | PATIENT_KEY_FLAG));
        assert_eq!(pk.open(b"Observation/1/_history/1", &s).unwrap(), b"x");
        assert!(pk.open(b"Observation/2/_history/1", &s).is_err());
        // The keyring never opens a patient-keyed value by itself.
        assert!(ring().open(b"Observation/1/_history/1", &s).is_err());
        assert!(PatientKey::new(PATIENT_KEY_FLAG, &[3u8; 32]).is_err());
    }

    #[test]
    fn from_data_key_matches_from_parts_with_same_material() {
        let a = Keyring::from_data_key(7, &[42u8; 32]).unwrap();
        let b = Keyring::from_parts((7, &[42u8; 32]), &[], (7, &[42u8; 32])).unwrap();
        assert_eq!(a.blind("d", b"v"), b.blind("d", b"v"));
        let s = a.seal(b"r", b"p").unwrap();
        assert_eq!(b.open(b"r", &s).unwrap(), b"p");
    }
}
