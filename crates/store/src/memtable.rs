//! Rows not yet in a segment: the latest version of each span, queryable at once.

use std::collections::HashMap;
use std::sync::Arc;

use llmtrace_model::{Deletion, Span, SpanKey};

use crate::segment::StoredSpan;

#[derive(Debug, Default)]
pub struct Memtable {
    rows: HashMap<SpanKey, StoredSpan>,
    approx_bytes: usize,
    /// Sequence number of the newest write applied (spans or deletion).
    pub max_seq: u64,
}

impl Memtable {
    pub fn insert(&mut self, seq: u64, span: Span) {
        self.approx_bytes += approx_size(&span);
        self.max_seq = self.max_seq.max(seq);
        self.rows.insert(
            span.key(),
            StoredSpan {
                seq,
                span: Arc::new(span),
            },
        );
    }

    /// Removes matching rows; returns how many.
    pub fn delete(&mut self, seq: u64, deletion: &Deletion) -> u64 {
        self.max_seq = self.max_seq.max(seq);
        let before = self.rows.len();
        self.rows.retain(|_, row| !deletion.matches(&row.span));
        (before - self.rows.len()) as u64
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

fn approx_size(span: &Span) -> usize {
    256 + span.input_text.len() * 2 + span.output_text.len() * 2 + span.name.len()
}
