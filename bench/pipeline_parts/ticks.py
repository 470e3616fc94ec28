"""Part 1 of bench/pipeline.py, the per-stream cost: the real HotLoop on a FakeClock, tick()
called directly over PER_STREAM_SESSIONS sessions per configuration (interleaved), the stock
baselines (pipeline_parts/micro.py) beside it, and the cProfile of the full configuration."""

from __future__ import annotations

import cProfile
import io
import pstats
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from media.clock import FakeClock, to_ticks
from media.pipeline.hotloop import HotLoop, percentile
from media.pipeline.recorder import RecordingWriter
from pipeline_parts import micro
from pipeline_parts.load import (
    CONFIGS,
    GAINS,
    SPEAKERS,
    TICK,
    Feeder,
    FramePool,
    GcWatch,
    add_sessions,
    clear_dir,
    cpu_sample,
    receive_dropped,
    remove_sessions,
    thread_ids,
)
from pipeline_parts.plan import Plan, log

PER_STREAM_SESSIONS = 100  # 400 streams
FAKE_RING_SECONDS = 10.0  # ticks run faster than real time: the recorder rings must not drop
CONFIG_ORDER = ("loop", "vad", "vad_mix", "full")


def tick_run(
    pool: FramePool,
    sessions: int,
    config: str,
    ticks: int,
    warmup: int,
    out: Path,
    gcw: GcWatch,
) -> dict[str, Any]:
    """One run of `ticks` timed ticks over `sessions` sessions running `config`."""
    clock = FakeClock(1000.0)
    loop = HotLoop(clock)
    record = CONFIGS[config][2]
    writer = RecordingWriter() if record else None
    if writer is not None:
        writer.start()
    made = add_sessions(loop, pool, sessions, config, out, writer, FAKE_RING_SECONDS)
    feeder = Feeder(pool, made)
    streams = sessions * SPEAKERS
    costs: list[float] = []
    perf = time.perf_counter
    tids = thread_ids(("recording-writer",))
    before = cpu_sample(tids)
    try:
        for slot in range(warmup + ticks):
            if slot == warmup:
                before = cpu_sample(tids)
                gcw.take(1.0)
            feeder.feed(slot, to_ticks(clock.now()))
            t0 = perf()
            loop.tick()
            costs.append(perf() - t0)
            feeder.discard_sent()
            clock.advance(TICK)
        after = cpu_sample(tids)
        collections = gcw.take(after.at - before.at)
    finally:
        teardown = remove_sessions(loop, made)
        if writer is not None:
            writer.stop()
        clear_dir(out)
    timed = costs[warmup:]
    result: dict[str, Any] = {
        "per_stream_us": statistics.fmean(timed) / streams * 1e6,
        "median_tick_per_stream_us": statistics.median(timed) / streams * 1e6,
        "tick_p50_ms": percentile(timed, 50) * 1000,
        "tick_p99_ms": percentile(timed, 99) * 1000,
        "tick_max_ms": max(timed) * 1000,
        "frames": loop.stats.frames,
        "processor_failures": loop.stats.processor_failures,
        "disabled": len(loop.stats.disabled),
        "slow_calls": loop.stats.slow_calls,
        "gen2": collections["gen2"],
        "gen2_max_ms": collections["gen2_max_ms"],
        "receive_dropped": receive_dropped(made),
        "recorder_dropped": teardown.recorder_dropped,
    }
    if record:
        name = "recording-writer"
        writer_cpu = after.thread_cpu(name) - before.thread_cpu(name)
        result["writer_cpu_us_per_stream_frame"] = writer_cpu / (ticks * streams) * 1e6
    return result


def per_stream(pool: FramePool, plan: Plan, out: Path, gcw: GcWatch) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in CONFIG_ORDER}
    for r in range(plan.runs):
        for config in CONFIG_ORDER:  # interleaved: machine noise hits every component alike
            row = tick_run(
                pool, PER_STREAM_SESSIONS, config, plan.ticks, plan.warmup_ticks, out / config, gcw
            )
            runs[config].append(row)
        full = runs["full"][-1]
        log(
            f"per-stream run {r + 1}/{plan.runs}: "
            + ", ".join(f"{c} {runs[c][-1]['per_stream_us']:.2f} us" for c in CONFIG_ORDER)
            + f"; full: tick p50 {full['tick_p50_ms']:.2f} max {full['tick_max_ms']:.1f} ms, "
            f"{full['gen2']} full GCs (max {full['gen2_max_ms']} ms), "
            f"{full['disabled']} processors disabled"
        )

    def med(config: str, key: str) -> float:
        return statistics.median(float(row[key]) for row in runs[config])

    components = {c: round(med(c, "per_stream_us"), 3) for c in CONFIG_ORDER}
    full_us = components["full"]
    frames = [pool.speakers[p][k][0] for p in range(4) for k in range(SPEAKERS)]
    stack16 = np.stack(frames)
    raw_vad = micro.raw_vad_us(pool.voiced_bytes(), plan.micro_calls)
    raw_mix16 = micro.raw_mix_us(stack16, plan.micro_calls)
    raw_mix4 = micro.raw_mix_us(stack16[:4], plan.micro_calls)
    ours_mix4 = micro.ours_mix_gains_us(
        frames[:4], np.asarray(GAINS, dtype=np.float32), plan.micro_calls
    )
    stock_floor = raw_vad + raw_mix4 / SPEAKERS
    # Peak in int32: np.abs of int16 -32768 is still -32768, so a full-scale frame would rank last.
    loudest = max(pool.speakers[0][0], key=lambda pcm: int(np.abs(pcm.astype(np.int32)).max()))
    contention = micro.contention_probe(loudest, frames[:4], np.asarray(GAINS, dtype=np.float32))
    full_runs = runs["full"]
    log(f"baselines: raw VAD {raw_vad:.2f} us, raw mix16 {raw_mix16:.2f} us, mix4 {raw_mix4:.2f}")
    log(
        "GIL contention probe (us alone -> with a busy thread): "
        + "; ".join(
            f"{k} {v['alone_us']} -> {v['with_busy_thread_us']}" for k, v in contention.items()
        )
    )
    return {
        "per_stream_us": round(full_us, 3),
        "per_stream_runs_us": [round(float(r["per_stream_us"]), 3) for r in full_runs],
        "per_stream_median_tick_us": round(med("full", "median_tick_per_stream_us"), 3),
        "components_us": components,
        "component_shares_us": {
            "loop": components["loop"],
            "vad": round(components["vad"] - components["loop"], 3),
            "mix": round(components["vad_mix"] - components["vad"], 3),
            "recorder": round(components["full"] - components["vad_mix"], 3),
        },
        "tick_ms_at_400": {
            "p50": round(med("full", "tick_p50_ms"), 3),
            "p99": round(med("full", "tick_p99_ms"), 3),
            "max": round(max(float(r["tick_max_ms"]) for r in full_runs), 3),
        },
        "writer_cpu_us_per_stream_frame": round(med("full", "writer_cpu_us_per_stream_frame"), 3),
        "per_stream_events": {
            "receive_dropped": sum(int(r["receive_dropped"]) for r in full_runs),
            "recorder_dropped": sum(int(r["recorder_dropped"]) for r in full_runs),
            "processor_failures": sum(int(r["processor_failures"]) for r in full_runs),
            "processors_disabled": sum(int(r["disabled"]) for r in full_runs),
            "slow_calls": sum(int(r["slow_calls"]) for r in full_runs),
            "full_gcs": sum(int(r["gen2"]) for r in full_runs),
            "full_gc_max_ms": max(float(r["gen2_max_ms"]) for r in full_runs),
        },
        "baselines_us": {
            "raw_vad": round(raw_vad, 3),
            "raw_mix16": round(raw_mix16, 3),
            "raw_mix4": round(raw_mix4, 3),
            "ours_mix4_gains": round(ours_mix4, 3),
            "stock_floor_per_stream": round(stock_floor, 3),
        },
        "ratios": {
            "per_stream_over_raw_vad": round(full_us / raw_vad, 2),
            "per_stream_over_raw_mix16": round(full_us / raw_mix16, 2),
            "per_stream_over_stock_floor": round(full_us / stock_floor, 2),
            "vad_share_over_raw_vad": round((components["vad"] - components["loop"]) / raw_vad, 2),
            "mix_share_over_raw_mix4_per_stream": round(
                (components["vad_mix"] - components["vad"]) / (raw_mix4 / SPEAKERS), 2
            ),
        },
        "gil_contention_probe": contention,
        "per_stream_setup": {
            "sessions": PER_STREAM_SESSIONS,
            "streams": PER_STREAM_SESSIONS * SPEAKERS,
            "runs": plan.runs,
            "ticks_per_run": plan.ticks,
            "warmup_ticks": plan.warmup_ticks,
        },
    }


def profile_ticks(pool: FramePool, out: Path, ticks: int = 150) -> None:
    """cProfile the full configuration's ticks at 400 streams; top entries on stderr."""
    clock = FakeClock(1000.0)
    loop = HotLoop(clock)
    writer = RecordingWriter()
    writer.start()
    made = add_sessions(loop, pool, PER_STREAM_SESSIONS, "full", out, writer, FAKE_RING_SECONDS)
    feeder = Feeder(pool, made)
    profiler = cProfile.Profile()
    warmup = 30
    try:
        for slot in range(warmup + ticks):
            feeder.feed(slot, to_ticks(clock.now()))
            if slot >= warmup:
                profiler.enable()
            loop.tick()
            if slot >= warmup:
                profiler.disable()
            feeder.discard_sent()
            clock.advance(TICK)
    finally:
        remove_sessions(loop, made)
        writer.stop()
        clear_dir(out)
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(30)
    log(f"cProfile of {ticks} ticks at {PER_STREAM_SESSIONS * SPEAKERS} streams (tottime):")
    log(text.getvalue())
