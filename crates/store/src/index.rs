//! The term index of one segment (tantivy): which rows may match a filter, without reading
//! the segment.
//!
//! Every equality filter of `SpanFilter` and every full-text term becomes a term here, so a
//! query reads only the rows the index names. The index is a superset oracle: rows it names
//! are still checked with `SpanFilter::matches`, which keeps the reference semantics exact
//! (ranges, attributes and over-long terms are left to that check). Fast fields give each
//! document's row number, start time and sequence number, so time windows and version
//! checks never touch the Parquet file.
//!
//! Resent history is tokenized once per segment. Chat and agent calls resend their history,
//! so most of a call's text was said by the calls before it. The build cuts each text into
//! pieces (`split_pieces`, at newlines, so at message boundaries; never inside a term) and
//! hands tantivy a piece as text the first time the segment meets it; from its second
//! appearance on, the row gets the terms the piece was tokenized into then, each of a row's
//! terms once (`Vocabulary`). The index holds what whole-text tokenizing gave (with
//! `IndexRecordOption::Basic` a term is recorded once per document whatever its count);
//! building it costs with what a conversation says, not with how often it is resent.

use std::fs;
use std::path::{Path, PathBuf};

use llmtrace_model::query::terms;
use llmtrace_model::{Span, SpanFilter};
use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::Column;
use tantivy::indexer::NoMergePolicy;
use tantivy::query::{AllQuery, BooleanQuery, Query, TermQuery};
use tantivy::schema::{FAST, Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions};
use tantivy::tokenizer::{Token, TokenStream, Tokenizer};
use tantivy::{
    DocId, Index, IndexReader, ReloadPolicy, Score, SegmentReader, TantivyDocument, Term,
};

use crate::error::{Error, Result};
use crate::fsutil::fsync_dir;
use crate::segment::StoredSpan;

/// Longest term tantivy indexes; longer query terms are left to the row check.
const MAX_TERM_BYTES: usize = 65_000;
/// A piece ends at the first newline at least this far in (short lines stay together).
const MIN_PIECE: usize = 128;
/// Text without a newline is cut at the first separator past this length.
const MAX_PIECE: usize = 16 * 1024;
/// Separates the terms `Vocabulary::row_text` hands to the text field; no term contains it.
const TERM_SEPARATOR: char = '\0';
const WRITER_MEMORY: usize = 64 * 1024 * 1024;
/// Name the text field's tokenizer is registered under (`TermsTokenizer` with `presplit`;
/// indexes built before it read whole texts under the same name, and hold the same terms).
const TERMS_TOKENIZER: &str = "llmtrace_terms";

/// The terms of `llmtrace_model::query::terms` (maximal alphanumeric runs, lower-cased), as
/// a tantivy tokenizer, so index and reference check agree by construction. ASCII tokens are
/// lower-cased into the token's reused buffer; others go through `str::to_lowercase`, as
/// `terms` does.
///
/// With `presplit` (the text field's tokenizer), a text may end in terms already split and
/// lower-cased (`Vocabulary::row_text`): after its first `TERM_SEPARATOR`, each run up to
/// the next one is a term as it stands.
#[derive(Clone, Default)]
struct TermsTokenizer {
    token: Token,
    presplit: bool,
}

struct TermsStream<'a> {
    text: &'a str,
    position: usize,
    /// Where the split terms begin (at a `TERM_SEPARATOR`), or the text's length.
    split_from: usize,
    token: &'a mut Token,
}

impl Tokenizer for TermsTokenizer {
    type TokenStream<'a> = TermsStream<'a>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> TermsStream<'a> {
        self.token.reset();
        let split_from = match self.presplit {
            true => memchr::memchr(TERM_SEPARATOR as u8, text.as_bytes()).unwrap_or(text.len()),
            false => text.len(),
        };
        TermsStream {
            text,
            position: 0,
            split_from,
            token: &mut self.token,
        }
    }
}

impl TermsStream<'_> {
    /// The next of the terms split already.
    fn next_split(&mut self) -> bool {
        let bytes = self.text.as_bytes();
        let mut from = self.position.max(self.split_from + 1);
        while from < bytes.len() {
            let to = memchr::memchr(TERM_SEPARATOR as u8, &bytes[from..])
                .map_or(bytes.len(), |at| from + at);
            if to > from {
                self.position = to + 1;
                self.token.offset_from = from;
                self.token.offset_to = to;
                self.token.position = self.token.position.wrapping_add(1);
                self.token.text.clear();
                self.token.text.push_str(&self.text[from..to]);
                return true;
            }
            from = to + 1;
        }
        self.position = bytes.len();
        false
    }
}

/// Whether the non-ASCII character at byte `at` of `text` (a char boundary) is
/// alphanumeric, and its length in bytes.
#[cold]
fn unicode_class(text: &str, at: usize) -> (bool, usize) {
    match text[at..].chars().next() {
        Some(c) => (c.is_alphanumeric(), c.len_utf8()),
        None => (false, 1),
    }
}

impl TokenStream for TermsStream<'_> {
    fn advance(&mut self) -> bool {
        (self.position < self.split_from && self.next_term()) || self.next_split()
    }

    fn token(&self) -> &Token {
        self.token
    }

    fn token_mut(&mut self) -> &mut Token {
        self.token
    }
}

impl TermsStream<'_> {
    /// The next term of the text before `split_from`.
    fn next_term(&mut self) -> bool {
        // ASCII, nearly all of what is indexed, is classified from the byte alone. The two
        // loops are written out: sharing one inlined classifier measured a half slower
        // (262 against 174 samples of the tokenizer under `perf`, session 21).
        let bytes = self.text.as_bytes();
        let end = self.split_from;
        let mut from = self.position;
        while from < end {
            let byte = bytes[from];
            if byte.is_ascii() {
                if byte.is_ascii_alphanumeric() {
                    break;
                }
                from += 1;
            } else {
                let (alphanumeric, length) = unicode_class(self.text, from);
                if alphanumeric {
                    break;
                }
                from += length;
            }
        }
        if from >= end {
            self.position = end;
            return false;
        }
        let mut to = from;
        let mut ascii = true;
        while to < end {
            let byte = bytes[to];
            if byte.is_ascii() {
                if !byte.is_ascii_alphanumeric() {
                    break;
                }
                to += 1;
            } else {
                let (alphanumeric, length) = unicode_class(self.text, to);
                if !alphanumeric {
                    break;
                }
                ascii = false;
                to += length;
            }
        }
        let word = &self.text[from..to];
        self.position = to;
        self.token.offset_from = from;
        self.token.offset_to = to;
        self.token.position = self.token.position.wrapping_add(1);
        self.token.text.clear();
        if ascii {
            self.token.text.push_str(word);
            self.token.text.make_ascii_lowercase();
        } else {
            self.token.text.push_str(&word.to_lowercase());
        }
        true
    }
}

/// Where each separator-cut piece of text ends and the next begins: at the first newline
/// `MIN_PIECE` or more bytes in, else (a long text without newlines) at the first ASCII
/// separator past `MAX_PIECE`, else at the end. The separator cut at belongs to neither
/// piece, so a message reads the same whether it ends its text or another follows it.
fn split_pieces(text: &str) -> impl Iterator<Item = &str> {
    let bytes = text.as_bytes();
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= bytes.len() {
            return None;
        }
        let from = start;
        let earliest = (from + MIN_PIECE).min(bytes.len());
        let limit = from + MAX_PIECE;
        let newline = memchr::memchr(b'\n', &bytes[earliest..]).map(|at| earliest + at);
        let cut = match newline {
            Some(at) if at <= limit => Some(at),
            // a newline past the limit is itself such a separator
            _ => bytes
                .get(limit..)
                .and_then(|rest| {
                    rest.iter()
                        .position(|byte| byte.is_ascii() && !byte.is_ascii_alphanumeric())
                })
                .map(|at| limit + at),
        };
        let end = cut.unwrap_or(bytes.len());
        start = cut.map_or(bytes.len(), |at| at + 1);
        Some(&text[from..end])
    })
}

type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::FixedState>;

/// What a segment's index build knows of a piece of message text.
#[derive(Clone, Copy)]
enum Piece {
    /// Seen once, and handed to tantivy as text.
    Once,
    /// Seen again: tokenized, its distinct terms a range of `Vocabulary::piece_terms`.
    Terms(usize, usize),
}

/// The message text of a segment's rows as its index build hands it to tantivy: a piece
/// seen for the first time as text (most text is said once), a piece seen again as the
/// terms it was tokenized into the second time, each of a row's terms once.
#[derive(Default)]
struct Vocabulary<'a> {
    pieces: FastMap<&'a str, Piece>,
    terms: TermTable,
    /// The split terms of the row being built.
    split: String,
}

/// The terms of the pieces tokenized so far.
#[derive(Default)]
struct TermTable {
    tokenizer: TermsTokenizer,
    ids: FastMap<String, u32>,
    terms: Vec<String>,
    piece_terms: Vec<u32>,
    /// Per term, the last piece tokenized (numbered from 1) and row (from 1) it was taken
    /// for.
    in_piece: Vec<u32>,
    in_row: Vec<u32>,
    tokenized: u32,
}

impl<'a> Vocabulary<'a> {
    /// The text field's value for a row (numbered from 1, one number per call) with
    /// `texts`: new pieces as text, separated by newlines, then `TERM_SEPARATOR` and the
    /// terms of pieces seen before, each followed by `TERM_SEPARATOR` (`TermsTokenizer`
    /// with `presplit` reads it).
    fn row_text(&mut self, row: u32, texts: [&'a str; 2], out: &mut String) {
        use std::collections::hash_map::Entry;
        out.clear();
        self.split.clear();
        let table = &mut self.terms;
        for text in texts {
            for piece in split_pieces(text) {
                let known = match self.pieces.entry(piece) {
                    Entry::Occupied(known) => known.into_mut(),
                    // a piece holding the separator goes through the table at once
                    Entry::Vacant(new) if piece.contains(TERM_SEPARATOR) => new.insert(Piece::Once),
                    Entry::Vacant(new) => {
                        new.insert(Piece::Once);
                        out.push_str(piece);
                        out.push('\n');
                        continue;
                    }
                };
                let (from, to) = match *known {
                    Piece::Terms(from, to) => (from, to),
                    Piece::Once => {
                        let (from, to) = table.tokenize(piece);
                        *known = Piece::Terms(from, to);
                        (from, to)
                    }
                };
                for &id in &table.piece_terms[from..to] {
                    let seen = &mut table.in_row[id as usize];
                    if *seen != row {
                        *seen = row;
                        self.split.push_str(&table.terms[id as usize]);
                        self.split.push(TERM_SEPARATOR);
                    }
                }
            }
        }
        if !self.split.is_empty() {
            out.push(TERM_SEPARATOR);
            out.push_str(&self.split);
        }
    }
}

impl TermTable {
    /// Tokenizes a piece: its distinct terms' ids, appended to `piece_terms`. Terms too
    /// long to index are left out, as tantivy would.
    fn tokenize(&mut self, piece: &str) -> (usize, usize) {
        let from = self.piece_terms.len();
        self.tokenized += 1;
        let number = self.tokenized;
        let mut stream = self.tokenizer.token_stream(piece);
        while stream.advance() {
            let term = &stream.token().text;
            if term.len() > MAX_TERM_BYTES {
                continue;
            }
            let id = match self.ids.get(term.as_str()) {
                Some(&id) => id,
                None => {
                    let id = self.terms.len() as u32;
                    self.ids.insert(term.clone(), id);
                    self.terms.push(term.clone());
                    self.in_piece.push(0);
                    self.in_row.push(0);
                    id
                }
            };
            let seen = &mut self.in_piece[id as usize];
            if *seen != number {
                *seen = number;
                self.piece_terms.push(id);
            }
        }
        (from, self.piece_terms.len())
    }
}

/// The index directory that belongs to a segment file.
pub fn dir_for(segment_path: &Path) -> PathBuf {
    segment_path.with_extension("idx")
}

/// A row that may match, with what the index knows about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub row: u32,
    pub start: i64,
    pub seq: u64,
}

struct Fields {
    text: Field,
    trace: Field,
    key: Field,
    session: Field,
    user: Field,
    model: Field,
    provider: Field,
    alias: Field,
    status: Field,
    kind: Field,
    service: Field,
    source: Field,
    meta: Field,
    response: Field,
    row: Field,
    start: Field,
    seq: Field,
    duration: Field,
    cost: Field,
}

fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    // Only whether a term occurs matters: no frequencies, positions or norms.
    let keyword = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer("raw")
            .set_fieldnorms(false)
            .set_index_option(IndexRecordOption::Basic),
    );
    let text = builder.add_text_field(
        "text",
        TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(TERMS_TOKENIZER)
                .set_fieldnorms(false)
                .set_index_option(IndexRecordOption::Basic),
        ),
    );
    let mut add = |name: &str| builder.add_text_field(name, keyword.clone());
    let trace = add("trace");
    let session = add("session");
    let user = add("user");
    let model = add("model");
    let provider = add("provider");
    let alias = add("alias");
    let status = add("status");
    let kind = add("kind");
    let service = add("service");
    let source = add("source");
    let meta = add("meta");
    let response = add("response");
    // A span's key as its `key_hash`, a fast field rather than a term: the key (~49 bytes)
    // is unique per row, and building the term dictionary was a sixth of the index's cost,
    // mostly for these terms. Lookups by key ask the trace's term and compare the hash.
    let key = builder.add_u64_field("key", FAST);
    let row = builder.add_u64_field("row", FAST);
    let start = builder.add_i64_field("start", FAST);
    let seq = builder.add_u64_field("seq", FAST);
    let duration = builder.add_f64_field("duration", FAST);
    let cost = builder.add_f64_field("cost", FAST);
    let fields = Fields {
        text,
        trace,
        key,
        session,
        user,
        model,
        provider,
        alias,
        status,
        kind,
        service,
        source,
        meta,
        response,
        row,
        start,
        seq,
        duration,
        cost,
    };
    (builder.build(), fields)
}

/// The attribute holding a model call's response id (`chatcmpl-…`, `resp_…`, `msg_…`):
/// indexed, so stored completions and the Agents SDK join find a call by it.
pub const RESPONSE_ID_ATTRIBUTE: &str = "gen_ai.response.id";

/// A 64-bit hash of a span's key (FNV-1a over `trace_id/span_id`, then mixed), as the
/// index holds it. Equal keys hash equal; a collision only makes a check conservative.
pub fn key_hash(trace_id: &str, span_id: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = [trace_id.as_bytes(), b"/", span_id.as_bytes()];
    for byte in bytes.into_iter().flatten() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // FNV's low bits mix poorly; finish with a multiply-xorshift.
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^ (hash >> 33)
}

fn meta_text(key: &str, value: &str) -> String {
    format!("{key}\u{0}{value}")
}

fn index_error(path: &Path, err: impl std::fmt::Display) -> Error {
    Error::segment(path, format!("index: {err}"))
}

fn document<'a>(
    fields: &Fields,
    vocabulary: &mut Vocabulary<'a>,
    text: &mut String,
    row: usize,
    stored: &'a StoredSpan,
) -> TantivyDocument {
    let span: &Span = &stored.span;
    let mut doc = TantivyDocument::default();
    vocabulary.row_text(row as u32 + 1, [&span.input_text, &span.output_text], text);
    doc.add_text(fields.text, text.as_str());
    doc.add_text(fields.trace, &span.trace_id);
    doc.add_u64(fields.key, key_hash(&span.trace_id, &span.span_id));
    let optional = [
        (fields.session, &span.session_id),
        (fields.user, &span.user_id),
        (fields.model, &span.model),
        (fields.model, &span.request_model),
        (fields.provider, &span.provider),
        (fields.alias, &span.routing_alias),
        (fields.service, &span.service_name),
    ];
    for (field, value) in optional {
        if let Some(value) = value {
            doc.add_text(field, value);
        }
    }
    doc.add_text(fields.status, span.status.as_str());
    doc.add_text(fields.kind, span.kind.as_str());
    doc.add_text(fields.source, span.source.as_str());
    for (key, value) in &span.metadata {
        doc.add_text(fields.meta, meta_text(key, value));
    }
    // a memtable row holds its attributes as text
    let read;
    let response_id = match &stored.json {
        Some(json) => {
            read = json.attribute(RESPONSE_ID_ATTRIBUTE);
            read.as_ref()
        }
        None => span.attributes.get(RESPONSE_ID_ATTRIBUTE),
    };
    if let Some(serde_json::Value::String(id)) = response_id {
        doc.add_text(fields.response, id);
    }
    doc.add_u64(fields.row, row as u64);
    doc.add_i64(fields.start, span.start_time);
    doc.add_u64(fields.seq, stored.seq);
    doc.add_f64(fields.duration, span.duration_ms);
    if let Some(cost) = span.total_cost_usd {
        doc.add_f64(fields.cost, cost);
    }
    doc
}

/// Writes the index of `rows` (in segment row order) to `dir`, durably: built in a temporary
/// directory, every file fsync'd, then renamed into place.
pub fn build(dir: &Path, rows: &[StoredSpan]) -> Result<()> {
    let tmp = dir.with_extension("idx.tmp");
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let (schema, fields) = schema();
    let index = Index::create_in_dir(&tmp, schema).map_err(|e| index_error(dir, e))?;
    index.tokenizers().register(
        TERMS_TOKENIZER,
        TermsTokenizer {
            presplit: true,
            ..TermsTokenizer::default()
        },
    );
    let mut writer = index
        .writer_with_num_threads::<TantivyDocument>(1, WRITER_MEMORY)
        .map_err(|e| index_error(dir, e))?;
    writer.set_merge_policy(Box::new(NoMergePolicy));
    let mut vocabulary = Vocabulary::default();
    // the text field's value, one row at a time
    let mut text = String::new();
    for (row, stored) in rows.iter().enumerate() {
        let doc = document(&fields, &mut vocabulary, &mut text, row, stored);
        writer.add_document(doc).map_err(|e| index_error(dir, e))?;
    }
    writer.commit().map_err(|e| index_error(dir, e))?;
    writer
        .wait_merging_threads()
        .map_err(|e| index_error(dir, e))?;
    for entry in fs::read_dir(&tmp).map_err(|e| Error::io(&tmp, e))? {
        let path = entry.map_err(|e| Error::io(&tmp, e))?.path();
        fs::File::open(&path)
            .and_then(|file| file.sync_all())
            .map_err(|e| Error::io(&path, e))?;
    }
    fsync_dir(&tmp)?;
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
    if let Some(parent) = dir.parent() {
        fsync_dir(parent)?;
    }
    Ok(())
}

/// Whether the index answers a full-text condition exactly (then rows need not be read to
/// check it): it does unless some term is too long to have been indexed.
pub fn answers_text(text: &str) -> bool {
    terms(text).all(|term| term.len() <= MAX_TERM_BYTES)
}

/// An open segment index.
pub struct SegmentIndex {
    reader: IndexReader,
    fields: Fields,
    path: PathBuf,
}

impl SegmentIndex {
    pub fn open(dir: &Path) -> Result<SegmentIndex> {
        let index = Index::open_in_dir(dir).map_err(|e| index_error(dir, e))?;
        let (expected, fields) = schema();
        if index.schema() != expected {
            return Err(index_error(dir, "schema does not match this version"));
        }
        // The index never changes once written: no reload, no file watcher.
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(|e| index_error(dir, e))?;
        Ok(SegmentIndex {
            reader,
            fields,
            path: dir.to_path_buf(),
        })
    }

    /// Number of documents (= segment rows).
    pub fn rows(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// Rows that may match `filter`, in row order: its terms, its start-time window and its
    /// duration and cost ranges are applied here.
    pub fn candidates(&self, filter: &SpanFilter) -> Result<Vec<Candidate>> {
        let query = self.query_for(filter);
        self.collect(query.as_ref(), Ranges::of(filter))
    }

    /// The highest sequence number this segment holds for a span, if any.
    pub fn newest_seq(&self, trace_id: &str, span_id: &str) -> Result<Option<u64>> {
        let filter = SpanFilter {
            trace_id: Some(trace_id.to_string()),
            span_id: Some(span_id.to_string()),
            ..SpanFilter::default()
        };
        let found = self.candidates(&filter)?;
        Ok(found.iter().map(|candidate| candidate.seq).max())
    }

    /// `key_hash` of every span key this segment holds, sorted.
    pub fn key_hashes(&self) -> Result<Vec<u64>> {
        let searcher = self.reader.searcher();
        let mut hashes = Vec::with_capacity(searcher.num_docs() as usize);
        for reader in searcher.segment_readers() {
            let keys = reader
                .fast_fields()
                .u64("key")
                .map_err(|e| index_error(&self.path, e))?;
            hashes.extend((0..reader.max_doc()).filter_map(|doc| keys.first(doc)));
        }
        hashes.sort_unstable();
        hashes.dedup();
        Ok(hashes)
    }

    fn collect(&self, query: &dyn Query, ranges: Ranges) -> Result<Vec<Candidate>> {
        let searcher = self.reader.searcher();
        let mut found = searcher
            .search(query, &CandidateCollector { ranges })
            .map_err(|e| index_error(&self.path, e))?;
        found.sort_unstable_by_key(|candidate| candidate.row);
        Ok(found)
    }

    fn query_for(&self, filter: &SpanFilter) -> Box<dyn Query> {
        let f = &self.fields;
        let mut required: Vec<Box<dyn Query>> = Vec::new();
        let term = |field: Field, text: &str| -> Option<Box<dyn Query>> {
            (text.len() <= MAX_TERM_BYTES).then(|| {
                Box::new(TermQuery::new(
                    Term::from_field_text(field, text),
                    IndexRecordOption::Basic,
                )) as Box<dyn Query>
            })
        };
        // with a span id too, `Ranges` compares the key's hash
        if let Some(trace_id) = &filter.trace_id {
            required.extend(term(f.trace, trace_id));
        }
        let equalities = [
            (f.session, &filter.session_id),
            (f.user, &filter.user_id),
            (f.model, &filter.model),
            (f.provider, &filter.provider),
            (f.alias, &filter.routing_alias),
            (f.service, &filter.service_name),
        ];
        for (field, value) in equalities {
            if let Some(value) = value {
                required.extend(term(field, value));
            }
        }
        if let Some(status) = filter.status {
            required.extend(term(f.status, status.as_str()));
        }
        if let Some(source) = filter.source {
            required.extend(term(f.source, source.as_str()));
        }
        if !filter.kinds.is_empty() {
            let any: Vec<Box<dyn Query>> = filter
                .kinds
                .iter()
                .filter_map(|kind| term(f.kind, kind.as_str()))
                .collect();
            required.push(Box::new(BooleanQuery::union(any)));
        }
        for (key, value) in &filter.metadata {
            required.extend(term(f.meta, &meta_text(key, value)));
        }
        for (key, value) in &filter.attributes {
            if key == RESPONSE_ID_ATTRIBUTE {
                required.extend(term(f.response, value));
            }
        }
        if let Some(text) = &filter.text {
            for word in terms(text) {
                required.extend(term(f.text, &word));
            }
        }
        if required.is_empty() {
            Box::new(AllQuery)
        } else {
            Box::new(BooleanQuery::intersection(required))
        }
    }
}

/// The conditions of a filter checked on fast fields: ranges, and the one span asked for.
#[derive(Debug, Clone, Copy)]
struct Ranges {
    since: i64,
    until: i64,
    min_duration: Option<f64>,
    max_duration: Option<f64>,
    min_cost: Option<f64>,
    max_cost: Option<f64>,
    /// `key_hash` of the one span asked for.
    key: Option<u64>,
}

impl Ranges {
    fn of(filter: &SpanFilter) -> Ranges {
        let (since, until) = filter.time_window();
        Ranges {
            key: match (&filter.trace_id, &filter.span_id) {
                (Some(trace_id), Some(span_id)) => Some(key_hash(trace_id, span_id)),
                _ => None,
            },
            since,
            until,
            min_duration: filter.min_duration_ms,
            max_duration: filter.max_duration_ms,
            min_cost: filter.min_cost_usd,
            max_cost: filter.max_cost_usd,
        }
    }

    /// The same comparisons as `SpanFilter::matches`; a span without a cost fails any cost
    /// bound.
    fn admit(&self, start: i64, duration: Option<f64>, cost: Option<f64>) -> bool {
        let within = |value: Option<f64>, min: Option<f64>, max: Option<f64>| {
            (min.is_none() && max.is_none())
                || value.is_some_and(|value| {
                    min.is_none_or(|min| value >= min) && max.is_none_or(|max| value <= max)
                })
        };
        start >= self.since
            && start < self.until
            && within(duration, self.min_duration, self.max_duration)
            && within(cost, self.min_cost, self.max_cost)
    }
}

struct CandidateCollector {
    ranges: Ranges,
}

struct SegmentCandidates {
    ranges: Ranges,
    row: Column<u64>,
    start: Column<i64>,
    seq: Column<u64>,
    duration: Column<f64>,
    cost: Column<f64>,
    /// Read only when a key is asked for.
    key: Option<Column<u64>>,
    found: Vec<Candidate>,
}

impl Collector for CandidateCollector {
    type Fruit = Vec<Candidate>;
    type Child = SegmentCandidates;

    fn for_segment(&self, _: u32, reader: &SegmentReader) -> tantivy::Result<SegmentCandidates> {
        let fast = reader.fast_fields();
        Ok(SegmentCandidates {
            ranges: self.ranges,
            row: fast.u64("row")?,
            start: fast.i64("start")?,
            seq: fast.u64("seq")?,
            duration: fast.f64("duration")?,
            cost: fast.f64("cost")?,
            key: match self.ranges.key {
                Some(_) => Some(fast.u64("key")?),
                None => None,
            },
            found: Vec::new(),
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(&self, fruits: Vec<Vec<Candidate>>) -> tantivy::Result<Vec<Candidate>> {
        Ok(fruits.into_iter().flatten().collect())
    }
}

impl SegmentCollector for SegmentCandidates {
    type Fruit = Vec<Candidate>;

    fn collect(&mut self, doc: DocId, _: Score) {
        let start = self.start.first(doc).unwrap_or(i64::MIN);
        if !self
            .ranges
            .admit(start, self.duration.first(doc), self.cost.first(doc))
        {
            return;
        }
        if let (Some(wanted), Some(keys)) = (self.ranges.key, &self.key)
            && keys.first(doc) != Some(wanted)
        {
            return;
        }
        if let (Some(row), Some(seq)) = (self.row.first(doc), self.seq.first(doc)) {
            self.found.push(Candidate {
                row: row as u32,
                start,
                seq,
            });
        }
    }

    fn harvest(self) -> Vec<Candidate> {
        self.found
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use llmtrace_model::{SpanKind, SpanSource, SpanStatus};
    use proptest::prelude::*;

    use super::*;

    fn row(n: u32) -> StoredSpan {
        let words = ["Paris", "Straße", "ΟΔΟΣ", "tool_call", "KELVIN"];
        StoredSpan {
            seq: u64::from(n) + 100,
            span: Arc::new(Span {
                project: "p".into(),
                trace_id: format!("{:032x}", n / 3 + 1),
                span_id: format!("{:016x}", n + 1),
                start_time: i64::from(n) * 10,
                session_id: (!n.is_multiple_of(4)).then(|| format!("s{}", n % 4)),
                user_id: Some(format!("u{}", n % 3)),
                model: Some(format!("m{}", n % 5)),
                request_model: Some(format!("m{}", (n + 1) % 5)),
                provider: Some(["openai", "anthropic"][n as usize % 2].into()),
                routing_alias: n.is_multiple_of(7).then(|| "smart".to_string()),
                service_name: Some(format!("svc{}", n % 2)),
                status: [SpanStatus::Ok, SpanStatus::Error, SpanStatus::Timeout][n as usize % 3],
                kind: [SpanKind::Llm, SpanKind::Tool, SpanKind::Agent][n as usize % 3],
                source: [SpanSource::Otlp, SpanSource::Gateway][n as usize % 2],
                input_text: format!("{} and {n}", words[n as usize % 5]),
                output_text: words[(n as usize + 2) % 5].to_lowercase(),
                metadata: BTreeMap::from([("tier".to_string(), format!("t{}", n % 2))]),
                duration_ms: f64::from(n),
                total_cost_usd: (!n.is_multiple_of(5)).then(|| f64::from(n) / 1000.0),
                ..Span::default()
            }),
            json: None,
        }
    }

    fn built(rows: &[StoredSpan]) -> (tempfile::TempDir, SegmentIndex) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0001.idx");
        build(&path, rows).unwrap();
        let index = SegmentIndex::open(&path).unwrap();
        (dir, index)
    }

    fn rows_of(candidates: &[Candidate]) -> Vec<u32> {
        candidates.iter().map(|candidate| candidate.row).collect()
    }

    #[test]
    fn candidates_are_exactly_the_rows_an_indexed_filter_matches() {
        let rows: Vec<StoredSpan> = (0..60).map(row).collect();
        let (_dir, index) = built(&rows);
        assert_eq!(index.rows(), 60);
        let base = SpanFilter::for_project("p");
        let filters = vec![
            base.clone(),
            SpanFilter {
                trace_id: Some(format!("{:032x}", 5)),
                ..base.clone()
            },
            SpanFilter {
                trace_id: Some(format!("{:032x}", 5)),
                span_id: Some(format!("{:016x}", 13)),
                ..base.clone()
            },
            SpanFilter {
                session_id: Some("s2".into()),
                user_id: Some("u1".into()),
                ..base.clone()
            },
            // Either the response model or the requested one.
            SpanFilter {
                model: Some("m3".into()),
                ..base.clone()
            },
            SpanFilter {
                provider: Some("anthropic".into()),
                routing_alias: Some("smart".into()),
                ..base.clone()
            },
            SpanFilter {
                status: Some(SpanStatus::Error),
                service_name: Some("svc1".into()),
                ..base.clone()
            },
            SpanFilter {
                kinds: vec![SpanKind::Tool, SpanKind::Agent],
                source: Some(SpanSource::Gateway),
                ..base.clone()
            },
            SpanFilter {
                metadata: vec![("tier".into(), "t1".into())],
                ..base.clone()
            },
            SpanFilter {
                text: Some("PARIS".into()),
                ..base.clone()
            },
            SpanFilter {
                text: Some("straße οδος".into()),
                ..base.clone()
            },
            SpanFilter {
                text: Some("tool call".into()),
                ..base.clone()
            },
            SpanFilter {
                text: Some("kelvin 17".into()),
                ..base.clone()
            },
            SpanFilter {
                text: Some("absent".into()),
                ..base.clone()
            },
            SpanFilter {
                min_duration_ms: Some(12.0),
                max_duration_ms: Some(30.0),
                ..base.clone()
            },
            // Spans without a cost fail any cost bound.
            SpanFilter {
                min_cost_usd: Some(0.02),
                ..base.clone()
            },
            SpanFilter {
                max_cost_usd: Some(0.02),
                since: Some(50),
                until: Some(400),
                ..base.clone()
            },
        ];
        for filter in filters {
            let expected: Vec<u32> = (0..60)
                .filter(|&n| filter.matches(&rows[n as usize].span))
                .collect();
            let found = index.candidates(&filter).unwrap();
            assert_eq!(rows_of(&found), expected, "{filter:?}");
        }
        let window = SpanFilter {
            since: Some(100),
            until: Some(200),
            ..base.clone()
        };
        let window = index.candidates(&window).unwrap();
        assert_eq!(rows_of(&window), (10..20).collect::<Vec<u32>>());
        assert_eq!(window[0].start, 100);
        assert_eq!(window[0].seq, 110);
    }

    #[test]
    fn conditions_the_index_cannot_answer_leave_every_row_a_candidate() {
        let rows: Vec<StoredSpan> = (0..10).map(row).collect();
        let (_dir, index) = built(&rows);
        let long = "x".repeat(MAX_TERM_BYTES + 1);
        assert!(!answers_text(&long) && answers_text("paris"));
        let filter = SpanFilter {
            text: Some(long),
            attributes: vec![("a".into(), "b".into())],
            ..SpanFilter::for_project("p")
        };
        let found = index.candidates(&filter).unwrap();
        assert_eq!(rows_of(&found), (0..10).collect::<Vec<u32>>());
    }

    #[test]
    fn newest_seq_names_the_latest_version_held() {
        let mut rows: Vec<StoredSpan> = (0..5).map(row).collect();
        let mut rewritten = rows[2].clone();
        rewritten.seq = 999;
        rows.push(rewritten);
        let (_dir, index) = built(&rows);
        let span = &rows[2].span;
        assert_eq!(
            index.newest_seq(&span.trace_id, &span.span_id).unwrap(),
            Some(999)
        );
        assert_eq!(
            index
                .newest_seq(&span.trace_id, "ffffffffffffffff")
                .unwrap(),
            None
        );
    }

    /// The tokens of `text`, the same in both modes (it holds no `TERM_SEPARATOR`).
    fn tokens(text: &str) -> Vec<String> {
        let modes = [false, true].map(|presplit| {
            let mut tokenizer = TermsTokenizer {
                presplit,
                ..TermsTokenizer::default()
            };
            let mut stream = tokenizer.token_stream(text);
            let mut tokens = Vec::new();
            while stream.advance() {
                tokens.push(stream.token().text.clone());
            }
            tokens
        });
        let [plain, presplit] = modes;
        assert_eq!(plain, presplit);
        plain
    }

    /// A conversation's calls: each resends the history before it, and long answers.
    fn conversation_rows(lines: &[String], turns: &[(usize, usize)]) -> Vec<StoredSpan> {
        let mut history: Vec<&str> = Vec::new();
        turns
            .iter()
            .enumerate()
            .map(|(n, &(question, answer))| {
                history.push(&lines[question % lines.len()]);
                let input_text = history.join("\n");
                let output_text = lines[answer % lines.len()].clone();
                history.push(&lines[answer % lines.len()]);
                let mut stored = row(n as u32);
                let span = Arc::make_mut(&mut stored.span);
                span.session_id = Some(format!("s{}", n % 2));
                span.input_text = input_text;
                span.output_text = output_text;
                stored
            })
            .collect()
    }

    fn expect_candidates(rows: &[StoredSpan], index: &SegmentIndex, filter: &SpanFilter) {
        let expected: Vec<u32> = (0..rows.len() as u32)
            .filter(|&n| filter.matches(&rows[n as usize].span))
            .collect();
        let found = index.candidates(filter).unwrap();
        assert_eq!(rows_of(&found), expected, "{filter:?}");
    }

    #[test]
    fn terms_of_resent_history_find_every_call_that_resends_it() {
        let line = |words: &str, n: usize| format!("{} {n}", vec![words; 40].join(" "));
        let lines = vec![
            line("alpha beta", 1),
            "short line".to_string(),
            line("gamma Delta", 2),
            line("ΟΔΟΣ straße", 3),
            line("epsilon", 4),
        ];
        let turns = [(0, 1), (2, 4), (3, 0), (1, 2), (4, 3), (0, 4)];
        let rows = conversation_rows(&lines, &turns);
        let (_dir, index) = built(&rows);
        assert_eq!(index.rows(), rows.len() as u64);
        let base = SpanFilter::for_project("p");
        for text in [
            "alpha",
            "delta",
            "οδος",
            "STRASSE",
            "straße",
            "short",
            "epsilon 4",
            "beta 3",
            "gamma straße",
            "absent",
            "line alpha",
            "1",
            "40",
        ] {
            for session in [None, Some("s1")] {
                let filter = SpanFilter {
                    text: Some(text.into()),
                    session_id: session.map(String::from),
                    ..base.clone()
                };
                expect_candidates(&rows, &index, &filter);
            }
        }
    }

    fn piece_terms(text: &str) -> Vec<String> {
        let mut found: Vec<String> = split_pieces(text).flat_map(terms).collect();
        found.sort_unstable();
        found.dedup();
        found
    }

    #[test]
    fn a_row_hands_the_index_new_text_as_text_and_text_seen_before_as_its_terms_once() {
        let history = "Hello Paris, hello again\nΟΔΟΣ straße ".repeat(20);
        let lines = [history, "paris PARIS \u{0} nul".to_string()];
        let rows = conversation_rows(&lines, &[(0, 1), (1, 0), (0, 0)]);
        let mut vocabulary = Vocabulary::default();
        let mut tokenizer = TermsTokenizer {
            presplit: true,
            ..TermsTokenizer::default()
        };
        let mut value = String::new();
        for (n, stored) in rows.iter().enumerate() {
            let span = &stored.span;
            vocabulary.row_text(
                n as u32 + 1,
                [&span.input_text, &span.output_text],
                &mut value,
            );
            let mut stream = tokenizer.token_stream(&value);
            let mut handed = Vec::new();
            while stream.advance() {
                handed.push(stream.token().text.clone());
            }
            let mut expected: Vec<String> = terms(&span.input_text)
                .chain(terms(&span.output_text))
                .collect();
            expected.sort_unstable();
            expected.dedup();
            handed.sort_unstable();
            handed.dedup();
            assert_eq!(handed, expected, "row {n}");
            // Text seen before comes as terms, each once.
            let (text, split) = value.split_once(TERM_SEPARATOR).unwrap_or((&value, ""));
            let split: Vec<&str> = split.split_terminator(TERM_SEPARATOR).collect();
            let mut distinct = split.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(split.len(), distinct.len(), "row {n}: {split:?}");
            assert!(!text.contains(TERM_SEPARATOR));
            // Later rows resend the first one's history.
            assert!(n == 0 || !split.is_empty(), "row {n}");
        }
    }

    proptest! {
        // Long lines of repeated words, cut by the length rule; short ones, cut by newlines.
        #[test]
        fn pieces_hold_every_term_of_their_text_whole(
            parts in prop::collection::vec(("[a-zé0-9]{1,12}", 0usize..4, 1usize..2500), 0..8)
        ) {
            let mut text = String::new();
            for (word, separator, repeat) in &parts {
                let separator = [" ", "\n", ", ", "—"][*separator];
                for _ in 0..*repeat {
                    text.push_str(word);
                    text.push_str(separator);
                }
            }
            let mut whole: Vec<String> = terms(&text).collect();
            whole.sort_unstable();
            whole.dedup();
            prop_assert_eq!(piece_terms(&text), whole);
            let pieces: Vec<&str> = split_pieces(&text).collect();
            for (n, piece) in pieces.iter().enumerate() {
                // Only a text's last piece is shorter than the minimum, and a piece runs
                // past the maximum only to its next ASCII separator.
                prop_assert!(n + 1 == pieces.len() || piece.len() >= MIN_PIECE);
                let past = piece.as_bytes().get(MAX_PIECE..).unwrap_or_default();
                prop_assert!(past.iter().all(|b| !b.is_ascii() || b.is_ascii_alphanumeric()));
            }
        }

        #[test]
        fn candidates_for_text_in_pieces_are_the_rows_that_match(
            lines in prop::collection::vec("[a-c]{1,3}( [a-cé]{1,3}){20,120}", 1..6),
            turns in prop::collection::vec((0usize..6, 0usize..6), 1..12),
            query in "[a-c]{1,3}( [a-cé]{1,3})?",
        ) {
            let rows = conversation_rows(&lines, &turns);
            let (_dir, index) = built(&rows);
            let filter = SpanFilter {
                text: Some(query),
                ..SpanFilter::for_project("p")
            };
            expect_candidates(&rows, &index, &filter);
        }

        #[test]
        fn the_index_tokenizer_yields_the_reference_terms(text in "\\PC{0,40}") {
            prop_assert_eq!(tokens(&text), terms(&text).collect::<Vec<_>>());
        }

        // Mostly ASCII, as message text is, with letters, digits, marks and separators from
        // beyond it inside and between words.
        #[test]
        fn mostly_ascii_text_yields_the_reference_terms(
            text in "[a-zA-Z0-9 .,_'\"\n\t-]{0,30}([ÀéßΣЖ中٣Ⅻ\u{301}\u{a0}…—][a-zA-Z0-9 .-]{0,10}){0,4}"
        ) {
            prop_assert_eq!(tokens(&text), terms(&text).collect::<Vec<_>>());
        }
    }
}
