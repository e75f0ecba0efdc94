//! The CapabilityStatement: what this server implements, built once from the definitions.

use serde_json::{Value, json};

/// Serialised CapabilityStatement for `base_url`.
pub fn capability_statement(base_url: &str) -> bytes::Bytes {
    let defs = carevault_fhir::definitions();
    let interactions: Vec<Value> = [
        "read",
        "vread",
        "update",
        "patch",
        "delete",
        "history-instance",
        "history-type",
        "create",
        "search-type",
    ]
    .iter()
    .map(|c| json!({"code": c}))
    .collect();
    let resources: Vec<Value> = defs
        .resource_types()
        .map(|t| {
            let params: Vec<Value> = defs
                .search_params(t)
                .iter()
                .filter(|p| !matches!(p.kind, carevault_fhir::SearchParamType::Special | carevault_fhir::SearchParamType::Composite))
                .map(|p| json!({"name": p.code, "type": search_type_code(p.kind)}))
                .collect();
            let mut r = json!({
                "type": t,
                "interaction": interactions,
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": true,
                "conditionalUpdate": true,
                "conditionalDelete": "single",
                "searchParam": params,
                "operation": [{"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"}],
            });
            if t == "AuditEvent" {
                r["interaction"] = json!([{"code": "read"}, {"code": "vread"}, {"code": "search-type"}, {"code": "history-instance"}]);
            }
            r
        })
        .collect();
    let root = base_url.trim_end_matches("/fhir").to_string();
    let oauth_uri =
        |name: &str, path: &str| json!({"url": name, "valueUri": format!("{root}{path}")});
    let statement = json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-28",
        "kind": "instance",
        "software": {"name": "carevault", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "carevault FHIR R4 server", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [{
            "mode": "server",
            "security": {
                "cors": false,
                "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR"}]}],
                "extension": [{
                    "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                    "extension": [
                        oauth_uri("authorize", "/oauth2/authorize"),
                        oauth_uri("token", "/oauth2/token"),
                        oauth_uri("revoke", "/oauth2/revoke"),
                        oauth_uri("introspect", "/oauth2/introspect"),
                    ]
                }]
            },
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}, {"code": "history-system"}],
        }]
    });
    bytes::Bytes::from(serde_json::to_vec(&statement).unwrap_or_default())
}

fn search_type_code(kind: carevault_fhir::SearchParamType) -> &'static str {
    use carevault_fhir::SearchParamType::*;
    match kind {
        Number => "number",
        Date => "date",
        String => "string",
        Token => "token",
        Reference => "reference",
        Composite => "composite",
        Quantity => "quantity",
        Uri => "uri",
        Special => "special",
    }
}
