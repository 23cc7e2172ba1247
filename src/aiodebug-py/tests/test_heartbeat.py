"""Tests of aiodebug_heartbeat on a real interpreter, read back from outside
with `aiodebug-watch status --json` where the registry is involved."""

import asyncio
import functools
import gc
import logging
import os
import re
import threading
import time

import pytest

import aiodebug_heartbeat
from aiodebug_heartbeat import _native

HERE = os.path.abspath(__file__)


def declared_abi():
    """(major, minor) as the companion crate's abi.rs, the source of truth of
    the registry layout, declares them (the extension is built from it)."""
    abi_rs = os.path.join(
        os.path.dirname(HERE), "..", "..", "aiodebug", "src", "abi.rs"
    )
    with open(abi_rs, encoding="utf-8") as f:
        text = f.read()
    found = [
        int(re.search(rf"^pub const ABI_{part}: u16 = (\d+);$", text, re.M).group(1))
        for part in ("MAJOR", "MINOR")
    ]
    return tuple(found)


def loop_named(loops, name):
    found = [lp for lp in loops if lp["loop"] == name]
    assert len(found) == 1, f"loop {name!r} in {loops!r}"
    return found[0]


def polls_of(process, task):
    return [p for p in process["polling"] if p["task"] == task]


# ---------------------------------------------------------------------------
# enable() / disable()


def test_enable_needs_a_loop_and_a_positive_period():
    with pytest.raises(RuntimeError):
        aiodebug_heartbeat.enable()
    loop = asyncio.new_event_loop()
    try:
        for bad in (0, -1, float("nan"), float("inf")):
            with pytest.raises(ValueError):
                aiodebug_heartbeat.enable(period=bad, loop=loop)
    finally:
        loop.close()


def test_ticks_while_enabled_and_disable_is_idempotent(status):
    async def main():
        original = asyncio.events.Handle._run
        monitor = aiodebug_heartbeat.enable("pytest-ticks", period=0.01)
        assert monitor.registered and monitor.active
        assert asyncio.events.Handle._run is not original, "the wrapper is installed"
        await asyncio.sleep(0.3)
        code, loops, _ = status()
        lp = loop_named(loops, "pytest-ticks")
        assert lp["tid"] == threading.get_native_id()
        assert lp["period_ms"] == 10.0
        assert lp["ticks"] >= 10, lp
        assert code == 0 and lp["stalled"] is False, lp
        ticks = monitor.ticks
        assert 5 <= ticks <= 31, ticks
        monitor.disable()
        monitor.disable()
        assert not monitor.registered and not monitor.active
        assert asyncio.events.Handle._run is original, "the wrapper is removed"
        await asyncio.sleep(0.05)
        assert monitor.ticks == ticks, "no tick after disable()"
        _, loops, _ = status()
        assert [lp for lp in loops if lp["loop"] == "pytest-ticks"] == [], "the slot is freed"

    asyncio.run(main())


def test_context_manager_and_repr():
    async def main():
        with aiodebug_heartbeat.enable("pytest-with") as monitor:
            await asyncio.sleep(0.05)
            assert monitor.active and monitor.ticks >= 1
            assert "pytest-with" in repr(monitor) and "active" in repr(monitor)
        assert not monitor.active and "disabled" in repr(monitor)

    asyncio.run(main())


def test_lag_is_actual_minus_scheduled_wake_up(status):
    async def main():
        with aiodebug_heartbeat.enable("pytest-lag", period=0.02) as monitor:
            await asyncio.sleep(0.1)
            healthy = monitor.max_lag
            time.sleep(0.3)  # blocks the loop: the pending tick fires ~0.3 s late
            await asyncio.sleep(0.05)
            assert healthy < 0.1, healthy
            assert 0.25 < monitor.max_lag < 1.0, monitor.max_lag
            _, loops, _ = status()
            lp = loop_named(loops, "pytest-lag")
            # The registry holds the same lag, in milliseconds.
            assert abs(lp["max_ms"] - monitor.max_lag * 1e3) < 0.01, (lp, monitor.max_lag)
            assert lp["p50_ms"] < 50, lp

    asyncio.run(main())


def test_a_loop_in_another_thread_is_ticked_from_its_thread(status):
    loop = asyncio.new_event_loop()
    ran = threading.Event()
    thread_ids = {}

    def serve():
        asyncio.set_event_loop(loop)
        thread_ids["tid"] = threading.get_native_id()
        ran.set()
        loop.run_forever()

    t = threading.Thread(target=serve, name="side-loop")
    t.start()
    try:
        ran.wait(5)
        monitor = aiodebug_heartbeat.enable("pytest-side", loop=loop)
        deadline = time.monotonic() + 5
        while monitor.ticks < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert monitor.ticks >= 3
        _, loops, _ = status()
        assert loop_named(loops, "pytest-side")["tid"] == thread_ids["tid"]
        monitor.disable()  # from this thread, not the loop's
        ticks = monitor.ticks
        time.sleep(0.1)
        assert monitor.ticks == ticks
    finally:
        loop.call_soon_threadsafe(loop.stop)
        t.join(5)
        loop.close()


class _NoCallAt:
    """A loop-like object without call_at (some third-party loops)."""

    def __init__(self, loop):
        self._loop = loop

    def time(self):
        return self._loop.time()

    def call_later(self, delay, cb, *args):
        return self._loop.call_later(delay, cb, *args)

    def call_soon_threadsafe(self, cb, *args):
        return self._loop.call_soon_threadsafe(cb, *args)


def test_loops_without_call_at_tick_through_call_later():
    async def main():
        monitor = aiodebug_heartbeat.enable(
            "pytest-nocallat", loop=_NoCallAt(asyncio.get_running_loop()), mark_callbacks=False
        )
        await asyncio.sleep(0.15)
        assert monitor.ticks >= 3
        monitor.disable()

    asyncio.run(main())


def test_a_full_registry_gives_inert_monitors():
    async def main():
        monitors = []
        try:
            refused = aiodebug_heartbeat.refused_registrations()
            for i in range(70):
                monitors.append(aiodebug_heartbeat.enable(f"pytest-full-{i}", mark_callbacks=False))
            inert = [m for m in monitors if not m.registered]
            assert len(inert) >= 6, "64 slots at most"
            assert aiodebug_heartbeat.refused_registrations() >= refused + len(inert)
            await asyncio.sleep(0.05)  # inert monitors tick harmlessly
        finally:
            for m in monitors:
                m.disable()
        # Freed slots are reusable.
        again = aiodebug_heartbeat.enable("pytest-full-again", mark_callbacks=False)
        assert again.registered
        again.disable()

    asyncio.run(main())


def test_a_dropped_monitor_frees_its_slot_when_its_loop_closes(status):
    async def main():
        aiodebug_heartbeat.enable("pytest-dropped", mark_callbacks=False)
        await asyncio.sleep(0.05)
        _, loops, _ = status()
        loop_named(loops, "pytest-dropped")

    asyncio.run(main())  # closing the loop drops the timer, then the monitor
    gc.collect()
    _, loops, _ = status()
    assert [lp for lp in loops if lp["loop"] == "pytest-dropped"] == []


# ---------------------------------------------------------------------------
# The poll board, read from outside


def test_poll_board_names_the_running_task_and_coroutine(status):
    seen = {}

    async def inspect_me():
        await asyncio.sleep(0)  # RESUMES HERE
        # This step runs marked: read the board from outside meanwhile.
        seen["status"] = status()

    async def main():
        with aiodebug_heartbeat.enable("pytest-board"):
            task = asyncio.create_task(inspect_me(), name="board-check")
            await task

    asyncio.run(main())
    line = 1 + next(i for i, t in enumerate(open(HERE)) if t.rstrip().endswith("# RESUMES HERE"))
    _, loops, process = seen["status"]
    polls = polls_of(process, "board-check: inspect_me")
    assert len(polls) == 1, process["polling"]
    p = polls[0]
    assert p["tid"] == threading.get_native_id()
    assert p["kind"] == "callback"
    assert p["loop"] == "pytest-board"
    assert p["location"].endswith(f"test_heartbeat.py:{line}"), (p, line)
    assert [q["task"] for q in loop_named(loops, "pytest-board")["polling"]] == [p["task"]]


def test_poll_board_names_a_plain_callback_and_is_idle_after(status):
    seen = {}

    def on_timer():
        seen["during"] = status()

    async def main():
        with aiodebug_heartbeat.enable("pytest-cb"):
            loop = asyncio.get_running_loop()
            loop.call_later(0.01, on_timer)
            await asyncio.sleep(0.1)
            # Read from a worker thread while this loop waits in select.
            seen["after"] = await asyncio.to_thread(status)

    asyncio.run(main())
    _, _, process = seen["during"]
    polls = polls_of(process, "on_timer")
    assert len(polls) == 1, process["polling"]
    line = on_timer.__code__.co_firstlineno
    assert polls[0]["location"].endswith(f"test_heartbeat.py:{line}"), polls[0]
    # Between callbacks (the loop waits in select) the board is empty.
    _, _, process = seen["after"]
    assert [p for p in process["polling"] if p["tid"] == threading.get_native_id()] == []


def test_callbacks_of_unmonitored_loops_are_not_marked(status):
    seen = {}

    async def other():
        seen["status"] = status()

    async def main():
        with aiodebug_heartbeat.enable("pytest-marked"):
            # A second loop on another thread, without a monitor.
            t = threading.Thread(target=lambda: asyncio.run(other()))
            t.start()
            t.join(30)

    asyncio.run(main())
    _, _, process = seen["status"]
    assert [p for p in process["polling"] if "other" in p["task"]] == [], process["polling"]


class _Undescribable:
    """A callable whose description raises: the wrapper must still run it."""

    calls = 0

    def __call__(self):
        _Undescribable.calls += 1

    def __getattr__(self, name):
        raise RuntimeError(f"no {name}")


def test_the_wrapper_never_raises_and_runs_each_callback_once():
    errors = []

    async def main():
        with aiodebug_heartbeat.enable("pytest-robust"), aiodebug_heartbeat.log_slow_callbacks(
            0.001, on_slow_callback=lambda name, took: 1 / 0
        ):
            loop = asyncio.get_running_loop()
            loop.set_exception_handler(lambda loop, ctx: errors.append(ctx))
            loop.call_soon(_Undescribable())
            loop.call_soon(time.sleep, 0.01)  # slow: the failing reporter is swallowed
            await asyncio.sleep(0.05)

    asyncio.run(main())
    assert _Undescribable.calls == 1
    assert errors == []


def test_exceptions_of_callbacks_still_reach_the_loops_handler():
    caught = []

    def boom():
        raise ValueError("from the callback")

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda loop, ctx: caught.append(ctx["exception"]))
        with aiodebug_heartbeat.enable("pytest-exc"):
            loop.call_soon(boom)
            await asyncio.sleep(0.02)

    asyncio.run(main())
    assert [type(e) for e in caught] == [ValueError]


def test_labels_follow_decorators_partials_and_renamed_tasks():
    def deco(f):
        @functools.wraps(f)
        def inner():
            return f()

        return inner

    @deco
    def alpha():
        pass

    @deco
    def beta():
        pass

    async def coro():
        await asyncio.sleep(0)

    label = aiodebug_heartbeat._label
    loop = asyncio.new_event_loop()
    try:
        # One wrapper code object, two names and locations.
        a, b = label(loop.call_soon(alpha)), label(loop.call_soon(beta))
        assert (a[0], a[2]) == ("alpha", alpha.__wrapped__.__code__.co_firstlineno)
        assert (b[0], b[2]) == ("beta", beta.__wrapped__.__code__.co_firstlineno)
        assert label(loop.call_soon(functools.partial(alpha)))[0] == "alpha"
        assert label(loop.call_soon(print))[0] == "print"
        task = loop.create_task(coro(), name="first")
        assert label(loop._ready[-1])[0] == "first: coro"
        task.set_name("second")
        assert label(loop._ready[-1])[0] == "second: coro"
        loop.run_until_complete(task)
    finally:
        loop.close()


def test_poll_markers_directly():
    assert _native.poll_end() is None, "no begin"
    _native.poll_begin("direct", "file.py", 7)
    took = _native.poll_end()
    assert took is not None and 0 <= took < 1
    _native.poll_begin("\udcff lone surrogate", "\ud800.py", 2**32 - 1)  # never raises
    assert _native.poll_end() is not None
    assert aiodebug_heartbeat.abi_version() == declared_abi()


# ---------------------------------------------------------------------------
# log_slow_callbacks()


def test_log_slow_callbacks_logs_the_ancestors_warning(caplog):
    def blocker():
        time.sleep(0.12)

    def quick():
        pass

    async def slow_step():
        time.sleep(0.08)

    async def main():
        loop = asyncio.get_running_loop()
        with aiodebug_heartbeat.log_slow_callbacks(0.05):
            loop.call_soon(blocker)
            loop.call_soon(quick)
            await asyncio.create_task(slow_step(), name="slow-task")
            await asyncio.sleep(0.01)
        loop.call_soon(blocker)  # disabled: not reported
        await asyncio.sleep(0.2)

    with caplog.at_level(logging.WARNING, logger="aiodebug.log_slow_callbacks"):
        asyncio.run(main())
    records = [r for r in caplog.records if r.name == "aiodebug.log_slow_callbacks"]
    assert len(records) == 2, [r.getMessage() for r in records]
    assert all(r.levelname == "WARNING" for r in records)
    assert all(r.msg == "Executing %s took %.3f seconds" for r in records)
    first, second = (r.getMessage() for r in records)
    assert re.fullmatch(r"Executing <Handle .*blocker\(\) at .*test_heartbeat\.py:\d+> took 0\.1[2-9]\d seconds", first), first
    assert re.fullmatch(r"Executing <Task .*name='slow-task' coro=<.*slow_step\(\).*> took 0\.(0[89]|[1-9])\d* seconds", second), second


def test_log_slow_callbacks_with_a_monitor_uses_the_poll_clock(caplog):
    reported = []

    async def main():
        loop = asyncio.get_running_loop()
        with aiodebug_heartbeat.enable("pytest-slowmon"), aiodebug_heartbeat.log_slow_callbacks(
            0.05, on_slow_callback=lambda name, took: reported.append((name, took))
        ):
            loop.call_soon(time.sleep, 0.07)
            await asyncio.sleep(0.15)

    asyncio.run(main())
    assert len(reported) == 1, reported
    name, took = reported[0]
    assert "sleep" in name and 0.07 <= took < 0.5, reported


def test_log_slow_callbacks_rejects_bad_thresholds():
    for bad in (0, -0.1, float("nan")):
        with pytest.raises(ValueError):
            aiodebug_heartbeat.log_slow_callbacks(bad)
