//! The gateway when upstreams misbehave: slow first byte, errors with an alias fallback,
//! unreachable, a connection cut mid-stream, and a client that goes away mid-stream.
//! The upstream is a small axum server inside the test; no Python needed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::gateway::spans_of;
use crate::support::TestServer;

#[derive(Default)]
struct Seen {
    /// The upstream noticed its stream's reader went away.
    stream_cancelled: AtomicBool,
}

fn chunk(text: &str) -> Bytes {
    let chunk = json!({"id": "chatcmpl-d", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]});
    Bytes::from(format!("data: {chunk}\n\n"))
}

async fn chat(seen: Arc<Seen>, body: Bytes) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or_default();
    match request["model"].as_str().unwrap_or("") {
        "slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            (StatusCode::OK, "{}").into_response()
        }
        "fail" => (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"error": {"message": "primary is down", "type": "server_error"}})),
        )
            .into_response(),
        // one chunk, then nothing until the reader leaves
        "drip" => {
            let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
            tokio::spawn(async move {
                let _ = sender.send(Ok(chunk("partial answer"))).await;
                for _ in 0..300 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if sender.send(Ok(Bytes::from_static(b": keep-alive\n\n"))).await.is_err() {
                        seen.stream_cancelled.store(true, Ordering::SeqCst);
                        return;
                    }
                }
            });
            sse(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(receiver)))
        }
        // one chunk, then the connection breaks
        "cut" => {
            let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
            tokio::spawn(async move {
                let _ = sender.send(Ok(chunk("half"))).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = sender.send(Err(std::io::Error::other("upstream crashed"))).await;
            });
            sse(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(receiver)))
        }
        // compressed although the gateway asked for identity
        "gzip" => {
            use std::io::Write;
            let answer = json!({
                "id": "chatcmpl-gz", "object": "chat.completion", "created": 1, "model": "gzip",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "fine, compressed"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
            });
            let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(answer.to_string().as_bytes()).unwrap();
            (
                [(header::CONTENT_TYPE, "application/json"), (header::CONTENT_ENCODING, "gzip")],
                encoder.finish().unwrap(),
            )
                .into_response()
        }
        model => axum::Json(json!({
            "id": "chatcmpl-ok", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "fine"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
        }))
        .into_response(),
    }
}

/// Azure OpenAI's URL shape; answers with what it received, so the test can check it.
async fn azure(
    axum::extract::Path(deployment): axum::extract::Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: axum::http::HeaderMap,
) -> Response {
    let seen = json!({
        "deployment": deployment,
        "query": query,
        "api_key": headers.get("api-key").and_then(|v| v.to_str().ok()),
        "authorization": headers.get("authorization").and_then(|v| v.to_str().ok()),
    });
    axum::Json(json!({
        "id": "chatcmpl-az", "object": "chat.completion", "created": 1, "model": "gpt-4o-2024-11-20",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": seen.to_string()}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    }))
    .into_response()
}

/// Answers with the HTTP version the call arrived in, plainly or as a one-chunk stream.
async fn version(request: axum::extract::Request) -> Response {
    let version = format!("{:?}", request.version());
    let body = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let request: Value = serde_json::from_slice(&body).unwrap_or_default();
    if request["stream"] == true {
        let frames = [chunk(&version), Bytes::from_static(b"data: [DONE]\n\n")];
        let frames = frames.map(Ok::<_, std::io::Error>);
        return sse(Body::from_stream(tokio_stream::iter(frames)));
    }
    axum::Json(json!({
        "id": "chatcmpl-v", "object": "chat.completion", "created": 1, "model": request["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": version}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    }))
    .into_response()
}

fn sse(body: Body) -> Response {
    ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
}

/// Runs the fake upstream on its own runtime thread; returns its base URL.
fn start_upstream(seen: Arc<Seen>) -> String {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            sender.send(listener.local_addr().unwrap()).unwrap();
            let app = Router::new()
                .route(
                    "/v1/chat/completions",
                    axum::routing::post(move |body: Bytes| chat(seen.clone(), body)),
                )
                .route(
                    "/openai/deployments/{deployment}/chat/completions",
                    axum::routing::post(azure),
                )
                .route("/version/v1/chat/completions", axum::routing::post(version));
            axum::serve(listener, app).await.unwrap();
        });
    });
    format!("http://{}/v1", receiver.recv().unwrap())
}

fn call(server: &TestServer, user: &str, body: Value) -> (u16, Value) {
    let reply = server.post(
        "/v1/chat/completions",
        &[
            ("content-type", "application/json"),
            ("x-llmtrace-user-id", user),
        ],
        body.to_string().as_bytes(),
    );
    let json = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    (reply.status, json)
}

/// Sends a chat request on a raw socket, so the test controls how the response is read.
fn open_stream(server: &TestServer, user: &str, body: Value) -> TcpStream {
    let address = server.http.trim_start_matches("http://");
    let mut socket = TcpStream::connect(address).unwrap();
    let body = body.to_string();
    write!(
        socket,
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\nx-llmtrace-user-id: {user}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    socket
}

#[test]
fn timeouts_fallbacks_failures_and_disconnects_are_recorded_truthfully() {
    let seen = Arc::new(Seen::default());
    let upstream = start_upstream(seen.clone());
    let temp = tempfile::tempdir().unwrap();
    let config = temp.path().join("llmtrace.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[gateway]
first_byte_timeout = "1s"
total_timeout = "20s"

[[gateway.providers]]
name = "primary"
base_url = "{upstream}"

[[gateway.providers]]
name = "backup"
base_url = "{upstream}"

[[gateway.providers]]
name = "azure"
base_url = "{azure}"
api_version = "2024-10-21"
api_key_env = "AZURE_TEST_KEY"

[[gateway.providers]]
name = "dead"
base_url = "http://127.0.0.1:1/v1"

[gateway.aliases]
smart = ["primary/fail", "backup/steady"]
"#,
            azure = upstream.trim_end_matches("/v1"),
        ),
    )
    .unwrap();
    let server = TestServer::start_with_env(
        &temp.path().join("data"),
        &["--config", config.to_str().unwrap()],
        &[
            ("AZURE_TEST_KEY", "az-secret"),
            ("LLMTRACE_MAX_BODY_BYTES", "100000"),
        ],
    );

    // our own headers and the size limit are checked before anything goes upstream
    for (header, value, expected) in [
        ("x-llmtrace-trace", "sometimes", "x-llmtrace-trace must be"),
        (
            "x-llmtrace-project",
            "no spaces allowed",
            "not a valid project name",
        ),
    ] {
        let reply = server.post(
            "/v1/chat/completions",
            &[("content-type", "application/json"), (header, value)],
            br#"{"model": "steady", "messages": []}"#,
        );
        assert_eq!(reply.status, 400, "{header}");
        let message = reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(message.contains(expected), "{message}");
    }
    let big =
        json!({"model": "steady", "messages": [{"role": "user", "content": "x".repeat(200_000)}]});
    let reply = server.post(
        "/v1/chat/completions",
        &[("content-type", "application/json")],
        big.to_string().as_bytes(),
    );
    assert_eq!(reply.status, 413, "{}", reply.text());
    assert!(
        reply.text().contains("100000-byte limit"),
        "{}",
        reply.text()
    );
    // a body the gateway cannot parse still goes upstream, which judges it
    let reply = server.post(
        "/v1/chat/completions",
        &[
            ("content-type", "application/json"),
            ("x-llmtrace-user-id", "garbled"),
        ],
        b"{not json",
    );
    assert_eq!(reply.status, 200, "the fake upstream answers anything");
    let span = spans_of(&server, "garbled", 1).remove(0);
    assert_eq!(span["request_model"], Value::Null);

    // Azure: deployment in the path, api-version added, the configured key replaces the
    // client's credentials
    let priced = || -> u64 {
        let metrics = server.get("/metrics").text();
        metrics
            .lines()
            .find_map(|line| line.strip_prefix("llmtrace_cost_priced_total "))
            .unwrap_or_else(|| panic!("no priced count: {metrics}"))
            .parse()
            .unwrap()
    };
    let priced_before = priced();
    let reply = server.post(
        "/v1/chat/completions",
        &[
            ("content-type", "application/json"),
            ("authorization", "Bearer client-key"),
            ("x-llmtrace-user-id", "azure"),
        ],
        json!({"model": "azure/gpt4o-prod", "messages": [{"role": "user", "content": "hi"}]})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    let content = reply.json()["choices"][0]["message"]["content"].clone();
    let echoed: Value = serde_json::from_str(content.as_str().unwrap()).unwrap();
    assert_eq!(echoed["deployment"], "gpt4o-prod");
    assert_eq!(echoed["query"], "api-version=2024-10-21");
    assert_eq!(echoed["api_key"], "az-secret");
    assert_eq!(echoed["authorization"], Value::Null);
    let span = spans_of(&server, "azure", 1).remove(0);
    assert_eq!(span["provider"], "azure");
    assert_eq!(span["model"], "gpt-4o-2024-11-20");
    // priced as gpt-4o ($2.50 / $10 per million): 3 in + 1 out; the client was told before
    // the body came
    let expected = 3.0 * 2.5e-6 + 10e-6;
    assert!(
        (span["total_cost_usd"].as_f64().unwrap() - expected).abs() < 1e-15,
        "{span:#}"
    );
    let header: f64 = reply
        .header("x-llmtrace-cost-usd")
        .expect("cost header")
        .parse()
        .unwrap();
    assert!((header - expected).abs() < 1e-15, "{header}");
    // the header's price is not a second pricing of the call
    assert_eq!(priced() - priced_before, 1, "the call is counted once");

    // no response headers within first_byte_timeout → 504, status timeout
    let started = Instant::now();
    let (status, body) = call(&server, "slow", json!({"model": "slow", "messages": []}));
    assert_eq!(status, 504, "{body}");
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(body["error"]["type"], "timeout");
    let span = spans_of(&server, "slow", 1).remove(0);
    assert_eq!(span["status"], "timeout");
    assert_eq!(span["http_status"], 504);

    // the alias falls back from a 500 to its second target; the client sees only the 200
    let (status, body) = call(&server, "alias", json!({"model": "smart", "messages": []}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"], "steady");
    let span = spans_of(&server, "alias", 1).remove(0);
    assert_eq!(span["routing_alias"], "smart");
    assert_eq!(span["provider"], "backup");
    assert_eq!(span["request_model"], "smart");
    let attempts = span["attributes"]["llmtrace.attempts"].as_array().unwrap();
    assert_eq!(attempts[0]["provider"], "primary");
    assert_eq!(attempts[0]["result"], "500");
    assert_eq!(attempts[1]["result"], "200");

    // an unreachable provider → 502, status error
    let (status, body) = call(&server, "dead", json!({"model": "dead/x", "messages": []}));
    assert_eq!(status, 502, "{body}");
    let span = spans_of(&server, "dead", 1).remove(0);
    assert_eq!(span["status"], "error");
    assert!(
        span["status_message"]
            .as_str()
            .unwrap()
            .contains("unreachable")
    );

    // the upstream connection breaks mid-stream: the client's stream breaks too, the span
    // keeps what came
    let mut socket = open_stream(
        &server,
        "cut",
        json!({"model": "cut", "stream": true, "stream_options": {"include_usage": true}, "messages": []}),
    );
    let mut received = Vec::new();
    let _ = socket.read_to_end(&mut received); // ends in an error or EOF: either is fine
    let received = String::from_utf8_lossy(&received);
    assert!(received.contains("half"), "{received}");
    assert!(
        !received.ends_with("0\r\n\r\n"),
        "a cut stream must not look complete"
    );
    let span = spans_of(&server, "cut", 1).remove(0);
    assert_eq!(span["status"], "error", "{span:#}");
    assert_eq!(span["output_text"], "half");

    // an upstream that compresses anyway: relayed as it came, recorded decoded
    let reply = server.post(
        "/v1/chat/completions",
        &[
            ("content-type", "application/json"),
            ("x-llmtrace-user-id", "gzip"),
        ],
        br#"{"model": "gzip", "messages": [{"role": "user", "content": "squeeze"}]}"#,
    );
    assert_eq!(reply.status, 200);
    let mut relayed = String::new();
    if reply.body.starts_with(&[0x1f, 0x8b]) {
        use std::io::Read;
        flate2::read::GzDecoder::new(&reply.body[..])
            .read_to_string(&mut relayed)
            .unwrap();
    } else {
        relayed = reply.text();
    }
    assert!(relayed.contains("fine, compressed"), "{relayed}");
    let span = spans_of(&server, "gzip", 1).remove(0);
    assert_eq!(span["output_text"], "fine, compressed", "{span:#}");
    assert_eq!(span["output_tokens"], 2);

    // the client goes away mid-stream: upstream call cancelled, partial output kept
    let mut socket = open_stream(
        &server,
        "drip",
        json!({"model": "drip", "stream": true, "messages": [{"role": "user", "content": "go"}]}),
    );
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&received).contains("partial answer") {
        let n = socket.read(&mut buffer).unwrap();
        assert!(n > 0, "stream ended early");
        received.extend_from_slice(&buffer[..n]);
    }
    drop(socket);
    let span = spans_of(&server, "drip", 1).remove(0);
    assert_eq!(span["status"], "cancelled", "{span:#}");
    assert_eq!(span["output_text"], "partial answer");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !seen.stream_cancelled.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "the upstream call was not cancelled"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A conversation without session ids keeps its inferred session across a restart: the
/// table is saved at shutdown and loaded at start.
#[test]
fn inferred_sessions_continue_across_a_restart() {
    let upstream = start_upstream(Arc::new(Seen::default()));
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");
    let provider = format!("primary={upstream}");
    let flags = ["--provider", provider.as_str()];
    let mut server = TestServer::start_in(&data, &flags);
    let (status, _) = call(
        &server,
        "restart",
        json!({"model": "steady", "messages": [{"role": "user", "content": "hello there"}]}),
    );
    assert_eq!(status, 200);
    let first = spans_of(&server, "restart", 1).remove(0);
    let session = first["session_id"].as_str().unwrap().to_string();
    assert!(session.starts_with("auto-"), "{first:#}");
    assert_eq!(server.terminate(), Some(0));
    assert!(data.join("gateway/sessions.json").exists());

    let server = TestServer::start_in(&data, &flags);
    let (status, _) = call(
        &server,
        "restart",
        json!({"model": "steady", "messages": [
            {"role": "user", "content": "hello there"},
            {"role": "assistant", "content": "fine"},
            {"role": "user", "content": "and then?"}
        ]}),
    );
    assert_eq!(status, 200);
    let spans = spans_of(&server, "restart", 2);
    assert!(
        spans
            .iter()
            .all(|span| span["session_id"] == session.as_str()),
        "{spans:#?}"
    );
}

/// A provider marked `http2_prior_knowledge` is called over HTTP/2 without TLS, plain and
/// streamed; the others stay on HTTP/1.1.
#[test]
fn an_http2_prior_knowledge_provider_is_called_over_http2() {
    let upstream = start_upstream(Arc::new(Seen::default()));
    let base = upstream.replace("/v1", "/version/v1");
    let temp = tempfile::tempdir().unwrap();
    let config = temp.path().join("llmtrace.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[gateway.providers]]
name = "h1"
base_url = "{base}"

[[gateway.providers]]
name = "h2"
base_url = "{base}"
http2_prior_knowledge = true
"#
        ),
    )
    .unwrap();
    let server = TestServer::start_in(
        &temp.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let content = |model: &str| {
        let (status, answer) = call(
            &server,
            "http2",
            json!({"model": model, "messages": [{"role": "user", "content": "which version?"}]}),
        );
        assert_eq!(status, 200, "{answer}");
        answer["choices"][0]["message"]["content"].clone()
    };
    assert_eq!(content("h2/m"), "HTTP/2.0");
    assert_eq!(content("h1/m"), "HTTP/1.1");
    let streamed = server.post(
        "/v1/chat/completions",
        &[
            ("content-type", "application/json"),
            ("x-llmtrace-user-id", "http2"),
        ],
        json!({"model": "h2/m", "stream": true, "messages": [{"role": "user", "content": "and streamed?"}]})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(streamed.status, 200);
    assert!(streamed.text().contains("HTTP/2.0"), "{}", streamed.text());
    assert!(streamed.text().contains("[DONE]"), "{}", streamed.text());
    let spans = spans_of(&server, "http2", 3);
    let mut outputs: Vec<(&str, &str)> = spans
        .iter()
        .map(|span| {
            (
                span["provider"].as_str().unwrap(),
                span["output_text"].as_str().unwrap(),
            )
        })
        .collect();
    outputs.sort();
    assert_eq!(
        outputs,
        [("h1", "HTTP/1.1"), ("h2", "HTTP/2.0"), ("h2", "HTTP/2.0")]
    );
    assert!(
        spans.iter().all(|span| span["status"] == "ok"),
        "{spans:#?}"
    );
}
