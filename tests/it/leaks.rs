//! Secrets never leak: payhook at debug level, driven through every path (success, each
//! rejection, backend failures, ledger down, admin calls), never writes a configured secret,
//! private key material or decrypted order data to its logs or into any reply body.

use std::time::Duration;

use crate::support::provider_api::*;
use crate::support::signers::*;
use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_or_decrypted_payload_in_logs_or_replies() {
    let mut redis = RedisServer::start().await;
    let (backend, answer) = switchable_backend(Canned::json(200, r#"{"code":0}"#)).await;
    let api = ProviderApi::start().await;
    let extra = format!(
        "{}\n[accounts.aliq]\nprovider = \"alipay\"\napp_id = \"{ALIPAY_APP_ID}\"\nalipay_public_key_file = \"{}\"\n{}",
        accounts_toml(),
        fixture("keys/alipay.pub.pem").display(),
        api.alipay_keys("")
    );
    let cfg = config(&redis_ledger(&redis.url()), &backend.url("/pay/notify"), &extra)
        .replace("timestamp_tolerance = \"5m\"\n", &format!("timestamp_tolerance = \"5m\"\n{}", api.wechat_v3_keys("")));
    let gw = Payhook::start_logging(&cfg, "debug").await;
    let mut replies: Vec<String> = Vec::new();
    let wx = WxV3::public_key_mode();
    let v2 = WxV2::new();
    let ali = Alipay::with_key("alipay.key.pem");

    let post = |path: &'static str, headers: Headers, body: Vec<u8>| {
        let gw = &gw;
        async move { gw.post(path, &headers, &body).await.text() }
    };
    // Success and duplicate for each provider.
    let (h, b) = wx.paid("leak-1", 100);
    replies.push(post("/notify/wx/goods", h.clone(), b.clone().into_bytes()).await);
    replies.push(post("/notify/wx/goods", h.clone(), b.clone().into_bytes()).await);
    replies.push(post("/notify/wxv2/goods", xml_headers(), v2.paid("leak-2", 100).into_bytes()).await);
    replies.push(post("/notify/ali/goods", form_headers(), ali.body(&Alipay::fields("leak-3", "1.00"), false)).await);
    // Each rejection.
    let tamper = b.replace("支付成功", "支付失败");
    replies.push(post("/notify/wx/goods", h.clone(), tamper.into_bytes()).await);
    let stale = wx.headers(&b, now() - 3600);
    replies.push(post("/notify/wx/goods", stale, b.clone().into_bytes()).await);
    let probe: Headers =
        h.iter().map(|(k, v)| (k.clone(), if k == "Wechatpay-Signature" { "WECHATPAY/SIGNTEST/x".into() } else { v.clone() })).collect();
    replies.push(post("/notify/wx/goods", probe, b.clone().into_bytes()).await);
    let stranger = WxV2 { api_key: "another-key-another-key-another!".into() };
    replies.push(post("/notify/wxv2/goods", xml_headers(), stranger.paid("leak-4", 1).into_bytes()).await);
    replies.push(post("/notify/wxv2/goods", xml_headers(), b"<!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]><xml>&e;</xml>".to_vec()).await);
    replies.push(post("/notify/ali/goods", form_headers(), ali.body(&Alipay::fields("leak-5", "1.005"), false)).await);
    replies.push(post("/notify/ali/goods", form_headers(), b"garbage=%%%&sign=AAAA".to_vec()).await);
    // Backend failures.
    for canned in [Canned::json(200, r#"{"code":1}"#), Canned::json(500, "oops"), Canned { delay: Duration::from_millis(1500), ..Canned::json(200, r#"{"code":0}"#) }] {
        *answer.lock().unwrap() = canned;
        let (h, b) = wx.paid("leak-6", 600);
        replies.push(post("/notify/wx/goods", h, b.into_bytes()).await);
    }
    *answer.lock().unwrap() = Canned::json(200, r#"{"code":0}"#);
    // The ledger down.
    redis.stop();
    let (h6, b6) = wx.paid("leak-7", 700);
    replies.push(post("/notify/wx/goods", h6, b6.into_bytes()).await);
    redis.resume().await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Admin calls: sync (paid, forged answer), record, replay, and a wrong token.
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let admin = |method: &'static str, path: String, token: String| {
        let addr = gw.admin;
        async move { send(addr, method, &path, &[("Authorization", &token)], br#"{"type":"goods","await_notify_ms":0}"#).await.unwrap().text() }
    };
    api.paid("leak-8", 800);
    replies.push(admin("POST", "/v1/orders/wx/leak-8/sync".into(), auth.clone()).await);
    replies.push(admin("POST", "/v1/orders/aliq/leak-8/sync".into(), auth.clone()).await);
    api.bad_signature(true);
    api.paid("leak-9", 900);
    replies.push(admin("POST", "/v1/orders/wx/leak-9/sync".into(), auth.clone()).await);
    // leak-8, not leak-1: the private Redis came back empty (it keeps nothing on disk).
    replies.push(admin("GET", "/v1/orders/wx/leak-8".into(), auth.clone()).await);
    replies.push(admin("POST", "/v1/orders/wx/leak-8/replay".into(), auth.clone()).await);
    replies.push(admin("GET", "/v1/orders/wx/leak-1".into(), "Bearer test-admin-token-0123456780".into()).await);
    // The paths above really ran: leak-1, -2, -3, three failing attempts of leak-6, the two syncs
    // of leak-8 and its replay reached the backend; the forged sync and the duplicates did not.
    assert_eq!(backend.count(), 9, "forwards");
    let synced = r#"{"paid":true,"state":"done","forwarded":true,"user_order_success":true}"#;
    assert_eq!(replies[replies.len() - 6..replies.len() - 4], [synced, synced]);
    assert_eq!(replies[replies.len() - 1], "", "a wrong token gets a bare 401");
    assert_eq!(replies[replies.len() - 2], r#"{"user_order_success":true}"#, "the re-push reached the backend");
    assert!(replies[replies.len() - 3].contains(r#""state":"done""#), "{}", replies[replies.len() - 3]);

    let logs = gw.logs();
    assert!(logs.contains("DEBUG"), "payhook ran at debug level");
    let mut secrets = vec![APIV3_KEY.to_string(), V2_API_KEY.to_string(), NOTIFY_KEY.to_string(), ADMIN_TOKEN.to_string()];
    for key in ["wx_merchant.key.pem", "alipay_app.key.pem"] {
        let pem = std::fs::read_to_string(fixture(&format!("keys/{key}"))).unwrap();
        secrets.extend(pem.lines().filter(|l| !l.starts_with("-----")).map(str::to_string));
    }
    // Decrypted order data, by values found nowhere else (a text log escapes the quotes of a JSON
    // string, so a JSON-shaped needle alone would miss a leak): the v3 resource's payer and
    // attach, the v2 and Alipay buyers, and the envelope plaintext's own members (an operator's
    // record shows `total_fee`, never the order data).
    let payload = ["oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", "u001", "oUpF8uMEb4qRXf22hE3X68TekukE", "2088102122524333", "\"notify_info\"", "\"transaction_id\""];
    for needle in secrets.iter().map(String::as_str).chain(payload) {
        assert!(!logs.contains(needle), "the logs contain {needle:?}");
        for reply in &replies {
            assert!(!reply.contains(needle), "a reply contains {needle:?}: {reply}");
        }
    }
}

/// Regression: `payhook simulate` printed `--to` as given, credentials and query included.
#[test]
fn simulate_masks_the_targets_credentials_and_query() {
    let to = format!("http://user:s3cr3t-pw@127.0.0.1:{}/notify/wx/goods?token=s3cr3t-q", free_port());
    let out = payhook_command().args(["simulate", "--provider", "wechat-v3", "--out-trade-no", "m1", "--total-fee", "1", "--to", &to]).output().unwrap();
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "nothing listens there: {printed}");
    assert!(printed.contains("-> http://***@127.0.0.1:") && printed.contains("?token=***"), "{printed}");
    assert!(!printed.contains("s3cr3t"), "{printed}");
}
