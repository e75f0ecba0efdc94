//! Turns the official FHIR R4 definitions into the compact tables the fhir crate embeds.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::path::Path;

use serde_json::{Map, Value, json};

/// Where the generated tables live, relative to the repository root.
pub const OUTPUT_PATH: &str = "crates/fhir/definitions/r4.json.gz";

/// What can go wrong while generating the tables.
#[derive(Debug, thiserror::Error)]
pub enum CodegenError {
    /// A definitions file could not be read or written.
    #[error(
        "cannot access {0}: {1}; pass the folder of the FHIR R4 definitions as the first argument"
    )]
    Io(String, #[source] std::io::Error),
    /// A definitions file is not the JSON it should be.
    #[error("{0} is not valid JSON: {1}")]
    Json(String, #[source] serde_json::Error),
    /// A definitions file parsed but lacks something the tables need.
    #[error("the definitions are not shaped as expected: {0}")]
    Shape(String),
}

type Result<T> = std::result::Result<T, CodegenError>;

fn read_bundle(dir: &Path, name: &str) -> Result<Value> {
    let path = dir.join(name);
    let file =
        std::fs::File::open(&path).map_err(|e| CodegenError::Io(path.display().to_string(), e))?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .map_err(|e| CodegenError::Io(path.display().to_string(), e))?;
    serde_json::from_str(&text).map_err(|e| CodegenError::Json(path.display().to_string(), e))
}

fn entries(bundle: &Value) -> impl Iterator<Item = &Value> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| &e["resource"])
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("")
}

fn strip_version(url: &str) -> &str {
    url.split('|').next().unwrap_or(url)
}

/// Reads every definitions file under `source` and returns the gzipped tables, byte for byte
/// the same for the same input.
pub fn generate(source: &Path) -> Result<Vec<u8>> {
    let resources = read_bundle(source, "profiles-resources.json.gz")?;
    let types = read_bundle(source, "profiles-types.json.gz")?;
    let search = read_bundle(source, "search-parameters.json.gz")?;
    let compartment = read_bundle(source, "compartmentdefinition-patient.json.gz")?;
    let mut terminology = Vec::new();
    for name in [
        "valuesets.json.gz",
        "v3-codesystems.json.gz",
        "v2-tables.json.gz",
    ] {
        terminology.push(read_bundle(source, name)?);
    }

    let mut primitives = BTreeMap::new();
    let mut type_tables = BTreeMap::new();
    let mut bindings = BTreeSet::new();
    for sd in entries(&types).chain(entries(&resources)) {
        // The package also carries a few later-version definitions (R4B's SubscriptionStatus).
        if sd["resourceType"] != "StructureDefinition"
            || sd["fhirVersion"].as_str().is_some_and(|v| v != "4.0.1")
        {
            continue;
        }
        let kind = str_of(sd, "kind");
        let id = str_of(sd, "id");
        match kind {
            "primitive-type" => {
                let regex = sd["snapshot"]["element"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|e| str_of(e, "path").ends_with(".value"))
                    .flat_map(|e| e["type"].as_array().into_iter().flatten())
                    .flat_map(|t| t["extension"].as_array().into_iter().flatten())
                    .find(|x| str_of(x, "url") == "http://hl7.org/fhir/StructureDefinition/regex")
                    .map(|x| str_of(x, "valueString").to_string())
                    .unwrap_or_default();
                primitives.insert(id.to_string(), Value::String(regex));
            }
            "complex-type" | "resource" => {
                if kind == "complex-type" && str_of(sd, "type") == "Extension" && id != "Extension"
                {
                    continue;
                }
                let table_kind = if kind == "complex-type" {
                    "complex"
                } else if sd["abstract"] == true {
                    "abstract"
                } else {
                    "resource"
                };
                let elements = element_table(
                    sd,
                    table_kind == "resource" || table_kind == "abstract",
                    &mut bindings,
                )?;
                type_tables.insert(
                    id.to_string(),
                    json!({"kind": table_kind, "elements": elements}),
                );
            }
            _ => {}
        }
    }

    let expander = ValueSetExpander::new(&terminology);
    let mut value_sets = BTreeMap::new();
    for url in &bindings {
        if let Some(expansion) = expander.expand(url, 0) {
            let systems: Map<String, Value> = expansion
                .into_iter()
                .map(|(system, codes)| {
                    (
                        system,
                        Value::Array(codes.into_iter().map(Value::String).collect()),
                    )
                })
                .collect();
            value_sets.insert(url.clone(), Value::Object(systems));
        }
    }
    // Drop bindings we cannot expand so the runtime never looks up a missing value set.
    for table in type_tables.values_mut() {
        if let Some(elements) = table["elements"].as_array_mut() {
            for element in elements {
                let unknown = element["binding"]
                    .as_str()
                    .is_some_and(|b| !value_sets.contains_key(b));
                if unknown && let Some(obj) = element.as_object_mut() {
                    obj.remove("binding");
                }
            }
        }
    }

    let resource_types: Vec<String> = type_tables
        .iter()
        .filter(|(_, t)| t["kind"] == "resource")
        .map(|(name, _)| name.clone())
        .collect();
    let search_params = search_tables(&search, &resource_types)?;

    let mut compartment_table = BTreeMap::new();
    for entry in compartment["resource"].as_array().into_iter().flatten() {
        let params: Vec<Value> = entry["param"]
            .as_array()
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        if !params.is_empty() {
            compartment_table.insert(str_of(entry, "code").to_string(), Value::Array(params));
        }
    }

    let tables = json!({
        "fhirVersion": "4.0.1",
        "primitives": primitives,
        "types": type_tables,
        "valueSets": value_sets,
        "searchParams": search_params,
        "patientCompartment": compartment_table,
    });
    let text =
        serde_json::to_string(&tables).map_err(|e| CodegenError::Json("tables".into(), e))?;
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    encoder
        .write_all(text.as_bytes())
        .and_then(|()| encoder.finish())
        .map_err(|e| CodegenError::Io("gzip buffer".into(), e))
}

fn element_table(
    sd: &Value,
    is_resource: bool,
    bindings: &mut BTreeSet<String>,
) -> Result<Vec<Value>> {
    let elements = sd["snapshot"]["element"]
        .as_array()
        .ok_or_else(|| CodegenError::Shape(format!("{} has no snapshot", str_of(sd, "id"))))?;
    let paths: Vec<&str> = elements.iter().map(|e| str_of(e, "path")).collect();
    let mut out = Vec::new();
    for (i, element) in elements.iter().enumerate() {
        let path = paths[i];
        if !path.contains('.') {
            continue;
        }
        let mut row = Map::new();
        row.insert("path".into(), json!(path));
        let depth = path.matches('.').count();
        if let Some(reference) = element["contentReference"].as_str() {
            row.insert("ref".into(), json!(reference.trim_start_matches('#')));
        } else {
            let mut codes = Vec::new();
            for t in element["type"].as_array().into_iter().flatten() {
                let code = str_of(t, "code");
                let code =
                    if let Some(system) = code.strip_prefix("http://hl7.org/fhirpath/System.") {
                        let declared = t["extension"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .find(|x| str_of(x, "url").ends_with("structuredefinition-fhir-type"))
                            .map(|x| str_of(x, "valueUrl"));
                        if is_resource && depth == 1 && path.ends_with(".id") {
                            "id".to_string()
                        } else if let Some(d) = declared {
                            d.to_string()
                        } else {
                            system.to_lowercase()
                        }
                    } else {
                        code.to_string()
                    };
                if !codes.contains(&code) {
                    codes.push(code);
                }
            }
            row.insert("types".into(), json!(codes));
        }
        row.insert("min".into(), element["min"].clone());
        row.insert("max".into(), element["max"].clone());
        if element["isSummary"] == true {
            row.insert("summary".into(), json!(true));
        }
        let prefix = format!("{path}.");
        if paths.iter().any(|p| p.starts_with(&prefix)) {
            row.insert("children".into(), json!(true));
        }
        if element["binding"]["strength"] == "required"
            && let Some(vs) = element["binding"]["valueSet"].as_str()
        {
            let url = strip_version(vs).to_string();
            bindings.insert(url.clone());
            row.insert("binding".into(), json!(url));
        }
        out.push(Value::Object(row));
    }
    Ok(out)
}

/// Expands value sets from the core code systems, giving up on anything that needs a filter,
/// an external code system or an incomplete one.
struct ValueSetExpander<'a> {
    value_sets: HashMap<&'a str, &'a Value>,
    code_systems: HashMap<&'a str, &'a Value>,
}

type Expansion = BTreeMap<String, BTreeSet<String>>;

impl<'a> ValueSetExpander<'a> {
    fn new(bundles: &'a [Value]) -> Self {
        let mut value_sets = HashMap::new();
        let mut code_systems = HashMap::new();
        for resource in bundles.iter().flat_map(entries) {
            let url = str_of(resource, "url");
            match str_of(resource, "resourceType") {
                "ValueSet" => {
                    value_sets.entry(url).or_insert(resource);
                }
                "CodeSystem" => {
                    code_systems.entry(url).or_insert(resource);
                }
                _ => {}
            }
        }
        Self {
            value_sets,
            code_systems,
        }
    }

    fn system_codes(&self, system: &str) -> Option<BTreeSet<String>> {
        let cs = self.code_systems.get(system)?;
        if str_of(cs, "content") != "complete" {
            return None;
        }
        let mut codes = BTreeSet::new();
        fn walk(concepts: &Value, codes: &mut BTreeSet<String>) {
            for c in concepts.as_array().into_iter().flatten() {
                if let Some(code) = c["code"].as_str() {
                    codes.insert(code.to_string());
                }
                walk(&c["concept"], codes);
            }
        }
        walk(&cs["concept"], &mut codes);
        (!codes.is_empty()).then_some(codes)
    }

    fn expand(&self, url: &str, depth: usize) -> Option<Expansion> {
        if depth > 8 {
            return None;
        }
        let vs = self.value_sets.get(url)?;
        let compose = &vs["compose"];
        let mut out = Expansion::new();
        for include in compose["include"].as_array()? {
            let nested = include["valueSet"].as_array();
            let system = include["system"].as_str();
            if include.get("filter").is_some() || (nested.is_some() && system.is_some()) {
                return None;
            }
            if let Some(nested) = nested {
                for inner in nested {
                    for (system, codes) in self.expand(strip_version(inner.as_str()?), depth + 1)? {
                        out.entry(system).or_default().extend(codes);
                    }
                }
                continue;
            }
            let system = system?;
            let codes = match include["concept"].as_array() {
                Some(concepts) => concepts
                    .iter()
                    .filter_map(|c| c["code"].as_str().map(str::to_string))
                    .collect(),
                None => self.system_codes(system)?,
            };
            out.entry(system.to_string()).or_default().extend(codes);
        }
        for exclude in compose["exclude"].as_array().into_iter().flatten() {
            let system = exclude["system"].as_str()?;
            let concepts = exclude["concept"].as_array()?;
            let set = out.get_mut(system)?;
            for c in concepts {
                set.remove(c["code"].as_str()?);
            }
        }
        (!out.is_empty()).then_some(out)
    }
}

/// Splits a FHIRPath union at its top level (outside parentheses and quotes).
pub fn split_union(expression: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut quoted, mut start) = (0i32, false, 0usize);
    for (i, ch) in expression.char_indices() {
        match ch {
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            '|' if !quoted && depth == 0 => {
                parts.push(expression[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(expression[start..].trim());
    parts
}

fn branch_root(branch: &str) -> &str {
    let b = branch.trim_start_matches('(');
    let end = b
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(b.len());
    &b[..end]
}

fn search_tables(
    search: &Value,
    resource_types: &[String],
) -> Result<BTreeMap<String, Vec<Value>>> {
    let params: Vec<&Value> = entries(search)
        .filter(|r| r["resourceType"] == "SearchParameter")
        .collect();
    let code_by_url: HashMap<&str, &str> = params
        .iter()
        .map(|p| (str_of(p, "url"), str_of(p, "code")))
        .collect();
    let mut out: BTreeMap<String, Vec<Value>> = resource_types
        .iter()
        .map(|t| (t.clone(), Vec::new()))
        .collect();
    for param in &params {
        let bases: Vec<&str> = param["base"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let applies: Vec<&String> = if bases
            .iter()
            .any(|b| *b == "Resource" || *b == "DomainResource")
        {
            resource_types.iter().collect()
        } else {
            resource_types
                .iter()
                .filter(|t| bases.contains(&t.as_str()))
                .collect()
        };
        let mut components = Vec::new();
        let mut component_expressions = Vec::new();
        for c in param["component"].as_array().into_iter().flatten() {
            let definition = strip_version(str_of(c, "definition"));
            let code = code_by_url.get(definition).ok_or_else(|| {
                CodegenError::Shape(format!(
                    "composite component {definition} is not a known SearchParameter"
                ))
            })?;
            components.push(json!(code));
            component_expressions.push(json!(str_of(c, "expression")));
        }
        for rtype in applies {
            let expression = param["expression"].as_str().map(|e| {
                split_union(e)
                    .into_iter()
                    .filter(|b| {
                        let root = branch_root(b);
                        root == rtype || root == "Resource" || root == "DomainResource"
                    })
                    .collect::<Vec<_>>()
                    .join(" | ")
            });
            if expression.as_deref() == Some("") {
                continue;
            }
            let targets: Vec<Value> = param["target"].as_array().cloned().unwrap_or_default();
            let mut row = Map::new();
            row.insert("code".into(), json!(str_of(param, "code")));
            row.insert("type".into(), json!(str_of(param, "type")));
            if let Some(e) = expression {
                row.insert("expression".into(), json!(e));
            }
            if !targets.is_empty() {
                row.insert("targets".into(), Value::Array(targets));
            }
            if !components.is_empty() {
                row.insert("components".into(), Value::Array(components.clone()));
                row.insert(
                    "componentExpressions".into(),
                    Value::Array(component_expressions.clone()),
                );
            }
            if let Some(list) = out.get_mut(rtype) {
                list.push(Value::Object(row));
            }
        }
    }
    for list in out.values_mut() {
        list.sort_by(|a, b| str_of(a, "code").cmp(str_of(b, "code")));
        list.dedup_by(|a, b| str_of(a, "code") == str_of(b, "code"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn union_splits_only_at_top_level() {
        assert_eq!(
            split_union("A.b | (C.d as X) | E.f.where(g = 'a|b')"),
            vec!["A.b", "(C.d as X)", "E.f.where(g = 'a|b')"]
        );
    }

    #[test]
    fn checked_in_tables_are_current() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let source = root.join("../shared/data/fhir-r4");
        if !source.exists() {
            eprintln!(
                "note: {} is absent; staleness not checked",
                source.display()
            );
            return;
        }
        let generated = generate(&source).expect("generation succeeds");
        let checked_in = std::fs::read(root.join(OUTPUT_PATH)).expect("checked-in tables exist");
        assert!(
            generated == checked_in,
            "crates/fhir/definitions/r4.json.gz is stale: run `cargo run -p carevault-codegen`"
        );
        assert!(
            generated.len() < 2_000_000,
            "tables are {} bytes",
            generated.len()
        );
    }
}
