//! Random sequences of append / flush / compact / delete / reopen, checked against a plain
//! in-memory model: every query must answer the same.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use llmtrace_model::query::{aggregate, session_traces};
use llmtrace_model::{
    AggregateQuery, Deletion, Dimension, Span, SpanFilter, SpanKey, SpanKind, SpanQuery,
    SpanStatus, Store,
};
use llmtrace_store::{Durability, EmbeddedStore, StoreConfig};
use proptest::prelude::*;

mod common;
use common::assert_aggregates_agree;

const PROJECTS: [&str; 2] = ["alpha", "beta"];
const WORDS: [&str; 6] = ["paris", "weather", "refund", "order", "hello", "tool"];
const DAY_NS: i64 = 86_400 * 1_000_000_000;
const BASE: i64 = 1_795_000_000 * 1_000_000_000;

#[derive(Debug, Clone)]
enum Op {
    /// (key index, version) pairs: same key index = same span identity.
    Append(Vec<(u8, u8)>),
    Flush,
    Compact,
    /// A background compaction step: merges one run of small neighbouring segments.
    CompactRun,
    Delete(u8, u8),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => prop::collection::vec((0u8..40, 0u8..4), 1..8).prop_map(Op::Append),
        2 => Just(Op::Flush),
        1 => Just(Op::Compact),
        2 => Just(Op::CompactRun),
        1 => (0u8..3, 0u8..8).prop_map(|(what, which)| Op::Delete(what, which)),
        1 => Just(Op::Reopen),
    ]
}

/// A span fully determined by its key index and version; the start time depends only on
/// the key, as it does for a re-sent span.
fn make_span(key: u8, version: u8) -> Span {
    let k = i64::from(key);
    Span {
        project: PROJECTS[usize::from(key) % 2].into(),
        trace_id: format!("{:032x}", k / 3 + 1),
        span_id: format!("{:016x}", k + 1),
        name: format!("span {key}"),
        kind: if key.is_multiple_of(4) {
            SpanKind::Tool
        } else {
            SpanKind::Llm
        },
        start_time: BASE + (k % 5) * DAY_NS + k * 1_000_000,
        end_time: BASE + (k % 5) * DAY_NS + k * 1_000_000 + 5_000_000,
        duration_ms: f64::from(key) * 1.5 + f64::from(version),
        time_to_first_token_ms: key.is_multiple_of(3).then(|| f64::from(key) + 0.25),
        status: if (key + version).is_multiple_of(5) {
            SpanStatus::Error
        } else {
            SpanStatus::Ok
        },
        session_id: Some(format!("s{}", key % 4)),
        user_id: Some(format!("u{}", key % 3)),
        model: Some(format!("model-{}", (key + version) % 3)),
        input_tokens: Some(i64::from(key) * 10 + i64::from(version)),
        output_tokens: Some(i64::from(version) * 7),
        total_cost_usd: Some(f64::from(key) / 1000.0),
        input_text: format!(
            "{} {} {}",
            history(key).join(" "),
            WORDS[usize::from(key) % 6],
            WORDS[usize::from(version) % 6]
        ),
        input: serde_json::Value::Array(
            history(key)
                .into_iter()
                .map(|turn| serde_json::json!({"role": "user", "content": turn}))
                .chain([
                    serde_json::json!({"role": "user", "content": WORDS[usize::from(version) % 6]}),
                ])
                .collect(),
        ),
        output_text: format!("answer {version}"),
        output: serde_json::json!([{"role": "assistant", "content": [{"type": "text", "text": format!("answer {version}")}]}]),
        tools: if key.is_multiple_of(3) {
            serde_json::json!([{"type": "function", "function": {"name": "lookup", "parameters": {}}}])
        } else {
            serde_json::Value::Null
        },
        // documents of every JSON kind, so that each store layout keeps them as they came
        attributes: serde_json::json!({"gen_ai.response.id": format!("resp-{key}"),
            "version": version % 3, "nested": {"list": [1, 2.5, null, true, "é\"\n"]}}),
        metadata: BTreeMap::from([("tier".to_string(), format!("t{}", version % 2))]),
        ..Span::default()
    }
}

/// What a call of `key` resends: every earlier turn of its session, long enough to go to
/// the segment's message pool, so that pooled history meets every operation.
fn history(key: u8) -> Vec<String> {
    (key % 4..=key)
        .step_by(4)
        .map(|turn| {
            format!(
                "turn {turn} of session {}: {}",
                key % 4,
                "lorem ipsum ".repeat(20)
            )
        })
        .collect()
}

fn deletion(what: u8, which: u8) -> Deletion {
    let project = PROJECTS[usize::from(which) % 2].to_string();
    match what {
        0 => Deletion {
            project,
            trace_id: Some(format!("{:032x}", i64::from(which) + 1)),
            ..Deletion::default()
        },
        1 => Deletion {
            project,
            session_id: Some(format!("s{}", which % 4)),
            ..Deletion::default()
        },
        _ => Deletion {
            project,
            user_id: Some(format!("u{}", which % 3)),
            ..Deletion::default()
        },
    }
}

fn config(dir: &std::path::Path) -> StoreConfig {
    let mut config = StoreConfig::new(dir);
    config.durability = Durability::None;
    config.background = false;
    config.compact_min_segments = 3;
    config.flush_interval = Duration::from_secs(3600);
    config
}

fn filters(project: &str) -> Vec<SpanFilter> {
    let base = SpanFilter::for_project(project);
    vec![
        base.clone(),
        SpanFilter {
            session_id: Some("s1".into()),
            ..base.clone()
        },
        SpanFilter {
            user_id: Some("u2".into()),
            model: Some("model-1".into()),
            ..base.clone()
        },
        SpanFilter {
            text: Some("paris".into()),
            ..base.clone()
        },
        SpanFilter {
            status: Some(SpanStatus::Error),
            ..base.clone()
        },
        SpanFilter {
            kinds: vec![SpanKind::Tool],
            ..base.clone()
        },
        SpanFilter {
            metadata: vec![("tier".into(), "t1".into())],
            ..base.clone()
        },
        SpanFilter {
            since: Some(BASE + DAY_NS),
            until: Some(BASE + 3 * DAY_NS),
            ..base.clone()
        },
        SpanFilter {
            // Cuts through the hour that holds day 1's rows: rollups answer only whole hours.
            since: Some(BASE + DAY_NS + 17_000_000),
            until: Some(BASE + 4 * DAY_NS + 3_600_000_000_000),
            ..base.clone()
        },
        SpanFilter {
            model: Some("model-2".into()),
            kinds: vec![SpanKind::Llm],
            ..base.clone()
        },
        SpanFilter {
            attributes: vec![("version".into(), "1".into())],
            ..base.clone()
        },
        SpanFilter {
            // answered by the segment index's response-id field
            attributes: vec![("gen_ai.response.id".into(), "resp-5".into())],
            ..base.clone()
        },
        SpanFilter {
            min_duration_ms: Some(20.0),
            ..base
        },
    ]
}

fn all_pages(store: &EmbeddedStore, filter: &SpanFilter) -> Vec<Span> {
    let mut query = SpanQuery::new(filter.clone());
    query.limit = 4;
    let mut out = Vec::new();
    loop {
        let page = store.search(&query).unwrap();
        out.extend(page.spans);
        match page.next_cursor {
            Some(cursor) => query.cursor = Some(cursor),
            None => return out,
        }
    }
}

fn aggregate_queries(filter: &SpanFilter) -> Vec<AggregateQuery> {
    vec![
        AggregateQuery {
            filter: filter.clone(),
            bucket_seconds: Some(86_400),
            group_by: vec![Dimension::Model, Dimension::Status],
        },
        AggregateQuery {
            filter: filter.clone(),
            bucket_seconds: Some(3_600),
            group_by: vec![Dimension::Kind],
        },
        AggregateQuery {
            filter: filter.clone(),
            bucket_seconds: None,
            group_by: vec![Dimension::User],
        },
        // answered by the rollups' view of the key where the filter allows
        AggregateQuery {
            filter: filter.clone(),
            bucket_seconds: Some(3_600),
            group_by: vec![Dimension::Metadata("tier".into())],
        },
        // lean segment reads leave metadata out unless a filter or a group needs it
        AggregateQuery {
            filter: filter.clone(),
            bucket_seconds: Some(3_600),
            group_by: vec![Dimension::Metadata("tier".into()), Dimension::Session],
        },
    ]
}

fn check(store: &EmbeddedStore, model: &BTreeMap<SpanKey, Span>) {
    for project in PROJECTS {
        for filter in filters(project) {
            let mut expected: Vec<Span> = model
                .values()
                .filter(|span| filter.matches(span))
                .cloned()
                .collect();
            expected.sort_by_key(|span| std::cmp::Reverse(span.order_key()));
            let got = all_pages(store, &filter);
            assert_eq!(got, expected, "search {filter:?}");

            for query in aggregate_queries(&filter) {
                assert_aggregates_agree(
                    &store.aggregate(&query).unwrap(),
                    &aggregate(&query, model.values()),
                    &format!("aggregate {query:?}"),
                );
            }
        }
        for trace in 1..=14 {
            let trace_id = format!("{trace:032x}");
            let mut expected: Vec<Span> = model
                .values()
                .filter(|s| s.project == project && s.trace_id == trace_id)
                .cloned()
                .collect();
            expected.sort_by_key(|span| span.order_key());
            assert_eq!(store.trace(project, &trace_id).unwrap(), expected);
        }
        for session in 0..4 {
            let session_id = format!("s{session}");
            let expected = session_traces(
                model
                    .values()
                    .filter(|s| {
                        s.project == project && s.session_id.as_deref() == Some(&session_id)
                    })
                    .cloned()
                    .collect(),
            );
            assert_eq!(store.session(project, &session_id).unwrap(), expected);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn store_answers_like_the_model(ops in prop::collection::vec(op(), 1..24)) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = EmbeddedStore::open(config(dir.path())).unwrap();
        let mut model: BTreeMap<SpanKey, Span> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Append(items) => {
                    let spans: Vec<Span> = items.iter().map(|&(k, v)| make_span(k, v)).collect();
                    for span in &spans {
                        model.insert(span.key(), span.clone());
                    }
                    store.append(spans).unwrap();
                }
                Op::Flush => store.flush().unwrap(),
                Op::Compact => {
                    store.compact(true).unwrap();
                }
                Op::CompactRun => {
                    // Segments under the average size count as small, the others not: runs
                    // of small ones are merged between segments left as they are.
                    let stats = store.stats().unwrap();
                    let mut config = config(dir.path());
                    config.compact_max_bytes = 2 * stats.segment_bytes / stats.segments.max(1);
                    config.compact_min_segments = 2;
                    drop(store);
                    store = EmbeddedStore::open(config).unwrap();
                    store.compact(false).unwrap();
                }
                Op::Delete(what, which) => {
                    let deletion = deletion(what, which);
                    let expected = model.values().filter(|s| deletion.matches(s)).count() as u64;
                    model.retain(|_, span| !deletion.matches(span));
                    prop_assert_eq!(store.delete(&deletion).unwrap(), expected);
                }
                Op::Reopen => {
                    drop(store);
                    store = EmbeddedStore::open(config(dir.path())).unwrap();
                }
            }
            check(&store, &model);
        }
    }
}
