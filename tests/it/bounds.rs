//! Resource bounds: slowloris clients, 10 000 idle connections, a 100 MB body and 1 000
//! notifications for unknown accounts leave memory bounded and valid traffic served.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const IDLE_CONNECTIONS: usize = 10_000;
/// The bound stated in the README: per held connection, plus a fixed allowance for the rest of
/// this test's load (measured: ~33 KiB per idle connection in a debug build).
const MAX_KIB_PER_CONNECTION: u64 = 48;
const MAX_FIXED_GROWTH_KIB: u64 = 64 * 1024;

async fn status_of(stream: &mut TcpStream) -> Option<u16> {
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await.ok()?.ok()?;
    std::str::from_utf8(&buf[..n]).ok()?.split_whitespace().nth(1)?.parse().ok()
}

/// A gateway on the embedded ledger with `settings` added to its `[server]` section, and the
/// backend it forwards to.
async fn gateway_with(settings: &str) -> (TestServer, Payhook) {
    let backend = ok_backend().await;
    let cfg = config(&embedded_ledger(), &backend.url("/pay/notify"), "").replace("grace_period = \"0s\"", &format!("grace_period = \"0s\"\n{settings}"));
    (backend, Payhook::start(&cfg).await)
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_load_keeps_memory_bounded_and_service_up() {
    // Above the idle flood: this test measures what each held connection costs.
    let (backend, gw) = gateway_with("body_timeout = \"1s\"\nmax_connections = 20000").await;
    let wx = WxV3::public_key_mode();
    let (h, b) = wx.paid("bounds-warm", 1);
    assert_eq!(gw.post("/notify/wx/goods", &h, b.as_bytes()).await.status, 204);
    let baseline = gw.rss_kib();

    // 10 000 connections that never send a byte.
    let mut idle = Vec::with_capacity(IDLE_CONNECTIONS);
    for _ in 0..IDLE_CONNECTIONS {
        idle.push(TcpStream::connect(gw.addr).await.expect("connect"));
    }

    // Slowloris on the body: headers promise 200 bytes, the body trickles; cut off at body_timeout.
    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(b"POST /notify/wx/goods HTTP/1.1\r\nHost: x\r\nContent-Length: 200\r\n\r\n{").await.unwrap();
    let slow_started = Instant::now();
    let trickle = tokio::spawn(async move {
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if slow.write_all(b" ").await.is_err() {
                break;
            }
        }
        (status_of(&mut slow).await, slow_started.elapsed())
    });

    // A 100 MB body, declared: refused from the header alone.
    let mut big = TcpStream::connect(gw.addr).await.unwrap();
    big.write_all(b"POST /notify/wx/goods HTTP/1.1\r\nHost: x\r\nContent-Length: 104857600\r\n\r\n").await.unwrap();
    assert_eq!(status_of(&mut big).await, Some(413));
    // A 100 MB body, chunked: payhook stops reading at the limit and answers 413.
    let mut chunked = TcpStream::connect(gw.addr).await.unwrap();
    chunked.write_all(b"POST /notify/wx/goods HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n").await.unwrap();
    let chunk = [b"10000\r\n".as_slice(), &vec![b'a'; 0x10000], b"\r\n"].concat();
    let mut sent = 0usize;
    while sent < 100 * 1024 * 1024 {
        match tokio::time::timeout(Duration::from_secs(5), chunked.write_all(&chunk)).await {
            Ok(Ok(())) => sent += 0x10000,
            _ => break,
        }
    }
    assert!(sent < 100 * 1024 * 1024, "payhook read a 100 MB body to the end");
    assert_eq!(status_of(&mut chunked).await, Some(413));

    // 1 000 notifications for accounts that do not exist.
    for i in 0..1000 {
        let r = gw.post(&format!("/notify/acct-{i}/goods"), &h, b.as_bytes()).await;
        assert_eq!(r.status, 404);
    }
    assert_eq!(gw.metric("payhook_notifications_total", &[("outcome", "not_found")]).await, 1000.0);
    let metrics = crate::support::http::get(gw.admin, "/metrics", &[]).await.text();
    assert!(!metrics.contains("acct-"), "unknown account names never become metric labels");

    // Valid traffic is still served while all of that is held open.
    let (h2, b2) = wx.paid("bounds-live", 2);
    assert_eq!(gw.post("/notify/wx/goods", &h2, b2.as_bytes()).await.status, 204);
    assert_eq!(backend.count(), 2);

    let (slow_status, slow_took) = trickle.await.unwrap();
    assert_eq!(slow_status, Some(408), "the trickling body is cut off");
    assert!(slow_took < Duration::from_secs(3), "cut off after body_timeout, took {slow_took:?}");

    let peak = gw.rss_kib();
    println!(
        "resource bounds: rss baseline={baseline} KiB, with {IDLE_CONNECTIONS} idle connections + hostile clients={peak} KiB (+{} KiB, {:.1} KiB per connection)",
        peak.saturating_sub(baseline),
        peak.saturating_sub(baseline) as f64 / IDLE_CONNECTIONS as f64
    );
    let bound = MAX_KIB_PER_CONNECTION * IDLE_CONNECTIONS as u64 + MAX_FIXED_GROWTH_KIB;
    assert!(peak.saturating_sub(baseline) < bound, "memory grew by {} KiB (bound {bound} KiB)", peak - baseline);

    // Closing the idle connections frees their share: memory does not keep growing.
    drop(idle);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..3 {
        let (h, b) = wx.paid(&format!("bounds-after-{i}"), 3);
        assert_eq!(gw.post("/notify/wx/goods", &h, b.as_bytes()).await.status, 204);
    }
    assert!(gw.rss_kib() <= peak + 4096, "memory kept growing after the connections closed");
}

/// 200 clients trickling a header byte every 100 ms: past `max_connections` they are closed at
/// once, the rest when `header_timeout` runs out; valid traffic is served throughout.
#[tokio::test(flavor = "multi_thread")]
async fn slow_header_clients_and_connection_floods_are_closed() {
    let (_backend, gw) = gateway_with("max_connections = 50\nheader_timeout = \"1s\"").await;
    let started = Instant::now();
    let mut trickling = Vec::new();
    for _ in 0..200 {
        let stream = TcpStream::connect(gw.addr).await.unwrap();
        trickling.push(tokio::spawn(async move {
            let mut stream = stream;
            let opened = Instant::now();
            for byte in b"POST /notify/wx/goods HTTP/1.1\r\nHost: payhook\r\nContent-Length: 10\r\nX-Slow: ".iter().cycle().take(600) {
                if stream.write_all(&[*byte]).await.is_err() {
                    return opened.elapsed();
                }
                let mut probe = [0u8; 1];
                if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut probe)).await {
                    return opened.elapsed();
                }
            }
            opened.elapsed()
        }));
    }
    let mut held = Vec::new();
    for t in trickling {
        held.push(t.await.unwrap());
    }
    held.sort();
    let closed_within = |limit: Duration| held.iter().filter(|d| **d < limit).count();
    println!(
        "slow headers: 200 clients, max_connections=50, header_timeout=1s: closed within 0.5 s={} within 2.5 s={} longest={:?}",
        closed_within(Duration::from_millis(500)),
        closed_within(Duration::from_millis(2500)),
        held.last().unwrap()
    );
    assert!(closed_within(Duration::from_millis(500)) >= 150, "the connections past the cap are closed at once: {held:?}");
    assert_eq!(closed_within(Duration::from_millis(2500)), 200, "every slow client is closed: {held:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(gw.metric("payhook_connections_closed_total", &[("reason", "max_connections")]).await >= 150.0);
    assert!(gw.metric("payhook_connections_closed_total", &[("reason", "header_timeout")]).await >= 1.0);
    let (h, b) = WxV3::public_key_mode().paid("after-slow-headers", 1);
    assert_eq!(gw.post("/notify/wx/goods", &h, b.as_bytes()).await.status, 204);
    // The gauge drops when the server has read the client's close, a moment after the reply.
    let deadline = Instant::now() + Duration::from_secs(2);
    while gw.metric("payhook_connections_open", &[]).await != 0.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(gw.metric("payhook_connections_open", &[]).await, 0.0, "every connection is counted closed");
}

/// `n` connections to `addr` that never send a byte; each task answers how long payhook kept
/// its connection open.
async fn idle_connections(addr: std::net::SocketAddr, n: usize) -> Vec<tokio::task::JoinHandle<Duration>> {
    let mut held = Vec::new();
    for _ in 0..n {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        held.push(tokio::spawn(async move {
            let opened = Instant::now();
            let mut buf = [0u8; 64];
            let _ = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await;
            opened.elapsed()
        }));
    }
    held
}

/// The admin listener has the same bounds on a budget of its own: a notify port at its cap
/// leaves `/metrics` reachable, and idle admin connections are closed like notify ones.
#[tokio::test(flavor = "multi_thread")]
async fn the_admin_listener_is_bounded_on_its_own_budget() {
    let (_backend, gw) = gateway_with("max_connections = 50\nheader_timeout = \"1s\"").await;
    let notify_flood = idle_connections(gw.addr, 50).await;
    let deadline = Instant::now() + Duration::from_millis(500);
    while gw.metric("payhook_connections_open", &[]).await != 50.0 {
        assert!(Instant::now() < deadline, "the 50 notify connections are not all open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = http::get(gw.admin, "/metrics", &[]).await;
    assert_eq!(metrics.status, 200, "the admin port answers while the notify port is full");

    let admin_flood = idle_connections(gw.admin, 60).await;
    let mut held = Vec::new();
    for t in admin_flood.into_iter().chain(notify_flood) {
        held.push(t.await.unwrap());
    }
    assert!(held.iter().all(|d| *d < Duration::from_millis(2500)), "every idle connection is closed: {held:?}");
    let text = http::get(gw.admin, "/metrics", &[]).await.text();
    let closed = |reason: &str| metric_value(&text, "payhook_admin_connections_closed_total", &[("reason", reason)]);
    assert!(closed("max_connections") >= 10.0, "{text}");
    assert_eq!(closed("max_connections") + closed("header_timeout"), 60.0, "each idle admin connection was closed by payhook");
    assert_eq!(metric_value(&text, "payhook_admin_connections_open", &[]), 1.0, "only this scrape's connection");
    assert_eq!(metric_value(&text, "payhook_connections_closed_total", &[("reason", "header_timeout")]), 50.0);
    assert_eq!(metric_value(&text, "payhook_connections_closed_total", &[("reason", "max_connections")]), 0.0);
}
