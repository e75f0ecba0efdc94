//! TOTP (RFC 6238 over RFC 4226 HOTP): HMAC-SHA-1, 6 digits, 30-second steps, one step of
//! clock drift either way; the caller keeps the last step used so a code is never accepted twice.

use aws_lc_rs::hmac;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Seconds per step.
pub const STEP_SECONDS: u64 = 30;
/// Digits per code.
pub const DIGITS: u32 = 6;
/// Steps of drift accepted either side of now.
pub const DRIFT_STEPS: u64 = 1;
/// Bytes of a new secret (160 bits, RFC 4226's recommendation).
pub const SECRET_BYTES: usize = 20;

/// A TOTP secret: raw key bytes, zeroized on drop.
#[derive(Clone)]
pub struct TotpSecret(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpSecret([redacted])")
    }
}

impl TotpSecret {
    /// A secret from raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self(Zeroizing::new(bytes.to_vec()))
    }

    /// Parses unpadded (or padded) RFC 4648 base32, case-insensitive, spaces ignored.
    pub fn from_base32(text: &str) -> Option<Self> {
        let cleaned: Zeroizing<String> = Zeroizing::new(
            text.chars()
                .filter(|c| !c.is_whitespace() && *c != '=')
                .map(|c| c.to_ascii_uppercase())
                .collect(),
        );
        data_encoding::BASE32_NOPAD
            .decode(cleaned.as_bytes())
            .ok()
            .filter(|b| !b.is_empty())
            .map(|b| Self(Zeroizing::new(b)))
    }

    /// Unpadded base32, as authenticator apps take it.
    pub fn to_base32(&self) -> SecretString {
        SecretString::from(data_encoding::BASE32_NOPAD.encode(&self.0))
    }

    /// The code for step `counter` (RFC 4226 dynamic truncation).
    pub fn code_at_step(&self, counter: u64) -> u32 {
        let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &self.0);
        let tag = hmac::sign(&key, &counter.to_be_bytes());
        let d = tag.as_ref();
        let offset = usize::from(d[d.len() - 1] & 0x0f);
        let bin = u32::from_be_bytes([
            d[offset] & 0x7f,
            d[offset + 1],
            d[offset + 2],
            d[offset + 3],
        ]);
        bin % 10u32.pow(DIGITS)
    }

    /// The code at `unix_seconds`, zero-padded.
    pub fn code_at(&self, unix_seconds: u64) -> String {
        format!(
            "{:0width$}",
            self.code_at_step(unix_seconds / STEP_SECONDS),
            width = DIGITS as usize
        )
    }

    /// The step whose code `code` is, within [`DRIFT_STEPS`] of `unix_seconds` and strictly after
    /// `last_used` (replay protection); `None` when it matches no such step. Every candidate step is
    /// compared in constant time.
    pub fn verify(&self, code: &str, unix_seconds: u64, last_used: Option<u64>) -> Option<u64> {
        let code = code.trim();
        let well_formed = code.len() == DIGITS as usize && code.bytes().all(|b| b.is_ascii_digit());
        let now = unix_seconds / STEP_SECONDS;
        let mut found = None;
        for step in now.saturating_sub(DRIFT_STEPS)..=now + DRIFT_STEPS {
            let expected = format!(
                "{:0width$}",
                self.code_at_step(step),
                width = DIGITS as usize
            );
            let equal: bool = expected.as_bytes().ct_eq(code.as_bytes()).into();
            let fresh = last_used.is_none_or(|l| step > l);
            if equal && fresh && well_formed && found.is_none() {
                found = Some(step);
            }
        }
        found
    }
}

/// The `otpauth://` URI authenticator apps read (Key Uri Format): issuer `carevault`.
pub fn otpauth_uri(account: &str, secret: &TotpSecret) -> SecretString {
    let label = percent_encode(&format!("carevault:{account}"));
    SecretString::from(format!(
        "otpauth://totp/{label}?secret={}&issuer=carevault&algorithm=SHA1&digits={DIGITS}&period={STEP_SECONDS}",
        secret.to_base32().expose_secret()
    ))
}

/// Percent-encodes everything outside RFC 3986's unreserved set (and keeps ':' for the label).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rfc_secret() -> TotpSecret {
        TotpSecret::from_bytes(b"12345678901234567890")
    }

    #[test]
    fn rfc6238_sha1_vectors() {
        // RFC 6238 appendix B (SHA-1), last six of the eight digits.
        let s = rfc_secret();
        for (t, code) in [
            (59, "287082"),
            (1_111_111_109, "081804"),
            (1_111_111_111, "050471"),
            (1_234_567_890, "005924"),
            (2_000_000_000, "279037"),
            (20_000_000_000, "353130"),
        ] {
            assert_eq!(s.code_at(t), code, "t={t}");
        }
    }

    #[test]
    fn drift_of_one_step_either_way() {
        let s = rfc_secret();
        let t = 1_234_567_890;
        let now_step = t / STEP_SECONDS;
        assert_eq!(s.verify(&s.code_at(t), t, None), Some(now_step));
        assert_eq!(s.verify(&s.code_at(t - 30), t, None), Some(now_step - 1));
        assert_eq!(s.verify(&s.code_at(t + 30), t, None), Some(now_step + 1));
        assert_eq!(s.verify(&s.code_at(t - 60), t, None), None);
        assert_eq!(s.verify(&s.code_at(t + 60), t, None), None);
    }

    #[test]
    fn used_and_earlier_steps_are_replays() {
        let s = rfc_secret();
        let t = 1_234_567_890;
        let step = t / STEP_SECONDS;
        let code = s.code_at(t);
        assert_eq!(s.verify(&code, t, Some(step)), None, "same step");
        assert_eq!(s.verify(&s.code_at(t - 30), t, Some(step)), None, "earlier");
        assert_eq!(s.verify(&code, t, Some(step - 1)), Some(step));
    }

    #[test]
    fn malformed_codes_fail() {
        let s = rfc_secret();
        for bad in ["", "12345", "1234567", "abcdef", "005 24"] {
            assert_eq!(s.verify(bad, 1_234_567_890, None), None, "{bad:?}");
        }
    }

    #[test]
    fn base32_and_uri() {
        let s = rfc_secret();
        assert_eq!(
            s.to_base32().expose_secret(),
            "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
        );
        let back = TotpSecret::from_base32("gezd gnbv gy3t qojq gezd gnbv gy3t qojq").unwrap();
        assert_eq!(back.code_at(59), "287082");
        assert!(TotpSecret::from_base32("!!").is_none());
        let uri = otpauth_uri("dr smith", &s);
        assert_eq!(
            uri.expose_secret(),
            "otpauth://totp/carevault:dr%20smith?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=carevault&algorithm=SHA1&digits=6&period=30"
        );
        assert!(!format!("{s:?}").contains("GEZ"));
    }
}
