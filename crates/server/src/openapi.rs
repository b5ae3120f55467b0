//! The OpenAPI document served at `/api/openapi.json`. Parameters come from the same
//! lists the handlers validate against, so the document cannot drift from the server
//! (an end-to-end test calls every documented route with every documented parameter).

use serde_json::{Value, json};

use crate::params::FILTER_PARAMS;

fn query_param(name: &str) -> Value {
    json!({"name": name, "in": "query", "required": false, "schema": {"type": "string"}})
}

fn path_param(name: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}})
}

fn filter_params(extra: &[&str]) -> Vec<Value> {
    FILTER_PARAMS
        .iter()
        .chain(extra)
        .map(|name| query_param(name))
        .collect()
}

fn page_response(description: &str) -> Value {
    json!({
        "200": {"description": description, "content": {"application/json": {"schema": {
            "type": "object",
            "properties": {"data": {"type": "array", "items": {"type": "object"}}, "next_cursor": {"type": ["string", "null"]}}
        }}}},
        "400": {"description": "a parameter is unknown or malformed; the message names it"}
    })
}

pub fn document() -> Value {
    let otlp_post = |summary: &str| {
        json!({"post": {
            "summary": summary,
            "requestBody": {"content": {"application/x-protobuf": {}, "application/json": {}}},
            "responses": {
                "200": {"description": "accepted (partialSuccess names rejected items)"},
                "400": {"description": "undecodable body"},
                "413": {"description": "body too large"},
                "503": {"description": "overloaded; retry after Retry-After seconds"}
            }
        }})
    };
    json!({
        "openapi": "3.1.0",
        "info": {"title": "llmtrace", "version": env!("CARGO_PKG_VERSION")},
        "paths": {
            "/health": {"get": {"summary": "200 once the server is ready", "responses": {"200": {"description": "ready"}}}},
            "/v1/traces": {
                "get": {
                    "summary": "LLM calls, newest first (one row per call)",
                    "parameters": filter_params(&[]),
                    "responses": page_response("a page of LLM calls")
                },
                "post": otlp_post("OTLP/HTTP trace export")["post"].clone()
            },
            "/api/public/otel/v1/traces": otlp_post("OTLP/HTTP trace export at the Langfuse SDK's path"),
            "/v1/logs": otlp_post("OTLP/HTTP log export"),
            "/v1/metrics": otlp_post("OTLP/HTTP metrics export (counted, not stored)"),
            "/api/v1/spans": {"get": {
                "summary": "spans of every kind with every filter, newest first",
                "parameters": filter_params(&[]),
                "responses": page_response("a page of spans")
            }},
            "/api/v1/traces/{trace_id}": {"get": {
                "summary": "every span of one trace, oldest first",
                "parameters": [path_param("trace_id"), query_param("project")],
                "responses": {"200": {"description": "the trace"}, "404": {"description": "no such trace"}}
            }},
            "/api/v1/sessions/{session_id}": {"get": {
                "summary": "every trace of one session, in order",
                "parameters": [path_param("session_id"), query_param("project")],
                "responses": {"200": {"description": "the session"}, "404": {"description": "no such session"}}
            }},
            "/api/v1/aggregate": {"get": {
                "summary": "time buckets x dimensions: count, error rate, tokens, cost, latency percentiles (within 1%, from sketches)",
                "parameters": filter_params(&["group_by", "bucket"]),
                "responses": {"200": {"description": "aggregate rows"}, "400": {"description": "bad parameter"}}
            }},
            "/api/v1/sql": {
                "get": {
                    "summary": "read-only SQL over the project's spans and scores tables (DataFusion); q= the statement",
                    "parameters": [query_param("q"), query_param("project"), query_param("max_rows"), query_param("max_scan_rows"), query_param("timeout_ms")],
                    "responses": {"200": {"description": "{columns:[{name,type}], rows:[[...]], truncated, elapsed_ms}"}, "400": {"description": "not a read of the two tables, malformed, or over a budget; the message says which"}}
                },
                "post": {
                    "summary": "the same with a JSON body {sql, project?, max_rows?, max_scan_rows?, timeout_ms?}",
                    "requestBody": {"content": {"application/json": {}}},
                    "responses": {"200": {"description": "{columns:[{name,type}], rows:[[...]], truncated, elapsed_ms}"}, "400": {"description": "not a read of the two tables, malformed, or over a budget; the message says which"}}
                }
            },
            "/api/v1/pricing": {"get": {
                "summary": "the price catalogue; with model= (provider=, project=) the price that applies to that name",
                "parameters": [query_param("model"), query_param("provider"), query_param("project")],
                "responses": {"200": {"description": "catalogue or resolved price"}, "404": {"description": "no price for the model"}}
            }},
            "/api/v1/reprice": {"post": {
                "summary": "price stored model calls again (since= required; any search filter)",
                "parameters": filter_params(&[]),
                "responses": {"200": {"description": "counts: scanned, repriced, unchanged, reported, unpriced"}, "400": {"description": "since= missing or a filter malformed"}}
            }},
            "/api/v1/billing": {"post": {
                "summary": "store rows of a provider's usage/cost report: {provider, project?, rows:[{day, model, requests?, input_tokens?, cached_input_tokens?, output_tokens?, cost_usd?}]}",
                "requestBody": {"content": {"application/json": {}}},
                "responses": {"200": {"description": "rows stored"}, "400": {"description": "malformed upload; the message names the problem"}}
            }},
            "/api/v1/scores": {
                "get": {
                    "summary": "scores of a project, newest first, by trace, span or name",
                    "parameters": [
                        {"name": "project", "in": "query", "schema": {"type": "string"}},
                        {"name": "trace_id", "in": "query", "schema": {"type": "string"}},
                        {"name": "span_id", "in": "query", "schema": {"type": "string"}},
                        {"name": "name", "in": "query", "schema": {"type": "string"}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}
                    ],
                    "responses": {"200": {"description": "{data:[scores]}"}, "400": {"description": "a parameter is unknown or malformed"}}
                },
                "post": {
                    "summary": "store scores: {trace_id, span_id?, name, value?, label?, comment?, source?, id?} or an array of them (all or none)",
                    "requestBody": {"content": {"application/json": {}}},
                    "responses": {"200": {"description": "{stored, ids}"}, "400": {"description": "a score is malformed; the message names it"}, "413": {"description": "too many scores in one request"}}
                }
            },
            "/api/v1/reconciliation": {"get": {
                "summary": "computed versus billed tokens and cost per day and model (provider= required)",
                "parameters": filter_params(&["tolerance"]),
                "responses": page_response("rows with computed, billed, difference and flagged")
            }},
            "/v1/traces/ingest": {"post": {
                "summary": "OpenAI Agents SDK trace export ({data:[trace and span objects]}), as its BackendSpanExporter sends it",
                "requestBody": {"content": {"application/json": {}}},
                "responses": {"200": {"description": "{accepted, rejected, errors}"}, "400": {"description": "not an Agents SDK batch"}, "413": {"description": "body too large"}}
            }},
            "/api/v1/ingest/logs": {"post": {
                "summary": "JSON trace logs, one line per finished operation (NDJSON; docs/INGEST.md)",
                "requestBody": {"content": {"application/x-ndjson": {}}},
                "responses": {"200": {"description": "{accepted, rejected, errors:[{line, error}]}"}, "400": {"description": "no line could be read"}}
            }},
            "/api/v1/import": {"post": {
                "summary": "spans in llmtrace's JSONL export format, stored under their own ids",
                "requestBody": {"content": {"application/x-ndjson": {}}},
                "responses": {"200": {"description": "{accepted, rejected, errors:[{line, error}]}"}, "400": {"description": "no line could be read"}}
            }},
            "/api/v1/export": {"get": {
                "summary": "matching spans streamed as jsonl, csv, parquet or openai-finetune (format=)",
                "parameters": filter_params(&["format"]),
                "responses": {"200": {"description": "the export, streamed"}, "400": {"description": "a parameter is unknown or malformed"}}
            }},
            "/v1/chat/completions": {"get": {
                "summary": "stored completions (OpenAI's list shape) over recorded chat calls",
                "parameters": [query_param("limit"), query_param("after"), query_param("order"), query_param("model")],
                "responses": {"200": {"description": "{object:list, data, first_id, last_id, has_more}"}}
            }},
            "/v1/chat/completions/{completion_id}": {
                "get": {"summary": "one stored completion", "parameters": [path_param("completion_id")], "responses": {"200": {"description": "chat.completion"}, "404": {"description": "unknown id"}}},
                "delete": {"summary": "delete a stored completion", "parameters": [path_param("completion_id")], "responses": {"200": {"description": "chat.completion.deleted"}, "404": {"description": "unknown id"}}}
            },
            "/v1/chat/completions/{completion_id}/messages": {"get": {
                "summary": "the request messages of a stored completion",
                "parameters": [path_param("completion_id"), query_param("limit"), query_param("after"), query_param("order")],
                "responses": {"200": {"description": "{object:list, data, first_id, last_id, has_more}"}, "404": {"description": "unknown id"}}
            }},
            "/api/openapi.json": {"get": {"summary": "this document", "responses": {"200": {"description": "OpenAPI 3.1"}}}}
        }
    })
}
