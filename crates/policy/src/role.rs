//! The ten built-in roles of PRODUCT.md 2.3 and their snake_case names.

use std::fmt;
use std::str::FromStr;

/// A built-in role an account holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Physician: the chart with a care relationship (or break-the-glass).
    Physician,
    /// Nurse: the chart and scheduling with a care relationship (or break-the-glass).
    Nurse,
    /// Pharmacist: reads the chart, writes medication resources.
    Pharmacist,
    /// Laboratory, imaging and other clinical support: orders and results.
    ClinicalSupport,
    /// Front desk: demographics, scheduling, coverage.
    Registration,
    /// Billing staff: financial resources with a billing relationship.
    Billing,
    /// Reads the audit trail.
    Auditor,
    /// Administers accounts, clients and policies; no patient data.
    SecurityAdmin,
    /// Administers the directory, keys, backups and configuration; no patient data.
    SystemAdmin,
    /// A patient reaching their own record.
    Patient,
}

impl Role {
    /// Every built-in role, in the order of the roles table.
    pub const ALL: [Role; 10] = [
        Role::Physician,
        Role::Nurse,
        Role::Pharmacist,
        Role::ClinicalSupport,
        Role::Registration,
        Role::Billing,
        Role::Auditor,
        Role::SecurityAdmin,
        Role::SystemAdmin,
        Role::Patient,
    ];

    /// The role's name as written in commands, records and policies (`clinical_support`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Physician => "physician",
            Role::Nurse => "nurse",
            Role::Pharmacist => "pharmacist",
            Role::ClinicalSupport => "clinical_support",
            Role::Registration => "registration",
            Role::Billing => "billing",
            Role::Auditor => "auditor",
            Role::SecurityAdmin => "security_admin",
            Role::SystemAdmin => "system_admin",
            Role::Patient => "patient",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not one of the built-in roles.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown role {0:?}; the roles are physician, nurse, pharmacist, clinical_support, registration, billing, auditor, security_admin, system_admin and patient"
)]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
        assert_eq!(
            "clinical_support".parse::<Role>(),
            Ok(Role::ClinicalSupport)
        );
        assert!("Physician".parse::<Role>().is_err());
        assert!("admin".parse::<Role>().is_err());
    }
}
