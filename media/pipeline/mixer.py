"""Mixing 20 ms PCM16 frames: sum, then saturate (hot path, plain numpy).

Sources are summed in a wider type (int32 at unity gain, float32 with per-source gains) and
only the sum is clipped to the int16 range. Clipping the sum, not each partial sum, is what a
hardware mixer does; it never wraps (32767 + 1 stays 32767, it never becomes -32768, which would
be a full-scale click).

Costs on the 2-core dev VM (CPython 3.11, numpy 2.4): mix of 16 streams ~3.3 us, mix-minus of
16 ~7 us. np.clip is avoided on purpose: its Python-level wrapper costs ~2 us per call, more
than the arithmetic; in-place np.minimum/np.maximum do the same job without it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from media.frames import AUDIO_FRAME_SAMPLES, Pcm

INT16_MIN = -32768
INT16_MAX = 32767

Stack = npt.NDArray[np.int16] | Sequence[Pcm]
Gains = npt.ArrayLike | None

# Beyond this a float32 sum of int16 products could reach inf, and inf - inf is NaN. 96 dB of
# gain is far beyond any sensible use.
MAX_GAIN = 65536.0

# Up to this many sources are added row by row. Besides skipping np.stack, this keeps every
# numpy call at 320 elements: numpy releases the GIL inside larger loops, reductions and
# matmul, and a hot-loop thread that gives the GIL up mid-tick waits up to the 5 ms switch
# interval to get it back while the media loop runs (measured in bench/pipeline.py: a (4, 320)
# sum went from 3 us alone to 47-232 us with one busy thread; row by row it stays at 3-4 us).
_ROWS_UP_TO = 8


def saturate(total: npt.NDArray[np.int32] | npt.NDArray[np.float32]) -> Pcm:
    """Clip a wide sum to int16 in place, then narrow it (float sums are rounded to nearest)."""
    if total.dtype.kind == "f":
        np.rint(total, out=total)
    np.minimum(total, INT16_MAX, out=total)
    np.maximum(total, INT16_MIN, out=total)
    return total.astype(np.int16)


def mix(stack: Stack, gains: Gains = None) -> Pcm:
    """One frame: the saturated sum of N frames, each times its gain (None: unity, the fast
    path). `stack` is an (N, 320) int16 array or a sequence of 320-sample int16 arrays; N = 0
    gives silence."""
    if len(stack) <= _ROWS_UP_TO:
        rows = list(stack) if isinstance(stack, np.ndarray) else stack
        if isinstance(stack, np.ndarray):
            _as_stack(stack)  # the shape check a list gets row by row
        if gains is None:
            return _mix_few(rows)
        return _mix_few_weighted(rows, _gains(gains, len(rows)))
    frames = _as_stack(stack)
    if gains is None:
        return saturate(frames.sum(axis=0, dtype=np.int32))
    weights = _gains(gains, len(frames))
    # (N,) @ (N, 320): numpy casts the int16 frames to float32 inside the product.
    return saturate(np.matmul(weights, frames))


def mix_minus(stack: Stack, gains: Gains = None) -> npt.NDArray[np.int16]:
    """N frames out of N in: output i is the saturated mix of every source except i (what
    participant i should hear of the others). The total is summed once and each source's own
    contribution subtracted, so the cost grows with N, not N squared."""
    frames = _as_stack(stack)
    if gains is None:
        total = frames.sum(axis=0, dtype=np.int32)
        # int32 holds any sum of up to 65536 int16 sources exactly, so subtracting is exact.
        return saturate(total - frames)
    weights = _gains(gains, len(frames))
    weighted = frames * weights[:, None]
    return saturate(weighted.sum(axis=0) - weighted)


def _mix_few(frames: Sequence[Pcm]) -> Pcm:
    if not frames:
        return np.zeros(AUDIO_FRAME_SAMPLES, dtype=np.int16)
    total = _check(frames[0]).astype(np.int32)
    for frame in frames[1:]:
        np.add(total, _check(frame), out=total)
    return saturate(total)


def _mix_few_weighted(frames: Sequence[Pcm], weights: npt.NDArray[np.float32]) -> Pcm:
    total = np.zeros(AUDIO_FRAME_SAMPLES, dtype=np.float32)
    scaled = np.empty(AUDIO_FRAME_SAMPLES, dtype=np.float32)
    for frame, weight in zip(frames, weights.tolist(), strict=True):
        np.multiply(_check(frame), weight, out=scaled)
        np.add(total, scaled, out=total)
    return saturate(total)


def _check(frame: Pcm) -> Pcm:
    if frame.dtype != np.int16 or frame.shape != (AUDIO_FRAME_SAMPLES,):
        raise ValueError(
            f"mixing needs {AUDIO_FRAME_SAMPLES} int16 samples per frame, "
            f"got {frame.dtype} {frame.shape}"
        )
    return frame


def _as_stack(stack: Stack) -> npt.NDArray[np.int16]:
    if isinstance(stack, np.ndarray):
        frames = stack
    elif len(stack) == 0:
        return np.zeros((0, AUDIO_FRAME_SAMPLES), dtype=np.int16)
    else:
        frames = np.stack(stack)
    if frames.dtype != np.int16 or frames.ndim != 2 or frames.shape[1] != AUDIO_FRAME_SAMPLES:
        raise ValueError(
            f"mixing needs an (N, {AUDIO_FRAME_SAMPLES}) int16 stack, "
            f"got {frames.dtype} {frames.shape}"
        )
    return frames


def _gains(gains: npt.ArrayLike, n: int) -> npt.NDArray[np.float32]:
    weights = np.asarray(gains, dtype=np.float32)
    if weights.shape != (n,):
        raise ValueError(f"need one gain per source ({n}), got shape {weights.shape}")
    # NaN would survive the clip and turn into an arbitrary int16 value.
    if not (np.abs(weights) <= MAX_GAIN).all():
        raise ValueError(f"gains must be finite and within +-{MAX_GAIN:g}, got {weights.tolist()}")
    return weights
