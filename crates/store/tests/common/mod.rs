//! What the store's integration tests share.
#![allow(dead_code)]

use llmtrace_model::AggregateRow;

/// Counts and token sums must be exact. Sums of floats depend on the order rows are
/// visited in (compared to 1e-9); percentiles come from sketches, within 1% of the exact
/// nearest-rank value.
pub fn assert_aggregates_agree(got: &[AggregateRow], exact: &[AggregateRow], what: &str) {
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
    let within = |a: f64, b: f64| (a - b).abs() <= 0.01 * b.abs() + 1e-6;
    let key = |row: &AggregateRow| {
        (
            row.bucket_start,
            row.group.clone(),
            row.count,
            row.error_count,
            row.input_tokens,
            row.output_tokens,
            row.total_tokens,
            row.first_start_time,
            row.last_end_time,
        )
    };
    let got_keys: Vec<_> = got.iter().map(key).collect();
    let exact_keys: Vec<_> = exact.iter().map(key).collect();
    assert_eq!(got_keys, exact_keys, "{what}");
    for (got, exact) in got.iter().zip(exact) {
        assert!(
            close(got.total_cost_usd, exact.total_cost_usd),
            "{what}: cost {got:?} {exact:?}"
        );
        assert!(
            close(got.latency_avg_ms, exact.latency_avg_ms),
            "{what}: avg {got:?} {exact:?}"
        );
        assert!(
            close(got.error_rate, exact.error_rate),
            "{what}: error rate"
        );
        for (a, b) in [
            (got.latency_p50_ms, exact.latency_p50_ms),
            (got.latency_p90_ms, exact.latency_p90_ms),
            (got.latency_p95_ms, exact.latency_p95_ms),
            (got.latency_p99_ms, exact.latency_p99_ms),
        ] {
            assert!(within(a, b), "{what}: latency percentile {got:?} {exact:?}");
        }
        for (a, b) in [
            (got.ttft_p50_ms, exact.ttft_p50_ms),
            (got.ttft_p95_ms, exact.ttft_p95_ms),
        ] {
            match (a, b) {
                (Some(a), Some(b)) => assert!(within(a, b), "{what}: ttft {got:?} {exact:?}"),
                (a, b) => assert_eq!(a, b, "{what}: ttft"),
            }
        }
    }
}

/// Files of `data_dir/wal` whose names end in `suffix`, sorted.
pub fn wal_files(data_dir: &std::path::Path, suffix: &str) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(data_dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    files.sort();
    files
}
