//! The dedupe gate: a paid order reaches the backend once, however many times a provider
//! retries and however many payhook instances run.
//!
//! An order key (`{account}:{out_trade_no}`) moves through three states:
//! `none` → `in_flight` (one owner holds a lease: a random token with an expiry longer than the
//! backend timeout) → `done` (kept for `done_ttl`, with the order data for re-push). Completing
//! and releasing are compare-and-set on the token, so an owner whose lease expired and was
//! taken over cannot overwrite the new owner's outcome. A failed forward releases the lease
//! back to `none`, so the provider's next retry forwards again.

pub mod embedded;
pub mod redis;

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::order::NotifyMode;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger unavailable: {0}")]
    Unavailable(String),
    #[error("ledger call timed out")]
    Timeout,
}

impl LedgerError {
    pub fn reason(&self) -> &'static str {
        match self {
            LedgerError::Unavailable(_) => "unavailable",
            LedgerError::Timeout => "timeout",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderState {
    None,
    InFlight,
    Done,
}

/// What the ledger knows of one order; never holds a key or a lease token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRecord {
    pub state: OrderState,
    pub notify_mode: Option<u8>,
    pub attempts: u64,
    pub last_failure: Option<String>,
    pub first_seen_ms: Option<i64>,
    pub done_at_ms: Option<i64>,
    pub replays: u64,
    pub last_replay: Option<String>,
    /// The normalised order data of a done order (vk's re-push sends it again).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_data: Option<String>,
}

/// Proof of ownership of an in-flight order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub token: String,
}

impl Lease {
    pub fn new() -> Self {
        Lease { token: crate::keys::random_hex(16) }
    }
}

impl Default for Lease {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This caller owns the order until the lease expires: forward it.
    Owned(Lease),
    /// Already delivered: acknowledge, forward nothing.
    Done,
    /// Someone else holds a live lease.
    InFlight,
}

#[async_trait]
pub trait Ledger: Send + Sync {
    async fn claim(&self, key: &str, lease_for: Duration, mode: NotifyMode) -> Result<Claim, LedgerError>;
    /// Marks the order done if `lease` still owns it; false when it no longer does.
    async fn complete(&self, key: &str, lease: &Lease, order_data: &str) -> Result<bool, LedgerError>;
    /// Gives the order back (state `none`) after a failed forward, recording why.
    async fn release(&self, key: &str, lease: &Lease, reason: &str) -> Result<bool, LedgerError>;
    async fn record(&self, key: &str) -> Result<Option<OrderRecord>, LedgerError>;
    /// Counts a re-push of a done order and its result.
    async fn note_replay(&self, key: &str, result: &str) -> Result<(), LedgerError>;
    async fn ping(&self) -> Result<(), LedgerError>;
}

/// Bounds a ledger call: a hung store must become a fast, explicit failure.
pub(crate) async fn bounded<T>(limit: Duration, fut: impl Future<Output = Result<T, LedgerError>>) -> Result<T, LedgerError> {
    tokio::time::timeout(limit, fut).await.unwrap_or(Err(LedgerError::Timeout))
}

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The one contract both backends must keep; each backend's tests call it.
#[cfg(test)]
pub(crate) mod contract {
    use super::*;
    use std::sync::Arc;

    pub async fn run(ledger: Arc<dyn Ledger>) {
        let lease = Duration::from_secs(10);
        let k = "acct:order-1";
        assert_eq!(ledger.record(k).await.unwrap(), None);
        let Claim::Owned(first) = ledger.claim(k, lease, NotifyMode::Notification).await.unwrap() else { panic!("new order must be owned") };
        assert_eq!(ledger.claim(k, lease, NotifyMode::Notification).await.unwrap(), Claim::InFlight);
        assert_eq!(ledger.record(k).await.unwrap().unwrap().state, OrderState::InFlight);

        // A failed forward gives the order back with the reason, and the next claim owns it.
        assert!(ledger.release(k, &first, "backend_failed").await.unwrap());
        let rec = ledger.record(k).await.unwrap().unwrap();
        assert_eq!((rec.state, rec.attempts, rec.last_failure.as_deref()), (OrderState::None, 1, Some("backend_failed")));
        let Claim::Owned(second) = ledger.claim(k, lease, NotifyMode::Active).await.unwrap() else { panic!("released order must be claimable") };

        // A stale owner can neither complete nor release.
        assert!(!ledger.complete(k, &first, "{}").await.unwrap());
        assert!(!ledger.release(k, &first, "late").await.unwrap());
        assert!(ledger.complete(k, &second, r#"{"out_trade_no":"order-1"}"#).await.unwrap());
        assert_eq!(ledger.claim(k, lease, NotifyMode::Notification).await.unwrap(), Claim::Done);
        let rec = ledger.record(k).await.unwrap().unwrap();
        assert_eq!(rec.state, OrderState::Done);
        assert_eq!(rec.attempts, 2);
        assert_eq!(rec.notify_mode, Some(0));
        assert_eq!(rec.order_data.as_deref(), Some(r#"{"out_trade_no":"order-1"}"#));
        assert!(rec.first_seen_ms.unwrap() <= rec.done_at_ms.unwrap());

        ledger.note_replay(k, "ok").await.unwrap();
        let rec = ledger.record(k).await.unwrap().unwrap();
        assert_eq!((rec.replays, rec.last_replay.as_deref()), (1, Some("ok")));

        // An expired lease can be taken over; the old owner then loses its compare-and-set.
        let k2 = "acct:order-2";
        let Claim::Owned(old) = ledger.claim(k2, Duration::from_millis(100), NotifyMode::Notification).await.unwrap() else { panic!() };
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Claim::Owned(new) = ledger.claim(k2, lease, NotifyMode::Notification).await.unwrap() else { panic!("expired lease must be claimable") };
        assert!(!ledger.complete(k2, &old, "{}").await.unwrap());
        assert!(ledger.complete(k2, &new, "{}").await.unwrap());

        // Many concurrent claims: exactly one owner.
        let k3 = "acct:order-3";
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let l = ledger.clone();
            tasks.push(tokio::spawn(async move { l.claim(k3, lease, NotifyMode::Notification).await.unwrap() }));
        }
        let mut owned = 0;
        for t in tasks {
            if matches!(t.await.unwrap(), Claim::Owned(_)) {
                owned += 1;
            }
        }
        assert_eq!(owned, 1);
        ledger.ping().await.unwrap();
    }
}
