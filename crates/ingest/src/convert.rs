//! OTLP spans → normalized spans, reading every GenAI dialect of PROTOCOLS.md: OTel GenAI
//! (current attributes and older prompt/completion events), OpenInference, OpenLLMetry
//! (current and legacy `gen_ai.prompt.N.*`) and Langfuse. Every attribute the source sent
//! is kept in `attributes`; the mapped columns are derived from it.

use std::collections::BTreeMap;

use llmtrace_model::{Span, SpanEvent, SpanKind, SpanSource, SpanStatus};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span as OtlpSpan;
use serde_json::{Map, Value};

use crate::messages::{
    flatten_text, from_flat, from_genai_messages, from_openai_message, from_openai_messages,
    into_openai_message, into_openai_messages, json_tree, regroup, system_message_from_parts,
};

/// Limits that keep one request from exhausting memory.
const MAX_ATTRIBUTES: usize = 4096;
const MAX_VALUE_DEPTH: usize = 32;

/// Result of converting one request: accepted spans and why others were rejected.
#[derive(Debug, Default)]
pub struct Converted {
    pub spans: Vec<Span>,
    pub rejected: u64,
    pub errors: Vec<String>,
}

/// AnyValue → JSON. Bytes become base64-free hex to stay printable; depth is bounded.
pub fn any_value_to_json(value: &AnyValue, depth: usize) -> Value {
    if depth > MAX_VALUE_DEPTH {
        return Value::Null;
    }
    match &value.value {
        None => Value::Null,
        Some(any_value::Value::StringValue(text)) => Value::from(text.clone()),
        Some(any_value::Value::BoolValue(flag)) => Value::from(*flag),
        Some(any_value::Value::IntValue(number)) => Value::from(*number),
        Some(any_value::Value::DoubleValue(number)) => {
            serde_json::Number::from_f64(*number).map_or(Value::Null, Value::Number)
        }
        Some(any_value::Value::ArrayValue(array)) => Value::Array(
            array
                .values
                .iter()
                .map(|item| any_value_to_json(item, depth + 1))
                .collect(),
        ),
        Some(any_value::Value::KvlistValue(list)) => {
            Value::Object(key_values_to_map(&list.values, depth + 1))
        }
        Some(any_value::Value::BytesValue(bytes)) => Value::from(hex::encode(bytes)),
        #[allow(unreachable_patterns)]
        Some(_) => Value::Null,
    }
}

pub fn key_values_to_map(values: &[KeyValue], depth: usize) -> Map<String, Value> {
    values
        .iter()
        .take(MAX_ATTRIBUTES)
        .map(|kv| {
            let value = kv
                .value
                .as_ref()
                .map_or(Value::Null, |v| any_value_to_json(v, depth));
            (kv.key.clone(), value)
        })
        .collect()
}

/// Converts a whole OTLP trace export. `project` applies unless a resource names one.
pub fn convert_traces(
    request: &ExportTraceServiceRequest,
    project: &str,
    source: SpanSource,
) -> Converted {
    let mut out = Converted::default();
    for resource_spans in &request.resource_spans {
        let resource = resource_spans
            .resource
            .as_ref()
            .map(|r| key_values_to_map(&r.attributes, 0))
            .unwrap_or_default();
        let service_name = resource
            .get("service.name")
            .and_then(Value::as_str)
            .map(str::to_string);
        let resource_project = resource
            .get("llmtrace.project")
            .or_else(|| resource.get("openinference.project.name"))
            .and_then(Value::as_str)
            .filter(|name| valid_project(name))
            .unwrap_or(project);
        for scope_spans in &resource_spans.scope_spans {
            let scope_name = scope_spans
                .scope
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default();
            for otlp_span in &scope_spans.spans {
                match convert_span(
                    otlp_span,
                    resource_project,
                    service_name.clone(),
                    &scope_name,
                    source,
                ) {
                    Ok(span) => out.spans.push(span),
                    Err(message) => {
                        out.rejected += 1;
                        if out.errors.len() < 5 {
                            out.errors.push(message);
                        }
                    }
                }
            }
        }
    }
    out
}

/// Project names are path segments on disk: letters, digits, `_`, `-`, `.` (not first).
pub fn valid_project(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

fn convert_span(
    otlp: &OtlpSpan,
    project: &str,
    service_name: Option<String>,
    scope_name: &str,
    source: SpanSource,
) -> Result<Span, String> {
    if otlp.trace_id.len() != 16 || otlp.trace_id.iter().all(|&b| b == 0) {
        return Err(format!(
            "span {:?} has an invalid trace_id ({} bytes; want 16, not all zero)",
            otlp.name,
            otlp.trace_id.len()
        ));
    }
    if otlp.span_id.len() != 8 || otlp.span_id.iter().all(|&b| b == 0) {
        return Err(format!(
            "span {:?} has an invalid span_id ({} bytes; want 8, not all zero)",
            otlp.name,
            otlp.span_id.len()
        ));
    }
    let parent_span_id = match otlp.parent_span_id.len() {
        0 => None,
        8 => Some(hex::encode(&otlp.parent_span_id)),
        n => {
            return Err(format!(
                "span {:?} has a parent_span_id of {n} bytes (want 8)",
                otlp.name
            ));
        }
    };
    let attrs = key_values_to_map(&otlp.attributes, 0);
    let start_time = otlp.start_time_unix_nano.min(i64::MAX as u64) as i64;
    let end_time = (otlp.end_time_unix_nano.min(i64::MAX as u64) as i64).max(start_time);
    let events: Vec<SpanEvent> = otlp
        .events
        .iter()
        .map(|event| SpanEvent {
            name: event.name.clone(),
            time_unix_nano: event.time_unix_nano.min(i64::MAX as u64) as i64,
            attributes: Value::Object(key_values_to_map(&event.attributes, 0)),
        })
        .collect();
    let status_code = otlp.status.as_ref().map_or(0, |s| s.code);
    let mut span = Span {
        project: project.to_string(),
        trace_id: hex::encode(&otlp.trace_id),
        span_id: hex::encode(&otlp.span_id),
        parent_span_id,
        name: otlp.name.clone(),
        source,
        service_name,
        start_time,
        end_time,
        duration_ms: (end_time - start_time) as f64 / 1e6,
        status: if status_code == 2 {
            SpanStatus::Error
        } else {
            SpanStatus::Ok
        },
        status_message: otlp
            .status
            .as_ref()
            .map(|s| s.message.clone())
            .filter(|m| !m.is_empty()),
        events,
        ..Span::default()
    };
    if !scope_name.is_empty() {
        let mut with_scope = attrs.clone();
        with_scope.insert("otel.scope.name".into(), Value::from(scope_name));
        apply_conventions(&mut span, &with_scope);
        span.attributes = Value::Object(with_scope);
    } else {
        apply_conventions(&mut span, &attrs);
        span.attributes = Value::Object(attrs);
    }
    Ok(span)
}

fn text(attrs: &Map<String, Value>, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|key| match attrs.get(*key)? {
        Value::String(text) if !text.is_empty() => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Array(items) => items.first().and_then(Value::as_str).map(str::to_string),
        _ => None,
    })
}

fn int(attrs: &Map<String, Value>, keys: &[&str]) -> Option<i64> {
    keys.iter().find_map(|key| match attrs.get(*key)? {
        Value::Number(number) => number
            .as_i64()
            .or_else(|| number.as_f64().map(|f| f as i64)),
        Value::String(text) => text.parse().ok(),
        _ => None,
    })
}

fn float(attrs: &Map<String, Value>, keys: &[&str]) -> Option<f64> {
    keys.iter().find_map(|key| match attrs.get(*key)? {
        Value::Number(number) => number.as_f64(),
        Value::String(text) => text.parse().ok(),
        _ => None,
    })
}

fn boolean(attrs: &Map<String, Value>, keys: &[&str]) -> Option<bool> {
    keys.iter().find_map(|key| match attrs.get(*key)? {
        Value::Bool(flag) => Some(*flag),
        Value::String(text) => text.parse().ok(),
        _ => None,
    })
}

fn kind_of(attrs: &Map<String, Value>, operation: Option<&str>) -> SpanKind {
    if let Some(kind) = text(attrs, &["openinference.span.kind"]) {
        return match kind.to_ascii_uppercase().as_str() {
            "LLM" => SpanKind::Llm,
            "EMBEDDING" => SpanKind::Embedding,
            "TOOL" => SpanKind::Tool,
            "AGENT" => SpanKind::Agent,
            "CHAIN" => SpanKind::Chain,
            "RETRIEVER" | "RERANKER" => SpanKind::Retriever,
            "GUARDRAIL" => SpanKind::Guardrail,
            _ => SpanKind::Other,
        };
    }
    if let Some(kind) = text(attrs, &["langfuse.observation.type"]) {
        match kind.as_str() {
            "generation" => return SpanKind::Llm,
            "embedding" => return SpanKind::Embedding,
            "tool" => return SpanKind::Tool,
            "agent" => return SpanKind::Agent,
            "chain" => return SpanKind::Chain,
            "retriever" => return SpanKind::Retriever,
            "guardrail" => return SpanKind::Guardrail,
            _ => {}
        }
    }
    if let Some(operation) = operation {
        match operation {
            "chat" | "text_completion" | "generate_content" | "completion" | "responses" => {
                return SpanKind::Llm;
            }
            "embeddings" | "embedding" => return SpanKind::Embedding,
            "execute_tool" => return SpanKind::Tool,
            "invoke_agent" | "create_agent" => return SpanKind::Agent,
            "invoke_workflow" => return SpanKind::Chain,
            "retrieval" => return SpanKind::Retriever,
            _ => {}
        }
    }
    match text(attrs, &["traceloop.span.kind"]).as_deref() {
        Some("workflow") | Some("task") => SpanKind::Chain,
        Some("agent") => SpanKind::Agent,
        Some("tool") => SpanKind::Tool,
        _ => SpanKind::Other,
    }
}

/// Fills the mapped columns from the attributes and events of any dialect.
pub fn apply_conventions(span: &mut Span, attrs: &Map<String, Value>) {
    span.operation = text(attrs, &["gen_ai.operation.name", "llm.request.type"]);
    span.kind = kind_of(attrs, span.operation.as_deref());
    span.provider = text(
        attrs,
        &[
            "gen_ai.provider.name",
            "gen_ai.system",
            "llm.provider",
            "llm.system",
            "llm.vendor",
        ],
    )
    .map(|p| p.to_ascii_lowercase());
    span.request_model = text(
        attrs,
        &[
            "gen_ai.request.model",
            "llm.request.model_name",
            "llm.request.model",
            "langfuse.observation.model.name",
        ],
    );
    span.model = text(
        attrs,
        &[
            "gen_ai.response.model",
            "llm.response.model_name",
            "llm.model_name",
            "embedding.model_name",
            "llm.response.model",
        ],
    )
    .or_else(|| span.request_model.clone());
    if span.request_model.is_none() {
        // OpenInference puts the requested model in the invocation parameters.
        span.request_model = [
            "llm.invocation_parameters",
            "embedding.invocation_parameters",
        ]
        .iter()
        .filter_map(|key| attrs.get(*key).map(json_tree))
        .find_map(|params| params.get("model")?.as_str().map(str::to_string))
        .or_else(|| text(attrs, &["llm.model_name", "embedding.model_name"]));
    }
    span.temperature = float(
        attrs,
        &["gen_ai.request.temperature", "llm.request.temperature"],
    );
    span.top_p = float(attrs, &["gen_ai.request.top_p", "llm.request.top_p"]);
    span.max_tokens = int(
        attrs,
        &["gen_ai.request.max_tokens", "llm.request.max_tokens"],
    );
    span.stream = boolean(
        attrs,
        &[
            "gen_ai.request.stream",
            "gen_ai.is_streaming",
            "llm.is_streaming",
        ],
    );
    span.finish_reason = text(
        attrs,
        &[
            "gen_ai.response.finish_reasons",
            "llm.finish_reason",
            "gen_ai.completion.0.finish_reason",
        ],
    );
    span.input_tokens = int(
        attrs,
        &[
            "gen_ai.usage.input_tokens",
            "gen_ai.usage.prompt_tokens",
            "llm.token_count.prompt",
            "llm.usage.prompt_tokens",
        ],
    );
    span.output_tokens = int(
        attrs,
        &[
            "gen_ai.usage.output_tokens",
            "gen_ai.usage.completion_tokens",
            "llm.token_count.completion",
            "llm.usage.completion_tokens",
        ],
    );
    span.cached_input_tokens = int(
        attrs,
        &[
            "gen_ai.usage.cache_read.input_tokens",
            "gen_ai.usage.cache_read_input_tokens",
            "llm.token_count.prompt_details.cache_read",
        ],
    );
    span.reasoning_tokens = int(
        attrs,
        &[
            "gen_ai.usage.reasoning.output_tokens",
            "gen_ai.usage.reasoning_tokens",
            "llm.usage.reasoning_tokens",
            "llm.token_count.completion_details.reasoning",
        ],
    );
    span.total_tokens = int(
        attrs,
        &[
            "gen_ai.usage.total_tokens",
            "llm.usage.total_tokens",
            "llm.token_count.total",
        ],
    )
    .or_else(|| match (span.input_tokens, span.output_tokens) {
        (None, None) => None,
        (input, output) => Some(input.unwrap_or(0) + output.unwrap_or(0)),
    });
    if span.input_tokens.is_some() || span.output_tokens.is_some() {
        span.usage_source = Some("reported".into());
    }
    span.input_cost_usd = float(attrs, &["llm.cost.prompt"]);
    span.output_cost_usd = float(attrs, &["llm.cost.completion"]);
    span.total_cost_usd = float(attrs, &["llm.cost.total", "gen_ai.usage.cost"]);
    span.error_type = text(attrs, &["error.type", "exception.type"]);
    if span.status == SpanStatus::Ok && span.error_type.is_some() {
        span.status = SpanStatus::Error;
    }
    span.http_status = int(attrs, &["http.response.status_code", "http.status_code"])
        .and_then(|c| u16::try_from(c).ok());
    span.session_id = text(
        attrs,
        &[
            "gen_ai.conversation.id",
            "session.id",
            "traceloop.association.properties.session_id",
            "langfuse.session.id",
            "thread.id",
        ],
    );
    span.user_id = text(
        attrs,
        &[
            "user.id",
            "traceloop.association.properties.user_id",
            "gen_ai.user",
            "llm.user",
            "langfuse.user.id",
            "enduser.id",
        ],
    );
    span.routing_alias = text(attrs, &["llmtrace.routing_alias"]);
    span.time_to_first_token_ms = float(attrs, &["gen_ai.response.time_to_first_chunk"])
        .map(|seconds| seconds * 1000.0)
        .or_else(|| first_token_event_ms(span));
    span.metadata = metadata(attrs);
    span.tools = tools(attrs);
    span.input = input_messages(attrs, &span.events).unwrap_or(Value::Null);
    span.output = output_messages(attrs, &span.events).unwrap_or(Value::Null);
    span.input_text = flatten_text(&span.input);
    span.output_text = flatten_text(&span.output);
    if span.input_text.is_empty() {
        span.input_text = text(
            attrs,
            &[
                "gen_ai.tool.call.arguments",
                "traceloop.entity.input",
                "input.value",
            ],
        )
        .unwrap_or_default();
    }
    if span.output_text.is_empty() {
        span.output_text = text(
            attrs,
            &[
                "gen_ai.tool.call.result",
                "traceloop.entity.output",
                "output.value",
            ],
        )
        .unwrap_or_default();
    }
}

fn first_token_event_ms(span: &Span) -> Option<f64> {
    span.events
        .iter()
        .find(|event| {
            event.name == "First Token Stream Event" || event.name.ends_with("first_token")
        })
        .map(|event| (event.time_unix_nano - span.start_time) as f64 / 1e6)
}

fn metadata(attrs: &Map<String, Value>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let as_text = |value: &Value| match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    // OpenInference: one JSON-string attribute.
    if let Some(Value::Object(map)) = attrs.get("metadata").map(json_tree) {
        for (key, value) in map {
            out.insert(key, as_text(&value));
        }
    }
    for (key, value) in attrs {
        let stripped = key
            .strip_prefix("traceloop.association.properties.")
            .or_else(|| key.strip_prefix("langfuse.trace.metadata."))
            .or_else(|| key.strip_prefix("langfuse.observation.metadata."))
            .or_else(|| key.strip_prefix("llmtrace.metadata."));
        if let Some(name) = stripped
            && !matches!(name, "session_id" | "user_id")
        {
            out.insert(name.to_string(), as_text(value));
        }
    }
    out
}

fn tools(attrs: &Map<String, Value>) -> Value {
    if let Some(definitions) = attrs.get("gen_ai.tool.definitions") {
        return json_tree(definitions);
    }
    let openinference: Vec<Value> = regroup(attrs.iter(), "llm.tools.")
        .into_iter()
        .filter_map(|tool| tool.get("tool.json_schema").map(json_tree))
        .collect();
    if !openinference.is_empty() {
        return Value::Array(openinference);
    }
    let legacy: Vec<Value> = regroup(attrs.iter(), "llm.request.functions.")
        .into_iter()
        .map(|mut function| {
            if let Some(parameters) = function.get("parameters").map(json_tree) {
                function.insert("parameters".into(), parameters);
            }
            Value::Object(function)
        })
        .collect();
    if legacy.is_empty() {
        Value::Null
    } else {
        Value::Array(legacy)
    }
}

fn non_empty(messages: Value) -> Option<Value> {
    messages
        .as_array()
        .is_some_and(|items| !items.is_empty())
        .then_some(messages)
}

fn event_attr<'a>(events: &'a [SpanEvent], event_name: &str, key: &str) -> Option<&'a Value> {
    events
        .iter()
        .find(|event| event.name == event_name)
        .and_then(|event| event.attributes.get(key))
}

/// Messages flattened into attributes: OpenInference (`llm.input_messages.N.message.*`)
/// or OpenLLMetry legacy (`gen_ai.prompt.N.*`).
fn flattened_messages(
    attrs: &Map<String, Value>,
    openinference_prefix: &str,
    legacy_prefix: &str,
) -> Option<Value> {
    let openinference_tool_call = [
        "tool_call.id",
        "tool_call.function.name",
        "tool_call.function.arguments",
    ];
    regrouped_messages(
        attrs,
        openinference_prefix,
        &|name| format!("message.{name}"),
        openinference_tool_call,
    )
    .or_else(|| {
        regrouped_messages(
            attrs,
            legacy_prefix,
            &|name| name.to_string(),
            ["id", "name", "arguments"],
        )
    })
}

fn regrouped_messages(
    attrs: &Map<String, Value>,
    prefix: &str,
    field: &dyn Fn(&str) -> String,
    tool_call_fields: [&str; 3],
) -> Option<Value> {
    let messages: Vec<Value> = regroup(attrs.iter(), prefix)
        .iter()
        .map(|fields| from_flat(fields, field, tool_call_fields))
        .collect();
    (!messages.is_empty()).then_some(Value::Array(messages))
}

fn input_messages(attrs: &Map<String, Value>, events: &[SpanEvent]) -> Option<Value> {
    if let Some(raw) = attrs.get("gen_ai.input.messages") {
        let mut messages = from_genai_messages(&json_tree(raw))?;
        if let Some(system) = attrs
            .get("gen_ai.system_instructions")
            .map(json_tree)
            .and_then(|v| system_message_from_parts(&v))
            && let Some(items) = messages.as_array_mut()
        {
            items.insert(0, system);
        }
        return non_empty(messages);
    }
    if let Some(messages) = flattened_messages(attrs, "llm.input_messages.", "gen_ai.prompt.") {
        return Some(messages);
    }
    if let Some(raw) = attrs
        .get("gen_ai.prompt")
        .or_else(|| event_attr(events, "gen_ai.content.prompt", "gen_ai.prompt"))
    {
        return into_openai_messages(json_tree(raw)).and_then(non_empty);
    }
    if let Some(raw) = attrs.get("langfuse.observation.input").map(json_tree) {
        let messages = raw.get("messages").unwrap_or(&raw);
        if let Some(messages) = from_openai_messages(messages).and_then(non_empty) {
            return Some(messages);
        }
    }
    if let Some(raw) = attrs.get("input.value").map(json_tree)
        && let Some(messages) = raw.get("messages").and_then(from_openai_messages)
    {
        return non_empty(messages);
    }
    None
}

fn output_messages(attrs: &Map<String, Value>, events: &[SpanEvent]) -> Option<Value> {
    if let Some(raw) = attrs.get("gen_ai.output.messages") {
        return from_genai_messages(&json_tree(raw)).and_then(non_empty);
    }
    if let Some(messages) = flattened_messages(attrs, "llm.output_messages.", "gen_ai.completion.")
    {
        return Some(messages);
    }
    if let Some(raw) = attrs
        .get("gen_ai.completion")
        .or_else(|| event_attr(events, "gen_ai.content.completion", "gen_ai.completion"))
    {
        return match json_tree(raw) {
            list @ Value::Array(_) => into_openai_messages(list).and_then(non_empty),
            Value::String(text) => Some(Value::Array(vec![into_openai_message(
                serde_json::json!({"role": "assistant", "content": text}),
            )])),
            other => Some(Value::Array(vec![into_openai_message(other)])),
        };
    }
    if let Some(raw) = attrs.get("langfuse.observation.output").map(json_tree) {
        if raw.get("role").is_some() {
            return Some(Value::Array(vec![into_openai_message(raw)]));
        }
        if let Some(messages) = into_openai_messages(raw).and_then(non_empty) {
            return Some(messages);
        }
    }
    if let Some(raw) = attrs.get("output.value").map(json_tree)
        && let Some(choices) = raw.get("choices").and_then(Value::as_array)
    {
        let messages: Vec<Value> = choices
            .iter()
            .filter_map(|choice| choice.get("message"))
            .map(from_openai_message)
            .collect();
        return non_empty(Value::Array(messages));
    }
    None
}
