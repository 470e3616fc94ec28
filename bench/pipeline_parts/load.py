"""The synthetic unmixed load for bench/pipeline.py: a pool of speech-like frames, sessions of
four unmixed speakers on a HotLoop (VAD, a remix processor, a recorder), a feeder that pushes
one frame per session per 20 ms, and per-thread CPU readings.

A stream is one speaker's 20 ms PCM stream. Every session carries SPEAKERS of them; each frame
is AudioFrame(pcm=<their saturated sum>, unmixed=<one UnmixedAudioBuffer per speaker>), as
media/unmixed.py delivers it. The PCM comes from a pool generated once (emulator/signal.py
VoiceLikeSignal, PATTERNS sessions' worth of POOL_FRAMES frames) and is reused round-robin:
only the small objects (the buffers with their timestamps and the frame) are made per frame, so
the feeder costs about 2 us per session and frame.
"""

from __future__ import annotations

import gc
import math
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emulator.signal import VoiceLikeSignal
from media.audio_socket import AudioSocket
from media.clock import MonotonicClock, to_ticks
from media.frames import AUDIO_FRAME_SECONDS, AudioFrame, Pcm, UnmixedAudioBuffer
from media.pipeline.hotloop import HotLoop
from media.pipeline.mixer import mix
from media.pipeline.processor import Processor
from media.pipeline.recorder import AudioRecorder, RecordingWriter

TICK = AUDIO_FRAME_SECONDS
SPEAKERS = 4
POOL_FRAMES = 200  # 4 s: two of VoiceLikeSignal's 2 s breath cycles, so the pool loops cleanly
PATTERNS = 8  # distinct sessions' worth of audio; session s plays pattern s % PATTERNS
STAGGER_FRAMES = 25  # speaker k's audio is rolled k * 0.5 s so their breaths do not coincide
FIRST_MSI = 0x2A00
CAPTURE_TICKS = 600_000  # the sender captured a frame 60 ms before it reached the socket
GAINS = (1.0, 0.8, 0.6, 0.9)  # the remix processor's per-speaker gains
MAX_CATCH_UP = 5  # slots a late feeder pushes at once before it skips ahead
CLK_TCK = os.sysconf("SC_CLK_TCK")

# What a session runs, by component: (VAD, remix processor, recorder).
CONFIGS: dict[str, tuple[bool, bool, bool]] = {
    "loop": (False, False, False),
    "vad": (True, False, False),
    "vad_mix": (True, True, False),
    "full": (True, True, True),
}


class FramePool:
    """PATTERNS x SPEAKERS x POOL_FRAMES speech-like frames and their sums, read-only."""

    def __init__(self, patterns: int = PATTERNS, frames: int = POOL_FRAMES) -> None:
        self.frames = frames
        self.speakers: list[list[list[Pcm]]] = []  # [pattern][speaker][index]
        self.sums: list[list[Pcm]] = []  # [pattern][index]
        for p in range(patterns):
            tracks = []
            for k in range(SPEAKERS):
                signal = VoiceLikeSignal(1000 + p * SPEAKERS + k)
                track = np.stack([signal.next_frame() for _ in range(frames)])
                tracks.append(np.roll(track, k * STAGGER_FRAMES, axis=0))
            stacked = np.stack(tracks)  # (SPEAKERS, frames, 320)
            total = stacked.astype(np.int32).sum(axis=0)
            sums = np.clip(total, -32768, 32767).astype(np.int16)
            stacked.flags.writeable = False
            sums.flags.writeable = False
            # Row views made once: the feeder hands out these objects, never new ones.
            self.speakers.append([list(stacked[k]) for k in range(SPEAKERS)])
            self.sums.append(list(sums))

    def voiced_bytes(self) -> list[bytes]:
        """Every frame of the first speaker, as bytes (the raw VAD baseline's input)."""
        return [bytes(pcm.data) for pcm in self.speakers[0][0]]


class RemixProcessor:
    """The mixing share: remixes a frame's unmixed buffers with per-speaker gains
    (media.pipeline.mixer.mix) and returns the remixed frame."""

    name = "remix"

    def __init__(self, gains: tuple[float, ...] = GAINS) -> None:
        weights = np.asarray(gains, dtype=np.float32)
        # One gain array per speaker count, made once (a frame carries 1..4 buffers).
        self._gains = [weights[:n].copy() for n in range(len(gains) + 1)]

    def process(self, frame: AudioFrame) -> AudioFrame | None:
        buffers = frame.unmixed
        if not buffers:
            return None
        pcm = mix([b.pcm for b in buffers], self._gains[len(buffers)])
        return AudioFrame(pcm, frame.timestamp, frame.active_speakers, sequence=frame.sequence)


@dataclass(slots=True)
class SyntheticSession:
    session_id: str
    socket: AudioSocket
    pattern: int
    offset: int
    msis: tuple[int, ...]
    recorder: AudioRecorder | None


def add_sessions(
    loop: HotLoop,
    pool: FramePool,
    sessions: int,
    config: str,
    out_dir: Path,
    writer: RecordingWriter | None,
    ring_seconds: float = 2.0,
    prefix: str = "bench",
) -> list[SyntheticSession]:
    """`sessions` sessions of SPEAKERS streams each on `loop`, running `config` (CONFIGS); the
    recorders (if any) are started, writing into out_dir/<session id>/ through `writer`."""
    vad, remix, record = CONFIGS[config]
    made = []
    for s in range(sessions):
        session_id = f"{prefix}-{s:04d}"
        socket = AudioSocket()
        processors: list[Processor] = []
        if remix:
            processors.append(RemixProcessor())
        recorder = None
        if record:
            recorder = AudioRecorder(
                out_dir / session_id, session_id, writer=writer, ring_seconds=ring_seconds
            )
            processors.append(recorder)
        loop.add(session_id, socket, processors, vad=vad)
        if recorder is not None:
            recorder.start()
        msis = tuple(FIRST_MSI + s * SPEAKERS + k for k in range(SPEAKERS))
        made.append(
            SyntheticSession(
                session_id, socket, s % len(pool.sums), (s * 13) % pool.frames, msis, recorder
            )
        )
    return made


@dataclass
class Teardown:
    recorder_dropped: int = 0
    recorded_frames: int = 0  # frames written over every track, silence included
    recorded_bytes: int = 0


def remove_sessions(loop: HotLoop, sessions: list[SyntheticSession]) -> Teardown:
    """Off the loop, recorders closed (blocking file work, on the caller's thread)."""
    result = Teardown()
    for session in sessions:
        loop.remove(session.session_id)
    for session in sessions:
        recorder = session.recorder
        if recorder is None:
            continue
        recorder.close()
        result.recorder_dropped += recorder.dropped
        for track in recorder.track_stats().values():
            result.recorded_frames += track.frames
            result.recorded_bytes += track.bytes
    return result


def receive_dropped(sessions: list[SyntheticSession]) -> int:
    return sum(s.socket.receive_ring.dropped for s in sessions)


def recorder_dropped(sessions: list[SyntheticSession]) -> int:
    return sum(s.recorder.dropped for s in sessions if s.recorder is not None)


class Feeder:
    """Pushes one frame per session into its receive ring (the media loop's part)."""

    def __init__(self, pool: FramePool, sessions: list[SyntheticSession]) -> None:
        self._pool = pool
        self._sessions = sessions
        self.discarded = 0

    def feed(self, slot: int, timestamp: int) -> None:
        pool, n = self._pool, self._pool.frames
        ost = timestamp - CAPTURE_TICKS
        speakers, sums = pool.speakers, pool.sums
        for s in self._sessions:
            i = (s.offset + slot) % n
            tracks = speakers[s.pattern]
            msis = s.msis
            buffers = (
                UnmixedAudioBuffer(msis[0], tracks[0][i], ost),
                UnmixedAudioBuffer(msis[1], tracks[1][i], ost),
                UnmixedAudioBuffer(msis[2], tracks[2][i], ost),
                UnmixedAudioBuffer(msis[3], tracks[3][i], ost),
            )
            s.socket.receive_ring.push(
                AudioFrame(
                    sums[s.pattern][i],
                    timestamp,
                    msis,
                    sequence=slot,
                    unmixed=buffers,
                    original_sender_timestamp=ost,
                )
            )

    def discard_sent(self) -> None:
        """The send rings are not what this measures: empty them."""
        for s in self._sessions:
            ring = s.socket.send_ring
            if len(ring):
                self.discarded += len(ring.drain())


class FeederThread:
    """Feeder on its own thread, one slot per 20 ms on the monotonic clock, half a tick out
    of phase with a hot loop started just before it (so a tick finds one frame, not 0 or 2).
    A late wake-up pushes the slots it missed (at most MAX_CATCH_UP, then skips ahead)."""

    def __init__(self, feeder: Feeder, clock: MonotonicClock, first_deadline: float) -> None:
        self._feeder = feeder
        self._clock = clock
        self._first = first_deadline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-feeder", daemon=True)
        self.slots = 0
        self.skipped = 0
        self.busy_seconds = 0.0
        self.wakes = 0

    @property
    def native_id(self) -> int | None:
        return self._thread.native_id

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        clock, feeder = self._clock, self._feeder
        deadline = self._first
        slot = 0
        while not clock.wait_until(deadline, self._stop):
            started = time.perf_counter()
            now = clock.now()
            behind = int((now - deadline) / TICK)
            if behind >= MAX_CATCH_UP:
                skip = behind - MAX_CATCH_UP + 1
                self.skipped += skip
                slot += skip
                deadline += skip * TICK
            while deadline <= now:
                feeder.feed(slot, to_ticks(deadline))
                slot += 1
                deadline += TICK
                self.slots += 1
            feeder.discard_sent()
            self.wakes += 1
            self.busy_seconds += time.perf_counter() - started


# -- CPU readings -------------------------------------------------------------------------------


def _stat_times(path: str) -> tuple[float, float]:
    """(user, system) CPU seconds of a process or thread, from its /proc stat file."""
    try:
        with open(path) as stat:
            text = stat.read()
    except OSError:
        return math.nan, math.nan
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK  # utime, stime


def _switches(path: str) -> int:
    """Voluntary context switches of a thread: a thread that waits for the GIL after every
    system call shows thousands per second."""
    try:
        with open(path) as status:
            for line in status:
                if line.startswith("voluntary_ctxt_switches:"):
                    return int(line.split(":")[1])
    except OSError:
        pass
    return 0


def thread_ids(names: tuple[str, ...]) -> dict[str, int]:
    """Native ids of the live threads with these names (the first of each)."""
    found: dict[str, int] = {}
    for thread in threading.enumerate():
        if thread.name in names and thread.name not in found and thread.native_id is not None:
            found[thread.name] = thread.native_id
    return found


@dataclass
class CpuSample:
    """Process and per-thread CPU at one instant (from /proc, 10 ms resolution): per thread
    (user s, system s, voluntary context switches)."""

    at: float
    process: float
    threads: dict[str, tuple[float, float, int]] = field(default_factory=dict)

    def thread_cpu(self, name: str) -> float:
        user, system, _ = self.threads.get(name, (math.nan, math.nan, 0))
        return user + system


def cpu_sample(threads: dict[str, int]) -> CpuSample:
    pid = os.getpid()
    sample = CpuSample(time.monotonic(), sum(_stat_times(f"/proc/{pid}/stat")))
    for name, tid in threads.items():
        base = f"/proc/{pid}/task/{tid}"
        sample.threads[name] = (*_stat_times(f"{base}/stat"), _switches(f"{base}/status"))
    return sample


def cpu_percent(before: CpuSample, after: CpuSample) -> dict[str, Any]:
    """Percent of one core over the interval for the process; per thread user and system
    percent and voluntary context switches per second."""
    wall = max(1e-9, after.at - before.at)
    threads: dict[str, Any] = {}
    for name, (user, system, switches) in after.threads.items():
        if name not in before.threads:
            continue
        user0, system0, switches0 = before.threads[name]
        threads[name] = {
            "user": round(100 * (user - user0) / wall, 1),
            "sys": round(100 * (system - system0) / wall, 1),
            "switches_per_s": round((switches - switches0) / wall),
        }
    return {"process": round(100 * (after.process - before.process) / wall, 1), "threads": threads}


def clear_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


class GcWatch:
    """Garbage-collector pauses (gc.callbacks), by generation, and the thread they hit.
    Collections hold the GIL and never overlap, so one start time is enough."""

    def __init__(self) -> None:
        self._started = 0.0
        self._pauses: list[tuple[int, float, str]] = []

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        seconds = time.perf_counter() - self._started
        generation = int(info["generation"])
        name = threading.current_thread().name if generation == 2 else ""
        if len(self._pauses) < 100_000:
            self._pauses.append((generation, seconds, name))

    def __enter__(self) -> GcWatch:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def take(self, wall_seconds: float) -> dict[str, Any]:
        """What happened since the last take(): full (gen 2) collections, their longest pause
        and where they hit, and the GC time per wall second."""
        pauses, self._pauses = self._pauses, []
        full = [p for p in pauses if p[0] == 2]
        where: dict[str, int] = {}
        for _, _, name in full:
            where[name] = where.get(name, 0) + 1
        return {
            "collections": len(pauses),
            "gen2": len(full),
            "gen2_max_ms": round(max((p[1] for p in full), default=0.0) * 1000, 1),
            "max_ms": round(max((p[1] for p in pauses), default=0.0) * 1000, 1),
            "ms_per_s": round(sum(p[1] for p in pauses) * 1000 / max(1e-9, wall_seconds), 2),
            "gen2_threads": where,
        }
