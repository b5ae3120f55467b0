//! Gateway settings: named upstream providers, aliases with fallbacks, timeouts, capture
//! policy. Read from the `[gateway]` table of the TOML config and from `--provider` flags.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// Which wire dialect an upstream speaks beyond the OpenAI-compatible routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// OpenAI and every OpenAI-compatible server (vLLM, Ollama, Groq, Together, OpenRouter).
    #[default]
    Openai,
    /// Anthropic's Messages API (`/v1/messages`).
    Anthropic,
    /// Azure OpenAI: `{base}/openai/deployments/{model}/…?api-version=…`, `api-key` header.
    Azure,
}

/// One named upstream.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub name: String,
    /// Base URL including the version path, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    #[serde(default)]
    pub kind: Option<ProviderKind>,
    /// Environment variable holding the key; without one the client's credentials pass through.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Extra headers sent upstream on every call.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Azure `api-version` query parameter.
    #[serde(default)]
    pub api_version: Option<String>,
    /// Speak HTTP/2 without TLS ("h2c", prior knowledge) to an `http://` upstream that
    /// supports it (Envoy, an internal gateway, a sidecar): every call shares one
    /// connection instead of holding its own. `https://` upstreams negotiate HTTP/2 by
    /// ALPN without this.
    #[serde(default)]
    pub http2_prior_knowledge: bool,
}

impl ProviderConfig {
    /// `name=url` as given on the command line; the kind is guessed from the name and URL.
    pub fn parse_flag(text: &str) -> Result<ProviderConfig, String> {
        let (name, url) = text
            .split_once('=')
            .ok_or_else(|| format!("--provider wants name=url, got {text:?}"))?;
        let provider = ProviderConfig {
            name: name.trim().to_string(),
            base_url: url.trim().to_string(),
            kind: None,
            api_key_env: None,
            headers: BTreeMap::new(),
            api_version: None,
            http2_prior_knowledge: false,
        };
        provider.validate()?;
        Ok(provider)
    }

    pub fn kind(&self) -> ProviderKind {
        self.kind.unwrap_or_else(|| {
            if self.name.contains("anthropic") || self.base_url.contains("anthropic.com") {
                ProviderKind::Anthropic
            } else if self.name.contains("azure") || self.base_url.contains(".azure.com") {
                ProviderKind::Azure
            } else {
                ProviderKind::Openai
            }
        })
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() || self.name.contains('/') {
            return Err(format!(
                "provider name {:?} must be non-empty and without '/'",
                self.name
            ));
        }
        let url = self.base_url.trim_end_matches('/');
        let parsed: hyper::Uri = url
            .parse()
            .map_err(|e| format!("provider {} base_url {url:?}: {e}", self.name))?;
        match parsed.scheme_str() {
            Some("https") if self.http2_prior_knowledge => Err(format!(
                "provider {}: http2_prior_knowledge is for http:// upstreams (https:// negotiates HTTP/2 itself)",
                self.name
            )),
            Some("http") | Some("https") => Ok(()),
            _ => Err(format!(
                "provider {} base_url {url:?} must start with http:// or https://",
                self.name
            )),
        }
    }
}

/// What a `store: false` request keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum StoreFalse {
    /// Honour the client's wish not to store: record metadata (model, usage, timing) only.
    #[default]
    MetadataOnly,
    /// Record the full call anyway (the field only concerns OpenAI's own storage).
    Full,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    pub providers: Vec<ProviderConfig>,
    /// Provider for models without a `provider/` prefix; the first provider when unset.
    pub default_provider: Option<String>,
    /// `alias = ["provider/model", …]`: tried in order on 429, 5xx, connect errors and timeouts.
    pub aliases: BTreeMap<String, Vec<String>>,
    #[serde(with = "humantime_serde_compat")]
    pub connect_timeout: Duration,
    /// Until the upstream's response headers arrive.
    #[serde(with = "humantime_serde_compat")]
    pub first_byte_timeout: Duration,
    /// Whole call including a streamed body.
    #[serde(with = "humantime_serde_compat")]
    pub total_timeout: Duration,
    /// Infer sessions for chat calls that carry no session id (see docs/GATEWAY.md).
    pub infer_sessions: bool,
    pub store_false: StoreFalse,
    /// Captured calls waiting for the store; beyond this they are counted and dropped.
    pub queue_capacity: usize,
    /// Bytes of a response body kept for the record (the client always gets all of it).
    pub max_capture_bytes: usize,
    /// Send `x-llmtrace-cost-usd` on complete (non-streamed) answers of up to 1 MiB: the
    /// answer is read whole before it is relayed, so its usage can be priced first.
    pub cost_header: bool,
    /// Where the gateway keeps its state between runs (the session-inference table); set
    /// by the server to its data directory, not configurable on its own.
    #[serde(skip)]
    pub state_dir: Option<std::path::PathBuf>,
}

impl Default for GatewayConfig {
    fn default() -> GatewayConfig {
        GatewayConfig {
            providers: Vec::new(),
            default_provider: None,
            aliases: BTreeMap::new(),
            connect_timeout: Duration::from_secs(10),
            first_byte_timeout: Duration::from_secs(300),
            total_timeout: Duration::from_secs(900),
            infer_sessions: true,
            store_false: StoreFalse::MetadataOnly,
            queue_capacity: 10_000,
            max_capture_bytes: 16 << 20,
            cost_header: true,
            state_dir: None,
        }
    }
}

impl GatewayConfig {
    /// The providers in effect: the configured ones, or OpenAI and Anthropic's public APIs
    /// (the client's own key passes through) when none are configured.
    pub fn effective_providers(&self) -> Vec<ProviderConfig> {
        if !self.providers.is_empty() {
            return self.providers.clone();
        }
        [
            "openai=https://api.openai.com/v1",
            "anthropic=https://api.anthropic.com/v1",
        ]
        .into_iter()
        .filter_map(|flag| ProviderConfig::parse_flag(flag).ok())
        .collect()
    }

    pub fn validate(&self) -> Result<(), String> {
        let providers = self.effective_providers();
        let mut names = std::collections::HashSet::new();
        for provider in &providers {
            provider.validate()?;
            if !names.insert(provider.name.as_str()) {
                return Err(format!("provider {:?} is configured twice", provider.name));
            }
        }
        if let Some(name) = &self.default_provider
            && !names.contains(name.as_str())
        {
            return Err(format!(
                "default_provider {name:?} is not a configured provider"
            ));
        }
        for (alias, targets) in &self.aliases {
            if targets.is_empty() {
                return Err(format!("alias {alias:?} has no targets"));
            }
            for target in targets {
                let known = target
                    .split_once('/')
                    .is_some_and(|(provider, _)| names.contains(provider));
                if !known {
                    return Err(format!(
                        "alias {alias:?}: target {target:?} must be provider/model with a configured provider"
                    ));
                }
            }
        }
        if self.queue_capacity == 0 {
            return Err("gateway queue_capacity must be positive".into());
        }
        Ok(())
    }
}

/// Durations in the file as humantime text (`"30s"`, `"2m"`).
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_kinds_are_guessed() {
        let openai = ProviderConfig::parse_flag("openai=https://api.openai.com/v1").unwrap();
        assert_eq!(openai.kind(), ProviderKind::Openai);
        let claude = ProviderConfig::parse_flag("claude=https://api.anthropic.com/v1").unwrap();
        assert_eq!(claude.kind(), ProviderKind::Anthropic);
        assert!(ProviderConfig::parse_flag("openai").is_err());
        assert!(ProviderConfig::parse_flag("x=ftp://host").is_err());
        assert!(ProviderConfig::parse_flag("a/b=http://host").is_err());
    }

    #[test]
    fn http2_prior_knowledge_is_only_for_plain_http() {
        let parse = |url: &str| -> Result<ProviderConfig, String> {
            let provider: ProviderConfig = serde_json::from_value(serde_json::json!(
                {"name": "edge", "base_url": url, "http2_prior_knowledge": true}
            ))
            .map_err(|e| e.to_string())?;
            provider.validate().map(|()| provider)
        };
        assert!(
            parse("http://127.0.0.1:8080/v1")
                .unwrap()
                .http2_prior_knowledge
        );
        let refused = parse("https://api.openai.com/v1").unwrap_err();
        assert!(refused.contains("http2_prior_knowledge"), "{refused}");
    }

    #[test]
    fn aliases_must_name_known_providers() {
        let mut config = GatewayConfig {
            providers: vec![ProviderConfig::parse_flag("local=http://127.0.0.1:1/v1").unwrap()],
            ..GatewayConfig::default()
        };
        config
            .aliases
            .insert("smart".into(), vec!["local/llama".into()]);
        assert_eq!(config.validate(), Ok(()));
        config
            .aliases
            .insert("fast".into(), vec!["nowhere/llama".into()]);
        assert!(config.validate().unwrap_err().contains("fast"));
    }
}
