//! The traces page: filter bar, volume / cost / latency charts, the table of calls with
//! cursor paging, and the detail drawer (also served alone as a fragment for the script).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use llmtrace_model::{
    AggregateQuery, AggregateRow, Error, Score, ScoreQuery, Span, SpanFilter, SpanQuery,
};
use maud::{Markup, html};

use super::chart::{self, Series, Unit};
use super::{Shared, UiQuery, error_page, layout, render};
use crate::http::run_store;

/// The filters the traces and live pages offer.
pub const FIELDS: [&str; 8] = [
    "model",
    "provider",
    "status",
    "user_id",
    "session_id",
    "meta",
    "q",
    "kind",
];

/// A span shown in the drawer, with the size of its trace and the trace's scores.
pub type Opened = (Span, usize, Vec<Score>);

/// The span an `open=trace:span` parameter names.
fn opened_span(
    store: &dyn llmtrace_model::Store,
    project: &str,
    open: Option<&str>,
) -> llmtrace_model::Result<Option<Opened>> {
    let Some((trace_id, span_id)) = open.and_then(|open| open.split_once(':')) else {
        return Ok(None);
    };
    find_span(store, project, trace_id, span_id)
}

fn find_span(
    store: &dyn llmtrace_model::Store,
    project: &str,
    trace_id: &str,
    span_id: &str,
) -> llmtrace_model::Result<Option<Opened>> {
    let trace = store.trace(project, trace_id)?;
    let count = trace.len();
    let Some(span) = trace.into_iter().find(|span| span.span_id == span_id) else {
        return Ok(None);
    };
    let scores = trace_scores(store, project, trace_id)?;
    Ok(Some((span, count, scores)))
}

/// Every score of one trace (scores are few: a page of them).
pub fn trace_scores(
    store: &dyn llmtrace_model::Store,
    project: &str,
    trace_id: &str,
) -> llmtrace_model::Result<Vec<Score>> {
    store.scores(&ScoreQuery {
        project: project.to_string(),
        trace_id: Some(trace_id.to_string()),
        limit: 1000,
        ..ScoreQuery::default()
    })
}

pub async fn page(
    State(state): State<Shared>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let query = UiQuery::new(pairs);
    let selection = match query.selection(&state.default_project) {
        Ok(selection) => selection,
        Err(err) => return error_page("Traces", &err),
    };
    let filter = selection.parsed.filter.clone();
    let search = SpanQuery {
        filter: filter.clone(),
        limit: selection.parsed.limit,
        cursor: selection.parsed.cursor.clone(),
    };
    let open = query.get("open").map(str::to_string);
    let project = filter.project.clone();
    let found = run_store(&state, move |store| {
        let page = store.search(&search)?;
        let opened = opened_span(store, &project, open.as_deref())?;
        Ok((page, opened))
    })
    .await;
    let (page, opened) = match found {
        Ok(found) => found,
        Err(err) => return error_page("Traces", &err),
    };
    let filters = query.filters_only();
    let content = html! {
        (layout::filter_bar("/traces", &query, &FIELDS, html! {}))
        // the charts come in their own request: with a filter the rollups cannot answer
        // (metadata, say) they read every row of the range, and the table need not wait
        div #charts data-src=(filters.href("/ui/charts", &[])) {
            a href=(filters.href("/dashboard", &[])) { "Charts of these calls on the dashboard" }
        }
        table.spans #spans {
            (render::span_table_head())
            tbody {
                @for span in &page.spans {
                    (render::span_row(span, &query.href("/traces", &[("open", Some(&render::open_param(span)))])))
                }
            }
        }
        @if page.spans.is_empty() {
            p.empty { "No spans match these filters in this time range." }
        }
        nav.pager {
            @if query.get("cursor").is_some() {
                a href=(query.href("/traces", &[("cursor", None), ("open", None)])) { "← Newest" }
            }
            @if let Some(next) = &page.next_cursor {
                a #older href=(query.href("/traces", &[("cursor", Some(&next.encode())), ("open", None)])) { "Older →" }
            }
        }
        (drawer(opened.as_ref().map(|(span, count, scores)| render::span_detail(span, *count, scores))))
    };
    Html(layout::page("Traces", "traces", content).into_string()).into_response()
}

/// The drawer, open when it holds a span.
pub fn drawer(detail: Option<Markup>) -> Markup {
    html! {
        aside #drawer hidden[detail.is_none()] {
            @if let Some(detail) = detail { (detail) }
        }
    }
}

/// Value per bucket of a measure, zero where a bucket had no rows.
pub fn per_bucket(
    buckets: &[i64],
    rows: &[&AggregateRow],
    measure: impl Fn(&AggregateRow) -> f64,
) -> Vec<f64> {
    buckets
        .iter()
        .map(|start| {
            rows.iter()
                .filter(|row| row.bucket_start == Some(*start))
                .map(|row| measure(row))
                .sum()
        })
        .collect()
}

/// `GET /ui/charts`: calls, cost and latency over the range of the traces page's filter.
pub async fn charts_fragment(
    State(state): State<Shared>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let query = UiQuery::new(pairs);
    let selection = match query.selection(&state.default_project) {
        Ok(selection) => selection,
        Err(err) => return fragment_error(err),
    };
    let window = selection.window;
    let bucket = chart::bucket_seconds((window.1 - window.0) / 1_000_000_000);
    let aggregate = AggregateQuery {
        filter: SpanFilter {
            since: Some(window.0),
            ..selection.parsed.filter
        },
        bucket_seconds: Some(bucket),
        group_by: vec![],
    };
    match run_store(&state, move |store| store.aggregate(&aggregate)).await {
        Ok(rows) => {
            let buckets = chart::buckets(window, bucket * 1_000_000_000, 400);
            Html(charts(&buckets, &rows).into_string()).into_response()
        }
        Err(err) => fragment_error(err),
    }
}

fn fragment_error(err: Error) -> Response {
    (
        StatusCode::from_u16(err.code().http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Html(html! { div.error { (err.to_string()) } }.into_string()),
    )
        .into_response()
}

fn charts(buckets: &[i64], rows: &[AggregateRow]) -> Markup {
    let rows: Vec<&AggregateRow> = rows.iter().collect();
    let latency = |measure: fn(&AggregateRow) -> f64| {
        buckets
            .iter()
            .map(|start| {
                rows.iter()
                    .find(|row| row.bucket_start == Some(*start))
                    .map_or(f64::NAN, |row| measure(row))
            })
            .collect::<Vec<f64>>()
    };
    html! {
        @if rows.is_empty() { p.empty { "No calls in this range to chart." } }
        div.charts {
            (chart::bars("Calls", Unit::Count, buckets, &[
                Series { name: "ok".into(), values: per_bucket(buckets, &rows, |r| (r.count - r.error_count) as f64) },
                Series { name: "errors".into(), values: per_bucket(buckets, &rows, |r| r.error_count as f64) },
            ]))
            (chart::bars("Cost", Unit::Usd, buckets, &[
                Series { name: "cost".into(), values: per_bucket(buckets, &rows, |r| r.total_cost_usd) },
            ]))
            (chart::lines("Latency", Unit::Ms, buckets, &[
                Series { name: "p50".into(), values: latency(|r| r.latency_p50_ms) },
                Series { name: "p95".into(), values: latency(|r| r.latency_p95_ms) },
            ]))
        }
    }
}

/// `GET /ui/span/{trace_id}/{span_id}`: the drawer's content alone.
pub async fn span_fragment(
    State(state): State<Shared>,
    Path((trace_id, span_id)): Path<(String, String)>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let query = UiQuery::new(pairs);
    let found = match query.project(&state.default_project) {
        Err(err) => Err(err),
        Ok(project) => {
            run_store(&state, move |store| {
                find_span(store, &project, &trace_id, &span_id)
            })
            .await
        }
    };
    match found {
        Ok(Some((span, count, scores))) => {
            Html(render::span_detail(&span, count, &scores).into_string()).into_response()
        }
        Ok(None) => (
            StatusCode::NOT_FOUND,
            Html("<p class=\"empty\">No such span.</p>"),
        )
            .into_response(),
        Err(err) => fragment_error(err),
    }
}
