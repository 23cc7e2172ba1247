//! Setting a watch up: its config turned into a context (target, log,
//! StatsD, dumper, output folder), and the run of `watch PID`.

use super::episode::Config;
use super::event::{Event, Warning};
use super::files::OutputDir;
use super::statsd::Stats;
use super::step::watch_loop;
use super::{syscall_loop, workers, Ctx, Log, Parts, Summary, MAX_SLEEP_NS};
use crate::config::WatchConfig;
use crate::exit;
use crate::status::secs_to_ns;
use aiodebug_engine::dump::Dumper;
use aiodebug_engine::target::Target;
use aiodebug_engine::{proc, ErrorKind};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// The dumper's options from the arguments (`--stacks`).
pub(crate) fn dump_options(args: &WatchConfig) -> aiodebug_engine::dump::DumpOptions {
    aiodebug_engine::dump::DumpOptions {
        stacks: args.stacks.into(),
        // The loop threads' causes (with their counters), not every thread's.
        cause: aiodebug_engine::cause::capture::CauseScope::Loops,
        keep_snapshot: args.save_minidumps,
        ..crate::dump::debug_options(&args.debug_dirs)
    }
}

/// Connects to `--statsd`, if given; a failure is a warning.
pub(crate) fn connect_stats(args: &WatchConfig, log: &Log) -> Option<Stats> {
    args.statsd.as_deref().and_then(
        |addr| match Stats::connect(addr, &args.prefix, &args.tags) {
            Ok(s) => Some(s),
            Err(e) => {
                log.emit(&Event::Warning(Warning::NoStatsd(e)));
                None
            }
        },
    )
}

/// SIGINT/SIGTERM set the returned flag.
pub(crate) fn stop_flag() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&stop)) {
            crate::errln!("aiodebug-watch: cannot handle signal {sig}: {e}");
        }
    }
    stop
}

/// Runs a watch; returns its exit code and what it did.
pub fn watch(args: &WatchConfig) -> (u8, Summary) {
    let out = match OutputDir::open(&args.output_dir, args.max_dump_bytes, args.follow_symlinks) {
        Ok(o) => o,
        Err(e) => {
            crate::errln!("aiodebug-watch: {e}");
            return (exit::OTHER, Summary::default());
        }
    };
    // The CLI requires a PID unless --all.
    let pid = args.pid.unwrap_or(0);
    // No heartbeat, or threads named: watch the loops by their wait calls.
    if !args.loop_threads.is_empty() {
        return syscall_loop::watch(args, pid, out, "--loop-thread");
    }
    let target = match Target::open(pid) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NoHeartbeat => {
            return syscall_loop::watch(args, pid, out, "no heartbeat in this process");
        }
        Err(e) => {
            crate::errln!("aiodebug-watch: {e}");
            return (exit::code_for(&e), Summary::default());
        }
    };
    let log = Log::new(args.json);
    let stats = connect_stats(args, &log);
    let stop = stop_flag();
    let parts = Parts {
        pid,
        target,
        log,
        out: Box::new(out),
        stats,
        dumper: Box::new(Dumper::with_options(dump_options(args))),
        max_sleep_ns: MAX_SLEEP_NS,
        preload: true,
    };
    watch_target(args, parts, &stop)
}

/// Watches one opened target until it exits, a signal, `--duration` or
/// `--exit-on-hang`.
pub(crate) fn watch_target(args: &WatchConfig, parts: Parts, stop: &AtomicBool) -> (u8, Summary) {
    let (mut ctx, target) = new_ctx(args, parts);
    let code = watch_loop(&mut ctx, &target, stop);
    ctx.log.finish();
    if let Some(s) = &ctx.stats {
        s.drain(Duration::from_secs(2));
    }
    ctx.summary.hangs = ctx.hangs;
    (code, ctx.summary)
}

/// A watch's context from its parts (symbols loaded first if `preload`),
/// and its target.
pub(super) fn new_ctx(args: &WatchConfig, parts: Parts) -> (Ctx<'_>, Target) {
    let exe = proc::read_exe(parts.pid)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "?".into());
    let mut ctx = Ctx {
        args,
        pid: parts.pid,
        exe,
        log: parts.log,
        out: parts.out,
        stats: parts.stats,
        dumper: parts.dumper,
        hangs: 0,
        files: 0,
        budget_warned: false,
        trace_warned: false,
        max_sleep_ns: parts.max_sleep_ns,
        episodes_completed: 0,
        summary: Summary::default(),
        workers: workers::Workers::default(),
        threads: workers::ProcView::new(parts.pid),
        view: workers::View::default(),
    };
    // Load the target's modules and debug info now, not when the first hang
    // is already being dumped.
    let prepared = if parts.preload {
        ctx.dumper.prepare(ctx.pid)
    } else {
        Ok(0)
    };
    if let Err(e) = prepared {
        ctx.log.emit(&Event::Warning(Warning::NoPreload {
            pid: ctx.pid,
            error: e.to_string(),
        }));
    }
    (ctx, parts.target)
}

/// The episode trackers' settings from the config (a `--slow` not below
/// `--interval` is none).
pub(super) fn episode_config(args: &WatchConfig) -> Config {
    Config {
        interval_ns: secs_to_ns(args.interval),
        dumps: args.dumps,
        gap_ns: secs_to_ns(args.dump_gap),
        slow_ns: args
            .slow
            .map(secs_to_ns)
            .filter(|&s| s < secs_to_ns(args.interval)),
    }
}
