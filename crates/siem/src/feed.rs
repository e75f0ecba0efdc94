//! The interface through which the shipper reads the audit trail: numbered entries after a cursor.

use std::error::Error;
use std::fmt;

/// One audit entry as the shipper sees it.
///
/// `Debug` shows the sequence number, time and outcome but not the JSON, which carries PHI.
#[derive(Clone, PartialEq, Eq)]
pub struct FeedEntry {
    /// The entry's position in the audit trail; the first entry is 1 and positions only grow.
    pub seq: u64,
    /// The syslog MSGID it travels under: [`crate::MSGID`] (`AuditEvent`) for audit entries,
    /// [`crate::CHECKPOINT_MSGID`] (`Checkpoint`) for signed checkpoints of the log.
    pub msgid: &'static str,
    /// When the entry was recorded, in milliseconds since the Unix epoch (UTC).
    pub recorded_ms: i64,
    /// The AuditEvent outcome code: 0 success, 4 minor failure, 8 serious, 12 major.
    pub outcome: u8,
    /// The AuditEvent as JSON on one line, with its `id`.
    pub json: Vec<u8>,
}

impl fmt::Debug for FeedEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FeedEntry")
            .field("seq", &self.seq)
            .field("msgid", &self.msgid)
            .field("recorded_ms", &self.recorded_ms)
            .field("outcome", &self.outcome)
            .field(
                "json",
                &format_args!("<{} bytes redacted>", self.json.len()),
            )
            .finish()
    }
}

/// Appends `json` with every CR and LF replaced by a space. Raw line breaks in JSON can only be
/// whitespace between tokens (inside strings they must be escaped), so the JSON stays the same and
/// fits on one line.
pub(crate) fn push_one_line(out: &mut Vec<u8>, json: &[u8]) {
    out.extend(json.iter().map(|&byte| match byte {
        b'\n' | b'\r' => b' ',
        other => other,
    }));
}

/// Where the shipper reads audit entries from; the server implements it over its store.
///
/// The shipper calls it from its own thread only, never from a request.
pub trait AuditFeed: Send + Sync + 'static {
    /// Returns at most `limit` entries with `seq` greater than `seq`, in strictly ascending order
    /// of `seq` (empty when there is nothing newer). Sequence numbers start at 1.
    fn after(&self, seq: u64, limit: usize) -> Result<Vec<FeedEntry>, FeedError>;
}

/// A failure to read the audit feed.
///
/// Its message is logged and shown in [`crate::ShipperStatus::last_error`], so it must not carry
/// PHI: say what failed and where ("the audit store at /data/audit is locked"), not what an entry
/// contains.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("reading the audit feed failed: {message}")]
pub struct FeedError {
    message: String,
}

impl FeedError {
    /// A feed error with a one-sentence description.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// A feed error with a one-sentence description followed by the error that caused it.
    pub fn with_source(message: impl Into<String>, source: impl Error) -> Self {
        Self {
            message: format!("{}: {source}", message.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_an_entry_redacts_the_json() {
        let entry = FeedEntry {
            seq: 7,
            msgid: crate::MSGID,
            recorded_ms: 0,
            outcome: 4,
            json: br#"{"entity":[{"what":{"reference":"Patient/pt-88"}}]}"#.to_vec(),
        };
        let shown = format!("{entry:?}");
        assert!(shown.contains("seq: 7"), "{shown}");
        assert!(!shown.contains("Patient"), "{shown}");
        assert!(shown.contains("51 bytes redacted"), "{shown}");
    }

    #[test]
    fn feed_error_names_its_cause() {
        let io = std::io::Error::other("disk I/O error");
        let error = FeedError::with_source("the audit store at /data is unreadable", io);
        assert_eq!(
            error.to_string(),
            "reading the audit feed failed: the audit store at /data is unreadable: disk I/O error"
        );
    }
}
