//! TLS 1.3 traffic keys that let their expanded form go while a connection
//! idles.
//!
//! ring's AES-GCM key (the AES round keys and the GHASH table) is 544
//! bytes, and rustls keeps one per direction for a connection's life: 1,280
//! of the bytes an idle connection costs the process, once rounded to the
//! allocator's size class. The raw key is at most 32 bytes. Each AEAD of
//! the provider's TLS 1.3 suites is wrapped here so that its encrypter and
//! decrypter keep the raw key and IV, build ring's on first use, and drop
//! it again on `hibernate` (which the shell calls on a connection that has
//! been quiet for a while, through `TlsConn::hibernate`). Building an
//! AES-256-GCM key again costs about 140 ns, once per wake from idle.
//!
//! What goes on the wire is unchanged: the same ring AEAD, key, IV and
//! sequence numbers. TLS 1.2 suites (only if allowed) are left as they are.

use std::sync::LazyLock;

use rustls::crypto::CryptoProvider;
use rustls::crypto::cipher::{
    AeadKey, InboundOpaqueMessage, InboundPlainMessage, Iv, MessageDecrypter, MessageEncrypter,
    OutboundOpaqueMessage, OutboundPlainMessage, Tls13AeadAlgorithm, UnsupportedOperationError,
};
use rustls::{ConnectionTrafficSecrets, Error, SupportedCipherSuite, Tls13CipherSuite};
use zeroize::Zeroize;

/// ring's TLS 1.3 suites, in its order of preference, each with its AEAD
/// wrapped. Made once: a suite names its AEAD by a `'static` reference.
static SUITES: LazyLock<Vec<Tls13CipherSuite>> = LazyLock::new(|| {
    rustls::crypto::ring::ALL_CIPHER_SUITES
        .iter()
        .filter_map(|suite| match suite {
            SupportedCipherSuite::Tls13(suite) => Some(wrap(suite)),
            SupportedCipherSuite::Tls12(_) => None,
        })
        .collect()
});

fn wrap(suite: &'static Tls13CipherSuite) -> Tls13CipherSuite {
    let aead: &'static IdleAead = Box::leak(Box::new(IdleAead {
        inner: suite.aead_alg,
    }));
    Tls13CipherSuite {
        common: rustls::CipherSuiteCommon {
            suite: suite.common.suite,
            hash_provider: suite.common.hash_provider,
            confidentiality_limit: suite.common.confidentiality_limit,
        },
        hkdf_provider: suite.hkdf_provider,
        aead_alg: aead,
        quic: suite.quic,
    }
}

/// ring's default provider with every TLS 1.3 suite's AEAD wrapped (same
/// suites, same order).
pub fn provider() -> CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    for slot in &mut provider.cipher_suites {
        if let SupportedCipherSuite::Tls13(suite) = slot {
            let wrapped = SUITES
                .iter()
                .find(|w| w.common.suite == suite.common.suite)
                .expect("every ring TLS 1.3 suite is wrapped");
            *slot = SupportedCipherSuite::Tls13(wrapped);
        }
    }
    provider
}

/// One AEAD of a TLS 1.3 suite, whose encrypters and decrypters may sleep.
struct IdleAead {
    inner: &'static dyn Tls13AeadAlgorithm,
}

impl Tls13AeadAlgorithm for IdleAead {
    fn encrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageEncrypter> {
        let mut keys = Keys::new(self.inner, &key, &iv);
        let live = self.inner.encrypter(key, iv);
        // TLS 1.3 records add a fixed overhead (content type and tag).
        keys.overhead = u8::try_from(live.encrypted_payload_len(0))
            .expect("a TLS 1.3 record adds a type byte and a tag");
        Box::new(IdleEncrypter {
            keys,
            live: Some(live),
        })
    }

    fn decrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageDecrypter> {
        Box::new(IdleDecrypter {
            keys: Keys::new(self.inner, &key, &iv),
            live: None,
        })
    }

    fn key_len(&self) -> usize {
        self.inner.key_len()
    }

    fn extract_keys(
        &self,
        key: AeadKey,
        iv: Iv,
    ) -> Result<ConnectionTrafficSecrets, UnsupportedOperationError> {
        self.inner.extract_keys(key, iv)
    }

    fn fips(&self) -> bool {
        self.inner.fips()
    }
}

/// What a sleeping direction keeps: the AEAD, its raw key and IV (packed:
/// with the `Option<Box<..>>` beside it, 80 bytes a direction as mimalloc
/// holds them; rustls's `AeadKey` alone is 40). Wiped when dropped, as
/// rustls wipes its `AeadKey`.
struct Keys {
    aead: &'static dyn Tls13AeadAlgorithm,
    key: [u8; AeadKey::MAX_LEN],
    iv: [u8; 12],
    key_len: u8,
    /// What a record adds to its plaintext (the encrypter's; here, where
    /// it packs into the padding).
    overhead: u8,
}

impl Keys {
    fn new(aead: &'static dyn Tls13AeadAlgorithm, key: &AeadKey, iv: &Iv) -> Self {
        let (mut raw_key, mut raw_iv) = ([0; AeadKey::MAX_LEN], [0; 12]);
        raw_key[..key.as_ref().len()].copy_from_slice(key.as_ref());
        raw_iv.copy_from_slice(iv.as_ref());
        Self {
            aead,
            key: raw_key,
            iv: raw_iv,
            key_len: u8::try_from(key.as_ref().len()).expect("at most 32"),
            overhead: 0,
        }
    }

    fn key(&self) -> AeadKey {
        AeadKey::new(&self.key[..usize::from(self.key_len)])
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        self.key.zeroize();
        self.iv.zeroize();
    }
}

struct IdleEncrypter {
    keys: Keys,
    live: Option<Box<dyn MessageEncrypter>>,
}

impl MessageEncrypter for IdleEncrypter {
    fn encrypt(
        &mut self,
        msg: OutboundPlainMessage<'_>,
        seq: u64,
    ) -> Result<OutboundOpaqueMessage, Error> {
        let keys = &self.keys;
        self.live
            .get_or_insert_with(|| keys.aead.encrypter(keys.key(), Iv::new(keys.iv)))
            .encrypt(msg, seq)
    }

    fn encrypted_payload_len(&self, payload_len: usize) -> usize {
        payload_len + usize::from(self.keys.overhead)
    }

    fn hibernate(&mut self) {
        self.live = None;
    }
}

struct IdleDecrypter {
    keys: Keys,
    live: Option<Box<dyn MessageDecrypter>>,
}

impl MessageDecrypter for IdleDecrypter {
    fn decrypt<'a>(
        &mut self,
        msg: InboundOpaqueMessage<'a>,
        seq: u64,
    ) -> Result<InboundPlainMessage<'a>, Error> {
        let keys = &self.keys;
        self.live
            .get_or_insert_with(|| keys.aead.decrypter(keys.key(), Iv::new(keys.iv)))
            .decrypt(msg, seq)
    }

    fn hibernate(&mut self) {
        self.live = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tls13_suite_is_wrapped_and_in_rings_order() {
        let ring = rustls::crypto::ring::default_provider();
        let ours = provider();
        let names =
            |p: &CryptoProvider| -> Vec<_> { p.cipher_suites.iter().map(|s| s.suite()).collect() };
        assert_eq!(names(&ours), names(&ring));
        for suite in &ours.cipher_suites {
            if let SupportedCipherSuite::Tls13(suite) = suite {
                assert!(SUITES.iter().any(|w| std::ptr::eq(w, *suite)));
            }
        }
    }

    #[test]
    fn records_are_the_same_bytes_as_rings_before_and_after_a_hibernate() {
        for suite in SUITES.iter() {
            let ring = match rustls::crypto::ring::ALL_CIPHER_SUITES
                .iter()
                .find(|s| s.suite() == suite.common.suite)
            {
                Some(SupportedCipherSuite::Tls13(s)) => *s,
                _ => unreachable!("every wrapped suite is ring's"),
            };
            let raw = [7u8; 32];
            let key = || AeadKey::new(&raw[..ring.aead_alg.key_len()]);
            let iv = || Iv::new([3; 12]);
            let mut plain = ring.aead_alg.encrypter(key(), iv());
            let mut ours = suite.aead_alg.encrypter(key(), iv());
            let mut open = suite.aead_alg.decrypter(key(), iv());
            for round in 0..4u8 {
                let seq = u64::from(round);
                if round % 2 == 1 {
                    ours.hibernate();
                    open.hibernate();
                }
                let payload = vec![round; 100 + usize::from(round)];
                let msg = || OutboundPlainMessage {
                    typ: rustls::ContentType::ApplicationData,
                    version: rustls::ProtocolVersion::TLSv1_3,
                    payload: rustls::crypto::cipher::OutboundChunks::Single(&payload),
                };
                let want = plain.encrypt(msg(), seq).unwrap().encode();
                let got = ours.encrypt(msg(), seq).unwrap().encode();
                assert_eq!(got, want, "{:?} seq {seq}", suite.common.suite);
                assert_eq!(
                    ours.encrypted_payload_len(payload.len()),
                    plain.encrypted_payload_len(payload.len())
                );
                let mut wire = got;
                let opaque = InboundOpaqueMessage::new(
                    rustls::ContentType::ApplicationData,
                    rustls::ProtocolVersion::TLSv1_2,
                    &mut wire[5..],
                );
                let opened = open.decrypt(opaque, seq).unwrap();
                assert_eq!(opened.payload, &payload[..]);
            }
        }
    }
}
