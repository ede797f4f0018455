//! WeChat Pay v3, structured: notifications signed here with platform key A and with the
//! resource sealed under the account's APIv3 key, so the fuzzer drives what runs after the
//! signature check (the envelope JSON, AES-256-GCM, the Transaction object) and the timestamp
//! check with any `i64`.
#![no_main]

use arbitrary::Arbitrary;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use payhook::provider::{Inbound, ProviderError, Verified};
use payhook_fuzz::{check_verified, header_map, ACCOUNTS, NOW, V3_APIV3_KEY, V3_APPID, V3_MCHID, V3_PUB_KEY_ID, WX_PLATFORM_A};
use ring::aead;
use serde_json::{json, Value};

#[derive(Arbitrary, Debug)]
enum Timestamp<'a> {
    /// Within the 5-minute tolerance of `NOW`.
    Fresh(u8),
    Raw(i64),
    Text(&'a str),
}

#[derive(Arbitrary, Debug)]
enum Event<'a> {
    TransactionSuccess,
    Other(&'a str),
}

#[derive(Arbitrary, Debug)]
enum Algorithm<'a> {
    AeadAes256Gcm,
    Other(&'a str),
}

#[derive(Arbitrary, Debug)]
enum Nonce<'a> {
    /// 12 characters, as WeChat sends.
    Twelve([u8; 12]),
    Raw(&'a str),
}

#[derive(Arbitrary, Debug)]
enum Json<'a> {
    Str(&'a str),
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
    Null,
    /// Any JSON text (a string if it does not parse).
    Text(&'a str),
}

#[derive(Arbitrary, Debug)]
enum Field<'a> {
    Mchid,
    Appid,
    OutTradeNo,
    TransactionId,
    TradeState,
    SuccessTime,
    Attach,
    Amount,
    AmountTotal,
    Payer,
    PayerOpenid,
    Other(&'a str),
}

#[derive(Arbitrary, Debug)]
enum Transaction<'a> {
    /// A paid transaction of this account, with fields replaced.
    Template(Vec<(Field<'a>, Json<'a>)>),
    /// Any plaintext.
    Raw(&'a [u8]),
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    timestamp: Timestamp<'a>,
    event: Event<'a>,
    algorithm: Algorithm<'a>,
    nonce: Nonce<'a>,
    associated_data: &'a str,
    transaction: Transaction<'a>,
}

fn json_value(j: &Json) -> Value {
    match j {
        Json::Str(s) => Value::String(s.to_string()),
        Json::U64(n) => json!(n),
        Json::I64(n) => json!(n),
        Json::F64(f) => json!(f),
        Json::Bool(b) => json!(b),
        Json::Null => Value::Null,
        Json::Text(t) => serde_json::from_str(t).unwrap_or_else(|_| Value::String(t.to_string())),
    }
}

fn set_nested(tx: &mut Value, outer: &str, inner: &str, v: Value) {
    if !tx[outer].is_object() {
        tx[outer] = json!({});
    }
    tx[outer][inner] = v;
}

fn plaintext(transaction: &Transaction) -> Vec<u8> {
    let fields = match transaction {
        Transaction::Raw(bytes) => return bytes.to_vec(),
        Transaction::Template(fields) => fields,
    };
    let mut tx = json!({
        "appid": V3_APPID, "mchid": V3_MCHID, "out_trade_no": "1217752501201407033233368018",
        "transaction_id": "1217752501201407033233368018", "trade_type": "JSAPI",
        "trade_state": "SUCCESS", "trade_state_desc": "支付成功", "bank_type": "CMC",
        "attach": "{\"user_id\":\"u001\"}", "success_time": "2021-06-24T16:37:26+08:00",
        "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
        "amount": {"total": 100, "payer_total": 100, "currency": "CNY", "payer_currency": "CNY"}
    });
    for (field, value) in fields {
        let v = json_value(value);
        match field {
            Field::Mchid => tx["mchid"] = v,
            Field::Appid => tx["appid"] = v,
            Field::OutTradeNo => tx["out_trade_no"] = v,
            Field::TransactionId => tx["transaction_id"] = v,
            Field::TradeState => tx["trade_state"] = v,
            Field::SuccessTime => tx["success_time"] = v,
            Field::Attach => tx["attach"] = v,
            Field::Amount => tx["amount"] = v,
            Field::AmountTotal => set_nested(&mut tx, "amount", "total", v),
            Field::Payer => tx["payer"] = v,
            Field::PayerOpenid => set_nested(&mut tx, "payer", "openid", v),
            Field::Other(name) => tx[*name] = v,
        }
    }
    serde_json::to_vec(&tx).expect("a Value serialises")
}

fuzz_target!(|input: Input| {
    let timestamp = match input.timestamp {
        Timestamp::Fresh(skew) => (NOW - 127 + i64::from(skew)).to_string(),
        Timestamp::Raw(t) => t.to_string(),
        Timestamp::Text(t) => t.to_string(),
    };
    let event = match input.event {
        Event::TransactionSuccess => "TRANSACTION.SUCCESS",
        Event::Other(e) => e,
    };
    let algorithm = match input.algorithm {
        Algorithm::AeadAes256Gcm => "AEAD_AES_256_GCM",
        Algorithm::Other(a) => a,
    };
    const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let nonce = match input.nonce {
        Nonce::Twelve(bytes) => bytes.iter().map(|b| ALNUM[usize::from(*b) % ALNUM.len()] as char).collect(),
        Nonce::Raw(n) => n.to_string(),
    };
    let mut sealed = plaintext(&input.transaction);
    let sealable = nonce.len() == 12;
    if sealable {
        let key = aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_256_GCM, V3_APIV3_KEY.as_bytes()).expect("32-byte key"));
        let n = aead::Nonce::try_assume_unique_for_key(nonce.as_bytes()).expect("12 bytes");
        key.seal_in_place_append_tag(n, aead::Aad::from(input.associated_data.as_bytes()), &mut sealed).expect("seal");
    }
    let body = json!({
        "id": "EV-2018022511223320873", "create_time": "2021-06-24T16:37:26+08:00",
        "resource_type": "encrypt-resource", "event_type": event, "summary": "支付成功",
        "resource": {
            "original_type": "transaction", "algorithm": algorithm, "ciphertext": B64.encode(&sealed),
            "associated_data": input.associated_data, "nonce": nonce
        }
    })
    .to_string();
    let header_nonce = "593BEC0C930BF1AFEB40B4A08C8FB242";
    let signature = B64.encode(WX_PLATFORM_A.sign_sha256(format!("{timestamp}\n{header_nonce}\n{body}\n").as_bytes()));
    let headers = header_map([
        ("wechatpay-timestamp", timestamp.as_bytes()),
        ("wechatpay-nonce", header_nonce.as_bytes()),
        ("wechatpay-signature", signature.as_bytes()),
        ("wechatpay-serial", V3_PUB_KEY_ID.as_bytes()),
    ]);
    let verified = ACCOUNTS.wechat_v3.verify(&Inbound { headers: &headers, body: body.as_bytes(), now: NOW });
    check_verified(&verified, V3_MCHID);

    if let Timestamp::Fresh(_) = input.timestamp {
        // Signed, fresh, known serial: none of the header checks may fail.
        assert!(
            !matches!(
                verified,
                Err(ProviderError::MissingHeader(_)
                    | ProviderError::ProbeSignature
                    | ProviderError::BadSignature
                    | ProviderError::UnknownSerial(_)
                    | ProviderError::StaleTimestamp)
            ),
            "a correctly signed, fresh v3 notification failed the header checks: {verified:?}"
        );
        if event == "TRANSACTION.SUCCESS" && algorithm == "AEAD_AES_256_GCM" && sealable {
            assert!(!matches!(verified, Err(ProviderError::Decrypt)), "a correctly sealed resource did not decrypt");
        }
        if event == "TRANSACTION.SUCCESS" && algorithm == "AEAD_AES_256_GCM" && sealable {
            if let Transaction::Template(fields) = &input.transaction {
                if fields.is_empty() {
                    assert!(matches!(verified, Ok(Verified::Paid(_))), "the paid template is not a payment: {verified:?}");
                }
            }
        }
    }
});
