//! The model APIs the gateway understands; every other path is relayed as a generic call.

/// Which API a call used, from its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Chat,
    Responses,
    Embeddings,
    Completions,
    Models,
    AnthropicMessages,
    Other,
}

impl Api {
    pub fn of(path: &str) -> Api {
        match path.trim_end_matches('/') {
            "/v1/chat/completions" => Api::Chat,
            "/v1/responses" => Api::Responses,
            "/v1/embeddings" => Api::Embeddings,
            "/v1/completions" => Api::Completions,
            "/v1/models" => Api::Models,
            "/v1/messages" => Api::AnthropicMessages,
            _ => Api::Other,
        }
    }

    /// The operation name recorded on the span (`gen_ai.operation.name` vocabulary).
    pub fn operation(self) -> &'static str {
        match self {
            Api::Chat | Api::AnthropicMessages => "chat",
            Api::Responses => "responses",
            Api::Embeddings => "embeddings",
            Api::Completions => "text_completion",
            Api::Models => "models",
            Api::Other => "http",
        }
    }

    /// Whether a streaming call of this API reports usage only when asked
    /// (`stream_options.include_usage`).
    pub fn usage_on_request(self) -> bool {
        matches!(self, Api::Chat | Api::Completions)
    }
}
