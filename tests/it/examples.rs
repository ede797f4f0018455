//! The backend developer kit end to end: the real Java and PHP example backends behind a real
//! payhook, driven by the real `payhook simulate`; `payhook keygen`; `payhook check`'s warning.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A gateway with accounts shaped like conf/payhook.toml's demo accounts, whose provider keys
/// are the files of `keys` (named as in conf/demo, which `payhook keygen` also uses), and one
/// route `goods` to `backend_url`.
fn gateway_config(keys: &Path, backend_url: &str, envelope: &str) -> String {
    format!(
        r#"{server}
{ledger}

[accounts.wx-demo]
provider = "wechat-v3"
mchid = "1230000109"
apiv3_key_file = "{keys}/wechat_v3_apiv3_key.txt"
platform_public_keys = [{{ id = "PUB_KEY_ID_0000DEMO", pem_file = "{keys}/wechat_v3_platform.pub.pem" }}]

[accounts.wxv2-demo]
provider = "wechat-v2"
mch_id = "1230000109"
api_key_file = "{keys}/wechat_v2_api_key.txt"

[accounts.alipay-demo]
provider = "alipay"
app_id = "2021000000000000"
alipay_public_key_file = "{keys}/alipay.pub.pem"

[routes.goods]
backend = "{backend_url}"
envelope = "{envelope}"
notify_key = "${{PAYHOOK_TEST_NOTIFY_KEY}}"
timeout = "3s"
"#,
        server = server_toml("4s"),
        ledger = embedded_ledger(),
        keys = keys.display()
    )
}

/// `payhook simulate …` from the repository root, where its demo-key defaults point.
async fn simulate(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_payhook"))
        .arg("simulate")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .await
        .expect("run payhook simulate")
}

fn show(out: &Output) -> String {
    format!("{}\nstdout:\n{}\nstderr:\n{}", out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[derive(Clone, Copy, Debug)]
enum Example {
    Java,
    Php,
}

/// One of examples/ running on its own orders file; killed on drop.
struct ExampleBackend {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl ExampleBackend {
    async fn start(example: Example, envelope: &str, orders: &Value) -> ExampleBackend {
        let dir = tempfile::tempdir().unwrap();
        let orders_file = dir.path().join("orders.json");
        std::fs::write(&orders_file, serde_json::to_vec_pretty(orders).unwrap()).unwrap();
        let log = File::create(dir.path().join("backend.log")).unwrap();
        // Java picks its own port and prints it; php -S is given one.
        let php_port = free_port();
        let mut cmd = match example {
            Example::Java => {
                let classes = dir.path().join("classes");
                let javac = Command::new("javac")
                    .arg("-d")
                    .arg(&classes)
                    .arg(repo("examples/java/PayhookBackend.java"))
                    .output()
                    .expect("javac is installed (scripts/setup.sh)");
                assert!(javac.status.success(), "javac failed: {}", show(&javac));
                let mut cmd = Command::new("java");
                // PORT=0: the backend picks a free port and prints it.
                cmd.arg("-cp").arg(&classes).arg("PayhookBackend").env("PORT", "0");
                cmd
            }
            Example::Php => {
                let mut cmd = Command::new("php");
                // The docroot is the temp dir: nothing of the repository can be served.
                cmd.arg("-S").arg(format!("127.0.0.1:{php_port}")).arg("-t").arg(dir.path()).arg(repo("examples/php/index.php"));
                cmd
            }
        };
        let child = cmd
            .env("NOTIFY_KEY", NOTIFY_KEY)
            .env("ENVELOPE", envelope)
            .env("ORDERS_FILE", &orders_file)
            .env("HOST", "127.0.0.1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{example:?} example backend does not start: {e}"));
        let mut backend = ExampleBackend { child, url: String::new(), dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let port = match example {
                Example::Java => backend.log().lines().find_map(|l| l.strip_prefix("listening on ")?.trim().parse::<u16>().ok()),
                Example::Php => Some(php_port),
            };
            if let Some(port) = port {
                if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                    backend.url = format!("http://127.0.0.1:{port}/pay/notify");
                    return backend;
                }
            }
            if let Some(status) = backend.child.try_wait().unwrap() {
                panic!("{example:?} backend exited with {status}:\n{}", backend.log());
            }
            assert!(Instant::now() < deadline, "{example:?} backend did not start:\n{}", backend.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The backend's own log: one line per notification it received.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("backend.log")).unwrap_or_default()
    }

    fn order(&self, out_trade_no: &str) -> Value {
        let orders: Value = serde_json::from_slice(&std::fs::read(self.dir.path().join("orders.json")).unwrap()).unwrap();
        orders[out_trade_no].clone()
    }

    fn assert_paid_once(&self, out_trade_no: &str, total_fee: u64) {
        let order = self.order(out_trade_no);
        assert_eq!((&order["status"], &order["deliveries"], &order["total_fee"]), (&json!(1), &json!(1), &json!(total_fee)), "{out_trade_no}: {order}");
        assert_eq!(order["transaction_id"].as_str().map(str::len), Some(28), "{out_trade_no}: {order}");
    }

    fn assert_unpaid(&self, out_trade_no: &str) {
        let order = self.order(out_trade_no);
        assert!(order["status"] == 0 && order.get("deliveries").is_none(), "{out_trade_no}: {order}");
    }
}

impl Drop for ExampleBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every provider pays its order exactly once, duplicates included; an amount mismatch and a
/// tampered notification leave their orders unpaid, and the simulator says so by its exit status.
async fn pays_each_order_exactly_once(example: Example, envelope: &str) {
    let orders = json!({
        "v3-1": {"total_fee": 1234, "status": 0},
        "v2-md5-1": {"total_fee": 500, "status": 0},
        "v2-hmac-1": {"total_fee": 501, "status": 0},
        "alipay-1": {"total_fee": 1, "status": 0},
        "alipay-gbk-1": {"total_fee": 99900, "status": 0, "title": "测试商品"},
        "mismatch-1": {"total_fee": 999, "status": 0},
        "tamper-1": {"total_fee": 1234, "status": 0},
    });
    let backend = ExampleBackend::start(example, envelope, &orders).await;
    let gw = Payhook::start(&gateway_config(&repo("conf/demo"), &backend.url, envelope)).await;
    let to = |account: &str| format!("http://{}/notify/{account}/goods", gw.addr);
    let context = || format!("{example:?}/{envelope}\nbackend log:\n{}\npayhook log:\n{}", backend.log(), gw.logs());

    let paid: [(&str, u64, &str, &[&str]); 5] = [
        ("v3-1", 1234, "wx-demo", &["--provider", "wechat-v3", "--attach", r#"{"user_id":"u001"}"#]),
        ("v2-md5-1", 500, "wxv2-demo", &["--provider", "wechat-v2"]),
        ("v2-hmac-1", 501, "wxv2-demo", &["--provider", "wechat-v2", "--sign-type", "HMAC-SHA256"]),
        ("alipay-1", 1, "alipay-demo", &["--provider", "alipay"]),
        ("alipay-gbk-1", 99900, "alipay-demo", &["--provider", "alipay", "--charset", "gbk"]),
    ];
    for (out_trade_no, fee, account, flags) in paid {
        let (url, fee_text) = (to(account), fee.to_string());
        let mut args = vec!["--to", url.as_str(), "--out-trade-no", out_trade_no, "--total-fee", fee_text.as_str(), "--duplicate", "3"];
        args.extend_from_slice(flags);
        let out = simulate(&args).await;
        assert!(out.status.success(), "{out_trade_no}: {}\n{}", show(&out), context());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(stdout.lines().filter(|l| l.ends_with("-> success")).count(), 4, "{stdout}");
        backend.assert_paid_once(out_trade_no, fee);
    }

    // The backend refuses the amount: the provider hears "retry", the order stays unpaid.
    let url = to("wx-demo");
    let out = simulate(&["--provider", "wechat-v3", "--to", &url, "--out-trade-no", "mismatch-1", "--total-fee", "1234"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("HTTP 500"), "{}", show(&out));
    backend.assert_unpaid("mismatch-1");
    assert!(backend.log().contains(r#"out_trade_no="mismatch-1" total_fee=1234 result=amount_mismatch"#), "{}", context());

    // A byte changed after signing never gets past the gateway.
    for (provider, account) in [("wechat-v3", "wx-demo"), ("wechat-v2", "wxv2-demo"), ("alipay", "alipay-demo")] {
        let url = to(account);
        let out = simulate(&["--provider", provider, "--to", &url, "--out-trade-no", "tamper-1", "--total-fee", "1234", "--tamper"]).await;
        assert_eq!(out.status.code(), Some(1), "{provider}: {}", show(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains("were not"), "{}", show(&out));
    }
    backend.assert_unpaid("tamper-1");
    assert!(!backend.log().contains("tamper-1"), "a tampered notification reached the backend:\n{}", context());
    assert_eq!(backend.order("alipay-gbk-1")["title"], "测试商品", "the backend keeps the order's other fields");
}

#[tokio::test(flavor = "multi_thread")]
async fn java_example_pays_once_with_aes_256_ecb() {
    pays_each_order_exactly_once(Example::Java, "aes-256-ecb").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn java_example_pays_once_with_aes192() {
    pays_each_order_exactly_once(Example::Java, "aes192").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn java_example_pays_once_with_key() {
    pays_each_order_exactly_once(Example::Java, "key").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn php_example_pays_once_with_aes_256_ecb() {
    pays_each_order_exactly_once(Example::Php, "aes-256-ecb").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn php_example_pays_once_with_aes192() {
    pays_each_order_exactly_once(Example::Php, "aes192").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn php_example_pays_once_with_key() {
    pays_each_order_exactly_once(Example::Php, "key").await;
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// `payhook check` on a config whose `{LISTEN}` is `listen`; returns stderr.
fn check(config: &str, listen: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let text = config.replace("127.0.0.1:{LISTEN}", listen).replace("{ADMIN}", "19090").replace("{DIR}", &dir.path().display().to_string());
    let path = dir.path().join("payhook.toml");
    std::fs::write(&path, text).unwrap();
    let out = payhook_command().args(["check", "--config"]).arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    String::from_utf8(out.stderr).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn keygen_keys_sign_for_a_gateway_configured_with_them() {
    let keys = tempfile::tempdir().unwrap();
    let out_dir = keys.path().display().to_string();
    for provider in ["wechat-v3", "wechat-v2", "alipay"] {
        let out = Command::new(env!("CARGO_BIN_EXE_payhook")).args(["keygen", "--provider", provider, "--out", &out_dir]).output().unwrap();
        assert!(out.status.success(), "{}", show(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(&format!("payhook simulate --provider {provider} --")), "{stdout}");
    }
    let file = |name: &str| keys.path().join(name);
    for (name, expected) in [
        ("wechat_v3_platform.key.pem", 0o600),
        ("wechat_v3_platform.pub.pem", 0o644),
        ("wechat_v3_apiv3_key.txt", 0o600),
        ("wechat_v2_api_key.txt", 0o600),
        ("alipay.key.pem", 0o600),
        ("alipay.pub.pem", 0o644),
    ] {
        assert_eq!(mode(&file(name)), expected, "{name}");
    }
    assert!(std::fs::read_to_string(file("wechat_v3_platform.key.pem")).unwrap().starts_with("-----BEGIN PRIVATE KEY-----\n"));
    assert!(std::fs::read_to_string(file("alipay.pub.pem")).unwrap().starts_with("-----BEGIN PUBLIC KEY-----\n"));
    for secret in ["wechat_v3_apiv3_key.txt", "wechat_v2_api_key.txt"] {
        let text = std::fs::read_to_string(file(secret)).unwrap();
        assert!(text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit()), "{secret}");
    }
    // Keys are never overwritten.
    let again = Command::new(env!("CARGO_BIN_EXE_payhook")).args(["keygen", "--provider", "wechat-v2", "--out", &out_dir]).output().unwrap();
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("exists"), "{}", show(&again));

    let backend = ok_backend().await;
    let config = gateway_config(keys.path(), &backend.url("/pay/notify"), "aes-256-ecb");
    let gw = Payhook::start(&config).await;
    let to = |account: &str| format!("http://{}/notify/{account}/goods", gw.addr);
    let (v3, v2, alipay) = (to("wx-demo"), to("wxv2-demo"), to("alipay-demo"));
    let (v3_key, apiv3_key, v2_key, alipay_key) = (
        file("wechat_v3_platform.key.pem"),
        file("wechat_v3_apiv3_key.txt"),
        file("wechat_v2_api_key.txt"),
        file("alipay.key.pem"),
    );
    let matching: [Vec<&str>; 3] = [
        vec!["--provider", "wechat-v3", "--to", v3.as_str(), "--key-file", v3_key.to_str().unwrap(), "--apiv3-key-file", apiv3_key.to_str().unwrap()],
        vec!["--provider", "wechat-v2", "--to", v2.as_str(), "--api-key-file", v2_key.to_str().unwrap()],
        vec!["--provider", "alipay", "--to", alipay.as_str(), "--key-file", alipay_key.to_str().unwrap()],
    ];
    for (i, args) in matching.iter().enumerate() {
        let out_trade_no = format!("kg-{i}");
        let out = simulate(&[&args[..], &["--out-trade-no", out_trade_no.as_str(), "--total-fee", "100"]].concat()).await;
        assert!(out.status.success(), "{}\npayhook log:\n{}", show(&out), gw.logs());
    }
    assert_eq!(backend.count(), 3);

    // The demo keys (the defaults) no longer match this gateway.
    for args in [["--provider", "wechat-v3", "--to", v3.as_str()], ["--provider", "wechat-v2", "--to", v2.as_str()], ["--provider", "alipay", "--to", alipay.as_str()]] {
        let out = simulate(&[&args[..], &["--out-trade-no", "kg-demo", "--total-fee", "100"]].concat()).await;
        assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    }
    assert_eq!(backend.count(), 3);

    // Fresh keys may face the world without a warning; the tests' notify key is vk's published
    // default, which gets one naming the route, never the key.
    assert_eq!(check(&config.replace("${PAYHOOK_TEST_NOTIFY_KEY}", "fresh-notify-key-0123456789abcdef"), "0.0.0.0:18080"), "");
    let warning = check(&config, "0.0.0.0:18080");
    assert!(warning.starts_with("WARNING: routes goods use vk-uni-pay's published default notifyKey"), "{warning}");
    assert!(!warning.to_lowercase().contains(&NOTIFY_KEY.to_lowercase()), "{warning}");
    assert_eq!(check(&config, "127.0.0.1:18080"), "", "loopback: a local trial");
}

#[test]
fn check_warns_when_demo_keys_listen_beyond_loopback() {
    let config = gateway_config(&repo("conf/demo"), "http://127.0.0.1:9/pay/notify", "aes-256-ecb");
    assert_eq!(check(&config, "127.0.0.1:18080"), "");
    assert_eq!(check(&config, "[::1]:18080"), "");
    let warning = check(&config, "0.0.0.0:18080");
    assert!(warning.starts_with("WARNING: server.listen 0.0.0.0:18080 is not a loopback address"), "{warning}");
    assert!(warning.contains("conf/demo/wechat_v3_platform.pub.pem") && warning.contains("conf/demo/alipay.pub.pem"), "{warning}");
    // Names files, never their contents.
    let v2_key = std::fs::read_to_string(repo("conf/demo/wechat_v2_api_key.txt")).unwrap();
    assert!(!warning.contains(v2_key.trim()), "{warning}");
}

/// The Java and PHP registration snippets against a real payhook: each registers once (201),
/// again (200), and a conflicting amount is refused; the fields reach the backend.
#[tokio::test(flavor = "multi_thread")]
async fn java_and_php_registration_snippets_register_orders() {
    let backend = ok_backend().await;
    let gw = Payhook::start(&config(&redis_ledger("redis://127.0.0.1:6379/0"), &backend.url("/pay"), "")).await;
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let admin = format!("http://{}", gw.admin);
    let run = |program: &str, script: std::path::PathBuf, args: &[&str]| {
        let out = Command::new(program)
            .arg(script)
            .args(args)
            .env("PAYHOOK_ADMIN", &admin)
            .env("PAYHOOK_ADMIN_TOKEN", ADMIN_TOKEN)
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    for (program, script, order) in [
        ("java", examples.join("java/RegisterOrder.java"), "reg-java-1"),
        ("php", examples.join("php/register.php"), "reg-php-1"),
    ] {
        let args = ["wx", order, "goods", "1234", "2h", "user_id=u001", "recharge_balance=100"];
        let (code, out) = run(program, script.clone(), &args);
        assert_eq!(code, Some(0), "{program} first registration: {out}");
        let (code, out) = run(program, script.clone(), &args);
        assert_eq!(code, Some(0), "{program} same registration again: {out}");
        let (code, out) = run(program, script.clone(), &["wx", order, "goods", "999"]);
        assert_eq!(code, Some(3), "{program} conflicting amount: {out}");
        let (h, b) = WxV3::public_key_mode().paid(order, 1234);
        assert_eq!(gw.post("/notify/wx", &h, b.as_bytes()).await.status, 204, "{program}");
    }
    let orders: Vec<serde_json::Value> = backend.requests().iter().map(|r| open_ecb(&r.body, NOTIFY_KEY)).collect();
    assert_eq!(orders.len(), 2);
    for order in orders {
        assert_eq!((order["user_id"].clone(), order["type"].clone()), (serde_json::json!("u001"), serde_json::json!("goods")));
        assert!(order["recharge_balance"] == 100 || order["recharge_balance"] == "100", "{order}");
    }
}
