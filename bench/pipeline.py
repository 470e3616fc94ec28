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
import gc
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline_parts.load import FramePool, GcWatch  # noqa: E402
from pipeline_parts.plan import FULL, QUICK, Plan, log, ms  # noqa: E402
from pipeline_parts.realtime import (  # noqa: E402
    BISECT_STEP,
    LATE10_SECONDS,
    LATE_SHARE_LIMIT,
    THREADS,
    cpu_text,
    realtime_run,
    realtime_search,
    window_slice,
)
from pipeline_parts.ticks import (  # noqa: E402
    CONFIG_ORDER,
    FAKE_RING_SECONDS,
    PER_STREAM_SESSIONS,
    per_stream,
    profile_ticks,
    tick_run,
)
from pipeline_parts.webhook import (  # noqa: E402
    ANSWER_SECONDS,
    ClientProcess,
    latency_summary,
    webhook,
)

# The names below lived here before the parts were split out; kept importable from here.
__all__ = [
    "ANSWER_SECONDS",
    "BISECT_STEP",
    "CONFIG_ORDER",
    "FAKE_RING_SECONDS",
    "FULL",
    "GOAL",
    "LATE10_SECONDS",
    "LATE_SHARE_LIMIT",
    "PER_STREAM_SESSIONS",
    "QUICK",
    "THREADS",
    "ClientProcess",
    "Plan",
    "cpu_text",
    "freeze_heap",
    "latency_summary",
    "log",
    "main",
    "ms",
    "per_stream",
    "profile_ticks",
    "realtime_run",
    "realtime_search",
    "tick_run",
    "webhook",
    "window_slice",
]

GOAL = {
    "per_stream_us_at_most": 20,
    "max_streams_realtime_at_least": 400,
    "webhook_p99_ms_below": 20,
}


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
