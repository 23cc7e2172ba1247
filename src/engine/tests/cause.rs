//! The cause of a hang is a pure function of what the capture recorded: a
//! C fixture (`fixtures/c/held.c`) blocks one thread on a mutex that a
//! second thread holds while it sleeps, and a third in a read on a TCP
//! socket; the causes computed from a dump while it runs are the causes
//! computed from the same dump once it has been killed and reaped, and the
//! facts the capture recorded are the facts a live read gives.

mod support;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use aiodebug_engine::cause::capture::{dump_causes, CauseScope};
use aiodebug_engine::cause::collect::{Collector, Live};
use aiodebug_engine::cause::CauseKind;
use aiodebug_engine::dump::{Dump, DumpOptions, Dumper, ThreadDump};
use support::{Reaped, TempDir};

fn build(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/c/held.c");
    let out = dir.join("held");
    let flags = ["-O1", "-g", "-pthread"].map(OsStr::new);
    support::gcc(&flags, &src, &out);
    out
}

/// The READY line's `key=value` fields.
fn field(line: &str, key: &str) -> i32 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

/// The fixture's function a lock's owner is in.
fn owner_frame(o: &ThreadDump) -> Option<String> {
    o.frames
        .iter()
        .filter_map(|f| f.function.clone())
        .find(|n| n == "hold_journal")
}

fn tid_of(d: &Dump, name: &str) -> i32 {
    d.threads
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no thread {name}"))
        .tid
}

#[test]
fn a_cause_from_a_recorded_dump_is_the_same_once_the_target_is_gone() {
    let dir = TempDir::new("cause", "held");
    let exe = build(&dir.0);
    let mut child = Command::new(&exe)
        .stdout(Stdio::piped())
        .spawn()
        .map(Reaped)
        .expect("spawn fixture");
    let stdout = child.0.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("READY");
    assert!(line.starts_with("READY pid="), "{line:?}");
    let pid = field(&line, "pid");
    let (holder, reader, fd) = (
        field(&line, "holder"),
        field(&line, "reader"),
        field(&line, "fd"),
    );
    let (local, port) = (field(&line, "local"), field(&line, "port"));

    // Past READY the main thread enters its futex wait and the reader its
    // read: give them a moment to be in the kernel, then dump until the
    // main thread is seen waiting (a loaded host may take longer).
    let mut dumper = Dumper::with_options(DumpOptions {
        cause: CauseScope::All,
        ..DumpOptions::default()
    });
    let mut dump = None;
    for _ in 0..50 {
        std::thread::sleep(std::time::Duration::from_millis(40));
        let d = dumper.dump(pid, None).expect("dump");
        let waits = dump_causes(&d, &owner_frame)
            .get(&pid)
            .is_some_and(|c| c.kind == CauseKind::Lock);
        if waits {
            dump = Some(d);
            break;
        }
    }
    let dump = dump.expect("the main thread never waited for the lock");
    assert_eq!(tid_of(&dump, "holder"), holder);
    assert_eq!(tid_of(&dump, "reader"), reader);
    let alive = dump_causes(&dump, &owner_frame);

    // What the capture recorded is what a live read gives now.
    let mut live = Collector::new(Live { pid });
    let tids: Vec<i32> = dump.threads.iter().map(|t| t.tid).collect();
    for tid in [pid, reader] {
        let captured = dump.cause.get(tid).expect("captured facts");
        let now = live.facts(tid, captured.call.as_ref(), &tids);
        assert_eq!(captured.facts.fds, now.fds, "thread {tid}");
        assert_eq!(
            captured.facts.lock.as_ref().map(|l| l.owner_tid),
            now.lock.as_ref().map(|l| l.owner_tid),
            "thread {tid}"
        );
    }

    // The target gone (killed, reaped): the same causes.
    let _ = child.0.kill();
    let _ = child.0.wait();
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "still there");
    let gone = dump_causes(&dump, &owner_frame);
    assert_eq!(alive, gone);

    let main = &gone[&pid];
    assert_eq!(main.kind, CauseKind::Lock, "{main:?}");
    assert_eq!(
        main.summary,
        format!(
            "waiting for a lock (journal_lock) held by thread {holder} 'holder', which is blocked in hold_journal, in clock_nanosleep"
        )
    );
    let r = &gone[&reader];
    assert_eq!(r.kind, CauseKind::Syscall, "{r:?}");
    assert_eq!(
        r.summary,
        format!("blocked in read(fd {fd}: TCP 127.0.0.1:{local} -> 127.0.0.1:{port})")
    );
    let h = &gone[&holder];
    assert_eq!(h.summary, "blocked in clock_nanosleep(60.000 s)", "{h:?}");
}
