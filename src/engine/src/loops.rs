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
//!
//! **Parked pool threads.** Threads of a pool take turns at the wait call:
//! tokio's multi-thread workers each drive the IO driver now and then (so
//! each is a loop thread), and an idle worker then sleeps on a futex (its
//! condvar) while another holds the driver in `epoll_wait`; a resolver
//! thread of asyncio's default executor polls a few times in `getaddrinfo`
//! and then waits on its queue's lock, a futex. Such a thread is *parked*,
//! not hung: a loop thread sleeping in `futex` is parked when, at the look
//! that first found it there, another loop thread of the process carried on
//! — it iterated (entered or sat inside its wait call) or was itself out of
//! its wait call elsewhere than in a futex (a hang there is reported there:
//! the pool waits for it). It stays parked while it sleeps in a futex and
//! does not tick. A loop thread alone (one asyncio loop, redis's or node's
//! main thread), or the first of them to sleep in a futex while every other
//! one is already parked, stuck on a futex is a hang (a lock): see
//! [`carried_by_other`] and [`ThreadTrack::observe`].

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

/// Where a thread was at a look, per `/proc/PID/task/TID/syscall`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Inside a wait call ([`WAIT_CALLS`]): idle.
    Wait,
    /// Sleeping in a futex wait (`futex` with a waiting operation, or
    /// `futex_waitv`): a lock, a condvar, a queue.
    Futex,
    /// Anywhere else: running, in user code, another system call.
    Elsewhere,
}

/// Where `/proc/PID/task/TID/syscall` shows the thread. The kernel prints a
/// system call number only for a thread that is blocked (it prints
/// `running` otherwise), so [`Place::Futex`] is a thread asleep in the futex
/// (state S, no CPU time spent): no CPU-time check is needed on top.
pub fn place_of(arch: Arch, s: &ProcSyscall) -> Place {
    match s {
        ProcSyscall::In { nr, .. } if is_wait_call(arch, *nr) => Place::Wait,
        ProcSyscall::In { nr, args } => match syscalls::name(arch, *nr) {
            Some("futex") if syscalls::futex_waits(args[1]) => Place::Futex,
            Some("futex_waitv") => Place::Futex,
            _ => Place::Elsewhere,
        },
        _ => Place::Elsewhere,
    }
}

/// One thread at a look, as the parking rule needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// It is a loop thread.
    pub is_loop: bool,
    /// It entered a wait call since the previous look.
    pub ticked: bool,
    /// Where it was, when read (`None`: not read, because it ticked).
    pub place: Option<Place>,
}

/// Whether some thread in `peers` other than the one at index `me` carries
/// the process on: it iterates (entered a wait call since the last look, or
/// sits inside one) — any thread, loop thread or not yet: a tokio worker
/// that holds the IO driver in `epoll_wait` drives the pool even before it
/// has entered it [`MIN_ENTRIES`] times — or it is a loop thread out of its
/// wait call elsewhere than in a futex (if that is a hang, it is reported for
/// that thread; a thread parked on a futex meanwhile waits for it). A thread
/// in a futex does not carry: a pool whose every thread sleeps in a futex
/// has nobody left to wake them.
pub fn carried_by_other(peers: &[Peer], me: usize) -> bool {
    peers.iter().enumerate().any(|(i, p)| {
        i != me
            && (p.ticked
                || p.place == Some(Place::Wait)
                || (p.is_loop && p.place == Some(Place::Elsewhere)))
    })
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
    /// It sleeps in a futex now ([`Place::Futex`]; false when not read).
    pub futex: bool,
    /// Another loop thread carries the process on ([`carried_by_other`]).
    pub carried: bool,
}

/// What the look means for the thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// It entered a wait call since the previous look.
    pub ticked: bool,
    /// It is inside a wait call now (idle), as far as read.
    pub waiting: bool,
    /// It is a parked pool thread (see the module's notes): not stalled.
    pub parked: bool,
    /// It became parked with this look.
    pub became_parked: bool,
    /// How long it has been neither entering nor inside a wait call: the
    /// stall of its current iteration (0 when it ticked or waits).
    pub stall_ns: u64,
    /// When it ticked or became parked ([`Verdict::iteration_ended`]): how
    /// long the iteration that ended took at most (time since it was last
    /// seen making progress).
    pub iteration_ns: u64,
    /// It is an event-loop thread (enough entries, or named by the user).
    pub is_loop: bool,
    /// It became one with this look.
    pub became_loop: bool,
}

impl Verdict {
    /// Whether an iteration ended with this look: the thread entered its
    /// wait call, or went to sleep in a futex as a parked pool thread.
    pub fn iteration_ended(&self) -> bool {
        self.ticked || self.became_parked
    }
}

/// What the watch remembers of one thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadTrack {
    entries: u64,
    total: u64,
    first_ns: u64,
    progress_ns: u64,
    is_loop: bool,
    parked: bool,
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
            parked: false,
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

    /// Whether it is parked (see the module's notes).
    pub fn is_parked(&self) -> bool {
        self.parked
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
        // Parked: asleep in a futex, and either it already was at the last
        // look (latched: the peers' state later does not matter, the pool
        // thread waits for work) or another loop thread carries on now. A
        // thread not read (it ticked) or out of the futex is not parked.
        let was_parked = self.parked;
        self.parked = !ticked && !waiting && l.futex && (was_parked || l.carried);
        let parked = self.parked;
        let since = l.now_ns.saturating_sub(self.progress_ns);
        // It entered somewhere between the previous look and this one: count
        // progress from now (late), so the stall is never overestimated. A
        // parked thread makes progress too: a stall after it wakes counts
        // from its last look asleep.
        if ticked || waiting || parked {
            self.progress_ns = l.now_ns;
        }
        let became_loop = !self.is_loop && self.total >= MIN_ENTRIES;
        self.is_loop |= became_loop;
        Verdict {
            ticked,
            waiting,
            parked,
            became_parked: parked && !was_parked,
            stall_ns: if ticked || waiting || parked {
                0
            } else {
                since
            },
            // Parking ends an iteration as entering the wait call does: the
            // thread is back waiting for work (a hung worker that parks
            // after its handler returned has recovered).
            iteration_ns: if ticked || (parked && !was_parked) {
                since
            } else {
                0
            },
            is_loop: self.is_loop,
            became_loop,
        }
    }
}

/// Who times an iteration's busy time: the counters, or a sampling window.
///
/// The counters time an iteration that a look *sighted*: saw out of its
/// wait call without an entry since the previous look (the stall of
/// [`Verdict::stall_ns`] above zero); they cannot time the others (counts
/// say "entered N times between two looks", not when). A window times
/// every iteration it saw begin (`returned_ns`, the wait call's return) and
/// end (`entered_ns`, the next entry) exactly, so it takes those that no
/// sighting falls into and leaves the sighted ones to the counters: each
/// iteration is timed once, by one side. (A rule by length — "a look or
/// longer is the counters'" — left a hole: an iteration of one to two looks
/// that began just after a look at which its thread had entered the wait
/// call, and ended just before the next-but-one, is sighted by no look, so
/// the counters did not time it and the window, seeing it a look long,
/// left it to them; and an iteration sighted but shorter than a look was
/// timed twice.) `sightings`: the watcher-clock times of the sightings
/// (CLOCK_MONOTONIC, the clock of the samples), any order.
pub fn sighted_during(returned_ns: u64, entered_ns: u64, sightings: &[u64]) -> bool {
    sightings.iter().any(|&s| returned_ns < s && s < entered_ns)
}

/// One look at a loop thread, as [`SlowClock`] needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlowLook {
    /// Watcher's clock, ns, taken before the thread's counters were read.
    pub now_ns: u64,
    /// It entered a wait call since the previous look.
    pub ticked: bool,
    /// Where it was, read after the counters (`None`: not read).
    pub place: Option<Place>,
    /// It is a parked pool thread ([`Verdict::parked`]).
    pub parked: bool,
    /// Its stall is a hang episode now (a hang is reported as a hang, not as
    /// a slow iteration), or the process is stopped: the current iteration
    /// is not judged slow.
    pub hung: bool,
}

/// What [`SlowClock::observe`] asks of the watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowStep {
    /// Nothing to do.
    Nothing,
    /// The current iteration may have passed `--slow`: capture the thread's
    /// frame now, while it lasts.
    Capture,
    /// The captured iteration ended: warn. It lasted at most `at_most_ns`
    /// (from the last look before it began to the look that saw it end) and
    /// at least `at_least_ns` (between the first and the last look that saw
    /// it out).
    Ended {
        /// Upper bound of its busy time.
        at_most_ns: u64,
        /// Lower bound of its busy time.
        at_least_ns: u64,
    },
    /// The captured iteration became a hang: drop the capture.
    Dropped,
}

/// `--slow SECS` from outside: when to capture a loop thread's frame so that
/// every iteration longer than SECS is captured while it lasts, from counts
/// and places only (pure: the caller gives the looks).
///
/// It keeps `since`: the latest look known to precede the current
/// iteration's start — a look that found the thread inside its wait call
/// (or parked), or the look before one at which it had entered it (it
/// returned after that entry, so after that look). The iteration began
/// after `since`, so a look at `since + SECS` (plus 1 ns: strictly past)
/// that finds it still out, with no entry since, falls inside every
/// iteration longer than SECS: [`SlowStep::Capture`]. The caller looks at
/// [`SlowClock::deadline`] besides its periodic looks. The price of not
/// knowing the start exactly: the iteration began at most one look period
/// after `since` (the next look saw it out), so a captured iteration is
/// longer than SECS minus one look period; the watch keeps that period at
/// a quarter of SECS or less.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlowClock {
    slow_ns: u64,
    since_ns: u64,
    last_look_ns: u64,
    first_out_ns: Option<u64>,
    last_out_ns: u64,
    captured: bool,
    hung: bool,
}

impl SlowClock {
    /// A clock for `--slow` = `slow_ns`, the thread first looked at `now_ns`.
    pub fn new(slow_ns: u64, now_ns: u64) -> SlowClock {
        SlowClock {
            slow_ns,
            since_ns: now_ns,
            last_look_ns: now_ns,
            first_out_ns: None,
            last_out_ns: now_ns,
            captured: false,
            hung: false,
        }
    }

    /// The latest look known to precede the current iteration's start (or
    /// the next one's, when the thread waits): an iteration ending now
    /// lasted at most the time since.
    pub fn began_after_ns(&self) -> u64 {
        self.since_ns
    }

    /// Whether the current iteration's frame was captured.
    pub fn is_captured(&self) -> bool {
        self.captured
    }

    /// When the thread must be looked at next (`None`: nothing pending —
    /// the iteration was captured, or is a hang).
    pub fn deadline(&self) -> Option<u64> {
        (!self.captured && !self.hung)
            .then(|| self.since_ns.saturating_add(self.slow_ns).saturating_add(1))
    }

    /// Takes one look into account (looks in time order).
    pub fn observe(&mut self, l: SlowLook) -> SlowStep {
        let prev = self.last_look_ns;
        self.last_look_ns = l.now_ns;
        let inside = l.place == Some(Place::Wait) || l.parked;
        if l.ticked || inside {
            // The iteration (if one was under way) ended since `prev`.
            let step = if self.captured && !self.hung {
                SlowStep::Ended {
                    at_most_ns: l.now_ns.saturating_sub(self.since_ns),
                    at_least_ns: self
                        .first_out_ns
                        .map_or(0, |f| self.last_out_ns.saturating_sub(f)),
                }
            } else {
                SlowStep::Nothing
            };
            self.captured = false;
            self.hung = false;
            if inside {
                self.since_ns = l.now_ns;
                self.first_out_ns = None;
            } else {
                // It entered after `prev`: whatever it runs now began later.
                self.since_ns = prev;
                let out_now = l.place.is_some();
                self.first_out_ns = out_now.then_some(l.now_ns);
                self.last_out_ns = l.now_ns;
            }
            return step;
        }
        // Out of its wait call (or not read), no entry since `prev`.
        self.first_out_ns.get_or_insert(l.now_ns);
        self.last_out_ns = l.now_ns;
        if l.hung {
            self.hung = true;
            return if std::mem::replace(&mut self.captured, false) {
                SlowStep::Dropped
            } else {
                SlowStep::Nothing
            };
        }
        if !self.captured && !self.hung && l.now_ns.saturating_sub(self.since_ns) > self.slow_ns {
            self.captured = true;
            return SlowStep::Capture;
        }
        SlowStep::Nothing
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
            futex: false,
            carried: false,
        }
    }

    /// A look at a thread asleep in a futex; `carried`: another loop thread
    /// carries on.
    fn in_futex(t: u64, entries: u64, carried: bool) -> Look {
        Look {
            now_ns: t * MS,
            entries,
            waiting: Some(false),
            futex: true,
            carried,
        }
    }

    const TICKED: Peer = Peer {
        is_loop: true,
        ticked: true,
        place: None,
    };

    fn at(place: Place) -> Peer {
        Peer {
            is_loop: true,
            ticked: false,
            place: Some(place),
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

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn places_by_proc_syscall_lines() {
        let p = |b: &[u8]| place_of(Arch::X86_64, &parse_proc_syscall(b).unwrap());
        // epoll_wait (232).
        assert_eq!(
            p(b"232 0x3 0x7ffd 0x80 0x64 0x0 0x0 0x7ffd1 0x7f12\n"),
            Place::Wait
        );
        // futex (202) FUTEX_WAIT_BITSET_PRIVATE (0x89): tokio's parked worker.
        assert_eq!(
            p(b"202 0x7f3a5c0 0x89 0x0 0x0 0x0 0xffffffff 0x7ffd1 0x7f12\n"),
            Place::Futex
        );
        // futex FUTEX_WAIT_PRIVATE (0x80): glibc's condvar/lock.
        assert_eq!(
            p(b"202 0x7f 0x80 0x2 0x0 0x0 0x0 0x7ffd 0x7f1\n"),
            Place::Futex
        );
        // futex FUTEX_WAKE_PRIVATE (0x81) is no wait.
        assert_eq!(
            p(b"202 0x7f 0x81 0x1 0x0 0x0 0x0 0x7ffd 0x7f1\n"),
            Place::Elsewhere
        );
        // futex_waitv (449).
        assert_eq!(
            p(b"449 0x7f 0x2 0x0 0x0 0x1 0x0 0x7ffd 0x7f1\n"),
            Place::Futex
        );
        // clock_nanosleep (230): a sleep, not parking.
        assert_eq!(
            p(b"230 0x1 0x0 0x7ffd 0x0 0x0 0x0 0x7ffd 0x7f1\n"),
            Place::Elsewhere
        );
        assert_eq!(p(b"running\n"), Place::Elsewhere);
        assert_eq!(p(b"-1 0x7ffd 0x55\n"), Place::Elsewhere);
    }

    #[test]
    fn another_thread_carries_when_it_iterates_or_is_out_elsewhere() {
        // Me (0) in a futex; the other one ticked, waits, or runs.
        let futex = at(Place::Futex);
        assert!(carried_by_other(&[futex, TICKED], 0));
        assert!(carried_by_other(&[futex, at(Place::Wait)], 0));
        assert!(carried_by_other(&[futex, at(Place::Elsewhere)], 0));
        // Only threads in futexes: nobody carries; alone: nobody.
        assert!(!carried_by_other(&[futex, at(Place::Futex), futex], 0));
        assert!(!carried_by_other(&[futex], 0));
        assert!(!carried_by_other(&[], 0));
        // Itself is not counted.
        assert!(!carried_by_other(&[TICKED, futex], 0));
        assert!(carried_by_other(&[TICKED, futex], 1));
    }

    #[test]
    fn a_thread_not_yet_a_loop_carries_only_by_iterating() {
        let not_loop = |ticked, place| Peer {
            is_loop: false,
            ticked,
            place,
        };
        let futex = at(Place::Futex);
        // A worker holding the driver in epoll_wait, counted twice so far.
        assert!(carried_by_other(
            &[futex, not_loop(false, Some(Place::Wait))],
            0
        ));
        assert!(carried_by_other(&[futex, not_loop(true, None)], 0));
        // A thread that never polled, computing or reading: says nothing.
        assert!(!carried_by_other(
            &[futex, not_loop(false, Some(Place::Elsewhere))],
            0
        ));
        assert!(!carried_by_other(
            &[futex, not_loop(false, Some(Place::Futex))],
            0
        ));
    }

    #[test]
    fn a_pool_thread_in_a_futex_while_another_carries_is_parked_not_hung() {
        // A tokio worker: polls, then sleeps on its condvar for 10 s while
        // another worker holds the IO driver in epoll_wait.
        let mut t = ThreadTrack::new(0, false);
        t.observe(look(10, 5, None));
        let v = t.observe(in_futex(60, 5, true));
        assert!(v.parked && v.became_parked && v.iteration_ended());
        assert_eq!(v.stall_ns, 0);
        assert_eq!(v.iteration_ns, 50 * MS);
        for i in 2..=200 {
            let v = t.observe(in_futex(10 + i * 50, 5, true));
            assert!(v.parked && !v.became_parked && !v.iteration_ended());
            assert_eq!(v.stall_ns, 0);
            assert_eq!(v.iteration_ns, 0);
        }
        // Woken, it polls again: a tick, no longer parked.
        let v = t.observe(look(10_100, 6, None));
        assert!(v.ticked && !v.parked);
        assert!(!t.is_parked());
    }

    #[test]
    fn a_parked_thread_stays_parked_when_the_others_stop_carrying() {
        // An executor thread parked while the main loop ran; then the main
        // loop blocks on a lock too: the executor thread is still parked.
        let mut t = ThreadTrack::new(0, false);
        t.observe(look(10, 3, None));
        assert!(t.observe(in_futex(60, 3, true)).parked);
        let v = t.observe(in_futex(2060, 3, false));
        assert!(v.parked);
        assert_eq!(v.stall_ns, 0);
    }

    #[test]
    fn a_lone_loop_thread_stuck_on_a_futex_is_a_hang() {
        // redis's main thread, or the first loop thread to block on a lock
        // while every other one is already parked: nobody carries.
        let mut t = ThreadTrack::new(0, false);
        t.observe(look(100, 10, None));
        let v = t.observe(in_futex(150, 10, false));
        assert!(!v.parked);
        assert_eq!(v.stall_ns, 50 * MS);
        let v = t.observe(in_futex(2100, 10, false));
        assert!(!v.parked);
        assert_eq!(v.stall_ns, 2000 * MS);
        // Found in its futex at a look where another one carries (it came
        // back): parked from then on (no false alarm wins over a late one).
        let v = t.observe(in_futex(2150, 10, true));
        assert!(v.parked && v.iteration_ended());
        assert_eq!(v.stall_ns, 0);
        assert_eq!(v.iteration_ns, 2050 * MS);
    }

    #[test]
    fn a_hung_worker_whose_handler_returns_and_parks_has_ended_its_iteration() {
        // A tokio worker blocked 2 s in a handler, then parked on its
        // condvar while another worker holds the driver: recovered.
        let mut t = ThreadTrack::new(0, false);
        t.observe(look(100, 10, None));
        let v = t.observe(look(2100, 10, Some(false)));
        assert_eq!(v.stall_ns, 2000 * MS);
        let v = t.observe(in_futex(2150, 10, true));
        assert!(v.iteration_ended() && !v.ticked);
        assert_eq!(v.stall_ns, 0);
        assert_eq!(v.iteration_ns, 2050 * MS);
    }

    #[test]
    fn a_parked_thread_that_wakes_and_computes_stalls_from_its_last_look_asleep() {
        let mut t = ThreadTrack::new(0, false);
        t.observe(look(10, 5, None));
        assert!(t.observe(in_futex(60, 5, true)).parked);
        assert!(t.observe(in_futex(1000, 5, true)).parked);
        // Out of the futex, computing, never re-entering its wait call.
        let v = t.observe(look(1300, 5, Some(false)));
        assert!(!v.parked);
        assert_eq!(v.stall_ns, 300 * MS);
    }

    #[test]
    fn a_thread_sleeping_elsewhere_is_never_parked() {
        // A worker in std::thread::sleep (clock_nanosleep) while others run:
        // no futex, so its stall counts (a blocked worker).
        let mut t = ThreadTrack::new(0, false);
        t.observe(look(10, 5, None));
        let mut l = look(1010, 5, Some(false));
        l.carried = true;
        let v = t.observe(l);
        assert!(!v.parked);
        assert_eq!(v.stall_ns, 1000 * MS);
    }

    #[test]
    fn an_iteration_is_timed_by_the_counters_only_when_a_look_sighted_it() {
        // Looks sighted the thread out at 50 and 75 ms.
        let seen = [50 * MS, 75 * MS];
        assert!(sighted_during(40 * MS, 60 * MS, &seen));
        assert!(sighted_during(70 * MS, 80 * MS, &seen));
        // The old hole: 30 ms (over a 25 ms look), begun just after a look
        // (at 25 ms, where it ticked) and ended before 50: no sighting, so
        // the window's.
        assert!(!sighted_during(26 * MS, 49 * MS, &seen));
        // Short ones between sightings, and the sighting instants
        // themselves (not strictly inside).
        assert!(!sighted_during(51 * MS, 52 * MS, &seen));
        assert!(!sighted_during(50 * MS, 75 * MS, &[]));
        assert!(!sighted_during(50 * MS, 60 * MS, &[50 * MS]));
    }

    #[test]
    fn every_iteration_is_timed_once_by_the_counters_or_a_window() {
        // Random timelines (a fixed LCG): waits of 0-2 looks, iterations of
        // 0.05-3 looks, looks every 25 ms with jitter. The counters time an
        // iteration when it ends after a sighting (the watch's `t.out`
        // rule), a window every one no sighting falls into: together, each
        // iteration exactly once.
        const P: u64 = 25 * MS;
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = |n: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n.max(1)
        };
        for _ in 0..200 {
            // (entry, return) of each wait; iteration i runs from return i
            // to entry i + 1.
            let mut waits = Vec::new();
            let mut t = 5 * MS;
            for _ in 0..40 {
                let wait = if rand(3) == 0 {
                    1_000
                } else {
                    rand(2 * P) + 1_000
                };
                waits.push((t, t + wait));
                t += wait + rand(3 * P) + P / 20;
            }
            // A last wait, long enough for the looks to settle.
            waits.push((t, t + 10 * P));
            let end = t + 10 * P;
            let mut track = ThreadTrack::new(0, true);
            let mut sightings = Vec::new();
            let mut out = false;
            let mut counted = 0usize;
            let mut look = 0u64;
            while look < end {
                look += P - P / 4 + rand(P / 2);
                let entries = waits.iter().filter(|w| w.0 <= look).count() as u64;
                let inside = waits.iter().any(|w| w.0 <= look && look < w.1);
                let v = track.observe(Look {
                    now_ns: look,
                    entries,
                    waiting: track.needs_wait_check(entries).then_some(inside),
                    futex: false,
                    carried: false,
                });
                if v.stall_ns > 0 {
                    out = true;
                    sightings.push(look);
                }
                if v.iteration_ended() && out {
                    out = false;
                    counted += 1;
                }
            }
            let iterations: Vec<(u64, u64)> = waits.windows(2).map(|w| (w[0].1, w[1].0)).collect();
            let sighted = iterations
                .iter()
                .filter(|&&(r, e)| sighted_during(r, e, &sightings))
                .count();
            assert_eq!(counted, sighted, "{iterations:?} {sightings:?}");
        }
    }

    fn slow_look(t: u64, ticked: bool, place: Option<Place>) -> SlowLook {
        SlowLook {
            now_ns: t * MS,
            ticked,
            place,
            parked: false,
            hung: false,
        }
    }

    #[test]
    fn every_iteration_past_slow_is_captured_while_it_lasts() {
        // --slow 20 ms, looks every 5 ms (a quarter), the iteration begins
        // anywhere between two looks and lasts just over 20 ms: the look at
        // the deadline falls inside it.
        use Place::*;
        for start in 0..5u64 {
            let mut c = SlowClock::new(20 * MS, 0);
            // At 0 it is inside epoll_wait; it returns at `start` + 0.5 ms.
            assert_eq!(
                c.observe(slow_look(0, false, Some(Wait))),
                SlowStep::Nothing
            );
            let s = start * MS + MS / 2;
            let e = s + 20 * MS + MS / 2;
            let mut captured_at = None;
            let mut t = 5 * MS;
            let mut ended = None;
            let mut entered = false;
            while t <= e + 10 * MS {
                if let Some(d) = c.deadline() {
                    if d < t {
                        t = d;
                    }
                }
                let place = if t < s || t > e { Wait } else { Elsewhere };
                // Entered once, at `e`: the first look after it ticks.
                let ticked = t > e && !std::mem::replace(&mut entered, t > e);
                let step = c.observe(SlowLook {
                    now_ns: t,
                    ticked,
                    place: Some(place),
                    parked: false,
                    hung: false,
                });
                match step {
                    SlowStep::Capture => captured_at = Some(t),
                    SlowStep::Ended {
                        at_most_ns,
                        at_least_ns,
                    } => ended = Some((at_most_ns, at_least_ns)),
                    _ => {}
                }
                t = (t / (5 * MS) + 1) * 5 * MS;
            }
            let at = captured_at.unwrap_or_else(|| panic!("start {start}: not captured"));
            assert!(
                s < at && at < e,
                "start {start}: captured at {at}, iteration {s}..{e}"
            );
            let (most, least) = ended.expect("ended");
            assert!(
                least <= e - s && e - s <= most,
                "{least} <= {} <= {most}",
                e - s
            );
        }
    }

    #[test]
    fn on_random_timelines_every_slow_iteration_is_captured_and_only_near_slow_ones() {
        // --slow 20 ms, looks 2.5-5 ms apart (at most a quarter) and at the
        // clock's deadline; waits of 0-10 ms, iterations of 0.1-40 ms.
        const SLOW: u64 = 20 * MS;
        const P: u64 = SLOW / 4;
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = |n: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n.max(1)
        };
        for _ in 0..100 {
            let mut waits = Vec::new();
            let mut t = MS;
            for _ in 0..60 {
                let wait = rand(10 * MS) + 1_000;
                waits.push((t, t + wait));
                t += wait + rand(40 * MS) + MS / 10;
            }
            waits.push((t, t + 100 * MS));
            let end = t + 100 * MS;
            let iterations: Vec<(u64, u64)> = waits.windows(2).map(|w| (w[0].1, w[1].0)).collect();
            let mut c = SlowClock::new(SLOW, 0);
            let mut captures = Vec::new();
            let mut ended = Vec::new();
            let (mut look, mut entries0) = (0u64, 0u64);
            while look < end {
                let next = look + P / 2 + rand(P / 2);
                look = c.deadline().map_or(next, |d| d.clamp(look + 1, next));
                let entries = waits.iter().filter(|w| w.0 <= look).count() as u64;
                let inside = waits.iter().any(|w| w.0 <= look && look < w.1);
                let step = c.observe(SlowLook {
                    now_ns: look,
                    ticked: entries > entries0,
                    place: Some(if inside {
                        Place::Wait
                    } else {
                        Place::Elsewhere
                    }),
                    parked: false,
                    hung: false,
                });
                entries0 = entries;
                match step {
                    SlowStep::Capture => captures.push(look),
                    SlowStep::Ended {
                        at_most_ns,
                        at_least_ns,
                    } => ended.push((look, at_most_ns, at_least_ns)),
                    _ => {}
                }
            }
            for &(s, e) in &iterations {
                let caught: Vec<u64> = captures
                    .iter()
                    .copied()
                    .filter(|&c| s < c && c < e)
                    .collect();
                if e - s > SLOW {
                    assert_eq!(caught.len(), 1, "{s}..{e} past --slow: {captures:?}");
                }
                if !caught.is_empty() {
                    assert!(e - s > SLOW - P, "{s}..{e} captured, too short");
                    // Warned at the first look after it ended, with bounds.
                    let &(_, most, least) =
                        ended.iter().find(|&&(at, _, _)| at >= e).expect("its end");
                    assert!(least <= e - s && e - s <= most, "{least} {} {most}", e - s);
                }
            }
            assert_eq!(captures.len(), ended.len());
        }
    }

    #[test]
    fn a_short_iteration_is_not_captured_and_a_tick_resets_the_clock() {
        use Place::*;
        let mut c = SlowClock::new(20 * MS, 0);
        c.observe(slow_look(0, false, Some(Wait)));
        // 10 ms out, then back in the wait: nothing.
        assert_eq!(
            c.observe(slow_look(5, false, Some(Elsewhere))),
            SlowStep::Nothing
        );
        assert_eq!(
            c.observe(slow_look(10, false, Some(Elsewhere))),
            SlowStep::Nothing
        );
        assert_eq!(
            c.observe(slow_look(15, true, Some(Wait))),
            SlowStep::Nothing
        );
        assert_eq!(c.deadline(), Some(35 * MS + 1));
        // A busy loop ticking at every look, out whenever read: never slow.
        for i in 4..100 {
            assert_eq!(
                c.observe(slow_look(i * 5, true, Some(Elsewhere))),
                SlowStep::Nothing
            );
        }
        // Ticked at 495 (entered after 490): the deadline is 490 + 20 ms.
        assert_eq!(c.deadline(), Some(510 * MS + 1));
    }

    #[test]
    fn a_slow_iteration_that_becomes_a_hang_is_dropped() {
        use Place::*;
        let mut c = SlowClock::new(20 * MS, 0);
        c.observe(slow_look(0, false, Some(Wait)));
        assert_eq!(
            c.observe(slow_look(21, false, Some(Elsewhere))),
            SlowStep::Capture
        );
        assert!(c.is_captured());
        assert_eq!(c.deadline(), None);
        let mut hung = slow_look(300, false, Some(Elsewhere));
        hung.hung = true;
        assert_eq!(c.observe(hung), SlowStep::Dropped);
        assert_eq!(c.observe(hung), SlowStep::Nothing);
        assert_eq!(c.deadline(), None);
        // Its end is the hang's recovery, not a slow iteration.
        assert_eq!(c.observe(slow_look(2000, true, None)), SlowStep::Nothing);
        // The next one is judged afresh, from the look before the entry
        // (the thread entered somewhere after 300 ms).
        assert_eq!(c.deadline(), Some(320 * MS + 1));
    }

    #[test]
    fn a_parked_thread_ends_its_iteration() {
        let mut c = SlowClock::new(20 * MS, 0);
        c.observe(slow_look(0, true, None));
        assert_eq!(
            c.observe(slow_look(30, false, Some(Place::Futex))),
            SlowStep::Capture
        );
        let mut parked = slow_look(35, false, Some(Place::Futex));
        parked.parked = true;
        assert_eq!(
            c.observe(parked),
            SlowStep::Ended {
                at_most_ns: 35 * MS,
                at_least_ns: 0
            }
        );
    }
}
