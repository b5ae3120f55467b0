//! `POST /api/v1/scores` and `GET /api/v1/scores`: judgements on traces and spans (a
//! user's feedback, a reviewer's grade), stored in the store's scores table.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use llmtrace_model::{Error, Score, ScoreQuery};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::{AppState, error_response, project_of, run_store};

/// Largest number of scores one request may carry.
const MAX_BATCH: usize = 10_000;

/// A score as clients send it: the project comes from the request, `id` and `source` have
/// defaults, `created_at` is the server's clock.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewScore {
    id: Option<String>,
    trace_id: String,
    span_id: Option<String>,
    name: String,
    value: Option<f64>,
    label: Option<String>,
    comment: Option<String>,
    source: Option<String>,
}

impl NewScore {
    /// Without an id, one score per trace, span, name and source: sending it again (a
    /// thumbs-up turned down) replaces it.
    fn into_score(self, project: &str, now: i64) -> Score {
        let trace_id = self.trace_id.to_ascii_lowercase();
        let span_id = self.span_id.map(|s| s.to_ascii_lowercase());
        let source = self.source.unwrap_or_else(|| "api".into());
        let id = self.id.unwrap_or_else(|| {
            format!(
                "{trace_id}:{}:{}:{source}",
                span_id.as_deref().unwrap_or("-"),
                self.name
            )
        });
        Score {
            project: project.to_string(),
            id,
            trace_id,
            span_id,
            name: self.name,
            value: self.value,
            label: self.label,
            comment: self.comment,
            source,
            created_at: now,
        }
    }
}

/// `POST /api/v1/scores`: one score object or an array of them; all or none are stored.
pub async fn put(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let result = async {
        let project = project_of(&state, &headers)?;
        let parsed: Value = serde_json::from_slice(&body)
            .map_err(|e| Error::BadRequest(format!("body is not JSON: {e}")))?;
        let items = match parsed {
            Value::Array(items) => items,
            object @ Value::Object(_) => vec![object],
            _ => {
                return Err(Error::BadRequest(
                    "send a score object or an array of them".into(),
                ));
            }
        };
        if items.len() > MAX_BATCH {
            return Err(Error::TooLarge(format!(
                "{} scores in one request; at most {MAX_BATCH}",
                items.len()
            )));
        }
        let now = llmtrace_store::now_ns();
        let mut scores = Vec::with_capacity(items.len());
        for (index, item) in items.into_iter().enumerate() {
            let score: NewScore = serde_json::from_value(item)
                .map_err(|e| Error::BadRequest(format!("score {index}: {e}")))?;
            let score = score.into_score(&project, now);
            score
                .validate()
                .map_err(|e| Error::BadRequest(format!("score {index}: {e}")))?;
            scores.push(score);
        }
        let ids: Vec<String> = scores.iter().map(|s| s.id.clone()).collect();
        run_store(&state, move |store| store.put_scores(scores)).await?;
        Ok::<_, Error>(ids)
    }
    .await;
    match result {
        Ok(ids) => Json(json!({"stored": ids.len(), "ids": ids})).into_response(),
        Err(err) => error_response(&err),
    }
}

/// `GET /api/v1/scores?trace_id=&span_id=&name=&limit=`: newest first.
pub async fn list(
    State(state): State<Arc<AppState>>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let result = async {
        let mut query = ScoreQuery {
            project: state.default_project.clone(),
            limit: 100,
            ..ScoreQuery::default()
        };
        for (name, value) in pairs {
            match name.as_str() {
                "project" | "tenant_id" if llmtrace_ingest::valid_project(&value) => {
                    query.project = value
                }
                "trace_id" => query.trace_id = Some(value.to_ascii_lowercase()),
                "span_id" => query.span_id = Some(value.to_ascii_lowercase()),
                "name" => query.name = Some(value),
                "limit" => {
                    query.limit = value
                        .parse()
                        .ok()
                        .filter(|limit| (1..=1000).contains(limit))
                        .ok_or_else(|| {
                            Error::BadRequest(format!("limit={value:?}: use 1 to 1000"))
                        })?
                }
                other => {
                    return Err(Error::BadRequest(format!(
                        "unknown or invalid parameter {other}={value:?}; known: project, trace_id, span_id, name, limit"
                    )));
                }
            }
        }
        run_store(&state, move |store| store.scores(&query)).await
    }
    .await;
    match result {
        Ok(scores) => Json(json!({"data": scores})).into_response(),
        Err(err) => error_response(&err),
    }
}
