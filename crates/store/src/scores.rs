//! The scores table: small, mutable rows beside the span store, in SQLite (`scores.sqlite`
//! in the data directory) — transactions, durable writes (WAL journal, `synchronous=FULL`),
//! and indexed lookups by trace, which is all scores need.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use llmtrace_model::{Error, Result, Score, ScoreQuery};
use rusqlite::{Connection, params};

pub struct ScoreTable {
    connection: Mutex<Connection>,
}

fn storage(err: rusqlite::Error) -> Error {
    Error::Storage(format!("scores: {err}"))
}

const COLUMNS: &str =
    "project, id, trace_id, span_id, name, value, label, comment, source, created_at";

fn row_to_score(row: &rusqlite::Row<'_>) -> rusqlite::Result<Score> {
    Ok(Score {
        project: row.get(0)?,
        id: row.get(1)?,
        trace_id: row.get(2)?,
        span_id: row.get(3)?,
        name: row.get(4)?,
        value: row.get(5)?,
        label: row.get(6)?,
        comment: row.get(7)?,
        source: row.get(8)?,
        created_at: row.get(9)?,
    })
}

impl ScoreTable {
    pub fn open(path: &Path) -> Result<ScoreTable> {
        let connection = Connection::open(path).map_err(storage)?;
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = FULL;
                 CREATE TABLE IF NOT EXISTS scores (
                     project TEXT NOT NULL,
                     id TEXT NOT NULL,
                     trace_id TEXT NOT NULL,
                     span_id TEXT,
                     name TEXT NOT NULL,
                     value REAL,
                     label TEXT,
                     comment TEXT,
                     source TEXT NOT NULL,
                     created_at INTEGER NOT NULL,
                     PRIMARY KEY (project, id)
                 );
                 CREATE INDEX IF NOT EXISTS scores_by_trace ON scores (project, trace_id);
                 CREATE INDEX IF NOT EXISTS scores_by_name ON scores (project, name, created_at);",
            )
            .map_err(storage)?;
        Ok(ScoreTable {
            connection: Mutex::new(connection),
        })
    }

    fn connection(&self) -> MutexGuard<'_, Connection> {
        self.connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes every score in one transaction, after checking them all.
    pub fn put(&self, scores: &[Score]) -> Result<()> {
        for score in scores {
            score.validate()?;
        }
        let mut connection = self.connection();
        let transaction = connection.transaction().map_err(storage)?;
        {
            let mut insert = transaction
                .prepare_cached(&format!(
                    "INSERT OR REPLACE INTO scores ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
                ))
                .map_err(storage)?;
            for score in scores {
                insert
                    .execute(params![
                        score.project,
                        score.id,
                        score.trace_id,
                        score.span_id,
                        score.name,
                        score.value,
                        score.label,
                        score.comment,
                        score.source,
                        score.created_at,
                    ])
                    .map_err(storage)?;
            }
        }
        transaction.commit().map_err(storage)
    }

    pub fn query(&self, query: &ScoreQuery) -> Result<Vec<Score>> {
        let connection = self.connection();
        let mut statement = connection
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM scores
                 WHERE project = ?1
                   AND (?2 IS NULL OR trace_id = ?2)
                   AND (?3 IS NULL OR span_id = ?3)
                   AND (?4 IS NULL OR name = ?4)
                 ORDER BY created_at DESC, id DESC
                 LIMIT ?5"
            ))
            .map_err(storage)?;
        let limit = i64::try_from(query.limit.max(1)).unwrap_or(i64::MAX);
        let rows = statement
            .query_map(
                params![
                    query.project,
                    query.trace_id,
                    query.span_id,
                    query.name,
                    limit
                ],
                row_to_score,
            )
            .map_err(storage)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(storage)
    }

    /// Removes the scores of `traces` (of one span of each, when `span_id` is given).
    pub fn delete_traces(
        &self,
        project: &str,
        traces: &BTreeSet<String>,
        span_id: Option<&str>,
    ) -> Result<()> {
        let mut connection = self.connection();
        let transaction = connection.transaction().map_err(storage)?;
        {
            let mut delete = transaction
                .prepare_cached(
                    "DELETE FROM scores WHERE project = ?1 AND trace_id = ?2
                     AND (?3 IS NULL OR span_id = ?3)",
                )
                .map_err(storage)?;
            for trace_id in traces {
                delete
                    .execute(params![project, trace_id, span_id])
                    .map_err(storage)?;
            }
        }
        transaction.commit().map_err(storage)
    }

    /// The traces of `project` that have scores.
    pub fn traces(&self, project: &str) -> Result<Vec<String>> {
        let connection = self.connection();
        let mut statement = connection
            .prepare_cached("SELECT DISTINCT trace_id FROM scores WHERE project = ?1")
            .map_err(storage)?;
        let rows = statement
            .query_map(params![project], |row| row.get(0))
            .map_err(storage)?;
        rows.collect::<rusqlite::Result<Vec<String>>>()
            .map_err(storage)
    }

    pub fn count(&self) -> Result<u64> {
        let connection = self.connection();
        let count: i64 = connection
            .query_row("SELECT COUNT(*) FROM scores", [], |row| row.get(0))
            .map_err(storage)?;
        Ok(count.max(0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(id: &str, trace: char, span: Option<&str>, created_at: i64) -> Score {
        Score {
            project: "p".into(),
            id: id.into(),
            trace_id: trace.to_string().repeat(32),
            span_id: span.map(str::to_string),
            name: "helpful".into(),
            value: Some(1.0),
            label: Some("yes".into()),
            comment: None,
            source: "human".into(),
            created_at,
        }
    }

    #[test]
    fn scores_are_written_replaced_queried_deleted_and_kept_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scores.sqlite");
        let table = ScoreTable::open(&path).unwrap();
        table
            .put(&[
                score("a", 'a', None, 1),
                score("b", 'a', Some("0000000000000001"), 2),
                score("c", 'b', None, 3),
            ])
            .unwrap();
        // the same id replaces
        table
            .put(&[Score {
                value: Some(0.0),
                ..score("a", 'a', None, 4)
            }])
            .unwrap();
        let of_a = table
            .query(&ScoreQuery {
                project: "p".into(),
                trace_id: Some("a".repeat(32)),
                limit: 10,
                ..ScoreQuery::default()
            })
            .unwrap();
        assert_eq!(
            of_a.iter()
                .map(|s| (s.id.as_str(), s.value))
                .collect::<Vec<_>>(),
            vec![("a", Some(0.0)), ("b", Some(1.0))]
        );
        // a bad score refuses the whole batch
        let bad = Score {
            trace_id: "nope".into(),
            ..score("d", 'c', None, 5)
        };
        assert!(table.put(&[score("e", 'c', None, 5), bad]).is_err());
        assert_eq!(table.count().unwrap(), 3);
        table
            .delete_traces(
                "p",
                &BTreeSet::from(["a".repeat(32)]),
                Some("0000000000000001"),
            )
            .unwrap();
        assert_eq!(table.count().unwrap(), 2);
        drop(table);
        let table = ScoreTable::open(&path).unwrap();
        assert_eq!(table.count().unwrap(), 2);
        table
            .delete_traces("p", &BTreeSet::from(["b".repeat(32)]), None)
            .unwrap();
        let left = table
            .query(&ScoreQuery {
                project: "p".into(),
                limit: 10,
                ..ScoreQuery::default()
            })
            .unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].id, "a");
    }
}
