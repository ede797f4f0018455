//! Assembles the pingora `Server`: the notify listener and the admin listener, sharing one
//! [`Gateway`] (ledger, connection pools). `main` and the tests both start payhook through here.

use std::path::Path;
use std::sync::Arc;

use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::admin::AdminApp;
use crate::config::{Config, LedgerBackend};
use crate::flow::Gateway;
use crate::forward::Forwarder;
use crate::connections::{ConnectionLimits, ConnectionMetrics};
use crate::gateway::NotifyApp;
use crate::ledger::embedded::Embedded;
use crate::ledger::redis::RedisLedger;
use crate::ledger::{Ledger, LedgerError, Retention};
use crate::metrics;
use crate::reconcile::Sweep;
use crate::tls::CertStore;
use crate::reload::{HandOver, Reloader};

/// Opens the configured ledger (the embedded file is opened here; Redis connects lazily).
/// `take_over`: a graceful upgrade, where the previous process may still hold the embedded file.
pub fn open_ledger(config: &Config, take_over: bool) -> Result<Arc<dyn Ledger>, LedgerError> {
    let l = &config.ledger;
    let retention = Retention { done_ttl: l.done_ttl, dedupe_horizon: l.dedupe_horizon };
    Ok(match &l.backend {
        // A call waits for the file while the old process settles, within a reply budget.
        LedgerBackend::Embedded { path } => Arc::new(Embedded::open(path, retention, l.timeout, config.server.reply_budget, take_over)?),
        LedgerBackend::Redis { deployment, tls } => {
            let tls = tls.load().map_err(|e| LedgerError::Unavailable(format!("reading the ledger's TLS files: {e}")))?;
            Arc::new(RedisLedger::with_deployment(deployment, &tls, &l.key_prefix, retention, l.timeout)?)
        }
    })
}

/// Creates the directories of the pid file and upgrade socket, readable by payhook's user only.
fn create_run_dirs(files: &[&str]) -> Result<(), LedgerError> {
    use std::os::unix::fs::DirBuilderExt;
    for file in files {
        if let Some(dir) = Path::new(file).parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| LedgerError::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
        }
    }
    Ok(())
}

/// `config_path` is re-read on SIGHUP.
pub fn build_server(config: Config, config_path: &Path, opt: Option<Opt>) -> Result<Server, LedgerError> {
    metrics::init();
    let accounts: Vec<&str> = config.accounts.keys().map(String::as_str).collect();
    let types: Vec<&str> = config.routes.keys().map(String::as_str).collect();
    metrics::init_series(&accounts, &types);
    let s = config.server.clone();
    let take_over = opt.as_ref().is_some_and(|o| o.upgrade);
    create_run_dirs(&[&s.pid_file, &s.upgrade_sock])?;
    let conf = ServerConf {
        threads: s.threads,
        pid_file: s.pid_file.clone(),
        upgrade_sock: s.upgrade_sock.clone(),
        grace_period_seconds: Some(s.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(5),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let ledger = open_ledger(&config, take_over)?;
    let forwarder = Arc::new(Forwarder::new(s.upstream_ca_file.as_ref().map(|p| p.display().to_string())));
    let config_startup = (config.server.clone(), config.ledger.clone(), config.reconcile.clone());
    let reconcile = config.reconcile.clone();
    let gateway = Arc::new(Gateway::new(config, ledger, forwarder));

    let app = NotifyApp::new(gateway.clone(), s.body_limit, s.body_timeout);
    let notify_metrics = ConnectionMetrics { open: &metrics::CONNECTIONS_OPEN, closed: &metrics::CONNECTIONS_REFUSED };
    let mut notify = Service::new("payhook notify".to_string(), ConnectionLimits::new(app, s.max_connections, s.header_timeout, notify_metrics));
    let mut certificates = Vec::new();
    match &s.tls {
        Some((cert, key)) => {
            let store = CertStore::open("notify", cert, key).map_err(|e| LedgerError::Unavailable(format!("TLS: {e}")))?;
            notify.add_tls_with_settings(&s.listen, None, store.settings());
            certificates.push(store);
        }
        None => notify.add_tcp(&s.listen),
    }
    let admin_tls = match (&s.tls, s.admin_tls) {
        (Some((cert, key)), true) => {
            let store = CertStore::open("admin", cert, key).map_err(|e| LedgerError::Unavailable(format!("TLS: {e}")))?;
            certificates.push(store.clone());
            Some(store)
        }
        _ => None,
    };
    let reloader = Reloader::new(gateway.clone(), config_path.to_path_buf(), &config_startup, certificates);
    let hand_over = HandOver { gateway: gateway.clone() };
    let sweep = Sweep { gateway: gateway.clone(), settings: reconcile.clone() };
    let admin_metrics = ConnectionMetrics { open: &metrics::ADMIN_CONNECTIONS_OPEN, closed: &metrics::ADMIN_CONNECTIONS_REFUSED };
    let admin_app = ConnectionLimits::new(AdminApp::new(gateway, reconcile), s.max_connections, s.header_timeout, admin_metrics);
    let mut admin = Service::new("payhook admin".to_string(), admin_app);
    match admin_tls {
        Some(store) => admin.add_tls_with_settings(&s.admin_listen, None, store.settings()),
        None => admin.add_tcp(&s.admin_listen),
    }
    admin.threads = Some(1);
    server.add_service(notify);
    server.add_service(admin);
    server.add_service(background_service("payhook reload", reloader));
    server.add_service(background_service("payhook upgrade hand-over", hand_over));
    server.add_service(background_service("payhook reconcile", sweep));
    Ok(server)
}
