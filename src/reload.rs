//! SIGHUP: re-read the config and swap in its accounts (keys, certificates) and routes, while
//! every connection stays up. A config that does not load is refused and the running one kept.
//! Listener addresses, the ledger and thread counts only change with a restart or pingora's
//! graceful upgrade (`payhook run --upgrade` + SIGQUIT to the old process).

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::flow::Gateway;

pub struct Reloader {
    pub gateway: Arc<Gateway>,
    pub config_path: PathBuf,
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
            let path = self.config_path.clone();
            // Reading files and resolving backend hosts blocks: keep it off the runtime's workers.
            match tokio::task::spawn_blocking(move || Config::load(&path)).await {
                Ok(Ok(config)) => {
                    let (accounts, routes) = (config.accounts.len(), config.routes.len());
                    self.gateway.reload(config);
                    tracing::info!(accounts, routes, "configuration reloaded");
                }
                Ok(Err(e)) => tracing::error!(error = %e, "reload refused; keeping the running configuration"),
                Err(e) => tracing::error!(error = %e, "reload task failed"),
            }
        }
    }
}
