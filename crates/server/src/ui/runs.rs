//! One trace as an agent run: the span tree with a waterfall timeline; selecting a span
//! opens its detail in the drawer.

use std::collections::{BTreeMap, HashSet};

use axum::extract::{Path, Query, State};
use axum::response::{Html, IntoResponse, Response};
use llmtrace_model::{Error, Span};
use maud::html;

use super::traces::drawer;
use super::{Shared, UiQuery, error_page, layout, render};
use crate::http::run_store;

/// Indentation classes stop here; deeper spans share the last one.
const MAX_DEPTH: usize = 15;

/// Spans in tree order (parents before children, siblings by start), with their depth.
/// A span whose parent is not in the trace is a root.
pub fn tree_order(spans: &[Span]) -> Vec<(&Span, usize)> {
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut children: BTreeMap<&str, Vec<&Span>> = BTreeMap::new();
    let mut roots = Vec::new();
    for span in spans {
        match span
            .parent_span_id
            .as_deref()
            .filter(|p| ids.contains(p) && *p != span.span_id)
        {
            Some(parent) => children.entry(parent).or_default().push(span),
            None => roots.push(span),
        }
    }
    let by_start = |list: &mut Vec<&Span>| list.sort_by(|a, b| a.order().cmp(&b.order()));
    by_start(&mut roots);
    for list in children.values_mut() {
        by_start(list);
    }
    let mut out = Vec::with_capacity(spans.len());
    let mut seen = HashSet::new();
    // explicit stack: traces can be deep, and a cycle in hostile parent ids must end
    let mut stack: Vec<(&Span, usize)> = roots.into_iter().rev().map(|s| (s, 0)).collect();
    while let Some((span, depth)) = stack.pop() {
        if !seen.insert(span.span_id.as_str()) {
            continue;
        }
        out.push((span, depth));
        if let Some(kids) = children.get(span.span_id.as_str()) {
            stack.extend(kids.iter().rev().map(|kid| (*kid, depth + 1)));
        }
    }
    // spans only reachable through a cycle are still shown, as roots
    for span in spans {
        if !seen.contains(span.span_id.as_str()) {
            out.push((span, 0));
        }
    }
    out
}

pub async fn page(
    State(state): State<Shared>,
    Path(trace_id): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let query = UiQuery::new(pairs);
    let project = match query.project(&state.default_project) {
        Ok(project) => project,
        Err(err) => return error_page("Trace", &err),
    };
    let trace_id = trace_id.to_ascii_lowercase();
    let trace_id = trace_id
        .strip_prefix("trace_")
        .unwrap_or(&trace_id)
        .to_string();
    let wanted = trace_id.clone();
    let found = run_store(&state, move |store| {
        let spans = store.trace(&project, &wanted)?;
        let scores = super::traces::trace_scores(store, &project, &wanted)?;
        Ok((spans, scores))
    })
    .await;
    let (spans, scores) = match found {
        Ok((spans, _)) if spans.is_empty() => {
            return error_page(
                "Trace",
                &Error::NotFound(format!("no spans of trace {trace_id}")),
            );
        }
        Ok(found) => found,
        Err(err) => return error_page("Trace", &err),
    };
    let start = spans.iter().map(|s| s.start_time).min().unwrap_or(0);
    let end = spans
        .iter()
        .map(|s| s.end_time)
        .max()
        .unwrap_or(start)
        .max(start + 1);
    let total = (end - start) as f64;
    let model_calls: Vec<&Span> = spans.iter().filter(|s| s.is_model_call()).collect();
    let cost: f64 = spans.iter().filter_map(|s| s.total_cost_usd).sum();
    let tokens: i64 = spans.iter().filter_map(|s| s.total_tokens).sum();
    let errors = spans.iter().filter(|s| s.status.is_error()).count();
    let opened = query
        .get("open")
        .and_then(|open| open.split_once(':'))
        .and_then(|(_, span_id)| spans.iter().find(|s| s.span_id == span_id));
    let session = spans.iter().find_map(|s| s.session_id.clone());
    let root_name = tree_order(&spans)
        .first()
        .map(|(s, _)| s.name.clone())
        .unwrap_or_default();
    let content = html! {
        h1 { "Run " span.id { (trace_id) } }
        p.summary {
            (root_name) " · " (spans.len()) " spans · " (model_calls.len()) " model calls · "
            (layout::duration(total / 1e6)) " · " (tokens) " tokens · " (layout::cost(cost))
            @if errors > 0 { " · " span.badge.error { (errors) " errors" } }
            @if let Some(session) = &session {
                " · " a href=(format!("/sessions/{}", crate::client::encode(session))) { "session " (session) }
            }
            " · started " (layout::time(start))
        }
        table.waterfall #spans {
            thead { tr { th { "Span" } th { "Kind" } th.bar { "Timeline" } th.num { "Duration" } th { "Status" } } }
            tbody {
                @for (span, depth) in tree_order(&spans) {
                    @let x = (span.start_time - start) as f64 / total * 1000.0;
                    @let width = ((span.end_time - span.start_time).max(0) as f64 / total * 1000.0).max(2.0);
                    tr.row tabindex="0" data-span=(render::span_url(span)) data-open=(render::open_param(span))
                        class=[(opened.is_some_and(|o| o.span_id == span.span_id)).then_some("selected")] {
                        td class=(format!("name depth-{}", depth.min(MAX_DEPTH))) {
                            a href=(query.href(&format!("/runs/{}", crate::client::encode(&trace_id)), &[("open", Some(&render::open_param(span)))])) { (span.name) }
                            @if let Some(model) = &span.model { " " span.model { (model) } }
                        }
                        td { span.badge { (span.kind.as_str()) } }
                        td.bar {
                            svg viewBox="0 0 1000 12" preserveAspectRatio="none" {
                                rect class=(format!("k-{}", span.kind.as_str())) x=(format!("{x:.1}")) y="1" width=(format!("{width:.1}")) height="10" {
                                    title { (span.name) ": +" (layout::duration((span.start_time - start) as f64 / 1e6)) ", " (layout::duration(span.duration_ms)) }
                                }
                            }
                        }
                        td.num { (layout::duration(span.duration_ms)) }
                        td { (layout::status_badge(span.status.as_str())) }
                    }
                }
            }
        }
        (drawer(opened.map(|span| render::span_detail(span, spans.len(), &scores))))
    };
    Html(layout::page("Run", "traces", content).into_string()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: &str, parent: Option<&str>, start: i64) -> Span {
        Span {
            trace_id: "t".into(),
            span_id: id.into(),
            parent_span_id: parent.map(str::to_string),
            start_time: start,
            ..Span::default()
        }
    }

    #[test]
    fn tree_puts_children_under_parents_and_survives_cycles() {
        let spans = vec![
            span("c2", Some("a"), 30),
            span("a", None, 10),
            span("c1", Some("a"), 20),
            span("g", Some("c1"), 25),
            span("orphan", Some("missing"), 5),
            span("x", Some("y"), 1),
            span("y", Some("x"), 2),
        ];
        let order: Vec<(&str, usize)> = tree_order(&spans)
            .into_iter()
            .map(|(s, d)| (s.span_id.as_str(), d))
            .collect();
        assert_eq!(
            order,
            vec![
                ("orphan", 0),
                ("a", 0),
                ("c1", 1),
                ("g", 2),
                ("c2", 1),
                ("x", 0),
                ("y", 0)
            ]
        );
    }
}
