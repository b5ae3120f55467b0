//! OpenAI stored completions (`GET /v1/chat/completions` and `…/{id}/messages`) → spans, for
//! `llmtrace import openai`. Ids derive from the completion id, so importing again replaces
//! rather than duplicates.

use serde_json::{Map, Value, json};

use llmtrace_model::json::at;
use llmtrace_model::{Span, SpanKind, SpanSource, SpanStatus};

use crate::agents::{span_hex, trace_hex};
use crate::messages;

/// One stored completion and its request messages → a span.
pub fn to_span(
    completion: &Value,
    request_messages: &[Value],
    project: &str,
    provider: &str,
) -> Option<Span> {
    let id = completion.get("id")?.as_str()?;
    let created = completion
        .get("created")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let start = created.saturating_mul(1_000_000_000);
    let outputs: Vec<Value> = completion
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|choice| choice.get("message").cloned())
        .collect();
    let input = messages::into_openai_messages(Value::Array(request_messages.to_vec()))
        .unwrap_or(Value::Null);
    let output = messages::into_openai_messages(Value::Array(outputs)).unwrap_or(Value::Null);
    let usage = completion.get("usage").cloned().unwrap_or(Value::Null);
    let int = |pointer: &str| at(&usage, pointer).and_then(Value::as_i64);
    let model = completion
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_string);
    let metadata = completion
        .get("metadata")
        .and_then(Value::as_object)
        .map(|pairs| {
            pairs
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| v.to_string()),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let mut attributes = Map::new();
    attributes.insert("gen_ai.response.id".into(), json!(id));
    let mut extra = Map::new();
    for key in [
        "service_tier",
        "system_fingerprint",
        "created",
        "request_id",
    ] {
        if let Some(value) = completion.get(key).filter(|v| !v.is_null()) {
            extra.insert(key.into(), value.clone());
        }
    }
    attributes.insert("llmtrace.response".into(), Value::Object(extra));
    attributes.insert("url.path".into(), json!("/v1/chat/completions"));
    let input_tokens = int("/prompt_tokens");
    let output_tokens = int("/completion_tokens");
    Some(Span {
        project: project.to_string(),
        trace_id: trace_hex(id),
        span_id: span_hex(id),
        name: match &model {
            Some(model) => format!("chat {model}"),
            None => "chat".into(),
        },
        kind: SpanKind::Llm,
        source: SpanSource::Import,
        start_time: start,
        end_time: start,
        status: SpanStatus::Ok,
        provider: Some(provider.to_string()),
        request_model: model.clone(),
        model,
        operation: Some("chat".into()),
        finish_reason: at(completion, "/choices/0/finish_reason")
            .and_then(Value::as_str)
            .map(str::to_string),
        input_tokens,
        output_tokens,
        cached_input_tokens: int("/prompt_tokens_details/cached_tokens"),
        reasoning_tokens: int("/completion_tokens_details/reasoning_tokens"),
        total_tokens: int("/total_tokens"),
        usage_source: (input_tokens.is_some() || output_tokens.is_some())
            .then(|| "reported".into()),
        input_text: messages::flatten_text(&input),
        output_text: messages::flatten_text(&output),
        input,
        output,
        metadata,
        attributes: Value::Object(attributes),
        ..Span::default()
    })
}
