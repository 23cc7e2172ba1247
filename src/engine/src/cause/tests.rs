//! Classification from byte-literal facts and hand-made registers.

use super::parse::{CgroupVersion, CpuStat, Quota, SchedStat};
use super::syscalls::{self, Arch};
use super::*;

const S: u64 = 1_000_000_000;

fn call(name: &'static str, args: [u64; 6]) -> Call {
    Call {
        nr: syscalls::number(Arch::X86_64, name).unwrap(),
        name: Some(name),
        args,
        blocked: true,
        resumed: false,
    }
}

fn regs() -> Registers {
    Registers {
        rip: 0x40_1000,
        rsp: 0x7ffc_0000,
        orig_rax: u64::MAX,
        ..Registers::default()
    }
}

fn input<'a>(state: char, facts: &'a Facts, regs: &'a Registers) -> Input<'a> {
    Input {
        state,
        stop: &StopKind::Interrupted,
        regs: Some(regs),
        call: None,
        facts,
        delta: None,
        d_state_ns: None,
        progress: None,
        syscalls: None,
    }
}

fn delta(wall: u64, run: u64, wait: u64) -> Delta {
    Delta {
        wall_ns: wall,
        run_ns: Some(run),
        wait_ns: Some(wait),
        majflt: Some(0),
        cgroup: None,
    }
}

#[test]
fn a_spin_is_on_cpu() {
    let f = Facts::default();
    let r = regs();
    let mut i = input('R', &f, &r);
    i.delta = Some(delta(1_520_000_000, 1_474_400_000, 10_000_000));
    let c = classify(&i);
    assert_eq!(c.kind, CauseKind::OnCpu);
    assert_eq!(c.summary, "spinning on CPU (97 % of 1.52 s)");
    assert!(c.raw.contains("on CPU 1.474 s"), "{}", c.raw);
    // Without deltas (a plain dump): the state and registers still say so.
    let c = classify(&input('R', &f, &r));
    assert_eq!(c.kind, CauseKind::OnCpu);
    assert!(c.summary.starts_with("running on CPU"), "{}", c.summary);
}

#[test]
fn a_read_names_the_peer() {
    let f = Facts {
        fds: vec![FdInfo {
            fd: 7,
            target: FdTarget::Tcp {
                local: "127.0.0.1:40022".parse().unwrap(),
                remote: "127.0.0.1:5432".parse().unwrap(),
                state: "ESTABLISHED",
                rx_queue: 0,
            },
        }],
        ..Facts::default()
    };
    let r = regs();
    let mut i = input('S', &f, &r);
    i.call = Some(call("read", [7, 0x1000, 4096, 0, 0, 0]));
    let c = classify(&i);
    assert_eq!(c.kind, CauseKind::Syscall);
    assert_eq!(
        c.summary,
        "blocked in read(fd 7: TCP 127.0.0.1:40022 -> 127.0.0.1:5432)"
    );
    assert!(
        c.raw.contains("read [0] (0x7, 0x1000, 0x1000) blocked"),
        "{}",
        c.raw
    );
}

#[test]
fn sleeps_children_paths_and_connects() {
    let r = regs();
    let sleep = Facts {
        sleep: Some(Sleep {
            ns: 2 * S,
            absolute: false,
            clock: Some(1),
            remaining_ns: None,
        }),
        ..Facts::default()
    };
    let mut i = input('S', &sleep, &r);
    i.call = Some(call("clock_nanosleep", [1, 0, 0x10, 0x10, 0, 0]));
    assert_eq!(classify(&i).summary, "blocked in clock_nanosleep(2.000 s)");

    let child = Facts {
        child: Some(Child {
            pid: 812,
            name: Some("sh".into()),
        }),
        ..Facts::default()
    };
    let mut i = input('S', &child, &r);
    i.call = Some(call("wait4", [812, 0, 0, 0, 0, 0]));
    assert_eq!(classify(&i).summary, "blocked in wait4(pid 812 'sh')");

    let path = Facts {
        path: Some("/mnt/nfs/x".into()),
        ..Facts::default()
    };
    let mut i = input('S', &path, &r);
    i.call = Some(call("openat", [0, 0x10, 0, 0, 0, 0]));
    assert_eq!(classify(&i).summary, "blocked in openat(/mnt/nfs/x)");

    let conn = Facts {
        fds: vec![FdInfo {
            fd: 9,
            target: FdTarget::Tcp {
                local: "10.0.0.5:51000".parse().unwrap(),
                remote: "10.1.2.3:443".parse().unwrap(),
                state: "SYN_SENT",
                rx_queue: 0,
            },
        }],
        ..Facts::default()
    };
    let mut i = input('S', &conn, &r);
    i.call = Some(call("connect", [9, 0x10, 16, 0, 0, 0]));
    assert_eq!(
        classify(&i).summary,
        "blocked in connect(fd 9 -> 10.1.2.3:443)"
    );

    let ep = Facts {
        fds: vec![FdInfo {
            fd: 5,
            target: FdTarget::Anon("eventpoll".into()),
        }],
        timeout_ms: Some(-1),
        ..Facts::default()
    };
    let mut i = input('S', &ep, &r);
    i.call = Some(call("epoll_wait", [5, 0x10, 64, u64::MAX, 0, 0]));
    assert_eq!(
        classify(&i).summary,
        "blocked in epoll_wait(fd 5: eventpoll, no timeout)"
    );
}

#[test]
fn a_lock_names_its_owner() {
    let r = regs();
    let owned = Facts {
        lock: Some(LockInfo {
            futex: 0x5555_0000_4040,
            symbol: None,
            owner_tid: Some(4242),
            owner: Some(Owner {
                tid: 4242,
                name: "db-writer".into(),
                frame: Some("flush_journal (src/journal.c:88)".into()),
                syscall: Some("clock_nanosleep".into()),
            }),
        }),
        ..Facts::default()
    };
    let mut i = input('S', &owned, &r);
    i.call = Some(call("futex", [0x5555_0000_4040, 128, 2, 0, 0, 0]));
    let c = classify(&i);
    assert_eq!(c.kind, CauseKind::Lock);
    assert_eq!(
        c.summary,
        "waiting for a lock held by thread 4242 'db-writer', which is blocked in flush_journal (src/journal.c:88), in clock_nanosleep"
    );
    let anon = Facts {
        lock: Some(LockInfo {
            futex: 0x7f00_1234,
            symbol: Some("queue_cond".into()),
            owner_tid: None,
            owner: None,
        }),
        ..Facts::default()
    };
    let mut i = input('S', &anon, &r);
    i.call = Some(call("futex", [0x7f00_1234, 128, 0, 0, 0, 0]));
    let c = classify(&i);
    assert_eq!(c.kind, CauseKind::Lock);
    assert!(
        c.summary
            .starts_with("futex wait on 0x7f001234 (queue_cond)"),
        "{}",
        c.summary
    );
    // A futex wake is no lock wait.
    let mut i = input('S', &anon, &r);
    i.call = Some(call("futex", [0x7f00_1234, 129, 1, 0, 0, 0]));
    assert_eq!(classify(&i).kind, CauseKind::Syscall);
}

#[test]
fn throttled_by_a_cgroup_quota() {
    let r = regs();
    let f = Facts::default();
    let mut i = input('R', &f, &r);
    let mut d = delta(1_200_000_000, 110_000_000, 910_000_000);
    d.cgroup = Some(CgroupDelta {
        dir: "/sys/fs/cgroup/cpu/t".into(),
        version: CgroupVersion::V1,
        nr_throttled: 9,
        nr_periods: 12,
        throttled_ns: 900_000_000,
        quota: Some(Quota {
            quota_us: 10_000,
            period_us: 100_000,
        }),
    });
    i.delta = Some(d);
    let c = classify(&i);
    assert_eq!(c.kind, CauseKind::Throttled);
    assert_eq!(
        c.summary,
        "runnable but not scheduled for 0.91 of 1.20 s; cgroup /sys/fs/cgroup/cpu/t throttled 9 times (quota 10 ms per 100 ms)"
    );
    // Plain CPU contention, no cgroup.
    i.delta = Some(delta(S, 300_000_000, 600_000_000));
    let c = classify(&i);
    assert_eq!(c.kind, CauseKind::Throttled);
    assert!(c.summary.contains("other threads"), "{}", c.summary);
}

#[test]
fn io_stopped_and_unknown() {
    let r = regs();
    let f = Facts::default();
    let mut i = input('D', &f, &r);
    i.d_state_ns = Some(800_000_000);
    i.delta = Some(Delta {
        majflt: Some(312),
        ..delta(S, 0, 0)
    });
    let c = classify(&i);
    assert_eq!(c.kind, CauseKind::Io);
    assert_eq!(
        c.summary,
        "in uninterruptible I/O (D) for 0.80 s, 312 major page faults"
    );
    // A vfork parent, not stopped: the kernel's syscall file says vfork.
    let stop = StopKind::NotStopped("did not stop within 250 ms (state D)".into());
    let mut v = input('D', &f, &r);
    v.stop = &stop;
    v.regs = None;
    v.call = Some(syscalls::from_proc(Arch::X86_64, 58, [0; 6]));
    let c = classify(&v);
    assert_eq!(c.kind, CauseKind::Io);
    assert!(c.summary.contains("in vfork()"), "{}", c.summary);

    let job = StopKind::JobControl(19);
    let mut j = input('T', &f, &r);
    j.stop = &job;
    let c = classify(&j);
    assert_eq!(c.kind, CauseKind::Stopped);
    assert!(c.summary.contains("SIGSTOP"), "{}", c.summary);

    let mut u = input('S', &f, &r);
    u.regs = None;
    assert_eq!(classify(&u).kind, CauseKind::Unknown);
}

#[test]
fn progress_across_snapshots() {
    let a = Registers {
        orig_rax: 230,
        rax: (-516i64) as u64,
        rcx: 1,
        ..regs()
    };
    let b = Registers {
        orig_rax: 219,
        rcx: 2,
        ..a
    };
    assert!(same_place(&a, &b));
    let moved = Registers {
        rip: 0x40_1004,
        ..a
    };
    assert!(!same_place(&a, &moved));
    let f = Facts::default();
    let mut i = input('S', &f, &a);
    i.call = Some(call("clock_nanosleep", [1, 0, 0, 0, 0, 0]));
    i.progress = Some(Progress {
        motion: Motion::Stuck,
        snapshots: 3,
        cpu_since_previous_ns: Some(0),
        retrying: false,
    });
    let c = classify(&i);
    assert_eq!(
        c.progress_text().as_deref(),
        Some("stuck: same instruction and registers in 3 snapshots (cpu +0.000 s since the previous snapshot)")
    );
    assert!(
        c.line().starts_with("blocked in clock_nanosleep(); stuck"),
        "{}",
        c.line()
    );
}

#[test]
fn deltas_between_samples() {
    let cg = |thr: u64, ns: u64| CgroupSample {
        dir: "/sys/fs/cgroup/cpu/t".into(),
        version: CgroupVersion::V1,
        stat: CpuStat {
            nr_periods: thr * 2,
            nr_throttled: thr,
            throttled_ns: ns,
        },
        quota: Some(Quota {
            quota_us: 10_000,
            period_us: 100_000,
        }),
    };
    let a = Sample {
        at_ns: S,
        sched: Some(SchedStat {
            run_ns: 100,
            wait_ns: 50,
            slices: 1,
        }),
        faults: None,
        cgroups: vec![cg(1, 1000)],
    };
    let b = Sample {
        at_ns: 3 * S,
        sched: Some(SchedStat {
            run_ns: 400,
            wait_ns: 40,
            slices: 9,
        }),
        faults: None,
        cgroups: vec![cg(10, 9000)],
    };
    let d = b.since(&a);
    assert_eq!(d.wall_ns, 2 * S);
    assert_eq!(d.run_ns, Some(300));
    // A counter that went backwards is unknown, not huge.
    assert_eq!(d.wait_ns, None);
    assert_eq!(d.majflt, None);
    let c = d.cgroup.unwrap();
    assert_eq!(
        (c.nr_throttled, c.nr_periods, c.throttled_ns),
        (9, 18, 8000)
    );
}

fn activity(entered: u64, ours: u32, top: &[(u64, &'static str, u64)]) -> SyscallActivity {
    SyscallActivity {
        entered,
        window_ns: 2_950_000_000,
        ours,
        top: top
            .iter()
            .map(|&(nr, name, count)| SyscallCount {
                nr,
                name: Some(name),
                count,
            })
            .collect(),
        sampled: Some(top.iter().map(|t| t.2).sum()),
        lost: 0,
    }
}

#[test]
fn a_sleep_retried_in_a_loop_is_busy_not_blocked_in_one_call() {
    let regs = regs();
    let f = Facts::default();
    let mut i = input('S', &f, &regs);
    i.call = Some(call("clock_nanosleep", [1, 0, 0, 0, 0, 0]));
    i.syscalls = Some(activity(
        290,
        2,
        &[(230, "clock_nanosleep", 288), (1, "write", 2)],
    ));
    i.progress = Some(Progress {
        motion: Motion::Busy,
        snapshots: 2,
        cpu_since_previous_ns: None,
        retrying: true,
    });
    let c = classify(&i);
    assert_eq!(c.kind, CauseKind::Syscall);
    assert!(
        c.summary
            .starts_with("in a loop of system calls, now in clock_nanosleep("),
        "{}",
        c.summary
    );
    let line = c.line();
    assert!(
        line.contains(
            "; busy retrying: the same call entered again and again (same registers in 2 snapshots)"
        ),
        "{line}"
    );
    assert!(
        line.contains("; 290 system calls in 2.95 s (clock_nanosleep 288, write 2)"),
        "{line}"
    );
    // Blocked once: a few entries, as many as our snapshots restart.
    i.syscalls = Some(activity(2, 2, &[(219, "restart_syscall", 2)]));
    i.progress = None;
    let c = classify(&i);
    assert!(
        c.summary.starts_with("blocked in clock_nanosleep("),
        "{}",
        c.summary
    );
    assert!(
        c.line().contains(
            "; 2 system calls in 2.95 s, only the restarts after our snapshots (restart_syscall 2)"
        ),
        "{}",
        c.line()
    );
    // Below the bar even without our stops: still one call.
    assert!(!activity(BUSY_ENTRIES + 1, 2, &[]).busy());
    assert!(activity(BUSY_ENTRIES + 2, 2, &[]).busy());
    assert_eq!(activity(0, 0, &[]).text(), "no system call in 2.95 s");
    let unnamed = SyscallCount {
        nr: 9999,
        name: None,
        count: 1,
    };
    assert_eq!(unnamed.display_name(), "syscall 9999");
    // Counted only, or fewer sampled than entered: said.
    let mut a = activity(500, 0, &[(24, "sched_yield", 400)]);
    assert_eq!(
        a.text(),
        "500 system calls in 2.95 s (sched_yield 400 of 400 sampled)"
    );
    a.sampled = None;
    a.top.clear();
    assert_eq!(a.text(), "500 system calls in 2.95 s");
}
