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
    /// The threads that block it, first the main one (empty: `loop_tid`).
    pub marked: &'a [u32],
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

/// Whether a frame is the service's own code rather than the language's
/// runtime and libraries (std, core, alloc), an async runtime (tokio), a
/// crate from the cargo registry or a git checkout, the rustc sources, this
/// tool's companion crate, or a system library (libc, the loader, the vDSO).
/// Judged by the source file when the frame has one (line tables), else by
/// the function's path.
fn is_service(f: &Frame) -> bool {
    let Some(func) = f.function.as_deref() else {
        return false;
    };
    let module = f.module.as_deref().unwrap_or("");
    let base = module.rsplit('/').next().unwrap_or(module);
    const SYSTEM_LIBS: [&str; 6] = [
        "libc.so",
        "libc-",
        "libpthread",
        "ld-linux",
        "libgcc_s",
        "[vdso]",
    ];
    if SYSTEM_LIBS.iter().any(|p| base.starts_with(p)) {
        return false;
    }
    if let Some(file) = f.file.as_deref() {
        const FOREIGN: [&str; 4] = [
            "/.cargo/registry/",
            "/registry/src/",
            "/.cargo/git/",
            "/git/checkouts/",
        ];
        if file.starts_with("/rustc/") || FOREIGN.iter().any(|p| file.contains(p)) {
            return false;
        }
    }
    // The path of the function, without the `<T as Trait>` wrapping.
    let path = func.trim_start_matches('<');
    const RUNTIME: [&str; 10] = [
        "std::",
        "core::",
        "alloc::",
        "tokio::",
        "aiodebug::",
        "futures_",
        "hyper::",
        "hyper_util::",
        "tower::",
        "parking_lot",
    ];
    !(RUNTIME.iter().any(|p| path.starts_with(p))
        || path.starts_with("__")
        || matches!(
            func,
            "nanosleep" | "clock_nanosleep" | "syscall" | "start_thread" | "clone3" | "main"
        ))
}

/// What blocks a thread: the innermost frame of the service's own code, and
/// the frame it called (what it is blocked inside). When no frame belongs to
/// the service, the innermost frame that has a name.
#[derive(Debug, Clone, Copy)]
pub struct Culprit<'a> {
    /// The service's frame (or the innermost named one).
    pub frame: &'a Frame,
    /// The frame it called, if any.
    pub inside: Option<&'a Frame>,
}

impl Culprit<'_> {
    /// `shop::orders::sleep_handler (src/orders.rs:10), inside std::thread::sleep`.
    pub fn describe(&self) -> String {
        let mut out = short_frame(self.frame);
        if let Some(callee) = self.inside.and_then(|f| f.function.as_deref()) {
            out.push_str(", inside ");
            out.push_str(callee);
        }
        out
    }
}

/// The culprit of a blocked thread, from its frames (innermost first).
pub fn culprit(frames: &[Frame]) -> Option<Culprit<'_>> {
    match frames.iter().position(is_service) {
        Some(i) => Some(Culprit {
            frame: frames.get(i)?,
            inside: i.checked_sub(1).and_then(|j| frames.get(j)),
        }),
        None => frames
            .iter()
            .find(|f| f.function.is_some())
            .map(|frame| Culprit {
                frame,
                inside: None,
            }),
    }
}

/// The culprit line of a stack: its innermost Python frame and what it is
/// inside when it has Python frames (`parse_order (orders.py:10), inside
/// time_sleep`), else the [`culprit`] native frame.
pub fn culprit_text(frames: &[Frame]) -> Option<String> {
    crate::pyview::python_culprit(frames).or_else(|| culprit(frames).map(|c| c.describe()))
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
    // A worker's episode reads as a loop's: the same words, the worker named.
    let state = match h.recovered_after_ns {
        Some(ns) => format!("recovered after {}", secs(ns)),
        None => format!("stalled for {} so far", secs(h.stall_ns)),
    };
    let recovered = h.recovered_after_ns.is_some();
    let after = if recovered {
        " (this snapshot was taken after that)"
    } else {
        ""
    };
    let marked: Vec<u32> = if h.marked.is_empty() {
        vec![h.loop_tid]
    } else {
        h.marked.to_vec()
    };
    match h.stuck_poll {
        None => {
            let _ = writeln!(
                out,
                "loop:       '{}' on thread {}: {state}{after}",
                h.loop_name, h.loop_tid
            );
            if marked != [h.loop_tid] {
                let list: Vec<String> = marked.iter().map(|t| format!("thread {t}")).collect();
                let verb = if recovered {
                    "was blocked by"
                } else {
                    "blocked by"
                };
                let _ = writeln!(out, "{:<12}{}", format!("{verb}:"), list.join(", "));
            }
        }
        Some(poll) => {
            let _ = writeln!(
                out,
                "loop:       '{}' on worker thread {}: {state}{after} (one worker of its runtime; the loop itself keeps ticking)",
                h.loop_name, h.loop_tid
            );
            let _ = writeln!(
                out,
                "worker:     thread {} of loop '{}' polling {poll} (one poll, not over)",
                h.loop_tid, h.loop_name
            );
        }
    }
    if !recovered {
        for tid in &marked {
            let Some(c) = d
                .threads
                .iter()
                .find(|t| t.tid as u32 == *tid)
                .and_then(thread_culprit)
            else {
                continue;
            };
            let whose = if marked.len() > 1 {
                format!(" [thread {tid}]")
            } else {
                String::new()
            };
            let _ = writeln!(out, "blocked in: {c}{whose}");
        }
        if let Some(c) = h.cause {
            let _ = writeln!(out, "cause:      {c}");
        }
    }
    if let Some(p) = marked.first().and_then(|t| h.polls.get(&(*t as i32))) {
        let _ = writeln!(out, "polling:    {}", p.trim_start_matches("polling "));
    }
    // The interpreter's own word on the loop's task (3.14+), companion or not.
    if let Some(task) = d
        .threads
        .iter()
        .find(|t| Some(&(t.tid as u32)) == marked.first())
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
    if d.exited {
        let _ = writeln!(
            out,
            "note:       the process exited during the snapshot; it is partial"
        );
    }
    for p in d.module_problems.iter().chain(&d.debug_notes) {
        let _ = writeln!(out, "note:       {p}");
    }
    out.push('\n');
    let is_marked = |t: &ThreadDump| marked.contains(&(t.tid as u32));
    let first = marked
        .iter()
        .filter_map(|tid| d.threads.iter().find(|t| t.tid as u32 == *tid));
    let ordered = first.chain(d.threads.iter().filter(|t| !is_marked(t)));
    let what = match h.stuck_poll {
        None => format!("STALLED LOOP '{}'", h.loop_name),
        Some(_) => format!("STALLED LOOP '{}' (one stuck worker)", h.loop_name),
    };
    let mark = if recovered {
        format!("was {what} (recovered before this snapshot)")
    } else {
        what
    };
    for t in ordered {
        let m = is_marked(t).then_some(mark.as_str());
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
        assert_eq!(
            c.describe(),
            "app::parse_order (src/orders.rs:37), inside std::thread::sleep"
        );
        // No frame of the service: the innermost frame.
        let c = culprit(&frames[..2]).expect("innermost");
        assert_eq!(c.describe(), "clock_nanosleep");
        assert!(culprit(&[]).is_none());
    }

    #[test]
    fn framework_frames_are_not_the_service_and_spawn_sites_come_second() {
        let reg = "/home/u/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f";
        let frames = [
            frame("shop::orders::price_orders", "src/orders.rs", "/srv/shop"),
            frame(
                "shop::orders::compute_handler::{async_fn#0}",
                "src/orders.rs",
                "/srv/shop",
            ),
            frame(
                "<axum::handler::future::IntoServiceFuture<F> as core::future::future::Future>::poll",
                &format!("{reg}/axum-0.8.9/src/handler/future.rs"),
                "/srv/shop",
            ),
            frame(
                "hyper::proto::h1::dispatch::Dispatcher::poll_inner",
                "",
                "/srv/shop",
            ),
        ];
        let c = culprit(&frames).expect("culprit");
        assert_eq!(
            c.describe(),
            "shop::orders::price_orders (src/orders.rs:37)",
            "innermost service frame; it calls nothing"
        );
        // The computation inlined away: the handler, inside nothing named
        // std; a dependency frame outside it is never chosen.
        let c = culprit(&frames[1..]).expect("culprit");
        assert!(c
            .describe()
            .starts_with("shop::orders::compute_handler::{async_fn#0}"));
        assert!(culprit(&frames[2..]).is_some_and(|c| c.describe().starts_with("<axum::handler")));
        // Without file names (no line tables), the path decides.
        let mut bare = frames[3].clone();
        bare.file = None;
        let mut user = frames[0].clone();
        user.file = None;
        let pair = [bare, user];
        let c = culprit(&pair).expect("culprit");
        assert_eq!(
            c.frame.function.as_deref(),
            Some("shop::orders::price_orders")
        );
        assert_eq!(
            c.inside.and_then(|f| f.function.as_deref()),
            Some("hyper::proto::h1::dispatch::Dispatcher::poll_inner")
        );
    }
}
