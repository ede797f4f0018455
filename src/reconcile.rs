//! Registered orders and the reconciliation sweep: vk-uni-pay's active trigger, without anyone
//! asking.
//!
//! A backend registers an order when it creates it (type, amount, expiry, its own `fields`).
//! The sweep then queries the provider about every registered order that is not delivered yet,
//! at its due time: paid orders go through the same gate as notifications (`notify_mode: 0`),
//! unpaid ones are asked again later (the interval doubles up to `max_interval`), and past
//! their expiry they are closed. Due times live in the ledger and are claimed atomically, so
//! several instances query each order once per round, a crashed instance's orders come back
//! after one interval, and a restart resumes every pending order. Queries per account are
//! capped by a rate window shared by every instance.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::active::ActiveError;
use crate::config::{Account, ReconcileSettings};
use crate::context::{Kind, RequestContext};
use crate::flow::{Delivery, Gateway, Source};
use crate::ledger::{millis, now_ms, Index, LedgerError, OrderState, PaymentId, Registered, Registration};
use crate::metrics;
use crate::provider::QueryOutcome;

/// What `PUT /v1/orders/{account}/{out_trade_no}` asks for, validated.
#[derive(Debug, Clone)]
pub struct OrderRegistration {
    pub order_type: String,
    pub total_fee: u64,
    pub expires_in: Option<Duration>,
    /// A JSON object, at most [`MAX_FIELDS`] bytes.
    pub fields: Option<String>,
}

/// The largest `fields` object accepted, serialised.
pub const MAX_FIELDS: usize = 4096;
/// The longest `expires_in` accepted: the default dedupe horizon, far beyond any provider's
/// order lifetime (Alipay's longest is 15 days), and far from overflowing a millisecond clock.
pub const MAX_EXPIRES_IN: Duration = Duration::from_secs(400 * 86_400);

impl Gateway {
    /// Registers an order before payment and schedules the sweep's first query.
    pub async fn register(&self, acct: &Account, out_trade_no: &str, order: OrderRegistration, settings: &ReconcileSettings) -> Result<Registered, LedgerError> {
        let key = acct.payment_id(out_trade_no);
        let now = now_ms();
        let registration = Registration {
            account: acct.name.clone(),
            order_type: order.order_type,
            total_fee: order.total_fee,
            expires_at_ms: now.saturating_add(millis(order.expires_in.unwrap_or(settings.give_up_after))),
            fields: order.fields,
        };
        let outcome = self.ledger().register(&key, &registration).await?;
        // The lists are written after the record (each ledger call touches one key, as Redis
        // Cluster needs); a backend repeating its registration after a lost answer lists the order
        // again if the first call stopped short (keeping its first time) and schedules it again.
        if outcome != Registered::Conflict && self.ledger().record(&key).await?.is_some_and(|r| r.state == OrderState::None) {
            if outcome == Registered::Created {
                self.ledger().index_put(Index::Pending, &acct.name, &key, now).await?;
            } else {
                self.ledger().index_add(Index::Pending, &acct.name, &key, now).await?;
            }
            self.ledger().index_put(Index::Due, &acct.name, &key, now.saturating_add(millis(settings.first_check))).await?;
        }
        Ok(outcome)
    }
}

pub struct Sweep {
    pub gateway: Arc<Gateway>,
    pub settings: ReconcileSettings,
}

impl Sweep {
    /// How often the sweep looks for due orders.
    fn tick(&self) -> Duration {
        (self.settings.first_check.min(self.settings.interval) / 4).clamp(Duration::from_millis(100), Duration::from_secs(1))
    }

    async fn round(&self) {
        let routing = self.gateway.routing();
        for acct in routing.accounts.values().filter(|a| a.provider.can_query()) {
            match self.gateway.ledger().claim_due(&acct.name, self.settings.max_queries_per_second as usize, self.settings.interval).await {
                Ok(due) => {
                    for key in due {
                        RequestContext::fresh().scope(Kind::Sweep, self.check(acct, &key)).await;
                    }
                }
                Err(e) => tracing::warn!(account = acct.name, error = %e, "sweep cannot read due orders"),
            }
            if let Ok((pending, oldest)) = self.gateway.ledger().index_stats(Index::Pending, &acct.name).await {
                metrics::ORDERS_PENDING.with_label_values(&[&acct.name]).set(pending as i64);
                let age = oldest.map(|at| (now_ms() - at).max(0) as f64 / 1e3).unwrap_or(0.0);
                metrics::OLDEST_PENDING.with_label_values(&[&acct.name]).set(age);
            }
        }
    }

    /// One due order: query the provider, deliver, close, or ask again later.
    async fn check(&self, acct: &Account, key: &PaymentId) {
        let ledger = self.gateway.ledger();
        let record = match ledger.record(key).await {
            Ok(Some(record)) => record,
            Ok(None) => return self.gateway.forget_pending(&acct.name, key).await,
            // Due again after the hold: the sweep retries by itself.
            Err(e) => return tracing::warn!(key = %key, error = %e, "sweep cannot read an order"),
        };
        match record.state {
            _ if !record.registered => return self.gateway.forget_pending(&acct.name, key).await,
            OrderState::Done | OrderState::Dismissed | OrderState::Closed | OrderState::Quarantined => {
                return self.gateway.forget_pending(&acct.name, key).await
            }
            // A notification or sync is delivering it; the hold brings it back if that fails.
            OrderState::InFlight => return,
            OrderState::None => {}
        }
        match ledger.rate_slot(&acct.name, self.settings.max_queries_per_second).await {
            Ok(true) => {}
            _ => {
                let spacing = 1000 / i64::from(self.settings.max_queries_per_second).max(1);
                let _ = ledger.index_put(Index::Due, &acct.name, key, now_ms() + spacing.max(50)).await;
                return;
            }
        }
        let checks = ledger.note_check(key).await.unwrap_or(record.checks + 1);
        let result = match self.gateway.query_order(acct, key.out_trade_no()).await {
            Ok(QueryOutcome::Paid(paid)) => {
                // The claim's own lease, no later: settling past it could race another instance's claim.
                let deadline = tokio::time::Instant::now() + self.gateway.routing().lease_for(None);
                match self.gateway.deliver_once(acct, None, paid, Source::Sweep, deadline).await {
                    Delivery::Forwarded => {
                        let order_type = record.order_type.as_deref().unwrap_or("-");
                        metrics::RECOVERED.with_label_values(&[&acct.name, order_type]).inc();
                        tracing::warn!(account = acct.name, key = %key, r#type = order_type, "sweep delivered a paid order whose notification had not arrived");
                    }
                    Delivery::Duplicate | Delivery::Stale | Delivery::Dismissed | Delivery::Quarantined(_) => {
                        self.gateway.forget_pending(&acct.name, key).await;
                    }
                    Delivery::TypeMismatch { .. }
                    | Delivery::InFlight { .. }
                    | Delivery::BackendFailed(_)
                    | Delivery::LedgerUnavailable => self.ask_again(acct, key, checks, record.expires_at_ms).await,
                }
                "paid"
            }
            Ok(QueryOutcome::NotPaid { trade_state }) => {
                if record.expires_at_ms.is_some_and(|at| now_ms() >= at) {
                    if let Err(e) = ledger.close(key).await {
                        tracing::warn!(key = %key, error = %e, "sweep cannot close an expired order");
                    }
                    self.gateway.forget_pending(&acct.name, key).await;
                    tracing::info!(account = acct.name, key = %key, trade_state, "registered order expired unpaid; closed");
                    "closed"
                } else {
                    self.ask_again(acct, key, checks, record.expires_at_ms).await;
                    "not_paid"
                }
            }
            Err(e) => {
                self.ask_again(acct, key, checks, record.expires_at_ms).await;
                match e {
                    ActiveError::Query("query_throttled") => "throttled",
                    _ => "error",
                }
            }
        };
        metrics::RECONCILE_QUERIES.with_label_values(&[&acct.name, result]).inc();
    }

    /// The next query: the interval doubles after each check, up to `max_interval`, and one
    /// check falls at the expiry so an unpaid order is closed on time.
    async fn ask_again(&self, acct: &Account, key: &PaymentId, checks: u64, expires_at_ms: Option<i64>) {
        let now = now_ms();
        let doublings = checks.saturating_sub(1).min(20) as u32;
        let wait = self.settings.interval.saturating_mul(2u32.saturating_pow(doublings)).min(self.settings.max_interval);
        let mut due = now.saturating_add(millis(wait));
        if let Some(expiry) = expires_at_ms.filter(|at| *at > now) {
            due = due.min(expiry);
        }
        if let Err(e) = self.gateway.ledger().index_put(Index::Due, &acct.name, key, due).await {
            tracing::warn!(key = %key, error = %e, "sweep cannot reschedule an order; it is due again after the hold");
        }
    }
}

#[async_trait]
impl BackgroundService for Sweep {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if !self.settings.enabled {
            return;
        }
        let tick = self.tick();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = shutdown.changed() => return,
            }
            self.round().await;
        }
    }
}
