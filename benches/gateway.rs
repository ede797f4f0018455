//! End-to-end benchmark: signed WeChat Pay v3 notifications through payhook (Redis ledger) to a
//! trivial backend, against the same requests sent straight to that backend.
//!
//! `cargo bench --bench gateway` (env: BENCH_N notifications, default 5000; BENCH_CONCURRENCY
//! keep-alive connections, default 16; PAYHOOK_TEST_REDIS, default redis://127.0.0.1:6379/0).

#[allow(dead_code, unused_imports)]
#[path = "../tests/it/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::http::Conn;
use support::*;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Run {
    wall: Duration,
    latencies: Vec<Duration>,
    non_success: usize,
}

async fn drive(addr: SocketAddr, path: &str, requests: Arc<Vec<(support::Headers, String)>>, concurrency: usize) -> Run {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (requests, next, path) = (requests.clone(), next.clone(), path.to_string());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await.unwrap();
            let (mut latencies, mut bad) = (Vec::new(), 0);
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((headers, body)) = requests.get(i) else { break };
                let t = Instant::now();
                let status = conn.post(&path, headers, body.as_bytes()).await.unwrap();
                latencies.push(t.elapsed());
                if !(200..300).contains(&status) {
                    bad += 1;
                }
            }
            (latencies, bad)
        }));
    }
    let (mut latencies, mut non_success) = (Vec::new(), 0);
    for t in tasks {
        let (l, b) = t.await.unwrap();
        latencies.extend(l);
        non_success += b;
    }
    latencies.sort();
    Run { wall: started.elapsed(), latencies, non_success }
}


#[tokio::main]
async fn main() {
    let n = env_or("BENCH_N", 5000);
    let concurrency = env_or("BENCH_CONCURRENCY", 16);
    let redis = std::env::var("PAYHOOK_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let backend = ok_backend().await;
    let mut cfg = config(&redis_ledger(&redis), &backend.url("/pay/notify"), "");
    cfg = cfg.replace("reply_budget = \"3s\"", "reply_budget = \"4.5s\"");
    std::env::set_var("PAYHOOK_TEST_LOG", "warn");
    let gw = Payhook::start(&cfg).await;

    let wx = WxV3::public_key_mode();
    let run_id = unique("bench");
    let requests: Arc<Vec<_>> = Arc::new((0..n).map(|i| wx.paid(&format!("{run_id}-{i}"), 100 + i as u64)).collect());

    // Warm both paths (connection pools, Redis scripts), then measure.
    let warm: Arc<Vec<_>> = Arc::new((0..200).map(|i| wx.paid(&format!("{run_id}-warm-{i}"), 1)).collect());
    drive(gw.addr, "/notify/wx/goods", warm.clone(), concurrency).await;
    drive(backend.addr, "/pay/notify", warm, concurrency).await;

    let direct = drive(backend.addr, "/pay/notify", requests.clone(), concurrency).await;
    let via = drive(gw.addr, "/notify/wx/goods", requests, concurrency).await;
    assert_eq!(via.non_success, 0, "every notification must be acknowledged");

    let rps = |r: &Run| r.latencies.len() as f64 / r.wall.as_secs_f64();
    println!("payhook gateway benchmark: {n} signed WeChat Pay v3 notifications, {concurrency} keep-alive connections, Redis ledger");
    println!("{:<22} {:>12} {:>10} {:>10} {:>10}", "path", "req/s", "p50 ms", "p99 ms", "max ms");
    for (name, r) in [("direct to backend", &direct), ("through payhook", &via)] {
        println!("{name:<22} {:>12.0} {:>10.2} {:>10.2} {:>10.2}", rps(r), quantile_ms(&r.latencies, 0.5), quantile_ms(&r.latencies, 0.99), quantile_ms(&r.latencies, 1.0));
    }
    println!(
        "added latency: p50 {:.2} ms, p99 {:.2} ms",
        quantile_ms(&via.latencies, 0.5) - quantile_ms(&direct.latencies, 0.5),
        quantile_ms(&via.latencies, 0.99) - quantile_ms(&direct.latencies, 0.99)
    );
}
