//! WeChat Pay v2: `parse_xml` and the full `Provider::verify` on arbitrary bytes, then the same
//! fields re-signed with the account's key, so the fuzzer also drives what runs after a valid
//! signature (merchant check, amounts, `time_end`, `attach`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use payhook::provider::wechat_v2::{parse_xml, sign, to_xml, SignKind};
use payhook::provider::{Inbound, ProviderError, Verified};
use payhook_fuzz::{check_verified, trace, ACCOUNTS, NOW, V2_API_KEY, V2_MCH_ID};

fuzz_target!(|data: &[u8]| {
    let provider = &ACCOUNTS.wechat_v2;
    let headers = http::HeaderMap::new();
    let parsed = parse_xml(data);
    trace(&parsed);
    let verified = provider.verify(&Inbound { headers: &headers, body: data, now: NOW });
    check_verified(&verified, V2_MCH_ID);
    // verify parses with parse_xml first: a body parse_xml refuses is refused the same way.
    if let Err(e) = &parsed {
        assert_eq!(verified.as_ref().err().map(ProviderError::reason), Some(e.reason()));
    }

    let Ok(mut fields) = parsed else { return };
    // What payhook writes, it reads back unchanged (replies, order-query requests), whatever the
    // values. Only for plain field names: parse_xml takes any bytes up to whitespace as a name
    // (`<c//>` is a field named `c/`), which to_xml cannot write back; WeChat's names are plain.
    let plain = |name: &String| !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if fields.keys().all(plain) {
        let xml = to_xml(&fields);
        assert_eq!(parse_xml(xml.as_bytes()).ok().as_ref(), Some(&fields), "to_xml/parse_xml round trip");
    }

    let kind = match fields.get("sign_type").map(String::as_str) {
        None | Some("" | "MD5") => SignKind::Md5,
        Some("HMAC-SHA256") => SignKind::HmacSha256,
        Some(_) => return,
    };
    let signature = sign(&fields, V2_API_KEY, kind);
    fields.insert("sign".into(), signature);
    let body = to_xml(&fields);
    let verified = provider.verify(&Inbound { headers: &headers, body: body.as_bytes(), now: NOW });
    check_verified(&verified, V2_MCH_ID);
    // Correctly signed: whatever else is wrong with it, the signature is not.
    assert!(!matches!(verified, Err(ProviderError::BadSignature)), "a correctly signed v2 notification failed verification");
    if let Ok(Verified::Paid(order)) = &verified {
        assert!(!order.notify_info.to_map().contains_key("sign"));
    }
});
