//! The heartbeat registry's memory layout: a versioned ABI shared with readers
//! in other processes (`aiodebug-watch`, or any tool that reads memory).
//!
//! A registry is a [`HEADER_SIZE`]-byte header followed by `slot_count` slots of
//! `slot_size` bytes and (since minor 1) a *poll board* of `poll_count` entries
//! of `poll_entry_size` bytes. It is 64-byte aligned and lives in the ELF section
//! [`SECTION_NAME`]; it is also reachable through a symbol whose name starts with
//! [`SYMBOL_PREFIX`]. Several registries may sit back to back in the section
//! (two semver-incompatible copies of this crate, or several shared libraries
//! in one process); a reader walks the section in steps of 64 bytes looking for
//! [`MAGIC`].
//!
//! All fields are little-endian (native on the supported targets) and are only
//! ever written with aligned atomic stores. No field is a pointer.
//!
//! ## Versions
//! | minor | adds |
//! | ---: | --- |
//! | 0 | header, slots with name, thread, period, ticks, last tick, lag ring |
//! | 1 | the poll board: per thread, which task is being polled and since when ([`poll`]); header fields [`header::POLL_COUNT`], [`header::POLL_ENTRY_SIZE`], [`header::POLL_REFUSED`] (zero in minor 0) |
//! | 2 | [`slot::NEXT_DUE_NS`] (a loop says when its next tick is due: monitors that sleep longer while their runtime is idle); the *worker board* after the poll board: per worker thread of a runtime, whether it is parked and since when it has made no progress ([`worker`]) |
//!
//! ## Compatibility
//! Readers accept a registry whose [`header::ABI_MAJOR`] equals theirs and
//! whose `header_size` / `slot_size` are at least the sizes they know:
//! later minor versions only append fields, which old readers ignore. The
//! poll board sits *after* the last slot, so a minor-0 reader, which knows
//! only `header_size + slot_size * slot_count` bytes, reads minor-1 registries
//! unchanged; when it then scans on for further registries it meets no magic
//! in the board (the 64-byte aligned words of an entry are its generation and
//! its loop slot, never [`MAGIC`]). A reader must use the board only when
//! `abi_minor >= 1`, `poll_count > 0` and `poll_entry_size` is at least
//! [`POLL_ENTRY_SIZE`]; it indexes entries by `poll_entry_size` and ignores
//! bytes past the fields it knows.
//!
//! ## Reading a slot without tearing
//! A reader copies the whole registry twice (for example with two
//! `process_vm_readv` calls) and then, per slot:
//! - accepts the slot's metadata (name, period, registration time) only if
//!   [`slot::GEN`] is even and identical in both copies and [`slot::IN_USE`]
//!   is 1 in both; the owner makes `gen` odd while it (re)writes metadata and clears the
//!   ring, and even again afterwards;
//! - accepts a ring entry `i` only if its 16 bytes are identical in both copies,
//!   its tick tag is non-zero and `tag % ring_len == i`. The owner first zeroes
//!   the tag, then writes the lag, then writes the tag, so any copy that mixes
//!   two writes differs from the later copy.
//!
//! `ticks`, `last_tick_ns` and `tid` are single words written by the owner only;
//! a reader that sees them change between the copies knows the loop is alive.
//!
//! ## The poll board (minor 1): what each thread is polling
//! Each thread that polls an instrumented future or task (the slow-poll
//! wrapper, the tokio runtime hooks, or `aiodebug_poll_begin` from C) claims
//! one entry on first use and frees it when the thread exits. While a poll
//! runs, the entry holds the task's name, the source location it was spawned
//! or created at (`file` + `line`; a file longer than the field keeps its
//! *tail*), the runtime's task id if any, and [`poll::SINCE_NS`], the
//! CLOCK_MONOTONIC time the poll began; between polls `since_ns` is 0.
//! A watcher that sees the same non-zero `since_ns` for longer than a
//! threshold has found a stuck worker, even when other workers of the same
//! runtime keep the loop's heartbeat ticking.
//!
//! Reading an entry: accept it only if [`poll::STATE`] is 1, [`poll::GEN`] is
//! even, and all of its [`POLL_ENTRY_SIZE`] bytes are identical in both
//! copies. The owner makes `gen` odd before it rewrites the entry and even
//! after; it clears `since_ns` alone (one word) when a poll ends. A thread
//! busy with short polls therefore often reads as unsettled — harmless: only
//! a poll that lasts is worth reporting, and a lasting poll does not change.
//!
//! An entry names the loop its thread belongs to when known
//! ([`poll::LOOP_SLOT`], with the low 32 bits of that slot's generation in
//! [`poll::LOOP_GEN`] so a reused slot is not mistaken for it); otherwise
//! `loop_slot` is `u32::MAX` and readers may match the entry's `tid` with a
//! slot's `tid`.
//!
//! ## When the next tick is due (minor 2)
//! [`slot::NEXT_DUE_NS`], formerly reserved (zero), is the CLOCK_MONOTONIC
//! time at which the loop's next tick is due, written by the owner after each
//! tick; 0 means "one period after the last tick". A reader of minor 2
//! measures a loop's stall as `now − next_due` when it is non-zero and later
//! than the last tick, else as `now − last_tick − period`. The tokio monitor
//! ticks every period while its runtime works and sleeps longer (200 ms)
//! while every worker is parked; a minor-0/1 reader, which knows only the
//! period, then sees stalls of up to 180 ms in an idle service.
//!
//! ## The worker board (minor 2): runtime workers and their progress
//! The board starts at the first 64-byte boundary after the poll board
//! (`header_size + slot_size * slot_count + poll_entry_size * poll_count`,
//! rounded up to [`ALIGN`]) with a [`WORKER_BOARD_HEADER`]-byte board header
//! ([`worker_board`]: tag [`WORKER_TAG`], never [`MAGIC`], entry count and
//! size), followed by the entries ([`worker`]). A reader uses it only when
//! `abi_minor >= 2` and the tag matches; it indexes entries by the board's
//! entry size and ignores bytes past the fields it knows.
//!
//! A monitor (`aiodebug::tokio::spawn_monitor`) owns one entry per worker of
//! its runtime. At every tick it samples the runtime's per-worker counters
//! (tokio's stable `RuntimeMetrics`: park count, park/unpark count, busy
//! time), which a worker publishes whenever it parks, unparks, and every 61
//! scheduler ticks while it runs tasks. A worker whose counters did not move
//! while it was not parked has not reached a scheduling point since
//! [`worker::SINCE_NS`]: it is inside one poll. A worker that polls many
//! short tasks moves them all the time. Entries are read like poll board
//! entries: accept one only if [`worker::STATE`] is 1, [`worker::GEN`] is
//! even and its [`WORKER_ENTRY_SIZE`] bytes are identical in both copies.

/// Name of the ELF section holding registries.
pub const SECTION_NAME: &str = "aiodebug_hb";
/// Prefix of the symbol naming a registry (suffixed with the crate's
/// semver-compatible version, e.g. `aiodebug_registry_0_1`).
pub const SYMBOL_PREFIX: &str = "aiodebug_registry";
/// The first 8 bytes of every registry: `b"AIODBGHB"` read as a little-endian `u64`.
pub const MAGIC: u64 = u64::from_le_bytes(*b"AIODBGHB");
/// Major ABI version; readers reject any other.
pub const ABI_MAJOR: u16 = 1;
/// Minor ABI version; a higher minor only appends fields.
pub const ABI_MINOR: u16 = 2;
/// Size of the header this version writes.
pub const HEADER_SIZE: usize = 64;
/// Size of one slot this version writes.
pub const SLOT_SIZE: usize = 1152;
/// Number of slots in one registry.
pub const SLOT_COUNT: usize = 64;
/// Number of lag entries in a slot's ring.
pub const RING_LEN: usize = 64;
/// Capacity of a slot's name, in bytes of UTF-8 (NUL padded).
pub const NAME_CAP: usize = 64;
/// Alignment of a registry, and the step a reader scans a section with.
pub const ALIGN: usize = 64;
/// Number of entries in a registry's poll board (minor 1): at most this many
/// threads at once record what they poll; further threads are counted in
/// [`header::POLL_REFUSED`].
pub const POLL_COUNT: usize = 64;
/// Size of one poll board entry this version writes.
pub const POLL_ENTRY_SIZE: usize = 128;
/// Capacity of a poll entry's task name, in bytes of UTF-8 (NUL padded).
pub const POLL_NAME_CAP: usize = 32;
/// Capacity of a poll entry's source file, in bytes of UTF-8 (NUL padded);
/// longer paths keep their tail.
pub const POLL_FILE_CAP: usize = 48;
/// Offset of the poll board from the registry's start: right after the last slot.
pub const POLL_BOARD_OFFSET: usize = HEADER_SIZE + SLOT_SIZE * SLOT_COUNT;
/// Offset of the worker board (minor 2) from the registry's start: right
/// after the poll board (already 64-byte aligned in this version).
pub const WORKER_BOARD_OFFSET: usize = POLL_BOARD_OFFSET + POLL_ENTRY_SIZE * POLL_COUNT;
/// Size of the worker board's own header.
pub const WORKER_BOARD_HEADER: usize = 64;
/// Number of worker entries in a registry (all runtimes of the process
/// together); monitors that find the board full show no workers.
pub const WORKER_COUNT: usize = 64;
/// Size of one worker entry this version writes.
pub const WORKER_ENTRY_SIZE: usize = 64;
/// The first 8 bytes of the worker board: `b"AIODBGWK"` as a little-endian
/// `u64` (not [`MAGIC`]: a scan for registries never stops here).
pub const WORKER_TAG: u64 = u64::from_le_bytes(*b"AIODBGWK");
/// Total size of one registry of this version.
pub const REGISTRY_SIZE: usize =
    WORKER_BOARD_OFFSET + WORKER_BOARD_HEADER + WORKER_ENTRY_SIZE * WORKER_COUNT;

/// Byte offsets of the header's fields.
pub mod header {
    /// `u64`: [`super::MAGIC`].
    pub const MAGIC: usize = 0;
    /// `u16`: [`super::ABI_MAJOR`].
    pub const ABI_MAJOR: usize = 8;
    /// `u16`: [`super::ABI_MINOR`].
    pub const ABI_MINOR: usize = 10;
    /// `u32`: size of the header in bytes.
    pub const HEADER_SIZE: usize = 12;
    /// `u32`: size of one slot in bytes.
    pub const SLOT_SIZE: usize = 16;
    /// `u32`: number of slots.
    pub const SLOT_COUNT: usize = 20;
    /// `u32`: number of entries in each slot's lag ring.
    pub const RING_LEN: usize = 24;
    /// `u32`: capacity of a slot's name in bytes.
    pub const NAME_CAP: usize = 28;
    /// `u64`: registrations refused because every slot was taken (only grows).
    pub const REFUSED: usize = 32;
    /// `[u8; 16]`: the crate version that wrote the registry, NUL padded.
    pub const CRATE_VERSION: usize = 40;
    /// Length of the crate version field.
    pub const CRATE_VERSION_LEN: usize = 16;
    /// `u16` (minor 1; 0 before): number of poll board entries.
    pub const POLL_COUNT: usize = 56;
    /// `u16` (minor 1; 0 before): size of one poll board entry in bytes.
    pub const POLL_ENTRY_SIZE: usize = 58;
    /// `u32` (minor 1): threads that found the poll board full (only grows,
    /// saturates).
    pub const POLL_REFUSED: usize = 60;
}

/// Byte offsets of a slot's fields, relative to the slot's start.
pub mod slot {
    /// `u64`: metadata generation; odd while the owner rewrites metadata.
    pub const GEN: usize = 0;
    /// `u32`: 1 while a loop owns the slot and its metadata is valid; 0 free;
    /// 2 claimed or being released (readers skip it).
    pub const IN_USE: usize = 8;
    /// `u32`: length of the name in bytes (at most [`super::NAME_CAP`]).
    pub const NAME_LEN: usize = 12;
    /// `u64`: the loop's tick period in ns (0: no fixed period).
    pub const PERIOD_NS: usize = 16;
    /// `u32`: OS thread id (Linux tid) of the last tick.
    pub const TID: usize = 24;
    /// `u64`: number of ticks since registration (only grows).
    pub const TICKS: usize = 32;
    /// `u64`: CLOCK_MONOTONIC ns of the last tick (of registration before the first).
    pub const LAST_TICK_NS: usize = 40;
    /// `u64`: CLOCK_MONOTONIC ns of registration.
    pub const REGISTERED_NS: usize = 48;
    /// `u64` (minor 2; reserved zero before): CLOCK_MONOTONIC ns at which the
    /// next tick is due; 0: one period after the last tick.
    pub const NEXT_DUE_NS: usize = 56;
    /// `[u8; NAME_CAP]`: the loop's name, UTF-8, NUL padded.
    pub const NAME: usize = 64;
    /// `[(u64 tick, u64 lag_ns); RING_LEN]`: the lag of tick `t` sits at index
    /// `t % RING_LEN` with tag `t`; tag 0 means empty or being written.
    pub const RING: usize = 128;
    /// Size of one ring entry.
    pub const RING_ENTRY: usize = 16;
}

/// Byte offsets of a poll board entry's fields (minor 1), relative to the
/// entry's start. The board starts at `header_size + slot_size * slot_count`
/// from the registry's start.
pub mod poll {
    /// `u64`: generation; odd while the owner rewrites the entry.
    pub const GEN: usize = 0;
    /// `u32`: OS thread id (Linux tid) of the thread owning the entry.
    pub const TID: usize = 8;
    /// `u32`: 1 while a thread owns the entry; 0 free; 2 being claimed or
    /// released (readers skip anything but 1).
    pub const STATE: usize = 12;
    /// `[u8; POLL_NAME_CAP]`: the task's name, UTF-8, NUL padded (may be
    /// empty: a task known only by id and location).
    pub const NAME: usize = 16;
    /// `u64`: CLOCK_MONOTONIC ns at which the current poll began; 0 while the
    /// thread polls nothing.
    pub const SINCE_NS: usize = 48;
    /// `u64`: the runtime's id of the task (tokio's task id), 0 if unknown.
    pub const TASK_ID: usize = 56;
    /// `u32`: slot index of the loop this thread belongs to, `u32::MAX` if unknown.
    pub const LOOP_SLOT: usize = 64;
    /// `u32`: low 32 bits of that slot's [`super::slot::GEN`] when the
    /// association was made; a different value means the slot was reused.
    pub const LOOP_GEN: usize = 68;
    /// `u32`: source line of the task's spawn or creation site (0: unknown).
    pub const LINE: usize = 72;
    /// `u8`: length of the name in bytes (at most [`super::POLL_NAME_CAP`]).
    pub const NAME_LEN: usize = 76;
    /// `u8`: length of the file in bytes (at most [`super::POLL_FILE_CAP`]).
    pub const FILE_LEN: usize = 77;
    /// `u8`: [`FLAG_NAME_TRUNCATED`] | [`FLAG_FILE_TRUNCATED`].
    pub const FLAGS: usize = 78;
    /// `u8`: who recorded the poll: [`KIND_FUTURE`], [`KIND_RUNTIME_TASK`],
    /// [`KIND_FOREIGN`].
    pub const KIND: usize = 79;
    /// `[u8; POLL_FILE_CAP]`: the source file, UTF-8, NUL padded; a longer
    /// path keeps its last bytes (on a character boundary).
    pub const FILE: usize = 80;

    /// The name was cut to [`super::POLL_NAME_CAP`] bytes (its end is missing).
    pub const FLAG_NAME_TRUNCATED: u8 = 1;
    /// The file was cut to its last [`super::POLL_FILE_CAP`] bytes.
    pub const FLAG_FILE_TRUNCATED: u8 = 2;
    /// A future wrapped by the slow-poll wrapper (`LogSlow`, `spawn_named`).
    pub const KIND_FUTURE: u8 = 1;
    /// A task polled by a runtime whose poll hooks are installed (tokio).
    pub const KIND_RUNTIME_TASK: u8 = 2;
    /// A callback marked through the C ABI (`aiodebug_poll_begin`): C, C++,
    /// Python, ...
    pub const KIND_FOREIGN: u8 = 3;
}

/// Byte offsets of the worker board's header (minor 2), relative to the
/// board's start ([`WORKER_BOARD_OFFSET`] in this version).
pub mod worker_board {
    /// `u64`: [`super::WORKER_TAG`].
    pub const TAG: usize = 0;
    /// `u32`: number of entries.
    pub const COUNT: usize = 8;
    /// `u32`: size of one entry in bytes.
    pub const ENTRY_SIZE: usize = 12;
    /// `u32`: workers that found the board full (only grows, saturates).
    pub const REFUSED: usize = 16;
}

/// Byte offsets of a worker entry's fields (minor 2), relative to the entry's
/// start. Entries follow the board header.
pub mod worker {
    /// `u64`: generation; odd while the owner rewrites the entry.
    pub const GEN: usize = 0;
    /// `u32`: 1 while a monitor owns the entry; 0 free; 2 being claimed or
    /// released.
    pub const STATE: usize = 8;
    /// `u32`: OS thread id (Linux tid) of the worker thread, 0 while unknown.
    /// The monitor learns it when it runs on that worker while every other
    /// worker is parked; a reader may look for the worker among the threads
    /// named like the known workers.
    pub const TID: usize = 12;
    /// `u32`: slot index of the monitor's loop (the runtime's heartbeat).
    pub const LOOP_SLOT: usize = 16;
    /// `u32`: low 32 bits of that slot's [`super::slot::GEN`].
    pub const LOOP_GEN: usize = 20;
    /// `u16`: the worker's index in its runtime.
    pub const INDEX: usize = 24;
    /// `u16`: number of workers of the runtime.
    pub const WORKERS: usize = 26;
    /// `u32`: [`FLAG_PARKED`] | [`FLAG_CURRENT_THREAD`].
    pub const FLAGS: usize = 28;
    /// `u64`: CLOCK_MONOTONIC ns of the first sample that saw the worker's
    /// counters as they are now, the worker not parked; 0 while it is parked.
    pub const SINCE_NS: usize = 32;
    /// `u64`: the sample before that one (the counters were different, or the
    /// worker parked): the worker last made progress between `after_ns` and
    /// `since_ns`.
    pub const AFTER_NS: usize = 40;
    /// `u64`: CLOCK_MONOTONIC ns of the latest sample.
    pub const SAMPLED_NS: usize = 48;
    /// `u64`: CLOCK_MONOTONIC ns at which the monitor plans its next sample;
    /// a reader past it knows the monitor itself is held up.
    pub const NEXT_NS: usize = 56;

    /// The worker was parked (waiting for work) at the latest sample.
    pub const FLAG_PARKED: u32 = 1;
    /// The runtime is a current_thread runtime: its one worker is the thread
    /// that runs `block_on`, which also runs the monitor.
    pub const FLAG_CURRENT_THREAD: u32 = 2;
}
