//! `dump` (being written for issue 3; this stub only keeps the crate building).

use std::process::ExitCode;

/// Arguments of `dump`.
#[derive(clap::Args, Debug)]
pub struct DumpArgs {
    /// Process id of the target.
    pub pid: i32,
}

/// Runs `dump`.
pub fn run(_args: &DumpArgs) -> ExitCode {
    eprintln!("aiodebug-watch: dump is not implemented yet");
    ExitCode::from(crate::exit::OTHER)
}
