//! A synthetic corpus of realistic GenAI spans: multi-turn chat sessions whose calls resend
//! their growing history, 20 models over 6 providers, users, metadata, ~2 KB of message text
//! per call. Deterministic for a seed, so runs and peers see the same data.

use std::collections::BTreeMap;

use llmtrace_model::{Span, SpanKind, SpanSource, SpanStatus};
use serde_json::{Value, json};

pub const MODELS: [(&str, &str); 20] = [
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("openai", "gpt-4.1"),
    ("openai", "gpt-4.1-mini"),
    ("openai", "o3"),
    ("openai", "o4-mini"),
    ("anthropic", "claude-sonnet-4-5"),
    ("anthropic", "claude-opus-4-1"),
    ("anthropic", "claude-haiku-4-5"),
    ("gcp.gemini", "gemini-2.5-pro"),
    ("gcp.gemini", "gemini-2.5-flash"),
    ("mistral_ai", "mistral-large-latest"),
    ("mistral_ai", "mistral-small-latest"),
    ("deepseek", "deepseek-chat"),
    ("deepseek", "deepseek-reasoner"),
    ("groq", "llama-3.3-70b-versatile"),
    ("groq", "llama-3.1-8b-instant"),
    ("x_ai", "grok-4"),
    ("openai", "text-embedding-3-small"),
    ("openai", "gpt-5"),
];

/// xorshift64*: fast, deterministic, good enough for synthetic data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A vocabulary of pronounceable pseudo-words with a skewed (Zipf-like) choice, so text
/// compresses and indexes like natural language rather than noise.
struct Words(Vec<String>);

impl Words {
    fn new() -> Words {
        const SYLLABLES: [&str; 24] = [
            "ka", "lo", "mi", "ne", "ru", "sa", "te", "vo", "zi", "pra", "sto", "gre", "an", "el",
            "or", "un", "is", "ta", "de", "ri", "po", "ce", "la", "mu",
        ];
        let mut rng = Rng::new(7);
        let words = (0..4000)
            .map(|_| {
                let syllables = 1 + rng.below(4);
                (0..syllables)
                    .map(|_| SYLLABLES[rng.below(SYLLABLES.len() as u64) as usize])
                    .collect::<String>()
            })
            .collect();
        Words(words)
    }

    fn sentence(&self, rng: &mut Rng, bytes: usize) -> String {
        let mut out = String::with_capacity(bytes + 16);
        while out.len() < bytes {
            // Skew: small indexes are much more frequent.
            let a = rng.below(self.0.len() as u64);
            let b = rng.below(a + 1);
            out.push_str(&self.0[b as usize]);
            out.push(if rng.below(12) == 0 { '.' } else { ' ' });
        }
        out
    }
}

/// Generates spans of multi-turn sessions: each call resends the session's history.
pub struct Corpus {
    rng: Rng,
    words: Words,
    sessions: Vec<Session>,
    next_id: u64,
    /// Start of the time range spans are spread over (ns) and its length.
    pub start_ns: i64,
    pub span_ns: i64,
    pub text_bytes: usize,
    /// Earlier turns each call resends (0: every call carries only its own messages).
    pub max_history: usize,
    emitted: u64,
    total: u64,
}

struct Session {
    id: String,
    user: String,
    model: usize,
    system: String,
    history: Vec<(String, String)>,
}

impl Corpus {
    /// `total` spans spread evenly over `days` days ending at `end_ns`; `text_bytes` of
    /// new message text per call (0 for spans without content).
    pub fn new(seed: u64, total: u64, days: i64, end_ns: i64, text_bytes: usize) -> Corpus {
        let span_ns = days * 86_400 * 1_000_000_000;
        Corpus {
            rng: Rng::new(seed),
            words: Words::new(),
            sessions: Vec::new(),
            next_id: seed.wrapping_mul(1_000_003) + 1,
            start_ns: end_ns - span_ns,
            span_ns,
            text_bytes,
            max_history: 8,
            emitted: 0,
            total: total.max(1),
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id = self.next_id.wrapping_add(0x9E37_79B9) | 1;
        self.next_id ^ self.rng.next()
    }

    /// The next LLM call of some session.
    pub fn next_span(&mut self, project: &str) -> Span {
        // Keep ~200 live sessions; each lasts up to 8 turns.
        if self.sessions.len() < 200 || self.rng.below(8) == 0 {
            let id = format!("sess-{:x}", self.id());
            let user = format!("user-{}", self.rng.below(500));
            let model = self.rng.below(MODELS.len() as u64) as usize;
            let system = if self.text_bytes > 0 {
                self.words.sentence(&mut self.rng, 200)
            } else {
                String::new()
            };
            let session = Session {
                id,
                user,
                model,
                system,
                history: Vec::new(),
            };
            if self.sessions.len() < 200 {
                self.sessions.push(session);
            } else {
                let slot = self.rng.below(self.sessions.len() as u64) as usize;
                self.sessions[slot] = session;
            }
        }
        let slot = self.rng.below(self.sessions.len() as u64) as usize;
        let question_bytes = self.text_bytes * 2 / 3;
        let answer_bytes = self.text_bytes - question_bytes;
        let question = if question_bytes > 0 {
            self.words.sentence(&mut self.rng, question_bytes)
        } else {
            String::new()
        };
        let answer = if answer_bytes > 0 {
            self.words.sentence(&mut self.rng, answer_bytes)
        } else {
            String::new()
        };
        let trace = self.id();
        let span = self.id();
        let start = self.start_ns
            + (self.emitted as i128 * self.span_ns as i128 / self.total as i128) as i64;
        self.emitted += 1;
        let latency_ms =
            200 + self.rng.below(3000) as i64 + if self.rng.below(100) == 0 { 20_000 } else { 0 };
        let error = self.rng.below(50) == 0;
        let tier = ["free", "pro", "enterprise"][self.rng.below(3) as usize];
        let feature = ["chat", "search", "summarize", "agent"][self.rng.below(4) as usize];
        let session = &mut self.sessions[slot];
        let (provider, model) = MODELS[session.model];
        let mut input =
            vec![json!({"role": "system", "content": [{"type": "text", "text": session.system}]})];
        for (q, a) in &session.history {
            input.push(json!({"role": "user", "content": [{"type": "text", "text": q}]}));
            input.push(json!({"role": "assistant", "content": [{"type": "text", "text": a}]}));
        }
        input.push(json!({"role": "user", "content": [{"type": "text", "text": question}]}));
        let input_text = std::iter::once(session.system.as_str())
            .chain(
                session
                    .history
                    .iter()
                    .flat_map(|(q, a)| [q.as_str(), a.as_str()]),
            )
            .chain(std::iter::once(question.as_str()))
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join("\n");
        let input_tokens = (input_text.len() / 4) as i64 + 8;
        let output_tokens = (answer.len() / 4) as i64 + 1;
        session.history.push((question, answer.clone()));
        while session.history.len() > self.max_history {
            session.history.remove(0);
        }
        let content = self.text_bytes > 0;
        Span {
            project: project.to_string(),
            trace_id: format!("{:016x}{:016x}", trace, trace.rotate_left(17)),
            span_id: format!("{span:016x}"),
            name: format!("chat {model}"),
            kind: SpanKind::Llm,
            source: SpanSource::Otlp,
            service_name: Some("bench-app".into()),
            start_time: start,
            end_time: start + latency_ms * 1_000_000,
            duration_ms: latency_ms as f64,
            time_to_first_token_ms: Some((latency_ms / 5) as f64),
            status: if error {
                SpanStatus::Error
            } else {
                SpanStatus::Ok
            },
            error_type: error.then(|| "rate_limit".to_string()),
            session_id: Some(session.id.clone()),
            user_id: Some(session.user.clone()),
            provider: Some(provider.to_string()),
            request_model: Some(model.to_string()),
            model: Some(format!("{model}-2026-01-01")),
            operation: Some("chat".into()),
            input_tokens: Some(input_tokens),
            output_tokens: Some(output_tokens),
            total_tokens: Some(input_tokens + output_tokens),
            usage_source: Some("reported".into()),
            input: if content {
                Value::Array(input)
            } else {
                Value::Null
            },
            output: if content {
                json!([{"role": "assistant", "content": [{"type": "text", "text": answer}]}])
            } else {
                Value::Null
            },
            input_text: if content { input_text } else { String::new() },
            output_text: answer,
            metadata: BTreeMap::from([
                ("tier".to_string(), tier.to_string()),
                ("feature".to_string(), feature.to_string()),
            ]),
            ..Span::default()
        }
    }
}
