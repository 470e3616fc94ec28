"""How well did the participant hear itself back: correlation and delay of an echo.

Recorded frames are laid on the participant's timeline the way a receiver with a fixed playout
delay would play them: frame j at offset + j * 20 ms, where offset is the median over frames of
(time - j * 20 ms), the time being when the participant handed a frame to its sender or when one
arrived back. Both sides are placed alike, so the lag is the true hand-over-to-arrival delay.
A recording with silences in it (unmixed audio sends a speaker only while they talk, and the bot
echoes only what it got) is laid talkspurt by talkspurt: a pause of more than
SPURT_GAP_SECONDS starts a new spurt with its own offset, as a receiver re-anchors its playout
delay at each talkspurt (RFC 3551 section 4.1, the marker bit).
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
SPURT_GAP_SECONDS = 0.1  # five frames: more than jitter, less than a pause between words


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


def playout_offset(rec: Recording, start: int = 0, end: int | None = None) -> float:
    """When frame `start` plays, for a receiver that plays frame j at offset + j * 20 ms (the
    frames start..end, one talkspurt; the whole recording by default)."""
    times = np.asarray(rec.times[start:end])
    index = np.arange(times.shape[0])
    return float(np.median(times - index * FRAME_SECONDS))


def talkspurts(rec: Recording) -> list[tuple[int, int]]:
    """The recording's talkspurts as [start, end) frame ranges: split where the time from one
    frame to the next exceeds SPURT_GAP_SECONDS."""
    if not rec.times:
        return []
    breaks = (np.flatnonzero(np.diff(np.asarray(rec.times)) > SPURT_GAP_SECONDS) + 1).tolist()
    edges = [0, *breaks, len(rec.times)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def playout(rec: Recording, t0: float) -> tuple[npt.NDArray[np.float64], int]:
    """The recording as one signal on a timeline starting at t0, each talkspurt at its own
    offset (silence between them); also its first sample index. Raises ValueError when the
    recording starts before t0."""
    if not rec.frames:
        return np.zeros(0), 0
    placed = []
    for start, end in talkspurts(rec):
        at = round((playout_offset(rec, start, end) - t0) * RATE_HZ)
        if at < 0:
            raise ValueError("t0 is after the recording starts")
        placed.append((at, np.concatenate(rec.frames[start:end]).astype(np.float64)))
    out = np.zeros(max(first + len(pcm) for first, pcm in placed))
    for first, pcm in placed:  # a late spurt anchor may overlap the previous spurt's tail
        out[first : first + len(pcm)] = pcm
    return out, placed[0][0]


def first_playout(rec: Recording) -> float:
    """When the recording's first frame plays (its first talkspurt's offset)."""
    start, end = talkspurts(rec)[0]
    return playout_offset(rec, start, end)


def echo_report(sent: Recording, heard: Recording) -> EchoReport:
    if not sent.frames or not heard.frames:
        return EchoReport(0.0, float("nan"), len(sent), len(heard))
    # The timeline starts at whichever plays first: the bot may send before the participant
    # first talks (a spurt of someone else's voice, or its own audio).
    t0 = min(first_playout(sent), first_playout(heard))
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
