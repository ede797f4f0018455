//! The production ledger: Redis, shared by every payhook instance.
//!
//! Each state change is one Lua script, so claim / complete / release are atomic across
//! instances, and time comes from Redis (`TIME`) so instances' clocks do not matter.
//!
//! Keys, readable with `redis-cli`: the record is a hash at `{key_prefix}{family}:{merchant}:{out_trade_no}`
//! (state, type, amount, times), kept for `dedupe_horizon`; a done order's data is a string at
//! `{<record key>}:data`, kept for `done_ttl`. The braces make the data key hash to the record's
//! cluster slot, so every script touches one slot.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};

use super::{
    bounded, millis, quarantine_reason, Claim, ClaimRequest, Index, Lease, Ledger, LedgerError, OrderRecord, OrderState, Owned, PaymentId,
    QuarantineInfo, Registered, Registration, Retention,
};

const NOW: &str = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n";

/// ARGV: token, lease ms, horizon ms, notify_mode, type ('' = the registered one), total_fee,
/// require_registration ('1'). Decides without writing when the order is to be quarantined.
const CLAIM: &str = r#"
local r = redis.call('HMGET', KEYS[1], 'state', 'type', 'lease_until', 'registered', 'total_fee', 'forced', 'q_reason', 'fields', 'attempts', 'first_seen')
local state, rtype, registered, want = r[1], r[2], r[4] == '1', ARGV[5]
-- An operator's `resolve forward` pins the type: a provider retry under the URL's type goes there.
if r[6] == '1' and rtype then want = rtype end
if state == 'dismissed' then return {'dismissed'} end
if state == 'quarantined' then return {'quarantined', r[7] or ''} end
if state == 'done' then
  if want ~= '' and rtype and rtype ~= want then return {'type_mismatch', rtype} end
  return {'done'}
end
if r[6] ~= '1' then
  if registered then
    if want ~= '' and want ~= rtype then return {'quarantine', 'type_mismatch', rtype, r[5]} end
    if tonumber(ARGV[6]) ~= tonumber(r[5]) then return {'quarantine', 'amount_mismatch', rtype, r[5]} end
  elseif want == '' or ARGV[7] == '1' then
    return {'quarantine', 'unregistered', '', ''}
  elseif rtype and rtype ~= want then
    return {'type_mismatch', rtype}
  end
end
if want == '' then want = rtype end
if state == 'in_flight' and tonumber(r[3] or '0') > now then return {'in_flight'} end
-- One HSET: every redis.call is a command's worth of work on the ledger's hot path.
redis.call('HSET', KEYS[1], 'state', 'in_flight', 'token', ARGV[1], 'lease_until', now + tonumber(ARGV[2]), 'notify_mode', ARGV[4], 'type', want,
  'total_fee', r[5] or ARGV[6], 'attempts', tonumber(r[9] or '0') + 1, 'first_seen', r[10] or now)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {'owned', want, r[8] or '', registered and '1' or '0'}
"#;

/// KEYS: record, data. ARGV: token, order data, done_ttl ms. The record keeps the expiry its
/// claim gave it (the dedupe horizon from the claim, at most a reply budget ago): the horizon is
/// counted from the payment, which came before the claim.
const COMPLETE: &str = r#"
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'done', 'done_at', now)
redis.call('HDEL', KEYS[1], 'token', 'lease_until', 'last_failure', 'fields', 'forced', 'q_data')
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1
"#;

/// ARGV: account, type, total_fee, expires_at, fields ('' = none), horizon ms.
const REGISTER: &str = r#"
local r = redis.call('HMGET', KEYS[1], 'registered', 'type', 'total_fee', 'fields', 'state')
if r[1] == '1' then
  local same = r[2] == ARGV[2] and tonumber(r[3]) == tonumber(ARGV[3]) and (r[5] == 'done' or (r[4] or '') == ARGV[5])
  if same then return 'same' end
  return 'conflict'
end
if r[2] and r[2] ~= ARGV[2] then return 'conflict' end
if r[3] and tonumber(r[3]) ~= tonumber(ARGV[3]) then return 'conflict' end
redis.call('HSET', KEYS[1], 'registered', '1', 'account', ARGV[1], 'type', ARGV[2], 'total_fee', ARGV[3], 'expires_at', ARGV[4])
if ARGV[5] ~= '' and r[5] ~= 'done' then redis.call('HSET', KEYS[1], 'fields', ARGV[5]) end
if not r[5] then redis.call('HSET', KEYS[1], 'state', 'none') end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return 'created'
"#;

/// ARGV: reason, notified type, notified fee, registered type, registered fee, at, order data, horizon ms.
const QUARANTINE: &str = r#"
local s = redis.call('HGET', KEYS[1], 'state')
if s == 'in_flight' or s == 'done' or s == 'quarantined' or s == 'dismissed' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'quarantined', 'q_reason', ARGV[1], 'q_notified_type', ARGV[2], 'q_notified_total_fee', ARGV[3],
  'q_registered_type', ARGV[4], 'q_registered_total_fee', ARGV[5], 'q_at', ARGV[6], 'q_data', ARGV[7])
redis.call('PEXPIRE', KEYS[1], ARGV[8])
return 1
"#;

/// ARGV: 'forward' | 'dismiss', the type to forward as ('' = keep).
const RESOLVE: &str = r#"
if redis.call('HGET', KEYS[1], 'state') ~= 'quarantined' then return {0} end
if ARGV[1] ~= 'forward' then
  redis.call('HSET', KEYS[1], 'state', 'dismissed')
  return {1, ''}
end
redis.call('HSET', KEYS[1], 'state', 'none', 'forced', '1')
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'type', ARGV[2]) end
return {1, redis.call('HGET', KEYS[1], 'q_data') or ''}
"#;

const CLOSE: &str = r#"
local r = redis.call('HMGET', KEYS[1], 'state', 'registered')
if r[2] ~= '1' or (r[1] ~= 'none' and r[1] ~= false) then return 0 end
redis.call('HSET', KEYS[1], 'state', 'closed', 'closed_at', now)
return 1
"#;

const NOTE_CHECK: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HINCRBY', KEYS[1], 'checks', 1)
"#;

/// KEYS: a due index. ARGV: limit, hold ms.
const CLAIM_DUE: &str = r#"
local items = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, m in ipairs(items) do redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), m) end
return items
"#;

/// KEYS: a rate window. ARGV: per second, a unique member.
const RATE_SLOT: &str = r#"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 1000)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('PEXPIRE', KEYS[1], 2000)
return 1
"#;

const RELEASE: &str = r#"
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'none', 'last_failure', ARGV[2])
redis.call('HDEL', KEYS[1], 'token', 'lease_until')
return 1
"#;

const REPLAY: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'replays', 1)
redis.call('HSET', KEYS[1], 'last_replay', ARGV[1])
return 1
"#;

/// Where the Redis ledger lives. Each mode uses Redis's own replication and failover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deployment {
    /// One Redis (`redis://` or `rediss://`).
    Single { url: String },
    /// The master Sentinel names `master_name`; followed through a failover.
    Sentinel { sentinels: Vec<String>, master_name: String },
    /// A Redis Cluster reached through its seed `nodes`.
    Cluster { nodes: Vec<String> },
}

/// PEM bytes for TLS to Redis: a private CA, and an optional client certificate.
#[derive(Clone, Default)]
pub struct RedisTls {
    pub ca: Option<Vec<u8>>,
    pub client_cert: Option<Vec<u8>>,
    pub client_key: Option<Vec<u8>>,
}

impl RedisTls {
    fn certificates(&self) -> Option<redis::TlsCertificates> {
        if self.ca.is_none() && self.client_cert.is_none() {
            return None;
        }
        let client_tls = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig { client_cert: cert.clone(), client_key: key.clone() }),
            _ => None,
        };
        Some(redis::TlsCertificates { client_tls, root_cert: self.ca.clone() })
    }
}

/// Opens connections for a [`Deployment`].
enum Connector {
    Single(redis::Client),
    Sentinel(tokio::sync::Mutex<redis::sentinel::SentinelClient>),
    Cluster(redis::cluster::ClusterClient),
}

impl Connector {
    fn new(deployment: &Deployment, tls: &RedisTls, timeout: Duration) -> Result<Connector, redis::RedisError> {
        let certificates = tls.certificates();
        Ok(match deployment {
            Deployment::Single { url } => match certificates {
                Some(certs) => Connector::Single(redis::Client::build_with_tls(url.as_str(), certs)?),
                None => Connector::Single(redis::Client::open(url.as_str())?),
            },
            Deployment::Sentinel { sentinels, master_name } => {
                let infos: Vec<redis::ConnectionInfo> =
                    sentinels.iter().map(|u| redis::IntoConnectionInfo::into_connection_info(u.as_str())).collect::<Result<_, _>>()?;
                let secure = infos.iter().any(|i| matches!(i.addr(), redis::ConnectionAddr::TcpTls { .. }));
                let mut builder = redis::sentinel::SentinelClientBuilder::new(
                    infos.iter().map(|i| i.addr().clone()),
                    master_name,
                    redis::sentinel::SentinelServerType::Master,
                )?;
                if secure || certificates.is_some() {
                    builder = builder
                        .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                        .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
                }
                if let Some(certs) = certificates {
                    builder = builder.set_client_to_redis_certificates(certs.clone()).set_client_to_sentinel_certificates(certs);
                }
                Connector::Sentinel(tokio::sync::Mutex::new(builder.build()?))
            }
            Deployment::Cluster { nodes } => {
                let mut builder = redis::cluster::ClusterClientBuilder::new(nodes.iter().map(String::as_str))
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(2);
                if let Some(certs) = certificates {
                    builder = builder.certs(certs);
                }
                Connector::Cluster(builder.build()?)
            }
        })
    }

    async fn connect(&self, config: ConnectionManagerConfig) -> Result<Conn, redis::RedisError> {
        Ok(match self {
            Connector::Single(client) => Conn::Managed(ConnectionManager::new_with_config(client.clone(), config).await?),
            // The master Sentinel names now; a failover is noticed by an error, which drops this
            // connection so the next call asks the sentinels again.
            Connector::Sentinel(sentinel) => {
                let client = sentinel.lock().await.async_get_client().await?;
                Conn::Managed(ConnectionManager::new_with_config(client, config).await?)
            }
            Connector::Cluster(cluster) => Conn::Cluster(cluster.get_async_connection().await?),
        })
    }
}

/// A connection of any deployment: the scripts and commands run on it unchanged.
#[derive(Clone)]
enum Conn {
    Managed(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Managed(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(&'a mut self, pipeline: &'a redis::Pipeline, offset: usize, count: usize) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Managed(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Managed(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

struct Slot {
    conn: Conn,
    /// Created on the notify runtime (its I/O task runs there).
    on_home: bool,
}

pub struct RedisLedger {
    connector: Arc<Connector>,
    /// The shared connection. Created on the notify runtime once that is known (the first
    /// notification), so its I/O task runs there and not on whichever runtime (the one-thread
    /// admin runtime via `/readyz`, the sweep's) called first; until then the caller's.
    slot: ArcSwapOption<Slot>,
    connecting: tokio::sync::Mutex<()>,
    home: OnceLock<tokio::runtime::Handle>,
    /// Sentinel: an error may mean a failover, so the connection is dropped and the master looked up again.
    follow_failover: bool,
    prefix: String,
    done_ttl_ms: i64,
    horizon_ms: i64,
    timeout: Duration,
    claim: Script,
    complete: Script,
    release: Script,
    replay: Script,
    register: Script,
    quarantine: Script,
    resolve: Script,
    close: Script,
    note_check: Script,
    claim_due: Script,
    rate_slot: Script,
}

impl RedisLedger {
    pub fn new(url: &str, prefix: &str, retention: Retention, timeout: Duration) -> Result<Self, LedgerError> {
        Self::with_deployment(&Deployment::Single { url: url.to_string() }, &RedisTls::default(), prefix, retention, timeout)
    }

    pub fn with_deployment(deployment: &Deployment, tls: &RedisTls, prefix: &str, retention: Retention, timeout: Duration) -> Result<Self, LedgerError> {
        let connector = Connector::new(deployment, tls, timeout).map_err(|e| LedgerError::Unavailable(e.to_string()))?;
        let script = |body: &str| Script::new(&format!("{NOW}{body}"));
        Ok(RedisLedger {
            connector: Arc::new(connector),
            slot: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            home: OnceLock::new(),
            follow_failover: matches!(deployment, Deployment::Sentinel { .. }),
            prefix: prefix.to_string(),
            done_ttl_ms: millis(retention.done_ttl),
            horizon_ms: millis(retention.dedupe_horizon),
            timeout,
            claim: script(CLAIM),
            complete: script(COMPLETE),
            release: script(RELEASE),
            replay: Script::new(REPLAY),
            register: Script::new(REGISTER),
            quarantine: Script::new(QUARANTINE),
            resolve: Script::new(RESOLVE),
            close: script(CLOSE),
            note_check: Script::new(NOTE_CHECK),
            claim_due: script(CLAIM_DUE),
            rate_slot: script(RATE_SLOT),
        })
    }

    fn manager_config(&self) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200))
    }

    fn usable(&self, slot: &Slot) -> bool {
        slot.on_home || self.home.get().is_none()
    }

    /// Connects on first use: pingora creates its runtimes only when the server starts, and a
    /// Redis that is down at start-up must not keep payhook from starting (it answers failure).
    async fn conn(&self) -> Result<Conn, LedgerError> {
        if let Some(slot) = self.slot.load_full().filter(|s| self.usable(s)) {
            return Ok(slot.conn.clone());
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(slot) = self.slot.load_full().filter(|s| self.usable(s)) {
            return Ok(slot.conn.clone());
        }
        let (connector, config) = (self.connector.clone(), self.manager_config());
        let connect = async move { connector.connect(config).await };
        let (conn, on_home) = match self.home.get() {
            Some(home) => (home.spawn(connect).await.map_err(|e| LedgerError::Unavailable(e.to_string()))?, true),
            None => (connect.await, false),
        };
        let conn = conn.map_err(unavailable)?;
        self.slot.store(Some(Arc::new(Slot { conn: conn.clone(), on_home })));
        Ok(conn)
    }

    fn key(&self, key: &PaymentId) -> String {
        format!("{}{key}", self.prefix)
    }

    fn data_key(&self, key: &PaymentId) -> String {
        format!("{{{}{key}}}:data", self.prefix)
    }

    fn index_key(&self, index: Index, account: &str) -> String {
        format!("{}{}:{account}", self.prefix, index.name())
    }

    /// Runs `f` with a connection, bounded by the ledger timeout.
    async fn with_conn<T, F, Fut>(&self, f: F) -> Result<T, LedgerError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T, redis::RedisError>>,
    {
        let result = bounded(self.timeout, async { f(self.conn().await?).await.map_err(unavailable) }).await;
        if result.is_err() && self.follow_failover {
            self.slot.store(None);
        }
        result
    }
}

fn unavailable(e: redis::RedisError) -> LedgerError {
    LedgerError::Unavailable(e.to_string())
}

#[async_trait]
impl Ledger for RedisLedger {
    async fn claim(&self, key: &PaymentId, request: ClaimRequest<'_>) -> Result<Claim, LedgerError> {
        let lease = Lease::new();
        let token = &lease.token;
        let result: Vec<String> = self
            .with_conn(|mut conn| async move {
                self.claim
                    .key(self.key(key))
                    .arg(token)
                    .arg(millis(request.lease_for))
                    .arg(self.horizon_ms)
                    .arg(request.mode as u8)
                    .arg(request.order_type.unwrap_or_default())
                    .arg(request.total_fee)
                    .arg(if request.require_registration { "1" } else { "0" })
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        let arg = |i: usize| result.get(i).cloned().unwrap_or_default();
        let some = |text: String| Some(text).filter(|t| !t.is_empty());
        Ok(match result.first().map(String::as_str) {
            Some("owned") => Claim::Owned(Owned { lease, order_type: arg(1), fields: some(arg(2)), registered: arg(3) == "1" }),
            Some("done") => Claim::Done,
            Some("type_mismatch") => Claim::TypeMismatch { recorded: arg(1) },
            Some("quarantine") => Claim::Quarantine {
                reason: quarantine_reason(&arg(1)),
                registered_type: some(arg(2)),
                registered_total_fee: arg(3).parse().ok(),
            },
            Some("quarantined") => Claim::Quarantined { reason: arg(1) },
            Some("dismissed") => Claim::Dismissed,
            _ => Claim::InFlight,
        })
    }

    async fn complete(&self, key: &PaymentId, lease: &Lease, order_data: &str) -> Result<bool, LedgerError> {
        let n: i64 = self
            .with_conn(|mut conn| async move {
                self.complete
                    .key(self.key(key))
                    .key(self.data_key(key))
                    .arg(&lease.token)
                    .arg(order_data)
                    .arg(self.done_ttl_ms)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(n == 1)
    }

    async fn release(&self, key: &PaymentId, lease: &Lease, reason: &str) -> Result<bool, LedgerError> {
        let n: i64 = self
            .with_conn(|mut conn| async move { self.release.key(self.key(key)).arg(&lease.token).arg(reason).invoke_async(&mut conn).await })
            .await?;
        Ok(n == 1)
    }

    async fn record(&self, key: &PaymentId) -> Result<Option<OrderRecord>, LedgerError> {
        let (fields, data): (HashMap<String, String>, Option<String>) = self
            .with_conn(|mut conn| async move { redis::pipe().hgetall(self.key(key)).get(self.data_key(key)).query_async(&mut conn).await })
            .await?;
        Ok(to_record(fields, data))
    }

    async fn note_replay(&self, key: &PaymentId, result: &str) -> Result<(), LedgerError> {
        let _: i64 = self.with_conn(|mut conn| async move { self.replay.key(self.key(key)).arg(result).invoke_async(&mut conn).await }).await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), LedgerError> {
        self.with_conn(|mut conn| async move { redis::cmd("PING").query_async::<String>(&mut conn).await }).await.map(|_| ())
    }

    async fn register(&self, key: &PaymentId, r: &Registration) -> Result<Registered, LedgerError> {
        let result: String = self
            .with_conn(|mut conn| async move {
                self.register
                    .key(self.key(key))
                    .arg(&r.account)
                    .arg(&r.order_type)
                    .arg(r.total_fee)
                    .arg(r.expires_at_ms)
                    .arg(r.fields.as_deref().unwrap_or_default())
                    .arg(self.horizon_ms)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(match result.as_str() {
            "created" => Registered::Created,
            "same" => Registered::Same,
            _ => Registered::Conflict,
        })
    }

    async fn quarantine(&self, key: &PaymentId, q: &QuarantineInfo) -> Result<bool, LedgerError> {
        let n: i64 = self
            .with_conn(|mut conn| async move {
                self.quarantine
                    .key(self.key(key))
                    .arg(&q.reason)
                    .arg(q.notified_type.as_deref().unwrap_or_default())
                    .arg(q.notified_total_fee)
                    .arg(q.registered_type.as_deref().unwrap_or_default())
                    .arg(q.registered_total_fee.map(|f| f.to_string()).unwrap_or_default())
                    .arg(q.at_ms)
                    .arg(&q.order_data)
                    .arg(self.horizon_ms)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(n == 1)
    }

    async fn resolve(&self, key: &PaymentId, forward_as: Option<&str>) -> Result<Option<String>, LedgerError> {
        let (action, as_type) = match forward_as {
            Some(t) => ("forward", t),
            None => ("dismiss", ""),
        };
        let (changed, data): (i64, Option<String>) = self
            .with_conn(|mut conn| async move {
                let v: redis::Value = self.resolve.key(self.key(key)).arg(action).arg(as_type).invoke_async(&mut conn).await?;
                redis::FromRedisValue::from_redis_value(v).or_else(|_| Ok((0, None)))
            })
            .await?;
        Ok((changed == 1).then(|| data.unwrap_or_default()))
    }

    async fn close(&self, key: &PaymentId) -> Result<bool, LedgerError> {
        let n: i64 = self.with_conn(|mut conn| async move { self.close.key(self.key(key)).invoke_async(&mut conn).await }).await?;
        Ok(n == 1)
    }

    async fn note_check(&self, key: &PaymentId) -> Result<u64, LedgerError> {
        let n: i64 = self.with_conn(|mut conn| async move { self.note_check.key(self.key(key)).invoke_async(&mut conn).await }).await?;
        Ok(n.max(0) as u64)
    }

    async fn index_put(&self, index: Index, account: &str, key: &PaymentId, score_ms: i64) -> Result<(), LedgerError> {
        self.with_conn(|mut conn| async move { conn.zadd(self.index_key(index, account), key.as_str(), score_ms).await }).await
    }

    async fn index_add(&self, index: Index, account: &str, key: &PaymentId, score_ms: i64) -> Result<(), LedgerError> {
        let add_only = redis::SortedSetAddOptions::add_only();
        self.with_conn(|mut conn| async move { conn.zadd_options::<_, _, _, ()>(self.index_key(index, account), key.as_str(), score_ms, &add_only).await }).await
    }

    async fn index_remove(&self, index: Index, account: &str, key: &PaymentId) -> Result<(), LedgerError> {
        self.with_conn(|mut conn| async move { conn.zrem(self.index_key(index, account), key.as_str()).await }).await
    }

    async fn index_page(&self, index: Index, account: &str, after: Option<(i64, String)>, limit: usize) -> Result<Vec<(i64, PaymentId)>, LedgerError> {
        let zkey = self.index_key(index, account);
        let cursor = after.as_ref();
        let entries: Vec<(String, i64)> = self
            .with_conn(|mut conn| async move {
                match cursor {
                    None => conn.zrevrangebyscore_limit_withscores(&zkey, "+inf", "-inf", 0, limit as isize).await,
                    Some((score, _)) => {
                        // Entries tied at the cursor's score come first (reverse key order):
                        // fetch enough to skip those already seen.
                        let tied: isize = conn.zcount(&zkey, *score, *score).await?;
                        conn.zrevrangebyscore_limit_withscores(&zkey, *score, "-inf", 0, limit as isize + tied).await
                    }
                }
            })
            .await?;
        Ok(entries
            .into_iter()
            .filter(|(member, score)| match &after {
                Some((s, m)) => score < s || (score == s && member < m),
                None => true,
            })
            .take(limit)
            .map(|(member, score)| (score, PaymentId::from_key(member)))
            .collect())
    }

    async fn index_stats(&self, index: Index, account: &str) -> Result<(u64, Option<i64>), LedgerError> {
        let zkey = self.index_key(index, account);
        let (count, lowest): (u64, Vec<(String, i64)>) =
            self.with_conn(|mut conn| async move { redis::pipe().zcard(&zkey).zrange_withscores(&zkey, 0, 0).query_async(&mut conn).await }).await?;
        Ok((count, lowest.first().map(|(_, score)| *score)))
    }

    async fn claim_due(&self, account: &str, limit: usize, hold: Duration) -> Result<Vec<PaymentId>, LedgerError> {
        let items: Vec<String> = self
            .with_conn(|mut conn| async move {
                self.claim_due.key(self.index_key(Index::Due, account)).arg(limit).arg(millis(hold)).invoke_async(&mut conn).await
            })
            .await?;
        Ok(items.into_iter().map(PaymentId::from_key).collect())
    }

    async fn rate_slot(&self, account: &str, per_second: u32) -> Result<bool, LedgerError> {
        let n: i64 = self
            .with_conn(|mut conn| async move {
                self.rate_slot
                    .key(format!("{}rate:{account}", self.prefix))
                    .arg(per_second)
                    .arg(crate::keys::random_hex(8))
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(n == 1)
    }

    fn adopt_runtime(&self, handle: tokio::runtime::Handle) {
        let _ = self.home.set(handle);
    }
}

fn to_record(mut f: HashMap<String, String>, order_data: Option<String>) -> Option<OrderRecord> {
    let state = OrderState::parse(f.get("state")?);
    let num = |f: &HashMap<String, String>, k: &str| f.get(k).and_then(|v| v.parse::<i64>().ok());
    let quarantine = f.contains_key("q_reason").then(|| QuarantineInfo {
        notified_total_fee: num(&f, "q_notified_total_fee").unwrap_or(0) as u64,
        registered_total_fee: num(&f, "q_registered_total_fee").map(|v| v as u64),
        at_ms: num(&f, "q_at").unwrap_or(0),
        reason: f.remove("q_reason").unwrap_or_default(),
        notified_type: f.remove("q_notified_type").filter(|t| !t.is_empty()),
        registered_type: f.remove("q_registered_type").filter(|t| !t.is_empty()),
        order_data: f.remove("q_data").unwrap_or_default(),
    });
    Some(OrderRecord {
        state,
        total_fee: f.get("total_fee").and_then(|v| v.parse().ok()),
        notify_mode: num(&f, "notify_mode").map(|m| m as u8),
        attempts: num(&f, "attempts").unwrap_or(0) as u64,
        first_seen_ms: num(&f, "first_seen"),
        done_at_ms: num(&f, "done_at"),
        replays: num(&f, "replays").unwrap_or(0) as u64,
        registered: f.get("registered").is_some_and(|v| v == "1"),
        expires_at_ms: num(&f, "expires_at"),
        checks: num(&f, "checks").unwrap_or(0) as u64,
        quarantine,
        account: f.remove("account"),
        fields: f.remove("fields"),
        order_type: f.remove("type"),
        last_failure: f.remove("last_failure"),
        last_replay: f.remove("last_replay"),
        order_data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::NotifyMode;
    use std::sync::Arc;

    fn test_url() -> String {
        std::env::var("PAYHOOK_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
    }

    /// Runs against the machine's Redis (`PAYHOOK_TEST_REDIS`, default 127.0.0.1:6379).
    #[tokio::test]
    async fn keeps_the_ledger_contract() {
        let prefix = format!("payhook-test:{}:", crate::keys::random_hex(6));
        let ledger = RedisLedger::new(&test_url(), &prefix, super::super::contract::RETENTION, Duration::from_secs(2)).unwrap();
        let ledger: Arc<dyn Ledger> = Arc::new(ledger);
        super::super::contract::run(ledger.clone()).await;
        super::super::contract::run_registration(ledger, &crate::keys::random_hex(6)).await;
    }

    /// The key layout operators read with redis-cli, and the two lifetimes.
    #[tokio::test]
    async fn keys_are_readable_and_the_marker_outlives_the_data() {
        let prefix = format!("payhook-test:{}:", crate::keys::random_hex(6));
        let retention = Retention { done_ttl: Duration::from_secs(3600), dedupe_horizon: Duration::from_secs(400 * 86400) };
        let ledger = RedisLedger::new(&test_url(), &prefix, retention, Duration::from_secs(2)).unwrap();
        let id = PaymentId::new("wechat", "1230000109", "o-1");
        let req = ClaimRequest {
            order_type: Some("goods"),
            total_fee: 5,
            lease_for: Duration::from_secs(5),
            mode: NotifyMode::Notification,
            require_registration: false,
        };
        let Claim::Owned(owned) = ledger.claim(&id, req).await.unwrap() else { panic!() };
        assert!(ledger.complete(&id, &owned.lease, "{}").await.unwrap());
        let mut conn = redis::Client::open(test_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
        let marker = format!("{prefix}wechat:1230000109:o-1");
        let ttl: i64 = redis::cmd("PTTL").arg(&marker).query_async(&mut conn).await.unwrap();
        assert!(ttl > millis(retention.dedupe_horizon) - 60_000, "marker lives for the horizon: {ttl}");
        let ttl: i64 = redis::cmd("PTTL").arg(format!("{{{marker}}}:data")).query_async(&mut conn).await.unwrap();
        assert!(ttl > 3_500_000 && ttl <= 3_600_000, "data lives for done_ttl: {ttl}");
        let fields: HashMap<String, String> = redis::cmd("HGETALL").arg(&marker).query_async(&mut conn).await.unwrap();
        let mut names: Vec<&str> = fields.keys().map(String::as_str).collect();
        names.sort();
        assert_eq!(names, ["attempts", "done_at", "first_seen", "notify_mode", "state", "total_fee", "type"]);
        // The data key shares the record's cluster slot: its hash tag is the record key.
        let data_key = format!("{{{marker}}}:data");
        let tag = &data_key[1..data_key.find('}').unwrap()];
        assert_eq!(tag, marker, "the data key's hash tag is the record key");
    }

    #[tokio::test]
    async fn unreachable_redis_fails_fast() {
        let ledger = RedisLedger::new("redis://127.0.0.1:1/0", "t:", super::super::contract::RETENTION, Duration::from_millis(300)).unwrap();
        let started = std::time::Instant::now();
        let req = ClaimRequest {
            order_type: Some("goods"),
            total_fee: 1,
            lease_for: Duration::from_secs(5),
            mode: NotifyMode::Notification,
            require_registration: false,
        };
        assert!(ledger.claim(&PaymentId::new("wechat", "m", "b"), req).await.is_err());
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
