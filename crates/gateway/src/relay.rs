//! The response body the client receives: upstream bytes passed through as they arrive,
//! with a copy kept for the record. When the gateway asked upstream for stream usage the
//! client did not ask for, the extra usage chunk and the `"usage":null` keys are removed,
//! so the client sees what it would have seen directly.
//!
//! However the body ends — completed, upstream failure, total timeout, or the client going
//! away (the body is dropped, which also drops the upstream connection) — the copy is
//! handed over exactly once.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How a relayed body ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Completed,
    /// The client stopped reading (disconnected) before the end.
    Cancelled,
    /// The total timeout passed while the body was still coming.
    Timeout,
    /// The upstream connection failed mid-body.
    Failed(String),
}

/// What the client was sent, for the record.
#[derive(Debug)]
pub struct Captured {
    pub body: Bytes,
    /// The body was longer than the capture limit; `body` holds its start.
    pub truncated: bool,
    /// `(bytes received so far, microseconds since the call started)` per upstream chunk.
    pub chunk_times: Vec<(usize, u32)>,
    pub outcome: Outcome,
    pub ended: Instant,
}

type OnEnd = Box<dyn FnOnce(Captured) + Send>;

pub struct Relay {
    inner: Incoming,
    strip_usage: bool,
    /// A partial SSE frame held back while stripping (frames are only edited whole).
    pending: BytesMut,
    copy: BytesMut,
    copy_limit: usize,
    received: usize,
    truncated: bool,
    chunk_times: Vec<(usize, u32)>,
    started: Instant,
    deadline: Option<Pin<Box<Sleep>>>,
    on_end: Option<OnEnd>,
}

impl Relay {
    pub fn new(
        inner: Incoming,
        strip_usage: bool,
        copy_limit: usize,
        started: Instant,
        deadline: tokio::time::Instant,
        on_end: OnEnd,
    ) -> Relay {
        Relay {
            inner,
            strip_usage,
            pending: BytesMut::new(),
            copy: BytesMut::new(),
            copy_limit,
            received: 0,
            truncated: false,
            chunk_times: Vec::new(),
            started,
            deadline: Some(Box::pin(tokio::time::sleep_until(deadline))),
            on_end: Some(on_end),
        }
    }

    fn keep(&mut self, chunk: &Bytes) {
        self.received += chunk.len();
        let room = self.copy_limit.saturating_sub(self.copy.len());
        if chunk.len() > room {
            self.truncated = true;
        }
        self.copy.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let micros = self.started.elapsed().as_micros().min(u32::MAX as u128) as u32;
        self.chunk_times.push((self.received, micros));
    }

    fn finish(&mut self, outcome: Outcome) {
        if let Some(on_end) = self.on_end.take() {
            on_end(Captured {
                body: std::mem::take(&mut self.copy).freeze(),
                truncated: self.truncated,
                chunk_times: std::mem::take(&mut self.chunk_times),
                outcome,
                ended: Instant::now(),
            });
        }
    }

    /// Whole frames from the held-back bytes, with the injected usage removed.
    fn edited_frames(&mut self) -> Bytes {
        let mut out = BytesMut::new();
        while let Some(end) = frame_end(&self.pending) {
            let frame = self.pending.split_to(end);
            if !is_injected_usage_chunk(&frame) {
                out.extend_from_slice(&strip_usage_nulls(&frame));
            }
        }
        out.freeze()
    }
}

impl Body for Relay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(deadline) = this.deadline.as_mut()
                && deadline.as_mut().poll(cx).is_ready()
            {
                this.deadline = None;
                this.finish(Outcome::Timeout);
                return Poll::Ready(Some(Err("upstream total timeout passed".into())));
            }
            if this.on_end.is_none() {
                return Poll::Ready(None);
            }
            let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    let rest = std::mem::take(&mut this.pending).freeze();
                    this.finish(Outcome::Completed);
                    if rest.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(rest))));
                }
                Poll::Ready(Some(Err(e))) => {
                    let message = format!("upstream body failed: {e}");
                    this.finish(Outcome::Failed(message.clone()));
                    return Poll::Ready(Some(Err(message.into())));
                }
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            let Ok(chunk) = frame.into_data() else {
                continue; // trailers: not relayed
            };
            this.keep(&chunk);
            // with a known length the server stops polling once it has every byte, so the
            // end is noticed here rather than by a final poll
            let ended = this.inner.is_end_stream();
            let out = if this.strip_usage {
                this.pending.extend_from_slice(&chunk);
                let mut out = BytesMut::from(this.edited_frames());
                if ended {
                    out.extend_from_slice(&std::mem::take(&mut this.pending));
                }
                out.freeze()
            } else {
                chunk
            };
            if ended {
                this.finish(Outcome::Completed);
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty() && (self.on_end.is_none() || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if self.strip_usage {
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let outcome = if self.inner.is_end_stream() {
            Outcome::Completed
        } else {
            Outcome::Cancelled
        };
        self.finish(outcome);
    }
}

/// End (exclusive) of the first complete SSE frame, blank line included.
pub fn frame_end(buffer: &[u8]) -> Option<usize> {
    let lf = find(buffer, b"\n\n").map(|i| i + 2);
    let crlf = find(buffer, b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// The chunk a proxy-requested `include_usage` adds: no choices, only usage.
fn is_injected_usage_chunk(frame: &[u8]) -> bool {
    find(frame, b"\"choices\":[]").is_some() && find(frame, b"\"usage\":{").is_some()
}

/// Removes `"usage":null` members. In compact JSON the quote before `usage` follows a
/// comma or brace, which a quote inside a string value never does (it is escaped), so the
/// textual edit cannot touch string content.
fn strip_usage_nulls(frame: &[u8]) -> Vec<u8> {
    // (pattern, bytes kept at its start): compact JSON, and Python's default separators
    const PATTERNS: [(&[u8], usize); 4] = [
        (b",\"usage\":null", 0),
        (b", \"usage\": null", 0),
        (b"{\"usage\":null,", 1),
        (b"{\"usage\": null, ", 1),
    ];
    let mut out = frame.to_vec();
    for (pattern, keep) in PATTERNS {
        while let Some(at) = find(&out, pattern) {
            out.drain(at + keep..at + pattern.len());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_end_at_blank_lines() {
        assert_eq!(frame_end(b"data: 1\n\ndata: 2"), Some(9));
        assert_eq!(frame_end(b"data: 1\r\n\r\n"), Some(11));
        assert_eq!(frame_end(b"data: 1\n"), None);
    }

    #[test]
    fn injected_usage_is_removed_and_nothing_else() {
        let chunk = br#"data: {"id":"c","choices":[{"delta":{"content":"say \",\"usage\":null"}}],"usage":null}

"#;
        let out = String::from_utf8(strip_usage_nulls(chunk)).unwrap();
        assert_eq!(
            out,
            "data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"say \\\",\\\"usage\\\":null\"}}]}\n\n"
        );
        let first = br#"data: {"usage":null,"id":"c"}

"#;
        assert_eq!(
            String::from_utf8(strip_usage_nulls(first)).unwrap(),
            "data: {\"id\":\"c\"}\n\n"
        );
        let spaced = br#"data: {"id": "c", "usage": null}"#;
        assert_eq!(
            String::from_utf8(strip_usage_nulls(spaced)).unwrap(),
            "data: {\"id\": \"c\"}"
        );
        assert!(is_injected_usage_chunk(
            br#"data: {"id":"c","choices":[],"usage":{"prompt_tokens":1}}"#
        ));
        assert!(!is_injected_usage_chunk(
            br#"data: {"id":"c","choices":[{"delta":{}}],"usage":null}"#
        ));
    }
}
