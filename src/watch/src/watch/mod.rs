//! `watch`: read the heartbeat from outside, catch every hang while it lasts,
//! write the evidence, send lags to StatsD.
//!
//! The loop is deadline driven: after each read it sleeps until the earliest
//! moment something can happen — a loop's stall crossing the slow threshold or
//! the hang interval, or an episode's next snapshot — capped so lags are read
//! before the ring wraps and the status line stays fresh. A hang is therefore
//! seen within about a millisecond of crossing the interval, while a healthy
//! target costs a few reads a second.

pub mod episode;
pub mod files;
pub mod fleet;
pub mod render;
pub mod statsd;
pub mod syscall_loop;
pub mod workers;

use crate::cli::WatchArgs;
use crate::exit;
use crate::status::{human, secs_to_ns};
use aiodebug_engine::dump::Dumper;
use aiodebug_engine::heartbeat::{percentile, Loop};
use aiodebug_engine::target::{monotonic_ns, Reading, Target};
use aiodebug_engine::{proc, ErrorKind};
use episode::{Action, Config, Observation, Tracker};
use files::{Outcome, OutputDir};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use statsd::Stats;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Longest sleep between two reads.
const MAX_SLEEP_NS: u64 = 100_000_000;
/// Shortest sleep between two reads.
const MIN_SLEEP_NS: u64 = 1_000_000;
/// Lag summaries every this often.
const SUMMARY_EVERY_NS: u64 = 10_000_000_000;

/// Where events go: a live status line on a terminal, plain lines otherwise,
/// or one JSON object per line.
pub struct Log {
    json: bool,
    bar: Option<ProgressBar>,
    /// Under `--all`: the process every event is about (pid, comm).
    who: Option<(i32, String)>,
}

impl Log {
    /// Chooses the form from `--json` and whether stdout is a terminal.
    pub fn new(json: bool) -> Log {
        let bar = (!json && std::io::stdout().is_terminal()).then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar
        });
        Log {
            json,
            bar,
            who: None,
        }
    }

    /// Reports one event.
    pub fn event(&self, kind: &str, mut fields: Value, text: String) {
        if self.json {
            if let Value::Object(m) = &mut fields {
                if let Some((pid, comm)) = &self.who {
                    m.entry("pid").or_insert((*pid).into());
                    m.insert("comm".into(), comm.as_str().into());
                }
                m.insert("event".into(), kind.into());
                m.insert("time".into(), chrono::Local::now().to_rfc3339().into());
            }
            crate::outln!("{fields}");
        } else {
            let who = match &self.who {
                Some((pid, comm)) => format!("[{comm}-{pid}] "),
                None => String::new(),
            };
            let line = format!(
                "{} {who}{text}",
                chrono::Local::now().format("%H:%M:%S%.3f")
            );
            match &self.bar {
                Some(bar) => bar.println(line),
                None => crate::outln!("{line}"),
            }
        }
    }

    /// Reports one event; without `--json`, only when `text` is some (a
    /// line that would repeat the previous one is left out).
    pub fn event_json_or(&self, kind: &str, fields: Value, text: Option<String>) {
        match text {
            Some(t) => self.event(kind, fields, t),
            None if self.json => self.event(kind, fields, String::new()),
            None => {}
        }
    }

    /// Updates the status line (terminal only).
    pub fn status(&self, msg: String) {
        if let Some(bar) = &self.bar {
            bar.set_message(msg);
            bar.tick();
        }
    }

    /// Removes the status line.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// What the heartbeat says about each thread at `reading`: the loop running
/// on it, and what it is polling (`polling task 'orders' (src/main.rs:37) for
/// 1.520 s`). Only computed when a snapshot is taken.
fn thread_notes(reading: &Reading) -> (HashMap<i32, String>, HashMap<i32, String>) {
    let loops = reading
        .loops()
        .map(|l| (l.tid as i32, l.name.clone()))
        .collect();
    let polls = reading
        .registries
        .iter()
        .flat_map(|(_, r)| r.polling.iter())
        .map(|p| {
            let d = p.duration_ns(reading.now_ns);
            (
                p.tid as i32,
                format!("polling {} for {:.3} s", p.describe(), d as f64 / 1e9),
            )
        })
        .collect();
    (loops, polls)
}

/// Identity of a registration: a slot reused by another loop is another loop.
type LoopKey = (u64, u32, u64);

fn key(module_addr: u64, lp: &Loop) -> LoopKey {
    (module_addr, lp.slot, lp.registered_ns)
}

/// What the watch remembers of one loop, or of one worker thread's poll.
struct Watched {
    name: String,
    tid: u32,
    /// For a worker: what it polls; its "stall" is how long that poll runs.
    stuck_poll: Option<String>,
    /// For a worker: when the current poll began (target clock).
    poll_since_ns: u64,
    tracker: Tracker,
    last_ticks: u64,
    window: Vec<u64>,
    lost: u64,
    episode_prev_cpu: HashMap<i32, Duration>,
    recovered_after_ns: Option<u64>,
    slow_frames: Option<String>,
    last_gauge_ns: u64,
    last_read_ns: u64,
    tick_rate_ns: u64,
    cause: crate::cause::LoopCause,
}

/// Everything a watch run needs besides the loop state.
struct Ctx<'a> {
    args: &'a WatchArgs,
    pid: i32,
    exe: String,
    log: Log,
    out: Box<dyn fleet::DumpSink>,
    stats: Option<Stats>,
    dumper: Box<dyn fleet::Snapshots>,
    hangs: u64,
    files: u64,
    budget_warned: bool,
    /// A snapshot was refused (permission, another tracer): said once.
    trace_warned: bool,
    max_sleep_ns: u64,
    episodes_completed: u64,
    summary: Summary,
    workers: workers::Workers,
    threads: workers::ProcView,
    view: workers::View,
}

/// What a watch run did, for callers that go on (the demo).
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Hang episodes started.
    pub hangs: u64,
    /// Dump files written.
    pub files: Vec<std::path::PathBuf>,
    /// The frame that blocked the loop, from the first snapshot that saw it.
    pub culprit: Option<String>,
}

/// Runs `watch` (`--all`: every heartbeat process of the host, see [`fleet`]).
pub fn run(args: &WatchArgs) -> ExitCode {
    // clap's `requires` does not see a flag that defaults to false.
    if args.match_comm.is_some() && !args.all {
        crate::errln!("aiodebug-watch: --match needs --all");
        return ExitCode::from(exit::USAGE);
    }
    if args.all {
        return ExitCode::from(fleet::run(args));
    }
    ExitCode::from(watch(args).0)
}

/// What one target's watch gets from its caller: `watch PID` builds it from
/// the arguments, `watch --all` once per process.
pub(crate) struct Parts {
    pub pid: i32,
    pub target: Target,
    pub log: Log,
    pub out: Box<dyn fleet::DumpSink>,
    pub stats: Option<Stats>,
    pub dumper: Box<dyn fleet::Snapshots>,
    /// Longest sleep between two reads (the fleet sleeps longer: see fleet.rs).
    pub max_sleep_ns: u64,
    /// Load the target's symbols before the first hang.
    pub preload: bool,
}

/// The dumper's options from the arguments (`--stacks`).
pub(crate) fn dump_options(args: &WatchArgs) -> aiodebug_engine::dump::DumpOptions {
    aiodebug_engine::dump::DumpOptions {
        stacks: args.stacks.into(),
        // The loop threads' causes (with their counters), not every thread's.
        cause: aiodebug_engine::cause::capture::CauseScope::Loops,
        ..crate::dump::debug_options(&args.debug_dirs)
    }
}

/// Connects to `--statsd`, if given; a failure is a warning.
pub(crate) fn connect_stats(args: &WatchArgs, log: &Log) -> Option<Stats> {
    args.statsd.as_deref().and_then(
        |addr| match Stats::connect(addr, &args.prefix, &args.tags) {
            Ok(s) => Some(s),
            Err(e) => {
                log.event(
                    "warning",
                    json!({"message": e}),
                    format!("WARNING {e}; watching without StatsD"),
                );
                None
            }
        },
    )
}

/// SIGINT/SIGTERM set the returned flag.
pub(crate) fn stop_flag() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&stop)) {
            crate::errln!("aiodebug-watch: cannot handle signal {sig}: {e}");
        }
    }
    stop
}

/// Runs a watch; returns its exit code and what it did.
pub fn watch(args: &WatchArgs) -> (u8, Summary) {
    if let Err(e) = crate::cli::check_watch(args) {
        crate::errln!("aiodebug-watch: {e}");
        return (exit::USAGE, Summary::default());
    }
    let out = match OutputDir::open(&args.output_dir, args.max_dump_bytes, args.follow_symlinks) {
        Ok(o) => o,
        Err(e) => {
            crate::errln!("aiodebug-watch: {e}");
            return (exit::OTHER, Summary::default());
        }
    };
    // clap requires a PID unless --all.
    let pid = args.pid.unwrap_or(0);
    // No heartbeat, or threads named: watch the loops by their wait calls.
    if !args.loop_threads.is_empty() {
        return syscall_loop::watch(args, pid, out, "--loop-thread");
    }
    let target = match Target::open(pid) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NoHeartbeat => {
            return syscall_loop::watch(args, pid, out, "no heartbeat in this process");
        }
        Err(e) => {
            crate::errln!("aiodebug-watch: {e}");
            return (exit::code_for(&e), Summary::default());
        }
    };
    let log = Log::new(args.json);
    let stats = connect_stats(args, &log);
    let stop = stop_flag();
    let parts = Parts {
        pid,
        target,
        log,
        out: Box::new(out),
        stats,
        dumper: Box::new(Dumper::with_options(dump_options(args))),
        max_sleep_ns: MAX_SLEEP_NS,
        preload: true,
    };
    watch_target(args, parts, &stop)
}

/// Watches one opened target until it exits, a signal, `--duration` or
/// `--exit-on-hang`.
pub(crate) fn watch_target(args: &WatchArgs, parts: Parts, stop: &AtomicBool) -> (u8, Summary) {
    let (mut ctx, target) = new_ctx(args, parts);
    let code = watch_loop(&mut ctx, &target, stop);
    ctx.log.finish();
    if let Some(s) = &ctx.stats {
        s.drain(Duration::from_secs(2));
    }
    ctx.summary.hangs = ctx.hangs;
    (code, ctx.summary)
}

/// A watch's context from its parts (symbols loaded first if `preload`),
/// and its target.
fn new_ctx(args: &WatchArgs, parts: Parts) -> (Ctx<'_>, Target) {
    let exe = proc::read_exe(parts.pid)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "?".into());
    let mut ctx = Ctx {
        args,
        pid: parts.pid,
        exe,
        log: parts.log,
        out: parts.out,
        stats: parts.stats,
        dumper: parts.dumper,
        hangs: 0,
        files: 0,
        budget_warned: false,
        trace_warned: false,
        max_sleep_ns: parts.max_sleep_ns,
        episodes_completed: 0,
        summary: Summary::default(),
        workers: workers::Workers::default(),
        threads: workers::ProcView::new(parts.pid),
        view: workers::View::default(),
    };
    // Load the target's modules and debug info now, not when the first hang
    // is already being dumped.
    let prepared = if parts.preload {
        ctx.dumper.prepare(ctx.pid)
    } else {
        Ok(0)
    };
    if let Err(e) = prepared {
        ctx.log.event(
            "warning",
            json!({"message": e.to_string()}),
            format!("WARNING cannot preload symbols of PID {}: {e}", ctx.pid),
        );
    }
    (ctx, parts.target)
}

fn episode_config(args: &WatchArgs) -> Config {
    Config {
        interval_ns: secs_to_ns(args.interval),
        dumps: args.dumps,
        gap_ns: secs_to_ns(args.dump_gap),
        slow_ns: args
            .slow
            .map(secs_to_ns)
            .filter(|&s| s < secs_to_ns(args.interval)),
    }
}

/// What a watch keeps from one read to the next (see [`watch_step`]).
struct LoopState {
    cfg: Config,
    end: Option<u64>,
    loops: HashMap<LoopKey, Watched>,
    workers: HashMap<(u64, u32), Watched>,
    was_stopped: bool,
    last_summary: u64,
}

/// What a watch asks for after one step.
enum Step {
    /// Read again in this many ns (or earlier: an early read is only a read).
    Sleep(u64),
    /// The watch ended with this exit code.
    Done(u8),
}

fn watch_loop(ctx: &mut Ctx<'_>, target: &Target, stop: &AtomicBool) -> u8 {
    let mut st = watch_start(ctx);
    loop {
        match watch_step(ctx, target, &mut st, stop) {
            Step::Done(code) => return code,
            Step::Sleep(ns) => ctx
                .workers
                .sleep(&mut ctx.threads, Duration::from_nanos(ns)),
        }
    }
}

/// Says the watch started; its state before the first read.
fn watch_start(ctx: &mut Ctx<'_>) -> LoopState {
    let started = monotonic_ns();
    let st = LoopState {
        cfg: episode_config(ctx.args),
        end: ctx
            .args
            .duration
            .map(|d| started.saturating_add(secs_to_ns(d))),
        loops: HashMap::new(),
        workers: HashMap::new(),
        was_stopped: false,
        last_summary: started,
    };
    ctx.log.event(
        "started",
        json!({"pid": ctx.pid, "executable": ctx.exe, "interval_s": ctx.args.interval,
               "output_dir": ctx.out.path().display().to_string()}),
        format!(
            "watching PID {} ({}): hang past {:.3} s → {} snapshots {:.1} s apart into {}",
            ctx.pid,
            ctx.exe,
            ctx.args.interval,
            ctx.args.dumps,
            ctx.args.dump_gap,
            ctx.out.path().display()
        ),
    );
    st
}

/// One read of the target and what follows from it: how long until the
/// next read, or the exit code. `watch PID` sleeps between steps, the fleet
/// interleaves the steps of every process on one thread (see [`fleet`]).
fn watch_step(ctx: &mut Ctx<'_>, target: &Target, st: &mut LoopState, stop: &AtomicBool) -> Step {
    let (cfg, end) = (st.cfg, st.end);
    let mut loops = std::mem::take(&mut st.loops);
    let mut workers = std::mem::take(&mut st.workers);
    let (mut was_stopped, mut last_summary) = (st.was_stopped, st.last_summary);
    {
        if stop.load(Ordering::Relaxed) {
            ctx.log.event(
                "stopped",
                json!({"reason": "signal"}),
                "stopping (signal)".into(),
            );
            return Step::Done(finish(ctx, &mut loops, exit::OK));
        }
        let reading = match target.read() {
            Ok(r) => r,
            Err(e) => return Step::Done(gone_or_error(ctx, &e)),
        };
        // Every loop on time: the process runs (neither stopped nor a
        // zombie), no need to read its state.
        let on_time = reading.loops().next().is_some()
            && reading
                .loops()
                .all(|l| reading.now_ns <= l.last_tick_ns.saturating_add(l.period_ns));
        let state = match (on_time && !was_stopped)
            .then_some('R')
            .map_or_else(|| proc::read_stat(ctx.pid).map(|s| s.state), Ok)
        {
            Ok(s) => s,
            Err(e) => return Step::Done(gone_or_error(ctx, &e)),
        };
        if state == 'Z' || state == 'X' {
            return Step::Done(gone_or_error(
                ctx,
                &aiodebug_engine::Error::Exited { pid: ctx.pid },
            ));
        }
        let stopped = crate::status::is_stopped(state);
        if stopped != was_stopped {
            was_stopped = stopped;
            let text = if stopped {
                if loops.values().any(|w| w.tracker.is_hung()) {
                    format!("PID {} is stopped (state {state}: job control or a debugger); the hang's remaining snapshots wait until it runs again", ctx.pid)
                } else {
                    format!("PID {} is stopped (state {state}: job control or a debugger); not a hang, no dumps", ctx.pid)
                }
            } else {
                format!("PID {} runs again", ctx.pid)
            };
            ctx.log.event(
                if stopped {
                    "process_stopped"
                } else {
                    "process_continued"
                },
                json!({"pid": ctx.pid, "state": state.to_string()}),
                text,
            );
        }
        ctx.view = ctx.workers.observe(&mut ctx.threads, &reading);
        let now = monotonic_ns();
        let mut deadline = now.saturating_add(ctx.max_sleep_ns);
        let mut seen = Vec::new();
        let stuck_tids: Vec<u32> = workers
            .values()
            .filter(|w| w.tracker.in_episode())
            .map(|w| w.tid)
            .collect();
        // Loops one of whose workers is in a hang now: their `loop_stall`
        // gauge is the worker's stall (sent by watch_workers), not the
        // loop's own near-zero one, as for a hung loop.
        let worker_hung: Vec<String> = workers
            .values()
            .filter(|w| w.tracker.is_hung())
            .map(|w| w.name.clone())
            .collect();
        for (region, reg) in &reading.registries {
            for lp in &reg.loops {
                let k = key(region.addr, lp);
                seen.push(k);
                let w = loops.entry(k).or_insert_with(|| {
                    ctx.log.event(
                        "loop_found",
                        json!({"loop": lp.name, "tid": lp.tid, "period_ms": lp.period_ns as f64 / 1e6}),
                        format!("loop '{}' on thread {} (period {})", lp.name, lp.tid, human(lp.period_ns)),
                    );
                    Watched {
                        name: lp.name.clone(),
                        tid: lp.tid,
                        stuck_poll: None,
                        poll_since_ns: 0,
                        tracker: Tracker::new(cfg),
                        last_ticks: lp.ticks,
                        window: Vec::new(),
                        lost: 0,
                        episode_prev_cpu: HashMap::new(),
                        recovered_after_ns: None,
                        slow_frames: None,
                        last_gauge_ns: 0,
                        last_read_ns: now,
                        tick_rate_ns: lp.period_ns.max(1_000_000),
                        cause: Default::default(),
                    }
                });
                w.tid = lp.tid;
                let mut st = lp.stats(reading.now_ns);
                let base = region.addr.wrapping_add(reg.offset as u64);
                st.stall_ns = workers::loop_stall(&ctx.view, base, lp, reading.now_ns);
                // Every tick's lag since the previous read, once.
                let mut new_max = 0u64;
                let mut fresh = 0u64;
                for lag in lp.lags.iter().filter(|l| l.tick > w.last_ticks) {
                    fresh += 1;
                    new_max = new_max.max(lag.lag_ns);
                    w.window.push(lag.lag_ns);
                    if let Some(s) = &ctx.stats {
                        s.lag(&w.name, lag.lag_ns);
                    }
                }
                let advanced = lp.ticks.saturating_sub(w.last_ticks);
                w.lost += advanced.saturating_sub(fresh);
                // Time per tick since the previous read: read again before
                // the ring can wrap.
                if let Some(per_tick) = now.saturating_sub(w.last_read_ns).checked_div(advanced) {
                    w.tick_rate_ns = per_tick.max(1);
                }
                w.last_read_ns = now;
                w.last_ticks = w.last_ticks.max(lp.ticks);
                // A loop held up only by workers already in their own
                // episode is that hang, not a second one.
                let covered = workers::covered_by_workers(&ctx.view, base, lp, &stuck_tids);
                let obs = Observation {
                    now_ns: now,
                    stall_ns: st.stall_ns,
                    ticked: advanced > 0,
                    new_max_lag_ns: new_max,
                    stopped: stopped || covered,
                };
                w.cause.observe(ctx.pid, w.tid, obs.stall_ns);
                for action in w.tracker.observe(obs) {
                    if let Some(code) = act(ctx, w, action, &reading) {
                        return Step::Done(finish(ctx, &mut loops, code));
                    }
                }
                if let Some(s) = &ctx.stats {
                    let periodic = now.saturating_sub(w.last_gauge_ns) >= 1_000_000_000
                        && !worker_hung.contains(&w.name);
                    if w.tracker.is_hung() || periodic {
                        s.stall(&w.name, st.stall_ns);
                        w.last_gauge_ns = now;
                    }
                }
                if let Some(d) = w.tracker.next_deadline(&obs) {
                    deadline = deadline.min(d);
                }
                // Read again before the lag ring (64 ticks) can wrap.
                deadline = deadline.min(now.saturating_add(w.tick_rate_ns.saturating_mul(32)));
            }
        }
        loops.retain(|k, w| {
            let keep = seen.contains(k);
            if !keep {
                ctx.log.event(
                    "loop_gone",
                    json!({"loop": w.name}),
                    format!("loop '{}' unregistered", w.name),
                );
            }
            keep
        });
        let busy = loops.values().any(|w| w.tracker.in_episode())
            || reading.registries.iter().any(|(region, reg)| {
                let base = region.addr.wrapping_add(reg.offset as u64);
                reg.loops.iter().any(|l| {
                    workers::loop_stall(&ctx.view, base, l, reading.now_ns) > cfg.interval_ns / 2
                })
            });
        match watch_workers(ctx, &mut workers, &reading, cfg, now, (stopped, busy)) {
            Err(code) => return Step::Done(finish(ctx, &mut loops, code)),
            Ok(Some(d)) => deadline = deadline.min(d),
            Ok(None) => {}
        }
        if ctx.args.exit_on_hang && ctx.episodes_completed > 0 {
            return Step::Done(finish(ctx, &mut loops, exit::STALLED));
        }
        if now.saturating_sub(last_summary) >= SUMMARY_EVERY_NS {
            summarize(ctx, &mut loops);
            last_summary = now;
        }
        if ctx.log.bar.is_some() {
            ctx.log.status(status_line(ctx, &reading, stopped));
        }
        if let Some(end) = end {
            if now >= end {
                return Step::Done(finish(ctx, &mut loops, exit::OK));
            }
            deadline = deadline.min(end);
        }
        let sleep = deadline
            .saturating_sub(monotonic_ns())
            .clamp(MIN_SLEEP_NS, ctx.max_sleep_ns);
        *st = LoopState {
            cfg,
            end,
            loops,
            workers,
            was_stopped,
            last_summary,
        };
        Step::Sleep(sleep)
    }
}

/// Stuck workers: a thread polling one task longer than the interval while
/// its loop keeps ticking (another worker of a multi-thread runtime runs the
/// monitor). Each worker thread has its own tracker whose "stall" is how long
/// the current poll has run. `quiet` (process stopped, or a loop hung or
/// close to it) starts no new episode, so one hang never gives two episodes.
/// Returns the earliest deadline, or the exit code that ends the watch.
fn watch_workers(
    ctx: &mut Ctx<'_>,
    workers: &mut HashMap<(u64, u32), Watched>,
    reading: &Reading,
    cfg: Config,
    now: u64,
    (stopped, busy): (bool, bool),
) -> Result<Option<u64>, u8> {
    // A loop in trouble starts no worker episode (one hang, one episode),
    // but an episode under way keeps its snapshots unless the process is
    // stopped.
    let quiet = |w: &Watched| stopped || (busy && !w.tracker.in_episode());
    let cfg = Config {
        slow_ns: None,
        ..cfg
    };
    let mut active: Vec<(u64, u32)> = Vec::new();
    let mut deadline: Option<u64> = None;
    for p in self::workers::observations(reading, &ctx.view) {
        let k = p.key;
        active.push(k);
        let w = workers.entry(k).or_insert_with(|| Watched {
            name: p.owner.clone(),
            tid: p.tid,
            stuck_poll: Some(p.what.clone()),
            poll_since_ns: p.since_ns,
            tracker: Tracker::new(cfg),
            last_ticks: 0,
            window: Vec::new(),
            lost: 0,
            episode_prev_cpu: HashMap::new(),
            recovered_after_ns: None,
            slow_frames: None,
            last_gauge_ns: 0,
            last_read_ns: now,
            tick_rate_ns: 0,
            cause: Default::default(),
        });
        if w.tid == 0 {
            w.tid = p.tid;
        }
        // Another poll than last time: the previous one ended.
        let ticked = w.poll_since_ns != p.since_ns;
        let finished_ns = if ticked {
            p.since_ns.saturating_sub(w.poll_since_ns)
        } else {
            0
        };
        if ticked {
            w.poll_since_ns = p.since_ns;
            if !w.tracker.is_hung() {
                w.stuck_poll = Some(p.what.clone());
            }
        }
        let stall_ns = reading.now_ns.saturating_sub(p.since_ns);
        if let Some(s) = &ctx.stats {
            if w.tracker.is_hung() {
                s.stall(&w.name, stall_ns);
            }
        }
        let obs = Observation {
            now_ns: now,
            stall_ns,
            ticked,
            new_max_lag_ns: finished_ns,
            stopped: quiet(w),
        };
        w.cause.observe(ctx.pid, w.tid, obs.stall_ns);
        for action in w.tracker.observe(obs) {
            if let Some(code) = act(ctx, w, action, reading) {
                return Err(code);
            }
        }
        if let Some(d) = w.tracker.next_deadline(&obs) {
            deadline = Some(deadline.map_or(d, |x| x.min(d)));
        }
    }
    // Threads whose poll ended: one last observation (recovery, pending
    // snapshots), kept until their episode is over.
    let mut result = Ok(deadline);
    workers.retain(|k, w| {
        if active.contains(k) || result.is_err() {
            return true;
        }
        let obs = Observation {
            now_ns: now,
            stall_ns: 0,
            ticked: true,
            new_max_lag_ns: reading.now_ns.saturating_sub(w.poll_since_ns),
            // Stall 0 starts nothing; only a stopped process holds back the
            // episode's remaining snapshots.
            stopped,
        };
        for action in w.tracker.observe(obs) {
            if let Some(code) = act(ctx, w, action, reading) {
                result = Err(code);
            }
        }
        if let (Ok(dl), Some(d)) = (&mut result, w.tracker.next_deadline(&obs)) {
            *dl = Some(dl.map_or(d, |x| x.min(d)));
        }
        w.tracker.in_episode()
    });
    result
}

fn status_line(ctx: &Ctx<'_>, reading: &Reading, stopped: bool) -> String {
    let parts: Vec<String> = reading
        .loops()
        .map(|l| {
            let st = l.stats(reading.now_ns);
            format!(
                "{}: stall {} lag {} p99 {}",
                l.name,
                human(st.stall_ns),
                st.last_lag_ns.map(human).unwrap_or_else(|| "-".into()),
                st.p99_ns.map(human).unwrap_or_else(|| "-".into())
            )
        })
        .collect();
    format!(
        "PID {}{} | {} | hangs {} | files {}",
        ctx.pid,
        if stopped { " (stopped)" } else { "" },
        parts.join(" | "),
        ctx.hangs,
        ctx.files
    )
}

fn summarize(ctx: &Ctx<'_>, loops: &mut HashMap<LoopKey, Watched>) {
    for w in loops.values_mut() {
        let mut lags = std::mem::take(&mut w.window);
        lags.sort_unstable();
        let (p50, p99, max) = (
            percentile(&lags, 50),
            percentile(&lags, 99),
            lags.last().copied(),
        );
        ctx.log.event(
            "lag_summary",
            json!({"loop": w.name, "ticks": lags.len(), "lost": w.lost,
                   "p50_ms": p50.map(|v| v as f64 / 1e6), "p99_ms": p99.map(|v| v as f64 / 1e6),
                   "max_ms": max.map(|v| v as f64 / 1e6)}),
            format!(
                "loop '{}': {} ticks, lag p50 {} p99 {} max {}{}",
                w.name,
                lags.len(),
                p50.map(human).unwrap_or_else(|| "-".into()),
                p99.map(human).unwrap_or_else(|| "-".into()),
                max.map(human).unwrap_or_else(|| "-".into()),
                if w.lost > 0 {
                    format!(" ({} lags not read in time)", w.lost)
                } else {
                    String::new()
                }
            ),
        );
        w.lost = 0;
    }
}

fn finish(ctx: &mut Ctx<'_>, loops: &mut HashMap<LoopKey, Watched>, code: u8) -> u8 {
    summarize(ctx, loops);
    ctx.log.event(
        "finished",
        json!({"hangs": ctx.hangs, "files": ctx.files, "bytes": ctx.out.used(), "exit_code": code,
               "statsd_errors": ctx.stats.as_ref().map(Stats::errors)}),
        format!(
            "done: {} hangs caught, {} files written ({} bytes){}",
            ctx.hangs,
            ctx.files,
            ctx.out.used(),
            match ctx.stats.as_ref().map(Stats::errors) {
                Some(n) if n > 0 => format!("; {n} StatsD sends failed"),
                _ => String::new(),
            }
        ),
    );
    code
}

fn gone_or_error(ctx: &mut Ctx<'_>, e: &aiodebug_engine::Error) -> u8 {
    let code = exit::code_for(e);
    let text = if e.kind() == ErrorKind::Gone {
        format!("PID {} exited; the watch ends", ctx.pid)
    } else {
        format!("cannot read PID {}: {e}", ctx.pid)
    };
    ctx.log.event(
        "target_gone",
        json!({"pid": ctx.pid, "message": e.to_string()}),
        text.clone(),
    );
    if !ctx.args.json && !ctx.args.all {
        crate::errln!("aiodebug-watch: {text}");
    }
    code
}

/// The `scope` of an episode's events: `"loop"` (the loop is overdue) or
/// `"worker"` (one worker thread of its runtime is stuck in one poll while
/// the loop keeps ticking).
fn scope(w: &Watched) -> &'static str {
    if w.stuck_poll.is_some() {
        "worker"
    } else {
        "loop"
    }
}

/// Performs one action; `Some(code)` ends the watch.
fn act(ctx: &mut Ctx<'_>, w: &mut Watched, action: Action, reading: &Reading) -> Option<u8> {
    match action {
        Action::HangStarted { stall_ns } => {
            ctx.hangs += 1;
            w.recovered_after_ns = None;
            w.episode_prev_cpu.clear();
            let blocking =
                workers::marked_threads(&ctx.view, reading, &w.name, w.tid, w.stuck_poll.is_some());
            // One worker of a runtime stuck in one poll is the same episode
            // as a loop's hang (same event, counters, files, recovery line),
            // told apart by `scope` and by the words "worker thread": an
            // on-call engineer greps one word, a consumer counts one event.
            let text = match &w.stuck_poll {
                None => format!(
                    "HANG: loop '{}' on thread {} is {} overdue (interval {:.3} s){}",
                    w.name,
                    w.tid,
                    human(stall_ns),
                    ctx.args.interval,
                    workers::blocked_by(&blocking, w.tid)
                ),
                Some(poll) => format!(
                    "HANG: loop '{}' on worker thread {} is stuck {} in one poll of {poll} (interval {:.3} s; one worker of its runtime, the loop keeps ticking)",
                    w.name,
                    w.tid,
                    human(stall_ns),
                    ctx.args.interval
                ),
            };
            let mut fields = json!({"loop": w.name, "tid": w.tid, "scope": scope(w),
                   "stall_ms": stall_ns as f64 / 1e6,
                   "polling": w.stuck_poll, "blocking_tids": blocking});
            // Said at decision time, with what is known then: the first
            // snapshot and its symbolization take 10-80 ms (more on a cold
            // cache), which a pager waiting for the HANG line should not wait.
            ctx.log.event("hang_detected", fields.clone(), text);
            // The episode's first snapshot, taken now: `hang_started` and the
            // counter carry its cause (the file is written by Dump 0, whose
            // `dump_written` names the culprit).
            let cause = (ctx.args.dumps > 0)
                .then(|| {
                    let (tid_loops, _) = thread_notes(reading);
                    w.cause
                        .hang_snapshot(ctx.dumper.as_mut(), ctx.pid, w.tid, &tid_loops)
                })
                .flatten();
            if let Some(s) = &ctx.stats {
                s.hang(&w.name, cause.as_ref().map(|c| c.kind.as_str()));
            }
            if let Value::Object(m) = &mut fields {
                m.insert("cause".into(), crate::cause::json_or_null(cause.as_ref()));
            }
            let who = match &w.stuck_poll {
                None => format!("loop '{}'", w.name),
                Some(_) => format!("loop '{}' worker thread {}", w.name, w.tid),
            };
            ctx.log.event_json_or(
                "hang_started",
                fields,
                cause.map(|c| format!("HANG cause: {who}: {}", c.line())),
            );
        }
        Action::Dump { index, stall_ns } => return dump_now(ctx, w, index, stall_ns, reading),
        Action::Recovered { hang_ns } => {
            w.recovered_after_ns = Some(hang_ns);
            let text = match &w.stuck_poll {
                None => format!(
                    "recovered: loop '{}' ticks again after hanging {}",
                    w.name,
                    human(hang_ns)
                ),
                Some(poll) => format!(
                    "recovered: loop '{}' worker thread {} polls again after hanging {} (in one poll of {poll})",
                    w.name,
                    w.tid,
                    human(hang_ns)
                ),
            };
            ctx.log.event(
                "recovered",
                json!({"loop": w.name, "tid": w.tid, "scope": scope(w),
                       "hang_ms": hang_ns as f64 / 1e6}),
                text,
            );
        }
        Action::SlowStarted => {
            w.slow_frames = snapshot_loop_thread(ctx, w.tid, &mut w.cause);
        }
        Action::SlowEnded { blocked_ns } => {
            let frames = w
                .slow_frames
                .take()
                .unwrap_or_else(|| "(no frames captured)".into());
            let first = frames.lines().next().unwrap_or_default().to_string();
            let cause = w.cause.slow.take();
            ctx.log.event(
                "slow_tick",
                json!({"loop": w.name, "tid": w.tid, "blocked_ms": blocked_ns as f64 / 1e6, "frames": frames,
                       "cause": crate::cause::json_or_null(cause.as_ref())}),
                format!(
                    "WARNING loop '{}' blocked {:.3} s in {first}{}\n{}",
                    w.name,
                    blocked_ns as f64 / 1e9,
                    cause.map(|c| format!(": {}", c.line())).unwrap_or_default(),
                    frames.lines().skip(1).map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
                ),
            );
        }
        Action::SlowAbandoned => {
            w.slow_frames = None;
            w.cause.slow = None;
        }
    }
    None
}

/// A one-thread snapshot of a loop's thread, as text: the culprit first,
/// then the top frames.
fn snapshot_loop_thread(
    ctx: &mut Ctx<'_>,
    tid: u32,
    cause: &mut crate::cause::LoopCause,
) -> Option<String> {
    ctx.workers.snapshot_taken();
    let d = ctx.dumper.dump_threads(ctx.pid, &[tid as i32]).ok()?;
    cause.slow = cause.for_capture(ctx.pid, tid, &d);
    let t = d.threads.iter().find(|t| t.tid as u32 == tid)?;
    let culprit = render::thread_culprit(t).unwrap_or_else(|| "an unknown frame".into());
    let top: Vec<String> = t
        .frames
        .iter()
        .take(8)
        .enumerate()
        .map(|(n, f)| crate::dump::frame_line(n, f))
        .collect();
    Some(format!("{culprit}\n{}", top.join("\n")))
}

fn dump_now(
    ctx: &mut Ctx<'_>,
    w: &mut Watched,
    index: u32,
    stall_ns: u64,
    reading: &Reading,
) -> Option<u8> {
    let (tid_loops, polls) = thread_notes(reading);
    let polls = &polls;
    ctx.workers.snapshot_taken();
    let taken = w.cause.take_pending();
    // A snapshot taken when the hang was detected is named by its own time.
    let at = match &taken {
        Some(Ok(d)) => chrono::DateTime::<chrono::Local>::from(d.taken_at),
        _ => chrono::Local::now(),
    };
    let dump = match taken.unwrap_or_else(|| ctx.dumper.dump(ctx.pid, Some(&tid_loops))) {
        Ok(d) => d,
        Err(e) if e.kind() == ErrorKind::Gone => return Some(exit::GONE),
        // Another tracer, or not allowed: the same next time; say it once.
        Err(e) if e.kind() == ErrorKind::Permission && ctx.trace_warned => return None,
        Err(e) => {
            ctx.trace_warned |= e.kind() == ErrorKind::Permission;
            ctx.log.event(
                "warning",
                json!({"message": e.to_string()}),
                format!(
                    "WARNING snapshot {} of loop '{}' failed: {e}",
                    index + 1,
                    w.name
                ),
            );
            return None;
        }
    };
    // Once the loop recovered, its thread is doing something else.
    let cause = w
        .recovered_after_ns
        .is_none()
        .then(|| w.cause.for_snapshot(ctx.pid, w.tid, &dump))
        .flatten();
    let cause_line = cause.as_ref().map(|c| c.line());
    let marked =
        workers::marked_threads(&ctx.view, reading, &w.name, w.tid, w.stuck_poll.is_some());
    let header = render::Header {
        exe: &ctx.exe,
        loop_name: &w.name,
        loop_tid: w.tid,
        marked: &marked,
        stuck_poll: w.stuck_poll.as_deref(),
        stall_ns,
        polls,
        recovered_after_ns: w.recovered_after_ns,
        index,
        of: ctx.args.dumps,
        local_time: &at.format("%Y-%m-%d %H:%M:%S%.6f %z").to_string(),
        cause: cause_line.as_deref(),
    };
    let text = render::dump_file(&header, &dump, &w.episode_prev_cpu);
    w.episode_prev_cpu = dump.threads.iter().map(|t| (t.tid, t.cpu_time)).collect();
    let name = files::dump_file_name(&at, index);
    // Once the loop recovered, its thread is doing something else.
    let first = marked.first().copied().unwrap_or(w.tid);
    let culprit = dump
        .threads
        .iter()
        .find(|t| t.tid as u32 == first && w.recovered_after_ns.is_none())
        .and_then(render::thread_culprit);
    match ctx.out.write(&name, text.as_bytes()) {
        Outcome::Written(path, bytes) => {
            ctx.files += 1;
            ctx.summary.files.push(path.clone());
            if ctx.summary.culprit.is_none() {
                ctx.summary.culprit.clone_from(&culprit);
            }
            if let Some(s) = &ctx.stats {
                s.dump(&w.name);
            }
            ctx.log.event(
                "dump_written",
                json!({"loop": w.name, "path": path.display().to_string(), "index": index,
                       "of": ctx.args.dumps, "bytes": bytes, "culprit": culprit,
                       "freeze_ms": dump.timings.freeze.as_secs_f64() * 1e3,
                       "threads": dump.threads.len(),
                       "cause": crate::cause::json_or_null(cause.as_ref())}),
                format!(
                    "wrote {} (snapshot {} of {}, {} threads, froze {:.2} ms){}",
                    path.display(),
                    index + 1,
                    ctx.args.dumps,
                    dump.threads.len(),
                    dump.timings.freeze.as_secs_f64() * 1e3,
                    culprit
                        .map(|c| match w.stuck_poll {
                            None => format!("; loop '{}' blocked in {c}", w.name),
                            Some(_) => {
                                format!(
                                    "; loop '{}' worker thread {} blocked in {c}",
                                    w.name, w.tid
                                )
                            }
                        })
                        .unwrap_or_default()
                ) + &cause_line
                    .map(|c| format!("; cause: {c}"))
                    .unwrap_or_default(),
            );
        }
        Outcome::OverBudget { used, budget } => {
            if !ctx.budget_warned {
                ctx.budget_warned = true;
                ctx.log.event(
                    "warning",
                    json!({"message": "dump budget spent", "used": used, "budget": budget}),
                    format!("WARNING {used} bytes of dumps written (budget {budget}): skipping new dumps, deleting nothing"),
                );
            }
        }
        Outcome::Failed(why) => {
            ctx.log
                .event("warning", json!({"message": why}), format!("WARNING {why}"));
        }
        Outcome::Off => {}
    }
    if index + 1 == ctx.args.dumps {
        ctx.episodes_completed += 1;
    }
    if dump.exited {
        return Some(exit::GONE);
    }
    None
}
