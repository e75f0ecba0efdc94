//! Training records: which course a person completed and until when it counts.

use serde::{Deserialize, Serialize};
use time::Date;

/// The record kind training records are stored under (one record per user, keyed by name).
pub const TRAINING_RECORD_KIND: &str = "training";

/// Serde of `YYYY-MM-DD` dates.
mod iso_date {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::Date;

    pub fn serialize<S: Serializer>(d: &Date, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_date(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Date, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_date(&text)
            .ok_or_else(|| serde::de::Error::custom("expected a date as YYYY-MM-DD"))
    }
}

/// One completed course.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainingRecord {
    /// The course name, as the required-courses setting names it.
    pub course: String,
    /// The day it was completed.
    #[serde(with = "iso_date")]
    pub completed: Date,
    /// The last day it counts.
    #[serde(with = "iso_date")]
    pub expires: Date,
}

impl TrainingRecord {
    /// True when the course still counts on `today` (the expiry day included).
    pub fn is_current(&self, today: Date) -> bool {
        today >= self.completed && today <= self.expires
    }
}

/// Parses `YYYY-MM-DD`.
pub fn parse_date(text: &str) -> Option<Date> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    Date::parse(text.trim(), &format).ok()
}

/// Formats `YYYY-MM-DD`.
pub fn format_date(date: Date) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    date.format(&format).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_currency() {
        let r = TrainingRecord {
            course: "hipaa-2026".into(),
            completed: parse_date("2026-01-10").unwrap(),
            expires: parse_date("2027-01-10").unwrap(),
        };
        assert!(r.is_current(parse_date("2026-06-01").unwrap()));
        assert!(r.is_current(parse_date("2027-01-10").unwrap()));
        assert!(!r.is_current(parse_date("2027-01-11").unwrap()));
        assert!(!r.is_current(parse_date("2026-01-09").unwrap()));
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"course":"hipaa-2026","completed":"2026-01-10","expires":"2027-01-10"}"#
        );
        assert_eq!(serde_json::from_str::<TrainingRecord>(&json).unwrap(), r);
        assert!(parse_date("2026-13-01").is_none());
        assert!(parse_date("10/01/2026").is_none());
        assert_eq!(format_date(r.expires), "2027-01-10");
    }
}
