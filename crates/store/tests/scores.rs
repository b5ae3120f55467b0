//! The scores table through the `Store` trait: durable across a reopen, and deleted with
//! the spans they score.
#![allow(clippy::unwrap_used)]

use llmtrace_model::{Deletion, Score, ScoreQuery, Span, Store};
use llmtrace_store::{Durability, EmbeddedStore, StoreConfig};

fn open(dir: &std::path::Path) -> EmbeddedStore {
    let mut config = StoreConfig::new(dir);
    config.durability = Durability::Fsync;
    config.background = false;
    EmbeddedStore::open(config).unwrap()
}

fn span(trace: u64, user: &str) -> Span {
    Span {
        project: "p".into(),
        trace_id: format!("{trace:032x}"),
        span_id: format!("{trace:016x}"),
        start_time: 1_795_000_000_000_000_000 + trace as i64,
        user_id: Some(user.into()),
        ..Span::default()
    }
}

fn score(trace: u64, name: &str) -> Score {
    Score {
        project: "p".into(),
        id: format!("{trace}-{name}"),
        trace_id: format!("{trace:032x}"),
        span_id: Some(format!("{trace:016x}")),
        name: name.into(),
        value: Some(1.0),
        label: None,
        comment: Some("<b>kept as text</b>".into()),
        source: "human".into(),
        created_at: trace as i64,
    }
}

fn all(store: &EmbeddedStore) -> Vec<String> {
    store
        .scores(&ScoreQuery {
            project: "p".into(),
            limit: 100,
            ..ScoreQuery::default()
        })
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect()
}

#[test]
fn scores_survive_a_reopen_and_go_with_their_spans() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .append(vec![span(1, "alice"), span(2, "bob"), span(3, "bob")])
        .unwrap();
    store
        .put_scores(vec![
            score(1, "helpful"),
            score(2, "helpful"),
            score(3, "correct"),
        ])
        .unwrap();
    drop(store);
    let store = open(dir.path());
    assert_eq!(all(&store), vec!["3-correct", "2-helpful", "1-helpful"]);
    // deleting a user's data deletes the scores of their traces, and no others
    let removed = store
        .delete(&Deletion {
            project: "p".into(),
            user_id: Some("bob".into()),
            ..Deletion::default()
        })
        .unwrap();
    assert_eq!(removed, 2);
    assert_eq!(all(&store), vec!["1-helpful"]);
    // a bad score is refused with its problem named
    let err = store
        .put_scores(vec![Score {
            name: String::new(),
            ..score(1, "x")
        }])
        .unwrap_err();
    assert!(err.to_string().contains("name must be"), "{err}");
}

#[test]
fn retention_takes_the_scores_of_expired_traces() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StoreConfig::new(dir.path());
    config.durability = Durability::Fsync;
    config.background = false;
    config.default_retention_days = 7;
    let store = EmbeddedStore::open(config).unwrap();
    let day = 86_400 * 1_000_000_000_i64;
    let now = 1_795_000_000_000_000_000_i64;
    let mut old = span(1, "alice");
    old.start_time = now - 30 * day;
    let mut recent = span(2, "alice");
    recent.start_time = now - day;
    store.append(vec![old, recent]).unwrap();
    store.flush().unwrap();
    store
        .put_scores(vec![score(1, "helpful"), score(2, "helpful")])
        .unwrap();
    assert!(store.retention_sweep(now).unwrap() > 0);
    assert_eq!(all(&store), vec!["2-helpful"]);
}
