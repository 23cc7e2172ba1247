//! What the episodes ask for: the events of a hang, its snapshots and
//! their files, slow-tick captures.

use super::episode::Action;
use super::event::{Event, Hang, Subject, Warning};
use super::files::Outcome;
use super::{files, render, workers, Ctx, Watched};
use crate::exit;
use aiodebug_engine::target::Reading;
use aiodebug_engine::ErrorKind;
use std::collections::HashMap;

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

/// What the episode events of `w` are about.
fn subject(w: &Watched) -> Subject<'_> {
    Subject {
        name: &w.name,
        tid: w.tid,
        stuck_poll: w.stuck_poll.as_deref(),
    }
}

/// The thread a loop's cause is computed on: the first the episode marks
/// (the worker holding a multi-thread runtime's loop up, which need not be
/// the one that last ran its monitor), else the loop's own.
pub(super) fn cause_thread(ctx: &Ctx<'_>, reading: &Reading, w: &Watched) -> u32 {
    first_marked(
        &workers::marked_threads(&ctx.view, reading, &w.name, w.tid, w.stuck_poll.is_some()),
        w,
    )
}

/// The first of `marked`, else the loop's own thread.
fn first_marked(marked: &[u32], w: &Watched) -> u32 {
    marked.first().copied().unwrap_or(w.tid)
}

/// Performs one action; `Some(code)` ends the watch.
pub(super) fn act(
    ctx: &mut Ctx<'_>,
    w: &mut Watched,
    action: Action,
    reading: &Reading,
) -> Option<u8> {
    match action {
        Action::HangStarted { stall_ns } => {
            ctx.hangs += 1;
            w.recovered_after_ns = None;
            w.episode_prev_cpu.clear();
            let blocking =
                workers::marked_threads(&ctx.view, reading, &w.name, w.tid, w.stuck_poll.is_some());
            // Said at decision time, with what is known then: the first
            // snapshot and its symbolization take 10-80 ms (more on a cold
            // cache), which a pager waiting for the HANG line should not wait.
            ctx.log.emit(&Event::HangDetected(Hang {
                who: subject(w),
                stall_ns,
                interval: ctx.args.interval,
                blocking: &blocking,
            }));
            // The episode's first snapshot, taken now: `hang_started` and the
            // counter carry its cause (the file is written by Dump 0, whose
            // `dump_written` names the culprit).
            let cause = (ctx.args.dumps > 0)
                .then(|| {
                    let (tid_loops, _) = thread_notes(reading);
                    let tid = first_marked(&blocking, w);
                    w.cause
                        .hang_snapshot(ctx.dumper.as_mut(), ctx.pid, tid, &tid_loops)
                })
                .flatten();
            if let Some(error) = w.cause.take_note() {
                ctx.log.emit(&Event::Warning(Warning::NoSyscallCount {
                    tid: w.tid,
                    error,
                }));
            }
            if let Some(s) = &ctx.stats {
                s.hang(&w.name, cause.as_ref().map(|c| c.kind.as_str()));
            }
            let hang = Hang {
                who: subject(w),
                stall_ns,
                interval: ctx.args.interval,
                blocking: &blocking,
            };
            ctx.log.emit(&Event::HangStarted(hang, cause.as_ref()));
        }
        Action::Dump { index, stall_ns } => return dump_now(ctx, w, index, stall_ns, reading),
        Action::Recovered { hang_ns } => {
            w.recovered_after_ns = Some(hang_ns);
            ctx.log.emit(&Event::Recovered {
                who: subject(w),
                hang_ns,
            });
        }
        Action::SlowStarted => {
            w.slow_frames = snapshot_loop_thread(ctx, w.tid, &mut w.cause);
        }
        Action::SlowEnded { blocked_ns } => {
            let frames = w
                .slow_frames
                .take()
                .unwrap_or_else(|| "(no frames captured)".into());
            let cause = w.cause.slow.take();
            ctx.log.emit(&Event::SlowTick {
                name: &w.name,
                tid: w.tid,
                blocked_ns,
                frames: &frames,
                cause: cause.as_ref(),
            });
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

/// Takes (or uses the pending) snapshot `index` of an episode and writes
/// its file; `Some(code)` ends the watch.
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
            ctx.log.emit(&Event::Warning(Warning::SnapshotFailed {
                index,
                loop_name: &w.name,
                error: e.to_string(),
            }));
            return None;
        }
    };
    let marked =
        workers::marked_threads(&ctx.view, reading, &w.name, w.tid, w.stuck_poll.is_some());
    // Once the loop recovered, its thread is doing something else.
    let cause = w
        .recovered_after_ns
        .is_none()
        .then(|| {
            w.cause
                .for_snapshot(ctx.pid, first_marked(&marked, w), &dump)
        })
        .flatten();
    if index + 1 >= ctx.args.dumps {
        // The episode's last snapshot: its system calls are counted no
        // longer (the tracepoint costs every thread of the host).
        w.cause.stop_counting();
    }
    let cause_line = cause.as_ref().map(|c| c.line());
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
    let first = first_marked(&marked, w);
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
            if ctx.args.save_minidumps {
                save_minidump(ctx, &path, &dump, w.tid, cause.as_ref());
            }
            ctx.log.emit(&Event::DumpWritten {
                who: subject(w),
                path: &path,
                index,
                of: ctx.args.dumps,
                bytes,
                culprit: culprit.as_deref(),
                freeze_ms: dump.timings.freeze.as_secs_f64() * 1e3,
                threads: dump.threads.len(),
                cause: cause.as_ref(),
            });
        }
        Outcome::OverBudget { used, budget } => warn_budget(ctx, used, budget),
        Outcome::Failed(why) => {
            ctx.log.emit(&Event::Warning(Warning::FileFailed(why)));
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

/// Says once that the dump budget is spent.
fn warn_budget(ctx: &mut Ctx<'_>, used: u64, budget: u64) {
    if !ctx.budget_warned {
        ctx.budget_warned = true;
        ctx.log
            .emit(&Event::Warning(Warning::BudgetSpent { used, budget }));
    }
}

/// Writes the minidump of `dump` beside its text file `text` (same stem,
/// `.dmp`), within the same byte budget; a failure is a warning.
fn save_minidump(
    ctx: &mut Ctx<'_>,
    text: &std::path::Path,
    dump: &aiodebug_engine::dump::Dump,
    tid: u32,
    cause: Option<&crate::cause::Cause>,
) {
    let causes: HashMap<i32, crate::cause::Cause> =
        cause.map(|c| (tid as i32, c.clone())).into_iter().collect();
    let Some(bytes) = crate::symbolize::minidump_of(dump, &crate::dump::cause_views(&causes, true))
    else {
        return;
    };
    let Some(name) = text
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| format!("{}.dmp", n.strip_suffix(".txt").unwrap_or(n)))
    else {
        return;
    };
    match ctx.out.write(&name, &bytes) {
        Outcome::Written(path, bytes) => {
            ctx.log.emit(&Event::MinidumpWritten { path: &path, bytes })
        }
        Outcome::Failed(why) => ctx.log.emit(&Event::Warning(Warning::FileFailed(why))),
        Outcome::OverBudget { used, budget } => warn_budget(ctx, used, budget),
        Outcome::Off => {}
    }
}
