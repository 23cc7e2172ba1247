//! Event loops found and judged from outside, by their wait calls: pure, so
//! every rule is tested with literals.
//!
//! An event loop returns to its wait call (`epoll_wait`, `poll`, ...) once
//! per iteration, idle or loaded: a loaded loop re-enters it with a zero
//! timeout, an idle one blocks in it. So for a loop thread:
//! - it entered its wait call again since the last look: it iterates (healthy);
//! - it is inside its wait call now: it is idle (however long the timeout);
//! - neither, for longer than the interval: it is hung in one iteration.
//!
//! A thread becomes a loop thread once it entered wait calls
//! [`MIN_ENTRIES`] times (or the user named it): a thread that polls once and
//! then computes for minutes is not a loop, and must not look like a hung one.

use crate::cause::parse::ProcSyscall;
use crate::cause::syscalls::{self, Arch};
use crate::perf::WAIT_CALLS;

/// Entries into wait calls that make a thread an event-loop thread.
pub const MIN_ENTRIES: u64 = 3;

/// The instruction set this watcher runs on (targets share it).
pub const NATIVE: Arch = if cfg!(target_arch = "aarch64") {
    Arch::Aarch64
} else {
    Arch::X86_64
};

/// Whether system call `nr` on `arch` is one of the wait calls
/// ([`WAIT_CALLS`]).
pub fn is_wait_call(arch: Arch, nr: u64) -> bool {
    syscalls::name(arch, nr).is_some_and(|n| WAIT_CALLS.contains(&n))
}

/// Whether `/proc/PID/task/TID/syscall` shows the thread inside a wait call.
pub fn waiting_in(arch: Arch, s: &ProcSyscall) -> bool {
    matches!(s, ProcSyscall::In { nr, .. } if is_wait_call(arch, *nr))
}

/// The wait call a thread uses most, and how often it entered it: `counts`
/// pairs each call with its entries.
pub fn main_call<'a>(counts: &[(&'a str, u64)]) -> Option<(&'a str, u64)> {
    counts
        .iter()
        .copied()
        .filter(|&(_, n)| n > 0)
        .max_by_key(|&(_, n)| n)
}

/// What one look at a thread found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Look {
    /// Watcher's clock, ns.
    pub now_ns: u64,
    /// Entries into wait calls so far (the counters' sum).
    pub entries: u64,
    /// Whether the thread is inside a wait call now; `None` when not read
    /// (it entered one since the last look, so it does not matter).
    pub waiting: Option<bool>,
}

/// What the look means for the thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// It entered a wait call since the previous look.
    pub ticked: bool,
    /// It is inside a wait call now (idle), as far as read.
    pub waiting: bool,
    /// How long it has been neither entering nor inside a wait call: the
    /// stall of its current iteration (0 when it ticked or waits).
    pub stall_ns: u64,
    /// When it ticked: how long the iteration that ended took at most (time
    /// since it was last seen making progress).
    pub iteration_ns: u64,
    /// It is an event-loop thread (enough entries, or named by the user).
    pub is_loop: bool,
    /// It became one with this look.
    pub became_loop: bool,
}

/// What the watch remembers of one thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadTrack {
    entries: u64,
    total: u64,
    first_ns: u64,
    progress_ns: u64,
    is_loop: bool,
}

impl ThreadTrack {
    /// A thread first seen at `now_ns`; `forced`: named by `--loop-thread`.
    pub fn new(now_ns: u64, forced: bool) -> ThreadTrack {
        ThreadTrack {
            entries: 0,
            total: 0,
            first_ns: now_ns,
            progress_ns: now_ns,
            is_loop: forced,
        }
    }

    /// Whether the thread is an event-loop thread.
    pub fn is_loop(&self) -> bool {
        self.is_loop
    }

    /// Entries counted since it was first seen.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// When it was first seen.
    pub fn first_ns(&self) -> u64 {
        self.first_ns
    }

    /// Whether a look with `entries` needs to know if the thread waits now:
    /// only when it did not enter a wait call since the last look.
    pub fn needs_wait_check(&self, entries: u64) -> bool {
        entries == self.entries
    }

    /// Takes one look into account.
    pub fn observe(&mut self, l: Look) -> Verdict {
        // A count that went down (counters reopened) is a resync, not a tick.
        let ticked = l.entries > self.entries;
        self.total = self
            .total
            .saturating_add(l.entries.saturating_sub(self.entries));
        self.entries = l.entries;
        let waiting = !ticked && l.waiting.unwrap_or(false);
        let since = l.now_ns.saturating_sub(self.progress_ns);
        // It entered somewhere between the previous look and this one: count
        // progress from now (late), so the stall is never overestimated.
        if ticked || waiting {
            self.progress_ns = l.now_ns;
        }
        let became_loop = !self.is_loop && self.total >= MIN_ENTRIES;
        self.is_loop |= became_loop;
        Verdict {
            ticked,
            waiting,
            stall_ns: if ticked || waiting { 0 } else { since },
            iteration_ns: if ticked { since } else { 0 },
            is_loop: self.is_loop,
            became_loop,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cause::parse::parse_proc_syscall;

    const MS: u64 = 1_000_000;

    fn look(t: u64, entries: u64, waiting: Option<bool>) -> Look {
        Look {
            now_ns: t * MS,
            entries,
            waiting,
        }
    }

    #[test]
    fn wait_calls_by_number() {
        // x86_64: epoll_wait 232, epoll_pwait 281, poll 7, nanosleep 35, futex 202.
        assert!(is_wait_call(Arch::X86_64, 232));
        assert!(is_wait_call(Arch::X86_64, 281));
        assert!(is_wait_call(Arch::X86_64, 7));
        assert!(!is_wait_call(Arch::X86_64, 35));
        assert!(!is_wait_call(Arch::X86_64, 202));
        // aarch64: epoll_pwait 22, ppoll 73.
        assert!(is_wait_call(Arch::Aarch64, 22));
        assert!(is_wait_call(Arch::Aarch64, 73));
        assert!(!is_wait_call(Arch::X86_64, 100_000));
    }

    #[test]
    fn proc_syscall_lines() {
        let idle =
            parse_proc_syscall(b"232 0x3 0x7ffd 0x80 0x64 0x0 0x0 0x7ffd1 0x7f12\n").unwrap();
        assert!(waiting_in(Arch::X86_64, &idle));
        let sleeping =
            parse_proc_syscall(b"35 0x7ffd 0x0 0x0 0x0 0x0 0x0 0x7ffd1 0x7f12\n").unwrap();
        assert!(!waiting_in(Arch::X86_64, &sleeping));
        let running = parse_proc_syscall(b"running\n").unwrap();
        assert!(!waiting_in(Arch::X86_64, &running));
        let user = parse_proc_syscall(b"-1 0x7ffd 0x55\n").unwrap();
        assert!(!waiting_in(Arch::X86_64, &user));
    }

    #[test]
    fn main_call_is_the_busiest() {
        assert_eq!(
            main_call(&[("epoll_wait", 3), ("poll", 9), ("select", 0)]),
            Some(("poll", 9))
        );
        assert_eq!(main_call(&[("epoll_wait", 0)]), None);
        assert_eq!(main_call(&[]), None);
    }

    #[test]
    fn a_thread_becomes_a_loop_after_enough_entries() {
        let mut t = ThreadTrack::new(0, false);
        let v = t.observe(look(10, 1, None));
        assert!(!v.is_loop && v.ticked);
        let v = t.observe(look(20, 2, None));
        assert!(!v.is_loop);
        let v = t.observe(look(30, 3, None));
        assert!(v.is_loop && v.became_loop);
        let v = t.observe(look(40, 4, None));
        assert!(v.is_loop && !v.became_loop);
        assert_eq!(t.total(), 4);
    }

    #[test]
    fn a_named_thread_is_a_loop_from_the_start() {
        let mut t = ThreadTrack::new(0, true);
        assert!(t.is_loop());
        assert!(!t.observe(look(10, 0, Some(false))).became_loop);
    }

    #[test]
    fn a_busy_loop_reentering_with_timeout_zero_never_stalls() {
        let mut t = ThreadTrack::new(0, false);
        let mut entries = 0;
        for i in 1..=100 {
            // Thousands of epoll_wait(…, 0) between two looks, never waiting.
            entries += 5000;
            assert!(!t.needs_wait_check(entries));
            let v = t.observe(look(i * 50, entries, None));
            assert_eq!(v.stall_ns, 0);
            assert!(v.ticked);
        }
    }

    #[test]
    fn an_idle_loop_blocked_in_its_wait_call_is_not_hung() {
        let mut t = ThreadTrack::new(0, false);
        t.observe(look(10, 5, None));
        // Then 10 s with no entry, but inside epoll_wait every time.
        for i in 1..=200 {
            assert!(t.needs_wait_check(5));
            let v = t.observe(look(10 + i * 50, 5, Some(true)));
            assert_eq!(v.stall_ns, 0);
            assert!(v.waiting && !v.ticked);
        }
    }

    #[test]
    fn a_loop_out_of_its_wait_call_without_entering_stalls_then_recovers() {
        let mut t = ThreadTrack::new(0, false);
        t.observe(look(100, 10, None));
        let v = t.observe(look(150, 10, Some(false)));
        assert_eq!(v.stall_ns, 50 * MS);
        let v = t.observe(look(2100, 10, Some(false)));
        assert_eq!(v.stall_ns, 2000 * MS);
        assert!(!v.ticked);
        let v = t.observe(look(2150, 11, None));
        assert!(v.ticked);
        assert_eq!(v.stall_ns, 0);
        // The iteration that ended lasted at most the time since progress.
        assert_eq!(v.iteration_ns, 2050 * MS);
    }

    #[test]
    fn the_stall_counts_from_the_last_look_inside_the_wait_call() {
        let mut t = ThreadTrack::new(0, false);
        t.observe(look(0, 3, None));
        t.observe(look(100, 3, Some(true)));
        let v = t.observe(look(400, 3, Some(false)));
        assert_eq!(v.stall_ns, 300 * MS);
    }

    #[test]
    fn a_counter_going_down_is_no_tick() {
        let mut t = ThreadTrack::new(0, false);
        t.observe(look(10, 50, None));
        let v = t.observe(look(20, 2, Some(false)));
        assert!(!v.ticked);
        assert_eq!(t.total(), 50);
        // From the new base, entries count again.
        assert!(t.observe(look(30, 3, None)).ticked);
    }
}
