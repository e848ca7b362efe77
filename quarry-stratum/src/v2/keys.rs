//! The pool's authority key: it signs each connection's Noise static key, and miners pin its
//! public half. Text forms are SRI's: the public key is base58check of `0x01 0x00` ‖ x-only key,
//! the secret key base58check of its 32 bytes.

use bitcoin::base58;
use bitcoin::secp256k1::{Keypair, Secp256k1, SecretKey};
use thiserror::Error;

/// Version bytes in front of an encoded public key.
const PUBLIC_KEY_VERSION: [u8; 2] = [0x01, 0x00];

/// A key that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    /// Not base58check.
    #[error("not a base58check string: {0}")]
    Base58(String),
    /// Wrong length or version bytes.
    #[error("{0}")]
    Format(&'static str),
    /// Not a valid secp256k1 key.
    #[error("not a valid secp256k1 key")]
    Curve,
}

/// An authority key pair.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthorityKeypair {
    /// Secret key bytes.
    pub secret: [u8; 32],
    /// X-only public key.
    pub public: [u8; 32],
}

impl std::fmt::Debug for AuthorityKeypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorityKeypair")
            .field("public", &encode_public(&self.public))
            .finish_non_exhaustive()
    }
}

impl AuthorityKeypair {
    /// A fresh random key pair.
    pub fn generate() -> Self {
        let secp = Secp256k1::new();
        let (secret, _) = secp.generate_keypair(&mut rand::thread_rng());
        Self::from_secret_bytes(&secret.secret_bytes()).expect("a generated key is valid")
    }

    /// The pair for a secret key.
    pub fn from_secret_bytes(secret: &[u8; 32]) -> Result<Self, KeyError> {
        let secp = Secp256k1::new();
        let key = SecretKey::from_slice(secret).map_err(|_| KeyError::Curve)?;
        let pair = Keypair::from_secret_key(&secp, &key);
        Ok(AuthorityKeypair {
            secret: *secret,
            public: pair.x_only_public_key().0.serialize(),
        })
    }

    /// Parses the base58check secret key, checking it against `public` when given.
    pub fn from_text(secret: &str, public: Option<&str>) -> Result<Self, KeyError> {
        let pair = Self::from_secret_bytes(&decode_secret(secret)?)?;
        if let Some(public) = public {
            if decode_public(public)? != pair.public {
                return Err(KeyError::Format(
                    "the public key does not belong to the secret key",
                ));
            }
        }
        Ok(pair)
    }

    /// The secret key as text.
    pub fn secret_text(&self) -> String {
        base58::encode_check(&self.secret)
    }

    /// The public key as text.
    pub fn public_text(&self) -> String {
        encode_public(&self.public)
    }
}

/// Encodes an x-only public key.
pub fn encode_public(key: &[u8; 32]) -> String {
    let mut bytes = PUBLIC_KEY_VERSION.to_vec();
    bytes.extend_from_slice(key);
    base58::encode_check(&bytes)
}

/// Decodes a public key, checking that it is on the curve.
pub fn decode_public(text: &str) -> Result<[u8; 32], KeyError> {
    let bytes = base58::decode_check(text.trim()).map_err(|e| KeyError::Base58(e.to_string()))?;
    let key = bytes
        .strip_prefix(&PUBLIC_KEY_VERSION[..])
        .filter(|k| k.len() == 32)
        .ok_or(KeyError::Format(
            "an authority public key is 0x01 0x00 and 32 key bytes",
        ))?;
    bitcoin::secp256k1::XOnlyPublicKey::from_slice(key).map_err(|_| KeyError::Curve)?;
    let mut out = [0u8; 32];
    out.copy_from_slice(key);
    Ok(out)
}

fn decode_secret(text: &str) -> Result<[u8; 32], KeyError> {
    let bytes = base58::decode_check(text.trim()).map_err(|e| KeyError::Base58(e.to_string()))?;
    bytes
        .as_slice()
        .try_into()
        .map_err(|_| KeyError::Format("an authority secret key is 32 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sri_example_public_key_decodes() {
        // The key in SRI's translator example configs.
        let key =
            decode_public("9auqWEzQDVyd2oe1JVGFLMLHZtCo2FFqZwtKA5gd9xbuEu7PH72").expect("valid");
        assert_eq!(
            encode_public(&key),
            "9auqWEzQDVyd2oe1JVGFLMLHZtCo2FFqZwtKA5gd9xbuEu7PH72"
        );
    }

    #[test]
    fn text_round_trip_and_mismatch() {
        let pair = AuthorityKeypair::generate();
        let again = AuthorityKeypair::from_text(&pair.secret_text(), Some(&pair.public_text()))
            .expect("ok");
        assert_eq!(again, pair);
        let other = AuthorityKeypair::generate();
        assert!(
            AuthorityKeypair::from_text(&pair.secret_text(), Some(&other.public_text())).is_err()
        );
        assert!(decode_public("notbase58!").is_err());
    }
}
