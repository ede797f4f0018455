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
use crate::ledger::{Claim, Ledger, LedgerError, OrderState};
use crate::metrics;
use crate::order::{order_data, NotifyMode};
use crate::provider::{Answer, Inbound, PaidOrder, Reply, Verified};

/// A lease outlives the backend timeout by this much, so a slow but successful forward is
/// never taken over while its owner is still settling it.
const LEASE_MARGIN: Duration = Duration::from_secs(5);
/// Kept back from the reply budget for settling the ledger after the backend answers.
const SETTLE_RESERVE: Duration = Duration::from_millis(600);
/// Pause between attempts to settle an order while the ledger is briefly unreachable.
const SETTLE_RETRY: Duration = Duration::from_millis(100);
/// How often a request that met a live lease looks at the ledger again.
const IN_FLIGHT_POLL: Duration = Duration::from_millis(25);

/// How one notification ended: the `outcome` metric label and what the provider hears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Forwarded,
    Duplicate,
    /// Met another owner's lease and waited; `settled` is whether that owner delivered.
    InFlight { settled: bool },
    NotPaid,
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
            Outcome::Rejected(_) => "rejected",
            Outcome::BackendFailed(_) => "backend_failed",
            Outcome::LedgerUnavailable => "ledger_unavailable",
        }
    }

    pub fn answer(&self) -> Answer {
        match self {
            Outcome::Forwarded | Outcome::Duplicate | Outcome::NotPaid | Outcome::InFlight { settled: true } => Answer::Success,
            Outcome::Rejected(_) => Answer::Rejected,
            Outcome::InFlight { settled: false } | Outcome::BackendFailed(_) | Outcome::LedgerUnavailable => Answer::Retry,
        }
    }

    /// The short reason a provider sees in a failure reply: a fixed label, nothing more.
    pub fn reason(&self) -> &'static str {
        match self {
            Outcome::Rejected(r) | Outcome::BackendFailed(r) => r,
            Outcome::InFlight { settled: false } => "in_flight",
            Outcome::LedgerUnavailable => "ledger_unavailable",
            _ => "OK",
        }
    }
}

/// How [`Gateway::deliver_once`] ended: the part of an [`Outcome`] past verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Forwarded,
    Duplicate,
    InFlight { settled: bool },
    BackendFailed(&'static str),
    LedgerUnavailable,
}

impl From<Delivery> for Outcome {
    fn from(d: Delivery) -> Outcome {
        match d {
            Delivery::Forwarded => Outcome::Forwarded,
            Delivery::Duplicate => Outcome::Duplicate,
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

/// The accounts and routes in force; swapped whole on a reload (SIGHUP), so a request sees
/// one consistent set from start to end.
pub struct Routing {
    pub accounts: HashMap<String, Account>,
    pub routes: HashMap<String, Route>,
}

pub struct Gateway {
    routing: ArcSwap<Routing>,
    ledger: Arc<dyn Ledger>,
    forwarder: Arc<Forwarder>,
    reply_budget: Duration,
    /// The bound on one ledger call, so settling never runs past the reply budget.
    ledger_timeout: Duration,
}

impl Gateway {
    pub fn new(config: Config, ledger: Arc<dyn Ledger>, forwarder: Arc<Forwarder>) -> Self {
        Gateway {
            routing: ArcSwap::from_pointee(Routing { accounts: config.accounts, routes: config.routes }),
            ledger,
            forwarder,
            reply_budget: config.server.reply_budget,
            ledger_timeout: config.ledger.timeout,
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

    /// Takes new accounts (keys, certificates) and routes from a reloaded config. Listeners,
    /// ledger and budgets keep their start-up values: those need a restart (or graceful upgrade).
    pub fn reload(&self, config: Config) {
        self.routing.store(Arc::new(Routing { accounts: config.accounts, routes: config.routes }));
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
                match timeout_at(deadline, self.deliver_once(account, route, paid, NotifyMode::Notification, deadline)).await {
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
        account: &str,
        route: &Route,
        paid: PaidOrder,
        mode: NotifyMode,
        deadline: tokio::time::Instant,
    ) -> Delivery {
        let key = format!("{account}:{}", paid.out_trade_no);
        let lease = match self.ledger.claim(&key, route.timeout + LEASE_MARGIN, mode).await {
            Ok(Claim::Owned(lease)) => lease,
            Ok(Claim::Done) => return Delivery::Duplicate,
            Ok(Claim::InFlight) => return self.await_owner(&key, deadline).await,
            // Fail closed: without the gate we cannot promise "once", so the provider retries.
            Err(e) => return ledger_failed(&key, "claim", e),
        };

        let data = order_data(paid, &route.name, mode, chrono::Utc::now().timestamp_millis());
        let stored = serde_json::to_string(&data).expect("a JSON map serialises");
        let body = route.envelope.seal(&stored);
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now()).saturating_sub(SETTLE_RESERVE);
        let result = self.forward(route, body, route.timeout.min(remaining)).await;

        match result {
            Ok(()) => {
                match self.settle(deadline, || self.ledger.complete(&key, &lease, &stored)).await {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!(key, "lease was taken over before completion; backend already accepted"),
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
    async fn await_owner(&self, key: &str, deadline: tokio::time::Instant) -> Delivery {
        loop {
            match self.ledger.record(key).await {
                Ok(Some(r)) if r.state == OrderState::Done => return Delivery::InFlight { settled: true },
                Ok(Some(r)) if r.state == OrderState::InFlight => {}
                Ok(_) => return Delivery::InFlight { settled: false },
                Err(e) => return ledger_failed(key, "record", e),
            }
            if tokio::time::Instant::now() + IN_FLIGHT_POLL + SETTLE_RESERVE >= deadline {
                return Delivery::InFlight { settled: false };
            }
            tokio::time::sleep(IN_FLIGHT_POLL).await;
        }
    }
}

fn ledger_failed(key: &str, op: &'static str, e: LedgerError) -> Delivery {
    metrics::LEDGER_ERRORS.inc();
    tracing::error!(key, op, error = %e, "ledger call failed; answering failure (fail closed)");
    Delivery::LedgerUnavailable
}
