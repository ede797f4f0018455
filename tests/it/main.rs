//! Integration tests: the real payhook binary, real Redis, real HTTP backends.

mod bounds;
mod active;
mod core;
mod faults;
mod integrity;
mod leaks;
mod ops;
mod examples;
mod providers;
mod reconcile;
mod redis_ha;
#[allow(dead_code)] // shared with benches/; not every helper is used by every binary
mod support;
mod tls;
