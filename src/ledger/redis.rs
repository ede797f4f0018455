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
use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use tokio::sync::OnceCell;

use super::{bounded, millis, Claim, ClaimRequest, Lease, Ledger, LedgerError, OrderRecord, OrderState, PaymentId, Retention};

const NOW: &str = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n";

/// ARGV: token, lease ms, horizon ms, notify_mode, type, total_fee.
const CLAIM: &str = r#"
local rec = redis.call('HMGET', KEYS[1], 'state', 'type', 'lease_until')
if rec[2] and rec[2] ~= ARGV[5] then return {'type_mismatch', rec[2]} end
if rec[1] == 'done' then return {'done'} end
if rec[1] == 'in_flight' and tonumber(rec[3] or '0') > now then return {'in_flight'} end
redis.call('HSET', KEYS[1], 'state', 'in_flight', 'token', ARGV[1], 'lease_until', now + tonumber(ARGV[2]), 'notify_mode', ARGV[4], 'type', ARGV[5])
redis.call('HSETNX', KEYS[1], 'total_fee', ARGV[6])
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSETNX', KEYS[1], 'first_seen', now)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {'owned'}
"#;

/// KEYS: record, data. ARGV: token, order data, done_ttl ms, horizon ms.
const COMPLETE: &str = r#"
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'done', 'done_at', now)
redis.call('HDEL', KEYS[1], 'token', 'lease_until', 'last_failure')
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
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

pub struct RedisLedger {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    /// The notify runtime: the connection's I/O task runs there, not on whichever runtime
    /// (often the one-thread admin runtime, via `/readyz`) happened to call first.
    home: OnceLock<tokio::runtime::Handle>,
    prefix: String,
    done_ttl_ms: i64,
    horizon_ms: i64,
    timeout: Duration,
    claim: Script,
    complete: Script,
    release: Script,
    replay: Script,
}

impl RedisLedger {
    pub fn new(url: &str, prefix: &str, retention: Retention, timeout: Duration) -> Result<Self, LedgerError> {
        let client = redis::Client::open(url).map_err(|e| LedgerError::Unavailable(e.to_string()))?;
        let script = |body: &str| Script::new(&format!("{NOW}{body}"));
        Ok(RedisLedger {
            client,
            conn: OnceCell::new(),
            home: OnceLock::new(),
            prefix: prefix.to_string(),
            done_ttl_ms: millis(retention.done_ttl),
            horizon_ms: millis(retention.dedupe_horizon),
            timeout,
            claim: script(CLAIM),
            complete: script(COMPLETE),
            release: script(RELEASE),
            replay: Script::new(REPLAY),
        })
    }

    fn manager_config(&self) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200))
    }

    /// Connects on first use: pingora creates its runtimes only when the server starts, and a
    /// Redis that is down at start-up must not keep payhook from starting (it answers failure).
    async fn conn(&self) -> Result<ConnectionManager, LedgerError> {
        let conn = self
            .conn
            .get_or_try_init(|| async {
                let connect = ConnectionManager::new_with_config(self.client.clone(), self.manager_config());
                match self.home.get() {
                    Some(home) => home.spawn(connect).await.map_err(|e| LedgerError::Unavailable(e.to_string()))?,
                    None => connect.await,
                }
                .map_err(unavailable)
            })
            .await?;
        Ok(conn.clone())
    }

    fn key(&self, key: &PaymentId) -> String {
        format!("{}{key}", self.prefix)
    }

    fn data_key(&self, key: &PaymentId) -> String {
        format!("{{{}{key}}}:data", self.prefix)
    }
}

fn unavailable(e: redis::RedisError) -> LedgerError {
    LedgerError::Unavailable(e.to_string())
}

#[async_trait]
impl Ledger for RedisLedger {
    async fn claim(&self, key: &PaymentId, request: ClaimRequest<'_>) -> Result<Claim, LedgerError> {
        bounded(self.timeout, async {
            let mut conn = self.conn().await?;
            let lease = Lease::new();
            let result: Vec<String> = self
                .claim
                .key(self.key(key))
                .arg(&lease.token)
                .arg(millis(request.lease_for))
                .arg(self.horizon_ms)
                .arg(request.mode as u8)
                .arg(request.order_type)
                .arg(request.total_fee)
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            Ok(match result.first().map(String::as_str) {
                Some("owned") => Claim::Owned(lease),
                Some("done") => Claim::Done,
                Some("type_mismatch") => Claim::TypeMismatch { recorded: result.get(1).cloned().unwrap_or_default() },
                _ => Claim::InFlight,
            })
        })
        .await
    }

    async fn complete(&self, key: &PaymentId, lease: &Lease, order_data: &str) -> Result<bool, LedgerError> {
        bounded(self.timeout, async {
            let mut conn = self.conn().await?;
            let n: i64 = self
                .complete
                .key(self.key(key))
                .key(self.data_key(key))
                .arg(&lease.token)
                .arg(order_data)
                .arg(self.done_ttl_ms)
                .arg(self.horizon_ms)
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            Ok(n == 1)
        })
        .await
    }

    async fn release(&self, key: &PaymentId, lease: &Lease, reason: &str) -> Result<bool, LedgerError> {
        bounded(self.timeout, async {
            let mut conn = self.conn().await?;
            let n: i64 =
                self.release.key(self.key(key)).arg(&lease.token).arg(reason).invoke_async(&mut conn).await.map_err(unavailable)?;
            Ok(n == 1)
        })
        .await
    }

    async fn record(&self, key: &PaymentId) -> Result<Option<OrderRecord>, LedgerError> {
        bounded(self.timeout, async {
            let mut conn = self.conn().await?;
            let (fields, data): (HashMap<String, String>, Option<String>) =
                redis::pipe().hgetall(self.key(key)).get(self.data_key(key)).query_async(&mut conn).await.map_err(unavailable)?;
            Ok(to_record(fields, data))
        })
        .await
    }

    async fn note_replay(&self, key: &PaymentId, result: &str) -> Result<(), LedgerError> {
        bounded(self.timeout, async {
            let mut conn = self.conn().await?;
            let _: i64 = self.replay.key(self.key(key)).arg(result).invoke_async(&mut conn).await.map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn ping(&self) -> Result<(), LedgerError> {
        bounded(self.timeout, async {
            if self.conn.get().is_none() && self.home.get().is_none() {
                // Before the first notification: probe with a throwaway connection rather than
                // tie the shared connection's I/O task to the caller's (admin) runtime.
                let mut probe = self.client.get_multiplexed_async_connection().await.map_err(unavailable)?;
                let _: String = redis::cmd("PING").query_async(&mut probe).await.map_err(unavailable)?;
                return Ok(());
            }
            let mut conn = self.conn().await?;
            let _: String = redis::cmd("PING").query_async(&mut conn).await.map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    fn adopt_runtime(&self, handle: tokio::runtime::Handle) {
        let _ = self.home.set(handle);
    }
}

fn to_record(mut f: HashMap<String, String>, order_data: Option<String>) -> Option<OrderRecord> {
    let state = match f.get("state")?.as_str() {
        "done" => OrderState::Done,
        "in_flight" => OrderState::InFlight,
        _ => OrderState::None,
    };
    let num = |f: &HashMap<String, String>, k: &str| f.get(k).and_then(|v| v.parse::<i64>().ok());
    Some(OrderRecord {
        state,
        total_fee: f.get("total_fee").and_then(|v| v.parse().ok()),
        notify_mode: num(&f, "notify_mode").map(|m| m as u8),
        attempts: num(&f, "attempts").unwrap_or(0) as u64,
        first_seen_ms: num(&f, "first_seen"),
        done_at_ms: num(&f, "done_at"),
        replays: num(&f, "replays").unwrap_or(0) as u64,
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
        super::super::contract::run(Arc::new(ledger)).await;
    }

    /// The key layout operators read with redis-cli, and the two lifetimes.
    #[tokio::test]
    async fn keys_are_readable_and_the_marker_outlives_the_data() {
        let prefix = format!("payhook-test:{}:", crate::keys::random_hex(6));
        let retention = Retention { done_ttl: Duration::from_secs(3600), dedupe_horizon: Duration::from_secs(400 * 86400) };
        let ledger = RedisLedger::new(&test_url(), &prefix, retention, Duration::from_secs(2)).unwrap();
        let id = PaymentId::new("wechat", "1230000109", "o-1");
        let req = ClaimRequest { order_type: "goods", total_fee: 5, lease_for: Duration::from_secs(5), mode: NotifyMode::Notification };
        let Claim::Owned(lease) = ledger.claim(&id, req).await.unwrap() else { panic!() };
        assert!(ledger.complete(&id, &lease, "{}").await.unwrap());
        let mut conn = ledger.client.get_multiplexed_async_connection().await.unwrap();
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
        let req = ClaimRequest { order_type: "goods", total_fee: 1, lease_for: Duration::from_secs(5), mode: NotifyMode::Notification };
        assert!(ledger.claim(&PaymentId::new("wechat", "m", "b"), req).await.is_err());
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
