//! Spans as markup: a table row, the detail drawer, and messages as a chat.
//!
//! All trace content is attacker-controlled. It only ever reaches the page as maud
//! interpolations (escaped), inside elements that show text (`pre`, `td`); links are made
//! only from `http`/`https` URLs; class names are chosen from fixed lists, never copied.

use maud::{Markup, html};
use serde_json::Value;

use llmtrace_model::{Score, Span};

use super::layout;

/// The drawer URL of one span.
pub fn span_url(span: &Span) -> String {
    format!(
        "/ui/span/{}/{}?project={}",
        crate::client::encode(&span.trace_id),
        crate::client::encode(&span.span_id),
        crate::client::encode(&span.project)
    )
}

/// The `open` parameter naming a span on a page.
pub fn open_param(span: &Span) -> String {
    format!("{}:{}", span.trace_id, span.span_id)
}

/// Tokens as `in → out`.
fn tokens(span: &Span) -> String {
    match (span.input_tokens, span.output_tokens) {
        (None, None) => span.total_tokens.map(|t| t.to_string()).unwrap_or_default(),
        (input, output) => format!(
            "{} → {}",
            input.map(|t| t.to_string()).unwrap_or("?".into()),
            output.map(|t| t.to_string()).unwrap_or("?".into())
        ),
    }
}

/// One row of the traces table. `href` is where the row links without script (the same
/// page with the drawer open).
pub fn span_row(span: &Span, href: &str) -> Markup {
    html! {
        tr.row tabindex="0" data-span=(span_url(span)) data-open=(open_param(span)) {
            td.time { a href=(href) { (layout::time(span.start_time)) } }
            td { (span.model.as_deref().or(span.request_model.as_deref()).unwrap_or(&span.name)) }
            td.id { (span.user_id.as_deref().unwrap_or("")) }
            td.id {
                @if let Some(session) = &span.session_id {
                    a href=(format!("/sessions/{}", crate::client::encode(session))) { (layout::preview(session, 24)) }
                }
            }
            td.preview { (layout::preview(&span.input_text, 120)) }
            td.num { (tokens(span)) }
            td.num { (span.total_cost_usd.map(layout::cost).unwrap_or_default()) }
            td.num { (layout::duration(span.duration_ms)) }
            td { (layout::status_badge(span.status.as_str())) }
        }
    }
}

/// The table header matching `span_row`.
pub fn span_table_head() -> Markup {
    html! {
        thead {
            tr {
                th { "Time (UTC)" } th { "Model" } th { "User" } th { "Session" } th { "Input" }
                th.num { "Tokens" } th.num { "Cost" } th.num { "Latency" } th { "Status" }
            }
        }
    }
}

/// The scores shown with a span: its own and its trace's.
pub fn scores_of<'a>(span: &Span, trace_scores: &'a [Score]) -> Vec<&'a Score> {
    trace_scores
        .iter()
        .filter(|score| score.span_id.as_ref().is_none_or(|id| *id == span.span_id))
        .collect()
}

/// The detail of one span: chat, scores, parameters, metadata, usage and cost, timings,
/// raw JSON. `trace_scores` are the scores of its trace.
pub fn span_detail(span: &Span, trace_spans: usize, trace_scores: &[Score]) -> Markup {
    let scores = scores_of(span, trace_scores);
    let raw = serde_json::to_string_pretty(span).unwrap_or_default();
    html! {
        article.detail data-trace=(span.trace_id) data-span-id=(span.span_id) {
            header {
                button.close type="button" data-close title="Close (Esc)" { "×" }
                h2 { (span.name) }
                p.sub {
                    span.badge { (span.kind.as_str()) }
                    " " (layout::status_badge(span.status.as_str()))
                    @if let Some(model) = span.model.as_ref().or(span.request_model.as_ref()) { " " span.model { (model) } }
                    @if let Some(provider) = &span.provider { " · " (provider) }
                }
                p.links {
                    a href=(format!("/runs/{}?project={}", crate::client::encode(&span.trace_id), crate::client::encode(&span.project))) {
                        "Trace " (span.trace_id) " (" (trace_spans) " span" @if trace_spans != 1 { "s" } ")"
                    }
                    @if let Some(session) = &span.session_id {
                        " · " a href=(format!("/sessions/{}?project={}", crate::client::encode(session), crate::client::encode(&span.project))) { "Session " (session) }
                    }
                }
            }
            @if span.status.is_error() {
                section.error-detail {
                    h3 { "Error" }
                    dl {
                        @if let Some(status) = span.http_status { dt { "HTTP status" } dd { (status) } }
                        @if let Some(kind) = &span.error_type { dt { "Type" } dd { (kind) } }
                    }
                    @if let Some(message) = &span.status_message { pre.text { (message) } }
                }
            }
            section #detail-input {
                h3 { "Input " button.copy type="button" data-copy="#detail-input .content" { "Copy" } }
                div.content { (messages(&span.input, &span.input_text)) }
            }
            section #detail-output {
                h3 { "Output " button.copy type="button" data-copy="#detail-output .content" { "Copy" } }
                div.content { (messages(&span.output, &span.output_text)) }
            }
            @if !scores.is_empty() {
                section.scores {
                    h3 { "Scores" }
                    table {
                        thead { tr { th { "Name" } th.num { "Value" } th { "Label" } th { "Of" } th { "Source" } th { "Comment" } } }
                        tbody {
                            @for score in &scores {
                                tr {
                                    td { (score.name) }
                                    td.num { (score.value.map(|v| v.to_string()).unwrap_or_default()) }
                                    td { (score.label.as_deref().unwrap_or("")) }
                                    td { (if score.span_id.is_some() { "span" } else { "trace" }) }
                                    td { (score.source) }
                                    td { (score.comment.as_deref().unwrap_or("")) }
                                }
                            }
                        }
                    }
                }
            }
            @if !span.tools.is_null() {
                section {
                    h3 { "Tools" }
                    pre.json { (pretty(&span.tools)) }
                }
            }
            section.facts {
                h3 { "Usage and cost" }
                dl {
                    (fact("Input tokens", span.input_tokens.map(|t| t.to_string())))
                    (fact("Cached input tokens", span.cached_input_tokens.map(|t| t.to_string())))
                    (fact("Output tokens", span.output_tokens.map(|t| t.to_string())))
                    (fact("Reasoning tokens", span.reasoning_tokens.map(|t| t.to_string())))
                    (fact("Total tokens", span.total_tokens.map(|t| t.to_string())))
                    (fact("Usage source", span.usage_source.clone()))
                    (fact("Input cost", span.input_cost_usd.map(layout::cost)))
                    (fact("Output cost", span.output_cost_usd.map(layout::cost)))
                    (fact("Total cost", span.total_cost_usd.map(layout::cost)))
                    (fact("Pricing", span.pricing_version.clone()))
                }
                @if let Some(breakdown) = span.attributes.get("llmtrace.cost") {
                    details { summary { "Cost breakdown" } pre.json { (pretty(breakdown)) } }
                }
            }
            section.facts {
                h3 { "Timings" }
                dl {
                    (fact("Start (UTC)", Some(layout::time(span.start_time))))
                    (fact("Duration", Some(layout::duration(span.duration_ms))))
                    (fact("Time to first token", span.time_to_first_token_ms.map(layout::duration)))
                }
            }
            section.facts {
                h3 { "Parameters" }
                dl {
                    (fact("Operation", span.operation.clone()))
                    (fact("Requested model", span.request_model.clone()))
                    (fact("Routing alias", span.routing_alias.clone()))
                    (fact("Stream", span.stream.map(|s| s.to_string())))
                    (fact("Temperature", span.temperature.map(|t| t.to_string())))
                    (fact("Top p", span.top_p.map(|t| t.to_string())))
                    (fact("Max tokens", span.max_tokens.map(|t| t.to_string())))
                    (fact("Finish reason", span.finish_reason.clone()))
                    (fact("Service", span.service_name.clone()))
                    (fact("Source", Some(span.source.as_str().to_string())))
                    (fact("User", span.user_id.clone()))
                }
            }
            @if !span.metadata.is_empty() {
                section.facts {
                    h3 { "Metadata" }
                    dl {
                        @for (key, value) in &span.metadata { dt { (key) } dd { (value) } }
                    }
                }
            }
            section {
                h3 { "Raw JSON " button.copy type="button" data-copy="#raw-json" { "Copy" } }
                pre.json #raw-json { (raw) }
            }
        }
    }
}

fn fact(name: &str, value: Option<String>) -> Markup {
    html! {
        @if let Some(value) = value {
            dt { (name) } dd { (value) }
        }
    }
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

/// A role's CSS class, from a fixed list.
fn role_class(role: &str) -> &'static str {
    match role {
        "system" | "developer" => "msg system",
        "user" => "msg user",
        "assistant" => "msg assistant",
        "tool" | "function" => "msg tool",
        _ => "msg other",
    }
}

/// Normalized messages as a chat; anything else as text or JSON.
pub fn messages(value: &Value, text: &str) -> Markup {
    match value {
        Value::Array(items) if items.iter().all(is_message) && !items.is_empty() => html! {
            div.chat { @for message in items { (chat_message(message)) } }
        },
        Value::Null if !text.is_empty() => html! { pre.text { (text) } },
        Value::Null => html! { p.empty { "—" } },
        Value::String(text) => html! { pre.text { (text) } },
        other => html! { pre.json { (pretty(other)) } },
    }
}

fn is_message(value: &Value) -> bool {
    value.get("role").is_some_and(Value::is_string)
}

pub fn chat_message(message: &Value) -> Markup {
    let role = message.get("role").and_then(Value::as_str).unwrap_or("");
    html! {
        div class=(role_class(role)) {
            div.role {
                (role)
                @if let Some(name) = message.get("name").and_then(Value::as_str) { " · " (name) }
                @if let Some(id) = message.get("tool_call_id").and_then(Value::as_str) { " · result of " code { (id) } }
            }
            @match message.get("content") {
                Some(Value::Array(parts)) => { @for part in parts { (content_part(part)) } }
                Some(Value::String(text)) => { pre.text { (text) } }
                Some(Value::Null) | None => {}
                Some(other) => { pre.json { (pretty(other)) } }
            }
            @if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
                @for call in calls {
                    div.tool-call {
                        span.label { "tool call " }
                        code { (call.get("name").and_then(Value::as_str).unwrap_or("?")) }
                        @if let Some(id) = call.get("id").and_then(Value::as_str) { " " span.id { (id) } }
                        pre.json { (arguments(call.get("arguments").unwrap_or(&Value::Null))) }
                    }
                }
            }
        }
    }
}

/// Tool-call arguments pretty-printed when they are JSON text.
fn arguments(value: &Value) -> String {
    match value {
        Value::String(text) => serde_json::from_str::<Value>(text)
            .map(|tree| pretty(&tree))
            .unwrap_or_else(|_| text.clone()),
        other => pretty(other),
    }
}

fn content_part(part: &Value) -> Markup {
    let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "text" => html! { pre.text { (part.get("text").and_then(Value::as_str).unwrap_or("")) } },
        "refusal" => {
            html! { pre.text.refusal { "refused: " (part.get("text").and_then(Value::as_str).unwrap_or("")) } }
        }
        "image" => image(part.get("url").unwrap_or(&Value::Null)),
        "audio" | "file" => html! { p.part { "[" (kind) "] " code { (compact(part)) } } },
        _ => html! { pre.json { (pretty(part)) } },
    }
}

/// Images are links, never loaded: only web URLs become links, and inline data is named
/// by its size.
fn image(url: &Value) -> Markup {
    let url = match url {
        Value::String(url) => url.as_str(),
        Value::Object(object) => object.get("url").and_then(Value::as_str).unwrap_or(""),
        _ => "",
    };
    let lower = url.trim_start().to_ascii_lowercase();
    if lower.starts_with("https://") || lower.starts_with("http://") {
        html! { p.part { "[image] " a href=(url) rel="noopener noreferrer nofollow" target="_blank" { (layout::preview(url, 120)) } } }
    } else if lower.starts_with("data:") {
        html! { p.part { "[image: inline data, " (url.len()) " bytes]" } }
    } else {
        html! { p.part { "[image] " code { (layout::preview(url, 120)) } } }
    }
}

fn compact(value: &Value) -> String {
    layout::preview(&value.to_string(), 300)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hostile_content_renders_as_text() {
        let hostile = json!([
            {"role": "user\" onmouseover=\"x", "content": [
                {"type": "text", "text": "<script>alert(1)</script><img src=x onerror=alert(2)>"},
                {"type": "image", "url": "javascript:alert(3)"},
                {"type": "image", "url": "https://example.test/a.png\" onclick=\"x"},
            ]},
            {"role": "assistant", "content": [], "tool_calls": [
                {"id": "c1", "name": "<b>bold</b>", "arguments": "{\"a\":\"</pre><script>\"}"}
            ]}
        ]);
        let html = messages(&hostile, "").into_string();
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("<b>"), "{html}");
        assert!(!html.contains("href=\"javascript"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
        // the https link keeps its quote escaped inside the attribute
        assert!(
            html.contains("href=\"https://example.test/a.png&quot; onclick=&quot;x\""),
            "{html}"
        );
        // an unknown role gets the fixed class, its text escaped
        assert!(html.contains("class=\"msg other\""), "{html}");
    }
}
