//! Loop-lag monitoring for tokio runtimes (feature `tokio`).
//!
//! [`spawn_monitor`] spawns a task on the current runtime that sleeps for a
//! period and measures how late it wakes up — exactly the Python aiodebug's
//! `monitor_loop_lag`: lag = actual wake-up − scheduled wake-up. Each wake-up
//! is a tick of a [`Heartbeat`], so a watcher sees both the lags and, when the
//! runtime is blocked, that the tick is overdue.
//!
//! The default period is [`DEFAULT_PERIOD`], 20 ms rather than the ancestor's
//! 250 ms: a watcher can only tell a blocked loop from a sleeping one once the
//! next tick is overdue, so the period bounds how late a hang is noticed
//! (threshold + period). 50 wake-ups a second cost a runtime about a
//! microsecond each. Note that tokio's timer has millisecond resolution, so
//! lags below ~1 ms are noise.

use crate::Heartbeat;
use core::time::Duration;

/// Default tick period of [`spawn_monitor`].
pub const DEFAULT_PERIOD: Duration = Duration::from_millis(20);

/// Spawns a monitor task named `name` with [`DEFAULT_PERIOD`] on the current
/// runtime. Abort the returned handle (or drop the runtime) to unregister.
///
/// # Panics
/// Like `tokio::spawn`, when called outside a tokio runtime.
pub fn spawn_monitor(name: &str) -> tokio::task::JoinHandle<()> {
    spawn_monitor_with_period(name, DEFAULT_PERIOD)
}

/// Spawns a monitor task ticking every `period` (at least 1 ms).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
/// let monitor = aiodebug::tokio::spawn_monitor_with_period("main", Duration::from_millis(5));
/// tokio::time::sleep(Duration::from_millis(20)).await;
/// monitor.abort();
/// # }
/// ```
pub fn spawn_monitor_with_period(name: &str, period: Duration) -> tokio::task::JoinHandle<()> {
    let period = period.max(Duration::from_millis(1));
    let hb = Heartbeat::with_period(name, period);
    tokio::spawn(monitor(hb, period))
}

async fn monitor(hb: Heartbeat, period: Duration) {
    let mut scheduled = tokio::time::Instant::now() + period;
    loop {
        tokio::time::sleep_until(scheduled).await;
        let woke = tokio::time::Instant::now();
        hb.tick_with_lag(woke.saturating_duration_since(scheduled));
        scheduled = woke + period;
    }
}
