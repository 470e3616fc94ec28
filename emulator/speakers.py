"""Who the media processor says is speaking: loudness order, unmixed stream assignment and the
dominant speaker. Pure and synchronous, one call per 20 ms tick; no clock reads.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

NO_SPEAKER = 0xFFFFFFFF  # dominantSpeaker msi when nobody is dominant (docs/media-protocol.md)
MAX_CSRC = 15  # the CC field is 4 bits (RFC 3550 section 5.1)
UNMIXED_STREAMS = 4
HISTORY_LENGTH = 10  # dominantSpeaker history: at most 10, most recent first
DOMINANT_WINDOW_TICKS = 50  # 1 s of 20 ms frames
DOMINANT_SILENCE_TICKS = 100  # 2 s with nobody audible: nobody is dominant any more


def energy(pcm: npt.NDArray[np.int16]) -> float:
    """Sum of squares of a frame: the loudness the MP orders speakers by."""
    x = pcm.astype(np.float64)
    return float(x @ x)


def mix(frames: Sequence[npt.NDArray[np.int16]], samples: int) -> npt.NDArray[np.int16]:
    """Sum of frames, saturated to int16 (a silent frame when there are none)."""
    total = np.zeros(samples, dtype=np.int32)
    for frame in frames:
        total += frame
    return np.clip(total, -32768, 32767).astype(np.int16)


def loudest_first(audible: Sequence[tuple[int, float]]) -> tuple[int, ...]:
    """MSIs of (msi, energy) pairs, loudest first; equal loudness keeps the given order."""
    order = sorted(range(len(audible)), key=lambda i: -audible[i][1])
    return tuple(audible[i][0] for i in order)


class StreamAssigner:
    """Puts up to four speakers on the unmixed streams, sticky.

    A speaker keeps its stream for as long as it stays audible. A stream whose speaker fell
    silent is free in the same tick, and free streams go, lowest index first, to the loudest
    audible speakers that have no stream yet. A fifth speaker waits for a free stream: nobody is
    pre-empted, however loud the newcomer.
    """

    def __init__(self, streams: int = UNMIXED_STREAMS) -> None:
        self.slots: list[int | None] = [None] * streams

    def update(self, audible: Sequence[int]) -> tuple[int | None, ...]:
        """audible: this tick's audible MSIs, loudest first. Returns each stream's speaker."""
        present = set(audible)
        slots = [msi if msi in present else None for msi in self.slots]
        held = set(slots)
        waiting = iter(msi for msi in audible if msi not in held)
        for i, msi in enumerate(slots):
            if msi is None:
                slots[i] = next(waiting, None)
        self.slots = slots
        return tuple(slots)


class DominantSpeaker:
    """The dominant speaker, by a deterministic rule.

    Over the last second (50 ticks), the participant audible in the most frames is dominant.
    Ties keep the current dominant speaker; among other tied candidates, the one heard most
    recently wins, then the one listed first. Nobody is dominant (NO_SPEAKER) until someone
    speaks, and again after 2 s in which nobody was audible. `history` holds the previous
    dominant speakers, most recent first, at most 10, without repeats and without the current one.
    """

    def __init__(self) -> None:
        self.current = NO_SPEAKER
        self.history: list[int] = []
        self._window: deque[tuple[int, ...]] = deque()
        self._counts: dict[int, int] = {}
        self._last_heard: dict[int, int] = {}
        self._order: dict[int, int] = {}
        self._tick = 0
        self._silent_ticks = 0

    def update(self, audible: Sequence[int]) -> bool:
        """One tick's audible MSIs. Returns whether the dominant speaker changed."""
        self._tick += 1
        heard = tuple(audible)
        self._window.append(heard)
        for msi in heard:
            self._counts[msi] = self._counts.get(msi, 0) + 1
            self._last_heard[msi] = self._tick
            self._order.setdefault(msi, len(self._order))
        if len(self._window) > DOMINANT_WINDOW_TICKS:
            for msi in self._window.popleft():
                left = self._counts[msi] - 1
                if left:
                    self._counts[msi] = left
                else:
                    del self._counts[msi]
        self._silent_ticks = 0 if heard else self._silent_ticks + 1
        if self._silent_ticks >= DOMINANT_SILENCE_TICKS:
            return self._change(NO_SPEAKER)
        if not self._counts:
            return False  # silence shorter than the reset: the dominant speaker stays
        top = max(self._counts.values())
        if self._counts.get(self.current, 0) == top:
            return False
        best = max(
            (msi for msi, n in self._counts.items() if n == top),
            key=lambda msi: (self._last_heard[msi], -self._order[msi]),
        )
        return self._change(best)

    def forget(self, msi: int) -> None:
        """A participant left: it is no longer counted (it stays in the history)."""
        self._counts.pop(msi, None)
        self._window = deque(tuple(m for m in heard if m != msi) for heard in self._window)

    def _change(self, msi: int) -> bool:
        if msi == self.current:
            return False
        previous = self.current
        if previous != NO_SPEAKER:
            self.history = [previous, *(m for m in self.history if m != previous)]
        self.history = [m for m in self.history if m != msi][:HISTORY_LENGTH]
        self.current = msi
        return True
