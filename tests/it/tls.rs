//! HTTPS on the notify listener: a certificate from a private CA, `payhook simulate --ca-file`,
//! a client with another CA refused, the certificate swapped on SIGHUP while a keep-alive
//! connection goes on, a bad file on SIGHUP kept out, and `check`'s refusals and warning; and
//! outbound HTTPS: backends under `upstream_ca_file`, provider APIs under the system's roots.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora::tls::{CertificateDer, ClientConfig, RootCertStore, ServerName, TlsConnector};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::support::certs::{issue, make_ca, tls_front};
use crate::support::provider_api::ProviderApi;
use crate::support::*;

fn pem_der(file: &Path) -> Vec<u8> {
    pem::parse(std::fs::read(file).unwrap()).unwrap().into_contents()
}

/// A TLS keep-alive connection trusting `ca` only.
struct TlsConn {
    stream: BufReader<pingora::tls::ClientTlsStream<tokio::net::TcpStream>>,
}

impl TlsConn {
    async fn open(addr: std::net::SocketAddr, ca: &Path) -> std::io::Result<TlsConn> {
        pingora::tls::install_default_crypto_provider();
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(pem_der(ca))).unwrap();
        let config = ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let server = ServerName::IpAddress(addr.ip().into());
        let stream = TlsConnector::from(Arc::new(config)).connect(server, tcp).await?;
        Ok(TlsConn { stream: BufReader::new(stream) })
    }

    /// The certificate the server presented.
    fn peer_certificate(&self) -> Vec<u8> {
        self.stream.get_ref().get_ref().1.peer_certificates().unwrap()[0].to_vec()
    }

    async fn post(&mut self, path: &str, headers: &[(String, String)], body: &[u8]) -> std::io::Result<u16> {
        let mut head = format!("POST {path} HTTP/1.1\r\nHost: payhook\r\nContent-Length: {}\r\n", body.len());
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        self.stream.get_mut().write_all(&request).await?;
        let mut status_line = String::new();
        self.stream.read_line(&mut status_line).await?;
        let mut length = 0;
        loop {
            let mut line = String::new();
            self.stream.read_line(&mut line).await?;
            if line.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await?;
        Ok(status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn https_notify_listener_with_a_private_ca_swapped_on_sighup() {
    let certs = tempfile::tempdir().unwrap();
    let d = certs.path();
    make_ca(d, "ca");
    make_ca(d, "other-ca");
    issue(d, "ca", "first", "IP:127.0.0.1");
    issue(d, "ca", "second", "IP:127.0.0.1");
    std::fs::copy(d.join("first.pem"), d.join("listener.pem")).unwrap();
    std::fs::copy(d.join("first.key"), d.join("listener.key")).unwrap();
    let tls = format!("tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n", d.join("listener.pem").display(), d.join("listener.key").display());
    let backend = ok_backend().await;
    let cfg = config(&redis_ledger("redis://127.0.0.1:6379/0"), &backend.url("/pay"), "").replace("grace_period = \"0s\"\n", &format!("grace_period = \"0s\"\n{tls}"));
    let gw = Payhook::start(&cfg).await;

    // The simulator over HTTPS, trusting the private CA; and refusing with another CA.
    std::fs::write(d.join("apiv3.txt"), APIV3_KEY).unwrap();
    let simulate = |order: &str, ca: &str| {
        payhook_command()
            .args(["simulate", "--provider", "wechat-v3", "--to", &format!("https://{}/notify/wx/goods", gw.addr)])
            .args(["--ca-file", &d.join(ca).display().to_string(), "--key-file", &fixture("keys/wx_platform_a.key.pem").display().to_string()])
            .args(["--apiv3-key-file", &d.join("apiv3.txt").display().to_string(), "--serial", PUB_KEY_ID, "--mchid", MCHID, "--appid", APPID])
            .args(["--out-trade-no", order, "--total-fee", "100"])
            .output()
            .unwrap()
    };
    let out = simulate("https-1", "ca.pem");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(backend.count(), 1);
    let out = simulate("https-2", "other-ca.pem");
    assert!(!out.status.success(), "a client trusting another CA refuses the listener");
    assert_eq!(backend.count(), 1);

    let expiry = gw.metric("payhook_tls_cert_expiry_seconds", &[("listener", "notify")]).await as i64;
    assert!((now() + 86_400..=now() + 2 * 86_400 + 60).contains(&expiry), "notAfter {expiry}");

    // A keep-alive connection, then the certificate is swapped by SIGHUP.
    let wx = WxV3::public_key_mode();
    let mut kept = TlsConn::open(gw.addr, &d.join("ca.pem")).await.unwrap();
    assert_eq!(kept.peer_certificate(), pem_der(&d.join("first.pem")));
    let (h, b) = wx.paid("https-3", 100);
    assert_eq!(kept.post("/notify/wx/goods", &h, b.as_bytes()).await.unwrap(), 204);
    std::fs::copy(d.join("second.pem"), d.join("listener.pem")).unwrap();
    std::fs::copy(d.join("second.key"), d.join("listener.key")).unwrap();
    gw.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw.logs().contains("TLS certificate reloaded") {
        assert!(Instant::now() < deadline, "no reload:\n{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (h, b) = wx.paid("https-4", 100);
    assert_eq!(kept.post("/notify/wx/goods", &h, b.as_bytes()).await.unwrap(), 204, "the established connection goes on");
    let fresh = TlsConn::open(gw.addr, &d.join("ca.pem")).await.unwrap();
    assert_eq!(fresh.peer_certificate(), pem_der(&d.join("second.pem")), "new handshakes get the new certificate");

    // A broken file on SIGHUP is refused; the running certificate stays.
    std::fs::write(d.join("listener.pem"), "not a certificate").unwrap();
    gw.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw.logs().contains("TLS certificate not reloaded") {
        assert!(Instant::now() < deadline, "no refusal:\n{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = TlsConn::open(gw.addr, &d.join("ca.pem")).await.unwrap();
    assert_eq!(after.peer_certificate(), pem_der(&d.join("second.pem")));
    assert_eq!(backend.count(), 3);

    // check: a key that does not match is refused; a certificate near its expiry is warned about.
    std::fs::copy(d.join("second.pem"), d.join("listener.pem")).unwrap();
    let check = |text: &str| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("payhook.toml");
        std::fs::write(&path, text.replace("{LISTEN}", "18083").replace("{ADMIN}", "19093").replace("{DIR}", &dir.path().display().to_string())).unwrap();
        let out = payhook_command().args(["check", "--config"]).arg(&path).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, err) = check(&cfg);
    assert!(ok && err.contains("WARNING: server.tls_cert_file expires in ") && err.contains(" days: renew it"), "{err}");
    let (ok, err) = check(&cfg.replace("listener.key", "first.key"));
    assert!(!ok && err.contains("`server.tls_key_file`: the private key does not match the certificate"), "{err}");
    assert!(!err.contains("PRIVATE KEY"), "{err}");
}

/// Regression: `upstream_ca_file` replaced the system's roots for every outbound call, so the
/// provider order queries (sync, the sweep) failed against the providers' public certificates.
/// Here the "system" is `SSL_CERT_FILE` naming a second private CA, which the provider API's
/// certificate comes from; the backend's comes from `upstream_ca_file`'s CA.
#[tokio::test(flavor = "multi_thread")]
async fn a_private_ca_for_backends_leaves_provider_queries_the_system_roots() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_ca(d, "backend-ca");
    issue(d, "backend-ca", "backend", "IP:127.0.0.1");
    make_ca(d, "system-ca");
    issue(d, "system-ca", "provider", "IP:127.0.0.1");
    let backend = ok_backend().await;
    let backend_tls = tls_front(d, "backend", backend.addr).await;
    let api = ProviderApi::start().await;
    let api_tls = tls_front(d, "provider", api.server.addr).await;

    let query = api.wechat_v3_keys("/wx3").replace(&format!("http://{}", api.server.addr), &format!("https://{api_tls}"));
    let cfg = config(&embedded_ledger(), &format!("https://{backend_tls}/pay"), "")
        .replace("grace_period = \"0s\"", &format!("grace_period = \"0s\"\nupstream_ca_file = \"{}\"", d.join("backend-ca.pem").display()))
        .replace("timestamp_tolerance = \"5m\"\n", &format!("timestamp_tolerance = \"5m\"\n{query}"));
    assert!(cfg.contains(&format!("https://{api_tls}/wx3")), "{cfg}");
    let gw = Payhook::start_with_env(&cfg, &[("SSL_CERT_FILE", &d.join("system-ca.pem").display().to_string())]).await;

    api.paid("tls-sync-1", 700);
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let r = http::send(gw.admin, "POST", "/v1/orders/wx/tls-sync-1/sync", &[("Authorization", &auth)], br#"{"type":"goods","await_notify_ms":0}"#)
        .await
        .unwrap();
    assert_eq!((r.status, r.text()), (200, r#"{"paid":true,"state":"done","forwarded":true,"user_order_success":true}"#.to_string()));
    assert_eq!((api.count(), backend.count()), (1, 1), "one query over HTTPS, one forward over HTTPS");
    assert_eq!(open_ecb(&backend.requests()[0].body, NOTIFY_KEY)["total_fee"], 700);
}
