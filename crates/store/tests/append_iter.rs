//! `Store::append_iter`: the spans an iterator yields are one batch, prepared as they come.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use llmtrace_model::span::flatten_text;
use llmtrace_model::{Error, Span, SpanFilter, SpanQuery, Store};
use llmtrace_store::{Durability, EmbeddedStore, StoreConfig, WalCompression};
use serde_json::json;

fn open(dir: &std::path::Path) -> EmbeddedStore {
    open_with(dir, WalCompression::default())
}

fn open_with(dir: &std::path::Path, wal_compression: WalCompression) -> EmbeddedStore {
    let mut config = StoreConfig::new(dir);
    config.durability = Durability::Fsync;
    config.background = false;
    config.wal_compression = wal_compression;
    EmbeddedStore::open(config).unwrap()
}

fn chat(n: u64) -> Span {
    let input =
        json!([{"role": "user", "content": [{"type": "text", "text": format!("question {n}")}]}]);
    Span {
        project: "p".into(),
        trace_id: format!("{:032x}", n + 1),
        span_id: format!("{:016x}", n + 1),
        start_time: 1_795_000_000_000_000_000 + n as i64,
        input_text: flatten_text(&input),
        input,
        attributes: json!({"n": n}),
        ..Span::default()
    }
}

fn stored(store: &EmbeddedStore) -> Vec<Span> {
    let mut query = SpanQuery::new(SpanFilter::for_project("p"));
    query.limit = 1000;
    let mut spans = store.search(&query).unwrap().spans;
    spans.sort_by_key(|span| span.start_time);
    spans
}

#[test]
fn the_spans_an_iterator_yields_are_stored_whole_and_durably() {
    let dir = tempfile::tempdir().unwrap();
    let expected: Vec<Span> = (0..50).map(chat).collect();
    {
        let store = open(dir.path());
        let mut built = 0;
        let mut spans = (0..50).map(|n| {
            built += 1;
            chat(n)
        });
        store.append_iter(&mut spans).unwrap();
        assert_eq!(built, 50, "every span is taken from the iterator");
        assert_eq!(
            stored(&store),
            expected,
            "queryable when append_iter returns"
        );
        // no flush: the rows come back from the WAL alone
    }
    let store = open(dir.path());
    assert_eq!(
        stored(&store),
        expected,
        "the batch survives a reopen from the WAL"
    );
    store.append_iter(&mut std::iter::empty()).unwrap();
    assert_eq!(
        store.stats().unwrap().rows,
        50,
        "an empty iterator appends nothing"
    );
}

#[test]
fn a_bad_span_anywhere_in_the_iterator_refuses_the_whole_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut spans = (0..10).map(|n| {
        let mut span = chat(n);
        if n == 7 {
            span.span_id.clear();
        }
        span
    });
    match store.append_iter(&mut spans) {
        Err(Error::BadRequest(message)) => assert!(message.contains("span_id"), "{message}"),
        other => panic!("expected a bad request, got {other:?}"),
    }
    assert!(
        stored(&store).is_empty(),
        "the spans before the bad one are not stored"
    );
    store.append_iter(&mut (0..3).map(chat)).unwrap();
    assert_eq!(stored(&store).len(), 3, "the store takes the next batch");
}

#[test]
fn the_wal_compression_setting_sizes_the_records_and_either_kind_replays() {
    let wal_bytes = |compression: WalCompression| {
        let dir = tempfile::tempdir().unwrap();
        let store = open_with(dir.path(), compression);
        store.append_iter(&mut (0..200).map(chat)).unwrap();
        store.stats().unwrap().wal_bytes
    };
    let (fastest, zstd) = (
        wal_bytes(WalCompression::None),
        wal_bytes(WalCompression::Zstd),
    );
    assert!(
        fastest > zstd * 2,
        "zstd's fastest setting leaves the rows nearly whole: {fastest} against {zstd} bytes"
    );

    // records written under one setting replay under the other
    let dir = tempfile::tempdir().unwrap();
    open_with(dir.path(), WalCompression::Zstd)
        .append_iter(&mut (0..20).map(chat))
        .unwrap();
    open_with(dir.path(), WalCompression::None)
        .append_iter(&mut (20..40).map(chat))
        .unwrap();
    let expected: Vec<Span> = (0..40).map(chat).collect();
    assert_eq!(
        stored(&open_with(dir.path(), WalCompression::Zstd)),
        expected
    );
}
