//! Errors of the engine, classified by what the caller does next.

use std::path::PathBuf;

/// What a caller should do about an [`Error`]; the CLI maps each to an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The process does not exist or exited (exit code 5).
    Gone,
    /// Not allowed to read or trace the process (exit code 4).
    Permission,
    /// The process exports no usable heartbeat (exit code 3); `dump` still works.
    NoHeartbeat,
    /// Anything else: I/O on our side, unexpected kernel answers (exit code 6).
    Other,
}

/// An engine error. Messages are complete sentences an on-call engineer can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No process with this PID exists.
    #[error("no such process: {pid}")]
    NoSuchProcess {
        /// The PID asked for.
        pid: i32,
    },
    /// The process exited while we were reading it.
    #[error("process {pid} exited while being read")]
    Exited {
        /// The PID.
        pid: i32,
    },
    /// Reading or tracing the process was refused.
    #[error("permission denied for process {pid}: {hint}")]
    PermissionDenied {
        /// The PID.
        pid: i32,
        /// What to do about it (CAP_SYS_PTRACE, ptrace_scope, user).
        hint: String,
    },
    /// Another tracer holds the process (debugger, strace, another watcher).
    #[error(
        "process {pid} is already traced by PID {tracer_pid} ({tracer_name}); detach it first"
    )]
    AlreadyTraced {
        /// The PID.
        pid: i32,
        /// `TracerPid:` from /proc/PID/status.
        tracer_pid: i32,
        /// The tracer's command name, if readable.
        tracer_name: String,
    },
    /// No valid heartbeat registry was found in the process.
    #[error(
        "process {pid} exports no aiodebug heartbeat{}",
        rejected_suffix(rejected)
    )]
    NoHeartbeat {
        /// The PID.
        pid: i32,
        /// Registries that were found but rejected, with the reason.
        rejected: Vec<String>,
    },
    /// An I/O error on our side or an unexpected answer from the kernel.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file of the target could not be used (unreadable, not ELF, hostile).
    #[error("cannot use {}: {reason}", path.display())]
    BadModule {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

fn rejected_suffix(rejected: &[String]) -> String {
    if rejected.is_empty() {
        " (link the `aiodebug` crate and register a loop; `aiodebug-watch dump` works without it)"
            .to_string()
    } else {
        format!(" that can be trusted; rejected: {}", rejected.join("; "))
    }
}

impl Error {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NoSuchProcess { .. } | Error::Exited { .. } => ErrorKind::Gone,
            Error::PermissionDenied { .. } | Error::AlreadyTraced { .. } => ErrorKind::Permission,
            Error::NoHeartbeat { .. } => ErrorKind::NoHeartbeat,
            Error::Io { .. } | Error::BadModule { .. } => ErrorKind::Other,
        }
    }

    /// Wraps an I/O error with what we were doing.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result with the engine's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
