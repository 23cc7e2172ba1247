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
    _reserved: AtomicU64,
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
    _reserved1: AtomicU64,
    name: [AtomicU8; abi::NAME_CAP],
    ring: [Entry; abi::RING_LEN],
}

#[repr(C, align(64))]
pub(crate) struct Registry {
    pub(crate) header: Header,
    slots: [Slot; abi::SLOT_COUNT],
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
                _reserved: AtomicU64::new(0),
            },
            slots: [const { Slot::new() }; abi::SLOT_COUNT],
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
            _reserved1: AtomicU64::new(0),
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
        self.in_use.store(IN_USE_LIVE, Ordering::Relaxed);
        self.end_write();
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
        self.last_tick_ns.store(now, Ordering::Release);
        self.ticks.store(t, Ordering::Release);
    }

    pub(crate) fn last_tick_ns(&self) -> u64 {
        self.last_tick_ns.load(Ordering::Relaxed)
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

/// Claims a free slot, or counts a refusal.
pub(crate) fn claim() -> Option<&'static Slot> {
    let reg = registry()?;
    for slot in &reg.slots {
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
            return Some(slot);
        }
    }
    reg.header.refused.fetch_add(1, Ordering::Relaxed);
    None
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
