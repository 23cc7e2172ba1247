//! The heartbeat's tear-free protocol, proven through the real cross-process
//! path: a fixture ticks one loop as fast as it can and churns registrations in
//! another thread; this test reads its registry with `process_vm_readv` for
//! seconds and checks that no lag is ever torn or attributed to the wrong tick
//! or the wrong registration.

mod support;

use aiodebug::abi;
use aiodebug_engine::heartbeat::{decode_section, Loop};
use aiodebug_engine::memory;
use aiodebug_engine::target::Target;
use aiodebug_fixtures::{churn_lag, stress_lag};
use std::collections::HashSet;
use std::time::{Duration, Instant};
use support::{Fixture, Variant};

/// What the checks saw, so a test can insist that it checked something.
#[derive(Default)]
struct Seen {
    reads: u64,
    stress_lags: u64,
    churn_lags: u64,
    churn_names: HashSet<u64>,
    stress_ticks: u64,
}

impl std::fmt::Debug for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} reads, {} stress lags and {} churn lags verified, {} registrations seen, {} ticks written",
            self.reads,
            self.stress_lags,
            self.churn_lags,
            self.churn_names.len(),
            self.stress_ticks
        )
    }
}

impl Seen {
    /// Checks every invariant the fixture's writers guarantee.
    fn check(&mut self, loops: &[&Loop]) {
        self.reads += 1;
        for lp in loops {
            for lag in &lp.lags {
                assert!(lag.tick >= 1 && lag.tick <= lp.ticks, "{lp:?}");
            }
            if lp.name == "stress" {
                assert!(lp.ticks >= self.stress_ticks, "tick counter went backwards");
                self.stress_ticks = lp.ticks;
                for lag in &lp.lags {
                    assert_eq!(
                        lag.lag_ns,
                        stress_lag(lag.tick),
                        "lag of tick {} is wrong: torn or misattributed",
                        lag.tick
                    );
                }
                self.stress_lags += lp.lags.len() as u64;
            } else if let Some(n) = lp.name.strip_prefix("churn-") {
                let n: u64 = n.parse().expect("churn name");
                for lag in &lp.lags {
                    assert_eq!(
                        lag.lag_ns,
                        churn_lag(n),
                        "lag attributed to the wrong registration {n}"
                    );
                }
                self.churn_lags += lp.lags.len() as u64;
                self.churn_names.insert(n);
            }
        }
    }
}

/// An adversarial copy: the header and the first `slots` slots, each 8-byte
/// word read by its own `process_vm_readv`, so that a writer can run between
/// any two words (the kernel's bulk copy is nearly atomic at this scale and
/// would hide races). Slots not copied stay zero, that is free.
fn copy_word_by_word(pid: i32, addr: u64, len: usize, slots: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let end = (abi::HEADER_SIZE + slots * abi::SLOT_SIZE).min(len);
    for off in (0..end).step_by(8) {
        let word = memory::read(pid, addr + off as u64, 8).expect("read word");
        out[off..off + 8].copy_from_slice(&word);
    }
    out
}

/// Held by every test of this file: one at a time. The sparse test counts
/// full reads with the engine's process-wide `FULL_READS`, which a test
/// reading in bulk beside it would add to (each test also keeps a core busy
/// with its writer).
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn reader_never_sees_a_torn_or_misattributed_lag() {
    let _serial = one_at_a_time();
    let fx = Fixture::spawn("fx-thread-loop", Variant::Pie, &["--stress", "30"]);
    let target = Target::open(fx.pid).expect("fixture exports a heartbeat");

    let mut seen = Seen::default();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        let reading = target.read().expect("read registry");
        seen.check(&reading.loops().collect::<Vec<_>>());
    }
    eprintln!("bulk copies: {seen:?}");
    // The check must have checked something: many reads, lags of both kinds.
    assert!(seen.reads > 1000, "only {} reads", seen.reads);
    assert!(seen.stress_ticks > 1_000_000, "writer too slow: {seen:?}");
    assert!(
        seen.stress_lags > 1000,
        "too few stress lags verified: {seen:?}"
    );
    assert!(
        seen.churn_names.len() > 20,
        "too few registrations seen: {seen:?}"
    );
    assert!(seen.churn_lags > 0);
}

#[test]
fn sparse_reads_never_see_a_torn_or_misattributed_lag() {
    let _serial = one_at_a_time();
    // `watch --all` reads only the live slots between full reads; the
    // churning registrations make the plan fail over and over.
    let fx = Fixture::spawn("fx-thread-loop", Variant::Pie, &["--stress", "30"]);
    let mut target = Target::open(fx.pid).expect("fixture exports a heartbeat");
    target.read_sparsely();
    let full_before =
        aiodebug_engine::target::FULL_READS.load(std::sync::atomic::Ordering::Relaxed);
    let mut seen = Seen::default();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        let reading = target.read().expect("read registry");
        seen.check(&reading.loops().collect::<Vec<_>>());
    }
    let full = aiodebug_engine::target::FULL_READS.load(std::sync::atomic::Ordering::Relaxed)
        - full_before;
    eprintln!("sparse copies: {seen:?}, {full} full reads");
    assert!(seen.reads > 1000, "only {} reads", seen.reads);
    // A floor that proves lags were checked, not a speed: on a loaded 2-core
    // machine the writer and this reader share the cores (CI saw < 1000).
    assert!(seen.stress_lags > 100, "too few stress lags: {seen:?}");
    assert!(full < seen.reads, "every read was a full one: {seen:?}");
}

#[test]
fn word_by_word_copies_never_yield_a_torn_or_misattributed_lag() {
    let _serial = one_at_a_time();
    let fx = Fixture::spawn("fx-thread-loop", Variant::Pie, &["--stress", "30"]);
    let target = Target::open(fx.pid).expect("fixture exports a heartbeat");
    let region = target.regions().first().expect("a registry region").clone();
    let len = usize::try_from(region.size).expect("size").min(1 << 20);
    let mut seen = Seen::default();
    let mut rejected_entries = 0u64;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        let first = copy_word_by_word(fx.pid, region.addr, len, 4);
        let second = copy_word_by_word(fx.pid, region.addr, len, 4);
        let scan = decode_section(&first, &second);
        let loops: Vec<&Loop> = scan
            .registries
            .iter()
            .flat_map(|r| r.loops.iter())
            .collect();
        for lp in &loops {
            rejected_entries += (abi::RING_LEN - lp.lags.len()) as u64;
        }
        seen.check(&loops);
    }
    eprintln!("word-by-word copies: {seen:?}, {rejected_entries} ring entries rejected");
    assert!(seen.reads > 50, "only {} reads", seen.reads);
    assert!(
        seen.stress_lags > 100,
        "too few stress lags verified: {seen:?}"
    );
    assert!(
        seen.churn_names.len() > 5,
        "too few registrations seen: {seen:?}"
    );
    // The writer really did race the reader: the protocol had entries to refuse.
    assert!(rejected_entries > 0);
}
