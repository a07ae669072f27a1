//! The one level of parallelism every kernel follows: a kernel splits its work into tasks over
//! the rayon pool unless it already runs inside another kernel's task, where it runs on that
//! task's thread (nested splits cost more in scheduling than they gain on a few cores).

use std::cell::Cell;

thread_local! {
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
}

/// Whether a kernel called here may split its work across the pool.
pub(crate) fn may_split() -> bool {
    rayon::current_num_threads() > 1 && !IN_TASK.get()
}

/// Runs `f` as one task of a split: kernels it calls run on this thread.
pub(crate) fn task<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            IN_TASK.set(self.0);
        }
    }
    let _restore = Restore(IN_TASK.replace(true));
    f()
}

/// Runs `f` (a whole pass, say) on a worker of the rayon pool, so the splits of the kernels it
/// calls fork inside the pool instead of each being handed over from a thread outside it and
/// waited for on a lock. Runs `f` in place from a worker or with a one-thread pool. Kernels `f`
/// calls run at this thread's SIMD level ([`crate::simd::level`]), wherever `f` runs.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() || rayon::current_num_threads() <= 1 {
        f()
    } else {
        let level = crate::simd::level();
        rayon::scope(|_| crate::simd::with_level(level, f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_threads() -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap()
    }

    #[test]
    fn splits_only_outside_a_task() {
        two_threads().install(|| {
            assert!(may_split());
            task(|| {
                assert!(!may_split());
                task(|| assert!(!may_split()));
                assert!(!may_split());
            });
            assert!(may_split());
            // A panicking task leaves the thread able to split again.
            assert!(std::panic::catch_unwind(|| task(|| panic!("in a task"))).is_err());
            assert!(may_split());
        });
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        one.install(|| assert!(!may_split()));
    }

    #[test]
    fn on_pool_runs_on_a_worker() {
        let (threads, index) = std::thread::spawn(|| {
            let threads = rayon::current_num_threads();
            (threads, on_pool(rayon::current_thread_index))
        })
        .join()
        .unwrap();
        assert_eq!(
            index.is_some(),
            threads > 1,
            "{threads} threads in the global pool"
        );
        // The caller's SIMD level comes along.
        for level in crate::simd::supported_levels() {
            let there = std::thread::spawn(move || {
                crate::simd::with_level(level, || on_pool(crate::simd::level))
            });
            assert_eq!(there.join().unwrap(), level);
        }
        two_threads().install(|| {
            let here = std::thread::current().id();
            assert_eq!(
                on_pool(|| std::thread::current().id()),
                here,
                "in place on a worker"
            );
        });
    }
}
