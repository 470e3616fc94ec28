"""The outgoing player: one frame per tick, gapless, bounded, and a low-water event per crossing."""

from __future__ import annotations

import threading
import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from media.frames import AUDIO_FRAME_SAMPLES
from media.pipeline.events import PlayerLow
from media.pipeline.player import OutgoingPlayer, PcmSource, ToneSource, WavSource

N = AUDIO_FRAME_SAMPLES


def ramp(n: int, offset: int = 0) -> npt.NDArray[np.int16]:
    return ((np.arange(n) + offset) % 30000).astype(np.int16)


def drain(player: OutgoingPlayer) -> list[npt.NDArray[np.int16]]:
    frames = []
    while (frame := player.next_frame()) is not None:
        frames.append(frame)
    return frames


def test_one_second_is_exactly_fifty_frames_with_the_right_samples() -> None:
    player = OutgoingPlayer("s")
    samples = ramp(16_000)
    player.play(PcmSource(samples))
    assert player.playing and player.queued_ms == 1000
    frames = drain(player)
    assert len(frames) == 50
    assert all(f.dtype == np.int16 and f.shape == (N,) for f in frames)
    assert np.array_equal(np.concatenate(frames), samples)
    assert not player.playing and player.queued_ms == 0
    assert player.next_frame() is None
    assert player.frames_played == 50


def test_sources_play_back_to_back_and_the_last_frame_is_padded() -> None:
    player = OutgoingPlayer("s")
    first, second = ramp(500), ramp(700, offset=1000)
    player.play(PcmSource(first))
    player.play(PcmSource(second))
    frames = drain(player)
    assert len(frames) == 4  # 1200 samples: 3 whole frames and one partial
    out = np.concatenate(frames)
    assert np.array_equal(out[:500], first)  # no gap at the join inside frame 2
    assert np.array_equal(out[500:1200], second)
    assert not out[1200:].any()


def test_source_is_copied_and_can_be_played_twice() -> None:
    samples = ramp(N)
    source = PcmSource(samples)
    samples[:] = 0
    player = OutgoingPlayer("s")
    player.play(source)
    player.play(source)
    frames = drain(player)
    assert len(frames) == 2 and np.array_equal(frames[0], frames[1])
    assert np.array_equal(frames[0], ramp(N))


def test_tone_is_phase_continuous_across_frames_and_sources() -> None:
    player = OutgoingPlayer("s")
    player.play(ToneSource(440.0, 0.5, amplitude=0.5))
    out = np.concatenate(drain(player)).astype(np.float64)
    assert len(out) == 8000
    t = np.arange(8000) / 16_000
    expected = np.rint(0.5 * 32767 * np.sin(2 * np.pi * 440.0 * t))
    assert np.abs(out - expected).max() <= 1
    assert np.abs(out).max() == pytest.approx(0.5 * 32767, abs=2)


def test_wav_source_reads_any_rate_and_channel_count(tmp_path: Path) -> None:
    path = tmp_path / "stereo48k.wav"
    left = (np.sin(2 * np.pi * 300 * np.arange(48_000) / 48_000) * 10_000).astype("<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(48_000)
        wav.writeframes(np.stack([left, left], axis=1).tobytes())
    source = WavSource(path)
    assert source.length == 16_000
    player = OutgoingPlayer("s")
    player.play(source)
    out = np.concatenate(drain(player)).astype(np.float64)
    expected = np.sin(2 * np.pi * 300 * np.arange(16_000) / 16_000) * 10_000
    assert np.abs(out - expected).max() < 60  # linear interpolation's error at 300 Hz
    with pytest.raises(ValueError, match="not a readable"):
        WavSource(tmp_path / "missing.wav")


def test_low_water_event_once_per_crossing() -> None:
    player = OutgoingPlayer("s", low_water_ms=200)
    player.play(PcmSource(ramp(16_000)))  # 1 s: armed
    events: list[PlayerLow] = []
    for _ in range(50):
        assert player.next_frame() is not None
        if (event := player.take_event()) is not None:
            events.append(event)
    # 1000 ms - 41 frames = 180 ms: the first frame below 200 ms.
    assert events == [PlayerLow("s", 180)]
    assert player.take_event() is None

    # Re-armed only by rising above the mark again; a short top-up below it does not re-arm.
    player.play(PcmSource(ramp(1600)))  # 100 ms
    drain(player)
    assert player.take_event() is None
    player.play(PcmSource(ramp(8000)))  # 500 ms
    seen = []
    for _ in range(25):
        player.next_frame()
        if (event := player.take_event()) is not None:
            seen.append(event.queued_ms)
    assert seen == [180]


def test_clear_stops_at_once_without_an_event() -> None:
    player = OutgoingPlayer("s")
    player.play(PcmSource(ramp(16_000)))
    player.next_frame()
    player.clear()
    assert not player.playing and player.next_frame() is None and player.take_event() is None


def test_queue_is_bounded() -> None:
    player = OutgoingPlayer("s", max_queued_seconds=1)
    player.play(ToneSource(440, 0.75))
    with pytest.raises(ValueError, match="exceed"):
        player.play(ToneSource(440, 0.5))
    player.play(ToneSource(440, 0.25))
    assert player.queued_ms == 1000


def test_bad_arguments() -> None:
    for bad in (np.zeros(10, np.float32), np.zeros((2, 10), np.int16)):
        with pytest.raises(ValueError):
            PcmSource(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ToneSource(9000, 1)
    with pytest.raises(ValueError):
        ToneSource(440, 1, amplitude=1.5)
    with pytest.raises(ValueError):
        ToneSource(440, 0)
    with pytest.raises(ValueError):
        OutgoingPlayer("s", low_water_ms=-1)


def test_play_from_another_thread_while_draining() -> None:
    player = OutgoingPlayer("s", low_water_ms=0)
    sizes = [97 + (i * 37) % 500 for i in range(200)]
    # Never zero, so the silence that pads a frame taken while the queue ran dry is told apart.
    chunks = [ramp(n, offset=i) + 1 for i, n in enumerate(sizes)]
    done = threading.Event()

    def producer() -> None:
        for chunk in chunks:
            player.play(PcmSource(chunk))
        done.set()

    thread = threading.Thread(target=producer)
    thread.start()
    got: list[npt.NDArray[np.int16]] = []
    # Drain like a hot loop that outruns the producer: None means "nothing queued yet".
    while not (done.is_set() and not player.playing):
        frame = player.next_frame()
        if frame is not None:
            got.append(frame)
    thread.join(5)
    out = np.concatenate(got)
    assert np.array_equal(out[out != 0], np.concatenate(chunks))  # all of it, once, in order
    assert player.frames_played == len(got) and player.queued_ms == 0
