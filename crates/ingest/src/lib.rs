//! Ways in: OTLP (HTTP protobuf/JSON, gzip; gRPC uses the same conversion) decoded,
//! bounded and normalized into `Span` batches.

pub mod convert;
pub mod messages;
pub mod otlp;

pub use convert::{Converted, convert_traces, valid_project};
