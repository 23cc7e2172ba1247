//! Standard output that never panics and never stops the work.
//!
//! `println!` panics when stdout is closed (`| head`) or full (`> /dev/full`).
//! Every line of ours goes through [`line()`] instead: a reader that went away
//! (`EPIPE`) ends our output quietly, and any other failure (`ENOSPC`, `EIO`)
//! is said once on stderr. Either way the caller carries on: `watch` keeps
//! writing its files and StatsD, one-shot commands finish with their own
//! exit code, or [`crate::exit::OTHER`] where output was lost to an error
//! ([`lost()`]).

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};

const OPEN: u8 = 0;
const CLOSED: u8 = 1;
const FAILED: u8 = 2;

/// The state of our stdout: open, closed by its reader, or failed.
static STATE: AtomicU8 = AtomicU8::new(OPEN);

/// Writes `text` and a newline to stdout and flushes it. Returns whether it
/// was written; after the first failure nothing more is attempted.
pub fn line(text: fmt::Arguments<'_>) -> bool {
    bytes_with(|out| writeln!(out, "{text}"))
}

/// Writes `bytes` to stdout as they are (see [`line()`]).
pub fn bytes(data: &[u8]) -> bool {
    bytes_with(|out| out.write_all(data))
}

fn bytes_with(
    write: impl FnOnce(&mut std::io::StdoutLock<'static>) -> std::io::Result<()>,
) -> bool {
    if STATE.load(Ordering::Relaxed) != OPEN {
        return false;
    }
    let mut out = std::io::stdout().lock();
    match write(&mut out).and_then(|()| out.flush()) {
        Ok(()) => true,
        Err(e) => {
            failed(&e);
            false
        }
    }
}

/// Records a write error on stdout: silent for a reader that went away,
/// one warning on stderr otherwise.
fn failed(e: &std::io::Error) {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        STATE.store(CLOSED, Ordering::Relaxed);
    } else if STATE.swap(FAILED, Ordering::Relaxed) != FAILED {
        err_line(format_args!(
            "aiodebug-watch: warning: cannot write to standard output: {e}; output is lost from here on"
        ));
    }
}

/// Whether output was lost to a write error (not to a closed pipe): `main`
/// then turns success into [`crate::exit::OTHER`].
pub fn lost() -> bool {
    STATE.load(Ordering::Relaxed) == FAILED
}

/// `println!` through [`line()`]: never panics.
#[macro_export]
macro_rules! outln {
    () => {{
        $crate::out::line(format_args!(""));
    }};
    ($($arg:tt)*) => {{
        $crate::out::line(format_args!($($arg)*));
    }};
}

/// `eprintln!` that never panics: a stderr that is closed or whose reader
/// went away (`2>&1 | head`) loses the message, nothing else.
pub fn err_line(text: fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{text}");
}

/// `eprintln!` through [`err_line()`]: never panics.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::out::err_line(format_args!($($arg)*))
    };
}

/// Our stdout as an [`std::io::Write`] for writers that take one (the watch's
/// event log): every write goes through [`bytes()`], so it never panics,
/// and it reports success even when the output is lost. Why: the caller
/// carries on either way, and [`bytes()`] already said (once) or recorded
/// ([`lost()`]) what went wrong.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        bytes(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // `bytes()` flushes each write.
        Ok(())
    }
}
