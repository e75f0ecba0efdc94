//! Tests of report rows and their CSV, JSON and HTML forms, with hostile values.

use super::*;
use crate::event::{AuditRecord, RestInteraction, UserRef, to_json, with_id};

const T: i64 = 1_795_857_243_117;

fn read_event() -> Value {
    let mut r = AuditRecord::new(T, EventKind::Rest(RestInteraction::Read), "cv-node-1");
    r.purpose = vec!["TREAT".into()];
    r.user = Some(UserRef {
        name: "jdoe".into(),
        reference: Some("Practitioner/p-17".into()),
        roles: vec!["nurse".into(), "pharmacist".into()],
    });
    r.client = Some("bedside-app".into());
    r.patients = vec!["Patient/pt-88".into()];
    r.resources = vec!["Observation/obs-5/_history/2".into()];
    r.detail = vec![(DETAIL_ORGANISATION.into(), "Cardiology".into())];
    with_id(to_json(&r), 42)
}

#[test]
fn a_row_from_a_read() {
    let row = ReportRow::from_event(&read_event());
    assert_eq!(
        row,
        ReportRow {
            when: "2026-11-28T09:14:03.117Z".into(),
            who: "jdoe".into(),
            role: "nurse, pharmacist".into(),
            organisation: "Cardiology".into(),
            client: "bedside-app".into(),
            what: "Observation/obs-5/_history/2".into(),
            action: "read".into(),
            purpose: "TREAT".into(),
            outcome: "success".into(),
            patients: vec!["Patient/pt-88".into()],
        }
    );
}

#[test]
fn a_row_from_a_search_hides_the_query_values() {
    let mut r = AuditRecord::new(T, EventKind::Rest(RestInteraction::SearchType), "n");
    r.client = Some("etl".into());
    r.query = Some(b"Patient?name=Smith&birthdate=1970-01-01".to_vec());
    r.patients = vec!["Patient/a".into(), "Patient/b".into()];
    r.break_glass_reason = Some("ER".into());
    r.outcome = Outcome::Minor;
    r.outcome_desc = Some("denied".into());
    let row = ReportRow::from_event(&to_json(&r));
    assert_eq!(row.who, "etl");
    assert_eq!(row.what, "search Patient");
    assert_eq!(row.action, "search-type");
    assert_eq!(row.purpose, "BTG (ER)");
    assert_eq!(row.outcome, "minor failure: denied");
    assert_eq!(row.patients, vec!["Patient/a", "Patient/b"]);
    assert!(!format!("{row:?}").contains("Smith"));
    // A hostile path keeps only path characters.
    let mut r2 = r.clone();
    r2.query = Some(b"<script>alert(1)</script>?x=1".to_vec());
    assert_eq!(
        ReportRow::from_event(&to_json(&r2)).what,
        "search scriptalert1/script"
    );
}

#[test]
fn a_row_from_a_login() {
    let mut r = AuditRecord::new(T, EventKind::Login, "n");
    r.user = Some(UserRef {
        name: "jdoe".into(),
        reference: None,
        roles: vec![],
    });
    let row = ReportRow::from_event(&to_json(&r));
    assert_eq!((row.what.as_str(), row.action.as_str()), ("login", "login"));
    // Something that is not an AuditEvent gives an empty row, not a panic.
    assert_eq!(ReportRow::from_event(&Value::Null), ReportRow::default());
}

fn hostile() -> ReportRow {
    ReportRow {
        when: "2026-11-28T09:14:03.117Z".into(),
        who: "=cmd|' /C calc'!A0".into(),
        role: "+1+1".into(),
        organisation: "-2+3".into(),
        client: "@SUM(1,2)".into(),
        what: "<script>alert(\"x\")</script>".into(),
        action: "read, \"quoted\"".into(),
        purpose: "line\r\nbreak".into(),
        outcome: "it's & <b>bold</b>".into(),
        patients: vec!["Patient/a".into(), "Patient/b".into()],
    }
}

#[test]
fn csv_quotes_and_neutralises_formulas() {
    let csv = render_csv(&[hostile()]);
    let want = "when,who,role,organisation,client,what,action,purpose,outcome,patients\r\n\
        2026-11-28T09:14:03.117Z,\
        \"'=cmd|' /C calc'!A0\",\
        \"'+1+1\",\
        \"'-2+3\",\
        \"'@SUM(1,2)\",\
        \"<script>alert(\"\"x\"\")</script>\",\
        \"read, \"\"quoted\"\"\",\
        \"line\r\nbreak\",\
        it's & <b>bold</b>,\
        Patient/a Patient/b\r\n";
    assert_eq!(csv, want);
    assert_eq!(
        render_csv(&[]),
        "when,who,role,organisation,client,what,action,purpose,outcome,patients\r\n"
    );
    let tab = ReportRow {
        who: "\tx".into(),
        ..ReportRow::default()
    };
    assert!(render_csv(&[tab]).contains(",\"'\tx\","));
}

#[test]
fn json_is_an_array_of_objects() {
    let v = render_json(&[ReportRow::from_event(&read_event()), hostile()]);
    assert_eq!(v.as_array().unwrap().len(), 2);
    let keys: Vec<&str> = v[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, COLUMNS);
    assert_eq!(v[0]["patients"], json!(["Patient/pt-88"]));
    assert_eq!(v[1]["what"], json!("<script>alert(\"x\")</script>"));
}

#[test]
fn html_escapes_every_value() {
    let html = render_html("Access to <Patient/\"x\">", &[hostile()]);
    assert!(html.starts_with("<!DOCTYPE html>\n<html lang=\"en\">"));
    assert!(html.ends_with("</html>\n"));
    assert!(html.contains("<title>Access to &lt;Patient/&quot;x&quot;&gt;</title>"));
    assert!(html.contains("<td>&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;</td>"));
    assert!(html.contains("<td>it&#39;s &amp; &lt;b&gt;bold&lt;/b&gt;</td>"));
    assert!(html.contains("<td>=cmd|&#39; /C calc&#39;!A0</td>"));
    // Nothing a strict CSP would block: no script, no inline style or handler attributes.
    let lower = html.to_lowercase();
    assert_eq!(lower.matches("<script").count(), 0);
    assert!(
        !lower.contains("style=") && !lower.contains("onload") && !lower.contains("javascript:")
    );
    assert_eq!(lower.matches("<style>").count(), 1);
    let empty = render_html("None", &[]);
    assert!(empty.contains("<p>No recorded access.</p>"));
}

#[test]
fn style_hash_matches_the_stylesheet() {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, HTML_STYLE.as_bytes());
    assert_eq!(
        HTML_STYLE_SHA256,
        format!("sha256-{}", B64.encode(d.as_ref()))
    );
    // The hash covers exactly the text between <style> and </style>.
    let html = render_html("t", &[]);
    let start = html.find("<style>").unwrap() + "<style>".len();
    let end = html.find("</style>").unwrap();
    assert_eq!(&html[start..end], HTML_STYLE);
}
