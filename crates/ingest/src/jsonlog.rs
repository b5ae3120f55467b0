//! JSON trace logs: one structured line per finished operation (NDJSON) → spans.
//!
//! A line looks like `{"timestamp", "level", "message", "trace": {"traceId", "spanId",
//! "parentSpanId", "operation", "duration": "4283ms", "status"}, "attributes": {…},
//! "events": [{"name", "timestamp", "attributes"}]}`. `timestamp` is when the operation
//! ended (the line is written then); the span starts `duration` earlier. Attributes go
//! through the same conventions as OTLP attributes (`llm.*`, `gen_ai.*`, OpenInference,
//! `user.id`, `session.id` / `thread.id`, …). The full mapping is in docs/INGEST.md.

use serde_json::{Map, Value};

use llmtrace_model::{Span, SpanEvent, SpanKind, SpanSource, SpanStatus};

use crate::agents::{parse_time, span_hex, trace_hex};
use crate::convert::apply_conventions;

/// Lines converted, and the lines that were not (1-based line number, reason).
#[derive(Debug, Default)]
pub struct Converted {
    pub spans: Vec<Span>,
    pub errors: Vec<(usize, String)>,
}

/// A time as RFC 3339 (any offset) or a number of milliseconds since the epoch.
fn time_of(value: &Value) -> Option<i64> {
    match value {
        Value::String(text) => parse_time(text),
        Value::Number(n) => n.as_f64().map(|ms| (ms * 1e6) as i64),
        _ => None,
    }
}

/// `"4283ms"`, `"4.2s"`, `"1m 2s"` or a number of milliseconds → ns.
fn duration_of(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n
            .as_f64()
            .filter(|ms| *ms >= 0.0)
            .map(|ms| (ms * 1e6) as i64),
        Value::String(text) => {
            let text = text.trim();
            if let Some(seconds) = text.strip_suffix('s').and_then(|n| n.parse::<f64>().ok())
                && !text.ends_with("ms")
                && !text.ends_with("us")
                && !text.ends_with("ns")
            {
                return (seconds >= 0.0).then_some((seconds * 1e9) as i64);
            }
            if let Some(ms) = text
                .strip_suffix("ms")
                .and_then(|n| n.trim().parse::<f64>().ok())
            {
                return (ms >= 0.0).then_some((ms * 1e6) as i64);
            }
            humantime::parse_duration(text)
                .ok()
                .map(|d| d.as_nanos() as i64)
        }
        _ => None,
    }
}

fn status_of(trace: &Value, level: Option<&str>) -> SpanStatus {
    let status = trace
        .get("status")
        .and_then(|s| s.as_str().or_else(|| s.get("code")?.as_str()))
        .map(str::to_ascii_lowercase);
    match status.as_deref() {
        Some("error" | "failed" | "failure" | "err" | "status_code_error") => SpanStatus::Error,
        Some("timeout") => SpanStatus::Timeout,
        Some("cancelled" | "canceled") => SpanStatus::Cancelled,
        Some(_) => SpanStatus::Ok,
        None => match level.map(str::to_ascii_lowercase).as_deref() {
            Some("error" | "fatal" | "critical") => SpanStatus::Error,
            _ => SpanStatus::Ok,
        },
    }
}

fn id(trace: &Value, keys: &[&str]) -> Option<String> {
    keys.iter()
        .find_map(|key| trace.get(*key).and_then(Value::as_str))
        .filter(|id| !id.is_empty())
        .map(str::to_string)
}

/// One line → a span.
pub fn convert_line(line: &Value, project: &str) -> Result<Span, String> {
    let Value::Object(_) = line else {
        return Err("a line must be a JSON object".into());
    };
    let trace = line
        .get("trace")
        .ok_or("no \"trace\" object (traceId, spanId, operation, duration)")?;
    let trace_id = id(trace, &["traceId", "trace_id"]).ok_or("trace.traceId is missing")?;
    let span_id = id(trace, &["spanId", "span_id"]).ok_or("trace.spanId is missing")?;
    let end = line
        .get("timestamp")
        .and_then(time_of)
        .ok_or("timestamp is missing or not RFC 3339 / epoch milliseconds")?;
    let duration = match trace.get("duration") {
        None | Some(Value::Null) => 0,
        Some(value) => duration_of(value).ok_or_else(|| {
            format!("trace.duration {value} is not a duration such as \"4283ms\"")
        })?,
    };
    let mut attrs: Map<String, Value> = line
        .get("attributes")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let operation = id(trace, &["operation", "name"]);
    let events: Vec<SpanEvent> = line
        .get("events")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|event| {
            Some(SpanEvent {
                name: event.get("name")?.as_str()?.to_string(),
                time_unix_nano: event.get("timestamp").and_then(time_of).unwrap_or(end),
                attributes: event.get("attributes").cloned().unwrap_or(Value::Null),
            })
        })
        .collect();
    let mut span = Span {
        project: project.to_string(),
        trace_id: trace_hex(&trace_id),
        span_id: span_hex(&span_id),
        parent_span_id: id(trace, &["parentSpanId", "parent_span_id", "parentId"])
            .map(|p| span_hex(&p)),
        name: operation.clone().unwrap_or_else(|| "operation".into()),
        source: SpanSource::Log,
        start_time: end - duration,
        end_time: end,
        duration_ms: duration as f64 / 1e6,
        events,
        ..Span::default()
    };
    apply_conventions(&mut span, &attrs);
    if span.operation.is_none() {
        span.operation = operation.clone();
    }
    // a line with a model and usage is a model call even without a GenAI operation name
    let llmish =
        span.model.is_some() || span.input_tokens.is_some() || span.output_tokens.is_some();
    if span.kind == SpanKind::Other && llmish {
        let embedding = operation.as_deref().is_some_and(|op| op.contains("embed"));
        span.kind = if embedding {
            SpanKind::Embedding
        } else {
            SpanKind::Llm
        };
    }
    span.status = status_of(trace, line.get("level").and_then(Value::as_str));
    if span.status != SpanStatus::Ok {
        span.status_message = line
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string);
    }
    for key in ["level", "message"] {
        if let Some(value) = line.get(key) {
            attrs.insert(format!("log.{key}"), value.clone());
        }
    }
    attrs.insert("log.trace_id".into(), Value::from(trace_id));
    attrs.insert("log.span_id".into(), Value::from(span_id));
    span.attributes = Value::Object(attrs);
    Ok(span)
}

/// Every line of an NDJSON body; blank lines are skipped, bad ones reported by number.
pub fn convert_ndjson(body: &[u8], project: &str, first_line: usize) -> Converted {
    let mut out = Converted::default();
    for (index, line) in body.split(|&b| b == b'\n').enumerate() {
        let number = first_line + index;
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<Value>(line) {
            Ok(value) => match convert_line(&value, project) {
                Ok(span) => out.spans.push(span),
                Err(reason) => out.errors.push((number, reason)),
            },
            Err(e) => out.errors.push((number, format!("not JSON: {e}"))),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_logged_llm_call_becomes_a_priced_looking_span() {
        let line = json!({
            "timestamp": "2026-11-22T10:00:04.283Z", "level": "info", "message": "llm call done",
            "trace": {"traceId": "4bf92f3577b34da6a3ce929d0e0e4736", "spanId": "00f067aa0ba902b7",
                      "operation": "openai.chat", "duration": "4283ms", "status": "ok"},
            "attributes": {"llm.vendor": "OpenAI", "llm.request.model": "gpt-4o-mini",
                           "llm.usage.prompt_tokens": 120, "llm.usage.completion_tokens": 30,
                           "user.id": "u-1", "thread.id": "t-9"},
            "events": [{"name": "retry", "timestamp": "2026-11-22T10:00:01Z"}]
        });
        let span = convert_line(&line, "p").unwrap();
        assert_eq!(span.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span.kind, SpanKind::Llm);
        assert_eq!(span.provider.as_deref(), Some("openai"));
        assert_eq!(span.model.as_deref(), Some("gpt-4o-mini"));
        assert_eq!(
            (span.input_tokens, span.output_tokens),
            (Some(120), Some(30))
        );
        assert_eq!(span.user_id.as_deref(), Some("u-1"));
        assert_eq!(span.session_id.as_deref(), Some("t-9"));
        assert_eq!(span.end_time - span.start_time, 4_283_000_000);
        assert_eq!(span.duration_ms, 4283.0);
        assert_eq!(span.events.len(), 1);
        assert_eq!(span.source, SpanSource::Log);
    }

    #[test]
    fn durations_statuses_and_bad_lines() {
        assert_eq!(duration_of(&json!("4.2s")), Some(4_200_000_000));
        assert_eq!(duration_of(&json!("350us")), Some(350_000));
        assert_eq!(duration_of(&json!(12.5)), Some(12_500_000));
        assert_eq!(duration_of(&json!("soon")), None);
        let body = b"{\"timestamp\": 1795000000000, \"level\": \"error\", \"message\": \"boom\", \"trace\": {\"traceId\": \"abc\", \"spanId\": \"def\", \"duration\": 5}}\n\nnot json\n{\"timestamp\": 1}\n";
        let converted = convert_ndjson(body, "p", 1);
        assert_eq!(converted.spans.len(), 1);
        assert_eq!(converted.spans[0].status, SpanStatus::Error);
        assert_eq!(converted.spans[0].status_message.as_deref(), Some("boom"));
        assert_eq!(converted.spans[0].trace_id.len(), 32);
        let lines: Vec<usize> = converted.errors.iter().map(|(n, _)| *n).collect();
        assert_eq!(lines, [3, 4]);
        assert!(
            converted.errors[1].1.contains("trace"),
            "{:?}",
            converted.errors
        );
    }
}
