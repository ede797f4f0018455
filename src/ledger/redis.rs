//! The production ledger: Redis, shared by every payhook instance.
//!
//! Each state change is one Lua script, so claim / complete / release are atomic across
//! instances, and time comes from Redis (`TIME`) so instances' clocks do not matter.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use tokio::sync::OnceCell;

use super::{bounded, Claim, Lease, Ledger, LedgerError, OrderRecord, OrderState};
use crate::order::NotifyMode;

const NOW: &str = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n";

const CLAIM: &str = r#"
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'done' then return 'done' end
if state == 'in_flight' then
  local lease_until = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0')
  if lease_until > now then return 'in_flight' end
end
redis.call('HSET', KEYS[1], 'state', 'in_flight', 'token', ARGV[1], 'lease_until', now + tonumber(ARGV[2]), 'notify_mode', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSETNX', KEYS[1], 'first_seen', now)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 'owned'
"#;

const COMPLETE: &str = r#"
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'done', 'done_at', now, 'order_data', ARGV[2])
redis.call('HDEL', KEYS[1], 'token', 'lease_until')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
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
    prefix: String,
    done_ttl_ms: u64,
    timeout: Duration,
    claim: Script,
    complete: Script,
    release: Script,
    replay: Script,
}

impl RedisLedger {
    pub fn new(url: &str, prefix: &str, done_ttl: Duration, timeout: Duration) -> Result<Self, LedgerError> {
        let client = redis::Client::open(url).map_err(|e| LedgerError::Unavailable(e.to_string()))?;
        let script = |body: &str| Script::new(&format!("{NOW}{body}"));
        Ok(RedisLedger {
            client,
            conn: OnceCell::new(),
            prefix: prefix.to_string(),
            done_ttl_ms: done_ttl.as_millis() as u64,
            timeout,
            claim: script(CLAIM),
            complete: script(COMPLETE),
            release: script(RELEASE),
            replay: Script::new(REPLAY),
        })
    }

    /// Connects on first use: pingora creates its runtimes only when the server starts, and a
    /// Redis that is down at start-up must not keep payhook from starting (it answers failure).
    async fn conn(&self) -> Result<ConnectionManager, LedgerError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let conn = self
            .conn
            .get_or_try_init(|| async {
                ConnectionManager::new_with_config(self.client.clone(), config)
                    .await
                    .map_err(|e| LedgerError::Unavailable(e.to_string()))
            })
            .await?;
        Ok(conn.clone())
    }

    fn key(&self, key: &str) -> String {
        format!("{}order:{key}", self.prefix)
    }
}

fn unavailable(e: redis::RedisError) -> LedgerError {
    LedgerError::Unavailable(e.to_string())
}

#[async_trait]
impl Ledger for RedisLedger {
    async fn claim(&self, key: &str, lease_for: Duration, mode: NotifyMode) -> Result<Claim, LedgerError> {
        bounded(self.timeout, async {
            let mut conn = self.conn().await?;
            let lease = Lease::new();
            let result: String = self
                .claim
                .key(self.key(key))
                .arg(&lease.token)
                .arg(lease_for.as_millis() as u64)
                .arg(self.done_ttl_ms)
                .arg(mode as u8)
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            Ok(match result.as_str() {
                "owned" => Claim::Owned(lease),
                "done" => Claim::Done,
                _ => Claim::InFlight,
            })
        })
        .await
    }

    async fn complete(&self, key: &str, lease: &Lease, order_data: &str) -> Result<bool, LedgerError> {
        bounded(self.timeout, async {
            let mut conn = self.conn().await?;
            let n: i64 = self
                .complete
                .key(self.key(key))
                .arg(&lease.token)
                .arg(order_data)
                .arg(self.done_ttl_ms)
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            Ok(n == 1)
        })
        .await
    }

    async fn release(&self, key: &str, lease: &Lease, reason: &str) -> Result<bool, LedgerError> {
        bounded(self.timeout, async {
            let mut conn = self.conn().await?;
            let n: i64 =
                self.release.key(self.key(key)).arg(&lease.token).arg(reason).invoke_async(&mut conn).await.map_err(unavailable)?;
            Ok(n == 1)
        })
        .await
    }

    async fn record(&self, key: &str) -> Result<Option<OrderRecord>, LedgerError> {
        bounded(self.timeout, async {
            let mut conn = self.conn().await?;
            let fields: HashMap<String, String> = conn.hgetall(self.key(key)).await.map_err(unavailable)?;
            Ok(to_record(fields))
        })
        .await
    }

    async fn note_replay(&self, key: &str, result: &str) -> Result<(), LedgerError> {
        bounded(self.timeout, async {
            let mut conn = self.conn().await?;
            let _: i64 = self.replay.key(self.key(key)).arg(result).invoke_async(&mut conn).await.map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn ping(&self) -> Result<(), LedgerError> {
        bounded(self.timeout, async {
            let mut conn = self.conn().await?;
            let _: String = redis::cmd("PING").query_async(&mut conn).await.map_err(unavailable)?;
            Ok(())
        })
        .await
    }
}

fn to_record(mut f: HashMap<String, String>) -> Option<OrderRecord> {
    let state = match f.get("state")?.as_str() {
        "done" => OrderState::Done,
        "in_flight" => OrderState::InFlight,
        _ => OrderState::None,
    };
    let num = |f: &HashMap<String, String>, k: &str| f.get(k).and_then(|v| v.parse::<i64>().ok());
    Some(OrderRecord {
        state,
        notify_mode: num(&f, "notify_mode").map(|m| m as u8),
        attempts: num(&f, "attempts").unwrap_or(0) as u64,
        first_seen_ms: num(&f, "first_seen"),
        done_at_ms: num(&f, "done_at"),
        replays: num(&f, "replays").unwrap_or(0) as u64,
        last_failure: f.remove("last_failure"),
        last_replay: f.remove("last_replay"),
        order_data: f.remove("order_data"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Runs against the machine's Redis (`PAYHOOK_TEST_REDIS`, default 127.0.0.1:6379).
    #[tokio::test]
    async fn keeps_the_ledger_contract() {
        let url = std::env::var("PAYHOOK_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
        let prefix = format!("payhook-test:{}:", crate::keys::random_hex(6));
        let ledger = RedisLedger::new(&url, &prefix, Duration::from_secs(60), Duration::from_secs(2)).unwrap();
        super::super::contract::run(Arc::new(ledger)).await;
    }

    #[tokio::test]
    async fn unreachable_redis_fails_fast() {
        let ledger = RedisLedger::new("redis://127.0.0.1:1/0", "t:", Duration::from_secs(60), Duration::from_millis(300)).unwrap();
        let started = std::time::Instant::now();
        assert!(ledger.claim("a:b", Duration::from_secs(5), NotifyMode::Notification).await.is_err());
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
