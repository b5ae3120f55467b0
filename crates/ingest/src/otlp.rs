//! OTLP request decoding: protobuf or JSON, optionally gzip, always bounded.

use std::io::Read;

use llmtrace_model::Error;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// How an OTLP/HTTP body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    /// From a Content-Type header; `None` for types OTLP does not define.
    pub fn from_content_type(content_type: &str) -> Option<Encoding> {
        let essence = content_type.split(';').next().unwrap_or("").trim();
        match essence.to_ascii_lowercase().as_str() {
            "application/x-protobuf" | "application/protobuf" => Some(Encoding::Protobuf),
            "application/json" => Some(Encoding::Json),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }
}

/// Inflates a gzip body, refusing to produce more than `limit` bytes (zip-bomb guard).
pub fn gunzip_bounded(body: &[u8], limit: usize) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    let mut decoder = flate2::read::GzDecoder::new(body).take(limit as u64 + 1);
    decoder
        .read_to_end(&mut out)
        .map_err(|e| Error::BadRequest(format!("body is not valid gzip: {e}")))?;
    if out.len() > limit {
        return Err(Error::TooLarge(format!(
            "decompressed body exceeds the {limit}-byte limit"
        )));
    }
    Ok(out)
}

/// Undoes `Content-Encoding` (identity or gzip) within `limit`.
pub fn decode_content_encoding(
    content_encoding: Option<&str>,
    body: Vec<u8>,
    limit: usize,
) -> Result<Vec<u8>, Error> {
    match content_encoding.map(|e| e.trim().to_ascii_lowercase()) {
        None => Ok(body),
        Some(encoding) if encoding.is_empty() || encoding == "identity" => Ok(body),
        Some(encoding) if encoding == "gzip" || encoding == "x-gzip" => {
            gunzip_bounded(&body, limit)
        }
        Some(other) => Err(Error::BadRequest(format!(
            "content-encoding {other:?} is not supported: use gzip or none"
        ))),
    }
}

pub fn decode_traces(encoding: Encoding, body: &[u8]) -> Result<ExportTraceServiceRequest, Error> {
    let request: ExportTraceServiceRequest = match encoding {
        Encoding::Protobuf => ExportTraceServiceRequest::decode(body).map_err(|e| {
            Error::BadRequest(format!(
                "body is not a valid OTLP ExportTraceServiceRequest protobuf: {e}"
            ))
        })?,
        Encoding::Json => decode_json(body, "ExportTraceServiceRequest")?,
    };
    if encoding == Encoding::Json && request.resource_spans.is_empty() {
        reject_snake_case(body, "resource_spans")?;
    }
    Ok(request)
}

pub fn decode_logs(encoding: Encoding, body: &[u8]) -> Result<ExportLogsServiceRequest, Error> {
    let request: ExportLogsServiceRequest = match encoding {
        Encoding::Protobuf => ExportLogsServiceRequest::decode(body).map_err(|e| {
            Error::BadRequest(format!(
                "body is not a valid OTLP ExportLogsServiceRequest protobuf: {e}"
            ))
        })?,
        Encoding::Json => decode_json(body, "ExportLogsServiceRequest")?,
    };
    if encoding == Encoding::Json && request.resource_logs.is_empty() {
        reject_snake_case(body, "resource_logs")?;
    }
    Ok(request)
}

/// OTLP/JSON, accepting enum names (`"SPAN_KIND_CLIENT"`) as well as the numbers the spec asks for.
fn decode_json<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, Error> {
    match serde_json::from_slice::<T>(body) {
        Ok(request) => Ok(request),
        Err(first_error) => {
            let mut value: Value = serde_json::from_slice(body)
                .map_err(|e| Error::BadRequest(format!("body is not valid JSON: {e}")))?;
            if !rewrite_enum_names(&mut value, 0) {
                return Err(Error::BadRequest(format!(
                    "body is not a valid OTLP/JSON {what}: {first_error}"
                )));
            }
            serde_json::from_value(value).map_err(|e| {
                Error::BadRequest(format!("body is not a valid OTLP/JSON {what}: {e}"))
            })
        }
    }
}

/// Replaces enum names by their numbers; returns whether anything changed.
fn rewrite_enum_names(value: &mut Value, depth: usize) -> bool {
    if depth > 64 {
        return false;
    }
    let mut changed = false;
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                if let Value::String(name) = child {
                    let number = match key.as_str() {
                        "kind" => span_kind_number(name),
                        "code" => status_code_number(name),
                        "severityNumber" => None,
                        _ => None,
                    };
                    if let Some(number) = number {
                        *child = Value::from(number);
                        changed = true;
                    }
                } else {
                    changed |= rewrite_enum_names(child, depth + 1);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                changed |= rewrite_enum_names(item, depth + 1);
            }
        }
        _ => {}
    }
    changed
}

fn span_kind_number(name: &str) -> Option<i64> {
    Some(match name {
        "SPAN_KIND_UNSPECIFIED" => 0,
        "SPAN_KIND_INTERNAL" => 1,
        "SPAN_KIND_SERVER" => 2,
        "SPAN_KIND_CLIENT" => 3,
        "SPAN_KIND_PRODUCER" => 4,
        "SPAN_KIND_CONSUMER" => 5,
        _ => return None,
    })
}

fn status_code_number(name: &str) -> Option<i64> {
    Some(match name {
        "STATUS_CODE_UNSET" => 0,
        "STATUS_CODE_OK" => 1,
        "STATUS_CODE_ERROR" => 2,
        _ => return None,
    })
}

/// A JSON body with snake_case keys decodes to an empty request: say so instead.
fn reject_snake_case(body: &[u8], snake_key: &str) -> Result<(), Error> {
    let needle = format!("\"{snake_key}\"");
    if body.len() > 32
        && body
            .windows(needle.len())
            .any(|window| window == needle.as_bytes())
    {
        return Err(Error::BadRequest(format!(
            "OTLP/JSON keys must be lowerCamelCase: found {needle}, expected \"{}\"",
            camel(snake_key)
        )));
    }
    Ok(())
}

fn camel(snake: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(
            Encoding::from_content_type("application/x-protobuf"),
            Some(Encoding::Protobuf)
        );
        assert_eq!(
            Encoding::from_content_type("application/json; charset=utf-8"),
            Some(Encoding::Json)
        );
        assert_eq!(Encoding::from_content_type("text/plain"), None);
    }

    #[test]
    fn gzip_bomb_is_refused() {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(&vec![0u8; 10 << 20]).unwrap();
        let small = encoder.finish().unwrap();
        assert!(matches!(
            gunzip_bounded(&small, 1 << 20),
            Err(Error::TooLarge(_))
        ));
        assert_eq!(gunzip_bounded(&small, 20 << 20).unwrap().len(), 10 << 20);
        assert!(matches!(
            gunzip_bounded(b"not gzip", 100),
            Err(Error::BadRequest(_))
        ));
    }

    #[test]
    fn enum_names_are_accepted_in_json() {
        let body = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"0af7651916cd43dd8448eb211c80319c","spanId":"b7ad6b7169203331","name":"x","kind":"SPAN_KIND_CLIENT","status":{"code":"STATUS_CODE_ERROR"}}]}]}]}"#;
        let request = decode_traces(Encoding::Json, body).unwrap();
        let span = &request.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.kind, 3);
        assert_eq!(span.status.as_ref().unwrap().code, 2);
    }

    #[test]
    fn snake_case_keys_are_named_in_the_error() {
        let body = br#"{"resource_spans":[{"scope_spans":[{"spans":[{"trace_id":"0af7651916cd43dd8448eb211c80319c"}]}]}]}"#;
        let err = decode_traces(Encoding::Json, body).unwrap_err();
        assert!(err.to_string().contains("resourceSpans"), "{err}");
    }

    #[test]
    fn bad_bodies_name_the_problem() {
        let err = decode_traces(Encoding::Json, b"{not json").unwrap_err();
        assert!(err.to_string().contains("not valid JSON"), "{err}");
        let err = decode_traces(Encoding::Protobuf, &[0x0a, 0xff, 0x01]).unwrap_err();
        assert!(err.to_string().contains("protobuf"), "{err}");
        let bad_id = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz","spanId":"b7ad6b7169203331"}]}]}]}"#;
        assert!(matches!(
            decode_traces(Encoding::Json, bad_id),
            Err(Error::BadRequest(_))
        ));
    }
}
