"""Stock per-frame baselines measured in the same run:
raw webrtcvad and raw numpy mixing, timeit-style.

Calls are grouped in batches of at least 50 us; the figure is the median over batches of the
per-call mean, over at least `calls` calls.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable

import numpy as np
import webrtcvad

from media.frames import AUDIO_SAMPLE_RATE_HZ
from media.pipeline.mixer import mix
from media.pipeline.vad import frame_energy

BATCH_SECONDS = 50e-6
MIN_BATCHES = 100

Batch = Callable[[int], None]  # runs the operation n times


def per_call_us(batch: Batch, calls: int = 5000) -> float:
    n = 1
    while True:
        t0 = time.perf_counter()
        batch(n)
        if time.perf_counter() - t0 >= BATCH_SECONDS:
            break
        n *= 2
    batches = max(MIN_BATCHES, calls // n)
    means = []
    for _ in range(batches):
        t0 = time.perf_counter()
        batch(n)
        means.append((time.perf_counter() - t0) / n)
    return statistics.median(means) * 1e6


def raw_vad_us(frames: list[bytes], calls: int) -> float:
    """webrtcvad.Vad(2).is_speech on one 16 kHz 20 ms frame of speech-like audio."""
    vad = webrtcvad.Vad(2)
    is_speech = vad.is_speech
    count = len(frames)

    def batch(n: int) -> None:
        for i in range(n):
            is_speech(frames[i % count], AUDIO_SAMPLE_RATE_HZ)

    return per_call_us(batch, calls)


def raw_mix_us(stack: np.ndarray, calls: int) -> float:
    """(N, 320) int16 -> int32 sum -> clip -> int16, a raw "mix N"."""

    def batch(n: int) -> None:
        for _ in range(n):
            np.clip(stack.sum(axis=0, dtype=np.int32), -32768, 32767).astype(np.int16)

    return per_call_us(batch, calls)


def ours_mix_gains_us(buffers: list[np.ndarray], gains: np.ndarray, calls: int) -> float:
    """media.pipeline.mixer.mix over a list of buffers with per-source gains (the remix
    processor's arithmetic, without the frame objects)."""

    def batch(n: int) -> None:
        for _ in range(n):
            mix([b for b in buffers], gains)

    return per_call_us(batch, calls)


def _mean_us(fn: Callable[[], object], calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def _energy_vdot(pcm: np.ndarray) -> float:
    x = pcm.astype(np.float32)
    return float(np.vdot(x, x))


def contention_probe(
    pcm: np.ndarray, buffers: list[np.ndarray], gains: np.ndarray, calls: int = 2000
) -> dict[str, dict[str, float]]:
    """The hot loop's per-frame numpy and VAD calls, alone and while another Python thread is
    runnable (as the media loop or the recording writer is). A call that releases the GIL
    (numpy's dot, matmul and axis reductions do, even on 320 samples) must then win it back,
    which can take up to sys.getswitchinterval() (5 ms): mean us per call, and the ratio."""
    stack = np.stack(buffers)
    vad = webrtcvad.Vad(2)
    ops: dict[str, Callable[[], object]] = {
        "vad.frame_energy (np.dot)": lambda: frame_energy(pcm),
        "np.vdot (the same energy, for contrast)": lambda: _energy_vdot(pcm),
        "webrtcvad.is_speech": lambda: vad.is_speech(pcm.data, AUDIO_SAMPLE_RATE_HZ),
        "mixer.mix(4 buffers, gains) (np.matmul)": lambda: mix(buffers, gains),
        "mixer.mix((4, 320) stack) (sum axis 0)": lambda: mix(stack),
    }
    alone = {name: _mean_us(fn, calls) for name, fn in ops.items()}
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            for _ in range(1000):
                pass

    thread = threading.Thread(target=busy, name="bench-busy", daemon=True)
    thread.start()
    try:
        contended = {name: _mean_us(fn, calls) for name, fn in ops.items()}
    finally:
        stop.set()
        thread.join()
    return {
        name: {
            "alone_us": round(alone[name], 2),
            "with_busy_thread_us": round(contended[name], 2),
            "ratio": round(contended[name] / alone[name], 1),
        }
        for name in ops
    }
