//! The active trigger (sync), re-push (replay) and the admin API, against a fake provider API
//! that signs its answers as the providers do.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::provider_api::*;
use crate::support::signers::*;
use crate::support::*;

const REDIS: &str = "redis://127.0.0.1:6379/0";

async fn setup() -> (TestServer, ProviderApi, Payhook) {
    let backend = ok_backend().await;
    let api = ProviderApi::start().await;
    let extra = format!(
        r#"
[accounts.wxv2q]
provider = "wechat-v2"
mch_id = "{V2_MCH_ID}"
appid = "wx2421b1c4370ec43b"
api_key = "{V2_API_KEY}"
{}
[accounts.aliq]
provider = "alipay"
app_id = "{ALIPAY_APP_ID}"
alipay_public_key_file = "{}"
{}
"#,
        api.wechat_v2_keys("/wx2"),
        fixture("keys/alipay.pub.pem").display(),
        api.alipay_keys("/ali")
    );
    let cfg = config(&redis_ledger(REDIS), &backend.url("/pay/notify"), &extra)
        .replace("timestamp_tolerance = \"5m\"\n", &format!("timestamp_tolerance = \"5m\"\n{}", api.wechat_v3_keys("/wx3")));
    let gw = Payhook::start(&cfg).await;
    (backend, api, gw)
}

async fn admin(gw: &Payhook, method: &str, path: &str, body: &str) -> (u16, Value) {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let r = send(gw.admin, method, path, &[("Authorization", &auth), ("Content-Type", "application/json")], body.as_bytes()).await.unwrap();
    (r.status, serde_json::from_slice(&r.body).unwrap_or(Value::Null))
}

async fn sync(gw: &Payhook, account: &str, order: &str) -> (u16, Value) {
    admin(gw, "POST", &format!("/v1/orders/{account}/{order}/sync"), r#"{"type":"goods","await_notify_ms":100}"#).await
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_forwards_a_paid_order_once_and_a_late_notification_does_not_repeat_it() {
    let (backend, api, gw) = setup().await;
    api.paid("sync-1", 4321);
    let (status, body) = sync(&gw, "wx", "sync-1").await;
    assert_eq!((status, body), (200, json!({"paid": true, "state": "done", "forwarded": true, "user_order_success": true})));
    assert_eq!(backend.count(), 1);
    let order = open_ecb(&backend.requests()[0].body, NOTIFY_KEY);
    assert_eq!(order["notify_mode"], 0);
    assert_eq!(order["total_fee"], 4321);
    assert_eq!(order["out_trade_no"], "sync-1");
    assert_eq!(order["transaction_id"], trade_no("sync-1"));
    assert_eq!(order["pay_date"], PAY_DATE_MS);
    assert_eq!(order["openid"], OPENID);
    assert_eq!(order["type"], "goods");

    // The provider's notification arrives late: success, no second forward.
    let (h, b) = WxV3::public_key_mode().paid("sync-1", 4321);
    assert_eq!(gw.post("/notify/wx/goods", &h, b.as_bytes()).await.status, 204);
    assert_eq!(backend.count(), 1);

    // Asking again answers from the ledger, without a provider query.
    let queries = api.count();
    let (status, body) = sync(&gw, "wx", "sync-1").await;
    assert_eq!((status, body), (200, json!({"paid": true, "state": "done", "forwarded": false, "user_order_success": true})));
    assert_eq!(api.count(), queries);

    let (status, record) = admin(&gw, "GET", "/v1/orders/wx/sync-1", "").await;
    assert_eq!(status, 200);
    assert_eq!((record["state"].clone(), record["notify_mode"].clone(), record["attempts"].clone()), (json!("done"), json!(0), json!(1)));
    assert!(record.get("order_data").is_none(), "the admin API never returns order data");
    assert_eq!(gw.metric("payhook_sync_total", &[("account", "wx"), ("result", "forwarded")]).await, 1.0);
    assert_eq!(gw.metric("payhook_sync_total", &[("account", "wx"), ("result", "already_done")]).await, 1.0);
    assert_eq!(gw.metric("payhook_provider_query_duration_seconds_count", &[("account", "wx")]).await, 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_and_notification_racing_forward_exactly_once() {
    let backend = TestServer::start(std::sync::Arc::new(|_| Canned { delay: Duration::from_millis(30), ..Canned::json(200, r#"{"code":0}"#) })).await;
    let api = ProviderApi::start().await;
    let cfg = config(&redis_ledger(REDIS), &backend.url("/pay/notify"), "")
        .replace("timestamp_tolerance = \"5m\"\n", &format!("timestamp_tolerance = \"5m\"\n{}", api.wechat_v3_keys("")));
    let gw = Payhook::start(&cfg).await;
    let wx = WxV3::public_key_mode();
    for i in 0..25 {
        let order = format!("race-{i}");
        api.paid(&order, 100);
        let (h, b) = wx.paid(&order, 100);
        let path = format!("/v1/orders/wx/{order}/sync");
        let (notified, synced) = tokio::join!(gw.post("/notify/wx/goods", &h, b.as_bytes()), admin(&gw, "POST", &path, r#"{"type":"goods","await_notify_ms":0}"#));
        assert_eq!(notified.status, 204, "{order}");
        assert_eq!(synced.0, 200, "{order}: {:?}", synced.1);
        assert_eq!(synced.1["paid"], true);
        assert_eq!(backend.count(), i + 1, "{order} forwarded exactly once");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_of_unpaid_or_unknown_orders_forwards_nothing() {
    let (backend, api, gw) = setup().await;
    api.unpaid("sync-unpaid");
    let (status, body) = sync(&gw, "wx", "sync-unpaid").await;
    assert_eq!((status, body), (200, json!({"paid": false, "state": "none", "forwarded": false, "trade_state": "NOTPAY"})));
    let (_, body) = sync(&gw, "wx", "sync-nobody").await;
    assert_eq!(body["trade_state"], "ORDER_NOT_EXIST");
    let (_, body) = sync(&gw, "wxv2q", "sync-nobody").await;
    assert_eq!(body["trade_state"], "ORDERNOTEXIST");
    let (_, body) = sync(&gw, "aliq", "sync-nobody").await;
    assert_eq!(body["trade_state"], "TRADE_NOT_EXIST");
    assert_eq!(backend.count(), 0);
    assert_eq!(gw.metric("payhook_sync_total", &[("result", "not_paid")]).await, 4.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn wechat_v2_and_alipay_syncs_forward_with_notify_mode_0() {
    let (backend, api, gw) = setup().await;
    api.paid("sync-v2", 1500);
    api.paid("sync-ali", 1234);
    assert_eq!(sync(&gw, "wxv2q", "sync-v2").await.1["forwarded"], true);
    assert_eq!(sync(&gw, "aliq", "sync-ali").await.1["forwarded"], true);
    let orders: Vec<Value> = backend.requests().iter().map(|r| open_ecb(&r.body, NOTIFY_KEY)).collect();
    assert_eq!((orders[0]["provider"].clone(), orders[0]["total_fee"].clone(), orders[0]["notify_mode"].clone()), (json!("wxpay"), json!(1500), json!(0)));
    assert_eq!((orders[1]["provider"].clone(), orders[1]["total_fee"].clone(), orders[1]["notify_mode"].clone()), (json!("alipay"), json!(1234), json!(0)));
    assert_eq!(orders[1]["openid"], ALIPAY_BUYER_ID);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_answer_that_does_not_verify_is_a_502_and_touches_nothing() {
    let (backend, api, gw) = setup().await;
    api.paid("sync-forged", 100);
    api.bad_signature(true);
    for account in ["wx", "wxv2q", "aliq"] {
        let (status, body) = sync(&gw, account, "sync-forged").await;
        assert_eq!((status, body), (502, json!({"error": "query_unverified"})), "{account}");
    }
    api.bad_signature(false);
    api.delay(Duration::from_secs(6));
    let (status, body) = sync(&gw, "wx", "sync-forged").await;
    assert_eq!((status, body), (502, json!({"error": "query_timeout"})));
    assert_eq!(backend.count(), 0);
    let (_, record) = admin(&gw, "GET", "/v1/orders/wx/sync-forged", "").await;
    assert_eq!(record, json!({"account": "wx", "out_trade_no": "sync-forged", "state": "none", "registered": false}));
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_forwards_a_done_order_again_and_records_it() {
    let (backend, _api, gw) = setup().await;
    let (h, b) = WxV3::public_key_mode().paid("replay-1", 777);
    assert_eq!(gw.post("/notify/wx/goods", &h, b.as_bytes()).await.status, 204);
    let (status, body) = admin(&gw, "POST", "/v1/orders/wx/replay-1/replay", "").await;
    assert_eq!((status, body), (200, json!({"user_order_success": true})));
    assert_eq!(backend.count(), 2);
    let (first, again) = (open_ecb(&backend.requests()[0].body, NOTIFY_KEY), open_ecb(&backend.requests()[1].body, NOTIFY_KEY));
    assert_eq!(first, again, "the stored order data is sent again unchanged");
    let (_, record) = admin(&gw, "GET", "/v1/orders/wx/replay-1", "").await;
    assert_eq!((record["replays"].clone(), record["last_replay"].clone(), record["state"].clone()), (json!(1), json!("ok"), json!("done")));
    assert_eq!(gw.metric("payhook_replays_total", &[("type", "goods"), ("result", "ok")]).await, 1.0);
    let (status, body) = admin(&gw, "POST", "/v1/orders/wx/never-seen/replay", "").await;
    assert_eq!((status, body), (409, json!({"error": "not_done"})));
    assert!(gw.logs().contains("admin action") && gw.logs().contains("who=\"admin\""), "audit line:\n{}", gw.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_wants_the_token() {
    let (backend, api, gw) = setup().await;
    api.paid("auth-1", 100);
    for auth in [None, Some("Bearer wrong-token-wrong-token"), Some("Bearer "), Some(ADMIN_TOKEN)] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", *a)).collect();
        for (method, path) in [("GET", "/v1/orders/wx/auth-1"), ("POST", "/v1/orders/wx/auth-1/sync"), ("POST", "/v1/orders/wx/auth-1/replay")] {
            let r = send(gw.admin, method, path, &headers, br#"{"type":"goods"}"#).await.unwrap();
            assert_eq!((r.status, r.body.len()), (401, 0), "{method} {path} with {auth:?}");
        }
    }
    assert_eq!((backend.count(), api.count()), (0, 0), "nothing happened without the token");
    assert_eq!(crate::support::http::get(gw.admin, "/metrics", &[]).await.status, 200, "metrics stay open to the scraper");
}
