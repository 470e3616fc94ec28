"""What audio and video recorders share: gating (start/stop/close), writer registration,
per-track counters (`TrackStats`) and failure reporting. See media/pipeline/recorder.py."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from media.pipeline.events import EventSink, RecorderFailed
from media.pipeline.recording_writer import (
    RecordingWriter,
    acquire_shared_writer,
    release_shared_writer,
)

logger = logging.getLogger(
    "media.pipeline.recorder"
)  # the name operators filter on, kept from before the split


@dataclass(slots=True)
class TrackStats:
    """One track's counters (a track: the mixed stream, a speaker, a video socket)."""

    frames: int = 0  # frames written, audio silence included
    silence_frames: int = 0  # audio: padding where the speaker was absent, and dropped frames
    dropped: int = 0  # frames lost to ring overflow (the writer fell behind)
    bytes: int = 0  # bytes written, headers included
    files: list[Path] = field(default_factory=list)
    failed: str | None = None  # the last failure's detail


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
