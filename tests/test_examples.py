"""Example processors: gain, tone, and the transcription hook's hand-over to a worker thread."""

from __future__ import annotations

import logging
import queue
import threading

import numpy as np
import numpy.typing as npt
import pytest

from media.clock import TICKS_PER_SECOND
from media.frames import AudioFrame, UnmixedAudioBuffer
from media.pipeline.events import MIXED, SpeechStarted, SpeechStopped
from media.pipeline.examples import (
    FRAME_TICKS,
    GainProcessor,
    SpeechSegment,
    ToneGenerator,
    TranscriptionHook,
    gain_factory,
    log_segment,
    tone_factory,
    transcription_factory,
)
from media.pipeline.processor import AudioProcessor, ProcessorContext

N = 320
T0 = 5_000 * TICKS_PER_SECOND  # the platform clock of received frames
SENDER = 77 * TICKS_PER_SECOND  # a sender's own capture clock (unmixed buffers)
ALICE, BOB = 0xA11CE, 0xB0B
WAIT = 5.0  # seconds: generous, only reached when something is broken


def received(pcm: npt.NDArray[np.int16], i: int = 0, **kwargs: object) -> AudioFrame:
    frame = AudioFrame(pcm, timestamp=T0 + i * FRAME_TICKS, sequence=i, **kwargs)  # type: ignore[arg-type]
    frame.pcm.flags.writeable = False  # as the hot loop hands it over
    return frame


def marked(msi: int, i: int) -> npt.NDArray[np.int16]:
    """A frame whose samples say whose it is and which one: (msi % 100) * 100 + i."""
    return np.full(N, (msi % 100) * 100 + i, dtype=np.int16)


# Gain ----------------------------------------------------------------------------------------


def test_gain_scales_rounds_and_saturates() -> None:
    pcm = np.array([1000, -1000, 30000, -30000, 0, 1] * 53 + [0, 0], dtype=np.int16)
    frame = received(pcm, 3)
    out = GainProcessor(-6.0).process(frame)
    assert out is not frame and out.sequence == 3 and out.timestamp == frame.timestamp
    assert list(out.pcm[:6]) == [501, -501, 15036, -15036, 0, 1]  # 10^(-6/20) = 0.501
    loud = GainProcessor(20.0).process(frame).pcm
    assert list(loud[:6]) == [10000, -10000, 32767, -32768, 0, 10]  # clipped, never wrapped
    assert np.array_equal(GainProcessor(0.0).process(frame).pcm, pcm)
    assert np.array_equal(frame.pcm, pcm)  # the received frame is untouched


def test_gain_factory_options() -> None:
    assert gain_factory(ProcessorContext("s")).gain_db == -6.0
    assert gain_factory(ProcessorContext("s", options={"gain_db": "3.5"})).gain_db == 3.5
    for bad in ("loud", "nan", "100"):
        with pytest.raises(ValueError, match=f"gain_db={bad!r}"):
            gain_factory(ProcessorContext("s", options={"gain_db": bad}))


# Tone ----------------------------------------------------------------------------------------


def test_tone_is_phase_continuous_one_frame_per_frame() -> None:
    tone = ToneGenerator(1000.0, 0.25)
    silence = received(np.zeros(N, np.int16))
    frames = [tone.process(silence) for _ in range(7)]
    out = np.concatenate([f.pcm for f in frames]).astype(np.float64)
    expected = np.rint(0.25 * 32767 * np.sin(2 * np.pi * 1000 * np.arange(7 * N) / 16_000))
    assert np.abs(out - expected).max() <= 1
    assert isinstance(tone, AudioProcessor)


def test_tone_factory_options() -> None:
    tone = tone_factory(ProcessorContext("s", options={"freq_hz": "300", "amplitude": "0.5"}))
    assert (tone.freq_hz, tone.amplitude) == (300.0, 0.5)
    assert tone_factory(ProcessorContext("s")).freq_hz == 440.0
    for key, bad in (
        ("freq_hz", "9000"),
        ("freq_hz", "x"),
        ("amplitude", "2"),
        ("amplitude", "-1"),
    ):
        with pytest.raises(ValueError, match=f"{key}={bad!r}"):
            tone_factory(ProcessorContext("s", options={key: bad}))


# Transcription hook --------------------------------------------------------------------------


class Collector:
    """A callback that records the segments and the thread each arrived on."""

    def __init__(self) -> None:
        self.segments: queue.Queue[tuple[SpeechSegment, int]] = queue.Queue()

    def __call__(self, segment: SpeechSegment) -> None:
        self.segments.put((segment, threading.get_ident()))

    def get(self) -> SpeechSegment:
        segment, thread = self.segments.get(timeout=WAIT)
        assert thread != threading.get_ident()  # never on the caller's (the hot loop's) thread
        return segment

    def empty(self) -> bool:
        return self.segments.empty()


def unmixed_frame(i: int, msis: tuple[int, ...]) -> AudioFrame:
    buffers = tuple(
        UnmixedAudioBuffer(msi, marked(msi, i), SENDER + i * FRAME_TICKS) for msi in msis
    )
    # As media/unmixed.py builds it: an int32 sum, saturated (an int16 sum would wrap).
    total = np.sum([b.pcm.astype(np.int32) for b in buffers], axis=0)
    pcm = np.clip(total, -32768, 32767).astype(np.int16)
    return received(pcm, i, unmixed=buffers, active_speakers=msis)


def expected(msi: int, frames: range) -> npt.NDArray[np.int16]:
    return np.concatenate([marked(msi, i) for i in frames])


def test_unmixed_segments_get_the_speakers_own_samples_and_bounds() -> None:
    collect = Collector()
    hook = TranscriptionHook(collect, "session-1", names=lambda: {ALICE: "Alice"})
    at = [SENDER + i * FRAME_TICKS for i in range(40)]
    for i in range(30):
        if i == 25:  # as the hot loop: a tick's events before its frame
            hook.on_event(SpeechStarted("session-1", ALICE, at[5]))
            hook.on_event(SpeechStopped("session-1", ALICE, at[5], at[15]))
            hook.on_event(SpeechStopped("session-1", BOB, at[10], at[20]))
        hook.process(unmixed_frame(i, (ALICE, BOB) if i < 20 else (ALICE,)))
    first, second = collect.get(), collect.get()
    hook.close()
    by_msi = {s.msi: s for s in (first, second)}
    alice, bob = by_msi[ALICE], by_msi[BOB]
    assert (alice.session_id, alice.name, alice.start, alice.end) == (
        "session-1",
        "Alice",
        at[5],
        at[15],
    )
    assert alice.final and alice.seconds == 0.2
    assert np.array_equal(alice.pcm, expected(ALICE, range(5, 15)))
    assert bob.name == "MSI 0xB0B"
    assert np.array_equal(bob.pcm, expected(BOB, range(10, 20)))
    assert (hook.delivered, hook.errors, hook.dropped) == (2, 0, 0)


def test_mixed_segments_use_the_mix_for_each_active_speaker_and_mixed() -> None:
    collect = Collector()
    hook = TranscriptionHook(collect, "s")
    at = [T0 + i * FRAME_TICKS for i in range(30)]
    for i in range(20):
        speakers = (ALICE,) if i < 10 else (ALICE, BOB)
        hook.process(received(marked(1, i), i, active_speakers=speakers))
    hook.on_event(SpeechStopped("s", MIXED, at[2], at[18]))
    hook.on_event(SpeechStopped("s", BOB, at[8], at[18]))  # only frames where Bob was active
    segments = {s.msi: s for s in (collect.get(), collect.get())}
    hook.close()
    assert segments[MIXED].name == "Mixed stream"
    assert np.array_equal(segments[MIXED].pcm, expected(1, range(2, 18)))
    assert np.array_equal(segments[BOB].pcm, expected(1, range(10, 18)))


def test_long_utterances_come_in_pieces() -> None:
    collect = Collector()
    hook = TranscriptionHook(collect, "s", max_segment_seconds=0.2)  # 10 frames
    at = [SENDER + i * FRAME_TICKS for i in range(40)]
    hook.on_event(SpeechStarted("s", ALICE, at[0]))
    for i in range(25):
        hook.process(unmixed_frame(i, (ALICE,)))
    hook.on_event(SpeechStopped("s", ALICE, at[0], at[25]))
    pieces = [collect.get() for _ in range(3)]
    hook.close()
    assert [(p.start, p.end, p.final) for p in pieces] == [
        (at[0], at[10], False),
        (at[10], at[20], False),
        (at[20], at[25], True),
    ]
    assert np.array_equal(np.concatenate([p.pcm for p in pieces]), expected(ALICE, range(25)))


def test_close_hands_over_open_segments_and_joins() -> None:
    collect = Collector()
    hook = TranscriptionHook(collect, "s")
    hook.on_event(SpeechStarted("s", ALICE, SENDER + 3 * FRAME_TICKS))
    for i in range(8):
        hook.process(unmixed_frame(i, (ALICE,)))
    hook.close()
    segment = collect.get()
    assert segment.final and np.array_equal(segment.pcm, expected(ALICE, range(3, 8)))
    assert not hook._worker.is_alive()
    hook.close()  # idempotent


def test_queue_drops_oldest_when_the_callback_falls_behind() -> None:
    entered, release = threading.Event(), threading.Event()
    got: list[int] = []

    def slow(segment: SpeechSegment) -> None:
        entered.set()
        release.wait(WAIT)
        got.append(segment.start)

    hook = TranscriptionHook(slow, "s", queue_size=2)
    for i in range(10):
        hook.process(unmixed_frame(i, (ALICE,)))
    at = [SENDER + i * FRAME_TICKS for i in range(10)]
    hook.on_event(SpeechStopped("s", ALICE, at[0], at[1]))
    assert entered.wait(WAIT)  # the worker holds segment 0 in the callback
    for k in range(1, 5):
        hook.on_event(SpeechStopped("s", ALICE, at[k], at[k + 1]))
    assert hook.dropped == 2
    release.set()
    hook.close()
    assert got == [at[0], at[3], at[4]]
    assert hook.delivered == 3


def test_a_raising_callback_is_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    calls = Collector()

    def flaky(segment: SpeechSegment) -> None:
        calls(segment)
        raise RuntimeError("speech service down")

    hook = TranscriptionHook(flaky, "s")
    for i in range(10):
        hook.process(unmixed_frame(i, (ALICE,)))
    at = [SENDER + i * FRAME_TICKS for i in range(10)]
    with caplog.at_level(logging.ERROR, logger="media.pipeline.examples"):
        for k in range(3):
            hook.on_event(SpeechStopped("s", ALICE, at[k], at[k + 1]))  # never raises here
        hook.close()
    assert [calls.get().start for _ in range(3)] == at[:3]
    assert (hook.errors, hook.delivered) == (3, 0)
    assert len([r for r in caplog.records if "callback raised" in r.message]) == 1


def test_close_does_not_wait_forever_for_a_stuck_callback() -> None:
    entered, release = threading.Event(), threading.Event()

    def stuck(segment: SpeechSegment) -> None:
        entered.set()
        release.wait(WAIT)

    hook = TranscriptionHook(stuck, "s", join_timeout=0.05)
    hook.process(unmixed_frame(0, (ALICE,)))
    hook.on_event(SpeechStopped("s", ALICE, SENDER, SENDER + FRAME_TICKS))
    assert entered.wait(WAIT)
    hook.close()  # returns after join_timeout
    assert hook._worker.is_alive()
    release.set()
    hook._worker.join(WAIT)


def test_bounded_number_of_speakers() -> None:
    hook = TranscriptionHook(Collector(), "s", max_speakers=2)
    for i, msi in enumerate((1, 2, 3, 4)):
        hook.process(unmixed_frame(i, (msi,)))
    assert sorted(hook._tracks) == [3, 4]  # the least recently heard gave way
    hook.close()


RECEIVED: list[SpeechSegment] = []


def remember(segment: SpeechSegment) -> None:
    RECEIVED.append(segment)


def test_transcription_factory_resolves_the_callback_option() -> None:
    for path in ("tests.test_examples:remember", "tests.test_examples.remember"):
        RECEIVED.clear()
        ctx = ProcessorContext("s", options={"callback": path}, names=lambda: {ALICE: "Alice"})
        hook = transcription_factory(ctx)
        assert isinstance(hook, AudioProcessor) and hook.name == "transcription"
        hook.process(unmixed_frame(0, (ALICE,)))
        hook.on_event(SpeechStopped("s", ALICE, SENDER, SENDER + FRAME_TICKS))
        hook.close()
        assert [s.name for s in RECEIVED] == ["Alice"]
    for bad in (
        "nodots",
        "tests.test_examples:missing",
        "no_such_module_x:f",
        "tests.test_examples:N",
    ):
        with pytest.raises(ValueError, match=f"callback={bad!r}"):
            transcription_factory(ProcessorContext("s", options={"callback": bad}))
    with pytest.raises(ValueError, match="max_segment_seconds='0'"):
        transcription_factory(ProcessorContext("s", options={"max_segment_seconds": "0"}))


def test_default_callback_logs_one_line(caplog: pytest.LogCaptureFixture) -> None:
    hook = transcription_factory(ProcessorContext("s", names=lambda: {ALICE: "Alice"}))
    hook.process(unmixed_frame(0, (ALICE,)))
    with caplog.at_level(logging.INFO, logger="media.pipeline.examples"):
        hook.on_event(SpeechStopped("s", ALICE, SENDER, SENDER + FRAME_TICKS))
        hook.close()
    lines = [r.getMessage() for r in caplog.records if r.funcName == log_segment.__name__]
    assert lines == ["TranscriptionHook s: Alice (MSI 0xA11CE) spoke 0.02 s"]
