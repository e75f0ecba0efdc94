//! The one error type of SIEM delivery: every failure names what failed and where, never what an
//! audit entry said.

use std::io;
use std::path::PathBuf;

use crate::feed::FeedError;

/// What went wrong while configuring or running SIEM delivery.
///
/// Messages are single sentences that name the file, address or sequence number involved and
/// include the underlying cause, so `to_string()` is the whole story (the causes are therefore not
/// also chained as `source()`). None of them carries the content of an audit entry, so they are
/// safe to log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SiemError {
    /// The cursor file exists but could not be read.
    #[error("cannot read the SIEM cursor file {path}: {error}")]
    CursorRead {
        /// The cursor file.
        path: PathBuf,
        /// The underlying I/O error.
        error: io::Error,
    },
    /// The cursor file does not hold a sequence number.
    #[error(
        "the SIEM cursor file {path} does not hold a sequence number; restore it or delete it to resend the whole audit trail"
    )]
    CursorCorrupt {
        /// The cursor file.
        path: PathBuf,
    },
    /// The new cursor value could not be made durable.
    #[error("cannot write the SIEM cursor file {path}: {error}")]
    CursorWrite {
        /// The cursor file.
        path: PathBuf,
        /// The underlying I/O error.
        error: io::Error,
    },
    /// Another shipper (in this or another process) holds the cursor.
    #[error("the SIEM cursor {path} is in use by another shipper; run one shipper per cursor file")]
    CursorLocked {
        /// The cursor file.
        path: PathBuf,
    },
    /// A caller tried to move the cursor back, which would resend entries.
    #[error("refusing to move the SIEM cursor {path} back from {current} to {requested}")]
    CursorBackwards {
        /// The cursor file.
        path: PathBuf,
        /// The durable value.
        current: u64,
        /// The value asked for.
        requested: u64,
    },
    /// A configuration value is unusable; the message says which and why.
    #[error("invalid SIEM configuration: {0}")]
    Config(String),
    /// A PEM file (CA, client certificate or key) could not be read or holds nothing usable.
    #[error("cannot load {what} from {path}: {reason}")]
    Pem {
        /// What the file was supposed to hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// rustls refused the TLS configuration (for example a key that does not match its certificate).
    #[error("cannot build the TLS configuration for the syslog collector: {0}")]
    TlsConfig(rustls::Error),
    /// No TCP connection could be opened to the collector.
    #[error(
        "cannot connect to the syslog collector at {address}: {error} (is it running and reachable?)"
    )]
    Connect {
        /// The collector's `host:port`.
        address: String,
        /// The underlying I/O error.
        error: io::Error,
    },
    /// The TLS handshake failed, for example because the collector's certificate is not signed by
    /// the configured CA or does not name `server_name`.
    #[error(
        "TLS handshake with the syslog collector at {address} failed: {error} (check ca_file, server_name and client_cert against the collector's certificates)"
    )]
    Handshake {
        /// The collector's `host:port`.
        address: String,
        /// The underlying error (a rustls error wrapped in I/O).
        error: io::Error,
    },
    /// The connection died (close, reset or TLS error) while written batches awaited
    /// confirmation; they will be sent again.
    #[error(
        "the connection to the syslog collector at {address} ended before the last entries written were confirmed ({error}); they will be sent again"
    )]
    Unconfirmed {
        /// The collector's `host:port`.
        address: String,
        /// What ended the connection.
        error: io::Error,
    },
    /// Writing a batch to the collector failed; the batch will be sent again.
    #[error("sending audit entries to the syslog collector at {address} failed: {error}")]
    Send {
        /// The collector's `host:port`.
        address: String,
        /// The underlying I/O error.
        error: io::Error,
    },
    /// Creating, repairing, writing or syncing an NDJSON export file failed.
    #[error("NDJSON export failed at {path}: {error}")]
    Ndjson {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying I/O error.
        error: io::Error,
    },
    /// The audit feed could not be read.
    #[error(transparent)]
    Feed(#[from] FeedError),
    /// The audit feed broke its contract (entries must come in strictly ascending `seq` after the
    /// cursor); nothing from this batch was delivered.
    #[error(
        "the audit feed returned seq {got} after seq {previous}; entries must come in strictly ascending order"
    )]
    FeedOrder {
        /// The last sequence number accepted.
        previous: u64,
        /// The out-of-order sequence number.
        got: u64,
    },
    /// The wake handle given to [`crate::Shipper::start`] already belongs to another shipper.
    #[error("this Wake already belongs to a running shipper; create one Wake per shipper")]
    WakeInUse,
    /// The delivery thread could not be started.
    #[error("cannot start the SIEM delivery thread: {0}")]
    Spawn(io::Error),
}
