//! The data directory's key file `DIR/keys/data-keys.json`: data keys wrapped by the master key, a
//! key check value, and [`open_or_init`], which turns them into a [`Keyring`] at start.
//!
//! Layout (JSON, mode 0600, replaced atomically):
//! `{"format":1, "master":{"kind":..,"kdf":..}, "check":b64, "current_data_key":1,
//!   "blind_index_key":2, "keys":[{"id":1,"purpose":"data","state":"active","created_at":unix,"wrapped":b64}, ..]}`.
//! Every wrapped key is bound (AEAD associated data) to its id and purpose, so entries cannot be
//! swapped; the check value is a wrapped constant that tells a wrong master key from a damaged file.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::clock::{Clock, SystemClock};
use crate::master::{
    KdfParams, KeyProvider, LocalKeyProvider, MasterKind, MasterSource, MasterSourceDescription,
    create_key_file, key_file_warnings, read_key_file,
};
use crate::random::{Random, SystemRng};
use crate::{CryptoError, Keyring};

/// Errors opening or creating the key hierarchy; each message is one sentence saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A file operation failed.
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A master key file had the wrong form.
    #[error("the master key file {} must hold exactly 32 raw bytes or 64 hex characters", path.display())]
    BadKeyFile {
        /// The key file.
        path: PathBuf,
    },
    /// The data directory has keys but no master key was found for them.
    #[error(
        "no master key found for the data directory {}: set CAREVAULT_MASTER_KEY_FILE or CAREVAULT_PASSPHRASE, or put back the key file {}",
        data_dir.display(), expected.display()
    )]
    MasterKeyMissing {
        /// The data directory.
        data_dir: PathBuf,
        /// Where the default key file was looked for.
        expected: PathBuf,
    },
    /// The data directory path has no parent to put the default key file in.
    #[error("cannot place a key file beside the data directory {}; set CAREVAULT_MASTER_KEY_FILE", data_dir.display())]
    NoDefaultKeyPlace {
        /// The data directory.
        data_dir: PathBuf,
    },
    /// The master key does not unwrap this directory's keys.
    #[error(
        "master key does not match this data directory (data key {key_id}); check CAREVAULT_MASTER_KEY_FILE or the key file beside the data directory"
    )]
    WrongMasterKey {
        /// The id of the current data key.
        key_id: u32,
    },
    /// The directory was set up with a passphrase but none was given, or the other way round.
    #[error("{0}")]
    WrongMasterKind(String),
    /// The master key is right but a wrapped key failed authentication.
    #[error("data key {key_id} in {} failed its integrity check, so the file was altered or damaged; restore it from a backup", path.display())]
    Tampered {
        /// The key file.
        path: PathBuf,
        /// The key that failed.
        key_id: u32,
    },
    /// The key file could not be parsed or is inconsistent.
    #[error("the key file {} is malformed ({reason}); restore it from a backup", path.display())]
    Malformed {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The passphrase could not be stretched.
    #[error("could not derive the master key from the passphrase: {0}")]
    Kdf(String),
    /// A wrapped key did not unwrap (wrong master key, wrong context, or altered bytes).
    #[error("a wrapped key did not unwrap under the master key")]
    Unwrap,
    /// A primitive failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// What a key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyPurpose {
    /// Sealing records (AES-256-GCM).
    Data,
    /// Blind indexes (HMAC-SHA256); never rotated with the data key.
    BlindIndex,
    /// The Ed25519 seed that signs audit checkpoints; kept apart from the data keys so that
    /// whoever can read records cannot forge the audit trail's signatures with the same secret.
    AuditSigning,
}

impl KeyPurpose {
    fn label(self) -> &'static str {
        match self {
            KeyPurpose::Data => "data",
            KeyPurpose::BlindIndex => "blind-index",
            KeyPurpose::AuditSigning => "audit-signing",
        }
    }
}

/// Whether a key seals new records or only opens old ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyState {
    /// In use.
    Active,
    /// Kept to open older records only.
    Retired,
}

/// One key entry of the key file, as the file holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WrappedKey {
    /// The key id (unique across purposes; sealed records carry it).
    pub id: u32,
    /// What the key is for.
    pub purpose: KeyPurpose,
    /// Whether it is in use.
    pub state: KeyState,
    /// When it was made, seconds since the Unix epoch.
    pub created_at: u64,
    /// The key wrapped by the master key, base64.
    pub wrapped: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct MasterRecord {
    kind: MasterKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kdf: Option<KdfParams>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct KeyFileDoc {
    format: u32,
    master: MasterRecord,
    check: String,
    current_data_key: u32,
    blind_index_key: u32,
    keys: Vec<WrappedKey>,
}

const FORMAT: u32 = 1;
const CHECK_CONTEXT: &[u8] = b"carevault key check v1";
const CHECK_PLAIN: [u8; 32] = [0u8; 32];

/// The result of opening (or creating) a data directory's keys.
#[derive(Debug)]
pub struct OpenedKeys {
    /// The keyring every seal, open and blind index goes through.
    pub keyring: Arc<Keyring>,
    /// Where the master key is, for the start-up banner.
    pub master_source: MasterSourceDescription,
    /// Whether this call created the data keys (first start).
    pub created: bool,
    /// Every key entry (ids, purposes, states, ages) for `keys status`.
    pub keys: Vec<KeyInfo>,
    /// The audit checkpoint signing key.
    pub audit_signing: AuditSigningKey,
    /// The key file and the master key that opened it, for rotations.
    pub handle: KeyFileHandle,
}

/// The Ed25519 seed that signs audit checkpoints, with its key id.
pub struct AuditSigningKey {
    /// The key id in the key file.
    pub id: u32,
    /// The 32-byte Ed25519 seed.
    pub seed: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for AuditSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSigningKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Public facts about one key, for `keys status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// The key id.
    pub id: u32,
    /// What it is for.
    pub purpose: KeyPurpose,
    /// Whether it is in use.
    pub state: KeyState,
    /// When it was made, seconds since the Unix epoch.
    pub created_at: u64,
}

/// Path of the key file inside `data_dir`.
pub fn key_file_path(data_dir: &Path) -> PathBuf {
    data_dir.join("keys").join("data-keys.json")
}

/// Opens the keys of `data_dir`, creating the directory, the master key (unless one is given
/// through the environment) and the data keys on first start. See [`MasterSource::from_env`].
pub fn open_or_init(data_dir: &Path) -> Result<OpenedKeys, KeyError> {
    open_or_init_with(
        data_dir,
        MasterSource::from_env(data_dir)?,
        &SystemClock,
        &SystemRng::new(),
    )
}

/// Like [`open_or_init`] with the master source, clock and random source given.
pub fn open_or_init_with(
    data_dir: &Path,
    source: MasterSource,
    clock: &dyn Clock,
    rng: &dyn Random,
) -> Result<OpenedKeys, KeyError> {
    ensure_private_dir(data_dir)?;
    let keys_dir = data_dir.join("keys");
    ensure_private_dir(&keys_dir)?;
    let path = key_file_path(data_dir);
    let existing = read_doc(&path)?;
    let kind_in_file = existing.as_ref().map(|d| d.master.kind);

    let mut kdf = None;
    let reload_source = source.clone();
    let provider = match source {
        MasterSource::KeyFile(key_path) => {
            if kind_in_file == Some(MasterKind::Passphrase) {
                return Err(set_up_with_passphrase(data_dir));
            }
            let key = read_key_file(&key_path)?;
            LocalKeyProvider::new(
                &key,
                MasterSourceDescription {
                    kind: MasterKind::KeyFile,
                    location: key_path.display().to_string(),
                    created: false,
                    warnings: key_file_warnings(&key_path),
                },
            )?
        }
        MasterSource::Passphrase(pass) => {
            let params = match &existing {
                Some(doc) => doc.master.kdf.clone().ok_or_else(|| {
                    KeyError::WrongMasterKind(format!(
                        "the data directory {} was set up with a master key file, not a passphrase; unset CAREVAULT_PASSPHRASE and set CAREVAULT_MASTER_KEY_FILE or put back its key file",
                        data_dir.display()
                    ))
                })?,
                None => KdfParams::generate(rng)?,
            };
            let key = params.derive(&pass)?;
            kdf = Some(params);
            LocalKeyProvider::new(
                &key,
                MasterSourceDescription {
                    kind: MasterKind::Passphrase,
                    location: path.display().to_string(),
                    created: false,
                    warnings: Vec::new(),
                },
            )?
        }
        MasterSource::DefaultKeyFile(key_path) => {
            if kind_in_file == Some(MasterKind::Passphrase) {
                return Err(set_up_with_passphrase(data_dir));
            }
            let mut created = false;
            if let Some(doc) = &existing {
                recover_pending_default(doc, &key_path, clock)?;
            }
            if !key_path.exists() {
                if existing.is_some() {
                    return Err(KeyError::MasterKeyMissing {
                        data_dir: data_dir.into(),
                        expected: key_path,
                    });
                }
                created = create_key_file(&key_path, rng)?;
            }
            let key = read_key_file(&key_path)?;
            LocalKeyProvider::new(
                &key,
                MasterSourceDescription {
                    kind: MasterKind::DefaultKeyFile,
                    location: key_path.display().to_string(),
                    created,
                    warnings: key_file_warnings(&key_path),
                },
            )?
        }
    };
    let kind = provider.describe().kind;
    let provider: Arc<dyn KeyProvider> = Arc::new(provider);
    open_or_init_with_provider(
        data_dir,
        provider,
        MasterRecord { kind, kdf },
        existing,
        clock,
        rng,
        Some(reload_source),
    )
}

/// Opens or creates the keys of `data_dir` under any [`KeyProvider`] (the entry point a KMS
/// backend uses; the directory must exist).
pub fn open_or_init_with_external(
    data_dir: &Path,
    provider: Arc<dyn KeyProvider>,
    clock: &dyn Clock,
    rng: &dyn Random,
) -> Result<OpenedKeys, KeyError> {
    ensure_private_dir(data_dir)?;
    ensure_private_dir(&data_dir.join("keys"))?;
    let existing = read_doc(&key_file_path(data_dir))?;
    let master = MasterRecord {
        kind: provider.describe().kind,
        kdf: None,
    };
    open_or_init_with_provider(data_dir, provider, master, existing, clock, rng, None)
}

fn set_up_with_passphrase(data_dir: &Path) -> KeyError {
    KeyError::WrongMasterKind(format!(
        "the data directory {} was set up with a passphrase; set CAREVAULT_PASSPHRASE (and unset CAREVAULT_MASTER_KEY_FILE)",
        data_dir.display()
    ))
}

fn open_or_init_with_provider(
    data_dir: &Path,
    provider: Arc<dyn KeyProvider>,
    master: MasterRecord,
    existing: Option<KeyFileDoc>,
    clock: &dyn Clock,
    rng: &dyn Random,
    source: Option<MasterSource>,
) -> Result<OpenedKeys, KeyError> {
    let path = key_file_path(data_dir);
    if let Some(doc) = existing {
        return open_doc(&path, &doc, provider, source);
    }
    let now = clock.unix_seconds();
    let data = Keyring::generate_key_material_with(rng)?;
    let blind = Keyring::generate_key_material_with(rng)?;
    let signing = Keyring::generate_key_material_with(rng)?;
    let doc = KeyFileDoc {
        format: FORMAT,
        master,
        check: b64(&provider.wrap(CHECK_CONTEXT, &CHECK_PLAIN)?),
        current_data_key: 1,
        blind_index_key: 2,
        keys: vec![
            WrappedKey {
                id: 1,
                purpose: KeyPurpose::Data,
                state: KeyState::Active,
                created_at: now,
                wrapped: b64(&provider.wrap(&wrap_context(1, KeyPurpose::Data), &data[..])?),
            },
            WrappedKey {
                id: 2,
                purpose: KeyPurpose::BlindIndex,
                state: KeyState::Active,
                created_at: now,
                wrapped: b64(&provider.wrap(&wrap_context(2, KeyPurpose::BlindIndex), &blind[..])?),
            },
            WrappedKey {
                id: 3,
                purpose: KeyPurpose::AuditSigning,
                state: KeyState::Active,
                created_at: now,
                wrapped: b64(
                    &provider.wrap(&wrap_context(3, KeyPurpose::AuditSigning), &signing[..])?
                ),
            },
        ],
    };
    if !write_new(&path, &doc)? {
        // Another process initialised the directory first: use its keys.
        let doc = read_doc(&path)?.ok_or_else(|| KeyError::Malformed {
            path: path.clone(),
            reason: "vanished".into(),
        })?;
        return open_doc(&path, &doc, provider, source);
    }
    let mut opened = open_doc(&path, &doc, provider, source)?;
    opened.created = true;
    Ok(opened)
}

fn open_doc(
    path: &Path,
    doc: &KeyFileDoc,
    provider: Arc<dyn KeyProvider>,
    source: Option<MasterSource>,
) -> Result<OpenedKeys, KeyError> {
    let unwrapped = unwrap_doc(path, doc, &*provider)?;
    let retired_refs: Vec<(u32, &[u8])> = unwrapped
        .others
        .iter()
        .map(|(id, m)| (*id, &m[..]))
        .collect();
    let (cid, cmat) = &unwrapped.current;
    let (bid, bmat) = &unwrapped.blind;
    let keyring = Keyring::from_parts((*cid, &cmat[..]), &retired_refs, (*bid, &bmat[..]))?
        .with_source(Box::new(FileKeySource {
            path: path.to_path_buf(),
            provider: std::sync::Mutex::new(provider.clone()),
            source,
        }));
    Ok(OpenedKeys {
        keyring: Arc::new(keyring),
        master_source: provider.describe(),
        created: false,
        keys: key_infos(doc),
        audit_signing: unwrapped.audit_signing,
        handle: KeyFileHandle {
            path: path.to_path_buf(),
            provider,
        },
    })
}

fn key_infos(doc: &KeyFileDoc) -> Vec<KeyInfo> {
    doc.keys
        .iter()
        .map(|k| KeyInfo {
            id: k.id,
            purpose: k.purpose,
            state: k.state,
            created_at: k.created_at,
        })
        .collect()
}

/// The unwrapped keys of a key file.
struct Unwrapped {
    current: (u32, Zeroizing<Vec<u8>>),
    others: Vec<(u32, Zeroizing<Vec<u8>>)>,
    blind: (u32, Zeroizing<Vec<u8>>),
    audit_signing: AuditSigningKey,
}

fn unwrap_doc(
    path: &Path,
    doc: &KeyFileDoc,
    provider: &dyn KeyProvider,
) -> Result<Unwrapped, KeyError> {
    let malformed = |reason: &str| KeyError::Malformed {
        path: path.into(),
        reason: reason.into(),
    };
    if doc.format != FORMAT {
        return Err(malformed("unknown format version"));
    }
    let check = unb64(&doc.check).ok_or_else(|| malformed("check value is not base64"))?;
    let ok = match provider.unwrap(CHECK_CONTEXT, &check) {
        Ok(plain) => bool::from(plain[..].ct_eq(&CHECK_PLAIN[..])),
        Err(KeyError::Unwrap) => false,
        Err(e) => return Err(e),
    };
    if !ok {
        return Err(KeyError::WrongMasterKey {
            key_id: doc.current_data_key,
        });
    }
    let mut ids = std::collections::HashSet::new();
    let mut current = None;
    let mut retired = Vec::new();
    let mut blind = None;
    let mut signing = None;
    for entry in &doc.keys {
        if !ids.insert(entry.id) {
            return Err(malformed("a key id appears twice"));
        }
        let wrapped =
            unb64(&entry.wrapped).ok_or_else(|| malformed("a wrapped key is not base64"))?;
        let material = match provider.unwrap(&wrap_context(entry.id, entry.purpose), &wrapped) {
            Ok(m) if m.len() == 32 => m,
            Ok(_) | Err(KeyError::Unwrap) => {
                return Err(KeyError::Tampered {
                    path: path.into(),
                    key_id: entry.id,
                });
            }
            Err(e) => return Err(e),
        };
        match entry.purpose {
            KeyPurpose::Data if entry.id == doc.current_data_key => {
                current = Some((entry.id, material))
            }
            KeyPurpose::Data => retired.push((entry.id, material)),
            KeyPurpose::BlindIndex if entry.id == doc.blind_index_key => {
                blind = Some((entry.id, material))
            }
            KeyPurpose::BlindIndex => {}
            KeyPurpose::AuditSigning if entry.state == KeyState::Active => {
                let mut seed = Zeroizing::new([0u8; 32]);
                seed.copy_from_slice(&material[..]);
                signing = Some(AuditSigningKey { id: entry.id, seed });
            }
            KeyPurpose::AuditSigning => {}
        }
    }
    let audit_signing = signing.ok_or_else(|| malformed("the audit signing key is missing"))?;
    let current = current.ok_or_else(|| malformed("the current data key is missing"))?;
    let blind = blind.ok_or_else(|| malformed("the blind-index key is missing"))?;
    Ok(Unwrapped {
        current,
        others: retired,
        blind,
        audit_signing,
    })
}

/// Re-reads the key file for a running keyring (see [`crate::KeySource`]).
struct FileKeySource {
    path: PathBuf,
    provider: std::sync::Mutex<Arc<dyn KeyProvider>>,
    /// Where the master key came from, to look again after a master rotation (a new default
    /// key file at the same place is picked up; an environment variable cannot change).
    source: Option<MasterSource>,
}

impl crate::KeySource for FileKeySource {
    fn generation(&self) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(&self.path).ok()?;
        Some(
            m.ino()
                .rotate_left(17)
                .wrapping_add(m.mtime_nsec() as u64)
                .wrapping_add((m.mtime() as u64).rotate_left(32))
                .wrapping_add(m.len().rotate_left(48)),
        )
    }

    fn load(&self) -> Result<(crate::KeyMaterial, Vec<crate::KeyMaterial>), String> {
        let doc = read_doc(&self.path)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("the key file {} is missing", self.path.display()))?;
        let provider = self
            .provider
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let unwrapped = match unwrap_doc(&self.path, &doc, &*provider) {
            Err(KeyError::WrongMasterKey { .. }) if self.source.is_some() => {
                let fresh = self
                    .source
                    .as_ref()
                    .map(|s| provider_from_source(s, &doc))
                    .transpose()
                    .map_err(|e| e.to_string())?
                    .ok_or("no master source")?;
                let u = unwrap_doc(&self.path, &doc, &*fresh).map_err(|e| e.to_string())?;
                *self.provider.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
                u
            }
            other => other.map_err(|e| e.to_string())?,
        };
        Ok((unwrapped.current, unwrapped.others))
    }
}

/// A provider built again from a master source (no creation, no pending-rotation recovery).
fn provider_from_source(
    source: &MasterSource,
    doc: &KeyFileDoc,
) -> Result<Arc<dyn KeyProvider>, KeyError> {
    let (key, kind, location) = match source {
        MasterSource::KeyFile(p) => (read_key_file(p)?, MasterKind::KeyFile, p.clone()),
        MasterSource::DefaultKeyFile(p) => {
            (read_key_file(p)?, MasterKind::DefaultKeyFile, p.clone())
        }
        MasterSource::Passphrase(pass) => {
            let params = doc.master.kdf.clone().ok_or_else(|| {
                KeyError::WrongMasterKind("the key file has no passphrase parameters".into())
            })?;
            (params.derive(pass)?, MasterKind::Passphrase, PathBuf::new())
        }
    };
    Ok(Arc::new(LocalKeyProvider::new(
        &key,
        MasterSourceDescription {
            kind,
            location: location.display().to_string(),
            created: false,
            warnings: Vec::new(),
        },
    )?))
}

/// A data directory's key file together with the master key that opened it: what the key
/// rotations change.
pub struct KeyFileHandle {
    path: PathBuf,
    provider: Arc<dyn KeyProvider>,
}

impl std::fmt::Debug for KeyFileHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyFileHandle")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// What a new master key is, for [`KeyFileHandle::rewrap_master`].
pub enum NewMaster {
    /// A key file (32 raw bytes or 64 hex characters) named by `CAREVAULT_MASTER_KEY_FILE`.
    KeyFile(PathBuf),
    /// A passphrase, stretched with Argon2id under a fresh salt.
    Passphrase(secrecy::SecretString),
    /// A new default key file beside the data directory, replacing the old one.
    NewDefaultKeyFile(PathBuf),
}

/// The outcome of a master-key rotation.
#[derive(Debug, Clone)]
pub struct MasterRotation {
    /// How many wrapped keys were re-wrapped.
    pub rewrapped: usize,
    /// The new master source.
    pub kind: MasterKind,
    /// Where the new master key is (key file path), or the key file for a passphrase.
    pub location: PathBuf,
    /// Where the previous default key file was kept, when one was replaced.
    pub old_key_kept_at: Option<PathBuf>,
}

impl KeyFileHandle {
    /// The key file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn doc(&self) -> Result<KeyFileDoc, KeyError> {
        read_doc(&self.path)?.ok_or_else(|| KeyError::Malformed {
            path: self.path.clone(),
            reason: "the key file disappeared".into(),
        })
    }

    /// Every key entry as the file holds it now.
    pub fn keys(&self) -> Result<Vec<KeyInfo>, KeyError> {
        Ok(key_infos(&self.doc()?))
    }

    /// The id of the current data key as the file holds it now.
    pub fn current_data_key(&self) -> Result<u32, KeyError> {
        Ok(self.doc()?.current_data_key)
    }

    /// The master kind the file records.
    pub fn master_kind(&self) -> Result<MasterKind, KeyError> {
        Ok(self.doc()?.master.kind)
    }

    /// An id no key of the file uses (one above the highest).
    pub fn next_key_id(&self) -> Result<u32, KeyError> {
        Ok(self.doc()?.keys.iter().map(|k| k.id).max().unwrap_or(0) + 1)
    }

    /// Adds data key `id` (fresh random material) as the current data key; the previous current
    /// key becomes retired (opens only). Idempotent: when `id` exists already nothing changes.
    pub fn add_data_key(
        &self,
        id: u32,
        clock: &dyn Clock,
        rng: &dyn Random,
    ) -> Result<(), KeyError> {
        let mut doc = self.doc()?;
        if doc.keys.iter().any(|k| k.id == id) {
            return Ok(());
        }
        if id & crate::PATIENT_KEY_FLAG != 0 {
            return Err(KeyError::Crypto(CryptoError::InvalidKey(
                "data key id out of range",
            )));
        }
        // Proves the master key before anything changes.
        unwrap_doc(&self.path, &doc, &*self.provider)?;
        let material = Keyring::generate_key_material_with(rng)?;
        for k in doc.keys.iter_mut() {
            if k.purpose == KeyPurpose::Data {
                k.state = KeyState::Retired;
            }
        }
        doc.keys.push(WrappedKey {
            id,
            purpose: KeyPurpose::Data,
            state: KeyState::Active,
            created_at: clock.unix_seconds(),
            wrapped: b64(&self
                .provider
                .wrap(&wrap_context(id, KeyPurpose::Data), &material[..])?),
        });
        doc.current_data_key = id;
        write_replace(&self.path, &doc)
    }

    /// Removes retired data keys `ids` from the file (never the current one): once nothing is
    /// sealed under them, dropping them is what makes old copies of records unreadable.
    pub fn remove_data_keys(&self, ids: &[u32]) -> Result<usize, KeyError> {
        let mut doc = self.doc()?;
        let before = doc.keys.len();
        let current = doc.current_data_key;
        doc.keys
            .retain(|k| !(k.purpose == KeyPurpose::Data && k.id != current && ids.contains(&k.id)));
        let removed = before - doc.keys.len();
        if removed > 0 {
            write_replace(&self.path, &doc)?;
        }
        Ok(removed)
    }

    /// Re-wraps every key of the file under a new master key, atomically (the data keys, the
    /// blind-index key and the audit-signing key themselves do not change, so nothing else has
    /// to be re-encrypted). For a new default key file the sequence is: new key at
    /// `DIR.key.new`, key file replaced, old key moved to `DIR.key.old-<unix time>`, new key
    /// renamed into place; a crash at any point leaves a directory that opens (see
    /// [`open_or_init`], which finishes a pending switch).
    pub fn rewrap_master(
        &self,
        new: NewMaster,
        clock: &dyn Clock,
        rng: &dyn Random,
    ) -> Result<MasterRotation, KeyError> {
        let mut doc = self.doc()?;
        let unwrapped_check = unwrap_doc(&self.path, &doc, &*self.provider)?;
        drop(unwrapped_check);
        let (key, record, location, pending) = match &new {
            NewMaster::KeyFile(p) => (
                read_key_file(p)?,
                MasterRecord {
                    kind: MasterKind::KeyFile,
                    kdf: None,
                },
                p.clone(),
                None,
            ),
            NewMaster::Passphrase(pass) => {
                let params = KdfParams::generate(rng)?;
                let key = params.derive(pass)?;
                (
                    key,
                    MasterRecord {
                        kind: MasterKind::Passphrase,
                        kdf: Some(params),
                    },
                    self.path.clone(),
                    None,
                )
            }
            NewMaster::NewDefaultKeyFile(p) => {
                let staged = pending_key_path(p);
                let _ = fs::remove_file(&staged);
                create_key_file(&staged, rng)?;
                (
                    read_key_file(&staged)?,
                    MasterRecord {
                        kind: MasterKind::DefaultKeyFile,
                        kdf: None,
                    },
                    p.clone(),
                    Some(staged),
                )
            }
        };
        let fresh = LocalKeyProvider::new(
            &key,
            MasterSourceDescription {
                kind: record.kind,
                location: location.display().to_string(),
                created: false,
                warnings: Vec::new(),
            },
        )?;
        let mut rewrapped = 0;
        for entry in doc.keys.iter_mut() {
            let ctx = wrap_context(entry.id, entry.purpose);
            let wrapped = unb64(&entry.wrapped).ok_or_else(|| KeyError::Malformed {
                path: self.path.clone(),
                reason: "a wrapped key is not base64".into(),
            })?;
            let material = self.provider.unwrap(&ctx, &wrapped)?;
            entry.wrapped = b64(&fresh.wrap(&ctx, &material)?);
            rewrapped += 1;
        }
        doc.check = b64(&fresh.wrap(CHECK_CONTEXT, &CHECK_PLAIN)?);
        doc.master = record;
        write_replace(&self.path, &doc)?;
        // Confirm: the file as written opens under the new key.
        let written = self.doc()?;
        unwrap_doc(&self.path, &written, &fresh)?;
        let mut old_key_kept_at = None;
        if let (Some(staged), NewMaster::NewDefaultKeyFile(p)) = (pending, &new) {
            old_key_kept_at = finish_default_switch(p, &staged, clock)?;
        }
        Ok(MasterRotation {
            rewrapped,
            kind: written.master.kind,
            location,
            old_key_kept_at,
        })
    }
}

/// Finishes (or undoes) a default-key rotation that a crash interrupted: when `DIR.key.new`
/// exists and opens the key file, it becomes `DIR.key`; when it does not, it was never used and
/// is removed.
fn recover_pending_default(
    doc: &KeyFileDoc,
    key: &Path,
    clock: &dyn Clock,
) -> Result<(), KeyError> {
    let staged = pending_key_path(key);
    if !staged.exists() {
        return Ok(());
    }
    let opens = read_key_file(&staged)
        .and_then(|k| {
            LocalKeyProvider::new(
                &k,
                MasterSourceDescription {
                    kind: MasterKind::DefaultKeyFile,
                    location: staged.display().to_string(),
                    created: false,
                    warnings: Vec::new(),
                },
            )
        })
        .ok()
        .and_then(|p| {
            let check = unb64(&doc.check)?;
            let plain = p.unwrap(CHECK_CONTEXT, &check).ok()?;
            Some(bool::from(plain[..].ct_eq(&CHECK_PLAIN[..])))
        })
        .unwrap_or(false);
    if opens {
        finish_default_switch(key, &staged, clock)?;
    } else {
        let _ = fs::remove_file(&staged);
    }
    Ok(())
}

/// `DIR.key.new`: a default master key staged by a rotation.
pub fn pending_key_path(default_key: &Path) -> PathBuf {
    let mut name = default_key
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".new");
    default_key.with_file_name(name)
}

/// Moves the old default key aside (`.old-<unix time>`) and the staged one into place.
fn finish_default_switch(
    key: &Path,
    staged: &Path,
    clock: &dyn Clock,
) -> Result<Option<PathBuf>, KeyError> {
    let mut kept = None;
    if key.exists() {
        let mut name = key
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        name.push(format!(".old-{}", clock.unix_seconds()));
        let old = key.with_file_name(name);
        fs::rename(key, &old).map_err(|source| KeyError::Io {
            action: "keep the old master key file as",
            path: old.clone(),
            source,
        })?;
        kept = Some(old);
    }
    fs::rename(staged, key).map_err(|source| KeyError::Io {
        action: "put the new master key file in place at",
        path: key.into(),
        source,
    })?;
    if let Some(dir) = key.parent() {
        sync_dir(dir)?;
    }
    Ok(kept)
}

/// Associated data binding a wrapped key to its id and purpose.
fn wrap_context(id: u32, purpose: KeyPurpose) -> Vec<u8> {
    let mut c = b"carevault data key v1\0".to_vec();
    c.extend_from_slice(purpose.label().as_bytes());
    c.push(0);
    c.extend_from_slice(&id.to_be_bytes());
    c
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

fn read_doc(path: &Path) -> Result<Option<KeyFileDoc>, KeyError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| KeyError::Malformed {
                path: path.into(),
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(KeyError::Io {
            action: "read the key file",
            path: path.into(),
            source,
        }),
    }
}

/// Creates `dir` (mode 0700) when absent.
fn ensure_private_dir(dir: &Path) -> Result<(), KeyError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| KeyError::Io {
            action: "create the directory",
            path: dir.into(),
            source,
        })?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|source| KeyError::Io {
        action: "restrict the permissions of",
        path: dir.into(),
        source,
    })
}

/// A fresh temporary name beside `path` (process id plus random, so racing writers never share one).
pub(crate) fn unique_temp_path(path: &Path) -> Result<PathBuf, KeyError> {
    let mut r = [0u8; 8];
    SystemRng::new().fill(&mut r)?;
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(
        ".tmp-{}-{:016x}",
        std::process::id(),
        u64::from_be_bytes(r)
    ));
    Ok(path.with_file_name(name))
}

/// Flushes a directory so a rename or create inside it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), KeyError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| KeyError::Io {
            action: "flush the directory",
            path: dir.into(),
            source,
        })
}

/// Writes `doc` to a private temporary file, flushed, beside `path`.
fn write_temp(path: &Path, doc: &KeyFileDoc) -> Result<PathBuf, KeyError> {
    let tmp = unique_temp_path(path)?;
    let tmp_ref = &tmp;
    let io = |action| {
        move |source| KeyError::Io {
            action,
            path: tmp_ref.clone(),
            source,
        }
    };
    let body = Zeroizing::new(
        serde_json::to_vec_pretty(doc).map_err(|e| KeyError::Malformed {
            path: path.into(),
            reason: e.to_string(),
        })?,
    );
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("create the temporary key file"))?;
    f.write_all(&body)
        .map_err(io("write the temporary key file"))?;
    f.sync_all().map_err(io("flush the temporary key file"))?;
    Ok(tmp)
}

/// Atomically creates `path` with `doc`; returns false when it already exists.
fn write_new(path: &Path, doc: &KeyFileDoc) -> Result<bool, KeyError> {
    let tmp = write_temp(path, doc)?;
    // hard_link fails when the target exists, which makes creation atomic and race-free.
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(source) => {
            return Err(KeyError::Io {
                action: "create the key file",
                path: path.into(),
                source,
            });
        }
    }
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(true)
}

/// Atomically replaces `path` with `doc` (temp file, fsync, rename, fsync directory).
fn write_replace(path: &Path, doc: &KeyFileDoc) -> Result<(), KeyError> {
    let tmp = write_temp(path, doc)?;
    fs::rename(&tmp, path).map_err(|source| KeyError::Io {
        action: "replace the key file",
        path: path.into(),
        source,
    })?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use secrecy::SecretString;

    fn open(dir: &Path, source: MasterSource) -> Result<OpenedKeys, KeyError> {
        open_or_init_with(
            dir,
            source,
            &ManualClock::at_unix(1_700_000_000),
            &SystemRng::new(),
        )
    }

    fn default_source(dir: &Path) -> MasterSource {
        MasterSource::DefaultKeyFile(crate::master::default_key_file(dir).unwrap())
    }

    #[test]
    fn first_start_creates_keys_beside_and_inside() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("carevault-data");
        let opened = open(&dir, default_source(&dir)).unwrap();
        assert!(opened.created);
        assert!(opened.master_source.created);
        assert_eq!(opened.master_source.kind, MasterKind::DefaultKeyFile);
        let key = tmp.path().join("carevault-data.key");
        assert_eq!(opened.master_source.location, key.display().to_string());
        assert!(
            opened
                .master_source
                .to_string()
                .contains("beside the data directory")
        );
        assert_eq!(fs::read(&key).unwrap().len(), 32);
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let kf = key_file_path(&dir);
        assert_eq!(
            fs::metadata(&kf).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(
            fs::metadata(dir.join("keys")).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // nothing left behind but the key file
        assert_eq!(fs::read_dir(dir.join("keys")).unwrap().count(), 1);
        let k = &opened.keyring;
        assert_eq!(k.current_key_id(), 1);
        assert_eq!(k.blind_key_id(), 2);
        assert_eq!(opened.keys.len(), 3);
        assert_eq!(opened.audit_signing.id, 3);
        assert_ne!(*opened.audit_signing.seed, [0u8; 32]);
        assert!(opened.keys.iter().all(|i| i.created_at == 1_700_000_000));
        // the key file holds no key in the clear
        let text = fs::read_to_string(&kf).unwrap();
        assert!(text.contains("\"blind-index\""));
    }

    #[test]
    fn reopen_gives_the_same_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        let first = open(&dir, default_source(&dir)).unwrap();
        let sealed = first
            .keyring
            .seal(b"Patient/1/_history/1", b"hello")
            .unwrap();
        let tag = first.keyring.blind("Patient.family", b"smith");
        let again = open(&dir, default_source(&dir)).unwrap();
        assert!(!again.created);
        assert_eq!(*again.audit_signing.seed, *first.audit_signing.seed);
        assert!(!again.master_source.created);
        assert_eq!(
            again
                .keyring
                .open(b"Patient/1/_history/1", &sealed)
                .unwrap(),
            b"hello"
        );
        assert_eq!(again.keyring.blind("Patient.family", b"smith"), tag);
    }

    #[test]
    fn wrong_master_key_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        let key = tmp.path().join("explicit.key");
        fs::write(&key, "11".repeat(32)).unwrap();
        open(&dir, MasterSource::KeyFile(key.clone())).unwrap();
        fs::write(&key, "22".repeat(32)).unwrap();
        let err = open(&dir, MasterSource::KeyFile(key)).unwrap_err();
        assert!(matches!(err, KeyError::WrongMasterKey { key_id: 1 }));
        assert_eq!(
            err.to_string(),
            "master key does not match this data directory (data key 1); check CAREVAULT_MASTER_KEY_FILE or the key file beside the data directory"
        );
    }

    #[test]
    fn missing_default_key_is_not_silently_recreated() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        open(&dir, default_source(&dir)).unwrap();
        fs::remove_file(tmp.path().join("d.key")).unwrap();
        let err = open(&dir, default_source(&dir)).unwrap_err();
        assert!(matches!(err, KeyError::MasterKeyMissing { .. }), "{err}");
        assert!(!tmp.path().join("d.key").exists());
    }

    #[test]
    fn passphrase_path() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        let pass = || MasterSource::Passphrase(SecretString::from("a long enough passphrase"));
        let first = open(&dir, pass()).unwrap();
        assert_eq!(first.master_source.kind, MasterKind::Passphrase);
        assert!(
            !tmp.path().join("d.key").exists(),
            "a passphrase needs no key file"
        );
        let sealed = first.keyring.seal(b"r", b"v").unwrap();
        let again = open(&dir, pass()).unwrap();
        assert_eq!(again.keyring.open(b"r", &sealed).unwrap(), b"v");
        let wrong = open(
            &dir,
            MasterSource::Passphrase(SecretString::from("another passphrase")),
        )
        .unwrap_err();
        assert!(matches!(wrong, KeyError::WrongMasterKey { .. }));
        let no_pass = open(&dir, default_source(&dir)).unwrap_err();
        assert!(matches!(no_pass, KeyError::WrongMasterKind(_)), "{no_pass}");
        assert!(no_pass.to_string().contains("CAREVAULT_PASSPHRASE"));
    }

    #[test]
    fn passphrase_on_a_key_file_directory_says_so() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        open(&dir, default_source(&dir)).unwrap();
        let err = open(&dir, MasterSource::Passphrase(SecretString::from("pw"))).unwrap_err();
        assert!(matches!(err, KeyError::WrongMasterKind(_)));
    }

    fn tamper(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
        let p = key_file_path(dir);
        let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        f(&mut v);
        fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
    }

    #[test]
    fn tampered_key_file_is_an_error_not_a_panic() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        open(&dir, default_source(&dir)).unwrap();
        let pristine = fs::read(key_file_path(&dir)).unwrap();
        let reset = || fs::write(key_file_path(&dir), &pristine).unwrap();

        // A flipped byte in a wrapped key.
        tamper(&dir, |v| {
            let w = v["keys"][0]["wrapped"].as_str().unwrap().to_owned();
            let mut bytes = unb64(&w).unwrap();
            bytes[20] ^= 1;
            v["keys"][0]["wrapped"] = serde_json::Value::String(b64(&bytes));
        });
        let err = open(&dir, default_source(&dir)).unwrap_err();
        assert!(matches!(err, KeyError::Tampered { key_id: 1, .. }), "{err}");
        reset();

        // Swapped wrapped keys between the data and blind-index entries.
        tamper(&dir, |v| {
            let a = v["keys"][0]["wrapped"].clone();
            let b = v["keys"][1]["wrapped"].clone();
            v["keys"][0]["wrapped"] = b;
            v["keys"][1]["wrapped"] = a;
        });
        assert!(matches!(
            open(&dir, default_source(&dir)),
            Err(KeyError::Tampered { .. })
        ));
        reset();

        // Purpose relabelled.
        tamper(&dir, |v| v["keys"][1]["purpose"] = "data".into());
        assert!(open(&dir, default_source(&dir)).is_err());
        reset();

        // Missing blind key, duplicate id, bad base64, garbage, truncation.
        tamper(&dir, |v| v["blind_index_key"] = 9.into());
        assert!(matches!(
            open(&dir, default_source(&dir)),
            Err(KeyError::Malformed { .. })
        ));
        reset();
        tamper(&dir, |v| v["keys"][1]["id"] = 1.into());
        assert!(open(&dir, default_source(&dir)).is_err());
        reset();
        tamper(&dir, |v| v["keys"][0]["wrapped"] = "***".into());
        assert!(matches!(
            open(&dir, default_source(&dir)),
            Err(KeyError::Malformed { .. })
        ));
        reset();
        tamper(&dir, |v| v["check"] = "AAAA".into());
        assert!(matches!(
            open(&dir, default_source(&dir)),
            Err(KeyError::WrongMasterKey { .. })
        ));
        reset();
        fs::write(key_file_path(&dir), &pristine[..pristine.len() / 2]).unwrap();
        assert!(matches!(
            open(&dir, default_source(&dir)),
            Err(KeyError::Malformed { .. })
        ));
        fs::write(key_file_path(&dir), b"\x00\xff garbage").unwrap();
        let err = open(&dir, default_source(&dir)).unwrap_err();
        assert!(
            err.to_string().contains("restore it from a backup"),
            "{err}"
        );
        reset();
        open(&dir, default_source(&dir)).unwrap();
    }

    #[test]
    fn data_key_added_then_retired_and_master_rewrapped() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        let clock = ManualClock::at_unix(1_700_000_000);
        let first = open(&dir, default_source(&dir)).unwrap();
        let sealed = first.keyring.seal(b"r", b"v").unwrap();
        let h = &first.handle;
        let id = h.next_key_id().unwrap();
        assert_eq!(id, 4);
        h.add_data_key(id, &clock, &SystemRng::new()).unwrap();
        h.add_data_key(id, &clock, &SystemRng::new()).unwrap(); // idempotent
        assert_eq!(h.current_data_key().unwrap(), 4);
        // The running keyring follows the file.
        assert!(first.keyring.reload());
        let newer = first.keyring.seal(b"r", b"w").unwrap();
        assert_eq!(crate::sealed_key_id(&newer), Some(4));
        assert_eq!(first.keyring.open(b"r", &sealed).unwrap(), b"v");
        assert_eq!(
            h.remove_data_keys(&[1, 4]).unwrap(),
            1,
            "never the current key"
        );
        let again = open(&dir, default_source(&dir)).unwrap();
        assert!(again.keyring.open(b"r", &sealed).is_err());
        assert_eq!(again.keyring.open(b"r", &newer).unwrap(), b"w");
        // Master re-wrap onto a new default key file: old key kept aside, directory opens.
        let key = tmp.path().join("d.key");
        let before = fs::read(&key).unwrap();
        let done = again
            .handle
            .rewrap_master(
                NewMaster::NewDefaultKeyFile(key.clone()),
                &clock,
                &SystemRng::new(),
            )
            .unwrap();
        assert_eq!(done.rewrapped, 3);
        assert_ne!(fs::read(&key).unwrap(), before);
        assert_eq!(fs::read(done.old_key_kept_at.unwrap()).unwrap(), before);
        let reopened = open(&dir, default_source(&dir)).unwrap();
        assert_eq!(reopened.keyring.open(b"r", &newer).unwrap(), b"w");
    }

    #[test]
    fn an_interrupted_default_key_switch_is_finished_or_undone_at_start() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        let clock = ManualClock::at_unix(1_700_000_000);
        let first = open(&dir, default_source(&dir)).unwrap();
        let sealed = first.keyring.seal(b"r", b"v").unwrap();
        let key = tmp.path().join("d.key");
        // Crash after staging the new key, before the key file was re-wrapped: undone.
        create_key_file(&pending_key_path(&key), &SystemRng::new()).unwrap();
        open(&dir, default_source(&dir)).unwrap();
        assert!(!pending_key_path(&key).exists());
        // Crash after the key file was re-wrapped, before the rename: finished.
        let old = fs::read(&key).unwrap();
        first
            .handle
            .rewrap_master(
                NewMaster::NewDefaultKeyFile(key.clone()),
                &clock,
                &SystemRng::new(),
            )
            .unwrap();
        let new = fs::read(&key).unwrap();
        fs::rename(&key, pending_key_path(&key)).unwrap();
        fs::write(&key, &old).unwrap();
        let back = open(&dir, default_source(&dir)).unwrap();
        assert_eq!(back.keyring.open(b"r", &sealed).unwrap(), b"v");
        assert_eq!(fs::read(&key).unwrap(), new);
    }

    #[test]
    fn concurrent_first_starts_agree_on_one_set_of_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    let o = open(&dir, default_source(&dir)).unwrap();
                    (o.created, o.keyring.blind("x", b"y"))
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(results.iter().filter(|(c, _)| *c).count(), 1);
        assert!(results.iter().all(|(_, t)| *t == results[0].1));
    }
}
