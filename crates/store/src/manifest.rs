//! The manifest: which segments are live, which deletions still apply, how far the WAL
//! is flushed. Replaced atomically (write temp, fsync, rename, fsync dir); a reader never
//! sees a half-written manifest.

use std::path::{Path, PathBuf};

use llmtrace_model::Deletion;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsutil::write_atomically;

pub const FILE_NAME: &str = "manifest.json";
const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentMeta {
    pub id: u64,
    pub project: String,
    pub day: String,
    /// Path relative to the data directory.
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
    pub min_time: i64,
    pub max_time: i64,
    pub min_seq: u64,
    pub max_seq: u64,
    /// Deletions with a sequence number at or below this were applied when it was written.
    pub deletions_applied_through: u64,
    /// Whether some row here may be a newer version of a row in an older segment (a
    /// rewritten or re-sent span). Queries check older segments' candidates against only
    /// these segments. Unknown (older manifests) counts as yes.
    #[serde(default = "unknown_counts_as_yes")]
    pub supersedes: bool,
}

fn unknown_counts_as_yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeletionRecord {
    pub seq: u64,
    pub deletion: Deletion,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub next_segment_id: u64,
    /// Every WAL record with a sequence number at or below this is in a listed segment
    /// (or was a deletion listed below).
    pub flushed_seq: u64,
    pub segments: Vec<SegmentMeta>,
    pub deletions: Vec<DeletionRecord>,
}

impl Default for Manifest {
    fn default() -> Manifest {
        Manifest {
            version: VERSION,
            next_segment_id: 1,
            flushed_seq: 0,
            segments: Vec::new(),
            deletions: Vec::new(),
        }
    }
}

impl Manifest {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(FILE_NAME)
    }

    /// Loads the manifest, or an empty one for a new data directory.
    pub fn load(data_dir: &Path) -> Result<Manifest> {
        let path = Manifest::path(data_dir);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Manifest::default());
            }
            Err(err) => return Err(Error::io(&path, err)),
        };
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| Error::Manifest {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if manifest.version != VERSION {
            return Err(Error::Manifest {
                path,
                message: format!(
                    "version {} is not supported (want {VERSION})",
                    manifest.version
                ),
            });
        }
        Ok(manifest)
    }

    pub fn save(&self, data_dir: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(Error::encode)?;
        write_atomically(&Manifest::path(data_dir), &bytes)
    }
}
