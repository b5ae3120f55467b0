//! Query-string parameters → the query model. Unknown parameters and bad values are
//! refused with a message naming them.

use llmtrace_model::query::MAX_PAGE_LIMIT;
use llmtrace_model::{
    Cursor, Dimension, Error, Result, SpanFilter, SpanKind, SpanSource, SpanStatus,
};

/// Parameters both search routes accept.
pub const FILTER_PARAMS: [&str; 22] = [
    "project",
    "tenant_id",
    "since",
    "until",
    "trace_id",
    "span_id",
    "session_id",
    "user_id",
    "model",
    "provider",
    "routing_alias",
    "status",
    "kind",
    "service",
    "source",
    "q",
    "min_duration_ms",
    "max_duration_ms",
    "min_cost_usd",
    "max_cost_usd",
    "limit",
    "cursor",
];

pub struct Parsed {
    pub filter: SpanFilter,
    pub limit: usize,
    pub cursor: Option<Cursor>,
    pub group_by: Vec<Dimension>,
    pub bucket_seconds: Option<i64>,
}

/// Parses a time: RFC 3339, unix seconds (integer or fractional), or a duration ago (`15m`).
pub fn parse_time(name: &str, value: &str, now_ns: i64) -> Result<i64> {
    let bad = || {
        Error::BadRequest(format!(
            "{name}={value:?} is not a time: use RFC 3339 (2026-11-22T10:00:00Z), unix seconds, or a duration ago such as 15m"
        ))
    };
    if let Ok(seconds) = value.parse::<f64>() {
        if !seconds.is_finite() {
            return Err(bad());
        }
        return Ok((seconds * 1e9) as i64);
    }
    if let Ok(time) = humantime::parse_rfc3339_weak(value) {
        let since_epoch = time
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| bad())?;
        return i64::try_from(since_epoch.as_nanos()).map_err(|_| bad());
    }
    if let Ok(ago) = humantime::parse_duration(value) {
        return Ok(now_ns - i64::try_from(ago.as_nanos()).map_err(|_| bad())?);
    }
    Err(bad())
}

fn number<T: std::str::FromStr>(name: &str, value: &str) -> Result<T> {
    value
        .parse()
        .map_err(|_| Error::BadRequest(format!("{name}={value:?} is not a number")))
}

fn hex_id(name: &str, value: &str, len: usize) -> Result<String> {
    let lower = value.to_ascii_lowercase();
    if !llmtrace_model::span::is_valid_hex_id(&lower, len) {
        return Err(Error::BadRequest(format!(
            "{name}={value:?} is not a {len}-character hex id"
        )));
    }
    Ok(lower)
}

/// Parses `pairs` into filters. `extra` lists route-specific names that are allowed.
pub fn parse(
    pairs: &[(String, String)],
    default_project: &str,
    extra: &[&str],
    now_ns: i64,
) -> Result<Parsed> {
    let mut filter = SpanFilter::for_project(default_project);
    let mut parsed_limit = llmtrace_model::query::DEFAULT_PAGE_LIMIT;
    let mut cursor = None;
    let mut group_by = Vec::new();
    let mut bucket_seconds = None;
    for (name, value) in pairs {
        let name = name.as_str();
        if let Some(key) = name.strip_prefix("metadata.") {
            filter.metadata.push((key.to_string(), value.clone()));
            continue;
        }
        if let Some(key) = name.strip_prefix("attribute.") {
            filter.attributes.push((key.to_string(), value.clone()));
            continue;
        }
        if !FILTER_PARAMS.contains(&name) && !extra.contains(&name) {
            return Err(Error::BadRequest(format!(
                "unknown parameter {name:?}; known: {}, metadata.<key>, attribute.<key>{}",
                FILTER_PARAMS.join(", "),
                extra.iter().map(|e| format!(", {e}")).collect::<String>()
            )));
        }
        let text = || Some(value.clone()).filter(|v| !v.is_empty());
        match name {
            "project" | "tenant_id" => {
                if !llmtrace_ingest::valid_project(value) {
                    return Err(Error::BadRequest(format!(
                        "{name}={value:?} is not a valid project name"
                    )));
                }
                filter.project = value.clone();
            }
            "since" => filter.since = Some(parse_time(name, value, now_ns)?),
            "until" => filter.until = Some(parse_time(name, value, now_ns)?),
            "trace_id" => filter.trace_id = Some(hex_id(name, value, 32)?),
            "span_id" => filter.span_id = Some(hex_id(name, value, 16)?),
            "session_id" => filter.session_id = text(),
            "user_id" => filter.user_id = text(),
            "model" => filter.model = text(),
            "provider" => filter.provider = text(),
            "routing_alias" => filter.routing_alias = text(),
            "service" => filter.service_name = text(),
            "q" => filter.text = text(),
            "status" => {
                filter.status = Some(SpanStatus::parse(value).ok_or_else(|| {
                    Error::BadRequest(format!(
                        "status={value:?} is not one of ok, error, timeout, cancelled"
                    ))
                })?)
            }
            "kind" => {
                for kind in value.split(',') {
                    filter.kinds.push(SpanKind::parse(kind).ok_or_else(|| {
                        Error::BadRequest(format!(
                            "kind={kind:?} is not one of llm, embedding, tool, agent, chain, retriever, guardrail, handoff, other"
                        ))
                    })?);
                }
            }
            "source" => {
                filter.source = Some(SpanSource::parse(value).ok_or_else(|| {
                    Error::BadRequest(format!(
                        "source={value:?} is not one of gateway, otlp, agents_sdk, log, import"
                    ))
                })?)
            }
            "min_duration_ms" => filter.min_duration_ms = Some(number(name, value)?),
            "max_duration_ms" => filter.max_duration_ms = Some(number(name, value)?),
            "min_cost_usd" => filter.min_cost_usd = Some(number(name, value)?),
            "max_cost_usd" => filter.max_cost_usd = Some(number(name, value)?),
            "limit" => {
                let limit: usize = number(name, value)?;
                if limit == 0 || limit > MAX_PAGE_LIMIT {
                    return Err(Error::BadRequest(format!(
                        "limit must be between 1 and {MAX_PAGE_LIMIT}"
                    )));
                }
                parsed_limit = limit;
            }
            "cursor" => cursor = Some(Cursor::decode(value)?),
            "group_by" => {
                for dimension in value.split(',').filter(|d| !d.is_empty()) {
                    group_by.push(Dimension::parse(dimension)?);
                }
            }
            "bucket" => {
                let seconds = match value.parse::<i64>() {
                    Ok(seconds) => seconds,
                    Err(_) => humantime::parse_duration(value)
                        .map_err(|_| {
                            Error::BadRequest(format!(
                                "bucket={value:?} is not a duration (3600, 1h, 1d)"
                            ))
                        })?
                        .as_secs() as i64,
                };
                if seconds <= 0 {
                    return Err(Error::BadRequest("bucket must be positive".into()));
                }
                bucket_seconds = Some(seconds);
            }
            _ => {}
        }
    }
    if let (Some(since), Some(until)) = (filter.since, filter.until)
        && since >= until
    {
        return Err(Error::BadRequest("since must be before until".into()));
    }
    Ok(Parsed {
        filter,
        limit: parsed_limit,
        cursor,
        group_by,
        bucket_seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn filters_parse_and_bad_values_are_named() {
        let parsed = parse(
            &pairs(&[
                ("model", "gpt-4o"),
                ("metadata.tier", "gold"),
                ("since", "2026-11-22T00:00:00Z"),
                ("status", "error"),
            ]),
            "default",
            &[],
            0,
        )
        .unwrap();
        assert_eq!(parsed.filter.model.as_deref(), Some("gpt-4o"));
        assert_eq!(parsed.filter.metadata, vec![("tier".into(), "gold".into())]);
        assert_eq!(parsed.filter.since, Some(1_795_305_600_000_000_000));
        for (name, value, needle) in [
            ("status", "weird", "status"),
            ("trace_id", "xyz", "hex"),
            ("limit", "0", "limit"),
            ("since", "yesterday-ish", "not a time"),
            ("bogus", "1", "unknown parameter \"bogus\""),
        ] {
            let err = parse(&pairs(&[(name, value)]), "default", &[], 0)
                .err()
                .unwrap();
            assert!(err.to_string().contains(needle), "{name}: {err}");
        }
    }

    #[test]
    fn relative_times_count_back_from_now() {
        let now = 10_000_000_000_000;
        assert_eq!(
            parse_time("since", "15m", now).unwrap(),
            now - 900_000_000_000
        );
        assert_eq!(
            parse_time("since", "1795305600", now).unwrap(),
            1_795_305_600_000_000_000
        );
    }
}
