//! Python frames of CPython 3.11–3.14 processes, read from outside.
//!
//! - [`locate`]: find `_PyRuntime` (executable or `libpython*.so`) and the
//!   version's layout ([`layout`]: fixed for 3.11/3.12, the interpreter's own
//!   `_Py_DebugOffsets` for 3.13+, validated);
//! - [`capture`]: while the target is stopped, each thread state's frame
//!   chain as addresses (code object, instruction pointer, owner) and the
//!   GIL's holder — the only Python reads that add to the freeze;
//! - [`code`], [`linetable`]: after the detach, code objects decoded (name,
//!   qualified name, file, line table) and cached across snapshots;
//! - [`merge`]: the Python frames in place of the native eval frames.
//!
//! Everything read is untrusted ([`memory::ReadMemory`] makes every reader
//! testable on bytes): lengths, depths and lists are bounded, cycles end a
//! walk, and a layout that fails validation becomes a note naming the
//! version found; native frames are printed either way.
//!
//! Reading goes through [`PythonReader`], which a [`crate::dump::Dumper`]
//! owns: [`PythonReader::before`] arms the walk that
//! [`crate::attach::WhileStopped`] runs during the stop, and
//! [`PythonReader::after`] decodes and merges.

pub mod asyncio;
pub mod capture;
pub mod code;
pub mod evalparts;
pub mod layout;
pub mod linetable;
pub mod locate;
pub mod memory;
pub mod merge;
pub mod threadname;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::attach::{StoppedHook, WhileStopped};
use crate::dump::{Dump, ThreadDump};
use capture::{RawCapture, RawThread};
use code::CodeCache;
use layout::Layout;
use locate::RuntimeLocation;
use memory::{ProcessMemory, ReadMemory};
pub use merge::{GilState, PyFrame, StackMode};

/// What a dump says about the process's Python.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonProcess {
    /// The version (`3.11.7`), if known.
    pub version: Option<String>,
    /// The file holding the runtime.
    pub module: String,
    /// Why no (or not every) Python frame is shown, if so.
    pub note: Option<String>,
    /// Time the frame walk added to the freeze.
    pub walk: Duration,
    /// Memory pages the walk read.
    pub pages: usize,
}

/// One thread's Python state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonThread {
    /// Whether it holds the GIL, waits for it, or runs outside Python.
    pub gil: GilState,
    /// `threading.get_ident()` of the thread.
    pub thread_id: u64,
    /// Its `threading` name (`Thread(name=...)`), for threads `threading`
    /// started ([`threadname`]).
    pub name: Option<String>,
    /// Python frames, innermost first.
    pub frames: Vec<PyFrame>,
    /// The asyncio task its loop is running (3.14+, from the interpreter's
    /// asyncio debug offsets), if any.
    pub task: Option<asyncio::PyTask>,
    /// Why its frames are incomplete or shown alone, if so.
    pub note: Option<String>,
}

/// The walk run during the stop: armed by [`PythonReader::before`], its
/// result taken by [`PythonReader::after`].
#[derive(Debug, Default)]
struct FreezeWalk {
    armed: Mutex<Option<Armed>>,
    result: Mutex<Option<RawCapture>>,
}

/// What the walk during the stop needs, prepared before it.
#[derive(Debug)]
struct Armed {
    layout: Layout,
    runtime: u64,
    /// The pages a rehearsal walk of the running target read: read ahead
    /// in one system call during the stop.
    pages: Vec<u64>,
    /// Their buffer, written before the stop (no page faults during it).
    buffer: Vec<u8>,
}

impl WhileStopped for FreezeWalk {
    fn while_stopped(&self, pid: i32, tids: &[i32]) {
        let armed = self.armed.lock().ok().and_then(|mut a| a.take());
        let Some(armed) = armed else {
            return;
        };
        let t0 = std::time::Instant::now();
        let only: HashSet<u64> = tids.iter().map(|&t| t as u64).collect();
        let mem = ProcessMemory { pid };
        let mut cache = capture::new_cache(&mem);
        cache.prefetch(&armed.pages, armed.buffer);
        let mut cap = capture::capture_in(&cache, &armed.layout, armed.runtime, Some(&only));
        cap.took = t0.elapsed();
        if let Ok(mut r) = self.result.lock() {
            *r = Some(cap);
        }
    }
}

/// Reads Python frames of the processes a dumper captures; keeps the
/// located runtime and decoded code objects across snapshots.
#[derive(Debug, Default)]
pub struct PythonReader {
    /// (pid, where, its layout or why none).
    located: Option<(i32, RuntimeLocation, Result<Layout, String>)>,
    /// A pid known not to be Python.
    not_python: Option<i32>,
    /// (pid, `_asyncio`'s table or why it is unusable), once found.
    asyncio: Option<(i32, Result<asyncio::AsyncioOffsets, String>)>,
    /// (pid, the unnamed parts of the eval loop in its runtime's file, as
    /// the target's addresses: [`evalparts`]).
    eval_parts: Option<(i32, Vec<std::ops::Range<u64>>)>,
    codes: CodeCache,
    walk: Arc<FreezeWalk>,
}

impl PythonReader {
    /// A reader with empty caches.
    pub fn new() -> PythonReader {
        PythonReader::default()
    }

    /// Code objects decoded so far (cache misses).
    pub fn decoded_code_objects(&self) -> u64 {
        self.codes.decoded
    }

    /// Before a capture of `pid`: finds (or re-checks) its runtime and arms
    /// the walk. Returns the hook to pass to the capture, if `pid` is a
    /// supported Python process.
    pub fn before(&mut self, pid: i32) -> Option<StoppedHook> {
        if let Ok(mut r) = self.walk.result.lock() {
            *r = None;
        }
        if let Ok(mut a) = self.walk.armed.lock() {
            *a = None;
        }
        if self.not_python == Some(pid) {
            return None;
        }
        let mem = ProcessMemory { pid };
        let still_valid = match &self.located {
            Some((p, loc, Ok(l))) if *p == pid => {
                // Cheap re-check: the runtime still reads as the same layout.
                locate::detect_layout(&mem, loc).is_ok_and(|again| again == *l)
            }
            Some((p, _, Err(_))) => *p == pid,
            _ => false,
        };
        if !still_valid {
            self.located = None;
            let maps = crate::proc::read_maps(pid).ok()?;
            match locate::locate(pid, &maps) {
                Ok(Some(loc)) => {
                    let layout = locate::detect_layout(&mem, &loc);
                    self.eval_parts = Some((pid, eval_parts_of(pid, &maps, &loc.module)));
                    self.located = Some((pid, loc, layout));
                }
                Ok(None) => {
                    self.not_python = Some(pid);
                    return None;
                }
                Err(e) => {
                    let loc = RuntimeLocation {
                        module: String::new(),
                        runtime: 0,
                        py_version: None,
                        name_version: None,
                    };
                    self.located = Some((pid, loc, Err(e)));
                }
            }
        }
        if self.asyncio.as_ref().is_some_and(|(p, _)| *p != pid) {
            self.asyncio = None;
        }
        let (_, loc, layout) = self.located.as_ref()?;
        let layout = layout.as_ref().ok()?;
        // 3.14+: `_asyncio`'s table, looked for until the module is loaded.
        if layout.version.minor() >= 14 && self.asyncio.is_none() {
            if let Ok(maps) = crate::proc::read_maps(pid) {
                match asyncio::locate(pid, &maps, &mem, &loc.module) {
                    Ok(Some((_, t))) => self.asyncio = Some((pid, Ok(t))),
                    Ok(None) => {}
                    Err(e) => self.asyncio = Some((pid, Err(e))),
                }
            }
        }
        let mut layout = layout.clone();
        if let Some((_, Ok(a))) = &self.asyncio {
            layout.tstate_running_task = Some(a.running_task);
        }
        let layout = &layout;
        // A rehearsal on the running target finds the pages the walk will
        // need: the stop then reads them all in one call.
        let cache = capture::new_cache(&mem);
        let _ = capture::capture_in(&cache, layout, loc.runtime, None);
        let pages = cache.page_list();
        let buffer = vec![1u8; pages.len() * memory::PAGE as usize];
        if let Ok(mut a) = self.walk.armed.lock() {
            *a = Some(Armed {
                layout: layout.clone(),
                runtime: loc.runtime,
                pages,
                buffer,
            });
        }
        Some(StoppedHook(self.walk.clone()))
    }

    /// After the capture: decodes what the walk read and puts each thread's
    /// Python frames into `dump` (merged into its frames per `mode`).
    pub fn after(&mut self, dump: &mut Dump, mode: StackMode) {
        let Some((pid, loc, layout)) = &self.located else {
            return;
        };
        if *pid != dump.pid {
            return;
        }
        let raw = self.walk.result.lock().ok().and_then(|mut r| r.take());
        let version = match layout {
            Ok(l) => Some(l.version.to_string()),
            Err(_) => loc.name_version.map(|(a, b)| format!("{a}.{b}")),
        };
        let mut process = PythonProcess {
            version,
            module: loc.module.clone(),
            note: layout.as_ref().err().cloned(),
            walk: Duration::ZERO,
            pages: 0,
        };
        let (Ok(layout), Some(raw)) = (layout, raw) else {
            if process.note.is_none() {
                process.note = Some("the Python frame walk did not run".into());
            }
            dump.python = Some(process);
            return;
        };
        process.walk = raw.took;
        process.pages = raw.pages;
        process.note = raw.problem.clone();
        let (asyncio, asyncio_problem) = match &self.asyncio {
            Some((p, Ok(a))) if p == pid => (Some(*a), None),
            Some((p, Err(e))) if p == pid => (None, Some(e.clone())),
            _ => (None, None),
        };
        if let Some(e) = asyncio_problem {
            let n = format!("no asyncio tasks: {e}");
            process.note = Some(match process.note.take() {
                Some(p) => format!("{p}; {n}"),
                None => n,
            });
        }
        let mem = ProcessMemory { pid: *pid };
        let layout = layout.clone();
        let parts: &[std::ops::Range<u64>] = match &self.eval_parts {
            Some((p, parts)) if p == pid => parts,
            _ => &[],
        };
        let mut threading_globals = None;
        for t in &mut dump.threads {
            let Some(rt) = raw.threads.iter().find(|r| r.native_tid == t.tid as u64) else {
                continue;
            };
            name_eval_parts(&mut t.frames, parts);
            let g = apply(&mem, &layout, &mut self.codes, rt, t, mode);
            threading_globals = threading_globals.or(g);
            if let (Some(a), Some(p)) = (&asyncio, t.python.as_mut()) {
                if rt.running_task != 0 {
                    match asyncio::read_task(&mem, &layout, a, rt.running_task) {
                        Ok(task) => p.task = Some(task),
                        Err(e) => {
                            let n = format!("asyncio task: {e}");
                            p.note = Some(match p.note.take() {
                                Some(old) => format!("{old}; {n}"),
                                None => n,
                            });
                        }
                    }
                }
            }
        }
        // The main thread's name, through the module any started thread
        // runs in (errors: no name, as for a process without threads).
        if let Some(Ok(Some((ident, name)))) =
            threading_globals.map(|g| threadname::main_thread(&mem, &layout, g))
        {
            for t in &mut dump.threads {
                if let Some(p) = t.python.as_mut().filter(|p| p.thread_id == ident) {
                    p.name.get_or_insert(name.clone());
                }
            }
        }
        dump.python = Some(process);
    }
}

/// The unnamed parts of the eval loop in `module` (the runtime's file) of
/// process `pid`, as addresses of the target; empty when there are none or
/// the file cannot be read (the merge then falls back with its note).
fn eval_parts_of(
    pid: i32,
    maps: &[crate::proc::MapEntry],
    module: &str,
) -> Vec<std::ops::Range<u64>> {
    let Some(f) = locate::distinct_files(maps).find(|f| f.path.display().to_string() == module)
    else {
        return Vec::new();
    };
    let Ok(file) = crate::elf::open_mapped_file(pid, f.first) else {
        return Vec::new();
    };
    let Ok(mapped) = crate::mapped::MappedFile::map(&file) else {
        return Vec::new();
    };
    let bytes = mapped.bytes();
    let Some(bias) = crate::elf::load_segments(bytes)
        .ok()
        .and_then(|segs| crate::elf::load_bias(&segs, f.first))
    else {
        return Vec::new();
    };
    evalparts::eval_parts(bytes)
        .into_iter()
        .map(|r| r.start.wrapping_add(bias)..r.end.wrapping_add(bias))
        .collect()
}

/// Names the native frames without a symbol that lie in an unnamed part of
/// the eval loop (`parts`, [`evalparts`]) after it, so the merge finds them.
fn name_eval_parts(frames: &mut [crate::dump::Frame], parts: &[std::ops::Range<u64>]) {
    if parts.is_empty() {
        return;
    }
    for f in frames.iter_mut().filter(|f| f.function.is_none()) {
        // A return address may be one past its call, the part's last byte.
        let at = match f.kind {
            crate::unwind::FrameKind::Return => f.address.saturating_sub(1),
            _ => f.address,
        };
        if parts.iter().any(|r| r.contains(&at)) {
            f.function = Some(format!("{} (unnamed part)", evalparts::EVAL_FUNCTION));
        }
    }
}

/// Splits a thread's raw chain into the Python frames of each eval call,
/// innermost first, decoding code objects through `codes`; returns the
/// segments and a note on frames that could not be decoded.
pub fn segments(
    mem: &dyn ReadMemory,
    l: &Layout,
    codes: &mut CodeCache,
    raw: &RawThread,
) -> (Vec<Vec<PyFrame>>, Option<String>) {
    let mut segs = Vec::new();
    let mut cur = Vec::new();
    let mut note = None;
    for f in &raw.frames {
        // 3.12+: the entry frame each eval call pushes (3.14 also has the
        // thread's base frame): not Python code, the end of a segment.
        if l.owner_cstack == Some(f.owner) || l.owner_interpreter == Some(f.owner) {
            segs.push(std::mem::take(&mut cur));
            continue;
        }
        if f.executable != 0 {
            match codes.get(mem, l, f.executable) {
                Ok(Some(info)) => {
                    let base = i128::from(f.executable) + i128::from(l.code_adaptive);
                    let lasti = ((i128::from(f.instr) - base) / 2)
                        .clamp(i128::from(i64::MIN), i128::from(i64::MAX))
                        as i64;
                    cur.push(PyFrame {
                        name: info.name.clone(),
                        qualname: info.qualname.clone(),
                        filename: info.filename.clone(),
                        line: info
                            .lines
                            .line_at(lasti)
                            .and_then(|l| u32::try_from(l).ok()),
                        code: f.executable,
                        instr: f.instr,
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    note.get_or_insert_with(|| format!("a code object could not be read: {e}"));
                    cur.push(PyFrame {
                        name: "<unreadable>".into(),
                        qualname: "<unreadable>".into(),
                        filename: "?".into(),
                        line: None,
                        code: f.executable,
                        instr: f.instr,
                    });
                }
            }
        }
        if l.frame_is_entry.is_some() && f.is_entry {
            segs.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        segs.push(cur);
    }
    // The outermost eval call always has a frame: empty segments at the end
    // come from base frames below it, not from eval calls.
    while segs.last().is_some_and(Vec::is_empty) {
        segs.pop();
    }
    (segs, note)
}

fn apply(
    mem: &dyn ReadMemory,
    l: &Layout,
    codes: &mut CodeCache,
    raw: &RawThread,
    t: &mut ThreadDump,
    mode: StackMode,
) -> Option<u64> {
    let (segs, decode_note) = segments(mem, l, codes, raw);
    let (started, name_note) = match threadname::thread_name(mem, l, codes, &raw.frames) {
        Ok(n) => (n, None),
        Err(e) => (None, Some(format!("no thread name: {e}"))),
    };
    let globals = started.as_ref().map(|s| s.globals);
    let name = started.map(|s| s.name);
    let gil = merge::gil_state(raw.holds_gil, &t.frames);
    let (frames, merge_note) = merge::merge(&t.frames, &segs, mode);
    t.frames = frames;
    let notes: Vec<String> = [raw.problem.clone(), decode_note, merge_note, name_note]
        .into_iter()
        .flatten()
        .collect();
    t.python = Some(PythonThread {
        gil,
        thread_id: raw.thread_id,
        name,
        frames: segs.into_iter().flatten().collect(),
        task: None,
        note: (!notes.is_empty()).then(|| notes.join("; ")),
    });
    globals
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::capture::tests::state_3_11;
    use crate::python::code::tests::{code_object, l311};

    #[test]
    fn segments_split_at_entry_frames() {
        let l = l311();
        let mut mem = state_3_11(&[
            (0x5000, 0x10000, false),
            (0x5100, 0x20000, true),
            (0x5200, 0x30000, true),
        ]);
        code_object(&mut mem, &l, 0x10000, "helper", "/srv/a.py", 10);
        code_object(&mut mem, &l, 0x20000, "handler", "/srv/a.py", 20);
        code_object(&mut mem, &l, 0x30000, "main", "/srv/b.py", 30);
        let cap = capture::capture(&mem, &l, 0x1000, None);
        let mut codes = CodeCache::new();
        let (segs, note) = segments(&mem, &l, &mut codes, &cap.threads[0]);
        assert_eq!(note, None);
        let names: Vec<Vec<&str>> = segs
            .iter()
            .map(|s| s.iter().map(|f| f.name.as_str()).collect())
            .collect();
        assert_eq!(names, [vec!["helper", "handler"], vec!["main"]]);
        // Frame i's instruction is unit i (state_3_11: 2 * (i + 1) bytes past
        // the code start, prev_instr semantics); lines per code_object's table.
        assert_eq!(segs[0][0].line, Some(10));
        assert_eq!(segs[0][1].line, Some(23));
        assert_eq!(segs[1][0].line, Some(33));
        assert_eq!(segs[0][1].qualname, "Outer.handler");
    }

    #[test]
    fn garbage_code_pointers_become_notes() {
        let l = l311();
        let mem = state_3_11(&[(0x5000, 0xbad0000, true)]);
        let cap = capture::capture(&mem, &l, 0x1000, None);
        let (segs, note) = segments(&mem, &l, &mut CodeCache::new(), &cap.threads[0]);
        assert_eq!(segs[0][0].name, "<unreadable>");
        assert!(note.unwrap().contains("could not be read"));
    }

    /// Random bytes as interpreter state: every reader ends with a note or
    /// nothing, never a panic or an unbounded allocation.
    #[test]
    fn random_interpreter_state_never_panics() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..200 {
            let mut mem = memory::SliceMemory::new();
            // Pointers that mostly point back into the same region.
            let base = 0x10_0000u64;
            let bytes: Vec<u8> = (0..8192 / 8)
                .flat_map(|_| {
                    let v = next();
                    let v = if v % 3 == 0 { base + (v % 8192) } else { v };
                    v.to_le_bytes()
                })
                .collect();
            mem.add(base, bytes.clone());
            let layouts = [
                l311(),
                layout::fixed_layout(layout::Version { hex: 0x030c01f0 }).unwrap(),
                layout::from_debug_offsets(&layout::tests::debug_offsets_3_13()).unwrap(),
            ];
            let l = &layouts[round % 3];
            let cap = capture::capture(&mem, l, base + (next() % 8192), None);
            assert!(cap.threads.len() <= capture::MAX_THREAD_STATES * capture::MAX_INTERPRETERS);
            let mut codes = CodeCache::new();
            for t in &cap.threads {
                let (segs, _) = segments(&mem, l, &mut codes, t);
                assert!(segs.iter().map(Vec::len).sum::<usize>() <= t.frames.len());
            }
            // Garbage as debug offsets.
            let _ = layout::from_debug_offsets(&bytes);
            let mut with_cookie = layout::DEBUG_COOKIE.to_vec();
            with_cookie.extend_from_slice(&bytes);
            let _ = layout::from_debug_offsets(&with_cookie);
        }
    }
}
