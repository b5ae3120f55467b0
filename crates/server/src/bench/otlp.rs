//! Encodes corpus spans as an OTLP/HTTP protobuf export with OTel GenAI attributes, the
//! way an instrumented app would send them.

use llmtrace_model::Span;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span as OtlpSpan, Status};
use prost::Message;
use serde_json::{Value, json};

fn text(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..KeyValue::default()
    }
}

fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..KeyValue::default()
    }
}

/// Normalized messages back to the GenAI `{role, parts}` shape.
fn genai_messages(messages: &Value) -> String {
    let converted: Vec<Value> = messages
        .as_array()
        .into_iter()
        .flatten()
        .map(|message| {
            let parts: Vec<Value> = message["content"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|part| json!({"type": "text", "content": part["text"]}))
                .collect();
            json!({"role": message["role"], "parts": parts})
        })
        .collect();
    Value::Array(converted).to_string()
}

fn hex_bytes(hex_text: &str) -> Vec<u8> {
    hex::decode(hex_text).unwrap_or_default()
}

pub fn encode(spans: &[Span], project: &str) -> Vec<u8> {
    let otlp_spans = spans
        .iter()
        .map(|span| {
            let mut attributes = vec![
                text("gen_ai.operation.name", "chat"),
                text(
                    "gen_ai.provider.name",
                    span.provider.clone().unwrap_or_default(),
                ),
                text(
                    "gen_ai.request.model",
                    span.request_model.clone().unwrap_or_default(),
                ),
                text(
                    "gen_ai.response.model",
                    span.model.clone().unwrap_or_default(),
                ),
                int("gen_ai.usage.input_tokens", span.input_tokens.unwrap_or(0)),
                int(
                    "gen_ai.usage.output_tokens",
                    span.output_tokens.unwrap_or(0),
                ),
                text(
                    "gen_ai.conversation.id",
                    span.session_id.clone().unwrap_or_default(),
                ),
                text("user.id", span.user_id.clone().unwrap_or_default()),
                text(
                    "metadata",
                    serde_json::to_string(&span.metadata).unwrap_or_default(),
                ),
            ];
            if !span.input.is_null() {
                attributes.push(text("gen_ai.input.messages", genai_messages(&span.input)));
                attributes.push(text("gen_ai.output.messages", genai_messages(&span.output)));
            }
            if let Some(error) = &span.error_type {
                attributes.push(text("error.type", error.clone()));
            }
            OtlpSpan {
                trace_id: hex_bytes(&span.trace_id),
                span_id: hex_bytes(&span.span_id),
                name: span.name.clone(),
                kind: 3,
                start_time_unix_nano: span.start_time as u64,
                end_time_unix_nano: span.end_time as u64,
                attributes,
                status: Some(Status {
                    code: if span.status.is_error() { 2 } else { 0 },
                    ..Status::default()
                }),
                ..OtlpSpan::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    text("service.name", "bench-app"),
                    text("llmtrace.project", project),
                    text("openinference.project.name", project),
                ],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "llmtrace.bench".into(),
                    ..InstrumentationScope::default()
                }),
                spans: otlp_spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
    .encode_to_vec()
}
