//! `watch --all`: one watcher for every heartbeat process of the host,
//! against real fixture processes started after it, StatsD on a real UDP
//! socket, SIGTERM at the end.
//!
//! The host is shared (other tests, other watchers): every test runs its
//! fixtures under a command name of its own and watches only that name
//! (`--match`), so it neither sees nor touches anybody else's processes.

mod support;

use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::watcher::Kid;
use support::{fixture_path, watch_bin, Fixture, Variant};

/// `watch --all --json` with its events (and when each arrived).
struct Fleet {
    child: Child,
    events: mpsc::Receiver<(Instant, Value)>,
    seen: Vec<(Instant, Value)>,
}

impl Fleet {
    fn start(dir: &Path, extra: &[&str]) -> Fleet {
        let mut child = Command::new(watch_bin())
            .args(["watch", "--all", "--json", "--output-dir"])
            .arg(dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start watch --all");
        let out = child.stdout.take().expect("stdout");
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("non-JSON line {line:?}: {e}"));
                if tx.send((Instant::now(), v)).is_err() {
                    break;
                }
            }
        });
        let mut f = Fleet {
            child,
            events,
            seen: Vec::new(),
        };
        f.wait_for(|v| v["event"] == "started", Duration::from_secs(10));
        f
    }

    fn wait_for(&mut self, pred: impl Fn(&Value) -> bool, timeout: Duration) -> (Instant, Value) {
        if let Some(hit) = self.seen.iter().find(|(_, v)| pred(v)) {
            return hit.clone();
        }
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(e) => {
                    self.seen.push(e.clone());
                    if pred(&e.1) {
                        return e;
                    }
                }
                Err(_) => panic!(
                    "no such event within {timeout:?}; seen {:#?}",
                    self.seen.iter().map(|e| &e.1).collect::<Vec<_>>()
                ),
            }
        }
    }

    /// Every event left, once the watch has exited: until its stdout ends.
    fn drain(&mut self) {
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(e) => self.seen.push(e),
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("the stdout of watch --all did not end within 5 s of its exit")
                }
            }
        }
    }

    fn of(&self, kind: &str) -> Vec<&Value> {
        self.seen
            .iter()
            .map(|(_, v)| v)
            .filter(|v| v["event"] == kind)
            .collect()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A copy of fixture `bin` named `name` (its command name), in `dir`.
fn renamed_fixture(bin: &str, dir: &Path, name: &str) -> PathBuf {
    let dst = dir.join(name);
    std::fs::copy(fixture_path(bin, Variant::Pie), &dst).expect("copy fixture");
    dst
}

/// A real UDP StatsD listener, read all the time on a thread of its own (a
/// socket left unread while twenty processes send lags drops packets).
struct Listener {
    addr: String,
    got: std::sync::Arc<std::sync::Mutex<String>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Listener {
    fn start() -> Listener {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let addr = sock.local_addr().expect("addr").to_string();
        let got = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (g, s) = (got.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    let mut g = g.lock().expect("lock");
                    g.push_str(&String::from_utf8_lossy(&buf[..n]));
                    g.push('\n');
                }
            }
        });
        Listener { addr, got, stop }
    }

    /// Everything received once `until` holds (or `timeout` passed).
    fn until(&self, timeout: Duration, until: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + timeout;
        loop {
            let got = self.got.lock().expect("lock").clone();
            if until(&got) || Instant::now() >= end {
                return got;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[test]
fn twenty_processes_started_later_one_hangs_only_it_gets_an_episode() {
    let bins = tempfile::tempdir().expect("tempdir");
    let out = tempfile::tempdir().expect("tempdir");
    // Our own command name: "fleet-<pid>" (at most 15 characters).
    let name = format!("fleet-{}", std::process::id() % 10_000_000);
    let exe = renamed_fixture("fx-tokio-current", bins.path(), &name);
    let statsd = Listener::start();
    let addr = statsd.addr.clone();
    let pattern = format!("^{name}$");
    let mut fleet = Fleet::start(
        out.path(),
        &[
            "--match",
            &pattern,
            "--statsd",
            &addr,
            "--tag",
            "env:test",
            "--dumps",
            "2",
            "--dump-gap",
            "0.3",
        ],
    );

    // Twenty processes, started after the watcher; each must be picked up
    // within a second of its READY (its loop registered and ticking).
    let mut fxs: Vec<Fixture> = Vec::new();
    let mut ready_at = Vec::new();
    for _ in 0..20 {
        let fx = Fixture::spawn_path(&exe, &[]);
        ready_at.push((fx.pid, Instant::now()));
        fxs.push(fx);
    }
    for &(pid, at) in &ready_at {
        let (found_at, v) = fleet.wait_for(
            |v| v["event"] == "process_found" && v["pid"] == pid,
            Duration::from_secs(10),
        );
        let after = found_at.saturating_duration_since(at);
        assert!(
            after < Duration::from_secs(1),
            "PID {pid} picked up {after:?} after READY: {v}"
        );
        assert_eq!(v["comm"], name.as_str());
        fleet.wait_for(
            |v| v["event"] == "loop_found" && v["pid"] == pid && v["loop"] == "main",
            Duration::from_secs(5),
        );
    }

    // Five exit meanwhile (two asked to, three killed): no error, and each
    // is seen gone.
    let mut exited = Vec::new();
    for _ in 0..2 {
        let fx = fxs.pop().expect("fixture");
        exited.push(fx.pid);
        assert!(fx.exit().success());
    }
    for _ in 0..3 {
        let fx = fxs.pop().expect("fixture");
        exited.push(fx.pid);
        drop(fx);
    }
    for pid in exited {
        fleet.wait_for(
            |v| v["event"] == "target_gone" && v["pid"] == pid,
            Duration::from_secs(10),
        );
    }

    // One hangs.
    let hung = fxs[7].pid;
    fxs[7].ok("block main 1500");
    let (_, hang) = fleet.wait_for(|v| v["event"] == "hang_started", Duration::from_secs(5));
    assert_eq!(hang["pid"], hung, "{hang}");
    let mut files = Vec::new();
    for _ in 0..2 {
        let (_, d) = fleet.wait_for(
            |v| {
                v["event"] == "dump_written"
                    && !files.contains(&v["path"].as_str().unwrap_or("").to_string())
            },
            Duration::from_secs(5),
        );
        assert_eq!(d["pid"], hung, "{d}");
        files.push(d["path"].as_str().expect("path").to_string());
    }
    fleet.wait_for(
        |v| v["event"] == "recovered" && v["pid"] == hung,
        Duration::from_secs(5),
    );
    // Its tags reach a real UDP listener: its hang counter, and the lags of
    // the others with theirs.
    let healthy = fxs[0].pid;
    let got = statsd.until(Duration::from_secs(10), |g| {
        g.lines()
            .any(|l| l.starts_with("aiodebug.hangs:1|c|#") && l.contains(&format!("pid:{hung}")))
            && g.contains(&format!("pid:{healthy}"))
    });
    let hang_line = got
        .lines()
        .find(|l| l.starts_with("aiodebug.hangs:1|c|#"))
        .unwrap_or_else(|| panic!("no hangs counter in {got}"));
    for tag in [
        format!("pid:{hung}"),
        format!("comm:{name}"),
        "loop:main".to_string(),
        "env:test".to_string(),
    ] {
        assert!(hang_line.contains(&tag), "{tag} missing in {hang_line}");
    }
    assert!(
        got.lines()
            .any(|l| l.starts_with("aiodebug.monitor_loop_lag:")
                && l.contains(&format!("pid:{healthy}"))),
        "{got}"
    );

    // Exactly one folder, the hung process's, with exactly its two files
    // (half a second more for a file that should not come: a fixed time, as
    // that nothing comes is what is tested).
    std::thread::sleep(Duration::from_millis(500));
    let dirs: Vec<String> = std::fs::read_dir(out.path())
        .expect("read out")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(dirs, [format!("{name}-{hung}")], "{dirs:?}");
    let inside: Vec<PathBuf> = std::fs::read_dir(out.path().join(&dirs[0]))
        .expect("read folder")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(inside.len(), 2, "{inside:?}");
    for f in &files {
        assert!(inside.contains(&PathBuf::from(f)), "{f} not in {inside:?}");
        let text = std::fs::read_to_string(f).expect("read dump");
        assert!(text.contains(&format!("pid:        {hung}")), "{text}");
        assert!(text.contains("STALLED LOOP 'main'"), "{text}");
    }

    // SIGTERM: a clean end, exit 0, nothing on stderr.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(fleet.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let end = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = fleet.child.try_wait().expect("wait") {
            break st;
        }
        assert!(Instant::now() < end, "watch --all did not end on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    fleet.drain();
    let mut stderr = String::new();
    if let Some(mut e) = fleet.child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    assert!(stderr.is_empty(), "stderr: {stderr}");
    assert_eq!(fleet.of("hang_started").len(), 1);
    assert!(fleet.of("warning").is_empty(), "{:#?}", fleet.of("warning"));
    assert_eq!(fleet.of("process_found").len(), 20);
    let last = &fleet.seen.last().expect("events").1;
    assert_eq!(last["event"], "finished", "{last}");
    assert_eq!(last["processes"], 20, "{last}");
}

#[test]
fn an_untraceable_process_is_reported_once() {
    // A heartbeat process we may not read: run as nobody, watched by a
    // watcher that dropped to another uid without capabilities.
    let bins = tempfile::tempdir().expect("tempdir");
    let out = tempfile::tempdir().expect("tempdir");
    let name = format!("flnr-{}", std::process::id() % 10_000_000);
    let exe = renamed_fixture("fx-thread-loop", bins.path(), &name);
    for p in [bins.path(), exe.as_path()] {
        let mut perm = std::fs::metadata(p).expect("meta").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(p, perm).expect("chmod");
    }
    let mut cmd = Command::new(&exe);
    std::os::unix::process::CommandExt::uid(&mut cmd, 65534);
    std::os::unix::process::CommandExt::gid(&mut cmd, 65534);
    let mut target = Kid(cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn as nobody"));
    // Its loop registered (READY) before the watch looks.
    let target_out = target.stdout.take().expect("stdout");
    let (tx, ready) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(target_out).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = ready
        .recv_timeout(support::TIMEOUT)
        .unwrap_or_else(|e| panic!("{} printed no READY ({e})", exe.display()));
    assert!(line.starts_with("READY "), "{line:?}");
    // The watcher runs as uid 1 (daemon): not the target's user, no
    // CAP_SYS_PTRACE. Its output directory must be writable by it.
    std::fs::set_permissions(
        out.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod out");
    let pattern = format!("^{name}$");
    let mut watcher = Command::new(watch_bin());
    watcher
        .args([
            "watch",
            "--all",
            "--json",
            "--match",
            &pattern,
            "--duration",
            "2.5",
        ])
        .arg("--output-dir")
        .arg(out.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::uid(&mut watcher, 1);
    std::os::unix::process::CommandExt::gid(&mut watcher, 1);
    let result = watcher.output().expect("run the watcher");
    let target_pid = target.id();
    drop(target);
    assert_eq!(result.status.code(), Some(0), "{result:?}");
    let events: Vec<Value> = String::from_utf8_lossy(&result.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    let refused: Vec<&Value> = events
        .iter()
        .filter(|v| v["event"] == "unwatchable" && v["pid"] == target_pid)
        .collect();
    assert_eq!(refused.len(), 1, "{events:#?}");
    let msg = refused[0]["message"].as_str().expect("message");
    assert!(msg.contains("CAP_SYS_PTRACE"), "{msg}");
}

#[test]
fn a_bad_regex_is_a_usage_error() {
    let out = Command::new(watch_bin())
        .args(["watch", "--all", "--match", "(unclosed"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid regex"));
    let out = Command::new(watch_bin())
        .args(["watch", "--match", "x", "123"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "--match needs --all");
    let out = Command::new(watch_bin())
        .args(["watch", "--all", "123"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "--all takes no PID");
}
