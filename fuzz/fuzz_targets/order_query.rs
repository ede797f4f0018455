//! The order-query answer parsers (`Provider::parse_order_query`, the active trigger) of every
//! provider on an arbitrary `HttpReply`; with `signed`, the harness signs the answer the way the
//! provider does (test keys), so the fuzzer drives what runs after the signature check.
#![no_main]

use arbitrary::Arbitrary;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use payhook::forward::HttpReply;
use payhook::provider::wechat_v2::{parse_xml, sign, to_xml, SignKind};
use payhook::provider::ProviderError;
use payhook_fuzz::{
    check_query, header_map, ACCOUNTS, ALIPAY, ALIPAY_SELLER_ID, NOW, V2_API_KEY, V2_MCH_ID, V3_MCHID, V3_PUB_KEY_ID, WX_PLATFORM_A,
};
use serde_json::value::RawValue;

#[derive(Arbitrary, Debug)]
enum Which {
    WechatV2,
    WechatV3,
    Alipay,
}

#[derive(Arbitrary, Debug)]
enum Status {
    Ok,
    NotFound,
    Other(u16),
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    which: Which,
    status: Status,
    signed: bool,
    /// The order asked about.
    out_trade_no: &'a str,
    /// Unsigned v3 answers: `Wechatpay-Timestamp`, `-Nonce`, `-Signature`, `-Serial`.
    raw_headers: [&'a [u8]; 4],
    body: &'a [u8],
}

fuzz_target!(|input: Input| {
    let status = match input.status {
        Status::Ok => 200,
        Status::NotFound => 404,
        Status::Other(s) => s,
    };
    let mut reply = HttpReply { status, headers: http::HeaderMap::new(), body: Bytes::copy_from_slice(input.body) };
    // Whether the harness signed the answer in a way the provider must accept.
    let mut signed = input.signed;
    let (provider, mch_id) = match input.which {
        Which::WechatV2 => {
            if input.signed {
                if let Ok(mut fields) = parse_xml(input.body) {
                    let kind = match fields.get("sign_type").map(String::as_str) {
                        None | Some("" | "MD5") => SignKind::Md5,
                        Some("HMAC-SHA256") => SignKind::HmacSha256,
                        // An unknown sign_type is refused whatever the signature.
                        Some(_) => {
                            signed = false;
                            SignKind::Md5
                        }
                    };
                    let signature = sign(&fields, V2_API_KEY, kind);
                    fields.insert("sign".into(), signature);
                    reply.body = Bytes::from(to_xml(&fields));
                }
            }
            (&ACCOUNTS.wechat_v2, V2_MCH_ID)
        }
        Which::WechatV3 => {
            reply.headers = if input.signed {
                let (timestamp, nonce) = (NOW.to_string(), "593BEC0C930BF1AFEB40B4A08C8FB242");
                let mut message = format!("{timestamp}\n{nonce}\n").into_bytes();
                message.extend_from_slice(input.body);
                message.push(b'\n');
                let signature = B64.encode(WX_PLATFORM_A.sign_sha256(&message));
                header_map([
                    ("wechatpay-timestamp", timestamp.as_bytes()),
                    ("wechatpay-nonce", nonce.as_bytes()),
                    ("wechatpay-signature", signature.as_bytes()),
                    ("wechatpay-serial", V3_PUB_KEY_ID.as_bytes()),
                ])
            } else {
                let [timestamp, nonce, signature, serial] = input.raw_headers;
                header_map([
                    ("wechatpay-timestamp", timestamp),
                    ("wechatpay-nonce", nonce),
                    ("wechatpay-signature", signature),
                    ("wechatpay-serial", serial),
                ])
            };
            (&ACCOUNTS.wechat_v3, V3_MCHID)
        }
        Which::Alipay => {
            if input.signed {
                // Alipay signs the response object's text exactly as it sends it.
                if let Ok(response) = serde_json::from_slice::<&RawValue>(input.body) {
                    let signature = B64.encode(ALIPAY.sign_sha256(response.get().as_bytes()));
                    reply.body = Bytes::from(format!(r#"{{"alipay_trade_query_response":{},"sign":"{signature}"}}"#, response.get()));
                }
            }
            (&ACCOUNTS.alipay, ALIPAY_SELLER_ID)
        }
    };
    let outcome = provider.parse_order_query(input.out_trade_no, &reply, NOW);
    check_query(&outcome, mch_id, input.out_trade_no);
    if signed {
        assert!(!matches!(outcome, Err(ProviderError::BadSignature)), "a correctly signed query answer failed verification: {reply:?}");
    }
});
