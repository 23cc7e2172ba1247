//! The default tokio runtime, as a service author builds it: the axum 0.8
//! service of `fixtures/tokio-service` (`#[tokio::main]` multi-thread and a
//! current_thread variant, the companion linked with the one line README.md
//! shows, `debug = "line-tables-only"`), built here with stable Rust and no
//! RUSTFLAGS, watched by `aiodebug-watch watch`.
//!
//! - one handler blocking one worker (sleeping, or computing) is a hang
//!   episode: the worker's own thread is marked (checked against the kernel:
//!   the thread in `clock_nanosleep`, or the one whose CPU time grew), the
//!   handler is named in the log line and the file, and a snapshot taken
//!   after the worker moved on says so;
//! - the same on a current_thread runtime;
//! - two handlers on two workers: with three workers, two episodes, each
//!   marking its own thread; with two (the whole runtime blocked), one loop
//!   hang marking both threads;
//! - under load (many short requests, some 20 ms polls, idle gaps between
//!   bursts) at `--interval 0.25`: no episode at all.

mod support;

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::watcher::Watch;
// One test at a time (`one_at_a_time`): each measures how a service
// behaves, and the load test alone keeps both cores of a small machine busy.
use support::{one_at_a_time, tokio_service_dir, Fixture, TempDir};

// ---------------------------------------------------------------------------
// The service, built once per test process.

/// A running shop: the fixture, and the port it serves on.
struct Shop {
    fx: Fixture,
    port: u16,
}

impl Shop {
    /// Starts `bin` (`shop` or `shop-current`) with `TOKIO_WORKER_THREADS`
    /// set when `workers` is given (a deployment setting, read by tokio).
    fn start(bin: &str, workers: Option<usize>) -> Shop {
        let path = tokio_service_dir().join(bin);
        let fx = match workers {
            // `env` execs the service: same pid.
            Some(n) => Fixture::spawn_path(
                Path::new("env"),
                &[
                    format!("TOKIO_WORKER_THREADS={n}"),
                    path.to_string_lossy().into_owned(),
                ],
            ),
            None => Fixture::spawn_path(&path, &[]),
        };
        let port = fx
            .ready_field("port")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {:?}", fx.ready));
        Shop { fx, port }
    }

    fn pid(&self) -> i32 {
        self.fx.pid
    }

    /// The threads inside a blocking handler now, as the service lists them.
    fn blocking(&mut self) -> Vec<u32> {
        let answer = self.fx.ok("blocking");
        answer
            .split_whitespace()
            .skip(2)
            .filter_map(|t| t.parse().ok())
            .collect()
    }

    /// Waits until `n` threads are inside a blocking handler at once, while
    /// `go_on()` holds (checked after each look: the request is still
    /// pending); those threads, or None.
    fn until_blocking(&mut self, n: usize, go_on: impl Fn() -> bool) -> Option<Vec<u32>> {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let now = self.blocking();
            if now.len() >= n {
                return Some(now);
            }
            if !go_on() || Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// GET `path` on a new connection, on a thread; the answer comes later.
    fn get_later(&self, path: &str) -> std::thread::JoinHandle<String> {
        self.get_later_on(self.connect(), path)
    }

    /// A new connection, used at once (a connection accepted long before its
    /// request is read by the worker whose task accepted it: when that
    /// worker is blocked, the request waits for it).
    fn connect(&self) -> TcpStream {
        TcpStream::connect(("127.0.0.1", self.port)).expect("connect to the shop")
    }

    /// GET `path` on `conn`, on a thread.
    fn get_later_on(&self, conn: TcpStream, path: &str) -> std::thread::JoinHandle<String> {
        let path = path.to_string();
        std::thread::spawn(move || get_on(conn, &path))
    }
}

/// One HTTP/1.1 GET with `Connection: close` on `s`; the body.
fn get_on(mut s: TcpStream, path: &str) -> String {
    // One write, one segment, as an HTTP client sends a small request.
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read the answer");
    assert!(out.starts_with("HTTP/1.1 200"), "{path}: {out}");
    out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string()
}

// ---------------------------------------------------------------------------
// The watch.

/// The dump files of `dir` in snapshot order, with their texts.
fn dumps(dir: &TempDir) -> Vec<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .expect("read the output directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().ends_with(".txt"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("read a dump file"))
        .collect()
}

fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}

/// The thread a handler ran on, from its answer (`... on thread 1234 ...`).
fn thread_of(answer: &str) -> u32 {
    answer
        .split(" on thread ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .filter(|&t| t != 0)
        .unwrap_or_else(|| panic!("no thread in the answer {answer:?}"))
}

/// When a sleeping handler slept (`... from 1700000000.123456 to ...`, Unix s).
fn slept_during(answer: &str) -> (f64, f64) {
    let num = |key: &str| -> f64 {
        answer
            .split(key)
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("no {key:?} in the answer {answer:?}"))
    };
    (num(" from "), num(" to "))
}

/// When a dump file's snapshot was taken (`taken:` line), Unix s.
fn taken_at(file: &str) -> f64 {
    let line = file
        .lines()
        .find_map(|l| l.strip_prefix("taken:"))
        .expect("a taken: line")
        .trim();
    chrono::DateTime::parse_from_str(line, "%Y-%m-%d %H:%M:%S%.f %z")
        .map(|t| t.timestamp_micros() as f64 / 1e6)
        .unwrap_or_else(|e| panic!("taken: {line:?}: {e}"))
}

/// The header of a dump file and its threads' first lines (for failure
/// messages: whole files are long).
fn head(f: &str) -> String {
    f.lines()
        .filter(|l| !l.starts_with("  ") && !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

fn headers(files: &[String]) -> Vec<String> {
    files.iter().map(|f| head(f)).collect()
}

/// The thread blocks of a dump file, each with its header line.
fn thread_blocks(text: &str) -> Vec<&str> {
    text.split("\n\n")
        .filter(|b| b.starts_with("Thread "))
        .collect()
}

fn block_tid(block: &str) -> u32 {
    block
        .split_whitespace()
        .nth(1)
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no tid in {block}"))
}

/// The marked threads of a dump file, in order.
fn marked(text: &str) -> Vec<u32> {
    thread_blocks(text)
        .into_iter()
        .filter(|b| b.lines().next().is_some_and(|l| l.contains("<== ")))
        .map(block_tid)
        .collect()
}

// ---------------------------------------------------------------------------
// One blocked worker.

/// Blocks one worker of `shop` with `path` (a handler that takes `ms`), runs
/// a watch through the episode, checks what every test of one blocked
/// worker checks, and returns (tid marked, events, files).
fn one_blocked_worker(shop: &Shop, path: &str, ms: u64) -> (u32, Vec<Value>, Vec<String>) {
    let dir = TempDir::new("tokio-one");
    let mut w = Watch::started(
        shop.pid(),
        &dir,
        &["--exit-on-hang", "--dump-gap", "0.5", "--interval", "0.25"],
    );
    // An idle service: the monitor is in its slow period, so the watcher's
    // kernel view must make up for it. (A fixed time: the idle service is
    // the scenario; the watch is ready since its `loop_found`.)
    std::thread::sleep(Duration::from_millis(600));
    let answer = shop.get_later(path);
    let started = Instant::now();
    // Caught when the watch decides (`hang_detected`, its HANG line), not
    // when its first snapshot is symbolized (`hang_started`): on a loaded
    // machine that takes a few hundred ms more, and how long is for the
    // benchmarks to say.
    w.wait_for("hang_detected", Duration::from_secs(10));
    let seen_after = started.elapsed();
    let stuck = w.wait_for("hang_started", Duration::from_secs(10));
    let (code, events) = w.finish(Duration::from_secs(15));
    assert_eq!(code, Some(1), "--exit-on-hang exits 1: {events:#?}");
    // The handler says which thread it blocked.
    let blocked = vec![thread_of(&answer.join().expect("the blocked request"))];
    assert!(
        seen_after < Duration::from_millis(ms),
        "caught while it lasted ({seen_after:?} of {ms} ms)"
    );
    // The thread that blocks: a stuck worker's own (scope "worker"), or the
    // first of those blocking the loop (its `tid` is the thread of its last
    // tick).
    let tid = stuck["blocking_tids"][0]
        .as_u64()
        .or_else(|| stuck["tid"].as_u64())
        .expect("tid") as u32;
    assert_eq!(
        blocked,
        vec![tid],
        "the thread marked ({tid}) is the one that blocks: {events:#?}"
    );
    // The HANG line is said at decision time (`hang_detected`), before the
    // first snapshot; `hang_started` follows with the same episode and its
    // cause.
    let order: Vec<&str> = events
        .iter()
        .filter_map(|e| e["event"].as_str())
        .filter(|k| k.starts_with("hang_"))
        .collect();
    assert_eq!(order, ["hang_detected", "hang_started"], "{events:#?}");
    let detected = of_kind(&events, "hang_detected")[0];
    for k in ["loop", "tid", "scope", "blocking_tids", "stall_ms"] {
        assert_eq!(detected[k], stuck[k], "{k}: {events:#?}");
    }
    assert!(detected.get("cause").is_none(), "{detected}");
    assert!(stuck["cause"].is_object(), "{stuck}");
    let files = dumps(&dir);
    assert_eq!(files.len(), 3, "{events:#?}");
    let first = &files[0];
    assert_eq!(marked(first), vec![tid], "{}", head(first));
    assert_eq!(
        block_tid(thread_blocks(first)[0]),
        tid,
        "marked thread first"
    );
    (tid, events, files)
}

/// The hang episodes of `events` of one scope (`"worker"`: one worker of a
/// runtime stuck in one poll; `"loop"`: the loop itself overdue).
fn hangs_of<'a>(events: &'a [Value], scope: &str) -> Vec<&'a Value> {
    of_kind(events, "hang_started")
        .into_iter()
        .filter(|e| e["scope"] == scope)
        .collect()
}

/// One episode, a hang like any loop's: of the stuck worker, or — when
/// tokio left the monitor task in the blocked worker's LIFO slot, where no
/// other worker may take it — of the loop itself. Either way the same
/// thread is marked; the mark it gets.
fn single_episode(events: &[Value]) -> &'static str {
    let hangs = of_kind(events, "hang_started");
    assert_eq!(hangs.len(), 1, "one episode: {events:#?}");
    match hangs[0]["scope"].as_str() {
        Some("worker") => "STALLED LOOP 'main' (one stuck worker)",
        Some("loop") => "STALLED LOOP 'main'",
        other => panic!("scope {other:?}: {events:#?}"),
    }
}

#[test]
fn a_sleeping_handler_on_one_worker_is_caught_marked_and_named() {
    let _serial = one_at_a_time();
    let shop = Shop::start("shop", Some(2));
    // 900 ms: the third snapshot (1 s after the first) comes after it.
    let (_, events, files) = one_blocked_worker(&shop, "/orders/sleep/900", 900);
    let mark = single_episode(&events);
    // Named in the log line and the file: the handler, inside the sleep.
    let written = of_kind(&events, "dump_written");
    let culprit = written[0]["culprit"].as_str().expect("a culprit");
    assert!(
        culprit.starts_with("shop::orders::sleep_handler::{async_fn#0} (")
            && culprit.contains("src/orders.rs:")
            && culprit.contains(", inside std::thread::"),
        "{culprit}"
    );
    let first = &files[0];
    assert!(
        first.contains(&format!("blocked in: {culprit}")),
        "{}",
        head(first)
    );
    assert!(first.contains(&format!("<== {mark}\n")), "{}", head(first));
    // The last snapshot was taken after the worker moved on: said so, and
    // no culprit.
    let last = &files[2];
    assert!(last.contains("taken after that"), "{}", head(last));
    assert!(!last.contains("blocked in:"), "{}", head(last));
    assert!(
        last.contains(&format!("<== was {mark} (recovered before this snapshot)")),
        "{}",
        head(last)
    );
    let recovered = of_kind(&events, "recovered");
    assert_eq!(recovered.len(), 1, "{events:#?}");
    assert_eq!(
        recovered[0]["scope"],
        of_kind(&events, "hang_started")[0]["scope"]
    );
}

#[test]
fn a_computing_handler_on_one_worker_is_caught_marked_and_named() {
    let _serial = one_at_a_time();
    let shop = Shop::start("shop", Some(2));
    let (_, events, files) = one_blocked_worker(&shop, "/orders/compute/1500", 1500);
    single_episode(&events);
    let culprit = of_kind(&events, "dump_written")[0]["culprit"]
        .as_str()
        .expect("a culprit")
        .to_string();
    assert!(
        culprit.starts_with("shop::orders::price_orders (") && culprit.contains("src/orders.rs:"),
        "{culprit}"
    );
    assert!(
        files[0].contains("blocked in: shop::orders::price_orders ("),
        "{}",
        files[0]
    );
}

#[test]
fn a_sleeping_handler_on_a_current_thread_runtime_hangs_the_loop() {
    let _serial = one_at_a_time();
    let shop = Shop::start("shop-current", None);
    let (tid, events, files) = one_blocked_worker(&shop, "/orders/sleep/1500", 1500);
    assert_eq!(
        tid,
        shop.pid() as u32,
        "the runtime runs on the main thread"
    );
    assert_eq!(hangs_of(&events, "loop").len(), 1, "{events:#?}");
    assert_eq!(of_kind(&events, "hang_started").len(), 1, "{events:#?}");
    let first = &files[0];
    assert!(
        first.contains("<== STALLED LOOP 'main'\n"),
        "{}",
        head(first)
    );
    assert!(
        first.contains("blocked in: shop::orders::sleep_handler::{async_fn#0} ("),
        "{}",
        head(first)
    );
}

// ---------------------------------------------------------------------------
// Two blocked workers.

/// A handler's sleep: its thread, from, to (Unix s).
type Sleep = (u32, f64, f64);

/// Blocks two workers of `shop` with sleeping handlers at once, each on a
/// connection of its own (the second sent once the first reports it
/// blocks), and watches until every episode is over. Whether tokio runs the
/// second while the first blocks is up to its scheduler (when no other
/// worker holds the I/O driver at that moment, the second request waits for
/// the first), so this tries up to eight rounds and keeps the first where
/// the service listed both handlers blocking at once, the second since
/// before the round's first snapshot (a worker that blocks after a loop's
/// hang was caught is part of that hang, which takes no more snapshots).
/// Returns the two sleeps, the events and snapshots of that round.
fn two_blocked_workers(shop: &mut Shop) -> (Vec<Sleep>, Vec<Value>, Vec<String>) {
    let dir = TempDir::new("tokio-two");
    let mut w = Watch::started(
        shop.pid(),
        &dir,
        &["--dump-gap", "0.3", "--interval", "0.5"],
    );
    for round in 0..8 {
        // An idle service before each round, as in `one_blocked_worker` (a
        // fixed time: the scenario; the previous round's episodes are over).
        std::thread::sleep(Duration::from_millis(600));
        let (files_before, events_before) = (dumps(&dir).len(), w.seen.len());
        let a = shop.get_later("/orders/sleep/2500");
        let first = shop.until_blocking(1, || !a.is_finished());
        let b = shop.get_later("/orders/sleep/1500");
        let both = first.and_then(|_| shop.until_blocking(2, || !a.is_finished()));
        let (a_answer, b_answer) = (
            a.join().expect("first request"),
            b.join().expect("second request"),
        );
        // Every episode of the round over: each recovered, with its three
        // snapshots written.
        let over = |seen: &[Value]| {
            let round = seen.get(events_before..).unwrap_or_default();
            let hangs = of_kind(round, "hang_started").len();
            hangs > 0
                && of_kind(round, "recovered").len() >= hangs
                && of_kind(round, "dump_written").len() >= 3 * hangs
        };
        // Not over in time: judged below like a round whose handlers did
        // not block at once.
        w.collect_until(Duration::from_secs(15), over);
        let sleeps: Vec<Sleep> = [&a_answer, &b_answer]
            .iter()
            .map(|a| {
                let (from, to) = slept_during(a);
                (thread_of(a), from, to)
            })
            .collect();
        let files = dumps(&dir).split_off(files_before);
        let b_in_time = files.first().is_some_and(|f| sleeps[1].1 < taken_at(f));
        if both.is_some() && b_in_time {
            return (sleeps, w.seen.split_off(events_before), files);
        }
        eprintln!(
            "round {round}: the two handlers did not block at once before the first snapshot \
             (listed at once: {both:?}; {sleeps:?}); again"
        );
    }
    panic!("tokio never ran the two handlers at once in eight rounds");
}

/// Every snapshot marks the threads sleeping in a handler when it was taken
/// (a worker's episode its worker, the loop's all of them) (by the handlers' own clocks; snapshots within 30 ms of a sleep's
/// start or end are not judged), names the handler for each, and between
/// them the snapshots mark both threads.
fn check_two(sleeps: &[Sleep], files: &[String]) {
    const MARGIN: f64 = 0.030;
    let mut all: Vec<u32> = Vec::new();
    let mut judged = 0;
    for f in files {
        let t = taken_at(f);
        if sleeps
            .iter()
            .any(|&(_, from, to)| (t - from).abs() < MARGIN || (t - to).abs() < MARGIN)
        {
            continue;
        }
        let mut sleeping: Vec<u32> = sleeps
            .iter()
            .filter(|&&(_, from, to)| from < t && t < to)
            .map(|&(tid, _, _)| tid)
            .collect();
        sleeping.sort_unstable();
        if f.contains("recovered before this snapshot") || sleeping.is_empty() {
            continue;
        }
        let mut m = marked(f);
        m.sort_unstable();
        if f.contains("\nworker:     thread ") {
            // A worker's episode marks that worker, which sleeps.
            assert!(
                m.len() == 1 && sleeping.contains(&m[0]),
                "the worker marked sleeps: {}",
                head(f)
            );
        } else {
            // The loop's marks every thread that holds it up.
            assert_eq!(
                m,
                sleeping,
                "the threads marked are those that sleep: {}",
                head(f)
            );
        }
        assert_eq!(
            f.matches("blocked in: shop::orders::sleep_handler").count(),
            m.len(),
            "{}",
            head(f)
        );
        judged += 1;
        all.extend(m);
    }
    all.sort_unstable();
    all.dedup();
    let mut both: Vec<u32> = sleeps.iter().map(|s| s.0).collect();
    both.sort_unstable();
    assert!(
        judged >= 2,
        "too few snapshots to judge: {:#?}",
        headers(files)
    );
    assert_eq!(all, both, "both blocking threads shown");
}

#[test]
fn two_handlers_on_two_of_three_workers_each_mark_their_own_thread() {
    let _serial = one_at_a_time();
    let mut shop = Shop::start("shop", Some(3));
    let (sleeps, events, files) = two_blocked_workers(&mut shop);
    // The third worker keeps the loop ticking: an episode per worker (unless
    // tokio left the monitor in a blocked worker's LIFO slot: then the
    // loop's episode, marked the same way).
    assert!(files.len() >= 3, "{events:#?}");
    check_two(&sleeps, &files);
}

#[test]
fn two_handlers_on_both_workers_hang_the_loop_and_both_threads_are_marked() {
    let _serial = one_at_a_time();
    let mut shop = Shop::start("shop", Some(2));
    let (sleeps, events, files) = two_blocked_workers(&mut shop);
    // With both blocked the loop cannot tick: one hang for the loop, or each
    // blocked thread in an episode of its own; every snapshot marks the
    // threads that sleep at that moment (both, when both do).
    let loop_hangs = hangs_of(&events, "loop").len();
    let worker_hangs = hangs_of(&events, "worker").len();
    assert!(
        loop_hangs <= 1 && loop_hangs + worker_hangs >= 1,
        "{events:#?}"
    );
    check_two(&sleeps, &files);
}

// ---------------------------------------------------------------------------
// Load: no false alarm.

#[test]
fn many_short_requests_and_some_20_ms_polls_give_no_episode() {
    let _serial = one_at_a_time();
    let shop = Shop::start("shop", None);
    let dir = TempDir::new("tokio-load");
    let secs = 60;
    let w = Watch::started(
        shop.pid(),
        &dir,
        &["--interval", "0.25", "--duration", &secs.to_string()],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let short = Arc::new(AtomicU64::new(0));
    let slow = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let clients: Vec<_> = (0..6)
        .map(|c| {
            let (stop, short, slow) = (stop.clone(), short.clone(), slow.clone());
            let port = shop.port;
            std::thread::spawn(move || load_client(port, c, started, &stop, &short, &slow))
        })
        .collect();
    let (code, events) = w.finish(Duration::from_secs(secs + 30));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("load client");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (short, slow) = (short.load(Ordering::Relaxed), slow.load(Ordering::Relaxed));
    eprintln!(
        "load: {short} short requests ({:.0}/s), {slow} with a 20 ms poll, in {elapsed:.1} s",
        short as f64 / elapsed
    );
    assert_eq!(code, Some(0), "{events:#?}");
    for kind in ["hang_started", "dump_written", "slow_tick"] {
        assert_eq!(of_kind(&events, kind), Vec::<&Value>::new(), "no {kind}");
    }
    assert!(dumps(&dir).is_empty());
    assert!(
        short as f64 / elapsed > 1000.0,
        "the load was real: {short} requests"
    );
    assert!(slow > 100, "and had 20 ms polls: {slow}");
    // The watch saw the loop ticking all along.
    assert!(!of_kind(&events, "lag_summary").is_empty());
}

/// One keep-alive connection: short requests, every 25th a 20 ms poll;
/// 9 s of load, then 1 s of silence (all clients at once: the runtime parks
/// and its monitor slows down), again and again.
fn load_client(
    port: u16,
    id: u64,
    started: Instant,
    stop: &AtomicBool,
    short: &AtomicU64,
    slow: &AtomicU64,
) {
    let mut conn = BufReader::new(TcpStream::connect(("127.0.0.1", port)).expect("connect"));
    let mut n = id;
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        if started.elapsed().as_millis() % 10_000 >= 9_000 {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        n += 1;
        let path = if n % 25 == 0 {
            "/orders/compute/20"
        } else {
            "/ping"
        };
        let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        if conn.get_mut().write_all(req.as_bytes()).is_err() {
            return;
        }
        // Headers, then a body of Content-Length bytes.
        let mut len = 0usize;
        loop {
            line.clear();
            match conn.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0u8; len];
        if conn.read_exact(&mut body).is_err() {
            return;
        }
        if path == "/ping" {
            short.fetch_add(1, Ordering::Relaxed);
        } else {
            slow.fetch_add(1, Ordering::Relaxed);
        }
    }
}
