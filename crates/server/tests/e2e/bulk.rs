//! JSON trace logs over HTTP, and `llmtrace export` / `llmtrace import` between two real
//! servers: the round trip is exact, importing twice stores once, bad lines are reported by
//! number, and pandas and DuckDB read the Parquet export.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use crate::python::{python, script};
use crate::support::{TestServer, cli, shared_fixtures, skip};

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

fn rfc3339(ns: i64) -> String {
    humantime::format_rfc3339_nanos(
        std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns as u64),
    )
    .to_string()
}

/// Trace-log lines: `n` LLM calls of one thread, plus one tool step.
fn log_lines(n: usize) -> String {
    let end = now_ns() - 60_000_000_000;
    let mut lines = String::new();
    for i in 0..n {
        let line = json!({
            "timestamp": rfc3339(end + i as i64 * 1_000_000_000),
            "level": "info",
            "message": "llm call finished",
            "trace": {"traceId": format!("{:032x}", 0xabc000 + i), "spanId": format!("{:016x}", 0x1000 + i),
                      "operation": "openai.chat", "duration": "4283ms", "status": "ok"},
            "attributes": {"llm.vendor": "openai", "llm.request.model": "gpt-4o-mini",
                           "llm.usage.prompt_tokens": 1000, "llm.usage.completion_tokens": 500,
                           "user.id": "log-user", "thread.id": "thread-1",
                           "gen_ai.prompt.0.role": "user", "gen_ai.prompt.0.content": format!("question {i}, with \"quotes\", commas\nand a newline"),
                           "gen_ai.completion.0.role": "assistant", "gen_ai.completion.0.content": format!("answer {i}")}
        });
        lines.push_str(&line.to_string());
        lines.push('\n');
    }
    lines.push_str(&json!({
        "timestamp": rfc3339(end), "level": "error", "message": "tool timed out",
        "trace": {"traceId": format!("{:032x}", 0xabc000), "spanId": "00000000000000ff",
                  "parentSpanId": format!("{:016x}", 0x1000), "operation": "tool.search", "duration": 12.5, "status": "error"},
        "attributes": {"tool.name": "search"}
    }).to_string());
    lines.push('\n');
    lines
}

fn export(server: &TestServer, format: &str, path: &Path, filters: &[&str]) {
    let mut args = vec![
        "export",
        "--server",
        &server.http,
        "--format",
        format,
        "--output",
        path.to_str().unwrap(),
    ];
    args.extend_from_slice(filters);
    let output = cli(&args);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn import(server: &TestServer, paths: &[&Path]) -> String {
    let mut args = vec!["import".to_string(), "--server".into(), server.http.clone()];
    args.extend(paths.iter().map(|p| p.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = cli(&args);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn count(server: &TestServer) -> u64 {
    let totals = server.get("/api/v1/aggregate?since=30d").json();
    totals["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["count"].as_u64().unwrap())
        .sum()
}

#[test]
fn json_trace_logs_are_spans_and_bad_lines_are_named() {
    let server = TestServer::start();
    let mut body = log_lines(2);
    body.insert_str(0, "{\"not\": \"a log line\"}\n");
    let reply = server.post(
        "/api/v1/ingest/logs",
        &[("content-type", "application/x-ndjson")],
        body.as_bytes(),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    let answer = reply.json();
    assert_eq!(answer["accepted"], 3);
    assert_eq!(answer["rejected"], 1);
    assert_eq!(answer["errors"][0]["line"], 1);
    assert!(
        answer["errors"][0]["error"]
            .as_str()
            .unwrap()
            .contains("trace")
    );

    let rows = server.get("/v1/traces?session_id=thread-1").json();
    let calls = rows["data"].as_array().unwrap();
    assert_eq!(calls.len(), 2, "{rows:#}");
    let call = &calls[0];
    assert_eq!(call["model"], "gpt-4o-mini");
    assert_eq!(call["user_id"], "log-user");
    assert_eq!(call["latency_ms"], 4283.0);
    // $0.15 / $0.60 per million: 1000 in + 500 out
    assert!(
        (call["total_cost_usd"].as_f64().unwrap() - 0.00045).abs() < 1e-12,
        "{call:#}"
    );
    assert!(call["input_text"].as_str().unwrap().starts_with("question"));
    let tool = server
        .get(&format!("/api/v1/traces/{:032x}", 0xabc000))
        .json();
    let failed = tool["spans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "tool.search")
        .unwrap()
        .clone();
    assert_eq!(failed["status"], "error");
    assert_eq!(failed["status_message"], "tool timed out");
    assert_eq!(failed["parent_span_id"], format!("{:016x}", 0x1000));

    let all_bad = server.post("/api/v1/ingest/logs", &[], b"nonsense\n");
    assert_eq!(all_bad.status, 400);
    assert_eq!(all_bad.json()["errors"][0]["line"], 1);
}

#[test]
fn export_then_import_round_trips_exactly_and_analysts_can_read_it() {
    let temp = tempfile::tempdir().unwrap();
    let source = TestServer::start();
    // three ways in: trace logs, an Agents SDK batch, OTLP/JSON (via import, as files)
    let logs = temp.path().join("app.log.jsonl");
    std::fs::write(&logs, log_lines(5)).unwrap();
    let agents = temp.path().join("agents.json");
    let capture: Value = serde_json::from_slice(
        &std::fs::read(shared_fixtures().join("b_agents_sdk/018_b_agents_sdk_agents_ingest.json"))
            .unwrap(),
    )
    .unwrap();
    std::fs::write(
        &agents,
        serde_json::to_vec_pretty(&capture["body"]).unwrap(),
    )
    .unwrap();
    let otlp = temp.path().join("otel.jsonl");
    let start = now_ns() - 120_000_000_000;
    let otlp_request = json!({"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "svc"}}]},
    "scopeSpans": [{"spans": [{"traceId": format!("{:032x}", 77), "spanId": format!("{:016x}", 77), "name": "chat", "kind": 3,
        "startTimeUnixNano": start.to_string(), "endTimeUnixNano": (start + 5_000_000).to_string(),
        "attributes": [
            {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
            {"key": "gen_ai.request.model", "value": {"stringValue": "gpt-4o"}},
            {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "200"}},
            {"key": "gen_ai.usage.output_tokens", "value": {"intValue": "20"}},
            {"key": "gen_ai.input.messages", "value": {"stringValue": json!([{"role": "user", "parts": [{"type": "text", "content": "Is it raining?"}]}]).to_string()}},
            {"key": "gen_ai.output.messages", "value": {"stringValue": json!([{"role": "assistant", "parts": [{"type": "text", "content": "No."}], "finish_reason": "stop"}]).to_string()}}
        ]}]}]}]});
    std::fs::write(&otlp, format!("{otlp_request}\nthis line is broken\n")).unwrap();
    let report = import(&source, &[&logs, &agents, &otlp]);
    assert!(report.contains("otel.jsonl line 2"), "{report}");
    let seeded = count(&source);
    // 6 log lines; the chat workflow's 7 spans and a manual trace's 6; the OTLP call
    assert_eq!(seeded, 6 + 7 + 6 + 1);

    let first = temp.path().join("first.jsonl");
    export(&source, "jsonl", &first, &["since=30d"]);
    let target = TestServer::start();
    import(&target, &[&first]);
    import(&target, &[&first]);
    assert_eq!(count(&target), seeded, "imported twice, stored once");
    let second = temp.path().join("second.jsonl");
    export(&target, "jsonl", &second, &["since=30d"]);
    let (a, b) = (
        std::fs::read_to_string(&first).unwrap(),
        std::fs::read_to_string(&second).unwrap(),
    );
    assert_eq!(a.lines().count() as u64, seeded);
    assert!(a == b, "the round trip changed spans");

    // fine-tuning lines: successful chat calls with both sides
    let tune = temp.path().join("tune.jsonl");
    export(&source, "openai-finetune", &tune, &["since=30d"]);
    let examples: Vec<Value> = std::fs::read_to_string(&tune)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(examples.len() >= 6, "{examples:#?}");
    let rain = examples
        .iter()
        .find(|e| e.to_string().contains("Is it raining?"))
        .unwrap();
    assert_eq!(
        rain["messages"],
        json!([{"role": "user", "content": "Is it raining?"}, {"role": "assistant", "content": "No."}])
    );
    assert!(
        examples
            .iter()
            .all(|e| e["messages"].as_array().unwrap().last().unwrap()["role"] == "assistant")
    );

    let bad = source.get("/api/v1/export?format=xml");
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("xml"));

    // Parquet and CSV, read by pandas and DuckDB
    let parquet = temp.path().join("spans.parquet");
    let csv = temp.path().join("spans.csv");
    export(&source, "parquet", &parquet, &["since=30d"]);
    export(&source, "csv", &csv, &["since=30d"]);
    let Some(python) = python() else {
        skip("no Python venv with pandas and duckdb (.venv; .ci/run builds it)");
        return;
    };
    let output = Command::new(python)
        .arg(script("read_export.py"))
        .arg(&parquet)
        .arg(&csv)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let read: Value = serde_json::from_slice(&output.stdout).unwrap();
    let cost: f64 = source.get("/api/v1/aggregate?since=30d").json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["total_cost_usd"].as_f64().unwrap())
        .sum();
    assert_eq!(read["pandas_rows"], seeded);
    assert_eq!(read["duckdb_rows"], seeded);
    assert_eq!(read["csv_rows"], seeded);
    for key in ["pandas_cost", "duckdb_cost", "csv_cost"] {
        assert!(
            (read[key].as_f64().unwrap() - cost).abs() < 1e-9,
            "{key}: {read:#}"
        );
    }
    assert!(
        read["start_time_dtype"]
            .as_str()
            .unwrap()
            .starts_with("datetime64"),
        "{read:#}"
    );
    assert!(
        read["csv_texts"].as_array().unwrap().iter().any(|t| t
            .as_str()
            .unwrap()
            .contains("\"quotes\", commas\nand a newline")),
        "CSV quoting: {read:#}"
    );
}
