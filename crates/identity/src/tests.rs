//! Unit tests of the account rules: creation, sign-in, throttling and lockout with a controlled
//! clock, TOTP replay, recovery codes, rehash on sign-in, caches and training records.
#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use carevault_auth::{MemoryRecordStore, RecordStore};
use carevault_crypto::{ManualClock, SystemRng};

use crate::accounts::{ACCOUNT_RECORD_KIND, Accounts, IdentityError, Link, SignInError};
use crate::password::PasswordError;
use crate::throttle::ThrottleSettings;
use crate::totp::TotpSecret;
use crate::training::{TrainingRecord, parse_date};
use crate::{Role, parse_roles};

const PW: &str = "correct horse battery staple";
const T0: u64 = 1_800_000_000;

struct Fixture {
    store: Arc<MemoryRecordStore>,
    clock: Arc<ManualClock>,
    accounts: Accounts,
}

fn cheap() -> argon2::Params {
    argon2::Params::new(256, 1, 1, None).unwrap()
}

fn fixture_with(params: argon2::Params, throttle: ThrottleSettings) -> Fixture {
    let store = Arc::new(MemoryRecordStore::new());
    let clock = Arc::new(ManualClock::at_unix(T0));
    let accounts = Accounts::with_options(
        store.clone(),
        clock.clone(),
        Arc::new(SystemRng::new()),
        params,
        throttle,
    );
    Fixture {
        store,
        clock,
        accounts,
    }
}

fn fixture() -> Fixture {
    fixture_with(cheap(), ThrottleSettings::default())
}

fn pw(s: &str) -> SecretString {
    SecretString::from(s.to_owned())
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Adds `name` as a physician with TOTP enrolled; returns the secret, parsed independently.
fn enrolled(f: &Fixture, name: &str) -> TotpSecret {
    f.accounts
        .add(
            name,
            &[Role::Physician],
            Some(Link::Practitioner("Practitioner/p1".into())),
            &pw(PW),
        )
        .unwrap();
    let e = f.accounts.enrol_totp(name).unwrap();
    TotpSecret::from_base32(e.secret.expose_secret()).unwrap()
}

fn code(secret: &TotpSecret, clock: &ManualClock) -> String {
    use carevault_crypto::Clock;
    secret.code_at(clock.unix_seconds())
}

#[test]
fn add_validates_name_roles_links_and_password() {
    let f = fixture();
    let a = &f.accounts;
    for bad in ["", "Amy", "a b", "a/b", "é"] {
        assert!(
            matches!(
                a.add(bad, &[Role::Nurse], None, &pw(PW)),
                Err(IdentityError::InvalidName(_))
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        a.add("amy", &[], None, &pw(PW)),
        Err(IdentityError::NoRoles)
    ));
    assert!(matches!(
        a.add("amy", &[Role::Patient], None, &pw(PW)),
        Err(IdentityError::PatientRole)
    ));
    assert!(matches!(
        a.add(
            "amy",
            &[Role::Nurse],
            Some(Link::Patient("Patient/1".into())),
            &pw(PW)
        ),
        Err(IdentityError::PatientRole)
    ));
    assert!(matches!(
        a.add(
            "amy",
            &[Role::Patient, Role::Nurse],
            Some(Link::Patient("Patient/1".into())),
            &pw(PW)
        ),
        Err(IdentityError::PatientRole)
    ));
    assert!(matches!(
        a.add("amy", &[Role::Nurse], None, &pw("tooshort")),
        Err(IdentityError::Password(PasswordError::TooShort))
    ));
    assert!(matches!(
        a.add("amy", &[Role::Nurse], None, &pw("amy-is-my-name-ok")),
        Err(IdentityError::Password(PasswordError::ContainsName))
    ));
    assert!(matches!(
        a.add("amy", &[Role::Nurse], None, &pw("qwertyuiopasdfghjkl")),
        Err(IdentityError::Password(PasswordError::Common))
    ));
    assert!(a.list().unwrap().is_empty(), "nothing stored by a refusal");

    let acc = a
        .add(
            "amy",
            &[Role::Nurse, Role::Physician, Role::Nurse],
            Some(Link::parse("Practitioner/p-1.x").unwrap()),
            &pw(PW),
        )
        .unwrap();
    assert_eq!(acc.roles, [Role::Physician, Role::Nurse]);
    assert_eq!(acc.practitioner.as_deref(), Some("Practitioner/p-1.x"));
    assert!(!acc.mfa_enrolled);
    assert!(matches!(
        a.add("amy", &[Role::Nurse], None, &pw(PW)),
        Err(IdentityError::Duplicate(_))
    ));
    let pat = a
        .add(
            "pat",
            &[Role::Patient],
            Some(Link::parse("Patient/42").unwrap()),
            &pw(PW),
        )
        .unwrap();
    assert_eq!(pat.patient.as_deref(), Some("Patient/42"));
    for bad in ["Observation/1", "Practitioner/", "Patient/a b", "p1"] {
        assert!(Link::parse(bad).is_err(), "{bad}");
    }
    assert_eq!(
        parse_roles("physician, nurse").unwrap(),
        [Role::Physician, Role::Nurse]
    );
    assert!(parse_roles("doctor").unwrap_err().contains("doctor"));
}

#[test]
fn the_stored_record_holds_no_password_and_a_phc_argon2id_hash() {
    let f = fixture();
    enrolled(&f, "amy");
    let body = f.store.get(ACCOUNT_RECORD_KIND, "amy").unwrap().unwrap();
    let text = String::from_utf8(body).unwrap();
    assert!(!text.contains(PW));
    assert!(text.contains("$argon2id$v=19$m=256,t=1,p=1$"));
    let view = format!("{:?}", f.accounts.get("amy").unwrap().unwrap());
    assert!(!view.contains("argon2") && !view.contains("totp_secret"));
}

#[test]
fn sign_in_with_both_factors() {
    let f = fixture();
    let secret = enrolled(&f, "amy");
    let acc = f
        .accounts
        .sign_in("amy", &pw(PW), &code(&secret, &f.clock), ip("10.0.0.1"))
        .unwrap();
    assert_eq!(acc.name, "amy");
    assert!(acc.mfa_enrolled);
    assert_eq!(acc.last_sign_in_at, Some(T0));
}

#[test]
fn every_failure_looks_the_same() {
    let f = fixture();
    let secret = enrolled(&f, "amy");
    let src = ip("10.0.0.1");
    let good = code(&secret, &f.clock);
    let wrong_code = if good == "000000" { "000001" } else { "000000" };
    let errors = [
        f.accounts.sign_in("nobody", &pw(PW), &good, src),
        f.accounts
            .sign_in("amy", &pw("wrong password here"), &good, src),
        f.accounts.sign_in("amy", &pw(PW), wrong_code, src),
        f.accounts.sign_in("amy", &pw(PW), "", src),
        f.accounts.sign_in("Bad Name!", &pw(PW), &good, src),
    ];
    for e in errors {
        let e = e.unwrap_err();
        assert!(matches!(e, SignInError::Failed));
        assert_eq!(e.to_string(), "sign-in failed");
    }
}

#[test]
fn a_used_totp_code_is_refused() {
    let f = fixture();
    let secret = enrolled(&f, "amy");
    let src = ip("10.0.0.1");
    let c = code(&secret, &f.clock);
    f.accounts.sign_in("amy", &pw(PW), &c, src).unwrap();
    // Same code again, within the same step: a replay.
    assert!(matches!(
        f.accounts.sign_in("amy", &pw(PW), &c, src),
        Err(SignInError::Failed)
    ));
    // After 30 s the previous step's code is still inside the drift window, yet it was used.
    f.clock.advance(Duration::from_secs(30));
    assert!(f.accounts.sign_in("amy", &pw(PW), &c, src).is_err());
    // The new step's code works once.
    let c2 = code(&secret, &f.clock);
    f.accounts.sign_in("amy", &pw(PW), &c2, src).unwrap();
}

#[test]
fn an_earlier_step_is_refused_after_a_later_one_was_used() {
    let f = fixture();
    let secret = enrolled(&f, "amy");
    let src = ip("10.0.0.1");
    use carevault_crypto::Clock;
    let now = f.clock.unix_seconds();
    let later = secret.code_at(now + 30);
    let earlier = secret.code_at(now);
    f.accounts.sign_in("amy", &pw(PW), &later, src).unwrap();
    assert!(f.accounts.sign_in("amy", &pw(PW), &earlier, src).is_err());
}

#[test]
fn recovery_codes_work_once() {
    let f = fixture();
    enrolled(&f, "amy");
    let codes = f.accounts.new_recovery_codes("amy").unwrap();
    assert_eq!(codes.len(), 10);
    let first = codes[0].expose_secret().to_owned();
    assert_eq!(
        first.len(),
        27,
        "four groups of six and three hyphens: {first}"
    );
    let body =
        String::from_utf8(f.store.get(ACCOUNT_RECORD_KIND, "amy").unwrap().unwrap()).unwrap();
    for c in &codes {
        assert!(!body.contains(&c.expose_secret().replace('-', "")));
    }
    let src = ip("10.0.0.2");
    // Upper case and without hyphens is the same code.
    let typed = first.replace('-', "").to_uppercase();
    let acc = f.accounts.sign_in("amy", &pw(PW), &typed, src).unwrap();
    assert_eq!(acc.recovery_codes_left, 9);
    assert!(matches!(
        f.accounts.sign_in("amy", &pw(PW), &first, src),
        Err(SignInError::Failed)
    ));
    // A recovery code with the wrong password gets nothing and is not used up.
    let second = codes[1].expose_secret().to_owned();
    assert!(
        f.accounts
            .sign_in("amy", &pw("not the password!"), &second, src)
            .is_err()
    );
    f.accounts.sign_in("amy", &pw(PW), &second, src).unwrap();
    // New codes replace the old ones.
    let fresh = f.accounts.new_recovery_codes("amy").unwrap();
    assert!(
        f.accounts
            .sign_in("amy", &pw(PW), codes[2].expose_secret(), src)
            .is_err()
    );
    f.clock.advance(Duration::from_secs(10));
    f.accounts
        .sign_in("amy", &pw(PW), fresh[0].expose_secret(), src)
        .unwrap();
}

#[test]
fn account_backoff_then_lockout_then_unlock() {
    let f = fixture();
    let secret = enrolled(&f, "amy");
    let src = ip("10.0.0.3");
    let bad = pw("not the password at all");
    // Three failures are free.
    for _ in 0..3 {
        assert!(f.accounts.sign_in("amy", &bad, "", src).is_err());
    }
    assert_eq!(f.accounts.get("amy").unwrap().unwrap().failed_attempts, 3);
    // Now a 1 s wait: even the right credentials are refused, and the refusal is not counted.
    assert!(
        f.accounts
            .sign_in("amy", &pw(PW), &code(&secret, &f.clock), src)
            .is_err()
    );
    assert_eq!(f.accounts.get("amy").unwrap().unwrap().failed_attempts, 3);
    f.clock.advance(Duration::from_millis(1_000));
    f.accounts
        .sign_in("amy", &pw(PW), &code(&secret, &f.clock), src)
        .unwrap();
    assert_eq!(f.accounts.get("amy").unwrap().unwrap().failed_attempts, 0);

    // Ten failures in a row, each after its wait, lock the account.
    let mut waits = Vec::new();
    for i in 0..10u32 {
        let mut waited = 0;
        while f.accounts.sign_in("amy", &bad, "", src).is_err()
            && f.accounts.get("amy").unwrap().unwrap().failed_attempts == i
        {
            f.clock.advance(Duration::from_secs(1));
            waited += 1;
        }
        waits.push(waited);
    }
    assert_eq!(waits, [0, 0, 0, 1, 2, 4, 8, 16, 32, 64]);
    let acc = f.accounts.get("amy").unwrap().unwrap();
    assert!(acc.locked);
    // Locked: the right password and code are refused, however long one waits.
    f.clock.advance(Duration::from_secs(24 * 3600));
    assert!(
        f.accounts
            .sign_in("amy", &pw(PW), &code(&secret, &f.clock), src)
            .is_err()
    );
    f.accounts.unlock("amy").unwrap();
    f.accounts
        .sign_in("amy", &pw(PW), &code(&secret, &f.clock), src)
        .unwrap();
}

#[test]
fn unknown_names_are_throttled_like_real_ones() {
    let f = fixture();
    enrolled(&f, "amy");
    let src = ip("10.0.0.4");
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for _ in 0..6 {
        known.push(
            f.accounts
                .sign_in("amy", &pw("wrong wrong wrong"), "", src)
                .is_err(),
        );
        unknown.push(
            f.accounts
                .sign_in("ghost", &pw("wrong wrong wrong"), "", src)
                .is_err(),
        );
    }
    assert_eq!(known, unknown);
    // Both are in back-off now; the counts in memory and in the record agree.
    assert_eq!(f.accounts.get("amy").unwrap().unwrap().failed_attempts, 3);
}

#[test]
fn source_address_backoff() {
    let settings = ThrottleSettings {
        address_free_failures: 4,
        ..ThrottleSettings::default()
    };
    let f = fixture_with(cheap(), settings);
    let secret = enrolled(&f, "amy");
    let attacker = ip("203.0.113.9");
    // Spraying different names from one address: four are free, then the address waits.
    for n in 0..4 {
        assert!(
            f.accounts
                .sign_in(&format!("user{n}"), &pw("password spray 1"), "", attacker)
                .is_err()
        );
    }
    // Even amy's right credentials from that address are refused during the wait...
    assert!(
        f.accounts
            .sign_in("amy", &pw(PW), &code(&secret, &f.clock), attacker)
            .is_err()
    );
    // ...while from another address they work.
    f.accounts
        .sign_in("amy", &pw(PW), &code(&secret, &f.clock), ip("10.1.1.1"))
        .unwrap();
    f.clock.advance(Duration::from_secs(31));
    f.accounts
        .sign_in("amy", &pw(PW), &code(&secret, &f.clock), attacker)
        .unwrap();
}

#[test]
fn unknown_users_cost_the_same_argon2_work() {
    // The cause of equal timing: unknown names are verified against a hash made with the very same
    // parameters (a timed test would be flaky).
    let f = fixture();
    enrolled(&f, "amy");
    let _ = f.accounts.sign_in("ghost", &pw(PW), "", ip("10.0.0.5"));
    let dummy = f.accounts.dummy_hash_for_tests();
    let body =
        String::from_utf8(f.store.get(ACCOUNT_RECORD_KIND, "amy").unwrap().unwrap()).unwrap();
    let real: serde_json::Value = serde_json::from_str(&body).unwrap();
    let real = real["password_hash"].as_str().unwrap();
    let (d, r) = (
        argon2::PasswordHash::new(&dummy).unwrap(),
        argon2::PasswordHash::new(real).unwrap(),
    );
    assert_eq!(d.algorithm, r.algorithm);
    assert_eq!(d.params, r.params);
}

#[test]
fn account_without_mfa_signs_in_with_the_password_for_enrolment_only() {
    let f = fixture();
    f.accounts
        .add("admin", &[Role::SecurityAdmin], None, &pw(PW))
        .unwrap();
    let acc = f
        .accounts
        .sign_in("admin", &pw(PW), "", ip("10.0.0.6"))
        .unwrap();
    assert!(!acc.mfa_enrolled, "the caller must send it to enrolment");
    let e = f.accounts.begin_totp_enrolment("admin").unwrap();
    let again = f.accounts.begin_totp_enrolment("admin").unwrap();
    assert_eq!(e.secret.expose_secret(), again.secret.expose_secret());
    assert!(
        e.uri
            .expose_secret()
            .starts_with("otpauth://totp/carevault:admin?secret=")
    );
    let secret = TotpSecret::from_base32(e.secret.expose_secret()).unwrap();
    assert!(matches!(
        f.accounts.confirm_totp_enrolment("admin", "12345"),
        Err(IdentityError::InvalidCode)
    ));
    let c = code(&secret, &f.clock);
    let codes = f.accounts.confirm_totp_enrolment("admin", &c).unwrap();
    assert_eq!(codes.len(), 10);
    assert!(f.accounts.get("admin").unwrap().unwrap().mfa_enrolled);
    // The code used to confirm cannot sign in again, and now a code is required.
    assert!(
        f.accounts
            .sign_in("admin", &pw(PW), &c, ip("10.0.0.6"))
            .is_err()
    );
    f.clock.advance(Duration::from_secs(30));
    assert!(
        f.accounts
            .sign_in("admin", &pw(PW), "", ip("10.0.0.6"))
            .is_err()
    );
    f.clock.advance(Duration::from_secs(30));
    f.accounts
        .sign_in("admin", &pw(PW), &code(&secret, &f.clock), ip("10.0.0.6"))
        .unwrap();
    assert!(matches!(
        f.accounts.confirm_totp_enrolment("admin", "123456"),
        Err(IdentityError::NoPendingEnrolment)
    ));
}

#[test]
fn first_admin_is_created_once() {
    let f = fixture();
    assert!(
        f.accounts
            .create_first_admin(&pw("Zx9-first-root-pw!"))
            .unwrap()
    );
    assert!(
        !f.accounts
            .create_first_admin(&pw("Zx9-first-root-pw!"))
            .unwrap()
    );
    let a = f.accounts.get("admin").unwrap().unwrap();
    assert_eq!(a.roles, [Role::SecurityAdmin, Role::SystemAdmin]);
    assert!(!a.mfa_enrolled);
}

#[test]
fn disable_reset_and_password_change_end_sessions_through_the_epoch() {
    let f = fixture();
    let secret = enrolled(&f, "amy");
    let e0 = f.accounts.get("amy").unwrap().unwrap().session_epoch;
    let e1 = f.accounts.disable("amy").unwrap().session_epoch;
    assert!(e1 > e0);
    assert!(
        f.accounts
            .sign_in("amy", &pw(PW), &code(&secret, &f.clock), ip("10.0.0.7"))
            .is_err()
    );
    f.accounts.enable("amy").unwrap();
    f.accounts.unlock("amy").unwrap();
    let e2 = f
        .accounts
        .set_password("amy", &pw("a new long passphrase"))
        .unwrap()
        .session_epoch;
    assert!(e2 > e1);
    assert!(matches!(
        f.accounts.set_password("amy", &pw("123456")),
        Err(IdentityError::Password(PasswordError::TooShort))
    ));
    assert!(
        f.accounts
            .sign_in("amy", &pw(PW), &code(&secret, &f.clock), ip("10.0.0.7"))
            .is_err()
    );
    f.clock.advance(Duration::from_secs(30));
    f.accounts
        .sign_in(
            "amy",
            &pw("a new long passphrase"),
            &code(&secret, &f.clock),
            ip("10.0.0.7"),
        )
        .unwrap();
    let reset = f.accounts.reset_mfa("amy").unwrap();
    assert!(!reset.mfa_enrolled && reset.session_epoch > e2);
    let roles = f.accounts.set_roles("amy", &[Role::Nurse]).unwrap();
    assert_eq!(roles.roles, [Role::Nurse]);
    assert!(matches!(
        f.accounts.set_roles("amy", &[Role::Patient]),
        Err(IdentityError::PatientRole)
    ));
    for op in [
        f.accounts.disable("ghost").map(|_| ()),
        f.accounts.unlock("ghost").map(|_| ()),
        f.accounts.reset_mfa("ghost").map(|_| ()),
        f.accounts.set_roles("ghost", &[Role::Nurse]).map(|_| ()),
    ] {
        assert!(matches!(op, Err(IdentityError::NotFound(_))));
    }
}

#[test]
fn active_is_cached_for_one_second() {
    let f = fixture();
    enrolled(&f, "amy");
    assert!(f.accounts.active("amy").unwrap().is_some());
    assert!(f.accounts.active("ghost").unwrap().is_none());
    // Another process (a second Accounts over the same store) disables amy.
    let other = Accounts::with_options(
        f.store.clone(),
        f.clock.clone(),
        Arc::new(SystemRng::new()),
        cheap(),
        ThrottleSettings::default(),
    );
    other.disable("amy").unwrap();
    assert!(f.accounts.active("amy").unwrap().is_some(), "cached");
    f.clock.advance(Duration::from_millis(1_001));
    assert!(f.accounts.active("amy").unwrap().is_none());
    // A change made through this instance shows at once.
    f.accounts.enable("amy").unwrap();
    assert!(f.accounts.active("amy").unwrap().is_some());
}

#[test]
fn raised_argon2_parameters_rehash_at_sign_in() {
    let store = Arc::new(MemoryRecordStore::new());
    let clock = Arc::new(ManualClock::at_unix(T0));
    let old = Accounts::with_options(
        store.clone(),
        clock.clone(),
        Arc::new(SystemRng::new()),
        cheap(),
        ThrottleSettings::default(),
    );
    old.add("amy", &[Role::Nurse], None, &pw(PW)).unwrap();
    let e = old.enrol_totp("amy").unwrap();
    let secret = TotpSecret::from_base32(e.secret.expose_secret()).unwrap();
    let stronger = argon2::Params::new(512, 2, 1, None).unwrap();
    let new = Accounts::with_options(
        store.clone(),
        clock.clone(),
        Arc::new(SystemRng::new()),
        stronger,
        ThrottleSettings::default(),
    );
    new.sign_in("amy", &pw(PW), &code(&secret, &clock), ip("10.0.0.8"))
        .unwrap();
    let body = String::from_utf8(store.get(ACCOUNT_RECORD_KIND, "amy").unwrap().unwrap()).unwrap();
    assert!(body.contains("$argon2id$v=19$m=512,t=2,p=1$"), "{body}");
    clock.advance(Duration::from_secs(30));
    new.sign_in("amy", &pw(PW), &code(&secret, &clock), ip("10.0.0.8"))
        .unwrap();
}

#[test]
fn training_records() {
    let f = fixture();
    enrolled(&f, "amy");
    let rec = |course: &str, done: &str, until: &str| TrainingRecord {
        course: course.into(),
        completed: parse_date(done).unwrap(),
        expires: parse_date(until).unwrap(),
    };
    f.accounts
        .record_training("amy", rec("privacy", "2026-01-01", "2027-01-01"))
        .unwrap();
    f.accounts
        .record_training("amy", rec("hipaa", "2025-01-01", "2026-01-01"))
        .unwrap();
    // Recording a course again replaces it.
    f.accounts
        .record_training("amy", rec("hipaa", "2026-02-01", "2027-02-01"))
        .unwrap();
    let t = f.accounts.training("amy").unwrap();
    assert_eq!(t.len(), 2);
    assert_eq!(t[0].course, "hipaa");
    assert_eq!(t[0].expires, parse_date("2027-02-01").unwrap());
    assert!(f.accounts.training("nobody").unwrap().is_empty());
    assert!(matches!(
        f.accounts
            .record_training("ghost", rec("hipaa", "2026-02-01", "2027-02-01")),
        Err(IdentityError::NotFound(_))
    ));
    assert_eq!(f.accounts.all_training().unwrap().len(), 1);
}
