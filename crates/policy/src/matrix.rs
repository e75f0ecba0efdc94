//! The authorization matrix: every built-in role × a representative type of each class × each
//! interaction, written by hand from the roles table of PRODUCT.md 2.3, checked against the
//! built-in policy under every combination of the facts.

use std::sync::Arc;
use std::time::Duration;

use carevault_auth::{MemoryRecordStore, RecordStore};
use carevault_crypto::ManualClock;

use crate::*;

/// The types the matrix covers, in column-group order.
const TYPES: [&str; 11] = [
    "Patient",           // demographics
    "Observation",       // clinical (a result)
    "Condition",         // clinical
    "MedicationRequest", // clinical (an order, a medication type)
    "Encounter",         // scheduling
    "Appointment",       // scheduling
    "Coverage",          // financial
    "Claim",             // financial
    "Practitioner",      // directory
    "AuditEvent",        // security
    "Consent",           // security
];

// Each cell is five letters, one per action in the order C R U D S (create, read, update,
// delete, search):
//   A  allowed, no condition          -  never allowed
//   r  with a care relationship        R  with a care relationship or break-the-glass
//   b  with a billing relationship     o  within the user's own Patient compartment
const MATRIX: &str = "
role              Patient Observation Condition MedicationRequest Encounter Appointment Coverage Claim Practitioner AuditEvent Consent
physician         -Ar-A   RRRRR       RRRRR     RRRRR             -r--r     -r--r       -----    ----- -A--A        -----      -----
nurse             -Ar-A   RRR-R       RRR-R     RRR-R             rrr-r     rrr-r       -----    ----- -A--A        -----      -----
pharmacist        -A--A   -R--R       -R--R     RRR-R             -r--r     -r--r       -----    ----- -A--A        -----      -----
clinical_support  -A--A   rrr-r       -----     -r--r             -r--r     -r--r       -----    ----- -A--A        -----      -----
registration      AAA-A   -----       -----     -----             AAA-A     AAA-A       -A--A    ----- -A--A        -----      -----
billing           -A--A   -----       -----     -----             -b--b     -b--b       bbb-b    bbb-b -A--A        -----      -----
auditor           -A--A   -----       -----     -----             -----     -----       -----    ----- -A--A        -A--A      -----
security_admin    -----   -----       -----     -----             -----     -----       -----    ----- -A--A        -----      -----
system_admin      -----   -----       -----     -----             -----     -----       -----    ----- AAA-A        -----      -----
patient           -o--o   -o--o       -o--o     -o--o             -o--o     -o--o       -o--o    -o--o -A--A        -o--o      -o--o
system-client     AAAAA   AAAAA       AAAAA     AAAAA             AAAAA     AAAAA       AAAAA    AAAAA AAAAA        -A--A      AAAAA
";

const ACTIONS: [Action; 5] = [
    Action::Create,
    Action::Read,
    Action::Update,
    Action::Delete,
    Action::Search,
];

fn principal(role: &str) -> Principal {
    if role == "system-client" {
        return Principal {
            client_id: "lab-interface".into(),
            ..Principal::default()
        };
    }
    Principal {
        user: Some(format!("{role}-user")),
        roles: vec![role.parse().expect("a role of the table")],
        client_id: "carevault-web".into(),
        ..Principal::default()
    }
}

fn allowed_by_cell(cell: char, f: &Facts) -> bool {
    match cell {
        'A' => true,
        '-' => false,
        'r' => f.relationship,
        'R' => f.relationship || f.break_glass,
        'b' => f.billing_relationship,
        'o' => f.own_compartment,
        other => panic!("unknown cell letter {other:?}"),
    }
}

fn requirement_of_cell(cell: char) -> Requirement {
    match cell {
        'A' => Requirement::Always,
        '-' => Requirement::Never,
        'r' => Requirement::Relationship { break_glass: false },
        'R' => Requirement::Relationship { break_glass: true },
        'b' => Requirement::BillingRelationship,
        'o' => Requirement::OwnCompartment,
        other => panic!("unknown cell letter {other:?}"),
    }
}

fn all_facts() -> Vec<Facts> {
    (0..16u8)
        .map(|m| Facts {
            relationship: m & 1 != 0,
            break_glass: m & 2 != 0,
            billing_relationship: m & 4 != 0,
            own_compartment: m & 8 != 0,
        })
        .collect()
}

#[test]
fn the_roles_table_of_product_2_3_holds_cell_by_cell() {
    let engine = Engine::builtin().unwrap();
    let mut lines = MATRIX.trim().lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(&header[1..], &TYPES[..], "the header names the types");
    let mut checked = 0;
    let mut roles_seen = Vec::new();
    for line in lines {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols.len(), TYPES.len() + 1, "row {line:?}");
        let role = cols[0];
        roles_seen.push(role);
        let p = principal(role);
        for (rtype, cell) in TYPES.iter().zip(&cols[1..]) {
            let cells: Vec<char> = cell.chars().collect();
            assert_eq!(cells.len(), 5, "{role} {rtype}");
            for (action, &c) in ACTIONS.iter().zip(&cells) {
                for f in all_facts() {
                    let d = engine.decide(&p, *action, rtype, &f);
                    assert_eq!(
                        d.allowed,
                        allowed_by_cell(c, &f),
                        "{role} {action} {rtype} with {f:?}: {}",
                        d.reason
                    );
                    checked += 1;
                }
                assert_eq!(
                    engine.requirement(&p, *action, rtype),
                    requirement_of_cell(c),
                    "requirement of {role} {action} {rtype}"
                );
            }
        }
    }
    let mut expected_roles: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
    expected_roles.push("system-client");
    assert_eq!(roles_seen, expected_roles, "every role has a row");
    assert_eq!(checked, 11 * 11 * 5 * 16);
}

#[test]
fn reasons_name_the_deciding_policy() {
    let engine = Engine::builtin().unwrap();
    let physician = principal("physician");
    let with_rel = Facts {
        relationship: true,
        ..Facts::default()
    };
    let d = engine.decide(&physician, Action::Read, "Observation", &with_rel);
    assert_eq!(
        d,
        Decision {
            allowed: true,
            reason: "permitted by physician-clinical".into()
        }
    );
    let d = engine.decide(&physician, Action::Read, "Observation", &Facts::default());
    assert!(!d.allowed);
    assert_eq!(
        d.reason,
        "no policy permits role physician to read Observation (clinical) with these facts"
    );
    let d = engine.decide(
        &principal("system-client"),
        Action::Create,
        "AuditEvent",
        &with_rel,
    );
    assert_eq!(d.reason, "forbidden by audit-events-are-server-written");
}

#[test]
fn several_roles_get_the_union_and_the_weakest_requirement() {
    let engine = Engine::builtin().unwrap();
    let p = Principal {
        user: Some("dr-billing".into()),
        roles: vec![Role::Physician, Role::Registration],
        ..Principal::default()
    };
    // Registration may update scheduling without a relationship; physician alone could not.
    assert_eq!(
        engine.requirement(&p, Action::Update, "Encounter"),
        Requirement::Always
    );
    assert_eq!(
        engine.requirement(&p, Action::Read, "Observation"),
        Requirement::Relationship { break_glass: true }
    );
    // An account with no roles reaches nothing, not even the directory.
    let none = Principal {
        user: Some("nobody".into()),
        ..Principal::default()
    };
    assert_eq!(
        engine.requirement(&none, Action::Read, "Practitioner"),
        Requirement::Never
    );
    // The cache answers the same as a fresh evaluation.
    assert_eq!(
        engine.requirement(&p, Action::Update, "Encounter"),
        Requirement::Always
    );
}

#[test]
fn a_syntax_error_names_line_and_column() {
    let text = "permit (principal, action, resource);\n\npermit (principal action, resource);\n";
    match Engine::from_text(text) {
        Err(PolicyError::Syntax { line, column, .. }) => {
            assert_eq!(line, 3);
            assert!(column > 1 && column < 30, "column {column}");
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

#[test]
fn a_policy_that_does_not_fit_the_schema_is_rejected_with_its_place() {
    let text = "@id(\"ok\")\npermit (principal, action, resource);\n@id(\"bad\")\npermit (principal, action, resource)\n  when { resource.ward == \"3B\" };\n";
    match Engine::from_text(text) {
        Err(PolicyError::Invalid {
            policy,
            line,
            message,
            ..
        }) => {
            assert_eq!(policy, "bad");
            assert_eq!(line, 5, "{message}");
        }
        other => panic!("expected a validation error, got {other:?}"),
    }
    let unknown_action = "permit (principal, action == Action::\"export\", resource);";
    assert!(matches!(
        Engine::from_text(unknown_action),
        Err(PolicyError::Invalid { .. })
    ));
}

#[test]
fn set_policy_stores_only_valid_text_and_a_server_picks_it_up_within_a_second() {
    let store: Arc<dyn RecordStore> = Arc::new(MemoryRecordStore::new());
    let clock = Arc::new(ManualClock::at_unix(1_800_000_000));
    let active = ActivePolicy::open(store.clone(), clock.clone()).unwrap();
    let nurse = principal("nurse");
    assert_eq!(active.engine().text(), BUILTIN_POLICY);
    assert_eq!(
        active
            .engine()
            .requirement(&nurse, Action::Read, "Observation"),
        Requirement::Relationship { break_glass: true }
    );

    // Rejected: nothing is stored, the built-in policy stays.
    assert!(set_policy(&*store, "permit (principal, action, resource").is_err());
    assert_eq!(stored_policy(&*store).unwrap(), None);

    // A stricter policy: nurses read the directory only.
    let strict = "@id(\"nurse-directory\")\npermit (principal in Role::\"nurse\", action == Action::\"read\", resource)\n  when { resource.class == \"directory\" };\n";
    set_policy(&*store, strict).unwrap();
    assert_eq!(stored_policy(&*store).unwrap().as_deref(), Some(strict));
    // Within the poll interval the old engine still answers ...
    clock.advance(Duration::from_millis(500));
    assert_eq!(active.engine().text(), BUILTIN_POLICY);
    // ... and after it the new one does.
    clock.advance(Duration::from_millis(600));
    let e = active.engine();
    assert_eq!(e.text(), strict);
    assert_eq!(
        e.requirement(&nurse, Action::Read, "Observation"),
        Requirement::Never
    );
    assert_eq!(
        e.requirement(&nurse, Action::Read, "Location"),
        Requirement::Always
    );

    // A stored policy that no longer compiles (written behind carevault's back) keeps the
    // previous engine in force.
    store
        .put(POLICY_RECORD_KIND, POLICY_RECORD_KEY, b"forbid (")
        .unwrap();
    clock.advance(Duration::from_secs(2));
    assert_eq!(active.engine().text(), strict);
    // ... and a fresh start refuses it.
    assert!(ActivePolicy::open(store, clock).is_err());
}

#[test]
fn the_builtin_policy_validates_against_the_schema() {
    let schema = schema().unwrap();
    let set: cedar_policy::PolicySet = BUILTIN_POLICY.parse().unwrap();
    let result =
        cedar_policy::Validator::new(schema).validate(&set, cedar_policy::ValidationMode::Strict);
    let errors: Vec<String> = result.validation_errors().map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}");
    // Every policy carries an @id, so reasons and errors name it.
    for p in set.policies() {
        assert!(p.annotation("id").is_some(), "{} has no @id", p.id());
    }
}

#[test]
fn a_policy_naming_a_user_is_decided_per_user_not_per_role_set() {
    let text = "@id(\"alice-reads\")\npermit (principal == User::\"alice\", action == Action::\"read\", resource)\n  when { resource.class == \"clinical\" };\n";
    let engine = Engine::from_text(text).unwrap();
    let user = |name: &str| Principal {
        user: Some(name.into()),
        roles: vec![Role::Nurse],
        ..Principal::default()
    };
    // Same roles, different answers, in either order of asking.
    for _ in 0..2 {
        assert_eq!(
            engine.requirement(&user("alice"), Action::Read, "Observation"),
            Requirement::Always
        );
        assert_eq!(
            engine.requirement(&user("bob"), Action::Read, "Observation"),
            Requirement::Never
        );
        assert!(
            engine
                .decide(&user("alice"), Action::Read, "Condition", &Facts::default())
                .allowed
        );
        assert!(
            !engine
                .decide(&user("bob"), Action::Read, "Condition", &Facts::default())
                .allowed
        );
    }
}
