//! A private CA and certificates it issues, made with the `openssl` command for TLS tests.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use pingora::tls::{CertificateDer, PrivateKeyDer, ServerConfig, TlsAcceptor};

pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl is installed (scripts/setup.sh)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A self-signed CA: `{ca}.pem` and `{ca}.key` in `dir`.
pub fn make_ca(dir: &Path, ca: &str) {
    openssl(dir, &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &format!("{ca}.key"), "-out", &format!("{ca}.pem"), "-days", "2", "-subj", &format!("/CN={ca}")]);
}

pub fn issue(dir: &Path, ca: &str, name: &str, san: &str) {
    std::fs::write(dir.join(format!("{name}.ext")), format!("subjectAltName={san}\nbasicConstraints=CA:FALSE\n")).unwrap();
    openssl(dir, &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", &format!("{name}.key"), "-out", &format!("{name}.csr"), "-subj", &format!("/CN={name}")]);
    openssl(
        dir,
        &[
            "x509", "-req", "-in", &format!("{name}.csr"), "-CA", &format!("{ca}.pem"), "-CAkey", &format!("{ca}.key"), "-CAcreateserial",
            "-out", &format!("{name}.pem"), "-days", "2", "-extfile", &format!("{name}.ext"),
        ],
    );
}


/// An HTTPS front for a plain test server: terminates TLS with `{name}.pem` / `{name}.key` from
/// `dir` and pipes each connection to `target`. Returns its address.
pub async fn tls_front(dir: &Path, name: &str, target: SocketAddr) -> SocketAddr {
    pingora::tls::install_default_crypto_provider();
    let der = |file: String| pem::parse(std::fs::read(dir.join(file)).unwrap()).unwrap().into_contents();
    let cert = CertificateDer::from(der(format!("{name}.pem")));
    let key = PrivateKeyDer::try_from(der(format!("{name}.key"))).unwrap();
    let config = ServerConfig::builder().with_no_client_auth().with_single_cert(vec![cert], key).unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let (Ok(mut tls), Ok(mut plain)) = (acceptor.accept(tcp).await, tokio::net::TcpStream::connect(target).await) else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}
