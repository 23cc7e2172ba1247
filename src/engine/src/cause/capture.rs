//! The facts a cause needs, captured with the snapshot: read right after
//! the detach (the freeze does not grow) by the capture, never by the
//! offline stage. [`CauseFacts`] travels with the snapshot
//! ([`crate::snapshot::ProcessSnapshot::cause`]) and the dump
//! ([`crate::dump::Dump::cause`]); [`thread_cause`] is a pure function of
//! them, so a cause computed once the target is gone is the cause computed
//! while it ran.
//!
//! Per thread: the system call it was in (from its registers, a
//! `restart_syscall` resolved by the call an earlier capture saw; from
//! `/proc/PID/task/TID/syscall` for a thread that did not stop), the
//! [`Facts`] of that call ([`Collector::facts`]: fds, sockets, paths,
//! timespecs, a mutex's owner with its name and call, data symbols from the
//! snapshot's modules), the tracer holding a traced thread, and, when asked,
//! a [`Sample`] of its counters.

use std::collections::HashMap;

use super::collect::{Collector, Source};
use super::parse::{self, ProcSyscall};
use super::syscalls::{self, Arch, Call, Remembered};
use super::{Cause, Delta, Facts, Input, Owner, Progress, Sample};
use crate::dump::{Dump, ThreadDump};
use crate::snapshot::{StopKind, ThreadSnapshot};

/// Which threads of a capture get their cause's facts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CauseScope {
    /// None (a capture only for stacks).
    None,
    /// Every captured thread (`dump`), no counters.
    #[default]
    All,
    /// The threads running an event loop (the `loops` a dump is given; all
    /// when none is) and every thread of a capture of chosen threads, with
    /// a [`Sample`] of their counters (`watch`: the deltas of a stall start
    /// there).
    Loops,
}

/// What the cause of one thread needs beyond its registers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThreadFacts {
    /// Thread id.
    pub tid: i32,
    /// The system call it was in, if any.
    pub call: Option<Call>,
    /// The facts of that call (a lock's owner named, but not its frame:
    /// that is the offline stage's, see [`thread_cause`]).
    pub facts: Facts,
    /// Its counters just after the detach, when the scope asks for them.
    pub sample: Option<Sample>,
}

/// The cause facts of the threads of one snapshot (empty when none were
/// captured: a snapshot read from a file without them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CauseFacts {
    /// By thread, in capture order.
    pub threads: Vec<ThreadFacts>,
}

impl CauseFacts {
    /// The facts of thread `tid`, if captured.
    pub fn get(&self, tid: i32) -> Option<&ThreadFacts> {
        self.threads.iter().find(|t| t.tid == tid)
    }
}

/// The call thread `t` was in: from its registers (`remembered`: the call
/// an earlier capture saw, for a resumed sleep), or, for a thread that
/// could not be stopped, from `/proc/PID/task/TID/syscall`.
fn thread_call<S: Source>(
    col: &Collector<S>,
    t: &ThreadSnapshot,
    remembered: &HashMap<i32, Remembered>,
) -> (Option<Call>, Option<ProcSyscall>) {
    if let Some(r) = &t.regs {
        return (syscalls::from_regs(r, remembered.get(&t.tid)), None);
    }
    let ps = col
        .source()
        .proc_file(&format!("task/{}/syscall", t.tid))
        .and_then(|d| parse::parse_proc_syscall(&d));
    let call = match &ps {
        Some(ProcSyscall::In { nr, args }) => Some(syscalls::from_proc(Arch::X86_64, *nr, *args)),
        _ => None,
    };
    (call, ps)
}

/// `comm` of thread `tid` of the source's process.
fn task_comm<S: Source>(col: &Collector<S>, tid: i32) -> String {
    col.source()
        .proc_file(&format!("task/{tid}/comm"))
        .map(|d| String::from_utf8_lossy(d.trim_ascii_end()).into_owned())
        .unwrap_or_default()
}

/// The tracer holding thread `tid` (`TracerPid:` of its status, the
/// tracer's name), unless it is `us`.
fn tracer<S: Source>(col: &Collector<S>, tid: i32, us: i32) -> Option<(i32, String)> {
    let status = col.source().proc_file(&format!("task/{tid}/status"))?;
    let pid = crate::proc::parse_status(&status).tracer_pid;
    if pid <= 0 || pid == us {
        return None;
    }
    let name = col
        .source()
        .file(&format!("/proc/{pid}/comm"))
        .map(|d| String::from_utf8_lossy(d.trim_ascii_end()).into_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "?".to_string());
    Some((pid, name))
}

/// Captures the cause facts of the `threads` of a snapshot for which
/// `wanted` holds, reading through `col` (a [`super::collect::Live`]
/// source right after the detach; made with the snapshot's modules).
/// `remembered`: the blocking calls an earlier capture saw, by thread;
/// `sample`: take each wanted thread's [`Sample`] too.
pub fn capture<S: Source>(
    col: &mut Collector<S>,
    threads: &[ThreadSnapshot],
    wanted: &dyn Fn(i32) -> bool,
    remembered: &HashMap<i32, Remembered>,
    sample: bool,
) -> CauseFacts {
    // A one-thread capture (a slow tick) holds only the loop's thread: a
    // lock's owner may be any thread of the process.
    let mut tids: Vec<i32> = threads.iter().map(|t| t.tid).collect();
    if tids.len() == 1 {
        let others: Vec<i32> = col
            .source()
            .proc_dir("task")
            .iter()
            .filter_map(|t| t.parse::<i32>().ok())
            .filter(|t| !tids.contains(t))
            .collect();
        tids.extend(others);
    }
    let us = std::process::id() as i32;
    let mut out = CauseFacts::default();
    for t in threads.iter().filter(|t| wanted(t.tid)) {
        let (call, proc_syscall) = thread_call(col, t, remembered);
        let mut facts = col.facts(t.tid, call.as_ref(), &tids);
        facts.proc_syscall = proc_syscall;
        if let Some(lock) = &mut facts.lock {
            lock.owner = lock
                .owner_tid
                .map(|tid| match threads.iter().find(|x| x.tid == tid) {
                    Some(o) => Owner {
                        tid,
                        name: o.name.clone(),
                        frame: None,
                        syscall: o
                            .regs
                            .as_ref()
                            .and_then(|r| syscalls::from_regs(r, remembered.get(&tid)))
                            .filter(|c| c.blocked)
                            .map(|c| c.display_name()),
                    },
                    None => Owner {
                        tid,
                        name: task_comm(col, tid),
                        frame: None,
                        syscall: None,
                    },
                });
        }
        if matches!(t.state, 'T' | 't') && !matches!(t.stop, StopKind::JobControl(_)) {
            facts.tracer = tracer(col, t.tid, us);
        }
        let sample = sample.then(|| col.sample(t.tid));
        out.threads.push(ThreadFacts {
            tid: t.tid,
            call,
            facts,
            sample,
        });
    }
    out
}

/// The blocking calls of the stopped `threads`, for the next capture of
/// the same process (`previous`: what the capture before saw; bounded by
/// the snapshot's thread count, threads gone are forgotten).
pub fn remember(
    threads: &[ThreadSnapshot],
    previous: &HashMap<i32, Remembered>,
) -> HashMap<i32, Remembered> {
    let mut out = HashMap::with_capacity(threads.len());
    for t in threads {
        let Some(r) = &t.regs else { continue };
        match syscalls::from_regs(r, previous.get(&t.tid)) {
            Some(call) if call.blocked => {
                out.insert(t.tid, Remembered { ip: r.rip, call });
            }
            _ => {}
        }
    }
    out
}

/// What a cause knows of the stall beyond the snapshot: counters over it,
/// time in `D`, progress across the episode (all `None` for a one-off dump).
#[derive(Debug, Clone, Default)]
pub struct Stall {
    /// Counters over the stall so far.
    pub delta: Option<Delta>,
    /// How long the thread has been seen in uninterruptible sleep, ns.
    pub d_state_ns: Option<u64>,
    /// Progress across the episode's snapshots.
    pub progress: Option<Progress>,
    /// The thread's system calls since the stall began, if counted.
    pub syscalls: Option<super::SyscallActivity>,
}

/// The cause of thread `tid` of `dump`, from what the capture recorded
/// ([`Dump::cause`]) and `stall`: pure, the target may be gone.
/// `owner_frame` names the frame a captured lock owner is in (the
/// caller's rendering of its symbolized stack). A thread without captured
/// facts gets the cause its registers alone give.
pub fn thread_cause(
    dump: &Dump,
    tid: i32,
    owner_frame: &dyn Fn(&ThreadDump) -> Option<String>,
    stall: Stall,
) -> Option<Cause> {
    let t = dump.threads.iter().find(|t| t.tid == tid)?;
    let (call, mut facts) = match dump.cause.get(tid) {
        Some(f) => (f.call.clone(), f.facts.clone()),
        None => (
            t.regs.as_ref().and_then(|r| syscalls::from_regs(r, None)),
            Facts::default(),
        ),
    };
    if let Some(owner) = facts.lock.as_mut().and_then(|l| l.owner.as_mut()) {
        if let Some(o) = dump.threads.iter().find(|x| x.tid == owner.tid) {
            owner.frame = owner_frame(o);
        }
    }
    Some(super::classify(&Input {
        state: t.state,
        stop: &t.stop,
        regs: t.regs.as_ref(),
        call,
        facts: &facts,
        delta: stall.delta,
        d_state_ns: stall.d_state_ns,
        progress: stall.progress,
        syscalls: stall.syscalls,
    }))
}

/// The cause of every thread of a one-off dump (no deltas, no progress).
pub fn dump_causes(
    dump: &Dump,
    owner_frame: &dyn Fn(&ThreadDump) -> Option<String>,
) -> HashMap<i32, Cause> {
    dump.threads
        .iter()
        .filter_map(|t| {
            Some((
                t.tid,
                thread_cause(dump, t.tid, owner_frame, Stall::default())?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::fake::Fake;
    use super::*;
    use crate::snapshot::Registers;

    /// A glibc `pthread_mutex_t` held by `owner` (contended, one user).
    fn mutex(owner: u32) -> Vec<u8> {
        [2u32, 0, owner, 1, 0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()
    }

    fn thread(tid: i32, state: char, regs: Option<Registers>) -> ThreadSnapshot {
        ThreadSnapshot {
            tid,
            name: format!("t{tid}"),
            state,
            cpu_time: std::time::Duration::ZERO,
            stop: match regs {
                Some(_) => StopKind::Interrupted,
                None => StopKind::NotStopped("did not stop".into()),
            },
            regs,
            stack_start: 0,
            stack: Vec::new(),
            stack_truncated: false,
            stack_error: None,
            kernel_wait: None,
        }
    }

    /// Stopped in system call `nr`, blocked (a restart code in rax).
    fn in_call(nr: u64, rip: u64, args: [u64; 6]) -> Option<Registers> {
        Some(Registers {
            orig_rax: nr,
            rax: (-516i64) as u64,
            rip,
            rdi: args[0],
            rsi: args[1],
            rdx: args[2],
            r10: args[3],
            ..Registers::default()
        })
    }

    #[test]
    fn a_lock_owner_outside_a_one_thread_capture_is_named_from_proc() {
        let mut f = Fake::default();
        f.memory.push((0x3000, mutex(4242)));
        f.proc.insert("task/10/comm".into(), b"loop\n".to_vec());
        f.proc
            .insert("task/4242/comm".into(), b"db-writer\n".to_vec());
        let mut col = Collector::new(f);
        let threads = [thread(
            10,
            'S',
            in_call(202, 0x4010, [0x3000, 128, 2, 0, 0, 0]),
        )];
        let got = capture(&mut col, &threads, &|_| true, &HashMap::new(), false);
        let lock = got
            .get(10)
            .and_then(|t| t.facts.lock.clone())
            .expect("a lock");
        assert_eq!(lock.owner_tid, Some(4242));
        assert_eq!(
            lock.owner,
            Some(Owner {
                tid: 4242,
                name: "db-writer".into(),
                frame: None,
                syscall: None
            })
        );
        assert_eq!(got.get(10).unwrap().sample, None, "not asked for");
    }

    #[test]
    fn calls_from_registers_proc_and_memory_and_tracers() {
        let mut f = Fake {
            now: 77,
            ..Fake::default()
        };
        f.memory.push((0x3000, mutex(11)));
        // Thread 12 did not stop: /proc says it is in read(7, …).
        f.proc.insert(
            "task/12/syscall".into(),
            b"0 0x7 0x1000 0x40 0x0 0x0 0x0 0x7ffc0000 0x7f0000001000\n".to_vec(),
        );
        f.links.insert("fd/7".into(), b"pipe:[5]".to_vec());
        // Thread 13 is held by gdb.
        f.proc.insert(
            "task/13/status".into(),
            b"Name:\tt13\nTracerPid:\t777\n".to_vec(),
        );
        f.files.insert("/proc/777/comm".into(), b"gdb\n".to_vec());
        let mut col = Collector::new(f);
        let threads = [
            thread(10, 'S', in_call(202, 0x4010, [0x3000, 128, 2, 0, 0, 0])),
            thread(11, 'S', in_call(230, 0x5010, [1, 0, 0x9000, 0x9010, 0, 0])),
            thread(12, 'S', None),
            thread(13, 't', Some(Registers::default())),
            thread(14, 'S', in_call(7, 0x6000, [0; 6])),
        ];
        let got = capture(&mut col, &threads, &|t| t != 14, &HashMap::new(), true);
        assert_eq!(
            got.threads.iter().map(|t| t.tid).collect::<Vec<_>>(),
            [10, 11, 12, 13]
        );
        let owner = got
            .get(10)
            .unwrap()
            .facts
            .lock
            .as_ref()
            .unwrap()
            .owner
            .clone();
        assert_eq!(
            owner,
            Some(Owner {
                tid: 11,
                name: "t11".into(),
                frame: None,
                syscall: Some("clock_nanosleep".into())
            })
        );
        let t12 = got.get(12).unwrap();
        assert_eq!(t12.call.as_ref().and_then(|c| c.name), Some("read"));
        assert_eq!(
            t12.facts.fds.first().map(|f| f.target.clone()),
            Some(super::super::FdTarget::Pipe(5))
        );
        assert!(matches!(
            t12.facts.proc_syscall,
            Some(ProcSyscall::In { nr: 0, .. })
        ));
        assert_eq!(got.get(13).unwrap().facts.tracer, Some((777, "gdb".into())));
        assert_eq!(
            got.get(10).unwrap().sample.as_ref().map(|s| s.at_ns),
            Some(77)
        );
        // The next capture resumes 11's sleep as restart_syscall.
        let memory = remember(&threads, &HashMap::new());
        assert_eq!(memory[&11].ip, 0x5010);
        assert_eq!(memory[&11].call.name, Some("clock_nanosleep"));
        assert!(!memory.contains_key(&12), "not stopped: no registers");
        let resumed = thread(11, 'S', in_call(219, 0x5010, [1, 0, 0x9000, 0x9010, 0, 0]));
        let again = capture(&mut col, &[resumed], &|_| true, &memory, false);
        let call = again.get(11).unwrap().call.clone().unwrap();
        assert!(call.resumed && call.name == Some("clock_nanosleep"));
    }
}
