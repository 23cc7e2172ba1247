//! Stopping: `PTRACE_SEIZE` every known thread, `PTRACE_INTERRUPT` each,
//! collect each stop, rescan `/proc/PID/task` until no new thread appears.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use nix::libc;
use nix::sys::ptrace;
use nix::unistd::Pid;

use super::attached::{Attached, Tracee, TraceeState};
use super::prepare::{
    is_own_thread, process_alive, read_pre_stop, refusal, thread_exited, PreStop,
};
use super::sys::{ptrace_int, waitpid_nohang};
use super::{SnapshotOptions, ARENA_PER_THREAD, MAX_ARENA, MAX_ROUNDS};
use crate::error::{Error, Result};
use crate::proc;
use crate::snapshot::StopKind;

/// What stopping the threads left to the next steps.
pub(super) struct Stopping {
    /// Threads that exited meanwhile.
    pub(super) vanished: Vec<i32>,
    /// The whole process exited.
    pub(super) exited: bool,
    /// The pre-faulted area the stacks are copied into.
    pub(super) arena: Vec<u8>,
    /// Threads an earlier capture of ours still holds (they never stopped).
    pub(super) held: Vec<(i32, Option<PreStop>)>,
}

/// Seizes and interrupts every thread of `pid` (rescanning while new ones
/// appear) into `att`, and collects their stops. The freeze starts at the
/// first interrupt.
pub(super) fn stop_all(pid: i32, opts: &SnapshotOptions, att: &mut Attached) -> Result<Stopping> {
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
    Ok(Stopping {
        vanished,
        exited,
        arena,
        held,
    })
}

/// What one non-blocking look at a tracee found.
pub(super) enum Poll {
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
pub(super) fn poll_stop(tid: i32) -> Poll {
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
pub(super) fn collect_stops(tracees: &mut [Tracee], pid: i32, opts: &SnapshotOptions) {
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
