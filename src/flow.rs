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

use crate::config::{Account, Config, Route};
use crate::forward::Forwarder;
use crate::ledger::{Claim, ClaimRequest, Ledger, LedgerError, OrderState, PaymentId};
use crate::metrics;
use crate::order::{order_data, NotifyMode};
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
            Outcome::Rejected(_) => "rejected",
            Outcome::BackendFailed(_) => "backend_failed",
            Outcome::LedgerUnavailable => "ledger_unavailable",
        }
    }

    pub fn answer(&self) -> Answer {
        match self {
            Outcome::Forwarded | Outcome::Duplicate | Outcome::NotPaid | Outcome::Stale | Outcome::InFlight { settled: true } => {
                Answer::Success
            }
            Outcome::Rejected(_) => Answer::Rejected,
            Outcome::InFlight { settled: false } | Outcome::TypeMismatch | Outcome::BackendFailed(_) | Outcome::LedgerUnavailable => {
                Answer::Retry
            }
        }
    }

    /// The short reason a provider sees in a failure reply: a fixed label, nothing more.
    pub fn reason(&self) -> &'static str {
        match self {
            Outcome::Rejected(r) | Outcome::BackendFailed(r) => r,
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
        Routing { accounts: config.accounts, routes: config.routes, admin_tokens: config.server.admin_tokens }
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

    /// Handles `POST /notify/{account}/{type}` with the exact body bytes.
    pub async fn notify(&self, account: &str, order_type: &str, headers: &http::HeaderMap, body: &[u8]) -> Result<Decision, NotFound> {
        let started = Instant::now();
        let routing = self.routing();
        let (Some(acct), Some(route)) = (routing.accounts.get(account), routing.routes.get(order_type)) else {
            return Err(NotFound);
        };
        let deadline = tokio::time::Instant::from_std(started + self.reply_budget);
        let inbound = Inbound { headers, body, now: chrono::Utc::now().timestamp() };
        let mut out_trade_no = None;
        let outcome = match acct.provider.verify(&inbound) {
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
                match timeout_at(deadline, self.deliver_once(acct, route, paid, NotifyMode::Notification, deadline)).await {
                    Ok(delivery) => delivery.into(),
                    Err(_) => Outcome::BackendFailed("reply_budget"),
                }
            }
        };
        metrics::NOTIFICATIONS.with_label_values(&[account, order_type, outcome.label()]).inc();
        tracing::info!(
            account,
            r#type = order_type,
            out_trade_no = out_trade_no.as_deref().unwrap_or("-"),
            outcome = outcome.label(),
            reason = outcome.reason(),
            latency_ms = started.elapsed().as_secs_f64() * 1e3,
            "notification decided"
        );
        Ok(Decision { reply: acct.provider.reply(outcome.answer(), outcome.reason()), outcome })
    }

    /// The dedupe gate and the forward: the backend sees this order at most once while the
    /// ledger holds, and a failure gives the order back so the provider's retry forwards again.
    pub async fn deliver_once(
        &self,
        acct: &Account,
        route: &Route,
        paid: PaidOrder,
        mode: NotifyMode,
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
        let request = ClaimRequest { order_type: &route.name, total_fee: paid.total_fee, lease_for: route.timeout + LEASE_MARGIN, mode };
        let lease = match self.ledger.claim(&key, request).await {
            Ok(Claim::Owned(lease)) => lease,
            Ok(Claim::Done) => return Delivery::Duplicate,
            Ok(Claim::InFlight) => return self.await_owner(&key, deadline).await,
            Ok(Claim::TypeMismatch { recorded }) => {
                self.type_conflict(acct, &key, &paid.out_trade_no, &route.name, &recorded);
                return Delivery::TypeMismatch { recorded };
            }
            // Fail closed: without the gate we cannot promise "once", so the provider retries.
            Err(e) => return ledger_failed(&key, "claim", e),
        };

        let data = order_data(paid, &route.name, mode, now_ms);
        let stored = serde_json::to_string(&data).expect("a JSON map serialises");
        let body = route.envelope.seal(&stored);
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now()).saturating_sub(settle_reserve(self.ledger_timeout));
        let result = self.forward(route, body, route.timeout.min(remaining)).await;

        match result {
            Ok(()) => {
                match self.settle(deadline, || self.ledger.complete(&key, &lease, &stored)).await {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!(key = %key, "lease was taken over before completion; backend already accepted"),
                    // The backend accepted the order, so the provider hears success; the lease
                    // expires and a later duplicate may forward again (at-least-once).
                    Err(e) => {
                        ledger_failed(&key, "complete", e);
                    }
                }
                Delivery::Forwarded
            }
            Err(reason) => {
                if let Err(e) = self.settle(deadline, || self.ledger.release(&key, &lease, reason)).await {
                    ledger_failed(&key, "release", e);
                }
                Delivery::BackendFailed(reason)
            }
        }
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

fn ledger_failed(key: &PaymentId, op: &'static str, e: LedgerError) -> Delivery {
    metrics::LEDGER_ERRORS.inc();
    tracing::error!(key = %key, op, error = %e, "ledger call failed; answering failure (fail closed)");
    Delivery::LedgerUnavailable
}
