//! Costs and tokens: the shipped price catalogue plus config overrides, model-name
//! normalization, cost per call at ingest, and token estimates where a source reported none.
//!
//! Every ingest path stores spans through [`Priced`], so a span is priced exactly once per
//! version, whichever door it came in by (docs/COST.md).

pub mod catalogue;
pub mod estimate;
pub mod normalize;
pub mod price;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use llmtrace_model::{AppendLayer, Span, Store};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use catalogue::{Catalogue, ModelPrice, PriceList, Tier};
pub use price::{Cost, Usage};

/// The attribute that holds a span's cost breakdown and where its cost came from.
pub const COST_ATTRIBUTE: &str = "llmtrace.cost";

/// The `[pricing]` config table: overrides reloaded without restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PricingConfig {
    /// Custom, fine-tuned and self-hosted models, or replacements for catalogue prices;
    /// an entry with `project` applies to that project only.
    pub models: Vec<ModelPrice>,
    /// Private model names (Azure deployments, proxies' aliases) → catalogue names.
    pub deployments: BTreeMap<String, String>,
    /// Estimate tokens for model calls that report none.
    pub estimate_tokens: bool,
}

impl Default for PricingConfig {
    fn default() -> Self {
        PricingConfig {
            models: Vec::new(),
            deployments: BTreeMap::new(),
            estimate_tokens: true,
        }
    }
}

/// What the pricer has done since start (exported on `/metrics`).
#[derive(Debug, Default)]
pub struct Stats {
    pub priced: AtomicU64,
    pub unpriced: AtomicU64,
    pub reported: AtomicU64,
    pub estimated: AtomicU64,
}

struct Overrides {
    prices: PriceList,
    deployments: BTreeMap<String, String>,
    estimate_tokens: bool,
    cache: RwLock<HashMap<u64, Vec<Remembered>>>,
}

impl Overrides {
    fn new(config: &PricingConfig) -> Result<Overrides, String> {
        Ok(Overrides {
            prices: PriceList::new(config.models.clone())
                .map_err(|e| format!("[pricing] models: {e}"))?,
            deployments: config
                .deployments
                .iter()
                .map(|(from, to)| (normalize::clean(from), normalize::clean(to)))
                .collect(),
            estimate_tokens: config.estimate_tokens,
            cache: RwLock::new(HashMap::new()),
        })
    }
}

/// Where a price came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Catalogue,
    Config,
}

/// A price found for a model name.
#[derive(Debug, Clone, Serialize)]
pub struct Resolved {
    pub price: Arc<ModelPrice>,
    pub origin: Origin,
    /// `pricing_version` of spans priced with it.
    pub version: Arc<str>,
}

/// One remembered resolution (the key's strings, to rule out hash collisions).
struct Remembered {
    project: String,
    provider: Option<String>,
    model: String,
    resolved: Option<Resolved>,
}

/// Resolutions remembered per overrides generation; past this the memory starts over.
const MAX_REMEMBERED: usize = 10_000;

/// The catalogue, the current overrides and counters. Cheap to share; `reload` swaps the
/// overrides atomically.
pub struct Pricer {
    catalogue: Catalogue,
    overrides: RwLock<Arc<Overrides>>,
    pub stats: Stats,
    warned: Mutex<HashSet<String>>,
    tokens: estimate::TokenCache,
}

/// Unknown model names are warned about once each, up to this many names.
const MAX_WARNED: usize = 10_000;

fn provider_family(provider: &str) -> &str {
    match provider {
        "azure" | "azure_openai" | "azure.ai.openai" | "openai" => "openai",
        "gcp.gemini" | "gcp.vertex_ai" | "vertex_ai" | "gemini" | "google" | "vertexai" => "google",
        "aws.bedrock" | "bedrock" | "anthropic" => "anthropic",
        "mistral_ai" | "mistralai" | "mistral" => "mistral",
        "x_ai" | "xai" | "grok" => "xai",
        other => other,
    }
}

impl Pricer {
    pub fn new(config: &PricingConfig) -> Result<Pricer, String> {
        Ok(Pricer {
            catalogue: Catalogue::shipped()?,
            overrides: RwLock::new(Arc::new(Overrides::new(config)?)),
            stats: Stats::default(),
            warned: Mutex::new(HashSet::new()),
            tokens: estimate::TokenCache::default(),
        })
    }

    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    /// Replaces the overrides; on error the previous ones stay in force.
    pub fn reload(&self, config: &PricingConfig) -> Result<(), String> {
        let next = Arc::new(Overrides::new(config)?);
        match self.overrides.write() {
            Ok(mut current) => *current = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
        Ok(())
    }

    fn current(&self) -> Arc<Overrides> {
        match self.overrides.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The price for `model` as called through `provider` in `project`: project
    /// overrides, then global overrides, then the catalogue, trying each candidate name
    /// (normalize.rs) in turn; among same-named entries the caller's provider wins.
    pub fn resolve(&self, project: &str, provider: Option<&str>, model: &str) -> Option<Resolved> {
        self.resolve_in(&self.current(), project, provider, model)
    }

    /// `resolve`, remembered per (project, provider, model) until the overrides change:
    /// a busy ingest path sees the same few names again and again.
    fn resolve_in(
        &self,
        overrides: &Overrides,
        project: &str,
        provider: Option<&str>,
        model: &str,
    ) -> Option<Resolved> {
        let key = {
            let mut hasher = std::hash::DefaultHasher::new();
            (project, provider, model).hash(&mut hasher);
            hasher.finish()
        };
        let same = |entry: &Remembered| {
            entry.project == project
                && entry.provider.as_deref() == provider
                && entry.model == model
        };
        if let Ok(cache) = overrides.cache.read()
            && let Some(entry) = cache.get(&key).into_iter().flatten().find(|e| same(e))
        {
            return entry.resolved.clone();
        }
        let resolved = self.lookup(overrides, project, provider, model);
        if let Ok(mut cache) = overrides.cache.write() {
            if cache.len() >= MAX_REMEMBERED {
                cache.clear();
            }
            cache.entry(key).or_default().push(Remembered {
                project: project.to_string(),
                provider: provider.map(str::to_string),
                model: model.to_string(),
                resolved: resolved.clone(),
            });
        }
        resolved
    }

    fn lookup(
        &self,
        overrides: &Overrides,
        project: &str,
        provider: Option<&str>,
        model: &str,
    ) -> Option<Resolved> {
        let family = provider.map(|p| provider_family(&normalize::clean(p)).to_string());
        let pick = |entries: Vec<&Arc<ModelPrice>>| -> Option<Arc<ModelPrice>> {
            entries
                .iter()
                .find(|entry| {
                    family.is_some()
                        && entry.provider.as_deref().map(normalize::clean).as_deref()
                            == family.as_deref()
                })
                .or(entries.first())
                .map(|entry| Arc::clone(entry))
        };
        for name in normalize::candidates(model, &overrides.deployments) {
            let configured: Vec<&Arc<ModelPrice>> = overrides.prices.named(&name).collect();
            let for_project = configured
                .iter()
                .copied()
                .filter(|entry| entry.project.as_deref() == Some(project))
                .collect();
            let global = configured
                .iter()
                .copied()
                .filter(|entry| entry.project.is_none())
                .collect();
            for entries in [for_project, global] {
                if let Some(price) = pick(entries) {
                    return Some(Resolved {
                        price,
                        origin: Origin::Config,
                        version: Arc::from("config"),
                    });
                }
            }
            if let Some(price) = pick(self.catalogue.prices.named(&name).collect()) {
                return Some(Resolved {
                    price,
                    origin: Origin::Catalogue,
                    version: Arc::from(self.catalogue.version.as_str()),
                });
            }
        }
        None
    }

    fn warn_unpriced(&self, model: &str, reason: &str) {
        self.stats.unpriced.fetch_add(1, Ordering::Relaxed);
        let Ok(mut warned) = self.warned.lock() else {
            return;
        };
        if warned.len() < MAX_WARNED && warned.insert(model.to_string()) {
            tracing::warn!(
                model,
                reason,
                "no price: cost left empty (add it under [pricing] in the config)"
            );
        }
    }

    /// Fills in tokens (estimated when absent) and cost for one span, as docs/COST.md
    /// describes. Spans other than model calls are left alone.
    pub fn price(&self, span: &mut Span) {
        if !span.is_model_call() {
            return;
        }
        match Reported::of(span) {
            Some(Reported::Marked) => return,
            Some(Reported::Sent(total)) => {
                self.stats.reported.fetch_add(1, Ordering::Relaxed);
                span.total_cost_usd = Some(total);
                set_cost_attribute(span, json!({"source": "reported"}));
                return;
            }
            None => {}
        }
        let overrides = self.current();
        let model = model_name(span).map(str::to_string);
        if span.input_tokens.is_none() && span.output_tokens.is_none() && overrides.estimate_tokens
        {
            self.estimate(span, model.as_deref());
        }
        span.input_cost_usd = None;
        span.output_cost_usd = None;
        span.total_cost_usd = None;
        span.pricing_version = None;
        if span.input_tokens.is_none() && span.output_tokens.is_none() {
            remove_cost_attribute(span);
            return;
        }
        let Some(model) = model else {
            self.warn_unpriced("", "the span names no model");
            set_cost_attribute(
                span,
                json!({"source": "unpriced", "reason": "no model name"}),
            );
            return;
        };
        let Some(resolved) =
            self.resolve_in(&overrides, &span.project, span.provider.as_deref(), &model)
        else {
            self.warn_unpriced(&model, "not in the catalogue or the config");
            set_cost_attribute(
                span,
                json!({"source": "unpriced", "model": model, "reason": "no price for this model"}),
            );
            return;
        };
        match price::cost(&resolved.price, &Usage::of(span)) {
            Ok(cost) => {
                self.stats.priced.fetch_add(1, Ordering::Relaxed);
                span.input_cost_usd = Some(cost.input_side());
                span.output_cost_usd = Some(cost.output_side());
                span.total_cost_usd = Some(cost.total());
                span.pricing_version = Some(resolved.version.to_string());
                let mut detail = serde_json::to_value(cost).unwrap_or(Value::Null);
                if let Value::Object(fields) = &mut detail {
                    fields.insert("source".into(), "computed".into());
                    fields.insert("model".into(), resolved.price.name.clone().into());
                    fields.insert("origin".into(), json!(resolved.origin));
                }
                set_cost_attribute(span, detail);
            }
            Err(reason) => {
                self.warn_unpriced(&model, &reason);
                set_cost_attribute(
                    span,
                    json!({"source": "unpriced", "model": model, "reason": reason}),
                );
            }
        }
    }

    /// The total cost `price` would give `span`, without changing the span or counting it:
    /// the gateway's cost header, read on the request path from the answer's usage (the
    /// recorded span is priced again, and counted, by `Priced`). Building the breakdown
    /// attribute there took about 5% of the proxy's CPU at 400 connections. `None` where
    /// `price` would leave no total (no model, no price) and where it would have to
    /// estimate the tokens: the header is sent only for answers that report their usage.
    pub fn total_cost(&self, span: &Span) -> Option<f64> {
        if !span.is_model_call() {
            return None;
        }
        match Reported::of(span) {
            Some(Reported::Marked) => return span.total_cost_usd,
            Some(Reported::Sent(total)) => return Some(total),
            None => {}
        }
        if span.input_tokens.is_none() && span.output_tokens.is_none() {
            return None;
        }
        let model = model_name(span)?;
        let overrides = self.current();
        let resolved =
            self.resolve_in(&overrides, &span.project, span.provider.as_deref(), model)?;
        price::cost(&resolved.price, &Usage::of(span))
            .ok()
            .map(|cost| cost.total())
    }

    fn estimate(&self, span: &mut Span, model: Option<&str>) {
        let has_input = !span.input.is_null() || !span.input_text.is_empty();
        let has_output = !span.output_text.is_empty();
        if !has_input && !has_output {
            return;
        }
        let counter = estimate::Counter::for_model(model.unwrap_or("")).cached(&self.tokens);
        let input = counter.input(&span.input, &span.input_text);
        let output = if span.kind == llmtrace_model::SpanKind::Embedding {
            0
        } else {
            counter.text(&span.output_text)
        };
        span.input_tokens = Some(input);
        span.output_tokens = Some(output);
        span.total_tokens = Some(input + output);
        span.usage_source = Some("estimated".into());
        let method = if counter.exact {
            counter.encoding.to_string()
        } else {
            format!("approximate:{}", counter.encoding)
        };
        set_attribute(span, "llmtrace.usage.estimator", method.into());
        self.stats.estimated.fetch_add(1, Ordering::Relaxed);
    }
}

/// A cost the span's source reported, which pricing keeps rather than computes.
enum Reported {
    /// Marked as reported by an earlier pricing (a re-sent or re-priced span).
    Marked,
    /// Sent with the span and not yet marked; the total (the sides' sum if none was sent).
    Sent(f64),
}

impl Reported {
    fn of(span: &Span) -> Option<Reported> {
        let marker = span
            .attributes
            .get(COST_ATTRIBUTE)
            .and_then(|cost| cost.get("source"))
            .and_then(Value::as_str);
        match marker {
            Some("reported") => Some(Reported::Marked),
            Some(_) => None,
            None => {
                let sent = span.total_cost_usd.is_some()
                    || span.input_cost_usd.is_some()
                    || span.output_cost_usd.is_some();
                sent.then(|| {
                    Reported::Sent(span.total_cost_usd.unwrap_or_else(|| {
                        span.input_cost_usd.unwrap_or(0.0) + span.output_cost_usd.unwrap_or(0.0)
                    }))
                })
            }
        }
    }
}

/// The model a span is priced as: the answering model, else the requested one; none when
/// blank.
fn model_name(span: &Span) -> Option<&str> {
    span.model
        .as_deref()
        .or(span.request_model.as_deref())
        .filter(|m| !m.trim().is_empty())
}

fn set_attribute(span: &mut Span, key: &str, value: Value) {
    if let Value::Object(map) = &mut span.attributes {
        map.insert(key.into(), value);
    } else {
        span.attributes = json!({ key: value });
    }
}

fn set_cost_attribute(span: &mut Span, value: Value) {
    set_attribute(span, COST_ATTRIBUTE, value);
}

fn remove_cost_attribute(span: &mut Span) {
    if let Value::Object(map) = &mut span.attributes {
        map.remove(COST_ATTRIBUTE);
    }
}

/// The layer that prices every span before it is stored (put in front of a store with
/// `llmtrace_model::Layered`; reads pass through).
pub struct Priced {
    pub pricer: Arc<Pricer>,
}

impl AppendLayer for Priced {
    fn append_iter(
        &self,
        spans: &mut dyn Iterator<Item = Span>,
        below: &dyn Store,
    ) -> llmtrace_model::Result<()> {
        below.append_iter(&mut spans.map(|mut span| {
            self.pricer.price(&mut span);
            span
        }))
    }
}

#[cfg(test)]
mod tests {
    use llmtrace_model::SpanKind;

    use super::*;

    fn call(project: &str, model: &str, input: i64, output: i64) -> Span {
        Span {
            project: project.into(),
            kind: SpanKind::Llm,
            model: Some(model.into()),
            input_tokens: Some(input),
            output_tokens: Some(output),
            ..Default::default()
        }
    }

    fn config(text: &str) -> PricingConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn total_cost_is_what_price_sets_and_counts_nothing() {
        let pricer = Pricer::new(&config("[[models]]\nname='m'\ninput=1.0\noutput=2.0\n")).unwrap();
        let reported = Span {
            input_cost_usd: Some(0.5),
            output_cost_usd: Some(0.25),
            ..call("p", "m", 10, 10)
        };
        let marked = Span {
            total_cost_usd: Some(3.0),
            attributes: serde_json::json!({COST_ATTRIBUTE: {"source": "reported"}}),
            ..call("p", "m", 10, 10)
        };
        let cached = Span {
            cached_input_tokens: Some(400),
            provider: Some("openai".into()),
            ..call("p", "gpt-4o-mini", 1000, 50)
        };
        let blank_model = Span {
            model: Some(" ".into()),
            request_model: Some("m".into()),
            ..call("p", "m", 10, 10)
        };
        let spans = [
            call("p", "m", 1_000_000, 500_000),
            call("p", "gpt-4o", 1234, 56),
            cached,
            reported,
            marked,
            blank_model,
            call("p", "no-such-model", 10, 10),
            Span {
                kind: SpanKind::Tool,
                ..call("p", "m", 10, 10)
            },
        ];
        for span in spans {
            let total = pricer.total_cost(&span);
            let mut priced = span.clone();
            let before = pricer.stats.priced.load(Ordering::Relaxed);
            pricer.price(&mut priced);
            assert_eq!(total, priced.total_cost_usd, "{span:?}");
            let counted = pricer.stats.priced.load(Ordering::Relaxed) - before;
            let again = pricer.total_cost(&span);
            assert_eq!(again, total);
            assert_eq!(
                pricer.stats.priced.load(Ordering::Relaxed),
                before + counted,
                "total_cost counts nothing"
            );
        }
        assert!(pricer.total_cost(&call("p", "m", 1_000_000, 0)).unwrap() > 0.99);
    }

    #[test]
    fn overrides_apply_per_project_then_globally_then_the_catalogue() {
        let pricer = Pricer::new(&config(
            r#"
            [deployments]
            "Prod-Chat" = "gpt-4o-mini"
            [[models]]
            name = "my-llama"
            input = 1.0
            output = 2.0
            [[models]]
            name = "my-llama"
            project = "team-a"
            input = 10.0
            output = 20.0
            [[models]]
            name = "gpt-4o"
            input = 1.0
            output = 1.0
            "#,
        ))
        .unwrap();
        let total = |project: &str, model: &str| {
            let mut span = call(project, model, 1_000_000, 1_000_000);
            pricer.price(&mut span);
            (span.total_cost_usd, span.pricing_version)
        };
        assert_eq!(
            total("team-a", "my-llama"),
            (Some(30.0), Some("config".into()))
        );
        assert_eq!(
            total("team-b", "my-llama"),
            (Some(3.0), Some("config".into()))
        );
        assert_eq!(total("team-b", "gpt-4o-2024-08-06").0, Some(2.0));
        // a deployment name priced as the model it maps to
        assert_eq!(total("x", "prod-chat").0, Some(0.75));
        assert_eq!(total("x", "prod-chat").1.as_deref(), Some("2026-12-01"));
    }

    #[test]
    fn reload_swaps_prices_and_a_bad_config_keeps_the_old_ones() {
        let pricer = Pricer::new(&config("[[models]]\nname='m'\ninput=1.0\noutput=1.0\n")).unwrap();
        pricer
            .reload(&config("[[models]]\nname='m'\ninput=2.0\noutput=2.0\n"))
            .unwrap();
        let mut span = call("p", "m", 1_000_000, 0);
        pricer.price(&mut span);
        assert_eq!(span.total_cost_usd, Some(2.0));
        let err = pricer
            .reload(&config("[[models]]\nname='m'\ninput=3.0\n"))
            .unwrap_err();
        assert!(err.contains("output"), "{err}");
        pricer.price(&mut span);
        assert_eq!(span.total_cost_usd, Some(2.0));
    }

    #[test]
    fn a_cost_the_source_reported_is_kept_and_marked() {
        let pricer = Pricer::new(&PricingConfig::default()).unwrap();
        let mut span = call("p", "gpt-4o", 1000, 1000);
        span.input_cost_usd = Some(0.5);
        span.output_cost_usd = Some(0.25);
        pricer.price(&mut span);
        assert_eq!(span.total_cost_usd, Some(0.75));
        assert_eq!(span.attributes[COST_ATTRIBUTE]["source"], "reported");
        // pricing the stored version again changes nothing
        let before = span.clone();
        pricer.price(&mut span);
        assert_eq!(span, before);
    }

    #[test]
    fn a_computed_cost_follows_the_tokens_of_a_new_version() {
        let pricer = Pricer::new(&PricingConfig::default()).unwrap();
        let mut span = call("p", "gpt-4o", 1_000_000, 0);
        pricer.price(&mut span);
        assert_eq!(span.total_cost_usd, Some(2.5));
        span.input_tokens = Some(2_000_000);
        pricer.price(&mut span);
        assert_eq!(span.total_cost_usd, Some(5.0));
    }

    #[test]
    fn missing_usage_is_estimated_from_the_content_and_marked() {
        let pricer = Pricer::new(&PricingConfig::default()).unwrap();
        let mut span = Span {
            project: "p".into(),
            kind: SpanKind::Llm,
            model: Some("gpt-4o".into()),
            input: json!([{"role": "user", "content": [{"type": "text", "text": "Say hello"}]}]),
            output_text: "Hello there!".into(),
            ..Default::default()
        };
        pricer.price(&mut span);
        let counter = estimate::Counter::for_model("gpt-4o");
        let input = 3 + 3 + counter.text("user") + counter.text("Say hello");
        assert_eq!(span.input_tokens, Some(input));
        assert_eq!(span.output_tokens, Some(counter.text("Hello there!")));
        assert_eq!(span.usage_source.as_deref(), Some("estimated"));
        assert_eq!(span.attributes["llmtrace.usage.estimator"], "o200k_base");
        assert!(span.total_cost_usd.unwrap() > 0.0);

        let mut claude = span.clone();
        claude.model = Some("claude-haiku-4-5".into());
        claude.input_tokens = None;
        claude.output_tokens = None;
        pricer.price(&mut claude);
        assert_eq!(
            claude.attributes["llmtrace.usage.estimator"],
            "approximate:o200k_base"
        );
        assert_eq!(pricer.stats.estimated.load(Ordering::Relaxed), 2);

        // with estimation off, nothing is made up
        let off = Pricer::new(&config("estimate_tokens = false")).unwrap();
        let mut none = span.clone();
        none.input_tokens = None;
        none.output_tokens = None;
        none.attributes = Value::Null;
        (
            none.input_cost_usd,
            none.output_cost_usd,
            none.total_cost_usd,
        ) = (None, None, None);
        off.price(&mut none);
        assert_eq!((none.input_tokens, none.total_cost_usd), (None, None));
    }
}
