//! Delivery of carevault's audit trail to an organisation's SIEM: every audit entry as an RFC 5424
//! syslog message over TLS (RFC 5425), or as a line of AuditEvent NDJSON files, at least once.
//!
//! The server implements [`AuditFeed`] over its audit store and starts one [`Shipper`] per
//! destination. Each shipper runs on its own thread: it reads the entries after its durable
//! [`Cursor`], delivers them, and moves the cursor only once the sink vouches for them (an
//! NDJSON file synced to disk; a syslog connection still alive a moment after the write). A
//! crash or an unreachable collector therefore repeats a few entries and loses none. The audit
//! store itself is the queue: while a collector is down, entries simply wait behind the cursor.
//! The request path only ever calls [`Wake::notify`], which never blocks, so clinical traffic
//! never waits for a SIEM.
//!
//! How far "delivered" can be trusted over syslog, a transport without acknowledgements, and
//! what a collector restart does, is written down in the [`syslog`] module. Every syslog message
//! carries its `seq` in structured data so a SIEM can drop repeats.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cursor;
pub mod error;
pub mod feed;
pub mod ndjson;
pub mod rfc5424;
pub mod shipper;
pub mod syslog;
#[cfg(feature = "test-support")]
pub mod testing;

pub use cursor::Cursor;
pub use error::SiemError;
pub use feed::{AuditFeed, FeedEntry, FeedError};
pub use ndjson::NdjsonConfig;
pub use rfc5424::{
    CHECKPOINT_MSGID, FACILITY_LOG_AUDIT, MAX_APP_NAME, MAX_HOSTNAME, MAX_PROCID, MSGID, SD_ID,
    format_rfc5424, frame_rfc5425, severity,
};
pub use shipper::{Shipper, ShipperOptions, ShipperStatus, Sink, Wake};
pub use syslog::SyslogConfig;
