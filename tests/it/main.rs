//! Integration tests: the real payhook binary, real Redis, real HTTP backends.

mod core;
mod providers;
#[allow(dead_code)] // shared with benches/; not every helper is used by every binary
mod support;
