//! Extraction of search-index values from a resource, driven by the SearchParameter expressions.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::Value;

use crate::definitions::definitions;
use crate::fhirpath::{self, Expr, Item};
use crate::{SearchParam, SearchParamType};

/// One value a resource holds for one search parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexEntry {
    /// The search parameter's code.
    pub param: String,
    /// The value, normalised for comparison.
    pub value: IndexValue,
}

/// A normalised index value.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum IndexValue {
    /// `normalized`: lower-cased, accents folded, whitespace collapsed (see
    /// [`normalize_string`]; what the default and `:contains` searches compare); `exact`: the
    /// text as written.
    String {
        normalized: String,
        exact: String,
    },
    /// A coded value; `text` is the display/text for `:text` searches.
    Token {
        system: Option<String>,
        code: Option<String>,
        text: Option<String>,
    },
    /// A resolved literal reference: `rtype`/`id` for relative or same-server references,
    /// `url` for absolute ones (kept as written).
    Reference {
        rtype: Option<String>,
        id: Option<String>,
        url: Option<String>,
    },
    /// The instant range a date/dateTime/instant/Period covers, in milliseconds since the Unix
    /// epoch, `start` inclusive and `end` exclusive (a partial date covers its whole range).
    Date {
        start: i64,
        end: i64,
    },
    /// A number with the range implied by its precision (`1.5` covers [1.45, 1.55)).
    Number {
        value: f64,
        low: f64,
        high: f64,
    },
    Quantity {
        value: f64,
        low: f64,
        high: f64,
        system: Option<String>,
        code: Option<String>,
        unit: Option<String>,
    },
    Uri(String),
}

/// The parsed expressions of every indexable search parameter, by resource type.
type Plans = HashMap<String, Vec<(&'static SearchParam, Expr)>>;

static PLANS: OnceLock<Plans> = OnceLock::new();

fn plans() -> &'static Plans {
    PLANS.get_or_init(|| {
        let defs = definitions();
        let mut plans = HashMap::new();
        for rtype in defs.resource_types() {
            let mut list = Vec::new();
            for param in defs.search_params(rtype) {
                if matches!(
                    param.kind,
                    SearchParamType::Special | SearchParamType::Composite
                ) || param.code == "_id"
                    || param.code == "_lastUpdated"
                {
                    continue;
                }
                // An expression that does not parse is reported by the unit test that parses them all.
                if let Some(expr) = param
                    .expression
                    .as_deref()
                    .and_then(|e| fhirpath::parse(e).ok())
                {
                    list.push((param, expr));
                }
            }
            plans.insert(rtype.to_string(), list);
        }
        plans
    })
}

/// Computes every search-index value of a resource (all parameters of its type except `_id`
/// and `_lastUpdated`, which the store keeps itself, and composite/special ones).
pub fn extract_index(rtype: &str, resource: &Value) -> Vec<IndexEntry> {
    let Some(list) = plans().get(rtype) else {
        return Vec::new();
    };
    let root = [Item::Node(resource, Some(rtype))];
    let mut out = Vec::new();
    for (param, expr) in list {
        for item in fhirpath::evaluate(expr, &root, resource) {
            index_item(param, &item, &mut out);
        }
    }
    out
}

/// The ids of the Patients in whose compartment this resource is (a Patient is in its own).
pub fn patient_compartment_refs(rtype: &str, resource: &Value) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    if rtype == "Patient"
        && let Some(id) = resource.get("id").and_then(Value::as_str)
    {
        ids.push(id.to_string());
    }
    let compartment = definitions().compartment_params(rtype);
    let Some(list) = plans().get(rtype) else {
        return ids;
    };
    let root = [Item::Node(resource, Some(rtype))];
    for (param, expr) in list.iter().filter(|(p, _)| compartment.contains(&p.code)) {
        for item in fhirpath::evaluate(expr, &root, resource) {
            let mut entries = Vec::new();
            index_item(param, &item, &mut entries);
            for entry in entries {
                if let IndexValue::Reference {
                    rtype: Some(t),
                    id: Some(id),
                    ..
                } = entry.value
                    && t == "Patient"
                    && !ids.contains(&id)
                {
                    ids.push(id);
                }
            }
        }
    }
    ids
}

fn push(out: &mut Vec<IndexEntry>, param: &SearchParam, value: IndexValue) {
    out.push(IndexEntry {
        param: param.code.clone(),
        value,
    });
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

fn index_item(param: &SearchParam, item: &Item<'_>, out: &mut Vec<IndexEntry>) {
    let value = match item {
        Item::Bool(b) => {
            if param.kind == SearchParamType::Token {
                push(
                    out,
                    param,
                    IndexValue::Token {
                        system: None,
                        code: Some(b.to_string()),
                        text: None,
                    },
                );
            }
            return;
        }
        Item::Node(v, _) => *v,
    };
    match param.kind {
        SearchParamType::String => index_string(param, value, out),
        SearchParamType::Token => index_token(param, value, item.type_name(), out),
        SearchParamType::Reference => index_reference(param, value, out),
        SearchParamType::Date => index_date(param, value, out),
        SearchParamType::Number => {
            if let Some((v, low, high)) = value
                .as_number()
                .and_then(|n| decimal_range(&n.to_string()))
            {
                push(
                    out,
                    param,
                    IndexValue::Number {
                        value: v,
                        low,
                        high,
                    },
                );
            }
        }
        SearchParamType::Quantity => {
            let Some(number) = value.get("value").and_then(Value::as_number) else {
                return;
            };
            let Some((v, low, high)) = decimal_range(&number.to_string()) else {
                return;
            };
            let code = text(value, "code").or_else(|| text(value, "currency"));
            let system = text(value, "system").or_else(|| {
                value
                    .get("currency")
                    .map(|_| "urn:iso:std:iso:4217".to_string())
            });
            push(
                out,
                param,
                IndexValue::Quantity {
                    value: v,
                    low,
                    high,
                    system,
                    code,
                    unit: text(value, "unit"),
                },
            );
        }
        SearchParamType::Uri => {
            if let Some(s) = value.as_str() {
                push(out, param, IndexValue::Uri(s.to_string()));
            }
        }
        SearchParamType::Composite | SearchParamType::Special => {}
    }
}

fn push_string(param: &SearchParam, s: &str, out: &mut Vec<IndexEntry>) {
    push(
        out,
        param,
        IndexValue::String {
            normalized: normalize_string(s),
            exact: s.to_string(),
        },
    );
}

fn index_string(param: &SearchParam, value: &Value, out: &mut Vec<IndexEntry>) {
    match value {
        Value::String(s) => push_string(param, s, out),
        Value::Object(map) => {
            const PARTS: &[&str] = &[
                "family",
                "given",
                "prefix",
                "suffix",
                "text",
                "line",
                "city",
                "district",
                "state",
                "postalCode",
                "country",
            ];
            for part in PARTS {
                match map.get(*part) {
                    Some(Value::String(s)) => push_string(param, s, out),
                    Some(Value::Array(items)) => items
                        .iter()
                        .filter_map(Value::as_str)
                        .for_each(|s| push_string(param, s, out)),
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

fn index_token(param: &SearchParam, value: &Value, ty: Option<&str>, out: &mut Vec<IndexEntry>) {
    match value {
        Value::String(s) => push(
            out,
            param,
            IndexValue::Token {
                system: None,
                code: Some(s.clone()),
                text: None,
            },
        ),
        Value::Bool(b) => push(
            out,
            param,
            IndexValue::Token {
                system: None,
                code: Some(b.to_string()),
                text: None,
            },
        ),
        Value::Object(map) => {
            if map.contains_key("coding") || ty == Some("CodeableConcept") {
                for coding in map
                    .get("coding")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    push(
                        out,
                        param,
                        IndexValue::Token {
                            system: text(coding, "system"),
                            code: text(coding, "code"),
                            text: text(coding, "display"),
                        },
                    );
                }
                if let Some(t) = text(value, "text") {
                    push(
                        out,
                        param,
                        IndexValue::Token {
                            system: None,
                            code: None,
                            text: Some(t),
                        },
                    );
                }
            } else if map.contains_key("code") {
                push(
                    out,
                    param,
                    IndexValue::Token {
                        system: text(value, "system"),
                        code: text(value, "code"),
                        text: text(value, "display"),
                    },
                );
            } else if map.contains_key("value") {
                let system = text(value, "system");
                let contact_point = ty == Some("ContactPoint")
                    || system.as_deref().is_some_and(|s| {
                        matches!(
                            s,
                            "phone" | "fax" | "email" | "pager" | "url" | "sms" | "other"
                        )
                    });
                if contact_point {
                    push(
                        out,
                        param,
                        IndexValue::Token {
                            system: None,
                            code: text(value, "value"),
                            text: None,
                        },
                    );
                } else {
                    let type_text = value.get("type").and_then(|t| text(t, "text"));
                    push(
                        out,
                        param,
                        IndexValue::Token {
                            system,
                            code: text(value, "value"),
                            text: type_text,
                        },
                    );
                }
            }
        }
        _ => {}
    }
}

fn index_reference(param: &SearchParam, value: &Value, out: &mut Vec<IndexEntry>) {
    let reference = match value {
        Value::String(s) => s.as_str(),
        Value::Object(_) => match value.get("reference").and_then(Value::as_str) {
            Some(r) => r,
            None => return,
        },
        _ => return,
    };
    if reference.starts_with('#') {
        return;
    }
    let without_history = match reference.find("/_history/") {
        Some(i) => &reference[..i],
        None => reference,
    };
    let rtype = fhirpath::reference_target_type(without_history)
        .filter(|t| definitions().is_resource_type(t));
    let id = rtype
        .and_then(|_| without_history.rsplit('/').next())
        .filter(|id| !id.is_empty() && !id.contains('?'));
    let absolute = reference.contains(':');
    push(
        out,
        param,
        IndexValue::Reference {
            rtype: rtype.filter(|_| id.is_some()).map(str::to_string),
            id: id.map(str::to_string),
            url: absolute.then(|| reference.to_string()),
        },
    );
}

fn index_date(param: &SearchParam, value: &Value, out: &mut Vec<IndexEntry>) {
    match value {
        Value::String(s) => {
            if let Some((start, end)) = date_range(s) {
                push(out, param, IndexValue::Date { start, end });
            }
        }
        Value::Object(map) => {
            if map.contains_key("start") || map.contains_key("end") {
                let start = map
                    .get("start")
                    .and_then(Value::as_str)
                    .and_then(date_range)
                    .map_or(i64::MIN, |r| r.0);
                let end = map
                    .get("end")
                    .and_then(Value::as_str)
                    .and_then(date_range)
                    .map_or(i64::MAX, |r| r.1);
                push(out, param, IndexValue::Date { start, end });
            } else if let Some(events) = map.get("event").and_then(Value::as_array) {
                for (start, end) in events
                    .iter()
                    .filter_map(Value::as_str)
                    .filter_map(date_range)
                {
                    push(out, param, IndexValue::Date { start, end });
                }
            }
        }
        _ => {}
    }
}

fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

const DAY_MS: i64 = 86_400_000;

/// The range of instants a FHIR date, dateTime or instant covers, in epoch milliseconds
/// (`start` inclusive, `end` exclusive); values without a time zone are read as UTC.
pub fn date_range(s: &str) -> Option<(i64, i64)> {
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        s.get(range)
            .filter(|t| t.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|t| t.parse().ok())
    };
    let year = num(0..4)?;
    if s.len() == 4 {
        let start = days_from_civil(year, 1, 1) * DAY_MS;
        return Some((start, days_from_civil(year + 1, 1, 1) * DAY_MS));
    }
    let month = num(5..7)?;
    if s.len() == 7 {
        let (ny, nm) = if month == 12 {
            (year + 1, 1)
        } else {
            (year, month + 1)
        };
        return Some((
            days_from_civil(year, month, 1) * DAY_MS,
            days_from_civil(ny, nm, 1) * DAY_MS,
        ));
    }
    let day = num(8..10)?;
    let day_start = days_from_civil(year, month, day) * DAY_MS;
    if s.len() == 10 {
        return Some((day_start, day_start + DAY_MS));
    }
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &s[19..];
    let mut millis = 0i64;
    let mut width = 1000i64;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(fraction.len());
        let text = &fraction[..digits.min(3)];
        millis = format!("{text:0<3}").parse().ok()?;
        width = 10i64.pow(3 - text.len() as u32);
        rest = &fraction[digits..];
    }
    let offset_minutes = match rest {
        "" | "Z" => 0,
        _ => {
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            let hours: i64 = rest.get(1..3)?.parse().ok()?;
            let minutes: i64 = rest.get(4..6)?.parse().ok()?;
            sign * (hours * 60 + minutes)
        }
    };
    let start = day_start + ((hour * 60 + minute - offset_minutes) * 60 + second) * 1000 + millis;
    Some((start, start + width))
}

/// The value of a decimal's text and the range its significant digits imply.
fn decimal_range(text: &str) -> Option<(f64, f64, f64)> {
    let value: f64 = text.parse().ok()?;
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(i) => (&text[..i], text[i + 1..].parse::<i32>().ok()?),
        None => (text, 0),
    };
    let decimals = mantissa.split_once('.').map_or(0, |(_, f)| f.len() as i32);
    let half = 0.5 * 10f64.powi(exponent - decimals);
    Some((value, value - half, value + half))
}

/// Latin-1 Supplement (U+00C0–U+00FF) and Latin Extended-A (U+0100–U+017F) folded to base
/// letters; `*` marks letters that fold to two, `-` those kept as they are.
const FOLD_LATIN1: &[u8; 64] = b"aaaaaa*ceeeeiiiidnooooo-ouuuuy**aaaaaa*ceeeeiiiidnooooo-ouuuuy*y";
const FOLD_EXTENDED_A: &[u8; 128] =
    b"aaaaaaccccccccddddeeeeeeeeeegggggggghhhhiiiiiiiiii**jjkkkllllllllllnnnnnnnnnoooooo**rrrrrrssssssssttttttuuuuuuuuuuuuwwyyyzzzzzzs";

/// Normalises text for string search: lower case, accents of Latin letters removed,
/// whitespace collapsed to single spaces and trimmed. The store applies it to query values too.
pub fn normalize_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending_space = false;
    for c in s.chars() {
        if c.is_whitespace() {
            pending_space = !out.is_empty();
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        let code = c as u32;
        let folded = match code {
            0xC0..=0xFF => FOLD_LATIN1[(code - 0xC0) as usize],
            0x100..=0x17F => FOLD_EXTENDED_A[(code - 0x100) as usize],
            _ => b'-',
        };
        match (folded, c) {
            (b'-', _) => out.extend(c.to_lowercase()),
            (b'*', 'Æ' | 'æ') => out.push_str("ae"),
            (b'*', 'Þ' | 'þ') => out.push_str("th"),
            (b'*', 'ß') => out.push_str("ss"),
            (b'*', 'Ĳ' | 'ĳ') => out.push_str("ij"),
            (b'*', 'Œ' | 'œ') => out.push_str("oe"),
            (b'*', _) => out.extend(c.to_lowercase()),
            (letter, _) => out.push(letter as char),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn values(entries: &[IndexEntry], param: &str) -> Vec<IndexValue> {
        entries
            .iter()
            .filter(|e| e.param == param)
            .map(|e| e.value.clone())
            .collect()
    }

    #[test]
    fn every_expression_parses() {
        let defs = definitions();
        let (mut total, mut parsed) = (0, 0);
        for rtype in defs.resource_types() {
            for p in defs.search_params(rtype) {
                for e in p.expression.iter().chain(p.component_expressions.iter()) {
                    total += 1;
                    match fhirpath::parse(e) {
                        Ok(_) => parsed += 1,
                        Err(err) => println!("{err}"),
                    }
                }
            }
        }
        println!("parsed {parsed} of {total} narrowed search parameter expressions");
        assert_eq!(parsed, total);
    }

    #[test]
    fn normalizes_case_accents_and_whitespace() {
        assert_eq!(
            normalize_string("  Zoë  Ångström-Łukasz\tÆsir ß "),
            "zoe angstrom-lukasz aesir ss"
        );
        assert_eq!(normalize_string("ŒUVRE Đuro"), "oeuvre duro");
    }

    #[test]
    fn dates_cover_their_precision() {
        assert_eq!(date_range("1970"), Some((0, 365 * DAY_MS)));
        assert_eq!(date_range("1970-02"), Some((31 * DAY_MS, 59 * DAY_MS)));
        assert_eq!(date_range("1970-01-02"), Some((DAY_MS, 2 * DAY_MS)));
        assert_eq!(date_range("1970-01-01T01:00:00+01:00"), Some((0, 1000)));
        assert_eq!(date_range("1970-01-01T00:00:00.5Z"), Some((500, 600)));
        assert_eq!(date_range("1970-01-01T00:00:00"), Some((0, 1000)));
        assert_eq!(date_range("garbage"), None);
    }

    #[test]
    fn decimals_range_over_their_significant_digits() {
        let (v, low, high) = decimal_range("1.5").expect("decimal");
        assert!(
            (v - 1.5).abs() < 1e-12 && (low - 1.45).abs() < 1e-12 && (high - 1.55).abs() < 1e-12
        );
        let (_, low, high) = decimal_range("1e2").expect("decimal");
        // One significant digit: 1e2 stands for anything in [50, 150).
        assert!((low - 50.0).abs() < 1e-9 && (high - 150.0).abs() < 1e-9);
    }

    #[test]
    fn patient_strings_tokens_and_dates() {
        let patient = json!({
            "resourceType": "Patient", "id": "p1",
            "meta": {"tag": [{"system": "s", "code": "t"}], "source": "urn:src"},
            "identifier": [{"system": "urn:mrn", "value": "123", "type": {"text": "MRN"}}],
            "name": [{"family": "Müller", "given": ["Anna", "Zoë"]}],
            "telecom": [{"system": "phone", "value": "555"}, {"system": "email", "value": "a@b.c"}],
            "gender": "female", "birthDate": "1980-05", "active": true,
            "address": [{"city": "Zürich", "postalCode": "8000"}],
            "generalPractitioner": [{"reference": "Practitioner/9/_history/2"}],
            "managingOrganization": {"reference": "https://example.org/fhir/Organization/o1"}
        });
        let entries = extract_index("Patient", &patient);
        assert_eq!(
            values(&entries, "family"),
            vec![IndexValue::String {
                normalized: "muller".into(),
                exact: "Müller".into()
            }]
        );
        assert_eq!(values(&entries, "given").len(), 2);
        assert_eq!(values(&entries, "address-city").len(), 1);
        assert_eq!(
            values(&entries, "identifier"),
            vec![IndexValue::Token {
                system: Some("urn:mrn".into()),
                code: Some("123".into()),
                text: Some("MRN".into())
            }]
        );
        assert_eq!(
            values(&entries, "phone"),
            vec![IndexValue::Token {
                system: None,
                code: Some("555".into()),
                text: None
            }]
        );
        assert_eq!(values(&entries, "email").len(), 1);
        assert_eq!(
            values(&entries, "gender"),
            vec![IndexValue::Token {
                system: None,
                code: Some("female".into()),
                text: None
            }]
        );
        assert_eq!(
            values(&entries, "active"),
            vec![IndexValue::Token {
                system: None,
                code: Some("true".into()),
                text: None
            }]
        );
        let IndexValue::Date { start, end } = values(&entries, "birthdate")[0] else {
            panic!("date")
        };
        assert_eq!(end - start, 31 * DAY_MS);
        assert_eq!(
            values(&entries, "general-practitioner"),
            vec![IndexValue::Reference {
                rtype: Some("Practitioner".into()),
                id: Some("9".into()),
                url: None
            }]
        );
        assert_eq!(
            values(&entries, "organization"),
            vec![IndexValue::Reference {
                rtype: Some("Organization".into()),
                id: Some("o1".into()),
                url: Some("https://example.org/fhir/Organization/o1".into())
            }]
        );
        assert_eq!(values(&entries, "_tag").len(), 1);
        assert_eq!(
            values(&entries, "_source"),
            vec![IndexValue::Uri("urn:src".into())]
        );
        assert!(values(&entries, "_id").is_empty());
        assert_eq!(
            patient_compartment_refs("Patient", &patient),
            vec!["p1".to_string()]
        );
    }

    #[test]
    fn observation_quantities_codes_and_compartment() {
        let obs = json!({
            "resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2"}], "text": "Height"},
            "subject": {"reference": "Patient/p1"},
            "performer": [{"reference": "#c1"}],
            "effectivePeriod": {"start": "2020-01-01", "end": "2020-01-02"},
            "valueQuantity": {"value": 180.5, "unit": "cm", "system": "http://unitsofmeasure.org", "code": "cm"}
        });
        let entries = extract_index("Observation", &obs);
        assert_eq!(values(&entries, "code").len(), 2);
        assert_eq!(
            values(&entries, "patient"),
            vec![IndexValue::Reference {
                rtype: Some("Patient".into()),
                id: Some("p1".into()),
                url: None
            }]
        );
        assert!(
            values(&entries, "performer").is_empty(),
            "contained references are not indexed"
        );
        let IndexValue::Quantity { low, high, .. } = values(&entries, "value-quantity")[0].clone()
        else {
            panic!("quantity")
        };
        assert!((low - 180.45).abs() < 1e-9 && (high - 180.55).abs() < 1e-9);
        let IndexValue::Date { start, end } = values(&entries, "date")[0] else {
            panic!("date")
        };
        assert_eq!(end - start, 2 * DAY_MS);
        assert_eq!(
            patient_compartment_refs("Observation", &obs),
            vec!["p1".to_string()]
        );
    }
}
