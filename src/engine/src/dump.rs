//! Stack dumps of every thread of a process: capture ([`crate::attach`]),
//! then, with the target running again, unwind ([`crate::unwind`]) and
//! symbolize ([`crate::symbols`]).
//!
//! A [`Dumper`] is long-lived: module files, debug info, unwind tables and
//! symbolized addresses are cached in it and reused by the next dump (a hang
//! episode takes several). It is not `Send`: create it on the thread that
//! uses it (ptrace requests must come from one thread anyway).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::attach::{self, SnapshotOptions};
use crate::cause::{
    self,
    capture::{CauseFacts, CauseScope},
    collect::{Collector, Live},
    syscalls::Remembered,
};
use crate::debuginfod::Debuginfod;
use crate::error::{Error, Result};
use crate::module::{DebugSource, ModuleCache, TargetFiles};
use crate::python::{PythonProcess, PythonReader, PythonThread, StackMode};
use crate::snapshot::{ProcessSnapshot, StopKind};
use crate::symbols::Symbolizer;
use crate::unwind::{FrameKind, RawFrame, StackEnd, StackUnwinder, Unwound, DEFAULT_MAX_FRAMES};

/// Options of a [`Dumper`].
#[derive(Debug, Clone)]
pub struct DumpOptions {
    /// Limits of the capture.
    pub snapshot: SnapshotOptions,
    /// Sanity cap on frames per thread (default 4096).
    pub max_frames: usize,
    /// Which frames of a Python process to show (default: merged).
    pub stacks: StackMode,
    /// Extra directories of debug files laid out as `/usr/lib/debug`
    /// (`DIR/.build-id/xx/yyyy.debug`), searched after the target's and the
    /// host's (default: none).
    pub debug_dirs: Vec<PathBuf>,
    /// Asked by build-id for debug info found in none of those (from
    /// `DEBUGINFOD_URLS`: [`Debuginfod::from_env`]; default: none). Each dump
    /// gets its time budget afresh.
    pub debuginfod: Option<Arc<Debuginfod>>,
    /// Which threads get their cause's facts captured (default: all).
    pub cause: CauseScope,
    /// Keep the snapshot of each dump in [`Dump::snapshot`] (default: no;
    /// it holds every copied stack), for a minidump to be written of it.
    pub keep_snapshot: bool,
}

impl Default for DumpOptions {
    fn default() -> Self {
        DumpOptions {
            snapshot: SnapshotOptions::default(),
            max_frames: DEFAULT_MAX_FRAMES,
            stacks: StackMode::default(),
            debug_dirs: Vec::new(),
            debuginfod: None,
            cause: CauseScope::default(),
            keep_snapshot: false,
        }
    }
}

/// One frame of a dumped stack (an inlined call is a frame of its own, at
/// the same address as the function it was inlined into).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The code address (for a return address, the address after the call).
    pub address: u64,
    /// What the address is.
    pub kind: FrameKind,
    /// Demangled function name; `None` if unknown.
    pub function: Option<String>,
    /// This function was inlined into the next frame.
    pub inlined: bool,
    /// Source file.
    pub file: Option<String>,
    /// Source line.
    pub line: Option<u32>,
    /// The module (file path, or `[vdso]`), if the address is in one.
    pub module: Option<String>,
    /// Address as stated in the module file (`module+0xoffset`).
    pub module_offset: Option<u64>,
}

/// One thread of a dump.
#[derive(Debug, Clone)]
pub struct ThreadDump {
    /// Thread id.
    pub tid: i32,
    /// Thread name.
    pub name: String,
    /// Scheduler state letter (`R`, `S`, `D`, `T`, …) just before the stop.
    pub state: char,
    /// CPU time used so far.
    pub cpu_time: Duration,
    /// The event loop running on this thread, if the caller knows one.
    pub event_loop: Option<String>,
    /// How the thread was held.
    pub stop: StopKind,
    /// Frames, innermost first.
    pub frames: Vec<Frame>,
    /// Why the stack ended.
    pub end: StackEnd,
    /// The stack copy was cut at the cap.
    pub stack_truncated: bool,
    /// Bytes of stack copied.
    pub stack_bytes: usize,
    /// For a thread that could not be stopped: where it waits in the kernel.
    pub kernel_wait: Option<crate::snapshot::KernelWait>,
    /// Registers at the stop (the system call and its arguments, for
    /// [`crate::cause`]), if the thread was stopped.
    pub regs: Option<crate::snapshot::Registers>,
    /// Its Python state, for a thread of a CPython process.
    pub python: Option<PythonThread>,
    /// The native frames as the unwinder gave them (before symbolization
    /// and the Python merge): what a minidump records of the live unwinding.
    pub unwound: Vec<RawFrame>,
}

/// Where the time of one dump went.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// Longest time any thread was held (first interrupt to last detach).
    pub freeze: Duration,
    /// The whole capture, /proc reads included.
    pub capture: Duration,
    /// The capture's phases.
    pub phases: crate::snapshot::CapturePhases,
    /// Unwinding, offline.
    pub unwind: Duration,
    /// Symbolizing (including loading modules and debug info).
    pub symbolize: Duration,
    /// Reading the causes' facts after the detach ([`DumpOptions::cause`]).
    pub cause: Duration,
    /// Everything.
    pub total: Duration,
}

/// A symbolized stack dump of every thread of a process.
#[derive(Debug, Clone)]
pub struct Dump {
    /// Process id.
    pub pid: i32,
    /// Process name.
    pub name: String,
    /// When the target was stopped.
    pub taken_at: SystemTime,
    /// Threads: the ones running an event loop first, then the main thread,
    /// then by thread id.
    pub threads: Vec<ThreadDump>,
    /// Threads that exited during the capture.
    pub vanished: Vec<i32>,
    /// The process exited during the capture: the dump is partial.
    pub exited: bool,
    /// Modules that could not be used (path: reason).
    pub module_problems: Vec<String>,
    /// Why frames lack file:line: one sentence per module of a frame shown
    /// as `module+0x…` (no debug info and no symbol), and per module whose
    /// debug info debuginfod did not deliver; each names the build-id.
    pub debug_notes: Vec<String>,
    /// The process's Python, if it is a CPython process.
    pub python: Option<PythonProcess>,
    /// What the causes of its threads need, captured with the snapshot
    /// ([`crate::cause::capture::thread_cause`] computes them offline).
    pub cause: CauseFacts,
    /// Where the time went.
    pub timings: Timings,
    /// The snapshot the dump was made of, when [`DumpOptions::keep_snapshot`]
    /// is set (live dumps only).
    pub snapshot: Option<Arc<ProcessSnapshot>>,
}

impl Dump {
    /// The error to report for a partial dump (process exited mid-dump).
    pub fn exit_error(&self) -> Option<Error> {
        self.exited.then_some(Error::Exited { pid: self.pid })
    }
}

/// Takes stack dumps; keeps every cache across dumps.
#[derive(Debug, Default)]
pub struct Dumper {
    options: DumpOptions,
    symbolizer: Symbolizer,
    unwinder: StackUnwinder,
    python: PythonReader,
    /// Facts of module files, shared with the capture thread.
    modules: Arc<Mutex<ModuleCache>>,
    /// The blocking calls the last capture of each process saw (a sleep
    /// our stop interrupted resumes as `restart_syscall`).
    remembered: HashMap<i32, HashMap<i32, Remembered>>,
}

/// Most processes whose last blocking calls a dumper remembers (past it,
/// it forgets them all: a resumed sleep is then named `restart_syscall`).
const MAX_REMEMBERED: usize = 1024;

impl Dumper {
    /// A dumper with default options.
    pub fn new() -> Dumper {
        Dumper::with_options(DumpOptions::default())
    }

    /// A dumper with `options`.
    pub fn with_options(options: DumpOptions) -> Dumper {
        let mut unwinder = StackUnwinder::new();
        unwinder.max_frames = options.max_frames;
        Dumper {
            options,
            symbolizer: Symbolizer::new(),
            unwinder,
            python: PythonReader::new(),
            modules: Arc::default(),
            remembered: HashMap::new(),
        }
    }

    /// Number of module files cached so far.
    pub fn cached_modules(&self) -> usize {
        self.symbolizer.cached_modules()
    }

    /// Captures `pid` and symbolizes every thread. `loops` maps thread ids to
    /// the event loop running on them (from the heartbeat), if known.
    ///
    /// A process exiting mid-dump gives `Ok` with [`Dump::exited`] set (see
    /// [`Dump::exit_error`]) when anything was captured.
    pub fn dump(&mut self, pid: i32, loops: Option<&HashMap<i32, String>>) -> Result<Dump> {
        self.capture(pid, None, loops)
    }

    /// Captures only the threads `tids` of `pid` (the rest keep running) and
    /// symbolizes them.
    pub fn dump_threads(&mut self, pid: i32, tids: &[i32]) -> Result<Dump> {
        self.capture(pid, Some(tids), None)
    }

    /// A capture with the Python walk (unless native stacks were asked for),
    /// then the offline work.
    fn capture(
        &mut self,
        pid: i32,
        only: Option<&[i32]>,
        loops: Option<&HashMap<i32, String>>,
    ) -> Result<Dump> {
        let start = Instant::now();
        let mode = self.options.stacks;
        let hook = match mode {
            StackMode::Native => None,
            _ => self.python.before(pid),
        };
        let opts = SnapshotOptions {
            only_threads: only
                .map(<[i32]>::to_vec)
                .or_else(|| self.options.snapshot.only_threads.clone()),
            while_stopped: hook,
            modules: Some(self.modules.clone()),
            ..self.options.snapshot.clone()
        };
        let mut snap = attach::snapshot(pid, &opts)?;
        let cause_start = Instant::now();
        self.capture_cause(&mut snap, only.is_some(), loops);
        let cause_time = cause_start.elapsed();
        let mut dump = self.process(&snap, loops);
        dump.timings.cause = cause_time;
        if mode != StackMode::Native {
            self.python.after(&mut dump, mode);
        }
        dump.timings.total = start.elapsed();
        if self.options.keep_snapshot {
            dump.snapshot = Some(Arc::new(snap));
        }
        Ok(dump)
    }

    /// Reads what the causes of the snapshot's threads need, right after
    /// its detach (see [`crate::cause::capture`]), as
    /// [`DumpOptions::cause`] asks; remembers their blocking calls.
    fn capture_cause(
        &mut self,
        snap: &mut ProcessSnapshot,
        chosen: bool,
        loops: Option<&HashMap<i32, String>>,
    ) {
        let pid = snap.pid;
        let previous = self.remembered.remove(&pid).unwrap_or_default();
        let scope = self.options.cause;
        let wanted = |tid: i32| match scope {
            CauseScope::None => false,
            CauseScope::All => true,
            // No loop named: every thread (a cause must not lose its facts).
            CauseScope::Loops => chosen || loops.map_or(true, |l| l.contains_key(&tid)),
        };
        if scope != CauseScope::None {
            let mut col = Collector::with_modules(Live { pid }, snap.modules.clone());
            snap.cause = cause::capture::capture(
                &mut col,
                &snap.threads,
                &wanted,
                &previous,
                scope == CauseScope::Loops,
            );
        }
        if self.remembered.len() >= MAX_REMEMBERED {
            self.remembered.clear();
        }
        self.remembered
            .insert(pid, cause::capture::remember(&snap.threads, &previous));
    }

    /// Loads every module `pid` maps, with its symbols and debug info, into
    /// the caches, without stopping the process: the first dump of a hang
    /// then costs only the capture and a warm symbolization. Returns how many
    /// modules are cached.
    pub fn prepare(&mut self, pid: i32) -> Result<usize> {
        let mut maps = crate::proc::read_maps(pid)?;
        maps.sort_by_key(|m| m.start);
        let modules = {
            let mut cache = self.modules.lock().unwrap_or_else(|e| e.into_inner());
            crate::module::capture(pid, &maps, &mut cache)
        };
        let files = self.files(TargetFiles::open(pid));
        let space = self.symbolizer.space(&modules, &files);
        let starts: Vec<u64> = space
            .modules
            .iter()
            .filter(|m| m.image.is_some())
            .map(|m| m.start)
            .collect();
        // One lookup per module loads its symbol table and debug info.
        for addr in starts {
            let _ = self.symbolizer.symbolize(&space, addr, false);
        }
        Ok(self.symbolizer.cached_modules())
    }

    /// The target's files plus this dumper's debug directories.
    fn files(&self, mut files: TargetFiles) -> TargetFiles {
        files
            .debug_dirs
            .extend(self.options.debug_dirs.iter().cloned());
        if files.debuginfod.is_none() {
            files.debuginfod = self.options.debuginfod.clone();
        }
        if let Some(d) = &files.debuginfod {
            d.begin();
        }
        files
    }

    /// Unwinds and symbolizes a snapshot taken earlier, with the files it
    /// captured (its root) and [`DumpOptions::debug_dirs`].
    pub fn process(
        &mut self,
        snap: &ProcessSnapshot,
        loops: Option<&HashMap<i32, String>>,
    ) -> Dump {
        let files = self.files(snap.files.clone());
        self.process_with(snap, loops, &files)
    }

    /// Unwinds and symbolizes a snapshot taken earlier, finding module and
    /// debug files through `source`: a pure function of the snapshot and
    /// those files (the target may be gone; nothing of its memory or
    /// `/proc` is read).
    pub fn process_with(
        &mut self,
        snap: &ProcessSnapshot,
        loops: Option<&HashMap<i32, String>>,
        source: &dyn DebugSource,
    ) -> Dump {
        self.process_recorded(snap, loops, source, &HashMap::new())
    }

    /// As [`Dumper::process_with`], but a thread whose unwinding is in
    /// `recorded` (by tid: a minidump's record of the live unwinding) keeps
    /// those frames instead of being unwound again: offline, a module may
    /// have only its `.debug` file, whose `.eh_frame` is empty (`NOBITS`).
    pub fn process_recorded(
        &mut self,
        snap: &ProcessSnapshot,
        loops: Option<&HashMap<i32, String>>,
        source: &dyn DebugSource,
        recorded: &HashMap<i32, Unwound>,
    ) -> Dump {
        let t0 = Instant::now();
        if let Some(d) = source.debuginfod() {
            d.begin();
        }
        let space = self.symbolizer.space(&snap.modules, source);
        let module_problems = space
            .modules
            .iter()
            .filter_map(|m| m.problem.as_ref().map(|p| format!("{}: {p}", m.name)))
            .collect();
        let mut unwind_time = Duration::ZERO;
        let mut threads = Vec::with_capacity(snap.threads.len());
        for t in &snap.threads {
            let u0 = Instant::now();
            let unwound = match recorded.get(&t.tid) {
                Some(u) => u.clone(),
                None => self.unwinder.unwind(&space, t),
            };
            unwind_time += u0.elapsed();
            let mut frames = Vec::with_capacity(unwound.frames.len());
            for raw in &unwound.frames {
                let sym = self
                    .symbolizer
                    .symbolize(&space, raw.address, raw.kind.is_return());
                if raw.kind == FrameKind::SignalTrampoline || sym.frames.is_empty() {
                    frames.push(Frame {
                        address: raw.address,
                        kind: raw.kind,
                        function: sym.frames.last().and_then(|f| f.function.clone()),
                        inlined: false,
                        file: sym.frames.last().and_then(|f| f.file.clone()),
                        line: sym.frames.last().and_then(|f| f.line),
                        module: sym.module,
                        module_offset: sym.module_offset,
                    });
                    continue;
                }
                let n = sym.frames.len();
                for (i, f) in sym.frames.into_iter().enumerate() {
                    frames.push(Frame {
                        address: raw.address,
                        kind: raw.kind,
                        function: f.function,
                        inlined: i + 1 < n,
                        file: f.file,
                        line: f.line,
                        module: sym.module.clone(),
                        module_offset: sym.module_offset,
                    });
                }
            }
            threads.push(ThreadDump {
                tid: t.tid,
                name: t.name.clone(),
                state: t.state,
                cpu_time: t.cpu_time,
                event_loop: loops.and_then(|l| l.get(&t.tid).cloned()),
                stop: t.stop.clone(),
                frames,
                end: unwound.end,
                stack_truncated: t.stack_truncated,
                stack_bytes: t.stack.len(),
                kernel_wait: t.kernel_wait.clone(),
                regs: t.regs,
                python: None,
                unwound: unwound.frames,
            });
        }
        let debug_notes = debug_notes(&space, &threads);
        let pid = snap.pid;
        threads.sort_by_key(|t| (t.event_loop.is_none(), t.tid != pid, t.tid));
        let total = t0.elapsed();
        Dump {
            pid,
            name: snap.name.clone(),
            taken_at: snap.taken_at,
            threads,
            vanished: snap.vanished.clone(),
            exited: snap.exited,
            module_problems,
            debug_notes,
            python: None,
            cause: snap.cause.clone(),
            timings: Timings {
                freeze: snap.freeze,
                capture: snap.capture,
                phases: snap.phases,
                unwind: unwind_time,
                symbolize: total.saturating_sub(unwind_time),
                cause: Duration::ZERO,
                total: snap.capture + total,
            },
            snapshot: None,
        }
    }
}

/// The notes of the modules of `space` that explain frames of `threads`
/// without names, and every failed debuginfod fetch.
fn debug_notes(space: &crate::symbols::AddressSpace, threads: &[ThreadDump]) -> Vec<String> {
    let unnamed: std::collections::HashSet<&str> = threads
        .iter()
        .flat_map(|t| t.frames.iter())
        .filter(|f| f.function.is_none())
        .filter_map(|f| f.module.as_deref())
        .collect();
    let mut out: Vec<String> = Vec::new();
    for m in &space.modules {
        let Some(note) = m.image.as_ref().and_then(|i| i.debug_note()) else {
            continue;
        };
        if (note.fetch_failed || unnamed.contains(m.name.as_str())) && !out.contains(&note.text) {
            out.push(note.text.clone());
        }
    }
    out
}
