"""The processor contract: small, typed, sync (docs/processors.md).

A processor is any object with a `name` and a `process(frame)` (audio) or `process_video(frame)`
(video). Two more methods are optional and found by name:

- `on_event(event)`: this session's pipeline events (speech started/stopped, dominant speaker),
  called on the hot loop in the tick they happen, before that tick's frames are processed.
- `close()`: called once when the session ends, on a worker thread (never on the hot loop), so
  it may block to flush files.

Processors are made per session by a factory that takes a ProcessorContext (see
media/pipeline/plugins.py for discovery through entry points and dotted paths).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from media.frames import AudioFrame, VideoFrame
from media.pipeline.events import EventSink, PipelineEvent, no_sink


@runtime_checkable
class AudioProcessor(Protocol):
    """Runs on the hot loop once per received frame, in order.

    process() returns the frame to send back into the call, or None to send nothing. It must not
    block, await or do I/O: it has a share of a 20 ms tick. A processor that raises repeatedly,
    or takes longer than its budget, is disabled (the loop carries on) and a ProcessorDisabled
    event says so.
    """

    name: str

    def process(self, frame: AudioFrame) -> AudioFrame | None: ...


@runtime_checkable
class VideoProcessor(Protocol):
    """Runs on the hot loop once per received video frame (latest frame wins per socket)."""

    name: str

    def process_video(self, frame: VideoFrame) -> None: ...


Processor = AudioProcessor | VideoProcessor


@runtime_checkable
class Recording(Protocol):
    """A processor that persists media. It stays idle until start(): the bot calls it only
    after Graph acknowledged updateRecordingStatus `recording`, and sets `notRecording` after
    stop() (the status must be set before media is persisted,
    https://learn.microsoft.com/en-us/graph/api/call-updaterecordingstatus)."""

    name: str
    recording: bool

    def start(self, not_before: int = 0) -> None:
        """Record frames that arrived at or after `not_before` (platform clock ticks)."""
        ...

    def stop(self) -> None: ...


def close_processors(processors: list[Processor]) -> list[str]:
    """Call each processor's close(), if it has one; returns "name: error" for each that
    raised (the others are still closed). Blocking: run it on a worker thread."""
    errors = []
    for processor in processors:
        close = getattr(processor, "close", None)
        if not callable(close):
            continue
        try:
            close()
        except Exception as exc:
            errors.append(f"{processor.name}: {exc!r}")
    return errors


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def _no_names() -> Mapping[int, str]:
    return {}


@dataclass(frozen=True)
class ProcessorContext:
    """What a processor factory gets for one session.

    `names` returns the roster's MSI -> display name map at the time of the call (thread-safe
    snapshot; the bot provides it). `emit` hands events to the control path from any thread.
    `options` are this processor's settings (`BOT_PROCESSOR_OPTIONS`, all strings).
    """

    session_id: str
    call_id: str | None = None
    out_dir: Path = Path("recordings")
    options: Mapping[str, str] = field(default_factory=dict)
    names: Callable[[], Mapping[int, str]] = _no_names
    emit: EventSink = no_sink

    def option(self, key: str, default: str) -> str:
        return self.options.get(key, default)

    def session_dir(self) -> Path:
        """Where this session's files go: `<dir option or out_dir>/<session id>`, the id reduced
        to characters safe in a file name. Recorders and the timeline share it, so a call's
        recordings and its timeline sit together; the whole id, since prefixes of UUIDs can
        clash and a clash would lose a recording."""
        base = Path(self.option("dir", "")) if self.option("dir", "") else self.out_dir
        safe = _UNSAFE.sub("_", self.session_id).strip(".") or "session"
        return base / safe


ProcessorFactory = Callable[[ProcessorContext], Processor]

__all__ = [
    "AudioProcessor",
    "PipelineEvent",
    "Processor",
    "ProcessorContext",
    "ProcessorFactory",
    "Recording",
    "VideoProcessor",
    "close_processors",
]
