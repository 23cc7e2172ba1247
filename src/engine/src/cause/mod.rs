//! Why a thread is stuck, not only where: a [`Cause`] for a thread of a
//! snapshot, from what the stop captured (its state letter and registers:
//! the system call and its arguments), facts read as soon as the target
//! runs again ([`collect`]: fd targets, socket tables of its network namespace,
//! the owner field of a glibc mutex, paths and timespecs in its memory), and
//! deltas of counters between two moments ([`Sample`]: `schedstat`, major
//! faults, the cgroup's `cpu.stat`).
//!
//! Computing a cause adds nothing to the freeze: under the stop only the
//! registers and the stack are copied, as for any snapshot; everything else
//! is read right after the detach, by the capture ([`capture`]: the
//! snapshot carries it). [`classify`] and [`capture::thread_cause`] are
//! pure: the offline stage reads nothing of the target.
//!
//! Kinds, in the order they are decided:
//! - `stopped`: job control or a tracer;
//! - `io`: uninterruptible sleep (`D`), or major page faults during the stall;
//! - `lock`: a futex wait, naming the owner of a glibc mutex;
//! - `syscall`: any other blocking system call, arguments resolved;
//! - `throttled`: runnable but not running (run-queue delay, cgroup quota);
//! - `on_cpu`: running its own code;
//! - `unknown`: not enough evidence (no registers, no deltas).

pub mod capture;
pub mod collect;
#[cfg(test)]
mod fake;
pub mod parse;
pub mod syscalls;
mod table;

use std::fmt::Write as _;
use std::net::SocketAddr;

use crate::snapshot::{Registers, StopKind};
use parse::{CgroupVersion, CpuStat, FaultStat, ProcSyscall, Quota, SchedStat};
use syscalls::Call;

/// What a thread is doing, in one word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CauseKind {
    /// Running on a CPU.
    OnCpu,
    /// Blocked in a system call.
    Syscall,
    /// Waiting on a futex (a lock, a condition variable).
    Lock,
    /// Runnable but not running (CPU contention or a cgroup quota).
    Throttled,
    /// Uninterruptible sleep or page faults.
    Io,
    /// Stopped by job control or held by a tracer.
    Stopped,
    /// Not enough evidence.
    Unknown,
}

impl CauseKind {
    /// The kind as JSON and StatsD spell it (`on_cpu`, `syscall`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            CauseKind::OnCpu => "on_cpu",
            CauseKind::Syscall => "syscall",
            CauseKind::Lock => "lock",
            CauseKind::Throttled => "throttled",
            CauseKind::Io => "io",
            CauseKind::Stopped => "stopped",
            CauseKind::Unknown => "unknown",
        }
    }
}

/// A cgroup's throttling state at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupSample {
    /// The cgroup's directory (`/sys/fs/cgroup/cpu/...`).
    pub dir: String,
    /// Its hierarchy.
    pub version: CgroupVersion,
    /// Its `cpu.stat` counters.
    pub stat: CpuStat,
    /// Its CFS quota, if one is set.
    pub quota: Option<Quota>,
}

/// Counters of one thread at one moment, read without stopping it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// When (our CLOCK_MONOTONIC, ns).
    pub at_ns: u64,
    /// `schedstat`, if readable.
    pub sched: Option<SchedStat>,
    /// State and fault counters from `stat`, if readable.
    pub faults: Option<FaultStat>,
    /// The CPU cgroups of the thread, innermost first (ancestors up to the
    /// hierarchy's root: a quota on a parent throttles its children).
    pub cgroups: Vec<CgroupSample>,
}

/// What changed between two samples of a thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    /// Wall time between them, ns.
    pub wall_ns: u64,
    /// Time on a CPU, ns.
    pub run_ns: Option<u64>,
    /// Time runnable but waiting for a CPU, ns.
    pub wait_ns: Option<u64>,
    /// Major page faults.
    pub majflt: Option<u64>,
    /// The cgroup that throttled the most in between, if any did, or else
    /// the innermost one with a quota.
    pub cgroup: Option<CgroupDelta>,
}

/// Throttling of one cgroup between two samples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupDelta {
    /// The cgroup's directory.
    pub dir: String,
    /// Its hierarchy.
    pub version: CgroupVersion,
    /// Periods throttled in between.
    pub nr_throttled: u64,
    /// Periods elapsed in between.
    pub nr_periods: u64,
    /// Time throttled in between, ns.
    pub throttled_ns: u64,
    /// Its quota (at the later sample).
    pub quota: Option<Quota>,
}

impl Sample {
    /// The changes from `earlier` to this sample (counters that went
    /// backwards, e.g. a reused thread id, count as unknown).
    pub fn since(&self, earlier: &Sample) -> Delta {
        let diff = |a: Option<u64>, b: Option<u64>| a?.checked_sub(b?);
        let mut cgroup: Option<CgroupDelta> = None;
        for now in &self.cgroups {
            let Some(then) = earlier.cgroups.iter().find(|c| c.dir == now.dir) else {
                continue;
            };
            let d = CgroupDelta {
                dir: now.dir.clone(),
                version: now.version,
                nr_throttled: now.stat.nr_throttled.saturating_sub(then.stat.nr_throttled),
                nr_periods: now.stat.nr_periods.saturating_sub(then.stat.nr_periods),
                throttled_ns: now.stat.throttled_ns.saturating_sub(then.stat.throttled_ns),
                quota: now.quota,
            };
            let better = match &cgroup {
                None => d.nr_throttled > 0 || d.quota.is_some(),
                Some(c) => d.nr_throttled > c.nr_throttled,
            };
            if better {
                cgroup = Some(d);
            }
        }
        Delta {
            wall_ns: self.at_ns.saturating_sub(earlier.at_ns),
            run_ns: diff(
                self.sched.map(|s| s.run_ns),
                earlier.sched.map(|s| s.run_ns),
            ),
            wait_ns: diff(
                self.sched.map(|s| s.wait_ns),
                earlier.sched.map(|s| s.wait_ns),
            ),
            majflt: diff(
                self.faults.map(|f| f.majflt),
                earlier.faults.map(|f| f.majflt),
            ),
            cgroup,
        }
    }
}

/// What a file descriptor refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FdTarget {
    /// A TCP socket.
    Tcp {
        /// Local address.
        local: SocketAddr,
        /// Peer address (`0.0.0.0:0` when not connected).
        remote: SocketAddr,
        /// TCP state name.
        state: &'static str,
        /// Bytes received and not yet read.
        rx_queue: u32,
    },
    /// A UDP socket.
    Udp {
        /// Local address.
        local: SocketAddr,
        /// Peer address, if connected.
        remote: Option<SocketAddr>,
    },
    /// A Unix domain socket.
    Unix {
        /// Bound path, if any.
        path: Option<String>,
        /// Connected.
        connected: bool,
    },
    /// A socket found in none of the tables (netlink, packet, another namespace).
    Socket(u64),
    /// A pipe.
    Pipe(u64),
    /// An anonymous inode (`eventfd`, `eventpoll`, …).
    Anon(String),
    /// A file.
    Path(String),
    /// The link could not be read (closed meanwhile, no permission).
    Unknown,
}

impl FdTarget {
    /// A short kind for JSON: `tcp`, `udp`, `unix`, `socket`, `pipe`, `anon`, `file`, `unknown`.
    pub fn kind(&self) -> &'static str {
        match self {
            FdTarget::Tcp { .. } => "tcp",
            FdTarget::Udp { .. } => "udp",
            FdTarget::Unix { .. } => "unix",
            FdTarget::Socket(_) => "socket",
            FdTarget::Pipe(_) => "pipe",
            FdTarget::Anon(_) => "anon",
            FdTarget::Path(_) => "file",
            FdTarget::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for FdTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FdTarget::Tcp {
                local,
                remote,
                state,
                rx_queue,
            } => {
                if *state == "LISTEN" {
                    write!(f, "TCP listening on {local}")?;
                } else {
                    write!(f, "TCP {local} -> {remote}")?;
                    if *state != "ESTABLISHED" {
                        write!(f, " {state}")?;
                    }
                }
                if *rx_queue > 0 {
                    write!(f, ", {rx_queue} bytes unread")?;
                }
                Ok(())
            }
            FdTarget::Udp { local, remote } => match remote {
                Some(r) => write!(f, "UDP {local} -> {r}"),
                None => write!(f, "UDP {local}"),
            },
            FdTarget::Unix { path, connected } => {
                write!(f, "Unix socket")?;
                if let Some(p) = path {
                    write!(f, " {p}")?;
                }
                if !connected {
                    write!(f, " (not connected)")?;
                }
                Ok(())
            }
            FdTarget::Socket(i) => write!(f, "socket inode {i}"),
            FdTarget::Pipe(i) => write!(f, "pipe inode {i}"),
            FdTarget::Anon(n) => write!(f, "{n}"),
            FdTarget::Path(p) => write!(f, "{p}"),
            FdTarget::Unknown => write!(f, "?"),
        }
    }
}

/// A resolved file descriptor argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdInfo {
    /// The descriptor.
    pub fd: i32,
    /// What it refers to.
    pub target: FdTarget,
}

impl std::fmt::Display for FdInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "fd {}: {}", self.fd, self.target)
    }
}

/// A sleep's requested time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sleep {
    /// Nanoseconds (to sleep, or the deadline when `absolute`).
    pub ns: u64,
    /// `TIMER_ABSTIME`: `ns` is a time on `clock`.
    pub absolute: bool,
    /// The clock id (`clock_nanosleep`), if given.
    pub clock: Option<u64>,
    /// How long is left: for an absolute sleep, until its deadline (when
    /// the clock could be read, the target's time namespace accounted for);
    /// for a relative one whose request and remainder are the same buffer,
    /// `ns` itself (the kernel writes the remainder there at every stop, so
    /// the request is lost).
    pub remaining_ns: Option<u64>,
}

/// A process a `wait4` waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child {
    /// Its pid as the target sees it.
    pub pid: i32,
    /// Its name (`comm`), if it could be read.
    pub name: Option<String>,
}

/// What is known of a futex wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockInfo {
    /// The futex word's address.
    pub futex: u64,
    /// The data symbol containing it (a `static` mutex), if any.
    pub symbol: Option<String>,
    /// The owner's thread id, when the futex word belongs to a glibc
    /// `pthread_mutex_t` whose `__owner` names a thread of this process (or
    /// a priority-inheritance futex, whose word holds it).
    pub owner_tid: Option<i32>,
    /// The owner as the same snapshot captured it (filled by the caller,
    /// which has the symbolized stacks).
    pub owner: Option<Owner>,
}

/// The thread holding a lock, from the same snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Thread id.
    pub tid: i32,
    /// Thread name.
    pub name: String,
    /// The frame it is blocked in (`flush_journal (src/journal.c:88)`), if known.
    pub frame: Option<String>,
    /// The system call it is in, if any (`clock_nanosleep`).
    pub syscall: Option<String>,
}

/// Facts read after the detach for one thread.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// The file descriptors among the call's arguments.
    pub fds: Vec<FdInfo>,
    /// A path argument, read from the target's memory (bounded).
    pub path: Option<String>,
    /// A sleep's requested time.
    pub sleep: Option<Sleep>,
    /// A timeout argument in milliseconds (`poll`, `epoll_wait`; -1 forever).
    pub timeout_ms: Option<i64>,
    /// The child a `wait4` waits for (`pid` ≤ 0: any child, or a group).
    pub child: Option<Child>,
    /// A futex wait.
    pub lock: Option<LockInfo>,
    /// What `/proc/PID/task/TID/syscall` said (threads that were not stopped).
    pub proc_syscall: Option<ProcSyscall>,
    /// The tracer holding the thread (`TracerPid:`, its name), other than us.
    pub tracer: Option<(i32, String)>,
}

/// Whether the thread moved between the snapshots of an episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Motion {
    /// The same instruction and registers in every snapshot so far.
    Stuck,
    /// Something changed: it is making progress (a loop, a retry, a long computation).
    Busy,
}

/// Progress across the snapshots of an episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Stuck or busy.
    pub motion: Motion,
    /// How many snapshots were compared (this one included).
    pub snapshots: u32,
    /// CPU the thread used since the previous snapshot, ns.
    pub cpu_since_previous_ns: Option<u64>,
    /// Busy although the registers did not change: the same call entered
    /// again and again (a retry or poll loop, from [`SyscallActivity`]).
    pub retrying: bool,
}

/// Entries (beyond our own stops) into system calls during a stall that
/// make a thread busy rather than stuck: a sleep or read retried in a loop
/// makes hundreds a second; a thread blocked in one call makes none, and
/// each snapshot may add one (the call restarted after the stop).
pub const BUSY_ENTRIES: u64 = 10;

/// A thread's system calls since its stall began (see `crate::syscount`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyscallActivity {
    /// Entries into any system call, counted by the kernel.
    pub entered: u64,
    /// Over how long (from when the counter was opened), ns.
    pub window_ns: u64,
    /// Our own stops of the thread in that time: each may restart the call
    /// it was blocked in, one entry that is not its own doing.
    pub ours: u32,
    /// The most frequent calls among the sampled entries, most first (at
    /// most 3).
    pub top: Vec<SyscallCount>,
    /// Entries sampled (`None`: counted only, no names).
    pub sampled: Option<u64>,
    /// Samples dropped because the ring was full between two reads.
    pub lost: u64,
}

/// One call among a thread's sampled entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyscallCount {
    /// Its number.
    pub nr: u64,
    /// Its name, if the table has one.
    pub name: Option<&'static str>,
    /// Sampled entries.
    pub count: u64,
}

impl SyscallActivity {
    /// Entries that are the thread's own doing (ours subtracted).
    pub fn own_entries(&self) -> u64 {
        self.entered.saturating_sub(u64::from(self.ours))
    }

    /// Busy: it keeps entering system calls ([`BUSY_ENTRIES`] or more of its own).
    pub fn busy(&self) -> bool {
        self.own_entries() >= BUSY_ENTRIES
    }

    /// `287 system calls in 2.95 s (clock_nanosleep 285, futex 2)` or `no
    /// system call in 0.75 s` (our own restarts said apart).
    pub fn text(&self) -> String {
        let over = secs2(self.window_ns);
        let mut s = match self.entered {
            0 => format!("no system call in {over}"),
            1 => format!("1 system call in {over}"),
            n => format!("{n} system calls in {over}"),
        };
        if !self.busy() && self.entered > 0 && self.ours > 0 {
            // A stop makes a blocked call restart: those are ours.
            s.push_str(if self.entered <= u64::from(self.ours) {
                ", only the restarts after our snapshots"
            } else {
                ", few beyond the restarts after our snapshots"
            });
        }
        if !self.top.is_empty() {
            let names: Vec<String> = self
                .top
                .iter()
                .map(|c| format!("{} {}", c.display_name(), c.count))
                .collect();
            let _ = write!(s, " ({}", names.join(", "));
            if let Some(n) = self.sampled.filter(|&n| n < self.entered) {
                let _ = write!(s, " of {n} sampled");
            }
            s.push(')');
        }
        s
    }
}

impl SyscallCount {
    /// The name, or `syscall 999` for a number without one.
    pub fn display_name(&self) -> String {
        self.name
            .map_or_else(|| format!("syscall {}", self.nr), str::to_string)
    }
}

/// Whether two captures of a thread are at the same place: the same
/// instruction, stack and registers (the scratch registers the `syscall`
/// instruction clobbers, `rcx` and `r11`, and the result register, which
/// holds a restart code, excepted).
pub fn same_place(a: &Registers, b: &Registers) -> bool {
    let norm = |r: &Registers| Registers {
        rax: 0,
        rcx: 0,
        r11: 0,
        // A sleep resumed as restart_syscall is the same call.
        orig_rax: 0,
        ..*r
    };
    norm(a) == norm(b)
}

/// Everything [`classify`] looks at for one thread.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    /// State letter sampled just before the stop.
    pub state: char,
    /// How the capture held it.
    pub stop: &'a StopKind,
    /// Its registers, if it was stopped.
    pub regs: Option<&'a Registers>,
    /// The system call it was in (see [`syscalls::from_regs`], or
    /// [`syscalls::from_proc`] for a thread that was not stopped).
    pub call: Option<Call>,
    /// Facts read after the detach.
    pub facts: &'a Facts,
    /// Counters over the stall so far (from a sample taken when the stall
    /// was first seen to one taken after this snapshot), if known.
    pub delta: Option<Delta>,
    /// How long it has been seen in uninterruptible sleep, ns.
    pub d_state_ns: Option<u64>,
    /// Progress across the episode's snapshots.
    pub progress: Option<Progress>,
    /// Its system calls since the stall began, if counted.
    pub syscalls: Option<SyscallActivity>,
}

/// Why a thread is where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// The kind.
    pub kind: CauseKind,
    /// Clear wording: `spinning on CPU (97 % of 1.52 s)`,
    /// `blocked in read(fd 7: TCP 127.0.0.1:40022 -> 127.0.0.1:5432)`.
    pub summary: String,
    /// The raw numbers behind it: state, call number and arguments, counters.
    pub raw: String,
    /// State letter.
    pub state: char,
    /// The system call, if in one.
    pub call: Option<Call>,
    /// Facts resolved for it.
    pub facts: Facts,
    /// Counters over the stall, if measured.
    pub delta: Option<Delta>,
    /// Progress across the episode's snapshots, if more than one was taken
    /// (or, at the first, if its system calls already show it busy).
    pub progress: Option<Progress>,
    /// Its system calls since the stall began, if counted.
    pub syscalls: Option<SyscallActivity>,
}

impl Cause {
    /// One line: the summary, the progress, then the raw numbers in brackets.
    pub fn line(&self) -> String {
        let mut s = self.summary.clone();
        if let Some(p) = self.progress_text() {
            let _ = write!(s, "; {p}");
        }
        if let Some(a) = &self.syscalls {
            let _ = write!(s, "; {}", a.text());
        }
        if !self.raw.is_empty() {
            let _ = write!(s, " [{}]", self.raw);
        }
        s
    }

    /// `stuck: same instruction and registers in 3 snapshots (cpu +0.000 s
    /// since the previous one)` or `busy, making progress (cpu +0.980 s …)`.
    pub fn progress_text(&self) -> Option<String> {
        let p = self.progress?;
        let cpu = p
            .cpu_since_previous_ns
            .map(|ns| format!(" (cpu +{} since the previous snapshot)", secs(ns)))
            .unwrap_or_default();
        Some(match p.motion {
            Motion::Stuck => format!(
                "stuck: same instruction and registers in {} snapshots{cpu}",
                p.snapshots
            ),
            Motion::Busy if p.retrying => format!(
                "busy retrying: the same call entered again and again (same registers in {} \
                 snapshot{}){cpu}",
                p.snapshots,
                if p.snapshots == 1 { "" } else { "s" }
            ),
            Motion::Busy => format!("busy, making progress{cpu}"),
        })
    }
}

fn secs(ns: u64) -> String {
    format!("{:.3} s", ns as f64 / 1e9)
}

fn secs2(ns: u64) -> String {
    format!("{:.2} s", ns as f64 / 1e9)
}

/// `10 ms`, `2.5 ms`, `1.000 s`.
fn ms_or_s(ns: u64) -> String {
    if ns >= 1_000_000_000 {
        return secs(ns);
    }
    let ms = ns as f64 / 1e6;
    if ms.fract() == 0.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

fn clock_name(id: u64) -> String {
    match id {
        0 => "CLOCK_REALTIME".into(),
        1 => "CLOCK_MONOTONIC".into(),
        7 => "CLOCK_BOOTTIME".into(),
        9 => "CLOCK_TAI".into(),
        n => format!("clock {n}"),
    }
}

fn quota_text(q: &Quota) -> String {
    format!(
        "quota {} per {}",
        ms_or_s(q.quota_us.saturating_mul(1000)),
        ms_or_s(q.period_us.saturating_mul(1000))
    )
}

/// The call with its arguments resolved: `read(fd 7: TCP …)`,
/// `clock_nanosleep(2.000 s)`, `wait4(pid 812 'sh')`, `openat(/mnt/x)`.
pub fn describe_call(call: &Call, facts: &Facts) -> String {
    let name = call.display_name();
    let mut parts: Vec<String> = Vec::new();
    let is = |n: &str| call.name == Some(n);
    if let Some(lock) = &facts.lock {
        parts.push(format!("0x{:x}", lock.futex));
    }
    if is("connect") {
        if let Some(fd) = facts.fds.first() {
            match &fd.target {
                FdTarget::Tcp { remote, .. } => parts.push(format!("fd {} -> {remote}", fd.fd)),
                _ => parts.push(fd.to_string()),
            }
        }
    } else {
        parts.extend(facts.fds.iter().map(|f| f.to_string()));
    }
    if let Some(p) = &facts.path {
        parts.push(p.clone());
    }
    if let Some(s) = &facts.sleep {
        let clock = match s.clock {
            Some(c) if c != 0 && c != 1 => format!("{}, ", clock_name(c)),
            _ => String::new(),
        };
        if s.absolute {
            let clock = clock_name(s.clock.unwrap_or(0));
            parts.push(match s.remaining_ns {
                Some(left) => format!("{} left, until {} on {clock}", secs(left), secs(s.ns)),
                None => format!("until {} on {clock}", secs(s.ns)),
            });
        } else if s.remaining_ns.is_some() {
            parts.push(format!("{clock}{} left", secs(s.ns)));
        } else {
            parts.push(format!("{clock}{}", secs(s.ns)));
        }
    }
    if let Some(ms) = facts.timeout_ms {
        parts.push(if ms < 0 {
            "no timeout".into()
        } else {
            format!("timeout {}", ms_or_s((ms as u64).saturating_mul(1_000_000)))
        });
    }
    if let Some(c) = &facts.child {
        parts.push(match (c.pid, &c.name) {
            (p, Some(n)) if p > 0 => format!("pid {p} '{n}'"),
            (p, None) if p > 0 => format!("pid {p}"),
            (-1, Some(n)) => format!("any child, e.g. '{n}'"),
            (-1, None) => "any child".into(),
            (0, _) => "any child in its process group".into(),
            (p, _) => format!("any child in process group {}", p.unsigned_abs()),
        });
    }
    format!("{name}({})", parts.join(", "))
}

fn lock_summary(lock: &LockInfo) -> String {
    match (&lock.owner, lock.owner_tid) {
        (Some(o), _) => {
            let mut s = "waiting for a lock".to_string();
            if let Some(sym) = &lock.symbol {
                let _ = write!(s, " ({sym})");
            }
            let _ = write!(s, " held by thread {} '{}'", o.tid, o.name);
            match (&o.frame, &o.syscall) {
                (Some(f), Some(c)) => {
                    let _ = write!(s, ", which is blocked in {f}, in {c}");
                }
                (Some(f), None) => {
                    let _ = write!(s, ", which is in {f}");
                }
                (None, Some(c)) => {
                    let _ = write!(s, ", which is in {c}");
                }
                (None, None) => {}
            }
            s
        }
        (None, Some(tid)) => match &lock.symbol {
            Some(sym) => format!("waiting for a lock ({sym}) held by thread {tid}"),
            None => format!("waiting for a lock held by thread {tid}"),
        },
        (None, None) => {
            let mut s = format!("futex wait on 0x{:x}", lock.futex);
            if let Some(sym) = &lock.symbol {
                let _ = write!(s, " ({sym})");
            }
            s.push_str(", no owner recorded (a condition variable, or a lock that does not name its holder)");
            s
        }
    }
}

fn ratio(part: Option<u64>, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part.map(|p| p as f64 / whole as f64))?
}

/// Major page faults during a stall that make it an `io` cause.
const MANY_MAJOR_FAULTS: u64 = 8;
/// Fraction of the wall time spent waiting for a CPU that makes a running
/// thread `throttled` (with cgroup throttling seen, a lower bar).
const WAIT_SHARE: f64 = 0.25;
/// With the cgroup throttled in between.
const WAIT_SHARE_THROTTLED: f64 = 0.10;

/// Decides the cause of one thread.
pub fn classify(input: &Input<'_>) -> Cause {
    let facts = input.facts;
    let mut raw = vec![format!("state {}", input.state)];
    if let Some(c) = &input.call {
        raw.push(format!(
            "syscall {}{}{}",
            c.raw(),
            if c.blocked { " blocked" } else { " returning" },
            if c.resumed {
                ", resumed by restart_syscall"
            } else {
                ""
            }
        ));
    } else if let Some(r) = input.regs {
        raw.push(format!("user code at 0x{:x}", r.rip));
    }
    if let Some(d) = &input.delta {
        let mut s = format!("over {}", secs(d.wall_ns));
        if let Some(run) = d.run_ns {
            let _ = write!(s, ": on CPU {}", secs(run));
        }
        if let Some(w) = d.wait_ns {
            let _ = write!(s, ", run-queue wait {}", secs(w));
        }
        if let Some(m) = d.majflt {
            let _ = write!(s, ", {m} major faults");
        }
        if let Some(cg) = &d.cgroup {
            let _ = write!(
                s,
                ", cgroup nr_throttled +{} of {} periods, throttled {}",
                cg.nr_throttled,
                cg.nr_periods,
                secs(cg.throttled_ns)
            );
        }
        raw.push(s);
    }
    let (kind, summary) = decide(input);
    Cause {
        kind,
        summary,
        raw: raw.join(", "),
        state: input.state,
        call: input.call.clone(),
        facts: facts.clone(),
        delta: input.delta.clone(),
        progress: input.progress,
        syscalls: input.syscalls.clone(),
    }
}

fn decide(input: &Input<'_>) -> (CauseKind, String) {
    let facts = input.facts;
    let call = input.call.as_ref();
    let blocked = call.filter(|c| c.blocked || matches!(input.state, 'S' | 'D'));
    let delta = input.delta.as_ref();
    // 1. Stopped.
    if let StopKind::JobControl(sig) = input.stop {
        return (
            CauseKind::Stopped,
            format!(
                "stopped by {} (job control): it runs again on SIGCONT",
                signal_name(*sig)
            ),
        );
    }
    if let Some((pid, name)) = &facts.tracer {
        return (
            CauseKind::Stopped,
            format!("held by another tracer, PID {pid} ({name})"),
        );
    }
    if matches!(input.state, 'T' | 't') {
        return (
            CauseKind::Stopped,
            format!("stopped (state {})", input.state),
        );
    }
    // 2. Uninterruptible sleep, page faults.
    let majflt = delta.and_then(|d| d.majflt).unwrap_or(0);
    if input.state == 'D' {
        let mut s = "in uninterruptible I/O (D)".to_string();
        if let Some(c) = call {
            let _ = write!(s, " in {}", describe_call(c, facts));
            if c.name == Some("vfork") {
                s.push_str(", waiting for its vfork child to exec or exit");
            }
        }
        if let Some(ns) = input.d_state_ns.filter(|&n| n > 0) {
            let _ = write!(s, " for {}", secs2(ns));
        }
        if majflt > 0 {
            let _ = write!(s, ", {majflt} major page faults");
        }
        return (CauseKind::Io, s);
    }
    if majflt >= MANY_MAJOR_FAULTS && blocked.is_none() {
        let wall = delta.map_or(0, |d| d.wall_ns);
        return (
            CauseKind::Io,
            format!(
                "paging: {majflt} major page faults in {} (reading its memory from disk)",
                secs2(wall)
            ),
        );
    }
    // 3. Locks and other blocking calls.
    if let Some(c) = blocked {
        if let Some(lock) = facts
            .lock
            .as_ref()
            .filter(|_| c.name == Some("futex") && syscalls::futex_waits(c.args[1]))
        {
            return (CauseKind::Lock, lock_summary(lock));
        }
        if c.name == Some("restart_syscall") {
            return (
                CauseKind::Syscall,
                "blocked in restart_syscall() (a sleep or wait that an earlier stop interrupted, resumed)"
                    .into(),
            );
        }
        if input.syscalls.as_ref().is_some_and(SyscallActivity::busy) {
            return (
                CauseKind::Syscall,
                format!(
                    "in a loop of system calls, now in {} (not blocked in one call)",
                    describe_call(c, facts)
                ),
            );
        }
        return (
            CauseKind::Syscall,
            format!("blocked in {}", describe_call(c, facts)),
        );
    }
    // 4. Running: on a CPU, or waiting for one.
    if let Some(d) = delta.filter(|d| d.wall_ns > 0) {
        let wall = d.wall_ns;
        let wait = ratio(d.wait_ns, wall).unwrap_or(0.0);
        let cpu = ratio(d.run_ns, wall).unwrap_or(0.0);
        let throttled_cg = d.cgroup.as_ref().filter(|c| c.nr_throttled > 0);
        let bar = if throttled_cg.is_some() {
            WAIT_SHARE_THROTTLED
        } else {
            WAIT_SHARE
        };
        if wait >= bar && wait >= cpu * 0.5 {
            let mut s = format!(
                "runnable but not scheduled for {} of {}",
                secs2(d.wait_ns.unwrap_or(0)).trim_end_matches(" s"),
                secs2(wall)
            );
            match throttled_cg {
                Some(cg) => {
                    let _ = write!(s, "; cgroup {} throttled {} times", cg.dir, cg.nr_throttled);
                    if let Some(q) = &cg.quota {
                        let _ = write!(s, " ({})", quota_text(q));
                    }
                }
                None => s.push_str(" (other threads or processes hold the CPUs)"),
            }
            return (CauseKind::Throttled, s);
        }
        if d.run_ns.is_some() {
            let pct = (cpu * 100.0).round().min(100.0);
            let verb = if cpu >= 0.5 {
                "spinning on CPU"
            } else {
                "running on CPU part of the time"
            };
            return (
                CauseKind::OnCpu,
                format!("{verb} ({pct:.0} % of {})", secs2(wall)),
            );
        }
    }
    match (&facts.proc_syscall, input.regs, input.state) {
        (_, Some(_), 'R') => (
            CauseKind::OnCpu,
            "running on CPU (state R, not in a system call)".into(),
        ),
        (Some(ProcSyscall::Running), _, _) => (CauseKind::OnCpu, "running on CPU".into()),
        (_, Some(_), s) => (
            CauseKind::Unknown,
            format!(
                "in its own code, not in a system call (state {s}: {})",
                crate::proc::state_name(s)
            ),
        ),
        (_, None, s) => {
            let why = match input.stop {
                StopKind::NotStopped(why) => format!("not captured: {why}"),
                _ => "no registers".into(),
            };
            (
                CauseKind::Unknown,
                format!("{why} (state {s}: {})", crate::proc::state_name(s)),
            )
        }
    }
}

fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {sig}"))
}

#[cfg(test)]
mod tests;
