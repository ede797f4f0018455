//! WeChat Pay API v2: flat `<xml>` notifications signed with MD5 or HMAC-SHA256 over the sorted
//! non-empty fields and the APIv2 key. v2 is body-driven: every reply is HTTP 200 and the
//! `return_code` inside says whether WeChat should retry.

use std::collections::BTreeMap;

use bytes::Bytes;
use md5::{Digest, Md5};
use quick_xml::events::Event;
use quick_xml::Reader;
use ring::hmac;
use serde::Deserialize;

use super::{NotifyInfo, api_base, api_path, parse_attach, Answer, Inbound, PaidOrder, Provider, ProviderError, QueryOutcome, QueryRequest, Reply, Verified};
use crate::config::ConfigError;
use crate::forward::{Backend, HttpReply};
use crate::keys::random_hex;
use crate::secret::{ct_eq, Secret};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WechatV2Config {
    mch_id: String,
    appid: Option<String>,
    api_key: Secret,
    api_base: Option<String>,
}

pub struct WechatV2 {
    mch_id: String,
    appid: Option<String>,
    api_key: Secret,
    /// The order-query host; set only together with `appid`, which `orderquery` sends.
    api: Option<Backend>,
}

/// The two v2 signature algorithms (`sign_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignKind {
    Md5,
    HmacSha256,
}

impl WechatV2 {
    pub fn from_config(key: &str, cfg: WechatV2Config) -> Result<Self, ConfigError> {
        // The merchant console only issues 32-character keys; anything else is a paste error,
        // and an empty key would let anyone sign.
        if cfg.api_key.expose().len() != 32 {
            return Err(ConfigError::invalid(format!("{key}.api_key"), "must be exactly 32 characters"));
        }
        if cfg.mch_id.is_empty() {
            return Err(ConfigError::invalid(format!("{key}.mch_id"), "must not be empty"));
        }
        let api = cfg.api_base.as_deref().map(|url| api_base(key, url)).transpose()?;
        // orderquery must name the app; an api_base that could never be used is a typo.
        if api.is_some() && cfg.appid.is_none() {
            return Err(ConfigError::invalid(format!("{key}.api_base"), "needs appid (orderquery sends it)"));
        }
        Ok(WechatV2 { mch_id: cfg.mch_id, appid: cfg.appid, api_key: cfg.api_key, api })
    }

    /// Checks `sign` over `fields`; shared with order-query responses, which are signed the same way.
    pub fn verify_signature(&self, fields: &BTreeMap<String, String>) -> Result<(), ProviderError> {
        let received = fields.get("sign").ok_or(ProviderError::BadSignature)?.to_ascii_uppercase();
        let kind = match fields.get("sign_type").map(String::as_str) {
            Some("MD5") => SignKind::Md5,
            Some("HMAC-SHA256") => SignKind::HmacSha256,
            // The field is optional and notifications have been seen MD5-signed for HMAC orders
            // and vice versa, so the signature's own length decides when the field is missing.
            None | Some("") if is_hex(&received, 64) => SignKind::HmacSha256,
            None | Some("") => SignKind::Md5,
            Some(_) => return Err(ProviderError::BadSignature),
        };
        let expected = sign(fields, self.api_key.expose(), kind);
        if ct_eq(expected.as_bytes(), received.as_bytes()) {
            Ok(())
        } else {
            Err(ProviderError::BadSignature)
        }
    }

    /// Signed fields name this account's merchant (and app, when configured).
    fn check_merchant(&self, fields: &BTreeMap<String, String>) -> Result<(), ProviderError> {
        if fields.get("mch_id") != Some(&self.mch_id) {
            return Err(ProviderError::MerchantMismatch);
        }
        match &self.appid {
            Some(appid) if fields.get("appid") != Some(appid) => Err(ProviderError::MerchantMismatch),
            _ => Ok(()),
        }
    }

    /// Normalises signed notification (or paid order-query) fields.
    fn notification(&self, fields: BTreeMap<String, String>) -> Result<Verified, ProviderError> {
        let text = |name: &str| fields.get(name).cloned().unwrap_or_default();
        self.check_merchant(&fields)?;
        for code in ["return_code", "result_code"] {
            let value = text(code);
            if value != "SUCCESS" {
                return Ok(Verified::NotPayment { what: format!("{code} {value}") });
            }
        }
        let out_trade_no = text("out_trade_no");
        if out_trade_no.is_empty() {
            return Err(ProviderError::Malformed("no out_trade_no".into()));
        }
        let total_fee = fields
            .get("total_fee")
            .filter(|fee| is_digits(fee))
            .and_then(|fee| fee.parse().ok())
            .ok_or_else(|| ProviderError::BadAmount("total_fee".into()))?;
        let mut unparsed = Vec::new();
        let time_end = text("time_end");
        let pay_date = PaidOrder::lenient_date(time_end_millis(&time_end), time_end, "time_end", &mut unparsed);
        Ok(Verified::Paid(PaidOrder {
            provider: "wxpay",
            transaction_id: text("transaction_id"),
            total_fee,
            mch_id: text("mch_id"),
            appid: text("appid"),
            openid: text("openid"),
            pay_date,
            attach: parse_attach(&text("attach")),
            out_trade_no,
            notify_info: NotifyInfo::from_fields(fields.iter().filter(|(k, _)| *k != "sign")),
            unparsed,
        }))
    }
}

/// The v2 signature: `k=v&…` over the sorted non-empty fields except `sign`, then `&key=<api_key>`,
/// as uppercase hex. Unknown fields are signed too (WeChat adds fields without notice).
pub fn sign(fields: &BTreeMap<String, String>, api_key: &str, kind: SignKind) -> String {
    let mut text = String::new();
    for (k, v) in fields.iter().filter(|(k, v)| k.as_str() != "sign" && !v.is_empty()) {
        text.push_str(k);
        text.push('=');
        text.push_str(v);
        text.push('&');
    }
    text.push_str("key=");
    text.push_str(api_key);
    match kind {
        SignKind::Md5 => hex::encode_upper(Md5::digest(text.as_bytes())),
        SignKind::HmacSha256 => {
            let key = hmac::Key::new(hmac::HMAC_SHA256, api_key.as_bytes());
            hex::encode_upper(hmac::sign(&key, text.as_bytes()))
        }
    }
}

/// A flat `<xml>` document with every value in CDATA (a `]]>` inside a value is split across
/// two sections, the only way to carry it in CDATA).
pub fn to_xml(fields: &BTreeMap<String, String>) -> String {
    let mut xml = String::from("<xml>");
    for (k, v) in fields {
        let v = v.replace("]]>", "]]]]><![CDATA[>");
        xml.push_str(&format!("<{k}><![CDATA[{v}]]></{k}>"));
    }
    xml.push_str("</xml>");
    xml
}

/// Where the parser is in the one shape v2 uses: `<xml>` holding flat text elements.
#[derive(Clone, Copy)]
enum Place {
    Before,
    Root,
    Field,
    After,
}

/// Parses a flat `<xml>` document. A DTD is refused outright, never expanded (XXE), and errors
/// carry fixed messages only: the body is attacker-controlled and errors are logged.
pub fn parse_xml(body: &[u8]) -> Result<BTreeMap<String, String>, ProviderError> {
    let malformed = |what: &str| ProviderError::Malformed(format!("XML: {what}"));
    let text = std::str::from_utf8(body).map_err(|_| malformed("not UTF-8"))?;
    let mut reader = Reader::from_str(text);
    let mut fields = BTreeMap::new();
    let (mut name, mut value) = (String::new(), String::new());
    let mut place = Place::Before;
    loop {
        let event = reader.read_event().map_err(|_| {
            // An entity declaration outside a DOCTYPE is a syntax error to the reader; label it
            // as the XXE attempt it is rather than as noise.
            if body.windows(8).any(|w| w == b"<!ENTITY") {
                ProviderError::XmlDoctype
            } else {
                malformed("not well-formed")
            }
        })?;
        place = match (place, event) {
            (_, Event::DocType(_)) => return Err(ProviderError::XmlDoctype),
            (_, Event::Decl(_) | Event::Comment(_) | Event::PI(_)) => place,
            (Place::Before, Event::Start(e)) if e.name().as_ref() == b"xml" => Place::Root,
            (Place::Before, Event::Empty(e)) if e.name().as_ref() == b"xml" => Place::After,
            (Place::Root, Event::Start(e)) => {
                name = element_name(e.name().as_ref()).ok_or_else(|| malformed("bad element name"))?;
                value.clear();
                Place::Field
            }
            (Place::Root, Event::Empty(e)) => {
                let name = element_name(e.name().as_ref()).ok_or_else(|| malformed("bad element name"))?;
                if fields.insert(name, String::new()).is_some() {
                    return Err(malformed("duplicate field"));
                }
                Place::Root
            }
            // The reader checks end names, so this is `</xml>`.
            (Place::Root, Event::End(_)) => Place::After,
            (Place::Field, Event::Text(t)) => {
                value.push_str(&t.unescape().map_err(|_| malformed("bad escape"))?);
                Place::Field
            }
            (Place::Field, Event::CData(c)) => {
                value.push_str(&c.decode().map_err(|_| malformed("bad CDATA"))?);
                Place::Field
            }
            (Place::Field, Event::End(_)) => {
                if fields.insert(std::mem::take(&mut name), std::mem::take(&mut value)).is_some() {
                    return Err(malformed("duplicate field"));
                }
                Place::Root
            }
            // Indentation between elements.
            (Place::Before | Place::Root | Place::After, Event::Text(t)) if t.iter().all(u8::is_ascii_whitespace) => place,
            (Place::After, Event::Eof) => return Ok(fields),
            _ => return Err(malformed("not a flat <xml> document")),
        };
    }
}

/// Field names are what WeChat sends: `[A-Za-z0-9_]+`. Anything else (`=`, `&`, `/`, NUL…)
/// could rearrange the `k=v&…` string that is signed, so a signed document could be restructured
/// and still verify (found by fuzz/wechat_v2_xml).
fn element_name(raw: &[u8]) -> Option<String> {
    let plain = !raw.is_empty() && raw.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_');
    plain.then(|| String::from_utf8_lossy(raw).into_owned())
}

fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Strictly ASCII digits: `u64::from_str` would also take a leading `+`.
fn is_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// `time_end` (`yyyyMMddHHmmss`, Beijing time) → ms since the epoch.
fn time_end_millis(text: &str) -> Option<i64> {
    if !is_digits(text) || text.len() != 14 {
        return None;
    }
    super::beijing_millis(text, "%Y%m%d%H%M%S")
}

impl Provider for WechatV2 {
    fn kind(&self) -> &'static str {
        "wechat-v2"
    }

    fn merchant(&self) -> (&'static str, &str) {
        ("wechat", &self.mch_id)
    }

    fn can_query(&self) -> bool {
        self.api.is_some()
    }

    fn reply_timeout(&self) -> Option<std::time::Duration> {
        Some(super::WECHAT_REPLY_TIMEOUT)
    }

    fn verify(&self, inbound: &Inbound) -> Result<Verified, ProviderError> {
        let fields = parse_xml(inbound.body)?;
        self.verify_signature(&fields)?;
        self.notification(fields)
    }

    fn order_query(&self, out_trade_no: &str, _now: i64) -> Option<QueryRequest<'_>> {
        let api = self.api.as_ref()?;
        let appid = self.appid.as_ref()?;
        let mut fields = BTreeMap::from([
            ("appid".to_string(), appid.clone()),
            ("mch_id".to_string(), self.mch_id.clone()),
            ("nonce_str".to_string(), random_hex(16)),
            ("out_trade_no".to_string(), out_trade_no.to_string()),
        ]);
        // No sign_type field means MD5, and WeChat signs its answer the same way.
        let signature = sign(&fields, self.api_key.expose(), SignKind::Md5);
        fields.insert("sign".into(), signature);
        Some(QueryRequest {
            endpoint: api,
            method: "POST",
            path: api_path(api, "/pay/orderquery"),
            headers: vec![("Content-Type".into(), "text/xml".into())],
            body: Bytes::from(to_xml(&fields)),
        })
    }

    fn parse_order_query(&self, out_trade_no: &str, reply: &HttpReply, _now: i64) -> Result<QueryOutcome, ProviderError> {
        if reply.status != 200 {
            return Err(ProviderError::Malformed(format!("query status {}", reply.status)));
        }
        let fields = parse_xml(&reply.body)?;
        // A FAIL return_code (bad request signature, bad parameters) comes unsigned: name it,
        // rather than reporting the missing sign.
        if fields.get("return_code").map(String::as_str) != Some("SUCCESS") {
            return Err(ProviderError::Malformed("query return_code is not SUCCESS".into()));
        }
        self.verify_signature(&fields)?;
        self.check_merchant(&fields)?;
        let text = |name: &str| fields.get(name).map(String::as_str).unwrap_or_default();
        if text("result_code") != "SUCCESS" {
            return match text("err_code") {
                "ORDERNOTEXIST" => Ok(QueryOutcome::NotPaid { trade_state: "ORDERNOTEXIST".into() }),
                _ => Err(ProviderError::Malformed("query result_code is not SUCCESS".into())),
            };
        }
        if text("out_trade_no") != out_trade_no {
            return Err(ProviderError::Malformed("query answered another out_trade_no".into()));
        }
        match text("trade_state") {
            "SUCCESS" => {}
            "" => return Err(ProviderError::Malformed("query reply has no trade_state".into())),
            other => return Ok(QueryOutcome::NotPaid { trade_state: other.to_string() }),
        }
        match self.notification(fields)? {
            Verified::Paid(order) => Ok(QueryOutcome::Paid(order)),
            // Both codes were SUCCESS above, which is all `notification` asks of a payment.
            Verified::NotPayment { .. } => Err(ProviderError::Malformed("query reply is not a payment".into())),
        }
    }

    fn reply(&self, answer: Answer, reason: &str) -> Reply {
        let (code, msg) = match answer {
            Answer::Success => ("SUCCESS", "OK"),
            Answer::Retry | Answer::Rejected => ("FAIL", reason),
        };
        let fields = BTreeMap::from([
            ("return_code".to_string(), code.to_string()),
            ("return_msg".to_string(), msg.to_string()),
        ]);
        Reply { status: 200, content_type: Some("text/xml"), body: Bytes::from(to_xml(&fields)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const KEY: &str = "192006250b4c09247ec02edce69f6a2d";

    fn vector() -> Value {
        let path = format!("{}/tests/fixtures/vectors/wechat-v2-sign.json", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn vector_fields(v: &Value) -> BTreeMap<String, String> {
        v["fields"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string())).collect()
    }

    fn provider(appid: Option<&str>) -> WechatV2 {
        let appid = appid.map(|a| format!("appid = {a:?}\n")).unwrap_or_default();
        let cfg: WechatV2Config = toml::from_str(&format!("mch_id = \"10000100\"\n{appid}api_key = {KEY:?}")).unwrap();
        WechatV2::from_config("t", cfg).unwrap()
    }

    /// A paid notification as WeChat sends it, with a field this code does not know.
    fn paid_fields() -> BTreeMap<String, String> {
        [
            ("appid", "wxd930ea5d5a258f4f"),
            ("attach", r#"{"user_id":"u1"}"#),
            ("bank_type", "CFT"),
            ("cash_fee", "1"),
            ("coupon_fee_0", "0"),
            ("device_info", ""),
            ("fee_type", "CNY"),
            ("is_subscribe", "Y"),
            ("mch_id", "10000100"),
            ("nonce_str", "5d2b6c2a8db53831f7eda20af46e531c"),
            ("openid", "oUpF8uMEb4qRXf22hE3X68TekukE"),
            ("out_trade_no", "1409811653"),
            ("result_code", "SUCCESS"),
            ("return_code", "SUCCESS"),
            ("time_end", "20140903131540"),
            ("total_fee", "101"),
            ("trade_type", "JSAPI"),
            ("transaction_id", "1004400740201409030005092168"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn signed(mut fields: BTreeMap<String, String>, kind: SignKind) -> Vec<u8> {
        let sig = sign(&fields, KEY, kind);
        fields.insert("sign".into(), sig);
        to_xml(&fields).into_bytes()
    }

    fn verify(p: &WechatV2, body: &[u8]) -> Result<Verified, ProviderError> {
        p.verify(&Inbound { headers: &http::HeaderMap::new(), body, now: 0 })
    }

    /// Regression (fuzz/wechat_v2_xml): a field name carrying `=` and `&` folded two signed
    /// fields into one, so a genuinely signed document could be restructured and still verify.
    #[test]
    fn field_names_outside_the_wechat_alphabet_are_malformed() {
        for body in [
            "<xml><appid=wxd930ea5d5a258f4f&body>test</appid=wxd930ea5d5a258f4f&body></xml>",
            "<xml><c/>x</c/></xml>",
            "<xml><a-b>x</a-b></xml>",
        ] {
            assert_eq!(parse_xml(body.as_bytes()).unwrap_err().reason(), "malformed", "{body}");
        }
        assert_eq!(parse_xml(b"<xml><coupon_fee_0>1</coupon_fee_0></xml>").unwrap()["coupon_fee_0"], "1");
    }

    #[test]
    fn official_vector_md5_and_hmac_reproduce() {
        let v = vector();
        let fields = vector_fields(&v);
        let key = v["api_key"].as_str().unwrap();
        assert_eq!(sign(&fields, key, SignKind::Md5), v["md5"].as_str().unwrap());
        assert_eq!(sign(&fields, key, SignKind::HmacSha256), v["hmac_sha256"].as_str().unwrap());
        // `sign` itself and empty values are left out of the signed string.
        let mut extra = fields.clone();
        extra.insert("sign".into(), "X".into());
        extra.insert("detail".into(), String::new());
        assert_eq!(sign(&extra, key, SignKind::Md5), v["md5"].as_str().unwrap());
    }

    #[test]
    fn official_vector_verifies_and_tamper_or_wrong_key_fails() {
        let v = vector();
        let p = provider(None);
        for (kind, expected) in [(None, "md5"), (Some("HMAC-SHA256"), "hmac_sha256")] {
            let mut fields = vector_fields(&v);
            if let Some(kind) = kind {
                fields.insert("sign_type".into(), kind.into());
            }
            // The sign_type field is itself signed, so re-sign with it for the HMAC case.
            let sig = match kind {
                None => v[expected].as_str().unwrap().to_string(),
                Some(_) => sign(&fields, KEY, SignKind::HmacSha256),
            };
            fields.insert("sign".into(), sig.to_ascii_lowercase());
            p.verify_signature(&fields).unwrap();
            let mut tampered = fields.clone();
            tampered.insert("body".into(), "test2".into());
            assert_eq!(p.verify_signature(&tampered).unwrap_err().reason(), "bad_signature");
        }
        let mut fields = vector_fields(&v);
        fields.insert("sign".into(), sign(&fields, "0123456789abcdef0123456789abcdef", SignKind::Md5));
        assert_eq!(p.verify_signature(&fields).unwrap_err().reason(), "bad_signature");
        fields.insert("sign_type".into(), "SHA1".into());
        assert_eq!(p.verify_signature(&fields).unwrap_err().reason(), "bad_signature");
    }

    /// The order both the notification and the query reply of these fixtures describe.
    fn expected_paid(fields: BTreeMap<String, String>) -> PaidOrder {
        PaidOrder {
            provider: "wxpay",
            out_trade_no: "1409811653".into(),
            transaction_id: "1004400740201409030005092168".into(),
            total_fee: 101,
            mch_id: "10000100".into(),
            appid: "wxd930ea5d5a258f4f".into(),
            openid: "oUpF8uMEb4qRXf22hE3X68TekukE".into(),
            // 2014-09-03 13:15:40 +08:00
            pay_date: 1_409_721_340_000i64.into(),
            attach: serde_json::json!({ "user_id": "u1" }),
            notify_info: NotifyInfo::from_fields(&fields),
            unparsed: Vec::new(),
        }
    }

    #[test]
    fn paid_notification_normalises_exactly() {
        let p = provider(Some("wxd930ea5d5a258f4f"));
        let body = signed(paid_fields(), SignKind::Md5);
        let Verified::Paid(order) = verify(&p, &body).unwrap() else { panic!("not paid") };
        assert_eq!(order, expected_paid(paid_fields()));
        assert!(!order.notify_info.to_map().contains_key("sign"));
        // Byte for byte what serde_json writes for the signed fields as a map (escapes included).
        assert_eq!(order.notify_info.json(), serde_json::to_string(&paid_fields()).unwrap());
    }

    #[test]
    fn hmac_signature_without_sign_type_is_recognised_by_length() {
        let p = provider(None);
        let body = signed(paid_fields(), SignKind::HmacSha256);
        assert!(matches!(verify(&p, &body).unwrap(), Verified::Paid(_)));
        // An explicit MD5 sign_type does not fall back to HMAC.
        let mut fields = paid_fields();
        fields.insert("sign_type".into(), "MD5".into());
        let hmac = sign(&fields, KEY, SignKind::HmacSha256);
        fields.insert("sign".into(), hmac);
        assert_eq!(verify(&p, to_xml(&fields).as_bytes()).unwrap_err().reason(), "bad_signature");
    }

    #[test]
    fn merchant_mismatch_and_unpaid_results() {
        let p = provider(None);
        let mut other = paid_fields();
        other.insert("mch_id".into(), "10000101".into());
        assert_eq!(verify(&p, &signed(other, SignKind::Md5)).unwrap_err().reason(), "merchant_mismatch");
        let p_app = provider(Some("wx_other"));
        assert_eq!(verify(&p_app, &signed(paid_fields(), SignKind::Md5)).unwrap_err().reason(), "merchant_mismatch");

        let mut failed = paid_fields();
        failed.insert("result_code".into(), "FAIL".into());
        failed.insert("err_code".into(), "NOTENOUGH".into());
        let verified = verify(&p, &signed(failed, SignKind::Md5)).unwrap();
        assert!(matches!(verified, Verified::NotPayment { ref what } if what == "result_code FAIL"));

        for fee in ["", "+101", "1.01", "abc"] {
            let mut bad = paid_fields();
            bad.insert("total_fee".into(), fee.into());
            assert_eq!(verify(&p, &signed(bad, SignKind::Md5)).unwrap_err().reason(), "bad_amount");
        }
        let mut unsigned = paid_fields();
        unsigned.remove("sign");
        assert_eq!(verify(&p, to_xml(&unsigned).as_bytes()).unwrap_err().reason(), "bad_signature");
    }

    #[test]
    fn xml_parsing_is_strict_and_refuses_dtds() {
        let xxe = br#"<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><xml><a>&xxe;</a></xml>"#;
        assert!(matches!(parse_xml(xxe), Err(ProviderError::XmlDoctype)));
        let bare = br#"<!ENTITY xxe SYSTEM "file:///etc/passwd"><xml><a>&xxe;</a></xml>"#;
        assert!(matches!(parse_xml(bare), Err(ProviderError::XmlDoctype)));
        assert!(matches!(parse_xml(b"<xml><a>1</a></xml><!DOCTYPE x>"), Err(ProviderError::XmlDoctype)));
        let plain = b"<?xml version=\"1.0\"?>\n<xml>\n  <a>x &amp; y</a>\n  <b><![CDATA[<z>]]></b><c/><d></d>\n</xml>\n";
        let fields = parse_xml(plain).unwrap();
        assert_eq!(fields["a"], "x & y");
        assert_eq!(fields["b"], "<z>");
        assert_eq!((fields["c"].as_str(), fields["d"].as_str()), ("", ""));
        for bad in [
            &b"<xml><a><b>1</b></a></xml>"[..],
            b"<xml><a>1</a><a>2</a></xml>",
            b"<xml><a>1</a>",
            b"<root><a>1</a></root>",
            b"<xml>text<a>1</a></xml>",
            b"<xml><a>&unknown;</a></xml>",
            b"<xml><a>1</b></xml>",
            b"<xml></xml><xml></xml>",
        ] {
            let err = parse_xml(bad).unwrap_err();
            assert_eq!(err.reason(), "malformed");
            // Nothing from the body reaches the (logged) error text.
            assert!(!err.to_string().contains('1'), "{err}");
        }
        // Values survive the round trip, `]]>` included.
        let tricky = BTreeMap::from([("v".to_string(), "a]]>b<&".to_string())]);
        assert_eq!(parse_xml(to_xml(&tricky).as_bytes()).unwrap(), tricky);
    }

    fn query_provider(api_base: &str) -> WechatV2 {
        let cfg: WechatV2Config = toml::from_str(&format!(
            "mch_id = \"10000100\"\nappid = \"wxd930ea5d5a258f4f\"\napi_key = {KEY:?}\napi_base = {api_base:?}"
        ))
        .unwrap();
        WechatV2::from_config("t", cfg).unwrap()
    }

    /// The orderquery answer for a paid order: the notification's fields plus trade_state.
    fn paid_query_fields() -> BTreeMap<String, String> {
        let mut fields = paid_fields();
        fields.insert("return_msg".into(), "OK".into());
        fields.insert("trade_state".into(), "SUCCESS".into());
        fields.insert("trade_state_desc".into(), "支付成功".into());
        fields
    }

    fn xml_reply(body: Vec<u8>) -> HttpReply {
        HttpReply { status: 200, headers: http::HeaderMap::new(), body: Bytes::from(body) }
    }

    fn query(p: &WechatV2, reply: Vec<u8>) -> Result<QueryOutcome, ProviderError> {
        p.parse_order_query("1409811653", &xml_reply(reply), 0)
    }

    #[test]
    fn order_query_is_a_signed_xml_post_under_the_api_base_prefix() {
        let p = query_provider("http://127.0.0.1:9/prefix");
        let req = p.order_query("1409811653", 0).unwrap();
        assert_eq!((req.endpoint.url(), req.method, req.path.as_str()), ("http://127.0.0.1:9/prefix", "POST", "/prefix/pay/orderquery"));
        assert_eq!(req.headers, [("Content-Type".to_string(), "text/xml".to_string())]);
        let fields = parse_xml(&req.body).unwrap();
        let names: Vec<&str> = fields.keys().map(String::as_str).collect();
        assert_eq!(names, ["appid", "mch_id", "nonce_str", "out_trade_no", "sign"]);
        assert_eq!((fields["appid"].as_str(), fields["mch_id"].as_str()), ("wxd930ea5d5a258f4f", "10000100"));
        assert_eq!(fields["out_trade_no"], "1409811653");
        assert!(is_hex(&fields["nonce_str"], 32));
        // The sign reproduces by the documented recipe, written out here.
        let text = format!(
            "appid=wxd930ea5d5a258f4f&mch_id=10000100&nonce_str={}&out_trade_no=1409811653&key={KEY}",
            fields["nonce_str"]
        );
        assert_eq!(fields["sign"], hex::encode_upper(Md5::digest(text.as_bytes())));
        assert_ne!(p.order_query("1409811653", 0).unwrap().body, req.body, "a fresh nonce per request");
        let bare = query_provider("http://127.0.0.1:9/");
        assert_eq!(bare.order_query("x", 0).unwrap().path, "/pay/orderquery");
    }

    #[test]
    fn paid_query_reply_normalises_like_a_notification() {
        let p = query_provider("http://127.0.0.1:9");
        let QueryOutcome::Paid(order) = query(&p, signed(paid_query_fields(), SignKind::Md5)).unwrap() else { panic!("not paid") };
        assert_eq!(order, expected_paid(paid_query_fields()));
    }

    #[test]
    fn unpaid_and_unknown_orders_are_not_paid() {
        let p = query_provider("http://127.0.0.1:9");
        let mut unpaid = paid_query_fields();
        unpaid.insert("trade_state".into(), "NOTPAY".into());
        for k in ["transaction_id", "time_end", "openid", "bank_type"] {
            unpaid.remove(k);
        }
        let outcome = query(&p, signed(unpaid, SignKind::Md5)).unwrap();
        assert!(matches!(outcome, QueryOutcome::NotPaid { ref trade_state } if trade_state == "NOTPAY"), "{outcome:?}");

        let missing: BTreeMap<String, String> = [
            ("appid", "wxd930ea5d5a258f4f"),
            ("err_code", "ORDERNOTEXIST"),
            ("err_code_des", "订单不存在"),
            ("mch_id", "10000100"),
            ("nonce_str", "5d2b6c2a8db53831"),
            ("result_code", "FAIL"),
            ("return_code", "SUCCESS"),
            ("return_msg", "OK"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let outcome = query(&p, signed(missing.clone(), SignKind::Md5)).unwrap();
        assert!(matches!(outcome, QueryOutcome::NotPaid { ref trade_state } if trade_state == "ORDERNOTEXIST"), "{outcome:?}");
        let mut system_error = missing;
        system_error.insert("err_code".into(), "SYSTEMERROR".into());
        assert_eq!(query(&p, signed(system_error, SignKind::Md5)).unwrap_err().reason(), "malformed");
    }

    #[test]
    fn failed_unsigned_or_foreign_query_replies_are_errors() {
        let p = query_provider("http://127.0.0.1:9");
        // return_code FAIL: WeChat could not even read the request; it comes unsigned.
        let fail = to_xml(&BTreeMap::from([
            ("return_code".to_string(), "FAIL".to_string()),
            ("return_msg".to_string(), "签名错误".to_string()),
        ]));
        let err = query(&p, fail.into_bytes()).unwrap_err();
        assert_eq!(err.reason(), "malformed");
        assert!(!err.to_string().contains("签名"), "{err}");

        let mut tampered = paid_query_fields();
        let sig = sign(&tampered, KEY, SignKind::Md5);
        tampered.insert("sign".into(), sig);
        tampered.insert("total_fee".into(), "10100".into());
        assert_eq!(query(&p, to_xml(&tampered).into_bytes()).unwrap_err().reason(), "bad_signature");
        let mut wrong_key = paid_query_fields();
        wrong_key.insert("sign".into(), sign(&wrong_key, "0123456789abcdef0123456789abcdef", SignKind::Md5));
        assert_eq!(query(&p, to_xml(&wrong_key).into_bytes()).unwrap_err().reason(), "bad_signature");

        let mut other_order = paid_query_fields();
        other_order.insert("out_trade_no".into(), "1409811654".into());
        assert_eq!(query(&p, signed(other_order, SignKind::Md5)).unwrap_err().reason(), "malformed");
        let mut other_merchant = paid_query_fields();
        other_merchant.insert("mch_id".into(), "10000101".into());
        other_merchant.insert("trade_state".into(), "NOTPAY".into());
        assert_eq!(query(&p, signed(other_merchant, SignKind::Md5)).unwrap_err().reason(), "merchant_mismatch");

        let status = HttpReply { status: 502, headers: http::HeaderMap::new(), body: Bytes::from_static(b"<html>bad gateway</html>") };
        let err = p.parse_order_query("1409811653", &status, 0).unwrap_err();
        assert_eq!(err.to_string(), "malformed notification: query status 502");
    }

    #[test]
    fn order_query_needs_api_base_and_appid() {
        assert!(provider(Some("wxd930ea5d5a258f4f")).order_query("x", 0).is_none());
        let no_appid: WechatV2Config = toml::from_str(&format!("mch_id = \"1\"\napi_key = {KEY:?}\napi_base = \"http://127.0.0.1:9\"")).unwrap();
        assert!(WechatV2::from_config("t", no_appid).is_err());
        let query_string: WechatV2Config =
            toml::from_str(&format!("mch_id = \"1\"\nappid = \"a\"\napi_key = {KEY:?}\napi_base = \"http://127.0.0.1:9/?x=1\"")).unwrap();
        assert!(WechatV2::from_config("t", query_string).is_err());
    }

    #[test]
    fn replies_are_exact() {
        let p = provider(None);
        let ok = p.reply(Answer::Success, "ok");
        assert_eq!((ok.status, ok.content_type), (200, Some("text/xml")));
        assert_eq!(
            &ok.body[..],
            b"<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>"
        );
        for answer in [Answer::Retry, Answer::Rejected] {
            let r = p.reply(answer, "bad_signature");
            assert_eq!(r.status, 200);
            assert_eq!(
                &r.body[..],
                b"<xml><return_code><![CDATA[FAIL]]></return_code><return_msg><![CDATA[bad_signature]]></return_msg></xml>"
            );
        }
    }

    #[test]
    fn config_refuses_short_keys() {
        let cfg: WechatV2Config = toml::from_str("mch_id = \"1\"\napi_key = \"short\"").unwrap();
        assert!(WechatV2::from_config("t", cfg).is_err());
        assert!(toml::from_str::<WechatV2Config>("mch_id = \"1\"\napi_key = \"k\"\nextra = 1").is_err());
    }
}
