"""Frames-level fixtures: record what a session's pipeline received, replay it without a call
(decoded frames with speaker tags: this replays the pipeline).

A fixture is a directory:

    manifest.json   {"format": "graph-media-bot/frames", "version": 1, "frames": N,
                     "mode": "mixed" | "unmixed", "frame_ms": 20, "sample_rate": 16000,
                     "source": "how it was made", "media_start_ticks": int | null,
                     "script": {"<msi>": [[start, end], ...]}}  (script: optional)
    frames.npz      numpy savez_compressed, every array described in FORMAT below

The script is who really spoke when (the emulator's ground truth), in seconds from
`media_start_ticks` on the frames' event time base (media/pipeline/events.py frame_time).

PCM is stored losslessly and only once. In unmixed mode a frame's `pcm` is the saturated sum of
its speakers' buffers (media/unmixed.py builds it that way), so only the buffers are stored and
the sum is recomputed on load; a fixture whose frames break that rule also stores `pcm`.

- FrameFixtureRecorder: a tap processor that keeps a bounded copy of the frames it sees, and
  save()s them as a fixture (off the hot loop). It is a Recording (processor.py): idle until
  start(), so the bot only keeps media once Graph has acknowledged the recording status.
  `fixture_recorder_factory` puts one in any live session through BOT_PROCESSORS and saves
  its fixture when the session ends.
- load() reads and validates a fixture (FixtureError names the file and what is wrong).
- replay() runs processors and the VAD over a fixture on a real HotLoop under a FakeClock: one
  tick per frame, plus the idle ticks a live loop had in the gaps between frames. It is
  deterministic and does not wait: a 6 s fixture replays in about 2 ms (over 1000x real time).

`python -m media.pipeline.replay record --scenario turns --seconds 6 --out DIR` makes a fixture
from an emulated meeting (the emulator and the bot in one process, as `python -m bot demo`);
`python -m media.pipeline.replay replay DIR` replays one through the default VAD and scores it
against its script.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import re
import tempfile
import time
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from media import safe_json
from media.audio_socket import AudioSocket
from media.clock import TICKS_PER_SECOND, FakeClock
from media.frames import (
    AUDIO_FRAME_MS,
    AUDIO_FRAME_SAMPLES,
    AUDIO_SAMPLE_RATE_HZ,
    AudioFrame,
    Pcm,
    UnmixedAudioBuffer,
)
from media.pipeline.events import MIXED, EventSink, PipelineEvent, SpeechStopped, frame_time
from media.pipeline.hotloop import TICK_SECONDS, HotLoop, HotLoopStats
from media.pipeline.mixer import saturate
from media.pipeline.processor import Processor, ProcessorContext, close_processors
from media.pipeline.vad import VadSettings
from media.unmixed import MAX_STREAMS

logger = logging.getLogger(__name__)

FORMAT = "graph-media-bot/frames"
VERSION = 1
MANIFEST = "manifest.json"
MEDIA = "frames.npz"
MIXED_MODE, UNMIXED_MODE = "mixed", "unmixed"
FRAME_TICKS = AUDIO_FRAME_MS * TICKS_PER_SECOND // 1000
NO_SPEAKER = -1  # pads `active_speakers` rows (MSIs are uint32, never negative)
DEFAULT_MAX_FRAMES = 3000  # 60 s of 20 ms frames: under 10 MB of PCM even with four speakers
# A gap longer than this between two frames is replayed as this many idle ticks: by then every
# speech segment has closed and every speaker has been forgotten (vad.py FORGET_FRAMES), so
# more idle ticks would change nothing but the replay's cost.
MAX_GAP_TICKS = 3000
# What load() reads, checked before anything is decompressed (a small npz can declare huge
# arrays: a 1 MB file of zeros inflates to 1 GB). The recorder's longest fixture is an hour
# (fixture_recorder_factory); a whole fixture is at most MAX_LOAD_BYTES in memory unless the
# caller allows more.
MAX_LOAD_FRAMES = 3600 * 1000 // AUDIO_FRAME_MS
MAX_LOAD_BYTES = 256 * 1024 * 1024  # 35 minutes of mixed audio; a 60 s fixture is under 10 MB
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_SPEAKERS = 15  # active speakers per frame: the RTP CSRC count is 4 bits (RFC 3550 5.1)
MAX_MSI = 0xFFFFFFFF

Script = Mapping[int, Sequence[tuple[float, float]]]

# Version 1's arrays: name -> (dtype, shape with N frames, K speakers per frame, M buffers).
# `pcm` is required in mixed mode and optional in unmixed mode; `buffer_*` only in unmixed.
_FRAME_ARRAYS: dict[str, tuple[str, str]] = {
    "timestamp": ("int64", "N"),
    "original_sender_timestamp": ("int64", "N"),
    "sequence": ("int64", "N"),
    "concealed": ("bool", "N"),
    "is_silence": ("bool", "N"),
    "active_speakers": ("int64", "N,K"),  # padded with NO_SPEAKER
}
_BUFFER_ARRAYS: dict[str, tuple[str, str]] = {
    "buffer_frame": ("int64", "M"),  # the index of the frame each buffer belongs to
    "buffer_msi": ("int64", "M"),
    "buffer_sender_timestamp": ("int64", "M"),
    "buffer_pcm": ("int16", "M,320"),
}
FORMAT_ARRAYS = {**_FRAME_ARRAYS, "pcm": ("int16", "N,320"), **_BUFFER_ARRAYS}
_MANIFEST_KEYS = {
    "format",
    "version",
    "frames",
    "mode",
    "frame_ms",
    "sample_rate",
    "source",
    "media_start_ticks",
    "script",
}


class FixtureError(ValueError):
    """A fixture that cannot be read: names the file and what is wrong with it."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@dataclass(frozen=True)
class FrameManifest:
    """manifest.json, parsed. `script`: MSI -> (start, end) seconds from media_start_ticks."""

    frames: int
    mode: str
    source: str
    media_start_ticks: int | None = None
    script: Mapping[int, tuple[tuple[float, float], ...]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "frames": self.frames,
            "mode": self.mode,
            "frame_ms": AUDIO_FRAME_MS,
            "sample_rate": AUDIO_SAMPLE_RATE_HZ,
            "source": self.source,
            "media_start_ticks": self.media_start_ticks,
        }
        if self.script:
            data["script"] = {
                str(msi): [[a, b] for a, b in spans] for msi, spans in sorted(self.script.items())
            }
        return data

    @classmethod
    def from_json(cls, data: object, path: Path) -> FrameManifest:
        """Raises FixtureError naming `path` and the first thing wrong."""
        if not isinstance(data, dict):
            raise FixtureError(path, "the manifest must be a JSON object")
        if data.get("format") != FORMAT:
            raise FixtureError(path, f"format is {data.get('format')!r}, expected {FORMAT!r}")
        if data.get("version") != VERSION:
            raise FixtureError(
                path,
                f"version {data.get('version')!r} is not supported (this code reads {VERSION})",
            )
        for key, expected in (("frame_ms", AUDIO_FRAME_MS), ("sample_rate", AUDIO_SAMPLE_RATE_HZ)):
            if data.get(key) != expected:
                raise FixtureError(path, f"{key} is {data.get(key)!r}, expected {expected}")
        frames = data.get("frames")
        if type(frames) is not int or frames < 0:
            raise FixtureError(path, f"frames must be a count, got {frames!r}")
        mode = data.get("mode")
        if mode not in (MIXED_MODE, UNMIXED_MODE):
            raise FixtureError(path, f"mode must be 'mixed' or 'unmixed', got {mode!r}")
        source = data.get("source")
        if not isinstance(source, str):
            raise FixtureError(path, "source must be a string (how the fixture was made)")
        start = data.get("media_start_ticks")
        if start is not None and type(start) is not int:
            raise FixtureError(path, f"media_start_ticks must be an integer, got {start!r}")
        unknown = sorted(set(data) - _MANIFEST_KEYS)
        if unknown:
            raise FixtureError(path, f"unknown key(s) {', '.join(unknown)}")
        return cls(frames, mode, source, start, _parse_script(data.get("script", {}), path))


def _parse_script(raw: object, path: Path) -> dict[int, tuple[tuple[float, float], ...]]:
    if not isinstance(raw, dict):
        raise FixtureError(path, "script must map MSIs to [[start, end], ...] lists")
    script = {}
    for key, spans in raw.items():
        # ASCII digits only: str.isdigit() takes "²", which int() refuses.
        if not (key.isascii() and key.isdigit() and len(key) <= 10 and int(key) <= MAX_MSI):
            raise FixtureError(path, f"script key {key!r} is not an MSI")
        parsed = []
        for span in spans if isinstance(spans, list) else [spans]:
            ok = isinstance(span, list) and len(span) == 2
            ok = ok and all(type(x) in (int, float) for x in span) and span[0] < span[1]
            if not ok:
                raise FixtureError(path, f"script[{key}]: {span!r} is not a [start, end] pair")
            parsed.append((float(span[0]), float(span[1])))
        script[int(key)] = tuple(parsed)
    return script


@dataclass(frozen=True)
class FrameFixture:
    """A loaded fixture: its frames, as the hot loop received them, and its manifest."""

    frames: list[AudioFrame]
    manifest: FrameManifest
    directory: Path | None = None

    @property
    def origin_ticks(self) -> int:
        """Time zero of the script: the media start, else the first frame's event time."""
        if self.manifest.media_start_ticks is not None:
            return self.manifest.media_start_ticks
        first = self.frames[0] if self.frames else None
        return frame_time(first.timestamp, first.original_sender_timestamp) if first else 0

    def seconds(self, ticks: int) -> float:
        """An event time (100 ns ticks) as script seconds."""
        return (ticks - self.origin_ticks) / TICKS_PER_SECOND


# -- writing ---------------------------------------------------------------------------------------


def save_frames(
    directory: Path | str,
    frames: Sequence[AudioFrame],
    source: str,
    script: Script | None = None,
    media_start_ticks: int | None = None,
) -> Path:
    """Write `frames` as a fixture in `directory` (created; a fixture there is replaced).

    The mode is unmixed when any frame has unmixed buffers. Blocking file I/O: never call it on
    the hot loop. Returns the directory. Raises ValueError for a frame that cannot be stored
    (a negative MSI) and OSError from the file system."""
    directory = Path(directory)
    unmixed = any(f.unmixed for f in frames)
    media: dict[str, Any] = _arrays(frames, unmixed)  # (savez's stubs want Any)
    manifest = FrameManifest(
        len(frames),
        UNMIXED_MODE if unmixed else MIXED_MODE,
        source,
        media_start_ticks,
        {int(msi): tuple((float(a), float(b)) for a, b in spans) for msi, spans in script.items()}
        if script
        else {},
    )
    directory.mkdir(parents=True, exist_ok=True)
    # Media first, manifest last, each through a temporary name: a save cut short leaves the
    # previous fixture or no manifest, never a manifest describing half-written media.
    media_tmp = directory / f".{MEDIA}.tmp"
    with media_tmp.open("wb") as out:
        np.savez_compressed(out, **media)
    os.replace(media_tmp, directory / MEDIA)
    manifest_tmp = directory / f".{MANIFEST}.tmp"
    manifest_tmp.write_text(_manifest_text(manifest.to_json()))
    os.replace(manifest_tmp, directory / MANIFEST)
    return directory


def _manifest_text(data: dict[str, Any]) -> str:
    """Indented JSON with each script span on one line, so a diff shows which one changed."""
    text = json.dumps(data, indent=2)
    return re.sub(r"\[\s+([-\d.e+]+),\s+([-\d.e+]+)\s+\]", r"[\1, \2]", text) + "\n"


def _arrays(frames: Sequence[AudioFrame], unmixed: bool) -> dict[str, npt.NDArray[Any]]:
    n = len(frames)
    width = max((len(f.active_speakers) for f in frames), default=0)
    speakers = np.full((n, width), NO_SPEAKER, dtype=np.int64)
    for i, f in enumerate(frames):
        if any(msi < 0 for msi in f.active_speakers):
            raise ValueError(
                f"frame {i}: active speaker MSIs must be >= 0, got {f.active_speakers}"
            )
        speakers[i, : len(f.active_speakers)] = f.active_speakers
    arrays: dict[str, npt.NDArray[Any]] = {
        "timestamp": np.array([f.timestamp for f in frames], dtype=np.int64),
        "original_sender_timestamp": np.array(
            [f.original_sender_timestamp for f in frames], dtype=np.int64
        ),
        "sequence": np.array([f.sequence for f in frames], dtype=np.int64),
        "concealed": np.array([f.concealed for f in frames], dtype=np.bool_),
        "is_silence": np.array([f.is_silence for f in frames], dtype=np.bool_),
        "active_speakers": speakers,
    }
    pcm = _stack([f.pcm for f in frames])
    if not unmixed:
        arrays["pcm"] = pcm
        return arrays
    buffers = [(i, b) for i, f in enumerate(frames) for b in f.unmixed]
    arrays["buffer_frame"] = np.array([i for i, _ in buffers], dtype=np.int64)
    arrays["buffer_msi"] = np.array([b.msi for _, b in buffers], dtype=np.int64)
    arrays["buffer_sender_timestamp"] = np.array(
        [b.original_sender_timestamp for _, b in buffers], dtype=np.int64
    )
    arrays["buffer_pcm"] = _stack([b.pcm for _, b in buffers])
    if not np.array_equal(_sum_buffers(n, arrays["buffer_frame"], arrays["buffer_pcm"]), pcm):
        arrays["pcm"] = pcm  # not the sum of the buffers: keep it, or the fixture would lie
    return arrays


def _stack(pcms: Sequence[Pcm]) -> npt.NDArray[np.int16]:
    if not pcms:
        return np.zeros((0, AUDIO_FRAME_SAMPLES), dtype=np.int16)
    return np.stack(pcms).astype(np.int16, copy=False)


def _sum_buffers(
    n: int, owner: npt.NDArray[np.int64], pcm: npt.NDArray[np.int16]
) -> npt.NDArray[np.int16]:
    """Each frame's saturated sum of its buffers (media/unmixed.py: int32 sum, then clip)."""
    total = np.zeros((n, AUDIO_FRAME_SAMPLES), dtype=np.int32)
    np.add.at(total, owner, pcm)
    return saturate(total)


# -- the recorder ----------------------------------------------------------------------------------


class FrameFixtureRecorder:
    """A tap that keeps what the pipeline received, for save() as a frames fixture.

    Bounded: after `max_frames` frames it keeps nothing more and counts what it skipped in
    `skipped`. Gated like every recorder (processor.Recording): idle until start(), because
    Graph's terms want the call's recording status set before media is kept; the bot starts it
    once Graph acknowledged `recording`. Pass `recording=True` only where that does not apply
    (an emulated meeting, synthetic frames in a test).

    On the hot loop process() copies the frame's arrays (the pipeline owns them and they are
    read-only) and appends one tuple: about 2 us a frame, nothing else.
    """

    name = "fixture-recorder"

    def __init__(
        self,
        max_frames: int = DEFAULT_MAX_FRAMES,
        recording: bool = False,
        save_to: Path | None = None,
        source: str = "",
    ) -> None:
        """`save_to`: save() there on close() (when the session ends), with `source`."""
        if max_frames < 1:
            raise ValueError(f"max_frames must be at least 1, got {max_frames}")
        self.max_frames = max_frames
        self.recording = recording
        self.save_to = save_to
        self.source = source
        self.skipped = 0
        self._not_before = 0
        self._frames: list[AudioFrame] = []

    def start(self, not_before: int = 0) -> None:
        """Keep frames from now on, except those that arrived before `not_before` (platform
        ticks: the bot passes when Graph acknowledged the recording status). Already
        recording: nothing changes."""
        if not self.recording:
            self._not_before = not_before
            self.recording = True

    def stop(self) -> None:
        self.recording = False

    def process(self, frame: AudioFrame) -> AudioFrame | None:
        if not self.recording or frame.timestamp < self._not_before:
            return None
        if len(self._frames) >= self.max_frames:
            self.skipped += 1
            return None
        self._frames.append(
            AudioFrame(
                frame.pcm.copy(),
                frame.timestamp,
                frame.active_speakers,
                frame.is_silence,
                frame.sequence,
                frame.concealed,
                tuple(
                    UnmixedAudioBuffer(b.msi, b.pcm.copy(), b.original_sender_timestamp)
                    for b in frame.unmixed
                ),
                frame.original_sender_timestamp,
            )
        )
        return None  # a tap: says nothing

    @property
    def frames(self) -> list[AudioFrame]:
        """A snapshot of the frames kept so far (list() of a list is atomic under the GIL, so
        this is safe while the hot loop still appends)."""
        return list(self._frames)

    def save(
        self,
        directory: Path | str,
        source: str,
        script: Script | None = None,
        media_start_ticks: int | None = None,
    ) -> Path:
        """Write the frames kept so far as a fixture (save_frames). Blocking: off the hot loop."""
        return save_frames(directory, self.frames, source, script, media_start_ticks)

    def close(self) -> None:
        """The session ended (a worker thread, never the hot loop): save to `save_to`, if set
        and anything was kept. An OSError goes to close_processors, which reports it."""
        self.recording = False
        if self.save_to is not None and self._frames:
            skipped = f"; {self.skipped} frames past max_frames not kept" if self.skipped else ""
            self.save(self.save_to, self.source + skipped)


def fixture_recorder_factory(ctx: ProcessorContext) -> FrameFixtureRecorder:
    """Saves the frames the pipeline received as a fixture for replay tests.

    A FrameFixtureRecorder for BOT_PROCESSORS (`media.pipeline.replay:fixture_recorder_factory`)
    that saves to `<dir>/<session id>/frames-fixture/` when the session ends. Options:
    `max_seconds` (default 60), `dir`. Raises ValueError naming a bad option and its value."""
    text = ctx.option("max_seconds", str(DEFAULT_MAX_FRAMES * AUDIO_FRAME_MS // 1000))
    try:
        seconds = float(text)
    except ValueError:
        raise ValueError(f"option max_seconds={text!r} is not a number") from None
    if not 0 < seconds <= 3600:  # an hour of four speakers is over 500 MB of memory
        raise ValueError(f"option max_seconds={text!r}: expected more than 0, at most 3600")
    call = f", call {ctx.call_id}" if ctx.call_id else ""
    return FrameFixtureRecorder(
        max_frames=max(1, round(seconds * 1000 / AUDIO_FRAME_MS)),
        save_to=ctx.session_dir() / "frames-fixture",
        source=f"live session {ctx.session_id}{call}, recorded by fixture_recorder_factory",
    )


# -- reading ---------------------------------------------------------------------------------------


def load(directory: Path | str, max_bytes: int = MAX_LOAD_BYTES) -> FrameFixture:
    """Read a fixture. Raises FixtureError naming the file and what is wrong with it.

    Bounded: the manifest's size, its frame count, and every array's declared shape and type
    (read from the npy headers, numpy.lib.format's documented layout) are checked
    before any array is decompressed, and all of them together may take at most `max_bytes`."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    try:
        with manifest_path.open("rb") as file:
            text = file.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise FixtureError(manifest_path, "missing: not a frames fixture directory") from None
    except OSError as exc:
        raise FixtureError(manifest_path, f"unreadable: {exc}") from None
    if len(text) > MAX_MANIFEST_BYTES:
        raise FixtureError(manifest_path, f"over {MAX_MANIFEST_BYTES} bytes")
    try:
        raw = safe_json.loads(text)
    except safe_json.JsonRefused as exc:
        raise FixtureError(manifest_path, f"unreadable: {exc}") from None
    manifest = FrameManifest.from_json(raw, manifest_path)
    if manifest.frames > MAX_LOAD_FRAMES:
        raise FixtureError(
            manifest_path, f"frames is {manifest.frames}, at most {MAX_LOAD_FRAMES} (an hour)"
        )
    media_path = directory / MEDIA
    try:
        arrays = _read_media(media_path, manifest, max_bytes)
    except FileNotFoundError:
        raise FixtureError(media_path, "missing") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        if isinstance(exc, FixtureError):
            raise
        raise FixtureError(media_path, f"unreadable: {exc}") from None
    _check_arrays(arrays, manifest, media_path)
    return FrameFixture(_frames(arrays, manifest), manifest, directory)


def _read_media(path: Path, manifest: FrameManifest, max_bytes: int) -> dict[str, Any]:
    """The arrays of frames.npz, each read only once every header has been checked."""
    with zipfile.ZipFile(path) as archive:
        members: dict[str, zipfile.ZipInfo] = {}
        declared: dict[str, tuple[np.dtype[Any], tuple[int, ...]]] = {}
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):  # np.savez names them "name.npy"
                raise FixtureError(path, f"{info.filename!r} is not an array")
            name = info.filename.removesuffix(".npy")
            if name in members:
                raise FixtureError(path, f"array {name} is stored twice")
            members[name] = info
            if name not in FORMAT_ARRAYS:
                continue  # refused by name below, never read
            if info.flag_bits & 0x1 or info.compress_type not in (
                zipfile.ZIP_STORED,
                zipfile.ZIP_DEFLATED,  # what savez_compressed writes
            ):
                raise FixtureError(path, f"array {name} is encrypted or compressed unusually")
            with archive.open(info) as member:
                declared[name] = _npy_header(member)
        _check_layout({n: declared.get(n) for n in members}, manifest, path)
        total = sum(dtype.itemsize * math.prod(shape) for dtype, shape in declared.values())
        if total > max_bytes:
            raise FixtureError(
                path, f"its arrays take {total} bytes, more than the {max_bytes} allowed"
            )
        arrays = {}
        for name, info in members.items():
            with archive.open(info) as member:
                arrays[name] = np.lib.format.read_array(member, allow_pickle=False)
    return arrays


def _npy_header(member: Any) -> tuple[np.dtype[Any], tuple[int, ...]]:
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        shape, _fortran, dtype = np.lib.format.read_array_header_1_0(member)
    elif version == (2, 0):
        shape, _fortran, dtype = np.lib.format.read_array_header_2_0(member)
    else:
        raise ValueError(f"npy format version {version} (savez writes 1.0)")
    return dtype, tuple(shape)


def _check_layout(
    declared: Mapping[str, tuple[np.dtype[Any], tuple[int, ...]] | None],
    manifest: FrameManifest,
    path: Path,
) -> None:
    """The arrays' names, types and shapes against the manifest, from their headers."""
    unmixed = manifest.mode == UNMIXED_MODE
    required = set(_FRAME_ARRAYS) | (set(_BUFFER_ARRAYS) if unmixed else {"pcm"})
    allowed = required | {"pcm"}
    missing, unknown = sorted(required - set(declared)), sorted(set(declared) - allowed)
    if missing:
        raise FixtureError(path, f"missing array(s) {', '.join(missing)} ({manifest.mode} mode)")
    if unknown:
        raise FixtureError(path, f"unexpected array(s) {', '.join(unknown)} ({manifest.mode} mode)")
    layout = {n: d for n, d in declared.items() if d is not None}
    speakers = layout["active_speakers"][1]
    sizes = {
        "N": manifest.frames,
        "320": AUDIO_FRAME_SAMPLES,
        "K": speakers[-1] if len(speakers) == 2 else -1,
    }
    if sizes["K"] > MAX_SPEAKERS:
        raise FixtureError(
            path, f"active_speakers has {sizes['K']} columns, at most {MAX_SPEAKERS}"
        )
    if unmixed:
        owners = layout["buffer_frame"][1]
        sizes["M"] = owners[0] if len(owners) == 1 else -1
        if sizes["M"] > manifest.frames * MAX_STREAMS:
            raise FixtureError(
                path, f"{sizes['M']} buffers for {manifest.frames} frames of {MAX_STREAMS} streams"
            )
    for name, (dtype, actual) in layout.items():
        want, dims = FORMAT_ARRAYS[name]
        shape = tuple(sizes[d] for d in dims.split(","))
        if dtype != np.dtype(want) or actual != shape:
            raise FixtureError(
                path,
                f"array {name} is {dtype} {actual}, expected {want} {shape} "
                f"(N = {manifest.frames} frames from the manifest)",
            )


def _check_arrays(arrays: dict[str, npt.NDArray[Any]], manifest: FrameManifest, path: Path) -> None:
    """What the headers cannot tell: the values."""
    _check_layout({n: (a.dtype, a.shape) for n, a in arrays.items()}, manifest, path)
    unmixed = manifest.mode == UNMIXED_MODE
    if unmixed:
        owner = arrays["buffer_frame"]
        if owner.size and (owner.min() < 0 or owner.max() >= manifest.frames):
            raise FixtureError(path, "buffer_frame holds a frame index out of range")
        if owner.size and (np.diff(owner) < 0).any():
            raise FixtureError(path, "buffer_frame is not in frame order")


def _frames(arrays: dict[str, npt.NDArray[Any]], manifest: FrameManifest) -> list[AudioFrame]:
    for array in arrays.values():
        array.flags.writeable = False  # replays share these: no processor may change them
    n = manifest.frames
    buffers: list[list[UnmixedAudioBuffer]] = [[] for _ in range(n)]
    if manifest.mode == UNMIXED_MODE:
        owner, msi = arrays["buffer_frame"].tolist(), arrays["buffer_msi"].tolist()
        sent, pcm = arrays["buffer_sender_timestamp"].tolist(), arrays["buffer_pcm"]
        for j, i in enumerate(owner):
            buffers[i].append(UnmixedAudioBuffer(msi[j], pcm[j], sent[j]))
        if "pcm" not in arrays:
            arrays["pcm"] = _sum_buffers(n, arrays["buffer_frame"], pcm)
            arrays["pcm"].flags.writeable = False
    mixed = arrays["pcm"]
    timestamp, sender = arrays["timestamp"].tolist(), arrays["original_sender_timestamp"].tolist()
    sequence = arrays["sequence"].tolist()
    concealed, silent = arrays["concealed"].tolist(), arrays["is_silence"].tolist()
    speakers = arrays["active_speakers"].tolist()
    return [
        AudioFrame(
            mixed[i],
            timestamp[i],
            tuple(m for m in speakers[i] if m != NO_SPEAKER),
            silent[i],
            sequence[i],
            concealed[i],
            tuple(buffers[i]),
            sender[i],
        )
        for i in range(n)
    ]


# -- replay ----------------------------------------------------------------------------------------


@dataclass
class ReplayStats:
    frames: int = 0  # fixture frames pushed, one per tick
    idle_ticks: int = 0  # extra ticks without a frame, for the gaps between frames
    sent: int = 0  # frames the processors said back
    media_seconds: float = 0.0  # the replay's length on the FakeClock
    wall_seconds: float = 0.0
    processor_failures: int = 0
    disabled: list[str] = field(default_factory=list)  # "session:processor"
    close_errors: list[str] = field(default_factory=list)  # from processors' close()

    @property
    def ticks(self) -> int:
        return self.frames + self.idle_ticks

    @property
    def speedup(self) -> float:
        """Media time over wall time: how many times faster than real time the replay ran."""
        return self.media_seconds / self.wall_seconds if self.wall_seconds > 0 else math.inf


@dataclass
class ReplayResult:
    events: list[PipelineEvent]  # every batch the sink got, in order, flattened
    sent: list[AudioFrame]  # what the processors said back, one frame per frame at most
    stats: ReplayStats
    hot_loop: HotLoopStats

    def segments(self, msi: int | None = None) -> list[SpeechStopped]:
        """Closed speech segments (every speaker's, MIXED's excluded, unless `msi` is given)."""
        return [
            e
            for e in self.events
            if isinstance(e, SpeechStopped)
            and (e.msi == msi if msi is not None else e.msi != MIXED)
        ]


def gap_ticks(previous: AudioFrame, frame: AudioFrame) -> int:
    """Ticks without a frame that a live hot loop had between two frames. Unmixed audio sends
    nothing while nobody talks, and the VAD learns that silence from those empty ticks
    (SessionVad.idle), so a replay must have them too, or two utterances would merge."""
    if previous.original_sender_timestamp and frame.original_sender_timestamp:
        delta = frame.original_sender_timestamp - previous.original_sender_timestamp
    else:
        delta = frame.timestamp - previous.timestamp
    return min(max(round(delta / FRAME_TICKS) - 1, 0), MAX_GAP_TICKS)


def replay(
    fixture: FrameFixture,
    processors: Sequence[Processor],
    vad: VadSettings | bool | None = True,
    sink: EventSink | None = None,
    session_id: str = "replay",
    enforce_budget: bool = False,
) -> ReplayResult:
    """Run `processors` (and the VAD) over the fixture on a HotLoop under a FakeClock.

    `vad`: True for the default VadSettings(), False or None for no VAD, or settings (as
    HotLoop.add). `sink` also gets each tick's batch of events, as the bot's control path
    would. Processors are close()d at the end; their errors are in stats.close_errors. With
    `enforce_budget` processor calls are timed on the wall clock and a slow one is disabled as
    live; off by default because wall time would make the replay nondeterministic (exceptions
    still disable a processor either way). Raises TypeError for an object that is not a
    processor."""
    events: list[PipelineEvent] = []

    def collect(batch: Sequence[PipelineEvent]) -> None:
        events.extend(batch)
        if sink is not None:
            sink(batch)

    clock = FakeClock()
    timer = time.perf_counter if enforce_budget else clock.now
    loop = HotLoop(clock, sink=collect, perf_counter=timer)
    socket = AudioSocket()
    loop.add(session_id, socket, processors, vad=vad if vad is not None else False)
    stats = ReplayStats()
    sent: list[AudioFrame] = []
    started = time.perf_counter()

    def tick() -> None:
        loop.tick()
        clock.advance(TICK_SECONDS)
        sent.extend(socket.send_ring.drain())  # drained every tick: the ring never overflows

    previous: AudioFrame | None = None
    for frame in fixture.frames:
        if previous is not None:
            for _ in range(gap_ticks(previous, frame)):
                tick()
                stats.idle_ticks += 1
        # A new frame object each time (the arrays are shared, read-only): a processor that
        # sets a field on its frame must not change the fixture for the next replay.
        socket.receive_ring.push(
            AudioFrame(
                frame.pcm,
                frame.timestamp,
                frame.active_speakers,
                frame.is_silence,
                frame.sequence,
                frame.concealed,
                frame.unmixed,
                frame.original_sender_timestamp,
            )
        )
        tick()
        stats.frames += 1
        previous = frame
    removed = loop.remove(session_id)  # closes open speech segments, delivering their events
    stats.wall_seconds = time.perf_counter() - started
    stats.close_errors = close_processors(removed)
    stats.media_seconds = stats.ticks * TICK_SECONDS
    stats.sent = len(sent)
    stats.processor_failures = loop.stats.processor_failures
    stats.disabled = list(loop.stats.disabled)
    return ReplayResult(events, sent, stats, loop.stats)


# -- scoring against the script --------------------------------------------------------------------


@dataclass(frozen=True)
class ScriptMatch:
    """One scripted utterance and the VAD segment of that speaker overlapping it most: onset
    and offset errors in seconds (segment minus script; inf when no segment overlaps)."""

    msi: int
    start: float
    end: float
    onset_error: float
    offset_error: float

    def within(self, tolerance: float) -> bool:
        return abs(self.onset_error) <= tolerance and abs(self.offset_error) <= tolerance


def match_script(
    fixture: FrameFixture, segments: Sequence[SpeechStopped]
) -> tuple[list[ScriptMatch], list[SpeechStopped]]:
    """Each utterance of the fixture's script against `segments`, and the segments that match
    no utterance (false detections). The same matching as tests/test_scenarios.py vad_report."""
    used: set[int] = set()
    matches = []
    for msi, spans in sorted(fixture.manifest.script.items()):
        for start, end in spans:
            best, overlap = None, 0.0
            for i, seg in enumerate(segments):
                shared = min(fixture.seconds(seg.end), end) - max(fixture.seconds(seg.start), start)
                if seg.msi == msi and shared > overlap:
                    best, overlap = i, shared
            if best is None:
                matches.append(ScriptMatch(msi, start, end, math.inf, math.inf))
                continue
            used.add(best)
            seg = segments[best]
            onset = fixture.seconds(seg.start) - start
            matches.append(ScriptMatch(msi, start, end, onset, fixture.seconds(seg.end) - end))
    return matches, [seg for i, seg in enumerate(segments) if i not in used]


def clip_script(script: Script, start: float, end: float) -> dict[int, list[tuple[float, float]]]:
    """The utterances heard between `start` and `end` seconds, cut to that window (a recording
    covers part of a scenario)."""
    clipped: dict[int, list[tuple[float, float]]] = {}
    for msi, spans in script.items():
        kept = [(max(a, start), min(b, end)) for a, b in spans if a < end and b > start]
        if kept:
            clipped[msi] = [(round(a, 3), round(b, 3)) for a, b in kept]
    return clipped


# -- making a fixture from an emulated meeting -----------------------------------------------------


async def record_scenario(
    scenario: str, seconds: float, out: Path, mixed: bool = False, max_frames: int | None = None
) -> FrameFixture:
    """Play an emulator scenario's meeting with the bot, recording every frame its pipeline
    got, and save it with the script. Emulator and bot run in this process (bot/demo.py)."""
    # The bot is imported here, not at module level: media must not depend on bot.
    from bot.app import Bot
    from bot.demo import start_local_environment
    from bot.scenarios import ScenarioRun, play

    limit = max_frames or math.ceil(seconds * 1000 / AUDIO_FRAME_MS) + 100
    with tempfile.TemporaryDirectory() as tmp:
        env = await start_local_environment(Path(tmp), scenario)
        if not env.scenario.meetings:
            await asyncio.to_thread(env.thread.stop)
            raise ValueError(f"scenario {scenario} has no meeting to join")
        # An emulated meeting of synthetic voices: recording from the first frame is fine
        # (the bot still sets the recording status, as it would in a real call).
        recorder = FrameFixtureRecorder(limit, recording=True)
        run = ScenarioRun()
        bot = Bot(env.settings, processors=lambda ctx: [recorder])
        table = dict(env.scenario.bot) | {
            "action": "join",
            "seconds": seconds,
            "unmixed": not mixed,
        }

        async def ring() -> int:
            return 0

        try:
            await bot.start()
            await play(bot, table, run, env.emulator.join_url(env.meeting), ring)
            link = env.emulator.calls[run.calls[0].call.id].link
            media_start = link.media_start if link is not None else None
        finally:
            await bot.stop()
            await asyncio.to_thread(env.thread.stop)
    if media_start is None:
        raise RuntimeError("the call's media never started: nothing was recorded")
    frames = recorder.frames
    if not frames:
        raise RuntimeError("the bot's pipeline received no frames")
    start_ticks = round(media_start * TICKS_PER_SECOND)
    first, last = frames[0], frames[-1]
    span = (
        (frame_time(first.timestamp, first.original_sender_timestamp) - start_ticks)
        / TICKS_PER_SECOND,
        (frame_time(last.timestamp, last.original_sender_timestamp) + FRAME_TICKS - start_ticks)
        / TICKS_PER_SECOND,
    )
    talk = {
        p.msi: p.talk if p.talk is not None else ((0.0, math.inf),)
        for p in env.meeting.participants
    }
    source = (
        f"emulator scenario {scenario!r} ({'mixed' if mixed else 'unmixed'} audio), the bot "
        f"in the meeting for {seconds:g} s: `python -m media.pipeline.replay record --scenario "
        f"{scenario} --seconds {seconds:g}{' --mixed' if mixed else ''}`"
        + (f"; {recorder.skipped} frames past max_frames not kept" if recorder.skipped else "")
    )
    await asyncio.to_thread(save_frames, out, frames, source, clip_script(talk, *span), start_ticks)
    return await asyncio.to_thread(load, out)


def _ms(seconds: float) -> str:
    return f"{round(seconds * 1000):+5d} ms"  # round() first: no "-0 ms"


def _report(fixture: FrameFixture) -> list[str]:
    result = replay(fixture, [])
    matches, extra = match_script(fixture, result.segments())
    size = sum(p.stat().st_size for p in (fixture.directory or Path()).glob("*") if p.is_file())
    lines = [
        f"{fixture.directory}: {fixture.manifest.frames} frames, {fixture.manifest.mode}, "
        f"{size / 1024:.0f} KiB",
        f"  source   {fixture.manifest.source}",
        f"  replay   {result.stats.media_seconds:.2f} s of media in "
        f"{result.stats.wall_seconds * 1000:.1f} ms ({result.stats.speedup:.0f}x real time), "
        f"{len(result.events)} events",
    ]
    for m in matches:
        errors = (
            f"onset {_ms(m.onset_error)}  offset {_ms(m.offset_error)}"
            if math.isfinite(m.onset_error)
            else "no segment"
        )
        lines.append(f"  MSI {m.msi}  {m.start:5.2f}-{m.end:5.2f} s  {errors}")
    if matches:
        within = sum(m.within(0.06) for m in matches)
        lines.append(f"  within 60 ms: {within}/{len(matches)}; unmatched segments: {len(extra)}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m media.pipeline.replay", description="Frames-level fixtures."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    record = commands.add_parser("record", help="record a fixture from an emulator scenario")
    record.add_argument("--scenario", default="turns", help="emulator/scenarios/NAME.toml")
    record.add_argument("--seconds", type=float, default=6.0, help="how long the bot stays")
    record.add_argument("--out", type=Path, required=True, help="the fixture directory")
    record.add_argument("--mixed", action="store_true", help="mixed audio (default unmixed)")
    show = commands.add_parser("replay", help="replay a fixture through the VAD, vs its script")
    show.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        if args.command == "record":
            fixture = asyncio.run(
                record_scenario(args.scenario, args.seconds, args.out, args.mixed)
            )
        else:
            fixture = load(args.directory)
    except (FixtureError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}")
        return 1
    for line in _report(fixture):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
