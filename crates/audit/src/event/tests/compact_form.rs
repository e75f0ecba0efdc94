//! The compact canonical form (format 0x01): its exact bytes written by hand, lossless round
//! trips for a wide variety of records, and refusal of anything that is not the one encoding.

use super::super::*;
use super::{T, product_record};
use proptest::prelude::*;

/// The product example's entry as format 1, written out by hand from the layout in
/// `event/compact.rs`.
const PRODUCT_COMPACT: &str = concat!(
    "\u{1}",
    r#"{"t":1795857243117,"k":"rest","i":"read","a":"R","o":"0","pu":["TREAT"],"#,
    r#""u":{"n":"jdoe","r":"Practitioner/p-17","ro":["nurse"]},"c":"bedside-app","#,
    r#""ad":"10.2.3.4","ua":"Mozilla/5.0 ...","n":"cv-node-1","p":["Patient/pt-88"],"#,
    r#""rs":["Observation/obs-5/_history/2"],"rq":"7f3c..."}"#
);

#[test]
fn format_1_bytes_are_pinned() {
    let bytes = canonical_bytes(&product_record());
    assert_eq!(bytes[0], FORMAT_V1);
    assert_eq!(String::from_utf8(bytes.clone()).unwrap(), PRODUCT_COMPACT);
    // A quarter or so of the AuditEvent it renders to.
    let full = to_json(&product_record()).to_string();
    assert!(
        bytes.len() * 3 < full.len(),
        "{} vs {}",
        bytes.len(),
        full.len()
    );
}

#[test]
fn every_optional_element_is_written_in_its_place() {
    let mut r = AuditRecord::new(
        -5,
        EventKind::Rest(RestInteraction::Operation("$export".into())),
        "n\"1",
    );
    r.outcome = Outcome::Major;
    r.outcome_desc = Some("disk \\ full".into());
    r.purpose = vec!["HOPERAT".into(), "BTG".into()];
    r.user = Some(UserRef {
        name: "zoë".into(),
        reference: None,
        roles: vec![],
    });
    r.query = Some(vec![0, 255, b'?']);
    r.break_glass_reason = Some("line1\nline2".into());
    r.detail = vec![("k".into(), "v".into()), ("k2".into(), String::new())];
    let want = concat!(
        "\u{1}",
        r#"{"t":-5,"k":"rest","i":"operation","op":"$export","a":"E","o":"12","#,
        r#""od":"disk \\ full","pu":["HOPERAT","BTG"],"u":{"n":"zoë"},"n":"n\"1","#,
        r#""q":"AP8/","bg":"line1\nline2","d":[["k","v"],["k2",""]]}"#
    );
    assert_eq!(String::from_utf8(canonical_bytes(&r)).unwrap(), want);
    assert_eq!(decode(want.as_bytes()).unwrap(), r);

    let mut s = AuditRecord::new(T, EventKind::PermissionDenied, "");
    s.client = Some("app".into());
    let want = concat!(
        "\u{1}",
        r#"{"t":1795857243117,"k":"permission-denied","a":"E","o":"4","c":"app","n":""}"#
    );
    assert_eq!(String::from_utf8(canonical_bytes(&s)).unwrap(), want);
    assert_eq!(decode(want.as_bytes()).unwrap(), s);
}

#[test]
fn other_encodings_of_the_same_facts_are_refused() {
    let good = PRODUCT_COMPACT.as_bytes();
    assert!(decode(good).is_ok());
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (Vec::new(), "empty"),
        // The earlier format: the rendered AuditEvent itself.
        (
            to_json(&product_record()).to_string().into_bytes(),
            "format byte 0x7b",
        ),
        ([&[2u8][..], &good[1..]].concat(), "format byte 0x02"),
        (
            PRODUCT_COMPACT
                .replacen(r#""t":"#, r#" "t":"#, 1)
                .into_bytes(),
            "not in canonical form",
        ),
        (
            PRODUCT_COMPACT
                .replacen(r#""a":"R","o":"0""#, r#""o":"0","a":"R""#, 1)
                .into_bytes(),
            "not in canonical form",
        ),
        (
            PRODUCT_COMPACT
                .replacen(r#""rq":"7f3c...""#, r#""rq":"7f3c...","x":1"#, 1)
                .into_bytes(),
            "not in canonical form",
        ),
        (
            PRODUCT_COMPACT
                .replacen(r#""i":"read""#, r#""i":"reed""#, 1)
                .into_bytes(),
            "unknown interaction",
        ),
        (
            PRODUCT_COMPACT
                .replacen(r#""o":"0""#, r#""o":"3""#, 1)
                .into_bytes(),
            "unknown outcome",
        ),
        (
            PRODUCT_COMPACT
                .replacen(r#","n":"cv-node-1""#, "", 1)
                .into_bytes(),
            "`n` is missing",
        ),
        (good[..good.len() - 1].to_vec(), "malformed"),
    ];
    for (bytes, want) in cases {
        let err = decode(&bytes).unwrap_err().to_string();
        assert!(err.contains(want), "{err:?} should mention {want:?}");
        assert!(render(&bytes).is_err());
    }
}

#[test]
fn a_flipped_byte_never_reads_back_as_the_same_record() {
    let good = canonical_bytes(&product_record());
    for i in 0..good.len() {
        for bit in [0x01u8, 0x20, 0x80] {
            let mut bad = good.clone();
            bad[i] ^= bit;
            if let Ok(r) = decode(&bad) {
                assert_ne!(r, product_record(), "byte {i} bit {bit:#x}");
            }
        }
    }
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9/._:-]{0,12}",
        any::<String>(),
        Just("\"\\\u{0}\u{1f}\u{7f}é€😀".to_owned()),
    ]
}

fn kind() -> impl Strategy<Value = EventKind> {
    let rest = prop_oneof![
        Just(RestInteraction::Read),
        Just(RestInteraction::Vread),
        Just(RestInteraction::Update),
        Just(RestInteraction::Patch),
        Just(RestInteraction::Delete),
        Just(RestInteraction::HistoryInstance),
        Just(RestInteraction::HistoryType),
        Just(RestInteraction::HistorySystem),
        Just(RestInteraction::Create),
        Just(RestInteraction::SearchType),
        Just(RestInteraction::SearchSystem),
        Just(RestInteraction::Capabilities),
        Just(RestInteraction::Transaction),
        Just(RestInteraction::Batch),
        text().prop_map(RestInteraction::Operation),
    ];
    prop_oneof![
        rest.prop_map(EventKind::Rest),
        (0..NON_REST_KINDS.len()).prop_map(|i| NON_REST_KINDS[i].clone()),
    ]
}

fn record() -> impl Strategy<Value = AuditRecord> {
    let action = prop_oneof![
        Just(Action::Create),
        Just(Action::Read),
        Just(Action::Update),
        Just(Action::Delete),
        Just(Action::Execute),
    ];
    let outcome = prop_oneof![
        Just(Outcome::Success),
        Just(Outcome::Minor),
        Just(Outcome::Serious),
        Just(Outcome::Major),
    ];
    let user = proptest::option::of(
        (
            text(),
            proptest::option::of(text()),
            proptest::collection::vec(text(), 0..3),
        )
            .prop_map(|(name, reference, roles)| UserRef {
                name,
                reference,
                roles,
            }),
    );
    let opt = || proptest::option::of(text());
    let list = || proptest::collection::vec(text(), 0..3);
    (
        (any::<i64>(), kind(), action, outcome, opt(), list(), user),
        (opt(), opt(), opt(), text(), list(), list()),
        (
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
            opt(),
            opt(),
            proptest::collection::vec((text(), text()), 0..3),
        ),
    )
        .prop_map(
            |(
                (recorded_ms, kind, action, outcome, outcome_desc, purpose, user),
                (client, address, user_agent, node, patients, resources),
                (query, request_id, break_glass_reason, detail),
            )| AuditRecord {
                recorded_ms,
                kind,
                action,
                outcome,
                outcome_desc,
                purpose,
                user,
                client,
                address,
                user_agent,
                node,
                patients,
                resources,
                query,
                request_id,
                break_glass_reason,
                detail,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// What the store keeps renders to exactly the AuditEvent the record builds, and reads back
    /// as the same record.
    #[test]
    fn stored_entries_render_as_the_record_does(r in record()) {
        let bytes = canonical_bytes(&r);
        prop_assert_eq!(bytes[0], FORMAT_V1);
        prop_assert_eq!(&decode(&bytes).unwrap(), &r);
        prop_assert_eq!(render(&bytes).unwrap().to_string(), to_json(&r).to_string());
    }

    /// Different records never share bytes.
    #[test]
    fn different_records_have_different_bytes(a in record(), b in record()) {
        prop_assert_eq!(a == b, canonical_bytes(&a) == canonical_bytes(&b));
    }
}
