//! Signals that change a running payhook without dropping a connection.
//!
//! SIGHUP ([`Reloader`]): re-read the listeners' TLS certificates, and the config, swapping in
//! its accounts (keys, certificates), routes and admin tokens. A config that does not load is refused and the running one kept.
//! Listener addresses, the ledger, thread counts and budgets only change with a restart or
//! pingora's graceful upgrade (`payhook run --upgrade` + SIGQUIT to the old process); a reload
//! that changes one of them says so in a warning.
//!
//! SIGQUIT ([`HandOver`]): pingora hands the listeners to the new process; the ledger lets the
//! new process reach the store while this one settles its last notifications.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::{Config, LedgerSettings, ReconcileSettings, ServerSettings};
use crate::flow::Gateway;
use crate::tls::CertStore;

pub struct Reloader {
    gateway: Arc<Gateway>,
    config_path: PathBuf,
    /// The settings in force since start-up, which a reload cannot change.
    server: ServerSettings,
    ledger: LedgerSettings,
    reconcile: ReconcileSettings,
    /// The listeners' certificates, read again on every SIGHUP.
    certificates: Vec<Arc<CertStore>>,
}

impl Reloader {
    pub fn new(
        gateway: Arc<Gateway>,
        config_path: PathBuf,
        startup: &(ServerSettings, LedgerSettings, ReconcileSettings),
        certificates: Vec<Arc<CertStore>>,
    ) -> Self {
        Reloader { gateway, config_path, server: startup.0.clone(), ledger: startup.1.clone(), reconcile: startup.2.clone(), certificates }
    }
}

/// The config keys whose new value needs a restart or an upgrade to take effect.
pub fn restart_only_changes(server: &ServerSettings, ledger: &LedgerSettings, reconcile: &ReconcileSettings, new: &Config) -> Vec<&'static str> {
    let (s, l) = (&new.server, &new.ledger);
    let checks = [
        ("server.listen", server.listen != s.listen),
        ("server.admin_listen", server.admin_listen != s.admin_listen),
        ("server.threads", server.threads != s.threads),
        ("server.body_limit", server.body_limit != s.body_limit),
        ("server.body_timeout", server.body_timeout != s.body_timeout),
        ("server.reply_budget", server.reply_budget != s.reply_budget),
        ("server.pid_file", server.pid_file != s.pid_file),
        ("server.upgrade_sock", server.upgrade_sock != s.upgrade_sock),
        ("server.grace_period", server.grace_period != s.grace_period),
        ("server.upstream_ca_file", server.upstream_ca_file != s.upstream_ca_file),
        ("server.log_format", server.log_format != s.log_format),
        ("server.tls_cert_file", server.tls != s.tls),
        ("server.admin_tls", server.admin_tls != s.admin_tls),
        ("server.max_connections", server.max_connections != s.max_connections),
        ("server.header_timeout", server.header_timeout != s.header_timeout),
        ("ledger.backend", ledger.backend != l.backend),
        ("ledger.key_prefix", ledger.key_prefix != l.key_prefix),
        ("ledger.done_ttl", ledger.done_ttl != l.done_ttl),
        ("ledger.dedupe_horizon", ledger.dedupe_horizon != l.dedupe_horizon),
        ("ledger.timeout", ledger.timeout != l.timeout),
        ("reconcile", reconcile != &new.reconcile),
    ];
    checks.into_iter().filter(|(_, changed)| *changed).map(|(key, _)| key).collect()
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; reload disabled");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = hangups.recv() => {}
                _ = shutdown.changed() => return,
            }
            let certificates = self.certificates.clone();
            let _ = tokio::task::spawn_blocking(move || certificates.iter().for_each(|c| c.reload())).await;
            let path = self.config_path.clone();
            // Reading files and resolving backend hosts blocks: keep it off the runtime's workers.
            match tokio::task::spawn_blocking(move || Config::load(&path)).await {
                Ok(Ok(config)) => {
                    if let Err(e) = config.check_fits(&self.server, &self.ledger) {
                        tracing::error!(error = %e, "reload refused: the new accounts or routes do not fit the settings in force until a restart; keeping the running configuration");
                        continue;
                    }
                    for key in restart_only_changes(&self.server, &self.ledger, &self.reconcile, &config) {
                        tracing::warn!(key, "changed in the config, but takes effect only after a restart or graceful upgrade");
                    }
                    for warning in config.certificate_warnings(chrono::Utc::now().timestamp()) {
                        tracing::warn!("{warning}");
                    }
                    let (accounts, routes, tokens) = (config.accounts.len(), config.routes.len(), config.server.admin_tokens.len());
                    self.gateway.reload(config);
                    tracing::info!(accounts, routes, admin_tokens = tokens, "configuration reloaded");
                }
                Ok(Err(e)) => tracing::error!(error = %e, "reload refused; keeping the running configuration"),
                Err(e) => tracing::error!(error = %e, "reload task failed"),
            }
        }
    }
}

pub struct HandOver {
    pub gateway: Arc<Gateway>,
}

#[async_trait]
impl BackgroundService for HandOver {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Ok(mut quits) = signal(SignalKind::quit()) else {
            tracing::error!("cannot listen for SIGQUIT; an upgrade with the embedded ledger will wait for this process to exit");
            return;
        };
        tokio::select! {
            _ = quits.recv() => {}
            _ = shutdown.changed() => return,
        }
        let gateway = self.gateway.clone();
        // Waits for this process's calls in flight on the store: blocking.
        let _ = tokio::task::spawn_blocking(move || gateway.ledger().hand_over()).await;
    }
}
