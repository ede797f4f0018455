//! WeChat Pay API v3: JSON notifications signed with RSA-SHA256 over
//! `timestamp\nnonce\nbody\n`, the resource sealed with AEAD_AES_256_GCM under the APIv3 key.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use ring::aead;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::{WECHAT_REPLY_TIMEOUT, api_base, api_path, parse_attach, Answer, Inbound, NotifyInfo, PaidOrder, Provider, ProviderError, QueryOutcome, QueryRequest, Reply, Verified};
use crate::config::{parse_duration, ConfigDir, ConfigError};
use crate::forward::{Backend, HttpReply};
use crate::keys::{random_hex, Certificate, RsaPrivateKey, RsaPublicKey, VerifyingKey};
use crate::secret::Secret;

/// WeChat sends these on purpose to check that merchants really verify.
/// The widest `timestamp_tolerance` accepted: WeChat's own SDKs use 5 minutes.
const MAX_TOLERANCE: Duration = Duration::from_secs(15 * 60);
const PROBE_PREFIX: &str = "WECHATPAY/SIGNTEST/";

/// What stays literal in a path segment: unreserved characters except `.`, so that an
/// out_trade_no of `..` cannot climb out of the order's resource.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'~');

/// WeChat refuses API calls without a User-Agent.
const USER_AGENT: &str = concat!("payhook/", env!("CARGO_PKG_VERSION"));

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
    api_base: Option<String>,
    merchant_private_key_file: Option<PathBuf>,
    merchant_serial: Option<String>,
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
    keys: HashMap<String, VerifyingKey>,
    tolerance: i64,
    query: Option<QueryClient>,
}

/// What signing an order query takes: the API host and the merchant's API key and its serial.
struct QueryClient {
    api: Backend,
    key: RsaPrivateKey,
    serial: String,
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
            keys.insert(entry.id.clone(), VerifyingKey::PublicKey(public));
        }
        for (i, entry) in cfg.platform_certs.iter().enumerate() {
            let k = format!("{key}.platform_certs[{i}]");
            let pem = dir.read(&k, &entry.pem_file)?;
            let cert = Certificate::from_pem(&pem).map_err(|e| ConfigError::invalid(&k, e))?;
            keys.insert(cert.serial_hex.clone(), VerifyingKey::Certificate(cert));
        }
        if keys.is_empty() {
            return Err(ConfigError::invalid(key, "needs platform_public_keys or platform_certs"));
        }
        let tolerance = match &cfg.timestamp_tolerance {
            Some(t) => parse_duration(&format!("{key}.timestamp_tolerance"), t)?,
            None => Duration::from_secs(300),
        };
        if tolerance.is_zero() || tolerance > MAX_TOLERANCE {
            // Past a few minutes a captured notification stays replayable for that long.
            return Err(ConfigError::invalid(format!("{key}.timestamp_tolerance"), "must be between 1s and 15m"));
        }
        let query = match (&cfg.api_base, &cfg.merchant_private_key_file, &cfg.merchant_serial) {
            (None, None, None) => None,
            (Some(url), Some(path), Some(serial)) => {
                let k = format!("{key}.merchant_private_key_file");
                let private = RsaPrivateKey::from_pem(&dir.read(&k, path)?).map_err(|e| ConfigError::invalid(&k, e))?;
                if serial.is_empty() {
                    return Err(ConfigError::invalid(format!("{key}.merchant_serial"), "must not be empty"));
                }
                Some(QueryClient { api: api_base(key, url)?, key: private, serial: serial.clone() })
            }
            // Half a query setup is a typo, not a choice: say so at start-up, not at the first query.
            _ => return Err(ConfigError::invalid(key, "api_base, merchant_private_key_file and merchant_serial go together")),
        };
        Ok(WechatV3 { mchid: cfg.mchid, appid: cfg.appid, gcm_key, keys, tolerance: tolerance.as_secs() as i64, query })
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
        // Checked: `now - ts` overflows for a timestamp near i64::MIN (found by fuzz/wechat_v3_notify).
        if now.checked_sub(ts).and_then(i64::checked_abs).is_none_or(|age| age >= self.tolerance) {
            return Err(ProviderError::StaleTimestamp);
        }
        let signature = B64.decode(signature).map_err(|_| ProviderError::BadSignature)?;
        let mut message = Vec::with_capacity(timestamp.len() + nonce.len() + body.len() + 3);
        for part in [timestamp.as_bytes(), nonce.as_bytes(), body] {
            message.extend_from_slice(part);
            message.push(b'\n');
        }
        super::verify_sha256_at(key, &message, &signature, now)
    }

    /// Opens an AEAD_AES_256_GCM `resource` (ciphertext = base64 of ct ‖ tag).
    pub fn decrypt_resource(&self, nonce: &str, associated_data: &str, ciphertext: &str) -> Result<Vec<u8>, ProviderError> {
        decrypt_aes_gcm(&self.gcm_key, nonce, associated_data, ciphertext)
    }

    /// Normalises a decrypted (or queried) Transaction object.
    fn transaction(&self, tx: Transaction, raw: &RawValue) -> Result<Verified, ProviderError> {
        if tx.mchid.as_deref() != Some(self.mchid.as_str()) {
            return Err(ProviderError::MerchantMismatch);
        }
        if let Some(appid) = &self.appid {
            if tx.appid.as_deref() != Some(appid.as_str()) {
                return Err(ProviderError::MerchantMismatch);
            }
        }
        let state = tx.trade_state.as_deref().unwrap_or_default();
        if state != "SUCCESS" {
            return Ok(Verified::NotPayment { what: format!("trade_state {state}") });
        }
        let out_trade_no = tx.out_trade_no.unwrap_or_default().into_owned();
        if out_trade_no.is_empty() {
            return Err(ProviderError::Malformed("no out_trade_no".into()));
        }
        let total_fee = tx
            .amount
            .and_then(|a| a.total)
            .and_then(|t| t.as_u64())
            .ok_or_else(|| ProviderError::BadAmount("amount.total".into()))?;
        let mut unparsed = Vec::new();
        let success_time = tx.success_time.unwrap_or_default();
        let millis = chrono::DateTime::parse_from_rfc3339(&success_time).ok().map(|t| t.timestamp_millis());
        let pay_date = PaidOrder::lenient_date(millis, success_time.into_owned(), "success_time", &mut unparsed);
        let text = |field: Option<Cow<str>>| field.unwrap_or_default().into_owned();
        Ok(Verified::Paid(PaidOrder {
            provider: "wxpay",
            transaction_id: text(tx.transaction_id),
            total_fee,
            mch_id: text(tx.mchid),
            appid: text(tx.appid),
            openid: text(tx.payer.and_then(|p| p.openid)),
            pay_date,
            attach: parse_attach(tx.attach.as_deref().unwrap_or_default()),
            out_trade_no,
            notify_info: NotifyInfo::from_object(raw),
            unparsed,
        }))
    }
}

/// The fields of a Transaction object that payhook reads; `notify_info` carries all of them.
/// A field that is absent or `null` reads as empty; one of another JSON type makes the object
/// malformed.
#[derive(Deserialize)]
struct Transaction<'a> {
    #[serde(borrow)]
    mchid: Option<Cow<'a, str>>,
    #[serde(borrow)]
    appid: Option<Cow<'a, str>>,
    #[serde(borrow)]
    trade_state: Option<Cow<'a, str>>,
    #[serde(borrow)]
    out_trade_no: Option<Cow<'a, str>>,
    #[serde(borrow)]
    transaction_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    success_time: Option<Cow<'a, str>>,
    #[serde(borrow)]
    attach: Option<Cow<'a, str>>,
    amount: Option<Amount>,
    #[serde(borrow)]
    payer: Option<Payer<'a>>,
}

#[derive(Deserialize)]
struct Amount {
    /// Any JSON value, so that a total that is not a count of fen is a `bad_amount`.
    total: Option<Value>,
}

#[derive(Deserialize)]
struct Payer<'a> {
    #[serde(borrow)]
    openid: Option<Cow<'a, str>>,
}

impl<'a> Transaction<'a> {
    /// `json`: the decrypted resource or the query reply; `what` names it in the error.
    fn parse(json: &'a [u8], what: &'static str) -> Result<(Transaction<'a>, &'a RawValue), ProviderError> {
        let malformed = || ProviderError::Malformed(format!("{what} is not a transaction"));
        let raw: &RawValue = serde_json::from_slice(json).map_err(|_| malformed())?;
        // serde would also read a struct from a JSON array, field by field.
        if !raw.get().starts_with('{') {
            return Err(malformed());
        }
        let tx = serde_json::from_str(raw.get()).map_err(|_| malformed())?;
        Ok((tx, raw))
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

/// A v3 API error answer (`{"code":"ORDER_NOT_EXIST","message":"…"}`).
#[derive(Deserialize)]
struct ErrorBody {
    code: String,
}

impl Provider for WechatV3 {
    fn kind(&self) -> &'static str {
        "wechat-v3"
    }

    fn merchant(&self) -> (&'static str, &str) {
        ("wechat", &self.mchid)
    }

    fn can_query(&self) -> bool {
        self.query.is_some()
    }

    fn reply_timeout(&self) -> Option<Duration> {
        Some(WECHAT_REPLY_TIMEOUT)
    }

    fn certificates(&self) -> Vec<&Certificate> {
        self.keys.values().filter_map(VerifyingKey::certificate).collect()
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
        let (tx, raw) = Transaction::parse(&plain, "resource")?;
        self.transaction(tx, raw)
    }

    fn order_query(&self, out_trade_no: &str, now: i64) -> Option<QueryRequest<'_>> {
        let query = self.query.as_ref()?;
        let path = api_path(
            &query.api,
            &format!(
                "/v3/pay/transactions/out-trade-no/{}?mchid={}",
                utf8_percent_encode(out_trade_no, SEGMENT),
                utf8_percent_encode(&self.mchid, SEGMENT)
            ),
        );
        let nonce = random_hex(16);
        // WeChat signs what follows the host, so the prefix of api_base is part of the message.
        let message = format!("GET\n{path}\n{now}\n{nonce}\n\n");
        let signature = B64.encode(query.key.sign_sha256(message.as_bytes()));
        let authorization = format!(
            "WECHATPAY2-SHA256-RSA2048 mchid=\"{}\",nonce_str=\"{nonce}\",signature=\"{signature}\",timestamp=\"{now}\",serial_no=\"{}\"",
            self.mchid, query.serial
        );
        Some(QueryRequest {
            endpoint: &query.api,
            method: "GET",
            path,
            headers: vec![
                ("Accept".into(), "application/json".into()),
                ("User-Agent".into(), USER_AGENT.into()),
                ("Authorization".into(), authorization),
            ],
            body: Bytes::new(),
        })
    }

    fn parse_order_query(&self, out_trade_no: &str, reply: &HttpReply, now: i64) -> Result<QueryOutcome, ProviderError> {
        self.verify_signature(&reply.headers, &reply.body, now)?;
        match reply.status {
            200 => {
                let (tx, raw) = Transaction::parse(&reply.body, "query reply")?;
                if tx.out_trade_no.as_deref() != Some(out_trade_no) {
                    return Err(ProviderError::Malformed("query answered another out_trade_no".into()));
                }
                let state = tx.trade_state.as_deref().unwrap_or_default().to_string();
                if state.is_empty() {
                    return Err(ProviderError::Malformed("query reply has no trade_state".into()));
                }
                // `transaction` checks mchid and appid before it looks at the state.
                match self.transaction(tx, raw)? {
                    Verified::Paid(order) => Ok(QueryOutcome::Paid(order)),
                    Verified::NotPayment { .. } => Ok(QueryOutcome::NotPaid { trade_state: state }),
                }
            }
            404 => match serde_json::from_slice::<ErrorBody>(&reply.body) {
                Ok(e) if e.code == "ORDER_NOT_EXIST" => Ok(QueryOutcome::NotPaid { trade_state: e.code }),
                _ => Err(ProviderError::Malformed("query status 404".into())),
            },
            // FREQUENCY_LIMITED: the merchant queries too often.
            429 => Err(ProviderError::Throttled),
            status => Err(ProviderError::Malformed(format!("query status {status}"))),
        }
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
        WechatV3::from_config("t", cfg, &ConfigDir::new(dir.path())).unwrap()
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

    const MCHID: &str = "1230000109";
    const APPID: &str = "wxd678efh567hg6787";
    const PUB_KEY_ID: &str = "PUB_KEY_ID_0114232020240000000000000001";
    const MERCHANT_SERIAL: &str = "3775B6A45ACD588826D15E583A95F5DD00000001";
    /// 2026-11-27 13:29:35 Beijing time.
    const NOW: i64 = 1_795_757_375;

    fn keys_dir() -> ConfigDir {
        ConfigDir::new(format!("{}/tests/fixtures/keys", env!("CARGO_MANIFEST_DIR")))
    }

    /// An account that verifies with platform key A (public-key mode), plus `extra` config.
    fn account(extra: &str) -> Result<WechatV3, ConfigError> {
        let cfg: WechatV3Config = toml::from_str(&format!(
            "mchid = {MCHID:?}\nappid = {APPID:?}\napiv3_key = \"0123456789abcdef0123456789abcdef\"\n\
             platform_public_keys = [{{ id = {PUB_KEY_ID:?}, pem_file = \"wx_platform_a.pub.pem\" }}]\n{extra}"
        ))
        .unwrap();
        WechatV3::from_config("t", cfg, &keys_dir())
    }

    fn query_account(api_base: &str) -> WechatV3 {
        account(&format!(
            "api_base = {api_base:?}\nmerchant_private_key_file = \"wx_merchant.key.pem\"\nmerchant_serial = {MERCHANT_SERIAL:?}"
        ))
        .unwrap()
    }

    /// A reply signed the way WeChat signs API answers, with the platform key in `key_file`.
    fn signed_reply(status: u16, body: &str, key_file: &str, timestamp: i64) -> HttpReply {
        signed_reply_as(status, body, key_file, PUB_KEY_ID, timestamp)
    }

    /// As [`signed_reply`], under `Wechatpay-Serial: serial`.
    fn signed_reply_as(status: u16, body: &str, key_file: &str, serial: &str, timestamp: i64) -> HttpReply {
        let key = RsaPrivateKey::from_pem(&std::fs::read(keys_dir().resolve(key_file.as_ref())).unwrap()).unwrap();
        let nonce = "593BEC0C930BF1AFEB40B4A08C8FB242";
        let signature = B64.encode(key.sign_sha256(format!("{timestamp}\n{nonce}\n{body}\n").as_bytes()));
        let mut headers = http::HeaderMap::new();
        for (name, value) in [
            ("wechatpay-timestamp", timestamp.to_string()),
            ("wechatpay-nonce", nonce.to_string()),
            ("wechatpay-signature", signature),
            ("wechatpay-serial", serial.to_string()),
        ] {
            headers.insert(name, value.parse().unwrap());
        }
        HttpReply { status, headers, body: Bytes::from(body.to_string()) }
    }

    fn platform_reply(status: u16, body: &str) -> HttpReply {
        signed_reply(status, body, "wx_platform_a.key.pem", NOW)
    }

    fn queried_transaction(out_trade_no: &str, trade_state: &str) -> Value {
        serde_json::json!({
            "appid": APPID, "mchid": MCHID, "out_trade_no": out_trade_no,
            "transaction_id": "4200002345202611271234567890", "trade_type": "JSAPI",
            "trade_state": trade_state, "trade_state_desc": "支付成功", "bank_type": "OTHERS",
            "attach": "{\"user_id\":\"u001\"}", "success_time": "2026-11-27T13:29:35+08:00",
            "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
            "amount": {"total": 1234, "payer_total": 1234, "currency": "CNY", "payer_currency": "CNY"}
        })
    }

    #[test]
    fn a_certificate_verifies_only_within_its_validity() {
        let p = account("platform_certs = [{ pem_file = \"wx_platform_d.cert.pem\" }]").unwrap();
        let serial = "2E71AED0000000000000000000000001";
        // 2024-01-01T00:00:00Z and 2025-01-01T00:00:00Z (openssl x509 -dates), both included.
        let (not_before, not_after) = (1_704_067_200, 1_735_689_600);
        let verify_at = |at: i64| {
            let signed = signed_reply_as(200, "{}", "wx_platform_d.key.pem", serial, at);
            p.verify_signature(&signed.headers, &signed.body, at)
        };
        assert!(verify_at(not_before).is_ok());
        assert!(verify_at(not_after).is_ok());
        for at in [not_before - 1, not_after + 1, NOW] {
            assert!(matches!(verify_at(at), Err(ProviderError::CertificateExpired(s)) if s == serial), "{at}");
        }
        // A public key (no certificate) has no validity to end.
        let by_key = signed_reply(200, "{}", "wx_platform_a.key.pem", NOW);
        assert!(p.verify_signature(&by_key.headers, &by_key.body, NOW).is_ok());
        let certificates: Vec<(&str, i64)> = p.certificates().iter().map(|c| (c.serial_hex.as_str(), c.not_after)).collect();
        assert_eq!(certificates, [(serial, not_after)]);
    }

    #[test]
    fn order_query_is_a_signed_get_under_the_api_base_prefix() {
        let p = query_account("http://127.0.0.1:9/prefix/");
        let req = p.order_query("a b/..|*单", NOW).unwrap();
        assert_eq!((req.endpoint.url(), req.method), ("http://127.0.0.1:9/prefix/", "GET"));
        let path = "/prefix/v3/pay/transactions/out-trade-no/a%20b%2F%2E%2E%7C%2A%E5%8D%95?mchid=1230000109";
        assert_eq!(req.path, path);
        assert!(req.body.is_empty());
        let names: Vec<&str> = req.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["Accept", "User-Agent", "Authorization"]);
        assert_eq!(req.headers[0].1, "application/json");
        assert!(req.headers[1].1.starts_with("payhook/"));

        let auth = req.headers[2].1.strip_prefix("WECHATPAY2-SHA256-RSA2048 ").unwrap();
        let params: Vec<(&str, &str)> = auth
            .split(',')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k, v.strip_prefix('"').unwrap().strip_suffix('"').unwrap())
            })
            .collect();
        let keys: Vec<&str> = params.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, ["mchid", "nonce_str", "signature", "timestamp", "serial_no"]);
        let param = |name: &str| params.iter().find(|(k, _)| *k == name).unwrap().1;
        assert_eq!((param("mchid"), param("timestamp"), param("serial_no")), (MCHID, "1795757375", MERCHANT_SERIAL));
        let nonce = param("nonce_str");
        assert!(nonce.len() == 32 && nonce.bytes().all(|b| b.is_ascii_hexdigit()), "{nonce}");
        // The merchant's public key verifies the signature over the full path as sent.
        let merchant = RsaPublicKey::from_pem(&std::fs::read(keys_dir().resolve("wx_merchant.pub.pem".as_ref())).unwrap()).unwrap();
        let signature = B64.decode(param("signature")).unwrap();
        assert!(merchant.verify_sha256(format!("GET\n{path}\n{NOW}\n{nonce}\n\n").as_bytes(), &signature));
        assert!(!merchant.verify_sha256(format!("GET\n{path}\n{}\n{nonce}\n\n", NOW + 1).as_bytes(), &signature));

        let again = p.order_query("a b/..|*单", NOW).unwrap();
        assert_ne!(again.headers[2].1, req.headers[2].1, "a fresh nonce per request");
        let bare = query_account("http://127.0.0.1:9");
        assert_eq!(bare.order_query("o1", NOW).unwrap().path, "/v3/pay/transactions/out-trade-no/o1?mchid=1230000109");
    }

    #[test]
    fn paid_query_reply_normalises_exactly() {
        let p = query_account("http://127.0.0.1:9");
        let tx = queried_transaction("order-1", "SUCCESS");
        // Spaces and newlines that a decode-and-encode would drop: notify_info keeps them.
        let text = serde_json::to_string_pretty(&tx).unwrap();
        let reply = platform_reply(200, &text);
        let QueryOutcome::Paid(order) = p.parse_order_query("order-1", &reply, NOW + 10).unwrap() else { panic!("not paid") };
        assert_eq!(order.notify_info.json(), text);
        assert_eq!(
            order,
            PaidOrder {
                provider: "wxpay",
                out_trade_no: "order-1".into(),
                transaction_id: "4200002345202611271234567890".into(),
                total_fee: 1234,
                mch_id: MCHID.into(),
                appid: APPID.into(),
                openid: "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o".into(),
                pay_date: (NOW * 1000).into(),
                attach: serde_json::json!({ "user_id": "u001" }),
                notify_info: NotifyInfo::from_object(serde_json::from_str(&text).unwrap()),
                unparsed: Vec::new(),
            }
        );
    }

    #[test]
    fn transaction_fields_of_another_type() {
        let p = query_account("http://127.0.0.1:9");
        let outcome = |text: &str| p.parse_order_query("order-1", &platform_reply(200, text), NOW + 10);
        let with = |field: &str, value: Value| {
            let mut tx = queried_transaction("order-1", "SUCCESS");
            tx[field] = value;
            tx.to_string()
        };
        for total in [serde_json::json!("1234"), serde_json::json!(-1), serde_json::json!(12.5)] {
            let mut tx = queried_transaction("order-1", "SUCCESS");
            tx["amount"]["total"] = total;
            assert_eq!(outcome(&tx.to_string()).unwrap_err().reason(), "bad_amount");
        }
        assert_eq!(outcome(&with("amount", Value::Null)).unwrap_err().reason(), "bad_amount");
        // WeChat's fields are strings: a number where one belongs makes the object malformed.
        assert_eq!(outcome(&with("mchid", serde_json::json!(1230000109))).unwrap_err().reason(), "malformed");
        assert_eq!(outcome(&with("payer", serde_json::json!("o1"))).unwrap_err().reason(), "malformed");
        // `null` reads as absent.
        let QueryOutcome::Paid(order) = outcome(&with("attach", Value::Null)).unwrap() else { panic!("not paid") };
        assert_eq!(order.attach, Value::String(String::new()));
        // Not an object, or an object that names a field twice.
        let fields: Vec<Value> = queried_transaction("order-1", "SUCCESS").as_object().unwrap().values().cloned().collect();
        assert_eq!(outcome(&Value::Array(fields).to_string()).unwrap_err().reason(), "malformed");
        let twice = with("attach", Value::Null).replacen('{', r#"{"mchid":"1900000001","#, 1);
        assert_eq!(outcome(&twice).unwrap_err().reason(), "malformed");
    }

    #[test]
    fn unpaid_and_unknown_orders_are_not_paid() {
        let p = query_account("http://127.0.0.1:9");
        let reply = platform_reply(200, &queried_transaction("order-1", "NOTPAY").to_string());
        let outcome = p.parse_order_query("order-1", &reply, NOW).unwrap();
        assert!(matches!(outcome, QueryOutcome::NotPaid { ref trade_state } if trade_state == "NOTPAY"), "{outcome:?}");
        let missing = platform_reply(404, r#"{"code":"ORDER_NOT_EXIST","message":"订单不存在"}"#);
        let outcome = p.parse_order_query("order-1", &missing, NOW).unwrap();
        assert!(matches!(outcome, QueryOutcome::NotPaid { ref trade_state } if trade_state == "ORDER_NOT_EXIST"), "{outcome:?}");
    }

    #[test]
    fn other_answers_are_errors_without_body_text() {
        let p = query_account("http://127.0.0.1:9");
        for (status, body) in [
            (404, r#"{"code":"RESOURCE_NOT_EXISTS","message":"secret-ish"}"#),
            (500, r#"{"code":"SYSTEM_ERROR","message":"secret-ish"}"#),
            (200, "secret-ish"),
        ] {
            let err = p.parse_order_query("order-1", &platform_reply(status, body), NOW).unwrap_err();
            assert_eq!(err.reason(), "malformed");
            assert!(!err.to_string().contains("secret-ish") && !err.to_string().contains("_"), "{err}");
        }
        let limited = platform_reply(429, r#"{"code":"FREQUENCY_LIMITED","message":"secret-ish"}"#);
        assert_eq!(p.parse_order_query("order-1", &limited, NOW).unwrap_err().reason(), "throttled");
        assert_eq!(
            p.parse_order_query("order-1", &platform_reply(500, "{}"), NOW).unwrap_err().to_string(),
            "malformed notification: query status 500"
        );
        let no_state = platform_reply(200, &serde_json::json!({ "mchid": MCHID, "appid": APPID, "out_trade_no": "order-1" }).to_string());
        assert_eq!(p.parse_order_query("order-1", &no_state, NOW).unwrap_err().reason(), "malformed");
    }

    #[test]
    fn query_replies_must_verify() {
        let p = query_account("http://127.0.0.1:9");
        let body = queried_transaction("order-1", "SUCCESS").to_string();
        let mut tampered = platform_reply(200, &body);
        tampered.body = Bytes::from(body.replace("1234", "9999"));
        assert_eq!(p.parse_order_query("order-1", &tampered, NOW).unwrap_err().reason(), "bad_signature");
        // The right key id with another key's signature.
        let wrong_key = signed_reply(200, &body, "wx_platform_b.key.pem", NOW);
        assert_eq!(p.parse_order_query("order-1", &wrong_key, NOW).unwrap_err().reason(), "bad_signature");
        let stale = signed_reply(200, &body, "wx_platform_a.key.pem", NOW - 600);
        assert_eq!(p.parse_order_query("order-1", &stale, NOW).unwrap_err().reason(), "stale_timestamp");
        let mut unknown = platform_reply(200, &body);
        unknown.headers.insert("wechatpay-serial", "PUB_KEY_ID_OTHER".parse().unwrap());
        assert_eq!(p.parse_order_query("order-1", &unknown, NOW).unwrap_err().reason(), "unknown_serial");
        // An unsigned "not found" is not believed either.
        let unsigned = HttpReply { status: 404, headers: http::HeaderMap::new(), body: Bytes::from(r#"{"code":"ORDER_NOT_EXIST"}"#) };
        assert_eq!(p.parse_order_query("order-1", &unsigned, NOW).unwrap_err().reason(), "missing_header");
    }

    #[test]
    fn query_reply_about_another_order_or_merchant_is_refused() {
        let p = query_account("http://127.0.0.1:9");
        let other_order = platform_reply(200, &queried_transaction("order-2", "SUCCESS").to_string());
        assert_eq!(p.parse_order_query("order-1", &other_order, NOW).unwrap_err().reason(), "malformed");
        let mut tx = queried_transaction("order-1", "NOTPAY");
        tx["mchid"] = "1230000110".into();
        let other_merchant = platform_reply(200, &tx.to_string());
        assert_eq!(p.parse_order_query("order-1", &other_merchant, NOW).unwrap_err().reason(), "merchant_mismatch");
    }

    #[test]
    fn order_query_needs_its_config() {
        assert!(account("").unwrap().order_query("o1", NOW).is_none());
        let key = "merchant_private_key_file = \"wx_merchant.key.pem\"";
        let serial = format!("merchant_serial = {MERCHANT_SERIAL:?}");
        for partial in [
            format!("api_base = \"http://127.0.0.1:9\"\n{key}"),
            format!("api_base = \"http://127.0.0.1:9\"\n{serial}"),
            format!("{key}\n{serial}"),
            format!("api_base = \"http://127.0.0.1:9/p?x=1\"\n{key}\n{serial}"),
            format!("api_base = \"ftp://127.0.0.1:9\"\n{key}\n{serial}"),
            format!("api_base = \"http://127.0.0.1:9\"\nmerchant_private_key_file = \"wx_merchant.pub.pem\"\n{serial}"),
            format!("api_base = \"http://127.0.0.1:9\"\n{key}\nmerchant_serial = \"\""),
        ] {
            assert!(account(&partial).is_err(), "{partial}");
        }
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

    /// Regression (fuzz/fuzz_targets/wechat_v3_notify.rs): a `Wechatpay-Timestamp` near i64::MIN
    /// made `now - ts` overflow, a panic in debug builds, before the signature was checked.
    #[test]
    fn extreme_timestamps_are_stale_not_a_panic() {
        let p = account("").unwrap();
        for ts in ["-9223372036854775808", "-9223372036854775807", "9223372036854775807"] {
            let mut h = http::HeaderMap::new();
            for (name, value) in
                [("wechatpay-timestamp", ts), ("wechatpay-nonce", "4"), ("wechatpay-signature", "6E'6"), ("wechatpay-serial", PUB_KEY_ID)]
            {
                h.insert(name, value.parse().unwrap());
            }
            let err = p.verify(&Inbound { headers: &h, body: b"", now: NOW }).unwrap_err();
            assert_eq!(err.reason(), "stale_timestamp", "{ts}");
        }
    }
}
