//! A tokio service using the companion crate's in-process features, and the
//! target of `src/watch/tests/companion.rs`.
//!
//! A multi-thread runtime with 2 workers and the monitor loop `workers`
//! (period 20 ms). It speaks the fixture protocol of `fixtures/src/lib.rs`:
//! one `READY pid=<pid> kind=companion-service loops=workers` line, then one
//! answer line per command on stdin; end of file exits.
//!
//! | command | effect |
//! | --- | --- |
//! | `block workers <ms>` | answers `OK`, then tasks `blocker-1` and `blocker-2` (spawned with `spawn_named`) take both workers for `ms`: the loop stalls |
//! | `stuck <ms>` | answers `OK line=<n>`, then task `orders`, spawned at line `n` of this file, blocks ONE worker for `ms` in a single poll: the loop keeps ticking on the other worker, the poll board shows the stuck worker |
//! | `poll <name> <ms> <threshold_ms>` | spawns task `<name>` whose first poll takes `ms`, waits until it finished, answers `OK line=<n>` |
//! | `churn-polls <ms>` | answers `OK`; two threads named `churn` mark polls as fast as they can for `ms` (every 64th held 10 ms, every 3rd with a nested poll): poll `id` is always task `task-<id>` at `src/f<id>.rs:<id % 1000000 + 1>`, so a reader can tell a torn entry |
//! | `ping` | `OK pong` |
//! | `exit` | `OK bye`, exits 0 |
//!
//! With `--log PATH`, every `log` record (the slow-poll warnings) is appended
//! to PATH as `LEVEL target: message`: the test's captured logger.
//!
//! Run it: `cargo run -p aiodebug --features tokio,log --example companion-service`.

use std::io::{BufRead, Write};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

/// A logger appending records to a file.
struct FileLogger(Mutex<std::fs::File>);

impl log::Log for FileLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        let mut f = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(
            f,
            "{} {}: {}",
            record.level(),
            record.target(),
            record.args()
        );
        let _ = f.flush();
    }
    fn flush(&self) {}
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        std::process::exit(0);
    }
}

fn die(why: &str) -> ! {
    eprintln!("companion-service: {why}");
    std::process::exit(2)
}

/// Blocks the calling worker (never inlined, so stack dumps name it).
#[inline(never)]
fn block_worker(ms: u64) {
    std::thread::sleep(Duration::from_millis(std::hint::black_box(ms)));
}

/// Spawns a named task and returns the line it is recorded as spawned at
/// (`#[track_caller]` passes the caller's location through to `spawn_named`).
#[track_caller]
fn spawn_at<F>(name: String, threshold: Duration, future: F) -> (u32, tokio::task::JoinHandle<()>)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let line = std::panic::Location::caller().line();
    (
        line,
        aiodebug::tokio::spawn_named_with_threshold(name, threshold, future),
    )
}

/// The label every churned poll `id` carries (see `churn-polls`).
fn churn_label(id: u64) -> aiodebug::polling::Label {
    let line = (id % 1_000_000 + 1) as u32;
    aiodebug::polling::Label::new(&format!("task-{id}"), &format!("src/f{id}.rs"), line)
}

/// Marks polls as fast as possible on this thread until `ms` have passed.
fn churn_polls(thread: u64, ms: u64) {
    use aiodebug::polling;
    let end = std::time::Instant::now() + Duration::from_millis(ms);
    let mut n = 0u64;
    while std::time::Instant::now() < end {
        n += 1;
        let id = n * 2 + thread;
        polling::begin(&churn_label(id), id);
        if n % 3 == 0 {
            let inner = id + (1 << 40);
            polling::begin(&churn_label(inner), inner);
            polling::end();
        }
        if n % 64 == 0 {
            std::thread::sleep(Duration::from_millis(10));
        }
        polling::end();
    }
}

/// A future whose first poll blocks for `ms`, then yields once.
async fn one_slow_poll(ms: u64) {
    block_worker(ms);
    tokio::task::yield_now().await;
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(path) = args
        .iter()
        .position(|a| a == "--log")
        .and_then(|i| args.get(i + 1))
    {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap_or_else(|e| die(&format!("open {path}: {e}")));
        log::set_boxed_logger(Box::new(FileLogger(Mutex::new(file))))
            .unwrap_or_else(|e| die(&format!("logger: {e}")));
        log::set_max_level(log::LevelFilter::Info);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("workers")
        .enable_time()
        .build()
        .unwrap_or_else(|e| die(&format!("runtime: {e}")));
    let handle = rt.handle().clone();
    let _monitor = {
        let _g = rt.enter();
        aiodebug::tokio::spawn_monitor("workers")
    };
    rt.block_on(async { tokio::time::sleep(Duration::from_millis(60)).await });
    say(&format!(
        "READY pid={} kind=companion-service loops=workers",
        std::process::id()
    ));
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        line.clear();
        match stdin.lock().read_line(&mut line) {
            Ok(0) | Err(_) => std::process::exit(0),
            Ok(_) => {}
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let num = |s: &str| {
            s.parse::<u64>()
                .map_err(|e| format!("bad number {s:?}: {e}"))
        };
        match words.as_slice() {
            ["block", "workers", ms] => match num(ms) {
                Ok(ms) => {
                    say("OK");
                    let barrier = Arc::new(Barrier::new(2));
                    for name in ["blocker-1", "blocker-2"] {
                        let b = barrier.clone();
                        let _g = handle.enter();
                        aiodebug::tokio::spawn_named(name, async move {
                            b.wait();
                            block_worker(ms);
                        });
                    }
                }
                Err(e) => say(&format!("ERR {e}")),
            },
            ["block", other, _] => say(&format!("ERR no loop named {other:?}")),
            ["stuck", ms] => match num(ms) {
                Ok(ms) => {
                    let _g = handle.enter();
                    let threshold = aiodebug::slow::DEFAULT_THRESHOLD;
                    let (line, _task) =
                        spawn_at("orders".into(), threshold, async move { block_worker(ms) });
                    say(&format!("OK line={line}"));
                }
                Err(e) => say(&format!("ERR {e}")),
            },
            ["poll", name, ms, threshold] => match (num(ms), num(threshold)) {
                (Ok(ms), Ok(t)) => {
                    let name = name.to_string();
                    let (line, done) = handle.block_on(async move {
                        let (line, task) =
                            spawn_at(name, Duration::from_millis(t), one_slow_poll(ms));
                        (line, task.await)
                    });
                    match done {
                        Ok(()) => say(&format!("OK line={line}")),
                        Err(e) => say(&format!("ERR task: {e}")),
                    }
                }
                (Err(e), _) | (_, Err(e)) => say(&format!("ERR {e}")),
            },
            ["churn-polls", ms] => match num(ms) {
                Ok(ms) => {
                    for k in 0..2 {
                        let spawned = std::thread::Builder::new()
                            .name("churn".into())
                            .spawn(move || churn_polls(k, ms));
                        if let Err(e) = spawned {
                            die(&format!("spawn: {e}"));
                        }
                    }
                    say("OK");
                }
                Err(e) => say(&format!("ERR {e}")),
            },
            ["ping"] => say("OK pong"),
            ["exit"] => {
                say("OK bye");
                std::process::exit(0)
            }
            _ => say(&format!("ERR unknown command {:?}", line.trim_end())),
        }
    }
}
