//! The path of one paid order, as plain async Rust: verify → claim → envelope → forward → settle.
//!
//! Nothing here knows about pingora; the gateway glue hands in bytes and writes back the
//! [`Reply`] of the returned [`Decision`]. The same [`Gateway::deliver_once`] serves provider
//! notifications and active queries, so both meet at one dedupe gate.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::time::timeout_at;
use tracing::Instrument;

use crate::config::{Account, Config, Route};
use crate::forward::Forwarder;
use crate::ledger::{quarantine_reason, Claim, ClaimRequest, Index, Lease, Ledger, LedgerError, OrderState, PaymentId, QuarantineInfo};
use crate::metrics;
use crate::order::{order_json, registration_fields, HeldOrder, NotifyMode};
use crate::provider::{Answer, Inbound, PaidOrder, Reply, Verified};
use crate::secret::Secret;

/// A lease outlives the backend timeout by this much, so a slow but successful forward is
/// never taken over while its owner is still settling it.
pub const LEASE_MARGIN: Duration = Duration::from_secs(5);
/// Pause between attempts to settle an order while the ledger is briefly unreachable.
const SETTLE_RETRY: Duration = Duration::from_millis(100);
/// How often a request that met a live lease looks at the ledger again.
const IN_FLIGHT_POLL: Duration = Duration::from_millis(25);

/// Kept back from the reply budget for settling the ledger after the backend answers: one
/// bounded attempt and one retry. Derived from the ledger's own bound, so no setting can make
/// `complete` run past the budget (the provider would hear failure after the backend said 0).
pub fn settle_reserve(ledger_timeout: Duration) -> Duration {
    ledger_timeout * 2 + SETTLE_RETRY
}

/// How one notification ended: the `outcome` metric label and what the provider hears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Forwarded,
    Duplicate,
    /// Met another owner's lease and waited; `settled` is whether that owner delivered.
    InFlight { settled: bool },
    NotPaid,
    /// Paid longer ago than the dedupe horizon: acknowledged, never forwarded.
    Stale,
    /// The payment is bound to another type: failure reply, never forwarded.
    TypeMismatch,
    /// Held for an operator (amount or type against the registration, or unregistered).
    Quarantined(&'static str),
    /// Dismissed by an operator: acknowledged, never forwarded.
    Dismissed,
    Rejected(&'static str),
    BackendFailed(&'static str),
    LedgerUnavailable,
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::Duplicate => "duplicate",
            Outcome::InFlight { .. } => "in_flight",
            Outcome::NotPaid => "not_paid",
            Outcome::Stale => "stale",
            Outcome::TypeMismatch => "type_mismatch",
            Outcome::Quarantined(_) => "quarantined",
            Outcome::Dismissed => "dismissed",
            Outcome::Rejected(_) => "rejected",
            Outcome::BackendFailed(_) => "backend_failed",
            Outcome::LedgerUnavailable => "ledger_unavailable",
        }
    }

    pub fn answer(&self) -> Answer {
        match self {
            Outcome::Forwarded
            | Outcome::Duplicate
            | Outcome::NotPaid
            | Outcome::Stale
            | Outcome::Dismissed
            | Outcome::InFlight { settled: true } => Answer::Success,
            Outcome::Rejected(_) => Answer::Rejected,
            Outcome::InFlight { settled: false }
            | Outcome::TypeMismatch
            | Outcome::Quarantined(_)
            | Outcome::BackendFailed(_)
            | Outcome::LedgerUnavailable => Answer::Retry,
        }
    }

    /// The short reason a provider sees in a failure reply: a fixed label, nothing more.
    pub fn reason(&self) -> &'static str {
        match self {
            Outcome::Rejected(r) | Outcome::BackendFailed(r) | Outcome::Quarantined(r) => r,
            Outcome::InFlight { settled: false } => "in_flight",
            Outcome::LedgerUnavailable => "ledger_unavailable",
            Outcome::TypeMismatch => "type_mismatch",
            _ => "OK",
        }
    }
}

/// How [`Gateway::deliver_once`] ended: the part of an [`Outcome`] past verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Forwarded,
    Duplicate,
    Stale,
    TypeMismatch { recorded: String },
    Quarantined(&'static str),
    Dismissed,
    InFlight { settled: bool },
    BackendFailed(&'static str),
    LedgerUnavailable,
}

impl From<Delivery> for Outcome {
    fn from(d: Delivery) -> Outcome {
        match d {
            Delivery::Forwarded => Outcome::Forwarded,
            Delivery::Duplicate => Outcome::Duplicate,
            Delivery::Stale => Outcome::Stale,
            Delivery::TypeMismatch { .. } => Outcome::TypeMismatch,
            Delivery::Quarantined(reason) => Outcome::Quarantined(reason),
            Delivery::Dismissed => Outcome::Dismissed,
            Delivery::InFlight { settled } => Outcome::InFlight { settled },
            Delivery::BackendFailed(r) => Outcome::BackendFailed(r),
            Delivery::LedgerUnavailable => Outcome::LedgerUnavailable,
        }
    }
}

/// What the gateway decided for one request.
#[derive(Debug)]
pub struct Decision {
    pub outcome: Outcome,
    pub reply: Reply,
}

/// The `{account}` or `{type}` of the path is not configured.
#[derive(Debug, PartialEq, Eq)]
pub struct NotFound;

/// The accounts, routes and admin tokens in force; swapped whole on a reload (SIGHUP), so a
/// request sees one consistent set from start to end.
pub struct Routing {
    pub accounts: HashMap<String, Account>,
    pub routes: HashMap<String, Route>,
    /// (name, token): the name is what audit lines say.
    pub admin_tokens: Vec<(String, Secret)>,
}

impl Routing {
    fn from_config(config: Config) -> Self {
        // Replaced whole, so a certificate a reload removed leaves no series behind.
        metrics::PROVIDER_CERT_EXPIRY.reset();
        for (name, account) in &config.accounts {
            for cert in account.provider.certificates() {
                metrics::PROVIDER_CERT_EXPIRY.with_label_values(&[name, &cert.serial_hex]).set(cert.not_after as f64);
            }
        }
        Routing { accounts: config.accounts, routes: config.routes, admin_tokens: config.server.admin_tokens }
    }

    /// A lease outlives the type's backend timeout (the longest one when the type comes from
    /// the registration).
    pub fn lease_for(&self, order_type: Option<&str>) -> Duration {
        let timeout = match order_type.and_then(|t| self.routes.get(t)) {
            Some(route) => route.timeout,
            None => self.routes.values().map(|r| r.timeout).max().unwrap_or_default(),
        };
        timeout + LEASE_MARGIN
    }
}

pub struct Gateway {
    routing: ArcSwap<Routing>,
    ledger: Arc<dyn Ledger>,
    forwarder: Arc<Forwarder>,
    reply_budget: Duration,
    /// The bound on one ledger call, so settling never runs past the reply budget.
    ledger_timeout: Duration,
    /// A payment older than this is not forwarded: the ledger no longer remembers that far.
    dedupe_horizon: Duration,
}

impl Gateway {
    pub fn new(config: Config, ledger: Arc<dyn Ledger>, forwarder: Arc<Forwarder>) -> Self {
        Gateway {
            reply_budget: config.server.reply_budget,
            ledger_timeout: config.ledger.timeout,
            dedupe_horizon: config.ledger.dedupe_horizon,
            routing: ArcSwap::from_pointee(Routing::from_config(config)),
            ledger,
            forwarder,
        }
    }

    pub fn ledger(&self) -> &Arc<dyn Ledger> {
        &self.ledger
    }

    pub fn forwarder(&self) -> &Forwarder {
        &self.forwarder
    }

    /// The accounts and routes in force now.
    pub fn routing(&self) -> Arc<Routing> {
        self.routing.load_full()
    }

    /// Takes new accounts (keys, certificates), routes and admin tokens from a reloaded config.
    /// Listeners, ledger and budgets keep their start-up values: those need a restart (or
    /// graceful upgrade).
    pub fn reload(&self, config: Config) {
        self.routing.store(Arc::new(Routing::from_config(config)));
    }

    /// Handles `POST /notify/{account}/{type}` (or `/notify/{account}`: the registered type) with
    /// the exact body bytes.
    pub async fn notify(&self, account: &str, order_type: Option<&str>, headers: &http::HeaderMap, body: &[u8]) -> Result<Decision, NotFound> {
        let started = Instant::now();
        let routing = self.routing();
        let Some(acct) = routing.accounts.get(account) else { return Err(NotFound) };
        if order_type.is_some_and(|t| !routing.routes.contains_key(t)) {
            return Err(NotFound);
        }
        let deadline = tokio::time::Instant::from_std(started + self.reply_budget);
        let inbound = Inbound { headers, body, now: chrono::Utc::now().timestamp() };
        let mut out_trade_no = None;
        let verified = tracing::debug_span!("verify").in_scope(|| acct.provider.verify(&inbound));
        let outcome = match verified {
            Err(e) => {
                metrics::VERIFY_FAILURES.with_label_values(&[account, e.reason()]).inc();
                // WeChat's deliberate probes are expected traffic, not an attack.
                if e.reason() == "probe_signature" {
                    tracing::info!(account, error = %e, "provider probe signature rejected");
                } else {
                    tracing::warn!(account, error = %e, "notification failed verification");
                }
                Outcome::Rejected(e.reason())
            }
            Ok(Verified::NotPayment { what }) => {
                tracing::info!(account, what, "verified notification is not a payment; acknowledged");
                Outcome::NotPaid
            }
            Ok(Verified::Paid(paid)) => {
                out_trade_no = Some(paid.out_trade_no.clone());
                // Boxed, so the notify future (copied as it is wrapped) does not carry it inline.
                match timeout_at(deadline, Box::pin(self.deliver_once(acct, order_type, paid, Source::Notification, deadline))).await {
                    Ok(delivery) => delivery.into(),
                    Err(_) => Outcome::BackendFailed("reply_budget"),
                }
            }
        };
        let type_label = order_type.unwrap_or("-");
        metrics::NOTIFICATIONS.with_label_values(&[account, type_label, outcome.label()]).inc();
        tracing::info!(
            account,
            r#type = type_label,
            out_trade_no = out_trade_no.as_deref().unwrap_or("-"),
            outcome = outcome.label(),
            reason = outcome.reason(),
            // Whole microseconds, so the line reads 1.487, not 1.4873830000000001.
            latency_ms = started.elapsed().as_micros() as f64 / 1e3,
            "notification decided"
        );
        Ok(Decision { reply: acct.provider.reply(outcome.answer(), outcome.reason()), outcome })
    }

    /// The dedupe gate and the forward: the backend sees this order at most once while the
    /// ledger holds, and a failure gives the order back so the provider's retry forwards again.
    /// `order_type` is what the URL or the sync names; `None` takes the registered type.
    pub async fn deliver_once(
        &self,
        acct: &Account,
        order_type: Option<&str>,
        paid: PaidOrder,
        source: Source,
        deadline: tokio::time::Instant,
    ) -> Delivery {
        let account = acct.name.as_str();
        let key = acct.payment_id(&paid.out_trade_no);
        for field in &paid.unparsed {
            metrics::UNPARSED_FIELDS.with_label_values(&[account, field]).inc();
            tracing::warn!(account, out_trade_no = paid.out_trade_no, field, "field does not parse; forwarded as the provider's text");
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        if paid.pay_date.as_i64().is_some_and(|paid_at| paid_at < now_ms - crate::ledger::millis(self.dedupe_horizon)) {
            tracing::warn!(account, out_trade_no = paid.out_trade_no, "paid before the dedupe horizon; acknowledged, not forwarded");
            return Delivery::Stale;
        }
        let routing = self.routing();
        let request = ClaimRequest {
            order_type,
            total_fee: paid.total_fee,
            lease_for: routing.lease_for(order_type),
            mode: source.mode(),
            require_registration: acct.require_registration,
        };
        let owned = match self.ledger.claim(&key, request).instrument(tracing::debug_span!("claim")).await {
            Ok(Claim::Owned(owned)) => owned,
            Ok(Claim::Done) => return Delivery::Duplicate,
            Ok(Claim::InFlight) => return self.await_owner(&key, deadline).await,
            Ok(Claim::TypeMismatch { recorded }) => {
                self.type_conflict(acct, &key, &paid.out_trade_no, order_type.unwrap_or("-"), &recorded);
                return Delivery::TypeMismatch { recorded };
            }
            Ok(Claim::Quarantine { reason, registered_type, registered_total_fee }) => {
                let shown_type = order_type.or(registered_type.as_deref()).unwrap_or("-").to_string();
                let info = QuarantineInfo {
                    reason: reason.to_string(),
                    notified_type: order_type.map(str::to_string),
                    notified_total_fee: paid.total_fee,
                    registered_type,
                    registered_total_fee,
                    at_ms: now_ms,
                    order_data: order_json(&paid, &shown_type, source.mode(), now_ms, None),
                };
                return match self.ledger.quarantine(&key, &info).await {
                    Ok(first) => {
                        if first {
                            self.quarantined(acct, &key, &shown_type, &info).await;
                        }
                        Delivery::Quarantined(reason)
                    }
                    Err(e) => ledger_failed(&key, "quarantine", e),
                };
            }
            Ok(Claim::Quarantined { reason }) => {
                self.relist_quarantined(account, &key).await;
                return Delivery::Quarantined(quarantine_reason(&reason));
            }
            Ok(Claim::Dismissed) => return Delivery::Dismissed,
            // Fail closed: without the gate we cannot promise "once", so the provider retries.
            Err(e) => return ledger_failed(&key, "claim", e),
        };
        let stored = order_json(&paid, &owned.order_type, source.mode(), now_ms, owned.fields.as_deref());
        let delivery = self.forward_and_settle(&key, &owned.lease, &owned.order_type, stored, deadline).await;
        if delivery == Delivery::Forwarded {
            if let Some(paid_at) = paid.pay_date.as_i64() {
                // Now, after the backend's code 0 (`now_ms` was taken before the claim).
                let seconds = (chrono::Utc::now().timestamp_millis() - paid_at).max(0) as f64 / 1e3;
                metrics::PAYMENT_TO_DELIVERY.with_label_values(&[account, source.label()]).observe(seconds);
            }
            if owned.registered {
                // Delivered and done: the lists are housekeeping (the sweep drops what it finds
                // settled), so a slow ledger here must not turn the provider's reply into a failure.
                let _ = timeout_at(deadline, self.forget_pending(account, &key)).await;
            }
        }
        delivery
    }

    /// Forwards the order data of an owned claim and settles the ledger.
    async fn forward_and_settle(&self, key: &PaymentId, lease: &Lease, order_type: &str, stored: String, deadline: tokio::time::Instant) -> Delivery {
        let routing = self.routing();
        let Some(route) = routing.routes.get(order_type) else {
            // The type's route left the config since the payment was bound to it.
            tracing::error!(key = %key, r#type = order_type, "no route for the payment's type; not forwarded");
            if let Err(e) = self.settle(deadline, || self.ledger.release(key, lease, "unknown_type")).await {
                ledger_failed(key, "release", e);
            }
            return Delivery::BackendFailed("unknown_type");
        };
        let body = route.envelope.seal(&stored);
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now()).saturating_sub(settle_reserve(self.ledger_timeout));
        match self.forward(route, body, route.timeout.min(remaining)).instrument(tracing::debug_span!("forward")).await {
            Ok(()) => {
                match self.settle(deadline, || self.ledger.complete(key, lease, &stored)).instrument(tracing::debug_span!("settle")).await {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!(key = %key, "lease was taken over before completion; backend already accepted"),
                    // The backend accepted the order, so the provider hears success; the lease
                    // expires and a later duplicate may forward again (at-least-once).
                    Err(e) => {
                        ledger_failed(key, "complete", e);
                    }
                }
                Delivery::Forwarded
            }
            Err(reason) => {
                if let Err(e) = self.settle(deadline, || self.ledger.release(key, lease, reason)).instrument(tracing::debug_span!("settle")).await {
                    ledger_failed(key, "release", e);
                }
                Delivery::BackendFailed(reason)
            }
        }
    }

    /// A newly quarantined payment: counted, logged once at error level, listed for operators.
    async fn quarantined(&self, acct: &Account, key: &PaymentId, order_type: &str, info: &QuarantineInfo) {
        metrics::QUARANTINED.with_label_values(&[&acct.name, order_type, &info.reason]).inc();
        tracing::error!(
            account = acct.name,
            key = %key,
            reason = info.reason,
            notified_type = info.notified_type.as_deref().unwrap_or("-"),
            notified_total_fee = info.notified_total_fee,
            registered_type = info.registered_type.as_deref().unwrap_or("-"),
            registered_total_fee = info.registered_total_fee.unwrap_or(0),
            "paid order quarantined; not forwarded until an operator resolves it"
        );
        if let Err(e) = self.ledger.index_put(Index::Quarantined, &acct.name, key, info.at_ms).await {
            tracing::warn!(key = %key, error = %e, "quarantine list not updated");
        }
        self.forget_pending(&acct.name, key).await;
    }

    /// A provider's retry of a held order puts it on the operators' list again. The list is
    /// written after the record (each ledger call touches one key, as Redis Cluster needs), so a
    /// crash or a ledger error between the two would otherwise hide a held payment for good.
    async fn relist_quarantined(&self, account: &str, key: &PaymentId) {
        let at_ms = match self.ledger.record(key).await {
            Ok(Some(record)) if record.state == OrderState::Quarantined => record.quarantine.map_or_else(|| chrono::Utc::now().timestamp_millis(), |q| q.at_ms),
            // Resolved in the meantime: the operator's action took it off the list.
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(key = %key, error = %e, "quarantine list not checked");
                return;
            }
        };
        if let Err(e) = self.ledger.index_put(Index::Quarantined, account, key, at_ms).await {
            tracing::warn!(key = %key, error = %e, "quarantine list not updated");
        }
    }

    /// Takes a registered order off the sweep's lists (best effort: the sweep also drops what
    /// it finds settled).
    pub(crate) async fn forget_pending(&self, account: &str, key: &PaymentId) {
        for index in [Index::Pending, Index::Due] {
            if let Err(e) = self.ledger.index_remove(index, account, key).await {
                tracing::warn!(key = %key, error = %e, "pending list not updated");
            }
        }
    }

    /// An operator's `resolve forward`: the quarantined order through the normal gate, under
    /// `as_type` (default: the registered type, else the notified one).
    pub async fn resolve_forward(&self, acct: &Account, out_trade_no: &str, as_type: Option<&str>) -> Result<Delivery, ResolveError> {
        let key = acct.payment_id(out_trade_no);
        let record = self.ledger.record(&key).await?.filter(|r| r.state == OrderState::Quarantined).ok_or(ResolveError::NotQuarantined)?;
        let q = record.quarantine.unwrap_or_else(|| missing_quarantine_details(&key));
        let order_type = as_type
            .map(str::to_string)
            .or(q.registered_type.clone())
            .or(q.notified_type.clone())
            .ok_or(ResolveError::TypeNeeded)?;
        if !self.routing().routes.contains_key(&order_type) {
            return Err(ResolveError::UnknownType);
        }
        let stored = self.ledger.resolve(&key, Some(&order_type)).await?.ok_or(ResolveError::NotQuarantined)?;
        // Read before the claim: an unreadable order must not leave a lease behind.
        let held = HeldOrder::parse(&stored).ok_or(ResolveError::NotQuarantined)?;
        let request = ClaimRequest {
            order_type: Some(&order_type),
            total_fee: q.notified_total_fee,
            lease_for: self.routing().lease_for(Some(&order_type)),
            mode: NotifyMode::Active,
            require_registration: false,
        };
        let deadline = tokio::time::Instant::now() + self.reply_budget;
        let owned = match self.ledger.claim(&key, request).await? {
            Claim::Owned(owned) => owned,
            Claim::Done => return Ok(Delivery::Duplicate),
            other => return Err(ResolveError::Busy(format!("{other:?}"))),
        };
        let stored = held.into_json(&order_type, registration_fields(owned.fields.as_deref()));
        self.ledger.index_remove(Index::Quarantined, &acct.name, &key).await?;
        Ok(self.forward_and_settle(&key, &owned.lease, &order_type, stored, deadline).await)
    }

    /// An operator's `resolve dismiss`: the next provider retry is acknowledged, never forwarded.
    pub async fn resolve_dismiss(&self, acct: &Account, out_trade_no: &str) -> Result<(), ResolveError> {
        let key = acct.payment_id(out_trade_no);
        self.ledger.resolve(&key, None).await?.ok_or(ResolveError::NotQuarantined)?;
        self.ledger.index_remove(Index::Quarantined, &acct.name, &key).await?;
        Ok(())
    }

    /// A payment asked for under another type than the one the ledger bound it to: counted and
    /// logged once, at error level, since it means a misrouted URL, a wrong sync or a replay.
    pub(crate) fn type_conflict(&self, acct: &Account, key: &PaymentId, out_trade_no: &str, requested: &str, recorded: &str) {
        metrics::TYPE_CONFLICTS.with_label_values(&[&acct.name, requested]).inc();
        tracing::error!(
            account = acct.name,
            key = %key,
            out_trade_no,
            r#type = requested,
            recorded_type = recorded,
            "payment is bound to another type; not forwarded, not acknowledged"
        );
    }

    /// Completes or releases a lease, retrying while the reply budget allows: a ledger that
    /// blinks (a Redis restart) must not leave a delivered order in flight, where a duplicate
    /// arriving after the lease expires would forward it a second time.
    async fn settle<F, Fut>(&self, deadline: tokio::time::Instant, op: F) -> Result<bool, LedgerError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<bool, LedgerError>>,
    {
        loop {
            match op().await {
                Err(e) if tokio::time::Instant::now() + SETTLE_RETRY + self.ledger_timeout < deadline => {
                    metrics::LEDGER_ERRORS.inc();
                    tracing::warn!(error = %e, "ledger settle failed; retrying");
                    tokio::time::sleep(SETTLE_RETRY).await;
                }
                result => return result,
            }
        }
    }

    /// POSTs an envelope to the route's backend, counting and timing it.
    pub async fn forward(&self, route: &Route, body: Vec<u8>, timeout: Duration) -> Result<(), &'static str> {
        let started = Instant::now();
        let result = self.forwarder.deliver(&route.backend, body, timeout).await;
        metrics::BACKEND_DURATION.with_label_values(&[&route.name]).observe(started.elapsed().as_secs_f64());
        let label = match &result {
            Ok(()) => "ok",
            Err(e) => {
                tracing::warn!(r#type = route.name, backend = route.backend.url(), error = %e, "backend did not accept the order");
                e.reason()
            }
        };
        metrics::BACKEND_REQUESTS.with_label_values(&[&route.name, label]).inc();
        result.map_err(|e| e.reason())
    }

    /// Waits for another owner's outcome within the reply budget.
    async fn await_owner(&self, key: &PaymentId, deadline: tokio::time::Instant) -> Delivery {
        loop {
            match self.ledger.record(key).await {
                Ok(Some(r)) if r.state == OrderState::Done => return Delivery::InFlight { settled: true },
                Ok(Some(r)) if r.state == OrderState::InFlight => {}
                Ok(_) => return Delivery::InFlight { settled: false },
                Err(e) => return ledger_failed(key, "record", e),
            }
            if tokio::time::Instant::now() + IN_FLIGHT_POLL + settle_reserve(self.ledger_timeout) >= deadline {
                return Delivery::InFlight { settled: false };
            }
            tokio::time::sleep(IN_FLIGHT_POLL).await;
        }
    }
}

fn missing_quarantine_details(key: &PaymentId) -> QuarantineInfo {
    tracing::warn!(key = %key, "quarantined record without its details");
    QuarantineInfo {
        reason: String::new(),
        notified_type: None,
        notified_total_fee: 0,
        registered_type: None,
        registered_total_fee: None,
        at_ms: 0,
        order_data: "{}".into(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("the order is not quarantined")]
    NotQuarantined,
    #[error("the order has no registered or notified type: name one")]
    TypeNeeded,
    #[error("unknown type")]
    UnknownType,
    #[error("the order is busy: {0}")]
    Busy(String),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// Where a delivery comes from: the `source` label, and vk's `notify_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Notification,
    Sync,
    Sweep,
}

impl Source {
    pub fn mode(&self) -> NotifyMode {
        match self {
            Source::Notification => NotifyMode::Notification,
            Source::Sync | Source::Sweep => NotifyMode::Active,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Source::Notification => "notification",
            Source::Sync => "sync",
            Source::Sweep => "sweep",
        }
    }
}

fn ledger_failed(key: &PaymentId, op: &'static str, e: LedgerError) -> Delivery {
    metrics::LEDGER_ERRORS.inc();
    tracing::error!(key = %key, op, error = %e, "ledger call failed; answering failure (fail closed)");
    Delivery::LedgerUnavailable
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::embedded::Embedded;

    /// pingora boxes the request's future and the wrappers around it (request context, span,
    /// reply budget) copy it as they are built: at 13 KiB (a connect future held inline, 8 KiB)
    /// those copies were a visible share of each notification's instructions.
    #[test]
    fn the_notify_future_stays_small() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/payhook.toml")).unwrap();
        let retention = crate::ledger::contract::RETENTION;
        let ledger = Arc::new(Embedded::open(&dir.path().join("ledger.redb"), retention, Duration::from_secs(1), Duration::ZERO, false).unwrap());
        let gateway = Gateway::new(config, ledger, Arc::new(Forwarder::new(None)));
        let headers = http::HeaderMap::new();
        let size = std::mem::size_of_val(&gateway.notify("wx-demo", Some("goods"), &headers, b""));
        assert!(size <= 2048, "the notify future is {size} bytes");
    }
}
