//! Resource classes (PRODUCT.md 2.3) and the interactions a policy decides on.

use std::fmt;
use std::str::FromStr;

/// The class of a resource type, which the roles table grants access by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Patient, Person, RelatedPerson.
    Demographics,
    /// Every other type in the Patient compartment that no other class claims.
    Clinical,
    /// Appointment, AppointmentResponse, Schedule, Slot, Encounter (admission data).
    Scheduling,
    /// Account, Claim, Coverage, Invoice and the other billing types.
    Financial,
    /// Types outside any patient compartment (Practitioner, Organization, Medication, ...).
    Directory,
    /// AuditEvent and Consent.
    Security,
}

impl Class {
    /// Every class.
    pub const ALL: [Class; 6] = [
        Class::Demographics,
        Class::Clinical,
        Class::Scheduling,
        Class::Financial,
        Class::Directory,
        Class::Security,
    ];

    /// The class's name as policies see it (`resource.class`).
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Demographics => "demographics",
            Class::Clinical => "clinical",
            Class::Scheduling => "scheduling",
            Class::Financial => "financial",
            Class::Directory => "directory",
            Class::Security => "security",
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

const DEMOGRAPHICS: &[&str] = &["Patient", "Person", "RelatedPerson"];
const SCHEDULING: &[&str] = &[
    "Appointment",
    "AppointmentResponse",
    "Schedule",
    "Slot",
    "Encounter",
];
const FINANCIAL: &[&str] = &[
    "Account",
    "ChargeItem",
    "Claim",
    "ClaimResponse",
    "Coverage",
    "CoverageEligibilityRequest",
    "CoverageEligibilityResponse",
    "ExplanationOfBenefit",
    "Invoice",
    "PaymentNotice",
    "PaymentReconciliation",
];
const SECURITY: &[&str] = &["AuditEvent", "Consent"];

/// The class of resource type `rtype` (PRODUCT.md 2.3 "Resource classes"). Types that are in no
/// Patient compartment, unknown names included, are directory types.
pub fn class_of(rtype: &str) -> Class {
    if DEMOGRAPHICS.contains(&rtype) {
        Class::Demographics
    } else if SCHEDULING.contains(&rtype) {
        Class::Scheduling
    } else if FINANCIAL.contains(&rtype) {
        Class::Financial
    } else if SECURITY.contains(&rtype) {
        Class::Security
    } else if !carevault_fhir::definitions()
        .compartment_params(rtype)
        .is_empty()
    {
        Class::Clinical
    } else {
        Class::Directory
    }
}

/// An interaction class a policy decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// create (also conditional create).
    Create,
    /// read, vread and history.
    Read,
    /// update and patch.
    Update,
    /// delete.
    Delete,
    /// search (and what a search reaches: `_include`, `_revinclude`, `_has`, counts).
    Search,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 5] = [
        Action::Create,
        Action::Read,
        Action::Update,
        Action::Delete,
        Action::Search,
    ];

    /// The action's name in policies (`Action::"read"`) and commands.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Read => "read",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::Search => "search",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An action name that is not one of create, read, update, delete, search.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown action {0:?}; use create, read, update, delete or search")]
pub struct UnknownAction(pub String);

impl FromStr for Action {
    type Err = UnknownAction;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| UnknownAction(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_product_section_2_3() {
        let expect = [
            ("Patient", Class::Demographics),
            ("Person", Class::Demographics),
            ("RelatedPerson", Class::Demographics),
            ("Observation", Class::Clinical),
            ("Condition", Class::Clinical),
            ("MedicationRequest", Class::Clinical),
            ("CareTeam", Class::Clinical),
            ("Appointment", Class::Scheduling),
            ("AppointmentResponse", Class::Scheduling),
            ("Schedule", Class::Scheduling),
            ("Slot", Class::Scheduling),
            ("Encounter", Class::Scheduling),
            ("Coverage", Class::Financial),
            ("Claim", Class::Financial),
            ("ExplanationOfBenefit", Class::Financial),
            ("CoverageEligibilityResponse", Class::Financial),
            ("Practitioner", Class::Directory),
            ("PractitionerRole", Class::Directory),
            ("Organization", Class::Directory),
            ("Location", Class::Directory),
            ("Medication", Class::Directory),
            ("ValueSet", Class::Directory),
            ("AuditEvent", Class::Security),
            ("Consent", Class::Security),
        ];
        for (t, c) in expect {
            assert_eq!(class_of(t), c, "{t}");
        }
    }

    #[test]
    fn action_names_round_trip() {
        for a in Action::ALL {
            assert_eq!(a.as_str().parse::<Action>(), Ok(a));
        }
        assert!("write".parse::<Action>().is_err());
    }
}
