//! The active trigger and re-push (vk-uni-pay's "主动执行回调函数" and "重新推送"):
//! ask the provider about a late or lost notification and run the same delivery through the
//! same dedupe gate; send a done order to its backend again when the backend asks for it.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::Account;
use crate::flow::{Delivery, Gateway, Source};
use crate::forward::ForwardError;
use crate::ledger::{LedgerError, OrderRecord, OrderState};
use crate::metrics;
use crate::provider::{ProviderError, QueryOutcome};

/// How long a sync waits for a notification in flight by default, and at most (vk: 0.5 s, 40 s).
pub const DEFAULT_AWAIT: Duration = Duration::from_millis(500);
pub const MAX_AWAIT: Duration = Duration::from_secs(40);
/// Bound on one provider order query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a waiting sync looks at the ledger.
const AWAIT_POLL: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum ActiveError {
    #[error("unknown account")]
    UnknownAccount,
    #[error("unknown type")]
    UnknownType,
    #[error("this account has no order-query API configured")]
    QueryUnsupported,
    #[error("provider query failed: {0}")]
    Query(&'static str),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("order is not done; nothing to re-push")]
    NotDone,
    #[error("the payment is bound to type {recorded}")]
    TypeMismatch { recorded: String },
}

impl ActiveError {
    pub fn reason(&self) -> &'static str {
        match self {
            ActiveError::UnknownAccount => "unknown_account",
            ActiveError::UnknownType => "unknown_type",
            ActiveError::QueryUnsupported => "query_unsupported",
            ActiveError::Query(r) => r,
            ActiveError::Ledger(_) => "ledger_unavailable",
            ActiveError::NotDone => "not_done",
            ActiveError::TypeMismatch { .. } => "type_mismatch",
        }
    }
}

/// The answer to a sync, in vk's vocabulary (`paid` ≈ orderPaid, `user_order_success`).
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct SyncReport {
    pub paid: bool,
    pub state: OrderState,
    pub forwarded: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_order_success: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trade_state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

impl SyncReport {
    fn done(forwarded: bool) -> Self {
        SyncReport { paid: true, state: OrderState::Done, forwarded, user_order_success: Some(true), trade_state: None, reason: None }
    }

    /// The `result` label of `payhook_sync_total`.
    pub fn label(&self) -> &'static str {
        if self.reason == Some("stale") {
            return "stale";
        }
        match (self.paid, self.state, self.forwarded) {
            (false, _, _) => "not_paid",
            (true, OrderState::Done, true) => "forwarded",
            (true, OrderState::Done, false) => "already_done",
            (true, OrderState::InFlight, _) => "in_flight",
            (true, OrderState::Quarantined, _) => "quarantined",
            (true, OrderState::Dismissed, _) => "dismissed",
            (true, OrderState::None | OrderState::Closed, _) => "backend_failed",
        }
    }
}

/// The answer to a re-push.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ReplayReport {
    pub user_order_success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

impl Gateway {
    /// Makes sure a paid order has reached its backend: ledger first, then a short wait for a
    /// notification in flight, then the provider's order-query API and the same delivery path.
    /// `order_type` may be left out for a registered order.
    pub async fn sync(&self, account: &str, out_trade_no: &str, order_type: Option<&str>, await_notify: Duration) -> Result<SyncReport, ActiveError> {
        let routing = self.routing();
        let acct = routing.accounts.get(account).ok_or(ActiveError::UnknownAccount)?;
        if order_type.is_some_and(|t| !routing.routes.contains_key(t)) {
            return Err(ActiveError::UnknownType);
        }
        let key = acct.payment_id(out_trade_no);
        let waited_until = tokio::time::Instant::now() + await_notify.min(MAX_AWAIT);
        loop {
            match self.ledger().record(&key).await? {
                // A claim bound an unregistered payment to its type; a registered one is checked
                // (and quarantined when it disagrees) once the provider says it is paid.
                Some(OrderRecord { order_type: Some(recorded), registered: false, .. }) if order_type.is_some_and(|t| t != recorded) => {
                    self.type_conflict(acct, &key, out_trade_no, order_type.unwrap_or("-"), &recorded);
                    return Err(ActiveError::TypeMismatch { recorded });
                }
                Some(OrderRecord { state: OrderState::Done, .. }) => return Ok(SyncReport::done(false)),
                Some(OrderRecord { registered: false, .. }) | None if order_type.is_none() => return Err(ActiveError::UnknownType),
                _ => {}
            }
            if tokio::time::Instant::now() + AWAIT_POLL > waited_until {
                break;
            }
            tokio::time::sleep(AWAIT_POLL).await;
        }

        let paid = match self.query_order(acct, out_trade_no).await? {
            QueryOutcome::NotPaid { trade_state } => {
                return Ok(SyncReport {
                    paid: false,
                    state: OrderState::None,
                    forwarded: false,
                    user_order_success: None,
                    trade_state: Some(trade_state),
                    reason: None,
                })
            }
            QueryOutcome::Paid(paid) => paid,
        };
        // The forward plus a second to settle; without a type, the claim's lease (the longest
        // route's), never past it: settling past it could race another instance's claim.
        let budget = order_type.and_then(|t| routing.routes.get(t)).map_or(routing.lease_for(None), |r| r.timeout + Duration::from_secs(1));
        let deadline = tokio::time::Instant::now() + budget;
        let not_done = |state, reason| SyncReport { paid: true, state, forwarded: false, user_order_success: None, trade_state: None, reason: Some(reason) };
        Ok(match self.deliver_once(acct, order_type, paid, Source::Sync, deadline).await {
            Delivery::Forwarded => SyncReport::done(true),
            Delivery::TypeMismatch { recorded } => return Err(ActiveError::TypeMismatch { recorded }),
            Delivery::Stale => not_done(OrderState::None, "stale"),
            Delivery::Quarantined(reason) => not_done(OrderState::Quarantined, reason),
            Delivery::Dismissed => not_done(OrderState::Dismissed, "dismissed"),
            Delivery::Duplicate | Delivery::InFlight { settled: true } => SyncReport::done(false),
            Delivery::InFlight { settled: false } => not_done(OrderState::InFlight, "in_flight"),
            Delivery::BackendFailed(reason) => SyncReport {
                paid: true,
                state: OrderState::None,
                forwarded: true,
                user_order_success: Some(false),
                trade_state: None,
                reason: Some(reason),
            },
            Delivery::LedgerUnavailable => return Err(ActiveError::Ledger(LedgerError::Unavailable("during delivery".into()))),
        })
    }

    /// Asks the provider about `out_trade_no` with the account's signed order query and
    /// verifies the answer (sync and the sweep).
    pub async fn query_order(&self, acct: &Account, out_trade_no: &str) -> Result<QueryOutcome, ActiveError> {
        let account = acct.name.as_str();
        let request = acct.provider.order_query(out_trade_no, chrono::Utc::now().timestamp()).ok_or(ActiveError::QueryUnsupported)?;
        let started = Instant::now();
        let header_refs: Vec<(&str, &str)> = request.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let reply = self
            .forwarder()
            .query(request.endpoint, request.method, &request.path, &header_refs, request.body.clone(), QUERY_TIMEOUT)
            .await;
        metrics::PROVIDER_QUERY_DURATION.with_label_values(&[account]).observe(started.elapsed().as_secs_f64());
        let reply = reply.map_err(|e: ForwardError| {
            tracing::warn!(account, out_trade_no, error = %e, "provider order query failed");
            ActiveError::Query(match e {
                ForwardError::Timeout => "query_timeout",
                _ => "query_failed",
            })
        })?;
        acct.provider.parse_order_query(out_trade_no, &reply, chrono::Utc::now().timestamp()).map_err(|e| {
            if let ProviderError::Throttled = e {
                tracing::warn!(account, out_trade_no, "provider throttled the order query");
                return ActiveError::Query("query_throttled");
            }
            tracing::warn!(account, out_trade_no, error = %e, "provider order query answer rejected");
            metrics::VERIFY_FAILURES.with_label_values(&[account, e.reason()]).inc();
            ActiveError::Query("query_unverified")
        })
    }

    /// Sends the stored order data of a done order to its backend again (vk's 重新推送).
    pub async fn replay(&self, account: &str, out_trade_no: &str) -> Result<ReplayReport, ActiveError> {
        let routing = self.routing();
        let acct = routing.accounts.get(account).ok_or(ActiveError::UnknownAccount)?;
        let key = acct.payment_id(out_trade_no);
        let record = self.ledger().record(&key).await?.filter(|r| r.state == OrderState::Done).ok_or(ActiveError::NotDone)?;
        let stored = record.order_data.ok_or(ActiveError::NotDone)?;
        // Always the type the ledger bound the payment to.
        let order_type = record.order_type.ok_or(ActiveError::NotDone)?;
        let route = routing.routes.get(&order_type).ok_or(ActiveError::UnknownType)?;
        let result = self.forward(route, route.envelope.seal(&stored), route.timeout).await;
        let label = match result {
            Ok(()) => "ok",
            Err(reason) => reason,
        };
        metrics::REPLAYS.with_label_values(&[&route.name, label]).inc();
        self.ledger().note_replay(&key, label).await?;
        Ok(ReplayReport { user_order_success: result.is_ok(), reason: result.err() })
    }
}
