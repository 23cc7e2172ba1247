//! The raw system calls of a capture (the only `unsafe` of [`super`]):
//! ptrace requests nix does not wrap as needed, `waitpid` that keeps stops
//! by real-time signals, the signal mask and scheduling policy of the
//! capture thread, and register conversion.

use nix::libc;

use crate::snapshot::Registers;

/// `ptrace(request, tid, 0, data)` for requests whose `data` is an integer
/// (a signal number) and whose `addr` is unused.
pub(super) fn ptrace_int(request: libc::c_uint, tid: i32, data: libc::c_long) -> nix::Result<()> {
    // SAFETY: PTRACE_CONT and PTRACE_DETACH (the only requests passed here)
    // read no memory of ours: `addr` is ignored and `data` is a signal number
    // passed by value.
    let r = unsafe {
        libc::ptrace(
            request,
            tid as libc::pid_t,
            std::ptr::null_mut::<libc::c_void>(),
            data as *mut libc::c_void,
        )
    };
    if r == -1 {
        Err(nix::errno::Errno::last())
    } else {
        Ok(())
    }
}

/// `waitpid(tid, &status, __WALL | WNOHANG)`: `Ok(None)` when nothing is
/// reported yet. Raw, because nix cannot decode stops by real-time signals
/// (and would lose them).
pub(super) fn waitpid_nohang(tid: i32) -> nix::Result<Option<i32>> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: `status` is a valid, writable c_int for the duration of the call.
        let r = unsafe {
            libc::waitpid(
                tid as libc::pid_t,
                &mut status,
                libc::__WALL | libc::WNOHANG,
            )
        };
        match r {
            0 => return Ok(None),
            -1 => match nix::errno::Errno::last() {
                nix::errno::Errno::EINTR => continue,
                e => return Err(e),
            },
            _ => return Ok(Some(status)),
        }
    }
}

/// The calling thread's id.
pub(super) fn gettid() -> i32 {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::gettid() }
}

pub(super) fn to_registers(r: &libc::user_regs_struct) -> Registers {
    Registers {
        rip: r.rip,
        rsp: r.rsp,
        rbp: r.rbp,
        rax: r.rax,
        rbx: r.rbx,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        r8: r.r8,
        r9: r.r9,
        r10: r.r10,
        r11: r.r11,
        r12: r.r12,
        r13: r.r13,
        r14: r.r14,
        r15: r.r15,
        eflags: r.eflags,
        orig_rax: r.orig_rax,
        fs_base: r.fs_base,
    }
}

/// Blocks the job-control stop signals (SIGTSTP, SIGTTIN, SIGTTOU) in the
/// calling thread while it holds a target, so that a Ctrl-Z cannot suspend
/// us mid-capture with the target frozen: the signal stays pending and
/// takes effect after the detach, when the previous mask is restored.
/// (SIGSTOP cannot be blocked; other threads of a multi-threaded host are
/// not covered.)
pub(super) struct JobControlBlocked(Option<nix::sys::signal::SigSet>);

impl JobControlBlocked {
    pub(super) fn new() -> JobControlBlocked {
        use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};
        let mut set = SigSet::empty();
        set.add(Signal::SIGTSTP);
        set.add(Signal::SIGTTIN);
        set.add(Signal::SIGTTOU);
        let mut old = SigSet::empty();
        match pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old)) {
            Ok(()) => JobControlBlocked(Some(old)),
            Err(_) => JobControlBlocked(None),
        }
    }
}

impl Drop for JobControlBlocked {
    fn drop(&mut self) {
        if let Some(old) = self.0.take() {
            let _ = nix::sys::signal::pthread_sigmask(
                nix::sys::signal::SigmaskHow::SIG_SETMASK,
                Some(&old),
                None,
            );
        }
    }
}

/// Runs the calling thread as `SCHED_FIFO` (priority 1) while it detaches,
/// when allowed (`CAP_SYS_NICE` or `RLIMIT_RTPRIO`): each `PTRACE_DETACH`
/// wakes a target thread, and a woken thread preempts its waker, so every
/// detach would cost two context switches while the rest of the target is
/// still frozen (measured: 256 detaches took 2.5–5 ms, 0.7–1.2 ms this way).
/// The previous policy is restored on drop; a thread already real-time is
/// left alone. The boosted section is bounded: one `PTRACE_DETACH` per thread.
pub(super) struct RealTime(Option<(libc::c_int, libc::sched_param)>);

impl RealTime {
    pub(super) fn new(enabled: bool) -> RealTime {
        if !enabled {
            return RealTime(None);
        }
        // SAFETY: the pointers passed are to valid, initialized locals that
        // outlive the calls; pid 0 means the calling thread only.
        unsafe {
            let old_policy = libc::sched_getscheduler(0);
            if old_policy != libc::SCHED_OTHER && old_policy != libc::SCHED_BATCH {
                return RealTime(None);
            }
            let mut old = libc::sched_param { sched_priority: 0 };
            if libc::sched_getparam(0, &mut old) != 0 {
                return RealTime(None);
            }
            let rt = libc::sched_param { sched_priority: 1 };
            if libc::sched_setscheduler(0, libc::SCHED_FIFO, &rt) != 0 {
                return RealTime(None);
            }
            RealTime(Some((old_policy, old)))
        }
    }
}

impl Drop for RealTime {
    fn drop(&mut self) {
        if let Some((policy, param)) = self.0.take() {
            // SAFETY: as in `new`: a valid local, the calling thread only.
            unsafe {
                libc::sched_setscheduler(0, policy, &param);
            }
        }
    }
}
