//! Exit codes and how errors map to them.

use aiodebug_engine::{Error, ErrorKind};
use std::process::ExitCode;

/// Healthy / success.
pub const OK: u8 = 0;
/// A loop stalled past the threshold.
pub const STALLED: u8 = 1;
/// Usage error (clap's own, and checks across arguments).
pub const USAGE: u8 = 2;
/// The target exports no heartbeat.
pub const NO_HEARTBEAT: u8 = 3;
/// Permission denied, or already traced.
pub const PERMISSION: u8 = 4;
/// No such process, or it exited.
pub const GONE: u8 = 5;
/// Any other error.
pub const OTHER: u8 = 6;
/// `symbolize`: the file is missing, unreadable, or not a usable minidump
/// (truncated, corrupt, not x86_64).
pub const BAD_FILE: u8 = 7;

/// The exit code for an engine error.
pub fn code_for(e: &Error) -> u8 {
    match e.kind() {
        ErrorKind::Gone => GONE,
        ErrorKind::Permission => PERMISSION,
        ErrorKind::NoHeartbeat => NO_HEARTBEAT,
        ErrorKind::Other => OTHER,
    }
}

/// Prints an engine error on stderr and returns its exit code.
pub fn report(e: &Error) -> ExitCode {
    crate::errln!("aiodebug-watch: {e}");
    ExitCode::from(code_for(e))
}
