//! Shared types and seams of llmtrace: the span record, the query model, the `Store`
//! trait every backend implements, and the error codes every interface maps to.

pub mod error;
pub mod json;
pub mod query;
pub mod score;
pub mod span;
pub mod sql;

pub use error::{Error, ErrorCode, Result};
pub use query::{
    AggregateQuery, AggregateRow, Cursor, Deletion, Dimension, Page, SessionTrace, SpanFilter,
    SpanQuery,
};
pub use score::{Score, ScoreQuery};
pub use span::{Span, SpanEvent, SpanKey, SpanKind, SpanSource, SpanStatus};
pub use sql::{SqlAnswer, SqlColumn, SqlEngine, SqlQuery};

/// Size and shape of what a store holds.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct StoreStats {
    /// Rows (span versions) in memory and in segments, before deletions are applied.
    pub rows: u64,
    pub memtable_rows: u64,
    pub segments: u64,
    pub segment_bytes: u64,
    pub wal_bytes: u64,
    pub quarantined: u64,
    /// Time appends have spent waiting for flushing to catch up (memory at its bound), in
    /// milliseconds since the store opened: ingest running at flushing's pace.
    pub append_wait_ms: u64,
}

/// The span store. Writes are durable when `append` returns; reads see every
/// acknowledged write. A later write of the same (project, trace_id, span_id) replaces
/// the earlier one.
pub trait Store: Send + Sync {
    /// Appends a batch; returns once it is durable per the configured durability.
    fn append(&self, spans: Vec<Span>) -> Result<()>;
    /// Appends the spans an iterator yields as one batch, like `append`. A store may
    /// prepare each span for writing as soon as it is yielded, while what built it is still
    /// in the CPU's cache: a caller that builds spans one by one (the gateway's recorder)
    /// builds them lazily and pays for its data once, not once per pass over the batch.
    fn append_iter(&self, spans: &mut dyn Iterator<Item = Span>) -> Result<()> {
        self.append(spans.collect())
    }
    /// One page of spans matching the query, newest first.
    fn search(&self, query: &SpanQuery) -> Result<Page>;
    /// Every span of one trace, oldest first.
    fn trace(&self, project: &str, trace_id: &str) -> Result<Vec<Span>>;
    /// Every trace of one session, in order.
    fn session(&self, project: &str, session_id: &str) -> Result<Vec<SessionTrace>>;
    /// Time buckets × dimensions with counts, error rate, token and cost sums, latency.
    fn aggregate(&self, query: &AggregateQuery) -> Result<Vec<AggregateRow>>;
    /// Several aggregates at once, one answer per query in order (a page showing series
    /// and totals of one selection). A store may answer the queries that share a filter
    /// from a single read.
    fn aggregate_many(&self, queries: &[AggregateQuery]) -> Result<Vec<Vec<AggregateRow>>> {
        queries.iter().map(|query| self.aggregate(query)).collect()
    }
    /// Deletes what matches, with the scores of the traces it touches; returns how many
    /// live spans it removed.
    fn delete(&self, deletion: &Deletion) -> Result<u64>;
    /// Writes scores; durable when it returns. The same `(project, id)` replaces.
    fn put_scores(&self, scores: Vec<Score>) -> Result<()>;
    /// Scores matching the query, newest first, at most `query.limit`.
    fn scores(&self, query: &ScoreQuery) -> Result<Vec<Score>>;
    /// Drops data older than each project's retention; returns rows dropped.
    fn retention_sweep(&self, now_ns: i64) -> Result<u64>;
    /// Moves what is in memory to durable columnar segments.
    fn flush(&self) -> Result<()>;
    fn stats(&self) -> Result<StoreStats>;
}

/// A stage every batch passes on its way into a store (pricing, the live tail): it gets the
/// batch and the store below it and decides what is appended. `Layered` puts one in front
/// of a store; every read passes straight through.
pub trait AppendLayer: Send + Sync {
    /// Passes the spans on to `below` (a layer that works span by span maps the iterator,
    /// so that the store below still gets each span as it is built).
    fn append_iter(&self, spans: &mut dyn Iterator<Item = Span>, below: &dyn Store) -> Result<()>;
    fn append(&self, spans: Vec<Span>, below: &dyn Store) -> Result<()> {
        self.append_iter(&mut spans.into_iter(), below)
    }
}

/// A store with an [`AppendLayer`] in front of its appends.
pub struct Layered<L> {
    pub inner: std::sync::Arc<dyn Store>,
    pub layer: L,
}

impl<L: AppendLayer> Store for Layered<L> {
    fn append(&self, spans: Vec<Span>) -> Result<()> {
        self.layer.append(spans, self.inner.as_ref())
    }
    fn append_iter(&self, spans: &mut dyn Iterator<Item = Span>) -> Result<()> {
        self.layer.append_iter(spans, self.inner.as_ref())
    }
    fn search(&self, query: &SpanQuery) -> Result<Page> {
        self.inner.search(query)
    }
    fn trace(&self, project: &str, trace_id: &str) -> Result<Vec<Span>> {
        self.inner.trace(project, trace_id)
    }
    fn session(&self, project: &str, session_id: &str) -> Result<Vec<SessionTrace>> {
        self.inner.session(project, session_id)
    }
    fn aggregate(&self, query: &AggregateQuery) -> Result<Vec<AggregateRow>> {
        self.inner.aggregate(query)
    }
    fn aggregate_many(&self, queries: &[AggregateQuery]) -> Result<Vec<Vec<AggregateRow>>> {
        self.inner.aggregate_many(queries)
    }
    fn delete(&self, deletion: &Deletion) -> Result<u64> {
        self.inner.delete(deletion)
    }
    fn put_scores(&self, scores: Vec<Score>) -> Result<()> {
        self.inner.put_scores(scores)
    }
    fn scores(&self, query: &ScoreQuery) -> Result<Vec<Score>> {
        self.inner.scores(query)
    }
    fn retention_sweep(&self, now_ns: i64) -> Result<u64> {
        self.inner.retention_sweep(now_ns)
    }
    fn flush(&self) -> Result<()> {
        self.inner.flush()
    }
    fn stats(&self) -> Result<StoreStats> {
        self.inner.stats()
    }
}
