"""The outgoing player: audio the bot says on its own, paced by the hot loop.

This plays the role of the Windows library's AudioVideoFramePlayer: the
control side enqueues whole clips, the player hands out exactly one 20 ms frame per tick, and a
PlayerLow event (its LowOnFrames) says when the queue runs short so more can be queued without
a gap. Feeding a player 20 ms at a time from a live source is what made the Windows one choppy
(#217); here the hot loop's tick is the only clock, so pacing cannot drift from the send path.

Threads: play(), clear() and the properties are for the control thread; next_frame() and
take_event() are for the hot loop. One lock guards the queue and is held for microseconds.
Sources are immutable and the player keeps the read position, so a source can be played twice.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from media.frames import AUDIO_FRAME_SAMPLES, AUDIO_SAMPLE_RATE_HZ, Pcm
from media.pipeline.events import PlayerLow
from media.wav import read_wav_16k

SAMPLES_PER_MS = AUDIO_SAMPLE_RATE_HZ // 1000
_INDEX = np.arange(AUDIO_FRAME_SAMPLES, dtype=np.float64)


class Source(Protocol):
    """Something to play: a known number of 16 kHz samples, rendered on demand."""

    @property
    def length(self) -> int:
        """Samples in the whole source."""
        ...

    def render(self, start: int, out: Pcm) -> None:
        """Write samples [start, start + len(out)) into `out`; the player keeps that range
        inside [0, length). Runs on the hot loop: no I/O, no blocking."""
        ...


class PcmSource:
    """Samples already in memory (16 kHz mono int16). The samples are copied, so the caller
    may reuse its array."""

    def __init__(self, samples: npt.NDArray[np.int16]) -> None:
        if samples.dtype != np.int16 or samples.ndim != 1:
            raise ValueError(
                f"PcmSource needs 1-D int16 samples at 16 kHz, got {samples.dtype} {samples.shape}"
            )
        self.samples = samples.copy()
        self.samples.flags.writeable = False

    @property
    def length(self) -> int:
        return len(self.samples)

    def render(self, start: int, out: Pcm) -> None:
        out[:] = self.samples[start : start + len(out)]


class WavSource(PcmSource):
    """A WAV file (PCM 8/16/32-bit, any rate and channel count), converted to 16 kHz mono.

    The file is read whole here, so construct it off the control loop for long files
    (asyncio.to_thread): a 10-minute WAV is ~20 MB and the hot loop must never touch the disk.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__(read_wav_16k(path))
        self.path = Path(path)


@dataclass(frozen=True, slots=True)
class ToneSource:
    """A sine tone, computed as it plays (no buffer), phase-continuous across frames."""

    freq_hz: float
    seconds: float
    amplitude: float = 0.2  # of full scale

    def __post_init__(self) -> None:
        check_tone(self.freq_hz, self.amplitude)
        if not 0 < self.seconds < math.inf:
            raise ValueError(f"tone seconds must be positive, got {self.seconds!r}")

    @property
    def length(self) -> int:
        return round(self.seconds * AUDIO_SAMPLE_RATE_HZ)

    def render(self, start: int, out: Pcm) -> None:
        render_tone(out, self.freq_hz, self.amplitude, start)


def check_tone(freq_hz: float, amplitude: float) -> None:
    """Raise ValueError unless the tone is audible and representable at 16 kHz."""
    check_frequency(freq_hz)
    check_amplitude(amplitude)


def check_frequency(freq_hz: float) -> None:
    if not 0 < freq_hz < AUDIO_SAMPLE_RATE_HZ / 2:  # below Nyquist, or it aliases
        raise ValueError(
            f"tone frequency must be in (0, {AUDIO_SAMPLE_RATE_HZ // 2}) Hz, got {freq_hz!r}"
        )


def check_amplitude(amplitude: float) -> None:
    if not 0 <= amplitude <= 1:
        raise ValueError(f"tone amplitude must be in [0, 1] of full scale, got {amplitude!r}")


def render_tone(out: Pcm, freq_hz: float, amplitude: float, start: int) -> None:
    """Samples [start, start + len(out)) of a sine that starts at phase 0 at sample 0.

    The phase comes from the absolute sample index (reduced modulo one period first), not from
    an accumulator, so there is no drift however long it plays and any frame can be rendered on
    its own: consecutive calls join without a discontinuity.
    """
    step = 2 * math.pi * freq_hz / AUDIO_SAMPLE_RATE_HZ
    phase = math.fmod(step * start, 2 * math.pi)
    n = len(out)
    index = _INDEX[:n] if n <= AUDIO_FRAME_SAMPLES else np.arange(n, dtype=np.float64)
    wave = np.sin(index * step + phase)
    wave *= amplitude * 32767
    np.rint(wave, out=wave)
    out[:] = wave


@dataclass(slots=True)
class _Entry:
    source: Source
    position: int = 0


class OutgoingPlayer:
    """A bounded queue of sources, played one after another without gaps."""

    def __init__(
        self, session_id: str, low_water_ms: int = 200, max_queued_seconds: float = 600
    ) -> None:
        if low_water_ms < 0:
            raise ValueError(f"low_water_ms must be >= 0, got {low_water_ms!r}")
        if not 0 < max_queued_seconds < math.inf:
            raise ValueError(f"max_queued_seconds must be positive, got {max_queued_seconds!r}")
        self.session_id = session_id
        self.low_water_ms = low_water_ms
        self.max_queued_seconds = max_queued_seconds
        self._low_water = low_water_ms * SAMPLES_PER_MS
        self._max_samples = int(max_queued_seconds * AUDIO_SAMPLE_RATE_HZ)
        self._queue: deque[_Entry] = deque()
        self._queued = 0  # samples left to play over the whole queue
        self._armed = False  # queued audio has been at or above the low-water mark
        self._event: PlayerLow | None = None
        self._lock = threading.Lock()
        self.frames_played = 0

    def play(self, source: Source) -> None:
        """Queue a source after whatever is queued. Raises ValueError if the queue would hold
        more than max_queued_seconds (the bound on what a session may buffer)."""
        length = source.length
        if length <= 0:
            return  # nothing to say; an empty clip must not re-arm the low-water event
        with self._lock:
            if self._queued + length > self._max_samples:
                raise ValueError(
                    f"player {self.session_id}: queueing {length / AUDIO_SAMPLE_RATE_HZ:.1f} s "
                    f"on top of {self._queued / AUDIO_SAMPLE_RATE_HZ:.1f} s would exceed "
                    f"{self.max_queued_seconds:g} s"
                )
            self._queue.append(_Entry(source))
            self._queued += length
            if self._queued >= self._low_water:
                self._armed = True

    def clear(self) -> None:
        """Stop talking: drop everything queued (no PlayerLow for a deliberate stop)."""
        with self._lock:
            self._queue.clear()
            self._queued = 0
            self._armed = False
            self._event = None

    @property
    def queued_ms(self) -> int:
        return self._queued // SAMPLES_PER_MS

    @property
    def playing(self) -> bool:
        return self._queued > 0

    def next_frame(self) -> Pcm | None:
        """The next 20 ms, or None if nothing is queued. Call exactly once per tick: the tick
        is the player's clock. The end of the last source is padded with silence."""
        if self._queued == 0:
            return None  # the common case, without the lock: an idle bot says nothing
        out = np.zeros(AUDIO_FRAME_SAMPLES, dtype=np.int16)
        filled = 0
        with self._lock:
            queue = self._queue
            while filled < AUDIO_FRAME_SAMPLES and queue:
                entry = queue[0]
                take = min(AUDIO_FRAME_SAMPLES - filled, entry.source.length - entry.position)
                entry.source.render(entry.position, out[filled : filled + take])
                entry.position += take
                filled += take
                if entry.position >= entry.source.length:
                    queue.popleft()
            if filled == 0:
                return None  # cleared between the unlocked check and the lock
            self._queued -= filled
            if self._armed and self._queued < self._low_water:
                self._armed = False
                self._event = PlayerLow(self.session_id, self._queued // SAMPLES_PER_MS)
        self.frames_played += 1
        return out

    def take_event(self) -> PlayerLow | None:
        """The PlayerLow raised since the last call, if any (the hot loop batches it)."""
        if self._event is None:
            return None
        with self._lock:
            event, self._event = self._event, None
        return event
