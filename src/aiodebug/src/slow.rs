//! Slow-poll warnings: the ancestor's `log_slow_callbacks.enable(0.05)` for
//! Rust futures, on stable Rust and any runtime.
//!
//! Wrap a future with [`LogSlowExt::log_slow`] (or spawn it with
//! `aiodebug::tokio::spawn_named`, feature `tokio`): every poll that takes
//! longer than the threshold — a synchronous call, a lock, heavy CPU work
//! between two `.await`s — is reported as
//!
//! ```text
//! Executing task 'orders' (spawned at src/main.rs:37) took 0.069 seconds
//! ```
//!
//! With feature `log`, the report is a `WARN` record of the [`log`] crate
//! (target `aiodebug::slow`); [`set_handler`] sends it anywhere else. While
//! each poll runs, the thread's entry of the poll board shows the future's
//! name and location to watchers (see [`crate::polling`]).
//!
//! The wrapper reads the clock twice per poll and copies its label (96 bytes)
//! into the registry; it never allocates per poll (`cargo bench -p aiodebug
//! --bench slow_poll` measures it).
//!
//! ```
//! use aiodebug::slow::LogSlowExt;
//! use std::time::Duration;
//!
//! # fn block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     struct W; impl std::task::Wake for W { fn wake(self: std::sync::Arc<Self>) {} }
//! #     let waker = std::task::Waker::from(std::sync::Arc::new(W));
//! #     let mut cx = std::task::Context::from_waker(&waker);
//! #     let mut f = std::pin::pin!(f);
//! #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
//! # }
//! let orders = async { 42 }.log_slow_named("orders", Duration::from_millis(50));
//! assert_eq!(block_on(orders), 42);
//! ```
//!
//! [`log`]: https://docs.rs/log

use crate::polling::{self, Label, PollKind};
use core::future::Future;
use core::panic::Location;
use core::pin::Pin;
use core::sync::atomic::{AtomicU64, Ordering};
use core::task::{Context, Poll};
use core::time::Duration;
use std::borrow::Cow;
use std::sync::RwLock;

/// The ancestor's default threshold, 50 ms (`log_slow_callbacks.enable(0.05)`).
pub const DEFAULT_THRESHOLD: Duration = Duration::from_millis(50);

/// Where the reported location points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// Where the task was spawned (named spawns, runtime hooks).
    Spawned,
    /// Where the future was wrapped ([`LogSlowExt::log_slow`]).
    Created,
}

/// One poll that took longer than its threshold. Its [`Display`](core::fmt::Display)
/// is the warning's text.
///
/// ```
/// use aiodebug::slow::{Site, SlowPoll};
/// use std::time::Duration;
/// let p = SlowPoll {
///     name: Some("orders"),
///     task_id: None,
///     file: "src/main.rs",
///     line: 37,
///     site: Site::Spawned,
///     took: Duration::from_millis(69),
/// };
/// assert_eq!(
///     p.to_string(),
///     "Executing task 'orders' (spawned at src/main.rs:37) took 0.069 seconds"
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlowPoll<'a> {
    /// The task's name, if it has one.
    pub name: Option<&'a str>,
    /// The runtime's task id, if known.
    pub task_id: Option<u64>,
    /// Source file of the spawn or creation site.
    pub file: &'a str,
    /// Source line of the spawn or creation site.
    pub line: u32,
    /// Whether the location is a spawn or a creation site.
    pub site: Site,
    /// How long the poll took.
    pub took: Duration,
}

impl core::fmt::Display for SlowPoll<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match (self.name, self.task_id) {
            (Some(name), _) => write!(f, "Executing task '{name}'")?,
            (None, Some(id)) => write!(f, "Executing task {id}")?,
            (None, None) => f.write_str("Executing future")?,
        }
        let verb = match self.site {
            Site::Spawned => "spawned",
            Site::Created => "created",
        };
        write!(
            f,
            " ({verb} at {}:{}) took {:.3} seconds",
            self.file,
            self.line,
            self.took.as_secs_f64()
        )
    }
}

/// A function receiving every slow poll (see [`set_handler`]).
pub type Handler = fn(&SlowPoll<'_>);

static HANDLER: RwLock<Option<Handler>> = RwLock::new(None);
static SLOW_POLLS: AtomicU64 = AtomicU64::new(0);

/// Sends every slow poll to `handler` instead of the default (a `log`
/// warning with feature `log`, nothing without); `None` restores the default.
///
/// ```
/// fn to_stderr(p: &aiodebug::slow::SlowPoll<'_>) {
///     eprintln!("WARNING {p}");
/// }
/// aiodebug::slow::set_handler(Some(to_stderr));
/// # aiodebug::slow::set_handler(None);
/// ```
pub fn set_handler(handler: Option<Handler>) {
    let mut h = HANDLER.write().unwrap_or_else(|e| e.into_inner());
    *h = handler;
}

/// How many slow polls were reported in this process (only grows).
pub fn slow_polls() -> u64 {
    SLOW_POLLS.load(Ordering::Relaxed)
}

/// Reports a slow poll: counts it and hands it to the handler. Only called
/// for polls past their threshold, so it may take a lock.
pub fn report(poll: &SlowPoll<'_>) {
    SLOW_POLLS.fetch_add(1, Ordering::Relaxed);
    let handler = *HANDLER.read().unwrap_or_else(|e| e.into_inner());
    match handler {
        Some(h) => h(poll),
        None => default_handler(poll),
    }
}

/// The default: a `log` warning (feature `log`) and a `tracing` WARN event
/// (feature `tracing`, with the fields `task`, `task_id`, `file`, `line`,
/// `took_s`), each when its feature is on; nothing without either.
fn default_handler(poll: &SlowPoll<'_>) {
    #[cfg(feature = "log")]
    log::warn!(target: "aiodebug::slow", "{poll}");
    #[cfg(feature = "tracing")]
    tracing::warn!(
        target: "aiodebug::slow",
        task = poll.name.unwrap_or(""),
        task_id = poll.task_id.unwrap_or(0),
        file = poll.file,
        line = poll.line,
        took_s = poll.took.as_secs_f64(),
        "{poll}"
    );
    #[cfg(not(any(feature = "log", feature = "tracing")))]
    let _ = poll;
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Adds [`log_slow`](LogSlowExt::log_slow) and
/// [`log_slow_named`](LogSlowExt::log_slow_named) to every future.
pub trait LogSlowExt: Future + Sized {
    /// Reports every poll of this future longer than `threshold`, naming the
    /// caller's location (`Executing future (created at src/db.rs:12) took
    /// 0.120 seconds`).
    ///
    /// ```
    /// use aiodebug::slow::LogSlowExt;
    /// let fut = async { 1 + 1 }.log_slow(std::time::Duration::from_millis(20));
    /// # drop(fut);
    /// ```
    #[track_caller]
    fn log_slow(self, threshold: Duration) -> LogSlow<Self> {
        LogSlow::new(self, None, threshold, Location::caller(), Site::Created)
    }

    /// [`log_slow`](LogSlowExt::log_slow) for a future known as `name`
    /// (`Executing task 'orders' (created at src/main.rs:37) took ...`).
    ///
    /// ```
    /// use aiodebug::slow::LogSlowExt;
    /// let name = format!("conn-{}", 7);
    /// let fut = async {}.log_slow_named(name, aiodebug::slow::DEFAULT_THRESHOLD);
    /// # drop(fut);
    /// ```
    #[track_caller]
    fn log_slow_named(
        self,
        name: impl Into<Cow<'static, str>>,
        threshold: Duration,
    ) -> LogSlow<Self> {
        LogSlow::new(
            self,
            Some(name.into()),
            threshold,
            Location::caller(),
            Site::Created,
        )
    }
}

impl<F: Future> LogSlowExt for F {}

/// A future whose slow polls are reported (see [`LogSlowExt`]).
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct LogSlow<F> {
    fut: F,
    name: Option<Cow<'static, str>>,
    location: &'static Location<'static>,
    site: Site,
    threshold_ns: u64,
    label: Label,
    task_id: u64,
    /// Ask the runtime for the task id at the first poll.
    lookup_task_id: bool,
}

impl<F> LogSlow<F> {
    pub(crate) fn new(
        fut: F,
        name: Option<Cow<'static, str>>,
        threshold: Duration,
        location: &'static Location<'static>,
        site: Site,
    ) -> Self {
        let label = Label::at(name.as_deref().unwrap_or(""), location, PollKind::Future);
        LogSlow {
            fut,
            name,
            location,
            site,
            threshold_ns: duration_ns(threshold),
            label,
            task_id: 0,
            lookup_task_id: false,
        }
    }

    /// Records the runtime's task id at the first poll (named spawns).
    #[cfg(feature = "tokio")]
    pub(crate) fn with_task_id_lookup(mut self) -> Self {
        self.lookup_task_id = true;
        self
    }

    /// The threshold past which a poll is reported.
    pub fn threshold(&self) -> Duration {
        Duration::from_nanos(self.threshold_ns)
    }

    /// The name given, if any.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The source location reported.
    pub fn location(&self) -> &'static Location<'static> {
        self.location
    }
}

impl<F: Future> Future for LogSlow<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `fut` is structurally pinned: it is only ever reached through
        // this projection and never moved out of `LogSlow` (there is no Drop
        // impl and no method that moves it), and `LogSlow<F>` is `Unpin` only
        // when `F` is (auto trait). The other fields are not pinned and are
        // only read or overwritten in place.
        let this = unsafe { self.get_unchecked_mut() };
        if this.lookup_task_id {
            this.lookup_task_id = false;
            this.task_id = current_task_id();
        }
        let polling = polling::enter_task(&this.label, this.task_id);
        // SAFETY: see above; `this.fut` stays in place for as long as `self`
        // is pinned.
        let fut = unsafe { Pin::new_unchecked(&mut this.fut) };
        let out = fut.poll(cx);
        let took = polling.finish();
        if duration_ns(took) > this.threshold_ns {
            report(&SlowPoll {
                name: this.name.as_deref(),
                task_id: (this.task_id != 0).then_some(this.task_id),
                file: this.location.file(),
                line: this.location.line(),
                site: this.site,
                took,
            });
        }
        out
    }
}

#[cfg(feature = "tokio")]
fn current_task_id() -> u64 {
    tokio::task::try_id()
        .map(crate::tokio::task_id_u64)
        .unwrap_or(0)
}

#[cfg(not(feature = "tokio"))]
fn current_task_id() -> u64 {
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::task::{Wake, Waker};

    struct Noop;
    impl Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }

    /// Sleeps `ms` inside its first poll, then returns Pending once more.
    struct Blocky {
        polls: u32,
        sleep_first_ms: u64,
    }
    impl Future for Blocky {
        type Output = u32;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
            self.polls += 1;
            if self.polls == 1 {
                std::thread::sleep(Duration::from_millis(self.sleep_first_ms));
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(self.polls)
        }
    }

    static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());
    fn capture(p: &SlowPoll<'_>) {
        SEEN.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(p.to_string());
    }

    #[test]
    fn only_slow_polls_are_reported_with_the_ancestors_wording() {
        set_handler(Some(capture));
        let waker = Waker::from(Arc::new(Noop));
        let mut cx = Context::from_waker(&waker);
        let first_line = line!();
        let mut f = Box::pin(
            Blocky {
                polls: 0,
                sleep_first_ms: 30,
            }
            .log_slow_named("slow-one", Duration::from_millis(10)),
        );
        let line = f.location().line();
        assert!((first_line..first_line + 8).contains(&line), "{line}");
        assert_eq!(f.location().file(), file!());
        assert!(f.as_mut().poll(&mut cx).is_pending());
        assert_eq!(f.as_mut().poll(&mut cx), Poll::Ready(2));
        let mut g = Box::pin(
            Blocky {
                polls: 0,
                sleep_first_ms: 0,
            }
            .log_slow_named("fast-one", Duration::from_secs(5)),
        );
        while g.as_mut().poll(&mut cx).is_pending() {}
        let seen = SEEN.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let ours: Vec<_> = seen.iter().filter(|l| l.contains("-one'")).collect();
        assert_eq!(ours.len(), 1, "{seen:?}");
        // Slept 30 ms: "0.030 seconds" or a little more on a busy machine.
        let want = format!(
            "Executing task 'slow-one' (created at {}:{line}) took 0.",
            file!()
        );
        assert!(ours[0].starts_with(&want), "{} vs {want}", ours[0]);
        assert!(ours[0].ends_with(" seconds"));
    }

    #[test]
    fn unnamed_and_id_only_wording() {
        let p = SlowPoll {
            name: None,
            task_id: None,
            file: "a.rs",
            line: 3,
            site: Site::Created,
            took: Duration::from_micros(1500),
        };
        assert_eq!(
            p.to_string(),
            "Executing future (created at a.rs:3) took 0.002 seconds"
        );
        let p = SlowPoll {
            task_id: Some(42),
            site: Site::Spawned,
            ..p
        };
        assert_eq!(
            p.to_string(),
            "Executing task 42 (spawned at a.rs:3) took 0.002 seconds"
        );
    }
}
