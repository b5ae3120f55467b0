//! `llmtrace reprice` and `llmtrace reconcile`: commands that drive a running server's cost
//! routes. `reconcile` fetches the provider's own usage and cost reports itself, so the
//! admin key stays with whoever runs it and never reaches the server.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use llmtrace_model::json::at;
use serde_json::{Value, json};

use crate::client::{agent, encode, unix_seconds};
use crate::cost_api::BilledRow;

#[derive(clap::Args)]
pub struct RepriceArgs {
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "LLMTRACE_SERVER")]
    server: String,
    /// Calls that started at or after this time (RFC 3339, unix seconds, or `7d` ago).
    #[arg(long)]
    since: String,
    /// Calls that started before this time.
    #[arg(long)]
    until: Option<String>,
    /// More search filters as name=value (project=…, model=…, provider=…).
    filters: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BillingProvider {
    Openai,
    Anthropic,
}

#[derive(clap::Args)]
pub struct ReconcileArgs {
    /// Whose bill: openai (organization usage + costs API) or anthropic (usage and cost
    /// report API).
    #[arg(long, value_enum)]
    provider: BillingProvider,
    /// First day (RFC 3339 or YYYY-MM-DD, UTC).
    #[arg(long)]
    since: String,
    /// Day after the last one (default: now).
    #[arg(long)]
    until: Option<String>,
    /// The provider's API base (default https://api.openai.com/v1 or
    /// https://api.anthropic.com/v1).
    #[arg(long)]
    base_url: Option<String>,
    /// Environment variable holding the admin key (default OPENAI_ADMIN_KEY or
    /// ANTHROPIC_ADMIN_KEY).
    #[arg(long)]
    key_env: Option<String>,
    /// The provider name the calls carry in llmtrace (default: openai or anthropic).
    #[arg(long)]
    span_provider: Option<String>,
    /// Project to compare.
    #[arg(long)]
    project: Option<String>,
    /// Flag differences above this fraction of the bill (and at least one cent).
    #[arg(long, default_value_t = 0.05)]
    tolerance: f64,
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "LLMTRACE_SERVER")]
    server: String,
    /// Print the comparison as JSON.
    #[arg(long)]
    json: bool,
}

/// Reads a JSON answer; any status other than 2xx is an error that quotes the body.
fn answer(mut response: ureq::http::Response<ureq::Body>, url: &str) -> Result<Value> {
    let status = response.status();
    let body = response
        .body_mut()
        .read_to_string()
        .with_context(|| format!("reading the answer of {url}"))?;
    if !status.is_success() {
        bail!("{url} answered {status}: {}", body.trim());
    }
    serde_json::from_str(&body).with_context(|| format!("{url} did not answer JSON"))
}

pub fn reprice(args: RepriceArgs) -> Result<()> {
    let mut url = format!(
        "{}/api/v1/reprice?since={}",
        args.server.trim_end_matches('/'),
        encode(&args.since)
    );
    if let Some(until) = &args.until {
        url.push_str(&format!("&until={}", encode(until)));
    }
    for filter in &args.filters {
        let Some((name, value)) = filter.split_once('=') else {
            bail!("filter {filter:?} is not name=value");
        };
        url.push_str(&format!("&{}={}", encode(name), encode(value)));
    }
    let response = agent(Duration::from_secs(120))
        .post(&url)
        .send_empty()
        .with_context(|| format!("cannot reach {}", args.server))?;
    let report = answer(response, &url)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn day_of_unix(seconds: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds.max(0) as u64);
    humantime::format_rfc3339_seconds(time).to_string()[..10].to_string()
}

fn rfc3339(seconds: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds.max(0) as u64);
    humantime::format_rfc3339_seconds(time).to_string()
}

/// Every bucket of a paged report (`data`, `has_more`, `next_page`).
fn buckets(agent: &ureq::Agent, url: &str, headers: &[(&str, String)]) -> Result<Vec<Value>> {
    let mut all = Vec::new();
    let mut page: Option<String> = None;
    for _ in 0..10_000 {
        let paged = match &page {
            Some(token) => format!("{url}&page={}", encode(token)),
            None => url.to_string(),
        };
        let mut request = agent.get(&paged);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = request
            .call()
            .with_context(|| format!("cannot reach {paged}"))?;
        let body = answer(response, &paged)?;
        let Some(data) = body.get("data").and_then(Value::as_array) else {
            bail!("{paged} answered without a data list");
        };
        all.extend(data.iter().cloned());
        match (
            body.get("has_more").and_then(Value::as_bool),
            body.get("next_page").and_then(Value::as_str),
        ) {
            (Some(true), Some(next)) => page = Some(next.to_string()),
            _ => return Ok(all),
        }
    }
    bail!("{url}: more than 10000 pages")
}

fn int(value: &Value, pointer: &str) -> i64 {
    at(value, pointer).and_then(Value::as_i64).unwrap_or(0)
}

#[derive(Default)]
struct Bill {
    rows: BTreeMap<(String, String), BilledRow>,
}

impl Bill {
    fn row(&mut self, day: String, model: &str) -> &mut BilledRow {
        self.rows
            .entry((day.clone(), model.to_string()))
            .or_insert_with(|| BilledRow {
                day,
                model: model.to_string(),
                requests: None,
                input_tokens: None,
                cached_input_tokens: None,
                output_tokens: None,
                cost_usd: None,
            })
    }

    fn add_usage(
        &mut self,
        day: String,
        model: &str,
        requests: i64,
        input: i64,
        cached: i64,
        output: i64,
    ) {
        let row = self.row(day, model);
        row.requests = Some(row.requests.unwrap_or(0) + requests);
        row.input_tokens = Some(row.input_tokens.unwrap_or(0) + input);
        row.cached_input_tokens = Some(row.cached_input_tokens.unwrap_or(0) + cached);
        row.output_tokens = Some(row.output_tokens.unwrap_or(0) + output);
    }

    fn add_cost(&mut self, day: String, model: &str, usd: f64) {
        let row = self.row(day, model);
        row.cost_usd = Some(row.cost_usd.unwrap_or(0.0) + usd);
    }
}

/// OpenAI: `/organization/usage/{completions,embeddings}` by model and
/// `/organization/costs` by line item (`"<model>, input"` → model), daily.
fn openai_bill(agent: &ureq::Agent, base: &str, key: &str, start: i64, end: i64) -> Result<Bill> {
    let headers = [("authorization", format!("Bearer {key}"))];
    let mut bill = Bill::default();
    for kind in ["completions", "embeddings"] {
        let url = format!(
            "{base}/organization/usage/{kind}?start_time={start}&end_time={end}&bucket_width=1d&group_by=model&limit=31"
        );
        for bucket in buckets(agent, &url, &headers)? {
            let day = day_of_unix(int(&bucket, "/start_time"));
            for result in bucket
                .get("results")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(model) = result.get("model").and_then(Value::as_str) else {
                    continue;
                };
                bill.add_usage(
                    day.clone(),
                    model,
                    int(result, "/num_model_requests"),
                    int(result, "/input_tokens"),
                    int(result, "/input_cached_tokens"),
                    int(result, "/output_tokens"),
                );
            }
        }
    }
    let url = format!(
        "{base}/organization/costs?start_time={start}&end_time={end}&bucket_width=1d&group_by=line_item&limit=31"
    );
    for bucket in buckets(agent, &url, &headers)? {
        let day = day_of_unix(int(&bucket, "/start_time"));
        for result in bucket
            .get("results")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(item) = result.get("line_item").and_then(Value::as_str) else {
                continue;
            };
            let model = item.split(", ").next().unwrap_or(item);
            let usd = at(result, "/amount/value")
                .and_then(|v| v.as_f64().or_else(|| v.as_str()?.parse().ok()))
                .unwrap_or(0.0);
            bill.add_cost(day.clone(), model, usd);
        }
    }
    Ok(bill)
}

/// Anthropic: `/organizations/usage_report/messages` by model and
/// `/organizations/cost_report` by description (amounts are decimal strings in cents).
fn anthropic_bill(
    agent: &ureq::Agent,
    base: &str,
    key: &str,
    start: i64,
    end: i64,
) -> Result<Bill> {
    let headers = [
        ("x-api-key", key.to_string()),
        ("anthropic-version", "2023-06-01".to_string()),
    ];
    let (from, to) = (encode(&rfc3339(start)), encode(&rfc3339(end)));
    let mut bill = Bill::default();
    let url = format!(
        "{base}/organizations/usage_report/messages?starting_at={from}&ending_at={to}&bucket_width=1d&group_by%5B%5D=model&limit=31"
    );
    for bucket in buckets(agent, &url, &headers)? {
        let Some(day) = bucket.get("starting_at").and_then(Value::as_str) else {
            continue;
        };
        let day = day.get(..10).unwrap_or(day).to_string();
        for result in bucket
            .get("results")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(model) = result.get("model").and_then(Value::as_str) else {
                continue;
            };
            let cached = int(result, "/cache_read_input_tokens");
            // llmtrace counts input with cache reads and writes included
            let input = int(result, "/uncached_input_tokens")
                + cached
                + int(result, "/cache_creation/ephemeral_5m_input_tokens")
                + int(result, "/cache_creation/ephemeral_1h_input_tokens");
            bill.add_usage(
                day.clone(),
                model,
                0,
                input,
                cached,
                int(result, "/output_tokens"),
            );
            // the report has no request count
            bill.row(day.clone(), model).requests = None;
        }
    }
    let url = format!(
        "{base}/organizations/cost_report?starting_at={from}&ending_at={to}&bucket_width=1d&group_by%5B%5D=description&limit=31"
    );
    for bucket in buckets(agent, &url, &headers)? {
        let Some(day) = bucket.get("starting_at").and_then(Value::as_str) else {
            continue;
        };
        let day = day.get(..10).unwrap_or(day).to_string();
        for result in bucket
            .get("results")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(model) = result.get("model").and_then(Value::as_str) else {
                continue;
            };
            let cents = result
                .get("amount")
                .and_then(|v| v.as_f64().or_else(|| v.as_str()?.parse().ok()))
                .unwrap_or(0.0);
            bill.add_cost(day.clone(), model, cents / 100.0);
        }
    }
    Ok(bill)
}

pub fn reconcile(args: ReconcileArgs) -> Result<()> {
    let (name, default_base, default_key) = match args.provider {
        BillingProvider::Openai => ("openai", "https://api.openai.com/v1", "OPENAI_ADMIN_KEY"),
        BillingProvider::Anthropic => (
            "anthropic",
            "https://api.anthropic.com/v1",
            "ANTHROPIC_ADMIN_KEY",
        ),
    };
    let base = args
        .base_url
        .as_deref()
        .unwrap_or(default_base)
        .trim_end_matches('/');
    let key_env = args.key_env.as_deref().unwrap_or(default_key);
    let key = std::env::var(key_env).with_context(|| {
        format!("set {key_env} to the provider's admin key (or pass --key-env)")
    })?;
    let start = unix_seconds(&args.since)?;
    let end = match &args.until {
        Some(until) => unix_seconds(until)?,
        None => llmtrace_store::now_ns() / 1_000_000_000,
    };
    if start >= end {
        bail!("--since must be before --until");
    }
    let agent = agent(Duration::from_secs(120));
    let bill = match args.provider {
        BillingProvider::Openai => openai_bill(&agent, base, &key, start, end)?,
        BillingProvider::Anthropic => anthropic_bill(&agent, base, &key, start, end)?,
    };
    let span_provider = args.span_provider.as_deref().unwrap_or(name);
    let server = args.server.trim_end_matches('/');
    let rows: Vec<BilledRow> = bill.rows.into_values().collect();
    let imported = rows.len();
    let upload = json!({"provider": span_provider, "project": args.project, "rows": rows});
    let url = format!("{server}/api/v1/billing");
    let response = agent
        .post(&url)
        .send_json(&upload)
        .with_context(|| format!("cannot reach {server}"))?;
    answer(response, &url)?;
    let mut url = format!(
        "{server}/api/v1/reconciliation?provider={}&since={start}&until={end}&tolerance={}",
        encode(span_provider),
        args.tolerance
    );
    if let Some(project) = &args.project {
        url.push_str(&format!("&project={}", encode(project)));
    }
    let response = agent
        .get(&url)
        .call()
        .with_context(|| format!("cannot reach {server}"))?;
    let report = answer(response, &url)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("imported {imported} day×model rows from {name}");
    println!(
        "{:<10}  {:<32} {:>12} {:>12} {:>10}  flag",
        "day", "model", "computed $", "billed $", "diff $"
    );
    let money = |v: &Value| v.as_f64().map_or("-".to_string(), |f| format!("{f:.4}"));
    for row in report["data"].as_array().into_iter().flatten() {
        println!(
            "{:<10}  {:<32} {:>12} {:>12} {:>10}  {}",
            row["day"].as_str().unwrap_or(""),
            row["model"].as_str().unwrap_or(""),
            money(&row["computed"]["cost_usd"]),
            money(&row["billed"]["cost_usd"]),
            money(&row["difference_usd"]),
            if row["flagged"].as_bool() == Some(true) {
                "DIFFERS"
            } else {
                ""
            },
        );
    }
    let totals = &report["totals"];
    println!(
        "total: computed ${} billed ${} difference ${}; {} rows flagged",
        money(&totals["computed_usd"]),
        money(&totals["billed_usd"]),
        money(&totals["difference_usd"]),
        totals["flagged"]
    );
    Ok(())
}
