//! Rollups: per-segment pre-aggregates, so dashboards and time series never scan raw rows.
//!
//! At flush and compaction every segment gets a rollup: its rows grouped by hour and by
//! the low-cardinality columns aggregates filter and group on (model, requested model,
//! provider, routing alias, status, kind, service, source), each group holding the
//! additive measures (counts, token and cost sums, latency sum) and latency and TTFT
//! sketches. An aggregate whose filter and grouping use only those columns, with buckets
//! a whole number of hours, reads the groups of every hour its window covers whole; rows
//! at the window's ragged edges, in memtables, or in segments whose rows were since
//! replaced or deleted are aggregated from rows (see `engine`).
//!
//! Percentiles come from the sketches, in every path, so an answer does not depend on
//! where the rows happened to be: each is within `SKETCH_ACCURACY` (relative) of the exact
//! nearest-rank percentile of `llmtrace_model::query::percentile`.

use std::collections::BTreeMap;

use llmtrace_model::{
    AggregateQuery, AggregateRow, Dimension, Span, SpanFilter, SpanKind, SpanSource, SpanStatus,
};
use serde::{Deserialize, Serialize};

pub const HOUR_NS: i64 = 3_600 * 1_000_000_000;
/// Relative error bound of every percentile the store reports.
pub const SKETCH_ACCURACY: f64 = 0.01;
/// Values within this of zero (1 ns, in ms) share one bucket that reports 0.
const SKETCH_ZERO: f64 = 1e-6;

/// A log-bucketed histogram (the DDSketch scheme): bucket `k > 0` holds values in
/// `(Z·γ^(k-1), Z·γ^k]`, `k < 0` the negatives mirrored, `0` the values near zero. Any
/// value's bucket reports a representative within `SKETCH_ACCURACY` of it, so the bucket
/// holding the exact nearest-rank value reports it within that bound. Counts merge and
/// never lose a value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sketch {
    /// (bucket, count), sorted by bucket, counts > 0.
    buckets: Vec<(i32, u64)>,
}

fn gamma() -> f64 {
    (1.0 + SKETCH_ACCURACY) / (1.0 - SKETCH_ACCURACY)
}

impl Sketch {
    fn bucket(value: f64) -> i32 {
        let magnitude = value.abs();
        if magnitude.is_nan() || magnitude <= SKETCH_ZERO {
            return 0;
        }
        let k = ((magnitude / SKETCH_ZERO).ln() / gamma().ln())
            .ceil()
            .max(1.0);
        let k = k.min(f64::from(i32::MAX)) as i32;
        if value < 0.0 { -k } else { k }
    }

    fn representative(bucket: i32) -> f64 {
        if bucket == 0 {
            return 0.0;
        }
        let g = gamma();
        let upper = SKETCH_ZERO * g.powi(bucket.abs());
        let middle = 2.0 * upper / (g + 1.0);
        if bucket < 0 { -middle } else { middle }
    }

    pub fn add(&mut self, value: f64) {
        self.add_count(Sketch::bucket(value), 1);
    }

    fn add_count(&mut self, bucket: i32, count: u64) {
        match self.buckets.binary_search_by_key(&bucket, |(b, _)| *b) {
            Ok(at) => self.buckets[at].1 += count,
            Err(at) => self.buckets.insert(at, (bucket, count)),
        }
    }

    pub fn merge(&mut self, other: &Sketch) {
        if self.buckets.is_empty() {
            self.buckets.clone_from(&other.buckets);
            return;
        }
        for &(bucket, count) in &other.buckets {
            self.add_count(bucket, count);
        }
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|(_, count)| count).sum()
    }

    /// The nearest-rank `q` quantile, within `SKETCH_ACCURACY`; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for &(bucket, count) in &self.buckets {
            seen += count;
            if seen >= rank {
                return Some(Sketch::representative(bucket));
            }
        }
        None
    }
}

/// The additive measures of a set of spans.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Measures {
    pub count: u64,
    pub error_count: u64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub total_tokens: i64,
    pub cost_usd: f64,
    pub latency_sum_ms: f64,
    pub latency: Sketch,
    pub ttft: Sketch,
    /// Absent in rollups written before they were kept.
    #[serde(default)]
    pub first_start_time: Option<i64>,
    #[serde(default)]
    pub last_end_time: Option<i64>,
}

fn earlier(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    a.into_iter().chain(b).min()
}

fn later(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    a.into_iter().chain(b).max()
}

impl Measures {
    pub fn add(&mut self, span: &Span) {
        self.count += 1;
        self.error_count += u64::from(span.status.is_error());
        let input = span.input_tokens.unwrap_or(0);
        let output = span.output_tokens.unwrap_or(0);
        self.input_tokens += input;
        self.output_tokens += output;
        self.total_tokens += span.total_tokens.unwrap_or(input + output);
        self.cost_usd += span.total_cost_usd.unwrap_or(0.0);
        self.latency_sum_ms += span.duration_ms;
        self.latency.add(span.duration_ms);
        if let Some(ttft) = span.time_to_first_token_ms {
            self.ttft.add(ttft);
        }
        self.first_start_time = earlier(self.first_start_time, Some(span.start_time));
        self.last_end_time = later(self.last_end_time, Some(span.end_time));
    }

    pub fn merge(&mut self, other: &Measures) {
        self.count += other.count;
        self.error_count += other.error_count;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.total_tokens += other.total_tokens;
        self.cost_usd += other.cost_usd;
        self.latency_sum_ms += other.latency_sum_ms;
        self.latency.merge(&other.latency);
        self.ttft.merge(&other.ttft);
        self.first_start_time = earlier(self.first_start_time, other.first_start_time);
        self.last_end_time = later(self.last_end_time, other.last_end_time);
    }

    fn row(&self, bucket_start: Option<i64>, group: Vec<Option<String>>) -> AggregateRow {
        let count = self.count.max(1) as f64;
        let latency = |q| self.latency.quantile(q).unwrap_or(0.0);
        AggregateRow {
            bucket_start,
            group,
            count: self.count,
            error_count: self.error_count,
            error_rate: self.error_count as f64 / count,
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            total_tokens: self.total_tokens,
            total_cost_usd: self.cost_usd,
            latency_avg_ms: self.latency_sum_ms / count,
            latency_p50_ms: latency(0.50),
            latency_p90_ms: latency(0.90),
            latency_p95_ms: latency(0.95),
            latency_p99_ms: latency(0.99),
            ttft_p50_ms: self.ttft.quantile(0.50),
            ttft_p95_ms: self.ttft.quantile(0.95),
            first_start_time: self.first_start_time,
            last_end_time: self.last_end_time,
        }
    }
}

/// The columns a rollup groups by, besides the hour.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupKey {
    pub hour: i64,
    pub model: Option<String>,
    pub request_model: Option<String>,
    pub provider: Option<String>,
    pub routing_alias: Option<String>,
    pub status: SpanStatus,
    pub kind: SpanKind,
    pub service_name: Option<String>,
    pub source: SpanSource,
}

impl GroupKey {
    fn of(span: &Span) -> GroupKey {
        GroupKey {
            hour: span.start_time.div_euclid(HOUR_NS) * HOUR_NS,
            model: span.model.clone(),
            request_model: span.request_model.clone(),
            provider: span.provider.clone(),
            routing_alias: span.routing_alias.clone(),
            status: span.status,
            kind: span.kind,
            service_name: span.service_name.clone(),
            source: span.source,
        }
    }

    /// A span with exactly the key's columns set, so the reference filter and dimension
    /// code decide about a group as they would about each of its rows.
    fn representative(&self, project: &str) -> Span {
        Span {
            project: project.to_string(),
            start_time: self.hour,
            model: self.model.clone(),
            request_model: self.request_model.clone(),
            provider: self.provider.clone(),
            routing_alias: self.routing_alias.clone(),
            status: self.status,
            kind: self.kind,
            service_name: self.service_name.clone(),
            source: self.source,
            ..Span::default()
        }
    }
}

/// The rollup of one segment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rollup {
    pub groups: Vec<(GroupKey, Measures)>,
}

impl Rollup {
    pub fn of<'a>(spans: impl IntoIterator<Item = &'a Span>) -> Rollup {
        let mut groups: BTreeMap<GroupKey, Measures> = BTreeMap::new();
        for span in spans {
            groups.entry(GroupKey::of(span)).or_default().add(span);
        }
        Rollup {
            groups: groups.into_iter().collect(),
        }
    }
}

/// The part of an aggregate's window that rollups can answer: the whole hours inside it,
/// as `[start, end)`; `None` when the query needs a column rollups do not keep, buckets
/// that are not whole hours, or the window holds no whole hour.
pub fn rollup_window(query: &AggregateQuery) -> Option<(i64, i64)> {
    let filter = &query.filter;
    let rolled_up_filter = SpanFilter {
        project: filter.project.clone(),
        since: filter.since,
        until: filter.until,
        model: filter.model.clone(),
        provider: filter.provider.clone(),
        routing_alias: filter.routing_alias.clone(),
        status: filter.status,
        kinds: filter.kinds.clone(),
        service_name: filter.service_name.clone(),
        source: filter.source,
        ..SpanFilter::default()
    };
    let rolled_up_dimensions = query.group_by.iter().all(|dimension| {
        !matches!(
            dimension,
            Dimension::User | Dimension::Session | Dimension::Metadata(_)
        )
    });
    let whole_hours = query
        .bucket_seconds
        .is_none_or(|seconds| seconds.max(1) % 3_600 == 0);
    if *filter != rolled_up_filter || !rolled_up_dimensions || !whole_hours {
        return None;
    }
    let start = match filter.since {
        None => i64::MIN,
        Some(since) if since.rem_euclid(HOUR_NS) == 0 => since,
        Some(since) => since
            .div_euclid(HOUR_NS)
            .checked_add(1)?
            .checked_mul(HOUR_NS)?,
    };
    let end = match filter.until {
        None => i64::MAX,
        Some(until) => until.div_euclid(HOUR_NS) * HOUR_NS,
    };
    (start < end).then_some((start, end))
}

/// Aggregate groups being filled from rows and rollups alike.
pub struct Aggregation<'a> {
    query: &'a AggregateQuery,
    bucket_ns: Option<i64>,
    // hashed, not ordered: a row scan looks a group up per row; `finish` sorts once
    groups: std::collections::HashMap<(Option<i64>, Vec<Option<String>>), Measures>,
}

impl<'a> Aggregation<'a> {
    pub fn new(query: &'a AggregateQuery) -> Aggregation<'a> {
        Aggregation {
            query,
            bucket_ns: query
                .bucket_seconds
                .map(|seconds| seconds.max(1).saturating_mul(1_000_000_000)),
            groups: std::collections::HashMap::new(),
        }
    }

    fn entry(&mut self, span: &Span) -> &mut Measures {
        let bucket = self
            .bucket_ns
            .map(|width| span.start_time.div_euclid(width) * width);
        let group = self
            .query
            .group_by
            .iter()
            .map(|dimension| dimension.value_of(span))
            .collect();
        self.groups.entry((bucket, group)).or_default()
    }

    /// Adds a span the caller knows matches the query's filter.
    pub fn add_span(&mut self, span: &Span) {
        self.entry(span).add(span);
    }

    /// Adds the groups of `rollup` whose hour lies in `window` and that match the filter.
    pub fn add_rollup(&mut self, rollup: &Rollup, window: (i64, i64)) {
        let project = self.query.filter.project.clone();
        for (key, measures) in &rollup.groups {
            if key.hour < window.0 || key.hour >= window.1 {
                continue;
            }
            let span = key.representative(&project);
            if self.query.filter.matches(&span) {
                self.entry(&span).merge(measures);
            }
        }
    }

    pub fn finish(self) -> Vec<AggregateRow> {
        let mut groups: Vec<_> = self.groups.into_iter().collect();
        groups.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        groups
            .into_iter()
            .map(|((bucket, group), measures)| measures.row(bucket, group))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmtrace_model::query::{aggregate, percentile};
    use proptest::prelude::*;

    fn within(got: f64, exact: f64) -> bool {
        (got - exact).abs() <= SKETCH_ACCURACY * exact.abs() + SKETCH_ZERO + 1e-12
    }

    proptest! {
        #[test]
        fn sketch_quantiles_are_within_the_bound_of_nearest_rank(
            values in prop::collection::vec(
                prop_oneof![-1e3f64..1e3, 0.0f64..1e7, Just(0.0), 1e-9f64..1e-3],
                1..300,
            ),
            q in 0.0f64..=1.0,
        ) {
            let mut halves = (Sketch::default(), Sketch::default());
            for (i, value) in values.iter().enumerate() {
                if i % 2 == 0 { halves.0.add(*value) } else { halves.1.add(*value) }
            }
            halves.0.merge(&halves.1);
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            let exact = percentile(&sorted, q);
            let got = halves.0.quantile(q).unwrap();
            prop_assert!(within(got, exact), "q {q}: got {got}, exact {exact}");
            prop_assert_eq!(halves.0.count(), values.len() as u64);
        }
    }

    #[test]
    fn window_covers_only_whole_hours_and_needs_rolled_up_columns() {
        let mut query = AggregateQuery {
            filter: SpanFilter::for_project("p"),
            bucket_seconds: Some(86_400),
            group_by: vec![Dimension::Model],
        };
        assert_eq!(rollup_window(&query), Some((i64::MIN, i64::MAX)));
        query.filter.since = Some(HOUR_NS + 1);
        query.filter.until = Some(5 * HOUR_NS - 1);
        assert_eq!(rollup_window(&query), Some((2 * HOUR_NS, 4 * HOUR_NS)));
        query.filter.since = Some(HOUR_NS);
        query.filter.until = Some(HOUR_NS + 5);
        assert_eq!(rollup_window(&query), None, "no whole hour inside");
        query.filter.until = Some(2 * HOUR_NS);
        assert_eq!(rollup_window(&query), Some((HOUR_NS, 2 * HOUR_NS)));
        query.bucket_seconds = Some(60);
        assert_eq!(rollup_window(&query), None, "minute buckets");
        query.bucket_seconds = None;
        query.group_by = vec![Dimension::User];
        assert_eq!(rollup_window(&query), None, "users are not rolled up");
        query.group_by = vec![];
        query.filter.metadata = vec![("k".into(), "v".into())];
        assert_eq!(rollup_window(&query), None, "metadata is not rolled up");
    }

    #[test]
    fn rollups_answer_like_the_reference() {
        let spans: Vec<Span> = (0..500i64)
            .map(|i| Span {
                project: "p".into(),
                trace_id: format!("{i:032x}"),
                span_id: format!("{i:016x}"),
                start_time: i * 997 * 1_000_000_000,
                duration_ms: (i % 37) as f64 * 13.5,
                time_to_first_token_ms: (i % 3 == 0).then_some(i as f64),
                status: if i % 7 == 0 {
                    SpanStatus::Error
                } else {
                    SpanStatus::Ok
                },
                model: Some(format!("m{}", i % 4)),
                request_model: Some(format!("m{}", i % 2)),
                provider: Some(["openai", "anthropic"][(i % 2) as usize].into()),
                input_tokens: Some(i),
                output_tokens: (i % 5 != 0).then_some(2 * i),
                total_cost_usd: Some(i as f64 / 1e4),
                ..Span::default()
            })
            .collect();
        let rollup = Rollup::of(&spans);
        let query = AggregateQuery {
            filter: SpanFilter {
                model: Some("m1".into()),
                ..SpanFilter::for_project("p")
            },
            bucket_seconds: Some(2 * 3_600),
            group_by: vec![Dimension::Model, Dimension::Status],
        };
        let mut aggregation = Aggregation::new(&query);
        aggregation.add_rollup(&rollup, (i64::MIN, i64::MAX));
        let got = aggregation.finish();
        let expected = aggregate(&query, &spans);
        assert_eq!(got.len(), expected.len());
        assert!(!got.is_empty());
        for (got, expected) in got.iter().zip(&expected) {
            assert_eq!(
                (got.bucket_start, &got.group, got.count, got.error_count),
                (
                    expected.bucket_start,
                    &expected.group,
                    expected.count,
                    expected.error_count
                )
            );
            assert_eq!(
                (got.input_tokens, got.output_tokens, got.total_tokens),
                (
                    expected.input_tokens,
                    expected.output_tokens,
                    expected.total_tokens
                )
            );
            assert!((got.total_cost_usd - expected.total_cost_usd).abs() < 1e-9);
            assert!(within(got.latency_p99_ms, expected.latency_p99_ms));
            assert!(within(got.latency_p50_ms, expected.latency_p50_ms));
            match (got.ttft_p95_ms, expected.ttft_p95_ms) {
                (Some(got), Some(expected)) => assert!(within(got, expected)),
                (got, expected) => assert_eq!(got, expected),
            }
        }
    }
}
