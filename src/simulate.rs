//! The provider's side of a notification, for backend developers and tests: a paid-order
//! notification signed exactly as WeChat Pay v3, WeChat Pay v2 or Alipay sign theirs.
//!
//! It is built as plain data (headers + body bytes) so that `payhook simulate` can send it and
//! unit tests can verify it with the real providers, without I/O. The simulator holds what is
//! the provider's private key in production, so it only ever signs with the public demo keys
//! of `conf/demo/` or keys from `payhook keygen`.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chrono::{DateTime, FixedOffset, SecondsFormat, Timelike};
use encoding_rs::{Encoding, GBK};
use percent_encoding::{percent_encode, AsciiSet, NON_ALPHANUMERIC};
use ring::aead;

use crate::keys::{random_hex, KeyError, RsaPrivateKey};
use crate::provider::alipay::signing_string;
use crate::provider::wechat_v2::{self, SignKind};
use crate::secret::Secret;

// The demo accounts of conf/payhook.toml, so `payhook simulate` needs no flag there. Paths are
// relative to the repository root, where the quick start runs it.
pub const DEMO_WECHAT_V3_KEY_FILE: &str = "conf/demo/wechat_v3_platform.key.pem";
pub const DEMO_APIV3_KEY_FILE: &str = "conf/demo/wechat_v3_apiv3_key.txt";
pub const DEMO_WECHAT_V2_API_KEY_FILE: &str = "conf/demo/wechat_v2_api_key.txt";
pub const DEMO_ALIPAY_KEY_FILE: &str = "conf/demo/alipay.key.pem";
pub const DEMO_SERIAL: &str = "PUB_KEY_ID_0000DEMO";
pub const DEMO_MCHID: &str = "1230000109";
pub const DEMO_ALIPAY_APP_ID: &str = "2021000000000000";
/// The appid of WeChat's own documentation examples; the demo accounts do not pin an appid.
pub const DEMO_WECHAT_APPID: &str = "wxd678efh567hg6787";
/// A sandbox-shaped seller id; the demo Alipay account does not pin a seller.
pub const DEMO_ALIPAY_SELLER_ID: &str = "2088000000000000";

const DEMO_OPENID: &str = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o";
const DEMO_ALIPAY_BUYER_ID: &str = "2088102177846880";
/// Chinese on purpose: it is what makes a GBK body differ from a UTF-8 one.
const ALIPAY_SUBJECT: &str = "测试商品 payhook simulate";
/// WeChat v2 stops retrying on exactly these bytes.
const WECHAT_V2_SUCCESS: &[u8] = b"<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>";

#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("provider private key: {0}")]
    Key(#[from] KeyError),
    #[error("the APIv3 key must be exactly 32 bytes (AES-256-GCM)")]
    ApiV3KeyLength,
}

/// The paid order a notification announces.
#[derive(Debug, Clone)]
pub struct Order {
    pub out_trade_no: String,
    /// Integer fen, as WeChat counts; Alipay's yuan string is derived from it.
    pub total_fee: u64,
    /// The merchant's `attach` (Alipay: `passback_params`), echoed back by the provider.
    pub attach: Option<String>,
}

/// What differs between two notifications of the same order: the clock, nonces and ids.
/// Built once per `payhook simulate`, so its `--duplicate` copies are byte for byte the same.
pub struct Fresh {
    /// Beijing time, in which both providers stamp their local times.
    pub time: DateTime<FixedOffset>,
    /// 32 hex characters.
    pub nonce: String,
    /// Random digits for the provider's transaction number.
    pub random: u64,
}

impl Fresh {
    pub fn now() -> Fresh {
        let beijing = FixedOffset::east_opt(8 * 3600).expect("UTC+8 is a valid offset");
        let random = u64::from_str_radix(&random_hex(8), 16).expect("16 hex digits fit a u64");
        // Whole seconds: every provider's time field has no finer precision.
        let time = chrono::Utc::now().with_timezone(&beijing).with_nanosecond(0).expect("0 ns is valid");
        Fresh { time, nonce: random_hex(16), random }
    }

    /// WeChat's 28-digit `transaction_id`: `4200001`, the date, random digits.
    fn wechat_transaction_id(&self) -> String {
        format!("4200001{}{:013}", self.time.format("%Y%m%d"), self.random % 10u64.pow(13))
    }

    /// Alipay's 28-digit `trade_no`: the date, `22001`, random digits.
    fn alipay_trade_no(&self) -> String {
        format!("{}22001{:015}", self.time.format("%Y%m%d"), self.random % 10u64.pow(15))
    }
}

/// A notification as bytes on the wire: what the provider would POST.
#[derive(Debug, Clone)]
pub struct Notification {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Signs notifications as one provider account would.
pub enum Simulator {
    WechatV3 { key: RsaPrivateKey, serial: String, apiv3_key: aead::LessSafeKey, mchid: String, appid: String },
    WechatV2 { api_key: Secret, mch_id: String, appid: String, sign: SignKind },
    Alipay { key: RsaPrivateKey, app_id: String, seller_id: String, charset: &'static Encoding },
}

impl Simulator {
    pub fn wechat_v3(key_pem: &[u8], apiv3_key: &Secret, serial: &str, mchid: &str, appid: &str) -> Result<Self, SimulateError> {
        let gcm = aead::UnboundKey::new(&aead::AES_256_GCM, apiv3_key.expose().as_bytes()).map_err(|_| SimulateError::ApiV3KeyLength)?;
        Ok(Simulator::WechatV3 {
            key: RsaPrivateKey::from_pem(key_pem)?,
            serial: serial.to_string(),
            apiv3_key: aead::LessSafeKey::new(gcm),
            mchid: mchid.to_string(),
            appid: appid.to_string(),
        })
    }

    pub fn wechat_v2(api_key: Secret, mch_id: &str, appid: &str, sign: SignKind) -> Self {
        Simulator::WechatV2 { api_key, mch_id: mch_id.to_string(), appid: appid.to_string(), sign }
    }

    /// `charset` is UTF-8 or GBK, the two Alipay sends.
    pub fn alipay(key_pem: &[u8], app_id: &str, seller_id: &str, charset: &'static Encoding) -> Result<Self, SimulateError> {
        Ok(Simulator::Alipay {
            key: RsaPrivateKey::from_pem(key_pem)?,
            app_id: app_id.to_string(),
            seller_id: seller_id.to_string(),
            charset,
        })
    }

    /// The provider's config name.
    pub fn kind(&self) -> &'static str {
        match self {
            Simulator::WechatV3 { .. } => "wechat-v3",
            Simulator::WechatV2 { .. } => "wechat-v2",
            Simulator::Alipay { .. } => "alipay",
        }
    }

    /// The signed notification of `order`. With `tamper`, one byte that the signature covers
    /// is changed after signing (v3: `create_time`; v2: `total_fee`; Alipay: `total_amount`),
    /// which a gateway must reject.
    pub fn notification(&self, order: &Order, fresh: &Fresh, tamper: bool) -> Notification {
        match self {
            Simulator::WechatV3 { key, serial, apiv3_key, mchid, appid } => {
                let transaction = serde_json::json!({
                    "appid": appid, "mchid": mchid, "out_trade_no": order.out_trade_no,
                    "transaction_id": fresh.wechat_transaction_id(), "trade_type": "JSAPI",
                    "trade_state": "SUCCESS", "trade_state_desc": "支付成功", "bank_type": "OTHERS",
                    "attach": order.attach.as_deref().unwrap_or_default(),
                    "success_time": fresh.time.to_rfc3339_opts(SecondsFormat::Secs, false),
                    "payer": { "openid": DEMO_OPENID },
                    "amount": { "total": order.total_fee, "payer_total": order.total_fee, "currency": "CNY", "payer_currency": "CNY" },
                });
                // AEAD_AES_256_GCM under the APIv3 key: a 12-character nonce, "transaction" as AAD.
                let resource_nonce = &fresh.nonce[..12];
                let mut sealed = transaction.to_string().into_bytes();
                apiv3_key
                    .seal_in_place_append_tag(
                        aead::Nonce::try_assume_unique_for_key(resource_nonce.as_bytes()).expect("12-byte nonce"),
                        aead::Aad::from(b"transaction"),
                        &mut sealed,
                    )
                    .expect("sealing a short plaintext cannot fail");
                let ciphertext = B64.encode(sealed);
                let body = |create_time: &str| {
                    serde_json::json!({
                        "id": format!("EV-{}", &fresh.nonce[..20]), "create_time": create_time,
                        "resource_type": "encrypt-resource", "event_type": "TRANSACTION.SUCCESS", "summary": "支付成功",
                        "resource": { "original_type": "transaction", "algorithm": "AEAD_AES_256_GCM",
                                      "ciphertext": ciphertext, "associated_data": "transaction", "nonce": resource_nonce },
                    })
                    .to_string()
                };
                let create_time = fresh.time.to_rfc3339_opts(SecondsFormat::Secs, false);
                let signed_body = body(&create_time);
                let timestamp = fresh.time.timestamp().to_string();
                let message = format!("{timestamp}\n{}\n{signed_body}\n", fresh.nonce);
                let signature = B64.encode(key.sign_sha256(message.as_bytes()));
                let sent_body = if tamper { body(&tampered(&create_time)) } else { signed_body };
                Notification {
                    headers: headers(&[
                        ("Content-Type", "application/json"),
                        ("Wechatpay-Timestamp", &timestamp),
                        ("Wechatpay-Nonce", &fresh.nonce),
                        ("Wechatpay-Signature", &signature),
                        ("Wechatpay-Serial", serial),
                        ("Wechatpay-Signature-Type", "WECHATPAY2-SHA256-RSA2048"),
                    ]),
                    body: sent_body.into_bytes(),
                }
            }
            Simulator::WechatV2 { api_key, mch_id, appid, sign } => {
                let fee = order.total_fee.to_string();
                let mut fields = fields(&[
                    ("appid", appid),
                    ("bank_type", "OTHERS"),
                    ("cash_fee", &fee),
                    ("fee_type", "CNY"),
                    ("is_subscribe", "N"),
                    ("mch_id", mch_id),
                    ("nonce_str", &fresh.nonce),
                    ("openid", DEMO_OPENID),
                    ("out_trade_no", &order.out_trade_no),
                    ("result_code", "SUCCESS"),
                    ("return_code", "SUCCESS"),
                    ("time_end", &fresh.time.format("%Y%m%d%H%M%S").to_string()),
                    ("total_fee", &fee),
                    ("trade_type", "JSAPI"),
                    ("transaction_id", &fresh.wechat_transaction_id()),
                ]);
                if let Some(attach) = &order.attach {
                    fields.insert("attach".into(), attach.clone());
                }
                // MD5 is the default and WeChat then leaves `sign_type` out; HMAC names itself.
                if *sign == SignKind::HmacSha256 {
                    fields.insert("sign_type".into(), "HMAC-SHA256".into());
                }
                let signature = wechat_v2::sign(&fields, api_key.expose(), *sign);
                fields.insert("sign".into(), signature);
                if tamper {
                    fields.insert("total_fee".into(), tampered(&fee));
                }
                Notification { headers: headers(&[("Content-Type", "text/xml")]), body: wechat_v2::to_xml(&fields).into_bytes() }
            }
            Simulator::Alipay { key, app_id, seller_id, charset } => {
                let yuan = yuan(order.total_fee);
                let label = if *charset == GBK { "gbk" } else { "utf-8" };
                let at = fresh.time.format("%Y-%m-%d %H:%M:%S").to_string();
                let mut fields = fields(&[
                    ("app_id", app_id),
                    ("auth_app_id", app_id),
                    ("buyer_id", DEMO_ALIPAY_BUYER_ID),
                    ("buyer_pay_amount", &yuan),
                    ("charset", label),
                    ("gmt_create", &at),
                    ("gmt_payment", &at),
                    ("invoice_amount", &yuan),
                    ("notify_id", &fresh.nonce),
                    ("notify_time", &at),
                    ("notify_type", "trade_status_sync"),
                    ("out_trade_no", &order.out_trade_no),
                    ("point_amount", "0.00"),
                    ("receipt_amount", &yuan),
                    ("seller_id", seller_id),
                    ("sign_type", "RSA2"),
                    ("subject", ALIPAY_SUBJECT),
                    ("total_amount", &yuan),
                    ("trade_no", &fresh.alipay_trade_no()),
                    ("trade_status", "TRADE_SUCCESS"),
                    ("version", "1.0"),
                ]);
                if let Some(attach) = &order.attach {
                    // The merchant URL-encoded it when creating the order; Alipay echoes it as is.
                    fields.insert("passback_params".into(), percent_encode(attach.as_bytes(), NON_ALPHANUMERIC).to_string());
                }
                // RSA2 over the sorted pairs without sign and sign_type, in the body's charset.
                let signature = key.sign_sha256(&charset.encode(&signing_string(&fields)).0);
                fields.insert("sign".into(), B64.encode(signature));
                if tamper {
                    fields.insert("total_amount".into(), tampered(&yuan));
                }
                let body = fields.iter().map(|(k, v)| format!("{k}={}", form_escape(&charset.encode(v).0))).collect::<Vec<_>>().join("&");
                let content_type = format!("application/x-www-form-urlencoded; charset={label}");
                Notification { headers: headers(&[("Content-Type", &content_type)]), body: body.into_bytes() }
            }
        }
    }

    /// Whether a reply is the one that makes this provider stop retrying.
    pub fn is_success(&self, status: u16, body: &[u8]) -> bool {
        match self {
            // v3 reads only the status.
            Simulator::WechatV3 { .. } => status == 200 || status == 204,
            Simulator::WechatV2 { .. } => status == 200 && body == WECHAT_V2_SUCCESS,
            Simulator::Alipay { .. } => status == 200 && body == b"success",
        }
    }
}

/// Whole fen → Alipay's yuan string with two decimals, in integers (no float rounding).
fn yuan(fen: u64) -> String {
    format!("{}.{:02}", fen / 100, fen % 100)
}

/// What `application/x-www-form-urlencoded` leaves alone besides letters and digits.
const FORM_SAFE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'*').remove(b'-').remove(b'.').remove(b'_');

/// Form encoding as Java's `URLEncoder` (Alipay's side) does it: space becomes `+`.
fn form_escape(bytes: &[u8]) -> String {
    percent_encode(bytes, FORM_SAFE).to_string().replace("%20", "+")
}

/// `text` with its last digit changed: a one-byte change that keeps the value well-formed.
fn tampered(text: &str) -> String {
    let mut bytes = text.as_bytes().to_vec();
    let last = bytes.iter().rposition(u8::is_ascii_digit).expect("tampered values contain a digit");
    bytes[last] = if bytes[last] == b'9' { b'0' } else { bytes[last] + 1 };
    String::from_utf8(bytes).expect("one ASCII digit replaced by another")
}

fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;
    use crate::provider::{Inbound, PaidOrder, Verified};
    use encoding_rs::UTF_8;

    fn repo(path: &str) -> Vec<u8> {
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
    }

    fn secret(path: &str) -> Secret {
        Secret::new(String::from_utf8(repo(path)).unwrap().trim_end_matches(['\r', '\n']))
    }

    /// The example config with its demo accounts: the simulator's defaults must satisfy them.
    fn demo_config() -> Config {
        Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/payhook.toml")).unwrap()
    }

    fn v3() -> Simulator {
        let key = repo(DEMO_WECHAT_V3_KEY_FILE);
        Simulator::wechat_v3(&key, &secret(DEMO_APIV3_KEY_FILE), DEMO_SERIAL, DEMO_MCHID, DEMO_WECHAT_APPID).unwrap()
    }

    fn v2(sign: SignKind) -> Simulator {
        Simulator::wechat_v2(secret(DEMO_WECHAT_V2_API_KEY_FILE), DEMO_MCHID, DEMO_WECHAT_APPID, sign)
    }

    fn alipay(charset: &'static Encoding) -> Simulator {
        Simulator::alipay(&repo(DEMO_ALIPAY_KEY_FILE), DEMO_ALIPAY_APP_ID, DEMO_ALIPAY_SELLER_ID, charset).unwrap()
    }

    fn order(attach: Option<&str>) -> Order {
        Order { out_trade_no: "demo-1001".into(), total_fee: 1234, attach: attach.map(str::to_string) }
    }

    fn verify(config: &Config, account: &str, n: &Notification, now: i64) -> Result<Verified, crate::provider::ProviderError> {
        let mut headers = http::HeaderMap::new();
        for (k, v) in &n.headers {
            headers.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        config.accounts[account].provider.verify(&Inbound { headers: &headers, body: &n.body, now })
    }

    fn paid(verified: Verified) -> PaidOrder {
        match verified {
            Verified::Paid(order) => order,
            other => panic!("not a payment: {other:?}"),
        }
    }

    #[test]
    fn every_provider_verifies_with_the_demo_accounts_and_rejects_a_tamper() {
        let config = demo_config();
        let cases = [
            ("wx-demo", v3()),
            ("wxv2-demo", v2(SignKind::Md5)),
            ("wxv2-demo", v2(SignKind::HmacSha256)),
            ("alipay-demo", alipay(UTF_8)),
            ("alipay-demo", alipay(GBK)),
        ];
        for (account, simulator) in &cases {
            let fresh = Fresh::now();
            let now = fresh.time.timestamp();
            let good = simulator.notification(&order(Some(r#"{"user_id":"u1"}"#)), &fresh, false);
            let got = paid(verify(&config, account, &good, now).unwrap());
            assert_eq!((got.out_trade_no.as_str(), got.total_fee), ("demo-1001", 1234), "{account}");
            assert_eq!(got.attach, serde_json::json!({ "user_id": "u1" }), "{account}");
            assert_eq!(got.pay_date, fresh.time.timestamp_millis(), "{account}");
            assert_eq!(got.transaction_id.len(), 28, "{account}");
            let date = fresh.time.format("%Y%m%d").to_string();
            let expected_start = if *account == "alipay-demo" { date } else { format!("4200001{date}") };
            assert!(got.transaction_id.starts_with(&expected_start), "{account}: {}", got.transaction_id);

            let bad = simulator.notification(&order(None), &fresh, true);
            assert_eq!(verify(&config, account, &bad, now).unwrap_err().reason(), "bad_signature", "{account}");
            // One byte differs from what was signed, nothing else.
            let unchanged = simulator.notification(&order(None), &fresh, false);
            assert_eq!(bad.headers, unchanged.headers);
            assert_eq!(bad.body.len(), unchanged.body.len());
            assert_eq!(bad.body.iter().zip(&unchanged.body).filter(|(a, b)| a != b).count(), 1, "{account}");
        }
    }

    #[test]
    fn wire_format_details() {
        let fresh = Fresh::now();
        let v3 = v3().notification(&order(None), &fresh, false);
        let h: BTreeMap<_, _> = v3.headers.iter().cloned().collect();
        assert_eq!(h["Wechatpay-Serial"], DEMO_SERIAL);
        assert_eq!(h["Wechatpay-Timestamp"], fresh.time.timestamp().to_string());
        let body: serde_json::Value = serde_json::from_slice(&v3.body).unwrap();
        assert_eq!(body["resource"]["nonce"].as_str().unwrap().len(), 12);
        assert_eq!(body["resource"]["associated_data"], "transaction");

        let v2 = String::from_utf8(v2(SignKind::Md5).notification(&order(None), &fresh, false).body).unwrap();
        assert!(v2.contains("<total_fee><![CDATA[1234]]></total_fee>") && !v2.contains("sign_type"), "{v2}");

        let gbk = alipay(GBK).notification(&order(None), &fresh, false);
        let text = String::from_utf8(gbk.body).unwrap();
        assert!(text.contains("&total_amount=12.34&") && text.contains("&trade_status=TRADE_SUCCESS&"), "{text}");
        assert!(text.contains("&gmt_payment=") && text.contains(&fresh.time.format("=%Y-%m-%d+%H%%3A%M%%3A%S&").to_string()), "{text}");
        // 测试 is %B2%E2%CA%D4 in GBK (%E6%B5%8B%E8%AF%95 in UTF-8).
        assert!(text.contains("&subject=%B2%E2%CA%D4%C9%CC%C6%B7+payhook+simulate&"), "{text}");
        assert_eq!(gbk.headers, headers(&[("Content-Type", "application/x-www-form-urlencoded; charset=gbk")]));
    }

    #[test]
    fn amounts_and_tampering_are_exact() {
        for (fen, text) in [(0, "0.00"), (1, "0.01"), (10, "0.10"), (1234, "12.34"), (100_000, "1000.00")] {
            assert_eq!(yuan(fen), text);
        }
        assert_eq!(tampered("12.34"), "12.35");
        assert_eq!(tampered("1239"), "1230");
        assert_eq!(tampered("2026-11-27T13:29:35+08:00"), "2026-11-27T13:29:35+08:01");
    }

    #[test]
    fn success_replies_are_each_providers_own() {
        let (v3, v2, alipay) = (v3(), v2(SignKind::Md5), alipay(UTF_8));
        assert!(v3.is_success(204, b"") && v3.is_success(200, b"{}") && !v3.is_success(500, b""));
        assert!(v2.is_success(200, WECHAT_V2_SUCCESS));
        assert!(!v2.is_success(200, b"<xml><return_code><![CDATA[FAIL]]></return_code></xml>") && !v2.is_success(200, b"success"));
        assert!(alipay.is_success(200, b"success") && !alipay.is_success(200, b"fail") && !alipay.is_success(200, b"success\n"));
    }

    #[test]
    fn short_apiv3_key_is_refused() {
        let key = repo(DEMO_WECHAT_V3_KEY_FILE);
        let err = Simulator::wechat_v3(&key, &Secret::new("short"), DEMO_SERIAL, DEMO_MCHID, DEMO_WECHAT_APPID).err().unwrap();
        assert!(matches!(err, SimulateError::ApiV3KeyLength));
    }
}
