//! `dump PID`: the native stacks of every thread of any process, captured in
//! one stop of about a millisecond, then unwound and symbolized offline.
//! Rendering (text and JSON) lives here; the engine does the rest.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aiodebug_engine::dump::{Dump, DumpOptions, Dumper, Frame, ThreadDump};
use aiodebug_engine::proc;
use aiodebug_engine::snapshot::StopKind;
use aiodebug_engine::unwind::{FrameKind, StackEnd};
use serde_json::json;

use crate::config::DumpConfig;
use crate::exit;
use crate::pyview;

/// The dumper's options for debug info: `--debug-dir`s, and a debuginfod
/// client when `DEBUGINFOD_URLS` is set.
pub fn debug_options(debug_dirs: &[PathBuf]) -> DumpOptions {
    DumpOptions {
        debug_dirs: debug_dirs.to_vec(),
        debuginfod: aiodebug_engine::debuginfod::Debuginfod::from_env().map(std::sync::Arc::new),
        ..DumpOptions::default()
    }
}

/// Runs `dump`.
pub fn run(args: &DumpConfig) -> ExitCode {
    let loops = loop_threads(args.pid);
    run_with_loops(args, loops.as_ref())
}

/// Thread (in our PID namespace) → event loop, from the target's heartbeat;
/// `None` for a process without one (`dump` works on any process).
pub fn loop_threads(pid: i32) -> Option<HashMap<i32, String>> {
    let reading = aiodebug_engine::target::Target::open(pid)
        .and_then(|t| t.read())
        .ok()?;
    Some(
        reading
            .loops()
            .filter(|l| l.tid != 0)
            .map(|l| (l.tid as i32, l.name.clone()))
            .collect(),
    )
}

/// Runs `dump`, naming the event loop of each thread in `loops` (tid → loop
/// name, from the heartbeat) and listing those threads first.
pub fn run_with_loops(args: &DumpConfig, loops: Option<&HashMap<i32, String>>) -> ExitCode {
    let mut dumper = Dumper::with_options(DumpOptions {
        max_frames: args.max_frames as usize,
        stacks: args.stacks.into(),
        keep_snapshot: args.save.is_some(),
        ..debug_options(&args.debug_dirs)
    });
    let mut sink = Sink::new(args.output.clone(), args.force);
    // The minidump is written like --output, never replacing a file.
    let mut save = Sink::new(args.save.clone(), false);
    // --force is for --output only: a minidump is never replaced.
    let save_check = || {
        save.check()
            .map_err(|e| e.replace(" (pass --force to replace it)", ""))
    };
    if let Err(e) = sink.check().and_then(|()| save_check()) {
        crate::errln!("aiodebug-watch: {e}");
        return ExitCode::from(exit::OTHER);
    }
    let mut code = exit::OK;
    for i in 0..args.repeat {
        let dump = match dumper.dump(args.pid, loops) {
            Ok(d) => d,
            Err(e) => {
                code = exit::code_for(&e);
                crate::errln!("aiodebug-watch: {e}");
                break;
            }
        };
        // Why each thread is where it is: from what the capture recorded.
        let cause_start = std::time::Instant::now();
        let causes = crate::cause::for_dump(&dump);
        let cause_time = cause_start.elapsed();
        let causes = cause_views(&causes, args.json || args.save.is_some());
        if i == 0 && args.save.is_some() {
            if let Some(bytes) = crate::symbolize::minidump_of(&dump, &causes) {
                save.set(bytes);
            }
        }
        if args.timings {
            crate::errln!(
                "{} cause_ms={:.3}",
                timings_line(i + 1, &dump),
                (dump.timings.cause + cause_time).as_secs_f64() * 1e3
            );
        }
        let mut rendered = Vec::new();
        if args.json {
            let mut v = dump_json(&dump);
            add_causes_json(&mut v, &causes);
            rendered.extend_from_slice(v.to_string().as_bytes());
            rendered.push(b'\n');
        } else {
            if i > 0 {
                rendered.push(b'\n');
            }
            render_text(&dump, &causes, &mut rendered);
        }
        sink.write(&rendered);
        if let Some(e) = dump.exit_error() {
            crate::errln!("aiodebug-watch: {e}: the dump above is partial");
            code = exit::code_for(&e);
            break;
        }
    }
    if let Err(e) = sink.finish().and_then(|()| save.finish()) {
        crate::errln!("aiodebug-watch: {e}");
        return ExitCode::from(exit::OTHER);
    }
    // The process exits next: unmapping and freeing every cached module is
    // wasted time (a few ms for big debug files).
    std::mem::forget(dumper);
    ExitCode::from(code)
}

/// Where dumps go: stdout as they come, or a file written once at the end
/// the way hang dumps are (temporary file, no symlink followed, no existing
/// file replaced without `--force`); a dump that fails before anything was
/// captured leaves no file behind.
pub(crate) struct Sink {
    path: Option<PathBuf>,
    force: bool,
    pending: Vec<u8>,
}

impl Sink {
    /// Sets what `finish` writes.
    pub(crate) fn set(&mut self, bytes: Vec<u8>) {
        self.pending = bytes;
    }
}

impl Sink {
    fn new(path: Option<PathBuf>, force: bool) -> Sink {
        Sink {
            path,
            force,
            pending: Vec::new(),
        }
    }

    /// Refuses an --output that cannot be written, before anything is stopped.
    pub(crate) fn check(&self) -> Result<(), String> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => Err(format!(
                "cannot write {}: it is a symbolic link; refusing to follow it",
                path.display()
            )),
            Ok(m) if !m.is_file() => Err(format!(
                "cannot write {}: not a regular file",
                path.display()
            )),
            Ok(_) if !self.force => Err(format!(
                "cannot write {}: it exists (pass --force to replace it)",
                path.display()
            )),
            _ => Ok(()),
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        match &self.path {
            // A closed or full stdout is handled (and said) by `out`.
            None => {
                crate::out::bytes(bytes);
            }
            Some(_) => self.pending.extend_from_slice(bytes),
        }
    }

    pub(crate) fn finish(&mut self) -> Result<(), String> {
        match &self.path {
            Some(path) if !self.pending.is_empty() => {
                crate::watch::files::write_file(path, &self.pending, self.force)
            }
            _ => Ok(()),
        }
    }
}

fn timings_line(n: u32, d: &Dump) -> String {
    let ms = |x: Duration| x.as_secs_f64() * 1e3;
    let p = &d.timings.phases;
    format!(
        "dump {n}: threads={} freeze_ms={:.3} (stop {:.3} copy {:.3} detach {:.3}) capture_ms={:.3} (prepare {:.3}) unwind_ms={:.3} symbolize_ms={:.3} total_ms={:.3}",
        d.threads.len(),
        ms(d.timings.freeze),
        ms(p.stop),
        ms(p.copy),
        ms(p.detach),
        ms(d.timings.capture),
        ms(p.prepare),
        ms(d.timings.unwind),
        ms(d.timings.symbolize),
        ms(d.timings.total)
    )
}

// ---------------------------------------------------------------------------
// text

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {sig}"))
}

pub fn stop_text(t: &ThreadDump) -> Option<String> {
    match &t.stop {
        StopKind::Interrupted => None,
        StopKind::JobControl(sig) => Some(format!(
            "stopped by {} (job control; left stopped)",
            signal_name(*sig)
        )),
        StopKind::NotStopped(why) => {
            let mut s = format!("not captured: {why}");
            if let Some(k) = &t.kernel_wait {
                if let Some(w) = &k.wchan {
                    s.push_str(&format!("; waits in the kernel in {w}"));
                }
                if !k.stack.is_empty() {
                    s.push_str(&format!("; kernel stack: {}", k.stack.join(" <- ")));
                }
            }
            Some(s)
        }
    }
}

/// One frame as text: `#N 0xADDR in function (inlined) at file:line [module]`.
pub fn frame_line(n: usize, f: &Frame) -> String {
    if f.kind == FrameKind::Python {
        return pyview::frame_line(n, f);
    }
    let mut s = format!("#{n:<3} 0x{:016x} in ", f.address);
    let module = f.module.as_deref();
    if f.kind == FrameKind::SignalTrampoline {
        s.push_str("<signal handler called>");
    } else {
        match (&f.function, module, f.module_offset) {
            (Some(func), _, _) => s.push_str(func),
            (None, Some(m), Some(off)) => s.push_str(&format!("{}+0x{off:x}", basename(m))),
            _ => s.push_str("??"),
        }
    }
    if f.inlined {
        s.push_str(" (inlined)");
    }
    if let Some(file) = &f.file {
        s.push_str(" at ");
        s.push_str(file);
        if let Some(line) = f.line {
            s.push_str(&format!(":{line}"));
        }
    }
    if let Some(m) = module {
        s.push_str(&format!(" [{}]", basename(m)));
    }
    s
}

fn thread_header(t: &ThreadDump) -> String {
    let mut s = format!(
        "Thread {} \"{}\" state {} ({}), cpu {:.3}s",
        t.tid,
        t.name,
        t.state,
        proc::state_name(t.state),
        t.cpu_time.as_secs_f64()
    );
    if let Some(l) = &t.event_loop {
        s.push_str(&format!(", event loop \"{l}\""));
    }
    s.push_str(&pyview::thread_suffix(t));
    if let Some(stop) = stop_text(t) {
        s.push_str(&format!(", {stop}"));
    }
    s
}

/// A thread's cause as `dump` shows it: its line and its JSON (a minidump
/// keeps both, for `symbolize` to show the same without the live process).
#[derive(Debug, Clone)]
pub struct CauseView {
    /// The text after `cause: `.
    pub line: String,
    /// The `"cause"` object of `--json`.
    pub json: serde_json::Value,
}

/// The views of `causes`; their JSON only `with_json` (`null` otherwise:
/// a text dump does not pay for it).
pub fn cause_views(
    causes: &HashMap<i32, crate::cause::Cause>,
    with_json: bool,
) -> HashMap<i32, CauseView> {
    causes
        .iter()
        .map(|(tid, c)| {
            (
                *tid,
                CauseView {
                    line: c.line(),
                    json: if with_json {
                        crate::cause::json(c)
                    } else {
                        serde_json::Value::Null
                    },
                },
            )
        })
        .collect()
}

/// Adds `"cause"` to every thread object of a `dump --json` object.
pub fn add_causes_json(v: &mut serde_json::Value, causes: &HashMap<i32, CauseView>) {
    if let Some(threads) = v
        .get_mut("threads")
        .and_then(serde_json::Value::as_array_mut)
    {
        for t in threads {
            let tid = t
                .get("tid")
                .and_then(serde_json::Value::as_i64)
                .unwrap_or(-1) as i32;
            if let serde_json::Value::Object(m) = t {
                let c = causes.get(&tid).map(|c| c.json.clone());
                m.insert("cause".into(), c.unwrap_or(serde_json::Value::Null));
            }
        }
    }
}

/// Renders a dump as text, with each thread's cause under its header.
pub fn render_text(d: &Dump, causes: &HashMap<i32, CauseView>, out: &mut Vec<u8>) {
    let mut w = |line: String| {
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    };
    w(format!(
        "Process {} \"{}\": {} threads, stopped for {:.3} ms at {}",
        d.pid,
        d.name,
        d.threads.len(),
        d.timings.freeze.as_secs_f64() * 1e3,
        rfc3339(d.taken_at)
    ));
    if d.exited {
        w("Warning: the process exited during the dump; what follows is partial".to_string());
    }
    if !d.vanished.is_empty() {
        w(format!(
            "Threads that exited during the capture: {}",
            d.vanished
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for p in &d.module_problems {
        w(format!("Module without symbols: {p}"));
    }
    let notes = d.debug_notes.clone();
    if let Some(line) = pyview::process_line(d) {
        w(line);
    }
    for t in &d.threads {
        w(String::new());
        w(thread_header(t));
        if let Some(c) = causes.get(&t.tid) {
            w(format!("  cause: {}", c.line));
        }
        for (i, f) in t.frames.iter().enumerate() {
            w(frame_line(i, f));
        }
        if t.end != StackEnd::Complete && t.end != StackEnd::NotCaptured {
            w(format!("     (stack ends early: {})", t.end));
        }
        if t.stack_truncated && t.end != StackEnd::TruncatedCopy {
            w("     (stack copy truncated at the cap)".to_string());
        }
        if let Some(note) = pyview::thread_note(t) {
            w(format!("     {note}"));
        }
    }
    // Why frames have no file:line, after the stacks they explain.
    if !notes.is_empty() {
        w(String::new());
    }
    for n in notes {
        w(format!("Note: {n}"));
    }
}

// ---------------------------------------------------------------------------
// JSON (schema: README.md, "dump --json schema")

fn end_json(e: &StackEnd) -> serde_json::Value {
    let address = match e {
        StackEnd::NoUnwindInfo(a) | StackEnd::OutsideCode(a) | StackEnd::UnreadableStack(a) => {
            Some(format!("0x{a:x}"))
        }
        _ => None,
    };
    json!({"reason": e.code(), "message": e.to_string(), "address": address})
}

fn stop_json(t: &ThreadDump) -> serde_json::Value {
    match &t.stop {
        StopKind::Interrupted => json!({"kind": "interrupted"}),
        StopKind::JobControl(sig) => {
            json!({"kind": "job-control", "signal": sig, "signal_name": signal_name(*sig)})
        }
        StopKind::NotStopped(why) => json!({
            "kind": "not-stopped",
            "reason": why,
            "wchan": t.kernel_wait.as_ref().and_then(|k| k.wchan.clone()),
            "kernel_stack": t.kernel_wait.as_ref().map(|k| k.stack.clone()).unwrap_or_default(),
        }),
    }
}

fn frame_json(n: usize, f: &Frame) -> serde_json::Value {
    json!({
        "index": n,
        "address": format!("0x{:x}", f.address),
        "kind": f.kind.code(),
        "function": f.function,
        "inlined": f.inlined,
        "file": f.file,
        "line": f.line,
        "module": f.module,
        "module_offset": f.module_offset.map(|o| format!("0x{o:x}")),
    })
}

/// The JSON object of a dump.
pub fn dump_json(d: &Dump) -> serde_json::Value {
    let ms = |x: Duration| (x.as_micros() as f64) / 1e3;
    let threads: Vec<serde_json::Value> = d
        .threads
        .iter()
        .map(|t| {
            json!({
                "tid": t.tid,
                "name": t.name,
                "state": t.state.to_string(),
                "state_name": proc::state_name(t.state),
                "cpu_time_ms": ms(t.cpu_time),
                "event_loop": t.event_loop,
                "stop": stop_json(t),
                "stack_bytes": t.stack_bytes,
                "stack_truncated": t.stack_truncated,
                "end": end_json(&t.end),
                "frames": t.frames.iter().enumerate().map(|(i, f)| frame_json(i, f)).collect::<Vec<_>>(),
                "python": pyview::thread_json(t),
            })
        })
        .collect();
    let taken_ms = d
        .taken_at
        .duration_since(UNIX_EPOCH)
        .map(|x| x.as_millis() as u64)
        .unwrap_or(0);
    json!({
        "event": "dump",
        "pid": d.pid,
        "name": d.name,
        "taken_at": rfc3339(d.taken_at),
        "taken_at_unix_ms": taken_ms,
        "freeze_ms": ms(d.timings.freeze),
        "exited": d.exited,
        "vanished_tids": d.vanished,
        "module_problems": d.module_problems,
        "debug_notes": d.debug_notes,
        "python": pyview::process_json(d),
        "threads": threads,
    })
}

/// UTC time as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use aiodebug_engine::Error;

    #[test]
    fn rfc3339_formats_utc() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn frame_lines() {
        let f = Frame {
            address: 0x1234,
            kind: FrameKind::Return,
            function: Some("main".into()),
            inlined: true,
            file: Some("a.c".into()),
            line: Some(3),
            module: Some("/bin/x".into()),
            module_offset: Some(0x34),
        };
        assert_eq!(
            frame_line(2, &f),
            "#2   0x0000000000001234 in main (inlined) at a.c:3 [x]"
        );
        let unknown = Frame {
            function: None,
            inlined: false,
            file: None,
            line: None,
            ..f
        };
        assert_eq!(
            frame_line(0, &unknown),
            "#0   0x0000000000001234 in x+0x34 [x]"
        );
    }

    #[test]
    fn errors_map_to_exit_codes() {
        assert_eq!(exit::code_for(&Error::NoSuchProcess { pid: 1 }), 5);
        assert_eq!(exit::code_for(&Error::Exited { pid: 1 }), 5);
    }
}
