//! End-to-end tests: the real `llmtrace` binary on loopback, driven over HTTP and gRPC.
//! One test binary (see STYLE.md); modules group the capabilities.
//! Helpers outside `#[test]` functions unwrap too: a test helper should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod agents;
mod api;
mod bulk;
mod completions;
mod cost;
mod fixtures;
mod gateway;
mod gateway_faults;
mod lifecycle;
mod otlp;
mod python;
mod scores;
mod support;
mod ui;
