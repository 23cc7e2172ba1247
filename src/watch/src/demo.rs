//! `demo`: a bundled service whose event loop hangs, watched live.
//!
//! The service is this same binary started as `aiodebug-watch demo-target`: a
//! tokio current-thread runtime with an `aiodebug` heartbeat whose loop is
//! blocked for about 1.5 s every few seconds by a synchronous call.

use crate::cli::DemoArgs;
use crate::exit;
use crate::status::{human, rows, secs_to_ns};
use aiodebug_engine::target::Target;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// How long the demo service blocks its loop.
pub const BLOCK: Duration = Duration::from_millis(1500);
/// How often it does.
pub const EVERY: Duration = Duration::from_secs(4);

/// Kills and reaps the demo service however the demo ends.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_service() -> Result<Service, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find our own binary: {e}"))?;
    let mut child = Command::new(exe)
        .arg("demo-target")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start the demo service: {e}"))?;
    let out = child.stdout.take().ok_or("demo service has no stdout")?;
    let service = Service(child);
    let mut line = String::new();
    BufReader::new(out)
        .read_line(&mut line)
        .map_err(|e| format!("demo service: {e}"))?;
    if !line.starts_with("READY") {
        return Err(format!("demo service did not start: {line:?}"));
    }
    Ok(service)
}

/// Runs the demo.
pub fn run(args: &DemoArgs) -> ExitCode {
    let service = match start_service() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("aiodebug-watch: {e}");
            return ExitCode::from(exit::OTHER);
        }
    };
    let pid = service.0.id() as i32;
    println!(
        "demo: started a tokio service (PID {pid}) whose loop blocks for {:.1} s every {} s; watching it from outside for {:.0} s",
        BLOCK.as_secs_f64(),
        EVERY.as_secs(),
        args.duration
    );
    let target = match Target::open(pid) {
        Ok(t) => t,
        Err(e) => return exit::report(&e),
    };
    let threshold = secs_to_ns(args.threshold);
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let say = |line: String| {
        if bar.is_hidden() {
            println!("{line}");
        } else {
            bar.println(line);
        }
    };
    let start = Instant::now();
    let mut hang_started: Option<Instant> = None;
    let mut hangs = 0u32;
    let mut longest = 0u64;
    let mut max_lag = 0u64;
    let mut reads = 0u64;
    while start.elapsed().as_secs_f64() < args.duration {
        let reading = match target.read() {
            Ok(r) => r,
            Err(e) => return exit::report(&e),
        };
        reads += 1;
        let state = aiodebug_engine::proc::read_stat(pid)
            .ok()
            .map(|s| s.state)
            .unwrap_or('?');
        for r in rows(&reading, threshold, state) {
            max_lag = max_lag.max(r.st.max_ns.unwrap_or(0));
            longest = longest.max(r.st.stall_ns);
            bar.set_message(format!(
                "loop '{}' (tid {}): stall {:>9}  last lag {:>8}  p99 {:>8}  hangs caught {hangs}",
                r.lp.name,
                r.lp.tid,
                human(r.st.stall_ns),
                r.st.last_lag_ns.map(human).unwrap_or_default(),
                r.st.p99_ns.map(human).unwrap_or_default(),
            ));
            match (r.stalled, hang_started) {
                (true, None) => {
                    hangs += 1;
                    hang_started = Some(Instant::now());
                    say(format!(
                        "[{:>5.2}s] HANG: loop '{}' on thread {} has not ticked for {} (threshold {})",
                        start.elapsed().as_secs_f64(),
                        r.lp.name,
                        r.lp.tid,
                        human(r.st.age_ns),
                        human(threshold)
                    ));
                }
                (false, Some(_)) if r.st.stall_ns == 0 => {
                    hang_started = None;
                    say(format!(
                        "[{:>5.2}s] recovered: loop '{}' ticks again (lag of that tick {})",
                        start.elapsed().as_secs_f64(),
                        r.lp.name,
                        r.st.last_lag_ns.map(human).unwrap_or_default()
                    ));
                }
                _ => {}
            }
        }
        bar.tick();
        std::thread::sleep(Duration::from_millis(10));
    }
    bar.finish_and_clear();
    drop(service);
    println!(
        "demo summary: {hangs} hangs caught while they lasted, longest stall seen {}, largest tick lag {}, {reads} reads of the heartbeat",
        human(longest),
        human(max_lag)
    );
    println!("next: `aiodebug-watch status PID` or `aiodebug-watch list` against your own service (see README)");
    ExitCode::from(exit::OK)
}

/// The demo service: runs until its stdin closes.
pub fn target() -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("demo-target: cannot start tokio: {e}");
            return ExitCode::from(exit::OTHER);
        }
    };
    // Exit when the watcher goes away, however it goes.
    std::thread::spawn(|| {
        let mut sink = String::new();
        while std::io::stdin()
            .read_line(&mut sink)
            .map(|n| n > 0)
            .unwrap_or(false)
        {}
        std::process::exit(0);
    });
    rt.block_on(async {
        let _monitor = aiodebug::tokio::spawn_monitor("main");
        tokio::time::sleep(Duration::from_millis(100)).await;
        println!("READY pid={} kind=demo loops=main", std::process::id());
        let mut next = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            tokio::time::sleep_until(next).await;
            handle_request_synchronously();
            next = tokio::time::Instant::now() + EVERY - BLOCK;
        }
    });
    ExitCode::from(exit::OK)
}

/// The culprit: synchronous work inside an async task blocks the whole loop.
#[inline(never)]
fn handle_request_synchronously() {
    std::thread::sleep(std::hint::black_box(BLOCK));
}
