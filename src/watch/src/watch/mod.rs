//! `watch`: read the heartbeat from outside, catch every hang while it lasts,
//! write the evidence, send lags to StatsD.
//!
//! The loop is deadline driven: after each read it sleeps until the earliest
//! moment something can happen — a loop's stall crossing the slow threshold or
//! the hang interval, or an episode's next snapshot — capped so lags are read
//! before the ring wraps and the status line stays fresh. A hang is therefore
//! seen within about a millisecond of crossing the interval, while a healthy
//! target costs a few reads a second.

mod act;
pub mod episode;
pub mod event;
pub mod files;
pub mod fleet;
pub mod render;
mod setup;
pub mod statsd;
mod step;
pub mod syscall_loop;
pub mod workers;

use crate::config::WatchConfig;
use crate::exit;
use act::act;
use aiodebug_engine::heartbeat::Loop;
use aiodebug_engine::target::Target;
use episode::{Config, Tracker};
use event::Event;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
pub use setup::watch;
pub(crate) use setup::{connect_stats, dump_options, stop_flag};
use setup::{episode_config, new_ctx};
use statsd::Stats;
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;
use step::{finish, gone_or_error, watch_start, watch_step};

/// Longest sleep between two reads.
const MAX_SLEEP_NS: u64 = 100_000_000;
/// Shortest sleep between two reads.
const MIN_SLEEP_NS: u64 = 1_000_000;
/// Lag summaries every this often.
const SUMMARY_EVERY_NS: u64 = 10_000_000_000;

/// Where events go: a live status line on a terminal, plain lines otherwise,
/// or one JSON object per line; written to `out` (stdout unless a test
/// gives a buffer).
pub struct Log {
    json: bool,
    bar: Option<ProgressBar>,
    /// Under `--all`: the process every event is about (pid, comm).
    who: Option<(i32, String)>,
    /// Where the lines go. A `RefCell`: events are emitted through `&Log`
    /// from everywhere a context is borrowed, and a watch is one thread.
    out: RefCell<Box<dyn Write + Send>>,
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
            bar,
            ..Log::plain(json, None)
        }
    }

    /// Plain lines (or JSON) on stdout, no status line; under `--all`,
    /// `who` is the process every event is about.
    pub fn plain(json: bool, who: Option<(i32, String)>) -> Log {
        Log::to_writer(json, who, Box::new(crate::out::Stdout))
    }

    /// Plain lines (or JSON) into `out`.
    pub fn to_writer(json: bool, who: Option<(i32, String)>, out: Box<dyn Write + Send>) -> Log {
        Log {
            json,
            bar: None,
            who,
            out: RefCell::new(out),
        }
    }

    /// Reports one event, built once, in the form chosen.
    pub fn emit(&self, event: &Event<'_>) {
        let line = if self.json {
            let mut fields = event.fields();
            if let Value::Object(m) = &mut fields {
                if let Some((pid, comm)) = &self.who {
                    m.entry("pid").or_insert((*pid).into());
                    m.insert("comm".into(), comm.as_str().into());
                }
                m.insert("event".into(), event.kind().into());
                m.insert("time".into(), chrono::Local::now().to_rfc3339().into());
            }
            fields.to_string()
        } else if event.has_text() {
            let who = match &self.who {
                Some((pid, comm)) => format!("[{comm}-{pid}] "),
                None => String::new(),
            };
            let line = format!(
                "{} {who}{event}",
                chrono::Local::now().format("%H:%M:%S%.3f")
            );
            if let Some(bar) = &self.bar {
                bar.println(line);
                return;
            }
            line
        } else {
            return;
        };
        if let Ok(mut out) = self.out.try_borrow_mut() {
            // One write per line, newline included: under `--all` two
            // threads log to stdout, and `out::Stdout` locks it per write.
            // A lost line is said by `out` (stdout) or is the test's to see.
            let _ = out
                .write_all(format!("{line}\n").as_bytes())
                .and_then(|()| out.flush());
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

impl Watched {
    /// A loop (or worker) first seen at `now`, with no tick read yet.
    fn new(name: String, tid: u32, cfg: Config, now: u64) -> Watched {
        Watched {
            name,
            tid,
            stuck_poll: None,
            poll_since_ns: 0,
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
        }
    }
}

/// Everything a watch run needs besides the loop state.
struct Ctx<'a> {
    args: &'a WatchConfig,
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

impl Ctx<'_> {
    /// What the watch's `started` event says.
    fn start(&self) -> event::Start<'_> {
        event::Start {
            pid: self.pid,
            exe: &self.exe,
            interval: self.args.interval,
            dumps: self.args.dumps,
            dump_gap: self.args.dump_gap,
            output_dir: self.out.path(),
        }
    }
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
pub fn run(args: &WatchConfig) -> ExitCode {
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
