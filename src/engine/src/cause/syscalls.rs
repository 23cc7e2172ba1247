//! System calls from registers: the number and arguments a stopped thread
//! was in (x86_64: `orig_rax`, `rdi rsi rdx r10 r8 r9`; aarch64: `x8`,
//! `x0`–`x5`), names from the tables of [`super::table`], and what each
//! argument of the calls that block is (a file descriptor, a path, a
//! timespec, a child, a futex word).

use crate::snapshot::Registers;

use super::table;

/// Instruction set of the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// x86_64 (the registers [`Registers`] holds).
    X86_64,
    /// aarch64 (names only: the capture holds x86_64 registers).
    Aarch64,
}

/// The name of system call `nr` on `arch`, if it has one.
pub fn name(arch: Arch, nr: u64) -> Option<&'static str> {
    let t: &[&str] = match arch {
        Arch::X86_64 => &table::X86_64,
        Arch::Aarch64 => &table::AARCH64,
    };
    let n = usize::try_from(nr).ok()?;
    t.get(n).copied().filter(|s| !s.is_empty())
}

/// The number of system call `name` on `arch`.
pub fn number(arch: Arch, name: &str) -> Option<u64> {
    let t: &[&str] = match arch {
        Arch::X86_64 => &table::X86_64,
        Arch::Aarch64 => &table::AARCH64,
    };
    t.iter().position(|n| *n == name).map(|i| i as u64)
}

/// `-ERESTARTSYS`, `-ERESTARTNOINTR`, `-ERESTARTNOHAND`,
/// `-ERESTART_RESTARTBLOCK`: the return value the kernel leaves in the
/// result register of a blocking call that our stop interrupted (it is
/// restarted when the thread resumes).
const RESTART_CODES: [i64; 4] = [-512, -513, -514, -516];

/// A system call a thread was in when it was stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Its number.
    pub nr: u64,
    /// Its name (`None` for a number without one).
    pub name: Option<&'static str>,
    /// The six argument registers.
    pub args: [u64; 6],
    /// The stop interrupted it while it blocked (the result register holds
    /// a restart code, or the kernel reported it blocked in it).
    pub blocked: bool,
    /// The call was `restart_syscall`, resuming this thread's earlier call
    /// (seen in a previous capture at the same instruction).
    pub resumed: bool,
}

impl Call {
    /// The name, or `syscall_N`.
    pub fn display_name(&self) -> String {
        match self.name {
            Some(n) => n.to_string(),
            None => format!("syscall_{}", self.nr),
        }
    }

    /// The call as numbers: `clock_nanosleep [230] (0x0, 0x0, 0x7ffc…)`,
    /// only the arguments the call takes (all six when unknown).
    pub fn raw(&self) -> String {
        let n = self.name.map_or(6, arg_count);
        let args: Vec<String> = self
            .args
            .iter()
            .take(n)
            .map(|a| format!("0x{a:x}"))
            .collect();
        format!(
            "{} [{}] ({})",
            self.display_name(),
            self.nr,
            args.join(", ")
        )
    }
}

/// A call remembered from an earlier capture of the same thread: a
/// `restart_syscall` at the same instruction resumes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remembered {
    /// Instruction pointer after the `syscall` instruction.
    pub ip: u64,
    /// The call.
    pub call: Call,
}

/// The system call a stopped x86_64 thread was in, if any. `previous` is
/// what an earlier capture saw: when our earlier stop interrupted a sleep
/// (`clock_nanosleep`, `futex` with a timeout, `poll`), the kernel resumes
/// it as `restart_syscall` at the same instruction, with the argument
/// registers untouched; the earlier call is then reported, marked resumed.
pub fn from_regs(regs: &Registers, previous: Option<&Remembered>) -> Option<Call> {
    // orig_rax is -1 (as u64) outside system calls.
    if regs.orig_rax > u64::from(u32::MAX) {
        return None;
    }
    let nr = regs.orig_rax;
    let args = [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9];
    let blocked = RESTART_CODES.contains(&(regs.rax as i64));
    if name(Arch::X86_64, nr) == Some("restart_syscall") {
        if let Some(p) = previous.filter(|p| p.ip == regs.rip && p.call.args == args) {
            return Some(Call {
                blocked,
                resumed: true,
                ..p.call.clone()
            });
        }
    }
    Some(Call {
        nr,
        name: name(Arch::X86_64, nr),
        args,
        blocked,
        resumed: false,
    })
}

/// A call as `/proc/PID/task/TID/syscall` reported it (for a thread that
/// could not be stopped): it is blocked in it by definition.
pub fn from_proc(arch: Arch, nr: u64, args: [u64; 6]) -> Call {
    Call {
        nr,
        name: name(arch, nr),
        args,
        blocked: true,
        resumed: false,
    }
}

/// What an argument of a system call is, for resolving it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg {
    /// A file descriptor.
    Fd,
    /// A NUL-terminated path in the caller's memory.
    Path,
    /// A `struct timespec *` to sleep for (or until, with `TIMER_ABSTIME`).
    Timespec,
    /// A process id to wait for (`wait4`: > 0 a child, -1 any, 0 or < -1 a group).
    WaitPid,
    /// A futex word's address.
    Futex,
    /// A `struct pollfd *` (the next argument is the count).
    PollFds,
    /// A timeout in milliseconds (`poll`, `epoll_wait`; -1 forever).
    TimeoutMs,
}

/// The arguments worth resolving of a call, by position.
pub fn arg_roles(name: &str) -> &'static [(usize, Arg)] {
    use Arg::*;
    match name {
        "read" | "write" | "pread64" | "pwrite64" | "readv" | "writev" | "preadv" | "pwritev"
        | "preadv2" | "pwritev2" | "recvfrom" | "sendto" | "recvmsg" | "sendmsg" | "recvmmsg"
        | "sendmmsg" | "connect" | "accept" | "accept4" | "fsync" | "fdatasync" | "flock"
        | "fcntl" | "ioctl" | "sync_file_range" | "fallocate" | "ftruncate" | "getdents64"
        | "shutdown" | "close" | "lseek" | "fstat" => &[(0, Fd)],
        "epoll_wait" | "epoll_pwait" => &[(0, Fd), (3, TimeoutMs)],
        "epoll_pwait2" => &[(0, Fd)],
        "sendfile" => &[(0, Fd), (1, Fd)],
        "splice" | "copy_file_range" => &[(0, Fd), (2, Fd)],
        "tee" => &[(0, Fd), (1, Fd)],
        "poll" => &[(0, PollFds), (2, TimeoutMs)],
        "ppoll" => &[(0, PollFds)],
        "open" | "stat" | "lstat" | "access" | "execve" | "unlink" | "mkdir" | "rmdir"
        | "rename" | "chdir" | "readlink" | "truncate" | "creat" | "chmod" | "chown" | "statfs"
        | "link" | "symlink" | "mknod" | "utimes" => &[(0, Path)],
        "openat" | "openat2" | "newfstatat" | "statx" | "faccessat" | "faccessat2" | "unlinkat"
        | "mkdirat" | "renameat" | "renameat2" | "readlinkat" | "fchmodat" | "fchownat"
        | "execveat" | "mknodat" | "utimensat" | "name_to_handle_at" => &[(1, Path)],
        "nanosleep" => &[(0, Timespec)],
        "clock_nanosleep" => &[(2, Timespec)],
        "wait4" => &[(0, WaitPid)],
        "futex" => &[(0, Futex)],
        _ => &[],
    }
}

/// How many arguments a call takes, for raw output (6 when unknown).
fn arg_count(name: &str) -> usize {
    match name {
        "restart_syscall" | "pause" | "sched_yield" | "vfork" | "fork" | "sync" => 0,
        "close" | "fsync" | "fdatasync" | "chdir" | "exit" | "exit_group" | "rmdir" => 1,
        "nanosleep" | "flock" | "shutdown" | "listen" | "access" | "stat" | "lstat" | "fstat"
        | "mkdir" | "rename" | "truncate" | "ftruncate" | "munmap" => 2,
        "read" | "write" | "readv" | "writev" | "connect" | "accept" | "poll" | "open"
        | "fcntl" | "ioctl" | "lseek" | "getdents64" | "execve" | "waitid" => 3,
        "pread64" | "pwrite64" | "epoll_wait" | "clock_nanosleep" | "wait4" | "openat"
        | "accept4" | "newfstatat" | "ppoll" | "sendfile" | "renameat" | "openat2" => 4,
        "statx" | "select" | "pselect6" | "epoll_pwait2" => 5,
        _ => 6,
    }
}

/// Whether a `futex` call with operation word `op` waits (as opposed to
/// waking, requeueing, unlocking).
pub fn futex_waits(op: u64) -> bool {
    // FUTEX_CMD_MASK strips FUTEX_PRIVATE_FLAG (128) and FUTEX_CLOCK_REALTIME (256).
    matches!(op & 0x7f, 0 | 6 | 9 | 11 | 13)
}

/// Whether futex operation `op` is a priority-inheritance lock (the futex
/// word itself then holds the owner's TID).
pub fn futex_is_pi(op: u64) -> bool {
    matches!(op & 0x7f, 6 | 11 | 13)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs(orig_rax: u64, rax: i64, rip: u64, args: [u64; 6]) -> Registers {
        Registers {
            orig_rax,
            rax: rax as u64,
            rip,
            rdi: args[0],
            rsi: args[1],
            rdx: args[2],
            r10: args[3],
            r8: args[4],
            r9: args[5],
            ..Registers::default()
        }
    }

    #[test]
    fn names_on_both_architectures() {
        assert_eq!(name(Arch::X86_64, 0), Some("read"));
        assert_eq!(name(Arch::X86_64, 202), Some("futex"));
        assert_eq!(name(Arch::X86_64, 230), Some("clock_nanosleep"));
        assert_eq!(name(Arch::X86_64, 61), Some("wait4"));
        assert_eq!(name(Arch::X86_64, 257), Some("openat"));
        assert_eq!(name(Arch::X86_64, 219), Some("restart_syscall"));
        assert_eq!(name(Arch::X86_64, 100_000), None);
        assert_eq!(name(Arch::Aarch64, 63), Some("read"));
        assert_eq!(name(Arch::Aarch64, 98), Some("futex"));
        assert_eq!(name(Arch::Aarch64, 115), Some("clock_nanosleep"));
        assert_eq!(name(Arch::Aarch64, 260), Some("wait4"));
        assert_eq!(name(Arch::Aarch64, 56), Some("openat"));
        assert_eq!(number(Arch::X86_64, "epoll_wait"), Some(232));
        assert_eq!(number(Arch::Aarch64, "epoll_pwait"), Some(22));
    }

    #[test]
    fn a_blocked_read_and_user_code() {
        let r = regs(0, -512, 0x7f00_0000_1000, [7, 0x7ffc_0000, 4096, 0, 0, 0]);
        let c = from_regs(&r, None).unwrap();
        assert_eq!(c.name, Some("read"));
        assert!(c.blocked && !c.resumed);
        assert_eq!(c.args[0], 7);
        assert_eq!(c.raw(), "read [0] (0x7, 0x7ffc0000, 0x1000)");
        // Just returned 12 bytes: in a call, not blocked.
        let done = from_regs(&regs(0, 12, 0x1000, [7, 0, 0, 0, 0, 0]), None).unwrap();
        assert!(!done.blocked);
        // User code: orig_rax is -1.
        assert!(from_regs(&regs(u64::MAX, 0, 0x1000, [0; 6]), None).is_none());
    }

    #[test]
    fn restart_syscall_resumes_the_remembered_call() {
        let args = [1, 0, 0x7ffc_1000, 0x7ffc_1000, 0, 0];
        let first = from_regs(&regs(230, -516, 0x4010, args), None).unwrap();
        assert_eq!(first.name, Some("clock_nanosleep"));
        let mem = Remembered {
            ip: 0x4010,
            call: first.clone(),
        };
        let again = from_regs(&regs(219, -516, 0x4010, args), Some(&mem)).unwrap();
        assert_eq!(again.name, Some("clock_nanosleep"));
        assert!(again.resumed && again.blocked);
        // Elsewhere: a restart_syscall of unknown origin.
        let other = from_regs(&regs(219, -516, 0x5000, args), Some(&mem)).unwrap();
        assert_eq!(other.name, Some("restart_syscall"));
        assert!(!other.resumed);
    }

    #[test]
    fn futex_operations() {
        assert!(futex_waits(128)); // FUTEX_WAIT_PRIVATE
        assert!(futex_waits(137)); // FUTEX_WAIT_BITSET_PRIVATE
        assert!(futex_waits(393)); // | FUTEX_CLOCK_REALTIME
        assert!(!futex_waits(129)); // FUTEX_WAKE_PRIVATE
        assert!(futex_is_pi(134)); // FUTEX_LOCK_PI_PRIVATE
        assert!(!futex_is_pi(128));
        assert_eq!(arg_roles("openat"), &[(1, Arg::Path)]);
        assert_eq!(arg_roles("nothing"), &[]);
    }
}
