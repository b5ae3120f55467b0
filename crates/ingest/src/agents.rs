//! OpenAI Agents SDK trace export (`POST /v1/traces/ingest`, PROTOCOLS.md §5) → spans.
//!
//! The SDK sends a trace object when a trace starts (workflow name, `group_id`, metadata,
//! no times) and each span when it ends, children before parents, in batches that may
//! repeat. Ids are mapped to the store's hex form deterministically (re-sends replace, never
//! duplicate) and kept verbatim in attributes. A trace object's workflow name, `group_id`
//! (the session) and metadata are applied to every span of its trace; the SDK's top-level
//! spans (its `task` span, or a manual trace's spans) are the roots of the tree.

use serde_json::{Map, Value, json};

use llmtrace_model::json::at;
use llmtrace_model::{Error, Span, SpanKind, SpanSource, SpanStatus};

use crate::messages;

/// What a trace object says about every span of its trace.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TraceInfo {
    pub trace_id: String,
    pub original_id: String,
    pub workflow_name: Option<String>,
    pub group_id: Option<String>,
    pub metadata: Map<String, Value>,
}

impl TraceInfo {
    /// The user id the SDK's trace metadata names, if any.
    pub fn user_id(&self) -> Option<String> {
        ["user_id", "user.id", "user"]
            .iter()
            .find_map(|key| self.metadata.get(*key).and_then(Value::as_str))
            .map(str::to_string)
    }

    /// Session, user and metadata for a span of this trace.
    pub fn apply(&self, span: &mut Span) {
        if span.session_id.is_none() {
            span.session_id = self.group_id.clone();
        }
        if span.user_id.is_none() {
            span.user_id = self.user_id();
        }
        for (key, value) in &self.metadata {
            let text = value
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| value.to_string());
            span.metadata.entry(key.clone()).or_insert(text);
        }
        if let Some(workflow) = &self.workflow_name {
            span.metadata
                .entry("workflow".into())
                .or_insert_with(|| workflow.clone());
        }
    }
}

/// One ingest body, converted.
#[derive(Debug, Default)]
pub struct Converted {
    pub spans: Vec<Span>,
    pub traces: Vec<TraceInfo>,
    /// Items that could not be read, with the reason (index in `data`).
    pub errors: Vec<String>,
}

/// FNV-1a, for ids that must map the same way in every process and version.
fn fnv(seed: u64, text: &str) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64 ^ seed;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `trace_<32 hex>` → the hex; any other string → 32 hex derived from it.
pub fn trace_hex(id: &str) -> String {
    match id.strip_prefix("trace_") {
        Some(hex) if is_hex(hex, 32) => hex.to_ascii_lowercase(),
        _ if is_hex(id, 32) => id.to_ascii_lowercase(),
        _ => format!("{:016x}{:016x}", fnv(1, id), fnv(2, id)),
    }
}

/// Any span id → 16 hex derived from it.
pub fn span_hex(id: &str) -> String {
    if is_hex(id, 16) {
        return id.to_ascii_lowercase();
    }
    format!("{:016x}", fnv(3, id))
}

/// `2026-11-22T02:32:25.330480+00:00` (any offset, or `Z`) → ns since the epoch.
pub fn parse_time(text: &str) -> Option<i64> {
    let text = text.trim();
    let (naive, offset_s) = match text.len().checked_sub(6).map(|i| text.split_at(i)) {
        Some((head, tail))
            if (tail.starts_with('+') || tail.starts_with('-')) && tail.as_bytes()[3] == b':' =>
        {
            let sign = if tail.starts_with('-') { -1 } else { 1 };
            let hours: i64 = tail[1..3].parse().ok()?;
            let minutes: i64 = tail[4..6].parse().ok()?;
            (head, sign * (hours * 3600 + minutes * 60))
        }
        _ => (text.trim_end_matches('Z'), 0),
    };
    let time = humantime::parse_rfc3339_weak(naive).ok()?;
    let ns = time.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos() as i64;
    Some(ns - offset_s * 1_000_000_000)
}

fn text(value: &Value, key: &str) -> Option<String> {
    value.get(key).and_then(Value::as_str).map(str::to_string)
}

fn int(value: &Value, pointer: &str) -> Option<i64> {
    at(value, pointer).and_then(Value::as_i64)
}

/// A JSON-encoded string becomes its tree; anything else stays as it is.
fn maybe_json(value: &Value) -> Value {
    match value {
        Value::String(s) => serde_json::from_str(s).unwrap_or_else(|_| value.clone()),
        other => other.clone(),
    }
}

fn flat_text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The SDK's usage dicts (Responses shape, Chat shape, task/turn totals) → span columns.
fn apply_usage(span: &mut Span, usage: &Value) {
    let input = int(usage, "/input_tokens").or_else(|| int(usage, "/prompt_tokens"));
    let output = int(usage, "/output_tokens").or_else(|| int(usage, "/completion_tokens"));
    if input.is_none() && output.is_none() {
        return;
    }
    span.input_tokens = input;
    span.output_tokens = output;
    span.cached_input_tokens = int(usage, "/input_tokens_details/cached_tokens")
        .or_else(|| int(usage, "/prompt_tokens_details/cached_tokens"))
        .or_else(|| int(usage, "/cached_input_tokens"));
    span.reasoning_tokens = int(usage, "/output_tokens_details/reasoning_tokens")
        .or_else(|| int(usage, "/completion_tokens_details/reasoning_tokens"));
    span.total_tokens =
        int(usage, "/total_tokens").or(Some(input.unwrap_or(0) + output.unwrap_or(0)));
    span.usage_source = Some("reported".into());
    let write = int(usage, "/input_tokens_details/cache_write_tokens")
        .or_else(|| int(usage, "/cache_write_input_tokens"));
    if let (Some(write), Value::Object(attributes)) = (write, &mut span.attributes)
        && write > 0
    {
        attributes.insert(
            "gen_ai.usage.cache_creation.input_tokens".into(),
            json!(write),
        );
    }
}

/// A model name's provider as the generation's `model_config.base_url` shows it.
fn provider_of(config: &Value) -> String {
    let base = config.get("base_url").and_then(Value::as_str).unwrap_or("");
    if base.is_empty() || base.contains("api.openai.com") {
        "openai".into()
    } else if base.contains("anthropic") {
        "anthropic".into()
    } else if base.contains("azure") {
        "azure".into()
    } else {
        "openai-compatible".into()
    }
}

/// One `trace.span` item → a span (the trace's session and metadata are applied later).
fn convert_span(item: &Value, project: &str) -> Result<Span, String> {
    let id = text(item, "id").ok_or("span has no id")?;
    let trace = text(item, "trace_id").ok_or("span has no trace_id")?;
    let trace_id = trace_hex(&trace);
    let start = item
        .get("started_at")
        .and_then(Value::as_str)
        .and_then(parse_time)
        .ok_or("span has no readable started_at")?;
    let end = item
        .get("ended_at")
        .and_then(Value::as_str)
        .and_then(parse_time)
        .unwrap_or(start)
        .max(start);
    let data = item.get("span_data").cloned().unwrap_or(Value::Null);
    let kind_name = data.get("type").and_then(Value::as_str).unwrap_or("custom");
    let parent = item.get("parent_id").and_then(Value::as_str).map(span_hex);
    let mut attributes = Map::new();
    attributes.insert("openai.agents.span_id".into(), json!(id));
    attributes.insert("openai.agents.trace_id".into(), json!(trace));
    attributes.insert("openai.agents.span_type".into(), json!(kind_name));
    let mut span = Span {
        project: project.to_string(),
        trace_id,
        span_id: span_hex(&id),
        parent_span_id: parent,
        name: kind_name.to_string(),
        kind: SpanKind::Other,
        source: SpanSource::AgentsSdk,
        start_time: start,
        end_time: end,
        duration_ms: (end - start) as f64 / 1e6,
        attributes: Value::Object(attributes),
        ..Span::default()
    };
    if let Some(Value::Object(metadata)) = item.get("metadata") {
        for (key, value) in metadata {
            span.metadata.insert(
                key.clone(),
                value
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| value.to_string()),
            );
        }
    }
    let name = text(&data, "name");
    match kind_name {
        "agent" => {
            span.kind = SpanKind::Agent;
            span.name = name.unwrap_or_else(|| "agent".into());
            span.operation = Some("invoke_agent".into());
            for key in ["handoffs", "tools", "output_type"] {
                if let (Some(value), Value::Object(attributes)) =
                    (data.get(key), &mut span.attributes)
                {
                    attributes.insert(format!("openai.agents.{key}"), value.clone());
                }
            }
        }
        "function" => {
            span.kind = SpanKind::Tool;
            span.name = name.unwrap_or_else(|| "function".into());
            span.operation = Some("execute_tool".into());
            span.input = maybe_json(data.get("input").unwrap_or(&Value::Null));
            span.output = data.get("output").cloned().unwrap_or(Value::Null);
            span.input_text = flat_text(data.get("input").unwrap_or(&Value::Null));
            span.output_text = flat_text(&span.output);
            if let (Some(mcp), Value::Object(attributes)) = (
                data.get("mcp_data").filter(|v| !v.is_null()),
                &mut span.attributes,
            ) {
                attributes.insert("openai.agents.mcp_data".into(), mcp.clone());
            }
        }
        "generation" => {
            span.kind = SpanKind::Llm;
            span.operation = Some("chat".into());
            span.model = text(&data, "model");
            span.request_model = span.model.clone();
            let config = data.get("model_config").cloned().unwrap_or(Value::Null);
            span.provider = Some(provider_of(&config));
            span.temperature = config.get("temperature").and_then(Value::as_f64);
            span.top_p = config.get("top_p").and_then(Value::as_f64);
            span.max_tokens = config.get("max_tokens").and_then(Value::as_i64);
            // a list of messages is normalized; anything else is kept as it came
            let messages_or_kept = |value: Option<&Value>| match value {
                Some(list @ Value::Array(_)) => {
                    messages::into_openai_messages(list.clone()).unwrap_or(Value::Null)
                }
                other => other.cloned().unwrap_or(Value::Null),
            };
            span.input = messages_or_kept(data.get("input"));
            span.output = messages_or_kept(data.get("output"));
            span.input_text = messages::flatten_text(&span.input);
            span.output_text = messages::flatten_text(&span.output);
            span.name = match &span.model {
                Some(model) => format!("chat {model}"),
                None => "generation".into(),
            };
            if let Value::Object(attributes) = &mut span.attributes {
                attributes.insert("llmtrace.request".into(), config);
            }
            apply_usage(&mut span, data.get("usage").unwrap_or(&Value::Null));
        }
        "response" => {
            span.kind = SpanKind::Llm;
            span.operation = Some("responses".into());
            span.name = "response".into();
            if let (Some(id), Value::Object(attributes)) = (
                data.get("response_id").filter(|v| !v.is_null()),
                &mut span.attributes,
            ) {
                attributes.insert("gen_ai.response.id".into(), id.clone());
            }
            apply_usage(&mut span, data.get("usage").unwrap_or(&Value::Null));
        }
        "handoff" => {
            span.kind = SpanKind::Handoff;
            let from = text(&data, "from_agent").unwrap_or_default();
            let to = text(&data, "to_agent").unwrap_or_default();
            span.name = format!("handoff {from} → {to}");
            span.input = json!({"from_agent": from, "to_agent": to});
        }
        "guardrail" => {
            span.kind = SpanKind::Guardrail;
            span.name = name.unwrap_or_else(|| "guardrail".into());
            let triggered = data
                .get("triggered")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            span.output = json!({"triggered": triggered});
            span.output_text = if triggered {
                "triggered"
            } else {
                "not triggered"
            }
            .into();
        }
        "custom" => {
            let payload = data.get("data").cloned().unwrap_or(Value::Null);
            match payload.get("sdk_span_type").and_then(Value::as_str) {
                Some("task") => {
                    span.kind = SpanKind::Chain;
                    span.name = format!("task {}", text(&payload, "name").unwrap_or_default())
                        .trim()
                        .to_string();
                }
                Some("turn") => {
                    span.kind = SpanKind::Chain;
                    span.name = format!(
                        "turn {} {}",
                        payload
                            .get("turn")
                            .map(Value::to_string)
                            .unwrap_or_default(),
                        text(&payload, "agent_name").unwrap_or_default()
                    )
                    .trim()
                    .to_string();
                }
                _ => span.name = name.unwrap_or_else(|| "custom".into()),
            }
            // task and turn usage totals their model calls: kept, not counted again
            span.output = payload;
        }
        "mcp_tools" | "mcp_list_tools" => {
            span.kind = SpanKind::Tool;
            span.name = format!(
                "mcp list tools {}",
                text(&data, "server").unwrap_or_default()
            )
            .trim()
            .to_string();
            span.output = data.get("result").cloned().unwrap_or(Value::Null);
            span.output_text = flat_text(&span.output);
        }
        "transcription" | "speech" | "speech_group" => {
            span.kind = SpanKind::Llm;
            span.operation = Some(kind_name.to_string());
            span.name = kind_name.to_string();
            span.model = text(&data, "model");
            span.request_model = span.model.clone();
            // audio payloads are base64: kept out of the searchable text
            let input = data.get("input").cloned().unwrap_or(Value::Null);
            let output = data.get("output").cloned().unwrap_or(Value::Null);
            if kind_name == "transcription" {
                span.output_text = flat_text(&output);
            } else if kind_name == "speech" {
                span.input_text = flat_text(&input);
            }
            span.input = input;
            span.output = output;
        }
        _ => {
            span.name = name.unwrap_or_else(|| kind_name.to_string());
            span.output = data.clone();
        }
    }
    if let Some(error) = item.get("error").filter(|e| !e.is_null()) {
        span.status = SpanStatus::Error;
        span.status_message = error
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Value::Object(attributes) = &mut span.attributes {
            attributes.insert("openai.agents.error".into(), error.clone());
        }
    }
    Ok(span)
}

/// Reads an ingest body: `{"data": [items]}` (or a bare list, or one item).
pub fn items(body: &[u8]) -> Result<Vec<Value>, Error> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Error::BadRequest(format!("body is not JSON: {e}")))?;
    match value {
        Value::Object(mut object) if object.contains_key("data") => match object.remove("data") {
            Some(Value::Array(items)) => Ok(items),
            _ => Err(Error::BadRequest(
                "\"data\" must be a list of trace and span objects".into(),
            )),
        },
        Value::Object(object) if object.contains_key("object") => Ok(vec![Value::Object(object)]),
        Value::Array(items) => Ok(items),
        _ => Err(Error::BadRequest(
            "expected {\"data\": [trace and span objects]} as the Agents SDK sends".into(),
        )),
    }
}

/// Converts trace and span items; unreadable items are reported by index and skipped.
pub fn convert(items: &[Value], project: &str) -> Converted {
    let mut out = Converted::default();
    for (index, item) in items.iter().enumerate() {
        match item.get("object").and_then(Value::as_str) {
            Some("trace") => match text(item, "id") {
                Some(id) => out.traces.push(TraceInfo {
                    trace_id: trace_hex(&id),
                    original_id: id,
                    workflow_name: text(item, "workflow_name"),
                    group_id: text(item, "group_id"),
                    metadata: item
                        .get("metadata")
                        .and_then(Value::as_object)
                        .cloned()
                        .unwrap_or_default(),
                }),
                None => out.errors.push(format!("item {index}: trace has no id")),
            },
            Some("trace.span") => match convert_span(item, project) {
                Ok(span) => out.spans.push(span),
                Err(reason) => out.errors.push(format!("item {index}: {reason}")),
            },
            other => out.errors.push(format!(
                "item {index}: object {:?} is neither \"trace\" nor \"trace.span\"",
                other.unwrap_or("(missing)")
            )),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_map_to_hex_the_same_way_every_time() {
        assert_eq!(
            trace_hex("trace_76966453ff6347ca80df3451049612bc"),
            "76966453ff6347ca80df3451049612bc"
        );
        let custom = trace_hex("my-run-7");
        assert_eq!(custom.len(), 32);
        assert_eq!(custom, trace_hex("my-run-7"));
        assert_ne!(custom, trace_hex("my-run-8"));
        assert_eq!(span_hex("span_6326b907ca634fd2bfb25a9e").len(), 16);
        assert_eq!(
            span_hex("span_6326b907ca634fd2bfb25a9e"),
            span_hex("span_6326b907ca634fd2bfb25a9e")
        );
    }

    #[test]
    fn times_with_offsets_and_microseconds() {
        let utc = parse_time("2026-11-22T02:32:25.330480+00:00").unwrap();
        assert_eq!(utc % 1_000_000_000, 330_480_000);
        assert_eq!(parse_time("2026-11-22T04:32:25.330480+02:00"), Some(utc));
        assert_eq!(parse_time("2026-11-22T02:32:25.330480Z"), Some(utc));
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn bad_items_are_reported_and_skipped() {
        let items = vec![
            json!({"object": "trace.span", "id": "span_1", "trace_id": "trace_x"}),
            json!({"object": "weird"}),
            json!({"object": "trace", "id": "trace_1", "workflow_name": "w", "group_id": "g"}),
        ];
        let converted = convert(&items, "p");
        assert_eq!(converted.traces.len(), 1);
        assert!(converted.spans.is_empty());
        assert_eq!(converted.errors.len(), 2);
        assert!(
            converted.errors[0].contains("started_at"),
            "{:?}",
            converted.errors
        );
    }
}
