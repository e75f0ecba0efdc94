//! What a token's scopes allow (SMART v1/v2 scope grammar), one of the three parts of the
//! effective permission role ∩ scopes ∩ relationship that [`crate::authz`] intersects.

use crate::App;
use http::HeaderValue;
use serde_json::Value;

/// A FHIR interaction class, as the `c r u d s` letters of SMART v2 scopes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interaction {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Interaction {
    /// The SMART v2 letter.
    fn letter(self) -> char {
        match self {
            Self::Create => 'c',
            Self::Read => 'r',
            Self::Update => 'u',
            Self::Delete => 'd',
            Self::Search => 's',
        }
    }

    /// A word for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Read => "read",
            Self::Update => "update",
            Self::Delete => "delete",
            Self::Search => "search",
        }
    }
}

/// The context prefix of a SMART scope, ordered from narrowest to broadest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ScopeContext {
    /// `patient/`: only the launch patient's compartment.
    Patient,
    /// `user/`: whatever the user may reach.
    User,
    /// `system/`: a backend service; for a user token the same as `user/`.
    System,
}

/// One parsed scope: `system/Observation.rs` → (System, Some("Observation"), "rs").
#[derive(Clone, Debug, PartialEq, Eq)]
struct Grant {
    context: ScopeContext,
    rtype: Option<String>,
    letters: String,
}

/// An authenticated caller and its grants.
#[derive(Clone, Debug)]
pub struct Caller {
    client_id: String,
    grants: Vec<Grant>,
}

impl Caller {
    /// Builds a caller from a client id and a space-separated scope string.
    pub fn new(client_id: String, scope: &str) -> Self {
        Self {
            client_id,
            grants: scope.split_whitespace().filter_map(parse_scope).collect(),
        }
    }

    /// The OAuth client id (logged; never PHI).
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// True when some grant allows `interaction` on `rtype`; `rtype == "*"` asks for every type.
    pub fn allows(&self, rtype: &str, interaction: Interaction) -> bool {
        self.context(rtype, interaction).is_some()
    }

    /// The broadest scope context that allows `interaction` on `rtype`, if any: a `patient/`
    /// grant alone restricts the caller to the launch patient's compartment.
    pub fn context(&self, rtype: &str, interaction: Interaction) -> Option<ScopeContext> {
        self.grants
            .iter()
            .filter(|g| {
                let type_ok = match &g.rtype {
                    None => true,
                    Some(t) => rtype != "*" && t == rtype,
                };
                type_ok && g.letters.contains(interaction.letter())
            })
            .map(|g| g.context)
            .max()
    }
}

/// Parses `system/`, `user/` or `patient/` scopes in v2 (`.cruds` subsets) or v1 (`.read`,
/// `.write`, `.*`) form. Scopes with query qualifiers (`?category=`) grant nothing here: honouring
/// them needs the policy engine.
fn parse_scope(s: &str) -> Option<Grant> {
    let (context, rest) = s.split_once('/')?;
    let context = match context {
        "system" => ScopeContext::System,
        "user" => ScopeContext::User,
        "patient" => ScopeContext::Patient,
        _ => return None,
    };
    if rest.contains('?') {
        return None;
    }
    let (t, perm) = rest.split_once('.')?;
    let rtype = match t {
        "*" => None,
        t if carevault_fhir::definitions().is_resource_type(t) => Some(t.to_string()),
        _ => return None,
    };
    let letters = match perm {
        "read" => "rs".to_string(),
        "write" => "cud".to_string(),
        "*" => "cruds".to_string(),
        p if !p.is_empty() && is_ordered_subset(p, "cruds") => p.to_string(),
        _ => return None,
    };
    Some(Grant {
        context,
        rtype,
        letters,
    })
}

/// SMART v2 requires the letters in `cruds` order without repeats.
fn is_ordered_subset(p: &str, of: &str) -> bool {
    let mut it = of.chars();
    p.chars().all(|c| it.by_ref().any(|o| o == c))
}

/// Verifies the bearer token: the caller's scopes and the token's claims (user, fhirUser,
/// launch patient), which [`crate::authz`] turns into the principal.
pub fn authenticate_claims(
    app: &App,
    header: Option<&HeaderValue>,
) -> Result<(Caller, std::sync::Arc<carevault_auth::Claims>), carevault_auth::TokenError> {
    let claims = app
        .auth
        .verify_bearer(header.and_then(|v| v.to_str().ok()))?;
    Ok((Caller::new(claims.client_id.clone(), &claims.scope), claims))
}

/// The resource types and interactions a batch/transaction Bundle asks for, to check scopes
/// before anything runs.
pub fn bundle_interactions(bundle: &Value) -> Vec<(String, Interaction)> {
    let mut out = Vec::new();
    for entry in bundle
        .get("entry")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let request = entry.get("request");
        let method = request
            .and_then(|r| r.get("method"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let url = request
            .and_then(|r| r.get("url"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let from_url = url.split(['/', '?']).next().unwrap_or("").to_string();
        let rtype = entry
            .get("resource")
            .and_then(|r| r.get("resourceType"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or(from_url.clone());
        let interaction = match method {
            "GET" | "HEAD" if url.contains('?') || !url.contains('/') => Interaction::Search,
            "GET" | "HEAD" => Interaction::Read,
            "POST" => Interaction::Create,
            "PUT" | "PATCH" => Interaction::Update,
            "DELETE" => Interaction::Delete,
            _ => continue,
        };
        // Every resource type named must be allowed; `from_url` covers a PUT whose body disagrees.
        out.push((rtype.clone(), interaction));
        if !from_url.is_empty() && from_url != rtype {
            out.push((from_url, interaction));
        }
    }
    out
}

/// The other resource types a search reaches through its parameters: `_include` targets,
/// `_revinclude` sources, chained parameters and `_has`. The caller's scopes must allow reading
/// each of them, or the search would reveal what the scopes forbid.
pub fn search_reaches(rtype: &str, params: &[(String, String)]) -> Vec<String> {
    let defs = carevault_fhir::definitions();
    let targets_of = |source: &str, code: &str| -> Vec<String> {
        defs.search_param(source, code)
            .map(|p| p.targets.clone())
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for (name, value) in params {
        let base = name.split(':').next().unwrap_or("");
        if base == "_include" || base == "_revinclude" {
            let mut parts = value.split(':');
            let (source, code, target) = (
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
                parts.next(),
            );
            if base == "_revinclude" {
                out.push(source.to_string());
            }
            match target {
                Some(t) => out.push(t.to_string()),
                None if code == "*" => out.push("*".to_string()),
                None => out.extend(targets_of(source, code)),
            }
        } else if let Some(rest) = name.strip_prefix("_has:") {
            out.extend(rest.split(':').next().map(str::to_string));
        } else if let Some((param, _)) = name.split_once('.') {
            // `subject:Patient.name` names its type; `subject.name` reaches every target type.
            match param.split_once(':') {
                Some((_, t)) => out.push(t.to_string()),
                None => out.extend(targets_of(rtype, param)),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_and_v1_scopes() {
        let c = Caller::new("x".into(), "system/Patient.rs system/Observation.write");
        assert!(c.allows("Patient", Interaction::Read));
        assert!(c.allows("Patient", Interaction::Search));
        assert!(!c.allows("Patient", Interaction::Create));
        assert!(c.allows("Observation", Interaction::Create));
        assert!(!c.allows("Observation", Interaction::Read));
        assert!(!c.allows("*", Interaction::Read));
        let all = Caller::new("x".into(), "system/*.*");
        assert!(all.allows("*", Interaction::Delete));
    }

    #[test]
    fn searches_reach_included_chained_and_reverse_chained_types() {
        let p = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let r = search_reaches(
            "Observation",
            &p(&[("_include", "Observation:subject:Patient")]),
        );
        assert_eq!(r, vec!["Patient"]);
        let r = search_reaches("Patient", &p(&[("_revinclude", "Observation:subject")]));
        assert!(r.contains(&"Observation".to_string()));
        let r = search_reaches("Observation", &p(&[("subject:Patient.name", "x")]));
        assert_eq!(r, vec!["Patient"]);
        let r = search_reaches("Observation", &p(&[("patient.name", "x")]));
        assert_eq!(r, vec!["Patient"]);
        let r = search_reaches("Patient", &p(&[("_has:Observation:patient:code", "1")]));
        assert_eq!(r, vec!["Observation"]);
        assert!(search_reaches("Patient", &p(&[("family", "x")])).is_empty());
    }

    #[test]
    fn the_broadest_context_wins() {
        let c = Caller::new("x".into(), "patient/Observation.rs user/Patient.r");
        assert_eq!(
            c.context("Observation", Interaction::Read),
            Some(ScopeContext::Patient)
        );
        assert_eq!(
            c.context("Patient", Interaction::Read),
            Some(ScopeContext::User)
        );
        assert_eq!(c.context("Patient", Interaction::Search), None);
        let both = Caller::new("x".into(), "patient/*.rs user/Observation.rs");
        assert_eq!(
            both.context("Observation", Interaction::Search),
            Some(ScopeContext::User)
        );
        assert_eq!(
            both.context("Encounter", Interaction::Search),
            Some(ScopeContext::Patient)
        );
    }

    #[test]
    fn junk_scopes_grant_nothing() {
        for s in [
            "system/Nope.read",
            "system/*.rc",
            "system/*.rr",
            "admin/*.*",
            "system/*",
            "system/Patient.rs?x=1",
        ] {
            let c = Caller::new("x".into(), s);
            assert!(!c.allows("Patient", Interaction::Read), "{s}");
        }
    }
}
