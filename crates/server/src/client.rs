//! What the commands that talk to a server (or a provider) share: query-string encoding,
//! an HTTP agent that reports statuses instead of failing on them, and time arguments.

use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Percent-encodes a query-string component.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

/// An agent that hands back 4xx/5xx answers for the caller to report, with a deadline for
/// a whole request.
pub fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

/// A server's JSON answer, or its error message (`{"error": {"message"}}`) as the error.
pub fn json_answer(
    response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    server: &str,
) -> Result<serde_json::Value> {
    let mut response = response.with_context(|| format!("cannot reach {server}"))?;
    let status = response.status();
    let body: serde_json::Value = response
        .body_mut()
        .read_json()
        .context("the server's answer is not JSON")?;
    if !status.is_success() {
        bail!(
            "{}: {}",
            status,
            llmtrace_model::json::at(&body, "/error/message")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("error")
        );
    }
    Ok(body)
}

/// A time argument — RFC 3339, `YYYY-MM-DD` (UTC midnight), unix seconds, or a duration ago
/// (`7d`) — as unix seconds.
pub fn unix_seconds(text: &str) -> Result<i64> {
    let bytes = text.as_bytes();
    let is_day = bytes.len() == 10 && bytes[4] == b'-' && bytes[7] == b'-';
    let text = if is_day {
        format!("{text}T00:00:00Z")
    } else {
        text.to_string()
    };
    let ns = crate::params::parse_time("time", &text, llmtrace_store::now_ns())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(ns / 1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_unix_seconds_and_rfc3339_are_times() {
        assert_eq!(unix_seconds("2026-11-22").unwrap(), 1_795_305_600);
        assert_eq!(unix_seconds("1795305600").unwrap(), 1_795_305_600);
        assert_eq!(unix_seconds("2026-11-22T00:00:10Z").unwrap(), 1_795_305_610);
        assert!(unix_seconds("soonish").is_err());
        assert_eq!(encode("a b/ü"), "a%20b%2F%C3%BC");
    }
}
