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

    /// A key read back from an index.
    pub fn from_key(key: String) -> Self {
        PaymentId(key)
    }

    /// The `out_trade_no` part (it may itself hold `:`; family and merchant ids do not).
    pub fn out_trade_no(&self) -> &str {
        self.0.splitn(3, ':').nth(2).unwrap_or_default()
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
    /// A paid notification disagreed with the registration (or had none where one is
    /// required): held for an operator, never forwarded by itself.
    Quarantined,
    /// An operator dismissed a quarantined order: acknowledged, never forwarded.
    Dismissed,
    /// Registered, never paid, and past its expiry: the sweep stopped asking.
    Closed,
}

impl OrderState {
    pub fn as_str(&self) -> &'static str {
        match self {
            OrderState::None => "none",
            OrderState::InFlight => "in_flight",
            OrderState::Done => "done",
            OrderState::Quarantined => "quarantined",
            OrderState::Dismissed => "dismissed",
            OrderState::Closed => "closed",
        }
    }

    pub fn parse(text: &str) -> OrderState {
        match text {
            "in_flight" => OrderState::InFlight,
            "done" => OrderState::Done,
            "quarantined" => OrderState::Quarantined,
            "dismissed" => OrderState::Dismissed,
            "closed" => OrderState::Closed,
            _ => OrderState::None,
        }
    }
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
    /// Registered by the merchant's backend (`PUT /v1/orders/...`) before payment.
    #[serde(default)]
    pub registered: bool,
    /// The account the order was registered through (its order-query API is the sweep's).
    #[serde(default)]
    pub account: Option<String>,
    #[serde(default)]
    pub expires_at_ms: Option<i64>,
    /// The registration's `fields` (a JSON object), merged into the order data; dropped once done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<String>,
    /// Provider queries the sweep made for this order.
    #[serde(default)]
    pub checks: u64,
    #[serde(default)]
    pub quarantine: Option<QuarantineInfo>,
    /// The normalised order data of a done order (vk's re-push sends it again), within `done_ttl`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_data: Option<String>,
}

/// Why a paid order is held, and what the provider said against what was registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineInfo {
    pub reason: String,
    pub notified_type: Option<String>,
    pub notified_total_fee: u64,
    pub registered_type: Option<String>,
    pub registered_total_fee: Option<u64>,
    pub at_ms: i64,
    /// The order data as it would have been forwarded, for an operator's `resolve forward`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub order_data: String,
}

/// What `PUT /v1/orders/...` asks the ledger to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub account: String,
    pub order_type: String,
    pub total_fee: u64,
    pub expires_at_ms: i64,
    pub fields: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    Created,
    /// The same type, amount and fields were registered before.
    Same,
    /// Registered (or delivered) with another type or amount.
    Conflict,
}

/// The per-account indexes of the ledger, each ordered by a time in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Index {
    /// When the sweep queries a registered order next.
    Due,
    /// Registered and not yet delivered, closed or given up; by registration time.
    Pending,
    /// By quarantine time.
    Quarantined,
}

impl Index {
    pub fn name(&self) -> &'static str {
        match self {
            Index::Due => "due",
            Index::Pending => "pending",
            Index::Quarantined => "quarantined",
        }
    }
}

/// Proof of ownership of an in-flight order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub token: String,
}

impl Lease {
    pub fn new() -> Self {
        Lease { token: crate::keys::unique_hex(16) }
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
    /// The type the notification's URL (or the sync) names; `None`: the registered type.
    pub order_type: Option<&'a str>,
    pub total_fee: u64,
    pub lease_for: Duration,
    pub mode: NotifyMode,
    /// The account refuses payments that were never registered.
    pub require_registration: bool,
}

/// An owned claim: forward the order to `order_type`'s backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owned {
    pub lease: Lease,
    pub order_type: String,
    /// The registration's `fields`, to merge into the order data.
    pub fields: Option<String>,
    pub registered: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This caller owns the order until the lease expires: forward it.
    Owned(Owned),
    /// Already delivered: acknowledge, forward nothing.
    Done,
    /// Someone else holds a live lease.
    InFlight,
    /// The payment is bound to another type: never forward, never acknowledge.
    TypeMismatch { recorded: String },
    /// The payment disagrees with its registration (or has none where one is needed): the
    /// caller quarantines it. Nothing was written.
    Quarantine { reason: &'static str, registered_type: Option<String>, registered_total_fee: Option<u64> },
    /// Already quarantined: failure reply until an operator resolves it.
    Quarantined { reason: String },
    /// An operator dismissed it: acknowledge, never forward.
    Dismissed,
}

/// The reason labels of [`Claim::Quarantine`], as the claim scripts spell them.
pub fn quarantine_reason(text: &str) -> &'static str {
    match text {
        "amount_mismatch" => "amount_mismatch",
        "type_mismatch" => "type_mismatch",
        _ => "unregistered",
    }
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
    /// Registers an order before payment (type, amount, expiry, fields).
    async fn register(&self, key: &PaymentId, registration: &Registration) -> Result<Registered, LedgerError>;
    /// Holds a paid order that disagrees with its registration; false when the order is
    /// already done, in flight, quarantined or dismissed (nothing changed).
    async fn quarantine(&self, key: &PaymentId, info: &QuarantineInfo) -> Result<bool, LedgerError>;
    /// An operator's decision on a quarantined order: `Some(order data)` after `forward` (until
    /// the order is done, every claim skips the registration checks and owns it under
    /// `forward_as`, whatever type it names), `Some("")` after `dismiss`, `None` when the order
    /// is not quarantined.
    async fn resolve(&self, key: &PaymentId, forward_as: Option<&str>) -> Result<Option<String>, LedgerError>;
    /// The sweep gave up on a registered, unpaid order (state `closed`).
    async fn close(&self, key: &PaymentId) -> Result<bool, LedgerError>;
    /// Counts one provider query of the sweep; returns the count so far.
    async fn note_check(&self, key: &PaymentId) -> Result<u64, LedgerError>;
    /// Puts `key` in `index` of `account` at `score_ms` (moving it if it is there).
    async fn index_put(&self, index: Index, account: &str, key: &PaymentId, score_ms: i64) -> Result<(), LedgerError>;
    /// Puts `key` in `index` of `account` at `score_ms` unless it is there: it keeps its time.
    async fn index_add(&self, index: Index, account: &str, key: &PaymentId, score_ms: i64) -> Result<(), LedgerError>;
    async fn index_remove(&self, index: Index, account: &str, key: &PaymentId) -> Result<(), LedgerError>;
    /// Up to `limit` entries, newest (highest score) first, strictly after `after` when given.
    async fn index_page(&self, index: Index, account: &str, after: Option<(i64, String)>, limit: usize) -> Result<Vec<(i64, PaymentId)>, LedgerError>;
    /// (entries, lowest score) of an index.
    async fn index_stats(&self, index: Index, account: &str) -> Result<(u64, Option<i64>), LedgerError>;
    /// Atomically takes up to `limit` due entries (score ≤ now) and pushes each `hold` into the
    /// future, so one instance queries each per round and a crashed one's come back.
    async fn claim_due(&self, account: &str, limit: usize, hold: Duration) -> Result<Vec<PaymentId>, LedgerError>;
    /// One provider query for `account` within `per_second`, shared by every instance.
    async fn rate_slot(&self, account: &str, per_second: u32) -> Result<bool, LedgerError>;
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
        ClaimRequest { order_type: Some(order_type), total_fee: 1234, lease_for, mode, require_registration: false }
    }

    fn owned(claim: Claim) -> Owned {
        match claim {
            Claim::Owned(owned) => owned,
            other => panic!("expected an owned claim, got {other:?}"),
        }
    }

    pub async fn run(ledger: Arc<dyn Ledger>) {
        let lease = Duration::from_secs(10);
        let goods = req("goods", lease, NotifyMode::Notification);
        let k = &PaymentId::new("wechat", "m1", "order-1");
        assert_eq!(k.as_str(), "wechat:m1:order-1");
        assert_eq!(ledger.record(k).await.unwrap(), None);
        let first = owned(ledger.claim(k, goods).await.unwrap()).lease;
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
        let second = owned(ledger.claim(k, req("goods", lease, NotifyMode::Active)).await.unwrap()).lease;

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
        let old = owned(ledger.claim(k2, req("goods", Duration::from_millis(100), NotifyMode::Notification)).await.unwrap()).lease;
        tokio::time::sleep(Duration::from_millis(250)).await;
        let new = owned(ledger.claim(k2, goods).await.unwrap()).lease;
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

    /// Registration, quarantine, the sweep's indexes and rate slots. `account` must be unique
    /// to this run (indexes are per account).
    pub async fn run_registration(ledger: Arc<dyn Ledger>, account: &str) {
        let lease = Duration::from_secs(10);
        let now = now_ms();
        let reg = |order_type: &str, total_fee: u64| Registration {
            account: account.to_string(),
            order_type: order_type.to_string(),
            total_fee,
            expires_at_ms: now + 3_600_000,
            fields: Some(r#"{"user_id":"u001"}"#.to_string()),
        };
        let id = |n: &str| PaymentId::new("wechat", account, n);
        let claim = |order_type: Option<&'static str>, total_fee: u64| ClaimRequest {
            order_type,
            total_fee,
            lease_for: lease,
            mode: NotifyMode::Notification,
            require_registration: false,
        };

        // Idempotent registration; another type or amount conflicts.
        let r1 = id("r-1");
        assert_eq!(ledger.register(&r1, &reg("goods", 1234)).await.unwrap(), Registered::Created);
        assert_eq!(ledger.register(&r1, &reg("goods", 1234)).await.unwrap(), Registered::Same);
        assert_eq!(ledger.register(&r1, &reg("goods", 999)).await.unwrap(), Registered::Conflict);
        assert_eq!(ledger.register(&r1, &reg("vip", 1234)).await.unwrap(), Registered::Conflict);
        let rec = ledger.record(&r1).await.unwrap().unwrap();
        assert_eq!((rec.state, rec.registered, rec.order_type.as_deref(), rec.total_fee), (OrderState::None, true, Some("goods"), Some(1234)));
        assert_eq!((rec.account.as_deref(), rec.expires_at_ms, rec.fields.as_deref()), (Some(account), Some(now + 3_600_000), Some(r#"{"user_id":"u001"}"#)));

        // A paid order that disagrees is to be quarantined; nothing was written.
        let amount = ledger.claim(&r1, claim(Some("goods"), 1)).await.unwrap();
        assert_eq!(amount, Claim::Quarantine { reason: "amount_mismatch", registered_type: Some("goods".into()), registered_total_fee: Some(1234) });
        let kind = ledger.claim(&r1, claim(Some("vip"), 1234)).await.unwrap();
        assert_eq!(kind, Claim::Quarantine { reason: "type_mismatch", registered_type: Some("goods".into()), registered_total_fee: Some(1234) });
        assert_eq!(ledger.record(&r1).await.unwrap().unwrap().state, OrderState::None);

        // Agreeing (the type from the registration): owned, with the fields to merge.
        let o = owned(ledger.claim(&r1, claim(None, 1234)).await.unwrap());
        assert_eq!((o.order_type.as_str(), o.fields.as_deref(), o.registered), ("goods", Some(r#"{"user_id":"u001"}"#), true));
        assert!(ledger.complete(&r1, &o.lease, "{}").await.unwrap());
        let rec = ledger.record(&r1).await.unwrap().unwrap();
        assert_eq!((rec.state, rec.fields), (OrderState::Done, None), "fields are dropped once delivered");
        assert_eq!(ledger.register(&r1, &reg("vip", 1234)).await.unwrap(), Registered::Conflict, "done under another type");

        // Quarantine, then an operator forwards it through the gate.
        let r2 = id("r-2");
        ledger.register(&r2, &reg("goods", 1234)).await.unwrap();
        let info = QuarantineInfo {
            reason: "amount_mismatch".into(),
            notified_type: Some("goods".into()),
            notified_total_fee: 1,
            registered_type: Some("goods".into()),
            registered_total_fee: Some(1234),
            at_ms: now,
            order_data: r#"{"out_trade_no":"r-2"}"#.into(),
        };
        assert!(ledger.quarantine(&r2, &info).await.unwrap());
        assert!(!ledger.quarantine(&r2, &info).await.unwrap(), "quarantined once");
        assert_eq!(ledger.claim(&r2, claim(Some("goods"), 1)).await.unwrap(), Claim::Quarantined { reason: "amount_mismatch".into() });
        let rec = ledger.record(&r2).await.unwrap().unwrap();
        assert_eq!((rec.state, rec.quarantine.as_ref().map(|q| q.reason.as_str())), (OrderState::Quarantined, Some("amount_mismatch")));
        assert_eq!(rec.quarantine.unwrap(), info);
        assert_eq!(ledger.resolve(&r2, Some("goods")).await.unwrap().as_deref(), Some(r#"{"out_trade_no":"r-2"}"#));
        let o = owned(ledger.claim(&r2, claim(Some("goods"), 1)).await.unwrap());
        // The backend fails; the provider retries under the URL's type, which the operator did
        // not choose: the operator's type holds until the order is done.
        assert!(ledger.release(&r2, &o.lease, "backend_5xx").await.unwrap());
        let o = owned(ledger.claim(&r2, claim(Some("vip"), 1)).await.unwrap());
        assert_eq!(o.order_type, "goods");
        assert!(ledger.complete(&r2, &o.lease, "{}").await.unwrap());
        assert_eq!(ledger.record(&r2).await.unwrap().unwrap().order_type.as_deref(), Some("goods"));
        assert_eq!(ledger.resolve(&r2, Some("goods")).await.unwrap(), None, "only a quarantined order resolves");

        // Dismissed: acknowledged, never forwarded.
        let r3 = id("r-3");
        ledger.register(&r3, &reg("goods", 1234)).await.unwrap();
        assert!(ledger.quarantine(&r3, &info).await.unwrap());
        assert_eq!(ledger.resolve(&r3, None).await.unwrap().as_deref(), Some(""));
        assert_eq!(ledger.claim(&r3, claim(Some("goods"), 1234)).await.unwrap(), Claim::Dismissed);
        assert_eq!(ledger.record(&r3).await.unwrap().unwrap().state, OrderState::Dismissed);

        // Unregistered: fine by URL type, unless the URL names none or registration is required.
        let u = id("u-1");
        assert!(matches!(ledger.claim(&u, claim(None, 5)).await.unwrap(), Claim::Quarantine { reason: "unregistered", .. }));
        let strict = ClaimRequest { require_registration: true, ..claim(Some("goods"), 5) };
        assert!(matches!(ledger.claim(&u, strict).await.unwrap(), Claim::Quarantine { reason: "unregistered", .. }));
        assert!(!owned(ledger.claim(&u, claim(Some("goods"), 5)).await.unwrap()).registered);

        // Closed by the sweep; a payment that still arrives is delivered.
        let r4 = id("r-4");
        ledger.register(&r4, &reg("goods", 1234)).await.unwrap();
        assert_eq!((ledger.note_check(&r4).await.unwrap(), ledger.note_check(&r4).await.unwrap()), (1, 2));
        assert!(ledger.close(&r4).await.unwrap());
        assert_eq!(ledger.record(&r4).await.unwrap().unwrap().state, OrderState::Closed);
        assert!(matches!(ledger.claim(&r4, claim(None, 1234)).await.unwrap(), Claim::Owned(_)));

        // Indexes: due entries are taken once per round and come back after `hold`.
        ledger.index_put(Index::Due, account, &r1, now - 2000).await.unwrap();
        ledger.index_put(Index::Due, account, &r2, now - 1000).await.unwrap();
        ledger.index_put(Index::Due, account, &r3, now + 3_600_000).await.unwrap();
        let due = ledger.claim_due(account, 10, Duration::from_millis(400)).await.unwrap();
        assert_eq!(due, vec![r1.clone(), r2.clone()]);
        assert!(ledger.claim_due(account, 10, Duration::from_millis(400)).await.unwrap().is_empty());
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(ledger.claim_due(account, 1, Duration::from_secs(60)).await.unwrap().len(), 1, "limit");
        assert_eq!(ledger.index_stats(Index::Due, account).await.unwrap().0, 3);
        ledger.index_remove(Index::Due, account, &r3).await.unwrap();
        assert_eq!(ledger.index_stats(Index::Due, account).await.unwrap().0, 2);

        for (n, key) in [&r1, &r2, &r3, &r4].into_iter().enumerate() {
            ledger.index_put(Index::Pending, account, key, 1000 + n as i64).await.unwrap();
        }
        ledger.index_put(Index::Pending, account, &r4, 1000).await.unwrap();
        assert_eq!(ledger.index_stats(Index::Pending, account).await.unwrap(), (4, Some(1000)));
        ledger.index_add(Index::Pending, account, &r4, 5000).await.unwrap();
        assert_eq!(ledger.index_stats(Index::Pending, account).await.unwrap(), (4, Some(1000)), "an entry keeps its time");
        let r5 = id("r-5");
        ledger.index_add(Index::Pending, account, &r5, 5000).await.unwrap();
        assert_eq!(ledger.index_page(Index::Pending, account, None, 1).await.unwrap(), vec![(5000, r5.clone())]);
        ledger.index_remove(Index::Pending, account, &r5).await.unwrap();
        let page = ledger.index_page(Index::Pending, account, None, 2).await.unwrap();
        assert_eq!(page, vec![(1002, r3.clone()), (1001, r2.clone())]);
        let rest = ledger.index_page(Index::Pending, account, Some((1001, r2.to_string())), 10).await.unwrap();
        let mut tied = vec![(1000, r1.clone()), (1000, r4.clone())];
        tied.sort_by(|a, b| b.1.as_str().cmp(a.1.as_str()));
        assert_eq!(rest, tied, "ties at one score are ordered by key, newest first, none lost");
        let after_tie = ledger.index_page(Index::Pending, account, Some((1000, tied[0].1.to_string())), 10).await.unwrap();
        assert_eq!(after_tie, vec![tied[1].clone()]);
        assert!(ledger.index_page(Index::Quarantined, account, None, 10).await.unwrap().is_empty());

        // Rate slots: a sliding second.
        let rate_key = format!("{account}-rate");
        for _ in 0..3 {
            assert!(ledger.rate_slot(&rate_key, 3).await.unwrap());
        }
        assert!(!ledger.rate_slot(&rate_key, 3).await.unwrap());
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(ledger.rate_slot(&rate_key, 3).await.unwrap());
    }
}
