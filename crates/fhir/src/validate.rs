//! Validation of a resource against the R4 definitions: structure, cardinality, primitive formats, required bindings, references and narrative safety.

use std::fmt::Write as _;

use serde_json::{Map, Value};

use crate::definitions::{Child, Definitions, ElementType, Primitive, TypeDef, definitions};
use crate::narrative::check_narrative;

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueSeverity {
    /// The resource cannot be processed at all.
    Fatal,
    /// The resource is invalid.
    Error,
    /// Suspicious but allowed.
    Warning,
    /// For information only.
    Information,
}

/// One problem found in a resource, shaped like an `OperationOutcome.issue`.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    /// How bad it is.
    pub severity: IssueSeverity,
    /// `OperationOutcome.issue.code` (`structure`, `required`, `value`, `invalid`, `code-invalid`...).
    pub code: &'static str,
    /// One sentence.
    pub diagnostics: String,
    /// FHIRPath location, e.g. `Patient.name[0].given[1]`.
    pub expression: String,
}

/// The longest string value accepted (the reference validator's limit).
const MAX_STRING_BYTES: usize = 1024 * 1024;

/// Validates a resource (any R4 type, including Bundles with their entries) and returns every
/// problem found; no issue of severity error or fatal means the resource is valid.
pub fn validate(resource: &Value) -> Vec<Issue> {
    let mut validator = Validator {
        defs: definitions(),
        issues: Vec::new(),
        path: String::with_capacity(128),
        contained_ids: Vec::new(),
    };
    validator.resource(resource, false);
    validator.issues
}

/// Whether a list of issues holds an error or a fatal problem.
pub fn has_errors(issues: &[Issue]) -> bool {
    issues
        .iter()
        .any(|i| matches!(i.severity, IssueSeverity::Error | IssueSeverity::Fatal))
}

struct Validator<'v> {
    defs: &'static Definitions,
    issues: Vec<Issue>,
    path: String,
    /// The ids of the contained resources of each enclosing resource, innermost last.
    contained_ids: Vec<Vec<&'v str>>,
}

impl<'v> Validator<'v> {
    fn error(&mut self, code: &'static str, diagnostics: String) {
        self.issues.push(Issue {
            severity: IssueSeverity::Error,
            code,
            diagnostics,
            expression: self.path.clone(),
        });
    }

    fn resource(&mut self, value: &'v Value, contained: bool) {
        let Value::Object(map) = value else {
            self.error("structure", "A resource must be a JSON object.".into());
            return;
        };
        let Some(rtype) = map.get("resourceType").and_then(Value::as_str) else {
            self.error(
                "structure",
                "The resource has no resourceType; add the name of its type.".into(),
            );
            return;
        };
        let Some(def) = self
            .defs
            .type_def(rtype)
            .filter(|_| self.defs.is_resource_type(rtype))
        else {
            self.error(
                "structure",
                format!("'{rtype}' is not an R4 resource type."),
            );
            return;
        };
        if self.path.is_empty() {
            self.path.push_str(rtype);
        }
        if contained && map.contains_key("contained") {
            self.error(
                "structure",
                "A contained resource cannot itself contain resources.".into(),
            );
        }
        let ids = map
            .get("contained")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("id").and_then(Value::as_str))
            .collect();
        self.contained_ids.push(ids);
        self.object(map, def, 0, true);
        if rtype == "Bundle" {
            self.bundle_rules(map);
        }
        self.contained_ids.pop();
    }

    fn object(
        &mut self,
        map: &'v Map<String, Value>,
        def: &'static TypeDef,
        node: usize,
        resource_root: bool,
    ) {
        let node_def = &def.nodes[node];
        let base = self.path.len();
        for (key, value) in map {
            if resource_root && key == "resourceType" {
                continue;
            }
            let (name, underscore) = match key.strip_prefix('_') {
                Some(name) => (name, true),
                None => (key.as_str(), false),
            };
            let Some(child) = node_def.children.get(name) else {
                let _ = write!(self.path, ".{key}");
                self.error("structure", format!("Unrecognized property '{key}'."));
                self.path.truncate(base);
                continue;
            };
            if underscore {
                let ElementType::Primitive(_) = child.ty else {
                    let _ = write!(self.path, ".{key}");
                    self.error("structure", format!("Unrecognized property '{key}': only primitive elements have a '_' sibling."));
                    self.path.truncate(base);
                    continue;
                };
                if resource_root && name == "id" {
                    let _ = write!(self.path, ".{name}");
                    self.error(
                        "structure",
                        "Extensions are not allowed on the resource id.".into(),
                    );
                    self.path.truncate(base);
                    continue;
                }
                let values = map.get(name);
                if let (Some(Value::Array(exts)), Some(Value::Array(vals))) =
                    (value.as_array().map(|_| value), values)
                    && exts.len() != vals.len()
                {
                    let _ = write!(self.path, ".{name}");
                    self.error(
                        "structure",
                        format!("The arrays '{name}' and '_{name}' must have the same length."),
                    );
                    self.path.truncate(base);
                }
                self.primitive_extensions(name, value, child);
            } else {
                self.property(map, name, value, child, def);
            }
            self.path.truncate(base);
        }
        for required in &node_def.required {
            if !required.names.iter().any(|n| map.contains_key(n.as_str())) {
                self.error(
                    "required",
                    format!(
                        "The element '{}' is required (minimum cardinality 1) but is missing.",
                        required.element
                    ),
                );
            }
        }
    }

    fn property(
        &mut self,
        map: &'v Map<String, Value>,
        name: &str,
        value: &'v Value,
        child: &'static Child,
        def: &'static TypeDef,
    ) {
        let base = self.path.len();
        if child.many {
            let Value::Array(items) = value else {
                let _ = write!(self.path, ".{name}");
                self.error(
                    "structure",
                    format!("The property '{name}' must be a JSON array, not a single value."),
                );
                return;
            };
            if items.is_empty() {
                let _ = write!(self.path, ".{name}");
                self.error(
                    "structure",
                    "An array cannot be empty; leave the property out instead.".into(),
                );
                return;
            }
            if let Some(max) = child.max.filter(|m| items.len() > *m as usize) {
                let _ = write!(self.path, ".{name}");
                self.error(
                    "structure",
                    format!(
                        "The property '{name}' has {} values but at most {max} are allowed.",
                        items.len()
                    ),
                );
                self.path.truncate(base);
            }
            for (i, item) in items.iter().enumerate() {
                let _ = write!(self.path, ".{name}[{i}]");
                if item.is_null() {
                    let has_extension = matches!(child.ty, ElementType::Primitive(_))
                        && map
                            .get(&format!("_{name}"))
                            .and_then(|e| e.get(i))
                            .is_some_and(|e| !e.is_null());
                    if !has_extension {
                        self.error("structure", "A null array entry is only allowed where the '_' sibling gives extensions for it.".into());
                    }
                } else {
                    self.value(item, child, def);
                }
                self.path.truncate(base);
            }
        } else {
            let _ = write!(self.path, ".{name}");
            if value.is_array() {
                self.error(
                    "structure",
                    format!("The property '{name}' must be a single value, not a JSON array."),
                );
                return;
            }
            self.value(value, child, def);
        }
    }

    fn value(&mut self, value: &'v Value, child: &'static Child, def: &'static TypeDef) {
        match child.ty {
            ElementType::Primitive(p) => self.primitive(value, p, child),
            ElementType::Complex(index) => {
                let Some(map) = self.non_empty_object(value) else {
                    return;
                };
                let complex = self.defs.type_def_at(index);
                self.object(map, complex, 0, false);
                self.complex_rules(map, complex, child);
            }
            ElementType::Backbone(node) => {
                if let Some(map) = self.non_empty_object(value) {
                    self.object(map, def, node, false);
                }
            }
            ElementType::Resource => self.resource(value, child.element == "contained"),
        }
    }

    fn non_empty_object(&mut self, value: &'v Value) -> Option<&'v Map<String, Value>> {
        match value {
            Value::Object(map) if !map.is_empty() => Some(map),
            Value::Object(_) => {
                self.error(
                    "structure",
                    "An object must have at least one property; leave it out instead.".into(),
                );
                None
            }
            _ => {
                self.error("structure", "The value must be a JSON object.".into());
                None
            }
        }
    }

    fn primitive_extensions(&mut self, name: &str, value: &'v Value, child: &'static Child) {
        let base = self.path.len();
        let extension = self.defs.type_def("Element");
        let check = |this: &mut Self, item: &'v Value| {
            if let (Some(map), Some(element)) = (this.non_empty_object(item), extension) {
                this.object(map, element, 0, false);
            }
        };
        match value {
            Value::Array(items) if child.many => {
                for (i, item) in items.iter().enumerate() {
                    let _ = write!(self.path, "._{name}[{i}]");
                    if !item.is_null() {
                        check(self, item);
                    }
                    self.path.truncate(base);
                }
            }
            _ if child.many => {
                let _ = write!(self.path, "._{name}");
                self.error(
                    "structure",
                    format!("The property '_{name}' must be a JSON array."),
                );
            }
            _ => {
                let _ = write!(self.path, "._{name}");
                check(self, value);
            }
        }
    }

    fn primitive(&mut self, value: &'v Value, p: Primitive, child: &Child) {
        match (p, value) {
            (Primitive::Boolean, Value::Bool(_)) => {}
            (Primitive::Boolean, _) => self.error(
                "structure",
                "The value must be a JSON boolean (true or false).".into(),
            ),
            (
                Primitive::Integer | Primitive::UnsignedInt | Primitive::PositiveInt,
                Value::Number(n),
            ) => {
                let text = n.to_string();
                let fits = text.parse::<i32>().ok().filter(|v| match p {
                    Primitive::UnsignedInt => *v >= 0,
                    Primitive::PositiveInt => *v >= 1,
                    _ => true,
                });
                if fits.is_none() {
                    self.error(
                        "value",
                        format!(
                            "The value {text} is not a valid {} (a whole number in range).",
                            p.code()
                        ),
                    );
                }
            }
            (Primitive::Decimal, Value::Number(n)) => {
                let text = n.to_string();
                if self.defs.pattern(p).is_some_and(|re| !re.is_match(&text)) {
                    self.error("value", format!("The value {text} is not a valid decimal."));
                }
            }
            (
                Primitive::Integer
                | Primitive::UnsignedInt
                | Primitive::PositiveInt
                | Primitive::Decimal,
                _,
            ) => {
                self.error(
                    "structure",
                    format!(
                        "A {} must be a JSON number, not a string or other value.",
                        p.code()
                    ),
                );
            }
            (_, Value::String(s)) => self.string_primitive(s, p, child),
            (_, Value::Null) => self.error(
                "structure",
                "null is not allowed; leave the property out instead.".into(),
            ),
            _ => self.error(
                "structure",
                format!("A {} must be a JSON string.", p.code()),
            ),
        }
    }

    fn string_primitive(&mut self, s: &str, p: Primitive, child: &Child) {
        if s.is_empty() {
            self.error(
                "value",
                "An empty string is not allowed; leave the property out instead.".into(),
            );
            return;
        }
        if s.len() > MAX_STRING_BYTES {
            self.error(
                "too-long",
                "The value is longer than the maximum of 1 MB.".into(),
            );
            return;
        }
        let ok = match p {
            Primitive::Uri | Primitive::Url | Primitive::Canonical => {
                !s.contains(char::is_whitespace)
            }
            Primitive::Base64Binary => is_base64(s),
            Primitive::String | Primitive::Markdown => true,
            Primitive::Xhtml => {
                if let Err(e) = check_narrative(s) {
                    let sentence = capitalize_sentence(&e.to_string());
                    self.error("value", sentence);
                }
                true
            }
            _ => self.defs.pattern(p).is_none_or(|re| re.is_match(s)),
        };
        if !ok {
            self.error(
                "value",
                format!("The value '{}' is not a valid {}.", shorten(s), p.code()),
            );
            return;
        }
        if p == Primitive::Code
            && let Some(vs) = child
                .binding
                .as_deref()
                .and_then(|url| self.defs.value_set(url))
            && !vs.codes.contains(s)
        {
            self.error(
                "code-invalid",
                format!(
                    "The code '{}' is not in the required value set {}.",
                    shorten(s),
                    child.binding.as_deref().unwrap_or("")
                ),
            );
        }
    }

    fn complex_rules(&mut self, map: &'v Map<String, Value>, def: &'static TypeDef, child: &Child) {
        match def.name.as_str() {
            "Reference" => {
                if let Some(reference) = map.get("reference").and_then(Value::as_str) {
                    self.reference(reference);
                }
            }
            "Extension" => {
                let has_value = map.keys().any(|k| k.starts_with("value"));
                if has_value && map.contains_key("extension") {
                    self.error(
                        "structure",
                        "An extension cannot have both a value and nested extensions.".into(),
                    );
                }
                if let Some(url) = map.get("url").and_then(Value::as_str)
                    && url.contains('|')
                {
                    self.error(
                        "value",
                        "An extension URL must not carry a version ('|').".into(),
                    );
                }
            }
            "Attachment" => {
                if let (Some(data), Some(size)) = (
                    map.get("data").and_then(Value::as_str),
                    map.get("size").and_then(Value::as_u64),
                ) && is_base64(data)
                    && base64_decoded_len(data) as u64 != size
                {
                    self.error("value", format!("The stated attachment size {size} does not match the size of its data ({}).", base64_decoded_len(data)));
                }
            }
            "Coding" | "CodeableConcept" => {
                if let Some(url) = child.binding.as_deref() {
                    self.coded_binding(map, def.name == "Coding", url);
                }
            }
            _ => {}
        }
    }

    fn coded_binding(&mut self, map: &'v Map<String, Value>, single: bool, url: &str) {
        let Some(vs) = self.defs.value_set(url) else {
            return;
        };
        let codings: Vec<&Map<String, Value>> = if single {
            vec![map]
        } else {
            map.get("coding")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_object)
                .collect()
        };
        let mut matched = false;
        let mut wrong_code = None;
        for coding in &codings {
            let system = coding.get("system").and_then(Value::as_str);
            let code = coding.get("code").and_then(Value::as_str);
            match (system.and_then(|s| vs.systems.get(s)), code) {
                (Some(codes), Some(code)) if codes.contains(code) => matched = true,
                (Some(_), Some(code)) => wrong_code = Some(code),
                (None, Some(code)) if system.is_none() && vs.codes.contains(code) => matched = true,
                _ => {}
            }
        }
        if matched {
            return;
        }
        let diagnostics = match wrong_code {
            Some(code) => format!(
                "The code '{}' is not in the required value set {url}.",
                shorten(code)
            ),
            None => format!("No code from the required value set {url} is given."),
        };
        self.error("code-invalid", diagnostics);
    }

    fn reference(&mut self, reference: &str) {
        if let Some(id) = reference.strip_prefix('#') {
            let resolves = id.is_empty()
                || self
                    .contained_ids
                    .iter()
                    .rev()
                    .take(2)
                    .any(|ids| ids.contains(&id));
            if !resolves {
                self.error(
                    "invalid",
                    format!(
                        "The reference '#{}' does not match a contained resource.",
                        shorten(id)
                    ),
                );
            }
            return;
        }
        if reference.starts_with("urn:uuid:")
            || reference.starts_with("urn:oid:")
            || reference.contains("://")
        {
            return;
        }
        let (head, query) = match reference.split_once('?') {
            Some((head, query)) => (head, Some(query)),
            None => (reference, None),
        };
        let valid = match query {
            Some(_) => self.defs.is_resource_type(head),
            None => {
                let mut parts = head.split('/');
                let rtype = parts.next().unwrap_or("");
                let id = parts.next().unwrap_or("");
                let id_ok = self
                    .defs
                    .pattern(Primitive::Id)
                    .is_none_or(|re| re.is_match(id));
                let history_ok = match (parts.next(), parts.next(), parts.next()) {
                    (None, _, _) => true,
                    (Some("_history"), Some(v), None) => !v.is_empty(),
                    _ => false,
                };
                self.defs.is_resource_type(rtype) && id_ok && history_ok
            }
        };
        if !valid {
            self.error(
                "invalid",
                format!("The reference '{}' is not Type/id, an absolute URL, a urn:uuid:/urn:oid:, a #contained id or a conditional Type?query.", shorten(reference)),
            );
        }
    }

    fn bundle_rules(&mut self, map: &'v Map<String, Value>) {
        let base = self.path.len();
        for (i, entry) in map
            .get("entry")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            if let Some(full_url) = entry.get("fullUrl").and_then(Value::as_str)
                && !full_url.contains(':')
            {
                let _ = write!(self.path, ".entry[{i}].fullUrl");
                self.error(
                    "invalid",
                    format!(
                        "The fullUrl '{}' must be an absolute URL.",
                        shorten(full_url)
                    ),
                );
                self.path.truncate(base);
            }
        }
        let mut relations: Vec<&str> = Vec::new();
        for (i, link) in map
            .get("link")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            if let Some(relation) = link.get("relation").and_then(Value::as_str) {
                if relations.contains(&relation) {
                    let _ = write!(self.path, ".link[{i}]");
                    self.error(
                        "invalid",
                        format!(
                            "The link relation '{}' can occur only once.",
                            shorten(relation)
                        ),
                    );
                    self.path.truncate(base);
                }
                relations.push(relation);
            }
        }
    }
}

/// Whether `s` is base64 (whitespace allowed between groups, `=` padding only at the end).
fn is_base64(s: &str) -> bool {
    let mut count = 0usize;
    let mut padding = 0usize;
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'+' | b'/' if padding == 0 => count += 1,
            b'=' => {
                padding += 1;
                count += 1;
            }
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ => return false,
        }
    }
    count.is_multiple_of(4) && padding <= 2
}

fn base64_decoded_len(s: &str) -> usize {
    let count = s.bytes().filter(|b| !b.is_ascii_whitespace()).count();
    let padding = s
        .bytes()
        .rev()
        .filter(|b| !b.is_ascii_whitespace())
        .take_while(|b| *b == b'=')
        .count();
    count / 4 * 3 - padding.min(2)
}

/// The first 60 characters of a value, for messages.
fn shorten(s: &str) -> &str {
    match s.char_indices().nth(60) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn capitalize_sentence(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 1);
    let mut chars = s.chars();
    if let Some(first) = chars.next() {
        out.extend(first.to_uppercase());
        out.push_str(chars.as_str());
    }
    if !out.ends_with('.') {
        out.push('.');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors(resource: Value) -> Vec<(String, &'static str)> {
        validate(&resource)
            .into_iter()
            .filter(|i| i.severity == IssueSeverity::Error)
            .map(|i| (i.expression, i.code))
            .collect()
    }

    fn rejected_at(resource: Value, expression: &str) {
        let found = errors(resource);
        assert!(
            found.iter().any(|(e, _)| e == expression),
            "expected an error at {expression}, got {found:?}"
        );
    }

    #[test]
    fn accepts_a_plain_patient() {
        let patient = json!({
            "resourceType": "Patient", "id": "p-1",
            "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Anna</div>"},
            "name": [{"given": ["Anna", null], "_given": [null, {"extension": [{"url": "http://x", "valueString": "y"}]}]}],
            "gender": "female", "birthDate": "1980-05-01", "deceasedBoolean": false,
            "multipleBirthInteger": 2,
            "generalPractitioner": [{"reference": "Practitioner/1"}, {"reference": "urn:uuid:0b5a3f2e-1111-4b5a-9c1e-0123456789ab"}, {"reference": "Practitioner?identifier=x|1"}]
        });
        assert_eq!(errors(patient), vec![]);
    }

    #[test]
    fn rejects_non_objects_and_unknown_types() {
        assert_eq!(errors(json!([1])), vec![(String::new(), "structure")]);
        assert_eq!(errors(json!({"id": "x"})).len(), 1);
        assert_eq!(errors(json!({"resourceType": "Patientt"})).len(), 1);
        assert_eq!(errors(json!({"resourceType": "HumanName"})).len(), 1);
    }

    #[test]
    fn rejects_unknown_elements() {
        rejected_at(
            json!({"resourceType": "Patient", "unknownElement": 1}),
            "Patient.unknownElement",
        );
        rejected_at(
            json!({"resourceType": "Patient", "name": [{"resourceType": "x"}]}),
            "Patient.name[0].resourceType",
        );
        rejected_at(
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueBla": 1}),
            "Observation.valueBla",
        );
        rejected_at(
            json!({"resourceType": "Patient", "_name": {"id": "x"}}),
            "Patient._name",
        );
    }

    #[test]
    fn rejects_cardinality_errors() {
        rejected_at(
            json!({"resourceType": "Patient", "name": {"family": "x"}}),
            "Patient.name",
        );
        rejected_at(
            json!({"resourceType": "Patient", "gender": ["male"]}),
            "Patient.gender",
        );
        rejected_at(
            json!({"resourceType": "Observation", "code": {"text": "x"}}),
            "Observation",
        );
        rejected_at(
            json!({"resourceType": "Patient", "name": []}),
            "Patient.name",
        );
    }

    #[test]
    fn rejects_wrong_json_types_and_empties() {
        rejected_at(
            json!({"resourceType": "Patient", "active": "true"}),
            "Patient.active",
        );
        rejected_at(
            json!({"resourceType": "Patient", "multipleBirthInteger": "2"}),
            "Patient.multipleBirthInteger",
        );
        rejected_at(
            json!({"resourceType": "Patient", "multipleBirthInteger": 2.5}),
            "Patient.multipleBirthInteger",
        );
        rejected_at(
            json!({"resourceType": "Patient", "birthDate": 1980}),
            "Patient.birthDate",
        );
        rejected_at(
            json!({"resourceType": "Patient", "birthDate": ""}),
            "Patient.birthDate",
        );
        rejected_at(
            json!({"resourceType": "Patient", "birthDate": null}),
            "Patient.birthDate",
        );
        rejected_at(
            json!({"resourceType": "Patient", "maritalStatus": {}}),
            "Patient.maritalStatus",
        );
        rejected_at(
            json!({"resourceType": "Patient", "name": [{"given": ["a", null]}]}),
            "Patient.name[0].given[1]",
        );
        rejected_at(
            json!({"resourceType": "Patient", "name": [{"given": ["a"], "_given": [{"id": "t"}, null]}]}),
            "Patient.name[0].given",
        );
    }

    #[test]
    fn rejects_bad_primitive_formats() {
        rejected_at(
            json!({"resourceType": "Patient", "id": "bad_id"}),
            "Patient.id",
        );
        rejected_at(
            json!({"resourceType": "Patient", "id": "a".repeat(65)}),
            "Patient.id",
        );
        rejected_at(
            json!({"resourceType": "Patient", "birthDate": "not a date"}),
            "Patient.birthDate",
        );
        rejected_at(
            json!({"resourceType": "Patient", "deceasedDateTime": "2020-01-01T10:00:00"}),
            "Patient.deceasedDateTime",
        );
        rejected_at(
            json!({"resourceType": "Patient", "meta": {"lastUpdated": "2020-01-01"}}),
            "Patient.meta.lastUpdated",
        );
        rejected_at(
            json!({"resourceType": "Patient", "implicitRules": "http://a b"}),
            "Patient.implicitRules",
        );
        rejected_at(
            json!({"resourceType": "Patient", "language": " en"}),
            "Patient.language",
        );
        rejected_at(
            json!({"resourceType": "Patient", "photo": [{"data": "%%%2@()()"}]}),
            "Patient.photo[0].data",
        );
        rejected_at(
            json!({"resourceType": "Patient", "photo": [{"data": "aGVsbG8=", "size": 100}]}),
            "Patient.photo[0]",
        );
        rejected_at(
            json!({"resourceType": "ImmunizationRecommendation", "patient": {"reference": "Patient/1"}, "date": "2020-01-01", "recommendation": [{"forecastStatus": {"text": "x"}, "doseNumberPositiveInt": 0}]}),
            "ImmunizationRecommendation.recommendation[0].doseNumberPositiveInt",
        );
        rejected_at(
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueQuantity": {"value": "1.0"}}),
            "Observation.valueQuantity.value",
        );
        rejected_at(
            json!({"resourceType": "Patient", "_id": {"extension": [{"url": "http://x", "valueString": "y"}]}}),
            "Patient.id",
        );
    }

    #[test]
    fn rejects_codes_outside_required_bindings() {
        rejected_at(
            json!({"resourceType": "Patient", "gender": "mal"}),
            "Patient.gender",
        );
        let condition = json!({"resourceType": "Condition", "subject": {"reference": "Patient/1"},
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "nope"}]}});
        rejected_at(condition, "Condition.clinicalStatus");
    }

    #[test]
    fn rejects_bad_references() {
        rejected_at(
            json!({"resourceType": "Patient", "managingOrganization": {"reference": "Organisation/1"}}),
            "Patient.managingOrganization",
        );
        rejected_at(
            json!({"resourceType": "Patient", "managingOrganization": {"reference": "Organization/a b"}}),
            "Patient.managingOrganization",
        );
        rejected_at(
            json!({"resourceType": "Patient", "managingOrganization": {"reference": "#missing"}}),
            "Patient.managingOrganization",
        );
        let ok = json!({"resourceType": "Patient", "contained": [{"resourceType": "Organization", "id": "o", "name": "x"}],
            "managingOrganization": {"reference": "#o"}});
        assert_eq!(errors(ok), vec![]);
    }

    #[test]
    fn validates_contained_resources_and_bundle_entries() {
        rejected_at(
            json!({"resourceType": "Patient", "contained": [{"resourceType": "Organization", "id": "o", "bogus": 1}]}),
            "Patient.contained[0].bogus",
        );
        rejected_at(
            json!({"resourceType": "Patient", "contained": [{"resourceType": "Organization", "id": "o", "contained": [{"resourceType": "Organization", "id": "p"}]}]}),
            "Patient.contained[0]",
        );
        let bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": [
            {"fullUrl": "urn:uuid:0b5a3f2e-1111-4b5a-9c1e-0123456789ab", "resource": {"resourceType": "Patient", "gender": "x"}},
            {"fullUrl": "Patient/1", "resource": {"resourceType": "Patient"}}]});
        let found = errors(bundle);
        assert!(
            found
                .iter()
                .any(|(e, _)| e == "Bundle.entry[0].resource.gender"),
            "{found:?}"
        );
        assert!(
            found.iter().any(|(e, _)| e == "Bundle.entry[1].fullUrl"),
            "{found:?}"
        );
    }

    #[test]
    fn rejects_unsafe_narrative() {
        let with_div = |div: &str| json!({"resourceType": "Patient", "text": {"status": "generated", "div": div}});
        rejected_at(
            with_div("<div xmlns=\"http://www.w3.org/1999/xhtml\"><script>x</script></div>"),
            "Patient.text.div",
        );
        rejected_at(
            with_div(
                "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p onmouseover=\"x\">a</p></div>",
            ),
            "Patient.text.div",
        );
        rejected_at(with_div("<div>plain</div>"), "Patient.text.div");
    }

    #[test]
    fn rejects_extensions_with_value_and_children() {
        rejected_at(
            json!({"resourceType": "Patient", "extension": [{"url": "http://x", "valueString": "a", "extension": [{"url": "y", "valueString": "b"}]}]}),
            "Patient.extension[0]",
        );
        rejected_at(
            json!({"resourceType": "Patient", "extension": [{"valueString": "a"}]}),
            "Patient.extension[0]",
        );
    }
}
