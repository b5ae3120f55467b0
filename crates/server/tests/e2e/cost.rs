//! Costs end to end: calls priced at ingest, reported costs kept, unknown models counted,
//! price edits applied without a restart, `llmtrace reprice`, and `llmtrace reconcile`
//! against a fake OpenAI/Anthropic usage-and-cost report server run by the test.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::support::{TestServer, cli_ok};

const DAY_NS: i64 = 86_400_000_000_000;

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// One OTLP/JSON chat span with GenAI attributes.
fn call_span(
    id: u64,
    start: i64,
    provider: &str,
    model: &str,
    usage: Option<(i64, i64)>,
    extra: Value,
) -> Value {
    let mut attrs = vec![
        json!({"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}}),
        json!({"key": "gen_ai.provider.name", "value": {"stringValue": provider}}),
        json!({"key": "gen_ai.request.model", "value": {"stringValue": model}}),
        json!({"key": "gen_ai.input.messages", "value": {"stringValue": json!([{"role": "user", "parts": [{"type": "text", "content": "How much is this?"}]}]).to_string()}}),
        json!({"key": "gen_ai.output.messages", "value": {"stringValue": json!([{"role": "assistant", "parts": [{"type": "text", "content": "Let me count."}], "finish_reason": "stop"}]).to_string()}}),
    ];
    if let Some((input, output)) = usage {
        attrs.push(
            json!({"key": "gen_ai.usage.input_tokens", "value": {"intValue": input.to_string()}}),
        );
        attrs.push(
            json!({"key": "gen_ai.usage.output_tokens", "value": {"intValue": output.to_string()}}),
        );
    }
    attrs.extend(extra.as_array().cloned().unwrap_or_default());
    json!({"traceId": format!("{id:032x}"), "spanId": format!("{id:016x}"), "name": "chat", "kind": 3,
           "startTimeUnixNano": start.to_string(), "endTimeUnixNano": (start + 1_000_000).to_string(),
           "attributes": attrs})
}

fn send(server: &TestServer, spans: Vec<Value>) {
    let body = json!({"resourceSpans": [{"resource": {"attributes": []}, "scopeSpans": [{"spans": spans}]}]});
    let reply = server.post(
        "/v1/traces",
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
}

fn row(server: &TestServer, id: u64) -> Value {
    let reply = server.get(&format!("/v1/traces?trace_id={id:032x}"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["data"][0].clone()
}

fn close(value: &Value, expected: f64) -> bool {
    value.as_f64().is_some_and(|v| (v - expected).abs() < 1e-12)
}

fn metric(server: &TestServer, name: &str) -> u64 {
    let text = server.get("/metrics").text();
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
        .parse()
        .unwrap()
}

#[test]
fn calls_are_priced_at_ingest_with_a_breakdown() {
    let server = TestServer::start();
    let start = now_ns() - 60_000_000_000;
    send(
        &server,
        vec![
            // gpt-4o-mini: $0.15 / $0.60 per million → 1000 in + 500 out = $0.00045
            call_span(
                1,
                start,
                "openai",
                "gpt-4o-mini-2024-07-18",
                Some((1000, 500)),
                json!([]),
            ),
            // a cost the instrumentation computed is kept and marked as reported
            call_span(
                2,
                start,
                "openai",
                "gpt-4o",
                Some((10, 10)),
                json!([{"key": "llm.cost.total", "value": {"doubleValue": 1.23}}]),
            ),
            // a model nobody priced: no cost, counted
            call_span(
                3,
                start,
                "vllm",
                "mystery-model-13b",
                Some((10, 10)),
                json!([]),
            ),
            // cache writes come in as the GenAI attribute; claude-haiku-4-5 $1 in, $1.25 5m write, $5 out
            call_span(
                4,
                start,
                "anthropic",
                "claude-haiku-4-5",
                Some((3000, 100)),
                json!([{"key": "gen_ai.usage.cache_creation.input_tokens", "value": {"intValue": "2000"}}]),
            ),
        ],
    );
    let priced = row(&server, 1);
    assert!(close(&priced["total_cost_usd"], 0.00045), "{priced:#}");
    assert!(
        close(&priced["cost"]["input_cost_usd"], 0.00015),
        "{priced:#}"
    );
    assert!(
        close(&priced["cost"]["output_cost_usd"], 0.0003),
        "{priced:#}"
    );
    assert_eq!(priced["cost"]["pricing_version"], "2026-12-01");
    assert_eq!(priced["cost"]["breakdown"]["source"], "computed");
    assert_eq!(priced["cost"]["breakdown"]["model"], "gpt-4o-mini");

    let reported = row(&server, 2);
    assert!(close(&reported["total_cost_usd"], 1.23), "{reported:#}");
    assert_eq!(reported["cost"]["breakdown"]["source"], "reported");

    let unknown = row(&server, 3);
    assert!(unknown["total_cost_usd"].is_null(), "{unknown:#}");
    assert_eq!(unknown["cost"]["breakdown"]["source"], "unpriced");
    assert_eq!(metric(&server, "llmtrace_cost_unpriced_total"), 1);
    assert_eq!(metric(&server, "llmtrace_cost_reported_total"), 1);
    assert!(metric(&server, "llmtrace_cost_priced_total") >= 2);

    // 1000 uncached × $1 + 2000 written × $1.25 + 100 out × $5 = $0.004
    let cached = row(&server, 4);
    assert!(close(&cached["total_cost_usd"], 0.004), "{cached:#}");
    assert!(
        close(&cached["cost"]["breakdown"]["cache_write"], 0.0025),
        "{cached:#}"
    );

    // sums per model
    let aggregate = server
        .get("/api/v1/aggregate?group_by=model&since=1h")
        .json();
    let mini = aggregate["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["group"][0] == "gpt-4o-mini-2024-07-18")
        .unwrap()
        .clone();
    assert!(close(&mini["total_cost_usd"], 0.00045), "{aggregate:#}");

    // the price that applies to a name, and a clear 404 for an unknown one
    let price = server
        .get("/api/v1/pricing?model=openai/gpt-4o-mini-2024-07-18")
        .json();
    assert_eq!(price["price"]["name"], "gpt-4o-mini");
    assert_eq!(price["origin"], "catalogue");
    let missing = server.get("/api/v1/pricing?model=mystery-model-13b");
    assert_eq!(missing.status, 404);
    assert!(
        missing.text().contains("mystery-model-13b"),
        "{}",
        missing.text()
    );
    let catalogue = server.get("/api/v1/pricing").json();
    assert!(catalogue["models"].as_array().unwrap().len() > 100);
}

fn write_config(path: &std::path::Path, input_price: &str) {
    std::fs::write(
        path,
        format!(
            "[pricing]\n[pricing.deployments]\n\"prod-chat\" = \"my-model\"\n\n[[pricing.models]]\nname = \"my-model\"\nprovider = \"self-hosted\"\ninput = {input_price}\noutput = 2.0\n"
        ),
    )
    .unwrap();
}

fn input_price(server: &TestServer) -> Value {
    server.get("/api/v1/pricing?model=my-model").json()["price"]["input"].clone()
}

#[test]
fn price_edits_apply_without_restart_and_reprice_updates_stored_calls() {
    let temp = tempfile::tempdir().unwrap();
    let config = temp.path().join("llmtrace.toml");
    write_config(&config, "1.0");
    let server = TestServer::start_in(
        &temp.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let start = now_ns() - 3_600_000_000_000;
    // a million input tokens at $1, through the deployment name
    send(
        &server,
        vec![call_span(
            11,
            start,
            "azure",
            "prod-chat",
            Some((1_000_000, 0)),
            json!([]),
        )],
    );
    assert!(close(&row(&server, 11)["total_cost_usd"], 1.0));
    assert_eq!(row(&server, 11)["cost"]["pricing_version"], "config");

    write_config(&config, "3.0");
    let deadline = Instant::now() + Duration::from_secs(15);
    while input_price(&server) != json!(3.0) {
        assert!(Instant::now() < deadline, "the new price never applied");
        std::thread::sleep(Duration::from_millis(100));
    }
    send(
        &server,
        vec![call_span(
            12,
            start + 1,
            "azure",
            "prod-chat",
            Some((1_000_000, 0)),
            json!([]),
        )],
    );
    assert!(close(&row(&server, 12)["total_cost_usd"], 3.0));
    // the call stored before the change keeps its price until repriced
    assert!(close(&row(&server, 11)["total_cost_usd"], 1.0));

    let output = cli_ok(&["reprice", "--server", &server.http, "--since", "2h"]);
    let report: Value = serde_json::from_str(&output).unwrap();
    assert_eq!(report["scanned"], 2, "{report:#}");
    assert_eq!(report["repriced"], 1, "{report:#}");
    assert_eq!(report["unchanged"], 1, "{report:#}");
    assert!(close(&row(&server, 11)["total_cost_usd"], 3.0));
    let missing_since = server.post("/api/v1/reprice", &[], b"");
    assert_eq!(missing_since.status, 400);
    assert!(
        missing_since.text().contains("since"),
        "{}",
        missing_since.text()
    );

    // a broken edit is refused and the prices in force stay
    std::fs::write(
        &config,
        "[[pricing.models]]\nname = \"my-model\"\ninput = 9.0\n",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(input_price(&server), json!(3.0));
}

/// What the fake report server was asked, for assertions.
#[derive(Default)]
struct Asked {
    pages: AtomicUsize,
}

fn day_start(ns: i64) -> i64 {
    ns - ns.rem_euclid(DAY_NS)
}

fn authorized(headers: &HeaderMap, header: &str, expected: &str) -> bool {
    headers.get(header).and_then(|v| v.to_str().ok()) == Some(expected)
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        axum::Json(json!({"error": {"message": "invalid admin key"}})),
    )
        .into_response()
}

/// OpenAI's organization usage and costs API, two days, usage paged one bucket a page.
fn openai_routes(day1: i64, asked: Arc<Asked>) -> Router {
    let bucket = |day: i64, results: Value| json!({"object": "bucket", "start_time": day / 1_000_000_000, "end_time": (day + DAY_NS) / 1_000_000_000, "results": results});
    let day2 = day1 + DAY_NS;
    let usage_pages = [
        json!({"object": "page", "data": [bucket(day1, json!([{"object": "organization.usage.completions.result", "input_tokens": 1_000_000, "output_tokens": 0, "input_cached_tokens": 0, "num_model_requests": 1, "model": "gpt-4o-2024-08-06"}]))], "has_more": true, "next_page": "page-2"}),
        json!({"object": "page", "data": [bucket(day2, json!([{"object": "organization.usage.completions.result", "input_tokens": 1_000_000, "output_tokens": 0, "input_cached_tokens": 0, "num_model_requests": 1, "model": "gpt-4o-mini-2024-07-18"}]))], "has_more": false, "next_page": null}),
    ];
    let costs = json!({"object": "page", "data": [
        bucket(day1, json!([{"object": "organization.costs.result", "amount": {"value": 2.5, "currency": "usd"}, "line_item": "gpt-4o-2024-08-06, input", "project_id": null}])),
        // billed $0.80 where the calls cost $0.15 at list price
        bucket(day2, json!([{"object": "organization.costs.result", "amount": {"value": 0.8, "currency": "usd"}, "line_item": "gpt-4o-mini-2024-07-18, input", "project_id": null}])),
    ], "has_more": false, "next_page": null});
    let usage = move |headers: HeaderMap, Query(query): Query<Vec<(String, String)>>| {
        let asked = asked.clone();
        let pages = usage_pages.clone();
        async move {
            if !authorized(&headers, "authorization", "Bearer admin-key") {
                return unauthorized();
            }
            asked.pages.fetch_add(1, Ordering::SeqCst);
            assert!(query.contains(&("group_by".into(), "model".into())));
            assert!(query.contains(&("bucket_width".into(), "1d".into())));
            let second = query.iter().any(|(k, v)| k == "page" && v == "page-2");
            axum::Json(pages[usize::from(second)].clone()).into_response()
        }
    };
    let empty = json!({"object": "page", "data": [], "has_more": false, "next_page": null});
    Router::new()
        .route(
            "/v1/organization/usage/completions",
            axum::routing::get(usage),
        )
        .route(
            "/v1/organization/usage/embeddings",
            axum::routing::get(move || {
                let empty = empty.clone();
                async move { axum::Json(empty) }
            }),
        )
        .route(
            "/v1/organization/costs",
            axum::routing::get(move |headers: HeaderMap| {
                let costs = costs.clone();
                async move {
                    if !authorized(&headers, "authorization", "Bearer admin-key") {
                        return unauthorized();
                    }
                    axum::Json(costs).into_response()
                }
            }),
        )
}

/// Anthropic's usage report and cost report (amounts in cents, as decimal strings).
fn anthropic_routes(day1: i64) -> Router {
    let starting = |day: i64| {
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_nanos(day as u64))
            .to_string()
    };
    let usage = json!({"data": [{"starting_at": starting(day1), "ending_at": starting(day1 + DAY_NS), "results": [
        {"uncached_input_tokens": 1_000_000, "cache_read_input_tokens": 0,
         "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
         "output_tokens": 300_000, "model": "claude-haiku-4-5-20251001"}]}], "has_more": false, "next_page": null});
    let cost = json!({"data": [{"starting_at": starting(day1), "ending_at": starting(day1 + DAY_NS), "results": [
        {"amount": "100.00", "currency": "USD", "description": "Claude Haiku 4.5 Usage - Input Tokens", "model": "claude-haiku-4-5-20251001", "cost_type": "tokens", "token_type": "uncached_input_tokens"},
        {"amount": "150.00", "currency": "USD", "description": "Claude Haiku 4.5 Usage - Output Tokens", "model": "claude-haiku-4-5-20251001", "cost_type": "tokens", "token_type": "output_tokens"},
        {"amount": "3.00", "currency": "USD", "description": "Web Search", "model": null, "cost_type": "web_search"}]}],
        "has_more": false, "next_page": null});
    let guard = |headers: &HeaderMap| {
        authorized(headers, "x-api-key", "anthropic-admin")
            && authorized(headers, "anthropic-version", "2023-06-01")
    };
    Router::new()
        .route(
            "/v1/organizations/usage_report/messages",
            axum::routing::get(move |headers: HeaderMap| {
                let usage = usage.clone();
                async move {
                    if !guard(&headers) {
                        return unauthorized();
                    }
                    axum::Json(usage).into_response()
                }
            }),
        )
        .route(
            "/v1/organizations/cost_report",
            axum::routing::get(move |headers: HeaderMap| {
                let cost = cost.clone();
                async move {
                    if !guard(&headers) {
                        return unauthorized();
                    }
                    axum::Json(cost).into_response()
                }
            }),
        )
}

fn start_reports(day1: i64, asked: Arc<Asked>) -> String {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            sender.send(listener.local_addr().unwrap()).unwrap();
            let app = openai_routes(day1, asked).merge(anthropic_routes(day1));
            axum::serve(listener, app).await.unwrap();
        });
    });
    format!("http://{}/v1", receiver.recv().unwrap())
}

fn reconcile(
    server: &TestServer,
    reports: &str,
    provider: &str,
    key_env: (&str, &str),
    since: i64,
    until: i64,
) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_llmtrace"))
        .args([
            "reconcile",
            "--provider",
            provider,
            "--base-url",
            reports,
            "--server",
            &server.http,
            "--json",
        ])
        .args([
            "--since",
            &(since / 1_000_000_000).to_string(),
            "--until",
            &(until / 1_000_000_000).to_string(),
        ])
        .env(key_env.0, key_env.1)
        .output()
        .unwrap()
}

#[test]
fn reconcile_sets_computed_costs_against_the_providers_bills() {
    let server = TestServer::start();
    let day1 = day_start(now_ns()) - 3 * DAY_NS;
    let day2 = day1 + DAY_NS;
    send(
        &server,
        vec![
            // gpt-4o: a million input tokens at $2.50 — the bill agrees
            call_span(
                21,
                day1 + 3_600_000_000_000,
                "openai",
                "gpt-4o-2024-08-06",
                Some((1_000_000, 0)),
                json!([]),
            ),
            // gpt-4o-mini: a million input tokens at $0.15 — billed $0.80
            call_span(
                22,
                day2 + 3_600_000_000_000,
                "openai",
                "gpt-4o-mini-2024-07-18",
                Some((1_000_000, 0)),
                json!([]),
            ),
            // claude-haiku-4-5: a million in at $1 + 300k out at $5 = $2.50 — billed 100 + 150 cents
            call_span(
                23,
                day1 + 7_200_000_000_000,
                "anthropic",
                "claude-haiku-4-5-20251001",
                Some((1_000_000, 300_000)),
                json!([]),
            ),
        ],
    );
    let asked = Arc::new(Asked::default());
    let reports = start_reports(day1, asked.clone());

    let output = reconcile(
        &server,
        &reports,
        "openai",
        ("OPENAI_ADMIN_KEY", "admin-key"),
        day1,
        day2 + DAY_NS,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        asked.pages.load(Ordering::SeqCst),
        2,
        "usage is read page by page"
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let rows = report["data"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{report:#}");
    let gpt4o = rows.iter().find(|r| r["model"] == "gpt-4o").unwrap();
    assert!(close(&gpt4o["computed"]["cost_usd"], 2.5), "{gpt4o:#}");
    assert!(close(&gpt4o["billed"]["cost_usd"], 2.5), "{gpt4o:#}");
    assert_eq!(gpt4o["billed"]["input_tokens"], 1_000_000);
    assert_eq!(gpt4o["flagged"], false);
    let mini = rows.iter().find(|r| r["model"] == "gpt-4o-mini").unwrap();
    assert_eq!(mini["flagged"], true, "{mini:#}");
    assert!(close(&mini["difference_usd"], 0.15 - 0.8), "{mini:#}");
    assert_eq!(report["totals"]["flagged"], 1);

    let output = reconcile(
        &server,
        &reports,
        "anthropic",
        ("ANTHROPIC_ADMIN_KEY", "anthropic-admin"),
        day1,
        day2,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let rows = report["data"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{report:#}");
    assert_eq!(rows[0]["model"], "claude-haiku-4-5");
    assert!(close(&rows[0]["billed"]["cost_usd"], 2.5), "{report:#}");
    assert!(close(&rows[0]["computed"]["cost_usd"], 2.5), "{report:#}");
    assert_eq!(rows[0]["flagged"], false);
    assert_eq!(rows[0]["billed"]["output_tokens"], 300_000);

    // the bills were kept by the server: the comparison is there without a new import
    let stored = server.get(&format!(
        "/api/v1/reconciliation?provider=openai&since={}&until={}",
        day1 / 1_000_000_000,
        (day2 + DAY_NS) / 1_000_000_000
    ));
    assert_eq!(stored.json()["totals"]["flagged"], 1);

    // a wrong key: the command fails and says what the provider answered
    let output = reconcile(
        &server,
        &reports,
        "openai",
        ("OPENAI_ADMIN_KEY", "wrong"),
        day1,
        day2,
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("401") && stderr.contains("invalid admin key"),
        "{stderr}"
    );
    // a malformed upload is refused by name
    let bad = server.post(
        "/api/v1/billing",
        &[("content-type", "application/json")],
        br#"{"provider": "openai", "rows": [{"day": "yesterday", "model": "m"}]}"#,
    );
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("yesterday"), "{}", bad.text());
}

/// The BPE files inside the tiktoken-rs crate, as cargo unpacked it.
fn tiktoken_rs_assets() -> Option<std::path::PathBuf> {
    let cargo_home = std::env::var("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|home| std::path::Path::new(&home).join(".cargo")))
        .ok()?;
    std::fs::read_dir(cargo_home.join("registry/src"))
        .ok()?
        .flatten()
        .flat_map(|index| {
            std::fs::read_dir(index.path())
                .into_iter()
                .flatten()
                .flatten()
        })
        .find(|krate| {
            krate
                .file_name()
                .to_string_lossy()
                .starts_with("tiktoken-rs-0.12")
        })
        .map(|krate| krate.path().join("assets"))
}

#[test]
fn estimated_tokens_equal_tiktokens_reference_counts() {
    let Some(python) = crate::python::python() else {
        crate::support::skip("no Python venv with tiktoken (.venv; .ci/run builds it)");
        return;
    };
    let assets = tiktoken_rs_assets().expect("tiktoken-rs sources in the cargo registry");
    let design =
        std::fs::read_to_string(crate::support::shared_fixtures().join("../DESIGN.md")).unwrap();
    let texts = [
        "Hello, world!",
        "  leading and trailing   whitespace \n\n\t tabs  ",
        "fn main() { println!(\"{}\", 1 + 2); } // code, with 12345 and 3.14159",
        "naïve café — “quotes” … 日本語のテキスト 한국어 текст 🙂🚀👩‍👩‍👧",
        "<|endoftext|> special markers <|im_start|> are plain text here",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        &design,
    ];
    let models = [
        "gpt-4o",
        "gpt-4o-mini-2024-07-18",
        "gpt-4.1",
        "gpt-5",
        "o3",
        "gpt-4",
        "gpt-3.5-turbo-0125",
        "text-embedding-3-small",
        "ft:gpt-4o-mini-2024-07-18:acme::x1",
    ];
    let mut text_cases = Vec::new();
    for model in models {
        for text in texts {
            text_cases.push(json!({"model": model, "text": text}));
        }
    }
    let chats = [
        json!([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}]),
        json!([{"role": "user", "name": "alice", "content": "Résumé, please: 日本"}, {"role": "assistant", "content": "Sure."}, {"role": "user", "content": design[..2000].to_string()}]),
    ];
    let mut chat_cases = Vec::new();
    for model in ["gpt-4o", "gpt-4", "gpt-5-mini"] {
        for messages in &chats {
            chat_cases.push(json!({"model": model, "messages": messages}));
        }
    }
    // the call sent end to end below, counted by the oracle too (last cases)
    let question = "What does a 2 KB prompt cost? ¿Y en español? 🙂";
    let answer = "About a fifth of a cent for gpt-4o-mini.";
    text_cases.push(json!({"model": "gpt-4o-mini", "text": answer}));
    chat_cases
        .push(json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": question}]}));
    let mut child = Command::new(python)
        .arg(crate::python::script("token_oracle.py"))
        .arg("--bpe-dir")
        .arg(&assets)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let request = json!({"texts": text_cases, "chats": chat_cases});
        child
            .stdin
            .take()
            .unwrap()
            .write_all(request.to_string().as_bytes())
            .unwrap();
    }
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "token_oracle.py failed");
    let reference: Value = serde_json::from_slice(&output.stdout).unwrap();

    let mut wrong = Vec::new();
    for (case, expected) in text_cases
        .iter()
        .zip(reference["texts"].as_array().unwrap())
    {
        let counter = llmtrace_cost::estimate::Counter::for_model(case["model"].as_str().unwrap());
        assert!(counter.exact, "{}", case["model"]);
        let got = counter.text(case["text"].as_str().unwrap());
        if Some(got) != expected.as_i64() {
            wrong.push(format!(
                "{} {:?}…: {got} ≠ {expected}",
                case["model"],
                &case["text"]
                    .as_str()
                    .unwrap()
                    .chars()
                    .take(30)
                    .collect::<String>()
            ));
        }
    }
    for (case, expected) in chat_cases
        .iter()
        .zip(reference["chats"].as_array().unwrap())
    {
        let counter = llmtrace_cost::estimate::Counter::for_model(case["model"].as_str().unwrap());
        let got = counter.messages(case["messages"].as_array().unwrap());
        if Some(got) != expected.as_i64() {
            wrong.push(format!("chat for {}: {got} ≠ {expected}", case["model"]));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // end to end: a call sent without usage is stored with the reference counts
    let server = TestServer::start();
    let span = json!({"traceId": format!("{:032x}", 31), "spanId": format!("{:016x}", 31), "name": "chat", "kind": 3,
    "startTimeUnixNano": (now_ns() - 1_000_000_000).to_string(), "endTimeUnixNano": now_ns().to_string(),
    "attributes": [
        {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
        {"key": "gen_ai.provider.name", "value": {"stringValue": "openai"}},
        {"key": "gen_ai.request.model", "value": {"stringValue": "gpt-4o-mini"}},
        {"key": "gen_ai.input.messages", "value": {"stringValue": json!([{"role": "user", "parts": [{"type": "text", "content": question}]}]).to_string()}},
        {"key": "gen_ai.output.messages", "value": {"stringValue": json!([{"role": "assistant", "parts": [{"type": "text", "content": answer}], "finish_reason": "stop"}]).to_string()}}
    ]});
    send(&server, vec![span]);
    let stored = row(&server, 31);
    assert_eq!(
        stored["input_tokens"],
        *reference["chats"].as_array().unwrap().last().unwrap(),
        "{stored:#}"
    );
    assert_eq!(
        stored["output_tokens"],
        *reference["texts"].as_array().unwrap().last().unwrap(),
        "{stored:#}"
    );
    assert_eq!(stored["usage_source"], "estimated");
    assert!(stored["total_cost_usd"].as_f64().unwrap() > 0.0);
    assert_eq!(metric(&server, "llmtrace_tokens_estimated_total"), 1);
}
