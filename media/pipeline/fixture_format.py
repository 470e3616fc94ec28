"""The frames fixture format: what a session's pipeline received (decoded frames with speaker
tags), written to and read from a directory, so that a pipeline can be replayed without a call.

A fixture is a directory:

    manifest.json   {"format": "graph-media-bot/frames", "version": 1, "frames": N,
                     "mode": "mixed" | "unmixed", "frame_ms": 20, "sample_rate": 16000,
                     "source": "how it was made", "media_start_ticks": int | null,
                     "script": {"<msi>": [[start, end], ...]}}  (script: optional)
    frames.npz      numpy savez_compressed, every array described in FORMAT_ARRAYS below

The script is who really spoke when (the emulator's ground truth), in seconds from
`media_start_ticks` on the frames' event time base (media/pipeline/events.py frame_time).

PCM is stored losslessly and only once. In unmixed mode a frame's `pcm` is the saturated sum of
its speakers' buffers (media/unmixed.py builds it that way), so only the buffers are stored and
the sum is recomputed on load; a fixture whose frames break that rule also stores `pcm`.

- save_frames() writes one (blocking file I/O: never on the hot loop).
- load() reads and validates one (FixtureError names the file and what is wrong), bounded
  before anything is decompressed.

The recorder that makes fixtures from a live session and the replay itself are in replay.py.
"""

from __future__ import annotations

import json
import math
import os
import re
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from media import safe_json
from media.clock import TICKS_PER_SECOND
from media.frames import (
    AUDIO_FRAME_MS,
    AUDIO_FRAME_SAMPLES,
    AUDIO_SAMPLE_RATE_HZ,
    AudioFrame,
    Pcm,
    UnmixedAudioBuffer,
)
from media.pipeline.events import frame_time
from media.pipeline.mixer import saturate
from media.unmixed import MAX_STREAMS

FORMAT = "graph-media-bot/frames"
VERSION = 1
MANIFEST = "manifest.json"
MEDIA = "frames.npz"
MIXED_MODE, UNMIXED_MODE = "mixed", "unmixed"
FRAME_TICKS = AUDIO_FRAME_MS * TICKS_PER_SECOND // 1000
NO_SPEAKER = -1  # pads `active_speakers` rows (MSIs are uint32, never negative)
# What load() reads, checked before anything is decompressed (a small npz can declare huge
# arrays: a 1 MB file of zeros inflates to 1 GB). The recorder's longest fixture is an hour
# (replay.py fixture_recorder_factory); a whole fixture is at most MAX_LOAD_BYTES in memory
# unless the caller allows more.
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
