//! The search API: `/v1/traces` rows, filters, cursors, trees, sessions, aggregates, and
//! the OpenAPI document checked against what the server does.

use serde_json::{Value, json};

use crate::support::{TestServer, cli, cli_ok};

/// Sends `n` LLM calls spread over sessions, users, models and metadata via OTLP/JSON.
fn seed(server: &TestServer, n: usize) {
    let spans: Vec<Value> = (0..n)
        .map(|i| {
            let attrs = json!([
                {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
                {"key": "gen_ai.provider.name", "value": {"stringValue": if i % 2 == 0 { "openai" } else { "anthropic" }}},
                {"key": "gen_ai.request.model", "value": {"stringValue": format!("model-{}", i % 3)}},
                {"key": "gen_ai.usage.input_tokens", "value": {"intValue": (10 + i).to_string()}},
                {"key": "gen_ai.usage.output_tokens", "value": {"intValue": "5"}},
                {"key": "gen_ai.conversation.id", "value": {"stringValue": format!("session-{}", i % 4)}},
                {"key": "user.id", "value": {"stringValue": format!("user-{}", i % 5)}},
                {"key": "metadata", "value": {"stringValue": json!({"tier": if i % 2 == 0 {"gold"} else {"free"}}).to_string()}},
                {"key": "gen_ai.input.messages", "value": {"stringValue": json!([{"role": "user", "parts": [{"type": "text", "content": format!("question number {i} about {}", if i % 7 == 0 {"refunds"} else {"weather"})}]}]).to_string()}},
                {"key": "gen_ai.output.messages", "value": {"stringValue": json!([{"role": "assistant", "parts": [{"type": "text", "content": format!("answer {i}")}], "finish_reason": "stop"}]).to_string()}}
            ]);
            json!({"traceId": format!("{:032x}", i / 2 + 1), "spanId": format!("{:016x}", i + 1), "name": "chat",
                   "kind": 3, "startTimeUnixNano": (1_795_314_670_000_000_000u64 + i as u64 * 1_000_000_000).to_string(),
                   "endTimeUnixNano": (1_795_314_670_000_000_000u64 + i as u64 * 1_000_000_000 + (i as u64 + 1) * 10_000_000).to_string(),
                   "status": if i % 10 == 9 { json!({"code": 2, "message": "boom"}) } else { json!({}) },
                   "attributes": attrs})
        })
        .collect();
    let body = serde_json::to_vec(&json!({"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "svc"}}]}, "scopeSpans": [{"spans": spans}]}]})).unwrap();
    let reply = server.post("/v1/traces", &[("content-type", "application/json")], &body);
    assert_eq!(reply.status, 200, "{}", reply.text());
}

fn rows(server: &TestServer, query: &str) -> Vec<Value> {
    let reply = server.get(&format!("/v1/traces?{query}"));
    assert_eq!(reply.status, 200, "{query}: {}", reply.text());
    reply.json()["data"].as_array().unwrap().clone()
}

#[test]
fn llm_call_rows_answer_every_documented_filter() {
    let server = TestServer::start();
    seed(&server, 40);
    let all = rows(&server, "limit=100");
    assert_eq!(all.len(), 40);
    let first = &all[0];
    for field in [
        "trace_id",
        "tenant_id",
        "timestamp",
        "model",
        "provider",
        "input_text",
        "output_text",
        "input_tokens",
        "output_tokens",
        "total_cost_usd",
        "latency_ms",
        "status",
        "routing_alias",
        "metadata",
    ] {
        assert!(first.get(field).is_some(), "row lacks {field}: {first}");
    }
    assert_eq!(first["input_text"], "question number 39 about weather");
    assert_eq!(first["tenant_id"], "default");
    assert_eq!(first["timestamp"], "2026-11-22T02:31:49.000000000Z");
    assert_eq!(rows(&server, "model=model-1").len(), 13);
    assert_eq!(rows(&server, "provider=anthropic").len(), 20);
    assert_eq!(rows(&server, "status=error").len(), 4);
    assert_eq!(rows(&server, "user_id=user-3").len(), 8);
    assert_eq!(rows(&server, "session_id=session-2").len(), 10);
    assert_eq!(rows(&server, "metadata.tier=gold").len(), 20);
    assert_eq!(rows(&server, "q=refunds").len(), 6);
    assert_eq!(rows(&server, "q=refunds&metadata.tier=free").len(), 3);
    assert_eq!(
        rows(
            &server,
            "since=2026-11-22T02:31:30Z&until=2026-11-22T02:31:40Z"
        )
        .len(),
        10
    );
    assert_eq!(rows(&server, "tenant_id=other").len(), 0);

    // cursor pages cover everything once, newest first
    let mut seen = Vec::new();
    let mut path = "/v1/traces?limit=7".to_string();
    loop {
        let body = server.get(&path).json();
        seen.extend(
            body["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["timestamp"].as_str().unwrap().to_string()),
        );
        match body["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/traces?limit=7&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 40);
    assert!(seen.windows(2).all(|w| w[0] > w[1]));

    for bad in [
        "status=weird",
        "limit=0",
        "since=notatime",
        "color=blue",
        "cursor=garbage",
        "trace_id=xyz",
    ] {
        let reply = server.get(&format!("/v1/traces?{bad}"));
        assert_eq!(reply.status, 400, "{bad}");
        let message = reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            message.contains(bad.split('=').next().unwrap()),
            "{bad}: {message}"
        );
    }
}

#[test]
fn trees_sessions_and_aggregates() {
    let server = TestServer::start();
    seed(&server, 40);
    let trace = server.get(&format!("/api/v1/traces/{:032x}", 3)).json();
    assert_eq!(trace["spans"].as_array().unwrap().len(), 2);
    assert_eq!(
        server.get(&format!("/api/v1/traces/{:032x}", 999)).status,
        404
    );
    assert_eq!(server.get("/api/v1/traces/nothex").status, 400);

    let session = server.get("/api/v1/sessions/session-1").json();
    let traces = session["traces"].as_array().unwrap();
    assert_eq!(
        traces
            .iter()
            .map(|t| t["spans"].as_array().unwrap().len())
            .sum::<usize>(),
        10
    );
    let starts: Vec<i64> = traces
        .iter()
        .map(|t| t["start_time"].as_i64().unwrap())
        .collect();
    assert!(starts.windows(2).all(|w| w[0] <= w[1]), "traces in order");

    let body = server.get("/api/v1/aggregate?group_by=provider").json();
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let openai = data.iter().find(|r| r["group"][0] == "openai").unwrap();
    assert_eq!(openai["count"], 20);
    assert_eq!(
        openai["input_tokens"],
        (0..40).step_by(2).map(|i| 10 + i).sum::<i64>()
    );
    assert_eq!(openai["error_count"], 0);
    let anthropic = data.iter().find(|r| r["group"][0] == "anthropic").unwrap();
    assert_eq!(anthropic["error_count"], 4);
    // latency of call i is (i+1)*10 ms: p50 of the odd calls 2,4,…,40 (×10) is 200 ms,
    // reported from a sketch within 1%
    let p50 = anthropic["latency_p50_ms"].as_f64().unwrap();
    assert!((p50 - 200.0).abs() <= 2.0, "p50 {p50}");
    let bucketed = server
        .get("/api/v1/aggregate?bucket=10s&group_by=model")
        .json();
    assert!(
        bucketed["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["bucket_start"].is_i64())
    );
    assert_eq!(server.get("/api/v1/aggregate?group_by=colour").status, 400);
}

#[test]
fn openapi_document_matches_the_server() {
    let server = TestServer::start();
    seed(&server, 4);
    let doc = server.get("/api/openapi.json").json();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 9);
    for (path, operations) in paths {
        for (method, operation) in operations.as_object().unwrap() {
            let concrete = path
                .replace("{trace_id}", &format!("{:032x}", 1))
                .replace("{session_id}", "session-0");
            if method == "post" {
                let reply = server.post(&concrete, &[("content-type", "application/json")], b"{}");
                // served: OTLP accepts an empty export; others refuse `{}` by naming what is missing
                assert!(
                    reply.status == 200 || (reply.status == 400 && reply.text().contains("error")),
                    "POST {path}: {} {}",
                    reply.status,
                    reply.text()
                );
                continue;
            }
            // Every documented query parameter must be accepted (not refused as unknown).
            let query: Vec<String> = operation["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "query")
                .map(|p| p["name"].as_str().unwrap())
                .filter(|name| {
                    ![
                        "limit",
                        "cursor",
                        "since",
                        "until",
                        "trace_id",
                        "span_id",
                        "status",
                        "kind",
                        "source",
                        "bucket",
                        "tolerance",
                        "format",
                        "order",
                        "group_by",
                        "project",
                        "tenant_id",
                        "timeout_ms",
                    ]
                    .contains(name)
                        && !name.starts_with("min_")
                        && !name.starts_with("max_")
                })
                .map(|name| match (path.as_str(), name) {
                    // the statement must be one to run: "x" is refused as malformed SQL
                    ("/api/v1/sql", "q") => "q=SELECT%20count(*)%20FROM%20spans".to_string(),
                    _ => format!("{name}=x"),
                })
                .collect();
            let reply = server.get(&format!("{concrete}?{}", query.join("&")));
            assert!(
                reply.status == 200 || reply.status == 404,
                "GET {path}?{}: {} {}",
                query.join("&"),
                reply.status,
                reply.text()
            );
            assert!(
                !reply.text().contains("unknown parameter"),
                "GET {path}: {}",
                reply.text()
            );
        }
    }
    // …and an undocumented route is not served.
    assert_eq!(server.get("/api/v1/nothing").status, 404);
}

#[test]
fn query_cli_prints_matching_calls() {
    let server = TestServer::start();
    seed(&server, 12);
    let lines: Vec<Value> = cli_ok(&["query", "--server", &server.http, "q=refunds", "--json"])
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "calls 0 and 7 mention refunds");
    assert!(
        lines
            .iter()
            .all(|row| row["input_text"].as_str().unwrap().contains("refunds"))
    );

    let text = cli_ok(&[
        "query",
        "--server",
        &server.http,
        "model=model-2",
        "--limit",
        "3",
    ]);
    assert!(text.starts_with("TIME"), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.contains("model-2")).count(),
        3,
        "{text}"
    );
    assert!(text.contains("(more: cursor="), "{text}");

    let bad = cli(&["query", "--server", &server.http, "status=sideways"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("status"));
}

fn url_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[test]
fn sql_answers_over_http_and_in_the_cli() {
    let server = TestServer::start();
    seed(&server, 40);
    let statement = "SELECT provider, count(*) AS n, sum(input_tokens) AS tokens FROM spans \
                     GROUP BY provider ORDER BY provider";
    let reply = server.get(&format!("/api/v1/sql?q={}", url_encoded(statement)));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let answer = reply.json();
    // calls 0, 2, … 38 went to openai with 10 + i input tokens; the odd ones to anthropic
    assert_eq!(
        answer["rows"],
        json!([["anthropic", 20, 600], ["openai", 20, 580]])
    );
    assert_eq!(answer["columns"][1], json!({"name": "n", "type": "Int64"}));
    assert_eq!(answer["truncated"], json!(false));
    assert!(answer["elapsed_ms"].as_f64().is_some());
    // the same numbers as the aggregate API
    let aggregate = server.get("/api/v1/aggregate?group_by=provider").json();
    let counted: Vec<(String, u64)> = aggregate["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row["group"][0].as_str().unwrap().to_string(),
                row["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(counted.len(), 2, "{aggregate}");
    assert!(counted.iter().all(|(_, count)| *count == 20), "{aggregate}");

    // POST, another project: its own (empty) tables
    let body = json!({"sql": "SELECT count(*) FROM spans", "project": "other"});
    let reply = server.post(
        "/api/v1/sql",
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["rows"], json!([[0]]));
    // metadata through json_get, pushed down to the index
    let body =
        json!({"sql": "SELECT count(*) FROM spans WHERE json_get(metadata, 'tier') = 'gold'"});
    let reply = server.post("/api/v1/sql", &[], body.to_string().as_bytes());
    assert_eq!(reply.json()["rows"], json!([[20]]), "{}", reply.text());

    // refusals name their reason
    for (request, reason) in [
        (json!({"sql": "DROP TABLE spans"}), "DDL"),
        (
            json!({"sql": "SELECT * FROM spans", "max_scan_rows": 5}),
            "budget of 5",
        ),
        (json!({"sql": "SELECT nonsense FROM spans"}), "nonsense"),
        (json!({"statement": "SELECT 1"}), "unknown parameter"),
        (json!({"sql": "  "}), "no statement"),
        (json!({"sql": "SELECT 1", "max_rows": 0}), "max_rows"),
        (json!(["SELECT 1"]), "JSON object"),
    ] {
        let reply = server.post("/api/v1/sql", &[], request.to_string().as_bytes());
        assert_eq!(reply.status, 400, "{request}: {}", reply.text());
        let message = reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(message.contains(reason), "{request}: {message}");
    }

    // the CLI prints a table, and a refusal with its reason
    let text = cli_ok(&["sql", "--server", &server.http, statement]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "provider   n   tokens", "{text}");
    assert_eq!(lines[2], "anthropic  20  600", "{text}");
    assert_eq!(lines.last(), Some(&"(2 rows)"), "{text}");
    let refused = cli(&["sql", "--server", &server.http, "DELETE FROM spans"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("400"));
}
