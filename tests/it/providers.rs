//! WeChat Pay v2 and Alipay on the same path as v3, and v3 certificate rotation.

use serde_json::json;

use crate::support::signers::*;
use crate::support::*;

const REDIS: &str = "redis://127.0.0.1:6379/0";

async fn gateway() -> (TestServer, Payhook) {
    let backend = ok_backend().await;
    let gw = Payhook::start(&config(&redis_ledger(REDIS), &backend.url("/pay/notify"), &accounts_toml())).await;
    (backend, gw)
}

#[tokio::test(flavor = "multi_thread")]
async fn wechat_v2_forwards_once_and_rejects_forgeries() {
    let (backend, gw) = gateway().await;
    let v2 = WxV2::new();
    let body = v2.paid("v2-order-1", 888);
    let r = gw.post("/notify/wxv2/goods", &xml_headers(), body.as_bytes()).await;
    assert_eq!((r.status, r.text().as_str()), (200, V2_SUCCESS));
    assert_eq!(r.headers["content-type"], "text/xml");
    assert_eq!(backend.count(), 1);
    let order = open_ecb(&backend.requests()[0].body, NOTIFY_KEY);
    assert_eq!(order["out_trade_no"], "v2-order-1");
    assert_eq!(order["total_fee"], 888);
    assert_eq!(order["provider"], "wxpay");
    assert_eq!(order["mch_id"], V2_MCH_ID);
    assert_eq!(order["transaction_id"], "1004400740201409030005092168");
    assert_eq!(order["pay_date"], 1_795_757_375_000i64);
    assert_eq!(order["attach"], json!({"coupon": "A1"}));
    assert_eq!(order["notify_info"]["coupon_fee_0"], "10", "fields unknown to payhook are kept (and were signed)");

    // The provider's retry: success, no second forward.
    let r = gw.post("/notify/wxv2/goods", &xml_headers(), body.as_bytes()).await;
    assert_eq!(r.text(), V2_SUCCESS);
    assert_eq!(backend.count(), 1);

    let tampered = body.replace("<total_fee><![CDATA[888]]>", "<total_fee><![CDATA[1]]>");
    assert_eq!(gw.post("/notify/wxv2/goods", &xml_headers(), tampered.as_bytes()).await.text(), v2_fail("bad_signature"));
    let stranger = WxV2 { api_key: "another-key-another-key-another!".into() };
    let forged = stranger.paid("v2-order-2", 888);
    assert_eq!(gw.post("/notify/wxv2/goods", &xml_headers(), forged.as_bytes()).await.text(), v2_fail("bad_signature"));
    let mut foreign = WxV2::fields("v2-order-3", 888);
    foreign.insert("mch_id".into(), "19999999".into());
    let sign = v2.sign_md5(&foreign);
    foreign.insert("sign".into(), sign);
    let r = gw.post("/notify/wxv2/goods", &xml_headers(), WxV2::xml(&foreign).as_bytes()).await;
    assert_eq!(r.text(), v2_fail("merchant_mismatch"));
    assert_eq!(backend.count(), 1, "nothing forged was forwarded");
    assert_eq!(gw.metric("payhook_verify_failures_total", &[("account", "wxv2"), ("reason", "bad_signature")]).await, 2.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn wechat_v2_xxe_is_rejected_without_expanding_the_entity() {
    let (backend, gw) = gateway().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, "TOP-SECRET-MARKER").unwrap();
    let xxe = format!(
        "<?xml version=\"1.0\"?><!DOCTYPE xml [<!ENTITY xxe SYSTEM \"file://{}\">]><xml><return_code>SUCCESS</return_code><attach>&xxe;</attach></xml>",
        secret.display()
    );
    let r = gw.post("/notify/wxv2/goods", &xml_headers(), xxe.as_bytes()).await;
    assert_eq!(r.text(), v2_fail("xml_doctype"));
    assert!(!r.text().contains("TOP-SECRET") && !gw.logs().contains("TOP-SECRET"));
    assert_eq!(backend.count(), 0);
    assert_eq!(gw.metric("payhook_verify_failures_total", &[("account", "wxv2"), ("reason", "xml_doctype")]).await, 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn alipay_forwards_exact_fen_once_and_rejects_forgeries() {
    let (backend, gw) = gateway().await;
    let ali = Alipay::with_key("alipay.key.pem");
    let body = ali.body(&Alipay::fields("ali-order-1", "12.34"), false);
    let r = gw.post("/notify/ali/goods", &form_headers(), &body).await;
    assert_eq!((r.status, r.text().as_str(), r.headers["content-type"].as_str()), (200, "success", "text/plain"));
    assert_eq!(backend.count(), 1);
    let order = open_ecb(&backend.requests()[0].body, NOTIFY_KEY);
    assert_eq!(order["total_fee"], 1234, "\"12.34\" yuan arrives as integer fen");
    assert_eq!(order["provider"], "alipay");
    assert_eq!(order["out_trade_no"], "ali-order-1");
    assert_eq!(order["transaction_id"], "2026112722001404010599999999");
    assert_eq!(order["appid"], ALIPAY_APP_ID);
    assert_eq!(order["mch_id"], ALIPAY_SELLER_ID);
    assert_eq!(order["attach"], json!({"user_id": "u9"}));
    assert_eq!(order["notify_info"]["notify_id"], "ac05099524730693a8b330c5ecf72da9786");
    assert_eq!(order["notify_info"]["subject"], "语雀空间 500人规模 + 扩容");

    assert_eq!(gw.post("/notify/ali/goods", &form_headers(), &body).await.text(), "success");
    assert_eq!(backend.count(), 1, "Alipay's retry is deduplicated");

    let body_text = String::from_utf8(body.clone()).unwrap();
    let tampered = body_text.replace("total_amount=12.34", "total_amount=0.01");
    assert_ne!(tampered, body_text);
    assert_eq!(gw.post("/notify/ali/goods", &form_headers(), tampered.as_bytes()).await.text(), "fail");
    let stranger = Alipay::with_key("alipay_app.key.pem");
    assert_eq!(gw.post("/notify/ali/goods", &form_headers(), &stranger.body(&Alipay::fields("ali-order-2", "1.00"), false)).await.text(), "fail");
    let mut other_app = Alipay::fields("ali-order-3", "1.00");
    other_app.insert("app_id".into(), "2021999999999999".into());
    assert_eq!(gw.post("/notify/ali/goods", &form_headers(), &ali.body(&other_app, false)).await.text(), "fail");
    let mut too_precise = Alipay::fields("ali-order-4", "1.001");
    too_precise.insert("receipt_amount".into(), "1.00".into());
    assert_eq!(gw.post("/notify/ali/goods", &form_headers(), &ali.body(&too_precise, false)).await.text(), "fail");
    assert_eq!(backend.count(), 1);
    for (reason, n) in [("bad_signature", 2.0), ("merchant_mismatch", 1.0), ("bad_amount", 1.0)] {
        assert_eq!(gw.metric("payhook_verify_failures_total", &[("account", "ali"), ("reason", reason)]).await, n, "{reason}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn alipay_gbk_body_and_certificate_mode_verify() {
    let (backend, gw) = gateway().await;
    let ali = Alipay::with_key("alipay.key.pem");
    let body = ali.body(&Alipay::fields("ali-gbk-1", "0.10"), true);
    let headers = vec![("Content-Type".to_string(), "application/x-www-form-urlencoded; charset=GBK".to_string())];
    assert_eq!(gw.post("/notify/ali/goods", &headers, &body).await.text(), "success");
    let order = open_ecb(&backend.requests()[0].body, NOTIFY_KEY);
    assert_eq!((order["total_fee"].clone(), order["notify_info"]["subject"].clone()), (json!(10), json!("语雀空间 500人规模 + 扩容")));

    let leaf = Alipay::with_key("alipay_leaf.key.pem");
    let body = leaf.body(&Alipay::fields("ali-cert-1", "5"), false);
    assert_eq!(gw.post("/notify/ali-cert/goods", &form_headers(), &body).await.text(), "success");
    assert_eq!(open_ecb(&backend.requests()[1].body, NOTIFY_KEY)["total_fee"], 500);
    assert_eq!(gw.post("/notify/ali-cert/goods", &form_headers(), &ali.body(&Alipay::fields("ali-cert-2", "5"), false)).await.text(), "fail");
    assert_eq!(backend.count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn alipay_refund_notification_is_acknowledged_not_forwarded() {
    let (backend, gw) = gateway().await;
    let ali = Alipay::with_key("alipay.key.pem");
    let mut refund = Alipay::fields("ali-refund-1", "12.34");
    refund.insert("refund_fee".into(), "2.00".into());
    refund.insert("gmt_refund".into(), "2026-11-27 14:00:00.000".into());
    assert_eq!(gw.post("/notify/ali/goods", &form_headers(), &ali.body(&refund, false)).await.text(), "success");
    assert_eq!(backend.count(), 0);
    assert_eq!(gw.metric("payhook_notifications_total", &[("account", "ali"), ("outcome", "not_paid")]).await, 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn v3_rotated_out_certificate_verifies_while_configured_and_reload_drops_it() {
    let (backend, gw) = gateway().await;
    // Certificate B is the one being rotated out, C the new one; both are configured.
    let old = WxV3::cert_b();
    let new = WxV3::with_key("wx_platform_c.key.pem", "3C0FFEE0000000000000000000000001");
    for (signer, order) in [(&old, "rot-1"), (&new, "rot-2")] {
        let (h, b) = signer.paid(order, 100);
        assert_eq!(gw.post("/notify/wx/goods", &h, b.as_bytes()).await.status, 204, "{order}");
    }
    assert_eq!(backend.count(), 2);

    let b_expiry = [("account", "wx"), ("serial", "5157F09EFDC096DE15EBE81A47057A7232F1B8E1")];
    // B's notAfter, 2126-11-03T05:09:22Z (openssl x509 -enddate).
    assert_eq!(gw.metric("payhook_provider_cert_expiry_seconds", &b_expiry).await, 4_949_356_162.0);

    // Rotation finished: B leaves the config, SIGHUP reloads keys without a restart and without
    // dropping this keep-alive connection.
    let mut kept = crate::support::http::Conn::open(gw.addr).await.unwrap();
    let (h, b) = new.paid("rot-kept-1", 100);
    assert_eq!(kept.post("/notify/wx/goods", &h, b.as_bytes()).await.unwrap(), 204);
    let text = std::fs::read_to_string(gw.config_path()).unwrap();
    let without_b = text.replace(&format!("{{ pem_file = \"{}/wx_platform_b.cert.pem\" }}, ", fixture("keys").display()), "");
    assert_ne!(text, without_b);
    std::fs::write(gw.config_path(), without_b).unwrap();
    gw.signal("HUP");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !gw.logs().contains("configuration reloaded") {
        assert!(std::time::Instant::now() < deadline, "no reload:\n{}", gw.logs());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (h, b) = new.paid("rot-kept-2", 100);
    assert_eq!(kept.post("/notify/wx/goods", &h, b.as_bytes()).await.unwrap(), 204, "the connection survived the reload");
    let (h, b) = old.paid("rot-3", 100);
    let r = gw.post("/notify/wx/goods", &h, b.as_bytes()).await;
    assert_eq!((r.status, r.text()), (401, r#"{"code":"FAIL","message":"unknown_serial"}"#.to_string()));
    let (h, b) = new.paid("rot-4", 100);
    assert_eq!(gw.post("/notify/wx/goods", &h, b.as_bytes()).await.status, 204);
    assert_eq!(backend.count(), 5);
    assert!(gw.logs().contains("5157F09EFDC096DE15EBE81A47057A7232F1B8E1"), "the unknown serial is logged");
    let metrics = crate::support::http::get(gw.admin, "/metrics", &[]).await.text();
    assert!(!metrics.contains("5157F09EFDC096DE15EBE81A47057A7232F1B8E1"), "B's expiry series left with B:\n{metrics}");
    assert_eq!(metric_value(&metrics, "payhook_provider_cert_expiry_seconds", &[("serial", "3C0FFEE0000000000000000000000001")]), 4_949_356_162.0);
}

/// A platform certificate past its `notAfter` verifies nothing, configured or not: WeChat signs
/// nothing genuine under a retired certificate, so a signature under one is its leaked key's.
#[tokio::test(flavor = "multi_thread")]
async fn v3_certificate_past_its_validity_verifies_nothing_and_check_says_so() {
    let backend = ok_backend().await;
    let retired_serial = "2E71AED0000000000000000000000001";
    let cert_c = "wx_platform_c.cert.pem\" }]";
    let text = config(&redis_ledger(REDIS), &backend.url("/pay/notify"), "").replace(
        cert_c,
        &format!("wx_platform_c.cert.pem\" }}, {{ pem_file = \"{}/wx_platform_d.cert.pem\" }}]", fixture("keys").display()),
    );
    assert!(text.contains("wx_platform_d.cert.pem"));
    let gw = Payhook::start(&text).await;
    let retired = WxV3::with_key("wx_platform_d.key.pem", retired_serial);
    let (h, b) = retired.paid("retired-1", 100);
    let r = gw.post("/notify/wx/goods", &h, b.as_bytes()).await;
    assert_eq!((r.status, r.text()), (401, r#"{"code":"FAIL","message":"certificate_expired"}"#.to_string()));
    assert_eq!(backend.count(), 0);
    assert_eq!(gw.metric("payhook_verify_failures_total", &[("account", "wx"), ("reason", "certificate_expired")]).await, 1.0);
    assert!(gw.logs().contains(&format!("certificate {retired_serial} has expired or is not yet valid")), "{}", gw.logs());
    // 2025-01-01T00:00:00Z, the retired certificate's notAfter.
    assert_eq!(gw.metric("payhook_provider_cert_expiry_seconds", &[("account", "wx"), ("serial", retired_serial)]).await, 1_735_689_600.0);
    let warning = format!("accounts.wx: certificate {retired_serial} is outside its validity");
    assert!(gw.logs().contains(&warning), "run warns at start-up:\n{}", gw.logs());

    // The same order, signed under a certificate in force, is delivered.
    let (h, b) = WxV3::cert_b().paid("retired-1", 100);
    assert_eq!(gw.post("/notify/wx/goods", &h, b.as_bytes()).await.status, 204);
    assert_eq!(backend.count(), 1);

    let out = payhook_command().args(["check", "--config"]).arg(gw.config_path()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains(&format!("WARNING: {warning}")), "{err}");
}
