//! Aggregates answered from segment rollups agree with the reference when rows are
//! rewritten or deleted after their segment was written: such a segment's rollup no longer
//! describes its live rows, and its rows must be aggregated instead.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use llmtrace_model::query::aggregate;
use llmtrace_model::{
    AggregateQuery, Deletion, Dimension, Span, SpanFilter, SpanKey, SpanStatus, Store,
};
use llmtrace_store::{Durability, EmbeddedStore, StoreConfig};

const BASE: i64 = 1_795_000_000 * 1_000_000_000;
const HOUR: i64 = 3_600 * 1_000_000_000;

fn span(n: i64, version: i64) -> Span {
    Span {
        project: "p".into(),
        trace_id: format!("{:032x}", n + 1),
        span_id: format!("{:016x}", n + 1),
        start_time: BASE + n * 60_000_000_000,
        duration_ms: (n * 10 + version) as f64,
        status: if version > 0 {
            SpanStatus::Error
        } else {
            SpanStatus::Ok
        },
        model: Some(format!("m{}", n % 3)),
        input_tokens: Some(100 + version),
        total_cost_usd: Some(0.5),
        ..Span::default()
    }
}

fn open(dir: &std::path::Path) -> EmbeddedStore {
    let mut config = StoreConfig::new(dir);
    config.durability = Durability::None;
    config.background = false;
    config.compact_min_segments = 2;
    EmbeddedStore::open(config).unwrap()
}

/// Counts per (day, model, status) from the store and from the reference over `live`.
fn assert_counts_agree(store: &EmbeddedStore, live: &BTreeMap<SpanKey, Span>, what: &str) {
    let query = AggregateQuery {
        filter: SpanFilter::for_project("p"),
        bucket_seconds: Some(86_400),
        group_by: vec![Dimension::Model, Dimension::Status],
    };
    let counts = |rows: Vec<llmtrace_model::AggregateRow>| {
        rows.into_iter()
            .map(|row| (row.bucket_start, row.group, row.count, row.input_tokens))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        counts(store.aggregate(&query).unwrap()),
        counts(aggregate(&query, live.values())),
        "{what}"
    );
}

fn append(store: &EmbeddedStore, live: &mut BTreeMap<SpanKey, Span>, spans: Vec<Span>) {
    for span in &spans {
        live.insert(span.key(), span.clone());
    }
    store.append(spans).unwrap();
}

#[test]
fn a_compacted_segment_whose_rows_memory_already_replaced_is_not_answered_by_its_rollup() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut live = BTreeMap::new();
    append(&store, &mut live, (0..20).map(|n| span(n, 0)).collect());
    store.flush().unwrap();
    append(&store, &mut live, (20..40).map(|n| span(n, 0)).collect());
    store.flush().unwrap();
    // Newer versions wait in memory while the two segments are merged.
    append(&store, &mut live, (0..5).map(|n| span(n, 1)).collect());
    assert!(
        store.compact(false).unwrap() >= 2,
        "the partition was compacted"
    );
    assert_counts_agree(&store, &live, "after compaction, rewrites in memory");
    store.flush().unwrap();
    assert_counts_agree(&store, &live, "after the rewrites were flushed");
    drop(store);
    let store = open(dir.path());
    assert_counts_agree(&store, &live, "after reopening");
}

#[test]
fn deletions_and_rewrites_of_flushed_rows_are_seen_by_aggregates() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut live = BTreeMap::new();
    append(&store, &mut live, (0..120).map(|n| span(n, 0)).collect());
    store.flush().unwrap();
    assert_counts_agree(&store, &live, "rollups alone");
    append(&store, &mut live, vec![span(7, 2), span(70, 3)]);
    assert_counts_agree(&store, &live, "rewrites in memory");
    store.flush().unwrap();
    assert_counts_agree(&store, &live, "rewrites in a later segment");
    let deletion = Deletion {
        project: "p".into(),
        trace_id: Some(format!("{:032x}", 12)),
        ..Deletion::default()
    };
    live.retain(|_, span| !deletion.matches(span));
    assert_eq!(store.delete(&deletion).unwrap(), 1);
    assert_counts_agree(&store, &live, "a deletion not yet applied to segments");
    drop(store);
    let store = open(dir.path());
    assert_counts_agree(&store, &live, "after reopening");
    // A window with ragged edges: whole hours from rollups, the edges from rows.
    let query = AggregateQuery {
        filter: SpanFilter {
            since: Some(BASE + 17 * 60_000_000_000),
            until: Some(BASE + HOUR + 23 * 60_000_000_000),
            ..SpanFilter::for_project("p")
        },
        bucket_seconds: None,
        group_by: vec![],
    };
    let got = store.aggregate(&query).unwrap();
    let expected = aggregate(&query, live.values());
    assert_eq!(got[0].count, expected[0].count);
    assert_eq!(got[0].input_tokens, expected[0].input_tokens);
}
