//! The master key (key-encryption key): where it comes from and the [`KeyProvider`] interface that
//! wraps and unwraps data keys, which a KMS or HSM backend can implement later.

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::keyfile::KeyError;
use crate::random::{Random, SystemRng};

/// Environment variable naming a file that holds the master key.
pub const MASTER_KEY_FILE_ENV: &str = "CAREVAULT_MASTER_KEY_FILE";
/// Environment variable holding a passphrase the master key is derived from.
pub const PASSPHRASE_ENV: &str = "CAREVAULT_PASSPHRASE";

/// Length in bytes of a master key.
pub const MASTER_KEY_LEN: usize = 32;

/// Where the master key of a data directory comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MasterKind {
    /// A key file named by `CAREVAULT_MASTER_KEY_FILE`.
    KeyFile,
    /// A passphrase from `CAREVAULT_PASSPHRASE`, stretched with Argon2id.
    Passphrase,
    /// The default key file beside the data directory (`DIR.key`).
    DefaultKeyFile,
    /// A provider outside carevault (KMS, HSM).
    External,
}

/// A description of where the master key is, for the start-up banner and `keys status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterSourceDescription {
    /// The kind of source.
    pub kind: MasterKind,
    /// The key file's path, or a short description of the external provider.
    pub location: String,
    /// Whether this start created the key (only ever for the default key file).
    pub created: bool,
    /// Advice worth printing at every start (e.g. a key file readable by others).
    pub warnings: Vec<String>,
}

impl fmt::Display for MasterSourceDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            MasterKind::KeyFile => write!(
                f,
                "master key file {} (from {MASTER_KEY_FILE_ENV})",
                self.location
            ),
            MasterKind::Passphrase => {
                write!(
                    f,
                    "master key derived from {PASSPHRASE_ENV} with Argon2id (salt in {})",
                    self.location
                )
            }
            MasterKind::DefaultKeyFile => write!(
                f,
                "master key file {}{}, beside the data directory; a production key belongs on other media or in a KMS",
                self.location,
                if self.created { " (created now)" } else { "" }
            ),
            MasterKind::External => write!(f, "master key held by {}", self.location),
        }
    }
}

/// Wraps and unwraps data keys under a master key that need not be in this process.
///
/// `context` is associated data (key id and purpose): a wrapped key moved to another entry fails
/// to unwrap. Implementations must use an AEAD; a local one is [`LocalKeyProvider`].
pub trait KeyProvider: Send + Sync {
    /// Where the master key is, for people.
    fn describe(&self) -> MasterSourceDescription;

    /// Encrypts `key` under the master key, bound to `context`.
    fn wrap(&self, context: &[u8], key: &[u8]) -> Result<Vec<u8>, KeyError>;

    /// Decrypts a value made by [`KeyProvider::wrap`] with the same `context`; fails with
    /// [`KeyError::Unwrap`] when the master key or the context differ or the value was altered.
    fn unwrap(&self, context: &[u8], wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError>;
}

/// Argon2id parameters and salt of a passphrase-derived master key, stored in the key file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Always `argon2id`.
    pub alg: String,
    /// The salt, base64.
    pub salt: String,
    /// Memory cost in KiB.
    pub m_kib: u32,
    /// Iterations.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl KdfParams {
    /// Fresh parameters with a random 16-byte salt (64 MiB, 3 passes, 1 lane: OWASP's upper tier).
    pub fn generate(rng: &dyn Random) -> Result<Self, KeyError> {
        use base64::Engine as _;
        let mut salt = [0u8; 16];
        rng.fill(&mut salt)?;
        Ok(Self {
            alg: "argon2id".into(),
            salt: base64::engine::general_purpose::STANDARD.encode(salt),
            m_kib: 64 * 1024,
            t: 3,
            p: 1,
        })
    }

    /// Stretches `passphrase` into a master key.
    pub fn derive(
        &self,
        passphrase: &SecretString,
    ) -> Result<Zeroizing<[u8; MASTER_KEY_LEN]>, KeyError> {
        use base64::Engine as _;
        if self.alg != "argon2id" {
            return Err(KeyError::Kdf(format!(
                "unknown key derivation {:?}",
                self.alg
            )));
        }
        let salt = base64::engine::general_purpose::STANDARD
            .decode(&self.salt)
            .map_err(|_| KeyError::Kdf("the stored salt is not base64".into()))?;
        let params = argon2::Params::new(self.m_kib, self.t, self.p, Some(MASTER_KEY_LEN))
            .map_err(|e| KeyError::Kdf(e.to_string()))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = Zeroizing::new([0u8; MASTER_KEY_LEN]);
        argon
            .hash_password_into(passphrase.expose_secret().as_bytes(), &salt, &mut out[..])
            .map_err(|e| KeyError::Kdf(e.to_string()))?;
        Ok(out)
    }
}

/// Where to take the master key from, resolved from the environment (PRODUCT.md section 3).
#[derive(Debug, Clone)]
pub enum MasterSource {
    /// A file with 32 raw bytes or 64 hex characters.
    KeyFile(PathBuf),
    /// A passphrase, stretched with Argon2id; the salt lives in the data directory.
    Passphrase(SecretString),
    /// The default key file beside the data directory, created on first start.
    DefaultKeyFile(PathBuf),
}

impl MasterSource {
    /// Resolves the source from `CAREVAULT_MASTER_KEY_FILE`, then `CAREVAULT_PASSPHRASE`, then the
    /// default key file beside `data_dir`.
    pub fn from_env(data_dir: &Path) -> Result<Self, KeyError> {
        Self::from_vars(
            data_dir,
            std::env::var_os(MASTER_KEY_FILE_ENV),
            std::env::var(PASSPHRASE_ENV).ok().map(SecretString::from),
        )
    }

    /// Like [`MasterSource::from_env`], with the variables' values given (empty values count as unset).
    pub fn from_vars(
        data_dir: &Path,
        key_file: Option<OsString>,
        passphrase: Option<SecretString>,
    ) -> Result<Self, KeyError> {
        if let Some(p) = key_file.filter(|p| !p.is_empty()) {
            return Ok(Self::KeyFile(PathBuf::from(p)));
        }
        if let Some(p) = passphrase.filter(|p| !p.expose_secret().is_empty()) {
            return Ok(Self::Passphrase(p));
        }
        Ok(Self::DefaultKeyFile(default_key_file(data_dir)?))
    }
}

/// The default key file for `data_dir`: `X.key` beside directory `X` (e.g. `./carevault-data.key`).
pub fn default_key_file(data_dir: &Path) -> Result<PathBuf, KeyError> {
    // Resolve `.`/`..`/trailing slashes so the key lands beside the directory, never inside it.
    let absolute = if data_dir.is_absolute() {
        data_dir.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|source| KeyError::Io {
                action: "find the current directory for",
                path: data_dir.into(),
                source,
            })?
            .join(data_dir)
    };
    let mut normal = PathBuf::new();
    for part in absolute.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                normal.pop();
            }
            other => normal.push(other),
        }
    }
    match (normal.parent(), normal.file_name()) {
        (Some(parent), Some(name)) => {
            let mut file = name.to_os_string();
            file.push(".key");
            Ok(parent.join(file))
        }
        _ => Err(KeyError::NoDefaultKeyPlace {
            data_dir: data_dir.to_path_buf(),
        }),
    }
}

/// Reads a master key file: exactly 32 raw bytes, or 64 hex characters (surrounding white space allowed).
pub fn read_key_file(path: &Path) -> Result<Zeroizing<[u8; MASTER_KEY_LEN]>, KeyError> {
    let bytes = Zeroizing::new(fs::read(path).map_err(|source| KeyError::Io {
        action: "read the master key file",
        path: path.into(),
        source,
    })?);
    let mut key = Zeroizing::new([0u8; MASTER_KEY_LEN]);
    if bytes.len() == MASTER_KEY_LEN {
        key.copy_from_slice(&bytes);
        return Ok(key);
    }
    let text = bytes.trim_ascii();
    if text.len() == 2 * MASTER_KEY_LEN {
        for (i, pair) in text.chunks_exact(2).enumerate() {
            match (hex_val(pair[0]), hex_val(pair[1])) {
                (Some(hi), Some(lo)) => key[i] = (hi << 4) | lo,
                _ => return Err(KeyError::BadKeyFile { path: path.into() }),
            }
        }
        return Ok(key);
    }
    Err(KeyError::BadKeyFile { path: path.into() })
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Creates the default key file with 32 random bytes, mode 0600, unless it already exists.
///
/// Returns whether this call created it (a concurrent start may win the race; then its key is used).
/// The key is written to a temporary file first and linked into place, so no reader sees it half-written.
pub fn create_key_file(path: &Path, rng: &dyn Random) -> Result<bool, KeyError> {
    let mut key = Zeroizing::new([0u8; MASTER_KEY_LEN]);
    rng.fill(&mut key[..])?;
    let tmp = crate::keyfile::unique_temp_path(path)?;
    let io = |action| {
        move |source| KeyError::Io {
            action,
            path: path.into(),
            source,
        }
    };
    let written = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&key[..]).and_then(|()| f.sync_all()));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io("write the master key file")(e));
    }
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(io("create the master key file")(e)),
    }
    if let Some(parent) = path.parent() {
        crate::keyfile::sync_dir(parent)?;
    }
    Ok(true)
}

/// Warnings about a key file's permissions (readable by group or others).
pub fn key_file_warnings(path: &Path) -> Vec<String> {
    match fs::metadata(path) {
        Ok(m) if m.permissions().mode() & 0o077 != 0 => vec![format!(
            "the master key file {} is readable by other users; run chmod 600 on it",
            path.display()
        )],
        _ => Vec::new(),
    }
}

/// A master key held in this process, wrapping data keys with AES-256-GCM.
pub struct LocalKeyProvider {
    kek: LessSafeKey,
    description: MasterSourceDescription,
    rng: SystemRng,
}

impl fmt::Debug for LocalKeyProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKeyProvider")
            .field("description", &self.description)
            .finish_non_exhaustive()
    }
}

/// Wrapped layout: `nonce(12) | ciphertext+tag`.
const WRAP_LABEL: &[u8] = b"carevault key wrap v1";

impl LocalKeyProvider {
    /// A provider over the 32-byte `master` key, described by `description`.
    pub fn new(
        master: &[u8; MASTER_KEY_LEN],
        description: MasterSourceDescription,
    ) -> Result<Self, KeyError> {
        // The wrapping key is a labelled derivative, so the raw master key is never used directly.
        let prk = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, master);
        let kek = Zeroizing::new(aws_lc_rs::hmac::sign(&prk, WRAP_LABEL).as_ref().to_vec());
        let unbound = UnboundKey::new(&AES_256_GCM, &kek[..]).map_err(|_| {
            KeyError::Crypto(crate::CryptoError::InvalidKey("bad key-encryption key"))
        })?;
        Ok(Self {
            kek: LessSafeKey::new(unbound),
            description,
            rng: SystemRng::new(),
        })
    }
}

impl KeyProvider for LocalKeyProvider {
    fn describe(&self) -> MasterSourceDescription {
        self.description.clone()
    }

    fn wrap(&self, context: &[u8], key: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce)?;
        let mut body = key.to_vec();
        self.kek
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context),
                &mut body,
            )
            .map_err(|_| KeyError::Crypto(crate::CryptoError::InvalidKey("wrapping failed")))?;
        let mut out = Vec::with_capacity(NONCE_LEN + body.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        body.fill(0);
        Ok(out)
    }

    fn unwrap(&self, context: &[u8], wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        if wrapped.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(KeyError::Unwrap);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&wrapped[..NONCE_LEN]);
        let mut body = Zeroizing::new(wrapped[NONCE_LEN..].to_vec());
        let len = self
            .kek
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context),
                &mut body[..],
            )
            .map_err(|_| KeyError::Unwrap)?
            .len();
        body.truncate(len);
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc() -> MasterSourceDescription {
        MasterSourceDescription {
            kind: MasterKind::External,
            location: "test".into(),
            created: false,
            warnings: vec![],
        }
    }

    #[test]
    fn default_key_file_is_beside_the_directory() {
        assert_eq!(
            default_key_file(Path::new("/srv/cv/data")).unwrap(),
            PathBuf::from("/srv/cv/data.key")
        );
        assert_eq!(
            default_key_file(Path::new("/srv/cv/data/")).unwrap(),
            PathBuf::from("/srv/cv/data.key")
        );
        assert_eq!(
            default_key_file(Path::new("/srv/cv/data/./x/..")).unwrap(),
            PathBuf::from("/srv/cv/data.key")
        );
        let rel = default_key_file(Path::new("carevault-data")).unwrap();
        assert_eq!(
            rel,
            std::env::current_dir().unwrap().join("carevault-data.key")
        );
        assert!(matches!(
            default_key_file(Path::new("/")),
            Err(KeyError::NoDefaultKeyPlace { .. })
        ));
    }

    #[test]
    fn source_order_is_file_then_passphrase_then_default() {
        let d = Path::new("/x/d");
        let s =
            MasterSource::from_vars(d, Some("/k".into()), Some(SecretString::from("pw"))).unwrap();
        assert!(matches!(s, MasterSource::KeyFile(p) if p == Path::new("/k")));
        let s =
            MasterSource::from_vars(d, Some("".into()), Some(SecretString::from("pw"))).unwrap();
        assert!(matches!(s, MasterSource::Passphrase(_)));
        let s = MasterSource::from_vars(d, None, Some(SecretString::from(""))).unwrap();
        assert!(matches!(s, MasterSource::DefaultKeyFile(p) if p == Path::new("/x/d.key")));
    }

    #[test]
    fn key_files_raw_and_hex() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw");
        fs::write(&raw, [7u8; 32]).unwrap();
        assert_eq!(*read_key_file(&raw).unwrap(), [7u8; 32]);
        let hex = dir.path().join("hex");
        fs::write(&hex, format!("{}\n", "0A".repeat(32))).unwrap();
        assert_eq!(*read_key_file(&hex).unwrap(), [10u8; 32]);
        for bad in [&b"short"[..], &[b'z'; 64][..], &[1u8; 33][..]] {
            let p = dir.path().join("bad");
            fs::write(&p, bad).unwrap();
            assert!(matches!(
                read_key_file(&p),
                Err(KeyError::BadKeyFile { .. })
            ));
        }
        assert!(matches!(
            read_key_file(&dir.path().join("missing")),
            Err(KeyError::Io { .. })
        ));
    }

    #[test]
    fn created_key_file_is_private_and_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.key");
        assert!(create_key_file(&p, &SystemRng::new()).unwrap());
        let first = read_key_file(&p).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(key_file_warnings(&p).is_empty());
        assert!(!create_key_file(&p, &SystemRng::new()).unwrap());
        assert_eq!(*read_key_file(&p).unwrap(), *first);
    }

    #[test]
    fn wrap_binds_context_and_key() {
        let a = LocalKeyProvider::new(&[1u8; 32], desc()).unwrap();
        let b = LocalKeyProvider::new(&[2u8; 32], desc()).unwrap();
        let w = a.wrap(b"ctx1", &[9u8; 32]).unwrap();
        assert_eq!(&a.unwrap(b"ctx1", &w).unwrap()[..], &[9u8; 32]);
        assert!(matches!(a.unwrap(b"ctx2", &w), Err(KeyError::Unwrap)));
        assert!(matches!(b.unwrap(b"ctx1", &w), Err(KeyError::Unwrap)));
        assert!(matches!(a.unwrap(b"ctx1", &w[..10]), Err(KeyError::Unwrap)));
    }

    #[test]
    fn passphrase_derivation_is_deterministic_per_salt() {
        let mut p = KdfParams::generate(&SystemRng::new()).unwrap();
        p.m_kib = 1024; // keep the test quick; production uses 64 MiB
        let pw = SecretString::from("correct horse battery staple");
        assert_eq!(*p.derive(&pw).unwrap(), *p.derive(&pw).unwrap());
        assert_ne!(
            *p.derive(&pw).unwrap(),
            *p.derive(&SecretString::from("other")).unwrap()
        );
        let q = KdfParams::generate(&SystemRng::new()).unwrap();
        let q = KdfParams { m_kib: 1024, ..q };
        assert_ne!(*p.derive(&pw).unwrap(), *q.derive(&pw).unwrap());
    }
}
