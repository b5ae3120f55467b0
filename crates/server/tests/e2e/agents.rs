//! OpenAI Agents SDK ingest: the exporter's captured batches replayed (in order, then all
//! again), and a real `openai-agents` run with a handoff and a tool, its model calls through
//! the gateway, joined with the SDK's `response` spans.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::gateway::{FakeLlm, gateway_server};
use crate::python::{python, script};
use crate::support::{TestServer, shared_fixtures};

fn ingest(server: &TestServer, body: &[u8]) -> Value {
    let reply = server.post(
        "/v1/traces/ingest",
        &[
            ("content-type", "application/json"),
            ("openai-beta", "traces=v1"),
            ("authorization", "Bearer sk-agents-test"),
        ],
        body,
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()
}

fn trace(server: &TestServer, trace_id: &str) -> Vec<Value> {
    let reply = server.get(&format!("/api/v1/traces/{trace_id}"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json();
    body["spans"]
        .as_array()
        .or_else(|| body["data"].as_array())
        .or_else(|| body.as_array())
        .unwrap_or_else(|| panic!("no spans in {body}"))
        .clone()
}

fn by_name<'a>(spans: &'a [Value], name: &str) -> Vec<&'a Value> {
    spans.iter().filter(|s| s["name"] == name).collect()
}

fn count_kind(spans: &[Value], kind: &str) -> usize {
    spans.iter().filter(|s| s["kind"] == kind).count()
}

#[test]
fn exporter_batches_map_to_trees_with_sessions_and_survive_resends() {
    let server = TestServer::start();
    let folder = shared_fixtures().join("b_agents_sdk");
    let bodies: Vec<Vec<u8>> = [
        "016_b_agents_sdk_agents_ingest.json",
        "018_b_agents_sdk_agents_ingest.json",
        "021_b2_agents_error_stream_agents_ingest.json",
    ]
    .iter()
    .map(|name| {
        let capture: Value =
            serde_json::from_slice(&std::fs::read(folder.join(name)).unwrap()).unwrap();
        serde_json::to_vec(&capture["body"]).unwrap()
    })
    .collect();
    for round in 0..2 {
        for body in &bodies {
            let answer = ingest(&server, body);
            assert_eq!(answer["rejected"], 0, "round {round}: {answer}");
        }
    }

    // default Responses model: task → agent → turns → response + function
    let run = trace(&server, "76966453ff6347ca80df3451049612bc");
    assert_eq!(run.len(), 7, "sent twice, stored once: {run:#?}");
    assert_eq!(count_kind(&run, "llm"), 2);
    assert_eq!(count_kind(&run, "tool"), 1);
    assert_eq!(count_kind(&run, "agent"), 1);
    assert_eq!(count_kind(&run, "chain"), 3);
    let agent = by_name(&run, "WeatherAgent")[0];
    let tool = by_name(&run, "get_weather")[0];
    assert_eq!(tool["input"]["city"], "Paris");
    assert_eq!(tool["output"], "sunny in Paris");
    let task = run.iter().find(|s| s["parent_span_id"].is_null()).unwrap();
    assert!(
        task["name"].as_str().unwrap().starts_with("task"),
        "{task:#}"
    );
    assert_eq!(agent["parent_span_id"], task["span_id"]);
    let response = run.iter().find(|s| s["kind"] == "llm").unwrap();
    assert_eq!(response["input_tokens"], 36);
    assert_eq!(response["output_tokens"], 12);
    assert!(
        response["attributes"]["gen_ai.response.id"]
            .as_str()
            .unwrap()
            .starts_with("resp_")
    );
    assert_eq!(response["metadata"]["workflow"], "Agent workflow");
    assert_eq!(response["source"], "agents_sdk");

    // Chat Completions model inside trace("chat-workflow", group_id="conv_123", metadata):
    // the trace object came at the end of the previous batch
    let chat = trace(&server, "3cf925c8365b4d62ac09f9921e69a106");
    assert_eq!(chat.len(), 7);
    assert!(
        chat.iter().all(|s| s["session_id"] == "conv_123"),
        "{chat:#?}"
    );
    assert!(chat.iter().all(|s| s["user_id"] == "u-42"));
    assert!(chat.iter().all(|s| s["metadata"]["env"] == "dev"));
    let generation = chat.iter().find(|s| s["kind"] == "llm").unwrap();
    assert_eq!(generation["model"], "gpt-4o-mini");
    assert!(!generation["input_text"].as_str().unwrap().is_empty());
    assert!(
        generation["total_cost_usd"].as_f64().unwrap() > 0.0,
        "{generation:#}"
    );
    let session = server.get("/api/v1/sessions/conv_123").json();
    assert!(
        session
            .to_string()
            .contains("3cf925c8365b4d62ac09f9921e69a106")
    );

    // manual trace: custom, guardrail, handoff, function, generation spans
    let manual = trace(&server, "cca38869868643aab3eb91afb65f5eb8");
    for kind in ["guardrail", "handoff", "tool", "llm"] {
        assert_eq!(count_kind(&manual, kind), 1, "{kind}: {manual:#?}");
    }
    assert!(manual.iter().all(|s| s["session_id"] == "thread_9"));

    // a tool that raised: error status with the SDK's message
    let flaky = trace(&server, "c12be0590a094311bc5ad6c7338e4dea");
    let failed = by_name(&flaky, "get_weather")[0];
    assert_eq!(failed["status"], "error");
    assert_eq!(failed["status_message"], "Error running tool (non-fatal)");

    // what cannot be read is refused by name
    let reply = server.post(
        "/v1/traces/ingest",
        &[("content-type", "application/json")],
        b"{\"data\": 7}",
    );
    assert_eq!(reply.status, 400);
    assert!(reply.text().contains("data"), "{}", reply.text());
    let answer = ingest(
        &server,
        br#"{"data": [{"object": "trace.span", "id": "span_x", "trace_id": "trace_y"}]}"#,
    );
    assert_eq!(answer["rejected"], 1);
    assert!(answer["errors"][0].as_str().unwrap().contains("started_at"));
}

#[test]
fn a_real_agents_sdk_run_through_the_gateway_shows_its_prompts() {
    let Some(upstream) = FakeLlm::start() else {
        return;
    };
    let (_temp, server) = gateway_server(&[format!("fake={}/v1", upstream.url)]);
    let output = Command::new(python().unwrap())
        .arg(script("agents_run.py"))
        .env("LLMTRACE_HTTP", &server.http)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(result["final"], "It is sunny in Paris.");
    assert_eq!(result["last_agent"], "WeatherAgent");
    let trace_id = result["trace_id"]
        .as_str()
        .unwrap()
        .trim_start_matches("trace_")
        .to_string();

    // the SDK's response spans take the gateway's record of each model call
    let deadline = Instant::now() + Duration::from_secs(20);
    let spans = loop {
        let spans = trace(&server, &trace_id);
        let joined = spans
            .iter()
            .filter(|s| s["kind"] == "llm" && !s["input_text"].as_str().unwrap_or("").is_empty())
            .count();
        if joined == 3 || Instant::now() > deadline {
            break spans;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        spans.iter().all(|s| s["session_id"] == "conv-agents-1"),
        "{spans:#?}"
    );
    assert!(spans.iter().all(|s| s["user_id"] == "u-agents"));
    assert_eq!(spans[0]["metadata"]["workflow"], "weather-workflow");
    let agents: Vec<&str> = spans
        .iter()
        .filter(|s| s["kind"] == "agent")
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(
        agents.contains(&"Triage") && agents.contains(&"WeatherAgent"),
        "{agents:?}"
    );
    assert_eq!(count_kind(&spans, "handoff"), 1, "{spans:#?}");
    assert_eq!(by_name(&spans, "get_weather").len(), 1);
    let calls: Vec<&Value> = spans.iter().filter(|s| s["kind"] == "llm").collect();
    assert_eq!(calls.len(), 3, "{spans:#?}");
    for call in &calls {
        assert_eq!(call["model"], "gpt-4o-mini-2026-01-01", "{call:#}");
        assert_eq!(call["provider"], "fake");
        assert!(
            call["input_text"]
                .as_str()
                .unwrap()
                .contains("weather in Paris"),
            "{call:#}"
        );
        assert_eq!(call["input_tokens"], 30);
        assert!(call["total_cost_usd"].as_f64().unwrap() > 0.0, "{call:#}");
        assert!(call["attributes"]["llmtrace.joined_from"].is_object());
    }
    // the gateway's own spans became stubs: every call is counted once
    let totals = server.get("/api/v1/aggregate?kind=llm&since=1h").json();
    assert_eq!(totals["data"][0]["count"], 3, "{totals:#}");
}
