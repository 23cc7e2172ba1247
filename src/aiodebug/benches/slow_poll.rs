//! The slow-poll wrapper's cost per poll, next to the same future unwrapped
//! (`cargo bench -p aiodebug --bench slow_poll`).
//!
//! A future that is always pending (it only counts its polls) is polled in a
//! tight loop with a no-op waker, so the figures are the overhead a poll pays,
//! not the work of a real task. Each figure is the median of 15 runs of
//! 1,000,000 polls; the spread is the fastest and slowest run.

use aiodebug::polling::{self, Label};
use aiodebug::slow::LogSlowExt;
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

const POLLS: u32 = 1_000_000;
const RUNS: usize = 15;

struct Noop;
impl Wake for Noop {
    fn wake(self: Arc<Self>) {}
}

/// Counts its polls; never ready.
struct Spin(u64);
impl Future for Spin {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        self.0 = black_box(self.0.wrapping_add(1));
        Poll::Pending
    }
}

fn ns_per_poll<F: Future>(mut fut: Pin<&mut F>, cx: &mut Context<'_>) -> f64 {
    let start = Instant::now();
    for _ in 0..POLLS {
        let _ = black_box(fut.as_mut().poll(cx));
    }
    start.elapsed().as_nanos() as f64 / f64::from(POLLS)
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    let waker = Waker::from(Arc::new(Noop));
    let mut cx = Context::from_waker(&waker);
    // Hold a loop so the wrapped polls are attributed like in a service.
    let hb = aiodebug::Heartbeat::register("bench");
    polling::set_thread_loop(&hb);

    let mut plain = Box::pin(Spin(0));
    let mut wrapped = Box::pin(Spin(0).log_slow_named("orders", Duration::from_secs(1)));
    let label = Label::here("marker");
    let mut marked = Vec::new();
    let mut clocks = Vec::new();
    let mut plain_runs = Vec::new();
    let mut wrapped_runs = Vec::new();
    // Warm up (claims the poll board entry), then interleave the runs so
    // that machine noise hits all of them alike.
    ns_per_poll(plain.as_mut(), &mut cx);
    ns_per_poll(wrapped.as_mut(), &mut cx);
    for _ in 0..RUNS {
        plain_runs.push(ns_per_poll(plain.as_mut(), &mut cx));
        wrapped_runs.push(ns_per_poll(wrapped.as_mut(), &mut cx));
        let start = Instant::now();
        for _ in 0..POLLS {
            let p = polling::enter(black_box(&label));
            black_box(p.finish());
        }
        marked.push(start.elapsed().as_nanos() as f64 / f64::from(POLLS));
        let start = Instant::now();
        for _ in 0..POLLS {
            black_box(Instant::now());
            black_box(Instant::now());
        }
        clocks.push(start.elapsed().as_nanos() as f64 / f64::from(POLLS));
    }
    let (p50, pmin, pmax) = stats(plain_runs);
    let (w50, wmin, wmax) = stats(wrapped_runs);
    let (m50, mmin, mmax) = stats(marked);
    let (c50, cmin, cmax) = stats(clocks);
    println!("slow-poll wrapper, ns per poll ({RUNS} runs of {POLLS} polls; median [min..max])");
    println!("{:<44} {:>10} {:>18}", "", "median", "range");
    println!(
        "{:<44} {:>10.1} {:>18}",
        "poll, unwrapped",
        p50,
        format!("[{pmin:.1}..{pmax:.1}]")
    );
    println!(
        "{:<44} {:>10.1} {:>18}",
        "poll, .log_slow_named(\"orders\", 1 s)",
        w50,
        format!("[{wmin:.1}..{wmax:.1}]")
    );
    println!(
        "{:<44} {:>10.1} {:>18}",
        "  overhead of the wrapper",
        w50 - p50,
        ""
    );
    println!(
        "{:<44} {:>10.1} {:>18}",
        "polling::enter + finish (the board alone)",
        m50,
        format!("[{mmin:.1}..{mmax:.1}]")
    );
    println!(
        "{:<44} {:>10.1} {:>18}",
        "  for comparison: 2 CLOCK_MONOTONIC reads",
        c50,
        format!("[{cmin:.1}..{cmax:.1}]")
    );
    println!(
        "slow polls reported during the run: {} (must be 0)",
        aiodebug::slow::slow_polls()
    );
}
