//! Issuing authentication tokens (the identity service's side, here for
//! development, tests and `loadgen`): Ed25519 over a fixed layout, every
//! field little-endian. Gateways only verify.
//!
//! ```text
//! u8  version     1
//! u16 key_id      which verifying key
//! u64 user
//! u32 device
//! u64 expires_s   seconds since the Unix epoch
//! [64] signature  Ed25519 over the 23 bytes above
//! ```

use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};

/// The token version.
pub const TOKEN_VERSION: u8 = 1;
/// Bytes covered by the signature.
pub const SIGNED_BYTES: usize = 1 + 2 + 8 + 4 + 8;
const SIGNATURE_BYTES: usize = 64;
/// Length of every version-1 token.
pub const TOKEN_BYTES: usize = SIGNED_BYTES + SIGNATURE_BYTES;

/// A signing key (the identity service's side; here for tools and tests).
#[derive(Debug)]
pub struct SigningKey {
    key_id: u16,
    pair: Ed25519KeyPair,
}

impl SigningKey {
    /// A new random key; also returns its PKCS#8 encoding to store.
    pub fn generate(key_id: u16) -> (Self, Vec<u8>) {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("system RNG");
        let key = Self::from_pkcs8(key_id, pkcs8.as_ref()).expect("just generated");
        (key, pkcs8.as_ref().to_vec())
    }

    /// A key from its PKCS#8 encoding.
    pub fn from_pkcs8(key_id: u16, pkcs8: &[u8]) -> Result<Self, ring::error::KeyRejected> {
        Ok(Self {
            key_id,
            pair: Ed25519KeyPair::from_pkcs8(pkcs8)?,
        })
    }

    /// The key id tokens carry.
    pub fn key_id(&self) -> u16 {
        self.key_id
    }

    /// The verifying key to configure on gateways.
    pub fn public_key(&self) -> [u8; 32] {
        self.pair
            .public_key()
            .as_ref()
            .try_into()
            .expect("Ed25519 keys are 32 bytes")
    }

    /// A token for device `device` of `user`, valid until `expires_s`.
    pub fn issue(&self, user: u64, device: u32, expires_s: u64) -> Vec<u8> {
        let mut token = Vec::with_capacity(TOKEN_BYTES);
        token.push(TOKEN_VERSION);
        token.extend_from_slice(&self.key_id.to_le_bytes());
        token.extend_from_slice(&user.to_le_bytes());
        token.extend_from_slice(&device.to_le_bytes());
        token.extend_from_slice(&expires_s.to_le_bytes());
        let signature = self.pair.sign(&token);
        token.extend_from_slice(signature.as_ref());
        token
    }
}
