//! Errors of the embedded store.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("encoding failed: {0}")]
    Encode(String),
    #[error("segment {path}: {message}")]
    Segment { path: PathBuf, message: String },
    #[error("manifest {path}: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("scores table: {0}")]
    Scores(String),
    #[error("the store is shutting down")]
    Closed,
    #[error("the store is behind: {0} bytes wait to be flushed; retry later")]
    Backlog(usize),
    #[error(
        "the query would read {rows} rows, more than its budget of {max_rows}: narrow the \
         time range (a condition on start_time) or the filter"
    )]
    OverBudget { rows: u64, max_rows: u64 },
}

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn encode(err: impl std::fmt::Display) -> Error {
        Error::Encode(err.to_string())
    }

    pub fn segment(path: &Path, message: impl std::fmt::Display) -> Error {
        Error::Segment {
            path: path.to_path_buf(),
            message: message.to_string(),
        }
    }
}

impl From<Error> for llmtrace_model::Error {
    fn from(err: Error) -> llmtrace_model::Error {
        match err {
            Error::Closed | Error::Backlog(_) => {
                llmtrace_model::Error::Unavailable(err.to_string())
            }
            Error::OverBudget { .. } => llmtrace_model::Error::BadRequest(err.to_string()),
            other => llmtrace_model::Error::Storage(other.to_string()),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
