//! Immutable columnar segments: one Parquet file per flush and partition.
//!
//! Layout: `segments/project=<p>/day=<YYYY-MM-DD>/<id:016>.parquet` (Hive-style, so DuckDB,
//! Spark and pandas read the tree as it is). Rows are sorted by `start_time`; zstd
//! compression; bloom filters on `trace_id`, `session_id` and `user_id`; page statistics and
//! page index on. Heavy columns (messages, text, JSON) use small pages and no dictionary,
//! because queries read single rows by number (see `read_rows`) and pay for every page and
//! dictionary they touch. Row numbers are the ones the segment's index (`index.rs`) holds.
//! JSON-valued span fields are stored as JSON text. `_seq` is the WAL sequence number of the
//! write that produced the row: among rows with the same (project, trace_id, span_id) the
//! highest `_seq` is the live one. The footer's key-value metadata holds the segment's
//! rollup (`rollup.rs`) as JSON under `llmtrace.rollup`.
//!
//! Resent history is stored once (`pool.rs`): a long `input` or `input_text` value is left
//! empty in the file and its chunk ids are held in `input_chunks` / `input_text_chunks`
//! (the file schema, `file_schema`, is the spans table plus those two columns); the chunks
//! are in `<id>.pool` beside the file, and `llmtrace.pool_chunks` in the footer says how
//! many. Every read here puts the values back together, so callers see the spans table.
//!
//! A message text that its messages give (`Span::derived_text`: `input_text` is
//! `flatten_text(input)`, likewise for output) is written empty and flagged in the
//! `text_derived` column, so the messages are kept once; reads that ask for the text read the
//! messages too and derive it again. Files written before that column left nothing out.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanBuilder, Float64Builder, Int64Builder, NullBufferBuilder,
    PrimitiveArray, RecordBatch, StringArray, StringBuilder, TimestampNanosecondBuilder,
    UInt8Array, UInt64Builder,
};
use arrow::buffer::{Buffer, OffsetBuffer};
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Field, Float64Type, Int64Type, Schema, SchemaRef, TimeUnit,
    TimestampNanosecondType, UInt8Type, UInt64Type,
};
use llmtrace_model::span::{INPUT_TEXT_DERIVED, OUTPUT_TEXT_DERIVED, flatten_text};
use llmtrace_model::{Span, SpanKind, SpanSource, SpanStatus};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection,
    RowSelectionPolicy, RowSelector,
};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::{KeyValue, PageIndexPolicy};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::statistics::Statistics;
use parquet::schema::types::ColumnPath;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::memtable::JsonFields;
use crate::pool::{self, Pool, PoolWriter};
use crate::rollup::Rollup;

/// Footer key of the segment's rollup.
const ROLLUP_KEY: &str = "llmtrace.rollup";
/// Footer key of the number of chunks in the segment's pool (absent: no pool).
const POOL_KEY: &str = "llmtrace.pool_chunks";

/// A span with the WAL sequence number of the write that produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSpan {
    pub seq: u64,
    pub span: Arc<Span>,
    /// A memtable row's documents, as text: `span` holds them null (`memtable::JsonFields`).
    pub json: Option<Arc<JsonFields>>,
}

impl StoredSpan {
    /// `Span::derived_text` of the whole span.
    fn derived_text(&self) -> u8 {
        match &self.json {
            Some(json) => json.derived,
            None => self.span.derived_text(),
        }
    }
}

pub fn schema() -> SchemaRef {
    let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    let int = |name: &str| Field::new(name, DataType::Int64, true);
    let float = |name: &str| Field::new(name, DataType::Float64, true);
    let time = |name: &str| {
        Field::new(
            name,
            DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
            false,
        )
    };
    Arc::new(Schema::new(vec![
        Field::new("_seq", DataType::UInt64, false),
        text("project", false),
        text("trace_id", false),
        text("span_id", false),
        text("parent_span_id", true),
        text("name", false),
        text("kind", false),
        text("source", false),
        text("service_name", true),
        time("start_time"),
        time("end_time"),
        Field::new("duration_ms", DataType::Float64, false),
        float("time_to_first_token_ms"),
        text("status", false),
        text("status_message", true),
        text("error_type", true),
        int("http_status"),
        text("session_id", true),
        text("user_id", true),
        text("provider", true),
        text("request_model", true),
        text("model", true),
        text("routing_alias", true),
        text("operation", true),
        Field::new("stream", DataType::Boolean, true),
        float("temperature"),
        int("max_tokens"),
        float("top_p"),
        text("finish_reason", true),
        int("input_tokens"),
        int("output_tokens"),
        int("cached_input_tokens"),
        int("reasoning_tokens"),
        int("total_tokens"),
        text("usage_source", true),
        float("input_cost_usd"),
        float("output_cost_usd"),
        float("total_cost_usd"),
        text("pricing_version", true),
        text("input", true),
        text("output", true),
        text("input_text", false),
        text("output_text", false),
        text("tools", true),
        text("metadata", false),
        text("attributes", true),
        text("events", true),
    ]))
}

/// Which of a row's texts the file leaves out because its messages give them: the bits of
/// `Span::derived_text`. Files written before it lack the column and leave nothing out.
const DERIVED_COLUMN: &str = "text_derived";
/// Each text a file may leave out, the messages it is derived from, and its bit.
const DERIVED_TEXT: [(&str, &str, u8); 2] = [
    ("input_text", "input", INPUT_TEXT_DERIVED),
    ("output_text", "output", OUTPUT_TEXT_DERIVED),
];

/// `schema` and `DERIVED_COLUMN`: the rows as they are written, before pooling.
fn written_schema() -> SchemaRef {
    let mut fields: Vec<Field> = schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(DERIVED_COLUMN, DataType::UInt8, false));
    Arc::new(Schema::new(fields))
}

/// What a segment file holds: `written_schema` and the pool's chunk-id columns.
pub fn file_schema() -> SchemaRef {
    let mut fields: Vec<Field> = written_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.extend(pool::chunk_fields());
    Arc::new(Schema::new(fields))
}

/// The segment schema without `_seq`: the spans table a query engine sees.
pub fn table_schema() -> SchemaRef {
    let schema = schema();
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .filter(|field| field.name() != "_seq")
            .cloned()
            .collect::<Vec<_>>(),
    ))
}

/// `batch`'s `columns`, in that order, typed as `table_schema` types them (a batch with no
/// columns keeps its row count).
pub fn project(batch: &RecordBatch, columns: &[&str]) -> Result<RecordBatch> {
    let table = table_schema();
    let mut fields = Vec::with_capacity(columns.len());
    let mut arrays = Vec::with_capacity(columns.len());
    for column in columns {
        let (field, array) = table
            .field_with_name(column)
            .ok()
            .zip(batch.column_by_name(column))
            .ok_or_else(|| Error::encode(format!("no column {column} in the spans table")))?;
        fields.push(field.clone());
        arrays.push(array.clone());
    }
    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), arrays, &options)
        .map_err(Error::encode)
}

/// Converts rows to one Arrow batch in the segment schema.
pub fn to_batch(rows: &[StoredSpan]) -> Result<RecordBatch> {
    batch_of(rows, false)
}

/// Rows as a segment file holds them before pooling (`written_schema`): a text its
/// messages give is left empty and flagged in `DERIVED_COLUMN`, so the file (and the pool)
/// keeps each message once rather than twice.
fn to_written_batch(rows: &[StoredSpan]) -> Result<RecordBatch> {
    batch_of(rows, true)
}

fn batch_of(rows: &[StoredSpan], leave_out_derived: bool) -> Result<RecordBatch> {
    let n = rows.len();
    let derived: Vec<u8> = if leave_out_derived {
        rows.iter().map(StoredSpan::derived_text).collect()
    } else {
        Vec::new()
    };
    // a message text, left empty where `derived` flags it with `bit`
    let message_text = |bit: u8, get: fn(&Span) -> &str| -> ArrayRef {
        let kept = |at: usize| derived.get(at).is_none_or(|flags| flags & bit == 0);
        let bytes = rows
            .iter()
            .enumerate()
            .filter(|(at, _)| kept(*at))
            .map(|(_, row)| get(&row.span).len())
            .sum();
        let mut builder = StringBuilder::with_capacity(n, bytes);
        for (at, row) in rows.iter().enumerate() {
            builder.append_value(if kept(at) { get(&row.span) } else { "" });
        }
        Arc::new(builder.finish())
    };
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(48);
    let mut seq = UInt64Builder::with_capacity(n);
    rows.iter().for_each(|row| seq.append_value(row.seq));
    columns.push(Arc::new(seq.finish()));

    // Values are copied straight from the spans into buffers sized for them: a flush used
    // to clone every value first and grow the builders by reallocation.
    let text = |get: &dyn Fn(&Span) -> Option<&str>| -> ArrayRef {
        let bytes = rows
            .iter()
            .map(|row| get(&row.span).map_or(0, str::len))
            .sum();
        let mut builder = StringBuilder::with_capacity(n, bytes);
        for row in rows {
            builder.append_option(get(&row.span));
        }
        Arc::new(builder.finish())
    };
    // JSON documents are serialized one after another straight into the column's buffer.
    let json = |write: &dyn Fn(&StoredSpan, &mut Vec<u8>) -> Result<bool>| -> Result<ArrayRef> {
        let mut values = Vec::with_capacity(n * 64);
        let mut offsets = Vec::with_capacity(n + 1);
        let mut nulls = NullBufferBuilder::new(n);
        offsets.push(0i32);
        for row in rows {
            nulls.append(write(row, &mut values)?);
            let end = i32::try_from(values.len())
                .map_err(|_| Error::Encode("a JSON column exceeds 2 GiB in one segment".into()))?;
            offsets.push(end);
        }
        let array = StringArray::try_new(
            OffsetBuffer::new(offsets.into()),
            Buffer::from_vec(values),
            nulls.finish(),
        )
        .map_err(Error::encode)?;
        Ok(Arc::new(array))
    };
    // a document: a memtable row's text as it is, else serialized from the span
    let document = |field: usize| {
        move |row: &StoredSpan, out: &mut Vec<u8>| -> Result<bool> {
            if let Some(json) = &row.json {
                let Some(text) = json.texts()[field] else {
                    return Ok(false);
                };
                out.extend_from_slice(text.as_bytes());
                return Ok(true);
            }
            let span = &row.span;
            let value = [&span.input, &span.output, &span.tools, &span.attributes][field];
            if value.is_null() {
                return Ok(false);
            }
            serde_json::to_writer(out, value).map_err(Error::encode)?;
            Ok(true)
        }
    };
    let int = |get: &dyn Fn(&Span) -> Option<i64>| -> ArrayRef {
        let mut builder = Int64Builder::with_capacity(n);
        rows.iter()
            .for_each(|row| builder.append_option(get(&row.span)));
        Arc::new(builder.finish())
    };
    let float = |get: &dyn Fn(&Span) -> Option<f64>| -> ArrayRef {
        let mut builder = Float64Builder::with_capacity(n);
        rows.iter()
            .for_each(|row| builder.append_option(get(&row.span)));
        Arc::new(builder.finish())
    };
    let time = |get: &dyn Fn(&Span) -> i64| -> ArrayRef {
        let mut builder = TimestampNanosecondBuilder::with_capacity(n).with_timezone("UTC");
        rows.iter()
            .for_each(|row| builder.append_value(get(&row.span)));
        Arc::new(builder.finish())
    };

    columns.push(text(&|s| Some(s.project.as_str())));
    columns.push(text(&|s| Some(s.trace_id.as_str())));
    columns.push(text(&|s| Some(s.span_id.as_str())));
    columns.push(text(&|s| s.parent_span_id.as_deref()));
    columns.push(text(&|s| Some(s.name.as_str())));
    columns.push(text(&|s| Some(s.kind.as_str())));
    columns.push(text(&|s| Some(s.source.as_str())));
    columns.push(text(&|s| s.service_name.as_deref()));
    columns.push(time(&|s| s.start_time));
    columns.push(time(&|s| s.end_time));
    columns.push(float(&|s| Some(s.duration_ms)));
    columns.push(float(&|s| s.time_to_first_token_ms));
    columns.push(text(&|s| Some(s.status.as_str())));
    columns.push(text(&|s| s.status_message.as_deref()));
    columns.push(text(&|s| s.error_type.as_deref()));
    columns.push(int(&|s| s.http_status.map(i64::from)));
    columns.push(text(&|s| s.session_id.as_deref()));
    columns.push(text(&|s| s.user_id.as_deref()));
    columns.push(text(&|s| s.provider.as_deref()));
    columns.push(text(&|s| s.request_model.as_deref()));
    columns.push(text(&|s| s.model.as_deref()));
    columns.push(text(&|s| s.routing_alias.as_deref()));
    columns.push(text(&|s| s.operation.as_deref()));
    let mut stream = BooleanBuilder::with_capacity(n);
    rows.iter()
        .for_each(|row| stream.append_option(row.span.stream));
    columns.push(Arc::new(stream.finish()));
    columns.push(float(&|s| s.temperature));
    columns.push(int(&|s| s.max_tokens));
    columns.push(float(&|s| s.top_p));
    columns.push(text(&|s| s.finish_reason.as_deref()));
    columns.push(int(&|s| s.input_tokens));
    columns.push(int(&|s| s.output_tokens));
    columns.push(int(&|s| s.cached_input_tokens));
    columns.push(int(&|s| s.reasoning_tokens));
    columns.push(int(&|s| s.total_tokens));
    columns.push(text(&|s| s.usage_source.as_deref()));
    columns.push(float(&|s| s.input_cost_usd));
    columns.push(float(&|s| s.output_cost_usd));
    columns.push(float(&|s| s.total_cost_usd));
    columns.push(text(&|s| s.pricing_version.as_deref()));
    columns.push(json(&document(0))?);
    columns.push(json(&document(1))?);
    columns.push(message_text(INPUT_TEXT_DERIVED, |s| &s.input_text));
    columns.push(message_text(OUTPUT_TEXT_DERIVED, |s| &s.output_text));
    columns.push(json(&document(2))?);
    columns.push(json(&|row, out| {
        serde_json::to_writer(out, &row.span.metadata).map_err(Error::encode)?;
        Ok(true)
    })?);
    columns.push(json(&document(3))?);
    columns.push(json(&|row, out| {
        if row.span.events.is_empty() {
            return Ok(false);
        }
        serde_json::to_writer(out, &row.span.events).map_err(Error::encode)?;
        Ok(true)
    })?);
    if !leave_out_derived {
        return RecordBatch::try_new(schema(), columns).map_err(Error::encode);
    }
    columns.push(Arc::new(UInt8Array::from(derived)));
    RecordBatch::try_new(written_schema(), columns).map_err(Error::encode)
}

/// Columns holding message content, JSON documents and text.
const HEAVY_COLUMNS: [&str; 7] = [
    "input",
    "output",
    "input_text",
    "output_text",
    "tools",
    "attributes",
    "events",
];
const HEAVY_PAGE_BYTES: usize = 64 * 1024;
/// Rows per page of every column: reading one row decompresses one page per column.
const PAGE_ROWS: usize = 1024;
const WRITE_BATCH_ROWS: usize = 16;

/// Rows per row group: the unit that statistics and bloom filters prune.
const ROW_GROUP_ROWS: usize = 128 * 1024;

/// zstd level of every compressed column. Level 3 made files 7% smaller than level 1 but
/// took about an eighth of all the CPU that ingesting a chat span costs (docs/BENCHMARKS.md, ⁴).
const ZSTD_LEVEL: i32 = 1;

/// Columns of few distinct values, written without compression: their dictionary indexes
/// (a few bits per row) are about as small as zstd makes them, and the parquet reader makes
/// a zstd compression and decompression context for every compressed column chunk a read
/// opens — a fifth of a search page's time at 10 M spans, under `perf`.
const UNCOMPRESSED_COLUMNS: [&str; 21] = [
    "project",
    "name",
    "kind",
    "source",
    "service_name",
    "status",
    "error_type",
    "http_status",
    "provider",
    "request_model",
    "model",
    "routing_alias",
    "operation",
    "stream",
    "temperature",
    "max_tokens",
    "top_p",
    "finish_reason",
    "usage_source",
    "pricing_version",
    DERIVED_COLUMN,
];

fn writer_properties(row_group_rows: usize) -> Result<WriterProperties> {
    let zstd = ZstdLevel::try_new(ZSTD_LEVEL).map_err(Error::encode)?;
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(zstd))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_data_page_row_count_limit(PAGE_ROWS)
        // Page limits are checked between mini-batches of this many rows: with the default
        // (1024) a page of message text grows to megabytes whatever its limit says.
        .set_write_batch_size(WRITE_BATCH_ROWS)
        .set_max_row_group_row_count(Some(row_group_rows));
    for column in ["trace_id", "session_id", "user_id"] {
        builder = builder.set_column_bloom_filter_enabled(ColumnPath::from(column), true);
    }
    for column in UNCOMPRESSED_COLUMNS {
        builder =
            builder.set_column_compression(ColumnPath::from(column), Compression::UNCOMPRESSED);
    }
    // Rows are read one by one for pages and lookups: small pages of the heavy columns keep
    // the bytes decompressed per row read close to the row itself.
    // A dictionary page is decoded whole before any row of its column chunk: pointless for
    // unique values, and costly for one-row reads.
    for column in HEAVY_COLUMNS {
        builder = builder
            .set_column_data_page_size_limit(ColumnPath::from(column), HEAVY_PAGE_BYTES)
            .set_column_dictionary_enabled(ColumnPath::from(column), false);
    }
    for column in ["trace_id", "span_id", "parent_span_id"]
        .into_iter()
        .chain(pool::POOLED.map(|(_, chunks)| chunks))
    {
        builder = builder.set_column_dictionary_enabled(ColumnPath::from(column), false);
    }
    Ok(builder.build())
}

/// Sorts rows into segment file order: by start time, then ids.
pub fn sort_rows(rows: &mut [StoredSpan]) {
    rows.sort_by(|a, b| {
        (a.span.start_time, &a.span.trace_id, &a.span.span_id).cmp(&(
            b.span.start_time,
            &b.span.trace_id,
            &b.span.span_id,
        ))
    });
}

/// Writes rows, already in `sort_rows` order, as one segment file, fsync'd.
pub fn write(path: &Path, rows: &[StoredSpan]) -> Result<u64> {
    write_grouped(path, rows, ROW_GROUP_ROWS)
}

fn write_grouped(path: &Path, rows: &[StoredSpan], row_group_rows: usize) -> Result<u64> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let file = File::create(path).map_err(|e| Error::io(path, e))?;
    let mut writer = ArrowWriter::try_new(
        file,
        file_schema(),
        Some(writer_properties(row_group_rows)?),
    )
    .map_err(|e| Error::segment(path, e))?;
    let mut pool = PoolWriter::default();
    let encoded = rows
        .chunks(16 * 1024)
        .map(|chunk| pool.encode(&to_written_batch(chunk)?))
        .collect::<Result<Vec<_>>>()?;
    // the pool is durable before the segment that needs it is
    let pool_path = pool::path_for(path);
    let written = pool.finish(&pool_path)?;
    if written.is_none() {
        // a file left by an earlier, interrupted write of this segment
        let _ = std::fs::remove_file(&pool_path);
    }
    for batch in encoded {
        let batch = match &written {
            Some(written) => written.renumber(batch)?,
            None => batch,
        };
        writer.write(&batch).map_err(|e| Error::segment(path, e))?;
    }
    let (pool_bytes, chunks) = written.map_or((0, 0), |written| (written.bytes, written.chunks));
    writer.append_key_value_metadata(KeyValue::new(POOL_KEY.to_string(), chunks.to_string()));
    let rollup = Rollup::of(rows.iter().map(|row| row.span.as_ref()));
    let rollup = serde_json::to_string(&rollup).map_err(Error::encode)?;
    writer.append_key_value_metadata(KeyValue::new(ROLLUP_KEY.to_string(), rollup));
    let file = writer.into_inner().map_err(|e| Error::segment(path, e))?;
    file.sync_all().map_err(|e| Error::io(path, e))?;
    let bytes = file.metadata().map_err(|e| Error::io(path, e))?.len();
    Ok(bytes + pool_bytes)
}

/// Reads every row of a segment, whole.
pub fn read(path: &Path) -> Result<Vec<StoredSpan>> {
    let metadata = open_metadata(path)?;
    let pool = open_pool(path, &metadata)?;
    let mut pool_reader = pool.reader();
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(file, metadata)
        .with_batch_size(8192)
        .build()
        .map_err(|e| Error::segment(path, e))?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = pool_reader.decode(batch.map_err(|e| Error::segment(path, e))?)?;
        from_batch(&batch, Projection::WHOLE, &mut rows)
            .map_err(|message| Error::segment(path, message))?;
    }
    Ok(rows)
}

/// Which columns a read decodes. Light reads skip the heavy JSON columns (`input`,
/// `output`, `tools`, `events`), plus `attributes` and the text columns unless asked for.
/// Lean reads, for aggregates, also skip what neither filters, measures, groups nor
/// deletions look at (`LEAN_SKIPPED`), `metadata` unless asked for, and the descriptive
/// columns (`DESCRIPTIVE`: models, provider, alias, service) unless asked for: rows come
/// back with those fields empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Projection {
    pub whole: bool,
    pub attributes: bool,
    pub text: bool,
    pub lean: bool,
    pub metadata: bool,
    pub descriptive: bool,
}

impl Projection {
    pub const WHOLE: Projection = Projection {
        whole: true,
        attributes: true,
        text: true,
        lean: false,
        metadata: true,
        descriptive: true,
    };

    /// Light: everything but the heavy JSON, the attributes and the text.
    pub const LIGHT: Projection = Projection {
        whole: false,
        attributes: false,
        text: false,
        lean: false,
        metadata: true,
        descriptive: true,
    };
}

/// Columns a lean read leaves out unless a filter or a group names them.
pub const DESCRIPTIVE: [&str; 5] = [
    "model",
    "request_model",
    "provider",
    "routing_alias",
    "service_name",
];

/// Columns a lean read leaves out.
const LEAN_SKIPPED: [&str; 17] = [
    "name",
    "parent_span_id",
    "status_message",
    "error_type",
    "http_status",
    "operation",
    "stream",
    "temperature",
    "max_tokens",
    "top_p",
    "finish_reason",
    "cached_input_tokens",
    "reasoning_tokens",
    "usage_source",
    "input_cost_usd",
    "output_cost_usd",
    "pricing_version",
];

/// Loads (and checks) a segment's footer, page index included, to be reused by every read.
pub fn open_metadata(path: &Path) -> Result<ArrowReaderMetadata> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let metadata = ArrowReaderMetadata::load(
        &file,
        ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional),
    )
    .map_err(|e| Error::segment(path, e))?;
    // files written before the pool lack its columns, files written before derived text
    // lack `DERIVED_COLUMN`; both are read as they are
    let fields = metadata.schema().fields().len();
    let known = [
        schema().fields().len(),
        schema().fields().len() + pool::POOLED.len(),
        file_schema().fields().len(),
    ];
    if !known.contains(&fields) {
        return Err(Error::segment(path, "schema does not match this version"));
    }
    Ok(metadata)
}

/// Opens the pool of the segment at `path` (an empty one when the segment has none).
pub fn open_pool(path: &Path, metadata: &ArrowReaderMetadata) -> Result<Pool> {
    let chunks = metadata
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|entries| entries.iter().find(|entry| entry.key == POOL_KEY))
        .and_then(|entry| entry.value.as_deref())
        .map(|value| {
            value
                .parse::<u32>()
                .map_err(|e| Error::segment(path, format!("{POOL_KEY}: {e}")))
        })
        .transpose()?
        .unwrap_or(0);
    if chunks == 0 {
        return Ok(Pool::default());
    }
    Pool::open(&pool::path_for(path), chunks)
}

/// Compressed bytes per column (all row groups), from the footer.
pub fn column_bytes(metadata: &ArrowReaderMetadata) -> Vec<(String, u64)> {
    let mut bytes: BTreeMap<String, u64> = BTreeMap::new();
    for group in metadata.metadata().row_groups() {
        for column in group.columns() {
            *bytes.entry(column.column_path().string()).or_default() +=
                column.compressed_size().max(0) as u64;
        }
    }
    bytes.into_iter().collect()
}

/// The rollup a segment's footer holds; `None` for segments written without one.
pub fn rollup(path: &Path, metadata: &ArrowReaderMetadata) -> Result<Option<Rollup>> {
    let Some(entries) = metadata.metadata().file_metadata().key_value_metadata() else {
        return Ok(None);
    };
    let Some(json) = entries
        .iter()
        .find(|entry| entry.key == ROLLUP_KEY)
        .and_then(|entry| entry.value.as_deref())
    else {
        return Ok(None);
    };
    serde_json::from_str(json)
        .map(Some)
        .map_err(|e| Error::segment(path, format!("rollup: {e}")))
}

/// Reads the rows at `rows` (ascending row numbers), in that order. The page index lets
/// the reader skip pages that hold none of them.
pub fn read_rows(
    path: &Path,
    metadata: &ArrowReaderMetadata,
    pool: &Pool,
    rows: &[u32],
    projection: Projection,
) -> Result<Vec<StoredSpan>> {
    let mut out = Vec::with_capacity(rows.len());
    visit_rows(path, metadata, pool, rows, projection, &mut |span, seq| {
        out.push(StoredSpan {
            seq,
            span: Arc::new(std::mem::take(span)),
            json: None,
        });
        Ok(())
    })?;
    Ok(out)
}

/// Hands the rows at `rows` (ascending row numbers) to `visit` in that order, decoded into
/// one span whose buffers are reused from row to row (see `visit_batch`): a scan that only
/// looks at rows allocates nothing per row.
pub fn visit_rows(
    path: &Path,
    metadata: &ArrowReaderMetadata,
    pool: &Pool,
    rows: &[u32],
    projection: Projection,
    visit: &mut dyn FnMut(&mut Span, u64) -> Result<()>,
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut skipped: Vec<&str> = Vec::new();
    if !projection.whole {
        skipped.extend(["input", "output", "tools", "events"]);
        if !projection.attributes {
            skipped.push("attributes");
        }
        if !projection.text {
            skipped.extend(["input_text", "output_text"]);
        }
        if projection.lean {
            skipped.extend(LEAN_SKIPPED);
        }
        if !projection.metadata {
            skipped.push("metadata");
        }
        if !projection.descriptive {
            skipped.extend(DESCRIPTIVE);
        }
    }
    let full_schema = schema();
    let wanted: Vec<&str> = full_schema
        .fields()
        .iter()
        .map(|field| field.name().as_str())
        .filter(|name| !skipped.contains(name))
        .collect();
    // texts left out of the file are put back from the span's messages (`visit_batch`)
    let reader = open_rows(path, metadata, pool, rows, &wanted, false)?;
    let mut span = Span::default();
    let mut seen = 0;
    // the visitor's own error, passed through the decoder as text, is returned as it was
    let mut failed = None;
    for batch in reader {
        let batch = batch?;
        seen += batch.num_rows();
        visit_batch(&batch, projection, &mut span, &mut |span, seq| {
            visit(span, seq).map_err(|err| {
                let message = err.to_string();
                failed = Some(err);
                message
            })
        })
        .map_err(|message| {
            failed
                .take()
                .unwrap_or_else(|| Error::segment(path, message))
        })?;
    }
    if seen != rows.len() {
        return Err(Error::segment(
            path,
            "read returned a different number of rows",
        ));
    }
    Ok(())
}

/// Completes rows that a light read found: sets the fields only a whole read holds
/// (messages, texts, tools, attributes, events) on `spans`, the rows at `rows` (ascending
/// row numbers) in that order. Reads those columns alone, not the whole row again: every
/// column a read opens costs its pages and a codec.
pub fn complete_rows(
    path: &Path,
    metadata: &ArrowReaderMetadata,
    pool: &Pool,
    rows: &[u32],
    spans: &mut [Span],
) -> Result<()> {
    if rows.len() != spans.len() {
        return Err(Error::segment(path, "rows and spans to complete disagree"));
    }
    if rows.is_empty() {
        return Ok(());
    }
    let mut next = spans.iter_mut();
    for batch in open_rows(path, metadata, pool, rows, &HEAVY_COLUMNS, false)? {
        let batch = batch?;
        let failed = |message: String| Error::segment(path, message);
        let heavy = HeavyColumns::new(&Columns::new(&batch)).map_err(failed)?;
        for row in 0..batch.num_rows() {
            let span = next
                .next()
                .ok_or_else(|| failed("read returned more rows than asked for".into()))?;
            heavy.fill(row, span, true, true).map_err(failed)?;
        }
    }
    if next.next().is_some() {
        return Err(Error::segment(
            path,
            "read returned fewer rows than asked for",
        ));
    }
    Ok(())
}

/// Hands the batches holding the rows at `rows` (ascending row numbers), with only the
/// `columns` named, to `visit`: for scans that work on whole columns.
pub fn visit_batches(
    path: &Path,
    metadata: &ArrowReaderMetadata,
    pool: &Pool,
    rows: &[u32],
    columns: &[&str],
    visit: &mut dyn FnMut(&RecordBatch) -> Result<()>,
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    for batch in open_rows(path, metadata, pool, rows, columns, true)? {
        visit(&batch?)?;
    }
    Ok(())
}

/// A reader of the `columns` of the rows at `rows` (ascending, not empty). Only the row
/// groups from the first row's to the last's are opened (a skip over a row group's rows
/// still reads its dictionary and boundary pages), and the page index lets the reader skip
/// pages that hold none of the rows.
///
/// A text column comes with its messages and `DERIVED_COLUMN` where the file may have left
/// it out; with `restore`, the batches hold the texts put back and only `columns`.
fn open_rows<'p>(
    path: &Path,
    metadata: &ArrowReaderMetadata,
    pool: &'p Pool,
    rows: &[u32],
    columns: &[&str],
    restore: bool,
) -> Result<impl Iterator<Item = Result<RecordBatch>> + use<'p>> {
    let total = usize::try_from(metadata.metadata().file_metadata().num_rows())
        .map_err(|e| Error::segment(path, e))?;
    if rows.iter().any(|&row| row as usize >= total) {
        return Err(Error::segment(
            path,
            "row number past the end of the segment",
        ));
    }
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(file, metadata.clone());
    let asked: Vec<String> = columns.iter().map(|column| column.to_string()).collect();
    let mut columns = columns.to_vec();
    let derives = metadata.schema().index_of(DERIVED_COLUMN).is_ok()
        && DERIVED_TEXT
            .iter()
            .any(|(text, _, _)| columns.contains(text));
    if derives {
        for (text, messages, _) in DERIVED_TEXT {
            if columns.contains(&text) && !columns.contains(&messages) {
                columns.push(messages);
            }
        }
        columns.push(DERIVED_COLUMN);
    }
    // a pooled column is read with its chunk ids, in files that have them
    for (text, chunks) in pool::POOLED {
        if columns.contains(&text) && metadata.schema().index_of(chunks).is_ok() {
            columns.push(chunks);
        }
    }
    let mask = ProjectionMask::columns(builder.parquet_schema(), columns.iter().copied());
    let mut group_rows = Vec::new();
    for group in metadata.metadata().row_groups() {
        group_rows.push(usize::try_from(group.num_rows()).map_err(|e| Error::segment(path, e))?);
    }
    // (row group, its first row) of a row number below `total`
    let group_of = |row: usize| {
        let mut start = 0;
        for (group, count) in group_rows.iter().enumerate() {
            if row < start + count {
                return (group, start);
            }
            start += count;
        }
        (
            group_rows.len() - 1,
            start - group_rows.last().copied().unwrap_or(0),
        )
    };
    let (first_group, first_start) = group_of(rows[0] as usize);
    let (last_group, _) = group_of(rows[rows.len() - 1] as usize);
    let groups: Vec<usize> = (first_group..=last_group).collect();
    let opened: usize = groups.iter().map(|&group| group_rows[group]).sum();
    let indexes: Vec<usize> = rows.iter().map(|&row| row as usize - first_start).collect();
    let reader = builder
        .with_projection(mask)
        .with_row_groups(groups)
        .with_row_selection(select_rows(&indexes, opened))
        // Selectors skip whole pages through the page index; a mask (what the default picks
        // for scattered rows) would decompress every page of every column.
        .with_row_selection_policy(RowSelectionPolicy::Selectors)
        .with_batch_size(8192)
        .build()
        .map_err(|e| Error::segment(path, e))?;
    let path = path.to_path_buf();
    let mut pool_reader = pool.reader();
    Ok(reader.map(move |batch| {
        let batch = pool_reader.decode(batch.map_err(|e| Error::segment(&path, e))?)?;
        if restore && derives {
            restore_text(&batch, &asked).map_err(|message| Error::segment(&path, message))
        } else {
            Ok(batch)
        }
    }))
}

/// `batch` with the texts its `DERIVED_COLUMN` flags put back from their messages, holding
/// only `columns`, in that order.
fn restore_text(batch: &RecordBatch, columns: &[String]) -> Result<RecordBatch, String> {
    let flags = batch
        .column_by_name(DERIVED_COLUMN)
        .and_then(|column| column.as_primitive_opt::<UInt8Type>())
        .ok_or("column text_derived is missing or not uint8")?;
    let found = Columns::new(batch);
    let mut fields = Vec::with_capacity(columns.len());
    let mut arrays = Vec::with_capacity(columns.len());
    for name in columns {
        let index = batch
            .schema_ref()
            .index_of(name)
            .map_err(|_| format!("column {name} is missing"))?;
        let mut array = batch.column(index).clone();
        if let Some((text, messages, bit)) = DERIVED_TEXT.iter().find(|(text, ..)| text == name) {
            let texts = found.text_column(text)?;
            let messages = found.text_column(messages)?;
            let mut rebuilt = StringBuilder::with_capacity(batch.num_rows(), 0);
            for row in 0..batch.num_rows() {
                if flags.value(row) & bit != 0 {
                    rebuilt.append_value(flatten_text(&messages.json(row)?));
                } else {
                    rebuilt.append_option(texts.value(row));
                }
            }
            array = Arc::new(rebuilt.finish());
        }
        fields.push(batch.schema_ref().field(index).clone());
        arrays.push(array);
    }
    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), arrays, &options)
        .map_err(|e| e.to_string())
}

/// The rows, as `[start, end)` row numbers, of the row groups whose `start_time` statistics
/// meet `[since, until)` (a group without statistics meets every window).
pub fn row_groups_meeting(
    metadata: &ArrowReaderMetadata,
    (since, until): (i64, i64),
) -> Vec<(u32, u32)> {
    let file = metadata.metadata();
    let column = file
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .position(|column| column.name() == "start_time");
    let mut begin = 0u32;
    let mut meeting = Vec::new();
    for (group, end) in file.row_groups().iter().zip(row_group_ends(metadata)) {
        let range = column
            .and_then(|column| group.column(column).statistics())
            .and_then(|statistics| match statistics {
                Statistics::Int64(values) => Some((*values.min_opt()?, *values.max_opt()?)),
                _ => None,
            });
        if range.is_none_or(|(low, high)| high >= since && low < until) {
            meeting.push((begin, end));
        }
        begin = end;
    }
    meeting
}

/// The row number after each row group's last: reads split at these open one group each.
pub fn row_group_ends(metadata: &ArrowReaderMetadata) -> Vec<u32> {
    let mut end = 0u32;
    metadata
        .metadata()
        .row_groups()
        .iter()
        .map(|group| {
            end = end.saturating_add(u32::try_from(group.num_rows()).unwrap_or(u32::MAX));
            end
        })
        .collect()
}

/// A selection of the rows at `indexes` (ascending) out of `total`.
fn select_rows(indexes: &[usize], total: usize) -> RowSelection {
    let mut selectors = Vec::new();
    let mut position = 0;
    let mut i = 0;
    while i < indexes.len() {
        let start = indexes[i];
        let mut end = start + 1;
        while i + 1 < indexes.len() && indexes[i + 1] == end {
            end += 1;
            i += 1;
        }
        if start > position {
            selectors.push(RowSelector::skip(start - position));
        }
        selectors.push(RowSelector::select(end - start));
        position = end;
        i += 1;
    }
    if total > position {
        selectors.push(RowSelector::skip(total - position));
    }
    RowSelection::from(selectors)
}

/// A batch's columns by name. Each column is looked up and typed once per batch
/// (`TextColumn`, `NumberColumn`): a schema search per value was most of a scan's time.
pub(crate) struct Columns<'a>(HashMap<&'a str, &'a ArrayRef>);

impl<'a> Columns<'a> {
    pub(crate) fn new(batch: &'a RecordBatch) -> Columns<'a> {
        Columns(
            batch
                .schema_ref()
                .fields()
                .iter()
                .map(|field| field.name().as_str())
                .zip(batch.columns())
                .collect(),
        )
    }

    fn column(&self, name: &str) -> Result<&'a ArrayRef, String> {
        self.0
            .get(name)
            .copied()
            .ok_or_else(|| format!("column {name} is missing"))
    }

    /// A column the read left out (a lean read) reads as null.
    fn present(&self, name: &str) -> Option<&'a ArrayRef> {
        self.0.get(name).copied()
    }

    pub(crate) fn text_column(&self, name: &'static str) -> Result<TextColumn<'a>, String> {
        let array = self
            .present(name)
            .map(|column| {
                column
                    .as_string_opt::<i32>()
                    .ok_or_else(|| format!("column {name} is not text"))
            })
            .transpose()?;
        Ok(TextColumn { name, array })
    }

    fn number_column<T: ArrowPrimitiveType>(
        &self,
        name: &'static str,
    ) -> Result<NumberColumn<'a, T>, String> {
        let array = self
            .present(name)
            .map(|column| {
                column
                    .as_primitive_opt::<T>()
                    .ok_or_else(|| format!("column {name} is not {}", T::DATA_TYPE))
            })
            .transpose()?;
        Ok(NumberColumn { name, array })
    }

    pub(crate) fn int_column(
        &self,
        name: &'static str,
    ) -> Result<NumberColumn<'a, Int64Type>, String> {
        self.number_column(name)
    }

    pub(crate) fn float_column(
        &self,
        name: &'static str,
    ) -> Result<NumberColumn<'a, Float64Type>, String> {
        self.number_column(name)
    }

    pub(crate) fn time_column(
        &self,
        name: &'static str,
    ) -> Result<NumberColumn<'a, TimestampNanosecondType>, String> {
        self.number_column(name)
    }
}

/// A text column, typed once per batch; `array` is `None` when the read left it out.
pub(crate) struct TextColumn<'a> {
    name: &'static str,
    array: Option<&'a StringArray>,
}

impl TextColumn<'_> {
    pub(crate) fn value(&self, row: usize) -> Option<&str> {
        self.array
            .and_then(|array| (!array.is_null(row)).then(|| array.value(row)))
    }

    pub(crate) fn required_str(&self, row: usize) -> Result<&str, String> {
        self.value(row)
            .ok_or_else(|| format!("column {} is null in row {row}", self.name))
    }

    /// The row's JSON when `wanted`, else null (not parsed).
    fn json_if(&self, wanted: bool, row: usize) -> Result<Value, String> {
        if wanted {
            self.json(row)
        } else {
            Ok(Value::Null)
        }
    }

    fn json(&self, row: usize) -> Result<Value, String> {
        match self.value(row) {
            None => Ok(Value::Null),
            Some(text) => {
                serde_json::from_str(text).map_err(|e| format!("column {}: {e}", self.name))
            }
        }
    }
}

/// A numeric column, typed once per batch.
pub(crate) struct NumberColumn<'a, T: ArrowPrimitiveType> {
    name: &'static str,
    array: Option<&'a PrimitiveArray<T>>,
}

impl<T: ArrowPrimitiveType> NumberColumn<'_, T> {
    pub(crate) fn get(&self, row: usize) -> Option<T::Native> {
        self.array
            .and_then(|array| (!array.is_null(row)).then(|| array.value(row)))
    }

    pub(crate) fn required(&self, row: usize) -> Result<T::Native, String> {
        self.get(row)
            .ok_or_else(|| format!("column {} is null in row {row}", self.name))
    }
}

/// Decodes each row of `batch` into `span` in turn and hands it to `visit` with its
/// sequence number. Text goes into the span's existing buffers: a visitor that only looks
/// at each row allocates nothing per row, one that takes the span (`mem::take`) owns it.
/// Fields the projection leaves out come back empty.
fn visit_batch(
    batch: &RecordBatch,
    projection: Projection,
    span: &mut Span,
    visit: &mut dyn FnMut(&mut Span, u64) -> Result<(), String>,
) -> Result<(), String> {
    let columns = Columns::new(batch);
    let seqs = columns
        .column("_seq")?
        .as_primitive_opt::<UInt64Type>()
        .ok_or("column _seq is not uint64")?
        .clone();
    let stream = columns
        .present("stream")
        .map(|column| {
            column
                .as_boolean_opt()
                .ok_or("column stream is not boolean")
        })
        .transpose()?;
    let col_project = columns.text_column("project")?;
    let col_trace_id = columns.text_column("trace_id")?;
    let col_span_id = columns.text_column("span_id")?;
    let col_kind = columns.text_column("kind")?;
    let col_status = columns.text_column("status")?;
    let col_source = columns.text_column("source")?;
    let col_metadata = columns.text_column("metadata")?;
    let col_parent_span_id = columns.text_column("parent_span_id")?;
    let col_name = columns.text_column("name")?;
    let col_service_name = columns.text_column("service_name")?;
    let col_status_message = columns.text_column("status_message")?;
    let col_error_type = columns.text_column("error_type")?;
    let col_session_id = columns.text_column("session_id")?;
    let col_user_id = columns.text_column("user_id")?;
    let col_provider = columns.text_column("provider")?;
    let col_request_model = columns.text_column("request_model")?;
    let col_model = columns.text_column("model")?;
    let col_routing_alias = columns.text_column("routing_alias")?;
    let col_operation = columns.text_column("operation")?;
    let col_finish_reason = columns.text_column("finish_reason")?;
    let col_usage_source = columns.text_column("usage_source")?;
    let col_pricing_version = columns.text_column("pricing_version")?;
    let col_max_tokens = columns.int_column("max_tokens")?;
    let col_http_status = columns.int_column("http_status")?;
    let col_input_tokens = columns.int_column("input_tokens")?;
    let col_output_tokens = columns.int_column("output_tokens")?;
    let col_cached_input_tokens = columns.int_column("cached_input_tokens")?;
    let col_reasoning_tokens = columns.int_column("reasoning_tokens")?;
    let col_total_tokens = columns.int_column("total_tokens")?;
    let col_duration_ms = columns.float_column("duration_ms")?;
    let col_time_to_first_token_ms = columns.float_column("time_to_first_token_ms")?;
    let col_temperature = columns.float_column("temperature")?;
    let col_top_p = columns.float_column("top_p")?;
    let col_input_cost_usd = columns.float_column("input_cost_usd")?;
    let col_output_cost_usd = columns.float_column("output_cost_usd")?;
    let col_total_cost_usd = columns.float_column("total_cost_usd")?;
    let col_start_time = columns.time_column("start_time")?;
    let col_end_time = columns.time_column("end_time")?;
    let heavy = HeavyColumns::new(&columns)?;
    for row in 0..batch.num_rows() {
        let kind_text = col_kind.required_str(row)?;
        let status_text = col_status.required_str(row)?;
        let source_text = col_source.required_str(row)?;
        let metadata: BTreeMap<String, String> = match col_metadata.value(row) {
            Some(text) => {
                serde_json::from_str(text).map_err(|e| format!("column metadata: {e}"))?
            }
            None => BTreeMap::new(),
        };
        set_text(&mut span.project, col_project.required_str(row)?);
        set_text(&mut span.trace_id, col_trace_id.required_str(row)?);
        set_text(&mut span.span_id, col_span_id.required_str(row)?);
        set_optional(&mut span.parent_span_id, col_parent_span_id.value(row));
        set_text(&mut span.name, col_name.value(row).unwrap_or_default());
        span.kind =
            SpanKind::parse(kind_text).ok_or_else(|| format!("unknown kind {kind_text}"))?;
        span.source = SpanSource::parse(source_text)
            .ok_or_else(|| format!("unknown source {source_text}"))?;
        set_optional(&mut span.service_name, col_service_name.value(row));
        span.start_time = col_start_time.required(row)?;
        span.end_time = col_end_time.required(row)?;
        span.duration_ms = col_duration_ms.get(row).unwrap_or(0.0);
        span.time_to_first_token_ms = col_time_to_first_token_ms.get(row);
        span.status = SpanStatus::parse(status_text)
            .ok_or_else(|| format!("unknown status {status_text}"))?;
        set_optional(&mut span.status_message, col_status_message.value(row));
        set_optional(&mut span.error_type, col_error_type.value(row));
        span.http_status = col_http_status
            .get(row)
            .and_then(|code| u16::try_from(code).ok());
        set_optional(&mut span.session_id, col_session_id.value(row));
        set_optional(&mut span.user_id, col_user_id.value(row));
        set_optional(&mut span.provider, col_provider.value(row));
        set_optional(&mut span.request_model, col_request_model.value(row));
        set_optional(&mut span.model, col_model.value(row));
        set_optional(&mut span.routing_alias, col_routing_alias.value(row));
        set_optional(&mut span.operation, col_operation.value(row));
        span.stream = stream.and_then(|stream| (!stream.is_null(row)).then(|| stream.value(row)));
        span.temperature = col_temperature.get(row);
        span.max_tokens = col_max_tokens.get(row);
        span.top_p = col_top_p.get(row);
        set_optional(&mut span.finish_reason, col_finish_reason.value(row));
        span.input_tokens = col_input_tokens.get(row);
        span.output_tokens = col_output_tokens.get(row);
        span.cached_input_tokens = col_cached_input_tokens.get(row);
        span.reasoning_tokens = col_reasoning_tokens.get(row);
        span.total_tokens = col_total_tokens.get(row);
        set_optional(&mut span.usage_source, col_usage_source.value(row));
        span.input_cost_usd = col_input_cost_usd.get(row);
        span.output_cost_usd = col_output_cost_usd.get(row);
        span.total_cost_usd = col_total_cost_usd.get(row);
        set_optional(&mut span.pricing_version, col_pricing_version.value(row));
        span.metadata = metadata;
        heavy.fill(
            row,
            span,
            projection.whole,
            projection.whole || projection.attributes,
        )?;
        visit(span, seqs.value(row))?;
    }
    Ok(())
}

/// The columns only a whole read needs (`HEAVY_COLUMNS`), and which texts a row left out
/// because its messages give them.
struct HeavyColumns<'a> {
    input: TextColumn<'a>,
    output: TextColumn<'a>,
    input_text: TextColumn<'a>,
    output_text: TextColumn<'a>,
    tools: TextColumn<'a>,
    attributes: TextColumn<'a>,
    events: TextColumn<'a>,
    derived: Option<&'a PrimitiveArray<UInt8Type>>,
}

impl<'a> HeavyColumns<'a> {
    fn new(columns: &Columns<'a>) -> Result<HeavyColumns<'a>, String> {
        Ok(HeavyColumns {
            input: columns.text_column("input")?,
            output: columns.text_column("output")?,
            input_text: columns.text_column("input_text")?,
            output_text: columns.text_column("output_text")?,
            tools: columns.text_column("tools")?,
            attributes: columns.text_column("attributes")?,
            events: columns.text_column("events")?,
            derived: columns
                .present(DERIVED_COLUMN)
                .map(|column| {
                    column
                        .as_primitive_opt::<UInt8Type>()
                        .ok_or("column text_derived is not uint8")
                })
                .transpose()?,
        })
    }

    /// Sets `span`'s texts, its messages, tools and events when `whole` (else leaves them
    /// empty), and its attributes when `attributes`. A text the file left out comes from
    /// the messages, parsed for it alone when the read is not whole.
    fn fill(
        &self,
        row: usize,
        span: &mut Span,
        whole: bool,
        attributes: bool,
    ) -> Result<(), String> {
        set_text(
            &mut span.input_text,
            self.input_text.value(row).unwrap_or_default(),
        );
        set_text(
            &mut span.output_text,
            self.output_text.value(row).unwrap_or_default(),
        );
        span.attributes = if attributes {
            self.attributes.json(row)?
        } else {
            Value::Null
        };
        let (input, output) = (
            self.input.json_if(whole, row)?,
            self.output.json_if(whole, row)?,
        );
        (span.input, span.output) = (input, output);
        span.tools = self.tools.json_if(whole, row)?;
        span.events = match self.events.value(row).filter(|_| whole) {
            Some(text) => serde_json::from_str(text).map_err(|e| format!("column events: {e}"))?,
            None => Vec::new(),
        };
        let flags = self.derived.map_or(0, |derived| derived.value(row));
        if whole {
            span.derive_text(flags);
        } else {
            if flags & INPUT_TEXT_DERIVED != 0 {
                span.input_text = flatten_text(&self.input.json(row)?);
            }
            if flags & OUTPUT_TEXT_DERIVED != 0 {
                span.output_text = flatten_text(&self.output.json(row)?);
            }
        }
        Ok(())
    }
}

/// Replaces `target`'s text, keeping its buffer.
fn set_text(target: &mut String, value: &str) {
    target.clear();
    target.push_str(value);
}

/// Replaces an optional text, keeping the buffer when there is one.
fn set_optional(target: &mut Option<String>, value: Option<&str>) {
    match (target.as_mut(), value) {
        (Some(text), Some(value)) => set_text(text, value),
        (_, value) => *target = value.map(str::to_string),
    }
}

/// Every row of `batch`, owned.
fn from_batch(
    batch: &RecordBatch,
    projection: Projection,
    out: &mut Vec<StoredSpan>,
) -> Result<(), String> {
    visit_batch(batch, projection, &mut Span::default(), &mut |span, seq| {
        out.push(StoredSpan {
            seq,
            span: Arc::new(std::mem::take(span)),
            json: None,
        });
        Ok(())
    })
}

/// `YYYY-MM-DD` (UTC) of a nanosecond timestamp.
pub fn day_of(ns: i64) -> String {
    let days = ns.div_euclid(86_400 * 1_000_000_000);
    // Civil-from-days (Howard Hinnant's algorithm), valid far beyond any span time.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmtrace_model::SpanEvent;
    use serde_json::json;

    #[test]
    fn row_selection_covers_exactly_the_given_rows() {
        let selection = select_rows(&[0, 1, 5, 7, 8, 9], 12);
        let selected: Vec<usize> = (0..12)
            .scan(
                selection
                    .iter()
                    .flat_map(|s| std::iter::repeat_n(!s.skip, s.row_count)),
                |it, _| it.next(),
            )
            .enumerate()
            .filter(|(_, keep)| *keep)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(selected, vec![0, 1, 5, 7, 8, 9]);
        assert_eq!(selection.row_count(), 6);
    }

    #[test]
    fn reads_return_exactly_the_selected_rows_across_row_groups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.parquet");
        let mut rows: Vec<StoredSpan> = (0..50u64)
            .map(|n| StoredSpan {
                seq: n,
                span: Arc::new(Span {
                    trace_id: format!("{:032x}", n + 1),
                    span_id: format!("{:016x}", n + 1),
                    start_time: n as i64,
                    input_text: format!("text {n}"),
                    input: json!([{"role": "user", "content": [{"type": "text", "text": format!("text {n}")}]}]),
                    ..Span::default()
                }),
                json: None,
            })
            .collect();
        // Row groups of 8 rows: the second pass must select across them.
        sort_rows(&mut rows);
        write_grouped(&path, &rows, 8).unwrap();
        let groups = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap())
            .unwrap()
            .metadata()
            .num_row_groups();
        assert_eq!(groups, 7);
        let metadata = open_metadata(&path).unwrap();
        let pool = open_pool(&path, &metadata).unwrap();
        let wanted: Vec<u32> = (0..50).filter(|n| n % 7 == 0).collect();
        let whole = read_rows(&path, &metadata, &pool, &wanted, Projection::WHOLE).unwrap();
        let expected: Vec<&Span> = wanted
            .iter()
            .map(|&n| rows[n as usize].span.as_ref())
            .collect();
        assert_eq!(
            whole
                .iter()
                .map(|row| row.span.as_ref())
                .collect::<Vec<_>>(),
            expected
        );
        let light = Projection::LIGHT;
        let read = read_rows(&path, &metadata, &pool, &wanted, light).unwrap();
        for (row, n) in read.iter().zip(&wanted) {
            assert_eq!(row.span.start_time, i64::from(*n));
            assert!(row.span.input.is_null() && row.span.input_text.is_empty());
        }
        assert!(read_rows(&path, &metadata, &pool, &[50], light).is_err());
    }

    /// Multi-turn sessions whose calls resend their history: every value reads back as
    /// written through each read path, and the pool holds the history about once.
    #[test]
    fn resent_history_is_stored_once_and_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.parquet");
        // text that zstd cannot shrink much by itself: only the pool can remove the repeats
        let turn = |session: usize, n: usize| {
            let mut state = ((session * 1000 + n) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let words: Vec<String> = (0..120)
                .map(|_| {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    format!("{:x}", state >> 40)
                })
                .collect();
            format!("session {session} turn {n}: {} é∑", words.join(" "))
        };
        let mut rows = Vec::new();
        let mut raw = 0;
        for call in 0..30usize {
            for session in 0..4usize {
                let turns: Vec<String> = (0..=call).map(|n| turn(session, n)).collect();
                let input = serde_json::Value::Array(
                    turns
                        .iter()
                        .map(|text| json!({"role": "user", "content": text}))
                        .collect(),
                );
                let input_text = turns.join("\n");
                raw += input_text.len() + input.to_string().len();
                let n = (call * 4 + session) as u64;
                rows.push(StoredSpan {
                    seq: n,
                    span: Arc::new(Span {
                        trace_id: format!("{:032x}", n + 1),
                        span_id: format!("{:016x}", n + 1),
                        // session 3 has no session id: its calls chain by trace instead
                        session_id: (session < 3).then(|| format!("s{session}")),
                        start_time: n as i64,
                        input,
                        input_text,
                        output_text: "short".into(),
                        ..Span::default()
                    }),
                    json: None,
                });
            }
        }
        // session 3's calls are one trace each, so only its first is shared: give them one
        for row in rows.iter_mut().filter(|row| row.span.session_id.is_none()) {
            Arc::make_mut(&mut row.span).trace_id = "f".repeat(32);
        }
        sort_rows(&mut rows);
        let bytes = write_grouped(&path, &rows, 16).unwrap();
        assert!(pool::path_for(&path).exists());
        eprintln!("{bytes} bytes on disk for {raw} bytes of history");
        assert!(
            bytes * 10 < raw as u64,
            "{bytes} bytes on disk for {raw} bytes of history"
        );
        assert_eq!(read(&path).unwrap(), rows);
        let metadata = open_metadata(&path).unwrap();
        let pool = open_pool(&path, &metadata).unwrap();
        let wanted: Vec<u32> = (0..120).filter(|n| n % 5 == 1).collect();
        let read = read_rows(&path, &metadata, &pool, &wanted, Projection::WHOLE).unwrap();
        for (row, n) in read.iter().zip(&wanted) {
            assert_eq!(row.span, rows[*n as usize].span);
        }
        let mut texts = Vec::new();
        visit_batches(
            &path,
            &metadata,
            &pool,
            &wanted,
            &["input_text"],
            &mut |batch| {
                assert_eq!(batch.num_columns(), 1, "chunk ids stay inside the store");
                let column = batch.column(0).as_string::<i32>();
                texts.extend((0..column.len()).map(|row| column.value(row).to_string()));
                Ok(())
            },
        )
        .unwrap();
        let expected: Vec<&str> = wanted
            .iter()
            .map(|&n| rows[n as usize].span.input_text.as_str())
            .collect();
        assert_eq!(texts, expected);
    }

    #[test]
    fn a_damaged_pool_fails_the_segment_read_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.parquet");
        let long = "a long message ".repeat(100);
        let rows = vec![StoredSpan {
            seq: 0,
            span: Arc::new(Span {
                trace_id: "1".repeat(32),
                span_id: "1".repeat(16),
                input_text: long,
                ..Span::default()
            }),
            json: None,
        }];
        write_grouped(&path, &rows, 16).unwrap();
        let pool_path = pool::path_for(&path);
        let mut bytes = std::fs::read(&pool_path).unwrap();
        bytes[3] ^= 0x40;
        std::fs::write(&pool_path, &bytes).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("pool"), "{err}");
        std::fs::remove_file(&pool_path).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("pool is missing"), "{err}");
    }

    #[test]
    fn day_of_known_dates() {
        assert_eq!(day_of(0), "1970-01-01");
        assert_eq!(day_of(1_795_314_670_442_314_223), "2026-11-22");
        assert_eq!(day_of(-1), "1969-12-31");
        assert_eq!(day_of(951_782_400 * 1_000_000_000), "2000-02-29");
    }

    /// The low-cardinality columns are written without compression (so reads make no codec
    /// for them) and every other column with zstd; a name in the list that is not a column
    /// would silently do nothing, so each must be one.
    #[test]
    fn few_valued_columns_are_written_uncompressed_and_the_rest_with_zstd() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.parquet");
        write(&path, &chat_rows()).unwrap();
        let metadata = open_metadata(&path).unwrap();
        let group = metadata.metadata().row_group(0);
        let mut uncompressed = Vec::new();
        for column in group.columns() {
            let name = column.column_path().string();
            match column.compression() {
                Compression::UNCOMPRESSED => uncompressed.push(name),
                Compression::ZSTD(_) => {}
                other => panic!("{name}: {other:?}"),
            }
        }
        let mut expected: Vec<String> = UNCOMPRESSED_COLUMNS
            .iter()
            .map(|name| name.to_string())
            .collect();
        expected.sort();
        uncompressed.sort();
        assert_eq!(uncompressed, expected);
        assert_eq!(read(&path).unwrap(), chat_rows());
    }

    #[test]
    fn every_field_survives_a_segment_round_trip() {
        let mut metadata = BTreeMap::new();
        metadata.insert("tier".to_string(), "gold".to_string());
        let span = Span {
            project: "default".into(),
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            span_id: "b7ad6b7169203331".into(),
            parent_span_id: Some("00f067aa0ba902b7".into()),
            name: "chat gpt-4o-mini".into(),
            kind: SpanKind::Llm,
            source: SpanSource::Otlp,
            service_name: Some("svc".into()),
            start_time: 1_795_314_670_442_314_223,
            end_time: 1_795_314_671_000_000_000,
            duration_ms: 557.685777,
            time_to_first_token_ms: Some(12.5),
            status: SpanStatus::Error,
            status_message: Some("upstream 500".into()),
            error_type: Some("timeout".into()),
            http_status: Some(500),
            session_id: Some("s1".into()),
            user_id: Some("u1".into()),
            provider: Some("openai".into()),
            request_model: Some("gpt-4o-mini".into()),
            model: Some("gpt-4o-mini-2024-07-18".into()),
            routing_alias: Some("smart".into()),
            operation: Some("chat".into()),
            stream: Some(true),
            temperature: Some(0.2),
            max_tokens: Some(100),
            top_p: Some(0.9),
            finish_reason: Some("stop".into()),
            input_tokens: Some(19),
            output_tokens: Some(10),
            cached_input_tokens: Some(3),
            reasoning_tokens: Some(0),
            total_tokens: Some(29),
            usage_source: Some("reported".into()),
            input_cost_usd: Some(0.1),
            output_cost_usd: Some(0.2),
            total_cost_usd: Some(0.30000000000000004),
            pricing_version: Some("2026-11".into()),
            input: json!([{"role": "user", "content": [{"type": "text", "text": "hi"}]}]),
            output: json!([{"role": "assistant", "content": [{"type": "text", "text": "yo"}]}]),
            input_text: "hi".into(),
            output_text: "yo".into(),
            tools: json!([{"name": "get_weather"}]),
            metadata,
            attributes: json!({"x": 1}),
            events: vec![SpanEvent {
                name: "e".into(),
                time_unix_nano: 5,
                attributes: json!({"a": "b"}),
            }],
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x/1.parquet");
        let mut rows = vec![
            StoredSpan {
                seq: 7,
                span: Arc::new(span.clone()),
                json: None,
            },
            StoredSpan {
                seq: 8,
                span: Arc::new(Span {
                    span_id: "b7ad6b7169203332".into(),
                    start_time: 5,
                    ..Span::default()
                }),
                json: None,
            },
        ];
        sort_rows(&mut rows);
        write(&path, &rows).unwrap();
        open_metadata(&path).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].seq, 8, "rows are sorted by start time");
        assert_eq!(back[1].seq, 7);
        assert_eq!(*back[1].span, span);
    }

    /// Chat rows whose texts are their messages' text (`derived`), one whose input text is
    /// not, and one with a tool call; long enough that the input is pooled.
    fn chat_rows() -> Vec<StoredSpan> {
        let message = |role: &str, text: &str| json!({"role": role, "content": [{"type": "text", "text": text}]});
        (0..6u64)
            .map(|n| {
                let question = format!("question {n}: {}", "why is the sky blue ".repeat(40));
                let mut input = vec![message("system", "be brief"), message("user", &question)];
                if n == 4 {
                    input.push(json!({"role": "assistant", "tool_calls": [{"id": "c1",
                        "function": {"name": "lookup", "arguments": "{\"q\":\"sky\"}"}}]}));
                }
                let input = Value::Array(input);
                let output = json!([message("assistant", &format!("answer {n}: scattering"))]);
                let mut input_text = flatten_text(&input);
                if n == 2 {
                    // a source whose text says more than its messages: kept as it is
                    input_text.push_str(" (and more)");
                }
                StoredSpan {
                    seq: n,
                    span: Arc::new(Span {
                        trace_id: format!("{:032x}", n + 1),
                        span_id: format!("{:016x}", n + 1),
                        session_id: Some("s".into()),
                        start_time: n as i64,
                        output_text: flatten_text(&output),
                        input,
                        output,
                        input_text,
                        ..Span::default()
                    }),
                    json: None,
                }
            })
            .collect()
    }

    /// The texts of `columns` for `rows`, through `visit_batches`, checking that no other
    /// column comes along.
    fn texts_of(path: &Path, rows: &[u32], columns: &[&str]) -> Vec<Vec<String>> {
        let metadata = open_metadata(path).unwrap();
        let pool = open_pool(path, &metadata).unwrap();
        let mut texts = vec![Vec::new(); columns.len()];
        visit_batches(path, &metadata, &pool, rows, columns, &mut |batch| {
            let names: Vec<&str> = batch
                .schema_ref()
                .fields()
                .iter()
                .map(|field| field.name().as_str())
                .collect();
            assert_eq!(names, columns, "only the columns asked for");
            for (at, column) in batch.columns().iter().enumerate() {
                let column = column.as_string::<i32>();
                texts[at].extend((0..column.len()).map(|row| column.value(row).to_string()));
            }
            Ok(())
        })
        .unwrap();
        texts
    }

    #[test]
    fn message_text_the_messages_give_is_left_out_of_the_file_and_read_back_everywhere() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.parquet");
        let rows = chat_rows();
        write(&path, &rows).unwrap();
        // the file itself: the texts are empty where flagged, kept where not derivable
        let file = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap())
            .unwrap()
            .build()
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        let flags = file
            .column_by_name(DERIVED_COLUMN)
            .unwrap()
            .as_primitive::<UInt8Type>()
            .values()
            .to_vec();
        let both = INPUT_TEXT_DERIVED | OUTPUT_TEXT_DERIVED;
        assert_eq!(flags, [both, both, OUTPUT_TEXT_DERIVED, both, both, both]);
        let stored = |name: &str| -> Vec<String> {
            let column = file.column_by_name(name).unwrap().as_string::<i32>();
            (0..column.len())
                .map(|row| column.value(row).to_string())
                .collect()
        };
        assert!(stored("output_text").iter().all(String::is_empty));
        let input_text = stored("input_text");
        let chunks = file.column_by_name("input_text_chunks").unwrap();
        for (row, text) in input_text.iter().enumerate() {
            // the one text kept is pooled, the others are not there at all
            assert!(text.is_empty());
            assert_eq!(chunks.is_valid(row), row == 2, "row {row}");
        }
        // every read path gives the texts back
        assert_eq!(read(&path).unwrap(), rows);
        let metadata = open_metadata(&path).unwrap();
        let pool = open_pool(&path, &metadata).unwrap();
        let wanted = [1, 2, 4];
        for projection in [
            Projection::WHOLE,
            Projection {
                text: true,
                ..Projection::LIGHT
            },
        ] {
            let read = read_rows(&path, &metadata, &pool, &wanted, projection).unwrap();
            for (row, &n) in read.iter().zip(&wanted) {
                let expected = &rows[n as usize].span;
                assert_eq!(row.span.input_text, expected.input_text, "{projection:?}");
                assert_eq!(row.span.output_text, expected.output_text, "{projection:?}");
            }
        }
        // a light read completed gives the whole rows
        let mut completed: Vec<Span> =
            read_rows(&path, &metadata, &pool, &wanted, Projection::LIGHT)
                .unwrap()
                .into_iter()
                .map(|row| Arc::unwrap_or_clone(row.span))
                .collect();
        assert!(completed.iter().all(|span| span.input.is_null()));
        complete_rows(&path, &metadata, &pool, &wanted, &mut completed).unwrap();
        for (span, &n) in completed.iter().zip(&wanted) {
            assert_eq!(span, rows[n as usize].span.as_ref());
        }
        assert!(complete_rows(&path, &metadata, &pool, &wanted, &mut completed[1..]).is_err());
        let expected = |get: fn(&Span) -> &str| -> Vec<String> {
            wanted
                .iter()
                .map(|&n| get(&rows[n as usize].span).to_string())
                .collect()
        };
        assert_eq!(
            texts_of(&path, &wanted, &["output_text", "input_text"]),
            [expected(|s| &s.output_text), expected(|s| &s.input_text)]
        );
        assert_eq!(
            texts_of(&path, &wanted, &["input_text"]),
            [expected(|s| &s.input_text)]
        );
    }

    #[test]
    fn files_written_before_derived_text_read_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.parquet");
        let rows = chat_rows();
        // the layout of the version before: spans table and pool columns, texts kept
        let mut pool = PoolWriter::default();
        let batch = pool.encode(&to_batch(&rows).unwrap()).unwrap();
        let written = pool.finish(&pool::path_for(&path)).unwrap().unwrap();
        let batch = written.renumber(batch).unwrap();
        let mut writer =
            ArrowWriter::try_new(File::create(&path).unwrap(), batch.schema(), None).unwrap();
        writer.write(&batch).unwrap();
        writer.append_key_value_metadata(KeyValue::new(
            POOL_KEY.to_string(),
            written.chunks.to_string(),
        ));
        writer.close().unwrap();
        assert_eq!(read(&path).unwrap(), rows);
        assert_eq!(
            texts_of(&path, &[0, 2], &["input_text"]),
            [[
                rows[0].span.input_text.clone(),
                rows[2].span.input_text.clone()
            ]]
        );
    }
}
