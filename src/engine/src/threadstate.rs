//! What the kernel says a thread is doing right now, without stopping it:
//! the system call it is blocked in (`/proc/PID/task/TID/syscall`) and how
//! often it gave up the CPU (`voluntary_ctxt_switches` of `.../status`).
//!
//! A runtime worker that waits for work is blocked in `futex` (parked on its
//! condition variable) or `epoll_wait`/`epoll_pwait`/`epoll_pwait2` (the one
//! holding the I/O driver). A worker stuck in a handler is somewhere else: in
//! user space (`running`, or preempted), or blocked in another call
//! (`clock_nanosleep` of `std::thread::sleep`, a blocking `read`). A thread
//! that stays out of its park without one voluntary context switch has not
//! parked in between, however often it was sampled.
//!
//! What this cannot tell: a worker blocked on a `std::sync::Mutex` waits in
//! `futex` too and looks parked; a worker busy with many short polls without
//! ever blocking looks like one stuck in one long computation. The runtime's
//! own counters (the heartbeat's worker board) tell those apart.
//!
//! Reading `syscall` needs the same permission as ptrace (the watcher has
//! it); it does not stop or slow the thread.

use std::path::PathBuf;

/// What `/proc/PID/task/TID/syscall` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syscall {
    /// On a CPU right now (`running`).
    Running,
    /// Blocked, not in a system call (`-1 ...`: preempted, or a page fault).
    NotInSyscall,
    /// Blocked in system call `nr`.
    In(u64),
}

impl Syscall {
    /// Whether this is where an idle event-loop thread waits: `futex`,
    /// `epoll_wait`, `epoll_pwait`, `epoll_pwait2`, `poll`, `ppoll`, `select`,
    /// `pselect6` (numbers of this build's architecture).
    pub fn is_idle_wait(self) -> bool {
        match self {
            Syscall::In(nr) => IDLE_WAITS.contains(&nr),
            _ => false,
        }
    }
}

/// Idle waits on x86_64: poll 7, select 23, futex 202, epoll_wait 232,
/// pselect6 270, ppoll 271, epoll_pwait 281, futex_waitv 449, epoll_pwait2 441.
#[cfg(target_arch = "x86_64")]
const IDLE_WAITS: &[u64] = &[7, 23, 202, 232, 270, 271, 281, 441, 449];
/// Idle waits on aarch64: epoll_pwait 22, pselect6 72, ppoll 73, futex 98,
/// epoll_pwait2 441, futex_waitv 449.
#[cfg(target_arch = "aarch64")]
const IDLE_WAITS: &[u64] = &[22, 72, 73, 98, 441, 449];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const IDLE_WAITS: &[u64] = &[];

/// Parses `/proc/PID/task/TID/syscall`: `running`, `-1 sp pc`, or
/// `nr arg1 ... arg6 sp pc` (nr in decimal). None if malformed.
pub fn parse_syscall(data: &[u8]) -> Option<Syscall> {
    let first = data
        .split(|b| b.is_ascii_whitespace())
        .find(|f| !f.is_empty())?;
    match first {
        b"running" => Some(Syscall::Running),
        b"-1" => Some(Syscall::NotInSyscall),
        digits => std::str::from_utf8(digits)
            .ok()?
            .parse()
            .ok()
            .map(Syscall::In),
    }
}

/// `voluntary_ctxt_switches` of `/proc/PID/task/TID/status`.
pub fn parse_voluntary_switches(status: &[u8]) -> Option<u64> {
    status.split(|&b| b == b'\n').find_map(|line| {
        let v = line.strip_prefix(b"voluntary_ctxt_switches:")?;
        std::str::from_utf8(v).ok()?.trim().parse().ok()
    })
}

/// One look at a thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadState {
    /// Where it is.
    pub syscall: Syscall,
    /// Voluntary context switches so far.
    pub voluntary_switches: u64,
}

impl ThreadState {
    /// Waiting for work, as an idle event-loop thread does.
    pub fn is_idle(&self) -> bool {
        self.syscall.is_idle_wait()
    }
}

/// Files are small; a cap keeps a hostile /proc (FUSE, bind mounts) from
/// making us read without end.
const MAX_FILE: u64 = 64 * 1024;

fn read_capped(path: PathBuf) -> Option<Vec<u8>> {
    crate::proc::read_capped(&path, MAX_FILE).ok()
}

/// Reads only where thread `tid` of `pid` is (one small file; None if it is
/// gone or unreadable).
pub fn read_syscall(pid: i32, tid: u32) -> Option<Syscall> {
    parse_syscall(&read_capped(PathBuf::from(format!(
        "/proc/{pid}/task/{tid}/syscall"
    )))?)
}

/// Reads thread `tid` of `pid` (None if it is gone or unreadable).
pub fn read(pid: i32, tid: u32) -> Option<ThreadState> {
    let base = PathBuf::from(format!("/proc/{pid}/task/{tid}"));
    let syscall = parse_syscall(&read_capped(base.join("syscall"))?)?;
    let voluntary_switches = parse_voluntary_switches(&read_capped(base.join("status"))?)?;
    Some(ThreadState {
        syscall,
        voluntary_switches,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syscall_lines_parse() {
        assert_eq!(parse_syscall(b"running\n"), Some(Syscall::Running));
        assert_eq!(
            parse_syscall(b"-1 0x7ffd3c1a8b40 0x55d0c0a1b2c3\n"),
            Some(Syscall::NotInSyscall)
        );
        let futex = b"202 0x7fa469e25658 0x80 0x0 0x0 0x0 0x0 0x7fa469e25600 0x7fa46a1b2c3d\n";
        assert_eq!(parse_syscall(futex), Some(Syscall::In(202)));
        assert_eq!(parse_syscall(b""), None);
        assert_eq!(parse_syscall(b"garbage 1 2"), None);
        assert_eq!(parse_syscall(b"99999999999999999999999 0x0"), None);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn parks_are_idle_waits_and_sleeps_are_not() {
        assert!(Syscall::In(202).is_idle_wait(), "futex");
        assert!(Syscall::In(232).is_idle_wait(), "epoll_wait");
        assert!(Syscall::In(281).is_idle_wait(), "epoll_pwait");
        assert!(!Syscall::In(230).is_idle_wait(), "clock_nanosleep");
        assert!(!Syscall::In(0).is_idle_wait(), "read");
        assert!(!Syscall::Running.is_idle_wait());
        assert!(!Syscall::NotInSyscall.is_idle_wait());
    }

    #[test]
    fn voluntary_switches_parse() {
        let status = b"Name:\ttokio-rt-worker\nState:\tS (sleeping)\n\
            voluntary_ctxt_switches:\t71\nnonvoluntary_ctxt_switches:\t3\n";
        assert_eq!(parse_voluntary_switches(status), Some(71));
        assert_eq!(parse_voluntary_switches(b"Name:\tx\n"), None);
        assert_eq!(
            parse_voluntary_switches(b"voluntary_ctxt_switches:\tlots\n"),
            None
        );
    }

    #[test]
    fn a_sleeping_thread_is_not_idle_and_a_waiting_one_is() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let sleeper = std::thread::spawn(move || {
            let _ = tx.send(nix::unistd::gettid().as_raw() as u32);
            std::thread::sleep(std::time::Duration::from_millis(400));
            // Then wait on a channel: a futex.
            let _ = release_rx.recv();
        });
        let tid = rx.recv().expect("tid");
        std::thread::sleep(std::time::Duration::from_millis(100));
        let pid = std::process::id() as i32;
        let st = read(pid, tid).expect("the sleeper");
        assert!(!st.is_idle(), "{st:?}");
        std::thread::sleep(std::time::Duration::from_millis(500));
        let st2 = read(pid, tid).expect("the waiter");
        assert!(st2.is_idle(), "{st2:?}");
        assert!(st2.voluntary_switches > st.voluntary_switches);
        let _ = release_tx.send(());
        sleeper.join().expect("join");
        assert_eq!(read(pid, tid), None, "gone");
    }
}
