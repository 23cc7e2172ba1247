//! What each thread is polling right now, published for watchers.
//!
//! While a thread polls an instrumented future, its entry of the registry's
//! *poll board* (see [`crate::abi`], "The poll board") names the task, the
//! source location it was spawned or created at, and the time the poll began.
//! A watcher in another process that sees the same poll running for 1.5 s can
//! say *which* task blocks *which* worker, even when the other workers of a
//! multi-thread runtime keep the loop's heartbeat ticking.
//!
//! You rarely call this module yourself: [`crate::slow::LogSlowExt`] (any
//! runtime), `aiodebug::tokio::spawn_named` (feature `tokio`) and the tokio
//! runtime hooks do it for you, and C or Python loops use
//! `aiodebug_poll_begin` / `_end` of the C ABI. Use it directly to mark a callback of a hand-written loop:
//!
//! ```
//! use aiodebug::polling::{self, Label};
//! let label = Label::here("handle-request"); // this file and line
//! {
//!     let _polling = polling::enter(&label);
//!     // ... run the callback: a watcher sees "task 'handle-request'" and since when ...
//! } // dropping the guard marks the thread idle again
//! ```
//!
//! Marks nest (an instrumented future inside an instrumented task): the
//! innermost one is shown, and the outer one, with its own start time, again
//! once the inner ends. Nesting deeper than [`MAX_DEPTH`] is counted but not
//! shown. Recording a poll costs two relaxed stores per 8 bytes of label and
//! never allocates, blocks or panics; at most [`crate::abi::POLL_COUNT`]
//! threads at a time get a board entry (the others are counted in the
//! header's `poll_refused`).

use crate::abi;
use crate::registry::{self, PollEntry, PollRecord};
use crate::{sys, Heartbeat};
use core::cell::Cell;
use core::marker::PhantomData;
use core::time::Duration;

/// How deep marks nest on one thread and still show; deeper ones are counted
/// (so that ends match begins) but not published.
pub const MAX_DEPTH: usize = 8;

/// How many begins a thread waits before retrying to claim a board entry after
/// the board was full.
const RETRY_AFTER: u32 = 1024;

/// Who records a poll: shown by watchers next to the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollKind {
    /// A Rust future wrapped by [`crate::slow::LogSlow`] or spawned with
    /// `aiodebug::tokio::spawn_named` (feature `tokio`).
    Future,
    /// A task polled by a runtime whose poll hooks are installed.
    RuntimeTask,
    /// A callback of a loop in another language, marked through the C ABI.
    Foreign,
}

impl PollKind {
    fn code(self) -> u8 {
        match self {
            PollKind::Future => abi::poll::KIND_FUTURE,
            PollKind::RuntimeTask => abi::poll::KIND_RUNTIME_TASK,
            PollKind::Foreign => abi::poll::KIND_FOREIGN,
        }
    }
}

/// A task's name and source location, packed once into the registry's format
/// so that each poll only copies it.
///
/// Names longer than [`abi::POLL_NAME_CAP`] bytes keep their beginning, files
/// longer than [`abi::POLL_FILE_CAP`] bytes keep their end (the part that
/// names the file), both cut on a character boundary; watchers see that they
/// were cut.
///
/// ```
/// let label = aiodebug::polling::Label::new("orders", "src/main.rs", 37);
/// assert_eq!(label.line(), 37);
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Label {
    rec: PollRecord,
}

impl core::fmt::Debug for Label {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Label")
            .field("line", &self.rec.line)
            .field("lens", &self.rec.lens)
            .finish_non_exhaustive()
    }
}

fn pack<const W: usize>(bytes: &[u8]) -> [u64; W] {
    let mut out = [0u64; W];
    for (i, chunk) in bytes.chunks(8).take(W).enumerate() {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        out[i] = u64::from_le_bytes(word);
    }
    out
}

/// The longest prefix of `s` within `cap` bytes, on a char boundary.
fn head(s: &str, cap: usize) -> &str {
    let mut end = s.len().min(cap);
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

/// The longest suffix of `s` within `cap` bytes, on a char boundary.
fn tail(s: &str, cap: usize) -> &str {
    let mut start = s.len().saturating_sub(cap);
    while start < s.len() && !s.is_char_boundary(start) {
        start += 1;
    }
    s.get(start..).unwrap_or_default()
}

impl Label {
    /// A label for task `name` at `file:line` (recorded as a [`PollKind::Future`]).
    pub fn new(name: &str, file: &str, line: u32) -> Label {
        Self::with_kind(name, file, line, PollKind::Future)
    }

    /// A label recorded as `kind`.
    ///
    /// ```
    /// use aiodebug::polling::{Label, PollKind};
    /// let label = Label::with_kind("on_readable", "loop.c", 120, PollKind::Foreign);
    /// assert_eq!(label.kind(), PollKind::Foreign);
    /// ```
    pub fn with_kind(name: &str, file: &str, line: u32, kind: PollKind) -> Label {
        let n = head(name, abi::POLL_NAME_CAP);
        let f = tail(file, abi::POLL_FILE_CAP);
        let mut flags = 0u8;
        if n.len() < name.len() {
            flags |= abi::poll::FLAG_NAME_TRUNCATED;
        }
        if f.len() < file.len() {
            flags |= abi::poll::FLAG_FILE_TRUNCATED;
        }
        // Both lengths are below 256 (checked at compile time in registry.rs).
        let lens = u32::from_le_bytes([n.len() as u8, f.len() as u8, flags, kind.code()]);
        Label {
            rec: PollRecord {
                name: pack(n.as_bytes()),
                file: pack(f.as_bytes()),
                line,
                lens,
                task_id: 0,
                since_ns: 0,
            },
        }
    }

    /// A label for task `name` at a source location (`#[track_caller]`'s
    /// [`core::panic::Location::caller`], or tokio's spawn location).
    pub fn at(name: &str, location: &core::panic::Location<'_>, kind: PollKind) -> Label {
        Self::with_kind(name, location.file(), location.line(), kind)
    }

    /// A label for task `name` at the caller's source location.
    ///
    /// ```
    /// let label = aiodebug::polling::Label::here("tick");
    /// assert_eq!(label.line(), line!() - 1);
    /// ```
    #[track_caller]
    pub fn here(name: &str) -> Label {
        Self::at(name, core::panic::Location::caller(), PollKind::Future)
    }

    /// The source line recorded.
    pub fn line(&self) -> u32 {
        self.rec.line
    }

    /// Who records polls under this label.
    pub fn kind(&self) -> PollKind {
        match self.rec.lens.to_le_bytes()[3] {
            abi::poll::KIND_RUNTIME_TASK => PollKind::RuntimeTask,
            abi::poll::KIND_FOREIGN => PollKind::Foreign,
            _ => PollKind::Future,
        }
    }
}

const EMPTY: PollRecord = PollRecord {
    name: [0; abi::POLL_NAME_CAP / 8],
    file: [0; abi::POLL_FILE_CAP / 8],
    line: 0,
    lens: 0,
    task_id: 0,
    since_ns: 0,
};

/// Per-thread state: the board entry (claimed on first use, freed at thread
/// exit), the stack of polls begun, the loop the thread belongs to.
struct ThreadState {
    entry: Cell<Option<&'static PollEntry>>,
    retry_in: Cell<u32>,
    depth: Cell<usize>,
    stack: [Cell<PollRecord>; MAX_DEPTH],
    loop_id: Cell<(u32, u32)>,
}

impl Drop for ThreadState {
    fn drop(&mut self) {
        if let Some(e) = self.entry.take() {
            e.release();
        }
    }
}

thread_local! {
    static STATE: ThreadState = const {
        ThreadState {
            entry: Cell::new(None),
            retry_in: Cell::new(0),
            depth: Cell::new(0),
            stack: [const { Cell::new(EMPTY) }; MAX_DEPTH],
            loop_id: Cell::new((u32::MAX, 0)),
        }
    };
}

impl ThreadState {
    fn entry(&self) -> Option<&'static PollEntry> {
        if let Some(e) = self.entry.get() {
            return Some(e);
        }
        let wait = self.retry_in.get();
        if wait > 0 {
            self.retry_in.set(wait - 1);
            return None;
        }
        let e = registry::claim_poll_entry(sys::thread_id());
        if e.is_none() {
            self.retry_in.set(RETRY_AFTER);
        }
        self.entry.set(e);
        e
    }

    fn publish(&self, rec: &PollRecord) {
        if let Some(e) = self.entry() {
            let (slot, gen) = self.loop_id.get();
            e.publish(rec, slot, gen);
        }
    }
}

/// Begins a poll at `now_ns`; pairs with [`end_at`].
fn begin_at(label: &Label, task_id: u64, now_ns: u64) {
    let _ = STATE.try_with(|st| {
        let d = st.depth.get();
        st.depth.set(d.saturating_add(1));
        let rec = PollRecord {
            task_id,
            since_ns: now_ns,
            ..label.rec
        };
        if let Some(cell) = st.stack.get(d) {
            cell.set(rec);
            st.publish(&rec);
        }
    });
}

/// Ends the innermost poll at `now_ns`; returns its duration in ns if it was
/// shown (None without a matching begin, or past [`MAX_DEPTH`]).
fn end_at(now_ns: u64) -> Option<u64> {
    STATE
        .try_with(|st| {
            let d = st.depth.get().checked_sub(1)?;
            st.depth.set(d);
            let started = st.stack.get(d)?.get().since_ns;
            match d.checked_sub(1) {
                None => {
                    if let Some(e) = st.entry.get() {
                        e.idle();
                    }
                }
                Some(outer) => {
                    if let Some(cell) = st.stack.get(outer) {
                        st.publish(&cell.get());
                    }
                }
            }
            Some(now_ns.saturating_sub(started))
        })
        .ok()
        .flatten()
}

/// Marks the calling thread as polling `label` from now until the returned
/// guard is dropped (or [`Polling::finish`]ed).
///
/// ```
/// let label = aiodebug::polling::Label::here("batch");
/// let polling = aiodebug::polling::enter(&label);
/// // ... the work ...
/// let took = polling.finish();
/// assert!(took < std::time::Duration::from_secs(60));
/// ```
pub fn enter(label: &Label) -> Polling {
    enter_task(label, 0)
}

/// [`enter`] for a task with a runtime-assigned id (shown by watchers; 0: none).
pub fn enter_task(label: &Label, task_id: u64) -> Polling {
    let now = sys::monotonic_ns();
    begin_at(label, task_id, now);
    Polling {
        started_ns: now,
        done: false,
        _not_send: PhantomData,
    }
}

/// A poll in progress on this thread (see [`enter`]). Not `Send`: it must end
/// on the thread it began on.
#[derive(Debug)]
#[must_use = "the poll ends when the guard is dropped"]
pub struct Polling {
    started_ns: u64,
    done: bool,
    _not_send: PhantomData<*const ()>,
}

impl Polling {
    /// Ends the poll now and returns how long it took.
    pub fn finish(mut self) -> Duration {
        self.done = true;
        let now = sys::monotonic_ns();
        end_at(now);
        Duration::from_nanos(now.saturating_sub(self.started_ns))
    }

    /// Time since the poll began.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(sys::monotonic_ns().saturating_sub(self.started_ns))
    }

    #[cfg(test)]
    pub(crate) fn started_ns(&self) -> u64 {
        self.started_ns
    }
}

impl Drop for Polling {
    fn drop(&mut self) {
        if !self.done {
            end_at(sys::monotonic_ns());
        }
    }
}

/// Begins a poll without a guard, for callbacks split in a "before" and an
/// "after" half (runtime hooks, C). Every `begin` must be followed by one
/// [`end`] on the same thread, innermost first.
///
/// ```
/// use aiodebug::polling::{begin, end, Label};
/// begin(&Label::here("callback"), 0);
/// // ... the callback ...
/// let took = end();
/// assert!(took.is_some());
/// ```
pub fn begin(label: &Label, task_id: u64) {
    begin_at(label, task_id, sys::monotonic_ns());
}

/// Ends the innermost poll begun with [`begin`] on this thread and returns
/// its duration (None if none was begun, or it was nested past [`MAX_DEPTH`]).
pub fn end() -> Option<Duration> {
    end_at(sys::monotonic_ns()).map(Duration::from_nanos)
}

/// Says that polls on the calling thread belong to the loop of `hb` (a
/// runtime's heartbeat), so that watchers list them under that loop. Without
/// it, watchers match a poll to the loop whose last tick came from the same
/// thread. The tokio monitor (`aiodebug::tokio::spawn_monitor`) calls this on
/// every thread it runs on.
///
/// ```
/// let hb = aiodebug::Heartbeat::register("io-loop");
/// aiodebug::polling::set_thread_loop(&hb);
/// ```
pub fn set_thread_loop(hb: &Heartbeat) {
    let id = hb.loop_id().unwrap_or((u32::MAX, 0));
    let _ = STATE.try_with(|st| st.loop_id.set(id));
}

/// How many threads could not record their polls because the poll board was
/// full (only grows).
pub fn refused_threads() -> u64 {
    registry::registry()
        .map(|r| {
            u64::from(
                r.header
                    .poll_refused
                    .load(core::sync::atomic::Ordering::Relaxed),
            )
        })
        .unwrap_or(0)
}

#[cfg(test)]
pub(crate) fn current_entry_for_test() -> Option<&'static PollEntry> {
    STATE.with(|st| st.entry.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unpack(words: &[u64], len: usize) -> Vec<u8> {
        let mut v: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        v.truncate(len);
        v
    }

    #[test]
    fn labels_cut_names_at_the_end_and_files_at_the_front() {
        let l = Label::new("orders", "src/main.rs", 37);
        let [nl, fl, flags, kind] = l.rec.lens.to_le_bytes();
        assert_eq!(unpack(&l.rec.name, nl.into()), b"orders");
        assert_eq!(unpack(&l.rec.file, fl.into()), b"src/main.rs");
        assert_eq!((flags, kind), (0, abi::poll::KIND_FUTURE));

        let long_file = format!(
            "/home/u/.cargo/registry/src/{}/hyper/src/dispatch.rs",
            "x".repeat(60)
        );
        let long_name = "é".repeat(40); // 80 bytes, 2 per char
        let l = Label::new(&long_name, &long_file, 9);
        let [nl, fl, flags, _] = l.rec.lens.to_le_bytes();
        assert_eq!(nl, 32);
        assert_eq!(unpack(&l.rec.name, 32), "é".repeat(16).as_bytes());
        assert_eq!(fl as usize, abi::POLL_FILE_CAP);
        assert!(long_file.ends_with(std::str::from_utf8(&unpack(&l.rec.file, fl.into())).unwrap()));
        assert_eq!(
            flags,
            abi::poll::FLAG_NAME_TRUNCATED | abi::poll::FLAG_FILE_TRUNCATED
        );
        // A multi-byte character straddling the cut is dropped whole.
        assert_eq!(tail("aé", 1), "");
        assert_eq!(head("aé", 2), "a");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn nested_polls_show_the_innermost_then_restore_the_outer() {
        // Each test runs on its own thread: a fresh entry.
        let outer = Label::new("outer", "a.rs", 1);
        let inner = Label::new("inner", "b.rs", 2);
        let g1 = enter_task(&outer, 7);
        let e = current_entry_for_test().expect("an entry");
        let first = e.record_for_test();
        assert_eq!((first.line, first.task_id), (1, 7));
        assert_eq!(first.since_ns, g1.started_ns());
        {
            let _g2 = enter(&inner);
            let r = e.record_for_test();
            assert_eq!((r.line, r.task_id), (2, 0));
            assert!(r.since_ns >= first.since_ns);
        }
        // The outer poll is shown again, with its own start.
        assert_eq!(e.record_for_test(), first);
        let took = g1.finish();
        assert!(took < Duration::from_secs(60));
        assert_eq!(e.since_for_test(), 0, "idle after the outermost end");
        // Unbalanced ends are ignored.
        assert_eq!(end(), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn nesting_past_max_depth_keeps_begins_and_ends_balanced() {
        let l = Label::new("deep", "d.rs", 3);
        for _ in 0..MAX_DEPTH + 3 {
            begin(&l, 0);
        }
        for i in (0..MAX_DEPTH + 3).rev() {
            let took = end();
            assert_eq!(took.is_some(), i < MAX_DEPTH, "level {i}");
        }
        assert_eq!(end(), None);
        let e = current_entry_for_test().expect("an entry");
        assert_eq!(e.since_for_test(), 0);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn thread_exit_frees_the_entry_and_loop_is_recorded() {
        let hb = Heartbeat::register("poll-owner");
        let (slot, gen) = hb.loop_id().expect("registered");
        let (entry, loop_id, live, owner, tid) = std::thread::spawn(move || {
            set_thread_loop(&hb);
            let _g = enter(&Label::new("t", "t.rs", 4));
            let e = current_entry_for_test().expect("an entry");
            // Read while the thread lives: once it exits, another test's
            // thread may claim the entry.
            (
                e,
                e.loop_for_test(),
                e.state_for_test(),
                e.tid_for_test(),
                sys::thread_id(),
            )
        })
        .join()
        .expect("thread");
        assert_eq!(loop_id, (slot, gen));
        assert_eq!(live, 1, "owned while the thread lives");
        assert_eq!(owner, tid);
        // The thread-local destructor released the entry (another test's
        // thread may have claimed it since: then it is that thread's).
        let still_ours = entry.state_for_test() == 1 && entry.tid_for_test() == tid;
        assert!(!still_ours, "entry still owned by the exited thread {tid}");
    }
}
