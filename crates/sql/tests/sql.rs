//! SQL over the embedded store, checked against a plain in-memory model through random
//! sequences of append / flush / compact / delete / reopen; and what SQL must refuse.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use llmtrace_model::{
    Deletion, ErrorCode, Score, Span, SpanKind, SpanStatus, SqlAnswer, SqlEngine, SqlQuery, Store,
};
use llmtrace_sql::Sql;
use llmtrace_store::{Durability, EmbeddedStore, StoreConfig};
use proptest::prelude::*;
use serde_json::{Value, json};

const PROJECTS: [&str; 2] = ["alpha", "beta"];
const DAY_NS: i64 = 86_400 * 1_000_000_000;
/// 2026-11-18T11:06:40Z
const BASE: i64 = 1_795_000_000 * 1_000_000_000;
/// 2026-11-20T00:00:00Z: keys with `key % 5 >= 2` start after it, the rest before.
const CUT: &str = "2026-11-20T00:00:00Z";
const CUT_NS: i64 = 1_795_132_800 * 1_000_000_000;

fn make_span(key: u8, version: u8) -> Span {
    let k = i64::from(key);
    let start = BASE + (k % 5) * DAY_NS + k * 1_000_000;
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
        start_time: start,
        end_time: start + 5_000_000,
        duration_ms: f64::from(key) * 1.5 + f64::from(version),
        status: if (key + version).is_multiple_of(5) {
            SpanStatus::Error
        } else {
            SpanStatus::Ok
        },
        session_id: Some(format!("s{}", key % 4)),
        user_id: Some(format!("u{}", key % 3)),
        model: Some(format!("model-{}", (key + version) % 3)),
        input_tokens: Some(i64::from(key) * 10 + i64::from(version)),
        total_cost_usd: Some(f64::from(key) / 1000.0),
        input_text: format!("question {key}"),
        output_text: format!("answer {version}"),
        metadata: BTreeMap::from([("tier".to_string(), format!("t{}", version % 2))]),
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

fn ask(sql: &Sql, project: &str, statement: &str) -> SqlAnswer {
    sql.sql(&SqlQuery::new(project, statement))
        .unwrap_or_else(|err| panic!("{statement}: {err}"))
}

/// A statement, and what it answers over the live spans of project alpha.
type Reference = fn(&[&Span]) -> Vec<Vec<Value>>;

fn statements() -> Vec<(String, Reference)> {
    vec![
        (
            "SELECT trace_id, span_id, model, input_tokens, duration_ms FROM spans \
             ORDER BY trace_id, span_id"
                .into(),
            |spans| {
                spans
                    .iter()
                    .map(|s| {
                        vec![
                            json!(s.trace_id),
                            json!(s.span_id),
                            json!(s.model),
                            json!(s.input_tokens),
                            json!(s.duration_ms),
                        ]
                    })
                    .collect()
            },
        ),
        (
            format!(
                "SELECT model, count(*), sum(input_tokens) FROM spans \
                 WHERE start_time >= TIMESTAMP '{CUT}' GROUP BY model ORDER BY model"
            ),
            |spans| {
                let mut groups: BTreeMap<String, (i64, i64)> = BTreeMap::new();
                for s in spans.iter().filter(|s| s.start_time >= CUT_NS) {
                    let group = groups.entry(s.model.clone().unwrap()).or_default();
                    group.0 += 1;
                    group.1 += s.input_tokens.unwrap();
                }
                groups
                    .into_iter()
                    .map(|(model, (count, tokens))| vec![json!(model), json!(count), json!(tokens)])
                    .collect()
            },
        ),
        (
            format!(
                "SELECT span_id FROM spans WHERE session_id = 's1' AND kind = 'llm' \
                 AND start_time < TIMESTAMP '{CUT}' ORDER BY span_id"
            ),
            |spans| {
                spans
                    .iter()
                    .filter(|s| {
                        s.session_id.as_deref() == Some("s1")
                            && s.kind == SpanKind::Llm
                            && s.start_time < CUT_NS
                    })
                    .map(|s| vec![json!(s.span_id)])
                    .collect()
            },
        ),
        (
            "SELECT count(*) AS n FROM spans WHERE json_get(metadata, 'tier') = 't1' \
             AND model = 'model-2'"
                .into(),
            |spans| {
                let n = spans
                    .iter()
                    .filter(|s| {
                        s.metadata.get("tier").map(String::as_str) == Some("t1")
                            && s.model.as_deref() == Some("model-2")
                    })
                    .count();
                vec![vec![json!(n)]]
            },
        ),
        (
            "SELECT user_id, count(*) FROM spans WHERE duration_ms > 10 AND status = 'ok' \
             AND total_cost_usd <= 0.03 GROUP BY user_id ORDER BY user_id"
                .into(),
            |spans| {
                let mut groups: BTreeMap<String, i64> = BTreeMap::new();
                for s in spans.iter().filter(|s| {
                    s.duration_ms > 10.0
                        && s.status == SpanStatus::Ok
                        && s.total_cost_usd.unwrap() <= 0.03
                }) {
                    *groups.entry(s.user_id.clone().unwrap()).or_default() += 1;
                }
                groups
                    .into_iter()
                    .map(|(user, n)| vec![json!(user), json!(n)])
                    .collect()
            },
        ),
    ]
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<(u8, u8)>),
    Flush,
    Compact,
    DeleteUser(u8),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => prop::collection::vec((0u8..40, 0u8..4), 1..8).prop_map(Op::Append),
        2 => Just(Op::Flush),
        1 => Just(Op::Compact),
        1 => (0u8..3).prop_map(Op::DeleteUser),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Memtable rows, segment rows, rewritten and deleted rows, across reopen: the SQL
    /// answers what the model holds, and never another project's rows.
    #[test]
    fn sql_answers_like_the_model(ops in prop::collection::vec(op(), 1..14)) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Arc::new(EmbeddedStore::open(config(dir.path())).unwrap());
        let mut model: BTreeMap<(String, String, String), Span> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Append(keys) => {
                    let spans: Vec<Span> = keys.iter().map(|&(k, v)| make_span(k, v)).collect();
                    for span in &spans {
                        model.insert(
                            (span.project.clone(), span.trace_id.clone(), span.span_id.clone()),
                            span.clone(),
                        );
                    }
                    store.append(spans).unwrap();
                }
                Op::Flush => store.flush().unwrap(),
                Op::Compact => {
                    store.compact(true).unwrap();
                }
                Op::DeleteUser(user) => {
                    let user = format!("u{user}");
                    store
                        .delete(&Deletion {
                            project: "alpha".into(),
                            user_id: Some(user.clone()),
                            ..Deletion::default()
                        })
                        .unwrap();
                    model.retain(|(project, _, _), span| {
                        project != "alpha" || span.user_id.as_deref() != Some(user.as_str())
                    });
                }
                Op::Reopen => {
                    store.close().unwrap();
                    drop(store);
                    store = Arc::new(EmbeddedStore::open(config(dir.path())).unwrap());
                }
            }
        }
        let sql = Sql::new(store.clone());
        let alpha: Vec<&Span> = model.values().filter(|s| s.project == "alpha").collect();
        for (statement, reference) in statements() {
            let answer = ask(&sql, "alpha", &statement);
            prop_assert_eq!(&answer.rows, &reference(&alpha), "{}", statement);
        }
        let beta = model.values().filter(|s| s.project == "beta").count();
        let counted = ask(&sql, "beta", "SELECT count(*) FROM spans");
        prop_assert_eq!(&counted.rows, &vec![vec![json!(beta)]]);
    }
}

fn filled() -> (tempfile::TempDir, Arc<EmbeddedStore>, Sql) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(config(dir.path())).unwrap());
    store
        .append((0..40).map(|k| make_span(k, 1)).collect())
        .unwrap();
    store.flush().unwrap();
    store
        .append((40..60).map(|k| make_span(k, 1)).collect())
        .unwrap();
    let sql = Sql::new(store.clone());
    (dir, store, sql)
}

fn refusal(sql: &Sql, query: &SqlQuery) -> String {
    match sql.sql(query) {
        Ok(answer) => panic!("{} was answered: {answer:?}", query.sql),
        Err(err) => {
            assert_eq!(err.code(), ErrorCode::BadRequest, "{}: {err}", query.sql);
            err.to_string()
        }
    }
}

#[test]
fn only_reads_of_the_two_tables_are_allowed() {
    let (dir, _store, sql) = filled();
    let outside = dir.path().join("written-by-sql.csv");
    for statement in [
        "CREATE TABLE t (a INT)".to_string(),
        "CREATE VIEW v AS SELECT * FROM spans".into(),
        "INSERT INTO spans (name) VALUES ('x')".into(),
        "DELETE FROM spans".into(),
        "DROP TABLE spans".into(),
        "SET datafusion.execution.batch_size = 1".into(),
        format!("COPY (SELECT 1) TO '{}'", outside.display()),
        format!(
            "CREATE EXTERNAL TABLE leak STORED AS CSV LOCATION '{}'",
            dir.path().display()
        ),
        "SELECT * FROM '/etc/passwd'".into(),
        "SELECT * FROM no_such_table".into(),
        "SELEC 1".into(),
    ] {
        let message = refusal(&sql, &SqlQuery::new("alpha", statement.as_str()));
        assert!(!message.is_empty(), "{statement}");
    }
    assert!(!outside.exists(), "COPY wrote a file");
    // the information schema lists what there is to read
    let tables = ask(
        &sql,
        "alpha",
        "SELECT table_name FROM information_schema.tables \
         WHERE table_schema = 'public' ORDER BY table_name",
    );
    assert_eq!(
        tables.rows,
        vec![vec![json!("scores")], vec![json!("spans")]]
    );
}

#[test]
fn budgets_refuse_or_cut_with_a_reason() {
    let (_dir, _store, sql) = filled();
    // 30 of the 60 spans are alpha's; a scan of more than 10 is refused before it reads
    let mut query = SqlQuery::new("alpha", "SELECT count(*) FROM spans");
    query.max_scan_rows = 10;
    let message = refusal(&sql, &query);
    assert!(message.contains("budget of 10"), "{message}");
    // the same budget admits a scan the time condition narrows (pushed down to the store)
    query.sql =
        "SELECT count(*) FROM spans WHERE start_time >= TIMESTAMP '2026-11-22T00:00:00Z'".into();
    let answer = sql.sql(&query).unwrap();
    assert_eq!(answer.rows, vec![vec![json!(6)]]);
    // an answer longer than max_rows is cut and says so
    let mut query = SqlQuery::new("alpha", "SELECT span_id FROM spans ORDER BY span_id");
    query.max_rows = 7;
    let answer = sql.sql(&query).unwrap();
    assert_eq!(answer.rows.len(), 7);
    assert!(answer.truncated);
    query.max_rows = 30;
    assert!(!sql.sql(&query).unwrap().truncated);

    // rows only in the memtable count against the budget too
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(config(dir.path())).unwrap());
    store
        .append((0..20).map(|k| make_span(k, 1)).collect())
        .unwrap();
    let mut query = SqlQuery::new("alpha", "SELECT count(*) FROM spans");
    query.max_scan_rows = 5;
    let message = refusal(&Sql::new(store), &query);
    assert!(message.contains("budget of 5"), "{message}");
}

#[test]
fn scores_join_their_spans_and_values_keep_their_types() {
    let (_dir, store, sql) = filled();
    let span = make_span(2, 1);
    store
        .put_scores(vec![Score {
            project: "alpha".into(),
            id: "score-1".into(),
            trace_id: span.trace_id.clone(),
            span_id: Some(span.span_id.clone()),
            name: "helpfulness".into(),
            value: Some(0.75),
            label: Some("good".into()),
            comment: None,
            source: "human".into(),
            created_at: BASE,
        }])
        .unwrap();
    let answer = ask(
        &sql,
        "alpha",
        "SELECT s.name, s.model, s.stream, sc.value, sc.label, sc.comment, sc.created_at \
         FROM scores sc JOIN spans s ON s.trace_id = sc.trace_id AND s.span_id = sc.span_id",
    );
    assert_eq!(
        answer.rows,
        vec![vec![
            json!("span 2"),
            json!("model-0"),
            Value::Null,
            json!(0.75),
            json!("good"),
            Value::Null,
            json!("2026-11-18T11:06:40Z"),
        ]]
    );
    let types: Vec<&str> = answer
        .columns
        .iter()
        .map(|c| c.data_type.as_str())
        .collect();
    assert_eq!(types[3], "Float64");
    // another project sees no scores
    let other = ask(&sql, "beta", "SELECT count(*) FROM scores");
    assert_eq!(other.rows, vec![vec![json!(0)]]);
}
