//! `watch` on a process that links nothing: its event-loop threads found and
//! judged by their own wait system calls, through the kernel's syscall
//! tracepoints (`aiodebug_engine::perf`, counting mode).
//!
//! Every thread of the target gets one group of counters, one per wait call
//! (`epoll_wait`, `epoll_pwait`, `epoll_pwait2`, `poll`, `ppoll`, `select`,
//! `pselect6`); the rules of `aiodebug_engine::loops` make a thread a loop
//! thread after a few entries (or at once with `--loop-thread`) and tell, at
//! each look, whether it iterated, idles inside its wait call, or has been
//! out of it without re-entering for how long. That stall feeds the same
//! episode state machine as a heartbeat loop's (`episode.rs`): three
//! snapshots with the thread first and marked, the culprit, the recovery,
//! StatsD `loop_stall` — through the same `act()` and `dump_now()`.
//!
//! The watcher looks every `--interval / 10`, with `--slow` at most every
//! SECS / 4 (2–50 ms, [`look_period`]): one `read(2)` of the counter group
//! per thread, plus one `pread(2)` of `/proc/PID/task/TID/syscall` for a
//! thread whose count did not move (with `--slow`, for every loop thread).
//! `--slow` is judged by `loops::SlowClock`, which captures the frame of
//! every iteration past SECS while it lasts. Busy times come from the
//! counters for iterations a look sighted and from duty-cycled sampling
//! windows for the others (`loops::sighted_during`). The target is never
//! stopped except for the episode's snapshots and the slow captures.

use super::episode::{Action, Config, Observation};
use super::event::{Event, Warning};
use super::files::OutputDir;
use super::{
    act, connect_stats, dump_options, episode_config, gone_or_error, Ctx, Log, Summary, Watched,
    MAX_SLEEP_NS,
};
use crate::config::WatchConfig;
use crate::exit;
use aiodebug_engine::cause::parse::{parse_proc_syscall, ProcSyscall};
use aiodebug_engine::cause::syscalls;
use aiodebug_engine::dump::Dumper;
use aiodebug_engine::loops::{
    self, Look, Peer, Place, SlowClock, SlowLook, SlowStep, ThreadTrack, NATIVE,
};
use aiodebug_engine::perf::{
    BusyPairs, RingRecord, WaitCounters, WaitSampler, WaitTracepoints, WAIT_CALLS,
};
use aiodebug_engine::target::{monotonic_ns, Reading};
use aiodebug_engine::{proc, Error, ErrorKind};

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Threads counted at most: 7 descriptors each; a process with more threads
/// than this has its first ones (by tid) watched and a warning.
const MAX_THREADS: usize = 256;
/// How often `/proc/PID/task` is listed for threads that appeared or left.
const RESCAN_NS: u64 = 1_000_000_000;
/// Busy times kept per loop thread for the summary (a ring).
const BUSY_WINDOW: usize = 4096;
/// Busy-time summaries every this often.
const SUMMARY_EVERY_NS: u64 = 10_000_000_000;
/// One sampling cycle: a window of `--busy-sample` × this at its start.
const CYCLE_NS: u64 = 1_000_000_000;
/// While a window is on, the rings are drained at least this often (a ring
/// holds [`aiodebug_engine::perf::RING_PAGES`] pages: ~1000 iterations).
const DRAIN_NS: u64 = 5_000_000;
/// Iterations timed per loop thread per window at most (kept and sent to
/// StatsD at the window's end); past it they are counted but not kept, and
/// the sampling rate sent says so.
const MAX_TIMED_PER_WINDOW: usize = 1000;
/// Sightings kept per thread (see [`Thread::sightings`]): a window's ring
/// is drained every [`DRAIN_NS`], a few looks at most, so the last 64 cover
/// every iteration a drain can still see.
const MAX_SIGHTINGS: usize = 64;

/// How often the watcher looks: ten times per interval, so a stall is seen
/// at most a tenth late; with `--slow`, also four times per SECS, so that
/// an iteration's start is known to a quarter of SECS (see
/// [`SlowClock`]: a captured iteration lasted more than SECS minus one look,
/// and every one past SECS is captured). Bounded to 2–50 ms: below 2 ms
/// the watcher's own looks (a `read` per thread, a `pread` of its
/// `syscall` file, the `stat` of the process) would cost more than 1 % of
/// a core (README, cost of `--slow`); above 50 ms a hang is seen late.
pub(crate) fn look_period(interval_ns: u64, slow_ns: Option<u64>) -> u64 {
    let by_interval = interval_ns / 10;
    slow_ns
        .map_or(by_interval, |s| by_interval.min(s / 4))
        .clamp(2_000_000, 50_000_000)
}

/// The duty cycle of the sampling windows: on for `on_ns` at the start of
/// every [`CYCLE_NS`] (pure: the caller gives the time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Windows {
    on_ns: u64,
    cycle_start: u64,
}

/// What [`Windows::at`] says for a look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Phase {
    /// Sampling should be on now.
    pub on: bool,
    /// A new cycle began with this look (a window that was on ends here and,
    /// if `on`, the next one begins).
    pub new_cycle: bool,
}

impl Windows {
    /// Windows of `fraction` (0..=1) of each cycle, the first cycle at `now`.
    pub fn new(fraction: f64, now: u64) -> Windows {
        Windows {
            on_ns: (fraction.clamp(0.0, 1.0) * CYCLE_NS as f64) as u64,
            cycle_start: now,
        }
    }

    /// The fraction of time sampled.
    pub fn fraction(&self) -> f64 {
        self.on_ns as f64 / CYCLE_NS as f64
    }

    /// The phase at `now` (not earlier than the previous call's).
    pub fn at(&mut self, now: u64) -> Phase {
        let mut new_cycle = false;
        if now.saturating_sub(self.cycle_start) >= CYCLE_NS {
            // Late looks skip whole cycles rather than catch up.
            self.cycle_start = now;
            new_cycle = true;
        }
        Phase {
            on: self.on_ns > 0 && now.saturating_sub(self.cycle_start) < self.on_ns,
            new_cycle,
        }
    }
}

/// The sampling rate of a window's timings: the fraction of time sampled,
/// times the fraction of the iterations that ended in the window that were
/// timed (`entries` counted in it: the first one closes an iteration begun
/// before the window; lost samples and the cap lower it). `long`: the
/// window's iterations a look sighted, left to the counters (timed there,
/// every one): not among those the rate is of. 4 decimals.
pub(crate) fn window_rate(fraction: f64, timed: usize, entries: u64, long: u64) -> f64 {
    let ended = entries.saturating_sub(1).saturating_sub(long).max(1) as f64;
    let r = fraction * (timed as f64 / ended).min(1.0);
    ((r * 1e4).round() / 1e4).max(1e-4)
}

/// One loop thread's sampling (see [`Windows`]).
struct Sampling {
    sampler: WaitSampler,
    pairs: BusyPairs,
    /// The counters' entries when this window began (`None`: no window yet).
    entries0: Option<u64>,
    /// Busy times (ns) of this window's iterations no look sighted, at
    /// most [`MAX_TIMED_PER_WINDOW`].
    timed: Vec<u64>,
    /// This window's iterations a look sighted (the counters', not kept
    /// here).
    long: u64,
}

/// One thread of the target, counted.
struct Thread {
    counters: WaitCounters,
    track: ThreadTrack,
    /// `/proc/PID/task/TID/syscall`, kept open (a `pread` per look).
    syscall_file: Option<std::fs::File>,
    /// Where it was at the previous look that read it.
    last_place: Place,
    /// Per-call counts at the last read (to name its main call).
    counts: Vec<u64>,
    /// Named by `--loop-thread`.
    forced: bool,
    /// Its first parking was logged (`loop_parked`, once per thread).
    parked_said: bool,
    /// Set once it is a loop thread: the episode state, as a heartbeat loop's.
    watched: Option<Watched>,
    /// Busy times (ns) of its recent iterations, timed by the counters or
    /// the windows (see [`Thread::out`]).
    busy: Vec<u64>,
    /// A look sighted it: saw it out of its wait call without having
    /// entered it since the previous look. The counters time such an
    /// iteration (at most the time since the last look known to precede its
    /// start, `SlowClock::began_after_ns`); the windows time the others
    /// (`loops::sighted_during`: each iteration by one side only).
    out: bool,
    /// When the recent sightings were (watcher clock, the samples' clock),
    /// the last [`MAX_SIGHTINGS`].
    sightings: VecDeque<u64>,
    /// When its current iteration began, to a look (the counters' busy
    /// times are bounded by it) and, with `--slow`, when to capture its
    /// frame; set once it is a loop thread.
    clock: Option<SlowClock>,
    /// Its sampler, once it is a loop thread (`None`: sampling off, or the
    /// kernel refused it: the counters go on).
    sampling: Option<Sampling>,
    /// Until when the episode tracker had a slow tick (or hang) of it
    /// running: a sampled slow iteration up to then is reported by it.
    slow_seen_ns: u64,
}

/// The thread's name (`comm`), or `thread TID`.
pub(crate) fn thread_comm(pid: i32, tid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/task/{tid}/comm"))
        .ok()
        .map(|b| {
            let b = &b[..b.len().min(64)];
            String::from_utf8_lossy(b).trim().to_string()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("thread {tid}"))
}

/// The threads of `pid`, by tid, at most `MAX_THREADS` (and whether more).
pub(crate) fn list_threads(pid: i32) -> Result<(Vec<i32>, bool), Error> {
    let rd = std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Exited { pid }
        } else {
            Error::io(format!("listing /proc/{pid}/task"), e)
        }
    })?;
    let mut tids: Vec<i32> = rd
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    let more = tids.len() > MAX_THREADS;
    tids.truncate(MAX_THREADS);
    Ok((tids, more))
}

/// Where the thread is now, per the kernel; `prev` when it is in
/// `restart_syscall` (a wait or a sleep our snapshot interrupted resumes as
/// that call: it is still in whatever it was in before) or the file cannot be
/// read.
pub(crate) fn place_now(file: Option<&std::fs::File>, prev: Place) -> Place {
    let Some(f) = file else { return prev };
    let mut buf = [0u8; 256];
    match f.read_at(&mut buf, 0) {
        Ok(n) => place_in_line(&buf[..n], prev),
        Err(_) => prev,
    }
}

/// The process's state letter, from `/proc/PID/stat` kept open (`file`): a
/// `pread` per look instead of an open, reads and a close — at a look every
/// 2–5 ms (`--slow`) that was a third of the watcher's system calls. On any
/// failure (the process gone: ESRCH) the file is read afresh, so the error
/// is classified as usual (`Error::Exited`).
fn state_now(file: Option<&std::fs::File>, pid: i32) -> Result<char, Error> {
    if let Some(f) = file {
        let mut buf = [0u8; 1024];
        if let Ok(n) = f.read_at(&mut buf, 0) {
            // A `stat` line is ~300 bytes; one cut at 1024 still has the
            // state, which follows the comm.
            if let Some(st) = proc::parse_stat(&buf[..n]) {
                return Ok(st.state);
            }
        }
    }
    proc::read_stat(pid).map(|s| s.state)
}

/// [`place_now`] on the contents of `/proc/PID/task/TID/syscall` (pure).
fn place_in_line(data: &[u8], prev: Place) -> Place {
    match parse_proc_syscall(data) {
        Some(ProcSyscall::In { nr, .. })
            if syscalls::name(NATIVE, nr) == Some("restart_syscall") =>
        {
            prev
        }
        Some(s) => loops::place_of(NATIVE, &s),
        None => prev,
    }
}

/// Says a loop thread sleeps in a futex while another loop thread carries
/// on: a parked pool thread, not a hang (a `loop_parked` event).
fn parked_event(ctx: &Ctx<'_>, tid: i32, t: &Thread) {
    let Some(w) = &t.watched else { return };
    ctx.log.emit(&Event::LoopParked { name: &w.name, tid });
}

/// Runs `watch PID` on a process with no heartbeat (or with `--loop-thread`).
/// `why` says why this mode was chosen, for the first line.
pub(crate) fn watch(args: &WatchConfig, pid: i32, out: OutputDir, why: &str) -> (u8, Summary) {
    let tps = match WaitTracepoints::find() {
        Ok(t) => t,
        Err(Error::PermissionDenied { hint, .. }) => {
            let e = Error::PermissionDenied { pid, hint };
            crate::errln!("aiodebug-watch: cannot watch PID {pid} by its wait calls: {e}");
            return (exit::code_for(&e), Summary::default());
        }
        Err(e) => {
            crate::errln!("aiodebug-watch: cannot watch PID {pid} by its wait calls: {e}");
            return (exit::code_for(&e), Summary::default());
        }
    };
    let log = Log::new(args.json);
    let stats = connect_stats(args, &log);
    let stop = super::stop_flag();
    let exe = proc::read_exe(pid)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "?".into());
    let mut ctx = Ctx {
        args,
        pid,
        exe,
        log,
        out: Box::new(out),
        stats,
        dumper: Box::new(Dumper::with_options(dump_options(args))),
        hangs: 0,
        files: 0,
        budget_warned: false,
        trace_warned: false,
        max_sleep_ns: MAX_SLEEP_NS,
        episodes_completed: 0,
        summary: Summary::default(),
        workers: super::workers::Workers::default(),
        threads: super::workers::ProcView::new(pid),
        view: super::workers::View::default(),
    };
    if let Err(e) = ctx.dumper.prepare(pid) {
        ctx.log.emit(&Event::Warning(Warning::NoPreload {
            pid,
            error: e.to_string(),
        }));
    }
    let code = run(&mut ctx, &tps, why, &stop);
    ctx.log.finish();
    if let Some(s) = &ctx.stats {
        s.drain(Duration::from_secs(2));
    }
    ctx.summary.hangs = ctx.hangs;
    (code, ctx.summary)
}

/// The watch proper; returns the exit code.
fn run(ctx: &mut Ctx<'_>, tps: &WaitTracepoints, why: &str, stop: &AtomicBool) -> u8 {
    let cfg = episode_config(ctx.args);
    let pid = ctx.pid;
    let started = monotonic_ns();
    let end = ctx
        .args
        .duration
        .map(|d| started.saturating_add(crate::status::secs_to_ns(d)));
    let look_ns = look_period(cfg.interval_ns, cfg.slow_ns);
    // The episode tracker judges hangs only; `--slow` is the SlowClock's,
    // which knows when an iteration began to a look (the tracker's stall
    // is counted from the look that saw an entry, late on purpose so that
    // hangs are never overestimated: too late to capture every slow one).
    let hang_cfg = Config {
        slow_ns: None,
        ..cfg
    };
    let calls: Vec<&str> = tps.calls.iter().map(|(c, _)| *c).collect();
    let forced: Vec<i32> = ctx.args.loop_threads.clone();
    ctx.log.emit(&Event::StartedSyscalls {
        start: ctx.start(),
        why,
        calls: &calls,
        loop_threads: &forced,
    });
    let mut threads: BTreeMap<i32, Thread> = BTreeMap::new();
    let mut last_scan = 0u64;
    let mut warned_many = false;
    let mut was_stopped = false;
    let mut last_summary = started;
    let mut opened_any = false;
    let mut windows = Windows::new(ctx.args.busy_sample, started);
    let mut sample_warned = false;
    let slow_ns = cfg.slow_ns;
    let stat_file = std::fs::File::open(format!("/proc/{pid}/stat")).ok();
    loop {
        if stop.load(Ordering::Relaxed) {
            ctx.log.emit(&Event::Stopped);
            return finish(ctx, &mut threads, exit::OK);
        }
        let state = match state_now(stat_file.as_ref(), pid) {
            Ok(s) => s,
            Err(e) => return end_with(ctx, &mut threads, &e),
        };
        if state == 'Z' || state == 'X' {
            return end_with(ctx, &mut threads, &Error::Exited { pid });
        }
        let stopped = crate::status::is_stopped(state);
        if stopped != was_stopped {
            was_stopped = stopped;
            ctx.log.emit(&Event::ProcessState {
                pid,
                state,
                stopped,
                hang_waits: false,
            });
        }
        let now = monotonic_ns();
        if last_scan == 0 || now.saturating_sub(last_scan) >= RESCAN_NS {
            last_scan = now;
            let (tids, more) = match list_threads(pid) {
                Ok(t) => t,
                Err(e) => return end_with(ctx, &mut threads, &e),
            };
            if more && !warned_many {
                warned_many = true;
                ctx.log.emit(&Event::Warning(Warning::TooManyThreads {
                    pid,
                    max: MAX_THREADS,
                }));
            }
            if let Some(code) = rescan(ctx, &mut threads, tps, &tids, &forced, now) {
                return finish(ctx, &mut threads, code);
            }
            opened_any |= !threads.is_empty();
            if !opened_any && !forced.is_empty() {
                crate::errln!(
                    "aiodebug-watch: none of the --loop-thread ids ({}) is a thread of PID {pid}",
                    forced
                        .iter()
                        .map(i32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                return exit::USAGE;
            }
        }
        let reading = Reading {
            now_ns: now,
            registries: Vec::new(),
            rejected: Vec::new(),
        };
        let mut deadline = now.saturating_add(look_ns);
        // First every thread's counts and place, then the verdicts: whether
        // a loop thread in a futex is parked depends on the others
        // (`loops::carried_by_other`).
        // Each read's time: taken before the counters are read (an entry
        // counted later happened after it).
        let mut reads: Vec<Option<(u64, Option<Place>, u64)>> = Vec::with_capacity(threads.len());
        for t in threads.values_mut() {
            let read_ns = monotonic_ns();
            let Ok(counts) = t.counters.read() else {
                reads.push(None);
                continue;
            };
            let entries = counts.iter().fold(0u64, |a, &b| a.saturating_add(b));
            t.counts = counts;
            // With `--slow` a loop thread's place is read at every look:
            // one that entered and is out again began an iteration between
            // the two looks, which the SlowClock must know.
            let place =
                if t.track.needs_wait_check(entries) || (slow_ns.is_some() && t.track.is_loop()) {
                    let p = place_now(t.syscall_file.as_ref(), t.last_place);
                    t.last_place = p;
                    Some(p)
                } else {
                    // It entered since: it sits in the call or just left it.
                    t.last_place = Place::Wait;
                    None
                };
            reads.push(Some((entries, place, read_ns)));
        }
        // One peer per thread, in the same order (unread threads say
        // nothing: neither ticked nor anywhere).
        let peers: Vec<Peer> = threads
            .values()
            .zip(&reads)
            .map(|(t, r)| match r {
                Some((entries, place, _)) => Peer {
                    is_loop: t.track.is_loop(),
                    ticked: !t.track.needs_wait_check(*entries),
                    place: *place,
                },
                None => Peer {
                    is_loop: false,
                    ticked: false,
                    place: None,
                },
            })
            .collect();
        for (me, ((&tid, t), r)) in threads.iter_mut().zip(reads).enumerate() {
            let Some((entries, place, read_ns)) = r else {
                continue;
            };
            let futex = place == Some(Place::Futex);
            let ticked = !t.track.needs_wait_check(entries);
            let v = t.track.observe(Look {
                now_ns: monotonic_ns(),
                entries,
                waiting: place.map(|p| p == Place::Wait),
                futex,
                carried: futex && loops::carried_by_other(&peers, me),
            });
            // Said once per thread: a pool's workers park and wake many
            // times a second, the status line shows how many are parked now.
            if v.became_parked && t.watched.is_some() && !t.parked_said {
                t.parked_said = true;
                parked_event(ctx, tid, t);
            }
            if v.became_loop || (v.is_loop && t.watched.is_none()) {
                announce(ctx, tid, t, tps, now);
                let name = loop_name(pid, tid);
                t.watched = Some(Watched::new(name, tid as u32, hang_cfg, now));
                // Without `--slow` the clock only bounds busy times (it
                // never captures: nothing is longer than u64::MAX ns).
                t.clock = Some(SlowClock::new(slow_ns.unwrap_or(u64::MAX), read_ns));
                if windows.fraction() > 0.0 {
                    t.sampling = open_sampling(ctx, tid, t, tps, &mut sample_warned);
                }
            }
            let Some(w) = t.watched.as_mut() else {
                continue;
            };
            if v.stall_ns > 0 {
                t.out = true;
                if t.sightings.len() >= MAX_SIGHTINGS {
                    t.sightings.pop_front();
                }
                // The read's time, a few µs before the `pread` that found
                // it out: an iteration boundary inside those µs can make
                // one iteration timed twice or not at all (not seen so far;
                // the looks are milliseconds apart).
                t.sightings.push_back(read_ns);
            }
            // Sighted: timed here, every one; the others are the sampling
            // windows' (see `drain`), so none is sent twice or lost.
            if v.iteration_ended() && t.out {
                t.out = false;
                // At most the time since the last look known to precede
                // its start (the clock's, read before this look moves it):
                // an upper bound, where the tracker's `iteration_ns` counts
                // from the look that saw the entry and may fall short.
                let busy_ns = t.clock.as_ref().map_or(v.iteration_ns, |c| {
                    read_ns.saturating_sub(c.began_after_ns())
                });
                // Bounded: past the window, the summary's iterations are
                // the first ones since the last summary.
                if t.busy.len() < BUSY_WINDOW {
                    t.busy.push(busy_ns);
                }
                if let Some(s) = &ctx.stats {
                    // At most one a look per loop thread (a sighting each),
                    // so every one is sent (`|@1`).
                    s.busy(&w.name, busy_ns, 1.0);
                }
            }
            let obs = Observation {
                now_ns: now,
                stall_ns: v.stall_ns,
                // A parked worker is back waiting for work: as a tick.
                ticked: v.iteration_ended(),
                new_max_lag_ns: v.iteration_ns,
                stopped,
            };
            if let Some(ns) = w.cause.observe(pid, w.tid, obs.stall_ns, &cfg) {
                deadline = deadline.min(now.saturating_add(ns));
            }
            if v.iteration_ended() {
                t.out = false;
            }
            for action in w.tracker.observe(obs) {
                if let Some(code) = act(ctx, w, action, &reading) {
                    return finish(ctx, &mut threads, code);
                }
            }
            if let Some(c) = t.clock.as_mut() {
                let step = c.observe(SlowLook {
                    now_ns: read_ns,
                    ticked,
                    place,
                    parked: v.parked,
                    // A stopped process (job control, a debugger) is not
                    // slow, as for the tracker: its iteration is not judged.
                    hung: w.tracker.is_hung() || stopped,
                });
                let action = match step {
                    SlowStep::Nothing => None,
                    SlowStep::Capture => Some(Action::SlowStarted),
                    // The upper bound: what a heartbeat's slow tick says
                    // too (the time since the loop was last seen on time).
                    SlowStep::Ended { at_most_ns, .. } => Some(Action::SlowEnded {
                        blocked_ns: at_most_ns,
                    }),
                    SlowStep::Dropped => Some(Action::SlowAbandoned),
                };
                if let Some(a) = action {
                    if let Some(code) = act(ctx, w, a, &reading) {
                        return finish(ctx, &mut threads, code);
                    }
                }
                if let Some(d) = c.deadline().filter(|_| slow_ns.is_some()) {
                    deadline = deadline.min(d);
                }
            }
            if w.slow_frames.is_some()
                || w.tracker.is_hung()
                || t.clock.as_ref().is_some_and(SlowClock::is_captured)
            {
                t.slow_seen_ns = monotonic_ns();
            }
            if let Some(s) = &ctx.stats {
                if w.tracker.is_hung() || now.saturating_sub(w.last_gauge_ns) >= 1_000_000_000 {
                    s.stall(&w.name, v.stall_ns);
                    w.last_gauge_ns = now;
                }
            }
            if let Some(d) = w.tracker.next_deadline(&obs) {
                deadline = deadline.min(d);
            }
        }
        let phase = windows.at(monotonic_ns());
        for (&tid, t) in threads.iter_mut() {
            let (Some(w), Some(sm)) = (&t.watched, t.sampling.as_mut()) else {
                continue;
            };
            step_window(
                ctx,
                tid,
                &w.name,
                sm,
                phase,
                &mut t.busy,
                t.track.total(),
                windows.fraction(),
                Limits {
                    sightings: t.sightings.make_contiguous(),
                    slow_ns,
                    slow_seen_ns: t.slow_seen_ns,
                },
            );
        }
        if phase.on {
            deadline = deadline.min(now.saturating_add(DRAIN_NS));
        }
        if ctx.args.exit_on_hang && ctx.episodes_completed > 0 {
            return finish(ctx, &mut threads, exit::STALLED);
        }
        if now.saturating_sub(last_summary) >= SUMMARY_EVERY_NS {
            summarize(ctx, &mut threads);
            last_summary = now;
        }
        if ctx.log.bar.is_some() {
            ctx.log.status(format!(
                "PID {pid}{} | {} loop threads of {} ({} parked in a futex) | hangs {} | files {}",
                if stopped { " (stopped)" } else { "" },
                threads.values().filter(|t| t.watched.is_some()).count(),
                threads.len(),
                threads
                    .values()
                    .filter(|t| t.watched.is_some() && t.track.is_parked())
                    .count(),
                ctx.hangs,
                ctx.files
            ));
        }
        if let Some(end) = end {
            if now >= end {
                return finish(ctx, &mut threads, exit::OK);
            }
            deadline = deadline.min(end);
        }
        let sleep = deadline
            .saturating_sub(monotonic_ns())
            .clamp(1_000_000, look_ns);
        std::thread::sleep(Duration::from_nanos(sleep));
    }
}

/// A loop thread's name: its `comm` (`redis-server`, `node`, `python3`).
fn loop_name(pid: i32, tid: i32) -> String {
    thread_comm(pid, tid)
}

/// Says which thread is watched and why (a line and a `loop_found` event).
fn announce(ctx: &Ctx<'_>, tid: i32, t: &Thread, tps: &WaitTracepoints, now: u64) {
    let named: Vec<(&str, u64)> = tps
        .calls
        .iter()
        .map(|(c, _)| *c)
        .zip(t.counts.iter().copied())
        .collect();
    let main = loops::main_call(&named);
    let name = loop_name(ctx.pid, tid);
    let secs = now.saturating_sub(t.track.first_ns()) as f64 / 1e9;
    let why = if t.forced {
        "named by --loop-thread".to_string()
    } else {
        format!(
            "entered {} {} times in {secs:.2} s",
            main.map_or("its wait calls", |(c, _)| c),
            t.track.total()
        )
    };
    ctx.log.emit(&Event::LoopFoundSyscalls {
        name: &name,
        tid,
        why: &why,
        call: main.map(|(c, _)| c),
        entries: t.track.total(),
        forced: t.forced,
    });
}

/// Opens counters on threads that appeared, drops threads that left.
/// `Some(code)` ends the watch (the kernel refused the counters).
fn rescan(
    ctx: &mut Ctx<'_>,
    threads: &mut BTreeMap<i32, Thread>,
    tps: &WaitTracepoints,
    tids: &[i32],
    forced: &[i32],
    now: u64,
) -> Option<u8> {
    let pid = ctx.pid;
    threads.retain(|tid, t| {
        let keep = tids.contains(tid);
        if !keep {
            if let Some(w) = &t.watched {
                ctx.log.emit(&Event::LoopThreadExited {
                    name: &w.name,
                    tid: *tid,
                });
            }
        }
        keep
    });
    for &tid in tids {
        if threads.contains_key(&tid) || (!forced.is_empty() && !forced.contains(&tid)) {
            continue;
        }
        let counters = match WaitCounters::open(pid, tid, tps) {
            Ok(c) => c,
            // Gone between the listing and now.
            Err(e) if e.kind() == ErrorKind::Gone => continue,
            Err(e) => {
                crate::errln!("aiodebug-watch: cannot count the wait calls of PID {pid}: {e}");
                ctx.log.emit(&Event::CannotCount {
                    pid,
                    message: e.to_string(),
                });
                return Some(exit::code_for(&e));
            }
        };
        let is_forced = forced.contains(&tid);
        threads.insert(
            tid,
            Thread {
                counters,
                track: ThreadTrack::new(now, is_forced),
                syscall_file: std::fs::File::open(format!("/proc/{pid}/task/{tid}/syscall")).ok(),
                last_place: Place::Elsewhere,
                counts: vec![0; WAIT_CALLS.len()],
                forced: is_forced,
                parked_said: false,
                watched: None,
                busy: Vec::new(),
                out: false,
                sightings: VecDeque::new(),
                clock: None,
                sampling: None,
                slow_seen_ns: 0,
            },
        );
    }
    None
}

/// Opens the sampler of a new loop thread for the wait calls it was counted
/// in (all of them when none yet: a thread named by `--loop-thread`); a
/// refusal is said once and leaves the counting on.
fn open_sampling(
    ctx: &Ctx<'_>,
    tid: i32,
    t: &Thread,
    tps: &WaitTracepoints,
    warned: &mut bool,
) -> Option<Sampling> {
    let used: Vec<&str> = t
        .counters
        .calls()
        .iter()
        .zip(&t.counts)
        .filter(|(_, &n)| n > 0)
        .map(|(c, _)| *c)
        .collect();
    let calls = if used.is_empty() {
        WAIT_CALLS
    } else {
        &used[..]
    };
    match WaitSampler::open(ctx.pid, tid, tps, calls) {
        Ok(sampler) => Some(Sampling {
            sampler,
            pairs: BusyPairs::default(),
            entries0: None,
            timed: Vec::new(),
            long: 0,
        }),
        Err(e) => {
            if !std::mem::replace(warned, true) {
                ctx.log.emit(&Event::Warning(Warning::NoSampling {
                    tid,
                    error: e.to_string(),
                }));
            }
            None
        }
    }
}

/// The bounds a sampled iteration is judged by.
#[derive(Debug, Clone, Copy)]
struct Limits<'a> {
    /// When looks sighted the thread out (`loops::sighted_during`): the
    /// iterations they fall into are timed by the counters.
    sightings: &'a [u64],
    /// `--slow`.
    slow_ns: Option<u64>,
    /// Until when the SlowClock had its iteration captured (or the tracker
    /// saw it hung).
    slow_seen_ns: u64,
}

/// One look's work on a loop thread's sampling: drain its ring while a
/// window is on, end the window (its timings to StatsD with the window's
/// rate) and begin the next as `phase` says. `entries`: the counters' total.
#[allow(clippy::too_many_arguments)]
fn step_window(
    ctx: &Ctx<'_>,
    tid: i32,
    name: &str,
    sm: &mut Sampling,
    phase: Phase,
    busy: &mut Vec<u64>,
    entries: u64,
    fraction: f64,
    lim: Limits<'_>,
) {
    let was_on = sm.sampler.is_on();
    if was_on {
        drain(ctx, tid, name, sm, busy, lim);
    }
    if was_on && (!phase.on || phase.new_cycle) {
        if let (Some(e0), Some(s)) = (sm.entries0.take(), &ctx.stats) {
            let rate = window_rate(
                fraction,
                sm.timed.len(),
                entries.saturating_sub(e0),
                sm.long,
            );
            for &b in &sm.timed {
                s.busy(name, b, rate);
            }
        }
        sm.timed.clear();
        sm.long = 0;
        sm.pairs.gap();
    }
    if phase.on && (!was_on || phase.new_cycle) {
        sm.entries0 = Some(entries);
    }
    if phase.on != was_on {
        // A failed switch leaves it as it was; the next look tries again.
        if sm.sampler.enable(phase.on).is_ok() && !phase.on {
            // What the kernel wrote before the switch belongs to no window.
            let _ = sm.sampler.drain();
            sm.pairs.gap();
        }
    }
}

/// Busy times of the iterations sampled since the last drain: those no look
/// sighted kept for the window (and the summary), `--slow` said for those
/// the SlowClock did not capture (the watcher was late: it ran too late to
/// look at the deadline; no frame).
fn drain(
    ctx: &Ctx<'_>,
    tid: i32,
    name: &str,
    sm: &mut Sampling,
    busy: &mut Vec<u64>,
    lim: Limits<'_>,
) {
    for rec in sm.sampler.drain() {
        let RingRecord::Sample { id, time_ns, .. } = rec else {
            sm.pairs.gap();
            continue;
        };
        let Some(edge) = sm.sampler.edge_of(id) else {
            sm.pairs.gap();
            continue;
        };
        let returned = sm.pairs.pending_since().unwrap_or(0);
        let Some(b) = sm.pairs.edge(edge, time_ns) else {
            continue;
        };
        if lim.slow_ns.is_some_and(|s| b > s) && returned > lim.slow_seen_ns {
            ctx.log.emit(&Event::SampledSlow {
                name,
                tid,
                blocked_ns: b,
            });
        }
        if loops::sighted_during(returned, time_ns, lim.sightings) {
            sm.long += 1;
            continue;
        }
        if sm.timed.len() < MAX_TIMED_PER_WINDOW {
            sm.timed.push(b);
            if busy.len() < BUSY_WINDOW {
                busy.push(b);
            }
        }
    }
}

/// p50 / p99 / max of `v` (sorted in place), in ms.
fn busy_percentiles(v: &mut [u64]) -> (Option<u64>, Option<u64>, Option<u64>) {
    v.sort_unstable();
    (
        aiodebug_engine::heartbeat::percentile(v, 50),
        aiodebug_engine::heartbeat::percentile(v, 99),
        v.last().copied(),
    )
}

/// One `busy_summary` per loop thread: its iterations since the last one.
fn summarize(ctx: &Ctx<'_>, threads: &mut BTreeMap<i32, Thread>) {
    for (tid, t) in threads.iter_mut() {
        let Some(w) = &t.watched else { continue };
        let mut v = std::mem::take(&mut t.busy);
        let (p50, p99, max) = busy_percentiles(&mut v);
        ctx.log.emit(&Event::BusySummary {
            name: &w.name,
            tid: *tid,
            iterations: v.len(),
            p50,
            p99,
            max,
        });
    }
}

fn finish(ctx: &mut Ctx<'_>, threads: &mut BTreeMap<i32, Thread>, code: u8) -> u8 {
    summarize(ctx, threads);
    super::finish(ctx, &mut HashMap::new(), code)
}

fn end_with(ctx: &mut Ctx<'_>, threads: &mut BTreeMap<i32, Thread>, e: &Error) -> u8 {
    let code = gone_or_error(ctx, e);
    finish(ctx, threads, code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn where_a_thread_waits() {
        use Place::*;
        // epoll_wait (232): idle; clock_nanosleep (230): elsewhere; futex
        // (202) FUTEX_WAIT_PRIVATE: in a futex (parked or hung: the rule
        // of loops.rs decides); running; user code.
        assert_eq!(
            place_in_line(b"232 0x3 0x7f 0x2 0xa 0x0 0x0 0x7ffd 0x7f1\n", Elsewhere),
            Wait
        );
        assert_eq!(
            place_in_line(b"230 0x1 0x1 0x7ffd 0x0 0x0 0x0 0x7ffd 0x7f1\n", Wait),
            Elsewhere
        );
        assert_eq!(
            place_in_line(b"202 0x7f 0x80 0x0 0x0 0x0 0x0 0x7ffd 0x7f1\n", Wait),
            Futex
        );
        assert_eq!(place_in_line(b"running\n", Wait), Elsewhere);
        assert_eq!(place_in_line(b"-1 0x7ffd 0x55\n", Wait), Elsewhere);
        // restart_syscall (219): what it was before; garbage: likewise.
        let restart = b"219 0x0 0x0 0x0 0x0 0x0 0x0 0x7ffd 0x7f1\n";
        assert_eq!(place_in_line(restart, Wait), Wait);
        assert_eq!(place_in_line(restart, Futex), Futex);
        assert_eq!(place_in_line(restart, Elsewhere), Elsewhere);
        assert_eq!(place_in_line(b"", Wait), Wait);
    }

    #[test]
    fn slow_makes_the_looks_a_quarter_of_it() {
        const MS: u64 = 1_000_000;
        assert_eq!(look_period(250 * MS, None), 25 * MS);
        assert_eq!(look_period(10_000 * MS, None), 50 * MS);
        assert_eq!(look_period(1000 * MS, Some(20 * MS)), 5 * MS);
        // The interval's tenth when it is shorter.
        assert_eq!(look_period(250 * MS, Some(200 * MS)), 25 * MS);
        // Never below 2 ms.
        assert_eq!(look_period(250 * MS, Some(MS)), 2 * MS);
        assert_eq!(look_period(10 * MS, None), 2 * MS);
    }

    #[test]
    fn windows_are_a_duty_cycle() {
        const MS: u64 = 1_000_000;
        let mut w = Windows::new(0.1, 0);
        assert_eq!(
            w.at(0),
            Phase {
                on: true,
                new_cycle: false
            }
        );
        assert!(w.at(99 * MS).on);
        assert!(!w.at(100 * MS).on);
        assert!(!w.at(999 * MS).on);
        assert_eq!(
            w.at(1000 * MS),
            Phase {
                on: true,
                new_cycle: true
            }
        );
        // A late look begins the cycle where it is.
        assert_eq!(
            w.at(3500 * MS),
            Phase {
                on: true,
                new_cycle: true
            }
        );
        assert!(!w.at(3600 * MS).on);
        let mut off = Windows::new(0.0, 0);
        assert!(!off.at(0).on);
        let mut all = Windows::new(1.0, 0);
        assert!(all.at(999 * MS).on);
        assert_eq!(
            all.at(1000 * MS),
            Phase {
                on: true,
                new_cycle: true
            }
        );
    }

    #[test]
    fn a_window_rate_counts_what_was_not_timed() {
        // 11 entries: 10 iterations ended in the window, all timed.
        assert_eq!(window_rate(0.1, 10, 11, 0), 0.1);
        // Half of them lost (or past the cap): half the rate.
        assert_eq!(window_rate(0.1, 5, 11, 0), 0.05);
        // Five were a look long or more: the counters' (every one sent).
        assert_eq!(window_rate(0.1, 5, 11, 5), 0.1);
        // More timed than counted (the counters were read a bit earlier).
        assert_eq!(window_rate(0.1, 12, 11, 0), 0.1);
        assert_eq!(window_rate(1.0, 0, 0, 0), 1e-4);
    }

    #[test]
    fn percentiles_of_busy_times() {
        let mut v = vec![5, 1, 3, 2, 4];
        let (p50, _, max) = busy_percentiles(&mut v);
        assert_eq!(p50, Some(3));
        assert_eq!(max, Some(5));
        assert_eq!(busy_percentiles(&mut []), (None, None, None));
    }
}
