//! Checking authentication tokens: who a connection is, signed by the
//! identity service with Ed25519 (the format is in `client::token` and
//! `docs/protocol.md`). The gateway holds only verifying keys (several, by
//! key id, so keys rotate without a flag day). [`SigningKey`], the issuing
//! side, lives in the client crate for development, tests and `loadgen`.

pub use client::token::{SIGNED_BYTES, SigningKey, TOKEN_BYTES, TOKEN_VERSION};
use ring::signature::{ED25519, UnparsedPublicKey};
use wire_format::ErrorCode;

/// What a valid token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claims {
    /// The key that signed it.
    pub key_id: u16,
    /// The user.
    pub user: u64,
    /// The device within the user.
    pub device: u32,
    /// Expiry, seconds since the Unix epoch.
    pub expires_s: u64,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not `TOKEN_BYTES` long.
    #[error("token of {len} bytes, expected {TOKEN_BYTES}")]
    Malformed {
        /// Its length.
        len: usize,
    },
    /// A version this gateway does not read.
    #[error("token version {0} is not supported")]
    UnsupportedVersion(u8),
    /// No verifying key with this id (rotated out, or never known).
    #[error("no verifying key {0}")]
    UnknownKey(u16),
    /// The signature does not verify: forged or altered.
    #[error("token signature does not verify")]
    BadSignature,
    /// Valid but expired.
    #[error("token expired at {expires_s}, now {now_s}")]
    Expired {
        /// Its expiry.
        expires_s: u64,
        /// The time it was checked.
        now_s: u64,
    },
}

impl TokenError {
    /// The code for the `Error` frame: `TokenExpired` tells the client to
    /// refresh its token, anything else is `AuthFailed`.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Expired { .. } => ErrorCode::TokenExpired,
            _ => ErrorCode::AuthFailed,
        }
    }
}

/// The verifying keys a gateway trusts, by key id.
#[derive(Debug, Clone, Default)]
pub struct Verifier {
    keys: Vec<(u16, UnparsedPublicKey<[u8; 32]>)>,
}

impl Verifier {
    /// Trusts `keys` (key id, Ed25519 public key).
    pub fn new(keys: impl IntoIterator<Item = (u16, [u8; 32])>) -> Self {
        let keys = keys
            .into_iter()
            .map(|(id, key)| (id, UnparsedPublicKey::new(&ED25519, key)));
        Self {
            keys: keys.collect(),
        }
    }

    /// Checks `token` at `now_s` and returns what it says.
    pub fn verify(&self, token: &[u8], now_s: u64) -> Result<Claims, TokenError> {
        let token: &[u8; TOKEN_BYTES] = token
            .try_into()
            .map_err(|_| TokenError::Malformed { len: token.len() })?;
        let (signed, signature) = token.split_at(SIGNED_BYTES);
        if signed[0] != TOKEN_VERSION {
            return Err(TokenError::UnsupportedVersion(signed[0]));
        }
        let field = |at: usize, len: usize| &signed[at..at + len];
        let key_id = u16::from_le_bytes(field(1, 2).try_into().expect("2"));
        let (_, key) = self
            .keys
            .iter()
            .find(|(id, _)| *id == key_id)
            .ok_or(TokenError::UnknownKey(key_id))?;
        key.verify(signed, signature)
            .map_err(|_| TokenError::BadSignature)?;
        let claims = Claims {
            key_id,
            user: u64::from_le_bytes(field(3, 8).try_into().expect("8")),
            device: u32::from_le_bytes(field(11, 4).try_into().expect("4")),
            expires_s: u64::from_le_bytes(field(15, 8).try_into().expect("8")),
        };
        if claims.expires_s <= now_s {
            return Err(TokenError::Expired {
                expires_s: claims.expires_s,
                now_s,
            });
        }
        Ok(claims)
    }
}

/// Parses a verifying key written as `KEY_ID:HEX` (what `gateway token
/// keygen` prints).
pub fn parse_verifying_key(text: &str) -> Result<(u16, [u8; 32]), String> {
    let bad = || format!("verifying key {text:?} is not KEY_ID:64-HEX-DIGITS");
    let (id, key) = text.split_once(':').ok_or_else(bad)?;
    let id = id.trim().parse().map_err(|_| bad())?;
    let key = hex::decode(key.trim()).map_err(|_| bad())?;
    Ok((id, key.try_into().map_err(|_| bad())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (SigningKey, SigningKey, Verifier) {
        let (old, _) = SigningKey::generate(1);
        let (new, _) = SigningKey::generate(2);
        let verifier = Verifier::new([(1, old.public_key()), (2, new.public_key())]);
        (old, new, verifier)
    }

    #[test]
    fn tokens_from_every_trusted_key_verify() {
        let (old, new, verifier) = keys();
        for key in [&old, &new] {
            let token = key.issue(42, 3, 1_000);
            assert_eq!(token.len(), TOKEN_BYTES);
            let claims = verifier.verify(&token, 999).unwrap();
            assert_eq!(
                claims,
                Claims {
                    key_id: key.key_id(),
                    user: 42,
                    device: 3,
                    expires_s: 1_000
                }
            );
        }
    }

    #[test]
    fn expired_forged_altered_unknown_and_malformed_tokens_fail() {
        let (old, _, verifier) = keys();
        let token = old.issue(42, 3, 1_000);
        assert_eq!(
            verifier.verify(&token, 1_000),
            Err(TokenError::Expired {
                expires_s: 1_000,
                now_s: 1_000
            })
        );
        assert_eq!(
            verifier.verify(&token, 1_000).unwrap_err().code(),
            ErrorCode::TokenExpired
        );

        let mut altered = token.clone();
        altered[3] ^= 1; // another user
        assert_eq!(verifier.verify(&altered, 0), Err(TokenError::BadSignature));
        assert_eq!(
            verifier.verify(&altered, 0).unwrap_err().code(),
            ErrorCode::AuthFailed
        );

        let (forger, _) = SigningKey::generate(1); // claims key 1, signs with another
        assert_eq!(
            verifier.verify(&forger.issue(42, 3, 1_000), 0),
            Err(TokenError::BadSignature)
        );

        let (stranger, _) = SigningKey::generate(9);
        assert_eq!(
            verifier.verify(&stranger.issue(42, 3, 1_000), 0),
            Err(TokenError::UnknownKey(9))
        );

        assert_eq!(
            verifier.verify(&token[..40], 0),
            Err(TokenError::Malformed { len: 40 })
        );
        let mut v2 = token;
        v2[0] = 2;
        assert_eq!(
            verifier.verify(&v2, 0),
            Err(TokenError::UnsupportedVersion(2))
        );
    }

    #[test]
    fn a_stored_key_signs_the_same_identity() {
        let (key, pkcs8) = SigningKey::generate(5);
        let again = SigningKey::from_pkcs8(5, &pkcs8).unwrap();
        assert_eq!(again.public_key(), key.public_key());
        let verifier = Verifier::new([(5, key.public_key())]);
        assert_eq!(verifier.verify(&again.issue(1, 0, 10), 0).unwrap().user, 1);
    }
}
