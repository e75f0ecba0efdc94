//! The wire format: one audit entry as an RFC 5424 syslog message, framed for TLS transport by
//! RFC 5425 octet counting.
//!
//! ```text
//! <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID AuditEvent [carevault@32473 seq="N"] BOM{...json...}
//! ```
//!
//! - PRI is facility 13 (log audit) × 8 + a severity taken from the AuditEvent outcome: 0 → info
//!   (6), 4 → notice (5), 8 → warning (4), 12 → err (3). Any other outcome is not a valid
//!   AuditEvent code and is sent as err, so that a SIEM looks at it.
//! - TIMESTAMP is `recorded_ms` in UTC with milliseconds; outside the years 0000–9999 that RFC 5424
//!   can express it is the NILVALUE `-`.
//! - HOSTNAME, APP-NAME and PROCID must be printable US-ASCII (33–126) of at most 255, 48 and 128
//!   octets. The shipper refuses invalid names when it starts; this formatter, which cannot fail,
//!   replaces each invalid character with `_`, cuts the field to its limit and writes an empty
//!   field as `-`.
//! - The structured data carries the entry's sequence number so that a SIEM can drop the
//!   duplicates that at-least-once delivery may produce; SD-PARAM values are escaped (`"`, `\`,
//!   `]`) as RFC 5424 section 6.3.3 requires.
//! - MSG is the UTF-8 byte order mark followed by the AuditEvent JSON. Raw line breaks in JSON can
//!   only be whitespace between tokens (inside strings they must be escaped), so they are turned
//!   into spaces: the JSON stays the same and each message stays on one line in a collector's file.

use std::borrow::Cow;
use std::fmt::Write as _;

use time::OffsetDateTime;

use crate::FeedEntry;

/// The syslog facility of every message: 13, "log audit".
pub const FACILITY_LOG_AUDIT: u8 = 13;
/// The MSGID of a message carrying an audit entry.
pub const MSGID: &str = "AuditEvent";
/// The MSGID of a message carrying a signed checkpoint of the audit log (a C2SP signed note of
/// its size and Merkle root), so a SIEM keeps a copy of every checkpoint off the machine.
pub const CHECKPOINT_MSGID: &str = "Checkpoint";
/// The SD-ID of the structured data element carrying the sequence number.
///
/// 32473 is the private enterprise number RFC 5612 reserves for documentation; an organisation
/// that registers its own can change it here.
pub const SD_ID: &str = "carevault@32473";
/// Longest HOSTNAME RFC 5424 allows, in octets.
pub const MAX_HOSTNAME: usize = 255;
/// Longest APP-NAME RFC 5424 allows, in octets.
pub const MAX_APP_NAME: usize = 48;
/// Longest PROCID RFC 5424 allows, in octets.
pub const MAX_PROCID: usize = 128;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The syslog severity for an AuditEvent outcome code.
pub fn severity(outcome: u8) -> u8 {
    match outcome {
        0 => 6,
        4 => 5,
        8 => 4,
        _ => 3,
    }
}

/// Formats one audit entry as an RFC 5424 message (without framing); see the module documentation
/// for each field.
pub fn format_rfc5424(entry: &FeedEntry, hostname: &str, app_name: &str, procid: u32) -> Vec<u8> {
    let mut header = String::with_capacity(128);
    // Writing to a String cannot fail; the results are ignored for that reason.
    let _ = write!(
        header,
        "<{}>1 {} {} {} {} {} [{} seq=\"{}\"] ",
        u16::from(FACILITY_LOG_AUDIT) * 8 + u16::from(severity(entry.outcome)),
        timestamp(entry.recorded_ms),
        header_field(hostname, MAX_HOSTNAME),
        header_field(app_name, MAX_APP_NAME),
        procid,
        header_field(entry.msgid, 32),
        SD_ID,
        escape_sd_value(&entry.seq.to_string()),
    );
    let mut message = Vec::with_capacity(header.len() + BOM.len() + entry.json.len());
    message.extend_from_slice(header.as_bytes());
    message.extend_from_slice(BOM);
    crate::feed::push_one_line(&mut message, &entry.json);
    message
}

/// Frames one syslog message for a TLS stream as RFC 5425 section 4.3 requires: its length in
/// octets, a space, the message.
pub fn frame_rfc5425(message: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(message.len() + 8);
    append_frame(&mut framed, message);
    framed
}

/// Appends `message`, framed by octet counting, to `out`.
pub(crate) fn append_frame(out: &mut Vec<u8>, message: &[u8]) {
    out.extend_from_slice(message.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(message);
}

/// Checks that `value` can be used as a header field of at most `max` octets as it is.
pub(crate) fn check_header_field(name: &str, value: &str, max: usize) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("the syslog {name} is empty"));
    }
    if value.len() > max {
        return Err(format!(
            "the syslog {name} is {} octets long; RFC 5424 allows at most {max}",
            value.len()
        ));
    }
    if let Some(bad) = value.chars().find(|c| !is_print_us_ascii(*c)) {
        return Err(format!(
            "the syslog {name} contains {bad:?}; RFC 5424 allows only printable US-ASCII without spaces"
        ));
    }
    Ok(())
}

fn is_print_us_ascii(c: char) -> bool {
    ('!'..='~').contains(&c)
}

/// A header field as RFC 5424 allows it: printable US-ASCII, at most `max` octets, `-` when empty.
fn header_field(value: &str, max: usize) -> Cow<'_, str> {
    if !value.is_empty() && value.len() <= max && value.chars().all(is_print_us_ascii) {
        return Cow::Borrowed(value);
    }
    let cleaned: String = value
        .chars()
        .map(|c| if is_print_us_ascii(c) { c } else { '_' })
        .take(max)
        .collect();
    if cleaned.is_empty() {
        Cow::Borrowed("-")
    } else {
        Cow::Owned(cleaned)
    }
}

/// Escapes an SD-PARAM value (RFC 5424 section 6.3.3): `"`, `\` and `]` get a backslash.
pub(crate) fn escape_sd_value(value: &str) -> Cow<'_, str> {
    if !value.contains(['"', '\\', ']']) {
        return Cow::Borrowed(value);
    }
    let mut escaped = String::with_capacity(value.len() + 4);
    for c in value.chars() {
        if matches!(c, '"' | '\\' | ']') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    Cow::Owned(escaped)
}

/// `recorded_ms` as an RFC 5424 TIMESTAMP in UTC with milliseconds, or `-` outside 0000–9999.
fn timestamp(recorded_ms: i64) -> String {
    let nanos = i128::from(recorded_ms) * 1_000_000;
    match OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) if (0..=9999).contains(&t.year()) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        ),
        _ => "-".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, recorded_ms: i64, outcome: u8, json: &[u8]) -> FeedEntry {
        FeedEntry {
            seq,
            msgid: crate::MSGID,
            recorded_ms,
            outcome,
            json: json.to_vec(),
        }
    }

    // Expected bytes below are written by hand from RFC 5424 (section 6 and the examples of
    // section 6.5) and RFC 5425 (section 4.3), not produced by this code. 1065910455003 ms is
    // 2003-10-11T22:14:15.003Z, the time of the RFC's examples.

    #[test]
    fn a_successful_read_is_log_audit_info_with_seq_and_bom() {
        let got = format_rfc5424(
            &entry(
                42,
                1_065_910_455_003,
                0,
                br#"{"resourceType":"AuditEvent","id":"a-000000000042"}"#,
            ),
            "mymachine.example.com",
            "carevault",
            8710,
        );
        let want = b"<110>1 2003-10-11T22:14:15.003Z mymachine.example.com carevault 8710 AuditEvent [carevault@32473 seq=\"42\"] \xEF\xBB\xBF{\"resourceType\":\"AuditEvent\",\"id\":\"a-000000000042\"}";
        assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
        assert_eq!(got, want);
    }

    #[test]
    fn outcome_sets_severity_under_facility_13() {
        // PRI = 13 * 8 + severity: info 6, notice 5, warning 4, err 3.
        for (outcome, pri) in [
            (0, "<110>"),
            (4, "<109>"),
            (8, "<108>"),
            (12, "<107>"),
            (3, "<107>"),
            (255, "<107>"),
        ] {
            let got = format_rfc5424(&entry(1, 0, outcome, b"{}"), "h", "a", 1);
            assert!(
                got.starts_with(pri.as_bytes()),
                "outcome {outcome}: {}",
                String::from_utf8_lossy(&got)
            );
        }
    }

    #[test]
    fn timestamps_are_utc_with_milliseconds_and_nil_outside_four_digit_years() {
        let stamp = |ms: i64| {
            let message = format_rfc5424(&entry(1, ms, 0, b"{}"), "h", "a", 1);
            let text = String::from_utf8_lossy(&message).into_owned();
            text.split(' ').nth(1).unwrap().to_owned()
        };
        assert_eq!(stamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(stamp(1_795_857_243_117), "2026-11-28T09:14:03.117Z");
        assert_eq!(stamp(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(stamp(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
        assert_eq!(stamp(253_402_300_800_000), "-");
        assert_eq!(stamp(-62_167_219_200_000), "0000-01-01T00:00:00.000Z");
        assert_eq!(stamp(-62_167_219_200_001), "-");
        assert_eq!(stamp(i64::MAX), "-");
        assert_eq!(stamp(i64::MIN), "-");
    }

    #[test]
    fn invalid_header_fields_are_replaced_and_cut_to_their_limits() {
        let long_host = "h".repeat(300);
        let long_app = "a".repeat(60);
        let got = format_rfc5424(&entry(9, 0, 0, b"{}"), &long_host, &long_app, 77);
        let text = String::from_utf8(got).unwrap();
        let fields: Vec<&str> = text.split(' ').collect();
        assert_eq!(fields[2], "h".repeat(255));
        assert_eq!(fields[3], "a".repeat(48));
        assert_eq!(fields[4], "77");

        let got = format_rfc5424(&entry(9, 0, 0, b"{}"), "cv node\u{e9}1", "", 1);
        let text = String::from_utf8(got).unwrap();
        assert!(
            text.starts_with("<110>1 1970-01-01T00:00:00.000Z cv_node_1 - 1 AuditEvent [carevault@32473 seq=\"9\"] "),
            "{text}"
        );
    }

    #[test]
    fn header_fields_are_checked_against_rfc_5424() {
        assert!(check_header_field("hostname", "cv-node-1.example.org", 255).is_ok());
        assert!(check_header_field("hostname", "", 255).is_err());
        assert!(check_header_field("hostname", "cv node", 255).is_err());
        assert!(check_header_field("hostname", "n\u{f6}de", 255).is_err());
        assert!(check_header_field("app-name", &"a".repeat(48), 48).is_ok());
        assert!(check_header_field("app-name", &"a".repeat(49), 48).is_err());
    }

    #[test]
    fn sd_param_values_escape_quote_backslash_and_bracket() {
        // RFC 5424 section 6.3.3: '"', '\' and ']' MUST be escaped with a backslash; any other
        // backslash-led pair is left as it is, and other characters are not escaped.
        assert_eq!(escape_sd_value("1011"), "1011");
        assert_eq!(escape_sd_value(r#"a"b\c]d"#), r#"a\"b\\c\]d"#);
        assert_eq!(escape_sd_value("[x=y]"), r"[x=y\]");
        assert_eq!(escape_sd_value("\u{e9}'"), "\u{e9}'");
    }

    #[test]
    fn line_breaks_between_json_tokens_become_spaces() {
        let got = format_rfc5424(&entry(1, 0, 0, b"{\r\n \"a\": \"x\\ny\"\n}\n"), "h", "a", 1);
        assert!(
            got.ends_with(b"\xEF\xBB\xBF{   \"a\": \"x\\ny\" } "),
            "{}",
            String::from_utf8_lossy(&got)
        );
    }

    #[test]
    fn octet_counting_prefixes_the_length_in_octets() {
        // RFC 5424 section 6.5, example 1: 107 octets.
        let message = b"<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - 'su root' failed for lonvick on /dev/pts/8";
        let mut want = b"107 ".to_vec();
        want.extend_from_slice(message);
        assert_eq!(frame_rfc5425(message), want);
        // Non-ASCII counts in octets, not characters: "é" is two octets.
        assert_eq!(frame_rfc5425("\u{e9}".as_bytes()), b"2 \xC3\xA9");
        assert_eq!(frame_rfc5425(b""), b"0 ");
    }
}
