//! OpenAI's stored-completions API over the chat calls the gateway recorded (and those
//! `llmtrace import openai` brought in):
//! `GET /v1/chat/completions` (limit, after, order, model, `metadata[key]=value`),
//! `GET /v1/chat/completions/{id}`, `GET /v1/chat/completions/{id}/messages` and
//! `DELETE /v1/chat/completions/{id}`, shaped like OpenAI's answers so the `openai` SDK's
//! `chat.completions.list/retrieve/messages.list/delete` work against llmtrace.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use llmtrace_model::{
    Deletion, Error, Span, SpanFilter, SpanKind, SpanQuery, Store, query::MAX_PAGE_LIMIT,
};
use serde_json::{Map, Value, json};

use crate::http::{AppState, project_of, run_store};

type Shared = std::sync::Arc<AppState>;

const RESPONSE_ID: &str = "gen_ai.response.id";

/// Errors in OpenAI's shape, so the SDK raises its usual exceptions.
fn openai_error(err: &Error) -> Response {
    let code = err.code();
    let kind = match code.http_status() {
        404 => "not_found_error",
        400 => "invalid_request_error",
        _ => "server_error",
    };
    (
        axum::http::StatusCode::from_u16(code.http_status()).unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR),
        Json(json!({"error": {"message": err.to_string(), "type": kind, "param": null, "code": null}})),
    )
        .into_response()
}

/// Chat calls the gateway recorded (or `import openai` brought in), in `project`.
fn chat_filter(project: &str) -> SpanFilter {
    let mut filter = SpanFilter::for_project(project);
    filter.kinds = vec![SpanKind::Llm];
    filter.attributes = vec![("url.path".into(), "/v1/chat/completions".into())];
    filter
}

fn find(store: &dyn Store, project: &str, id: &str) -> llmtrace_model::Result<Option<Span>> {
    let mut filter = chat_filter(project);
    filter.attributes.push((RESPONSE_ID.into(), id.to_string()));
    Ok(store
        .search(&SpanQuery::new(filter))?
        .spans
        .into_iter()
        .next())
}

fn completion_id(span: &Span) -> Option<&str> {
    span.attributes.get(RESPONSE_ID).and_then(Value::as_str)
}

/// A normalized message → an OpenAI chat message.
fn openai_message(message: &Value) -> Map<String, Value> {
    let text: Vec<&str> = message["content"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|part| part["type"] == "text")
        .filter_map(|part| part["text"].as_str())
        .collect();
    let refusal = message["content"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|part| part["type"] == "refusal")
        .and_then(|part| part["text"].as_str());
    let mut out = Map::new();
    out.insert("role".into(), message["role"].clone());
    out.insert(
        "content".into(),
        if text.is_empty() {
            Value::Null
        } else {
            Value::from(text.join(""))
        },
    );
    if let Some(refusal) = refusal {
        out.insert("refusal".into(), refusal.into());
    }
    if let Some(calls) = message["tool_calls"].as_array().filter(|c| !c.is_empty()) {
        let calls: Vec<Value> = calls
            .iter()
            .map(|call| {
                let arguments = match &call["arguments"] {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                json!({"id": call["id"], "type": "function", "function": {"name": call["name"], "arguments": arguments}})
            })
            .collect();
        out.insert("tool_calls".into(), Value::Array(calls));
    }
    for key in ["tool_call_id", "name"] {
        if !message[key].is_null() {
            out.insert(key.into(), message[key].clone());
        }
    }
    out
}

/// A recorded call as a `chat.completion` object.
fn completion(span: &Span) -> Value {
    let extra = span
        .attributes
        .get("llmtrace.response")
        .cloned()
        .unwrap_or(Value::Null);
    let choices: Vec<Value> = span
        .output
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(index, message)| {
            let mut message = openai_message(message);
            message.entry("refusal").or_insert(Value::Null);
            message.insert("annotations".into(), json!([]));
            json!({"index": index, "message": message, "finish_reason": span.finish_reason, "logprobs": null})
        })
        .collect();
    let usage = span.input_tokens.map(|input| {
        json!({
            "prompt_tokens": input,
            "completion_tokens": span.output_tokens.unwrap_or(0),
            "total_tokens": span.total_tokens.unwrap_or(input + span.output_tokens.unwrap_or(0)),
            "prompt_tokens_details": {"cached_tokens": span.cached_input_tokens.unwrap_or(0)},
            "completion_tokens_details": {"reasoning_tokens": span.reasoning_tokens.unwrap_or(0)},
        })
    });
    json!({
        "id": completion_id(span),
        "object": "chat.completion",
        "created": extra.get("created").and_then(Value::as_i64).unwrap_or(span.start_time / 1_000_000_000),
        "model": span.model,
        "choices": choices,
        "usage": usage,
        "metadata": span.metadata,
        "service_tier": extra.get("service_tier").cloned().unwrap_or(Value::Null),
        "system_fingerprint": extra.get("system_fingerprint").cloned().unwrap_or(Value::Null),
        "request_id": span.trace_id,
    })
}

fn param<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn limit(pairs: &[(String, String)]) -> Result<usize, Error> {
    match param(pairs, "limit") {
        None => Ok(20),
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=100).contains(&n) => Ok(n),
            _ => Err(Error::BadRequest(format!(
                "limit={text:?} must be between 1 and 100"
            ))),
        },
    }
}

fn ascending(pairs: &[(String, String)]) -> Result<bool, Error> {
    match param(pairs, "order") {
        None | Some("asc") => Ok(true),
        Some("desc") => Ok(false),
        Some(other) => Err(Error::BadRequest(format!(
            "order={other:?}: use asc or desc"
        ))),
    }
}

/// `order=asc` reads at most this many calls (the store pages newest first).
const ASC_SCAN_LIMIT: usize = 100_000;

fn list_page(
    store: &dyn Store,
    filter: SpanFilter,
    ascending: bool,
    after: Option<&str>,
    limit: usize,
) -> llmtrace_model::Result<(Vec<Span>, bool)> {
    let mut query = SpanQuery::new(filter);
    query.limit = MAX_PAGE_LIMIT;
    if !ascending {
        // newest first: start just after `after`
        if let Some(after) = after {
            let Some(anchor) = find(store, &query.filter.project, after)? else {
                return Err(Error::NotFound(format!("no chat completion {after:?}")));
            };
            query.cursor = Some(llmtrace_model::Cursor(anchor.order_key()));
        }
        query.limit = limit + 1;
        let page = store.search(&query)?;
        let more = page.spans.len() > limit;
        let spans: Vec<Span> = page.spans.into_iter().take(limit).collect();
        return Ok((spans, more));
    }
    // oldest first: read newest first up to the anchor (or the scan limit), then reverse
    let mut newer_first = Vec::new();
    loop {
        let page = store.search(&query)?;
        let mut reached = false;
        for span in page.spans {
            if after.is_some() && completion_id(&span) == after {
                reached = true;
                break;
            }
            newer_first.push(span);
        }
        if reached || newer_first.len() >= ASC_SCAN_LIMIT {
            break;
        }
        match page.next_cursor {
            Some(cursor) => query.cursor = Some(cursor),
            None => break,
        }
    }
    newer_first.reverse();
    let more = newer_first.len() > limit;
    newer_first.truncate(limit);
    Ok((newer_first, more))
}

fn list_body(data: Vec<Value>, more: bool, id_of: impl Fn(&Value) -> Value) -> Value {
    let first = data.first().map(&id_of).unwrap_or(Value::Null);
    let last = data.last().map(&id_of).unwrap_or(Value::Null);
    json!({"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": more})
}

/// `GET /v1/chat/completions`.
pub async fn list(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let result = async {
        let project = project_of(&state, &headers)?;
        let limit = limit(&pairs)?;
        let ascending = ascending(&pairs)?;
        let mut filter = chat_filter(&project);
        for (key, value) in &pairs {
            if let Some(name) = key
                .strip_prefix("metadata[")
                .and_then(|k| k.strip_suffix(']'))
            {
                filter.metadata.push((name.to_string(), value.clone()));
            } else if key == "model" {
                filter.model = Some(value.clone());
            } else if !["limit", "after", "order"].contains(&key.as_str()) {
                return Err(Error::BadRequest(format!(
                    "unknown parameter {key:?}; known: limit, after, order, model, metadata[<key>]"
                )));
            }
        }
        let after = param(&pairs, "after").map(str::to_string);
        let (spans, more) = run_store(&state, move |store| {
            list_page(store, filter, ascending, after.as_deref(), limit)
        })
        .await?;
        let data: Vec<Value> = spans
            .iter()
            .filter(|s| completion_id(s).is_some())
            .map(completion)
            .collect();
        Ok::<_, Error>(list_body(data, more, |c| c["id"].clone()))
    }
    .await;
    match result {
        Ok(body) => Json(body).into_response(),
        Err(err) => openai_error(&err),
    }
}

async fn lookup(state: &Shared, headers: &HeaderMap, id: String) -> Result<Span, Error> {
    let project = project_of(state, headers)?;
    let shown = id.clone();
    run_store(state, move |store| find(store, &project, &id))
        .await?
        .ok_or_else(|| Error::NotFound(format!("no chat completion {shown:?}")))
}

/// `GET /v1/chat/completions/{id}`.
pub async fn retrieve(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    match lookup(&state, &headers, id).await {
        Ok(span) => Json(completion(&span)).into_response(),
        Err(err) => openai_error(&err),
    }
}

/// `GET /v1/chat/completions/{id}/messages`: the request's messages, with ids.
pub async fn messages(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let result = async {
        let limit = limit(&pairs)?;
        let ascending = ascending(&pairs)?;
        let span = lookup(&state, &headers, id.clone()).await?;
        let mut all: Vec<Value> = span
            .input
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(index, message)| {
                let mut message = openai_message(message);
                message.insert("id".into(), format!("{id}-{index}").into());
                message.insert("content_parts".into(), Value::Null);
                Value::Object(message)
            })
            .collect();
        if !ascending {
            all.reverse();
        }
        if let Some(after) = param(&pairs, "after") {
            match all.iter().position(|m| m["id"] == after) {
                Some(position) => {
                    all.drain(..=position);
                }
                None => return Err(Error::NotFound(format!("no message {after:?} in {id}"))),
            }
        }
        let more = all.len() > limit;
        all.truncate(limit);
        Ok::<_, Error>(list_body(all, more, |m| m["id"].clone()))
    }
    .await;
    match result {
        Ok(body) => Json(body).into_response(),
        Err(err) => openai_error(&err),
    }
}

/// `DELETE /v1/chat/completions/{id}`: the recorded call is deleted.
pub async fn delete(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        let span = lookup(&state, &headers, id.clone()).await?;
        let deletion = Deletion {
            project: span.project.clone(),
            trace_id: Some(span.trace_id.clone()),
            span_id: Some(span.span_id.clone()),
            ..Deletion::default()
        };
        run_store(&state, move |store| store.delete(&deletion)).await?;
        Ok::<_, Error>(json!({"object": "chat.completion.deleted", "id": id, "deleted": true}))
    }
    .await;
    match result {
        Ok(body) => Json(body).into_response(),
        Err(err) => openai_error(&err),
    }
}
