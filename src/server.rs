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
use crate::gateway::NotifyApp;
use crate::ledger::embedded::EmbeddedLedger;
use crate::ledger::redis::RedisLedger;
use crate::ledger::{Ledger, LedgerError};
use crate::metrics;
use crate::reload::Reloader;

/// Opens the configured ledger (the embedded file is opened here; Redis connects lazily).
pub fn open_ledger(config: &Config) -> Result<Arc<dyn Ledger>, LedgerError> {
    let l = &config.ledger;
    Ok(match &l.backend {
        LedgerBackend::Embedded { path } => Arc::new(EmbeddedLedger::open(path, l.done_ttl, l.timeout)?),
        LedgerBackend::Redis { url } => Arc::new(RedisLedger::new(url, &l.key_prefix, l.done_ttl, l.timeout)?),
    })
}

/// `config_path` is re-read on SIGHUP.
pub fn build_server(config: Config, config_path: &Path, opt: Option<Opt>) -> Result<Server, LedgerError> {
    metrics::init();
    let s = config.server.clone();
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

    let ledger = open_ledger(&config)?;
    let forwarder = Arc::new(Forwarder::new(s.upstream_ca_file.as_ref().map(|p| p.display().to_string())));
    let gateway = Arc::new(Gateway::new(config, ledger, forwarder));

    let mut notify = Service::new("payhook notify".to_string(), NotifyApp::new(gateway.clone(), s.body_limit, s.body_timeout));
    notify.add_tcp(&s.listen);
    let reloader = Reloader { gateway: gateway.clone(), config_path: config_path.to_path_buf() };
    let mut admin = Service::new("payhook admin".to_string(), AdminApp::new(gateway, s.admin_tokens.clone()));
    admin.add_tcp(&s.admin_listen);
    admin.threads = Some(1);
    server.add_service(notify);
    server.add_service(admin);
    server.add_service(background_service("payhook reload", reloader));
    Ok(server)
}
