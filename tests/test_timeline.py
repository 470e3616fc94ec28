"""Speaker timeline: JSON from segments, open segments closed at the end, a readable PNG."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import numpy as np

from media.clock import TICKS_PER_SECOND
from media.frames import AudioFrame, UnmixedAudioBuffer
from media.pipeline.events import MIXED, PlayerLow, SpeechStarted, SpeechStopped
from media.pipeline.processor import AudioProcessor, ProcessorContext
from media.pipeline.timeline import SpeakerTimeline, TimelineProcessor, timeline_factory

S = TICKS_PER_SECOND
T0 = 1_000 * S  # an arbitrary clock origin: JSON times are relative to the first segment
ALICE, BOB, GONE = 0x5EED, 0xB0B, 0xDEAD
NAMES = {ALICE: "Alice", BOB: "Bob"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def stopped(msi: int, start: float, end: float) -> SpeechStopped:
    return SpeechStopped("s", msi, T0 + round(start * S), T0 + round(end * S))


def sample_timeline() -> SpeakerTimeline:
    timeline = SpeakerTimeline()
    timeline.add(stopped(BOB, 2.0, 3.5))
    timeline.add(stopped(ALICE, 0.5, 1.5))
    timeline.add(stopped(ALICE, 4.0, 6.25))
    timeline.add(stopped(GONE, 7.0, 7.5))
    timeline.add(stopped(MIXED, 0.5, 7.5))
    return timeline


def test_json_has_names_msis_segments_and_talk_time() -> None:
    data = sample_timeline().to_json(NAMES)
    assert data["origin_ticks"] == T0 + S // 2
    assert data["duration_seconds"] == 7.0
    speakers = data["speakers"]
    assert [s["name"] for s in speakers] == ["Alice", "Bob", "MSI 0xDEAD"]  # by first speech
    alice = speakers[0]
    assert alice["msi"] == ALICE and alice["msi_hex"] == "0x5EED"
    assert alice["segments"] == [[0.0, 1.0], [3.5, 5.75]]
    assert alice["talk_seconds"] == 3.25 and alice["segment_count"] == 2
    assert speakers[1]["segments"] == [[1.5, 3.0]]
    assert data["mixed"] == {"segments": [[0.0, 7.0]], "segment_count": 1, "talk_seconds": 7.0}
    assert all(s["msi"] != MIXED for s in speakers)
    json.dumps(data)  # plain JSON types only


def test_explicit_origin() -> None:
    timeline = SpeakerTimeline(origin=T0)
    timeline.add(stopped(ALICE, 0.5, 1.5))
    assert timeline.to_json({})["speakers"][0]["segments"] == [[0.5, 1.5]]


def test_finish_closes_open_segments() -> None:
    timeline = SpeakerTimeline(origin=T0)
    timeline.open(SpeechStarted("s", ALICE, T0 + 1 * S))
    timeline.open(SpeechStarted("s", BOB, T0 + 2 * S))
    timeline.add(stopped(BOB, 2.0, 3.0))  # Bob's closed normally: not closed twice
    timeline.open(SpeechStarted("s", GONE, T0 + 4 * S))
    timeline.finish(T0 + 10 * S, last_seen={GONE: T0 + 5 * S})
    data = timeline.to_json(NAMES)
    by_name = {s["name"]: s["segments"] for s in data["speakers"]}
    assert by_name == {"Alice": [[1.0, 10.0]], "Bob": [[2.0, 3.0]], "MSI 0xDEAD": [[4.0, 5.0]]}
    timeline.finish(T0 + 20 * S)  # nothing open any more
    assert len(timeline.segments) == 3


def test_write_makes_json_and_a_readable_png(tmp_path: Path) -> None:
    json_path, png_path = tmp_path / "out" / "t.json", tmp_path / "out" / "t.png"
    sample_timeline().write(json_path, png_path, NAMES, title="Test call")
    assert json.loads(json_path.read_text())["speakers"][0]["name"] == "Alice"
    assert png_path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(str(png_path))
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 500
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["t.json", "t.png"]


def test_empty_timeline_still_writes_sensible_files(tmp_path: Path) -> None:
    SpeakerTimeline().write(tmp_path / "t.json", tmp_path / "t.png", {})
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["speakers"] == [] and data["mixed"]["segments"] == []
    assert data["duration_seconds"] == 0.0
    assert matplotlib.image.imread(str(tmp_path / "t.png")).ndim == 3


def frame(t: float, speakers: tuple[int, ...] = (), unmixed: tuple[int, ...] = ()) -> AudioFrame:
    pcm = np.zeros(320, np.int16)
    buffers = tuple(UnmixedAudioBuffer(msi, pcm, T0 + round(t * S)) for msi in unmixed)
    return AudioFrame(pcm, timestamp=T0 + round(t * S), active_speakers=speakers, unmixed=buffers)


def test_processor_collects_events_and_writes_on_close(tmp_path: Path) -> None:
    ctx = ProcessorContext("session-1", out_dir=tmp_path, names=lambda: NAMES)
    processor = timeline_factory(ctx)
    assert isinstance(processor, AudioProcessor) and processor.name == "timeline"
    processor.on_event(SpeechStarted("session-1", ALICE, T0))
    processor.on_event(PlayerLow("session-1", 100))  # not a speech event: ignored
    for i in range(50):
        processor.process(frame(i * 0.02, speakers=(ALICE,)))
    processor.on_event(stopped(ALICE, 0.0, 0.6))
    processor.on_event(SpeechStarted("session-1", BOB, T0 + S // 2))
    for i in range(50, 100):
        processor.process(frame(i * 0.02, unmixed=(BOB,)))
    processor.close()  # Bob still talking: closed where his last frame ended
    processor.close()  # idempotent
    assert processor.directory == tmp_path / "session-1"  # beside the recorder's files
    data = json.loads((processor.directory / "timeline.json").read_text())
    assert [(s["name"], s["segments"]) for s in data["speakers"]] == [
        ("Alice", [[0.0, 0.6]]),
        ("Bob", [[0.5, 2.0]]),
    ]
    assert (processor.directory / "timeline.png").read_bytes()[:8] == PNG_SIGNATURE


def test_factory_directory_option_and_unsafe_session_ids(tmp_path: Path) -> None:
    ctx = ProcessorContext("a/../b c", out_dir=tmp_path / "x", options={"dir": str(tmp_path)})
    assert timeline_factory(ctx).directory == tmp_path / "a_.._b_c"


def test_close_reports_an_unwritable_directory_without_raising(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    processor = TimelineProcessor("s", blocker / "sub")
    processor.on_event(stopped(ALICE, 0, 1))
    processor.close()
    assert not (blocker / "sub").exists()
