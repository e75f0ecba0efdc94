//! Turns a resource's extracted search values into index rows: blind tags for everything derived
//! from PHI text (strings, tokens, uris), plaintext references, numeric ranges.

use carevault_crypto::{BlindTag, Keyring};
use carevault_fhir::{IndexEntry, IndexValue};
use serde_json::Value;

use crate::backend::{IndexRow, ParamId, ParamRef};
use crate::fhirdefs;
use crate::instant;

/// How many leading characters of a normalised string get a prefix tag; longer prefixes in a
/// search are matched on this many and then verified against the decrypted resource.
pub const MAX_PREFIX: usize = 24;
/// At most this many distinct trigrams are indexed per string value.
const MAX_TRIGRAMS: usize = 64;

/// Kinds of blind tag; the kind is part of the blinding domain so tags of different kinds never
/// collide.
#[derive(Debug, Clone, Copy)]
pub enum TagKind {
    /// A demographic date within this year (`1967`), at any precision.
    DateYear,
    /// A demographic date given to the year only.
    DateYearOnly,
    /// A demographic date within this month (`1967-04`), to month or day precision.
    DateMonth,
    /// A demographic date given to the month only.
    DateMonthOnly,
    /// A demographic date on this day (`1967-04-12`).
    DateDay,
    /// Whole normalised string.
    StrEq,
    /// Normalised string prefix.
    StrPrefix,
    /// Normalised string trigram (`:contains`).
    StrTrigram,
    /// String as written (`:exact`).
    StrExact,
    /// `system|code`.
    TokSystemCode,
    /// `code` of any system.
    TokCode,
    /// `|code`: code with no system.
    TokNoSystem,
    /// `system|`.
    TokSystem,
    /// `:text`: each word of the normalised text.
    TokText,
    /// uri.
    Uri,
    /// Quantity unit `system|code`.
    QtySystemCode,
    /// Quantity unit code or unit text.
    QtyCode,
    /// A quantity with any unit.
    QtyAny,
}

impl TagKind {
    fn label(self) -> &'static str {
        match self {
            TagKind::DateYear => "dy",
            TagKind::DateYearOnly => "dY",
            TagKind::DateMonth => "dm",
            TagKind::DateMonthOnly => "dM",
            TagKind::DateDay => "dd",
            TagKind::StrEq => "s=",
            TagKind::StrPrefix => "s^",
            TagKind::StrTrigram => "s3",
            TagKind::StrExact => "sx",
            TagKind::TokSystemCode => "t|",
            TagKind::TokCode => "tc",
            TagKind::TokNoSystem => "t0",
            TagKind::TokSystem => "ts",
            TagKind::TokText => "tt",
            TagKind::Uri => "u",
            TagKind::QtySystemCode => "q|",
            TagKind::QtyCode => "qc",
            TagKind::QtyAny => "q*",
        }
    }
}

/// The blind tag of `value` for a parameter and kind.
pub fn tag(keyring: &Keyring, param: &ParamRef, kind: TagKind, value: &str) -> BlindTag {
    Blinder::new(keyring, &param.rtype, &param.code).tag(kind, value)
}

/// Blinds values of one parameter, reusing its domain text.
struct Blinder<'k> {
    keyring: &'k Keyring,
    domain: String,
    base: usize,
}

impl<'k> Blinder<'k> {
    fn new(keyring: &'k Keyring, rtype: &str, code: &str) -> Self {
        let mut domain = String::with_capacity(rtype.len() + code.len() + 4);
        domain.push_str(rtype);
        domain.push('.');
        domain.push_str(code);
        domain.push('#');
        let base = domain.len();
        Blinder {
            keyring,
            domain,
            base,
        }
    }

    fn tag(&mut self, kind: TagKind, value: &str) -> BlindTag {
        self.domain.truncate(self.base);
        self.domain.push_str(kind.label());
        self.keyring.blind(&self.domain, value.as_bytes())
    }
}

/// Date parameters whose values are demographic PHI (birth and death dates). They are indexed as
/// blind tags at year, month and day granularity, never as comparable numbers; range searches
/// enumerate the calendar units a range covers (see [`date_units_matching`]).
pub fn is_demographic_date(rtype: &str, code: &str) -> bool {
    matches!(
        (rtype, code),
        ("Patient", "birthdate")
            | ("Patient", "death-date")
            | ("RelatedPerson", "birthdate")
            | ("Person", "birthdate")
    )
}

const DAY_MS: i64 = 86_400_000;

/// The calendar unit a stored `[start, end)` range is (by its length): a year, a month, or the
/// UTC day of its start (date-times are indexed at day precision).
fn calendar_unit(start: i64, end: i64) -> (i64, u32, u32, u8) {
    let (y, m, d) = instant::civil_from_days(start.div_euclid(DAY_MS));
    let span = end - start;
    if span >= 365 * DAY_MS {
        (y, 1, 1, 0)
    } else if span >= 28 * DAY_MS {
        (y, m, 1, 1)
    } else {
        (y, m, d, 2)
    }
}

/// The blind-tag values of a demographic date.
fn demographic_date_tags(start: i64, end: i64) -> Vec<(TagKind, String)> {
    let (y, m, d, precision) = calendar_unit(start, end);
    let year = format!("{y:04}");
    let month = format!("{y:04}-{m:02}");
    match precision {
        0 => vec![
            (TagKind::DateYear, year.clone()),
            (TagKind::DateYearOnly, year),
        ],
        1 => vec![
            (TagKind::DateYear, year),
            (TagKind::DateMonth, month.clone()),
            (TagKind::DateMonthOnly, month),
        ],
        _ => vec![
            (TagKind::DateYear, year),
            (TagKind::DateMonth, month.clone()),
            (TagKind::DateDay, format!("{month}-{d:02}")),
        ],
    }
}

/// First and last year a demographic-date range search enumerates; values outside are found
/// by equality only.
pub const DEMOGRAPHIC_YEARS: (i64, i64) = (1850, 2150);

/// The smallest set of tag values that selects exactly the stored demographic dates (years,
/// months or days) whose `[lo, hi)` range satisfies `pred`: a whole year when every value in it
/// does, else the year-only value and whole months, else single days.
pub fn date_units_matching(pred: &dyn Fn(i64, i64) -> bool) -> Vec<(TagKind, String)> {
    let ms = |y: i64, m: u32, d: u32| instant::days_from_civil(y, m, d) * DAY_MS;
    let next_month = |y: i64, m: u32| if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    let mut out = Vec::new();
    for y in DEMOGRAPHIC_YEARS.0..=DEMOGRAPHIC_YEARS.1 {
        let year_ok = pred(ms(y, 1, 1), ms(y + 1, 1, 1));
        let mut months = Vec::with_capacity(12);
        let mut all = year_ok;
        for m in 1..=12u32 {
            let (ny, nm) = next_month(y, m);
            let month_ok = pred(ms(y, m, 1), ms(ny, nm, 1));
            let days: Vec<bool> = (1..=instant::days_in_month(y, m))
                .map(|d| pred(ms(y, m, d), ms(y, m, d) + DAY_MS))
                .collect();
            all &= month_ok && days.iter().all(|x| *x);
            months.push((m, month_ok, days));
        }
        if all {
            out.push((TagKind::DateYear, format!("{y:04}")));
            continue;
        }
        if year_ok {
            out.push((TagKind::DateYearOnly, format!("{y:04}")));
        }
        for (m, month_ok, days) in months {
            if month_ok && days.iter().all(|x| *x) {
                out.push((TagKind::DateMonth, format!("{y:04}-{m:02}")));
                continue;
            }
            if month_ok {
                out.push((TagKind::DateMonthOnly, format!("{y:04}-{m:02}")));
            }
            for (i, ok) in days.iter().enumerate() {
                if *ok {
                    out.push((TagKind::DateDay, format!("{y:04}-{m:02}-{:02}", i + 1)));
                }
            }
        }
    }
    out
}

/// Trigrams of a normalised string, deduplicated.
pub fn trigrams(s: &str) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    let mut out: Vec<String> = chars.windows(3).map(|w| w.iter().collect()).collect();
    out.sort();
    out.dedup();
    out
}

/// Prefixes (by character) of a normalised string, up to [`MAX_PREFIX`] characters.
fn prefixes(s: &str) -> impl Iterator<Item = &str> {
    s.char_indices()
        .skip(1)
        .map(|(i, _)| i)
        .chain(std::iter::once(s.len()))
        .take(MAX_PREFIX)
        .map(move |end| &s[..end])
}

/// The first [`MAX_PREFIX`] characters of a string.
pub fn clip_prefix(s: &str) -> &str {
    match s.char_indices().nth(MAX_PREFIX) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Extracts and blinds every index row of a resource (its current version).
pub fn index_rows(keyring: &Keyring, rtype: &str, resource: &Value) -> Vec<IndexRow> {
    let entries = fhirdefs::extract_index(rtype, resource);
    let mut rows = Vec::with_capacity(entries.len() * 4);
    let mut has_meta = [false; 3];
    for e in &entries {
        if let Some(i) = ["_tag", "_profile", "_security"]
            .iter()
            .position(|c| *c == e.param)
        {
            has_meta[i] = true;
        }
    }
    for e in entries {
        entry_rows(keyring, rtype, e, &mut rows);
    }
    meta_rows(keyring, rtype, resource, has_meta, &mut rows);
    // A tag's domain names its parameter and kind, so equal tags are equal rows: drop repeats
    // (a display repeated as CodeableConcept.text, the same code in two codings...).
    let mut seen = std::collections::HashSet::with_capacity(rows.len());
    rows.retain(|r| match r {
        IndexRow::Tag { tag, .. } => seen.insert(*tag),
        _ => true,
    });
    rows
}

/// Indexes `meta.tag`, `meta.profile`, `meta.security` when the definitions do not.
fn meta_rows(
    keyring: &Keyring,
    rtype: &str,
    resource: &Value,
    done: [bool; 3],
    rows: &mut Vec<IndexRow>,
) {
    let Some(meta) = resource.get("meta") else {
        return;
    };
    for (i, (code, field)) in [
        ("_tag", "tag"),
        ("_profile", "profile"),
        ("_security", "security"),
    ]
    .iter()
    .enumerate()
    {
        if done[i] {
            continue;
        }
        let Some(Value::Array(items)) = meta.get(*field) else {
            continue;
        };
        for item in items {
            let value = if *field == "profile" {
                match item.as_str() {
                    Some(s) => IndexValue::Uri(s.to_owned()),
                    None => continue,
                }
            } else {
                IndexValue::Token {
                    system: item
                        .get("system")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    code: item.get("code").and_then(Value::as_str).map(str::to_owned),
                    text: item
                        .get("display")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                }
            };
            entry_rows(
                keyring,
                rtype,
                IndexEntry {
                    param: (*code).to_owned(),
                    value,
                },
                rows,
            );
        }
    }
}

fn entry_rows(keyring: &Keyring, rtype: &str, e: IndexEntry, rows: &mut Vec<IndexRow>) {
    let param = ParamId::of(rtype, &e.param);
    let mut b = Blinder::new(keyring, rtype, &e.param);
    let mut t = |kind, v: &str| IndexRow::Tag {
        param,
        tag: b.tag(kind, v),
    };
    match e.value {
        IndexValue::String { normalized, exact } => {
            rows.push(t(TagKind::StrEq, &normalized));
            rows.push(t(TagKind::StrExact, &exact));
            for p in prefixes(&normalized) {
                rows.push(t(TagKind::StrPrefix, p));
            }
            for tri in trigrams(&normalized).iter().take(MAX_TRIGRAMS) {
                rows.push(t(TagKind::StrTrigram, tri));
            }
        }
        IndexValue::Token { system, code, text } => {
            if let Some(code) = &code {
                rows.push(t(TagKind::TokCode, code));
                match &system {
                    Some(s) => rows.push(t(TagKind::TokSystemCode, &format!("{s}|{code}"))),
                    None => rows.push(t(TagKind::TokNoSystem, code)),
                }
            }
            if let Some(s) = &system {
                rows.push(t(TagKind::TokSystem, s));
            }
            if let Some(text) = &text {
                let n = fhirdefs::normalize_string(text);
                // One tag per word: `:text` matches texts holding every word searched for.
                for w in n.split(' ').filter(|w| !w.is_empty()) {
                    rows.push(t(TagKind::TokText, w));
                }
            }
        }
        IndexValue::Reference { rtype: tt, id, url } => rows.push(IndexRow::Ref {
            param,
            ttype: tt.unwrap_or_default(),
            tid: id.unwrap_or_default(),
            url: url.unwrap_or_default(),
        }),
        IndexValue::Date { start, end } if is_demographic_date(rtype, &e.param) => {
            for (kind, v) in demographic_date_tags(start, end) {
                rows.push(t(kind, &v));
            }
        }
        IndexValue::Date { start, end } => rows.push(IndexRow::Date {
            param,
            lo: start,
            hi: end,
        }),
        // Numbers and quantities are stored as points (`lo = hi = value`); the precision that
        // matters for `eq` is the search value's, applied at query time.
        IndexValue::Number { value, .. } => rows.push(IndexRow::Number {
            param,
            lo: value,
            hi: value,
        }),
        IndexValue::Quantity {
            value,
            system,
            code,
            unit,
            ..
        } => {
            let mut q = |kind, v: &str| IndexRow::Quantity {
                param,
                tag: b.tag(kind, v),
                lo: value,
                hi: value,
            };
            rows.push(q(TagKind::QtyAny, ""));
            if let Some(code) = &code {
                if let Some(s) = &system {
                    rows.push(q(TagKind::QtySystemCode, &format!("{s}|{code}")));
                }
                rows.push(q(TagKind::QtyCode, code));
            }
            if let Some(u) = unit.filter(|u| Some(u) != code.as_ref()) {
                rows.push(q(TagKind::QtyCode, &u));
            }
        }
        IndexValue::Uri(u) => rows.push(t(TagKind::Uri, &u)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demographic_dates_become_year_month_day_tags_only() {
        let (lo, hi) = instant::parse_range("1967-04-12").unwrap();
        let tags: Vec<String> = demographic_date_tags(lo, hi)
            .into_iter()
            .map(|(k, v)| format!("{}{v}", k.label()))
            .collect();
        assert_eq!(tags, ["dy1967", "dm1967-04", "dd1967-04-12"]);
        let (lo, hi) = instant::parse_range("1967").unwrap();
        assert_eq!(demographic_date_tags(lo, hi).len(), 2);
        // ge1967-04-12: the rest of April day by day, May..December whole, later years whole,
        // and the month/year-only values that reach into the range.
        let (qlo, _) = instant::parse_range("1967-04-12").unwrap();
        let units = date_units_matching(&|_lo, hi| hi > qlo);
        let labels: Vec<String> = units
            .iter()
            .map(|(k, v)| format!("{}{v}", k.label()))
            .collect();
        assert!(labels.contains(&"dY1967".to_string()));
        assert!(labels.contains(&"dM1967-04".to_string()));
        assert!(labels.contains(&"dd1967-04-12".to_string()));
        assert!(!labels.contains(&"dd1967-04-11".to_string()));
        assert!(labels.contains(&"dm1967-05".to_string()));
        assert!(labels.contains(&"dy1968".to_string()));
        assert!(
            !labels
                .iter()
                .any(|l| l.starts_with("dy1966") || l.starts_with("dd1966"))
        );
    }

    #[test]
    fn prefixes_are_by_character_and_capped() {
        let p: Vec<&str> = prefixes("émile").collect();
        assert_eq!(p, vec!["é", "ém", "émi", "émil", "émile"]);
        let long = "a".repeat(40);
        assert_eq!(prefixes(&long).count(), MAX_PREFIX);
        assert_eq!(clip_prefix(&long).len(), MAX_PREFIX);
        assert_eq!(trigrams("abcab"), vec!["abc", "bca", "cab"]);
    }
}
