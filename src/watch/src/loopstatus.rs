//! `status PID` for a process with no heartbeat: its event-loop threads
//! found by their wait calls (as `watch` finds them, `watch/syscall_loop.rs`)
//! and sampled for `--sample SECS` (default 1 s): per loop thread,
//! iterations per second and the p50/p99/max busy time (the wait call's
//! return to its next entry) of the iterations seen.
//!
//! Two phases, so that only loop-shaped threads are sampled: every thread's
//! wait calls counted for [`FIND_NS`] (a thread that entered one, or sits in
//! one, is a candidate), then the candidates' `sys_exit_*`/`sys_enter_*`
//! sampled for the rest of `--sample` (counters staying on for the rate).
//! During the sample the threads are looked at again every [`FIND_NS`]: a
//! thread that appeared gets counters, one that became a candidate since
//! (it began iterating late) gets sampled from then on, its rate over its
//! own part of the sample. The target is never stopped; it pays a sampled
//! wait call's cost for that long.

use crate::config::StatusConfig;
use crate::exit;
use crate::status::{human, is_stopped, ms, secs_to_ns};
use crate::watch::syscall_loop::{list_threads, place_now, thread_comm};
use aiodebug_engine::loops::{main_call, Place, MIN_ENTRIES};
use aiodebug_engine::perf::{BusyPairs, RingRecord, WaitCounters, WaitSampler, WaitTracepoints};
use aiodebug_engine::target::monotonic_ns;
use aiodebug_engine::{proc, Error, ErrorKind};
use serde_json::json;
use std::process::ExitCode;
use std::time::Duration;

/// How long every thread is counted to find the candidates.
const FIND_NS: u64 = 200_000_000;
/// The rings are drained this often while sampling.
const DRAIN_NS: u64 = 10_000_000;
/// Threads counted at most (as `watch`: 7 descriptors each).
const MAX_COUNTED: usize = 256;
/// Busy times kept per thread at most (the rest counted, not kept).
const MAX_TIMED: usize = 100_000;

/// One thread counted (and, if a candidate, sampled).
struct Counted {
    tid: i32,
    counters: WaitCounters,
    syscall: Option<std::fs::File>,
    /// Entries when it was first counted, at its last candidacy check, and
    /// when its sample began.
    at_find: u64,
    at_check: u64,
    at_sample: u64,
    /// When its sample began (watcher clock): the end of the first phase,
    /// or when it became a candidate later.
    sample_from: u64,
    sampler: Option<WaitSampler>,
    pairs: BusyPairs,
    busy: Vec<u64>,
    /// Samples the kernel dropped or gaps in them.
    gaps: u64,
}

fn total(c: &WaitCounters) -> Option<u64> {
    c.read()
        .ok()
        .map(|v| v.iter().fold(0u64, |a, &b| a.saturating_add(b)))
}

/// What one loop thread showed, for the report (pure data).
#[derive(Debug, Clone, PartialEq)]
pub struct LoopRow {
    /// Its tid.
    pub tid: i32,
    /// Its `comm`.
    pub name: String,
    /// The wait call it entered most.
    pub call: Option<&'static str>,
    /// Entries into wait calls during the sample.
    pub iterations: u64,
    /// Per second of the sample.
    pub per_s: f64,
    /// Busy times (ns) of the iterations timed, sorted.
    pub busy: Vec<u64>,
    /// Whether its wait calls were sampled (not: it was no candidate after
    /// the first phase, e.g. it began iterating later).
    pub sampled: bool,
    /// Where it is at the end.
    pub waiting: bool,
    /// Out of its wait call without re-entering for this long at the end
    /// (0 when waiting or it just entered).
    pub stall_ns: u64,
}

/// `status PID` on a process with no heartbeat; `no_hb` is the error that
/// said so (printed when no loop thread is found either: exit 3).
pub fn status(args: &StatusConfig, no_hb: &Error) -> ExitCode {
    let pid = args.pid;
    let tps = match WaitTracepoints::find() {
        Ok(t) => t,
        Err(e) => return refused(pid, e),
    };
    let tids = match list_threads(pid) {
        Ok((t, _)) => t,
        Err(e) => return exit::report(&e),
    };
    let mut threads: Vec<Counted> = Vec::new();
    if let Err(e) = count_new(pid, &tps, &tids, &mut threads) {
        return refused(pid, e);
    }
    std::thread::sleep(Duration::from_nanos(FIND_NS));
    if let Err(e) = check_candidates(pid, &tps, &mut threads, true) {
        return refused(pid, e);
    }
    let started = monotonic_ns();
    let end = started.saturating_add(secs_to_ns(args.sample));
    let mut last_check = started;
    loop {
        for t in &mut threads {
            drain(t);
        }
        let now = monotonic_ns();
        if now >= end {
            break;
        }
        if now.saturating_sub(last_check) >= FIND_NS {
            last_check = now;
            // Threads that appeared (a new loop thread, a pool growing)
            // are counted; those that became candidates since, sampled.
            // Gone threads stay: their counters read what they counted.
            let check = match list_threads(pid) {
                Ok((tids, _)) => count_new(pid, &tps, &tids, &mut threads),
                Err(e) if e.kind() == ErrorKind::Gone => Ok(()),
                Err(e) => Err(e),
            }
            .and_then(|()| check_candidates(pid, &tps, &mut threads, false));
            if let Err(e) = check {
                return refused(pid, e);
            }
        }
        std::thread::sleep(Duration::from_nanos(DRAIN_NS.min(end - now)));
    }
    let ended = monotonic_ns();
    for t in &mut threads {
        if let Some(s) = t.sampler.as_mut() {
            let _ = s.enable(false);
        }
        drain(t);
    }
    let secs = ended.saturating_sub(started) as f64 / 1e9;
    let stat = proc::read_stat(pid).ok();
    let state = stat.as_ref().map(|s| s.state).unwrap_or('?');
    let comm = stat.map(|s| s.comm).unwrap_or_default();
    let rows: Vec<LoopRow> = threads
        .iter_mut()
        .filter_map(|t| row(pid, t, ended))
        .collect();
    if rows.is_empty() {
        crate::errln!(
            "aiodebug-watch: {no_hb}; and no thread of PID {pid} entered a wait call \
             (epoll_wait, poll, select, ...) {MIN_ENTRIES} times in {:.2} s: no event loop to show",
            FIND_NS as f64 / 1e9 + secs
        );
        return ExitCode::from(exit::NO_HEARTBEAT);
    }
    let threshold = secs_to_ns(args.threshold);
    let stalled = |r: &LoopRow| !is_stopped(state) && r.stall_ns > threshold;
    let gaps: u64 = threads.iter().map(|t| t.gaps).sum();
    if args.json {
        for r in &rows {
            let p = |q| aiodebug_engine::heartbeat::percentile(&r.busy, q).map(ms);
            crate::outln!(
                "{}",
                json!({"event": "loop", "source": "syscalls", "pid": pid,
                       "process_state": state.to_string(), "loop": r.name, "tid": r.tid,
                       "call": r.call, "iterations": r.iterations,
                       "iterations_per_s": (r.per_s * 10.0).round() / 10.0,
                       "timed": r.busy.len(), "sampled": r.sampled, "p50_ms": p(50), "p99_ms": p(99),
                       "max_ms": r.busy.last().copied().map(ms), "waiting": r.waiting,
                       "stall_ms": ms(r.stall_ns), "stalled": stalled(r)})
            );
        }
        crate::outln!(
            "{}",
            json!({"event": "process", "pid": pid, "comm": comm, "source": "syscalls",
                   "process_state": state.to_string(), "stopped": is_stopped(state),
                   "sample_s": (secs * 1000.0).round() / 1000.0, "loops": rows.len(),
                   "stalled_loops": rows.iter().filter(|r| stalled(r)).count(),
                   "sample_gaps": gaps})
        );
    } else {
        crate::outln!(
            "PID {pid} ({comm}) state {state} ({}): no heartbeat; loop threads by their wait calls, sampled {secs:.2} s",
            proc::state_name(state)
        );
        crate::outln!(
            "{:<20} {:>8} {:<12} {:>9} {:>7} {:>9} {:>9} {:>9} {:>9}",
            "LOOP THREAD",
            "TID",
            "CALL",
            "ITER/S",
            "TIMED",
            "P50",
            "P99",
            "MAX",
            "NOW"
        );
        for r in &rows {
            let p = |q| {
                aiodebug_engine::heartbeat::percentile(&r.busy, q)
                    .map(human)
                    .unwrap_or_else(|| "-".into())
            };
            let now = if r.waiting {
                "waiting".to_string()
            } else if r.stall_ns > 0 {
                format!("out {}", human(r.stall_ns))
            } else {
                "running".to_string()
            };
            crate::outln!(
                "{:<20} {:>8} {:<12} {:>9.1} {:>7} {:>9} {:>9} {:>9} {:>9}{}",
                r.name,
                r.tid,
                r.call.unwrap_or("-"),
                r.per_s,
                r.busy.len(),
                p(50),
                p(99),
                r.busy
                    .last()
                    .copied()
                    .map(human)
                    .unwrap_or_else(|| "-".into()),
                now,
                if stalled(r) { "  STALLED" } else { "" }
            );
        }
        if gaps > 0 {
            crate::outln!(
                "note: {gaps} gaps in the samples (the ring filled up): some iterations were not timed"
            );
        }
    }
    if rows.iter().any(stalled) {
        ExitCode::from(exit::STALLED)
    } else {
        ExitCode::from(exit::OK)
    }
}

/// The kernel refused (or something else failed): the error and its code,
/// naming `perf_event_paranoid` when it is a permission (exit 4).
fn refused(pid: i32, e: Error) -> ExitCode {
    let e = match e {
        Error::PermissionDenied { hint, .. } => Error::PermissionDenied { pid, hint },
        e => e,
    };
    crate::errln!(
        "aiodebug-watch: PID {pid} has no heartbeat and its wait calls cannot be sampled: {e}"
    );
    ExitCode::from(exit::code_for(&e))
}

/// Opens counters on the threads of `tids` not counted yet (at most
/// [`MAX_COUNTED`] in all); a thread gone meanwhile is skipped.
fn count_new(
    pid: i32,
    tps: &WaitTracepoints,
    tids: &[i32],
    threads: &mut Vec<Counted>,
) -> Result<(), Error> {
    for &tid in tids {
        if threads.len() >= MAX_COUNTED || threads.iter().any(|t| t.tid == tid) {
            continue;
        }
        match WaitCounters::open(pid, tid, tps) {
            Ok(counters) => {
                let n = total(&counters).unwrap_or(0);
                threads.push(Counted {
                    tid,
                    at_find: n,
                    at_check: n,
                    at_sample: n,
                    sample_from: monotonic_ns(),
                    counters,
                    syscall: std::fs::File::open(format!("/proc/{pid}/task/{tid}/syscall")).ok(),
                    sampler: None,
                    pairs: BusyPairs::default(),
                    busy: Vec::new(),
                    gaps: 0,
                })
            }
            Err(e) if e.kind() == ErrorKind::Gone => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Samples the threads that became candidates since their last check
/// (entered a wait call, or sit in one), from now on. `first`: the end of
/// the first phase, which starts every thread's sample (candidate or not:
/// the rate of a thread that is none still counts from there).
fn check_candidates(
    pid: i32,
    tps: &WaitTracepoints,
    threads: &mut [Counted],
    first: bool,
) -> Result<(), Error> {
    for t in threads.iter_mut().filter(|t| t.sampler.is_none()) {
        let Some(n) = total(&t.counters) else {
            continue;
        };
        let moved = n != t.at_check;
        t.at_check = n;
        let waiting = place_now(t.syscall.as_ref(), Place::Elsewhere) == Place::Wait;
        if first || moved || waiting {
            t.at_sample = n;
            t.sample_from = monotonic_ns();
        }
        if !moved && !waiting {
            continue;
        }
        let used: Vec<&str> = t
            .counters
            .read()
            .unwrap_or_default()
            .iter()
            .zip(t.counters.calls())
            .filter(|(&n, _)| n > 0)
            .map(|(_, c)| *c)
            .collect();
        let calls = if used.is_empty() {
            aiodebug_engine::perf::WAIT_CALLS
        } else {
            &used[..]
        };
        match WaitSampler::open(pid, t.tid, tps, calls) {
            Ok(mut s) => {
                if s.enable(true).is_ok() {
                    t.sampler = Some(s);
                }
            }
            Err(e) if e.kind() == ErrorKind::Gone => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn drain(t: &mut Counted) {
    let Some(s) = t.sampler.as_mut() else { return };
    for rec in s.drain() {
        match rec {
            RingRecord::Sample { id, time_ns, .. } => match s.edge_of(id) {
                Some(edge) => {
                    if let Some(b) = t.pairs.edge(edge, time_ns) {
                        if t.busy.len() < MAX_TIMED {
                            t.busy.push(b);
                        }
                    }
                }
                None => t.pairs.gap(),
            },
            RingRecord::Lost(_) | RingRecord::Other => {
                t.gaps += 1;
                t.pairs.gap();
            }
        }
    }
}

/// The row of a loop thread (one that entered wait calls [`MIN_ENTRIES`]
/// times since it was first counted), `None` for any other; its rate over
/// its own part of the sample.
fn row(pid: i32, t: &mut Counted, now: u64) -> Option<LoopRow> {
    let secs = now.saturating_sub(t.sample_from) as f64 / 1e9;
    let counts = t.counters.read().ok()?;
    let n = counts.iter().fold(0u64, |a, &b| a.saturating_add(b));
    if n.saturating_sub(t.at_find) < MIN_ENTRIES {
        return None;
    }
    let named: Vec<(&'static str, u64)> = t.counters.calls().iter().copied().zip(counts).collect();
    let waiting = place_now(t.syscall.as_ref(), Place::Elsewhere) == Place::Wait;
    let iterations = n.saturating_sub(t.at_sample);
    let stall_ns = match (waiting, t.pairs.pending_since()) {
        (true, _) => 0,
        (false, Some(since)) => now.saturating_sub(since),
        // Never returned during the sample and not waiting: out all along.
        (false, None) if iterations == 0 => (secs * 1e9) as u64,
        (false, None) => 0,
    };
    t.busy.sort_unstable();
    Some(LoopRow {
        tid: t.tid,
        name: thread_comm(pid, t.tid),
        call: main_call(&named).map(|(c, _)| c),
        iterations,
        per_s: if secs > 0.0 {
            iterations as f64 / secs
        } else {
            0.0
        },
        busy: std::mem::take(&mut t.busy),
        sampled: t.sampler.is_some(),
        waiting,
        stall_ns,
    })
}
