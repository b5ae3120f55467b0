//! The embedded span store: a write-ahead log in front of a memtable and immutable
//! Parquet segments, read back as one view. See `engine` for the invariants and `wal` and
//! `segment` for the on-disk formats; `scores` keeps the scores table beside it.

mod engine;
mod error;
pub mod export;
mod fsutil;
pub mod index;
mod manifest;
pub mod memtable;
mod parallel;
pub mod pool;
pub mod rollup;
pub mod scores;
pub mod segment;
pub mod wal;
mod writer;

pub use engine::{EmbeddedStore, RecoveryReport, StoreConfig, now_ns};
pub use error::{Error, Result};
pub use fsutil::write_atomically;
pub use manifest::{Manifest, SegmentMeta};
pub use wal::WalCompression;
pub use writer::Durability;
