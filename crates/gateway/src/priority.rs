//! The recorder thread's place in the CPU queue: behind every other thread while calls
//! trickle in, level with them once it falls behind.
//!
//! The recorder's work comes in bursts (a batch gathered for 50 ms, then about 10 µs a
//! call). At normal priority a burst held a CPU that a proxied call was waiting for: on two
//! cores at concurrency 1, most calls slower than 400 µs fell inside those bursts
//! (docs/BENCHMARKS.md, "The recorder steps aside"). Under Linux's `SCHED_IDLE` policy a
//! thread that wakes is meant to take the CPU from it at once; measured, the slow calls fell
//! by about a third. A thread under it gets almost nothing
//! while the CPUs are busy, though (a trial at nice +10 once lost calls that way), so the
//! recorder returns to normal priority when a batch arrives full, when a batch has taken
//! too long, or — decided by the thread that queues a call, since a starved recorder cannot
//! — when a quarter of the queue is waiting; it steps aside again only after a run of
//! batches at normal priority. Leaving `SCHED_IDLE` needs CAP_SYS_NICE or RLIMIT_NICE ≥ 20;
//! where the process may not, the recorder stays at normal priority throughout.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use llmtrace_sched::BackgroundThread;

/// The recorder thread's priority, shared with the threads that queue calls.
pub struct Priority {
    thread: BackgroundThread,
    /// Batches still to run at normal priority after the recorder fell behind: while the
    /// CPUs stay busy, each would otherwise start idle and fall behind again.
    hold: AtomicU32,
    /// Calls queued and not yet taken by the recorder.
    queued: AtomicUsize,
    /// Queued calls at which a queueing thread raises the recorder.
    raise_at: usize,
    /// A batch that takes longer than this at idle priority is finished at normal.
    starved_after: Duration,
}

/// About a second of trickle batches (50 ms each) at normal priority after falling behind.
const HOLD: u32 = 20;

impl Priority {
    /// For a recorder with a queue of `capacity` calls. `starved_after: None` keeps it at
    /// normal priority.
    pub fn new(starved_after: Option<Duration>, capacity: usize) -> Priority {
        Priority {
            thread: BackgroundThread::new(starved_after.is_some()),
            hold: AtomicU32::new(0),
            queued: AtomicUsize::new(0),
            raise_at: (capacity / 4).max(1),
            starved_after: starved_after.unwrap_or(Duration::MAX),
        }
    }

    /// Calls counted as queued and not yet taken.
    pub fn waiting(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    pub fn is_background(&self) -> bool {
        self.thread.is_background()
    }

    /// On the recorder thread: behind every other thread, unless it fell behind lately.
    pub fn background(&self) {
        let held = self
            .hold
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |hold| {
                hold.checked_sub(1)
            });
        if held.is_err() {
            self.thread.to_background();
        }
    }

    /// On the recorder thread: back to normal priority if a batch begun at `started` has
    /// taken too long at idle.
    pub fn check_starved(&self, started: Instant) {
        if self.is_background() && started.elapsed() > self.starved_after {
            self.hold.store(HOLD, Ordering::Relaxed);
            self.foreground();
        }
    }

    /// On a thread about to queue a call: counts it, and raises the recorder if it fell
    /// behind.
    pub fn queuing(&self) {
        let waiting = self.queued.fetch_add(1, Ordering::Relaxed) + 1;
        if waiting >= self.raise_at && self.is_background() {
            self.hold.store(HOLD, Ordering::Relaxed);
            self.foreground();
        }
    }

    /// On the recorder thread: `count` queued calls taken (or, on a queueing thread, a call
    /// that did not fit after all).
    pub fn taken(&self, count: usize) {
        let _ = self
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |queued| {
                Some(queued.saturating_sub(count))
            });
    }

    /// Level with the other threads (called on the recorder thread, or on a queueing thread
    /// when the recorder fell behind).
    pub fn foreground(&self) {
        self.thread.to_foreground();
    }

    /// On the recorder thread, as it ends.
    pub fn leave(&self) {
        self.thread.leave();
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use llmtrace_sched::{current, is_idle, test_on_a_thread};

    fn on_a_thread(starved_after: Duration, test: impl FnOnce(Priority) + Send + 'static) {
        test_on_a_thread(move || test(Priority::new(Some(starved_after), 100)));
    }

    #[test]
    fn the_thread_moves_to_idle_and_back() {
        on_a_thread(Duration::from_secs(1), |priority| {
            assert!(!is_idle(current()));
            priority.background();
            assert!(priority.is_background());
            assert!(is_idle(current()));
            priority.foreground();
            assert!(!priority.is_background());
            assert!(!is_idle(current()));
        });
    }

    #[test]
    fn a_starved_batch_is_finished_at_normal_priority_and_the_next_ones_too() {
        on_a_thread(Duration::ZERO, |priority| {
            priority.background();
            let started = Instant::now();
            std::thread::sleep(Duration::from_millis(2));
            priority.check_starved(started);
            assert!(!is_idle(current()));
            for _ in 0..HOLD {
                priority.background();
                assert!(!is_idle(current()), "stepped aside too soon");
            }
            priority.background();
            assert!(is_idle(current()));
        });
    }

    #[test]
    fn a_thread_that_queues_raises_a_recorder_that_fell_behind() {
        on_a_thread(Duration::from_secs(1), |priority| {
            let priority = std::sync::Arc::new(priority);
            priority.background();
            let me = current();
            // a quarter of the queue (100) is 25 calls
            let queueing = priority.clone();
            std::thread::spawn(move || (0..24).for_each(|_| queueing.queuing()))
                .join()
                .unwrap();
            assert!(is_idle(me), "raised before falling behind");
            priority.taken(10);
            let queueing = priority.clone();
            std::thread::spawn(move || (0..11).for_each(|_| queueing.queuing()))
                .join()
                .unwrap();
            assert!(!is_idle(me), "left behind at idle priority");
            assert!(!priority.is_background());
        });
    }

    #[test]
    fn without_a_limit_the_thread_stays_at_normal_priority() {
        std::thread::spawn(|| {
            let priority = Priority::new(None, 100);
            priority.background();
            assert!(!priority.is_background());
            assert!(!is_idle(current()));
        })
        .join()
        .unwrap();
    }
}
