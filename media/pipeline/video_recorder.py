"""The video recorder: each received video socket to its own Y4M file, rotating by size,
time and resolution. See media/pipeline/recorder.py."""

from __future__ import annotations

import logging
from pathlib import Path

from media.clock import TICKS_PER_SECOND
from media.frames import VideoFrame
from media.pipeline.events import EventSink, no_sink
from media.pipeline.recorder_base import TrackStats, _Recorder
from media.pipeline.recording_writer import RecordingWriter
from media.pipeline.y4m import Y4mFile, frame_bytes
from media.ring import Ring

logger = logging.getLogger(
    "media.pipeline.recorder"
)  # the name operators filter on, kept from before the split

VIDEO_RING_FRAMES = 16  # per video socket: about 1 s at 15 fps
VIDEO_FPS = 15


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
