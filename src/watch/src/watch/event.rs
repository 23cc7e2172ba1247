//! The events of a watch, each built once as a typed value and rendered from
//! that one value either as a text line ([`fmt::Display`]) or as a JSON
//! object ([`Event::fields`]): one formatter per concept, so the two forms
//! cannot drift apart. [`super::Log::emit`] adds what every event carries
//! (time, `event`, and the process under `--all`).
//!
//! The JSON field names are the schema README.md documents ("watch --json
//! events"); the tests parse them.

use std::fmt;
use std::path::Path;

use serde_json::{json, Value};

use crate::cause::{json_or_null, Cause};
use crate::status::human;

/// Nanoseconds as JSON milliseconds.
fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// An optional duration as text: `-` when there is none.
fn human_or_dash(ns: Option<u64>) -> String {
    ns.map(human).unwrap_or_else(|| "-".into())
}

/// The loop (or worker thread) an episode event is about.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The loop's name.
    pub name: &'a str,
    /// Its thread (for a worker: the stuck worker thread).
    pub tid: u32,
    /// For a worker: the poll it is stuck in; `None` for the loop itself.
    pub stuck_poll: Option<&'a str>,
}

impl Subject<'_> {
    /// The `scope` of an episode's events: `"loop"` (the loop is overdue) or
    /// `"worker"` (one worker thread of its runtime is stuck in one poll
    /// while the loop keeps ticking).
    pub fn scope(&self) -> &'static str {
        if self.stuck_poll.is_some() {
            "worker"
        } else {
            "loop"
        }
    }
}

/// Something went wrong that the watch carries on past.
#[derive(Debug, Clone)]
pub enum Warning<'a> {
    /// A loop thread's wait calls cannot be sampled (busy times of its
    /// short iterations are not measured; the counters go on).
    NoSampling {
        /// The thread.
        tid: i32,
        /// Why.
        error: String,
    },
    /// A stalled thread's system calls cannot be counted (the cause lacks
    /// `syscalls`; said once per watcher).
    NoSyscallCount {
        /// The thread.
        tid: u32,
        /// Why.
        error: String,
    },
    /// `--statsd` could not be set up.
    NoStatsd(String),
    /// The target's symbols could not be loaded ahead of the first hang.
    NoPreload {
        /// The target.
        pid: i32,
        /// Why.
        error: String,
    },
    /// One snapshot of an episode failed.
    SnapshotFailed {
        /// Its index in the episode (from 0).
        index: u32,
        /// The loop of the episode.
        loop_name: &'a str,
        /// Why.
        error: String,
    },
    /// `--max-dump-bytes` is reached.
    BudgetSpent {
        /// Bytes written.
        used: u64,
        /// The budget.
        budget: u64,
    },
    /// A dump file could not be written.
    FileFailed(String),
    /// `--all`: the cap on watched processes is reached.
    TooManyProcesses {
        /// The cap.
        max: usize,
    },
    /// `--all`: the thread that runs every watch is gone.
    WatchThreadEnded {
        /// The process that could not be watched.
        pid: i32,
    },
    /// A process watched by its wait calls has more threads than are counted.
    TooManyThreads {
        /// The target.
        pid: i32,
        /// Threads counted.
        max: usize,
    },
}

/// A hang episode as it is detected: the loop, how long it is overdue, the
/// threads that hold it.
#[derive(Debug, Clone, Copy)]
pub struct Hang<'a> {
    /// The loop or worker.
    pub who: Subject<'a>,
    /// How long it is overdue.
    pub stall_ns: u64,
    /// `--interval`, in seconds.
    pub interval: f64,
    /// The threads marked as blocking the loop.
    pub blocking: &'a [u32],
}

/// What the start of `watch PID` says, in either mode.
#[derive(Debug, Clone, Copy)]
pub struct Start<'a> {
    /// The target.
    pub pid: i32,
    /// Its executable.
    pub exe: &'a str,
    /// `--interval`.
    pub interval: f64,
    /// `--dumps`.
    pub dumps: u32,
    /// `--dump-gap`.
    pub dump_gap: f64,
    /// Where the files go.
    pub output_dir: &'a Path,
}

impl Start<'_> {
    fn fields(&self) -> Value {
        json!({"pid": self.pid, "executable": self.exe, "interval_s": self.interval,
               "output_dir": self.output_dir.display().to_string()})
    }
}

/// One event of a watch.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// `watch PID` began.
    Started(Start<'a>),
    /// `watch PID` of a process without heartbeat began: its loops are
    /// watched by their wait system calls.
    StartedSyscalls {
        /// What every start says.
        start: Start<'a>,
        /// Why this mode.
        why: &'a str,
        /// The wait calls counted.
        calls: &'a [&'a str],
        /// `--loop-thread`s.
        loop_threads: &'a [i32],
    },
    /// `watch --all` began.
    StartedFleet {
        /// `--match`.
        match_comm: Option<&'a str>,
        /// `--interval`.
        interval: f64,
        /// `--dumps`.
        dumps: u32,
        /// The root of the files.
        output_dir: &'a Path,
    },
    /// A signal stops the watch.
    Stopped,
    /// The target was stopped (job control, a debugger) or runs again.
    ProcessState {
        /// The target.
        pid: i32,
        /// Its state letter.
        state: char,
        /// Whether it is stopped now.
        stopped: bool,
        /// Whether a hang's snapshots wait for it to run again.
        hang_waits: bool,
    },
    /// A loop registered (or was found by its wait calls: see
    /// [`Event::LoopFoundSyscalls`]).
    LoopFound {
        /// The loop's name.
        name: &'a str,
        /// Its thread.
        tid: u32,
        /// Its tick period.
        period_ns: u64,
    },
    /// A loop thread found by its wait calls.
    LoopFoundSyscalls {
        /// The loop's name.
        name: &'a str,
        /// Its thread.
        tid: i32,
        /// Why it is taken for a loop.
        why: &'a str,
        /// Its main wait call.
        call: Option<&'a str>,
        /// Wait calls counted so far.
        entries: u64,
        /// Named by `--loop-thread`.
        forced: bool,
    },
    /// A loop unregistered.
    LoopGone {
        /// The loop's name.
        name: &'a str,
    },
    /// A loop thread watched by its wait calls exited.
    LoopThreadExited {
        /// The loop's name.
        name: &'a str,
        /// Its thread.
        tid: i32,
    },
    /// A loop thread sleeps in a futex while another carries on: a pool
    /// thread, not a hang.
    LoopParked {
        /// The loop's name.
        name: &'a str,
        /// Its thread.
        tid: i32,
    },
    /// A hang, said at decision time (before the first snapshot).
    HangDetected(Hang<'a>),
    /// A hang with the cause its first snapshot found (no text line when
    /// there is none).
    HangStarted(Hang<'a>, Option<&'a Cause>),
    /// A hung loop ticks again.
    Recovered {
        /// The loop or worker.
        who: Subject<'a>,
        /// How long it hung.
        hang_ns: u64,
    },
    /// An iteration slower than `--slow` that a sampling window timed and
    /// no look caught while it lasted (so no frame): a `slow_tick` with
    /// `"source": "sampled"`.
    SampledSlow {
        /// The loop's name.
        name: &'a str,
        /// Its thread.
        tid: i32,
        /// How long the iteration was busy.
        blocked_ns: u64,
    },
    /// A tick slower than `--slow`, with where it was blocked.
    SlowTick {
        /// The loop's name.
        name: &'a str,
        /// Its thread.
        tid: u32,
        /// How long the tick was blocked.
        blocked_ns: u64,
        /// The culprit line, then the top frames.
        frames: &'a str,
        /// Why, when known.
        cause: Option<&'a Cause>,
    },
    /// A snapshot file of an episode was written.
    DumpWritten {
        /// The loop or worker.
        who: Subject<'a>,
        /// The file.
        path: &'a Path,
        /// Its index in the episode (from 0).
        index: u32,
        /// Snapshots per episode.
        of: u32,
        /// Its size.
        bytes: u64,
        /// The frame that blocked the loop.
        culprit: Option<&'a str>,
        /// How long the target was stopped.
        freeze_ms: f64,
        /// Threads in the snapshot.
        threads: usize,
        /// Why, when known.
        cause: Option<&'a Cause>,
    },
    /// Lags of a loop since the previous summary.
    LagSummary {
        /// The loop's name.
        name: &'a str,
        /// Lags read.
        ticks: usize,
        /// Ticks whose lag was not read in time.
        lost: u64,
        /// Percentiles and maximum.
        p50: Option<u64>,
        /// 99th percentile.
        p99: Option<u64>,
        /// Maximum.
        max: Option<u64>,
    },
    /// Busy iterations of a loop watched by its wait calls.
    BusySummary {
        /// The loop's name.
        name: &'a str,
        /// Its thread.
        tid: i32,
        /// Iterations timed: in the sampling windows, and every one longer
        /// than a look.
        iterations: usize,
        /// Percentiles and maximum.
        p50: Option<u64>,
        /// 99th percentile.
        p99: Option<u64>,
        /// Maximum.
        max: Option<u64>,
    },
    /// A snapshot's minidump was written beside its text file
    /// (`--save-minidumps`).
    MinidumpWritten {
        /// Its path.
        path: &'a Path,
        /// Its size.
        bytes: u64,
    },
    /// The target exited or cannot be read: the watch ends.
    TargetGone {
        /// The target.
        pid: i32,
        /// The error.
        message: String,
        /// It exited (rather than an error).
        exited: bool,
    },
    /// The wait calls of the target cannot be counted: the watch ends.
    CannotCount {
        /// The target.
        pid: i32,
        /// The error.
        message: String,
    },
    /// `--all`: a process found and watched.
    ProcessFound {
        /// The process.
        pid: i32,
        /// Its command name.
        comm: &'a str,
        /// Its container id.
        container: Option<&'a str>,
        /// Its Kubernetes pod.
        pod: Option<&'a str>,
        /// Its folder of dumps.
        dir: &'a Path,
        /// It is in another PID namespace than ours.
        other_namespace: bool,
    },
    /// `--all`: a process that cannot be watched.
    Unwatchable {
        /// The process.
        pid: i32,
        /// Its command name.
        comm: &'a str,
        /// Why.
        message: String,
    },
    /// Something the watch carries on past.
    Warning(Warning<'a>),
    /// `watch PID` ends.
    Finished {
        /// Hang episodes.
        hangs: u64,
        /// Files written.
        files: u64,
        /// Bytes written.
        bytes: u64,
        /// The exit code.
        exit_code: u8,
        /// Failed StatsD sends (`None` without StatsD).
        statsd_errors: Option<u64>,
    },
    /// `watch --all` ends.
    FinishedFleet {
        /// Processes watched.
        processes: u64,
        /// Bytes of dumps.
        bytes: u64,
        /// The exit code.
        exit_code: u8,
        /// Failed StatsD sends (`None` without StatsD).
        statsd_errors: Option<u64>,
    },
}

impl Warning<'_> {
    /// The JSON object of the warning.
    fn fields(&self) -> Value {
        match self {
            Warning::NoStatsd(e) | Warning::FileFailed(e) => json!({"message": e}),
            Warning::NoPreload { error, .. } | Warning::SnapshotFailed { error, .. } => {
                json!({"message": error})
            }
            Warning::BudgetSpent { used, budget } => {
                json!({"message": "dump budget spent", "used": used, "budget": budget})
            }
            Warning::TooManyProcesses { max } => {
                json!({"message": "too many processes", "max": max})
            }
            Warning::WatchThreadEnded { pid } => {
                json!({"message": "the thread of every watch ended", "pid": pid})
            }
            Warning::TooManyThreads { max, .. } => {
                json!({"message": "too many threads", "watched": max})
            }
            Warning::NoSampling { tid, error } => {
                json!({"message": format!("no busy-time sampling: {error}"), "tid": tid})
            }
            Warning::NoSyscallCount { tid, error } => {
                json!({"message": format!("no system-call count: {error}"), "tid": tid})
            }
        }
    }
}

impl fmt::Display for Warning<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::NoStatsd(e) => write!(f, "WARNING {e}; watching without StatsD"),
            Warning::NoPreload { pid, error } => {
                write!(f, "WARNING cannot preload symbols of PID {pid}: {error}")
            }
            Warning::SnapshotFailed {
                index,
                loop_name,
                error,
            } => write!(
                f,
                "WARNING snapshot {} of loop '{loop_name}' failed: {error}",
                index + 1
            ),
            Warning::BudgetSpent { used, budget } => write!(
                f,
                "WARNING {used} bytes of dumps written (budget {budget}): skipping new dumps, deleting nothing"
            ),
            Warning::FileFailed(why) => write!(f, "WARNING {why}"),
            Warning::TooManyProcesses { max } => {
                write!(f, "WARNING watching {max} processes already: skipping new ones")
            }
            Warning::WatchThreadEnded { pid } => write!(
                f,
                "WARNING cannot start a watch of PID {pid}: the thread of every watch ended"
            ),
            Warning::TooManyThreads { pid, max } => write!(
                f,
                "WARNING PID {pid} has more than {max} threads: only the first {max} are counted"
            ),
            Warning::NoSampling { tid, error } => write!(
                f,
                "WARNING cannot sample the wait calls of thread {tid} (loop_busy only for iterations longer than a look): {error}"
            ),
            Warning::NoSyscallCount { tid, error } => write!(
                f,
                "NOTE cannot count the system calls of stalled thread {tid} (causes say stuck or busy from registers alone): {error}"
            ),
        }
    }
}

impl Hang<'_> {
    fn fields(&self) -> Value {
        json!({"loop": self.who.name, "tid": self.who.tid, "scope": self.who.scope(),
               "stall_ms": ms(self.stall_ns),
               "polling": self.who.stuck_poll, "blocking_tids": self.blocking})
    }
}

impl Event<'_> {
    /// The `event` field of the JSON form.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Started(_) | Event::StartedSyscalls { .. } | Event::StartedFleet { .. } => {
                "started"
            }
            Event::Stopped => "stopped",
            Event::ProcessState { stopped: true, .. } => "process_stopped",
            Event::ProcessState { stopped: false, .. } => "process_continued",
            Event::LoopFound { .. } | Event::LoopFoundSyscalls { .. } => "loop_found",
            Event::LoopGone { .. } | Event::LoopThreadExited { .. } => "loop_gone",
            Event::LoopParked { .. } => "loop_parked",
            Event::HangDetected(_) => "hang_detected",
            Event::HangStarted(..) => "hang_started",
            Event::Recovered { .. } => "recovered",
            Event::SlowTick { .. } | Event::SampledSlow { .. } => "slow_tick",
            Event::DumpWritten { .. } => "dump_written",
            Event::MinidumpWritten { .. } => "minidump_written",
            Event::LagSummary { .. } => "lag_summary",
            Event::BusySummary { .. } => "busy_summary",
            Event::TargetGone { .. } | Event::CannotCount { .. } => "target_gone",
            Event::ProcessFound { .. } => "process_found",
            Event::Unwatchable { .. } => "unwatchable",
            Event::Warning(_) => "warning",
            Event::Finished { .. } | Event::FinishedFleet { .. } => "finished",
        }
    }

    /// Whether the event has a text line: a `hang_started` whose cause is
    /// unknown would only repeat the `hang_detected` line before it.
    pub fn has_text(&self) -> bool {
        !matches!(self, Event::HangStarted(_, None))
    }

    /// The JSON object of the event, without what [`super::Log`] adds
    /// (`event`, `time`, and the process under `--all`).
    pub fn fields(&self) -> Value {
        match self {
            Event::Started(start) => start.fields(),
            Event::StartedSyscalls {
                start,
                why,
                calls,
                loop_threads,
            } => {
                let mut v = start.fields();
                if let Value::Object(m) = &mut v {
                    m.insert("mode".into(), "syscalls".into());
                    m.insert("why".into(), (*why).into());
                    m.insert("wait_calls".into(), json!(calls));
                    m.insert("loop_threads".into(), json!(loop_threads));
                }
                v
            }
            Event::StartedFleet {
                match_comm,
                interval,
                output_dir,
                ..
            } => json!({"all": true, "match": match_comm,
                        "interval_s": interval, "output_dir": output_dir.display().to_string()}),
            Event::Stopped => json!({"reason": "signal"}),
            Event::ProcessState { pid, state, .. } => {
                json!({"pid": pid, "state": state.to_string()})
            }
            Event::LoopFound {
                name,
                tid,
                period_ns,
            } => json!({"loop": name, "tid": tid, "period_ms": ms(*period_ns)}),
            Event::LoopFoundSyscalls {
                name,
                tid,
                why,
                call,
                entries,
                forced,
            } => json!({"loop": name, "tid": tid, "source": "syscalls", "why": why,
                        "call": call, "entries": entries, "forced": forced}),
            Event::LoopGone { name } => json!({"loop": name}),
            Event::LoopThreadExited { name, tid } => json!({"loop": name, "tid": tid}),
            Event::LoopParked { name, tid } => {
                json!({"loop": name, "tid": tid, "source": "syscalls"})
            }
            Event::HangDetected(h) => h.fields(),
            Event::HangStarted(h, cause) => {
                let mut v = h.fields();
                if let Value::Object(m) = &mut v {
                    m.insert("cause".into(), json_or_null(*cause));
                }
                v
            }
            Event::Recovered { who, hang_ns } => {
                json!({"loop": who.name, "tid": who.tid, "scope": who.scope(),
                       "hang_ms": ms(*hang_ns)})
            }
            Event::SlowTick {
                name,
                tid,
                blocked_ns,
                frames,
                cause,
            } => json!({"loop": name, "tid": tid, "blocked_ms": ms(*blocked_ns), "frames": frames,
                        "cause": json_or_null(*cause)}),
            Event::SampledSlow {
                name,
                tid,
                blocked_ns,
            } => json!({"loop": name, "tid": tid, "blocked_ms": ms(*blocked_ns),
                        "source": "sampled", "frames": null, "cause": null}),
            Event::DumpWritten {
                who,
                path,
                index,
                of,
                bytes,
                culprit,
                freeze_ms,
                threads,
                cause,
            } => json!({"loop": who.name, "path": path.display().to_string(), "index": index,
                        "of": of, "bytes": bytes, "culprit": culprit,
                        "freeze_ms": freeze_ms,
                        "threads": threads,
                        "cause": json_or_null(*cause)}),
            Event::LagSummary {
                name,
                ticks,
                lost,
                p50,
                p99,
                max,
            } => json!({"loop": name, "ticks": ticks, "lost": lost,
                        "p50_ms": p50.map(ms), "p99_ms": p99.map(ms),
                        "max_ms": max.map(ms)}),
            Event::BusySummary {
                name,
                tid,
                iterations,
                p50,
                p99,
                max,
            } => json!({"loop": name, "tid": tid, "iterations": iterations,
                        "p50_ms": p50.map(ms), "p99_ms": p99.map(ms), "max_ms": max.map(ms)}),
            Event::TargetGone { pid, message, .. } | Event::CannotCount { pid, message } => {
                json!({"pid": pid, "message": message})
            }
            Event::ProcessFound {
                pid,
                comm,
                container,
                pod,
                dir,
                other_namespace,
            } => json!({"pid": pid, "comm": comm, "container": container, "pod": pod,
                        "dir": dir.display().to_string(),
                        "pid_namespace": if *other_namespace { "other" } else { "ours" }}),
            Event::Unwatchable { pid, comm, message } => {
                json!({"pid": pid, "comm": comm, "message": message})
            }
            Event::Warning(w) => w.fields(),
            Event::MinidumpWritten { path, bytes } => {
                json!({"path": path.display().to_string(), "bytes": bytes})
            }
            Event::Finished {
                hangs,
                files,
                bytes,
                exit_code,
                statsd_errors,
            } => json!({"hangs": hangs, "files": files, "bytes": bytes, "exit_code": exit_code,
                        "statsd_errors": statsd_errors}),
            Event::FinishedFleet {
                processes,
                bytes,
                exit_code,
                statsd_errors,
            } => json!({"processes": processes, "bytes": bytes, "exit_code": exit_code,
                        "statsd_errors": statsd_errors}),
        }
    }
}

/// The text line of the event (without the time and process prefix that
/// [`super::Log`] adds).
impl fmt::Display for Event<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Started(s) => write!(
                f,
                "watching PID {} ({}): hang past {:.3} s → {} snapshots {:.1} s apart into {}",
                s.pid,
                s.exe,
                s.interval,
                s.dumps,
                s.dump_gap,
                s.output_dir.display()
            ),
            Event::StartedSyscalls {
                start: s,
                why,
                calls,
                ..
            } => write!(
                f,
                "watching PID {} ({}) by its threads' wait calls ({why}): a loop thread out of {} for over {:.3} s → {} snapshots {:.1} s apart into {}",
                s.pid,
                s.exe,
                calls.join("/"),
                s.interval,
                s.dumps,
                s.dump_gap,
                s.output_dir.display()
            ),
            Event::StartedFleet {
                match_comm,
                interval,
                dumps,
                output_dir,
            } => write!(
                f,
                "watching every process with a heartbeat{}: hang past {interval:.3} s → {dumps} snapshots into {}/<comm>-<pid>/",
                match_comm
                    .map(|r| format!(" whose name matches /{r}/"))
                    .unwrap_or_default(),
                output_dir.display()
            ),
            Event::Stopped => f.write_str("stopping (signal)"),
            Event::ProcessState {
                pid,
                state,
                stopped: true,
                hang_waits,
            } => write!(
                f,
                "PID {pid} is stopped (state {state}: job control or a debugger); {}",
                if *hang_waits {
                    "the hang's remaining snapshots wait until it runs again"
                } else {
                    "not a hang, no dumps"
                }
            ),
            Event::ProcessState {
                pid,
                stopped: false,
                ..
            } => write!(f, "PID {pid} runs again"),
            Event::LoopFound {
                name,
                tid,
                period_ns,
            } => write!(
                f,
                "loop '{name}' on thread {tid} (period {})",
                human(*period_ns)
            ),
            Event::LoopFoundSyscalls { name, tid, why, .. } => {
                write!(f, "loop '{name}' on thread {tid}: watching its wait calls ({why})")
            }
            Event::LoopGone { name } => write!(f, "loop '{name}' unregistered"),
            Event::LoopThreadExited { name, tid } => {
                write!(f, "loop '{name}' thread {tid} exited")
            }
            Event::LoopParked { name, tid } => write!(
                f,
                "loop '{name}' thread {tid} sleeps in a futex while another loop thread carries on: parked (a pool thread), not hung"
            ),
            // One worker of a runtime stuck in one poll is the same episode
            // as a loop's hang (same event, counters, files, recovery line),
            // told apart by `scope` and by the words "worker thread": an
            // on-call engineer greps one word, a consumer counts one event.
            Event::HangDetected(h) => match h.who.stuck_poll {
                None => write!(
                    f,
                    "HANG: loop '{}' on thread {} is {} overdue (interval {:.3} s){}",
                    h.who.name,
                    h.who.tid,
                    human(h.stall_ns),
                    h.interval,
                    super::workers::blocked_by(h.blocking, h.who.tid)
                ),
                Some(poll) => write!(
                    f,
                    "HANG: loop '{}' on worker thread {} is stuck {} in one poll of {poll} (interval {:.3} s; one worker of its runtime, the loop keeps ticking)",
                    h.who.name,
                    h.who.tid,
                    human(h.stall_ns),
                    h.interval
                ),
            },
            Event::HangStarted(_, None) => Ok(()),
            Event::HangStarted(h, Some(c)) => {
                let who = match h.who.stuck_poll {
                    None => format!("loop '{}'", h.who.name),
                    Some(_) => format!("loop '{}' worker thread {}", h.who.name, h.who.tid),
                };
                write!(f, "HANG cause: {who}: {}", c.line())
            }
            Event::Recovered { who, hang_ns } => match who.stuck_poll {
                None => write!(
                    f,
                    "recovered: loop '{}' ticks again after hanging {}",
                    who.name,
                    human(*hang_ns)
                ),
                Some(poll) => write!(
                    f,
                    "recovered: loop '{}' worker thread {} polls again after hanging {} (in one poll of {poll})",
                    who.name,
                    who.tid,
                    human(*hang_ns)
                ),
            },
            Event::SampledSlow {
                name,
                tid,
                blocked_ns,
            } => write!(
                f,
                "WARNING loop '{name}' thread {tid} busy {:.3} s in one iteration (timed by sampling its wait calls; the watcher was late to look, so no frame was captured)",
                *blocked_ns as f64 / 1e9
            ),
            Event::SlowTick {
                name,
                blocked_ns,
                frames,
                cause,
                ..
            } => write!(
                f,
                "WARNING loop '{name}' blocked {:.3} s in {}{}\n{}",
                *blocked_ns as f64 / 1e9,
                frames.lines().next().unwrap_or_default(),
                cause.map(|c| format!(": {}", c.line())).unwrap_or_default(),
                frames
                    .lines()
                    .skip(1)
                    .map(|l| format!("    {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
            Event::DumpWritten {
                who,
                path,
                index,
                of,
                culprit,
                freeze_ms,
                threads,
                cause,
                ..
            } => {
                write!(
                    f,
                    "wrote {} (snapshot {} of {of}, {threads} threads, froze {freeze_ms:.2} ms)",
                    path.display(),
                    index + 1,
                )?;
                if let Some(c) = culprit {
                    match who.stuck_poll {
                        None => write!(f, "; loop '{}' blocked in {c}", who.name)?,
                        Some(_) => write!(
                            f,
                            "; loop '{}' worker thread {} blocked in {c}",
                            who.name, who.tid
                        )?,
                    }
                }
                if let Some(c) = cause {
                    write!(f, "; cause: {}", c.line())?;
                }
                Ok(())
            }
            Event::LagSummary {
                name,
                ticks,
                lost,
                p50,
                p99,
                max,
            } => write!(
                f,
                "loop '{name}': {ticks} ticks, lag p50 {} p99 {} max {}{}",
                human_or_dash(*p50),
                human_or_dash(*p99),
                human_or_dash(*max),
                if *lost > 0 {
                    format!(" ({lost} lags not read in time)")
                } else {
                    String::new()
                }
            ),
            Event::BusySummary {
                name,
                tid,
                iterations,
                p50,
                p99,
                max,
            } => write!(
                f,
                "loop '{name}' thread {tid}: {iterations} iterations timed (sampled windows, and every one longer than a look), busy p50 {} p99 {} max {}",
                human_or_dash(*p50),
                human_or_dash(*p99),
                human_or_dash(*max)
            ),
            Event::TargetGone {
                pid, exited: true, ..
            } => write!(f, "PID {pid} exited; the watch ends"),
            Event::TargetGone {
                pid,
                message,
                exited: false,
            } => write!(f, "cannot read PID {pid}: {message}"),
            Event::CannotCount { pid, message } => {
                write!(f, "cannot count the wait calls of PID {pid}: {message}")
            }
            Event::ProcessFound {
                pid,
                comm,
                container,
                pod,
                ..
            } => write!(
                f,
                "watching PID {pid} ({comm}){}{}",
                container
                    .map(|c| format!(" container {}", c.get(..12).unwrap_or(c)))
                    .unwrap_or_default(),
                pod.map(|p| format!(" pod {p}")).unwrap_or_default()
            ),
            Event::Unwatchable { pid, comm, message } => {
                write!(f, "WARNING cannot watch PID {pid} ({comm}): {message}")
            }
            Event::Warning(w) => w.fmt(f),
            Event::MinidumpWritten { path, .. } => write!(f, "wrote {}", path.display()),
            Event::Finished {
                hangs,
                files,
                bytes,
                statsd_errors,
                ..
            } => write!(
                f,
                "done: {hangs} hangs caught, {files} files written ({bytes} bytes){}",
                match statsd_errors {
                    Some(n) if *n > 0 => format!("; {n} StatsD sends failed"),
                    _ => String::new(),
                }
            ),
            Event::FinishedFleet {
                processes, bytes, ..
            } => write!(
                f,
                "done: watched {processes} processes, {bytes} bytes of dumps"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::Log;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    /// A writer whose bytes the test reads back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::ErrorKind::Other)?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn lines(&self) -> Vec<String> {
            let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
            String::from_utf8_lossy(&bytes)
                .lines()
                .map(str::to_string)
                .collect()
        }
    }

    fn worker() -> Subject<'static> {
        Subject {
            name: "main",
            tid: 42,
            stuck_poll: Some("task 'orders' (src/main.rs:37)"),
        }
    }

    #[test]
    fn a_hang_renders_as_text_and_json_from_one_value() {
        let hang = Hang {
            who: Subject {
                name: "main",
                tid: 7,
                stuck_poll: None,
            },
            stall_ns: 1_520_000_000,
            interval: 0.25,
            blocking: &[7],
        };
        let e = Event::HangDetected(hang);
        assert_eq!(e.kind(), "hang_detected");
        assert_eq!(
            e.to_string(),
            "HANG: loop 'main' on thread 7 is 1.520s overdue (interval 0.250 s)"
        );
        assert_eq!(
            e.fields(),
            json!({"loop": "main", "tid": 7, "scope": "loop", "stall_ms": 1520.0,
                   "polling": null, "blocking_tids": [7]})
        );
        // Without a cause, `hang_started` is JSON only.
        let started = Event::HangStarted(hang, None);
        assert!(!started.has_text());
        assert_eq!(started.fields()["cause"], Value::Null);
        assert_eq!(started.fields()["stall_ms"], 1520.0);
    }

    #[test]
    fn a_worker_episode_says_worker_thread_and_scope_worker() {
        let e = Event::Recovered {
            who: worker(),
            hang_ns: 2_000_000_000,
        };
        assert_eq!(
            e.to_string(),
            "recovered: loop 'main' worker thread 42 polls again after hanging 2.000s (in one poll of task 'orders' (src/main.rs:37))"
        );
        assert_eq!(e.fields()["scope"], "worker");
        assert_eq!(e.fields()["hang_ms"], 2000.0);
        let d = Event::DumpWritten {
            who: worker(),
            path: Path::new("/tmp/x/hang-1.txt"),
            index: 0,
            of: 3,
            bytes: 1234,
            culprit: Some("orders::handle at src/main.rs:40"),
            freeze_ms: 1.25,
            threads: 5,
            cause: None,
        };
        assert_eq!(
            d.to_string(),
            "wrote /tmp/x/hang-1.txt (snapshot 1 of 3, 5 threads, froze 1.25 ms); loop 'main' worker thread 42 blocked in orders::handle at src/main.rs:40"
        );
        assert_eq!(
            d.fields(),
            json!({"loop": "main", "path": "/tmp/x/hang-1.txt", "index": 0, "of": 3,
                   "bytes": 1234, "culprit": "orders::handle at src/main.rs:40",
                   "freeze_ms": 1.25, "threads": 5, "cause": null})
        );
    }

    #[test]
    fn the_log_adds_event_time_and_process_to_the_json_line() {
        let buf = Shared::default();
        let log = Log::to_writer(true, Some((99, "svc".into())), Box::new(buf.clone()));
        log.emit(&Event::LoopFound {
            name: "main",
            tid: 3,
            period_ns: 100_000_000,
        });
        log.emit(&Event::Warning(Warning::BudgetSpent {
            used: 2048,
            budget: 1024,
        }));
        let lines = buf.lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        let v: Value = serde_json::from_str(&lines[0]).unwrap_or_default();
        assert_eq!(v["event"], "loop_found");
        assert_eq!(v["loop"], "main");
        assert_eq!(v["period_ms"], 100.0);
        assert_eq!(v["pid"], 99);
        assert_eq!(v["comm"], "svc");
        assert!(v["time"].as_str().is_some_and(|t| t.contains('T')), "{v}");
        let w: Value = serde_json::from_str(&lines[1]).unwrap_or_default();
        assert_eq!(w["event"], "warning");
        assert_eq!(w["message"], "dump budget spent");
        assert_eq!(
            (w["used"].as_u64(), w["budget"].as_u64()),
            (Some(2048), Some(1024))
        );
    }

    #[test]
    fn the_log_writes_text_lines_after_the_time_and_leaves_out_empty_ones() {
        let buf = Shared::default();
        let log = Log::to_writer(false, None, Box::new(buf.clone()));
        log.emit(&Event::LagSummary {
            name: "main",
            ticks: 10,
            lost: 2,
            p50: Some(1_000_000),
            p99: None,
            max: Some(3_000_000),
        });
        let hang = Hang {
            who: worker(),
            stall_ns: 1,
            interval: 0.25,
            blocking: &[],
        };
        log.emit(&Event::HangStarted(hang, None));
        log.emit(&Event::Stopped);
        let lines = buf.lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        // `HH:MM:SS.mmm ` then the event's own text.
        let (time, text) = lines[0].split_once(' ').unwrap_or_default();
        assert_eq!(time.len(), 12, "{time:?}");
        assert!(
            text.starts_with("loop 'main': 10 ticks, lag p50 ") && text.contains(" p99 - "),
            "{text}"
        );
        assert!(text.ends_with(" (2 lags not read in time)"), "{text}");
        assert!(lines[1].ends_with(" stopping (signal)"), "{lines:?}");
    }
}
