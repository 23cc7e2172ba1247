//! What each command is asked to do, as plain values: the CLI layer
//! ([`crate::cli`]) turns its parsed arguments into these once, with the
//! checks across arguments, and everything below `main` reads only these.
//! The demo builds a [`WatchConfig`] in code ([`WatchConfig::for_pid`]).
//!
//! The field names are those of the arguments (`--dump-gap` → `dump_gap`),
//! so a field reads the same in the CLI layer and in the code that uses it.

use std::path::PathBuf;

use crate::pyview::Stacks;

/// What `watch` does (see `aiodebug-watch watch --help` for each field).
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// Process id of the target; `None` with `all`.
    pub pid: Option<i32>,
    /// Watch every process of the host that exports a heartbeat.
    pub all: bool,
    /// With `all`: only processes whose command name matches.
    pub match_comm: Option<regex::Regex>,
    /// Seconds overdue after which a loop is hung.
    pub interval: f64,
    /// Where hang dumps go.
    pub output_dir: PathBuf,
    /// Accept an `output_dir` that is a symbolic link.
    pub follow_symlinks: bool,
    /// Snapshots of every thread per hang episode.
    pub dumps: u32,
    /// Seconds between the snapshots of one episode.
    pub dump_gap: f64,
    /// Bytes of dumps after which no more are written.
    pub max_dump_bytes: u64,
    /// StatsD server (HOST:PORT, UDP).
    pub statsd: Option<String>,
    /// Prefix of metric names.
    pub prefix: String,
    /// DogStatsD tags added to every metric.
    pub tags: Vec<(String, String)>,
    /// Seconds after which a tick (not a hang) is logged as slow.
    pub slow: Option<f64>,
    /// Exit 1 once the first hang episode's files are written.
    pub exit_on_hang: bool,
    /// Seconds after which the watch stops.
    pub duration: Option<f64>,
    /// One JSON event per line on stdout.
    pub json: bool,
    /// Frames of a Python process in dumps.
    pub stacks: Stacks,
    /// Threads watched as event loops by their wait system calls.
    pub loop_threads: Vec<i32>,
    /// Directories of separate debug files.
    pub debug_dirs: Vec<PathBuf>,
    /// Fraction of each second a loop watched by its wait calls is sampled
    /// for its busy times (0: never, 1: always).
    pub busy_sample: f64,
    /// Also save each snapshot as a minidump beside its text file.
    pub save_minidumps: bool,
}

impl WatchConfig {
    /// A watch of `pid` with the defaults of `aiodebug-watch watch PID`
    /// (files into the current directory); callers set the fields they need.
    pub fn for_pid(pid: i32) -> WatchConfig {
        WatchConfig {
            pid: Some(pid),
            all: false,
            match_comm: None,
            interval: 0.25,
            output_dir: PathBuf::from("."),
            follow_symlinks: false,
            dumps: 3,
            dump_gap: 1.0,
            max_dump_bytes: 256 * 1024 * 1024,
            statsd: None,
            prefix: "aiodebug".into(),
            tags: Vec::new(),
            slow: None,
            exit_on_hang: false,
            duration: None,
            json: false,
            stacks: Stacks::default(),
            loop_threads: Vec::new(),
            debug_dirs: Vec::new(),
            busy_sample: 0.02,
            save_minidumps: false,
        }
    }
}

/// What `dump` does.
#[derive(Debug, Clone)]
pub struct DumpConfig {
    /// Process id of the target.
    pub pid: i32,
    /// Write the dump to this file instead of stdout.
    pub output: Option<PathBuf>,
    /// Replace `output` if it is an existing regular file.
    pub force: bool,
    /// One JSON object per dump.
    pub json: bool,
    /// Sanity cap on frames per thread.
    pub max_frames: u32,
    /// Dumps taken in one process.
    pub repeat: u32,
    /// Print where the time of each dump went on stderr.
    pub timings: bool,
    /// Frames of a Python process.
    pub stacks: Stacks,
    /// Directories of separate debug files.
    pub debug_dirs: Vec<PathBuf>,
    /// Also save the first snapshot as a minidump in this file.
    pub save: Option<PathBuf>,
}

/// What `symbolize` does.
#[derive(Debug, Clone)]
pub struct SymbolizeConfig {
    /// The minidump to render.
    pub file: PathBuf,
    /// Directories of module and debug files.
    pub debug_dirs: Vec<PathBuf>,
    /// One JSON object, as `dump --json`.
    pub json: bool,
    /// Frames of a Python process.
    pub stacks: Stacks,
}

/// What `status` does.
#[derive(Debug, Clone)]
pub struct StatusConfig {
    /// Process id of the target.
    pub pid: i32,
    /// Seconds overdue after which a loop is stalled.
    pub threshold: f64,
    /// One JSON object per line on stdout.
    pub json: bool,
    /// Seconds a process with no heartbeat has its loop threads sampled.
    pub sample: f64,
}

/// What `list` does.
#[derive(Debug, Clone)]
pub struct ListConfig {
    /// Seconds overdue after which a loop is shown as stalled.
    pub threshold: f64,
    /// One JSON object per line on stdout.
    pub json: bool,
}

/// What `demo` does.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Seconds after which the demo gives up if no hang was caught.
    pub duration: f64,
    /// Stall threshold in seconds.
    pub threshold: f64,
    /// Where the dumps go (`None`: a new directory under the temp dir).
    pub output_dir: Option<PathBuf>,
}
