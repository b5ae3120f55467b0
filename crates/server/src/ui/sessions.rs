//! Sessions: the list (calls, cost, duration, last activity) and one session as a
//! transcript, each turn showing only what it added to the conversation.

use axum::extract::{Path, Query, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use llmtrace_model::{
    AggregateQuery, AggregateRow, Dimension, Error, SessionTrace, Span, SpanFilter, SpanQuery,
};
use maud::{Markup, html};
use serde_json::Value;

use super::traces::drawer;
use super::{Shared, UiQuery, error_page, layout, render};
use crate::http::run_store;

/// Sessions listed, most recently active first.
const LIST_LIMIT: usize = 50;
/// Calls walked to find them: the list costs the same at any store size.
const SCAN_LIMIT: usize = 20_000;

/// The sessions most recently active among the calls `filter` selects, newest first, each
/// with its totals over all its calls. Walks the newest matching calls page by page (what
/// the store answers fastest) instead of grouping every row of the range by session, then
/// asks each session's totals by its id (indexed). The flag says whether the walk stopped
/// before the range's oldest call.
fn recent_sessions(
    store: &dyn llmtrace_model::Store,
    filter: &SpanFilter,
) -> llmtrace_model::Result<(Vec<AggregateRow>, bool)> {
    let mut ids: Vec<String> = Vec::new();
    let mut search = SpanQuery {
        filter: filter.clone(),
        limit: 200,
        cursor: None,
    };
    let mut walked = 0;
    let more = loop {
        let page = store.search(&search)?;
        walked += page.spans.len();
        for session in page
            .spans
            .iter()
            .filter_map(|span| span.session_id.as_ref())
        {
            if !ids.contains(session) {
                ids.push(session.clone());
            }
        }
        match page.next_cursor {
            _ if ids.len() >= LIST_LIMIT => break true,
            Some(cursor) if walked < SCAN_LIMIT => search.cursor = Some(cursor),
            next => break next.is_some(),
        }
    };
    ids.truncate(LIST_LIMIT);
    let mut rows = Vec::with_capacity(ids.len());
    for id in ids {
        let totals = AggregateQuery {
            filter: SpanFilter {
                project: filter.project.clone(),
                session_id: Some(id.clone()),
                kinds: filter.kinds.clone(),
                ..SpanFilter::default()
            },
            bucket_seconds: None,
            group_by: vec![Dimension::Session],
        };
        rows.extend(store.aggregate(&totals)?);
    }
    Ok((rows, more))
}

pub async fn list(
    State(state): State<Shared>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let query = UiQuery::new(pairs);
    // "the user gives us their session id": straight to it
    if let Some(id) = query.get("id") {
        return Redirect::to(&session_href(id.trim(), query.get("project"))).into_response();
    }
    let selection = match query.selection(&state.default_project) {
        Ok(selection) => selection,
        Err(err) => return error_page("Sessions", &err),
    };
    let filter = selection.parsed.filter;
    let (rows, more) = match run_store(&state, move |store| recent_sessions(store, &filter)).await {
        Ok(found) => found,
        Err(err) => return error_page("Sessions", &err),
    };
    let content = html! {
        form.session-search method="get" action="/sessions" {
            label { span { "Session id" } input type="search" name="id" placeholder="paste a session id" autofocus; }
            button type="submit" { "Open" }
        }
        (layout::filter_bar("/sessions", &query, &["model", "user_id", "meta", "q"], html! {}))
        p.summary {
            "The " (rows.len()) " most recently active sessions with calls matching the filters; totals cover each whole session."
            @if more { " Narrow the range or the filters, or open a session by its id, to reach older ones." }
        }
        table.spans #spans {
            thead { tr { th { "Session" } th.num { "Model calls" } th.num { "Tokens" } th.num { "Cost" } th.num { "Duration" } th { "Last activity (UTC)" } th.num { "Errors" } } }
            tbody {
                @for row in &rows {
                    @let id = row.group[0].clone().unwrap_or_default();
                    @let href = session_href(&id, query.get("project"));
                    tr.row tabindex="0" data-href=(href) {
                        td.id { a href=(href) { (layout::preview(&id, 60)) } }
                        td.num { (row.count) }
                        td.num { (layout::count(row.total_tokens as f64)) }
                        td.num { (layout::cost(row.total_cost_usd)) }
                        td.num { (match (row.first_start_time, row.last_end_time) { (Some(a), Some(b)) => layout::duration((b - a) as f64 / 1e6), _ => String::new() }) }
                        td { (row.last_end_time.map(layout::time).unwrap_or_default()) }
                        td.num { (row.error_count) }
                    }
                }
            }
        }
    };
    Html(layout::page("Sessions", "sessions", content).into_string()).into_response()
}

/// The conversation page of a session.
fn session_href(id: &str, project: Option<&str>) -> String {
    let path = format!("/sessions/{}", crate::client::encode(id));
    match project {
        Some(project) => format!("{path}?project={}", crate::client::encode(project)),
        None => path,
    }
}

pub async fn conversation(
    State(state): State<Shared>,
    Path(session_id): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let query = UiQuery::new(pairs);
    let project = match query.project(&state.default_project) {
        Ok(project) => project,
        Err(err) => return error_page("Session", &err),
    };
    let wanted = session_id.clone();
    let scores_project = project.clone();
    let traces = match run_store(&state, move |store| store.session(&project, &wanted)).await {
        Ok(traces) if traces.is_empty() => {
            return error_page(
                "Session",
                &Error::NotFound(format!("no spans of session {session_id:?}")),
            );
        }
        Ok(traces) => traces,
        Err(err) => return error_page("Session", &err),
    };
    let spans: Vec<&Span> = traces.iter().flat_map(|t| &t.spans).collect();
    let calls: Vec<&Span> = spans
        .iter()
        .copied()
        .filter(|s| s.is_model_call())
        .collect();
    let cost: f64 = spans.iter().filter_map(|s| s.total_cost_usd).sum();
    let tokens: i64 = spans.iter().filter_map(|s| s.total_tokens).sum();
    let first = traces.first().map_or(0, |t| t.start_time);
    let last = traces.iter().map(|t| t.end_time).max().unwrap_or(first);
    let mut users: Vec<&str> = spans.iter().filter_map(|s| s.user_id.as_deref()).collect();
    users.sort_unstable();
    users.dedup();
    let opened = query
        .get("open")
        .and_then(|open| open.split_once(':'))
        .and_then(|(trace, span)| {
            spans
                .iter()
                .copied()
                .find(|s| s.trace_id == trace && s.span_id == span)
        });
    let opened_scores = match opened {
        Some(span) => {
            let trace_id = span.trace_id.clone();
            run_store(&state, move |store| {
                super::traces::trace_scores(store, &scores_project, &trace_id)
            })
            .await
            .unwrap_or_default()
        }
        None => Vec::new(),
    };
    let opened_count = opened.map_or(0, |o| {
        spans.iter().filter(|s| s.trace_id == o.trace_id).count()
    });
    let content = html! {
        h1 { "Session " span.id { (session_id) } }
        p.summary {
            (traces.len()) " traces · " (calls.len()) " model calls · " (tokens) " tokens · " (layout::cost(cost))
            " · " (layout::duration((last - first) as f64 / 1e6)) " · " (layout::time(first)) " → " (layout::time(last))
            @if !users.is_empty() { " · user " (users.join(", ")) }
        }
        (transcript(&query, &session_id, &traces))
        (drawer(opened.map(|span| render::span_detail(span, opened_count, &opened_scores))))
    };
    Html(layout::page("Session", "sessions", content).into_string()).into_response()
}

/// One model call of the transcript, with what its input adds to the conversation; or a
/// trace without model calls (`call` is `None`).
struct Turn<'a> {
    trace: &'a SessionTrace,
    call: Option<&'a Span>,
    /// Messages not sent before (`None` when the input is not a message list).
    added: Option<Vec<Value>>,
    repeated: usize,
}

/// Walks the calls in order, tracking the conversation so far (each call's input, then
/// its output): a call usually resends the whole history, so each turn keeps only the
/// messages after the part it repeats.
fn turns(traces: &[SessionTrace]) -> Vec<Turn<'_>> {
    let mut seen: Vec<Value> = Vec::new();
    let mut out = Vec::new();
    for trace in traces {
        if !trace.spans.iter().any(Span::is_model_call) {
            out.push(Turn {
                trace,
                call: None,
                added: None,
                repeated: 0,
            });
        }
        for call in trace.spans.iter().filter(|s| s.is_model_call()) {
            let input = messages_of(&call.input);
            let repeated = common_prefix(&seen, &input);
            let added = input.as_ref().map(|messages| messages[repeated..].to_vec());
            remember(&mut seen, input, &call.output);
            out.push(Turn {
                trace,
                call: Some(call),
                added,
                repeated,
            });
        }
    }
    out
}

/// The conversation turn by turn; traces without a model call are one line each.
fn transcript(query: &UiQuery, session_id: &str, traces: &[SessionTrace]) -> Markup {
    let turns = turns(traces);
    html! {
        div.transcript {
            @for turn in &turns {
                @match turn.call {
                    None => {
                        div.turn.other {
                            a href=(format!("/runs/{}", crate::client::encode(&turn.trace.trace_id))) { (turn.trace.spans.first().map(|s| s.name.as_str()).unwrap_or("trace")) }
                            " · " (layout::time(turn.trace.start_time)) " · " (turn.trace.spans.len()) " spans, no model call"
                        }
                    }
                    Some(call) => { (turn_markup(query, session_id, turn, call)) }
                }
            }
        }
    }
}

fn turn_markup(query: &UiQuery, session_id: &str, turn: &Turn, call: &Span) -> Markup {
    let href = query.href(
        &format!("/sessions/{}", crate::client::encode(session_id)),
        &[("open", Some(&render::open_param(call)))],
    );
    html! {
        section.turn tabindex="0" data-span=(render::span_url(call)) data-open=(render::open_param(call)) {
            header {
                a href=(href) { (layout::time(call.start_time)) }
                " · " (call.model.as_deref().or(call.request_model.as_deref()).unwrap_or(&call.name))
                " · " (layout::duration(call.duration_ms))
                @if let Some(cost) = call.total_cost_usd { " · " (layout::cost(cost)) }
                " · " (layout::status_badge(call.status.as_str()))
                @if turn.trace.spans.len() > 1 {
                    " · " a href=(format!("/runs/{}", crate::client::encode(&turn.trace.trace_id))) { "run (" (turn.trace.spans.len()) " spans)" }
                }
                @if turn.repeated > 0 { span.earlier { " · " (turn.repeated) " earlier messages not repeated" } }
            }
            @match &turn.added {
                Some(messages) => { div.chat { @for message in messages { (render::chat_message(message)) } } }
                None => { (render::messages(&call.input, &call.input_text)) }
            }
            (render::messages(&call.output, &call.output_text))
        }
    }
}

fn messages_of(value: &Value) -> Option<Vec<Value>> {
    value
        .as_array()
        .filter(|items| items.iter().all(|m| m.get("role").is_some()))
        .cloned()
}

/// How many leading messages of `input` repeat the conversation so far.
fn common_prefix(seen: &[Value], input: &Option<Vec<Value>>) -> usize {
    let Some(input) = input else { return 0 };
    seen.iter()
        .zip(input)
        .take_while(|(a, b)| same_message(a, b))
        .count()
}

/// Messages compare by role, content and tool calls: a resent message may gain or lose
/// a `name` or an id the SDK adds.
fn same_message(a: &Value, b: &Value) -> bool {
    ["role", "content", "tool_calls", "tool_call_id"]
        .iter()
        .all(|key| a.get(key) == b.get(key))
}

/// The conversation after a call: its input, then its output messages.
fn remember(seen: &mut Vec<Value>, input: Option<Vec<Value>>, output: &Value) {
    if let Some(input) = input {
        *seen = input;
    }
    if let Some(output) = messages_of(output) {
        seen.extend(output);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn turns_show_only_what_they_add() {
        let mut seen = Vec::new();
        let first = messages_of(&json!([
            {"role": "system", "content": [{"type": "text", "text": "be brief"}]},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]}
        ]));
        assert_eq!(common_prefix(&seen, &first), 0);
        remember(
            &mut seen,
            first,
            &json!([{"role": "assistant", "content": [{"type": "text", "text": "hello"}]}]),
        );
        let second = messages_of(&json!([
            {"role": "system", "content": [{"type": "text", "text": "be brief"}]},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "hello"}], "name": "bot"},
            {"role": "user", "content": [{"type": "text", "text": "bye"}]}
        ]));
        assert_eq!(common_prefix(&seen, &second), 3);
        let edited = messages_of(&json!([
            {"role": "system", "content": [{"type": "text", "text": "be verbose"}]}
        ]));
        assert_eq!(common_prefix(&seen, &edited), 0);
    }
}
