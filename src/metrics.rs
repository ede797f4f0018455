//! Every Prometheus metric payhook exports, in one place. Label values are fixed vocabularies
//! (configured account and type names, `reason()` labels), never request data, so a flood of
//! garbage cannot grow the series count.

use once_cell::sync::Lazy;
use prometheus::{
    register_gauge_vec, register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge_vec, GaugeVec, HistogramVec,
    IntCounter, IntCounterVec, IntGaugeVec,
};

/// One per handled notification; `outcome` is [`crate::flow::Outcome::label`].
pub static NOTIFICATIONS: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!("payhook_notifications_total", "Notifications handled, by outcome", &["account", "type", "outcome"])
        .expect("metric registers once")
});

pub static VERIFY_FAILURES: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!("payhook_verify_failures_total", "Notifications that failed verification", &["account", "reason"])
        .expect("metric registers once")
});

pub static BACKEND_REQUESTS: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!("payhook_backend_requests_total", "Forwards to backends, by result", &["type", "result"])
        .expect("metric registers once")
});

pub static BACKEND_DURATION: Lazy<HistogramVec> = Lazy::new(|| {
    register_histogram_vec!(
        "payhook_backend_duration_seconds",
        "Backend round trip",
        &["type"],
        vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]
    )
    .expect("metric registers once")
});

pub static LEDGER_ERRORS: Lazy<IntCounter> = Lazy::new(|| {
    register_int_counter!("payhook_ledger_errors_total", "Ledger calls that failed or timed out").expect("metric registers once")
});

pub static SYNC: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!("payhook_sync_total", "Active order syncs, by result", &["account", "result"]).expect("metric registers once")
});

pub static PROVIDER_QUERY_DURATION: Lazy<HistogramVec> = Lazy::new(|| {
    register_histogram_vec!("payhook_provider_query_duration_seconds", "Provider order-query round trip", &["account"])
        .expect("metric registers once")
});

pub static REPLAYS: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!("payhook_replays_total", "Admin re-pushes of done orders", &["type", "result"])
        .expect("metric registers once")
});

/// Paid notifications or syncs refused because the payment is bound to another type.
pub static TYPE_CONFLICTS: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "payhook_type_conflicts_total",
        "Payments refused because the ledger bound them to another type",
        &["account", "type"]
    )
    .expect("metric registers once")
});

/// Provider fields that decide no money and did not parse (forwarded as the provider's text).
pub static UNPARSED_FIELDS: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "payhook_unparsed_fields_total",
        "Non-money provider fields forwarded raw because they did not parse",
        &["account", "field"]
    )
    .expect("metric registers once")
});

/// Paid orders held for an operator; `reason` = amount_mismatch | type_mismatch | unregistered.
pub static QUARANTINED: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!("payhook_quarantined_total", "Paid orders quarantined, by reason", &["account", "type", "reason"])
        .expect("metric registers once")
});

/// The sweep's provider queries; `result` = paid | not_paid | closed | error | throttled.
pub static RECONCILE_QUERIES: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!("payhook_reconcile_queries_total", "Order queries made by the reconciliation sweep", &["account", "result"])
        .expect("metric registers once")
});

pub static ORDERS_PENDING: Lazy<IntGaugeVec> = Lazy::new(|| {
    register_int_gauge_vec!("payhook_orders_pending", "Registered orders not yet delivered, closed or given up", &["account"])
        .expect("metric registers once")
});

pub static OLDEST_PENDING: Lazy<GaugeVec> = Lazy::new(|| {
    register_gauge_vec!("payhook_oldest_pending_seconds", "Age of the oldest pending registered order", &["account"])
        .expect("metric registers once")
});

/// Paid orders the sweep delivered: each one a lost or late notification.
pub static RECOVERED: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!("payhook_recovered_total", "Paid orders delivered by the reconciliation sweep", &["account", "type"])
        .expect("metric registers once")
});

pub static PAYMENT_TO_DELIVERY: Lazy<HistogramVec> = Lazy::new(|| {
    register_histogram_vec!(
        "payhook_payment_to_delivery_seconds",
        "From the provider's payment time to the backend's code 0",
        &["account", "source"],
        vec![1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0]
    )
    .expect("metric registers once")
});

/// The `notAfter` of each TLS listener's certificate, in seconds since the epoch (as the
/// blackbox exporter's `probe_ssl_earliest_cert_expiry`): alert on `… - time() < 14 * 86400`.
pub static TLS_CERT_EXPIRY: Lazy<GaugeVec> = Lazy::new(|| {
    register_gauge_vec!("payhook_tls_cert_expiry_seconds", "When the listener's TLS certificate expires (unix seconds)", &["listener"])
        .expect("metric registers once")
});

/// The `notAfter` of each provider certificate an account verifies signatures with (WeChat Pay
/// platform certificates, Alipay's certificate-mode leaf), in seconds since the epoch. After it,
/// notifications signed under that certificate are refused (`certificate_expired`): alert on
/// `… - time() < 14 * 86400` and add the provider's next certificate before then.
pub static PROVIDER_CERT_EXPIRY: Lazy<GaugeVec> = Lazy::new(|| {
    register_gauge_vec!(
        "payhook_provider_cert_expiry_seconds",
        "When a provider certificate an account verifies with expires (unix seconds)",
        &["account", "serial"]
    )
    .expect("metric registers once")
});

/// Notify-listener connections closed by payhook: `reason` = max_connections | header_timeout.
pub static CONNECTIONS_REFUSED: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!("payhook_connections_closed_total", "Notify connections payhook closed to bound what clients hold", &["reason"])
        .expect("metric registers once")
});

pub static CONNECTIONS_OPEN: Lazy<prometheus::IntGauge> = Lazy::new(|| {
    prometheus::register_int_gauge!("payhook_connections_open", "Open notify-listener connections").expect("metric registers once")
});

/// The admin listener's own: its budget is apart from the notify listener's.
pub static ADMIN_CONNECTIONS_REFUSED: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "payhook_admin_connections_closed_total",
        "Admin connections payhook closed to bound what clients hold",
        &["reason"]
    )
    .expect("metric registers once")
});

pub static ADMIN_CONNECTIONS_OPEN: Lazy<prometheus::IntGauge> = Lazy::new(|| {
    prometheus::register_int_gauge!("payhook_admin_connections_open", "Open admin-listener connections").expect("metric registers once")
});

/// `payhook --version`: the crate version and the git commit it was built from.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("PAYHOOK_GIT_COMMIT"), ")");

/// Always 1; the labels say which build is running.
pub static BUILD_INFO: Lazy<prometheus::IntGaugeVec> = Lazy::new(|| {
    register_int_gauge_vec!("payhook_build_info", "The running build", &["version", "commit"]).expect("metric registers once")
});

/// Forces registration so `/metrics` lists every family from the start.
pub fn init() {
    Lazy::force(&NOTIFICATIONS);
    Lazy::force(&VERIFY_FAILURES);
    Lazy::force(&BACKEND_REQUESTS);
    Lazy::force(&BACKEND_DURATION);
    Lazy::force(&LEDGER_ERRORS);
    Lazy::force(&SYNC);
    Lazy::force(&PROVIDER_QUERY_DURATION);
    Lazy::force(&REPLAYS);
    Lazy::force(&TYPE_CONFLICTS);
    Lazy::force(&UNPARSED_FIELDS);
    Lazy::force(&QUARANTINED);
    Lazy::force(&RECONCILE_QUERIES);
    Lazy::force(&ORDERS_PENDING);
    Lazy::force(&OLDEST_PENDING);
    Lazy::force(&RECOVERED);
    Lazy::force(&PAYMENT_TO_DELIVERY);
    Lazy::force(&TLS_CERT_EXPIRY);
    Lazy::force(&CONNECTIONS_OPEN);
    Lazy::force(&ADMIN_CONNECTIONS_OPEN);
    for reason in ["max_connections", "header_timeout"] {
        CONNECTIONS_REFUSED.with_label_values(&[reason]);
        ADMIN_CONNECTIONS_REFUSED.with_label_values(&[reason]);
    }
    BUILD_INFO.with_label_values(&[env!("CARGO_PKG_VERSION"), env!("PAYHOOK_GIT_COMMIT")]).set(1);
    // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, …
    let _ = prometheus::register(Box::new(prometheus::process_collector::ProcessCollector::for_self()));
}

/// Creates the series of every configured account and type at zero, so `increase()` and
/// `rate()` see the first event after a start (a counter that appears at 1 has no increase).
pub fn init_series(accounts: &[&str], types: &[&str]) {
    const OUTCOMES: &[&str] = &["forwarded", "duplicate", "in_flight", "not_paid", "stale", "type_mismatch", "quarantined", "dismissed", "rejected", "backend_failed", "ledger_unavailable"];
    for account in accounts {
        for order_type in types {
            for outcome in OUTCOMES {
                NOTIFICATIONS.with_label_values(&[account, order_type, outcome]);
            }
            TYPE_CONFLICTS.with_label_values(&[account, order_type]);
            RECOVERED.with_label_values(&[account, order_type]);
            for reason in ["amount_mismatch", "type_mismatch", "unregistered"] {
                QUARANTINED.with_label_values(&[account, order_type, reason]);
            }
        }
        for result in ["paid", "not_paid", "closed", "error", "throttled"] {
            RECONCILE_QUERIES.with_label_values(&[account, result]);
        }
        for reason in VERIFY_REASONS {
            VERIFY_FAILURES.with_label_values(&[account, reason]);
        }
        for result in ["forwarded", "already_done", "not_paid", "in_flight", "backend_failed", "stale", "quarantined", "dismissed", "type_mismatch"] {
            SYNC.with_label_values(&[account, result]);
        }
        for field in ["success_time", "time_end", "gmt_payment", "send_pay_date", "passback_params"] {
            UNPARSED_FIELDS.with_label_values(&[account, field]);
        }
        for source in ["notification", "sync", "sweep"] {
            PAYMENT_TO_DELIVERY.with_label_values(&[account, source]);
        }
        PROVIDER_QUERY_DURATION.with_label_values(&[account]);
        ORDERS_PENDING.with_label_values(&[account]);
        OLDEST_PENDING.with_label_values(&[account]);
    }
    for order_type in types {
        for result in ["ok", "connect", "timeout", "io", "http_status", "bad_reply", "rejected"] {
            BACKEND_REQUESTS.with_label_values(&[order_type, result]);
            REPLAYS.with_label_values(&[order_type, result]);
        }
        BACKEND_DURATION.with_label_values(&[order_type]);
    }
}

/// `ProviderError::reason` labels.
const VERIFY_REASONS: &[&str] = &[
    "missing_header", "probe_signature", "bad_signature", "unknown_serial", "stale_timestamp", "decrypt_failed", "malformed",
    "xml_doctype", "merchant_mismatch", "bad_amount", "throttled",
];

/// The Prometheus text exposition of every registered metric.
pub fn render() -> Vec<u8> {
    use prometheus::Encoder;
    let mut out = Vec::new();
    prometheus::TextEncoder::new().encode(&prometheus::gather(), &mut out).expect("text encoding into a Vec");
    out
}
