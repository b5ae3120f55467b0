//! Functions of our own the SQL sees.

use std::sync::Arc;

use arrow::array::{Array, AsArray, StringBuilder, TimestampNanosecondArray};
use arrow::datatypes::{DataType, FieldRef, TimeUnit, TimestampNanosecondType};
use datafusion::common::ScalarValue;
use datafusion::error::Result;
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature, Volatility, create_udf,
};
use serde_json::Value;

pub const JSON_GET: &str = "json_get";

/// `json_get(json_text, key)`: the value under a top-level key of a JSON object held as
/// text (`metadata`, `attributes`, `input`…) — a string as itself, anything else as JSON
/// text, null when the key is missing or the text is not an object. Attribute keys hold
/// dots (`gen_ai.request.model`), so the key is never split into a path.
pub fn json_get() -> ScalarUDF {
    create_udf(
        JSON_GET,
        vec![DataType::Utf8, DataType::Utf8],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let (texts, keys) = (arrays[0].as_string::<i32>(), arrays[1].as_string::<i32>());
            let mut out = StringBuilder::with_capacity(texts.len(), texts.len() * 8);
            for row in 0..texts.len() {
                if texts.is_null(row) || keys.is_null(row) {
                    out.append_null();
                    continue;
                }
                let value = serde_json::from_str::<Value>(texts.value(row))
                    .ok()
                    .and_then(|mut object| object.get_mut(keys.value(row)).map(Value::take));
                match value {
                    None | Some(Value::Null) => out.append_null(),
                    Some(Value::String(text)) => out.append_value(text),
                    Some(other) => out.append_value(other.to_string()),
                }
            }
            Ok(ColumnarValue::Array(Arc::new(out.finish())))
        }),
    )
}

/// `date_trunc` as DataFusion has it, with a fast path for our timestamps: every time in
/// the store is UTC (`Timestamp(ns, "UTC")`), where an hour, a day and a week are fixed
/// spans of nanoseconds, so truncating is arithmetic. DataFusion takes that path only for
/// timestamps without a zone; for zoned ones it looks the zone up value by value (about a
/// third of a by-day aggregate over 10 M rows). Everything else goes to DataFusion's own.
pub fn date_trunc() -> ScalarUDF {
    ScalarUDF::new_from_impl(UtcDateTrunc {
        builtin: datafusion::functions::datetime::date_trunc(),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct UtcDateTrunc {
    builtin: Arc<ScalarUDF>,
}

const NANOS_PER_HOUR: i64 = 3_600 * 1_000_000_000;
const NANOS_PER_DAY: i64 = 24 * NANOS_PER_HOUR;
/// Weeks run Monday to Sunday (as DataFusion's); 1970-01-01 was a Thursday, so a week began
/// on 1969-12-29.
const A_MONDAY: i64 = -3 * NANOS_PER_DAY;

impl UtcDateTrunc {
    /// The answer by arithmetic, when the arguments allow it.
    fn in_utc(args: &[ColumnarValue]) -> Option<ColumnarValue> {
        let [
            ColumnarValue::Scalar(granularity),
            ColumnarValue::Array(times),
        ] = args
        else {
            return None;
        };
        let granularity = match granularity {
            ScalarValue::Utf8(Some(text))
            | ScalarValue::Utf8View(Some(text))
            | ScalarValue::LargeUtf8(Some(text)) => text.to_ascii_lowercase(),
            _ => return None,
        };
        let DataType::Timestamp(TimeUnit::Nanosecond, Some(zone)) = times.data_type() else {
            return None;
        };
        if !matches!(zone.as_ref(), "UTC" | "+00:00") {
            return None;
        }
        let (span, origin) = match granularity.as_str() {
            "hour" => (NANOS_PER_HOUR, 0),
            "day" => (NANOS_PER_DAY, 0),
            "week" => (7 * NANOS_PER_DAY, A_MONDAY),
            _ => return None,
        };
        // a time so near the ends of the range that this overflows is left to DataFusion
        let truncated: TimestampNanosecondArray = times
            .as_primitive::<TimestampNanosecondType>()
            .try_unary(|time: i64| {
                let into_span = time.checked_sub(origin).ok_or(())?.rem_euclid(span);
                time.checked_sub(into_span).ok_or(())
            })
            .ok()?;
        Some(ColumnarValue::Array(Arc::new(
            truncated.with_timezone(zone.clone()),
        )))
    }
}

impl ScalarUDFImpl for UtcDateTrunc {
    fn name(&self) -> &str {
        self.builtin.name()
    }

    fn aliases(&self) -> &[String] {
        self.builtin.aliases()
    }

    fn signature(&self) -> &Signature {
        self.builtin.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.builtin.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.builtin.return_field_from_args(args)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        match Self::in_utc(&args.args) {
            Some(answer) => Ok(answer),
            None => self.builtin.invoke_with_args(args),
        }
    }

    fn output_ordering(&self, inputs: &[ExprProperties]) -> Result<SortProperties> {
        self.builtin.output_ordering(inputs)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.builtin.documentation()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use arrow::array::RecordBatch;
    use arrow::datatypes::{Field, Schema};
    use datafusion::catalog::MemTable;
    use datafusion::execution::FunctionRegistry;
    use datafusion::prelude::SessionContext;

    use super::*;

    /// Ours and DataFusion's answer alike, for every granularity and times on both sides of
    /// 1970, on bucket edges and off them, and nulls.
    #[tokio::test]
    async fn date_trunc_answers_as_datafusion_does() {
        let mut times: Vec<Option<i64>> = vec![None, Some(0), Some(-1), Some(NANOS_PER_DAY)];
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..2_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            // ±60 years around 1970, in ns
            times.push(Some(
                (seed % (120 * 365 * NANOS_PER_DAY as u64)) as i64 - 60 * 365 * NANOS_PER_DAY,
            ));
        }
        let zoned = DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()));
        let schema = Arc::new(Schema::new(vec![Field::new("t", zoned, true)]));
        let batch_of = |times: Vec<Option<i64>>| {
            let column = TimestampNanosecondArray::from(times).with_timezone("UTC");
            RecordBatch::try_new(schema.clone(), vec![Arc::new(column)]).unwrap()
        };
        let batch = batch_of(times);
        let query = |ours: bool, batch: RecordBatch, sql: &'static str| {
            let schema = schema.clone();
            async move {
                let context = SessionContext::new();
                if ours {
                    context.register_udf(date_trunc());
                    // ours stands in for DataFusion's, under its alias too
                    for name in ["date_trunc", "datetrunc"] {
                        let found = context.udf(name).unwrap();
                        let found: &dyn std::any::Any = found.inner().as_ref();
                        assert!(found.is::<UtcDateTrunc>(), "{name}");
                    }
                }
                let table = MemTable::try_new(schema, vec![vec![batch]]).unwrap();
                context.register_table("x", Arc::new(table)).unwrap();
                context.sql(sql).await?.collect().await
            }
        };
        let sql = "SELECT t, date_trunc('hour', t), date_trunc('DAY', t), \
                   date_trunc('week', t), date_trunc('month', t), datetrunc('day', t) FROM x";
        let answer = |ours: bool| query(ours, batch.clone(), sql);
        let (ours, theirs) = (answer(true).await.unwrap(), answer(false).await.unwrap());
        let (ours, theirs) = (
            arrow::compute::concat_batches(&ours[0].schema(), &ours).unwrap(),
            arrow::compute::concat_batches(&theirs[0].schema(), &theirs).unwrap(),
        );
        assert_eq!(ours.num_rows(), 2_004);
        for column in 1..ours.num_columns() {
            let (got, expected) = (ours.column(column), theirs.column(column));
            let got = got.as_primitive::<TimestampNanosecondType>();
            let expected = expected.as_primitive::<TimestampNanosecondType>();
            for row in 0..ours.num_rows() {
                let value = |array: &TimestampNanosecondArray| {
                    array.is_valid(row).then(|| array.value(row))
                };
                assert_eq!(
                    value(got),
                    value(expected),
                    "{} of {:?}",
                    ours.schema().field(column).name(),
                    ours.column(0)
                        .as_primitive::<TimestampNanosecondType>()
                        .value(row)
                );
            }
        }
        // at the ends of the range truncating overflows: ours leaves such times to DataFusion
        for end in [i64::MIN, i64::MAX] {
            let ends = batch_of(vec![Some(end)]);
            let sql = "SELECT date_trunc('week', t) FROM x";
            let ours = query(true, ends.clone(), sql)
                .await
                .map_err(|e| e.to_string());
            let theirs = query(false, ends, sql).await.map_err(|e| e.to_string());
            assert_eq!(ours, theirs, "{end}");
        }
    }
}
