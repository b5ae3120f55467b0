//! Rows not yet in a segment: the latest version of each span, queryable at once.
//!
//! A row keeps its span's JSON documents (`input`, `output`, `tools`, `attributes`) as the
//! text they serialize to (`JsonFields`), not as `serde_json::Value` trees: a tree spends
//! a B-tree node of about 640 bytes on every object, so a small gateway call held about
//! 7 KB in the memtable (its heap grew by that per call, every page faulted in and zeroed
//! on the recording thread), where its JSON text is well under one. The text is what the
//! WAL, the segment's columns and the SQL scan's batches need anyway; a read that returns
//! whole spans parses it back for the rows it returns.

use std::collections::HashMap;
use std::sync::Arc;

use llmtrace_model::{Deletion, Span, SpanKey};
use serde_json::Value;

use crate::segment::StoredSpan;

#[derive(Debug, Default)]
pub struct Memtable {
    /// foldhash, seeded per map: SipHash of the key's three strings took a quarter of the
    /// WAL thread's samples in `bench recorder`, under the state lock.
    rows: HashMap<SpanKey, StoredSpan, foldhash::fast::RandomState>,
    approx_bytes: usize,
    /// Sequence number of the newest write applied (spans or deletion).
    pub max_seq: u64,
}

/// A span's JSON documents as serialized text (`None` where the document is null), taken
/// out of the span a memtable row holds.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct JsonFields {
    pub input: Option<Box<str>>,
    pub output: Option<Box<str>>,
    pub tools: Option<Box<str>>,
    pub attributes: Option<Box<str>>,
    /// `Span::derived_text` of the span before its documents were taken out: which of its
    /// texts its messages give.
    pub derived: u8,
}

impl JsonFields {
    /// Takes the documents out of `span` (leaving them null) as text.
    pub fn take(span: &mut Span) -> JsonFields {
        let derived = span.derived_text();
        // `serde_json::to_vec`: `Value::to_string` goes through `fmt` and took a fifth longer
        let text = |value: &mut Value| {
            let value = std::mem::take(value);
            if value.is_null() {
                return None;
            }
            // neither fails for a `Value` (its keys are strings; serde_json writes UTF-8)
            let bytes = serde_json::to_vec(&value).ok()?;
            String::from_utf8(bytes).ok().map(String::into_boxed_str)
        };
        JsonFields {
            input: text(&mut span.input),
            output: text(&mut span.output),
            tools: text(&mut span.tools),
            attributes: text(&mut span.attributes),
            derived,
        }
    }

    /// Puts the documents back into a span they were taken from.
    pub fn restore(&self, span: &mut Span) -> Result<(), serde_json::Error> {
        span.input = parse(self.input.as_deref())?;
        span.output = parse(self.output.as_deref())?;
        span.tools = parse(self.tools.as_deref())?;
        span.attributes = parse(self.attributes.as_deref())?;
        Ok(())
    }

    /// The four documents in column order, for writers that copy them as they are.
    pub fn texts(&self) -> [Option<&str>; 4] {
        [
            self.input.as_deref(),
            self.output.as_deref(),
            self.tools.as_deref(),
            self.attributes.as_deref(),
        ]
    }

    /// `attributes` as a value (null when it does not parse, which a row written by
    /// `take` never does).
    pub fn attributes_value(&self) -> Value {
        parse(self.attributes.as_deref()).unwrap_or(Value::Null)
    }

    /// The value of one top-level key of `attributes`, read without building the rest.
    pub fn attribute(&self, key: &str) -> Option<Value> {
        let text = self.attributes.as_deref()?;
        let mut deserializer = serde_json::Deserializer::from_str(text);
        serde::de::DeserializeSeed::deserialize(KeyOf(key), &mut deserializer)
            .ok()
            .flatten()
    }

    fn bytes(&self) -> usize {
        self.texts().iter().flatten().map(|text| text.len()).sum()
    }
}

/// Reads a JSON object, keeping the value of one key and skipping the others.
struct KeyOf<'k>(&'k str);

impl<'de> serde::de::DeserializeSeed<'de> for KeyOf<'_> {
    type Value = Option<Value>;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for KeyOf<'_> {
    type Value = Option<Value>;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if found.is_none() && key == self.0 {
                found = Some(map.next_value::<Value>()?);
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

fn parse(text: Option<&str>) -> Result<Value, serde_json::Error> {
    text.map_or(Ok(Value::Null), serde_json::from_str)
}

/// A span made ready for the memtable on the appending thread: its key, its documents as
/// text and its size. The writer thread inserts it under the state lock, so what can be
/// done before (serializing, allocating) is done before: under `perf` that was about a
/// third of the writer thread's time at batch 1000.
pub struct Prepared {
    key: SpanKey,
    /// The span without its documents.
    pub span: Span,
    pub json: JsonFields,
    approx_bytes: usize,
}

impl Prepared {
    pub fn new(mut span: Span) -> Prepared {
        let json = JsonFields::take(&mut span);
        Prepared {
            key: span.key(),
            approx_bytes: approx_size(&span, &json),
            span,
            json,
        }
    }

    /// The span whole again (as a reader would get it).
    pub fn whole(&self) -> Result<Span, serde_json::Error> {
        let mut span = self.span.clone();
        self.json.restore(&mut span)?;
        Ok(span)
    }
}

impl Memtable {
    pub fn insert(&mut self, seq: u64, prepared: Prepared) {
        let Prepared {
            key,
            span,
            json,
            approx_bytes,
        } = prepared;
        self.approx_bytes += approx_bytes;
        self.max_seq = self.max_seq.max(seq);
        self.rows.insert(
            key,
            StoredSpan {
                seq,
                span: Arc::new(span),
                json: Some(Arc::new(json)),
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

/// Roughly the memory a row holds: the span's fields and texts, its documents' text.
fn approx_size(span: &Span, json: &JsonFields) -> usize {
    // the span, its key, its allocations and the map's slot
    768 + span.input_text.len()
        + span.output_text.len()
        + span.name.len()
        + json.bytes()
        + span
            .metadata
            .iter()
            .map(|(key, value)| 64 + key.len() + value.len())
            .sum::<usize>()
        + span.events.len() * 256
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chat_span() -> Span {
        Span {
            project: "p".into(),
            trace_id: "1".repeat(32),
            span_id: "2".repeat(16),
            input: json!([{"role": "user", "content": [{"type": "text", "text": "where is my parcel?"}]}]),
            input_text: "where is my parcel?".into(),
            output: json!([{"role": "assistant", "content": [{"type": "text", "text": "on its way"}]}]),
            output_text: "on its way".into(),
            attributes: json!({"gen_ai.response.id": "resp-1", "a\"b": {"n": [1, 2.5, null]}, "z": true}),
            ..Span::default()
        }
    }

    #[test]
    fn a_row_holds_its_documents_as_text_and_gives_them_back() {
        let span = chat_span();
        let prepared = Prepared::new(span.clone());
        let light = &prepared.span;
        assert!(light.input.is_null() && light.output.is_null() && light.attributes.is_null());
        assert!(light.tools.is_null() && prepared.json.tools.is_none());
        assert_eq!(light.input_text, span.input_text, "texts stay for matching");
        assert_eq!(
            prepared.json.input.as_deref(),
            Some(span.input.to_string().as_str())
        );
        assert_eq!(
            prepared.json.derived,
            llmtrace_model::span::INPUT_TEXT_DERIVED | llmtrace_model::span::OUTPUT_TEXT_DERIVED
        );
        assert_eq!(prepared.whole().unwrap(), span);
        // the size the memtable counts follows the documents' text
        let bytes = prepared.approx_bytes;
        let text = span.input.to_string().len() + span.output.to_string().len();
        assert!(bytes > text && bytes < text + 2048, "{bytes} bytes");
    }

    #[test]
    fn one_attribute_is_read_without_the_rest() {
        let json = Prepared::new(chat_span()).json;
        assert_eq!(json.attribute("gen_ai.response.id"), Some(json!("resp-1")));
        assert_eq!(json.attribute("a\"b"), Some(json!({"n": [1, 2.5, null]})));
        assert_eq!(json.attribute("z"), Some(json!(true)));
        assert_eq!(json.attribute("n"), None, "only top-level keys");
        assert_eq!(json.attributes_value(), chat_span().attributes);
        let none = Prepared::new(Span::default()).json;
        assert_eq!(none.attribute("z"), None);
        let not_an_object = JsonFields {
            attributes: Some("[1,2]".into()),
            ..JsonFields::default()
        };
        assert_eq!(not_an_object.attribute("z"), None);
    }
}
