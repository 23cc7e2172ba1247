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


def idle_cpu(with_monitor, seconds):
    """CPU of an idle loop over `seconds`, and the ticks it made."""

    async def main():
        monitor = aiodebug_heartbeat.enable("bench-idle", period=0.02) if with_monitor else None
        t0 = time.thread_time()
        await asyncio.sleep(seconds)
        cpu = time.thread_time() - t0
        ticks = monitor.ticks if monitor else 0
        if monitor:
            monitor.disable()
        return cpu, ticks

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

    idle = []
    for _ in range(3):
        base_cpu, _ = idle_cpu(False, IDLE_SECONDS)
        cpu, ticks = idle_cpu(True, IDLE_SECONDS)
        idle.append(((cpu - base_cpu) / max(ticks, 1), cpu / IDLE_SECONDS, base_cpu / IDLE_SECONDS, ticks))
    per_tick = statistics.median(x[0] for x in idle)
    share = statistics.median(x[1] for x in idle)
    base_share = statistics.median(x[2] for x in idle)
    ticks = statistics.median(x[3] for x in idle)
    hb = _native.Heartbeat("bench-native", 0.02)
    tick_ns = min(timeit.repeat(lambda: hb.tick_with_lag(0.0001), number=100_000, repeat=5)) / 100_000 * 1e9
    mark_ns = min(timeit.repeat(lambda: (_native.poll_begin("Task-1: handle", "/srv/app/server.py", 16), _native.poll_end()),
                                number=100_000, repeat=5)) / 100_000 * 1e9
    empty_ns = min(timeit.repeat(lambda: None, number=100_000, repeat=5)) / 100_000 * 1e9
    hb.close()
    print()
    print("| heartbeat | result |")
    print("|---|---:|")
    print(f"| CPU per tick of an idle loop (20 ms period; timer wake-up + tick) | {per_tick * 1e6:.1f} µs |")
    print(f"| idle loop CPU with the heartbeat | {share * 100:.3f} % of a core ({ticks:.0f} ticks in {IDLE_SECONDS:.0f} s; without: {base_share * 100:.3f} %) |")
    print(f"| native tick_with_lag() call from Python | {tick_ns - empty_ns:.0f} ns (+ {empty_ns:.0f} ns for a Python lambda call) |")
    print(f"| native poll_begin() + poll_end() from Python | {mark_ns - empty_ns:.0f} ns |")


if __name__ == "__main__":
    main()
