//! SMART on FHIR scopes (v2 `cruds` and v1 `read`/`write`/`*`): syntax and coverage.

use std::fmt;

/// Why a scope string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid scope {scope:?}: {reason}")]
pub struct ScopeError {
    /// The scope as given.
    pub scope: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Whose data a scope reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Context {
    /// The patient in context (`patient/`).
    Patient,
    /// Whatever the signed-in user may see (`user/`).
    User,
    /// A backend system (`system/`).
    System,
}

/// Interactions a scope allows, as SMART v2 letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Permissions {
    /// `c`: create.
    pub create: bool,
    /// `r`: read (and vread, history).
    pub read: bool,
    /// `u`: update.
    pub update: bool,
    /// `d`: delete.
    pub delete: bool,
    /// `s`: search.
    pub search: bool,
}

impl Permissions {
    fn covers(self, other: Permissions) -> bool {
        (self.create || !other.create)
            && (self.read || !other.read)
            && (self.update || !other.update)
            && (self.delete || !other.delete)
            && (self.search || !other.search)
    }
}

/// Scopes of SMART apps that name no resource: identity (`openid`, `fhirUser`, `profile`),
/// standalone launch context (`launch/patient`) and refresh tokens (`offline_access`,
/// `online_access`).
pub const SPECIAL_SCOPES: &[&str] = &[
    "openid",
    "fhirUser",
    "profile",
    "launch/patient",
    "offline_access",
    "online_access",
];

/// Whether `s` is one of [`SPECIAL_SCOPES`].
pub fn is_special(s: &str) -> bool {
    SPECIAL_SCOPES.contains(&s)
}

/// Non-FHIR resources carevault guards with scopes (e.g. `system/metrics.read`).
const PSEUDO_RESOURCES: &[&str] = &["metrics"];

/// A parsed SMART scope such as `system/Patient.rs` or `system/*.read`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    /// Whose data.
    pub context: Context,
    /// The resource type, or `None` for `*`.
    pub resource: Option<String>,
    /// The interactions allowed.
    pub permissions: Permissions,
    text: String,
}

impl Scope {
    /// Parses one scope.
    pub fn parse(text: &str) -> Result<Self, ScopeError> {
        let err = |reason| ScopeError {
            scope: text.to_owned(),
            reason,
        };
        if text.contains('?') {
            return Err(err("scope parameters (?...) are not supported yet"));
        }
        let (context, rest) = text
            .split_once('/')
            .ok_or_else(|| err("expected patient/, user/ or system/"))?;
        let context = match context {
            "patient" => Context::Patient,
            "user" => Context::User,
            "system" => Context::System,
            _ => return Err(err("expected patient/, user/ or system/")),
        };
        let (resource, perms) = rest
            .split_once('.')
            .ok_or_else(|| err("expected Type.permissions"))?;
        let resource = if resource == "*" {
            None
        } else if is_resource_type(resource) || PSEUDO_RESOURCES.contains(&resource) {
            Some(resource.to_owned())
        } else {
            return Err(err(
                "the resource type must be * or a FHIR resource type name",
            ));
        };
        let permissions = parse_permissions(perms).ok_or_else(|| {
            err("permissions must be read, write, * or SMART v2 letters from cruds in that order")
        })?;
        Ok(Self {
            context,
            resource,
            permissions,
            text: text.to_owned(),
        })
    }

    /// Parses a space-separated list, refusing empty lists and rejecting the first bad scope.
    pub fn parse_list(text: &str) -> Result<Vec<Self>, ScopeError> {
        let scopes = text
            .split_ascii_whitespace()
            .map(Self::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if scopes.is_empty() {
            return Err(ScopeError {
                scope: text.to_owned(),
                reason: "at least one scope is required",
            });
        }
        Ok(scopes)
    }

    /// Whether everything `other` allows is allowed by `self`.
    pub fn covers(&self, other: &Scope) -> bool {
        self.context == other.context
            && match (&self.resource, &other.resource) {
                (None, _) => other
                    .resource
                    .as_deref()
                    .is_none_or(|r| !PSEUDO_RESOURCES.contains(&r)),
                (Some(a), Some(b)) => a == b,
                (Some(_), None) => false,
            }
            && self.permissions.covers(other.permissions)
    }

    /// The scope as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn is_resource_type(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=64).contains(&b.len())
        && b[0].is_ascii_uppercase()
        && b.iter().all(u8::is_ascii_alphanumeric)
}

fn parse_permissions(p: &str) -> Option<Permissions> {
    let all = Permissions {
        create: true,
        read: true,
        update: true,
        delete: true,
        search: true,
    };
    match p {
        "*" => return Some(all),
        "read" => {
            return Some(Permissions {
                read: true,
                search: true,
                ..Default::default()
            });
        }
        "write" => {
            return Some(Permissions {
                create: true,
                update: true,
                delete: true,
                ..Default::default()
            });
        }
        _ => {}
    }
    // SMART v2: a non-empty subsequence of "cruds", in that order, each letter at most once.
    let mut out = Permissions::default();
    let mut order = "cruds".chars();
    if p.is_empty() {
        return None;
    }
    for c in p.chars() {
        // Advance through "cruds" until c is found; an out-of-order or repeated letter runs off the end.
        order.by_ref().find(|&o| o == c)?;
        match c {
            'c' => out.create = true,
            'r' => out.read = true,
            'u' => out.update = true,
            'd' => out.delete = true,
            's' => out.search = true,
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_smart_v1_and_v2_forms() {
        for s in [
            "system/*.*",
            "system/*.rs",
            "system/Patient.cruds",
            "system/Observation.c",
            "system/*.read",
            "system/*.write",
            "patient/Observation.rs",
            "user/Encounter.read",
            "system/metrics.read",
        ] {
            assert!(Scope::parse(s).is_ok(), "{s}");
        }
    }

    #[test]
    fn rejects_junk() {
        for s in [
            "",
            "system",
            "system/",
            "system/*",
            "system/*.",
            "system/*.x",
            "system/*.srs",
            "system/*.sr",
            "system/*.rr",
            "system/patient.read",
            "system/Pat-ient.read",
            "admin/*.*",
            "openid",
            "system/*.rs?category=laboratory",
            "system/*.read write",
            "System/*.read",
        ] {
            assert!(Scope::parse(s).is_err(), "{s:?} should be rejected");
        }
        assert!(Scope::parse_list("  ").is_err());
        assert_eq!(
            Scope::parse_list("system/*.rs  system/Patient.c")
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn coverage() {
        let p = |s| Scope::parse(s).unwrap();
        assert!(p("system/*.*").covers(&p("system/Patient.read")));
        assert!(p("system/*.*").covers(&p("system/Observation.cruds")));
        assert!(p("system/*.read").covers(&p("system/Patient.rs")));
        assert!(!p("system/*.read").covers(&p("system/Patient.c")));
        assert!(p("system/Patient.cruds").covers(&p("system/Patient.write")));
        assert!(!p("system/Patient.cruds").covers(&p("system/*.r")));
        assert!(!p("system/Patient.cruds").covers(&p("system/Observation.r")));
        assert!(!p("system/*.*").covers(&p("patient/Patient.r")));
        // `*` means every FHIR type, not carevault's own pseudo-resources.
        assert!(!p("system/*.*").covers(&p("system/metrics.read")));
        assert!(p("system/metrics.read").covers(&p("system/metrics.r")));
    }
}
