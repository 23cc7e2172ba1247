//! `status` and `list`: read heartbeats from outside and print them.

use crate::config::{ListConfig, StatusConfig};
use crate::exit;
use aiodebug_engine::elf::ModuleCache;
use aiodebug_engine::heartbeat::{Loop, LoopStats, Polling};
use aiodebug_engine::target::{Reading, Target};
use aiodebug_engine::{proc, ErrorKind};
use serde_json::json;
use std::process::ExitCode;

/// Process state letters that mean "stopped on purpose", not hung.
pub fn is_stopped(state: char) -> bool {
    matches!(state, 'T' | 't')
}

/// Milliseconds with microsecond precision, for JSON.
pub fn ms(ns: u64) -> f64 {
    (ns / 1_000) as f64 / 1_000.0
}

/// A duration for humans: `12.3ms`, `1.502s`.
pub fn human(ns: u64) -> String {
    if ns >= 1_000_000_000 {
        format!("{:.3}s", ns as f64 / 1e9)
    } else if ns >= 1_000_000 {
        format!("{:.1}ms", ns as f64 / 1e6)
    } else {
        format!("{}µs", ns / 1_000)
    }
}

fn opt(ns: Option<u64>) -> String {
    ns.map(human).unwrap_or_else(|| "-".into())
}

/// One loop with its derived figures.
pub struct Row<'a> {
    /// The loop.
    pub lp: &'a Loop,
    /// Its figures now.
    pub st: LoopStats,
    /// Whether it is stalled past the threshold (never for a stopped process).
    pub stalled: bool,
    /// The reading's time (target's CLOCK_MONOTONIC), for poll durations.
    pub now_ns: u64,
}

/// Rows of a reading, the stalled ones marked.
pub fn rows(reading: &Reading, threshold_ns: u64, state: char) -> Vec<Row<'_>> {
    reading
        .loops()
        .map(|lp| {
            let st = lp.stats(reading.now_ns);
            Row {
                lp,
                st,
                stalled: !is_stopped(state) && st.stall_ns > threshold_ns,
                now_ns: reading.now_ns,
            }
        })
        .collect()
}

/// Seconds (validated by the parser) to ns.
pub fn secs_to_ns(s: f64) -> u64 {
    (s * 1e9) as u64
}

/// A poll in progress (ABI minor 1 poll board), for JSON.
pub fn polling_json(p: &Polling, now_ns: u64) -> serde_json::Value {
    json!({
        "tid": p.tid,
        "ns_tid": p.ns_tid,
        "task": p.task,
        "task_id": p.task_id,
        "location": p.location(),
        "kind": p.kind.as_str(),
        "since_ns": p.since_ns,
        "for_ms": ms(p.duration_ns(now_ns)),
        "describe": p.describe(),
    })
}

/// `tid 1234 polling task 'orders' (src/main.rs:37) for 1.520s`.
pub fn polling_text(p: &Polling, now_ns: u64) -> String {
    format!(
        "tid {} polling {} for {}",
        p.tid,
        p.describe(),
        human(p.duration_ns(now_ns))
    )
}

fn loop_json(pid: i32, state: char, r: &Row<'_>) -> serde_json::Value {
    json!({
        "event": "loop",
        "pid": pid,
        "process_state": state.to_string(),
        "loop": r.lp.name,
        "tid": r.lp.tid,
        "ns_tid": r.lp.ns_tid,
        "ticks": r.lp.ticks,
        "period_ms": ms(r.lp.period_ns),
        "age_ms": ms(r.st.age_ns),
        "stall_ms": ms(r.st.stall_ns),
        "stalled": r.stalled,
        "last_lag_ms": r.st.last_lag_ns.map(ms),
        "p50_ms": r.st.p50_ns.map(ms),
        "p99_ms": r.st.p99_ns.map(ms),
        "max_ms": r.st.max_ns.map(ms),
        "lag_samples": r.lp.lags.len(),
        "polling": r.lp.polling.iter().map(|p| polling_json(p, r.now_ns)).collect::<Vec<_>>(),
    })
}

/// `aiodebug-watch status PID`.
pub fn status(args: &StatusConfig) -> ExitCode {
    let threshold = secs_to_ns(args.threshold);
    let target = match Target::open(args.pid) {
        Ok(t) => t,
        Err(e) => return exit::report(&e),
    };
    let reading = match target.read() {
        Ok(r) => r,
        Err(e) => return exit::report(&e),
    };
    let stat = proc::read_stat(args.pid).ok();
    let state = stat.as_ref().map(|s| s.state).unwrap_or('?');
    let comm = stat.map(|s| s.comm).unwrap_or_default();
    let rows = rows(&reading, threshold, state);
    let unsettled: u32 = reading
        .registries
        .iter()
        .map(|(_, r)| r.unsettled_slots)
        .sum();
    // Every poll in progress, with the loop it belongs to (if known).
    let polls: Vec<(&Polling, Option<&str>)> = reading
        .registries
        .iter()
        .flat_map(|(_, reg)| {
            reg.polling.iter().map(move |p| {
                let owner = p
                    .loop_slot
                    .and_then(|s| reg.loops.iter().find(|l| l.slot == s))
                    .map(|l| l.name.as_str());
                (p, owner)
            })
        })
        .collect();
    let poll_refused: u64 = reading
        .registries
        .iter()
        .map(|(_, r)| u64::from(r.poll_refused))
        .sum();
    if args.json {
        for r in &rows {
            crate::outln!("{}", loop_json(args.pid, state, r));
        }
        crate::outln!(
            "{}",
            json!({
                "event": "process",
                "pid": args.pid,
                "comm": comm,
                "process_state": state.to_string(),
                "stopped": is_stopped(state),
                "loops": rows.len(),
                "stalled_loops": rows.iter().filter(|r| r.stalled).count(),
                "refused_registrations": reading.refused(),
                "unsettled_slots": unsettled,
                "rejected_registries": reading.rejected.iter().map(|(_, r)| r.reason.clone()).collect::<Vec<_>>(),
                "polling": polls.iter().map(|(p, owner)| {
                    let mut v = polling_json(p, reading.now_ns);
                    v["loop"] = json!(owner);
                    v
                }).collect::<Vec<_>>(),
                "poll_board_entries": reading.registries.iter().map(|(_, r)| r.poll_entries).sum::<u32>(),
                "poll_refused_threads": poll_refused,
                "unsettled_polls": reading.registries.iter().map(|(_, r)| r.unsettled_polls).sum::<u32>(),
            })
        );
    } else {
        let stopped_note = if is_stopped(state) {
            " — stopped (job control or debugger): loops cannot run, this is not a hang"
        } else {
            ""
        };
        crate::outln!(
            "PID {} ({comm}) state {state} ({}){stopped_note}",
            args.pid,
            proc::state_name(state)
        );
        crate::outln!(
            "{:<20} {:>8} {:>10} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "LOOP",
            "TID",
            "TICKS",
            "PERIOD",
            "STALL",
            "LAST LAG",
            "P50",
            "P99",
            "MAX"
        );
        for r in &rows {
            crate::outln!(
                "{:<20} {:>8} {:>10} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}{}",
                r.lp.name,
                r.lp.tid,
                r.lp.ticks,
                human(r.lp.period_ns),
                human(r.st.stall_ns),
                opt(r.st.last_lag_ns),
                opt(r.st.p50_ns),
                opt(r.st.p99_ns),
                opt(r.st.max_ns),
                if r.stalled { "  STALLED" } else { "" }
            );
            for p in &r.lp.polling {
                crate::outln!("    {}", polling_text(p, reading.now_ns));
            }
        }
        if rows.is_empty() {
            crate::outln!("(no loop registered right now)");
        }
        let elsewhere: Vec<_> = polls.iter().filter(|(_, owner)| owner.is_none()).collect();
        if !elsewhere.is_empty() {
            crate::outln!("polling on threads of no loop:");
            for (p, _) in elsewhere {
                crate::outln!("    {}", polling_text(p, reading.now_ns));
            }
        }
        if poll_refused > 0 {
            crate::outln!(
                "note: {poll_refused} threads could not show what they poll (the poll board was full)"
            );
        }
        for (m, reg) in &reading.registries {
            if let Some(why) = &reg.poll_problem {
                crate::errln!(
                    "warning: ignored the poll board of the registry in {}: {why}",
                    m.module.display()
                );
            }
        }
        if reading.refused() > 0 {
            crate::outln!(
                "note: {} registrations were refused because the registry was full",
                reading.refused()
            );
        }
        for (m, rej) in &reading.rejected {
            crate::errln!(
                "warning: ignored an invalid registry in {}: {}",
                m.module.display(),
                rej.reason
            );
        }
    }
    if rows.iter().any(|r| r.stalled) {
        ExitCode::from(exit::STALLED)
    } else {
        ExitCode::from(exit::OK)
    }
}

/// Whether `pid` is an `aiodebug-watch` process other than a demo target:
/// the binary links the companion (for `demo-target`), so every watcher
/// exports an empty registry. Told by its executable (the same file as ours)
/// or its `argv[0]`, and by not running `demo-target`.
pub fn is_own_tool(pid: i32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let mut args = cmdline.split(|&b| b == 0);
    let argv0 = args.next().unwrap_or_default();
    if args.next() == Some(b"demo-target") {
        return false;
    }
    let named = argv0.rsplit(|&b| b == b'/').next() == Some(b"aiodebug-watch");
    named || same_file(pid)
}

/// Whether `/proc/PID/exe` is the same file as ours (device and inode).
fn same_file(pid: i32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let key = |p: &str| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    matches!((key("/proc/self/exe"), key(&format!("/proc/{pid}/exe"))), (Some(a), Some(b)) if a == b)
}

/// A process `list` could not read: its pid, command name and why (the
/// engine's sentence, which names what to do).
fn unreadable(pid: i32, e: &aiodebug_engine::Error) -> (i32, String, String) {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim_end().to_string())
        .unwrap_or_else(|_| "?".into());
    let why = match e {
        aiodebug_engine::Error::PermissionDenied { hint, .. } => hint.clone(),
        other => other.to_string(),
    };
    (pid, comm, why)
}

/// `aiodebug-watch list`.
pub fn list(args: &ListConfig) -> ExitCode {
    let threshold = secs_to_ns(args.threshold);
    let me = std::process::id() as i32;
    let mut cache = ModuleCache::default();
    let mut denied: Vec<(i32, String, String)> = Vec::new();
    let mut ours = 0usize;
    let mut found = 0usize;
    if !args.json {
        crate::outln!("{:>8}  {:<16} {:<5} LOOPS", "PID", "COMMAND", "STATE");
    }
    for pid in proc::list_pids() {
        if pid == me {
            continue;
        }
        let reading = match Target::open_with_cache(pid, &mut cache).and_then(|t| t.read()) {
            Ok(r) => r,
            Err(e) => {
                if e.kind() == ErrorKind::Permission {
                    denied.push(unreadable(pid, &e));
                }
                continue;
            }
        };
        if reading.loops().next().is_none() && is_own_tool(pid) {
            ours += 1;
            continue;
        }
        let stat = proc::read_stat(pid).ok();
        let state = stat.as_ref().map(|s| s.state).unwrap_or('?');
        let comm = stat.map(|s| s.comm).unwrap_or_default();
        let rows = rows(&reading, threshold, state);
        found += 1;
        if args.json {
            let loops: Vec<_> = rows.iter().map(|r| loop_json(pid, state, r)).collect();
            crate::outln!(
                "{}",
                json!({"event": "process", "pid": pid, "comm": comm, "process_state": state.to_string(),
                       "stopped": is_stopped(state), "loops": loops})
            );
        } else {
            let loops: Vec<String> = rows
                .iter()
                .map(|r| {
                    format!(
                        "{} (tid {}, stall {}{})",
                        r.lp.name,
                        r.lp.tid,
                        human(r.st.stall_ns),
                        if r.stalled { ", STALLED" } else { "" }
                    )
                })
                .collect();
            let loops = if loops.is_empty() {
                "-".to_string()
            } else {
                loops.join(", ")
            };
            crate::outln!("{pid:>8}  {comm:<16} {state:<5} {loops}");
        }
    }
    if args.json {
        for (pid, comm, why) in &denied {
            crate::outln!(
                "{}",
                json!({"event": "unreadable", "pid": pid, "comm": comm, "reason": why})
            );
        }
    } else {
        for (pid, comm, why) in &denied {
            crate::errln!("note: cannot read PID {pid} ({comm}): {why}");
        }
        if ours > 0 {
            crate::errln!("note: {ours} aiodebug-watch processes (watchers, no loops) not shown");
        }
    }
    if found == 0 && !args.json {
        crate::outln!("(no process exports an aiodebug heartbeat)");
    }
    ExitCode::from(exit::OK)
}
