//! Merging a thread's Python frames into its native stack (pure).
//!
//! Each call of `_PyEval_EvalFrameDefault` evaluates a run of Python frames:
//! since 3.11 a Python-to-Python call stays in the same C call, and a new C
//! call starts at an *entry* frame (3.11: `is_entry`; 3.12+: a frame of its
//! own owned by the C stack). So the Python chain splits into one segment per
//! eval call, innermost first, and the native stack has one
//! `_PyEval_EvalFrameDefault` frame per segment. Where both counts agree,
//! each native eval frame (with the frames inlined into it) is replaced by its
//! segment; the native frames between them — C extensions, the call
//! machinery — stay. Where they do not (a thread caught entering or leaving
//! an eval call, no symbols for libpython), the Python frames are shown
//! alone and the note says why.

use crate::dump::Frame;
use crate::unwind::FrameKind;

/// Which frames a stack shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StackMode {
    /// Python frames in place of the interpreter's eval frames (default).
    #[default]
    Merged,
    /// Python frames only.
    Python,
    /// Native frames only (nothing of Python is read).
    Native,
}

/// One Python frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PyFrame {
    /// `co_name`.
    pub name: String,
    /// `co_qualname`.
    pub qualname: String,
    /// `co_filename`.
    pub filename: String,
    /// The line being executed.
    pub line: Option<u32>,
    /// The code object's address.
    pub code: u64,
    /// The instruction pointer's address.
    pub instr: u64,
}

impl PyFrame {
    /// As a frame of a dump (`kind` [`FrameKind::Python`]).
    pub fn to_frame(&self) -> Frame {
        Frame {
            address: self.instr,
            kind: FrameKind::Python,
            function: Some(self.qualname.clone()),
            inlined: false,
            file: Some(self.filename.clone()),
            line: self.line,
            module: None,
            module_offset: None,
        }
    }
}

/// Whether a thread holds the GIL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GilState {
    /// It holds the GIL (it runs Python, or C code that keeps it).
    Holds,
    /// It waits to take the GIL.
    Waits,
    /// It released the GIL: it runs outside Python (I/O, sleep, C code).
    Released,
    /// Unknown.
    Unknown,
}

impl GilState {
    /// Short name (`holds`, `waits`, `released`, `unknown`), as in JSON.
    pub fn code(self) -> &'static str {
        match self {
            GilState::Holds => "holds",
            GilState::Waits => "waits",
            GilState::Released => "released",
            GilState::Unknown => "unknown",
        }
    }
}

/// Whether the function of a native frame is the interpreter's eval loop
/// (`.cold` parts included).
pub fn is_eval_frame(f: &Frame) -> bool {
    f.function
        .as_deref()
        .is_some_and(|n| n.starts_with("_PyEval_EvalFrameDefault"))
}

/// Functions a thread is in while it takes the GIL.
const GIL_TAKERS: [&str; 6] = [
    "take_gil",
    "PyEval_RestoreThread",
    "PyEval_AcquireThread",
    "PyEval_AcquireLock",
    "PyGILState_Ensure",
    "_PyThreadState_Attach",
];

fn in_libc(f: &Frame) -> bool {
    let m = f.module.as_deref().unwrap_or("");
    let base = m.rsplit('/').next().unwrap_or(m);
    base.starts_with("libc.so") || base.starts_with("libc-") || base.starts_with("libpthread")
}

/// The GIL state of a thread: `holds` from the GIL's last holder at the
/// stop; otherwise a thread whose native stack is in one of the functions
/// that take the GIL (or waits in libc right under the eval loop, where
/// `take_gil` is inlined or has no symbol) waits for it.
pub fn gil_state(holds: Option<bool>, native: &[Frame]) -> GilState {
    if holds == Some(true) {
        return GilState::Holds;
    }
    if native
        .iter()
        .any(|f| GIL_TAKERS.iter().any(|t| f.function.as_deref() == Some(*t)))
    {
        return GilState::Waits;
    }
    let first_outside_libc = native.iter().position(|f| !in_libc(f));
    if let Some(i) = first_outside_libc {
        if i > 0 && native.get(i).is_some_and(is_eval_frame) {
            return GilState::Waits;
        }
    }
    match holds {
        Some(false) => GilState::Released,
        _ => GilState::Unknown,
    }
}

/// Index ranges of the native frames that make up each eval call: the eval
/// frame and the frames inlined into it (same address, `inlined`).
fn eval_groups(native: &[Frame]) -> Vec<(usize, usize)> {
    let mut groups = Vec::new();
    let mut i = 0;
    while i < native.len() {
        let mut j = i;
        while native.get(j).is_some_and(|f| f.inlined)
            && native
                .get(j + 1)
                .is_some_and(|n| n.address == native[j].address)
        {
            j += 1;
        }
        if native.get(j).is_some_and(is_eval_frame) {
            groups.push((i, j));
        }
        i = j + 1;
    }
    groups
}

/// The frames to show for `mode`, and a note when the merge fell back to
/// Python frames alone. `segments`: the Python frames of each eval call,
/// innermost first.
pub fn merge(
    native: &[Frame],
    segments: &[Vec<PyFrame>],
    mode: StackMode,
) -> (Vec<Frame>, Option<String>) {
    let python_only = || {
        segments
            .iter()
            .flatten()
            .map(PyFrame::to_frame)
            .collect::<Vec<_>>()
    };
    match mode {
        StackMode::Native => return (native.to_vec(), None),
        StackMode::Python => return (python_only(), None),
        StackMode::Merged => {}
    }
    if segments.is_empty() {
        return (native.to_vec(), None);
    }
    let groups = eval_groups(native);
    if groups.len() != segments.len() {
        let unnamed = native.iter().filter(|f| f.function.is_none()).count();
        let why = if !groups.is_empty() || native.is_empty() {
            String::new()
        } else if unnamed == native.len() {
            " (no symbols for the interpreter?)".to_string()
        } else if unnamed > 0 {
            // A stripped build keeps only the exported symbols (.dynsym),
            // and GCC may move most of the eval loop into an unnamed part
            // (`.cold`, its own FDE) far from the symbol (Debian's
            // python3.14: 1196 bytes named, the loop in 84 KB unnamed).
            // `evalparts` names the parts it can prove; a frame here is in
            // one it could not.
            format!(
                " ({unnamed} native frame(s) have no symbol: the eval loop may run in an unnamed \
                 part of _PyEval_EvalFrameDefault not recognised as its; the interpreter's \
                 debug symbols would name it)"
            )
        } else {
            String::new()
        };
        let note = format!(
            "Python frames only: the native stack has {} _PyEval_EvalFrameDefault frame(s) for {} Python entry frame(s){why}",
            groups.len(),
            segments.len(),
        );
        return (python_only(), Some(note));
    }
    let mut out = Vec::with_capacity(native.len() + segments.iter().map(Vec::len).sum::<usize>());
    let mut next = 0usize;
    for ((start, end), seg) in groups.iter().zip(segments) {
        out.extend(native.get(next..*start).unwrap_or(&[]).iter().cloned());
        out.extend(seg.iter().map(PyFrame::to_frame));
        next = end + 1;
    }
    out.extend(native.get(next..).unwrap_or(&[]).iter().cloned());
    (out, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn native(func: &str, addr: u64, inlined: bool, module: &str) -> Frame {
        Frame {
            address: addr,
            kind: FrameKind::Return,
            function: (!func.is_empty()).then(|| func.to_string()),
            inlined,
            file: None,
            line: None,
            module: Some(module.to_string()),
            module_offset: Some(addr & 0xfff),
        }
    }

    fn py(name: &str, line: u32) -> PyFrame {
        PyFrame {
            name: name.into(),
            qualname: name.into(),
            filename: "app.py".into(),
            line: Some(line),
            code: 0x1000,
            instr: 0x1100,
        }
    }

    fn names(frames: &[Frame]) -> Vec<String> {
        frames
            .iter()
            .map(|f| f.function.clone().unwrap_or_else(|| "??".into()))
            .collect()
    }

    const LIBPY: &str = "/usr/lib/libpython3.11.so.1.0";
    const LIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";

    fn sample() -> Vec<Frame> {
        vec![
            native("__GI___clock_nanosleep", 0x10, false, LIBC),
            native("pysleep", 0x20, true, LIBPY),
            native("time_sleep", 0x20, false, LIBPY),
            native("cfunction_vectorcall_O", 0x30, false, LIBPY),
            native("_PyObject_VectorcallTstate", 0x40, true, LIBPY),
            native("_PyEval_EvalFrameDefault", 0x40, false, LIBPY),
            native("_PyEval_Vector", 0x50, false, LIBPY),
            native("_asyncio_Task___step", 0x60, false, "/x/_asyncio.so"),
            native("_PyEval_EvalFrameDefault", 0x70, false, LIBPY),
            native("main", 0x80, false, "/usr/bin/python3.11"),
        ]
    }

    #[test]
    fn each_eval_frame_is_replaced_by_its_segment() {
        let segs = vec![vec![py("helper", 3), py("handler", 9)], vec![py("run", 1)]];
        let (frames, note) = merge(&sample(), &segs, StackMode::Merged);
        assert_eq!(note, None);
        assert_eq!(
            names(&frames),
            [
                "__GI___clock_nanosleep",
                "pysleep",
                "time_sleep",
                "cfunction_vectorcall_O",
                "helper",
                "handler",
                "_PyEval_Vector",
                "_asyncio_Task___step",
                "run",
                "main"
            ]
        );
        assert_eq!(frames[4].kind, FrameKind::Python);
        assert_eq!(frames[4].line, Some(3));
    }

    #[test]
    fn mismatched_counts_fall_back_to_python_only() {
        let segs = vec![vec![py("helper", 3)]];
        let (frames, note) = merge(&sample(), &segs, StackMode::Merged);
        assert_eq!(names(&frames), ["helper"]);
        assert!(note
            .unwrap()
            .contains("2 _PyEval_EvalFrameDefault frame(s) for 1"));
        // No symbols at all.
        let stripped: Vec<Frame> = sample()
            .into_iter()
            .map(|f| Frame {
                function: None,
                ..f
            })
            .collect();
        let (_, note) = merge(&stripped, &segs, StackMode::Merged);
        assert!(note.unwrap().contains("no symbols"));
        // Exported names only (Debian's 3.14): the eval loop's frames are
        // unnamed, the others not.
        let exported: Vec<Frame> = sample()
            .into_iter()
            .map(|f| Frame {
                function: f
                    .function
                    .filter(|n| !n.starts_with("_PyEval_EvalFrameDefault")),
                ..f
            })
            .collect();
        let (frames, note) = merge(&exported, &segs, StackMode::Merged);
        assert_eq!(names(&frames), ["helper"]);
        let note = note.unwrap();
        assert!(
            note.contains("0 _PyEval_EvalFrameDefault frame(s) for 1")
                && note.contains("2 native frame(s) have no symbol"),
            "{note}"
        );
    }

    #[test]
    fn modes() {
        let segs = vec![vec![py("helper", 3), py("handler", 9)], vec![py("run", 1)]];
        assert_eq!(merge(&sample(), &segs, StackMode::Native).0, sample());
        assert_eq!(
            names(&merge(&sample(), &segs, StackMode::Python).0),
            ["helper", "handler", "run"]
        );
        // A thread without Python frames keeps its native stack.
        assert_eq!(merge(&sample(), &[], StackMode::Merged).0, sample());
    }

    #[test]
    fn gil_states() {
        assert_eq!(gil_state(Some(true), &sample()), GilState::Holds);
        assert_eq!(gil_state(Some(false), &sample()), GilState::Released);
        assert_eq!(gil_state(None, &sample()), GilState::Unknown);
        let waiting = vec![
            native("__futex_abstimed_wait_common", 0x10, false, LIBC),
            native("___pthread_cond_timedwait64", 0x18, false, LIBC),
            native("take_gil", 0x20, false, LIBPY),
            native("PyEval_RestoreThread", 0x30, false, LIBPY),
        ];
        assert_eq!(gil_state(Some(false), &waiting), GilState::Waits);
        // Stripped: libc wait right under the eval loop.
        let stripped = vec![
            native("__futex_abstimed_wait_common", 0x10, false, LIBC),
            native("", 0x20, false, LIBPY),
            native("_PyEval_EvalFrameDefault", 0x30, false, LIBPY),
        ];
        assert_eq!(gil_state(Some(false), &stripped), GilState::Released);
        let under_eval = vec![
            native("__futex_abstimed_wait_common", 0x10, false, LIBC),
            native("_PyEval_EvalFrameDefault", 0x30, false, LIBPY),
        ];
        assert_eq!(gil_state(Some(false), &under_eval), GilState::Waits);
    }
}
