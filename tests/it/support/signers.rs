//! WeChat Pay v2 and Alipay notifications signed as the providers sign them, written apart from
//! payhook's own code so a shared misunderstanding cannot make both sides agree.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use md5::{Digest, Md5};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};

use super::Headers;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};

use super::fixture;

/// application/x-www-form-urlencoded keeps `*-._` and sends a space as `+`.
const FORM: &AsciiSet = &NON_ALPHANUMERIC.remove(b'*').remove(b'-').remove(b'.').remove(b'_').remove(b' ');

fn form_encode(bytes: &[u8]) -> String {
    percent_encoding::percent_encode(bytes, FORM).to_string().replace(' ', "+")
}

pub const V2_API_KEY: &str = "v2apikeyv2apikeyv2apikeyv2apikey";
pub const V2_MCH_ID: &str = "10000100";
pub const ALIPAY_APP_ID: &str = "2021000111222333";
pub const ALIPAY_SELLER_ID: &str = "2088000000000001";

/// WeChat Pay API v2: XML fields signed with MD5 (or HMAC-SHA256) over sorted non-empty pairs.
pub struct WxV2 {
    pub api_key: String,
}

impl WxV2 {
    pub fn new() -> Self {
        WxV2 { api_key: V2_API_KEY.into() }
    }

    pub fn fields(out_trade_no: &str, total_fee: u64) -> BTreeMap<String, String> {
        [
            ("return_code", "SUCCESS"), ("result_code", "SUCCESS"), ("appid", "wx2421b1c4370ec43b"),
            ("mch_id", V2_MCH_ID), ("nonce_str", "5d2b6c2a8db53831f7eda20af46e531c"), ("openid", "oUpF8uMEb4qRXf22hE3X68TekukE"),
            ("is_subscribe", "Y"), ("trade_type", "JSAPI"), ("bank_type", "CMC"), ("fee_type", "CNY"),
            ("transaction_id", "1004400740201409030005092168"), ("time_end", "20261127132935"),
            ("attach", "{\"coupon\":\"A1\"}"), ("coupon_fee_0", "10"), ("cash_fee", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain([("out_trade_no".to_string(), out_trade_no.to_string()), ("total_fee".to_string(), total_fee.to_string())])
        .collect()
    }

    pub fn sign_md5(&self, fields: &BTreeMap<String, String>) -> String {
        let mut text = fields.iter().filter(|(k, v)| *k != "sign" && !v.is_empty()).map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
        text.push_str(&format!("&key={}", self.api_key));
        hex::encode_upper(Md5::digest(text.as_bytes()))
    }

    pub fn xml(fields: &BTreeMap<String, String>) -> String {
        let mut out = String::from("<xml>");
        for (k, v) in fields {
            out.push_str(&format!("<{k}><![CDATA[{v}]]></{k}>"));
        }
        out.push_str("</xml>");
        out
    }

    pub fn paid(&self, out_trade_no: &str, total_fee: u64) -> String {
        let mut fields = Self::fields(out_trade_no, total_fee);
        let sign = self.sign_md5(&fields);
        fields.insert("sign".into(), sign);
        Self::xml(&fields)
    }
}

pub const V2_SUCCESS: &str = "<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>";

pub fn v2_fail(reason: &str) -> String {
    format!("<xml><return_code><![CDATA[FAIL]]></return_code><return_msg><![CDATA[{reason}]]></return_msg></xml>")
}

/// Alipay: a form body signed RSA2 over the sorted pairs without `sign` and `sign_type`.
pub struct Alipay {
    key: RsaKeyPair,
}

impl Alipay {
    pub fn with_key(file: &str) -> Self {
        let pem = pem::parse(std::fs::read(fixture(&format!("keys/{file}"))).unwrap()).unwrap();
        Alipay { key: RsaKeyPair::from_pkcs8(pem.contents()).unwrap() }
    }

    pub fn fields(out_trade_no: &str, total_amount: &str) -> BTreeMap<String, String> {
        [
            ("notify_time", "2026-11-27 13:29:36"), ("notify_type", "trade_status_sync"), ("notify_id", "ac05099524730693a8b330c5ecf72da9786"),
            ("app_id", ALIPAY_APP_ID), ("charset", "utf-8"), ("version", "1.0"), ("sign_type", "RSA2"),
            ("trade_no", "2026112722001404010599999999"), ("buyer_id", "2088102122524333"), ("seller_id", ALIPAY_SELLER_ID),
            ("trade_status", "TRADE_SUCCESS"), ("receipt_amount", total_amount), ("subject", "语雀空间 500人规模 + 扩容"),
            ("gmt_create", "2026-11-27 13:29:30"), ("gmt_payment", "2026-11-27 13:29:35"),
            ("fund_bill_list", "[{\"amount\":\"12.34\",\"fundChannel\":\"ALIPAYACCOUNT\"}]"),
            ("passback_params", "%7B%22user_id%22%3A%22u9%22%7D"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain([("out_trade_no".to_string(), out_trade_no.to_string()), ("total_amount".to_string(), total_amount.to_string())])
        .collect()
    }

    /// Signs `fields` (encoded in `charset`) and returns the urlencoded body bytes.
    pub fn body(&self, fields: &BTreeMap<String, String>, gbk: bool) -> Vec<u8> {
        let mut fields = fields.clone();
        if gbk {
            fields.insert("charset".into(), "gbk".into());
        }
        let encode = |s: &str| -> Vec<u8> {
            if gbk {
                encoding_rs::GBK.encode(s).0.into_owned()
            } else {
                s.as_bytes().to_vec()
            }
        };
        let signed: Vec<u8> = fields
            .iter()
            .filter(|(k, _)| *k != "sign" && *k != "sign_type")
            .map(|(k, v)| encode(&format!("{k}={v}")))
            .collect::<Vec<_>>()
            .join(&b"&"[..]);
        let mut sig = vec![0; self.key.public().modulus_len()];
        self.key.sign(&RSA_PKCS1_SHA256, &ring::rand::SystemRandom::new(), &signed, &mut sig).unwrap();
        fields.insert("sign".into(), B64.encode(sig));
        fields
            .iter()
            .map(|(k, v)| format!("{}={}", form_encode(k.as_bytes()), form_encode(&encode(v))))
            .collect::<Vec<_>>()
            .join("&")
            .into_bytes()
    }
}

pub fn form_headers() -> Headers {
    vec![("Content-Type".into(), "application/x-www-form-urlencoded; charset=utf-8".into())]
}

pub fn xml_headers() -> Headers {
    vec![("Content-Type".into(), "text/xml".into())]
}

/// `[accounts.wxv2]` and `[accounts.ali]` for `support::config`'s `extra`.
pub fn accounts_toml() -> String {
    let keys = fixture("keys");
    format!(
        r#"
[accounts.wxv2]
provider = "wechat-v2"
mch_id = "{V2_MCH_ID}"
api_key = "{V2_API_KEY}"

[accounts.ali]
provider = "alipay"
app_id = "{ALIPAY_APP_ID}"
seller_id = "{ALIPAY_SELLER_ID}"
alipay_public_key_file = "{}/alipay.pub.pem"

[accounts.ali-cert]
provider = "alipay"
app_id = "{ALIPAY_APP_ID}"
alipay_cert_file = "{}/alipay_leaf.cert.pem"
alipay_root_cert_file = "{}/alipay_root.cert.pem"
"#,
        keys.display(),
        keys.display(),
        keys.display()
    )
}
