//! The normalized span record: one row per unit of work, whatever produced it.
//!
//! Field names are the contract between ingest, store, query and UI (see DESIGN.md,
//! "Data model"). JSON-valued fields (`input`, `output`, `tools`, `attributes`, `events`)
//! are kept as `serde_json::Value` so nothing a source sent is lost.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What kind of work a span represents.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum SpanKind {
    Llm,
    Embedding,
    Tool,
    Agent,
    Chain,
    Retriever,
    Guardrail,
    Handoff,
    #[default]
    Other,
}

impl SpanKind {
    pub const ALL: [SpanKind; 9] = [
        SpanKind::Llm,
        SpanKind::Embedding,
        SpanKind::Tool,
        SpanKind::Agent,
        SpanKind::Chain,
        SpanKind::Retriever,
        SpanKind::Guardrail,
        SpanKind::Handoff,
        SpanKind::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SpanKind::Llm => "llm",
            SpanKind::Embedding => "embedding",
            SpanKind::Tool => "tool",
            SpanKind::Agent => "agent",
            SpanKind::Chain => "chain",
            SpanKind::Retriever => "retriever",
            SpanKind::Guardrail => "guardrail",
            SpanKind::Handoff => "handoff",
            SpanKind::Other => "other",
        }
    }

    pub fn parse(text: &str) -> Option<SpanKind> {
        SpanKind::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

/// How a span ended.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum SpanStatus {
    #[default]
    Ok,
    Error,
    Timeout,
    Cancelled,
}

impl SpanStatus {
    pub const ALL: [SpanStatus; 4] = [
        SpanStatus::Ok,
        SpanStatus::Error,
        SpanStatus::Timeout,
        SpanStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SpanStatus::Ok => "ok",
            SpanStatus::Error => "error",
            SpanStatus::Timeout => "timeout",
            SpanStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<SpanStatus> {
        SpanStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
    }

    /// Everything but `ok` counts towards the error rate.
    pub fn is_error(self) -> bool {
        self != SpanStatus::Ok
    }
}

/// Which ingest path produced a span.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum SpanSource {
    Gateway,
    #[default]
    Otlp,
    AgentsSdk,
    Log,
    Import,
}

impl SpanSource {
    pub const ALL: [SpanSource; 5] = [
        SpanSource::Gateway,
        SpanSource::Otlp,
        SpanSource::AgentsSdk,
        SpanSource::Log,
        SpanSource::Import,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SpanSource::Gateway => "gateway",
            SpanSource::Otlp => "otlp",
            SpanSource::AgentsSdk => "agents_sdk",
            SpanSource::Log => "log",
            SpanSource::Import => "import",
        }
    }

    pub fn parse(text: &str) -> Option<SpanSource> {
        SpanSource::ALL
            .into_iter()
            .find(|source| source.as_str() == text)
    }
}

/// One span event (OTLP span events, GenAI log events attached to their span).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanEvent {
    pub name: String,
    pub time_unix_nano: i64,
    #[serde(default)]
    pub attributes: Value,
}

/// The normalized record. Times are UTC nanoseconds since the epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Span {
    // identity
    pub project: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: Option<String>,
    // shape
    pub name: String,
    pub kind: SpanKind,
    pub source: SpanSource,
    pub service_name: Option<String>,
    // time
    pub start_time: i64,
    pub end_time: i64,
    pub duration_ms: f64,
    pub time_to_first_token_ms: Option<f64>,
    // outcome
    pub status: SpanStatus,
    pub status_message: Option<String>,
    pub error_type: Option<String>,
    pub http_status: Option<u16>,
    // who
    pub session_id: Option<String>,
    pub user_id: Option<String>,
    // LLM
    pub provider: Option<String>,
    pub request_model: Option<String>,
    pub model: Option<String>,
    pub routing_alias: Option<String>,
    pub operation: Option<String>,
    pub stream: Option<bool>,
    pub temperature: Option<f64>,
    pub max_tokens: Option<i64>,
    pub top_p: Option<f64>,
    pub finish_reason: Option<String>,
    // usage
    pub input_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    pub cached_input_tokens: Option<i64>,
    pub reasoning_tokens: Option<i64>,
    pub total_tokens: Option<i64>,
    pub usage_source: Option<String>,
    // cost
    pub input_cost_usd: Option<f64>,
    pub output_cost_usd: Option<f64>,
    pub total_cost_usd: Option<f64>,
    pub pricing_version: Option<String>,
    // content
    pub input: Value,
    pub output: Value,
    pub input_text: String,
    pub output_text: String,
    pub tools: Value,
    // free form
    pub metadata: BTreeMap<String, String>,
    pub attributes: Value,
    pub events: Vec<SpanEvent>,
}

impl Span {
    /// The identity under which a later write replaces an earlier one.
    pub fn key(&self) -> SpanKey {
        SpanKey {
            project: self.project.clone(),
            trace_id: self.trace_id.clone(),
            span_id: self.span_id.clone(),
        }
    }

    /// The position of this span in the newest-first order that pages use.
    /// The order key, borrowed: compares exactly as `order_key()` does, without copying.
    pub fn order(&self) -> (i64, &str, &str) {
        (self.start_time, &self.trace_id, &self.span_id)
    }

    pub fn order_key(&self) -> OrderKey {
        OrderKey {
            start_time: self.start_time,
            trace_id: self.trace_id.clone(),
            span_id: self.span_id.clone(),
        }
    }

    /// Whether this span is an LLM call (the rows `GET /v1/traces` answers with).
    pub fn is_model_call(&self) -> bool {
        matches!(self.kind, SpanKind::Llm | SpanKind::Embedding)
    }

    /// Which of this span's texts (`INPUT_TEXT_DERIVED`, `OUTPUT_TEXT_DERIVED`) are not
    /// empty and are exactly `flatten_text` of its messages: a store may keep the messages
    /// only and put such a text back with `derive_text`.
    pub fn derived_text(&self) -> u8 {
        let derived =
            |text: &str, messages: &Value| !text.is_empty() && is_flattened_text(messages, text);
        let mut flags = 0;
        if derived(&self.input_text, &self.input) {
            flags |= INPUT_TEXT_DERIVED;
        }
        if derived(&self.output_text, &self.output) {
            flags |= OUTPUT_TEXT_DERIVED;
        }
        flags
    }

    /// Sets the texts that `flags` (from `derived_text`) names from the messages.
    pub fn derive_text(&mut self, flags: u8) {
        if flags & INPUT_TEXT_DERIVED != 0 {
            self.input_text = flatten_text(&self.input);
        }
        if flags & OUTPUT_TEXT_DERIVED != 0 {
            self.output_text = flatten_text(&self.output);
        }
    }
}

/// `Span::derived_text`: `input_text` is `flatten_text(input)`.
pub const INPUT_TEXT_DERIVED: u8 = 1;
/// `Span::derived_text`: `output_text` is `flatten_text(output)`.
pub const OUTPUT_TEXT_DERIVED: u8 = 2;

/// The searchable text of normalized messages (what `input_text` and `output_text` hold for
/// the messages of `input` and `output`): every text part and every tool call's name and
/// arguments, in order, the non-empty ones joined by newlines.
///
/// The WAL and the segment files leave out a text that equals this and derive it again
/// when they are read (`llmtrace_store` `wal.rs`, `segment.rs`): a change to what this
/// returns changes how logs and segments written before it read, so it needs a new WAL
/// record kind and a new segment flag.
pub fn flatten_text(messages: &Value) -> String {
    let mut out = String::new();
    text_pieces(messages, |piece| {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(piece);
        true
    });
    out
}

/// Whether `text` is exactly `flatten_text(messages)`, found without building it.
pub fn is_flattened_text(messages: &Value, text: &str) -> bool {
    let mut rest = text;
    let mut first = true;
    let whole = text_pieces(messages, |piece| {
        if !first {
            match rest.strip_prefix('\n') {
                Some(after) => rest = after,
                None => return false,
            }
        }
        first = false;
        match rest.strip_prefix(piece) {
            Some(after) => {
                rest = after;
                true
            }
            None => false,
        }
    });
    whole && rest.is_empty()
}

/// Calls `visit` with each non-empty piece of `flatten_text`, in order, until it returns
/// false; returns whether every piece was visited.
fn text_pieces(messages: &Value, mut visit: impl FnMut(&str) -> bool) -> bool {
    for message in messages.as_array().into_iter().flatten() {
        let parts = message
            .get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|part| part.get("text").and_then(Value::as_str));
        let calls = message
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .flat_map(|call| [call.get("name"), call.get("arguments")])
            .filter_map(|value| value.and_then(Value::as_str));
        for piece in parts.chain(calls) {
            if !piece.is_empty() && !visit(piece) {
                return false;
            }
        }
    }
    true
}

/// Identity of a span inside the store: later writes with the same key replace earlier ones.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanKey {
    pub project: String,
    pub trace_id: String,
    pub span_id: String,
}

/// Total order of spans in result pages: start time, then ids to break ties.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OrderKey {
    pub start_time: i64,
    pub trace_id: String,
    pub span_id: String,
}

/// Longest trace or span id a store accepts, in bytes.
pub const MAX_ID_BYTES: usize = 512;

/// Why a span cannot be stored under its identity, if it cannot.
pub fn identity_problem(span: &Span) -> Option<String> {
    for (name, id) in [("trace_id", &span.trace_id), ("span_id", &span.span_id)] {
        if id.is_empty() {
            return Some(format!("span has an empty {name}"));
        }
        if id.len() > MAX_ID_BYTES {
            return Some(format!(
                "span {name} is {} bytes long; at most {MAX_ID_BYTES} are accepted",
                id.len()
            ));
        }
    }
    None
}

/// Whether `text` is a valid lower-case hex id of `len` characters, not all zeros.
pub fn is_valid_hex_id(text: &str, len: usize) -> bool {
    text.len() == len
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && text.bytes().any(|b| b != b'0')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pinned: logs written with this function's output left out replay through it.
    #[test]
    fn flatten_text_joins_text_parts_and_tool_calls_in_order() {
        let messages = serde_json::json!([
            {"role": "system", "content": [{"type": "text", "text": "Be terse."}]},
            {"role": "user", "content": [{"type": "text", "text": ""}, {"type": "image", "url": "u"},
                {"type": "text", "text": "Weather\nin Paris?"}]},
            {"role": "assistant", "content": [], "tool_calls": [
                {"id": "c1", "name": "weather", "arguments": "{\"city\":\"Paris\"}"},
                {"id": "c2", "name": "", "arguments": null}]},
            {"role": "tool", "content": [{"type": "refusal", "text": "rainy"}], "tool_call_id": "c1"},
            "not a message",
        ]);
        let text = "Be terse.\nWeather\nin Paris?\nweather\n{\"city\":\"Paris\"}\nrainy";
        assert_eq!(flatten_text(&messages), text);
        assert!(is_flattened_text(&messages, text));
        for other in [
            "",
            "Be terse.",
            &text[..text.len() - 1],
            &format!("{text}\n"),
            &format!("\n{text}"),
            &text.replace("Weather\nin", "Weather in"),
        ] {
            assert!(!is_flattened_text(&messages, other), "{other:?}");
        }
        for empty in [
            Value::Null,
            serde_json::json!([]),
            serde_json::json!("text"),
        ] {
            assert_eq!(flatten_text(&empty), "");
            assert!(is_flattened_text(&empty, ""));
            assert!(!is_flattened_text(&empty, "x"));
        }
    }

    #[test]
    fn kind_status_source_round_trip_through_text() {
        for kind in SpanKind::ALL {
            assert_eq!(SpanKind::parse(kind.as_str()), Some(kind));
        }
        for status in SpanStatus::ALL {
            assert_eq!(SpanStatus::parse(status.as_str()), Some(status));
        }
        for source in SpanSource::ALL {
            assert_eq!(SpanSource::parse(source.as_str()), Some(source));
        }
        assert_eq!(SpanKind::parse("LLM"), None);
    }

    #[test]
    fn identities_must_be_non_empty_and_bounded() {
        let mut span = Span {
            trace_id: "t".into(),
            span_id: "s".into(),
            ..Span::default()
        };
        assert_eq!(identity_problem(&span), None);
        span.span_id = "x".repeat(MAX_ID_BYTES + 1);
        assert!(identity_problem(&span).is_some_and(|p| p.contains("span_id is 513 bytes")));
        span.span_id.clear();
        assert!(identity_problem(&span).is_some_and(|p| p.contains("empty span_id")));
    }

    #[test]
    fn hex_ids_must_be_lower_case_full_length_and_non_zero() {
        assert!(is_valid_hex_id("0af7651916cd43dd8448eb211c80319c", 32));
        assert!(!is_valid_hex_id("0AF7651916CD43DD8448EB211C80319C", 32));
        assert!(!is_valid_hex_id("00000000000000000000000000000000", 32));
        assert!(!is_valid_hex_id("b7ad6b7169203331", 32));
        assert!(!is_valid_hex_id("b7ad6b716920333z", 16));
    }
}
