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

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use llmtrace_model::query::{aggregate, session_traces};
use llmtrace_model::{
    AggregateQuery, AggregateRow, Deletion, Page, SessionTrace, Span, SpanFilter, SpanKey,
    SpanQuery, Store, StoreStats,
};

use crate::error::{Error, Result};
use crate::fsutil::{dir_bytes, fsync_dir, rename_to_quarantine};
use crate::manifest::{DeletionRecord, Manifest, SegmentMeta};
use crate::memtable::Memtable;
use crate::segment::{self, StoredSpan};
use crate::wal::{self, EncodedEntry, WalEntry, WalWriter};
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
    /// Compact a partition once it has this many segments.
    pub compact_min_segments: usize,
    /// Retention in days for projects without their own setting; 0 keeps forever.
    pub default_retention_days: u32,
    pub retention_days: HashMap<String, u32>,
    /// Run flush, compaction and retention on a background thread.
    pub background: bool,
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
            default_retention_days: 30,
            retention_days: HashMap::new(),
            background: true,
        }
    }

    fn retention_for(&self, project: &str) -> u32 {
        self.retention_days
            .get(project)
            .copied()
            .unwrap_or(self.default_retention_days)
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

/// A live segment file. Unlinked on drop once marked obsolete, so a reader holding it
/// never loses the file under its feet.
pub(crate) struct SegmentHandle {
    pub meta: SegmentMeta,
    pub path: PathBuf,
    obsolete: AtomicBool,
}

impl Drop for SegmentHandle {
    fn drop(&mut self) {
        if self.obsolete.load(Ordering::SeqCst)
            && let Err(err) = fs::remove_file(&self.path)
        {
            {
                tracing::warn!(path = %self.path.display(), error = %err, "could not remove obsolete segment");
            }
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
}

impl Shared {
    pub(crate) fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn read_state(&self) -> RwLockReadGuard<'_, State> {
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
            let path = data_dir.join(&meta.path);
            match segment::validate(&path) {
                Ok(()) => {
                    segments.push(Arc::new(SegmentHandle {
                        path,
                        meta: meta.clone(),
                        obsolete: AtomicBool::new(false),
                    }));
                    kept.push(meta);
                }
                Err(err) => {
                    tracing::error!(segment = %path.display(), error = %err, "segment is unreadable: quarantining it");
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
                        spans.into_iter().for_each(|span| active.insert(seq, span))
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

        let next_seq = max_seq + 1;
        let wal_writer = WalWriter::create(&wal_dir, next_seq)?;
        let records_in_file = 0;
        let shared = Arc::new(Shared {
            quarantined: AtomicU64::new(report.segments_quarantined.len() as u64),
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
            config: config.clone(),
        });
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
        };
        if config.background {
            store.start_background();
        }
        Ok(store)
    }

    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    fn start_background(&self) {
        let shared = self.shared.clone();
        let commands = self.sender();
        let handle = std::thread::Builder::new()
            .name("llmtrace-flush".into())
            .spawn(move || {
                let Ok(commands) = commands else { return };
                let mut last_retention = Instant::now() - Duration::from_secs(3600);
                while !shared.stopping.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(200));
                    let due = {
                        let state = shared.read_state();
                        let config = &shared.config;
                        !state.active.is_empty()
                            && (state.active.len() >= config.flush_rows
                                || state.active.approx_bytes() >= config.flush_bytes
                                || state.last_rotation.elapsed() >= config.flush_interval)
                    };
                    if due {
                        if let Err(err) = flush(&shared, &commands) {
                            tracing::error!(error = %err, "background flush failed; will retry");
                        }
                        if let Err(err) = compact(&shared, false) {
                            tracing::error!(error = %err, "background compaction failed");
                        }
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

    fn submit(&self, entry: EncodedEntry, mutation: Mutation) -> Result<u64> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.sender()?
            .send(Command::Write {
                entry,
                mutation,
                reply,
            })
            .map_err(|_| Error::Closed)?;
        answer.recv().map_err(|_| Error::Closed)?
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
            .and_then(|commands| flush(&self.shared, &commands));
        lock(&self.commands).take();
        if let Some(handle) = lock(&self.writer).take() {
            let _ = handle.join();
        }
        flushed
    }

    /// Every live span matching `filter`, in no particular order.
    fn collect(&self, filter: &SpanFilter) -> Result<Vec<Span>> {
        Ok(collect(&self.shared, filter, None, true)?
            .into_iter()
            .map(Arc::unwrap_or_clone)
            .collect())
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

/// Removes `.parquet` files under `segments/` that the manifest does not name: leftovers
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
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|ext| ext == "parquet") && !named.contains(&path)
            {
                tracing::info!(path = %path.display(), "removing segment left by an interrupted flush");
                let _ = fs::remove_file(&path);
            }
        }
    }
}

/// A row source and the deletion sequence number through which it already applied deletions.
fn hidden(row: &StoredSpan, applied_through: u64, deletions: &[DeletionRecord]) -> bool {
    deletions.iter().any(|record| {
        record.seq > applied_through && record.seq > row.seq && record.deletion.matches(&row.span)
    })
}

fn overlaps(meta: &SegmentMeta, filter: &SpanFilter) -> bool {
    let (since, until) = filter.time_window();
    meta.project == filter.project && meta.max_time >= since && meta.min_time < until
}

/// The latest version of each span seen so far, and whether that version matched.
#[derive(Default)]
struct Latest {
    by_key: HashMap<SpanKey, (u64, Option<Arc<Span>>)>,
    matched_keys: std::collections::HashSet<SpanKey>,
}

impl Latest {
    fn consider(&mut self, row: &StoredSpan, matched: bool) {
        let key = row.span.key();
        let value = (row.seq, matched.then(|| row.span.clone()));
        match self.by_key.get_mut(&key) {
            Some(existing) if existing.0 >= row.seq => return,
            Some(existing) => *existing = value,
            None => {
                self.by_key.insert(key.clone(), value);
            }
        }
        if matched {
            self.matched_keys.insert(key);
        }
    }

    /// How many current matches start after `time`.
    fn matches_after(&self, time: i64) -> usize {
        self.matched_keys
            .iter()
            .filter(|key| {
                self.by_key.get(*key).is_some_and(|(_, span)| {
                    span.as_ref().is_some_and(|span| span.start_time > time)
                })
            })
            .count()
    }

    fn into_matches(self) -> Vec<Arc<Span>> {
        self.by_key
            .into_values()
            .filter_map(|(_, span)| span)
            .collect()
    }
}

/// Every live span matching `filter`. With `page_size`, only the newest `page_size` of
/// them are guaranteed: segments are visited newest first and the scan stops once that many
/// matches are newer than anything left. (Versions of one span share its start time, so a
/// newer version of a returned span can only sit in a segment already visited.)
///
/// Without `whole_rows`, segment rows come back without their JSON-valued fields (enough for
/// aggregates, and much cheaper).
fn collect(
    shared: &Shared,
    filter: &SpanFilter,
    page: Option<&SpanQuery>,
    whole_rows: bool,
) -> Result<Vec<Arc<Span>>> {
    let page_size = page.map(|query| query.limit.saturating_add(1));
    // A row tied with the cursor's start time may still lie before it: match on both.
    let wanted = |span: &Span| {
        filter.matches(span) && page.is_none_or(|query| query.after_cursor(&span.order_key()))
    };
    let mut latest = Latest::default();
    let (frozen, mut segments, deletions) = {
        let state = shared.read_state();
        for row in state
            .active
            .rows()
            .filter(|row| row.span.project == filter.project)
        {
            latest.consider(row, wanted(&row.span));
        }
        let segments: Vec<Arc<SegmentHandle>> = state
            .segments
            .iter()
            .filter(|handle| overlaps(&handle.meta, filter))
            .cloned()
            .collect();
        (state.frozen.clone(), segments, state.deletions.clone())
    };
    for memtable in &frozen {
        for row in memtable.rows() {
            if row.span.project == filter.project && !hidden(row, memtable.max_seq, &deletions) {
                latest.consider(row, wanted(&row.span));
            }
        }
    }
    segments.sort_by_key(|handle| std::cmp::Reverse(handle.meta.max_time));
    let needs_attributes = !filter.attributes.is_empty();
    for handle in &segments {
        if page_size.is_some_and(|wanted| latest.matches_after(handle.meta.max_time) >= wanted) {
            break;
        }
        let rows = segment::read_where(
            &handle.path,
            &wanted,
            needs_attributes,
            filter.trace_id.as_deref(),
            whole_rows,
            filter.text.is_some(),
        )?;
        for (row, matched) in rows {
            if !hidden(&row, handle.meta.deletions_applied_through, &deletions) {
                latest.consider(&row, matched);
            }
        }
    }
    Ok(latest.into_matches())
}

/// Rotates the WAL, writes the frozen memtables as segments, swaps the manifest, then
/// removes the WAL files the new manifest covers.
fn flush(shared: &Shared, commands: &SyncSender<Command>) -> Result<()> {
    let _maintenance = shared.lock_maintenance();
    let (reply, answer) = mpsc::sync_channel(1);
    commands
        .send(Command::Rotate { reply })
        .map_err(|_| Error::Closed)?;
    answer.recv().map_err(|_| Error::Closed)??;
    let (frozen, mut manifest, deletions) = {
        let state = shared.read_state();
        (
            state.frozen.clone(),
            state.manifest.clone(),
            state.deletions.clone(),
        )
    };
    let Some(through) = frozen.iter().map(|memtable| memtable.max_seq).max() else {
        return Ok(());
    };
    let data_dir = &shared.config.data_dir;
    let mut new_handles = Vec::new();
    for memtable in &frozen {
        let mut partitions: BTreeMap<(String, String), Vec<StoredSpan>> = BTreeMap::new();
        for row in memtable.rows() {
            if hidden(row, memtable.max_seq, &deletions) {
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
            let meta = write_segment(data_dir, id, &project, &day, &mut rows, through)?;
            manifest.segments.push(meta.clone());
            new_handles.push(Arc::new(SegmentHandle {
                path: data_dir.join(&meta.path),
                meta,
                obsolete: AtomicBool::new(false),
            }));
        }
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
        state.segments.extend(new_handles);
        let flushed: Vec<*const Memtable> = frozen.iter().map(Arc::as_ptr).collect();
        state
            .frozen
            .retain(|memtable| !flushed.contains(&Arc::as_ptr(memtable)));
        state.manifest = manifest;
    }
    let wal_dir = data_dir.join("wal");
    for (first_seq, path) in wal::list_files(&wal_dir)? {
        if first_seq <= through {
            fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    fsync_dir(&wal_dir)
}

fn write_segment(
    data_dir: &Path,
    id: u64,
    project: &str,
    day: &str,
    rows: &mut [StoredSpan],
    deletions_applied_through: u64,
) -> Result<SegmentMeta> {
    let relative = format!("segments/project={project}/day={day}/{id:016}.parquet");
    let path = data_dir.join(&relative);
    let bytes = segment::write(&path, rows)?;
    if let Some(parent) = path.parent() {
        fsync_dir(parent)?;
    }
    Ok(SegmentMeta {
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
    })
}

/// Merges the segments of crowded partitions (and, when `force`, of partitions with
/// deletions to purge) into one segment each, dropping deleted and superseded rows.
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
    for ((project, day), handles) in partitions {
        let purge = force
            && handles.iter().any(|handle| {
                persisted.iter().any(|record| {
                    record.seq > handle.meta.deletions_applied_through
                        && record.deletion.project == handle.meta.project
                })
            });
        if handles.len() < shared.config.compact_min_segments && !purge {
            continue;
        }
        let mut latest: HashMap<SpanKey, StoredSpan> = HashMap::new();
        for handle in &handles {
            for row in segment::read(&handle.path)? {
                if hidden(&row, handle.meta.deletions_applied_through, &persisted) {
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
            let meta = write_segment(data_dir, id, &project, &day, &mut rows, newest_deletion)?;
            added.push(Arc::new(SegmentHandle {
                path: data_dir.join(&meta.path),
                meta,
                obsolete: AtomicBool::new(false),
            }));
        }
        replaced.extend(handles);
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
        state.segments.extend(added);
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
        if spans.is_empty() {
            return Ok(());
        }
        let entry = EncodedEntry::spans(&spans)?;
        self.submit(entry, Mutation::Spans(spans))?;
        Ok(())
    }

    fn search(&self, query: &SpanQuery) -> llmtrace_model::Result<Page> {
        let mut filter = query.filter.clone();
        if let Some(cursor) = &query.cursor {
            // Everything after the cursor starts at or before it: prune by time.
            let bound = cursor.0.start_time.saturating_add(1);
            filter.until = Some(filter.until.map_or(bound, |until| until.min(bound)));
        }
        let mut newest = collect(&self.shared, &filter, Some(query), true)?;
        // Only the page (and one more, to know there is more) is copied out.
        newest.sort_by_key(|span| std::cmp::Reverse(span.order_key()));
        newest.truncate(query.limit.saturating_add(1));
        let newest = newest.into_iter().map(Arc::unwrap_or_clone).collect();
        Ok(Page::from_candidates(query, newest))
    }

    fn trace(&self, project: &str, trace_id: &str) -> llmtrace_model::Result<Vec<Span>> {
        let mut filter = SpanFilter::for_project(project);
        filter.trace_id = Some(trace_id.to_string());
        let mut spans = self.collect(&filter)?;
        spans.sort_by_key(|span| span.order_key());
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
        let spans = collect(&self.shared, &query.filter, None, false)?;
        Ok(aggregate(query, spans.iter().map(Arc::as_ref)))
    }

    fn delete(&self, deletion: &Deletion) -> llmtrace_model::Result<u64> {
        deletion.validate()?;
        let filter = SpanFilter {
            project: deletion.project.clone(),
            trace_id: deletion.trace_id.clone(),
            session_id: deletion.session_id.clone(),
            user_id: deletion.user_id.clone(),
            since: deletion.since,
            until: deletion.until,
            ..SpanFilter::default()
        };
        let removed = collect(&self.shared, &filter, None, false)?.len() as u64;
        self.submit(
            EncodedEntry::deletion(deletion)?,
            Mutation::Deletion(deletion.clone()),
        )?;
        Ok(removed)
    }

    fn retention_sweep(&self, now_ns: i64) -> llmtrace_model::Result<u64> {
        Ok(retention(&self.shared, now_ns)?)
    }

    fn flush(&self) -> llmtrace_model::Result<()> {
        Ok(flush(&self.shared, &self.sender()?)?)
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
        })
    }
}
