//! Read-only SQL over one project's `spans` and `scores` tables, on Apache DataFusion.
//!
//! Each statement gets its own DataFusion session holding only the asking project's two
//! tables, so nothing else is reachable: no files, no other project, no catalog to write
//! to. Statements that define, write or configure anything are refused at planning; the
//! span scan is bounded by a row budget (refused before reading when over it), memory by a
//! pool limit, wall time by a timeout, and the answer by a row limit.

mod answer;
mod functions;
mod spans;

use std::sync::Arc;

use datafusion::catalog::MemTable;
use datafusion::error::DataFusionError;
use datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use futures::StreamExt;
use llmtrace_model::{Error, Result, ScoreQuery, SqlAnswer, SqlEngine, SqlQuery, Store};
use llmtrace_store::EmbeddedStore;

pub use spans::SpansTable;

/// Memory a statement may hold (hash tables, sorts, its scanned batches are counted apart).
const MEMORY_LIMIT: usize = 2 << 30;

/// The SQL engine of the embedded store.
pub struct Sql {
    store: Arc<EmbeddedStore>,
}

impl Sql {
    pub fn new(store: Arc<EmbeddedStore>) -> Sql {
        Sql { store }
    }

    /// A session that sees the project's two tables and our functions, nothing else.
    fn session(&self, query: &SqlQuery) -> Result<SessionContext> {
        let config = SessionConfig::new()
            .with_target_partitions(std::thread::available_parallelism().map_or(2, |n| n.get()))
            .with_information_schema(true);
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(MEMORY_LIMIT, 1.0)
            .build_arc()
            .map_err(internal)?;
        let context = SessionContext::new_with_config_rt(config, runtime);
        let spans = SpansTable::new(self.store.clone(), &query.project, query.max_scan_rows);
        context
            .register_table("spans", Arc::new(spans))
            .map_err(internal)?;
        let scores = self.store.scores(&ScoreQuery {
            project: query.project.clone(),
            trace_id: None,
            span_id: None,
            name: None,
            limit: usize::try_from(query.max_scan_rows).unwrap_or(usize::MAX),
        })?;
        let batch = answer::scores_batch(&scores).map_err(internal)?;
        let table = MemTable::try_new(batch.schema(), vec![vec![batch]]).map_err(internal)?;
        context
            .register_table("scores", Arc::new(table))
            .map_err(internal)?;
        context.register_udf(functions::json_get());
        context.register_udf(functions::date_trunc());
        Ok(context)
    }

    async fn run(&self, query: &SqlQuery) -> Result<SqlAnswer> {
        let context = self.session(query)?;
        let options = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let frame = context
            .sql_with_options(&query.sql, options)
            .await
            .map_err(refused)?;
        let schema = frame.schema().inner().clone();
        let mut stream = frame.execute_stream().await.map_err(refused)?;
        let mut batches = Vec::new();
        let mut rows = 0;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(refused)?;
            rows += batch.num_rows();
            batches.push(batch);
            if rows > query.max_rows {
                break;
            }
        }
        Ok(answer::of_batches(&schema, &batches, query.max_rows))
    }
}

impl SqlEngine for Sql {
    fn sql(&self, query: &SqlQuery) -> Result<SqlAnswer> {
        // Its own small runtime: the span scan blocks (it reads segments), and a statement
        // runs on the thread that asked, never on the server's request workers.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(internal)?;
        runtime.block_on(async {
            match tokio::time::timeout(query.timeout, self.run(query)).await {
                Ok(answer) => answer,
                Err(_) => Err(Error::BadRequest(format!(
                    "the statement took longer than its budget of {:?}: narrow the time range \
                     (a condition on start_time) or the filter",
                    query.timeout
                ))),
            }
        })
    }
}

fn internal(err: impl std::fmt::Display) -> Error {
    Error::Storage(err.to_string())
}

/// A planning or execution failure: the statement's fault (a 400 naming the problem)
/// unless the store failed underneath.
fn refused(err: DataFusionError) -> Error {
    match err.find_root() {
        DataFusionError::External(inner) => match inner.downcast_ref::<Error>() {
            Some(Error::BadRequest(message)) => Error::BadRequest(message.clone()),
            Some(other) => Error::Storage(other.to_string()),
            None => Error::Storage(inner.to_string()),
        },
        DataFusionError::ResourcesExhausted(message) => Error::BadRequest(format!(
            "the statement needs more memory than its budget ({message}): narrow the time \
             range or group by fewer values"
        )),
        DataFusionError::IoError(_) | DataFusionError::Internal(_) => {
            Error::Storage(err.to_string())
        }
        other => Error::BadRequest(format!("SQL: {}", other.message())),
    }
}
