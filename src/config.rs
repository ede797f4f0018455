//! Configuration: TOML in, ready-to-use objects out.
//!
//! Two stages, so a bad config never reaches a request: the raw TOML tree is first expanded
//! (`${VAR}` from the environment, `<secret>_file` read from disk), then deserialised into typed
//! sections whose keys, URLs and backends are parsed and checked once, at start-up.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::envelope::{Envelope, EnvelopeMode};
use crate::flow::{settle_reserve, LEASE_MARGIN};
use crate::ledger::redis::{Deployment, RedisTls};
use crate::ledger::PaymentId;
use crate::forward::Backend;
use crate::provider::{self, Provider};
use crate::secret::Secret;

/// The shortest `notify_key` accepted in any envelope mode (aes-256-ecb needs 32 bytes anyway).
const MIN_NOTIFY_KEY: usize = 16;

/// Secret-bearing keys that may also be given as `<key>_file` (the file's content, trimmed).
const SECRET_KEYS: &[&str] = &["apiv3_key", "api_key", "notify_key", "admin_token"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config is not valid TOML: {0}")]
    Syntax(String),
    #[error("`{key}`: environment variable {var} is not set")]
    MissingEnv { key: String, var: String },
    #[error("`{key}`: cannot read {path}: {source}")]
    File { key: String, path: PathBuf, source: std::io::Error },
    #[error("`{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    pub fn invalid(key: impl Into<String>, message: impl std::fmt::Display) -> Self {
        ConfigError::Invalid { key: key.into(), message: message.to_string() }
    }
}

/// Where relative paths in the config are resolved (the directory of the config file), and the
/// record of every file read through it, for `payhook check`'s demo-key warning.
#[derive(Debug, Default)]
pub struct ConfigDir {
    root: PathBuf,
    read: RefCell<Vec<PathBuf>>,
}

impl ConfigDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ConfigDir { root: root.into(), read: RefCell::default() }
    }

    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.root.join(path)
        }
    }

    /// Reads a file named by config key `key`, naming the key (not the content) on failure.
    pub fn read(&self, key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
        let full = self.resolve(path);
        let bytes = std::fs::read(&full).map_err(|source| ConfigError::File { key: key.to_string(), path: full.clone(), source })?;
        self.read.borrow_mut().push(full);
        Ok(bytes)
    }
}

/// The whole validated configuration.
pub struct Config {
    pub server: ServerSettings,
    pub ledger: LedgerSettings,
    pub reconcile: ReconcileSettings,
    pub telemetry: TelemetrySettings,
    pub accounts: HashMap<String, Account>,
    pub routes: HashMap<String, Route>,
    /// Every key and secret file the config read, for `payhook check`'s demo-key warning.
    files_read: Vec<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: String,
    pub admin_listen: String,
    pub threads: usize,
    pub body_limit: usize,
    /// A client has this long to send the whole body (slowloris bound).
    pub body_timeout: Duration,
    /// Every provider reply goes out within this, success or failure (WeChat waits 5 s).
    pub reply_budget: Duration,
    pub admin_tokens: Vec<(String, Secret)>,
    pub pid_file: String,
    pub upgrade_sock: String,
    pub grace_period: Duration,
    pub upstream_ca_file: Option<PathBuf>,
    pub log_format: LogFormat,
    /// HTTPS on the notify listener: (certificate chain, key), PEM.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The admin listener uses the same certificate.
    pub admin_tls: bool,
    /// Seconds until the certificate expires, when it is configured (for `check`'s warning).
    pub tls_expires_in: Option<i64>,
    /// Open notify connections at most; more are closed at once.
    pub max_connections: usize,
    /// A request head must arrive within this of the connection opening or the last response.
    pub header_timeout: Duration,
}

/// `[server] log_format` (or `run --log-format`): one JSON object per line for collectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerBackend {
    Embedded { path: PathBuf },
    /// `redis`, `redis-sentinel` or `redis-cluster`, with TLS files when configured.
    Redis { deployment: Deployment, tls: RedisTlsFiles },
}

/// `[ledger] tls_ca_file`, `tls_cert_file`, `tls_key_file` (PEM), for every Redis mode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTlsFiles {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl RedisTlsFiles {
    /// The files' contents (read again when the ledger opens).
    pub fn load(&self) -> std::io::Result<RedisTls> {
        let read = |p: &Option<PathBuf>| p.as_ref().map(std::fs::read).transpose();
        Ok(RedisTls { ca: read(&self.ca_file)?, client_cert: read(&self.cert_file)?, client_key: read(&self.key_file)? })
    }
}

#[derive(Debug, Clone)]
pub struct LedgerSettings {
    pub backend: LedgerBackend,
    pub key_prefix: String,
    /// How long a done order's data is kept for re-push.
    pub done_ttl: Duration,
    /// How long a done marker is kept: within it a delivered payment is never forwarded again.
    pub dedupe_horizon: Duration,
    /// Bound on each ledger call; past it the ledger counts as unavailable (fail closed).
    pub timeout: Duration,
}

/// `[telemetry]`: OpenTelemetry export, off unless `otlp_endpoint` is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// An OTLP/HTTP collector, e.g. `http://127.0.0.1:4318` (spans go to `/v1/traces`, JSON).
    pub otlp_endpoint: Option<String>,
}

/// `[reconcile]`: the sweep that queries the provider about registered, undelivered orders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileSettings {
    pub enabled: bool,
    /// The first query, this long after registration.
    pub first_check: Duration,
    /// Then every `interval`, doubling after each unpaid answer up to `max_interval`.
    pub interval: Duration,
    pub max_interval: Duration,
    /// A registration's default `expires_in`: past it an unpaid order is closed.
    pub give_up_after: Duration,
    /// Per account, shared by every instance: providers throttle per merchant.
    pub max_queries_per_second: u32,
}

/// A provider account: the `{account}` path segment.
pub struct Account {
    pub name: String,
    pub provider: Arc<dyn Provider>,
    /// A paid order that was never registered is quarantined (`unregistered`).
    pub require_registration: bool,
}

impl Account {
    /// The ledger identity of `out_trade_no` paid to this account's merchant.
    pub fn payment_id(&self, out_trade_no: &str) -> PaymentId {
        let (family, merchant) = self.provider.merchant();
        PaymentId::new(family, merchant, out_trade_no)
    }
}

/// A backend route: the `{type}` path segment.
pub struct Route {
    pub name: String,
    pub backend: Backend,
    pub envelope: Envelope,
    pub timeout: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    ledger: RawLedger,
    #[serde(default)]
    reconcile: RawReconcile,
    #[serde(default)]
    telemetry: TelemetrySettings,
    #[serde(default)]
    accounts: HashMap<String, toml::Table>,
    #[serde(default)]
    routes: HashMap<String, RawRoute>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: String,
    admin_listen: String,
    #[serde(default = "default_threads")]
    threads: usize,
    #[serde(default = "default_body_limit")]
    body_limit: usize,
    #[serde(default = "default_body_timeout", with = "humantime_serde")]
    body_timeout: Duration,
    #[serde(default = "default_reply_budget", with = "humantime_serde")]
    reply_budget: Duration,
    admin_token: Option<Secret>,
    /// Named tokens, so audit lines say who acted: `admin_tokens = { ops = "${OPS_TOKEN}" }`.
    #[serde(default)]
    admin_tokens: HashMap<String, Secret>,
    pid_file: Option<PathBuf>,
    upgrade_sock: Option<PathBuf>,
    #[serde(default = "default_grace", with = "humantime_serde")]
    grace_period: Duration,
    /// PEM bundle of CAs trusted for https backends and provider APIs (default: platform roots).
    upstream_ca_file: Option<PathBuf>,
    #[serde(default)]
    log_format: LogFormat,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
    #[serde(default)]
    admin_tls: bool,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    header_timeout: Duration,
}

fn default_max_connections() -> usize {
    10_000
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLedger {
    backend: String,
    path: Option<PathBuf>,
    url: Option<String>,
    sentinels: Option<Vec<String>>,
    master_name: Option<String>,
    nodes: Option<Vec<String>>,
    tls_ca_file: Option<PathBuf>,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
    #[serde(default = "default_prefix")]
    key_prefix: String,
    #[serde(default = "default_done_ttl", with = "humantime_serde")]
    done_ttl: Duration,
    #[serde(default = "default_dedupe_horizon", with = "humantime_serde")]
    dedupe_horizon: Duration,
    #[serde(default = "default_ledger_timeout", with = "humantime_serde")]
    timeout: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReconcile {
    enabled: Option<bool>,
    #[serde(default = "default_first_check", with = "humantime_serde")]
    first_check: Duration,
    #[serde(default = "default_interval", with = "humantime_serde")]
    interval: Duration,
    #[serde(default = "default_max_interval", with = "humantime_serde")]
    max_interval: Duration,
    #[serde(default = "default_give_up_after", with = "humantime_serde")]
    give_up_after: Duration,
    #[serde(default = "default_max_qps")]
    max_queries_per_second: u32,
}

impl Default for RawReconcile {
    fn default() -> Self {
        RawReconcile {
            enabled: None,
            first_check: default_first_check(),
            interval: default_interval(),
            max_interval: default_max_interval(),
            give_up_after: default_give_up_after(),
            max_queries_per_second: default_max_qps(),
        }
    }
}

fn default_first_check() -> Duration {
    Duration::from_secs(60)
}
fn default_interval() -> Duration {
    Duration::from_secs(300)
}
fn default_max_interval() -> Duration {
    Duration::from_secs(1800)
}
fn default_give_up_after() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_max_qps() -> u32 {
    10
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    backend: String,
    #[serde(default)]
    envelope: EnvelopeMode,
    notify_key: Secret,
    #[serde(default = "default_route_timeout", with = "humantime_serde")]
    timeout: Duration,
}

fn default_threads() -> usize {
    2
}
fn default_body_limit() -> usize {
    64 * 1024
}
fn default_body_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_reply_budget() -> Duration {
    Duration::from_millis(4500)
}
fn default_grace() -> Duration {
    Duration::from_secs(5)
}
fn default_prefix() -> String {
    "payhook:".into()
}
fn default_done_ttl() -> Duration {
    Duration::from_secs(72 * 3600)
}
fn default_dedupe_horizon() -> Duration {
    Duration::from_secs(400 * 86400)
}
fn default_ledger_timeout() -> Duration {
    Duration::from_millis(500)
}
fn default_route_timeout() -> Duration {
    Duration::from_secs(4)
}

/// Serde adapter for "4s", "72h", "500ms".
mod humantime_serde {
    use serde::Deserialize;
    use std::time::Duration;

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// Serde adapter for provider sections: durations such as `timestamp_tolerance = "5m"`.
pub fn parse_duration(key: &str, text: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(text).map_err(|e| ConfigError::invalid(key, e))
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Config::parse(&text, &ConfigDir::new(dir))
    }

    pub fn parse(text: &str, dir: &ConfigDir) -> Result<Config, ConfigError> {
        let mut tree: toml::Table = text.parse().map_err(|e| syntax_error(text, &e))?;
        expand_table(&mut tree, "", dir)?;
        let raw: RawConfig = serde_path_to_error::deserialize(toml::Value::Table(tree)).map_err(|e| {
            let key = e.path().to_string();
            let message = without_values(e.inner().message());
            if key == "." { ConfigError::Syntax(message) } else { ConfigError::Invalid { key, message } }
        })?;
        let mut config = build(raw, dir)?;
        config.files_read = dir.read.take();
        Ok(config)
    }

    /// This file's accounts and routes under other server and ledger settings: on a reload, the
    /// ones in force, which the new file cannot change.
    pub fn check_fits(&self, server: &ServerSettings, ledger: &LedgerSettings) -> Result<(), ConfigError> {
        check_budgets(server, ledger, &self.accounts, &self.routes)
    }

    /// The routes whose notify key is vk-uni-pay's published default, sorted.
    pub fn routes_with_published_keys(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.routes.values().filter(|r| r.envelope.key_is_published()).map(|r| r.name.as_str()).collect();
        names.sort_unstable();
        names
    }

    /// One line per certificate within [`CERT_EXPIRY_WARNING`] of its end: the listener's (as of
    /// loading), and each provider certificate, or one past its validity at `now`, whose
    /// signatures are refused (`certificate_expired`). `check`, `run` and a reload say them.
    pub fn certificate_warnings(&self, now: i64) -> Vec<String> {
        let mut warnings = Vec::new();
        if let Some(seconds) = self.server.tls_expires_in.filter(|s| *s < CERT_EXPIRY_WARNING) {
            warnings.push(format!("server.tls_cert_file expires in {} days: renew it and send SIGHUP", seconds / 86400));
        }
        for (name, account) in &self.accounts {
            for cert in account.provider.certificates() {
                let serial = &cert.serial_hex;
                if !cert.valid_at(now) {
                    warnings.push(format!(
                        "accounts.{name}: certificate {serial} is outside its validity: notifications signed under it are \
                         refused; configure the provider's current certificate"
                    ));
                } else if cert.not_after - now < CERT_EXPIRY_WARNING {
                    warnings.push(format!(
                        "accounts.{name}: certificate {serial} expires in {} days: add the provider's next certificate, then send SIGHUP",
                        (cert.not_after - now) / 86400
                    ));
                }
            }
        }
        warnings.sort();
        warnings
    }

    /// The files read from a `demo/` folder: keys published with payhook, fit for loopback only.
    pub fn demo_files(&self) -> Vec<&Path> {
        self.files_read.iter().filter(|path| path.components().any(|c| c.as_os_str() == "demo")).map(PathBuf::as_path).collect()
    }
}

fn build(raw: RawConfig, dir: &ConfigDir) -> Result<Config, ConfigError> {
    check_addr("server.listen", &raw.server.listen)?;
    check_addr("server.admin_listen", &raw.server.admin_listen)?;
    if raw.server.threads == 0 {
        return Err(ConfigError::invalid("server.threads", "must be at least 1"));
    }
    let mut admin_tokens: Vec<(String, Secret)> = raw.server.admin_tokens.into_iter().collect();
    if let Some(token) = raw.server.admin_token {
        admin_tokens.push(("admin".to_string(), token));
    }
    for (name, token) in &admin_tokens {
        if token.expose().len() < 16 {
            return Err(ConfigError::invalid(format!("server.admin_tokens.{name}"), "must be at least 16 characters"));
        }
    }
    let ledger_backend = match raw.ledger.backend.as_str() {
        "embedded" => LedgerBackend::Embedded {
            path: dir.resolve(raw.ledger.path.as_deref().unwrap_or(Path::new("data/ledger"))),
        },
        kind @ ("redis" | "redis-sentinel" | "redis-cluster") => {
            let l = &raw.ledger;
            let urls = |key: &str, urls: &Option<Vec<String>>| -> Result<Vec<String>, ConfigError> {
                let urls = urls.clone().filter(|u| !u.is_empty()).ok_or_else(|| ConfigError::invalid(key, format!("required for the {kind} ledger")))?;
                for url in &urls {
                    redis::IntoConnectionInfo::into_connection_info(url.as_str()).map_err(|e| ConfigError::invalid(key, e))?;
                }
                Ok(urls)
            };
            let deployment = match kind {
                "redis" => {
                    let url = urls("ledger.url", &l.url.clone().map(|u| vec![u]))?.remove(0);
                    Deployment::Single { url }
                }
                "redis-sentinel" => Deployment::Sentinel {
                    sentinels: urls("ledger.sentinels", &l.sentinels)?,
                    master_name: l.master_name.clone().filter(|m| !m.is_empty()).ok_or_else(|| ConfigError::invalid("ledger.master_name", "required for the redis-sentinel ledger"))?,
                },
                _ => Deployment::Cluster { nodes: urls("ledger.nodes", &l.nodes)? },
            };
            let tls = RedisTlsFiles {
                ca_file: l.tls_ca_file.as_ref().map(|p| dir.resolve(p)),
                cert_file: l.tls_cert_file.as_ref().map(|p| dir.resolve(p)),
                key_file: l.tls_key_file.as_ref().map(|p| dir.resolve(p)),
            };
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err(ConfigError::invalid("ledger.tls_cert_file", "tls_cert_file and tls_key_file go together"));
            }
            for (key, path) in [("ledger.tls_ca_file", &l.tls_ca_file), ("ledger.tls_cert_file", &l.tls_cert_file), ("ledger.tls_key_file", &l.tls_key_file)] {
                if let Some(path) = path {
                    let pem = dir.read(key, path)?;
                    if !String::from_utf8_lossy(&pem).contains("-----BEGIN") {
                        return Err(ConfigError::invalid(key, "is not PEM"));
                    }
                }
            }
            LedgerBackend::Redis { deployment, tls }
        }
        other => {
            return Err(ConfigError::invalid(
                "ledger.backend",
                format!("unknown backend {other:?} (embedded | redis | redis-sentinel | redis-cluster)"),
            ))
        }
    };
    let run_dir = default_run_dir(&ledger_backend, dir);
    let pid_file = raw.server.pid_file.map(|p| dir.resolve(&p)).unwrap_or_else(|| run_dir.join("payhook.pid"));
    let upgrade_sock = raw.server.upgrade_sock.map(|p| dir.resolve(&p)).unwrap_or_else(|| run_dir.join("payhook_upgrade.sock"));
    check_private_dir("server.upgrade_sock", &upgrade_sock)?;
    let server = ServerSettings {
        listen: raw.server.listen,
        admin_listen: raw.server.admin_listen,
        threads: raw.server.threads,
        body_limit: raw.server.body_limit,
        body_timeout: raw.server.body_timeout,
        reply_budget: raw.server.reply_budget,
        admin_tokens,
        pid_file: pid_file.display().to_string(),
        upgrade_sock: upgrade_sock.display().to_string(),
        grace_period: raw.server.grace_period,
        upstream_ca_file: raw.server.upstream_ca_file.map(|p| dir.resolve(&p)),
        log_format: raw.server.log_format,
        tls: None,
        admin_tls: raw.server.admin_tls,
        tls_expires_in: None,
        max_connections: raw.server.max_connections,
        header_timeout: raw.server.header_timeout,
    };
    if server.max_connections == 0 {
        return Err(ConfigError::invalid("server.max_connections", "must be at least 1"));
    }
    if server.header_timeout.is_zero() {
        return Err(ConfigError::invalid("server.header_timeout", "must be above 0"));
    }
    let mut server = server;
    match (raw.server.tls_cert_file.map(|p| dir.resolve(&p)), raw.server.tls_key_file.map(|p| dir.resolve(&p))) {
        (Some(cert), Some(key)) => {
            let loaded = crate::tls::LoadedCert::load(&cert, &key).map_err(|e| {
                let field = if matches!(e, crate::tls::TlsError::Mismatch | crate::tls::TlsError::NoKey(_)) { "server.tls_key_file" } else { "server.tls_cert_file" };
                ConfigError::invalid(field, e)
            })?;
            server.tls_expires_in = Some(loaded.expires_in());
            server.tls = Some((cert, key));
        }
        (None, None) if server.admin_tls => return Err(ConfigError::invalid("server.admin_tls", "needs server.tls_cert_file and server.tls_key_file")),
        (None, None) => {}
        _ => return Err(ConfigError::invalid("server.tls_cert_file", "tls_cert_file and tls_key_file go together")),
    }

    // The Redis ledger puts each order's record and data keys in one Cluster slot with its own
    // hash tag (`{prefix+id}:data`); a brace in the prefix would move the tag and split them.
    if raw.ledger.key_prefix.contains(['{', '}']) {
        return Err(ConfigError::invalid("ledger.key_prefix", "must not contain { or }: payhook tags its keys for Redis Cluster itself"));
    }
    let ledger = LedgerSettings {
        backend: ledger_backend,
        key_prefix: raw.ledger.key_prefix,
        done_ttl: raw.ledger.done_ttl,
        dedupe_horizon: raw.ledger.dedupe_horizon,
        timeout: raw.ledger.timeout,
    };
    check_ledger_timing(&ledger, server.reply_budget)?;

    let mut accounts = HashMap::new();
    for (name, mut table) in raw.accounts {
        check_segment(&format!("accounts.{name}"), &name)?;
        let require_registration = match table.remove("require_registration") {
            None => false,
            Some(toml::Value::Boolean(b)) => b,
            Some(_) => return Err(ConfigError::invalid(format!("accounts.{name}.require_registration"), "must be true or false")),
        };
        let provider = provider::build(&name, table, dir)?;
        accounts.insert(name.clone(), Account { name, provider, require_registration });
    }
    if accounts.is_empty() {
        return Err(ConfigError::invalid("accounts", "at least one provider account is required"));
    }

    let mut routes = HashMap::new();
    for (name, route) in raw.routes {
        let key = format!("routes.{name}");
        check_segment(&key, &name)?;
        if route.timeout.is_zero() {
            return Err(ConfigError::invalid(format!("{key}.timeout"), "must be above 0"));
        }
        let backend = Backend::parse(&route.backend).map_err(|e| ConfigError::invalid(format!("{key}.backend"), e))?;
        // aes192 and key mode take a key of any length, an empty one too (a variable set to
        // nothing, an empty file): the backend would then accept envelopes anyone can make.
        if route.notify_key.expose().chars().count() < MIN_NOTIFY_KEY {
            return Err(ConfigError::invalid(format!("{key}.notify_key"), format!("must be at least {MIN_NOTIFY_KEY} characters (vk advises 64)")));
        }
        let envelope = Envelope::new(route.envelope, route.notify_key)
            .map_err(|e| ConfigError::invalid(format!("{key}.notify_key"), e))?;
        routes.insert(name.clone(), Route { name, backend, envelope, timeout: route.timeout });
    }
    if routes.is_empty() {
        return Err(ConfigError::invalid("routes", "at least one route (payment type) is required"));
    }
    check_budgets(&server, &ledger, &accounts, &routes)?;
    let r = raw.reconcile;
    let can_query = accounts.values().any(|a| a.provider.can_query());
    if r.enabled == Some(true) && !can_query {
        return Err(ConfigError::invalid("reconcile.enabled", "no account has order-query credentials (api_base and keys)"));
    }
    for (key, value) in [("reconcile.first_check", r.first_check), ("reconcile.interval", r.interval), ("reconcile.give_up_after", r.give_up_after)] {
        if value.is_zero() {
            return Err(ConfigError::invalid(key, "must be above 0"));
        }
    }
    if r.max_interval < r.interval {
        return Err(ConfigError::invalid("reconcile.max_interval", "must be at least reconcile.interval"));
    }
    if r.max_queries_per_second == 0 {
        return Err(ConfigError::invalid("reconcile.max_queries_per_second", "must be at least 1"));
    }
    let reconcile = ReconcileSettings {
        enabled: r.enabled.unwrap_or(can_query),
        first_check: r.first_check,
        interval: r.interval,
        max_interval: r.max_interval,
        give_up_after: r.give_up_after,
        max_queries_per_second: r.max_queries_per_second,
    };
    if let Some(endpoint) = &raw.telemetry.otlp_endpoint {
        let uri: http::Uri = endpoint.parse().map_err(|e| ConfigError::invalid("telemetry.otlp_endpoint", e))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(ConfigError::invalid("telemetry.otlp_endpoint", "must be an http(s) URL"));
        }
    }
    Ok(Config { server, ledger, reconcile, telemetry: raw.telemetry, accounts, routes, files_read: Vec::new() })
}

/// `check`, `run` and a reload warn when a certificate (the listener's, a provider's) expires
/// sooner than this, in seconds.
const CERT_EXPIRY_WARNING: i64 = 14 * 86400;

/// The smallest `dedupe_horizon`: providers speak about an order for months (Alipay's
/// `TRADE_FINISHED` comes when the refund period ends).
const MIN_DEDUPE_HORIZON: Duration = Duration::from_secs(30 * 86400);
/// What the reply budget must leave the backend after the claim and the settle reserve.
const MIN_FORWARD_TIME: Duration = Duration::from_secs(1);

/// The accounts and routes against the reply budget and the ledger's retention: those of the
/// same file, or on a reload the ones in force (a reload cannot change them).
fn check_budgets(server: &ServerSettings, ledger: &LedgerSettings, accounts: &HashMap<String, Account>, routes: &HashMap<String, Route>) -> Result<(), ConfigError> {
    let mut accounts: Vec<&Account> = accounts.values().collect();
    accounts.sort_by(|a, b| a.name.cmp(&b.name));
    for account in accounts {
        if let Some(limit) = account.provider.reply_timeout().filter(|limit| server.reply_budget >= *limit) {
            return Err(ConfigError::invalid(
                "server.reply_budget",
                format!("must be below {}'s own reply timeout ({}) for account {}", account.provider.kind(), humantime::format_duration(limit), account.name),
            ));
        }
    }
    let mut routes: Vec<&Route> = routes.values().collect();
    routes.sort_by(|a, b| a.name.cmp(&b.name));
    for route in &routes {
        if route.timeout >= server.reply_budget {
            return Err(ConfigError::invalid(
                format!("routes.{}.timeout", route.name),
                "must be shorter than server.reply_budget, or the provider hears nothing",
            ));
        }
    }
    // Settling (retried until the reply budget runs out) must end while the claim's lease still
    // holds: after it, another instance may claim the order and forward it a second time.
    if let Some(shortest) = routes.iter().min_by_key(|r| r.timeout).filter(|r| server.reply_budget > r.timeout + LEASE_MARGIN) {
        return Err(ConfigError::invalid(
            "server.reply_budget",
            format!(
                "must not exceed the shortest lease (routes.{}.timeout + {}s), or a reply could still be settling once another instance may claim the order",
                shortest.name,
                LEASE_MARGIN.as_secs()
            ),
        ));
    }
    let longest_lease = routes.iter().map(|r| r.timeout + LEASE_MARGIN).max().unwrap_or(LEASE_MARGIN);
    if ledger.done_ttl < longest_lease {
        return Err(ConfigError::invalid(
            "ledger.done_ttl",
            format!("must outlive the longest lease (route timeout + {}s)", LEASE_MARGIN.as_secs()),
        ));
    }
    Ok(())
}

/// The ledger settings that would switch the gate off or let settling outrun the reply budget.
fn check_ledger_timing(ledger: &LedgerSettings, reply_budget: Duration) -> Result<(), ConfigError> {
    if ledger.done_ttl.is_zero() {
        return Err(ConfigError::invalid("ledger.done_ttl", "must be above 0"));
    }
    if ledger.dedupe_horizon < MIN_DEDUPE_HORIZON {
        return Err(ConfigError::invalid("ledger.dedupe_horizon", "must be at least 30d"));
    }
    if ledger.done_ttl > ledger.dedupe_horizon {
        return Err(ConfigError::invalid("ledger.done_ttl", "must not exceed ledger.dedupe_horizon"));
    }
    if ledger.timeout.is_zero() {
        return Err(ConfigError::invalid("ledger.timeout", "must be above 0"));
    }
    // One claim, then a settle with one retry, must leave the backend time within the budget.
    if ledger.timeout + settle_reserve(ledger.timeout) + MIN_FORWARD_TIME > reply_budget {
        return Err(ConfigError::invalid(
            "ledger.timeout",
            "3 x ledger.timeout + 100ms (claim, settle, one settle retry) must leave 1s of server.reply_budget for the backend",
        ));
    }
    Ok(())
}

/// Where the pid file and upgrade socket go by default: systemd's `RuntimeDirectory`, else
/// beside the embedded ledger, else `run/` beside the config. Never a shared directory such as
/// `/tmp`, where another local user could bind the upgrade socket first.
fn default_run_dir(ledger: &LedgerBackend, dir: &ConfigDir) -> PathBuf {
    if let Some(runtime) = std::env::var_os("RUNTIME_DIRECTORY") {
        return PathBuf::from(runtime);
    }
    match ledger {
        LedgerBackend::Embedded { path } => path.parent().map(Path::to_path_buf).unwrap_or_else(|| dir.resolve(Path::new("run"))),
        LedgerBackend::Redis { .. } => dir.resolve(Path::new("run")),
    }
}

/// The upgrade socket hands over listening sockets: whoever binds it first feeds the new
/// process its listeners. Its directory must not be writable by other users.
fn check_private_dir(key: &str, file: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::MetadataExt;
    let Some(parent) = file.parent() else { return Ok(()) };
    match std::fs::metadata(parent) {
        Ok(meta) if meta.mode() & 0o022 != 0 => Err(ConfigError::invalid(
            key,
            format!("directory {} is writable by other users; use a directory only payhook's user can write", parent.display()),
        )),
        _ => Ok(()),
    }
}

fn check_addr(key: &str, addr: &str) -> Result<(), ConfigError> {
    addr.parse::<SocketAddr>().map(|_| ()).map_err(|e| ConfigError::invalid(key, format!("{addr:?}: {e}")))
}

/// Account and type names are URL path segments and metric labels: keep them plain.
fn check_segment(key: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(key, "names may only use A-Z a-z 0-9 - _ (at most 64)"))
    }
}

/// Expands `${VAR}` in every string and `<secret>_file` keys, in place.
fn expand_table(table: &mut toml::Table, prefix: &str, dir: &ConfigDir) -> Result<(), ConfigError> {
    let keys: Vec<String> = table.keys().cloned().collect();
    for key in keys {
        let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        if let Some(secret) = key.strip_suffix("_file").filter(|s| SECRET_KEYS.contains(s)) {
            let Some(toml::Value::String(file)) = table.remove(&key) else {
                return Err(ConfigError::invalid(path, "must be a file path"));
            };
            let file = expand_env(&path, &file)?;
            let bytes = dir.read(&path, Path::new(&file))?;
            let text = String::from_utf8(bytes).map_err(|_| ConfigError::invalid(&path, "file is not UTF-8"))?;
            let secret_path = if prefix.is_empty() { secret.to_string() } else { format!("{prefix}.{secret}") };
            if table.contains_key(secret) {
                return Err(ConfigError::invalid(secret_path, format!("set both `{secret}` and `{key}`; pick one")));
            }
            table.insert(secret.to_string(), toml::Value::String(text.trim_end_matches(['\r', '\n']).to_string()));
            continue;
        }
        if let Some(value) = table.get_mut(&key) {
            expand_value(value, &path, dir)?;
        }
    }
    Ok(())
}

fn expand_value(value: &mut toml::Value, path: &str, dir: &ConfigDir) -> Result<(), ConfigError> {
    match value {
        toml::Value::String(s) => *s = expand_env(path, s)?,
        toml::Value::Table(t) => expand_table(t, path, dir)?,
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_value(item, &format!("{path}[{i}]"), dir)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn expand_env(key: &str, text: &str) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| ConfigError::invalid(key, "unterminated ${"))?;
        let var = &after[..end];
        let value = std::env::var(var).map_err(|_| ConfigError::MissingEnv { key: key.to_string(), var: var.to_string() })?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A TOML error told without the config's text: toml's own message quotes the offending line,
/// and serde's the offending value, either of which may be a secret (a key left twice during a
/// rotation, a missing quote, a token given where a table belongs).
fn syntax_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let message = without_values(e.message()).replace('\n', "; ");
    let Some(before) = e.span().and_then(|span| text.get(..span.start)) else {
        return ConfigError::Syntax(message);
    };
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or_default().chars().count() + 1;
    ConfigError::Syntax(format!("line {line}, column {column}: {message}"))
}

/// serde's "invalid type: string \"…\", expected …" and the like, without the value.
fn without_values(message: &str) -> String {
    for marker in ["invalid type: ", "invalid value: ", "unknown variant "] {
        let Some(at) = message.find(marker) else { continue };
        let rest = &message[at + marker.len()..];
        let kind = rest.split([' ', ',', '`', '"']).next().unwrap_or_default();
        let expected = rest.rfind(", expected").map_or("", |i| &rest[i..]);
        return format!("{}{}{expected}", &message[..at], format!("{marker}{kind}").trim_end());
    }
    message.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_expansion_names_the_key_not_the_value() {
        std::env::set_var("PAYHOOK_TEST_SET", "abc");
        assert_eq!(expand_env("k", "x${PAYHOOK_TEST_SET}y").unwrap(), "xabcy");
        let err = expand_env("routes.goods.notify_key", "${PAYHOOK_TEST_UNSET_VAR}").unwrap_err();
        assert_eq!(err.to_string(), "`routes.goods.notify_key`: environment variable PAYHOOK_TEST_UNSET_VAR is not set");
    }

    #[test]
    fn secret_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k.txt"), "s3cret\n").unwrap();
        let mut t: toml::Table = "[r]\nnotify_key_file = \"k.txt\"\n".parse().unwrap();
        expand_table(&mut t, "", &ConfigDir::new(dir.path())).unwrap();
        assert_eq!(t["r"]["notify_key"].as_str(), Some("s3cret"));
        let mut missing: toml::Table = "[r]\nnotify_key_file = \"nope.txt\"\n".parse().unwrap();
        let err = expand_table(&mut missing, "", &ConfigDir::new(dir.path())).unwrap_err();
        assert!(err.to_string().starts_with("`r.notify_key_file`: cannot read"), "{err}");
    }

    /// Regression: `{payhook}:` (the usual Cluster advice) split an order's record and data
    /// keys across slots, and every completion failed with CROSSSLOT.
    #[test]
    fn a_key_prefix_with_a_hash_tag_is_refused() {
        let example = std::fs::read_to_string("conf/payhook.toml").unwrap();
        let dir = ConfigDir::new("conf");
        assert!(Config::parse(&example.replace("[ledger]\n", "[ledger]\nkey_prefix = \"pay:\"\n"), &dir).is_ok());
        let tagged = example.replace("[ledger]\n", "[ledger]\nkey_prefix = \"{payhook}:\"\n");
        let err = Config::parse(&tagged, &dir).err().expect("refused").to_string();
        assert_eq!(err, "`ledger.key_prefix`: must not contain { or }: payhook tags its keys for Redis Cluster itself");
    }

    /// Regression: with only Alipay accounts (no provider reply timeout) a reply budget past a
    /// route's lease was taken, so a reply could still be settling once the lease had run out.
    #[test]
    fn a_reply_budget_past_the_shortest_lease_is_refused() {
        let example = std::fs::read_to_string("conf/payhook.toml").unwrap();
        let start = example.find("# WeChat Pay API v3").unwrap();
        let end = example.find("# Alipay, public-key mode").unwrap();
        let alipay_only = format!("{}{}", &example[..start], &example[end..]);
        let dir = ConfigDir::new("conf");
        let with_budget = |budget: &str| alipay_only.replace("reply_budget = \"4.5s\"", &format!("reply_budget = \"{budget}\""));
        // The example's routes: goods 4s, the others shorter; the shortest lease is theirs + 5s.
        let shortest = Config::parse(&alipay_only, &dir).unwrap().routes.values().map(|r| r.timeout).min().unwrap() + LEASE_MARGIN;
        assert!(Config::parse(&with_budget(&humantime::format_duration(shortest).to_string()), &dir).is_ok());
        let over = humantime::format_duration(shortest + Duration::from_millis(1)).to_string();
        let err = Config::parse(&with_budget(&over), &dir).err().expect("refused").to_string();
        assert!(err.starts_with("`server.reply_budget`: must not exceed the shortest lease (routes."), "{err}");
    }

    #[test]
    fn provider_certificates_are_warned_about_two_weeks_ahead_and_once_expired() {
        let example = std::fs::read_to_string("conf/payhook.toml").unwrap();
        let keys = format!("{}/tests/fixtures/keys", env!("CARGO_MANIFEST_DIR"));
        let with_cert = example.replace(
            "timestamp_tolerance = \"5m\"",
            &format!("platform_certs = [{{ pem_file = \"{keys}/wx_platform_b.cert.pem\" }}]\ntimestamp_tolerance = \"5m\""),
        );
        let config = Config::parse(&with_cert, &ConfigDir::new("conf")).unwrap();
        // Certificate B: 2026-11-27T05:09:22Z to 2126-11-03T05:09:22Z.
        let (not_before, not_after) = (1_795_756_162, 4_949_356_162);
        let serial = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1";
        assert!(config.certificate_warnings(not_after - CERT_EXPIRY_WARNING).is_empty());
        assert_eq!(
            config.certificate_warnings(not_after - 3 * 86400 - 5),
            [format!("accounts.wx-demo: certificate {serial} expires in 3 days: add the provider's next certificate, then send SIGHUP")]
        );
        for outside in [not_before - 1, not_after + 1] {
            let warnings = config.certificate_warnings(outside);
            assert_eq!(warnings.len(), 1);
            assert!(warnings[0].starts_with(&format!("accounts.wx-demo: certificate {serial} is outside its validity")), "{warnings:?}");
        }
    }

    /// Regression: toml's message printed the offending line, and serde's the offending value.
    #[test]
    fn syntax_errors_name_the_place_never_the_value() {
        let dir = ConfigDir::new(".");
        let error = |text: &str| Config::parse(text, &dir).err().expect("refused").to_string();
        let twice = "[server]\nlisten = \"127.0.0.1:8080\"\nadmin_token = \"s3cr3t-old\"\nadmin_token = \"s3cr3t-new\"\n";
        assert_eq!(error(twice), "config is not valid TOML: line 4, column 1: duplicate key `admin_token` in table `server`");
        let unclosed = "[server]\nadmin_token = \"s3cr3t-token\n";
        assert_eq!(error(unclosed), "config is not valid TOML: line 2, column 28: invalid basic string");
        let misplaced = "[server]\nadmin_tokens = \"s3cr3t-token\"\n";
        assert_eq!(error(misplaced), "`server.admin_tokens`: invalid type: string, expected a map");
        let number = "[server]\nadmin_token = 123456789\n";
        assert_eq!(error(number), "`server.admin_token`: invalid type: integer, expected a string");
        let variant = "[server]\nlog_format = \"s3cr3t\"\n";
        assert_eq!(error(variant), "`server.log_format`: unknown variant, expected `text` or `json`");
    }
}
