//! Stopping every thread of a process for the shortest possible time.
//!
//! 1. `PTRACE_SEIZE` every known thread (does not stop it), then
//!    `PTRACE_INTERRUPT` each, then collect each stop with
//!    `waitpid(tid, __WALL)`; rescan `/proc/PID/task` until no new thread
//!    appears. Threads that exit meanwhile are skipped; signals that arrive
//!    meanwhile are re-injected; a job-control stop (SIGSTOP…) is reported as
//!    such and survives the detach.
//! 2. While stopped, only: `PTRACE_GETREGS` and one `process_vm_readv` of the
//!    stack per thread (from the stack pointer to the end of its mapping,
//!    capped).
//! 3. Detach every thread: [`Attached`]'s `Drop` does it, so an early return or
//!    a panic detaches too. `PTRACE_O_EXITKILL` is never set and
//!    `PTRACE_ATTACH` never used: if this process dies at any moment, the
//!    kernel detaches and the target runs on. The detaching thread runs as
//!    `SCHED_FIFO` for that loop when allowed
//!    ([`SnapshotOptions::realtime_detach`]): woken threads then do not
//!    preempt it one by one.
//!
//! ptrace requests must come from the thread that seized: [`Attached`] is not
//! `Send`. [`snapshot`] runs each capture on a **short-lived thread of its
//! own**, because a tracee that never reached its stop (a thread in
//! uninterruptible sleep, `D`, e.g. a `vfork` parent or an NFS read) cannot be
//! detached with `PTRACE_DETACH` (it must be stopped first), and would enter a
//! ptrace stop as soon as its sleep ends, held by a tracer that has moved on.
//! The kernel detaches every tracee of a tracer *thread* when that thread
//! exits (`exit_ptrace`, which also cancels the pending interrupt): so when the
//! capture thread ends, no thread of the target stays traced, whatever state it
//! was in. A child process would give the same guarantee but would have to
//! ship the snapshot back through a pipe; a thread costs ~30 µs before the
//! freeze and nothing during it. A thread still in `D` after
//! [`SnapshotOptions::stuck_grace`] is given up (reported with its `wchan` and
//! kernel stack) without extending the others' freeze.
//!
//! All of this crate's raw system calls for ptrace live here (the only other
//! `unsafe` is the file mapping in [`crate::mapped`]).

use std::collections::HashSet;
use std::marker::PhantomData;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nix::libc;
use nix::sys::ptrace;
use nix::unistd::Pid;

use crate::error::{Error, Result};
use crate::memory;
use crate::module::{self, ModuleCache, TargetFiles};
use crate::proc::{self, MapEntry};
use crate::snapshot::{CapturePhases, ProcessSnapshot, Registers, StopKind, ThreadSnapshot};

/// Clock ticks per second of `/proc/PID/stat` times (`USER_HZ`, fixed at 100
/// in the Linux ABI on x86_64).
const USER_HZ: u64 = 100;

/// Limits of one capture.
#[derive(Debug, Clone)]
pub struct SnapshotOptions {
    /// Most bytes of stack copied per thread (default 1 MiB); a longer stack
    /// is marked truncated.
    pub stack_cap: usize,
    /// Most bytes of stack copied for the whole process (default 256 MiB);
    /// past it, each thread gets at most 64 KiB.
    pub total_stack_cap: usize,
    /// How long to wait for a thread to reach its stop (default 250 ms): a
    /// runnable thread on a loaded machine may wait for a CPU first.
    pub stop_timeout: Duration,
    /// How long a thread found in uninterruptible sleep (`D`) is waited for
    /// (default 5 ms): it stops only when its sleep ends, which may be never;
    /// past this it is given up and reported, and the others go on.
    pub stuck_grace: Duration,
    /// How long to keep retrying while another tracer holds the process
    /// (default 150 ms): another `aiodebug-watch` holds it for about a
    /// millisecond per snapshot; a debugger that holds on is reported after it.
    pub busy_retry: Duration,
    /// Most threads captured (default 65 536).
    pub max_threads: usize,
    /// Detach as a `SCHED_FIFO` thread when allowed (default true): a
    /// shorter freeze for targets with many threads (see `RealTime`).
    pub realtime_detach: bool,
    /// Capture only these threads (default: all). A one-thread capture
    /// freezes nothing but that thread (`watch --slow` uses it).
    pub only_threads: Option<Vec<i32>>,
    /// Called while the threads are held, after their registers and stacks
    /// are copied, before the detach (the Python frame walk: `crate::python`).
    pub while_stopped: Option<StoppedHook>,
    /// Facts of module files, kept across snapshots (default: a new cache
    /// per snapshot). The module list is captured before the stop, so it
    /// adds nothing to the freeze.
    pub modules: Option<Arc<Mutex<ModuleCache>>>,
}

/// Reads that must see the target stopped (a consistent frame chain), run by
/// [`snapshot`] after the stack copies and before the detach: what it does
/// adds to the freeze.
pub trait WhileStopped: Send + Sync {
    /// `tids`: the threads of `pid` that are held stopped.
    fn while_stopped(&self, pid: i32, tids: &[i32]);
}

/// A [`WhileStopped`] hook in [`SnapshotOptions`].
#[derive(Clone)]
pub struct StoppedHook(pub std::sync::Arc<dyn WhileStopped>);

impl std::fmt::Debug for StoppedHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoppedHook")
    }
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        SnapshotOptions {
            stack_cap: 1 << 20,
            total_stack_cap: 256 << 20,
            stop_timeout: Duration::from_millis(250),
            stuck_grace: Duration::from_millis(5),
            busy_retry: Duration::from_millis(150),
            max_threads: 1 << 16,
            realtime_detach: true,
            only_threads: None,
            while_stopped: None,
            modules: None,
        }
    }
}

/// Most rescans of `/proc/PID/task` while new threads keep appearing.
const MAX_ROUNDS: usize = 64;
/// Per-thread copy once the total budget is spent.
const SMALL_STACK: usize = 64 << 10;
/// Stack bytes per thread prepared (pre-faulted) before the stop.
const ARENA_PER_THREAD: usize = 32 << 10;
/// Largest pre-faulted copy area.
const MAX_ARENA: usize = 64 << 20;

// ---------------------------------------------------------------------------
// raw system calls

/// `ptrace(request, tid, 0, data)` for requests whose `data` is an integer
/// (a signal number) and whose `addr` is unused.
fn ptrace_int(request: libc::c_uint, tid: i32, data: libc::c_long) -> nix::Result<()> {
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
fn waitpid_nohang(tid: i32) -> nix::Result<Option<i32>> {
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

// ---------------------------------------------------------------------------
// tracees and the RAII guard

#[derive(Debug, Clone, PartialEq, Eq)]
enum TraceeState {
    /// Seized and interrupted; stop not collected yet.
    Pending,
    /// In a ptrace stop (ours to detach).
    Stopped(StopKind),
    /// Exited and reaped (or no longer ours), or detached: nothing left to do.
    Gone,
    /// Died while ours: its exit must still be reaped, or it would stay a
    /// zombie traced by us (and look "already traced" to the next capture).
    Dead,
    /// Did not stop in time; still seized.
    Late,
}

#[derive(Debug)]
struct Tracee {
    tid: i32,
    state: TraceeState,
    /// `/proc` facts read just before the stop.
    facts: Option<PreStop>,
}

/// Every thread of one process we have seized. Dropping it detaches them all
/// (a thread still running towards its stop is waited for, briefly). Not
/// `Send`: ptrace requests must come from the seizing thread.
#[derive(Debug)]
pub struct Attached {
    tracees: Vec<Tracee>,
    first_interrupt: Option<Instant>,
    taken_at: Option<SystemTime>,
    detached_at: Option<Instant>,
    _not_send: PhantomData<*const ()>,
}

impl Attached {
    fn new() -> Attached {
        Attached {
            tracees: Vec::new(),
            first_interrupt: None,
            taken_at: None,
            detached_at: None,
            _not_send: PhantomData,
        }
    }

    /// Detaches every thread (idempotent). Returns when every stopped thread
    /// runs again (or stays in its job-control stop).
    pub fn detach_all(&mut self) {
        let mut late = false;
        for t in &mut self.tracees {
            match t.state {
                TraceeState::Stopped(_) => {
                    // Detaching from an interrupt stop resumes the thread; from a
                    // group stop it re-enters the job-control stop. ESRCH: it died
                    // in its stop (SIGKILL).
                    t.state = match ptrace::detach(Pid::from_raw(t.tid), None) {
                        Ok(()) => TraceeState::Gone,
                        Err(_) => TraceeState::Dead,
                    };
                }
                TraceeState::Pending | TraceeState::Late => late = true,
                TraceeState::Gone | TraceeState::Dead => {}
            }
        }
        if self.detached_at.is_none() {
            self.detached_at = Some(Instant::now());
        }
        if late {
            // A thread interrupted but not yet stopped cannot be detached until
            // it stops. One that has stopped meanwhile is detached now; the
            // rest are detached by the kernel when the capture thread exits
            // (see the module documentation): no waiting here, the others
            // already run again.
            for t in &mut self.tracees {
                if matches!(t.state, TraceeState::Pending | TraceeState::Late) {
                    match poll_stop(t.tid) {
                        Poll::Stopped(_) => {
                            t.state = match ptrace::detach(Pid::from_raw(t.tid), None) {
                                Ok(()) => TraceeState::Gone,
                                Err(_) => TraceeState::Dead,
                            };
                        }
                        Poll::Gone => t.state = TraceeState::Gone,
                        Poll::NotYet => {}
                    }
                }
            }
        }
        // Reap threads that died while ours (the process was killed).
        let deadline = Instant::now() + Duration::from_millis(200);
        for t in &mut self.tracees {
            while t.state == TraceeState::Dead {
                match waitpid_nohang(t.tid) {
                    Ok(Some(status)) if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) => {
                        t.state = TraceeState::Gone
                    }
                    // A last stop reported before the exit: keep reaping.
                    Ok(Some(_)) => {}
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_micros(200))
                    }
                    Ok(None) | Err(_) => t.state = TraceeState::Gone,
                }
            }
        }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.detach_all();
    }
}

/// What one non-blocking look at a tracee found.
enum Poll {
    /// In a ptrace stop of ours.
    Stopped(StopKind),
    /// Exited, or no longer ours.
    Gone,
    /// Not stopped yet.
    NotYet,
}

fn is_job_control_signal(sig: i32) -> bool {
    sig == libc::SIGSTOP || sig == libc::SIGTSTP || sig == libc::SIGTTIN || sig == libc::SIGTTOU
}

/// Collects whatever `tid` has reported, without blocking. A signal-delivery
/// stop of a signal that is not ours is resumed with that signal
/// (re-injected); the interrupt stays pending and is reported later.
fn poll_stop(tid: i32) -> Poll {
    loop {
        match waitpid_nohang(tid) {
            Ok(Some(status)) => {
                if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                    return Poll::Gone;
                }
                if !libc::WIFSTOPPED(status) {
                    continue;
                }
                let sig = libc::WSTOPSIG(status);
                let event = (status >> 16) & 0xff;
                if event == libc::PTRACE_EVENT_STOP {
                    return if is_job_control_signal(sig) {
                        Poll::Stopped(StopKind::JobControl(sig))
                    } else {
                        Poll::Stopped(StopKind::Interrupted)
                    };
                }
                if event != 0 {
                    // Another ptrace event (none is requested): still a stop.
                    return Poll::Stopped(StopKind::Interrupted);
                }
                if ptrace_int(libc::PTRACE_CONT, tid, sig as libc::c_long).is_err() {
                    return Poll::Gone;
                }
            }
            Ok(None) => return Poll::NotYet,
            // ECHILD: not (or no longer) our tracee; ESRCH likewise.
            Err(_) => return Poll::Gone,
        }
    }
}

/// Waits for the interrupted threads `tracees[first..]` to stop, all at once.
/// A thread still running after `stuck_grace` whose state reads `D`
/// (uninterruptible sleep: it stops only when the sleep ends) is given up
/// then; any other after `stop_timeout`. Given-up threads become
/// [`TraceeState::Late`] with the state they were seen in.
fn collect_stops(tracees: &mut [Tracee], pid: i32, opts: &SnapshotOptions) {
    let start = Instant::now();
    let mut next_d_check = start + opts.stuck_grace;
    let mut spins = 0u32;
    loop {
        let mut pending = 0usize;
        for t in tracees
            .iter_mut()
            .filter(|t| t.state == TraceeState::Pending)
        {
            match poll_stop(t.tid) {
                Poll::Stopped(kind) => t.state = TraceeState::Stopped(kind),
                Poll::Gone => t.state = TraceeState::Gone,
                Poll::NotYet => pending += 1,
            }
        }
        if pending == 0 {
            return;
        }
        let now = Instant::now();
        if now.saturating_duration_since(start) >= opts.stop_timeout {
            for t in tracees
                .iter_mut()
                .filter(|t| t.state == TraceeState::Pending)
            {
                t.state = TraceeState::Late;
            }
            return;
        }
        if now >= next_d_check {
            // Re-checked every grace period: a thread can enter D after the
            // interrupt (it was on its way into a disk read).
            next_d_check = now + opts.stuck_grace;
            for t in tracees
                .iter_mut()
                .filter(|t| t.state == TraceeState::Pending)
            {
                if let Ok(st) = proc::read_task_stat(pid, t.tid) {
                    if st.state == 'D' {
                        t.state = TraceeState::Late;
                        if let Some(f) = t.facts.as_mut() {
                            f.state = 'D';
                        }
                    }
                }
            }
        }
        spins += 1;
        if spins < 64 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(20));
        }
    }
}

// ---------------------------------------------------------------------------
// the capture

#[derive(Debug)]
struct PreStop {
    name: String,
    state: char,
    cpu_time: Duration,
}

fn read_pre_stop(pid: i32, tid: i32) -> Option<PreStop> {
    let stat = proc::read_task_stat(pid, tid).ok()?;
    let ticks = stat.utime_ticks.saturating_add(stat.stime_ticks);
    Some(PreStop {
        name: stat.comm,
        state: stat.state,
        cpu_time: Duration::from_millis(ticks.saturating_mul(1000 / USER_HZ)),
    })
}

/// Whether `tid` is a thread of this process.
fn is_own_thread(tid: i32) -> bool {
    Path::new(&format!("/proc/self/task/{tid}")).exists()
}

/// Whether thread `tid` is gone or exiting (a zombie, or no longer listed).
fn thread_exited(pid: i32, tid: i32) -> bool {
    match proc::read_task_stat(pid, tid) {
        Ok(st) => st.state == 'Z' || st.state == 'X',
        Err(_) => true,
    }
}

/// Whether the process still runs: its main thread may be a zombie (it
/// called `pthread_exit`) while other threads live on.
fn process_alive(pid: i32) -> bool {
    match proc::read_status(pid) {
        Ok(st) => (st.state != 'Z' && st.state != 'X') || st.threads > 1,
        Err(_) => false,
    }
}

fn to_registers(r: &libc::user_regs_struct) -> Registers {
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

/// Finds the mapping containing `addr` in maps sorted by start address.
pub(crate) fn find_map(maps: &[MapEntry], addr: u64) -> Option<&MapEntry> {
    let i = maps.partition_point(|m| m.start <= addr);
    let m = maps.get(i.checked_sub(1)?)?;
    m.contains(addr).then_some(m)
}

/// Blocks the job-control stop signals (SIGTSTP, SIGTTIN, SIGTTOU) in the
/// calling thread while it holds a target, so that a Ctrl-Z cannot suspend
/// us mid-capture with the target frozen: the signal stays pending and
/// takes effect after the detach, when the previous mask is restored.
/// (SIGSTOP cannot be blocked; other threads of a multi-threaded host are
/// not covered.)
struct JobControlBlocked(Option<nix::sys::signal::SigSet>);

impl JobControlBlocked {
    fn new() -> JobControlBlocked {
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
struct RealTime(Option<(libc::c_int, libc::sched_param)>);

impl RealTime {
    fn new(enabled: bool) -> RealTime {
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

/// Why seizing the process was refused: already traced, or not allowed.
fn refusal(pid: i32, tid: i32) -> Error {
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

/// Stops every thread of `pid`, captures registers and stacks, and lets it go.
///
/// The capture runs on a thread of its own that ends before this returns, so
/// that no thread of the target stays traced, whatever state it was in (see
/// the module documentation). While another tracer holds the process, it is
/// retried for [`SnapshotOptions::busy_retry`].
///
/// Returns a partial snapshot with [`ProcessSnapshot::exited`] set when the
/// process exits during the capture. Errors: [`Error::NoSuchProcess`],
/// [`Error::Exited`] (gone before anything was captured),
/// [`Error::AlreadyTraced`], [`Error::PermissionDenied`], [`Error::Io`] (no
/// thread could be started).
pub fn snapshot(pid: i32, opts: &SnapshotOptions) -> Result<ProcessSnapshot> {
    let give_up = Instant::now() + opts.busy_retry;
    loop {
        match capture_on_own_thread(pid, opts) {
            // Another capture (a second watcher) holds it for a millisecond
            // or so: try again shortly, a bounded number of times.
            Err(Error::AlreadyTraced { .. }) if Instant::now() < give_up => {
                std::thread::sleep(Duration::from_millis(1))
            }
            other => return other,
        }
    }
}

/// Runs [`capture`] on a new thread and waits until that thread is gone from
/// `/proc/self/task`: only then has the kernel detached whatever it still
/// traced (`pthread_join` returns a little earlier, when the thread's TID is
/// cleared, before `exit_ptrace`).
fn capture_on_own_thread(pid: i32, opts: &SnapshotOptions) -> Result<ProcessSnapshot> {
    let (tracer, result) = std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("aiodebug-capture".to_string())
            .spawn_scoped(scope, || {
                // SAFETY: gettid takes no arguments and cannot fail.
                let tid = unsafe { libc::gettid() };
                (tid, capture(pid, opts))
            })
            .map_err(|e| Error::io("starting the capture thread", e))?;
        handle
            .join()
            .map_err(|_| Error::io("the capture thread", std::io::Error::other("it panicked")))
    })?;
    let deadline = Instant::now() + Duration::from_millis(200);
    while is_own_thread(tracer) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(50));
    }
    result
}

/// The modules of `pid`'s `maps`, with the cache of `opts` if it has one.
fn capture_modules(pid: i32, maps: &[MapEntry], opts: &SnapshotOptions) -> module::Modules {
    match &opts.modules {
        Some(cache) => {
            let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
            module::capture(pid, maps, &mut cache)
        }
        None => module::capture(pid, maps, &mut ModuleCache::new()),
    }
}

/// The capture itself, on the calling thread (see [`snapshot`]).
fn capture(pid: i32, opts: &SnapshotOptions) -> Result<ProcessSnapshot> {
    let started = Instant::now();
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
    let status = proc::read_status(pid)?;
    if status.tgid > 0 && status.tgid != pid {
        // A thread id: dump its whole process.
        return capture(status.tgid, opts);
    }
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
    let mut maps = proc::read_maps(pid)?;
    maps.sort_by_key(|m| m.start);
    // Modules and the target's root, while it surely runs: what the offline
    // stage needs of its files, so that it never reads the target again.
    let mut modules = capture_modules(pid, &maps, opts);
    let files = TargetFiles::open(pid);

    // Dropped after `att` (declared before it): the mask is restored once
    // every thread is detached.
    let _job_control = JobControlBlocked::new();
    let mut att = Attached::new();
    let mut known: HashSet<i32> = HashSet::new();
    let mut vanished: Vec<i32> = Vec::new();
    let mut exited = false;
    let mut capped = false;
    let mut arena: Vec<u8> = Vec::new();
    // Threads an earlier capture of ours still holds (they never stopped).
    let mut held: Vec<(i32, Option<PreStop>)> = Vec::new();

    for _round in 0..MAX_ROUNDS {
        let tids = match proc::list_tasks(pid) {
            Ok(t) => t,
            Err(Error::NoSuchProcess { .. }) => {
                exited = true;
                break;
            }
            Err(e) => return Err(e),
        };
        let mut fresh: Vec<i32> = Vec::new();
        for tid in tids {
            if known.contains(&tid) {
                continue;
            }
            if opts
                .only_threads
                .as_ref()
                .is_some_and(|only| !only.contains(&tid))
            {
                continue;
            }
            if known.len() >= opts.max_threads {
                capped = true;
                break;
            }
            known.insert(tid);
            fresh.push(tid);
        }
        if fresh.is_empty() {
            break;
        }
        if arena.is_empty() {
            // Written now, before anything is stopped, so that copying stacks
            // into it later costs no page faults during the freeze.
            let size = fresh
                .len()
                .saturating_mul(ARENA_PER_THREAD)
                .min(opts.total_stack_cap)
                .min(MAX_ARENA);
            arena = vec![1u8; size];
        }
        // /proc facts first: a stopped thread would read as `t`.
        let first_new = att.tracees.len();
        let mut seized: Vec<(i32, Option<PreStop>)> = Vec::with_capacity(fresh.len());
        let mut facts: Vec<(i32, Option<PreStop>)> = Vec::with_capacity(fresh.len());
        for &tid in &fresh {
            let f = read_pre_stop(pid, tid);
            if matches!(&f, Some(p) if p.state == 'Z' || p.state == 'X') {
                vanished.push(tid);
                continue;
            }
            facts.push((tid, f));
        }
        // Seize (does not stop anything yet).
        for (tid, f) in facts {
            match ptrace::seize(Pid::from_raw(tid), ptrace::Options::empty()) {
                Ok(()) => seized.push((tid, f)),
                Err(nix::errno::Errno::ESRCH) => vanished.push(tid),
                Err(nix::errno::Errno::EPERM) if thread_exited(pid, tid) => vanished.push(tid),
                Err(nix::errno::Errno::EPERM)
                    if proc::tracer_of(tid).is_some_and(|(t, _)| is_own_thread(t)) =>
                {
                    held.push((tid, f))
                }
                Err(nix::errno::Errno::EPERM) => {
                    // Another tracer (a second watcher holds it for a
                    // millisecond): `snapshot` retries the whole capture.
                    if let Some((tracer_pid, tracer_name)) =
                        proc::tracer_of(tid).or_else(|| proc::tracer_of(pid))
                    {
                        return Err(Error::AlreadyTraced {
                            pid,
                            tracer_pid,
                            tracer_name,
                        });
                    }
                    // The kernel also says EPERM for a thread that is exiting
                    // (its exit_state is set before /proc shows it gone), for
                    // the whole process while it exits, and for a thread a
                    // tracer was just leaving: look again, and try once more,
                    // before calling it a refusal.
                    std::thread::sleep(Duration::from_millis(2));
                    if !process_alive(pid) {
                        exited = true;
                        break;
                    }
                    if thread_exited(pid, tid) {
                        vanished.push(tid);
                        continue;
                    }
                    match ptrace::seize(Pid::from_raw(tid), ptrace::Options::empty()) {
                        Ok(()) => seized.push((tid, f)),
                        Err(nix::errno::Errno::ESRCH) => vanished.push(tid),
                        Err(_) => return Err(refusal(pid, tid)),
                    }
                }
                Err(e) => {
                    return Err(Error::io(
                        format!("PTRACE_SEIZE of thread {tid} of process {pid}"),
                        std::io::Error::from(e),
                    ))
                }
            }
        }
        for (tid, facts) in seized {
            att.tracees.push(Tracee {
                tid,
                state: TraceeState::Pending,
                facts,
            });
        }
        // Interrupt: the freeze starts here.
        for t in att.tracees.iter_mut().skip(first_new) {
            if att.first_interrupt.is_none() {
                att.first_interrupt = Some(Instant::now());
                att.taken_at = Some(SystemTime::now());
            }
            if ptrace::interrupt(Pid::from_raw(t.tid)).is_err() {
                t.state = TraceeState::Dead;
            }
        }
        // Collect each stop before rescanning.
        collect_stops(&mut att.tracees[first_new..], pid, opts);
        if exited || capped {
            break;
        }
    }

    // While stopped: registers and stacks only.
    let copy_start = Instant::now();
    // (index in `threads`, offset in `arena`, length) of stacks copied there.
    let mut spans: Vec<(usize, usize, usize)> = Vec::new();
    let mut arena_used = 0usize;
    let mut threads: Vec<ThreadSnapshot> = Vec::with_capacity(att.tracees.len());
    // Indexes in `threads` of threads that did not stop.
    let mut late: Vec<usize> = Vec::new();
    let mut budget = opts.total_stack_cap;
    let mut maps_reread = false;
    for t in att.tracees.iter_mut() {
        let (name, state, cpu_time) = match t.facts.take() {
            Some(p) => (p.name, p.state, p.cpu_time),
            None => (String::new(), '?', Duration::ZERO),
        };
        let mut th = ThreadSnapshot {
            tid: t.tid,
            name,
            state,
            cpu_time,
            stop: StopKind::NotStopped(String::new()),
            regs: None,
            stack_start: 0,
            stack: Vec::new(),
            stack_truncated: false,
            stack_error: None,
            kernel_wait: None,
        };
        match &t.state {
            TraceeState::Gone | TraceeState::Dead => {
                vanished.push(t.tid);
                continue;
            }
            TraceeState::Late | TraceeState::Pending => {
                let waited = if th.state == 'D' {
                    opts.stuck_grace
                } else {
                    opts.stop_timeout
                };
                th.stop = StopKind::NotStopped(format!(
                    "did not stop within {:.1} ms (state {}: {})",
                    waited.as_secs_f64() * 1e3,
                    th.state,
                    proc::state_name(th.state)
                ));
                late.push(threads.len());
                threads.push(th);
                continue;
            }
            TraceeState::Stopped(kind) => th.stop = kind.clone(),
        }
        let regs = match ptrace::getregs(Pid::from_raw(t.tid)) {
            Ok(r) => to_registers(&r),
            Err(_) => {
                // It died in its stop (SIGKILL to the process).
                t.state = TraceeState::Dead;
                vanished.push(t.tid);
                continue;
            }
        };
        th.regs = Some(regs);
        th.stack_start = regs.rsp;
        let mut map = find_map(&maps, regs.rsp).map(|m| m.end);
        if map.is_none() && !maps_reread {
            maps_reread = true;
            if let Ok(mut fresh) = proc::read_maps(pid) {
                fresh.sort_by_key(|m| m.start);
                maps = fresh;
            }
            map = find_map(&maps, regs.rsp).map(|m| m.end);
        }
        match map {
            None => {
                th.stack_error = Some(format!("stack pointer 0x{:x} is in no mapping", regs.rsp))
            }
            Some(end) => {
                let want = end.saturating_sub(regs.rsp);
                let cap = if budget >= opts.stack_cap {
                    opts.stack_cap
                } else {
                    SMALL_STACK.min(opts.stack_cap)
                };
                let len = usize::try_from(want).unwrap_or(usize::MAX).min(cap);
                th.stack_truncated = (len as u64) < want;
                // Into the pre-faulted arena if it fits (no page faults while
                // the target is frozen), else into a buffer of its own.
                let free = arena.len().saturating_sub(arena_used);
                let mut own = Vec::new();
                let (buf, in_arena) = if len <= free {
                    (&mut arena[arena_used..arena_used + len], true)
                } else {
                    own.resize(len, 0u8);
                    (&mut own[..], false)
                };
                match memory::read_into(pid, regs.rsp, buf) {
                    Ok(n) => {
                        if n < len {
                            th.stack_error = Some(format!(
                                "stack readable only up to 0x{:x}",
                                regs.rsp + n as u64
                            ));
                        }
                        if in_arena {
                            spans.push((threads.len(), arena_used, n));
                            arena_used += n;
                        } else {
                            own.truncate(n);
                            th.stack = own;
                        }
                        budget = budget.saturating_sub(n);
                    }
                    Err(e) => th.stack_error = Some(e.to_string()),
                }
            }
        }
        threads.push(th);
    }

    for (tid, facts) in held {
        threads.push(ThreadSnapshot {
            tid,
            name: facts.as_ref().map(|f| f.name.clone()).unwrap_or_default(),
            state: facts.as_ref().map_or('?', |f| f.state),
            cpu_time: facts.as_ref().map_or(Duration::ZERO, |f| f.cpu_time),
            stop: StopKind::NotStopped(
                "still held by an earlier capture that it never stopped for".to_string(),
            ),
            regs: None,
            stack_start: 0,
            stack: Vec::new(),
            stack_truncated: false,
            stack_error: None,
            kernel_wait: Some(proc::read_kernel_wait(pid, tid)),
        });
    }
    if let Some(hook) = &opts.while_stopped {
        let held: Vec<i32> = threads
            .iter()
            .filter(|t| t.regs.is_some())
            .map(|t| t.tid)
            .collect();
        hook.0.while_stopped(pid, &held);
    }
    let detach_start = Instant::now();
    {
        let _rt = RealTime::new(opts.realtime_detach);
        att.detach_all();
    }
    let phases = match (att.first_interrupt, att.detached_at) {
        (Some(first), Some(done)) => CapturePhases {
            prepare: first.saturating_duration_since(started),
            stop: copy_start.saturating_duration_since(first),
            copy: detach_start.saturating_duration_since(copy_start),
            detach: done.saturating_duration_since(detach_start),
        },
        _ => CapturePhases::default(),
    };
    let taken_at = att.taken_at.unwrap_or_else(SystemTime::now);
    let freeze = match (att.first_interrupt, att.detached_at) {
        (Some(a), Some(b)) => b.saturating_duration_since(a),
        _ => Duration::ZERO,
    };
    drop(att);
    // Where the threads that never stopped wait in the kernel, read now that
    // the others run again.
    for i in late {
        if let Some(th) = threads.get_mut(i) {
            th.kernel_wait = Some(proc::read_kernel_wait(pid, th.tid));
        }
    }
    // Maps re-read during the stop may hold a module mapped since the first
    // read (a library a new thread brought): add it now, while the process
    // most likely still exists (the capture's work, not the offline stage's).
    if maps_reread {
        for m in capture_modules(pid, &maps, opts).modules {
            if !modules
                .modules
                .iter()
                .any(|o| o.start == m.start && o.name == m.name)
            {
                modules.modules.push(m);
            }
        }
        modules.modules.sort_by_key(|m| m.start);
    }
    // The target runs again: give each thread its own copy of its stack.
    for (i, off, n) in spans {
        if let (Some(th), Some(bytes)) = (threads.get_mut(i), arena.get(off..off + n)) {
            th.stack = bytes.to_vec();
        }
    }
    drop(arena);

    if !vanished.is_empty() && !process_alive(pid) {
        exited = true;
    }
    if threads.is_empty() && exited {
        return Err(Error::Exited { pid });
    }
    vanished.sort_unstable();
    vanished.dedup();
    Ok(ProcessSnapshot {
        pid,
        name: status.name,
        taken_at,
        freeze,
        capture: started.elapsed(),
        phases,
        threads,
        maps,
        modules,
        files,
        vanished,
        exited,
        cause: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(start: u64, end: u64) -> MapEntry {
        MapEntry {
            start,
            end,
            read: true,
            write: true,
            exec: false,
            shared: false,
            offset: 0,
            dev: (0, 0),
            inode: 0,
            path: proc::MapPath::None,
        }
    }

    #[test]
    fn find_map_picks_the_containing_mapping() {
        let maps = vec![map(0x1000, 0x2000), map(0x3000, 0x5000)];
        assert_eq!(find_map(&maps, 0x1000).map(|m| m.start), Some(0x1000));
        assert_eq!(find_map(&maps, 0x1fff).map(|m| m.start), Some(0x1000));
        assert!(find_map(&maps, 0x2000).is_none());
        assert!(find_map(&maps, 0xfff).is_none());
        assert_eq!(find_map(&maps, 0x4000).map(|m| m.start), Some(0x3000));
        assert!(find_map(&maps, 0x5000).is_none());
        assert!(find_map(&[], 0x5000).is_none());
    }
}
