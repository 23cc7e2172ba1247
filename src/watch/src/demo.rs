//! `demo`: a bundled service whose event loop hangs, watched live.
//!
//! The service is this same binary started as `aiodebug-watch demo-target`: a
//! tokio current-thread runtime with an `aiodebug` heartbeat whose loop is
//! blocked for about 1.5 s every few seconds by a synchronous call.

use crate::config::{DemoConfig, WatchConfig};
use crate::exit;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

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

/// Runs the demo: starts the service, watches it until its first hang
/// episode is on disk, and points at the culprit.
pub fn run(args: &DemoConfig) -> ExitCode {
    let service = match start_service() {
        Ok(s) => s,
        Err(e) => {
            crate::errln!("aiodebug-watch: {e}");
            return ExitCode::from(exit::OTHER);
        }
    };
    let pid = service.0.id() as i32;
    let dir = args.output_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!(
            "aiodebug-demo-{}",
            chrono::Local::now().format("%Y%m%d-%H%M%S")
        ))
    });
    crate::outln!(
        "demo: started a tokio service (PID {pid}) whose event loop blocks for {:.1} s every {} s.\n\
         demo: watching it from outside (no ptrace until it hangs); dumps go to {}",
        BLOCK.as_secs_f64(),
        EVERY.as_secs(),
        dir.display()
    );
    let watch_args = WatchConfig {
        interval: args.threshold,
        output_dir: dir.clone(),
        max_dump_bytes: 64 * 1024 * 1024,
        exit_on_hang: true,
        duration: Some(args.duration),
        ..WatchConfig::for_pid(pid)
    };
    let (code, summary) = crate::watch::watch(&watch_args);
    drop(service);
    if summary.files.is_empty() {
        crate::errln!("demo: no hang was caught (watch ended with code {code})");
        return ExitCode::from(if code == exit::OK { exit::OTHER } else { code });
    }
    crate::outln!();
    crate::outln!(
        "demo: caught the hang while it lasted and wrote {} snapshots of every thread:",
        summary.files.len()
    );
    for f in &summary.files {
        crate::outln!("  {}", f.display());
    }
    match &summary.culprit {
        Some(c) => crate::outln!("demo: the loop was blocked in {c}"),
        None => crate::outln!("demo: (the blocking frame could not be named)"),
    }
    crate::outln!(
        "next: `aiodebug-watch watch PID` against your own service (see README), or `less {}`",
        summary
            .files
            .first()
            .map(|f| f.display().to_string())
            .unwrap_or_default()
    );
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
            crate::errln!("demo-target: cannot start tokio: {e}");
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
        crate::outln!("READY pid={} kind=demo loops=main", std::process::id());
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
