"""The audio recorder: received audio to WAV, the mixed stream and one file per speaker on
one timeline, with rotation. See media/pipeline/recorder.py for layout and timeline rules."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from media.frames import (
    AUDIO_FRAME_SAMPLES,
    AUDIO_FRAME_SECONDS,
    AudioFrame,
    Pcm,
    UnmixedAudioBuffer,
)
from media.pipeline.events import EventSink, no_sink
from media.pipeline.recorder_base import TrackStats, _Recorder
from media.pipeline.recording_writer import RecordingWriter
from media.pipeline.wavfile import HEADER_BYTES, MAX_DATA_BYTES, Buffer, WavFile
from media.ring import Ring

logger = logging.getLogger(
    "media.pipeline.recorder"
)  # the name operators filter on, kept from before the split

RING_SECONDS = 2.0  # per audio recorder: 100 frames, 8 flush intervals of slack
FRAME_BYTES = AUDIO_FRAME_SAMPLES * 2
_SILENCE = bytes(FRAME_BYTES)
_LITTLE_ENDIAN = sys.byteorder == "little"  # WAV samples are little-endian (RIFF)

# One ring item per received frame: (index in this recording, frame.timestamp, mixed PCM,
# unmixed buffers). The hot loop builds this tuple and nothing else.
_AudioItem = tuple[int, int, Pcm, tuple[UnmixedAudioBuffer, ...]]


class _WavTrack:
    """One audio track of one take (writer thread only): the mixed stream or a speaker."""

    __slots__ = ("failed", "file", "filled", "key", "pending", "pending_silence", "stats")

    def __init__(self, key: str, stats: TrackStats) -> None:
        self.key = key
        self.stats = stats
        self.file: WavFile | None = None
        self.pending: list[Buffer] = []
        self.pending_silence = 0
        self.filled = 0  # frames in the current span, written or pending
        self.failed = False

    def add(self, pcm: Pcm) -> None:
        if not self.failed:
            self.pending.append(pcm.data if _LITTLE_ENDIAN else pcm.byteswap().data)
        self.filled += 1

    def add_silence(self, frames: int, dropped: bool = False) -> None:
        if not self.failed:
            self.pending.extend([_SILENCE] * frames)
            self.pending_silence += frames
            if dropped:
                self.stats.dropped += frames
        self.filled += frames

    def fill_to(self, frames: int) -> None:
        if self.filled < frames:
            self.add_silence(frames - self.filled)


class _AudioTake:
    __slots__ = (
        "cursor",
        "mixed",
        "next_index",
        "ring",
        "segment",
        "segment_end",
        "segment_start",
        "speakers",
        "stopped",
    )

    def __init__(self, ring: Ring[_AudioItem]) -> None:
        self.ring = ring
        self.next_index = 0  # hot loop: index of the next frame pushed
        self.stopped = False
        # Writer side: the timeline position and the span (file index) being written.
        self.cursor = 0
        self.segment = 0
        self.segment_start = 0
        self.segment_end = 0
        self.mixed: _WavTrack | None = None
        self.speakers: dict[int, _WavTrack] = {}

    def tracks(self) -> list[_WavTrack]:
        mixed = [self.mixed] if self.mixed is not None else []
        return mixed + list(self.speakers.values())


class AudioRecorder(_Recorder[_AudioTake]):
    """Records the received audio to 16 kHz mono PCM16 WAV: the mixed stream and, in unmixed
    mode, one file per speaker, all on one timeline. A tap: process() returns None.

    Files go straight into `out_dir` (the factory adds the session's directory).
    """

    name = "recorder"

    def __init__(
        self,
        out_dir: Path,
        session_id: str,
        *,
        mixed: bool = True,
        per_speaker: bool = True,
        rotate_bytes: int | None = None,
        rotate_seconds: float | None = None,
        ring_seconds: float = RING_SECONDS,
        writer: RecordingWriter | None = None,
        emit: EventSink = no_sink,
    ) -> None:
        if not (mixed or per_speaker):
            raise ValueError("a recorder needs mixed or per_speaker (or both)")
        span = MAX_DATA_BYTES // FRAME_BYTES
        if rotate_bytes is not None:
            if rotate_bytes < HEADER_BYTES + FRAME_BYTES:
                raise ValueError(f"rotate_bytes must hold one 20 ms frame, got {rotate_bytes!r}")
            span = min(span, (rotate_bytes - HEADER_BYTES) // FRAME_BYTES)
        if rotate_seconds is not None:
            if not rotate_seconds >= AUDIO_FRAME_SECONDS:
                raise ValueError(f"rotate_seconds must be at least 0.02, got {rotate_seconds!r}")
            span = min(span, round(rotate_seconds / AUDIO_FRAME_SECONDS))
        if not ring_seconds >= AUDIO_FRAME_SECONDS:
            raise ValueError(f"ring_seconds must be at least 0.02, got {ring_seconds!r}")
        super().__init__(out_dir, session_id, writer, emit)
        self.mixed = mixed
        self.per_speaker = per_speaker
        self.span_frames = span
        self._ring_frames = max(1, round(ring_seconds / AUDIO_FRAME_SECONDS))
        self._next_file_index = 1

    def process(self, frame: AudioFrame) -> None:
        """Hot loop: queue the frame if recording. One tuple, one ring push; no I/O."""
        take = self._live
        if take is not None and frame.timestamp >= self._not_before:
            index = take.next_index
            take.next_index = index + 1
            take.ring.push((index, frame.timestamp, frame.pcm, frame.unmixed))
        return None

    # Gating.
    def _new_take(self) -> _AudioTake:
        return _AudioTake(Ring(self._ring_frames))

    def _take_dropped(self, take: _AudioTake) -> int:
        return take.ring.dropped

    # Writer side.
    def _write(self, take: _AudioTake) -> None:
        items = take.ring.drain()
        if not items:
            return
        if take.segment == 0:
            self._new_span(take)
        if take.mixed is None and self.mixed:
            take.mixed = _WavTrack("mixed", self._track_stats("mixed"))
        for index, timestamp, pcm, unmixed in items:
            if self.first_frame_timestamp is None:
                self.first_frame_timestamp = timestamp
            if index > take.cursor:
                # The ring dropped these (oldest first): silence keeps every file on the clock.
                self._advance_silent(take, index - take.cursor)
            if take.cursor == take.segment_end:
                self._rotate(take)
            self._step(take, pcm, unmixed)
        for track in take.tracks():
            self._flush(take, track)

    def _step(self, take: _AudioTake, pcm: Pcm, unmixed: tuple[UnmixedAudioBuffer, ...]) -> None:
        """One frame of the timeline into every track."""
        position = take.cursor - take.segment_start
        if take.mixed is not None:
            take.mixed.add(pcm)
        if self.per_speaker and (unmixed or take.speakers):
            speakers = take.speakers
            for buffer in unmixed:
                track = speakers.get(buffer.msi)
                if track is None:
                    key = f"speaker-{buffer.msi:x}"
                    track = speakers[buffer.msi] = _WavTrack(key, self._track_stats(key))
                if track.filled > position:
                    continue  # the same MSI twice in one frame: keep the first
                track.fill_to(position)  # a newcomer: silence from the start of the span
                track.add(buffer.pcm)
            for track in speakers.values():
                track.fill_to(position + 1)  # absent from this frame
        take.cursor += 1

    def _advance_silent(self, take: _AudioTake, frames: int) -> None:
        while frames:
            if take.cursor == take.segment_end:
                self._rotate(take)
            count = min(frames, take.segment_end - take.cursor)
            for track in take.tracks():
                track.add_silence(count, dropped=True)
            take.cursor += count
            frames -= count

    def _new_span(self, take: _AudioTake) -> None:
        take.segment = self._next_file_index
        self._next_file_index += 1
        take.segment_start = take.cursor
        take.segment_end = take.cursor + self.span_frames

    def _rotate(self, take: _AudioTake) -> None:
        """Close every track's file for this span; the next frame opens the next index."""
        for track in take.tracks():
            self._flush(take, track)
            self._close_file(track)
            track.filled = 0
        self._new_span(take)

    def _flush(self, take: _AudioTake, track: _WavTrack) -> None:
        """Pending frames to the file (opened on first use), then the header's sizes."""
        if track.failed or not track.pending:
            return
        stats = track.stats
        pending, silence = track.pending, track.pending_silence
        track.pending, track.pending_silence = [], 0
        try:
            wav = track.file
            if wav is None:
                self._open_dir()
                path = self.out_dir / f"{track.key}-{take.segment:04d}.wav"
                wav = track.file = WavFile(path)
                with self._lock:
                    stats.files.append(path)
                stats.bytes += HEADER_BYTES
                # Once per file (rotation opens the next): where a recording is, as it starts.
                logger.info("%s(%s) writing %s", self.name, self.session_id, path)
            before = wav.size
            try:
                wav.append(pending, len(pending) * FRAME_BYTES)
            finally:
                stats.bytes += wav.size - before
            wav.patch()
        except OSError as exc:
            track.failed = True
            if track.file is not None:
                track.file.abandon()  # its header still covers every whole sample written
                track.file = None
            self._track_failed(track.key, exc)
            return
        stats.frames += len(pending)
        stats.silence_frames += silence

    def _close_file(self, track: _WavTrack) -> None:
        wav, track.file = track.file, None
        if wav is None:
            return
        try:
            wav.close()
        except OSError as exc:
            track.failed = True
            self._track_failed(track.key, exc)

    def _finish(self, take: _AudioTake) -> None:
        for track in take.tracks():
            self._flush(take, track)
            self._close_file(track)

    def _finish_quietly(self, take: _AudioTake) -> None:
        for track in take.tracks():
            if track.file is not None:
                track.file.abandon()
                track.file = None
