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
//! The steps are modules: `prepare` (checks and `/proc` facts before the
//! stop), `stop` (seize, interrupt, collect the stops), `copy` (registers
//! and stacks while stopped), `attached` (the guard whose drop detaches);
//! this module runs them in order and detaches. All of this crate's raw
//! system calls for ptrace live in `sys`, the only `unsafe` of the capture.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::error::{Error, Result};
use crate::module::{self, ModuleCache, TargetFiles};
use crate::proc::{self, MapEntry};
use crate::snapshot::{CapturePhases, ProcessSnapshot};

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
pub(super) const MAX_ROUNDS: usize = 64;
/// Per-thread copy once the total budget is spent.
pub(super) const SMALL_STACK: usize = 64 << 10;
/// Stack bytes per thread prepared (pre-faulted) before the stop.
pub(super) const ARENA_PER_THREAD: usize = 32 << 10;
/// Largest pre-faulted copy area.
pub(super) const MAX_ARENA: usize = 64 << 20;

mod attached;
mod copy;
mod prepare;
mod stop;
mod sys;

pub use attached::Attached;
use copy::Copied;
use prepare::{is_own_thread, process_alive};
use stop::Stopping;
use sys::{JobControlBlocked, RealTime};

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
                let tid = sys::gettid();
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

/// The last step: lets every thread of `att` go (as `SCHED_FIFO` when
/// allowed); the capture's phases (it began at `started`, its copy at
/// `copy_start`), its freeze, and when the target was stopped.
fn detach(
    mut att: Attached,
    opts: &SnapshotOptions,
    started: Instant,
    copy_start: Instant,
) -> (CapturePhases, Duration, SystemTime) {
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
    (phases, freeze, taken_at)
}

/// The capture itself, on the calling thread (see [`snapshot`]): prepare,
/// stop, copy, detach.
fn capture(pid: i32, opts: &SnapshotOptions) -> Result<ProcessSnapshot> {
    let started = Instant::now();
    let status = prepare::check(pid)?;
    if status.tgid > 0 && status.tgid != pid {
        // A thread id: dump its whole process.
        return capture(status.tgid, opts);
    }
    prepare::check_process(pid, &status)?;
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
    let Stopping {
        mut vanished,
        mut exited,
        mut arena,
        held,
    } = stop::stop_all(pid, opts, &mut att)?;

    let copy_start = Instant::now();
    let Copied {
        mut threads,
        spans,
        late,
        maps_reread,
    } = copy::copy_threads(pid, opts, &mut att, &mut maps, &mut arena, &mut vanished);
    for (tid, facts) in held {
        threads.push(copy::held_thread(pid, tid, facts));
    }
    if let Some(hook) = &opts.while_stopped {
        let held: Vec<i32> = threads
            .iter()
            .filter(|t| t.regs.is_some())
            .map(|t| t.tid)
            .collect();
        hook.0.while_stopped(pid, &held);
    }
    let (phases, freeze, taken_at) = detach(att, opts, started, copy_start);
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
    use super::copy::find_map;
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
