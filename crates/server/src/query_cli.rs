//! `llmtrace query`: searches a running server and prints a table or JSON.

use anyhow::{Result, bail};
use serde_json::Value;

use crate::client::{encode, json_answer};

#[derive(clap::Args)]
pub struct QueryArgs {
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "LLMTRACE_SERVER")]
    server: String,
    /// Filters as name=value, e.g. model=gpt-4o-mini, q=refund, metadata.tier=gold, since=1h.
    filters: Vec<String>,
    /// Search every span kind (`/api/v1/spans`) instead of LLM calls only.
    #[arg(long)]
    spans: bool,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
    /// Maximum rows.
    #[arg(long, default_value_t = 20)]
    limit: usize,
}

pub fn run(args: QueryArgs) -> Result<()> {
    let path = if args.spans {
        "/api/v1/spans"
    } else {
        "/v1/traces"
    };
    let mut url = format!(
        "{}{}?limit={}",
        args.server.trim_end_matches('/'),
        path,
        args.limit
    );
    for filter in &args.filters {
        let Some((name, value)) = filter.split_once('=') else {
            bail!("filter {filter:?} is not name=value");
        };
        url.push_str(&format!("&{}={}", encode(name), encode(value)));
    }
    let body = json_answer(
        ureq::get(&url)
            .config()
            .http_status_as_error(false)
            .build()
            .call(),
        &args.server,
    )?;
    let rows = body
        .get("data")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if args.json {
        for row in &rows {
            println!("{row}");
        }
        return Ok(());
    }
    println!(
        "{:<30} {:<24} {:<10} {:>7} {:>7} {:>9} {:<7} INPUT",
        "TIME", "MODEL", "USER", "IN", "OUT", "MS", "STATUS"
    );
    for row in &rows {
        let field = |name: &str| match row.get(name) {
            Some(Value::String(text)) => text.clone(),
            Some(Value::Null) | None => "-".into(),
            Some(other) => other.to_string(),
        };
        let time = if args.spans {
            field("start_time")
        } else {
            field("timestamp")
        };
        let latency = row
            .get("latency_ms")
            .or_else(|| row.get("duration_ms"))
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        let input: String = field("input_text")
            .chars()
            .take(60)
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        println!(
            "{:<30} {:<24} {:<10} {:>7} {:>7} {:>9.1} {:<7} {}",
            time,
            field("model"),
            field("user_id"),
            field("input_tokens"),
            field("output_tokens"),
            latency,
            field("status"),
            input
        );
    }
    if let Some(cursor) = body.get("next_cursor").and_then(Value::as_str) {
        println!("(more: cursor={cursor})");
    }
    Ok(())
}
