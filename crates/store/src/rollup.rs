//! Rollups: per-segment pre-aggregates, so dashboards and time series never scan raw rows.
//!
//! At flush and compaction every segment gets a rollup: its rows grouped by hour and by
//! the low-cardinality columns aggregates filter and group on (model, requested model,
//! provider, routing alias, status, kind, service, source), each group holding the
//! additive measures (counts, token and cost sums, latency sum) and latency and TTFT
//! sketches; as a second view, grouped by hour × user × status × kind; and, as a view per
//! metadata key, grouped by hour × that key's value × status × kind. The views beyond the
//! first are kept only where their values repeat within the hour, so that they stay much
//! smaller than the rows. An
//! aggregate whose filter and grouping use only one view's columns, with buckets a whole
//! number of hours, reads that view's groups of every hour its window covers whole; rows
//! at the window's ragged edges, in memtables, or in segments whose rows were since
//! replaced or deleted (or without that view) are aggregated from rows (see `engine`).
//!
//! Percentiles come from the sketches, in every path, so an answer does not depend on
//! where the rows happened to be: each is within `SKETCH_ACCURACY` (relative) of the exact
//! nearest-rank percentile of `llmtrace_model::query::percentile`.

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::RecordBatch;
use llmtrace_model::{
    AggregateQuery, AggregateRow, Dimension, Span, SpanFilter, SpanKind, SpanSource, SpanStatus,
};
use serde::{Deserialize, Serialize};

use crate::segment::{Columns, TextColumn};

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
///
/// Kept as sorted (bucket, count) pairs while it has few buckets (most groups of a
/// high-cardinality breakdown), as a dense run of counts once it has many, so an add is a
/// lookup, not an insertion. Either way it is written as the pairs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(from = "SketchPairs", into = "SketchPairs")]
pub struct Sketch {
    buckets: Buckets,
}

/// The stored form of a sketch: (bucket, count), sorted by bucket, counts > 0.
#[derive(Serialize, Deserialize)]
struct SketchPairs {
    buckets: Vec<(i32, u64)>,
}

#[derive(Debug, Clone)]
enum Buckets {
    Sparse(Vec<(i32, u64)>),
    /// `counts[i]` is the count of bucket `first + i`.
    Dense {
        first: i32,
        counts: Vec<u64>,
    },
}

impl Default for Buckets {
    fn default() -> Buckets {
        Buckets::Sparse(Vec::new())
    }
}

/// Pairs beyond which a sketch turns dense (when its buckets span at most `DENSE_SPAN`).
const DENSE_FROM: usize = 48;
/// The widest run of buckets kept dense (16 KiB): from zero (bucket 0) to about 20 years
/// in ms at 1% accuracy, so latencies with some zeros among them stay dense.
const DENSE_SPAN: usize = 2048;

impl From<SketchPairs> for Sketch {
    fn from(pairs: SketchPairs) -> Sketch {
        let mut sketch = Sketch::default();
        for (bucket, count) in pairs.buckets {
            sketch.add_count(bucket, count);
        }
        sketch
    }
}

impl From<Sketch> for SketchPairs {
    fn from(sketch: Sketch) -> SketchPairs {
        SketchPairs {
            buckets: sketch.pairs().collect(),
        }
    }
}

impl PartialEq for Sketch {
    fn eq(&self, other: &Sketch) -> bool {
        self.pairs().eq(other.pairs())
    }
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
        static LN_GAMMA: std::sync::LazyLock<f64> = std::sync::LazyLock::new(|| gamma().ln());
        let k = ((magnitude / SKETCH_ZERO).ln() / *LN_GAMMA).ceil().max(1.0);
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

    /// (bucket, count) in bucket order, counts > 0.
    fn pairs(&self) -> Box<dyn Iterator<Item = (i32, u64)> + '_> {
        match &self.buckets {
            Buckets::Sparse(pairs) => Box::new(pairs.iter().copied()),
            Buckets::Dense { first, counts } => Box::new(
                (*first..)
                    .zip(counts.iter().copied())
                    .filter(|(_, count)| *count > 0),
            ),
        }
    }

    pub fn add(&mut self, value: f64) {
        self.add_count(Sketch::bucket(value), 1);
    }

    fn add_count(&mut self, bucket: i32, count: u64) {
        match &mut self.buckets {
            Buckets::Sparse(pairs) => {
                match pairs.binary_search_by_key(&bucket, |(b, _)| *b) {
                    Ok(at) => pairs[at].1 += count,
                    Err(at) => pairs.insert(at, (bucket, count)),
                }
                if pairs.len() > DENSE_FROM {
                    let (low, high) = (pairs[0].0, pairs[pairs.len() - 1].0);
                    if span_of(low, high) <= DENSE_SPAN {
                        let mut counts = vec![0; span_of(low, high)];
                        for &(bucket, count) in pairs.iter() {
                            counts[offset(low, bucket)] = count;
                        }
                        self.buckets = Buckets::Dense { first: low, counts };
                    }
                }
            }
            Buckets::Dense { first, counts } => {
                let last = *first + (counts.len() as i32 - 1);
                let (low, high) = (bucket.min(*first), bucket.max(last));
                if span_of(low, high) > DENSE_SPAN {
                    let mut pairs: Vec<(i32, u64)> = self.pairs().collect();
                    let at = pairs.partition_point(|(b, _)| *b < bucket);
                    match pairs.get_mut(at) {
                        Some(pair) if pair.0 == bucket => pair.1 += count,
                        _ => pairs.insert(at, (bucket, count)),
                    }
                    self.buckets = Buckets::Sparse(pairs);
                    return;
                }
                if low < *first {
                    counts.splice(0..0, std::iter::repeat_n(0, offset(low, *first)));
                    *first = low;
                }
                if high > last {
                    counts.resize(span_of(*first, high), 0);
                }
                counts[offset(*first, bucket)] += count;
            }
        }
    }

    pub fn merge(&mut self, other: &Sketch) {
        if self.count() == 0 {
            self.buckets.clone_from(&other.buckets);
            return;
        }
        if let (
            Buckets::Dense {
                first: own_first,
                counts: own,
            },
            Buckets::Dense { first, counts },
        ) = (&mut self.buckets, &other.buckets)
        {
            // two runs: widen this one to cover both, then add element by element
            let own_last = *own_first + (own.len() as i32 - 1);
            let last = *first + (counts.len() as i32 - 1);
            let (low, high) = ((*first).min(*own_first), last.max(own_last));
            if span_of(low, high) <= DENSE_SPAN {
                if low < *own_first {
                    own.splice(0..0, std::iter::repeat_n(0, offset(low, *own_first)));
                    *own_first = low;
                }
                if high > own_last {
                    own.resize(span_of(*own_first, high), 0);
                }
                let at = offset(*own_first, *first);
                for (into, count) in own[at..at + counts.len()].iter_mut().zip(counts) {
                    *into += count;
                }
                return;
            }
        }
        for (bucket, count) in other.pairs() {
            self.add_count(bucket, count);
        }
    }

    pub fn count(&self) -> u64 {
        match &self.buckets {
            Buckets::Sparse(pairs) => pairs.iter().map(|(_, count)| count).sum(),
            Buckets::Dense { counts, .. } => counts.iter().sum(),
        }
    }

    /// The nearest-rank `q` quantile, within `SKETCH_ACCURACY`; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (bucket, count) in self.pairs() {
            seen += count;
            if seen >= rank {
                return Some(Sketch::representative(bucket));
            }
        }
        None
    }
}

/// How many buckets `low..=high` holds.
fn span_of(low: i32, high: i32) -> usize {
    (i64::from(high) - i64::from(low) + 1) as usize
}

/// The position of `bucket` in a dense run starting at `first`.
fn offset(first: i32, bucket: i32) -> usize {
    (i64::from(bucket) - i64::from(first)) as usize
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
        self.add_row(&Measured {
            error: span.status.is_error(),
            input_tokens: span.input_tokens,
            output_tokens: span.output_tokens,
            total_tokens: span.total_tokens,
            cost_usd: span.total_cost_usd,
            duration_ms: span.duration_ms,
            ttft_ms: span.time_to_first_token_ms,
            start_time: span.start_time,
            end_time: span.end_time,
        });
    }

    fn add_row(&mut self, row: &Measured) {
        self.count += 1;
        self.error_count += u64::from(row.error);
        let input = row.input_tokens.unwrap_or(0);
        let output = row.output_tokens.unwrap_or(0);
        self.input_tokens += input;
        self.output_tokens += output;
        self.total_tokens += row.total_tokens.unwrap_or(input + output);
        self.cost_usd += row.cost_usd.unwrap_or(0.0);
        self.latency_sum_ms += row.duration_ms;
        self.latency.add(row.duration_ms);
        if let Some(ttft) = row.ttft_ms {
            self.ttft.add(ttft);
        }
        self.first_start_time = earlier(self.first_start_time, Some(row.start_time));
        self.last_end_time = later(self.last_end_time, Some(row.end_time));
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

/// The start of the hour `time` (ns) lies in.
fn hour_of(time: i64) -> i64 {
    time.div_euclid(HOUR_NS) * HOUR_NS
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
            hour: hour_of(span.start_time),
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
}

/// The columns the rollup of users groups by, besides the hour.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UserKey {
    pub hour: i64,
    pub user_id: Option<String>,
    pub status: SpanStatus,
    pub kind: SpanKind,
}

impl UserKey {
    fn of(span: &Span) -> UserKey {
        UserKey {
            hour: hour_of(span.start_time),
            user_id: span.user_id.clone(),
            status: span.status,
            kind: span.kind,
        }
    }
}

/// The columns the rollup of one metadata key groups by, besides the hour (the key itself
/// is the view's).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ValueKey {
    pub hour: i64,
    /// `None` for the rows without the key.
    pub value: Option<String>,
    pub status: SpanStatus,
    pub kind: SpanKind,
}

impl ValueKey {
    fn of(span: &Span, value: Option<&String>) -> ValueKey {
        ValueKey {
            hour: hour_of(span.start_time),
            value: value.cloned(),
            status: span.status,
            kind: span.kind,
        }
    }
}

/// A rollup group's key: its hour, and a span holding exactly the key's columns.
trait RollupKey {
    fn hour(&self) -> i64;
    /// Sets `span`'s key columns to the key's (every other field stays as it is), so the
    /// reference filter and dimension code decide about a group as they would about each
    /// of its rows. One span serves a whole view: its strings keep their allocations.
    fn fill(&self, span: &mut Span);
}

impl RollupKey for &GroupKey {
    fn hour(&self) -> i64 {
        self.hour
    }

    fn fill(&self, span: &mut Span) {
        span.start_time = self.hour;
        span.model.clone_from(&self.model);
        span.request_model.clone_from(&self.request_model);
        span.provider.clone_from(&self.provider);
        span.routing_alias.clone_from(&self.routing_alias);
        span.status = self.status;
        span.kind = self.kind;
        span.service_name.clone_from(&self.service_name);
        span.source = self.source;
    }
}

impl RollupKey for &UserKey {
    fn hour(&self) -> i64 {
        self.hour
    }

    fn fill(&self, span: &mut Span) {
        span.start_time = self.hour;
        span.user_id.clone_from(&self.user_id);
        span.status = self.status;
        span.kind = self.kind;
    }
}

/// A group of a metadata key's view, with the key it is of.
impl RollupKey for (&str, &ValueKey) {
    fn hour(&self) -> i64 {
        self.1.hour
    }

    fn fill(&self, span: &mut Span) {
        let (key, group) = *self;
        span.start_time = group.hour;
        span.metadata.clear();
        if let Some(value) = &group.value {
            span.metadata.insert(key.to_string(), value.clone());
        }
        span.status = group.status;
        span.kind = group.kind;
    }
}

/// Which groups of a rollup answer an aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollupView {
    /// `Rollup::groups`: model, provider, status, kind and the other low-cardinality columns.
    Calls,
    /// `Rollup::users`: user, status, kind.
    Users,
    /// `Rollup::metadata`'s groups of this key: its value, status, kind.
    Metadata(String),
}

/// The view of a rollup an aggregate reads, and the window of whole hours it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollupUse {
    pub view: RollupView,
    /// `[start, end)`.
    pub window: (i64, i64),
}

/// A view is kept only when it has at most this share of the segment's rows as groups:
/// one group a row would cost more than the rows it stands for.
const VIEW_MAX_SHARE: usize = 4;
/// At most this many metadata keys get a view per segment (those most rows hold): a
/// dashboard breaks down by a handful of keys; the rest are read from rows.
const METADATA_MAX_KEYS: usize = 16;

/// The views of a segment's metadata keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetadataRollup {
    /// Per key, the segment's rows grouped by the key's value (rows without it included).
    pub keys: BTreeMap<String, Vec<(ValueKey, Measures)>>,
    /// The keys some row holds that have no view (too many values, or too many keys): an
    /// aggregate over them reads rows. A key in neither map is held by no row.
    pub unrolled: BTreeSet<String>,
}

impl MetadataRollup {
    fn of(spans: &[&Span]) -> MetadataRollup {
        let rows = spans.len();
        let too_many = |groups: usize| groups * VIEW_MAX_SHARE > rows;
        let mut keys: BTreeMap<String, BTreeMap<ValueKey, Measures>> = BTreeMap::new();
        let mut held: BTreeMap<&str, usize> = BTreeMap::new();
        let mut unrolled = BTreeSet::new();
        for span in spans {
            for (key, value) in &span.metadata {
                *held.entry(key).or_default() += 1;
                if unrolled.contains(key) {
                    continue;
                }
                // the key's String is cloned once a segment, not once a row
                let groups = match keys.get_mut(key) {
                    Some(groups) => groups,
                    None => keys.entry(key.clone()).or_default(),
                };
                groups
                    .entry(ValueKey::of(span, Some(value)))
                    .or_default()
                    .add(span);
                // a key of (nearly) unique values stops growing a group per row
                if too_many(groups.len()) {
                    keys.remove(key);
                    unrolled.insert(key.clone());
                }
            }
        }
        let mut by_rows: Vec<(&str, usize)> = held
            .into_iter()
            .filter(|(key, _)| keys.contains_key(*key))
            .collect();
        by_rows.sort_by_key(|(_, rows)| std::cmp::Reverse(*rows));
        for (key, _) in by_rows.iter().skip(METADATA_MAX_KEYS) {
            keys.remove(*key);
            unrolled.insert(key.to_string());
        }
        for (key, groups) in &mut keys {
            for span in spans.iter().filter(|span| !span.metadata.contains_key(key)) {
                groups
                    .entry(ValueKey::of(span, None))
                    .or_default()
                    .add(span);
            }
        }
        let (kept, crowded): (BTreeMap<_, _>, BTreeMap<_, _>) = keys
            .into_iter()
            .partition(|(_, groups)| !too_many(groups.len()));
        unrolled.extend(crowded.into_keys());
        MetadataRollup {
            keys: kept
                .into_iter()
                .map(|(key, groups)| (key, groups.into_iter().collect()))
                .collect(),
            unrolled,
        }
    }
}

/// The rollup of one segment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rollup {
    pub groups: Vec<(GroupKey, Measures)>,
    /// `None` when the segment's users rarely repeat within an hour (or the rollup was
    /// written before users were rolled up): aggregates by user then read its rows.
    #[serde(default)]
    pub users: Option<Vec<(UserKey, Measures)>>,
    /// `None` in rollups written before metadata was rolled up.
    #[serde(default)]
    pub metadata: Option<MetadataRollup>,
}

impl Rollup {
    pub fn of<'a>(spans: impl IntoIterator<Item = &'a Span>) -> Rollup {
        let spans: Vec<&Span> = spans.into_iter().collect();
        let mut groups: BTreeMap<GroupKey, Measures> = BTreeMap::new();
        let mut users: BTreeMap<UserKey, Measures> = BTreeMap::new();
        for span in &spans {
            groups.entry(GroupKey::of(span)).or_default().add(span);
            users.entry(UserKey::of(span)).or_default().add(span);
        }
        Rollup {
            groups: groups.into_iter().collect(),
            users: (users.len() * VIEW_MAX_SHARE <= spans.len())
                .then(|| users.into_iter().collect()),
            metadata: Some(MetadataRollup::of(&spans)),
        }
    }

    /// Whether this rollup can answer for `view`.
    pub fn has(&self, view: &RollupView) -> bool {
        match view {
            RollupView::Calls => true,
            RollupView::Users => self.users.is_some(),
            RollupView::Metadata(key) => self
                .metadata
                .as_ref()
                .is_some_and(|metadata| !metadata.unrolled.contains(key)),
        }
    }
}

/// The rollup view that can answer an aggregate, and the part of its window it can: the
/// whole hours inside it, as `[start, end)`; `None` when the query needs a column no view
/// keeps, buckets that are not whole hours, or the window holds no whole hour.
pub fn rollup_use(query: &AggregateQuery) -> Option<RollupUse> {
    let filter = &query.filter;
    let common = SpanFilter {
        project: filter.project.clone(),
        since: filter.since,
        until: filter.until,
        status: filter.status,
        kinds: filter.kinds.clone(),
        ..SpanFilter::default()
    };
    let calls_filter = SpanFilter {
        model: filter.model.clone(),
        provider: filter.provider.clone(),
        routing_alias: filter.routing_alias.clone(),
        service_name: filter.service_name.clone(),
        source: filter.source,
        ..common.clone()
    };
    let users_filter = SpanFilter {
        user_id: filter.user_id.clone(),
        ..common.clone()
    };
    let mut metadata_keys: Vec<&str> = filter
        .metadata
        .iter()
        .map(|(key, _)| key.as_str())
        .chain(
            query
                .group_by
                .iter()
                .filter_map(|dimension| match dimension {
                    Dimension::Metadata(key) => Some(key.as_str()),
                    _ => None,
                }),
        )
        .collect();
    metadata_keys.sort_unstable();
    metadata_keys.dedup();
    let metadata_filter = SpanFilter {
        metadata: filter.metadata.clone(),
        ..common
    };
    let grouped_by = |kept: fn(&Dimension) -> bool| query.group_by.iter().all(kept);
    let view = if *filter == calls_filter
        && grouped_by(|d| {
            !matches!(
                d,
                Dimension::User | Dimension::Session | Dimension::Metadata(_)
            )
        }) {
        RollupView::Calls
    } else if *filter == users_filter
        && grouped_by(|d| matches!(d, Dimension::User | Dimension::Status | Dimension::Kind))
    {
        RollupView::Users
    } else if let [key] = metadata_keys[..]
        && *filter == metadata_filter
        && grouped_by(|d| {
            matches!(
                d,
                Dimension::Metadata(_) | Dimension::Status | Dimension::Kind
            )
        })
    {
        RollupView::Metadata(key.to_string())
    } else {
        return None;
    };
    let whole_hours = query
        .bucket_seconds
        .is_none_or(|seconds| seconds.max(1) % 3_600 == 0);
    if !whole_hours {
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
        Some(until) => hour_of(until),
    };
    (start < end).then_some(RollupUse {
        view,
        window: (start, end),
    })
}

/// A stored group as the pair `Aggregation::add_groups` takes.
fn pairs<K>((key, measures): &(K, Measures)) -> (&K, &Measures) {
    (key, measures)
}

/// Aggregate groups being filled from rows and rollups alike.
pub struct Aggregation<'a> {
    query: &'a AggregateQuery,
    bucket_ns: Option<i64>,
    // hashed, not ordered: a row scan looks a group up per row; `finish` sorts once
    groups: foldhash::HashMap<BucketGroup, Measures>,
}

impl<'a> Aggregation<'a> {
    pub fn new(query: &'a AggregateQuery) -> Aggregation<'a> {
        Aggregation {
            query,
            bucket_ns: bucket_width(query),
            groups: foldhash::HashMap::default(),
        }
    }

    fn entry(&mut self, span: &Span) -> &mut Measures {
        let bucket = bucket_start(self.bucket_ns, span.start_time);
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

    /// Adds the groups of `rollup`'s view whose hour lies in the window and that match the
    /// filter (nothing when the rollup lacks that view: `Rollup::has` says).
    pub fn add_rollup(&mut self, rollup: &Rollup, used: &RollupUse) {
        match &used.view {
            RollupView::Calls => self.add_groups(rollup.groups.iter().map(pairs), used.window),
            RollupView::Users => {
                if let Some(users) = &rollup.users {
                    self.add_groups(users.iter().map(pairs), used.window);
                }
            }
            RollupView::Metadata(key) => {
                let Some(metadata) = &rollup.metadata else {
                    return;
                };
                match metadata.keys.get(key) {
                    Some(groups) => self.add_groups(
                        groups
                            .iter()
                            .map(|(group, measures)| ((key.as_str(), group), measures)),
                        used.window,
                    ),
                    // no row of the segment holds the key: its calls' groups are its
                    // rows without it
                    None if !metadata.unrolled.contains(key) => {
                        self.add_groups(rollup.groups.iter().map(pairs), used.window)
                    }
                    None => {}
                }
            }
        }
    }

    fn add_groups<'g, K: RollupKey>(
        &mut self,
        groups: impl Iterator<Item = (K, &'g Measures)>,
        window: (i64, i64),
    ) {
        let mut span = Span {
            project: self.query.filter.project.clone(),
            ..Span::default()
        };
        // the group a rollup group lands in, rebuilt in place for each (most land in an
        // existing one: a day's 24 hours, a model's many services)
        let mut key: BucketGroup = (None, Vec::new());
        for (rolled_up, measures) in groups {
            if rolled_up.hour() < window.0 || rolled_up.hour() >= window.1 {
                continue;
            }
            rolled_up.fill(&mut span);
            if !self.query.filter.matches(&span) {
                continue;
            }
            key.0 = bucket_start(self.bucket_ns, span.start_time);
            key.1.resize(self.query.group_by.len(), None);
            for (value, dimension) in key.1.iter_mut().zip(&self.query.group_by) {
                match (dimension.value_in(&span), value) {
                    (Some(text), Some(held)) => {
                        held.clear();
                        held.push_str(text);
                    }
                    (text, value) => *value = text.map(str::to_string),
                }
            }
            match self.groups.get_mut(&key) {
                Some(into) => into.merge(measures),
                None => {
                    self.groups.insert(key.clone(), measures.clone());
                }
            }
        }
    }

    /// Adds what another aggregation of the same query counted.
    pub fn merge(&mut self, other: Aggregation<'_>) {
        for (key, measures) in other.groups {
            self.merge_group(key, measures);
        }
    }

    /// This aggregation's groups summed over its buckets, as an aggregation of `query`
    /// (the same filter and groups, no buckets).
    pub fn without_buckets<'q>(&self, query: &'q AggregateQuery) -> Aggregation<'q> {
        let mut summed = Aggregation::new(query);
        for ((_, values), measures) in &self.groups {
            summed.merge_group((None, values.clone()), measures.clone());
        }
        summed
    }

    fn merge_group(&mut self, key: BucketGroup, measures: Measures) {
        match self.groups.entry(key) {
            std::collections::hash_map::Entry::Occupied(mut entry) => {
                entry.get_mut().merge(&measures)
            }
            std::collections::hash_map::Entry::Vacant(entry) => {
                entry.insert(measures);
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

/// The bucket width (ns) of `query`, `None` for one bucket over the whole window.
fn bucket_width(query: &AggregateQuery) -> Option<i64> {
    query
        .bucket_seconds
        .map(|seconds| seconds.max(1).saturating_mul(1_000_000_000))
}

/// A dimension's value in `row`: its column's, else its fallback column's.
fn dimension_value<'s>(
    (column, fallback): &'s (TextColumn<'_>, Option<TextColumn<'_>>),
    row: usize,
) -> Option<&'s str> {
    column.value(row).or_else(|| fallback.as_ref()?.value(row))
}

/// The start of the bucket holding `start_time`.
fn bucket_start(width: Option<i64>, start_time: i64) -> Option<i64> {
    width.map(|width| start_time.div_euclid(width) * width)
}

/// The fields of one row that measures count.
struct Measured {
    error: bool,
    input_tokens: Option<i64>,
    output_tokens: Option<i64>,
    total_tokens: Option<i64>,
    cost_usd: Option<f64>,
    duration_ms: f64,
    ttft_ms: Option<f64>,
    start_time: i64,
    end_time: i64,
}

/// An aggregate group's key: bucket start and one value per dimension.
type BucketGroup = (Option<i64>, Vec<Option<String>>);

/// An aggregation fed record batches of plain columns instead of spans, for scans whose
/// rows need no check of their own (`engine::collect` says when). A row's group is found
/// by a key encoded into one reused buffer, so a row allocates nothing; a new group is
/// copied out once.
pub struct ColumnAggregation {
    bucket_ns: Option<i64>,
    group_by: Vec<Dimension>,
    index: foldhash::HashMap<Box<[u8]>, usize>,
    groups: Vec<(BucketGroup, Measures)>,
    key: Vec<u8>,
}

/// The conditions a column scan checks itself — a time window, kinds and a status, what
/// dashboards filter on — for filters with no others.
pub struct ColumnFilter {
    window: (i64, i64),
    kinds: Vec<SpanKind>,
    status: Option<SpanStatus>,
}

impl ColumnFilter {
    pub const COLUMNS: [&str; 3] = ["start_time", "kind", "status"];

    /// `None` when `filter` has conditions beyond these.
    pub fn of(filter: &SpanFilter) -> Option<ColumnFilter> {
        let plain = SpanFilter {
            project: filter.project.clone(),
            since: filter.since,
            until: filter.until,
            kinds: filter.kinds.clone(),
            status: filter.status,
            ..SpanFilter::default()
        };
        (plain == *filter).then(|| ColumnFilter {
            window: filter.time_window(),
            kinds: filter.kinds.clone(),
            status: filter.status,
        })
    }

    /// Which rows of `batch` (holding `COLUMNS`) pass, as `SpanFilter::matches` would say.
    pub fn keep(&self, batch: &RecordBatch) -> Result<Vec<bool>, String> {
        let columns = Columns::new(batch);
        let start = columns.time_column("start_time")?;
        let kind = columns.text_column("kind")?;
        let status = columns.text_column("status")?;
        let mut keep = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            let start_time = start.required(row)?;
            let mut passes = start_time >= self.window.0 && start_time < self.window.1;
            if passes && !self.kinds.is_empty() {
                let text = kind.required_str(row)?;
                let parsed = SpanKind::parse(text).ok_or_else(|| format!("unknown kind {text}"))?;
                passes = self.kinds.contains(&parsed);
            }
            if let (true, Some(wanted)) = (passes, self.status) {
                let text = status.required_str(row)?;
                passes = SpanStatus::parse(text) == Some(wanted);
            }
            keep.push(passes);
        }
        Ok(keep)
    }
}

/// The columns every `ColumnAggregation` reads.
const MEASURED_COLUMNS: [&str; 9] = [
    "start_time",
    "end_time",
    "duration_ms",
    "time_to_first_token_ms",
    "status",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "total_cost_usd",
];

impl ColumnAggregation {
    /// The columns `query`'s measures and groups read; `None` when a group is not a plain
    /// column (a metadata key).
    pub fn columns(query: &AggregateQuery) -> Option<Vec<&'static str>> {
        let mut columns = MEASURED_COLUMNS.to_vec();
        for dimension in &query.group_by {
            columns.extend_from_slice(match dimension {
                Dimension::Model => &["model", "request_model"],
                Dimension::Provider => &["provider"],
                Dimension::RoutingAlias => &["routing_alias"],
                Dimension::Status => &[],
                Dimension::Kind => &["kind"],
                Dimension::User => &["user_id"],
                Dimension::Session => &["session_id"],
                Dimension::Service => &["service_name"],
                Dimension::Source => &["source"],
                Dimension::Metadata(_) => return None,
            });
        }
        Some(columns)
    }

    pub fn new(query: &AggregateQuery) -> ColumnAggregation {
        ColumnAggregation {
            bucket_ns: bucket_width(query),
            group_by: query.group_by.clone(),
            index: foldhash::HashMap::default(),
            groups: Vec::new(),
            key: Vec::new(),
        }
    }

    /// Adds the rows of `batch` (holding `columns`) that `keep` says pass the filter.
    pub fn add_batch(&mut self, batch: &RecordBatch, keep: &[bool]) -> Result<(), String> {
        let columns = Columns::new(batch);
        let start = columns.time_column("start_time")?;
        let end = columns.time_column("end_time")?;
        let duration = columns.float_column("duration_ms")?;
        let ttft = columns.float_column("time_to_first_token_ms")?;
        let status = columns.text_column("status")?;
        let input = columns.int_column("input_tokens")?;
        let output = columns.int_column("output_tokens")?;
        let total = columns.int_column("total_tokens")?;
        let cost = columns.float_column("total_cost_usd")?;
        let text = |name| columns.text_column(name);
        // per dimension: the column, and the fallback column (a model's requested model)
        let mut sources = Vec::with_capacity(self.group_by.len());
        for dimension in &self.group_by {
            sources.push(match dimension {
                Dimension::Model => (text("model")?, Some(text("request_model")?)),
                Dimension::Provider => (text("provider")?, None),
                Dimension::RoutingAlias => (text("routing_alias")?, None),
                Dimension::Status => (text("status")?, None),
                Dimension::Kind => (text("kind")?, None),
                Dimension::User => (text("user_id")?, None),
                Dimension::Session => (text("session_id")?, None),
                Dimension::Service => (text("service_name")?, None),
                Dimension::Source => (text("source")?, None),
                Dimension::Metadata(key) => {
                    return Err(format!("metadata key {key} is not a column"));
                }
            });
        }
        for (row, _) in keep.iter().enumerate().filter(|(_, keep)| **keep) {
            let start_time = start.required(row)?;
            let status_text = status.required_str(row)?;
            let parsed = SpanStatus::parse(status_text)
                .ok_or_else(|| format!("unknown status {status_text}"))?;
            let bucket = bucket_start(self.bucket_ns, start_time);
            self.key.clear();
            self.key.extend(bucket.unwrap_or(i64::MIN).to_le_bytes());
            self.key.push(u8::from(bucket.is_some()));
            for source in &sources {
                match dimension_value(source, row) {
                    Some(value) => {
                        self.key.push(1);
                        self.key.extend((value.len() as u64).to_le_bytes());
                        self.key.extend(value.as_bytes());
                    }
                    None => self.key.push(0),
                }
            }
            let at = match self.index.get(self.key.as_slice()) {
                Some(&at) => at,
                None => {
                    let values = sources
                        .iter()
                        .map(|source| dimension_value(source, row).map(str::to_string))
                        .collect();
                    self.groups.push(((bucket, values), Measures::default()));
                    self.index
                        .insert(self.key.clone().into_boxed_slice(), self.groups.len() - 1);
                    self.groups.len() - 1
                }
            };
            self.groups[at].1.add_row(&Measured {
                error: parsed.is_error(),
                input_tokens: input.get(row),
                output_tokens: output.get(row),
                total_tokens: total.get(row),
                cost_usd: cost.get(row),
                duration_ms: duration.get(row).unwrap_or(0.0),
                ttft_ms: ttft.get(row),
                start_time,
                end_time: end.required(row)?,
            });
        }
        Ok(())
    }

    /// Hands what was counted to `aggregation` (of the same query).
    pub fn merge_into(self, aggregation: &mut Aggregation<'_>) {
        for (key, measures) in self.groups {
            aggregation.merge_group(key, measures);
        }
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
        // Sparse, dense and the switches between them count exactly what a plain map does,
        // merge like it, and survive the stored form.
        #[test]
        fn sketch_buckets_count_like_a_map(
            adds in prop::collection::vec(
                (prop_oneof![-30i32..30, 0i32..200, -3000i32..3000, Just(i32::MAX)], 1u64..4),
                0..400,
            ),
        ) {
            let mut sketch = Sketch::default();
            let mut halves = (Sketch::default(), Sketch::default());
            let mut model = BTreeMap::new();
            for (i, &(bucket, count)) in adds.iter().enumerate() {
                sketch.add_count(bucket, count);
                if i % 2 == 0 { halves.0.add_count(bucket, count) } else { halves.1.add_count(bucket, count) }
                *model.entry(bucket).or_insert(0u64) += count;
            }
            let expected: Vec<(i32, u64)> = model.into_iter().collect();
            prop_assert_eq!(sketch.pairs().collect::<Vec<_>>(), expected.clone());
            halves.0.merge(&halves.1);
            prop_assert_eq!(halves.0.pairs().collect::<Vec<_>>(), expected);
            let stored = serde_json::to_string(&sketch).unwrap();
            prop_assert_eq!(serde_json::from_str::<Sketch>(&stored).unwrap(), sketch);
        }

        // Two dense runs at different offsets merge element by element.
        #[test]
        fn dense_sketches_merge_like_a_map(
            base in -100i32..100,
            shift in -1500i32..1500,
            left in prop::collection::vec(0i32..400, 60..300),
            right in prop::collection::vec(0i32..400, 60..300),
        ) {
            let mut model = BTreeMap::new();
            let mut fill = |values: &[i32], offset: i32| {
                let mut sketch = Sketch::default();
                for &value in values {
                    sketch.add_count(base + offset + value, 1);
                    *model.entry(base + offset + value).or_insert(0u64) += 1;
                }
                sketch
            };
            let mut merged = fill(&left, 0);
            let other = fill(&right, shift);
            merged.merge(&other);
            prop_assert_eq!(merged.pairs().collect::<Vec<_>>(), model.into_iter().collect::<Vec<_>>());
        }

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
        let window = |query: &AggregateQuery| rollup_use(query).map(|used| used.window);
        let view = |query: &AggregateQuery| rollup_use(query).map(|used| used.view);
        assert_eq!(window(&query), Some((i64::MIN, i64::MAX)));
        assert_eq!(view(&query), Some(RollupView::Calls));
        query.filter.since = Some(HOUR_NS + 1);
        query.filter.until = Some(5 * HOUR_NS - 1);
        assert_eq!(window(&query), Some((2 * HOUR_NS, 4 * HOUR_NS)));
        query.filter.since = Some(HOUR_NS);
        query.filter.until = Some(HOUR_NS + 5);
        assert_eq!(window(&query), None, "no whole hour inside");
        query.filter.until = Some(2 * HOUR_NS);
        assert_eq!(window(&query), Some((HOUR_NS, 2 * HOUR_NS)));
        query.bucket_seconds = Some(60);
        assert_eq!(window(&query), None, "minute buckets");
        query.bucket_seconds = None;
        query.group_by = vec![Dimension::User, Dimension::Status];
        query.filter.kinds = vec![SpanKind::Llm];
        assert_eq!(view(&query), Some(RollupView::Users));
        query.filter.model = Some("m".into());
        assert_eq!(view(&query), None, "users are not rolled up by model");
        query.filter.model = None;
        query.group_by = vec![Dimension::Model];
        query.filter.user_id = Some("u".into());
        assert_eq!(view(&query), None, "models are not rolled up by user");
        query.group_by = vec![];
        assert_eq!(view(&query), Some(RollupView::Users));
        query.filter.user_id = None;
        query.group_by = vec![Dimension::Session];
        assert_eq!(view(&query), None, "sessions are not rolled up");
        query.group_by = vec![];
        query.filter.metadata = vec![("k".into(), "v".into())];
        assert_eq!(view(&query), Some(RollupView::Metadata("k".into())));
        query.group_by = vec![Dimension::Metadata("k".into()), Dimension::Status];
        assert_eq!(view(&query), Some(RollupView::Metadata("k".into())));
        query.group_by = vec![Dimension::Metadata("j".into())];
        assert_eq!(view(&query), None, "one key a view");
        query.filter.metadata.clear();
        assert_eq!(view(&query), Some(RollupView::Metadata("j".into())));
        query.group_by.push(Dimension::Model);
        assert_eq!(view(&query), None, "metadata is not rolled up by model");
        query.group_by = vec![Dimension::Metadata("j".into())];
        query.filter.user_id = Some("u".into());
        assert_eq!(view(&query), None, "metadata is not rolled up by user");
    }

    #[test]
    fn users_are_rolled_up_only_where_they_repeat() {
        let span = |i: i64, user: i64| Span {
            start_time: i * 1_000_000_000,
            user_id: Some(format!("u{user}")),
            ..Span::default()
        };
        let repeating: Vec<Span> = (0..100).map(|i| span(i, i % 5)).collect();
        let rollup = Rollup::of(&repeating);
        assert!(rollup.has(&RollupView::Users));
        assert_eq!(rollup.users.as_ref().map(Vec::len), Some(5));
        let unique: Vec<Span> = (0..100).map(|i| span(i, i)).collect();
        assert!(!Rollup::of(&unique).has(&RollupView::Users));
        // a rollup written before users were rolled up reads as one without them
        let old: Rollup = serde_json::from_str(r#"{"groups": []}"#).unwrap();
        assert!(!old.has(&RollupView::Users) && old.has(&RollupView::Calls));
        assert!(!old.has(&RollupView::Metadata("k".into())));
    }

    #[test]
    fn metadata_keys_are_rolled_up_only_where_their_values_repeat() {
        let keyed = |key: &str| RollupView::Metadata(key.into());
        let spans: Vec<Span> = (0..100i64)
            .map(|i| Span {
                start_time: i * 1_000_000_000,
                metadata: [
                    ("tier", format!("t{}", i % 3)),
                    ("request", format!("r{i}")),
                    ("rare", "x".to_string()),
                ]
                .into_iter()
                .filter(|(key, _)| *key != "rare" || i == 7)
                .map(|(key, value)| (key.to_string(), value))
                .collect(),
                ..Span::default()
            })
            .collect();
        let rollup = Rollup::of(&spans);
        let metadata = rollup.metadata.as_ref().unwrap();
        assert!(rollup.has(&keyed("tier")));
        assert_eq!(metadata.keys["tier"].len(), 3);
        assert!(!rollup.has(&keyed("request")), "one value a row");
        // a key one row holds: that row's value and every other row's lack of it
        assert_eq!(metadata.keys["rare"].len(), 2);
        assert!(
            rollup.has(&keyed("absent")),
            "no row holds it: answered by the calls"
        );
        assert!(!metadata.keys.contains_key("absent"));
        // past the cap, the keys fewest rows hold have no view
        let crowded: Vec<Span> = (0..100i64)
            .map(|i| Span {
                start_time: i * 1_000_000_000,
                metadata: (0..METADATA_MAX_KEYS as i64 + 2)
                    .filter(|key| *key < 4 || i % 2 == 0)
                    .map(|key| (format!("k{key}"), "v".to_string()))
                    .chain((i % 3 == 0).then(|| ("k10".to_string(), "w".to_string())))
                    .collect(),
                ..Span::default()
            })
            .collect();
        let metadata = Rollup::of(&crowded).metadata.unwrap();
        assert_eq!(metadata.keys.len(), METADATA_MAX_KEYS);
        assert_eq!(metadata.unrolled.len(), 2);
        assert!(metadata.keys.contains_key("k0") && metadata.keys.contains_key("k10"));
    }

    #[test]
    fn rollups_answer_like_the_reference() {
        // 2,000 calls over 5 hours: users repeat within each hour
        let spans: Vec<Span> = (0..2_000i64)
            .map(|i| Span {
                project: "p".into(),
                trace_id: format!("{i:032x}"),
                span_id: format!("{i:016x}"),
                start_time: i * 9 * 1_000_000_000,
                duration_ms: (i % 37) as f64 * 13.5,
                time_to_first_token_ms: (i % 3 == 0).then_some(i as f64),
                status: if i % 7 == 0 {
                    SpanStatus::Error
                } else {
                    SpanStatus::Ok
                },
                model: Some(format!("m{}", i % 4)),
                request_model: Some(format!("m{}", i % 2)),
                user_id: (i % 11 != 0).then(|| format!("u{}", i % 6)),
                kind: if i % 3 == 0 {
                    SpanKind::Tool
                } else {
                    SpanKind::Llm
                },
                provider: Some(["openai", "anthropic"][(i % 2) as usize].into()),
                input_tokens: Some(i),
                output_tokens: (i % 5 != 0).then_some(2 * i),
                total_cost_usd: Some(i as f64 / 1e4),
                metadata: [
                    ("tier", ["free", "pro"][(i % 2) as usize]),
                    ("feature", "chat"),
                ]
                .into_iter()
                .filter(|(key, _)| *key != "tier" || i % 13 != 0)
                .filter(|(key, _)| *key != "feature" || i % 4 == 0)
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
                ..Span::default()
            })
            .collect();
        let rollup = Rollup::of(&spans);
        let by_model = AggregateQuery {
            filter: SpanFilter {
                model: Some("m1".into()),
                ..SpanFilter::for_project("p")
            },
            bucket_seconds: Some(2 * 3_600),
            group_by: vec![Dimension::Model, Dimension::Status],
        };
        let by_user = AggregateQuery {
            filter: SpanFilter {
                status: Some(SpanStatus::Ok),
                ..SpanFilter::for_project("p")
            },
            bucket_seconds: Some(3 * 3_600),
            group_by: vec![Dimension::User, Dimension::Kind],
        };
        let one_user = AggregateQuery {
            filter: SpanFilter {
                user_id: Some("u3".into()),
                ..SpanFilter::for_project("p")
            },
            bucket_seconds: None,
            group_by: vec![],
        };
        let by_tier = AggregateQuery {
            filter: SpanFilter {
                kinds: vec![SpanKind::Llm],
                ..SpanFilter::for_project("p")
            },
            bucket_seconds: Some(3_600),
            group_by: vec![Dimension::Metadata("tier".into()), Dimension::Status],
        };
        let one_feature = AggregateQuery {
            filter: SpanFilter {
                metadata: vec![("feature".into(), "chat".into())],
                ..SpanFilter::for_project("p")
            },
            bucket_seconds: None,
            group_by: vec![Dimension::Kind],
        };
        // no row holds the key: one group without a value, from the calls' groups
        let by_absent_key = AggregateQuery {
            filter: SpanFilter::for_project("p"),
            bucket_seconds: Some(2 * 3_600),
            group_by: vec![Dimension::Metadata("absent".into())],
        };
        for query in [
            by_model,
            by_user,
            one_user,
            by_tier,
            one_feature,
            by_absent_key,
        ] {
            let used = rollup_use(&query).unwrap();
            assert!(rollup.has(&used.view));
            let mut aggregation = Aggregation::new(&query);
            aggregation.add_rollup(&rollup, &used);
            agrees_with_reference(aggregation.finish(), aggregate(&query, &spans));
        }
    }

    fn agrees_with_reference(got: Vec<AggregateRow>, expected: Vec<AggregateRow>) {
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
