//! `aiodebug_heartbeat._native`: the companion crate `aiodebug` as a CPython
//! extension module (PyO3, stable ABI).
//!
//! The Python package `aiodebug_heartbeat` (python/aiodebug_heartbeat) is the
//! API users see; this module is its thin native half: a loop's [`Heartbeat`]
//! slot and the per-thread poll markers. Everything here is the same registry
//! a Rust service exports (ABI documented in `src/aiodebug/src/abi.rs`), so
//! `aiodebug-watch` reads a Python process unchanged.
//!
//! Nothing here raises into the caller's event loop: no function fails on
//! any argument value the type signature accepts (a negative or NaN lag counts
//! as zero, names are cut to the registry's capacity), and the companion
//! crate never panics.

use core::time::Duration;
use hb::polling::{self, Label, PollKind};
use pyo3::prelude::*;
use pyo3::types::PyString;
use std::sync::{Mutex, MutexGuard};

/// Seconds (a Python float) as a duration: NaN and negatives are zero,
/// infinities and overflows saturate.
fn seconds(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(if s > 0.0 {
        Duration::MAX
    } else {
        Duration::ZERO
    })
}

/// A registered event loop (one slot of the registry). Python's `Monitor`
/// ticks it from the loop's thread; `close()` frees the slot.
///
/// The slot has one writer (`aiodebug::Heartbeat` is `Send`, not `Sync`),
/// while Python may call `close()` from any thread or from the garbage
/// collector: the mutex, always uncontended on the tick path, keeps both
/// apart.
#[pyclass(module = "aiodebug_heartbeat._native", frozen)]
#[derive(Debug)]
struct Heartbeat {
    inner: Mutex<Option<hb::Heartbeat>>,
    name: String,
    period: Duration,
}

impl Heartbeat {
    /// The slot, unless closed. A poisoned lock (a panic while held, which
    /// the companion never does) still yields the slot.
    fn slot(&self) -> MutexGuard<'_, Option<hb::Heartbeat>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[pymethods]
impl Heartbeat {
    /// Registers loop `name` ticking every `period` seconds. A full registry
    /// gives an inert heartbeat (`registered` is false), never an error.
    #[new]
    fn new(name: &str, period: f64) -> Self {
        let period = seconds(period);
        Heartbeat {
            inner: Mutex::new(Some(hb::Heartbeat::with_period(name, period))),
            name: name.to_owned(),
            period,
        }
    }

    /// Records one tick whose lag (actual − scheduled wake-up) the caller
    /// measured, in seconds.
    fn tick_with_lag(&self, lag: f64) {
        if let Some(h) = self.slot().as_ref() {
            h.tick_with_lag(seconds(lag));
        }
    }

    /// Records one tick, the lag being the time since the previous tick minus
    /// the period.
    fn tick(&self) {
        if let Some(h) = self.slot().as_ref() {
            h.tick();
        }
    }

    /// Lists the polls of the calling thread under this loop (call it from
    /// the loop's thread).
    fn set_thread_loop(&self) {
        if let Some(h) = self.slot().as_ref() {
            polling::set_thread_loop(h);
        }
    }

    /// Frees the slot (idempotent); later ticks do nothing.
    fn close(&self) {
        let taken = self.slot().take();
        drop(taken);
    }

    /// Whether the loop holds a slot (false when the registry was full or
    /// after `close()`).
    #[getter]
    fn registered(&self) -> bool {
        self.slot()
            .as_ref()
            .is_some_and(hb::Heartbeat::is_registered)
    }

    /// The name registered (the registry keeps its first 64 bytes).
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// The period, in seconds.
    #[getter]
    fn period(&self) -> f64 {
        self.period.as_secs_f64()
    }

    fn __repr__(&self) -> String {
        format!(
            "<Heartbeat {:?} period={}s registered={}>",
            self.name,
            self.period.as_secs_f64(),
            self.registered()
        )
    }
}

/// The text of `s`, or its longest UTF-8-encodable prefix: a str with lone
/// surrogates cannot be encoded, and this must not raise.
fn text<'a>(s: &'a Bound<'_, PyString>) -> std::borrow::Cow<'a, str> {
    match s.to_str() {
        Ok(t) => t.into(),
        Err(_) => s.to_string_lossy(),
    }
}

/// Marks the start of a callback or task step on the calling thread: until
/// the matching [`poll_end`], watchers see `task` at `file:line` and since
/// when. The task is cut to 32 bytes, the file to its last 48.
#[pyfunction]
fn poll_begin(task: &Bound<'_, PyString>, file: &Bound<'_, PyString>, line: u32) {
    let label = Label::with_kind(&text(task), &text(file), line, PollKind::Foreign);
    polling::begin(&label, 0);
}

/// Ends the innermost poll begun on this thread; returns how long it ran in
/// seconds, or None without a matching begin.
#[pyfunction]
fn poll_end() -> Option<f64> {
    polling::end().map(|d| d.as_secs_f64())
}

/// `(major, minor)` of the registry ABI this module writes.
#[pyfunction]
fn abi_version() -> (u16, u16) {
    (hb::abi::ABI_MAJOR, hb::abi::ABI_MINOR)
}

/// Registrations this module's registry refused because all 64 slots were
/// taken (only grows).
#[pyfunction]
fn refused_registrations() -> u64 {
    hb::refused_registrations()
}

/// Threads that could not publish their polls because the poll board (64
/// entries) was full (only grows).
#[pyfunction]
fn refused_poll_threads() -> u64 {
    polling::refused_threads()
}

/// The native half of `aiodebug_heartbeat`.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Heartbeat>()?;
    m.add_function(wrap_pyfunction!(poll_begin, m)?)?;
    m.add_function(wrap_pyfunction!(poll_end, m)?)?;
    m.add_function(wrap_pyfunction!(abi_version, m)?)?;
    m.add_function(wrap_pyfunction!(refused_registrations, m)?)?;
    m.add_function(wrap_pyfunction!(refused_poll_threads, m)?)?;
    m.add("CRATE_VERSION", env!("CARGO_PKG_VERSION"))?;
    m.add("POLL_NAME_CAP", hb::abi::POLL_NAME_CAP)?;
    m.add("POLL_FILE_CAP", hb::abi::POLL_FILE_CAP)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::seconds;
    use core::time::Duration;

    #[test]
    fn seconds_never_fail() {
        assert_eq!(seconds(0.25), Duration::from_millis(250));
        assert_eq!(seconds(-1.0), Duration::ZERO);
        assert_eq!(seconds(f64::NAN), Duration::ZERO);
        assert_eq!(seconds(f64::INFINITY), Duration::MAX);
        assert_eq!(seconds(1e300), Duration::MAX);
    }
}
