//! OTLP ingest over HTTP and gRPC: encodings, partial success, bad input.

use std::io::Write;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use serde_json::{Value, json};

use crate::support::{TestServer, exporter_fixture_pb, shared_fixtures};

fn span_json(trace_id: &str, span_id: &str, name: &str) -> Value {
    json!({"traceId": trace_id, "spanId": span_id, "name": name, "kind": 3,
           "startTimeUnixNano": "1795314670442314223", "endTimeUnixNano": "1795314671000000000",
           "attributes": [{"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
                          {"key": "gen_ai.request.model", "value": {"stringValue": "m1"}}]})
}

fn export(spans: Vec<Value>) -> Vec<u8> {
    serde_json::to_vec(&json!({"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]})).unwrap()
}

#[test]
fn partial_success_names_rejected_spans_and_keeps_the_rest() {
    let server = TestServer::start();
    let body = export(vec![
        span_json(
            "0af7651916cd43dd8448eb211c80319c",
            "b7ad6b7169203331",
            "good",
        ),
        span_json(
            "00000000000000000000000000000000",
            "b7ad6b7169203332",
            "zero trace id",
        ),
    ]);
    let reply = server.post("/v1/traces", &[("content-type", "application/json")], &body);
    assert_eq!(reply.status, 200);
    let answer = reply.json();
    assert_eq!(answer["partialSuccess"]["rejectedSpans"], "1");
    assert!(
        answer["partialSuccess"]["errorMessage"]
            .as_str()
            .unwrap()
            .contains("trace_id")
    );
    let spans = server.all_spans("");
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0]["name"], "good");
}

#[test]
fn bad_input_gets_a_4xx_naming_the_problem_and_loses_nothing() {
    let server = TestServer::start();
    let good = exporter_fixture_pb();
    assert_eq!(
        server
            .post(
                "/v1/traces",
                &[("content-type", "application/x-protobuf")],
                &good
            )
            .status,
        200
    );
    let before = server.all_spans("");
    assert_eq!(before.len(), 3);

    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "truncated protobuf",
            "application/x-protobuf",
            good[..good.len() / 2].to_vec(),
            400,
            "protobuf",
        ),
        (
            "wrong content type",
            "text/plain",
            good.clone(),
            400,
            "content-type",
        ),
        (
            "invalid json",
            "application/json",
            b"{\"resourceSpans\": [".to_vec(),
            400,
            "JSON",
        ),
        (
            "bad hex id",
            "application/json",
            export(vec![span_json("xyz", "b7ad6b7169203331", "x")]),
            400,
            "OTLP/JSON",
        ),
        (
            "unknown enum value",
            "application/json",
            export(vec![
                json!({"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331", "kind": "SPAN_KIND_SIDEWAYS"}),
            ]),
            400,
            "OTLP/JSON",
        ),
        (
            "deep nesting",
            "application/json",
            deep.into_bytes(),
            400,
            "JSON",
        ),
        (
            "snake_case keys",
            "application/json",
            br#"{"resource_spans":[{"scope_spans":[{"spans":[]}]}]}"#.to_vec(),
            400,
            "resourceSpans",
        ),
    ];
    for (what, content_type, body, status, needle) in cases {
        let reply = server.post("/v1/traces", &[("content-type", content_type)], &body);
        assert_eq!(reply.status, status, "{what}: {}", reply.text());
        assert!(reply.text().contains(needle), "{what}: {}", reply.text());
    }
    // gzip that lies, and a gzip bomb past the limit
    let reply = server.post(
        "/v1/traces",
        &[
            ("content-type", "application/x-protobuf"),
            ("content-encoding", "gzip"),
        ],
        b"not gzip at all",
    );
    assert_eq!(reply.status, 400, "{}", reply.text());
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(&vec![0u8; 64 << 20]).unwrap();
    let bomb = encoder.finish().unwrap();
    let reply = server.post(
        "/v1/traces",
        &[
            ("content-type", "application/x-protobuf"),
            ("content-encoding", "gzip"),
        ],
        &bomb,
    );
    assert_eq!(reply.status, 413, "{}", reply.text());
    // a 50 MB body
    let (status, text) =
        server.raw_post("/v1/traces", "application/x-protobuf", vec![b'x'; 50 << 20]);
    assert_eq!(status, 413, "{}", &text[..text.len().min(300)]);
    assert!(text.contains("limit"));

    // still serving, nothing lost
    assert_eq!(server.get("/health").status, 200);
    assert_eq!(server.all_spans("").len(), before.len());
}

#[test]
fn logs_and_metrics_are_accepted_on_both_http_ports() {
    let server = TestServer::start();
    let folder = shared_fixtures().join("d_instrumentations/raw");
    for base in [&server.http, &server.otlp_http] {
        let reply = server.post_to(
            base,
            "/v1/logs",
            &[("content-type", "application/x-protobuf")],
            &std::fs::read(folder.join("046_i_otel-v2-latest.pb")).unwrap(),
        );
        assert_eq!(reply.status, 200, "{}", reply.text());
        let reply = server.post_to(
            base,
            "/v1/metrics",
            &[("content-type", "application/x-protobuf")],
            &std::fs::read(folder.join("073_i_traceloop.pb")).unwrap(),
        );
        assert_eq!(reply.status, 200);
        let reply = server.post_to(
            base,
            "/v1/traces",
            &[("content-type", "application/x-protobuf")],
            &exporter_fixture_pb(),
        );
        assert_eq!(reply.status, 200);
        assert_eq!(reply.content_type, "application/x-protobuf");
    }
    let spans = server.all_spans("");
    let event_rows = spans.iter().filter(|s| s["source"] == "log").count();
    assert_eq!(
        spans.len() - event_rows,
        3,
        "the same spans twice are stored once"
    );
    assert_eq!(
        event_rows, 1,
        "the same GenAI log event twice is one event row"
    );
}

#[test]
fn grpc_export_is_stored_like_http() {
    let server = TestServer::start();
    let request = ExportTraceServiceRequest::decode(exporter_fixture_pb().as_slice()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let response = runtime.block_on(async {
        let mut client = TraceServiceClient::connect(server.otlp_grpc.clone())
            .await
            .unwrap();
        client.export(request).await
    });
    let response = response.unwrap().into_inner();
    assert!(response.partial_success.is_none());
    let spans = server.all_spans("");
    assert_eq!(spans.len(), 3);
    assert!(
        spans
            .iter()
            .any(|s| s["name"] == "chat gpt-4o-mini" && s["kind"] == "llm")
    );
}

fn details_log(trace_id: &str, span_id: &str) -> Vec<u8> {
    let text_part = |text: &str| {
        json!({"kvlistValue": {"values": [
        {"key": "type", "value": {"stringValue": "text"}},
        {"key": "content", "value": {"stringValue": text}}]}})
    };
    let message = |role: &str, text: &str| {
        json!({"kvlistValue": {"values": [
        {"key": "role", "value": {"stringValue": role}},
        {"key": "parts", "value": {"arrayValue": {"values": [text_part(text)]}}}]}})
    };
    serde_json::to_vec(&json!({"resourceLogs": [{"scopeLogs": [{"logRecords": [{
        "timeUnixNano": "1795314670500000000", "traceId": trace_id, "spanId": span_id,
        "eventName": "gen_ai.client.inference.operation.details",
        "attributes": [
            {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "23"}},
            {"key": "gen_ai.input.messages", "value": {"arrayValue": {"values": [message("user", "Where is my parcel?")]}}},
            {"key": "gen_ai.output.messages", "value": {"arrayValue": {"values": [message("assistant", "It ships tomorrow.")]}}}
        ]}, {"timeUnixNano": "1795314670500000000", "body": {"stringValue": "no span here"}}]}]}]}))
    .unwrap()
}

fn bare_chat_span(trace_id: &str, span_id: &str) -> Vec<u8> {
    export(vec![span_json(trace_id, span_id, "chat m1")])
}

#[test]
fn genai_log_events_join_their_span_in_either_order() {
    let server = TestServer::start();
    let json_type = [("content-type", "application/json")];
    let orders = [
        ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", true),
        (
            "1af7651916cd43dd8448eb211c80319c",
            "c7ad6b7169203331",
            false,
        ),
    ];
    for (trace_id, span_id, log_first) in orders {
        let log = details_log(trace_id, span_id);
        let span = bare_chat_span(trace_id, span_id);
        let (first, second) = if log_first {
            (&log, &span)
        } else {
            (&span, &log)
        };
        let first_path = if log_first { "/v1/logs" } else { "/v1/traces" };
        let second_path = if log_first { "/v1/traces" } else { "/v1/logs" };
        let reply = server.post(first_path, &json_type, first);
        assert_eq!(reply.status, 200, "{}", reply.text());
        let reply = server.post(second_path, &json_type, second);
        assert_eq!(reply.status, 200, "{}", reply.text());
        if second_path == "/v1/logs" {
            assert!(
                reply.text().contains("1 log records name no span"),
                "{}",
                reply.text()
            );
        }
        let rows = server
            .get(&format!("/v1/traces?trace_id={trace_id}"))
            .json()["data"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(rows.len(), 1, "log_first={log_first}: {rows:?}");
        assert_eq!(
            rows[0]["input_text"], "Where is my parcel?",
            "log_first={log_first}"
        );
        assert_eq!(rows[0]["output_text"], "It ships tomorrow.");
        assert_eq!(rows[0]["input_tokens"], 23);
        let tree = server.get(&format!("/api/v1/traces/{trace_id}")).json();
        let spans = tree["spans"].as_array().unwrap();
        assert_eq!(spans.len(), 2, "the span and its event row");
        let event_row = spans.iter().find(|s| s["source"] == "log").unwrap();
        assert_eq!(event_row["parent_span_id"], span_id);
    }
}
