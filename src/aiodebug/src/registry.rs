//! The registry itself: a static in the `aiodebug_hb` section, and the owner's
//! side of the protocol described in [`crate::abi`].
// On targets without a registry only the types remain, unused.
#![cfg_attr(
    not(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )),
    allow(dead_code)
)]

use crate::abi;
use core::sync::atomic::{fence, AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};

/// `in_use` values: free, live (the only one readers accept), and claimed or
/// being released (metadata may be anybody's).
const IN_USE_FREE: u32 = 0;
const IN_USE_LIVE: u32 = 1;
const IN_USE_TRANSITION: u32 = 2;

#[repr(C)]
pub(crate) struct Header {
    magic: AtomicU64,
    abi_major: AtomicU16,
    abi_minor: AtomicU16,
    header_size: AtomicU32,
    slot_size: AtomicU32,
    slot_count: AtomicU32,
    ring_len: AtomicU32,
    name_cap: AtomicU32,
    pub(crate) refused: AtomicU64,
    crate_version: [AtomicU8; abi::header::CRATE_VERSION_LEN],
    poll_count: AtomicU16,
    poll_entry_size: AtomicU16,
    pub(crate) poll_refused: AtomicU32,
}

#[repr(C)]
pub(crate) struct Entry {
    tick: AtomicU64,
    lag_ns: AtomicU64,
}

#[repr(C)]
pub(crate) struct Slot {
    gen: AtomicU64,
    in_use: AtomicU32,
    name_len: AtomicU32,
    period_ns: AtomicU64,
    tid: AtomicU32,
    _reserved0: AtomicU32,
    ticks: AtomicU64,
    last_tick_ns: AtomicU64,
    registered_ns: AtomicU64,
    next_due_ns: AtomicU64,
    name: [AtomicU8; abi::NAME_CAP],
    ring: [Entry; abi::RING_LEN],
}

/// One entry of the poll board (see [`abi::poll`]).
#[repr(C)]
pub(crate) struct PollEntry {
    gen: AtomicU64,
    tid: AtomicU32,
    state: AtomicU32,
    name: [AtomicU64; abi::POLL_NAME_CAP / 8],
    since_ns: AtomicU64,
    task_id: AtomicU64,
    loop_slot: AtomicU32,
    loop_gen: AtomicU32,
    line: AtomicU32,
    /// name_len | file_len << 8 | flags << 16 | kind << 24 (little-endian bytes).
    lens: AtomicU32,
    file: [AtomicU64; abi::POLL_FILE_CAP / 8],
}

/// The worker board's header (see [`abi::worker_board`]).
#[repr(C)]
pub(crate) struct WorkerBoardHeader {
    tag: AtomicU64,
    count: AtomicU32,
    entry_size: AtomicU32,
    pub(crate) refused: AtomicU32,
    _pad: [AtomicU32; 11],
}

/// One entry of the worker board (see [`abi::worker`]).
#[repr(C)]
pub(crate) struct WorkerEntry {
    gen: AtomicU64,
    state: AtomicU32,
    tid: AtomicU32,
    loop_slot: AtomicU32,
    loop_gen: AtomicU32,
    /// index | workers << 16.
    index_workers: AtomicU32,
    flags: AtomicU32,
    since_ns: AtomicU64,
    after_ns: AtomicU64,
    sampled_ns: AtomicU64,
    next_ns: AtomicU64,
}

#[repr(C, align(64))]
pub(crate) struct Registry {
    pub(crate) header: Header,
    slots: [Slot; abi::SLOT_COUNT],
    polls: [PollEntry; abi::POLL_COUNT],
    pub(crate) worker_board: WorkerBoardHeader,
    workers: [WorkerEntry; abi::WORKER_COUNT],
}

// The layout is the ABI: any drift is a compile error.
const _: () = {
    assert!(core::mem::size_of::<Header>() == abi::HEADER_SIZE);
    assert!(core::mem::size_of::<Slot>() == abi::SLOT_SIZE);
    assert!(core::mem::size_of::<Registry>() == abi::REGISTRY_SIZE);
    assert!(core::mem::align_of::<Registry>() == abi::ALIGN);
    assert!(core::mem::offset_of!(Header, refused) == abi::header::REFUSED);
    assert!(core::mem::offset_of!(Header, crate_version) == abi::header::CRATE_VERSION);
    assert!(core::mem::offset_of!(Slot, in_use) == abi::slot::IN_USE);
    assert!(core::mem::offset_of!(Slot, name_len) == abi::slot::NAME_LEN);
    assert!(core::mem::offset_of!(Slot, period_ns) == abi::slot::PERIOD_NS);
    assert!(core::mem::offset_of!(Slot, tid) == abi::slot::TID);
    assert!(core::mem::offset_of!(Slot, ticks) == abi::slot::TICKS);
    assert!(core::mem::offset_of!(Slot, last_tick_ns) == abi::slot::LAST_TICK_NS);
    assert!(core::mem::offset_of!(Slot, registered_ns) == abi::slot::REGISTERED_NS);
    assert!(core::mem::offset_of!(Slot, name) == abi::slot::NAME);
    assert!(core::mem::offset_of!(Slot, ring) == abi::slot::RING);
    assert!(core::mem::offset_of!(Header, poll_count) == abi::header::POLL_COUNT);
    assert!(core::mem::offset_of!(Header, poll_entry_size) == abi::header::POLL_ENTRY_SIZE);
    assert!(core::mem::offset_of!(Header, poll_refused) == abi::header::POLL_REFUSED);
    assert!(core::mem::offset_of!(Registry, polls) == abi::POLL_BOARD_OFFSET);
    assert!(core::mem::offset_of!(Slot, next_due_ns) == abi::slot::NEXT_DUE_NS);
    assert!(core::mem::offset_of!(Registry, worker_board) == abi::WORKER_BOARD_OFFSET);
    assert!(abi::WORKER_BOARD_OFFSET % abi::ALIGN == 0);
    assert!(core::mem::size_of::<WorkerBoardHeader>() == abi::WORKER_BOARD_HEADER);
    assert!(core::mem::offset_of!(WorkerBoardHeader, count) == abi::worker_board::COUNT);
    assert!(core::mem::offset_of!(WorkerBoardHeader, entry_size) == abi::worker_board::ENTRY_SIZE);
    assert!(core::mem::offset_of!(WorkerBoardHeader, refused) == abi::worker_board::REFUSED);
    assert!(
        core::mem::offset_of!(Registry, workers)
            == abi::WORKER_BOARD_OFFSET + abi::WORKER_BOARD_HEADER
    );
    assert!(core::mem::size_of::<WorkerEntry>() == abi::WORKER_ENTRY_SIZE);
    assert!(core::mem::offset_of!(WorkerEntry, state) == abi::worker::STATE);
    assert!(core::mem::offset_of!(WorkerEntry, tid) == abi::worker::TID);
    assert!(core::mem::offset_of!(WorkerEntry, loop_slot) == abi::worker::LOOP_SLOT);
    assert!(core::mem::offset_of!(WorkerEntry, loop_gen) == abi::worker::LOOP_GEN);
    assert!(core::mem::offset_of!(WorkerEntry, index_workers) == abi::worker::INDEX);
    assert!(abi::worker::WORKERS == abi::worker::INDEX + 2);
    assert!(core::mem::offset_of!(WorkerEntry, flags) == abi::worker::FLAGS);
    assert!(core::mem::offset_of!(WorkerEntry, since_ns) == abi::worker::SINCE_NS);
    assert!(core::mem::offset_of!(WorkerEntry, after_ns) == abi::worker::AFTER_NS);
    assert!(core::mem::offset_of!(WorkerEntry, sampled_ns) == abi::worker::SAMPLED_NS);
    assert!(core::mem::offset_of!(WorkerEntry, next_ns) == abi::worker::NEXT_NS);
    assert!(core::mem::size_of::<PollEntry>() == abi::POLL_ENTRY_SIZE);
    assert!(core::mem::offset_of!(PollEntry, tid) == abi::poll::TID);
    assert!(core::mem::offset_of!(PollEntry, state) == abi::poll::STATE);
    assert!(core::mem::offset_of!(PollEntry, name) == abi::poll::NAME);
    assert!(core::mem::offset_of!(PollEntry, since_ns) == abi::poll::SINCE_NS);
    assert!(core::mem::offset_of!(PollEntry, task_id) == abi::poll::TASK_ID);
    assert!(core::mem::offset_of!(PollEntry, loop_slot) == abi::poll::LOOP_SLOT);
    assert!(core::mem::offset_of!(PollEntry, loop_gen) == abi::poll::LOOP_GEN);
    assert!(core::mem::offset_of!(PollEntry, line) == abi::poll::LINE);
    assert!(core::mem::offset_of!(PollEntry, lens) == abi::poll::NAME_LEN);
    assert!(abi::poll::FILE_LEN == abi::poll::NAME_LEN + 1);
    assert!(abi::poll::FLAGS == abi::poll::NAME_LEN + 2);
    assert!(abi::poll::KIND == abi::poll::NAME_LEN + 3);
    assert!(core::mem::offset_of!(PollEntry, file) == abi::poll::FILE);
    assert!(abi::POLL_NAME_CAP % 8 == 0 && abi::POLL_FILE_CAP % 8 == 0);
    assert!(abi::POLL_NAME_CAP < 256 && abi::POLL_FILE_CAP < 256);
};

const fn version_bytes() -> [AtomicU8; abi::header::CRATE_VERSION_LEN] {
    let v = env!("CARGO_PKG_VERSION").as_bytes();
    let mut out = [const { AtomicU8::new(0) }; abi::header::CRATE_VERSION_LEN];
    let mut i = 0;
    while i < v.len() && i < out.len() {
        out[i] = AtomicU8::new(v[i]);
        i += 1;
    }
    out
}

impl Registry {
    const fn new() -> Self {
        Registry {
            header: Header {
                magic: AtomicU64::new(abi::MAGIC),
                abi_major: AtomicU16::new(abi::ABI_MAJOR),
                abi_minor: AtomicU16::new(abi::ABI_MINOR),
                header_size: AtomicU32::new(abi::HEADER_SIZE as u32),
                slot_size: AtomicU32::new(abi::SLOT_SIZE as u32),
                slot_count: AtomicU32::new(abi::SLOT_COUNT as u32),
                ring_len: AtomicU32::new(abi::RING_LEN as u32),
                name_cap: AtomicU32::new(abi::NAME_CAP as u32),
                refused: AtomicU64::new(0),
                crate_version: version_bytes(),
                poll_count: AtomicU16::new(abi::POLL_COUNT as u16),
                poll_entry_size: AtomicU16::new(abi::POLL_ENTRY_SIZE as u16),
                poll_refused: AtomicU32::new(0),
            },
            slots: [const { Slot::new() }; abi::SLOT_COUNT],
            polls: [const { PollEntry::new() }; abi::POLL_COUNT],
            worker_board: WorkerBoardHeader {
                tag: AtomicU64::new(abi::WORKER_TAG),
                count: AtomicU32::new(abi::WORKER_COUNT as u32),
                entry_size: AtomicU32::new(abi::WORKER_ENTRY_SIZE as u32),
                refused: AtomicU32::new(0),
                _pad: [const { AtomicU32::new(0) }; 11],
            },
            workers: [const { WorkerEntry::new() }; abi::WORKER_COUNT],
        }
    }
}

impl Slot {
    const fn new() -> Self {
        Slot {
            gen: AtomicU64::new(0),
            in_use: AtomicU32::new(0),
            name_len: AtomicU32::new(0),
            period_ns: AtomicU64::new(0),
            tid: AtomicU32::new(0),
            _reserved0: AtomicU32::new(0),
            ticks: AtomicU64::new(0),
            last_tick_ns: AtomicU64::new(0),
            registered_ns: AtomicU64::new(0),
            next_due_ns: AtomicU64::new(0),
            name: [const { AtomicU8::new(0) }; abi::NAME_CAP],
            ring: [const {
                Entry {
                    tick: AtomicU64::new(0),
                    lag_ns: AtomicU64::new(0),
                }
            }; abi::RING_LEN],
        }
    }

    /// Opens a metadata write: readers reject the slot until [`Slot::end_write`].
    fn begin_write(&self) {
        self.gen.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::Release);
    }

    fn end_write(&self) {
        self.gen.fetch_add(1, Ordering::Release);
    }

    /// Fills a freshly claimed slot. Only the claimer calls this.
    pub(crate) fn init(&self, name: &str, period_ns: u64, now: u64, tid: u32) {
        self.begin_write();
        for e in &self.ring {
            e.tick.store(0, Ordering::Relaxed);
            e.lag_ns.store(0, Ordering::Relaxed);
        }
        let bytes = truncate_utf8(name, abi::NAME_CAP);
        for (i, b) in self.name.iter().enumerate() {
            b.store(bytes.get(i).copied().unwrap_or(0), Ordering::Relaxed);
        }
        self.name_len.store(bytes.len() as u32, Ordering::Relaxed);
        self.period_ns.store(period_ns, Ordering::Relaxed);
        self.tid.store(tid, Ordering::Relaxed);
        self.ticks.store(0, Ordering::Relaxed);
        self.last_tick_ns.store(now, Ordering::Relaxed);
        self.registered_ns.store(now, Ordering::Relaxed);
        self.next_due_ns.store(0, Ordering::Relaxed);
        self.in_use.store(IN_USE_LIVE, Ordering::Relaxed);
        self.end_write();
    }

    /// Says when the next tick is due (owner only; one word). 0: one period
    /// after the last tick.
    #[inline]
    pub(crate) fn set_next_due(&self, at_ns: u64) {
        self.next_due_ns.store(at_ns, Ordering::Release);
    }

    /// Records one tick. Only the owner calls this, from one thread at a time.
    #[inline]
    pub(crate) fn tick(&self, now: u64, lag_ns: u64, tid: u32) {
        let t = self.ticks.load(Ordering::Relaxed).wrapping_add(1).max(1);
        let e = &self.ring[(t % abi::RING_LEN as u64) as usize];
        e.tick.store(0, Ordering::Relaxed);
        fence(Ordering::Release);
        e.lag_ns.store(lag_ns, Ordering::Relaxed);
        e.tick.store(t, Ordering::Release);
        if self.tid.load(Ordering::Relaxed) != tid {
            self.tid.store(tid, Ordering::Relaxed);
        }
        // A due time set before this tick is spent: back to "one period".
        if self.next_due_ns.load(Ordering::Relaxed) != 0 {
            self.next_due_ns.store(0, Ordering::Relaxed);
        }
        self.last_tick_ns.store(now, Ordering::Release);
        self.ticks.store(t, Ordering::Release);
    }

    pub(crate) fn last_tick_ns(&self) -> u64 {
        self.last_tick_ns.load(Ordering::Relaxed)
    }

    /// The generation, for poll entries naming this slot's registration.
    pub(crate) fn generation(&self) -> u64 {
        self.gen.load(Ordering::Relaxed)
    }

    /// Frees the slot: readers stop seeing it before it can be claimed again.
    pub(crate) fn release(&self) {
        self.begin_write();
        self.in_use.store(IN_USE_TRANSITION, Ordering::Relaxed);
        self.end_write();
        // Only now may another registration claim it.
        self.in_use.store(IN_USE_FREE, Ordering::Release);
    }
}

/// The longest prefix of `s` that fits in `cap` bytes and ends on a char boundary.
fn truncate_utf8(s: &str, cap: usize) -> &[u8] {
    let mut end = s.len().min(cap);
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    s.as_bytes().get(..end).unwrap_or_default()
}

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
#[used]
#[link_section = "aiodebug_hb"]
#[export_name = "aiodebug_registry_0_1"]
static REGISTRY: Registry = Registry::new();

/// The process's registry, where the platform has one.
pub(crate) fn registry() -> Option<&'static Registry> {
    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    {
        Some(&REGISTRY)
    }
    #[cfg(not(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )))]
    {
        None
    }
}

/// Claims a free slot (with its index), or counts a refusal.
pub(crate) fn claim() -> Option<(u32, &'static Slot)> {
    let reg = registry()?;
    for (i, slot) in reg.slots.iter().enumerate() {
        if slot
            .in_use
            .compare_exchange(
                IN_USE_FREE,
                IN_USE_TRANSITION,
                Ordering::Acquire,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            return Some((i as u32, slot));
        }
    }
    reg.header.refused.fetch_add(1, Ordering::Relaxed);
    None
}

/// What a poll entry shows while a poll runs, packed as the ABI stores it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PollRecord {
    pub(crate) name: [u64; abi::POLL_NAME_CAP / 8],
    pub(crate) file: [u64; abi::POLL_FILE_CAP / 8],
    pub(crate) line: u32,
    /// name_len | file_len << 8 | flags << 16 | kind << 24.
    pub(crate) lens: u32,
    pub(crate) task_id: u64,
    pub(crate) since_ns: u64,
}

impl PollEntry {
    const fn new() -> Self {
        PollEntry {
            gen: AtomicU64::new(0),
            tid: AtomicU32::new(0),
            state: AtomicU32::new(IN_USE_FREE),
            name: [const { AtomicU64::new(0) }; abi::POLL_NAME_CAP / 8],
            since_ns: AtomicU64::new(0),
            task_id: AtomicU64::new(0),
            loop_slot: AtomicU32::new(u32::MAX),
            loop_gen: AtomicU32::new(0),
            line: AtomicU32::new(0),
            lens: AtomicU32::new(0),
            file: [const { AtomicU64::new(0) }; abi::POLL_FILE_CAP / 8],
        }
    }

    fn begin_write(&self) -> u64 {
        let g = self.gen.load(Ordering::Relaxed);
        self.gen.store(g.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        g
    }

    fn end_write(&self, g: u64) {
        self.gen.store(g.wrapping_add(2), Ordering::Release);
    }

    /// Fills a freshly claimed entry for thread `tid`. Only the claimer calls this.
    fn init(&self, tid: u32) {
        let g = self.begin_write();
        self.tid.store(tid, Ordering::Relaxed);
        self.since_ns.store(0, Ordering::Relaxed);
        self.task_id.store(0, Ordering::Relaxed);
        self.loop_slot.store(u32::MAX, Ordering::Relaxed);
        self.loop_gen.store(0, Ordering::Relaxed);
        self.line.store(0, Ordering::Relaxed);
        self.lens.store(0, Ordering::Relaxed);
        for w in self.name.iter().chain(self.file.iter()) {
            w.store(0, Ordering::Relaxed);
        }
        self.state.store(IN_USE_LIVE, Ordering::Relaxed);
        self.end_write(g);
    }

    /// Shows `rec` as the poll in progress (owner only).
    #[inline]
    pub(crate) fn publish(&self, rec: &PollRecord, loop_slot: u32, loop_gen: u32) {
        let g = self.begin_write();
        for (w, v) in self.name.iter().zip(rec.name) {
            w.store(v, Ordering::Relaxed);
        }
        for (w, v) in self.file.iter().zip(rec.file) {
            w.store(v, Ordering::Relaxed);
        }
        self.line.store(rec.line, Ordering::Relaxed);
        self.lens.store(rec.lens, Ordering::Relaxed);
        self.task_id.store(rec.task_id, Ordering::Relaxed);
        self.loop_slot.store(loop_slot, Ordering::Relaxed);
        self.loop_gen.store(loop_gen, Ordering::Relaxed);
        self.since_ns.store(rec.since_ns, Ordering::Relaxed);
        self.end_write(g);
    }

    /// Marks the thread as polling nothing (owner only; one word).
    #[inline]
    pub(crate) fn idle(&self) {
        self.since_ns.store(0, Ordering::Release);
    }

    /// Frees the entry (owner only, at thread exit).
    pub(crate) fn release(&self) {
        let g = self.begin_write();
        self.state.store(IN_USE_TRANSITION, Ordering::Relaxed);
        self.since_ns.store(0, Ordering::Relaxed);
        self.end_write(g);
        self.state.store(IN_USE_FREE, Ordering::Release);
    }
}

/// Claims a poll board entry for thread `tid`, or counts a refusal.
pub(crate) fn claim_poll_entry(tid: u32) -> Option<&'static PollEntry> {
    let reg = registry()?;
    for e in &reg.polls {
        if e.state
            .compare_exchange(
                IN_USE_FREE,
                IN_USE_TRANSITION,
                Ordering::Acquire,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            e.init(tid);
            return Some(e);
        }
    }
    // Saturating: the counter never wraps back to a small number.
    let _ = reg
        .header
        .poll_refused
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_add(1));
    None
}

/// What a worker entry shows after a sample (see [`abi::worker`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct WorkerRecord {
    pub(crate) tid: u32,
    pub(crate) index: u16,
    pub(crate) workers: u16,
    pub(crate) flags: u32,
    pub(crate) since_ns: u64,
    pub(crate) after_ns: u64,
    pub(crate) sampled_ns: u64,
    pub(crate) next_ns: u64,
}

impl core::fmt::Debug for WorkerEntry {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("WorkerEntry")
    }
}

impl WorkerEntry {
    const fn new() -> Self {
        WorkerEntry {
            gen: AtomicU64::new(0),
            state: AtomicU32::new(IN_USE_FREE),
            tid: AtomicU32::new(0),
            loop_slot: AtomicU32::new(u32::MAX),
            loop_gen: AtomicU32::new(0),
            index_workers: AtomicU32::new(0),
            flags: AtomicU32::new(0),
            since_ns: AtomicU64::new(0),
            after_ns: AtomicU64::new(0),
            sampled_ns: AtomicU64::new(0),
            next_ns: AtomicU64::new(0),
        }
    }

    /// Shows `rec` (owner only); readers reject the entry while it changes.
    pub(crate) fn publish(&self, rec: &WorkerRecord, loop_id: (u32, u32)) {
        let g = self.gen.load(Ordering::Relaxed);
        self.gen.store(g.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        self.tid.store(rec.tid, Ordering::Relaxed);
        self.loop_slot.store(loop_id.0, Ordering::Relaxed);
        self.loop_gen.store(loop_id.1, Ordering::Relaxed);
        self.index_workers.store(
            u32::from(rec.index) | u32::from(rec.workers) << 16,
            Ordering::Relaxed,
        );
        self.flags.store(rec.flags, Ordering::Relaxed);
        self.since_ns.store(rec.since_ns, Ordering::Relaxed);
        self.after_ns.store(rec.after_ns, Ordering::Relaxed);
        self.sampled_ns.store(rec.sampled_ns, Ordering::Relaxed);
        self.next_ns.store(rec.next_ns, Ordering::Relaxed);
        self.gen.store(g.wrapping_add(2), Ordering::Release);
    }

    /// Makes the entry live (the claimer only).
    fn activate(&self) {
        self.state.store(IN_USE_LIVE, Ordering::Release);
    }

    /// Frees the entry (owner only).
    pub(crate) fn release(&self) {
        let g = self.gen.load(Ordering::Relaxed);
        self.gen.store(g.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        self.state.store(IN_USE_TRANSITION, Ordering::Relaxed);
        self.gen.store(g.wrapping_add(2), Ordering::Release);
        self.state.store(IN_USE_FREE, Ordering::Release);
    }

    #[cfg(test)]
    pub(crate) fn record_for_test(&self) -> (u32, WorkerRecord) {
        let iw = self.index_workers.load(Ordering::Relaxed);
        (
            self.state.load(Ordering::Relaxed),
            WorkerRecord {
                tid: self.tid.load(Ordering::Relaxed),
                index: iw as u16,
                workers: (iw >> 16) as u16,
                flags: self.flags.load(Ordering::Relaxed),
                since_ns: self.since_ns.load(Ordering::Relaxed),
                after_ns: self.after_ns.load(Ordering::Relaxed),
                sampled_ns: self.sampled_ns.load(Ordering::Relaxed),
                next_ns: self.next_ns.load(Ordering::Relaxed),
            },
        )
    }
}

/// Claims a worker board entry, or counts a refusal.
pub(crate) fn claim_worker_entry() -> Option<&'static WorkerEntry> {
    let reg = registry()?;
    for e in &reg.workers {
        if e.state
            .compare_exchange(
                IN_USE_FREE,
                IN_USE_TRANSITION,
                Ordering::Acquire,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            e.publish(&WorkerRecord::default(), (u32::MAX, 0));
            e.activate();
            return Some(e);
        }
    }
    let _ = reg
        .worker_board
        .refused
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_add(1));
    None
}

#[cfg(test)]
impl PollEntry {
    pub(crate) fn since_for_test(&self) -> u64 {
        self.since_ns.load(Ordering::Relaxed)
    }
    pub(crate) fn record_for_test(&self) -> PollRecord {
        PollRecord {
            name: core::array::from_fn(|i| self.name[i].load(Ordering::Relaxed)),
            file: core::array::from_fn(|i| self.file[i].load(Ordering::Relaxed)),
            line: self.line.load(Ordering::Relaxed),
            lens: self.lens.load(Ordering::Relaxed),
            task_id: self.task_id.load(Ordering::Relaxed),
            since_ns: self.since_ns.load(Ordering::Relaxed),
        }
    }
    pub(crate) fn tid_for_test(&self) -> u32 {
        self.tid.load(Ordering::Relaxed)
    }
    pub(crate) fn state_for_test(&self) -> u32 {
        self.state.load(Ordering::Relaxed)
    }
    pub(crate) fn loop_for_test(&self) -> (u32, u32) {
        (
            self.loop_slot.load(Ordering::Relaxed),
            self.loop_gen.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
impl Slot {
    pub(crate) fn ticks_for_test(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }
    pub(crate) fn lag_for_test(&self, t: u64) -> u64 {
        let e = &self.ring[(t % abi::RING_LEN as u64) as usize];
        assert_eq!(e.tick.load(Ordering::Relaxed), t);
        e.lag_ns.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_utf8_valid() {
        assert_eq!(truncate_utf8("abc", 2), b"ab");
        // 'é' is two bytes: cutting inside it drops it whole.
        assert_eq!(truncate_utf8("aé", 2), b"a");
        assert_eq!(truncate_utf8("", 5), b"");
    }

    #[test]
    fn symbol_suffix_matches_crate_version() {
        let v: Vec<&str> = env!("CARGO_PKG_VERSION").split('.').collect();
        let compat = if v[0] == "0" {
            format!("{}_{}", v[0], v[1])
        } else {
            v[0].to_string()
        };
        assert_eq!(
            format!("aiodebug_registry_{compat}"),
            "aiodebug_registry_0_1"
        );
    }
}
