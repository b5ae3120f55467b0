//! HTTP routes: health, OTLP/HTTP ingest, the search API, the OpenAPI document.
//! Handlers only decode, validate and call the store (on the blocking pool).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use llmtrace_ingest::otlp::{self, Encoding};
use llmtrace_ingest::{convert_traces, valid_project};
use llmtrace_model::{
    AggregateQuery, Error, ErrorCode, Span, SpanKind, SpanQuery, SpanSource, SqlEngine, SqlQuery,
    Store,
};
use prost::Message;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::params;

pub struct AppState {
    pub store: Arc<dyn Store>,
    pub sql: Arc<dyn SqlEngine>,
    pub gateway: Arc<llmtrace_gateway::Gateway>,
    pub pricer: Arc<llmtrace_cost::Pricer>,
    pub billing: Arc<crate::cost_api::Billing>,
    pub default_project: String,
    pub max_body_bytes: usize,
    pub ingest_slots: Semaphore,
    pub metrics_requests: std::sync::atomic::AtomicU64,
    pub log_records: std::sync::atomic::AtomicU64,
    pub join: tokio::sync::Mutex<crate::join::Pending>,
    pub agent_traces: tokio::sync::Mutex<crate::agents::Traces>,
    /// Acknowledged batches, for live-tail pages.
    pub live: crate::ui::live::Batches,
}

type Shared = Arc<AppState>;

/// Routes served on the main port.
pub fn router(state: Shared) -> Router {
    otlp_router()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/traces", get(search_llm_calls))
        .route("/api/v1/spans", get(search_spans))
        .route("/api/v1/traces/{trace_id}", get(get_trace))
        .route("/api/v1/sessions/{session_id}", get(get_session))
        .route("/api/v1/aggregate", get(aggregate))
        .route("/api/v1/sql", get(sql_get).post(sql_post))
        .route("/v1/traces/ingest", post(crate::agents::ingest))
        .route("/api/v1/ingest/logs", post(crate::bulk::ingest_logs))
        .route("/api/v1/import", post(crate::bulk::import_spans))
        .route("/api/v1/export", get(crate::bulk::export_route))
        .route("/v1/chat/completions", get(crate::completions::list))
        .route(
            "/v1/chat/completions/{id}",
            get(crate::completions::retrieve).delete(crate::completions::delete),
        )
        .route(
            "/v1/chat/completions/{id}/messages",
            get(crate::completions::messages),
        )
        .route(
            "/api/v1/scores",
            get(crate::scores::list).post(crate::scores::put),
        )
        .route("/api/v1/pricing", get(crate::cost_api::pricing))
        .route("/api/v1/reprice", post(crate::cost_api::reprice_route))
        .route("/api/v1/billing", post(crate::cost_api::upload_billing))
        .route(
            "/api/v1/reconciliation",
            get(crate::cost_api::reconciliation),
        )
        .route("/api/openapi.json", get(openapi))
        .with_state(state)
}

/// OTLP/HTTP routes only (served on 4318 as well).
fn otlp_router() -> Router<Shared> {
    Router::new()
        .route("/v1/traces", post(ingest_traces))
        .route("/api/public/otel/v1/traces", post(ingest_traces))
        .route("/v1/logs", post(ingest_logs))
        .route("/v1/metrics", post(ingest_metrics))
}

pub fn otlp_only(state: Shared) -> Router {
    otlp_router()
        .route("/health", get(health))
        .with_state(state)
}

async fn health() -> &'static str {
    "ok"
}

/// Prometheus text exposition of the counters operators watch.
async fn metrics(State(state): State<Shared>) -> Response {
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let gateway = state.gateway.stats();
    let counters = [
        (
            "llmtrace_gateway_calls_total",
            "Calls proxied by the gateway.",
            gateway.calls.load(Relaxed),
        ),
        (
            "llmtrace_gateway_recorded_total",
            "Gateway calls stored as spans.",
            gateway.recorded.load(Relaxed),
        ),
        (
            "llmtrace_gateway_dropped_total",
            "Gateway calls not recorded: capture queue full.",
            gateway.dropped.load(Relaxed),
        ),
        (
            "llmtrace_gateway_failed_total",
            "Gateway calls the store refused.",
            gateway.failed.load(Relaxed),
        ),
        (
            "llmtrace_gateway_not_traced_total",
            "Gateway calls sent with x-llmtrace-trace: off.",
            gateway.not_traced.load(Relaxed),
        ),
        (
            "llmtrace_cost_priced_total",
            "Model calls priced from the catalogue or the config.",
            state.pricer.stats.priced.load(Relaxed),
        ),
        (
            "llmtrace_cost_unpriced_total",
            "Model calls left without cost: no price for their model.",
            state.pricer.stats.unpriced.load(Relaxed),
        ),
        (
            "llmtrace_cost_reported_total",
            "Model calls whose source reported the cost (kept as sent).",
            state.pricer.stats.reported.load(Relaxed),
        ),
        (
            "llmtrace_tokens_estimated_total",
            "Model calls whose tokens were estimated (the source reported none).",
            state.pricer.stats.estimated.load(Relaxed),
        ),
        (
            "llmtrace_otlp_metrics_requests_total",
            "OTLP metrics requests accepted (not stored).",
            state.metrics_requests.load(Relaxed),
        ),
    ];
    let mut out = String::new();
    for (name, help, value) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
    match run_store(&state, |store| store.stats()).await {
        Ok(stats) => {
            let store = [
                (
                    "llmtrace_store_rows",
                    "gauge",
                    "Span rows in memory and in segments.",
                    stats.rows as f64,
                ),
                (
                    "llmtrace_store_memtable_rows",
                    "gauge",
                    "Span rows not yet flushed to a segment.",
                    stats.memtable_rows as f64,
                ),
                (
                    "llmtrace_store_segments",
                    "gauge",
                    "Segment files.",
                    stats.segments as f64,
                ),
                (
                    "llmtrace_store_segment_bytes",
                    "gauge",
                    "Bytes of segment files.",
                    stats.segment_bytes as f64,
                ),
                (
                    "llmtrace_store_wal_bytes",
                    "gauge",
                    "Bytes of write-ahead log not yet flushed.",
                    stats.wal_bytes as f64,
                ),
                (
                    "llmtrace_store_quarantined",
                    "gauge",
                    "Corrupt segment files moved aside at open.",
                    stats.quarantined as f64,
                ),
                (
                    "llmtrace_store_append_wait_seconds_total",
                    "counter",
                    "Time appends waited for flushing to catch up (ingest at flushing's pace).",
                    stats.append_wait_ms as f64 / 1000.0,
                ),
            ];
            for (name, kind, help, value) in store {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
                );
            }
        }
        Err(err) => tracing::warn!(error = %err, "store statistics unavailable for /metrics"),
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// The API's error body: `{"error": {"code", "message"}}` with the matching status.
pub fn error_response(err: &Error) -> Response {
    let code = err.code();
    let status =
        StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (
        status,
        Json(json!({"error": {"code": code.as_str(), "message": err.to_string()}})),
    )
        .into_response();
    if matches!(code, ErrorCode::RateLimited | ErrorCode::Unavailable) {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// google.rpc.Status, the body of OTLP/HTTP failures.
#[derive(Clone, PartialEq, Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

fn otlp_error(encoding: Encoding, err: &Error) -> Response {
    let code = err.code();
    let status =
        StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let grpc_code = match code {
        ErrorCode::BadRequest => 3,
        ErrorCode::NotFound => 5,
        ErrorCode::TooLarge | ErrorCode::RateLimited => 8,
        ErrorCode::Unavailable => 14,
        ErrorCode::Internal => 13,
    };
    let body = match encoding {
        Encoding::Protobuf => RpcStatus {
            code: grpc_code,
            message: err.to_string(),
        }
        .encode_to_vec(),
        Encoding::Json => json!({"code": grpc_code, "message": err.to_string()})
            .to_string()
            .into_bytes(),
    };
    let mut response = (
        status,
        [(header::CONTENT_TYPE, encoding.content_type())],
        body,
    )
        .into_response();
    if matches!(code, ErrorCode::RateLimited | ErrorCode::Unavailable) {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// The project a request writes to or reads from: `x-llmtrace-project`, else the default.
pub fn project_of(state: &AppState, headers: &HeaderMap) -> Result<String, Error> {
    match header_text(headers, "x-llmtrace-project") {
        Some(project) if valid_project(project) => Ok(project.to_string()),
        Some(project) => Err(Error::BadRequest(format!(
            "x-llmtrace-project {project:?} is not a valid project name"
        ))),
        None => Ok(state.default_project.clone()),
    }
}

/// Reads the body within the size limit, undoes gzip, and works out the encoding.
async fn read_otlp_body(
    state: &AppState,
    request: Request,
) -> Result<(Encoding, HeaderMap, Vec<u8>), (Encoding, Error)> {
    let headers = request.headers().clone();
    let content_type = header_text(&headers, "content-type").unwrap_or("");
    let encoding = Encoding::from_content_type(content_type).ok_or_else(|| {
        (
            Encoding::Json,
            Error::BadRequest(format!(
                "content-type {content_type:?} is not supported: send application/x-protobuf or application/json"
            )),
        )
    })?;
    let body = axum::body::to_bytes(request.into_body(), state.max_body_bytes)
        .await
        .map_err(|_| {
            (
                encoding,
                Error::TooLarge(format!(
                    "request body exceeds the {}-byte limit",
                    state.max_body_bytes
                )),
            )
        })?;
    let body = otlp::decode_content_encoding(
        header_text(&headers, "content-encoding"),
        body.to_vec(),
        state.max_body_bytes,
    )
    .map_err(|e| (encoding, e))?;
    Ok((encoding, headers, body))
}

/// Reads an OTLP request and takes an ingest slot; refuses with 503 when none is free.
async fn admit_otlp(
    state: &AppState,
    request: Request,
) -> Result<
    (
        Encoding,
        HeaderMap,
        Vec<u8>,
        tokio::sync::SemaphorePermit<'_>,
    ),
    (Encoding, Error),
> {
    let (encoding, headers, body) = read_otlp_body(state, request).await?;
    let slot = state.ingest_slots.try_acquire().map_err(|_| {
        (
            encoding,
            Error::Unavailable("too many ingest requests in flight; retry shortly".into()),
        )
    })?;
    Ok((encoding, headers, body, slot))
}

async fn ingest_traces(State(state): State<Shared>, request: Request) -> Response {
    let (encoding, headers, body, _slot) = match admit_otlp(&state, request).await {
        Ok(admitted) => admitted,
        Err((encoding, err)) => return otlp_error(encoding, &err),
    };
    let result = async {
        let project = project_of(&state, &headers)?;
        let request = otlp::decode_traces(encoding, &body)?;
        let converted = convert_traces(&request, &project, SpanSource::Otlp);
        crate::join::store_spans(&state, converted.spans).await?;
        Ok::<_, Error>((converted.rejected, converted.errors))
    }
    .await;
    match result {
        Ok((rejected, errors)) => otlp_success(encoding, rejected, "rejectedSpans", &errors),
        Err(err) => otlp_error(encoding, &err),
    }
}

fn otlp_success(
    encoding: Encoding,
    rejected: u64,
    json_field: &str,
    errors: &[String],
) -> Response {
    let message = errors.join("; ");
    let body = match encoding {
        Encoding::Protobuf => {
            use opentelemetry_proto::tonic::collector::trace::v1::{
                ExportTracePartialSuccess, ExportTraceServiceResponse,
            };
            // The partial-success message has the same shape for traces and logs.
            ExportTraceServiceResponse {
                partial_success: (rejected > 0).then_some(ExportTracePartialSuccess {
                    rejected_spans: rejected as i64,
                    error_message: message,
                }),
            }
            .encode_to_vec()
        }
        Encoding::Json if rejected > 0 => {
            json!({"partialSuccess": {json_field: rejected.to_string(), "errorMessage": message}})
                .to_string()
                .into_bytes()
        }
        Encoding::Json => b"{}".to_vec(),
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, encoding.content_type())],
        body,
    )
        .into_response()
}

async fn ingest_logs(State(state): State<Shared>, request: Request) -> Response {
    let (encoding, headers, body, _slot) = match admit_otlp(&state, request).await {
        Ok(admitted) => admitted,
        Err((encoding, err)) => return otlp_error(encoding, &err),
    };
    let result = async {
        let project = project_of(&state, &headers)?;
        let request = otlp::decode_logs(encoding, &body)?;
        let converted = llmtrace_ingest::logs::convert_logs(&request, &project);
        let stored = converted.events.len() as u64;
        state.log_records.fetch_add(
            stored + converted.unattached,
            std::sync::atomic::Ordering::Relaxed,
        );
        crate::join::store_log_events(&state, converted.events).await?;
        Ok::<_, Error>(converted.unattached)
    }
    .await;
    match result {
        // Records naming no span are accepted but not kept: say so on the warning channel.
        Ok(0) => otlp_success(encoding, 0, "rejectedLogRecords", &[]),
        Ok(unattached) => otlp_warning(
            encoding,
            &format!("{unattached} log records name no span and were not stored"),
        ),
        Err(err) => otlp_error(encoding, &err),
    }
}

/// A success whose partial_success carries a message and no rejections (the OTLP warning channel).
fn otlp_warning(encoding: Encoding, message: &str) -> Response {
    let body = match encoding {
        Encoding::Protobuf => {
            use opentelemetry_proto::tonic::collector::logs::v1::{
                ExportLogsPartialSuccess, ExportLogsServiceResponse,
            };
            ExportLogsServiceResponse {
                partial_success: Some(ExportLogsPartialSuccess {
                    rejected_log_records: 0,
                    error_message: message.to_string(),
                }),
            }
            .encode_to_vec()
        }
        Encoding::Json => json!({"partialSuccess": {"errorMessage": message}})
            .to_string()
            .into_bytes(),
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, encoding.content_type())],
        body,
    )
        .into_response()
}

/// Metrics are accepted (Traceloop sends them) and counted, not stored.
async fn ingest_metrics(State(state): State<Shared>, request: Request) -> Response {
    let encoding = header_text(request.headers(), "content-type")
        .and_then(Encoding::from_content_type)
        .unwrap_or(Encoding::Protobuf);
    if axum::body::to_bytes(request.into_body(), state.max_body_bytes)
        .await
        .is_err()
    {
        return otlp_error(encoding, &Error::TooLarge("metrics body too large".into()));
    }
    state
        .metrics_requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let body: Bytes = match encoding {
        Encoding::Json => Bytes::from_static(b"{}"),
        Encoding::Protobuf => Bytes::new(),
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, encoding.content_type())],
        body,
    )
        .into_response()
}

/// Runs store work on the blocking pool (appends wait for fsync; reads scan files).
pub async fn run_store<T: Send + 'static>(
    state: &AppState,
    work: impl FnOnce(&dyn Store) -> llmtrace_model::Result<T> + Send + 'static,
) -> Result<T, Error> {
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || work(store.as_ref()))
        .await
        .map_err(|e| Error::Storage(e.to_string()))?
}

fn rfc3339(ns: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns.max(0) as u64);
    humantime::format_rfc3339_nanos(time).to_string()
}

/// One row of `GET /v1/traces`: an LLM call.
fn llm_call_row(span: &Span) -> Value {
    json!({
        "trace_id": span.trace_id,
        "span_id": span.span_id,
        "tenant_id": span.project,
        "timestamp": rfc3339(span.start_time),
        "model": span.model.as_ref().or(span.request_model.as_ref()),
        "provider": span.provider,
        "input_text": span.input_text,
        "output_text": span.output_text,
        "input_tokens": span.input_tokens,
        "output_tokens": span.output_tokens,
        "cached_input_tokens": span.cached_input_tokens,
        "reasoning_tokens": span.reasoning_tokens,
        "usage_source": span.usage_source,
        "total_cost_usd": span.total_cost_usd,
        "cost": crate::cost_api::cost_fields(span),
        "latency_ms": span.duration_ms,
        "status": span.status.as_str(),
        "routing_alias": span.routing_alias,
        "metadata": span.metadata,
        "session_id": span.session_id,
        "user_id": span.user_id,
    })
}

/// One search page: filters from the query string, `default_kinds` when none is given,
/// each row shaped by `row`.
async fn search_page(
    state: &AppState,
    pairs: &[(String, String)],
    default_kinds: &[SpanKind],
    row: fn(&Span) -> Value,
) -> Response {
    let parsed = match params::parse(pairs, &state.default_project, &[], llmtrace_store::now_ns()) {
        Ok(parsed) => parsed,
        Err(err) => return error_response(&err),
    };
    let mut filter = parsed.filter;
    if filter.kinds.is_empty() {
        filter.kinds = default_kinds.to_vec();
    }
    let query = SpanQuery {
        filter,
        limit: parsed.limit,
        cursor: parsed.cursor,
    };
    match run_store(state, move |store| store.search(&query)).await {
        Ok(page) => Json(json!({
            "data": page.spans.iter().map(row).collect::<Vec<_>>(),
            "next_cursor": page.next_cursor.map(|c| c.encode()),
        }))
        .into_response(),
        Err(err) => error_response(&err),
    }
}

/// `GET /v1/traces`: one row per LLM call.
async fn search_llm_calls(
    State(state): State<Shared>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    search_page(
        &state,
        &pairs,
        &[SpanKind::Llm, SpanKind::Embedding],
        llm_call_row,
    )
    .await
}

/// `GET /api/v1/spans`: whole spans of every kind.
async fn search_spans(
    State(state): State<Shared>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    search_page(&state, &pairs, &[], |span| json!(span)).await
}

fn project_param(state: &AppState, pairs: &[(String, String)]) -> Result<String, Error> {
    let mut project = state.default_project.clone();
    for (name, value) in pairs {
        match name.as_str() {
            "project" | "tenant_id" if valid_project(value) => project = value.clone(),
            "project" | "tenant_id" => {
                return Err(Error::BadRequest(format!(
                    "{name}={value:?} is not a valid project name"
                )));
            }
            other => {
                return Err(Error::BadRequest(format!(
                    "unknown parameter {other:?}; known: project"
                )));
            }
        }
    }
    Ok(project)
}

async fn get_trace(
    State(state): State<Shared>,
    Path(trace_id): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    // the Agents SDK shows its ids as `trace_<32 hex>`
    let trace_id = trace_id.to_ascii_lowercase();
    let trace_id = trace_id
        .strip_prefix("trace_")
        .unwrap_or(&trace_id)
        .to_string();
    if !llmtrace_model::span::is_valid_hex_id(&trace_id, 32) {
        return error_response(&Error::BadRequest(format!(
            "{trace_id:?} is not a 32-character hex trace id"
        )));
    }
    let project = match project_param(&state, &pairs) {
        Ok(project) => project,
        Err(err) => return error_response(&err),
    };
    let id = trace_id.clone();
    match run_store(&state, move |store| store.trace(&project, &id)).await {
        Ok(spans) if spans.is_empty() => {
            error_response(&Error::NotFound(format!("trace {trace_id} not found")))
        }
        Ok(spans) => Json(json!({"trace_id": trace_id, "spans": spans})).into_response(),
        Err(err) => error_response(&err),
    }
}

async fn get_session(
    State(state): State<Shared>,
    Path(session_id): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let project = match project_param(&state, &pairs) {
        Ok(project) => project,
        Err(err) => return error_response(&err),
    };
    let id = session_id.clone();
    match run_store(&state, move |store| store.session(&project, &id)).await {
        Ok(traces) if traces.is_empty() => error_response(&Error::NotFound(format!(
            "session {session_id:?} not found"
        ))),
        Ok(traces) => Json(json!({"session_id": session_id, "traces": traces})).into_response(),
        Err(err) => error_response(&err),
    }
}

async fn aggregate(
    State(state): State<Shared>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let parsed = match params::parse(
        &pairs,
        &state.default_project,
        &["group_by", "bucket"],
        llmtrace_store::now_ns(),
    ) {
        Ok(parsed) => parsed,
        Err(err) => return error_response(&err),
    };
    let query = AggregateQuery {
        filter: parsed.filter,
        bucket_seconds: parsed.bucket_seconds,
        group_by: parsed.group_by,
    };
    let names: Vec<String> = query.group_by.iter().map(|d| d.name()).collect();
    match run_store(&state, move |store| store.aggregate(&query)).await {
        Ok(rows) => Json(json!({"group_by": names, "data": rows})).into_response(),
        Err(err) => error_response(&err),
    }
}

/// Ceilings on what one SQL request may ask for.
const SQL_MAX_ROWS: usize = 1_000_000;
const SQL_MAX_SCAN_ROWS: u64 = 200_000_000;
const SQL_MAX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// `POST /api/v1/sql` with `{"sql", "project"?, "max_rows"?, "max_scan_rows"?, "timeout_ms"?}`.
async fn sql_post(State(state): State<Shared>, body: Bytes) -> Response {
    let request: Value = match serde_json::from_slice(&body) {
        Ok(Value::Object(request)) => Value::Object(request),
        Ok(_) => {
            return error_response(&Error::BadRequest("the body must be a JSON object".into()));
        }
        Err(err) => {
            return error_response(&Error::BadRequest(format!("the body is not JSON: {err}")));
        }
    };
    let mut pairs = Vec::new();
    for (name, value) in request.as_object().into_iter().flatten() {
        let text = match value {
            Value::String(text) => text.clone(),
            Value::Number(number) => number.to_string(),
            _ => {
                return error_response(&Error::BadRequest(format!(
                    "{name} must be a string or a number"
                )));
            }
        };
        pairs.push((name.clone(), text));
    }
    run_sql(&state, &pairs).await
}

/// `GET /api/v1/sql?q=…`: the same, with the statement in `q` (or `sql`).
async fn sql_get(
    State(state): State<Shared>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    run_sql(&state, &pairs).await
}

async fn run_sql(state: &AppState, pairs: &[(String, String)]) -> Response {
    let query = match sql_query(state, pairs) {
        Ok(query) => query,
        Err(err) => return error_response(&err),
    };
    let engine = state.sql.clone();
    let started = std::time::Instant::now();
    let answered = tokio::task::spawn_blocking(move || engine.sql(&query))
        .await
        .map_err(|e| Error::Storage(e.to_string()))
        .and_then(|answer| answer);
    match answered {
        Ok(answer) => {
            let mut body = json!(answer);
            body["elapsed_ms"] = json!(started.elapsed().as_secs_f64() * 1e3);
            Json(body).into_response()
        }
        Err(err) => error_response(&err),
    }
}

fn sql_query(state: &AppState, pairs: &[(String, String)]) -> Result<SqlQuery, Error> {
    let mut query = SqlQuery::new(state.default_project.clone(), String::new());
    let number = |name: &str, value: &str, most: u64| -> Result<u64, Error> {
        match value.parse::<u64>() {
            Ok(n) if (1..=most).contains(&n) => Ok(n),
            _ => Err(Error::BadRequest(format!(
                "{name}={value:?} must be a whole number from 1 to {most}"
            ))),
        }
    };
    for (name, value) in pairs {
        match name.as_str() {
            "q" | "sql" => query.sql = value.clone(),
            "project" if valid_project(value) => query.project = value.clone(),
            "project" => {
                return Err(Error::BadRequest(format!(
                    "project={value:?} is not a valid project name"
                )));
            }
            "max_rows" => {
                query.max_rows = number(name, value, SQL_MAX_ROWS as u64)? as usize;
            }
            "max_scan_rows" => query.max_scan_rows = number(name, value, SQL_MAX_SCAN_ROWS)?,
            "timeout_ms" => {
                let most = SQL_MAX_TIMEOUT.as_millis() as u64;
                query.timeout = std::time::Duration::from_millis(number(name, value, most)?);
            }
            other => {
                return Err(Error::BadRequest(format!(
                    "unknown parameter {other:?}; known: sql (or q), project, max_rows, \
                     max_scan_rows, timeout_ms"
                )));
            }
        }
    }
    if query.sql.trim().is_empty() {
        return Err(Error::BadRequest(
            "no statement: give it as sql (or q)".into(),
        ));
    }
    Ok(query)
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(crate::openapi::document().to_string()),
    )
        .into_response()
}
