//! One typed configuration: defaults < TOML file < `LLMTRACE_*` environment < flags.
//! Every setting is listed, with its default, in docs/CONFIG.md (a test keeps them in sync).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use llmtrace_cost::PricingConfig;
use llmtrace_gateway::GatewayConfig;
use llmtrace_store::{Durability, WalCompression};
use serde::Deserialize;

/// A listener address, or `None` when turned off (`off`).
pub type Listen = Option<String>;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: Listen,
    pub otlp_http_listen: Listen,
    pub otlp_grpc_listen: Listen,
    pub durability: String,
    /// `none` (default) or `zstd`: how WAL records are compressed.
    pub wal_compression: String,
    pub max_body_bytes: usize,
    pub default_project: String,
    pub retention_days: u32,
    pub flush_interval_seconds: u64,
    pub max_inflight_ingest: usize,
    /// Async worker threads; 0 means one per CPU core.
    pub worker_threads: usize,
    /// The `[gateway]` table: providers, aliases, timeouts, capture policy.
    pub gateway: GatewayConfig,
    /// The `[pricing]` table: price overrides and deployment names (reloaded live).
    pub pricing: PricingConfig,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            data_dir: PathBuf::from("./llmtrace-data"),
            listen: Some("127.0.0.1:8080".into()),
            otlp_http_listen: Some("127.0.0.1:4318".into()),
            otlp_grpc_listen: Some("127.0.0.1:4317".into()),
            durability: "fsync".into(),
            wal_compression: "none".into(),
            max_body_bytes: 32 << 20,
            default_project: "default".into(),
            retention_days: 30,
            flush_interval_seconds: 30,
            max_inflight_ingest: 256,
            worker_threads: 0,
            gateway: GatewayConfig::default(),
            pricing: PricingConfig::default(),
        }
    }
}

/// The file format: every key optional, unknown keys rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    otlp_http_listen: Option<String>,
    otlp_grpc_listen: Option<String>,
    durability: Option<String>,
    wal_compression: Option<String>,
    max_body_bytes: Option<usize>,
    default_project: Option<String>,
    retention_days: Option<u32>,
    flush_interval_seconds: Option<u64>,
    max_inflight_ingest: Option<usize>,
    worker_threads: Option<usize>,
    gateway: Option<GatewayConfig>,
    pricing: Option<PricingConfig>,
}

/// Setting names, as used in the file; the environment variable is `LLMTRACE_<NAME>`.
pub const SETTINGS: [&str; 12] = [
    "data_dir",
    "listen",
    "otlp_http_listen",
    "otlp_grpc_listen",
    "durability",
    "wal_compression",
    "max_body_bytes",
    "default_project",
    "retention_days",
    "flush_interval_seconds",
    "max_inflight_ingest",
    "worker_threads",
];

fn listen(value: &str) -> Listen {
    match value.trim() {
        "" | "off" | "none" | "false" => None,
        address => Some(address.to_string()),
    }
}

impl Config {
    /// Applies one setting given as text (from the environment or a flag).
    pub fn set(&mut self, name: &str, value: &str) -> Result<()> {
        let number = |what: &str| -> Result<u64> {
            value
                .trim()
                .parse()
                .with_context(|| format!("{what} must be a whole number, got {value:?}"))
        };
        match name {
            "data_dir" => self.data_dir = PathBuf::from(value),
            "listen" => self.listen = listen(value),
            "otlp_http_listen" => self.otlp_http_listen = listen(value),
            "otlp_grpc_listen" => self.otlp_grpc_listen = listen(value),
            "durability" => self.durability = value.to_string(),
            "wal_compression" => self.wal_compression = value.to_string(),
            "max_body_bytes" => self.max_body_bytes = number(name)? as usize,
            "default_project" => self.default_project = value.to_string(),
            "retention_days" => self.retention_days = number(name)? as u32,
            "flush_interval_seconds" => self.flush_interval_seconds = number(name)?,
            "max_inflight_ingest" => self.max_inflight_ingest = number(name)? as usize,
            "worker_threads" => self.worker_threads = number(name)? as usize,
            other => bail!("unknown setting {other:?}"),
        }
        Ok(())
    }

    /// Loads defaults, then the file (if any), then `LLMTRACE_*` variables from `env`.
    pub fn load(file: Option<&std::path::Path>, env: &HashMap<String, String>) -> Result<Config> {
        let mut config = Config::default();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            let parsed: FileConfig = toml::from_str(&text)
                .with_context(|| format!("config file {} is invalid", path.display()))?;
            config.apply_file(parsed);
        }
        for name in SETTINGS {
            let variable = format!("LLMTRACE_{}", name.to_ascii_uppercase());
            if let Some(value) = env.get(&variable) {
                config
                    .set(name, value)
                    .with_context(|| format!("environment variable {variable}"))?;
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// The `[pricing]` table of a config file, read again (for live reloads).
    pub fn pricing_from_file(path: &std::path::Path) -> Result<PricingConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let parsed: FileConfig = toml::from_str(&text)
            .with_context(|| format!("config file {} is invalid", path.display()))?;
        Ok(parsed.pricing.unwrap_or_default())
    }

    fn apply_file(&mut self, file: FileConfig) {
        let FileConfig {
            data_dir,
            listen: http,
            otlp_http_listen,
            otlp_grpc_listen,
            durability,
            wal_compression,
            max_body_bytes,
            default_project,
            retention_days,
            flush_interval_seconds,
            max_inflight_ingest,
            worker_threads,
            gateway,
            pricing,
        } = file;
        if let Some(v) = pricing {
            self.pricing = v;
        }
        if let Some(v) = worker_threads {
            self.worker_threads = v;
        }
        if let Some(v) = gateway {
            self.gateway = v;
        }
        if let Some(v) = data_dir {
            self.data_dir = v;
        }
        if let Some(v) = http {
            self.listen = listen(&v);
        }
        if let Some(v) = otlp_http_listen {
            self.otlp_http_listen = listen(&v);
        }
        if let Some(v) = otlp_grpc_listen {
            self.otlp_grpc_listen = listen(&v);
        }
        if let Some(v) = durability {
            self.durability = v;
        }
        if let Some(v) = wal_compression {
            self.wal_compression = v;
        }
        if let Some(v) = max_body_bytes {
            self.max_body_bytes = v;
        }
        if let Some(v) = default_project {
            self.default_project = v;
        }
        if let Some(v) = retention_days {
            self.retention_days = v;
        }
        if let Some(v) = flush_interval_seconds {
            self.flush_interval_seconds = v;
        }
        if let Some(v) = max_inflight_ingest {
            self.max_inflight_ingest = v;
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.durability()?;
        self.wal_compression()?;
        if !llmtrace_ingest::valid_project(&self.default_project) {
            bail!(
                "default_project {:?} is not a valid project name",
                self.default_project
            );
        }
        if self.max_body_bytes == 0 || self.max_inflight_ingest == 0 {
            bail!("max_body_bytes and max_inflight_ingest must be positive");
        }
        self.gateway
            .validate()
            .map_err(|e| anyhow::anyhow!("[gateway] {e}"))?;
        Ok(())
    }

    /// `fsync`, `none`, or `interval:<duration>` (e.g. `interval:100ms`).
    pub fn durability(&self) -> Result<Durability> {
        match self.durability.as_str() {
            "fsync" => Ok(Durability::Fsync),
            "none" => Ok(Durability::None),
            other => match other.strip_prefix("interval:") {
                Some(every) => Ok(Durability::Interval(
                    humantime::parse_duration(every)
                        .with_context(|| format!("durability interval {every:?}"))?,
                )),
                None => {
                    bail!("durability must be fsync, none or interval:<duration>, got {other:?}")
                }
            },
        }
    }

    /// `none` (zstd's fastest setting: records about as large as their rows) or `zstd`
    /// (level 1: about a third of the bytes for more CPU per span).
    pub fn wal_compression(&self) -> Result<WalCompression> {
        self.wal_compression.parse().map_err(anyhow::Error::msg)
    }

    pub fn flush_interval(&self) -> Duration {
        Duration::from_secs(self.flush_interval_seconds.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_is_defaults_then_file_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("llmtrace.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\nretention_days = 7\notlp_grpc_listen = \"off\"\n",
        )
        .unwrap();
        let env = HashMap::from([("LLMTRACE_RETENTION_DAYS".to_string(), "3".to_string())]);
        let config = Config::load(Some(&file), &env).unwrap();
        assert_eq!(config.listen.as_deref(), Some("127.0.0.1:9000"));
        assert_eq!(config.retention_days, 3);
        assert_eq!(config.otlp_grpc_listen, None);
        assert_eq!(config.otlp_http_listen.as_deref(), Some("127.0.0.1:4318"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("llmtrace.toml");
        std::fs::write(&file, "lisen = \"x\"\n").unwrap();
        assert!(Config::load(Some(&file), &HashMap::new()).is_err());
        let env = HashMap::from([("LLMTRACE_DURABILITY".to_string(), "sometimes".to_string())]);
        assert!(Config::load(None, &env).is_err());
        let env = HashMap::from([(
            "LLMTRACE_DURABILITY".to_string(),
            "interval:50ms".to_string(),
        )]);
        assert_eq!(
            Config::load(None, &env).unwrap().durability().unwrap(),
            Durability::Interval(Duration::from_millis(50))
        );
        assert_eq!(
            Config::default().wal_compression().unwrap(),
            WalCompression::None
        );
        let env = HashMap::from([("LLMTRACE_WAL_COMPRESSION".to_string(), "zstd".to_string())]);
        assert_eq!(
            Config::load(None, &env).unwrap().wal_compression().unwrap(),
            WalCompression::Zstd
        );
        let env = HashMap::from([("LLMTRACE_WAL_COMPRESSION".to_string(), "lz4".to_string())]);
        assert!(Config::load(None, &env).is_err());
    }

    #[test]
    fn gateway_table_parses_with_providers_and_aliases() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("llmtrace.toml");
        std::fs::write(
            &file,
            r#"
[gateway]
first_byte_timeout = "20s"
store_false = "full"

[[gateway.providers]]
name = "local"
base_url = "http://127.0.0.1:11434/v1"

[[gateway.providers]]
name = "claude"
base_url = "https://api.anthropic.com/v1"
kind = "anthropic"
api_key_env = "ANTHROPIC_API_KEY"

[gateway.aliases]
smart = ["claude/claude-sonnet-4-5", "local/llama3"]
"#,
        )
        .unwrap();
        let config = Config::load(Some(&file), &HashMap::new()).unwrap();
        assert_eq!(config.gateway.providers.len(), 2);
        assert_eq!(config.gateway.first_byte_timeout, Duration::from_secs(20));
        assert_eq!(config.gateway.aliases["smart"].len(), 2);
        std::fs::write(&file, "[gateway]\naliases = { smart = [\"nowhere/x\"] }\n").unwrap();
        let err = format!(
            "{:#}",
            Config::load(Some(&file), &HashMap::new()).unwrap_err()
        );
        assert!(err.contains("smart"), "{err}");
    }

    #[test]
    fn every_setting_is_documented() {
        let doc = include_str!("../../../docs/CONFIG.md");
        for name in SETTINGS {
            assert!(
                doc.contains(&format!("`{name}`")),
                "docs/CONFIG.md does not list {name}"
            );
            let variable = format!("LLMTRACE_{}", name.to_ascii_uppercase());
            assert!(
                doc.contains(&variable),
                "docs/CONFIG.md does not list {variable}"
            );
        }
    }
}
