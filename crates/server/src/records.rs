//! Adapts the store's sealed system-record table to the record interface auth persists through.

use carevault_store::Store;
use std::sync::Arc;

/// OAuth clients, signing keys and (later) accounts, kept sealed in the store.
pub struct SystemRecords(pub Arc<dyn Store>);

impl carevault_auth::RecordStore for SystemRecords {
    fn put(&self, kind: &str, key: &str, body: &[u8]) -> Result<(), String> {
        carevault_store::put_system_record(self.0.as_ref(), kind, key, body)
            .map_err(|e| e.to_string())
    }

    fn get(&self, kind: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        carevault_store::get_system_record(self.0.as_ref(), kind, key).map_err(|e| e.to_string())
    }

    fn list(&self, kind: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
        carevault_store::list_system_records(self.0.as_ref(), kind).map_err(|e| e.to_string())
    }

    fn delete(&self, kind: &str, keys: &[String]) -> Result<(), String> {
        if keys.is_empty() {
            return Ok(());
        }
        let (kind, keys) = (kind.to_owned(), keys.to_vec());
        // One writer job for the whole batch.
        carevault_store::write_with(self.0.as_ref(), move |tx| {
            for key in &keys {
                tx.delete_system_record(&kind, key)?;
            }
            Ok(())
        })
        .map_err(|e| e.to_string())
    }
}

/// Opens the auth service of a running server: issuer `https://host:port`, audience the FHIR base.
pub fn open_auth(
    store: Arc<dyn Store>,
    fhir_base_url: &str,
    token_lifetime: std::time::Duration,
) -> Result<carevault_auth::AuthService, carevault_auth::TokenError> {
    let issuer = fhir_base_url.trim_end_matches("/fhir");
    carevault_auth::AuthService::open(
        Arc::new(SystemRecords(store)),
        issuer,
        fhir_base_url,
        token_lifetime,
        Arc::new(carevault_auth::SystemClock),
        Arc::new(carevault_auth::SystemRng::new()),
    )
}

/// The client registry alone, for admin commands (never creates the signing key).
pub fn open_clients(
    store: Arc<dyn Store>,
) -> Result<carevault_auth::Clients, carevault_auth::AuthError> {
    carevault_auth::Clients::new(
        Arc::new(SystemRecords(store)),
        Arc::new(carevault_auth::SystemClock),
        Arc::new(carevault_auth::SystemRng::new()),
    )
}

/// The human accounts kept in the store's sealed records (Argon2id at the default cost), for
/// admin commands (which never sign anyone in, so throttling settings do not matter there).
pub fn open_accounts(store: Arc<dyn Store>) -> carevault_identity::Accounts {
    open_accounts_with(store, &carevault_identity::IdentitySettings::default())
}

/// The human accounts of a running server, throttled as `settings` say.
pub fn open_accounts_with(
    store: Arc<dyn Store>,
    settings: &carevault_identity::IdentitySettings,
) -> carevault_identity::Accounts {
    carevault_identity::Accounts::with_options(
        Arc::new(SystemRecords(store)),
        Arc::new(carevault_auth::SystemClock),
        Arc::new(carevault_auth::SystemRng::new()),
        carevault_identity::accounts::default_argon2_params(),
        settings.throttle(),
    )
}

/// An empty set of browser sessions with the timeouts of `settings`.
pub fn new_sessions(
    settings: &carevault_identity::IdentitySettings,
) -> carevault_identity::Sessions {
    carevault_identity::Sessions::new(
        Arc::new(carevault_auth::SystemClock),
        Arc::new(carevault_auth::SystemRng::new()),
        settings.session_idle(),
        settings.session_lifetime(),
    )
}
