//! `watch PID` on event loops that link nothing, judged by their own wait
//! system calls (perf tracepoint counters): Debian's python3 running an
//! asyncio loop whose callback blocks, redis-server blocked by `DEBUG SLEEP`
//! and flooded with PINGs, node with a busy timer callback. Every program is
//! the one its users run (Debian's packages); the tests start them, watch
//! them, and kill them on teardown.
//!
//! redis-server/redis-cli come from Debian's `redis-server` and
//! `redis-tools` (scripts/test installs them); a test whose program is
//! missing fails, it does not skip.

mod support;

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::watcher::{Kid, Watch};
use support::{watch_bin, workspace_root, Fixture, TempDir};

/// A StatsD listener on a free local UDP port (reads time out after 200 ms)
/// and its address.
fn statsd_listener() -> (std::net::UdpSocket, String) {
    let statsd = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    statsd
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let addr = statsd.local_addr().expect("addr").to_string();
    (statsd, addr)
}

/// Debian's interpreter, as its users have it.
fn debian_python() -> PathBuf {
    let p = PathBuf::from("/usr/bin/python3");
    assert!(p.exists(), "Debian's /usr/bin/python3 is missing");
    p
}

/// Checks one hang episode of the loop on thread `tid`: HANG event naming
/// it, three snapshots with it first and marked, the culprit `culprit`
/// named, then its recovery.
fn one_episode(w: &mut Watch, tid: i32, culprit: &str) {
    let h = w.wait_for("hang_started", Duration::from_secs(15));
    assert_eq!(h["tid"], tid, "{h}");
    assert_eq!(h["scope"], "loop", "{h}");
    let d = w.wait_for("dump_written", Duration::from_secs(10));
    let c = d["culprit"].as_str().unwrap_or_default();
    assert!(
        c.contains(culprit),
        "culprit {c:?} should name {culprit}: {d}"
    );
    let text = std::fs::read_to_string(d["path"].as_str().expect("path")).expect("dump file");
    let first_thread = text
        .lines()
        .find(|l| l.starts_with("Thread "))
        .unwrap_or_default();
    assert!(
        first_thread.starts_with(&format!("Thread {tid} "))
            && first_thread.contains("<== STALLED LOOP"),
        "the loop thread first and marked: {first_thread:?}\n{text}"
    );
    assert!(text.contains(culprit), "{text}");
    let r = w.wait_for("recovered", Duration::from_secs(15));
    assert_eq!(r["tid"], tid, "{r}");
    assert!(r["hang_ms"].as_f64().unwrap_or(0.0) > 250.0, "{r}");
    while w
        .seen
        .iter()
        .filter(|v| v["event"] == "dump_written")
        .count()
        % 3
        != 0
    {
        w.wait_for("dump_written", Duration::from_secs(10));
    }
}

#[test]
fn python_asyncio_loop_blocked_by_a_sleep_then_by_a_spin() {
    let dir = TempDir::new("sl-py");
    let script = workspace_root().join("fixtures/python/syscall_loop.py");
    let mut fx = Fixture::spawn_path(&debian_python(), &[script.to_string_lossy().into_owned()]);
    let mut w = Watch::start(fx.pid, &dir, &["--dump-gap", "0.3"]);
    let started = w.wait_for("started", Duration::from_secs(20));
    assert_eq!(started["mode"], "syscalls", "{started}");
    let found = w.wait_for("loop_found", Duration::from_secs(20));
    assert_eq!(
        found["tid"], fx.pid,
        "the main thread runs the loop: {found}"
    );
    assert_eq!(found["source"], "syscalls", "{found}");
    assert_eq!(found["call"], "epoll_wait", "{found}");
    assert!(found["why"]
        .as_str()
        .unwrap_or_default()
        .contains("epoll_wait"));
    fx.ok("sleep 1.5");
    one_episode(&mut w, fx.pid, "blocking_sleep");
    fx.ok("spin 1.5");
    one_episode(&mut w, fx.pid, "blocking_spin");
    assert_eq!(w.count("hang_started"), 2, "{:#?}", w.seen);
}

#[test]
fn an_idle_loop_blocked_in_epoll_wait_without_timeout_is_no_hang() {
    let dir = TempDir::new("sl-idle");
    let script = workspace_root().join("fixtures/python/syscall_loop.py");
    let fx = Fixture::spawn_path(
        &debian_python(),
        &[script.to_string_lossy().into_owned(), "idle".into()],
    );
    let pid = fx.pid.to_string();
    // Named: an idle loop with nothing scheduled enters its wait call once
    // and stays there, so it is never found by itself.
    let mut w = Watch::start(
        fx.pid,
        &dir,
        &[
            "--loop-thread",
            &pid,
            "--interval",
            "0.1",
            "--duration",
            "2",
        ],
    );
    let found = w.wait_for("loop_found", Duration::from_secs(20));
    assert_eq!(found["forced"], true, "{found}");
    w.wait_for("finished", Duration::from_secs(20));
    assert_eq!(w.count("hang_started"), 0, "{:#?}", w.seen);
}

/// A free TCP port on 127.0.0.1 (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// redis-server on a free port, no persistence, DEBUG allowed; waits until
/// it answers PING.
fn start_redis(dir: &Path) -> (Kid, u16) {
    let port = free_port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--enable-debug-command",
            "yes",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
        ])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("redis-server (Debian's redis-server package)");
    let kid = Kid(child);
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut b = [0u8; 7];
            if s.write_all(b"PING\r\n").is_ok()
                && s.read_exact(&mut b).is_ok()
                && &b == b"+PONG\r\n"
            {
                return (kid, port);
            }
        }
        assert!(Instant::now() < end, "redis-server did not answer PING");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn redis_blocked_by_debug_sleep_is_one_episode_naming_debug_command() {
    let dir = TempDir::new("sl-redis");
    let (redis, port) = start_redis(&dir);
    let pid = redis.0.id() as i32;
    let mut w = Watch::start(pid, &dir, &["--dump-gap", "0.3"]);
    let found = w.wait_for("loop_found", Duration::from_secs(20));
    assert_eq!(
        found["tid"], pid,
        "redis's main thread runs the loop: {found}"
    );
    let cli = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "DEBUG", "SLEEP", "2"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("redis-cli (Debian's redis-tools)");
    let cli = Kid(cli);
    one_episode(&mut w, pid, "debugCommand");
    drop(cli);
    w.collect_for(Duration::from_millis(500));
    assert_eq!(w.count("hang_started"), 1, "{:#?}", w.seen);
}

#[test]
fn redis_answering_a_ping_flood_has_no_episode() {
    let dir = TempDir::new("sl-flood");
    let (redis, port) = start_redis(&dir);
    let pid = redis.0.id() as i32;
    let mut w = Watch::start(pid, &dir, &["--interval", "0.25"]);
    w.wait_for("loop_found", Duration::from_secs(20));
    // Four clients pinging as fast as redis answers, for 10 s.
    let end = Instant::now() + Duration::from_secs(10);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                let mut r = BufReader::new(s.try_clone().expect("clone"));
                let mut n = 0u64;
                let mut line = String::new();
                while Instant::now() < end {
                    s.write_all(b"PING\r\n").expect("write");
                    line.clear();
                    r.read_line(&mut line).expect("PONG");
                    n += 1;
                }
                n
            })
        })
        .collect();
    let pings: u64 = clients.into_iter().map(|c| c.join().expect("client")).sum();
    w.collect_for(Duration::from_millis(500));
    assert!(pings > 1000, "the flood ran: {pings} PINGs");
    assert_eq!(w.count("hang_started"), 0, "{:#?}", w.seen);
}

#[test]
fn node_busy_timer_callback_is_caught() {
    let dir = TempDir::new("sl-node");
    let script = dir.join("busy.js");
    std::fs::write(
        &script,
        "function busyCallback(ms) { const end = Date.now() + ms; while (Date.now() < end) {} }\n\
         let n = 0;\n\
         function tick() { n++; if (n % 400 === 0) busyCallback(2000); setTimeout(tick, 10); }\n\
         console.log('READY pid=' + process.pid);\n\
         setTimeout(tick, 10);\n",
    )
    .expect("write busy.js");
    let mut child = Command::new("node")
        .arg(&script)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("READY");
    let node = Kid(child);
    let pid = node.0.id() as i32;
    let mut w = Watch::start(pid, &dir, &["--dump-gap", "0.3"]);
    // Node's main thread runs the loop (its platform's delayed-task thread
    // runs a libuv loop of its own: another loop thread, idle).
    while w.wait_for("loop_found", Duration::from_secs(20))["tid"] != pid {}
    let h = w.wait_for("hang_started", Duration::from_secs(20));
    assert_eq!(h["tid"], pid, "{h}");
    let r = w.wait_for("recovered", Duration::from_secs(15));
    assert_eq!(r["tid"], pid, "{r}");
    assert!(r["hang_ms"].as_f64().unwrap_or(0.0) > 1000.0, "{r}");
}

#[test]
fn a_slow_iteration_is_warned_with_its_frame_and_sent_as_loop_busy() {
    let dir = TempDir::new("sl-slow");
    let (statsd, addr) = statsd_listener();
    let script = workspace_root().join("fixtures/python/syscall_loop.py");
    let mut fx = Fixture::spawn_path(&debian_python(), &[script.to_string_lossy().into_owned()]);
    let mut w = Watch::start(
        fx.pid,
        &dir,
        &["--interval", "2", "--slow", "0.1", "--statsd", &addr],
    );
    w.wait_for("loop_found", Duration::from_secs(20));
    fx.ok("sleep 0.5");
    // Under load other iterations may be slow too: find ours by its frame.
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let s = w.wait_for("slow_tick", end.saturating_duration_since(Instant::now()));
        if s["frames"]
            .as_str()
            .unwrap_or_default()
            .contains("blocking_sleep")
        {
            assert!(s["blocked_ms"].as_f64().unwrap_or(0.0) >= 400.0, "{s}");
            break;
        }
    }
    // The StatsD socket is buffered (flushed when full and at exit): end
    // the watch cleanly, then read what it sent.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(w.child.0.id() as i32),
        nix::sys::signal::SIGTERM,
    );
    w.wait_for("finished", Duration::from_secs(10));
    let mut buf = [0u8; 2048];
    let end = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    while Instant::now() < end {
        if let Ok(n) = statsd.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            got.extend(text.lines().map(str::to_string));
            let busy = got.iter().filter_map(|l| {
                l.strip_prefix("aiodebug.loop_busy:")?
                    .split('|')
                    .next()?
                    .parse::<u64>()
                    .ok()
            });
            if busy.clone().any(|ms| ms >= 400) {
                assert_eq!(w.count("hang_started"), 0, "{:#?}", w.seen);
                return;
            }
        }
    }
    panic!("no loop_busy ≥ 400 ms among {got:#?}");
}

#[test]
fn without_privileges_the_error_names_perf_event_paranoid_and_dump_still_works() {
    // An unprivileged user (nobody) watching its own process.
    let as_nobody = ["--reuid=65534", "--regid=65534", "--clear-groups"];
    let sleeper = Command::new("setpriv")
        .args(as_nobody)
        .args(["sleep", "60"])
        .spawn()
        .expect("setpriv (util-linux)");
    let sleeper = Kid(sleeper);
    let pid = sleeper.0.id().to_string();
    // setpriv execs sleep in the same process: wait until it runs as nobody.
    let end = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .contains("Uid:\t65534")
    {
        assert!(Instant::now() < end, "sleep never ran as nobody");
        std::thread::sleep(Duration::from_millis(20));
    }
    let run = |args: &[&str]| {
        Command::new("setpriv")
            .args(as_nobody)
            .arg(watch_bin())
            .args(args)
            .stdin(Stdio::null())
            .current_dir("/tmp")
            .output()
            .expect("run watch as nobody")
    };
    let out = run(&["watch", &pid, "--output-dir", "/tmp", "--duration", "5"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("perf_event_paranoid"), "{err}");
    assert!(err.contains("CAP_PERFMON"), "{err}");
    assert!(err.contains("`dump` still works"), "{err}");
    // `status` of a process with no heartbeat samples its wait calls: the
    // same refusal, the same exit code.
    let out = run(&["status", &pid, "--sample", "0.1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("perf_event_paranoid"), "{err}");
    let out = run(&["dump", &pid]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("nanosleep"), "{text}");
}

#[test]
fn a_loop_thread_started_later_is_picked_up_and_its_hang_marks_it() {
    let dir = TempDir::new("sl-later");
    let script = workspace_root().join("fixtures/python/syscall_loop.py");
    let mut fx = Fixture::spawn_path(&debian_python(), &[script.to_string_lossy().into_owned()]);
    let mut w = Watch::start(fx.pid, &dir, &["--dump-gap", "0.3"]);
    let first = w.wait_for("loop_found", Duration::from_secs(20));
    assert_eq!(first["tid"], fx.pid, "{first}");
    let answer = fx.ok("newloop");
    let tid: i32 = answer
        .strip_prefix("OK tid=")
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("no tid in {answer:?}"));
    let found = w.wait_for("loop_found", Duration::from_secs(20));
    assert_eq!(found["tid"], tid, "the new thread's loop: {found}");
    fx.ok("blockthread 1.5");
    one_episode(&mut w, tid, "blocking_sleep");
    assert_eq!(
        w.count("hang_started"),
        1,
        "the main loop kept ticking: {:#?}",
        w.seen
    );
}

/// `fx-tokio-plain` (a tokio multi-thread service linking nothing) and its
/// port.
fn start_tokio_plain() -> (Fixture, u16) {
    let fx = Fixture::spawn("fx-tokio-plain", support::Variant::Pie, &[]);
    let port = fx
        .ready_field("port")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {:?}", fx.ready));
    (fx, port)
}

/// One request line on `s`, its answer.
fn ask(s: &mut TcpStream, r: &mut BufReader<TcpStream>, line: &str) -> String {
    s.write_all(format!("{line}\n").as_bytes()).expect("write");
    let mut a = String::new();
    r.read_line(&mut a).expect("answer");
    a.trim().to_string()
}

/// Two clients pinging every 5 ms until `until`; the pings answered.
fn light_load(port: u16, until: Instant) -> u64 {
    let clients: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                let mut r = BufReader::new(s.try_clone().expect("clone"));
                let mut n = 0u64;
                while Instant::now() < until {
                    assert_eq!(ask(&mut s, &mut r, "ping"), "pong");
                    n += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
                n
            })
        })
        .collect();
    clients.into_iter().map(|c| c.join().expect("client")).sum()
}

/// Workers of a tokio multi-thread runtime take turns in `epoll_wait` (each
/// becomes a loop thread) and park on a futex when idle: parked, not hung.
#[test]
fn a_plain_tokio_service_idle_and_under_light_load_has_no_episode() {
    let dir = TempDir::new("sl-tokio");
    let (fx, port) = start_tokio_plain();
    let mut w = Watch::start(fx.pid, &dir, &["--interval", "0.25", "--duration", "6"]);
    let started = w.wait_for("started", Duration::from_secs(20));
    assert_eq!(started["mode"], "syscalls", "no heartbeat: {started}");
    // Idle 1.5 s, light load 2.5 s, idle again until the end.
    std::thread::sleep(Duration::from_millis(1500));
    let pings = light_load(port, Instant::now() + Duration::from_millis(2500));
    assert!(pings > 100, "the load ran: {pings} pings");
    w.wait_for("finished", Duration::from_secs(20));
    assert!(w.count("loop_found") >= 1, "{:#?}", w.seen);
    assert_eq!(w.count("hang_started"), 0, "{:#?}", w.seen);
}

/// A handler that calls `std::thread::sleep` blocks its worker in
/// `clock_nanosleep`, not in a futex: once that worker is a loop thread
/// (it took its turn in `epoll_wait`), the blocked worker is a hang.
#[test]
fn a_plain_tokio_service_whose_handler_sleeps_2_s_is_caught_on_that_worker() {
    let dir = TempDir::new("sl-tokio-sleep");
    let (fx, port) = start_tokio_plain();
    let mut w = Watch::start(fx.pid, &dir, &["--interval", "0.25", "--dump-gap", "0.3"]);
    w.wait_for("started", Duration::from_secs(20));
    // Load first, so every worker has driven the IO and is a loop thread.
    light_load(port, Instant::now() + Duration::from_millis(1500));
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let answer = std::thread::spawn(move || ask(&mut s, &mut r, "sleep 2000"));
    let h = w.wait_for("hang_started", Duration::from_secs(15));
    let tid = h["tid"].as_i64().unwrap_or_default() as i32;
    let d = w.wait_for("dump_written", Duration::from_secs(10));
    let text = std::fs::read_to_string(d["path"].as_str().expect("path")).expect("dump file");
    let first_thread = text
        .lines()
        .find(|l| l.starts_with("Thread "))
        .unwrap_or_default();
    assert!(
        first_thread.starts_with(&format!("Thread {tid} "))
            && first_thread.contains("<== STALLED LOOP"),
        "the blocked worker first and marked: {first_thread:?}\n{text}"
    );
    // The culprit is the handler's helper, or the handler itself when the
    // optimizer folded the helper into it (both seen), inside std's sleep.
    let c = d["culprit"].as_str().unwrap_or_default();
    assert!(
        c.starts_with("fx_tokio_plain::blocking_handler (")
            || c.starts_with("fx_tokio_plain::serve_conn::{{closure}} ("),
        "{d}"
    );
    assert!(c.contains("inside std::thread"), "{d}");
    assert!(text.contains("clock_nanosleep"), "{text}");
    let r = w.wait_for("recovered", Duration::from_secs(15));
    assert_eq!(r["tid"], tid, "{r}");
    assert!(r["hang_ms"].as_f64().unwrap_or(0.0) > 1000.0, "{r}");
    assert_eq!(answer.join().expect("client"), "slept");
    w.collect_for(Duration::from_millis(500));
    assert_eq!(w.count("hang_started"), 1, "{:#?}", w.seen);
}

/// asyncio's default executor runs `getaddrinfo` and blocking socket calls
/// (which poll) on pool threads that then wait for work on a futex while the
/// main loop idles in `epoll_wait`: parked, no episode; then the main loop blocks in `time.sleep`: caught,
/// the main thread marked (the parked executor threads are not).
#[test]
fn python_executor_threads_after_getaddrinfo_are_parked_and_the_main_loop_hang_is_caught() {
    let dir = TempDir::new("sl-py-pool");
    let script = workspace_root().join("fixtures/python/syscall_loop.py");
    let mut fx = Fixture::spawn_path(&debian_python(), &[script.to_string_lossy().into_owned()]);
    let mut w = Watch::start(fx.pid, &dir, &["--interval", "0.25", "--dump-gap", "0.3"]);
    let found = w.wait_for("loop_found", Duration::from_secs(20));
    assert_eq!(found["tid"], fx.pid, "{found}");
    // getaddrinfo('localhost') reads /etc/hosts (no poll); the fetches
    // poll on their sockets, so those executor threads are loop threads.
    assert_eq!(fx.ok("resolve 5"), "OK");
    assert_eq!(fx.ok("fetch 20"), "OK");
    w.collect_for(Duration::from_secs(3));
    let pool: Vec<&Value> = w
        .seen
        .iter()
        .filter(|v| v["event"] == "loop_found" && v["tid"] != fx.pid)
        .collect();
    assert!(
        pool.iter().any(|v| v["call"] == "poll"),
        "an executor thread found by its polls: {:#?}",
        w.seen
    );
    assert!(w.count("loop_parked") >= 1, "{:#?}", w.seen);
    assert_eq!(w.count("hang_started"), 0, "{:#?}", w.seen);
    fx.ok("sleep 2");
    one_episode(&mut w, fx.pid, "blocking_sleep");
    w.collect_for(Duration::from_millis(500));
    assert_eq!(w.count("hang_started"), 1, "{:#?}", w.seen);
}

/// The asyncio fixture with no ticker, every iteration made busy for `ms`
/// ms (`burnloop`): a loop whose busy time is known.
fn burning_python(ms: u32) -> Fixture {
    let script = workspace_root().join("fixtures/python/syscall_loop.py");
    let mut fx = Fixture::spawn_path(
        &debian_python(),
        &[script.to_string_lossy().into_owned(), "idle".into()],
    );
    fx.ok(&format!("burnloop {ms}"));
    fx
}

/// `status PID --json` (extra arguments after), its JSON lines.
fn status_json(pid: i32, extra: &[&str]) -> (Option<i32>, Vec<Value>, String) {
    let out = Command::new(watch_bin())
        .args(["status", &pid.to_string(), "--json"])
        .args(extra)
        .output()
        .expect("run status");
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    (
        out.status.code(),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn status_without_a_heartbeat_gives_the_busy_percentiles_of_a_python_loop() {
    // Every iteration computes 50 ms (wall clock: load stretches it only
    // when the loop is preempted at its very end).
    let fx = burning_python(50);
    let (code, lines, err) = status_json(fx.pid, &["--sample", "2"]);
    assert_eq!(code, Some(0), "{err}{lines:#?}");
    let lp = lines
        .iter()
        .find(|v| v["event"] == "loop" && v["tid"] == fx.pid)
        .unwrap_or_else(|| panic!("no row for the main thread: {lines:#?}"));
    assert_eq!(lp["source"], "syscalls", "{lp}");
    assert_eq!(lp["call"], "epoll_wait", "{lp}");
    assert_eq!(lp["sampled"], true, "{lp}");
    let f = |k: &str| lp[k].as_f64().unwrap_or_else(|| panic!("{k}: {lp}"));
    // 2 s of 50 ms iterations: at most 40 (plus the one in progress).
    assert!((10.0..=21.0).contains(&f("iterations_per_s")), "{lp}");
    assert!(lp["timed"].as_u64().unwrap_or(0) >= 10, "{lp}");
    let p50 = f("p50_ms");
    assert!(
        (48.0..=90.0).contains(&p50),
        "p50 {p50} ms for 50 ms iterations: {lp}"
    );
    assert!(f("max_ms") >= p50 && f("p99_ms") >= p50, "{lp}");
    let process = lines.last().expect("a process line");
    assert_eq!(process["event"], "process", "{process}");
    assert_eq!(process["loops"], 1, "{lines:#?}");
    // The text form: the row with its percentiles.
    let out = Command::new(watch_bin())
        .args(["status", &fx.pid.to_string(), "--sample", "0.5"])
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("no heartbeat; loop threads by their wait calls"),
        "{text}"
    );
    let row = text
        .lines()
        .find(|l| l.starts_with("python3 ") && l.contains(&format!(" {} ", fx.pid)))
        .unwrap_or_else(|| panic!("no row: {text}"));
    assert!(row.contains("epoll_wait") && row.contains("ms"), "{row}");
}

/// The `loop_busy` timings (value ms, sampling rate) among StatsD lines.
fn busy_timings(lines: &[String]) -> Vec<(u64, f64)> {
    lines
        .iter()
        .filter_map(|l| {
            let rest = l.strip_prefix("aiodebug.loop_busy:")?;
            let mut parts = rest.split('|');
            let ms = parts.next()?.parse().ok()?;
            let kind = parts.next()?;
            assert_eq!(kind, "ms", "{l}");
            let rate = parts
                .find_map(|p| p.strip_prefix('@'))
                .map_or(Some(1.0), |r| r.parse().ok())?;
            Some((ms, rate))
        })
        .collect()
}

#[test]
fn loop_busy_of_short_iterations_reaches_a_udp_listener_with_the_sampling_rate() {
    let dir = TempDir::new("sl-busy");
    let (statsd, addr) = statsd_listener();
    // 8 ms iterations, far shorter than a look (25 ms at --interval 0.25):
    // only the sampling windows can time them.
    let fx = burning_python(8);
    let mut w = Watch::start(
        fx.pid,
        &dir,
        &["--statsd", &addr, "--busy-sample", "0.2", "--duration", "4"],
    );
    w.wait_for("finished", Duration::from_secs(60));
    let mut buf = [0u8; 65536];
    let mut got = Vec::new();
    while let Ok(n) = statsd.recv(&mut buf) {
        got.extend(
            String::from_utf8_lossy(&buf[..n])
                .lines()
                .map(str::to_string),
        );
    }
    let all = busy_timings(&got);
    // Iterations a look sighted (out of epoll_wait, no entry since the
    // previous look) are timed by the counters, every one (no rate); the
    // others only in the sampling windows, with the window's rate: 0.2 of
    // the time, less what was not timed.
    let busy: Vec<(u64, f64)> = all.iter().copied().filter(|&(_, r)| r < 1.0).collect();
    assert!(busy.len() >= 5, "{got:#?}");
    for &(ms, rate) in &busy {
        assert!(rate > 0.0 && rate <= 0.2, "rate {rate}: {got:#?}");
        assert!(ms >= 7, "a sampled 8 ms iteration: {ms} ms");
    }
    // The counters' time is an upper bound: never below the 8 ms computed.
    for &(ms, _) in all.iter().filter(|&&(_, r)| r == 1.0) {
        assert!(ms >= 8, "a counted 8 ms iteration: {ms} ms");
    }
    assert!(busy.iter().any(|&(_, r)| r >= 0.19), "{busy:?}");
    let mut ms: Vec<u64> = busy.iter().map(|&(m, _)| m).collect();
    ms.sort_unstable();
    let p50 = ms[ms.len() / 2];
    assert!(
        (7..=24).contains(&p50),
        "p50 {p50} ms of 8 ms iterations: {ms:?}"
    );
    let summary = w.first("busy_summary", Duration::from_secs(1));
    assert!(
        summary["iterations"].as_u64().unwrap_or(0) >= 10,
        "{summary}"
    );
}

#[test]
fn a_loop_slow_at_every_iteration_is_warned_with_frames() {
    let dir = TempDir::new("sl-slow-sampled");
    // 30 ms iterations, --slow 0.02 (looks every 5 ms): each is slow and
    // captured while it lasts (frame); the sampling windows warn those the
    // watcher was too late for (no frame).
    let fx = burning_python(30);
    let mut w = Watch::start(
        fx.pid,
        &dir,
        &["--interval", "2", "--slow", "0.02", "--busy-sample", "0.5"],
    );
    w.wait_for("loop_found", Duration::from_secs(30));
    w.collect_for(Duration::from_secs(4));
    let slow: Vec<&Value> = w
        .seen
        .iter()
        .filter(|v| v["event"] == "slow_tick")
        .collect();
    assert!(slow.len() >= 3, "{:#?}", w.seen);
    for s in &slow {
        let b = s["blocked_ms"].as_f64().unwrap_or(0.0);
        assert!(b >= 20.0, "{s}");
    }
    let framed = slow.iter().any(|s| {
        s["frames"]
            .as_str()
            .unwrap_or_default()
            .contains("busy_iteration")
    });
    // Captured while they lasted (the frame); those the watcher was too
    // late for (busy taking the previous capture) may come sampled.
    assert!(framed, "{slow:#?}");
    assert_eq!(w.count("hang_started"), 0, "{:#?}", w.seen);
}

/// An asyncio service (Debian's python3, nothing linked) ticking every 10
/// ms whose `blocks N MS EVERY` command runs a callback that blocks the loop
/// in `time.sleep` for MS ms every EVERY ms, N times, then answers `OK`.
const BLOCKING_PY: &str = r#"
import asyncio, os, sys, time

def blocking_call(ms):
    time.sleep(ms / 1000.0)

async def main():
    loop = asyncio.get_running_loop()

    async def ticker():
        while True:
            await asyncio.sleep(0.01)

    loop.create_task(ticker())

    def on_stdin():
        line = sys.stdin.readline()
        if not line:
            loop.stop()
            return
        w = line.split()
        if w[:1] == ["blocks"]:
            left = [int(w[1])]
            ms, every = float(w[2]), float(w[3]) / 1000.0

            def block():
                blocking_call(ms)
                left[0] -= 1
                if left[0] > 0:
                    loop.call_later(every, block)
                else:
                    print("OK", flush=True)

            loop.call_later(every, block)
            return
        print("OK", flush=True)

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    print("READY pid=%d" % os.getpid(), flush=True)
    await asyncio.Event().wait()

try:
    asyncio.run(main())
except RuntimeError:
    pass
"#;

#[test]
fn every_blocked_iteration_past_slow_is_warned_with_its_frame() {
    let dir = TempDir::new("sl-slow-every");
    let script = dir.join("blocking.py");
    std::fs::write(&script, BLOCKING_PY).expect("write blocking.py");
    let mut fx = Fixture::spawn_path(&debian_python(), &[script.to_string_lossy().into_owned()]);
    let mut w = Watch::started(
        fx.pid,
        &dir,
        &["--interval", "1", "--slow", "0.02", "--busy-sample", "0"],
    );
    // 15 callbacks blocking 30 ms, 200 ms apart: answered after the last.
    const BLOCKS: usize = 15;
    fx.ok(&format!("blocks {BLOCKS} 30 200"));
    let ours = |w: &Watch| {
        w.seen
            .iter()
            .filter(|v| {
                v["event"] == "slow_tick"
                    && v["frames"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("blocking_call")
            })
            .count()
    };
    let end = Instant::now() + Duration::from_secs(20);
    while ours(&w) < BLOCKS {
        w.wait_for("slow_tick", end.saturating_duration_since(Instant::now()));
    }
    let slow: Vec<&Value> = w
        .seen
        .iter()
        .filter(|v| v["event"] == "slow_tick")
        .collect();
    for s in slow.iter().filter(|s| {
        s["frames"]
            .as_str()
            .unwrap_or_default()
            .contains("blocking_call")
    }) {
        // The frame was taken inside the sleep, the time an upper bound.
        let frames = s["frames"].as_str().unwrap_or_default();
        assert!(frames.contains("sleep"), "{s}");
        assert!(s["blocked_ms"].as_f64().unwrap_or(0.0) >= 30.0, "{s}");
        assert_eq!(s["tid"], fx.pid, "{s}");
    }
    // Every block warned once, each with its frame: none left to the
    // windows (off here) and none missed.
    assert_eq!(ours(&w), BLOCKS, "{slow:#?}");
    assert_eq!(w.count("hang_started"), 0, "{:#?}", w.seen);
}

/// The number of perf event descriptors process `pid` holds.
fn perf_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|l| l.to_string_lossy().contains("perf_event"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn status_samples_a_loop_thread_that_starts_after_the_first_phase() {
    let script = workspace_root().join("fixtures/python/syscall_loop.py");
    let mut fx = Fixture::spawn_path(
        &debian_python(),
        &[script.to_string_lossy().into_owned(), "idle".into()],
    );
    let status = Command::new(watch_bin())
        .args(["status", &fx.pid.to_string(), "--json", "--sample", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run status");
    let mut status = Kid(status);
    // The first phase counts every thread; then the idle main loop (inside
    // epoll_wait) is sampled: more perf descriptors. Only then does the
    // second loop start (it is not among the threads listed at the start
    // in any case: only a rescan can find it).
    let end = Instant::now() + Duration::from_secs(10);
    let mut counted = 0;
    loop {
        let n = perf_fds(status.id());
        if counted > 0 && n > counted {
            break;
        }
        if counted == 0 {
            counted = n;
        }
        assert!(
            Instant::now() < end,
            "status never began sampling ({n} perf fds)"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let answer = fx.ok("newloop");
    let tid: i32 = answer
        .strip_prefix("OK tid=")
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("no tid in {answer:?}"));
    let mut out = String::new();
    status
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("status output");
    let code = status.wait().expect("status exit").code();
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert_eq!(code, Some(0), "{lines:#?}");
    let lp = lines
        .iter()
        .find(|v| v["event"] == "loop" && v["tid"] == tid)
        .unwrap_or_else(|| panic!("no row for the late loop {tid}: {lines:#?}"));
    assert_eq!(lp["sampled"], true, "{lp}");
    // It ticks every 10 ms, entering epoll_wait about twice a tick (asyncio
    // rounds the timeout down to the millisecond, returns early, waits
    // again): ~200 iterations a second over its own part of the sample
    // (load stretches the sleeps, never shortens them).
    let per_s = lp["iterations_per_s"].as_f64().unwrap_or(0.0);
    assert!((50.0..=250.0).contains(&per_s), "{lp}");
    assert!(lp["timed"].as_u64().unwrap_or(0) >= 10, "{lp}");
    assert!(lp["p50_ms"].as_f64().is_some(), "{lp}");
}
