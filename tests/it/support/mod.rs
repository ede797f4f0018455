//! Shared test support: the real payhook binary in a child process, fake backends, provider
//! signers written independently of payhook's own code, metrics scraping, private Redis servers.

pub mod certs;
pub mod http;
pub mod provider_api;
pub mod signers;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aes::cipher::{BlockDecrypt, KeyInit};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use serde_json::Value;

pub use self::http::{send, Canned, Received, Response, TestServer};

/// An HTTP request's headers as (name, value) pairs, in order.
pub type Headers = Vec<(String, String)>;

pub const APIV3_KEY: &str = "0123456789abcdef0123456789abcdef";
pub const NOTIFY_KEY: &str = "5fb2cd73c7b53918728417c50762e6d45fb2cd73c7b53918728417c50762e6d4";
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const MCHID: &str = "1230000109";
pub const APPID: &str = "wxd678efh567hg6787";
pub const PUB_KEY_ID: &str = "PUB_KEY_ID_0114232020240000000000000001";

pub fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(path)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{prefix}-{}-{nanos}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// The `[server]` section of a test gateway; `Payhook::start` fills in ports and its directory.
pub fn server_toml(reply_budget: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{{LISTEN}}"
admin_listen = "127.0.0.1:{{ADMIN}}"
threads = 2
reply_budget = "{reply_budget}"
admin_token = "${{PAYHOOK_TEST_ADMIN_TOKEN}}"
pid_file = "{{DIR}}/payhook.pid"
upgrade_sock = "{{DIR}}/upgrade.sock"
grace_period = "0s"
"#
    )
}

/// The TOML of a gateway with one WeChat v3 account `wx` and routes `goods` (+ extra routes).
pub fn config(ledger: &str, backend_url: &str, extra: &str) -> String {
    format!(
        r#"{server}
{ledger}

[accounts.wx]
provider = "wechat-v3"
mchid = "{MCHID}"
appid = "{APPID}"
apiv3_key = "${{PAYHOOK_TEST_APIV3_KEY}}"
platform_public_keys = [{{ id = "{PUB_KEY_ID}", pem_file = "{keys}/wx_platform_a.pub.pem" }}]
platform_certs = [{{ pem_file = "{keys}/wx_platform_b.cert.pem" }}, {{ pem_file = "{keys}/wx_platform_c.cert.pem" }}]
timestamp_tolerance = "5m"

[routes.goods]
backend = "{backend_url}"
envelope = "aes-256-ecb"
notify_key = "${{PAYHOOK_TEST_NOTIFY_KEY}}"
timeout = "1s"

{extra}
"#,
        server = server_toml("3s"),
        keys = fixture("keys").display()
    )
}

pub fn redis_ledger(url: &str) -> String {
    format!("[ledger]\nbackend = \"redis\"\nurl = \"{url}\"\nkey_prefix = \"{}:\"\ntimeout = \"300ms\"\n", unique("it"))
}

/// Polls `done` until it holds, for at most `within`; whether it held.
pub async fn holds_within(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// Waits until `done()` holds; fails the test after `within`, naming `what`.
pub async fn eventually(within: Duration, what: &str, done: impl FnMut() -> bool) {
    assert!(holds_within(within, done).await, "not within {within:?}: {what}");
}

/// The `key_prefix` a `redis_ledger()` config chose, read back from the config text.
pub fn key_prefix(config: &str) -> String {
    let line = config.lines().find(|l| l.starts_with("key_prefix")).expect("key_prefix");
    line.split('"').nth(1).unwrap().to_string()
}

/// A command to the machine's Redis (127.0.0.1:6379) with redis-cli; its trimmed output.
pub fn redis_cli(args: &[&str]) -> String {
    redis_cli_to(&["-p", "6379"], args)
}

/// A command with redis-cli to the server `to` names (`["-p", port]`, `["-s", socket]`); its
/// trimmed output.
pub fn redis_cli_to(to: &[&str], args: &[&str]) -> String {
    let out = Command::new("redis-cli").args(to).args(args).output().expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn embedded_ledger() -> String {
    "[ledger]\nbackend = \"embedded\"\npath = \"{DIR}/ledger.redb\"\n".to_string()
}

/// A payhook child process; killed on drop.
pub struct Payhook {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    /// The config before ports and directory were filled in, for siblings.
    template: String,
    config_text: String,
    child: Option<Child>,
    /// `PAYHOOK_LOG` for the child; `None` follows `PAYHOOK_TEST_LOG` (default info).
    log_level: Option<&'static str>,
    /// More environment for the child.
    env: Vec<(String, String)>,
}

impl Payhook {
    /// Starts payhook logging at `level` (e.g. `debug`).
    pub async fn start_logging(config_template: &str, level: &'static str) -> Payhook {
        Self::start_with(config_template, Some(level), Vec::new()).await
    }

    pub async fn start(config_template: &str) -> Payhook {
        Self::start_with(config_template, None, Vec::new()).await
    }

    /// Starts payhook with these environment variables set (e.g. `SSL_CERT_FILE`).
    pub async fn start_with_env(config_template: &str, env: &[(&str, &str)]) -> Payhook {
        Self::start_with(config_template, None, env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()).await
    }

    async fn start_with(config_template: &str, log_level: Option<&'static str>, env: Vec<(String, String)>) -> Payhook {
        let dir = tempfile::tempdir().unwrap();
        let (port, admin_port) = (free_port(), free_port());
        let text = config_template
            .replace("{LISTEN}", &port.to_string())
            .replace("{ADMIN}", &admin_port.to_string())
            .replace("{DIR}", &dir.path().display().to_string());
        let mut p = Payhook {
            addr: ([127, 0, 0, 1], port).into(),
            admin: ([127, 0, 0, 1], admin_port).into(),
            dir,
            template: config_template.to_string(),
            config_text: text,
            child: None,
            log_level,
            env,
        };
        p.spawn().await;
        p
    }

    /// A second instance of the same template (same shared ledger), on its own ports and directory.
    pub async fn sibling(&self) -> Payhook {
        Self::start_with(&self.template, self.log_level, self.env.clone()).await
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("payhook.toml")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("payhook.log")
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    async fn spawn(&mut self) {
        std::fs::write(self.config_path(), &self.config_text).unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).unwrap();
        let mut cmd = payhook_command();
        if let Some(level) = self.log_level {
            cmd.env("PAYHOOK_LOG", level);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let child = cmd
            .args(["run", "--config"])
            .arg(self.config_path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn payhook");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        // An HTTPS listener does not answer plain HTTP: that one only has to accept.
        let https = self.config_text.contains("tls_cert_file");
        loop {
            if let Ok(r) = send(self.admin, "GET", "/healthz", &[], b"").await {
                let notify_up = if https {
                    tokio::net::TcpStream::connect(self.addr).await.is_ok()
                } else {
                    send(self.addr, "GET", "/", &[], b"").await.is_ok()
                };
                if r.status == 200 && notify_up {
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("payhook exited with {status} during start-up:\n{}", self.logs());
            }
            assert!(Instant::now() < deadline, "payhook did not start:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal by name (`HUP`, `TERM`, `QUIT`, ...).
    /// Resident memory of the payhook process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.proc_status_kib("VmRSS:")
    }

    /// Peak resident memory of the payhook process since it started, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.proc_status_kib("VmHWM:")
    }

    fn proc_status_kib(&self, field: &str) -> u64 {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status().unwrap();
        assert!(status.success());
    }

    /// Replaces the config file (then `signal("HUP")` reloads it).
    pub fn write_config(&self, text: &str) {
        std::fs::write(self.config_path(), text).unwrap();
    }

    pub fn config_text(&self) -> String {
        std::fs::read_to_string(self.config_path()).unwrap()
    }

    /// pingora's graceful upgrade: a new process takes over the listeners (`run --upgrade`),
    /// then the old one gets SIGQUIT. Returns the old process, still draining.
    pub async fn upgrade(&mut self) -> Child {
        let sock = self.dir.path().join("upgrade.sock");
        let _ = std::fs::remove_file(&sock);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).unwrap();
        let mut cmd = payhook_command();
        if let Some(level) = self.log_level {
            cmd.env("PAYHOOK_LOG", level);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let new = cmd
            .args(["run", "--upgrade", "--config"])
            .arg(self.config_path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn payhook --upgrade");
        // The new process listens on the upgrade socket for the old one's listeners.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "the new process never opened {}:\n{}", sock.display(), self.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.signal("QUIT");
        self.child.replace(new).expect("running")
    }

    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&http::get(self.admin, "/metrics", &[]).await.text(), name, labels)
    }

    pub async fn post(&self, path: &str, headers: &[(String, String)], body: &[u8]) -> Response {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        send(self.addr, "POST", path, &h, body).await.expect("POST to payhook")
    }
}

impl Drop for Payhook {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `payhook` with the secrets the test configs name in their environment.
pub fn payhook_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_payhook"));
    cmd.env("PAYHOOK_TEST_APIV3_KEY", APIV3_KEY)
        .env("PAYHOOK_TEST_NOTIFY_KEY", NOTIFY_KEY)
        .env("PAYHOOK_TEST_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("PAYHOOK_LOG", std::env::var("PAYHOOK_TEST_LOG").unwrap_or_else(|_| "info".into()));
    cmd
}

/// Sum of a metric's samples whose labels include all of `labels` (0 when absent).
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            if metric != name {
                return None;
            }
            let all = labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Decrypts an `aes-256-ecb` envelope the way vk's Java sample does, independently of payhook.
pub fn open_ecb(body: &[u8], notify_key: &str) -> Value {
    let outer: Value = serde_json::from_slice(body).expect("envelope is JSON");
    let data = B64.decode(outer["encryptedData"].as_str().expect("encryptedData")).unwrap();
    let cipher = aes::Aes256::new_from_slice(&notify_key.as_bytes()[..32]).unwrap();
    let mut buf = data;
    for block in buf.chunks_exact_mut(16) {
        cipher.decrypt_block(block.into());
    }
    let pad = *buf.last().unwrap() as usize;
    buf.truncate(buf.len() - pad);
    serde_json::from_slice(&buf).expect("plaintext is JSON")
}

/// A backend that answers `{"code":0}` and records what it got.
pub async fn ok_backend() -> TestServer {
    TestServer::start(Arc::new(|_| Canned::json(200, r#"{"code":0}"#))).await
}

/// A backend whose answer the test can change while it runs.
pub async fn switchable_backend(initial: Canned) -> (TestServer, Arc<std::sync::Mutex<Canned>>) {
    let answer = Arc::new(std::sync::Mutex::new(initial));
    let current = answer.clone();
    let server = TestServer::start(Arc::new(move |_| current.lock().unwrap().clone())).await;
    (server, answer)
}

/// Signs WeChat Pay v3 notifications the way WeChat does (RSA-SHA256 over ts\nnonce\nbody\n,
/// resource sealed with AES-256-GCM), with a test platform key.
pub struct WxV3 {
    key: RsaKeyPair,
    pub serial: String,
    pub apiv3_key: String,
}

impl WxV3 {
    /// Key A in public-key mode (`PUB_KEY_ID_…`).
    pub fn public_key_mode() -> Self {
        Self::with_key("wx_platform_a.key.pem", PUB_KEY_ID)
    }

    /// Certificate B (serial from the certificate).
    pub fn cert_b() -> Self {
        Self::with_key("wx_platform_b.key.pem", "5157F09EFDC096DE15EBE81A47057A7232F1B8E1")
    }

    pub fn with_key(file: &str, serial: &str) -> Self {
        let pem = std::fs::read(fixture(&format!("keys/{file}"))).unwrap();
        let der = pem::parse(pem).unwrap();
        WxV3 { key: RsaKeyPair::from_pkcs8(der.contents()).unwrap(), serial: serial.to_string(), apiv3_key: APIV3_KEY.into() }
    }

    /// A paid Transaction as WeChat sends it.
    pub fn transaction(out_trade_no: &str, total: u64) -> Value {
        serde_json::json!({
            "appid": APPID, "mchid": MCHID, "out_trade_no": out_trade_no,
            "transaction_id": format!("42000{}", out_trade_no.len()), "trade_type": "JSAPI",
            "trade_state": "SUCCESS", "trade_state_desc": "支付成功", "bank_type": "OTHERS",
            "attach": "{\"user_id\":\"u001\"}", "success_time": "2026-11-27T13:29:35+08:00",
            "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
            "amount": {"total": total, "payer_total": total, "currency": "CNY", "payer_currency": "CNY"}
        })
    }

    pub fn body(&self, event_type: &str, resource: &Value) -> String {
        let nonce = "0123456789ab";
        let key = ring::aead::LessSafeKey::new(ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, self.apiv3_key.as_bytes()).unwrap());
        let mut buf = serde_json::to_vec(resource).unwrap();
        key.seal_in_place_append_tag(
            ring::aead::Nonce::try_assume_unique_for_key(nonce.as_bytes()).unwrap(),
            ring::aead::Aad::from(b"transaction"),
            &mut buf,
        )
        .unwrap();
        serde_json::json!({
            "id": "EV-2018022511223320873", "create_time": "2026-11-27T13:29:35+08:00",
            "resource_type": "encrypt-resource", "event_type": event_type, "summary": "支付成功",
            "resource": {"original_type": "transaction", "algorithm": "AEAD_AES_256_GCM",
                         "ciphertext": B64.encode(buf), "associated_data": "transaction", "nonce": nonce}
        })
        .to_string()
    }

    pub fn headers(&self, body: &str, timestamp: i64) -> Headers {
        let nonce = "5K8264ILTKCH16CQ2502SI8ZNMTM67VS";
        let message = format!("{timestamp}\n{nonce}\n{body}\n");
        let mut sig = vec![0; self.key.public().modulus_len()];
        self.key.sign(&RSA_PKCS1_SHA256, &ring::rand::SystemRandom::new(), message.as_bytes(), &mut sig).unwrap();
        vec![
            ("Content-Type".into(), "application/json".into()),
            ("Wechatpay-Timestamp".into(), timestamp.to_string()),
            ("Wechatpay-Nonce".into(), nonce.into()),
            ("Wechatpay-Signature".into(), B64.encode(sig)),
            ("Wechatpay-Serial".into(), self.serial.clone()),
            ("Wechatpay-Signature-Type".into(), "WECHATPAY2-SHA256-RSA2048".into()),
        ]
    }

    /// A complete signed notification of a paid order: (headers, body).
    pub fn paid(&self, out_trade_no: &str, total: u64) -> (Headers, String) {
        let body = self.body("TRANSACTION.SUCCESS", &Self::transaction(out_trade_no, total));
        (self.headers(&body, now()), body)
    }
}

pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A private redis-server on a free port, for tests that stop and restart Redis.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    /// Set for a durable server: AOF with fsync on every write, so SIGKILL loses nothing.
    aof_dir: Option<tempfile::TempDir>,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        let mut r = RedisServer { port: free_port(), child: None, aof_dir: None };
        r.resume().await;
        r
    }

    /// The production setting the Guarantees rely on: `appendonly yes`, `appendfsync always`.
    pub async fn start_durable() -> RedisServer {
        let mut r = RedisServer { port: free_port(), child: None, aof_dir: Some(tempfile::tempdir().unwrap()) };
        r.resume().await;
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub async fn resume(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""]);
        match &self.aof_dir {
            Some(dir) => cmd.args(["--appendonly", "yes", "--appendfsync", "always", "--dir"]).arg(dir.path()),
            None => cmd.args(["--appendonly", "no"]),
        };
        let child = cmd
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        // Ready means answering PING, not just accepting: an AOF replay happens after bind.
        while !redis_answers(self.port).await {
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs a command with redis-cli (e.g. `CLIENT PAUSE 2000 ALL`).
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli_to(&["-p", &self.port.to_string()], args)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn redis_answers(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { return false };
    if stream.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    matches!(tokio::time::timeout(Duration::from_secs(1), stream.read_exact(&mut buf)).await, Ok(Ok(_)) if &buf == b"+PONG\r\n")
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `p` quantile of sorted latencies, in milliseconds (benches).
pub fn quantile_ms(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize).saturating_sub(1).min(sorted.len() - 1)].as_secs_f64() * 1e3
}
