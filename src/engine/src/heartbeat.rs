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

use aiodebug::abi;

/// Largest `slot_count` a reader accepts.
pub const MAX_SLOTS: u32 = 1024;
/// Largest `slot_size` a reader accepts.
pub const MAX_SLOT_SIZE: u32 = 64 * 1024;
/// Largest `header_size` a reader accepts.
pub const MAX_HEADER_SIZE: u32 = 4096;
/// Largest `ring_len` a reader accepts.
pub const MAX_RING_LEN: u32 = 1024;

/// Everything found in one copied section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// Registries whose header validated.
    pub registries: Vec<Registry>,
    /// Would-be registries (right magic) that failed validation.
    pub rejected: Vec<Rejected>,
}

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
}

/// One live event loop, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loop {
    /// Slot index in its registry.
    pub slot: u32,
    /// Name, sanitized: invalid UTF-8 and control characters replaced by U+FFFD.
    pub name: String,
    /// OS thread id of the last tick.
    pub tid: u32,
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
    /// Verified lags, oldest first.
    pub lags: Vec<Lag>,
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

/// Validated header geometry.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    header_size: usize,
    slot_size: usize,
    slot_count: u32,
    ring_len: u32,
    name_cap: usize,
    total: usize,
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
    })
}

/// Turns untrusted name bytes into a printable string.
pub fn sanitize_name(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(raw.get(..end).unwrap_or_default())
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
    let name_len = (name_len as usize).min(g.name_cap);
    let name = sanitize_name(s2.get(o::NAME..o::NAME + name_len).unwrap_or_default());

    let ticks1 = u64_at(s1, o::TICKS).unwrap_or(0);
    let ticks = u64_at(s2, o::TICKS).unwrap_or(0);
    let last1 = u64_at(s1, o::LAST_TICK_NS).unwrap_or(0);
    let last_tick_ns = u64_at(s2, o::LAST_TICK_NS).unwrap_or(0);
    let tid = u32_at(s2, o::TID).unwrap_or(0);
    let settled = ticks1 == ticks && last1 == last_tick_ns;

    let ring_len = u64::from(g.ring_len);
    let mut lags = Vec::with_capacity(g.ring_len as usize);
    for j in 0..g.ring_len as usize {
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
    lags.sort_unstable_by_key(|l| l.tick);
    SlotRead::Live(Loop {
        slot: index,
        name,
        tid,
        period_ns,
        ticks,
        last_tick_ns,
        registered_ns,
        settled,
        lags,
    })
}

enum SlotRead {
    Free,
    Unsettled,
    Live(Loop),
}

/// Decodes every registry in two successive copies of a section.
///
/// `copy1` must have been copied entirely before `copy2` was started. The
/// section is scanned in steps of [`abi::ALIGN`] bytes for [`abi::MAGIC`].
pub fn decode_section(copy1: &[u8], copy2: &[u8]) -> Scan {
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
                scan.rejected.push(Rejected {
                    offset: off,
                    reason,
                });
                off += abi::ALIGN;
            }
            Ok(g) => {
                scan.registries.push(decode_registry(copy1, copy2, off, &g));
                off = off.saturating_add(g.total.div_ceil(abi::ALIGN) * abi::ALIGN);
            }
        }
    }
    scan
}

fn decode_registry(c1: &[u8], c2: &[u8], off: usize, g: &Geometry) -> Registry {
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
    };
    for i in 0..g.slot_count {
        let start = off + g.header_size + i as usize * g.slot_size;
        let range = start..start + g.slot_size;
        let (Some(s1), Some(s2)) = (c1.get(range.clone()), c2.get(range)) else {
            break;
        };
        match decode_slot(s1, s2, i, g) {
            SlotRead::Free => {}
            SlotRead::Unsettled => reg.unsettled_slots += 1,
            SlotRead::Live(l) => reg.loops.push(l),
        }
    }
    reg
}

/// Figures derived from a [`Loop`] at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoopStats {
    /// Time since the last tick: `now − last tick` (0 if the tick is in the future).
    pub age_ns: u64,
    /// How long the next tick is overdue: `age − period`, 0 while on time.
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
            stall_ns: age_ns.saturating_sub(self.period_ns),
            last_lag_ns: self.lags.last().map(|l| l.lag_ns),
            p50_ns: percentile(&sorted, 50),
            p99_ns: percentile(&sorted, 99),
            max_ns: sorted.last().copied(),
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
            Image(b)
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
}
