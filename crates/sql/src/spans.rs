//! The `spans` table: one project's live spans, read through the store's own scan.
//!
//! Conditions DataFusion pushes down that the store's `SpanFilter` can express (a range
//! on `start_time`, equality on ids, model, provider, status, kind…, `duration_ms` and
//! `total_cost_usd` ranges, `json_get(metadata, k) = v`) narrow the scan: partitions and
//! segments outside the time range are never opened, and equalities are answered by the
//! segments' term indexes. They are pushed as *inexact* (DataFusion still applies every
//! condition to what comes back), so the filter may only ever widen what a condition
//! selects: `model = x` becomes the filter's "model or requested model is x".

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::memory::MemorySourceConfig;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{
    Between, BinaryExpr, Expr, Operator, TableProviderFilterPushDown, TableType,
};
use datafusion::physical_plan::ExecutionPlan;
use llmtrace_model::{SpanFilter, SpanKind, SpanSource, SpanStatus};
use llmtrace_store::EmbeddedStore;
use llmtrace_store::segment::table_schema;

use crate::functions::JSON_GET;

/// One project's spans as a DataFusion table.
pub struct SpansTable {
    store: Arc<EmbeddedStore>,
    project: String,
    max_scan_rows: u64,
    schema: SchemaRef,
}

impl std::fmt::Debug for SpansTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpansTable")
            .field("project", &self.project)
            .finish()
    }
}

impl SpansTable {
    pub fn new(store: Arc<EmbeddedStore>, project: &str, max_scan_rows: u64) -> SpansTable {
        SpansTable {
            store,
            project: project.to_string(),
            max_scan_rows,
            schema: table_schema(),
        }
    }

    /// The store filter every pushed-down condition narrows (each only widens its own).
    fn filter_of(&self, conditions: &[Expr]) -> SpanFilter {
        let mut filter = SpanFilter::for_project(&self.project);
        for condition in conditions {
            narrow(&mut filter, condition);
        }
        filter
    }
}

#[async_trait]
impl TableProvider for SpansTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|condition| {
                let mut probe = SpanFilter::default();
                if narrow(&mut probe, condition) {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let fields = self.schema.fields();
        let columns: Vec<&str> = match projection {
            Some(indexes) => indexes
                .iter()
                .map(|&index| fields[index].name().as_str())
                .collect(),
            None => fields.iter().map(|field| field.name().as_str()).collect(),
        };
        let projected = Arc::new(self.schema.project(
            projection.map_or(&(0..fields.len()).collect::<Vec<_>>(), |indexes| indexes),
        )?);
        let filter = self.filter_of(filters);
        let batches = self
            .store
            .scan(&filter, &columns, self.max_scan_rows)
            .map_err(|err| DataFusionError::External(Box::new(llmtrace_model::Error::from(err))))?;
        // two partitions, so both cores work on what comes next
        let (first, second) = batches.split_at(batches.len() / 2);
        let partitions = [first.to_vec(), second.to_vec()];
        Ok(MemorySourceConfig::try_new_exec(
            &partitions,
            projected,
            None,
        )?)
    }
}

/// Narrows `filter` by `condition` where the filter can express it without excluding a row
/// the condition keeps; returns whether it could.
fn narrow(filter: &mut SpanFilter, condition: &Expr) -> bool {
    match condition {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            match (column_of(left), literal_of(right)) {
                (Some(column), Some(value)) => compare(filter, column, *op, value),
                _ => match (literal_of(left), column_of(right), op.swap()) {
                    (Some(value), Some(column), Some(op)) => compare(filter, column, op, value),
                    _ => false,
                },
            }
        }
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) => match (column_of(expr), literal_of(low), literal_of(high)) {
            (Some(column), Some(low), Some(high)) => {
                // both ends, or neither: a half-applied BETWEEN would still be inexact-safe,
                // but report only what was applied whole
                let mut probe = filter.clone();
                if compare(&mut probe, column, Operator::GtEq, low)
                    && compare(&mut probe, column, Operator::LtEq, high)
                {
                    *filter = probe;
                    true
                } else {
                    false
                }
            }
            _ => false,
        },
        _ => false,
    }
}

/// A compared column: a plain column, or `json_get(metadata, 'key')`.
#[derive(Clone, Copy)]
enum Column<'a> {
    Plain(&'a str),
    Metadata(&'a str),
}

fn column_of(expr: &Expr) -> Option<Column<'_>> {
    match expr {
        Expr::Column(column) => Some(Column::Plain(column.name.as_str())),
        Expr::ScalarFunction(call) if call.func.name() == JSON_GET => match call.args.as_slice() {
            [Expr::Column(column), key] if column.name == "metadata" => match literal_of(key)? {
                ScalarValue::Utf8(Some(key))
                | ScalarValue::Utf8View(Some(key))
                | ScalarValue::LargeUtf8(Some(key)) => Some(Column::Metadata(key)),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

fn literal_of(expr: &Expr) -> Option<&ScalarValue> {
    match expr {
        Expr::Literal(value, _) if !value.is_null() => Some(value),
        _ => None,
    }
}

fn text_of(value: &ScalarValue) -> Option<String> {
    match value {
        ScalarValue::Utf8(Some(text))
        | ScalarValue::Utf8View(Some(text))
        | ScalarValue::LargeUtf8(Some(text)) => Some(text.clone()),
        _ => None,
    }
}

fn nanos_of(value: &ScalarValue) -> Option<i64> {
    match value {
        ScalarValue::TimestampNanosecond(Some(ns), _) => Some(*ns),
        ScalarValue::TimestampMicrosecond(Some(us), _) => us.checked_mul(1_000),
        ScalarValue::TimestampMillisecond(Some(ms), _) => ms.checked_mul(1_000_000),
        ScalarValue::TimestampSecond(Some(s), _) => s.checked_mul(1_000_000_000),
        _ => None,
    }
}

fn number_of(value: &ScalarValue) -> Option<f64> {
    match value {
        ScalarValue::Float64(Some(x)) => Some(*x),
        ScalarValue::Float32(Some(x)) => Some(f64::from(*x)),
        ScalarValue::Int64(Some(x)) => Some(*x as f64),
        ScalarValue::Int32(Some(x)) => Some(f64::from(*x)),
        _ => None,
    }
}

/// Sets `slot` if it is free; a second equality on the same column is left to DataFusion.
fn set_once<T>(slot: &mut Option<T>, value: Option<T>) -> bool {
    match value {
        Some(value) if slot.is_none() => {
            *slot = Some(value);
            true
        }
        _ => false,
    }
}

fn compare(filter: &mut SpanFilter, column: Column<'_>, op: Operator, value: &ScalarValue) -> bool {
    let name = match column {
        Column::Metadata(key) => {
            return op == Operator::Eq
                && text_of(value).is_some_and(|text| {
                    filter.metadata.push((key.to_string(), text));
                    true
                });
        }
        Column::Plain(name) => name,
    };
    match (name, op) {
        ("start_time", _) => {
            let Some(at) = nanos_of(value) else {
                return false;
            };
            // [since, until) in ns; several bounds intersect
            let (since, until) = match op {
                Operator::Eq => (Some(at), at.checked_add(1)),
                Operator::Gt => (at.checked_add(1), None),
                Operator::GtEq => (Some(at), None),
                Operator::Lt => (None, Some(at)),
                Operator::LtEq => (None, at.checked_add(1)),
                _ => return false,
            };
            if let Some(since) = since {
                filter.since = Some(filter.since.map_or(since, |old| old.max(since)));
            }
            if let Some(until) = until {
                filter.until = Some(filter.until.map_or(until, |old| old.min(until)));
            }
            true
        }
        ("duration_ms" | "total_cost_usd", _) => {
            let Some(number) = number_of(value) else {
                return false;
            };
            let (min, max) = if name == "duration_ms" {
                (&mut filter.min_duration_ms, &mut filter.max_duration_ms)
            } else {
                (&mut filter.min_cost_usd, &mut filter.max_cost_usd)
            };
            match op {
                // the filter's bounds are inclusive: a strict bound widens to its inclusive twin
                Operator::Gt | Operator::GtEq => set_once(min, Some(number)),
                Operator::Lt | Operator::LtEq => set_once(max, Some(number)),
                Operator::Eq => set_once(min, Some(number)) | set_once(max, Some(number)),
                _ => false,
            }
        }
        (_, Operator::Eq) => {
            let text = text_of(value);
            match name {
                "trace_id" => set_once(&mut filter.trace_id, text),
                "session_id" => set_once(&mut filter.session_id, text),
                "user_id" => set_once(&mut filter.user_id, text),
                // the filter's model is "model or requested model": wider than either
                "model" | "request_model" => set_once(&mut filter.model, text),
                "provider" => set_once(&mut filter.provider, text),
                "routing_alias" => set_once(&mut filter.routing_alias, text),
                "service_name" => set_once(&mut filter.service_name, text),
                "status" => set_once(
                    &mut filter.status,
                    text.as_deref().and_then(SpanStatus::parse),
                ),
                "source" => set_once(
                    &mut filter.source,
                    text.as_deref().and_then(SpanSource::parse),
                ),
                "kind" => match text.as_deref().and_then(SpanKind::parse) {
                    Some(kind) if filter.kinds.is_empty() => {
                        filter.kinds.push(kind);
                        true
                    }
                    _ => false,
                },
                _ => false,
            }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::logical_expr::{col, lit};

    fn ns(at: i64) -> Expr {
        lit(ScalarValue::TimestampNanosecond(
            Some(at),
            Some("UTC".into()),
        ))
    }

    #[test]
    fn time_bounds_intersect_and_strict_ones_move_by_one() {
        let mut filter = SpanFilter::for_project("p");
        assert!(narrow(&mut filter, &col("start_time").gt_eq(ns(100))));
        assert!(narrow(&mut filter, &col("start_time").gt(ns(150))));
        assert!(narrow(&mut filter, &ns(400).gt(col("start_time"))));
        assert!(narrow(&mut filter, &col("start_time").lt_eq(ns(500))));
        assert_eq!((filter.since, filter.until), (Some(151), Some(400)));
    }

    #[test]
    fn only_what_the_filter_can_hold_is_pushed() {
        let mut filter = SpanFilter::for_project("p");
        assert!(narrow(&mut filter, &col("session_id").eq(lit("s-1"))));
        assert!(narrow(&mut filter, &col("kind").eq(lit("llm"))));
        assert!(!narrow(&mut filter, &col("kind").eq(lit("no such kind"))));
        assert!(!narrow(&mut filter, &col("session_id").eq(lit("s-2"))));
        assert!(!narrow(&mut filter, &col("session_id").not_eq(lit("s-3"))));
        assert!(!narrow(&mut filter, &col("input_tokens").eq(lit(5i64))));
        assert!(!narrow(
            &mut filter,
            &col("start_time").gt_eq(lit("2026-01-01"))
        ));
        assert_eq!(filter.session_id.as_deref(), Some("s-1"));
        assert_eq!(filter.kinds, vec![SpanKind::Llm]);
        assert!(filter.since.is_none());
    }
}
