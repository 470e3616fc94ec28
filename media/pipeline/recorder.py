"""Crash-safe recorders: taps that write what the bot hears to WAV (audio) and Y4M (video).

Threads:

- Hot loop: `AudioRecorder.process()` and `VideoRecorder.process_video()` push one small tuple
  (audio) or the frame itself (video) into a bounded `Ring` that drops the oldest item and counts
  it. No file I/O, no logging, no allocation beyond that tuple: well under a microsecond.
- One `RecordingWriter` thread serves every recorder in the process (a benchmark runs 400
  streams). Every `flush_seconds` (0.25 s) it drains each recorder's rings, writes with
  unbuffered OS writes (writev) and re-patches each WAV header, so a SIGKILL loses what sat in
  the rings plus at most one unpatched batch: about 0.5 s with the defaults. The process-wide
  writer starts when the first recorder starts and stops when the last one closes; tests pass
  their own `RecordingWriter` and call `drain()` by hand.
- Control path: `start()` and `stop()` are thread-safe and do no I/O. `close()`, called on a
  worker thread when the session ends, stops, writes out and finalizes every file and releases
  the shared writer (it blocks for the file work).

Recording is gated. A recorder is idle until `start()`, and frames that arrive while it is idle
are ignored. The bot calls `start()` only after Graph acknowledged `updateRecordingStatus` with
`recording`: the API terms require that status before media is recorded or persisted
(https://learn.microsoft.com/en-us/graph/api/call-updaterecordingstatus). Calling `start()`
again after `stop()` opens new files.

Layout. The factories put a session's files in `<dir>/<session id>/`, where `dir` is the `dir`
option or else `ctx.out_dir`. The whole session id is used because a prefix of a UUID can clash
between sessions, and files are never overwritten (O_EXCL), so a clash would lose a recording.

    mixed-0001.wav          the mixed stream: Graph's mix in mixed mode, the speakers' sum in
                            unmixed mode
    speaker-2a11-0001.wav   one per speaker, by MSI in hex (unmixed mode only)
    video-3-0001.y4m        one per video socket

Audio timeline. WAV files with the same index cover the same span, so sample n of
`mixed-0003.wav` and of `speaker-2a11-0003.wav` is the same instant. A speaker's file is padded
with silence from the start of the span (the start of the recording for index 0001) up to their
first frame, and for every frame they are absent from. Frames lost to ring overflow (a stalled
writer) are written as silence in every file and counted as dropped, so files keep wall-clock
length. Per-speaker files need unmixed audio (`frame.unmixed`): in mixed mode only the mixed file
is written. Once a speaker has been heard, their track gets a file, silent or not, for every span
until the recording stops.

Rotation. `rotate_bytes` caps a file's size, `rotate_seconds` its duration in audio time
(frames written, so rotation is deterministic). All audio tracks rotate at the same frame, and no
WAV file grows past 2 GiB (wavfile.MAX_DATA_BYTES) whatever the options say. Video rotates per
socket, by size, by the frames' timestamps, and whenever the resolution changes (a Y4M file has
one size).

Failures. An OSError on a track (disk full, permissions, a name that exists) closes that track's
file with a header that covers what was written, stops writing that track for the rest of the
recording and emits `RecorderFailed(session_id, name, detail)` once; other tracks go on. Nothing
is raised into the hot loop.

Frames are recorded by reference, not copied: the pipeline delivers fresh arrays for each frame,
and processors must not change a frame's arrays in place.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from media.clock import TICKS_PER_SECOND, Clock, MonotonicClock
from media.frames import (
    AUDIO_FRAME_SAMPLES,
    AUDIO_FRAME_SECONDS,
    AudioFrame,
    Pcm,
    UnmixedAudioBuffer,
    VideoFrame,
)
from media.pipeline.events import EventSink, RecorderFailed, no_sink
from media.pipeline.processor import ProcessorContext
from media.pipeline.wavfile import HEADER_BYTES, MAX_DATA_BYTES, Buffer, WavFile
from media.pipeline.y4m import Y4mFile, frame_bytes
from media.ring import Ring

logger = logging.getLogger(__name__)

FLUSH_SECONDS = 0.25
RING_SECONDS = 2.0  # per audio recorder: 100 frames, 8 flush intervals of slack
VIDEO_RING_FRAMES = 16  # per video socket: about 1 s at 15 fps
VIDEO_FPS = 15
FRAME_BYTES = AUDIO_FRAME_SAMPLES * 2
_SILENCE = bytes(FRAME_BYTES)
_LITTLE_ENDIAN = sys.byteorder == "little"  # WAV samples are little-endian (RIFF)

# One ring item per received frame: (index in this recording, frame.timestamp, mixed PCM,
# unmixed buffers). The hot loop builds this tuple and nothing else.
_AudioItem = tuple[int, int, Pcm, tuple[UnmixedAudioBuffer, ...]]


@dataclass(slots=True)
class TrackStats:
    """One track's counters (a track: the mixed stream, a speaker, a video socket)."""

    frames: int = 0  # frames written, audio silence included
    silence_frames: int = 0  # audio: padding where the speaker was absent, and dropped frames
    dropped: int = 0  # frames lost to ring overflow (the writer fell behind)
    bytes: int = 0  # bytes written, headers included
    files: list[Path] = field(default_factory=list)
    failed: str | None = None  # the last failure's detail


# -- the writer thread ---------------------------------------------------------------------------


class RecordingWriter:
    """One thread that writes for many recorders, every `flush_seconds` on `clock`.

    `drain()` is one pass over every registered recorder; tests call it directly instead of
    starting the thread. Drains are serialized, so a drain and a recorder's `close()` never
    write the same file at once.
    """

    def __init__(self, clock: Clock | None = None, flush_seconds: float = FLUSH_SECONDS) -> None:
        if not flush_seconds > 0:
            raise ValueError(f"flush_seconds must be positive, got {flush_seconds!r}")
        self.clock: Clock = clock if clock is not None else MonotonicClock()
        self.flush_seconds = flush_seconds
        self.flushes = 0
        self._recorders: tuple[_Recorder[Any], ...] = ()  # replaced, never mutated
        self._registry_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._crashed = False

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="recording-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread after one last drain. Recorders still registered stay open."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join(timeout)
        if thread.is_alive():
            logger.error("RecordingWriter x thread still writing after %.1f s", timeout)

    def add(self, recorder: _Recorder[Any]) -> None:
        with self._registry_lock:
            if recorder not in self._recorders:
                self._recorders = (*self._recorders, recorder)

    def remove(self, recorder: _Recorder[Any]) -> None:
        with self._registry_lock:
            self._recorders = tuple(r for r in self._recorders if r is not recorder)

    @property
    def recorder_count(self) -> int:
        return len(self._recorders)

    def drain(self) -> None:
        """Write out everything every recorder has queued."""
        with self._write_lock:
            for recorder in self._recorders:
                recorder._service()
            self.flushes += 1

    def service(self, recorder: _Recorder[Any]) -> None:
        """Write out one recorder's queue now, on the caller's thread (its close())."""
        with self._write_lock:
            recorder._service()

    def _run(self) -> None:
        clock = self.clock
        deadline = clock.now() + self.flush_seconds
        while True:
            stopped = clock.wait_until(deadline, self._stop)
            try:
                self.drain()
            except Exception:  # recorders catch their own; this thread must outlive any bug
                if not self._crashed:
                    self._crashed = True
                    logger.exception("RecordingWriter x drain failed (logged once)")
            if stopped:
                return
            deadline += self.flush_seconds
            now = clock.now()
            if now > deadline:
                # Behind (a slow disk): drain once more now, then keep the interval from here
                # rather than running drains back to back to catch up.
                deadline = now


_shared_lock = threading.Lock()
_shared_writer: RecordingWriter | None = None
_shared_users = 0


def acquire_shared_writer() -> RecordingWriter:
    """The process-wide writer, started on first use; pair with release_shared_writer()."""
    global _shared_writer, _shared_users
    with _shared_lock:
        if _shared_writer is None:
            _shared_writer = RecordingWriter()
            _shared_writer.start()
            logger.debug("RecordingWriter started (shared)")
        _shared_users += 1
        return _shared_writer


def release_shared_writer() -> None:
    """One user fewer; the last one out stops the thread."""
    global _shared_writer, _shared_users
    with _shared_lock:
        _shared_users -= 1
        if _shared_users > 0 or _shared_writer is None:
            return
        writer, _shared_writer = _shared_writer, None
    writer.stop()
    logger.debug("RecordingWriter stopped (shared, no recorders left)")


def shared_writer() -> RecordingWriter | None:
    """The shared writer if one is running (for tests and status pages)."""
    return _shared_writer


# -- what audio and video recorders share --------------------------------------------------------


class _Take(Protocol):
    """One recording, from start() to stop(). The hot loop sees it through `_live`."""

    stopped: bool


TakeT = TypeVar("TakeT", bound=_Take)


class _Recorder(Generic[TakeT]):
    """Gating, writer registration and failure reporting, for audio and video alike."""

    name: str

    def __init__(
        self, out_dir: Path, session_id: str, writer: RecordingWriter | None, emit: EventSink
    ) -> None:
        self.out_dir = out_dir
        self.session_id = session_id
        self._given_writer = writer
        self._writer: RecordingWriter | None = None
        self._emit = emit
        self._lock = threading.Lock()
        self._closed = False
        self._live: TakeT | None = None  # read by the hot loop without the lock
        self._takes: list[TakeT] = []  # the live one and stopped ones not yet finalized
        self._dropped_before = 0  # frames dropped by finalized takes
        self._stats: dict[str, TrackStats] = {}
        self._broken = False
        self.recording = False  # between start() and stop() (processor.py Recording)
        self.first_frame_timestamp: int | None = None  # the first recorded frame's timestamp
        self._not_before = 0  # frames that arrived earlier (platform ticks) are not recorded

    @property
    def dropped(self) -> int:
        """Frames lost to ring overflow, over the recorder's life."""
        with self._lock:
            takes = list(self._takes)
            before = self._dropped_before
        return before + sum(self._take_dropped(t) for t in takes)

    def track_stats(self) -> dict[str, TrackStats]:
        """A copy of every track's counters, by file stem ("mixed", "speaker-2a11", "video-3")."""
        with self._lock:
            return {key: replace(s, files=list(s.files)) for key, s in self._stats.items()}

    def start(self, not_before: int = 0) -> None:
        """Begin recording: frames from now on are written, except those that arrived before
        `not_before` (platform ticks; the bot passes when Graph acknowledged the recording
        status, so audio that sat in a ring across the acknowledgement is not kept).
        Thread-safe; no I/O."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.name}({self.session_id}) is closed")
            if self._live is not None:
                return
            if self._writer is None:
                self._writer = self._given_writer or acquire_shared_writer()
                self._writer.add(self)
            take = self._new_take()
            self._takes.append(take)
            self._not_before = not_before
            self._live = take
            self.recording = True
        logger.info("%s(%s) recording to %s", self.name, self.session_id, self.out_dir)

    def stop(self) -> None:
        """Stop recording; the writer finalizes the files. Thread-safe; no I/O."""
        with self._lock:
            was = self._stop_locked()
        if was:
            logger.info("%s(%s) stopped", self.name, self.session_id)

    def close(self) -> None:
        """Stop, write out and finalize every file, release the writer. Blocks for the file
        work, so call it on a worker thread, never on the hot loop. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop_locked()
            writer, self._writer = self._writer, None
        if writer is None:
            return
        try:
            writer.service(self)
        finally:
            writer.remove(self)
            if self._given_writer is None:
                release_shared_writer()
        logger.info("%s(%s) closed: %s", self.name, self.session_id, self._summary())

    def _stop_locked(self) -> bool:
        take = self._live
        if take is None:
            return False
        self._live = None
        self.recording = False
        take.stopped = True
        return True

    def _service(self) -> None:
        """Writer side: write what the takes queued, finalize stopped takes. Never raises."""
        with self._lock:
            takes = list(self._takes)
        for take in takes:
            # Read before draining, so a take's files are finalized only after a drain that
            # began after stop(): every frame pushed before stop() is in them.
            stopped = take.stopped
            try:
                self._write(take)
                if stopped:
                    self._finish(take)
            except Exception as exc:  # a bug of ours, not a disk error: say so once
                if not self._broken:
                    self._broken = True
                    logger.exception("%s(%s) x writing failed", self.name, self.session_id)
                    self._report(f"internal error: {exc!r}")
                if stopped:
                    self._finish_quietly(take)
            if stopped:
                with self._lock:
                    self._takes.remove(take)
                    self._dropped_before += self._take_dropped(take)

    def _track_stats(self, key: str) -> TrackStats:
        stats = self._stats.get(key)
        if stats is None:
            with self._lock:
                stats = self._stats[key] = TrackStats()
        return stats

    def _track_failed(self, key: str, exc: OSError) -> None:
        detail = f"{key}: {exc}"
        self._track_stats(key).failed = detail
        logger.error(
            "%s(%s) x track %s failed and is no longer written: %s",
            self.name,
            self.session_id,
            key,
            exc,
        )
        self._report(detail)

    def _report(self, detail: str) -> None:
        try:
            self._emit([RecorderFailed(self.session_id, self.name, detail)])
        except Exception:  # the sink is not ours; the recording goes on either way
            logger.exception("%s(%s) x event sink raised", self.name, self.session_id)

    def _open_dir(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def _summary(self) -> str:
        stats = self.track_stats()
        return ", ".join(
            f"{key} {s.frames} frames/{len(s.files)} files"
            + (f"/{s.dropped} dropped" if s.dropped else "")
            + (" FAILED" if s.failed else "")
            for key, s in stats.items()
        )

    # Per-kind parts.
    def _new_take(self) -> TakeT:
        raise NotImplementedError

    def _take_dropped(self, take: TakeT) -> int:
        raise NotImplementedError

    def _write(self, take: TakeT) -> None:
        raise NotImplementedError

    def _finish(self, take: TakeT) -> None:
        raise NotImplementedError

    def _finish_quietly(self, take: TakeT) -> None:
        raise NotImplementedError


# -- audio ---------------------------------------------------------------------------------------


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


# -- video ---------------------------------------------------------------------------------------


class _Y4mTrack:
    __slots__ = ("dropped_seen", "failed", "file", "key", "socket_id", "stats")

    def __init__(self, socket_id: int, stats: TrackStats) -> None:
        self.socket_id = socket_id
        self.key = f"video-{socket_id}"
        self.stats = stats
        self.file: Y4mFile | None = None
        self.failed = False
        self.dropped_seen = 0


class _VideoTake:
    __slots__ = ("rings", "stopped", "tracks")

    def __init__(self) -> None:
        # Socket id -> ring. The hot loop replaces the dict when a socket first appears (never
        # mutates it), so the writer can read it at any time without a lock.
        self.rings: dict[int, Ring[VideoFrame]] = {}
        self.stopped = False
        self.tracks: dict[int, _Y4mTrack] = {}  # writer side


class VideoRecorder(_Recorder[_VideoTake]):
    """Records each received video socket to its own Y4M file (I420, `fps` in the header).

    Y4M has one frame rate and no timestamps: frames are written as they arrive, so a stream
    that arrives slower than `fps` plays back faster than it happened.
    """

    name = "video-recorder"

    def __init__(
        self,
        out_dir: Path,
        session_id: str,
        *,
        fps: int = VIDEO_FPS,
        rotate_bytes: int | None = None,
        rotate_seconds: float | None = None,
        ring_frames: int = VIDEO_RING_FRAMES,
        writer: RecordingWriter | None = None,
        emit: EventSink = no_sink,
    ) -> None:
        if not 1 <= fps <= 240:
            raise ValueError(f"fps must be 1..240, got {fps!r}")
        if rotate_bytes is not None and rotate_bytes <= 0:
            raise ValueError(f"rotate_bytes must be positive, got {rotate_bytes!r}")
        if rotate_seconds is not None and not rotate_seconds > 0:
            raise ValueError(f"rotate_seconds must be positive, got {rotate_seconds!r}")
        if ring_frames < 1:
            raise ValueError(f"ring_frames must be at least 1, got {ring_frames!r}")
        super().__init__(out_dir, session_id, writer, emit)
        self.fps = fps
        self.rotate_bytes = rotate_bytes
        self._rotate_ticks = (
            round(rotate_seconds * TICKS_PER_SECOND) if rotate_seconds is not None else None
        )
        self._ring_frames = ring_frames
        self._next_file_index: dict[int, int] = {}

    def process_video(self, frame: VideoFrame) -> None:
        """Hot loop: queue the frame on its socket's ring if recording; no I/O."""
        take = self._live
        if take is not None and frame.timestamp >= self._not_before:
            ring = take.rings.get(frame.socket_id)
            if ring is None:  # once per socket and recording
                ring = Ring(self._ring_frames)
                take.rings = {**take.rings, frame.socket_id: ring}
            ring.push(frame)
        return None

    # Gating.
    def _new_take(self) -> _VideoTake:
        return _VideoTake()

    def _take_dropped(self, take: _VideoTake) -> int:
        return sum(ring.dropped for ring in take.rings.values())

    # Writer side.
    def _write(self, take: _VideoTake) -> None:
        for socket_id, ring in take.rings.items():
            frames = ring.drain()
            track = take.tracks.get(socket_id)
            if track is None:
                track = take.tracks[socket_id] = _Y4mTrack(
                    socket_id, self._track_stats(f"video-{socket_id}")
                )
            dropped = ring.dropped
            track.stats.dropped += dropped - track.dropped_seen
            track.dropped_seen = dropped
            for frame in frames:
                if track.failed:
                    break
                if self.first_frame_timestamp is None:
                    self.first_frame_timestamp = frame.timestamp
                self._write_frame(track, frame)

    def _write_frame(self, track: _Y4mTrack, frame: VideoFrame) -> None:
        size = frame_bytes(frame.width, frame.height)
        stats = track.stats
        try:
            y4m = track.file
            if y4m is not None and self._needs_new_file(y4m, frame, size):
                track.file = None
                y4m.close()
                y4m = None
            if y4m is None:
                self._open_dir()
                index = self._next_file_index.get(track.socket_id, 1)
                self._next_file_index[track.socket_id] = index + 1
                path = self.out_dir / f"{track.key}-{index:04d}.y4m"
                y4m = track.file = Y4mFile(path, frame.width, frame.height, self.fps)
                with self._lock:
                    stats.files.append(path)
                stats.bytes += y4m.size
                logger.debug(
                    "%s(%s) > %s (%dx%d)",
                    self.name,
                    self.session_id,
                    path,
                    frame.width,
                    frame.height,
                )
            before = y4m.size
            try:
                y4m.write_nv12(frame.data, frame.timestamp)
            finally:
                stats.bytes += y4m.size - before
        except OSError as exc:
            track.failed = True
            if track.file is not None:
                track.file.abandon()
                track.file = None
            self._track_failed(track.key, exc)
            return
        stats.frames += 1

    def _needs_new_file(self, y4m: Y4mFile, frame: VideoFrame, size: int) -> bool:
        if (y4m.width, y4m.height) != (frame.width, frame.height):
            return True  # a Y4M stream has one picture size
        if not y4m.frames:
            return False
        if self.rotate_bytes is not None and y4m.size + size > self.rotate_bytes:
            return True
        first = y4m.first_timestamp
        ticks = self._rotate_ticks
        return ticks is not None and first is not None and frame.timestamp - first >= ticks

    def _finish(self, take: _VideoTake) -> None:
        for track in take.tracks.values():
            y4m, track.file = track.file, None
            if y4m is None:
                continue
            try:
                y4m.close()
            except OSError as exc:
                self._track_failed(track.key, exc)

    def _finish_quietly(self, take: _VideoTake) -> None:
        for track in take.tracks.values():
            if track.file is not None:
                track.file.abandon()
                track.file = None


# -- factories for the plug-in system (media/pipeline/plugins.py) --------------------------------


def _bool_option(ctx: ProcessorContext, key: str, default: bool) -> bool:
    value = ctx.option(key, "true" if default else "false")
    if value.strip().lower() in ("true", "1", "yes", "on"):
        return True
    if value.strip().lower() in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"option {key}={value!r}: expected true or false")


def _positive_option(ctx: ProcessorContext, key: str) -> float | None:
    value = ctx.option(key, "")
    if not value.strip():
        return None
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"option {key}={value!r}: expected a number") from None
    if not (number > 0 and math.isfinite(number)):
        raise ValueError(f"option {key}={value!r}: expected a positive number")
    return number


def _rotation(ctx: ProcessorContext) -> tuple[int | None, float | None]:
    """`rotate_mb` (megabytes, 10**6 bytes) and `rotate_minutes` as bytes and seconds."""
    mb = _positive_option(ctx, "rotate_mb")
    minutes = _positive_option(ctx, "rotate_minutes")
    rotate_bytes = round(mb * 1_000_000) if mb is not None else None
    rotate_seconds = minutes * 60 if minutes is not None else None
    if rotate_bytes is not None and rotate_bytes < HEADER_BYTES + FRAME_BYTES:
        raise ValueError(f"option rotate_mb={ctx.option('rotate_mb', '')!r}: too small for a file")
    if rotate_seconds is not None and rotate_seconds < AUDIO_FRAME_SECONDS:
        raise ValueError(
            f"option rotate_minutes={ctx.option('rotate_minutes', '')!r}: shorter than a frame"
        )
    return rotate_bytes, rotate_seconds


def recorder_factory(ctx: ProcessorContext) -> AudioRecorder:
    """Records the received audio to WAV, mixed and per speaker, once recording is on.

    Options: `mixed`, `per_speaker` ("true"/"false", default true), `rotate_mb`,
    `rotate_minutes`, `dir`. Raises ValueError naming a bad option and its value."""
    rotate_bytes, rotate_seconds = _rotation(ctx)
    mixed = _bool_option(ctx, "mixed", True)
    per_speaker = _bool_option(ctx, "per_speaker", True)
    if not (mixed or per_speaker):
        raise ValueError("options mixed='false' and per_speaker='false': nothing to record")
    return AudioRecorder(
        ctx.session_dir(),
        ctx.session_id,
        mixed=mixed,
        per_speaker=per_speaker,
        rotate_bytes=rotate_bytes,
        rotate_seconds=rotate_seconds,
        emit=ctx.emit,
    )


def video_recorder_factory(ctx: ProcessorContext) -> VideoRecorder:
    """Records each received video socket to a Y4M file, once recording is on.

    Options: `fps` (the Y4M header's rate, default 15), `rotate_mb`, `rotate_minutes`,
    `dir`. Raises ValueError naming a bad option and its value."""
    rotate_bytes, rotate_seconds = _rotation(ctx)
    fps_text = ctx.option("fps", str(VIDEO_FPS))
    try:
        fps = int(fps_text)
    except ValueError:
        raise ValueError(f"option fps={fps_text!r}: expected a whole number") from None
    if not 1 <= fps <= 240:
        raise ValueError(f"option fps={fps_text!r}: expected 1..240")
    return VideoRecorder(
        ctx.session_dir(),
        ctx.session_id,
        fps=fps,
        rotate_bytes=rotate_bytes,
        rotate_seconds=rotate_seconds,
        emit=ctx.emit,
    )
