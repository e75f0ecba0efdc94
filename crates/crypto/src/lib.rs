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
    AuditSigningKey, KeyError, KeyPurpose, KeyState, OpenedKeys, open_or_init, open_or_init_with,
};
pub use master::{
    KeyProvider, LocalKeyProvider, MasterKind, MasterSource, MasterSourceDescription,
};
pub use random::{Random, SystemRng};

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
}

/// Length in bytes of a blind-index tag.
pub const BLIND_LEN: usize = 16;

/// A blind index tag: equal inputs (under the same key and domain) give equal tags.
pub type BlindTag = [u8; BLIND_LEN];

/// Sealed record layout: `version(1) | key_id(4, BE) | nonce(12) | ciphertext+tag`.
const SEAL_VERSION: u8 = 1;
const HEADER_LEN: usize = 1 + 4 + NONCE_LEN;

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

/// The keys a running store uses: the current data key for sealing, older ones for opening,
/// and the blind-index key (kept apart so that rotating the data key leaves every index valid).
pub struct Keyring {
    current: DataKey,
    retired: Vec<DataKey>,
    blind: BlindKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("current_key_id", &self.current.id)
            .field(
                "retired_key_ids",
                &self.retired.iter().map(|k| k.id).collect::<Vec<_>>(),
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
        Ok(Self {
            current: DataKey::new(id, material)?,
            retired: Vec::new(),
            blind: BlindKey::new(id, material)?,
            rng: SystemRandom::new(),
        })
    }

    /// Builds a keyring from unwrapped key material: the current data key, the retired data keys
    /// still needed to open older records, and the blind-index key, each as `(id, 32 bytes)`.
    pub fn from_parts(
        current: (u32, &[u8]),
        retired: &[(u32, &[u8])],
        blind: (u32, &[u8]),
    ) -> Result<Self, CryptoError> {
        Ok(Self {
            current: DataKey::new(current.0, current.1)?,
            retired: retired
                .iter()
                .map(|(id, m)| DataKey::new(*id, m))
                .collect::<Result<_, _>>()?,
            blind: BlindKey::new(blind.0, blind.1)?,
            rng: SystemRandom::new(),
        })
    }

    /// Id of the key blind-index tags are computed under.
    pub fn blind_key_id(&self) -> u32 {
        self.blind.id
    }

    /// Ids of the retired data keys this keyring can still open.
    pub fn retired_key_ids(&self) -> Vec<u32> {
        self.retired.iter().map(|k| k.id).collect()
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
        self.current.id
    }

    /// Seals `plain`, binding it to `record` (e.g. `Patient/123/_history/2`) as associated data.
    pub fn seal(&self, record: &[u8], plain: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| CryptoError::Random)?;
        let mut out = Vec::with_capacity(HEADER_LEN + plain.len() + AES_256_GCM.tag_len());
        out.push(SEAL_VERSION);
        out.extend_from_slice(&self.current.id.to_be_bytes());
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        let aad = aad_for(self.current.id, record);
        self.current
            .aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad[..]),
                &mut body,
            )
            .map_err(|_| CryptoError::InvalidKey("sealing failed"))?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Opens a value sealed by [`Keyring::seal`] for the same `record`.
    pub fn open(&self, record: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let fail = |reason| CryptoError::Integrity {
            record: String::from_utf8_lossy(record).into_owned(),
            reason,
        };
        if sealed.len() < HEADER_LEN + AES_256_GCM.tag_len() || sealed[0] != SEAL_VERSION {
            return Err(fail("malformed ciphertext"));
        }
        let key_id = u32::from_be_bytes([sealed[1], sealed[2], sealed[3], sealed[4]]);
        let key = self.key(key_id).ok_or_else(|| fail("unknown data key"))?;
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[5..HEADER_LEN]);
        let mut body = sealed[HEADER_LEN..].to_vec();
        let aad = aad_for(key_id, record);
        let plain_len = key
            .aead
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad[..]),
                &mut body,
            )
            .map_err(|_| fail("authentication failed"))?
            .len();
        body.truncate(plain_len);
        Ok(body)
    }

    /// Blind index tag of `value` in `domain` (e.g. `Patient.family`), under the blind-index key.
    pub fn blind(&self, domain: &str, value: &[u8]) -> BlindTag {
        let mut ctx = hmac::Context::with_key(&self.blind.mac);
        ctx.update(&(domain.len() as u32).to_be_bytes());
        ctx.update(domain.as_bytes());
        ctx.update(value);
        let tag = ctx.sign();
        let mut out = [0u8; BLIND_LEN];
        out.copy_from_slice(&tag.as_ref()[..BLIND_LEN]);
        out
    }

    fn key(&self, id: u32) -> Option<&DataKey> {
        if self.current.id == id {
            Some(&self.current)
        } else {
            self.retired.iter().find(|k| k.id == id)
        }
    }
}

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

    #[test]
    fn from_data_key_matches_from_parts_with_same_material() {
        let a = Keyring::from_data_key(7, &[42u8; 32]).unwrap();
        let b = Keyring::from_parts((7, &[42u8; 32]), &[], (7, &[42u8; 32])).unwrap();
        assert_eq!(a.blind("d", b"v"), b.blind("d", b"v"));
        let s = a.seal(b"r", b"p").unwrap();
        assert_eq!(b.open(b"r", &s).unwrap(), b"p");
    }
}
