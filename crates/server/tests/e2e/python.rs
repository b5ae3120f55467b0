//! Unmodified Python clients from PyPI (the venv `.ci/run` builds from
//! tests/python/requirements.txt) export to the real binary. Skipped, with the reason
//! printed, when the venv is missing, unless LLMTRACE_TEST_REQUIRE_ALL=1.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::support::{TestServer, skip};

pub fn python() -> Option<PathBuf> {
    let venv = std::env::var("LLMTRACE_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv"));
    let python = venv.join("bin/python");
    python.exists().then_some(python)
}

pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/python")
        .join(name)
}

/// Runs a client script with the server's addresses in its environment.
fn run_client(server: &TestServer, name: &str, args: &[&str]) -> bool {
    let Some(python) = python() else {
        skip("no Python venv with the client packages (.venv; .ci/run builds it)");
        return false;
    };
    let output = Command::new(python)
        .arg(script(name))
        .args(args)
        .env("LLMTRACE_HTTP", &server.http)
        .env("LLMTRACE_OTLP_HTTP", &server.otlp_http)
        .env(
            "LLMTRACE_OTLP_GRPC",
            server.otlp_grpc.trim_start_matches("http://"),
        )
        .env("OTEL_SDK_DISABLED", "false")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{name} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    true
}

fn llm_rows(server: &TestServer, query: &str) -> Vec<Value> {
    let reply = server.get(&format!("/v1/traces?limit=100&{query}"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["data"].as_array().unwrap().clone()
}

#[test]
fn otel_sdk_exporters_in_three_encodings() {
    for protocol in ["http/protobuf", "http/json", "grpc"] {
        let server = TestServer::start();
        if !run_client(&server, "otel_exporter.py", &[protocol]) {
            return;
        }
        let rows = llm_rows(&server, "session_id=conv-7");
        assert_eq!(rows.len(), 1, "{protocol}: {rows:?}");
        let row = &rows[0];
        assert_eq!(row["model"], "gpt-4o-mini-2024-07-18", "{protocol}");
        assert_eq!(row["provider"], "openai");
        assert_eq!(row["input_tokens"], 19);
        assert_eq!(row["output_tokens"], 10);
        assert_eq!(row["user_id"], "user-42");
        assert_eq!(row["metadata"]["tier"], "gold");
        assert!(
            row["input_text"]
                .as_str()
                .unwrap()
                .contains("What is the weather in Paris?")
        );
        assert!(
            row["output_text"]
                .as_str()
                .unwrap()
                .contains("Rainy, 12 degrees.")
        );
        let tree = server
            .get(&format!(
                "/api/v1/traces/{}",
                row["trace_id"].as_str().unwrap()
            ))
            .json();
        assert_eq!(
            tree["spans"].as_array().unwrap().len(),
            2,
            "{protocol}: agent and chat spans"
        );
    }
}

/// The LLM call row an instrumentation recorded for `instrumented.py`'s chat call.
fn instrumented_call(which: &str) -> Option<(TestServer, Value)> {
    let server = TestServer::start();
    if !run_client(&server, "instrumented.py", &[which]) {
        return None;
    }
    let rows = llm_rows(&server, "q=parcel");
    assert_eq!(rows.len(), 1, "{which}: {rows:#?}");
    let row = rows[0].clone();
    assert_eq!(row["model"], "gpt-4o-mini-2024-07-18", "{which}");
    assert_eq!(row["provider"], "openai", "{which}");
    assert_eq!(row["input_tokens"], 21, "{which}");
    assert_eq!(row["output_tokens"], 6, "{which}");
    let input = row["input_text"].as_str().unwrap();
    assert!(
        input.contains("You are a shipping assistant.")
            && input.contains("Where is my parcel number 4417?"),
        "{which}: {input:?}"
    );
    assert_eq!(row["output_text"], "Your parcel ships tomorrow.", "{which}");
    Some((server, row))
}

#[test]
fn openinference_instrumentation_of_the_openai_sdk() {
    let Some((_server, row)) = instrumented_call("openinference") else {
        return;
    };
    assert_eq!(row["session_id"], "sess-7");
    assert_eq!(row["user_id"], "user-7");
    assert_eq!(row["metadata"]["tier"], "gold");
}

#[test]
fn otel_v2_instrumentation_with_content_in_log_events_only() {
    // otel-v2 records no session, user or metadata of its own; the content arrives only as
    // a log event that llmtrace joins to the span.
    let Some((server, row)) = instrumented_call("otel-v2") else {
        return;
    };
    let tree = server
        .get(&format!(
            "/api/v1/traces/{}",
            row["trace_id"].as_str().unwrap()
        ))
        .json();
    assert!(
        tree["spans"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["source"] == "log"),
        "{tree:#}"
    );
}

#[test]
fn traceloop_sdk_with_association_properties() {
    let Some((server, row)) = instrumented_call("traceloop") else {
        return;
    };
    assert_eq!(row["session_id"], "sess-7");
    assert_eq!(row["user_id"], "user-7");
    assert_eq!(row["metadata"]["tier"], "gold");
    let tree = server
        .get(&format!(
            "/api/v1/traces/{}",
            row["trace_id"].as_str().unwrap()
        ))
        .json();
    let spans = tree["spans"].as_array().unwrap();
    assert!(
        spans
            .iter()
            .any(|s| s["name"] == "parcel_flow.workflow" && s["kind"] == "chain"),
        "{tree:#}"
    );
}
