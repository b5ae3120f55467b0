//! One call's tokens × one model's prices = the cost, broken down.

use serde::Serialize;
use serde_json::Value;

use llmtrace_model::Span;

use crate::catalogue::ModelPrice;

/// Token counts of one call in the span convention: `input` includes cached reads, cache
/// writes and audio; `output` includes reasoning and audio.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub input: i64,
    pub cached_input: i64,
    pub cache_write: i64,
    pub cache_write_1h: i64,
    pub output: i64,
    pub reasoning: i64,
    pub audio_input: i64,
    pub audio_output: i64,
}

fn attribute_int(attributes: &Value, keys: &[&str]) -> i64 {
    keys.iter()
        .find_map(|key| {
            let value = attributes.get(*key)?;
            value
                .as_i64()
                .or_else(|| value.as_f64().map(|f| f as i64))
                .or_else(|| value.as_str()?.parse().ok())
        })
        .unwrap_or(0)
        .max(0)
}

impl Usage {
    /// The usage a span reports. Cache writes and audio counts have no column of their own;
    /// they are read from the attributes the sources use for them.
    pub fn of(span: &Span) -> Usage {
        let attributes = &span.attributes;
        Usage {
            input: span.input_tokens.unwrap_or(0).max(0),
            cached_input: span.cached_input_tokens.unwrap_or(0).max(0),
            cache_write: attribute_int(
                attributes,
                &[
                    "gen_ai.usage.cache_creation.input_tokens",
                    "gen_ai.usage.cache_creation_input_tokens",
                    "llm.token_count.prompt_details.cache_write",
                ],
            ),
            cache_write_1h: attribute_int(
                attributes,
                &["gen_ai.usage.cache_creation.ephemeral_1h_input_tokens"],
            ),
            output: span.output_tokens.unwrap_or(0).max(0),
            reasoning: span.reasoning_tokens.unwrap_or(0).max(0),
            audio_input: attribute_int(
                attributes,
                &[
                    "llm.token_count.prompt_details.audio",
                    "gen_ai.usage.input_audio_tokens",
                ],
            ),
            audio_output: attribute_int(
                attributes,
                &[
                    "llm.token_count.completion_details.audio",
                    "gen_ai.usage.output_audio_tokens",
                ],
            ),
        }
    }
}

/// Cost of one call in USD, by what was billed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Cost {
    /// Uncached text input.
    pub input: f64,
    pub cached_input: f64,
    pub cache_write: f64,
    /// Text output other than reasoning.
    pub output: f64,
    pub reasoning: f64,
    pub audio_input: f64,
    pub audio_output: f64,
    /// The `above_input_tokens` of the price tier used, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<i64>,
}

impl Cost {
    pub fn input_side(&self) -> f64 {
        self.input + self.cached_input + self.cache_write + self.audio_input
    }

    pub fn output_side(&self) -> f64 {
        self.output + self.reasoning + self.audio_output
    }

    pub fn total(&self) -> f64 {
        self.input_side() + self.output_side()
    }
}

fn per_million(tokens: i64, price: f64) -> f64 {
    tokens as f64 * price / 1_000_000.0
}

/// Prices `usage` with `price`; `Err` names the price a used token kind lacks (a missing
/// price never becomes zero).
pub fn cost(price: &ModelPrice, usage: &Usage) -> Result<Cost, String> {
    let tier = price.tier_for(usage.input);
    let input = tier.and_then(|t| t.input).unwrap_or(price.input);
    let cached = tier
        .and_then(|t| t.cached_input)
        .or(price.cached_input)
        .unwrap_or(input);
    let write = tier
        .and_then(|t| t.cache_write)
        .or(price.cache_write)
        .unwrap_or(input);
    let write_1h = price.cache_write_1h.unwrap_or(write);
    let output = tier.and_then(|t| t.output).or(price.output);
    let need = |amount: i64, price: Option<f64>, what: &str| -> Result<f64, String> {
        match price {
            Some(price) => Ok(price),
            None if amount == 0 => Ok(0.0),
            None => Err(format!("no {what} price")),
        }
    };
    let audio_input_price = need(usage.audio_input, price.audio_input, "audio input")?;
    let audio_output_price = need(usage.audio_output, price.audio_output, "audio output")?;
    let text_output = usage.output - usage.reasoning - usage.audio_output;
    let output_price = need(text_output.max(0) + usage.reasoning, output, "output")?;
    let reasoning_price = price.reasoning.unwrap_or(output_price);

    let write_5m = (usage.cache_write - usage.cache_write_1h).max(0);
    let uncached =
        (usage.input - usage.cached_input - usage.cache_write - usage.audio_input).max(0);
    Ok(Cost {
        input: per_million(uncached, input),
        cached_input: per_million(usage.cached_input, cached),
        cache_write: per_million(write_5m, write) + per_million(usage.cache_write_1h, write_1h),
        output: per_million(text_output.max(0), output_price),
        reasoning: per_million(usage.reasoning, reasoning_price),
        audio_input: per_million(usage.audio_input, audio_input_price),
        audio_output: per_million(usage.audio_output, audio_output_price),
        tier: tier.map(|t| t.above_input_tokens),
    })
}
