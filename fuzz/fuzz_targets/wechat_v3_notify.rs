//! WeChat Pay v3: `Provider::verify` with arbitrary `Wechatpay-*` header values and body.
//! The serial is usually one the account knows, so the fuzzer reaches the timestamp, base64
//! and RSA checks rather than stopping at "unknown serial".
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use payhook::provider::Inbound;
use payhook_fuzz::{check_verified, header_map, ACCOUNTS, NOW, V3_CERT_B_SERIAL, V3_GOSDK_SERIAL, V3_MCHID, V3_PUB_KEY_ID};

#[derive(Arbitrary, Debug)]
enum Serial<'a> {
    PublicKeyA,
    CertificateB,
    GoSdk,
    Other(&'a [u8]),
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    timestamp: &'a [u8],
    nonce: &'a [u8],
    signature: &'a [u8],
    serial: Serial<'a>,
    body: &'a [u8],
}

fuzz_target!(|input: Input| {
    let serial = match input.serial {
        Serial::PublicKeyA => V3_PUB_KEY_ID.as_bytes(),
        Serial::CertificateB => V3_CERT_B_SERIAL.as_bytes(),
        Serial::GoSdk => V3_GOSDK_SERIAL.as_bytes(),
        Serial::Other(s) => s,
    };
    let headers = header_map([
        ("wechatpay-timestamp", input.timestamp),
        ("wechatpay-nonce", input.nonce),
        ("wechatpay-signature", input.signature),
        ("wechatpay-serial", serial),
    ]);
    let verified = ACCOUNTS.wechat_v3.verify(&Inbound { headers: &headers, body: input.body, now: NOW });
    check_verified(&verified, V3_MCHID);
});
