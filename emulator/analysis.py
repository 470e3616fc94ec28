"""How well did the participant hear itself back: correlation and delay of an echo.

Recorded frames are laid on the participant's timeline the way a receiver with a fixed playout
delay would play them: frame j at offset + j * 20 ms, where offset is the median over frames of
(time - j * 20 ms), the time being when the participant handed a frame to its sender or when one
arrived back. Both sides are placed alike, so the lag is the true hand-over-to-arrival delay.
The echo delay is the lag of the cross-correlation peak between what was sent and what was
heard; the correlation is normalised over the span that was heard.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import av
import numpy as np
import numpy.typing as npt

RATE_HZ = 16_000
FRAME_SECONDS = 0.020
FRAME_SAMPLES = 320
MAX_LAG_SECONDS = 1.0


@dataclass
class Recording:
    """Frames with the monotonic time each was sent (or arrived). With max_frames, only about
    the last max_frames are kept (trimmed in batches of a tenth, so adding stays cheap)."""

    times: list[float] = field(default_factory=list)
    frames: list[npt.NDArray[np.int16]] = field(default_factory=list)
    max_frames: int | None = None

    def add(self, t: float, pcm: npt.NDArray[np.int16]) -> None:
        self.times.append(t)
        self.frames.append(pcm)
        if self.max_frames is not None and len(self.frames) > self.max_frames * 11 // 10:
            del self.times[: -self.max_frames]
            del self.frames[: -self.max_frames]

    def __len__(self) -> int:
        return len(self.frames)


class Listener:
    """Records received audio frames (any rate and layout) as 20 ms 16 kHz mono frames.

    Each received 20 ms frame yields one recorded frame stamped with its own arrival: the
    resampler's few samples of history are padded once up front, or every frame would complete
    only when the next one arrives and the measured delay would read 20 ms long.
    """

    def __init__(self, recording: Recording) -> None:
        self.recording = recording
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE_HZ)
        self._pending = np.empty(0, dtype=np.int16)
        self._started = False

    def add(self, frame: av.AudioFrame, arrival: float) -> None:
        chunks = [out.to_ndarray().reshape(-1) for out in self._resampler.resample(frame)]
        pending = np.concatenate([self._pending, *chunks]).astype(np.int16, copy=False)
        if not self._started and pending.shape[0]:
            self._started = True
            short = -pending.shape[0] % FRAME_SAMPLES
            pending = np.concatenate([np.zeros(short, np.int16), pending])
        while pending.shape[0] >= FRAME_SAMPLES:
            self.recording.add(arrival, pending[:FRAME_SAMPLES].copy())
            pending = pending[FRAME_SAMPLES:]
        self._pending = pending


@dataclass(frozen=True)
class EchoReport:
    correlation: float
    delay_ms: float
    frames_sent: int
    frames_heard: int


def playout_offset(rec: Recording) -> float:
    """When frame 0 plays, for a receiver that plays frame j at offset + j * 20 ms."""
    index = np.arange(len(rec.times))
    return float(np.median(np.asarray(rec.times) - index * FRAME_SECONDS))


def playout(rec: Recording, t0: float) -> tuple[npt.NDArray[np.float64], int]:
    """The recording as one signal on a timeline starting at t0; also its first sample index."""
    if not rec.frames:
        return np.zeros(0), 0
    start = round((playout_offset(rec) - t0) * RATE_HZ)
    if start < 0:
        raise ValueError("t0 is after the recording starts")
    signal = np.concatenate(rec.frames).astype(np.float64)
    out = np.zeros(start + signal.shape[0])
    out[start:] = signal
    return out, start


def echo_report(sent: Recording, heard: Recording) -> EchoReport:
    if not sent.frames or not heard.frames:
        return EchoReport(0.0, float("nan"), len(sent), len(heard))
    t0 = playout_offset(sent)
    s, _ = playout(sent, t0)
    h, h_start = playout(heard, t0)
    size = 1 << int(np.ceil(np.log2(s.shape[0] + h.shape[0])))
    xcorr = np.fft.irfft(np.fft.rfft(h, size) * np.conj(np.fft.rfft(s, size)), size)
    max_lag = min(int(MAX_LAG_SECONDS * RATE_HZ), size - 1)
    lag = int(np.argmax(xcorr[: max_lag + 1]))
    # Normalise over the heard span, against what was sent `lag` samples earlier.
    lo = max(h_start, lag)
    hi = min(h.shape[0], s.shape[0] + lag)
    a, b = h[lo:hi], s[lo - lag : hi - lag]
    denom = float(np.sqrt(np.dot(a, a) * np.dot(b, b)))
    correlation = float(np.dot(a, b) / denom) if denom > 0 else 0.0
    return EchoReport(correlation, lag * 1000.0 / RATE_HZ, len(sent), len(heard))


def frame_delays(sent: Recording, received: Recording) -> list[float]:
    """Per-frame delay from hand-over to arrival, in seconds.

    The received frames are in order (a jitter buffer fills losses), so one sample offset
    aligns them with what was sent: r[n] ~ s[n + offset], found by cross-correlation in both
    directions (codec and resampler history make received audio lag, a negative offset). A
    received frame is then dated from the hand-over of the last sent sample it contains.
    """
    if not sent.frames or not received.frames:
        return []
    s = np.concatenate(sent.frames).astype(np.float64)
    r = np.concatenate(received.frames).astype(np.float64)
    size = 1 << int(np.ceil(np.log2(s.shape[0] + r.shape[0])))
    xcorr = np.fft.irfft(np.fft.rfft(s, size) * np.conj(np.fft.rfft(r, size)), size)
    max_lag = min(int(MAX_LAG_SECONDS * RATE_HZ), size // 2 - 1)
    lags = np.concatenate([np.arange(0, max_lag + 1), np.arange(-max_lag, 0)])
    window = np.concatenate([xcorr[: max_lag + 1], xcorr[size - max_lag :]])
    offset = int(lags[int(np.argmax(window))])
    delays = []
    for j, arrival in enumerate(received.times):
        last = (j * FRAME_SAMPLES + offset + FRAME_SAMPLES - 1) // FRAME_SAMPLES
        if 0 <= last < len(sent.times):
            delays.append(arrival - sent.times[last])
    return delays
