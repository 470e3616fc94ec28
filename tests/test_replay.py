"""Frames-level fixtures (media/pipeline/fixture_format.py, media/pipeline/replay.py): the
format round-trips frames exactly, a bad fixture says what is wrong, and replaying the shipped
fixtures through the VAD gives the scenario's script back, the same way every time, far faster
than real time. `python -m bot frames record|replay` (bot/frame_fixtures.py) makes and checks
one."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bot.frame_fixtures import record_scenario
from media.frames import AUDIO_FRAME_SAMPLES, AudioFrame, Pcm, UnmixedAudioBuffer
from media.pipeline import EchoProcessor
from media.pipeline.events import MIXED, SpeechStopped
from media.pipeline.processor import ProcessorContext, Recording
from media.pipeline.replay import (
    MAX_GAP_TICKS,
    FixtureError,
    FrameFixture,
    FrameFixtureRecorder,
    clip_script,
    fixture_recorder_factory,
    gap_ticks,
    load,
    match_script,
    replay,
    save_frames,
)
from tests.cli import run_bot

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "frames"
SHIPPED = ["turns-unmixed", "turns-mixed"]
TICK = 200_000  # 20 ms in 100 ns ticks


def pcm(value: int) -> Pcm:
    return np.full(AUDIO_FRAME_SAMPLES, value, dtype=np.int16)


def noise(seed: int) -> Pcm:
    return np.random.default_rng(seed).integers(-3000, 3000, AUDIO_FRAME_SAMPLES, dtype=np.int16)


def unmixed_frame(i: int, buffers: list[UnmixedAudioBuffer]) -> AudioFrame:
    """As media/unmixed.py builds them: the mix is the saturated sum of the buffers."""
    total = np.sum([b.pcm.astype(np.int32) for b in buffers], axis=0) if buffers else pcm(0)
    return AudioFrame(
        np.clip(total, -32768, 32767).astype(np.int16),
        timestamp=10_000_000 + i * TICK,
        active_speakers=tuple(b.msi for b in buffers),
        sequence=i + 1,
        unmixed=tuple(buffers),
        original_sender_timestamp=min((b.original_sender_timestamp for b in buffers), default=0),
    )


def synthetic(mode: str) -> list[AudioFrame]:
    if mode == "mixed":
        return [
            AudioFrame(noise(i), 10_000_000 + i * TICK, (7,) if i % 3 else (), i % 3 == 0, i)
            for i in range(5)
        ] + [AudioFrame(pcm(9), 11_000_000, (7, 4_294_967_295), concealed=True)]
    return [
        unmixed_frame(0, [UnmixedAudioBuffer(7, noise(1), 50_000_000)]),
        unmixed_frame(
            1,
            [
                UnmixedAudioBuffer(7, pcm(30_000), 50_200_000),  # the sum saturates
                UnmixedAudioBuffer(8, pcm(10_000), 50_200_100),
            ],
        ),
        unmixed_frame(2, []),  # nobody: a frame with no buffers
        unmixed_frame(3, [UnmixedAudioBuffer(8, noise(2), 0)]),  # sender time unknown
    ]


def recorded(frames: list[AudioFrame], max_frames: int = 100) -> FrameFixtureRecorder:
    recorder = FrameFixtureRecorder(max_frames, recording=True)
    for frame in frames:
        frame.pcm.flags.writeable = False  # as the hot loop hands them over
        assert recorder.process(frame) is None  # a tap: says nothing back
    return recorder


def assert_same(got: list[AudioFrame], want: list[AudioFrame]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert np.array_equal(a.pcm, b.pcm)
        assert (a.timestamp, a.original_sender_timestamp, a.sequence) == (
            b.timestamp,
            b.original_sender_timestamp,
            b.sequence,
        )
        assert (a.active_speakers, a.is_silence, a.concealed) == (
            b.active_speakers,
            b.is_silence,
            b.concealed,
        )
        assert [(x.msi, x.original_sender_timestamp) for x in a.unmixed] == [
            (x.msi, x.original_sender_timestamp) for x in b.unmixed
        ]
        assert all(np.array_equal(x.pcm, y.pcm) for x, y in zip(a.unmixed, b.unmixed, strict=True))


# -- the format ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["mixed", "unmixed"])
def test_recorded_frames_round_trip_exactly(tmp_path: Path, mode: str) -> None:
    frames = synthetic(mode)
    recorder = recorded(frames)
    recorder.save(tmp_path, source="synthetic", script={7: [(0.0, 0.1)]}, media_start_ticks=42)
    fixture = load(tmp_path)
    assert_same(fixture.frames, frames)
    m = fixture.manifest
    assert (m.mode, m.frames, m.source, m.media_start_ticks) == (mode, len(frames), "synthetic", 42)
    assert m.script == {7: ((0.0, 0.1),)}
    stored = set(np.load(tmp_path / "frames.npz").files)
    # Unmixed mode stores the buffers only: each frame's pcm is recomputed as their sum.
    assert ("pcm" in stored) == (mode == "mixed")
    assert ("buffer_pcm" in stored) == (mode == "unmixed")
    assert not fixture.frames[0].pcm.flags.writeable  # replays share the arrays


def test_an_unmixed_frame_that_is_not_its_buffers_sum_keeps_its_pcm(tmp_path: Path) -> None:
    frames = synthetic("unmixed")
    frames[3] = AudioFrame(pcm(1), 0, (8,), unmixed=frames[3].unmixed)
    save_frames(tmp_path, frames, "synthetic")
    assert "pcm" in np.load(tmp_path / "frames.npz").files
    assert_same(load(tmp_path).frames, frames)


def test_the_recorder_is_gated_bounded_and_copies() -> None:
    recorder = FrameFixtureRecorder(max_frames=3)
    assert isinstance(recorder, Recording)  # the bot starts it once Graph acknowledged
    frames = synthetic("mixed")
    recorder.process(frames[0])
    assert recorder.frames == []  # idle until start()
    recorder.start(not_before=frames[1].timestamp)
    for frame in frames:
        recorder.process(frame)
    kept = recorder.frames
    assert [f.sequence for f in kept] == [1, 2, 3]  # frame 0 arrived before not_before
    assert recorder.skipped == 2  # frames 4 and 5, past max_frames
    assert not np.shares_memory(kept[0].pcm, frames[1].pcm)  # the pipeline owns its arrays
    recorder.stop()
    assert not recorder.recording


def test_a_live_session_is_saved_when_it_ends(tmp_path: Path) -> None:
    """BOT_PROCESSORS=media.pipeline.replay:fixture_recorder_factory: the recorder runs in a
    real hot loop (here one replaying a fixture) and close() saves what it kept."""
    ctx = ProcessorContext("s/1", call_id="c-1", out_dir=tmp_path, options={"max_seconds": "3"})
    recorder = fixture_recorder_factory(ctx)
    recorder.start()  # the bot's part, once Graph acknowledged the recording status
    shipped = load(FIXTURES / "turns-mixed")
    replay(shipped, [recorder])  # close()s the processors at the end
    saved = load(tmp_path / "s_1" / "frames-fixture")
    assert_same(saved.frames, shipped.frames[:150])
    assert saved.manifest.source.startswith("live session s/1, call c-1")
    assert f"{len(shipped.frames) - 150} frames past max_frames" in saved.manifest.source
    with pytest.raises(ValueError, match="max_seconds='soon'"):
        fixture_recorder_factory(ProcessorContext("s", options={"max_seconds": "soon"}))


# -- a bad fixture says what is wrong --------------------------------------------------------------


def _manifest(key: str, value: object) -> Callable[[Path], object]:
    def edit(directory: Path) -> None:
        path = directory / "manifest.json"
        data = json.loads(path.read_text())
        data[key] = value
        path.write_text(json.dumps(data))

    return edit


def _arrays(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], object]:
    def edit(directory: Path) -> None:
        path = directory / "frames.npz"
        with np.load(path) as npz:
            arrays = {name: npz[name] for name in npz.files}
        change(arrays)
        with path.open("wb") as out:
            np.savez_compressed(out, **arrays)

    return edit


BROKEN: dict[str, tuple[Callable[[Path], object], str, str]] = {
    "format": (_manifest("format", "wav"), "manifest.json", "format is 'wav'"),
    "version": (_manifest("version", 2), "manifest.json", "version 2 is not supported"),
    "mode": (_manifest("mode", "stereo"), "manifest.json", "mode must be"),
    "frame count": (
        _manifest("frames", 7),
        "frames.npz",
        "array timestamp is int64 (4,), expected int64 (7,)",
    ),
    "script": (_manifest("script", {"ana": [[0, 1]]}), "manifest.json", "'ana' is not an MSI"),
    "unknown key": (_manifest("speed", 2), "manifest.json", "unknown key(s) speed"),
    "no manifest": (lambda d: (d / "manifest.json").unlink(), "manifest.json", "missing"),
    "no media": (lambda d: (d / "frames.npz").unlink(), "frames.npz", "missing"),
    "not a zip": (lambda d: (d / "frames.npz").write_bytes(b"PK?"), "frames.npz", "unreadable"),
    "missing array": (
        _arrays(lambda a: a.pop("buffer_msi")),
        "frames.npz",
        "missing array(s) buffer_msi",
    ),
    "dtype": (
        _arrays(lambda a: a.update(buffer_pcm=a["buffer_pcm"].astype(np.float32))),
        "frames.npz",
        "array buffer_pcm is float32",
    ),
    "buffer owner": (
        _arrays(lambda a: a.update(buffer_frame=a["buffer_frame"] + 9)),
        "frames.npz",
        "frame index out of range",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_fixture_names_the_file_and_the_problem(tmp_path: Path, case: str) -> None:
    save_frames(tmp_path, synthetic("unmixed"), "synthetic")
    edit, file, problem = BROKEN[case]
    edit(tmp_path)
    with pytest.raises(FixtureError) as info:
        load(tmp_path)
    assert info.value.path == tmp_path / file
    assert problem in str(info.value) and file in str(info.value)


# -- replaying the shipped fixtures ----------------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_replayed_vad_segments_match_the_script(name: str) -> None:
    """Onset and offset within 60 ms of the script for at least 95% of utterances, and no made-up
    speech: the live check of tests/test_scenarios.py, without a call, in milliseconds."""
    fixture = load(FIXTURES / name)
    assert fixture.manifest.mode == name.split("-")[1]
    result = replay(fixture, [])
    matches, extra = match_script(fixture, result.segments())
    assert len(matches) >= 9
    within = [m for m in matches if m.within(0.06)]
    assert len(within) / len(matches) >= 0.95, matches
    assert len(extra) <= 1, extra
    assert result.stats.media_seconds > 5
    assert result.stats.speedup > 20  # typically over 1000x: no sleeping, no sockets


@pytest.mark.parametrize("name", SHIPPED)
def test_replay_is_deterministic(name: str) -> None:
    fixture = load(FIXTURES / name)
    first = replay(fixture, [EchoProcessor()])
    second = replay(fixture, [EchoProcessor()])
    assert first.events and first.events == second.events
    assert len(first.sent) == len(fixture.frames) == first.stats.sent  # echo: one per frame
    assert all(np.array_equal(a.pcm, b.pcm) for a, b in zip(first.sent, second.sent, strict=True))


def test_gaps_between_unmixed_frames_are_replayed_as_silence() -> None:
    """Unmixed audio carries nothing while nobody talks; the live VAD learns the silence from
    ticks without frames. Ana's three utterances alone, gaps and all, stay three segments."""
    fixture = load(FIXTURES / "turns-unmixed")
    ana = 5101
    alone = [
        AudioFrame(
            b.pcm,
            f.timestamp,
            (ana,),
            unmixed=(b,),
            original_sender_timestamp=b.original_sender_timestamp,
        )
        for f in fixture.frames
        for b in f.unmixed
        if b.msi == ana
    ]
    result = replay(FrameFixture(alone, fixture.manifest), [])
    assert result.stats.idle_ticks > 50
    spans = [
        (round(fixture.seconds(s.start), 2), round(fixture.seconds(s.end), 2))
        for s in result.segments()
    ]
    assert spans == [(0.2, 1.0), (2.2, 3.4), (4.3, 5.5)]
    assert gap_ticks(alone[0], alone[0]) == 0
    far = AudioFrame(
        alone[0].pcm, 0, original_sender_timestamp=alone[0].original_sender_timestamp * 2
    )
    assert gap_ticks(alone[0], far) == MAX_GAP_TICKS


# -- testing your own processor against a fixture (the pattern docs/processors.md shows) -----------


class FramesPerSpeaker:
    """A user's processor: counts the frames each speaker is heard in."""

    name = "frames-per-speaker"

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.closed = False

    def process(self, frame: AudioFrame) -> AudioFrame | None:
        for msi in frame.active_speakers:
            self.counts[msi] = self.counts.get(msi, 0) + 1
        return None

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("name", SHIPPED)
def test_a_processor_against_a_recorded_meeting(name: str) -> None:
    fixture = load(FIXTURES / name)
    counter = FramesPerSpeaker()
    result = replay(fixture, [counter])
    # Everyone is heard for as long as the script says they talk (50 frames a second), give
    # or take a frame at each edge.
    script = fixture.manifest.script
    talked = {msi: sum(end - start for start, end in spans) for msi, spans in script.items()}
    assert counter.counts == pytest.approx({msi: s * 50 for msi, s in talked.items()}, abs=3)
    assert counter.closed and not result.stats.disabled


# -- helpers ---------------------------------------------------------------------------------------


def test_the_script_is_clipped_to_what_was_recorded() -> None:
    script = {1: [(0.2, 1.0), (2.0, 3.0), (6.1, 7.0)], 2: [(6.5, 7.0)]}
    assert clip_script(script, 0.5, 2.5) == {1: [(0.5, 1.0), (2.0, 2.5)]}


def test_match_script_scores_onsets_offsets_and_false_detections(tmp_path: Path) -> None:
    save_frames(tmp_path, [], "empty", {7: [(1.0, 2.0), (3.0, 4.0)]}, media_start_ticks=0)
    fixture = load(tmp_path)
    segments = [
        SpeechStopped("s", 7, 10_200_000, 20_000_000),  # 1.02-2.0 s
        SpeechStopped("s", 7, 50_000_000, 51_000_000),  # 5.0-5.1 s: nobody spoke
        SpeechStopped("s", MIXED, 10_000_000, 20_000_000),  # another track: never matched
    ]
    matches, extra = match_script(fixture, segments)
    assert [round(m.onset_error, 3) for m in matches] == [0.02, float("inf")]
    assert matches[0].within(0.06) and not matches[1].within(0.06)
    assert extra == segments[1:]


async def test_the_cli_replays_a_fixture(tmp_path: Path) -> None:
    ran = await run_bot("frames", "replay", str(FIXTURES / "turns-unmixed"), env={}, cwd=tmp_path)
    assert ran.code == 0, ran.stderr
    assert "within 60 ms: 9/9" in ran.stdout and "x real time" in ran.stdout
    ran = await run_bot("frames", "replay", str(FIXTURES / "nope"), env={}, cwd=tmp_path)
    assert ran.code == 2 and "manifest.json: missing" in ran.stderr, ran


async def test_a_fixture_is_recorded_from_an_emulated_meeting(tmp_path: Path) -> None:
    """`bot frames record` in-process, for 2 s of the turns meeting: the three speakers'
    first utterances (0.2 to 1.5 s) are in the saved frames and in the clipped script."""
    fixture = await record_scenario("turns", 2.0, tmp_path / "fixture")
    assert fixture.manifest.mode == "unmixed" and fixture.frames
    assert sorted(fixture.manifest.script) == [5101, 5102, 5103]
    assert {msi for f in fixture.frames for msi in f.active_speakers} >= {5101, 5102, 5103}
    assert "`python -m bot frames record --scenario turns --seconds 2`" in fixture.manifest.source
