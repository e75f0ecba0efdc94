//! Password rules (NIST SP 800-63B rev 4, OWASP ASVS 5.0 V6): length counted in Unicode code
//! points after NFKC normalisation, no composition rules, no user name inside, not on the embedded
//! list of common and breached passwords.

use std::cmp::Ordering;

use unicode_normalization::UnicodeNormalization;
use zeroize::Zeroizing;

/// Fewest characters a password may have. Every human account has a second factor, so NIST's
/// 8-character floor for multi-factor use applies; carevault asks for 12 (PRODUCT.md 2.3).
pub const MIN_PASSWORD_CHARS: usize = 12;

/// Most characters a password may have (NIST asks that at least 64 be allowed).
pub const MAX_PASSWORD_CHARS: usize = 256;

/// User names shorter than this are not searched for inside passwords (a one-letter name would
/// forbid most passwords).
pub const MIN_NAME_CHARS_CHECKED: usize = 3;

/// The embedded list: sorted, distinct big-endian `u32` keys ([`list_key`]) of the 100,000 most
/// common passwords of the SecLists collection plus every longer entry of it (see
/// `tools/gen-breached.sh`). Only these 4-byte prefixes of SHA-256 are embedded; the list never
/// leaves the process.
static BREACHED: &[u8] = include_bytes!("../data/breached-passwords.bin");

/// Why a password was refused: one sentence a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    /// Too short (under [`MIN_PASSWORD_CHARS`]).
    #[error(
        "the password is too short: use at least 12 characters (a passphrase of several words is easiest)"
    )]
    TooShort,
    /// Too long (over [`MAX_PASSWORD_CHARS`]).
    #[error("the password is too long: use at most 256 characters")]
    TooLong,
    /// It contains the account name.
    #[error("the password contains the user name; choose one that does not")]
    ContainsName,
    /// It is on the list of common or breached passwords.
    #[error("the password is on a list of common or breached passwords; choose another")]
    Common,
    /// It contains a control character (such as a newline from a file).
    #[error("the password contains a control character; remove it")]
    ControlCharacter,
}

/// The form a password is hashed and checked in: NFKC (NIST SP 800-63B 3.1.1.2).
pub fn normalise(password: &str) -> Zeroizing<String> {
    Zeroizing::new(password.nfkc().collect())
}

/// Checks `password` for account `name` against every rule.
pub fn check(name: &str, password: &str) -> Result<(), PasswordError> {
    let norm = normalise(password);
    if norm.chars().any(char::is_control) {
        return Err(PasswordError::ControlCharacter);
    }
    let chars = norm.chars().count();
    if chars < MIN_PASSWORD_CHARS {
        return Err(PasswordError::TooShort);
    }
    if chars > MAX_PASSWORD_CHARS {
        return Err(PasswordError::TooLong);
    }
    let lower = Zeroizing::new(norm.to_lowercase());
    let name_lower = name.nfkc().collect::<String>().to_lowercase();
    if name_lower.chars().count() >= MIN_NAME_CHARS_CHECKED && lower.contains(&name_lower) {
        return Err(PasswordError::ContainsName);
    }
    if is_common(password) {
        return Err(PasswordError::Common);
    }
    Ok(())
}

/// True when `password` (compared NFKC-normalised and lower-cased) is on the embedded list.
pub fn is_common(password: &str) -> bool {
    contains_key(BREACHED, list_key(password))
}

/// Number of entries on the embedded list.
pub fn common_list_len() -> usize {
    BREACHED.len() / 4
}

/// The key a list entry or candidate is looked up by: the first four bytes of
/// SHA-256(lower-case(NFKC(password))), big-endian.
pub fn list_key(password: &str) -> u32 {
    let lower = Zeroizing::new(normalise(password).to_lowercase());
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, lower.as_bytes());
    let d = digest.as_ref();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// Binary search of a sorted big-endian `u32` array.
pub fn contains_key(sorted: &[u8], key: u32) -> bool {
    let n = sorted.len() / 4;
    let at = |i: usize| {
        let b = &sorted[i * 4..i * 4 + 4];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    };
    let (mut lo, mut hi) = (0usize, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match at(mid).cmp(&key) {
            Ordering::Equal => return true,
            Ordering::Less => lo = mid + 1,
            Ordering::Greater => hi = mid,
        }
    }
    false
}

/// Builds the embedded form from list entries (most common first): the first `top` entries,
/// plus every later entry of at least [`MIN_PASSWORD_CHARS`] characters, as sorted distinct keys.
pub fn build_list<'a>(entries: impl IntoIterator<Item = &'a str>, top: usize) -> Vec<u8> {
    let mut keys: Vec<u32> = entries
        .into_iter()
        .map(str::trim_end)
        .filter(|e| !e.is_empty())
        .enumerate()
        .filter(|(i, e)| *i < top || normalise(e).chars().count() >= MIN_PASSWORD_CHARS)
        .map(|(_, e)| list_key(e))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys.iter().flat_map(|k| k.to_be_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_is_counted_in_characters_after_normalisation() {
        assert_eq!(check("nurse1", "short pass"), Err(PasswordError::TooShort));
        // 11 characters, 22 bytes: still too short.
        assert_eq!(check("nurse1", "ééééééééééé"), Err(PasswordError::TooShort));
        assert_eq!(check("nurse1", "éééééééééééé"), Ok(()));
        // "e" + combining acute (2 code points) normalises to one: 12 pairs are 12 characters.
        let decomposed = "e\u{301}".repeat(11);
        assert_eq!(check("nurse1", &decomposed), Err(PasswordError::TooShort));
        assert_eq!(check("nurse1", &"x7".repeat(128)), Ok(()));
        assert_eq!(
            check("nurse1", &format!("{}y", "x7".repeat(128))),
            Err(PasswordError::TooLong)
        );
    }

    #[test]
    fn messages_name_the_limits() {
        assert!(
            PasswordError::TooShort
                .to_string()
                .contains(&format!(" {MIN_PASSWORD_CHARS} "))
        );
        assert!(
            PasswordError::TooLong
                .to_string()
                .contains(&format!(" {MAX_PASSWORD_CHARS} "))
        );
    }

    #[test]
    fn no_composition_rules() {
        for ok in [
            "correct horse battery staple",
            "alllowercaseletters",
            "ЖЖЖ пароль для входа",
            "😀 emoji are characters too 😀",
        ] {
            assert_eq!(check("nurse1", ok), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn the_user_name_is_refused_in_any_case() {
        assert_eq!(
            check("mjones", "my name is MJones ok"),
            Err(PasswordError::ContainsName)
        );
        assert_eq!(
            check("mjones", "xxmjonesxxxxxxx"),
            Err(PasswordError::ContainsName)
        );
        // Names shorter than three characters are not searched for.
        assert_eq!(check("al", "always almost alright"), Ok(()));
    }

    #[test]
    fn control_characters_are_refused() {
        assert_eq!(
            check("nurse1", "line one\nline two"),
            Err(PasswordError::ControlCharacter)
        );
    }

    #[test]
    fn a_list_written_here_is_searched_exactly() {
        let list = build_list(
            [
                "123456",
                "password",
                "qwerty",
                "short",
                "iloveyou",
                "thisisalongpassword",
                "rarelongpassword1",
            ],
            4,
        );
        // Top 4 plus the later long ones ("iloveyou" is later and short: not kept).
        assert_eq!(list.len() / 4, 6);
        for present in [
            "123456",
            "password",
            "PassWord",
            "QWERTY",
            "thisisalongpassword",
            "RareLongPassword1",
        ] {
            assert!(contains_key(&list, list_key(present)), "{present}");
        }
        for absent in ["iloveyou", "correct horse battery staple", ""] {
            assert!(!contains_key(&list, list_key(absent)), "{absent}");
        }
    }

    #[test]
    fn the_embedded_list_refuses_well_known_passwords() {
        assert!(common_list_len() >= 100_000, "{}", common_list_len());
        for weak in [
            "123456",
            "password",
            "qwerty",
            "iloveyou",
            "123456789012",
            "qwertyuiopasdfghjkl",
            "PASSWORD",
        ] {
            assert!(is_common(weak), "{weak} should be on the list");
        }
        for weak in ["qwertyuiopasdfghjkl", "123456789012", "111111111111"] {
            assert_eq!(check("nurse1", weak), Err(PasswordError::Common), "{weak}");
        }
        assert!(!is_common("correct horse battery staple carevault"));
    }

    #[test]
    fn the_embedded_list_is_sorted_and_distinct() {
        assert_eq!(BREACHED.len() % 4, 0);
        assert!(BREACHED.len() <= 1 << 20, "keep the list under 1 MiB");
        let keys: Vec<u32> = BREACHED
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
    }
}
