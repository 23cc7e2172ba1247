//! Slow-poll warnings through the `log` crate, seen by a captured logger: a
//! line for each slow poll, none for the others, in the ancestor's wording.

use aiodebug::slow::LogSlowExt;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

static RECORDS: Mutex<Vec<(log::Level, String, String)>> = Mutex::new(Vec::new());

struct Capture;
impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        RECORDS.lock().unwrap_or_else(|e| e.into_inner()).push((
            r.level(),
            r.target().to_string(),
            r.args().to_string(),
        ));
    }
    fn flush(&self) {}
}

fn install() {
    static LOGGER: Capture = Capture;
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Trace);
}

fn records_about(what: &str) -> Vec<(log::Level, String, String)> {
    RECORDS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(_, _, m)| m.contains(what))
        .cloned()
        .collect()
}

/// A future whose first poll blocks the thread for `ms`, then yields once.
async fn first_poll_blocks(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
    tokio::task::yield_now().await;
}

#[test]
fn named_spawns_log_only_their_slow_polls() {
    install();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let (slow_at, fast_at) = rt.block_on(async {
        let slow = aiodebug::tokio::spawn_named_with_threshold(
            "orders",
            Duration::from_millis(40),
            first_poll_blocks(120),
        );
        let slow_at = line!() - 5;
        let fast = aiodebug::tokio::spawn_named_with_threshold(
            "quick",
            Duration::from_millis(500),
            first_poll_blocks(1),
        );
        let fast_at = line!() - 5;
        slow.await.expect("slow task");
        fast.await.expect("fast task");
        (slow_at, fast_at)
    });
    let slow = records_about("'orders'");
    assert_eq!(slow.len(), 1, "one slow poll, one warning: {slow:?}");
    let (level, target, msg) = &slow[0];
    assert_eq!(*level, log::Level::Warn);
    assert_eq!(target, "aiodebug::slow");
    let want = format!(
        "Executing task 'orders' (spawned at {}:{slow_at}) took 0.",
        file!()
    );
    assert!(msg.starts_with(&want), "{msg:?} should start with {want:?}");
    let secs: f64 = msg
        .trim_start_matches(&want[..want.len() - 2])
        .trim_end_matches(" seconds")
        .parse()
        .unwrap_or_else(|e| panic!("seconds in {msg:?}: {e}"));
    assert!((0.115..5.0).contains(&secs), "{secs} s for a 120 ms poll");
    assert!(
        records_about("'quick'").is_empty(),
        "a fast task (spawned at line {fast_at}) must not be logged"
    );
}

#[test]
fn wrapped_futures_log_on_any_executor() {
    install();
    // No runtime at all: a hand-rolled executor polling on this thread.
    struct Noop;
    impl std::task::Wake for Noop {
        fn wake(self: std::sync::Arc<Self>) {}
    }
    let waker = std::task::Waker::from(std::sync::Arc::new(Noop));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut polls = 0;
    let fut = std::future::poll_fn(|cx| {
        polls += 1;
        if polls == 2 {
            std::thread::sleep(Duration::from_millis(60));
        }
        if polls < 3 {
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(polls)
        }
    });
    let mut fut = std::pin::pin!(fut.log_slow(Duration::from_millis(30)));
    let at = fut.location().line();
    let out = loop {
        if let std::task::Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            break v;
        }
    };
    assert_eq!(out, 3);
    let want = format!("Executing future (created at {}:{at}) took 0.", file!());
    let logged = records_about(&want);
    assert_eq!(
        logged.len(),
        1,
        "only the second of three polls is slow: {logged:?}"
    );
}
