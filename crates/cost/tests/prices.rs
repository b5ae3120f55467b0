//! Cost per call for models of every catalogued provider, against values computed by hand
//! from the providers' published prices (USD per million tokens, noted per row).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use llmtrace_cost::{Pricer, PricingConfig};
use llmtrace_model::{Span, SpanKind};
use serde_json::json;

struct Row {
    model: &'static str,
    provider: &'static str,
    /// input (all of it), cache reads, 5-minute cache writes, 1-hour cache writes
    input: [i64; 4],
    /// output (all of it), reasoning
    output: [i64; 2],
    /// hand-computed total in USD
    total: f64,
}

const fn row(
    model: &'static str,
    provider: &'static str,
    input: [i64; 4],
    output: [i64; 2],
    total: f64,
) -> Row {
    Row {
        model,
        provider,
        input,
        output,
        total,
    }
}

const ROWS: &[Row] = &[
    // gpt-4o $2.50 in, $1.25 cached, $10 out
    row("gpt-4o", "openai", [1000, 0, 0, 0], [500, 0], 0.0075),
    row(
        "gpt-4o-2024-08-06",
        "openai",
        [1000, 400, 0, 0],
        [200, 0],
        0.004,
    ),
    // the May 2024 snapshot kept its own price: $5 / $15
    row(
        "gpt-4o-2024-05-13",
        "openai",
        [1000, 0, 0, 0],
        [1000, 0],
        0.02,
    ),
    // $0.15 / $0.60
    row(
        "gpt-4o-mini",
        "openai",
        [10_000, 0, 0, 0],
        [1000, 0],
        0.0021,
    ),
    // gpt-4.1 $2 / $0.50 cached / $8
    row(
        "openai/gpt-4.1",
        "openai",
        [2000, 1000, 0, 0],
        [100, 0],
        0.0033,
    ),
    // gpt-4.1-mini $0.40 / $1.60
    row(
        "gpt-4.1-mini-2025-04-14",
        "openai",
        [5000, 0, 0, 0],
        [2000, 0],
        0.0052,
    ),
    // gpt-4.1-nano $0.10 / $0.025 cached / $0.40
    row(
        "gpt-4.1-nano",
        "openai",
        [100_000, 50_000, 0, 0],
        [10_000, 0],
        0.01025,
    ),
    // o3 $2 / $8, reasoning billed as output
    row("o3", "openai", [1000, 0, 0, 0], [5000, 4000], 0.042),
    // o4-mini $1.10 / $0.275 cached / $4.40
    row(
        "o4-mini-2025-04-16",
        "openai",
        [20_000, 10_000, 0, 0],
        [3000, 2500],
        0.02695,
    ),
    // o1 $15 / $60
    row("o1", "openai", [1000, 0, 0, 0], [1000, 800], 0.075),
    // gpt-5 $1.25 / $0.125 cached / $10
    row(
        "gpt-5",
        "openai",
        [1_000_000, 800_000, 0, 0],
        [10_000, 0],
        0.45,
    ),
    // gpt-5-mini $0.25 / $2
    row(
        "gpt-5-mini-2025-08-07",
        "openai",
        [3000, 0, 0, 0],
        [7000, 6000],
        0.01475,
    ),
    // gpt-5-nano $0.05 / $0.40
    row("gpt-5-nano", "openai", [1000, 0, 0, 0], [1000, 0], 0.00045),
    // gpt-5.4 above 272k prompt tokens: $5 / $0.50 cached / $22.50
    row(
        "gpt-5.4",
        "openai",
        [300_000, 100_000, 0, 0],
        [1000, 0],
        1.0725,
    ),
    // ... and at exactly 272k still the base $2.50 / $15
    row("gpt-5.4", "openai", [272_000, 0, 0, 0], [1000, 0], 0.695),
    // gpt-3.5-turbo $0.50 / $1.50
    row(
        "gpt-3.5-turbo-0125",
        "openai",
        [1000, 0, 0, 0],
        [1000, 0],
        0.002,
    ),
    // gpt-4 $30 / $60
    row("gpt-4-0613", "openai", [1000, 0, 0, 0], [100, 0], 0.036),
    // embeddings: text-embedding-3-small $0.02, -large $0.13
    row(
        "text-embedding-3-small",
        "openai",
        [10_000, 0, 0, 0],
        [0, 0],
        0.0002,
    ),
    row(
        "text-embedding-3-large",
        "openai",
        [1_000_000, 0, 0, 0],
        [0, 0],
        0.13,
    ),
    // fine-tuned gpt-4o-mini $0.30 / $1.20
    row(
        "ft:gpt-4o-mini-2024-07-18:acme::x1",
        "openai",
        [1000, 0, 0, 0],
        [1000, 0],
        0.0015,
    ),
    // claude-sonnet-4-5 $3 / $0.30 read / $3.75 write 5m / $15
    row(
        "claude-sonnet-4-5-20250929",
        "anthropic",
        [10_000, 6000, 2000, 0],
        [500, 0],
        0.0228,
    ),
    // claude-haiku-4-5 $1 / $2 write 1h / $5
    row(
        "claude-haiku-4-5",
        "anthropic",
        [5000, 0, 3000, 3000],
        [1000, 0],
        0.013,
    ),
    // claude-opus-4-5 on Bedrock $5 / $25
    row(
        "us.anthropic.claude-opus-4-5-20251101-v1:0",
        "aws.bedrock",
        [1000, 0, 0, 0],
        [1000, 0],
        0.03,
    ),
    // claude-opus-4-1 $15 / $75
    row(
        "claude-opus-4-1-20250805",
        "anthropic",
        [1000, 0, 0, 0],
        [1000, 0],
        0.09,
    ),
    // claude-sonnet-4 above 200k: $6 / $0.60 read / $22.50
    row(
        "claude-sonnet-4-20250514",
        "anthropic",
        [250_000, 50_000, 0, 0],
        [2000, 0],
        1.275,
    ),
    // claude-3-5-haiku $0.80 / $4
    row(
        "claude-3-5-haiku-latest",
        "anthropic",
        [10_000, 0, 0, 0],
        [1000, 0],
        0.012,
    ),
    // gemini-2.5-pro $1.25 / $10; above 200k $2.50 / $15
    row(
        "models/gemini-2.5-pro",
        "gcp.gemini",
        [100_000, 0, 0, 0],
        [5000, 0],
        0.175,
    ),
    row(
        "gemini-2.5-pro",
        "google",
        [300_000, 0, 0, 0],
        [1000, 0],
        0.765,
    ),
    // gemini-2.5-flash $0.30 / $0.03 cached / $2.50 (thinking too)
    row(
        "gemini-2.5-flash",
        "google",
        [10_000, 5000, 0, 0],
        [2000, 1500],
        0.00665,
    ),
    // mistral-large-latest $0.50 / $1.50
    row(
        "mistral/mistral-large-latest",
        "mistral_ai",
        [10_000, 0, 0, 0],
        [1000, 0],
        0.0065,
    ),
    // deepseek-chat $0.28 / $0.028 cache hit / $0.42
    row(
        "deepseek-chat",
        "deepseek",
        [100_000, 60_000, 0, 0],
        [2000, 0],
        0.01372,
    ),
    // Groq llama-3.3-70b-versatile $0.59 / $0.79; gpt-oss-120b $0.15 / $0.60
    row(
        "groq/llama-3.3-70b-versatile",
        "groq",
        [1000, 0, 0, 0],
        [1000, 0],
        0.00138,
    ),
    row(
        "openai/gpt-oss-120b",
        "groq",
        [10_000, 0, 0, 0],
        [2000, 0],
        0.0027,
    ),
    // xAI grok-code-fast-1 $1 / $0.20 cached / $2
    row(
        "xai/grok-code-fast-1",
        "xai",
        [10_000, 8000, 0, 0],
        [1000, 0],
        0.0056,
    ),
    // Cohere command-a $2.50 / $10; embed-english-v3.0 $0.10
    row(
        "command-a-03-2025",
        "cohere",
        [1000, 0, 0, 0],
        [1000, 0],
        0.0125,
    ),
    row(
        "embed-english-v3.0",
        "cohere",
        [1000, 0, 0, 0],
        [0, 0],
        0.0001,
    ),
];

fn span(model: &str, provider: &str, input: [i64; 4], output: [i64; 2]) -> Span {
    let mut span = Span {
        project: "default".into(),
        kind: if model.contains("embed") {
            SpanKind::Embedding
        } else {
            SpanKind::Llm
        },
        provider: Some(provider.into()),
        model: Some(model.into()),
        input_tokens: Some(input[0]),
        cached_input_tokens: (input[1] > 0).then_some(input[1]),
        output_tokens: Some(output[0]),
        reasoning_tokens: (output[1] > 0).then_some(output[1]),
        usage_source: Some("reported".into()),
        ..Default::default()
    };
    if input[2] > 0 {
        span.attributes = json!({
            "gen_ai.usage.cache_creation.input_tokens": input[2],
            "gen_ai.usage.cache_creation.ephemeral_1h_input_tokens": input[3],
        });
    }
    span
}

#[test]
fn every_row_costs_what_was_computed_by_hand() {
    assert!(ROWS.len() >= 30);
    let pricer = Pricer::new(&PricingConfig::default()).unwrap();
    let mut wrong = Vec::new();
    for row in ROWS {
        let mut span = span(row.model, row.provider, row.input, row.output);
        pricer.price(&mut span);
        match span.total_cost_usd {
            Some(total) if (total - row.total).abs() < 1e-12 => {
                let parts = span.input_cost_usd.unwrap() + span.output_cost_usd.unwrap();
                assert!(
                    (parts - total).abs() < 1e-12,
                    "{}: parts {parts} ≠ total {total}",
                    row.model
                );
                assert_eq!(span.attributes["llmtrace.cost"]["source"], "computed");
                assert_eq!(
                    span.pricing_version.as_deref(),
                    Some(pricer.catalogue().version.as_str())
                );
            }
            other => wrong.push(format!(
                "{}: expected {}, got {other:?}",
                row.model, row.total
            )),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_breakdown_names_each_kind_of_token() {
    let pricer = Pricer::new(&PricingConfig::default()).unwrap();
    let mut span = span(
        "claude-sonnet-4-5",
        "anthropic",
        [10_000, 6000, 2000, 0],
        [500, 0],
    );
    pricer.price(&mut span);
    let cost = &span.attributes["llmtrace.cost"];
    let close = |key: &str, expected: f64| {
        let got = cost[key].as_f64().unwrap();
        assert!((got - expected).abs() < 1e-12, "{key}: {got} ≠ {expected}");
    };
    close("input", 0.006);
    close("cached_input", 0.0018);
    close("cache_write", 0.0075);
    close("output", 0.0075);
    close("reasoning", 0.0);
    assert_eq!(cost["model"], "claude-sonnet-4-5");
    assert!((span.input_cost_usd.unwrap() - 0.0153).abs() < 1e-12);

    let mut audio = span_with_audio();
    pricer.price(&mut audio);
    // gpt-audio: text $2.50 / $10, audio $32 in / $64 out
    assert!((audio.total_cost_usd.unwrap() - 0.0468).abs() < 1e-12);
}

fn span_with_audio() -> Span {
    let mut span = span("gpt-audio", "openai", [1000, 0, 0, 0], [500, 0]);
    span.attributes = json!({
        "llm.token_count.prompt_details.audio": 600,
        "llm.token_count.completion_details.audio": 400,
    });
    span
}

#[test]
fn an_unknown_model_gets_no_cost_and_is_counted() {
    let pricer = Pricer::new(&PricingConfig::default()).unwrap();
    let mut span = span("my-private-model-7b", "vllm", [1000, 0, 0, 0], [10, 0]);
    span.total_cost_usd = None;
    pricer.price(&mut span);
    assert_eq!(span.total_cost_usd, None);
    assert_eq!(span.input_cost_usd, None);
    assert_eq!(span.attributes["llmtrace.cost"]["source"], "unpriced");
    assert_eq!(
        pricer
            .stats
            .unpriced
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // tokens of a kind the model has no price for: no cost rather than a guess
    let mut audio = span_with_audio();
    audio.model = Some("llama-3.3-70b-versatile".into());
    pricer.price(&mut audio);
    assert_eq!(audio.total_cost_usd, None);
    assert!(
        audio.attributes["llmtrace.cost"]["reason"]
            .as_str()
            .unwrap()
            .contains("audio")
    );
}
