//! What a stop of the target captured: registers, copied stack bytes and
//! `/proc` facts of every thread, and its modules. Pure data, produced by
//! [`crate::attach`] and consumed offline by [`crate::unwind`] and
//! [`crate::symbols`] once the target runs again (or is gone).

use std::time::{Duration, SystemTime};

use crate::cause::capture::CauseFacts;
use crate::memory::{ReadMemory, ReadResult};
use crate::module::{Modules, TargetFiles};
use crate::proc::MapEntry;

/// The general-purpose registers of one x86_64 thread (`user_regs_struct`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Registers {
    /// Instruction pointer.
    pub rip: u64,
    /// Stack pointer.
    pub rsp: u64,
    /// Frame pointer (or a general register in code built without one).
    pub rbp: u64,
    /// rax.
    pub rax: u64,
    /// rbx.
    pub rbx: u64,
    /// rcx.
    pub rcx: u64,
    /// rdx.
    pub rdx: u64,
    /// rsi.
    pub rsi: u64,
    /// rdi.
    pub rdi: u64,
    /// r8.
    pub r8: u64,
    /// r9.
    pub r9: u64,
    /// r10.
    pub r10: u64,
    /// r11.
    pub r11: u64,
    /// r12.
    pub r12: u64,
    /// r13.
    pub r13: u64,
    /// r14.
    pub r14: u64,
    /// r15.
    pub r15: u64,
    /// rflags.
    pub eflags: u64,
    /// The syscall number the thread was in (`orig_rax`), or -1 as u64.
    pub orig_rax: u64,
    /// Thread-local storage base.
    pub fs_base: u64,
}

/// How a thread was held while the snapshot was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopKind {
    /// Stopped by our `PTRACE_INTERRUPT`: it ran until then and runs again after.
    Interrupted,
    /// It was already in a job-control stop (SIGSTOP, SIGTSTP, …, signal number
    /// given); it stays stopped after the snapshot.
    JobControl(i32),
    /// It could not be stopped (reason given): no registers, no stack.
    NotStopped(String),
}

/// One thread as captured while the whole process was stopped.
#[derive(Debug, Clone)]
pub struct ThreadSnapshot {
    /// Thread id.
    pub tid: i32,
    /// Thread name (`comm`), as set by `pthread_setname_np` / `prctl`.
    pub name: String,
    /// Scheduler state letter from `/proc/PID/task/TID/stat`, sampled just
    /// before the stop (a stopped thread reads as `t`): `R`, `S`, `D`, `T`, …
    pub state: char,
    /// User + system CPU time consumed by the thread, sampled just before the stop.
    pub cpu_time: Duration,
    /// How the thread was held.
    pub stop: StopKind,
    /// Registers, if the thread was stopped.
    pub regs: Option<Registers>,
    /// Address of `stack[0]` (the stack pointer at the stop).
    pub stack_start: u64,
    /// Copied stack bytes, from the stack pointer towards the end of its mapping.
    pub stack: Vec<u8>,
    /// Whether the copy stopped before the end of the stack's mapping (cap reached).
    pub stack_truncated: bool,
    /// Why no stack (or less than asked) could be copied, if something failed.
    pub stack_error: Option<String>,
    /// For a thread that could not be stopped: where it waits in the kernel,
    /// read just after the others were let go.
    pub kernel_wait: Option<KernelWait>,
}

/// The copied stack is the thread's memory as the offline stage sees it:
/// what was not copied is unreadable.
impl ReadMemory for ThreadSnapshot {
    fn read(&self, addr: u64, buf: &mut [u8]) -> ReadResult<usize> {
        let src = addr
            .checked_sub(self.stack_start)
            .and_then(|off| usize::try_from(off).ok())
            .and_then(|off| self.stack.get(off..))
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("0x{addr:x} is not in the copied stack"))?;
        let n = src.len().min(buf.len());
        if let (Some(d), Some(s)) = (buf.get_mut(..n), src.get(..n)) {
            d.copy_from_slice(s);
        }
        Ok(n)
    }
}

/// Where a thread waits inside the kernel (`/proc/PID/task/TID/wchan` and
/// `/proc/PID/task/TID/stack`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelWait {
    /// The kernel function it sleeps in, if the kernel tells (`wchan`).
    pub wchan: Option<String>,
    /// Kernel stack, innermost first, function names only (readable by root
    /// only; empty otherwise). At most [`KernelWait::MAX_FRAMES`] frames.
    pub stack: Vec<String>,
}

impl KernelWait {
    /// Most kernel frames kept.
    pub const MAX_FRAMES: usize = 32;
}

impl ThreadSnapshot {
    /// Reads the 8 bytes at `addr` from the copied stack, if they were copied
    /// (through [`ReadMemory`], as the unwinder reads it).
    pub fn read_u64(&self, addr: u64) -> Option<u64> {
        let mut bytes = [0u8; 8];
        match self.read(addr, &mut bytes) {
            Ok(8) => Some(u64::from_le_bytes(bytes)),
            _ => None,
        }
    }

    /// One past the last copied stack address.
    pub fn stack_end(&self) -> u64 {
        self.stack_start.saturating_add(self.stack.len() as u64)
    }
}

/// Where the time of one capture went (the last three are the freeze).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapturePhases {
    /// /proc reads and `PTRACE_SEIZE`s before the first interrupt.
    pub prepare: Duration,
    /// From the first `PTRACE_INTERRUPT` until every stop was collected
    /// (rescans of /proc/PID/task included).
    pub stop: Duration,
    /// Registers and stack copies.
    pub copy: Duration,
    /// Detaching every thread.
    pub detach: Duration,
}

/// Every thread of a process, captured in one stop.
#[derive(Debug, Clone)]
pub struct ProcessSnapshot {
    /// Process id.
    pub pid: i32,
    /// Process name (`comm` of the main thread).
    pub name: String,
    /// Wall-clock time of the stop.
    pub taken_at: SystemTime,
    /// Time between the first `PTRACE_INTERRUPT` and the last `PTRACE_DETACH`:
    /// the longest any thread was held by us.
    pub freeze: Duration,
    /// Time spent in the whole capture (including /proc reads before the stop).
    pub capture: Duration,
    /// The capture's phases.
    pub phases: CapturePhases,
    /// Threads in `/proc/PID/task` order (main thread first).
    pub threads: Vec<ThreadSnapshot>,
    /// The target's mappings, read just before the stop (re-read during the
    /// stop if a stack pointer was outside them).
    pub maps: Vec<MapEntry>,
    /// The modules (path, build-id, bias, ranges, opened file, the vDSO's
    /// image), captured just before the stop: with them the offline stage
    /// reads nothing of the target ([`crate::dump::Dumper::process_with`]).
    pub modules: Modules,
    /// The target's files: its root directory, opened while it was alive.
    pub files: TargetFiles,
    /// Threads that exited while the snapshot was being taken.
    pub vanished: Vec<i32>,
    /// The whole process exited during the snapshot: what was captured is partial.
    pub exited: bool,
    /// What the causes of its threads need beyond their registers (fd
    /// targets, sockets, a lock's owner, …), read right after the detach
    /// by [`crate::dump::Dumper`]; empty from [`crate::attach::snapshot`]
    /// alone, or when not asked for ([`crate::cause::capture::CauseScope`]).
    pub cause: CauseFacts,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_snapshot_reads_its_copied_stack_only() {
        let t = ThreadSnapshot {
            tid: 1,
            name: "t".into(),
            state: 'S',
            cpu_time: std::time::Duration::ZERO,
            stop: StopKind::Interrupted,
            regs: None,
            stack_start: 0x7000,
            stack: (0u8..16).collect(),
            stack_truncated: false,
            stack_error: None,
            kernel_wait: None,
        };
        assert_eq!(
            t.read_u64(0x7008),
            Some(u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]))
        );
        assert_eq!(t.read_u64(0x7009), None, "past the copy");
        assert_eq!(t.read_u64(0x6fff), None, "before it");
        let mut buf = [0u8; 32];
        assert_eq!(t.read(0x700c, &mut buf), Ok(4));
        assert!(t.read(0x7010, &mut buf).is_err());
    }
}
