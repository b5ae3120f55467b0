//! `POST /v1/traces/ingest`: the OpenAI Agents SDK's own exporter, pointed at llmtrace.
//!
//! Converted items (ingest::agents) get their trace's session, user and metadata — from a
//! trace object in the same batch, one remembered from an earlier batch, or a span of the
//! trace already stored — and are stored. A trace object that arrives after some of its
//! spans re-stores those spans with its session. `response` spans (the SDK's default model
//! only exports a response id and usage) are joined with the gateway's record of the same
//! call, found by its indexed `gen_ai.response.id`: the SDK span takes the call's
//! model, messages, parameters and timings, and the gateway's span is rewritten as a stub
//! that points to it, so the call is counted once.

use std::collections::HashMap;
use std::time::Duration;

use axum::Json;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use llmtrace_ingest::agents::{self, TraceInfo};
use llmtrace_model::{Error, Span, SpanFilter, SpanKind, SpanQuery, SpanSource, Store};
use serde_json::{Value, json};

use crate::http::{AppState, error_response, run_store};

type Shared = std::sync::Arc<AppState>;

/// Trace objects seen lately, by (project, trace id): spans arrive in later batches.
#[derive(Default)]
pub struct Traces {
    known: HashMap<(String, String), TraceInfo>,
}

/// Remembered trace objects; past this the memory starts over (stored spans still carry
/// what the trace said, and are asked instead).
const MAX_TRACES: usize = 100_000;

fn response_id(span: &Span) -> Option<&str> {
    span.attributes
        .get("gen_ai.response.id")
        .and_then(Value::as_str)
}

/// The gateway's span of the call that produced `wanted` (a response id), if stored: the
/// response id is an indexed attribute.
fn gateway_call(
    store: &dyn Store,
    span: &Span,
    wanted: &str,
) -> llmtrace_model::Result<Option<Span>> {
    let mut filter = SpanFilter::for_project(&span.project);
    filter.source = Some(SpanSource::Gateway);
    filter.kinds = vec![SpanKind::Llm];
    filter.attributes = vec![("gen_ai.response.id".into(), wanted.to_string())];
    Ok(store
        .search(&SpanQuery::new(filter))?
        .spans
        .into_iter()
        .next())
}

/// The SDK span takes the call's content from the gateway span; the gateway span becomes
/// a stub pointing at it. Returns both new versions.
fn join(mut sdk: Span, mut call: Span) -> (Span, Span) {
    sdk.model = call.model.clone();
    sdk.request_model = call.request_model.clone();
    sdk.provider = call.provider.clone();
    sdk.routing_alias = call.routing_alias.clone();
    sdk.operation = call.operation.clone();
    sdk.stream = call.stream;
    sdk.temperature = call.temperature;
    sdk.max_tokens = call.max_tokens;
    sdk.top_p = call.top_p;
    sdk.finish_reason = call.finish_reason.clone();
    sdk.time_to_first_token_ms = call.time_to_first_token_ms;
    sdk.http_status = call.http_status;
    sdk.input = std::mem::take(&mut call.input);
    sdk.output = std::mem::take(&mut call.output);
    sdk.input_text = std::mem::take(&mut call.input_text);
    sdk.output_text = std::mem::take(&mut call.output_text);
    sdk.tools = std::mem::take(&mut call.tools);
    if call.input_tokens.is_some() {
        sdk.input_tokens = call.input_tokens;
        sdk.output_tokens = call.output_tokens;
        sdk.cached_input_tokens = call.cached_input_tokens;
        sdk.reasoning_tokens = call.reasoning_tokens;
        sdk.total_tokens = call.total_tokens;
        sdk.usage_source = call.usage_source.clone();
    }
    if sdk.user_id.is_none() {
        sdk.user_id = call.user_id.clone();
    }
    for (key, value) in &call.metadata {
        sdk.metadata
            .entry(key.clone())
            .or_insert_with(|| value.clone());
    }
    if let Some(model) = &sdk.model {
        sdk.name = format!("response {model}");
    }
    if let (Value::Object(into), Value::Object(from)) = (&mut sdk.attributes, &call.attributes) {
        for (key, value) in from {
            into.entry(key.clone()).or_insert_with(|| value.clone());
        }
        into.remove(llmtrace_cost::COST_ATTRIBUTE);
        into.insert(
            "llmtrace.joined_from".into(),
            json!({"trace_id": call.trace_id, "span_id": call.span_id}),
        );
    }
    (sdk.input_cost_usd, sdk.output_cost_usd, sdk.total_cost_usd) = (None, None, None);
    // the stub keeps its identity and timing, not the call's content or usage
    call.kind = SpanKind::Other;
    call.name = format!("{} (recorded in agent trace {})", call.name, sdk.trace_id);
    (call.input_tokens, call.output_tokens, call.total_tokens) = (None, None, None);
    (
        call.cached_input_tokens,
        call.reasoning_tokens,
        call.usage_source,
    ) = (None, None, None);
    (
        call.input_cost_usd,
        call.output_cost_usd,
        call.total_cost_usd,
    ) = (None, None, None);
    call.pricing_version = None;
    if let Value::Object(attributes) = &mut call.attributes {
        attributes.remove(llmtrace_cost::COST_ATTRIBUTE);
        attributes.insert(
            "llmtrace.joined_into".into(),
            json!({"trace_id": sdk.trace_id, "span_id": sdk.span_id}),
        );
    }
    (sdk, call)
}

/// Joins what can be joined now; returns the spans still waiting for the gateway's record.
fn join_responses(store: &dyn Store, spans: Vec<Span>) -> llmtrace_model::Result<Vec<Span>> {
    let mut updates = Vec::new();
    let mut waiting = Vec::new();
    for span in spans {
        let Some(id) = response_id(&span).map(str::to_string) else {
            continue;
        };
        match gateway_call(store, &span, &id)? {
            Some(call) => {
                let (sdk, stub) = join(span, call);
                updates.push(sdk);
                updates.push(stub);
            }
            None => waiting.push(span),
        }
    }
    if !updates.is_empty() {
        store.append(updates)?;
    }
    Ok(waiting)
}

/// The trace info for each span's trace: batch, memory, or a stored span of the trace.
async fn trace_infos(
    state: &AppState,
    batch: &[TraceInfo],
    spans: &[Span],
    project: &str,
) -> Result<HashMap<String, TraceInfo>, Error> {
    let mut infos: HashMap<String, TraceInfo> = HashMap::new();
    {
        let mut traces = state.agent_traces.lock().await;
        if traces.known.len() + batch.len() > MAX_TRACES {
            traces.known.clear();
        }
        for info in batch {
            traces
                .known
                .insert((project.to_string(), info.trace_id.clone()), info.clone());
            infos.insert(info.trace_id.clone(), info.clone());
        }
        for span in spans {
            if let Some(info) = traces
                .known
                .get(&(project.to_string(), span.trace_id.clone()))
            {
                infos
                    .entry(span.trace_id.clone())
                    .or_insert_with(|| info.clone());
            }
        }
    }
    let unknown: Vec<String> = spans
        .iter()
        .map(|s| s.trace_id.clone())
        .filter(|t| !infos.contains_key(t))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if unknown.is_empty() {
        return Ok(infos);
    }
    let project_owned = project.to_string();
    let found = run_store(state, move |store| {
        let mut found = Vec::new();
        for trace in unknown {
            // a span stored earlier already carries what its trace object said
            let stored = store.trace(&project_owned, &trace)?;
            if let Some(known) = stored.iter().find(|s| {
                s.source == SpanSource::AgentsSdk
                    && (s.session_id.is_some() || s.metadata.contains_key("workflow"))
            }) {
                let mut metadata = serde_json::Map::new();
                for (key, value) in &known.metadata {
                    metadata.insert(key.clone(), Value::from(value.clone()));
                }
                found.push(TraceInfo {
                    trace_id: trace.clone(),
                    original_id: String::new(),
                    workflow_name: known.metadata.get("workflow").cloned(),
                    group_id: known.session_id.clone(),
                    metadata,
                });
            }
        }
        Ok(found)
    })
    .await?;
    for info in found {
        infos.insert(info.trace_id.clone(), info);
    }
    Ok(infos)
}

/// Stores one converted batch.
pub async fn store(
    state: &Shared,
    converted: agents::Converted,
    project: &str,
) -> Result<(), Error> {
    let agents::Converted {
        mut spans, traces, ..
    } = converted;
    let infos = trace_infos(state, &traces, &spans, project).await?;
    for span in &mut spans {
        if let Some(info) = infos.get(&span.trace_id) {
            info.apply(span);
        }
    }
    // spans stored before their trace object came get its session now
    let late: Vec<TraceInfo> = traces;
    let project_owned = project.to_string();
    let batch_keys: std::collections::HashSet<_> = spans.iter().map(Span::key).collect();
    let earlier = run_store(state, move |store| {
        let mut updated = Vec::new();
        for info in late {
            for mut span in store.trace(&project_owned, &info.trace_id)? {
                if span.source == SpanSource::AgentsSdk
                    && !batch_keys.contains(&span.key())
                    && span.session_id != info.group_id
                {
                    let before = span.clone();
                    info.apply(&mut span);
                    if span != before {
                        updated.push(span);
                    }
                }
            }
        }
        Ok(updated)
    })
    .await?;
    spans.extend(earlier);
    let responses: Vec<Span> = spans
        .iter()
        .filter(|s| response_id(s).is_some() && s.model.is_none())
        .cloned()
        .collect();
    run_store(state, move |store| store.append(spans)).await?;
    if responses.is_empty() {
        return Ok(());
    }
    let waiting = run_store(state, move |store| join_responses(store, responses)).await?;
    if !waiting.is_empty() {
        // the gateway's recorder may not have stored the call yet: look again shortly
        let store = state.store.clone();
        tokio::spawn(async move {
            let mut waiting = waiting;
            for delay in [2, 10] {
                tokio::time::sleep(Duration::from_secs(delay)).await;
                let store = store.clone();
                let pending = std::mem::take(&mut waiting);
                match tokio::task::spawn_blocking(move || join_responses(store.as_ref(), pending))
                    .await
                {
                    Ok(Ok(left)) if !left.is_empty() => waiting = left,
                    Ok(Ok(_)) => return,
                    Ok(Err(e)) => {
                        tracing::warn!("agents response join failed: {e}");
                        return;
                    }
                    Err(_) => return,
                }
            }
        });
    }
    Ok(())
}

/// The route handler.
pub async fn ingest(State(state): State<Shared>, request: Request) -> Response {
    let project = match crate::http::project_of(&state, request.headers()) {
        Ok(project) => project,
        Err(err) => return error_response(&err),
    };
    let Ok(_slot) = state.ingest_slots.try_acquire() else {
        return error_response(&Error::Unavailable(
            "too many ingest requests in flight; retry shortly".into(),
        ));
    };
    let body = match axum::body::to_bytes(request.into_body(), state.max_body_bytes).await {
        Ok(body) => body,
        Err(_) => {
            return error_response(&Error::TooLarge(format!(
                "request body exceeds the {}-byte limit",
                state.max_body_bytes
            )));
        }
    };
    let items = match agents::items(&body) {
        Ok(items) => items,
        Err(err) => return error_response(&err),
    };
    let converted = agents::convert(&items, &project);
    let errors = converted.errors.clone();
    if !errors.is_empty() {
        tracing::warn!(count = errors.len(), first = %errors[0], "agents ingest: items skipped");
    }
    match store(&state, converted, &project).await {
        Ok(()) => Json(json!({"accepted": items.len() - errors.len(), "rejected": errors.len(), "errors": errors})).into_response(),
        Err(err) => error_response(&err),
    }
}
