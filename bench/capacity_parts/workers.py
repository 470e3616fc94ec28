"""The bot side of bench/capacity.py: what runs in its emulator and bot processes, and the
helpers every worker process shares (the request pipe, a loop-lag probe, GC pause watching).

Each worker answers the orchestrator's requests over a multiprocessing pipe, one at a time:
("name", *args) -> ("ok", value) or ("error", text); ("stop",) ends it after a clean teardown.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import logging
import pstats
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bot.app import Bot  # noqa: E402
from bot.call import Call  # noqa: E402
from bot.settings import Settings  # noqa: E402
from emulator import Emulator, EmulatorConfig  # noqa: E402
from media.clock import TICKS_PER_SECOND  # noqa: E402
from media.frames import AudioFrame  # noqa: E402
from media.pipeline.processor import ProcessorContext  # noqa: E402

FRAME_SECONDS = 0.020
FRAMES_PER_SECOND = 50
TICKS_PER_MS = TICKS_PER_SECOND // 1000
DRIFT_P99_LIMIT_MS = 20.0
LATE_MS = 60.0
LATE_SHARE_LIMIT = 0.005
RATE_SHARE = 0.99  # of 50 frames/s, the mean over calls
WORST_RATE_SHARE = 0.95  # of 50 frames/s, the worst call (a dead call fails the K)
RING = 4096  # frames kept per call: 82 s, more than any window
ARRIVALS_KEPT = 4096
MAX_WINDOW_SECONDS = 50.0  # the emulator keeps a minute of heard arrivals
JOIN_CONCURRENCY = 8
ESTABLISH_SECONDS = 30.0
ANSWER_SECONDS = 60.0
PROBE_SECONDS = 0.010

log = logging.getLogger("capacity")
Handler = Callable[[tuple[Any, ...]], Awaitable[Any]]


# -- shared by the worker processes ---------------------------------------------------------------


def worker_logging(name: str) -> None:
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format=f"%(asctime)s {name} %(threadName)s %(name)s %(levelname)s %(message)s",
    )


def run_loop(main: Coroutine[Any, Any, None], uv: bool) -> None:
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if uv:
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)


async def serve_pipe(conn: Connection, handle: Handler) -> None:
    """Answer the orchestrator's requests, one at a time, until it says ("stop",)."""
    while True:
        message = await asyncio.to_thread(conn.recv)
        if message[0] == "stop":
            return
        try:
            reply: tuple[str, Any] = ("ok", await handle(message))
        except Exception as exc:  # reported to the orchestrator, which decides
            log.exception("request %s failed", message[0])
            reply = ("error", f"{type(exc).__name__}: {exc}")
        conn.send(reply)


def in_window(times: deque[float], t0: float, t1: float) -> int:
    return sum(1 for t in times if t0 <= t < t1)


def percentile(values: npt.NDArray[np.float64], q: float) -> float:
    return float(np.percentile(values, q)) if values.size else 0.0


async def keep_frozen() -> None:
    """Move what survived into the permanent generation every second, so that the collector's
    full passes scan one second's objects, not the whole heap. The load generators run this: a
    full collection over the emulator's per-tick logs stalled its send loop for 35-45 ms at 30
    links, which showed up as the bot's drift. The bot runs it only with --bot-gc freeze (a
    what-if). Frozen garbage is never freed: fine for a bench's few minutes."""
    while True:
        gc.freeze()
        await asyncio.sleep(1.0)  # a housekeeping period, not a wait for an event


class LagProbe:
    """A 10 ms sleep loop: how late it wakes is how late the loop's other work (sending) is."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, float]] = deque(maxlen=100 * 120)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            due = time.monotonic() + PROBE_SECONDS
            await asyncio.sleep(PROBE_SECONDS)  # the probe is a timer by nature
            self.samples.append((due, time.monotonic() - due))

    def figures(self, t0: float, t1: float) -> dict[str, float]:
        lags = np.array([lag for due, lag in self.samples if t0 <= due < t1], dtype=np.float64)
        return {
            "lag_p99_ms": round(percentile(lags, 99) * 1000, 2),
            "lag_max_ms": round(float(lags.max()) * 1000 if lags.size else 0.0, 2),
        }


class GcWatch:
    """Garbage-collector pauses (gc.callbacks): a full collection stops every thread."""

    def __init__(self) -> None:
        self.pauses: deque[tuple[float, int, float]] = deque(maxlen=10_000)
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            now = time.monotonic()
            self.pauses.append((now, info["generation"], time.perf_counter() - self._started))

    def figures(self, t0: float, t1: float) -> dict[str, float]:
        # The callback appends from any thread, at any allocation: copy with collections off.
        enabled = gc.isenabled()
        gc.disable()
        try:
            pauses = list(self.pauses)
        finally:
            if enabled:
                gc.enable()
        seen = [(g, d) for t, g, d in pauses if t0 <= t < t1]
        return {
            "gc_collections": len(seen),
            "gc_full_collections": sum(1 for g, _ in seen if g == 2),
            "gc_pause_max_ms": round(max((d for _, d in seen), default=0.0) * 1000, 2),
        }


# -- the emulator process -------------------------------------------------------------------------


def emulator_role(conn: Connection, config: EmulatorConfig) -> None:
    worker_logging("emulator")
    run_loop(_emulator_main(conn, config), uv=True)


async def _emulator_main(conn: Connection, config: EmulatorConfig) -> None:
    emulator = Emulator(config)
    await emulator.start()
    probe = LagProbe()
    probe.start()
    collector = GcWatch()
    freezer = asyncio.create_task(keep_frozen())

    async def handle(message: tuple[Any, ...]) -> Any:
        if message[0] != "heard":
            raise ValueError(f"unknown request {message[0]!r}")
        _, call_ids, t0, t1 = message
        heard = []
        for call_id in call_ids:
            call = emulator.calls.get(call_id)
            link = call.link if call is not None else None
            heard.append(in_window(link.heard_arrivals, t0, t1) if link is not None else 0)
        return {"heard": heard, **probe.figures(t0, t1), **collector.figures(t0, t1)}

    try:
        conn.send(
            ("ok", {"join_url": emulator.join_url(config.meetings[0]), "base": emulator.base_url})
        )
        await serve_pipe(conn, handle)
    finally:
        freezer.cancel()
        await probe.stop()
        await emulator.stop()
    conn.send(("ok", None))


# -- the bot process ------------------------------------------------------------------------------


class EchoRecorder:
    """Echoes every frame and keeps when it arrived, was captured and was handled (100 ns ticks,
    CLOCK_MONOTONIC) in preallocated rings: three stores a frame on the hot loop."""

    name = "capacity-echo"

    def __init__(self) -> None:
        self.arrived = np.zeros(RING, np.int64)
        self.captured = np.zeros(RING, np.int64)
        self.handled = np.zeros(RING, np.int64)
        self.count = 0

    def process(self, frame: AudioFrame) -> AudioFrame | None:
        i = self.count % RING
        self.arrived[i] = frame.timestamp
        self.captured[i] = frame.original_sender_timestamp
        self.handled[i] = time.monotonic_ns() // 100
        self.count += 1
        return frame

    def window(self, t0: int, t1: int) -> tuple[npt.NDArray[np.int64], ...]:
        """The frames that arrived in [t0, t1) ticks. The window has ended: the slot the hot loop
        may be writing holds a frame after t1 (its arrival is stored first), so it is left out."""
        n = min(self.count, RING)
        arrived = self.arrived[:n].copy()
        keep = (arrived >= t0) & (arrived < t1)
        return arrived[keep], self.captured[:n][keep], self.handled[:n][keep]


@dataclass
class BotState:
    bot: Bot
    join_url: str
    recorders: list[EchoRecorder]
    active: list[tuple[Call, EchoRecorder]]
    collector: GcWatch
    profiler: cProfile.Profile | None = None


def bot_role(conn: Connection, settings: Settings, join_url: str, freeze: bool) -> None:
    worker_logging("bot")
    run_loop(_bot_main(conn, settings, join_url, freeze), uv=False)


async def _bot_main(conn: Connection, settings: Settings, join_url: str, freeze: bool) -> None:
    recorders: list[EchoRecorder] = []

    def processors(context: ProcessorContext) -> list[Any]:
        recorder = EchoRecorder()
        recorders.append(recorder)
        return [recorder]

    state = BotState(Bot(settings, processors=processors), join_url, recorders, [], GcWatch())
    await state.bot.start()
    requests: dict[str, Callable[..., Awaitable[Any]]] = {
        "join": _join,
        "hangup": _hang_up,
        "stats": _bot_stats,
        "threads": _threads,
        "profile_start": _profile_start,
        "profile_stop": _profile_stop,
    }

    async def handle(message: tuple[Any, ...]) -> Any:
        return await requests[message[0]](state, *message[1:])

    # --bot-gc freeze: what the bot would do with gc.freeze() (not what it does today).
    freezer = asyncio.create_task(keep_frozen()) if freeze else None
    try:
        conn.send(("ok", None))
        await serve_pipe(conn, handle)
    finally:
        if freezer is not None:
            freezer.cancel()
        await _hang_up(state, len(state.active), 10.0)
        await state.bot.stop()
    conn.send(("ok", None))


async def _join(state: BotState, count: int) -> dict[str, Any]:
    limit = asyncio.Semaphore(JOIN_CONCURRENCY)

    async def one() -> tuple[Call, EchoRecorder]:
        async with limit:
            index = len(state.recorders)
            # Bot.join creates the media session, and so calls the processor factory, before
            # its first await: recorders[index] is this call's.
            call = await state.bot.join(state.join_url)
            if len(state.recorders) <= index:
                raise RuntimeError("Bot.join made no media session for this call")
            recorder = state.recorders[index]
            try:
                await call.wait_for("established", ESTABLISH_SECONDS)
            except Exception:
                await asyncio.gather(call.hang_up(), return_exceptions=True)
                raise
            return call, recorder

    started = time.monotonic()
    results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    errors: list[str] = []
    for result in results:
        if isinstance(result, BaseException):
            errors.append(f"{type(result).__name__}: {result}")
        else:
            state.active.append(result)
    return {
        "active": len(state.active),
        "errors": sorted(set(errors)),
        "failed": len(errors),
        "seconds": round(time.monotonic() - started, 2),
    }


async def _hang_up(state: BotState, count: int, within: float = ESTABLISH_SECONDS) -> int:
    leaving = state.active[len(state.active) - count :] if count > 0 else []
    del state.active[len(state.active) - len(leaving) :]

    async def one(call: Call) -> None:
        await call.hang_up()
        await call.wait_for("terminated", within)

    await asyncio.gather(*(one(c) for c, _ in leaving), return_exceptions=True)
    return len(state.active)


async def _bot_stats(state: BotState, t0: float, t1: float) -> dict[str, Any]:
    seconds = t1 - t0
    lo, hi = round(t0 * TICKS_PER_SECOND), round(t1 * TICKS_PER_SECOND)
    drifts: list[npt.NDArray[np.int64]] = []
    waits: list[npt.NDArray[np.int64]] = []
    delays: list[float] = []
    rates: list[float] = []
    unknown = 0
    for _, recorder in state.active:
        arrived, captured, handled = recorder.window(lo, hi)
        rates.append(arrived.size / seconds)
        waits.append(handled - arrived)
        known = captured > 0
        unknown += int(arrived.size - known.sum())
        delay = arrived[known] - captured[known]
        if delay.size:
            drifts.append(delay - delay.min())
            delays.append(float(np.median(delay)) / TICKS_PER_MS)
    drift = np.concatenate(drifts).astype(np.float64) / TICKS_PER_MS if drifts else np.zeros(0)
    wait = np.concatenate(waits).astype(np.float64) / TICKS_PER_MS if waits else np.zeros(0)
    totals = {"receive_dropped": 0, "send_dropped": 0, "concealed": 0, "decode_errors": 0}
    for call, _ in state.active:
        session = state.bot.media.session(call.media_session_id or "")
        if session is not None:
            stats = session.stats
            for key in totals:
                totals[key] += stats.get(key, 0)
    since_join = {f"{key}_since_join": value for key, value in totals.items()}
    health = state.bot.media.health.snapshot
    hot = state.bot.media.hot_loop.stats
    return {
        "call_ids": [call.id for call, _ in state.active],
        "rates": rates,
        "frames": int(drift.size),
        "frames_without_capture_time": unknown,
        "drift_p99_ms": round(percentile(drift, 99), 2),
        "drift_max_ms": round(float(drift.max()) if drift.size else 0.0, 2),
        "late_share": round(float((drift > LATE_MS).mean()) if drift.size else 0.0, 5),
        "delay_p50_ms": round(statistics.median(delays), 2) if delays else None,
        "hot_loop_wait_p99_ms": round(percentile(wait, 99), 2),
        "media_loop_lag_p95_ms": _round(health.loop_lag_p95_ms),
        "health": str(health.status),
        "hot_loop_late_ticks_since_start": hot.late_ticks,
        **since_join,
        **state.collector.figures(t0, t1),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


async def _threads(state: BotState) -> dict[str, int]:
    return {t.name: t.native_id for t in threading.enumerate() if t.native_id is not None}


async def _on_media_loop(state: BotState, fn: Callable[[], object]) -> None:
    loop = state.bot.media._loop
    assert loop is not None, "the media platform is not running"

    async def call() -> None:
        fn()

    await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call(), loop))


async def _profile_start(state: BotState) -> None:
    state.profiler = cProfile.Profile()
    await _on_media_loop(state, state.profiler.enable)  # cProfile follows one thread


async def _profile_stop(state: BotState, path: str) -> list[dict[str, Any]]:
    profiler = state.profiler
    assert profiler is not None
    await _on_media_loop(state, profiler.disable)
    profiler.dump_stats(path)
    table: dict[Any, Any] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    rows = sorted(table.items(), key=lambda item: item[1][2], reverse=True)[:15]
    return [
        {
            "function": f"{Path(file).name}:{line}({name})",
            "calls": calls,
            "tottime_ms": round(tottime * 1000, 1),
            "cumtime_ms": round(cumtime * 1000, 1),
        }
        for (file, line, name), (_, calls, tottime, cumtime, _) in rows
    ]
