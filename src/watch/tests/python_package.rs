//! The pip-installable heartbeat (`src/aiodebug-py`, import name
//! `aiodebug_heartbeat`) as a Python user gets it: a fresh venv, `pip install
//! ./src/aiodebug-py` from this checkout (maturin, the build backend, comes
//! from PyPI's wheel), then an asyncio TCP service that uses only
//! `aiodebug_heartbeat.enable()` and whose handler blocks its loop for 2 s in
//! a synchronous helper (`fixtures/python/orders_server_pkg.py`): `watch` catches
//! the hang and its dump files name the connection's task.
//!
//! On Debian's 3.13 and 3.14 (fetched by `scripts/fetch-pythons`, started
//! through their own `ld.so`; their `-minimal` packages have no venv or pip)
//! the same package is the abi3 wheel `maturin build` makes (one wheel for
//! CPython 3.11 and later, built once per test process into
//! `target/python/wheel/`), unpacked into a temporary directory on
//! `PYTHONPATH`: the same service, the same hang, caught the same way. A
//! version that could not be fetched is skipped with a loud line on stderr.
//!
//! What makes it fast on a second run lives under `target/python/`
//! (`scripts/python-tools`): maturin's and pytest's wheels for offline
//! installs, pip's cache, and the extension's cargo target directory, so
//! `pip install` of an unchanged checkout is a no-op cargo build (about 3 s).
//! Everything else (the venv, the dumps) is in a temporary directory removed
//! on drop, also when the test fails.

mod support;

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use support::{watch_bin, workspace_root, Fixture, TempDir};

/// A child process killed and reaped when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn text(what: &str, out: &Output) -> String {
    format!(
        "{what}: exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd` to completion, panicking with its output on failure.
fn run(what: &str, cmd: &mut Command) -> Output {
    let started = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{}", text(what, &out));
    eprintln!("{what}: {:.1} s", started.elapsed().as_secs_f64());
    out
}

/// `target/python/` (made by `scripts/python-tools`, run here: idempotent).
fn python_root() -> PathBuf {
    let root = workspace_root();
    run(
        "scripts/python-tools",
        Command::new(root.join("scripts/python-tools")).current_dir(&root),
    );
    root.join("target/python")
}

/// Held while the package is built: `pip install` (maturin as its build
/// backend) and `maturin build` share `target/python/cargo`, and maturin
/// stages the extension at a fixed path there (`cargo/maturin/lib_native.so`):
/// two builds at once (the 3.11 venv test beside a Debian wheel test, on a
/// cold cache) removed each other's file.
static BUILDING: Mutex<()> = Mutex::new(());

/// A venv in `dir` with the package `pip install`ed from the checkout;
/// returns its interpreter.
fn venv_with_package(dir: &Path) -> PathBuf {
    let py = python_root();
    let venv = dir.join("venv");
    run(
        "python3 -m venv",
        Command::new("python3").arg("-m").arg("venv").arg(&venv),
    );
    let python = venv.join("bin/python");
    let _building = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    run(
        "pip install ./src/aiodebug-py",
        Command::new(&python)
            .args(["-m", "pip", "install", "--no-index", "--find-links"])
            .arg(py.join("wheelhouse"))
            .arg("./src/aiodebug-py")
            .current_dir(workspace_root())
            .env("PIP_CACHE_DIR", py.join("pip-cache"))
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
            .env("CARGO_TARGET_DIR", py.join("cargo")),
    );
    python
}

/// Lines of `child`'s stdout, as they come.
fn lines_of(child: &mut Child) -> Receiver<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// JSON events from `rx` until one satisfies `stop` or `within` passes.
fn events_until(
    rx: &Receiver<String>,
    seen: &mut Vec<Value>,
    within: Duration,
    stop: impl Fn(&Value) -> bool,
) -> bool {
    let deadline = Instant::now() + within;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("watch printed non-JSON {line:?}: {e}"));
                let done = stop(&v);
                seen.push(v);
                if done {
                    return true;
                }
            }
            Err(_) => return false,
        }
    }
    false
}

/// `target/python/wheel/`: the package's abi3 wheel, `maturin build` from
/// the checkout once per test process (cargo's cache under
/// `target/python/cargo` makes an unchanged checkout a few seconds' no-op
/// build); returns the wheel's path.
fn wheel() -> &'static Path {
    static WHEEL: OnceLock<PathBuf> = OnceLock::new();
    WHEEL.get_or_init(|| {
        let py = python_root();
        let out = py.join("wheel");
        // Only this wheel in the directory: an older version's is removed.
        let _building = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
        let _ = std::fs::remove_dir_all(&out);
        run(
            "maturin build",
            Command::new(py.join("tools/bin/maturin"))
                .args(["build", "--release", "--quiet"])
                .args(["-m", "src/aiodebug-py/Cargo.toml", "--out"])
                .arg(&out)
                .current_dir(workspace_root())
                .env("CARGO_TARGET_DIR", py.join("cargo")),
        );
        let wheels: Vec<PathBuf> = std::fs::read_dir(&out)
            .unwrap_or_else(|e| panic!("{}: {e}", out.display()))
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "whl"))
            .collect();
        assert_eq!(
            wheels.len(),
            1,
            "one wheel in {}: {wheels:?}",
            out.display()
        );
        let name = wheels[0].file_name().unwrap_or_default().to_string_lossy();
        // Why abi3: one wheel serves every interpreter from 3.11 on.
        assert!(name.contains("-cp311-abi3-"), "not an abi3 wheel: {name}");
        wheels[0].clone()
    })
}

/// Debian's python `version` of `target/pythons/` (`scripts/fetch-pythons`,
/// run here: cached) and a wrapper in `dir` that starts it with the wheel
/// unpacked on `PYTHONPATH`; None (said loudly) if that version could not be
/// fetched. Returns the wrapper and the unpacked directory.
fn debian_python_with_wheel(version: &str, dir: &Path) -> Option<(PathBuf, PathBuf)> {
    let root = workspace_root();
    let status = Command::new(root.join("scripts/fetch-pythons"))
        .arg(version)
        .current_dir(&root)
        .stdin(Stdio::null())
        .status();
    let python = root.join("target/pythons").join(version).join("python");
    let runs = Command::new(&python)
        .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == version);
    if !runs {
        eprintln!(
            "\n**********\npython_package: SKIPPED Python {version}: not fetched \
             (scripts/fetch-pythons: {status:?}; Debian archive unreachable?)\n**********\n"
        );
        return None;
    }
    // A wheel is a zip file; an extension module cannot be imported from a
    // zip, so it is unpacked (by this machine's python3: its zipfile CLI).
    let site = dir.join("site");
    run(
        "unpack the wheel",
        Command::new("python3")
            .args(["-m", "zipfile", "-e"])
            .arg(wheel())
            .arg(&site),
    );
    // A wrapper rather than an environment for the fixture: it execs, so the
    // fixture's pid is the interpreter's.
    let wrapper = dir.join("python");
    let quote = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', "'\\''"));
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nPYTHONPATH={} exec {} \"$@\"\n",
            quote(&site),
            quote(&python)
        ),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", wrapper.display()));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", wrapper.display()));
    Some((wrapper, site))
}

#[test]
fn pip_installed_heartbeat_in_an_asyncio_server_is_caught_by_watch() {
    let tmp = TempDir::new("python-package");
    let python = venv_with_package(&tmp);
    caught_by_watch(&python, &tmp.join("venv"), &tmp, false);
}

#[test]
fn wheel_on_debian_python_3_13_is_caught_by_watch() {
    let tmp = TempDir::new("python-wheel-3.13");
    if let Some((python, site)) = debian_python_with_wheel("3.13", &tmp) {
        caught_by_watch(&python, &site, &tmp, false);
    }
}

#[test]
fn wheel_on_debian_python_3_14_is_caught_by_watch() {
    let tmp = TempDir::new("python-wheel-3.14");
    if let Some((python, site)) = debian_python_with_wheel("3.14", &tmp) {
        // 3.14 also says which task the interpreter itself is running.
        caught_by_watch(&python, &site, &tmp, true);
    }
}

/// `fixtures/python/orders_server_pkg.py` run by `python`, with the package
/// importable from under `package_dir`: one order blocks the loop for 2 s in
/// a synchronous helper; `watch` catches it, three dumps in `tmp/dumps`, each
/// header naming the connection's task (`polling:`, and `running:` when
/// `running_task`), then the service answers and exits 0 on end of file.
fn caught_by_watch(python: &Path, package_dir: &Path, tmp: &Path, running_task: bool) {
    // The installed package writes the registry ABI this watcher reads.
    let out = run(
        "import aiodebug_heartbeat",
        Command::new(python).args([
            "-c",
            "import aiodebug_heartbeat as a; print(*a.abi_version(), a.__file__)",
        ]),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let want = format!(
        "{} {} {}",
        aiodebug::abi::ABI_MAJOR,
        aiodebug::abi::ABI_MINOR,
        package_dir.display()
    );
    assert!(stdout.starts_with(&want), "{stdout:?} vs {want:?}");

    let script = workspace_root().join("fixtures/python/orders_server_pkg.py");
    let fx = Fixture::spawn_path(python, &[script.to_string_lossy().into_owned()]);
    assert_eq!(fx.kind(), "python-orders");
    let port: u16 = fx
        .ready_field("port")
        .and_then(|p| p.parse().ok())
        .expect("port");
    let resume_line = fx.ready_field("resume_line").expect("resume_line");

    let dumps = tmp.join("dumps");
    let mut watch = Reaped(
        Command::new(watch_bin())
            .args(["watch", &fx.pid.to_string(), "--json", "--exit-on-hang"])
            .args(["--dump-gap", "0.3", "--output-dir"])
            .arg(&dumps)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start watch"),
    );
    let rx = lines_of(&mut watch.0);
    let mut events = Vec::new();
    assert!(
        events_until(&rx, &mut events, Duration::from_secs(10), |e| {
            e["event"] == "loop_found" && e["loop"] == "orders"
        }),
        "watch found no loop 'orders': {events:#?}"
    );
    let found = events.last().cloned().unwrap_or_default();
    assert_eq!(found["tid"], fx.pid, "the loop runs on the main thread");
    assert_eq!(found["period_ms"], 20.0, "enable()'s default period");

    // One order whose parsing blocks the loop for 2 s.
    let mut client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    client.write_all(b"42 2000\n").expect("send the order");
    assert!(
        events_until(&rx, &mut events, Duration::from_secs(30), |e| {
            e["event"] == "finished"
        }),
        "watch did not finish the episode: {events:#?}"
    );
    let status = watch.0.wait().expect("wait for watch");
    assert_eq!(
        status.code(),
        Some(1),
        "--exit-on-hang exits 1: {events:#?}"
    );

    // The service lives on and answers once the block is over.
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut answer = String::new();
    BufReader::new(&client)
        .read_line(&mut answer)
        .expect("the answer");
    assert_eq!(answer, "OK 42\n");

    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "hang_started").count(),
        1,
        "{kinds:?}"
    );
    let hang = events
        .iter()
        .find(|e| e["event"] == "hang_started")
        .expect("hang_started");
    assert_eq!(hang["loop"], "orders", "{hang}");
    let written: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "dump_written")
        .collect();
    assert_eq!(written.len(), 3, "{events:#?}");

    let task = "task 'order-42: handle' (";
    let location = format!("orders_server_pkg.py:{resume_line})");
    for (i, e) in written.iter().enumerate() {
        let path = e["path"].as_str().expect("path");
        assert!(
            Path::new(path).starts_with(&dumps),
            "{path} is not in {dumps:?}"
        );
        let dump = std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{path}: {err}"));
        assert!(dump.contains(&format!("snapshot {} of 3", i + 1)), "{dump}");
        assert!(
            dump.contains(&format!("pid:        {} (", fx.pid)),
            "{dump}"
        );
        let header: String = dump
            .lines()
            .take_while(|l| !l.starts_with("Thread "))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(header.contains("loop:       'orders'"), "{header}");
        let polling = header
            .lines()
            .find(|l| l.starts_with("polling:    "))
            .unwrap_or_else(|| panic!("no polling line in the header of {path}:\n{header}"));
        assert!(
            polling.contains(task) && polling.contains(&location),
            "{polling:?} should name {task}…{location}"
        );
        let running = header.lines().find(|l| l.starts_with("running:    "));
        if running_task {
            let running = running.unwrap_or_else(|| panic!("no running line in {path}:\n{header}"));
            assert!(
                running.contains("task 'order-42' (coro handle)"),
                "{running:?}"
            );
        } else {
            assert_eq!(running, None, "only 3.14 says: {header}");
        }
        let first = dump
            .split("\n\n")
            .find(|b| b.starts_with("Thread "))
            .expect("a thread block");
        assert!(first.contains("STALLED LOOP"), "{first}");
    }
    let files = std::fs::read_dir(&dumps)
        .expect("the output directory")
        .count();
    assert_eq!(files, 3, "exactly the three dumps, no temporaries");

    // The client leaves (its handler ends), then end of file on stdin: the
    // service exits 0.
    drop(client);
    std::thread::sleep(Duration::from_millis(100));
    let status = fx.close_stdin_and_wait(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "exit: {status:?}");
}
