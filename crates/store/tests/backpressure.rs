//! Appends wait for flushing instead of growing the memtables without bound, and give up
//! with "unavailable" (a 503 upstream) when flushing cannot make room; the store counts
//! the time they waited.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use llmtrace_model::{ErrorCode, Span, Store};
use llmtrace_store::{Durability, EmbeddedStore, StoreConfig};

mod common;

fn spans(from: u64, count: u64) -> Vec<Span> {
    (from..from + count)
        .map(|n| Span {
            project: "p".into(),
            trace_id: format!("{:032x}", n + 1),
            span_id: format!("{:016x}", n + 1),
            start_time: 1_795_000_000_000_000_000 + n as i64,
            input_text: "x".repeat(4096),
            ..Span::default()
        })
        .collect()
}

/// Appends 1,000 rows in ten batches back to back, flushes, and answers the stats.
fn append_ten_batches_of_100_and_flush(store: &EmbeddedStore) -> llmtrace_model::StoreStats {
    for batch in 0..10 {
        store.append(spans(batch * 100, 100)).unwrap();
    }
    store.flush().unwrap();
    let stats = store.stats().unwrap();
    assert_eq!(stats.rows, 1000);
    stats
}

fn config(dir: &std::path::Path) -> StoreConfig {
    let mut config = StoreConfig::new(dir);
    config.durability = Durability::None;
    config.max_memtable_bytes = 1 << 20;
    config.max_append_wait = Duration::from_millis(300);
    config
}

#[test]
fn appends_past_the_limit_fail_as_unavailable_when_nothing_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.flush_rows = usize::MAX;
    config.flush_bytes = usize::MAX;
    config.flush_interval = Duration::from_secs(3600);
    let store = EmbeddedStore::open(config).unwrap();
    store.append(spans(0, 400)).unwrap();
    assert_eq!(
        store.stats().unwrap().append_wait_ms,
        0,
        "room for the first"
    );
    let started = Instant::now();
    let err = store.append(spans(400, 1)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unavailable, "{err}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    let stats = store.stats().unwrap();
    assert_eq!(stats.rows, 400, "the refused batch was not written");
    assert!(
        (300..2000).contains(&stats.append_wait_ms),
        "the wait is counted: {} ms",
        stats.append_wait_ms
    );
    // a bad batch is refused for what it is, at once, full store or not
    let mut bad = spans(401, 2);
    bad[1].trace_id.clear();
    let started = Instant::now();
    let err = store.append(bad).unwrap_err();
    assert_eq!(err.code(), ErrorCode::BadRequest, "{err}");
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "it did not wait for room"
    );
}

#[test]
fn appends_wait_for_flushing_and_then_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.flush_rows = 100;
    config.max_append_wait = Duration::from_secs(30);
    let store = EmbeddedStore::open(config).unwrap();
    let stats = append_ten_batches_of_100_and_flush(&store);
    assert!(stats.segments >= 1);
}

#[test]
fn a_full_memtable_is_frozen_at_its_size_and_flushed_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.max_memtable_bytes = usize::MAX;
    config.flush_rows = 100;
    config.compact_min_segments = usize::MAX;
    let store = EmbeddedStore::open(config).unwrap();
    // Faster than the flush thread looks (every 200 ms): the appends themselves freeze
    // each memtable as it reaches 100 rows, so each becomes a segment of its own.
    let stats = append_ten_batches_of_100_and_flush(&store);
    assert_eq!(stats.memtable_rows, 0);
    assert_eq!(stats.segments, 10, "one segment per memtable of 100 rows");
    let all = common::wal_files(dir.path(), "");
    let count = |suffix: &str| common::wal_files(dir.path(), suffix).len();
    assert_eq!(count(".wal"), 1, "only the open WAL file is left: {all:?}");
    assert!(count(".free") <= 2, "at most two kept for reuse: {all:?}");
    assert_eq!(count(".wal") + count(".free"), all.len(), "{all:?}");
}
