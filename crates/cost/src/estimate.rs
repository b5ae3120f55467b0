//! Token counts for calls whose source reported none.
//!
//! OpenAI models are counted with their own tokenizer (tiktoken's BPE files, shipped inside
//! `tiktoken-rs`), chat input with the formula OpenAI documents for chat messages: 3 tokens
//! per message, the tokens of every value in it, 1 more for a `name`, and 3 that prime the
//! reply. Other families are counted with `o200k_base` as an approximation and marked so.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use serde_json::Value;
use tiktoken_rs::CoreBPE;
use tiktoken_rs::tokenizer::{Tokenizer, get_tokenizer};

use crate::normalize;

/// A tokenizer and whether it is the model's own.
#[derive(Clone, Copy)]
pub struct Counter<'a> {
    bpe: &'static CoreBPE,
    pub encoding: &'static str,
    pub exact: bool,
    cache: Option<&'a TokenCache>,
}

/// Counts of texts seen before, by a 64-bit hash of (encoding, text). Chat calls resend
/// their whole history, so most of what a busy ingest path counts it has counted already.
#[derive(Default)]
pub struct TokenCache {
    counts: Mutex<HashMap<u64, i64>>,
}

/// Texts shorter than this are counted directly: hashing them costs about as much.
const CACHE_FROM_BYTES: usize = 256;
/// Remembered counts; past this the memory starts over.
const CACHE_ENTRIES: usize = 100_000;

fn bpe(tokenizer: Tokenizer) -> Option<(&'static CoreBPE, &'static str)> {
    Some(match tokenizer {
        Tokenizer::O200kBase => (tiktoken_rs::o200k_base_singleton(), "o200k_base"),
        Tokenizer::O200kHarmony => (tiktoken_rs::o200k_harmony_singleton(), "o200k_harmony"),
        Tokenizer::Cl100kBase => (tiktoken_rs::cl100k_base_singleton(), "cl100k_base"),
        Tokenizer::P50kBase => (tiktoken_rs::p50k_base_singleton(), "p50k_base"),
        Tokenizer::P50kEdit => (tiktoken_rs::p50k_edit_singleton(), "p50k_edit"),
        Tokenizer::R50kBase | Tokenizer::Gpt2 => (tiktoken_rs::r50k_base_singleton(), "r50k_base"),
    })
}

impl<'a> Counter<'a> {
    /// The tokenizer for `model`: its own when it is an OpenAI model tiktoken knows,
    /// otherwise `o200k_base`, marked inexact.
    pub fn for_model(model: &str) -> Counter<'a> {
        let own = normalize::candidates(model, &Default::default())
            .iter()
            .find_map(|name| get_tokenizer(name))
            .and_then(bpe);
        match own {
            Some((bpe, encoding)) => Counter {
                bpe,
                encoding,
                exact: true,
                cache: None,
            },
            None => Counter {
                bpe: tiktoken_rs::o200k_base_singleton(),
                encoding: "o200k_base",
                exact: false,
                cache: None,
            },
        }
    }

    /// The same counter, remembering long texts' counts in `cache`.
    pub fn cached(self, cache: &'a TokenCache) -> Counter<'a> {
        Counter {
            cache: Some(cache),
            ..self
        }
    }

    /// Tokens of plain text (special-token markers count as ordinary text).
    pub fn text(&self, text: &str) -> i64 {
        let Some(cache) = self.cache.filter(|_| text.len() >= CACHE_FROM_BYTES) else {
            return self.bpe.encode_ordinary(text).len() as i64;
        };
        let key = {
            let mut hasher = std::hash::DefaultHasher::new();
            (self.encoding, text).hash(&mut hasher);
            hasher.finish()
        };
        if let Some(count) = cache.counts.lock().ok().and_then(|c| c.get(&key).copied()) {
            return count;
        }
        let count = self.bpe.encode_ordinary(text).len() as i64;
        if let Ok(mut counts) = cache.counts.lock() {
            if counts.len() >= CACHE_ENTRIES {
                counts.clear();
            }
            counts.insert(key, count);
        }
        count
    }

    /// Tokens of a normalized message list (`{role, content:[parts], name, tool_calls}`).
    pub fn messages(&self, messages: &[Value]) -> i64 {
        let mut total = 3; // every reply is primed with <|start|>assistant<|message|>
        for message in messages {
            total += 3;
            if let Some(role) = message.get("role").and_then(Value::as_str) {
                total += self.text(role);
            }
            let content = content_text(message.get("content").unwrap_or(&Value::Null));
            total += self.text(&content);
            if let Some(name) = message.get("name").and_then(Value::as_str) {
                total += self.text(name) + 1;
            }
            for call in message
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                for key in ["name", "arguments"] {
                    if let Some(value) = call.get(key).and_then(Value::as_str) {
                        total += self.text(value);
                    }
                }
            }
        }
        total
    }

    /// Tokens of a span's input: messages by the chat formula, a string or a list of
    /// strings (embeddings) as text, anything else by its flattened text.
    pub fn input(&self, input: &Value, input_text: &str) -> i64 {
        match input {
            Value::Array(items)
                if items.iter().all(|item| item.get("role").is_some()) && !items.is_empty() =>
            {
                self.messages(items)
            }
            Value::Array(items) if items.iter().all(Value::is_string) && !items.is_empty() => items
                .iter()
                .filter_map(Value::as_str)
                .map(|text| self.text(text))
                .sum(),
            Value::String(text) => self.text(text),
            _ => self.text(input_text),
        }
    }
}

/// The text of a normalized content value: text parts joined (strings pass through).
fn content_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn openai_models_get_their_own_tokenizer_and_others_an_approximation() {
        assert_eq!(Counter::for_model("gpt-4o-mini").encoding, "o200k_base");
        assert!(Counter::for_model("gpt-4o-mini").exact);
        assert_eq!(
            Counter::for_model("gpt-3.5-turbo-0125").encoding,
            "cl100k_base"
        );
        assert_eq!(Counter::for_model("openai/gpt-4").encoding, "cl100k_base");
        let claude = Counter::for_model("claude-sonnet-4-5");
        assert_eq!(claude.encoding, "o200k_base");
        assert!(!claude.exact);
    }

    #[test]
    fn chat_formula_counts_overhead_per_message_and_for_the_reply() {
        let counter = Counter::for_model("gpt-4o");
        let one = json!([{"role": "user", "content": [{"type": "text", "text": "hello"}]}]);
        let items = one.as_array().unwrap();
        // 3 (reply) + 3 (message) + "user" + "hello"
        assert_eq!(
            counter.messages(items),
            6 + counter.text("user") + counter.text("hello")
        );
        let named = json!([{"role": "user", "name": "bob", "content": "hi"}]);
        assert_eq!(
            counter.messages(named.as_array().unwrap()),
            7 + counter.text("user") + counter.text("hi") + counter.text("bob")
        );
    }

    #[test]
    fn special_token_markers_are_ordinary_text() {
        let counter = Counter::for_model("gpt-4o");
        assert!(counter.text("<|endoftext|>") > 1);
    }
}
