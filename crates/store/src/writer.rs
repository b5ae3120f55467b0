//! The single WAL writer thread and its group commit.
//!
//! Callers serialize their batch on their own thread and send it here. The writer drains
//! every command waiting in its queue, writes them in one `write`, syncs once (per the
//! durability setting), applies them to the memtable under one lock, and only then
//! answers: a span is queryable when its append returns.
//!
//! The writer works at its callers' priority: a group whose appends all came from threads
//! under `SCHED_IDLE` (the gateway's recorder storing a trickle of calls) is committed
//! under `SCHED_IDLE` too, so that its write, fsync and memtable inserts wait for CPUs the
//! request threads leave free. Whoever comes to need the writer meanwhile brings it back
//! (`engine::EmbeddedStore::submit`, `Shared::write_state` / `read_state`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use llmtrace_model::Deletion;

use crate::engine::{Shared, note_write};
use crate::error::{Error, Result};
use crate::manifest::DeletionRecord;
use crate::memtable::{Memtable, Prepared};
use crate::wal::{EncodedEntry, WalWriter};

/// How hard an append works to be durable before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync (fdatasync) before acknowledging; concurrent appends share one fsync.
    Fsync,
    /// Acknowledge after the OS has the bytes; fsync at most this often.
    Interval(Duration),
    /// Never fsync explicitly (tests, benchmarks, throwaway data).
    None,
}

pub enum Mutation {
    Spans(Vec<Prepared>),
    Deletion(Deletion),
}

pub enum Command {
    Write {
        entry: EncodedEntry,
        mutation: Mutation,
        /// Sent from a thread under `SCHED_IDLE`.
        background: bool,
        reply: SyncSender<Result<u64>>,
    },
    /// Close the current WAL file and freeze the memtable; answers the sequence number
    /// through which the frozen memtable holds everything, or `None` if nothing was written.
    Rotate {
        reply: SyncSender<Result<Option<u64>>>,
    },
}

pub struct WalThread {
    pub shared: Arc<Shared>,
    pub wal: WalWriter,
    pub next_seq: u64,
    pub records_in_file: u64,
    pub durability: Durability,
    pub wal_dir: PathBuf,
}

struct Pending {
    seq: u64,
    mutation: Mutation,
    reply: SyncSender<Result<u64>>,
}

impl WalThread {
    pub fn run(mut self, commands: Receiver<Command>) {
        let mut last_fsync = Instant::now();
        let mut unsynced = false;
        loop {
            let first = match self.durability {
                Durability::Interval(every) if unsynced => match commands.recv_timeout(every) {
                    Ok(command) => command,
                    Err(RecvTimeoutError::Timeout) => {
                        if let Err(err) = self.wal.sync(true) {
                            tracing::error!(error = %err, "wal interval fsync failed");
                        }
                        unsynced = false;
                        last_fsync = Instant::now();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                },
                _ => match commands.recv() {
                    Ok(command) => command,
                    Err(_) => break,
                },
            };
            let mut batch = vec![first];
            while batch.len() < 4096 {
                match commands.try_recv() {
                    Ok(command) => batch.push(command),
                    Err(_) => break,
                }
            }
            let background = batch.iter().all(|command| {
                matches!(
                    command,
                    Command::Write {
                        background: true,
                        ..
                    }
                )
            });
            if background {
                self.shared.wal_thread.to_background();
            } else {
                self.shared.wal_thread.to_foreground();
            }
            let mut pending: Vec<Pending> = Vec::new();
            for command in batch {
                match command {
                    Command::Write {
                        entry,
                        mutation,
                        reply,
                        ..
                    } => {
                        let seq = self.next_seq;
                        match self.wal.write(seq, &entry) {
                            Ok(()) => {
                                self.next_seq += 1;
                                self.records_in_file += 1;
                                pending.push(Pending {
                                    seq,
                                    mutation,
                                    reply,
                                });
                            }
                            Err(err) => {
                                let _ = reply.send(Err(err));
                            }
                        }
                    }
                    Command::Rotate { reply } => {
                        self.commit(&mut pending, &mut last_fsync, &mut unsynced);
                        let _ = reply.send(self.rotate());
                    }
                }
            }
            self.commit(&mut pending, &mut last_fsync, &mut unsynced);
        }
        self.shared.wal_thread.leave();
        if let Err(err) = self.wal.sync(true) {
            tracing::error!(error = %err, "final wal fsync failed");
        }
    }

    /// Syncs what was written, applies it to the memtable, answers the callers.
    fn commit(
        &mut self,
        pending: &mut Vec<Pending>,
        last_fsync: &mut Instant,
        unsynced: &mut bool,
    ) {
        if pending.is_empty() {
            return;
        }
        let fsync = match self.durability {
            Durability::Fsync => true,
            Durability::Interval(every) => last_fsync.elapsed() >= every,
            Durability::None => false,
        };
        if let Err(err) = self.wal.sync(fsync) {
            tracing::error!(error = %err, "wal sync failed; failing the waiting appends");
            let message = err.to_string();
            for item in pending.drain(..) {
                let _ = item
                    .reply
                    .send(Err(Error::Encode(format!("wal sync failed: {message}"))));
            }
            return;
        }
        if fsync {
            *last_fsync = Instant::now();
            *unsynced = false;
        } else {
            *unsynced = true;
        }
        let full = {
            let mut guard = self.shared.write_state();
            let state = &mut *guard;
            for item in pending.iter_mut() {
                match std::mem::replace(&mut item.mutation, Mutation::Spans(Vec::new())) {
                    Mutation::Spans(spans) => {
                        for span in spans {
                            note_write(&state.segments, &span.span);
                            state.active.insert(item.seq, span);
                        }
                    }
                    Mutation::Deletion(deletion) => {
                        self.shared
                            .last_deletion_seq
                            .fetch_max(item.seq, std::sync::atomic::Ordering::SeqCst);
                        state.active.delete(item.seq, &deletion);
                        state.deletions.push(DeletionRecord {
                            seq: item.seq,
                            deletion,
                        });
                    }
                }
                state.active.max_seq = state.active.max_seq.max(item.seq);
            }
            self.shared.memtable_full(&state.active)
        };
        for item in pending.drain(..) {
            let _ = item.reply.send(Ok(item.seq));
        }
        // A full memtable is frozen here, not when a flush starts: while one flush runs the
        // next memtable fills only to its own size, and each is freed (with its WAL file) as
        // soon as its segments are written, so a burst meets the memory bound later.
        if full && let Err(err) = self.rotate() {
            tracing::error!(error = %err, "could not freeze the full memtable; the flush will");
        }
    }

    fn rotate(&mut self) -> Result<Option<u64>> {
        if self.records_in_file == 0 {
            return Ok(None);
        }
        self.wal.sync(true)?;
        let through = self.next_seq - 1;
        self.wal = WalWriter::create(&self.wal_dir, self.next_seq)?;
        self.records_in_file = 0;
        let mut state = self.shared.write_state();
        let mut frozen = std::mem::take(&mut state.active);
        frozen.max_seq = through;
        state.frozen.push(Arc::new(frozen));
        state.active = Memtable::default();
        state.last_rotation = Instant::now();
        Ok(Some(through))
    }
}
