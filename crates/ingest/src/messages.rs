//! Message normalization: every dialect's messages become
//! `{role, content:[parts], tool_calls, tool_call_id, name}` with parts `text`, `image`,
//! `audio`, `file`, `refusal` (unknown part types are kept as they came).

use llmtrace_model::json::at;
use serde_json::{Map, Value, json};

pub use llmtrace_model::span::flatten_text;

/// A JSON value that may arrive as a JSON-encoded string (span attributes) or as a tree
/// (log events): always returns the tree.
pub fn json_tree(value: &Value) -> Value {
    match value {
        Value::String(text) => serde_json::from_str(text).unwrap_or_else(|_| value.clone()),
        other => other.clone(),
    }
}

fn text_part(text: &str) -> Value {
    json!({"type": "text", "text": text})
}

fn message(role: &str, content: Vec<Value>) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("role".into(), Value::from(role));
    out.insert("content".into(), Value::Array(content));
    out
}

/// An OpenAI chat-format content value (string or parts list) as normalized parts.
pub fn openai_content(content: &Value) -> Vec<Value> {
    match content {
        Value::Null => vec![],
        Value::String(text) => vec![text_part(text)],
        Value::Array(parts) => parts
            .iter()
            .map(|part| match part.get("type").and_then(Value::as_str) {
                Some("text") | Some("input_text") | Some("output_text") => {
                    text_part(part.get("text").and_then(Value::as_str).unwrap_or(""))
                }
                Some("image_url") => json!({
                    "type": "image",
                    "url": at(part, "/image_url/url").cloned().unwrap_or(Value::Null)
                }),
                Some("input_image") => json!({"type": "image", "url": part.get("image_url").cloned().unwrap_or(Value::Null)}),
                Some("input_audio") => json!({"type": "audio", "format": at(part, "/input_audio/format").cloned().unwrap_or(Value::Null)}),
                Some("file") | Some("input_file") => json!({"type": "file", "file": part.get("file").cloned().unwrap_or(Value::Null)}),
                Some("refusal") => json!({"type": "refusal", "text": part.get("refusal").cloned().unwrap_or(Value::Null)}),
                _ => match part {
                    Value::String(text) => text_part(text),
                    other => other.clone(),
                },
            })
            .collect(),
        other => vec![text_part(&other.to_string())],
    }
}

/// One OpenAI chat-format message (`{role, content, tool_calls, tool_call_id, name}`).
pub fn from_openai_message(raw: &Value) -> Value {
    into_openai_message(raw.clone())
}

/// OpenAI chat-format message list.
pub fn from_openai_messages(raw: &Value) -> Option<Value> {
    match raw {
        Value::Array(_) => into_openai_messages(raw.clone()),
        _ => None,
    }
}

/// `from_openai_messages` of messages the caller owns and no longer needs: their strings
/// move into the normalized messages instead of being copied (the gateway's recorder
/// parses every request only to normalize it).
pub fn into_openai_messages(raw: Value) -> Option<Value> {
    let Value::Array(items) = raw else {
        return None;
    };
    Some(Value::Array(
        items.into_iter().map(into_openai_message).collect(),
    ))
}

/// `from_openai_message` of an owned message. Anything but an object is a message
/// without fields: a user message with no content.
pub fn into_openai_message(raw: Value) -> Value {
    let Value::Object(mut raw) = raw else {
        return Value::Object(message("user", Vec::new()));
    };
    let role = match raw.remove("role") {
        Some(Value::String(role)) => role,
        _ => "user".to_string(),
    };
    let mut content = match raw.remove("content") {
        Some(Value::String(text)) => vec![json!({"type": "text", "text": text})],
        Some(other) => openai_content(&other),
        None => vec![],
    };
    if let Some(Value::String(refusal)) = raw.remove("refusal") {
        content.push(json!({"type": "refusal", "text": refusal}));
    }
    let mut out = Map::new();
    out.insert("role".into(), Value::String(role));
    out.insert("content".into(), Value::Array(content));
    if let Some(Value::Array(calls)) = raw.remove("tool_calls")
        && !calls.is_empty()
    {
        let calls = calls.into_iter().map(into_tool_call).collect();
        out.insert("tool_calls".into(), Value::Array(calls));
    }
    for key in ["tool_call_id", "name"] {
        if let Some(value) = raw.remove(key).filter(|v| !v.is_null()) {
            out.insert(key.into(), value);
        }
    }
    Value::Object(out)
}

/// One chat tool call (`{id, function: {name, arguments}}`, or flat) in normalized form,
/// as `from_openai_message` writes it.
fn into_tool_call(call: Value) -> Value {
    let Value::Object(mut call) = call else {
        return json!({"id": Value::Null, "name": Value::Null, "arguments": Value::Null});
    };
    let mut function = match call.remove("function") {
        Some(Value::Object(function)) => Some(function),
        _ => None,
    };
    let mut field = |key: &str| {
        function
            .as_mut()
            .and_then(|function| function.remove(key))
            .or_else(|| call.remove(key))
            .unwrap_or(Value::Null)
    };
    let name = field("name");
    let arguments = field("arguments");
    let id = call.remove("id").unwrap_or(Value::Null);
    json!({"id": id, "name": name, "arguments": arguments})
}

/// A tool call in normalized form; `arguments` stays the JSON text the model produced.
fn tool_call(id: &Value, name: &Value, arguments: &Value) -> Value {
    let arguments = match arguments {
        Value::String(_) | Value::Null => arguments.clone(),
        other => Value::String(other.to_string()),
    };
    json!({"id": id, "name": name, "arguments": arguments})
}

/// A system message from instructions given as a string or as text blocks.
fn system_message(instructions: &Value) -> Option<Value> {
    let content = match instructions {
        Value::Null => return None,
        Value::String(text) if text.is_empty() => return None,
        Value::Array(blocks) if blocks.is_empty() => return None,
        other => openai_content(other),
    };
    Some(Value::Object(message("system", content)))
}

/// Responses API items (`input` or `output`), merged into messages: message items keep
/// their role, `function_call` items become assistant tool calls, `function_call_output`
/// items tool messages; other items (reasoning, hosted tools) are kept as parts.
fn from_responses_items(items: &[Value], out: &mut Vec<Value>) {
    for item in items {
        let kind = item
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("message");
        match kind {
            "message" => out.push(from_openai_message(item)),
            "function_call" | "custom_tool_call" => {
                let call = tool_call(
                    item.get("call_id").unwrap_or(&Value::Null),
                    item.get("name").unwrap_or(&Value::Null),
                    item.get("arguments")
                        .or_else(|| item.get("input"))
                        .unwrap_or(&Value::Null),
                );
                match out.last_mut() {
                    Some(Value::Object(last))
                        if last.get("role").and_then(Value::as_str) == Some("assistant") =>
                    {
                        if let Value::Array(calls) = last
                            .entry("tool_calls")
                            .or_insert_with(|| Value::Array(Vec::new()))
                        {
                            calls.push(call);
                        }
                    }
                    _ => {
                        let mut assistant = message("assistant", Vec::new());
                        assistant.insert("tool_calls".into(), Value::Array(vec![call]));
                        out.push(Value::Object(assistant));
                    }
                }
            }
            "function_call_output" | "custom_tool_call_output" => {
                let mut tool = message(
                    "tool",
                    openai_content(item.get("output").unwrap_or(&Value::Null)),
                );
                tool.insert(
                    "tool_call_id".into(),
                    item.get("call_id").cloned().unwrap_or(Value::Null),
                );
                out.push(Value::Object(tool));
            }
            _ => {
                let part = item.clone();
                match out.last_mut() {
                    Some(Value::Object(last))
                        if last.get("role").and_then(Value::as_str) == Some("assistant") =>
                    {
                        if let Some(Value::Array(content)) = last.get_mut("content") {
                            content.push(part);
                        }
                    }
                    _ => out.push(Value::Object(message("assistant", vec![part]))),
                }
            }
        }
    }
}

/// A Responses API request's conversation: `instructions` as the system message, then
/// `input` (a string is one user message).
pub fn from_responses_input(instructions: &Value, input: &Value) -> Value {
    let mut out: Vec<Value> = system_message(instructions).into_iter().collect();
    match input {
        Value::String(text) => out.push(Value::Object(message("user", vec![text_part(text)]))),
        Value::Array(items) => from_responses_items(items, &mut out),
        _ => {}
    }
    Value::Array(out)
}

/// A Responses API `output` list as messages.
pub fn from_responses_output(output: &Value) -> Value {
    let mut out = Vec::new();
    if let Some(items) = output.as_array() {
        from_responses_items(items, &mut out);
    }
    Value::Array(out)
}

/// Anthropic content blocks as one message of `role`, plus a tool message per
/// `tool_result` block (they answer earlier tool calls).
fn from_anthropic_message(role: &str, content: &Value, out: &mut Vec<Value>) {
    let blocks = match content {
        Value::Array(blocks) => blocks.clone(),
        other => vec![json!({"type": "text", "text": other.as_str().unwrap_or_default()})],
    };
    let mut parts = Vec::new();
    let mut calls = Vec::new();
    let mut results = Vec::new();
    for block in blocks {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => parts.push(text_part(
                block.get("text").and_then(Value::as_str).unwrap_or(""),
            )),
            Some("thinking") => parts.push(json!({
                "type": "reasoning",
                "text": block.get("thinking").cloned().unwrap_or(Value::Null)
            })),
            Some("image") => parts.push(json!({
                "type": "image",
                "url": at(&block, "/source/url").cloned().unwrap_or(Value::Null),
                "source": block.get("source").cloned().unwrap_or(Value::Null)
            })),
            Some("tool_use") | Some("server_tool_use") => calls.push(tool_call(
                block.get("id").unwrap_or(&Value::Null),
                block.get("name").unwrap_or(&Value::Null),
                block.get("input").unwrap_or(&Value::Null),
            )),
            Some("tool_result") => {
                let mut tool = message(
                    "tool",
                    openai_content(block.get("content").unwrap_or(&Value::Null)),
                );
                tool.insert(
                    "tool_call_id".into(),
                    block.get("tool_use_id").cloned().unwrap_or(Value::Null),
                );
                if block.get("is_error").and_then(Value::as_bool) == Some(true) {
                    tool.insert("is_error".into(), Value::Bool(true));
                }
                results.push(Value::Object(tool));
            }
            _ => parts.push(block),
        }
    }
    out.extend(results);
    if !parts.is_empty() || !calls.is_empty() {
        let mut msg = message(role, parts);
        if !calls.is_empty() {
            msg.insert("tool_calls".into(), Value::Array(calls));
        }
        out.push(Value::Object(msg));
    }
}

/// An Anthropic Messages request's conversation: `system`, then `messages`.
pub fn from_anthropic_messages(system: &Value, messages: &Value) -> Value {
    let mut out: Vec<Value> = system_message(system).into_iter().collect();
    for item in messages.as_array().into_iter().flatten() {
        let role = item.get("role").and_then(Value::as_str).unwrap_or("user");
        from_anthropic_message(role, item.get("content").unwrap_or(&Value::Null), &mut out);
    }
    Value::Array(out)
}

/// An Anthropic response's content blocks as the assistant message.
pub fn from_anthropic_content(content: &Value) -> Value {
    let mut out = Vec::new();
    from_anthropic_message("assistant", content, &mut out);
    Value::Array(out)
}

/// OTel GenAI (v1.37+) messages: `{role, parts:[…], name?, finish_reason?}`.
pub fn from_genai_messages(raw: &Value) -> Option<Value> {
    let items = raw.as_array()?;
    let mut out = Vec::new();
    for item in items {
        let role = item.get("role").and_then(Value::as_str).unwrap_or("user");
        let mut content = Vec::new();
        let mut tool_calls = Vec::new();
        let mut tool_call_id = None;
        for part in item
            .get("parts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            match part.get("type").and_then(Value::as_str) {
                Some("text") | Some("reasoning") => {
                    let text = part.get("content").and_then(Value::as_str).unwrap_or("");
                    content.push(text_part(text));
                }
                Some("tool_call") => tool_calls.push(json!({
                    "id": part.get("id").cloned().unwrap_or(Value::Null),
                    "name": part.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": arguments_text(part.get("arguments")),
                })),
                Some("tool_call_response") => {
                    tool_call_id = part.get("id").cloned();
                    let response = part.get("response").or_else(|| part.get("result"));
                    match response {
                        Some(Value::String(text)) => content.push(text_part(text)),
                        Some(other) => content.push(text_part(&other.to_string())),
                        None => {}
                    }
                }
                Some("uri") | Some("blob") | Some("file") => {
                    let modality = part
                        .get("modality")
                        .and_then(Value::as_str)
                        .unwrap_or("file");
                    let kind = if matches!(modality, "image" | "audio") {
                        modality
                    } else {
                        "file"
                    };
                    let mut normalized = part.clone();
                    if let Some(object) = normalized.as_object_mut() {
                        object.insert("type".into(), Value::from(kind));
                        if let Some(uri) = part.get("uri") {
                            object.insert("url".into(), uri.clone());
                        }
                    }
                    content.push(normalized);
                }
                _ => content.push(part.clone()),
            }
        }
        let mut normalized = message(role, content);
        if !tool_calls.is_empty() {
            normalized.insert("tool_calls".into(), Value::Array(tool_calls));
        }
        if let Some(id) = tool_call_id {
            normalized.insert("tool_call_id".into(), id);
        }
        if let Some(name) = item.get("name").filter(|v| !v.is_null()) {
            normalized.insert("name".into(), name.clone());
        }
        if let Some(reason) = item.get("finish_reason").filter(|v| !v.is_null()) {
            normalized.insert("finish_reason".into(), reason.clone());
        }
        out.push(Value::Object(normalized));
    }
    Some(Value::Array(out))
}

/// `gen_ai.system_instructions`: parts without a role, as one system message.
pub fn system_message_from_parts(raw: &Value) -> Option<Value> {
    let parts = match raw {
        Value::Array(parts) => parts.clone(),
        Value::String(text) => vec![json!({"type": "text", "content": text})],
        _ => return None,
    };
    from_genai_messages(&json!([{"role": "system", "parts": parts}]))
        .and_then(|messages| messages.as_array()?.first().cloned())
}

fn arguments_text(arguments: Option<&Value>) -> Value {
    match arguments {
        None | Some(Value::Null) => Value::Null,
        Some(Value::String(text)) => Value::from(text.clone()),
        Some(other) => Value::from(other.to_string()),
    }
}

/// Regroups flattened `prefix.N.rest` attributes into one map per index, ordered by N.
pub fn regroup<'a>(
    attributes: impl Iterator<Item = (&'a String, &'a Value)>,
    prefix: &str,
) -> Vec<Map<String, Value>> {
    let mut groups: std::collections::BTreeMap<u64, Map<String, Value>> = Default::default();
    for (key, value) in attributes {
        let Some(rest) = key.strip_prefix(prefix) else {
            continue;
        };
        let Some((index, field)) = rest.split_once('.') else {
            continue;
        };
        let Ok(index) = index.parse::<u64>() else {
            continue;
        };
        groups
            .entry(index)
            .or_default()
            .insert(field.to_string(), value.clone());
    }
    groups.into_values().collect()
}

/// Builds a normalized message from flattened fields (`role`, `content`, `tool_calls.K.…`).
/// `field` maps our names to the dialect's suffixes.
pub fn from_flat(
    fields: &Map<String, Value>,
    field: &dyn Fn(&str) -> String,
    tool_call_fields: [&str; 3],
) -> Value {
    let role = fields
        .get(&field("role"))
        .and_then(Value::as_str)
        .unwrap_or("user");
    let mut content = match fields.get(&field("content")) {
        // Multi-part content may arrive as a JSON string of the OpenAI parts list.
        Some(Value::String(text)) if text.starts_with('[') => match serde_json::from_str(text) {
            Ok(parts @ Value::Array(_)) => openai_content(&parts),
            _ => vec![text_part(text)],
        },
        Some(value) => openai_content(value),
        None => vec![],
    };
    let contents_prefix = format!("{}.", field("contents"));
    for part in regroup(fields.iter(), &contents_prefix) {
        let kind = part
            .get("message_content.type")
            .and_then(Value::as_str)
            .unwrap_or("text");
        match kind {
            "text" => content.push(text_part(
                part.get("message_content.text").and_then(Value::as_str).unwrap_or(""),
            )),
            "image" => content.push(json!({"type": "image", "url": part.get("message_content.image.image.url").cloned().unwrap_or(Value::Null)})),
            _ => content.push(Value::Object(part)),
        }
    }
    let mut out = message(role, content);
    let calls_prefix = format!("{}.", field("tool_calls"));
    let [id_key, name_key, arguments_key] = tool_call_fields;
    let calls: Vec<Value> = regroup(fields.iter(), &calls_prefix)
        .into_iter()
        .map(|call| {
            json!({
                "id": call.get(id_key).cloned().unwrap_or(Value::Null),
                "name": call.get(name_key).cloned().unwrap_or(Value::Null),
                "arguments": call.get(arguments_key).cloned().unwrap_or(Value::Null),
            })
        })
        .collect();
    if !calls.is_empty() {
        out.insert("tool_calls".into(), Value::Array(calls));
    }
    for name in ["tool_call_id", "name"] {
        if let Some(value) = fields.get(&field(name)) {
            out.insert(name.into(), value.clone());
        }
    }
    if let Some(reason) = fields.get(&field("finish_reason")) {
        out.insert("finish_reason".into(), reason.clone());
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn genai_tool_round_trip_normalizes() {
        let raw = json!([
            {"role": "user", "parts": [{"type": "text", "content": "Weather in Paris?"}]},
            {"role": "assistant", "parts": [{"type": "tool_call", "id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}}]},
            {"role": "tool", "parts": [{"type": "tool_call_response", "id": "call_1", "result": "rainy, 57F"}]}
        ]);
        let messages = from_genai_messages(&raw).unwrap();
        assert_eq!(messages[0]["content"][0]["text"], "Weather in Paris?");
        assert_eq!(messages[1]["tool_calls"][0]["name"], "get_weather");
        assert_eq!(
            messages[1]["tool_calls"][0]["arguments"],
            "{\"city\":\"Paris\"}"
        );
        assert_eq!(messages[2]["tool_call_id"], "call_1");
        assert_eq!(messages[2]["content"][0]["text"], "rainy, 57F");
        let text = flatten_text(&messages);
        assert!(text.contains("Weather in Paris?") && text.contains("rainy, 57F"));
    }

    /// Every shape a chat message takes (and some it should not), normalized as the
    /// borrowing implementation this replaced normalized them (its output, recorded).
    #[test]
    fn openai_messages_normalize_every_shape() {
        let cases = [
            (
                json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]),
                json!([{"content":[{"text":"be brief","type":"text"}],"role":"system"},
                    {"content":[{"text":"hi","type":"text"}],"role":"user"}]),
            ),
            (
                json!([{"role": "user", "content": [{"type": "text", "text": "what is this"},
                    {"type": "image_url", "image_url": {"url": "https://x/y.png"}}, "bare"]}]),
                json!([{"content":[{"text":"what is this","type":"text"},
                    {"type":"image","url":"https://x/y.png"},{"text":"bare","type":"text"}],
                    "role":"user"}]),
            ),
            (
                json!([{"role": "assistant", "content": null, "refusal": "no", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                    {"id": "c2", "name": "flat", "arguments": {"a": 1}},
                    {"id": "c3", "function": {"arguments": "x"}, "name": "outer"},
                    {"function": "not an object"}, 7]}]),
                json!([{"content":[{"text":"no","type":"refusal"}],"role":"assistant",
                    "tool_calls":[{"arguments":"{}","id":"c1","name":"f"},
                    {"arguments":{"a":1},"id":"c2","name":"flat"},
                    {"arguments":"x","id":"c3","name":"outer"},
                    {"arguments":null,"id":null,"name":null},
                    {"arguments":null,"id":null,"name":null}]}]),
            ),
            (
                json!([{"role": "assistant", "content": "", "tool_calls": []},
                    {"role": "tool", "tool_call_id": "c1", "content": "42", "name": null},
                    {"role": "tool", "tool_call_id": null, "name": "n", "content": 5}]),
                json!([{"content":[{"text":"","type":"text"}],"role":"assistant"},
                    {"content":[{"text":"42","type":"text"}],"role":"tool","tool_call_id":"c1"},
                    {"content":[{"text":"5","type":"text"}],"name":"n","role":"tool"}]),
            ),
            (
                json!([{"content": "no role"}, {"role": 3, "content": {"odd": true}}, "text", null, []]),
                json!([{"content":[{"text":"no role","type":"text"}],"role":"user"},
                    {"content":[{"text":"{\"odd\":true}","type":"text"}],"role":"user"},
                    {"content":[],"role":"user"},{"content":[],"role":"user"},
                    {"content":[],"role":"user"}]),
            ),
        ];
        for (raw, normalized) in cases {
            assert_eq!(
                from_openai_messages(&raw).as_ref(),
                Some(&normalized),
                "{raw}"
            );
            assert_eq!(into_openai_messages(raw), Some(normalized));
        }
        for not_a_list in [json!({"not": "a list"}), json!("text"), Value::Null] {
            assert_eq!(from_openai_messages(&not_a_list), None);
            assert_eq!(into_openai_messages(not_a_list), None);
        }
    }

    #[test]
    fn openai_parts_become_typed_parts() {
        let raw = json!([{"role": "user", "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": "https://x/y.png"}}
        ]}]);
        let messages = from_openai_messages(&raw).unwrap();
        assert_eq!(
            messages[0]["content"][1],
            json!({"type": "image", "url": "https://x/y.png"})
        );
    }

    #[test]
    fn responses_items_become_messages_with_tool_calls() {
        let input = json!([
            {"role": "user", "content": "Weather in Paris?"},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
            {"type": "function_call_output", "call_id": "c1", "output": "rainy"}
        ]);
        let messages = from_responses_input(&json!("Be brief."), &input);
        assert_eq!(messages[0]["role"], "system");
        assert_eq!(messages[1]["content"][0]["text"], "Weather in Paris?");
        assert_eq!(messages[2]["tool_calls"][0]["id"], "c1");
        assert_eq!(messages[3]["role"], "tool");
        assert_eq!(messages[3]["content"][0]["text"], "rainy");
        let output = from_responses_output(&json!([
            {"type": "reasoning", "summary": []},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "It rains."}]}
        ]));
        assert_eq!(output[0]["content"][0]["type"], "reasoning");
        assert_eq!(output[1]["content"][0]["text"], "It rains.");
    }

    #[test]
    fn anthropic_blocks_become_messages() {
        let messages = from_anthropic_messages(
            &json!([{"type": "text", "text": "You help."}]),
            &json!([
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "w", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "rainy"}]}
            ]),
        );
        assert_eq!(messages[0]["content"][0]["text"], "You help.");
        assert_eq!(
            messages[2]["tool_calls"][0]["arguments"],
            "{\"city\":\"Paris\"}"
        );
        assert_eq!(messages[3]["role"], "tool");
        assert_eq!(messages[3]["tool_call_id"], "t1");
        let text = flatten_text(&messages);
        assert!(text.contains("rainy") && text.contains("Weather?"));
    }
}
