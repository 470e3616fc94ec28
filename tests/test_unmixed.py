"""Unmixed speaker streams gathered into one frame per 20 ms (media/unmixed.py), on a fake
timeline: complete frames go out at once, a quiet stream does not hold the others back."""

from __future__ import annotations

import numpy as np

from media.frames import AudioFrame, UnmixedAudioBuffer
from media.unmixed import HOLD_SECONDS, StreamSink, UnmixedAssembler


def buf(msi: int, level: int, ts: int = 0) -> UnmixedAudioBuffer:
    return UnmixedAudioBuffer(msi, np.full(320, level, np.int16), ts)


def test_a_frame_goes_out_when_every_live_stream_has_delivered() -> None:
    a = UnmixedAssembler(4)
    (alone,) = a.add(0, buf(10, 100, 5), 0.000)  # the only live stream: no waiting
    assert alone.active_speakers == (10,) and alone.original_sender_timestamp == 5
    assert a.add(0, buf(10, 100), 0.020)[0].active_speakers == (10,)
    # Stream 1 starts: its buffer waits for live stream 0's next one (or the hold).
    assert a.add(1, buf(20, 30000), 0.021) == []
    assert a.deadline == 0.021 + HOLD_SECONDS
    (frame,) = a.add(0, buf(10, 100), 0.040)
    assert frame.active_speakers == (10, 20)
    assert [b.msi for b in frame.unmixed] == [10, 20]
    assert int(frame.pcm[0]) == 30100
    assert a.add(1, buf(20, 30000), 0.060) == []
    (both,) = a.add(0, buf(10, 30000), 0.061)
    assert int(both.pcm[0]) == 32767  # the convenience mix saturates
    assert [f.sequence for f in (alone, frame, both)] == [1, 3, 4]


def test_a_stream_that_went_quiet_holds_the_others_only_briefly() -> None:
    a = UnmixedAssembler(2)
    a.add(0, buf(1, 1), 0.0)
    assert a.add(1, buf(2, 1), 0.001) == []  # waits for live stream 0's next buffer
    assert a.add(0, buf(1, 1), 0.020)[0].active_speakers == (1, 2)
    assert a.add(0, buf(1, 1), 0.040) == []  # stream 1 says nothing more
    assert a.expire(0.040 + HOLD_SECONDS / 2) == []
    (frame,) = a.expire(0.040 + HOLD_SECONDS)
    assert frame.active_speakers == (1,)
    # Once stream 1 is no longer live, stream 0's frames go out at once.
    (later,) = a.add(0, buf(1, 1), 0.200)
    assert later.active_speakers == (1,)


def test_pending_buffers_are_bounded_and_untagged_frames_are_not_attributed() -> None:
    a = UnmixedAssembler(2)
    a.add(1, buf(2, 1), 0.0)
    for i in range(20):  # stream 1 live, stream 0 floods while the consumer stalls
        a.add(0, buf(1, 1), 0.0001 * i)
    assert a.dropped > 0
    got: list[tuple[int, UnmixedAudioBuffer]] = []
    sink = StreamSink(3, lambda stream, b: got.append((stream, b)))
    pcm = np.zeros(320, np.int16)
    sink.push(AudioFrame(pcm, 0, active_speakers=()))
    sink.push(AudioFrame(pcm, 0, active_speakers=(7, 8)))
    sink.push(AudioFrame(pcm, 0, active_speakers=(7,), original_sender_timestamp=99))
    assert sink.untagged == 2
    assert got == [(3, UnmixedAudioBuffer(7, pcm, 99))]
