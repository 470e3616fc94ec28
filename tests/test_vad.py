"""VAD: detector, hysteresis, segments per MSI in mixed and unmixed audio, dominant speaker."""

from __future__ import annotations

import numpy as np
import pytest

from emulator.signal import VoiceLikeSignal
from media.clock import TICKS_PER_SECOND
from media.frames import AudioFrame, Pcm, UnmixedAudioBuffer, silence
from media.pipeline.events import (
    MIXED,
    DominantSpeakerChanged,
    PipelineEvent,
    SpeechStarted,
    SpeechStopped,
)
from media.pipeline.vad import (
    FRAME_TICKS,
    STARTED,
    STOPPED,
    Detector,
    SessionVad,
    SpeechGate,
    VadSettings,
    dbfs,
    frame_energy,
)

T0 = 5 * TICKS_PER_SECOND  # a sender clock that does not start at zero


def at(frame: int) -> int:
    return T0 + frame * FRAME_TICKS


def test_gate_back_dates_onset_ignores_clicks_and_ends_at_last_voiced_frame() -> None:
    gate = SpeechGate(start_ms=60, stop_ms=100)
    flags = [1, 1, 0] + [0] * 3 + [1, 1, 1, 1, 0, 1] + [0] * 5 + [0]
    changes = [(i, gate.update(bool(v), at(i))) for i, v in enumerate(flags)]
    happened = [(i, c) for i, c in changes if c]
    # Two voiced frames (40 ms) are a click: nothing. Then 3 voiced frames open at frame 6
    # (reported when the third arrives), a one-frame gap is bridged, and 5 quiet frames close.
    assert happened == [(8, STARTED), (16, STOPPED)]
    assert gate.start == at(6)
    assert gate.end == at(11) + FRAME_TICKS  # the end of the last voiced frame


def test_detector_floor_and_speech() -> None:
    settings = VadSettings(mode=2, energy_floor_dbfs=-50)
    detector = Detector(settings)
    voice = VoiceLikeSignal(7)
    voiced = sum(detector.voiced(voice.next_frame()) for _ in range(50))
    assert voiced >= 40
    assert not detector.voiced(silence())
    quiet = (np.sin(np.arange(320) / 3) * 80).astype(np.int16)  # about -52 dBFS
    assert dbfs(frame_energy(quiet)) < -50
    assert not detector.voiced(quiet)


def test_settings_refuse_nonsense() -> None:
    for bad in ({"mode": 4}, {"start_ms": 30}, {"stop_ms": 0}, {"energy_floor_dbfs": 3.0}):
        with pytest.raises(ValueError, match="VAD"):
            VadSettings(**bad)


def script_frames(script: dict[int, list[tuple[int, int]]], frames: int) -> list[set[int]]:
    """Who talks in each frame, from {msi: [(first_frame, end_frame), ...]}."""
    return [
        {m for m, spans in script.items() if any(a <= i < b for a, b in spans)}
        for i in range(frames)
    ]


def speakers_pcm(seeds: dict[int, VoiceLikeSignal], who: set[int]) -> dict[int, Pcm]:
    return {msi: seeds[msi].next_frame() for msi in sorted(who)}


SCRIPT = {11: [(5, 40), (70, 90)], 22: [(30, 60)], 33: [(45, 52)]}


def run(unmixed: bool, frames: int = 110) -> list[PipelineEvent]:
    vad = SessionVad("s", VadSettings())
    voices = {msi: VoiceLikeSignal(msi) for msi in SCRIPT}
    events: list[PipelineEvent] = []
    for i, who in enumerate(script_frames(SCRIPT, frames)):
        pcms = speakers_pcm(voices, who)
        total = np.clip(
            sum((p.astype(np.int32) for p in pcms.values()), np.zeros(320, np.int32)), -32768, 32767
        ).astype(np.int16)
        if unmixed:
            buffers = tuple(UnmixedAudioBuffer(m, p, at(i)) for m, p in pcms.items())
            frame = AudioFrame(total, 0, unmixed=buffers, original_sender_timestamp=at(i))
        else:
            frame = AudioFrame(
                total, 0, active_speakers=tuple(pcms), original_sender_timestamp=at(i)
            )
        vad.update(frame, events)
    vad.close(events)
    return events


@pytest.mark.parametrize("unmixed", [True, False], ids=["unmixed", "mixed"])
def test_segments_per_msi_match_the_script(unmixed: bool) -> None:
    events = run(unmixed)
    segments = {
        (e.msi, round((e.start - T0) / FRAME_TICKS), round((e.end - T0) / FRAME_TICKS))
        for e in events
        if isinstance(e, SpeechStopped) and e.msi != MIXED
    }
    expected = {(msi, a, b) for msi, spans in SCRIPT.items() for a, b in spans}
    # Within one frame (20 ms) at either edge: webrtcvad needs a frame to settle on some onsets.
    for msi, a, b in expected:
        assert any(m == msi and abs(x - a) <= 1 and abs(y - b) <= 1 for m, x, y in segments), (
            msi,
            a,
            b,
            sorted(segments),
        )
    assert len(segments) == len(expected)
    started = [e for e in events if isinstance(e, SpeechStarted) and e.msi != MIXED]
    assert len(started) == len(expected)


def test_mixed_stream_has_its_own_track_and_unmixed_does_not() -> None:
    mixed = [e for e in run(unmixed=False) if isinstance(e, SpeechStopped) and e.msi == MIXED]
    assert [
        (round((e.start - T0) / FRAME_TICKS), round((e.end - T0) / FRAME_TICKS)) for e in mixed
    ] == [(5, 90)]  # the 200 ms gap at 60-70 is bridged
    assert not [e for e in run(unmixed=True) if isinstance(e, SpeechStopped) and e.msi == MIXED]


def test_dominant_speaker_needs_to_lead_for_the_hold_time() -> None:
    vad = SessionVad("s", VadSettings(dominant_hold_ms=200))
    loud, soft = VoiceLikeSignal(1), VoiceLikeSignal(2)
    events: list[PipelineEvent] = []
    for i in range(80):
        buffers = []
        if i < 60:
            buffers.append(UnmixedAudioBuffer(7, (soft.next_frame() // 4).astype(np.int16), at(i)))
        if 20 <= i < 26 or i >= 40:  # a 120 ms interjection, then a real takeover
            buffers.append(UnmixedAudioBuffer(9, loud.next_frame(), at(i)))
        frame = AudioFrame(silence(), 0, unmixed=tuple(buffers), original_sender_timestamp=at(i))
        vad.update(frame, events)
    changes = [
        (e.msi, round((e.at - T0) / FRAME_TICKS))
        for e in events
        if isinstance(e, DominantSpeakerChanged)
    ]
    assert changes[0] == (7, 2)  # the first speaker takes the floor as soon as they speak
    assert [m for m, _ in changes] == [7, 9]  # the interjection did not flip it
    # Still inside its earlier segment, 9 leads from frame 40 and needs 10 voiced frames.
    assert 48 <= changes[1][1] <= 50


def test_idle_ticks_end_segments_when_no_frames_come() -> None:
    vad = SessionVad("s", VadSettings(stop_ms=100))
    voice = VoiceLikeSignal(3)
    events: list[PipelineEvent] = []
    for i in range(10):
        buffer = UnmixedAudioBuffer(5, voice.next_frame(), at(i))
        vad.update(
            AudioFrame(silence(), 0, unmixed=(buffer,), original_sender_timestamp=at(i)), events
        )
    assert vad.speaking == (5,)
    for _ in range(5):  # unmixed audio sends nothing while nobody talks
        vad.idle(events)
    stopped = [e for e in events if isinstance(e, SpeechStopped)]
    assert [(e.msi, e.end) for e in stopped] == [(5, at(10))]
    assert vad.speaking == ()
