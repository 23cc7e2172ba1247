"""A heartbeat for asyncio event loops, read from outside by ``aiodebug-watch``.

In the spirit of the Python library aiodebug (``monitor_loop_lag``,
``log_slow_callbacks``), but the numbers are not sent anywhere from inside
the service: they sit in a small registry in the process's memory, which
``aiodebug-watch status PID`` and ``aiodebug-watch watch PID`` read without
stopping the process, and ``watch`` catches a loop that stops ticking while
the hang lasts, with stack dumps of every thread and the task that blocks::

    import asyncio
    import aiodebug_heartbeat

    async def main():
        with aiodebug_heartbeat.enable("orders"):
            await serve_forever()

    asyncio.run(main())

:func:`enable` ticks the heartbeat from the loop (lag = actual − scheduled
wake-up of a ``loop.call_at`` timer, as ``monitor_loop_lag`` measured it) and
publishes which callback or task step the loop is running (the *poll
board*). :func:`log_slow_callbacks` logs the ancestor's warning for every
callback that runs too long.

Nothing here raises into the event loop: a failure inside the monitor or the
callback wrapper is swallowed (the callback itself always runs, exactly once).
"""

from __future__ import annotations

import asyncio
import asyncio.events
import logging
import math
import threading
import time
from typing import Any, Callable, Optional

from . import _native
from ._native import abi_version, refused_poll_threads, refused_registrations

__all__ = [
    "Monitor",
    "SlowCallbackLog",
    "abi_version",
    "enable",
    "log_slow_callbacks",
    "refused_poll_threads",
    "refused_registrations",
]

__version__ = _native.CRATE_VERSION

#: The ancestor's logger (aiodebug's ``log_slow_callbacks`` module), so that
#: logging configurations written for it keep working.
slow_logger = logging.getLogger("aiodebug.log_slow_callbacks")

_internal_logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------
# The wrapper of asyncio.events.Handle._run (shared by enable() and
# log_slow_callbacks(); installed while either is in use).

# Guards the installation state below; reentrant because Monitor.__del__ (the
# garbage collector) may disable a monitor while this thread holds it.
_lock = threading.RLock()
_original_run: Optional[Callable[[asyncio.Handle], Any]] = None
# Loop -> number of monitors marking its callbacks. The hot path reads
# `_marked`, a frozenset replaced (never mutated) under the lock, so that a
# reader on another thread always sees a consistent set.
_marked_counts: dict[asyncio.AbstractEventLoop, int] = {}
_marked: frozenset[asyncio.AbstractEventLoop] = frozenset()
_slow_logs: list[SlowCallbackLog] = []
# The smallest threshold of the active slow-callback logs, or None.
_slow_threshold: Optional[float] = None

_TASK_TYPES: tuple[type, ...] = tuple(
    {asyncio.Task, getattr(asyncio.tasks, "_PyTask", asyncio.Task)}
)
_NAME_CAP: int = _native.POLL_NAME_CAP
_poll_begin = _native.poll_begin
_poll_end = _native.poll_end
_monotonic = time.monotonic


def _code_of(fn: Any) -> Any:
    """The code object behind a callback, or None (builtins, callable
    objects): unwraps bound methods, functools.partial and decorators that
    set ``__wrapped__`` (functools.wraps), a bounded number of times."""
    for _ in range(8):
        inner = (
            getattr(fn, "__wrapped__", None)
            or getattr(fn, "__func__", None)
            or getattr(fn, "func", None)
        )
        if inner is None:
            break
        fn = inner
    return getattr(fn, "__code__", None)


def _short(qualname: str) -> str:
    """A qualified name without its enclosing functions (``outer.<locals>.``):
    the board holds 32 bytes."""
    return qualname.rpartition(".<locals>.")[2]


# Labels already formatted, so that a task's steps and a function's calls
# after the first cost two lookups: task name -> (code, label), function ->
# (name, file, line). Both are cleared when they reach _CACHE_MAX entries
# (task names like "Task-123" are unique: a service spawning tasks churns it).
_CACHE_MAX = 4096
_task_labels: dict[str, tuple[Any, str]] = {}
_callback_labels: dict[Any, tuple[str, str, int]] = {}


def _callback_label(cb: Any) -> tuple[str, str, int]:
    """``(name, file, line)`` of a callback that is not a task step."""
    code = _code_of(cb)
    name = getattr(cb, "__qualname__", None)
    if not isinstance(name, str):
        func = getattr(cb, "func", None)  # functools.partial
        name = getattr(func, "__qualname__", None)
        if not isinstance(name, str):
            name = repr(cb)[:_NAME_CAP]
    name = _short(name)
    if code is None:
        return name, "", 0
    return name, code.co_filename, code.co_firstlineno


def _label(handle: asyncio.Handle) -> tuple[str, str, int]:
    """What a handle runs, for the poll board: ``(name, file, line)``.

    A task step is ``"<task name>: <coroutine qualname>"`` at the line the
    coroutine resumes from; any other callback is its qualified name (or its
    repr) at its definition. Names without ``outer.<locals>.`` prefixes; the
    board keeps the first 32 bytes (the task name comes first).
    """
    cb = handle._callback  # type: ignore[attr-defined]
    owner = getattr(cb, "__self__", None)
    if isinstance(owner, _TASK_TYPES):
        coro = owner.get_coro()  # type: ignore[attr-defined]
        name = owner.get_name()  # type: ignore[attr-defined]
        code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
        if code is None:
            return name, "", 0
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        line = frame.f_lineno if frame is not None else code.co_firstlineno
        cached = _task_labels.get(name)
        if cached is None or cached[0] is not code:
            if len(_task_labels) >= _CACHE_MAX:
                _task_labels.clear()
            qualname = getattr(code, "co_qualname", code.co_name)
            cached = _task_labels[name] = (code, f"{name}: {_short(qualname)}")
        return cached[1], code.co_filename, line or 0
    # Functions and bound methods: by the function (not its code, which a
    # decorator's wrappers share under different names).
    func = getattr(cb, "__func__", cb)
    if getattr(func, "__code__", None) is None:
        return _callback_label(cb)  # partials, builtins, callable objects
    label = _callback_labels.get(func)
    if label is None:
        if len(_callback_labels) >= _CACHE_MAX:
            _callback_labels.clear()
        label = _callback_labels[func] = _callback_label(cb)
    return label


def _format_handle(handle: asyncio.Handle) -> str:
    """The ancestor's description of a slow callback: the task's repr for a
    task step, else the handle's (asyncio.base_events._format_handle)."""
    cb = getattr(handle, "_callback", None)
    owner = getattr(cb, "__self__", None)
    if isinstance(owner, _TASK_TYPES):
        return repr(owner)
    return str(handle)


def _report_slow(handle: asyncio.Handle, took: float) -> None:
    for log in list(_slow_logs):
        if took >= log.slow_duration:
            try:
                log._report(handle, took)
            except Exception:  # never into the loop
                _internal_logger.debug("slow-callback report failed", exc_info=True)


def _instrumented_run(self: asyncio.Handle) -> Any:
    """``asyncio.events.Handle._run``, marked on the poll board (loops with a
    monitor) and timed (while a slow-callback log is enabled)."""
    run = _original_run
    if run is None:  # uninstalled meanwhile by another thread: run it plainly
        return _PLAIN_RUN(self)
    marked = False
    if self._loop in _marked:  # type: ignore[attr-defined]
        try:
            _poll_begin(*_label(self))
            marked = True
        except Exception:  # a callback we cannot describe still runs
            pass
    threshold = _slow_threshold
    if not marked and threshold is None:
        return run(self)
    started = _monotonic() if not marked else 0.0
    try:
        return run(self)
    finally:
        took = _poll_end() if marked else _monotonic() - started
        if threshold is not None and took is not None and took >= threshold:
            _report_slow(self, took)


_PLAIN_RUN: Callable[[asyncio.Handle], Any] = asyncio.events.Handle._run  # type: ignore[attr-defined]


def _update_locked() -> None:
    """Installs or removes the wrapper to match what is in use (lock held)."""
    global _original_run, _marked, _slow_threshold
    _marked = frozenset(_marked_counts)
    _slow_threshold = min((log.slow_duration for log in _slow_logs), default=None)
    needed = bool(_marked_counts) or bool(_slow_logs)
    handle_cls = asyncio.events.Handle
    current = handle_cls._run  # type: ignore[attr-defined]
    if needed and current is not _instrumented_run:
        _original_run = current
        handle_cls._run = _instrumented_run  # type: ignore[attr-defined]
    elif not needed and current is _instrumented_run and _original_run is not None:
        handle_cls._run = _original_run  # type: ignore[attr-defined]
        _original_run = None
    # Wrapped by someone else after us: ours stays underneath, inert
    # (nothing marked, no threshold) until needed again.


def _check_seconds(what: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a positive number of seconds, got {value!r}")
    return value


# ---------------------------------------------------------------------------
# enable(): the loop's heartbeat.


class Monitor:
    """A loop's heartbeat, returned by :func:`enable`.

    Every ``period`` seconds a ``loop.call_at`` timer fires; its lag (actual −
    scheduled wake-up, never negative) is recorded in the registry with the
    tick. While the loop runs a callback or a task step, the poll board names
    it. :meth:`disable` (or leaving a ``with`` block) stops both and frees the
    registry slot. Dropping the monitor (e.g. when its loop is closed) frees
    the slot too.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        name: str,
        period: float,
        mark_callbacks: bool,
    ) -> None:
        self._loop = loop
        self._period = period
        self._mark = mark_callbacks
        self._heartbeat = _native.Heartbeat(name, period)
        self._timer: Optional[asyncio.Handle] = None
        self._disabled = False
        self._marking = False
        self._thread: Optional[int] = None
        #: Ticks recorded so far.
        self.ticks: int = 0
        #: The lag of the latest tick, in seconds.
        self.last_lag: float = 0.0
        #: The largest lag seen, in seconds.
        self.max_lag: float = 0.0
        if mark_callbacks:
            with _lock:
                _marked_counts[loop] = _marked_counts.get(loop, 0) + 1
                self._marking = True
                _update_locked()

    @property
    def name(self) -> str:
        """The loop's name in the registry."""
        return str(self._heartbeat.name)

    @property
    def period(self) -> float:
        """Seconds between ticks."""
        return self._period

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop monitored."""
        return self._loop

    @property
    def registered(self) -> bool:
        """Whether the loop holds a registry slot (False once disabled, or if
        all 64 slots were taken: see :func:`refused_registrations`)."""
        return bool(self._heartbeat.registered)

    @property
    def active(self) -> bool:
        """False once :meth:`disable` was called."""
        return not self._disabled

    def _start(self) -> None:
        """First callback on the loop's thread: binds the thread, schedules."""
        if self._disabled:
            return
        try:
            self._thread = threading.get_ident()
            self._heartbeat.set_thread_loop()
            self._heartbeat.tick_with_lag(0.0)
            self._schedule(self._loop.time() + self._period)
        except Exception:
            _internal_logger.debug("aiodebug_heartbeat: cannot start", exc_info=True)

    def _schedule(self, when: float) -> None:
        loop = self._loop
        call_at = getattr(loop, "call_at", None)
        if call_at is not None:
            self._timer = call_at(when, self._tick, when)
        else:  # a loop without call_at (not asyncio's API, but be lenient)
            self._timer = loop.call_later(max(0.0, when - loop.time()), self._tick, when)

    def _tick(self, scheduled: float) -> None:
        if self._disabled:
            return
        try:
            now = self._loop.time()
            lag = max(0.0, now - scheduled)
            self._heartbeat.tick_with_lag(lag)
            self.ticks += 1
            self.last_lag = lag
            if lag > self.max_lag:
                self.max_lag = lag
            self._schedule(now + self._period)
        except Exception:  # e.g. the loop is closing: stop ticking, quietly
            self._timer = None
            _internal_logger.debug("aiodebug_heartbeat: tick failed", exc_info=True)

    def disable(self) -> None:
        """Stops ticking and marking, frees the registry slot. Idempotent,
        callable from any thread."""
        with _lock:
            if self._disabled:
                return
            self._disabled = True
            if self._marking:
                self._marking = False
                left = _marked_counts.get(self._loop, 0) - 1
                if left > 0:
                    _marked_counts[self._loop] = left
                else:
                    _marked_counts.pop(self._loop, None)
                _update_locked()
        timer, self._timer = self._timer, None
        # TimerHandle.cancel() touches loop state: only on the loop's thread
        # (elsewhere the pending tick sees `_disabled` and does nothing).
        if timer is not None and self._thread == threading.get_ident():
            try:
                timer.cancel()
            except Exception:
                pass
        self._heartbeat.close()

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.disable()

    def __del__(self) -> None:
        try:
            self.disable()
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "active" if not self._disabled else "disabled"
        return (
            f"<aiodebug_heartbeat.Monitor {self.name!r} period={self._period}s "
            f"{state} ticks={self.ticks} max_lag={self.max_lag:.6f}s>"
        )


def enable(
    name: str = "main",
    period: float = 0.02,
    loop: Optional[asyncio.AbstractEventLoop] = None,
    *,
    mark_callbacks: bool = True,
) -> Monitor:
    """Exports the heartbeat of an asyncio loop to ``aiodebug-watch``.

    :param name: the loop's name, as ``aiodebug-watch status`` shows it
        (first 64 bytes).
    :param period: seconds between ticks; ``watch`` considers the loop
        stalled once a tick is later than this.
    :param loop: the loop to monitor; by default the running loop (then call
        it from a coroutine or callback). A loop running in another thread is
        fine: the monitor starts there through ``call_soon_threadsafe``.
    :param mark_callbacks: publish which callback or task step the loop runs
        (wraps ``asyncio.events.Handle._run`` while any monitor needs it;
        loops whose handles are not asyncio's, such as uvloop's, are ticked
        but not marked).
    :returns: a :class:`Monitor`; ``disable()`` it, or use it as a context
        manager. A full registry gives an inactive heartbeat, not an error.
    :raises RuntimeError: no ``loop`` given and no loop running.
    :raises ValueError: ``period`` is not a positive number.
    """
    period = _check_seconds("period", period)
    if loop is None:
        loop = asyncio.get_running_loop()
    monitor = Monitor(loop, str(name), period, bool(mark_callbacks))
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        monitor._start()
    else:
        loop.call_soon_threadsafe(monitor._start)
    return monitor


# ---------------------------------------------------------------------------
# log_slow_callbacks(): the ancestor's warning.


class SlowCallbackLog:
    """Reports callbacks that run for ``slow_duration`` seconds or more,
    returned by :func:`log_slow_callbacks`. :meth:`disable` (or leaving a
    ``with`` block) stops it."""

    def __init__(
        self,
        slow_duration: float,
        on_slow_callback: Optional[Callable[[str, float], Any]],
    ) -> None:
        #: The threshold, in seconds.
        self.slow_duration: float = slow_duration
        self._on_slow = on_slow_callback
        self._disabled = False

    def _report(self, handle: asyncio.Handle, took: float) -> None:
        name = _format_handle(handle)
        if self._on_slow is not None:
            self._on_slow(name, took)
        else:
            slow_logger.warning("Executing %s took %.3f seconds", name, took)

    def disable(self) -> None:
        """Stops reporting (idempotent)."""
        with _lock:
            if self._disabled:
                return
            self._disabled = True
            try:
                _slow_logs.remove(self)
            except ValueError:
                pass
            _update_locked()

    def __enter__(self) -> SlowCallbackLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.disable()


def log_slow_callbacks(
    slow_duration: float = 0.05,
    on_slow_callback: Optional[Callable[[str, float], Any]] = None,
) -> SlowCallbackLog:
    """Logs every callback or task step of any asyncio loop that runs for
    ``slow_duration`` seconds or more, as aiodebug's
    ``log_slow_callbacks.enable`` did: a WARNING of logger
    ``aiodebug.log_slow_callbacks``, ``Executing <Task pending name='Task-3'
    coro=<handle() running at server.py:16>> took 2.003 seconds``.

    :param slow_duration: the threshold in seconds.
    :param on_slow_callback: called as ``on_slow_callback(description,
        seconds)`` instead of logging (exceptions it raises are swallowed).
    :returns: a :class:`SlowCallbackLog`; ``disable()`` it, or use it as a
        context manager.
    :raises ValueError: ``slow_duration`` is not a positive number.
    """
    log = SlowCallbackLog(_check_seconds("slow_duration", slow_duration), on_slow_callback)
    with _lock:
        _slow_logs.append(log)
        _update_locked()
    return log
