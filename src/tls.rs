//! HTTPS on the notify listener (and optionally the admin listener): rustls through pingora,
//! TLS 1.2 and 1.3 only. The certificate chain and key are read from PEM files and swapped on
//! SIGHUP without dropping a connection: handshakes after the swap get the new certificate,
//! established connections keep theirs. A file that does not load keeps the old certificate.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, CryptoProvider, ResolvesServerCert};

use crate::metrics;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, String),
    #[error("{0} holds no certificate")]
    NoCertificate(PathBuf),
    #[error("{0} holds no private key")]
    NoKey(PathBuf),
    #[error("the private key does not match the certificate")]
    Mismatch,
    #[error("the certificate does not parse: {0}")]
    BadCertificate(String),
}

/// A loaded certificate chain and key, and when the leaf expires.
pub struct LoadedCert {
    key: Arc<CertifiedKey>,
    /// The leaf's `notAfter`, seconds since the epoch.
    pub not_after: i64,
}

impl LoadedCert {
    /// Reads and checks a PEM chain and key: the key must match the leaf.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<LoadedCert, TlsError> {
        pingora::tls::install_default_crypto_provider();
        let read = |p: &Path| std::fs::read(p).map_err(|e| TlsError::Read(p.to_path_buf(), e.to_string()));
        let cert_pem = read(cert_file)?;
        let key_pem = read(key_file)?;
        let chain: Vec<pingora::tls::CertificateDer<'static>> = pem::parse_many(&cert_pem)
            .map_err(|e| TlsError::BadCertificate(e.to_string()))?
            .into_iter()
            .filter(|p| p.tag() == "CERTIFICATE")
            .map(|p| pingora::tls::CertificateDer::from(p.into_contents()))
            .collect();
        let leaf = chain.first().ok_or_else(|| TlsError::NoCertificate(cert_file.to_path_buf()))?;
        let not_after = x509_parser::parse_x509_certificate(leaf)
            .map_err(|e| TlsError::BadCertificate(e.to_string()))?
            .1
            .validity()
            .not_after
            .timestamp();
        let key_der = pem::parse_many(&key_pem)
            .map_err(|e| TlsError::BadCertificate(e.to_string()))?
            .into_iter()
            .find_map(|p| match p.tag() {
                "PRIVATE KEY" => Some(pingora::tls::PrivateKeyDer::Pkcs8(p.into_contents().into())),
                "RSA PRIVATE KEY" => Some(pingora::tls::PrivateKeyDer::Pkcs1(p.into_contents().into())),
                "EC PRIVATE KEY" => Some(pingora::tls::PrivateKeyDer::Sec1(p.into_contents().into())),
                _ => None,
            })
            .ok_or_else(|| TlsError::NoKey(key_file.to_path_buf()))?;
        let provider = CryptoProvider::get_default().expect("installed above");
        let signing_key = provider.key_provider.load_private_key(key_der).map_err(|_| TlsError::NoKey(key_file.to_path_buf()))?;
        let key = CertifiedKey::new(chain, signing_key);
        key.keys_match().map_err(|_| TlsError::Mismatch)?;
        Ok(LoadedCert { key: Arc::new(key), not_after })
    }

    /// Seconds until the leaf expires (negative once it has).
    pub fn expires_in(&self) -> i64 {
        self.not_after - chrono::Utc::now().timestamp()
    }
}

/// The certificate a listener presents, swappable while it runs.
pub struct CertStore {
    listener: &'static str,
    cert_file: PathBuf,
    key_file: PathBuf,
    current: ArcSwap<LoadedCert>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore").field("listener", &self.listener).field("cert_file", &self.cert_file).finish()
    }
}

impl CertStore {
    pub fn open(listener: &'static str, cert_file: &Path, key_file: &Path) -> Result<Arc<CertStore>, TlsError> {
        let loaded = LoadedCert::load(cert_file, key_file)?;
        metrics::TLS_CERT_EXPIRY.with_label_values(&[listener]).set(loaded.not_after as f64);
        Ok(Arc::new(CertStore { listener, cert_file: cert_file.to_path_buf(), key_file: key_file.to_path_buf(), current: ArcSwap::from_pointee(loaded) }))
    }

    /// Reads the files again (SIGHUP); on any error the running certificate stays.
    pub fn reload(&self) {
        match LoadedCert::load(&self.cert_file, &self.key_file) {
            Ok(loaded) => {
                metrics::TLS_CERT_EXPIRY.with_label_values(&[self.listener]).set(loaded.not_after as f64);
                tracing::info!(listener = self.listener, expires_in_days = loaded.expires_in() / 86400, "TLS certificate reloaded");
                self.current.store(Arc::new(loaded));
            }
            Err(e) => tracing::error!(listener = self.listener, error = %e, "TLS certificate not reloaded; keeping the running one"),
        }
    }

    /// pingora's TLS settings: TLS 1.2+, the certificate from this store at every handshake.
    pub fn settings(self: &Arc<Self>) -> pingora::listeners::tls::TlsSettings {
        let mut settings = pingora::listeners::tls::TlsSettings::with_callbacks(Box::new(NoCallbacks)).expect("rustls settings without files");
        settings.set_cert_resolver(self.clone());
        settings
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().key.clone())
    }
}

struct NoCallbacks;

#[async_trait::async_trait]
impl pingora::listeners::TlsAccept for NoCallbacks {}
