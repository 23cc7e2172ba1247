//! The threads a capture holds, and the guard that lets them go: dropping
//! [`Attached`] detaches every one (an early return detaches too).

use std::marker::PhantomData;
use std::time::{Duration, Instant, SystemTime};

use nix::libc;
use nix::sys::ptrace;
use nix::unistd::Pid;

use super::prepare::PreStop;
use super::stop::{poll_stop, Poll};
use super::sys::waitpid_nohang;
use crate::snapshot::StopKind;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum TraceeState {
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
pub(super) struct Tracee {
    pub(super) tid: i32,
    pub(super) state: TraceeState,
    /// `/proc` facts read just before the stop.
    pub(super) facts: Option<PreStop>,
}

/// Every thread of one process we have seized. Dropping it detaches them all
/// (a thread still running towards its stop is waited for, briefly). Not
/// `Send`: ptrace requests must come from the seizing thread.
#[derive(Debug)]
pub struct Attached {
    pub(super) tracees: Vec<Tracee>,
    pub(super) first_interrupt: Option<Instant>,
    pub(super) taken_at: Option<SystemTime>,
    pub(super) detached_at: Option<Instant>,
    _not_send: PhantomData<*const ()>,
}

impl Attached {
    pub(super) fn new() -> Attached {
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
