//! Rows not yet in a segment: the latest version of each span, queryable at once.

use std::collections::HashMap;
use std::sync::Arc;

use llmtrace_model::{Deletion, Span, SpanKey};
use serde_json::Value;

use crate::segment::StoredSpan;

#[derive(Debug, Default)]
pub struct Memtable {
    rows: HashMap<SpanKey, StoredSpan>,
    approx_bytes: usize,
    /// Sequence number of the newest write applied (spans or deletion).
    pub max_seq: u64,
}

/// A span made ready for the memtable on the appending thread: its key, its shared
/// allocation and its size estimate. The writer thread inserts it under the state lock, so
/// what can be done before (allocating, walking its JSON) is done before: under `perf` that
/// was about a third of the writer thread's time at batch 1000.
pub struct Prepared {
    key: SpanKey,
    span: Arc<Span>,
    approx_bytes: usize,
}

impl Prepared {
    pub fn new(span: Span) -> Prepared {
        Prepared {
            key: span.key(),
            approx_bytes: approx_size(&span),
            span: Arc::new(span),
        }
    }

    pub fn span(&self) -> &Span {
        &self.span
    }
}

impl Memtable {
    pub fn insert(&mut self, seq: u64, prepared: Prepared) {
        let Prepared {
            key,
            span,
            approx_bytes,
        } = prepared;
        self.approx_bytes += approx_bytes;
        self.max_seq = self.max_seq.max(seq);
        self.rows.insert(key, StoredSpan { seq, span });
    }

    /// Removes matching rows; returns how many.
    pub fn delete(&mut self, seq: u64, deletion: &Deletion) -> u64 {
        self.max_seq = self.max_seq.max(seq);
        let before = self.rows.len();
        self.rows.retain(|_, row| !deletion.matches(&row.span));
        (before - self.rows.len()) as u64
    }

    pub fn get(&self, key: &SpanKey) -> Option<&StoredSpan> {
        self.rows.get(key)
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn approx_bytes(&self) -> usize {
        self.approx_bytes
    }

    pub fn rows(&self) -> impl Iterator<Item = &StoredSpan> {
        self.rows.values()
    }
}

/// Roughly the memory a span holds: its text and the JSON documents beside it.
fn approx_size(span: &Span) -> usize {
    512 + span.input_text.len()
        + span.output_text.len()
        + span.name.len()
        + json_size(&span.input)
        + json_size(&span.output)
        + json_size(&span.tools)
        + json_size(&span.attributes)
        + span.events.len() * 256
}

fn json_size(value: &Value) -> usize {
    // A node costs about its enum plus allocation overhead; strings their bytes.
    32 + match value {
        Value::String(text) => text.len(),
        Value::Array(items) => items.iter().map(json_size).sum(),
        Value::Object(map) => map.iter().map(|(k, v)| k.len() + json_size(v)).sum(),
        _ => 0,
    }
}
