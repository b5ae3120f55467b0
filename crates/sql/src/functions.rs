//! Functions of our own the SQL sees.

use std::sync::Arc;

use arrow::array::{Array, AsArray, StringBuilder};
use arrow::datatypes::DataType;
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};
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
