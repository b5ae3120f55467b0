//! A segment's message pool: the history columns (`input`, `input_text`) of multi-turn chat
//! and agent calls resend everything said before, so a segment stores such a value as a
//! list of chunk ids, and each distinct chunk once, in a file beside the segment.
//!
//! Chunking: rows are visited in file order. A value is compared with the previous value
//! of the same conversation (session id, else trace id) in the same column; the previous
//! value's chunks that lie inside their common prefix are reused as they are (a memory
//! compare: the common case of a call that appends to its history costs no hashing). The
//! rest is cut where its content says (a gear rolling hash, `cut_points`), so that history
//! that reappears shifted — a window that drops its oldest turn, a system prompt shared by
//! many sessions — cuts into the same chunks again; its last `TAIL` bytes are a chunk of
//! their own, so that a value which only closes a bracket after the shared part (a JSON
//! array of messages) still shares the rest with the next call. Identical chunks are
//! stored once (found by hash, compared byte for byte). Values shorter than `MIN_POOLED`
//! stay inline in the segment.
//!
//! Layout: chunk ids are handed out in the order values are chunked, which interleaves the
//! conversations of a segment; the file lays each conversation's chunks out together (in
//! the order the conversation made them) and the segment's chunk ids are renumbered to
//! match (`WrittenPool::renumber`), so that reading one call's history decompresses the
//! few blocks of its own conversation rather than a block for every turn it resends.
//!
//! File: zstd-compressed blocks of about `BLOCK_BYTES` of chunks, each with a CRC32C, then
//! a footer (block table, each chunk's end inside its block) with its own CRC32C, then a
//! trailer (block count, chunk count, footer CRC, magic).

use std::collections::HashMap;
use std::fs::File;
use std::hash::BuildHasher;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BinaryBuilder, RecordBatch, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema};

use crate::error::{Error, Result};

/// Each pooled text column and the column holding its chunk ids (little-endian u32s; null
/// when the value is inline).
pub const POOLED: [(&str, &str); 2] = [
    ("input", "input_chunks"),
    ("input_text", "input_text_chunks"),
];
/// Values shorter than this stay inline: chunk ids would not pay for themselves.
const MIN_POOLED: usize = 512;
const TAIL: usize = 16;
/// Content-defined cuts: no chunk shorter than `MIN_CHUNK` or longer than `MAX_CHUNK`;
/// past the minimum a cut falls where the rolling hash has `CUT_BITS` zero bits, so chunks
/// average about `MIN_CHUNK + 2^CUT_BITS` bytes.
const MIN_CHUNK: usize = 128;
const MAX_CHUNK: usize = 8 * 1024;
const CUT_BITS: u32 = 9;
const BLOCK_BYTES: usize = 64 * 1024;
/// zstd level of pool blocks: as for the segment's columns, level 1 (level 3 saved 7% of
/// the bytes for about an eighth more CPU per ingested span).
const BLOCK_ZSTD_LEVEL: i32 = 1;
const MAGIC: &[u8; 8] = b"LLMTPOL1";
const TRAILER_BYTES: u64 = 20;
const BLOCK_ENTRY_BYTES: usize = 24;
/// Decompressed blocks a reader keeps before it starts over (about 16 MiB).
const CACHED_BLOCKS: usize = 256;

/// The pool file of the segment at `segment`.
pub fn path_for(segment: &Path) -> PathBuf {
    segment.with_extension("pool")
}

/// The chunk-id columns a segment file holds after its spans-table columns.
pub fn chunk_fields() -> Vec<Field> {
    POOLED
        .iter()
        .map(|(_, chunks)| Field::new(*chunks, DataType::Binary, true))
        .collect()
}

/// The last value of a conversation, as its chunks: (end offset in the value, chunk id),
/// in order. Its bytes are the chunks' bytes in the pool, so no copy of it is kept.
struct Previous {
    chunks: Vec<(usize, u32)>,
}

/// Builds a segment's pool while its batches are written.
#[derive(Default)]
pub struct PoolWriter {
    data: Vec<u8>,
    /// End of each chunk in `data`, by id.
    ends: Vec<usize>,
    by_hash: HashMap<u64, Vec<u32>, foldhash::fast::FixedState>,
    /// The conversation that made each chunk, by id.
    owner: Vec<u32>,
    /// Each conversation key's number, in order of appearance.
    conversations: HashMap<String, u32>,
    /// The last value of each conversation (by number), per pooled column.
    previous: [HashMap<u32, Previous>; 2],
}

/// A pool file written: its size, its chunk count, and the new id of each chunk id that
/// `PoolWriter::encode` gave out.
#[derive(Debug)]
pub struct WrittenPool {
    pub bytes: u64,
    pub chunks: u32,
    renumbered: Vec<u32>,
}

impl WrittenPool {
    /// `batch`, as `PoolWriter::encode` made it, with its chunk ids as the file numbers them.
    pub fn renumber(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let schema = batch.schema();
        let mut columns = batch.columns().to_vec();
        for (_, chunk_name) in POOLED {
            let Ok(index) = schema.index_of(chunk_name) else {
                continue;
            };
            let ids = batch.column(index).as_binary::<i32>();
            let mut renumbered = BinaryBuilder::with_capacity(ids.len(), ids.value_data().len());
            let mut value = Vec::new();
            for row in 0..ids.len() {
                if ids.is_null(row) {
                    renumbered.append_null();
                    continue;
                }
                value.clear();
                for id in ids.value(row).chunks_exact(4) {
                    let id = u32::from_le_bytes([id[0], id[1], id[2], id[3]]);
                    let new = self.renumbered.get(id as usize).ok_or_else(|| {
                        Error::encode(format!("chunk {id} is not in the pool written"))
                    })?;
                    value.extend_from_slice(&new.to_le_bytes());
                }
                renumbered.append_value(&value);
            }
            columns[index] = Arc::new(renumbered.finish());
        }
        RecordBatch::try_new(schema, columns).map_err(Error::encode)
    }
}

impl PoolWriter {
    /// `batch` (spans-table columns, `_seq` first) with its pooled values moved into the
    /// pool: a pooled value's text is left empty (null where nullable) and its chunk ids
    /// appended in the chunk columns.
    pub fn encode(&mut self, batch: &RecordBatch) -> Result<RecordBatch> {
        let schema = batch.schema();
        let text_of = |name: &str| -> Result<_> {
            let index = schema
                .index_of(name)
                .map_err(|_| Error::encode(format!("no column {name} to pool")))?;
            batch
                .column(index)
                .as_string_opt::<i32>()
                .map(|array| (index, array))
                .ok_or_else(|| Error::encode(format!("column {name} is not text")))
        };
        let (_, sessions) = text_of("session_id")?;
        let (_, traces) = text_of("trace_id")?;
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        let mut ids = Vec::new();
        for (column, (text, chunk_name)) in POOLED.iter().enumerate() {
            let (index, values) = text_of(text)?;
            let nullable = schema.field(index).is_nullable();
            let mut kept = StringBuilder::with_capacity(values.len(), 0);
            let mut chunk_ids = BinaryBuilder::with_capacity(values.len(), 0);
            for row in 0..values.len() {
                let value = values.is_valid(row).then(|| values.value(row));
                let key = if sessions.is_valid(row) {
                    sessions.value(row)
                } else {
                    traces.value(row)
                };
                match value {
                    Some(value) if self.chunk(column, key, value.as_bytes(), &mut ids) => {
                        if nullable {
                            kept.append_null();
                        } else {
                            kept.append_value("");
                        }
                        let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_le_bytes()).collect();
                        chunk_ids.append_value(bytes);
                    }
                    _ => {
                        kept.append_option(value);
                        chunk_ids.append_null();
                    }
                }
            }
            columns[index] = Arc::new(kept.finish());
            columns.push(Arc::new(chunk_ids.finish()));
            fields.push(Field::new(*chunk_name, DataType::Binary, true));
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(Error::encode)
    }

    /// Chunks `value` into `ids`; false (and nothing recorded) when it stays inline.
    fn chunk(&mut self, column: usize, key: &str, value: &[u8], ids: &mut Vec<u32>) -> bool {
        if value.len() < MIN_POOLED {
            return false;
        }
        ids.clear();
        let owner = match self.conversations.get(key) {
            Some(&owner) => owner,
            None => {
                let owner = self.conversations.len() as u32;
                self.conversations.insert(key.to_string(), owner);
                owner
            }
        };
        let mut chunks = Vec::new();
        let mut covered = 0;
        let previous = self.previous[column].remove(&owner);
        if let Some(previous) = &previous {
            // the previous value's chunks that lie inside the common prefix are reused
            for &(end, id) in &previous.chunks {
                if value.get(covered..end) != Some(self.chunk_bytes(id)) {
                    break;
                }
                ids.push(id);
                chunks.push((end, id));
                covered = end;
            }
        }
        let rest = &value[covered..];
        let body = &rest[..rest.len().saturating_sub(TAIL)];
        let mut start = 0;
        for end in cut_points(body).chain([body.len(), rest.len()]) {
            if end <= start {
                continue;
            }
            let id = self.intern(&rest[start..end], owner);
            start = end;
            ids.push(id);
            chunks.push((covered + end, id));
        }
        self.previous[column].insert(owner, Previous { chunks });
        true
    }

    fn chunk_bytes(&self, id: u32) -> &[u8] {
        let start = match id {
            0 => 0,
            id => self.ends[id as usize - 1],
        };
        &self.data[start..self.ends[id as usize]]
    }

    fn intern(&mut self, piece: &[u8], owner: u32) -> u32 {
        let hash = self.by_hash.hasher().hash_one(piece);
        if let Some(candidates) = self.by_hash.get(&hash)
            && let Some(&id) = candidates.iter().find(|&&id| self.chunk_bytes(id) == piece)
        {
            return id;
        }
        let id = self.ends.len() as u32;
        self.data.extend_from_slice(piece);
        self.ends.push(self.data.len());
        self.owner.push(owner);
        self.by_hash.entry(hash).or_default().push(id);
        id
    }

    /// Writes the pool file (fsync'd), each conversation's chunks together, if any value
    /// was pooled. The batches `encode` gave must then be renumbered before they are
    /// written.
    pub fn finish(self, path: &Path) -> Result<Option<WrittenPool>> {
        if self.ends.is_empty() {
            return Ok(None);
        }
        let count = self.ends.len();
        let mut order: Vec<u32> = (0..count as u32).collect();
        // stable: a conversation's chunks stay in the order it made them
        order.sort_by_key(|&id| self.owner[id as usize]);
        let mut renumbered = vec![0u32; count];
        for (new, &old) in order.iter().enumerate() {
            renumbered[old as usize] = new as u32;
        }
        let mut file = File::create(path).map_err(|e| Error::io(path, e))?;
        let mut table = Vec::new();
        let mut chunk_ends = Vec::with_capacity(count * 4);
        let mut offset = 0u64;
        let mut first = 0usize;
        let mut raw = Vec::with_capacity(BLOCK_BYTES + MAX_CHUNK);
        // One context for every block: creating one costs more than compressing a block.
        let mut compressor =
            zstd::bulk::Compressor::new(BLOCK_ZSTD_LEVEL).map_err(|e| Error::io(path, e))?;
        for (new, &old) in order.iter().enumerate() {
            raw.extend_from_slice(self.chunk_bytes(old));
            chunk_ends.extend_from_slice(&(raw.len() as u32).to_le_bytes());
            if raw.len() < BLOCK_BYTES && new + 1 < count {
                continue;
            }
            let compressed = compressor.compress(&raw).map_err(|e| Error::io(path, e))?;
            file.write_all(&compressed)
                .map_err(|e| Error::io(path, e))?;
            table.extend_from_slice(&offset.to_le_bytes());
            table.extend_from_slice(&(compressed.len() as u32).to_le_bytes());
            table.extend_from_slice(&(raw.len() as u32).to_le_bytes());
            table.extend_from_slice(&(first as u32).to_le_bytes());
            table.extend_from_slice(&crc32c::crc32c(&compressed).to_le_bytes());
            offset += compressed.len() as u64;
            first = new + 1;
            raw.clear();
        }
        let blocks = (table.len() / BLOCK_ENTRY_BYTES) as u32;
        let chunks = count as u32;
        table.extend_from_slice(&chunk_ends);
        let mut trailer = Vec::with_capacity(TRAILER_BYTES as usize);
        trailer.extend_from_slice(&blocks.to_le_bytes());
        trailer.extend_from_slice(&chunks.to_le_bytes());
        trailer.extend_from_slice(&crc32c::crc32c(&table).to_le_bytes());
        trailer.extend_from_slice(MAGIC);
        file.write_all(&table).map_err(|e| Error::io(path, e))?;
        file.write_all(&trailer).map_err(|e| Error::io(path, e))?;
        file.sync_all().map_err(|e| Error::io(path, e))?;
        Ok(Some(WrittenPool {
            bytes: offset + table.len() as u64 + TRAILER_BYTES,
            chunks,
            renumbered,
        }))
    }
}

/// 256 fixed pseudo-random words, one per byte value, for the rolling hash (splitmix64).
const GEAR: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut at = 0;
    while at < 256 {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        table[at] = z ^ (z >> 31);
        at += 1;
    }
    table
};

/// The content-defined cut points inside `data` (ends of all chunks but the last): the
/// hash of the bytes since the last cut, each shifting older ones out after 64 bytes, so a
/// cut depends only on the 64 bytes before it.
fn cut_points(data: &[u8]) -> impl Iterator<Item = usize> + '_ {
    const MASK: u64 = ((1u64 << CUT_BITS) - 1) << (64 - CUT_BITS);
    let mut start = 0;
    std::iter::from_fn(move || {
        if data.len() - start <= MIN_CHUNK {
            return None;
        }
        let limit = (start + MAX_CHUNK).min(data.len());
        let mut hash = 0u64;
        // the bytes before the minimum still feed the hash, so a cut does not depend on
        // where the previous one fell
        for at in start + MIN_CHUNK.saturating_sub(64)..limit {
            hash = (hash << 1).wrapping_add(GEAR[data[at] as usize]);
            if at + 1 - start >= MIN_CHUNK && hash & MASK == 0 {
                start = at + 1;
                return Some(start);
            }
        }
        (limit < data.len()).then(|| {
            start = limit;
            limit
        })
    })
}

#[derive(Debug, Clone, Copy)]
struct Block {
    offset: u64,
    compressed: u32,
    raw: u32,
    first: u32,
    crc: u32,
}

/// A segment's pool, opened: its block table and chunk ends in memory.
#[derive(Debug, Default)]
pub struct Pool {
    path: PathBuf,
    blocks: Vec<Block>,
    /// End of each chunk inside its block, by id.
    ends: Vec<u32>,
    bytes: u64,
}

impl Pool {
    /// Opens the pool at `path`, which must hold `chunks` chunks (what its segment says).
    pub fn open(path: &Path, chunks: u32) -> Result<Pool> {
        let file = File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::segment(path, "the segment's pool is missing"),
            _ => Error::io(path, e),
        })?;
        let bytes = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let corrupt = |what: &str| Error::segment(path, format!("corrupt pool: {what}"));
        if bytes < TRAILER_BYTES {
            return Err(corrupt("shorter than its trailer"));
        }
        let mut trailer = [0u8; TRAILER_BYTES as usize];
        file.read_exact_at(&mut trailer, bytes - TRAILER_BYTES)
            .map_err(|e| Error::io(path, e))?;
        let word =
            |at: usize| u32::from_le_bytes(trailer[at..at + 4].try_into().unwrap_or_default());
        if &trailer[12..] != MAGIC {
            return Err(corrupt("no trailer"));
        }
        let (blocks, count, crc) = (word(0) as usize, word(4), word(8));
        if count != chunks {
            return Err(corrupt(&format!(
                "{count} chunks where the segment names {chunks}"
            )));
        }
        let table_bytes = blocks as u64 * BLOCK_ENTRY_BYTES as u64 + count as u64 * 4;
        if table_bytes + TRAILER_BYTES > bytes {
            return Err(corrupt("its footer is longer than the file"));
        }
        let mut table = vec![0u8; table_bytes as usize];
        file.read_exact_at(&mut table, bytes - TRAILER_BYTES - table_bytes)
            .map_err(|e| Error::io(path, e))?;
        if crc32c::crc32c(&table) != crc {
            return Err(corrupt("footer checksum mismatch"));
        }
        let u32_at =
            |at: usize| u32::from_le_bytes(table[at..at + 4].try_into().unwrap_or_default());
        let blocks: Vec<Block> = (0..blocks)
            .map(|block| {
                let at = block * BLOCK_ENTRY_BYTES;
                Block {
                    offset: u64::from_le_bytes(table[at..at + 8].try_into().unwrap_or_default()),
                    compressed: u32_at(at + 8),
                    raw: u32_at(at + 12),
                    first: u32_at(at + 16),
                    crc: u32_at(at + 20),
                }
            })
            .collect();
        let chunk_table = blocks.len() * BLOCK_ENTRY_BYTES;
        let ends: Vec<u32> = (0..count as usize)
            .map(|id| u32_at(chunk_table + id * 4))
            .collect();
        if (blocks.is_empty() && count > 0)
            || blocks.first().is_some_and(|block| block.first != 0)
            || blocks.windows(2).any(|pair| pair[0].first >= pair[1].first)
            || blocks.last().is_some_and(|block| block.first >= count)
        {
            return Err(corrupt("its block table is out of order"));
        }
        Ok(Pool {
            path: path.to_path_buf(),
            blocks,
            ends,
            bytes,
        })
    }

    /// Size of the pool file (0 for a segment without one).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// A reader that decompresses blocks as chunks need them, keeping some for later rows.
    pub fn reader(&self) -> PoolReader<'_> {
        PoolReader {
            pool: self,
            file: None,
            blocks: HashMap::new(),
        }
    }
}

thread_local! {
    /// One decompression context per reading thread: making a context for every block cost
    /// more than a tenth of a search page's CPU at 10 M spans, under `perf`.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

fn decompress(compressed: &[u8], raw_bytes: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let decompressor = match slot.as_mut() {
            Some(decompressor) => decompressor,
            None => slot.insert(zstd::bulk::Decompressor::new()?),
        };
        decompressor.decompress(compressed, raw_bytes)
    })
}

/// Reads chunks out of a pool for one read of a segment.
pub struct PoolReader<'p> {
    pool: &'p Pool,
    file: Option<File>,
    blocks: HashMap<usize, Vec<u8>>,
}

impl PoolReader<'_> {
    /// Appends chunk `id` to `out`.
    fn append(&mut self, id: u32, out: &mut Vec<u8>) -> Result<()> {
        let pool = self.pool;
        let corrupt = |what: String| Error::segment(&pool.path, format!("corrupt pool: {what}"));
        if id as usize >= pool.ends.len() {
            return Err(corrupt(format!("no chunk {id}")));
        }
        let block = pool.blocks.partition_point(|block| block.first <= id) - 1;
        if !self.blocks.contains_key(&block) {
            if self.blocks.len() >= CACHED_BLOCKS {
                self.blocks.clear();
            }
            let meta = pool.blocks[block];
            let file = match self.file.take() {
                Some(file) => file,
                None => File::open(&pool.path).map_err(|e| Error::io(&pool.path, e))?,
            };
            let mut compressed = vec![0u8; meta.compressed as usize];
            file.read_exact_at(&mut compressed, meta.offset)
                .map_err(|e| Error::io(&pool.path, e))?;
            self.file = Some(file);
            if crc32c::crc32c(&compressed) != meta.crc {
                return Err(corrupt(format!("block {block} checksum mismatch")));
            }
            let raw = decompress(&compressed, meta.raw as usize)
                .map_err(|e| corrupt(format!("block {block}: {e}")))?;
            self.blocks.insert(block, raw);
        }
        let raw = &self.blocks[&block];
        let first = pool.blocks[block].first;
        let start = if id == first {
            0
        } else {
            pool.ends[id as usize - 1] as usize
        };
        let end = pool.ends[id as usize] as usize;
        let chunk = raw
            .get(start..end)
            .ok_or_else(|| corrupt(format!("chunk {id} lies outside its block")))?;
        out.extend_from_slice(chunk);
        Ok(())
    }

    /// `batch` as read from a segment file, with each pooled value put back together and
    /// the chunk columns removed.
    pub fn decode(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        let schema = batch.schema();
        if !POOLED
            .iter()
            .any(|(_, chunks)| schema.index_of(chunks).is_ok())
        {
            return Ok(batch);
        }
        let mut columns = batch.columns().to_vec();
        let mut buffer = Vec::new();
        for (text, chunk_name) in POOLED {
            let (Ok(text_index), Ok(chunk_index)) =
                (schema.index_of(text), schema.index_of(chunk_name))
            else {
                continue;
            };
            let values = batch.column(text_index).as_string::<i32>();
            let chunk_ids = batch.column(chunk_index).as_binary::<i32>();
            let mut rebuilt = StringBuilder::with_capacity(values.len(), 0);
            for row in 0..values.len() {
                if chunk_ids.is_null(row) {
                    rebuilt.append_option(values.is_valid(row).then(|| values.value(row)));
                    continue;
                }
                buffer.clear();
                let ids = chunk_ids.value(row);
                if ids.len() % 4 != 0 {
                    return Err(Error::segment(&self.pool.path, "a chunk list is cut short"));
                }
                for id in ids.chunks_exact(4) {
                    self.append(
                        u32::from_le_bytes([id[0], id[1], id[2], id[3]]),
                        &mut buffer,
                    )?;
                }
                let value = std::str::from_utf8(&buffer).map_err(|e| {
                    Error::segment(&self.pool.path, format!("a pooled value is not UTF-8: {e}"))
                })?;
                rebuilt.append_value(value);
            }
            columns[text_index] = Arc::new(rebuilt.finish());
        }
        let keep: Vec<usize> = (0..columns.len())
            .filter(|&index| {
                !POOLED
                    .iter()
                    .any(|(_, chunks)| schema.field(index).name() == chunks)
            })
            .collect();
        let fields: Vec<Field> = keep
            .iter()
            .map(|&index| schema.field(index).clone())
            .collect();
        let columns: Vec<ArrayRef> = keep.iter().map(|&index| columns[index].clone()).collect();
        let options =
            arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), columns, &options)
            .map_err(Error::encode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text of pseudo-random words that general compression cannot shrink much.
    fn words(seed: u64, count: usize) -> String {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..count)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                format!("{:x}", state >> 44)
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn cuts_follow_content_not_position() {
        let data = words(1, 20_000);
        let cuts: Vec<usize> = cut_points(data.as_bytes()).collect();
        assert!(
            cuts.len() > 50,
            "{} cuts in {} bytes",
            cuts.len(),
            data.len()
        );
        assert!(cuts.windows(2).all(|pair| pair[1] - pair[0] >= MIN_CHUNK));
        assert!(cuts.windows(2).all(|pair| pair[1] - pair[0] <= MAX_CHUNK));
        // the same text after something else: past the first cuts, the same cuts
        let shifted = format!("{}{data}", words(2, 300));
        let offset = shifted.len() - data.len();
        let moved: std::collections::HashSet<usize> = cut_points(shifted.as_bytes())
            .filter_map(|cut| cut.checked_sub(offset))
            .collect();
        let kept = cuts.iter().filter(|cut| moved.contains(cut)).count();
        assert!(kept + 3 >= cuts.len(), "{kept} of {} cuts kept", cuts.len());
    }

    /// A conversation whose calls resend a window of the last eight turns: once the window
    /// slides, no call extends the previous one, and the content-defined cuts still find
    /// the turns already stored (only the chunks at the window's two ends are new). Cut by
    /// position alone, every slide would store its whole window of eight turns again.
    #[test]
    fn a_sliding_history_is_not_stored_again() {
        let turns: Vec<String> = (0..40).map(|turn| words(100 + turn, 250)).collect();
        let mut writer = PoolWriter::default();
        let mut ids = Vec::new();
        let mut resent = 0;
        for call in 0..turns.len() {
            let value = format!(
                "[system prompt] {}]",
                turns[call.saturating_sub(7)..=call].join(" | ")
            );
            resent += value.len();
            assert!(writer.chunk(0, "s", value.as_bytes(), &mut ids));
            let mut rebuilt = Vec::new();
            for &id in &ids {
                let start = if id == 0 {
                    0
                } else {
                    writer.ends[id as usize - 1]
                };
                rebuilt.extend_from_slice(&writer.data[start..writer.ends[id as usize]]);
            }
            assert_eq!(rebuilt, value.as_bytes(), "call {call}");
        }
        let distinct: usize = turns.iter().map(String::len).sum();
        assert!(
            writer.data.len() < distinct * 2,
            "{} bytes stored for {distinct} bytes of distinct turns ({resent} resent)",
            writer.data.len()
        );
    }
    /// Conversations whose calls arrive interleaved: the file lays each one's chunks out
    /// together, so reading a call's whole history decompresses the blocks of its own
    /// conversation only; and every value reads back as it was written.
    #[test]
    fn a_conversation_is_read_from_its_own_blocks() {
        use arrow::array::StringArray;
        let conversations = 8;
        let turns = 30;
        let mut batches = Vec::new();
        let mut values = Vec::new();
        let mut writer = PoolWriter::default();
        for turn in 0..turns {
            let mut sessions = Vec::new();
            let mut inputs = Vec::new();
            for conversation in 0..conversations {
                let history: Vec<String> = (0..=turn)
                    .map(|t| words((conversation * 1000 + t) as u64, 150))
                    .collect();
                sessions.push(format!("s{conversation}"));
                inputs.push(history.join("|"));
            }
            let column = |values: &[String]| -> ArrayRef {
                Arc::new(StringArray::from_iter_values(values.iter()))
            };
            let schema = Schema::new(vec![
                Field::new("session_id", DataType::Utf8, true),
                Field::new("trace_id", DataType::Utf8, false),
                Field::new("input", DataType::Utf8, true),
                Field::new("input_text", DataType::Utf8, false),
            ]);
            let empty = vec![String::new(); conversations];
            let batch = RecordBatch::try_new(
                Arc::new(schema),
                vec![
                    column(&sessions),
                    column(&sessions),
                    column(&inputs),
                    column(&empty),
                ],
            )
            .unwrap();
            batches.push(writer.encode(&batch).unwrap());
            values.push(inputs);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.pool");
        let written = writer.finish(&path).unwrap().unwrap();
        let batches: Vec<RecordBatch> = batches
            .into_iter()
            .map(|batch| written.renumber(batch).unwrap())
            .collect();
        let pool = Pool::open(&path, written.chunks).unwrap();
        assert!(pool.blocks.len() >= 4, "{} blocks", pool.blocks.len());
        for (batch, written) in batches.iter().zip(&values) {
            let decoded = pool.reader().decode(batch.clone()).unwrap();
            let inputs = decoded.column_by_name("input").unwrap().as_string::<i32>();
            let read: Vec<&str> = inputs.iter().map(Option::unwrap).collect();
            assert_eq!(&read, written);
        }
        // the last call of one conversation resends all of its 30 turns
        let last = batches[turns - 1].slice(3, 1);
        let mut reader = pool.reader();
        let decoded = reader.decode(last).unwrap();
        assert_eq!(
            decoded
                .column_by_name("input")
                .unwrap()
                .as_string::<i32>()
                .value(0),
            values[turns - 1][3]
        );
        assert!(
            reader.blocks.len() <= 2,
            "one conversation's history took {} of {} blocks",
            reader.blocks.len(),
            pool.blocks.len()
        );
    }
}
