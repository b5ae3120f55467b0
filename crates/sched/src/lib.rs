//! A thread that works in the background — under Linux's `SCHED_IDLE`, behind every other
//! thread — until some thread needs it to hurry.
//!
//! Work that nobody waits for at the moment (the gateway's recorder storing a trickle of
//! calls, the WAL committing that recorder's batch) can run under `SCHED_IDLE`, where a
//! thread that serves a request and wakes is meant to take the CPU from it at once;
//! measured, fewer proxied calls were slow (docs/BENCHMARKS.md, "The recorder steps aside"
//! and "The WAL thread commits at its callers' priority").
//! Such a thread gets almost nothing while the CPUs are busy, so whoever comes to wait for
//! it — a caller whose own work is urgent, a thread blocked on a lock it holds — brings it
//! back with [`BackgroundThread::to_foreground`]. Leaving `SCHED_IDLE` needs CAP_SYS_NICE
//! or RLIMIT_NICE ≥ 20; where the process may not, threads stay at normal priority.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

/// One thread's place in the CPU queue: stepped aside by the thread itself, brought back by
/// any thread.
pub struct BackgroundThread {
    /// Switching is possible here and was asked for.
    switchable: AtomicBool,
    idle: AtomicBool,
    /// The thread (its pthread id) while it is in the background. Raising holds the lock
    /// while it sets the policy, and the thread clears it (under the lock) before it ends,
    /// so no raise ever names a thread that is gone.
    thread: Mutex<Option<u64>>,
}

impl BackgroundThread {
    /// `wanted: false`, or a process that may not leave `SCHED_IDLE`, keeps the thread at
    /// normal priority throughout.
    pub fn new(wanted: bool) -> BackgroundThread {
        BackgroundThread {
            switchable: AtomicBool::new(wanted && may_switch()),
            idle: AtomicBool::new(false),
            thread: Mutex::new(None),
        }
    }

    /// Whether the thread moves to the background at all.
    pub fn is_switchable(&self) -> bool {
        self.switchable.load(Ordering::Relaxed)
    }

    pub fn is_background(&self) -> bool {
        self.idle.load(Ordering::Relaxed)
    }

    /// On the thread itself: behind every other thread, until someone calls
    /// `to_foreground`.
    pub fn to_background(&self) {
        if !self.is_switchable() || self.is_background() {
            return;
        }
        let mut thread = self.lock();
        let me = current();
        if set(me, true) {
            *thread = Some(me);
            self.idle.store(true, Ordering::Relaxed);
        }
    }

    /// Level with the other threads again: on the thread itself, or on any thread that
    /// needs it to hurry. Cheap when it is not in the background.
    pub fn to_foreground(&self) {
        if !self.is_background() {
            return;
        }
        let mut thread = self.lock();
        let Some(id) = *thread else { return };
        if set(id, false) {
            *thread = None;
            self.idle.store(false, Ordering::Relaxed);
        } else if self.switchable.swap(false, Ordering::Relaxed) {
            // the probe said this works: never step aside again (the flag stays set, so
            // every later caller tries again)
            tracing::warn!("could not return a thread from SCHED_IDLE");
        }
    }

    /// On the thread itself, before it ends: back at normal priority, and no longer named
    /// for others to raise.
    pub fn leave(&self) {
        self.to_foreground();
        *self.lock() = None;
        self.idle.store(false, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<u64>> {
        self.thread
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Whether the calling thread runs under `SCHED_IDLE` (work done on its behalf may too).
pub fn current_is_background() -> bool {
    is_idle(current())
}

/// Whether threads of this process may enter `SCHED_IDLE` and leave it again; tried once,
/// on a thread of its own (a thread that cannot leave must never enter).
pub fn may_switch() -> bool {
    static MAY: OnceLock<bool> = OnceLock::new();
    *MAY.get_or_init(|| {
        let may = std::thread::Builder::new()
            .name("priority-probe".into())
            .spawn(|| set(current(), true) && set(current(), false))
            .ok()
            .and_then(|probe| probe.join().ok())
            .unwrap_or(false);
        if !may {
            tracing::debug!(
                "background work stays at normal CPU priority: this process may not return a thread from SCHED_IDLE"
            );
        }
        may
    })
}

/// The calling thread's pthread id.
#[cfg(target_os = "linux")]
pub fn current() -> u64 {
    thread_priority::unix::thread_native_id()
}

#[cfg(target_os = "linux")]
fn policy(idle: bool) -> thread_priority::unix::ThreadSchedulePolicy {
    use thread_priority::unix::{NormalThreadSchedulePolicy, ThreadSchedulePolicy};
    ThreadSchedulePolicy::Normal(if idle {
        NormalThreadSchedulePolicy::Idle
    } else {
        NormalThreadSchedulePolicy::Other
    })
}

/// Whether `thread` (a pthread id) runs under `SCHED_IDLE`.
#[cfg(target_os = "linux")]
pub fn is_idle(thread: u64) -> bool {
    thread_priority::unix::thread_schedule_policy_param(thread)
        .is_ok_and(|(now, _)| now == policy(true))
}

/// Moves `thread` (a pthread id) to `SCHED_IDLE` (`idle`) or `SCHED_OTHER`; true when its
/// policy is then the one asked for.
#[cfg(target_os = "linux")]
fn set(thread: u64, idle: bool) -> bool {
    use thread_priority::unix::{set_thread_priority_and_policy, thread_schedule_policy_param};
    // the library also sets the calling thread's nice value (on Linux a nice value belongs
    // to one thread): put back what it was, so an operator's `nice` is kept
    let nice = rustix::process::getpriority_process(None).unwrap_or(0);
    let _ = set_thread_priority_and_policy(
        thread,
        thread_priority::ThreadPriority::Os(Default::default()),
        policy(idle),
    );
    if rustix::process::getpriority_process(None).is_ok_and(|now| now != nice) {
        let _ = rustix::process::setpriority_process(None, nice);
    }
    thread_schedule_policy_param(thread).is_ok_and(|(now, _)| now == policy(idle))
}

#[cfg(not(target_os = "linux"))]
pub fn current() -> u64 {
    0
}

#[cfg(not(target_os = "linux"))]
pub fn is_idle(_thread: u64) -> bool {
    false
}

#[cfg(not(target_os = "linux"))]
fn set(_thread: u64, _idle: bool) -> bool {
    false
}

/// For tests of code that steps aside: runs `test` on a fresh thread (a policy belongs to
/// one thread), unless this process may not switch policies — then it says so, and fails
/// under `LLMTRACE_TEST_REQUIRE_ALL=1`.
pub fn test_on_a_thread(test: impl FnOnce() + Send + 'static) {
    if !may_switch() {
        eprintln!("skipped: this process may not return a thread from SCHED_IDLE");
        assert!(
            std::env::var("LLMTRACE_TEST_REQUIRE_ALL").as_deref() != Ok("1"),
            "LLMTRACE_TEST_REQUIRE_ALL=1 but this process may not switch policies"
        );
        return;
    }
    if let Err(panic) = std::thread::spawn(test).join() {
        std::panic::resume_unwind(panic);
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_thread_steps_aside_and_another_brings_it_back() {
        test_on_a_thread(|| {
            let thread = Arc::new(BackgroundThread::new(true));
            assert!(!current_is_background());
            thread.to_background();
            assert!(thread.is_background());
            assert!(current_is_background());
            let other = thread.clone();
            std::thread::spawn(move || other.to_foreground())
                .join()
                .unwrap();
            assert!(!thread.is_background());
            assert!(!current_is_background());
            thread.to_background();
            thread.leave();
            assert!(!current_is_background());
            assert!(thread.lock().is_none(), "an ended thread stays named");
        });
    }

    #[test]
    fn an_operators_nice_value_is_kept() {
        test_on_a_thread(|| {
            let thread = BackgroundThread::new(true);
            rustix::process::setpriority_process(None, 5).unwrap();
            thread.to_background();
            assert!(current_is_background());
            thread.to_foreground();
            assert!(!current_is_background());
            assert_eq!(rustix::process::getpriority_process(None).unwrap(), 5);
        });
    }

    #[test]
    fn unwanted_it_stays_at_normal_priority() {
        std::thread::spawn(|| {
            let thread = BackgroundThread::new(false);
            thread.to_background();
            assert!(!thread.is_background());
            assert!(!current_is_background());
        })
        .join()
        .unwrap();
    }
}
