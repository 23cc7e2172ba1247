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
//! (threshold + period). A timer wake-up of an otherwise idle runtime costs
//! ~60 µs of CPU on a small VM, so while every worker is parked the monitor
//! ticks at most [`IDLE_PERIOD`] (200 ms) apart instead, on tokio's timer
//! wheel grid (one wake-up per tick; see `Grid`). Note that tokio's timer has
//! millisecond resolution, so lags below ~1 ms are noise.
//!
//! On a multi-thread runtime one blocked worker does not stop the monitor
//! (it runs on another worker); each tick therefore also samples tokio's
//! stable per-worker metrics into the registry's worker board, where a
//! watcher sees a worker whose counters stopped while it is not parked: a
//! worker inside one poll (see [`crate::abi::worker`]).
//!
//! Slow polls: [`spawn_named`] spawns a task whose polls longer than
//! [`crate::slow::DEFAULT_THRESHOLD`] are reported (`Executing task 'orders'
//! (spawned at src/main.rs:37) took 0.069 seconds`) and shown to watchers
//! while they run. Built with `RUSTFLAGS="--cfg tokio_unstable"` (tokio ≥
//! 1.46.1), `RuntimeBuilderExt::log_slow_polls` does the same for every task
//! of a runtime, through tokio's `on_before_task_poll` / `on_after_task_poll`
//! hooks (`scripts/check-tokio-unstable` tests it).

use crate::slow::{LogSlow, Site};
use crate::workers::{Counters, Sampler};
use crate::Heartbeat;
use core::future::Future;
use core::panic::Location;
use core::time::Duration;
use std::borrow::Cow;

/// Default tick period of [`spawn_monitor`] while the runtime works.
pub const DEFAULT_PERIOD: Duration = Duration::from_millis(20);

/// Tick period of a monitor while its runtime is idle (every worker parked,
/// nothing woke it but the monitor): 5 wake-ups a second instead of 50. A
/// parked runtime cannot be blocked; as soon as a worker wakes for anything
/// else, the monitor is back at its period at its next tick, and a watcher
/// sees the woken thread in the kernel meanwhile (its stall is measured from
/// when it left its park, see the crate's `abi` module, minor 2).
pub const IDLE_PERIOD: Duration = Duration::from_millis(200);

/// Spawns a monitor task named `name` with [`DEFAULT_PERIOD`] on the current
/// runtime. Abort the returned handle (or drop the runtime) to unregister.
///
/// The monitor measures the loop lag of the runtime (how late its timer
/// fires) and, on every tick, samples the runtime's per-worker counters
/// (tokio's stable `RuntimeMetrics`: park count, park/unpark count, busy
/// time) into the registry's worker board, so that a watcher sees a worker
/// stuck in one poll while the other workers keep the monitor ticking. No
/// `tokio_unstable`, no runtime builder: `#[tokio::main]` as it is, multi-thread
/// or current_thread.
///
/// # Panics
/// Like `tokio::spawn`, when called outside a tokio runtime.
pub fn spawn_monitor(name: &str) -> tokio::task::JoinHandle<()> {
    spawn_monitor_with_periods(name, DEFAULT_PERIOD, IDLE_PERIOD)
}

/// Spawns a monitor task ticking every `period` (at least 1 ms), idle or
/// not: what a fixed-period monitor did before [`IDLE_PERIOD`] existed. An
/// idle runtime then pays a timer wake-up every `period`, and a watcher
/// sees every block longer than `period` in the lags (`--slow`).
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
    spawn_monitor_with_periods(name, period, period)
}

/// Spawns a monitor task ticking every `period` (at least 1 ms) while the
/// runtime works and every `idle_period` (at least `period`) while it is
/// idle; [`spawn_monitor`] is `spawn_monitor_with_periods(name,
/// DEFAULT_PERIOD, IDLE_PERIOD)`.
///
/// While the runtime is idle, a block shorter than `idle_period` that ends
/// before the next tick is due leaves no trace in the lags: slow ticks
/// (`--slow`) of an idle service are seen only when they delay a tick.
/// Hangs are seen as fast as with a fixed period: a watcher sees the
/// runtime's thread leave its wait in the kernel.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
/// let ms = Duration::from_millis;
/// let monitor = aiodebug::tokio::spawn_monitor_with_periods("main", ms(10), ms(100));
/// tokio::time::sleep(ms(30)).await;
/// monitor.abort();
/// # }
/// ```
pub fn spawn_monitor_with_periods(
    name: &str,
    period: Duration,
    idle_period: Duration,
) -> tokio::task::JoinHandle<()> {
    let period = period.max(Duration::from_millis(1));
    let hb = Heartbeat::with_period(name, period);
    tokio::spawn(monitor(hb, period, idle_period.max(period)))
}

/// Worker counters of the current runtime, where tokio has them (64-bit
/// atomics).
#[cfg(target_has_atomic = "64")]
fn counters(m: &tokio::runtime::RuntimeMetrics, i: usize) -> Counters {
    Counters {
        park: m.worker_park_count(i),
        park_unpark: m.worker_park_unpark_count(i),
        busy_ns: u64::try_from(m.worker_total_busy_duration(i).as_nanos()).unwrap_or(u64::MAX),
    }
}

#[cfg(not(target_has_atomic = "64"))]
fn counters(_m: &tokio::runtime::RuntimeMetrics, _i: usize) -> Counters {
    Counters::default()
}

async fn monitor(hb: Heartbeat, period: Duration, idle_period: Duration) {
    let handle = tokio::runtime::Handle::current();
    let metrics = handle.metrics();
    let current_thread = matches!(
        handle.runtime_flavor(),
        tokio::runtime::RuntimeFlavor::CurrentThread
    );
    let publish = cfg!(target_has_atomic = "64") && hb.is_registered();
    let mut sampler = Sampler::new(metrics.num_workers(), current_thread, publish);
    let loop_id = hb.loop_id().unwrap_or((u32::MAX, 0));
    let origin = tokio::time::Instant::now();
    let mut grid = Grid::default();
    let mut parks_before: Option<u64> = None;
    let mut scheduled = origin + period;
    loop {
        tokio::time::sleep_until(scheduled).await;
        let woke = tokio::time::Instant::now();
        hb.tick_with_lag(woke.saturating_duration_since(scheduled));
        // Whatever worker runs the monitor belongs to this runtime's loop:
        // polls recorded on it are listed under the loop.
        crate::polling::set_thread_loop(&hb);
        let now_ns = crate::sys::monotonic_ns();
        let idle = sampler.sample(now_ns, crate::sys::thread_id(), |i| counters(&metrics, i));
        let parks = (0..metrics.num_workers())
            .fold(0u64, |a, i| a.saturating_add(counters(&metrics, i).park));
        let parked = parks_before.map(|b| parks.saturating_sub(b));
        parks_before = Some(parks);
        let next = if idle {
            let since = duration_ns(woke.saturating_duration_since(origin));
            let after =
                grid.idle_deadline(since, parked, duration_ns(period), duration_ns(idle_period));
            Duration::from_nanos(after.saturating_sub(since))
        } else {
            grid.busy();
            period
        };
        if next != period {
            hb.next_tick_within(next);
        }
        sampler.publish(now_ns.saturating_add(duration_ns(next)), loop_id);
        scheduled = woke + next;
    }
}

/// The slot width of level 1 of tokio's timer wheel (ms; level 0 has 64
/// slots of 1 ms).
const WHEEL_SLOT_MS: u64 = 64;
/// How many times an idle runtime's worker parks for one wake-up (tokio's
/// park count; strace): once when it parks, and once again at once, because
/// the monitor's own wake-up left the driver's eventfd readable. A cascade
/// of the wheel (a second wake-up) makes it 3.
const ONE_TICK_PARKS: u64 = 2;
/// Aligned idle ticks in a row that parked more than once before a locked
/// phase is searched again.
const GRID_MISSES: u32 = 8;

/// Idle ticks on tokio's timer-wheel grid: one wake-up per idle tick, not two.
///
/// Measured (strace of an idle `#[tokio::main]` service): a 200 ms sleep woke
/// its worker twice, ~60 ms before its deadline and at it — 10 wake-ups a
/// second for 5 ticks. tokio files a timer more than 64 ms away in level 1
/// of its wheel (64 ms slots), fires the slot at its start, and re-files the
/// timer in level 0 until its deadline. A deadline that is a whole number of
/// 64 ms since the runtime's clock started fires once, at the slot's start.
/// tokio does not expose when its clock started, so the phase (0–63 ms
/// before the monitor's own start) is searched: each idle tick tries one
/// phase, and the first after which the runtime woke only once (tokio's
/// stable park count, [`ONE_TICK_PARKS`]) is kept. Any other wake-up (a request) just means
/// "try again"; a kept phase that keeps missing is searched again.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Grid {
    /// The phase tried or kept (ms before the monitor's start, mod 64).
    phase_ms: u64,
    /// Whether `phase_ms` was confirmed.
    locked: bool,
    /// The previous tick slept until a grid point of `phase_ms`.
    trying: bool,
    /// Aligned ticks in a row that parked more than once, while locked.
    misses: u32,
}

impl Grid {
    /// The runtime worked: the next tick is a plain one.
    fn busy(&mut self) {
        self.trying = false;
    }

    /// The deadline (ns since the monitor's start) of an idle tick at `now`
    /// (same clock): the last grid point at most `idle` ahead and more than
    /// `period` ahead, or `now + idle` when there is none. `parked` is how
    /// many times the runtime's workers parked since the previous tick.
    fn idle_deadline(&mut self, now: u64, parked: Option<u64>, period: u64, idle: u64) -> u64 {
        const MS: u64 = 1_000_000;
        if self.trying {
            match parked {
                Some(n) if n <= ONE_TICK_PARKS => {
                    self.locked = true;
                    self.misses = 0;
                }
                _ if self.locked => {
                    self.misses += 1;
                    if self.misses >= GRID_MISSES {
                        self.locked = false;
                        self.misses = 0;
                    }
                }
                _ => self.phase_ms = (self.phase_ms + 1) % WHEEL_SLOT_MS,
            }
        }
        let end = now.saturating_add(idle);
        // Grid points are (64 k - phase) ms after the start.
        let k = (end / MS + self.phase_ms) / WHEEL_SLOT_MS;
        let point = (k * WHEEL_SLOT_MS)
            .checked_sub(self.phase_ms)
            .map(|ms| ms.saturating_mul(MS));
        match point {
            Some(p) if p > now.saturating_add(period) && p <= end => {
                self.trying = true;
                p
            }
            _ => {
                self.trying = false;
                end
            }
        }
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Spawns `future` as a task named `name` on the current runtime, reporting
/// every poll longer than [`crate::slow::DEFAULT_THRESHOLD`] with the
/// caller's location as the spawn site, and showing watchers what each worker
/// polls (see [`crate::polling`]).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let orders = aiodebug::tokio::spawn_named("orders", async { 7 });
/// assert_eq!(orders.await.unwrap(), 7);
/// # }
/// ```
///
/// # Panics
/// Like `tokio::spawn`, when called outside a tokio runtime.
#[track_caller]
pub fn spawn_named<F>(
    name: impl Into<Cow<'static, str>>,
    future: F,
) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    spawn_named_with_threshold(name, crate::slow::DEFAULT_THRESHOLD, future)
}

/// [`spawn_named`] with another threshold.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
/// let t = aiodebug::tokio::spawn_named_with_threshold("tight", Duration::from_millis(5), async {});
/// t.await.unwrap();
/// # }
/// ```
///
/// # Panics
/// Like `tokio::spawn`, when called outside a tokio runtime.
#[track_caller]
pub fn spawn_named_with_threshold<F>(
    name: impl Into<Cow<'static, str>>,
    threshold: Duration,
    future: F,
) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let wrapped = LogSlow::new(
        future,
        Some(name.into()),
        threshold,
        Location::caller(),
        Site::Spawned,
    )
    .with_task_id_lookup();
    tokio::spawn(wrapped)
}

/// tokio's task id as a number (its `Display`), without formatting: `Id`
/// hashes exactly its `NonZeroU64`.
pub(crate) fn task_id_u64(id: tokio::task::Id) -> u64 {
    use core::hash::{Hash, Hasher};
    struct Take(u64);
    impl Hasher for Take {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for &b in bytes {
                self.0 = (self.0 << 8) | u64::from(b);
            }
        }
        fn write_u64(&mut self, n: u64) {
            self.0 = n;
        }
    }
    let mut h = Take(0);
    id.hash(&mut h);
    h.finish()
}

/// One-call installation of runtime-wide slow-poll reports on a
/// [`tokio::runtime::Builder`] (only with `RUSTFLAGS="--cfg tokio_unstable"`).
#[cfg(tokio_unstable)]
pub trait RuntimeBuilderExt {
    /// Reports every poll of every task of the runtime that takes longer than
    /// `threshold` (`Executing task 42 (spawned at src/main.rs:37) took 0.069
    /// seconds`) and shows watchers, per worker thread, which task is being
    /// polled and since when.
    ///
    /// Uses tokio's `on_before_task_poll` and `on_after_task_poll` hooks
    /// (tokio ≥ 1.46.1 for the spawn location): it replaces hooks set before,
    /// and hooks set after replace it. `block_on`'s own future is not a task
    /// and is not covered; wrap it with [`crate::slow::LogSlowExt`].
    ///
    /// ```
    /// use aiodebug::tokio::RuntimeBuilderExt;
    /// let rt = tokio::runtime::Builder::new_multi_thread()
    ///     .enable_all()
    ///     .log_slow_polls(std::time::Duration::from_millis(50))
    ///     .build()
    ///     .unwrap();
    /// rt.block_on(async { tokio::spawn(async {}).await.unwrap() });
    /// ```
    fn log_slow_polls(&mut self, threshold: Duration) -> &mut Self;
}

#[cfg(tokio_unstable)]
impl RuntimeBuilderExt for tokio::runtime::Builder {
    fn log_slow_polls(&mut self, threshold: Duration) -> &mut Self {
        use crate::polling::{self, Label, PollKind};
        self.on_before_task_poll(|meta| {
            let label = Label::at("", meta.spawned_at(), PollKind::RuntimeTask);
            polling::begin(&label, task_id_u64(meta.id()));
        })
        .on_after_task_poll(move |meta| {
            let Some(took) = polling::end() else { return };
            if took > threshold {
                let at = meta.spawned_at();
                crate::slow::report(&crate::slow::SlowPoll {
                    name: None,
                    task_id: Some(task_id_u64(meta.id())),
                    file: at.file(),
                    line: at.line(),
                    site: Site::Spawned,
                    took,
                });
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Grid;

    const MS: u64 = 1_000_000;

    #[test]
    fn idle_ticks_try_one_phase_each_until_the_runtime_parks_once() {
        let mut g = Grid::default();
        // Phase 0: grid points at 64 k ms; from 10 ms, the last one within
        // 200 ms is 192 ms.
        assert_eq!(g.idle_deadline(10 * MS, None, 20 * MS, 200 * MS), 192 * MS);
        // Woke twice: the next phase, points at 64 k - 1 ms.
        assert_eq!(
            g.idle_deadline(192 * MS, Some(3), 20 * MS, 200 * MS),
            383 * MS
        );
        assert_eq!(g.phase_ms, 1);
        assert!(!g.locked);
        // Parked once: kept.
        assert_eq!(
            g.idle_deadline(383 * MS, Some(2), 20 * MS, 200 * MS),
            575 * MS
        );
        assert!(g.locked);
        // A request in between: a plain tick, nothing learnt from it.
        g.busy();
        assert_eq!(
            g.idle_deadline(600 * MS, Some(9), 20 * MS, 200 * MS),
            767 * MS
        );
        assert_eq!((g.phase_ms, g.locked), (1, true));
    }

    #[test]
    fn a_kept_phase_that_keeps_missing_is_searched_again() {
        let mut g = Grid {
            phase_ms: 5,
            locked: true,
            trying: true,
            misses: 0,
        };
        for _ in 0..super::GRID_MISSES {
            g.idle_deadline(1000 * MS, Some(3), 20 * MS, 200 * MS);
        }
        assert!(!g.locked);
        g.idle_deadline(1000 * MS, Some(3), 20 * MS, 200 * MS);
        assert_eq!(g.phase_ms, 6);
    }

    #[test]
    fn without_a_grid_point_in_the_window_the_idle_period_is_kept() {
        let mut g = Grid::default();
        // idle 50 ms, period 20 ms: from 70 ms, no multiple of 64 in (90, 120].
        assert_eq!(g.idle_deadline(70 * MS, None, 20 * MS, 50 * MS), 120 * MS);
        assert!(!g.trying);
        // Early on, before the first point: 64 - 63 = 1 ms is not ahead.
        let mut g = Grid {
            phase_ms: 63,
            ..Grid::default()
        };
        assert_eq!(g.idle_deadline(0, None, 20 * MS, 30 * MS), 30 * MS);
    }
}
