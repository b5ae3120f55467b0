//! Cost routes: what a model costs, repricing stored calls after a price change, and the
//! providers' own bills set against what llmtrace computed (docs/COST.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use llmtrace_cost::{Pricer, normalize};
use llmtrace_model::{
    AggregateQuery, Dimension, Error, SpanKind, SpanQuery, Store, query::MAX_PAGE_LIMIT,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::http::{AppState, error_response, run_store};
use crate::params;

type Shared = std::sync::Arc<AppState>;

/// `GET /api/v1/pricing`: the catalogue, or with `model=` (and optionally `provider=`,
/// `project=`) the price that applies to that name.
pub async fn pricing(
    State(state): State<Shared>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let get = |key: &str| {
        pairs
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    };
    let catalogue = state.pricer.catalogue();
    let Some(model) = get("model") else {
        return Json(json!({
            "version": catalogue.version,
            "date": catalogue.date,
            "models": catalogue.prices.models,
        }))
        .into_response();
    };
    let project = get("project").unwrap_or(&state.default_project);
    match state.pricer.resolve(project, get("provider"), model) {
        Some(resolved) => Json(json!({
            "model": model,
            "price": resolved.price,
            "origin": resolved.origin,
            "pricing_version": resolved.version,
        }))
        .into_response(),
        None => error_response(&Error::NotFound(format!(
            "no price for model {model:?}: add it under [pricing] in the config"
        ))),
    }
}

/// What a reprice run did.
#[derive(Debug, Default, Serialize)]
pub struct RepriceReport {
    pub scanned: u64,
    pub repriced: u64,
    pub unchanged: u64,
    /// Costs the source reported: kept as they are.
    pub reported: u64,
    /// Calls whose model has no price.
    pub unpriced: u64,
}

/// Prices every model call the filter matches again and stores the versions whose cost
/// changed. Pages newest first; each page's changes are one append.
pub fn reprice(
    store: &dyn Store,
    pricer: &Pricer,
    mut query: SpanQuery,
) -> llmtrace_model::Result<RepriceReport> {
    query.filter.kinds = vec![SpanKind::Llm, SpanKind::Embedding];
    query.limit = MAX_PAGE_LIMIT;
    let mut report = RepriceReport::default();
    loop {
        let page = store.search(&query)?;
        let mut changed = Vec::new();
        for span in page.spans {
            report.scanned += 1;
            let mut next = span.clone();
            pricer.price(&mut next);
            match next.attributes[llmtrace_cost::COST_ATTRIBUTE]["source"].as_str() {
                Some("reported") => report.reported += 1,
                Some("unpriced") => report.unpriced += 1,
                _ => {}
            }
            if next == span {
                report.unchanged += 1;
            } else {
                report.repriced += 1;
                changed.push(next);
            }
        }
        if !changed.is_empty() {
            store.append(changed)?;
        }
        match page.next_cursor {
            Some(cursor) => query.cursor = Some(cursor),
            None => return Ok(report),
        }
    }
}

/// `POST /api/v1/reprice?since=…&until=…` (and any search filter).
pub async fn reprice_route(
    State(state): State<Shared>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let parsed = match params::parse(
        &pairs,
        &state.default_project,
        &[],
        llmtrace_store::now_ns(),
    ) {
        Ok(parsed) => parsed,
        Err(err) => return error_response(&err),
    };
    if parsed.filter.since.is_none() {
        return error_response(&Error::BadRequest(
            "reprice needs since= (and usually until=): the calls to price again".into(),
        ));
    }
    let pricer = state.pricer.clone();
    let query = SpanQuery::new(parsed.filter);
    match run_store(&state, move |store| reprice(store, &pricer, query)).await {
        Ok(report) => Json(report).into_response(),
        Err(err) => error_response(&err),
    }
}

/// One day × model of a provider's own usage and cost report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BilledRow {
    /// UTC day, `YYYY-MM-DD`.
    pub day: String,
    pub model: String,
    #[serde(default)]
    pub requests: Option<i64>,
    #[serde(default)]
    pub input_tokens: Option<i64>,
    #[serde(default)]
    pub cached_input_tokens: Option<i64>,
    #[serde(default)]
    pub output_tokens: Option<i64>,
    #[serde(default)]
    pub cost_usd: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BillingUpload {
    pub provider: String,
    #[serde(default)]
    pub project: Option<String>,
    pub rows: Vec<BilledRow>,
}

type BillKey = (String, String, String, String); // project, provider, day, model

/// Imported bills, kept in `<data_dir>/billing/reports.json` (small: days × models).
pub struct Billing {
    path: PathBuf,
    rows: Mutex<BTreeMap<BillKey, BilledRow>>,
}

#[derive(Serialize, Deserialize)]
struct StoredBill {
    project: String,
    provider: String,
    row: BilledRow,
}

impl Billing {
    pub fn open(data_dir: &Path) -> anyhow::Result<Billing> {
        let path = data_dir.join("billing").join("reports.json");
        let mut rows = BTreeMap::new();
        if path.exists() {
            let text = std::fs::read_to_string(&path)?;
            let stored: Vec<StoredBill> = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{} is unreadable: {e}", path.display()))?;
            for bill in stored {
                let key = (
                    bill.project,
                    bill.provider,
                    bill.row.day.clone(),
                    bill.row.model.clone(),
                );
                rows.insert(key, bill.row);
            }
        }
        Ok(Billing {
            path,
            rows: Mutex::new(rows),
        })
    }

    /// Replaces the rows of the same project, provider, day and model; durable on return.
    fn merge(&self, project: &str, provider: &str, rows: Vec<BilledRow>) -> std::io::Result<usize> {
        let mut all = self
            .rows
            .lock()
            .map_err(|_| std::io::Error::other("billing lock poisoned"))?;
        let count = rows.len();
        for row in rows {
            let key = (
                project.to_string(),
                provider.to_string(),
                row.day.clone(),
                row.model.clone(),
            );
            all.insert(key, row);
        }
        let stored: Vec<StoredBill> = all
            .iter()
            .map(|((project, provider, _, _), row)| StoredBill {
                project: project.clone(),
                provider: provider.clone(),
                row: row.clone(),
            })
            .collect();
        let text = serde_json::to_vec_pretty(&stored).map_err(std::io::Error::other)?;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        llmtrace_store::write_atomically(&self.path, &text)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(count)
    }

    fn rows(&self, project: &str, provider: &str) -> Vec<BilledRow> {
        self.rows
            .lock()
            .map(|all| {
                all.iter()
                    .filter(|((p, prov, _, _), _)| p == project && prov == provider)
                    .map(|(_, row)| row.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn valid_day(day: &str) -> bool {
    let b = day.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

/// `POST /api/v1/billing`: rows of a provider's usage/cost report (`llmtrace reconcile`
/// fetches and sends them).
pub async fn upload_billing(State(state): State<Shared>, body: axum::body::Bytes) -> Response {
    let upload: BillingUpload = match serde_json::from_slice(&body) {
        Ok(upload) => upload,
        Err(e) => {
            return error_response(&Error::BadRequest(format!(
                "billing upload is not {{provider, rows:[{{day, model, …}}]}}: {e}"
            )));
        }
    };
    if let Some(bad) = upload.rows.iter().find(|row| !valid_day(&row.day)) {
        return error_response(&Error::BadRequest(format!(
            "billing row day {:?} is not YYYY-MM-DD",
            bad.day
        )));
    }
    let project = upload
        .project
        .unwrap_or_else(|| state.default_project.clone());
    let billing = state.billing.clone();
    let provider = upload.provider;
    let rows = upload.rows;
    match tokio::task::spawn_blocking(move || billing.merge(&project, &provider, rows)).await {
        Ok(Ok(stored)) => Json(json!({"stored": stored})).into_response(),
        Ok(Err(e)) => error_response(&Error::Storage(format!("cannot save billing rows: {e}"))),
        Err(e) => error_response(&Error::Storage(e.to_string())),
    }
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
struct Side {
    requests: i64,
    input_tokens: i64,
    output_tokens: i64,
    cost_usd: f64,
}

fn day_of(ns: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns.max(0) as u64);
    humantime::format_rfc3339_seconds(time).to_string()[..10].to_string()
}

/// `GET /api/v1/reconciliation?provider=openai&since=…&until=…[&tolerance=0.05]`:
/// per day and model, llmtrace's computed tokens and cost beside the imported bill, with
/// the difference, flagged when it exceeds the tolerance (a fraction of the bill, and at
/// least one cent).
pub async fn reconciliation(
    State(state): State<Shared>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let parsed = match params::parse(
        &pairs,
        &state.default_project,
        &["tolerance"],
        llmtrace_store::now_ns(),
    ) {
        Ok(parsed) => parsed,
        Err(err) => return error_response(&err),
    };
    let Some(provider) = parsed.filter.provider.clone() else {
        return error_response(&Error::BadRequest(
            "reconciliation needs provider= (openai, anthropic, …)".into(),
        ));
    };
    let tolerance = match pairs.iter().find(|(name, _)| name == "tolerance") {
        None => 0.05,
        Some((_, value)) => match value.parse::<f64>() {
            Ok(t) if t.is_finite() && t >= 0.0 => t,
            _ => {
                return error_response(&Error::BadRequest(format!(
                    "tolerance={value:?} is not a fraction such as 0.05"
                )));
            }
        },
    };
    let project = parsed.filter.project.clone();
    let (since, until) = (parsed.filter.since, parsed.filter.until);
    let mut filter = parsed.filter;
    filter.kinds = vec![SpanKind::Llm, SpanKind::Embedding];
    let query = AggregateQuery {
        filter,
        bucket_seconds: Some(86_400),
        group_by: vec![Dimension::Model],
    };
    let computed = match run_store(&state, move |store| store.aggregate(&query)).await {
        Ok(rows) => rows,
        Err(err) => return error_response(&err),
    };
    let canonical = |model: &str| {
        state
            .pricer
            .resolve(&project, Some(&provider), model)
            .map(|resolved| resolved.price.name.clone())
            .unwrap_or_else(|| normalize::clean(model))
    };
    let mut table: BTreeMap<(String, String), (Option<Side>, Option<BilledRow>)> = BTreeMap::new();
    for row in computed {
        let (Some(start), Some(Some(model))) = (row.bucket_start, row.group.first().cloned())
        else {
            continue;
        };
        let entry = table.entry((day_of(start), canonical(&model))).or_default();
        let side = entry.0.get_or_insert_with(Side::default);
        side.requests += row.count as i64;
        side.input_tokens += row.input_tokens;
        side.output_tokens += row.output_tokens;
        side.cost_usd += row.total_cost_usd;
    }
    let in_window = |day: &str| {
        let start = params::parse_time("day", &format!("{day}T00:00:00Z"), 0).unwrap_or(0);
        since.is_none_or(|since| start + 86_400_000_000_000 > since)
            && until.is_none_or(|until| start < until)
    };
    for row in state.billing.rows(&project, &provider) {
        if !in_window(&row.day) {
            continue;
        }
        let key = (row.day.clone(), canonical(&row.model));
        let entry = table.entry(key).or_default();
        match &mut entry.1 {
            // two billed names for one catalogue model (a dated and an undated one)
            Some(known) => {
                let add = |a: Option<i64>, b: Option<i64>| match (a, b) {
                    (None, None) => None,
                    (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
                };
                known.requests = add(known.requests, row.requests);
                known.input_tokens = add(known.input_tokens, row.input_tokens);
                known.cached_input_tokens = add(known.cached_input_tokens, row.cached_input_tokens);
                known.output_tokens = add(known.output_tokens, row.output_tokens);
                known.cost_usd = match (known.cost_usd, row.cost_usd) {
                    (None, None) => None,
                    (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
                };
            }
            None => entry.1 = Some(row),
        }
    }
    let mut rows = Vec::new();
    let (mut computed_total, mut billed_total, mut flagged_count) = (0.0, 0.0, 0);
    for ((day, model), (computed, billed)) in table {
        let computed_cost = computed.map_or(0.0, |c| c.cost_usd);
        let billed_cost = billed.as_ref().and_then(|b| b.cost_usd);
        let difference = billed_cost.map(|billed| computed_cost - billed);
        let flagged = match billed_cost {
            Some(billed) => (computed_cost - billed).abs() > (tolerance * billed.abs()).max(0.01),
            // billed tokens but no cost in the report: compare the calls' existence only
            None => billed.is_some() != computed.is_some() && computed_cost > 0.01,
        };
        computed_total += computed_cost;
        billed_total += billed_cost.unwrap_or(0.0);
        flagged_count += u64::from(flagged);
        rows.push(json!({
            "day": day,
            "model": model,
            "computed": computed,
            "billed": billed,
            "difference_usd": difference,
            "difference_ratio": billed_cost.filter(|b| *b != 0.0).map(|b| (computed_cost - b) / b),
            "flagged": flagged,
        }));
    }
    Json(json!({
        "provider": provider,
        "tolerance": tolerance,
        "data": rows,
        "totals": {
            "computed_usd": computed_total,
            "billed_usd": billed_total,
            "difference_usd": computed_total - billed_total,
            "flagged": flagged_count,
        },
    }))
    .into_response()
}

/// The cost fields of one LLM-call row.
pub fn cost_fields(span: &llmtrace_model::Span) -> Value {
    json!({
        "input_cost_usd": span.input_cost_usd,
        "output_cost_usd": span.output_cost_usd,
        "total_cost_usd": span.total_cost_usd,
        "pricing_version": span.pricing_version,
        "breakdown": span.attributes.get(llmtrace_cost::COST_ATTRIBUTE),
    })
}
