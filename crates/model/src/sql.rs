//! Read-only SQL: the seam between the API and an engine that answers SQL over one
//! project's `spans` and `scores` tables (DataFusion over the embedded store; a later
//! ClickHouse backend answers it itself).

use std::time::Duration;

use serde::Serialize;

use crate::Result;

/// One read-only SQL statement over one project's tables, with its budgets.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlQuery {
    pub project: String,
    pub sql: String,
    /// Rows of the answer; more are cut off and the answer says so.
    pub max_rows: usize,
    /// Span rows the statement may read; a statement that would read more is refused before
    /// it reads any.
    pub max_scan_rows: u64,
    /// Wall time the statement may take.
    pub timeout: Duration,
}

impl SqlQuery {
    pub const DEFAULT_MAX_ROWS: usize = 10_000;
    pub const DEFAULT_MAX_SCAN_ROWS: u64 = 20_000_000;
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

    pub fn new(project: impl Into<String>, sql: impl Into<String>) -> SqlQuery {
        SqlQuery {
            project: project.into(),
            sql: sql.into(),
            max_rows: SqlQuery::DEFAULT_MAX_ROWS,
            max_scan_rows: SqlQuery::DEFAULT_MAX_SCAN_ROWS,
            timeout: SqlQuery::DEFAULT_TIMEOUT,
        }
    }
}

/// A column of an answer: its name and its type as the engine names it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SqlColumn {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
}

/// What a statement answered: columns, then rows of JSON values in column order (numbers,
/// strings, booleans, null; times as RFC 3339 text).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SqlAnswer {
    pub columns: Vec<SqlColumn>,
    pub rows: Vec<Vec<serde_json::Value>>,
    /// The statement had more rows than `max_rows`; the first `max_rows` are here.
    pub truncated: bool,
}

/// Answers read-only SQL. Statements that write, define or configure anything are refused
/// as bad requests, as are statements over budget.
pub trait SqlEngine: Send + Sync {
    fn sql(&self, query: &SqlQuery) -> Result<SqlAnswer>;
}
