//! The companion crate's in-process features, seen from outside on real
//! processes: event loops in C (static and shared libaiodebug) and Python
//! (ctypes) found by `status` and caught stalling, what a loop is polling,
//! a stuck worker of a multi-thread tokio runtime, slow-poll warnings in a
//! captured log, and ABI compatibility both ways (a minor-0 registry written
//! from scratch in C read by today's reader; today's registry read by a
//! minor-0 reader).
//!
//! The time-dilated clock is tested in `src/aiodebug/tests/dilation.rs`: it
//! lives behind the crate's `testing` feature, which this package does not
//! enable.

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use support::cbuild::{
    build, c_loop_shared, c_loop_static, cargo, ffi_dir, fixtures_target, gcc, header_dir,
};
use support::watcher::Watch;
use support::{watch_bin, workspace_root, Fixture, TempDir};

// ---------------------------------------------------------------------------
// Building the programs (once per test process).

/// `fixtures/c-loop/abi-v1-0.c`: a minor-0 registry written from scratch.
fn abi_v1_0() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| gcc(&["fixtures/c-loop/abi-v1-0.c"], "abi-v1-0", &[]))
}

/// The example `companion-service` of the aiodebug crate (features tokio, log).
fn companion_service() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let mut cmd = Command::new(cargo());
        cmd.args([
            "build",
            "--profile",
            "fixture",
            "-p",
            "aiodebug",
            "--example",
            "companion-service",
            "--features",
            "tokio,log",
            "--target-dir",
        ])
        .arg(fixtures_target());
        build(cmd, "the companion-service example");
        fixtures_target().join("fixture/examples/companion-service")
    })
}

fn python_fixture() -> Fixture {
    let script = workspace_root().join("fixtures/python/asyncio_loop.py");
    let lib = ffi_dir().join("libaiodebug.so");
    Fixture::spawn_path(
        Path::new("python3"),
        &[
            script.to_string_lossy().into_owned(),
            lib.to_string_lossy().into_owned(),
        ],
    )
}

// ---------------------------------------------------------------------------
// Reading status.

fn watch(args: &[&str]) -> Output {
    Command::new(watch_bin())
        .args(args)
        .output()
        .expect("run aiodebug-watch")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// One `status --json`: exit code, loop objects, process object.
struct Status {
    code: Option<i32>,
    loops: Vec<Value>,
    process: Value,
    raw: String,
}

impl Status {
    fn of(pid: i32) -> Status {
        let out = watch(&["status", &pid.to_string(), "--json"]);
        let raw = text(&out);
        let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON {l:?}: {e}\n{raw}"))
            })
            .collect();
        let process = lines
            .iter()
            .find(|l| l["event"] == "process")
            .cloned()
            .unwrap_or_else(|| panic!("no process line\n{raw}"));
        let loops = lines.into_iter().filter(|l| l["event"] == "loop").collect();
        Status {
            code: out.status.code(),
            loops,
            process,
            raw,
        }
    }

    fn loop_named(&self, name: &str) -> &Value {
        self.loops
            .iter()
            .find(|l| l["loop"] == name)
            .unwrap_or_else(|| panic!("no loop {name:?}\n{}", self.raw))
    }

    /// Process-level polls in progress for task `task`.
    fn polls_of(&self, task: &str) -> Vec<&Value> {
        self.process["polling"]
            .as_array()
            .map(|a| a.iter().filter(|p| p["task"] == task).collect())
            .unwrap_or_default()
    }
}

/// Reads status until `ok` holds (up to `within`); returns the last reading.
fn status_until(pid: i32, within: Duration, ok: impl Fn(&Status) -> bool) -> Status {
    let deadline = Instant::now() + within;
    loop {
        let st = Status::of(pid);
        if ok(&st) || Instant::now() >= deadline {
            return st;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn f64_of(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no number {key:?} in {v}"))
}

/// A healthy loop `name` whose ticks come from thread `tid`.
fn assert_healthy(st: &Status, name: &str, tid: i32) {
    assert_eq!(st.code, Some(0), "{}", st.raw);
    let l = st.loop_named(name);
    assert_eq!(l["tid"], tid, "{l}");
    assert!(l["ticks"].as_u64().unwrap_or(0) > 0, "{l}");
    assert!(l["lag_samples"].as_u64().unwrap_or(0) > 0, "{l}");
    assert_eq!(l["stalled"], false, "{l}");
}

/// Blocks `name` for 1.5 s through the fixture and checks that `status`
/// catches the stall and names the marked callback at `file:<line>` on the
/// loop's thread; then that the loop recovers.
fn check_blocked_callback(fx: &mut Fixture, name: &str, file_suffix: &str, task: &str) {
    let answer = fx.ok(&format!("block {name} 1500"));
    let line: u32 = answer
        .strip_prefix("OK line=")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("answer {answer:?}"));
    // Stalled, with the callback on the board (a loaded machine may show
    // the stall a moment before the callback has begun).
    let st = status_until(fx.pid, Duration::from_secs(3), |st| {
        st.code == Some(1) && !st.polls_of(task).is_empty()
    });
    assert_eq!(st.code, Some(1), "the block must be caught\n{}", st.raw);
    let l = st.loop_named(name);
    assert_eq!(l["stalled"], true, "{l}");
    assert!(f64_of(l, "stall_ms") > 250.0, "{l}");
    // What the loop is running, under the loop and at process level.
    let polls = l["polling"].as_array().cloned().unwrap_or_default();
    assert_eq!(polls.len(), 1, "{}", st.raw);
    let p = &polls[0];
    assert_eq!(p["task"], task, "{p}");
    assert_eq!(p["tid"], fx.pid, "the loop's thread: {p}");
    assert_eq!(p["kind"], "callback", "{p}");
    let want = format!("{file_suffix}:{line}");
    let loc = p["location"].as_str().unwrap_or_default();
    assert!(loc.ends_with(&want), "{loc} should end with {want}");
    assert!(f64_of(p, "for_ms") > 250.0, "{p}");
    assert_eq!(st.polls_of(task)[0]["loop"], name, "{}", st.raw);
    // The text form says it too.
    let out = watch(&["status", &fx.pid.to_string()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("polling task '{task}' (")) && stdout.contains(&want),
        "{stdout}"
    );
    // Once the callback returns, the loop ticks again and polls nothing.
    let st = status_until(fx.pid, Duration::from_secs(5), |st| {
        st.code == Some(0) && st.polls_of(task).is_empty()
    });
    assert_eq!(st.code, Some(0), "recovered\n{}", st.raw);
    assert!(st.polls_of(task).is_empty(), "{}", st.raw);
    assert!(
        f64_of(st.loop_named(name), "max_ms") > 1000.0,
        "the late tick's lag is recorded\n{}",
        st.raw
    );
}

// ---------------------------------------------------------------------------
// Tests.

#[test]
fn c_loop_linking_the_static_library_is_watched() {
    let mut fx = Fixture::spawn_path(c_loop_static(), &[]);
    assert_eq!(fx.kind(), "c-loop");
    assert_eq!(fx.loops(), ["c-loop"]);
    std::thread::sleep(Duration::from_millis(100));
    assert_healthy(&Status::of(fx.pid), "c-loop", fx.pid);
    check_blocked_callback(
        &mut fx,
        "c-loop",
        "fixtures/c-loop/loop.c",
        "block_callback",
    );
    assert!(fx.send("block nope 5").starts_with("ERR"));
    let status = fx.exit();
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn c_loop_linking_the_shared_library_is_watched() {
    let mut fx = Fixture::spawn_path(c_loop_shared(), &[]);
    std::thread::sleep(Duration::from_millis(100));
    let st = Status::of(fx.pid);
    assert_healthy(&st, "c-loop", fx.pid);
    // The registry lives in libaiodebug.so, not in the executable.
    assert!(support::hb_section(c_loop_shared()).is_none());
    check_blocked_callback(
        &mut fx,
        "c-loop",
        "fixtures/c-loop/loop.c",
        "block_callback",
    );
    let status = fx.close_stdin_and_wait(Duration::from_secs(5));
    assert!(
        status.is_some_and(|s| s.success()),
        "EOF exits 0: {status:?}"
    );
}

#[test]
fn python_asyncio_loop_through_ctypes_is_watched() {
    let mut fx = python_fixture();
    assert_eq!(fx.kind(), "python-asyncio");
    std::thread::sleep(Duration::from_millis(150));
    assert_healthy(&Status::of(fx.pid), "asyncio", fx.pid);
    check_blocked_callback(
        &mut fx,
        "asyncio",
        "fixtures/python/asyncio_loop.py",
        "blocking_callback",
    );
    let status = fx.exit();
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn a_stuck_worker_is_visible_while_the_other_worker_keeps_ticking() {
    let mut fx = Fixture::spawn_path(companion_service(), &[]);
    std::thread::sleep(Duration::from_millis(100));
    let st = Status::of(fx.pid);
    assert_eq!(st.code, Some(0), "{}", st.raw);
    let answer = fx.ok("stuck 2000");
    let line = answer
        .strip_prefix("OK line=")
        .unwrap_or_default()
        .to_string();
    // One worker polls task 'orders' for 2 s; the monitor runs on the other.
    let st = status_until(fx.pid, Duration::from_secs(3), |st| {
        st.polls_of("orders")
            .first()
            .is_some_and(|p| p["for_ms"].as_f64().unwrap_or(0.0) > 800.0)
    });
    let polls = st.polls_of("orders");
    assert_eq!(polls.len(), 1, "{}", st.raw);
    let p = polls[0];
    assert!(f64_of(p, "for_ms") > 800.0, "{p}");
    assert_eq!(p["kind"], "future", "{p}");
    assert!(p["task_id"].as_u64().is_some(), "tokio's task id: {p}");
    let want = format!("companion-service.rs:{line}");
    assert!(
        p["location"].as_str().unwrap_or_default().ends_with(&want),
        "{p} vs {want}"
    );
    let tid = p["tid"].as_i64().unwrap_or(0) as i32;
    let workers: Vec<i32> = support::proc_tasks(fx.pid)
        .into_iter()
        .filter(|(_, n)| n == "workers")
        .map(|(t, _)| t)
        .collect();
    assert!(
        workers.contains(&tid),
        "tid {tid} is not a worker of {workers:?}"
    );
    // The heartbeat alone would not show it: the loop is healthy.
    assert_eq!(st.code, Some(0), "{}", st.raw);
    let l = st.loop_named("workers");
    assert_eq!(l["stalled"], false, "{l}");
    assert_ne!(l["tid"], tid, "the monitor ticks on the other worker: {l}");
    // The text form lists the poll (under the loop, or with threads of no loop).
    let out = watch(&["status", &fx.pid.to_string()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("tid {tid} polling task 'orders' (")),
        "{stdout}"
    );

    // Both workers blocked: now the loop stalls, and both polls show.
    std::thread::sleep(Duration::from_millis(1300));
    fx.ok("block workers 1500");
    let st = status_until(fx.pid, Duration::from_secs(3), |st| st.code == Some(1));
    assert_eq!(st.code, Some(1), "{}", st.raw);
    let b1 = st.polls_of("blocker-1");
    let b2 = st.polls_of("blocker-2");
    assert!(b1.len() == 1 && b2.len() == 1, "{}", st.raw);
    assert_ne!(b1[0]["tid"], b2[0]["tid"], "two workers");
    let status = fx.exit();
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn slow_polls_are_logged_and_fast_ones_are_not() {
    let log = std::env::temp_dir().join(format!("aiodebug-companion-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let mut fx = Fixture::spawn_path(
        companion_service(),
        &["--log".to_string(), log.to_string_lossy().into_owned()],
    );
    let fast = fx.ok("poll quick-task 1 200");
    let slow = fx.ok("poll slow-task 150 50");
    let also_fast = fx.ok("poll another-quick 20 500");
    let slow_line = slow
        .strip_prefix("OK line=")
        .unwrap_or_default()
        .to_string();
    let status = fx.exit();
    assert!(status.success(), "exit status {status:?}");
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    let lines: Vec<&str> = logged.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "exactly one slow poll ({fast}, {also_fast}): {logged:?}"
    );
    let want = format!(
        "WARN aiodebug::slow: Executing task 'slow-task' (spawned at src/aiodebug/examples/companion-service.rs:{slow_line}) took "
    );
    assert!(
        lines[0].starts_with(&want),
        "{:?}\nshould start with {want:?}",
        lines[0]
    );
    let secs: f64 = lines[0][want.len()..]
        .trim_end_matches(" seconds")
        .parse()
        .unwrap_or_else(|e| panic!("seconds in {:?}: {e}", lines[0]));
    assert!((0.149..10.0).contains(&secs), "{secs} s for a 150 ms poll");
}

/// Checks every churned poll of a reading (see the example's `churn-polls`):
/// returns how many were verified.
fn check_churned(regs: &[aiodebug_engine::heartbeat::Registry]) -> u64 {
    let mut verified = 0;
    for p in regs.iter().flat_map(|r| r.polling.iter()) {
        let Some(rest) = p.task.strip_prefix("task-") else {
            continue;
        };
        let id = p.task_id.expect("a churned poll has an id");
        assert_eq!(rest, id.to_string(), "torn poll: {p:?}");
        assert_eq!(p.file, format!("src/f{id}.rs"), "torn poll: {p:?}");
        assert_eq!(u64::from(p.line), id % 1_000_000 + 1, "torn poll: {p:?}");
        assert!(p.since_ns > 0);
        verified += 1;
    }
    verified
}

/// An adversarial copy of the header and the poll board of the registry at
/// `addr`, one 8-byte `process_vm_readv` per word (the rest stays zero: free
/// slots), so that the writer can run between any two words.
fn copy_board_word_by_word(pid: i32, addr: u64) -> Vec<u8> {
    use aiodebug::abi;
    let mut out = vec![0u8; abi::REGISTRY_SIZE];
    let words = (0..abi::HEADER_SIZE).chain(abi::POLL_BOARD_OFFSET..abi::REGISTRY_SIZE);
    for off in words.step_by(8) {
        let word = aiodebug_engine::memory::read(pid, addr + off as u64, 8).expect("read word");
        out[off..off + 8].copy_from_slice(&word);
    }
    out
}

#[test]
fn poll_board_reads_are_never_torn() {
    use aiodebug_engine::target::Target;
    let mut fx = Fixture::spawn_path(companion_service(), &[]);
    fx.ok("churn-polls 6000");
    let target = Target::open(fx.pid).expect("the service exports a heartbeat");
    // Bulk copies, as `status` makes them.
    let (mut bulk, mut bulk_unsettled, mut reads) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(2500) {
        let reading = target.read().expect("read");
        let regs: Vec<_> = reading.registries.iter().map(|(_, r)| r.clone()).collect();
        bulk += check_churned(&regs);
        bulk_unsettled += regs
            .iter()
            .map(|r| u64::from(r.unsettled_polls))
            .sum::<u64>();
        reads += 1;
    }
    // Word-by-word copies of the board of the executable's registry.
    let region = target
        .regions()
        .iter()
        .find(|r| r.module.ends_with("companion-service"))
        .expect("the executable's registry")
        .clone();
    let (mut words, mut word_unsettled) = (0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(2500) {
        let a = copy_board_word_by_word(fx.pid, region.addr);
        let b = copy_board_word_by_word(fx.pid, region.addr);
        let scan = aiodebug_engine::heartbeat::decode_section(&a, &b);
        assert_eq!(scan.registries.len(), 1, "{:?}", scan.rejected);
        words += check_churned(&scan.registries);
        word_unsettled += u64::from(scan.registries[0].unsettled_polls);
    }
    eprintln!(
        "poll board: {reads} bulk reads, {bulk} polls verified, {bulk_unsettled} unsettled; \
         word by word: {words} verified, {word_unsettled} unsettled"
    );
    // It checked something, and the writer really raced the reader.
    assert!(bulk > 50 && words > 5, "too few polls verified");
    assert!(
        bulk_unsettled + word_unsettled > 0,
        "the writer never raced the reader"
    );
}

#[test]
fn abi_1_0_registry_written_from_scratch_is_read_by_todays_reader() {
    let mut fx = Fixture::spawn_path(abi_v1_0(), &[]);
    assert_eq!(fx.kind(), "abi-v1-0");
    std::thread::sleep(Duration::from_millis(100));
    let st = Status::of(fx.pid);
    assert_healthy(&st, "legacy", fx.pid);
    assert_eq!(
        st.process["poll_board_entries"], 0,
        "minor 0 has no poll board"
    );
    assert_eq!(st.process["rejected_registries"], Value::Array(Vec::new()));
    assert_eq!(st.loop_named("legacy")["polling"], Value::Array(Vec::new()));
    fx.ok("block legacy 1000");
    let st = status_until(fx.pid, Duration::from_secs(3), |st| st.code == Some(1));
    assert_eq!(st.code, Some(1), "{}", st.raw);
    assert_eq!(st.loop_named("legacy")["stalled"], true);
    drop(fx);
}

#[test]
fn todays_registry_is_read_by_a_minor_0_reader() {
    // support::hb_slots is a naive reader of ABI 1.0 (it hard-codes the 1.0
    // header and slot sizes): the poll board appended by minor 1 must not
    // disturb it.
    let path = c_loop_static();
    let fx = Fixture::spawn_path(path, &[]);
    assert_eq!(
        fx.ready_field("abi").as_deref(),
        Some(format!("{}.{}", aiodebug::abi::ABI_MAJOR, aiodebug::abi::ABI_MINOR).as_str())
    );
    std::thread::sleep(Duration::from_millis(100));
    let section = support::read_hb(fx.pid, path).expect("the section is readable");
    assert_eq!(section.len(), aiodebug::abi::REGISTRY_SIZE);
    let slots = support::hb_slots(&section);
    let c = slots
        .iter()
        .find(|s| s.name == "c-loop")
        .expect("c-loop slot");
    assert!(c.ticks > 0 && c.tid == fx.pid as u32, "{c:?}");
    assert_eq!(c.period_ns, 20_000_000);
    // And the header the C program was compiled against says the same.
    let header = std::fs::read_to_string(header_dir().join("aiodebug.h")).expect("aiodebug.h");
    for (name, value) in [
        ("AIODEBUG_ABI_MAJOR", aiodebug::abi::ABI_MAJOR),
        ("AIODEBUG_ABI_MINOR", aiodebug::abi::ABI_MINOR),
    ] {
        assert!(
            header.contains(&format!("#define {name} {value}\n")),
            "aiodebug.h: {name} should be {value}"
        );
    }
}

#[test]
fn the_companion_crate_builds_without_dependencies() {
    for (pkg, allowed) in [
        ("aiodebug", &["aiodebug"][..]),
        ("aiodebug-ffi", &["aiodebug-ffi", "aiodebug"][..]),
    ] {
        let out = Command::new(cargo())
            .current_dir(workspace_root())
            .args(["tree", "-p", pkg, "-e", "normal", "--prefix", "none"])
            .output()
            .expect("cargo tree");
        assert!(out.status.success(), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let names: Vec<&str> = stdout
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert!(!names.is_empty(), "{stdout}");
        for n in &names {
            assert!(allowed.contains(n), "{pkg} depends on {n}:\n{stdout}");
        }
    }
}

// ---------------------------------------------------------------------------
// `watch` end to end: a hang in C, Python or a stuck tokio worker is caught
// with three snapshots.

/// Runs `watch --exit-on-hang` on `fx`, sends `cmd` once the watch has
/// found a loop (not after a fixed sleep: on a loaded machine the watch may
/// start after a 1.2 s hang has ended), and returns the JSON events and the
/// dump files' texts in snapshot order.
fn watch_episode(fx: &mut Fixture, cmd: &str, extra: &[&str]) -> (Vec<Value>, Vec<String>) {
    let dir = TempDir::new("companion-watch");
    let mut args = vec!["--exit-on-hang", "--dump-gap", "0.3"];
    args.extend_from_slice(extra);
    let watch = Watch::started(fx.pid, dir.path(), &args);
    fx.ok(cmd);
    let (code, events) = watch.finish(Duration::from_secs(20));
    assert_eq!(code, Some(1), "--exit-on-hang exits 1:\n{events:#?}");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .collect();
    // Snapshot order is the N at the end of the name.
    files.sort_by_key(|p| p.to_string_lossy().rsplit('-').next().map(str::to_owned));
    let texts = files
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("read dump"))
        .collect();
    (events, texts)
}

/// The first thread block of a dump file (the stalled loop's or stuck worker's).
fn first_thread(text: &str) -> &str {
    text.split("\n\n")
        .find(|b| b.starts_with("Thread "))
        .expect("a thread block")
}

/// A fixture to spawn, the command that blocks its loop, its callback's name.
type Case = (
    &'static str,
    Box<dyn Fn() -> Fixture>,
    &'static str,
    &'static str,
);

#[test]
fn watch_catches_a_hang_in_c_static_c_shared_and_python() {
    let cases: [Case; 3] = [
        (
            "c static",
            Box::new(|| Fixture::spawn_path(c_loop_static(), &[])),
            "block c-loop 1200",
            "block_callback",
        ),
        (
            "c shared",
            Box::new(|| Fixture::spawn_path(c_loop_shared(), &[])),
            "block c-loop 1200",
            "block_callback",
        ),
        (
            "python",
            Box::new(python_fixture),
            "block asyncio 1200",
            "blocking_callback",
        ),
    ];
    for (what, spawn, cmd, callback) in cases {
        let mut fx = spawn();
        std::thread::sleep(Duration::from_millis(150));
        let (events, files) = watch_episode(&mut fx, cmd, &[]);
        assert_eq!(files.len(), 3, "{what}: {events:#?}");
        assert_eq!(
            events
                .iter()
                .filter(|e| e["event"] == "hang_started")
                .count(),
            1,
            "{what}"
        );
        let first = &files[0];
        assert!(first.contains("snapshot 1 of 3"), "{what}: {first}");
        let block = first_thread(first);
        assert!(block.contains("STALLED LOOP"), "{what}: {block}");
        // The marked callback is named in the header, and for C also among
        // the native frames of the loop's thread.
        assert!(
            first.contains("polling:    ") && first.contains(callback),
            "{what}: {first}"
        );
        if what.starts_with('c') {
            assert!(block.contains(callback), "{what}: {block}");
        }
    }
}

#[test]
fn watch_catches_a_stuck_worker_while_the_loop_keeps_ticking() {
    let mut fx = Fixture::spawn_path(companion_service(), &[]);
    std::thread::sleep(Duration::from_millis(150));
    let (events, files) = watch_episode(&mut fx, "stuck 1500", &[]);
    // A hang episode like a loop's, of one worker (scope "worker").
    let hang_of = |scope: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| e["event"] == "hang_started" && e["scope"] == scope)
            .collect()
    };
    let stuck = hang_of("worker");
    assert_eq!(stuck.len(), 1, "{events:#?}");
    assert!(
        stuck[0]["polling"]
            .as_str()
            .is_some_and(|p| p.starts_with("task 'orders' (")),
        "{events:#?}"
    );
    // The loop never hung: its monitor kept ticking on the other worker.
    assert_eq!(hang_of("loop").len(), 0, "{events:#?}");
    assert_eq!(files.len(), 3);
    let first = &files[0];
    assert!(
        first.contains("worker:     thread") && first.contains("polling task 'orders'"),
        "{first}"
    );
    let block = first_thread(first);
    assert!(
        block.contains("STALLED LOOP 'workers' (one stuck worker)"),
        "{block}"
    );
    assert!(block.contains("block_worker"), "{block}");
}
