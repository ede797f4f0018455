//! Alipay, structured: notifications that carry a valid RSA2 signature (made here with the test
//! key the `ali` account trusts), starting from the real notification's fields with fuzzed fields
//! set, replaced or removed, so the fuzzer drives what runs after the signature check
//! (charset decoding, merchant check, refunds, `total_amount`, `gmt_payment`, `passback_params`).
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use payhook::provider::alipay::signing_string;
use payhook::provider::{Inbound, ProviderError};
use payhook_fuzz::{alipay_real_fields, check_verified, ACCOUNTS, ALIPAY, ALIPAY_SELLER_ID, NOW};

#[derive(Arbitrary, Debug)]
enum SignType<'a> {
    Rsa2,
    Absent,
    Other(&'a str),
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    /// Start from the real notification's fields (else from none).
    base: bool,
    /// Base fields to drop, by position in the sorted base.
    remove: Vec<u8>,
    /// Fields set on top (`sign`, `sign_type` and `charset` are the harness's).
    set: Vec<(&'a str, &'a str)>,
    /// Whether the body names its charset (`utf-8`); the text is UTF-8 either way.
    charset: bool,
    sign_type: SignType<'a>,
}

fn form(k: &str, v: &str) -> String {
    format!("{}={}", utf8_percent_encode(k, NON_ALPHANUMERIC), utf8_percent_encode(v, NON_ALPHANUMERIC))
}

fuzz_target!(|input: Input| {
    let harness = |k: &str| matches!(k, "sign" | "sign_type" | "charset");
    let mut fields: BTreeMap<String, String> = BTreeMap::new();
    if input.base {
        fields.extend(alipay_real_fields().into_iter().filter(|(k, _)| !harness(k)));
        let keys: Vec<String> = fields.keys().cloned().collect();
        for i in &input.remove {
            if let Some(k) = keys.get(usize::from(*i)) {
                fields.remove(k);
            }
        }
    }
    for (k, v) in &input.set {
        if !harness(k) {
            fields.insert(k.to_string(), v.to_string());
        }
    }
    if input.charset {
        fields.insert("charset".into(), "utf-8".into());
    }
    let signature = B64.encode(ALIPAY.sign_sha256(signing_string(&fields).as_bytes()));
    let mut pairs: Vec<String> = fields.iter().map(|(k, v)| form(k, v)).collect();
    pairs.push(form("sign", &signature));
    match input.sign_type {
        SignType::Rsa2 => pairs.push(form("sign_type", "RSA2")),
        SignType::Absent => {}
        SignType::Other(t) => pairs.push(form("sign_type", t)),
    }
    let body = pairs.join("&");
    let headers = http::HeaderMap::new();
    let verified = ACCOUNTS.alipay.verify(&Inbound { headers: &headers, body: body.as_bytes(), now: NOW });
    check_verified(&verified, ALIPAY_SELLER_ID);
    if matches!(input.sign_type, SignType::Rsa2 | SignType::Absent) {
        assert!(!matches!(verified, Err(ProviderError::BadSignature)), "a correctly signed Alipay notification failed verification");
    }
});
