"""The echo measurement itself: it must find a known delay and reject unrelated audio."""

from __future__ import annotations

import numpy as np

from emulator.analysis import Recording, echo_report
from emulator.signal import VoiceLikeSignal


def _recordings(
    delay_frames: int, lost_head: int, heard_signal_seed: int
) -> tuple[Recording, Recording]:
    sent, heard = Recording(), Recording()
    said, other = VoiceLikeSignal(11), VoiceLikeSignal(heard_signal_seed)
    frames = [said.next_frame() for _ in range(250)]
    for i, pcm in enumerate(frames):
        sent.add(10.0 + i * 0.02, pcm)
    for i in range(lost_head, 250):
        pcm = frames[i] if heard_signal_seed == 11 else other.next_frame()
        # Heard with jittery arrival, `delay_frames` later.
        jitter = 0.003 * np.sin(i)
        heard.add(10.0 + (i + delay_frames) * 0.02 + jitter, pcm)
    return sent, heard


def test_finds_a_known_delay_with_full_correlation() -> None:
    report = echo_report(*_recordings(delay_frames=5, lost_head=30, heard_signal_seed=11))
    assert report.correlation > 0.99
    assert abs(report.delay_ms - 100.0) <= 1.0
    assert (report.frames_sent, report.frames_heard) == (250, 220)


def test_unrelated_audio_does_not_correlate() -> None:
    report = echo_report(*_recordings(delay_frames=5, lost_head=0, heard_signal_seed=99))
    assert report.correlation < 0.3


def test_nothing_heard_is_zero() -> None:
    sent, _ = _recordings(5, 0, 11)
    assert echo_report(sent, Recording()).correlation == 0.0


def test_listener_records_one_frame_per_received_frame_at_its_arrival() -> None:
    from fractions import Fraction

    import av

    from emulator.analysis import Listener

    rec = Recording()
    listener = Listener(rec)
    for i in range(10):
        stereo = np.zeros((1, 1920), dtype=np.int16)  # 20 ms of 48 kHz stereo, interleaved
        frame = av.AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
        frame.sample_rate = 48_000
        frame.pts = i * 960
        frame.time_base = Fraction(1, 48_000)
        listener.add(frame, float(i))
    assert rec.times == [float(i) for i in range(10)]


def test_frame_delays_finds_a_known_per_frame_delay_either_side_of_the_frame_grid() -> None:
    from emulator.analysis import frame_delays

    said = VoiceLikeSignal(3)
    pcm = np.concatenate([said.next_frame() for _ in range(200)])
    sent = Recording()
    for i in range(200):
        sent.add(5.0 + i * 0.02, pcm[i * 320 : (i + 1) * 320])
    for shift in (-100, 0, 130):  # received audio lags (codec history) or leads the grid
        got = Recording()
        stream = np.concatenate([np.zeros(max(0, -shift), np.int16), pcm[max(0, shift) :]])
        for j in range(150):
            got.add(5.0 + j * 0.02 + 0.030, stream[j * 320 : (j + 1) * 320])
        delays = frame_delays(sent, got)
        expected = 0.030 - (0.02 if shift > 0 else 0.0)  # the last sample came one frame later
        assert len(delays) >= 140
        assert abs(float(np.median(delays)) - expected) < 1e-6, shift


def test_talkspurts_are_placed_each_at_their_own_time() -> None:
    """Unmixed audio sends a speaker only while they talk, and the bot echoes what it got from
    everyone: both recordings pause, at different times. Each spurt must land at its own time
    (one offset for a whole recording put the heard audio before the sent: ValueError)."""
    said, other = VoiceLikeSignal(11), VoiceLikeSignal(99)
    frames = [said.next_frame() for _ in range(300)]
    sent, heard = Recording(), Recording()
    for i in range(-40, -10):  # someone else talks first; the bot echoes them
        heard.add(10.0 + (i + 7) * 0.02, other.next_frame())
    for a, b in [(0, 40), (100, 160), (220, 300)]:
        for i in range(a, b):
            sent.add(10.0 + i * 0.02, frames[i])
            heard.add(10.0 + (i + 7) * 0.02 + 0.003 * np.sin(i), frames[i])
    report = echo_report(sent, heard)
    assert abs(report.delay_ms - 140.0) <= 1.0
    assert report.correlation > 0.9
