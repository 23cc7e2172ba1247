//! Capture tests on real processes: a `sleep` child and a SIGSTOPped child.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aiodebug_engine::attach::{snapshot, SnapshotOptions};
use aiodebug_engine::dump::Dumper;
use aiodebug_engine::snapshot::StopKind;
use aiodebug_engine::unwind::StackEnd;
use aiodebug_engine::{proc, Error};
use support::Reaped;

fn sleeper() -> Reaped {
    let child = Command::new("sleep")
        .arg("30")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn sleep");
    let pid = child.id() as i32;
    // Wait until it sleeps in nanosleep (past exec and the dynamic loader).
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(st) = proc::read_stat(pid) {
            if st.state == 'S' && proc::read_exe(pid).is_some_and(|e| e.ends_with("sleep")) {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(50));
    Reaped(child)
}

fn state(pid: i32) -> char {
    proc::read_status(pid).map(|s| s.state).unwrap_or('?')
}

#[test]
fn sleep_child_is_captured_and_keeps_running() {
    let child = sleeper();
    let pid = child.0.id() as i32;
    let snap = snapshot(pid, &SnapshotOptions::default()).expect("snapshot");
    assert_eq!(snap.pid, pid);
    assert_eq!(snap.threads.len(), 1);
    let t = &snap.threads[0];
    assert_eq!(t.tid, pid);
    assert_eq!(t.name, "sleep");
    assert_eq!(t.state, 'S');
    assert_eq!(t.stop, StopKind::Interrupted);
    let regs = t.regs.expect("registers");
    assert_eq!(t.stack_start, regs.rsp);
    assert!(!t.stack.is_empty(), "stack copied");
    assert!(!snap.exited);
    assert!(
        snap.freeze < Duration::from_millis(200),
        "freeze {:?}",
        snap.freeze
    );
    // Detached: not traced, not stopped.
    let st = proc::read_status(pid).unwrap();
    assert_eq!(st.tracer_pid, 0);
    assert_ne!(st.state, 't');
    assert_ne!(st.state, 'T');

    // Symbolized: the innermost function is a libc sleep and the stack is complete.
    let mut dumper = Dumper::new();
    let dump = dumper.dump(pid, None).expect("dump");
    let th = &dump.threads[0];
    let names: Vec<String> = th
        .frames
        .iter()
        .map(|f| f.function.clone().unwrap_or_default())
        .collect();
    assert!(
        names.iter().any(|n| n.contains("nanosleep")),
        "frames: {names:?}"
    );
    assert!(
        names.iter().any(|n| n.contains("main")),
        "frames: {names:?}"
    );
    assert_eq!(th.end, StackEnd::Complete, "frames: {names:?}");
    // A second dump reuses the caches and gives the same frames.
    let again = dumper.dump(pid, None).expect("dump again");
    let names2: Vec<String> = again.threads[0]
        .frames
        .iter()
        .map(|f| f.function.clone().unwrap_or_default())
        .collect();
    assert_eq!(names, names2);
}

#[test]
fn sigstopped_child_is_captured_and_stays_stopped() {
    let child = sleeper();
    let pid = child.0.id() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while state(pid) != 'T' && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(state(pid), 'T');
    let snap = snapshot(pid, &SnapshotOptions::default()).expect("snapshot");
    let t = &snap.threads[0];
    assert_eq!(t.state, 'T');
    assert_eq!(t.stop, StopKind::JobControl(nix::libc::SIGSTOP));
    assert!(t.regs.is_some());
    // Still stopped after the detach, and no longer traced.
    std::thread::sleep(Duration::from_millis(50));
    let st = proc::read_status(pid).unwrap();
    assert_eq!(st.state, 'T', "job-control stop must survive the dump");
    assert_eq!(st.tracer_pid, 0);
    // It resumes normally on SIGCONT.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGCONT,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while state(pid) != 'S' && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(state(pid), 'S');
}

#[test]
fn missing_process_is_no_such_process() {
    // PIDs above pid_max never exist.
    let err = snapshot(i32::MAX - 1, &SnapshotOptions::default()).unwrap_err();
    assert!(matches!(err, Error::NoSuchProcess { .. }), "{err:?}");
    let err = snapshot(0, &SnapshotOptions::default()).unwrap_err();
    assert!(matches!(err, Error::NoSuchProcess { .. }), "{err:?}");
}

#[test]
fn own_process_is_refused() {
    let err = snapshot(std::process::id() as i32, &SnapshotOptions::default()).unwrap_err();
    assert!(matches!(err, Error::PermissionDenied { .. }), "{err:?}");
}

#[test]
fn a_one_thread_capture_stops_only_that_thread() {
    let child = Command::new("python3")
        .args([
            "-c",
            "import threading,time\n\
             [threading.Thread(target=time.sleep,args=(30,),daemon=True).start() for _ in range(3)]\n\
             time.sleep(30)",
        ])
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn python3");
    let child = Reaped(child);
    let pid = child.0.id() as i32;
    let deadline = Instant::now() + Duration::from_secs(10);
    let tids = loop {
        let tids = proc::list_tasks(pid).expect("tasks");
        if tids.len() >= 4 {
            break tids;
        }
        assert!(Instant::now() < deadline, "threads never started: {tids:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let one = *tids.last().expect("a thread");
    let mut dumper = Dumper::new();
    let d = dumper.dump_threads(pid, &[one]).expect("dump one thread");
    let got: Vec<i32> = d.threads.iter().map(|t| t.tid).collect();
    assert_eq!(got, [one]);
    assert!(!d.threads[0].frames.is_empty());
    // Released: no tracer, nobody stopped.
    let st = proc::read_status(pid).expect("status");
    assert_eq!(st.tracer_pid, 0);
    assert!(state(pid) != 'T' && state(pid) != 't');
    // Preparing caches loads modules without stopping anything.
    let mut fresh = Dumper::new();
    let n = fresh.prepare(pid).expect("prepare");
    assert!(n >= 2, "python3 and libc at least: {n}");
    assert_eq!(proc::read_status(pid).expect("status").tracer_pid, 0);
}
