//! What an operator ships: JSON log lines with one request id per notification, the same id at
//! the backend, the caller's W3C `traceparent` passed along (continued, with OTLP export).

use serde_json::Value;

use crate::support::*;

const REDIS: &str = "redis://127.0.0.1:6379/0";

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_carry_one_request_id_which_the_backend_receives() {
    let backend = ok_backend().await;
    let cfg = config(&redis_ledger(REDIS), &backend.url("/pay"), "").replace("grace_period = \"0s\"", "grace_period = \"0s\"\nlog_format = \"json\"");
    let gw = Payhook::start(&cfg).await;
    let wx = WxV3::public_key_mode();
    let (mut h, b) = wx.paid("json-1", 100);
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    h.push(("traceparent".into(), traceparent.into()));
    assert_eq!(gw.post("/notify/wx/goods", &h, b.as_bytes()).await.status, 204);
    let req = &backend.requests()[0];
    let request_id = req.headers["x-request-id"].clone();
    assert_eq!(request_id.len(), 16);
    assert_eq!(req.headers["traceparent"], traceparent);

    // A load balancer's request id is kept.
    let (mut h, b) = wx.paid("json-2", 100);
    h.push(("X-Request-Id".into(), "lb-7f3a".into()));
    assert_eq!(gw.post("/notify/wx/goods", &h, b.as_bytes()).await.status, 204);
    assert_eq!(backend.requests()[1].headers["x-request-id"], "lb-7f3a");
    assert!(!backend.requests()[1].headers.contains_key("traceparent"));

    let logs = gw.logs();
    let lines: Vec<Value> = logs.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    let of_request: Vec<&Value> = lines.iter().filter(|l| l["span"]["request_id"] == request_id.as_str()).collect();
    let decided = of_request.iter().find(|l| l["fields"]["message"] == "notification decided").expect("the decision line carries the request id");
    assert_eq!((decided["fields"]["out_trade_no"].as_str(), decided["fields"]["outcome"].as_str()), (Some("json-1"), Some("forwarded")));
    assert_eq!(decided["level"], "INFO");
    let latency = &decided["fields"]["latency_ms"];
    let decimals = latency.to_string().split_once('.').map_or(0, |(_, d)| d.len());
    assert!(latency.as_f64().is_some_and(|ms| ms > 0.0) && decimals <= 3, "latency_ms in ms to the µs: {latency}");
    assert!(lines.iter().any(|l| l["span"]["request_id"] == "lb-7f3a"));
}

/// Every payhook metric family is listed from start-up (zero series per configured account and
/// type), with build info and process metrics; the pid file is written in the foreground.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_families_build_info_and_pid_file_from_start_up() {
    let backend = ok_backend().await;
    let gw = Payhook::start(&config(&embedded_ledger(), &backend.url("/pay"), "")).await;
    let text = http::get(gw.admin, "/metrics", &[]).await.text();
    let families: std::collections::BTreeSet<&str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split_whitespace().next()).collect();
    for family in [
        "payhook_notifications_total", "payhook_verify_failures_total", "payhook_backend_requests_total", "payhook_backend_duration_seconds",
        "payhook_ledger_errors_total", "payhook_sync_total", "payhook_provider_query_duration_seconds", "payhook_replays_total",
        "payhook_type_conflicts_total", "payhook_unparsed_fields_total", "payhook_quarantined_total", "payhook_reconcile_queries_total",
        "payhook_orders_pending", "payhook_oldest_pending_seconds", "payhook_recovered_total", "payhook_payment_to_delivery_seconds",
        "payhook_build_info", "process_cpu_seconds_total", "process_resident_memory_bytes",
    ] {
        assert!(families.contains(family), "{family} missing from /metrics at start-up: {families:?}");
    }
    assert!(text.contains("payhook_quarantined_total{account=\"wx\",reason=\"amount_mismatch\",type=\"goods\"} 0"), "zero series for alerts");
    let version = payhook_command().arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    let commit = version.split(['(', ')']).nth(1).unwrap().to_string();
    assert!(version.starts_with("payhook 0.") && !commit.is_empty(), "{version}");
    assert_eq!(gw.metric("payhook_build_info", &[("commit", &commit)]).await, 1.0);
    let pid: u32 = std::fs::read_to_string(gw.dir.path().join("payhook.pid")).unwrap().trim().parse().unwrap();
    assert!(std::path::Path::new(&format!("/proc/{pid}/status")).exists());
}

/// OTLP export: one span per notification, with verify / claim / forward / settle below it,
/// sent to a collector stub as OTLP/HTTP JSON.
#[tokio::test(flavor = "multi_thread")]
async fn otlp_exports_one_span_per_notification_with_its_steps() {
    let collector = TestServer::start(std::sync::Arc::new(|_| Canned::json(200, "{}"))).await;
    let backend = ok_backend().await;
    let cfg = config(&redis_ledger(REDIS), &backend.url("/pay"), &format!("[telemetry]\notlp_endpoint = \"{}\"\n", collector.url("")));
    let gw = Payhook::start(&cfg).await;
    let (mut h, b) = WxV3::public_key_mode().paid("otlp-1", 100);
    // A load balancer's trace: payhook's span continues it.
    let (caller_trace, caller_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    h.push(("traceparent".into(), format!("00-{caller_trace}-{caller_span}-01")));
    assert_eq!(gw.post("/notify/wx/goods", &h, b.as_bytes()).await.status, 204);
    let request_id = backend.requests()[0].headers["x-request-id"].clone();
    let backend_traceparent = backend.requests()[0].headers["traceparent"].clone();

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let spans: Vec<Value> = loop {
        let spans: Vec<Value> = collector
            .requests()
            .iter()
            .filter(|r| r.path == "/v1/traces")
            .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok())
            .flat_map(|doc| {
                let mut out = Vec::new();
                for rs in doc["resourceSpans"].as_array().cloned().unwrap_or_default() {
                    for ss in rs["scopeSpans"].as_array().cloned().unwrap_or_default() {
                        out.extend(ss["spans"].as_array().cloned().unwrap_or_default());
                    }
                }
                out
            })
            .collect();
        if spans.iter().any(|s| s["name"] == "notification") && spans.iter().filter(|s| s["name"] == "settle").count() >= 1 {
            break spans;
        }
        assert!(std::time::Instant::now() < deadline, "no spans at the collector: {:?}", collector.requests().iter().map(|r| r.path.clone()).collect::<Vec<_>>());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let root = spans.iter().find(|s| s["name"] == "notification").unwrap();
    let attributes = root["attributes"].to_string();
    assert!(attributes.contains("request_id") && attributes.contains(&request_id), "{attributes}");
    assert_eq!((root["traceId"].as_str(), root["parentSpanId"].as_str()), (Some(caller_trace), Some(caller_span)), "continues the caller's trace");
    for step in ["verify", "claim", "forward", "settle"] {
        let child = spans.iter().find(|s| s["name"] == step).unwrap_or_else(|| panic!("no {step} span: {spans:?}"));
        assert_eq!(child["parentSpanId"], root["spanId"], "{step} is a child of the notification");
        assert_eq!(child["traceId"], root["traceId"]);
    }
    let forward = spans.iter().find(|s| s["name"] == "forward").unwrap();
    assert_eq!(backend_traceparent, format!("00-{caller_trace}-{}-01", forward["spanId"].as_str().unwrap()), "the backend's parent is payhook's forward span");
}
