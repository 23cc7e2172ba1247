//! `status` and `list` against real fixture processes: every fixture, PIE and
//! non-PIE, stripped and not; every documented bad input with its exit code.

mod support;

use serde_json::Value;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use support::watcher::wait_until;
use support::{watch_bin, Fixture, Variant};

const ALL_VARIANTS: [Variant; 4] = [
    Variant::Pie,
    Variant::NoPie,
    Variant::PieStripped,
    Variant::NoPieStripped,
];

fn watch(args: &[&str]) -> Output {
    Command::new(watch_bin())
        .args(args)
        .output()
        .expect("run aiodebug-watch")
}

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Waits until every loop of `names` ticked in the fixture's own registry
/// (in `elf`, read by the tests' naive reader, not by the code under test)
/// past the ticks it has now, so each has a fresh tick and a lag.
fn until_ticking(fx: &Fixture, elf: &Path, names: &[&str]) {
    let ticks = |name: &str| fx.ticks_of(elf, name);
    let before: Vec<Option<u64>> = names.iter().map(|n| ticks(n)).collect();
    wait_until(
        &format!("loops {names:?} of {} ticking in its registry", fx.pid),
        Duration::from_secs(10),
        || {
            names
                .iter()
                .zip(&before)
                .all(|(n, b)| ticks(n).is_some_and(|t| Some(t) > *b && t > 0))
                .then_some(())
        },
    );
}

/// `status PID --json EXTRA...` again and again until `ok` holds for its
/// lines (within 10 s); that reading. Panics with the last reading, saying
/// `what` was not seen, otherwise.
fn status_until(pid: &str, extra: &[&str], what: &str, ok: impl Fn(&[Value]) -> bool) -> Output {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let args = [&["status", pid, "--json"][..], extra].concat();
        let out = watch(&args);
        if ok(&json_lines(&out)) {
            return out;
        }
        assert!(
            Instant::now() < end,
            "status never showed {what} within 10 s; last:\n{}",
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `stall_ms` of loop `name` among `lines`, if it is there.
fn stall_of(lines: &[Value], name: &str) -> Option<f64> {
    lines
        .iter()
        .find(|l| l["event"] == "loop" && l["loop"] == name)
        .and_then(|l| l["stall_ms"].as_f64())
}

/// `status --json` of a healthy fixture: returns the loop objects.
fn healthy_loops(fx: &Fixture) -> Vec<Value> {
    let pid = fx.pid.to_string();
    let out = watch(&["status", &pid, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let lines = json_lines(&out);
    let process = lines.last().expect("a process line");
    assert_eq!(process["event"], "process");
    assert_eq!(process["pid"], fx.pid);
    lines.into_iter().filter(|l| l["event"] == "loop").collect()
}

fn loop_named<'a>(loops: &'a [Value], name: &str) -> &'a Value {
    loops
        .iter()
        .find(|l| l["loop"] == name)
        .unwrap_or_else(|| panic!("no loop {name:?} in {loops:?}"))
}

fn assert_live_loop(fx: &Fixture, l: &Value) {
    let tid = l["tid"].as_u64().expect("tid");
    assert!(
        std::path::Path::new(&format!("/proc/{}/task/{tid}", fx.pid)).exists(),
        "tid {tid} is not a thread of {}",
        fx.pid
    );
    assert!(l["ticks"].as_u64().expect("ticks") > 0, "{l}");
    assert!(l["lag_samples"].as_u64().expect("samples") > 0, "{l}");
    assert_eq!(l["stalled"], false, "{l}");
    assert!(l["stall_ms"].as_f64().expect("stall") < 250.0, "{l}");
}

#[test]
fn every_heartbeat_fixture_in_every_build_variant() {
    for v in ALL_VARIANTS {
        for (bin, names) in [
            ("fx-tokio-current", &["main"][..]),
            ("fx-tokio-multi", &["workers", "background"][..]),
            ("fx-thread-loop", &["ticker"][..]),
        ] {
            let fx = Fixture::spawn(bin, v, &[]);
            until_ticking(&fx, &fx.path, names);
            let loops = healthy_loops(&fx);
            for name in names {
                assert_live_loop(&fx, loop_named(&loops, name));
            }
            assert_eq!(loops.len(), names.len(), "{bin} {v:?}: {loops:?}");
        }
    }
}

#[test]
fn a_blocked_loop_is_stalled_and_only_that_one() {
    let mut fx = Fixture::spawn("fx-tokio-multi", Variant::Pie, &[]);
    until_ticking(&fx, &fx.path, &["workers", "background"]);
    assert!(fx.send("block background 1500").starts_with("OK"));
    let pid = fx.pid.to_string();
    // The block has begun and lasted long enough.
    let out = status_until(
        &pid,
        &["--threshold", "0.25"],
        "loop 'background' stalled for over 300 ms",
        |lines| stall_of(lines, "background").is_some_and(|s| s > 300.0),
    );
    // Blocked: its tick count stays until the block ends.
    let held_at = fx
        .ticks_of(&fx.path, "background")
        .expect("loop 'background' in the registry");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let lines = json_lines(&out);
    let bg = loop_named(&lines, "background");
    assert_eq!(bg["stalled"], true, "{bg}");
    assert!(bg["stall_ms"].as_f64().expect("stall") > 300.0, "{bg}");
    assert_eq!(loop_named(&lines, "workers")["stalled"], false);

    // The text form names the stalled loop.
    let out = watch(&["status", &pid]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("background"))
        .expect("background line");
    assert!(line.ends_with("STALLED"), "{stdout}");

    // A larger threshold tolerates it.
    let out = watch(&["status", &pid, "--threshold", "30"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // Once the block is over the loop recovers.
    wait_until(
        &format!("loop 'background' of {pid} ticking past tick {held_at}"),
        Duration::from_secs(10),
        || {
            fx.ticks_of(&fx.path, "background")
                .is_some_and(|t| t > held_at)
                .then_some(())
        },
    );
    let loops = healthy_loops(&fx);
    let bg = loop_named(&loops, "background");
    assert!(
        bg["max_ms"].as_f64().expect("max lag") > 1000.0,
        "the blocked tick's lag is in the ring: {bg}"
    );
}

#[test]
fn a_library_loaded_with_dlopen_is_found() {
    let lib = support::fixture_lib_path();
    let fx = Fixture::spawn(
        "fx-dlopen-host",
        Variant::Pie,
        &[lib.to_str().expect("utf-8 path")],
    );
    until_ticking(&fx, &lib, &["plugin"]);
    let loops = healthy_loops(&fx);
    assert_live_loop(&fx, loop_named(&loops, "plugin"));
}

#[test]
fn a_stopped_process_is_reported_stopped_not_hung() {
    let fx = Fixture::spawn("fx-thread-loop", Variant::Pie, &[]);
    until_ticking(&fx, &fx.path, &["ticker"]);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(fx.pid),
        nix::sys::signal::SIGSTOP,
    )
    .expect("SIGSTOP");
    let pid = fx.pid.to_string();
    // Stopped long enough that the loop is overdue by more than 500 ms.
    let out = status_until(&pid, &[], "loop 'ticker' overdue by 500 ms", |lines| {
        stall_of(lines, "ticker").is_some_and(|s| s > 500.0)
    });
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let lines = json_lines(&out);
    let process = lines.last().expect("process line");
    assert_eq!(process["stopped"], true, "{process}");
    assert_eq!(process["process_state"], "T");
    let ticker = loop_named(&lines, "ticker");
    assert!(
        ticker["stall_ms"].as_f64().expect("stall") > 500.0,
        "{ticker}"
    );
    assert_eq!(ticker["stalled"], false);
    let out = watch(&["status", &pid]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("not a hang"));
    // status never resumes it: still stopped.
    let st = std::fs::read_to_string(format!("/proc/{}/status", fx.pid)).expect("status");
    assert!(st.contains("State:\tT"), "{st}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(fx.pid),
        nix::sys::signal::SIGCONT,
    )
    .expect("SIGCONT");
}

#[test]
fn no_heartbeat_exits_3_and_suggests_the_crate() {
    let fx = Fixture::spawn("fx-no-heartbeat", Variant::Pie, &[]);
    let out = watch(&["status", &fx.pid.to_string()]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("aiodebug") && err.contains("dump"), "{err}");
}

#[test]
fn garbage_headers_are_rejected_with_reasons() {
    for v in [Variant::Pie, Variant::NoPieStripped] {
        let fx = Fixture::spawn("fx-garbage", v, &["headers"]);
        let out = watch(&["status", &fx.pid.to_string()]);
        assert_eq!(out.status.code(), Some(3), "{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("rejected"), "{err}");
        assert!(err.contains("ABI major"), "{err}");
        assert!(err.contains("slot count"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn garbage_slots_do_not_crash_and_names_are_sanitized() {
    let fx = Fixture::spawn("fx-garbage", Variant::Pie, &["slots"]);
    for args in [vec!["status", "--json"], vec!["status"]] {
        let mut args = args.clone();
        let pid = fx.pid.to_string();
        args.insert(1, &pid);
        let out = watch(&args);
        assert!(
            matches!(out.status.code(), Some(0) | Some(1)),
            "{}",
            text(&out)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            !stdout.contains('\u{1b}'),
            "escape sequence reached the terminal: {stdout:?}"
        );
        assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    }
}

#[test]
fn no_such_process_exits_5() {
    // PIDs above pid_max never exist.
    let out = watch(&["status", "2147483600"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such process"));
    // 0 is not a process id: a usage error.
    let out = watch(&["status", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        vec!["status"],
        vec!["status", "abc"],
        vec!["status", "1", "--threshold", "-3"],
        vec!["frobnicate"],
    ] {
        let out = watch(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
    }
}

#[test]
fn a_process_we_may_not_read_exits_4_with_a_hint() {
    let fx = Fixture::spawn("fx-thread-loop", Variant::Pie, &[]);
    // The watcher as an unprivileged user: no CAP_SYS_PTRACE, other uid.
    let out = Command::new(watch_bin())
        .args(["status", &fx.pid.to_string()])
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run as nobody");
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CAP_SYS_PTRACE"), "{err}");
}

#[test]
fn list_shows_heartbeat_processes_only() {
    let a = Fixture::spawn("fx-tokio-current", Variant::Pie, &[]);
    let b = Fixture::spawn("fx-thread-loop", Variant::NoPieStripped, &[]);
    let none = Fixture::spawn("fx-no-heartbeat", Variant::Pie, &[]);
    until_ticking(&a, &a.path, &["main"]);
    until_ticking(&b, &b.path, &["ticker"]);
    let out = watch(&["list", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let procs = json_lines(&out);
    let find = |pid: i32| procs.iter().find(|p| p["pid"] == pid);
    let pa = find(a.pid).expect("fx-tokio-current listed");
    assert_eq!(pa["loops"][0]["loop"], "main");
    let pb = find(b.pid).expect("fx-thread-loop listed");
    assert_eq!(pb["loops"][0]["loop"], "ticker");
    assert!(
        find(none.pid).is_none(),
        "a process without heartbeat is not listed"
    );

    let out = watch(&["list"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&a.pid.to_string()) && stdout.contains("main (tid"),
        "{stdout}"
    );
}

#[test]
fn refused_registrations_are_reported() {
    let mut fx = Fixture::spawn("fx-thread-loop", Variant::Pie, &[]);
    let answer = fx.send("register 70");
    // 64 slots, one taken by `ticker`: 63 granted, 7 refused, no panic.
    assert_eq!(answer, "OK registered=63 refused=7", "{answer}");
    let pid = fx.pid.to_string();
    let out = watch(&["status", &pid, "--json"]);
    let lines = json_lines(&out);
    let process = lines.last().expect("process line");
    assert_eq!(process["refused_registrations"], 7, "{process}");
    assert_eq!(process["loops"], 64, "{process}");
    let out = watch(&["status", &pid]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("7 registrations were refused"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_target_in_another_time_namespace_is_measured_on_its_own_clock() {
    // The fixture's CLOCK_MONOTONIC runs 100000 s ahead of ours. Without the
    // /proc/PID/timens_offsets correction its last tick would look like it is
    // in the future, and a blocked loop would never look stalled.
    let unshare = std::path::Path::new("/usr/bin/unshare");
    let probe = Command::new(unshare)
        .args(["--time", "--monotonic=100000", "true"])
        .status();
    if !matches!(probe, Ok(s) if s.success()) {
        panic!("this test needs unshare(1) with time namespaces (util-linux, CAP_SYS_ADMIN)");
    }
    let bin = support::fixture_path("fx-thread-loop", Variant::Pie);
    let mut fx = Fixture::spawn_path(
        unshare,
        &[
            // No --fork: unshare execs the fixture, which enters the new
            // time namespace at execve (Linux >= 5.8) and keeps the pid.
            "--time".into(),
            "--monotonic=100000".into(),
            bin.to_string_lossy().into_owned(),
        ],
    );
    let pid = fx.ready_field("pid").expect("pid in READY");
    let offsets =
        std::fs::read_to_string(format!("/proc/{pid}/timens_offsets")).expect("timens_offsets");
    assert!(offsets.contains("100000"), "{offsets}");
    // `unshare` execs the fixture: its registry is in `bin`.
    until_ticking(&fx, &bin, &["ticker"]);
    let out = watch(&["status", &pid, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let lines = json_lines(&out);
    let healthy_age = loop_named(&lines, "ticker")["age_ms"]
        .as_f64()
        .expect("age");
    assert!(
        healthy_age < 250.0,
        "age {healthy_age} ms of a healthy loop"
    );

    assert!(fx.send("block ticker 1500").starts_with("OK"));
    // The block has begun and lasted long enough.
    let out = status_until(&pid, &[], "loop 'ticker' stalled for 400 ms", |lines| {
        stall_of(lines, "ticker").is_some_and(|s| s >= 400.0)
    });
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stall = loop_named(&json_lines(&out), "ticker")["stall_ms"]
        .as_f64()
        .expect("stall");
    assert!((400.0..1500.0).contains(&stall), "stall {stall} ms");
}
