//! A fake of the three providers' order-query APIs on one [`TestServer`]: WeChat Pay v3
//! `GET …/v3/pay/transactions/out-trade-no/{no}`, WeChat Pay v2 `POST …/pay/orderquery` and
//! Alipay `POST …/gateway.do` (`alipay.trade.query`). Any path prefix is accepted, so a test
//! can check that payhook keeps the one in `api_base` (see [`ProviderApi::requests`]).
//!
//! Like the real APIs it checks the request signature first (merchant key `wx_merchant`,
//! the v2 API key [`V2_API_KEY`], app key `alipay_app`) and signs its answers with the provider
//! keys (`wx_platform_a` under [`PUB_KEY_ID`], [`V2_API_KEY`], `alipay`). Everything is signed
//! here with ring, md-5 and the support signers, never with payhook's own provider code.
//!
//! Orders are unknown until a test declares them [`ProviderApi::paid`] or
//! [`ProviderApi::unpaid`]; unknown orders get each provider's "no such order" answer.
//!
//! What a paid order looks like, per provider:
//!
//! | field | v3 | v2 | Alipay |
//! | --- | --- | --- | --- |
//! | provider's trade number | [`trade_no`] | [`trade_no`] | [`trade_no`] |
//! | pay time | [`PAY_DATE_MS`] | [`PAY_DATE_MS`] | [`PAY_DATE_MS`] |
//! | payer | [`OPENID`] | [`OPENID`] | [`ALIPAY_BUYER_ID`] |
//! | ids | the request's `mchid`, [`APPID`] | the request's `mch_id`, `appid` | — |

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use md5::{Digest, Md5};
use percent_encoding::percent_decode_str;
use ring::signature::{RsaKeyPair, UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256};
use serde_json::{json, Value};

use super::http::{Canned, Received, TestServer};
use super::signers::V2_API_KEY;
use super::{fixture, WxV3, APPID, PUB_KEY_ID};

/// The serial of the merchant API certificate whose key is `wx_merchant.key.pem`.
pub const WX_MERCHANT_SERIAL: &str = "3775B6A45ACD588826D15E583A95F5DD00000001";
/// Every paid order was paid at 2026-11-27 13:29:35 Beijing time.
pub const PAY_DATE_MS: i64 = 1_795_757_375_000;
/// The v2 payer (v3 uses the same openid through [`WxV3::transaction`]).
pub const OPENID: &str = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o";
/// The Alipay payer (`buyer_user_id`).
pub const ALIPAY_BUYER_ID: &str = "2088102177846880";

/// The provider's own number for a paid order.
pub fn trade_no(out_trade_no: &str) -> String {
    format!("4200001{out_trade_no}")
}

#[derive(Clone, Copy)]
enum Order {
    Paid { total_fee: u64 },
    Unpaid,
}

#[derive(Default)]
struct State {
    orders: HashMap<String, Order>,
    bad_signature: bool,
    throttled: bool,
    delay: Duration,
}

/// The keys the fake uses: its own signing keys and the merchants' keys it verifies with.
struct Keys {
    wx_platform: WxV3,
    wx_wrong: WxV3,
    wx_merchant: RsaKeyPair,
    alipay: RsaKeyPair,
    alipay_app: RsaKeyPair,
}

pub struct ProviderApi {
    pub server: TestServer,
    state: Arc<Mutex<State>>,
}

impl ProviderApi {
    pub async fn start() -> ProviderApi {
        let state = Arc::new(Mutex::new(State::default()));
        let keys = Arc::new(Keys {
            wx_platform: WxV3::public_key_mode(),
            // Another key under the trusted id: the signature cannot verify.
            wx_wrong: WxV3::with_key("wx_platform_b.key.pem", PUB_KEY_ID),
            wx_merchant: key_pair("wx_merchant.key.pem"),
            alipay: key_pair("alipay.key.pem"),
            alipay_app: key_pair("alipay_app.key.pem"),
        });
        let shared = state.clone();
        let server = TestServer::start(Arc::new(move |req: &Received| {
            let state = shared.lock().unwrap();
            let mut canned = answer(req, &state, &keys);
            canned.delay = state.delay;
            canned
        }))
        .await;
        ProviderApi { server, state }
    }

    /// `out_trade_no` is paid, `total_fee` in fen.
    pub fn paid(&self, out_trade_no: &str, total_fee: u64) {
        self.state.lock().unwrap().orders.insert(out_trade_no.to_string(), Order::Paid { total_fee });
    }

    /// `out_trade_no` exists and waits for payment (v3/v2 `NOTPAY`, Alipay `WAIT_BUYER_PAY`).
    pub fn unpaid(&self, out_trade_no: &str) {
        self.state.lock().unwrap().orders.insert(out_trade_no.to_string(), Order::Unpaid);
    }

    /// Sign answers with a key payhook does not trust (the right key id or API, the wrong key).
    pub fn bad_signature(&self, on: bool) {
        self.state.lock().unwrap().bad_signature = on;
    }

    /// Answer v3 queries with WeChat's signed `429 FREQUENCY_LIMITED`.
    pub fn throttle(&self, on: bool) {
        self.state.lock().unwrap().throttled = on;
    }

    /// Wait this long before every answer.
    pub fn delay(&self, delay: Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    pub fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    pub fn requests(&self) -> Vec<Received> {
        self.server.requests()
    }

    pub fn count(&self) -> usize {
        self.server.count()
    }

    /// The query lines of a `wechat-v3` account (with `mchid` [`MCHID`]) aimed at this fake.
    pub fn wechat_v3_keys(&self, prefix: &str) -> String {
        format!(
            "api_base = \"{}\"\nmerchant_private_key_file = \"{}\"\nmerchant_serial = \"{WX_MERCHANT_SERIAL}\"\n",
            self.url(prefix),
            fixture("keys/wx_merchant.key.pem").display()
        )
    }

    /// The query line of a `wechat-v2` account aimed at this fake; the account needs an `appid`
    /// (orderquery sends it) and `api_key` [`V2_API_KEY`] (the notification signers' key).
    pub fn wechat_v2_keys(&self, prefix: &str) -> String {
        format!("api_base = \"{}\"\n", self.url(prefix))
    }

    /// The query lines of an `alipay` account aimed at this fake's `{prefix}/gateway.do`; the
    /// account verifies with `alipay.pub.pem`.
    pub fn alipay_keys(&self, prefix: &str) -> String {
        format!(
            "api_base = \"{}\"\napp_private_key_file = \"{}\"\n",
            self.url(&format!("{prefix}/gateway.do")),
            fixture("keys/alipay_app.key.pem").display()
        )
    }
}

fn key_pair(file: &str) -> RsaKeyPair {
    let pem = pem::parse(std::fs::read(fixture(&format!("keys/{file}"))).unwrap()).unwrap();
    RsaKeyPair::from_pkcs8(pem.contents()).unwrap()
}

fn rsa_sign(key: &RsaKeyPair, message: &[u8]) -> String {
    let mut sig = vec![0; key.public().modulus_len()];
    key.sign(&RSA_PKCS1_SHA256, &ring::rand::SystemRandom::new(), message, &mut sig).unwrap();
    B64.encode(sig)
}

/// Verifies with the public half of `key`: the merchant's keys are the fixtures' key pairs.
fn rsa_verify(key: &RsaKeyPair, message: &[u8], signature_b64: &str) -> bool {
    let Ok(signature) = B64.decode(signature_b64) else { return false };
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, key.public().as_ref()).verify(message, &signature).is_ok()
}

fn answer(req: &Received, state: &State, keys: &Keys) -> Canned {
    const V3_QUERY: &str = "/v3/pay/transactions/out-trade-no/";
    let path = req.path.split('?').next().unwrap_or_default();
    if req.method == "GET" && path.contains(V3_QUERY) {
        wechat_v3(req, state, keys)
    } else if req.method == "POST" && path.ends_with("/pay/orderquery") {
        wechat_v2(req, state)
    } else if req.method == "POST" && path.ends_with("/gateway.do") {
        alipay(req, state, keys)
    } else {
        Canned::json(404, r#"{"code":"NOT_FOUND"}"#)
    }
}

/// `GET …/v3/pay/transactions/out-trade-no/{no}?mchid=…`, signed `WECHATPAY2-SHA256-RSA2048`.
fn wechat_v3(req: &Received, state: &State, keys: &Keys) -> Canned {
    let (path, query) = req.path.split_once('?').unwrap_or((&req.path, ""));
    let encoded = path.rsplit('/').next().unwrap_or_default();
    let out_trade_no = percent_decode_str(encoded).decode_utf8_lossy().into_owned();
    let mchid = query.strip_prefix("mchid=").unwrap_or_default();
    let auth = req.headers.get("authorization").map(String::as_str).unwrap_or_default();
    let params: HashMap<&str, &str> = auth
        .strip_prefix("WECHATPAY2-SHA256-RSA2048 ")
        .unwrap_or_default()
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k, v.trim_matches('"')))
        .collect();
    let param = |name: &str| params.get(name).copied().unwrap_or_default();
    // The signed URL is everything after the host, exactly as sent.
    let message = format!("GET\n{}\n{}\n{}\n\n", req.path, param("timestamp"), param("nonce_str"));
    let authentic = rsa_verify(&keys.wx_merchant, message.as_bytes(), param("signature"))
        && param("serial_no") == WX_MERCHANT_SERIAL
        && param("mchid") == mchid
        && req.headers.get("accept").is_some_and(|a| a == "application/json")
        && req.headers.contains_key("user-agent");
    if !authentic {
        // WeChat answers a request it cannot authenticate without signing the answer.
        return Canned::json(401, r#"{"code":"SIGN_ERROR","message":"签名错误"}"#);
    }
    let (status, body) = match state.orders.get(&out_trade_no) {
        _ if state.throttled => (429, json!({"code": "FREQUENCY_LIMITED", "message": "频率超限"})),
        Some(Order::Paid { total_fee }) => {
            let mut tx = WxV3::transaction(&out_trade_no, *total_fee);
            tx["mchid"] = mchid.into();
            tx["transaction_id"] = trade_no(&out_trade_no).into();
            (200, tx)
        }
        Some(Order::Unpaid) => (
            200,
            json!({
                "appid": APPID, "mchid": mchid, "out_trade_no": out_trade_no,
                "trade_state": "NOTPAY", "trade_state_desc": "订单未支付",
                "amount": {"currency": "CNY", "payer_currency": "CNY"}
            }),
        ),
        None => (404, json!({"code": "ORDER_NOT_EXIST", "message": "订单不存在"})),
    };
    let body = body.to_string();
    let signer = if state.bad_signature { &keys.wx_wrong } else { &keys.wx_platform };
    Canned { status, headers: signer.headers(&body, super::now()), body: body.into_bytes(), delay: Duration::ZERO }
}

/// `POST …/pay/orderquery` with a flat XML body signed MD5 with the API key.
fn wechat_v2(req: &Received, state: &State) -> Canned {
    let fields = flat_xml(&String::from_utf8_lossy(&req.body));
    let text = |name: &str| fields.get(name).cloned().unwrap_or_default();
    let authentic = fields.get("sign").is_some_and(|sign| *sign == v2_sign(&fields, V2_API_KEY));
    if !authentic || text("appid").is_empty() || text("mch_id").is_empty() {
        // A request WeChat cannot authenticate gets an unsigned FAIL.
        return xml(&fields_of(&[("return_code", "FAIL"), ("return_msg", "签名错误")]));
    }
    let out_trade_no = text("out_trade_no");
    let mut answer = fields_of(&[
        ("return_code", "SUCCESS"),
        ("return_msg", "OK"),
        ("appid", &text("appid")),
        ("mch_id", &text("mch_id")),
        ("nonce_str", "5K8264ILTKCH16CQ"),
    ]);
    let rest = match state.orders.get(&out_trade_no) {
        Some(Order::Paid { total_fee }) => fields_of(&[
            ("result_code", "SUCCESS"),
            ("out_trade_no", &out_trade_no),
            ("transaction_id", &trade_no(&out_trade_no)),
            ("trade_state", "SUCCESS"),
            ("trade_state_desc", "支付成功"),
            ("total_fee", &total_fee.to_string()),
            ("cash_fee", &total_fee.to_string()),
            ("fee_type", "CNY"),
            ("openid", OPENID),
            ("is_subscribe", "N"),
            ("trade_type", "JSAPI"),
            ("bank_type", "OTHERS"),
            ("attach", r#"{"user_id":"u001"}"#),
            ("time_end", "20261127132935"),
        ]),
        Some(Order::Unpaid) => fields_of(&[
            ("result_code", "SUCCESS"),
            ("out_trade_no", &out_trade_no),
            ("trade_state", "NOTPAY"),
            ("trade_state_desc", "订单未支付"),
        ]),
        None => fields_of(&[("result_code", "FAIL"), ("err_code", "ORDERNOTEXIST"), ("err_code_des", "订单不存在")]),
    };
    answer.extend(rest);
    let key = if state.bad_signature { "ffffffffffffffffffffffffffffffff" } else { V2_API_KEY };
    let sign = v2_sign(&answer, key);
    answer.insert("sign".into(), sign);
    xml(&answer)
}

/// `POST …/gateway.do`, `method=alipay.trade.query`, form signed RSA2 with the app key.
fn alipay(req: &Received, state: &State, keys: &Keys) -> Canned {
    let form: BTreeMap<String, String> = String::from_utf8_lossy(&req.body)
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (form_decode(k), form_decode(v)))
        .collect();
    // Requests are signed over every parameter but `sign`, `sign_type` included.
    let signed = form.iter().filter(|(k, _)| *k != "sign").map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
    let authentic = form.get("sign").is_some_and(|sign| rsa_verify(&keys.alipay_app, signed.as_bytes(), sign))
        && form.get("method").is_some_and(|m| m == "alipay.trade.query")
        && form.get("sign_type").is_some_and(|t| t == "RSA2");
    if !authentic {
        let body = json!({"alipay_trade_query_response": {
            "code": "40002", "msg": "Invalid Arguments", "sub_code": "isv.invalid-signature", "sub_msg": "验签出错"
        }});
        return Canned::json(200, &body.to_string());
    }
    let biz: Value = form.get("biz_content").and_then(|b| serde_json::from_str(b).ok()).unwrap_or_default();
    let out_trade_no = biz["out_trade_no"].as_str().unwrap_or_default().to_string();
    let response = match state.orders.get(&out_trade_no) {
        Some(Order::Paid { total_fee }) => {
            let yuan = format!("{}.{:02}", total_fee / 100, total_fee % 100);
            json!({
                "code": "10000", "msg": "Success", "buyer_logon_id": "tes***@sandbox.com",
                "buyer_pay_amount": yuan, "buyer_user_id": ALIPAY_BUYER_ID, "invoice_amount": yuan,
                "out_trade_no": out_trade_no, "point_amount": "0.00", "receipt_amount": yuan,
                "send_pay_date": "2026-11-27 13:29:35", "total_amount": yuan,
                "trade_no": trade_no(&out_trade_no), "trade_status": "TRADE_SUCCESS"
            })
        }
        Some(Order::Unpaid) => json!({
            "code": "10000", "msg": "Success", "out_trade_no": out_trade_no, "total_amount": "0.00",
            "trade_no": trade_no(&out_trade_no), "trade_status": "WAIT_BUYER_PAY"
        }),
        None => json!({
            "code": "40004", "msg": "Business Failed", "sub_code": "ACQ.TRADE_NOT_EXIST", "sub_msg": "交易不存在"
        }),
    };
    // Alipay signs the response object's text exactly as it appears in the body.
    let text = response.to_string();
    let key = if state.bad_signature { &keys.alipay_app } else { &keys.alipay };
    let sign = rsa_sign(key, text.as_bytes());
    let body = format!(r#"{{"alipay_trade_query_response":{text},"sign":"{sign}"}}"#);
    Canned::json(200, &body)
}

fn fields_of(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// WeChat v2 MD5: sorted non-empty `k=v&…` without `sign`, then `&key=…`, uppercase hex.
fn v2_sign(fields: &BTreeMap<String, String>, key: &str) -> String {
    let mut text: String =
        fields.iter().filter(|(k, v)| *k != "sign" && !v.is_empty()).map(|(k, v)| format!("{k}={v}&")).collect();
    text.push_str(&format!("key={key}"));
    hex::encode_upper(Md5::digest(text.as_bytes()))
}

/// The flat `<xml><k>v</k>…</xml>` WeChat v2 uses, values in CDATA or plain text.
fn flat_xml(text: &str) -> BTreeMap<String, String> {
    let inner = text.trim().strip_prefix("<xml>").and_then(|t| t.strip_suffix("</xml>")).unwrap_or_default();
    let mut fields = BTreeMap::new();
    let mut rest = inner.trim_start();
    while let Some(open) = rest.strip_prefix('<') {
        let Some((name, after)) = open.split_once('>') else { break };
        let close = format!("</{name}>");
        let Some((raw, tail)) = after.split_once(&close) else { break };
        let value = raw.strip_prefix("<![CDATA[").and_then(|v| v.strip_suffix("]]>")).unwrap_or(raw);
        fields.insert(name.to_string(), value.to_string());
        rest = tail.trim_start();
    }
    fields
}

fn xml(fields: &BTreeMap<String, String>) -> Canned {
    let body: String = fields.iter().map(|(k, v)| format!("<{k}><![CDATA[{v}]]></{k}>")).collect();
    Canned {
        status: 200,
        body: format!("<xml>{body}</xml>").into_bytes(),
        headers: vec![("Content-Type".into(), "text/xml".into())],
        delay: Duration::ZERO,
    }
}

/// `application/x-www-form-urlencoded` value: `+` is a space, then `%XX`.
fn form_decode(raw: &str) -> String {
    percent_decode_str(&raw.replace('+', " ")).decode_utf8_lossy().into_owned()
}

