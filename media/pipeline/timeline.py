"""Speaker timeline: who spoke when in a call, as JSON and as a PNG of broken bars.

The timeline is built from the pipeline's SpeechStarted/SpeechStopped events (on the hot loop:
appending a tuple, nothing else) and drawn once at the end of the call, on the worker thread
that closes the session. matplotlib is imported only then, and only through its object API
(Figure + the Agg canvas): no pyplot global state, no display, safe off the main thread.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from media.clock import TICKS_PER_SECOND
from media.frames import AUDIO_FRAME_MS, AudioFrame
from media.pipeline.events import MIXED, PipelineEvent, SpeechStarted, SpeechStopped, frame_time
from media.pipeline.processor import ProcessorContext

logger = logging.getLogger(__name__)

FRAME_TICKS = AUDIO_FRAME_MS * TICKS_PER_SECOND // 1000
# About 8 hours of brisk turn-taking. Beyond it new segments are counted, not kept: the memory a
# call's timeline takes stays bounded however long the call runs.
MAX_SEGMENTS = 100_000
MIXED_LABEL = "Mixed stream"
JSON_NAME = "timeline.json"
PNG_NAME = "timeline.png"


def msi_hex(msi: int) -> str:
    return f"0x{msi & 0xFFFFFFFF:X}"  # MSIs are uint32 on the wire


def display_name(msi: int, names: Mapping[int, str]) -> str:
    """The roster's name for an MSI, else "MSI 0x..." (someone not, or no longer, in it)."""
    if msi == MIXED:
        return MIXED_LABEL
    return names.get(msi) or f"MSI {msi_hex(msi)}"


@dataclass(frozen=True, slots=True)
class Segment:
    msi: int
    start: int  # 100 ns ticks on the frames' time base (events.frame_time)
    end: int


class SpeakerTimeline:
    """Speech segments per MSI. Not thread-safe: one thread adds, the same (or a later one,
    after a join) writes."""

    def __init__(self, origin: int | None = None) -> None:
        self.origin = origin  # time zero in ticks; None: the first segment's start
        self.segments: list[Segment] = []
        self.dropped = 0
        self._open: dict[int, int] = {}  # msi -> start of a segment not yet stopped

    def open(self, event: SpeechStarted) -> None:
        self._open[event.msi] = event.start

    def add(self, segment: SpeechStopped) -> None:
        self._open.pop(segment.msi, None)
        self._append(segment.msi, segment.start, segment.end)

    def finish(self, now_ticks: int, last_seen: Mapping[int, int] | None = None) -> None:
        """Close the segments still open at the end of the call, at `now_ticks`, or for an MSI
        in `last_seen` at the end of the last frame it was heard in (a speaker who left early
        must not be drawn talking until the call ends)."""
        seen = last_seen or {}
        for msi, start in sorted(self._open.items(), key=lambda item: item[1]):
            self._append(msi, start, seen.get(msi, now_ticks))
        self._open.clear()

    def _append(self, msi: int, start: int, end: int) -> None:
        if len(self.segments) >= MAX_SEGMENTS:
            self.dropped += 1
            return
        self.segments.append(Segment(msi, start, max(start, end)))

    def to_json(self, names: Mapping[int, str]) -> dict[str, Any]:
        """Per speaker (in order of first speech): MSI, its hex form, display name, segments as
        [start, end] seconds from the origin, talk time. The mixed stream's own track (what the
        VAD heard on the mix, without attribution) is kept apart under "mixed"."""
        origin = self._origin()
        tracks: dict[int, list[Segment]] = {}
        for segment in sorted(self.segments, key=lambda s: (s.start, s.end)):
            tracks.setdefault(segment.msi, []).append(segment)

        def seconds(ticks: int) -> float:
            return round((ticks - origin) / TICKS_PER_SECOND, 3)

        def track(segments: list[Segment]) -> dict[str, Any]:
            return {
                "segments": [[seconds(s.start), seconds(s.end)] for s in segments],
                "segment_count": len(segments),
                "talk_seconds": round(sum(s.end - s.start for s in segments) / TICKS_PER_SECOND, 3),
            }

        speakers = [
            {"msi": msi, "msi_hex": msi_hex(msi), "name": display_name(msi, names), **track(segs)}
            for msi, segs in tracks.items()
            if msi != MIXED
        ]
        end = max((s.end for s in self.segments), default=origin)
        return {
            "origin_ticks": origin,
            "duration_seconds": max(0.0, seconds(end)),
            "speakers": speakers,
            "mixed": track(tracks.get(MIXED, [])),
            "dropped_segments": self.dropped,
        }

    def _origin(self) -> int:
        if self.origin is not None:
            return self.origin
        return min((s.start for s in self.segments), default=0)

    def write(
        self,
        json_path: str | Path,
        png_path: str | Path,
        names: Mapping[int, str],
        title: str = "Speaker timeline",
    ) -> None:
        """Write the JSON and draw the PNG (blocking file I/O: a worker thread's job). Each file
        is written beside its final name and renamed into place, so a reader never sees half."""
        data = self.to_json(names)
        _replace(Path(json_path), lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))
        _replace(Path(png_path), lambda tmp: draw(data, tmp, title))


def _replace(path: Path, write: Callable[[Path], object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def draw(data: Mapping[str, Any], png_path: Path, title: str) -> None:
    """One row of broken bars per speaker, the mixed stream's row last, time in seconds."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows: list[tuple[str, list[list[float]], str]] = [
        (_label(s["name"], s["msi_hex"]), s["segments"], f"C{i % 10}")
        for i, s in enumerate(data["speakers"])
    ]
    if data["mixed"]["segments"]:
        rows.append((MIXED_LABEL, data["mixed"]["segments"], "0.55"))  # gray: no one person
    height = min(1.6 + 0.55 * max(len(rows), 1), 40.0)  # a big meeting stays a drawable size
    figure = Figure(figsize=(11.0, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for row, (_, segments, color) in enumerate(rows):
        bars = [(start, end - start) for start, end in segments]
        axes.broken_barh(bars, (row - 0.35, 0.7), facecolors=color)
    axes.set_yticks(range(len(rows)), [label for label, _, _ in rows])
    axes.set_ylim(max(len(rows), 1) - 0.5, -0.5)  # first speaker on top
    axes.set_xlim(0.0, max(float(data["duration_seconds"]), 1.0))
    axes.set_xlabel("time (s)")
    axes.grid(axis="x", alpha=0.3)
    axes.set_title(title)
    if not rows:
        axes.text(0.5, 0.5, "no speech", transform=axes.transAxes, ha="center", va="center")
    figure.savefig(png_path, format="png")


def _label(name: str, hex_msi: str, limit: int = 32) -> str:
    fallback = f"MSI {hex_msi}"
    if name == fallback:
        return fallback
    short = name if len(name) <= limit else name[: limit - 1] + "\u2026"
    return f"{short}\n{fallback}"


class TimelineProcessor:
    """Collects the session's speech segments; close() writes timeline.json and timeline.png
    into `directory`. process() only notes where each speaker's audio was last heard."""

    name = "timeline"

    def __init__(
        self,
        session_id: str,
        directory: str | Path,
        names: Callable[[], Mapping[int, str]] = dict,
    ) -> None:
        self.session_id = session_id
        self.directory = Path(directory)
        self._names = names
        self.timeline = SpeakerTimeline()
        # Where each stream's last frame ended: open segments are closed there at the end.
        self._last_seen: dict[int, int] = {}
        self._last_end = 0
        self._closed = False

    def process(self, frame: AudioFrame) -> None:
        t = frame_time(frame.timestamp, frame.original_sender_timestamp)
        end = self._last_end = t + FRAME_TICKS
        seen = self._last_seen
        seen[MIXED] = end
        if frame.unmixed:
            for buffer in frame.unmixed:
                seen[buffer.msi] = frame_time(t, buffer.original_sender_timestamp) + FRAME_TICKS
        else:
            for msi in frame.active_speakers:
                seen[msi] = end

    def on_event(self, event: PipelineEvent) -> None:
        if isinstance(event, SpeechStopped):
            self.timeline.add(event)
        elif isinstance(event, SpeechStarted):
            self.timeline.open(event)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.timeline.finish(self._last_end, self._last_seen)
        try:
            names = dict(self._names())
            self.timeline.write(
                self.directory / JSON_NAME,
                self.directory / PNG_NAME,
                names,
                title=f"Speaker timeline: {self.session_id}",
            )
        except OSError:
            # The call is over and nobody awaits this; say why there is no timeline.
            logger.exception("TimelineProcessor x %s: writing the timeline failed", self.session_id)


def timeline_factory(ctx: ProcessorContext) -> TimelineProcessor:
    """Writes who spoke when as timeline.json and timeline.png when the session ends.

    Option `dir`: where session directories go (default: the context's out_dir)."""
    return TimelineProcessor(ctx.session_id, ctx.session_dir(), ctx.names)
