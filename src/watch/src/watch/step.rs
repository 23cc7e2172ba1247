//! One step of a watch: a read of the target, the observations of every
//! loop and stuck worker fed to their episode trackers, the actions they
//! ask for performed, and the time until the next read.

use super::act::{act, cause_thread};
use super::episode::{Config, Observation};
use super::event::Event;
use super::setup::episode_config;
use super::statsd::Stats;
use super::{key, workers, Ctx, LoopKey, LoopState, Step, Watched, MIN_SLEEP_NS, SUMMARY_EVERY_NS};
use crate::exit;
use crate::status::{human, secs_to_ns};
use aiodebug_engine::heartbeat::percentile;
use aiodebug_engine::target::{monotonic_ns, Reading, Target};
use aiodebug_engine::{proc, ErrorKind};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Steps a watch until it ends; returns its exit code.
pub(super) fn watch_loop(ctx: &mut Ctx<'_>, target: &Target, stop: &AtomicBool) -> u8 {
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
pub(super) fn watch_start(ctx: &mut Ctx<'_>) -> LoopState {
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
    ctx.workers.look_from_ns = st.cfg.baseline_ns();
    ctx.log.emit(&Event::Started(ctx.start()));
    st
}

/// One read of the target and what follows from it: how long until the
/// next read, or the exit code. `watch PID` sleeps between steps, the fleet
/// interleaves the steps of every process on one thread (see [`super::fleet`]).
pub(super) fn watch_step(
    ctx: &mut Ctx<'_>,
    target: &Target,
    st: &mut LoopState,
    stop: &AtomicBool,
) -> Step {
    let (cfg, end) = (st.cfg, st.end);
    let mut loops = std::mem::take(&mut st.loops);
    let mut workers = std::mem::take(&mut st.workers);
    let (mut was_stopped, mut last_summary) = (st.was_stopped, st.last_summary);
    {
        if stop.load(Ordering::Relaxed) {
            ctx.log.emit(&Event::Stopped);
            return Step::Done(finish(ctx, &mut loops, exit::OK));
        }
        let reading = match target.read() {
            Ok(r) => r,
            Err(e) => return Step::Done(gone_or_error(ctx, &e)),
        };
        // Every loop on time, or late by less than what takes the cause's
        // baseline (a healthy loop read just after its due time): the
        // process runs (neither stopped nor a zombie), no need to read its
        // state. A stall that can cross a threshold reads it first.
        let on_time = reading.loops().next().is_some()
            && reading
                .loops()
                .all(|l| l.stall_ns(reading.now_ns) < cfg.baseline_ns());
        if reading
            .loops()
            .any(|l| l.stall_ns(reading.now_ns) >= cfg.baseline_ns())
        {
            // A stall that may become a hang: the next read is a full one,
            // with every board entry for what the hang's report says.
            target.read_fully_next();
        }
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
            ctx.log.emit(&Event::ProcessState {
                pid: ctx.pid,
                state,
                stopped,
                hang_waits: loops.values().any(|w| w.tracker.is_hung()),
            });
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
                    ctx.log.emit(&Event::LoopFound {
                        name: &lp.name,
                        tid: lp.tid,
                        period_ns: lp.period_ns,
                    });
                    Watched {
                        last_ticks: lp.ticks,
                        tick_rate_ns: lp.period_ns.max(1_000_000),
                        ..Watched::new(lp.name.clone(), lp.tid, cfg, now)
                    }
                });
                w.tid = lp.tid;
                let base = region.addr.wrapping_add(reg.offset as u64);
                let stall_ns = workers::loop_stall(&ctx.view, base, lp, reading.now_ns);
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
                    stall_ns,
                    ticked: advanced > 0,
                    new_max_lag_ns: new_max,
                    stopped: stopped || covered,
                };
                // The cause is of the thread the episode marks first: a
                // multi-thread runtime's loop is held up by a worker that
                // need not be the one that last ran its monitor (`w.tid`).
                let cause_tid = if stall_ns > 0 {
                    cause_thread(ctx, &reading, w)
                } else {
                    w.tid
                };
                if let Some(ns) = w.cause.observe(ctx.pid, cause_tid, obs.stall_ns, &cfg) {
                    deadline = deadline.min(now.saturating_add(ns));
                }
                for action in w.tracker.observe(obs) {
                    if let Some(code) = act(ctx, w, action, &reading) {
                        return Step::Done(finish(ctx, &mut loops, code));
                    }
                }
                if let Some(s) = &ctx.stats {
                    let periodic = now.saturating_sub(w.last_gauge_ns) >= 1_000_000_000
                        && !worker_hung.contains(&w.name);
                    if w.tracker.is_hung() || periodic {
                        s.stall(&w.name, stall_ns);
                        w.last_gauge_ns = now;
                    }
                }
                // A loop not due yet cannot cross a threshold before it is
                // due: the tracker counts from now, the stall from its due
                // time (up to a period later; one read in twenty fewer at a
                // 20 ms period and a 0.25 s interval).
                let not_due_for = if stall_ns == 0 && !w.tracker.in_episode() {
                    lp.next_due_ns
                        .unwrap_or_else(|| lp.last_tick_ns.saturating_add(lp.period_ns))
                        .saturating_sub(reading.now_ns)
                } else {
                    0
                };
                if let Some(d) = w.tracker.next_deadline(&obs) {
                    deadline = deadline.min(d.saturating_add(not_due_for));
                }
                // Read again before the lag ring (64 ticks) can wrap.
                deadline = deadline.min(now.saturating_add(w.tick_rate_ns.saturating_mul(32)));
            }
        }
        loops.retain(|k, w| {
            let keep = seen.contains(k);
            if !keep {
                ctx.log.emit(&Event::LoopGone { name: &w.name });
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
            stuck_poll: Some(p.what.clone()),
            poll_since_ns: p.since_ns,
            ..Watched::new(p.owner.clone(), p.tid, cfg, now)
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
        let sample_in = w.cause.observe(ctx.pid, w.tid, obs.stall_ns, &cfg);
        for action in w.tracker.observe(obs) {
            if let Some(code) = act(ctx, w, action, reading) {
                return Err(code);
            }
        }
        let sample_at = sample_in.map(|ns| now.saturating_add(ns));
        for d in w.tracker.next_deadline(&obs).into_iter().chain(sample_at) {
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
        // Its poll ended: the stall is over (closes its system-call counter).
        w.cause.observe(ctx.pid, w.tid, 0, &cfg);
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

/// The terminal's status line: every loop's stall, lag and p99.
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

/// One `lag_summary` per loop: its lags since the previous one.
fn summarize(ctx: &Ctx<'_>, loops: &mut HashMap<LoopKey, Watched>) {
    for w in loops.values_mut() {
        let mut lags = std::mem::take(&mut w.window);
        lags.sort_unstable();
        let (p50, p99, max) = (
            percentile(&lags, 50),
            percentile(&lags, 99),
            lags.last().copied(),
        );
        ctx.log.emit(&Event::LagSummary {
            name: &w.name,
            ticks: lags.len(),
            lost: w.lost,
            p50,
            p99,
            max,
        });
        w.lost = 0;
    }
}

/// Ends a watch: the last summaries and `finished`; returns `code`.
pub(super) fn finish(ctx: &mut Ctx<'_>, loops: &mut HashMap<LoopKey, Watched>, code: u8) -> u8 {
    summarize(ctx, loops);
    ctx.log.emit(&Event::Finished {
        hangs: ctx.hangs,
        files: ctx.files,
        bytes: ctx.out.used(),
        exit_code: code,
        statsd_errors: ctx.stats.as_ref().map(Stats::errors),
    });
    code
}

/// The target exited or cannot be read: says so; returns the exit code.
pub(super) fn gone_or_error(ctx: &mut Ctx<'_>, e: &aiodebug_engine::Error) -> u8 {
    let code = exit::code_for(e);
    let event = Event::TargetGone {
        pid: ctx.pid,
        message: e.to_string(),
        exited: e.kind() == ErrorKind::Gone,
    };
    ctx.log.emit(&event);
    if !ctx.args.json && !ctx.args.all {
        crate::errln!("aiodebug-watch: {event}");
    }
    code
}
