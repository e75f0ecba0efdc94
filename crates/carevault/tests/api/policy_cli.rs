//! `carevault policy show | check | set` end to end (PRODUCT.md 2.3): the built-in policy is
//! shown, requests are evaluated against the policy in force or a file, a broken file is refused
//! with one sentence and changes nothing, and a policy set while the server runs is enforced by
//! that server within about a second — on the FHIR API and on the audit routes alike.

use crate::harness::{Server, cli, send};
use crate::leaks::user_token;
use std::time::{Duration, Instant};

/// A rule that takes AuditEvent away from auditors.
const PAUSE_AUDITORS: &str = r#"
@id("auditors-paused")
forbid (principal in Role::"auditor", action, resource)
when { resource.type == "AuditEvent" };
"#;

/// Asserts a failed command: a non-zero exit and one sentence on one line of stderr.
fn one_sentence_failure((code, out, err): (i32, String, String), mentions: &[&str]) -> String {
    assert_ne!(code, 0, "the command succeeded: {out}");
    let err = err.trim_end().to_owned();
    assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
    assert!(err.starts_with("carevault: "), "{err}");
    for m in mentions {
        assert!(err.contains(m), "{err:?} does not mention {m:?}");
    }
    err
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_show_check_and_set_while_the_server_runs() {
    let s = Server::start().await;
    let data = s.data();
    let auditor = user_token(&s, "auditor1", "auditor", None, "user/*.read").await;
    let check = |extra: &[&str]| {
        let mut args = vec![
            "policy",
            "check",
            "--principal",
            "role:auditor",
            "--action",
            "read",
            "--resource",
            "AuditEvent",
        ];
        args.extend_from_slice(extra);
        cli(&data, &args)
    };

    // show: the built-in policy, which lets auditors read AuditEvent.
    let (code, shown, err) = cli(&data, &["policy", "show"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("built-in"), "{err}");
    assert!(shown.contains(r#"@id("auditor-audit-read")"#), "{shown}");
    let (code, out, err) = check(&[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("allow: permitted by auditor-audit-read"),
        "{out}"
    );

    // check against a file: the edited policy denies, and nothing is stored by checking.
    let good = s.dir.path().join("paused.cedar");
    std::fs::write(&good, format!("{shown}{PAUSE_AUDITORS}")).unwrap();
    let (code, out, err) = check(&["--policy", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("deny: forbidden by auditors-paused"),
        "{out}"
    );
    assert!(
        check(&[]).1.starts_with("allow"),
        "checking a file stored it"
    );

    // A broken file: refused by check and by set, in one sentence naming the file and the
    // place, and the policy in force is unchanged.
    let broken = s.dir.path().join("broken.cedar");
    std::fs::write(&broken, format!("{shown}\npermit (principal, action\n")).unwrap();
    let unfit = s.dir.path().join("unfit.cedar");
    std::fs::write(
        &unfit,
        r#"@id("flying") permit (principal, action == Action::"fly", resource);"#,
    )
    .unwrap();
    one_sentence_failure(
        check(&["--policy", broken.to_str().unwrap()]),
        &["broken.cedar", "line"],
    );
    one_sentence_failure(
        cli(&data, &["policy", "set", broken.to_str().unwrap()]),
        &["broken.cedar", "was not stored", "line"],
    );
    one_sentence_failure(
        cli(&data, &["policy", "set", unfit.to_str().unwrap()]),
        &["unfit.cedar", "was not stored"],
    );
    let (_, still, err) = cli(&data, &["policy", "show"]);
    assert!(err.contains("built-in"), "{err}");
    assert_eq!(still, shown);

    // The running server serves the auditor under the built-in policy.
    let report = format!("{}/admin/reports/user/auditor1?format=json", s.root);
    let get = |url: String| s.http.get(url).bearer_auth(&auditor);
    let (st, _, _) = send(get(report.clone())).await;
    assert_eq!(st, 200);
    let (st, _, b) = send(get(s.url("AuditEvent?agent=auditor1"))).await;
    assert_eq!(st, 200, "{b}");

    // set, while the server runs: the server enforces it within about a second.
    let (code, out, err) = cli(&data, &["policy", "set", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("now in force"), "{out}");
    let set_at = Instant::now();
    loop {
        let (st, _, b) = send(get(report.clone())).await;
        if st == 403 {
            assert_eq!(b["resourceType"], "OperationOutcome", "{b}");
            break;
        }
        assert_eq!(st, 200, "{b}");
        assert!(
            set_at.elapsed() < Duration::from_secs(5),
            "the server still serves auditors 5 s after policy set"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = set_at.elapsed();
    // One second of policy polling, plus slack for a loaded test machine.
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let (st, _, b) = send(get(s.url("AuditEvent?agent=auditor1"))).await;
    assert_eq!(
        (st, b["issue"][0]["code"].as_str()),
        (403, Some("forbidden")),
        "{b}"
    );

    // show and check now report the operator's policy; the change is in the audit trail.
    let (code, now_shown, err) = cli(&data, &["policy", "show"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("operator's policy"), "{err}");
    assert!(now_shown.contains(r#"@id("auditors-paused")"#));
    assert!(
        check(&[])
            .1
            .starts_with("deny: forbidden by auditors-paused"),
        "policy check does not see the stored policy"
    );
    let (st, _, b) = send(s.get("AuditEvent?subtype=110136&_count=100")).await;
    assert_eq!(st, 200, "{b}");
    assert!(
        b["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e.to_string().contains("paused.cedar")),
        "no policy-change event names the file: {b}"
    );
}
