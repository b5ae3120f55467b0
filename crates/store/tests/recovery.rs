//! A corrupt segment is moved aside (not deleted) and a torn WAL tail is cut; the store
//! opens, says what it did, and serves everything else.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use llmtrace_model::{Deletion, Span, SpanFilter, SpanQuery, Store};
use llmtrace_store::{Durability, EmbeddedStore, Manifest, StoreConfig};

mod common;
use common::wal_files;

fn span(project: &str, n: u64) -> Span {
    Span {
        project: project.into(),
        trace_id: format!("{:032x}", n + 1),
        span_id: format!("{:016x}", n + 1),
        start_time: 1_795_000_000_000_000_000 + n as i64,
        input_text: format!("hello {n}"),
        ..Span::default()
    }
}

fn config(dir: &std::path::Path) -> StoreConfig {
    let mut config = StoreConfig::new(dir);
    config.durability = Durability::Fsync;
    config.background = false;
    config
}

fn hits(store: &EmbeddedStore, filter: SpanFilter) -> usize {
    let mut query = SpanQuery::new(filter);
    query.limit = 1000;
    store.search(&query).unwrap().spans.len()
}

fn count(store: &EmbeddedStore, project: &str) -> usize {
    hits(store, SpanFilter::for_project(project))
}

#[test]
fn corrupt_segment_is_quarantined_and_the_rest_is_served() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = EmbeddedStore::open(config(dir.path())).unwrap();
        store
            .append((0..10).map(|n| span("bad", n)).collect())
            .unwrap();
        store
            .append((0..10).map(|n| span("good", n)).collect())
            .unwrap();
        store.flush().unwrap();
        store
            .append((10..15).map(|n| span("bad", n)).collect())
            .unwrap();
    }
    let manifest = Manifest::load(dir.path()).unwrap();
    let bad = manifest
        .segments
        .iter()
        .find(|s| s.project == "bad")
        .unwrap();
    let bad_path = dir.path().join(&bad.path);
    let mut bytes = std::fs::read(&bad_path).unwrap();
    let len = bytes.len();
    bytes[len - 12..len - 4].copy_from_slice(b"garbage!"); // breaks the footer
    std::fs::write(&bad_path, &bytes).unwrap();

    let store = EmbeddedStore::open(config(dir.path())).unwrap();
    let report = store.recovery_report().clone();
    assert_eq!(report.segments_quarantined.len(), 1);
    assert!(report.segments_quarantined[0].starts_with(dir.path().join("quarantine")));
    assert!(
        report.segments_quarantined[0].exists(),
        "quarantined file must be kept"
    );
    assert!(!bad_path.exists());
    assert_eq!(count(&store, "good"), 10);
    assert_eq!(count(&store, "bad"), 5, "rows still in the WAL are served");
    assert_eq!(store.stats().unwrap().quarantined, 1);
}

#[test]
fn torn_wal_tail_is_cut_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = EmbeddedStore::open(config(dir.path())).unwrap();
        for n in 0..5 {
            store.append(vec![span("p", n)]).unwrap();
        }
    }
    let wal_dir = dir.path().join("wal");
    let mut files: Vec<_> = std::fs::read_dir(&wal_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let with_data = files
        .iter()
        .find(|f| std::fs::metadata(f).unwrap().len() > 8)
        .unwrap();
    let len = std::fs::metadata(with_data).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(with_data)
        .unwrap()
        .set_len(len - 7)
        .unwrap();

    let store = EmbeddedStore::open(config(dir.path())).unwrap();
    let report = store.recovery_report();
    assert_eq!(report.wal_records_replayed, 4);
    assert!(report.wal_bytes_cut > 0);
    assert_eq!(count(&store, "p"), 4);
    // New writes after the cut are durable and readable after another reopen.
    store.append(vec![span("p", 9)]).unwrap();
    drop(store);
    let store = EmbeddedStore::open(config(dir.path())).unwrap();
    assert_eq!(count(&store, "p"), 5);
    assert_eq!(store.recovery_report().wal_bytes_cut, 0);
}

#[test]
fn flushed_wal_files_are_written_over_and_replay_only_their_new_records() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    {
        let store = EmbeddedStore::open(config(dir.path())).unwrap();
        store
            .append((0..10).map(|n| span("a", n)).collect())
            .unwrap();
        store.flush().unwrap();
        let free = wal_files(dir.path(), ".free");
        assert_eq!(free.len(), 1, "the flushed file is kept for reuse");
        let kept = std::fs::metadata(&free[0]).unwrap().ino();
        store
            .append((10..20).map(|n| span("a", n)).collect())
            .unwrap();
        store.flush().unwrap();
        // the next file was the kept one, renamed: it holds what comes now over old records
        store
            .append((20..25).map(|n| span("a", n)).collect())
            .unwrap();
        let open: Vec<_> = wal_files(dir.path(), ".wal")
            .into_iter()
            .filter(|p| std::fs::metadata(p).unwrap().ino() == kept)
            .collect();
        assert_eq!(open.len(), 1, "the kept file is the open one again");
    }
    let store = EmbeddedStore::open(config(dir.path())).unwrap();
    let report = store.recovery_report().clone();
    assert_eq!(
        (report.wal_records_replayed, report.wal_bytes_cut),
        (1, 0),
        "only the batch written since: the old records behind it are not read"
    );
    assert_eq!(count(&store, "a"), 25);
    assert!(
        wal_files(dir.path(), ".free").is_empty(),
        "opening discards them"
    );

    // a flush takes the replayed rows too (and keeps their file); a deletion discards
    // kept files: they hold flushed rows it may mean
    store.flush().unwrap();
    assert_eq!(store.stats().unwrap().memtable_rows, 0);
    assert_eq!(wal_files(dir.path(), ".free").len(), 1);
    let doomed = span("a", 3);
    store
        .delete(&Deletion {
            project: "a".into(),
            trace_id: Some(doomed.trace_id.clone()),
            ..Deletion::default()
        })
        .unwrap();
    assert!(wal_files(dir.path(), ".free").is_empty());
    assert_eq!(count(&store, "a"), 24);
    // and a file that was open when a deletion came is not kept either
    store.flush().unwrap();
    assert!(wal_files(dir.path(), ".free").is_empty());

    // nor one replayed at an open with such a deletion after it
    store
        .append((30..35).map(|n| span("a", n)).collect())
        .unwrap();
    store
        .delete(&Deletion {
            project: "a".into(),
            trace_id: Some(span("a", 30).trace_id),
            ..Deletion::default()
        })
        .unwrap();
    drop(store);
    let store = EmbeddedStore::open(config(dir.path())).unwrap();
    assert_eq!(count(&store, "a"), 28);
    store.flush().unwrap();
    assert!(wal_files(dir.path(), ".free").is_empty());
    assert_eq!(count(&store, "a"), 28);
}

fn text_hits(store: &EmbeddedStore, project: &str, text: &str) -> usize {
    let filter = SpanFilter {
        text: Some(text.into()),
        ..SpanFilter::for_project(project)
    };
    hits(store, filter)
}

#[test]
fn a_lost_or_damaged_index_is_rebuilt_and_stray_ones_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = EmbeddedStore::open(config(dir.path())).unwrap();
        store
            .append((0..10).map(|n| span("a", n)).collect())
            .unwrap();
        store
            .append((0..4).map(|n| span("b", n)).collect())
            .unwrap();
        store.flush().unwrap();
    }
    let manifest = Manifest::load(dir.path()).unwrap();
    let index_of = |project: &str| {
        let meta = manifest
            .segments
            .iter()
            .find(|s| s.project == project)
            .unwrap();
        dir.path().join(&meta.path).with_extension("idx")
    };
    assert!(
        index_of("a").is_dir(),
        "flush writes the index beside the segment"
    );
    std::fs::remove_dir_all(index_of("a")).unwrap();
    // A damaged index: every file emptied.
    for entry in std::fs::read_dir(index_of("b")).unwrap() {
        std::fs::write(entry.unwrap().path(), b"").unwrap();
    }
    // An index left by an interrupted flush, for a segment the manifest does not name.
    let stray = index_of("a").with_file_name("9999999999999999.idx");
    std::fs::create_dir_all(&stray).unwrap();
    let half_built = index_of("a").with_file_name("9999999999999998.idx.tmp");
    std::fs::create_dir_all(&half_built).unwrap();

    let store = EmbeddedStore::open(config(dir.path())).unwrap();
    assert!(index_of("a").is_dir() && index_of("b").is_dir());
    assert!(!stray.exists() && !half_built.exists());
    assert_eq!(text_hits(&store, "a", "hello"), 10);
    assert_eq!(text_hits(&store, "a", "7"), 1);
    assert_eq!(text_hits(&store, "b", "hello 3"), 1);
    assert_eq!(count(&store, "b"), 4);
}

/// A segment whose message pool is missing or has a broken footer is quarantined with its
/// pool (both kept), and everything else is served.
#[test]
fn a_segment_with_a_missing_or_damaged_pool_is_quarantined() {
    for damage in ["missing", "footer"] {
        let dir = tempfile::tempdir().unwrap();
        let long = |project: &str, n: u64| Span {
            input_text: format!("{n} {}", "a resent message ".repeat(60)),
            ..span(project, n)
        };
        {
            let store = EmbeddedStore::open(config(dir.path())).unwrap();
            store
                .append((0..10).map(|n| long("bad", n)).collect())
                .unwrap();
            store
                .append((0..10).map(|n| long("good", n)).collect())
                .unwrap();
            store.flush().unwrap();
        }
        let manifest = Manifest::load(dir.path()).unwrap();
        let bad = manifest
            .segments
            .iter()
            .find(|s| s.project == "bad")
            .unwrap();
        let pool_path = dir.path().join(&bad.path).with_extension("pool");
        match damage {
            "missing" => std::fs::remove_file(&pool_path).unwrap(),
            _ => {
                let mut bytes = std::fs::read(&pool_path).unwrap();
                let len = bytes.len();
                bytes[len - 14] ^= 0xff; // the footer's checksum
                std::fs::write(&pool_path, &bytes).unwrap();
            }
        }
        let store = EmbeddedStore::open(config(dir.path())).unwrap();
        let report = store.recovery_report().clone();
        let moved = &report.segments_quarantined;
        assert_eq!(
            moved.len(),
            if damage == "missing" { 1 } else { 2 },
            "{damage}: {moved:?}"
        );
        assert!(
            moved.iter().all(|path| path.exists()),
            "{damage}: kept aside"
        );
        assert!(!pool_path.exists());
        assert_eq!(count(&store, "good"), 10, "{damage}");
        assert_eq!(count(&store, "bad"), 0, "{damage}");
        let found = hits(
            &store,
            SpanFilter {
                text: Some("resent".into()),
                ..SpanFilter::for_project("good")
            },
        );
        assert_eq!(found, 10, "{damage}");
    }
}
