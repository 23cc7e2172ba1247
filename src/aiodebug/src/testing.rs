//! Time dilation for tests (feature `testing`): the ancestor's
//! `TimeDilatedLoop`, for tokio.
//!
//! Dilated time runs `dilation` times as fast as real time: with dilation 3,
//! a sleep of 1 s takes about 0.333 s of real time; with 0.1, about 10 s.
//! The dilation can be changed at any moment and sleeps, intervals and
//! timeouts already in progress follow the new rate from then on — virtual
//! time is continuous, only its speed changes. Two ways to use it:
//!
//! - **A whole runtime**, [`dilated_runtime`]: every `tokio::time` sleep,
//!   timeout, interval and `Instant::now()` polled in it — in the test's
//!   code and in every library (tower, hyper, reqwest, tokio-util...) —
//!   follows the process-wide dilation of [`set_dilation`], as the
//!   ancestor's loop did for `asyncio.sleep`, `call_later` and `wait_for`.
//!   Real I/O keeps real time.
//!
//!   ```
//!   use std::time::{Duration, Instant};
//!   aiodebug::testing::set_dilation(3.0);
//!   let rt = aiodebug::testing::dilated_runtime().unwrap();
//!   let real = Instant::now();
//!   rt.block_on(async { tokio::time::sleep(Duration::from_secs(1)).await }); // ≈ 0.333 s
//!   assert!(real.elapsed() >= Duration::from_millis(320));
//!   aiodebug::testing::set_dilation(0.1); // from now on, sleep(1 s) ≈ 10 s
//!   ```
//!
//! - **A [`Clock`]** passed to the code under test (or the module functions,
//!   which use the process-wide clock), on any runtime of any flavour; only
//!   the code that calls it is dilated.
//!
//!   ```
//!   # #[tokio::main(flavor = "current_thread")]
//!   # async fn main() {
//!   use aiodebug::testing::Clock;
//!   use std::time::{Duration, Instant};
//!   let clock = Clock::new(10.0);
//!   let real = Instant::now();
//!   clock.sleep(Duration::from_millis(500)).await; // 50 ms of real time
//!   assert!(real.elapsed() >= Duration::from_millis(49));
//!   # }
//!   ```
//!
//! Inside a dilated runtime the process-wide clock is that runtime's clock:
//! [`now`] equals `tokio::time::Instant::now()` and [`sleep`] is tokio's.
//!
//! ## How it differs from `tokio::time::pause`
//! `pause` (feature `test-util`) freezes the runtime's clock and jumps it to
//! the next timer whenever the runtime has nothing else to do. That is
//! instantaneous and deterministic, but only for code whose every wait is a
//! tokio timer on a `current_thread` runtime: real I/O (a socket, a child
//! process, a thread) keeps taking real time while timers leap ahead, so a
//! 30 s timeout around a real network call fires at once. Dilated time
//! keeps flowing at a fixed ratio to real time, so real I/O keeps running
//! and timeouts stay proportional, and its speed can change mid-test. A
//! dilated runtime is built on tokio's paused clock, moved forward by the
//! dilated real time and never left to leap (how, and its limits:
//! [`dilated_runtime`]). Under `pause`
//! a [`Clock::new`] follows tokio's paused time, dilated.
//!
//! Like `tokio::time`, the futures of this module must be polled inside a
//! tokio runtime with time enabled (they panic otherwise, as tokio's do).

use core::future::{poll_fn, Future};
use core::pin::pin;
use core::task::Poll;
use core::time::Duration;
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::watch;
use tokio::time::Instant;

mod runtime;
pub use runtime::{dilated_runtime, DilatedBuilder, DEFAULT_TICK, MAX_TICK, MIN_TICK};

/// Smallest dilation accepted (time 1000 times slower than real time).
pub const MIN_DILATION: f64 = 1e-3;
/// Largest dilation accepted (time a million times faster).
pub const MAX_DILATION: f64 = 1e6;

#[derive(Debug, Clone, Copy)]
struct State {
    /// Real instant of the last change of dilation.
    real_anchor: Instant,
    /// Virtual time since the origin at `real_anchor`.
    virt_anchor: Duration,
    dilation: f64,
}

#[derive(Debug)]
struct Inner {
    origin: Instant,
    state: Mutex<State>,
    changed: watch::Sender<u64>,
    /// The process-wide clock: inside a [`dilated_runtime`] it *is* the
    /// runtime's clock (see [`Clock::now`]).
    global: bool,
}

/// A clock whose time runs `dilation` times as fast as real time. Cheap to
/// clone; clones share the time and the dilation.
#[derive(Debug, Clone)]
pub struct Clock {
    inner: Arc<Inner>,
}

fn clamp(dilation: f64) -> f64 {
    if dilation.is_nan() {
        1.0
    } else {
        dilation.clamp(MIN_DILATION, MAX_DILATION)
    }
}

fn scale(d: Duration, factor: f64) -> Duration {
    Duration::try_from_secs_f64(d.as_secs_f64() * factor).unwrap_or(Duration::MAX)
}

impl Clock {
    /// A clock starting at the current real time, running `dilation` times as
    /// fast (clamped to [`MIN_DILATION`]..=[`MAX_DILATION`]; NaN means 1).
    ///
    /// ```
    /// let clock = aiodebug::testing::Clock::new(3.0);
    /// assert_eq!(clock.dilation(), 3.0);
    /// ```
    pub fn new(dilation: f64) -> Clock {
        Clock::with(dilation, false)
    }

    fn with(dilation: f64, global: bool) -> Clock {
        let now = base_now(global);
        let (changed, _) = watch::channel(0);
        Clock {
            inner: Arc::new(Inner {
                origin: now,
                state: Mutex::new(State {
                    real_anchor: now,
                    virt_anchor: Duration::ZERO,
                    dilation: clamp(dilation),
                }),
                changed,
                global,
            }),
        }
    }

    fn state(&self) -> State {
        *self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current dilation.
    pub fn dilation(&self) -> f64 {
        self.state().dilation
    }

    /// Changes the dilation from now on and returns the value applied
    /// (clamped as in [`Clock::new`]). Sleeps in progress follow the new rate
    /// for the rest of their virtual duration.
    ///
    /// ```
    /// let clock = aiodebug::testing::Clock::new(1.0);
    /// assert_eq!(clock.set_dilation(0.0), aiodebug::testing::MIN_DILATION);
    /// ```
    pub fn set_dilation(&self, dilation: f64) -> f64 {
        let dilation = clamp(dilation);
        {
            let mut st = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
            let real = base_now(self.inner.global);
            st.virt_anchor = virt_elapsed(&st, real);
            st.real_anchor = real;
            st.dilation = dilation;
        }
        self.inner.changed.send_modify(|n| *n = n.wrapping_add(1));
        if self.inner.global {
            runtime::dilation_changed();
        }
        dilation
    }

    /// The current virtual time. Virtual instants start at the real instant
    /// the clock was created and advance `dilation` times as fast.
    ///
    /// "Real" is the time of the tokio runtime the caller is in: real time, or
    /// tokio's paused time under `tokio::time::pause`, or a dilated
    /// runtime's time — so a `Clock::new(2.0)` inside a [`dilated_runtime`]
    /// runs twice as fast as that runtime. The process-wide clock
    /// ([`global`]) is the exception: inside a dilated runtime it returns
    /// that runtime's `tokio::time::Instant::now()` and its sleeps are that
    /// runtime's timers (the runtime already runs at its dilation), and
    /// elsewhere it measures real time. Virtual instants of different
    /// runtimes are not comparable.
    ///
    /// ```
    /// let clock = aiodebug::testing::Clock::new(2.0);
    /// let a = clock.now();
    /// let b = clock.now();
    /// assert!(b >= a);
    /// ```
    pub fn now(&self) -> Instant {
        if self.is_the_runtimes() {
            return Instant::now();
        }
        self.at(base_now(self.inner.global))
    }

    /// True for the process-wide clock polled inside a dilated runtime.
    fn is_the_runtimes(&self) -> bool {
        self.inner.global && runtime::in_dilated_runtime()
    }

    /// Virtual time since the origin at real instant `real` (real time,
    /// whatever runtime the caller is in): what a dilated runtime follows.
    fn virtual_at_real(&self, real: std::time::Instant) -> Duration {
        virt_elapsed(&self.state(), Instant::from_std(real))
    }

    /// Virtual time at real instant `real` under the current dilation.
    fn at(&self, real: Instant) -> Instant {
        let st = self.state();
        self.virt_instant(virt_elapsed(&st, real))
    }

    fn virt_instant(&self, since_origin: Duration) -> Instant {
        // Only unrepresentable after centuries of dilated time.
        self.inner
            .origin
            .checked_add(since_origin)
            .unwrap_or(self.inner.origin)
    }

    /// Real instant at which virtual time reaches `deadline` if the dilation
    /// stays as it is; None if it already has.
    fn real_deadline(&self, deadline: Instant) -> Option<Instant> {
        let st = self.state();
        let real_now = base_now(self.inner.global);
        let virt_now = self.virt_instant(virt_elapsed(&st, real_now));
        let left = deadline.checked_duration_since(virt_now)?;
        if left.is_zero() {
            return None;
        }
        let real_left = scale(left, 1.0 / st.dilation);
        // Far beyond any test: wait for a change of dilation instead.
        Some(
            real_now
                .checked_add(real_left)
                .unwrap_or(real_now + Duration::from_secs(86_400 * 365)),
        )
    }

    /// Waits until virtual time reaches `deadline`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let clock = aiodebug::testing::Clock::new(100.0);
    /// let deadline = clock.now() + std::time::Duration::from_secs(1);
    /// clock.sleep_until(deadline).await; // about 10 ms
    /// assert!(clock.now() >= deadline);
    /// # }
    /// ```
    pub async fn sleep_until(&self, deadline: Instant) {
        if self.is_the_runtimes() {
            // The runtime's own timers already follow the dilation.
            return tokio::time::sleep_until(deadline).await;
        }
        let mut changes = self.inner.changed.subscribe();
        loop {
            // Mark the current dilation seen *before* computing with it, so a
            // change right after is not missed.
            changes.borrow_and_update();
            let Some(real) = self.real_deadline(deadline) else {
                return;
            };
            // A change, or the clock is gone (cannot happen while we hold
            // it): recompute either way.
            race(tokio::time::sleep_until(real), changes.changed()).await;
        }
    }

    /// Waits for `duration` of virtual time.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let clock = aiodebug::testing::Clock::new(50.0);
    /// clock.sleep(std::time::Duration::from_millis(500)).await; // about 10 ms
    /// # }
    /// ```
    pub async fn sleep(&self, duration: Duration) {
        let deadline = self.now().checked_add(duration);
        match deadline {
            Some(d) => self.sleep_until(d).await,
            None => core::future::pending().await,
        }
    }

    /// Runs `future` with a limit of `duration` of virtual time.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::time::Duration;
    /// let clock = aiodebug::testing::Clock::new(100.0);
    /// let never = std::future::pending::<()>();
    /// assert!(clock.timeout(Duration::from_secs(1), never).await.is_err()); // ~10 ms
    /// assert_eq!(clock.timeout(Duration::from_secs(1), async { 5 }).await, Ok(5));
    /// # }
    /// ```
    pub async fn timeout<F: Future>(
        &self,
        duration: Duration,
        future: F,
    ) -> Result<F::Output, Elapsed> {
        match race(future, self.sleep(duration)).await {
            First(v) => Ok(v),
            Second(()) => Err(Elapsed(())),
        }
    }

    /// An interval ticking every `period` of virtual time; the first tick
    /// completes at once, and ticks missed while the task was busy complete
    /// at once too (tokio's default, `MissedTickBehavior::Burst`).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let clock = aiodebug::testing::Clock::new(20.0);
    /// let mut every = clock.interval(std::time::Duration::from_millis(100));
    /// let first = every.tick().await;
    /// let second = every.tick().await; // 5 ms later in real time
    /// assert!(second - first >= std::time::Duration::from_millis(100));
    /// # }
    /// ```
    pub fn interval(&self, period: Duration) -> Interval {
        Interval {
            clock: self.clone(),
            next: self.now(),
            period: period.max(Duration::from_nanos(1)),
        }
    }
}

/// The outcome of [`race`].
enum Either<A, B> {
    First(A),
    Second(B),
}
use Either::{First, Second};

/// Polls both futures until one completes, `a` first at each wake-up.
async fn race<A: Future, B: Future>(a: A, b: B) -> Either<A::Output, B::Output> {
    let mut a = pin!(a);
    let mut b = pin!(b);
    poll_fn(|cx| {
        if let Poll::Ready(v) = a.as_mut().poll(cx) {
            return Poll::Ready(First(v));
        }
        b.as_mut().poll(cx).map(Second)
    })
    .await
}

/// The "real" time a clock dilates: the caller's tokio time, except for the
/// process-wide clock inside a dilated runtime, which measures real time
/// (that runtime's tokio time is already dilated).
fn base_now(global: bool) -> Instant {
    if global && runtime::in_dilated_runtime() {
        Instant::from_std(std::time::Instant::now())
    } else {
        Instant::now()
    }
}

fn virt_elapsed(st: &State, real: Instant) -> Duration {
    let real_since = real.saturating_duration_since(st.real_anchor);
    st.virt_anchor
        .saturating_add(scale(real_since, st.dilation))
}

/// Ticks of a [`Clock::interval`].
#[derive(Debug)]
pub struct Interval {
    clock: Clock,
    next: Instant,
    period: Duration,
}

impl Interval {
    /// Waits for the next tick and returns its scheduled virtual instant.
    pub async fn tick(&mut self) -> Instant {
        let at = self.next;
        self.clock.sleep_until(at).await;
        self.next = at.checked_add(self.period).unwrap_or(at);
        at
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }
}

/// The error of a [`Clock::timeout`] that ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed(());

impl core::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("deadline has elapsed (dilated time)")
    }
}

impl std::error::Error for Elapsed {}

/// The process-wide clock of the module functions (dilation 1 until changed).
///
/// ```
/// let c = aiodebug::testing::global();
/// assert!(c.dilation() > 0.0);
/// ```
pub fn global() -> &'static Clock {
    static GLOBAL: OnceLock<Clock> = OnceLock::new();
    GLOBAL.get_or_init(|| Clock::with(1.0, true))
}

/// The process-wide clock's dilation.
pub fn dilation() -> f64 {
    global().dilation()
}

/// Changes the process-wide clock's dilation (see [`Clock::set_dilation`]).
///
/// ```
/// aiodebug::testing::set_dilation(2.0);
/// # aiodebug::testing::set_dilation(1.0);
/// ```
pub fn set_dilation(dilation: f64) -> f64 {
    global().set_dilation(dilation)
}

/// The process-wide clock's time (see [`Clock::now`]).
pub fn now() -> Instant {
    global().now()
}

/// Sleeps on the process-wide clock (see [`Clock::sleep`]).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// aiodebug::testing::sleep(std::time::Duration::from_millis(1)).await;
/// # }
/// ```
pub async fn sleep(duration: Duration) {
    global().sleep(duration).await
}

/// Sleeps until `deadline` on the process-wide clock (see [`Clock::sleep_until`]).
pub async fn sleep_until(deadline: Instant) {
    global().sleep_until(deadline).await
}

/// An interval on the process-wide clock (see [`Clock::interval`]).
pub fn interval(period: Duration) -> Interval {
    global().interval(period)
}

/// A timeout on the process-wide clock (see [`Clock::timeout`]).
pub async fn timeout<F: Future>(duration: Duration, future: F) -> Result<F::Output, Elapsed> {
    global().timeout(duration, future).await
}
