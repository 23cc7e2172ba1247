//! Before anything is stopped: whether the target can be captured, and
//! the `/proc` facts of each thread (a stopped thread would read as `t`).

use std::path::Path;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::proc::{self, Status};

/// Clock ticks per second of `/proc/PID/stat` times (`USER_HZ`, fixed at 100
/// in the Linux ABI on x86_64).
const USER_HZ: u64 = 100;

/// The status of `pid`, if it may be captured at all (a thread id gives
/// the status of its thread: the caller captures its process instead).
pub(super) fn check(pid: i32) -> Result<Status> {
    if pid <= 0 {
        return Err(Error::NoSuchProcess { pid });
    }
    if pid == std::process::id() as i32 {
        return Err(Error::PermissionDenied {
            pid,
            hint: "a process cannot stop itself to dump its own stacks; run the dump from another process"
                .to_string(),
        });
    }
    proc::read_status(pid)
}

/// Refuses a process that is gone or held by another tracer.
pub(super) fn check_process(pid: i32, status: &Status) -> Result<()> {
    if (status.state == 'Z' || status.state == 'X') && status.threads <= 1 {
        return Err(Error::Exited { pid });
    }
    if status.tracer_pid > 0 && is_own_thread(status.tracer_pid) {
        // Held by an earlier capture of ours: a thread that never reached its
        // stop, or the zombie of a killed target not reaped yet.
        if status.state == 'Z' || status.state == 'X' {
            return Err(Error::Exited { pid });
        }
    } else if status.tracer_pid > 0 {
        let (tracer_pid, tracer_name) =
            proc::tracer_of(pid).unwrap_or((status.tracer_pid, "?".to_string()));
        return Err(Error::AlreadyTraced {
            pid,
            tracer_pid,
            tracer_name,
        });
    }
    Ok(())
}

#[derive(Debug)]
pub(super) struct PreStop {
    pub(super) name: String,
    pub(super) state: char,
    pub(super) cpu_time: Duration,
}

pub(super) fn read_pre_stop(pid: i32, tid: i32) -> Option<PreStop> {
    let stat = proc::read_task_stat(pid, tid).ok()?;
    let ticks = stat.utime_ticks.saturating_add(stat.stime_ticks);
    Some(PreStop {
        name: stat.comm,
        state: stat.state,
        cpu_time: Duration::from_millis(ticks.saturating_mul(1000 / USER_HZ)),
    })
}

/// Whether `tid` is a thread of this process.
pub(super) fn is_own_thread(tid: i32) -> bool {
    Path::new(&format!("/proc/self/task/{tid}")).exists()
}

/// Whether thread `tid` is gone or exiting (a zombie, or no longer listed).
pub(super) fn thread_exited(pid: i32, tid: i32) -> bool {
    match proc::read_task_stat(pid, tid) {
        Ok(st) => st.state == 'Z' || st.state == 'X',
        Err(_) => true,
    }
}

/// Whether the process still runs: its main thread may be a zombie (it
/// called `pthread_exit`) while other threads live on.
pub(super) fn process_alive(pid: i32) -> bool {
    match proc::read_status(pid) {
        Ok(st) => (st.state != 'Z' && st.state != 'X') || st.threads > 1,
        Err(_) => false,
    }
}

/// Why seizing the process was refused: already traced, or not allowed.
pub(super) fn refusal(pid: i32, tid: i32) -> Error {
    if let Some((tracer_pid, tracer_name)) = proc::tracer_of(tid).or_else(|| proc::tracer_of(pid)) {
        return Error::AlreadyTraced {
            pid,
            tracer_pid,
            tracer_name,
        };
    }
    Error::PermissionDenied {
        pid,
        hint: proc::permission_hint(pid),
    }
}
