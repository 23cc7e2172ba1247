//! The dilated runtime: tokio's paused clock, moved forward by the dilated
//! amount of real time. How it works and its limits are in
//! [`dilated_runtime`]'s docs.

use super::{global, race, scale};
use core::future::Future;
use core::pin::pin;
use core::task::{Context, Waker};
use core::time::Duration;
use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::task::Wake;
use std::time::Instant as RealInstant;
use tokio::runtime::{Id, Runtime};
use tokio::time::Instant;

/// The driver's default real-time period.
pub const DEFAULT_TICK: Duration = Duration::from_millis(1);
/// The shortest period [`DilatedBuilder::tick`] accepts: tokio's timers and
/// its parks have a millisecond's granularity.
pub const MIN_TICK: Duration = Duration::from_millis(1);
/// The longest period [`DilatedBuilder::tick`] accepts.
pub const MAX_TICK: Duration = Duration::from_millis(100);

/// Tokio's timer granularity: finer steps of virtual time fire no timer
/// earlier, so slow dilations tick once per virtual millisecond, not faster.
const TIMER_GRANULARITY: Duration = Duration::from_millis(1);

/// How old, in virtual time, the ticker lets the clock get while the runtime
/// is parked. Its timers need no ticker then (see [`keep`]) and the unpark
/// hook brings the clock up to date for its tasks, so only blocking tasks
/// (and the next `block_on`'s start) read a clock this old: at ×1, a tenth
/// of the ticker's wake-ups.
const PARKED_STALENESS: Duration = Duration::from_millis(10);

/// A `current_thread` runtime (time and I/O enabled) whose clock runs at the
/// process-wide dilation of [`set_dilation`](super::set_dilation) — the
/// ancestor's `TimeDilatedLoop` for tokio. Every `tokio::time` sleep,
/// `sleep_until`, `timeout`, `interval` and `Instant::now()` polled in it, in
/// the test's code and in every library, follows the dilation; real I/O
/// (sockets, child processes, threads) keeps real time; a change of dilation
/// applies at once, also to sleeps in progress. When the runtime is idle,
/// virtual time keeps flowing at the dilated rate: it never leaps to the
/// next timer as `tokio::time::pause` alone does.
///
/// Same as `DilatedBuilder::new().build()`. The I/O driver is enabled with
/// `enable_all`, so it exists when tokio has `net`, `process` or `signal`
/// (any test doing I/O with tokio has one).
///
/// With dilation 3, a `sleep(1 s)` takes about 0.333 s of real time:
/// ```
/// use std::time::{Duration, Instant};
/// aiodebug::testing::set_dilation(3.0);
/// let rt = aiodebug::testing::dilated_runtime().unwrap();
/// let real = Instant::now();
/// rt.block_on(async { tokio::time::sleep(Duration::from_secs(1)).await });
/// let took = real.elapsed();
/// assert!(took >= Duration::from_millis(320), "{took:?}");
/// # assert!(took < Duration::from_millis(990), "{took:?}");
/// ```
/// With dilation 0.1, about 10 s:
/// ```no_run
/// # use std::time::Duration;
/// aiodebug::testing::set_dilation(0.1);
/// let rt = aiodebug::testing::dilated_runtime().unwrap();
/// rt.block_on(async { tokio::time::sleep(Duration::from_secs(1)).await }); // 10 s real
/// ```
///
/// # How it works
/// The runtime is a `current_thread` runtime built with
/// `start_paused(true)` (tokio feature `test-util`), so every
/// `tokio::time::Instant::now()`, sleep, timeout and interval polled in it —
/// in any library — reads and waits on its paused clock. That clock is kept
/// at `start + V(now) − V(start)`, where `V` is the process-wide clock's
/// virtual time as a function of real time (piecewise linear, with a kink at
/// each [`set_dilation`](super::set_dilation), recorded when it is made; so
/// a change takes effect at that instant, for the rest of every sleep).
/// Moving the clock is `tokio::time::advance`, done by:
///
/// - the runtime thread itself, in its unpark hook: whatever woke it (I/O,
///   another thread, a timer), its tasks then see the clock up to date;
/// - a **ticker**, one blocking task (`spawn_blocking`) that sleeps in real
///   time (a condition variable with a timeout): every tick (1 ms) or 1 ms
///   of virtual time, whichever is longer, while the runtime runs or is not
///   being driven; every tick or 10 ms of virtual time while it is parked;
///   at once on a change of dilation. A running blocking task is what inhibits
///   tokio's auto-advance in tokio 1.x (`BlockingSchedule::new` counts it,
///   its release uncounts it; nothing else does, `tokio::time::pause`'s
///   docs say as much), so while the ticker lives the runtime never leaps to
///   its next timer: idle, it parks for real.
///
/// An idle runtime with auto-advance inhibited parks until its next timer as
/// if virtual time ran at ×1 (it waits the timer's virtual distance in real
/// time). At dilations up to 1 that is never too long: it wakes on time or
/// early, the hook moves the clock, and it waits again for the rest — at ×1
/// timers are as precise as in a plain runtime and an idle runtime costs
/// almost nothing. Above 1 it is too long by the dilation, so a **keeper**
/// task holds a timer one tick ahead: the runtime wakes once a tick, the
/// clock has moved by `tick × dilation`, and the timers due fire.
///
/// # Limits
/// - **Resolution.** Above ×1 a timer fires up to a tick and a millisecond
///   late in real time (`tick` is [`DEFAULT_TICK`], 1 ms, unless set with
///   [`DilatedBuilder::tick`]; the keeper's timer has tokio's millisecond
///   granularity), plus the scheduling delay of a loaded machine; at ×1 and below, within tokio's own millisecond. Between
///   moves, `Instant::now()` stands still: right after each wake-up of the
///   runtime it is exact; otherwise — when a `block_on` starts, in a task
///   that runs long without a break, in a blocking task — it is as old as
///   the last move: a ticker period (a tick, or 1 ms of virtual time below
///   ×1; 10 ms of virtual time while the runtime is parked, which a
///   `block_on` started soon after the previous one may still see), more
///   when the ticker thread is late on a busy machine. So a sleep created
///   first thing in a `block_on` can end that much early in real time, as
///   its start was read that late.
/// - **CPU.** An idle dilated runtime costs 0.2–0.5 % of a core at ×1 (the
///   ticker's 100 wake-ups a second), less below, 1–2.5 % at ×3 and above
///   (500–1000 runtime wake-ups a second at the default tick), against
///   ~0.01 % for a plain runtime; a busy one pays the ticker's 1000
///   wake-ups a second on top of its own work. `cargo bench -p aiodebug
///   --bench dilation` measures it; figures in the README.
/// - **`spawn_blocking`** runs in real time, as any thread does; unlike
///   under plain `tokio::time::pause` it does not freeze the clock — virtual
///   time keeps flowing at the dilation while it runs. Inside a blocking
///   task, `tokio::time::Instant::now()` reads the runtime's virtual time.
///   The ticker occupies one thread of the blocking pool for the runtime's
///   life, and the keeper is one task (`num_alive_tasks` counts it).
/// - **Between `block_on` calls** virtual time keeps flowing (the ticker
///   keeps moving the clock), so it stays continuous with real time and with
///   the process-wide clock. `block_on` from inside another runtime's task
///   panics, as with any tokio runtime ("Cannot start a runtime from within
///   a runtime"); from a plain thread or a `spawn_blocking` thread of
///   another runtime it works. A future is timed by the runtime whose
///   context polls it: a `tokio::time::sleep` polled by another runtime
///   follows that runtime's clock.
/// - **Current-thread only.** tokio can pause only a `current_thread`
///   runtime's clock (`pause` and `start_paused` refuse a multi-thread one),
///   and its blocking tasks inhibit auto-advance only there; a multi-thread
///   runtime cannot be dilated this way.
/// - **Do not call `tokio::time::pause` or `resume` on it**: the clock must
///   stay paused. After a `resume` the runtime runs on real time (the
///   ticker stops; tokio prints the panic of the refused `advance` once).
///   `tokio::time::advance` works and jumps virtual time forward.
/// - **`test-util` is process-wide.** Once any runtime in the process has a
///   paused clock, every `tokio::time::Instant::now()` in the process — in
///   other runtimes too — looks up its runtime's clock (a thread-local and a
///   mutex) instead of reading the system clock. Other runtimes keep real
///   time. Fine in tests; one reason `testing` is not for production builds.
pub fn dilated_runtime() -> io::Result<Runtime> {
    DilatedBuilder::new().build()
}

/// Options of a [`dilated_runtime`].
///
/// ```
/// use std::time::Duration;
/// let rt = aiodebug::testing::DilatedBuilder::new()
///     .tick(Duration::from_millis(5)) // coarser timers, a fifth of the wake-ups
///     .build()
///     .unwrap();
/// rt.block_on(async { tokio::time::sleep(Duration::from_millis(20)).await });
/// ```
#[derive(Debug, Clone)]
pub struct DilatedBuilder {
    tick: Duration,
}

impl Default for DilatedBuilder {
    fn default() -> Self {
        DilatedBuilder::new()
    }
}

impl DilatedBuilder {
    /// The defaults: a tick of [`DEFAULT_TICK`].
    pub fn new() -> DilatedBuilder {
        DilatedBuilder { tick: DEFAULT_TICK }
    }

    /// The driver's real-time period at dilations ≥ 1 (below 1 it ticks once
    /// per millisecond of virtual time, never faster than this): timers fire
    /// up to this late in real time, and each tick costs CPU. Clamped to
    /// [`MIN_TICK`]..=[`MAX_TICK`].
    pub fn tick(mut self, tick: Duration) -> DilatedBuilder {
        self.tick = tick.clamp(MIN_TICK, MAX_TICK);
        self
    }

    /// Builds the runtime and starts its ticker and driver.
    ///
    /// # Errors
    /// Those of tokio's `Builder::build` (the I/O driver's epoll instance
    /// or eventfd could not be made).
    pub fn build(&self) -> io::Result<Runtime> {
        let shared = Arc::new(Shared::new(self.tick));
        let (on_park, on_unpark) = (Arc::clone(&shared), Arc::clone(&shared));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .on_thread_park(move || on_park.parked.store(true, Ordering::Release))
            // Whatever woke the runtime (I/O, a thread, the ticker), its
            // tasks see the clock up to date, even when the ticker thread
            // is late on a busy machine.
            .on_thread_unpark(move || {
                on_unpark.parked.store(false, Ordering::Release);
                on_unpark.catch_up();
            })
            .build()?;
        let start = {
            let _in_rt = rt.enter();
            Instant::now()
        };
        let start_virtual = global().virtual_at_real(RealInstant::now());
        // Set once, before the ticker starts and before any `block_on`.
        let _ = shared.start.set((start, start_virtual));
        let id = rt.handle().id();
        register(id, Arc::clone(&shared));
        // The guard lives in the keeper task: dropped with it when the
        // runtime shuts down (polled or not), it stops the ticker, so that
        // the blocking pool's shutdown, which waits for its threads, does not
        // hang.
        let guard = Guard {
            shared: Arc::clone(&shared),
            id,
        };
        rt.spawn_blocking(move || tick_loop(&shared));
        rt.spawn(keep(guard, self.tick));
        Ok(rt)
    }
}

/// The live dilated runtimes, so that the process-wide clock knows when it
/// is polled inside one and can tell their tickers of a change of dilation.
/// The count spares plain runtimes the lock.
static DILATED: Mutex<Vec<(Id, Arc<Shared>)>> = Mutex::new(Vec::new());
static DILATED_COUNT: AtomicUsize = AtomicUsize::new(0);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here panics while holding a lock; a poisoned one is still
    // consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn register(id: Id, shared: Arc<Shared>) {
    lock(&DILATED).push((id, shared));
    DILATED_COUNT.fetch_add(1, Ordering::AcqRel);
}

fn unregister(id: Id) {
    let mut live = lock(&DILATED);
    if let Some(i) = live.iter().position(|(x, _)| *x == id) {
        live.swap_remove(i);
        DILATED_COUNT.fetch_sub(1, Ordering::AcqRel);
    }
}

/// True when the caller is inside (polled by, or a blocking task of) a
/// dilated runtime.
pub(super) fn in_dilated_runtime() -> bool {
    if DILATED_COUNT.load(Ordering::Acquire) == 0 {
        return false;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            let id = handle.id();
            lock(&DILATED).iter().any(|(x, _)| *x == id)
        }
        Err(_) => false,
    }
}

/// Called by `set_dilation`: every ticker moves its clock at once (up to the
/// instant of the change at the old rate, which the process-wide clock
/// records exactly) and re-times its period.
pub(super) fn dilation_changed() {
    if DILATED_COUNT.load(Ordering::Acquire) == 0 {
        return;
    }
    for (_, shared) in lock(&DILATED).iter() {
        lock(&shared.state).poke = true;
        shared.wake.notify_all();
    }
}

/// What the ticker, the keeper task and the park hooks share.
#[derive(Debug)]
struct Shared {
    tick: Duration,
    /// Between the runtime thread's park and unpark hooks.
    parked: AtomicBool,
    /// tokio refused to advance: the clock was resumed; stop trying (and
    /// printing tokio's panic message).
    resumed: AtomicBool,
    /// The runtime's paused instant at its start, and the process-wide
    /// clock's virtual time then.
    start: OnceLock<(Instant, Duration)>,
    /// Held while moving the clock (ticker and runtime thread both do), so
    /// that two catch-ups do not both add the same step.
    advancing: Mutex<()>,
    state: Mutex<TickState>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct TickState {
    /// Set when the keeper task is gone: the ticker returns.
    stop: bool,
    /// Set by a change of dilation: tick now.
    poke: bool,
}

/// The result of [`Shared::catch_up`].
#[derive(Debug, PartialEq)]
enum CatchUp {
    Moved,
    AlreadyThere,
    /// `advance` refused: someone resumed the clock (`tokio::time::resume`),
    /// which now runs on real time; nothing to drive any more.
    Resumed,
}

impl Shared {
    fn new(tick: Duration) -> Shared {
        Shared {
            tick,
            parked: AtomicBool::new(false),
            resumed: AtomicBool::new(false),
            start: OnceLock::new(),
            advancing: Mutex::new(()),
            state: Mutex::new(TickState::default()),
            wake: Condvar::new(),
        }
    }

    /// Moves the paused clock to `start + V(now) − V(start)`, where `V` is
    /// the process-wide clock's virtual time as a function of real time.
    /// Must run in the runtime's context (its thread, or a blocking task).
    fn catch_up(&self) -> CatchUp {
        let Some(&(start, start_virtual)) = self.start.get() else {
            return CatchUp::AlreadyThere;
        };
        let _one = lock(&self.advancing);
        if self.resumed.load(Ordering::Acquire) {
            return CatchUp::Resumed;
        }
        let virtual_since = global()
            .virtual_at_real(RealInstant::now())
            .saturating_sub(start_virtual);
        // Unrepresentable only after centuries of virtual time.
        let target = start.checked_add(virtual_since).unwrap_or(start);
        let step = target.saturating_duration_since(Instant::now());
        if step.is_zero() {
            return CatchUp::AlreadyThere;
        }
        if advance_in_place(step) {
            CatchUp::Moved
        } else {
            self.resumed.store(true, Ordering::Release);
            CatchUp::Resumed
        }
    }

    /// The ticker's real-time period: a tick, but no shorter than a virtual
    /// millisecond while the runtime runs or is not driven, or than
    /// [`PARKED_STALENESS`] of virtual time while it is parked.
    fn period(&self) -> Duration {
        let virtual_step = if self.parked.load(Ordering::Acquire) {
            PARKED_STALENESS
        } else {
            TIMER_GRANULARITY
        };
        self.tick
            .max(scale(virtual_step, 1.0 / global().dilation()))
    }
}

/// Moves the runtime's paused clock forward by `step`, outside any task.
/// `tokio::time::advance` moves the clock in its first poll, then only yields
/// once (to let a task's runtime fire its timers): here one poll with a
/// waker that does nothing is the whole of it — the caller wakes the runtime
/// itself. False if tokio refused (the clock is not paused), which it says
/// with a panic.
fn advance_in_place(step: Duration) -> bool {
    static NOOP: OnceLock<Waker> = OnceLock::new();
    struct Noop;
    impl Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }
    let waker = NOOP.get_or_init(|| Waker::from(Arc::new(Noop)));
    let mut cx = Context::from_waker(waker);
    std::panic::catch_unwind(AssertUnwindSafe(|| {
        let _ = pin!(tokio::time::advance(step)).poll(&mut cx);
    }))
    .is_ok()
}

/// The ticker: a blocking task, so that tokio does not auto-advance the
/// paused clock while it runs — that is, for the runtime's whole life. Every
/// period (and at each change of dilation) it moves the clock, so that it is
/// up to date when a `block_on` starts, in blocking tasks, and in a runtime
/// busy for long stretches without parking. It never wakes the runtime: the
/// runtime's thread times its own wake-ups (see [`keep`]).
fn tick_loop(shared: &Shared) {
    let mut next = RealInstant::now();
    loop {
        {
            let mut st = lock(&shared.state);
            loop {
                if st.stop {
                    return;
                }
                if st.poke {
                    st.poke = false;
                    break;
                }
                let now = RealInstant::now();
                if now >= next {
                    break;
                }
                // Woken early by a poke, a stop or spuriously: re-check.
                st = shared
                    .wake
                    .wait_timeout(st, next - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        if shared.catch_up() == CatchUp::Resumed {
            return;
        }
        next = RealInstant::now() + shared.period();
    }
}

/// Stops the ticker and forgets the runtime when the keeper task is dropped.
#[derive(Debug)]
struct Guard {
    shared: Arc<Shared>,
    id: Id,
}

impl Drop for Guard {
    fn drop(&mut self) {
        lock(&self.shared.state).stop = true;
        self.shared.wake.notify_all();
        unregister(self.id);
    }
}

/// The keeper task: never completes, holds the guard, and makes a parked
/// runtime wake up in time for its timers.
///
/// A parked runtime sleeps until its next timer as if virtual time ran at
/// ×1 (auto-advance being inhibited, tokio waits for the timer's virtual
/// distance in real time), and on waking the unpark hook moves the clock.
/// At dilations up to 1 that wait is never too long: the runtime wakes on
/// time or early, and waits again for the rest. Above 1 it is too long by
/// the dilation, so the keeper holds a timer one tick of (real = virtual,
/// to tokio) time ahead: the runtime wakes at least once a tick, the clock
/// has then moved by `tick × dilation`, and the timers due fire.
async fn keep(guard: Guard, tick: Duration) {
    let _guard = guard;
    let clock = global();
    let mut changes = clock.inner.changed.subscribe();
    loop {
        changes.borrow_and_update();
        if clock.dilation() > 1.0 {
            race(tokio::time::sleep(tick), changes.changed()).await;
        } else {
            // Wakes the runtime at a change, which the unpark hook applies.
            let _ = changes.changed().await;
        }
    }
}
