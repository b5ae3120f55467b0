//! The embedded store: WAL → memtable → Parquet segments, read back as one view.
//!
//! Invariants:
//! - An append is acknowledged only after its WAL record is written (and fsync'd under
//!   `Durability::Fsync`) and applied to the memtable.
//! - Among rows with the same (project, trace_id, span_id), the one with the highest
//!   sequence number is live; a deletion hides rows with a lower sequence number.
//! - A WAL file is removed only after the manifest naming the segments that hold its rows
//!   has been replaced durably.
//! - Segment files leave the manifest before they leave the disk, and are unlinked only
//!   when no reader holds them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{
    Arc, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError,
};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use llmtrace_model::query::session_traces;
use llmtrace_model::{
    AggregateQuery, AggregateRow, Deletion, Page, SessionTrace, Span, SpanFilter, SpanKey,
    SpanQuery, Store, StoreStats,
};
use llmtrace_sched::BackgroundThread;
use parquet::arrow::arrow_reader::ArrowReaderMetadata;

use crate::error::{Error, Result};
use crate::fsutil::{dir_bytes, fsync_dir, rename_to_quarantine};
use crate::index::{self, Candidate, SegmentIndex};
use crate::manifest::{DeletionRecord, Manifest, SegmentMeta};
use crate::memtable::{JsonFields, Memtable, Prepared};
use crate::pool::{self, Pool};
use crate::rollup::{self, Aggregation, ColumnAggregation, ColumnFilter, Rollup, RollupUse};
use crate::segment::{self, Projection, StoredSpan};
use crate::wal::{self, EncodedEntry, RowsEncoder, WalCompression, WalEntry, WalWriter};
use crate::writer::{Command, Durability, Mutation, WalThread};

/// Settings of the embedded store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    pub durability: Durability,
    /// Flush the memtable once it holds this many rows…
    pub flush_rows: usize,
    /// …or this many bytes (approximate)…
    pub flush_bytes: usize,
    /// …or once its oldest row is this old.
    pub flush_interval: Duration,
    /// Compact a partition once it has this many small segments in a row (by write order)…
    pub compact_min_segments: usize,
    /// …merging at most this many bytes of them at once; a segment of half this size or
    /// more is left as it is. Bounds what one merge holds in memory and how long flushing
    /// waits behind it, and a row stops being rewritten once its segment reaches half of it.
    pub compact_max_bytes: u64,
    /// Retention in days for projects without their own setting; 0 keeps forever.
    pub default_retention_days: u32,
    pub retention_days: HashMap<String, u32>,
    /// Run flush, compaction and retention on a background thread.
    pub background: bool,
    /// With background flushing, appends wait while the memtables (active and being
    /// flushed) hold more than this many bytes (approximate): ingest slows to the pace of
    /// flushing instead of growing memory without bound…
    pub max_memtable_bytes: usize,
    /// …and fail as unavailable after waiting this long.
    pub max_append_wait: Duration,
    /// The WAL thread commits a group under `SCHED_IDLE` when every append in it came from
    /// a thread under `SCHED_IDLE` (work done for background callers stays in the
    /// background; see `writer.rs`).
    pub wal_follows_callers: bool,
    /// How WAL records are compressed (`WalCompression`: by default hardly at all, since
    /// CPU, not disk, is what ingest runs out of).
    pub wal_compression: WalCompression,
}

impl StoreConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            data_dir: data_dir.into(),
            durability: Durability::Fsync,
            flush_rows: 100_000,
            flush_bytes: 256 << 20,
            flush_interval: Duration::from_secs(30),
            compact_min_segments: 8,
            compact_max_bytes: 64 << 20,
            default_retention_days: 30,
            retention_days: HashMap::new(),
            background: true,
            max_memtable_bytes: 1 << 30,
            max_append_wait: Duration::from_secs(30),
            wal_follows_callers: true,
            wal_compression: WalCompression::default(),
        }
    }

    fn retention_for(&self, project: &str) -> u32 {
        self.retention_days
            .get(project)
            .copied()
            .unwrap_or(self.default_retention_days)
    }
}

/// A background append waits this long for its commit before it brings the WAL thread to
/// the foreground (as the gateway's recorder does for its own batches).
const BACKGROUND_COMMIT_LIMIT: Duration = Duration::from_millis(100);

/// How much lower (in nice steps) background threads run than appends and queries.
const BACKGROUND_NICE: i32 = 10;

/// Lowers the calling thread's CPU priority, and that of every thread it starts after
/// (a flush's index build and tantivy's indexing threads inherit it), so that flushing,
/// compaction and rollup parsing take the cores appends and queries leave idle: appends
/// then run at the WAL's pace while flushing catches up behind them, bounded by
/// `max_memtable_bytes`. On Linux a nice value belongs to one thread.
fn yield_to_requests() {
    #[cfg(target_os = "linux")]
    if let Err(err) = rustix::process::nice(BACKGROUND_NICE) {
        tracing::debug!(error = %err, "background work keeps the normal CPU priority");
    }
}

/// What opening the store found and repaired.
#[derive(Debug, Default, Clone)]
pub struct RecoveryReport {
    pub wal_records_replayed: u64,
    pub wal_bytes_cut: u64,
    pub wal_files_cut: Vec<PathBuf>,
    pub segments_quarantined: Vec<PathBuf>,
}

/// A live segment: its Parquet file, cached footer and term index. Unlinked on drop once
/// marked obsolete, so a reader holding it never loses the files under its feet.
pub(crate) struct SegmentHandle {
    pub meta: SegmentMeta,
    pub path: PathBuf,
    parquet: ArrowReaderMetadata,
    /// The chunks of its pooled history values (`pool.rs`).
    pool: Pool,
    /// `segment::row_group_ends`: where a whole scan splits the segment into tasks.
    row_group_ends: Vec<u32>,
    index: SegmentIndex,
    /// `index::key_hash` of every key held, sorted: which later writes replace a row here.
    keys: Vec<u64>,
    /// Set once a newer version of some row here exists elsewhere (a later segment or a
    /// memtable): the rollup then overcounts, and aggregates read this segment's rows.
    /// Kept in memory only; recomputed at open. Never cleared: compaction makes a new handle.
    rewritten: AtomicBool,
    /// Parsed from the footer on first use.
    rollup: OnceLock<Option<Arc<Rollup>>>,
    obsolete: AtomicBool,
}

impl SegmentHandle {
    /// Opens a listed segment. Its index is derived data: rebuilt when missing or unreadable.
    fn open(data_dir: &Path, meta: SegmentMeta) -> Result<SegmentHandle> {
        let path = data_dir.join(&meta.path);
        let parquet = segment::open_metadata(&path)?;
        let pool = segment::open_pool(&path, &parquet)?;
        let index_dir = index::dir_for(&path);
        let index = match SegmentIndex::open(&index_dir) {
            Ok(index) if index.rows() == meta.rows => index,
            outcome => {
                let problem = match outcome {
                    Ok(index) => format!("it has {} rows, the segment {}", index.rows(), meta.rows),
                    Err(err) => err.to_string(),
                };
                tracing::warn!(segment = %path.display(), problem, "rebuilding the segment's index");
                index::build(&index_dir, &segment::read(&path)?)?;
                SegmentIndex::open(&index_dir)?
            }
        };
        let keys = index.key_hashes()?;
        Ok(SegmentHandle {
            meta,
            path,
            row_group_ends: segment::row_group_ends(&parquet),
            parquet,
            pool,
            index,
            keys,
            rewritten: AtomicBool::new(false),
            rollup: OnceLock::new(),
            obsolete: AtomicBool::new(false),
        })
    }

    /// Whether this segment holds a version of `span` (by key hash: may say yes wrongly,
    /// never no wrongly).
    fn holds_key(&self, span: &Span) -> bool {
        self.may_hold(span)
            && self
                .keys
                .binary_search(&index::key_hash(&span.trace_id, &span.span_id))
                .is_ok()
    }

    /// Marks this segment rewritten when `span` is a version of one of its rows.
    fn note_write(&self, span: &Span) {
        if !self.rewritten.load(Ordering::Relaxed) && self.holds_key(span) {
            self.rewritten.store(true, Ordering::SeqCst);
        }
    }

    /// The rollup, if the segment has one and it still describes the segment's live rows
    /// (nothing here rewritten, and no deletion it has not applied may hide a row).
    fn current_rollup(&self, deletions: &[DeletionRecord]) -> Option<Arc<Rollup>> {
        if self.rewritten.load(Ordering::SeqCst) {
            return None;
        }
        let pending = deletions.iter().any(|record| {
            let deletion = &record.deletion;
            record.seq > self.meta.deletions_applied_through
                && deletion.project == self.meta.project
                && deletion
                    .since
                    .is_none_or(|since| self.meta.max_time >= since)
                && deletion
                    .until
                    .is_none_or(|until| self.meta.min_time < until)
        });
        if pending {
            return None;
        }
        self.rollup()
    }

    /// The rollup its footer holds, parsed on first use.
    fn rollup(&self) -> Option<Arc<Rollup>> {
        self.rollup
            .get_or_init(|| match segment::rollup(&self.path, &self.parquet) {
                Ok(rollup) => rollup.map(Arc::new),
                Err(err) => {
                    tracing::warn!(segment = %self.path.display(), error = %err, "unreadable rollup: aggregating rows");
                    None
                }
            })
            .clone()
    }

    fn read(&self, rows: &[u32], projection: Projection) -> Result<Vec<StoredSpan>> {
        segment::read_rows(&self.path, &self.parquet, &self.pool, rows, projection)
    }

    fn complete(&self, rows: &[u32], spans: &mut [Span]) -> Result<()> {
        segment::complete_rows(&self.path, &self.parquet, &self.pool, rows, spans)
    }

    fn batches(
        &self,
        rows: &[u32],
        columns: &[&str],
        visit: &mut dyn FnMut(&arrow::array::RecordBatch) -> Result<()>,
    ) -> Result<()> {
        segment::visit_batches(&self.path, &self.parquet, &self.pool, rows, columns, visit)
    }

    fn visit(
        &self,
        rows: &[u32],
        projection: Projection,
        visit: &mut dyn FnMut(&mut Span, u64) -> Result<()>,
    ) -> Result<()> {
        segment::visit_rows(
            &self.path,
            &self.parquet,
            &self.pool,
            rows,
            projection,
            visit,
        )
    }

    /// Whether this segment may hold `span` itself (versions share their start time).
    fn may_hold(&self, span: &Span) -> bool {
        self.meta.project == span.project
            && self.meta.min_time <= span.start_time
            && span.start_time <= self.meta.max_time
    }
}

impl Drop for SegmentHandle {
    fn drop(&mut self) {
        if !self.obsolete.load(Ordering::SeqCst) {
            return;
        }
        if let Err(err) = fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %err, "could not remove obsolete segment");
        }
        let pool_path = pool::path_for(&self.path);
        if let Err(err) = fs::remove_file(&pool_path)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %pool_path.display(), error = %err, "could not remove obsolete pool");
        }
        let index_dir = index::dir_for(&self.path);
        if let Err(err) = fs::remove_dir_all(&index_dir) {
            tracing::warn!(path = %index_dir.display(), error = %err, "could not remove obsolete index");
        }
    }
}

pub(crate) struct State {
    pub active: Memtable,
    /// Memtables being flushed, oldest first; still queryable.
    pub frozen: Vec<Arc<Memtable>>,
    pub segments: Vec<Arc<SegmentHandle>>,
    /// Every deletion that may still hide rows somewhere.
    pub deletions: Vec<DeletionRecord>,
    pub manifest: Manifest,
    pub last_rotation: Instant,
}

pub(crate) struct Shared {
    config: StoreConfig,
    state: RwLock<State>,
    /// Serializes flush, compaction and retention (the manifest writers).
    maintenance: Mutex<()>,
    stopping: AtomicBool,
    quarantined: AtomicU64,
    /// Nanoseconds appends have waited in `wait_for_room`.
    append_wait_ns: AtomicU64,
    /// The WAL thread, while it commits for background callers.
    pub(crate) wal_thread: BackgroundThread,
    /// The newest deletion committed: a WAL file that was open when it came may hold rows
    /// it deletes, so it is not kept for reuse.
    pub(crate) last_deletion_seq: AtomicU64,
    /// Held while WAL files are kept for reuse or discarded, so that a deletion's discard
    /// cannot miss a file a flush is keeping.
    free_wal_files: Mutex<()>,
}

impl Shared {
    pub(crate) fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        match self.state.try_write() {
            Ok(guard) => return guard,
            Err(TryLockError::Poisoned(poisoned)) => return poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => self.hurry_the_holder(),
        }
        self.state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The state lock is taken: its holder may be the WAL thread committing in the
    /// background, which a busy machine would leave waiting — and us behind it.
    fn hurry_the_holder(&self) {
        self.wal_thread.to_foreground();
    }

    /// Whether the active memtable is due to be frozen and flushed for its size; only with
    /// background flushing (without it, flushes happen when asked and freeze what is there).
    pub(crate) fn memtable_full(&self, active: &Memtable) -> bool {
        let config = &self.config;
        config.background
            && (active.len() >= config.flush_rows || active.approx_bytes() >= config.flush_bytes)
    }

    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        match self.state.try_read() {
            Ok(guard) => return guard,
            Err(TryLockError::Poisoned(poisoned)) => return poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => self.hurry_the_holder(),
        }
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_maintenance(&self) -> MutexGuard<'_, ()> {
        self.maintenance
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The embedded span store.
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    commands: Mutex<Option<SyncSender<Command>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    background: Mutex<Option<JoinHandle<()>>>,
    recovery: RecoveryReport,
    scores: crate::scores::ScoreTable,
}

impl EmbeddedStore {
    /// Opens (or creates) a store: validates segments, replays the WAL, starts the writer.
    pub fn open(config: StoreConfig) -> Result<EmbeddedStore> {
        let data_dir = config.data_dir.clone();
        let wal_dir = data_dir.join("wal");
        let quarantine_dir = data_dir.join("quarantine");
        for dir in [&data_dir, &wal_dir, &data_dir.join("segments")] {
            fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let mut report = RecoveryReport::default();
        let mut manifest = Manifest::load(&data_dir)?;

        // Segments the manifest names must open; a corrupt one is moved aside, not deleted.
        let mut segments = Vec::new();
        let mut kept = Vec::new();
        for meta in manifest.segments.drain(..) {
            match SegmentHandle::open(&data_dir, meta.clone()) {
                Ok(handle) => {
                    segments.push(Arc::new(handle));
                    kept.push(meta);
                }
                // The disk itself failing (e.g. full while rebuilding an index) is not the
                // segment's fault: refuse to open rather than set good data aside.
                Err(err @ Error::Io { .. }) if data_dir.join(&meta.path).exists() => {
                    return Err(err);
                }
                Err(err) => {
                    let path = data_dir.join(&meta.path);
                    tracing::error!(segment = %path.display(), error = %err, "segment is unreadable: quarantining it");
                    let _ = fs::remove_dir_all(index::dir_for(&path));
                    // its pool goes aside with it (it may be the corrupt part)
                    let pool_path = pool::path_for(&path);
                    if pool_path.exists() {
                        report
                            .segments_quarantined
                            .push(rename_to_quarantine(&quarantine_dir, &pool_path)?);
                    }
                    if path.exists() {
                        let target = rename_to_quarantine(&quarantine_dir, &path)?;
                        report.segments_quarantined.push(target);
                    } else {
                        report.segments_quarantined.push(path);
                    }
                }
            }
        }
        manifest.segments = kept;
        if !report.segments_quarantined.is_empty() {
            manifest.save(&data_dir)?;
        }
        remove_orphan_segments(&data_dir, &manifest);
        mark_rewritten_by_segments(&segments);

        // Replay what the manifest does not cover yet.
        let mut active = Memtable::default();
        let mut deletions = manifest.deletions.clone();
        let mut max_seq = manifest.flushed_seq;
        let mut replay = wal::ReplayReport::default();
        for (_, path) in wal::list_files(&wal_dir)? {
            wal::replay_file(&path, &quarantine_dir, &mut replay, |seq, entry| {
                if seq <= manifest.flushed_seq {
                    return Ok(());
                }
                max_seq = max_seq.max(seq);
                match entry {
                    WalEntry::Spans(spans) => {
                        for span in spans {
                            note_write(&segments, &span);
                            active.insert(seq, Prepared::new(span));
                        }
                    }
                    WalEntry::Deletion(deletion) => {
                        active.delete(seq, &deletion);
                        deletions.push(DeletionRecord { seq, deletion });
                    }
                }
                Ok(())
            })?;
        }
        report.wal_records_replayed = replay.records;
        report.wal_bytes_cut = replay.cut_bytes;
        report.wal_files_cut = replay.cut_files;
        if report.wal_bytes_cut > 0 || !report.segments_quarantined.is_empty() {
            tracing::warn!(?report, "store opened after repairs");
        }

        // a file replayed now may hold rows that a deletion replayed after it deletes
        let last_deletion_seq = deletions.iter().map(|d| d.seq).max().unwrap_or(0);
        let next_seq = max_seq + 1;
        // what a deletion replayed just now may have meant is in none of them
        wal::discard_free_files(&wal_dir)?;
        let wal_writer = WalWriter::create(&wal_dir, next_seq)?;
        // replayed rows count as written, so that a flush freezes them (and frees the
        // files they came from) rather than finding nothing new
        let records_in_file = u64::from(!active.is_empty());
        let shared = Arc::new(Shared {
            quarantined: AtomicU64::new(report.segments_quarantined.len() as u64),
            append_wait_ns: AtomicU64::new(0),
            state: RwLock::new(State {
                active,
                frozen: Vec::new(),
                segments,
                deletions,
                manifest,
                last_rotation: Instant::now(),
            }),
            maintenance: Mutex::new(()),
            stopping: AtomicBool::new(false),
            wal_thread: BackgroundThread::new(config.wal_follows_callers),
            last_deletion_seq: AtomicU64::new(last_deletion_seq),
            free_wal_files: Mutex::new(()),
            config: config.clone(),
        });
        let scores = crate::scores::ScoreTable::open(&data_dir.join("scores.sqlite"))
            .map_err(|e| Error::Scores(e.to_string()))?;
        let (sender, receiver) = mpsc::sync_channel(8192);
        let wal_thread = WalThread {
            shared: shared.clone(),
            wal: wal_writer,
            next_seq,
            records_in_file,
            durability: config.durability,
            wal_dir,
        };
        let writer = std::thread::Builder::new()
            .name("llmtrace-wal".into())
            .spawn(move || wal_thread.run(receiver))
            .map_err(|e| Error::io(&data_dir, e))?;
        let store = EmbeddedStore {
            shared,
            commands: Mutex::new(Some(sender)),
            writer: Mutex::new(Some(writer)),
            background: Mutex::new(None),
            recovery: report,
            scores,
        };
        if config.background {
            store.start_background();
        }
        Ok(store)
    }

    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// Starts the threads of background work: they run at a lower CPU priority (see
    /// `yield_to_requests`).
    fn start_background(&self) {
        // The first aggregate after a start would otherwise parse every segment's rollup
        // itself (about 2 s at 10 M spans): parse them now, on a thread of their own.
        let segments = self.shared.read_state().segments.clone();
        let warming = std::thread::Builder::new()
            .name("llmtrace-rollups".into())
            .spawn(move || {
                yield_to_requests();
                for handle in segments {
                    handle.rollup();
                }
            });
        if let Err(err) = warming {
            tracing::warn!(error = %err, "could not start parsing rollups ahead of use");
        }
        let shared = self.shared.clone();
        let commands = self.sender();
        let handle = std::thread::Builder::new()
            .name("llmtrace-flush".into())
            .spawn(move || {
                yield_to_requests();
                let Ok(commands) = commands else { return };
                let mut last_retention = Instant::now() - Duration::from_secs(3600);
                while !shared.stopping.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(200));
                    // Memtables the WAL thread froze are written as they are; the active one
                    // is frozen too once its oldest row is old enough (or, should freezing
                    // have failed there, once it is full).
                    let (frozen, rotate) = {
                        let state = shared.read_state();
                        let rotate = !state.active.is_empty()
                            && (shared.memtable_full(&state.active)
                                || state.last_rotation.elapsed() >= shared.config.flush_interval);
                        (!state.frozen.is_empty(), rotate)
                    };
                    if (frozen || rotate)
                        && let Err(err) = flush(&shared, &commands, rotate)
                    {
                        tracing::error!(error = %err, "background flush failed; will retry");
                    }
                    // One bounded merge a round, so flushing never waits long behind it.
                    if let Err(err) = compact(&shared, false) {
                        tracing::error!(error = %err, "background compaction failed");
                    }
                    if last_retention.elapsed() >= Duration::from_secs(3600) {
                        last_retention = Instant::now();
                        if let Err(err) = retention(&shared, now_ns()) {
                            tracing::error!(error = %err, "retention sweep failed");
                        }
                    }
                }
            });
        match handle {
            Ok(handle) => *lock(&self.background) = Some(handle),
            Err(err) => tracing::error!(error = %err, "could not start the flush thread"),
        }
    }

    fn sender(&self) -> Result<SyncSender<Command>> {
        lock(&self.commands).clone().ok_or(Error::Closed)
    }

    /// Waits while the memtables are over their limit (background flushing drains them).
    fn wait_for_room(&self) -> Result<()> {
        let config = &self.shared.config;
        if !config.background {
            return Ok(());
        }
        let started = Instant::now();
        let mut slept = false;
        let result = loop {
            let held = {
                let state = self.shared.read_state();
                state.active.approx_bytes()
                    + state.frozen.iter().map(|m| m.approx_bytes()).sum::<usize>()
            };
            if held < config.max_memtable_bytes || self.shared.stopping.load(Ordering::SeqCst) {
                break Ok(());
            }
            if started.elapsed() >= config.max_append_wait {
                break Err(Error::Backlog(held));
            }
            std::thread::sleep(Duration::from_millis(5));
            slept = true;
        };
        if slept {
            let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.shared
                .append_wait_ns
                .fetch_add(nanos, Ordering::Relaxed);
        }
        result
    }

    /// Hands the record to the WAL thread and waits for the commit. An append from a thread
    /// under `SCHED_IDLE` may be committed in the background; any other brings the WAL
    /// thread to the foreground first, and a background append that waited
    /// `BACKGROUND_COMMIT_LIMIT` does too.
    fn submit(&self, entry: EncodedEntry, mutation: Mutation) -> Result<u64> {
        let wal = &self.shared.wal_thread;
        let background = wal.is_switchable() && llmtrace_sched::current_is_background();
        if !background {
            wal.to_foreground();
        }
        let (reply, answer) = mpsc::sync_channel(1);
        self.sender()?
            .send(Command::Write {
                entry,
                mutation,
                background,
                reply,
            })
            .map_err(|_| Error::Closed)?;
        if background {
            match answer.recv_timeout(BACKGROUND_COMMIT_LIMIT) {
                Ok(result) => return result,
                Err(mpsc::RecvTimeoutError::Timeout) => wal.to_foreground(),
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(Error::Closed),
            }
        }
        answer.recv().map_err(|_| Error::Closed)?
    }

    /// Compressed bytes per column over every segment (for sizing and benchmarks).
    pub fn column_bytes(&self) -> BTreeMap<String, u64> {
        let mut total = BTreeMap::new();
        for handle in &self.shared.read_state().segments {
            for (column, bytes) in segment::column_bytes(&handle.parquet) {
                *total.entry(column).or_default() += bytes;
            }
            *total.entry("(message pool)".to_string()).or_default() += handle.pool.bytes();
        }
        total
    }

    /// Compacts partitions with many segments, or with deletions to purge when `force`.
    pub fn compact(&self, force: bool) -> Result<u64> {
        compact(&self.shared, force)
    }

    /// Stops background work, flushes the memtable, stops the writer.
    pub fn close(&self) -> Result<()> {
        self.shared.stopping.store(true, Ordering::SeqCst);
        if let Some(handle) = lock(&self.background).take() {
            let _ = handle.join();
        }
        let flushed = self
            .sender()
            .and_then(|commands| flush(&self.shared, &commands, true));
        lock(&self.commands).take();
        if let Some(handle) = lock(&self.writer).take() {
            let _ = handle.join();
        }
        flushed
    }

    /// Every live span matching `filter` as Arrow batches in the segment schema without
    /// `_seq` (`segment::table_schema`), holding only `columns`, in no particular order:
    /// what a query engine scans. Refuses with `Error::OverBudget`, before reading rows, when
    /// more than `max_rows` rows would be read.
    pub fn scan(
        &self,
        filter: &SpanFilter,
        columns: &[&str],
        max_rows: u64,
    ) -> Result<Vec<arrow::array::RecordBatch>> {
        let Collected {
            found, mut batches, ..
        } = collect(
            &self.shared,
            filter,
            None,
            None,
            None,
            Gather::Batches { columns, max_rows },
        )?;
        // what is left in `found` are the memtables' rows
        let memtable: Vec<StoredSpan> = found
            .into_iter()
            .map(|found| StoredSpan {
                seq: 0,
                span: found.span,
                json: found.json,
            })
            .collect();
        if !memtable.is_empty() {
            batches.push(segment::project(&segment::to_batch(&memtable)?, columns)?);
        }
        Ok(batches)
    }

    /// Every live span matching `filter`, whole, in no particular order.
    fn collect(&self, filter: &SpanFilter) -> Result<Vec<Span>> {
        let collected = collect(&self.shared, filter, None, None, None, Gather::Rows)?;
        Collected::whole(&collected.segments, collected.found)
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        if let Some(handle) = lock(&self.background).take() {
            let _ = handle.join();
        }
        lock(&self.commands).take();
        if let Some(handle) = lock(&self.writer).take() {
            let _ = handle.join();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Removes `.parquet` files (and their pools) under `segments/` that the manifest does not name: leftovers
/// of a flush or compaction that crashed before its manifest swap (their rows are still
/// in the WAL or in the segments they were merged from).
fn remove_orphan_segments(data_dir: &Path, manifest: &Manifest) {
    let named: std::collections::HashSet<PathBuf> = manifest
        .segments
        .iter()
        .map(|meta| data_dir.join(&meta.path))
        .collect();
    let mut stack = vec![data_dir.join("segments")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let extension = path.extension().and_then(|ext| ext.to_str());
            if path.is_dir() && matches!(extension, Some("idx" | "tmp")) {
                // An index belongs to the segment of the same name; a temporary one to nothing.
                if extension == Some("tmp") || !named.contains(&path.with_extension("parquet")) {
                    tracing::info!(path = %path.display(), "removing index left by an interrupted flush");
                    let _ = fs::remove_dir_all(&path);
                }
            } else if path.is_dir() {
                stack.push(path);
            } else if extension.is_some_and(|ext| ext == "parquet" || ext == "pool")
                && !named.contains(&path.with_extension("parquet"))
            {
                tracing::info!(path = %path.display(), "removing segment left by an interrupted flush");
                let _ = fs::remove_file(&path);
            }
        }
    }
}

/// Marks the segments holding an older version of `span`, about to be written.
pub(crate) fn note_write(segments: &[Arc<SegmentHandle>], span: &Span) {
    for handle in segments {
        handle.note_write(span);
    }
}

/// Marks segments whose rows a later segment of their partition holds newer versions of.
/// Within a partition, segments hold disjoint ranges of sequence numbers (a flush writes
/// one memtable's rows; compaction merges runs of neighbours), so the later range holds
/// the newer version.
fn mark_rewritten_by_segments(segments: &[Arc<SegmentHandle>]) {
    for newer in segments.iter().filter(|handle| handle.meta.supersedes) {
        for older in segments {
            if older.meta.max_seq < newer.meta.min_seq
                && older.meta.project == newer.meta.project
                && older.meta.day == newer.meta.day
                && shares_a_key(&older.keys, &newer.keys)
            {
                older.rewritten.store(true, Ordering::SeqCst);
            }
        }
    }
}

fn shares_a_key(a: &[u64], b: &[u64]) -> bool {
    let (mut i, mut j) = (0, 0);
    while let (Some(x), Some(y)) = (a.get(i), b.get(j)) {
        match x.cmp(y) {
            std::cmp::Ordering::Equal => return true,
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
        }
    }
    false
}

/// Marks `handles` (just written from older rows) rewritten where a memtable already holds
/// a newer version of one of their rows. Runs under the state's write lock, as installing
/// them does, so no write slips between check and install.
fn mark_rewritten_by_memtables(state: &State, handles: &[Arc<SegmentHandle>]) {
    let memtables = std::iter::once(&state.active).chain(state.frozen.iter().map(Arc::as_ref));
    for memtable in memtables {
        for row in memtable.rows() {
            note_write(handles, &row.span);
        }
    }
}

/// A row source and the deletion sequence number through which it already applied deletions.
/// Whether a deletion newer than the row (`seq`) and than what its source already applied
/// removes `span`.
fn hidden(span: &Span, seq: u64, applied_through: u64, deletions: &[DeletionRecord]) -> bool {
    deletions.iter().any(|record| {
        record.seq > applied_through && record.seq > seq && record.deletion.matches(span)
    })
}

fn overlaps(meta: &SegmentMeta, filter: &SpanFilter) -> bool {
    let (since, until) = filter.time_window();
    meta.project == filter.project && meta.max_time >= since && meta.min_time < until
}

/// A live match and, for a segment row, where to read the rest of it.
struct Found {
    span: Arc<Span>,
    /// A memtable row's documents, which `span` holds null.
    json: Option<Arc<JsonFields>>,
    origin: Option<(usize, u32)>,
}

/// Keys of the active memtable at the time of a query, so segment rows can be checked
/// against it after its lock is released. Sorted by hash; compared exactly.
struct ActiveKeys(Vec<(u64, Arc<Span>)>);

impl ActiveKeys {
    fn hash(span: &Span) -> u64 {
        use std::hash::BuildHasher;
        foldhash::fast::FixedState::default().hash_one((
            &span.project,
            &span.trace_id,
            &span.span_id,
        ))
    }

    fn contains(&self, span: &Span) -> bool {
        let hash = ActiveKeys::hash(span);
        let first = self.0.partition_point(|(h, _)| *h < hash);
        self.0[first..]
            .iter()
            .take_while(|(h, _)| *h == hash)
            .any(|(_, other)| {
                other.project == span.project
                    && other.trace_id == span.trace_id
                    && other.span_id == span.span_id
            })
    }
}

/// Memtable rows `keep` accepts, into `found`: with a page size only the newest that many
/// (each memtable's newest matches are the only ones that can make the page). With
/// `attributes` (the filter names some), `keep` sees each row with its attributes parsed.
fn newest_kept(
    mut rows: Vec<StoredSpan>,
    page_size: Option<usize>,
    attributes: bool,
    found: &mut Vec<Found>,
    mut keep: impl FnMut(&Span) -> bool,
) {
    if page_size.is_some() {
        rows.sort_unstable_by(|a, b| b.span.order().cmp(&a.span.order()));
    }
    let mut kept = 0;
    for StoredSpan { span, json, .. } in rows {
        if page_size.is_some_and(|size| kept >= size) {
            break;
        }
        let wanted = match json.as_ref().filter(|_| attributes) {
            Some(json) => {
                let mut shown = (*span).clone();
                shown.attributes = json.attributes_value();
                keep(&shown)
            }
            None => keep(&span),
        };
        if wanted {
            kept += 1;
            found.push(Found {
                span,
                json,
                origin: None,
            });
        }
    }
}

/// A fast necessary condition for a full-text match, for scanning memtables: every ASCII
/// query term occurs in the text as a case-insensitive substring. Applied to ASCII text only:
/// elsewhere a non-ASCII letter may lower-case to an ASCII one (the Kelvin sign to `k`).
struct TextPrefilter(Vec<aho_corasick::AhoCorasick>);

impl TextPrefilter {
    fn new(text: Option<&str>) -> TextPrefilter {
        let terms = text.map(|text| llmtrace_model::query::terms(text).collect::<Vec<_>>());
        TextPrefilter(
            terms
                .unwrap_or_default()
                .into_iter()
                .filter(|term| term.is_ascii())
                .filter_map(|term| {
                    aho_corasick::AhoCorasick::builder()
                        .ascii_case_insensitive(true)
                        .build([term])
                        .ok()
                })
                .collect(),
        )
    }

    fn may_match(&self, span: &Span) -> bool {
        if self.0.is_empty() || !span.input_text.is_ascii() || !span.output_text.is_ascii() {
            return true;
        }
        self.0.iter().all(|automaton| {
            automaton.is_match(&span.input_text) || automaton.is_match(&span.output_text)
        })
    }
}

/// Candidates of one query across segments, newest first. Segments are opened in order of
/// their newest row, only once the frontier reaches them, so a page of recent rows never
/// touches old segments.
struct Frontier<'a> {
    segments: &'a [Arc<SegmentHandle>],
    /// Per segment, the window whose rows its rollup answers (so they are not candidates).
    rolled_up: &'a [Option<(i64, i64)>],
    next: usize,
    heap: std::collections::BinaryHeap<(i64, usize, u32, u64)>,
}

impl Frontier<'_> {
    /// Moves the newest candidates that no unopened segment can beat into `chunk`.
    fn next_chunk(
        &mut self,
        filter: &SpanFilter,
        size: usize,
        chunk: &mut Vec<(usize, Candidate)>,
    ) -> Result<()> {
        if size == usize::MAX {
            // Everything is wanted: no order to keep, so no queue.
            chunk.extend(
                self.heap
                    .drain()
                    .map(|(start, segment, row, seq)| (segment, Candidate { row, start, seq })),
            );
            // With no condition but time, kinds and status, the rows to read are those of
            // the row groups the window meets: the readers check each row's columns
            // (`ColumnFilter`, or the whole filter), so the index need not list them.
            let by_row_groups = ColumnFilter::of(filter).map(|_| filter.time_window());
            while let Some(segment) = self.segments.get(self.next) {
                let position = self.next;
                match by_row_groups.filter(|_| self.rolled_up[position].is_none()) {
                    Some(window) => {
                        for (begin, end) in segment::row_groups_meeting(&segment.parquet, window) {
                            // read by row number only: no order is kept, no rollup to leave out
                            chunk.extend((begin..end).map(|row| {
                                let candidate = Candidate {
                                    row,
                                    start: 0,
                                    seq: 0,
                                };
                                (position, candidate)
                            }));
                        }
                    }
                    None => candidates_of(segment, self.rolled_up[position], filter, |c| {
                        chunk.push((position, c))
                    })?,
                }
                self.next += 1;
            }
            return Ok(());
        }
        // Open segments until none left unopened could hold a newer candidate than the queue.
        while let Some(segment) = self.segments.get(self.next) {
            if self
                .heap
                .peek()
                .is_some_and(|top| top.0 > segment.meta.max_time)
            {
                break;
            }
            let (heap, position) = (&mut self.heap, self.next);
            candidates_of(segment, self.rolled_up[position], filter, |c| {
                heap.push((c.start, position, c.row, c.seq))
            })?;
            self.next += 1;
        }
        let boundary = self.segments.get(self.next).map(|s| s.meta.max_time);
        while chunk.len() < size {
            match self.heap.peek() {
                Some(top) if boundary.is_none_or(|b| top.0 > b) => {
                    if let Some((start, segment, row, seq)) = self.heap.pop() {
                        chunk.push((segment, Candidate { row, start, seq }));
                    }
                }
                _ => break,
            }
        }
        Ok(())
    }

    /// The newest start time any candidate not yet taken can have.
    fn newest_remaining(&self) -> Option<i64> {
        let unopened = self.segments.get(self.next).map(|s| s.meta.max_time);
        let queued = self.heap.peek().map(|top| top.0);
        queued.max(unopened)
    }
}

/// Hands the index candidates of `segment` that its rollup does not answer to `take`.
fn candidates_of(
    segment: &SegmentHandle,
    rolled_up: Option<(i64, i64)>,
    filter: &SpanFilter,
    mut take: impl FnMut(Candidate),
) -> Result<()> {
    let outside = |start: i64| rolled_up.is_none_or(|(from, to)| start < from || start >= to);
    // A segment whose every row its rollup answers has no candidates.
    if outside(segment.meta.min_time) || outside(segment.meta.max_time) {
        for candidate in segment.index.candidates(filter)? {
            if outside(candidate.start) {
                take(candidate);
            }
        }
    }
    Ok(())
}

/// Optional column groups of a lean read (`collect`).
#[derive(Debug, Clone, Copy, Default)]
struct Lean {
    metadata: bool,
    /// Models, provider, routing alias, service.
    descriptive: bool,
}

impl Lean {
    /// What either read needs.
    fn union(self, other: Lean) -> Lean {
        Lean {
            metadata: self.metadata || other.metadata,
            descriptive: self.descriptive || other.descriptive,
        }
    }

    /// What an aggregate's filter and groups read.
    fn for_aggregate(query: &AggregateQuery) -> Lean {
        use llmtrace_model::Dimension;
        let filter = &query.filter;
        let groups = |wanted: fn(&Dimension) -> bool| query.group_by.iter().any(wanted);
        Lean {
            metadata: !filter.metadata.is_empty()
                || groups(|d| matches!(d, Dimension::Metadata(_))),
            descriptive: filter.model.is_some()
                || filter.provider.is_some()
                || filter.routing_alias.is_some()
                || filter.service_name.is_some()
                || groups(|d| {
                    matches!(
                        d,
                        Dimension::Model
                            | Dimension::Provider
                            | Dimension::RoutingAlias
                            | Dimension::Service
                    )
                }),
        }
    }
}

/// An empty aggregation per query.
fn fresh_aggregations<'q>(queries: &[&'q AggregateQuery]) -> Vec<Aggregation<'q>> {
    queries
        .iter()
        .map(|query| Aggregation::new(query))
        .collect()
}

/// Every live span matching `filter`. With `page`, only the newest `limit + 1` of them are
/// guaranteed (candidates are taken newest first and the scan stops once that many matches
/// are newer than every candidate left).
///
/// Segment rows come back light (see `Projection`); `Collected::whole` completes the ones
/// kept. With `rollup_use`, the rows of its window in segments whose rollup is current and
/// holds its view are left out, and those rollups returned instead.
///
/// With `lean`, segment rows carry only what filters, aggregates and deletions read
/// (`Projection::lean`, plus the column groups `lean` asks for): for callers that count or
/// aggregate rows and never hand them out.
fn collect<'q>(
    shared: &Shared,
    filter: &SpanFilter,
    page: Option<&SpanQuery>,
    rollup_use: Option<RollupUse>,
    lean: Option<Lean>,
    gather: Gather<'q>,
) -> Result<Collected<'q>> {
    let aggregate = match gather {
        Gather::Aggregates(queries) => Some(queries),
        Gather::Rows | Gather::Batches { .. } => None,
    };
    let page_size = page.map(|query| query.limit.saturating_add(1));
    // Cheap conditions first; the text, the costly one, only for rows that pass them.
    let prefilter = TextPrefilter::new(filter.text.as_deref());
    let without_text = SpanFilter {
        text: None,
        ..filter.clone()
    };
    // A row tied with the cursor's start time may still lie before it: match on both.
    let wanted = |span: &Span| {
        page.is_none_or(|query| query.after_cursor(span))
            && without_text.matches(span)
            && filter.text.as_ref().is_none_or(|text| {
                prefilter.may_match(span) && llmtrace_model::query::text_matches(text, span)
            })
    };
    let mut found = Vec::new();
    let mut aggregated = Vec::new();
    let mut batches = Vec::new();
    // Under the lock only the active memtable's rows are referenced; matching happens after.
    let (frozen, segments, deletions, active_rows) = {
        let state = shared.read_state();
        let active_rows: Vec<StoredSpan> = state
            .active
            .rows()
            .filter(|row| row.span.project == filter.project)
            .cloned()
            .collect();
        let mut segments: Vec<Arc<SegmentHandle>> = state
            .segments
            .iter()
            .filter(|handle| overlaps(&handle.meta, filter))
            .cloned()
            .collect();
        segments.sort_by_key(|handle| std::cmp::Reverse(handle.meta.max_time));
        (
            state.frozen.clone(),
            segments,
            state.deletions.clone(),
            active_rows,
        )
    };
    let mut active = ActiveKeys(
        active_rows
            .iter()
            .map(|row| (ActiveKeys::hash(&row.span), row.span.clone()))
            .collect(),
    );
    active.0.sort_unstable_by_key(|(hash, _)| *hash);
    let attributes = !filter.attributes.is_empty();
    newest_kept(active_rows, page_size, attributes, &mut found, |span| {
        wanted(span)
    });
    // Memtables hold one version per span and are newer than every segment; a newer
    // memtable supersedes an older one.
    let in_memtables_after = |span: &Span, frozen_from: usize| {
        active.contains(span)
            || frozen[frozen_from..]
                .iter()
                .any(|memtable| memtable.get(&span.key()).is_some())
    };
    for (position, memtable) in frozen.iter().enumerate() {
        let rows: Vec<StoredSpan> = memtable
            .rows()
            .filter(|row| {
                row.span.project == filter.project
                    && !hidden(&row.span, row.seq, memtable.max_seq, &deletions)
            })
            .cloned()
            .collect();
        newest_kept(rows, page_size, attributes, &mut found, |span| {
            wanted(span) && !in_memtables_after(span, position + 1)
        });
    }
    let superseded = |span: &Span, seq: u64, own: usize| -> Result<bool> {
        if in_memtables_after(span, 0) {
            return Ok(true);
        }
        for (position, handle) in segments.iter().enumerate() {
            if position != own
                && handle.meta.supersedes
                && handle.meta.max_seq > seq
                && handle.may_hold(span)
                && handle
                    .index
                    .newest_seq(&span.trace_id, &span.span_id)?
                    .is_some_and(|newer| newer > seq)
            {
                return Ok(true);
            }
        }
        Ok(false)
    };
    // Segment candidates already meet every term of the filter; the full-text terms, which
    // would cost reading the text, are not checked again when the index answered them.
    let segment_check = SpanFilter {
        text: filter
            .text
            .clone()
            .filter(|text| !index::answers_text(text)),
        ..filter.clone()
    };
    let wanted_in_segment = |span: &Span| {
        segment_check.matches(span) && page.is_none_or(|query| query.after_cursor(span))
    };
    let projection = Projection {
        whole: false,
        attributes: !filter.attributes.is_empty(),
        text: segment_check.text.is_some(),
        lean: lean.is_some(),
        metadata: lean.is_none_or(|lean| lean.metadata),
        descriptive: lean.is_none_or(|lean| lean.descriptive),
    };
    let mut rollups = Vec::new();
    let rolled_up: Vec<Option<(i64, i64)>> = segments
        .iter()
        .map(|handle| {
            let used = rollup_use.as_ref()?;
            let (from, to) = used.window;
            if handle.meta.max_time < from || handle.meta.min_time >= to {
                return None;
            }
            rollups.push(
                handle
                    .current_rollup(&deletions)
                    .filter(|rollup| rollup.has(&used.view))?,
            );
            Some(used.window)
        })
        .collect();
    // An aggregate whose filter the columns answer (`ColumnFilter`) and whose groups are
    // plain columns reads only those columns where no row needs a check of its own
    // (`needs_keys`).
    // Batches are read the same way: the filter's columns and the ones asked for.
    let plain: Option<(ColumnFilter, Vec<&str>)> = match gather {
        Gather::Rows => None,
        Gather::Aggregates(queries) => (|| {
            let column_filter = ColumnFilter::of(filter)?;
            let mut columns: Vec<&str> = ColumnFilter::COLUMNS.to_vec();
            for query in queries {
                for column in ColumnAggregation::columns(query)? {
                    if !columns.contains(&column) {
                        columns.push(column);
                    }
                }
            }
            Some((column_filter, columns))
        })(),
        Gather::Batches {
            columns: wanted, ..
        } => ColumnFilter::of(filter).map(|column_filter| {
            let mut columns: Vec<&str> = ColumnFilter::COLUMNS.to_vec();
            for column in wanted {
                if !columns.contains(column) {
                    columns.push(column);
                }
            }
            (column_filter, columns)
        }),
    };
    // start times of the memtables' rows: a segment row may have a newer version there
    // only at the same start time
    let memtable_times = match plain {
        None => None,
        Some(_) => active
            .0
            .iter()
            .map(|(_, span)| span.start_time)
            .chain(frozen.iter().flat_map(|memtable| {
                memtable
                    .rows()
                    .filter(|row| row.span.project == filter.project)
                    .map(|row| row.span.start_time)
            }))
            .fold(None, |range: Option<(i64, i64)>, time| {
                Some(range.map_or((time, time), |(low, high)| (low.min(time), high.max(time))))
            }),
    };
    // Whether some row of the segment at `position` may be hidden by a deletion not yet
    // applied to it or replaced by a version in a memtable or a superseding segment.
    let needs_keys = |position: usize| {
        let meta = &segments[position].meta;
        let meets = |low: i64, high: i64| low <= meta.max_time && high >= meta.min_time;
        memtable_times.is_some_and(|(low, high)| meets(low, high))
            || deletions
                .iter()
                .any(|record| record.seq > meta.deletions_applied_through)
            || segments.iter().enumerate().any(|(other, handle)| {
                other != position
                    && handle.meta.supersedes
                    && meets(handle.meta.min_time, handle.meta.max_time)
            })
    };
    let mut frontier = Frontier {
        segments: &segments,
        rolled_up: &rolled_up,
        next: 0,
        heap: std::collections::BinaryHeap::new(),
    };
    let mut chunk_size = page_size.map_or(usize::MAX, |size| size.saturating_add(16));
    let mut chunk = Vec::new();
    loop {
        chunk.clear();
        frontier.next_chunk(filter, chunk_size, &mut chunk)?;
        if let Gather::Batches { max_rows, .. } = gather {
            // a whole scan takes every candidate in its first chunk, and the memtables' rows
            // are in `found` already: refuse before reading
            let rows = (found.len() + chunk.len()) as u64;
            if rows > max_rows {
                return Err(Error::OverBudget { rows, max_rows });
            }
        }
        if chunk.is_empty() {
            break;
        }
        chunk.sort_unstable_by_key(|(segment, candidate)| (*segment, candidate.row));
        // Each task reads rows of one segment; a whole scan (no page) reads a segment's row
        // groups as separate tasks, side by side.
        let mut tasks: Vec<&[(usize, Candidate)]> = Vec::new();
        for group in chunk.chunk_by(|a, b| a.0 == b.0) {
            if page_size.is_some() {
                tasks.push(group);
                continue;
            }
            let ends = &segments[group[0].0].row_group_ends;
            let group_of = |row: u32| ends.partition_point(|&end| end <= row);
            tasks.extend(group.chunk_by(|a, b| group_of(a.1.row) == group_of(b.1.row)));
        }
        let read_task = |task: &&[(usize, Candidate)]| -> Result<Gathered<'q>> {
            let position = task[0].0;
            let handle = &segments[position];
            let rows: Vec<u32> = task.iter().map(|(_, candidate)| candidate.row).collect();
            let applied = handle.meta.deletions_applied_through;
            let live = |span: &Span, seq: u64| -> Result<bool> {
                Ok(wanted_in_segment(span)
                    && !hidden(span, seq, applied, &deletions)
                    && !superseded(span, seq, position)?)
            };
            if let Gather::Batches { columns, .. } = gather {
                let mut batches = Vec::new();
                if let Some((column_filter, read)) =
                    plain.as_ref().filter(|_| !needs_keys(position))
                {
                    handle.batches(&rows, read, &mut |batch| {
                        let failed = |message| Error::segment(&handle.path, message);
                        let keep = column_filter.keep(batch).map_err(failed)?;
                        let kept = arrow::compute::filter_record_batch(
                            batch,
                            &arrow::array::BooleanArray::from(keep),
                        )
                        .map_err(|e| failed(e.to_string()))?;
                        batches.push(segment::project(&kept, columns)?);
                        Ok(())
                    })?;
                } else {
                    let mut kept = Vec::new();
                    for row in handle.read(&rows, Projection::WHOLE)? {
                        if live(&row.span, row.seq)? {
                            kept.push(row);
                        }
                    }
                    if !kept.is_empty() {
                        batches.push(segment::project(&segment::to_batch(&kept)?, columns)?);
                    }
                }
                return Ok(Gathered::Batches(batches));
            }
            if let Some(queries) = aggregate {
                if let Some((column_filter, columns)) =
                    plain.as_ref().filter(|_| !needs_keys(position))
                {
                    // no row here can be hidden or replaced: the filter and the aggregations
                    // read the columns they name, nothing else
                    let mut parts: Vec<ColumnAggregation> = queries
                        .iter()
                        .map(|query| ColumnAggregation::new(query))
                        .collect();
                    handle.batches(&rows, columns, &mut |batch| {
                        let failed = |message| Error::segment(&handle.path, message);
                        let keep = column_filter.keep(batch).map_err(failed)?;
                        for part in &mut parts {
                            part.add_batch(batch, &keep).map_err(failed)?;
                        }
                        Ok(())
                    })?;
                    let mut aggregations = fresh_aggregations(queries);
                    for (aggregation, part) in aggregations.iter_mut().zip(parts) {
                        part.merge_into(aggregation);
                    }
                    return Ok(Gathered::Aggregated(aggregations));
                }
                // rows are looked at, not kept: one reused span for the whole task
                let mut aggregations = fresh_aggregations(queries);
                handle.visit(&rows, projection, &mut |span, seq| {
                    if live(span, seq)? {
                        for aggregation in &mut aggregations {
                            aggregation.add_span(span);
                        }
                    }
                    Ok(())
                })?;
                return Ok(Gathered::Aggregated(aggregations));
            }
            let mut kept = Vec::new();
            for (row, number) in handle.read(&rows, projection)?.into_iter().zip(rows) {
                if live(&row.span, row.seq)? {
                    kept.push(Found {
                        span: row.span,
                        json: None,
                        origin: Some((position, number)),
                    });
                }
            }
            Ok(Gathered::Rows(kept))
        };
        for gathered in crate::parallel::map(&tasks, read_task) {
            match gathered? {
                Gathered::Rows(kept) => found.extend(kept),
                Gathered::Aggregated(part) => aggregated.push(part),
                Gathered::Batches(part) => batches.extend(part),
            }
        }
        if let (Some(size), Some(remaining)) = (page_size, frontier.newest_remaining()) {
            // Ties with the newest remaining candidate may still sort either way: keep going.
            let newer = found
                .iter()
                .filter(|found| found.span.start_time > remaining)
                .count();
            if newer >= size {
                break;
            }
        }
        chunk_size = chunk_size.saturating_mul(2);
    }
    Ok(Collected {
        found,
        aggregated,
        batches,
        segments,
        rollups,
    })
}

/// What `collect` does with the segment rows it finds live.
#[derive(Clone, Copy)]
enum Gather<'q> {
    /// Keeps them (light, see `Projection`).
    Rows,
    /// Adds them to one aggregation per query, keeping none.
    Aggregates(&'q [&'q AggregateQuery]),
    /// Hands them out as Arrow batches of `columns`, having refused first if more than
    /// `max_rows` rows are candidates.
    Batches {
        columns: &'q [&'q str],
        max_rows: u64,
    },
}

/// What one segment task of `collect` gathered.
enum Gathered<'q> {
    Rows(Vec<Found>),
    Aggregated(Vec<Aggregation<'q>>),
    Batches(Vec<arrow::array::RecordBatch>),
}

/// What `collect` found, with the segments its rows came from.
struct Collected<'q> {
    /// Rows kept; when aggregating, only the memtables' rows.
    found: Vec<Found>,
    /// When aggregating, the segment rows' aggregations, one set per task.
    aggregated: Vec<Vec<Aggregation<'q>>>,
    /// When gathering batches, the segment rows' batches.
    batches: Vec<arrow::array::RecordBatch>,
    segments: Vec<Arc<SegmentHandle>>,
    /// Rollups standing in for the rows of the rollup window in their segments.
    rollups: Vec<Arc<Rollup>>,
}

impl Collected<'_> {
    /// The spans of `found`, in that order, with the segment rows among them completed
    /// (they were read light).
    fn whole(segments: &[Arc<SegmentHandle>], found: Vec<Found>) -> Result<Vec<Span>> {
        let mut spans: Vec<Span> = Vec::with_capacity(found.len());
        // (segment, row, position in `spans`) of each segment row
        let mut light: Vec<(usize, u32, usize)> = Vec::new();
        for (position, found) in found.into_iter().enumerate() {
            if let Some((segment, row)) = found.origin {
                light.push((segment, row, position));
            }
            let mut span = Arc::unwrap_or_clone(found.span);
            if let Some(json) = found.json {
                json.restore(&mut span).map_err(|e| {
                    Error::Encode(format!("a memtable row's documents do not parse: {e}"))
                })?;
            }
            spans.push(span);
        }
        light.sort_unstable();
        for group in light.chunk_by(|a, b| a.0 == b.0) {
            let rows: Vec<u32> = group.iter().map(|&(_, row, _)| row).collect();
            let mut taken: Vec<Span> = group
                .iter()
                .map(|&(_, _, position)| std::mem::take(&mut spans[position]))
                .collect();
            segments[group[0].0].complete(&rows, &mut taken)?;
            for (&(_, _, position), span) in group.iter().zip(taken) {
                spans[position] = span;
            }
        }
        Ok(spans)
    }
}

/// Freezes the active memtable when `rotate`, then writes the frozen memtables as segments,
/// oldest first, each freed with its WAL files as soon as its segments are durable.
fn flush(shared: &Shared, commands: &SyncSender<Command>, rotate: bool) -> Result<()> {
    let _maintenance = shared.lock_maintenance();
    if rotate {
        shared.wal_thread.to_foreground();
        let (reply, answer) = mpsc::sync_channel(1);
        commands
            .send(Command::Rotate { reply })
            .map_err(|_| Error::Closed)?;
        answer.recv().map_err(|_| Error::Closed)??;
    }
    loop {
        let (memtable, manifest, deletions, existing) = {
            let state = shared.read_state();
            let Some(oldest) = state.frozen.first() else {
                return Ok(());
            };
            (
                oldest.clone(),
                state.manifest.clone(),
                state.deletions.clone(),
                state.segments.clone(),
            )
        };
        flush_memtable(shared, &memtable, manifest, &deletions, &existing)?;
    }
}

/// Writes one frozen memtable as segments (one per project and day), names them in the
/// manifest, swaps them in for the memtable and removes the WAL files it came from.
fn flush_memtable(
    shared: &Shared,
    memtable: &Arc<Memtable>,
    mut manifest: Manifest,
    deletions: &[DeletionRecord],
    existing: &[Arc<SegmentHandle>],
) -> Result<()> {
    let through = memtable.max_seq;
    let data_dir = &shared.config.data_dir;
    let mut new_handles = Vec::new();
    let mut partitions: BTreeMap<(String, String), Vec<StoredSpan>> = BTreeMap::new();
    for row in memtable.rows() {
        if hidden(&row.span, row.seq, memtable.max_seq, deletions) {
            continue;
        }
        let key = (
            row.span.project.clone(),
            segment::day_of(row.span.start_time),
        );
        partitions.entry(key).or_default().push(row.clone());
    }
    for ((project, day), mut rows) in partitions {
        let id = manifest.next_segment_id;
        manifest.next_segment_id += 1;
        let supersedes = mark_rewritten(&rows, existing.iter().chain(&new_handles));
        let written = NewSegment {
            id,
            project: &project,
            day: &day,
            deletions_applied_through: through,
            supersedes,
        };
        let handle = write_segment(data_dir, written, &mut rows)?;
        manifest.segments.push(handle.meta.clone());
        new_handles.push(Arc::new(handle));
    }
    manifest.flushed_seq = manifest.flushed_seq.max(through);
    manifest.deletions = deletions
        .iter()
        .filter(|record| record.seq <= manifest.flushed_seq)
        .cloned()
        .collect();
    manifest.save(data_dir)?;
    {
        let mut state = shared.write_state();
        state.frozen.retain(|frozen| !Arc::ptr_eq(frozen, memtable));
        // What is left in memory was written after the flushed rows.
        mark_rewritten_by_memtables(&state, &new_handles);
        state.segments.extend(new_handles);
        state.manifest = manifest;
    }
    let wal_dir = data_dir.join("wal");
    let _free = lock(&shared.free_wal_files);
    let last_deletion = shared.last_deletion_seq.load(Ordering::SeqCst);
    for (first_seq, _) in wal::list_files(&wal_dir)? {
        if first_seq <= through {
            wal::retire(&wal_dir, first_seq, last_deletion < first_seq)?;
        }
    }
    fsync_dir(&wal_dir)
}

struct NewSegment<'a> {
    id: u64,
    project: &'a str,
    day: &'a str,
    deletions_applied_through: u64,
    supersedes: bool,
}

/// Writes rows as a segment file and its index, both durable, and opens them.
fn write_segment(
    data_dir: &Path,
    new: NewSegment<'_>,
    rows: &mut [StoredSpan],
) -> Result<SegmentHandle> {
    let NewSegment {
        id,
        project,
        day,
        deletions_applied_through,
        supersedes,
    } = new;
    let relative = format!("segments/project={project}/day={day}/{id:016}.parquet");
    let path = data_dir.join(&relative);
    let started = Instant::now();
    // The index numbers rows in file order.
    segment::sort_rows(rows);
    let rows: &[StoredSpan] = rows;
    let parent = path.parent().unwrap_or(data_dir);
    fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    // File and index are independent: write them on two cores at once.
    let index_dir = index::dir_for(&path);
    let (bytes, indexed) = std::thread::scope(|scope| {
        let index = scope.spawn(|| {
            let started = Instant::now();
            index::build(&index_dir, rows).map(|()| started.elapsed())
        });
        let bytes = segment::write(&path, rows).map(|bytes| (bytes, started.elapsed()));
        let indexed = index
            .join()
            .unwrap_or_else(|_| Err(Error::segment(&index_dir, "index build panicked")));
        (bytes, indexed)
    });
    let ((bytes, parquet_time), index_time) = (bytes?, indexed?);
    tracing::debug!(
        segment = relative,
        rows = rows.len(),
        bytes,
        parquet_ms = parquet_time.as_millis(),
        index_ms = index_time.as_millis(),
        "segment written"
    );
    fsync_dir(parent)?;
    let meta = SegmentMeta {
        id,
        project: project.to_string(),
        day: day.to_string(),
        path: relative,
        rows: rows.len() as u64,
        bytes,
        min_time: rows.iter().map(|r| r.span.start_time).min().unwrap_or(0),
        max_time: rows.iter().map(|r| r.span.start_time).max().unwrap_or(0),
        min_seq: rows.iter().map(|r| r.seq).min().unwrap_or(0),
        max_seq: rows.iter().map(|r| r.seq).max().unwrap_or(0),
        deletions_applied_through,
        supersedes,
    };
    SegmentHandle::open(data_dir, meta)
}

/// Marks the older segments `rows` hold newer versions of; returns whether there were any.
fn mark_rewritten<'a>(
    rows: &[StoredSpan],
    older: impl Iterator<Item = &'a Arc<SegmentHandle>>,
) -> bool {
    let mut any = false;
    for handle in older {
        if rows.iter().any(|row| handle.holds_key(&row.span)) {
            handle.rewritten.store(true, Ordering::SeqCst);
            any = true;
        }
    }
    any
}

/// Merges a run of small neighbouring segments of a crowded partition into one (one run a
/// call, `small_run`); when `force`, every segment of each crowded partition, or of one with
/// deletions to purge. Deleted and superseded rows are dropped.
fn compact(shared: &Shared, force: bool) -> Result<u64> {
    let _maintenance = shared.lock_maintenance();
    let (segments, mut manifest, deletions) = {
        let state = shared.read_state();
        (
            state.segments.clone(),
            state.manifest.clone(),
            state.deletions.clone(),
        )
    };
    let persisted: Vec<DeletionRecord> = deletions
        .iter()
        .filter(|record| record.seq <= manifest.flushed_seq)
        .cloned()
        .collect();
    let newest_deletion = persisted.iter().map(|record| record.seq).max().unwrap_or(0);
    let mut partitions: BTreeMap<(String, String), Vec<Arc<SegmentHandle>>> = BTreeMap::new();
    for handle in segments {
        partitions
            .entry((handle.meta.project.clone(), handle.meta.day.clone()))
            .or_default()
            .push(handle);
    }
    let data_dir = &shared.config.data_dir;
    let mut replaced: Vec<Arc<SegmentHandle>> = Vec::new();
    let mut added: Vec<Arc<SegmentHandle>> = Vec::new();
    for ((project, day), mut handles) in partitions {
        handles.sort_by_key(|handle| handle.meta.min_seq);
        let partition_segments = handles.len();
        let purge = force
            && handles.iter().any(|handle| {
                persisted.iter().any(|record| {
                    record.seq > handle.meta.deletions_applied_through
                        && record.deletion.project == handle.meta.project
                })
            });
        let handles = if force {
            if handles.len() < shared.config.compact_min_segments && !purge {
                continue;
            }
            handles
        } else {
            match small_run(&handles, &shared.config) {
                Some(run) => run,
                None => continue,
            }
        };
        let whole = handles.len() == partition_segments;
        let mut latest: HashMap<SpanKey, StoredSpan, foldhash::fast::RandomState> =
            HashMap::default();
        for handle in &handles {
            for row in segment::read(&handle.path)? {
                if hidden(
                    &row.span,
                    row.seq,
                    handle.meta.deletions_applied_through,
                    &persisted,
                ) {
                    continue;
                }
                match latest.get(&row.span.key()) {
                    Some(existing) if existing.seq >= row.seq => {}
                    _ => {
                        latest.insert(row.span.key(), row);
                    }
                }
            }
        }
        let mut rows: Vec<StoredSpan> = latest.into_values().collect();
        let id = manifest.next_segment_id;
        manifest.next_segment_id += 1;
        if !rows.is_empty() {
            // Every version of a span lives in its partition, and only the newest of those
            // merged survives; a run may still hold newer versions of its partition's
            // earlier segments.
            let merged = NewSegment {
                id,
                project: &project,
                day: &day,
                deletions_applied_through: newest_deletion,
                supersedes: !whole && handles.iter().any(|handle| handle.meta.supersedes),
            };
            added.push(Arc::new(write_segment(data_dir, merged, &mut rows)?));
        }
        replaced.extend(handles);
        if !force {
            break;
        }
    }
    if replaced.is_empty() {
        return Ok(0);
    }
    let replaced_ids: Vec<u64> = replaced.iter().map(|handle| handle.meta.id).collect();
    manifest
        .segments
        .retain(|meta| !replaced_ids.contains(&meta.id));
    manifest
        .segments
        .extend(added.iter().map(|handle| handle.meta.clone()));
    // A deletion every segment has applied, and that the memtables saw, is no longer needed.
    let oldest_applied = manifest
        .segments
        .iter()
        .map(|meta| meta.deletions_applied_through)
        .min()
        .unwrap_or(u64::MAX);
    manifest
        .deletions
        .retain(|record| record.seq > oldest_applied);
    manifest.save(data_dir)?;
    {
        let mut state = shared.write_state();
        state
            .segments
            .retain(|handle| !replaced_ids.contains(&handle.meta.id));
        // Every row in memory is newer than every row compacted; so may be rows of the
        // partition's later segments, where only a run was merged.
        mark_rewritten_by_memtables(&state, &added);
        state.segments.extend(added);
        mark_rewritten_by_segments(&state.segments);
        let flushed_seq = manifest.flushed_seq;
        state
            .deletions
            .retain(|record| record.seq > oldest_applied || record.seq > flushed_seq);
        state.manifest = manifest;
    }
    for handle in &replaced {
        handle.obsolete.store(true, Ordering::SeqCst);
    }
    Ok(replaced.len() as u64)
}

/// The first run, in write order, of at least `compact_min_segments` neighbouring segments
/// each under half of `compact_max_bytes`, cut where their bytes together would pass it.
/// Only neighbours are merged, so a partition's segments keep disjoint ranges of sequence
/// numbers (`mark_rewritten_by_segments` relies on it).
fn small_run(
    handles: &[Arc<SegmentHandle>],
    config: &StoreConfig,
) -> Option<Vec<Arc<SegmentHandle>>> {
    let small = |handle: &&Arc<SegmentHandle>| handle.meta.bytes < config.compact_max_bytes / 2;
    let mut start = 0;
    while start < handles.len() {
        let length = handles[start..].iter().take_while(small).count();
        if length >= config.compact_min_segments.max(2) {
            let mut bytes = 0;
            // Two segments under half the limit always fit.
            let run = handles[start..start + length]
                .iter()
                .take_while(|handle| {
                    bytes += handle.meta.bytes;
                    bytes <= config.compact_max_bytes
                })
                .cloned()
                .collect();
            return Some(run);
        }
        start += length + 1;
    }
    None
}

/// Drops whole partitions whose newest row is past its project's retention.
fn retention(shared: &Shared, now_ns: i64) -> Result<u64> {
    let _maintenance = shared.lock_maintenance();
    let mut manifest = shared.read_state().manifest.clone();
    let expired: Vec<u64> = manifest
        .segments
        .iter()
        .filter(|meta| {
            let days = shared.config.retention_for(&meta.project);
            days > 0 && meta.max_time < now_ns - i64::from(days) * 86_400 * 1_000_000_000
        })
        .map(|meta| meta.id)
        .collect();
    if expired.is_empty() {
        return Ok(0);
    }
    let rows: u64 = manifest
        .segments
        .iter()
        .filter(|meta| expired.contains(&meta.id))
        .map(|meta| meta.rows)
        .sum();
    manifest.segments.retain(|meta| !expired.contains(&meta.id));
    manifest.save(&shared.config.data_dir)?;
    let mut state = shared.write_state();
    for handle in state
        .segments
        .iter()
        .filter(|h| expired.contains(&h.meta.id))
    {
        handle.obsolete.store(true, Ordering::SeqCst);
    }
    state
        .segments
        .retain(|handle| !expired.contains(&handle.meta.id));
    state.manifest = manifest;
    tracing::info!(
        segments = expired.len(),
        rows,
        "retention dropped expired partitions"
    );
    Ok(rows)
}

impl Store for EmbeddedStore {
    fn append(&self, spans: Vec<Span>) -> llmtrace_model::Result<()> {
        self.append_iter(&mut spans.into_iter())
    }

    /// Each span is prepared for the memtable and serialized into the WAL record as it is
    /// yielded: one pass over the batch, not one per stage.
    fn append_iter(&self, spans: &mut dyn Iterator<Item = Span>) -> llmtrace_model::Result<()> {
        let mut spans = spans.peekable();
        if spans.peek().is_none() {
            return Ok(());
        }
        let mut encoder = RowsEncoder::new(self.shared.config.wal_compression);
        let mut prepared: Vec<Prepared> = Vec::with_capacity(spans.size_hint().0);
        for span in spans {
            // Keys must fit the index's terms, which versions and rollups rely on.
            if let Some(problem) = llmtrace_model::span::identity_problem(&span) {
                return Err(llmtrace_model::Error::BadRequest(problem));
            }
            let mut row = Prepared::new(span);
            encoder.push(&mut row)?;
            prepared.push(row);
        }
        // only a whole, valid batch waits for memtable room (a bad one is refused at once)
        self.wait_for_room()?;
        self.submit(encoder.finish()?, Mutation::Spans(prepared))?;
        Ok(())
    }

    fn search(&self, query: &SpanQuery) -> llmtrace_model::Result<Page> {
        let mut filter = query.filter.clone();
        if let Some(cursor) = &query.cursor {
            // Everything after the cursor starts at or before it: prune by time.
            let bound = cursor.0.start_time.saturating_add(1);
            filter.until = Some(filter.until.map_or(bound, |until| until.min(bound)));
        }
        let Collected {
            mut found,
            segments,
            ..
        } = collect(&self.shared, &filter, Some(query), None, None, Gather::Rows)?;
        // Only the page (and one more, to know there is more) is read whole.
        found.sort_by(|a, b| b.span.order().cmp(&a.span.order()));
        found.truncate(query.limit.saturating_add(1));
        let newest = Collected::whole(&segments, found)?;
        Ok(Page::from_candidates(query, newest))
    }

    fn trace(&self, project: &str, trace_id: &str) -> llmtrace_model::Result<Vec<Span>> {
        let mut filter = SpanFilter::for_project(project);
        filter.trace_id = Some(trace_id.to_string());
        let mut spans = self.collect(&filter)?;
        spans.sort_by(|a, b| a.order().cmp(&b.order()));
        Ok(spans)
    }

    fn session(
        &self,
        project: &str,
        session_id: &str,
    ) -> llmtrace_model::Result<Vec<SessionTrace>> {
        let mut filter = SpanFilter::for_project(project);
        filter.session_id = Some(session_id.to_string());
        Ok(session_traces(self.collect(&filter)?))
    }

    fn aggregate(&self, query: &AggregateQuery) -> llmtrace_model::Result<Vec<AggregateRow>> {
        let mut answers = self.aggregate_many(std::slice::from_ref(query))?;
        Ok(answers.pop().unwrap_or_default())
    }

    fn aggregate_many(
        &self,
        queries: &[AggregateQuery],
    ) -> llmtrace_model::Result<Vec<Vec<AggregateRow>>> {
        // Queries with the same filter and rollup window share one read: (window, their
        // positions in `queries`).
        type Window = Option<RollupUse>;
        let mut reads: Vec<(Window, Vec<usize>)> = Vec::new();
        for (at, query) in queries.iter().enumerate() {
            let window = rollup::rollup_use(query);
            match reads
                .iter_mut()
                .find(|(w, positions)| *w == window && queries[positions[0]].filter == query.filter)
            {
                Some((_, positions)) => positions.push(at),
                None => reads.push((window, vec![at])),
            }
        }
        let mut answers: Vec<Vec<AggregateRow>> = vec![Vec::new(); queries.len()];
        for (window, all) in reads {
            // A query without buckets grouped like a bucketed one of the same read is that
            // query's groups summed over its buckets: it reads no rows of its own.
            let source_of = |at: usize| {
                let query = &queries[at];
                all.iter().copied().find(|&other| {
                    query.bucket_seconds.is_none()
                        && queries[other].bucket_seconds.is_some()
                        && queries[other].group_by == query.group_by
                })
            };
            let (derived, positions): (Vec<usize>, Vec<usize>) =
                all.iter().partition(|&&at| source_of(at).is_some());
            let members: Vec<&AggregateQuery> = positions.iter().map(|&at| &queries[at]).collect();
            let lean = members
                .iter()
                .map(|query| Lean::for_aggregate(query))
                .fold(Lean::default(), Lean::union);
            let filter = &members[0].filter;
            let collected = collect(
                &self.shared,
                filter,
                None,
                window.clone(),
                Some(lean),
                Gather::Aggregates(&members),
            )?;
            let mut aggregations = fresh_aggregations(&members);
            for found in &collected.found {
                for aggregation in &mut aggregations {
                    aggregation.add_span(&found.span);
                }
            }
            for part in collected.aggregated {
                for (into, aggregation) in aggregations.iter_mut().zip(part) {
                    into.merge(aggregation);
                }
            }
            if let Some(window) = &window {
                for aggregation in &mut aggregations {
                    for rollup in &collected.rollups {
                        aggregation.add_rollup(rollup, window);
                    }
                }
            }
            for at in derived {
                let source = source_of(at)
                    .and_then(|source| positions.iter().position(|&fed| fed == source));
                if let Some(source) = source {
                    answers[at] = aggregations[source].without_buckets(&queries[at]).finish();
                }
            }
            for (aggregation, at) in aggregations.into_iter().zip(positions) {
                answers[at] = aggregation.finish();
            }
        }
        Ok(answers)
    }

    fn delete(&self, deletion: &Deletion) -> llmtrace_model::Result<u64> {
        deletion.validate()?;
        let filter = SpanFilter {
            project: deletion.project.clone(),
            trace_id: deletion.trace_id.clone(),
            span_id: deletion.span_id.clone(),
            session_id: deletion.session_id.clone(),
            user_id: deletion.user_id.clone(),
            since: deletion.since,
            until: deletion.until,
            ..SpanFilter::default()
        };
        let found = collect(
            &self.shared,
            &filter,
            None,
            None,
            Some(Lean::default()),
            Gather::Rows,
        )?
        .found;
        let traces: BTreeSet<String> = found.iter().map(|f| f.span.trace_id.clone()).collect();
        let removed = found.len() as u64;
        self.submit(
            EncodedEntry::deletion(deletion)?,
            Mutation::Deletion(deletion.clone()),
        )?;
        {
            let _free = lock(&self.shared.free_wal_files);
            wal::discard_free_files(&self.shared.config.data_dir.join("wal"))?;
        }
        // scores go with their spans (a user's data deleted is deleted everywhere)
        self.scores
            .delete_traces(&deletion.project, &traces, deletion.span_id.as_deref())?;
        Ok(removed)
    }

    fn put_scores(&self, scores: Vec<llmtrace_model::Score>) -> llmtrace_model::Result<()> {
        self.scores.put(&scores)
    }

    fn scores(
        &self,
        query: &llmtrace_model::ScoreQuery,
    ) -> llmtrace_model::Result<Vec<llmtrace_model::Score>> {
        self.scores.query(query)
    }

    fn retention_sweep(&self, now_ns: i64) -> llmtrace_model::Result<u64> {
        let projects: BTreeSet<String> = self
            .shared
            .read_state()
            .manifest
            .segments
            .iter()
            .map(|meta| meta.project.clone())
            .collect();
        let dropped = retention(&self.shared, now_ns)?;
        if dropped > 0 {
            // scores of traces whose spans expired go with them
            for project in projects {
                let orphans: BTreeSet<String> = self
                    .scores
                    .traces(&project)?
                    .into_iter()
                    .filter(|trace_id| {
                        let mut query = SpanQuery::new(SpanFilter {
                            project: project.clone(),
                            trace_id: Some(trace_id.clone()),
                            ..SpanFilter::default()
                        });
                        query.limit = 1;
                        self.search(&query).is_ok_and(|page| page.spans.is_empty())
                    })
                    .collect();
                self.scores.delete_traces(&project, &orphans, None)?;
            }
        }
        Ok(dropped)
    }

    fn flush(&self) -> llmtrace_model::Result<()> {
        Ok(flush(&self.shared, &self.sender()?, true)?)
    }

    fn stats(&self) -> llmtrace_model::Result<StoreStats> {
        let state = self.shared.read_state();
        let memtable_rows =
            (state.active.len() + state.frozen.iter().map(|m| m.len()).sum::<usize>()) as u64;
        let segment_rows: u64 = state.segments.iter().map(|h| h.meta.rows).sum();
        Ok(StoreStats {
            rows: memtable_rows + segment_rows,
            memtable_rows,
            segments: state.segments.len() as u64,
            segment_bytes: state.segments.iter().map(|h| h.meta.bytes).sum(),
            wal_bytes: dir_bytes(&self.shared.config.data_dir.join("wal")),
            quarantined: self.shared.quarantined.load(Ordering::SeqCst),
            append_wait_ms: self.shared.append_wait_ns.load(Ordering::Relaxed) / 1_000_000,
        })
    }
}

#[cfg(test)]
#[cfg(target_os = "linux")]
mod tests {
    use super::*;
    use llmtrace_sched::test_on_a_thread;

    fn span(n: u64) -> Span {
        Span {
            project: "p".into(),
            trace_id: format!("{:032x}", n + 1),
            span_id: format!("{:016x}", n + 1),
            start_time: 1_795_000_000_000_000_000 + n as i64,
            ..Span::default()
        }
    }

    fn open(dir: &Path) -> EmbeddedStore {
        let mut config = StoreConfig::new(dir);
        config.background = false;
        EmbeddedStore::open(config).unwrap()
    }

    /// Appends one span from a fresh thread, under `SCHED_IDLE` if `background`.
    fn append_from_a_thread(store: &Arc<EmbeddedStore>, n: u64, background: bool) {
        let store = store.clone();
        std::thread::spawn(move || {
            let me = BackgroundThread::new(true);
            if background {
                me.to_background();
                assert!(llmtrace_sched::current_is_background());
            }
            store.append(vec![span(n)]).unwrap();
            me.leave();
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_wal_commits_at_its_callers_priority() {
        test_on_a_thread(|| {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(open(dir.path()));
            let wal = &store.shared.wal_thread;
            append_from_a_thread(&store, 0, true);
            assert!(
                wal.is_background(),
                "a background append was committed at normal"
            );
            append_from_a_thread(&store, 1, true);
            assert!(wal.is_background());
            append_from_a_thread(&store, 2, false);
            assert!(
                !wal.is_background(),
                "a normal append was left in the background"
            );
            assert_eq!(store.stats().unwrap().rows, 3);
        });
    }

    #[test]
    fn a_thread_waiting_for_the_state_lock_brings_the_wal_thread_forward() {
        test_on_a_thread(|| {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(open(dir.path()));
            append_from_a_thread(&store, 0, true);
            assert!(store.shared.wal_thread.is_background());
            // the lock held as a background commit would hold it
            let held = store.shared.write_state();
            let reader = {
                let store = store.clone();
                std::thread::spawn(move || store.stats().unwrap().rows)
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while store.shared.wal_thread.is_background() {
                assert!(
                    Instant::now() < deadline,
                    "the waiting reader left it behind"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            drop(held);
            assert_eq!(reader.join().unwrap(), 1);
        });
    }

    #[test]
    fn without_following_callers_the_wal_stays_at_normal_priority() {
        test_on_a_thread(|| {
            let dir = tempfile::tempdir().unwrap();
            let mut config = StoreConfig::new(dir.path());
            config.background = false;
            config.wal_follows_callers = false;
            let store = Arc::new(EmbeddedStore::open(config).unwrap());
            append_from_a_thread(&store, 0, true);
            assert!(!store.shared.wal_thread.is_background());
        });
    }
}
