"""Rings and the hot loop: bounded, ordered, and a failing processor never stops the loop."""

from __future__ import annotations

import threading

import numpy as np

from media.audio_socket import AudioSocket
from media.clock import FakeClock
from media.frames import AudioFrame
from media.pipeline import EchoProcessor, HotLoop
from media.pipeline.hotloop import MAX_CONSECUTIVE_FAILURES
from media.ring import Ring


def frame(n: int) -> AudioFrame:
    return AudioFrame(np.full(320, n, dtype=np.int16), timestamp=n, sequence=n)


def test_ring_drops_oldest_and_counts() -> None:
    ring: Ring[int] = Ring(3)
    for i in range(5):
        ring.push(i)
    assert ring.drain() == [2, 3, 4]
    assert (ring.pushed, ring.dropped) == (5, 2)
    assert ring.pop() is None


def test_audio_frame_rejects_wrong_shapes() -> None:
    for bad in (np.zeros(319, np.int16), np.zeros(320, np.float32)):
        try:
            AudioFrame(bad, timestamp=0)  # type: ignore[arg-type]
        except ValueError:
            continue
        raise AssertionError("accepted a malformed frame")


def test_echo_returns_every_frame_in_order() -> None:
    loop = HotLoop(FakeClock())
    socket = AudioSocket()
    loop.add("s", socket, [EchoProcessor()])
    for i in range(4):
        socket.receive_ring.push(frame(i))
    loop.tick()
    sent = socket.send_ring.drain()
    assert [f.sequence for f in sent] == [0, 1, 2, 3]
    assert loop.stats.frames == 4


class Exploding:
    name = "exploding"

    def __init__(self) -> None:
        self.calls = 0

    def process(self, frame: AudioFrame) -> AudioFrame | None:
        self.calls += 1
        raise RuntimeError("boom")


def test_raising_processor_is_disabled_and_other_sessions_carry_on() -> None:
    loop = HotLoop(FakeClock())
    bad_socket, good_socket = AudioSocket(), AudioSocket()
    bad = Exploding()
    loop.add("bad", bad_socket, [bad, EchoProcessor()])
    loop.add("good", good_socket, [EchoProcessor()])
    for i in range(MAX_CONSECUTIVE_FAILURES + 3):
        bad_socket.receive_ring.push(frame(i))
        good_socket.receive_ring.push(frame(i))
        loop.tick()
    assert bad.calls == MAX_CONSECUTIVE_FAILURES  # then disabled, never called again
    assert loop.stats.disabled == ["bad:exploding"]
    assert len(good_socket.send_ring.drain()) == MAX_CONSECUTIVE_FAILURES + 3
    # Frames after the failing processor still flow through the rest of the chain.
    assert len(bad_socket.send_ring.drain()) == MAX_CONSECUTIVE_FAILURES + 3


def test_run_ticks_on_the_20ms_grid_of_its_clock() -> None:
    clock = FakeClock(100.0)
    loop = HotLoop(clock)
    socket = AudioSocket()
    loop.add("s", socket, [EchoProcessor()])
    socket.receive_ring.push(frame(1))
    deadlines: list[float] = []
    original = clock.wait_until

    def wait_until(deadline: float, stop: threading.Event) -> bool:
        deadlines.append(deadline)
        if len(deadlines) == 10:
            stop.set()
        return original(deadline, stop)

    clock.wait_until = wait_until  # type: ignore[method-assign]
    loop.run()
    assert loop.stats.ticks == 10
    assert loop.stats.late_ticks == 0
    assert np.allclose(np.diff([100.0, *deadlines]), 0.02)
    assert len(socket.send_ring.drain()) == 1


def test_a_stalled_clock_counts_late_ticks_and_reanchors() -> None:
    clock = FakeClock(0.0)
    loop = HotLoop(clock)
    calls = 0
    original = clock.wait_until

    def wait_until(deadline: float, stop: threading.Event) -> bool:
        nonlocal calls
        calls += 1
        if calls == 3:
            clock.advance(0.5)  # the thread was starved for half a second
        if calls == 6:
            stop.set()
        return original(deadline, stop)

    clock.wait_until = wait_until  # type: ignore[method-assign]
    loop.run()
    assert loop.stats.late_ticks == 1
    assert loop.stats.ticks == 6


class WrongType:
    name = "wrong-type"

    def process(self, frame: AudioFrame) -> AudioFrame | None:
        return frame.pcm  # type: ignore[return-value]


def test_a_processor_returning_a_non_frame_is_a_failure_not_a_broken_send() -> None:
    loop = HotLoop(FakeClock())
    socket = AudioSocket()
    loop.add("s", socket, [WrongType(), EchoProcessor()])
    socket.receive_ring.push(frame(1))
    loop.tick()
    assert loop.stats.processor_failures == 1
    assert [type(f) for f in socket.send_ring.drain()] == [AudioFrame]


def test_something_that_is_not_a_processor_is_refused_up_front() -> None:
    import pytest

    class Nameless:
        def process(self, frame: AudioFrame) -> AudioFrame | None:
            return frame

    with pytest.raises(TypeError, match="not an AudioProcessor"):
        HotLoop(FakeClock()).add("s", AudioSocket(), [Nameless()])  # type: ignore[list-item]
