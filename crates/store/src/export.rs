//! Parquet export of spans in the segment schema (without the internal `_seq` column), so
//! pandas, DuckDB, Spark or Polars read an export as they would a segment: times as UTC
//! nanosecond timestamps, JSON-valued columns as JSON text.

use std::io::Write;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use llmtrace_model::Span;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::error::{Error, Result};
use crate::segment::{StoredSpan, schema, to_batch};

/// Rows per row group: the writer holds one group in memory before writing it out, so this
/// bounds an export's memory (16 pages of 1,000 rows).
const ROW_GROUP_ROWS: usize = 16 * 1024;

fn export_schema() -> SchemaRef {
    let full = schema();
    Arc::new(arrow::datatypes::Schema::new(
        full.fields().iter().skip(1).cloned().collect::<Vec<_>>(),
    ))
}

/// Writes pages of spans as they come; `finish` writes the footer.
pub struct ParquetExport<W: Write + Send> {
    writer: ArrowWriter<W>,
}

impl<W: Write + Send> ParquetExport<W> {
    pub fn new(out: W) -> Result<ParquetExport<W>> {
        let zstd = ZstdLevel::try_new(3).map_err(Error::encode)?;
        let properties = WriterProperties::builder()
            .set_compression(Compression::ZSTD(zstd))
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .build();
        let writer =
            ArrowWriter::try_new(out, export_schema(), Some(properties)).map_err(Error::encode)?;
        Ok(ParquetExport { writer })
    }

    pub fn write(&mut self, spans: &[Span]) -> Result<()> {
        if spans.is_empty() {
            return Ok(());
        }
        let rows: Vec<StoredSpan> = spans
            .iter()
            .map(|span| StoredSpan {
                seq: 0,
                span: Arc::new(span.clone()),
                json: None,
            })
            .collect();
        let batch = to_batch(&rows)?;
        let columns: Vec<usize> = (1..batch.num_columns()).collect();
        let batch = batch.project(&columns).map_err(Error::encode)?;
        self.writer.write(&batch).map_err(Error::encode)?;
        // keep memory to one group's worth: flush whole groups as they fill
        if self.writer.in_progress_rows() >= ROW_GROUP_ROWS {
            self.writer.flush().map_err(Error::encode)?;
        }
        Ok(())
    }

    /// Writes the footer and flushes the output.
    pub fn finish(self) -> Result<()> {
        let mut out = self.writer.into_inner().map_err(Error::encode)?;
        out.flush().map_err(Error::encode)
    }
}
