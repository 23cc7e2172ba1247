//! The text of hang-dump files and slow-tick warnings.

use crate::dump::frame_line;
use aiodebug_engine::dump::{Dump, Frame, ThreadDump};
use aiodebug_engine::proc;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

/// What a dump file's header says about the episode.
#[derive(Debug, Clone)]
pub struct Header<'a> {
    /// Executable of the target.
    pub exe: &'a str,
    /// The stalled loop's name.
    pub loop_name: &'a str,
    /// Its thread (last tick), or the stuck worker.
    pub loop_tid: u32,
    /// For a stuck worker: what it polls (`task 'orders' (src/main.rs:37)`).
    pub stuck_poll: Option<&'a str>,
    /// How long it is overdue now (0 once it recovered).
    pub stall_ns: u64,
    /// What each thread is polling right now (from the heartbeat's poll board):
    /// `polling task 'orders' (src/main.rs:37) for 1.520 s`.
    pub polls: &'a HashMap<i32, String>,
    /// Recovered after this long, if it did before this snapshot.
    pub recovered_after_ns: Option<u64>,
    /// Snapshot index, 0-based.
    pub index: u32,
    /// Snapshots in the episode.
    pub of: u32,
    /// Local time of the snapshot, human readable.
    pub local_time: &'a str,
    /// Why the loop's thread is stuck (`crate::cause`), one line.
    pub cause: Option<&'a str>,
}

/// Library and runtime frames that never are the culprit of a blocked loop.
fn is_plumbing(f: &Frame) -> bool {
    let func = f.function.as_deref().unwrap_or("");
    let file = f.file.as_deref().unwrap_or("");
    let module = f.module.as_deref().unwrap_or("");
    let base = module.rsplit('/').next().unwrap_or(module);
    const SYSTEM_LIBS: [&str; 5] = ["libc.so", "libc-", "libpthread", "ld-linux", "[vdso]"];
    const RUNTIME: [&str; 12] = [
        "std::",
        "core::",
        "alloc::",
        "tokio::",
        "<std::",
        "<core::",
        "<alloc::",
        "<tokio::",
        "__",
        "aiodebug::",
        "<aiodebug::",
        "parking_lot",
    ];
    f.function.is_none()
        || SYSTEM_LIBS.iter().any(|p| base.starts_with(p))
        || RUNTIME.iter().any(|p| func.starts_with(p))
        || file.starts_with("/rustc/")
        || file.contains("/.cargo/registry/")
        || matches!(
            func,
            "nanosleep" | "clock_nanosleep" | "syscall" | "start_thread" | "clone3" | "main"
        )
}

/// The frame most likely responsible for blocking: the innermost one that is
/// neither libc nor a language runtime or dependency.
pub fn culprit(frames: &[Frame]) -> Option<&Frame> {
    frames.iter().find(|f| !is_plumbing(f))
}

/// The culprit line of a stack: its innermost Python frame and what it is
/// inside when it has Python frames (`parse_order (orders.py:10), inside
/// time_sleep`), else the [`culprit`] native frame.
pub fn culprit_text(frames: &[Frame]) -> Option<String> {
    crate::pyview::python_culprit(frames).or_else(|| culprit(frames).map(short_frame))
}

/// [`culprit_text`] of a thread, with the asyncio task its loop is running
/// when the interpreter says (3.14+): `parse_order (orders.py:10), in task
/// 'handle-order-7' (coro handle)`.
pub fn thread_culprit(t: &ThreadDump) -> Option<String> {
    let c = culprit_text(&t.frames)?;
    Some(match crate::pyview::running_task(t) {
        Some(task) => format!("{c}, in {task}"),
        None => c,
    })
}

/// `parse_order (src/orders.rs:37)` for a frame.
pub fn short_frame(f: &Frame) -> String {
    let func = f.function.as_deref().unwrap_or("??");
    match (&f.file, f.line) {
        (Some(file), Some(line)) => format!("{func} ({file}:{line})"),
        (Some(file), None) => format!("{func} ({file})"),
        _ => func.to_string(),
    }
}

fn secs(ns: u64) -> String {
    format!("{:.3} s", ns as f64 / 1e9)
}

fn thread_block(
    out: &mut String,
    t: &ThreadDump,
    prev_cpu: Option<Duration>,
    stalled: Option<&str>,
    poll: Option<&String>,
) {
    let cpu = match prev_cpu {
        Some(p) => format!(
            "cpu +{:.3} s since the previous snapshot",
            t.cpu_time.saturating_sub(p).as_secs_f64()
        ),
        None => format!("cpu {:.3} s", t.cpu_time.as_secs_f64()),
    };
    let _ = write!(
        out,
        "Thread {} \"{}\" state {} ({}), {cpu}",
        t.tid,
        t.name,
        t.state,
        proc::state_name(t.state)
    );
    if let Some(l) = &t.event_loop {
        let _ = write!(out, ", event loop '{l}'");
    }
    if let Some(p) = poll {
        let _ = write!(out, ", {p}");
    }
    out.push_str(&crate::pyview::thread_suffix(t));
    if let Some(stop) = crate::dump::stop_text(t) {
        let _ = write!(out, ", {stop}");
    }
    if let Some(l) = stalled {
        let _ = write!(out, "   <== {l}");
    }
    out.push('\n');
    for (n, f) in t.frames.iter().enumerate() {
        let _ = writeln!(out, "  {}", frame_line(n, f));
    }
    if let Some(note) = crate::pyview::thread_note(t) {
        let _ = writeln!(out, "  {note}");
    }
    let _ = writeln!(
        out,
        "  (stack ends: {:?}{})",
        t.end,
        if t.stack_truncated {
            ", copy truncated"
        } else {
            ""
        }
    );
    out.push('\n');
}

/// A hang-dump file: header, the stalled loop's thread first (marked), then
/// every other thread; CPU time relative to the previous snapshot of the
/// episode when there is one.
pub fn dump_file(h: &Header<'_>, d: &Dump, prev_cpu: &HashMap<i32, Duration>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "aiodebug-watch hang dump: snapshot {} of {}",
        h.index + 1,
        h.of
    );
    let _ = writeln!(out, "pid:        {} ({})", d.pid, d.name);
    let _ = writeln!(out, "executable: {}", h.exe);
    let state = match (h.recovered_after_ns, h.stuck_poll.is_some()) {
        (Some(ns), false) => format!("recovered after {}", secs(ns)),
        (Some(ns), true) => format!("done after {}", secs(ns)),
        (None, false) => format!("stalled for {} so far", secs(h.stall_ns)),
        (None, true) => format!("stuck for {} so far", secs(h.stall_ns)),
    };
    match h.stuck_poll {
        None => {
            let _ = writeln!(
                out,
                "loop:       '{}' on thread {}: {state}",
                h.loop_name, h.loop_tid
            );
        }
        Some(poll) => {
            let _ = writeln!(
                out,
                "worker:     thread {} of loop '{}' polling {poll}: {state} (the loop itself keeps ticking)",
                h.loop_tid, h.loop_name
            );
        }
    }
    if let Some(p) = h.polls.get(&(h.loop_tid as i32)) {
        let _ = writeln!(out, "polling:    {}", p.trim_start_matches("polling "));
    }
    // The interpreter's own word on the loop's task (3.14+), companion or not.
    if let Some(task) = d
        .threads
        .iter()
        .find(|t| t.tid as u32 == h.loop_tid)
        .and_then(crate::pyview::running_task)
    {
        let _ = writeln!(out, "running:    {task} (the interpreter's asyncio state)");
    }
    let _ = writeln!(out, "taken:      {}", h.local_time);
    let _ = writeln!(
        out,
        "freeze:     {:.3} ms for {} threads",
        d.timings.freeze.as_secs_f64() * 1e3,
        d.threads.len()
    );
    if let Some(c) = d
        .threads
        .iter()
        .find(|t| t.tid as u32 == h.loop_tid && h.recovered_after_ns.is_none())
        .and_then(thread_culprit)
    {
        let _ = writeln!(out, "blocked in: {c}");
    }
    if let Some(c) = h.cause.filter(|_| h.recovered_after_ns.is_none()) {
        let _ = writeln!(out, "cause:      {c}");
    }
    if d.exited {
        let _ = writeln!(
            out,
            "note:       the process exited during the snapshot; it is partial"
        );
    }
    for p in &d.module_problems {
        let _ = writeln!(out, "note:       {p}");
    }
    out.push('\n');
    let stalled_first = d
        .threads
        .iter()
        .filter(|t| t.tid as u32 == h.loop_tid)
        .chain(d.threads.iter().filter(|t| t.tid as u32 != h.loop_tid));
    let mark = match h.stuck_poll {
        None => format!("STALLED LOOP '{}'", h.loop_name),
        Some(_) => "STUCK WORKER".to_string(),
    };
    for t in stalled_first {
        let m = (t.tid as u32 == h.loop_tid).then_some(mark.as_str());
        thread_block(
            &mut out,
            t,
            prev_cpu.get(&t.tid).copied(),
            m,
            h.polls.get(&t.tid),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use aiodebug_engine::unwind::FrameKind;

    fn frame(func: &str, file: &str, module: &str) -> Frame {
        Frame {
            address: 0x1000,
            kind: FrameKind::Return,
            function: Some(func.into()),
            inlined: false,
            file: (!file.is_empty()).then(|| file.into()),
            line: Some(37),
            module: Some(module.into()),
            module_offset: Some(0x10),
        }
    }

    #[test]
    fn the_culprit_skips_libc_and_runtimes() {
        let frames = [
            frame("clock_nanosleep", "", "/usr/lib/x86_64-linux-gnu/libc.so.6"),
            frame(
                "std::thread::sleep",
                "/rustc/abc/library/std/src/thread/mod.rs",
                "/srv/app",
            ),
            frame("app::parse_order", "src/orders.rs", "/srv/app"),
            frame(
                "tokio::runtime::task::poll",
                "/root/.cargo/registry/src/tokio/x.rs",
                "/srv/app",
            ),
        ];
        let c = culprit(&frames).expect("culprit");
        assert_eq!(short_frame(c), "app::parse_order (src/orders.rs:37)");
        assert!(culprit(&frames[..2]).is_none());
    }
}
