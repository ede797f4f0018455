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
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{beijing_millis, parse_attach, Answer, Inbound, PaidOrder, Provider, ProviderError, Reply, Verified};
use crate::config::{ConfigDir, ConfigError};
use crate::keys::{Certificate, KeyError, RsaPublicKey};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlipayConfig {
    app_id: String,
    seller_id: Option<String>,
    alipay_public_key: Option<String>,
    alipay_public_key_file: Option<PathBuf>,
    alipay_cert_file: Option<PathBuf>,
    alipay_root_cert_file: Option<PathBuf>,
}

pub struct Alipay {
    app_id: String,
    seller_id: Option<String>,
    public_key: RsaPublicKey,
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
                parsed.map_err(|e| ConfigError::invalid(k, e))?
            }
            (None, Some(path), None, None) => {
                let k = format!("{key}.alipay_public_key_file");
                RsaPublicKey::from_pem(&dir.read(&k, path)?).map_err(|e| ConfigError::invalid(k, e))?
            }
            (None, None, Some(cert), Some(root)) => {
                let cert_key = format!("{key}.alipay_cert_file");
                let root_key = format!("{key}.alipay_root_cert_file");
                let chain = rsa_certificates(&dir.read(&cert_key, cert)?, false).map_err(|e| ConfigError::invalid(&cert_key, e))?;
                let roots = rsa_certificates(&dir.read(&root_key, root)?, true).map_err(|e| ConfigError::invalid(&root_key, e))?;
                if roots.is_empty() {
                    return Err(ConfigError::invalid(root_key, "holds no RSA certificate"));
                }
                trusted_leaf(chain, &roots).map_err(|e| ConfigError::invalid(cert_key, e))?
            }
            _ => {
                return Err(ConfigError::invalid(
                    key,
                    "configure exactly one of alipay_public_key, alipay_public_key_file, \
                     or alipay_cert_file with alipay_root_cert_file",
                ))
            }
        };
        Ok(Alipay { app_id: cfg.app_id, seller_id: cfg.seller_id, public_key })
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
        let pay_date = beijing_millis(&text("gmt_payment"), "%Y-%m-%d %H:%M:%S").ok_or_else(|| ProviderError::Malformed("gmt_payment".into()))?;
        // The merchant URL-encoded passback_params when creating the order; Alipay echoes it as is.
        let attach = match fields.get("passback_params") {
            Some(raw) => {
                let text = percent_encoding::percent_decode_str(raw)
                    .decode_utf8()
                    .map_err(|_| ProviderError::Malformed("passback_params is not UTF-8".into()))?;
                parse_attach(&text)
            }
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
            notify_info: fields
                .into_iter()
                .filter(|(k, _)| !is_unsigned(k))
                .map(|(k, v)| (k, Value::String(v)))
                .collect::<Map<_, _>>(),
        }))
    }

    fn verify_signature(&self, form: &Form) -> Result<(), ProviderError> {
        // Only RSA2: legacy RSA is SHA-1, which we refuse to trust.
        if form.raw.get("sign_type").is_some_and(|t| t.as_slice() != b"RSA2") {
            return Err(ProviderError::BadSignature);
        }
        let sign = form.raw.get("sign").ok_or(ProviderError::BadSignature)?;
        let signature = B64.decode(sign).map_err(|_| ProviderError::BadSignature)?;
        if self.public_key.verify_sha256(&form.signed_bytes(), &signature) {
            Ok(())
        } else {
            Err(ProviderError::BadSignature)
        }
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
fn trusted_leaf(mut chain: Vec<Certificate>, roots: &[Certificate]) -> Result<RsaPublicKey, String> {
    if chain.is_empty() {
        return Err("holds no certificate".into());
    }
    let leaf = chain.remove(0);
    let mut current = leaf.clone();
    loop {
        if roots.iter().any(|root| current.check_signed_by(root).is_ok()) {
            return Ok(leaf.public_key);
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

/// The notification string-to-sign: sorted `k=v&…` of the decoded pairs without `sign` and
/// `sign_type`, empty values kept (Alipay's own SDK keeps them).
pub fn signing_string(pairs: &BTreeMap<String, String>) -> String {
    pairs
        .iter()
        .filter(|(k, _)| !is_unsigned(k))
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
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

/// `"yyyy-MM-dd HH:mm:ss"` in Beijing time → ms since the epoch.

/// A form body split into pairs. Values stay in the body's charset: Alipay signs the string
/// encoded in that charset, so verifying over these bytes needs no re-encoding round trip.
struct Form {
    raw: BTreeMap<String, Vec<u8>>,
    charset: &'static Encoding,
}

impl Form {
    fn parse(body: &[u8]) -> Result<Form, ProviderError> {
        let charset = body_charset(body)?;
        let mut raw = BTreeMap::new();
        for pair in body.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
            let (k, v) = split_pair(pair);
            let key = decode_text(charset, &form_unescape(k))?;
            // A repeated key would make "the" value ambiguous between signature and use.
            if raw.insert(key, form_unescape(v)).is_some() {
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

fn split_pair(pair: &[u8]) -> (&[u8], &[u8]) {
    match pair.iter().position(|&b| b == b'=') {
        Some(i) => (&pair[..i], &pair[i + 1..]),
        None => (pair, &[]),
    }
}

/// The body's own `charset` field (its key and value are ASCII, so it is found before decoding).
fn body_charset(body: &[u8]) -> Result<&'static Encoding, ProviderError> {
    let Some(label) = body.split(|&b| b == b'&').map(split_pair).find(|(k, _)| *k == b"charset").map(|(_, v)| form_unescape(v))
    else {
        return Ok(UTF_8);
    };
    // WHATWG labels: `utf-8`/`utf8` → UTF-8, `gbk`/`gb2312` → GBK; Alipay sends nothing else.
    match Encoding::for_label(&label) {
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

    fn verify(&self, inbound: &Inbound) -> Result<Verified, ProviderError> {
        let form = Form::parse(inbound.body)?;
        self.verify_signature(&form)?;
        self.notification(form.decode()?)
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
        ConfigDir(PathBuf::from(format!("{}/tests/fixtures/keys", env!("CARGO_MANIFEST_DIR"))))
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

    /// A form body with every key and value encoded in `charset`, as Alipay sends it.
    fn form_body(fields: &BTreeMap<String, String>, charset: &'static Encoding) -> Vec<u8> {
        fields
            .iter()
            .map(|(k, v)| format!("{k}={}", percent_encode(&charset.encode(v).0, NON_ALPHANUMERIC)))
            .collect::<Vec<_>>()
            .join("&")
            .into_bytes()
    }

    fn verify(p: &Alipay, body: &[u8]) -> Result<Verified, ProviderError> {
        p.verify(&Inbound { headers: &http::HeaderMap::new(), body, now: 0 })
    }

    /// The test key pair of `alipay.*`: signs like Alipay, over the charset-encoded string.
    fn sign_with_test_key(fields: &mut BTreeMap<String, String>, charset: &'static Encoding) {
        let pem = std::fs::read(keys_dir().resolve("alipay.key.pem".as_ref())).unwrap();
        let key = RsaPrivateKey::from_pem(&pem).unwrap();
        let sig = key.sign_sha256(&charset.encode(&signing_string(fields)).0);
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
        assert_eq!(order.pay_date, 1_565_855_784_000);
        assert_eq!(order.attach, Value::String(String::new()));
        assert_eq!(order.notify_info["notify_id"], "2019081500222155624068450559358070");
        assert_eq!(order.notify_info["subject"], "语雀空间 500人规模");
        assert!(!order.notify_info.contains_key("sign") && !order.notify_info.contains_key("sign_type"));
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
        assert_eq!(order.notify_info["subject"], "测试商品 一号+1");
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
        Alipay::from_config("t", cfg, &ConfigDir(bundle.path().to_path_buf())).unwrap();
    }

    #[test]
    fn exactly_one_key_mode() {
        assert!(provider("app_id = \"1\"").is_err());
        assert!(provider("app_id = \"1\"\nalipay_public_key_file = \"alipay.pub.pem\"\nalipay_cert_file = \"alipay_leaf.cert.pem\"").is_err());
        assert!(provider("app_id = \"1\"\nalipay_cert_file = \"alipay_leaf.cert.pem\"").is_err());
        let pem = std::fs::read_to_string(keys_dir().resolve("alipay.pub.pem".as_ref())).unwrap();
        provider(&format!("app_id = \"1\"\nalipay_public_key = {pem:?}")).unwrap();
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
