//! WeChat Pay API v3: JSON notifications signed with RSA-SHA256 over
//! `timestamp\nnonce\nbody\n`, the resource sealed with AEAD_AES_256_GCM under the APIv3 key.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use ring::aead;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{parse_attach, Answer, Inbound, PaidOrder, Provider, ProviderError, Reply, Verified};
use crate::config::{parse_duration, ConfigDir, ConfigError};
use crate::keys::{Certificate, RsaPublicKey};
use crate::secret::Secret;

/// WeChat sends these on purpose to check that merchants really verify.
const PROBE_PREFIX: &str = "WECHATPAY/SIGNTEST/";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WechatV3Config {
    mchid: String,
    appid: Option<String>,
    apiv3_key: Secret,
    #[serde(default)]
    platform_public_keys: Vec<PublicKeyEntry>,
    #[serde(default)]
    platform_certs: Vec<CertEntry>,
    timestamp_tolerance: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublicKeyEntry {
    id: String,
    pem_file: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CertEntry {
    pem_file: PathBuf,
}

pub struct WechatV3 {
    mchid: String,
    appid: Option<String>,
    gcm_key: aead::LessSafeKey,
    /// `Wechatpay-Serial` → key: public-key ids and certificate serials side by side (rotation).
    keys: HashMap<String, RsaPublicKey>,
    tolerance: i64,
}

impl WechatV3 {
    pub fn from_config(key: &str, cfg: WechatV3Config, dir: &ConfigDir) -> Result<Self, ConfigError> {
        let apiv3 = cfg.apiv3_key.expose().as_bytes();
        if apiv3.len() != 32 {
            return Err(ConfigError::invalid(format!("{key}.apiv3_key"), "must be exactly 32 bytes"));
        }
        let gcm_key = aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_256_GCM, apiv3).expect("32-byte key"));
        let mut keys = HashMap::new();
        for (i, entry) in cfg.platform_public_keys.iter().enumerate() {
            let k = format!("{key}.platform_public_keys[{i}]");
            let pem = dir.read(&k, &entry.pem_file)?;
            let public = RsaPublicKey::from_pem(&pem).map_err(|e| ConfigError::invalid(&k, e))?;
            keys.insert(entry.id.clone(), public);
        }
        for (i, entry) in cfg.platform_certs.iter().enumerate() {
            let k = format!("{key}.platform_certs[{i}]");
            let pem = dir.read(&k, &entry.pem_file)?;
            let cert = Certificate::from_pem(&pem).map_err(|e| ConfigError::invalid(&k, e))?;
            keys.insert(cert.serial_hex.clone(), cert.public_key);
        }
        if keys.is_empty() {
            return Err(ConfigError::invalid(key, "needs platform_public_keys or platform_certs"));
        }
        let tolerance = match &cfg.timestamp_tolerance {
            Some(t) => parse_duration(&format!("{key}.timestamp_tolerance"), t)?,
            None => Duration::from_secs(300),
        };
        Ok(WechatV3 { mchid: cfg.mchid, appid: cfg.appid, gcm_key, keys, tolerance: tolerance.as_secs() as i64 })
    }

    /// Verifies `Wechatpay-*` headers against `body`; shared with order-query responses.
    pub fn verify_signature(&self, headers: &http::HeaderMap, body: &[u8], now: i64) -> Result<(), ProviderError> {
        let timestamp = header(headers, "wechatpay-timestamp")?;
        let nonce = header(headers, "wechatpay-nonce")?;
        let signature = header(headers, "wechatpay-signature")?;
        let serial = header(headers, "wechatpay-serial")?;
        if signature.starts_with(PROBE_PREFIX) {
            return Err(ProviderError::ProbeSignature);
        }
        let key = self.keys.get(serial).ok_or_else(|| ProviderError::UnknownSerial(serial.to_string()))?;
        let ts: i64 = timestamp.parse().map_err(|_| ProviderError::StaleTimestamp)?;
        if (now - ts).abs() >= self.tolerance {
            return Err(ProviderError::StaleTimestamp);
        }
        let signature = B64.decode(signature).map_err(|_| ProviderError::BadSignature)?;
        let mut message = Vec::with_capacity(timestamp.len() + nonce.len() + body.len() + 3);
        for part in [timestamp.as_bytes(), nonce.as_bytes(), body] {
            message.extend_from_slice(part);
            message.push(b'\n');
        }
        if key.verify_sha256(&message, &signature) {
            Ok(())
        } else {
            Err(ProviderError::BadSignature)
        }
    }

    /// Opens an AEAD_AES_256_GCM `resource` (ciphertext = base64 of ct ‖ tag).
    pub fn decrypt_resource(&self, nonce: &str, associated_data: &str, ciphertext: &str) -> Result<Vec<u8>, ProviderError> {
        decrypt_aes_gcm(&self.gcm_key, nonce, associated_data, ciphertext)
    }

    /// Normalises a decrypted (or queried) Transaction object.
    pub fn transaction(&self, tx: Map<String, Value>) -> Result<Verified, ProviderError> {
        let text = |name: &str| tx.get(name).and_then(Value::as_str).unwrap_or_default().to_string();
        if text("mchid") != self.mchid {
            return Err(ProviderError::MerchantMismatch);
        }
        if let Some(appid) = &self.appid {
            if &text("appid") != appid {
                return Err(ProviderError::MerchantMismatch);
            }
        }
        let state = text("trade_state");
        if state != "SUCCESS" {
            return Ok(Verified::NotPayment { what: format!("trade_state {state}") });
        }
        let out_trade_no = text("out_trade_no");
        if out_trade_no.is_empty() {
            return Err(ProviderError::Malformed("no out_trade_no".into()));
        }
        let total_fee = tx
            .get("amount")
            .and_then(|a| a.get("total"))
            .and_then(Value::as_u64)
            .ok_or_else(|| ProviderError::BadAmount("amount.total".into()))?;
        let pay_date = chrono::DateTime::parse_from_rfc3339(&text("success_time"))
            .map(|t| t.timestamp_millis())
            .map_err(|_| ProviderError::Malformed("success_time".into()))?;
        Ok(Verified::Paid(PaidOrder {
            provider: "wxpay",
            transaction_id: text("transaction_id"),
            total_fee,
            mch_id: text("mchid"),
            appid: text("appid"),
            openid: tx.get("payer").and_then(|p| p.get("openid")).and_then(Value::as_str).unwrap_or_default().to_string(),
            pay_date,
            attach: parse_attach(&text("attach")),
            out_trade_no,
            notify_info: tx,
        }))
    }
}

fn header<'a>(headers: &'a http::HeaderMap, name: &'static str) -> Result<&'a str, ProviderError> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or(ProviderError::MissingHeader(name))
}

pub fn decrypt_aes_gcm(key: &aead::LessSafeKey, nonce: &str, aad: &str, ciphertext: &str) -> Result<Vec<u8>, ProviderError> {
    let nonce = aead::Nonce::try_assume_unique_for_key(nonce.as_bytes()).map_err(|_| ProviderError::Decrypt)?;
    let mut buf = B64.decode(ciphertext).map_err(|_| ProviderError::Decrypt)?;
    let plain = key
        .open_in_place(nonce, aead::Aad::from(aad.as_bytes()), &mut buf)
        .map_err(|_| ProviderError::Decrypt)?;
    Ok(plain.to_vec())
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    event_type: String,
    resource: Option<Resource>,
}

#[derive(Deserialize)]
struct Resource {
    algorithm: String,
    ciphertext: String,
    #[serde(default)]
    associated_data: String,
    nonce: String,
}

impl Provider for WechatV3 {
    fn kind(&self) -> &'static str {
        "wechat-v3"
    }

    fn verify(&self, inbound: &Inbound) -> Result<Verified, ProviderError> {
        self.verify_signature(inbound.headers, inbound.body, inbound.now)?;
        let envelope: Envelope =
            serde_json::from_slice(inbound.body).map_err(|_| ProviderError::Malformed("body is not a v3 notification".into()))?;
        if envelope.event_type != "TRANSACTION.SUCCESS" {
            return Ok(Verified::NotPayment { what: format!("event {}", envelope.event_type) });
        }
        let resource = envelope.resource.ok_or_else(|| ProviderError::Malformed("no resource".into()))?;
        if resource.algorithm != "AEAD_AES_256_GCM" {
            return Err(ProviderError::Malformed(format!("algorithm {}", resource.algorithm)));
        }
        let plain = self.decrypt_resource(&resource.nonce, &resource.associated_data, &resource.ciphertext)?;
        let tx: Map<String, Value> =
            serde_json::from_slice(&plain).map_err(|_| ProviderError::Malformed("resource is not a transaction".into()))?;
        self.transaction(tx)
    }

    fn reply(&self, answer: Answer, reason: &str) -> Reply {
        // WeChat v3 reads only the status: 2xx stops retries, 4xx/5xx asks for them.
        let status = match answer {
            Answer::Success => return Reply { status: 204, content_type: None, body: Bytes::new() },
            Answer::Retry => 500,
            Answer::Rejected => 401,
        };
        let body = serde_json::json!({ "code": "FAIL", "message": reason }).to_string();
        Reply { status, content_type: Some("application/json"), body: Bytes::from(body) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigDir;

    fn fixture(name: &str) -> Value {
        let path = format!("{}/tests/fixtures/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    /// The wechatpay-go vector: a real platform certificate and a real signed notification.
    fn gosdk_provider(v: &Value) -> WechatV3 {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cert.pem"), v["platform_cert_pem"].as_str().unwrap()).unwrap();
        let cfg: WechatV3Config = toml::from_str(
            r#"mchid = "1234567890"
               apiv3_key = "a7cde1ZJB1kG2e7VfTs3jQzaWizur8Gb"
               platform_certs = [{ pem_file = "cert.pem" }]"#,
        )
        .unwrap();
        WechatV3::from_config("t", cfg, &ConfigDir(dir.path().to_path_buf())).unwrap()
    }

    fn headers(v: &Value) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, val) in v["headers"].as_object().unwrap() {
            h.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), val.as_str().unwrap().parse().unwrap());
        }
        h
    }

    #[test]
    fn gosdk_vector_verifies_with_the_clock_frozen() {
        let v = fixture("wechat-v3-notify-gosdk.json");
        let p = gosdk_provider(&v);
        let h = headers(&v);
        let body = v["body"].as_str().unwrap().as_bytes();
        let ts = 1624523846;
        // The certificate serial from the SDK test selects the key.
        assert!(p.keys.contains_key("D7CE59D1F522D701"));
        let verified = p.verify(&Inbound { headers: &h, body, now: ts + 10 }).unwrap();
        assert!(matches!(verified, Verified::NotPayment { ref what } if what == "event PAYSCORE.USER_OPEN_SERVICE"));
    }

    #[test]
    fn gosdk_vector_tampered_stale_probe_and_unknown_serial_fail() {
        let v = fixture("wechat-v3-notify-gosdk.json");
        let p = gosdk_provider(&v);
        let ts = 1624523846;
        let body = v["body"].as_str().unwrap();
        let h = headers(&v);
        let tampered = body.replace("签约成功", "签约失败");
        let err = p.verify(&Inbound { headers: &h, body: tampered.as_bytes(), now: ts }).unwrap_err();
        assert_eq!(err.reason(), "bad_signature");
        let err = p.verify(&Inbound { headers: &h, body: body.as_bytes(), now: ts + 300 }).unwrap_err();
        assert_eq!(err.reason(), "stale_timestamp");
        let err = p.verify(&Inbound { headers: &h, body: body.as_bytes(), now: ts - 300 }).unwrap_err();
        assert_eq!(err.reason(), "stale_timestamp");
        let mut probe = h.clone();
        probe.insert("wechatpay-signature", "WECHATPAY/SIGNTEST/abc".parse().unwrap());
        assert_eq!(p.verify(&Inbound { headers: &probe, body: body.as_bytes(), now: ts }).unwrap_err().reason(), "probe_signature");
        let mut serial = h.clone();
        serial.insert("wechatpay-serial", "ABCDEF".parse().unwrap());
        let err = p.verify(&Inbound { headers: &serial, body: body.as_bytes(), now: ts }).unwrap_err();
        assert_eq!(err.reason(), "unknown_serial");
        let mut missing = h.clone();
        missing.remove("wechatpay-nonce");
        assert_eq!(p.verify(&Inbound { headers: &missing, body: body.as_bytes(), now: ts }).unwrap_err().reason(), "missing_header");
    }

    #[test]
    fn java_sdk_aes_gcm_vector_decrypts_and_tamper_fails() {
        let v = fixture("wechat-v3-aes-gcm.json");
        let key = aead::LessSafeKey::new(
            aead::UnboundKey::new(&aead::AES_256_GCM, v["apiv3_key"].as_str().unwrap().as_bytes()).unwrap(),
        );
        let (nonce, aad, ct) = (v["nonce"].as_str().unwrap(), v["associated_data"].as_str().unwrap(), v["ciphertext"].as_str().unwrap());
        assert_eq!(decrypt_aes_gcm(&key, nonce, aad, ct).unwrap(), b"message");
        assert!(decrypt_aes_gcm(&key, nonce, "associatedDatX", ct).is_err());
        let mut raw = B64.decode(ct).unwrap();
        raw[0] ^= 1;
        assert!(decrypt_aes_gcm(&key, nonce, aad, &B64.encode(raw)).is_err());
    }

    #[test]
    fn replies_are_exact() {
        let v = fixture("wechat-v3-notify-gosdk.json");
        let p = gosdk_provider(&v);
        assert_eq!(p.reply(Answer::Success, "ok"), Reply { status: 204, content_type: None, body: Bytes::new() });
        let r = p.reply(Answer::Retry, "backend_failed");
        assert_eq!((r.status, &r.body[..]), (500, &br#"{"code":"FAIL","message":"backend_failed"}"#[..]));
        assert_eq!(p.reply(Answer::Rejected, "bad_signature").status, 401);
    }
}
