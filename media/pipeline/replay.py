"""Frames-level replay: record what a session's pipeline received, replay it without a call.
The fixture format (save_frames, load, FixtureError) is fixture_format.py; its names are also
importable from here.

- FrameFixtureRecorder: a tap processor that keeps a bounded copy of the frames it sees, and
  save()s them as a fixture (off the hot loop). It is a Recording (processor.py): idle until
  start(), so the bot only keeps media once Graph has acknowledged the recording status.
  `fixture_recorder_factory` puts one in any live session through BOT_PROCESSORS and saves
  its fixture when the session ends.
- replay() runs processors and the VAD over a fixture on a real HotLoop under a FakeClock: one
  tick per frame, plus the idle ticks a live loop had in the gaps between frames. It is
  deterministic and does not wait: a 6 s fixture replays in about 2 ms (over 1000x real time).
- match_script() scores VAD segments against the fixture's script.

`python -m bot frames record --scenario turns --seconds 6 --out DIR` makes a fixture from an
emulated meeting (the emulator and the bot in one process, as `python -m bot demo`);
`python -m bot frames replay DIR` replays one through the default VAD and scores it against its
script. That command lives in bot/ because recording needs the bot: media/ never imports bot/.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from media.audio_socket import AudioSocket
from media.clock import FakeClock
from media.frames import AUDIO_FRAME_MS, AudioFrame, UnmixedAudioBuffer
from media.pipeline.events import MIXED, EventSink, PipelineEvent, SpeechStopped
from media.pipeline.fixture_format import (
    FORMAT,
    FORMAT_ARRAYS,
    FRAME_TICKS,
    MANIFEST,
    MAX_LOAD_BYTES,
    MAX_LOAD_FRAMES,
    MEDIA,
    MIXED_MODE,
    UNMIXED_MODE,
    VERSION,
    FixtureError,
    FrameFixture,
    FrameManifest,
    Script,
    load,
    save_frames,
)
from media.pipeline.hotloop import TICK_SECONDS, HotLoop, HotLoopStats
from media.pipeline.processor import Processor, ProcessorContext, close_processors
from media.pipeline.vad import VadSettings

# The format's names, importable from here as they were before the format had its own module.
__all__ = [
    "DEFAULT_MAX_FRAMES",
    "FORMAT",
    "FORMAT_ARRAYS",
    "MANIFEST",
    "MAX_GAP_TICKS",
    "MAX_LOAD_BYTES",
    "MAX_LOAD_FRAMES",
    "MEDIA",
    "MIXED_MODE",
    "UNMIXED_MODE",
    "VERSION",
    "FixtureError",
    "FrameFixture",
    "FrameFixtureRecorder",
    "FrameManifest",
    "ReplayResult",
    "ReplayStats",
    "Script",
    "ScriptMatch",
    "clip_script",
    "fixture_recorder_factory",
    "gap_ticks",
    "load",
    "match_script",
    "replay",
    "save_frames",
]

DEFAULT_MAX_FRAMES = 3000  # 60 s of 20 ms frames: under 10 MB of PCM even with four speakers
# A gap longer than this between two frames is replayed as this many idle ticks: by then every
# speech segment has closed and every speaker has been forgotten (vad.py FORGET_FRAMES), so
# more idle ticks would change nothing but the replay's cost.
MAX_GAP_TICKS = 3000


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
