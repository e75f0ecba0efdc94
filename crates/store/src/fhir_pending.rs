//! TEMPORARY stand-ins for fhir-crate functions that are still being written (definitions,
//! index extraction, string normalisation, validation); remove once `carevault_fhir` has them.
//! Only a handful of search parameters are known here, enough for this crate's tests.

use std::sync::OnceLock;

use carevault_fhir::{IndexEntry, IndexValue, Issue, IssueSeverity, SearchParam, SearchParamType};
use serde_json::Value;

/// The search-parameter tables (a small subset until the fhir crate lands).
pub struct Definitions {
    params: Vec<(String, SearchParam, Vec<String>)>,
    by_type: std::collections::HashMap<String, Vec<SearchParam>>,
    compartment: std::collections::HashMap<String, Vec<String>>,
}

/// The process-wide definitions.
pub fn definitions() -> &'static Definitions {
    static DEFS: OnceLock<Definitions> = OnceLock::new();
    DEFS.get_or_init(build)
}

impl Definitions {
    /// Whether `t` names a resource type.
    pub fn is_resource_type(&self, t: &str) -> bool {
        t.len() > 1 && t.starts_with(|c: char| c.is_ascii_uppercase()) && t.chars().all(|c| c.is_ascii_alphabetic())
    }
    /// Search parameters of a type.
    pub fn search_params(&self, rtype: &str) -> &[SearchParam] {
        self.by_type.get(rtype).map(|v| &v[..]).unwrap_or(&[])
    }
    /// One search parameter.
    pub fn search_param(&self, rtype: &str, code: &str) -> Option<&SearchParam> {
        self.search_params(rtype).iter().find(|p| p.code == code)
    }
    /// Patient-compartment parameters of a type.
    pub fn compartment_params(&self, rtype: &str) -> &[String] {
        self.compartment.get(rtype).map(|v| &v[..]).unwrap_or(&[])
    }
}

fn build() -> Definitions {
    use SearchParamType::*;
    let table: &[(&str, &str, SearchParamType, &[&str], &[&str])] = &[
        ("Patient", "family", String, &["name.family"], &[]),
        ("Patient", "given", String, &["name.given"], &[]),
        ("Patient", "name", String, &["name.family", "name.given", "name.text"], &[]),
        ("Patient", "identifier", Token, &["identifier"], &[]),
        ("Patient", "gender", Token, &["gender"], &[]),
        ("Patient", "birthdate", Date, &["birthDate"], &[]),
        ("Patient", "general-practitioner", Reference, &["generalPractitioner"], &["Practitioner", "Organization"]),
        ("Patient", "organization", Reference, &["managingOrganization"], &["Organization"]),
        ("Patient", "link", Reference, &["link.other"], &["Patient"]),
        ("Observation", "code", Token, &["code"], &[]),
        ("Observation", "status", Token, &["status"], &[]),
        ("Observation", "category", Token, &["category"], &[]),
        ("Observation", "subject", Reference, &["subject"], &["Patient", "Group", "Device", "Location"]),
        ("Observation", "patient", Reference, &["subject"], &["Patient"]),
        ("Observation", "encounter", Reference, &["encounter"], &["Encounter"]),
        ("Observation", "performer", Reference, &["performer"], &["Practitioner", "Organization", "Patient"]),
        ("Observation", "date", Date, &["effectiveDateTime", "effectivePeriod", "effectiveInstant"], &[]),
        ("Observation", "value-quantity", Quantity, &["valueQuantity"], &[]),
        ("Observation", "value-string", String, &["valueString"], &[]),
        ("Encounter", "date", Date, &["period"], &[]),
        ("Encounter", "status", Token, &["status"], &[]),
        ("Encounter", "class", Token, &["class"], &[]),
        ("Encounter", "type", Token, &["type"], &[]),
        ("Encounter", "subject", Reference, &["subject"], &["Patient", "Group"]),
        ("Encounter", "patient", Reference, &["subject"], &["Patient"]),
        ("Encounter", "participant", Reference, &["participant.individual"], &["Practitioner", "PractitionerRole", "RelatedPerson"]),
        ("Encounter", "practitioner", Reference, &["participant.individual"], &["Practitioner"]),
        ("Encounter", "service-provider", Reference, &["serviceProvider"], &["Organization"]),
        ("Encounter", "location", Reference, &["location.location"], &["Location"]),
        ("Practitioner", "identifier", Token, &["identifier"], &[]),
        ("Practitioner", "name", String, &["name.family", "name.given"], &[]),
        ("Practitioner", "family", String, &["name.family"], &[]),
        ("Organization", "identifier", Token, &["identifier"], &[]),
        ("Organization", "name", String, &["name"], &[]),
        ("Location", "identifier", Token, &["identifier"], &[]),
        ("Location", "name", String, &["name"], &[]),
        ("Condition", "code", Token, &["code"], &[]),
        ("Condition", "subject", Reference, &["subject"], &["Patient", "Group"]),
        ("Condition", "patient", Reference, &["subject"], &["Patient"]),
        ("RiskAssessment", "probability", Number, &["prediction.probabilityDecimal"], &[]),
        ("RiskAssessment", "subject", Reference, &["subject"], &["Patient", "Group"]),
        ("ValueSet", "url", Uri, &["url"], &[]),
    ];
    let mut params = Vec::new();
    let mut by_type: std::collections::HashMap<std::string::String, Vec<SearchParam>> = Default::default();
    for (t, code, kind, paths, targets) in table {
        let sp = SearchParam {
            code: (*code).into(),
            kind: *kind,
            expression: Some(paths.iter().map(|p| format!("{t}.{p}")).collect::<Vec<_>>().join(" | ")),
            targets: targets.iter().map(|s| (*s).into()).collect(),
            components: vec![],
        };
        by_type.entry((*t).into()).or_default().push(sp.clone());
        params.push(((*t).into(), sp, paths.iter().map(|s| (*s).into()).collect()));
    }
    let mut compartment: std::collections::HashMap<std::string::String, Vec<std::string::String>> = Default::default();
    compartment.insert("Patient".into(), vec!["link".into()]);
    for t in ["Observation", "Encounter", "Condition", "RiskAssessment"] {
        compartment.insert(t.into(), vec!["subject".into()]);
    }
    Definitions { params, by_type, compartment }
}

fn walk<'a>(v: &'a Value, path: &[&str], out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| walk(x, path, out)),
        _ if path.is_empty() => out.push(v),
        Value::Object(o) => {
            if let Some(next) = o.get(path[0]) {
                walk(next, &path[1..], out)
            }
        }
        _ => {}
    }
}

/// Lower-cases, folds common accents and punctuation, collapses whitespace.
pub fn normalize_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars().flat_map(char::to_lowercase) {
        let c = match c {
            'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' => 'a',
            'è' | 'é' | 'ê' | 'ë' => 'e',
            'ì' | 'í' | 'î' | 'ï' => 'i',
            'ò' | 'ó' | 'ô' | 'õ' | 'ö' => 'o',
            'ù' | 'ú' | 'û' | 'ü' => 'u',
            'ç' => 'c',
            'ñ' => 'n',
            c if c.is_alphanumeric() => c,
            _ => ' ',
        };
        if c == ' ' && (out.is_empty() || out.ends_with(' ')) {
            continue;
        }
        out.push(c);
    }
    while out.ends_with(' ') {
        out.pop();
    }
    out
}

fn decimal_range(n: &serde_json::Number) -> (f64, f64, f64) {
    let text = n.to_string();
    let v: f64 = text.parse().unwrap_or(0.0);
    let decimals = text.split_once('.').map_or(0, |(_, f)| f.len()) as i32;
    let half = 0.5 * 10f64.powi(-decimals);
    (v, v - half, v + half)
}

fn str_field(o: &serde_json::Map<String, Value>, k: &str) -> Option<String> {
    o.get(k).and_then(Value::as_str).map(str::to_owned)
}

fn to_values(kind: SearchParamType, v: &Value, out: &mut Vec<IndexValue>) {
    match (kind, v) {
        (SearchParamType::String, Value::String(s)) => {
            out.push(IndexValue::String { normalized: normalize_string(s), exact: s.clone() })
        }
        (SearchParamType::Token, Value::String(s)) => {
            out.push(IndexValue::Token { system: None, code: Some(s.clone()), text: None })
        }
        (SearchParamType::Token, Value::Bool(b)) => {
            out.push(IndexValue::Token { system: None, code: Some(b.to_string()), text: None })
        }
        (SearchParamType::Token, Value::Object(o)) => {
            if let Some(Value::Array(codings)) = o.get("coding") {
                for c in codings.iter().filter_map(Value::as_object) {
                    out.push(IndexValue::Token {
                        system: str_field(c, "system"),
                        code: str_field(c, "code"),
                        text: str_field(c, "display"),
                    });
                }
                if let Some(t) = str_field(o, "text") {
                    out.push(IndexValue::Token { system: None, code: None, text: Some(t) });
                }
            } else if o.contains_key("value") {
                out.push(IndexValue::Token { system: str_field(o, "system"), code: str_field(o, "value"), text: None });
            } else {
                out.push(IndexValue::Token {
                    system: str_field(o, "system"),
                    code: str_field(o, "code"),
                    text: str_field(o, "display"),
                });
            }
        }
        (SearchParamType::Reference, Value::Object(o)) => {
            if let Some(r) = o.get("reference").and_then(Value::as_str) {
                if r.contains("://") {
                    out.push(IndexValue::Reference { rtype: None, id: None, url: Some(r.into()) });
                } else if let Some((t, id)) = r.split_once('/') {
                    out.push(IndexValue::Reference { rtype: Some(t.into()), id: Some(id.into()), url: None });
                }
            }
        }
        (SearchParamType::Date, Value::String(s)) => {
            if let Some((start, end)) = crate::instant::parse_range(s) {
                out.push(IndexValue::Date { start, end });
            }
        }
        (SearchParamType::Date, Value::Object(o)) => {
            let start = o.get("start").and_then(Value::as_str).and_then(crate::instant::parse_range).map_or(i64::MIN, |r| r.0);
            let end = o.get("end").and_then(Value::as_str).and_then(crate::instant::parse_range).map_or(i64::MAX, |r| r.1);
            out.push(IndexValue::Date { start, end });
        }
        (SearchParamType::Number, Value::Number(n)) => {
            let (value, low, high) = decimal_range(n);
            out.push(IndexValue::Number { value, low, high });
        }
        (SearchParamType::Quantity, Value::Object(o)) => {
            if let Some(Value::Number(n)) = o.get("value") {
                let (value, low, high) = decimal_range(n);
                out.push(IndexValue::Quantity {
                    value,
                    low,
                    high,
                    system: str_field(o, "system"),
                    code: str_field(o, "code"),
                    unit: str_field(o, "unit"),
                });
            }
        }
        (SearchParamType::Uri, Value::String(s)) => out.push(IndexValue::Uri(s.clone())),
        _ => {}
    }
}

/// Every index value of a resource, for the parameters known here.
pub fn extract_index(rtype: &str, resource: &Value) -> Vec<IndexEntry> {
    let mut out = Vec::new();
    for (t, sp, paths) in &definitions().params {
        if t != rtype {
            continue;
        }
        for p in paths {
            let segs: Vec<&str> = p.split('.').collect();
            let mut found = Vec::new();
            walk(resource, &segs, &mut found);
            let mut vals = Vec::new();
            for f in found {
                to_values(sp.kind, f, &mut vals);
            }
            out.extend(vals.into_iter().map(|value| IndexEntry { param: sp.code.clone(), value }));
        }
    }
    out
}

/// Minimal structural checks: an object with a known-looking `resourceType` and a valid `id`.
pub fn validate(resource: &Value) -> Vec<Issue> {
    let mut issues = Vec::new();
    let err = |code: &'static str, d: &str, e: &str| Issue {
        severity: IssueSeverity::Error,
        code,
        diagnostics: d.into(),
        expression: e.into(),
    };
    let Some(obj) = resource.as_object() else {
        return vec![err("structure", "The resource must be a JSON object.", "")];
    };
    let rt = obj.get("resourceType").and_then(Value::as_str).unwrap_or("");
    if !definitions().is_resource_type(rt) {
        issues.push(err("structure", "resourceType is missing or unknown.", "resourceType"));
    }
    if let Some(id) = obj.get("id") {
        let ok = id.as_str().is_some_and(|s| {
            !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        });
        if !ok {
            issues.push(err("value", "id is not a valid FHIR id.", &format!("{rt}.id")));
        }
    }
    if obj.get("status").is_some_and(|s| s.as_str() == Some("bogus-status")) {
        issues.push(err("code-invalid", "status is not in the required value set.", &format!("{rt}.status")));
    }
    issues
}
