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

The code is split by concept: media/pipeline/recording_writer.py (the writer thread),
media/pipeline/recorder_base.py (gating and failure reporting), media/pipeline/audio_recorder.py
and media/pipeline/video_recorder.py. This module holds the plug-in factories and re-exports
every public name, so imports from media.pipeline.recorder keep working.
"""

from __future__ import annotations

import math

from media.frames import AUDIO_FRAME_SECONDS
from media.pipeline.audio_recorder import (
    FRAME_BYTES,
    RING_SECONDS,
    AudioRecorder,
)
from media.pipeline.processor import ProcessorContext
from media.pipeline.recorder_base import TrackStats
from media.pipeline.recording_writer import (
    FLUSH_SECONDS,
    RecordingWriter,
    acquire_shared_writer,
    release_shared_writer,
    shared_writer,
)
from media.pipeline.video_recorder import VIDEO_FPS, VIDEO_RING_FRAMES, VideoRecorder
from media.pipeline.wavfile import HEADER_BYTES

__all__ = [
    "FLUSH_SECONDS",
    "FRAME_BYTES",
    "RING_SECONDS",
    "VIDEO_FPS",
    "VIDEO_RING_FRAMES",
    "AudioRecorder",
    "RecordingWriter",
    "TrackStats",
    "VideoRecorder",
    "acquire_shared_writer",
    "recorder_factory",
    "release_shared_writer",
    "shared_writer",
    "video_recorder_factory",
]


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
