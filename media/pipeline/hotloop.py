"""The hot loop: one thread, one tick per 20 ms on a monotonic clock.

Each tick, for every session: drain the audio receive ring; per frame run the VAD (speech
segments, dominant speaker), hand new events to the processors that listen, give the frame to
every audio processor, and mix what they return (sum-then-saturate) with the outgoing player's
frame into the send ring. Video sockets' newest frames go to the video processors. Events are
handed to the control path once per tick, as one batch.

A processor is isolated, never trusted: one that raises MAX_CONSECUTIVE_FAILURES times in a
row, or takes more than `slow_call_seconds` MAX_SLOW_CALLS times, or holds one call for longer
than a whole tick, is disabled for its session and a ProcessorDisabled event says why. CPython
cannot pre-empt a call in progress, so the call that reveals a stall does delay that tick; the
loop then catches up from the rings (RING_FRAMES deep) so other sessions lose no frames, and the
stalling processor never runs again.

No I/O, no awaits, no per-frame logging on this thread.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from media.audio_socket import AudioSocket
from media.clock import Clock
from media.frames import AUDIO_FRAME_SECONDS, AudioFrame, Pcm
from media.pipeline.events import EventSink, PipelineEvent, ProcessorDisabled, no_sink
from media.pipeline.mixer import mix
from media.pipeline.player import OutgoingPlayer
from media.pipeline.processor import AudioProcessor, Processor, VideoProcessor
from media.pipeline.vad import SessionVad, VadSettings
from media.video import VideoSocket

logger = logging.getLogger(__name__)

TICK_SECONDS = AUDIO_FRAME_SECONDS
MAX_CONSECUTIVE_FAILURES = 5
SLOW_CALL_SECONDS = 0.005  # a quarter of a tick for one frame of one processor is abuse
MAX_SLOW_CALLS = 3
SLOW_FORGIVEN_AFTER_CALLS = 250  # 5 s of frames without a slow call clears the strikes
RECENT_TICKS = 1500  # 30 s of tick costs and lateness kept for percentiles


@dataclass(slots=True)
class _Slot:
    """One processor in one session, with its failure bookkeeping."""

    processor: Any  # AudioProcessor and/or VideoProcessor
    name: str
    audio: bool
    video: bool
    listens: bool  # has on_event
    failures: int = 0
    consecutive_failures: int = 0
    slow_calls: int = 0
    calls_since_slow: int = 0
    disabled: bool = False


@dataclass(slots=True)
class SessionStats:
    frames: int = 0  # audio frames processed
    sent: int = 0  # frames written to the send ring
    video_frames: int = 0
    ticks: int = 0  # ticks in which this session was served


@dataclass(slots=True)
class _SessionPipeline:
    session_id: str
    socket: AudioSocket
    slots: list[_Slot]
    video_sockets: tuple[VideoSocket, ...]
    player: OutgoingPlayer | None
    vad: SessionVad | None
    lock: threading.Lock = field(default_factory=threading.Lock)
    closed: bool = False
    stats: SessionStats = field(default_factory=SessionStats)

    @property
    def listeners(self) -> list[_Slot]:
        return [s for s in self.slots if s.listens and not s.disabled]


@dataclass(slots=True)
class HotLoopStats:
    ticks: int = 0
    late_ticks: int = 0  # ticks that started more than one whole tick after their deadline
    frames: int = 0
    processor_failures: int = 0
    slow_calls: int = 0
    tick_errors: int = 0
    sink_errors: int = 0
    events: int = 0
    disabled: list[str] = field(default_factory=list)
    last_tick_seconds: float = 0.0
    max_tick_seconds: float = 0.0
    # Bounded histories for percentiles: how long ticks took, and how late they started.
    recent_tick_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_TICKS))
    recent_lateness_seconds: deque[float] = field(
        default_factory=lambda: deque(maxlen=RECENT_TICKS)
    )


class _GcTime:
    """Seconds the cyclic garbage collector has run, in any thread (gc.callbacks). A full
    collection takes 25-85 ms under load (bench/pipeline.py); a processor call it lands in is
    not the processor's fault, so the slow-call check takes it out."""

    def __init__(self) -> None:
        self.total = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.total += time.perf_counter() - self._started

    def seconds(self) -> float:
        return self.total


_GC_TIME = _GcTime()
gc.callbacks.append(_GC_TIME)


def _no_gc() -> float:
    return 0.0


def _check(processor: object) -> tuple[bool, bool]:
    audio = isinstance(processor, AudioProcessor)
    video = isinstance(processor, VideoProcessor)
    if not (audio or video):
        raise TypeError(
            f"{processor!r} is not an AudioProcessor or VideoProcessor "
            "(a `name` and process(frame) or process_video(frame))"
        )
    return audio, video


class HotLoop:
    def __init__(
        self,
        clock: Clock,
        sink: EventSink = no_sink,
        vad: VadSettings | None = None,
        slow_call_seconds: float = SLOW_CALL_SECONDS,
        perf_counter: Callable[[], float] = time.perf_counter,
        gc_seconds: Callable[[], float] | None = None,
    ) -> None:
        """`sink` gets each tick's events (on this thread: hand off, do not block). `vad` are
        the default VAD settings for sessions. `perf_counter` times processor calls (tests
        inject one to play a slow processor without sleeping); `gc_seconds` is the running
        total of garbage-collection time taken out of those times (the real one by default
        with the real timer, none with an injected one)."""
        self._clock = clock
        self.sink = sink
        self.vad_settings = vad or VadSettings()
        self._slow = slow_call_seconds
        self._perf = perf_counter
        if gc_seconds is None:
            gc_seconds = _GC_TIME.seconds if perf_counter is time.perf_counter else _no_gc
        self._gc = gc_seconds
        self._sessions: dict[str, _SessionPipeline] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._batch: list[PipelineEvent] = []
        self._outputs: list[Pcm] = []
        self.stats = HotLoopStats()

    # -- sessions (any thread) ----------------------------------------------------------------

    def add(
        self,
        session_id: str,
        socket: AudioSocket,
        processors: Sequence[Processor],
        video_sockets: Sequence[VideoSocket] = (),
        player: OutgoingPlayer | None = None,
        vad: VadSettings | None | bool = True,
    ) -> None:
        """Raises TypeError for an object that is not a processor. `vad`: True for the loop's
        settings, False to run none, or this session's own settings."""
        slots = []
        for processor in processors:
            audio, video = _check(processor)
            listens = callable(getattr(processor, "on_event", None))
            slots.append(_Slot(processor, str(processor.name), audio, video, listens))
        settings = self.vad_settings if vad is True else (vad or None)
        # Video sockets are drained only for video processors: a bot without any reads its
        # sockets itself (VideoSocket.receive), and two readers would steal frames.
        watch = tuple(video_sockets) if any(slot.video for slot in slots) else ()
        pipeline = _SessionPipeline(
            session_id,
            socket,
            slots,
            watch,
            player,
            SessionVad(session_id, settings) if settings else None,
        )
        with self._lock:
            self._sessions[session_id] = pipeline

    def remove(self, session_id: str) -> list[Processor]:
        """Take a session off the loop; returns its processors for the caller to close() off
        this loop. Open speech segments are closed and their events delivered first. Waits for
        the session's work in progress, at most one processor call."""
        with self._lock:
            pipeline = self._sessions.pop(session_id, None)
        if pipeline is None:
            return []
        with pipeline.lock:
            pipeline.closed = True
            events: list[PipelineEvent] = []
            if pipeline.vad is not None:
                pipeline.vad.close(events)
            self._deliver(pipeline, events, 0)
        if events:
            self._emit(events)
        return [slot.processor for slot in pipeline.slots]

    @property
    def session_count(self) -> int:
        with self._lock:
            return len(self._sessions)

    def processors(self, session_id: str) -> list[Processor]:
        with self._lock:
            pipeline = self._sessions.get(session_id)
        return [slot.processor for slot in pipeline.slots] if pipeline else []

    def session_stats(self, session_id: str) -> SessionStats | None:
        with self._lock:
            pipeline = self._sessions.get(session_id)
        return pipeline.stats if pipeline else None

    def speaking(self, session_id: str) -> tuple[int, ...]:
        """MSIs in a speech segment now (a snapshot; any thread)."""
        with self._lock:
            pipeline = self._sessions.get(session_id)
        if pipeline is None or pipeline.vad is None:
            return ()
        return pipeline.vad.speaking

    # -- the tick (this thread) -----------------------------------------------------------------

    def tick(self) -> None:
        """One tick's work over every session. Pure CPU over the rings; tests call it directly."""
        with self._lock:
            pipelines = list(self._sessions.values())
        batch = self._batch
        for pipeline in pipelines:
            with pipeline.lock:
                if not pipeline.closed:
                    self._serve(pipeline, batch)
        self.stats.ticks += 1
        if batch:
            self._emit(batch)
            batch.clear()

    def _emit(self, events: list[PipelineEvent]) -> None:
        self.stats.events += len(events)
        try:
            self.sink(tuple(events))
        except Exception:  # the control side's bug: count it, keep ticking
            self.stats.sink_errors += 1
            if self.stats.sink_errors == 1:
                logger.exception("HotLoop x event sink failed (logged once; counted after)")

    def _serve(self, pipeline: _SessionPipeline, batch: list[PipelineEvent]) -> None:
        stats = pipeline.stats
        stats.ticks += 1
        outputs = self._outputs
        vad = pipeline.vad
        frames = pipeline.socket.receive()
        if not frames and vad is not None:
            mark = len(batch)
            vad.idle(batch)
            if len(batch) > mark:
                self._deliver(pipeline, batch, mark)
        player_pcm = pipeline.player.next_frame() if pipeline.player is not None else None
        last: AudioFrame | None = None
        for frame in frames:
            # Every processor gets the same received frame: read-only, so none can change
            # what the next one sees.
            frame.pcm.flags.writeable = False
            mark = len(batch)
            if vad is not None:
                vad.update(frame, batch)
            if len(batch) > mark:
                self._deliver(pipeline, batch, mark)
            outputs.clear()
            for slot in pipeline.slots:
                if slot.audio and not slot.disabled:
                    self._call(pipeline, slot, frame, outputs, batch)
            stats.frames += 1
            if player_pcm is not None and outputs:
                outputs.append(player_pcm)  # the player talks over the first frame's output
                player_pcm = None
            if outputs:
                self._send(pipeline, frame, outputs)
            last = frame
        if player_pcm is not None:
            # Nothing else to say this tick: the player's frame goes alone, still one per tick.
            timestamp = last.timestamp if last is not None else 0
            pipeline.socket.send(AudioFrame(player_pcm, timestamp))
            stats.sent += 1
        if pipeline.player is not None:
            event = pipeline.player.take_event()
            if event is not None:
                batch.append(event)
        self.stats.frames += len(frames)
        for socket in pipeline.video_sockets:
            picture = socket.receive()
            if picture is None:
                continue
            stats.video_frames += 1
            for slot in pipeline.slots:
                if slot.video and not slot.disabled:
                    self._call_video(pipeline, slot, picture, batch)

    def _send(self, pipeline: _SessionPipeline, frame: AudioFrame, outputs: list[Pcm]) -> None:
        pcm = outputs[0] if len(outputs) == 1 else mix(outputs)
        pipeline.socket.send(AudioFrame(pcm, frame.timestamp, sequence=frame.sequence))
        pipeline.stats.sent += 1

    def _call(
        self,
        pipeline: _SessionPipeline,
        slot: _Slot,
        frame: AudioFrame,
        outputs: list[Pcm],
        batch: list[PipelineEvent],
    ) -> None:
        started, collected = self._perf(), self._gc()
        try:
            result = slot.processor.process(frame)
            if result is not None:
                if type(result) is not AudioFrame:
                    raise TypeError("process() must return an AudioFrame or None")
                outputs.append(result.pcm)
            slot.consecutive_failures = 0
        except Exception as exc:
            self._fail(pipeline, slot, exc, batch)
        self._timed(pipeline, slot, self._perf() - started - (self._gc() - collected), batch)

    def _call_video(
        self, pipeline: _SessionPipeline, slot: _Slot, picture: Any, batch: list[PipelineEvent]
    ) -> None:
        started, collected = self._perf(), self._gc()
        try:
            slot.processor.process_video(picture)
            slot.consecutive_failures = 0
        except Exception as exc:
            self._fail(pipeline, slot, exc, batch)
        self._timed(pipeline, slot, self._perf() - started - (self._gc() - collected), batch)

    def _deliver(self, pipeline: _SessionPipeline, batch: list[PipelineEvent], mark: int) -> None:
        """New events (batch[mark:]) to the session's listening processors."""
        listeners = pipeline.listeners
        if not listeners:
            return
        end = len(batch)
        for slot in listeners:
            for i in range(mark, end):
                try:
                    slot.processor.on_event(batch[i])
                except Exception as exc:
                    self._fail(pipeline, slot, exc, batch)
                    break

    def _timed(
        self, pipeline: _SessionPipeline, slot: _Slot, seconds: float, batch: list[PipelineEvent]
    ) -> None:
        if seconds <= self._slow or slot.disabled:
            slot.calls_since_slow += 1
            if slot.calls_since_slow > SLOW_FORGIVEN_AFTER_CALLS:
                slot.slow_calls = 0  # strikes are for a pattern, not one bad moment an hour
            return
        slot.calls_since_slow = 0
        slot.slow_calls += 1
        self.stats.slow_calls += 1
        if seconds >= TICK_SECONDS or slot.slow_calls >= MAX_SLOW_CALLS:
            detail = (
                f"a call took {seconds * 1000:.1f} ms ({slot.slow_calls} over "
                f"{self._slow * 1000:.1f} ms); a 20 ms tick is shared by every session"
            )
            self._disable(pipeline, slot, "slow", detail, batch)

    def _fail(
        self, pipeline: _SessionPipeline, slot: _Slot, exc: Exception, batch: list[PipelineEvent]
    ) -> None:
        slot.failures += 1
        slot.consecutive_failures += 1
        self.stats.processor_failures += 1
        if slot.consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
            detail = f"raised {slot.consecutive_failures} times in a row, last: {exc!r}"
            self._disable(pipeline, slot, "raised", detail, batch)

    def _disable(
        self,
        pipeline: _SessionPipeline,
        slot: _Slot,
        reason: str,
        detail: str,
        batch: list[PipelineEvent],
    ) -> None:
        slot.disabled = True
        self.stats.disabled.append(f"{pipeline.session_id}:{slot.name}")
        batch.append(ProcessorDisabled(pipeline.session_id, slot.name, reason, detail))
        # Logged once, when it is disabled, not per failing frame.
        logger.error(
            "HotLoop x disabled processor %s in session %s: %s",
            slot.name,
            pipeline.session_id,
            detail,
        )

    # -- the thread -----------------------------------------------------------------------------

    def run(self) -> None:
        """The thread body: tick on a 20 ms grid until stopped."""
        clock, stats = self._clock, self.stats
        deadline = clock.now()
        while not self._stop.is_set():
            started = clock.now()
            stats.recent_lateness_seconds.append(max(0.0, started - deadline))
            try:
                self.tick()
            except Exception:  # a bug of ours: count it, keep every other session ticking
                stats.tick_errors += 1
                if stats.tick_errors == 1:
                    logger.exception("HotLoop x tick failed (logged once; counted after)")
            now = clock.now()
            cost = now - started
            stats.last_tick_seconds = cost
            stats.max_tick_seconds = max(stats.max_tick_seconds, cost)
            stats.recent_tick_seconds.append(cost)
            deadline += TICK_SECONDS
            if now > deadline + TICK_SECONDS:
                # More than a whole tick behind: count it and re-anchor instead of bursting
                # (the rings held the frames; the next tick drains them all).
                stats.late_ticks += 1
                deadline = now
            if clock.wait_until(deadline, self._stop):
                break

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name="hot-loop", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (0 for no values): tick statistics for benchmarks and health."""
    if not values:
        return 0.0
    ordered = np.sort(np.asarray(values))
    return float(ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))])
