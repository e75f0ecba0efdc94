//! Tests of checkpoint signing, verification and every rejection path.

use super::*;
use crate::merkle::leaf_hash;

const SEED: [u8; 32] = [7u8; 32];
const OTHER_SEED: [u8; 32] = [9u8; 32];
const NAME: &str = "carevault-audit/cv-node-1";

fn cp() -> Checkpoint {
    Checkpoint {
        origin: "carevault.example/audit".into(),
        size: 42,
        root: leaf_hash(b"root"),
        // 2026-11-28T09:14:03.117Z
        time_ms: 1_795_857_243_117,
    }
}

fn signer() -> NoteSigner {
    NoteSigner::from_seed(NAME, &SEED).unwrap()
}

fn verifier() -> NoteVerifier {
    NoteVerifier::from_vkey(&signer().verifier_key()).unwrap()
}

#[test]
fn body_has_the_tlog_checkpoint_layout() {
    let body = cp().body();
    let root_b64 = B64.encode(leaf_hash(b"root"));
    assert_eq!(
        body,
        format!("carevault.example/audit\n42\n{root_b64}\ntime 2026-11-28T09:14:03.117Z\n")
    );
    assert_eq!(Checkpoint::parse_body(&body).unwrap(), cp());
}

#[test]
fn sign_then_verify_round_trips() {
    let s = signer();
    let note = s.sign(&cp());
    assert!(note.starts_with(&cp().body()));
    let sig_line = note.lines().last().unwrap();
    assert!(sig_line.starts_with("\u{2014} carevault-audit/cv-node-1 "));
    // The signature blob is the key id followed by a 64-byte Ed25519 signature.
    let blob = B64.decode(sig_line.rsplit(' ').next().unwrap()).unwrap();
    assert_eq!(blob.len(), 68);
    assert_eq!(blob[..4], s.key_hash());
    assert_eq!(verifier().verify(&note).unwrap(), cp());
    assert_eq!(
        note_signers(&note).unwrap(),
        vec![(NAME.to_owned(), s.key_hash())]
    );
}

#[test]
fn signing_is_deterministic() {
    assert_eq!(signer().sign(&cp()), signer().sign(&cp()));
}

#[test]
fn verifier_key_has_the_standard_form() {
    let s = signer();
    let vkey = s.verifier_key();
    let parts: Vec<&str> = vkey.splitn(3, '+').collect();
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[0], NAME);
    assert_eq!(parts[1], hex4(&s.key_hash()));
    let material = B64.decode(parts[2]).unwrap();
    assert_eq!(material.len(), 33);
    assert_eq!(material[0], 0x01);
    // key id = SHA-256(name || "\n" || 0x01 || public key)[:4]
    let mut msg = NAME.as_bytes().to_vec();
    msg.push(b'\n');
    msg.extend_from_slice(&material);
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &msg);
    assert_eq!(&d.as_ref()[..4], &s.key_hash());
}

/// The example of c2sp.org/signed-note: a note signed by another implementation verifies here.
#[test]
fn signed_note_spec_example_verifies() {
    let v = NoteVerifier::from_vkey(
        "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
    )
    .unwrap();
    let note = "This is an example message.\n\n\u{2014} example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n";
    assert_eq!(
        v.verify_text(note).unwrap(),
        "This is an example message.\n"
    );
    // Not a checkpoint body, so `verify` refuses it after the signature checks out.
    assert!(matches!(
        v.verify(note),
        Err(CheckpointError::MalformedCheckpoint(_))
    ));
    let altered = note.replace("example message", "example massage");
    assert!(matches!(
        v.verify_text(&altered),
        Err(CheckpointError::BadSignature { .. })
    ));
}

#[test]
fn rejects_a_note_signed_by_another_key() {
    let other = NoteSigner::from_seed(NAME, &OTHER_SEED).unwrap();
    let note = other.sign(&cp());
    let err = verifier().verify(&note).unwrap_err();
    match &err {
        CheckpointError::UnknownKey { found, .. } => {
            assert!(found.contains(&hex4(&other.key_hash())), "{found}");
        }
        e => panic!("unexpected {e:?}"),
    }
    assert!(
        err.to_string()
            .starts_with("the note carries no signature by key")
    );
}

#[test]
fn rejects_a_note_from_a_key_with_another_name() {
    let other = NoteSigner::from_seed("someone-else/log", &SEED).unwrap();
    assert!(matches!(
        verifier().verify(&other.sign(&cp())),
        Err(CheckpointError::UnknownKey { .. })
    ));
}

#[test]
fn rejects_a_bad_signature() {
    let note = signer().sign(&cp());
    let sig_line = note.lines().last().unwrap();
    let b64 = sig_line.rsplit(' ').next().unwrap();
    let mut blob = B64.decode(b64).unwrap();
    blob[10] ^= 1;
    let forged = note.replace(b64, &B64.encode(blob));
    assert!(matches!(
        verifier().verify(&forged),
        Err(CheckpointError::BadSignature { .. })
    ));
}

#[test]
fn rejects_a_modified_body() {
    let note = signer().sign(&cp());
    for (from, to) in [
        ("\n42\n", "\n43\n"),
        ("carevault.example/audit", "carevault.example/audiT"),
        ("09:14:03.117Z", "09:14:03.118Z"),
    ] {
        let altered = note.replacen(from, to, 1);
        assert_ne!(altered, note);
        assert!(
            matches!(
                verifier().verify(&altered),
                Err(CheckpointError::BadSignature { .. })
            ),
            "{from} -> {to}"
        );
    }
    // A flipped root.
    let mut other = cp();
    other.root[0] ^= 1;
    let altered = note.replace(&B64.encode(cp().root), &B64.encode(other.root));
    assert!(matches!(
        verifier().verify(&altered),
        Err(CheckpointError::BadSignature { .. })
    ));
}

#[test]
fn rejects_a_note_signed_only_by_unknown_key_ids() {
    // Same name, unknown key id: ignored as the spec requires, so nothing known signed it.
    let note = signer().sign(&cp());
    let sig_line = note.lines().last().unwrap();
    let b64 = sig_line.rsplit(' ').next().unwrap();
    let mut blob = B64.decode(b64).unwrap();
    blob[0] ^= 0xff;
    let foreign = note.replace(b64, &B64.encode(blob));
    assert!(matches!(
        verifier().verify(&foreign),
        Err(CheckpointError::UnknownKey { .. })
    ));
}

#[test]
fn accepts_extra_signatures_from_unknown_keys() {
    let note = signer().sign(&cp());
    let witness = NoteSigner::from_seed("witness.example/w1", &OTHER_SEED).unwrap();
    let witness_line = witness.sign(&cp()).lines().last().unwrap().to_owned();
    let cosigned = format!("{note}{witness_line}\n");
    assert_eq!(verifier().verify(&cosigned).unwrap(), cp());
    // But a known key's failing signature rejects the note even beside a good one.
    let b64 = note.lines().last().unwrap().rsplit(' ').next().unwrap();
    let mut blob = B64.decode(b64).unwrap();
    blob[10] ^= 1;
    let mixed = format!("{note}\u{2014} {NAME} {}\n", B64.encode(blob));
    assert!(matches!(
        verifier().verify(&mixed),
        Err(CheckpointError::BadSignature { .. })
    ));
}

#[test]
fn rejects_malformed_notes() {
    let note = signer().sign(&cp());
    let no_newline = note.trim_end_matches('\n').to_owned();
    let no_blank = note.replacen("\n\n", "\n", 1);
    let no_sigs = cp().body() + "\n";
    let bad_dash = note.replace('\u{2014}', "-");
    let bad_b64 = format!("{}\n\u{2014} {NAME} !!!notbase64\n", cp().body());
    let short_sig = format!("{}\n\u{2014} {NAME} AAAA\n", cp().body());
    let control = note.replacen("carevault", "care\u{7}vault", 1);
    let cr = note.replacen('\n', "\r\n", 1);
    for (what, bad) in [
        ("no final newline", no_newline.as_str()),
        ("no blank line", no_blank.as_str()),
        ("no signatures", no_sigs.as_str()),
        ("ascii dash", bad_dash.as_str()),
        ("bad base64", bad_b64.as_str()),
        ("short signature", short_sig.as_str()),
        ("control character", control.as_str()),
        ("carriage return", cr.as_str()),
        ("empty", ""),
    ] {
        assert!(
            matches!(
                verifier().verify(bad),
                Err(CheckpointError::MalformedNote(_))
            ),
            "{what}: {:?}",
            verifier().verify(bad)
        );
    }
    let huge = format!("{}{}", "x".repeat(70_000), note);
    assert!(verifier().verify(&huge).is_err());
}

/// Signs an arbitrary body with the test key, as a compromised-but-genuine signer might.
fn sign_text(text: &str) -> String {
    let s = signer();
    let sig = s.pair.sign(text.as_bytes());
    let mut blob = s.key_hash().to_vec();
    blob.extend_from_slice(sig.as_ref());
    format!("{text}\n\u{2014} {NAME} {}\n", B64.encode(blob))
}

#[test]
fn rejects_non_canonical_bodies_even_when_signed() {
    let root = B64.encode(cp().root);
    let t = "time 2026-11-28T09:14:03.117Z";
    let unpadded = root.trim_end_matches('=').to_owned();
    type Expect = fn(&CheckpointError) -> bool;
    let cases: Vec<(String, Expect)> = vec![
        (format!("o\n042\n{root}\n{t}\n"), |e| {
            matches!(e, CheckpointError::NonCanonical("size"))
        }),
        (format!("o\n+42\n{root}\n{t}\n"), |e| {
            matches!(e, CheckpointError::MalformedCheckpoint(_))
        }),
        (format!("o\n 42\n{root}\n{t}\n"), |e| {
            matches!(e, CheckpointError::MalformedCheckpoint(_))
        }),
        (format!("o\n42.0\n{root}\n{t}\n"), |e| {
            matches!(e, CheckpointError::MalformedCheckpoint(_))
        }),
        (format!("o\n18446744073709551616\n{root}\n{t}\n"), |e| {
            matches!(e, CheckpointError::MalformedCheckpoint(_))
        }),
        (format!("o\n42\n{unpadded}\n{t}\n"), |e| {
            matches!(
                e,
                CheckpointError::MalformedCheckpoint(_) | CheckpointError::NonCanonical(_)
            )
        }),
        (format!("o\n42\n{}\n{t}\n", B64.encode([1u8; 31])), |e| {
            matches!(e, CheckpointError::MalformedCheckpoint(_))
        }),
        (format!("o\n42\n{root}\n"), |e| {
            matches!(e, CheckpointError::MissingTime)
        }),
        (
            format!("o\n42\n{root}\nwhen 2026-11-28T09:14:03.117Z\n"),
            |e| matches!(e, CheckpointError::MissingTime),
        ),
        (format!("o\n42\n{root}\ntime 2026-11-28T09:14:03Z\n"), |e| {
            matches!(e, CheckpointError::MalformedCheckpoint(_))
        }),
        (format!("o\n42\n{root}\n{t}\nextra\n"), |e| {
            matches!(e, CheckpointError::MalformedCheckpoint(_))
        }),
        (format!("\n42\n{root}\n{t}\n"), |e| {
            matches!(
                e,
                CheckpointError::MalformedCheckpoint(_) | CheckpointError::MalformedNote(_)
            )
        }),
    ];
    for (body, expect) in cases {
        let note = sign_text(&body);
        let err = verifier().verify(&note).unwrap_err();
        assert!(expect(&err), "{body:?} gave {err:?}");
    }
    // A non-canonical base64 root: the last character carries bits that must be zero.
    let mut chars: Vec<char> = root.chars().collect();
    let last = chars.len() - 2;
    chars[last] = match chars[last] {
        'A' => 'B',
        c => {
            let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            let i = alphabet.find(c).unwrap();
            alphabet.chars().nth(i ^ 1).unwrap()
        }
    };
    let odd_root: String = chars.into_iter().collect();
    let note = sign_text(&format!("o\n42\n{odd_root}\n{t}\n"));
    assert!(verifier().verify(&note).is_err());
}

#[test]
fn rejects_bad_key_names_and_vkeys() {
    for name in ["", "has space", "has+plus", "tab\tname", "new\nline"] {
        assert!(matches!(
            NoteSigner::from_seed(name, &SEED),
            Err(CheckpointError::InvalidKeyName(_))
        ));
    }
    let good = signer().verifier_key();
    let parts: Vec<&str> = good.splitn(3, '+').collect();
    let wrong_id = format!("{}+00000000+{}", parts[0], parts[2]);
    let upper_id = format!("{}+{}+{}", parts[0], parts[1].to_uppercase(), parts[2]);
    let mut material = B64.decode(parts[2]).unwrap();
    material[0] = 0x02;
    let wrong_type = format!("{}+{}+{}", parts[0], parts[1], B64.encode(&material));
    let short = format!("{}+{}+{}", parts[0], parts[1], B64.encode(&material[..20]));
    for bad in [
        "",
        "name",
        "name+1234",
        &format!("{good}+extra"),
        &wrong_id,
        &wrong_type,
        &short,
        &format!("{}+{}+***", parts[0], parts[1]),
    ] {
        assert!(
            matches!(
                NoteVerifier::from_vkey(bad),
                Err(CheckpointError::MalformedVerifierKey(_) | CheckpointError::InvalidKeyName(_))
            ),
            "{bad}"
        );
    }
    if upper_id != good {
        assert!(NoteVerifier::from_vkey(&upper_id).is_err());
    }
    // Surrounding whitespace (a trailing newline in a key file) is fine.
    assert_eq!(
        NoteVerifier::from_vkey(&format!("{good}\n")).unwrap(),
        verifier()
    );
}

#[test]
fn splits_a_checkpoints_file() {
    let s = signer();
    let mut a = cp();
    let notes: Vec<String> = (0..3)
        .map(|i| {
            a.size = 10 * i;
            s.sign(&a)
        })
        .collect();
    let file = notes.concat();
    let split = split_notes(&file).unwrap();
    assert_eq!(split, notes.iter().map(String::as_str).collect::<Vec<_>>());
    for (i, n) in split.iter().enumerate() {
        assert_eq!(verifier().verify(n).unwrap().size, 10 * i as u64);
    }
    // Blank lines between notes are tolerated; an empty file has no notes.
    let spaced = notes.join("\n");
    assert_eq!(split_notes(&spaced).unwrap().len(), 3);
    assert!(split_notes("").unwrap().is_empty());
    // A co-signed note stays one note.
    let witness = NoteSigner::from_seed("witness.example/w1", &OTHER_SEED).unwrap();
    let cosigned = format!(
        "{}{}\n{}",
        notes[0],
        witness.sign(&cp()).lines().last().unwrap(),
        notes[1]
    );
    assert_eq!(split_notes(&cosigned).unwrap().len(), 2);
}

#[test]
fn split_rejects_truncated_files() {
    let note = signer().sign(&cp());
    let file = format!("{note}{note}");
    let cut = &file[..file.len() - 1];
    assert!(split_notes(cut).is_err());
    let body_only = format!("{note}{}", cp().body());
    assert!(split_notes(&body_only).is_err());
    let no_sig = format!("{note}{}\n", cp().body());
    assert!(split_notes(&no_sig).is_err());
    // A write in progress: every prefix of the second note is dropped, never misread.
    for end in note.len()..file.len() {
        let Some(prefix) = file.get(..end) else {
            continue; // inside the em dash: not a string a reader could hold
        };
        let (notes, cut) = split_complete_notes(prefix).unwrap();
        assert_eq!(notes, vec![note.as_str()], "prefix of {end} bytes");
        assert_eq!(cut, end > note.len(), "prefix of {end} bytes");
    }
    assert_eq!(
        split_complete_notes(&file).unwrap(),
        (vec![note.as_str(), note.as_str()], false)
    );
    // Damage in the middle is still an error.
    let middle = format!("{}\n{note}", cp().body());
    assert!(split_complete_notes(&middle).is_err());
}

#[test]
fn verifier_keys_whose_base64_holds_a_plus_parse() {
    let mut found = 0;
    for i in 0..64u8 {
        let s = NoteSigner::from_seed(NAME, &[i; 32]).unwrap();
        let vkey = s.verifier_key();
        if vkey.splitn(3, '+').nth(2).unwrap().contains('+') {
            found += 1;
            let v = NoteVerifier::from_vkey(&vkey).unwrap();
            assert_eq!(v.verify(&s.sign(&cp())).unwrap(), cp());
        }
    }
    assert!(found > 0, "no seed among 64 gave a '+' in its key");
}

#[test]
fn generated_seeds_differ_and_sign() {
    let a = generate_seed().unwrap();
    let b = generate_seed().unwrap();
    assert_ne!(*a, *b);
    let s = NoteSigner::from_seed(NAME, &a).unwrap();
    let v = NoteVerifier::from_vkey(&s.verifier_key()).unwrap();
    assert_eq!(v.verify(&s.sign(&cp())).unwrap(), cp());
    assert!(!format!("{s:?}").contains("pair"));
}

/// A note checked once with an independent Ed25519 implementation (Python `cryptography`
/// 48.0: key id, public key from the seed, and the signature over the text), pinned here so
/// the format can never drift.
#[test]
fn pinned_note_checked_by_another_implementation() {
    let s = NoteSigner::from_seed(NAME, &[42u8; 32]).unwrap();
    assert_eq!(
        s.verifier_key(),
        "carevault-audit/cv-node-1+5106693b+ARl/ayPhbIUyxqvIOPrNXqeJvgx2spIDNAOb+os9No1h"
    );
    let note = s.sign(&Checkpoint {
        origin: "carevault.example/audit".into(),
        size: 42,
        root: leaf_hash(b"x"),
        time_ms: 1_795_857_243_117,
    });
    assert_eq!(
        note,
        "carevault.example/audit\n42\nPH6byTDck/AfppmF7yQtn56GHzxTVaokzl70tLinDMs=\n\
         time 2026-11-28T09:14:03.117Z\n\n\
         \u{2014} carevault-audit/cv-node-1 UQZpO9iAqRDBbNE99HZovC5e1OqAkThitunDkTwKWni9HpAi1Nd80xh8\
         DScLeIyRkdGG2X6sl869x61oXmlGvV6i3wk=\n"
    );
}
