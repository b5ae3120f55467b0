//! Write-ahead log: segmented files of checksummed records.
//!
//! ```text
//! file   := magic "LTWAL002" (8 bytes) end:u64le crc:u32le 0:u32le record*
//!           end: where the last record written ends (bytes past it are left over from
//!           the file's earlier use and never read); crc = crc32c(end)
//!         | magic "LTWAL001" (8 bytes) record*          (before files were reused; read)
//! record := len:u32le crc:u32le body[len]
//! body   := seq:u64le kind:u8 payload        crc = crc32c(body)
//! kind   := 1 spans (payload = JSON array of Span) | 2 deletion (payload = JSON Deletion)
//!         | 3 spans, zstd (payload = zstd frame of the JSON array of Span)
//!         | 4 spans, zstd, derived text (payload = zstd frame of
//!             count:u32le flags:u8[count] JSON array of count Span)
//!         | 5 rows, zstd (payload = zstd frame of count:u32le flags:u8[count]
//!             row[count])
//! flags  := bit 0: the span's input_text is flatten_text(input), written as ""
//!           bit 1: the same for output_text and output
//! row    := (len:u32le bytes[len])[4] len:u32le span-JSON[len]
//!           the documents input, output, tools, attributes as JSON text (len 0xFFFFFFFF:
//!           null), then the Span with those fields null and flagged texts ""
//! ```
//!
//! Span batches are written compressed (kind 4): chat calls resend their history, so a
//! batch compresses several-fold, and the log's write bandwidth is what bounds durable
//! ingest of large spans. A span's message text is usually its messages' text
//! (`llmtrace_model::span::flatten_text`): that copy is left out and derived again on
//! replay, which halves what is serialized and compressed for chat spans. A span's JSON
//! documents are written as the text the memtable keeps them in (`memtable::JsonFields`),
//! so they are serialized once per append. Kinds 1, 3 and 4 are still read.
//!
//! Files are named `{first_seq:020}.wal`; the writer starts a new file at every memtable
//! rotation, so a file's rows are either all in the memtable or all in a flushed segment.
//! Recovery reads records up to the header's end (a file without a valid header, or of the
//! first format: until the first bad frame); a record there that is short, over-long or
//! fails its checksum ends the replay, and from it to the end is cut off and moved to
//! `quarantine/`, never silently deleted, and the cut is reported.
//!
//! A file whose rows are flushed is kept for reuse (`retire`: renamed `{first_seq}.free`,
//! at most `MAX_FREE_FILES`), and the next file is that one renamed and written over from
//! the start. Writing over pages the OS already holds is several times cheaper than
//! growing a new file (new page-cache pages, block allocation, and a journal commit for
//! the new size at every fdatasync); the header's `end`, rewritten with every commit, is
//! what tells the new records from the old ones behind them. Free files hold flushed
//! rows, so a deletion discards them (`discard_free_files`), and so does opening a store.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use llmtrace_model::span::{INPUT_TEXT_DERIVED, OUTPUT_TEXT_DERIVED};
use llmtrace_model::{Deletion, Span};

use crate::error::{Error, Result};
use crate::fsutil::{fsync_dir, move_to_quarantine};
use crate::memtable::{JsonFields, Prepared};

/// Files whose header says where their records end (those that may be reused).
pub const MAGIC: &[u8; 8] = b"LTWAL002";
/// Files written before files were reused: records until the first bad frame.
pub const MAGIC_V1: &[u8; 8] = b"LTWAL001";
/// Magic, end, its checksum and four zero bytes: the first record starts here.
pub const HEADER_LEN: usize = 24;
/// Flushed files kept for reuse; more are deleted. The WAL thread takes one at each
/// rotation and a flush gives one back, so two cover a flush that finishes late.
const MAX_FREE_FILES: usize = 2;
const FREE_SUFFIX: &str = ".free";
const KIND_SPANS: u8 = 1;
const KIND_DELETION: u8 = 2;
const KIND_SPANS_ZSTD: u8 = 3;
const KIND_SPANS_DERIVED_TEXT: u8 = 4;
const KIND_ROWS: u8 = 5;
/// A kind-5 document length meaning "null".
const NO_DOCUMENT: u32 = u32::MAX;
/// How a batch's WAL record is compressed. Either way the record is a zstd frame (kind 5),
/// so every version reads what any other wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WalCompression {
    /// zstd's fastest setting, which searches for almost no matches: the record is about
    /// as large as its rows, for a fraction of the CPU (session 27: the WAL record of a span
    /// with ~2 KB of text 5.8 against 14–20 µs, 3.2× the bytes). WAL files live only until
    /// their rows are flushed, and on two cores the CPU is what ingest runs out of.
    #[default]
    None,
    /// zstd level 1: the fastest real level already catches repeated history. (LZ4, from
    /// the pure-Rust `lz4_flex`, took as long as this under `perf`.)
    Zstd,
}

impl std::str::FromStr for WalCompression {
    type Err = String;

    /// The setting's names: `none` or `zstd`.
    fn from_str(name: &str) -> std::result::Result<WalCompression, String> {
        match name {
            "none" => Ok(WalCompression::None),
            "zstd" => Ok(WalCompression::Zstd),
            other => Err(format!(
                "wal_compression must be none or zstd, got {other:?}"
            )),
        }
    }
}

impl WalCompression {
    fn level(self) -> i32 {
        match self {
            WalCompression::None => -1000,
            WalCompression::Zstd => 1,
        }
    }
}
/// No single record may be larger than this; a longer length field means corruption.
pub const MAX_RECORD_BYTES: u32 = 512 << 20;
const HEADER_BYTES: usize = 8;

/// The decoded contents of one WAL record.
#[derive(Debug, Clone, PartialEq)]
pub enum WalEntry {
    Spans(Vec<Span>),
    Deletion(Deletion),
}

/// A record ready to be written: its payload serialized by the caller's thread.
pub struct EncodedEntry {
    kind: u8,
    payload: Vec<u8>,
}

impl EncodedEntry {
    /// Serializes and compresses a batch of memtable-ready rows (kind 5); see
    /// [`RowsEncoder`].
    pub fn rows(rows: &mut [Prepared], compression: WalCompression) -> Result<EncodedEntry> {
        let mut encoder = RowsEncoder::new(compression);
        for row in rows {
            encoder.push(row)?;
        }
        encoder.finish()
    }

    /// Bytes of the record's payload.
    pub fn len(&self) -> usize {
        self.payload.len()
    }

    pub fn is_empty(&self) -> bool {
        self.payload.is_empty()
    }

    pub fn deletion(deletion: &Deletion) -> Result<EncodedEntry> {
        Ok(EncodedEntry {
            kind: KIND_DELETION,
            payload: serde_json::to_vec(deletion).map_err(Error::encode)?,
        })
    }
}

/// Largest serialization buffer an appending thread keeps between batches.
const MAX_KEPT_BUFFER_BYTES: usize = 64 << 20;

thread_local! {
    /// A batch's record before compression, serialized into a buffer each appending thread
    /// keeps: a fresh one grows by reallocation, and its new pages had to be faulted in and
    /// zeroed for every batch (about a quarter of the appending thread's time at batch
    /// 1000, under `perf`).
    static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// One compression context per appending thread: creating a context costs more than
    /// compressing a small batch.
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

/// One kind-5 row: its documents, then the span beside them (so that zstd's window finds a
/// text kept as well as its messages), the texts its messages give left out while it is
/// serialized and put back whatever happens.
fn write_row(buffer: &mut Vec<u8>, row: &mut Prepared) -> Result<()> {
    for text in row.json.texts() {
        match text {
            Some(text) => {
                buffer.extend_from_slice(&(text.len() as u32).to_le_bytes());
                buffer.extend_from_slice(text.as_bytes());
            }
            None => buffer.extend_from_slice(&NO_DOCUMENT.to_le_bytes()),
        }
    }
    let flag = row.json.derived;
    let span = &mut row.span;
    let take = |bit: u8, text: &mut String| (flag & bit != 0).then(|| std::mem::take(text));
    let input = take(INPUT_TEXT_DERIVED, &mut span.input_text);
    let output = take(OUTPUT_TEXT_DERIVED, &mut span.output_text);
    let at = buffer.len();
    buffer.extend_from_slice(&[0; 4]);
    let written = serde_json::to_writer(&mut *buffer, &*span).map_err(Error::encode);
    let len = (buffer.len() - at - 4) as u32;
    buffer[at..at + 4].copy_from_slice(&len.to_le_bytes());
    if let Some(text) = input {
        span.input_text = text;
    }
    if let Some(text) = output {
        span.output_text = text;
    }
    written
}

/// Builds a kind-5 record row by row, so that each row is serialized right after it was
/// prepared, while its span is still in the CPU's cache. Documents are copied as the text
/// they already are; text fields their messages determine are taken out of the span while it
/// is serialized and put back.
pub struct RowsEncoder {
    rows: Vec<u8>,
    flags: Vec<u8>,
    compression: WalCompression,
}

impl RowsEncoder {
    pub fn new(compression: WalCompression) -> RowsEncoder {
        let mut rows = BUFFER.with(|cell| std::mem::take(&mut *cell.borrow_mut()));
        rows.clear();
        RowsEncoder {
            rows,
            flags: Vec::new(),
            compression,
        }
    }

    pub fn push(&mut self, row: &mut Prepared) -> Result<()> {
        self.flags.push(row.json.derived);
        write_row(&mut self.rows, row)
    }

    /// The compressed record: the row count and flags go before the rows.
    pub fn finish(self) -> Result<EncodedEntry> {
        let RowsEncoder {
            mut rows,
            flags,
            compression,
        } = self;
        let mut header = (flags.len() as u32).to_le_bytes().to_vec();
        header.extend_from_slice(&flags);
        rows.splice(0..0, header);
        let payload = compress(&rows, compression.level());
        if rows.capacity() <= MAX_KEPT_BUFFER_BYTES {
            BUFFER.with(|cell| *cell.borrow_mut() = rows);
        }
        Ok(EncodedEntry {
            kind: KIND_ROWS,
            payload: payload?,
        })
    }
}

fn compress(bytes: &[u8], level: i32) -> Result<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let (at, compressor) = match slot.as_mut() {
            Some(cached) => cached,
            None => slot.insert((
                level,
                zstd::bulk::Compressor::new(level).map_err(Error::encode)?,
            )),
        };
        if *at != level {
            compressor
                .set_compression_level(level)
                .map_err(Error::encode)?;
            *at = level;
        }
        compressor.compress(bytes).map_err(Error::encode)
    })
}

fn frame(seq: u64, entry: &EncodedEntry, out: &mut Vec<u8>) {
    let body_len = 8 + 1 + entry.payload.len();
    let mut crc = crc32c::crc32c(&seq.to_le_bytes());
    crc = crc32c::crc32c_append(crc, &[entry.kind]);
    crc = crc32c::crc32c_append(crc, &entry.payload);
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.push(entry.kind);
    out.extend_from_slice(&entry.payload);
}

pub fn file_name(first_seq: u64) -> String {
    format!("{first_seq:020}.wal")
}

/// WAL files in a directory, oldest first, with the first sequence number each holds.
pub fn list_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    files_ending(dir, ".wal")
}

fn files_ending(dir: &Path, suffix: &str) -> Result<Vec<(u64, PathBuf)>> {
    let mut files = vec![];
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let first_seq = name
            .to_str()
            .and_then(|name| name.strip_suffix(suffix)?.parse().ok());
        if let Some(first_seq) = first_seq {
            files.push((first_seq, entry.path()));
        }
    }
    files.sort();
    Ok(files)
}

/// Done with the WAL file starting at `first_seq`, whose rows are all in flushed segments:
/// keeps it for reuse when `reuse` and fewer than `MAX_FREE_FILES` are kept, deletes it
/// otherwise.
pub fn retire(dir: &Path, first_seq: u64, reuse: bool) -> Result<()> {
    let path = dir.join(file_name(first_seq));
    if reuse && files_ending(dir, FREE_SUFFIX)?.len() < MAX_FREE_FILES {
        let free = dir.join(format!("{first_seq:020}{FREE_SUFFIX}"));
        fs::rename(&path, &free).map_err(|e| Error::io(&path, e))
    } else {
        fs::remove_file(&path).map_err(|e| Error::io(&path, e))
    }
}

/// Deletes every file kept for reuse (they hold flushed rows a deletion may have meant).
pub fn discard_free_files(dir: &Path) -> Result<()> {
    let free = files_ending(dir, FREE_SUFFIX)?;
    for (_, path) in &free {
        fs::remove_file(path).map_err(|e| Error::io(path, e))?;
    }
    if !free.is_empty() {
        fsync_dir(dir)?;
    }
    Ok(())
}

/// The header of a file whose records end at `end`.
fn header(end: u64) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..8].copy_from_slice(MAGIC);
    header[8..16].copy_from_slice(&end.to_le_bytes());
    header[16..20].copy_from_slice(&crc32c::crc32c(&end.to_le_bytes()).to_le_bytes());
    header
}

/// Where a file's records start, and where its header says they end (`None` when the
/// file is of the first format or its header is damaged: then they end at the first bad
/// frame). `None` overall when the file has no valid magic at all.
fn layout(data: &[u8]) -> Option<(usize, Option<usize>)> {
    if data.starts_with(MAGIC_V1) {
        return Some((MAGIC_V1.len(), None));
    }
    if !data.starts_with(MAGIC) || data.len() < HEADER_LEN {
        return None;
    }
    let end = u64::from_le_bytes(data[8..16].try_into().ok()?);
    let crc = u32::from_le_bytes(data[16..20].try_into().ok()?);
    let valid = crc32c::crc32c(&data[8..16]) == crc && end >= HEADER_LEN as u64;
    Some((
        HEADER_LEN,
        valid.then(|| usize::try_from(end).unwrap_or(usize::MAX)),
    ))
}

/// The open file the writer appends to. Records are buffered in memory and reach the
/// file in one write per group commit, followed by the header naming their new end; a
/// failed write or sync puts the header (and the file's length) back to the last good
/// end, so a later record never follows garbage.
pub struct WalWriter {
    file: File,
    path: PathBuf,
    synced_bytes: u64,
    buffer: Vec<u8>,
}

impl WalWriter {
    /// Starts the file whose first record will carry `first_seq`: a free file renamed and
    /// written over when one is kept (`retire`), a new file otherwise.
    pub fn create(dir: &Path, first_seq: u64) -> Result<WalWriter> {
        let path = dir.join(file_name(first_seq));
        let reused = match files_ending(dir, FREE_SUFFIX)?.pop() {
            // the newest: its pages are the likeliest still held in memory
            Some((_, free)) => {
                fs::rename(&free, &path).map_err(|e| Error::io(&free, e))?;
                true
            }
            None => false,
        };
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(!reused)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        file.write_all(&header(HEADER_LEN as u64))
            .map_err(|e| Error::io(&path, e))?;
        file.sync_all().map_err(|e| Error::io(&path, e))?;
        fsync_dir(dir)?;
        Ok(WalWriter {
            file,
            path,
            synced_bytes: HEADER_LEN as u64,
            buffer: Vec::with_capacity(1 << 20),
        })
    }

    /// Buffers one record; nothing reaches the file until `sync`.
    pub fn write(&mut self, seq: u64, entry: &EncodedEntry) -> Result<()> {
        frame(seq, entry, &mut self.buffer);
        Ok(())
    }

    /// Writes buffered records to the OS and, when `fsync`, to stable storage.
    pub fn sync(&mut self, fsync: bool) -> Result<()> {
        let result = self.try_sync(fsync);
        if result.is_err() {
            self.buffer.clear();
            // Best effort: drop whatever part of the failed write reached the file.
            let _ = self.file.write_all_at(&header(self.synced_bytes), 0);
            let _ = self.file.set_len(self.synced_bytes);
            let _ = self.file.seek(SeekFrom::Start(self.synced_bytes));
        }
        result
    }

    fn try_sync(&mut self, fsync: bool) -> Result<()> {
        let written = self.synced_bytes + self.buffer.len() as u64;
        if !self.buffer.is_empty() {
            self.file
                .write_all(&self.buffer)
                .map_err(|e| Error::io(&self.path, e))?;
            self.file
                .write_all_at(&header(written), 0)
                .map_err(|e| Error::io(&self.path, e))?;
        }
        if fsync {
            self.file
                .sync_data()
                .map_err(|e| Error::io(&self.path, e))?;
        }
        self.synced_bytes = written;
        self.buffer.clear();
        Ok(())
    }

    pub fn bytes(&self) -> u64 {
        self.synced_bytes + self.buffer.len() as u64
    }
}

/// What recovery found in one file.
#[derive(Debug, Default)]
pub struct ReplayReport {
    pub records: u64,
    /// Bytes cut off the end of a file because they did not form a valid record.
    pub cut_bytes: u64,
    pub cut_files: Vec<PathBuf>,
}

/// Reads every valid record of `path`; cuts and quarantines a torn or corrupt tail.
pub fn replay_file(
    path: &Path,
    quarantine_dir: &Path,
    report: &mut ReplayReport,
    mut apply: impl FnMut(u64, WalEntry) -> Result<()>,
) -> Result<()> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut file| file.read_to_end(&mut data))
        .map_err(|e| Error::io(path, e))?;
    let mut good_end = 0usize;
    // where valid records should end: the header's word, else the file's end
    let mut valid_end = data.len();
    let mut damaged_header = false;
    if let Some((start, end)) = layout(&data) {
        good_end = start;
        match end {
            Some(end) => valid_end = end,
            None => damaged_header = !data.starts_with(MAGIC_V1),
        }
        let records = &data[..valid_end.min(data.len())];
        while let Some((seq, entry, next)) = decode_record(records, good_end) {
            apply(seq, entry)?;
            report.records += 1;
            good_end = next;
        }
    }
    if good_end < valid_end || damaged_header {
        // a header may claim bytes the file never received: they count as cut too
        let cut = valid_end.saturating_sub(good_end);
        tracing::warn!(
            file = %path.display(),
            kept_bytes = good_end,
            cut_bytes = cut,
            "wal tail is torn or corrupt: cutting it at the last good record"
        );
        let tail = &data[good_end.min(data.len())..valid_end.min(data.len())];
        if !tail.is_empty() {
            let tail_path = move_to_quarantine(quarantine_dir, path, ".tail", tail)?;
            tracing::warn!(saved_to = %tail_path.display(), "cut wal bytes kept for inspection");
        }
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        if data.starts_with(MAGIC_V1) {
            // a file of the first format now ends at its last good record
            file.set_len(good_end as u64)
                .map_err(|e| Error::io(path, e))?;
        } else {
            // its header names the last good record (an empty file if not even the header
            // survived)
            let end = good_end.max(HEADER_LEN) as u64;
            file.set_len(end).map_err(|e| Error::io(path, e))?;
            file.write_all_at(&header(end), 0)
                .map_err(|e| Error::io(path, e))?;
        }
        file.sync_all().map_err(|e| Error::io(path, e))?;
        report.cut_bytes += cut as u64;
        report.cut_files.push(path.to_path_buf());
    }
    Ok(())
}

/// Decodes the record at `offset`; `None` when the bytes there are not a whole valid record.
fn decode_record(data: &[u8], offset: usize) -> Option<(u64, WalEntry, usize)> {
    let header = data.get(offset..offset + HEADER_BYTES)?;
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?);
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    if !(9..=MAX_RECORD_BYTES).contains(&len) {
        return None;
    }
    let body_start = offset + HEADER_BYTES;
    let body = data.get(body_start..body_start + len as usize)?;
    if crc32c::crc32c(body) != crc {
        return None;
    }
    let seq = u64::from_le_bytes(body[0..8].try_into().ok()?);
    let payload = &body[9..];
    let entry = match body[8] {
        KIND_SPANS => WalEntry::Spans(serde_json::from_slice(payload).ok()?),
        KIND_SPANS_ZSTD => {
            let json = zstd::stream::decode_all(payload).ok()?;
            WalEntry::Spans(serde_json::from_slice(&json).ok()?)
        }
        KIND_SPANS_DERIVED_TEXT => WalEntry::Spans(decode_derived(payload)?),
        KIND_ROWS => WalEntry::Spans(decode_rows(payload)?),
        KIND_DELETION => WalEntry::Deletion(serde_json::from_slice(payload).ok()?),
        _ => return None,
    };
    Some((seq, entry, body_start + len as usize))
}

/// A kind-4 payload: the spans, with the text fields left out derived again.
fn decode_derived(payload: &[u8]) -> Option<Vec<Span>> {
    let body = zstd::stream::decode_all(payload).ok()?;
    let count = u32::from_le_bytes(body.get(..4)?.try_into().ok()?) as usize;
    let flags = body.get(4..4usize.checked_add(count)?)?;
    let mut spans: Vec<Span> = serde_json::from_slice(&body[4 + count..]).ok()?;
    if spans.len() != count {
        return None;
    }
    for (span, &flag) in spans.iter_mut().zip(flags) {
        span.derive_text(flag);
    }
    Some(spans)
}

/// A kind-5 payload: the spans with their documents put back and the text fields left out
/// derived again.
fn decode_rows(payload: &[u8]) -> Option<Vec<Span>> {
    let body = zstd::stream::decode_all(payload).ok()?;
    let count = u32::from_le_bytes(body.get(..4)?.try_into().ok()?) as usize;
    let flags = body.get(4..4usize.checked_add(count)?)?;
    let mut at = 4 + count;
    let next = |at: &mut usize| -> Option<Option<&[u8]>> {
        let len = u32::from_le_bytes(body.get(*at..*at + 4)?.try_into().ok()?);
        *at += 4;
        if len == NO_DOCUMENT {
            return Some(None);
        }
        let bytes = body.get(*at..at.checked_add(len as usize)?)?;
        *at += len as usize;
        Some(Some(bytes))
    };
    let mut spans = Vec::with_capacity(count.min(body.len()));
    for &flag in flags {
        let mut texts: [Option<Box<str>>; 4] = Default::default();
        for text in &mut texts {
            if let Some(bytes) = next(&mut at)? {
                *text = Some(std::str::from_utf8(bytes).ok()?.into());
            }
        }
        let [input, output, tools, attributes] = texts;
        let documents = JsonFields {
            input,
            output,
            tools,
            attributes,
            derived: flag,
        };
        let mut span: Span = serde_json::from_slice(next(&mut at)??).ok()?;
        documents.restore(&mut span).ok()?;
        span.derive_text(flag);
        spans.push(span);
    }
    // nothing may follow the last span
    (at == body.len()).then_some(spans)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(n: u64) -> Span {
        Span {
            project: "p".into(),
            trace_id: format!("{n:032x}"),
            span_id: format!("{n:016x}"),
            input_text: format!("hello {n}"),
            ..Span::default()
        }
    }

    /// The record `append` writes for `spans`, checked to give the rows back as they were.
    fn encoded(spans: &[Span]) -> EncodedEntry {
        encoded_with(spans, WalCompression::default())
    }

    fn encoded_with(spans: &[Span], compression: WalCompression) -> EncodedEntry {
        let mut rows: Vec<Prepared> = spans.iter().cloned().map(Prepared::new).collect();
        let entry = EncodedEntry::rows(&mut rows, compression).unwrap();
        let whole: Vec<Span> = rows.iter().map(|row| row.whole().unwrap()).collect();
        assert_eq!(whole, spans, "the rows are given back whole");
        entry
    }

    /// A kind-4 record, as versions before kind 5 wrote them.
    fn kind_4(spans: &[Span]) -> EncodedEntry {
        let mut body = (spans.len() as u32).to_le_bytes().to_vec();
        let mut light = spans.to_vec();
        for span in &mut light {
            let flag = span.derived_text();
            body.push(flag);
            if flag & INPUT_TEXT_DERIVED != 0 {
                span.input_text.clear();
            }
            if flag & OUTPUT_TEXT_DERIVED != 0 {
                span.output_text.clear();
            }
        }
        serde_json::to_writer(&mut body, &light).unwrap();
        EncodedEntry {
            kind: KIND_SPANS_DERIVED_TEXT,
            payload: compress(&body, WalCompression::Zstd.level()).unwrap(),
        }
    }

    fn write_three(dir: &Path) -> PathBuf {
        let mut writer = WalWriter::create(dir, 1).unwrap();
        for seq in 1..=3 {
            writer.write(seq, &encoded(&[span(seq)])).unwrap();
        }
        writer.sync(true).unwrap();
        dir.join(file_name(1))
    }

    fn replay(path: &Path, quarantine: &Path) -> (Vec<u64>, ReplayReport) {
        let mut seqs = vec![];
        let mut report = ReplayReport::default();
        replay_file(path, quarantine, &mut report, |seq, _| {
            seqs.push(seq);
            Ok(())
        })
        .unwrap();
        (seqs, report)
    }

    #[test]
    fn replays_every_record_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_three(dir.path());
        let (seqs, report) = replay(&path, &dir.path().join("q"));
        assert_eq!(seqs, vec![1, 2, 3]);
        assert_eq!(report.cut_bytes, 0);
    }

    fn decoded(entry: &EncodedEntry) -> WalEntry {
        let mut bytes = Vec::new();
        frame(7, entry, &mut bytes);
        let (seq, decoded, end) = decode_record(&bytes, 0).unwrap();
        assert_eq!((seq, end), (7, bytes.len()));
        decoded
    }

    #[test]
    fn records_of_every_span_kind_decode() {
        let spans = vec![Span {
            trace_id: "t".into(),
            span_id: "s".into(),
            input_text: "hello ".repeat(100),
            input: serde_json::json!([{"role": "user", "content": [{"type": "text", "text": "hello"}]}]),
            attributes: serde_json::json!({"gen_ai.response.id": "r", "n": [1, 2.5, null]}),
            ..Span::default()
        }];
        let original = spans.clone();
        let written = encoded_with(&spans, WalCompression::Zstd);
        let fastest = encoded_with(&spans, WalCompression::None);
        assert_eq!((written.kind, fastest.kind), (KIND_ROWS, KIND_ROWS));
        let json = serde_json::to_vec(&spans).unwrap();
        assert!(
            written.payload.len() * 2 < json.len(),
            "repeated text compresses"
        );
        assert!(
            fastest.payload.len() > written.payload.len() * 2,
            "the fastest setting leaves the rows nearly as they are ({} against {} bytes)",
            fastest.payload.len(),
            written.payload.len()
        );
        // what earlier versions wrote
        let compressed = EncodedEntry {
            kind: KIND_SPANS_ZSTD,
            payload: compress(&json, WalCompression::Zstd.level()).unwrap(),
        };
        let plain = EncodedEntry {
            kind: KIND_SPANS,
            payload: json,
        };
        for entry in [written, fastest, kind_4(&spans), compressed, plain] {
            assert_eq!(decoded(&entry), WalEntry::Spans(original.clone()));
        }
    }

    /// Text its messages determine is left out of the record and derived on replay; any
    /// other text is kept as it came.
    #[test]
    fn message_text_is_derived_on_replay_only_where_the_messages_give_it() {
        let messages = |text: &str| {
            serde_json::json!([{"role": "user", "content": [{"type": "text", "text": text}]},
                {"role": "assistant", "content": [], "tool_calls": [{"name": "f", "arguments": "{}"}]}])
        };
        let long = "resent history ".repeat(200);
        let spans: Vec<Span> = [
            (
                messages(&long),
                format!("{long}\nf\n{{}}"),
                messages("a"),
                "a\nf\n{}".to_string(),
            ),
            // a text that is not its messages' (a source set it from elsewhere)
            (
                messages(&long),
                long.clone(),
                serde_json::Value::Null,
                "answer".to_string(),
            ),
            (
                messages("x"),
                String::new(),
                messages(""),
                "f\n{}".to_string(),
            ),
            (
                serde_json::Value::Null,
                String::new(),
                serde_json::Value::Null,
                String::new(),
            ),
        ]
        .into_iter()
        .enumerate()
        .map(|(n, (input, input_text, output, output_text))| Span {
            input,
            input_text,
            output,
            output_text,
            ..span(n as u64 + 1)
        })
        .collect();
        let entry = encoded(&spans);
        let body = zstd::stream::decode_all(&entry.payload[..]).unwrap();
        assert_eq!(&body[..4], &4u32.to_le_bytes());
        assert_eq!(
            &body[4..8],
            &[
                INPUT_TEXT_DERIVED | OUTPUT_TEXT_DERIVED,
                0,
                OUTPUT_TEXT_DERIVED,
                0
            ]
        );
        // the first two spans' messages (documents) and the second's own text
        let rest = String::from_utf8_lossy(&body[8..]);
        assert_eq!(
            rest.matches(&long).count(),
            3,
            "the derived copy is left out"
        );
        assert_eq!(decoded(&entry), WalEntry::Spans(spans.clone()));
        assert_eq!(decoded(&kind_4(&spans)), WalEntry::Spans(spans));
    }

    #[test]
    fn a_record_whose_count_or_document_lengths_disagree_is_not_decoded() {
        let spans = vec![span(1), span(2)];
        let tamper = |entry: EncodedEntry, at: usize, byte: u8| {
            let mut body = zstd::stream::decode_all(&entry.payload[..]).unwrap();
            body[at] = byte;
            let tampered = EncodedEntry {
                kind: entry.kind,
                payload: compress(&body, WalCompression::Zstd.level()).unwrap(),
            };
            let mut bytes = Vec::new();
            frame(1, &tampered, &mut bytes);
            decode_record(&bytes, 0)
        };
        assert!(tamper(kind_4(&spans), 0, 3).is_none());
        assert!(tamper(encoded(&spans), 0, 3).is_none());
        // the first document's length (null) made a length past the end
        assert!(tamper(encoded(&spans), 6, 0x7f).is_none());
    }

    #[test]
    fn the_appending_threads_buffer_is_not_carried_into_the_next_batch() {
        let batch = |n: u64, text: &str| {
            vec![Span {
                input_text: text.repeat(n as usize),
                ..span(n)
            }]
        };
        let long = encoded(&batch(50, "long text "));
        let short = encoded(&batch(1, "x"));
        for (entry, expected) in [(long, batch(50, "long text ")), (short, batch(1, "x"))] {
            let mut bytes = Vec::new();
            frame(1, &entry, &mut bytes);
            assert_eq!(
                decode_record(&bytes, 0).unwrap().1,
                WalEntry::Spans(expected)
            );
        }
    }

    #[test]
    fn truncated_tail_is_cut_at_last_good_record_and_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_three(dir.path());
        let full = fs::metadata(&path).unwrap().len();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(full - 5).unwrap();
        let (seqs, report) = replay(&path, &dir.path().join("q"));
        assert_eq!(seqs, vec![1, 2]);
        assert!(report.cut_bytes > 0);
        assert_eq!(fs::read_dir(dir.path().join("q")).unwrap().count(), 1);
        // The file now ends at the last good record: a second replay cuts nothing.
        let (seqs, report) = replay(&path, &dir.path().join("q"));
        assert_eq!(seqs, vec![1, 2]);
        assert_eq!(report.cut_bytes, 0);
    }

    #[test]
    fn bit_flip_in_a_record_cuts_from_that_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_three(dir.path());
        let mut data = fs::read(&path).unwrap();
        let len = data.len();
        data[len - 3] ^= 0x40;
        fs::write(&path, &data).unwrap();
        let (seqs, report) = replay(&path, &dir.path().join("q"));
        assert_eq!(seqs, vec![1, 2]);
        assert_eq!(report.cut_files, vec![path]);
    }

    #[test]
    fn garbage_length_field_does_not_allocate_or_panic() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = |magic: &[u8]| {
            let mut data = magic.to_vec();
            data.extend_from_slice(&u32::MAX.to_le_bytes());
            data.extend_from_slice(&[0; 12]);
            data
        };
        // the first format: records until the first bad frame
        let path = dir.path().join(file_name(1));
        fs::write(&path, garbage(MAGIC_V1)).unwrap();
        let (seqs, report) = replay(&path, &dir.path().join("q"));
        assert!(seqs.is_empty());
        assert_eq!(report.cut_bytes, 16);
        // the current one, with a header that claims the garbage
        let path = dir.path().join(file_name(2));
        let mut data = header(HEADER_LEN as u64 + 16).to_vec();
        data.extend_from_slice(&garbage(b"")[..16]);
        fs::write(&path, data).unwrap();
        let (seqs, report) = replay(&path, &dir.path().join("q"));
        assert!(seqs.is_empty());
        assert_eq!(report.cut_bytes, 16);
        assert_eq!(fs::metadata(&path).unwrap().len(), HEADER_LEN as u64);
    }

    /// A file as versions before reuse wrote them: the first magic, then records.
    fn first_format(dir: &Path, seqs: std::ops::RangeInclusive<u64>) -> PathBuf {
        let mut data = MAGIC_V1.to_vec();
        for seq in seqs.clone() {
            frame(seq, &encoded(&[span(seq)]), &mut data);
        }
        let path = dir.join(file_name(*seqs.start()));
        fs::write(&path, data).unwrap();
        path
    }

    #[test]
    fn files_of_the_first_format_still_replay_and_are_cut_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = first_format(dir.path(), 1..=3);
        let (seqs, report) = replay(&path, &dir.path().join("q"));
        assert_eq!((seqs, report.cut_bytes), (vec![1, 2, 3], 0));
        let len = fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 4)
            .unwrap();
        let (seqs, report) = replay(&path, &dir.path().join("q"));
        assert_eq!(seqs, vec![1, 2]);
        assert!(report.cut_bytes > 0);
        let data = fs::read(&path).unwrap();
        assert!(data.starts_with(MAGIC_V1), "still the first format");
        let (seqs, report) = replay(&path, &dir.path().join("q"));
        assert_eq!((seqs, report.cut_bytes), (vec![1, 2], 0));
    }

    /// Writes `seqs` into the file `WalWriter::create` starts at the first of them.
    fn write_file(dir: &Path, seqs: std::ops::RangeInclusive<u64>) -> PathBuf {
        let mut writer = WalWriter::create(dir, *seqs.start()).unwrap();
        for seq in seqs.clone() {
            writer.write(seq, &encoded(&[span(seq)])).unwrap();
            writer.sync(true).unwrap();
        }
        dir.join(file_name(*seqs.start()))
    }

    fn inode(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(path).unwrap().ino()
    }

    #[test]
    fn a_reused_file_replays_only_what_was_written_since() {
        let dir = tempfile::tempdir().unwrap();
        let old = write_file(dir.path(), 1..=6);
        let (old_inode, old_len) = (inode(&old), fs::metadata(&old).unwrap().len());
        retire(dir.path(), 1, true).unwrap();
        assert!(!old.exists());
        // records of the same size as the old ones, so that old ones follow at record bounds
        let path = write_file(dir.path(), 7..=8);
        assert_eq!(inode(&path), old_inode, "the free file was taken");
        assert_eq!(files_ending(dir.path(), FREE_SUFFIX).unwrap(), vec![]);
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            old_len,
            "written over, not truncated: the old records are still behind the new ones"
        );
        let (seqs, report) = replay(&path, &dir.path().join("q"));
        assert_eq!((seqs, report.cut_bytes), (vec![7, 8], 0));

        // a damaged record among the new ones is cut, not taken for an old one
        let mut data = fs::read(&path).unwrap();
        let end = u64::from_le_bytes(data[8..16].try_into().unwrap()) as usize;
        data[end - 3] ^= 0x40;
        fs::write(&path, &data).unwrap();
        let (seqs, report) = replay(&path, &dir.path().join("q"));
        assert_eq!(seqs, vec![7]);
        assert!(report.cut_bytes > 0);
        assert_eq!(report.cut_files, vec![path.clone()]);
        let (seqs, report) = replay(&path, &dir.path().join("q"));
        assert_eq!((seqs, report.cut_bytes), (vec![7], 0));
    }

    #[test]
    fn a_header_that_claims_more_than_the_file_holds_is_a_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(dir.path(), 1..=2);
        let len = fs::metadata(&path).unwrap().len();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&header(len + 100), 0).unwrap();
        let (seqs, report) = replay(&path, &dir.path().join("q"));
        assert_eq!(seqs, vec![1, 2]);
        assert_eq!(report.cut_bytes, 100);
        let (seqs, report) = replay(&path, &dir.path().join("q"));
        assert_eq!((seqs, report.cut_bytes), (vec![1, 2], 0));

        // a damaged header: the records are read to the first bad frame, and it is said
        let mut data = fs::read(&path).unwrap();
        data[9] ^= 0x01;
        fs::write(&path, &data).unwrap();
        let (seqs, report) = replay(&path, &dir.path().join("q"));
        assert_eq!(seqs, vec![1, 2]);
        assert_eq!(report.cut_files, vec![path.clone()]);
        let (seqs, report) = replay(&path, &dir.path().join("q"));
        assert_eq!((seqs, report.cut_files.len()), (vec![1, 2], 0));
    }

    #[test]
    fn at_most_two_files_are_kept_and_a_discard_removes_them() {
        let dir = tempfile::tempdir().unwrap();
        for first in [1, 10, 20] {
            write_file(dir.path(), first..=first + 1);
            retire(dir.path(), first, true).unwrap();
        }
        // the first went into the free list and was taken by the next file, and so on
        assert_eq!(files_ending(dir.path(), FREE_SUFFIX).unwrap().len(), 1);
        for first in [30, 40, 50] {
            fs::write(dir.path().join(file_name(first)), header(HEADER_LEN as u64)).unwrap();
            retire(dir.path(), first, true).unwrap();
        }
        assert_eq!(
            files_ending(dir.path(), FREE_SUFFIX).unwrap().len(),
            MAX_FREE_FILES
        );
        let path = write_file(dir.path(), 60..=60);
        retire(dir.path(), 60, false).unwrap();
        assert!(!path.exists(), "not kept when the caller says so");
        discard_free_files(dir.path()).unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
