//! Decoding heartbeat registries from bytes copied out of a target.
//!
//! Pure functions over untrusted input: the caller copies the `aiodebug_hb`
//! section (or a symbol's range) twice, one copy after the other, and
//! [`decode_section`] returns every registry it can trust, the loops in them,
//! and why anything else was rejected. The protocol is described in
//! [`aiodebug::abi`]: a slot's metadata is trusted only when its generation is
//! even and identical in both copies; a lag is trusted only when its ring entry
//! is identical in both copies and tagged with a tick number that belongs in
//! that ring position. Nothing here panics or allocates in proportion to a
//! value read from the target beyond fixed caps.
//!
//! Since ABI minor 1 a registry also carries a *poll board*: per thread, which
//! task is being polled and since when. [`Registry::polling`] lists every
//! poll in progress; [`Loop::polling`] those of threads known to belong to
//! that loop. An entry is trusted only when it is owned, its generation is
//! even and identical in both copies, and its bytes are identical in both
//! copies. A minor-0 registry simply has no board.
//!
//! Since ABI minor 2 a loop may say when its next tick is due
//! ([`Loop::next_due_ns`]: a monitor sleeping longer while its runtime is
//! idle), and a registry carries a *worker board*: per worker of a runtime,
//! whether it was parked at the monitor's latest sample and since when its
//! counters have not moved ([`Registry::workers`]).

use aiodebug::abi;

/// Largest `slot_count` a reader accepts.
pub const MAX_SLOTS: u32 = 1024;
/// Largest `slot_size` a reader accepts.
pub const MAX_SLOT_SIZE: u32 = 64 * 1024;
/// Largest `header_size` a reader accepts.
pub const MAX_HEADER_SIZE: u32 = 4096;
/// Largest `ring_len` a reader accepts.
pub const MAX_RING_LEN: u32 = 1024;
/// Largest poll board a reader accepts (entries).
pub const MAX_POLL_ENTRIES: u32 = 1024;
/// Largest poll board entry a reader accepts (bytes).
pub const MAX_POLL_ENTRY_SIZE: u32 = 4096;
/// Largest worker board a reader accepts (entries).
pub const MAX_WORKER_ENTRIES: u32 = 1024;
/// Largest worker board entry a reader accepts (bytes).
pub const MAX_WORKER_ENTRY_SIZE: u32 = 4096;

/// Everything found in one copied section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// Registries whose header validated.
    pub registries: Vec<Registry>,
    /// Would-be registries (right magic) that failed validation: the first
    /// [`MAX_REJECTED`] of them (a hostile section can hold hundreds of
    /// thousands).
    pub rejected: Vec<Rejected>,
    /// How many more failed validation than [`Scan::rejected`] lists.
    pub rejected_more: usize,
}

/// Most rejected would-be registries kept with their reasons per scan.
pub const MAX_REJECTED: usize = 8;

/// A would-be registry that failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Offset of its header in the section.
    pub offset: usize,
    /// Why, in words.
    pub reason: String,
}

/// One validated registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    /// Offset of its header in the section.
    pub offset: usize,
    /// ABI minor version of the writer.
    pub abi_minor: u16,
    /// Version of the `aiodebug` crate that wrote it.
    pub crate_version: String,
    /// Registrations refused because the registry was full (only grows).
    pub refused: u64,
    /// Number of slots.
    pub slot_count: u32,
    /// Slots whose metadata changed between the two copies (a loop registering
    /// or unregistering at that moment); read again to see them.
    pub unsettled_slots: u32,
    /// The live loops.
    pub loops: Vec<Loop>,
    /// Entries of the poll board (0: no board, e.g. ABI minor 0).
    pub poll_entries: u32,
    /// Threads that found the poll board full (only grows).
    pub poll_refused: u32,
    /// Owned poll board entries that changed between the copies (a thread busy
    /// with short polls); a poll that lasts never is.
    pub unsettled_polls: u32,
    /// Why the poll board was ignored, if it was (the loops are still valid).
    pub poll_problem: Option<String>,
    /// Every poll in progress, one per thread, whatever loop it belongs to
    /// (a stuck worker of a multi-thread runtime shows here even when another
    /// worker keeps the loop ticking).
    pub polling: Vec<Polling>,
    /// Entries of the worker board (0: none, e.g. ABI minor 0 or 1).
    pub worker_entries: u32,
    /// Workers that found the worker board full (only grows).
    pub worker_refused: u32,
    /// Owned worker entries that changed between the copies (a monitor
    /// sampling at that moment).
    pub unsettled_workers: u32,
    /// Why the worker board was ignored, if it was.
    pub worker_problem: Option<String>,
    /// Runtime workers as their monitors last sampled them.
    pub workers: Vec<Worker>,
}

/// One worker of a runtime, as its monitor last sampled it (ABI minor 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worker {
    /// Board entry index.
    pub entry: u32,
    /// OS thread id of the worker, when the monitor knows it (in our PID
    /// namespace once mapped, as [`Loop::tid`]).
    pub tid: Option<u32>,
    /// The same id as the companion wrote it (target's PID namespace).
    pub ns_tid: Option<u32>,
    /// Slot of the monitor's loop, when it names a live loop of this registry.
    pub loop_slot: Option<u32>,
    /// The worker's index in its runtime.
    pub index: u16,
    /// Workers of the runtime.
    pub workers: u16,
    /// Parked (waiting for work) at the latest sample.
    pub parked: bool,
    /// The runtime is a current_thread runtime (its worker runs the monitor).
    pub current_thread: bool,
    /// First sample that saw the worker's counters as they are now (not
    /// parked); None while parked.
    pub since_ns: Option<u64>,
    /// The sample before `since_ns`: the worker last made progress between
    /// the two.
    pub after_ns: u64,
    /// The latest sample.
    pub sampled_ns: u64,
    /// When the monitor plans its next sample.
    pub next_ns: u64,
}

impl Worker {
    /// How long the worker's counters have not moved at `now_ns` (0 while
    /// parked).
    pub fn frozen_ns(&self, now_ns: u64) -> u64 {
        self.since_ns.map_or(0, |s| now_ns.saturating_sub(s))
    }
}

/// One live event loop, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loop {
    /// Slot index in its registry.
    pub slot: u32,
    /// Name, sanitized: invalid UTF-8 and control characters replaced by U+FFFD.
    pub name: String,
    /// OS thread id of the last tick, as this reader's PID namespace numbers
    /// it once [`crate::target::Target::read`] has mapped it (0: the thread
    /// is gone, its id cannot be mapped).
    pub tid: u32,
    /// The same thread id as the companion wrote it: numbered in the target's
    /// own PID namespace (equal to `tid` outside containers).
    pub ns_tid: u32,
    /// Tick period in ns (0: none declared).
    pub period_ns: u64,
    /// Ticks since registration.
    pub ticks: u64,
    /// CLOCK_MONOTONIC (target's namespace) ns of the last tick.
    pub last_tick_ns: u64,
    /// CLOCK_MONOTONIC ns of registration.
    pub registered_ns: u64,
    /// Whether ticks and last tick time were identical in both copies (false:
    /// the loop ticked while being read — it is alive).
    pub settled: bool,
    /// When the next tick is due, if the loop said so (ABI minor 2; later
    /// than the last tick); otherwise one period after the last tick.
    pub next_due_ns: Option<u64>,
    /// Verified lags, oldest first.
    pub lags: Vec<Lag>,
    /// Polls in progress on threads of this loop: threads whose board entry
    /// names this slot, or (when an entry names no loop) the thread of the
    /// loop's last tick. Also listed in [`Registry::polling`].
    pub polling: Vec<Polling>,
}

/// Who recorded a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollKind {
    /// A Rust future wrapped by the slow-poll wrapper or a named spawn.
    Future,
    /// A task polled by a runtime with poll hooks (tokio).
    RuntimeTask,
    /// A callback marked through the C ABI (C, C++, Python...).
    Foreign,
    /// A value this reader does not know.
    Unknown(u8),
}

impl PollKind {
    fn from_code(c: u8) -> PollKind {
        match c {
            abi::poll::KIND_FUTURE => PollKind::Future,
            abi::poll::KIND_RUNTIME_TASK => PollKind::RuntimeTask,
            abi::poll::KIND_FOREIGN => PollKind::Foreign,
            other => PollKind::Unknown(other),
        }
    }

    /// A short word for output: `future`, `task`, `callback`, `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            PollKind::Future => "future",
            PollKind::RuntimeTask => "task",
            PollKind::Foreign => "callback",
            PollKind::Unknown(_) => "unknown",
        }
    }
}

/// One thread's poll in progress, from the poll board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Polling {
    /// Index of the board entry.
    pub entry: u32,
    /// OS thread id of the polling thread, in this reader's PID namespace
    /// once mapped (see [`Loop::tid`]).
    pub tid: u32,
    /// The id as the companion wrote it (target's PID namespace).
    pub ns_tid: u32,
    /// The task's name, sanitized ("" when it has none); ends with `…` when
    /// the writer had to cut it.
    pub task: String,
    /// The runtime's task id, if recorded.
    pub task_id: Option<u64>,
    /// Source file of the spawn or creation site, sanitized; starts with `…`
    /// when only its tail fit.
    pub file: String,
    /// Source line (0: unknown).
    pub line: u32,
    /// CLOCK_MONOTONIC (target's namespace) ns at which the poll began.
    pub since_ns: u64,
    /// Who recorded it.
    pub kind: PollKind,
    /// The slot of the loop the thread belongs to, when the entry names one
    /// that is still registered under the same generation.
    pub loop_slot: Option<u32>,
}

impl Polling {
    /// How long the poll has been running at `now_ns` (0 if it began "in the
    /// future": clock skew or garbage).
    pub fn duration_ns(&self, now_ns: u64) -> u64 {
        now_ns.saturating_sub(self.since_ns)
    }

    /// `file:line`, or "" when unknown.
    pub fn location(&self) -> String {
        match (self.file.is_empty(), self.line) {
            (true, 0) => String::new(),
            (false, 0) => self.file.clone(),
            _ => format!("{}:{}", self.file, self.line),
        }
    }

    /// What is polled, for humans: `task 'orders' (src/main.rs:37)`,
    /// `task 42 (src/main.rs:37)`, `future (src/db.rs:12)`.
    pub fn describe(&self) -> String {
        let what = match (self.task.is_empty(), self.task_id) {
            (false, _) => format!("task '{}'", self.task),
            (true, Some(id)) => format!("task {id}"),
            (true, None) => self.kind.as_str().to_string(),
        };
        let loc = self.location();
        if loc.is_empty() {
            what
        } else {
            format!("{what} ({loc})")
        }
    }
}

/// The lag of one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lag {
    /// Tick number (1 for the first tick after registration).
    pub tick: u64,
    /// Lag in ns.
    pub lag_ns: u64,
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    let s = b.get(off..off.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    let mut a = [0u8; 4];
    a.copy_from_slice(s);
    Some(u32::from_le_bytes(a))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    let s = b.get(off..off.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_le_bytes(a))
}

/// Validated poll board geometry.
#[derive(Debug, Clone, Copy)]
struct Board {
    /// Offset of the first entry from the registry's start.
    start: usize,
    count: u32,
    entry_size: usize,
}

/// Validated header geometry.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    header_size: usize,
    slot_size: usize,
    slot_count: u32,
    ring_len: u32,
    name_cap: usize,
    total: usize,
    minor: u16,
}

fn validate_header(c1: &[u8], c2: &[u8], off: usize) -> Result<Geometry, String> {
    let hdr1 = c1
        .get(off..off + abi::HEADER_SIZE)
        .ok_or("header cut off by the end of the section")?;
    let hdr2 = c2
        .get(off..off + abi::HEADER_SIZE)
        .ok_or("header cut off by the end of the section")?;
    // The header never changes after start-up, except the refusal counter.
    let stable = hdr1[..abi::header::REFUSED] == hdr2[..abi::header::REFUSED];
    if !stable {
        return Err("header changed between two reads".into());
    }
    let major = u16_at(hdr1, abi::header::ABI_MAJOR).unwrap_or(0);
    if major != abi::ABI_MAJOR {
        return Err(format!(
            "ABI major version {major}, this reader knows {}",
            abi::ABI_MAJOR
        ));
    }
    let header_size = u32_at(hdr1, abi::header::HEADER_SIZE).unwrap_or(0);
    let slot_size = u32_at(hdr1, abi::header::SLOT_SIZE).unwrap_or(0);
    let slot_count = u32_at(hdr1, abi::header::SLOT_COUNT).unwrap_or(0);
    let ring_len = u32_at(hdr1, abi::header::RING_LEN).unwrap_or(0);
    let name_cap = u32_at(hdr1, abi::header::NAME_CAP).unwrap_or(0);
    if !(abi::HEADER_SIZE as u32..=MAX_HEADER_SIZE).contains(&header_size) {
        return Err(format!("header size {header_size} out of range"));
    }
    if !(1..=MAX_RING_LEN).contains(&ring_len) {
        return Err(format!("ring length {ring_len} out of range"));
    }
    if !(1..=abi::NAME_CAP as u32).contains(&name_cap) {
        return Err(format!("name capacity {name_cap} out of range"));
    }
    let min_slot = abi::slot::RING as u32 + ring_len * abi::slot::RING_ENTRY as u32;
    if slot_size < min_slot || slot_size > MAX_SLOT_SIZE || slot_size % 8 != 0 {
        return Err(format!(
            "slot size {slot_size} out of range ({min_slot}..={MAX_SLOT_SIZE})"
        ));
    }
    if !(1..=MAX_SLOTS).contains(&slot_count) {
        return Err(format!(
            "slot count {slot_count} out of range (1..={MAX_SLOTS})"
        ));
    }
    // All factors are capped above, so this cannot overflow.
    let total = header_size as usize + slot_size as usize * slot_count as usize;
    let available = c1.len().min(c2.len()).saturating_sub(off);
    if total > available {
        return Err(format!(
            "claims {total} bytes but only {available} follow it in the section"
        ));
    }
    Ok(Geometry {
        header_size: header_size as usize,
        slot_size: slot_size as usize,
        slot_count,
        ring_len,
        name_cap: name_cap as usize,
        total,
        minor: u16_at(hdr1, abi::header::ABI_MINOR).unwrap_or(0),
    })
}

/// The poll board of a validated registry: `Ok(None)` when it has none
/// (minor 0, or no entries), `Err` when it is unusable (the loops stay valid).
fn validate_board(c1: &[u8], c2: &[u8], off: usize, g: &Geometry) -> Result<Option<Board>, String> {
    let field = |c: &[u8], at: usize| u16_at(c, off + at);
    let minor1 = field(c1, abi::header::ABI_MINOR);
    if minor1 != field(c2, abi::header::ABI_MINOR) || minor1.unwrap_or(0) < 1 {
        return Ok(None);
    }
    let count = field(c1, abi::header::POLL_COUNT).unwrap_or(0);
    let size = field(c1, abi::header::POLL_ENTRY_SIZE).unwrap_or(0);
    if count != field(c2, abi::header::POLL_COUNT).unwrap_or(0)
        || size != field(c2, abi::header::POLL_ENTRY_SIZE).unwrap_or(0)
    {
        return Err("poll board geometry changed between two reads".into());
    }
    if count == 0 {
        return Ok(None);
    }
    let (count, size) = (u32::from(count), u32::from(size));
    if count > MAX_POLL_ENTRIES {
        return Err(format!(
            "poll board of {count} entries (at most {MAX_POLL_ENTRIES})"
        ));
    }
    if size < abi::POLL_ENTRY_SIZE as u32 || size > MAX_POLL_ENTRY_SIZE || size % 8 != 0 {
        return Err(format!(
            "poll entry size {size} out of range ({}..={MAX_POLL_ENTRY_SIZE})",
            abi::POLL_ENTRY_SIZE
        ));
    }
    // g.total is at most 4096 + 64 KiB * 1024; the board at most 4 MiB.
    let end = g.total + count as usize * size as usize;
    let available = c1.len().min(c2.len()).saturating_sub(off);
    if end > available {
        return Err(format!(
            "poll board ends at {end} bytes but only {available} follow the header"
        ));
    }
    Ok(Some(Board {
        start: g.total,
        count,
        entry_size: size as usize,
    }))
}

/// Turns untrusted name bytes into a printable string.
pub fn sanitize_name(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let raw = raw.get(..end).unwrap_or_default();
    // The common name, printable ASCII, in one copy (decoded at every read).
    if raw.iter().all(|b| (0x20..0x7f).contains(b)) {
        return String::from_utf8_lossy(raw).into_owned();
    }
    String::from_utf8_lossy(raw)
        .chars()
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect()
}

fn decode_slot(s1: &[u8], s2: &[u8], index: u32, g: &Geometry) -> SlotRead {
    use abi::slot as o;
    let gen1 = u64_at(s1, o::GEN);
    let gen2 = u64_at(s2, o::GEN);
    let live1 = u32_at(s1, o::IN_USE);
    let live2 = u32_at(s2, o::IN_USE);
    if live1 != Some(1) && live2 != Some(1) {
        return SlotRead::Free;
    }
    let stable_gen = matches!((gen1, gen2), (Some(a), Some(b)) if a == b && a % 2 == 0);
    if !stable_gen || live1 != live2 {
        return SlotRead::Unsettled;
    }
    // Metadata written under the generation must be identical in both copies.
    let meta = |s: &[u8]| -> Option<(u32, u64, u64)> {
        Some((
            u32_at(s, o::NAME_LEN)?,
            u64_at(s, o::PERIOD_NS)?,
            u64_at(s, o::REGISTERED_NS)?,
        ))
    };
    let name_range = o::NAME..o::NAME + g.name_cap;
    let (Some(m1), Some(m2)) = (meta(s1), meta(s2)) else {
        return SlotRead::Unsettled;
    };
    if m1 != m2 || s1.get(name_range.clone()) != s2.get(name_range.clone()) {
        return SlotRead::Unsettled;
    }
    let (name_len, period_ns, registered_ns) = m2;
    let gen = gen2.unwrap_or(0);
    let name_len = (name_len as usize).min(g.name_cap);
    let name = sanitize_name(s2.get(o::NAME..o::NAME + name_len).unwrap_or_default());

    let ticks1 = u64_at(s1, o::TICKS).unwrap_or(0);
    let ticks = u64_at(s2, o::TICKS).unwrap_or(0);
    let last1 = u64_at(s1, o::LAST_TICK_NS).unwrap_or(0);
    let last_tick_ns = u64_at(s2, o::LAST_TICK_NS).unwrap_or(0);
    let tid = u32_at(s2, o::TID).unwrap_or(0);
    let settled = ticks1 == ticks && last1 == last_tick_ns;
    // Reserved (zero) before minor 2.
    let next_due_ns = (g.minor >= 2)
        .then(|| u64_at(s2, o::NEXT_DUE_NS).unwrap_or(0))
        .filter(|&d| d > last_tick_ns);

    let ring_len = u64::from(g.ring_len);
    let mut lags = Vec::with_capacity(g.ring_len as usize);
    // Oldest entry first: the one tag in the window (ticks - ring_len,
    // ticks] that entry j may hold is the one ≡ j mod ring_len, so walking j
    // from (ticks + 1) mod ring_len on yields the kept lags in tick order,
    // with no sort (`watch --all` decodes every ring a few hundred times a
    // second; sorting them was 4 % of its CPU).
    for k in 0..ring_len {
        let j = (ticks.wrapping_add(1).wrapping_add(k) % ring_len) as usize;
        let at = o::RING + j * o::RING_ENTRY;
        let (Some(e1), Some(e2)) = (
            s1.get(at..at + o::RING_ENTRY),
            s2.get(at..at + o::RING_ENTRY),
        ) else {
            break;
        };
        if e1 != e2 {
            continue; // rewritten between the copies: cannot be trusted
        }
        let tag = u64_at(e2, 0).unwrap_or(0);
        let lag_ns = u64_at(e2, 8).unwrap_or(0);
        let in_window = tag <= ticks && tag > ticks.saturating_sub(ring_len);
        if tag == 0 || tag % ring_len != j as u64 || !in_window {
            continue;
        }
        lags.push(Lag { tick: tag, lag_ns });
    }
    debug_assert!(lags.windows(2).all(|w| w[0].tick < w[1].tick));
    SlotRead::Live(
        Loop {
            slot: index,
            name,
            tid,
            ns_tid: tid,
            period_ns,
            ticks,
            last_tick_ns,
            registered_ns,
            settled,
            next_due_ns,
            lags,
            polling: Vec::new(),
        },
        gen,
    )
}

enum SlotRead {
    Free,
    Unsettled,
    /// The loop and its slot generation.
    Live(Loop, u64),
}

enum EntryRead {
    Free,
    Unsettled,
    Idle,
    /// The poll, and the raw (slot, generation) it names.
    Polling(Polling, u32, u32),
}

fn decode_entry(e1: &[u8], e2: &[u8], index: u32) -> EntryRead {
    use abi::poll as p;
    let state1 = u32_at(e1, p::STATE);
    let state2 = u32_at(e2, p::STATE);
    if state1 != Some(1) && state2 != Some(1) {
        return EntryRead::Free;
    }
    let known = abi::POLL_ENTRY_SIZE;
    let gen = u64_at(e2, p::GEN);
    let stable = state1 == state2
        && gen.is_some_and(|g| g % 2 == 0)
        && gen == u64_at(e1, p::GEN)
        && e1.get(..known).is_some()
        && e1.get(..known) == e2.get(..known);
    if !stable {
        return EntryRead::Unsettled;
    }
    let since_ns = u64_at(e2, p::SINCE_NS).unwrap_or(0);
    if since_ns == 0 {
        return EntryRead::Idle;
    }
    let byte = |at: usize| e2.get(at).copied().unwrap_or(0);
    let flags = byte(p::FLAGS);
    let name_len = usize::from(byte(p::NAME_LEN)).min(abi::POLL_NAME_CAP);
    let file_len = usize::from(byte(p::FILE_LEN)).min(abi::POLL_FILE_CAP);
    let mut task = sanitize_name(e2.get(p::NAME..p::NAME + name_len).unwrap_or_default());
    if flags & abi::poll::FLAG_NAME_TRUNCATED != 0 && !task.is_empty() {
        task.push('…');
    }
    let mut file = sanitize_name(e2.get(p::FILE..p::FILE + file_len).unwrap_or_default());
    if flags & abi::poll::FLAG_FILE_TRUNCATED != 0 && !file.is_empty() {
        file.insert(0, '…');
    }
    let task_id = u64_at(e2, p::TASK_ID).filter(|&id| id != 0);
    let poll = Polling {
        entry: index,
        tid: u32_at(e2, p::TID).unwrap_or(0),
        ns_tid: u32_at(e2, p::TID).unwrap_or(0),
        task,
        task_id,
        file,
        line: u32_at(e2, p::LINE).unwrap_or(0),
        since_ns,
        kind: PollKind::from_code(byte(p::KIND)),
        loop_slot: None,
    };
    EntryRead::Polling(
        poll,
        u32_at(e2, p::LOOP_SLOT).unwrap_or(u32::MAX),
        u32_at(e2, p::LOOP_GEN).unwrap_or(0),
    )
}

/// Decodes every registry in two successive copies of a section.
///
/// `copy1` must have been copied entirely before `copy2` was started. The
/// section is scanned in steps of [`abi::ALIGN`] bytes for [`abi::MAGIC`].
pub fn decode_section(copy1: &[u8], copy2: &[u8]) -> Scan {
    decode_copied(copy1, copy2, Copied(None))
}

/// [`decode_section`] of copies of which only `ranges` (offset, length;
/// sorted) were copied this time, the rest kept from a full copy in which
/// every slot and board entry outside them was free: those are not looked
/// at (they decode as free, as the kept bytes would). A sparse reader's
/// decode then costs its ranges, not the ~200 slot and entry heads of the
/// whole registry — cache misses, with a hundred targets' copies.
pub fn decode_ranges(copy1: &[u8], copy2: &[u8], ranges: &[(usize, usize)]) -> Scan {
    decode_copied(copy1, copy2, Copied(Some(ranges)))
}

/// Which bytes of the copies are fresh: all (`None`), or sorted ranges.
#[derive(Clone, Copy)]
struct Copied<'a>(Option<&'a [(usize, usize)]>);

impl Copied<'_> {
    /// Whether the slot or entry starting at `at` was copied (at least its
    /// head, where its state is).
    fn has(self, at: usize) -> bool {
        let Some(ranges) = self.0 else { return true };
        let i = ranges.partition_point(|&(o, _)| o <= at);
        i > 0
            && ranges
                .get(i - 1)
                .is_some_and(|&(o, l)| at < o.saturating_add(l))
    }
}

fn decode_copied(copy1: &[u8], copy2: &[u8], copied: Copied<'_>) -> Scan {
    let len = copy1.len().min(copy2.len());
    let mut scan = Scan::default();
    let mut off = 0usize;
    while off + abi::HEADER_SIZE <= len {
        if u64_at(copy1, off) != Some(abi::MAGIC) {
            off += abi::ALIGN;
            continue;
        }
        match validate_header(copy1, copy2, off) {
            Err(reason) => {
                if scan.rejected.len() < MAX_REJECTED {
                    scan.rejected.push(Rejected {
                        offset: off,
                        reason,
                    });
                } else {
                    scan.rejected_more += 1;
                }
                off += abi::ALIGN;
            }
            Ok(g) => {
                let board = validate_board(copy1, copy2, off, &g);
                let (mut reg, gens) = decode_registry(copy1, copy2, off, &g, copied);
                let has_board = matches!(board, Ok(Some(_)));
                let mut end = match board {
                    Ok(Some(b)) => {
                        decode_board(copy1, copy2, off, &b, &mut reg, (&gens, copied));
                        b.start + b.count as usize * b.entry_size
                    }
                    Ok(None) => g.total,
                    Err(why) => {
                        reg.poll_problem = Some(why);
                        g.total
                    }
                };
                if has_board && g.minor >= 2 {
                    match validate_workers(copy1, copy2, off, end) {
                        Ok(Some(w)) => {
                            decode_workers(copy1, copy2, off, &w, &mut reg, (&gens, copied));
                            end = w.start + w.count as usize * w.entry_size;
                        }
                        Ok(None) => {}
                        Err(why) => reg.worker_problem = Some(why),
                    }
                }
                scan.registries.push(reg);
                off = off.saturating_add(end.div_ceil(abi::ALIGN) * abi::ALIGN);
            }
        }
    }
    scan
}

/// The registry and, per loop, its slot's generation.
fn decode_registry(
    c1: &[u8],
    c2: &[u8],
    off: usize,
    g: &Geometry,
    copied: Copied<'_>,
) -> (Registry, Vec<u64>) {
    let version_at = off + abi::header::CRATE_VERSION;
    let crate_version = sanitize_name(
        c2.get(version_at..version_at + abi::header::CRATE_VERSION_LEN)
            .unwrap_or_default(),
    );
    let mut reg = Registry {
        offset: off,
        abi_minor: u16_at(c2, off + abi::header::ABI_MINOR).unwrap_or(0),
        crate_version,
        refused: u64_at(c2, off + abi::header::REFUSED).unwrap_or(0),
        slot_count: g.slot_count,
        unsettled_slots: 0,
        loops: Vec::new(),
        poll_entries: 0,
        poll_refused: 0,
        unsettled_polls: 0,
        poll_problem: None,
        polling: Vec::new(),
        worker_entries: 0,
        worker_refused: 0,
        unsettled_workers: 0,
        worker_problem: None,
        workers: Vec::new(),
    };
    let mut gens = Vec::new();
    for i in 0..g.slot_count {
        let start = off + g.header_size + i as usize * g.slot_size;
        if !copied.has(start) {
            continue;
        }
        let range = start..start + g.slot_size;
        let (Some(s1), Some(s2)) = (c1.get(range.clone()), c2.get(range)) else {
            break;
        };
        match decode_slot(s1, s2, i, g) {
            SlotRead::Free => {}
            SlotRead::Unsettled => reg.unsettled_slots += 1,
            SlotRead::Live(l, gen) => {
                reg.loops.push(l);
                gens.push(gen);
            }
        }
    }
    (reg, gens)
}

/// Reads the poll board into `reg` and attributes each poll to its loop.
fn decode_board(
    c1: &[u8],
    c2: &[u8],
    off: usize,
    b: &Board,
    reg: &mut Registry,
    (gens, copied): (&[u64], Copied<'_>),
) {
    reg.poll_entries = b.count;
    reg.poll_refused = u32_at(c2, off + abi::header::POLL_REFUSED).unwrap_or(0);
    for i in 0..b.count {
        let start = off + b.start + i as usize * b.entry_size;
        if !copied.has(start) {
            continue;
        }
        let range = start..start + b.entry_size;
        let (Some(e1), Some(e2)) = (c1.get(range.clone()), c2.get(range)) else {
            break;
        };
        match decode_entry(e1, e2, i) {
            EntryRead::Free | EntryRead::Idle => {}
            EntryRead::Unsettled => reg.unsettled_polls += 1,
            EntryRead::Polling(mut poll, slot, gen) => {
                let named = reg
                    .loops
                    .iter()
                    .zip(gens)
                    .position(|(l, &g)| l.slot == slot && g as u32 == gen);
                let owner = if slot == u32::MAX {
                    // No loop named: the loop whose last tick came from this thread.
                    reg.loops
                        .iter()
                        .position(|l| l.tid == poll.tid && poll.tid != 0)
                } else {
                    named
                };
                if let Some(k) = owner {
                    poll.loop_slot = reg.loops.get(k).map(|l| l.slot);
                    if let Some(l) = reg.loops.get_mut(k) {
                        l.polling.push(poll.clone());
                    }
                }
                reg.polling.push(poll);
            }
        }
    }
}

/// The worker board of a minor-2 registry whose poll board ends at `board_end`
/// (from the registry's start): `Ok(None)` when absent.
fn validate_workers(
    c1: &[u8],
    c2: &[u8],
    off: usize,
    board_end: usize,
) -> Result<Option<Board>, String> {
    use abi::worker_board as wb;
    let start = board_end.div_ceil(abi::ALIGN) * abi::ALIGN;
    let at = off.saturating_add(start);
    let tag = u64_at(c1, at + wb::TAG);
    if tag != Some(abi::WORKER_TAG) || tag != u64_at(c2, at + wb::TAG) {
        return Ok(None);
    }
    let count = u32_at(c1, at + wb::COUNT).unwrap_or(0);
    let size = u32_at(c1, at + wb::ENTRY_SIZE).unwrap_or(0);
    if Some(count) != u32_at(c2, at + wb::COUNT) || Some(size) != u32_at(c2, at + wb::ENTRY_SIZE) {
        return Err("worker board geometry changed between two reads".into());
    }
    if count > MAX_WORKER_ENTRIES {
        return Err(format!(
            "worker board of {count} entries (at most {MAX_WORKER_ENTRIES})"
        ));
    }
    if size < abi::WORKER_ENTRY_SIZE as u32 || size > MAX_WORKER_ENTRY_SIZE || size % 8 != 0 {
        return Err(format!(
            "worker entry size {size} out of range ({}..={MAX_WORKER_ENTRY_SIZE})",
            abi::WORKER_ENTRY_SIZE
        ));
    }
    // start is below ~9 MiB (capped geometry), the board at most 4 MiB.
    let entries = start + abi::WORKER_BOARD_HEADER;
    let end = entries + count as usize * size as usize;
    let available = c1.len().min(c2.len()).saturating_sub(off);
    if end > available {
        return Err(format!(
            "worker board ends at {end} bytes but only {available} follow the header"
        ));
    }
    Ok(Some(Board {
        start: entries,
        count,
        entry_size: size as usize,
    }))
}

/// Reads the worker board into `reg`.
fn decode_workers(
    c1: &[u8],
    c2: &[u8],
    off: usize,
    b: &Board,
    reg: &mut Registry,
    (gens, copied): (&[u64], Copied<'_>),
) {
    use abi::worker as w;
    reg.worker_entries = b.count;
    let header = off + b.start - abi::WORKER_BOARD_HEADER;
    reg.worker_refused = u32_at(c2, header + abi::worker_board::REFUSED).unwrap_or(0);
    for i in 0..b.count {
        let start = off + b.start + i as usize * b.entry_size;
        if !copied.has(start) {
            continue;
        }
        let known = start..start + abi::WORKER_ENTRY_SIZE;
        let (Some(e1), Some(e2)) = (c1.get(known.clone()), c2.get(known)) else {
            break;
        };
        let (s1, s2) = (u32_at(e1, w::STATE), u32_at(e2, w::STATE));
        if s1 != Some(1) && s2 != Some(1) {
            continue;
        }
        let gen = u64_at(e2, w::GEN);
        if s1 != s2 || gen.map_or(true, |g| g % 2 == 1) || e1 != e2 {
            reg.unsettled_workers += 1;
            continue;
        }
        let flags = u32_at(e2, w::FLAGS).unwrap_or(0);
        let slot = u32_at(e2, w::LOOP_SLOT).unwrap_or(u32::MAX);
        let slot_gen = u32_at(e2, w::LOOP_GEN).unwrap_or(0);
        let loop_slot = reg
            .loops
            .iter()
            .zip(gens)
            .find(|(l, &g)| l.slot == slot && g as u32 == slot_gen)
            .map(|(l, _)| l.slot);
        let parked = flags & w::FLAG_PARKED != 0;
        reg.workers.push(Worker {
            entry: i,
            tid: u32_at(e2, w::TID).filter(|&t| t != 0),
            ns_tid: u32_at(e2, w::TID).filter(|&t| t != 0),
            loop_slot,
            index: u16_at(e2, w::INDEX).unwrap_or(0),
            workers: u16_at(e2, w::WORKERS).unwrap_or(0),
            parked,
            current_thread: flags & w::FLAG_CURRENT_THREAD != 0,
            since_ns: u64_at(e2, w::SINCE_NS).filter(|&s| s != 0 && !parked),
            after_ns: u64_at(e2, w::AFTER_NS).unwrap_or(0),
            sampled_ns: u64_at(e2, w::SAMPLED_NS).unwrap_or(0),
            next_ns: u64_at(e2, w::NEXT_NS).unwrap_or(0),
        });
    }
}

/// Figures derived from a [`Loop`] at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoopStats {
    /// Time since the last tick: `now − last tick` (0 if the tick is in the future).
    pub age_ns: u64,
    /// How long the next tick is overdue: `now − next due` when the loop said
    /// when ([`Loop::next_due_ns`]), else `age − period`; 0 while on time.
    pub stall_ns: u64,
    /// Lag of the latest verified tick.
    pub last_lag_ns: Option<u64>,
    /// Median of the verified recent lags.
    pub p50_ns: Option<u64>,
    /// 99th percentile of the verified recent lags (nearest rank).
    pub p99_ns: Option<u64>,
    /// Largest verified recent lag.
    pub max_ns: Option<u64>,
}

impl Loop {
    /// Derived figures at `now_ns` (CLOCK_MONOTONIC in the target's namespace).
    pub fn stats(&self, now_ns: u64) -> LoopStats {
        let age_ns = now_ns.saturating_sub(self.last_tick_ns);
        let mut sorted: Vec<u64> = self.lags.iter().map(|l| l.lag_ns).collect();
        sorted.sort_unstable();
        LoopStats {
            age_ns,
            stall_ns: self.stall_ns(now_ns),
            last_lag_ns: self.lags.last().map(|l| l.lag_ns),
            p50_ns: percentile(&sorted, 50),
            p99_ns: percentile(&sorted, 99),
            max_ns: sorted.last().copied(),
        }
    }

    /// [`LoopStats::stall_ns`] alone, without sorting the lags (a watch
    /// asks it of every loop at every read).
    pub fn stall_ns(&self, now_ns: u64) -> u64 {
        match self.next_due_ns {
            Some(due) => now_ns.saturating_sub(due),
            None => now_ns
                .saturating_sub(self.last_tick_ns)
                .saturating_sub(self.period_ns),
        }
    }
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[u64], p: u32) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (sorted.len() * p.min(100) as usize).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::slot as o;

    /// A registry image as the companion crate would lay it out.
    struct Image(Vec<u8>);

    impl Image {
        fn new() -> Self {
            let mut b = vec![0u8; abi::REGISTRY_SIZE];
            b[0..8].copy_from_slice(&abi::MAGIC.to_le_bytes());
            b[8..10].copy_from_slice(&abi::ABI_MAJOR.to_le_bytes());
            b[10..12].copy_from_slice(&abi::ABI_MINOR.to_le_bytes());
            b[12..16].copy_from_slice(&(abi::HEADER_SIZE as u32).to_le_bytes());
            b[16..20].copy_from_slice(&(abi::SLOT_SIZE as u32).to_le_bytes());
            b[20..24].copy_from_slice(&(abi::SLOT_COUNT as u32).to_le_bytes());
            b[24..28].copy_from_slice(&(abi::RING_LEN as u32).to_le_bytes());
            b[28..32].copy_from_slice(&(abi::NAME_CAP as u32).to_le_bytes());
            b[40..45].copy_from_slice(b"0.1.0");
            b[56..58].copy_from_slice(&(abi::POLL_COUNT as u16).to_le_bytes());
            b[58..60].copy_from_slice(&(abi::POLL_ENTRY_SIZE as u16).to_le_bytes());
            Image(b)
        }
        /// A registry as ABI minor 0 wrote it: no poll board, zeros at 56..64.
        fn minor0() -> Self {
            let mut img = Self::new();
            img.0
                .truncate(abi::HEADER_SIZE + abi::SLOT_SIZE * abi::SLOT_COUNT);
            img.0[10..12].copy_from_slice(&0u16.to_le_bytes());
            img.0[56..64].fill(0);
            img
        }
        fn entry(i: usize) -> usize {
            abi::POLL_BOARD_OFFSET + i * abi::POLL_ENTRY_SIZE
        }
        /// Board entry `i`: thread `tid` polling `name` at `file:line` since
        /// `since`, naming loop `slot` (u32::MAX: none) of generation `gen`.
        #[allow(clippy::too_many_arguments)]
        fn polling(
            &mut self,
            i: usize,
            tid: u32,
            name: &[u8],
            file: &[u8],
            line: u32,
            since: u64,
            slot: u32,
            gen: u32,
        ) -> &mut Self {
            use abi::poll as p;
            let e = Self::entry(i);
            self.put64(e + p::GEN, 6);
            self.put32(e + p::TID, tid);
            self.put32(e + p::STATE, 1);
            self.0[e + p::NAME..e + p::NAME + name.len()].copy_from_slice(name);
            self.put64(e + p::SINCE_NS, since);
            self.put32(e + p::LOOP_SLOT, slot);
            self.put32(e + p::LOOP_GEN, gen);
            self.put32(e + p::LINE, line);
            self.0[e + p::NAME_LEN] = name.len() as u8;
            self.0[e + p::FILE_LEN] = file.len() as u8;
            self.0[e + p::KIND] = p::KIND_FUTURE;
            self.0[e + p::FILE..e + p::FILE + file.len()].copy_from_slice(file);
            self
        }
        fn put64(&mut self, at: usize, v: u64) {
            self.0[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        fn put32(&mut self, at: usize, v: u32) {
            self.0[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        fn slot(i: usize) -> usize {
            abi::HEADER_SIZE + i * abi::SLOT_SIZE
        }
        fn live(&mut self, i: usize, name: &[u8], ticks: u64) -> &mut Self {
            let s = Self::slot(i);
            self.put64(s + o::GEN, 2);
            self.put32(s + o::IN_USE, 1);
            self.put32(s + o::NAME_LEN, name.len() as u32);
            self.0[s + o::NAME..s + o::NAME + name.len()].copy_from_slice(name);
            self.put64(s + o::PERIOD_NS, 20_000_000);
            self.put32(s + o::TID, 4242);
            self.put64(s + o::TICKS, ticks);
            self.put64(s + o::LAST_TICK_NS, 1_000_000_000);
            for t in ticks.saturating_sub(63)..=ticks {
                if t == 0 {
                    continue;
                }
                let e = s + o::RING + (t % 64) as usize * 16;
                self.put64(e, t);
                self.put64(e + 8, t.wrapping_mul(1000));
            }
            self
        }
    }

    #[test]
    fn a_decode_of_ranges_looks_only_inside_them() {
        let mut img = Image::new();
        img.live(0, b"main", 5);
        img.polling(0, 4242, b"task", b"src/a.rs", 7, 900, 0, 2);
        // Live too, but outside the ranges: a sparse decode does not look.
        img.live(3, b"other", 1);
        img.polling(5, 77, b"hidden", b"src/b.rs", 9, 900, u32::MAX, 0);
        let slot1 = Image::slot(1);
        let ranges = [
            (0, slot1 + 16),
            (Image::entry(0), abi::POLL_ENTRY_SIZE + 16),
        ];
        let sparse = decode_ranges(&img.0, &img.0, &ranges);
        let full = decode_section(&img.0, &img.0);
        let names = |s: &Scan| -> Vec<String> {
            s.registries[0]
                .loops
                .iter()
                .map(|l| l.name.clone())
                .collect()
        };
        assert_eq!(names(&full), ["main", "other"]);
        assert_eq!(names(&sparse), ["main"]);
        let tids =
            |s: &Scan| -> Vec<u32> { s.registries[0].polling.iter().map(|p| p.tid).collect() };
        assert_eq!(tids(&full), [4242, 77]);
        assert_eq!(tids(&sparse), [4242]);
        // What it does see, it decodes as a full decode does.
        assert_eq!(sparse.registries[0].loops[0], full.registries[0].loops[0]);
        assert_eq!(
            sparse.registries[0].polling[0],
            full.registries[0].polling[0]
        );
    }

    #[test]
    fn decodes_a_clean_registry() {
        let mut img = Image::new();
        img.live(0, b"main", 100).live(5, b"bg", 3);
        let scan = decode_section(&img.0, &img.0);
        assert!(scan.rejected.is_empty());
        assert_eq!(scan.registries.len(), 1);
        let r = &scan.registries[0];
        assert_eq!(r.crate_version, "0.1.0");
        assert_eq!(r.loops.len(), 2);
        let main = &r.loops[0];
        assert_eq!(
            (main.name.as_str(), main.tid, main.ticks),
            ("main", 4242, 100)
        );
        assert_eq!(main.lags.len(), 64);
        assert_eq!(main.lags.first().map(|l| l.tick), Some(37));
        // The ring wrapped (entry 100 % 64 = 36 is the newest): oldest first.
        assert!(main.lags.iter().map(|l| l.tick).eq(37..=100));
        assert!(main.lags.iter().all(|l| l.lag_ns == l.tick * 1000));
        let bg = &r.loops[1];
        assert_eq!((bg.slot, bg.lags.len()), (5, 3));
    }

    #[test]
    fn stats_measure_stall_past_period_and_percentiles() {
        let mut img = Image::new();
        img.live(0, b"main", 100);
        let scan = decode_section(&img.0, &img.0);
        let l = &scan.registries[0].loops[0];
        let st = l.stats(1_500_000_000);
        assert_eq!(st.age_ns, 500_000_000);
        assert_eq!(st.stall_ns, 480_000_000);
        assert_eq!(st.last_lag_ns, Some(100_000));
        assert_eq!(st.max_ns, Some(100_000));
        assert_eq!(st.p50_ns, Some(68_000)); // ticks 37..=100, rank 32
                                             // A tick "in the future" (clock skew, garbage) is no stall.
        assert_eq!(l.stats(0).stall_ns, 0);
    }

    #[test]
    fn entries_that_changed_between_copies_are_dropped() {
        let mut a = Image::new();
        a.live(0, b"main", 100);
        let mut b = Image::new();
        b.live(0, b"main", 101);
        // Copy 2 saw tick 101 overwrite ring slot 101 % 64 (tick 37's place).
        let scan = decode_section(&a.0, &b.0);
        let l = &scan.registries[0].loops[0];
        assert_eq!(l.ticks, 101);
        assert!(!l.lags.iter().any(|x| x.tick == 37 || x.tick == 101));
        assert_eq!(l.lags.len(), 63);
    }

    #[test]
    fn torn_entry_is_never_misattributed() {
        let mut a = Image::new();
        a.live(0, b"main", 100);
        let mut b = a.0.clone();
        // Copy 1 mixes tick 101's tag with tick 37's lag; copy 2 is complete.
        let e = Image::slot(0) + o::RING + 37 * 16;
        a.put64(e, 101);
        b[e..e + 8].copy_from_slice(&101u64.to_le_bytes());
        b[e + 8..e + 16].copy_from_slice(&101_000u64.to_le_bytes());
        b[Image::slot(0) + o::TICKS..][..8].copy_from_slice(&101u64.to_le_bytes());
        let scan = decode_section(&a.0, &b);
        let l = &scan.registries[0].loops[0];
        assert!(l.lags.iter().all(|x| x.lag_ns == x.tick.wrapping_mul(1000)));
        assert!(!l.lags.iter().any(|x| x.tick == 101));
    }

    #[test]
    fn slots_being_rewritten_are_unsettled_not_shown() {
        let mut a = Image::new();
        a.live(0, b"old-name", 10);
        let mut b = Image::new();
        b.live(0, b"new-name", 1);
        b.put64(Image::slot(0) + o::GEN, 4);
        let scan = decode_section(&a.0, &b.0);
        assert!(scan.registries[0].loops.is_empty());
        assert_eq!(scan.registries[0].unsettled_slots, 1);
        // Odd generation in both copies: metadata being written.
        let mut c = Image::new();
        c.live(0, b"x", 1);
        c.put64(Image::slot(0) + o::GEN, 3);
        let scan = decode_section(&c.0, &c.0);
        assert!(scan.registries[0].loops.is_empty());
        // in_use 2 (claimed / being released) is not live.
        let mut d = Image::new();
        d.live(0, b"x", 1);
        d.put32(Image::slot(0) + o::IN_USE, 2);
        let scan = decode_section(&d.0, &d.0);
        assert_eq!(scan.registries[0].loops.len(), 0);
    }

    #[test]
    fn a_section_full_of_bad_headers_keeps_a_bounded_list() {
        let n = 1000;
        let mut sec = vec![0u8; abi::ALIGN * n];
        for i in 0..n {
            sec[i * abi::ALIGN..i * abi::ALIGN + 8].copy_from_slice(&abi::MAGIC.to_le_bytes());
        }
        let scan = decode_section(&sec, &sec);
        assert!(scan.registries.is_empty());
        assert_eq!(scan.rejected.len(), MAX_REJECTED);
        assert_eq!(scan.rejected_more, n - MAX_REJECTED);
    }

    #[test]
    fn hostile_headers_are_rejected_with_reasons() {
        let cases: [(usize, Vec<u8>, &str); 6] = [
            (8, 2u16.to_le_bytes().to_vec(), "ABI major version 2"),
            (20, u32::MAX.to_le_bytes().to_vec(), "slot count"),
            (12, 0u32.to_le_bytes().to_vec(), "header size 0"),
            (16, 1u32.to_le_bytes().to_vec(), "slot size 1"),
            (24, 0u32.to_le_bytes().to_vec(), "ring length 0"),
            (28, 1000u32.to_le_bytes().to_vec(), "name capacity"),
        ];
        for (at, bytes, want) in cases {
            let mut img = Image::new();
            img.0[at..at + bytes.len()].copy_from_slice(&bytes);
            let scan = decode_section(&img.0, &img.0);
            assert!(scan.registries.is_empty(), "{want}");
            assert!(
                scan.rejected.iter().any(|r| r.reason.contains(want)),
                "{want}: {:?}",
                scan.rejected
            );
        }
        // A header claiming more bytes than the section holds.
        let img = Image::new();
        let cut = &img.0[..4096];
        let scan = decode_section(cut, cut);
        assert!(scan.rejected[0].reason.contains("claims 73792 bytes"));
    }

    #[test]
    fn garbage_and_short_inputs_do_not_panic() {
        let mut x: u64 = 0x1234_5678_9abc_def0;
        let mut bytes = vec![0u8; 200_000];
        for b in bytes.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        // Plant magics at aligned offsets over random data.
        for off in (0..bytes.len() - 8).step_by(4096) {
            bytes[off..off + 8].copy_from_slice(&abi::MAGIC.to_le_bytes());
        }
        let scan = decode_section(&bytes, &bytes);
        assert!(scan.registries.is_empty());
        assert!(!scan.rejected.is_empty());
        for n in [0, 1, 7, 8, 63, 64, 65] {
            let scan = decode_section(&bytes[..n], &bytes[..n]);
            assert!(scan.registries.is_empty());
        }
        // Copies of different lengths.
        let img = Image::new();
        let scan = decode_section(&img.0, &img.0[..100]);
        assert!(scan.registries.is_empty());
    }

    #[test]
    fn hostile_slot_contents_are_sanitized() {
        let mut img = Image::new();
        img.live(0, b"ok\x1b[31mred\xff\xfe", u64::MAX);
        let s = Image::slot(0);
        img.put32(s + o::NAME_LEN, 10_000); // longer than the capacity
        img.put64(s + o::PERIOD_NS, u64::MAX);
        img.put64(s + o::LAST_TICK_NS, u64::MAX);
        // A ring entry tagged for the wrong position.
        img.put64(s + o::RING + 3 * 16, 5);
        let scan = decode_section(&img.0, &img.0);
        let l = &scan.registries[0].loops[0];
        assert!(!l.name.chars().any(char::is_control), "{:?}", l.name);
        assert!(l.name.starts_with("ok"));
        assert!(l.lags.iter().all(|x| x.tick % 64 != 3 || x.tick != 5));
        let st = l.stats(0);
        assert_eq!((st.age_ns, st.stall_ns), (0, 0));
    }

    #[test]
    fn two_registries_back_to_back_are_both_found() {
        let mut a = Image::new();
        a.live(0, b"one", 1);
        let mut b = Image::new();
        b.live(1, b"two", 2);
        let mut section = a.0.clone();
        section.resize(abi::REGISTRY_SIZE.div_ceil(64) * 64, 0);
        section.extend_from_slice(&[0u8; 128]); // padding between them
        section.extend_from_slice(&b.0);
        let scan = decode_section(&section, &section);
        let names: Vec<_> = scan
            .registries
            .iter()
            .flat_map(|r| r.loops.iter().map(|l| l.name.clone()))
            .collect();
        assert_eq!(names, ["one", "two"]);
    }

    #[test]
    fn percentile_nearest_rank() {
        assert_eq!(percentile(&[], 50), None);
        assert_eq!(percentile(&[7], 99), Some(7));
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50), Some(50));
        assert_eq!(percentile(&v, 99), Some(99));
        assert_eq!(percentile(&v, 100), Some(100));
    }

    #[test]
    fn polls_in_progress_are_decoded_and_attributed_to_loops() {
        use abi::poll as p;
        let mut img = Image::new();
        img.live(0, b"main", 10).live(1, b"workers", 10);
        img.put32(Image::slot(1) + o::TID, 5001);
        // Thread of loop 0's last tick, naming no loop: matched by tid.
        img.polling(
            0,
            4242,
            b"orders",
            b"src/main.rs",
            37,
            500_000_000,
            u32::MAX,
            0,
        );
        img.put64(Image::entry(0) + p::TASK_ID, 42);
        // Another worker naming loop 1 (generation 2, as `live` writes).
        img.polling(1, 5002, b"", b"src/db.rs", 12, 900_000_000, 1, 2);
        img.0[Image::entry(1) + p::KIND] = p::KIND_RUNTIME_TASK;
        img.put64(Image::entry(1) + p::TASK_ID, 7);
        // A worker naming a slot reused since (generation 4 now 2): no loop.
        img.polling(2, 6000, b"stale", b"s.rs", 1, 950_000_000, 0, 4);
        // Idle (since 0) and free entries are not polls.
        img.polling(3, 7000, b"idle", b"i.rs", 1, 0, u32::MAX, 0);
        img.polling(4, 8000, b"free", b"f.rs", 1, 1, u32::MAX, 0);
        img.put32(Image::entry(4) + p::STATE, 0);
        img.put32(abi::header::POLL_REFUSED, 3);
        let scan = decode_section(&img.0, &img.0);
        let r = &scan.registries[0];
        assert_eq!(
            (r.poll_entries, r.poll_refused, r.unsettled_polls),
            (64, 3, 0)
        );
        assert_eq!(r.poll_problem, None);
        let tids: Vec<u32> = r.polling.iter().map(|x| x.tid).collect();
        assert_eq!(tids, [4242, 5002, 6000]);
        let main = &r.loops[0];
        assert_eq!(main.polling.len(), 1);
        let orders = &main.polling[0];
        assert_eq!(orders.describe(), "task 'orders' (src/main.rs:37)");
        assert_eq!((orders.task_id, orders.loop_slot), (Some(42), Some(0)));
        assert_eq!(orders.kind, PollKind::Future);
        assert_eq!(orders.duration_ns(2_020_000_000), 1_520_000_000);
        let workers = &r.loops[1];
        assert_eq!(workers.polling.len(), 1);
        assert_eq!(workers.polling[0].describe(), "task 7 (src/db.rs:12)");
        assert_eq!(workers.polling[0].kind, PollKind::RuntimeTask);
        assert_eq!(r.polling[2].loop_slot, None);
        assert_eq!(r.polling[2].describe(), "task 'stale' (s.rs:1)");
    }

    #[test]
    fn polls_that_changed_between_copies_are_unsettled() {
        use abi::poll as p;
        let mut a = Image::new();
        a.live(0, b"main", 10);
        a.polling(0, 4242, b"one", b"a.rs", 1, 100, u32::MAX, 0);
        a.polling(1, 4243, b"two", b"b.rs", 2, 200, u32::MAX, 0);
        a.polling(2, 4244, b"three", b"c.rs", 3, 300, u32::MAX, 0);
        let mut b = Image(a.0.clone());
        // Entry 0: a new poll began between the copies.
        b.put64(Image::entry(0) + p::SINCE_NS, 150);
        b.put64(Image::entry(0) + p::GEN, 8);
        // Entry 1: being rewritten in both copies (odd generation).
        a.put64(Image::entry(1) + p::GEN, 7);
        b.put64(Image::entry(1) + p::GEN, 7);
        // Entry 2: a byte changed without a generation change (a torn copy).
        b.0[Image::entry(2) + p::NAME] = b'T';
        let scan = decode_section(&a.0, &b.0);
        let r = &scan.registries[0];
        assert!(r.polling.is_empty(), "{:?}", r.polling);
        assert_eq!(r.unsettled_polls, 3);
    }

    #[test]
    fn hostile_poll_entries_are_capped_and_sanitized() {
        use abi::poll as p;
        let mut img = Image::new();
        img.live(0, b"main", 10);
        let e = Image::entry(0);
        img.polling(
            0,
            4242,
            b"ok\x1b[2Jx\xff",
            b"\x07bell.rs",
            u32::MAX,
            u64::MAX,
            1000,
            0,
        );
        img.0[e + p::NAME_LEN] = 255; // past the capacity
        img.0[e + p::FILE_LEN] = 255;
        img.0[e + p::FLAGS] = 0xFF;
        img.0[e + p::KIND] = 99;
        // Bytes right after the name field: must not leak into the name.
        img.0[e + p::NAME + abi::POLL_NAME_CAP..e + p::SINCE_NS].fill(b'!');
        let scan = decode_section(&img.0, &img.0);
        let r = &scan.registries[0];
        let x = &r.polling[0];
        assert!(!x.task.chars().any(char::is_control), "{:?}", x.task);
        assert!(x.task.starts_with("ok") && x.task.ends_with('…'));
        assert!(x.task.chars().count() <= abi::POLL_NAME_CAP + 1);
        assert!(x.file.starts_with('…') && !x.file.chars().any(char::is_control));
        assert_eq!(x.kind, PollKind::Unknown(99));
        assert_eq!(x.kind.as_str(), "unknown");
        assert_eq!(x.duration_ns(5), 0, "a poll that began in the future");
        assert_eq!(x.loop_slot, None, "slot 1000 does not exist");
        assert_eq!(x.task_id, None);
        assert!(r.loops[0].polling.is_empty());
    }

    #[test]
    fn hostile_board_geometry_drops_the_board_not_the_loops() {
        let cases: [(u16, u16, &str); 4] = [
            (65535, 128, "poll board of 65535 entries"),
            (64, 8, "poll entry size 8"),
            (64, 130, "poll entry size 130"),
            (64, 4104, "poll entry size 4104"),
        ];
        for (count, size, want) in cases {
            let mut img = Image::new();
            img.live(0, b"main", 10);
            img.0[56..58].copy_from_slice(&count.to_le_bytes());
            img.0[58..60].copy_from_slice(&size.to_le_bytes());
            let scan = decode_section(&img.0, &img.0);
            let r = &scan.registries[0];
            assert_eq!(r.loops.len(), 1, "{want}");
            let why = r.poll_problem.as_deref().unwrap_or_default();
            assert!(why.contains(want), "{want}: {why:?}");
            assert!(r.polling.is_empty());
        }
        // A board cut off by the end of the section.
        let mut img = Image::new();
        img.live(0, b"main", 10);
        img.polling(0, 1, b"x", b"x.rs", 1, 5, u32::MAX, 0);
        let cut = &img.0[..abi::POLL_BOARD_OFFSET + 100];
        let scan = decode_section(cut, cut);
        let r = &scan.registries[0];
        assert_eq!(r.loops.len(), 1);
        assert!(r
            .poll_problem
            .as_deref()
            .unwrap_or_default()
            .contains("poll board ends"));
        // Geometry differing between the copies.
        let mut b = Image(img.0.clone());
        b.0[56..58].copy_from_slice(&32u16.to_le_bytes());
        let scan = decode_section(&img.0, &b.0);
        assert!(scan.registries[0].poll_problem.is_some());
    }

    #[test]
    fn a_minor_0_image_still_decodes() {
        let mut img = Image::minor0();
        assert_eq!(img.0.len(), 73_792);
        img.live(0, b"main", 100).live(5, b"bg", 3);
        let scan = decode_section(&img.0, &img.0);
        assert!(scan.rejected.is_empty(), "{:?}", scan.rejected);
        let r = &scan.registries[0];
        assert_eq!(r.abi_minor, 0);
        assert_eq!(r.loops.len(), 2);
        assert_eq!(r.loops[0].lags.len(), 64);
        assert_eq!((r.poll_entries, r.poll_problem.as_deref()), (0, None));
        assert!(r.polling.is_empty() && r.loops[0].polling.is_empty());
        // Minor 0 had a reserved word at 56..64: whatever it holds is ignored.
        img.0[56..64].fill(0xFF);
        let scan = decode_section(&img.0, &img.0);
        let r = &scan.registries[0];
        assert_eq!(
            (r.loops.len(), r.poll_entries, r.poll_problem.as_deref()),
            (2, 0, None)
        );
        // Two minor-0 registries back to back: the scan finds both.
        let mut section = img.0.clone();
        section.extend_from_slice(&img.0);
        assert_eq!(decode_section(&section, &section).registries.len(), 2);
    }

    #[test]
    fn later_minors_with_longer_slots_and_entries_decode() {
        // A future minor that appends 64 bytes to each slot and each entry.
        let (slot, entry) = (abi::SLOT_SIZE + 64, abi::POLL_ENTRY_SIZE + 64);
        let board = abi::HEADER_SIZE + slot * abi::SLOT_COUNT;
        let mut b = vec![0u8; board + entry * abi::POLL_COUNT];
        let cur = Image::new();
        b[..abi::HEADER_SIZE].copy_from_slice(&cur.0[..abi::HEADER_SIZE]);
        b[10..12].copy_from_slice(&7u16.to_le_bytes());
        b[16..20].copy_from_slice(&(slot as u32).to_le_bytes());
        b[58..60].copy_from_slice(&(entry as u16).to_le_bytes());
        // Slot 2 and entry 3, laid out with the longer strides.
        let mut one = Image::new();
        one.live(0, b"wide", 5);
        let s = abi::HEADER_SIZE + 2 * slot;
        b[s..s + abi::SLOT_SIZE].copy_from_slice(&one.0[Image::slot(0)..Image::slot(1)]);
        b[s + abi::SLOT_SIZE..s + slot].fill(0xEE); // unknown appended fields
        one.polling(0, 4242, b"later", b"l.rs", 9, 77, u32::MAX, 0);
        let e = board + 3 * entry;
        b[e..e + abi::POLL_ENTRY_SIZE].copy_from_slice(&one.0[Image::entry(0)..Image::entry(1)]);
        b[e + abi::POLL_ENTRY_SIZE..e + entry].fill(0xEE);
        let scan = decode_section(&b, &b);
        assert!(scan.rejected.is_empty(), "{:?}", scan.rejected);
        let r = &scan.registries[0];
        assert_eq!(r.abi_minor, 7);
        assert_eq!(
            (r.loops.len(), r.loops[0].slot, r.loops[0].name.as_str()),
            (1, 2, "wide")
        );
        assert_eq!(r.polling.len(), 1);
        assert_eq!((r.polling[0].entry, r.polling[0].tid), (3, 4242));
        assert_eq!(r.polling[0].describe(), "task 'later' (l.rs:9)");
        assert_eq!(r.loops[0].polling.len(), 1, "matched by tid");
    }

    impl Image {
        const WB: usize = abi::WORKER_BOARD_OFFSET;
        fn worker_board(&mut self) -> &mut Self {
            self.put64(Self::WB + abi::worker_board::TAG, abi::WORKER_TAG);
            self.put32(
                Self::WB + abi::worker_board::COUNT,
                abi::WORKER_COUNT as u32,
            );
            self.put32(
                Self::WB + abi::worker_board::ENTRY_SIZE,
                abi::WORKER_ENTRY_SIZE as u32,
            );
            self
        }
        /// Worker entry `i`: worker `index` of 2 of the loop in slot 0
        /// (generation 2), thread `tid`, flags, since/after.
        fn worker(&mut self, i: usize, index: u16, tid: u32, flags: u32, since: u64) -> &mut Self {
            use abi::worker as w;
            let e = Self::WB + abi::WORKER_BOARD_HEADER + i * abi::WORKER_ENTRY_SIZE;
            self.put64(e + w::GEN, 4);
            self.put32(e + w::STATE, 1);
            self.put32(e + w::TID, tid);
            self.put32(e + w::LOOP_SLOT, 0);
            self.put32(e + w::LOOP_GEN, 2);
            self.put32(e + w::INDEX, u32::from(index) | 2 << 16);
            self.put32(e + w::FLAGS, flags);
            self.put64(e + w::SINCE_NS, since);
            self.put64(e + w::AFTER_NS, since.saturating_sub(20));
            self.put64(e + w::SAMPLED_NS, 900);
            self.put64(e + w::NEXT_NS, 920);
            self
        }
    }

    #[test]
    fn worker_board_entries_decode_with_their_loop() {
        use abi::worker as w;
        let mut img = Image::new();
        img.live(0, b"main", 10).worker_board();
        img.worker(0, 0, 0, w::FLAG_PARKED, 0)
            .worker(3, 1, 777, 0, 500);
        let scan = decode_section(&img.0, &img.0);
        let r = &scan.registries[0];
        assert_eq!((r.worker_entries, r.worker_problem.as_deref()), (64, None));
        assert_eq!(r.workers.len(), 2);
        let parked = &r.workers[0];
        assert!(parked.parked && parked.since_ns.is_none() && parked.tid.is_none());
        assert_eq!(parked.frozen_ns(10_000), 0);
        let stuck = &r.workers[1];
        assert_eq!(
            (
                stuck.entry,
                stuck.index,
                stuck.workers,
                stuck.tid,
                stuck.loop_slot
            ),
            (3, 1, 2, Some(777), Some(0))
        );
        assert_eq!((stuck.since_ns, stuck.after_ns), (Some(500), 480));
        assert_eq!((stuck.sampled_ns, stuck.next_ns), (900, 920));
        assert_eq!(stuck.frozen_ns(1500), 1000);

        // An entry being rewritten (odd generation, or different copies) is
        // unsettled, not shown.
        let mut other = Image(img.0.clone());
        let e3 = Image::WB + abi::WORKER_BOARD_HEADER + 3 * abi::WORKER_ENTRY_SIZE;
        other.put64(e3 + w::SINCE_NS, 501);
        let scan = decode_section(&img.0, &other.0);
        let r = &scan.registries[0];
        assert_eq!((r.workers.len(), r.unsettled_workers), (1, 1));
        let mut odd = Image(img.0.clone());
        odd.put64(e3 + w::GEN, 5);
        let r = &decode_section(&odd.0, &odd.0).registries[0];
        assert_eq!((r.workers.len(), r.unsettled_workers), (1, 1));

        // A stale loop generation names no loop.
        let mut stale = Image(img.0.clone());
        stale.put32(e3 + w::LOOP_GEN, 9);
        let r = &decode_section(&stale.0, &stale.0).registries[0];
        assert_eq!(r.workers[1].loop_slot, None);
    }

    #[test]
    fn worker_board_is_ignored_before_minor_2_and_bounded_when_garbage() {
        let mut img = Image::new();
        img.live(0, b"main", 10)
            .worker_board()
            .worker(0, 0, 5, 0, 100);
        img.0[10..12].copy_from_slice(&1u16.to_le_bytes());
        let r = &decode_section(&img.0, &img.0).registries[0];
        assert_eq!(
            (r.worker_entries, r.workers.len()),
            (0, 0),
            "minor 1: no board"
        );

        img.0[10..12].copy_from_slice(&2u16.to_le_bytes());
        img.put32(Image::WB + abi::worker_board::COUNT, u32::MAX);
        let r = &decode_section(&img.0, &img.0).registries[0];
        assert!(r
            .worker_problem
            .as_deref()
            .is_some_and(|p| p.contains("entries")));
        assert_eq!(
            (r.workers.len(), r.loops.len()),
            (0, 1),
            "the loops stay valid"
        );

        img.put32(Image::WB + abi::worker_board::COUNT, 64);
        img.put32(Image::WB + abi::worker_board::ENTRY_SIZE, 8);
        let r = &decode_section(&img.0, &img.0).registries[0];
        assert!(r
            .worker_problem
            .as_deref()
            .is_some_and(|p| p.contains("size")));

        // Cut off by the end of the section.
        img.put32(Image::WB + abi::worker_board::ENTRY_SIZE, 64);
        let cut = &img.0[..Image::WB + 200];
        let r = &decode_section(cut, cut).registries[0];
        assert!(r
            .worker_problem
            .as_deref()
            .is_some_and(|p| p.contains("ends at")));
    }

    #[test]
    fn next_due_moves_the_stall_only_from_minor_2_and_only_forward() {
        let mut img = Image::new();
        img.live(0, b"idle", 10);
        let s = Image::slot(0);
        // Last tick at 1 s, period 20 ms, next due at 1.2 s.
        img.put64(s + o::NEXT_DUE_NS, 1_200_000_000);
        let l = decode_section(&img.0, &img.0).registries[0].loops[0].clone();
        assert_eq!(l.next_due_ns, Some(1_200_000_000));
        assert_eq!(l.stats(1_150_000_000).stall_ns, 0, "not due yet");
        assert_eq!(l.stats(1_250_000_000).stall_ns, 50_000_000);
        // Not later than the last tick: spent, one period applies.
        img.put64(s + o::NEXT_DUE_NS, 900_000_000);
        let l = decode_section(&img.0, &img.0).registries[0].loops[0].clone();
        assert_eq!(l.next_due_ns, None);
        assert_eq!(l.stats(1_150_000_000).stall_ns, 130_000_000);
        // Minor 1 wrote zero there; a non-zero value is not trusted.
        img.put64(s + o::NEXT_DUE_NS, 1_200_000_000);
        img.0[10..12].copy_from_slice(&1u16.to_le_bytes());
        let l = decode_section(&img.0, &img.0).registries[0].loops[0].clone();
        assert_eq!(l.next_due_ns, None);
    }
}
