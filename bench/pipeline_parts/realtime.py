"""Part 2 of bench/pipeline.py, real time: the real HotLoop thread on the MonotonicClock fed
by a feeder thread, one window per number of streams (late ticks, tick cost, drops, CPU per
thread), and the search for the most streams that stay in real time (ladder, bisection,
re-checks)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from media.clock import MonotonicClock
from media.pipeline.hotloop import HotLoop, percentile
from media.pipeline.recorder import RecordingWriter
from pipeline_parts.load import (
    SPEAKERS,
    TICK,
    Feeder,
    FeederThread,
    FramePool,
    GcWatch,
    add_sessions,
    clear_dir,
    cpu_percent,
    cpu_sample,
    receive_dropped,
    recorder_dropped,
    remove_sessions,
    thread_ids,
)
from pipeline_parts.plan import Plan, log

LATE_SHARE_LIMIT = 0.01
LATE10_SECONDS = 0.010
BISECT_STEP = 100  # full mode refines the real-time limit down to this many streams
THREADS = ("hot-loop", "recording-writer", "bench-feeder", "MainThread", "media-loop")


def window_slice(history: list[float], final: int, start: int, end: int) -> list[float]:
    """The entries of a per-tick history for ticks [start, end), given `final` ticks in all
    (the history's last entry is tick final - 1)."""
    n = len(history)
    return history[max(0, n - (final - start)) : max(0, n - (final - end))]


def realtime_run(
    pool: FramePool, streams: int, warmup: float, window: float, out: Path, gcw: GcWatch
) -> dict[str, Any]:
    clock = MonotonicClock()
    loop = HotLoop(clock)
    writer = RecordingWriter()
    writer.start()
    made = add_sessions(loop, pool, streams // SPEAKERS, "full", out, writer)
    feeder = Feeder(pool, made)
    stop = threading.Event()
    loop.start()
    thread = FeederThread(feeder, clock, clock.now() + TICK / 2)
    thread.start()
    stats = loop.stats
    try:
        clock.wait_until(clock.now() + warmup, stop)
        tids = thread_ids(THREADS)
        late0, ticks0 = stats.late_ticks, stats.ticks
        disabled0, slow0 = len(stats.disabled), stats.slow_calls
        dropped0, rec_dropped0 = receive_dropped(made), recorder_dropped(made)
        busy0, wakes0, skipped0 = thread.busy_seconds, thread.wakes, thread.skipped
        gcw.take(1.0)
        before = cpu_sample(tids)
        clock.wait_until(clock.now() + window, stop)
        after = cpu_sample(tids)
        collections = gcw.take(after.at - before.at)
        late1, ticks1 = stats.late_ticks, stats.ticks
        disabled1, slow1 = len(stats.disabled), stats.slow_calls
        dropped1, rec_dropped1 = receive_dropped(made), recorder_dropped(made)
        busy1, wakes1, skipped1 = thread.busy_seconds, thread.wakes, thread.skipped
    finally:
        thread.stop()
        loop.stop()
        remove_sessions(loop, made)
        writer.stop()
        clear_dir(out)
    final = stats.ticks
    costs = window_slice(list(stats.recent_tick_seconds), final, ticks0, ticks1)
    lateness = window_slice(list(stats.recent_lateness_seconds), final, ticks0, ticks1)
    ticks = max(1, ticks1 - ticks0)
    late_share = (late1 - late0) / ticks
    late10 = sum(1 for x in lateness if x > LATE10_SECONDS) / max(1, len(lateness))
    drops, rec_drops = dropped1 - dropped0, rec_dropped1 - rec_dropped0
    passed = late_share < LATE_SHARE_LIMIT and drops == 0 and rec_drops == 0
    return {
        "streams": streams,
        "pass": passed,
        "ticks": ticks1 - ticks0,
        "expected_ticks": round(window / TICK),
        "late_ticks": late1 - late0,
        "late_share": round(late_share, 4),
        "late10_share": round(late10, 4),
        "lateness_p99_ms": round(percentile(lateness, 99) * 1000, 2),
        "tick_p50_ms": round(percentile(costs, 50) * 1000, 2),
        "tick_p99_ms": round(percentile(costs, 99) * 1000, 2),
        "tick_max_ms": round(max(costs, default=0.0) * 1000, 2),
        "receive_dropped": drops,
        "recorder_dropped": rec_drops,
        "processors_disabled": disabled1 - disabled0,
        "slow_calls": slow1 - slow0,
        "gc": collections,
        "feeder_us_per_wake": round((busy1 - busy0) / max(1, wakes1 - wakes0) * 1e6, 1),
        "feeder_skipped": skipped1 - skipped0,
        "cpu_percent": cpu_percent(before, after),
    }


def cpu_text(cpu: dict[str, Any]) -> str:
    parts = [f"cpu {cpu['process']}%"]
    for name, short in (
        ("hot-loop", "loop"),
        ("recording-writer", "writer"),
        ("bench-feeder", "feeder"),
    ):
        t = cpu["threads"].get(name)
        if t is not None:
            parts.append(f"{short} {t['user']}+{t['sys']}sys ({t['switches_per_s']} sw/s)")
    return ", ".join(parts)


def realtime_search(pool: FramePool, plan: Plan, out: Path, gcw: GcWatch) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    passed: set[int] = set()
    failed: set[int] = set()

    def check(n: int) -> bool:
        row = realtime_run(pool, n, plan.rt_warmup, plan.rt_window, out / f"rt-{n}", gcw)
        rows.append(row)
        (passed if row["pass"] else failed).add(n)
        gc_ = row["gc"]
        log(
            f"real time {n} streams: {'pass' if row['pass'] else 'FAIL'}; late "
            f"{row['late_share']:.2%}, >10 ms {row['late10_share']:.2%}, tick p50 "
            f"{row['tick_p50_ms']} p99 {row['tick_p99_ms']} max {row['tick_max_ms']} ms, drops "
            f"{row['receive_dropped']}/{row['recorder_dropped']}, full GCs {gc_['gen2']} (max "
            f"{gc_['gen2_max_ms']} ms), disabled {row['processors_disabled']}; "
            + cpu_text(row["cpu_percent"])
        )
        return bool(row["pass"])

    for n in plan.ladder:
        if not check(n):
            break
    best = max(passed, default=0)
    if plan.bisect and failed:
        high = min(failed)
        while high - best > BISECT_STEP:
            middle = (best + high) // 2 // BISECT_STEP * BISECT_STEP
            if middle <= best:
                break
            if check(middle):
                best = middle
            else:
                high = middle
    confirmed = 1
    while best and plan.repeats > 1:
        if all(check(best) for _ in range(plan.repeats - 1)):
            confirmed = plan.repeats
            break
        lower = [n for n in passed if n < best]
        best = max(lower, default=0)  # then re-checked in turn
    return {
        "max_streams_realtime": best,
        "realtime_checks_at_max": confirmed if best else 0,
        "realtime": rows,
        "realtime_setup": {
            "ladder": list(plan.ladder),
            "bisect_step": BISECT_STEP if plan.bisect else None,
            "warmup_s": plan.rt_warmup,
            "window_s": plan.rt_window,
            "late_share_limit": LATE_SHARE_LIMIT,
        },
    }
