//! Python frames of real CPython interpreters, merged with native ones:
//! 3.11 (`python3` of this machine), 3.13 and 3.14 (Debian's packages,
//! fetched by `scripts/fetch-pythons` into `target/pythons/` and started
//! through their own `ld.so`, so `/proc/PID/exe` is the loader), and any
//! pyenv 3.12/3.13 this machine has. Checked against `py-spy dump` (PyPI)
//! function by function, and end to end through `watch`: a coroutine's
//! synchronous helper that blocks the loop is the culprit, at its line.
//!
//! A version that cannot be had (archive unreachable, no pyenv build) is
//! skipped with a loud line on stderr; 3.11 is never skipped.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::cbuild::ffi_dir;
use support::watcher::Watch;
use support::{watch_bin, workspace_root, Fixture, TempDir};

/// One interpreter to test.
#[derive(Debug, Clone)]
struct Interp {
    /// `3.11`, …
    version: String,
    /// How the tests start it (for Debian's builds: through ld.so).
    run: PathBuf,
    /// A way to start it with `/proc/PID/exe` = the interpreter, for py-spy.
    direct: PathBuf,
}

fn loud(msg: &str) {
    eprintln!("\n**********\npython_frames: SKIPPED {msg}\n**********\n");
}

/// `major.minor` of the interpreter at `path`.
fn version_of(path: &Path) -> Option<String> {
    let out = Command::new(path)
        .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Runs `scripts/fetch-pythons` once per test process (cached, idempotent).
fn fetched_pythons() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = workspace_root();
        let status = Command::new(root.join("scripts/fetch-pythons"))
            .current_dir(&root)
            .stdin(Stdio::null())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            loud(&format!("scripts/fetch-pythons failed to run: {status:?}"));
        }
        root.join("target/pythons")
    })
}

/// Every interpreter available, 3.11 first.
fn interpreters() -> Vec<Interp> {
    let mut out = Vec::new();
    let system = PathBuf::from("python3");
    match version_of(&system) {
        Some(v) => out.push(Interp {
            version: v,
            run: system.clone(),
            direct: system,
        }),
        None => panic!("python3 does not run"),
    }
    for v in ["3.13", "3.14"] {
        let dir = fetched_pythons().join(v);
        let run = dir.join("python");
        if version_of(&run).as_deref() != Some(v) {
            loud(&format!(
                "Python {v}: not fetched (Debian archive unreachable? see scripts/fetch-pythons)"
            ));
            continue;
        }
        let direct = dir.join("python-direct");
        out.push(Interp {
            version: v.to_string(),
            direct: if direct.exists() { direct } else { run.clone() },
            run,
        });
    }
    // pyenv builds this machine may have (libpython3.X.so): more layouts.
    for v in ["3.12", "3.13"] {
        let found = std::fs::read_dir("/root/.pyenv/versions")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join(format!("bin/python{v}")))
            .find(|p| p.exists());
        match found {
            Some(p) if version_of(&p).as_deref() == Some(v) => out.push(Interp {
                version: v.to_string(),
                run: p.clone(),
                direct: p,
            }),
            _ if v == "3.12" => loud(
                "Python 3.12: no Debian suite ships it and this machine has no pyenv 3.12 build",
            ),
            _ => {}
        }
    }
    out
}

/// The py-spy of `target/tools/py-spy` (installed from PyPI if missing).
fn py_spy() -> Option<&'static Path> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = workspace_root().join("target/tools/py-spy");
        let bin = dir.join("bin/py-spy");
        if !bin.exists() {
            let _ = Command::new("python3")
                .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
                .arg("--target")
                .arg(&dir)
                .arg("py-spy")
                .stdin(Stdio::null())
                .status();
        }
        if bin.exists() {
            Some(bin)
        } else {
            loud("py-spy could not be installed from PyPI: no comparison with it");
            None
        }
    })
    .as_deref()
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn dump_json(pid: i32, extra: &[&str]) -> Value {
    let out = run(Command::new(watch_bin())
        .args(["dump", "--json", &pid.to_string()])
        .args(extra));
    assert!(
        out.status.success(),
        "dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("dump JSON")
}

/// Thread `tid` of a `dump --json` (panics if the dump lacks it).
fn thread_of(dump: &Value, tid: i32) -> Value {
    dump["threads"]
        .as_array()
        .expect("threads")
        .iter()
        .find(|t| t["tid"] == tid)
        .cloned()
        .unwrap_or_else(|| panic!("no thread {tid} in the dump"))
}

/// tid → qualified names of the thread's Python frames, innermost first.
fn our_python_frames(dump: &Value) -> HashMap<i64, Vec<String>> {
    dump["threads"]
        .as_array()
        .expect("threads")
        .iter()
        .filter(|t| !t["python"].is_null())
        .map(|t| {
            let names = t["python"]["frames"]
                .as_array()
                .expect("python frames")
                .iter()
                .map(|f| f["qualname"].as_str().unwrap_or("?").to_string())
                .collect();
            (t["tid"].as_i64().expect("tid"), names)
        })
        .collect()
}

/// py-spy's view: tid → function names of its frames (innermost first),
/// and tid → its thread name.
type PySpyView = (HashMap<i64, Vec<String>>, HashMap<i64, String>);

/// tid → function names of py-spy's frames, innermost first, and its names.
fn py_spy_frames(py_spy: &Path, pid: i32) -> Result<PySpyView, String> {
    let out = run(Command::new(py_spy).args(["dump", "--json", "--pid", &pid.to_string()]));
    if !out.status.success() {
        return Err(format!(
            "py-spy failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("py-spy JSON: {e}"))?;
    let threads = v.as_array().ok_or("py-spy printed no thread list")?;
    let names = threads
        .iter()
        .filter_map(|t| {
            Some((
                t["os_thread_id"].as_i64()?,
                t["thread_name"].as_str()?.to_string(),
            ))
        })
        .collect();
    let frames = threads
        .iter()
        .map(|t| {
            let names = t["frames"]
                .as_array()
                .map(|fs| {
                    fs.iter()
                        .map(|f| f["name"].as_str().unwrap_or("?").to_string())
                        .collect()
                })
                .unwrap_or_default();
            (t["os_thread_id"].as_i64().unwrap_or(-1), names)
        })
        .collect();
    Ok((frames, names))
}

/// tid → `threading` name in our dump.
fn our_thread_names(dump: &Value) -> HashMap<i64, String> {
    dump["threads"]
        .as_array()
        .expect("threads")
        .iter()
        .filter_map(|t| {
            Some((
                t["tid"].as_i64()?,
                t["python"]["name"].as_str()?.to_string(),
            ))
        })
        .collect()
}

fn frames_fixture(interp: &Path) -> Fixture {
    let script = workspace_root().join("fixtures/python/frames.py");
    let fx = Fixture::spawn_path(interp, &[script.to_string_lossy().into_owned()]);
    assert_eq!(fx.kind(), "python-frames");
    fx
}

/// The thread whose Python frames start with `first` (innermost).
fn thread_starting<'a>(frames: &'a HashMap<i64, Vec<String>>, first: &str) -> &'a Vec<String> {
    frames
        .values()
        .find(|f| f.first().is_some_and(|n| n == first))
        .unwrap_or_else(|| panic!("no thread in {first}: {frames:#?}"))
}

/// Checks a dump of frames.py: every thread's resting frames.
fn check_frames_dump(version: &str, pid: i32, dump: &Value) {
    let py = &dump["python"];
    assert!(
        py["version"]
            .as_str()
            .is_some_and(|v| v.starts_with(&format!("{version}."))),
        "Python {version}: {py}"
    );
    let frames = our_python_frames(dump);
    // threading names: of started threads (their _bootstrap frame's
    // Thread) and of the main thread (threading._main_thread).
    let names = our_thread_names(dump);
    let named = |first: &str| -> Option<&String> {
        let (tid, _) = frames
            .iter()
            .find(|(_, f)| f.first().is_some_and(|n| n == first))?;
        names.get(tid)
    };
    assert_eq!(
        named("Worker.nap").map(String::as_str),
        Some("db-pool-1"),
        "Python {version}: {names:?}"
    );
    assert_eq!(named("recurse").map(String::as_str), Some("deep"));
    assert_eq!(
        names.get(&i64::from(pid)).map(String::as_str),
        Some("MainThread"),
        "Python {version}: {names:?}"
    );
    let main = frames.get(&i64::from(pid)).expect("the main thread");
    assert_eq!(
        main,
        &["Console.serve", "<module>"],
        "Python {version}: main thread"
    );
    let sleeper = thread_starting(&frames, "Worker.nap");
    assert_eq!(sleeper.get(1).map(String::as_str), Some("Worker.run"));
    assert!(sleeper.iter().any(|f| f == "Thread._bootstrap"));
    let deep = thread_starting(&frames, "recurse");
    assert_eq!(
        deep.iter().filter(|f| *f == "recurse").count(),
        26,
        "{deep:?}"
    );
    assert!(deep.iter().any(|f| f == "<lambda>"));
    thread_starting(&frames, "digest_forever");
    assert!(
        frames.values().any(|f| f.iter().any(|n| n == "run_loop")),
        "the asyncio thread: {frames:#?}"
    );
    for t in dump["threads"].as_array().expect("threads") {
        let Some(p) = t["python"].as_object() else {
            continue;
        };
        let tid = t["tid"].as_i64().unwrap_or(0);
        // The merged stack holds the thread's Python frames, in order,
        // with its native frames around them.
        let merged: Vec<String> = t["frames"]
            .as_array()
            .expect("frames")
            .iter()
            .filter(|f| f["kind"] == "python")
            .map(|f| f["function"].as_str().unwrap_or("?").to_string())
            .collect();
        let ours = frames.get(&tid).expect("python frames");
        assert_eq!(
            &merged, ours,
            "Python {version}: thread {tid} merged frames"
        );
        assert!(
            ["holds", "waits", "released"].contains(&p["gil"].as_str().unwrap_or("")),
            "{p:?}"
        );
        if tid == i64::from(pid) {
            // Reading stdin: outside Python.
            assert_eq!(p["gil"], "released", "Python {version}: main thread {p:?}");
            // Merged, not Python frames alone, on every version: also on
            // Debian's stripped 3.14, whose eval loop is an unnamed part
            // (python::evalparts). Native frames above (the read) and below
            // (the interpreter's main).
            let note = p["note"].as_str().unwrap_or("");
            assert!(
                !note.contains("Python frames only"),
                "Python {version}: main thread not merged: {note}"
            );
            let kinds: Vec<bool> = t["frames"]
                .as_array()
                .expect("frames")
                .iter()
                .map(|f| f["kind"] == "python")
                .collect();
            let first = kinds.iter().position(|&py| py);
            let last = kinds.iter().rposition(|&py| py);
            assert!(
                first.is_some_and(|i| i > 0) && last.is_some_and(|i| i + 1 < kinds.len()),
                "Python {version}: main thread's merged frames {kinds:?}"
            );
        }
    }
}

#[test]
fn dump_shows_every_threads_python_frames_like_py_spy() {
    let py_spy = py_spy();
    let mut compared = Vec::new();
    for interp in interpreters() {
        let v = interp.version.clone();
        // Through the way the tests start it (ld.so for Debian's builds).
        let fx = frames_fixture(&interp.run);
        let dump = dump_json(fx.pid, &[]);
        check_frames_dump(&v, fx.pid, &dump);
        let out = run(Command::new(watch_bin()).args(["dump", &fx.pid.to_string()]));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.lines()
                .any(|l| l.starts_with("Thread ") && l.contains(", Python thread 'db-pool-1': ")),
            "Python {v}: the named thread's header:\n{text}"
        );
        drop(fx);

        // Started directly, side by side with py-spy.
        let Some(py_spy) = py_spy else { continue };
        let fx = frames_fixture(&interp.direct);
        let mut last = String::new();
        let mut matched = false;
        for _attempt in 0..5 {
            let dump = dump_json(fx.pid, &[]);
            let ours = our_python_frames(&dump);
            let (theirs, their_names) = match py_spy_frames(py_spy, fx.pid) {
                Ok(t) => t,
                Err(e) => {
                    last = e;
                    break;
                }
            };
            // Every thread py-spy sees has the same functions in ours; a
            // thread caught between two points of its loop is asked again.
            let mut differing: Vec<String> = theirs
                .iter()
                .filter(|(tid, names)| ours.get(tid) != Some(names))
                .map(|(tid, names)| format!("{tid}: py-spy {names:?}, ours {:?}", ours.get(tid)))
                .collect();
            // Thread names: the same as py-spy's, thread by thread.
            let our_names = our_thread_names(&dump);
            differing.extend(
                their_names
                    .iter()
                    .filter(|(tid, n)| our_names.get(tid) != Some(n))
                    .map(|(tid, n)| {
                        format!(
                            "{tid}: py-spy names it {n:?}, ours {:?}",
                            our_names.get(tid)
                        )
                    }),
            );
            if differing.is_empty() && theirs.len() == ours.len() {
                matched = true;
                break;
            }
            last = differing.join("\n");
            std::thread::sleep(Duration::from_millis(30));
        }
        if last.contains("py-spy failed") && !matched {
            loud(&format!("py-spy does not read Python {v}: {last}"));
            continue;
        }
        assert!(matched, "Python {v}: ours and py-spy's differ:\n{last}");
        compared.push(v);
    }
    eprintln!("python_frames: compared with py-spy on Python {compared:?}");
    if py_spy.is_some() {
        assert!(
            compared.iter().any(|v| v == "3.11"),
            "py-spy supports 3.11: it must have been compared"
        );
    }
}

#[test]
fn stacks_option_chooses_python_native_or_merged_frames() {
    let fx = frames_fixture(Path::new("python3"));
    let kinds = |extra: &[&str]| -> (usize, usize) {
        let main = thread_of(&dump_json(fx.pid, extra), fx.pid);
        let frames = main["frames"].as_array().expect("frames");
        let py = frames.iter().filter(|f| f["kind"] == "python").count();
        (py, frames.len() - py)
    };
    let (py, native) = kinds(&[]);
    assert!(
        py == 2 && native > 3,
        "merged: {py} python, {native} native"
    );
    assert_eq!(kinds(&["--stacks", "python"]), (2, 0));
    let (py, native) = kinds(&["--stacks", "native"]);
    assert!(py == 0 && native > 3);
    // Text: Python frames show as `[python]` lines and the header names the version.
    let out = run(Command::new(watch_bin()).args(["dump", &fx.pid.to_string()]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\nPython 3.11."), "{text}");
    assert!(
        text.contains("[python]           in Console.serve at ") && text.contains("frames.py:"),
        "{text}"
    );
    assert!(
        text.contains("Python thread 'MainThread': outside Python (GIL released)"),
        "{text}"
    );
}

/// Watches `fx` until its first hang episode is written (`--exit-on-hang`)
/// after `cmd`; returns the JSON events and the dump files' text.
///
/// `cmd` is sent once the watcher has found the loop, not after a fixed
/// sleep: on a loaded machine the watcher may take longer to start than the
/// hang lasts, and would then never see it.
fn watch_hang(fx: &mut Fixture, cmd: &str) -> (String, Vec<Value>, Vec<String>) {
    let dir = TempDir::new("python-frames");
    let watch = Watch::started(fx.pid, dir.path(), &["--exit-on-hang", "--dump-gap", "0.3"]);
    let answer = fx.ok(cmd);
    let (_, events) = watch.finish(Duration::from_secs(60));
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    let texts = files
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("dump file"))
        .collect();
    (answer, events, texts)
}

#[test]
fn watch_names_the_coroutines_blocking_helper_at_its_line() {
    let lib = ffi_dir().join("libaiodebug.so");
    let script = workspace_root().join("fixtures/python/orders_server.py");
    for interp in interpreters() {
        let v = &interp.version;
        let mut fx = Fixture::spawn_path(
            &interp.run,
            &[
                script.to_string_lossy().into_owned(),
                lib.to_string_lossy().into_owned(),
            ],
        );
        std::thread::sleep(Duration::from_millis(150));
        let (answer, events, files) = watch_hang(&mut fx, "order 3000");
        let line: u32 = answer
            .strip_prefix("OK line=")
            .and_then(|l| l.parse().ok())
            .unwrap_or_else(|| panic!("answer {answer:?}"));
        let want = format!("parse_order (orders_server.py:{line})");
        let written: Vec<&Value> = events
            .iter()
            .filter(|e| e["event"] == "dump_written")
            .collect();
        assert!(!written.is_empty(), "Python {v}: {events:#?}");
        let culprit = written[0]["culprit"].as_str().unwrap_or("");
        eprintln!(
            "python_frames: Python {v} ({}): blocked in {culprit}",
            interp.run.display()
        );
        assert!(
            culprit.starts_with(&want),
            "Python {v}: culprit {culprit:?}, want {want:?}"
        );
        let first = files.first().expect("a dump file");
        assert!(
            first.contains(&format!("blocked in: {want}")),
            "Python {v}:\n{first}"
        );
        // 3.14+: the interpreter names the loop's running task itself (no
        // companion marks in this fixture); older versions say nothing.
        let task = "task 'order' (coro handle)";
        if v.as_str() >= "3.14" {
            assert!(
                culprit.ends_with(&format!(", in {task}")),
                "Python {v}: culprit {culprit:?}"
            );
            assert!(
                first.contains(&format!(
                    "\nrunning:    {task} (the interpreter's asyncio state)\n"
                )),
                "Python {v}:\n{first}"
            );
        } else {
            assert!(!first.contains("\nrunning:    "), "Python {v}:\n{first}");
        }
        // The loop's thread (first, marked) shows the coroutine under its helper.
        let block = first
            .split("\n\n")
            .find(|b| b.contains("STALLED LOOP"))
            .expect("the stalled loop's thread");
        let helper = block.find("in parse_order at ").expect("parse_order frame");
        let handler = block.find("in handle at ").expect("handle frame");
        assert!(helper < handler, "Python {v}:\n{block}");
        assert!(
            block
                .lines()
                .next()
                .is_some_and(|h| h.contains(": holds the GIL")),
            "Python {v}:\n{block}"
        );
    }
}

/// 3.14: `dump` names the task the loop is running (name and coroutine),
/// in text and JSON, from the interpreter's asyncio debug offsets; on
/// 3.11/3.13 the JSON's `task` is null (only the companion's marks know).
#[test]
fn dump_names_the_running_asyncio_task_from_the_interpreter() {
    let lib = ffi_dir().join("libaiodebug.so");
    let script = workspace_root().join("fixtures/python/orders_server.py");
    let mut checked = Vec::new();
    for interp in interpreters() {
        let v = interp.version.clone();
        let mut fx = Fixture::spawn_path(
            &interp.run,
            &[
                script.to_string_lossy().into_owned(),
                lib.to_string_lossy().into_owned(),
            ],
        );
        let answer = fx.ok("order 6000");
        assert!(answer.starts_with("OK line="), "{answer}");
        // The task starts at the loop's next turn: ask until the loop's
        // thread is inside parse_order (the block lasts 6 s).
        let deadline = Instant::now() + Duration::from_secs(5);
        let main = loop {
            let main = thread_of(&dump_json(fx.pid, &[]), fx.pid);
            let inside = main["python"]["frames"]
                .as_array()
                .is_some_and(|f| f.first().is_some_and(|f| f["function"] == "parse_order"));
            if inside || Instant::now() > deadline {
                break main;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let task = &main["python"]["task"];
        if v.as_str() >= "3.14" {
            assert_eq!(task["name"], "order", "Python {v}: {main}");
            assert_eq!(task["coro"], "handle", "Python {v}: {main}");
            let out = run(Command::new(watch_bin()).args(["dump", &fx.pid.to_string()]));
            let text = String::from_utf8_lossy(&out.stdout);
            let header = text
                .lines()
                .find(|l| l.starts_with(&format!("Thread {} ", fx.pid)))
                .unwrap_or_else(|| panic!("no main thread in:\n{text}"));
            assert!(
                header.contains(", running task 'order' (coro handle)"),
                "Python {v}: {header}"
            );
        } else {
            assert!(task.is_null(), "Python {v}: {main}");
        }
        checked.push(v);
    }
    eprintln!("python_frames: running tasks checked on Python {checked:?}");
    if !checked.iter().any(|v| v.as_str() >= "3.14") {
        loud("Python 3.14: not fetched, the interpreter's asyncio task is not checked");
    }
}

/// Builds fixtures/python/fake_runtime.c as `dir/name` with `defines`.
fn fake_python(dir: &Path, name: &str, defines: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let src = workspace_root().join("fixtures/python/fake_runtime.c");
    let st = run(Command::new("gcc")
        .args(["-O1", "-g", "-rdynamic", "-o"])
        .arg(&out)
        .args(defines)
        .arg(&src));
    assert!(
        st.status.success(),
        "gcc: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    out
}

#[test]
fn garbage_or_unknown_interpreter_state_is_a_note_and_native_frames_stay() {
    let dir = TempDir::new("fake-python");
    let cases = [
        // A 3.12 runtime full of pointers to nowhere.
        (
            "python3.12-garbage",
            vec!["-DVERSION=0x030c01f0UL"],
            "Python 3.12.1",
            "cannot read",
        ),
        // A version before 3.11.
        (
            "python3.10-old",
            vec!["-DVERSION=0x030a0df0UL"],
            "Python",
            "Python 3.10.13 is not supported",
        ),
        // 3.13's cookie, then garbage where the offsets should be.
        (
            "python3.13-badoffsets",
            vec!["-DVERSION=0x030d05f0UL", "-DCOOKIE"],
            "Python",
            "Python 3.13.5",
        ),
    ];
    for (name, defines, header, note) in cases {
        let exe = fake_python(dir.path(), name, &defines);
        let fx = Fixture::spawn_path(&exe, &[]);
        let d = dump_json(fx.pid, &[]);
        let got = d["python"]["note"].as_str().unwrap_or("");
        assert!(got.contains(note), "{name}: note {got:?}, want {note:?}");
        let main = &d["threads"][0];
        assert!(main["python"].is_null(), "{name}: {main}");
        let frames = main["frames"].as_array().expect("frames");
        assert!(
            frames.iter().any(|f| f["function"] == "main"),
            "{name}: native frames are printed: {frames:?}"
        );
        let out = run(Command::new(watch_bin()).args(["dump", &fx.pid.to_string()]));
        assert!(out.status.success(), "{name}: exit {:?}", out.status);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.lines()
                .any(|l| l.starts_with(header) && l.contains(note)),
            "{name}:\n{text}"
        );
    }
}
