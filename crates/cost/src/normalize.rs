//! Model names as sources send them → the names the catalogue uses.
//!
//! One name yields an ordered list of candidates, most specific first, so a dated version
//! priced on its own (`gpt-4o-2024-05-13`) wins over its family (`gpt-4o`):
//! the name as sent; a configured deployment mapping; without provider path prefixes
//! (`openai/gpt-4o`, `models/gemini-2.5-pro`); without Bedrock region/vendor prefixes and
//! version suffixes (`us.anthropic.claude-sonnet-4-5-20250929-v1:0`) or Vertex `@date`; and
//! finally without a date (`-2024-08-06`, `-20250929`, `-0613`) or `-latest` suffix.
//! Fine-tuned models (`ft:base:org::id`) only match an `ft:base` entry: a fine-tune is never
//! priced as its base model.

use std::collections::BTreeMap;

/// Lower-cased and trimmed: the form every index key has.
pub fn clean(name: &str) -> String {
    name.trim().to_ascii_lowercase()
}

const BEDROCK_REGIONS: [&str; 7] = ["us.", "eu.", "apac.", "global.", "us-gov.", "jp.", "au."];
const BEDROCK_VENDORS: [&str; 9] = [
    "anthropic.",
    "meta.",
    "mistral.",
    "cohere.",
    "amazon.",
    "deepseek.",
    "openai.",
    "ai21.",
    "qwen.",
];

fn push(out: &mut Vec<String>, name: &str) {
    if !name.is_empty() && !out.iter().any(|known| known == name) {
        out.push(name.to_string());
    }
}

fn strip_version_suffix(name: &str) -> Option<&str> {
    // Bedrock `-v1:0`, `-v2`; Vertex `-v2` before an `@date`
    let (head, tail) = name.rsplit_once("-v")?;
    let digits = tail
        .split(':')
        .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
    digits.then_some(head)
}

fn strip_date(name: &str) -> Option<&str> {
    if let Some(head) = name.strip_suffix("-latest") {
        return Some(head);
    }
    let bytes = name.as_bytes();
    let digits = |range: std::ops::Range<usize>| bytes[range].iter().all(u8::is_ascii_digit);
    let n = bytes.len();
    // -YYYY-MM-DD
    if n > 11
        && bytes[n - 11] == b'-'
        && bytes[n - 6] == b'-'
        && bytes[n - 3] == b'-'
        && digits(n - 10..n - 6)
        && digits(n - 5..n - 3)
        && digits(n - 2..n)
    {
        return Some(&name[..n - 11]);
    }
    // -YYYYMMDD or -MMDD
    for width in [8, 4] {
        if n > width + 1 && bytes[n - width - 1] == b'-' && digits(n - width..n) {
            return Some(&name[..n - width - 1]);
        }
    }
    None
}

/// Candidate catalogue names for `model`, most specific first.
pub fn candidates(model: &str, deployments: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::with_capacity(6);
    let name = clean(model);
    if let Some(mapped) = deployments.get(&name) {
        push(&mut out, &clean(mapped));
    }
    if let Some(rest) = name.strip_prefix("ft:") {
        let base = rest.split(':').next().unwrap_or(rest);
        push(&mut out, &name);
        push(&mut out, &format!("ft:{base}"));
        return out;
    }
    push(&mut out, &name);
    let mut short = name.rsplit('/').next().unwrap_or(&name).to_string();
    if let Some(mapped) = deployments.get(&short) {
        push(&mut out, &clean(mapped));
    }
    push(&mut out, &short);
    // Bedrock: region and vendor prefixes, version suffix; Vertex: @version
    for region in BEDROCK_REGIONS {
        if let Some(rest) = short.strip_prefix(region)
            && BEDROCK_VENDORS
                .iter()
                .any(|vendor| rest.starts_with(vendor))
        {
            short = rest.to_string();
        }
    }
    for vendor in BEDROCK_VENDORS {
        if let Some(rest) = short.strip_prefix(vendor) {
            short = rest.to_string();
        }
    }
    if let Some((head, _)) = short.split_once('@') {
        short = head.to_string();
    }
    if let Some(head) = strip_version_suffix(&short) {
        short = head.to_string();
    }
    push(&mut out, &short);
    while let Some(head) = strip_date(&short) {
        short = head.to_string();
        push(&mut out, &short);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last(model: &str) -> String {
        candidates(model, &BTreeMap::new()).pop().unwrap()
    }

    #[test]
    fn provider_prefixes_regions_versions_and_dates_are_peeled_off() {
        assert_eq!(last("gpt-4o-2024-08-06"), "gpt-4o");
        assert_eq!(last("openai/gpt-4o"), "gpt-4o");
        assert_eq!(last("models/gemini-2.5-pro"), "gemini-2.5-pro");
        assert_eq!(last("claude-sonnet-4-5-20250929"), "claude-sonnet-4-5");
        assert_eq!(
            last("us.anthropic.claude-sonnet-4-5-20250929-v1:0"),
            "claude-sonnet-4-5"
        );
        assert_eq!(
            last("anthropic.claude-3-haiku-20240307-v1:0"),
            "claude-3-haiku"
        );
        assert_eq!(last("claude-3-5-sonnet-v2@20241022"), "claude-3-5-sonnet");
        assert_eq!(last("gpt-4-0613"), "gpt-4");
        assert_eq!(last("claude-3-5-haiku-latest"), "claude-3-5-haiku");
        assert_eq!(last("GPT-4o-Mini"), "gpt-4o-mini");
        // names that merely end in digits keep them
        assert_eq!(last("gpt-5.1"), "gpt-5.1");
        assert_eq!(last("o3"), "o3");
    }

    #[test]
    fn the_dated_name_is_tried_before_its_family() {
        let names = candidates("gpt-4o-2024-05-13", &BTreeMap::new());
        assert_eq!(names, ["gpt-4o-2024-05-13", "gpt-4o"]);
    }

    #[test]
    fn fine_tunes_never_fall_back_to_their_base_model() {
        let names = candidates("ft:gpt-4o-mini-2024-07-18:acme::abc123", &BTreeMap::new());
        assert_eq!(
            names,
            [
                "ft:gpt-4o-mini-2024-07-18:acme::abc123",
                "ft:gpt-4o-mini-2024-07-18"
            ]
        );
    }

    #[test]
    fn deployment_names_map_first() {
        let deployments = BTreeMap::from([("prod-chat".to_string(), "gpt-4o".to_string())]);
        assert_eq!(candidates("Prod-Chat", &deployments)[0], "gpt-4o");
        assert_eq!(candidates("azure/prod-chat", &deployments)[1], "gpt-4o");
    }
}
