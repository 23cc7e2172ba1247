//! Benchmark: the cost of `Heartbeat::tick()` to a service, and of one read of
//! a full 64-slot registry from another process (what `status` does per PID).
//!
//! `cargo bench -p aiodebug-engine --bench heartbeat` (or `scripts/bench-heartbeat`).
//! The target is this binary re-executed with `AIODEBUG_BENCH_TARGET=1`: 64
//! registered loops ticking every millisecond in one thread.

use aiodebug::Heartbeat;
use aiodebug_engine::target::Target;
use std::hint::black_box;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn target_main() {
    let loops: Vec<Heartbeat> = (0..64)
        .map(|i| Heartbeat::with_period(&format!("bench-loop-{i}"), Duration::from_millis(1)))
        .collect();
    assert!(loops.iter().all(Heartbeat::is_registered));
    std::thread::spawn(move || loop {
        for hb in &loops {
            hb.tick();
        }
        std::thread::sleep(Duration::from_millis(1));
    });
    println!("READY pid={}", std::process::id());
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}

fn median_and_p99(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let p = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    (p(0.5), p(0.99))
}

fn bench_tick() {
    let hb = Heartbeat::with_period("tick-bench", Duration::from_millis(1));
    let n = 5_000_000u32;
    let mut rounds = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..n {
            black_box(&hb).tick();
        }
        rounds.push(t.elapsed().as_nanos() as f64 / f64::from(n));
    }
    let mut with_lag = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        for i in 0..n {
            black_box(&hb).tick_with_lag(Duration::from_nanos(u64::from(i)));
        }
        with_lag.push(t.elapsed().as_nanos() as f64 / f64::from(n));
    }
    let mut clock = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..n {
            black_box(Instant::now());
        }
        clock.push(t.elapsed().as_nanos() as f64 / f64::from(n));
    }
    let (tick, _) = median_and_p99(rounds);
    let (lag, _) = median_and_p99(with_lag);
    let (clk, _) = median_and_p99(clock);
    println!("{:<44} {:>10}", "operation", "median");
    println!("{:<44} {:>8.1} ns", "Heartbeat::tick()", tick);
    println!("{:<44} {:>8.1} ns", "Heartbeat::tick_with_lag()", lag);
    println!(
        "{:<44} {:>8.1} ns  (tick = {:.2}x a clock read)",
        "reference: Instant::now()",
        clk,
        tick / clk
    );
}

fn bench_read() {
    let exe = std::env::current_exe().expect("own path");
    let mut child = Command::new(exe)
        .env("AIODEBUG_BENCH_TARGET", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn target");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("READY");
    let pid = child.id() as i32;

    let mut opens = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let target = Target::open(pid).expect("open");
        black_box(&target);
        opens.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let target = Target::open(pid).expect("open");
    let mut reads = Vec::new();
    let mut loops = 0;
    let mut lags = 0;
    for _ in 0..2000 {
        let t = Instant::now();
        let r = target.read().expect("read");
        reads.push(t.elapsed().as_secs_f64() * 1e6);
        loops = r.loops().count();
        lags = r.loops().map(|l| l.lags.len()).sum::<usize>();
    }
    let _ = child.kill();
    let _ = child.wait();
    let (open_med, open_p99) = median_and_p99(opens);
    let (read_med, read_p99) = median_and_p99(reads);
    println!(
        "{:<44} {:>8.1} µs  p99 {:>8.1} µs",
        "locate registries (Target::open, cold ELF)", open_med, open_p99
    );
    println!(
        "{:<44} {:>8.1} µs  p99 {:>8.1} µs  ({loops} loops, {lags} verified lags)",
        "read 64-slot registry (2 copies + decode)", read_med, read_p99
    );
}

fn main() {
    if std::env::var_os("AIODEBUG_BENCH_TARGET").is_some() {
        target_main();
        return;
    }
    // `cargo bench` passes --bench; ignore arguments.
    bench_tick();
    bench_read();
}
