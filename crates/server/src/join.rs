//! Stores converted spans and log events, joining GenAI log events to their spans in
//! whichever order they arrive.
//!
//! Protocol (both paths take `AppState::join`):
//! - log events: store their event rows (always: the durable record); then for each target
//!   span that is already stored, merge and store a new version; otherwise remember the
//!   target as pending;
//! - spans: store them first; then, for any span whose key is pending, gather its event
//!   rows, merge, store the new version and forget the key.
//!
//! A span stored before the log path looked is found by that lookup; a span stored after
//! finds the key pending. Event rows stay as children of their span in the trace tree, so
//! a restart between the two steps loses nothing; pending keys live in memory, so a span
//! arriving after a restart keeps its events as child rows only.

use std::collections::{BTreeMap, HashSet};

use llmtrace_ingest::logs::{LogEvent, event_row, is_event_row, merge_events};
use llmtrace_model::{Error, Span, SpanFilter, SpanKey, SpanQuery, Store};

use crate::http::{AppState, run_store};

/// Keys of spans that have event rows but were not stored when the events came.
#[derive(Default)]
pub struct Pending {
    keys: HashSet<SpanKey>,
}

/// Upper bound on remembered keys: past it the set is cleared (the event rows themselves are
/// kept, as children of their spans; only the automatic merge is lost for those keys).
const MAX_PENDING: usize = 100_000;

fn find_span(store: &dyn Store, key: &SpanKey) -> llmtrace_model::Result<Option<Span>> {
    let mut filter = SpanFilter::for_project(&key.project);
    filter.trace_id = Some(key.trace_id.clone());
    filter.span_id = Some(key.span_id.clone());
    let page = store.search(&SpanQuery::new(filter))?;
    Ok(page.spans.into_iter().find(|span| !is_event_row(span)))
}

fn event_rows_of(store: &dyn Store, key: &SpanKey) -> llmtrace_model::Result<Vec<Span>> {
    Ok(store
        .trace(&key.project, &key.trace_id)?
        .into_iter()
        .filter(|span| {
            is_event_row(span) && span.parent_span_id.as_deref() == Some(key.span_id.as_str())
        })
        .collect())
}

/// Stores spans durably, then merges any events that were waiting for them.
pub async fn store_spans(state: &AppState, spans: Vec<Span>) -> Result<(), Error> {
    if spans.is_empty() {
        return Ok(());
    }
    let keys: Vec<SpanKey> = spans.iter().map(Span::key).collect();
    run_store(state, move |store| store.append(spans)).await?;
    let mut pending = state.join.lock().await;
    let hits: Vec<SpanKey> = keys
        .into_iter()
        .filter(|key| pending.keys.contains(key))
        .collect();
    if hits.is_empty() {
        return Ok(());
    }
    let merged = run_store(state, move |store| {
        let mut merged = Vec::new();
        for key in &hits {
            let Some(mut span) = find_span(store, key)? else {
                continue;
            };
            let events: Vec<_> = event_rows_of(store, key)?
                .into_iter()
                .flat_map(|row| row.events)
                .collect();
            merge_events(&mut span, &events);
            merged.push(span);
        }
        Ok(merged)
    })
    .await?;
    for span in &merged {
        pending.keys.remove(&span.key());
    }
    run_store(state, move |store| store.append(merged)).await
}

/// Stores log events as event rows and merges them into spans already stored.
pub async fn store_log_events(state: &AppState, events: Vec<LogEvent>) -> Result<(), Error> {
    if events.is_empty() {
        return Ok(());
    }
    let mut pending = state.join.lock().await;
    let rows: Vec<Span> = events.iter().map(event_row).collect();
    run_store(state, move |store| store.append(rows)).await?;
    let mut by_span: BTreeMap<SpanKey, Vec<llmtrace_model::SpanEvent>> = BTreeMap::new();
    for log in events {
        let key = SpanKey {
            project: log.project,
            trace_id: log.trace_id,
            span_id: log.span_id,
        };
        by_span.entry(key).or_default().push(log.event);
    }
    let (merged, missing) = run_store(state, move |store| {
        let mut merged = Vec::new();
        let mut missing = Vec::new();
        for (key, events) in by_span {
            match find_span(store, &key)? {
                Some(mut span) => {
                    merge_events(&mut span, &events);
                    merged.push(span);
                }
                None => missing.push(key),
            }
        }
        Ok((merged, missing))
    })
    .await?;
    if !merged.is_empty() {
        run_store(state, move |store| store.append(merged)).await?;
    }
    if pending.keys.len() + missing.len() > MAX_PENDING {
        tracing::warn!(
            pending = pending.keys.len(),
            "too many spans awaiting their log events; forgetting which ones"
        );
        pending.keys.clear();
    }
    pending.keys.extend(missing);
    Ok(())
}
