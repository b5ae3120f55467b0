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
        let text = |value: &mut Value| {
            let value = std::mem::take(value);
            if value.is_null() {
                return None;
            }
            Some(json_text(&value).into_boxed_str())
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

/// `value` as compact JSON text, byte for byte what `serde_json::to_string` writes.
///
/// serde_json escapes strings one byte at a time (under callgrind the largest single
/// function of `bench recorder`, 9% of its instructions). Here a string is checked 16 bytes
/// at a time (a loop the compiler turns into vector compares) and copied whole where nothing
/// in it needs escaping, which is nearly all message text: documents with ~2 KB of it take
/// 43% fewer instructions, while short strings (a gateway call's keys and ids) cost what
/// they did (docs/BENCHMARKS.md, session 27).
fn json_text(value: &Value) -> String {
    let mut out = Vec::with_capacity(128);
    write_value(&mut out, value);
    // only whole UTF-8 strings and ASCII were written
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        // serde_json's own number formatting (integers, and floats as it writes them)
        Value::Number(number) => {
            if serde_json::to_writer(&mut *out, number).is_err() {
                out.extend_from_slice(b"null");
            }
        }
        Value::String(text) => write_string(out, text),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            out.push(b'{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(out, key);
                out.push(b':');
                write_value(out, item);
            }
            out.push(b'}');
        }
    }
}

/// Whether JSON needs `byte` escaped (as serde_json does: controls, quote, backslash).
const fn needs_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

fn write_string(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // bytes before `start` are written
    let mut start = 0;
    while let Some(at) = next_escape(bytes, start) {
        out.extend_from_slice(&bytes[start..at]);
        write_escape(out, bytes[at]);
        start = at + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Where the first byte at or after `from` that needs escaping is: 16-byte chunks without
/// one are skipped whole (tested without branches, which compiles to vector compares), the
/// rest is searched a byte at a time, as short keys are.
fn next_escape(bytes: &[u8], from: usize) -> Option<usize> {
    const CHUNK: usize = 16;
    let mut at = from;
    while let Some(chunk) = bytes.get(at..at + CHUNK) {
        let any = chunk
            .iter()
            .fold(0u8, |any, &byte| any | u8::from(needs_escape(byte)));
        if any != 0 {
            break;
        }
        at += CHUNK;
    }
    let rest = bytes.get(at..)?;
    rest.iter()
        .position(|&byte| ESCAPED[usize::from(byte)])
        .map(|i| at + i)
}

/// `needs_escape` as a table: one load per byte, for the byte-at-a-time search.
const ESCAPED: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = needs_escape(byte as u8);
        byte += 1;
    }
    table
};

fn write_escape(out: &mut Vec<u8>, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match byte {
        b'"' => out.extend_from_slice(b"\\\""),
        b'\\' => out.extend_from_slice(b"\\\\"),
        b'\n' => out.extend_from_slice(b"\\n"),
        b'\r' => out.extend_from_slice(b"\\r"),
        b'\t' => out.extend_from_slice(b"\\t"),
        0x08 => out.extend_from_slice(b"\\b"),
        0x0c => out.extend_from_slice(b"\\f"),
        _ => out.extend_from_slice(&[
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX[usize::from(byte >> 4)],
            HEX[usize::from(byte & 0xf)],
        ]),
    }
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

    fn any_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        // strings mixing what needs escaping (controls, quote, backslash, DEL) with plain
        // and non-ASCII text, long enough to span several 16-byte chunks
        let text = "[\\x00-\\x1f\"\\\\\\x7fa-z é😀\u{2028}]{0,40}";
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            text.prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 48, 6, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(text, inner, 0..6)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn json_text_is_what_serde_json_writes(value in any_json()) {
            proptest::prop_assert_eq!(json_text(&value), serde_json::to_string(&value).unwrap());
        }
    }

    #[test]
    fn json_text_escapes_in_every_position_of_a_chunk() {
        for at in 0..40 {
            for special in ["\n", "\"", "\\", "\u{1}", "\u{1f}", "\u{7f}", "é"] {
                let text = format!("{}{special}{}", "a".repeat(at), "b".repeat(40 - at));
                let value = json!({ text.clone(): [text] });
                assert_eq!(
                    json_text(&value),
                    serde_json::to_string(&value).unwrap(),
                    "{text:?}"
                );
            }
        }
    }
}
