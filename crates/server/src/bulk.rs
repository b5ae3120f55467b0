//! Bulk ways in and out: JSON trace logs (NDJSON), spans in llmtrace's own JSONL (what
//! `export` writes and `import` sends back), and streamed exports in JSONL, CSV, Parquet
//! and OpenAI fine-tuning JSONL over the search filters.

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use llmtrace_model::{Error, Span, SpanQuery, Store, query::MAX_PAGE_LIMIT};
use serde_json::{Value, json};

use crate::http::{AppState, error_response, project_of, run_store};
use crate::params;

type Shared = std::sync::Arc<AppState>;

/// Reads a body within the size limit, gzip undone; takes an ingest slot.
async fn read_body(
    state: &AppState,
    request: Request,
) -> Result<(HeaderMap, Vec<u8>, tokio::sync::SemaphorePermit<'_>), Error> {
    let headers = request.headers().clone();
    let slot = state.ingest_slots.try_acquire().map_err(|_| {
        Error::Unavailable("too many ingest requests in flight; retry shortly".into())
    })?;
    let body = axum::body::to_bytes(request.into_body(), state.max_body_bytes)
        .await
        .map_err(|_| {
            Error::TooLarge(format!(
                "request body exceeds the {}-byte limit",
                state.max_body_bytes
            ))
        })?;
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok());
    let body = llmtrace_ingest::otlp::decode_content_encoding(
        encoding,
        body.to_vec(),
        state.max_body_bytes,
    )?;
    Ok((headers, body, slot))
}

/// The answer to a bulk write: how many lines were taken, and each refused line's reason.
fn bulk_answer(accepted: usize, errors: &[(usize, String)]) -> Response {
    let errors: Vec<Value> = errors
        .iter()
        .take(100)
        .map(|(line, error)| json!({"line": line, "error": error}))
        .collect();
    let status = if accepted == 0 && !errors.is_empty() {
        axum::http::StatusCode::BAD_REQUEST
    } else {
        axum::http::StatusCode::OK
    };
    (
        status,
        Json(json!({"accepted": accepted, "rejected": errors.len(), "errors": errors})),
    )
        .into_response()
}

/// `POST /api/v1/ingest/logs`: NDJSON trace-log lines (docs/INGEST.md). Bad lines are
/// refused by number; the rest are stored. `x-llmtrace-line` offsets the numbers (for
/// `llmtrace import`, which sends a file in chunks).
pub async fn ingest_logs(State(state): State<Shared>, request: Request) -> Response {
    let (headers, body, _slot) = match read_body(&state, request).await {
        Ok(read) => read,
        Err(err) => return error_response(&err),
    };
    let project = match project_of(&state, &headers) {
        Ok(project) => project,
        Err(err) => return error_response(&err),
    };
    let first_line = first_line(&headers);
    let converted = llmtrace_ingest::jsonlog::convert_ndjson(&body, &project, first_line);
    let accepted = converted.spans.len();
    if let Err(err) = crate::join::store_spans(&state, converted.spans).await {
        return error_response(&err);
    }
    bulk_answer(accepted, &converted.errors)
}

fn first_line(headers: &HeaderMap) -> usize {
    headers
        .get("x-llmtrace-line")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(1)
}

/// `POST /api/v1/import`: spans as llmtrace's own JSONL export writes them, one per line.
/// Stored under their own ids and as they were (so an export imported back is the same, and
/// importing twice stores once), in the project they name unless `x-llmtrace-project` says
/// otherwise.
pub async fn import_spans(State(state): State<Shared>, request: Request) -> Response {
    let (headers, body, _slot) = match read_body(&state, request).await {
        Ok(read) => read,
        Err(err) => return error_response(&err),
    };
    let forced_project = match headers.get("x-llmtrace-project") {
        Some(_) => match project_of(&state, &headers) {
            Ok(project) => Some(project),
            Err(err) => return error_response(&err),
        },
        None => None,
    };
    let first = first_line(&headers);
    let mut spans = Vec::new();
    let mut errors = Vec::new();
    for (index, line) in body.split(|&b| b == b'\n').enumerate() {
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<Span>(line) {
            Ok(mut span) => {
                if let Some(project) = &forced_project {
                    span.project = project.clone();
                }
                if span.project.is_empty() {
                    span.project = state.default_project.clone();
                }
                let valid = llmtrace_ingest::valid_project(&span.project)
                    && llmtrace_model::span::is_valid_hex_id(&span.trace_id, 32)
                    && llmtrace_model::span::is_valid_hex_id(&span.span_id, 16);
                if valid {
                    spans.push(span);
                } else {
                    errors.push((
                        first + index,
                        "project, trace_id (32 hex) or span_id (16 hex) is invalid".to_string(),
                    ));
                }
            }
            Err(e) => errors.push((first + index, format!("not a span: {e}"))),
        }
    }
    let accepted = spans.len();
    if let Err(err) = run_store(&state, move |store| store.append(spans)).await {
        return error_response(&err);
    }
    bulk_answer(accepted, &errors)
}

/// Export formats.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Format {
    Jsonl,
    Csv,
    Parquet,
    /// OpenAI fine-tuning chat format: `{"messages": [...]}` per successful chat call.
    Finetune,
}

impl Format {
    pub fn parse(text: &str) -> Result<Format, Error> {
        Ok(match text {
            "jsonl" | "json" | "ndjson" => Format::Jsonl,
            "csv" => Format::Csv,
            "parquet" => Format::Parquet,
            "openai-finetune" | "finetune" => Format::Finetune,
            other => {
                return Err(Error::BadRequest(format!(
                    "format={other:?}: use jsonl, csv, parquet or openai-finetune"
                )));
            }
        })
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::Jsonl | Format::Finetune => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Parquet => "application/vnd.apache.parquet",
        }
    }

    fn extension(self) -> &'static str {
        match self {
            Format::Jsonl | Format::Finetune => "jsonl",
            Format::Csv => "csv",
            Format::Parquet => "parquet",
        }
    }
}

/// CSV columns: the scalar columns of a span, plus metadata as JSON.
const CSV_COLUMNS: [&str; 28] = [
    "project",
    "trace_id",
    "span_id",
    "parent_span_id",
    "name",
    "kind",
    "source",
    "start_time",
    "end_time",
    "duration_ms",
    "status",
    "session_id",
    "user_id",
    "provider",
    "request_model",
    "model",
    "operation",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "reasoning_tokens",
    "total_tokens",
    "input_cost_usd",
    "output_cost_usd",
    "total_cost_usd",
    "input_text",
    "output_text",
    "metadata",
];

fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_string()
    }
}

fn csv_row(span: &Span) -> String {
    let rfc3339 = |ns: i64| {
        humantime::format_rfc3339_nanos(
            std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns.max(0) as u64),
        )
        .to_string()
    };
    let opt = |v: Option<String>| v.unwrap_or_default();
    let num = |v: Option<i64>| v.map(|n| n.to_string()).unwrap_or_default();
    let float = |v: Option<f64>| v.map(|n| n.to_string()).unwrap_or_default();
    let fields = [
        span.project.clone(),
        span.trace_id.clone(),
        span.span_id.clone(),
        opt(span.parent_span_id.clone()),
        span.name.clone(),
        span.kind.as_str().to_string(),
        span.source.as_str().to_string(),
        rfc3339(span.start_time),
        rfc3339(span.end_time),
        span.duration_ms.to_string(),
        span.status.as_str().to_string(),
        opt(span.session_id.clone()),
        opt(span.user_id.clone()),
        opt(span.provider.clone()),
        opt(span.request_model.clone()),
        opt(span.model.clone()),
        opt(span.operation.clone()),
        num(span.input_tokens),
        num(span.output_tokens),
        num(span.cached_input_tokens),
        num(span.reasoning_tokens),
        num(span.total_tokens),
        float(span.input_cost_usd),
        float(span.output_cost_usd),
        float(span.total_cost_usd),
        span.input_text.clone(),
        span.output_text.clone(),
        serde_json::to_string(&span.metadata).unwrap_or_default(),
    ];
    let mut row = fields
        .iter()
        .map(|f| csv_field(f))
        .collect::<Vec<_>>()
        .join(",");
    row.push('\n');
    row
}

/// A normalized message list → OpenAI chat messages (text parts joined, tool calls kept).
fn openai_messages(messages: &Value) -> Vec<Value> {
    messages
        .as_array()
        .into_iter()
        .flatten()
        .map(|message| {
            let content: String = message["content"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|part| part["text"].as_str())
                .collect::<Vec<_>>()
                .join("");
            let mut out = json!({"role": message["role"], "content": content});
            if let Some(calls) = message["tool_calls"].as_array().filter(|c| !c.is_empty()) {
                out["tool_calls"] = calls
                    .iter()
                    .map(|call| {
                        let arguments = match &call["arguments"] {
                            Value::String(text) => text.clone(),
                            other => other.to_string(),
                        };
                        json!({"id": call["id"], "type": "function", "function": {"name": call["name"], "arguments": arguments}})
                    })
                    .collect();
            }
            for key in ["tool_call_id", "name"] {
                if !message[key].is_null() {
                    out[key] = message[key].clone();
                }
            }
            out
        })
        .collect()
}

/// A successful chat call as one fine-tuning example, if it has both sides.
fn finetune_line(span: &Span) -> Option<String> {
    if span.kind != llmtrace_model::SpanKind::Llm || span.status != llmtrace_model::SpanStatus::Ok {
        return None;
    }
    let mut messages = openai_messages(&span.input);
    let answer = openai_messages(&span.output);
    if messages.is_empty() || answer.is_empty() {
        return None;
    }
    messages.extend(answer);
    let mut line = json!({"messages": messages});
    if let Some(tools) = span.tools.as_array().filter(|t| !t.is_empty()) {
        line["tools"] = Value::Array(tools.clone());
    }
    let mut text = line.to_string();
    text.push('\n');
    Some(text)
}

type Sender = tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>;

/// Writes into the response stream, in chunks of about 256 KiB.
struct StreamWriter {
    sender: Sender,
    buffer: Vec<u8>,
}

impl StreamWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buffer));
        self.sender.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
        })
    }
}

impl std::io::Write for StreamWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= 256 << 10 {
            self.send()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// Where export pages go: a Parquet writer, or text lines.
enum Sink<'a> {
    Parquet(Box<llmtrace_store::export::ParquetExport<&'a mut (dyn std::io::Write + Send)>>),
    Text(&'a mut (dyn std::io::Write + Send), Format),
}

impl Sink<'_> {
    fn write(&mut self, spans: &[Span]) -> anyhow::Result<()> {
        match self {
            Sink::Parquet(writer) => writer.write(spans)?,
            Sink::Text(out, Format::Csv) => {
                for span in spans {
                    out.write_all(csv_row(span).as_bytes())?;
                }
            }
            Sink::Text(out, Format::Finetune) => {
                for line in spans.iter().filter_map(finetune_line) {
                    out.write_all(line.as_bytes())?;
                }
            }
            Sink::Text(out, _) => {
                for span in spans {
                    serde_json::to_writer(&mut **out, span)?;
                    out.write_all(b"\n")?;
                }
            }
        }
        Ok(())
    }

    fn finish(self) -> anyhow::Result<()> {
        match self {
            Sink::Parquet(writer) => writer.finish()?,
            Sink::Text(out, _) => out.flush()?,
        }
        Ok(())
    }
}

/// Pages through the search and writes each page in `format`: memory holds one page.
pub fn export(
    store: &dyn Store,
    mut query: SpanQuery,
    format: Format,
    out: &mut (dyn std::io::Write + Send),
) -> anyhow::Result<u64> {
    query.limit = MAX_PAGE_LIMIT;
    if format == Format::Csv {
        out.write_all(CSV_COLUMNS.join(",").as_bytes())?;
        out.write_all(b"\n")?;
    }
    let mut sink = match format {
        Format::Parquet => {
            Sink::Parquet(Box::new(llmtrace_store::export::ParquetExport::new(out)?))
        }
        _ => Sink::Text(out, format),
    };
    let mut rows = 0u64;
    loop {
        let page = store.search(&query)?;
        rows += page.spans.len() as u64;
        sink.write(&page.spans)?;
        match page.next_cursor {
            Some(cursor) => query.cursor = Some(cursor),
            None => break,
        }
    }
    sink.finish()?;
    Ok(rows)
}

/// `GET /api/v1/export?format=jsonl|csv|parquet|openai-finetune&<search filters>`:
/// streamed as it is read, newest first; every span kind unless `kind=` says otherwise.
pub async fn export_route(
    State(state): State<Shared>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let parsed = match params::parse(
        &pairs,
        &state.default_project,
        &["format"],
        llmtrace_store::now_ns(),
    ) {
        Ok(parsed) => parsed,
        Err(err) => return error_response(&err),
    };
    let format = match pairs
        .iter()
        .find(|(name, _)| name == "format")
        .map(|(_, value)| Format::parse(value))
        .unwrap_or(Ok(Format::Jsonl))
    {
        Ok(format) => format,
        Err(err) => return error_response(&err),
    };
    let mut filter = parsed.filter;
    if format == Format::Finetune && filter.kinds.is_empty() {
        filter.kinds = vec![llmtrace_model::SpanKind::Llm];
    }
    let query = SpanQuery::new(filter);
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || {
        let mut writer = StreamWriter {
            sender: sender.clone(),
            buffer: Vec::with_capacity(256 << 10),
        };
        if let Err(e) = export(store.as_ref(), query, format, &mut writer) {
            // the status is sent already: end the body with an error so the client sees a
            // broken transfer, not a silently short file
            tracing::warn!("export stopped: {e:#}");
            let _ = sender.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(receiver));
    (
        [
            (header::CONTENT_TYPE, format.content_type().to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"llmtrace-export.{}\"",
                    format.extension()
                ),
            ),
        ],
        body,
    )
        .into_response()
}
