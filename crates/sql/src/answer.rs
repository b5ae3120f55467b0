//! Between Arrow and the JSON an answer is made of.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Builder, RecordBatch, StringBuilder,
    TimestampNanosecondBuilder,
};
use arrow::datatypes::{
    DataType, Field, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, Schema,
    SchemaRef, TimeUnit, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow::error::ArrowError;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use llmtrace_model::{Score, SqlAnswer, SqlColumn};
use serde_json::{Number, Value};

/// The first `max_rows` rows of `batches` as JSON, and whether there were more.
pub fn of_batches(schema: &SchemaRef, batches: &[RecordBatch], max_rows: usize) -> SqlAnswer {
    let columns = schema
        .fields()
        .iter()
        .map(|field| SqlColumn {
            name: field.name().clone(),
            data_type: field.data_type().to_string(),
        })
        .collect();
    let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let mut rows = Vec::with_capacity(total.min(max_rows));
    'batches: for batch in batches {
        let cells: Vec<Cells> = batch.columns().iter().map(Cells::new).collect();
        for row in 0..batch.num_rows() {
            if rows.len() == max_rows {
                break 'batches;
            }
            rows.push(cells.iter().map(|column| column.value(row)).collect());
        }
    }
    SqlAnswer {
        columns,
        rows,
        truncated: total > max_rows,
    }
}

/// One column's values as JSON: numbers and booleans as themselves, everything else
/// (times, dates, decimals, lists) as the text Arrow displays it as.
struct Cells<'a> {
    array: &'a ArrayRef,
    display: Option<ArrayFormatter<'a>>,
}

impl<'a> Cells<'a> {
    fn new(array: &'a ArrayRef) -> Cells<'a> {
        static OPTIONS: std::sync::LazyLock<FormatOptions<'static>> =
            std::sync::LazyLock::new(FormatOptions::default);
        Cells {
            array,
            display: ArrayFormatter::try_new(array.as_ref(), &OPTIONS).ok(),
        }
    }

    fn value(&self, row: usize) -> Value {
        let array = self.array;
        if array.is_null(row) {
            return Value::Null;
        }
        let float = |x: f64| {
            Number::from_f64(x).map_or_else(|| Value::String(x.to_string()), Value::Number)
        };
        match array.data_type() {
            DataType::Boolean => Value::Bool(array.as_boolean().value(row)),
            DataType::Int8 => array.as_primitive::<Int8Type>().value(row).into(),
            DataType::Int16 => array.as_primitive::<Int16Type>().value(row).into(),
            DataType::Int32 => array.as_primitive::<Int32Type>().value(row).into(),
            DataType::Int64 => array.as_primitive::<Int64Type>().value(row).into(),
            DataType::UInt8 => array.as_primitive::<UInt8Type>().value(row).into(),
            DataType::UInt16 => array.as_primitive::<UInt16Type>().value(row).into(),
            DataType::UInt32 => array.as_primitive::<UInt32Type>().value(row).into(),
            DataType::UInt64 => array.as_primitive::<UInt64Type>().value(row).into(),
            DataType::Float32 => float(f64::from(array.as_primitive::<Float32Type>().value(row))),
            DataType::Float64 => float(array.as_primitive::<Float64Type>().value(row)),
            DataType::Utf8 => array.as_string::<i32>().value(row).into(),
            DataType::LargeUtf8 => array.as_string::<i64>().value(row).into(),
            DataType::Utf8View => array.as_string_view().value(row).into(),
            _ => self
                .display
                .as_ref()
                .map_or(Value::Null, |display| display.value(row).to_string().into()),
        }
    }
}

/// The project's scores as the `scores` table.
pub fn scores_batch(scores: &[Score]) -> Result<RecordBatch, ArrowError> {
    let n = scores.len();
    let text = |get: &dyn Fn(&Score) -> Option<&str>| -> ArrayRef {
        let mut builder = StringBuilder::with_capacity(n, n * 16);
        scores
            .iter()
            .for_each(|score| builder.append_option(get(score)));
        Arc::new(builder.finish())
    };
    let mut value = Float64Builder::with_capacity(n);
    scores
        .iter()
        .for_each(|score| value.append_option(score.value));
    let mut created = TimestampNanosecondBuilder::with_capacity(n).with_timezone("UTC");
    scores
        .iter()
        .for_each(|score| created.append_value(score.created_at));
    let utf8 = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    let schema = Schema::new(vec![
        utf8("id", false),
        utf8("trace_id", false),
        utf8("span_id", true),
        utf8("name", false),
        Field::new("value", DataType::Float64, true),
        utf8("label", true),
        utf8("comment", true),
        utf8("source", false),
        Field::new(
            "created_at",
            DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
            false,
        ),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            text(&|score| Some(&score.id)),
            text(&|score| Some(&score.trace_id)),
            text(&|score| score.span_id.as_deref()),
            text(&|score| Some(&score.name)),
            Arc::new(value.finish()),
            text(&|score| score.label.as_deref()),
            text(&|score| score.comment.as_deref()),
            text(&|score| Some(&score.source)),
            Arc::new(created.finish()),
        ],
    )
}
