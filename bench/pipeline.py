"""Pipeline cost: per-stream cost of VAD + mixing + recording on the hot loop, the most unmixed
streams one hot loop carries in real time, and the webhook's latency while it does.

A stream is one speaker's 20 ms PCM stream of a session in unmixed mode. Every session carries 4
speakers: each frame is AudioFrame(pcm=<their sum>, unmixed=<4 UnmixedAudioBuffer of speech-like
PCM (emulator/signal.py), msi, original_sender_timestamp>). Each session runs the default VAD
(webrtcvad per speaker) and two processors: `remix` (mixes the 4 buffers with per-speaker gains
through media.pipeline.mixer.mix and returns the remixed frame: the mixing share) and a started
AudioRecorder (per-speaker and mixed WAV files in a temp dir, written by a real RecordingWriter
thread). The frames come from a pre-generated pool (pipeline_parts/load.py).

1. per_stream_us: the real HotLoop on a FakeClock, tick() called directly over 100 sessions (400
   streams), one frame pushed per session before each tick (outside the timing). Per run: mean
   tick wall time / streams (garbage-collector pauses included; per_stream_median_tick_us is the
   same from the median tick); the figure is the median over the runs. Components measured the
   same way, in the same runs (interleaved): `loop` (no VAD, no processor), `vad`, `vad_mix`,
   `full` (= per_stream_us). The writer thread runs meanwhile, at the ticks' faster-than-real-time
   pace: its GIL time lands in the ticks, its own CPU is writer_cpu_us_per_stream_frame. Stock
   baselines in the same process: raw webrtcvad.Vad(2).is_speech on
   one frame and raw numpy mixes (int16 (N, 320) -> int32 sum -> clip -> int16) of N = 16 and 4;
   stock_floor_us = raw VAD + raw 4-mix / 4. gil_contention_probe: the hot loop's own VAD and
   mixing calls alone and with another Python thread runnable (see pipeline_parts/micro.py).
2. max_streams_realtime: the real HotLoop thread (start(), MonotonicClock) with the same
   sessions, fed by a feeder thread that pushes one frame into every session's receive ring per
   20 ms slot (clock.wait_until pacing, half a tick out of phase with the loop) and empties the
   send rings. For each N of a ladder: a warm-up, then a window; late_share = HotLoop late ticks
   (a tick ending more than a whole tick behind its 20 ms grid, the platform health's
   definition) / ticks; late10_share = ticks starting > 10 ms late; tick cost p50/p99; receive
   ring and recorder ring drops; full collections; CPU of the process and per thread (user,
   system, voluntary context switches: GIL waits). The largest N with late_share < 1 % and no
   drops passes; the ladder stops at the first failure; full mode then bisects to 100 streams and
   re-checks the best N twice more, stepping down when a re-check fails.
3. webhook_p99_ms: the emulator and a Bot as bot.demo.start_local_environment makes them (real
   TLS, notification keys from the emulator's OpenID document), the synthetic sessions on the
   bot's own hot loop (bot.media.hot_loop.add) with their feeder, and a client in a separate
   process (pipeline_parts/webhook_client.py) posting roster notifications JWT-signed with the
   emulator's notification key (as emulator/notifier.py signs them) at 50/s over one keep-alive
   connection, timing each response. Load = max_streams_realtime (the lowest rung if none
   passed), and 400 streams as well when that differs (webhook_p99_ms_at_400). Baseline in the
   same run: the same client with the bot's hot loop idle. Every post must be answered 202.

Prints progress on stderr and one JSON object as the last line of stdout. --quick (about 40 s):
3 runs of 120 ticks, ladder 400..1000 with 3 s windows, 300 posts per webhook phase. Full
(about 5 min): 5 runs of 300 ticks, ladder 100..3200 with 8 s windows, bisection, 3 checks of the
best N, 1000 posts per phase. --profile: cProfile ticks at 400 streams (stderr only).
--no-gc-freeze: without gc.freeze() after start-up (the bot freezes unless BOT_GC_FREEZE=false;
the bare hot-loop parts freeze the same way so all three parts match the bot's default).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import json
import multiprocessing
import pstats
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline_parts import micro  # noqa: E402
from pipeline_parts.load import (  # noqa: E402
    CONFIGS,
    GAINS,
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
from pipeline_parts.webhook_client import client_role  # noqa: E402

from bot.app import Bot  # noqa: E402
from bot.demo import start_local_environment  # noqa: E402
from emulator.login import NOTIFICATION_ISSUER  # noqa: E402
from emulator.notifier import NOTIFICATION_TOKEN_LIFETIME_SECONDS  # noqa: E402
from media.clock import FakeClock, MonotonicClock, to_ticks  # noqa: E402
from media.pipeline.hotloop import HotLoop, percentile  # noqa: E402
from media.pipeline.recorder import RecordingWriter  # noqa: E402

GOAL = {
    "per_stream_us_at_most": 20,
    "max_streams_realtime_at_least": 400,
    "webhook_p99_ms_below": 20,
}
LATE_SHARE_LIMIT = 0.01
LATE10_SECONDS = 0.010
PER_STREAM_SESSIONS = 100  # 400 streams
FAKE_RING_SECONDS = 10.0  # ticks run faster than real time: the recorder rings must not drop
BISECT_STEP = 100  # full mode refines the real-time limit down to this many streams
THREADS = ("hot-loop", "recording-writer", "bench-feeder", "MainThread", "media-loop")
ANSWER_SECONDS = 120.0
CONFIG_ORDER = ("loop", "vad", "vad_mix", "full")


@dataclass(frozen=True)
class Plan:
    name: str
    runs: int
    ticks: int
    warmup_ticks: int
    micro_calls: int
    ladder: tuple[int, ...]
    rt_warmup: float
    rt_window: float
    repeats: int
    bisect: bool
    webhook_rate: float
    webhook_count: int
    webhook_warmup: int
    webhook_load_warmup: float
    webhook_also_400: bool


QUICK = Plan(
    name="quick",
    runs=3,
    ticks=120,
    warmup_ticks=30,
    micro_calls=5000,
    ladder=(400, 600, 800, 1000),
    rt_warmup=0.5,
    rt_window=3.0,
    repeats=1,
    bisect=False,
    webhook_rate=50.0,
    webhook_count=300,
    webhook_warmup=20,
    webhook_load_warmup=0.5,
    webhook_also_400=True,
)
FULL = Plan(
    name="full",
    runs=5,
    ticks=300,
    warmup_ticks=50,
    micro_calls=20000,
    ladder=(100, 200, 400, 600, 800, 1000, 1200, 1600, 2000, 2400, 3200),
    rt_warmup=1.0,
    rt_window=8.0,
    repeats=3,
    bisect=True,
    webhook_rate=50.0,
    webhook_count=1000,
    webhook_warmup=50,
    webhook_load_warmup=2.0,
    webhook_also_400=True,
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


# -- 1. per-stream cost on a FakeClock ------------------------------------------------------------


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


# -- 2. real time on the monotonic clock ----------------------------------------------------------


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


# -- 3. the webhook while the bot's hot loop carries the streams --------------------------------


class ClientProcess:
    """The webhook client in its own process ("spawn"), over a pipe."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process: BaseProcess = ctx.Process(
            target=client_role, args=(child,), name="webhook-client", daemon=True
        )
        self.process.start()
        child.close()
        self._reply("start")

    def _reply(self, what: str) -> Any:
        conn: Connection = self.conn
        if not conn.poll(ANSWER_SECONDS):
            raise RuntimeError(f"webhook client: no answer to {what}")
        status, value = conn.recv()
        if status != "ok":
            raise RuntimeError(f"webhook client: {what}: {value}")
        return value

    def run(self, options: dict[str, Any]) -> dict[str, Any]:
        self.conn.send(("run", options))
        result: dict[str, Any] = self._reply("run")
        return result

    def close(self) -> None:
        if self.process.is_alive():
            try:
                self.conn.send(("stop",))
                self._reply("stop")
            except (OSError, EOFError, RuntimeError):
                pass
        self.process.join(10)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        self.conn.close()


def latency_summary(result: dict[str, Any]) -> dict[str, Any]:
    latencies = [float(x) for x in result["latencies"]]
    return {
        "count": len(latencies),
        "p50_ms": ms(percentile(latencies, 50)),
        "p99_ms": ms(percentile(latencies, 99)),
        "max_ms": ms(max(latencies, default=0.0)),
        "statuses": result["statuses"],
        "late_sends": result["late_sends"],
        "connects": result["connects"],
    }


async def webhook(
    pool: FramePool, plan: Plan, loads: list[int], out: Path, gcw: GcWatch, gc_freeze: bool
) -> dict[str, Any]:
    client = await asyncio.to_thread(ClientProcess)
    env = await start_local_environment(out / "env")
    bot = Bot(env.settings.replace(gc_freeze=gc_freeze))
    phases: dict[str, dict[str, Any]] = {}
    sequence = 0
    try:
        await bot.start()  # freezes the heap itself when gc_freeze (BOT_GC_FREEZE)
        key = env.emulator.notification_keys[0]
        claims = {
            "iss": NOTIFICATION_ISSUER,
            "aud": env.settings.app_id,
            "tid": env.settings.tenant_id,
        }
        hot_loop = bot.media.hot_loop

        async def post(label: str) -> dict[str, Any]:
            nonlocal sequence
            options = {
                "url": bot.callback_url,
                "ca_file": str(env.settings.ca_file),
                "token": key.sign(claims, NOTIFICATION_TOKEN_LIFETIME_SECONDS),
                "rate": plan.webhook_rate,
                "count": plan.webhook_count,
                "warmup": plan.webhook_warmup,
                "first": sequence,
            }
            stats = hot_loop.stats
            late0, ticks0, disabled0 = stats.late_ticks, stats.ticks, len(stats.disabled)
            gcw.take(1.0)
            t0 = time.monotonic()
            result = await asyncio.to_thread(client.run, options)
            collections = gcw.take(time.monotonic() - t0)
            sequence = int(result["next"])
            summary = latency_summary(result)
            ticks = max(1, stats.ticks - ticks0)
            summary["hot_loop_late_share"] = round((stats.late_ticks - late0) / ticks, 4)
            summary["processors_disabled"] = len(stats.disabled) - disabled0
            summary["gc"] = collections
            log(
                f"webhook {label}: p50 {summary['p50_ms']} p99 {summary['p99_ms']} max "
                f"{summary['max_ms']} ms over {summary['count']} posts, statuses "
                f"{summary['statuses']}, hot-loop late {summary['hot_loop_late_share']:.2%}, "
                f"full GCs {collections['gen2']} (max {collections['gen2_max_ms']} ms)"
            )
            return summary

        phases["idle"] = await post("idle")
        for streams in loads:
            writer = RecordingWriter()
            writer.start()
            made = add_sessions(
                hot_loop, pool, streams // SPEAKERS, "full", out / "rec", writer, prefix="load"
            )
            feeder = FeederThread(Feeder(pool, made), MonotonicClock(), time.monotonic() + TICK)
            feeder.start()
            try:
                await asyncio.sleep(plan.webhook_load_warmup)
                dropped0, rec_dropped0 = receive_dropped(made), recorder_dropped(made)
                phase = await post(f"{streams} streams")
                phase["receive_dropped"] = receive_dropped(made) - dropped0
                phase["recorder_dropped"] = recorder_dropped(made) - rec_dropped0
                phase["streams"] = streams
            finally:
                feeder.stop()
                await asyncio.to_thread(remove_sessions, hot_loop, made)
                writer.stop()
                clear_dir(out / "rec")
            phases[f"loaded_{streams}"] = phase
        stats = bot.webhook_stats
        accepted = stats.accepted if stats is not None else 0
        unauthorized = stats.unauthorized if stats is not None else 0
    finally:
        await bot.stop()
        await asyncio.to_thread(env.thread.stop)
        await asyncio.to_thread(client.close)
    return {"phases": phases, "accepted": accepted, "unauthorized": unauthorized}


# -- the run ------------------------------------------------------------------------------------


def freeze_heap() -> None:
    """Move every object alive now out of the collector's reach (gc.freeze), so full
    collections only traverse what was made after: what Bot.start() does (BOT_GC_FREEZE)."""
    gc.collect()
    gc.freeze()


def main(plan: Plan, profile: bool, gc_freeze: bool) -> dict[str, Any]:
    started = time.monotonic()
    pool = FramePool()
    if gc_freeze:
        freeze_heap()
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp, GcWatch() as gcw:
        out = Path(tmp)
        part1 = per_stream(pool, plan, out / "ticks", gcw)
        seconds = {"per_stream": round(time.monotonic() - started, 1)}
        if profile:
            profile_ticks(pool, out / "profile")
        mark = time.monotonic()
        part2 = realtime_search(pool, plan, out, gcw)
        seconds["realtime"] = round(time.monotonic() - mark, 1)
        mark = time.monotonic()
        best = int(part2["max_streams_realtime"])
        load = best or plan.ladder[0]
        loads = [load]
        if plan.webhook_also_400 and load != 400:
            loads.append(400)
        part3 = asyncio.run(webhook(pool, plan, loads, out / "webhook", gcw, gc_freeze))
        seconds["webhook"] = round(time.monotonic() - mark, 1)
    phases = part3["phases"]
    loaded, idle = phases[f"loaded_{load}"], phases["idle"]
    at_400 = phases.get("loaded_400")
    all_202 = all(set(p["statuses"]) == {"202"} for p in phases.values())
    per_stream_us = float(part1.pop("per_stream_us"))
    part2.pop("max_streams_realtime")
    return {
        "per_stream_us": per_stream_us,
        "max_streams_realtime": best,
        "webhook_p99_ms": loaded["p99_ms"],
        "webhook_p50_ms": loaded["p50_ms"],
        "webhook_max_ms": loaded["max_ms"],
        "webhook_count": loaded["count"],
        "webhook_load_streams": load,
        "webhook_p99_ms_at_400": at_400["p99_ms"] if at_400 else None,
        "webhook_idle_p99_ms": idle["p99_ms"],
        "webhook_idle_p50_ms": idle["p50_ms"],
        "webhook_p99_over_idle": round(loaded["p99_ms"] / idle["p99_ms"], 2)
        if idle["p99_ms"]
        else None,
        "webhook_all_202": all_202,
        "webhook_accepted": part3["accepted"],
        "webhook_unauthorized": part3["unauthorized"],
        "webhook_phases": phases,
        **part1,
        **part2,
        "goal": GOAL,
        "goal_met": {
            "per_stream_us": per_stream_us <= GOAL["per_stream_us_at_most"],
            "max_streams_realtime": best >= GOAL["max_streams_realtime_at_least"],
            "webhook_p99_ms": loaded["p99_ms"] < GOAL["webhook_p99_ms_below"] and all_202,
            "webhook_p99_ms_at_400": bool(
                at_400 and at_400["p99_ms"] < GOAL["webhook_p99_ms_below"] and all_202
            ),
        },
        "mode": plan.name,
        "gc_freeze": gc_freeze,
        "wall_seconds": round(time.monotonic() - started, 1),
        "part_seconds": seconds,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs (under a minute)")
    parser.add_argument("--profile", action="store_true", help="cProfile ticks at 400 streams")
    parser.add_argument(
        "--no-gc-freeze", action="store_true", help="no gc.freeze() after start-up (BOT_GC_FREEZE)"
    )
    args = parser.parse_args()
    print(json.dumps(main(QUICK if args.quick else FULL, args.profile, not args.no_gc_freeze)))
