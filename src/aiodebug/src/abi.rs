//! The heartbeat registry's memory layout: a versioned ABI shared with readers
//! in other processes (`aiodebug-watch`, or any tool that reads memory).
//!
//! A registry is a [`HEADER_SIZE`]-byte header followed by `slot_count` slots of
//! `slot_size` bytes. It is 64-byte aligned and lives in the ELF section
//! [`SECTION_NAME`]; it is also reachable through a symbol whose name starts with
//! [`SYMBOL_PREFIX`]. Several registries may sit back to back in the section
//! (two semver-incompatible copies of this crate, or several shared libraries
//! in one process); a reader walks the section in steps of 64 bytes looking for
//! [`MAGIC`].
//!
//! All fields are little-endian (native on the supported targets) and are only
//! ever written with aligned atomic stores. No field is a pointer.
//!
//! ## Compatibility
//! Readers accept a registry whose [`header::ABI_MAJOR`] equals theirs and
//! whose `header_size` / `slot_size` are at least the sizes they know:
//! later minor versions only append fields, which old readers ignore.
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
pub const ABI_MINOR: u16 = 0;
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
/// Total size of one registry of this version.
pub const REGISTRY_SIZE: usize = HEADER_SIZE + SLOT_SIZE * SLOT_COUNT;

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
    /// `[u8; NAME_CAP]`: the loop's name, UTF-8, NUL padded.
    pub const NAME: usize = 64;
    /// `[(u64 tick, u64 lag_ns); RING_LEN]`: the lag of tick `t` sits at index
    /// `t % RING_LEN` with tag `t`; tag 0 means empty or being written.
    pub const RING: usize = 128;
    /// Size of one ring entry.
    pub const RING_ENTRY: usize = 16;
}
