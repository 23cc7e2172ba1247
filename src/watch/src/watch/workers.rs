//! Runtime workers stuck in one poll, and the threads that block a loop.
//!
//! Two signals, each blind where the other sees:
//!
//! - **The worker board** (heartbeat ABI minor 2): the runtime's own
//!   per-worker counters as the monitor sampled them. A worker whose counters
//!   did not move while it was not parked has not reached a scheduling point
//!   since `since_ns`: it is inside one poll. A worker busy with many short
//!   polls publishes new counters every 61 scheduler ticks and is never
//!   frozen for long. But the board is only as fresh as the monitor's last
//!   sample, and an idle runtime's monitor samples every 200 ms only.
//! - **The kernel** (`/proc/PID/task/TID/{syscall,status}`, read here without
//!   stopping anything): a parked worker waits in `futex` or `epoll_wait`; a
//!   worker that left its wait and gave up the CPU not once since has been in
//!   the same stretch of work since the watcher first saw it so. That is
//!   precise to one watcher read, costs the target nothing, but cannot tell
//!   one long poll from many short ones, and a worker blocked on a mutex
//!   waits in `futex` like a parked one.
//!
//! So the board decides *whether* a worker is stuck, and the kernel says
//! *since when* when the board's answer starts in an idle gap (the first
//! sample after the gap is up to 200 ms late) and *which thread* when the
//! monitor has not learnt a worker's thread id. A loop whose monitor sleeps
//! in an idle gap is hung when its thread left its wait, stayed out, and the
//! monitor missed its due time; its stall counts from when the thread's own
//! stretch began, leaving out the time it was runnable but waiting for a CPU
//! (on a loaded host a woken worker may wait hundreds of milliseconds before
//! it runs at all; see [`Workers::own_since`]). The monitor's lateness past
//! its due time counts in full either way.
//!
//! The rules are pure ([`Workers::observe`] over a [`ThreadView`]); the
//! /proc reader is [`ProcView`].

use aiodebug_engine::heartbeat::{Loop, Registry, Worker};
use aiodebug_engine::target::Reading;
use aiodebug_engine::threadstate::{self, ThreadState};
use std::collections::HashMap;

/// A worker's first frozen sample must have aged this long before the kernel
/// may move its start back into the idle gap before it (two monitor samples:
/// one sample alone may just have caught the worker between two publications
/// of its counters).
const CONFIRM_NS: u64 = 40_000_000;
/// A monitor past its due time by this much is held up (its timer fired late
/// because no worker could run it), not merely late.
const DUE_SLACK_NS: u64 = 20_000_000;
/// While a monitor sleeps through an idle gap, where its runtime's waiting
/// threads are is read this often (one small file per thread): the bound on
/// how late a worker that wakes and blocks is seen.
pub const KERNEL_EVERY: std::time::Duration = std::time::Duration::from_millis(10);
/// Thread names are listed again this often (to find workers the monitor has
/// not identified).
const LIST_EVERY_NS: u64 = 1_000_000_000;
/// At most this many threads are watched in the kernel per target.
const MAX_TRACKED: usize = 256;

/// What the watcher can learn about a target's threads from outside.
pub trait ThreadView {
    /// The thread's state now; None if it is gone. Of a thread in an idle
    /// wait ([`ThreadState::is_idle`]) the voluntary switches may be 0: they
    /// only matter while it stays out of its wait (see [`Workers::observe`]).
    fn state(&mut self, tid: u32) -> Option<ThreadState>;
    /// Only where it is now (cheaper); None if it is gone.
    fn syscall(&mut self, tid: u32) -> Option<threadstate::Syscall>;
    /// Every thread with its name.
    fn threads(&mut self) -> Vec<(u32, String)>;
    /// How long the thread has been runnable but waiting for a CPU, in all
    /// (ns, cumulative: `schedstat`'s run-queue delay, which includes time
    /// its cgroup was throttled); None if unknown. Asked only of a thread
    /// out of its wait (see [`Workers::own_since`]).
    fn run_wait_ns(&mut self, tid: u32) -> Option<u64>;
}

/// [`ThreadView`] over `/proc/PID/task`.
#[derive(Debug)]
pub struct ProcView {
    pid: i32,
    names: HashMap<u32, String>,
    /// `syscall` files kept open: the look between reads is a `pread`, not
    /// a path walk, an open and a close (a third of the cost).
    syscall_files: HashMap<u32, std::fs::File>,
    /// `status` files kept open likewise (read only when a thread is out of
    /// its wait).
    status_files: HashMap<u32, std::fs::File>,
    /// `schedstat` files kept open likewise (read only when a thread is out
    /// of its wait).
    sched_files: HashMap<u32, std::fs::File>,
}

/// One `pread` at offset 0 of a kept-open `/proc` file of `tid` (opened
/// from `path` at the first use) into `buf`; the bytes read, or None when
/// the thread is gone or the file unreadable (then it is forgotten). A
/// `/proc` seq file read from offset 0 is produced afresh, so the same file
/// serves every read; one `pread` into a buffer big enough for the whole
/// file replaces `read_to_end`'s probe reads (a dozen `read`s for `status`).
fn pread_kept<'b>(
    files: &mut HashMap<u32, std::fs::File>,
    tid: u32,
    path: impl FnOnce() -> String,
    buf: &'b mut [u8],
) -> Option<&'b [u8]> {
    use std::os::unix::fs::FileExt;
    if !files.contains_key(&tid) {
        if files.len() >= MAX_TRACKED {
            files.clear();
        }
        let f = std::fs::File::open(path()).ok()?;
        files.insert(tid, f);
    }
    match files.get(&tid).map(|f| f.read_at(buf, 0)) {
        Some(Ok(n)) if n > 0 => buf.get(..n),
        _ => {
            files.remove(&tid);
            None
        }
    }
}

/// Room for a thread's whole `status` (about 1.5 KiB on Linux 6.x; a
/// longer one is cut, and `voluntary_ctxt_switches`, near its end, is then
/// not found: the thread reads as gone, as an unreadable one does).
const STATUS_BUF: usize = 8192;

impl ProcView {
    /// A view of process `pid`.
    pub fn new(pid: i32) -> ProcView {
        ProcView {
            pid,
            names: HashMap::new(),
            syscall_files: HashMap::new(),
            status_files: HashMap::new(),
            sched_files: HashMap::new(),
        }
    }
}

impl ThreadView for ProcView {
    /// Where the thread is, and only when it is out of its wait how often
    /// it gave up the CPU: a healthy loop's thread is nearly always waiting,
    /// so a read costs one small `pread`, not two opens and a `status`.
    fn state(&mut self, tid: u32) -> Option<ThreadState> {
        let syscall = self.syscall(tid)?;
        if syscall.is_idle_wait() {
            return Some(ThreadState {
                syscall,
                voluntary_switches: 0,
            });
        }
        let pid = self.pid;
        let mut buf = [0u8; STATUS_BUF];
        let status = pread_kept(
            &mut self.status_files,
            tid,
            || format!("/proc/{pid}/task/{tid}/status"),
            &mut buf,
        )?;
        Some(ThreadState {
            syscall,
            voluntary_switches: threadstate::parse_voluntary_switches(status)?,
        })
    }

    fn syscall(&mut self, tid: u32) -> Option<threadstate::Syscall> {
        let pid = self.pid;
        let mut buf = [0u8; 256];
        let data = pread_kept(
            &mut self.syscall_files,
            tid,
            || format!("/proc/{pid}/task/{tid}/syscall"),
            &mut buf,
        )?;
        threadstate::parse_syscall(data)
    }

    fn run_wait_ns(&mut self, tid: u32) -> Option<u64> {
        let pid = self.pid;
        let mut buf = [0u8; 128];
        let data = pread_kept(
            &mut self.sched_files,
            tid,
            || format!("/proc/{pid}/task/{tid}/schedstat"),
            &mut buf,
        )?;
        aiodebug_engine::cause::parse::parse_schedstat(data).map(|s| s.wait_ns)
    }

    fn threads(&mut self) -> Vec<(u32, String)> {
        let tids = aiodebug_engine::proc::list_tasks(self.pid).unwrap_or_default();
        self.names.retain(|t, _| tids.contains(&(*t as i32)));
        self.syscall_files
            .retain(|t, _| tids.contains(&(*t as i32)));
        self.status_files.retain(|t, _| tids.contains(&(*t as i32)));
        self.sched_files.retain(|t, _| tids.contains(&(*t as i32)));
        tids.iter()
            .take(MAX_TRACKED * 4)
            .map(|&t| {
                let name = self
                    .names
                    .entry(t as u32)
                    .or_insert_with(|| aiodebug_engine::proc::read_task_comm(self.pid, t))
                    .clone();
                (t as u32, name)
            })
            .collect()
    }
}

/// A loop of one registry: (registry address in the target, slot).
pub type LoopId = (u64, u32);

/// A worker found frozen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frozen {
    /// Its runtime's loop.
    pub loop_id: LoopId,
    /// Board entry (identifies the worker when its thread is unknown).
    pub entry: u32,
    /// Its thread, if known or found.
    pub tid: Option<u32>,
    /// Since when (target clock) it has made no progress.
    pub since_ns: u64,
}

/// One observation's conclusions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// Workers of multi-thread runtimes frozen right now (any duration).
    pub frozen: Vec<Frozen>,
    /// Loops whose monitor missed its due time while their thread has been
    /// out of its wait since after their last tick: when the thread's own
    /// stretch began ([`Workers::own_since`], target clock); their stall
    /// counts from then.
    pub loop_quiet_since: HashMap<LoopId, u64>,
    /// Per loop with a worker board, the threads of its runtime that are out
    /// of their wait now, longest own stretch first (what a hang snapshot
    /// marks).
    pub busy_threads: HashMap<LoopId, Vec<u32>>,
    /// A monitor sleeps through an idle gap: while the watcher sleeps, it
    /// should look at where the waiting threads are (see [`Workers::sleep`]).
    pub idle_gap: bool,
}

#[derive(Debug, Clone, Copy)]
struct Track {
    voluntary: u64,
    quiet_since: Option<u64>,
    /// The thread's run-queue delay ([`ThreadView::run_wait_ns`]) when the
    /// watcher first saw it out of its wait (None: unknown).
    wait_at_quiet: Option<u64>,
    /// [`Workers::own_since`], as of the last look.
    own_since: Option<u64>,
}

/// The watcher's memory of a target's runtime threads.
#[derive(Debug, Default)]
pub struct Workers {
    tracks: HashMap<u32, Track>,
    names: Vec<(u32, String)>,
    listed_at: Option<u64>,
    snapshot_taken: bool,
    /// Threads waiting at the last look, while a monitor is in an idle gap.
    waiting: Vec<u32>,
    /// The thread of a current_thread runtime is looked at only while its
    /// loop is overdue by this much or more, or in an idle gap (0: always).
    /// Only then can what the kernel says change a conclusion: that one
    /// thread is what a hang marks, and nothing else is read from it; a
    /// healthy loop's read then costs no `/proc` read (formatting the
    /// `syscall` file was a tenth of `watch --all`'s CPU).
    pub look_from_ns: u64,
}

/// The loop a board entry belongs to.
fn owner<'a>(reg: &'a Registry, w: &Worker) -> Option<&'a Loop> {
    let slot = w.loop_slot?;
    reg.loops.iter().find(|l| l.slot == slot)
}

impl Workers {
    /// Says that the watcher stopped the target's threads (a snapshot) since
    /// the last observation: the context switches that cost them are ours,
    /// not theirs, and do not end a stretch of work.
    pub fn snapshot_taken(&mut self) {
        self.snapshot_taken = true;
    }

    /// Threads `tid` out of its wait since (target clock), per the kernel.
    pub fn quiet_since(&self, tid: u32) -> Option<u64> {
        self.tracks.get(&tid).and_then(|t| t.quiet_since)
    }

    /// [`Workers::quiet_since`] moved later by the time the thread spent
    /// since then runnable but waiting for a CPU: the stretch of its own
    /// (running, or blocked in a call) that a poll can account for. On a
    /// loaded host a worker woken for the monitor's timer or for a request
    /// is out of its wait at once but may wait for a CPU for hundreds of
    /// milliseconds (measured: 100-360 ms, once 1.3 s, with 9 busy loops on
    /// 2 cores) before it parks again or starts the handler; counted as a
    /// stuck poll, that wait decided a loop hang that marked a thread about
    /// to park. The monitor's own lateness still counts in full through its
    /// due time (see [`loop_stall`]). On a quiet host the two are equal.
    pub fn own_since(&self, tid: u32) -> Option<u64> {
        self.tracks.get(&tid).and_then(|t| t.own_since)
    }

    /// Looks at the target once: `reading` just read, `view` for the kernel.
    pub fn observe(&mut self, view: &mut impl ThreadView, reading: &Reading) -> View {
        let now = reading.now_ns;
        let mut out = View::default();
        // Which threads matter: every worker thread the boards name, every
        // monitored loop's thread, and threads named like them (workers
        // whose thread id the monitor has not learnt yet).
        let mut wanted: Vec<u32> = Vec::new();
        let mut names_of_workers: Vec<String> = Vec::new();
        let mut multi = false;
        for (_, reg) in &reading.registries {
            for w in &reg.workers {
                let Some(l) = owner(reg, w) else { continue };
                let quiet = w.current_thread
                    && l.next_due_ns.is_none()
                    && l.stall_ns(now) < self.look_from_ns;
                if quiet {
                    continue;
                }
                wanted.extend(w.tid);
                wanted.push(l.tid);
                multi |= !w.current_thread;
            }
        }
        wanted.sort_unstable();
        wanted.dedup();
        if wanted.is_empty() {
            self.tracks.clear();
            return out;
        }
        if multi {
            if self
                .listed_at
                .map_or(true, |t| now.saturating_sub(t) >= LIST_EVERY_NS)
            {
                self.names = view.threads();
                self.listed_at = Some(now);
            }
            for &t in &wanted {
                if let Some((_, n)) = self.names.iter().find(|(x, _)| *x == t) {
                    if !names_of_workers.contains(n) {
                        names_of_workers.push(n.clone());
                    }
                }
            }
        }
        let mut tracked: Vec<u32> = wanted.clone();
        for (t, n) in &self.names {
            if names_of_workers.contains(n) && !tracked.contains(t) {
                tracked.push(*t);
            }
        }
        tracked.truncate(MAX_TRACKED);
        self.tracks.retain(|t, _| tracked.contains(t));
        let forgive = std::mem::take(&mut self.snapshot_taken);
        for &tid in &tracked {
            match view.state(tid) {
                None => {
                    self.tracks.remove(&tid);
                }
                Some(st) => {
                    let prev = self.tracks.get(&tid).copied();
                    // A waiting thread's switches are never compared (the
                    // next look out of its wait starts afresh either way),
                    // so a view may leave them 0 (see ThreadView::state).
                    let quiet_since = if st.is_idle() {
                        None
                    } else {
                        match prev {
                            Some(p) if p.voluntary == st.voluntary_switches => {
                                p.quiet_since.or(Some(now))
                            }
                            Some(p) if forgive && p.quiet_since.is_some() => p.quiet_since,
                            _ => Some(now),
                        }
                    };
                    // Run-queue delay: read only out of the wait (a healthy
                    // loop's thread costs no extra read), from the stretch's
                    // first look on.
                    let (wait_at_quiet, own_since) = match quiet_since {
                        None => (None, None),
                        Some(q) => {
                            let wait = view.run_wait_ns(tid);
                            let start = match prev {
                                Some(p) if p.quiet_since == Some(q) => p.wait_at_quiet,
                                _ => wait,
                            };
                            let waited = match (wait, start) {
                                (Some(w), Some(s)) => w.saturating_sub(s),
                                _ => 0,
                            };
                            (start, Some(q.saturating_add(waited).min(now.max(q))))
                        }
                    };
                    self.tracks.insert(
                        tid,
                        Track {
                            voluntary: st.voluntary_switches,
                            quiet_since,
                            wait_at_quiet,
                            own_since,
                        },
                    );
                }
            }
        }

        for (region, reg) in &reading.registries {
            let base = region.addr.wrapping_add(reg.offset as u64);
            self.observe_registry(base, reg, now, &tracked, &mut out);
        }
        self.waiting = if out.idle_gap {
            tracked
                .iter()
                .copied()
                .filter(|t| self.tracks.get(t).is_some_and(|k| k.quiet_since.is_none()))
                .collect()
        } else {
            Vec::new()
        };
        out
    }

    /// Sleeps `d`, or less: while a monitor is in an idle gap, it looks at
    /// the threads that were waiting every [`KERNEL_EVERY`] and returns as
    /// soon as one left its wait (the watcher then reads everything at once).
    /// Without an idle gap, a plain sleep.
    pub fn sleep(&mut self, view: &mut impl ThreadView, d: std::time::Duration) {
        let end = std::time::Instant::now() + d;
        if self.waiting.is_empty() {
            std::thread::sleep(d);
            return;
        }
        loop {
            let left = end.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(KERNEL_EVERY));
            if self.woke(view) {
                return;
            }
        }
    }

    /// Whether a sleep should look at waiting threads every
    /// [`KERNEL_EVERY`] (a monitor is in an idle gap; see [`Workers::sleep`]).
    pub fn waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Whether a thread that was waiting left its wait (then the watcher
    /// should read everything at once).
    pub fn woke(&mut self, view: &mut impl ThreadView) -> bool {
        self.waiting
            .iter()
            .any(|&t| view.syscall(t).is_some_and(|s| !s.is_idle_wait()))
    }

    fn observe_registry(
        &self,
        base: u64,
        reg: &Registry,
        now: u64,
        tracked: &[u32],
        out: &mut View,
    ) {
        let mut runtimes: Vec<u32> = reg.workers.iter().filter_map(|w| w.loop_slot).collect();
        runtimes.sort_unstable();
        runtimes.dedup();
        for slot in runtimes {
            let Some(lp) = reg.loops.iter().find(|l| l.slot == slot) else {
                continue;
            };
            let id = (base, slot);
            let entries: Vec<&Worker> = reg
                .workers
                .iter()
                .filter(|w| w.loop_slot == Some(slot))
                .collect();
            let current_thread = entries.iter().any(|w| w.current_thread);
            let idle_gap = lp.next_due_ns.is_some();
            out.idle_gap |= idle_gap;
            // The loop: its monitor is held up past its due time and its
            // thread has been out of its wait since after the last tick;
            // its stall counts from when the thread's own stretch began
            // (time spent waiting for a CPU is the host's, see own_since).
            if let (Some(due), Some(q), Some(own)) = (
                lp.next_due_ns,
                self.quiet_since(lp.tid),
                self.own_since(lp.tid),
            ) {
                if q > lp.last_tick_ns && now > due.saturating_add(DUE_SLACK_NS) {
                    out.loop_quiet_since.insert(id, own);
                }
            }
            // Threads of this runtime out of their wait now.
            let known: Vec<u32> = entries.iter().filter_map(|w| w.tid).collect();
            // Longest own stretch first (a thread waiting for a CPU since
            // it woke sorts after one blocked in its handler).
            let mut busy: Vec<(u64, u32)> = if current_thread {
                self.own_since(lp.tid)
                    .map(|q| (q, lp.tid))
                    .into_iter()
                    .collect()
            } else {
                tracked
                    .iter()
                    .filter(|&&t| t == lp.tid || known.contains(&t) || !self.is_other_loop(t, reg))
                    .filter_map(|&t| self.own_since(t).map(|q| (q, t)))
                    .collect()
            };
            busy.sort_unstable();
            if current_thread {
                out.busy_threads
                    .insert(id, busy.iter().map(|&(_, t)| t).collect());
                continue;
            }
            // Frozen workers of a multi-thread runtime.
            let fresh = |w: &Worker| now <= w.next_ns.saturating_add(DUE_SLACK_NS);
            let mut taken: Vec<u32> = Vec::new();
            let mut frozen: Vec<Frozen> = Vec::new();
            let mut unknown: Vec<&Worker> = Vec::new();
            for w in &entries {
                let Some(s) = w.since_ns else { continue };
                let Some(tid) = w.tid else {
                    unknown.push(w);
                    continue;
                };
                // A stale board (the monitor is held up) is overruled by the
                // kernel: a worker waiting in its park is not stuck.
                if !fresh(w)
                    && self
                        .tracks
                        .get(&tid)
                        .is_some_and(|t| t.quiet_since.is_none())
                {
                    continue;
                }
                taken.push(tid);
                frozen.push(Frozen {
                    loop_id: id,
                    entry: w.entry,
                    tid: Some(tid),
                    since_ns: self.backdate(w, s, Some(tid), now),
                });
            }
            // Workers whose thread the monitor does not know: the thread of
            // this runtime out of its wait since closest to the freeze.
            for w in unknown {
                let Some(s) = w.since_ns else { continue };
                let pick = busy
                    .iter()
                    .filter(|(_, t)| !taken.contains(t) && !known.contains(t))
                    .min_by_key(|(q, _)| q.abs_diff(s))
                    .map(|&(_, t)| t);
                // No thread of the runtime is out of its wait to be it: the
                // kernel sees nothing stuck (or it waits in `futex`, which a
                // worker whose thread is unknown cannot be told from parked).
                let Some(t) = pick else { continue };
                taken.push(t);
                frozen.push(Frozen {
                    loop_id: id,
                    entry: w.entry,
                    tid: Some(t),
                    since_ns: self.backdate(w, s, Some(t), now),
                });
            }
            // What a hang snapshot marks: frozen workers and the loop's
            // thread if it is out of its wait, then other threads of the
            // runtime out of theirs, up to the number of workers.
            let n = entries.first().map_or(0, |w| usize::from(w.workers));
            let mut marked: Vec<u32> = Vec::new();
            for &(_, t) in &busy {
                if taken.contains(&t) || t == lp.tid {
                    marked.push(t);
                }
            }
            for &(_, t) in &busy {
                if marked.len() >= n.max(1) {
                    break;
                }
                if !marked.contains(&t) {
                    marked.push(t);
                }
            }
            out.busy_threads.insert(id, marked);
            out.frozen.extend(frozen);
        }
    }

    /// Whether `tid` is the thread of another loop of `reg` than the worker
    /// boards' (e.g. a second runtime's): not a candidate worker.
    fn is_other_loop(&self, tid: u32, reg: &Registry) -> bool {
        reg.loops
            .iter()
            .any(|l| l.tid == tid && !reg.workers.iter().any(|w| w.loop_slot == Some(l.slot)))
    }

    /// When worker `w`, frozen since sample `s`, really stopped: when its
    /// first frozen sample followed a gap, the kernel saw its thread leave
    /// its wait within that gap, and the freeze has been confirmed since.
    fn backdate(&self, w: &Worker, s: u64, tid: Option<u32>, now: u64) -> u64 {
        let Some(q) = tid.and_then(|t| self.quiet_since(t)) else {
            return s;
        };
        if w.after_ns < q && q <= s && now.saturating_sub(s) >= CONFIRM_NS {
            q
        } else {
            s
        }
    }
}

/// A loop's stall at `now_ns`: as its heartbeat says, or longer when its
/// monitor is held up in an idle gap while its thread has been busy since
/// ([`View::loop_quiet_since`]).
pub fn loop_stall(view: &View, base: u64, lp: &Loop, now_ns: u64) -> u64 {
    let st = lp.stall_ns(now_ns);
    match view.loop_quiet_since.get(&(base, lp.slot)) {
        Some(&q) => st.max(now_ns.saturating_sub(q)),
        None => st,
    }
}

/// The threads a hang snapshot marks: a stuck worker's own thread; for a
/// loop, the threads of its runtime out of their wait (longest first), or
/// its thread when nothing better is known (a loop without a worker board).
pub fn marked_threads(
    view: &View,
    reading: &Reading,
    name: &str,
    tid: u32,
    worker: bool,
) -> Vec<u32> {
    if worker {
        return if tid == 0 { Vec::new() } else { vec![tid] };
    }
    for (region, reg) in &reading.registries {
        let base = region.addr.wrapping_add(reg.offset as u64);
        for l in reg.loops.iter().filter(|l| l.name == name && l.tid == tid) {
            if let Some(busy) = view.busy_threads.get(&(base, l.slot)) {
                if !busy.is_empty() {
                    return busy.clone();
                }
            }
        }
    }
    Vec::new()
}

/// Whether every thread that holds loop `lp` up is a worker already in an
/// episode of its own (`stuck`): then the loop's stall is that same hang.
pub fn covered_by_workers(view: &View, base: u64, lp: &Loop, stuck: &[u32]) -> bool {
    view.busy_threads
        .get(&(base, lp.slot))
        .is_some_and(|b| !b.is_empty() && b.iter().all(|t| stuck.contains(t)))
}

/// `; blocked by threads 12, 13` for a hang line, when the threads that
/// block are known and are not just the loop's own thread.
pub fn blocked_by(blocking: &[u32], loop_tid: u32) -> String {
    if blocking.is_empty() || blocking == [loop_tid] {
        return String::new();
    }
    let list: Vec<String> = blocking.iter().map(u32::to_string).collect();
    let s = if blocking.len() > 1 { "s" } else { "" };
    format!("; blocked by thread{s} {}", list.join(", "))
}

/// One worker to watch: a thread polling an instrumented task (the poll
/// board) or a frozen worker (the worker board).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerObs {
    /// Identity across reads.
    pub key: (u64, u32),
    /// The thread (0: unknown).
    pub tid: u32,
    /// The loop it belongs to.
    pub owner: String,
    /// What it polls: `task 'orders' (src/main.rs:37)`, or `one task`.
    pub what: String,
    /// Since when (target clock).
    pub since_ns: u64,
}

/// What to watch this read: every poll board entry, then every frozen worker
/// whose thread has none (a thread inside an instrumented poll is watched
/// through its entry, whose start is exact).
pub fn observations(reading: &Reading, view: &View) -> Vec<WorkerObs> {
    let mut out = Vec::new();
    for (region, reg) in &reading.registries {
        for p in &reg.polling {
            let owner = p
                .loop_slot
                .and_then(|s| reg.loops.iter().find(|l| l.slot == s))
                .map(|l| l.name.clone())
                .unwrap_or_else(|| "?".into());
            out.push(WorkerObs {
                key: (region.addr, p.tid),
                tid: p.tid,
                owner,
                what: p.describe(),
                since_ns: p.since_ns,
            });
        }
    }
    for f in &view.frozen {
        if f.tid.is_some_and(|t| out.iter().any(|o| o.tid == t)) {
            continue;
        }
        let owner = reading
            .registries
            .iter()
            .filter(|(region, reg)| region.addr.wrapping_add(reg.offset as u64) == f.loop_id.0)
            .flat_map(|(_, reg)| reg.loops.iter())
            .find(|l| l.slot == f.loop_id.1)
            .map(|l| l.name.clone())
            .unwrap_or_else(|| "?".into());
        out.push(WorkerObs {
            // Frozen workers live in their own key space (high bit set).
            key: (f.loop_id.0 | 1 << 63, f.tid.unwrap_or(u32::MAX - f.entry)),
            tid: f.tid.unwrap_or(0),
            owner,
            what: "one task".into(),
            since_ns: f.since_ns,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use aiodebug_engine::elf::{RegionInTarget, Via};
    use aiodebug_engine::heartbeat::Loop;
    use aiodebug_engine::threadstate::Syscall;

    const MS: u64 = 1_000_000;
    const FUTEX: Syscall = Syscall::In(202);
    const NANOSLEEP: Syscall = Syscall::In(230);

    #[derive(Default)]
    struct Fake {
        states: HashMap<u32, ThreadState>,
        names: Vec<(u32, String)>,
        /// Looks at a thread so far (`state` and `syscall`).
        looks: u32,
        /// Run-queue delay per thread (ns, cumulative; absent: unknown).
        waits: HashMap<u32, u64>,
    }

    impl Fake {
        fn set(&mut self, tid: u32, syscall: Syscall, voluntary: u64) {
            self.states.insert(
                tid,
                ThreadState {
                    syscall,
                    voluntary_switches: voluntary,
                },
            );
            if !self.names.iter().any(|(t, _)| *t == tid) {
                self.names.push((tid, "tokio-rt-worker".into()));
            }
        }
    }

    impl ThreadView for Fake {
        fn state(&mut self, tid: u32) -> Option<ThreadState> {
            self.looks += 1;
            self.states.get(&tid).copied()
        }
        fn threads(&mut self) -> Vec<(u32, String)> {
            self.names.clone()
        }
        fn syscall(&mut self, tid: u32) -> Option<Syscall> {
            self.looks += 1;
            self.states.get(&tid).map(|s| s.syscall)
        }
        fn run_wait_ns(&mut self, tid: u32) -> Option<u64> {
            self.waits.get(&tid).copied()
        }
    }

    fn lp(tid: u32, last_tick: u64, next_due: Option<u64>) -> Loop {
        Loop {
            slot: 0,
            name: "main".into(),
            tid,
            ns_tid: tid,
            period_ns: 20 * MS,
            ticks: 10,
            last_tick_ns: last_tick,
            registered_ns: 0,
            settled: true,
            next_due_ns: next_due,
            lags: Vec::new(),
            polling: Vec::new(),
        }
    }

    fn worker(
        index: u16,
        tid: Option<u32>,
        since: Option<u64>,
        after: u64,
        sampled: u64,
    ) -> Worker {
        Worker {
            entry: u32::from(index),
            tid,
            ns_tid: tid,
            loop_slot: Some(0),
            index,
            workers: 2,
            parked: since.is_none(),
            current_thread: false,
            since_ns: since,
            after_ns: after,
            sampled_ns: sampled,
            next_ns: sampled + 20 * MS,
        }
    }

    /// An idle runtime of two workers (threads 10 and 11) as the board
    /// shows it at `now`: the monitor last ticked on thread 10 at 100 ms and
    /// sleeps until 300 ms; both workers' counters were sampled at 100 ms.
    fn two_workers_idle(now: u64) -> Reading {
        reading(
            now,
            lp(10, 100 * MS, Some(300 * MS)),
            vec![
                worker(0, Some(10), None, 100 * MS, 100 * MS),
                worker(1, Some(11), None, 100 * MS, 100 * MS),
            ],
        )
    }

    fn reading(now: u64, l: Loop, workers: Vec<Worker>) -> Reading {
        let reg = Registry {
            offset: 0,
            abi_minor: 2,
            crate_version: "0.1.0".into(),
            refused: 0,
            slot_count: 64,
            unsettled_slots: 0,
            loops: vec![l],
            poll_entries: 64,
            poll_refused: 0,
            unsettled_polls: 0,
            poll_problem: None,
            polling: Vec::new(),
            worker_entries: 64,
            worker_refused: 0,
            unsettled_workers: 0,
            worker_problem: None,
            workers,
        };
        let region = RegionInTarget {
            module: "/srv/shop".into(),
            addr: 0x1000,
            size: 0x20000,
            via: Via::Section,
        };
        Reading {
            now_ns: now,
            registries: vec![(region, reg)],
            rejected: Vec::new(),
        }
    }

    #[test]
    fn a_frozen_worker_is_reported_with_its_thread_and_a_moving_one_is_not() {
        let mut k = Fake::default();
        k.set(10, FUTEX, 5); // the monitor's worker, parked between ticks
        k.set(11, NANOSLEEP, 3);
        let mut ws = Workers::default();
        let r = reading(
            500 * MS,
            lp(10, 490 * MS, None),
            vec![
                worker(0, Some(10), None, 490 * MS, 490 * MS),
                worker(1, Some(11), Some(200 * MS), 180 * MS, 490 * MS),
            ],
        );
        let v = ws.observe(&mut k, &r);
        assert_eq!(v.frozen.len(), 1);
        let f = &v.frozen[0];
        assert_eq!((f.tid, f.since_ns, f.entry), (Some(11), 200 * MS, 1));
        assert_eq!(v.busy_threads[&(0x1000, 0)], vec![11]);
        assert!(!v.idle_gap, "no idle gap: no fast kernel reads");
    }

    #[test]
    fn after_an_idle_gap_the_kernel_dates_the_freeze() {
        let mut k = Fake::default();
        k.set(10, FUTEX, 5);
        k.set(11, Syscall::In(232), 3);
        let mut ws = Workers::default();
        // Idle: the monitor sleeps until 300 ms; worker 11 waits in epoll.
        let idle = two_workers_idle(110 * MS);
        let v = ws.observe(&mut k, &idle);
        assert!(v.frozen.is_empty());
        assert!(v.idle_gap);
        assert_eq!(
            ws.waiting,
            vec![10, 11],
            "both wait: looked at while sleeping"
        );
        // At 135 ms the kernel sees 11 leave its wait (a handler sleeping).
        k.set(11, NANOSLEEP, 4);
        let mut at_135 = idle.clone();
        at_135.now_ns = 135 * MS;
        ws.observe(&mut k, &at_135);
        assert_eq!(ws.quiet_since(11), Some(135 * MS));
        // The monitor wakes at 300 ms: 11 awake with new counters, frozen
        // since the 300 ms sample, after the 100 ms one.
        let woke = |now| {
            reading(
                now,
                lp(10, 300 * MS, None),
                vec![
                    worker(0, Some(10), Some(now), 300 * MS, now),
                    worker(1, Some(11), Some(300 * MS), 100 * MS, now),
                ],
            )
        };
        let v = ws.observe(&mut k, &woke(310 * MS));
        let f = v.frozen.iter().find(|f| f.tid == Some(11)).expect("11");
        assert_eq!(f.since_ns, 300 * MS, "not confirmed yet: the sample's time");
        let v = ws.observe(&mut k, &woke(345 * MS));
        let f = v.frozen.iter().find(|f| f.tid == Some(11)).expect("11");
        assert_eq!(
            f.since_ns,
            135 * MS,
            "confirmed: when the kernel saw it leave"
        );
        // A voluntary switch in between (it parked and woke again) would
        // have restarted the kernel's clock.
        k.set(11, NANOSLEEP, 5);
        let v = ws.observe(&mut k, &woke(370 * MS));
        let f = v.frozen.iter().find(|f| f.tid == Some(11)).expect("11");
        assert_eq!(f.since_ns, 300 * MS);
    }

    #[test]
    fn an_unknown_worker_thread_is_found_among_its_siblings() {
        let mut k = Fake::default();
        k.set(10, FUTEX, 5);
        k.set(12, FUTEX, 1); // a third worker, parked
        k.set(11, Syscall::Running, 3);
        // The main thread (not a worker) has another name.
        k.names.push((9, "shop".into()));
        k.states.insert(
            9,
            ThreadState {
                syscall: Syscall::Running,
                voluntary_switches: 0,
            },
        );
        let mut ws = Workers::default();
        let mk = |now| {
            reading(
                now,
                lp(10, now - 5 * MS, None),
                vec![
                    worker(0, Some(10), None, 0, now - 5 * MS),
                    worker(1, None, Some(100 * MS), 80 * MS, now - 5 * MS),
                ],
            )
        };
        ws.observe(&mut k, &mk(105 * MS));
        let v = ws.observe(&mut k, &mk(400 * MS));
        assert_eq!(v.frozen.len(), 1);
        assert_eq!(v.frozen[0].tid, Some(11), "{v:?}");
        assert_eq!(v.frozen[0].since_ns, 100 * MS);
        assert_eq!(v.busy_threads[&(0x1000, 0)], vec![11]);
    }

    #[test]
    fn a_held_up_monitor_in_an_idle_gap_hangs_its_loop_from_the_kernels_time() {
        let mut k = Fake::default();
        k.set(10, Syscall::In(232), 5);
        k.set(11, FUTEX, 3);
        let mut ws = Workers::default();
        let at = two_workers_idle;
        ws.observe(&mut k, &at(110 * MS));
        // Both workers take a request each and block.
        k.set(10, NANOSLEEP, 6);
        k.set(11, Syscall::Running, 4);
        let v = ws.observe(&mut k, &at(130 * MS));
        assert!(v.loop_quiet_since.is_empty(), "the monitor is not due yet");
        let v = ws.observe(&mut k, &at(330 * MS));
        assert_eq!(v.loop_quiet_since.get(&(0x1000, 0)), Some(&(130 * MS)));
        let mut marked = v.busy_threads[&(0x1000, 0)].clone();
        marked.sort_unstable();
        assert_eq!(marked, vec![10, 11], "both blocking threads");
        // The stale board (both "parked" at 100 ms) reports no frozen worker.
        assert!(v.frozen.is_empty());
    }

    #[test]
    fn the_sleep_ends_when_a_waiting_thread_wakes() {
        let mut k = Fake::default();
        k.set(10, FUTEX, 5);
        k.set(11, Syscall::In(232), 3);
        let mut ws = Workers::default();
        let idle = two_workers_idle(110 * MS);
        ws.observe(&mut k, &idle);
        // Everyone waits: the whole sleep.
        let t = std::time::Instant::now();
        ws.sleep(&mut k, std::time::Duration::from_millis(40));
        assert!(t.elapsed() >= std::time::Duration::from_millis(40));
        // A thread in a handler: back after one look.
        k.set(11, NANOSLEEP, 4);
        let t = std::time::Instant::now();
        ws.sleep(&mut k, std::time::Duration::from_secs(5));
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn a_stale_board_is_overruled_by_a_parked_thread() {
        let mut k = Fake::default();
        k.set(10, FUTEX, 5);
        k.set(11, FUTEX, 3);
        let mut ws = Workers::default();
        // The board says 11 is frozen since 100 ms, but its sample is old and
        // the kernel sees it parked.
        let r = reading(
            900 * MS,
            lp(10, 100 * MS, None),
            vec![
                worker(0, Some(10), None, 0, 100 * MS),
                worker(1, Some(11), Some(100 * MS), 80 * MS, 100 * MS),
            ],
        );
        let v = ws.observe(&mut k, &r);
        assert!(v.frozen.is_empty(), "{v:?}");
    }

    #[test]
    fn a_snapshot_does_not_end_a_stretch_of_work() {
        let mut k = Fake::default();
        k.set(7, NANOSLEEP, 2);
        let mut ws = Workers::default();
        let mut w = worker(0, Some(7), Some(100 * MS), 80 * MS, 100 * MS);
        w.current_thread = true;
        let r = reading(150 * MS, lp(7, 100 * MS, Some(300 * MS)), vec![w]);
        ws.observe(&mut k, &r);
        // Our PTRACE_INTERRUPT cost the thread two switches.
        k.set(7, Syscall::In(219), 4);
        ws.snapshot_taken();
        let mut later = r.clone();
        later.now_ns = 180 * MS;
        ws.observe(&mut k, &later);
        assert_eq!(ws.quiet_since(7), Some(150 * MS));
        // Without a snapshot, a switch restarts the stretch.
        k.set(7, NANOSLEEP, 5);
        later.now_ns = 200 * MS;
        ws.observe(&mut k, &later);
        assert_eq!(ws.quiet_since(7), Some(200 * MS));
    }

    #[test]
    fn current_thread_marks_its_one_thread_and_reports_no_frozen_worker() {
        let mut k = Fake::default();
        k.set(7, NANOSLEEP, 2);
        let mut ws = Workers::default();
        let mut w = worker(0, Some(7), Some(100 * MS), 80 * MS, 100 * MS);
        w.current_thread = true;
        w.workers = 1;
        let r = reading(150 * MS, lp(7, 100 * MS, Some(300 * MS)), vec![w]);
        let v = ws.observe(&mut k, &r);
        assert!(v.frozen.is_empty());
        assert_eq!(v.busy_threads[&(0x1000, 0)], vec![7]);
        let mut later = r.clone();
        later.now_ns = 330 * MS;
        let v = ws.observe(&mut k, &later);
        assert_eq!(v.loop_quiet_since.get(&(0x1000, 0)), Some(&(150 * MS)));
    }

    #[test]
    fn a_current_thread_loop_on_time_costs_no_look_and_an_overdue_one_is_marked() {
        let mut k = Fake::default();
        // Out of its wait (a task runs), as a hang would leave it.
        k.set(7, Syscall::In(0), 2);
        let mut ws = Workers {
            look_from_ns: 50 * MS,
            ..Workers::default()
        };
        let mut w = worker(0, Some(7), None, 0, 100 * MS);
        w.current_thread = true;
        w.workers = 1;
        // Ticked at 100 ms, period 20 ms: due at 120 ms.
        let on_time = reading(130 * MS, lp(7, 100 * MS, None), vec![w.clone()]);
        let v = ws.observe(&mut k, &on_time);
        assert_eq!(k.looks, 0, "a loop 10 ms late: the kernel is not asked");
        assert!(v.busy_threads.get(&(0x1000, 0)).map_or(true, Vec::is_empty));
        // 60 ms overdue: its thread is looked at and marked.
        let overdue = reading(180 * MS, lp(7, 100 * MS, None), vec![w.clone()]);
        let v = ws.observe(&mut k, &overdue);
        assert_eq!(k.looks, 1);
        assert_eq!(v.busy_threads[&(0x1000, 0)], vec![7]);
        // An idle gap (the monitor said when it is due) is always looked at.
        let gap = reading(130 * MS, lp(7, 100 * MS, Some(300 * MS)), vec![w]);
        ws.observe(&mut k, &gap);
        assert_eq!(k.looks, 2);
    }

    /// The shape of the early loop hang under load: the idle monitor's
    /// worker (10) is woken (for its timer, or to help with a request) and
    /// is out of its wait at 130 ms, but waits for a CPU until 320 ms; the
    /// monitor, due at 300 ms, misses its due time. Counted from 130 ms, the
    /// stall crossed 250 ms (a 0.25 s interval) at 380 ms while the thread
    /// had not run; counted from its own stretch it starts at 320 ms. The
    /// monitor's lateness itself still counts from its due time.
    #[test]
    fn a_thread_waiting_for_a_cpu_does_not_date_a_held_up_loop() {
        let mut k = Fake::default();
        k.set(10, Syscall::In(232), 5);
        k.set(11, FUTEX, 3);
        let mut ws = Workers::default();
        let at = two_workers_idle;
        ws.observe(&mut k, &at(110 * MS));
        // Woken at 130 ms (out of epoll_wait, no switch since), runnable.
        k.set(10, Syscall::Running, 6);
        k.waits.insert(10, 1_000 * MS);
        ws.observe(&mut k, &at(130 * MS));
        assert_eq!(ws.quiet_since(10), Some(130 * MS));
        assert_eq!(ws.own_since(10), Some(130 * MS));
        // At 390 ms it has waited for a CPU for 190 ms of the 260 ms.
        k.waits.insert(10, 1_190 * MS);
        let v = ws.observe(&mut k, &at(390 * MS));
        assert_eq!(ws.quiet_since(10), Some(130 * MS), "still one stretch");
        assert_eq!(v.loop_quiet_since.get(&(0x1000, 0)), Some(&(320 * MS)));
        let l = lp(10, 100 * MS, Some(300 * MS));
        let stall = loop_stall(&v, 0x1000, &l, 390 * MS);
        assert_eq!(stall, 90 * MS, "the monitor's own lateness, not 260 ms");
        assert!(stall < 250 * MS, "no hang at a 0.25 s interval yet");
        // Starved for good, the monitor's due time keeps counting in full:
        // at 560 ms the loop is 260 ms overdue (a hang, as before).
        k.waits.insert(10, 1_420 * MS);
        let v = ws.observe(&mut k, &at(560 * MS));
        assert_eq!(loop_stall(&v, 0x1000, &l, 560 * MS), 260 * MS);
    }

    /// A thread blocked in its handler waits for no CPU: its stretch is
    /// dated when it left its wait, and it is marked before a sibling that
    /// left its wait earlier but has mostly waited for a CPU since.
    #[test]
    fn the_handler_is_marked_before_a_thread_waiting_for_a_cpu() {
        let mut k = Fake::default();
        k.set(10, FUTEX, 5);
        k.set(11, Syscall::In(232), 3);
        let mut ws = Workers::default();
        let at = |now| {
            reading(
                now,
                lp(12, 100 * MS, Some(300 * MS)),
                vec![
                    worker(0, Some(10), None, 100 * MS, 100 * MS),
                    worker(1, Some(11), None, 100 * MS, 100 * MS),
                ],
            )
        };
        ws.observe(&mut k, &at(110 * MS));
        // 10 woken at 120 ms, runnable; 11 in the handler from 140 ms.
        k.set(10, Syscall::Running, 6);
        k.waits.insert(10, 0);
        ws.observe(&mut k, &at(120 * MS));
        k.set(11, NANOSLEEP, 4);
        k.waits.insert(11, 7 * MS);
        ws.observe(&mut k, &at(140 * MS));
        k.waits.insert(10, 200 * MS);
        let v = ws.observe(&mut k, &at(400 * MS));
        assert_eq!(ws.own_since(10), Some(320 * MS));
        assert_eq!(ws.own_since(11), Some(140 * MS), "no wait for a CPU");
        assert_eq!(v.busy_threads[&(0x1000, 0)], vec![11, 10], "{v:?}");
    }

    /// Without a run-queue figure (None) the stretch is the kernel's, as
    /// before.
    #[test]
    fn without_a_run_queue_figure_the_stretch_is_the_kernels() {
        let mut k = Fake::default();
        k.set(10, Syscall::In(232), 5);
        let mut ws = Workers::default();
        let mut w = worker(0, Some(10), None, 100 * MS, 100 * MS);
        w.current_thread = true;
        w.workers = 1;
        let r = |now| reading(now, lp(10, 100 * MS, Some(300 * MS)), vec![w.clone()]);
        ws.observe(&mut k, &r(110 * MS));
        k.set(10, Syscall::In(0), 6);
        ws.observe(&mut k, &r(130 * MS));
        let v = ws.observe(&mut k, &r(400 * MS));
        assert_eq!(ws.own_since(10), Some(130 * MS));
        assert_eq!(v.loop_quiet_since.get(&(0x1000, 0)), Some(&(130 * MS)));
    }
}
