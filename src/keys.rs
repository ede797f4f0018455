//! RSA keys and X.509 certificates as providers publish them (PEM, bare base64 SPKI, certificates).
//!
//! SPKI and certificates are unwrapped to the PKCS#1 `RSAPublicKey` with x509-parser here, once,
//! at start-up. Verification is aws-lc-rs's: it keeps the parsed key and its Montgomery context,
//! where ring 0.17 re-parses the key and recomputes them on every verify (19 → 14 µs per
//! RSA-2048 verify on the build machine, on every notification). ring signs.

use std::sync::Arc;

use aws_lc_rs::signature::{ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
use ring::signature::{self, RsaKeyPair};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::x509::SubjectPublicKeyInfo;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not PEM: {0}")]
    Pem(String),
    #[error("unsupported PEM block {0:?}")]
    Block(String),
    #[error("malformed key or certificate: {0}")]
    Der(String),
    #[error("not an RSA key")]
    NotRsa,
    #[error("certificate is not signed by the configured root")]
    Chain,
}

/// An RSA public key, parsed once, ready for PKCS#1 v1.5 SHA-256 verification (2048 to 8192 bits:
/// a signature under a shorter key never verifies).
#[derive(Clone)]
pub struct RsaPublicKey {
    parsed: Arc<ParsedPublicKey>,
}

impl std::fmt::Debug for RsaPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RsaPublicKey")
    }
}

impl RsaPublicKey {
    /// Accepts `PUBLIC KEY` (SPKI), `RSA PUBLIC KEY` (PKCS#1) or a `CERTIFICATE`.
    pub fn from_pem(text: &[u8]) -> Result<Self, KeyError> {
        let block = pem::parse(text).map_err(|e| KeyError::Pem(e.to_string()))?;
        match block.tag() {
            "PUBLIC KEY" => Self::from_spki_der(block.contents()),
            "RSA PUBLIC KEY" => Self::from_pkcs1_der(block.contents()),
            "CERTIFICATE" => Ok(Certificate::from_der(block.contents())?.public_key),
            other => Err(KeyError::Block(other.to_string())),
        }
    }

    /// Alipay's console hands out the SPKI as one base64 line without PEM armour.
    pub fn from_base64_spki(text: &str) -> Result<Self, KeyError> {
        use base64::Engine;
        let compact: String = text.split_whitespace().collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map_err(|e| KeyError::Pem(e.to_string()))?;
        Self::from_spki_der(&der)
    }

    pub fn from_spki_der(der: &[u8]) -> Result<Self, KeyError> {
        let (_, spki) = SubjectPublicKeyInfo::from_der(der).map_err(|e| KeyError::Der(e.to_string()))?;
        Self::from_spki(&spki)
    }

    fn from_spki(spki: &SubjectPublicKeyInfo) -> Result<Self, KeyError> {
        if spki.algorithm.algorithm != x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION {
            return Err(KeyError::NotRsa);
        }
        Self::from_pkcs1_der(&spki.subject_public_key.data)
    }

    fn from_pkcs1_der(der: &[u8]) -> Result<Self, KeyError> {
        let parsed = ParsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, der).map_err(|e| KeyError::Der(e.to_string()))?;
        Ok(RsaPublicKey { parsed: Arc::new(parsed) })
    }

    /// RSASSA-PKCS1-v1_5 with SHA-256 (WeChat v3 "WECHATPAY2-SHA256-RSA2048", Alipay RSA2).
    pub fn verify_sha256(&self, message: &[u8], signature: &[u8]) -> bool {
        self.parsed.verify_sig(message, signature).is_ok()
    }
}

/// A certificate's serial (uppercase hex, as WeChat's `Wechatpay-Serial`), its RSA key and its
/// validity (unix seconds, both ends included).
#[derive(Debug, Clone)]
pub struct Certificate {
    pub serial_hex: String,
    pub public_key: RsaPublicKey,
    pub not_before: i64,
    pub not_after: i64,
    der: Vec<u8>,
}

impl Certificate {
    pub fn from_pem(text: &[u8]) -> Result<Self, KeyError> {
        let block = pem::parse(text).map_err(|e| KeyError::Pem(e.to_string()))?;
        if block.tag() != "CERTIFICATE" {
            return Err(KeyError::Block(block.tag().to_string()));
        }
        Self::from_der(block.contents())
    }

    pub fn from_der(der: &[u8]) -> Result<Self, KeyError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| KeyError::Der(e.to_string()))?;
        let serial_hex = hex::encode_upper(cert.tbs_certificate.raw_serial()).trim_start_matches("00").to_string();
        let public_key = RsaPublicKey::from_spki(cert.public_key())?;
        let validity = cert.validity();
        Ok(Certificate {
            serial_hex,
            public_key,
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            der: der.to_vec(),
        })
    }

    pub fn valid_at(&self, now: i64) -> bool {
        (self.not_before..=self.not_after).contains(&now)
    }

    /// True when `issuer` signed this certificate (Alipay certificate mode: leaf → root).
    pub fn check_signed_by(&self, issuer: &Certificate) -> Result<(), KeyError> {
        let (_, cert) = X509Certificate::from_der(&self.der).map_err(|e| KeyError::Der(e.to_string()))?;
        let (_, issuer) = X509Certificate::from_der(&issuer.der).map_err(|e| KeyError::Der(e.to_string()))?;
        cert.verify_signature(Some(issuer.public_key())).map_err(|_| KeyError::Chain)
    }
}

/// The key a provider's signatures verify with: a bare public key, or a certificate's key.
///
/// A certificate's key verifies only within the certificate's validity. Providers sign with a
/// new certificate before the old one expires (WeChat Pay switches platform certificates while
/// both are valid), so past its `notAfter` a certificate left in the config signs nothing
/// genuine, and accepting it would only serve whoever holds the retired private key.
#[derive(Debug, Clone)]
pub enum VerifyingKey {
    PublicKey(RsaPublicKey),
    Certificate(Certificate),
}

impl VerifyingKey {
    /// Checks `signature` over `message` as of `now` (unix seconds).
    pub fn verify_sha256_at(&self, message: &[u8], signature: &[u8], now: i64) -> Result<(), KeyRefusal> {
        let key = match self {
            VerifyingKey::PublicKey(key) => key,
            VerifyingKey::Certificate(cert) if cert.valid_at(now) => &cert.public_key,
            VerifyingKey::Certificate(_) => return Err(KeyRefusal::OutsideValidity),
        };
        if key.verify_sha256(message, signature) {
            Ok(())
        } else {
            Err(KeyRefusal::BadSignature)
        }
    }

    pub fn certificate(&self) -> Option<&Certificate> {
        match self {
            VerifyingKey::PublicKey(_) => None,
            VerifyingKey::Certificate(cert) => Some(cert),
        }
    }
}

/// Why [`VerifyingKey::verify_sha256_at`] refused a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefusal {
    BadSignature,
    /// The certificate has expired or is not yet valid.
    OutsideValidity,
}

/// An RSA private key for signing (order queries to providers, the simulator).
pub struct RsaPrivateKey(RsaKeyPair);

impl std::fmt::Debug for RsaPrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RsaPrivateKey([redacted])")
    }
}

impl RsaPrivateKey {
    /// `PRIVATE KEY` (PKCS#8) or `RSA PRIVATE KEY` (PKCS#1).
    pub fn from_pem(text: &[u8]) -> Result<Self, KeyError> {
        let block = pem::parse(text).map_err(|e| KeyError::Pem(e.to_string()))?;
        let pair = match block.tag() {
            "PRIVATE KEY" => RsaKeyPair::from_pkcs8(block.contents()),
            "RSA PRIVATE KEY" => RsaKeyPair::from_der(block.contents()),
            other => return Err(KeyError::Block(other.to_string())),
        }
        .map_err(|e| KeyError::Der(e.to_string()))?;
        Ok(RsaPrivateKey(pair))
    }

    pub fn sign_sha256(&self, message: &[u8]) -> Vec<u8> {
        let rng = ring::rand::SystemRandom::new();
        let mut sig = vec![0u8; self.0.public().modulus_len()];
        self.0
            .sign(&signature::RSA_PKCS1_SHA256, &rng, message, &mut sig)
            .expect("RSA signing with a valid key and buffer cannot fail");
        sig
    }
}

/// A random hex string from the operating system's RNG (nonces of signed requests, keys).
pub fn random_hex(bytes: usize) -> String {
    use ring::rand::SecureRandom;
    let mut buf = vec![0u8; bytes];
    ring::rand::SystemRandom::new().fill(&mut buf).expect("system RNG");
    hex::encode(buf)
}

/// A random hex id of `bytes` (at most 32) bytes (lease tokens, request ids) from a thread-local
/// CSPRNG seeded by the operating system: unguessable like [`random_hex`], without a `getrandom`
/// call per request.
pub fn unique_hex(bytes: usize) -> String {
    let mut buf = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut buf[..bytes]);
    hex::encode(&buf[..bytes])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1024-bit key and its RSASSA-PKCS1-v1_5 SHA-256 signature of `hello`, made for this test
    /// (`openssl genrsa 1024`, `openssl dgst -sha256 -sign`; `openssl dgst -verify` accepts it).
    const SHORT_KEY: &str = "-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDCvRlQOvQ1auPbwnr6TAliofo2
jdIFFqnKYGbpiX+OljHKk//nJpSiOhrEnwAQlIx8XxeiP/IgdNQRf9T87eeD0mDI
ZI7uVraCYzWgn3V4R8xz+ddR8dC4rAMCToa5i3CwONeiMyBgCR6kLOttI0HBu1+/
dbMc0ZYywjkBgUKXuQIDAQAB
-----END PUBLIC KEY-----
";
    const SHORT_KEY_SIGNATURE: &str = "NsVqrIi/+1fc6Ar0OzVfHjBoYMqwSvbdeh6iLo3t+ISDZZL+luiuWUQATzIHl36cMV7vSYwpq/FteU63WBpC3tu70CWLndUdsJ1Cen3FE1XKnRLqbGwDmr+21RvkQYNnLIcEre6i8kfmpsn1LvGESNi2Y1pXgA00tgWXs0j7Q/4=";

    #[test]
    fn a_signature_under_a_key_shorter_than_2048_bits_never_verifies() {
        use base64::Engine;
        let signature = base64::engine::general_purpose::STANDARD.decode(SHORT_KEY_SIGNATURE).unwrap();
        let key = RsaPublicKey::from_pem(SHORT_KEY.as_bytes()).unwrap();
        assert!(!key.verify_sha256(b"hello", &signature));
    }

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{}/tests/fixtures/keys/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn parsed_keys_verify_what_the_private_key_signed_and_nothing_else() {
        let private = RsaPrivateKey::from_pem(&fixture("wx_platform_a.key.pem")).unwrap();
        let public = RsaPublicKey::from_pem(&fixture("wx_platform_a.pub.pem")).unwrap();
        let other = RsaPublicKey::from_pem(&fixture("wx_platform_b.pub.pem")).unwrap();
        let signature = private.sign_sha256(b"1554208460\nnonce\n{}\n");
        assert!(public.clone().verify_sha256(b"1554208460\nnonce\n{}\n", &signature));
        assert!(!public.verify_sha256(b"1554208460\nnonce\n{ }\n", &signature));
        assert!(!other.verify_sha256(b"1554208460\nnonce\n{}\n", &signature));
        let certificate = Certificate::from_pem(&fixture("wx_platform_b.cert.pem")).unwrap();
        let signed_by_b = RsaPrivateKey::from_pem(&fixture("wx_platform_b.key.pem")).unwrap().sign_sha256(b"m");
        assert!(certificate.public_key.verify_sha256(b"m", &signed_by_b));
    }
}
