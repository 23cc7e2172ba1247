//! # aiodebug — a heartbeat for event loops, readable from outside
//!
//! Link this crate into a service and register each event loop. The crate keeps
//! a small registry in the process's memory (ELF section `aiodebug_hb`): one
//! slot per loop with its name, the OS thread that last ticked it, a tick
//! counter, the CLOCK_MONOTONIC time of the last tick and the last 64 lags.
//! `aiodebug-watch` reads it from another process — without stopping or
//! writing to the service — to measure loop lag, detect hangs while they last,
//! and dump every thread's stack when a loop is stuck.
//!
//! The default build has no dependencies, never panics, never blocks, and never
//! allocates on the tick path. On targets other than Linux x86_64/aarch64 it
//! builds and does nothing.
//!
//! ## A hand-written loop
//! ```
//! use std::time::Duration;
//! let hb = aiodebug::Heartbeat::with_period("worker", Duration::from_millis(10));
//! for _ in 0..3 {
//!     // ... one iteration of the loop's work ...
//!     std::thread::sleep(Duration::from_millis(10));
//!     hb.tick(); // lag = time since the previous tick − period
//! }
//! // Dropping `hb` frees the slot.
//! ```
//!
//! ## A tokio runtime (feature `tokio`)
//! The default multi-thread runtime or a current_thread one: a worker stuck
//! in one poll is seen even while the other workers keep the loop ticking.
//! ```no_run
//! # #[cfg(feature = "tokio")]
//! #[tokio::main]
//! async fn main() {
//!     let _monitor = aiodebug::tokio::spawn_monitor("main");
//!     // ... the service ...
//! }
//! # #[cfg(not(feature = "tokio"))]
//! # fn main() {}
//! ```
//!
//! ## In the loop: slow polls and what is being polled
//! [`slow::LogSlowExt::log_slow`] wraps any future (any runtime, stable
//! Rust) and reports each poll longer than a threshold, like the ancestor's
//! `log_slow_callbacks`: `Executing task 'orders' (spawned at
//! src/main.rs:37) took 0.069 seconds`. While a poll runs, the registry's
//! poll board shows watchers which task each thread is polling and since
//! when ([`polling`]), so a hang dump can name it.
//!
//! ## Features
//! | feature | adds | dependencies |
//! | --- | --- | --- |
//! | (default) | [`Heartbeat`], [`slow`], [`polling`] | none |
//! | `tokio` | `tokio::spawn_monitor`, `tokio::spawn_named`; with `--cfg tokio_unstable`, runtime-wide poll hooks | tokio (rt, time) |
//! | `log` | slow polls become `log` warnings | log |
//! | `tracing` | slow polls become `tracing` WARN events (with fields) | tracing |
//! | `testing` | time dilation for tests: `testing::dilated_runtime` (a whole runtime) and `testing::Clock` | tokio (+ sync, test-util) |
//!
//! The registry's layout is a versioned ABI documented in [`abi`]; C, C++ and
//! Python loops use it through `libaiodebug` (package `aiodebug-ffi`).

#![warn(missing_docs)]

pub mod abi;
pub mod polling;
mod registry;
pub mod slow;
mod sys;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "tokio")]
pub mod tokio;
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
mod workers;

use core::marker::PhantomData;
use core::time::Duration;
use std::cell::Cell;

/// A registered event loop. Call [`Heartbeat::tick`] once per loop iteration;
/// dropping the handle frees the slot.
///
/// The handle may move between threads but is not shared (`Send`, not `Sync`):
/// one slot has one writer. The thread id recorded is the one of each tick.
///
/// When the registry is full (64 loops) or the platform has none, the handle
/// is inert: ticks do nothing, and the reader reports the refusal count.
#[derive(Debug)]
pub struct Heartbeat {
    slot: Option<&'static registry::Slot>,
    index: u32,
    period_ns: u64,
    _not_sync: PhantomData<Cell<()>>,
}

impl core::fmt::Debug for registry::Slot {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Slot")
    }
}

impl Heartbeat {
    /// Registers a loop without a fixed period: each tick's lag is the time
    /// since the previous tick.
    ///
    /// ```
    /// let hb = aiodebug::Heartbeat::register("io-loop");
    /// hb.tick();
    /// ```
    pub fn register(name: &str) -> Heartbeat {
        Self::with_period(name, Duration::ZERO)
    }

    /// Registers a loop that should tick every `period`: each tick's lag is the
    /// time since the previous tick minus `period` (never negative), and
    /// watchers consider the loop stalled only once it is late past its period.
    ///
    /// ```
    /// use std::time::Duration;
    /// let hb = aiodebug::Heartbeat::with_period("game", Duration::from_millis(16));
    /// assert!(hb.is_registered() || cfg!(not(target_os = "linux")));
    /// ```
    pub fn with_period(name: &str, period: Duration) -> Heartbeat {
        let period_ns = duration_ns(period);
        let (index, slot) = match registry::claim() {
            Some((index, slot)) => {
                slot.init(name, period_ns, sys::monotonic_ns(), sys::thread_id());
                (index, Some(slot))
            }
            None => (u32::MAX, None),
        };
        Heartbeat {
            slot,
            index,
            period_ns,
            _not_sync: PhantomData,
        }
    }

    /// Records one iteration of the loop, measuring its lag from the previous
    /// tick: `now − previous tick − period`, saturating at zero.
    ///
    /// Lock-free, allocation-free; about the cost of reading the clock.
    #[inline]
    pub fn tick(&self) {
        if let Some(slot) = self.slot {
            let now = sys::monotonic_ns();
            let lag = now
                .saturating_sub(slot.last_tick_ns())
                .saturating_sub(self.period_ns);
            slot.tick(now, lag, sys::thread_id());
        }
    }

    /// Records one iteration with a lag the caller measured (for example the
    /// difference between a timer's scheduled and actual wake-up).
    ///
    /// ```
    /// use std::time::Duration;
    /// let hb = aiodebug::Heartbeat::register("timer-loop");
    /// hb.tick_with_lag(Duration::from_micros(250));
    /// ```
    #[inline]
    pub fn tick_with_lag(&self, lag: Duration) {
        if let Some(slot) = self.slot {
            slot.tick(sys::monotonic_ns(), duration_ns(lag), sys::thread_id());
        }
    }

    /// Says that the next tick is due `within` from now rather than one
    /// period after the last tick (a loop that sleeps longer while it has
    /// nothing to do). Watchers measure the stall from that moment; the next
    /// tick resets it to "one period after". ABI minor 2.
    ///
    /// ```
    /// use std::time::Duration;
    /// let hb = aiodebug::Heartbeat::with_period("poller", Duration::from_millis(20));
    /// hb.tick();
    /// hb.next_tick_within(Duration::from_millis(200)); // going idle
    /// ```
    #[inline]
    pub fn next_tick_within(&self, within: Duration) {
        if let Some(slot) = self.slot {
            slot.set_next_due(sys::monotonic_ns().saturating_add(duration_ns(within)));
        }
    }

    /// Whether the loop got a slot (false when the registry is full or the
    /// platform has no registry).
    pub fn is_registered(&self) -> bool {
        self.slot.is_some()
    }

    /// The period the loop was registered with.
    pub fn period(&self) -> Duration {
        Duration::from_nanos(self.period_ns)
    }

    /// Slot index and low 32 bits of the slot's generation (what poll board
    /// entries record to name this loop), if registered.
    pub(crate) fn loop_id(&self) -> Option<(u32, u32)> {
        self.slot.map(|s| (self.index, s.generation() as u32))
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            slot.release();
        }
    }
}

/// How many registrations this process's registry refused because every slot
/// was taken (only grows).
pub fn refused_registrations() -> u64 {
    registry::registry()
        .map(|r| r.header.refused.load(core::sync::atomic::Ordering::Relaxed))
        .unwrap_or(0)
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::sync::Mutex;

    // Tests share the one process-wide registry; the full-registry test must not
    // race the others.
    static SERIAL: Mutex<()> = Mutex::new(());

    #[test]
    fn full_registry_gives_inert_handles_and_counts_refusals() {
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let before = refused_registrations();
        let mut held = Vec::new();
        loop {
            let hb = Heartbeat::register("filler");
            if !hb.is_registered() {
                hb.tick(); // inert: must not panic
                break;
            }
            held.push(hb);
            assert!(held.len() <= abi::SLOT_COUNT, "more handles than slots");
        }
        assert!(refused_registrations() > before);
        let n = held.len();
        drop(held);
        // Every slot is free again.
        let again: Vec<_> = (0..n).map(|_| Heartbeat::register("again")).collect();
        assert!(again.iter().all(Heartbeat::is_registered));
    }

    #[test]
    fn tick_measures_lag_past_period() {
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let hb = Heartbeat::with_period("lagging", Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(20));
        hb.tick();
        let slot = hb.slot.expect("registered");
        assert_eq!(slot.ticks_for_test(), 1);
        let lag = slot.lag_for_test(1);
        assert!(lag >= 15_000_000, "lag {lag} ns should be about 19 ms");
    }
}
