"""Example processors: starting points for your own (docs/processors.md).

- GainProcessor: says back what it hears, louder or softer (PCM arithmetic done right: widen,
  scale, round, saturate, narrow).
- ToneGenerator: says a steady tone (a processor that makes audio rather than transforming it).
- TranscriptionHook: hands each speech segment's audio to your code on a worker thread (the
  pattern for anything slow: speech-to-text, a model, a network call).

Each has a factory taking a ProcessorContext; options arrive as strings and a bad one raises
ValueError naming the option and its value. Enable them with BOT_PROCESSORS, e.g.
`BOT_PROCESSORS="media.pipeline.examples:gain_factory"` and
`BOT_PROCESSOR_OPTIONS="gain_factory.gain_db=-12"`.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from media.clock import TICKS_PER_SECOND
from media.frames import AUDIO_FRAME_MS, AUDIO_FRAME_SAMPLES, AUDIO_SAMPLE_RATE_HZ, AudioFrame, Pcm
from media.pipeline.events import MIXED, PipelineEvent, SpeechStarted, SpeechStopped, frame_time
from media.pipeline.mixer import saturate
from media.pipeline.player import check_amplitude, check_frequency, check_tone, render_tone
from media.pipeline.plugins import import_path
from media.pipeline.processor import ProcessorContext
from media.pipeline.timeline import display_name, msi_hex
from media.ring import Ring

logger = logging.getLogger(__name__)

T = TypeVar("T")

FRAME_TICKS = AUDIO_FRAME_MS * TICKS_PER_SECOND // 1000
MIN_GAIN_DB, MAX_GAIN_DB = -100.0, 40.0


def _float_option(ctx: ProcessorContext, key: str, default: str) -> float:
    value = ctx.option(key, default)
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"option {key}={value!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"option {key}={value!r} is not a finite number")
    return number


def _checked(ctx: ProcessorContext, key: str, default: str, check: Callable[[], T]) -> T:
    """Run a check or constructor, re-raising its ValueError with the option's raw value."""
    try:
        return check()
    except ValueError as exc:
        raise ValueError(f"option {key}={ctx.option(key, default)!r}: {exc}") from None


class GainProcessor:
    """Says back what it hears at `gain_db` (negative: softer). Saturating: a loud input at a
    positive gain clips at full scale instead of wrapping round to the opposite sign."""

    name = "gain"

    def __init__(self, gain_db: float) -> None:
        if not MIN_GAIN_DB <= gain_db <= MAX_GAIN_DB:
            raise ValueError(
                f"gain_db must be in [{MIN_GAIN_DB:g}, {MAX_GAIN_DB:g}], got {gain_db}"
            )
        self.gain_db = gain_db
        # A numpy float32 scalar keeps the product float32 (a Python float would make it
        # float64: twice the memory traffic for no audible difference).
        self._gain = np.float32(10 ** (gain_db / 20))

    def process(self, frame: AudioFrame) -> AudioFrame:
        # The received frame is read-only (every processor sees the same one): compute a new one.
        scaled = frame.pcm * self._gain
        return AudioFrame(saturate(scaled), frame.timestamp, sequence=frame.sequence)


def gain_factory(ctx: ProcessorContext) -> GainProcessor:
    """Says back what it hears, louder or softer by option `gain_db` (default -6)."""
    gain_db = _float_option(ctx, "gain_db", "-6")
    return _checked(ctx, "gain_db", "-6", lambda: GainProcessor(gain_db))


class ToneGenerator:
    """Says a sine tone, one 20 ms frame for each frame it receives, phase-continuous (no click
    between frames). Heard as a steady beep while anyone is sending audio."""

    name = "tone"

    def __init__(self, freq_hz: float = 440.0, amplitude: float = 0.2) -> None:
        check_tone(freq_hz, amplitude)
        self.freq_hz = freq_hz
        self.amplitude = amplitude
        self._sample = 0  # the tone's position: where the next frame starts

    def process(self, frame: AudioFrame) -> AudioFrame:
        pcm = np.empty(AUDIO_FRAME_SAMPLES, dtype=np.int16)
        render_tone(pcm, self.freq_hz, self.amplitude, self._sample)
        self._sample += AUDIO_FRAME_SAMPLES
        return AudioFrame(pcm, frame.timestamp, sequence=frame.sequence)


def tone_factory(ctx: ProcessorContext) -> ToneGenerator:
    """Says a steady sine tone while it hears anything (options `freq_hz`, `amplitude`)."""
    freq_hz = _float_option(ctx, "freq_hz", "440")
    amplitude = _float_option(ctx, "amplitude", "0.2")
    _checked(ctx, "freq_hz", "440", lambda: check_frequency(freq_hz))
    _checked(ctx, "amplitude", "0.2", lambda: check_amplitude(amplitude))
    return ToneGenerator(freq_hz, amplitude)


@dataclass(frozen=True, slots=True)
class SpeechSegment:
    """One speaker's utterance, as handed to a TranscriptionHook callback.

    `pcm` is 16 kHz mono int16: the frames received in [start, end) (100 ns ticks on the
    events' time base), in order; frames lost in transit are missing, not zero-filled. A long
    utterance comes in pieces of at most max_segment_seconds: `final` is False on all but
    the last.
    """

    session_id: str
    msi: int  # events.MIXED for the mixed stream as a whole
    name: str  # the roster's display name when the segment was handed over, else "MSI 0x..."
    start: int
    end: int
    pcm: Pcm
    final: bool = True

    @property
    def seconds(self) -> float:
        return len(self.pcm) / AUDIO_SAMPLE_RATE_HZ


SegmentCallback = Callable[[SpeechSegment], object]


def log_segment(segment: SpeechSegment) -> None:
    """The default callback: one log line per segment (replace it with your speech-to-text)."""
    logger.info(
        "TranscriptionHook %s: %s (MSI %s) spoke %.2f s%s",
        segment.session_id,
        segment.name,
        msi_hex(segment.msi),
        segment.seconds,
        "" if segment.final else " (continues)",
    )


class _Track:
    """One stream's recent frames: a ring of (capture time, 320 samples), preallocated."""

    __slots__ = ("count", "last", "next", "pcm", "times")

    def __init__(self, frames: int) -> None:
        self.pcm = np.zeros((frames, AUDIO_FRAME_SAMPLES), dtype=np.int16)
        self.times = np.zeros(frames, dtype=np.int64)
        self.next = 0
        self.count = 0
        self.last = 0  # the newest frame's time

    def write(self, pcm: Pcm, t: int) -> None:
        i = self.next
        self.pcm[i] = pcm
        self.times[i] = t
        self.next = (i + 1) % len(self.times)
        if self.count < len(self.times):
            self.count += 1
        self.last = t

    def slice(self, start: int, end: int) -> Pcm:
        """A copy of the frames that started in [start, end), in time order."""
        times = self.times[: self.count]
        index = np.flatnonzero((times >= start) & (times < end))
        if len(index) > 1:
            # Ring order is arrival order; sorting by time also puts a wrapped ring right.
            index = index[np.argsort(times[index], kind="stable")]
        return self.pcm[index].reshape(-1)

    def reset(self) -> None:
        self.next = self.count = self.last = 0


_Pending = tuple[int, int, int, Pcm, bool]  # msi, start, end, pcm, final


class TranscriptionHook:
    """Hands each speech segment's audio to `callback(segment)` off the hot loop.

    On the hot loop, process() keeps each stream's recent audio: for an unmixed frame each
    buffer under its MSI; for a mixed frame the mix under events.MIXED and under every MSI in
    the frame's active speakers (the mix is all there is of them). on_event(SpeechStopped)
    slices [start, end) out of that speaker's audio and queues it; a worker thread calls the
    callback. An utterance longer than max_segment_seconds is handed over in pieces as it
    goes, so the history only needs to hold one piece plus the VAD's stop delay.

    Bounded: at most `max_speakers` streams are kept (the one heard least recently gives way),
    each with max_segment_seconds + HISTORY_MARGIN_S of audio (~1.1 MB at 30 s); the queue to
    the worker holds `queue_size` segments and drops the oldest when the callback falls behind
    (counted in `dropped`). A callback that raises is counted in `errors` and logged once; it
    never reaches the hot loop.
    """

    name = "transcription"
    HISTORY_MARGIN_S = 5.0  # covers the VAD's stop hysteresis (SpeechStopped comes late)

    def __init__(
        self,
        callback: SegmentCallback,
        session_id: str = "",
        names: Callable[[], Mapping[int, str]] = dict,
        max_segment_seconds: float = 30.0,
        queue_size: int = 32,
        max_speakers: int = 16,
        join_timeout: float = 5.0,
    ) -> None:
        if not 0.1 <= max_segment_seconds <= 600:
            raise ValueError(
                f"max_segment_seconds must be in [0.1, 600], got {max_segment_seconds}"
            )
        if max_speakers < 1:
            raise ValueError(f"max_speakers must be at least 1, got {max_speakers}")
        self.session_id = session_id
        self._callback = callback
        self._names = names
        self._cap = round(max_segment_seconds * TICKS_PER_SECOND)
        history_s = max_segment_seconds + self.HISTORY_MARGIN_S
        self._frames = math.ceil(history_s * 1000 / AUDIO_FRAME_MS)
        self._max_speakers = max_speakers
        self._tracks: dict[int, _Track] = {}
        self._open: dict[int, int] = {}  # msi -> start of the part not handed over yet
        self._join_timeout = join_timeout
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._queue: Ring[_Pending] = Ring(queue_size, on_push=self._wake.set)
        self.delivered = 0
        self.errors = 0
        self._closed = False
        self._worker = threading.Thread(
            target=self._run, name=f"transcription-{session_id}", daemon=True
        )
        self._worker.start()

    @property
    def dropped(self) -> int:
        return self._queue.dropped

    # Hot loop ------------------------------------------------------------------------------

    def process(self, frame: AudioFrame) -> None:
        t = frame_time(frame.timestamp, frame.original_sender_timestamp)
        if frame.unmixed:
            for buffer in frame.unmixed:
                self._track(buffer.msi).write(
                    buffer.pcm, frame_time(t, buffer.original_sender_timestamp)
                )
        else:
            self._track(MIXED).write(frame.pcm, t)
            for msi in frame.active_speakers:
                self._track(msi).write(frame.pcm, t)
        if self._open:
            self._hand_over_long()

    def on_event(self, event: PipelineEvent) -> None:
        if isinstance(event, SpeechStarted):
            self._open[event.msi] = event.start
        elif isinstance(event, SpeechStopped):
            # If pieces went already, only the rest is left; never more than one piece.
            start = max(event.start, self._open.pop(event.msi, event.start), event.end - self._cap)
            self._hand_over(event.msi, start, event.end, final=True)

    def _track(self, msi: int) -> _Track:
        track = self._tracks.get(msi)
        if track is not None:
            return track
        if len(self._tracks) < self._max_speakers:
            track = self._tracks[msi] = _Track(self._frames)
            return track
        # Full: reuse the buffer of the stream heard least recently, preferring one that is
        # not mid-utterance (its pending piece would be lost).
        victim = min(self._tracks, key=lambda m: (m in self._open, self._tracks[m].last))
        track = self._tracks.pop(victim)
        self._open.pop(victim, None)
        track.reset()
        self._tracks[msi] = track
        return track

    def _hand_over_long(self) -> None:
        # Values change during the loop, keys do not: iterating the dict itself is safe, and
        # allocates nothing per frame.
        for msi, start in self._open.items():
            track = self._tracks.get(msi)
            if track is None:
                continue
            end = track.last + FRAME_TICKS
            if end - start >= self._cap:
                self._hand_over(msi, start, end, final=False)
                self._open[msi] = end

    def _hand_over(self, msi: int, start: int, end: int, final: bool) -> None:
        track = self._tracks.get(msi)
        if track is None or end <= start:
            return
        pcm = track.slice(start, end)
        if len(pcm):
            self._queue.push((msi, start, end, pcm, final))

    # Worker thread -------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            # Clear before popping: a push after the pop sets the event again, so no wake-up
            # is lost between an empty pop and the wait.
            self._wake.clear()
            item = self._queue.pop()
            if item is None:
                if self._stopping.is_set():
                    return
                self._wake.wait()
                continue
            msi, start, end, pcm, final = item
            try:
                name = display_name(msi, self._names())
                self._callback(SpeechSegment(self.session_id, msi, name, start, end, pcm, final))
                self.delivered += 1
            except Exception:
                self.errors += 1
                if self.errors == 1:
                    logger.exception(
                        "TranscriptionHook x %s: the callback raised (logged once; counted after)",
                        self.session_id,
                    )

    def close(self) -> None:
        """Hand over what is still open, let the worker finish the queue, and join it (up to
        join_timeout: a callback stuck in I/O must not hold up the end of the session)."""
        if self._closed:
            return
        self._closed = True
        for msi, start in list(self._open.items()):
            track = self._tracks.get(msi)
            if track is not None:
                self._hand_over(msi, start, track.last + FRAME_TICKS, final=True)
        self._open.clear()
        self._stopping.set()
        self._wake.set()
        self._worker.join(self._join_timeout)
        if self._worker.is_alive():
            logger.warning(
                "TranscriptionHook x %s: the callback is still busy after %.1f s; %d segments "
                "left unhandled",
                self.session_id,
                self._join_timeout,
                len(self._queue),
            )


def resolve_callback(path: str) -> SegmentCallback:
    """`package.module:attribute` or `package.module.attribute` to the object it names."""
    try:
        target = import_path(path)
    except ValueError as exc:
        raise ValueError(f"option callback={path!r}: {exc}") from None
    if not callable(target):
        raise ValueError(f"option callback={path!r} is not callable")
    callback: SegmentCallback = target
    return callback


def transcription_factory(ctx: ProcessorContext) -> TranscriptionHook:
    """Hands each speech segment's audio to a callback, e.g. a speech-to-text client.

    Options: `callback` (dotted path; default: log one line per segment) and
    `max_segment_seconds` (default 30)."""
    path = ctx.option("callback", "").strip()
    callback = resolve_callback(path) if path else log_segment
    seconds = _float_option(ctx, "max_segment_seconds", "30")
    return _checked(
        ctx,
        "max_segment_seconds",
        "30",
        lambda: TranscriptionHook(callback, ctx.session_id, ctx.names, max_segment_seconds=seconds),
    )
