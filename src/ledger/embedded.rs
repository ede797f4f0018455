//! The single-node ledger: an embedded redb file, so dedupe survives restarts without Redis.
//!
//! redb is synchronous and fsyncs on commit, so every call runs on tokio's blocking pool; its
//! single-writer transactions make each compare-and-set atomic.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{bounded, now_ms, Claim, Lease, Ledger, LedgerError, OrderRecord, OrderState};
use crate::order::NotifyMode;

const ORDERS: TableDefinition<&str, &[u8]> = TableDefinition::new("orders");
/// Expired records are swept once per this many claims.
const SWEEP_EVERY: u64 = 1024;

#[derive(Serialize, Deserialize)]
struct Stored {
    record: OrderRecord,
    token: Option<String>,
    lease_until_ms: i64,
    expires_at_ms: i64,
}

pub struct EmbeddedLedger {
    db: Arc<Database>,
    done_ttl_ms: i64,
    timeout: Duration,
    claims: AtomicU64,
}

fn err(e: impl std::fmt::Display) -> LedgerError {
    LedgerError::Unavailable(e.to_string())
}

impl EmbeddedLedger {
    pub fn open(path: &Path, done_ttl: Duration, timeout: Duration) -> Result<Self, LedgerError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(err)?;
        }
        let db = Database::create(path).map_err(err)?;
        let tx = db.begin_write().map_err(err)?;
        tx.open_table(ORDERS).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(EmbeddedLedger { db: Arc::new(db), done_ttl_ms: done_ttl.as_millis() as i64, timeout, claims: AtomicU64::new(0) })
    }

    /// Runs `change` on the live (unexpired) record of `key` inside one write transaction.
    async fn update<T: Send + 'static>(
        &self,
        key: &str,
        change: impl FnOnce(Option<Stored>, i64) -> (Option<Stored>, T) + Send + 'static,
    ) -> Result<T, LedgerError> {
        let db = self.db.clone();
        let key = key.to_string();
        bounded(self.timeout, async move {
            tokio::task::spawn_blocking(move || {
                let now = now_ms();
                let tx = db.begin_write().map_err(err)?;
                let out = {
                    let mut table = tx.open_table(ORDERS).map_err(err)?;
                    let current = table
                        .get(key.as_str())
                        .map_err(err)?
                        .and_then(|v| serde_json::from_slice::<Stored>(v.value()).ok())
                        .filter(|s| s.expires_at_ms > now);
                    let (next, out) = change(current, now);
                    if let Some(next) = next {
                        let bytes = serde_json::to_vec(&next).map_err(err)?;
                        table.insert(key.as_str(), bytes.as_slice()).map_err(err)?;
                    }
                    out
                };
                tx.commit().map_err(err)?;
                Ok(out)
            })
            .await
            .map_err(err)?
        })
        .await
    }

    fn sweep(&self) {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || -> Result<(), redb::Error> {
            let now = now_ms();
            let tx = db.begin_write()?;
            {
                let mut table = tx.open_table(ORDERS)?;
                table.retain(|_, v| serde_json::from_slice::<Stored>(v).map(|s| s.expires_at_ms > now).unwrap_or(false))?;
            }
            tx.commit()?;
            Ok(())
        });
    }
}

#[async_trait]
impl Ledger for EmbeddedLedger {
    async fn claim(&self, key: &str, lease_for: Duration, mode: NotifyMode) -> Result<Claim, LedgerError> {
        if self.claims.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.sweep();
        }
        let ttl = self.done_ttl_ms;
        let lease_ms = lease_for.as_millis() as i64;
        self.update(key, move |current, now| {
            let mut stored = match current {
                Some(s) if s.record.state == OrderState::Done => return (None, Claim::Done),
                Some(s) if s.record.state == OrderState::InFlight && s.lease_until_ms > now => return (None, Claim::InFlight),
                Some(s) => s,
                None => Stored {
                    record: OrderRecord {
                        state: OrderState::None,
                        notify_mode: None,
                        attempts: 0,
                        last_failure: None,
                        first_seen_ms: Some(now),
                        done_at_ms: None,
                        replays: 0,
                        last_replay: None,
                        order_data: None,
                    },
                    token: None,
                    lease_until_ms: 0,
                    expires_at_ms: 0,
                },
            };
            let lease = Lease::new();
            stored.record.state = OrderState::InFlight;
            stored.record.attempts += 1;
            stored.record.notify_mode = Some(mode as u8);
            stored.token = Some(lease.token.clone());
            stored.lease_until_ms = now + lease_ms;
            stored.expires_at_ms = now + ttl;
            (Some(stored), Claim::Owned(lease))
        })
        .await
    }

    async fn complete(&self, key: &str, lease: &Lease, order_data: &str) -> Result<bool, LedgerError> {
        let (token, data, ttl) = (lease.token.clone(), order_data.to_string(), self.done_ttl_ms);
        self.update(key, move |current, now| match current {
            Some(mut s) if s.token.as_deref() == Some(token.as_str()) => {
                s.record.state = OrderState::Done;
                s.record.done_at_ms = Some(now);
                s.record.order_data = Some(data);
                s.token = None;
                s.expires_at_ms = now + ttl;
                (Some(s), true)
            }
            _ => (None, false),
        })
        .await
    }

    async fn release(&self, key: &str, lease: &Lease, reason: &str) -> Result<bool, LedgerError> {
        let (token, reason) = (lease.token.clone(), reason.to_string());
        self.update(key, move |current, _| match current {
            Some(mut s) if s.token.as_deref() == Some(token.as_str()) => {
                s.record.state = OrderState::None;
                s.record.last_failure = Some(reason);
                s.token = None;
                (Some(s), true)
            }
            _ => (None, false),
        })
        .await
    }

    async fn record(&self, key: &str) -> Result<Option<OrderRecord>, LedgerError> {
        self.update(key, |current, _| (None, current.map(|s| s.record))).await
    }

    async fn note_replay(&self, key: &str, result: &str) -> Result<(), LedgerError> {
        let result = result.to_string();
        self.update(key, move |current, _| match current {
            Some(mut s) => {
                s.record.replays += 1;
                s.record.last_replay = Some(result);
                (Some(s), ())
            }
            None => (None, ()),
        })
        .await
    }

    async fn ping(&self) -> Result<(), LedgerError> {
        let db = self.db.clone();
        bounded(self.timeout, async move {
            tokio::task::spawn_blocking(move || db.begin_read().map(|_| ()).map_err(err)).await.map_err(err)?
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_the_ledger_contract() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = EmbeddedLedger::open(&dir.path().join("ledger.redb"), Duration::from_secs(60), Duration::from_secs(5)).unwrap();
        super::super::contract::run(Arc::new(ledger)).await;
    }

    #[tokio::test]
    async fn done_survives_a_restart_and_expires_after_done_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        {
            let l = EmbeddedLedger::open(&path, Duration::from_millis(300), Duration::from_secs(5)).unwrap();
            let Claim::Owned(lease) = l.claim("a:1", Duration::from_secs(5), NotifyMode::Notification).await.unwrap() else { panic!() };
            assert!(l.complete("a:1", &lease, "{}").await.unwrap());
        }
        let l = EmbeddedLedger::open(&path, Duration::from_millis(300), Duration::from_secs(5)).unwrap();
        assert_eq!(l.claim("a:1", Duration::from_secs(5), NotifyMode::Notification).await.unwrap(), Claim::Done);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(matches!(l.claim("a:1", Duration::from_secs(5), NotifyMode::Notification).await.unwrap(), Claim::Owned(_)));
    }
}
