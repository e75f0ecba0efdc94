//! The data directory: first-start initialisation (mode 0700, config, TLS leaf, admin password)
//! and the file-writing discipline (private modes, atomic replace).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What `prepare` found or made.
pub struct Prepared {
    /// True when this start created the data directory.
    pub first_start: bool,
    /// Where the admin password was written, on first start.
    pub admin_password: Option<PathBuf>,
}

/// Failures while preparing the data directory.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("cannot prepare the data directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("the data directory {0} is readable by other users; run `chmod 700` on it")]
    Permissions(PathBuf),
}

/// Creates the data directory and its first-start files if they are missing.
///
/// `tls_paths` are the configured certificate and key; a self-signed pair is written there only
/// when both are absent.
pub fn prepare(root: &Path, tls_paths: (&Path, &Path)) -> Result<Prepared, DataDirError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DataDirError::Io { path, source }
    };
    let first_start = !root.join("carevault.toml").exists() && !root.join("store").exists();
    if !root.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(io(root))?;
    }
    let meta = std::fs::metadata(root).map_err(io(root))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(DataDirError::Permissions(root.to_path_buf()));
    }
    let config = root.join("carevault.toml");
    if !config.exists() {
        write_private(
            &config,
            crate::config::DEFAULT_CONFIG_TOML.as_bytes(),
            0o600,
        )
        .map_err(io(&config))?;
    }
    let (cert, key) = tls_paths;
    if !cert.exists() && !key.exists() {
        for dir in [cert.parent(), key.parent()].into_iter().flatten() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io(dir))?;
        }
        crate::tls::write_self_signed(cert, key)?;
    }
    let mut admin_password = None;
    let pw = root.join("admin-password");
    if first_start && !pw.exists() {
        let material =
            carevault_crypto::Keyring::generate_key_material().map_err(|e| DataDirError::Io {
                path: pw.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
        use base64::Engine as _;
        let password = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&material[..24]);
        write_private(&pw, format!("{password}\n").as_bytes(), 0o600).map_err(io(&pw))?;
        admin_password = Some(pw);
    }
    Ok(Prepared {
        first_start,
        admin_password,
    })
}

/// Creates account `admin` (roles `security_admin`, `system_admin`; it must enrol TOTP at first
/// sign-in) with the password in `DIR/admin-password` when the store holds no account yet.
/// Returns whether it was created.
pub fn create_first_admin(
    root: &Path,
    store: std::sync::Arc<dyn carevault_store::Store>,
) -> Result<bool, DataDirError> {
    let pw = root.join("admin-password");
    let text = match std::fs::read_to_string(&pw) {
        Ok(t) => zeroize::Zeroizing::new(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(source) => return Err(DataDirError::Io { path: pw, source }),
    };
    let password = secrecy::SecretString::from(text.trim().to_owned());
    crate::records::open_accounts(store)
        .create_first_admin(&password)
        .map_err(|e| DataDirError::Io {
            path: pw,
            source: std::io::Error::other(format!("cannot create the admin account: {e}")),
        })
}

/// Writes `data` to `path` atomically (temp file, fsync, rename, fsync of the directory) with `mode`.
pub fn write_private(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}
