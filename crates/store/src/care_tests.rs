//! Tests of the care-relationship rows (PRODUCT.md 2.3 rules 1-6) through real writes on real
//! SQLite files: each rule, the window edges, updates moving a relationship, deletions removing
//! it, and the backfill of a store from before the tables existed.

use std::sync::Arc;

use carevault_crypto::Keyring;
use serde_json::{Value, json};

use crate::care::{CareWindows, DAY_MS};
use crate::{Rest, Store, open_sqlite};

/// 2025-03-10T09:00:00Z in ms since the epoch.
const ENC_START: i64 = 1_741_597_200_000;
/// The end of 2025-03-10T10:00:00Z: a value with seconds covers that whole second.
const ENC_END: i64 = 1_741_600_801_000;
/// 2025-06-01T14:00:00Z.
const APPT_START: i64 = 1_748_786_400_000;
/// The end of 2025-06-01T14:30:00Z.
const APPT_END: i64 = 1_748_788_201_000;

fn keyring() -> Arc<Keyring> {
    Arc::new(Keyring::from_data_key(1, &[9u8; 32]).unwrap())
}

fn setup() -> (tempfile::TempDir, Rest) {
    let dir = tempfile::tempdir().unwrap();
    let store = open_sqlite(&dir.path().join("store.db"), keyring()).unwrap();
    (dir, Rest::new(store))
}

fn put(rest: &Rest, resource: Value) {
    let rtype = resource["resourceType"].as_str().unwrap().to_owned();
    let id = resource["id"].as_str().unwrap().to_owned();
    rest.update(&rtype, &id, resource, None).unwrap();
}

/// Practitioners pr1..pr6, locations ward-a and ward-b, patients pa1 and pa2, and the role
/// `role2` of pr2 at ward-a.
fn directory(rest: &Rest) {
    for p in ["pr1", "pr2", "pr3", "pr4", "pr5", "pr6"] {
        put(rest, json!({"resourceType": "Practitioner", "id": p}));
    }
    for l in ["ward-a", "ward-b"] {
        put(rest, json!({"resourceType": "Location", "id": l}));
    }
    for p in ["pa1", "pa2"] {
        put(rest, json!({"resourceType": "Patient", "id": p}));
    }
    put(
        rest,
        json!({"resourceType": "PractitionerRole", "id": "role2", "active": true,
               "practitioner": {"reference": "Practitioner/pr2"},
               "location": [{"reference": "Location/ward-a"}]}),
    );
}

fn finished_encounter(id: &str, patient: &str, who: &[&str]) -> Value {
    let participant: Vec<Value> = who
        .iter()
        .map(|w| json!({"individual": {"reference": w}}))
        .collect();
    json!({"resourceType": "Encounter", "id": id, "status": "finished",
           "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
           "subject": {"reference": format!("Patient/{patient}")},
           "participant": participant,
           "period": {"start": "2025-03-10T09:00:00Z", "end": "2025-03-10T10:00:00Z"}})
}

struct Probe<'a> {
    store: &'a dyn Store,
    windows: CareWindows,
}

impl Probe<'_> {
    fn has(&self, practitioner: &str, patient: &str, now: i64) -> bool {
        let actors = self.store.care_actors(practitioner).unwrap();
        self.store
            .has_care_relationship(&actors, patient, now, &self.windows, false)
            .unwrap()
    }
    fn billing(&self, patient: &str, now: i64) -> bool {
        self.store
            .has_care_relationship(&[], patient, now, &self.windows, true)
            .unwrap()
    }
    fn patients(&self, practitioner: &str, now: i64) -> Vec<String> {
        let actors = self.store.care_actors(practitioner).unwrap();
        self.store
            .care_patients(&actors, now, &self.windows, false)
            .unwrap()
    }
}

fn probe(rest: &Rest) -> Probe<'_> {
    Probe {
        store: &**rest.store(),
        windows: CareWindows::default(),
    }
}

#[test]
fn rule_1_encounter_participants_from_7_days_before_to_30_days_after() {
    let (_d, rest) = setup();
    directory(&rest);
    put(
        &rest,
        finished_encounter("e1", "pa1", &["Practitioner/pr1", "PractitionerRole/role2"]),
    );
    let p = probe(&rest);
    let before = ENC_START - 7 * DAY_MS;
    let after = ENC_END + 30 * DAY_MS;
    assert!(!p.has("pr1", "pa1", before - 1), "a moment too early");
    assert!(p.has("pr1", "pa1", before), "7 days before the start");
    assert!(p.has("Practitioner/pr1", "Patient/pa1", ENC_START + 1));
    assert!(
        p.has("pr1", "pa1", after - 1),
        "the last moment of 30 days after"
    );
    assert!(!p.has("pr1", "pa1", after), "30 days after the end");
    // Through a PractitionerRole of pr2.
    assert!(p.has("pr2", "pa1", ENC_START));
    // Nobody else, and not with the other patient.
    assert!(!p.has("pr3", "pa1", ENC_START));
    assert!(!p.has("pr1", "pa2", ENC_START));
    assert_eq!(p.patients("pr1", ENC_START), ["pa1"]);
    assert!(p.patients("pr1", after).is_empty());
    assert!(p.patients("pr3", ENC_START).is_empty());
    // The windows are settings applied when asked: no slack at all.
    let tight = Probe {
        store: &**rest.store(),
        windows: CareWindows {
            encounter_before_ms: 0,
            encounter_after_ms: 0,
            ..CareWindows::default()
        },
    };
    assert!(!tight.has("pr1", "pa1", ENC_START - 1));
    assert!(tight.has("pr1", "pa1", ENC_START));
    assert!(!tight.has("pr1", "pa1", ENC_END));
}

#[test]
fn rule_1_an_in_progress_encounter_counts_until_it_ends_and_rule_5_its_ward() {
    let (_d, rest) = setup();
    directory(&rest);
    let mut e = json!({"resourceType": "Encounter", "id": "e2", "status": "in-progress",
           "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
           "subject": {"reference": "Patient/pa2"},
           "participant": [{"individual": {"reference": "Practitioner/pr1"}}],
           "location": [{"location": {"reference": "Location/ward-a"}, "status": "active"},
                        {"location": {"reference": "Location/ward-b"}, "status": "completed"}],
           "period": {"start": "2025-03-10T09:00:00Z"}});
    put(&rest, e.clone());
    let p = probe(&rest);
    let much_later = ENC_START + 400 * DAY_MS;
    assert!(p.has("pr1", "pa2", much_later), "open while in progress");
    // pr2 is not a participant, but its role is on ward-a, where the patient is.
    assert!(p.has("pr2", "pa2", much_later));
    assert_eq!(p.patients("pr2", much_later), ["pa2"]);
    // A role on ward-b (where the patient was before) gives nothing.
    put(
        &rest,
        json!({"resourceType": "PractitionerRole", "id": "role3",
               "practitioner": {"reference": "Practitioner/pr3"},
               "location": [{"reference": "Location/ward-b"}]}),
    );
    assert!(!p.has("pr3", "pa2", much_later));
    // An inactive role gives nothing either.
    put(
        &rest,
        json!({"resourceType": "PractitionerRole", "id": "role4", "active": false,
               "practitioner": {"reference": "Practitioner/pr4"},
               "location": [{"reference": "Location/ward-a"}]}),
    );
    assert!(!p.has("pr4", "pa2", much_later));
    assert_eq!(
        rest.store().care_actors("pr4").unwrap(),
        ["Practitioner/pr4"]
    );

    // Discharged: the ward relationship ends with the stay, the participant's 30 days start.
    e["status"] = json!("finished");
    e["period"]["end"] = json!("2025-03-10T10:00:00Z");
    put(&rest, e);
    assert!(!p.has("pr2", "pa2", ENC_START), "no longer on the ward");
    assert!(p.has("pr1", "pa2", ENC_END + 30 * DAY_MS - 1));
    assert!(!p.has("pr1", "pa2", ENC_END + 30 * DAY_MS));
}

#[test]
fn rule_2_appointment_participants_but_not_declined_ones() {
    let (_d, rest) = setup();
    directory(&rest);
    let mut a = json!({"resourceType": "Appointment", "id": "a1", "status": "booked",
    "start": "2025-06-01T14:00:00Z", "end": "2025-06-01T14:30:00Z",
    "participant": [
        {"actor": {"reference": "Patient/pa1"}, "status": "accepted"},
        {"actor": {"reference": "Practitioner/pr3"}, "status": "accepted"},
        {"actor": {"reference": "Practitioner/pr4"}, "status": "declined"},
        {"actor": {"reference": "Location/ward-a"}, "status": "accepted"}
    ]});
    put(&rest, a.clone());
    let p = probe(&rest);
    assert!(!p.has("pr3", "pa1", APPT_START - 7 * DAY_MS - 1));
    assert!(p.has("pr3", "pa1", APPT_START - 7 * DAY_MS));
    assert!(p.has("pr3", "pa1", APPT_END + 30 * DAY_MS - 1));
    assert!(!p.has("pr3", "pa1", APPT_END + 30 * DAY_MS));
    assert!(!p.has("pr4", "pa1", APPT_START), "declined");
    // The appointment's location is not a ward: pr2's role there gives nothing.
    assert!(!p.has("pr2", "pa1", APPT_START));
    // Cancelled: nothing.
    a["status"] = json!("cancelled");
    put(&rest, a);
    assert!(!p.has("pr3", "pa1", APPT_START));
}

#[test]
fn rule_3_active_care_team_members_only() {
    let (_d, rest) = setup();
    directory(&rest);
    let mut t = json!({"resourceType": "CareTeam", "id": "t1", "status": "active",
        "subject": {"reference": "Patient/pa2"},
        "participant": [{"member": {"reference": "Practitioner/pr5"}},
                        {"member": {"reference": "Patient/pa2"}}]});
    put(&rest, t.clone());
    let p = probe(&rest);
    assert!(p.has("pr5", "pa2", ENC_START));
    assert!(p.has("pr5", "pa2", ENC_START + 3000 * DAY_MS));
    assert!(!p.has("pr5", "pa1", ENC_START));
    t["status"] = json!("inactive");
    put(&rest, t);
    assert!(!p.has("pr5", "pa2", ENC_START));
}

#[test]
fn rule_4_general_practitioner_at_any_time() {
    let (_d, rest) = setup();
    directory(&rest);
    put(
        &rest,
        json!({"resourceType": "Patient", "id": "pa1",
               "generalPractitioner": [{"reference": "Practitioner/pr6"}]}),
    );
    let p = probe(&rest);
    assert!(p.has("pr6", "pa1", 0));
    assert!(p.has("pr6", "pa1", ENC_START + 10_000 * DAY_MS));
    assert!(!p.has("pr6", "pa2", ENC_START));
    // Changing the GP moves the relationship.
    put(
        &rest,
        json!({"resourceType": "Patient", "id": "pa1",
               "generalPractitioner": [{"reference": "Practitioner/pr5"}]}),
    );
    assert!(!p.has("pr6", "pa1", ENC_START));
    assert!(p.has("pr5", "pa1", ENC_START));
}

#[test]
fn rule_6_billing_until_365_days_after_the_encounter_ends() {
    let (_d, rest) = setup();
    directory(&rest);
    put(
        &rest,
        finished_encounter("e1", "pa1", &["Practitioner/pr1"]),
    );
    let p = probe(&rest);
    assert!(p.billing("pa1", ENC_END));
    assert!(p.billing("pa1", ENC_END + 365 * DAY_MS - 1));
    assert!(!p.billing("pa1", ENC_END + 365 * DAY_MS));
    assert!(
        !p.billing("pa2", ENC_END),
        "no encounter, no billing relationship"
    );
    assert!(!p.billing("pa1", ENC_START - 1), "not before the encounter");
    // Billing is not a clinical relationship, and a clinical one is not billing.
    let billing = vec!["billing".to_owned()];
    assert!(
        !rest
            .store()
            .has_care_relationship(&billing, "pa1", ENC_END, &CareWindows::default(), false)
            .unwrap()
    );
    assert_eq!(
        rest.store()
            .care_patients(&[], ENC_END, &CareWindows::default(), true)
            .unwrap(),
        ["pa1"]
    );
}

#[test]
fn updates_move_relationships_and_deletions_remove_them() {
    let (_d, rest) = setup();
    directory(&rest);
    put(
        &rest,
        finished_encounter("e1", "pa1", &["Practitioner/pr1"]),
    );
    let p = probe(&rest);
    assert!(p.has("pr1", "pa1", ENC_START));
    // Another patient and another practitioner.
    put(
        &rest,
        finished_encounter("e1", "pa2", &["Practitioner/pr3"]),
    );
    assert!(!p.has("pr1", "pa1", ENC_START));
    assert!(!p.has("pr1", "pa2", ENC_START));
    assert!(p.has("pr3", "pa2", ENC_START));
    assert!(!p.billing("pa1", ENC_END));
    assert!(p.billing("pa2", ENC_END));
    // Entered in error: nothing.
    let mut e = finished_encounter("e1", "pa2", &["Practitioner/pr3"]);
    e["status"] = json!("entered-in-error");
    put(&rest, e);
    assert!(!p.has("pr3", "pa2", ENC_START));
    put(
        &rest,
        finished_encounter("e1", "pa2", &["Practitioner/pr3"]),
    );
    assert!(p.has("pr3", "pa2", ENC_START));
    rest.delete("Encounter", "e1").unwrap();
    assert!(!p.has("pr3", "pa2", ENC_START));
    assert!(!p.billing("pa2", ENC_END));
    // A deleted PractitionerRole no longer lends its actors.
    assert_eq!(
        rest.store().care_actors("pr2").unwrap(),
        [
            "Practitioner/pr2",
            "Location/ward-a",
            "PractitionerRole/role2"
        ]
    );
    rest.delete("PractitionerRole", "role2").unwrap();
    assert_eq!(
        rest.store().care_actors("pr2").unwrap(),
        ["Practitioner/pr2"]
    );
}

#[test]
fn a_failed_write_leaves_no_relationship() {
    let (_d, rest) = setup();
    directory(&rest);
    // The subject does not exist: the write is refused, and with it the relationship.
    let e = finished_encounter("e9", "nobody", &["Practitioner/pr1"]);
    assert!(rest.update("Encounter", "e9", e, None).is_err());
    let p = probe(&rest);
    assert!(!p.has("pr1", "nobody", ENC_START));
    assert!(!p.billing("nobody", ENC_END));
}

#[test]
fn a_store_from_before_the_tables_is_backfilled_when_opened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    {
        let rest = Rest::new(open_sqlite(&path, keyring()).unwrap());
        directory(&rest);
        put(
            &rest,
            finished_encounter("e1", "pa1", &["Practitioner/pr1"]),
        );
        put(
            &rest,
            json!({"resourceType": "Patient", "id": "pa2",
                   "generalPractitioner": [{"reference": "PractitionerRole/role2"}]}),
        );
        put(
            &rest,
            finished_encounter("e2", "pa2", &["Practitioner/pr3"]),
        );
        rest.delete("Encounter", "e2").unwrap();
    }
    // Make it a version 3 store: no care tables, no recorded patients.
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "DROP TABLE care_rel; DROP TABLE care_actor; ALTER TABLE ver DROP COLUMN patients;
             PRAGMA user_version=3;",
        )
        .unwrap();
    }
    let rest = Rest::new(open_sqlite(&path, keyring()).unwrap());
    let p = probe(&rest);
    assert!(
        p.has("pr1", "pa1", ENC_START),
        "encounter (sealed under the patient's key)"
    );
    assert!(
        p.has("pr2", "pa2", 0),
        "general practitioner through a role"
    );
    assert!(p.billing("pa1", ENC_END));
    assert!(
        !p.has("pr3", "pa2", ENC_START),
        "a deleted encounter states nothing"
    );
    let v: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 5);
}

#[test]
fn a_relationship_check_is_an_index_probe() {
    let (dir, rest) = setup();
    directory(&rest);
    let c = rusqlite::Connection::open(dir.path().join("store.db")).unwrap();
    let plan: Vec<String> = c
        .prepare(&format!(
            "EXPLAIN QUERY PLAN {}",
            crate::sqlite::care::probe_sql()
        ))
        .unwrap()
        .query_map(
            rusqlite::params!["Practitioner/pr1", "pa1", 0, 0, 0, 0, 0, 0, 0],
            |r| r.get::<_, String>(3),
        )
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(plan.len(), 1, "{plan:?}");
    assert!(
        plan[0].starts_with("SEARCH care_rel USING PRIMARY KEY (actor=? AND patient=?)"),
        "{plan:?}"
    );
}
