//! Alipay (open platform) asynchronous notifications: a form body signed with RSA2
//! (RSASSA-PKCS1-v1_5 + SHA-256) over the sorted, form-decoded pairs except `sign` and
//! `sign_type`. Alipay retries until it reads exactly `success`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use encoding_rs::{Encoding, GBK, UTF_8};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::{beijing_millis, parse_attach, Answer, Inbound, NotifyInfo, PaidOrder, Provider, ProviderError, QueryOutcome, QueryRequest, Reply, Verified};
use crate::config::{ConfigDir, ConfigError};
use crate::forward::{Backend, HttpReply};
use crate::keys::{Certificate, KeyError, RsaPrivateKey, RsaPublicKey, VerifyingKey};

/// Alipay's times (request `timestamp`, `send_pay_date`, `gmt_payment`) are Beijing wall clock.
const BEIJING_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlipayConfig {
    app_id: String,
    seller_id: Option<String>,
    alipay_public_key: Option<String>,
    alipay_public_key_file: Option<PathBuf>,
    alipay_cert_file: Option<PathBuf>,
    alipay_root_cert_file: Option<PathBuf>,
    api_base: Option<String>,
    app_private_key_file: Option<PathBuf>,
}

pub struct Alipay {
    app_id: String,
    seller_id: Option<String>,
    public_key: VerifyingKey,
    query: Option<QueryClient>,
}

/// What `alipay.trade.query` takes: the gateway (`…/gateway.do`) and the app's private key.
struct QueryClient {
    gateway: Backend,
    key: RsaPrivateKey,
}

impl Alipay {
    pub fn from_config(key: &str, cfg: AlipayConfig, dir: &ConfigDir) -> Result<Self, ConfigError> {
        if cfg.app_id.is_empty() {
            return Err(ConfigError::invalid(format!("{key}.app_id"), "must not be empty"));
        }
        let public_key = match (
            &cfg.alipay_public_key,
            &cfg.alipay_public_key_file,
            &cfg.alipay_cert_file,
            &cfg.alipay_root_cert_file,
        ) {
            (Some(text), None, None, None) => {
                let k = format!("{key}.alipay_public_key");
                // The console shows a bare base64 SPKI; accept PEM too for keys pasted from files.
                let parsed = if text.trim_start().starts_with("-----BEGIN") {
                    RsaPublicKey::from_pem(text.as_bytes())
                } else {
                    RsaPublicKey::from_base64_spki(text)
                };
                VerifyingKey::PublicKey(parsed.map_err(|e| ConfigError::invalid(k, e))?)
            }
            (None, Some(path), None, None) => {
                let k = format!("{key}.alipay_public_key_file");
                VerifyingKey::PublicKey(RsaPublicKey::from_pem(&dir.read(&k, path)?).map_err(|e| ConfigError::invalid(k, e))?)
            }
            (None, None, Some(cert), Some(root)) => {
                let cert_key = format!("{key}.alipay_cert_file");
                let root_key = format!("{key}.alipay_root_cert_file");
                let chain = rsa_certificates(&dir.read(&cert_key, cert)?, false).map_err(|e| ConfigError::invalid(&cert_key, e))?;
                let roots = rsa_certificates(&dir.read(&root_key, root)?, true).map_err(|e| ConfigError::invalid(&root_key, e))?;
                if roots.is_empty() {
                    return Err(ConfigError::invalid(root_key, "holds no RSA certificate"));
                }
                VerifyingKey::Certificate(trusted_leaf(chain, &roots).map_err(|e| ConfigError::invalid(cert_key, e))?)
            }
            _ => {
                return Err(ConfigError::invalid(
                    key,
                    "configure exactly one of alipay_public_key, alipay_public_key_file, \
                     or alipay_cert_file with alipay_root_cert_file",
                ))
            }
        };
        let query = match (&cfg.api_base, &cfg.app_private_key_file) {
            (None, None) => None,
            // Certificate mode also wants app_cert_sn and alipay_root_cert_sn on every request,
            // which this client does not send: refuse rather than fail every query.
            (Some(_), Some(_)) if cfg.alipay_cert_file.is_some() => {
                return Err(ConfigError::invalid(format!("{key}.api_base"), "order queries need public-key mode"))
            }
            (Some(url), Some(path)) => {
                let k = format!("{key}.app_private_key_file");
                let private = RsaPrivateKey::from_pem(&dir.read(&k, path)?).map_err(|e| ConfigError::invalid(&k, e))?;
                let gateway = Backend::parse(url).map_err(|e| ConfigError::invalid(format!("{key}.api_base"), e))?;
                Some(QueryClient { gateway, key: private })
            }
            // Half a query setup is a typo, not a choice: say so at start-up, not at the first query.
            _ => return Err(ConfigError::invalid(key, "api_base and app_private_key_file go together")),
        };
        Ok(Alipay { app_id: cfg.app_id, seller_id: cfg.seller_id, public_key, query })
    }

    /// Normalises the decoded fields of a verified notification.
    fn notification(&self, fields: BTreeMap<String, String>) -> Result<Verified, ProviderError> {
        let text = |name: &str| fields.get(name).cloned().unwrap_or_default();
        if text("app_id") != self.app_id {
            return Err(ProviderError::MerchantMismatch);
        }
        if let Some(seller_id) = &self.seller_id {
            if &text("seller_id") != seller_id {
                return Err(ProviderError::MerchantMismatch);
            }
        }
        let status = text("trade_status");
        if status != "TRADE_SUCCESS" && status != "TRADE_FINISHED" {
            return Ok(Verified::NotPayment { what: format!("trade_status {status}") });
        }
        // A partial refund re-sends the order with TRADE_SUCCESS: forwarding it would book the
        // payment twice.
        if fields.contains_key("refund_fee") || fields.contains_key("gmt_refund") {
            return Ok(Verified::NotPayment { what: "refund".into() });
        }
        let out_trade_no = text("out_trade_no");
        if out_trade_no.is_empty() {
            return Err(ProviderError::Malformed("no out_trade_no".into()));
        }
        let total_fee = fields
            .get("total_amount")
            .ok_or_else(|| ProviderError::BadAmount("total_amount".into()))
            .and_then(|amount| yuan_to_fen(amount))?;
        let mut unparsed = Vec::new();
        let gmt_payment = text("gmt_payment");
        let pay_date = PaidOrder::lenient_date(beijing_millis(&gmt_payment, BEIJING_FORMAT), gmt_payment, "gmt_payment", &mut unparsed);
        // The merchant URL-encoded passback_params when creating the order; Alipay echoes it as is.
        let attach = match fields.get("passback_params") {
            Some(raw) => match percent_encoding::percent_decode_str(raw).decode_utf8() {
                Ok(text) => parse_attach(&text),
                Err(_) => {
                    unparsed.push("passback_params");
                    Value::String(raw.clone())
                }
            },
            None => Value::String(String::new()),
        };
        let openid = fields
            .get("buyer_id")
            .filter(|id| !id.is_empty())
            .or_else(|| fields.get("buyer_open_id"))
            .cloned()
            .unwrap_or_default();
        Ok(Verified::Paid(PaidOrder {
            provider: "alipay",
            out_trade_no,
            transaction_id: text("trade_no"),
            total_fee,
            mch_id: text("seller_id"),
            appid: text("app_id"),
            openid,
            pay_date,
            attach,
            notify_info: NotifyInfo::from_fields(fields.iter().filter(|(k, _)| !is_unsigned(k))),
            unparsed,
        }))
    }

    fn verify_signature(&self, form: &Form, now: i64) -> Result<(), ProviderError> {
        // Only RSA2: legacy RSA is SHA-1, which we refuse to trust.
        if form.raw.get("sign_type").is_some_and(|t| t.as_slice() != b"RSA2") {
            return Err(ProviderError::BadSignature);
        }
        let sign = form.raw.get("sign").ok_or(ProviderError::BadSignature)?;
        let signature = B64.decode(sign).map_err(|_| ProviderError::BadSignature)?;
        super::verify_sha256_at(&self.public_key, &form.signed_bytes(), &signature, now)
    }
}

/// The certificates of a PEM file. Alipay's root bundle also carries SM2 and ECC roots, which
/// cannot have signed an RSA2 certificate: `skip_non_rsa` drops them instead of failing.
fn rsa_certificates(pem_text: &[u8], skip_non_rsa: bool) -> Result<Vec<Certificate>, KeyError> {
    let blocks = pem::parse_many(pem_text).map_err(|e| KeyError::Pem(e.to_string()))?;
    let mut certs = Vec::new();
    for block in blocks.iter().filter(|b| b.tag() == "CERTIFICATE") {
        match Certificate::from_der(block.contents()) {
            Ok(cert) => certs.push(cert),
            Err(KeyError::NotRsa) if skip_non_rsa => {}
            Err(e) => return Err(e),
        }
    }
    Ok(certs)
}

/// The leaf's key, once the leaf chains to a root. Alipay's `alipayCertPublicKey_RSA2.crt` holds
/// the leaf first, then the intermediate CA that signed it, so intermediates come from that file.
fn trusted_leaf(mut chain: Vec<Certificate>, roots: &[Certificate]) -> Result<Certificate, String> {
    if chain.is_empty() {
        return Err("holds no certificate".into());
    }
    let leaf = chain.remove(0);
    let mut current = leaf.clone();
    loop {
        if roots.iter().any(|root| current.check_signed_by(root).is_ok()) {
            return Ok(leaf);
        }
        // Each intermediate is used at most once, so the walk ends.
        match chain.iter().position(|issuer| current.check_signed_by(issuer).is_ok()) {
            Some(i) => current = chain.swap_remove(i),
            None => return Err(KeyError::Chain.to_string()),
        }
    }
}

fn is_unsigned(key: &str) -> bool {
    key == "sign" || key == "sign_type"
}

/// The notification string-to-sign: the sorted pairs without `sign` and `sign_type`.
pub fn signing_string(pairs: &BTreeMap<String, String>) -> String {
    sorted_pairs(pairs, is_unsigned)
}

/// The request string-to-sign: here `sign_type` is signed too (Alipay's SDKs sign requests so).
fn request_signing_string(params: &BTreeMap<String, String>) -> String {
    sorted_pairs(params, |k| k == "sign")
}

/// Sorted `k=v&…` of the (decoded) pairs except those `skip` names, empty values kept (Alipay's
/// own SDK keeps them).
fn sorted_pairs(pairs: &BTreeMap<String, String>, skip: fn(&str) -> bool) -> String {
    pairs.iter().filter(|(k, _)| !skip(k)).map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

/// A yuan decimal string (`"0.10"`) → integer fen, exactly: no floating point anywhere.
pub fn yuan_to_fen(text: &str) -> Result<u64, ProviderError> {
    let bad = || ProviderError::BadAmount("not a yuan amount with at most 2 decimals".into());
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (whole, fraction) = text.split_once('.').unwrap_or((text, "00"));
    if !digits(whole) || !digits(fraction) || fraction.len() > 2 {
        return Err(bad());
    }
    let whole: u64 = whole.parse().map_err(|_| bad())?;
    let fraction: u64 = format!("{fraction:0<2}").parse().map_err(|_| bad())?;
    whole.checked_mul(100).and_then(|fen| fen.checked_add(fraction)).ok_or_else(bad)
}

/// A form body split into pairs. Values stay in the body's charset: Alipay signs the string
/// encoded in that charset, so verifying over these bytes needs no re-encoding round trip.
struct Form {
    raw: BTreeMap<String, Vec<u8>>,
    charset: &'static Encoding,
}

impl Form {
    fn parse(body: &[u8]) -> Result<Form, ProviderError> {
        let mut pairs = Vec::new();
        for pair in body.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
            let (k, v) = split_pair(pair);
            pairs.push((field_name(form_unescape(k))?, form_unescape(v)));
        }
        let charset = match pairs.iter().find(|(k, _)| k == "charset") {
            Some((_, label)) => charset(label)?,
            None => UTF_8,
        };
        let mut raw = BTreeMap::new();
        for (key, value) in pairs {
            // Alipay signs the pairs joined by `&` with nothing escaped, so a value holding
            // `&name=` signs the same bytes as two fields: a captured notification could be
            // re-cut to hide a field (a refund) or change one. Refused: no field payhook has
            // seen Alipay send carries that (`passback_params` arrives URL-encoded).
            if holds_a_field(&value) {
                return Err(ProviderError::Malformed("form: a value holds another field".into()));
            }
            // A repeated key would make "the" value ambiguous between signature and use.
            if raw.insert(key, value).is_some() {
                return Err(ProviderError::Malformed("form: duplicate field".into()));
            }
        }
        Ok(Form { raw, charset })
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in self.raw.iter().filter(|(k, _)| !is_unsigned(k)) {
            if !out.is_empty() {
                out.push(b'&');
            }
            out.extend_from_slice(k.as_bytes());
            out.push(b'=');
            out.extend_from_slice(v);
        }
        out
    }

    fn decode(self) -> Result<BTreeMap<String, String>, ProviderError> {
        self.raw.into_iter().map(|(k, v)| Ok((k, decode_text(self.charset, &v)?))).collect()
    }
}

/// The `alipay.trade.query` answer, its response object kept as the raw text Alipay signed.
#[derive(Deserialize)]
struct QueryEnvelope<'a> {
    #[serde(borrow)]
    alipay_trade_query_response: &'a RawValue,
    sign: Option<String>,
}

fn split_pair(pair: &[u8]) -> (&[u8], &[u8]) {
    match pair.iter().position(|&b| b == b'=') {
        Some(i) => (&pair[..i], &pair[i + 1..]),
        None => (pair, &[]),
    }
}

/// A decoded field name. Alipay's are ASCII identifiers; anything else (`=` or `&` above all,
/// which would move the boundaries of the signed string) is refused.
fn field_name(decoded: Vec<u8>) -> Result<String, ProviderError> {
    if decoded.is_empty() || !decoded.iter().all(|&b| is_name_byte(b)) {
        return Err(ProviderError::Malformed("form: field name is not an identifier".into()));
    }
    Ok(String::from_utf8(decoded).expect("ASCII"))
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Whether `value` contains `&name=`. The bytes `&` and `=` never occur inside a GBK
/// character, so this holds for both charsets.
fn holds_a_field(value: &[u8]) -> bool {
    value.split(|&b| b == b'&').skip(1).any(|rest| {
        let name = rest.iter().take_while(|&&b| is_name_byte(b)).count();
        name > 0 && rest.get(name) == Some(&b'=')
    })
}

/// The encoding a `charset` field names.
fn charset(label: &[u8]) -> Result<&'static Encoding, ProviderError> {
    // WHATWG labels: `utf-8`/`utf8` → UTF-8, `gbk`/`gb2312` → GBK; Alipay sends nothing else.
    match Encoding::for_label(label) {
        Some(enc) if enc == UTF_8 || enc == GBK => Ok(enc),
        _ => Err(ProviderError::Malformed("form: unsupported charset".into())),
    }
}

/// `application/x-www-form-urlencoded` unescaping: `+` is a space, `%XX` a byte.
fn form_unescape(raw: &[u8]) -> Vec<u8> {
    let spaced: Vec<u8> = raw.iter().map(|&b| if b == b'+' { b' ' } else { b }).collect();
    percent_encoding::percent_decode(&spaced).collect()
}

fn decode_text(charset: &'static Encoding, bytes: &[u8]) -> Result<String, ProviderError> {
    charset
        .decode_without_bom_handling_and_without_replacement(bytes)
        .map(Cow::into_owned)
        .ok_or_else(|| ProviderError::Malformed("form: text not in the declared charset".into()))
}

impl Provider for Alipay {
    fn kind(&self) -> &'static str {
        "alipay"
    }

    fn merchant(&self) -> (&'static str, &str) {
        ("alipay", &self.app_id)
    }

    fn can_query(&self) -> bool {
        self.query.is_some()
    }

    fn certificates(&self) -> Vec<&Certificate> {
        self.public_key.certificate().into_iter().collect()
    }

    fn verify(&self, inbound: &Inbound) -> Result<Verified, ProviderError> {
        let form = Form::parse(inbound.body)?;
        self.verify_signature(&form, inbound.now)?;
        self.notification(form.decode()?)
    }

    fn order_query(&self, out_trade_no: &str, now: i64) -> Option<QueryRequest<'_>> {
        let query = self.query.as_ref()?;
        let beijing = chrono::FixedOffset::east_opt(8 * 3600).expect("UTC+8 is a valid offset");
        // `now` comes from the system clock, always within chrono's range.
        let timestamp = chrono::DateTime::from_timestamp(now, 0).unwrap_or_default().with_timezone(&beijing);
        let mut params: BTreeMap<String, String> = [
            ("app_id", self.app_id.as_str()),
            ("method", "alipay.trade.query"),
            ("format", "JSON"),
            ("charset", "utf-8"),
            ("sign_type", "RSA2"),
            ("version", "1.0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        params.insert("timestamp".into(), timestamp.format(BEIJING_FORMAT).to_string());
        params.insert("biz_content".into(), serde_json::json!({ "out_trade_no": out_trade_no }).to_string());
        let signature = query.key.sign_sha256(request_signing_string(&params).as_bytes());
        params.insert("sign".into(), B64.encode(signature));
        let body = params
            .iter()
            .map(|(k, v)| format!("{k}={}", utf8_percent_encode(v, NON_ALPHANUMERIC)))
            .collect::<Vec<_>>()
            .join("&");
        Some(QueryRequest {
            endpoint: &query.gateway,
            method: "POST",
            path: query.gateway.path().to_string(),
            headers: vec![("Content-Type".into(), "application/x-www-form-urlencoded;charset=utf-8".into())],
            body: Bytes::from(body),
        })
    }

    fn parse_order_query(&self, out_trade_no: &str, reply: &HttpReply, now: i64) -> Result<QueryOutcome, ProviderError> {
        if reply.status != 200 {
            return Err(ProviderError::Malformed(format!("query status {}", reply.status)));
        }
        let envelope: QueryEnvelope =
            serde_json::from_slice(&reply.body).map_err(|_| ProviderError::Malformed("query reply is not an alipay_trade_query_response".into()))?;
        let signature = envelope.sign.and_then(|s| B64.decode(s).ok()).ok_or(ProviderError::BadSignature)?;
        // Alipay signs the response object's text exactly as sent: re-serialising would change it.
        let signed = envelope.alipay_trade_query_response.get();
        super::verify_sha256_at(&self.public_key, signed.as_bytes(), &signature, now)?;
        let response: Map<String, Value> =
            serde_json::from_str(signed).map_err(|_| ProviderError::Malformed("query response is not an object".into()))?;
        let text = |name: &str| response.get(name).and_then(Value::as_str).unwrap_or_default().to_string();
        match (text("code").as_str(), text("sub_code").as_str()) {
            ("10000", _) => {}
            ("40004", "ACQ.TRADE_NOT_EXIST") => return Ok(QueryOutcome::NotPaid { trade_state: "TRADE_NOT_EXIST".into() }),
            _ => return Err(ProviderError::Malformed("query code is not 10000".into())),
        }
        if text("out_trade_no") != out_trade_no {
            return Err(ProviderError::Malformed("query answered another out_trade_no".into()));
        }
        match text("trade_status").as_str() {
            "TRADE_SUCCESS" | "TRADE_FINISHED" => {}
            "" => return Err(ProviderError::Malformed("query reply has no trade_status".into())),
            other => return Ok(QueryOutcome::NotPaid { trade_state: other.to_string() }),
        }
        let total_fee = yuan_to_fen(&text("total_amount"))?;
        let mut unparsed = Vec::new();
        let send_pay_date = text("send_pay_date");
        let pay_date = PaidOrder::lenient_date(beijing_millis(&send_pay_date, BEIJING_FORMAT), send_pay_date, "send_pay_date", &mut unparsed);
        let openid = Some(text("buyer_user_id")).filter(|id| !id.is_empty()).unwrap_or_else(|| text("buyer_open_id"));
        Ok(QueryOutcome::Paid(PaidOrder {
            provider: "alipay",
            out_trade_no: out_trade_no.to_string(),
            transaction_id: text("trade_no"),
            total_fee,
            // The answer names neither app nor seller; it answers the request this app signed.
            mch_id: self.seller_id.clone().unwrap_or_default(),
            appid: self.app_id.clone(),
            openid,
            pay_date,
            // passback_params only travels in notifications.
            attach: Value::String(String::new()),
            notify_info: NotifyInfo::from_object(envelope.alipay_trade_query_response),
            unparsed,
        }))
    }

    fn reply(&self, answer: Answer, _reason: &str) -> Reply {
        // Alipay reads only the body: exactly `success` stops the retries.
        let body: &'static [u8] = match answer {
            Answer::Success => b"success",
            Answer::Retry | Answer::Rejected => b"fail",
        };
        Reply { status: 200, content_type: Some("text/plain"), body: Bytes::from_static(body) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::RsaPrivateKey;
    use percent_encoding::{percent_encode, NON_ALPHANUMERIC};

    fn keys_dir() -> ConfigDir {
        ConfigDir::new(format!("{}/tests/fixtures/keys", env!("CARGO_MANIFEST_DIR")))
    }

    fn real() -> Value {
        let path = format!("{}/tests/fixtures/vectors/alipay-notify-real.json", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn real_fields(v: &Value) -> BTreeMap<String, String> {
        v["fields"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string())).collect()
    }

    fn provider(toml_text: &str) -> Result<Alipay, ConfigError> {
        Alipay::from_config("t", toml::from_str(toml_text).unwrap(), &keys_dir())
    }

    fn real_provider(v: &Value) -> Alipay {
        let spki = v["alipay_public_key_b64_spki"].as_str().unwrap();
        provider(&format!("app_id = \"2019073166072302\"\nseller_id = \"2088531891668739\"\nalipay_public_key = {spki:?}")).unwrap()
    }

    /// A form body with every value encoded in `charset`, as Alipay sends it; names are escaped
    /// too, so that a name holding `=` or `&` stays one name.
    fn form_body(fields: &BTreeMap<String, String>, charset: &'static Encoding) -> Vec<u8> {
        fields
            .iter()
            .map(|(k, v)| format!("{}={}", percent_encode(k.as_bytes(), NON_ALPHANUMERIC), percent_encode(&charset.encode(v).0, NON_ALPHANUMERIC)))
            .collect::<Vec<_>>()
            .join("&")
            .into_bytes()
    }

    fn verify(p: &Alipay, body: &[u8]) -> Result<Verified, ProviderError> {
        p.verify(&Inbound { headers: &http::HeaderMap::new(), body, now: 0 })
    }

    /// The test key pair of `alipay.*`: signs like Alipay, over the charset-encoded string.
    fn sign_with_test_key(fields: &mut BTreeMap<String, String>, charset: &'static Encoding) {
        sign_with(fields, charset, "alipay.key.pem");
    }

    fn sign_with(fields: &mut BTreeMap<String, String>, charset: &'static Encoding, key_file: &str) {
        let sig = test_key(key_file).sign_sha256(&charset.encode(&signing_string(fields)).0);
        fields.insert("sign".into(), B64.encode(sig));
    }

    fn test_key_provider() -> Alipay {
        provider("app_id = \"2021000000000001\"\nalipay_public_key_file = \"alipay.pub.pem\"").unwrap()
    }

    fn test_fields() -> BTreeMap<String, String> {
        [
            ("app_id", "2021000000000001"),
            ("charset", "utf-8"),
            ("gmt_payment", "2026-01-02 03:04:05"),
            ("notify_id", "n1"),
            ("out_trade_no", "o1"),
            ("seller_id", "2088000000000001"),
            ("sign_type", "RSA2"),
            ("total_amount", "1.00"),
            ("trade_no", "t1"),
            ("trade_status", "TRADE_SUCCESS"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn real_notification_verifies_and_normalises() {
        let v = real();
        let p = real_provider(&v);
        let fields = real_fields(&v);
        let Verified::Paid(order) = verify(&p, &form_body(&fields, UTF_8)).unwrap() else { panic!("not paid") };
        assert_eq!(order.provider, "alipay");
        assert_eq!(order.total_fee, 10);
        assert_eq!(order.out_trade_no, "20190815155618536-564-57");
        assert_eq!(order.transaction_id, "2019081522001468450512505578");
        assert_eq!((order.mch_id.as_str(), order.appid.as_str()), ("2088531891668739", "2019073166072302"));
        assert_eq!(order.openid, "2088102534368455");
        assert_eq!(order.pay_date, 1_565_855_784_000i64);
        assert_eq!(order.attach, Value::String(String::new()));
        let info = order.notify_info.to_map();
        assert_eq!(info["notify_id"], "2019081500222155624068450559358070");
        assert_eq!(info["subject"], "语雀空间 500人规模");
        assert!(!info.contains_key("sign") && !info.contains_key("sign_type"));
    }

    #[test]
    fn real_notification_signing_string_excludes_sign_type() {
        let v = real();
        let fields = real_fields(&v);
        let signed = signing_string(&fields);
        assert!(signed.starts_with("app_id=2019073166072302&auth_app_id="));
        assert!(signed.ends_with("&trade_status=TRADE_SUCCESS&version=1.0"));
        assert!(!signed.contains("sign_type=") && !signed.contains("sign="));
        // With sign_type kept, Alipay's signature does not verify.
        let with_type =
            fields.iter().filter(|(k, _)| k.as_str() != "sign").map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
        let key = RsaPublicKey::from_base64_spki(v["alipay_public_key_b64_spki"].as_str().unwrap()).unwrap();
        let sig = B64.decode(fields["sign"].as_str()).unwrap();
        assert!(key.verify_sha256(signed.as_bytes(), &sig));
        assert!(!key.verify_sha256(with_type.as_bytes(), &sig));
    }

    #[test]
    fn tampering_wrong_key_legacy_rsa_and_app_mismatch_fail() {
        let v = real();
        let p = real_provider(&v);
        let mut tampered = real_fields(&v);
        tampered.insert("total_amount".into(), "100.00".into());
        assert_eq!(verify(&p, &form_body(&tampered, UTF_8)).unwrap_err().reason(), "bad_signature");

        let spki = v["alipay_public_key_b64_spki"].as_str().unwrap();
        let wrong = provider("app_id = \"2019073166072302\"\nalipay_public_key_file = \"alipay.pub.pem\"").unwrap();
        assert_eq!(verify(&wrong, &form_body(&real_fields(&v), UTF_8)).unwrap_err().reason(), "bad_signature");

        let mut legacy = real_fields(&v);
        legacy.insert("sign_type".into(), "RSA".into());
        assert_eq!(verify(&p, &form_body(&legacy, UTF_8)).unwrap_err().reason(), "bad_signature");

        let other_app = provider(&format!("app_id = \"2019000000000000\"\nalipay_public_key = {spki:?}")).unwrap();
        assert_eq!(verify(&other_app, &form_body(&real_fields(&v), UTF_8)).unwrap_err().reason(), "merchant_mismatch");
        let other_seller =
            provider(&format!("app_id = \"2019073166072302\"\nseller_id = \"2088\"\nalipay_public_key = {spki:?}")).unwrap();
        assert_eq!(verify(&other_seller, &form_body(&real_fields(&v), UTF_8)).unwrap_err().reason(), "merchant_mismatch");
    }

    #[test]
    fn gbk_body_with_chinese_subject_verifies() {
        let mut fields = test_fields();
        fields.insert("charset".into(), "gbk".into());
        fields.insert("subject".into(), "测试商品 一号+1".into());
        sign_with_test_key(&mut fields, GBK);
        let body = form_body(&fields, GBK);
        // The body really is GBK: UTF-8 would percent-encode 测 as %E6%B5%8B.
        assert!(!String::from_utf8_lossy(&body).contains("%E6%B5%8B"));
        let Verified::Paid(order) = verify(&test_key_provider(), &body).unwrap() else { panic!("not paid") };
        assert_eq!(order.notify_info.to_map()["subject"], "测试商品 一号+1");
        assert_eq!(order.total_fee, 100);
    }

    #[test]
    fn form_decoding_handles_plus_escapes_and_duplicates() {
        let form = Form::parse(b"b=a+b%2Bc&a=&c&charset=utf-8").unwrap();
        assert_eq!(form.charset, UTF_8);
        let fields = form.decode().unwrap();
        assert_eq!((fields["a"].as_str(), fields["b"].as_str(), fields["c"].as_str()), ("", "a b+c", ""));
        assert_eq!(Form::parse(b"a=1&a=2").err().unwrap().reason(), "malformed");
        assert_eq!(Form::parse(b"a=1&charset=latin1").err().unwrap().reason(), "malformed");
        assert_eq!(Form::parse(b"a=1&charset=GB2312").unwrap().charset, GBK);
    }

    /// Alipay's signed string joins the pairs with nothing escaped, so a captured notification
    /// can be re-cut into other pairs that sign the same bytes. Each re-cut here would verify:
    /// it must be refused before the signature is trusted.
    #[test]
    fn forms_re_cut_to_sign_the_same_bytes_are_refused() {
        let p = test_key_provider();
        let mut refund = test_fields();
        refund.insert("refund_fee".into(), "0.50".into());
        refund.insert("gmt_refund".into(), "2026-01-03 00:00:00.000".into());
        sign_with_test_key(&mut refund, UTF_8);
        // The refund's two fields hidden inside the fields sorted before them.
        let mut hidden = refund.clone();
        let gmt_refund = hidden.remove("gmt_refund").unwrap();
        let refund_fee = hidden.remove("refund_fee").unwrap();
        *hidden.get_mut("gmt_payment").unwrap() += &format!("&gmt_refund={gmt_refund}");
        *hidden.get_mut("out_trade_no").unwrap() += &format!("&refund_fee={refund_fee}");
        assert_eq!(signing_string(&hidden), signing_string(&refund));
        let err = verify(&p, &form_body(&hidden, UTF_8)).unwrap_err();
        assert_eq!((err.reason(), err.to_string().contains("a value holds another field")), ("malformed", true), "{err}");

        // A buyer-chosen subject that reads like a field, re-cut through a field name holding `=`
        // and `&`: the genuine form and the re-cut one are both refused.
        let mut genuine = test_fields();
        genuine.insert("subject".into(), "x&total_amount=999".into());
        sign_with_test_key(&mut genuine, UTF_8);
        assert_eq!(verify(&p, &form_body(&genuine, UTF_8)).unwrap_err().reason(), "malformed");
        let mut re_cut = genuine.clone();
        re_cut.insert("subject".into(), "x".into());
        let paid = re_cut.insert("total_amount".into(), "999".into()).unwrap();
        let trade_no = re_cut.remove("trade_no").unwrap();
        re_cut.insert(format!("total_amount={paid}&trade_no"), trade_no);
        assert_eq!(signing_string(&re_cut), signing_string(&genuine));
        let err = verify(&p, &form_body(&re_cut, UTF_8)).unwrap_err();
        assert_eq!((err.reason(), err.to_string().contains("field name is not an identifier")), ("malformed", true), "{err}");

        // Text that merely contains `&` is no field and still verifies.
        let mut ampersand = test_fields();
        ampersand.insert("subject".into(), "Tom & Jerry &=".into());
        sign_with_test_key(&mut ampersand, UTF_8);
        assert!(matches!(verify(&p, &form_body(&ampersand, UTF_8)), Ok(Verified::Paid(_))));
    }

    /// Field names are read decoded, `charset` too: an escaped name cannot make payhook read a
    /// GBK body as UTF-8.
    #[test]
    fn an_escaped_charset_name_still_names_the_charset() {
        let mut fields = test_fields();
        fields.insert("charset".into(), "gbk".into());
        fields.insert("subject".into(), "测试商品".into());
        sign_with_test_key(&mut fields, GBK);
        let body = String::from_utf8(form_body(&fields, GBK)).unwrap().replace("charset=gbk", "%63harset=gbk");
        let Verified::Paid(order) = verify(&test_key_provider(), body.as_bytes()).unwrap() else { panic!("not paid") };
        assert_eq!(order.notify_info.to_map()["subject"], "测试商品");
    }

    #[test]
    fn passback_params_are_decoded_once_more() {
        let mut fields = test_fields();
        // After form decoding Alipay's value is still URL-encoded once.
        fields.insert("passback_params".into(), "%7B%22a%22%3A1%7D".into());
        sign_with_test_key(&mut fields, UTF_8);
        let body = form_body(&fields, UTF_8);
        let Verified::Paid(order) = verify(&test_key_provider(), &body).unwrap() else { panic!("not paid") };
        assert_eq!(order.attach, serde_json::json!({ "a": 1 }));
    }

    #[test]
    fn refunds_and_other_statuses_are_not_payments() {
        let mut refund = test_fields();
        refund.insert("refund_fee".into(), "0.50".into());
        refund.insert("gmt_refund".into(), "2026-01-03 00:00:00.000".into());
        sign_with_test_key(&mut refund, UTF_8);
        let verified = verify(&test_key_provider(), &form_body(&refund, UTF_8)).unwrap();
        assert!(matches!(verified, Verified::NotPayment { ref what } if what == "refund"));

        let mut closed = test_fields();
        closed.insert("trade_status".into(), "TRADE_CLOSED".into());
        sign_with_test_key(&mut closed, UTF_8);
        let verified = verify(&test_key_provider(), &form_body(&closed, UTF_8)).unwrap();
        assert!(matches!(verified, Verified::NotPayment { ref what } if what == "trade_status TRADE_CLOSED"));
    }

    /// Regression (found with fuzz/fuzz_targets/alipay_signed.rs): a signed date within 8 hours
    /// of chrono's earliest date made the Beijing → UTC shift panic instead of failing.
    #[test]
    fn dates_that_do_not_parse_are_forwarded_raw_not_refused_nor_a_panic() {
        // A signed, paid notification must not be refused over a field that decides no money.
        for date in ["-262143-01-01 00:00:00", "-262143-01-01 07:59:59", "2026-13-45 99:99:99", ""] {
            let mut fields = test_fields();
            fields.insert("gmt_payment".into(), date.into());
            sign_with_test_key(&mut fields, UTF_8);
            let Verified::Paid(order) = verify(&test_key_provider(), &form_body(&fields, UTF_8)).unwrap() else { panic!() };
            assert_eq!((order.pay_date, order.unparsed), (Value::String(date.into()), vec!["gmt_payment"]), "{date}");
            let response = PAID.replace("2026-11-27 13:29:35", date);
            let QueryOutcome::Paid(order) = query(&query_provider(), &query_reply(&response, "alipay.key.pem")).unwrap() else { panic!() };
            assert_eq!((order.pay_date, order.unparsed), (Value::String(date.into()), vec!["send_pay_date"]), "{date}");
        }
        let mut earliest = test_fields();
        earliest.insert("gmt_payment".into(), "-262143-01-01 08:00:00".into());
        sign_with_test_key(&mut earliest, UTF_8);
        let Verified::Paid(order) = verify(&test_key_provider(), &form_body(&earliest, UTF_8)).unwrap() else { panic!() };
        assert!(order.unparsed.is_empty() && order.pay_date.is_i64());
    }

    #[test]
    fn passback_params_that_are_not_utf8_are_forwarded_raw() {
        let mut fields = test_fields();
        fields.insert("passback_params".into(), "%FF%FE".into());
        sign_with_test_key(&mut fields, UTF_8);
        let Verified::Paid(order) = verify(&test_key_provider(), &form_body(&fields, UTF_8)).unwrap() else { panic!() };
        assert_eq!((order.attach, order.unparsed), (Value::String("%FF%FE".into()), vec!["passback_params"]));
    }

    #[test]
    fn yuan_amounts_convert_exactly() {
        for (yuan, fen) in [("12.34", 1234), ("0.10", 10), ("5", 500), ("5.5", 550), ("0", 0), ("0.01", 1)] {
            assert_eq!(yuan_to_fen(yuan).unwrap(), fen, "{yuan}");
        }
        for bad in ["", "1.234", "-1", "+1", "1,00", "abc", ".5", "5.", "1.2.3", " 1", "1e2", "99999999999999999999"] {
            assert_eq!(yuan_to_fen(bad).unwrap_err().reason(), "bad_amount", "{bad:?}");
        }
        let mut fields = test_fields();
        fields.insert("total_amount".into(), "1.001".into());
        sign_with_test_key(&mut fields, UTF_8);
        assert_eq!(verify(&test_key_provider(), &form_body(&fields, UTF_8)).unwrap_err().reason(), "bad_amount");
    }

    #[test]
    fn certificate_mode_checks_the_chain_at_load() {
        let leaf = "app_id = \"1\"\nalipay_cert_file = \"alipay_leaf.cert.pem\"\n";
        provider(&format!("{leaf}alipay_root_cert_file = \"alipay_root.cert.pem\"")).unwrap();
        let err = provider(&format!("{leaf}alipay_root_cert_file = \"wx_platform_b.cert.pem\"")).err().unwrap();
        assert!(err.to_string().contains("alipay_cert_file"), "{err}");
        // A root bundle that also holds the chain-irrelevant certificates still works.
        let bundle = tempfile::tempdir().unwrap();
        let mut roots = std::fs::read(keys_dir().resolve("wx_platform_b.cert.pem".as_ref())).unwrap();
        roots.extend(std::fs::read(keys_dir().resolve("alipay_root.cert.pem".as_ref())).unwrap());
        std::fs::write(bundle.path().join("roots.pem"), roots).unwrap();
        std::fs::copy(keys_dir().resolve("alipay_leaf.cert.pem".as_ref()), bundle.path().join("leaf.pem")).unwrap();
        let cfg = toml::from_str("app_id = \"1\"\nalipay_cert_file = \"leaf.pem\"\nalipay_root_cert_file = \"roots.pem\"").unwrap();
        Alipay::from_config("t", cfg, &ConfigDir::new(bundle.path())).unwrap();
    }

    #[test]
    fn certificate_mode_verifies_only_within_the_leafs_validity() {
        let p = provider(
            "app_id = \"2021000000000001\"\nalipay_cert_file = \"alipay_leaf.cert.pem\"\nalipay_root_cert_file = \"alipay_root.cert.pem\"",
        )
        .unwrap();
        let mut fields = test_fields();
        sign_with(&mut fields, UTF_8, "alipay_leaf.key.pem");
        let body = form_body(&fields, UTF_8);
        let verify_at = |now: i64| p.verify(&Inbound { headers: &http::HeaderMap::new(), body: &body, now });
        // The leaf's dates, 2026-11-27T05:09:22Z and 2126-11-03T05:09:22Z (openssl x509 -dates).
        let (not_before, not_after) = (1_795_756_162, 4_949_356_162);
        assert!(matches!(verify_at(not_before), Ok(Verified::Paid(_))));
        assert!(matches!(verify_at(not_after), Ok(Verified::Paid(_))));
        for now in [not_before - 1, not_after + 1] {
            assert!(matches!(verify_at(now), Err(ProviderError::CertificateExpired(serial)) if serial == "02"), "{now}");
        }
        let certificates: Vec<(&str, i64)> = p.certificates().iter().map(|c| (c.serial_hex.as_str(), c.not_after)).collect();
        assert_eq!(certificates, [("02", not_after)]);
    }

    #[test]
    fn exactly_one_key_mode() {
        assert!(provider("app_id = \"1\"").is_err());
        assert!(provider("app_id = \"1\"\nalipay_public_key_file = \"alipay.pub.pem\"\nalipay_cert_file = \"alipay_leaf.cert.pem\"").is_err());
        assert!(provider("app_id = \"1\"\nalipay_cert_file = \"alipay_leaf.cert.pem\"").is_err());
        let pem = std::fs::read_to_string(keys_dir().resolve("alipay.pub.pem".as_ref())).unwrap();
        provider(&format!("app_id = \"1\"\nalipay_public_key = {pem:?}")).unwrap();
    }

    /// 2026-11-27 13:29:35 Beijing time.
    const NOW: i64 = 1_795_757_375;

    fn query_provider() -> Alipay {
        provider(
            "app_id = \"2021000000000001\"\nseller_id = \"2088000000000001\"\nalipay_public_key_file = \"alipay.pub.pem\"\n\
             api_base = \"http://127.0.0.1:9/gateway.do\"\napp_private_key_file = \"alipay_app.key.pem\"",
        )
        .unwrap()
    }

    fn test_key(file: &str) -> RsaPrivateKey {
        RsaPrivateKey::from_pem(&std::fs::read(keys_dir().resolve(file.as_ref())).unwrap()).unwrap()
    }

    /// An `alipay.trade.query` answer whose response object is `response`, byte for byte,
    /// signed over exactly that text with the key in `key_file`.
    fn query_reply(response: &str, key_file: &str) -> HttpReply {
        let sign = B64.encode(test_key(key_file).sign_sha256(response.as_bytes()));
        let body = format!(r#"{{"alipay_trade_query_response":{response},"sign":"{sign}"}}"#);
        HttpReply { status: 200, headers: http::HeaderMap::new(), body: Bytes::from(body) }
    }

    /// A paid answer as Alipay formats it; the `\u` escapes and the space after a colon would not
    /// survive re-serialisation, so only verification over the raw text passes.
    const PAID: &str = r#"{"code":"10000","msg":"Success","buyer_logon_id":"tes***@sandbox.com","buyer_pay_amount":"88.88","buyer_user_id":"2088102177846880","invoice_amount":"88.88","out_trade_no":"o1","point_amount":"0.00","receipt_amount":"88.88","send_pay_date":"2026-11-27 13:29:35","subject":"\u5546\u54c1", "total_amount":"88.88","trade_no":"2026112722001446880500001234","trade_status":"TRADE_SUCCESS"}"#;

    fn query(p: &Alipay, reply: &HttpReply) -> Result<QueryOutcome, ProviderError> {
        p.parse_order_query("o1", reply, NOW)
    }

    #[test]
    fn order_query_is_a_signed_form_post_to_the_gateway() {
        let p = query_provider();
        let req = p.order_query("o+1&=单\"", NOW).unwrap();
        assert_eq!((req.endpoint.url(), req.method, req.path.as_str()), ("http://127.0.0.1:9/gateway.do", "POST", "/gateway.do"));
        assert_eq!(req.headers, [("Content-Type".to_string(), "application/x-www-form-urlencoded;charset=utf-8".to_string())]);
        let body = std::str::from_utf8(&req.body).unwrap();
        let params: BTreeMap<String, String> = body
            .split('&')
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap();
                (k.to_string(), percent_encoding::percent_decode_str(v).decode_utf8().unwrap().into_owned())
            })
            .collect();
        let expected: BTreeMap<String, String> = [
            ("app_id", "2021000000000001"),
            ("biz_content", r#"{"out_trade_no":"o+1&=单\""}"#),
            ("charset", "utf-8"),
            ("format", "JSON"),
            ("method", "alipay.trade.query"),
            ("sign_type", "RSA2"),
            ("timestamp", "2026-11-27 13:29:35"),
            ("version", "1.0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut unsigned = params.clone();
        let sign = B64.decode(unsigned.remove("sign").unwrap()).unwrap();
        assert_eq!(unsigned, expected);
        // The app's public key verifies the sorted pairs with sign_type included.
        let app = RsaPublicKey::from_pem(&std::fs::read(keys_dir().resolve("alipay_app.pub.pem".as_ref())).unwrap()).unwrap();
        let signed = "app_id=2021000000000001&biz_content={\"out_trade_no\":\"o+1&=单\\\"\"}&charset=utf-8&format=JSON\
                      &method=alipay.trade.query&sign_type=RSA2&timestamp=2026-11-27 13:29:35&version=1.0";
        assert!(app.verify_sha256(signed.as_bytes(), &sign));
        assert!(!app.verify_sha256(signed.replace("&sign_type=RSA2", "").as_bytes(), &sign));
    }

    #[test]
    fn paid_query_reply_verifies_over_the_raw_text_and_normalises() {
        let p = query_provider();
        let QueryOutcome::Paid(order) = query(&p, &query_reply(PAID, "alipay.key.pem")).unwrap() else { panic!("not paid") };
        assert_eq!(
            order,
            PaidOrder {
                provider: "alipay",
                out_trade_no: "o1".into(),
                transaction_id: "2026112722001446880500001234".into(),
                total_fee: 8888,
                mch_id: "2088000000000001".into(),
                appid: "2021000000000001".into(),
                openid: "2088102177846880".into(),
                pay_date: (NOW * 1000).into(),
                attach: Value::String(String::new()),
                // The signed response object, byte for byte.
                notify_info: NotifyInfo::from_object(serde_json::from_str(PAID).unwrap()),
                unparsed: Vec::new(),
            }
        );
        assert_eq!(order.notify_info.json(), PAID);
        let finished = PAID.replace("TRADE_SUCCESS", "TRADE_FINISHED");
        assert!(matches!(query(&p, &query_reply(&finished, "alipay.key.pem")).unwrap(), QueryOutcome::Paid(_)));
    }

    #[test]
    fn unpaid_and_unknown_orders_are_not_paid() {
        let p = query_provider();
        let waiting = r#"{"code":"10000","msg":"Success","out_trade_no":"o1","total_amount":"88.88","trade_no":"2026112722001446880500001234","trade_status":"WAIT_BUYER_PAY"}"#;
        let outcome = query(&p, &query_reply(waiting, "alipay.key.pem")).unwrap();
        assert!(matches!(outcome, QueryOutcome::NotPaid { ref trade_state } if trade_state == "WAIT_BUYER_PAY"), "{outcome:?}");
        let missing = r#"{"code":"40004","msg":"Business Failed","sub_code":"ACQ.TRADE_NOT_EXIST","sub_msg":"交易不存在","out_trade_no":"o1"}"#;
        let outcome = query(&p, &query_reply(missing, "alipay.key.pem")).unwrap();
        assert!(matches!(outcome, QueryOutcome::NotPaid { ref trade_state } if trade_state == "TRADE_NOT_EXIST"), "{outcome:?}");
    }

    #[test]
    fn other_answers_are_errors_without_body_text() {
        let p = query_provider();
        for response in [
            r#"{"code":"40004","msg":"Business Failed","sub_code":"ACQ.SYSTEM_ERROR","sub_msg":"secret-ish"}"#,
            r#"{"code":"20000","msg":"Service Currently Unavailable","sub_code":"isp.unknow-error","sub_msg":"secret-ish"}"#,
            r#"{"code":"10000","msg":"Success","out_trade_no":"o1"}"#,
            r#""secret-ish""#,
        ] {
            let err = query(&p, &query_reply(response, "alipay.key.pem")).unwrap_err();
            assert_eq!(err.reason(), "malformed", "{response}");
            assert!(!err.to_string().contains("secret-ish"), "{err}");
        }
        for (status, body) in [(200, "secret-ish"), (200, r#"{"error_response":{"code":"40002"},"sign":"x"}"#), (502, "secret-ish")] {
            let reply = HttpReply { status, headers: http::HeaderMap::new(), body: Bytes::from(body) };
            let err = query(&p, &reply).unwrap_err();
            assert_eq!(err.reason(), "malformed");
            assert!(!err.to_string().contains("secret-ish") && !err.to_string().contains("40002"), "{err}");
        }
        let bad_amount = PAID.replace(r#""total_amount":"88.88""#, r#""total_amount":"88.888""#);
        assert_eq!(query(&p, &query_reply(&bad_amount, "alipay.key.pem")).unwrap_err().reason(), "bad_amount");
    }

    #[test]
    fn query_replies_must_verify_and_match_the_order() {
        let p = query_provider();
        let good = query_reply(PAID, "alipay.key.pem");
        let mut tampered = good.body.to_vec();
        let at = String::from_utf8_lossy(&tampered).find("88.88").unwrap();
        tampered[at] = b'9';
        let reply = HttpReply { status: 200, headers: http::HeaderMap::new(), body: Bytes::from(tampered) };
        assert_eq!(query(&p, &reply).unwrap_err().reason(), "bad_signature");
        // Re-serialised text is not what Alipay signed.
        let reserialised: Value = serde_json::from_str(PAID).unwrap();
        let mut moved = query_reply(PAID, "alipay.key.pem");
        let body: Value = serde_json::from_slice(&moved.body).unwrap();
        moved.body = Bytes::from(format!(r#"{{"alipay_trade_query_response":{reserialised},"sign":{}}}"#, body["sign"]));
        assert_eq!(query(&p, &moved).unwrap_err().reason(), "bad_signature");
        // Signed with the app's key instead of Alipay's.
        assert_eq!(query(&p, &query_reply(PAID, "alipay_app.key.pem")).unwrap_err().reason(), "bad_signature");
        let unsigned = HttpReply { status: 200, headers: http::HeaderMap::new(), body: Bytes::from(format!(r#"{{"alipay_trade_query_response":{PAID}}}"#)) };
        assert_eq!(query(&p, &unsigned).unwrap_err().reason(), "bad_signature");
        let other = PAID.replace(r#""out_trade_no":"o1""#, r#""out_trade_no":"o2""#);
        assert_eq!(query(&p, &query_reply(&other, "alipay.key.pem")).unwrap_err().reason(), "malformed");
    }

    #[test]
    fn order_query_needs_its_config() {
        assert!(test_key_provider().order_query("o1", NOW).is_none());
        let base = "app_id = \"1\"\nalipay_public_key_file = \"alipay.pub.pem\"\n";
        assert!(provider(&format!("{base}api_base = \"http://127.0.0.1:9/gateway.do\"")).is_err());
        assert!(provider(&format!("{base}app_private_key_file = \"alipay_app.key.pem\"")).is_err());
        assert!(provider(&format!("{base}api_base = \"http://127.0.0.1:9/gateway.do\"\napp_private_key_file = \"alipay_app.pub.pem\"")).is_err());
        let cert_mode = "app_id = \"1\"\nalipay_cert_file = \"alipay_leaf.cert.pem\"\nalipay_root_cert_file = \"alipay_root.cert.pem\"\n";
        let query = "api_base = \"http://127.0.0.1:9/gateway.do\"\napp_private_key_file = \"alipay_app.key.pem\"";
        assert!(provider(&format!("{cert_mode}{query}")).is_err());
        assert!(provider(&format!("{base}{query}")).unwrap().order_query("o1", NOW).is_some());
    }

    #[test]
    fn replies_are_exact() {
        let p = test_key_provider();
        assert_eq!(
            p.reply(Answer::Success, "ok"),
            Reply { status: 200, content_type: Some("text/plain"), body: Bytes::from_static(b"success") }
        );
        for answer in [Answer::Retry, Answer::Rejected] {
            assert_eq!(
                p.reply(answer, "bad_signature"),
                Reply { status: 200, content_type: Some("text/plain"), body: Bytes::from_static(b"fail") }
            );
        }
    }
}
