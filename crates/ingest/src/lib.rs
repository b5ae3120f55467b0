//! Ways in: OTLP (HTTP protobuf/JSON, gzip; gRPC uses the same conversion) decoded,
//! bounded and normalized into `Span` batches; GenAI log events joined to their spans.

pub mod agents;
pub mod convert;
pub mod jsonlog;
pub mod logs;
pub mod messages;
pub mod otlp;
pub mod stored;

pub use convert::{Converted, convert_traces, valid_project};
