//! The dashboard: volume, cost, tokens, latency percentiles and error rate over time,
//! broken down by a dimension, with totals per group. Whole-hour buckets over the common
//! dimensions are answered from the store's rollups.

use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Response};
use llmtrace_model::{AggregateQuery, AggregateRow, Dimension, SpanFilter};
use maud::html;

use super::chart::{self, PALETTE, Series, Unit};
use super::traces::per_bucket;
use super::{Shared, UiQuery, error_page, layout};
use crate::http::run_store;

/// Rows of the totals table: a breakdown by session or user can have tens of thousands of
/// groups, which no one reads on one page and which would only slow it.
const TOTALS_SHOWN: usize = 200;

const GROUPS: [(&str, &str); 7] = [
    ("", "nothing"),
    ("model", "model"),
    ("provider", "provider"),
    ("user", "user"),
    ("status", "status"),
    ("kind", "kind"),
    ("service", "service"),
];

/// The dimension a page asked to break down by: a metadata key wins over the list.
fn dimension(query: &UiQuery) -> Result<Option<Dimension>, llmtrace_model::Error> {
    if let Some(key) = query.get("group_key") {
        return Ok(Some(Dimension::Metadata(key.trim().to_string())));
    }
    query.get("group").map(Dimension::parse).transpose()
}

fn label(group: &[Option<String>]) -> String {
    match group.first() {
        Some(Some(value)) => value.clone(),
        Some(None) => "(none)".into(),
        None => "all".into(),
    }
}

pub async fn page(
    State(state): State<Shared>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let query = UiQuery::new(pairs);
    let selection = query
        .selection(&state.default_project)
        .and_then(|selection| Ok((selection, dimension(&query)?)));
    let (selection, dimension) = match selection {
        Ok(found) => found,
        Err(err) => return error_page("Dashboard", &err),
    };
    let window = selection.window;
    let bucket = chart::bucket_seconds((window.1 - window.0) / 1_000_000_000);
    let filter = SpanFilter {
        since: Some(window.0),
        ..selection.parsed.filter
    };
    let group_by: Vec<Dimension> = dimension.clone().into_iter().collect();
    let broken_down = dimension.is_some();
    let mut queries = vec![AggregateQuery {
        filter: filter.clone(),
        bucket_seconds: Some(bucket),
        group_by: vec![],
    }];
    // without a breakdown the grouped series are the overall ones
    if broken_down {
        queries.push(AggregateQuery {
            filter: filter.clone(),
            bucket_seconds: Some(bucket),
            group_by: group_by.clone(),
        });
    }
    queries.push(AggregateQuery {
        filter,
        bucket_seconds: None,
        group_by,
    });
    // one call: a breakdown the rollups cannot answer reads its rows once for the series
    // and the totals
    let answers = run_store(&state, move |store| store.aggregate_many(&queries)).await;
    let mut answers = match answers {
        Ok(answers) => answers.into_iter(),
        Err(err) => return error_page("Dashboard", &err),
    };
    let overall = answers.next().unwrap_or_default();
    let grouped = match broken_down {
        true => answers.next().unwrap_or_default(),
        false => overall.clone(),
    };
    let mut totals = answers.next().unwrap_or_default();
    totals.sort_by(|a, b| b.count.cmp(&a.count).then(a.group.cmp(&b.group)));
    let buckets = chart::buckets(window, bucket * 1_000_000_000, 400);
    // the biggest groups get a series each; the rest are summed into one
    let shown: Vec<Vec<Option<String>>> = totals
        .iter()
        .take(PALETTE - 1)
        .map(|r| r.group.clone())
        .collect();
    let stacked = |measure: fn(&AggregateRow) -> f64| -> Vec<Series> {
        let mut series: Vec<Series> = shown
            .iter()
            .map(|group| {
                let rows: Vec<&AggregateRow> =
                    grouped.iter().filter(|r| &r.group == group).collect();
                Series {
                    name: label(group),
                    values: per_bucket(&buckets, &rows, measure),
                }
            })
            .collect();
        let rest: Vec<&AggregateRow> = grouped
            .iter()
            .filter(|r| !shown.contains(&r.group))
            .collect();
        if !rest.is_empty() {
            series.push(Series {
                name: "other".into(),
                values: per_bucket(&buckets, &rest, measure),
            });
        }
        series
    };
    let overall_rows: Vec<&AggregateRow> = overall.iter().collect();
    let overall_line = |name: &str, measure: fn(&AggregateRow) -> f64| Series {
        name: name.into(),
        values: buckets
            .iter()
            .map(|start| {
                overall_rows
                    .iter()
                    .find(|r| r.bucket_start == Some(*start))
                    .map_or(f64::NAN, |r| measure(r))
            })
            .collect(),
    };
    let current_group = query.get("group").unwrap_or("");
    let content = html! {
        (layout::filter_bar("/dashboard", &query, &["model", "provider", "user_id", "meta", "kind"], html! {
            label { span { "Break down by" }
                select name="group" {
                    @for (value, name) in GROUPS {
                        option value=(value) selected[current_group == value] { (name) }
                    }
                }
            }
            label { span { "or metadata key" } input type="text" name="group_key" placeholder="feature" value=[query.get("group_key")]; }
        }))
        div.charts.dashboard {
            (chart::bars("Calls", Unit::Count, &buckets, &stacked(|r| r.count as f64)))
            (chart::bars("Cost", Unit::Usd, &buckets, &stacked(|r| r.total_cost_usd)))
            (chart::bars("Tokens", Unit::Count, &buckets, &stacked(|r| r.total_tokens as f64)))
            (chart::lines("Latency", Unit::Ms, &buckets, &[
                overall_line("p50", |r| r.latency_p50_ms),
                overall_line("p95", |r| r.latency_p95_ms),
                overall_line("p99", |r| r.latency_p99_ms),
            ]))
            (chart::lines("Error rate", Unit::Percent, &buckets, &[overall_line("errors", |r| r.error_rate)]))
        }
        table.spans #totals {
            @if totals.len() > TOTALS_SHOWN {
                caption { (format!("The {TOTALS_SHOWN} groups with the most calls of {}; narrow the filter to see others.", totals.len())) }
            }
            thead { tr {
                th { (dimension.as_ref().map(Dimension::name).unwrap_or_else(|| "all".into())) }
                th.num { "Calls" } th.num { "Error rate" } th.num { "Input tokens" } th.num { "Output tokens" }
                th.num { "Cost" } th.num { "p50" } th.num { "p95" } th.num { "p99" } th.num { "TTFT p50" }
            } }
            tbody {
                @for row in totals.iter().take(TOTALS_SHOWN) {
                    tr {
                        td { (label(&row.group)) }
                        td.num { (row.count) }
                        td.num { (format!("{:.1}%", row.error_rate * 100.0)) }
                        td.num { (layout::count(row.input_tokens as f64)) }
                        td.num { (layout::count(row.output_tokens as f64)) }
                        td.num { (layout::cost(row.total_cost_usd)) }
                        td.num { (layout::duration(row.latency_p50_ms)) }
                        td.num { (layout::duration(row.latency_p95_ms)) }
                        td.num { (layout::duration(row.latency_p99_ms)) }
                        td.num { (row.ttft_p50_ms.map(layout::duration).unwrap_or_default()) }
                    }
                }
            }
        }
    };
    Html(layout::page("Dashboard", "dashboard", content).into_string()).into_response()
}
