//! Targets in their own PID (and mount) namespaces, as in a container:
//! started with `unshare --fork --pid --mount-proc`, several at once. The
//! companion records thread ids as the container numbers them; `status`,
//! `watch` and `dump` must show the host's ids and mark the same threads as
//! they would outside.

mod support;

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::watcher::{wait_until, Watch};
use support::{fixture_path, watch_bin, workspace_root, Variant};

/// A fixture running as PID 1 of a new PID namespace (and mount namespace,
/// with its own /proc). Killed on drop: `--kill-child` makes the kernel
/// SIGKILL it when `unshare` dies, and we kill both.
struct NsFixture {
    unshare: Child,
    /// The fixture's pid on the host.
    pid: i32,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// A tmpfs mount point inside the namespace (removed on drop).
    mnt: Option<tempfile::TempDir>,
}

impl NsFixture {
    /// Starts `bin` in new PID and mount namespaces. With `on_tmpfs`, the
    /// binary is first copied onto a tmpfs mounted only inside the mount
    /// namespace, so its path does not exist on the host.
    fn spawn(bin: &Path, args: &[&str], on_tmpfs: bool) -> NsFixture {
        let mut cmd = Command::new("unshare");
        cmd.args(["--fork", "--pid", "--mount-proc", "--kill-child"]);
        let mnt = on_tmpfs.then(|| tempfile::tempdir().expect("tempdir"));
        if let Some(m) = &mnt {
            let inner = m.path().join("app");
            let script = format!(
                "mount -t tmpfs tmpfs {d} && cp {b} {d}/app && exec {d}/app \"$@\"",
                d = m.path().display(),
                b = bin.display()
            );
            assert!(!inner.exists());
            cmd.args(["--mount", "sh", "-c", &script, "sh"]);
        } else {
            cmd.arg(bin);
        }
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut unshare = cmd.spawn().expect("spawn unshare");
        let stdin = unshare.stdin.take();
        let out = unshare.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let ready = lines
            .recv_timeout(support::TIMEOUT)
            .unwrap_or_else(|e| panic!("{} in a namespace printed no READY: {e}", bin.display()));
        assert!(ready.starts_with("READY pid=1 "), "{ready}");
        // The fixture is unshare's only child.
        let children = format!("/proc/{0}/task/{0}/children", unshare.id());
        let pid: i32 = std::fs::read_to_string(&children)
            .expect("children of unshare")
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .expect("unshare has a child");
        NsFixture {
            unshare,
            pid,
            stdin,
            lines,
            mnt,
        }
    }

    fn ok(&mut self, cmd: &str) -> String {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{cmd}")
            .and_then(|()| stdin.flush())
            .expect("send");
        let answer = self.lines.recv_timeout(support::TIMEOUT).expect("answer");
        assert!(answer.starts_with("OK"), "{cmd:?} answered {answer:?}");
        answer
    }
}

impl Drop for NsFixture {
    fn drop(&mut self) {
        self.stdin = None;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
        if let Some(m) = &self.mnt {
            // The tmpfs lived in the namespace's mount table only; the host
            // directory is empty.
            let _ = std::fs::remove_dir(m.path());
        }
    }
}

/// The NSpid ids of every thread of `pid`: (host tid, innermost tid, name).
fn host_and_ns_tids(pid: i32) -> Vec<(u32, u32, String)> {
    support::proc_tasks(pid)
        .into_iter()
        .filter_map(|(tid, name)| {
            let st = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
            let ids: Vec<u32> = st
                .lines()
                .find_map(|l| l.strip_prefix("NSpid:"))?
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            Some((*ids.first()?, *ids.last()?, name))
        })
        .collect()
}

fn watch(args: &[&str]) -> Output {
    Command::new(watch_bin())
        .args(args)
        .output()
        .expect("run aiodebug-watch")
}

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The example companion-service (poll board: a stuck worker's tid).
fn companion_service() -> PathBuf {
    let target = workspace_root().join("target/fixtures");
    let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(workspace_root())
        .args([
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
        .arg(&target)
        .stdin(Stdio::null())
        .output()
        .expect("cargo build");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    target.join("fixture/examples/companion-service")
}

#[test]
fn status_shows_host_thread_ids_for_several_namespaced_targets() {
    let targets = [
        NsFixture::spawn(&fixture_path("fx-tokio-current", Variant::Pie), &[], false),
        NsFixture::spawn(&fixture_path("fx-tokio-multi", Variant::Pie), &[], true),
        NsFixture::spawn(
            &fixture_path("fx-thread-loop", Variant::PieStripped),
            &[],
            false,
        ),
    ];
    // Each target's loops registered and seen by `status`.
    for fx in &targets {
        wait_until(
            &format!("a loop of namespaced target {} in `status`", fx.pid),
            Duration::from_secs(10),
            || {
                let out = watch(&["status", &fx.pid.to_string(), "--json"]);
                json_lines(&out)
                    .iter()
                    .any(|l| l["event"] == "loop")
                    .then_some(())
            },
        );
    }
    for fx in &targets {
        let threads = host_and_ns_tids(fx.pid);
        assert!(
            threads.iter().any(|(h, n, _)| h != n),
            "{} is not in another PID namespace: {threads:?}",
            fx.pid
        );
        let out = watch(&["status", &fx.pid.to_string(), "--json"]);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let loops: Vec<Value> = json_lines(&out)
            .into_iter()
            .filter(|l| l["event"] == "loop")
            .collect();
        assert!(!loops.is_empty(), "{out:?}");
        for l in &loops {
            let tid = l["tid"].as_u64().expect("tid") as u32;
            let ns_tid = l["ns_tid"].as_u64().expect("ns_tid") as u32;
            // The pair is exactly a thread's NSpid (host first, own last).
            assert!(
                threads.iter().any(|&(h, n, _)| h == tid && n == ns_tid),
                "loop {l} of {}: ({tid}, {ns_tid}) is no thread's NSpid in {threads:?}",
                fx.pid
            );
            assert_ne!(tid, ns_tid, "{l}");
        }
        // The text form shows the host id too.
        let out = watch(&["status", &fx.pid.to_string()]);
        let text = String::from_utf8_lossy(&out.stdout);
        let first = loops[0]["tid"].as_u64().expect("tid").to_string();
        assert!(text.contains(&first), "{text}");
    }
    // `list` shows the same ids.
    let out = watch(&["list", "--json"]);
    let procs = json_lines(&out);
    for fx in &targets {
        let p = procs
            .iter()
            .find(|p| p["pid"] == fx.pid)
            .unwrap_or_else(|| panic!("{} not listed: {procs:?}", fx.pid));
        let threads = host_and_ns_tids(fx.pid);
        for l in p["loops"].as_array().expect("loops") {
            let tid = l["tid"].as_u64().expect("tid") as u32;
            assert!(threads.iter().any(|&(h, _, _)| h == tid), "{l}");
        }
    }
}

#[test]
fn a_stuck_worker_in_a_namespace_is_named_by_its_host_tid() {
    let mut fx = NsFixture::spawn(&companion_service(), &[], false);
    fx.ok("stuck 3000");
    let end = Instant::now() + Duration::from_secs(5);
    let poll = loop {
        let out = watch(&["status", &fx.pid.to_string(), "--json"]);
        let process = json_lines(&out)
            .into_iter()
            .find(|l| l["event"] == "process")
            .expect("process line");
        let polls = process["polling"].as_array().cloned().unwrap_or_default();
        if let Some(p) = polls.into_iter().find(|p| p["task"] == "orders") {
            break p;
        }
        assert!(Instant::now() < end, "no poll of 'orders' seen: {process}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let tid = poll["tid"].as_u64().expect("tid") as u32;
    let ns_tid = poll["ns_tid"].as_u64().expect("ns_tid") as u32;
    let threads = host_and_ns_tids(fx.pid);
    let worker = threads
        .iter()
        .find(|&&(h, _, _)| h == tid)
        .unwrap_or_else(|| panic!("tid {tid} is no thread of {}: {threads:?}", fx.pid));
    assert_eq!(worker.1, ns_tid);
    assert_eq!(worker.2, "workers", "{worker:?}");
    assert_ne!(tid, ns_tid);
}

#[test]
fn a_hang_in_a_namespace_marks_the_right_thread_and_names_the_culprit() {
    // Two namespaced targets at once, one of them run from a tmpfs that
    // exists only in its mount namespace; the second one hangs.
    let _quiet = NsFixture::spawn(&fixture_path("fx-thread-loop", Variant::Pie), &[], false);
    let mut fx = NsFixture::spawn(&fixture_path("fx-tokio-current", Variant::Pie), &[], true);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut w = Watch::started(
        fx.pid,
        dir.path(),
        &["--dumps", "2", "--dump-gap", "0.3", "--exit-on-hang"],
    );
    let found = w.first("loop_found", Duration::from_secs(10));
    // fx-tokio-current runs its loop on the main thread: PID 1 inside, the
    // host pid outside.
    assert_eq!(found["tid"], fx.pid, "{found}");
    fx.ok("block main 1500");
    let hang = w.wait_for("hang_started", Duration::from_secs(10));
    assert_eq!(hang["tid"], fx.pid, "{hang}");
    let written = w.wait_for("dump_written", Duration::from_secs(10));
    assert!(
        written["culprit"]
            .as_str()
            .is_some_and(|c| c.contains("fixture_block_loop")),
        "{written}"
    );
    let text = std::fs::read_to_string(written["path"].as_str().expect("path")).expect("file");
    let first_thread = text
        .split("\n\n")
        .find(|b| b.starts_with("Thread "))
        .expect("a thread block");
    assert!(
        first_thread.starts_with(&format!("Thread {} ", fx.pid))
            && first_thread.contains("STALLED LOOP 'main'")
            && first_thread.contains("fixture_block_loop"),
        "{first_thread}"
    );
    assert!(
        text.contains("blocked in: aiodebug_fixtures::fixture_block_loop"),
        "{text}"
    );
    // file:line although the binary's path exists only inside the namespace.
    assert!(text.contains("fixtures/src/lib.rs:"), "{text}");
    let (code, seen) = w.finish(Duration::from_secs(10));
    assert_eq!(code, Some(1), "--exit-on-hang: {seen:#?}");

    // `dump` marks the same thread with its loop.
    let out = watch(&["dump", &fx.pid.to_string(), "--json"]);
    let d: Value = serde_json::from_slice(&out.stdout).expect("dump JSON");
    let first = &d["threads"][0];
    assert_eq!(first["tid"], fx.pid, "{first}");
    assert_eq!(first["event_loop"], "main", "{first}");
}
