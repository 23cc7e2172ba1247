//! The cause of a stall (why, not only where) in `watch` and `dump`: glue
//! between snapshots and `aiodebug_engine::cause`, and its JSON form
//! (schema: README.md, "The cause").
//!
//! Per watched loop, a [`LoopCause`] keeps what the deltas need: a sample of
//! the loop thread's counters taken at the first read that saw it overdue
//! (the start of the window), the previous snapshot's sample, the
//! episode's first registers (stuck or busy), and the call a previous
//! capture interrupted (a sleep resumes as `restart_syscall`).
//!
//! From the same baseline on, the loop thread's system calls are counted
//! (`aiodebug_engine::syscount`): registers alone cannot tell a thread
//! blocked in one `clock_nanosleep` from one that sleeps 10 ms in a loop
//! (both are caught in the same call at the same place), the count can.
//! The counter is closed when the loop ticks again or the episode's last
//! snapshot is taken: while it is open every thread of the host pays for
//! the tracepoint.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use aiodebug_engine::cause::capture::{self, Stall};
use aiodebug_engine::cause::collect::{Collector, Live};
use aiodebug_engine::cause::parse::CgroupVersion;
pub use aiodebug_engine::cause::Cause;
use aiodebug_engine::cause::{self, FdTarget, Motion, Progress, Sample, SyscallActivity};
use aiodebug_engine::dump::{Dump, ThreadDump};
use aiodebug_engine::snapshot::Registers;
use aiodebug_engine::syscount::{SysEnter, SyscallCounter};
use serde_json::{json, Value};

use crate::watch::episode::Config;
use crate::watch::render::{culprit, short_frame};

/// Shortest window over which CPU shares are computed: below it the
/// counters say more about our own stop than about the stall.
const MIN_WINDOW_NS: u64 = 20_000_000;

/// System-call counters open at once in this watcher (`watch --all`: one
/// per stalled loop or worker, a stall past this many gets none).
pub const MAX_COUNTERS: usize = 8;

/// Counters open now, in the whole watcher.
static OPEN_COUNTERS: AtomicUsize = AtomicUsize::new(0);

/// Whether the note that system calls cannot be counted was handed out.
static NOTED: AtomicBool = AtomicBool::new(false);

/// A counter that holds one of the [`MAX_COUNTERS`] places until dropped.
#[derive(Debug)]
struct Counting(SyscallCounter);

impl Counting {
    /// Opens a counter on `tid` if a place is free; `Err` says why not (no
    /// tracepoint, refused, thread gone), `Ok(None)` that all places are taken.
    fn open(pid: i32, tid: i32) -> Result<Option<Counting>, String> {
        let tp = SysEnter::cached()?;
        let taken = OPEN_COUNTERS.fetch_add(1, Ordering::Relaxed);
        if taken >= MAX_COUNTERS {
            OPEN_COUNTERS.fetch_sub(1, Ordering::Relaxed);
            return Ok(None);
        }
        match SyscallCounter::open(pid, tid, tp) {
            Ok(c) => Ok(Some(Counting(c))),
            Err(e) => {
                OPEN_COUNTERS.fetch_sub(1, Ordering::Relaxed);
                Err(e.to_string())
            }
        }
    }
}

impl Drop for Counting {
    fn drop(&mut self) {
        OPEN_COUNTERS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Closes a counter on a thread of its own. The kernel unregisters the
/// tracepoint on the last close of its events: an RCU grace period and a
/// patch of every CPU's syscall entry (IPIs), 10-40 ms measured with
/// `perf record` of the watcher, which would hold its next looks up (a
/// `--slow` of 20 ms looks every 5 ms). If no thread can be started, the
/// counter is closed here (the closure is dropped with it).
fn close_aside(c: Counting) {
    let _ = std::thread::Builder::new()
        .name("aiodebug-close".into())
        .spawn(move || drop(c));
}

/// What the cause of one loop's stalls needs to remember.
#[derive(Debug, Default)]
pub struct LoopCause {
    /// Counters at the first read that saw the current stall.
    baseline: Option<Sample>,
    /// Counters at the previous snapshot of this episode.
    previous: Option<Sample>,
    /// Registers at the episode's first snapshot.
    first_regs: Option<Registers>,
    /// The registers differed in some snapshot of this episode.
    moved: bool,
    /// Snapshots of this episode so far.
    snapshots: u32,
    /// When the thread was first seen in `D` during this stall.
    d_since_ns: Option<u64>,
    /// The snapshot taken when the hang was detected, for the episode's
    /// first file.
    pending: Option<aiodebug_engine::Result<Dump>>,
    /// The cause computed for the snapshot taken at `last_at`.
    last: Option<(SystemTime, Option<Cause>)>,
    /// The cause captured when a slow tick began.
    pub slow: Option<Cause>,
    /// Time spent computing causes (reads after the detach, classification).
    pub spent: Duration,
    /// The stalled thread's system calls, counted from the baseline on.
    counter: Option<Counting>,
    /// Our stops of the thread since the counter was opened.
    stops: u32,
    /// This stall's counting is over (the episode's snapshots are all
    /// taken): not reopened until the loop ticks again.
    counted: bool,
    /// Why no counter could be opened, until handed out by [`LoopCause::take_note`].
    note: Option<String>,
    /// The thread the baseline, the counter and the registers are of: the
    /// loop's own, or (a loop of a multi-thread runtime) the worker that
    /// holds it up, which may change while the stall lasts.
    tid: Option<i32>,
}

impl LoopCause {
    /// A read of the heartbeat: `stall_ns` is how overdue the loop is (0
    /// while on time). The first read that sees it overdue by `baseline_ns`
    /// or more samples the thread's counters (the start of the cause's
    /// window). Returns, while the loop is overdue by less, how much later
    /// the watch must read again for that sample (the stall reaches
    /// `baseline_ns` then, if no tick comes first).
    ///
    /// Not at the first overdue read: a healthy loop read a millisecond
    /// after its due time is overdue too, and a sample opens about seven
    /// files (`schedstat`, `stat`, `cgroup`, our `mountinfo`, the cgroup's
    /// `cpu.stat` and quota); `watch --all` over 100 processes took ~20 of
    /// them a second for loops that then ticked.
    ///
    /// The thread's system calls are counted from a later point, a quarter
    /// of the interval ([`Config::count_ns`]), whatever `--slow` says.
    pub fn observe(&mut self, pid: i32, tid: u32, stall_ns: u64, cfg: &Config) -> Option<u64> {
        if stall_ns == 0 {
            self.baseline = None;
            self.d_since_ns = None;
            self.stop_counting();
            self.counted = false;
            self.tid = None;
            return None;
        }
        self.follow(tid as i32);
        let baseline_ns = cfg.baseline_ns();
        if self.baseline.is_none() {
            if stall_ns < baseline_ns {
                return Some(baseline_ns - stall_ns);
            }
            self.baseline = Some(Collector::new(Live { pid }).sample(tid as i32));
        }
        if self.counter.is_none() && !self.counted {
            let count_ns = cfg.count_ns();
            if stall_ns < count_ns {
                return Some(count_ns - stall_ns);
            }
            self.start_counting(pid, tid as i32);
        }
        None
    }

    /// The stall is now judged on thread `tid`: if it is another thread
    /// than the one sampled so far (a multi-thread runtime's loop held up
    /// by another worker than the one that last ran its monitor, or by a
    /// new one), what was sampled of the old one says nothing about it —
    /// the window, the count and the registers start again on `tid`.
    fn follow(&mut self, tid: i32) {
        if self.tid.is_some_and(|t| t != tid) {
            self.baseline = None;
            self.previous = None;
            self.d_since_ns = None;
            self.first_regs = None;
            self.moved = false;
            if let Some(c) = self.counter.take() {
                close_aside(c);
            }
            self.counted = false;
        }
        self.tid = Some(tid);
    }

    /// Opens the system-call counter of the stalled thread (once per stall;
    /// not allowed: noted, the cause simply lacks the field).
    fn start_counting(&mut self, pid: i32, tid: i32) {
        if self.counter.is_some() || self.counted {
            return;
        }
        self.stops = 0;
        match Counting::open(pid, tid) {
            Ok(c) => self.counter = c,
            Err(why) => {
                // One attempt per stall: a refusal is the same next time.
                self.counted = true;
                if self.note.is_none() {
                    self.note = Some(why);
                }
            }
        }
    }

    /// Closes the system-call counter: the episode's last snapshot is taken
    /// (or the loop ticked); this stall is not counted again.
    pub fn stop_counting(&mut self) {
        if let Some(c) = self.counter.take() {
            self.counted = true;
            close_aside(c);
        }
    }

    /// Why system calls cannot be counted, once per watcher process (every
    /// loop that fails the same way afterwards says nothing).
    pub fn take_note(&mut self) -> Option<String> {
        let note = self.note.take()?;
        (!NOTED.swap(true, Ordering::Relaxed)).then_some(note)
    }

    /// A hang was detected: take the episode's first snapshot now, so that
    /// the `hang_started` event and the `hangs` counter carry its cause. The
    /// snapshot is kept for the episode's first file ([`LoopCause::take_pending`]).
    pub fn hang_snapshot(
        &mut self,
        dumper: &mut dyn crate::watch::fleet::Snapshots,
        pid: i32,
        tid: u32,
        loops: &HashMap<i32, String>,
    ) -> Option<Cause> {
        self.first_regs = None;
        self.moved = false;
        self.snapshots = 0;
        self.previous = None;
        let res = dumper.dump(pid, Some(loops));
        let cause = res
            .as_ref()
            .ok()
            .and_then(|d| self.for_snapshot(pid, tid, d));
        self.pending = Some(res);
        cause
    }

    /// The snapshot [`LoopCause::hang_snapshot`] took, once.
    pub fn take_pending(&mut self) -> Option<aiodebug_engine::Result<Dump>> {
        self.pending.take()
    }

    /// The cause of loop thread `tid` in snapshot `dump` of the episode
    /// (computed once per snapshot: the counters are sampled now).
    pub fn for_snapshot(&mut self, pid: i32, tid: u32, dump: &Dump) -> Option<Cause> {
        if let Some((at, c)) = &self.last {
            if *at == dump.taken_at {
                return c.clone();
            }
        }
        let started = Instant::now();
        let cause = self.compute(pid, tid as i32, dump, true);
        self.spent += started.elapsed();
        self.last = Some((dump.taken_at, cause.clone()));
        cause
    }

    /// The cause of `tid` in a one-off capture (a slow tick): deltas from
    /// the stall's start, no progress.
    pub fn for_capture(&mut self, pid: i32, tid: u32, dump: &Dump) -> Option<Cause> {
        let started = Instant::now();
        let cause = self.compute(pid, tid as i32, dump, false);
        self.spent += started.elapsed();
        cause
    }

    fn compute(&mut self, pid: i32, tid: i32, dump: &Dump, episode: bool) -> Option<Cause> {
        self.follow(tid);
        let t = dump.threads.iter().find(|t| t.tid == tid)?;
        // The counters the capture sampled right after its detach; a thread
        // it did not sample (not named a loop thread of the dump) now.
        let now = dump
            .cause
            .get(tid)
            .and_then(|f| f.sample.clone())
            .unwrap_or_else(|| Collector::new(Live { pid }).sample(tid));
        if self.counter.is_some() {
            // The stop this snapshot made may have restarted the thread's call.
            self.stops += 1;
        }
        if self.baseline.is_none() {
            // No read saw the stall before it crossed the interval: the
            // window starts now (later snapshots get deltas).
            self.baseline = Some(now.clone());
            if episode {
                self.start_counting(pid, tid);
            }
        }
        let stops = self.stops;
        let syscalls = self.counter.as_mut().and_then(|c| c.0.activity(stops).ok());
        let delta = self
            .baseline
            .as_ref()
            .map(|b| now.since(b))
            .filter(|d| d.wall_ns >= MIN_WINDOW_NS);
        if t.state == 'D' {
            let since = match &self.baseline {
                Some(b) if b.faults.is_some_and(|f| f.state == 'D') => b.at_ns,
                _ => *self.d_since_ns.get_or_insert(now.at_ns),
            };
            self.d_since_ns = Some(since);
        }
        let d_state_ns = (t.state == 'D')
            .then(|| self.d_since_ns.map(|s| now.at_ns.saturating_sub(s)))
            .flatten();
        let progress = if episode {
            self.progress(t.regs.as_ref(), &now, syscalls.as_ref())
        } else {
            None
        };
        let stall = Stall {
            delta,
            d_state_ns,
            progress,
            syscalls,
        };
        let cause = capture::thread_cause(dump, tid, &owner_frame, stall);
        if episode {
            self.previous = Some(now);
        }
        cause
    }

    /// Stuck or busy: the registers moved in some snapshot, or (same
    /// registers) the thread keeps entering system calls — the same call
    /// retried, which the registers alone would call stuck. At the first
    /// snapshot only the calls can tell (busy), else `None`.
    fn progress(
        &mut self,
        regs: Option<&Registers>,
        now: &Sample,
        syscalls: Option<&SyscallActivity>,
    ) -> Option<Progress> {
        let regs = regs?;
        self.snapshots += 1;
        let cpu_since_previous_ns = self
            .previous
            .as_ref()
            .and_then(|p| now.sched?.run_ns.checked_sub(p.sched?.run_ns));
        let calling = syscalls.is_some_and(SyscallActivity::busy);
        match &self.first_regs {
            None => {
                self.first_regs = Some(*regs);
                calling.then_some(Progress {
                    motion: Motion::Busy,
                    snapshots: self.snapshots,
                    cpu_since_previous_ns,
                    retrying: true,
                })
            }
            Some(first) => {
                self.moved |= !cause::same_place(first, regs);
                Some(Progress {
                    motion: if self.moved || calling {
                        Motion::Busy
                    } else {
                        Motion::Stuck
                    },
                    snapshots: self.snapshots,
                    cpu_since_previous_ns,
                    retrying: calling && !self.moved,
                })
            }
        }
    }
}

/// The frame a lock's owner is in, as the text names it.
fn owner_frame(o: &ThreadDump) -> Option<String> {
    culprit(&o.frames).map(|c| short_frame(c.frame))
}

/// The cause of every thread of a one-off `dump` (no deltas, no progress),
/// from what its capture recorded: the target is not read again.
pub fn for_dump(dump: &Dump) -> HashMap<i32, Cause> {
    capture::dump_causes(dump, &owner_frame)
}

fn ms(ns: u64) -> f64 {
    (ns / 1000) as f64 / 1e3
}

/// The JSON object of a cause (README.md, "The cause"): every key present,
/// `null` when unknown.
pub fn json(c: &Cause) -> Value {
    let f = &c.facts;
    let fds: Vec<Value> = f
        .fds
        .iter()
        .map(|fd| {
            let (local, remote, state) = match &fd.target {
                FdTarget::Tcp {
                    local,
                    remote,
                    state,
                    ..
                } => (
                    Some(local.to_string()),
                    Some(remote.to_string()),
                    Some(*state),
                ),
                FdTarget::Udp { local, remote } => {
                    (Some(local.to_string()), remote.map(|r| r.to_string()), None)
                }
                _ => (None, None, None),
            };
            json!({"fd": fd.fd, "kind": fd.target.kind(), "target": fd.target.to_string(),
                   "local": local, "remote": remote, "state": state})
        })
        .collect();
    let syscall = c.call.as_ref().map(|call| {
        json!({"name": call.display_name(), "number": call.nr, "blocked": call.blocked,
               "resumed": call.resumed,
               "args": call.args.iter().map(|a| format!("0x{a:x}")).collect::<Vec<_>>()})
    });
    let lock = f.lock.as_ref().map(|l| {
        json!({"futex": format!("0x{:x}", l.futex), "symbol": l.symbol, "owner_tid": l.owner_tid,
               "owner_name": l.owner.as_ref().map(|o| o.name.clone()),
               "owner_frame": l.owner.as_ref().and_then(|o| o.frame.clone()),
               "owner_syscall": l.owner.as_ref().and_then(|o| o.syscall.clone())})
    });
    let d = c.delta.as_ref();
    let cgroup = d.and_then(|d| d.cgroup.as_ref()).map(|cg| {
        json!({"path": cg.dir, "version": match cg.version { CgroupVersion::V1 => 1, CgroupVersion::V2 => 2 },
               "nr_throttled": cg.nr_throttled, "nr_periods": cg.nr_periods,
               "throttled_ms": ms(cg.throttled_ns),
               "quota_ms": cg.quota.map(|q| q.quota_us as f64 / 1e3),
               "period_ms": cg.quota.map(|q| q.period_us as f64 / 1e3)})
    });
    let progress = c.progress.map(|p| match p.motion {
        Motion::Stuck => "stuck",
        Motion::Busy => "busy",
    });
    let syscalls = c.syscalls.as_ref().map(|a| {
        json!({"entered": a.entered, "window_ms": ms(a.window_ns), "our_stops": a.ours,
               "busy": a.busy(), "sampled": a.sampled, "lost": a.lost,
               "top": a.top.iter().map(|t| json!({"name": t.display_name(), "number": t.nr,
                                                   "count": t.count})).collect::<Vec<_>>()})
    });
    json!({
        "kind": c.kind.as_str(),
        "summary": c.summary,
        "text": c.line(),
        "state": c.state.to_string(),
        "syscall": syscall,
        "fds": fds,
        "path": f.path,
        "sleep_ms": f.sleep.map(|s| ms(s.ns)),
        "sleep_absolute": f.sleep.map(|s| s.absolute),
        "timeout_ms": f.timeout_ms,
        "child": f.child.as_ref().map(|ch| json!({"pid": ch.pid, "name": ch.name})),
        "lock": lock,
        "window_ms": d.map(|d| ms(d.wall_ns)),
        "on_cpu_ms": d.and_then(|d| d.run_ns).map(ms),
        "run_delay_ms": d.and_then(|d| d.wait_ns).map(ms),
        "major_faults": d.and_then(|d| d.majflt),
        "cgroup": cgroup,
        "progress": progress,
        "snapshots_compared": c.progress.map(|p| p.snapshots),
        "cpu_since_previous_ms": c.progress.and_then(|p| p.cpu_since_previous_ns).map(ms),
        "retrying": c.progress.map(|p| p.retrying),
        "syscalls": syscalls,
        "raw": c.raw,
    })
}

/// `Some(json)` or `null`.
pub fn json_or_null(c: Option<&Cause>) -> Value {
    c.map(json).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The watcher's counters are bounded: past [`MAX_COUNTERS`] a stall gets
    /// none (and no error), and a place freed is taken again. Real counters
    /// on this test's own thread (the tests run as root, as the watch).
    /// The tests that open counters take turns: the count of open ones is
    /// the whole process's.
    static COUNTERS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn at_most_max_counters_are_open_at_once() {
        let _turn = COUNTERS.lock().unwrap_or_else(|e| e.into_inner());
        let pid = std::process::id() as i32;
        let tid = nix::unistd::gettid().as_raw();
        let mut open = Vec::new();
        while OPEN_COUNTERS.load(Ordering::Relaxed) < MAX_COUNTERS {
            let c = Counting::open(pid, tid)
                .expect("a counter on our own thread (root)")
                .expect("a free place");
            open.push(c);
        }
        assert!(matches!(Counting::open(pid, tid), Ok(None)));
        assert_eq!(OPEN_COUNTERS.load(Ordering::Relaxed), MAX_COUNTERS);
        // Our own calls are counted: reading one is a system call.
        let a = open[0].0.activity(0).expect("read");
        let b = open[0].0.activity(0).expect("read");
        assert!(b.entered > a.entered, "{a:?} {b:?}");
        open.pop();
        let again = Counting::open(pid, tid)
            .expect("open")
            .expect("a place again");
        drop(again);
        drop(open);
        assert_eq!(OPEN_COUNTERS.load(Ordering::Relaxed), 0);
    }

    /// A loop held up first by one thread, then by another (a multi-thread
    /// runtime's worker taking over): the window, the count and the
    /// registers start again on the new thread, and a tick forgets it.
    /// Real threads of this test process, real counters (root).
    #[test]
    fn a_stall_judged_on_another_thread_starts_again_on_it() {
        let _turn = COUNTERS.lock().unwrap_or_else(|e| e.into_inner());
        let pid = std::process::id() as i32;
        let me = nix::unistd::gettid().as_raw() as u32;
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || {
            tx.send(nix::unistd::gettid().as_raw() as u32)
                .expect("send tid");
            let _ = done_rx.recv();
        });
        let them = rx.recv().expect("the other thread's tid");
        let mut c = LoopCause::default();
        // A 40 ms interval with a 20 ms `--slow`: the counters are sampled
        // from 5 ms on, the system calls counted from 10 ms.
        let cfg = Config {
            interval_ns: 40_000_000,
            dumps: 3,
            gap_ns: 1_000_000_000,
            slow_ns: Some(20_000_000),
        };
        // Overdue by less than the baseline: asked to read again, nothing taken.
        assert_eq!(c.observe(pid, me, 2_000_000, &cfg), Some(3_000_000));
        assert!(c.baseline.is_none() && c.counter.is_none());
        // Sampled, but not counted yet (a slow tick gets no count).
        assert_eq!(c.observe(pid, me, 6_000_000, &cfg), Some(4_000_000));
        assert!(c.baseline.is_some() && c.counter.is_none());
        assert_eq!(c.observe(pid, me, 20_000_000, &cfg), None);
        let first = c.baseline.clone().expect("a baseline of our thread");
        assert_eq!(c.counter.as_ref().map(|k| k.0.tid()), Some(me as i32));
        // The same thread again: kept.
        c.observe(pid, me, 30_000_000, &cfg);
        assert_eq!(c.baseline.as_ref(), Some(&first));
        // Another thread holds the loop up now: sampled anew, counted anew.
        c.observe(pid, them, 40_000_000, &cfg);
        assert_eq!(c.tid, Some(them as i32));
        let second = c.baseline.clone().expect("a baseline of the other thread");
        assert!(second.at_ns > first.at_ns, "{first:?} {second:?}");
        assert_eq!(c.counter.as_ref().map(|k| k.0.tid()), Some(them as i32));
        // A tick: nothing is kept.
        c.observe(pid, them, 0, &cfg);
        assert!(c.baseline.is_none() && c.counter.is_none() && c.tid.is_none());
        let _ = done_tx.send(());
        other.join().expect("join");
    }
}
