//! The dedupe gate: a paid order reaches the backend once, however many times a provider
//! retries, however many payhook instances run, and whichever account of the merchant it
//! arrives through.
//!
//! A payment is keyed by its identity, [`PaymentId`]: provider family + merchant id +
//! `out_trade_no` (never the config's account name, which may be renamed or doubled). Its
//! record moves through three states: `none` → `in_flight` (one owner holds a lease: a random
//! token with an expiry longer than the backend timeout) → `done`. Completing and releasing
//! are compare-and-set on the token, so an owner whose lease expired and was taken over cannot
//! overwrite the new owner's outcome. A failed forward releases the lease back to `none`, so the
//! provider's next retry forwards again.
//!
//! The first claim binds the payment to its order `type`: a later claim under another type is
//! refused ([`Claim::TypeMismatch`]), so one payment can never reach two backends.
//!
//! Two horizons ([`Retention`]): the record itself (state, type, amount, times; no order data)
//! lives for `dedupe_horizon`, as long as a provider may speak about the order; the order data
//! kept for re-push lives for the shorter `done_ttl`.

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

/// Who was paid and for which order: the ledger key, readable as `family:merchant:out_trade_no`
/// (e.g. `wechat:1230000109:order-1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentId(String);

impl PaymentId {
    /// `family` is the provider family (`wechat` for v2 and v3 alike, `alipay`); `merchant` the
    /// merchant id the provider signs for (`mchid`, Alipay's `app_id`).
    pub fn new(family: &str, merchant: &str, out_trade_no: &str) -> Self {
        PaymentId(format!("{family}:{merchant}:{out_trade_no}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for PaymentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How long the ledger remembers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// How long a done order's data is kept for re-push.
    pub done_ttl: Duration,
    /// How long the record (the done marker) is kept: no payment is forwarded twice within it.
    pub dedupe_horizon: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderState {
    None,
    InFlight,
    Done,
}

/// What the ledger knows of one payment; never holds a key or a lease token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRecord {
    pub state: OrderState,
    /// The order type bound at the first claim.
    #[serde(rename = "type")]
    pub order_type: Option<String>,
    /// The amount (fen) of the first claim.
    pub total_fee: Option<u64>,
    pub notify_mode: Option<u8>,
    pub attempts: u64,
    pub last_failure: Option<String>,
    pub first_seen_ms: Option<i64>,
    pub done_at_ms: Option<i64>,
    pub replays: u64,
    pub last_replay: Option<String>,
    /// The normalised order data of a done order (vk's re-push sends it again), within `done_ttl`.
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

/// What a claim asks for.
#[derive(Debug, Clone, Copy)]
pub struct ClaimRequest<'a> {
    pub order_type: &'a str,
    pub total_fee: u64,
    pub lease_for: Duration,
    pub mode: NotifyMode,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This caller owns the order until the lease expires: forward it.
    Owned(Lease),
    /// Already delivered: acknowledge, forward nothing.
    Done,
    /// Someone else holds a live lease.
    InFlight,
    /// The payment is bound to another type: never forward, never acknowledge.
    TypeMismatch { recorded: String },
}

#[async_trait]
pub trait Ledger: Send + Sync {
    async fn claim(&self, key: &PaymentId, request: ClaimRequest<'_>) -> Result<Claim, LedgerError>;
    /// Marks the order done if `lease` still owns it; false when it no longer does.
    async fn complete(&self, key: &PaymentId, lease: &Lease, order_data: &str) -> Result<bool, LedgerError>;
    /// Gives the order back (state `none`, type kept) after a failed forward, recording why.
    async fn release(&self, key: &PaymentId, lease: &Lease, reason: &str) -> Result<bool, LedgerError>;
    async fn record(&self, key: &PaymentId) -> Result<Option<OrderRecord>, LedgerError>;
    /// Counts a re-push of a done order and its result.
    async fn note_replay(&self, key: &PaymentId, result: &str) -> Result<(), LedgerError>;
    async fn ping(&self) -> Result<(), LedgerError>;
    /// Called once from the notify runtime: a ledger with a connection driver task runs it there.
    fn adopt_runtime(&self, _handle: tokio::runtime::Handle) {}
    /// A graceful upgrade began (SIGQUIT): let the new process reach the store while this one
    /// settles its last notifications.
    fn hand_over(&self) {}
}

/// Bounds a ledger call: a hung store must become a fast, explicit failure.
pub(crate) async fn bounded<T>(limit: Duration, fut: impl Future<Output = Result<T, LedgerError>>) -> Result<T, LedgerError> {
    tokio::time::timeout(limit, fut).await.unwrap_or(Err(LedgerError::Timeout))
}

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The one contract both backends must keep; each backend's tests call it with a ledger built
/// with [`contract::RETENTION`].
#[cfg(test)]
pub(crate) mod contract {
    use super::*;
    use std::sync::Arc;

    pub const RETENTION: Retention =
        Retention { done_ttl: Duration::from_millis(1500), dedupe_horizon: Duration::from_secs(30 * 24 * 3600) };

    fn req(order_type: &str, lease_for: Duration, mode: NotifyMode) -> ClaimRequest<'_> {
        ClaimRequest { order_type, total_fee: 1234, lease_for, mode }
    }

    pub async fn run(ledger: Arc<dyn Ledger>) {
        let lease = Duration::from_secs(10);
        let goods = req("goods", lease, NotifyMode::Notification);
        let k = &PaymentId::new("wechat", "m1", "order-1");
        assert_eq!(k.as_str(), "wechat:m1:order-1");
        assert_eq!(ledger.record(k).await.unwrap(), None);
        let Claim::Owned(first) = ledger.claim(k, goods).await.unwrap() else { panic!("new order must be owned") };
        assert_eq!(ledger.claim(k, goods).await.unwrap(), Claim::InFlight);
        let rec = ledger.record(k).await.unwrap().unwrap();
        assert_eq!((rec.state, rec.order_type.as_deref(), rec.total_fee), (OrderState::InFlight, Some("goods"), Some(1234)));
        // Another type never meets the lease, the done state or the released state.
        let vip = req("vip", lease, NotifyMode::Active);
        assert_eq!(ledger.claim(k, vip).await.unwrap(), Claim::TypeMismatch { recorded: "goods".into() });

        // A failed forward gives the order back with the reason (type kept), and the next claim owns it.
        assert!(ledger.release(k, &first, "backend_failed").await.unwrap());
        let rec = ledger.record(k).await.unwrap().unwrap();
        assert_eq!((rec.state, rec.attempts, rec.last_failure.as_deref()), (OrderState::None, 1, Some("backend_failed")));
        assert_eq!(ledger.claim(k, vip).await.unwrap(), Claim::TypeMismatch { recorded: "goods".into() });
        let Claim::Owned(second) = ledger.claim(k, req("goods", lease, NotifyMode::Active)).await.unwrap() else {
            panic!("released order must be claimable")
        };

        // A stale owner can neither complete nor release.
        assert!(!ledger.complete(k, &first, "{}").await.unwrap());
        assert!(!ledger.release(k, &first, "late").await.unwrap());
        assert!(ledger.complete(k, &second, r#"{"out_trade_no":"order-1"}"#).await.unwrap());
        assert_eq!(ledger.claim(k, goods).await.unwrap(), Claim::Done);
        assert_eq!(ledger.claim(k, vip).await.unwrap(), Claim::TypeMismatch { recorded: "goods".into() });
        let rec = ledger.record(k).await.unwrap().unwrap();
        assert_eq!(rec.state, OrderState::Done);
        assert_eq!(rec.attempts, 2);
        assert_eq!(rec.notify_mode, Some(0));
        assert_eq!(rec.order_data.as_deref(), Some(r#"{"out_trade_no":"order-1"}"#));
        assert!(rec.first_seen_ms.unwrap() <= rec.done_at_ms.unwrap());

        ledger.note_replay(k, "ok").await.unwrap();
        let rec = ledger.record(k).await.unwrap().unwrap();
        assert_eq!((rec.replays, rec.last_replay.as_deref()), (1, Some("ok")));

        // One merchant, two configured accounts: the identity is the same key, so one gate.
        assert_eq!(&PaymentId::new("wechat", "m1", "order-1"), k);
        assert_eq!(ledger.claim(&PaymentId::new("wechat", "m1", "order-1"), goods).await.unwrap(), Claim::Done);
        assert!(matches!(ledger.claim(&PaymentId::new("alipay", "m1", "order-1"), goods).await.unwrap(), Claim::Owned(_)));

        // An expired lease can be taken over; the old owner then loses its compare-and-set.
        let k2 = &PaymentId::new("wechat", "m1", "order-2");
        let Claim::Owned(old) = ledger.claim(k2, req("goods", Duration::from_millis(100), NotifyMode::Notification)).await.unwrap() else {
            panic!()
        };
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Claim::Owned(new) = ledger.claim(k2, goods).await.unwrap() else { panic!("expired lease must be claimable") };
        assert!(!ledger.complete(k2, &old, "{}").await.unwrap());
        assert!(ledger.complete(k2, &new, "{}").await.unwrap());

        // Many concurrent claims: exactly one owner.
        let k3 = PaymentId::new("wechat", "m1", "order-3");
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (l, k3) = (ledger.clone(), k3.clone());
            tasks.push(tokio::spawn(async move { l.claim(&k3, req("goods", lease, NotifyMode::Notification)).await.unwrap() }));
        }
        let mut owned = 0;
        for t in tasks {
            if matches!(t.await.unwrap(), Claim::Owned(_)) {
                owned += 1;
            }
        }
        assert_eq!(owned, 1);
        ledger.ping().await.unwrap();

        // Past done_ttl the order data is gone, the done marker is not.
        tokio::time::sleep(RETENTION.done_ttl + Duration::from_millis(300)).await;
        let rec = ledger.record(k).await.unwrap().unwrap();
        assert_eq!((rec.state, rec.order_type.as_deref(), rec.order_data), (OrderState::Done, Some("goods"), None));
        assert_eq!(ledger.claim(k, goods).await.unwrap(), Claim::Done);
        assert_eq!(ledger.claim(k, vip).await.unwrap(), Claim::TypeMismatch { recorded: "goods".into() });
    }
}
