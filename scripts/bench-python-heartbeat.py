"""What aiodebug_heartbeat costs an asyncio service (run by
scripts/bench-python-heartbeat in a venv with the package installed).

CPU time of the loop's thread (time.thread_time) per callback and per task
step, plain asyncio vs with the Handle._run wrapper (log_slow_callbacks only:
timing; enable(): poll board marks + timing off), rounds interleaved, medians;
and the heartbeat's own cost: CPU per tick of an idle loop ticking every
20 ms, and the native calls alone.
"""

import asyncio
import statistics
import sys
import time
import timeit

import aiodebug_heartbeat
from aiodebug_heartbeat import _native

N = 200_000  # callbacks (or task steps) per round
ROUNDS = 7
IDLE_SECONDS = 3.0


def noop():
    pass


def chain_callbacks(n):
    """CPU per callback: `n` callbacks, each scheduling the next."""

    async def main():
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        left = [n]

        def step():
            left[0] -= 1
            if left[0]:
                loop.call_soon(step)
            else:
                done.set_result(None)

        t0 = time.thread_time()
        loop.call_soon(step)
        await done
        return (time.thread_time() - t0) / n

    return main


def task_steps(n):
    """CPU per task step: one task awaiting sleep(0) `n` times."""

    async def main():
        async def stepper():
            for _ in range(n):
                await asyncio.sleep(0)

        t0 = time.thread_time()
        await asyncio.create_task(stepper(), name="bench-task")
        return (time.thread_time() - t0) / n

    return main


def run_mode(mode, body):
    async def wrapped():
        if mode == "plain":
            return await body()
        if mode == "slow-log":
            with aiodebug_heartbeat.log_slow_callbacks(0.05):
                return await body()
        if mode == "enable":
            with aiodebug_heartbeat.enable("bench", period=0.02):
                return await body()
        if mode == "enable+slow-log":
            with aiodebug_heartbeat.enable("bench", period=0.02), aiodebug_heartbeat.log_slow_callbacks(0.05):
                return await body()
        raise ValueError(mode)

    return asyncio.run(wrapped())


def idle_cpu(mode, seconds):
    """CPU of an idle loop over `seconds` and its wake-ups: no timer at all
    ("none"), a bare call_at chain every 20 ms ("timer": asyncio's own cost of
    a wake-up), or the heartbeat ("heartbeat")."""

    async def main():
        loop = asyncio.get_running_loop()
        wakeups = [0]
        monitor = None
        if mode == "heartbeat":
            monitor = aiodebug_heartbeat.enable("bench-idle", period=0.02)
        elif mode == "timer":

            def again(when):
                wakeups[0] += 1
                loop.call_at(loop.time() + 0.02, again, None)

            loop.call_at(loop.time() + 0.02, again, None)
        t0 = time.thread_time()
        await asyncio.sleep(seconds)
        cpu = time.thread_time() - t0
        if monitor:
            wakeups[0] = monitor.ticks
            monitor.disable()
        return cpu, wakeups[0]

    return asyncio.run(main())


def main():
    modes = ["plain", "slow-log", "enable", "enable+slow-log"]
    print(f"python {sys.version.split()[0]}, aiodebug_heartbeat {aiodebug_heartbeat.__version__}, "
          f"{N} callbacks per round, {ROUNDS} rounds interleaved, medians of thread CPU time")
    results = {}
    for what, make in (("callback", chain_callbacks), ("task step", task_steps)):
        per = {m: [] for m in modes}
        for _ in range(ROUNDS):
            for m in modes:
                per[m].append(run_mode(m, make(N)))
        results[what] = {m: statistics.median(v) for m, v in per.items()}
    print()
    print("| per | " + " | ".join(modes) + " | wrapper cost (enable − plain) |")
    print("|---|" + "---:|" * (len(modes) + 1))
    for what, med in results.items():
        base = med["plain"]
        cells = [f"{med[m] * 1e9:.0f} ns" + ("" if m == "plain" else f" ({med[m] / base:.2f}×)") for m in modes]
        print(f"| {what} | " + " | ".join(cells) + f" | +{(med['enable'] - base) * 1e9:.0f} ns |")

    idle = {"none": [], "timer": [], "heartbeat": []}
    for _ in range(3):
        for mode in idle:
            idle[mode].append(idle_cpu(mode, IDLE_SECONDS))
    base = statistics.median(c for c, _ in idle["none"])
    per_wakeup = {
        m: statistics.median((c - base) / max(n, 1) for c, n in idle[m]) for m in ("timer", "heartbeat")
    }
    share = {m: statistics.median(c for c, _ in v) / IDLE_SECONDS for m, v in idle.items()}
    ticks = statistics.median(n for _, n in idle["heartbeat"])
    hb = _native.Heartbeat("bench-native", 0.02)
    tick_ns = min(timeit.repeat(lambda: hb.tick_with_lag(0.0001), number=100_000, repeat=5)) / 100_000 * 1e9
    mark_ns = min(timeit.repeat(lambda: (_native.poll_begin("Task-1: handle", "/srv/app/server.py", 16), _native.poll_end()),
                                number=100_000, repeat=5)) / 100_000 * 1e9
    empty_ns = min(timeit.repeat(lambda: None, number=100_000, repeat=5)) / 100_000 * 1e9
    hb.close()
    print()
    print("| heartbeat | result |")
    print("|---|---:|")
    print(f"| CPU per tick of an idle loop, 20 ms period (timer wake-up + tick) | {per_wakeup['heartbeat'] * 1e6:.1f} µs |")
    print(f"| CPU per wake-up of a bare asyncio call_at chain, 20 ms (no aiodebug) | {per_wakeup['timer'] * 1e6:.1f} µs |")
    print(f"| the heartbeat's own share of a tick | {(per_wakeup['heartbeat'] - per_wakeup['timer']) * 1e6:.1f} µs |")
    print(f"| idle loop CPU: heartbeat / bare timer / nothing | {share['heartbeat'] * 100:.3f} / {share['timer'] * 100:.3f} / {share['none'] * 100:.3f} % of a core ({ticks:.0f} ticks in {IDLE_SECONDS:.0f} s) |")
    print(f"| native tick_with_lag() call from Python | {tick_ns - empty_ns:.0f} ns (+ {empty_ns:.0f} ns for a Python lambda call) |")
    print(f"| native poll_begin() + poll_end() from Python | {mark_ns - empty_ns:.0f} ns |")


if __name__ == "__main__":
    main()
