//! Randomness as an interface: keys, secrets, salts and token ids come from a [`Random`].

use aws_lc_rs::rand::SecureRandom;

use crate::CryptoError;

/// A cryptographically secure random source.
pub trait Random: Send + Sync {
    /// Fills `buf` with random bytes.
    fn fill(&self, buf: &mut [u8]) -> Result<(), CryptoError>;
}

/// The operating system's secure random source, through aws-lc-rs.
#[derive(Debug, Default, Clone)]
pub struct SystemRng(aws_lc_rs::rand::SystemRandom);

impl SystemRng {
    /// The system random source.
    pub fn new() -> Self {
        Self(aws_lc_rs::rand::SystemRandom::new())
    }
}

impl Random for SystemRng {
    fn fill(&self, buf: &mut [u8]) -> Result<(), CryptoError> {
        self.0.fill(buf).map_err(|_| CryptoError::Random)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_rng_fills() {
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        SystemRng::new().fill(&mut a).unwrap();
        SystemRng::new().fill(&mut b).unwrap();
        assert_ne!(a, b);
    }
}
