//! The Redis ledger beyond one plain Redis over TCP: TLS (private CA, client certificate), a Unix
//! socket, and, under traffic with exactly-once forwards, Sentinel failover and Cluster
//! resharding + failover. Every server here is a real `redis-server` started by the test on free
//! ports (or a socket in a temp dir).

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::certs::{issue, make_ca};
use crate::support::*;

/// A `redis-server` child with its own arguments; killed on drop.
struct Node {
    child: Option<Child>,
}

impl Node {
    fn start(args: &[String]) -> Node {
        let child = Command::new("redis-server").args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("redis-server");
        Node { child: Some(child) }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn cli(port: u16, args: &[&str]) -> String {
    redis_cli_to(&["-p", &port.to_string()], args)
}

#[tokio::test(flavor = "multi_thread")]
async fn rediss_with_a_private_ca_and_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_ca(d, "ca");
    make_ca(d, "other-ca");
    issue(d, "ca", "server", "IP:127.0.0.1,DNS:localhost");
    issue(d, "ca", "client", "DNS:payhook");
    let port = free_port();
    let path = |f: &str| d.join(f).display().to_string();
    let _redis = Node::start(&[
        "--port".into(), "0".into(), "--tls-port".into(), port.to_string(), "--bind".into(), "127.0.0.1".into(),
        "--tls-cert-file".into(), path("server.pem"), "--tls-key-file".into(), path("server.key"),
        "--tls-ca-cert-file".into(), path("ca.pem"), "--tls-auth-clients".into(), "yes".into(),
        "--save".into(), "".into(), "--appendonly".into(), "no".into(),
    ]);
    let ledger = |ca: &str| {
        format!(
            "[ledger]\nbackend = \"redis\"\nurl = \"rediss://127.0.0.1:{port}/0\"\nkey_prefix = \"{}:\"\ntimeout = \"300ms\"\n\
             tls_ca_file = \"{}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
            unique("tls"),
            path(ca),
            path("client.pem"),
            path("client.key")
        )
    };
    let backend = ok_backend().await;
    let gw = Payhook::start(&config(&ledger("ca.pem"), &backend.url("/pay"), "")).await;
    let wx = WxV3::public_key_mode();
    let (h, b) = wx.paid("tls-1", 100);
    assert_eq!(gw.post("/notify/wx/goods", &h, b.as_bytes()).await.status, 204);
    assert_eq!(gw.post("/notify/wx/goods", &h, b.as_bytes()).await.status, 204);
    assert_eq!(backend.count(), 1, "deduped over TLS");
    assert_eq!(http::get(gw.admin, "/readyz", &[]).await.status, 200);
    assert!(!gw.logs().contains("BEGIN"), "no key material in logs");

    // A server certificate from another CA is refused: fail closed, nothing forwarded.
    let refused = Payhook::start(&config(&ledger("other-ca.pem"), &backend.url("/pay"), "")).await;
    let (h, b) = wx.paid("tls-2", 100);
    let r = refused.post("/notify/wx/goods", &h, b.as_bytes()).await;
    assert_eq!((r.status, r.text()), (500, r#"{"code":"FAIL","message":"ledger_unavailable"}"#.to_string()));
    assert_eq!(http::get(refused.admin, "/readyz", &[]).await.status, 503);
    assert_eq!(backend.count(), 1);
}

/// A Redis on payhook's own host, reachable only through a Unix socket (no TCP port at all).
#[tokio::test(flavor = "multi_thread")]
async fn redis_on_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("redis.sock").display().to_string();
    let mut redis = Node::start(&[
        "--port".into(), "0".into(), "--unixsocket".into(), socket.clone(), "--unixsocketperm".into(), "700".into(),
        "--save".into(), "".into(), "--appendonly".into(), "no".into(),
    ]);
    let socket_cli = |args: &[&str]| redis_cli_to(&["-s", &socket], args);
    eventually(Duration::from_secs(10), "redis up", || socket_cli(&["PING"]) == "PONG").await;
    let prefix = unique("uds");
    let ledger = format!("[ledger]\nbackend = \"redis\"\nurl = \"redis+unix://{socket}\"\nkey_prefix = \"{prefix}:\"\ntimeout = \"300ms\"\n");
    let backend = ok_backend().await;
    let gw = Payhook::start(&config(&ledger, &backend.url("/pay"), "")).await;
    let wx = WxV3::public_key_mode();
    let (h, b) = wx.paid("uds-1", 100);
    assert_eq!(gw.post("/notify/wx/goods", &h, b.as_bytes()).await.status, 204);
    assert_eq!(gw.post("/notify/wx/goods", &h, b.as_bytes()).await.status, 204);
    assert_eq!(backend.count(), 1, "deduped through the socket");
    assert_eq!(socket_cli(&["HGET", &format!("{prefix}:wechat:1230000109:uds-1"), "state"]), "done");
    assert_eq!(http::get(gw.admin, "/readyz", &[]).await.status, 200);

    // Without its Redis, payhook fails closed as over TCP.
    redis.kill();
    let (h, b) = wx.paid("uds-2", 100);
    let r = gw.post("/notify/wx/goods", &h, b.as_bytes()).await;
    assert_eq!((r.status, r.text()), (500, r#"{"code":"FAIL","message":"ledger_unavailable"}"#.to_string()));
    assert_eq!(http::get(gw.admin, "/readyz", &[]).await.status, 503);
    assert_eq!(backend.count(), 1);
}

/// A provider: resends each order until payhook acknowledges it (204). Returns, per order, how
/// many times the backend got it, and the longest stretch without an acknowledgement.
struct Provider {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    outage: Arc<Mutex<(Option<Instant>, Duration)>>,
    acked: Arc<Mutex<HashSet<String>>>,
    sent: Arc<Mutex<Vec<String>>>,
}

impl Provider {
    fn start(addrs: Vec<std::net::SocketAddr>, workers: usize, run: &str) -> Provider {
        let stop = Arc::new(AtomicBool::new(false));
        let outage = Arc::new(Mutex::new((None::<Instant>, Duration::ZERO)));
        let acked = Arc::new(Mutex::new(HashSet::new()));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..workers)
            .map(|w| {
                let (stop, outage, acked, sent, addrs, run) = (stop.clone(), outage.clone(), acked.clone(), sent.clone(), addrs.clone(), run.to_string());
                tokio::spawn(async move {
                    let wx = WxV3::public_key_mode();
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let order = format!("{run}-{w}-{i}");
                        sent.lock().unwrap().push(order.clone());
                        // Resend until acknowledged, as a provider does (faster, for the test).
                        loop {
                            let (h, b) = wx.paid(&order, 100);
                            let hs: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                            let addr = addrs[i % addrs.len()];
                            let ok = matches!(send(addr, "POST", "/notify/wx/goods", &hs, b.as_bytes()).await, Ok(r) if r.status == 204);
                            {
                                let mut o = outage.lock().unwrap();
                                if !ok {
                                    o.0.get_or_insert_with(Instant::now);
                                } else if let Some(since) = o.0.take() {
                                    o.1 = o.1.max(since.elapsed());
                                }
                            }
                            if ok {
                                acked.lock().unwrap().insert(order.clone());
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        i += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                })
            })
            .collect();
        Provider { stop, tasks, outage, acked, sent }
    }

    /// Stops sending new orders, waits for every sent one to be acknowledged.
    async fn finish(self) -> (Vec<String>, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            tokio::time::timeout(Duration::from_secs(60), t).await.expect("every order acknowledged in time").unwrap();
        }
        let sent = self.sent.lock().unwrap().clone();
        assert_eq!(self.acked.lock().unwrap().len(), sent.len());
        let longest = self.outage.lock().unwrap().1;
        (sent, longest)
    }
}

/// Stops the provider, prints the test's summary line and asserts every acknowledged order
/// reached the backend exactly once; returns the longest stretch without a ledger.
async fn exactly_once(name: &str, provider: Provider, backend: &TestServer, failover: Duration) -> Duration {
    let (sent, without_ledger) = provider.finish().await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for req in backend.requests() {
        *counts.entry(open_ecb(&req.body, NOTIFY_KEY)["out_trade_no"].as_str().unwrap().to_string()).or_insert(0) += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    println!(
        "{name}: orders={} forwards={} forwarded_twice={} failover={failover:?} longest_without_ledger={without_ledger:?}",
        sent.len(),
        backend.count(),
        twice.len()
    );
    assert!(sent.iter().all(|o| counts.contains_key(o)), "every acknowledged order reached the backend");
    assert!(twice.is_empty(), "forwarded twice: {twice:?}");
    without_ledger
}

/// A master, its replica and three sentinels monitoring them as `pm`.
struct Sentinels {
    master: Node,
    _replica: Node,
    _sentinels: Vec<Node>,
    replica_port: u16,
    ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl Sentinels {
    async fn start() -> Sentinels {
        let dir = tempfile::tempdir().unwrap();
        let (master_port, replica_port) = (free_port(), free_port());
        let plain = |port: u16| vec!["--port".into(), port.to_string(), "--bind".into(), "127.0.0.1".into(), "--save".into(), "".into()];
        let master = Node::start(&plain(master_port));
        let mut replica_args = plain(replica_port);
        replica_args.extend(["--replicaof".into(), "127.0.0.1".into(), master_port.to_string()]);
        let replica = Node::start(&replica_args);
        let mut sentinels = Vec::new();
        let mut ports = Vec::new();
        for n in 0..3 {
            let port = free_port();
            let conf = dir.path().join(format!("sentinel-{n}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor pm 127.0.0.1 {master_port} 2\n\
                     sentinel down-after-milliseconds pm 1000\nsentinel failover-timeout pm 4000\nsentinel parallel-syncs pm 1\n",
                    dir.path().display()
                ),
            )
            .unwrap();
            sentinels.push(Node::start(&[conf.display().to_string(), "--sentinel".into()]));
            ports.push(port);
        }
        eventually(Duration::from_secs(20), "replica in sync", || cli(replica_port, &["INFO", "replication"]).contains("master_link_status:up")).await;
        eventually(Duration::from_secs(30), "sentinels know the replica and each other", || {
            ports.iter().all(|p| {
                cli(*p, &["SENTINEL", "replicas", "pm"]).contains(&replica_port.to_string()) && cli(*p, &["SENTINEL", "sentinels", "pm"]).lines().filter(|l| *l == "name").count() == 2
            })
        })
        .await;
        Sentinels { master, _replica: replica, _sentinels: sentinels, replica_port, ports, _dir: dir }
    }

    /// The `[ledger]` section of a payhook using these sentinels, keys under `prefix`.
    fn ledger(&self, prefix: &str) -> String {
        let urls: Vec<String> = self.ports.iter().map(|p| format!("\"redis://127.0.0.1:{p}\"")).collect();
        format!("[ledger]\nbackend = \"redis-sentinel\"\nsentinels = [{}]\nmaster_name = \"pm\"\nkey_prefix = \"{prefix}:\"\ntimeout = \"300ms\"\n", urls.join(", "))
    }

    /// Waits until the sentinels name the replica as master.
    async fn replica_promoted(&self) {
        eventually(Duration::from_secs(30), "a new master", || cli(self.ports[0], &["SENTINEL", "get-master-addr-by-name", "pm"]).contains(&self.replica_port.to_string()))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sentinel_failover_under_traffic_forwards_each_order_once() {
    let mut redis = Sentinels::start().await;
    let backend = ok_backend().await;
    let a = Payhook::start(&config(&redis.ledger(&unique("sentinel")), &backend.url("/pay"), "")).await;
    let b = a.sibling().await;
    let provider = Provider::start(vec![a.addr, b.addr], 4, &unique("sent"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed = Instant::now();
    redis.master.kill();
    redis.replica_promoted().await;
    let failover = killed.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let without_ledger = exactly_once("sentinel failover", provider, &backend, failover).await;
    assert!(without_ledger < Duration::from_secs(15), "{without_ledger:?} without a ledger");
}

/// Regression: settling (complete, release) reused the connection to the old master after an
/// error, so an order claimed before a failover and accepted by the backend after it was never
/// marked done on the new master unless other traffic happened to look the master up again.
#[tokio::test(flavor = "multi_thread")]
async fn sentinel_failover_between_claim_and_completion_settles_on_the_new_master() {
    let mut redis = Sentinels::start().await;
    let slow = Canned { delay: Duration::from_millis(3500), ..Canned::json(200, r#"{"code":0}"#) };
    let backend = TestServer::start(Arc::new(move |_| slow.clone())).await;
    let prefix = unique("quiet");
    // Time for a failover while the backend holds the order: 3.7 s of a 4.5 s budget.
    let cfg = config(&redis.ledger(&prefix), &backend.url("/pay"), "").replace("reply_budget = \"3s\"", "reply_budget = \"4.5s\"");
    let gw = Payhook::start(&cfg.replace("timeout = \"1s\"", "timeout = \"3.7s\"")).await;
    let (h, b) = WxV3::public_key_mode().paid("quiet-1", 100);
    let (addr, hs): (_, Vec<(String, String)>) = (gw.addr, h.clone());
    let notification = tokio::spawn(async move {
        let hs: Vec<(&str, &str)> = hs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        http::send(addr, "POST", "/notify/wx/goods", &hs, b.as_bytes()).await.unwrap()
    });
    let record = format!("{prefix}:wechat:1230000109:quiet-1");
    eventually(Duration::from_secs(3), "the claim replicated", || cli(redis.replica_port, &["HGET", &record, "state"]) == "in_flight").await;
    let killed = Instant::now();
    redis.master.kill();
    redis.replica_promoted().await;
    assert!(killed.elapsed() < Duration::from_secs(3), "promoted before the backend answers ({:?})", killed.elapsed());
    let reply = notification.await.unwrap();
    assert_eq!(reply.status, 204);
    assert_eq!(cli(redis.replica_port, &["HGET", &record, "state"]), "done", "the record on the new master");
    assert_eq!(backend.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_reshard_and_failover_under_traffic_forward_each_order_once() {
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
    let mut nodes: Vec<Node> = ports
        .iter()
        .map(|p| {
            Node::start(&[
                "--port".into(), p.to_string(), "--bind".into(), "127.0.0.1".into(), "--cluster-enabled".into(), "yes".into(),
                "--cluster-config-file".into(), dir.path().join(format!("nodes-{p}.conf")).display().to_string(),
                "--cluster-node-timeout".into(), "1000".into(), "--save".into(), "".into(), "--appendonly".into(), "no".into(),
                "--dir".into(), dir.path().display().to_string(),
            ])
        })
        .collect();
    eventually(Duration::from_secs(10), "nodes up", || ports.iter().all(|p| cli(*p, &["PING"]) == "PONG")).await;
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let out = Command::new("redis-cli").arg("--cluster").arg("create").args(&addrs).args(["--cluster-replicas", "1", "--cluster-yes"]).output().unwrap();
    assert!(out.status.success(), "cluster create: {}", String::from_utf8_lossy(&out.stdout));
    eventually(Duration::from_secs(30), "cluster ok", || ports.iter().all(|p| cli(*p, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))).await;

    let seeds: Vec<String> = ports[..3].iter().map(|p| format!("\"redis://127.0.0.1:{p}\"")).collect();
    let ledger = format!("[ledger]\nbackend = \"redis-cluster\"\nnodes = [{}]\nkey_prefix = \"{}:\"\ntimeout = \"500ms\"\n", seeds.join(", "), unique("cluster"));
    let backend = ok_backend().await;
    let a = Payhook::start(&config(&ledger, &backend.url("/pay"), "")).await;
    let b = a.sibling().await;
    let provider = Provider::start(vec![a.addr, b.addr], 4, &unique("clu"));
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Move 2000 slots from one master to another while notifications flow.
    let masters: Vec<(u16, String)> = ports
        .iter()
        .filter(|p| cli(**p, &["ROLE"]).starts_with("master"))
        .map(|p| (*p, cli(*p, &["CLUSTER", "MYID"])))
        .collect();
    assert_eq!(masters.len(), 3);
    let reshard = Command::new("redis-cli")
        .args(["--cluster", "reshard", &format!("127.0.0.1:{}", masters[0].0), "--cluster-from", &masters[0].1, "--cluster-to", &masters[1].1])
        .args(["--cluster-slots", "2000", "--cluster-yes"])
        .output()
        .unwrap();
    assert!(reshard.status.success(), "reshard: {}", String::from_utf8_lossy(&reshard.stderr));
    eventually(Duration::from_secs(30), "cluster ok after resharding", || cli(ports[0], &["CLUSTER", "INFO"]).contains("cluster_state:ok")).await;

    // Then a master dies; its replica takes over.
    let victim = ports.iter().position(|p| *p == masters[2].0).unwrap();
    let replica = *ports
        .iter()
        .find(|p| cli(**p, &["ROLE"]).starts_with("slave") && cli(**p, &["CLUSTER", "NODES"]).lines().any(|l| l.contains("myself,slave") && l.contains(&masters[2].1)))
        .expect("the victim has a replica");
    let killed = Instant::now();
    nodes[victim].kill();
    let survivor = masters[0].0;
    let promoted = || cli(replica, &["ROLE"]).starts_with("master");
    if !holds_within(Duration::from_secs(15), promoted).await {
        // Some Redis builds leave the election to an operator after a reshard (the replica's
        // vote request goes unanswered); the topology change payhook must follow is the same.
        cli(replica, &["CLUSTER", "FAILOVER", "TAKEOVER"]);
    }
    eventually(Duration::from_secs(30), "failover", || promoted() && cli(survivor, &["CLUSTER", "INFO"]).contains("cluster_state:ok")).await;
    let failover = killed.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    exactly_once("cluster reshard+failover", provider, &backend, failover).await;
}
