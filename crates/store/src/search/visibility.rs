//! Who may see and change what: the per-request visibility filter that every read, vread,
//! search (matches, `_include`, `_revinclude`, chains, `_has`, counts and totals), history and
//! Bundle entry goes through, so that a resource the caller may not see answers exactly like one
//! that does not exist.
//!
//! The store does not know roles or policies: the server derives, per request, an [`Access`] for
//! every (operation, resource type) from its authorization decision and hands the store a
//! [`Visibility`]; the store applies it inside its own queries (as plan clauses, so counts and
//! paging are right) and to every resource it is about to return or change.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::Value;

use crate::backend::ParamRef;
use crate::fhirdefs;
use crate::plan::{Cond, Plan};

/// What a caller does to a resource, as far as visibility distinguishes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Read, vread, search, include, history.
    Read,
    /// Create (the new content).
    Create,
    /// Update or patch (the old and the new content).
    Update,
    /// Delete (the old content).
    Delete,
}

/// How much of one resource type a caller may reach for one operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// Nothing of the type.
    Hidden,
    /// Every resource of the type.
    All,
    /// Only resources in the Patient compartment of at least one of these patients (ids, without
    /// `Patient/`) and of no patient outside them.
    Patients(Arc<HashSet<String>>),
}

impl Access {
    /// Whether a resource whose Patient compartment holds exactly `patients` (ids, without
    /// `Patient/`) is within this access: for [`Access::Patients`], in the compartment of at least
    /// one of them and of no patient outside them.
    pub fn admits(&self, patients: &[String]) -> bool {
        match self {
            Access::All => true,
            Access::Hidden => false,
            Access::Patients(set) => in_set(patients, set),
        }
    }
}

/// The rule a [`Visibility`] asks: the caller's access to a type for an operation.
pub type AccessRule = dyn Fn(Op, &str) -> Access + Send + Sync;

/// The visibility a request runs under. [`Visibility::everything`] is for the store's own
/// maintenance, imports and system clients whose scopes alone decide.
#[derive(Clone)]
pub struct Visibility {
    rule: Option<Arc<AccessRule>>,
}

impl std::fmt::Debug for Visibility {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.rule.is_some() {
            "Visibility::Restricted"
        } else {
            "Visibility::Everything"
        })
    }
}

impl Visibility {
    /// Sees and may change everything.
    pub fn everything() -> Self {
        Visibility { rule: None }
    }

    /// Sees what `rule` grants, type by type.
    pub fn restricted(rule: Arc<AccessRule>) -> Self {
        Visibility { rule: Some(rule) }
    }

    /// True for [`Visibility::everything`].
    pub fn is_everything(&self) -> bool {
        self.rule.is_none()
    }

    /// The access to `rtype` for `op`.
    pub fn access(&self, op: Op, rtype: &str) -> Access {
        match &self.rule {
            None => Access::All,
            Some(rule) => rule(op, rtype),
        }
    }

    /// Whether `resource` (of `rtype`) may be reached for `op`.
    pub fn allows(&self, op: Op, rtype: &str, resource: &Value) -> bool {
        match self.access(op, rtype) {
            Access::All => true,
            Access::Hidden => false,
            Access::Patients(set) => within(rtype, resource, &set),
        }
    }

    /// Whether the stored JSON `json` (of `rtype`) may be read; unreadable JSON is not visible.
    pub fn allows_json(&self, op: Op, rtype: &str, json: &[u8]) -> bool {
        match self.access(op, rtype) {
            Access::All => true,
            Access::Hidden => false,
            Access::Patients(set) => serde_json::from_slice::<Value>(json)
                .map(|v| within(rtype, &v, &set))
                .unwrap_or(false),
        }
    }

    /// Adds the read visibility of `plan.rtype` to `plan` as a clause, and likewise to the inner
    /// plans of its chains and `_has` conditions, so that counts, totals and paging only ever see
    /// visible resources and a chain or `_has` can only match through visible ones.
    pub fn restrict(&self, plan: &mut Plan) {
        if self.is_everything() {
            return;
        }
        for clause in plan.clauses.iter_mut() {
            for cond in clause.iter_mut() {
                match cond {
                    Cond::Chain { inner, .. } | Cond::Has { inner, .. } => self.restrict(inner),
                    _ => {}
                }
            }
        }
        if let Some(c) = self.clause(&plan.rtype) {
            plan.clauses.push(vec![c]);
        }
    }

    /// The condition that selects the visible resources of `rtype`, `None` when all are.
    fn clause(&self, rtype: &str) -> Option<Cond> {
        match self.access(Op::Read, rtype) {
            Access::All => None,
            Access::Hidden => Some(Cond::Nothing),
            Access::Patients(set) => {
                let params: Vec<ParamRef> = fhirdefs::definitions()
                    .compartment_params(rtype)
                    .iter()
                    .map(|p| ParamRef::new(rtype, p))
                    .collect();
                let own_id = rtype == "Patient";
                if set.is_empty() || (params.is_empty() && !own_id) {
                    return Some(Cond::Nothing);
                }
                let mut patients: Vec<String> = set.iter().cloned().collect();
                patients.sort();
                Some(Cond::Compartment {
                    params,
                    patients: Arc::new(patients),
                    own_id,
                })
            }
        }
    }
}

/// True when `resource` is in the compartment of at least one patient of `set` and of none
/// outside it.
fn within(rtype: &str, resource: &Value, set: &HashSet<String>) -> bool {
    in_set(
        &carevault_fhir::patient_compartment_refs(rtype, resource),
        set,
    )
}

/// True when `patients` names at least one patient and only patients of `set`.
fn in_set(patients: &[String], set: &HashSet<String>) -> bool {
    !patients.is_empty() && patients.iter().all(|p| set.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn only(patients: &[&str]) -> Visibility {
        let set: Arc<HashSet<String>> =
            Arc::new(patients.iter().map(|p| (*p).to_owned()).collect());
        Visibility::restricted(Arc::new(move |_, t: &str| match t {
            "Practitioner" => Access::All,
            "AuditEvent" => Access::Hidden,
            _ => Access::Patients(set.clone()),
        }))
    }

    #[test]
    fn compartment_membership_decides() {
        let v = only(&["a"]);
        let obs = |p: &str| json!({"resourceType": "Observation", "subject": {"reference": format!("Patient/{p}")}});
        assert!(v.allows(Op::Read, "Observation", &obs("a")));
        assert!(!v.allows(Op::Read, "Observation", &obs("b")));
        // No patient at all: nobody's relationship covers it.
        assert!(!v.allows(
            Op::Read,
            "Observation",
            &json!({"resourceType": "Observation"})
        ));
        // One patient inside, one outside: not visible.
        let both = json!({"resourceType": "Observation", "subject": {"reference": "Patient/a"},
            "performer": [{"reference": "Patient/b"}]});
        assert!(!v.allows(Op::Read, "Observation", &both));
        assert!(v.allows(
            Op::Read,
            "Patient",
            &json!({"resourceType": "Patient", "id": "a"})
        ));
        assert!(!v.allows(
            Op::Read,
            "Patient",
            &json!({"resourceType": "Patient", "id": "b"})
        ));
        assert!(v.allows(
            Op::Read,
            "Practitioner",
            &json!({"resourceType": "Practitioner"})
        ));
        assert!(!v.allows(Op::Read, "AuditEvent", &json!({})));
        assert!(Visibility::everything().allows(Op::Delete, "AuditEvent", &json!({})));
    }

    fn observation(performer: Option<&str>) -> Value {
        let mut o = json!({"resourceType": "Observation", "status": "final",
            "code": {"text": "pulse"}, "subject": {"reference": "Patient/a"}});
        if let Some(p) = performer {
            o["performer"] = json!([{"reference": p}]);
        }
        o
    }

    #[test]
    fn reads_decide_on_the_patients_they_return() {
        use crate::{Rest, RestError};
        let dir = tempfile::tempdir().unwrap();
        let keyring = Arc::new(carevault_crypto::Keyring::from_data_key(1, &[7u8; 32]).unwrap());
        let rest = Rest::new(crate::open_sqlite(&dir.path().join("s.db"), keyring).unwrap());
        for p in ["a", "b"] {
            rest.update(
                "Patient",
                p,
                json!({"resourceType": "Patient", "id": p}),
                None,
            )
            .unwrap();
        }
        let prac = rest
            .create(
                "Practitioner",
                json!({"resourceType": "Practitioner"}),
                None,
            )
            .unwrap()
            .stored
            .id;
        let own = rest
            .create("Observation", observation(None), None)
            .unwrap()
            .stored
            .id;
        let shared = rest
            .create("Observation", observation(Some("Patient/b")), None)
            .unwrap()
            .stored
            .id;
        let by_prac = rest
            .create(
                "Observation",
                observation(Some(&format!("Practitioner/{prac}"))),
                None,
            )
            .unwrap()
            .stored
            .id;
        let gone = rest
            .create("Observation", observation(None), None)
            .unwrap()
            .stored
            .id;
        rest.delete("Observation", &gone).unwrap();

        let a = rest.restricted(only(&["a"]));
        let s = a.read("Observation", &own).unwrap();
        assert_eq!(s.patients, Some(vec!["a".to_owned()]));
        assert_eq!(
            a.read("Observation", &by_prac).unwrap().patients,
            Some(vec!["a".to_owned()]),
            "a practitioner reference puts nobody else in the compartment"
        );
        assert_eq!(
            a.vread("Observation", &own, "1").unwrap().patients,
            Some(vec!["a".to_owned()])
        );
        assert_eq!(
            a.read("Patient", "a").unwrap().patients,
            Some(vec!["a".to_owned()])
        );
        // In b's compartment too: the same 404 as an id that does not exist.
        for r in [
            a.read("Observation", &shared),
            a.vread("Observation", &shared, "1"),
            a.read("Observation", "no-such-id"),
            a.read("Patient", "b"),
        ] {
            assert!(matches!(r, Err(RestError::NotFound { .. })), "{r:?}");
        }
        assert!(matches!(
            a.read("Observation", &gone),
            Err(RestError::Gone { version: 2, .. })
        ));
        // A type seen whole carries the patients recorded with the version (a Practitioner is in
        // nobody's compartment); a hidden one is absent.
        assert_eq!(
            a.read("Practitioner", &prac).unwrap().patients,
            Some(Vec::new())
        );
        let events = rest.restricted(Visibility::restricted(Arc::new(|_, _: &str| {
            Access::Hidden
        })));
        assert!(matches!(
            events.read("Observation", &own),
            Err(RestError::NotFound { .. })
        ));

        let both = rest.restricted(only(&["a", "b"]));
        let mut ps = both.read("Observation", &shared).unwrap().patients.unwrap();
        ps.sort();
        assert_eq!(ps, ["a", "b"]);
        assert!(matches!(
            both.vread("Observation", &gone, "2"),
            Err(RestError::Gone { .. })
        ));
        // History opens what it decides on once and shows the same versions as the reads do.
        let h = a
            .history(&crate::HistoryRequest {
                rtype: Some("Observation"),
                id: None,
                params: &[],
                base_url: "https://x/fhir",
            })
            .unwrap();
        let mut shown: Vec<String> = h["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let id = e["fullUrl"].as_str().unwrap().rsplit('/').next().unwrap();
                let has = if e.get("resource").is_some() {
                    "+"
                } else {
                    "-"
                };
                format!("{id}{has}")
            })
            .collect();
        shown.sort();
        let mut want = vec![
            format!("{own}+"),
            format!("{by_prac}+"),
            format!("{gone}+"),
            format!("{gone}-"),
        ];
        want.sort();
        assert_eq!(shown, want);
        // Unrestricted reads carry the patients recorded with the version.
        assert_eq!(
            rest.read("Observation", &own).unwrap().patients,
            Some(vec!["a".to_owned()])
        );
    }

    #[test]
    fn access_admits_by_compartment() {
        let set: Arc<HashSet<String>> = Arc::new(["a".to_owned()].into());
        let p = |ids: &[&str]| ids.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(Access::Patients(set.clone()).admits(&p(&["a"])));
        assert!(!Access::Patients(set.clone()).admits(&p(&["a", "b"])));
        assert!(!Access::Patients(set).admits(&[]));
        assert!(Access::All.admits(&[]));
        assert!(!Access::Hidden.admits(&p(&["a"])));
    }

    #[test]
    fn restriction_reaches_into_chains_and_has() {
        let v = only(&["a"]);
        let mut plan = Plan {
            rtype: "Practitioner".into(),
            clauses: vec![vec![Cond::Has {
                param: ParamRef::new("Observation", "performer"),
                inner: Box::new(Plan::all("Observation")),
            }]],
        };
        v.restrict(&mut plan);
        // Practitioner is visible to all: no clause of its own, but the inner Observation plan is
        // restricted to patient a.
        assert_eq!(plan.clauses.len(), 1);
        let Cond::Has { inner, .. } = &plan.clauses[0][0] else {
            panic!("not a _has")
        };
        assert!(matches!(
            &inner.clauses[0][0],
            Cond::Compartment { patients, own_id: false, .. } if patients.as_slice() == ["a"]
        ));
        let mut audit = Plan::all("AuditEvent");
        v.restrict(&mut audit);
        assert_eq!(audit.clauses, vec![vec![Cond::Nothing]]);
    }
}
