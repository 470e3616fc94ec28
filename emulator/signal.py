"""A deterministic voice-like test signal, generated a 20 ms frame at a time.

Harmonics of a wandering fundamental under a syllable envelope, with pauses: it survives Opus
well (so an echo correlates), and it never repeats (so the correlation has one clear peak).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

RATE_HZ = 16_000
FRAME_SAMPLES = 320
AMPLITUDE = 9000.0
HARMONICS = np.arange(1, 7, dtype=np.float64)
HARMONIC_GAINS = 1.0 / HARMONICS


class VoiceLikeSignal:
    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)
        self._phase = 0.0
        self._f0 = 140.0
        self._frame = 0
        self._n = np.arange(FRAME_SAMPLES, dtype=np.float64)

    def next_frame(self) -> npt.NDArray[np.int16]:
        # The fundamental wanders (a random walk kept in a speaking range).
        target = float(np.clip(self._f0 + self._rng.normal(0.0, 6.0), 90.0, 260.0))
        f0 = self._f0 + (target - self._f0) * self._n / FRAME_SAMPLES
        phase = self._phase + 2 * np.pi * np.cumsum(f0) / RATE_HZ
        self._phase = float(phase[-1] % (2 * np.pi))
        self._f0 = target
        voiced = np.sin(np.outer(phase, HARMONICS)) @ HARMONIC_GAINS
        # Syllables: a 4 Hz envelope; every 2 s a 300 ms pause (a breath).
        t = (self._frame * FRAME_SAMPLES + self._n) / RATE_HZ
        envelope = 0.35 + 0.65 * np.abs(np.sin(2 * np.pi * 2.0 * t))
        envelope[(t % 2.0) > 1.7] = 0.0
        self._frame += 1
        return (voiced * envelope * AMPLITUDE / HARMONIC_GAINS.sum() * 2.2).astype(np.int16)
