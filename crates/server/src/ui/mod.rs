//! The web UI: server-rendered pages over the same query model as the API.
//!
//! Pages are HTML built with maud (every interpolated value is escaped at compile time),
//! charts are SVG drawn here, and one small script of ours (`assets/app.js`) adds the
//! drawer, keyboard navigation, the theme switch and the live tail. A strict
//! Content-Security-Policy forbids inline script and style, so even markup that slipped
//! past escaping could not run.

mod chart;
mod dashboard;
mod layout;
pub mod live;
mod render;
mod runs;
mod sessions;
mod traces;

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use llmtrace_model::{Error, SpanKind};

use crate::http::AppState;
use crate::params::{self, Parsed};

type Shared = Arc<AppState>;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The UI's routes: pages at `/`, fragments and assets under `/ui/`.
pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/traces") }))
        .route("/traces", get(traces::page))
        .route("/runs/{trace_id}", get(runs::page))
        .route("/sessions", get(sessions::list))
        .route("/sessions/{session_id}", get(sessions::conversation))
        .route("/dashboard", get(dashboard::page))
        .route("/live", get(live::page))
        .route("/ui/span/{trace_id}/{span_id}", get(traces::span_fragment))
        .route("/ui/charts", get(traces::charts_fragment))
        .route("/ui/live/events", get(live::events))
        .route("/ui/app.css", get(stylesheet))
        .route("/ui/app.js", get(script))
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
}

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", include_str!("assets/app.css"))
}

async fn script() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("assets/app.js"),
    )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Time-range presets of the filter bar, as (value, label, seconds).
pub const RANGES: [(&str, &str, i64); 7] = [
    ("15m", "Last 15 minutes", 900),
    ("1h", "Last hour", 3_600),
    ("6h", "Last 6 hours", 21_600),
    ("24h", "Last 24 hours", 86_400),
    ("7d", "Last 7 days", 604_800),
    ("30d", "Last 30 days", 2_592_000),
    ("all", "All time", 0),
];

/// The page's query string: the filters it shows, kept in the URL so links share them.
///
/// UI names are the API's (`model`, `user_id`, `q`, …) plus `range` (a preset or
/// `custom`), `meta` (`key=value`), `kind` (`all`, or a kind; model calls when absent)
/// and page-specific ones; empty form fields are dropped.
#[derive(Debug, Clone, Default)]
pub struct UiQuery {
    pairs: Vec<(String, String)>,
}

/// Names that belong to the UI, not to the store's filter.
const UI_ONLY: [&str; 7] = [
    "range",
    "meta",
    "kind",
    "open",
    "group",
    "group_key",
    "view",
];

/// A page's filter, once read.
pub struct Selection {
    pub parsed: Parsed,
    /// `[since, until)` actually shown, ns (until = now when open).
    pub window: (i64, i64),
}

impl UiQuery {
    pub fn new(pairs: Vec<(String, String)>) -> UiQuery {
        UiQuery {
            pairs: pairs
                .into_iter()
                .filter(|(_, value)| !value.trim().is_empty())
                .collect(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The project the page reads (`project`, else the server's default), checked.
    pub fn project(&self, default_project: &str) -> Result<String, Error> {
        match self.get("project") {
            None => Ok(default_project.to_string()),
            Some(project) if llmtrace_ingest::valid_project(project) => Ok(project.to_string()),
            Some(project) => Err(Error::BadRequest(format!(
                "project={project:?} is not a valid project name"
            ))),
        }
    }

    pub fn range(&self) -> &str {
        match self.get("range") {
            Some(range) if range == "custom" || RANGES.iter().any(|r| r.0 == range) => range,
            _ => "24h",
        }
    }

    /// The filter of the query model, now: model calls unless the page asked for a kind.
    pub fn selection(&self, default_project: &str) -> Result<Selection, Error> {
        self.selection_at(
            default_project,
            &[SpanKind::Llm, SpanKind::Embedding],
            llmtrace_store::now_ns(),
        )
    }

    /// The filter of the query model, with the time window resolved against `now`.
    /// `default_kinds` applies when the page was not asked for a kind.
    fn selection_at(
        &self,
        default_project: &str,
        default_kinds: &[SpanKind],
        now: i64,
    ) -> Result<Selection, Error> {
        let mut api: Vec<(String, String)> = Vec::new();
        for (name, value) in &self.pairs {
            match name.as_str() {
                "since" | "until" if self.range() != "custom" => {}
                "meta" => {
                    let (key, wanted) = value.split_once('=').ok_or_else(|| {
                        Error::BadRequest(format!("metadata filter {value:?} is not key=value"))
                    })?;
                    api.push((format!("metadata.{}", key.trim()), wanted.trim().into()));
                }
                "kind" if value == "all" => {}
                name if UI_ONLY.contains(&name) && name != "kind" => {}
                _ => api.push((name.to_string(), value.clone())),
            }
        }
        if let Some(seconds) = RANGES
            .iter()
            .find(|r| r.0 == self.range())
            .map(|r| r.2)
            .filter(|seconds| *seconds > 0)
        {
            api.push(("since".into(), format!("{seconds}s")));
        }
        let mut parsed = params::parse(&api, default_project, &[], now)?;
        if parsed.filter.kinds.is_empty() && self.get("kind").is_none() {
            parsed.filter.kinds = default_kinds.to_vec();
        }
        let window = (
            parsed
                .filter
                .since
                .unwrap_or(now - 30 * 86_400 * 1_000_000_000),
            parsed.filter.until.unwrap_or(now),
        );
        Ok(Selection { parsed, window })
    }

    /// `path` with this query, `changes` applied (`None` removes the name).
    pub fn href(&self, path: &str, changes: &[(&str, Option<&str>)]) -> String {
        let mut pairs: Vec<(&str, &str)> = self
            .pairs
            .iter()
            .filter(|(name, _)| !changes.iter().any(|(changed, _)| changed == name))
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        for (name, value) in changes {
            if let Some(value) = value {
                pairs.push((name, value));
            }
        }
        if pairs.is_empty() {
            return path.to_string();
        }
        let query: Vec<String> = pairs
            .iter()
            .map(|(name, value)| {
                format!(
                    "{}={}",
                    crate::client::encode(name),
                    crate::client::encode(value)
                )
            })
            .collect();
        format!("{path}?{}", query.join("&"))
    }

    /// Only the names that select data (no cursor or open drawer), for links that carry a
    /// filter to another page.
    pub fn filters_only(&self) -> UiQuery {
        UiQuery {
            pairs: self
                .pairs
                .iter()
                .filter(|(name, _)| !matches!(name.as_str(), "cursor" | "open"))
                .cloned()
                .collect(),
        }
    }
}

/// A page that could not be built: the layout with the problem named, and its status.
pub fn error_page(title: &str, err: &Error) -> Response {
    let status =
        StatusCode::from_u16(err.code().http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = layout::page(
        title,
        "",
        maud::html! {
            div.error role="alert" { (err.to_string()) }
        },
    );
    (status, axum::response::Html(body.into_string())).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(items: &[(&str, &str)]) -> UiQuery {
        UiQuery::new(
            items
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn ui_names_become_the_api_filter() {
        let now = 1_000_000 * 1_000_000_000;
        let selection = query(&[
            ("range", "1h"),
            ("since", "ignored-unless-custom"),
            ("meta", "tier = gold"),
            ("model", ""),
            ("q", "refund"),
        ])
        .selection_at("default", &[SpanKind::Llm], now)
        .unwrap();
        let filter = &selection.parsed.filter;
        assert_eq!(filter.since, Some(now - 3_600 * 1_000_000_000));
        assert_eq!(filter.metadata, vec![("tier".into(), "gold".into())]);
        assert_eq!(filter.model, None);
        assert_eq!(filter.text.as_deref(), Some("refund"));
        assert_eq!(filter.kinds, vec![SpanKind::Llm]);
        let all = query(&[("kind", "all")])
            .selection_at("default", &[SpanKind::Llm], now)
            .unwrap();
        assert!(all.parsed.filter.kinds.is_empty());
        let bad = query(&[("meta", "no-equals")])
            .selection_at("default", &[], now)
            .err()
            .unwrap();
        assert!(bad.to_string().contains("key=value"), "{bad}");
    }

    #[test]
    fn links_keep_the_filter_and_encode_it() {
        let q = query(&[("model", "gpt 4o&x"), ("cursor", "1.a.b")]);
        assert_eq!(
            q.href("/traces", &[("cursor", None), ("open", Some("t:s"))]),
            "/traces?model=gpt%204o%26x&open=t%3As"
        );
        assert_eq!(
            q.filters_only().href("/dashboard", &[]),
            "/dashboard?model=gpt%204o%26x"
        );
    }
}
