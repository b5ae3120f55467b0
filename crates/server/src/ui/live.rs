//! Live tail: every batch the store acknowledges is offered to the pages watching, which
//! receive the rows matching their filter as server-sent events.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use llmtrace_model::{AppendLayer, Layered, Span, SpanQuery, Store};
use maud::html;
use tokio::sync::broadcast;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use super::{Shared, UiQuery, error_page, layout, render};
use crate::http::run_store;

/// Batches waiting for a slow page before it is told it missed some.
const BACKLOG: usize = 256;

pub type Batches = broadcast::Sender<Arc<Vec<Span>>>;

/// The layer that, after each acknowledged append, offers the batch to live-tail pages.
/// Nothing is copied while no page is watching.
pub struct Tail {
    sender: Batches,
}

impl Tail {
    /// `inner` with the tail in front of it, and the channel pages subscribe to.
    pub fn wrap(inner: Arc<dyn Store>) -> (Arc<dyn Store>, Batches) {
        let (sender, _) = broadcast::channel(BACKLOG);
        let layer = Tail {
            sender: sender.clone(),
        };
        (Arc::new(Layered { inner, layer }), sender)
    }
}

/// What a live row needs: the span without its message trees, attributes and events
/// (moved out while the rest is copied, so they are never cloned).
fn summary(span: &mut Span) -> Span {
    let input = std::mem::take(&mut span.input);
    let output = std::mem::take(&mut span.output);
    let tools = std::mem::take(&mut span.tools);
    let attributes = std::mem::take(&mut span.attributes);
    let events = std::mem::take(&mut span.events);
    let light = span.clone();
    span.input = input;
    span.output = output;
    span.tools = tools;
    span.attributes = attributes;
    span.events = events;
    light
}

impl AppendLayer for Tail {
    fn append_iter(
        &self,
        spans: &mut dyn Iterator<Item = Span>,
        below: &dyn Store,
    ) -> llmtrace_model::Result<()> {
        if self.sender.receiver_count() == 0 {
            return below.append_iter(spans);
        }
        let mut batch: Vec<Span> = Vec::new();
        below.append_iter(&mut spans.map(|mut span| {
            batch.push(summary(&mut span));
            span
        }))?;
        let _ = self.sender.send(Arc::new(batch));
        Ok(())
    }
}

/// `GET /live`: the newest rows, then new ones as they are stored.
pub async fn page(
    State(state): State<Shared>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let query = UiQuery::new(pairs);
    let selection = match query.selection(&state.default_project) {
        Ok(selection) => selection,
        Err(err) => return error_page("Live", &err),
    };
    let search = SpanQuery {
        filter: selection.parsed.filter,
        limit: 50,
        cursor: None,
    };
    let page = match run_store(&state, move |store| store.search(&search)).await {
        Ok(page) => page,
        Err(err) => return error_page("Live", &err),
    };
    let events = query.filters_only().href("/ui/live/events", &[]);
    let content = html! {
        (layout::filter_bar("/live", &query, &super::traces::FIELDS, html! {}))
        p.live-status { span #live-state data-state="connecting" { "connecting…" } " · new calls appear at the top as they are stored" }
        table.spans #spans {
            (render::span_table_head())
            tbody #live-rows data-events=(events) {
                @for span in &page.spans {
                    (render::span_row(span, &query.href("/traces", &[("open", Some(&render::open_param(span)))])))
                }
            }
        }
        (super::traces::drawer(None))
    };
    Html(layout::page("Live", "live", content).into_string()).into_response()
}

/// `GET /ui/live/events`: server-sent events, one `spans` event of table rows per stored
/// batch that has matching rows; `lagged` when this page fell behind and missed batches.
pub async fn events(
    State(state): State<Shared>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let query = UiQuery::new(pairs);
    let mut filter = match query.selection(&state.default_project) {
        Ok(selection) => selection.parsed.filter,
        Err(err) => return crate::http::error_response(&err),
    };
    // a tail follows what arrives from now on, whatever its timestamps
    filter.since = None;
    filter.until = None;
    let stream = BroadcastStream::new(state.live.subscribe()).filter_map(move |batch| match batch {
        Ok(batch) => {
            let rows: Vec<&Span> = batch.iter().filter(|span| filter.matches(span)).collect();
            if rows.is_empty() {
                return None;
            }
            let markup = html! {
                @for span in rows.iter().rev() {
                    (render::span_row(span, &format!("/traces?open={}", crate::client::encode(&render::open_param(span)))))
                }
            };
            Some(Ok::<_, Infallible>(Event::default().event("spans").data(markup.into_string())))
        }
        Err(BroadcastStreamRecvError::Lagged(missed)) => Some(Ok(Event::default().event("lagged").data(missed.to_string()))),
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}
