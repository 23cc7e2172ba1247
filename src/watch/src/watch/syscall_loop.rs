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
//! The watcher looks every `--interval / 10` (2–50 ms): one `read(2)` of the
//! counter group per thread, plus one `pread(2)` of
//! `/proc/PID/task/TID/syscall` for a thread whose count did not move. The
//! target is never stopped except for the episode's snapshots.

use super::episode::Observation;
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
use aiodebug_engine::loops::{self, Look, Peer, Place, ThreadTrack, NATIVE};
use aiodebug_engine::perf::{WaitCounters, WaitTracepoints, WAIT_CALLS};
use aiodebug_engine::target::{monotonic_ns, Reading};
use aiodebug_engine::{proc, Error, ErrorKind};

use std::collections::{BTreeMap, HashMap};
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
    /// Busy times (ns) of its recent long iterations (see [`Thread::out`]).
    busy: Vec<u64>,
    /// A look saw it out of its wait call without having entered it since
    /// the previous look: the current iteration is longer than one look.
    /// Only such iterations get a busy time: counts say "it entered N times
    /// between two looks", not when, so shorter ones are not timed (see the
    /// README on sampling). Their busy time is at most the time since the
    /// last look that saw it enter or wait, at least the stall seen.
    out: bool,
}

/// The thread's name (`comm`), or `thread TID`.
fn thread_comm(pid: i32, tid: i32) -> String {
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
fn list_threads(pid: i32) -> Result<(Vec<i32>, bool), Error> {
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
fn place_now(file: Option<&std::fs::File>, prev: Place) -> Place {
    let Some(f) = file else { return prev };
    let mut buf = [0u8; 256];
    match f.read_at(&mut buf, 0) {
        Ok(n) => place_in_line(&buf[..n], prev),
        Err(_) => prev,
    }
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
    // Look ten times per interval: a stall is seen at most a tenth late.
    let look_ns = (cfg.interval_ns / 10).clamp(2_000_000, 50_000_000);
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
    loop {
        if stop.load(Ordering::Relaxed) {
            ctx.log.emit(&Event::Stopped);
            return finish(ctx, &mut threads, exit::OK);
        }
        let state = match proc::read_stat(pid) {
            Ok(s) => s.state,
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
        let mut reads: Vec<Option<(u64, Option<Place>)>> = Vec::with_capacity(threads.len());
        for t in threads.values_mut() {
            let Ok(counts) = t.counters.read() else {
                reads.push(None);
                continue;
            };
            let entries = counts.iter().fold(0u64, |a, &b| a.saturating_add(b));
            t.counts = counts;
            let place = if t.track.needs_wait_check(entries) {
                let p = place_now(t.syscall_file.as_ref(), t.last_place);
                t.last_place = p;
                Some(p)
            } else {
                // It entered since: it sits in the call or just left it.
                t.last_place = Place::Wait;
                None
            };
            reads.push(Some((entries, place)));
        }
        // One peer per thread, in the same order (unread threads say
        // nothing: neither ticked nor anywhere).
        let peers: Vec<Peer> = threads
            .values()
            .zip(&reads)
            .map(|(t, r)| match r {
                Some((entries, place)) => Peer {
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
            let Some((entries, place)) = r else {
                continue;
            };
            let futex = place == Some(Place::Futex);
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
                t.watched = Some(Watched::new(name, tid as u32, cfg, now));
            }
            let Some(w) = t.watched.as_mut() else {
                continue;
            };
            if v.stall_ns > 0 {
                t.out = true;
            }
            if v.iteration_ended() && t.out {
                t.out = false;
                // Bounded: past the window, the summary's iterations are
                // the first ones since the last summary.
                if t.busy.len() < BUSY_WINDOW {
                    t.busy.push(v.iteration_ns);
                }
                if let Some(s) = &ctx.stats {
                    // Each lasted more than one look: at most one a look
                    // per loop thread, so every one is sent (`|@1`).
                    s.busy(&w.name, v.iteration_ns, 1);
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
            w.cause.observe(pid, w.tid, obs.stall_ns);
            for action in w.tracker.observe(obs) {
                if let Some(code) = act(ctx, w, action, &reading) {
                    return finish(ctx, &mut threads, code);
                }
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
            },
        );
    }
    None
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
            long_iterations: v.len(),
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
    fn percentiles_of_busy_times() {
        let mut v = vec![5, 1, 3, 2, 4];
        let (p50, _, max) = busy_percentiles(&mut v);
        assert_eq!(p50, Some(3));
        assert_eq!(max, Some(5));
        assert_eq!(busy_percentiles(&mut []), (None, None, None));
    }
}
