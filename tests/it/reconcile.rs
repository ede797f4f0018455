//! Order registration, amount/type cross-checks and the reconciliation sweep, against the fake
//! provider API (seconds-scale settings).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::provider_api::*;
use crate::support::signers::*;
use crate::support::*;

const REDIS: &str = "redis://127.0.0.1:6379/0";

/// Seconds-scale sweep settings: first query 1 s after registration, then every 1 s (doubling to 4 s).
const RECONCILE: &str = "[reconcile]\nfirst_check = \"1s\"\ninterval = \"1s\"\nmax_interval = \"4s\"\ngive_up_after = \"1h\"\nmax_queries_per_second = 20\n";

fn vip_route(url: &str) -> String {
    format!("[routes.vip]\nbackend = \"{url}\"\nenvelope = \"aes-256-ecb\"\nnotify_key = \"${{PAYHOOK_TEST_NOTIFY_KEY}}\"\ntimeout = \"1s\"\n")
}

/// A gateway whose accounts `wx` (v3), `wxv2q` (v2) and `aliq` (Alipay) query `api`; `extra`
/// is appended (routes, a `[reconcile]` section).
fn gateway_config(ledger: &str, backend: &str, api: &ProviderApi, extra: &str) -> String {
    let accounts = format!(
        "[accounts.wxv2q]\nprovider = \"wechat-v2\"\nmch_id = \"{V2_MCH_ID}\"\nappid = \"wx2421b1c4370ec43b\"\napi_key = \"{V2_API_KEY}\"\n{}\n\
         [accounts.aliq]\nprovider = \"alipay\"\napp_id = \"{ALIPAY_APP_ID}\"\nalipay_public_key_file = \"{}\"\n{}\n{extra}",
        api.wechat_v2_keys("/wx2"),
        fixture("keys/alipay.pub.pem").display(),
        api.alipay_keys("/ali")
    );
    config(ledger, backend, &accounts).replace("timestamp_tolerance = \"5m\"\n", &format!("timestamp_tolerance = \"5m\"\n{}", api.wechat_v3_keys("/wx3")))
}

async fn admin(gw: &Payhook, method: &str, path: &str, body: &str) -> (u16, Value) {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let r = send(gw.admin, method, path, &[("Authorization", &auth), ("Content-Type", "application/json")], body.as_bytes()).await.unwrap();
    (r.status, serde_json::from_slice(&r.body).unwrap_or(Value::Null))
}

async fn register(gw: &Payhook, account: &str, order: &str, body: Value) -> (u16, Value) {
    admin(gw, "PUT", &format!("/v1/orders/{account}/{order}"), &body.to_string()).await
}

/// The fake provider's queries for `order` (any provider's path or body names it).
fn queries_for(api: &ProviderApi, order: &str) -> Vec<Instant> {
    api.requests()
        .iter()
        .filter(|r| r.path.contains(&format!("/{order}?")) || String::from_utf8_lossy(&r.body).contains(order))
        .map(|r| r.at)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_notification_is_delivered_by_the_sweep_with_the_registered_fields() {
    let backend = ok_backend().await;
    let api = ProviderApi::start().await;
    let gw = Payhook::start(&gateway_config(&redis_ledger(REDIS), &backend.url("/pay"), &api, RECONCILE)).await;
    let fields = json!({"user_id": "u001", "recharge_balance": 100, "out_trade_no": "must-not-override", "total_fee": 1});
    let started = Instant::now();
    for (account, order) in [("wx", "lost-v3"), ("wxv2q", "lost-v2"), ("aliq", "lost-ali")] {
        let (status, body) = register(&gw, account, order, json!({"type": "goods", "total_fee": 1234, "fields": fields})).await;
        assert_eq!((status, body), (201, json!({"registered": true})));
        api.paid(order, 1234);
    }
    // first_check (1 s) + one interval (1 s) + a tick, with slack for a loaded test machine.
    eventually(Duration::from_secs(4), "three recovered orders", || backend.count() == 3).await;
    println!("sweep: registered to delivered in {:?} (first_check 1s, interval 1s)", started.elapsed());
    let mut seen = HashMap::new();
    for req in backend.requests() {
        let order = open_ecb(&req.body, NOTIFY_KEY);
        seen.insert(order["out_trade_no"].as_str().unwrap().to_string(), order);
    }
    for (account, order) in [("wx", "lost-v3"), ("wxv2q", "lost-v2"), ("aliq", "lost-ali")] {
        let data = &seen[order];
        assert_eq!((data["notify_mode"].clone(), data["type"].clone(), data["total_fee"].clone()), (json!(0), json!("goods"), json!(1234)), "{order}");
        assert_eq!((data["user_id"].clone(), data["recharge_balance"].clone()), (json!("u001"), json!(100)), "{order}: registered fields merged");
        assert_eq!(data["out_trade_no"], order, "a registered field never overrides a derived one");
        assert_eq!(gw.metric("payhook_recovered_total", &[("account", account), ("type", "goods")]).await, 1.0);
        assert_eq!(gw.metric("payhook_reconcile_queries_total", &[("account", account), ("result", "paid")]).await, 1.0);
        assert_eq!(gw.metric("payhook_payment_to_delivery_seconds_count", &[("account", account), ("source", "sweep")]).await, 1.0);
        let (_, record) = admin(&gw, "GET", &format!("/v1/orders/{account}/{order}"), "").await;
        assert_eq!((record["state"].clone(), record["registered"].clone()), (json!("done"), json!(true)));
    }
    // The late notification: acknowledged, not forwarded again; the sweep stops asking.
    let (h, b) = WxV3::public_key_mode().paid("lost-v3", 1234);
    assert_eq!(gw.post("/notify/wx/goods", &h, b.as_bytes()).await.status, 204);
    let queries = api.count();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!((backend.count(), api.count()), (3, queries));
    assert_eq!(gw.metric("payhook_orders_pending", &[("account", "wx")]).await, 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_query_each_due_order_once_per_round_and_forward_once() {
    let backend = ok_backend().await;
    let api = ProviderApi::start().await;
    let a = Payhook::start(&gateway_config(&redis_ledger(REDIS), &backend.url("/pay"), &api, RECONCILE)).await;
    let b = a.sibling().await;
    let orders: Vec<String> = (0..6).map(|i| format!("pair-{i}")).collect();
    for order in &orders {
        api.unpaid(order);
        assert_eq!(register(&a, "wx", order, json!({"type": "goods", "total_fee": 500})).await.0, 201);
    }
    // Unpaid for a few rounds (1 s, then 2 s apart): each round queries each order once.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    for order in &orders {
        let at = queries_for(&api, order);
        assert!(at.len() >= 2, "{order} queried {} times", at.len());
        for pair in at.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(gap >= Duration::from_millis(800), "{order} queried twice in one round ({gap:?} apart)");
        }
    }
    for order in &orders {
        api.paid(order, 500);
    }
    // Their next query is at most max_interval (4 s) away.
    eventually(Duration::from_secs(10), "every order forwarded", || backend.count() == orders.len()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(backend.count(), orders.len(), "each order forwarded once by two instances");
    let recovered = a.metric("payhook_recovered_total", &[("account", "wx")]).await + b.metric("payhook_recovered_total", &[("account", "wx")]).await;
    assert_eq!(recovered, orders.len() as f64);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_notification_arriving_as_the_sweep_is_due_forwards_once() {
    let backend = TestServer::start(std::sync::Arc::new(|_| Canned { delay: Duration::from_millis(300), ..Canned::json(200, r#"{"code":0}"#) })).await;
    let api = ProviderApi::start().await;
    let gw = Payhook::start(&gateway_config(&redis_ledger(REDIS), &backend.url("/pay"), &api, RECONCILE)).await;
    for i in 0..5 {
        let order = format!("race-{i}");
        api.paid(&order, 700);
        assert_eq!(register(&gw, "wx", &order, json!({"type": "goods", "total_fee": 700})).await.0, 201);
    }
    // The first query falls 1 s after registration: the notifications arrive around it.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let wx = WxV3::public_key_mode();
    for i in 0..5 {
        let (h, b) = wx.paid(&format!("race-{i}"), 700);
        assert_eq!(gw.post("/notify/wx/goods", &h, b.as_bytes()).await.status, 204);
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(backend.count(), 5, "one forward per order");
}

#[tokio::test(flavor = "multi_thread")]
async fn mismatches_are_quarantined_listed_and_resolved_by_an_operator() {
    let (goods, vip) = (ok_backend().await, ok_backend().await);
    let api = ProviderApi::start().await;
    let extra = format!("{}[reconcile]\nenabled = false\n", vip_route(&vip.url("/vip")));
    let gw = Payhook::start(&gateway_config(&redis_ledger(REDIS), &goods.url("/goods"), &api, &extra)).await;
    let wx = WxV3::public_key_mode();

    // Amount mismatch: quarantined, failure reply, both values in the record, listed.
    register(&gw, "wx", "q-amount", json!({"type": "goods", "total_fee": 1234, "fields": {"user_id": "u7"}})).await;
    let (h, b) = wx.paid("q-amount", 1000);
    let r = gw.post("/notify/wx/goods", &h, b.as_bytes()).await;
    assert_eq!((r.status, r.text()), (500, r#"{"code":"FAIL","message":"amount_mismatch"}"#.to_string()));
    assert_eq!(gw.post("/notify/wx/goods", &h, b.as_bytes()).await.status, 500, "the retry too");
    assert_eq!(goods.count(), 0);
    assert_eq!(gw.metric("payhook_quarantined_total", &[("account", "wx"), ("type", "goods"), ("reason", "amount_mismatch")]).await, 1.0);
    let (_, record) = admin(&gw, "GET", "/v1/orders/wx/q-amount", "").await;
    assert_eq!(record["state"], "quarantined");
    assert_eq!(
        record["quarantine"],
        json!({"reason": "amount_mismatch", "notified_type": "goods", "notified_total_fee": 1000, "registered_type": "goods",
               "registered_total_fee": 1234, "at_ms": record["quarantine"]["at_ms"]})
    );
    let logs = gw.logs();
    assert_eq!(logs.lines().filter(|l| l.contains("ERROR") && l.contains("quarantined") && l.contains("q-amount")).count(), 1, "{logs}");

    // Type mismatch against the registration.
    register(&gw, "wx", "q-type", json!({"type": "goods", "total_fee": 500})).await;
    let (h2, b2) = wx.paid("q-type", 500);
    let r = gw.post("/notify/wx/vip", &h2, b2.as_bytes()).await;
    assert_eq!((r.status, r.text()), (500, r#"{"code":"FAIL","message":"type_mismatch"}"#.to_string()));
    assert_eq!(gw.metric("payhook_quarantined_total", &[("account", "wx"), ("type", "vip"), ("reason", "type_mismatch")]).await, 1.0);

    let (status, list) = admin(&gw, "GET", "/v1/orders?state=quarantined&account=wx", "").await;
    assert_eq!(status, 200);
    let listed: Vec<&str> = list["orders"].as_array().unwrap().iter().map(|o| o["out_trade_no"].as_str().unwrap()).collect();
    assert_eq!(listed, ["q-type", "q-amount"], "newest first");

    // An operator forwards the amount mismatch: once, to the registered type, with its fields.
    let (status, body) = admin(&gw, "POST", "/v1/orders/wx/q-amount/resolve", r#"{"action":"forward"}"#).await;
    assert_eq!((status, body), (200, json!({"action": "forward", "user_order_success": true})));
    assert_eq!(goods.count(), 1);
    let order = open_ecb(&goods.requests()[0].body, NOTIFY_KEY);
    assert_eq!((order["out_trade_no"].clone(), order["total_fee"].clone(), order["user_id"].clone()), (json!("q-amount"), json!(1000), json!("u7")));
    assert_eq!(gw.post("/notify/wx/goods", &h, b.as_bytes()).await.status, 204, "the provider's next retry is acknowledged");
    assert_eq!(goods.count(), 1);
    assert_eq!(admin(&gw, "POST", "/v1/orders/wx/q-amount/resolve", r#"{"action":"forward"}"#).await.0, 409);

    // An operator dismisses the type mismatch: the retry is acknowledged, never forwarded.
    let (status, body) = admin(&gw, "POST", "/v1/orders/wx/q-type/resolve", r#"{"action":"dismiss"}"#).await;
    assert_eq!((status, body), (200, json!({"action": "dismiss", "state": "dismissed"})));
    assert_eq!(gw.post("/notify/wx/vip", &h2, b2.as_bytes()).await.status, 204);
    assert_eq!((goods.count(), vip.count()), (1, 0));
    let (_, list) = admin(&gw, "GET", "/v1/orders?state=quarantined", "").await;
    assert_eq!(list["orders"], json!([]));
    let audits = gw.logs().lines().filter(|l| l.contains("payhook::audit") && l.contains("action=\"resolve\"")).count();
    assert_eq!(audits, 3);

    // One notify URL per account: the registered type decides; unregistered is quarantined.
    register(&gw, "wx", "one-url", json!({"type": "vip", "total_fee": 300, "fields": {"level": 2}})).await;
    let (h, b) = wx.paid("one-url", 300);
    assert_eq!(gw.post("/notify/wx", &h, b.as_bytes()).await.status, 204);
    assert_eq!(vip.count(), 1);
    assert_eq!(open_ecb(&vip.requests()[0].body, NOTIFY_KEY)["level"], 2);
    let (h, b) = wx.paid("no-registration", 300);
    let r = gw.post("/notify/wx", &h, b.as_bytes()).await;
    assert_eq!((r.status, r.text()), (500, r#"{"code":"FAIL","message":"unregistered"}"#.to_string()));
    assert_eq!(gw.metric("payhook_quarantined_total", &[("account", "wx"), ("reason", "unregistered")]).await, 1.0);
    let (status, _) = admin(&gw, "POST", "/v1/orders/wx/no-registration/resolve", r#"{"action":"forward"}"#).await;
    assert_eq!(status, 400, "no registered or notified type: the operator names one");
    let (status, _) = admin(&gw, "POST", "/v1/orders/wx/no-registration/resolve", r#"{"action":"forward","type":"goods"}"#).await;
    assert_eq!((status, goods.count()), (200, 2));
}

/// Regression: after an operator's `resolve forward` as `goods` met a failing backend, the
/// provider's next retry (its notify URL still names `vip`) was delivered to `vip`, the type the
/// operator had turned down. The operator's type now holds until the order is done.
#[tokio::test(flavor = "multi_thread")]
async fn a_resolved_order_keeps_the_operators_type_when_its_backend_fails() {
    let (goods, goods_answer) = switchable_backend(Canned::json(200, r#"{"code":1,"msg":"db down"}"#)).await;
    let vip = ok_backend().await;
    let api = ProviderApi::start().await;
    let extra = format!("{}[reconcile]\nenabled = false\n", vip_route(&vip.url("/vip")));
    let gw = Payhook::start(&gateway_config(&redis_ledger(REDIS), &goods.url("/goods"), &api, &extra)).await;
    let wx = WxV3::public_key_mode();
    let order = unique("q-pinned");
    register(&gw, "wx", &order, json!({"type": "goods", "total_fee": 500})).await;
    let (h, b) = wx.paid(&order, 500);
    let r = gw.post("/notify/wx/vip", &h, b.as_bytes()).await;
    assert_eq!((r.status, r.text()), (500, r#"{"code":"FAIL","message":"type_mismatch"}"#.to_string()));

    let path = format!("/v1/orders/wx/{order}/resolve");
    let (status, body) = admin(&gw, "POST", &path, r#"{"action":"forward","type":"goods"}"#).await;
    assert_eq!((status, body), (200, json!({"action": "forward", "user_order_success": false, "reason": "rejected"})));
    assert_eq!(goods.count(), 1);

    // The provider retries under the URL it was given: the order goes to goods, never to vip.
    *goods_answer.lock().unwrap() = Canned::json(200, r#"{"code":0}"#);
    let r = gw.post("/notify/wx/vip", &h, b.as_bytes()).await;
    assert_eq!((r.status, r.text()), (204, String::new()));
    assert_eq!((goods.count(), vip.count()), (2, 0));
    let delivered = open_ecb(&goods.requests()[1].body, NOTIFY_KEY);
    assert_eq!((delivered["out_trade_no"].as_str(), delivered["type"].as_str()), (Some(order.as_str()), Some("goods")));
    let (_, record) = admin(&gw, "GET", &format!("/v1/orders/wx/{order}"), "").await;
    assert_eq!((record["state"].as_str(), record["type"].as_str()), (Some("done"), Some("goods")));
    assert_eq!(gw.post("/notify/wx/vip", &h, b.as_bytes()).await.status, 500, "done under goods: a vip notification is a type conflict");
    assert_eq!((goods.count(), vip.count()), (2, 0));
}

/// The operators' list is written after the record; losing that write (a crash between the two,
/// here the list deleted by hand) must not hide a held payment: the provider's retry lists it again.
#[tokio::test(flavor = "multi_thread")]
async fn a_held_order_missing_from_the_list_is_listed_again_by_the_providers_retry() {
    let goods = ok_backend().await;
    let api = ProviderApi::start().await;
    let ledger = redis_ledger(REDIS);
    let list_key = format!("{}quarantined:wx", key_prefix(&ledger));
    let gw = Payhook::start(&gateway_config(&ledger, &goods.url("/goods"), &api, "[reconcile]\nenabled = false\n")).await;
    let wx = WxV3::public_key_mode();
    let listed = || async {
        let (_, list) = admin(&gw, "GET", "/v1/orders?state=quarantined&account=wx", "").await;
        list["orders"].as_array().unwrap().iter().map(|o| (o["out_trade_no"].as_str().unwrap().to_string(), o["quarantine"]["at_ms"].clone())).collect::<Vec<_>>()
    };

    register(&gw, "wx", "q-unlisted", json!({"type": "goods", "total_fee": 1234})).await;
    let (h, b) = wx.paid("q-unlisted", 1000);
    assert_eq!(gw.post("/notify/wx/goods", &h, b.as_bytes()).await.status, 500);
    let first = listed().await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].0, "q-unlisted");
    let held_since = redis_cli(&["ZSCORE", &list_key, &format!("wechat:{MCHID}:q-unlisted")]);
    assert_eq!(held_since, first[0].1.to_string(), "listed at the quarantine time");

    assert_eq!(redis_cli(&["DEL", &list_key]), "1");
    assert_eq!(listed().await, vec![]);
    let r = gw.post("/notify/wx/goods", &h, b.as_bytes()).await;
    assert_eq!((r.status, r.text()), (500, r#"{"code":"FAIL","message":"amount_mismatch"}"#.to_string()), "still held");
    assert_eq!(listed().await, first, "listed again, at its first quarantine time");
    assert_eq!(goods.count(), 0);
    assert_eq!(gw.metric("payhook_quarantined_total", &[("account", "wx"), ("type", "goods"), ("reason", "amount_mismatch")]).await, 1.0, "counted once");

    // Once resolved, a late retry does not put it back.
    assert_eq!(admin(&gw, "POST", "/v1/orders/wx/q-unlisted/resolve", r#"{"action":"dismiss"}"#).await.0, 200);
    assert_eq!(gw.post("/notify/wx/goods", &h, b.as_bytes()).await.status, 204);
    assert_eq!(listed().await, vec![]);
}

#[tokio::test(flavor = "multi_thread")]
async fn registration_is_idempotent_validated_and_listed_and_can_be_required() {
    let backend = ok_backend().await;
    let api = ProviderApi::start().await;
    let extra = "[reconcile]\nenabled = false\n";
    let ledger = redis_ledger(REDIS);
    let cfg = gateway_config(&ledger, &backend.url("/pay"), &api, extra).replace("[accounts.wxv2q]", "[accounts.wxv2q]\nrequire_registration = true");
    let gw = Payhook::start(&cfg).await;
    let order = json!({"type": "goods", "total_fee": 1234, "expires_in": "2h", "fields": {"user_id": "u001", "recharge_balance": 100}});
    let before = chrono_ms();
    assert_eq!(register(&gw, "wx", "reg-1", order.clone()).await, (201, json!({"registered": true})));
    let (pending_key, member) = (format!("{}pending:wx", key_prefix(&ledger)), format!("wechat:{MCHID}:reg-1"));
    let listed_at = redis_cli(&["ZSCORE", &pending_key, &member]);
    assert_eq!(register(&gw, "wx", "reg-1", order.clone()).await, (200, json!({"registered": true})));
    assert_eq!(redis_cli(&["ZSCORE", &pending_key, &member]), listed_at, "a repeat keeps the first time");
    // The list is written after the record: when the first call stopped between the two (its
    // answer lost), the backend's repeat lists the order.
    assert_eq!(redis_cli(&["ZREM", &pending_key, &member]), "1");
    assert_eq!(register(&gw, "wx", "reg-1", order.clone()).await, (200, json!({"registered": true})));
    assert_ne!(redis_cli(&["ZSCORE", &pending_key, &member]), "", "listed again");
    assert_eq!(register(&gw, "wx", "reg-1", json!({"type": "goods", "total_fee": 999})).await, (409, json!({"error": "conflict"})));
    assert_eq!(register(&gw, "wx", "reg-1", json!({"type": "vip", "total_fee": 1234})).await.0, 400, "vip is no route here");

    let (_, record) = admin(&gw, "GET", "/v1/orders/wx/reg-1", "").await;
    assert_eq!((record["registered"].clone(), record["type"].clone(), record["total_fee"].clone()), (json!(true), json!("goods"), json!(1234)));
    let expires_at = record["expires_at"].as_i64().unwrap();
    assert!((before + 7_200_000..before + 7_260_000).contains(&expires_at), "{expires_at}");
    assert!(record.get("fields").is_none(), "fields only when asked");
    let (_, record) = admin(&gw, "GET", "/v1/orders/wx/reg-1?fields=1", "").await;
    assert_eq!(record["fields"], json!({"user_id": "u001", "recharge_balance": 100}));

    let big = "x".repeat(4100);
    for (body, reason) in [
        (json!({"type": "goods", "total_fee": 0}), "total_fee"),
        (json!({"type": "goods", "total_fee": -5}), "total_fee"),
        (json!({"type": "goods", "total_fee": "12"}), "total_fee"),
        (json!({"type": "goods", "total_fee": 1.5}), "total_fee"),
        (json!({"type": "goods", "total_fee": 1, "fields": [1]}), "fields must be a JSON object"),
        (json!({"type": "goods", "total_fee": 1, "fields": {"big": big}}), "fields must be at most 4096 bytes"),
        (json!({"type": "goods", "total_fee": 1, "expires_in": "soon"}), "expires_in"),
        // Regression: past ~292 million years the expiry overflowed (a panic in debug builds).
        (json!({"type": "goods", "total_fee": 1, "expires_in": "300000000y"}), "expires_in must be at most 400d"),
        (json!({"type": "goods", "total_fee": 1, "expires_in": "401d"}), "expires_in must be at most 400d"),
        (json!({"type": "goods", "total_fee": 1, "expires_in": "0s"}), "expires_in must be above 0"),
        (json!({"type": "goods", "total_fee": 1, "colour": "red"}), "unknown field"),
        (json!({"total_fee": 1}), "type"),
        (json!({"type": "nope", "total_fee": 1}), "not a configured route"),
    ] {
        let (status, answer) = register(&gw, "wx", "reg-bad", body.clone()).await;
        assert_eq!(status, 400, "{body}");
        assert!(answer["error"].as_str().unwrap().contains(reason), "{body}: {answer}");
    }
    let r = send(gw.admin, "PUT", "/v1/orders/wx/reg-2", &[], order.to_string().as_bytes()).await.unwrap();
    assert_eq!(r.status, 401);

    // Pending, newest first, with a cursor across pages.
    for i in 2..=5 {
        register(&gw, "wx", &format!("reg-{i}"), json!({"type": "goods", "total_fee": 100})).await;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let mut seen = Vec::new();
    let mut path = "/v1/orders?state=pending&account=wx&limit=2".to_string();
    loop {
        let (status, page) = admin(&gw, "GET", &path, "").await;
        assert_eq!(status, 200);
        seen.extend(page["orders"].as_array().unwrap().iter().map(|o| o["out_trade_no"].as_str().unwrap().to_string()));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/orders?state=pending&account=wx&limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, ["reg-5", "reg-4", "reg-3", "reg-2", "reg-1"]);
    assert_eq!(admin(&gw, "GET", "/v1/orders?state=everything", "").await.0, 400);

    // require_registration: a paid, never registered order is quarantined.
    let r = gw.post("/notify/wxv2q/goods", &xml_headers(), WxV2::new().paid("never-registered", 100).as_bytes()).await;
    assert_eq!((r.status, r.text()), (200, v2_fail("unregistered")));
    assert_eq!(backend.count(), 0);
    assert_eq!(gw.metric("payhook_quarantined_total", &[("account", "wxv2q"), ("reason", "unregistered")]).await, 1.0);
    register(&gw, "wxv2q", "registered-v2", json!({"type": "goods", "total_fee": 100})).await;
    let r = gw.post("/notify/wxv2q/goods", &xml_headers(), WxV2::new().paid("registered-v2", 100).as_bytes()).await;
    assert_eq!((r.status, r.text()), (200, V2_SUCCESS.to_string()));
    assert_eq!(backend.count(), 1);
}

fn chrono_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

#[tokio::test(flavor = "multi_thread")]
async fn a_throttling_provider_is_backed_off_and_the_rate_holds() {
    let backend = ok_backend().await;
    let api = ProviderApi::start().await;
    let settings = RECONCILE.replace("max_queries_per_second = 20", "max_queries_per_second = 3");
    let a = Payhook::start(&gateway_config(&redis_ledger(REDIS), &backend.url("/pay"), &api, &settings)).await;
    let b = a.sibling().await;
    api.throttle(true);
    let orders: Vec<String> = (0..12).map(|i| format!("throttle-{i}")).collect();
    for order in &orders {
        api.paid(order, 100);
        register(&a, "wx", order, json!({"type": "goods", "total_fee": 100})).await;
    }
    tokio::time::sleep(Duration::from_millis(5000)).await;
    let throttled = a.metric("payhook_reconcile_queries_total", &[("result", "throttled")]).await
        + b.metric("payhook_reconcile_queries_total", &[("result", "throttled")]).await;
    assert!(throttled >= 3.0, "throttled answers counted: {throttled}");
    api.throttle(false);
    eventually(Duration::from_secs(15), "every order delivered after the throttling", || backend.count() == orders.len()).await;
    // Over the whole run, two instances together never exceeded 3 queries in any second.
    let mut at: Vec<Instant> = api.requests().iter().map(|r| r.at).collect();
    at.sort();
    let busiest = at.iter().enumerate().map(|(i, t)| at[i..].iter().take_while(|u| **u - *t < Duration::from_millis(950)).count()).max().unwrap_or(0);
    println!("throttled provider: queries={} busiest_second={busiest} (max 3)", at.len());
    assert!(busiest <= 3, "{busiest} queries within one second");
}

#[tokio::test(flavor = "multi_thread")]
async fn unpaid_until_expiry_is_closed_and_a_restart_resumes_the_schedule() {
    let backend = ok_backend().await;
    let api = ProviderApi::start().await;
    let mut gw = Payhook::start(&gateway_config(&embedded_ledger(), &backend.url("/pay"), &api, RECONCILE)).await;
    api.unpaid("expire-1");
    register(&gw, "wx", "expire-1", json!({"type": "goods", "total_fee": 100, "expires_in": "2500ms"})).await;
    eventually(Duration::from_secs(12), "closed", || queries_for(&api, "expire-1").len() >= 3).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_, record) = admin(&gw, "GET", "/v1/orders/wx/expire-1", "").await;
    assert_eq!(record["state"], "closed");
    assert_eq!(gw.metric("payhook_reconcile_queries_total", &[("account", "wx"), ("result", "closed")]).await, 1.0);
    let asked = queries_for(&api, "expire-1").len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(queries_for(&api, "expire-1").len(), asked, "no query after closing");

    // Registered, then payhook restarts before the first query: the schedule is in the ledger.
    api.unpaid("restart-1");
    register(&gw, "wx", "restart-1", json!({"type": "goods", "total_fee": 100})).await;
    gw.restart().await;
    api.paid("restart-1", 100);
    eventually(Duration::from_secs(5), "swept after the restart", || backend.count() == 1).await;
    assert_eq!(open_ecb(&backend.requests()[0].body, NOTIFY_KEY)["out_trade_no"], "restart-1");
}
