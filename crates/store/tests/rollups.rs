//! Aggregates answered from segment rollups agree with the reference when rows are
//! rewritten or deleted after their segment was written: such a segment's rollup no longer
//! describes its live rows, and its rows must be aggregated instead.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use llmtrace_model::query::aggregate;
use llmtrace_model::{
    AggregateQuery, Deletion, Dimension, Span, SpanFilter, SpanKey, SpanKind, SpanStatus, Store,
};
use llmtrace_store::{Durability, EmbeddedStore, StoreConfig};

mod common;
use common::assert_aggregates_agree;

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
        user_id: Some(format!("u{}", n % 2)),
        input_tokens: Some(100 + version),
        total_cost_usd: Some(0.5),
        // a rewrite moves the row to another tier; every fifth row has none
        metadata: (n % 5 != 0)
            .then(|| ("tier".to_string(), format!("t{}", (n + version) % 2)))
            .into_iter()
            .collect(),
        ..Span::default()
    }
}

fn config(dir: &std::path::Path) -> StoreConfig {
    let mut config = StoreConfig::new(dir);
    config.durability = Durability::None;
    config.background = false;
    config.compact_min_segments = 2;
    config
}

fn open(dir: &std::path::Path) -> EmbeddedStore {
    EmbeddedStore::open(config(dir)).unwrap()
}

/// Counts per (day, model, status), per (day, user, status) and per (day, tier, status) —
/// one query for each view of the rollups — from the store and from the reference over
/// `live`.
fn assert_counts_agree(store: &EmbeddedStore, live: &BTreeMap<SpanKey, Span>, what: &str) {
    for group_by in [
        vec![Dimension::Model, Dimension::Status],
        vec![Dimension::User, Dimension::Status],
        vec![Dimension::Metadata("tier".into()), Dimension::Status],
    ] {
        let query = AggregateQuery {
            filter: SpanFilter::for_project("p"),
            bucket_seconds: Some(86_400),
            group_by,
        };
        let counts = |rows: Vec<llmtrace_model::AggregateRow>| {
            rows.into_iter()
                .map(|row| (row.bucket_start, row.group, row.count, row.input_tokens))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            counts(store.aggregate(&query).unwrap()),
            counts(aggregate(&query, live.values())),
            "{what}, {:?}",
            query.group_by
        );
    }
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

/// A breakdown the rollups cannot answer, over several segments read as separate tasks on
/// several threads: the tasks' aggregations merge to the reference — first with every row
/// plain (read as columns), then with rows replaced and deleted after the flush (those
/// segments read row by row) — and `aggregate_many` answers each query as `aggregate` does.
#[test]
fn scans_in_pieces_merge_to_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let rows: i64 = 80_000;
    let mut live = BTreeMap::new();
    let spans: Vec<Span> = (0..rows)
        .map(|n| {
            let mut span = span(n % 1000, 0);
            span.trace_id = format!("{:032x}", n + 1);
            span.start_time = BASE + n * 1_000_000_000;
            span.duration_ms = (n % 977) as f64 + 0.5;
            span.time_to_first_token_ms = (n % 3 == 0).then_some((n % 89) as f64);
            span.user_id = (n % 301 != 0).then(|| format!("u{}", n % 301));
            span.model = (n % 5 != 0).then(|| format!("m{}", n % 4));
            span.request_model = Some("requested".into());
            span.kind = if n % 2 == 0 {
                SpanKind::Llm
            } else {
                SpanKind::Tool
            };
            if n % 11 == 0 {
                span.status = SpanStatus::Error;
            }
            span
        })
        .collect();
    // a segment per flush, each a task of its own
    for chunk in spans.chunks(20_000) {
        store.append(chunk.to_vec()).unwrap();
        store.flush().unwrap();
    }
    assert!(store.stats().unwrap().segments >= 4);
    for span in spans {
        live.insert(span.key(), span);
    }
    let hour = 3_600_000_000_000;
    let llm = vec![SpanKind::Llm];
    let queries: Vec<AggregateQuery> = [
        (Some(3_600), vec![Dimension::User], None, vec![], None),
        // the totals of the one above: its groups summed, no read of its own
        (None, vec![Dimension::User], None, vec![], None),
        (
            None,
            vec![Dimension::User, Dimension::Status],
            None,
            vec![],
            None,
        ),
        (Some(86_400), vec![Dimension::Model], None, vec![], None),
        (
            Some(3_600),
            vec![Dimension::Session],
            Some(BASE + hour),
            vec![],
            None,
        ),
        // what dashboards filter on, answered from the columns too
        (
            Some(3_600),
            vec![Dimension::User],
            Some(BASE + 2 * hour),
            llm.clone(),
            None,
        ),
        (
            None,
            vec![Dimension::User],
            None,
            llm,
            Some(SpanStatus::Error),
        ),
    ]
    .into_iter()
    .map(
        |(bucket_seconds, group_by, since, kinds, status)| AggregateQuery {
            filter: SpanFilter {
                since,
                kinds,
                status,
                ..SpanFilter::for_project("p")
            },
            bucket_seconds,
            group_by,
        },
    )
    .collect();
    agree(&store, &queries, &live, "plain rows");
    // a rewrite in the memtable supersedes its segment row; a deletion hides another user
    let mut rewritten = live.values().nth(5).unwrap().clone();
    rewritten.user_id = Some("moved".into());
    rewritten.duration_ms = 99_999.0;
    store.append(vec![rewritten.clone()]).unwrap();
    live.insert(rewritten.key(), rewritten);
    agree(&store, &queries, &live, "a row replaced in the memtable");
    let deletion = Deletion {
        project: "p".into(),
        user_id: Some("u7".into()),
        ..Deletion::default()
    };
    store.delete(&deletion).unwrap();
    live.retain(|_, span| span.user_id.as_deref() != Some("u7"));
    agree(&store, &queries, &live, "a user deleted");
    assert!(
        store
            .aggregate(&queries[1])
            .unwrap()
            .iter()
            .any(|row| row.group[0].as_deref() == Some("moved")),
        "the rewrite counts under its new user"
    );
}

fn agree(
    store: &EmbeddedStore,
    queries: &[AggregateQuery],
    live: &BTreeMap<SpanKey, Span>,
    what: &str,
) {
    let many = store.aggregate_many(queries).unwrap();
    assert_eq!(many.len(), queries.len());
    for (query, answer) in queries.iter().zip(many) {
        let alone = store.aggregate(query).unwrap();
        assert_eq!(answer, alone, "{what}: {query:?}");
        let what = format!("{what}: {query:?}");
        assert_aggregates_agree(&answer, &aggregate(query, live.values()), &what);
    }
}

#[test]
fn background_compaction_merges_only_neighbouring_small_segments() {
    // Two small segments, a large one that rewrites their rows, then two more small ones,
    // all in one day's partition. Only neighbours are merged: the first two, whose merged
    // rows the large segment still rewrites (so their rollup must not count them), then the
    // last two. Merging all four small ones would mix rows older and newer than the large
    // segment's in one segment.
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut live = BTreeMap::new();
    append(&store, &mut live, (0..5).map(|n| span(n, 0)).collect());
    store.flush().unwrap();
    let small = store.stats().unwrap().segment_bytes;
    append(&store, &mut live, (5..10).map(|n| span(n, 0)).collect());
    store.flush().unwrap();
    let before = store.stats().unwrap().segment_bytes;
    append(&store, &mut live, (0..700).map(|n| span(n, 1)).collect());
    store.flush().unwrap();
    let large = store.stats().unwrap().segment_bytes - before;
    assert!(large > 4 * small, "segments of {small} and {large} bytes");
    append(&store, &mut live, (700..705).map(|n| span(n, 0)).collect());
    store.flush().unwrap();
    append(&store, &mut live, (705..710).map(|n| span(n, 0)).collect());
    store.flush().unwrap();
    drop(store);

    let mut config = config(dir.path());
    // the large segment is at least half of it, the small ones far less
    config.compact_max_bytes = large;
    let store = EmbeddedStore::open(config.clone()).unwrap();
    assert_eq!(
        store.compact(false).unwrap(),
        2,
        "the first two were merged"
    );
    assert_counts_agree(&store, &live, "after merging the first two");
    assert_eq!(store.compact(false).unwrap(), 2, "the last two were merged");
    assert_counts_agree(&store, &live, "after merging the last two");
    assert_eq!(
        store.compact(false).unwrap(),
        0,
        "no neighbours left to merge"
    );
    assert_eq!(store.stats().unwrap().segments, 3);
    drop(store);
    let store = EmbeddedStore::open(config).unwrap();
    assert_counts_agree(&store, &live, "after reopening");
}
