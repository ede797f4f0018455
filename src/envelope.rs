//! How order data is wrapped for the backend, compatible with vk-uni-pay's `notifyKey` modes.
//!
//! - `aes-256-ecb`: what vk-uni-pay's Java (`AES/ECB/PKCS5Padding`) and PHP
//!   (`openssl_decrypt(.., 'aes-256-ecb', substr($key,0,32), OPENSSL_RAW_DATA)`) samples decrypt.
//! - `aes192`: vk's default mode since vk-unicloud 2.18.12 (`createCipheriv('aes192', ..)`):
//!   AES-192-CBC, key and IV are the first 24 / 16 characters of `md5hex(notify_key)`.
//! - `key`: plain order data plus `"key": notify_key`, vk's shared-secret form (TLS strongly advised).
//!
//! Neither AES form carries a MAC or timestamp; that is vk's format, kept for compatibility.

use aes::cipher::{block_padding::Pkcs7, BlockDecrypt, BlockDecryptMut, BlockEncrypt, BlockEncryptMut, KeyInit, KeyIvInit};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use md5::{Digest, Md5};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::secret::Secret;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum EnvelopeMode {
    #[default]
    #[serde(rename = "aes-256-ecb")]
    Aes256Ecb,
    #[serde(rename = "aes192")]
    Aes192,
    #[serde(rename = "key")]
    Key,
}

impl std::str::FromStr for EnvelopeMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        EnvelopeMode::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(s))
            .map_err(|_| format!("unknown envelope mode {s:?} (aes-256-ecb | aes192 | key)"))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("aes-256-ecb needs a notify_key of at least 32 ASCII bytes")]
    KeyTooShort,
    #[error("body is not an envelope of this mode")]
    Shape,
    #[error("ciphertext does not decrypt under this key")]
    Decrypt,
    #[error("the key field does not match")]
    KeyMismatch,
}

/// The default `notifyKey` printed in vk-uni-pay's and uni-pay's docs (any case): public, so a
/// backend sharing it accepts envelopes anyone can seal.
const VK_PUBLISHED_KEY: &str = "5fb2cd73c7b53918728417c50762e6d45fb2cd73c7b53918728417c50762e6d4";

/// A route's envelope: mode plus the derived key material, computed once.
#[derive(Clone)]
pub struct Envelope {
    mode: EnvelopeMode,
    notify_key: Secret,
    cipher: Cipher,
}

#[derive(Clone)]
enum Cipher {
    Ecb(aes::Aes256),
    Cbc { key: [u8; 24], iv: [u8; 16] },
    None,
}

impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envelope").field("mode", &self.mode).finish_non_exhaustive()
    }
}

impl Envelope {
    pub fn new(mode: EnvelopeMode, notify_key: Secret) -> Result<Self, EnvelopeError> {
        let cipher = match mode {
            EnvelopeMode::Aes256Ecb => {
                let key = notify_key.expose().as_bytes();
                if key.len() < 32 || !key[..32].is_ascii() {
                    return Err(EnvelopeError::KeyTooShort);
                }
                Cipher::Ecb(aes::Aes256::new_from_slice(&key[..32]).expect("32-byte key"))
            }
            EnvelopeMode::Aes192 => {
                let digest = hex::encode(Md5::digest(notify_key.expose().as_bytes()));
                let mut key = [0u8; 24];
                let mut iv = [0u8; 16];
                key.copy_from_slice(&digest.as_bytes()[..24]);
                iv.copy_from_slice(&digest.as_bytes()[..16]);
                Cipher::Cbc { key, iv }
            }
            EnvelopeMode::Key => Cipher::None,
        };
        Ok(Envelope { mode, notify_key, cipher })
    }

    pub fn mode(&self) -> EnvelopeMode {
        self.mode
    }

    /// Whether the notify key is vk's published default (a public constant: no timing to hide).
    pub fn key_is_published(&self) -> bool {
        self.notify_key.expose().eq_ignore_ascii_case(VK_PUBLISHED_KEY)
    }

    /// The HTTP body for the backend, from the order's JSON text (a serialised object: the same
    /// text the ledger keeps, so the order is serialised once).
    pub fn seal(&self, order_json: &str) -> Vec<u8> {
        match &self.cipher {
            Cipher::None => {
                // `"key"` goes last, as vk's `{...data, key}` puts it.
                let fields = order_json.trim_end().strip_suffix('}').unwrap_or(order_json);
                let key = serde_json::to_string(self.notify_key.expose()).expect("a string serialises");
                let separator = if fields.trim_end().ends_with('{') { "" } else { "," };
                format!("{fields}{separator}\"key\":{key}}}").into_bytes()
            }
            _ => {
                // Base64 needs no JSON escaping: the body is written as sent, in one buffer.
                let mut body = String::with_capacity(order_json.len() * 4 / 3 + 48);
                body.push_str(r#"{"encryptedData":""#);
                self.encrypt_into(order_json.as_bytes(), &mut body);
                body.push_str(r#""}"#);
                body.into_bytes()
            }
        }
    }

    /// Base64 ciphertext of `plain` (the `encryptedData` value); for `key` mode, `plain` itself.
    pub fn encrypt(&self, plain: &[u8]) -> String {
        let mut out = String::new();
        self.encrypt_into(plain, &mut out);
        out
    }

    fn encrypt_into(&self, plain: &[u8], out: &mut String) {
        match &self.cipher {
            Cipher::Ecb(cipher) => {
                let mut buf = pkcs7_pad(plain);
                for block in buf.chunks_exact_mut(16) {
                    cipher.encrypt_block(block.into());
                }
                B64.encode_string(buf, out)
            }
            Cipher::Cbc { key, iv } => B64.encode_string(
                cbc::Encryptor::<aes::Aes192>::new(key.into(), iv.into()).encrypt_padded_vec_mut::<Pkcs7>(plain),
                out,
            ),
            Cipher::None => out.push_str(&String::from_utf8_lossy(plain)),
        }
    }

    /// Inverse of [`Envelope::encrypt`] for a base64 ciphertext.
    pub fn decrypt(&self, ciphertext: &str) -> Result<Vec<u8>, EnvelopeError> {
        let raw = B64.decode(ciphertext.trim()).map_err(|_| EnvelopeError::Decrypt)?;
        match &self.cipher {
            Cipher::Ecb(cipher) => {
                if raw.is_empty() || raw.len() % 16 != 0 {
                    return Err(EnvelopeError::Decrypt);
                }
                let mut buf = raw;
                for block in buf.chunks_exact_mut(16) {
                    cipher.decrypt_block(block.into());
                }
                pkcs7_unpad(buf)
            }
            Cipher::Cbc { key, iv } => cbc::Decryptor::<aes::Aes192>::new(key.into(), iv.into())
                .decrypt_padded_vec_mut::<Pkcs7>(&raw)
                .map_err(|_| EnvelopeError::Decrypt),
            Cipher::None => Ok(ciphertext.as_bytes().to_vec()),
        }
    }

    /// Opens a backend body: what a backend does, for `payhook envelope decrypt` and the fuzzer.
    pub fn open(&self, body: &[u8]) -> Result<Map<String, Value>, EnvelopeError> {
        let mut outer: Map<String, Value> = serde_json::from_slice(body).map_err(|_| EnvelopeError::Shape)?;
        if self.mode == EnvelopeMode::Key {
            let key = outer.remove("key").ok_or(EnvelopeError::Shape)?;
            let key = key.as_str().ok_or(EnvelopeError::Shape)?;
            return if self.notify_key.matches(key.as_bytes()) { Ok(outer) } else { Err(EnvelopeError::KeyMismatch) };
        }
        let data = outer.get("encryptedData").and_then(Value::as_str).ok_or(EnvelopeError::Shape)?;
        serde_json::from_slice(&self.decrypt(data)?).map_err(|_| EnvelopeError::Shape)
    }
}

fn pkcs7_pad(plain: &[u8]) -> Vec<u8> {
    let pad = 16 - plain.len() % 16;
    let mut buf = Vec::with_capacity(plain.len() + pad);
    buf.extend_from_slice(plain);
    buf.resize(plain.len() + pad, pad as u8);
    buf
}

fn pkcs7_unpad(mut buf: Vec<u8>) -> Result<Vec<u8>, EnvelopeError> {
    let pad = *buf.last().ok_or(EnvelopeError::Decrypt)? as usize;
    if pad == 0 || pad > 16 || buf[buf.len() - pad..].iter().any(|&b| b as usize != pad) {
        return Err(EnvelopeError::Decrypt);
    }
    buf.truncate(buf.len() - pad);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Vector {
        mode: String,
        notify_key: String,
        plaintext: String,
        ciphertext: String,
    }

    fn vectors() -> Vec<Vector> {
        let path = format!("{}/tests/fixtures/vectors/vk-envelope.json", env!("CARGO_MANIFEST_DIR"));
        let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        serde_json::from_value(v["vectors"].clone()).unwrap()
    }

    #[test]
    fn reproduces_every_vk_vector_both_ways() {
        let mut checked = 0;
        for v in vectors() {
            // aes192-legacy (Node's removed createCipher, hex output) is not a mode payhook sends.
            let Ok(mode) = v.mode.parse::<EnvelopeMode>() else {
                assert_eq!(v.mode, "aes192-legacy");
                continue;
            };
            let env = Envelope::new(mode, Secret::new(v.notify_key.clone())).unwrap();
            assert_eq!(env.encrypt(v.plaintext.as_bytes()), v.ciphertext, "{} {}", v.mode, v.plaintext);
            assert_eq!(env.decrypt(&v.ciphertext).unwrap(), v.plaintext.as_bytes());
            checked += 1;
        }
        assert_eq!(checked, 7);
    }

    #[test]
    fn wrong_key_and_garbage_do_not_decrypt() {
        let env = Envelope::new(EnvelopeMode::Aes256Ecb, Secret::new("12345678901234561234567890123456")).unwrap();
        let other = Envelope::new(EnvelopeMode::Aes256Ecb, Secret::new("x2345678901234561234567890123456")).unwrap();
        let ct = env.encrypt(br#"{"a":1}"#);
        assert!(other.decrypt(&ct).map(|p| p != br#"{"a":1}"#).unwrap_or(true));
        assert_eq!(env.decrypt("not base64!"), Err(EnvelopeError::Decrypt));
        assert_eq!(env.decrypt("AAAA"), Err(EnvelopeError::Decrypt));
    }

    #[test]
    fn short_key_is_refused_for_ecb() {
        assert_eq!(Envelope::new(EnvelopeMode::Aes256Ecb, Secret::new("short")).unwrap_err(), EnvelopeError::KeyTooShort);
    }

    #[test]
    fn seal_and_open_round_trip_in_every_mode() {
        let order: Map<String, Value> = serde_json::from_str(r#"{"out_trade_no":"订单-1","total_fee":1234}"#).unwrap();
        for mode in [EnvelopeMode::Aes256Ecb, EnvelopeMode::Aes192, EnvelopeMode::Key] {
            let env = Envelope::new(mode, Secret::new("5fb2cd73c7b53918728417c50762e6d4")).unwrap();
            let plain = serde_json::to_string(&order).unwrap();
            let body = env.seal(&plain);
            assert_eq!(env.open(&body).unwrap(), order, "{mode:?}");
            if mode != EnvelopeMode::Key {
                let expected = serde_json::to_vec(&serde_json::json!({ "encryptedData": env.encrypt(plain.as_bytes()) })).unwrap();
                assert_eq!(String::from_utf8(body).unwrap(), String::from_utf8(expected).unwrap(), "{mode:?}: the body serde_json would write");
            }
        }
        let key_mode = Envelope::new(EnvelopeMode::Key, Secret::new("5fb2cd73c7b53918728417c50762e6d4")).unwrap();
        let sealed = String::from_utf8(key_mode.seal(&serde_json::to_string(&order).unwrap())).unwrap();
        assert_eq!(String::from_utf8(key_mode.seal("{}")).unwrap(), r#"{"key":"5fb2cd73c7b53918728417c50762e6d4"}"#);
        assert_eq!(sealed, r#"{"out_trade_no":"订单-1","total_fee":1234,"key":"5fb2cd73c7b53918728417c50762e6d4"}"#);
        let forged = sealed.replace("5fb2cd73c7", "0000000000");
        assert_eq!(key_mode.open(forged.as_bytes()), Err(EnvelopeError::KeyMismatch));
    }
}
