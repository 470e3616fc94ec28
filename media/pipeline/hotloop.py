"""The hot loop: one thread, one tick per 20 ms on a monotonic clock (DESIGN.md section 3).

Each tick drains every session's receive ring, runs its processors in order over each frame and
writes what they return to the session's send ring. No I/O, no awaits, no per-frame logging.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from media.audio_socket import AudioSocket
from media.clock import Clock
from media.frames import AUDIO_FRAME_SECONDS, AudioFrame
from media.pipeline.processor import AudioProcessor

logger = logging.getLogger(__name__)

TICK_SECONDS = AUDIO_FRAME_SECONDS
MAX_CONSECUTIVE_FAILURES = 5


@dataclass(slots=True)
class _Slot:
    """One processor in one session's chain, with its failure bookkeeping."""

    processor: AudioProcessor
    failures: int = 0
    consecutive_failures: int = 0
    disabled: bool = False


@dataclass(slots=True)
class _SessionPipeline:
    socket: AudioSocket
    slots: list[_Slot]


@dataclass(slots=True)
class HotLoopStats:
    ticks: int = 0
    late_ticks: int = 0  # ticks that started more than one tick after their deadline
    frames: int = 0
    processor_failures: int = 0
    tick_errors: int = 0
    disabled: list[str] = field(default_factory=list)


class HotLoop:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._sessions: dict[str, _SessionPipeline] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stats = HotLoopStats()

    def add(self, session_id: str, socket: AudioSocket, processors: list[AudioProcessor]) -> None:
        for processor in processors:
            if not isinstance(processor, AudioProcessor):
                raise TypeError(f"{processor!r} is not an AudioProcessor (name + process())")
        pipeline = _SessionPipeline(socket, [_Slot(p) for p in processors])
        with self._lock:
            self._sessions[session_id] = pipeline

    def remove(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    @property
    def session_count(self) -> int:
        with self._lock:
            return len(self._sessions)

    def tick(self) -> None:
        """One tick's work over every session. Pure CPU over the rings; tests call it directly."""
        with self._lock:
            pipelines = list(self._sessions.items())
        for session_id, pipeline in pipelines:
            for frame in pipeline.socket.receive():
                self.stats.frames += 1
                out: AudioFrame | None = frame
                for slot in pipeline.slots:
                    if slot.disabled or out is None:
                        continue
                    try:
                        result = slot.processor.process(out)
                        if result is not None and type(result) is not AudioFrame:
                            raise TypeError("process() must return an AudioFrame or None")
                        out = result
                        slot.consecutive_failures = 0
                    except Exception:
                        self._fail(session_id, slot)
                if out is not None:
                    pipeline.socket.send(out)
        self.stats.ticks += 1

    def _fail(self, session_id: str, slot: _Slot) -> None:
        slot.failures += 1
        slot.consecutive_failures += 1
        self.stats.processor_failures += 1
        if slot.consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
            slot.disabled = True
            self.stats.disabled.append(f"{session_id}:{slot.processor.name}")
            # Logged once, when it is disabled, not per failing frame.
            logger.error(
                "HotLoop x disabled processor %s in session %s after %d failures",
                slot.processor.name,
                session_id,
                slot.failures,
            )

    def run(self) -> None:
        """The thread body: tick on a 20 ms grid until stopped."""
        deadline = self._clock.now()
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # a bug of ours: count it, keep every other session ticking
                self.stats.tick_errors += 1
                if self.stats.tick_errors == 1:
                    logger.exception("HotLoop x tick failed (logged once; counted after)")
            deadline += TICK_SECONDS
            now = self._clock.now()
            if now > deadline + TICK_SECONDS:
                # More than a whole tick behind: count it and re-anchor instead of bursting.
                self.stats.late_ticks += 1
                deadline = now
            if self._clock.wait_until(deadline, self._stop):
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
