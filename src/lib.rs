//! payhook: a payment-notification gateway in front of legacy merchant backends.
//!
//! A provider (WeChat Pay, Alipay) POSTs "order X is paid" to `/notify/{account}/{type}`.
//! payhook verifies it, claims the order in a dedupe ledger, encrypts the order data the way
//! vk-uni-pay's Java/PHP samples decrypt it, forwards it to the backend of that `type`, and
//! answers the provider "success" only when the backend answered `{"code":0}`.
//!
//! # Layout
//! - [`context`]: the request id (and `traceparent`) that follows one request into the backend call.
//! - [`config`]: TOML with `${ENV}` / `*_file` secrets, parsed once into ready objects.
//! - [`provider`]: one file per payment provider behind the [`provider::Provider`] trait:
//!   verify raw bytes, normalise the order, build the provider's exact replies. No I/O.
//! - [`ledger`]: the dedupe gate (`embedded` redb or `redis`) behind one trait and one contract test.
//! - [`order`]: the vk-pay-orders shaped order data a backend receives.
//! - [`envelope`]: how that order data is encrypted for the backend.
//! - [`forward`]: the HTTP call to the backend over pingora's pooled connector.
//! - [`flow`]: verify → claim → envelope → forward → settle, as plain async Rust.
//! - [`active`]: the active trigger (query the provider, deliver through the same gate) and re-push.
//! - [`reconcile`]: order registration and the sweep that queries the provider about
//!   registered orders whose notification is late or lost.
//! - [`gateway`]: pingora glue for the notify listener (bytes in, reply out).
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz` and the admin API.
//! - [`metrics`]: every Prometheus metric, defined in one place.
//! - [`reload`]: SIGHUP re-reads keys, certificates and routes without dropping connections.
//! - [`simulate`]: notifications signed exactly as each provider signs them (`payhook simulate`).
//! - [`tls`]: HTTPS on the listeners, the certificate swapped on SIGHUP.
//! - [`telemetry`]: log lines (text or JSON) and optional OTLP spans.
//! - [`server`]: assembles the pingora `Server` from a [`config::Config`].

// The large enum variants (a paid order, a cipher's key schedule, the simulator's keys) are
// made once per notification or per process and moved a few times; boxing them would add an
// allocation on the hot path to save copies clippy cannot weigh.
#![allow(clippy::large_enum_variant)]

pub mod active;
pub mod admin;
pub mod config;
pub mod connections;
pub mod context;
pub mod envelope;
pub mod flow;
pub mod forward;
pub mod gateway;
pub mod keys;
pub mod ledger;
pub mod metrics;
pub mod order;
pub mod provider;
pub mod reconcile;
pub mod reload;
pub mod secret;
pub mod server;
pub mod simulate;
pub mod telemetry;
pub mod tls;
