//! Signed checkpoints of the audit log in the C2SP `tlog-checkpoint` and `signed-note` formats,
//! signed with Ed25519.
//!
//! A checkpoint note looks like this (the last body line is carevault's one extension line):
//!
//! ```text
//! carevault.example/audit
//! 42
//! 7UQRqXIQwbcuJa4Q8T+LGDtgcJP1/t4RCi5aL/hyD8A=
//! time 2026-11-28T09:14:03.117Z
//!
//! — carevault-audit/cv-node-1 AbCdEf...base64(key id || signature)...
//! ```
//!
//! Parsing is strict: only the exact text [`Checkpoint::body`] writes is accepted, so two notes
//! for the same tree head are always byte-identical.

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use zeroize::Zeroizing;

use crate::instant;
use crate::merkle::Hash;

/// The signed-note signature type byte of Ed25519.
const ED25519_TYPE: u8 = 0x01;

/// Most signature lines accepted on one note (the spec asks for at least 16).
const MAX_SIGNATURES: usize = 64;

/// Largest note accepted, in bytes; a checkpoint is a few hundred.
const MAX_NOTE_BYTES: usize = 64 * 1024;

/// The signature line prefix: em dash and space.
const SIG_PREFIX: &str = "\u{2014} ";

/// Errors from making, signing, parsing or verifying checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// A key name is empty or holds a space, a plus sign or a control character.
    #[error("the key name {0:?} is not allowed: it must be non-empty, without spaces or '+'")]
    InvalidKeyName(String),
    /// The Ed25519 seed or public key was rejected by the crypto library.
    #[error("the Ed25519 key was rejected: {0}")]
    InvalidKey(String),
    /// A verifier key string is not `<name>+<hex key id>+<base64(0x01 || key)>`.
    #[error("the verifier key is malformed: {0}")]
    MalformedVerifierKey(&'static str),
    /// The system random generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// A note does not have the signed-note shape.
    #[error("the signed note is malformed: {0}")]
    MalformedNote(&'static str),
    /// A checkpoint body does not have the tlog-checkpoint shape carevault writes.
    #[error("the checkpoint body is malformed: {0}")]
    MalformedCheckpoint(&'static str),
    /// A number or hash in the body is not written in its one canonical form.
    #[error("the checkpoint {0} is not in canonical form")]
    NonCanonical(&'static str),
    /// The body has no `time` extension line.
    #[error("the checkpoint has no time line")]
    MissingTime,
    /// No signature on the note comes from the expected key.
    #[error("the note carries no signature by key {name} ({key_id}); it was signed by {found}")]
    UnknownKey {
        /// The expected key name.
        name: String,
        /// The expected key id, 8 hex digits.
        key_id: String,
        /// The signers found on the note, `name (key id)`, comma-separated.
        found: String,
    },
    /// A signature from the expected key does not verify over the note text.
    #[error("the signature by key {name} does not verify: the note was altered or forged")]
    BadSignature {
        /// The key name.
        name: String,
    },
}

/// A tree head: the log's origin, its size, its RFC 9162 root and when it was signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's identity, the first line (non-empty, no control characters).
    pub origin: String,
    /// Number of entries in the tree.
    pub size: u64,
    /// RFC 9162 root of the first `size` entries.
    pub root: Hash,
    /// When the checkpoint was made, milliseconds since the Unix epoch (UTC).
    pub time_ms: i64,
}

impl Checkpoint {
    /// The note text: origin, size, base64 root and `time <instant>` lines, each ending in a
    /// newline.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\ntime {}\n",
            self.origin,
            self.size,
            B64.encode(self.root),
            instant::format_ms(self.time_ms)
        )
    }

    /// Parses a note text written by [`Checkpoint::body`], rejecting any other spelling.
    pub fn parse_body(text: &str) -> Result<Checkpoint, CheckpointError> {
        let Some(text) = text.strip_suffix('\n') else {
            return Err(CheckpointError::MalformedCheckpoint(
                "the text does not end with a newline",
            ));
        };
        let mut lines = text.split('\n');
        let origin = lines.next().unwrap_or_default();
        if origin.is_empty() {
            return Err(CheckpointError::MalformedCheckpoint(
                "the origin line is empty",
            ));
        }
        let size_line = lines.next().ok_or(CheckpointError::MalformedCheckpoint(
            "the size line is missing",
        ))?;
        let size = parse_canonical_u64(size_line)?;
        let root_line = lines.next().ok_or(CheckpointError::MalformedCheckpoint(
            "the root line is missing",
        ))?;
        let root_bytes = B64
            .decode(root_line)
            .map_err(|_| CheckpointError::MalformedCheckpoint("the root is not base64"))?;
        let root: Hash = root_bytes
            .as_slice()
            .try_into()
            .map_err(|_| CheckpointError::MalformedCheckpoint("the root is not 32 bytes"))?;
        if B64.encode(root) != root_line {
            return Err(CheckpointError::NonCanonical("root"));
        }
        let time_line = lines.next().ok_or(CheckpointError::MissingTime)?;
        let Some(time_text) = time_line.strip_prefix("time ") else {
            return Err(CheckpointError::MissingTime);
        };
        let time_ms = instant::parse_ms(time_text).ok_or(CheckpointError::MalformedCheckpoint(
            "the time is not a UTC instant like 2026-11-28T09:14:03.117Z",
        ))?;
        if lines.next().is_some() {
            return Err(CheckpointError::MalformedCheckpoint(
                "it has lines after the time line",
            ));
        }
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
            time_ms,
        })
    }
}

fn parse_canonical_u64(text: &str) -> Result<u64, CheckpointError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CheckpointError::MalformedCheckpoint(
            "the size is not a decimal number",
        ));
    }
    if text.len() > 1 && text.starts_with('0') {
        return Err(CheckpointError::NonCanonical("size"));
    }
    text.parse()
        .map_err(|_| CheckpointError::MalformedCheckpoint("the size is too large"))
}

fn check_key_name(name: &str) -> Result<(), CheckpointError> {
    if name.is_empty()
        || name
            .chars()
            .any(|c| c.is_whitespace() || c == '+' || c.is_control())
    {
        return Err(CheckpointError::InvalidKeyName(name.to_owned()));
    }
    Ok(())
}

/// The signed-note key id: the first four bytes of SHA-256(name || "\n" || 0x01 || public key).
fn key_id(name: &str, public: &[u8; 32]) -> [u8; 4] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(name.as_bytes());
    ctx.update(b"\n");
    ctx.update(&[ED25519_TYPE]);
    ctx.update(public);
    let d = ctx.finish();
    let mut out = [0u8; 4];
    // A SHA-256 digest has 32 bytes, so its first four always exist.
    out.copy_from_slice(&d.as_ref()[..4]);
    out
}

fn hex4(id: &[u8; 4]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Signs checkpoints with an Ed25519 key under a key name such as `carevault-audit/cv-node-1`.
pub struct NoteSigner {
    name: String,
    pair: Ed25519KeyPair,
    public: [u8; 32],
    key_id: [u8; 4],
}

impl std::fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoteSigner")
            .field("name", &self.name)
            .field("key_id", &hex4(&self.key_id))
            .finish_non_exhaustive()
    }
}

impl NoteSigner {
    /// Builds a signer from a key name and a 32-byte Ed25519 seed.
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<NoteSigner, CheckpointError> {
        check_key_name(name)?;
        let pair = Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|e| CheckpointError::InvalidKey(e.to_string()))?;
        let public: [u8; 32] =
            pair.public_key().as_ref().try_into().map_err(|_| {
                CheckpointError::InvalidKey("the public key is not 32 bytes".into())
            })?;
        Ok(NoteSigner {
            name: name.to_owned(),
            key_id: key_id(name, &public),
            pair,
            public,
        })
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The signed-note key id (first four bytes of the key hash).
    pub fn key_hash(&self) -> [u8; 4] {
        self.key_id
    }

    /// The verifier key, `<name>+<hex key id>+<base64(0x01 || public key)>`.
    pub fn verifier_key(&self) -> String {
        let mut material = Vec::with_capacity(33);
        material.push(ED25519_TYPE);
        material.extend_from_slice(&self.public);
        format!(
            "{}+{}+{}",
            self.name,
            hex4(&self.key_id),
            B64.encode(material)
        )
    }

    /// The full signed note for `cp`: its body, a blank line and one signature line.
    ///
    /// The origin must be a non-empty line without control characters; a note made from any
    /// other origin does not verify.
    pub fn sign(&self, cp: &Checkpoint) -> String {
        let body = cp.body();
        let signature = self.pair.sign(body.as_bytes());
        let mut blob = Vec::with_capacity(4 + 64);
        blob.extend_from_slice(&self.key_id);
        blob.extend_from_slice(signature.as_ref());
        format!("{body}\n{SIG_PREFIX}{} {}\n", self.name, B64.encode(blob))
    }
}

/// Verifies checkpoint notes against one Ed25519 verifier key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    public: [u8; 32],
    key_id: [u8; 4],
}

impl NoteVerifier {
    /// Parses a verifier key `<name>+<hex key id>+<base64(0x01 || public key)>`.
    pub fn from_vkey(vkey: &str) -> Result<NoteVerifier, CheckpointError> {
        let vkey = vkey.trim();
        // Key names hold no '+', but the base64 key material may: split at the first two only.
        let mut parts = vkey.splitn(3, '+');
        let (Some(name), Some(id_hex), Some(material)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(CheckpointError::MalformedVerifierKey(
                "it does not have three '+'-separated parts",
            ));
        };
        check_key_name(name)?;
        if id_hex.len() != 8
            || !id_hex
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(CheckpointError::MalformedVerifierKey(
                "the key id is not 8 lowercase hex digits",
            ));
        }
        let material = B64
            .decode(material)
            .map_err(|_| CheckpointError::MalformedVerifierKey("the key is not base64"))?;
        let (&kind, public) = material
            .split_first()
            .ok_or(CheckpointError::MalformedVerifierKey("the key is empty"))?;
        if kind != ED25519_TYPE {
            return Err(CheckpointError::MalformedVerifierKey(
                "the key is not an Ed25519 (type 0x01) key",
            ));
        }
        let public: [u8; 32] = public
            .try_into()
            .map_err(|_| CheckpointError::MalformedVerifierKey("the key is not 32 bytes"))?;
        let key_id = key_id(name, &public);
        if hex4(&key_id) != id_hex {
            return Err(CheckpointError::MalformedVerifierKey(
                "the key id does not match the name and key",
            ));
        }
        Ok(NoteVerifier {
            name: name.to_owned(),
            public,
            key_id,
        })
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The signed-note key id (first four bytes of the key hash).
    pub fn key_hash(&self) -> [u8; 4] {
        self.key_id
    }

    /// Verifies a signed checkpoint note and returns its checkpoint.
    ///
    /// Signatures by other keys are ignored, as signed-note requires; at least one signature by
    /// this key must be present and every one of them must verify.
    pub fn verify(&self, note: &str) -> Result<Checkpoint, CheckpointError> {
        Checkpoint::parse_body(self.verify_text(note)?)
    }

    /// Verifies the signatures of any signed note and returns its text (with its final newline),
    /// by the same rules as [`NoteVerifier::verify`].
    pub fn verify_text<'a>(&self, note: &'a str) -> Result<&'a str, CheckpointError> {
        let parsed = parse_note(note)?;
        let mut verified = false;
        for sig in &parsed.signatures {
            if sig.name != self.name || sig.key_id != self.key_id {
                continue;
            }
            UnparsedPublicKey::new(&ED25519, &self.public)
                .verify(parsed.text.as_bytes(), &sig.signature)
                .map_err(|_| CheckpointError::BadSignature {
                    name: self.name.clone(),
                })?;
            verified = true;
        }
        if !verified {
            let found = parsed
                .signatures
                .iter()
                .map(|s| format!("{} ({})", s.name, hex4(&s.key_id)))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(CheckpointError::UnknownKey {
                name: self.name.clone(),
                key_id: hex4(&self.key_id),
                found,
            });
        }
        Ok(parsed.text)
    }
}

/// One signature line of a note.
struct NoteSignature<'a> {
    name: &'a str,
    key_id: [u8; 4],
    /// The decoded signature after the key id.
    signature: Vec<u8>,
}

/// A note split into its text and its signatures.
struct ParsedNote<'a> {
    text: &'a str,
    signatures: Vec<NoteSignature<'a>>,
}

fn parse_note(note: &str) -> Result<ParsedNote<'_>, CheckpointError> {
    let (text, sig_block) = split_text_and_signatures(note)?;
    let mut signatures = Vec::new();
    for line in sig_block.split_terminator('\n') {
        if signatures.len() == MAX_SIGNATURES {
            return Err(CheckpointError::MalformedNote("it has too many signatures"));
        }
        let rest = line
            .strip_prefix(SIG_PREFIX)
            .ok_or(CheckpointError::MalformedNote(
                "a signature line does not start with an em dash and a space",
            ))?;
        let (name, b64) = rest.split_once(' ').ok_or(CheckpointError::MalformedNote(
            "a signature line has no space between key name and signature",
        ))?;
        if name.is_empty() || name.contains('+') || b64.contains(' ') {
            return Err(CheckpointError::MalformedNote(
                "a signature line has a malformed key name or signature",
            ));
        }
        let blob = B64
            .decode(b64)
            .map_err(|_| CheckpointError::MalformedNote("a signature is not valid base64"))?;
        if blob.len() < 5 {
            return Err(CheckpointError::MalformedNote("a signature is too short"));
        }
        let mut key_id = [0u8; 4];
        key_id.copy_from_slice(&blob[..4]);
        signatures.push(NoteSignature {
            name,
            key_id,
            signature: blob[4..].to_vec(),
        });
    }
    Ok(ParsedNote { text, signatures })
}

/// Splits a note into its text (with its final newline) and its signature lines.
fn split_text_and_signatures(note: &str) -> Result<(&str, &str), CheckpointError> {
    if note.len() > MAX_NOTE_BYTES {
        return Err(CheckpointError::MalformedNote("it is too large"));
    }
    if note.chars().any(|c| c.is_control() && c != '\n') {
        return Err(CheckpointError::MalformedNote(
            "it contains a control character other than newline",
        ));
    }
    if !note.ends_with('\n') {
        return Err(CheckpointError::MalformedNote(
            "it does not end with a newline",
        ));
    }
    // The text is separated from the signatures by the last blank line.
    let split = note.rfind("\n\n").ok_or(CheckpointError::MalformedNote(
        "it has no blank line before its signatures",
    ))?;
    let text = &note[..=split];
    let sigs = &note[split + 2..];
    if sigs.is_empty() {
        return Err(CheckpointError::MalformedNote("it has no signature lines"));
    }
    if text.len() <= 1 {
        return Err(CheckpointError::MalformedNote("its text is empty"));
    }
    Ok((text, sigs))
}

/// The signers of a note as `(key name, key id)`, without verifying anything.
pub fn note_signers(note: &str) -> Result<Vec<(String, [u8; 4])>, CheckpointError> {
    Ok(parse_note(note)?
        .signatures
        .into_iter()
        .map(|s| (s.name.to_owned(), s.key_id))
        .collect())
}

/// Splits a `checkpoints` file holding signed notes one after another into the notes.
///
/// Each note runs from its origin line through its blank line to its last signature line; the
/// next note starts at the first line that is not a signature line. Blank lines between notes
/// are tolerated. A truncated last note is an error.
pub fn split_notes(file: &str) -> Result<Vec<&str>, CheckpointError> {
    split(file, false).map(|(notes, _)| notes)
}

/// Like [`split_notes`], but a last note cut off by the end of the file (a write still in
/// progress when the file was read) is left out instead of failing; the flag says whether one
/// was.
pub fn split_complete_notes(file: &str) -> Result<(Vec<&str>, bool), CheckpointError> {
    split(file, true)
}

fn split(file: &str, tolerate_cut_tail: bool) -> Result<(Vec<&str>, bool), CheckpointError> {
    const CUT: CheckpointError =
        CheckpointError::MalformedNote("the last note in the file is cut off");
    let mut notes = Vec::new();
    let mut pos = 0usize;
    let len = file.len();
    while pos < len {
        // Skip blank lines between notes.
        if file[pos..].starts_with('\n') {
            pos += 1;
            continue;
        }
        let start = pos;
        let cut = |notes| {
            if tolerate_cut_tail {
                Ok((notes, true))
            } else {
                Err(CUT)
            }
        };
        // Text lines: up to the blank line.
        loop {
            let Some(nl) = file[pos..].find('\n') else {
                return cut(notes);
            };
            let line = &file[pos..pos + nl];
            pos += nl + 1;
            if line.is_empty() {
                break;
            }
            if line.starts_with(SIG_PREFIX) {
                return Err(CheckpointError::MalformedNote(
                    "a signature line appears before the blank line",
                ));
            }
        }
        // Signature lines: as long as lines start with the em dash.
        let mut signatures = 0usize;
        while file[pos..].starts_with(SIG_PREFIX) {
            let Some(nl) = file[pos..].find('\n') else {
                return cut(notes);
            };
            pos += nl + 1;
            signatures += 1;
        }
        if signatures == 0 {
            // Nothing after the blank line but a partial last line: a signature line being
            // written.
            if !file[pos..].contains('\n') {
                return cut(notes);
            }
            return Err(CheckpointError::MalformedNote(
                "a note in the file has no signature lines",
            ));
        }
        notes.push(&file[start..pos]);
    }
    Ok((notes, false))
}

/// A fresh random 32-byte Ed25519 seed from the system generator.
pub fn generate_seed() -> Result<Zeroizing<[u8; 32]>, CheckpointError> {
    let mut seed = Zeroizing::new([0u8; 32]);
    SystemRandom::new()
        .fill(seed.as_mut())
        .map_err(|_| CheckpointError::Random)?;
    Ok(seed)
}

#[cfg(test)]
mod tests;
