//! The gateway: OpenAI- and Anthropic-compatible routes that relay each call to its upstream
//! unchanged and record it as a span, off the request path.
//!
//! Data path: request → route (provider prefix, alias, default) → upstream attempt(s) →
//! response relayed chunk by chunk while a copy is kept → `Exchange` queued → recorder
//! thread: span (capture.rs), session inference, store append.

pub mod api;
pub mod capture;
pub mod config;
pub mod priority;
pub mod recorder;
pub mod relay;
pub mod sessions;
pub mod upstream;

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use http_body_util::BodyExt;
use llmtrace_model::span::is_valid_hex_id;
use llmtrace_model::{SpanStatus, Store};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::Api;
use crate::capture::Exchange;
pub use crate::config::{GatewayConfig, ProviderConfig, ProviderKind, StoreFalse};
use crate::recorder::{Recorder, RecorderConfig, Stats};
use crate::relay::{Captured, Outcome, Relay};
use crate::upstream::{Clients, Routes, Target};

pub struct Gateway {
    routes: Routes,
    clients: Clients,
    recorder: Recorder,
    config: GatewayConfig,
    default_project: String,
    max_body_bytes: usize,
    ids: IdSource,
    pricer: Option<Arc<llmtrace_cost::Pricer>>,
}

impl Gateway {
    /// Resolves providers (keys from `env`), builds the client and starts the recorder.
    pub fn new(
        config: GatewayConfig,
        store: Arc<dyn Store>,
        default_project: String,
        max_body_bytes: usize,
        env: &HashMap<String, String>,
        pricer: Option<Arc<llmtrace_cost::Pricer>>,
    ) -> Result<Gateway, String> {
        let routes = Routes::new(&config, env)?;
        let clients = Clients::new(&config)?;
        let recorder = Recorder::start(
            store,
            RecorderConfig {
                sessions_file: config
                    .state_dir
                    .as_ref()
                    .map(|dir| dir.join("gateway").join("sessions.json")),
                ..RecorderConfig::new(config.queue_capacity, config.infer_sessions)
            },
        );
        Ok(Gateway {
            routes,
            clients,
            recorder,
            config,
            default_project,
            max_body_bytes,
            ids: IdSource::default(),
            pricer,
        })
    }

    pub fn stats(&self) -> &Arc<Stats> {
        self.recorder.handle().stats()
    }

    /// Names and kinds of the providers in effect, for the startup log.
    pub fn providers(&self) -> Vec<String> {
        self.routes
            .providers
            .iter()
            .map(|p| format!("{}({:?})", p.name, p.kind))
            .collect()
    }

    /// Records what is queued, then stops recording (call after the listeners stopped).
    pub fn stop(&self) {
        self.recorder.stop();
    }
}

/// The gateway's routes; mount them beside the rest of the API. `/v1/{*path}` catches every
/// other `/v1` path, so routes registered elsewhere for `/v1/...` take precedence.
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        // GET (list stored completions) is the server's: only calls are proxied here
        .route("/v1/chat/completions", post(proxy))
        .route("/v1/responses", any(proxy))
        .route("/v1/embeddings", any(proxy))
        .route("/v1/completions", any(proxy))
        .route("/v1/models", any(proxy))
        .route("/v1/messages", any(proxy))
        .route("/v1/{*path}", any(proxy))
        .with_state(gateway)
}

/// Random-looking ids: a per-process random SipHash key over a counter.
#[derive(Default)]
struct IdSource {
    keys: std::hash::RandomState,
    counter: AtomicU64,
}

impl IdSource {
    fn next(&self) -> u64 {
        let mut hasher = self.keys.build_hasher();
        hasher.write_u64(self.counter.fetch_add(1, Ordering::Relaxed));
        hasher.finish()
    }

    fn trace_id(&self) -> String {
        format!("{:016x}{:016x}", self.next(), self.next())
    }

    fn span_id(&self) -> String {
        format!("{:016x}", self.next() | 1)
    }
}

/// The fields of a request body the request path needs; the rest is read off the path.
#[derive(Deserialize, Default)]
struct Head {
    model: Option<String>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    store: Option<bool>,
}

#[derive(Deserialize, Default)]
struct StreamOptions {
    include_usage: Option<bool>,
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|value| !value.is_empty())
}

/// An error in the shape the calling SDK parses.
fn error_response(api: Api, status: StatusCode, kind: &str, message: &str) -> Response {
    let body = if api == Api::AnthropicMessages {
        json!({"type": "error", "error": {"type": kind, "message": message}})
    } else {
        json!({"error": {"message": message, "type": kind, "param": null, "code": kind}})
    };
    (status, axum::Json(body)).into_response()
}

/// `x-llmtrace-trace`: whether and how much of this call to record.
#[derive(Clone, Copy, PartialEq)]
enum Tracing {
    Full,
    MetadataOnly,
    Off,
}

/// A parsed W3C `traceparent`: (trace id, parent span id). Invalid headers are ignored.
fn traceparent(headers: &HeaderMap) -> Option<(String, String)> {
    let value = header_text(headers, "traceparent")?;
    let mut parts = value.split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    let valid = version.len() == 2
        && version != "ff"
        && u8::from_str_radix(version, 16).is_ok()
        && is_valid_hex_id(trace, 32)
        && is_valid_hex_id(parent, 16)
        && flags.len() == 2
        && u8::from_str_radix(flags, 16).is_ok()
        && (version != "00" || value.len() == 55);
    valid.then(|| (trace.to_string(), parent.to_string()))
}

fn caller_fingerprint(headers: &HeaderMap) -> Option<String> {
    let credential = ["authorization", "x-api-key", "api-key"]
        .iter()
        .find_map(|name| header_text(headers, name))?;
    // a fixed-key hash: stable across restarts, and 64 bits reveal nothing of a key
    let mut hasher = std::hash::DefaultHasher::new();
    hasher.write(credential.as_bytes());
    Some(format!("{:016x}", hasher.finish()))
}

/// The body sent to a target: the model rewritten when routing changed it, and stream usage
/// requested when the client did not ask for it. Untouched bytes otherwise.
fn upstream_body(body: &Bytes, head: &Head, target: &Target, inject_usage: bool) -> Bytes {
    let rename = target.model.is_some() && target.model != head.model;
    if !rename && !inject_usage {
        return body.clone();
    }
    let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(body) else {
        return body.clone();
    };
    if rename && let Some(model) = &target.model {
        object.insert("model".into(), Value::String(model.clone()));
    }
    if inject_usage {
        let options = object.entry("stream_options").or_insert_with(|| json!({}));
        if let Value::Object(options) = options {
            options.insert("include_usage".into(), Value::Bool(true));
        } else {
            *options = json!({"include_usage": true});
        }
    }
    serde_json::to_vec(&Value::Object(object))
        .map(Bytes::from)
        .unwrap_or_else(|_| body.clone())
}

/// Answers up to this size are read whole, so their cost can go in a header.
const COST_HEADER_MAX_BYTES: usize = 1 << 20;

/// Whether an upstream status makes an alias try its next target.
fn retryable(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// Why no upstream answered: the span's status, the client's HTTP status, a message.
type Failure = (SpanStatus, StatusCode, String);

/// What every attempt of one call sends.
struct Outgoing<'a> {
    parts: &'a axum::http::request::Parts,
    body: &'a Bytes,
    head: &'a Head,
    inject_usage: bool,
    traceparent: Option<HeaderValue>,
}

impl Gateway {
    /// The call's tracing mode and project from our headers; a bad value is the client's
    /// mistake, answered 400 with this message.
    fn admit(&self, headers: &HeaderMap) -> Result<(Tracing, String), String> {
        let tracing = match header_text(headers, "x-llmtrace-trace") {
            None | Some("on") | Some("full") => Tracing::Full,
            Some("metadata-only") => Tracing::MetadataOnly,
            Some("off") => Tracing::Off,
            Some(other) => {
                return Err(format!(
                    "x-llmtrace-trace must be off, metadata-only or full, got {other:?}"
                ));
            }
        };
        let project = match header_text(headers, "x-llmtrace-project") {
            None => self.default_project.clone(),
            Some(project) if llmtrace_ingest::valid_project(project) => project.to_string(),
            Some(project) => {
                return Err(format!(
                    "x-llmtrace-project {project:?} is not a valid project name"
                ));
            }
        };
        Ok((tracing, project))
    }

    /// Tries the targets in order until one answers with something other than a retryable
    /// status (the last target's answer is taken whatever it is). Returns the response and
    /// its provider, or the last failure, and a summary of every attempt.
    async fn send(
        &self,
        call: &Outgoing<'_>,
        targets: &[Target],
    ) -> (
        Result<(hyper::Response<hyper::body::Incoming>, usize), Failure>,
        Vec<Value>,
    ) {
        let mut attempts = Vec::new();
        let mut outcome = Err((
            SpanStatus::Error,
            StatusCode::BAD_GATEWAY,
            "no provider".to_string(),
        ));
        for (index, target) in targets.iter().enumerate() {
            let provider = &self.routes.providers[target.provider];
            let summary = |result: &str| json!({"provider": provider.name, "model": target.model, "result": result});
            match self.attempt(call, target).await {
                Ok(response) => {
                    attempts.push(summary(response.status().as_str()));
                    if index + 1 < targets.len() && retryable(response.status()) {
                        continue;
                    }
                    return (Ok((response, target.provider)), attempts);
                }
                Err(failure) => {
                    attempts.push(summary(&failure.2));
                    outcome = Err(failure);
                }
            }
        }
        (outcome, attempts)
    }

    /// One upstream request, waiting at most `first_byte_timeout` for its response head.
    async fn attempt(
        &self,
        call: &Outgoing<'_>,
        target: &Target,
    ) -> Result<hyper::Response<hyper::body::Incoming>, Failure> {
        let provider = &self.routes.providers[target.provider];
        let bad_gateway = |message: String| (SpanStatus::Error, StatusCode::BAD_GATEWAY, message);
        let model = target.model.as_deref().or(call.head.model.as_deref());
        let uri = provider
            .url(call.parts.uri.path(), call.parts.uri.query(), model)
            .map_err(bad_gateway)?;
        let request = upstream::request(
            call.parts.method.clone(),
            uri,
            provider.headers(&call.parts.headers, call.traceparent.clone()),
            upstream_body(call.body, call.head, target, call.inject_usage),
        )
        .map_err(bad_gateway)?;
        let first_byte = self
            .config
            .first_byte_timeout
            .min(self.config.total_timeout);
        let client = self.clients.of(provider);
        match tokio::time::timeout(first_byte, client.request(request)).await {
            Err(_) => Err((
                SpanStatus::Timeout,
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "upstream {} sent no response within {}",
                    provider.name,
                    humantime::format_duration(first_byte)
                ),
            )),
            Ok(Err(e)) => Err(bad_gateway(format!(
                "upstream {} is unreachable: {e}",
                provider.name
            ))),
            Ok(Ok(response)) => Ok(response),
        }
    }
}

/// `x-llmtrace-metadata-<key>: value` headers as metadata pairs.
fn header_metadata(headers: &HeaderMap) -> BTreeMap<String, String> {
    headers
        .iter()
        .filter_map(|(name, value)| {
            let key = name.as_str().strip_prefix("x-llmtrace-metadata-")?;
            Some((key.to_string(), value.to_str().ok()?.to_string()))
        })
        .collect()
}

async fn proxy(State(gateway): State<Arc<Gateway>>, request: Request) -> Response {
    let started = Instant::now();
    let start_unix_nano = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let api = Api::of(&path);
    let body = match axum::body::to_bytes(body, gateway.max_body_bytes).await {
        Ok(body) => body,
        Err(_) => {
            let message = format!(
                "request body exceeds the gateway's {}-byte limit",
                gateway.max_body_bytes
            );
            return error_response(
                api,
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                &message,
            );
        }
    };
    let headers = &parts.headers;
    let (tracing_mode, project) = match gateway.admit(headers) {
        Ok(admitted) => admitted,
        Err(message) => {
            return error_response(
                api,
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &message,
            );
        }
    };
    // a body that is not a JSON object is forwarded as it is; the upstream judges it
    let head: Head = serde_json::from_slice(&body).unwrap_or_default();
    let streamed = head.stream == Some(true);
    let client_asked_usage =
        head.stream_options.as_ref().and_then(|o| o.include_usage) == Some(true);
    let inject_usage = streamed && api.usage_on_request() && !client_asked_usage;

    let (trace_id, parent_span_id) = match traceparent(headers) {
        Some((trace, parent)) => (trace, Some(parent)),
        None => (gateway.ids.trace_id(), None),
    };
    let span_id = gateway.ids.span_id();
    let outgoing_traceparent = parent_span_id
        .as_ref()
        .and_then(|_| HeaderValue::try_from(format!("00-{trace_id}-{span_id}-01")).ok());

    // generic calls carrying Anthropic's version header go to the Anthropic provider
    let route_api = if api == Api::Other && headers.contains_key("anthropic-version") {
        Api::AnthropicMessages
    } else {
        api
    };
    let (targets, alias) = gateway.routes.resolve(route_api, head.model.as_deref());
    let deadline = tokio::time::Instant::from_std(started) + gateway.config.total_timeout;

    let outgoing = Outgoing {
        parts: &parts,
        body: &body,
        head: &head,
        inject_usage,
        traceparent: outgoing_traceparent,
    };
    let (outcome, attempts) = gateway.send(&outgoing, &targets).await;
    let final_target = match &outcome {
        Ok((_, provider)) => *provider,
        Err(_) => targets.last().map(|t| t.provider).unwrap_or(0),
    };
    let keep_content = match tracing_mode {
        Tracing::Full => {
            head.store != Some(false) || gateway.config.store_false == StoreFalse::Full
        }
        _ => false,
    };
    let exchange = Box::new(Exchange {
        api,
        method: parts.method.to_string(),
        path: path.clone(),
        project,
        trace_id: trace_id.clone(),
        span_id,
        parent_span_id,
        start_unix_nano,
        started,
        provider: gateway.routes.providers[final_target].name.clone(),
        request_model: head.model.clone(),
        alias,
        session_id: header_text(headers, "x-llmtrace-session-id").map(str::to_string),
        user_id: header_text(headers, "x-llmtrace-user-id").map(str::to_string),
        metadata: header_metadata(headers),
        keep_content,
        caller: caller_fingerprint(headers),
        request: body,
        http_status: None,
        response_encoding: None,
        streamed,
        response: None,
        failure: None,
        attempts,
    });
    let recorder = gateway.recorder.handle().clone();
    recorder.stats().calls.fetch_add(1, Ordering::Relaxed);
    let record = move |exchange: Box<Exchange>| {
        if tracing_mode == Tracing::Off {
            recorder.stats().not_traced.fetch_add(1, Ordering::Relaxed);
        } else {
            recorder.record(exchange);
        }
    };
    let trace_header = HeaderValue::try_from(trace_id).ok();

    let (response, _) = match outcome {
        Ok(answered) => answered,
        Err((status, http, message)) => {
            let mut exchange = exchange;
            exchange.failure = Some((status, message.clone()));
            exchange.http_status = Some(http.as_u16());
            record(exchange);
            let kind = if status == SpanStatus::Timeout {
                "timeout"
            } else {
                "upstream_error"
            };
            let mut response = error_response(api, http, kind, &message);
            if let Some(value) = trace_header {
                response.headers_mut().insert("x-llmtrace-trace-id", value);
            }
            return response;
        }
    };

    let (upstream_parts, upstream_body) = response.into_parts();
    let mut exchange = exchange;
    exchange.http_status = Some(upstream_parts.status.as_u16());
    exchange.response_encoding = upstream_parts
        .headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| v != "identity");
    let is_sse = upstream_parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    exchange.streamed = is_sse;
    let priceable = matches!(
        api,
        Api::Chat | Api::Completions | Api::Responses | Api::AnthropicMessages | Api::Embeddings
    );
    let small = upstream_parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|length| length <= COST_HEADER_MAX_BYTES);
    if let Some(pricer) = &gateway.pricer
        && gateway.config.cost_header
        && priceable
        && small
        && !is_sse
        && upstream_parts.status.is_success()
    {
        let collected = tokio::time::timeout_at(deadline, upstream_body.collect()).await;
        let elapsed_us = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
        let (outcome, bytes) = match collected {
            Ok(Ok(collected)) => (Outcome::Completed, collected.to_bytes()),
            Ok(Err(e)) => (
                Outcome::Failed(format!("upstream body failed: {e}")),
                Bytes::new(),
            ),
            Err(_) => (Outcome::Timeout, Bytes::new()),
        };
        let failed = outcome != Outcome::Completed;
        let cost = (!failed)
            .then(|| {
                let span = capture::usage_span(
                    api,
                    &exchange.project,
                    &exchange.provider,
                    exchange.request_model.as_deref(),
                    &bytes,
                )?;
                pricer.total_cost(&span)
            })
            .flatten();
        let kept = bytes.len().min(gateway.config.max_capture_bytes);
        exchange.response = Some(Captured {
            body: bytes.slice(..kept),
            truncated: kept < bytes.len(),
            chunk_times: vec![(bytes.len(), elapsed_us)],
            outcome: outcome.clone(),
            ended: Instant::now(),
        });
        record(exchange);
        if failed {
            let (status, kind) = match outcome {
                Outcome::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
                _ => (StatusCode::BAD_GATEWAY, "upstream_error"),
            };
            let message = match outcome {
                Outcome::Failed(message) => message,
                _ => "upstream total timeout".to_string(),
            };
            let mut response = error_response(api, status, kind, &message);
            if let Some(value) = trace_header {
                response.headers_mut().insert("x-llmtrace-trace-id", value);
            }
            return response;
        }
        let mut response = Response::new(Body::from(bytes));
        *response.status_mut() = upstream_parts.status;
        let headers = response.headers_mut();
        for (name, value) in &upstream_parts.headers {
            if upstream::relayed(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        if let Some(value) = trace_header {
            headers.insert("x-llmtrace-trace-id", value);
        }
        if let Some(value) = cost.and_then(|c| HeaderValue::try_from(c.to_string()).ok()) {
            headers.insert("x-llmtrace-cost-usd", value);
        }
        return response;
    }
    let strip_usage = inject_usage && is_sse;
    let relay = Relay::new(
        upstream_body,
        strip_usage,
        gateway.config.max_capture_bytes,
        started,
        deadline,
        Box::new(move |captured| {
            let mut exchange = exchange;
            exchange.response = Some(captured);
            record(exchange);
        }),
    );
    let mut response = Response::new(Body::new(relay));
    *response.status_mut() = upstream_parts.status;
    let headers = response.headers_mut();
    for (name, value) in &upstream_parts.headers {
        if upstream::relayed(name) && !(strip_usage && name == header::CONTENT_LENGTH) {
            headers.append(name.clone(), value.clone());
        }
    }
    if let Some(value) = trace_header {
        headers.insert("x-llmtrace-trace-id", value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parsing_follows_w3c() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03"),
        );
        assert_eq!(
            traceparent(&headers),
            Some((
                "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                "00f067aa0ba902b7".into()
            ))
        );
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            headers.insert("traceparent", HeaderValue::from_static(bad));
            assert_eq!(traceparent(&headers), None, "{bad}");
        }
    }

    #[test]
    fn upstream_body_is_untouched_unless_routing_or_usage_needs_it() {
        let body = Bytes::from_static(br#"{"model":"gpt-x","stream":true,"messages":[]}"#);
        let head: Head = serde_json::from_slice(&body).unwrap();
        let same = Target {
            provider: 0,
            model: Some("gpt-x".into()),
        };
        assert_eq!(upstream_body(&body, &head, &same, false), body);
        let renamed = Target {
            provider: 0,
            model: Some("llama".into()),
        };
        let out: Value =
            serde_json::from_slice(&upstream_body(&body, &head, &renamed, true)).unwrap();
        assert_eq!(out["model"], "llama");
        assert_eq!(out["stream_options"]["include_usage"], true);
    }

    #[test]
    fn ids_are_distinct_hex() {
        let ids = IdSource::default();
        let a = ids.trace_id();
        let b = ids.trace_id();
        assert!(is_valid_hex_id(&a, 32) && is_valid_hex_id(&b, 32) && a != b);
        assert!(is_valid_hex_id(&ids.span_id(), 16));
    }
}
