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

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The recorder thread's priority, shared with the threads that queue calls.
pub struct Priority {
    /// Switching is possible here and was asked for.
    switchable: AtomicBool,
    /// The recorder thread (its pthread id), once it has stepped aside.
    thread: AtomicU64,
    idle: AtomicBool,
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
        let switchable = starved_after.is_some() && may_switch();
        if starved_after.is_some() && !switchable {
            tracing::debug!(
                "the gateway recorder stays at normal CPU priority: this process may not return a thread from SCHED_IDLE"
            );
        }
        Priority {
            switchable: AtomicBool::new(switchable),
            thread: AtomicU64::new(0),
            idle: AtomicBool::new(false),
            hold: AtomicU32::new(0),
            queued: AtomicUsize::new(0),
            raise_at: (capacity / 4).max(1),
            starved_after: starved_after.unwrap_or(Duration::MAX),
        }
    }

    /// Whether the recorder moves to idle priority at all.
    pub fn is_switchable(&self) -> bool {
        self.switchable.load(Ordering::Relaxed)
    }

    /// Calls counted as queued and not yet taken.
    pub fn waiting(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    pub fn is_background(&self) -> bool {
        self.idle.load(Ordering::Relaxed)
    }

    /// On the recorder thread: behind every other thread, unless it fell behind lately.
    pub fn background(&self) {
        let held = self
            .hold
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |hold| {
                hold.checked_sub(1)
            });
        if held.is_err() && self.is_switchable() && !self.is_background() {
            let thread = current();
            self.thread.store(thread, Ordering::Relaxed);
            self.idle.store(set(thread, true), Ordering::Relaxed);
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
        if !self.idle.swap(false, Ordering::Relaxed) {
            return;
        }
        if !set(self.thread.load(Ordering::Relaxed), false) {
            // the probe said this works: still idle, so the next caller tries again, and
            // never stepping aside again
            self.idle.store(true, Ordering::Relaxed);
            if self.switchable.swap(false, Ordering::Relaxed) {
                tracing::warn!("could not return the gateway recorder from SCHED_IDLE");
            }
        }
    }
}

/// Whether a thread of this process may enter `SCHED_IDLE` and leave it again, tried on a
/// thread of its own (a thread that cannot leave must not be the recorder).
fn may_switch() -> bool {
    std::thread::Builder::new()
        .name("priority-probe".into())
        .spawn(|| set(current(), true) && set(current(), false))
        .ok()
        .and_then(|probe| probe.join().ok())
        .unwrap_or(false)
}

#[cfg(target_os = "linux")]
fn current() -> u64 {
    thread_priority::unix::thread_native_id()
}

/// Moves `thread` (a pthread id) to `SCHED_IDLE` (`idle`) or `SCHED_OTHER`; true when its
/// policy is then the one asked for.
#[cfg(target_os = "linux")]
fn set(thread: u64, idle: bool) -> bool {
    use thread_priority::unix::{
        NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
        thread_schedule_policy_param,
    };
    let policy = ThreadSchedulePolicy::Normal(if idle {
        NormalThreadSchedulePolicy::Idle
    } else {
        NormalThreadSchedulePolicy::Other
    });
    // the library also sets the calling thread's nice value (on Linux a nice value belongs
    // to one thread): put back what it was, so an operator's `nice` is kept
    let nice = rustix::process::getpriority_process(None).unwrap_or(0);
    let _ = set_thread_priority_and_policy(
        thread,
        thread_priority::ThreadPriority::Os(Default::default()),
        policy,
    );
    if rustix::process::getpriority_process(None).is_ok_and(|now| now != nice) {
        let _ = rustix::process::setpriority_process(None, nice);
    }
    thread_schedule_policy_param(thread).is_ok_and(|(now, _)| now == policy)
}

#[cfg(not(target_os = "linux"))]
fn current() -> u64 {
    0
}

#[cfg(not(target_os = "linux"))]
fn set(_thread: u64, _idle: bool) -> bool {
    false
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// A thread's policy as the scheduler has it: 0 SCHED_OTHER, 5 SCHED_IDLE.
    fn policy_of(thread: u64) -> Option<u32> {
        use thread_priority::unix::{
            NormalThreadSchedulePolicy, ThreadSchedulePolicy, thread_schedule_policy_param,
        };
        match thread_schedule_policy_param(thread).ok()?.0 {
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other) => Some(0),
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle) => Some(5),
            _ => None,
        }
    }

    /// Runs `test` on a thread of its own, unless this process may not switch policies.
    fn on_a_thread(starved_after: Duration, test: impl FnOnce(Priority) + Send + 'static) {
        let thread = std::thread::spawn(move || {
            let priority = Priority::new(Some(starved_after), 100);
            if !priority.is_switchable() {
                eprintln!("skipped: this process may not return a thread from SCHED_IDLE");
                assert!(
                    std::env::var("LLMTRACE_TEST_REQUIRE_ALL").as_deref() != Ok("1"),
                    "LLMTRACE_TEST_REQUIRE_ALL=1 but this process may not switch policies"
                );
                return;
            }
            test(priority);
        });
        // a policy belongs to one thread: each test gets a fresh one, and its failure is ours
        if let Err(panic) = thread.join() {
            std::panic::resume_unwind(panic);
        }
    }

    #[test]
    fn the_thread_moves_to_idle_and_back() {
        on_a_thread(Duration::from_secs(1), |priority| {
            assert_eq!(policy_of(current()), Some(0));
            priority.background();
            assert!(priority.is_background());
            assert_eq!(policy_of(current()), Some(5));
            priority.foreground();
            assert!(!priority.is_background());
            assert_eq!(policy_of(current()), Some(0));
        });
    }

    #[test]
    fn a_starved_batch_is_finished_at_normal_priority_and_the_next_ones_too() {
        on_a_thread(Duration::ZERO, |priority| {
            priority.background();
            let started = Instant::now();
            std::thread::sleep(Duration::from_millis(2));
            priority.check_starved(started);
            assert_eq!(policy_of(current()), Some(0));
            for _ in 0..HOLD {
                priority.background();
                assert_eq!(policy_of(current()), Some(0), "stepped aside too soon");
            }
            priority.background();
            assert_eq!(policy_of(current()), Some(5));
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
            assert_eq!(policy_of(me), Some(5), "raised before falling behind");
            priority.taken(10);
            let queueing = priority.clone();
            std::thread::spawn(move || (0..11).for_each(|_| queueing.queuing()))
                .join()
                .unwrap();
            assert_eq!(policy_of(me), Some(0), "left behind at idle priority");
            assert!(!priority.is_background());
        });
    }

    #[test]
    fn an_operators_nice_value_is_kept() {
        on_a_thread(Duration::from_secs(1), |priority| {
            rustix::process::setpriority_process(None, 5).unwrap();
            priority.background();
            assert_eq!(policy_of(current()), Some(5));
            priority.foreground();
            assert_eq!(rustix::process::getpriority_process(None).unwrap(), 5);
        });
    }

    #[test]
    fn without_a_limit_the_thread_stays_at_normal_priority() {
        std::thread::spawn(|| {
            let priority = Priority::new(None, 100);
            priority.background();
            assert!(!priority.is_background());
            assert_eq!(policy_of(current()), Some(0));
        })
        .join()
        .unwrap();
    }
}
