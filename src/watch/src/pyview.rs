//! How Python frames and states show in `dump`, `watch` files and culprit
//! lines (the engine's `python` module reads them).

use aiodebug_engine::dump::{Dump, Frame, ThreadDump};
use aiodebug_engine::python::{GilState, StackMode};
use aiodebug_engine::unwind::FrameKind;
use serde_json::{json, Value};

/// `--stacks`: which frames of a Python process to show.
/// (Its `--stacks` values are defined in [`crate::cli`].)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Stacks {
    /// Python frames in place of the interpreter's eval frames, native frames between.
    #[default]
    Merged,
    /// Python frames only.
    Python,
    /// Native frames only (Python's state is not read).
    Native,
}

impl From<Stacks> for StackMode {
    fn from(s: Stacks) -> StackMode {
        match s {
            Stacks::Merged => StackMode::Merged,
            Stacks::Python => StackMode::Python,
            Stacks::Native => StackMode::Native,
        }
    }
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// A Python frame as text: `#N   [python]           in qualname at file:line`.
pub fn frame_line(n: usize, f: &Frame) -> String {
    let mut s = format!(
        "#{n:<3} {:<18} in {}",
        "[python]",
        f.function.as_deref().unwrap_or("??")
    );
    if let Some(file) = &f.file {
        s.push_str(" at ");
        s.push_str(file);
        if let Some(line) = f.line {
            s.push_str(&format!(":{line}"));
        }
    }
    s
}

/// `holds the GIL`, … for a thread header.
pub fn gil_text(g: GilState) -> &'static str {
    match g {
        GilState::Holds => "holds the GIL",
        GilState::Waits => "waits for the GIL",
        GilState::Released => "outside Python (GIL released)",
        GilState::Unknown => "GIL state unknown",
    }
}

/// What a thread header adds for a Python thread: `, Python: holds the
/// GIL, running task 'handle-order-7' (coro handle)`, or `, Python thread
/// 'db-pool-1': waits for the GIL` for a thread `threading` named.
pub fn thread_suffix(t: &ThreadDump) -> String {
    match &t.python {
        Some(p) => {
            let mut s = match &p.name {
                Some(n) => format!(", Python thread '{n}': {}", gil_text(p.gil)),
                None => format!(", Python: {}", gil_text(p.gil)),
            };
            if let Some(task) = &p.task {
                s.push_str(&format!(", running {}", task.describe()));
            }
            s
        }
        None => String::new(),
    }
}

/// The asyncio task a thread's loop runs, as the interpreter says (3.14+):
/// `task 'handle-order-7' (coro handle)`.
pub fn running_task(t: &ThreadDump) -> Option<String> {
    t.python.as_ref()?.task.as_ref().map(|k| k.describe())
}

/// The note under a thread's frames, if its Python frames are incomplete.
pub fn thread_note(t: &ThreadDump) -> Option<String> {
    t.python
        .as_ref()
        .and_then(|p| p.note.as_ref())
        .map(|n| format!("(python: {n})"))
}

/// The line under a dump's header about the process's Python.
pub fn process_line(d: &Dump) -> Option<String> {
    let p = d.python.as_ref()?;
    let mut s = match &p.version {
        Some(v) => format!("Python {v} ({})", p.module),
        None => format!("Python ({})", p.module),
    };
    if let Some(n) = &p.note {
        s.push_str(&format!(": {n}"));
    }
    Some(s)
}

/// Whether a module file is the interpreter itself (`python3.13`,
/// `libpython3.11.so.1.0`), not an extension (`_hashlib.cpython-313-….so`).
fn is_interpreter(base: &str) -> bool {
    base.starts_with("python") || base.starts_with("libpython")
}

/// Names of the interpreter's call machinery between a Python frame and
/// the C function it called: never "what it is inside".
fn is_call_machinery(name: &str) -> bool {
    const PREFIXES: [&str; 14] = [
        "_PyEval_",
        "PyEval_",
        "_PyObject_Call",
        "_PyObject_Vectorcall",
        "_PyObject_MakeTpCall",
        "PyObject_Call",
        "PyObject_Vectorcall",
        "_PyFunction_Vectorcall",
        "_PyVectorcall_Call",
        "cfunction_",
        "method_vectorcall",
        "vectorcall_",
        "slot_tp_call",
        "_Py_",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p))
}

/// For a stack with Python frames: `parse_order (orders_server.py:10),
/// inside _hashlib_openssl_sha256` — the innermost Python frame, and the
/// outermost named native function it called (past the call machinery).
pub fn python_culprit(frames: &[Frame]) -> Option<String> {
    let i = frames.iter().position(|f| f.kind == FrameKind::Python)?;
    let f = frames.get(i)?;
    let func = f.function.as_deref().unwrap_or("??");
    let mut s = match (&f.file, f.line) {
        (Some(file), Some(line)) => format!("{func} ({}:{line})", basename(file)),
        (Some(file), None) => format!("{func} ({})", basename(file)),
        _ => func.to_string(),
    };
    // Outward in: the first frame past the call machinery. Unnamed frames
    // of the interpreter itself (a stripped libpython) say nothing; an
    // unnamed frame of an extension module is named by its module.
    let inside = frames.get(..i).unwrap_or(&[]).iter().rev().find_map(|f| {
        match (f.function.as_deref(), f.module.as_deref()) {
            (Some(n), _) if is_call_machinery(n) => None,
            (Some(n), _) => Some(n.to_string()),
            (None, Some(m)) if !is_interpreter(basename(m)) => Some(basename(m).to_string()),
            _ => None,
        }
    });
    if let Some(n) = inside {
        s.push_str(&format!(", inside {n}"));
    }
    Some(s)
}

/// The `python` object of a thread in `dump --json`.
pub fn thread_json(t: &ThreadDump) -> Value {
    match &t.python {
        None => Value::Null,
        Some(p) => json!({
            "gil": p.gil.code(),
            "thread_id": p.thread_id,
            "name": p.name,
            "task": p.task.as_ref().map(|k| json!({"name": k.name, "coro": k.coro})),
            "note": p.note,
            "frames": p.frames.iter().enumerate().map(|(i, f)| json!({
                "index": i,
                "function": f.name,
                "qualname": f.qualname,
                "file": f.filename,
                "line": f.line,
            })).collect::<Vec<_>>(),
        }),
    }
}

/// The `python` object of a dump in `dump --json`.
pub fn process_json(d: &Dump) -> Value {
    match &d.python {
        None => Value::Null,
        Some(p) => json!({
            "version": p.version,
            "module": p.module,
            "note": p.note,
            "walk_ms": (p.walk.as_micros() as f64) / 1e3,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(kind: FrameKind, func: &str, file: Option<&str>, line: Option<u32>) -> Frame {
        Frame {
            address: 0x1000,
            kind,
            function: Some(func.into()),
            inlined: false,
            file: file.map(Into::into),
            line,
            module: None,
            module_offset: None,
        }
    }

    #[test]
    fn the_python_culprit_names_what_it_is_inside() {
        let frames = [
            f(FrameKind::Pc, "sha256_block_data_order_avx2", None, None),
            f(FrameKind::Return, "EVP_Digest", None, None),
            f(FrameKind::Return, "_hashlib_openssl_sha256", None, None),
            f(
                FrameKind::Return,
                "cfunction_vectorcall_FASTCALL_KEYWORDS",
                None,
                None,
            ),
            f(FrameKind::Return, "_PyObject_VectorcallTstate", None, None),
            f(
                FrameKind::Python,
                "parse_order",
                Some("/srv/orders_server.py"),
                Some(10),
            ),
            f(
                FrameKind::Python,
                "handle",
                Some("/srv/orders_server.py"),
                Some(16),
            ),
        ];
        assert_eq!(
            python_culprit(&frames).unwrap(),
            "parse_order (orders_server.py:10), inside _hashlib_openssl_sha256"
        );
        assert_eq!(
            python_culprit(&frames[5..]).unwrap(),
            "parse_order (orders_server.py:10)"
        );
        assert!(python_culprit(&frames[..5]).is_none());
        // Stripped: the extension's module names it; the interpreter's own
        // unnamed frames do not.
        let mut stripped = frames.to_vec();
        for (i, m) in [
            (
                2,
                "/usr/lib/python3/_hashlib.cpython-313-x86_64-linux-gnu.so",
            ),
            (3, "/usr/bin/python3.13"),
        ] {
            stripped[i].function = None;
            stripped[i].module = Some(m.into());
        }
        stripped[4].function = None;
        stripped[4].module = Some("/usr/bin/python3.13".into());
        assert_eq!(
            python_culprit(&stripped).unwrap(),
            "parse_order (orders_server.py:10), inside _hashlib.cpython-313-x86_64-linux-gnu.so"
        );
        assert_eq!(
            frame_line(3, &frames[5]),
            "#3   [python]           in parse_order at /srv/orders_server.py:10"
        );
    }
}
