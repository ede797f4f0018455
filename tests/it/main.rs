//! Integration tests: the real payhook binary, real Redis, real HTTP backends.

mod core;
mod support;
