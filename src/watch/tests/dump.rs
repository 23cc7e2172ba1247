//! `aiodebug-watch dump` on real processes.
//!
//! - Correct: our frames equal gdb's, thread by thread and frame by frame
//!   (function names), on victims built `-O2 -fomit-frame-pointer` in C and
//!   in Rust release: recursion 300 deep, inlined chains, a thread inside a
//!   signal handler; plus the vDSO.
//! - Harmless: the dumper SIGKILLed at random moments (some while it holds
//!   the target) never leaves a 64-thread target stopped; a SIGSTOPped target
//!   stays stopped; a target held by gdb gives exit 4 naming gdb.
//! - Errors: no such process (5), no permission (4), exit mid-dump (5).

mod dump_support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dump_support::*;

fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).expect("kill");
}

fn assert_matches_gdb(what: &str, v: &Victim) {
    let (_, ours) = our_stacks(v.pid);
    let gdb = gdb_stacks(v.pid);
    assert!(
        gdb.len() >= 4,
        "{what}: gdb saw {} threads (is gdb installed?)",
        gdb.len()
    );
    let report = compare(&ours, &gdb);
    assert!(
        report.is_empty(),
        "{what}: our stacks differ from gdb's:\n{report}"
    );
}

fn names(frames: &[NamedFrame]) -> Vec<&str> {
    frames.iter().map(|f| f.name.as_str()).collect()
}

#[test]
fn c_stacks_match_gdb() {
    let v = Victim::spawn(&c_victim("stacks"), &[]);
    assert_matches_gdb("C victim", &v);

    // What the comparison covered, checked on our side directly.
    let (json, ours) = our_stacks(v.pid);
    let deep = &ours[&v.field("deep").unwrap()];
    assert!(
        deep.iter().filter(|f| f.name == "recurse").count() >= 300,
        "deep thread: {:?}",
        names(deep)
    );
    let inline_tid = v.field("inline").unwrap();
    let inline = &ours[&inline_tid];
    let inl = names(inline);
    let pos = |n: &str| inl.iter().position(|x| *x == n);
    assert!(
        pos("park_forever") < pos("inline_c")
            && pos("inline_c") < pos("inline_b")
            && pos("inline_b") < pos("inline_a")
            && pos("inline_a") < pos("inline_thread"),
        "inline thread: {inl:?}"
    );
    let thread = json["threads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tid"] == inline_tid)
        .unwrap();
    let inlined: Vec<bool> = thread["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| {
            f["function"]
                .as_str()
                .is_some_and(|n| ["inline_a", "inline_b", "inline_c"].contains(&n))
        })
        .map(|f| f["inlined"].as_bool().unwrap())
        .collect();
    assert_eq!(inlined, vec![true, true, true], "inline_a/b/c are inlined");
    let sig = names(&ours[&v.field("sighand").unwrap()]);
    let s = sig
        .iter()
        .position(|n| *n == "<signal handler called>")
        .unwrap_or_else(|| panic!("no signal frame: {sig:?}"));
    assert!(sig[..s].contains(&"park_forever"), "{sig:?}");
    assert!(sig[s..].contains(&"nap_loop"), "{sig:?}");
    for t in json["threads"].as_array().unwrap() {
        assert_eq!(t["end"]["reason"], "end-of-stack", "thread {}", t["tid"]);
    }
}

#[test]
fn depth_cap_and_truncated_copy_end_stacks_with_a_reason() {
    // 300 frames, capped at 50.
    let v = Victim::spawn(&c_victim("stacks"), &[]);
    let deep_tid = v.field("deep").unwrap();
    let out = watch(&["dump", "--json", "--max-frames", "50", &v.pid.to_string()]);
    assert!(out.status.success());
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let deep = d["threads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tid"] == deep_tid)
        .unwrap();
    assert_eq!(deep["end"]["reason"], "depth-cap");
    assert!(deep["frames"].as_array().unwrap().len() <= 60);
    drop(v);

    // A stack deeper than the 1 MiB copy cap: the copy is cut, and the
    // unwinding says so where it runs out.
    let v = Victim::spawn(&c_victim("stacks"), &["40000"]);
    let deep_tid = v.field("deep").unwrap();
    let out = watch(&[
        "dump",
        "--json",
        "--max-frames",
        "100000",
        &v.pid.to_string(),
    ]);
    assert!(out.status.success());
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let deep = d["threads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tid"] == deep_tid)
        .unwrap();
    assert_eq!(deep["stack_truncated"], true);
    assert_eq!(deep["end"]["reason"], "truncated-copy", "{}", deep["end"]);
    let frames = deep["frames"].as_array().unwrap();
    assert!(frames.len() > 5000, "{} frames", frames.len());
    assert_eq!(frames.last().unwrap()["function"], "recurse");
}

#[test]
fn separate_debug_info_by_debuglink_and_deleted_binary() {
    // The binary is stripped; its DWARF is in a file named by .gnu_debuglink.
    let bin = c_victim_with_debuglink();
    let v = Victim::spawn(&bin, &[]);
    let (_, ours) = our_stacks(v.pid);
    let inline = names(&ours[&v.field("inline").unwrap()]);
    for f in [
        "park_forever",
        "inline_c",
        "inline_b",
        "inline_a",
        "inline_thread",
    ] {
        assert!(inline.contains(&f), "{f} missing: {inline:?}");
    }
    drop(v);
    // A deleted binary is still read, through /proc/PID/map_files.
    let copy = bin.with_file_name(format!("stacks-deleted-{}", std::process::id()));
    std::fs::copy(c_victim("stacks"), &copy).unwrap();
    let v = Victim::spawn(&copy, &[]);
    std::fs::remove_file(&copy).unwrap();
    let (json, ours) = our_stacks(v.pid);
    let inline = names(&ours[&v.field("inline").unwrap()]);
    assert!(inline.contains(&"inline_b"), "{inline:?}");
    assert!(
        json["module_problems"].as_array().unwrap().is_empty(),
        "{}",
        json["module_problems"]
    );
}

#[test]
fn signals_arriving_during_dumps_are_delivered() {
    // A queued real-time signal (nix cannot even name it) sent over and over
    // while the target is dumped over and over: every one is handled.
    let mut v = Victim::spawn(&c_victim("many"), &["8", "8"]);
    let pid = v.pid;
    let dumper = Command::new(watch_bin())
        .args(["dump", "--repeat", "60", &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dumper");
    let rt = nix::libc::SIGRTMIN() + 1;
    let mut sent = 0u64;
    let mut rng = Rng::from_clock();
    let until = Instant::now() + Duration::from_secs(20);
    let mut dumper = dumper;
    while dumper.try_wait().expect("try_wait").is_none() && Instant::now() < until {
        // SAFETY: kill(2) with a valid signal number; no memory is involved.
        let r = unsafe { nix::libc::kill(pid, rt) };
        assert_eq!(r, 0);
        sent += 1;
        std::thread::sleep(Duration::from_micros(50 + rng.below(400)));
    }
    let out = dumper.wait_with_output().expect("dumper");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(sent > 50, "only {sent} signals sent");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = String::new();
    while Instant::now() < deadline {
        got = v
            .ask_within("sigs", Duration::from_secs(5))
            .unwrap_or_default();
        if got == format!("SIGS {sent}") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(got, format!("SIGS {sent}"), "signals lost or duplicated");
    assert_eq!(tracer(pid), 0);
}

#[test]
fn rust_release_stacks_match_gdb() {
    let v = Victim::spawn(&rust_victim(), &[]);
    assert_matches_gdb("Rust victim", &v);
    let (_, ours) = our_stacks(v.pid);
    let deep = names(&ours[&v.field("deep").unwrap()]);
    assert!(
        deep.iter()
            .filter(|n| **n == "fx_deep_rust::deep_recurse")
            .count()
            >= 299,
        "{deep:?}"
    );
    let sig = names(&ours[&v.field("sighand").unwrap()]);
    assert!(sig.contains(&"fx_deep_rust::on_usr1"), "{sig:?}");
    assert!(sig.contains(&"<signal handler called>"), "{sig:?}");
    assert!(sig.contains(&"fx_deep_rust::nap_loop"), "{sig:?}");
}

#[test]
fn vdso_frames_unwind() {
    // The meter thread of `many` spends its time in clock_gettime, in the vDSO.
    let v = Victim::spawn(&c_victim("many"), &["1", "4"]);
    for _ in 0..40 {
        let (json, _) = our_stacks(v.pid);
        let meter = json["threads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "meter")
            .expect("meter thread")
            .clone();
        let frames = meter["frames"].as_array().unwrap();
        if frames.first().and_then(|f| f["module"].as_str()) != Some("[vdso]") {
            continue;
        }
        let fns: Vec<&str> = frames
            .iter()
            .map(|f| f["function"].as_str().unwrap_or("??"))
            .collect();
        assert!(fns[0].contains("clock_gettime"), "{fns:?}");
        assert!(fns.contains(&"meter_loop"), "{fns:?}");
        assert!(fns.contains(&"start_thread"), "{fns:?}");
        assert_eq!(meter["end"]["reason"], "end-of-stack", "{fns:?}");
        return;
    }
    panic!("the meter thread was never caught in the vDSO");
}

#[test]
fn killed_dumper_never_leaves_the_target_stopped() {
    let mut v = Victim::spawn(&c_victim("many"), &["64", "32"]);
    let pid = v.pid;
    let mut rng = Rng::from_clock();
    let seed = rng.0;
    let mut while_held = 0;
    for i in 0..32 {
        let mut dumper = Command::new(watch_bin())
            .args(["dump", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn dumper");
        if i % 2 == 0 {
            // Kill it while it holds the target: as soon as it is the tracer,
            // plus up to 1.5 ms.
            let held = wait_until(Duration::from_secs(5), || tracer(pid) > 0);
            if held {
                while_held += 1;
                std::thread::sleep(Duration::from_micros(rng.below(1500)));
            }
        } else {
            std::thread::sleep(Duration::from_micros(rng.below(40_000)));
        }
        let _ = dumper.kill();
        let _ = dumper.wait();
        // The kernel detached it; the target runs.
        assert_eq!(tracer(pid), 0, "iteration {i} (seed {seed}): still traced");
        let st = state(pid);
        assert!(
            st != 'T' && st != 't',
            "iteration {i} (seed {seed}): target left in state {st}"
        );
        let pong = v.ask_within("ping", Duration::from_secs(5));
        assert_eq!(
            pong.as_deref(),
            Some("PONG"),
            "iteration {i} (seed {seed}): target does not answer"
        );
    }
    assert!(while_held >= 10, "only {while_held} kills while held");
    // Every thread runs: none of the 64 workers nor the meter is stopped.
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let st = stat
            .rsplit_once(") ")
            .and_then(|(_, r)| r.chars().next())
            .unwrap_or('?');
        assert!(
            st != 'T' && st != 't',
            "thread {:?} in state {st}",
            entry.file_name()
        );
    }
}

#[test]
fn sigstopped_target_is_dumped_and_stays_stopped() {
    let mut v = Victim::spawn(&c_victim("many"), &["4", "8"]);
    signal(v.pid, nix::sys::signal::Signal::SIGSTOP);
    assert!(wait_until(Duration::from_secs(5), || state(v.pid) == 'T'));
    let out = watch(&["dump", &v.pid.to_string()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("stopped by SIGSTOP"), "{text}");
    assert!(text.contains("work_forever"), "{text}");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        state(v.pid),
        'T',
        "the job-control stop must survive the dump"
    );
    assert_eq!(tracer(v.pid), 0);
    signal(v.pid, nix::sys::signal::Signal::SIGCONT);
    assert_eq!(
        v.ask_within("ping", Duration::from_secs(5)).as_deref(),
        Some("PONG")
    );
}

#[test]
fn target_held_by_gdb_is_exit_4_naming_it() {
    let v = Victim::spawn(&c_victim("many"), &["2", "4"]);
    let mut gdb = Command::new("gdb")
        .args(["-nx", "-batch", "-p", &v.pid.to_string()])
        .args(["-ex", "shell sleep 20"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run gdb");
    let held = wait_until(Duration::from_secs(20), || tracer(v.pid) == gdb.id() as i32);
    let out = watch(&["dump", &v.pid.to_string()]);
    let _ = gdb.kill();
    let _ = gdb.wait();
    assert!(held, "gdb did not attach");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains(&format!("already traced by PID {}", gdb.id())) && err.contains("(gdb)"),
        "{err}"
    );
}

#[test]
fn errors_have_their_exit_codes() {
    // No such process.
    let out = watch(&["dump", "2147483600"]);
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such process"));
    // Usage.
    assert_eq!(watch(&["dump", "notapid"]).status.code(), Some(2));
    // --output: the file gets the dump; an unwritable path is exit 6.
    let v = Victim::spawn(&c_victim("many"), &["1", "4"]);
    let file = std::env::temp_dir().join(format!("dump-out-{}.txt", std::process::id()));
    let out = watch(&[
        "dump",
        "--output",
        file.to_str().unwrap(),
        &v.pid.to_string(),
    ]);
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    let text = std::fs::read_to_string(&file).unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(
        text.contains("work_forever") && text.contains("meter_loop"),
        "{text}"
    );
    let out = watch(&["dump", "--output", "/nonexistent/dir/x", &v.pid.to_string()]);
    assert_eq!(out.status.code(), Some(6));
    drop(v);
    // No permission: without CAP_SYS_PTRACE, as another user.
    let v = Victim::spawn(&c_victim("many"), &["1", "4"]);
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(watch_bin())
        .args(["dump", &v.pid.to_string()])
        .stdin(Stdio::null())
        .output();
    if let Ok(out) = out {
        if out.status.code() != Some(127)
            && !String::from_utf8_lossy(&out.stderr).contains("setpriv:")
        {
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(4), "{err}");
            assert!(err.contains("CAP_SYS_PTRACE"), "{err}");
        }
    }
}

#[test]
fn exit_mid_dump_is_partial_and_exit_5() {
    // Dump over and over (warm caches: a few ms each) and kill the target
    // while it is held: the dump that overlaps the death is partial (best
    // effort: it may also be complete, taken just before), and the command
    // ends with exit code 5.
    let v = Victim::spawn(&c_victim("many"), &["64", "8"]);
    let pid = v.pid.to_string();
    let mut dumper = Command::new(watch_bin())
        .args(["dump", "--repeat", "10000", "--json", &pid])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dumper");
    let stdout = dumper.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    // Two dumps done: caches are warm, dumps now follow each other closely.
    let mut lines = Vec::new();
    while lines.len() < 2 {
        lines.push(rx.recv_timeout(TIMEOUT).expect("a dump line"));
    }
    // Killed while the dumper holds it (its threads die in their stops).
    assert!(wait_until(Duration::from_secs(10), || tracer(v.pid) > 0));
    signal(v.pid, nix::sys::signal::Signal::SIGKILL);
    let started = Instant::now();
    let status = dumper.wait().expect("dumper exits");
    assert!(started.elapsed() < Duration::from_secs(30));
    let _ = reader.join();
    lines.extend(rx.try_iter());
    let mut err = String::new();
    use std::io::Read;
    if let Some(mut e) = dumper.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert_eq!(status.code(), Some(5), "{err}");
    assert!(
        err.contains("exited") || err.contains("no such process"),
        "{err}"
    );
    // Every line is a complete JSON dump; a partial one says so.
    let mut partial = 0;
    for line in &lines {
        let d: serde_json::Value = serde_json::from_str(line).expect("JSON line");
        if d["exited"] == true {
            partial += 1;
            assert!(err.contains("partial"), "{err}");
            assert!(
                line == lines.last().unwrap(),
                "a partial dump is the last one"
            );
        }
    }
    eprintln!("exit mid-dump: {} dumps, {partial} partial", lines.len());
}

/// Issue 8 item 3: `--output` never follows a symlink and never replaces a
/// file unless `--force` (and then only a regular file).
#[test]
fn output_refuses_symlinks_and_existing_files() {
    let v = Victim::spawn(&c_victim("many"), &["1", "4"]);
    let dir = std::env::temp_dir().join(format!("aiodebug-dump-output-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
    let pid = v.pid.to_string();
    let keep = dir.join("keep.txt");
    std::fs::write(&keep, b"precious").unwrap();
    let link = dir.join("link");
    std::os::unix::fs::symlink(&keep, &link).unwrap();
    let out = watch(&["dump", &pid, "--output", link.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&out.stderr).contains("symbolic link"));
    // --force does not follow a link either.
    let out = watch(&["dump", &pid, "--force", "--output", link.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(6));
    assert_eq!(std::fs::read(&keep).unwrap(), b"precious");
    // An existing regular file: refused, then replaced with --force.
    let out = watch(&["dump", &pid, "--output", keep.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert_eq!(std::fs::read(&keep).unwrap(), b"precious");
    let out = watch(&["dump", &pid, "--force", "--output", keep.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read_to_string(&keep)
        .unwrap()
        .contains("work_forever"));
    // No temporary file left behind.
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
}

/// Issue 8 item 4: a target with 300 threads exiting while it is dumped
/// gives exit 0 (captured before) or 5 "exited" — never 4 (permission).
#[test]
fn a_target_exiting_during_the_dump_is_exit_5_never_4() {
    let mut rng = Rng::from_clock();
    let mut fives = 0;
    for _ in 0..12 {
        let mut v = Victim::spawn(&c_victim("many"), &["300", "4"]);
        let pid = v.pid.to_string();
        let dumper = Command::new(watch_bin())
            .args(["dump", &pid])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("dump");
        std::thread::sleep(Duration::from_micros(rng.below(4000)));
        v.send("exit");
        let out = dumper.wait_with_output().expect("wait dump");
        let stderr = String::from_utf8_lossy(&out.stderr);
        match out.status.code() {
            Some(0) => {}
            Some(5) => {
                fives += 1;
                assert!(
                    stderr.contains("exited") || stderr.contains("no such process"),
                    "{stderr}"
                );
            }
            other => panic!("exit {other:?}: {stderr}"),
        }
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    eprintln!("{fives} of 12 dumps saw the target exit");
}
