//! Sessions for calls that carry no session id.
//!
//! Rule: a chat call continues a session when its messages start with an earlier call's
//! messages followed by that call's answer (same project, user and credentials) — which is
//! what every chat client sends for the next turn — or when it names that call's response
//! in `previous_response_id` (Responses API). Otherwise it starts a new session. Inferred
//! ids start with `auto-` and the span carries `llmtrace.session_inferred = true`.
//!
//! Only hashes are remembered, in memory and bounded (oldest forgotten first). The table is
//! saved to a file (`save`) at shutdown and every minute while it changes, and loaded at
//! start, so a conversation continues its session across a restart; a crash forgets at
//! most the last minute.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

use llmtrace_model::{Span, SpanStatus};
use serde_json::Value;

pub struct Sessions {
    /// Conversation state (hash of messages + answer) → session.
    states: HashMap<u64, String>,
    order: VecDeque<u64>,
    capacity: usize,
    /// Changed since the last save.
    pub dirty: bool,
}

/// The saved form: states oldest first.
#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    version: u32,
    states: Vec<(u64, String)>,
}

/// The parts of a message that survive a client re-sending it: role, text, tool calls.
fn hash_message(hasher: &mut DefaultHasher, message: &Value) {
    let field = |key: &str| message.get(key).and_then(Value::as_str).unwrap_or("");
    field("role").hash(hasher);
    for part in message
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(text) = part.get("text").and_then(Value::as_str) {
            text.hash(hasher);
        }
    }
    0xffu8.hash(hasher);
    for call in message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for key in ["id", "name", "arguments"] {
            call.get(key)
                .and_then(Value::as_str)
                .unwrap_or("")
                .hash(hasher);
        }
    }
    field("tool_call_id").hash(hasher);
}

fn messages(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or(&[])
}

impl Sessions {
    pub fn new(capacity: usize) -> Sessions {
        Sessions {
            states: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            dirty: false,
        }
    }

    /// The table saved at `path`, or an empty one when there is none; a file that cannot
    /// be read is reported and ignored (sessions then start afresh).
    pub fn load(path: &std::path::Path, capacity: usize) -> Sessions {
        let mut sessions = Sessions::new(capacity);
        let saved = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice::<Saved>(&bytes).map_err(|e| e.to_string()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return sessions,
            Err(err) => Err(err.to_string()),
        };
        match saved {
            Ok(saved) if saved.version == 1 => {
                for (key, session) in &saved.states {
                    sessions.remember(*key, session);
                }
                sessions.dirty = false;
                tracing::info!(states = sessions.states.len(), path = %path.display(), "gateway sessions loaded");
            }
            Ok(saved) => {
                tracing::warn!(version = saved.version, path = %path.display(), "gateway sessions file of another version ignored")
            }
            Err(err) => {
                tracing::warn!(path = %path.display(), %err, "gateway sessions file unreadable, ignored")
            }
        }
        sessions
    }

    /// Writes the table to `path` atomically (a temporary file renamed over it).
    pub fn save(&mut self, path: &std::path::Path) -> std::io::Result<()> {
        let saved = Saved {
            version: 1,
            states: self
                .order
                .iter()
                .filter_map(|key| Some((*key, self.states.get(key)?.clone())))
                .collect(),
        };
        let bytes = serde_json::to_vec(&saved).map_err(std::io::Error::other)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let temporary = path.with_extension("tmp");
        std::fs::write(&temporary, bytes)?;
        std::fs::rename(&temporary, path)?;
        self.dirty = false;
        Ok(())
    }

    fn remember(&mut self, key: u64, session: &str) {
        self.dirty = true;
        if self.states.insert(key, session.to_string()).is_none() {
            self.order.push_back(key);
            while self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.states.remove(&old);
                }
            }
        }
    }

    /// Gives `span` a session when it has none, then remembers the conversation as it
    /// stands after this call. `previous_response` is the Responses API's
    /// `previous_response_id`.
    pub fn apply(&mut self, span: &mut Span, scope: &str, previous_response: Option<&str>) {
        let mut hasher = DefaultHasher::new();
        scope.hash(&mut hasher);
        let mut prefixes = Vec::new();
        for message in messages(&span.input) {
            hash_message(&mut hasher, message);
            prefixes.push(hasher.clone());
        }
        if span.session_id.is_none() {
            let by_response = previous_response.and_then(|id| {
                let mut key = DefaultHasher::new();
                scope.hash(&mut key);
                ("response", id).hash(&mut key);
                self.states.get(&key.finish()).cloned()
            });
            let by_prefix = || {
                prefixes
                    .iter()
                    .rev()
                    .find_map(|prefix| self.states.get(&prefix.finish()).cloned())
            };
            let session = by_response.or_else(by_prefix).unwrap_or_else(|| {
                format!("auto-{}", &span.trace_id[..span.trace_id.len().min(16)])
            });
            span.session_id = Some(session);
            if let Value::Object(attributes) = &mut span.attributes {
                attributes.insert("llmtrace.session_inferred".into(), Value::Bool(true));
            }
        }
        if span.status != SpanStatus::Ok {
            return;
        }
        let Some(session) = span.session_id.clone() else {
            return;
        };
        for answer in messages(&span.output) {
            let mut state = hasher.clone();
            hash_message(&mut state, answer);
            self.remember(state.finish(), &session);
        }
        let response_id = span
            .attributes
            .get("gen_ai.response.id")
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Some(id) = response_id {
            let mut key = DefaultHasher::new();
            scope.hash(&mut key);
            ("response", id.as_str()).hash(&mut key);
            self.remember(key.finish(), &session);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn call(trace: &str, input: Value, output: Value) -> Span {
        Span {
            trace_id: trace.into(),
            input,
            output,
            attributes: json!({}),
            ..Span::default()
        }
    }

    fn user(text: &str) -> Value {
        json!({"role": "user", "content": [{"type": "text", "text": text}]})
    }

    fn assistant(text: &str) -> Value {
        json!({"role": "assistant", "content": [{"type": "text", "text": text}]})
    }

    #[test]
    fn a_call_that_extends_an_earlier_one_continues_its_session() {
        let mut sessions = Sessions::new(100);
        let system = json!({"role": "system", "content": [{"type": "text", "text": "Be brief."}]});
        let mut first = call(
            "a1",
            json!([system, user("hi")]),
            json!([assistant("hello")]),
        );
        sessions.apply(&mut first, "p|u", None);
        assert_eq!(first.session_id.as_deref(), Some("auto-a1"));
        assert_eq!(first.attributes["llmtrace.session_inferred"], true);

        let mut second = call(
            "b2",
            json!([system, user("hi"), assistant("hello"), user("weather?")]),
            json!([assistant("sunny")]),
        );
        sessions.apply(&mut second, "p|u", None);
        assert_eq!(second.session_id.as_deref(), Some("auto-a1"));

        // the same opening from another user, or with another answer, is another session
        let mut other_user = call(
            "c3",
            json!([system, user("hi"), assistant("hello"), user("x")]),
            json!([]),
        );
        sessions.apply(&mut other_user, "p|v", None);
        assert_eq!(other_user.session_id.as_deref(), Some("auto-c3"));
        let mut other_answer = call(
            "d4",
            json!([system, user("hi"), assistant("hey"), user("x")]),
            json!([]),
        );
        sessions.apply(&mut other_answer, "p|u", None);
        assert_eq!(other_answer.session_id.as_deref(), Some("auto-d4"));
        // the same system prompt alone does not join a session
        let mut fresh = call("e5", json!([system, user("new topic")]), json!([]));
        sessions.apply(&mut fresh, "p|u", None);
        assert_eq!(fresh.session_id.as_deref(), Some("auto-e5"));
    }

    #[test]
    fn explicit_sessions_are_kept_and_followed_and_responses_chain() {
        let mut sessions = Sessions::new(100);
        let mut first = call("a1", json!([user("hi")]), json!([assistant("hello")]));
        first.session_id = Some("conv-9".into());
        first.attributes = json!({"gen_ai.response.id": "resp_1"});
        sessions.apply(&mut first, "s", None);
        assert_eq!(first.session_id.as_deref(), Some("conv-9"));
        assert!(first.attributes.get("llmtrace.session_inferred").is_none());
        let mut next = call("b2", json!([user("and?")]), json!([]));
        sessions.apply(&mut next, "s", Some("resp_1"));
        assert_eq!(next.session_id.as_deref(), Some("conv-9"));
    }

    #[test]
    fn the_table_survives_a_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.json");
        let mut sessions = Sessions::new(10);
        let mut first = call("t1", json!([user("hi")]), json!([assistant("hello")]));
        sessions.apply(&mut first, "scope", None);
        sessions.save(&path).unwrap();
        assert!(!sessions.dirty);
        let mut loaded = Sessions::load(&path, 10);
        let mut second = call(
            "t2",
            json!([user("hi"), assistant("hello"), user("more")]),
            json!([assistant("sure")]),
        );
        loaded.apply(&mut second, "scope", None);
        assert_eq!(second.session_id, first.session_id);
        std::fs::write(&path, b"not json").unwrap();
        assert!(Sessions::load(&path, 10).states.is_empty());
        assert!(
            Sessions::load(&dir.path().join("absent"), 10)
                .states
                .is_empty()
        );
    }

    #[test]
    fn memory_is_bounded() {
        let mut sessions = Sessions::new(2);
        for i in 0..10 {
            let mut span = call(
                &format!("t{i}"),
                json!([user(&i.to_string())]),
                json!([assistant("ok")]),
            );
            sessions.apply(&mut span, "s", None);
        }
        assert_eq!(sessions.states.len(), 2);
        assert_eq!(sessions.order.len(), 2);
    }
}
