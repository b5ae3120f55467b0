//! GenAI events that arrive as OTLP log records, and how they join their span.
//!
//! Every log record that names a span (trace id + span id) becomes a durable *event row*: a
//! span of source `log`, child of the span it belongs to, with a key derived from the record
//! (so re-sent records are stored once). When the span itself is stored — before or after —
//! the events are also merged into it and its columns recomputed (`merge_events`), so
//! content sent only as events (otel-v2 `event_only`, v1.28–1.36 per-message events) lands
//! in `input`/`output` like any other dialect.

use llmtrace_model::{Span, SpanEvent, SpanKind, SpanSource};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use serde_json::{Map, Value, json};

use crate::convert::{any_value_to_json, apply_conventions, key_values_to_map, valid_project};

/// A log record attached to a span.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEvent {
    pub project: String,
    pub trace_id: String,
    pub span_id: String,
    pub event: SpanEvent,
}

#[derive(Debug, Default)]
pub struct ConvertedLogs {
    pub events: Vec<LogEvent>,
    /// Records that name no span: counted, not stored (only span events are kept today).
    pub unattached: u64,
}

pub fn convert_logs(request: &ExportLogsServiceRequest, project: &str) -> ConvertedLogs {
    let mut out = ConvertedLogs::default();
    for resource_logs in &request.resource_logs {
        let resource = resource_logs
            .resource
            .as_ref()
            .map(|r| key_values_to_map(&r.attributes, 0))
            .unwrap_or_default();
        let project = resource
            .get("llmtrace.project")
            .and_then(Value::as_str)
            .filter(|name| valid_project(name))
            .unwrap_or(project);
        for scope_logs in &resource_logs.scope_logs {
            for record in &scope_logs.log_records {
                let ids_valid = record.trace_id.len() == 16
                    && record.span_id.len() == 8
                    && record.trace_id.iter().any(|&b| b != 0)
                    && record.span_id.iter().any(|&b| b != 0);
                if !ids_valid {
                    out.unattached += 1;
                    continue;
                }
                let mut attributes = key_values_to_map(&record.attributes, 0);
                let name = if record.event_name.is_empty() {
                    attributes
                        .get("event.name")
                        .and_then(Value::as_str)
                        .unwrap_or("log")
                        .to_string()
                } else {
                    record.event_name.clone()
                };
                if let Some(body) = record.body.as_ref().map(|b| any_value_to_json(b, 0))
                    && !body.is_null()
                    && body != json!({})
                {
                    attributes.insert("body".into(), body);
                }
                if !record.severity_text.is_empty() {
                    attributes.insert(
                        "severity_text".into(),
                        Value::from(record.severity_text.clone()),
                    );
                }
                let time = if record.time_unix_nano > 0 {
                    record.time_unix_nano
                } else {
                    record.observed_time_unix_nano
                };
                out.events.push(LogEvent {
                    project: project.to_string(),
                    trace_id: hex::encode(&record.trace_id),
                    span_id: hex::encode(&record.span_id),
                    event: SpanEvent {
                        name,
                        time_unix_nano: time.min(i64::MAX as u64) as i64,
                        attributes: Value::Object(attributes),
                    },
                });
            }
        }
    }
    out
}

/// 64-bit FNV-1a: a stable id for an event row, so a re-sent record maps to the same row.
fn fnv64(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in *part {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash | 1
}

/// The durable row of one log event: a child of the span it belongs to.
pub fn event_row(log: &LogEvent) -> Span {
    let attributes_text = log.event.attributes.to_string();
    let id = fnv64(&[
        log.span_id.as_bytes(),
        log.event.name.as_bytes(),
        &log.event.time_unix_nano.to_le_bytes(),
        attributes_text.as_bytes(),
    ]);
    Span {
        project: log.project.clone(),
        trace_id: log.trace_id.clone(),
        span_id: format!("{id:016x}"),
        parent_span_id: Some(log.span_id.clone()),
        name: log.event.name.clone(),
        kind: SpanKind::Other,
        source: SpanSource::Log,
        start_time: log.event.time_unix_nano,
        end_time: log.event.time_unix_nano,
        attributes: log.event.attributes.clone(),
        events: vec![log.event.clone()],
        ..Span::default()
    }
}

/// Whether a stored row is an event row (`event_row`) rather than a span of its own — JSON
/// trace logs are stored with source `log` too.
pub fn is_event_row(span: &Span) -> bool {
    span.source == SpanSource::Log
        && span.start_time == span.end_time
        && matches!(span.events.as_slice(), [event] if event.name == span.name && event.time_unix_nano == span.start_time)
}

/// Adds events to a span (once each) and recomputes its columns with what they carry.
pub fn merge_events(span: &mut Span, events: &[SpanEvent]) {
    for event in events {
        let known = span.events.iter().any(|e| {
            e.name == event.name
                && e.time_unix_nano == event.time_unix_nano
                && e.attributes == event.attributes
        });
        if !known {
            span.events.push(event.clone());
        }
    }
    let mut attrs: Map<String, Value> = span.attributes.as_object().cloned().unwrap_or_default();
    let mut prompt = Vec::new();
    let mut completion = Vec::new();
    for event in &span.events {
        let body = event.attributes.get("body").cloned().unwrap_or(Value::Null);
        match event.name.as_str() {
            "gen_ai.client.inference.operation.details" => {
                for (key, value) in event.attributes.as_object().into_iter().flatten() {
                    attrs.entry(key.clone()).or_insert_with(|| value.clone());
                }
            }
            "gen_ai.system.message"
            | "gen_ai.user.message"
            | "gen_ai.assistant.message"
            | "gen_ai.tool.message" => {
                let role = event
                    .name
                    .trim_start_matches("gen_ai.")
                    .trim_end_matches(".message");
                let mut message = body.as_object().cloned().unwrap_or_default();
                message.entry("role").or_insert_with(|| Value::from(role));
                if let Some(id) = message.remove("id") {
                    message.insert("tool_call_id".into(), id);
                }
                prompt.push(Value::Object(message));
            }
            "gen_ai.choice" => {
                let mut message = body
                    .get("message")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                message
                    .entry("role")
                    .or_insert_with(|| Value::from("assistant"));
                if let Some(calls) = body.get("tool_calls") {
                    message.entry("tool_calls").or_insert_with(|| calls.clone());
                }
                completion.push(Value::Object(message));
            }
            _ => {}
        }
    }
    if !prompt.is_empty() {
        attrs
            .entry("gen_ai.prompt")
            .or_insert_with(|| Value::Array(prompt));
    }
    if !completion.is_empty() {
        attrs
            .entry("gen_ai.completion")
            .or_insert_with(|| Value::Array(completion));
    }
    let original_attributes = std::mem::take(&mut span.attributes);
    let status = span.status;
    apply_conventions(span, &attrs);
    span.status = status.max(span.status);
    span.attributes = original_attributes;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str, attributes: Value) -> SpanEvent {
        SpanEvent {
            name: name.into(),
            time_unix_nano: 5,
            attributes,
        }
    }

    #[test]
    fn operation_details_fill_messages_and_usage() {
        let mut span = Span {
            name: "chat".into(),
            attributes: json!({"gen_ai.operation.name": "chat"}),
            ..Span::default()
        };
        let details = event(
            "gen_ai.client.inference.operation.details",
            json!({
                "gen_ai.request.model": "gpt-4o-mini",
                "gen_ai.usage.input_tokens": 19,
                "gen_ai.input.messages": [{"role": "user", "parts": [{"type": "text", "content": "Say hello"}]}],
                "gen_ai.output.messages": [{"role": "assistant", "parts": [{"type": "text", "content": "Hello!"}]}]
            }),
        );
        merge_events(&mut span, std::slice::from_ref(&details));
        merge_events(&mut span, &[details]);
        assert_eq!(span.events.len(), 1, "merging twice adds the event once");
        assert_eq!(span.kind, SpanKind::Llm);
        assert_eq!(span.input_tokens, Some(19));
        assert_eq!(span.input_text, "Say hello");
        assert_eq!(span.output_text, "Hello!");
        assert_eq!(
            span.attributes,
            json!({"gen_ai.operation.name": "chat"}),
            "source attributes stay as sent"
        );
    }

    #[test]
    fn per_message_events_become_messages() {
        let mut span = Span::default();
        merge_events(
            &mut span,
            &[
                event(
                    "gen_ai.system.message",
                    json!({"body": {"content": "You are terse."}}),
                ),
                event(
                    "gen_ai.user.message",
                    json!({"body": {"content": "Weather?"}}),
                ),
                event(
                    "gen_ai.choice",
                    json!({"body": {"index": 0, "finish_reason": "stop", "message": {"content": "Sunny."}}}),
                ),
            ],
        );
        assert_eq!(span.input[0]["role"], "system");
        assert_eq!(span.input_text, "You are terse.\nWeather?");
        assert_eq!(span.output_text, "Sunny.");
    }

    #[test]
    fn event_rows_have_stable_distinct_ids() {
        let log = LogEvent {
            project: "p".into(),
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            span_id: "b7ad6b7169203331".into(),
            event: event("gen_ai.user.message", json!({"body": {"content": "hi"}})),
        };
        let row = event_row(&log);
        assert_eq!(row, event_row(&log));
        assert_ne!(row.span_id, log.span_id);
        assert_eq!(row.parent_span_id.as_deref(), Some("b7ad6b7169203331"));
        assert!(llmtrace_model::span::is_valid_hex_id(&row.span_id, 16));
    }
}
