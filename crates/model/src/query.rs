//! The one query model: filters, cursor pages, aggregates.
//!
//! Every backend answers these types; `SpanFilter::matches` and `aggregate` are the
//! reference semantics that backends either call directly or must agree with (the store
//! conformance and property tests compare against them).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::span::{OrderKey, Span, SpanKind, SpanSource, SpanStatus};

/// Default and maximum page sizes.
pub const DEFAULT_PAGE_LIMIT: usize = 50;
pub const MAX_PAGE_LIMIT: usize = 1000;

/// Conditions a span must meet. Empty fields do not constrain.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SpanFilter {
    pub project: String,
    /// Inclusive lower bound on `start_time` (ns).
    pub since: Option<i64>,
    /// Exclusive upper bound on `start_time` (ns).
    pub until: Option<i64>,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
    pub session_id: Option<String>,
    pub user_id: Option<String>,
    pub model: Option<String>,
    pub provider: Option<String>,
    pub routing_alias: Option<String>,
    pub status: Option<SpanStatus>,
    pub kinds: Vec<SpanKind>,
    pub service_name: Option<String>,
    pub source: Option<SpanSource>,
    pub metadata: Vec<(String, String)>,
    /// Equality on a top-level key of `attributes` (compared as text).
    pub attributes: Vec<(String, String)>,
    pub min_duration_ms: Option<f64>,
    pub max_duration_ms: Option<f64>,
    pub min_cost_usd: Option<f64>,
    pub max_cost_usd: Option<f64>,
    /// Full text: every term must occur in `input_text` or `output_text`.
    pub text: Option<String>,
}

impl SpanFilter {
    pub fn for_project(project: impl Into<String>) -> SpanFilter {
        SpanFilter {
            project: project.into(),
            ..SpanFilter::default()
        }
    }

    /// Whether `span` meets every condition. The reference semantics of all backends.
    pub fn matches(&self, span: &Span) -> bool {
        span.project == self.project
            && self.since.is_none_or(|since| span.start_time >= since)
            && self.until.is_none_or(|until| span.start_time < until)
            && eq_opt(&self.trace_id, Some(&span.trace_id))
            && eq_opt(&self.span_id, Some(&span.span_id))
            && eq_opt(&self.session_id, span.session_id.as_ref())
            && eq_opt(&self.user_id, span.user_id.as_ref())
            && self.model.as_ref().is_none_or(|model| {
                span.model.as_ref() == Some(model) || span.request_model.as_ref() == Some(model)
            })
            && eq_opt(&self.provider, span.provider.as_ref())
            && eq_opt(&self.routing_alias, span.routing_alias.as_ref())
            && self.status.is_none_or(|status| span.status == status)
            && (self.kinds.is_empty() || self.kinds.contains(&span.kind))
            && eq_opt(&self.service_name, span.service_name.as_ref())
            && self.source.is_none_or(|source| span.source == source)
            && self
                .metadata
                .iter()
                .all(|(key, value)| span.metadata.get(key) == Some(value))
            && self
                .attributes
                .iter()
                .all(|(key, value)| attribute_text(span, key).as_deref() == Some(value.as_str()))
            && self
                .min_duration_ms
                .is_none_or(|min| span.duration_ms >= min)
            && self
                .max_duration_ms
                .is_none_or(|max| span.duration_ms <= max)
            && self
                .min_cost_usd
                .is_none_or(|min| span.total_cost_usd.is_some_and(|cost| cost >= min))
            && self
                .max_cost_usd
                .is_none_or(|max| span.total_cost_usd.is_some_and(|cost| cost <= max))
            && self
                .text
                .as_ref()
                .is_none_or(|text| text_matches(text, span))
    }

    /// The start-time window as `[since, until)`, with open ends widened to the extremes.
    pub fn time_window(&self) -> (i64, i64) {
        (
            self.since.unwrap_or(i64::MIN),
            self.until.unwrap_or(i64::MAX),
        )
    }
}

fn eq_opt(wanted: &Option<String>, actual: Option<&String>) -> bool {
    wanted.as_ref().is_none_or(|wanted| actual == Some(wanted))
}

fn attribute_text(span: &Span, key: &str) -> Option<String> {
    match span.attributes.get(key)? {
        serde_json::Value::String(text) => Some(text.clone()),
        other => Some(other.to_string()),
    }
}

/// Splits text into the lower-case alphanumeric terms full-text search works on.
pub fn terms(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|term| !term.is_empty())
        .map(str::to_lowercase)
}

/// Whether every term of `query` occurs as a term of the span's input or output text.
pub fn text_matches(query: &str, span: &Span) -> bool {
    let mut wanted: Vec<String> = terms(query).collect();
    wanted.sort_unstable();
    wanted.dedup();
    let mut found = vec![false; wanted.len()];
    let mut left = wanted.len();
    if left == 0 {
        return true;
    }
    // Same terms as `terms`, compared without allocating a lower-case copy of ASCII ones.
    let tokens = span
        .input_text
        .split(|c: char| !c.is_alphanumeric())
        .chain(span.output_text.split(|c: char| !c.is_alphanumeric()))
        .filter(|token| !token.is_empty());
    for token in tokens {
        let lower = (!token.is_ascii()).then(|| token.to_lowercase());
        for (term, seen) in wanted.iter().zip(found.iter_mut()) {
            let equal = match &lower {
                Some(lower) => lower == term,
                None => token.eq_ignore_ascii_case(term),
            };
            if equal && !*seen {
                *seen = true;
                left -= 1;
                if left == 0 {
                    return true;
                }
            }
        }
    }
    false
}

/// Position after which the next page starts (exclusive), newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor(pub OrderKey);

impl Cursor {
    pub fn encode(&self) -> String {
        format!(
            "{}.{}.{}",
            self.0.start_time, self.0.trace_id, self.0.span_id
        )
    }

    pub fn decode(text: &str) -> Result<Cursor> {
        let bad = || {
            Error::BadRequest(format!(
                "cursor {text:?} is not a cursor this server issued"
            ))
        };
        let mut parts = text.splitn(3, '.');
        let start_time = parts
            .next()
            .and_then(|part| part.parse().ok())
            .ok_or_else(bad)?;
        let trace_id = parts.next().ok_or_else(bad)?.to_string();
        let span_id = parts.next().ok_or_else(bad)?.to_string();
        if trace_id.is_empty() || span_id.is_empty() || span_id.contains('.') {
            return Err(bad());
        }
        Ok(Cursor(OrderKey {
            start_time,
            trace_id,
            span_id,
        }))
    }
}

/// A search: filter plus one page, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanQuery {
    pub filter: SpanFilter,
    pub limit: usize,
    pub cursor: Option<Cursor>,
}

impl SpanQuery {
    pub fn new(filter: SpanFilter) -> SpanQuery {
        SpanQuery {
            filter,
            limit: DEFAULT_PAGE_LIMIT,
            cursor: None,
        }
    }

    /// Whether a span (already matching the filter) lies after the cursor.
    pub fn after_cursor(&self, span: &Span) -> bool {
        self.cursor.as_ref().is_none_or(|cursor| {
            span.order() < (cursor.0.start_time, &cursor.0.trace_id, &cursor.0.span_id)
        })
    }
}

/// One page of results and where the next one starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub spans: Vec<Span>,
    pub next_cursor: Option<Cursor>,
}

impl Page {
    /// Builds a page from every candidate that matched, applying order, cursor and limit.
    pub fn from_candidates(query: &SpanQuery, mut candidates: Vec<Span>) -> Page {
        candidates.retain(|span| query.after_cursor(span));
        candidates.sort_by(|a, b| b.order().cmp(&a.order()));
        let has_more = candidates.len() > query.limit;
        candidates.truncate(query.limit);
        let next_cursor = if has_more {
            candidates.last().map(|span| Cursor(span.order_key()))
        } else {
            None
        };
        Page {
            spans: candidates,
            next_cursor,
        }
    }
}

/// A trace of a session: its spans, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionTrace {
    pub trace_id: String,
    pub start_time: i64,
    pub end_time: i64,
    pub spans: Vec<Span>,
}

/// Groups spans of one session into traces ordered by their first span's start.
pub fn session_traces(mut spans: Vec<Span>) -> Vec<SessionTrace> {
    spans.sort_by(|a, b| a.order().cmp(&b.order()));
    let mut by_trace: BTreeMap<String, Vec<Span>> = BTreeMap::new();
    for span in spans {
        by_trace
            .entry(span.trace_id.clone())
            .or_default()
            .push(span);
    }
    let mut traces: Vec<SessionTrace> = by_trace
        .into_iter()
        .map(|(trace_id, spans)| SessionTrace {
            start_time: spans.iter().map(|s| s.start_time).min().unwrap_or(0),
            end_time: spans.iter().map(|s| s.end_time).max().unwrap_or(0),
            trace_id,
            spans,
        })
        .collect();
    traces.sort_by(|a, b| (a.start_time, &a.trace_id).cmp(&(b.start_time, &b.trace_id)));
    traces
}

/// A column aggregates can group by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Dimension {
    Model,
    Provider,
    RoutingAlias,
    Status,
    Kind,
    User,
    Session,
    Service,
    Source,
    Metadata(String),
}

impl Dimension {
    pub fn parse(text: &str) -> Result<Dimension> {
        Ok(match text {
            "model" => Dimension::Model,
            "provider" => Dimension::Provider,
            "routing_alias" => Dimension::RoutingAlias,
            "status" => Dimension::Status,
            "kind" => Dimension::Kind,
            "user" | "user_id" => Dimension::User,
            "session" | "session_id" => Dimension::Session,
            "service" | "service_name" => Dimension::Service,
            "source" => Dimension::Source,
            other => match other.strip_prefix("metadata.") {
                Some(key) if !key.is_empty() => Dimension::Metadata(key.to_string()),
                _ => {
                    return Err(Error::BadRequest(format!(
                        "cannot group by {other:?}: use model, provider, routing_alias, status, kind, user, session, service, source or metadata.<key>"
                    )));
                }
            },
        })
    }

    pub fn name(&self) -> String {
        match self {
            Dimension::Model => "model".into(),
            Dimension::Provider => "provider".into(),
            Dimension::RoutingAlias => "routing_alias".into(),
            Dimension::Status => "status".into(),
            Dimension::Kind => "kind".into(),
            Dimension::User => "user".into(),
            Dimension::Session => "session".into(),
            Dimension::Service => "service".into(),
            Dimension::Source => "source".into(),
            Dimension::Metadata(key) => format!("metadata.{key}"),
        }
    }

    pub fn value_of(&self, span: &Span) -> Option<String> {
        self.value_in(span).map(str::to_string)
    }

    /// `value_of`, borrowed from the span.
    pub fn value_in<'s>(&self, span: &'s Span) -> Option<&'s str> {
        match self {
            Dimension::Model => span.model.as_deref().or(span.request_model.as_deref()),
            Dimension::Provider => span.provider.as_deref(),
            Dimension::RoutingAlias => span.routing_alias.as_deref(),
            Dimension::Status => Some(span.status.as_str()),
            Dimension::Kind => Some(span.kind.as_str()),
            Dimension::User => span.user_id.as_deref(),
            Dimension::Session => span.session_id.as_deref(),
            Dimension::Service => span.service_name.as_deref(),
            Dimension::Source => Some(span.source.as_str()),
            Dimension::Metadata(key) => span.metadata.get(key).map(String::as_str),
        }
    }
}

/// Aggregates: time buckets × dimensions over the spans a filter selects.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateQuery {
    pub filter: SpanFilter,
    /// Bucket width in seconds; `None` aggregates the whole window into one bucket.
    pub bucket_seconds: Option<i64>,
    pub group_by: Vec<Dimension>,
}

/// One output row of an aggregate query.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AggregateRow {
    /// Bucket start (ns), when bucketed.
    pub bucket_start: Option<i64>,
    /// One value per `group_by` dimension, in order.
    pub group: Vec<Option<String>>,
    pub count: u64,
    pub error_count: u64,
    pub error_rate: f64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub total_tokens: i64,
    pub total_cost_usd: f64,
    pub latency_avg_ms: f64,
    pub latency_p50_ms: f64,
    pub latency_p90_ms: f64,
    pub latency_p95_ms: f64,
    pub latency_p99_ms: f64,
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p95_ms: Option<f64>,
    /// Earliest start and latest end (ns) of the group's spans: a session's first and last
    /// activity. `None` only from rollups written before these were kept.
    pub first_start_time: Option<i64>,
    pub last_end_time: Option<i64>,
}

/// Nearest-rank percentile of sorted values: the smallest value with at least `q` of
/// the values at or below it.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[derive(Default)]
struct Accumulator {
    count: u64,
    error_count: u64,
    input_tokens: i64,
    output_tokens: i64,
    total_tokens: i64,
    total_cost_usd: f64,
    latencies: Vec<f64>,
    ttfts: Vec<f64>,
    first_start_time: Option<i64>,
    last_end_time: Option<i64>,
}

/// The reference aggregate: groups matching spans and computes every measure exactly.
pub fn aggregate<'a>(
    query: &AggregateQuery,
    spans: impl IntoIterator<Item = &'a Span>,
) -> Vec<AggregateRow> {
    let spans = spans.into_iter().filter(|span| query.filter.matches(span));
    let bucket_ns = query
        .bucket_seconds
        .map(|seconds| seconds.max(1) * 1_000_000_000);
    let mut groups: BTreeMap<(Option<i64>, Vec<Option<String>>), Accumulator> = BTreeMap::new();
    for span in spans {
        let bucket = bucket_ns.map(|width| span.start_time.div_euclid(width) * width);
        let group = query
            .group_by
            .iter()
            .map(|dim| dim.value_of(span))
            .collect();
        let acc = groups.entry((bucket, group)).or_default();
        acc.count += 1;
        acc.error_count += u64::from(span.status.is_error());
        acc.input_tokens += span.input_tokens.unwrap_or(0);
        acc.output_tokens += span.output_tokens.unwrap_or(0);
        acc.total_tokens += span
            .total_tokens
            .unwrap_or(span.input_tokens.unwrap_or(0) + span.output_tokens.unwrap_or(0));
        acc.total_cost_usd += span.total_cost_usd.unwrap_or(0.0);
        acc.latencies.push(span.duration_ms);
        if let Some(ttft) = span.time_to_first_token_ms {
            acc.ttfts.push(ttft);
        }
        acc.first_start_time = Some(
            acc.first_start_time
                .map_or(span.start_time, |first| first.min(span.start_time)),
        );
        acc.last_end_time = Some(
            acc.last_end_time
                .map_or(span.end_time, |last| last.max(span.end_time)),
        );
    }
    groups
        .into_iter()
        .map(|((bucket_start, group), mut acc)| {
            acc.latencies.sort_by(f64::total_cmp);
            acc.ttfts.sort_by(f64::total_cmp);
            let ttft = |q| (!acc.ttfts.is_empty()).then(|| percentile(&acc.ttfts, q));
            AggregateRow {
                bucket_start,
                group,
                count: acc.count,
                error_count: acc.error_count,
                error_rate: acc.error_count as f64 / acc.count as f64,
                input_tokens: acc.input_tokens,
                output_tokens: acc.output_tokens,
                total_tokens: acc.total_tokens,
                total_cost_usd: acc.total_cost_usd,
                latency_avg_ms: acc.latencies.iter().sum::<f64>() / acc.count as f64,
                latency_p50_ms: percentile(&acc.latencies, 0.50),
                latency_p90_ms: percentile(&acc.latencies, 0.90),
                latency_p95_ms: percentile(&acc.latencies, 0.95),
                latency_p99_ms: percentile(&acc.latencies, 0.99),
                ttft_p50_ms: ttft(0.50),
                ttft_p95_ms: ttft(0.95),
                first_start_time: acc.first_start_time,
                last_end_time: acc.last_end_time,
            }
        })
        .collect()
}

/// What to delete. Every set field must match (a conjunction); at least one must be set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Deletion {
    pub project: String,
    pub trace_id: Option<String>,
    /// One span of `trace_id` (a stored completion, say) rather than the whole trace.
    pub span_id: Option<String>,
    pub session_id: Option<String>,
    pub user_id: Option<String>,
    /// `[since, until)` on start time, ns.
    pub since: Option<i64>,
    pub until: Option<i64>,
}

impl Deletion {
    pub fn validate(&self) -> Result<()> {
        if self.trace_id.is_none()
            && self.session_id.is_none()
            && self.user_id.is_none()
            && self.since.is_none()
            && self.until.is_none()
        {
            return Err(Error::BadRequest(
                "a deletion needs a trace_id, session_id, user_id or time range".into(),
            ));
        }
        if self.span_id.is_some() && self.trace_id.is_none() {
            return Err(Error::BadRequest(
                "a deletion by span_id needs its trace_id".into(),
            ));
        }
        Ok(())
    }

    pub fn matches(&self, span: &Span) -> bool {
        span.project == self.project
            && eq_opt(&self.trace_id, Some(&span.trace_id))
            && eq_opt(&self.span_id, Some(&span.span_id))
            && eq_opt(&self.session_id, span.session_id.as_ref())
            && eq_opt(&self.user_id, span.user_id.as_ref())
            && self.since.is_none_or(|since| span.start_time >= since)
            && self.until.is_none_or(|until| span.start_time < until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(start: i64, text: &str) -> Span {
        Span {
            project: "p".into(),
            trace_id: format!("{start:032x}"),
            span_id: format!("{start:016x}"),
            start_time: start,
            input_text: text.into(),
            ..Span::default()
        }
    }

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let cursor = Cursor(span(42, "").order_key());
        assert_eq!(Cursor::decode(&cursor.encode()).ok(), Some(cursor));
        assert!(Cursor::decode("nope").is_err());
        assert!(Cursor::decode("12.abc").is_err());
    }

    #[test]
    fn text_search_needs_every_term_as_a_whole_word() {
        let s = span(1, "The Weather in Paris, today!");
        assert!(text_matches("paris weather", &s));
        assert!(!text_matches("pari", &s));
        assert!(!text_matches("paris london", &s));
        assert!(text_matches("PARIS paris", &s), "repeated terms count once");
    }

    #[test]
    fn text_search_lower_cases_every_script_the_same_way() {
        let kelvin = span(1, "\u{212A}elvin scale"); // KELVIN SIGN lower-cases to `k`
        assert!(text_matches("kelvin", &kelvin));
        assert!(text_matches("KELVIN", &kelvin));
        let greek = span(2, "ΟΔΟΣ road");
        assert!(text_matches("οδος", &greek));
        assert!(text_matches("Οδος ROAD", &greek));
        let german = span(3, "Straße");
        assert!(
            !text_matches("strasse", &german),
            "no case folding beyond lower-casing"
        );
        assert!(text_matches("straße", &german));
        assert!(!text_matches("stra", &german));
    }

    #[test]
    fn pages_walk_newest_first_without_overlap() {
        let spans: Vec<Span> = (0..7).map(|i| span(i, "")).collect();
        let mut query = SpanQuery::new(SpanFilter::for_project("p"));
        query.limit = 3;
        let mut seen = vec![];
        loop {
            let page = Page::from_candidates(&query, spans.clone());
            seen.extend(page.spans.iter().map(|s| s.start_time));
            match page.next_cursor {
                Some(cursor) => query.cursor = Some(cursor),
                None => break,
            }
        }
        assert_eq!(seen, vec![6, 5, 4, 3, 2, 1, 0]);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.5), 50.0);
        assert_eq!(percentile(&values, 0.99), 99.0);
        assert_eq!(percentile(&values, 1.0), 100.0);
        assert_eq!(percentile(&[7.0], 0.5), 7.0);
    }
}
