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
    let patients = carevault_fhir::patient_compartment_refs(rtype, resource);
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
