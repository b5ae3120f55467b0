//! Where a call goes: provider resolution (prefix, alias, default), the upstream URL and
//! headers, and the pooled HTTP(S) client.

use std::collections::HashMap;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, header};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::api::Api;
use crate::config::{GatewayConfig, ProviderConfig, ProviderKind};

pub type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The shared clients: keep-alive pools, HTTP/1.1 and HTTP/2 over TLS (system roots), and
/// — only when a provider asks for it — one that speaks only HTTP/2, for
/// `http2_prior_knowledge` providers.
pub struct Clients {
    http: HttpClient,
    h2c: Option<HttpClient>,
}

impl Clients {
    pub fn new(config: &GatewayConfig) -> Result<Clients, String> {
        // the built-in providers are HTTPS: only configured ones can ask for h2c
        let h2c = config
            .providers
            .iter()
            .any(|provider| provider.http2_prior_knowledge);
        Ok(Clients {
            http: client(config, false)?,
            h2c: h2c.then(|| client(config, true)).transpose()?,
        })
    }

    pub fn of(&self, provider: &Provider) -> &HttpClient {
        match &self.h2c {
            Some(h2c) if provider.http2_prior_knowledge => h2c,
            _ => &self.http,
        }
    }
}

fn client(config: &GatewayConfig, http2_only: bool) -> Result<HttpClient, String> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.connect_timeout));
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS setup failed: {e}"))?
    .with_root_certificates(native_roots())
    .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(std::time::Duration::from_secs(90))
        .http2_only(http2_only)
        .build(https))
}

/// The system's CA roots; a machine without any still proxies plain-HTTP upstreams.
fn native_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        tracing::warn!("no system CA certificates found: HTTPS upstreams will fail");
    }
    roots
}

/// A provider ready to receive calls.
#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    base_url: String,
    api_key: Option<String>,
    headers: Vec<(HeaderName, HeaderValue)>,
    api_version: Option<String>,
    http2_prior_knowledge: bool,
}

impl Provider {
    pub fn new(config: &ProviderConfig, env: &HashMap<String, String>) -> Result<Provider, String> {
        let api_key = match &config.api_key_env {
            Some(variable) => Some(env.get(variable).cloned().ok_or_else(|| {
                format!(
                    "provider {}: environment variable {variable} is not set",
                    config.name
                )
            })?),
            None => None,
        };
        let mut headers = Vec::new();
        for (name, value) in &config.headers {
            let name = HeaderName::try_from(name.as_str())
                .map_err(|e| format!("provider {}: header {name:?}: {e}", config.name))?;
            let value = HeaderValue::try_from(value.as_str())
                .map_err(|e| format!("provider {}: header {name}: {e}", config.name))?;
            headers.push((name, value));
        }
        Ok(Provider {
            name: config.name.clone(),
            kind: config.kind(),
            base_url: config.base_url.trim_end_matches('/').to_string(),
            api_key,
            headers,
            api_version: config.api_version.clone(),
            http2_prior_knowledge: config.http2_prior_knowledge,
        })
    }

    /// The upstream URL for a gateway path (`/v1/chat/completions` → `{base}/chat/completions`).
    pub fn url(&self, path: &str, query: Option<&str>, model: Option<&str>) -> Result<Uri, String> {
        let rest = path.strip_prefix("/v1").unwrap_or(path);
        let mut url = match (self.kind, model) {
            (ProviderKind::Azure, Some(model)) if !rest.starts_with("/models") => {
                format!("{}/openai/deployments/{model}{rest}", self.base_url)
            }
            (ProviderKind::Azure, _) => format!("{}/openai{rest}", self.base_url),
            _ => format!("{}{rest}", self.base_url),
        };
        let mut params: Vec<String> = query
            .filter(|q| !q.is_empty())
            .map(|q| vec![q.to_string()])
            .unwrap_or_default();
        if let Some(version) = &self.api_version
            && !query.is_some_and(|q| q.contains("api-version="))
        {
            params.push(format!("api-version={version}"));
        }
        if !params.is_empty() {
            url.push('?');
            url.push_str(&params.join("&"));
        }
        url.parse()
            .map_err(|e| format!("upstream URL {url:?} is invalid: {e}"))
    }

    /// Headers for the upstream request: the client's, minus hop-by-hop and our own, with
    /// the provider's key (when configured) in the place this provider expects it.
    pub fn headers(&self, incoming: &HeaderMap, traceparent: Option<HeaderValue>) -> HeaderMap {
        let mut out = HeaderMap::with_capacity(incoming.len() + self.headers.len());
        for (name, value) in incoming {
            if forwarded(name) {
                out.append(name.clone(), value.clone());
            }
        }
        if let Some(key) = &self.api_key {
            out.remove(header::AUTHORIZATION);
            out.remove("x-api-key");
            out.remove("api-key");
            let value = |text: String| HeaderValue::try_from(text).ok();
            match self.kind {
                ProviderKind::Openai => {
                    if let Some(v) = value(format!("Bearer {key}")) {
                        out.insert(header::AUTHORIZATION, v);
                    }
                }
                ProviderKind::Anthropic => {
                    if let Some(v) = value(key.clone()) {
                        out.insert("x-api-key", v);
                    }
                }
                ProviderKind::Azure => {
                    if let Some(v) = value(key.clone()) {
                        out.insert("api-key", v);
                    }
                }
            }
        }
        if self.kind == ProviderKind::Anthropic && !out.contains_key("anthropic-version") {
            out.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
        }
        for (name, value) in &self.headers {
            out.insert(name.clone(), value.clone());
        }
        if let Some(traceparent) = traceparent {
            out.insert("traceparent", traceparent);
        }
        out
    }
}

/// Whether a client header goes upstream. Compression is not forwarded: the gateway reads
/// the response to record it, so it asks for identity and relays plain bytes.
fn forwarded(name: &HeaderName) -> bool {
    let name = name.as_str();
    !matches!(
        name,
        "host"
            | "content-length"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authorization"
            | "proxy-authenticate"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "accept-encoding"
            | "traceparent"
    ) && !name.starts_with("x-llmtrace-")
}

/// Whether an upstream response header goes back to the client.
pub fn relayed(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Where one call attempt goes.
#[derive(Debug, Clone)]
pub struct Target {
    pub provider: usize,
    /// The model sent upstream (`None` when the request names none).
    pub model: Option<String>,
}

/// The providers and routing rules.
pub struct Routes {
    pub providers: Vec<Provider>,
    default: usize,
    aliases: HashMap<String, Vec<(usize, String)>>,
}

impl Routes {
    pub fn new(config: &GatewayConfig, env: &HashMap<String, String>) -> Result<Routes, String> {
        config.validate()?;
        let providers = config
            .effective_providers()
            .iter()
            .map(|p| Provider::new(p, env))
            .collect::<Result<Vec<_>, _>>()?;
        let index = |name: &str| providers.iter().position(|p| p.name == name);
        let default = match &config.default_provider {
            Some(name) => index(name).unwrap_or(0),
            None => 0,
        };
        let mut aliases = HashMap::new();
        for (alias, targets) in &config.aliases {
            let resolved = targets
                .iter()
                .filter_map(|target| {
                    let (provider, model) = target.split_once('/')?;
                    Some((index(provider)?, model.to_string()))
                })
                .collect();
            aliases.insert(alias.clone(), resolved);
        }
        Ok(Routes {
            providers,
            default,
            aliases,
        })
    }

    /// The attempts for a call, in order, and the alias it used if any.
    /// `provider/model` picks a provider by name; an alias expands to its fallbacks;
    /// anything else goes to the default provider (for Anthropic's API: the first
    /// Anthropic provider).
    pub fn resolve(&self, api: Api, model: Option<&str>) -> (Vec<Target>, Option<String>) {
        if let Some(model) = model {
            if let Some(targets) = self.aliases.get(model) {
                let targets = targets
                    .iter()
                    .map(|(provider, model)| Target {
                        provider: *provider,
                        model: Some(model.clone()),
                    })
                    .collect();
                return (targets, Some(model.to_string()));
            }
            if let Some((name, rest)) = model.split_once('/')
                && let Some(provider) = self.providers.iter().position(|p| p.name == name)
            {
                let target = Target {
                    provider,
                    model: Some(rest.to_string()),
                };
                return (vec![target], None);
            }
        }
        let target = Target {
            provider: self.default_for(api),
            model: model.map(str::to_string),
        };
        (vec![target], None)
    }

    fn default_for(&self, api: Api) -> usize {
        let wants_anthropic = api == Api::AnthropicMessages;
        let default_is_anthropic = self.providers[self.default].kind == ProviderKind::Anthropic;
        if wants_anthropic != default_is_anthropic {
            let wanted = |p: &Provider| (p.kind == ProviderKind::Anthropic) == wants_anthropic;
            if let Some(index) = self.providers.iter().position(wanted) {
                return index;
            }
        }
        self.default
    }
}

/// Builds one upstream request.
pub fn request(
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<hyper::Request<Full<Bytes>>, String> {
    let mut builder = hyper::Request::builder().method(method).uri(uri);
    if let Some(map) = builder.headers_mut() {
        *map = headers;
    }
    builder
        .body(Full::new(body))
        .map_err(|e| format!("cannot build the upstream request: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(flags: &[&str]) -> Routes {
        let config = GatewayConfig {
            providers: flags
                .iter()
                .map(|f| ProviderConfig::parse_flag(f).unwrap())
                .collect(),
            aliases: [(
                "smart".to_string(),
                vec!["b/big".to_string(), "a/small".to_string()],
            )]
            .into(),
            ..GatewayConfig::default()
        };
        Routes::new(&config, &HashMap::new()).unwrap()
    }

    #[test]
    fn prefix_alias_and_default_routing() {
        let routes = routes(&[
            "a=http://127.0.0.1:1/v1",
            "b=http://127.0.0.1:2/v1",
            "anthropic=http://127.0.0.1:3/v1",
        ]);
        let (targets, alias) = routes.resolve(Api::Chat, Some("b/gpt-x"));
        assert_eq!(
            (targets[0].provider, targets[0].model.as_deref()),
            (1, Some("gpt-x"))
        );
        assert_eq!(alias, None);
        let (targets, alias) = routes.resolve(Api::Chat, Some("smart"));
        assert_eq!(targets.len(), 2);
        assert_eq!(
            (targets[1].provider, targets[1].model.as_deref()),
            (0, Some("small"))
        );
        assert_eq!(alias.as_deref(), Some("smart"));
        // an unknown prefix is part of the model name (OpenRouter's "vendor/model")
        let (targets, _) = routes.resolve(Api::Chat, Some("meta/llama"));
        assert_eq!(
            (targets[0].provider, targets[0].model.as_deref()),
            (0, Some("meta/llama"))
        );
        let (targets, _) = routes.resolve(Api::AnthropicMessages, Some("claude-x"));
        assert_eq!(targets[0].provider, 2);
    }

    #[test]
    fn urls_for_openai_compatible_and_azure() {
        let openai = Provider::new(
            &ProviderConfig::parse_flag("o=http://h:1/v1/").unwrap(),
            &HashMap::new(),
        )
        .unwrap();
        assert_eq!(
            openai
                .url("/v1/chat/completions", Some("a=1"), Some("m"))
                .unwrap()
                .to_string(),
            "http://h:1/v1/chat/completions?a=1"
        );
        let mut azure_config =
            ProviderConfig::parse_flag("azure=https://r.openai.azure.com").unwrap();
        azure_config.api_version = Some("2024-10-21".into());
        let azure = Provider::new(&azure_config, &HashMap::new()).unwrap();
        assert_eq!(azure.kind, ProviderKind::Azure);
        assert_eq!(
            azure
                .url("/v1/chat/completions", None, Some("gpt4o-prod"))
                .unwrap()
                .to_string(),
            "https://r.openai.azure.com/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21"
        );
    }

    #[test]
    fn configured_keys_replace_client_credentials_and_our_headers_stay_home() {
        let mut config = ProviderConfig::parse_flag("anthropic=http://h/v1").unwrap();
        config.api_key_env = Some("KEY".into());
        let env = HashMap::from([("KEY".to_string(), "sk-ant".to_string())]);
        let provider = Provider::new(&config, &env).unwrap();
        let mut incoming = HeaderMap::new();
        incoming.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer client"),
        );
        incoming.insert("x-llmtrace-session-id", HeaderValue::from_static("s1"));
        incoming.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        incoming.insert("x-stainless-lang", HeaderValue::from_static("python"));
        let out = provider.headers(&incoming, None);
        assert_eq!(out.get("x-api-key").unwrap(), "sk-ant");
        assert!(out.get(header::AUTHORIZATION).is_none());
        assert!(out.get("x-llmtrace-session-id").is_none());
        assert!(out.get(header::ACCEPT_ENCODING).is_none());
        assert_eq!(out.get("x-stainless-lang").unwrap(), "python");
        assert_eq!(out.get("anthropic-version").unwrap(), "2023-06-01");
        let missing = Provider::new(&config, &HashMap::new()).unwrap_err();
        assert!(missing.contains("KEY"));
    }
}
