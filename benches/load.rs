//! Sustained load test (documented in the README, not run in CI): a fixed offered rate of
//! mixed notifications — WeChat Pay v3, v2 and Alipay, new orders and provider retries of
//! recent ones — against two payhook instances sharing one Redis, for several minutes.
//! Reports throughput, p50/p99/p99.9 latency added over the bare backend, and peak RSS.
//!
//! `LOAD_SECONDS=300 LOAD_RATE=1000 cargo bench --bench load`
//! (also LOAD_BASELINE_SECONDS, default 10; PAYHOOK_TEST_REDIS, default redis://127.0.0.1:6379/0)

#[allow(dead_code, unused_imports)]
#[path = "../tests/it/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::signers::*;
use support::*;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Sent {
    path: &'static str,
    headers: Headers,
    body: Vec<u8>,
}

struct Mix {
    v3: WxV3,
    v2: WxV2,
    ali: Alipay,
    run: String,
    next: AtomicUsize,
    recent: Mutex<Vec<Arc<Sent>>>,
}

impl Mix {
    /// 20 % provider retries of a recent notification; otherwise a new order: 50 % v3, 30 % v2, 20 % Alipay.
    fn next(&self) -> Arc<Sent> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        if i % 5 == 4 {
            if let Some(s) = self.recent.lock().unwrap().get(i % 64).cloned() {
                return s;
            }
        }
        let order = format!("{}-{i}", self.run);
        let sent = Arc::new(match i % 10 {
            0..=4 => {
                let (headers, body) = self.v3.paid(&order, 100);
                Sent { path: "/notify/wx/goods", headers, body: body.into_bytes() }
            }
            5..=7 => Sent { path: "/notify/wxv2/goods", headers: xml_headers(), body: self.v2.paid(&order, 100).into_bytes() },
            _ => Sent { path: "/notify/ali/goods", headers: form_headers(), body: self.ali.body(&Alipay::fields(&order, "1.00"), false) },
        });
        let mut recent = self.recent.lock().unwrap();
        if recent.len() < 64 {
            recent.push(sent.clone());
        } else {
            recent[i % 64] = sent.clone();
        }
        sent
    }
}

/// Offers `rate` requests per second for `seconds`, round-robin over `targets` (open loop).
async fn offer(targets: &[SocketAddr], rate: u64, seconds: u64, direct_path: Option<&'static str>, mix: Arc<Mix>) -> (Vec<Duration>, usize, f64) {
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(AtomicUsize::new(0));
    let sem = Arc::new(tokio::sync::Semaphore::new(512));
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut n = 0usize;
    let mut tasks = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        ticker.tick().await;
        let permit = sem.clone().acquire_owned().await.unwrap();
        let (addr, mix, latencies, failures) = (targets[n % targets.len()], mix.clone(), latencies.clone(), failures.clone());
        n += 1;
        tasks.push(tokio::spawn(async move {
            let sent = mix.next();
            let h: Vec<(&str, &str)> = sent.headers.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
            let t = Instant::now();
            let ok = matches!(send(addr, "POST", direct_path.unwrap_or(sent.path), &h, &sent.body).await, Ok(r) if r.status < 300);
            latencies.lock().unwrap().push(t.elapsed());
            if !ok {
                failures.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let wall = started.elapsed().as_secs_f64();
    let mut l = Arc::try_unwrap(latencies).unwrap().into_inner().unwrap();
    l.sort();
    (l, failures.load(Ordering::Relaxed), wall)
}


#[tokio::main]
async fn main() {
    let seconds = env_or("LOAD_SECONDS", 300);
    let rate = env_or("LOAD_RATE", 1000);
    let baseline_seconds = env_or("LOAD_BASELINE_SECONDS", 10);
    let redis = std::env::var("PAYHOOK_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let backend = TestServer::start(Arc::new(|_| Canned::json(200, r#"{"code":0}"#))).await;
    let cfg = config(&redis_ledger(&redis), &backend.url("/pay/notify"), &accounts_toml()).replace("reply_budget = \"3s\"", "reply_budget = \"4.5s\"");
    std::env::set_var("PAYHOOK_TEST_LOG", "warn");
    let a = Payhook::start(&cfg).await;
    let b = a.sibling().await;
    let mix = || {
        Arc::new(Mix {
            v3: WxV3::public_key_mode(),
            v2: WxV2::new(),
            ali: Alipay::with_key("alipay.key.pem"),
            run: unique("load"),
            next: AtomicUsize::new(0),
            recent: Mutex::new(Vec::new()),
        })
    };

    let (direct, _, _) = offer(&[backend.addr], rate, baseline_seconds, Some("/pay/notify"), mix()).await;
    let (via, failures, wall) = offer(&[a.addr, b.addr], rate, seconds, None, mix()).await;
    println!("payhook load test: {seconds} s at {rate} notifications/s offered (50% v3, 30% v2, 20% Alipay; 20% provider retries), 2 instances, Redis ledger");
    println!("throughput {:.0} notifications/s, {} failures of {}", via.len() as f64 / wall, failures, via.len());
    println!("{:<18} {:>9} {:>9} {:>9}", "latency ms", "p50", "p99", "p99.9");
    println!("{:<18} {:>9.2} {:>9.2} {:>9.2}", "direct to backend", quantile_ms(&direct, 0.5), quantile_ms(&direct, 0.99), quantile_ms(&direct, 0.999));
    println!("{:<18} {:>9.2} {:>9.2} {:>9.2}", "through payhook", quantile_ms(&via, 0.5), quantile_ms(&via, 0.99), quantile_ms(&via, 0.999));
    println!(
        "{:<18} {:>9.2} {:>9.2} {:>9.2}",
        "added",
        quantile_ms(&via, 0.5) - quantile_ms(&direct, 0.5),
        quantile_ms(&via, 0.99) - quantile_ms(&direct, 0.99),
        quantile_ms(&via, 0.999) - quantile_ms(&direct, 0.999)
    );
    println!("peak RSS: instance A {} KiB, instance B {} KiB", a.peak_rss_kib(), b.peak_rss_kib());
}
