//! Spreading independent pieces of one query over the machine's cores.

use std::sync::atomic::{AtomicUsize, Ordering};

/// At most this many threads per call: a query shares the machine with other queries.
const MAX_WORKERS: usize = 4;

/// How many threads a call may use.
fn workers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(MAX_WORKERS)
}

/// `work` applied to every task, the results in task order. Tasks are handed out one at a
/// time to up to `workers()` scoped threads, so uneven tasks still keep every thread busy;
/// one task (or one core) runs on the caller's thread.
pub(crate) fn map<T: Sync, R: Send>(tasks: &[T], work: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let workers = workers().min(tasks.len());
    if workers <= 1 {
        return tasks.iter().map(work).collect();
    }
    let next = AtomicUsize::new(0);
    let run = || {
        let mut done = Vec::new();
        loop {
            let at = next.fetch_add(1, Ordering::Relaxed);
            let Some(task) = tasks.get(at) else {
                return done;
            };
            done.push((at, work(task)));
        }
    };
    let mut results: Vec<(usize, R)> = std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..workers).map(|_| scope.spawn(run)).collect();
        let mut all = run();
        for helper in helpers {
            match helper.join() {
                Ok(done) => all.extend(done),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        all
    });
    results.sort_unstable_by_key(|(at, _)| *at);
    results.into_iter().map(|(_, result)| result).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_keep_task_order_whatever_finishes_first() {
        let tasks: Vec<u64> = (0..200).collect();
        let got = map(&tasks, |&n| {
            // later tasks finish sooner
            std::thread::sleep(std::time::Duration::from_micros(200 - n));
            n * 2
        });
        assert_eq!(got, tasks.iter().map(|n| n * 2).collect::<Vec<_>>());
        assert!(map(&[] as &[u64], |&n| n).is_empty());
    }
}
