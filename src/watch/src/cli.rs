//! Command-line definitions, parsed once into plain values. The man page and
//! shell completions are generated from these same definitions.

use clap::{Args, Parser, Subcommand};

use crate::config::{
    DemoConfig, DumpConfig, ListConfig, StatusConfig, SymbolizeConfig, WatchConfig,
};

/// Exit codes, identical for every subcommand.
pub const EXIT_CODES: &str = "\
Exit codes (the same for every subcommand):
  0  healthy / success
  1  a loop stalled past the threshold
  2  usage error
  3  the target exports no aiodebug heartbeat (link the `aiodebug` crate; `dump` works on any process)
  4  permission denied or cannot attach (needs the same user or CAP_SYS_PTRACE; see kernel.yama.ptrace_scope; or the process is already traced)
  5  no such process, or it exited
  6  any other error (e.g. output not writable)
  7  symbolize: the file is missing, unreadable, or not a usable minidump (truncated, corrupt, not x86_64)";

/// Watch event loops of a running process from outside: loop lag, hangs while
/// they last, and stack dumps of every thread.
#[derive(Parser, Debug)]
#[command(name = "aiodebug-watch", version, about, long_about = None, after_help = EXIT_CODES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show every event loop of a process: lag, stall, thread.
    #[command(after_help = EXIT_CODES)]
    Status(StatusArgs),
    /// List every process on this host that exports a heartbeat, with its loops.
    #[command(after_help = EXIT_CODES)]
    List(ListArgs),
    /// Watch a process: catch every hang while it lasts (stack dumps to files),
    /// send loop lag to StatsD, warn about slow ticks.
    #[command(after_help = EXIT_CODES)]
    Watch(WatchArgs),
    /// Print the stacks of every thread of a process (any process, heartbeat or not).
    #[command(after_help = EXIT_CODES)]
    Dump(DumpArgs),
    /// Render a minidump saved by `dump --save` or `watch --save-minidumps` as `dump`
    /// does, from the file alone (on any host; module files by build-id).
    #[command(after_help = EXIT_CODES)]
    Symbolize(SymbolizeArgs),
    /// Run the bundled demo: a service whose loop hangs, watched live.
    #[command(after_help = EXIT_CODES)]
    Demo(DemoArgs),
    /// Generate the man page or shell completions on stdout (for packagers).
    #[command(hide = true)]
    Generate(GenerateArgs),
    /// The bundled demo service (started by `demo`).
    #[command(hide = true, name = "demo-target")]
    DemoTarget,
}

/// Arguments of `status`.
#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// Process id of the target.
    #[arg(value_parser = parse_pid)]
    pub pid: i32,
    /// A loop whose next tick is overdue by more than this many seconds is stalled (exit 1; at least 0.001).
    #[arg(long, default_value_t = 0.25, value_parser = parse_threshold)]
    pub threshold: f64,
    /// One JSON object per line on stdout.
    #[arg(long)]
    pub json: bool,
    /// For a process with no heartbeat: how many seconds its loop threads' wait calls are sampled
    /// for iterations/s and busy-time percentiles.
    #[arg(long, value_name = "SECS", default_value_t = 1.0, value_parser = parse_sample)]
    pub sample: f64,
}

/// `--sample`: 0.05 s to 60 s (the target pays for every sampled iteration).
pub fn parse_sample(s: &str) -> Result<f64, String> {
    let v = secs_at_least(s, 0.05)?;
    if v > 60.0 {
        return Err(format!("`{s}` is longer than 60 s"));
    }
    Ok(v)
}

/// Arguments of `list`.
#[derive(Args, Debug, Clone)]
pub struct ListArgs {
    /// A loop overdue by more than this many seconds is shown as stalled (at least 0.001).
    #[arg(long, default_value_t = 0.25, value_parser = parse_threshold)]
    pub threshold: f64,
    /// One JSON object per line on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `watch`.
#[derive(Args, Debug, Clone)]
pub struct WatchArgs {
    /// Process id of the target (it must export a heartbeat).
    #[arg(required_unless_present = "all", conflicts_with = "all", value_parser = parse_pid)]
    pub pid: Option<i32>,
    /// Watch every process on this host that exports a heartbeat, each with its
    /// own episodes; files go to OUTPUT_DIR/COMM-PID/, one byte budget for all.
    #[arg(long)]
    pub all: bool,
    /// With --all: only processes whose command name (comm) matches this regex.
    #[arg(long = "match", value_name = "REGEX", value_parser = parse_regex)]
    pub match_comm: Option<regex::Regex>,
    /// A loop overdue by more than this many seconds is hung: its episode starts (at least 0.01).
    #[arg(long, default_value_t = 0.25, value_parser = parse_interval)]
    pub interval: f64,
    /// Where hang dumps go (created if missing; must be a writable directory, not a symlink).
    #[arg(long, default_value = ".")]
    pub output_dir: std::path::PathBuf,
    /// Accept an --output-dir that is a symbolic link (refused by default: a link can redirect
    /// dumps written as root).
    #[arg(long)]
    pub follow_symlinks: bool,
    /// Snapshots of every thread per hang episode (1 to 100).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub dumps: u32,
    /// Seconds between the snapshots of one episode (at least 0.1).
    #[arg(long, default_value_t = 1.0, value_parser = parse_dump_gap)]
    pub dump_gap: f64,
    /// Stop writing dumps once this many bytes were written (nothing is deleted; at least 1024).
    #[arg(long, default_value_t = 256 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..))]
    pub max_dump_bytes: u64,
    /// Send metrics to this StatsD server (HOST:PORT, UDP).
    #[arg(long, value_name = "HOST:PORT")]
    pub statsd: Option<String>,
    /// Prefix of metric names (letters, digits, `_`, `-`, `.`; at most 100).
    #[arg(long, default_value = "aiodebug", value_parser = parse_prefix)]
    pub prefix: String,
    /// A DogStatsD tag added to every metric (repeatable, at most 32; each at most 200 bytes).
    #[arg(long = "tag", value_name = "K:V", value_parser = parse_tag)]
    pub tags: Vec<(String, String)>,
    /// Log a loop blocked longer than this many seconds (but not hung), with the frame that
    /// blocked it (at least 0.001, less than --interval).
    #[arg(long, value_parser = parse_threshold)]
    pub slow: Option<f64>,
    /// Exit 1 once the first hang episode's files are written.
    #[arg(long)]
    pub exit_on_hang: bool,
    /// Stop after this many seconds (exit 0).
    #[arg(long, value_parser = parse_secs)]
    pub duration: Option<f64>,
    /// One JSON event per line on stdout.
    #[arg(long)]
    pub json: bool,
    /// Frames of a Python process in dumps: merged, Python only, native only.
    #[arg(long, value_enum, default_value_t = crate::pyview::Stacks::Merged)]
    pub stacks: crate::pyview::Stacks,
    /// Watch this thread as an event loop by its wait system calls (repeatable); without it, a
    /// process with no heartbeat has its loop threads found by themselves (see README, "A loop
    /// that links nothing").
    #[arg(long = "loop-thread", value_name = "TID", value_parser = parse_pid, conflicts_with = "all")]
    pub loop_threads: Vec<i32>,
    /// A directory of separate debug files for the dumps, laid out as /usr/lib/debug
    /// (`.build-id/xx/rest.debug`) or flat by debug-link name (repeatable).
    #[arg(long = "debug-dir", value_name = "DIR")]
    pub debug_dirs: Vec<std::path::PathBuf>,
    /// For a loop watched by its wait calls: the fraction of each second its wait calls' returns
    /// and entries are sampled, timing every iteration then (StatsD `loop_busy` with this
    /// sampling rate); 0 turns sampling off, 1 samples all the time (see README, "A loop that
    /// links nothing"; the default keeps a saturated redis within its counters' cost).
    #[arg(long = "busy-sample", value_name = "FRACTION", default_value_t = 0.02, value_parser = parse_fraction)]
    pub busy_sample: f64,
    /// Also save each snapshot as a minidump beside its text file (same name, `.dmp`;
    /// counted in --max-dump-bytes); `aiodebug-watch symbolize FILE.dmp` renders one.
    #[arg(long)]
    pub save_minidumps: bool,
}

/// Parses a fraction between 0 and 1.
pub fn parse_fraction(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if !v.is_finite() || !(0.0..=1.0).contains(&v) {
        return Err(format!("`{s}` is not a fraction between 0 and 1"));
    }
    Ok(v)
}

/// Most `--tag`s.
pub const MAX_TAGS: usize = 32;
/// Longest `--tag`, in bytes: StatsD datagrams must stay well under a UDP payload.
pub const MAX_TAG_LEN: usize = 200;

/// Parses a `K:V` tag.
pub fn parse_tag(s: &str) -> Result<(String, String), String> {
    if s.len() > MAX_TAG_LEN {
        return Err(format!(
            "a tag of {} bytes is too long (at most {MAX_TAG_LEN})",
            s.len()
        ));
    }
    if s.contains(|c: char| c.is_control()) {
        return Err(format!(
            "`{}` contains a control character",
            s.escape_debug()
        ));
    }
    match s.split_once(':') {
        Some((k, v))
            if !k.is_empty() && !k.contains([',', '|', '#']) && !v.contains([',', '|']) =>
        {
            Ok((k.to_string(), v.to_string()))
        }
        _ => Err(format!("`{s}` is not a tag of the form KEY:VALUE")),
    }
}

/// Parses a `--match` regex (bounded size: it is compiled once).
pub fn parse_regex(s: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(s)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| format!("`{s}` is not a valid regex: {e}"))
}

/// Arguments of `dump`.
#[derive(Args, Debug, Clone)]
pub struct DumpArgs {
    /// Process id of the target (any process, heartbeat or not). It is
    /// stopped for about a millisecond and never left stopped.
    #[arg(value_parser = parse_pid)]
    pub pid: i32,
    /// Write the dump to FILE instead of stdout (created exclusively, never through a
    /// symlink; an existing file is refused unless --force).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,
    /// With --output: replace FILE if it is an existing regular file.
    #[arg(long, requires = "output")]
    pub force: bool,
    /// One JSON object per dump, on one line (schema: README.md, "dump --json schema").
    #[arg(long)]
    pub json: bool,
    /// Sanity cap on frames per thread.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_frames: u32,
    /// Take this many dumps in one process (caches stay warm after the first).
    #[arg(long, default_value_t = 1, hide = true, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub repeat: u32,
    /// Print where the time of each dump went on stderr.
    #[arg(long, hide = true)]
    pub timings: bool,
    /// Frames of a Python process: Python frames merged with native ones,
    /// Python frames only, or native frames only.
    #[arg(long, value_enum, default_value_t = crate::pyview::Stacks::Merged)]
    pub stacks: crate::pyview::Stacks,
    /// A directory of separate debug files, laid out as /usr/lib/debug
    /// (`.build-id/xx/rest.debug`) or flat by debug-link name (repeatable;
    /// searched after the target's and the host's /usr/lib/debug).
    #[arg(long = "debug-dir", value_name = "DIR")]
    pub debug_dirs: Vec<std::path::PathBuf>,
    /// Also save the (first) snapshot as a minidump in FILE (created exclusively, never
    /// through a symlink); `aiodebug-watch symbolize FILE` renders it later, elsewhere.
    #[arg(long, value_name = "FILE.dmp")]
    pub save: Option<std::path::PathBuf>,
}

/// Arguments of `symbolize`.
#[derive(Args, Debug)]
pub struct SymbolizeArgs {
    /// A minidump written by `dump --save` or `watch --save-minidumps` (or
    /// another Linux x86_64 minidump writer).
    #[arg(value_name = "FILE.dmp")]
    pub file: std::path::PathBuf,
    /// A directory of module and debug files laid out as /usr/lib/debug
    /// (`.build-id/xx/rest` for the module, `.build-id/xx/rest.debug` for its
    /// debug info), or flat by debug-link name (repeatable). Modules are also
    /// taken from their recorded path when its build-id matches, and from
    /// debuginfod (`DEBUGINFOD_URLS`).
    #[arg(long = "debug-dir", value_name = "DIR")]
    pub debug_dirs: Vec<std::path::PathBuf>,
    /// One JSON object, on one line (the schema of `dump --json`).
    #[arg(long)]
    pub json: bool,
    /// Frames of a Python process (as saved: the Python frames captured live).
    #[arg(long, value_enum, default_value_t = crate::pyview::Stacks::Merged)]
    pub stacks: crate::pyview::Stacks,
}

/// Arguments of `demo`.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Give up after this many seconds if no hang was caught.
    #[arg(long, default_value_t = 20.0, value_parser = parse_secs)]
    pub duration: f64,
    /// Stall threshold in seconds.
    #[arg(long, default_value_t = 0.25, value_parser = parse_secs)]
    pub threshold: f64,
    /// Where the dumps go (default: a new directory under the system temp dir).
    #[arg(long)]
    pub output_dir: Option<std::path::PathBuf>,
}

/// What `generate` prints.
#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum Generated {
    /// The man page (roff).
    Man,
    /// Bash completions.
    CompleteBash,
    /// Zsh completions.
    CompleteZsh,
    /// Fish completions.
    CompleteFish,
}

/// Arguments of `generate`.
#[derive(Args, Debug, Clone)]
pub struct GenerateArgs {
    /// What to generate.
    pub what: Generated,
    /// With `man`: write every page (main and per subcommand) into this directory.
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
}

/// Parses a process id: a positive number.
pub fn parse_pid(s: &str) -> Result<i32, String> {
    match s.parse::<i32>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("`{s}` is not a process id (a number from 1)")),
    }
}

/// Parses a metric prefix: letters, digits, `_`, `-` and `.`, 1 to 100
/// characters (`:` `|` `@` `#` would make malformed StatsD lines).
pub fn parse_prefix(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 100
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "`{}` is not a metric prefix (1 to 100 of letters, digits, `_`, `-`, `.`)",
            s.escape_debug()
        ))
    }
}

fn secs_at_least(s: &str, min: f64) -> Result<f64, String> {
    let v = parse_secs(s)?;
    if v < min {
        return Err(format!("`{s}` is too small: at least {min} s"));
    }
    Ok(v)
}

/// `--interval`: at least 10 ms (a shorter one calls a healthy loop hung
/// between two of its ticks).
pub fn parse_interval(s: &str) -> Result<f64, String> {
    secs_at_least(s, 0.01)
}

/// `--threshold`, `--slow`: at least 1 ms.
pub fn parse_threshold(s: &str) -> Result<f64, String> {
    secs_at_least(s, 0.001)
}

/// `--dump-gap`: at least 0.1 s (each snapshot freezes the target).
pub fn parse_dump_gap(s: &str) -> Result<f64, String> {
    secs_at_least(s, 0.1)
}

/// Checks what no single argument can: `--slow` below `--interval`, the
/// number of tags. `Err` is a usage error (exit 2).
pub fn check_watch(a: &WatchArgs) -> Result<(), String> {
    if let Some(slow) = a.slow {
        if slow >= a.interval {
            return Err(format!(
                "--slow {slow} must be less than --interval {} (a tick that slow is already a hang)",
                a.interval
            ));
        }
    }
    if a.tags.len() > MAX_TAGS {
        return Err(format!("{} tags given; at most {MAX_TAGS}", a.tags.len()));
    }
    Ok(())
}

/// `--stacks` values: the type is the report's ([`crate::pyview::Stacks`]),
/// its clap face is here, so that clap stays in this layer.
impl clap::ValueEnum for crate::pyview::Stacks {
    fn value_variants<'a>() -> &'a [Self] {
        use crate::pyview::Stacks;
        &[Stacks::Merged, Stacks::Python, Stacks::Native]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        use crate::pyview::Stacks;
        use clap::builder::PossibleValue;
        Some(match self {
            Stacks::Merged => PossibleValue::new("merged").help(
                "Python frames in place of the interpreter's eval frames, native frames between",
            ),
            Stacks::Python => PossibleValue::new("python").help("Python frames only"),
            Stacks::Native => {
                PossibleValue::new("native").help("Native frames only (Python's state is not read)")
            }
        })
    }
}

/// `watch`'s arguments as its config, once the checks across arguments
/// ([`check_watch`], `--match` needs `--all`) passed; `Err` is a usage
/// error (exit 2).
impl TryFrom<&WatchArgs> for WatchConfig {
    type Error = String;

    fn try_from(a: &WatchArgs) -> Result<WatchConfig, String> {
        check_watch(a)?;
        // clap's `requires` does not see a flag that defaults to false.
        if a.match_comm.is_some() && !a.all {
            return Err("--match needs --all".into());
        }
        Ok(WatchConfig {
            pid: a.pid,
            all: a.all,
            match_comm: a.match_comm.clone(),
            interval: a.interval,
            output_dir: a.output_dir.clone(),
            follow_symlinks: a.follow_symlinks,
            dumps: a.dumps,
            dump_gap: a.dump_gap,
            max_dump_bytes: a.max_dump_bytes,
            statsd: a.statsd.clone(),
            prefix: a.prefix.clone(),
            tags: a.tags.clone(),
            slow: a.slow,
            exit_on_hang: a.exit_on_hang,
            duration: a.duration,
            json: a.json,
            stacks: a.stacks,
            loop_threads: a.loop_threads.clone(),
            debug_dirs: a.debug_dirs.clone(),
            busy_sample: a.busy_sample,
            save_minidumps: a.save_minidumps,
        })
    }
}

impl From<&DumpArgs> for DumpConfig {
    fn from(a: &DumpArgs) -> DumpConfig {
        DumpConfig {
            pid: a.pid,
            output: a.output.clone(),
            force: a.force,
            json: a.json,
            max_frames: a.max_frames,
            repeat: a.repeat,
            timings: a.timings,
            stacks: a.stacks,
            debug_dirs: a.debug_dirs.clone(),
            save: a.save.clone(),
        }
    }
}

impl From<&SymbolizeArgs> for SymbolizeConfig {
    fn from(a: &SymbolizeArgs) -> SymbolizeConfig {
        SymbolizeConfig {
            file: a.file.clone(),
            debug_dirs: a.debug_dirs.clone(),
            json: a.json,
            stacks: a.stacks,
        }
    }
}

impl From<&StatusArgs> for StatusConfig {
    fn from(a: &StatusArgs) -> StatusConfig {
        StatusConfig {
            pid: a.pid,
            threshold: a.threshold,
            json: a.json,
            sample: a.sample,
        }
    }
}

impl From<&ListArgs> for ListConfig {
    fn from(a: &ListArgs) -> ListConfig {
        ListConfig {
            threshold: a.threshold,
            json: a.json,
        }
    }
}

impl From<&DemoArgs> for DemoConfig {
    fn from(a: &DemoArgs) -> DemoConfig {
        DemoConfig {
            duration: a.duration,
            threshold: a.threshold,
            output_dir: a.output_dir.clone(),
        }
    }
}

/// Parses a non-negative, finite number of seconds.
pub fn parse_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !v.is_finite() || !(0.0..=86_400.0 * 365.0).contains(&v) {
        return Err(format!("`{s}` is not a duration between 0 and one year"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn tags_are_validated() {
        assert_eq!(parse_tag("env:prod"), Ok(("env".into(), "prod".into())));
        assert_eq!(parse_tag("k:a:b"), Ok(("k".into(), "a:b".into())));
        assert!(parse_tag("novalue").is_err());
        assert!(parse_tag(":v").is_err());
        assert!(parse_tag("a|b:c").is_err());
        assert!(parse_tag(&format!("k:{}", "v".repeat(100_000))).is_err());
        assert!(parse_tag("k:a\nb").is_err());
        assert_eq!(parse_prefix("svc.orders_1-a"), Ok("svc.orders_1-a".into()));
        for bad in ["", "a:b", "a|b", "a@b", "a#b", "a b"] {
            assert!(parse_prefix(bad).is_err(), "{bad:?}");
        }
    }

    /// `watch`'s arguments as parsed, or clap's error as text.
    fn watch_config(argv: &[&str]) -> Result<WatchConfig, String> {
        let cli = Cli::try_parse_from(["aiodebug-watch", "watch"].iter().chain(argv))
            .map_err(|e| e.to_string())?;
        match &cli.command {
            Command::Watch(a) => WatchConfig::try_from(a),
            other => Err(format!("not watch: {other:?}")),
        }
    }

    #[test]
    fn the_demos_defaults_are_the_command_lines() {
        // `demo` builds its watch with `for_pid`: it must mean what
        // `watch PID` means.
        let parsed = watch_config(&["42"]).map(|c| format!("{c:?}"));
        assert_eq!(parsed, Ok(format!("{:?}", WatchConfig::for_pid(42))));
    }

    #[test]
    fn checks_across_arguments_are_usage_errors() {
        let ok = watch_config(&["7", "--interval", "0.5", "--slow", "0.1", "--tag", "k:v"]);
        let ok = ok.map(|c| (c.pid, c.interval, c.slow, c.tags));
        assert_eq!(
            ok,
            Ok((Some(7), 0.5, Some(0.1), vec![("k".into(), "v".into())]))
        );
        let slow = watch_config(&["7", "--interval", "0.25", "--slow", "0.5"]);
        assert!(slow.is_err_and(|e| e.contains("--slow 0.5 must be less than --interval")));
        let matched = watch_config(&["7", "--match", "svc"]);
        assert_eq!(matched.map(|c| c.pid), Err("--match needs --all".into()));
        let tags: Vec<String> = (0..=MAX_TAGS).map(|i| format!("k{i}:v")).collect();
        let mut argv = vec!["7"];
        for t in &tags {
            argv.extend(["--tag", t.as_str()]);
        }
        assert!(watch_config(&argv).is_err_and(|e| e.contains("tags given")));
    }

    #[test]
    fn seconds_are_validated() {
        assert_eq!(parse_secs("0.25"), Ok(0.25));
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("NaN").is_err());
        assert!(parse_secs("inf").is_err());
        assert!(parse_secs("abc").is_err());
        assert!(parse_interval("0").is_err());
        assert_eq!(parse_interval("0.01"), Ok(0.01));
        assert!(parse_dump_gap("0").is_err());
        assert!(parse_threshold("0").is_err());
        assert!(parse_pid("0").is_err());
        assert!(parse_pid("-5").is_err());
        assert_eq!(parse_pid("42"), Ok(42));
    }
}
