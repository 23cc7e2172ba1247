//! What the dilated runtime's driver costs (`cargo bench -p aiodebug --bench
//! dilation`): the CPU an idle runtime uses, the dilated one next to a plain
//! `current_thread` runtime doing the same thing.
//!
//! Each runtime waits in one `tokio::time::sleep` long enough for `WINDOW` of
//! real time, so the figures are the driver's overhead alone (a busy
//! runtime pays the same ticks on top of its own work). CPU is the run time
//! of every thread of this process (`/proc/self/task/*/schedstat`, which
//! counts the ticker's thread and the runtime's, in nanoseconds) over the
//! window; wake-ups are the runtime thread's parks (tokio's
//! `worker_park_count`). Each figure is the median of `RUNS` windows; the
//! spread is the lowest and highest.

use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_millis(1500);
const RUNS: usize = 5;

/// Run time of every thread of this process so far.
fn cpu() -> Duration {
    let mut ns = 0u64;
    let tasks = std::fs::read_dir("/proc/self/task").expect("/proc/self/task");
    for task in tasks.flatten() {
        let path = task.path().join("schedstat");
        // A thread may exit between the listing and the read.
        if let Ok(text) = std::fs::read_to_string(path) {
            ns += text
                .split_whitespace()
                .next()
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(ns)
}

struct Window {
    cpu: Duration,
    real: Duration,
    parks: u64,
}

fn window(rt: &tokio::runtime::Runtime, dilation: f64) -> Window {
    let virtual_sleep = Duration::from_secs_f64(WINDOW.as_secs_f64() * dilation);
    let parks0 = rt.metrics().worker_park_count(0);
    let (cpu0, real0) = (cpu(), Instant::now());
    rt.block_on(async { tokio::time::sleep(virtual_sleep).await });
    let (cpu1, real) = (cpu(), real0.elapsed());
    Window {
        cpu: cpu1 - cpu0,
        real,
        parks: rt.metrics().worker_park_count(0) - parks0,
    }
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn report(name: &str, dilation: f64, make: impl Fn() -> tokio::runtime::Runtime) {
    aiodebug::testing::set_dilation(dilation);
    let rt = make();
    // Settle: the first window pays for thread start-up.
    let _ = window(&rt, dilation);
    let runs: Vec<Window> = (0..RUNS).map(|_| window(&rt, dilation)).collect();
    let share = median(
        runs.iter()
            .map(|w| 100.0 * w.cpu.as_secs_f64() / w.real.as_secs_f64())
            .collect(),
    );
    let per_virtual_s = median(
        runs.iter()
            .map(|w| w.cpu.as_secs_f64() * 1e3 / (w.real.as_secs_f64() * dilation))
            .collect(),
    );
    let wakeups = median(
        runs.iter()
            .map(|w| w.parks as f64 / w.real.as_secs_f64())
            .collect(),
    );
    println!(
        "{name:<24} {:>6.3} % of a core [{:.3}–{:.3}]  {:>7.3} ms CPU per virtual s  \
         {:>5.0} runtime wake-ups/s",
        share.0, share.1, share.2, per_virtual_s.0, wakeups.0
    );
    aiodebug::testing::set_dilation(1.0);
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    println!(
        "idle runtime, one sleep per {:.1} s window of real time, median of {RUNS} windows:",
        WINDOW.as_secs_f64()
    );
    let plain = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    };
    let dilated = || aiodebug::testing::dilated_runtime().expect("dilated runtime");
    report("plain current_thread", 1.0, plain);
    report("dilated ×1", 1.0, dilated);
    report("dilated ×3", 3.0, dilated);
    report("dilated ×0.1", 0.1, dilated);
    report("dilated ×100", 100.0, dilated);
    report("dilated ×3, tick 5 ms", 3.0, || {
        aiodebug::testing::DilatedBuilder::new()
            .tick(Duration::from_millis(5))
            .build()
            .expect("dilated runtime")
    });
}
