//! Command-line definitions, parsed once into plain values. The man page and
//! shell completions are generated from these same definitions.

use clap::{Args, Parser, Subcommand};

/// Exit codes, identical for every subcommand.
pub const EXIT_CODES: &str = "\
Exit codes (the same for every subcommand):
  0  healthy / success
  1  a loop stalled past the threshold
  2  usage error
  3  the target exports no aiodebug heartbeat (link the `aiodebug` crate; `dump` works on any process)
  4  permission denied or cannot attach (needs the same user or CAP_SYS_PTRACE; see kernel.yama.ptrace_scope; or the process is already traced)
  5  no such process, or it exited
  6  any other error (e.g. output not writable)";

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
    /// Print the stacks of every thread of a process (any process, heartbeat or not).
    #[command(after_help = EXIT_CODES)]
    Dump(crate::dump::DumpArgs),
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
    pub pid: i32,
    /// A loop whose next tick is overdue by more than this many seconds is stalled (exit 1).
    #[arg(long, default_value_t = 0.25, value_parser = parse_secs)]
    pub threshold: f64,
    /// One JSON object per line on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `list`.
#[derive(Args, Debug, Clone)]
pub struct ListArgs {
    /// A loop overdue by more than this many seconds is shown as stalled.
    #[arg(long, default_value_t = 0.25, value_parser = parse_secs)]
    pub threshold: f64,
    /// One JSON object per line on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `demo`.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// How long to watch, in seconds.
    #[arg(long, default_value_t = 12.0, value_parser = parse_secs)]
    pub duration: f64,
    /// Stall threshold in seconds.
    #[arg(long, default_value_t = 0.25, value_parser = parse_secs)]
    pub threshold: f64,
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
    fn seconds_are_validated() {
        assert_eq!(parse_secs("0.25"), Ok(0.25));
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("NaN").is_err());
        assert!(parse_secs("inf").is_err());
        assert!(parse_secs("abc").is_err());
    }
}
