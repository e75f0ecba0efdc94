//! Opening a data directory's parts (keys, store, auth) for the server and the admin commands.

use anyhow::{Context, bail};
use std::path::Path;

/// The opened parts of a data directory.
pub struct Parts {
    pub keys: carevault_crypto::OpenedKeys,
    pub rest: carevault_store::Rest,
}

/// Opens keys and store of an existing (or just prepared) data directory.
pub fn open(data: &Path) -> anyhow::Result<Parts> {
    open_with(data, &carevault_store::StoreOptions::default())
}

/// [`open`], with the store opened with `options`.
pub fn open_with(data: &Path, options: &carevault_store::StoreOptions) -> anyhow::Result<Parts> {
    let keys = carevault_crypto::open_or_init(data)
        .with_context(|| format!("cannot open the keys of {}", data.display()))?;
    let store_dir = data.join("store");
    if !store_dir.exists() {
        std::fs::create_dir_all(&store_dir)
            .with_context(|| format!("cannot create {}", store_dir.display()))?;
        restrict(&store_dir)?;
    }
    let store = carevault_store::open_sqlite_with(
        &store_dir.join("carevault.db"),
        keys.keyring.clone(),
        options,
    )
    .with_context(|| format!("cannot open the store in {}", store_dir.display()))?;
    Ok(Parts {
        keys,
        rest: carevault_store::Rest::new(store),
    })
}

/// Admin commands never create a data directory: only `serve` does.
pub fn open_existing(data: &Path) -> anyhow::Result<Parts> {
    if !data.join("carevault.toml").exists() {
        bail!(
            "there is no carevault data directory at {}; start `carevault serve --data {}` once to create it, or pass --data",
            data.display(),
            data.display()
        );
    }
    open(data)
}

fn restrict(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict permissions of {}", dir.display()))?;
    Ok(())
}

/// The auth service of a running server (loads or creates the token-signing key).
pub fn auth(
    parts: &Parts,
    fhir_base_url: &str,
    token_lifetime_seconds: u64,
) -> anyhow::Result<carevault_auth::AuthService> {
    carevault_server::records::open_auth(
        parts.rest.store().clone(),
        fhir_base_url,
        std::time::Duration::from_secs(token_lifetime_seconds),
    )
    .context("cannot open the authorization service")
}
