//! The owner's side of the worker board ([`crate::abi::worker`]): what a
//! runtime monitor learns about each worker at every sample, as a pure state
//! machine over counter values, so every rule is unit-tested without a
//! runtime.
//!
//! A worker publishes its counters (park count, park/unpark count, busy
//! time) when it parks, when it unparks, and at every scheduler maintenance
//! (tokio: every 61 ticks) while it runs tasks. So between two samples the
//! counters of a worker that works move, those of a parked worker stay odd,
//! and those of a worker inside one long poll stay as they were — which is
//! what [`Sampler::sample`] records as `since`.
//!
//! The sampler also decides whether the runtime is *idle*: every worker but
//! the monitor's own parked, and no worker woke since the previous sample
//! except to run the monitor. An idle runtime is healthy by definition, so
//! the monitor may sleep longer (a watcher sees the runtime's threads parked
//! in the kernel meanwhile).

use crate::registry::{self, WorkerEntry, WorkerRecord};

/// One worker's counters as the runtime publishes them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    /// Times the worker parked.
    pub(crate) park: u64,
    /// Times it parked plus times it unparked: odd while parked.
    pub(crate) park_unpark: u64,
    /// Total busy time, ns.
    pub(crate) busy_ns: u64,
}

impl Counters {
    fn parked(&self) -> bool {
        self.park_unpark % 2 == 1
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Worker {
    last: Option<Counters>,
    since_ns: u64,
    after_ns: u64,
    tid: u32,
}

/// Busy time (all workers together) below which an interval counts as idle.
const IDLE_BUSY_NS: u64 = 500_000;

/// Threads the monitor ran on, each with the workers it may be (bit i: worker
/// i was not parked at every sample taken on that thread).
const THREADS: usize = 8;

/// Per-runtime sampling state; allocated once, never allocates afterwards.
#[derive(Debug)]
pub(crate) struct Sampler {
    workers: Vec<Worker>,
    entries: Vec<Option<&'static WorkerEntry>>,
    current_thread: bool,
    last_sample_ns: u64,
    threads: [(u32, u64); THREADS],
    next_victim: usize,
}

impl Sampler {
    /// A sampler for `n` workers; `current_thread`: the runtime's one worker
    /// is the monitor's own thread. With `publish`, claims board entries.
    pub(crate) fn new(n: usize, current_thread: bool, publish: bool) -> Sampler {
        let entries = if publish {
            (0..n).map(|_| registry::claim_worker_entry()).collect()
        } else {
            Vec::new()
        };
        Sampler {
            workers: vec![Worker::default(); n],
            entries,
            current_thread,
            last_sample_ns: 0,
            threads: [(0, 0); THREADS],
            next_victim: 0,
        }
    }

    /// Records one sample taken at `now_ns` on thread `my_tid`, with worker
    /// `i`'s counters from `counters(i)`. Returns whether the runtime was
    /// idle since the previous sample.
    pub(crate) fn sample(
        &mut self,
        now_ns: u64,
        my_tid: u32,
        counters: impl Fn(usize) -> Counters,
    ) -> bool {
        let prev_ns = self.last_sample_ns;
        self.last_sample_ns = now_ns;
        let mut woke = false;
        let mut busy_ns = 0u64;
        let mut awake = 0usize;
        let mut awake_mask = 0u64;
        let mut first = false;
        for (i, w) in self.workers.iter_mut().enumerate() {
            let c = counters(i);
            match w.last {
                None => first = true,
                Some(l) => {
                    busy_ns = busy_ns.saturating_add(c.busy_ns.saturating_sub(l.busy_ns));
                    // A parked worker that parked again since woke in between.
                    woke |= c.parked() && c.park != l.park;
                }
            }
            if c.parked() {
                w.since_ns = 0;
                w.after_ns = now_ns;
            } else {
                awake += 1;
                if i < 64 {
                    awake_mask |= 1 << i;
                }
                let moved = w.last.map_or(true, |l| l != c || l.parked());
                if moved || w.since_ns == 0 {
                    w.since_ns = now_ns;
                    w.after_ns = if w.last.is_some() { prev_ns } else { now_ns };
                }
            }
            w.last = Some(c);
        }
        if self.current_thread {
            // The one worker is the thread running this sample.
            if let Some(w) = self.workers.first_mut() {
                w.tid = my_tid;
            }
        } else {
            self.learn_tid(my_tid, awake_mask);
        }
        // The worker running this sample is not stuck, whatever its counters
        // say (it may not have published them since it last ran the
        // monitor): it shows as not frozen until a later sample finds it so,
        // which dates the freeze after this one.
        for w in &mut self.workers {
            if w.tid == my_tid && w.since_ns != 0 {
                w.since_ns = 0;
                w.after_ns = now_ns;
            }
        }
        // Idle: nobody but the monitor's worker woke, and it did (almost)
        // nothing but run the monitor (one tick costs it 30-60 µs of busy
        // time; a worker parks two or three times per timer wake-up, so the
        // park count says nothing here).
        let elapsed = now_ns.saturating_sub(prev_ns);
        !first && awake <= 1 && !woke && busy_ns <= (elapsed / 100).max(IDLE_BUSY_NS)
    }

    /// Narrows which worker `tid` is: it is not parked while it runs the
    /// monitor, so it is among the awake workers of every sample it took.
    fn learn_tid(&mut self, tid: u32, awake_mask: u64) {
        let k = match self.threads.iter().position(|&(t, _)| t == tid) {
            Some(k) => k,
            None => {
                let k = self.next_victim % THREADS;
                self.next_victim = self.next_victim.wrapping_add(1);
                self.threads[k] = (tid, u64::MAX);
                k
            }
        };
        let mut mask = self.threads[k].1 & awake_mask;
        if mask == 0 {
            // Inconsistent (the worker moved to another thread): start over.
            mask = awake_mask;
        }
        self.threads[k].1 = mask;
        if mask.count_ones() == 1 {
            let i = mask.trailing_zeros() as usize;
            for (j, w) in self.workers.iter_mut().enumerate() {
                if j == i {
                    w.tid = tid;
                } else if w.tid == tid {
                    w.tid = 0;
                }
            }
        }
    }

    /// Shows the latest sample on the worker board; the next sample is
    /// planned at `next_ns`.
    pub(crate) fn publish(&self, next_ns: u64, loop_id: (u32, u32)) {
        let n = self.workers.len().min(usize::from(u16::MAX)) as u16;
        for (i, (w, e)) in self.workers.iter().zip(&self.entries).enumerate() {
            let Some(e) = e else { continue };
            let mut flags = 0;
            if w.last.is_some_and(|c| c.parked()) {
                flags |= crate::abi::worker::FLAG_PARKED;
            }
            if self.current_thread {
                flags |= crate::abi::worker::FLAG_CURRENT_THREAD;
            }
            e.publish(
                &WorkerRecord {
                    tid: w.tid,
                    index: i.min(usize::from(u16::MAX)) as u16,
                    workers: n,
                    flags,
                    since_ns: w.since_ns,
                    after_ns: w.after_ns,
                    sampled_ns: self.last_sample_ns,
                    next_ns,
                },
                loop_id,
            );
        }
    }

    #[cfg(test)]
    fn worker(&self, i: usize) -> (u64, u64, u32) {
        let w = self.workers[i];
        (w.since_ns, w.after_ns, w.tid)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        for e in self.entries.iter().flatten() {
            e.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn c(park: u64, park_unpark: u64, busy_ns: u64) -> Counters {
        Counters {
            park,
            park_unpark,
            busy_ns,
        }
    }

    #[test]
    fn a_worker_inside_one_poll_keeps_its_since_and_a_busy_one_does_not() {
        let mut s = Sampler::new(3, false, false);
        // Worker 0 runs the monitor (tid 10), 1 is parked, 2 works.
        let first = [c(5, 10, 100), c(3, 7, 50), c(4, 8, 70)];
        assert!(
            !s.sample(100 * MS, 10, |i| first[i]),
            "first sample: no history"
        );
        assert_eq!(s.worker(1).0, 0, "parked: no since");
        assert_eq!(s.worker(2).0, 100 * MS);
        // 20 ms later worker 2 has published new counters (busy), then stops
        // publishing: it is inside one poll from the third sample on.
        let second = [c(6, 12, 110), c(3, 7, 50), c(4, 8, 90)];
        s.sample(120 * MS, 10, |i| second[i]);
        assert_eq!(s.worker(2), (120 * MS, 100 * MS, 0));
        for t in [140, 160, 400] {
            let same = [c(7, 14, 120), c(3, 7, 50), c(4, 8, 90)];
            s.sample(t * MS, 10, |i| same[i]);
            assert_eq!(s.worker(2).0, 120 * MS, "frozen since the sample at 120 ms");
            assert_eq!(s.worker(2).1, 100 * MS);
        }
    }

    #[test]
    fn idle_means_only_the_monitor_woke() {
        let mut s = Sampler::new(2, false, false);
        s.sample(0, 10, |i| [c(1, 2, 0), c(1, 1, 0)][i]);
        // Worker 0 parked three times and spent 40 µs running the monitor;
        // worker 1 stayed parked.
        assert!(s.sample(200 * MS, 10, |i| [c(4, 8, 40_000), c(1, 1, 0)][i]));
        // Worker 1 woke and parked again in between: not idle.
        assert!(!s.sample(400 * MS, 10, |i| [c(6, 12, 80_000), c(2, 3, 5_000)][i]));
        // Worker 1 is awake now: not idle.
        assert!(!s.sample(420 * MS, 10, |i| [c(8, 16, 90_000), c(2, 4, 5_000)][i]));
        // Only the monitor's worker is awake, but it was busy 5 ms of 20.
        s.sample(440 * MS, 10, |i| [c(9, 18, 100_000), c(3, 5, 6_000)][i]);
        assert!(!s.sample(460 * MS, 10, |i| [c(10, 20, 5_100_000), c(3, 5, 6_000)][i]));
    }

    #[test]
    fn the_monitor_learns_its_worker_when_the_others_are_parked() {
        let mut s = Sampler::new(3, false, false);
        // On thread 10, workers 0 and 2 awake: ambiguous.
        s.sample(0, 10, |i| [c(1, 2, 0), c(1, 1, 0), c(1, 2, 0)][i]);
        assert_eq!((s.worker(0).2, s.worker(2).2), (0, 0));
        // Later on thread 10 only 0 and 1 are awake: it is worker 0.
        s.sample(MS, 10, |i| [c(2, 4, 0), c(2, 4, 0), c(2, 3, 0)][i]);
        assert_eq!(s.worker(0).2, 10);
        // Thread 11 alone awake with worker 2: 11 is worker 2.
        s.sample(2 * MS, 11, |i| [c(3, 5, 0), c(3, 5, 0), c(3, 6, 0)][i]);
        assert_eq!(s.worker(2).2, 11);
        // Worker 0 moved to thread 11 (block_in_place): 11 is 0 now, not 2.
        s.sample(3 * MS, 11, |i| [c(3, 6, 0), c(3, 5, 0), c(3, 7, 0)][i]);
        assert_eq!((s.worker(0).2, s.worker(2).2), (11, 0));
    }

    #[test]
    fn the_monitors_own_worker_is_never_frozen() {
        let mut s = Sampler::new(3, false, false);
        s.sample(0, 10, |i| [c(1, 2, 0), c(1, 1, 0), c(1, 1, 0)][i]);
        assert_eq!(s.worker(0).2, 10);
        // Worker 0's counters do not move (it never parked, fewer than 61
        // ticks), but it runs the monitor: not stuck.
        for t in 1..5 {
            s.sample(t * 20 * MS, 10, |i| [c(1, 2, 0), c(1, 1, 0), c(1, 1, 0)][i]);
            assert_eq!(s.worker(0).0, 0, "not frozen");
            assert_eq!(s.worker(0).1, t * 20 * MS, "last seen working now");
        }
        // Blocked right after: the next sample, on worker 2's thread, finds
        // it frozen since then, after the last one it ran.
        s.sample(100 * MS, 11, |i| [c(1, 2, 0), c(1, 1, 0), c(2, 4, 0)][i]);
        assert_eq!(s.worker(0).0, 100 * MS);
        assert_eq!(s.worker(0).1, 80 * MS);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn samples_are_published_on_the_board_and_freed_on_drop() {
        use crate::abi::worker::{FLAG_CURRENT_THREAD, FLAG_PARKED};
        let mut s = Sampler::new(2, false, true);
        let entries: Vec<&WorkerEntry> = s.entries.iter().flatten().copied().collect();
        assert_eq!(entries.len(), 2, "two entries claimed");
        s.sample(10 * MS, 77, |i| [c(1, 2, 0), c(1, 1, 0)][i]);
        s.publish(30 * MS, (3, 9));
        let (state, r0) = entries[0].record_for_test();
        assert_eq!(state, 1);
        assert_eq!((r0.tid, r0.index, r0.workers), (77, 0, 2));
        assert_eq!(r0.flags & (FLAG_PARKED | FLAG_CURRENT_THREAD), 0);
        assert_eq!((r0.sampled_ns, r0.next_ns), (10 * MS, 30 * MS));
        let (_, r1) = entries[1].record_for_test();
        assert_eq!(
            (r1.index, r1.flags & FLAG_PARKED, r1.since_ns),
            (1, FLAG_PARKED, 0)
        );
        drop(s);
        for e in entries {
            let (state, _) = e.record_for_test();
            assert_ne!(state, 1, "released");
        }
    }

    #[test]
    fn current_thread_worker_is_the_monitors_thread() {
        let mut s = Sampler::new(1, true, false);
        s.sample(0, 42, |_| c(1, 2, 0));
        assert_eq!(s.worker(0).2, 42);
        assert!(
            s.sample(200 * MS, 42, |_| c(4, 8, 50_000)),
            "50 µs busy: idle"
        );
        assert!(
            !s.sample(220 * MS, 42, |_| c(5, 10, 3_000_000)),
            "3 ms of 20: busy"
        );
    }
}
