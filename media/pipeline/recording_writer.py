"""The recording writer thread: one `RecordingWriter` serves every recorder in the process,
and the process-wide shared writer that recorders acquire on start and release on close.
See media/pipeline/recorder.py for the threading model."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from media.clock import Clock, MonotonicClock

if TYPE_CHECKING:
    from media.pipeline.recorder_base import _Recorder

logger = logging.getLogger(
    "media.pipeline.recorder"
)  # the name operators filter on, kept from before the split

FLUSH_SECONDS = 0.25


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
