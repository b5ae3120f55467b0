//! The gateway with the real `openai` and `anthropic` SDKs: every call made directly to a
//! fake upstream and through llmtrace must give the client the same result, and the
//! recorded spans must hold what the call carried.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::python::{python, script};
use crate::support::{TestServer, skip};

/// The fake upstream process (tests/python/fake_llm.py); killed on drop.
pub struct FakeLlm {
    child: Child,
    pub url: String,
}

impl FakeLlm {
    pub fn start() -> Option<FakeLlm> {
        let Some(python) = python() else {
            skip("no Python venv with the client packages (.venv; .ci/run builds it)");
            return None;
        };
        let mut child = Command::new(python)
            .arg(script("fake_llm.py"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().strip_prefix("port ").unwrap().to_string();
        Some(FakeLlm {
            child,
            url: format!("http://127.0.0.1:{port}"),
        })
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn gateway_server(providers: &[String]) -> (tempfile::TempDir, TestServer) {
    let temp = tempfile::tempdir().unwrap();
    let mut flags = Vec::new();
    for provider in providers {
        flags.push("--provider");
        flags.push(provider.as_str());
    }
    let server = TestServer::start_in(&temp.path().join("data"), &flags);
    (temp, server)
}

/// The spans recorded for one scenario (tagged by user id), waiting up to 10 s for `count`.
pub fn spans_of(server: &TestServer, user: &str, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let spans = server.all_spans(&format!("&user_id={user}"));
        if spans.len() >= count || Instant::now() > deadline {
            assert_eq!(spans.len(), count, "{user}: {spans:#?}");
            return spans;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn one(server: &TestServer, user: &str) -> Value {
    spans_of(server, user, 1).remove(0)
}

#[test]
fn openai_and_anthropic_sdks_get_what_they_would_get_directly_and_calls_are_recorded() {
    let Some(upstream) = FakeLlm::start() else {
        return;
    };
    let (_temp, server) = gateway_server(&[
        format!("fake={}/v1", upstream.url),
        format!("anthropic={}/v1", upstream.url),
    ]);
    let output = Command::new(python().unwrap())
        .arg(script("gateway_client.py"))
        .args([&server.http, &upstream.url])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "gateway_client.py failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let facts: Value = serde_json::from_slice(
        output
            .stdout
            .split(|b| *b == b'\n')
            .rfind(|line| !line.is_empty())
            .unwrap(),
    )
    .unwrap();
    // the last scenario is recorded once all four of its calls are
    let turns = spans_of(&server, "multi-turn", 4);

    let chat = one(&server, "chat-plain");
    assert_eq!(chat["trace_id"], facts["chat_plain_trace_id"]);
    assert_eq!(chat["kind"], "llm");
    assert_eq!(chat["source"], "gateway");
    assert_eq!(chat["provider"], "fake");
    assert_eq!(chat["model"], "gpt-4o-mini-2024-07-18");
    assert_eq!(chat["request_model"], "gpt-4o-mini");
    assert_eq!(chat["status"], "ok");
    assert_eq!(chat["http_status"], 200);
    assert_eq!(chat["stream"], false);
    assert_eq!(chat["finish_reason"], "stop");
    assert_eq!(
        (
            &chat["input_tokens"],
            &chat["output_tokens"],
            &chat["cached_input_tokens"],
            &chat["reasoning_tokens"],
            &chat["total_tokens"]
        ),
        (&21.into(), &6.into(), &4.into(), &2.into(), &27.into())
    );
    assert_eq!(chat["session_id"], "sess-1");
    assert_eq!(chat["metadata"]["tier"], "gold");
    assert_eq!(chat["metadata"]["team"], "search");
    assert_eq!(chat["temperature"], 0.2);
    assert_eq!(chat["max_tokens"], 50);
    assert_eq!(chat["input"][0]["role"], "system");
    assert_eq!(
        chat["input"][1]["content"][0]["text"],
        "Where is my parcel number 4417?"
    );
    assert_eq!(chat["output_text"], "Your parcel ships tomorrow.");
    assert_eq!(chat["attributes"]["gen_ai.response.id"], "chatcmpl-fake1");
    assert!(chat["duration_ms"].as_f64().unwrap() > 0.0);

    for scenario in ["chat-stream", "chat-stream-usage"] {
        let span = one(&server, scenario);
        assert_eq!(span["stream"], true, "{scenario}");
        assert_eq!(
            span["output_text"], "Your parcel ships tomorrow.",
            "{scenario}"
        );
        // usage is there even when the client did not ask for it: the gateway did
        assert_eq!(span["input_tokens"], 21, "{scenario}");
        assert_eq!(span["output_tokens"], 6, "{scenario}");
        let ttft = span["time_to_first_token_ms"].as_f64().unwrap();
        assert!(ttft > 0.0 && ttft <= span["duration_ms"].as_f64().unwrap());
    }
    for scenario in ["chat-tools", "chat-tools-stream"] {
        let span = one(&server, scenario);
        let call = &span["output"][0]["tool_calls"][0];
        assert_eq!(call["name"], "get_weather", "{scenario}: {span:#}");
        assert_eq!(call["arguments"], "{\"city\":\"Paris\"}", "{scenario}");
        assert_eq!(span["finish_reason"], "tool_calls", "{scenario}");
        assert_eq!(span["tools"][0]["function"]["name"], "get_weather");
    }
    one(&server, "chat-async");

    for scenario in ["responses", "responses-stream"] {
        let span = one(&server, scenario);
        assert_eq!(span["operation"], "responses");
        assert_eq!(span["model"], "gpt-4.1-mini-2026-01-01", "{scenario}");
        assert_eq!(span["input_tokens"], 30, "{scenario}");
        assert_eq!(span["output_tokens"], 7, "{scenario}");
        assert_eq!(span["output_text"], "It is sunny in Paris.", "{scenario}");
        assert!(
            span["input_text"]
                .as_str()
                .unwrap()
                .contains("Weather in Paris?")
        );
        assert_eq!(span["attributes"]["gen_ai.response.id"], "resp_fake1");
    }
    assert!(
        one(&server, "responses")["input_text"]
            .as_str()
            .unwrap()
            .contains("Answer briefly.")
    );
    assert!(one(&server, "responses-stream")["time_to_first_token_ms"].is_number());

    let embeddings = one(&server, "embeddings");
    assert_eq!(embeddings["kind"], "embedding");
    assert_eq!(embeddings["input_tokens"], 10);
    assert_eq!(embeddings["attributes"]["llmtrace.embeddings"]["count"], 2);
    assert_eq!(
        embeddings["attributes"]["llmtrace.embeddings"]["dimensions"],
        4
    );
    assert!(
        embeddings["input_text"]
            .as_str()
            .unwrap()
            .contains("parcel 4417")
    );
    assert_eq!(
        one(&server, "embeddings-float")["attributes"]["llmtrace.embeddings"]["dimensions"],
        4
    );
    assert_eq!(one(&server, "models")["kind"], "other");

    let error = one(&server, "error-429");
    assert_eq!(error["status"], "error");
    assert_eq!(error["http_status"], 429);
    assert_eq!(error["error_type"], "rate_limit_error");
    assert!(
        error["status_message"]
            .as_str()
            .unwrap()
            .contains("fake upstream says 429")
    );

    for scenario in ["anthropic", "anthropic-stream"] {
        let span = one(&server, scenario);
        assert_eq!(span["provider"], "anthropic", "{scenario}");
        assert_eq!(span["model"], "claude-sonnet-4-5");
        // 12 fresh + 5 cache reads + 3 cache writes
        assert_eq!(span["input_tokens"], 20, "{scenario}");
        assert_eq!(span["cached_input_tokens"], 5, "{scenario}");
        assert_eq!(span["output_tokens"], 9, "{scenario}");
        assert_eq!(span["output_text"], "Bonjour! Il fait beau.", "{scenario}");
        assert_eq!(span["finish_reason"], "end_turn");
    }
    assert!(
        one(&server, "anthropic")["input_text"]
            .as_str()
            .unwrap()
            .contains("Be polite.")
    );

    let child = one(&server, "traceparent");
    assert_eq!(child["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(child["parent_span_id"], "00f067aa0ba902b7");

    spans_of(&server, "trace-off", 0);
    for scenario in ["metadata-only", "store-false"] {
        let span = one(&server, scenario);
        assert_eq!(span["input"], Value::Null, "{scenario}");
        assert_eq!(span["output_text"], "", "{scenario}");
        assert_eq!(span["input_tokens"], 21, "{scenario}: usage is metadata");
        assert_eq!(span["attributes"]["llmtrace.content"], "metadata-only");
    }

    // newest first: the unrelated conversation, then the three turns of one session
    let sessions: Vec<&str> = turns
        .iter()
        .map(|s| s["session_id"].as_str().unwrap())
        .collect();
    assert!(
        sessions.iter().all(|s| s.starts_with("auto-")),
        "{sessions:?}"
    );
    assert_ne!(sessions[0], sessions[1], "{sessions:?}");
    assert!(
        sessions[1] == sessions[2] && sessions[2] == sessions[3],
        "{sessions:?}"
    );
    assert!(
        turns
            .iter()
            .all(|s| s["attributes"]["llmtrace.session_inferred"] == true)
    );

    let metrics = server.get("/metrics").text();
    assert!(
        metrics.contains("llmtrace_gateway_not_traced_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("llmtrace_gateway_dropped_total 0"),
        "{metrics}"
    );
    let stored = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing: {metrics}"))
    };
    assert!(stored("llmtrace_store_rows") >= 1.0, "{metrics}");
    assert_eq!(stored("llmtrace_store_append_wait_seconds_total"), 0.0);
}
