//! Runtime-wide slow-poll hooks. They exist only when tokio is built with
//! `--cfg tokio_unstable`, so this file is empty in the default test run:
//! `scripts/check-tokio-unstable` runs it (with its own target directory).
#![cfg(tokio_unstable)]

use aiodebug::tokio::RuntimeBuilderExt;
use std::sync::Mutex;
use std::time::Duration;

static RECORDS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;
impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        if r.level() == log::Level::Warn && r.target() == "aiodebug::slow" {
            RECORDS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(r.args().to_string());
        }
    }
    fn flush(&self) {}
}

#[test]
fn every_task_of_the_runtime_is_watched() {
    static LOGGER: Capture = Capture;
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Warn);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .log_slow_polls(Duration::from_millis(40))
        .build()
        .expect("runtime");
    let (slow_id, slow_line, fast_id) = rt.block_on(async {
        // Plain tokio::spawn: no wrapper, the hooks alone see it.
        let slow = tokio::spawn(async {
            std::thread::sleep(Duration::from_millis(120));
        });
        let slow_line = line!() - 3;
        let fast = tokio::spawn(async { tokio::task::yield_now().await });
        let ids = (slow.id().to_string(), fast.id().to_string());
        slow.await.expect("slow");
        fast.await.expect("fast");
        (ids.0, slow_line, ids.1)
    });
    let records = RECORDS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let want = format!(
        "Executing task {slow_id} (spawned at {}:{slow_line}) took 0.",
        file!()
    );
    let slow: Vec<_> = records.iter().filter(|r| r.starts_with(&want)).collect();
    assert_eq!(slow.len(), 1, "want {want:?} once in {records:?}");
    assert!(
        !records
            .iter()
            .any(|r| r.contains(&format!("task {fast_id} "))),
        "fast task logged: {records:?}"
    );
}
