"""The hot loop: events batched per tick, outputs mixed with the player, isolation of raising
and slow processors (with an injected timer, and for real on a running thread)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np

from emulator.signal import VoiceLikeSignal
from media.audio_socket import AudioSocket
from media.clock import FakeClock, MonotonicClock
from media.frames import AudioFrame, UnmixedAudioBuffer, VideoFrame, silence
from media.pipeline import EchoProcessor, HotLoop
from media.pipeline.events import (
    PipelineEvent,
    PlayerLow,
    ProcessorDisabled,
    SpeechStarted,
    SpeechStopped,
)
from media.pipeline.hotloop import MAX_SLOW_CALLS, TICK_SECONDS
from media.pipeline.player import OutgoingPlayer, PcmSource
from media.pipeline.vad import FRAME_TICKS
from media.video import VideoSocket, VideoSocketSettings

WAIT_SECONDS = 10.0


class Batches:
    """The sink: every batch the loop handed over, in order."""

    def __init__(self) -> None:
        self.batches: list[tuple[PipelineEvent, ...]] = []

    def __call__(self, events: Sequence[PipelineEvent]) -> None:
        self.batches.append(tuple(events))

    def all(self) -> list[PipelineEvent]:
        return [e for b in self.batches for e in b]


def frame(i: int, pcm: np.ndarray | None = None, msi: int | None = None) -> AudioFrame:
    data = silence() if pcm is None else pcm
    unmixed = (UnmixedAudioBuffer(msi, data, i * FRAME_TICKS),) if msi is not None else ()
    return AudioFrame(
        data,
        timestamp=i * FRAME_TICKS,
        sequence=i,
        unmixed=unmixed,
        original_sender_timestamp=i * FRAME_TICKS,
    )


def test_events_of_all_sessions_go_out_once_per_tick() -> None:
    sink = Batches()
    loop = HotLoop(FakeClock(), sink=sink)
    sockets = {name: AudioSocket() for name in ("a", "b")}
    for name, socket in sockets.items():
        loop.add(name, socket, [])
    voices = {"a": VoiceLikeSignal(1), "b": VoiceLikeSignal(2)}
    for i in range(6):
        for name, socket in sockets.items():
            socket.receive_ring.push(frame(i, voices[name].next_frame(), msi=ord(name)))
        loop.tick()
    # Both sessions' speakers start in the same tick (the third voiced frame): one batch.
    started = [b for b in sink.batches if any(isinstance(e, SpeechStarted) for e in b)]
    assert len(started) == 1
    assert {(e.session_id, e.msi) for e in started[0] if isinstance(e, SpeechStarted)} == {
        ("a", ord("a")),
        ("b", ord("b")),
    }
    assert loop.speaking("a") == (ord("a"),)


class Listener:
    """Records the order of on_event and process calls; says nothing."""

    name = "listener"

    def __init__(self) -> None:
        self.log: list[str] = []

    def on_event(self, event: PipelineEvent) -> None:
        self.log.append(type(event).__name__)

    def process(self, frame: AudioFrame) -> AudioFrame | None:
        self.log.append(f"frame {frame.sequence}")
        return None


def test_processors_hear_a_frames_events_before_the_frame() -> None:
    loop = HotLoop(FakeClock())
    socket = AudioSocket()
    listener = Listener()
    loop.add("s", socket, [listener])
    voice = VoiceLikeSignal(4)
    for i in range(3):
        socket.receive_ring.push(frame(i, voice.next_frame(), msi=9))
    loop.tick()
    assert listener.log == [
        "frame 0",
        "frame 1",
        "SpeechStarted",
        "DominantSpeakerChanged",
        "frame 2",
    ]
    assert socket.send_ring.drain() == []  # a tap says nothing


class Constant:
    def __init__(self, name: str, value: int) -> None:
        self.name = name
        self.value = value

    def process(self, frame: AudioFrame) -> AudioFrame | None:
        return AudioFrame(np.full(320, self.value, np.int16), frame.timestamp)


def test_outputs_and_the_player_are_mixed_with_saturation() -> None:
    loop = HotLoop(FakeClock())
    socket = AudioSocket()
    player = OutgoingPlayer("s", low_water_ms=40)
    player.play(PcmSource(np.full(320 * 3, 20_000, np.int16)))
    loop.add("s", socket, [Constant("a", 10_000), Constant("b", 5_000)], player=player)
    socket.receive_ring.push(frame(0))
    loop.tick()  # 10000 + 5000 + 20000 saturates
    socket.receive_ring.push(frame(1))
    socket.receive_ring.push(frame(2))
    loop.tick()  # the player adds to the first frame's output only: one player frame per tick
    loop.tick()  # nothing received: the player's frame goes alone
    loop.tick()  # the player is empty: nothing at all
    sent = [int(f.pcm[0]) for f in socket.send_ring.drain()]
    assert sent == [32767, 32767, 15_000, 20_000]


def test_a_reading_processor_cannot_change_what_the_next_one_sees() -> None:
    class Vandal:
        name = "vandal"

        def process(self, frame: AudioFrame) -> AudioFrame | None:
            frame.pcm[:] = 1
            return None

    loop = HotLoop(FakeClock())
    socket = AudioSocket()
    loop.add("s", socket, [Vandal(), EchoProcessor()])
    socket.receive_ring.push(frame(0, np.full(320, 7, np.int16)))
    loop.tick()
    assert [int(f.pcm[0]) for f in socket.send_ring.drain()] == [7]
    assert loop.stats.processor_failures == 1


def test_player_paces_one_frame_per_tick_and_says_when_low() -> None:
    sink = Batches()
    loop = HotLoop(FakeClock(), sink=sink)
    socket = AudioSocket(capacity=100)
    player = OutgoingPlayer("s", low_water_ms=100)
    player.play(PcmSource(np.arange(320 * 10, dtype=np.int16)))
    loop.add("s", socket, [], player=player)
    for _ in range(12):
        loop.tick()
    sent = socket.send_ring.drain()
    assert len(sent) == 10
    assert np.array_equal(np.concatenate([f.pcm for f in sent]), np.arange(3200, dtype=np.int16))
    lows = [e for e in sink.all() if isinstance(e, PlayerLow)]
    assert len(lows) == 1 and lows[0].session_id == "s"


class Ticking:
    """A fake perf_counter that processors move forward (how long their calls take)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Costly:
    """A processor whose calls take `seconds` of the injected timer."""

    def __init__(self, name: str, timer: Ticking, seconds: float) -> None:
        self.name = name
        self.timer = timer
        self.seconds = seconds
        self.calls = 0

    def process(self, frame: AudioFrame) -> AudioFrame | None:
        self.calls += 1
        self.timer.now += self.seconds
        return frame


def test_slow_processors_are_disabled_with_an_event() -> None:
    timer = Ticking()
    sink = Batches()
    loop = HotLoop(FakeClock(), sink=sink, perf_counter=timer)
    stalls = Costly("stalls", timer, TICK_SECONDS * 3)  # one call longer than a tick
    dawdles = Costly("dawdles", timer, 0.008)  # over the 5 ms budget, under a tick
    fine = Costly("fine", timer, 0.0001)
    sockets = [AudioSocket(), AudioSocket(), AudioSocket()]
    loop.add("stall", sockets[0], [stalls])
    loop.add("dawdle", sockets[1], [dawdles])
    loop.add("fine", sockets[2], [fine])
    for i in range(10):
        for socket in sockets:
            socket.receive_ring.push(frame(i))
        loop.tick()
    assert stalls.calls == 1
    assert dawdles.calls == MAX_SLOW_CALLS
    assert fine.calls == 10
    disabled = [e for e in sink.all() if isinstance(e, ProcessorDisabled)]
    assert [(e.session_id, e.processor, e.reason) for e in disabled] == [
        ("stall", "stalls", "slow"),
        ("dawdle", "dawdles", "slow"),
    ]
    assert "60.0 ms" in disabled[0].detail
    assert len(sockets[2].send_ring.drain()) == 10


class Sleeper:
    """Blocks the hot loop for real: what a processor doing I/O on the loop would do."""

    name = "sleeper"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.calls = 0

    def process(self, frame: AudioFrame) -> AudioFrame | None:
        self.calls += 1
        time.sleep(self.seconds)  # the misbehaviour under test, not a wait
        return frame


class Raiser:
    name = "raiser"

    def __init__(self) -> None:
        self.calls = 0

    def process(self, frame: AudioFrame) -> AudioFrame | None:
        self.calls += 1
        raise RuntimeError("bug in user code")


class Counter:
    """Counts frames and sets `done` when it has seen `expect` of them."""

    name = "counter"

    def __init__(self, expect: int) -> None:
        self.expect = expect
        self.sequences: list[int] = []
        self.done = threading.Event()

    def process(self, frame: AudioFrame) -> AudioFrame | None:
        self.sequences.append(frame.sequence)
        if len(self.sequences) >= self.expect:
            self.done.set()
        return frame


def test_sleeping_and_raising_processors_do_not_cost_other_sessions_a_frame() -> None:
    """On the real thread and clock: a feeder pushes one frame per 20 ms into four sessions; a
    processor that sleeps 100 ms per call and one that raises are disabled, and the two good
    sessions get every frame, in order, none dropped from their rings."""
    frames = 60
    sink = Batches()
    clock = MonotonicClock()
    loop = HotLoop(clock, sink=sink)
    sleeper, raiser = Sleeper(0.1), Raiser()
    good = [Counter(frames), Counter(frames)]
    sockets = [AudioSocket() for _ in range(4)]
    loop.add("sleepy", sockets[0], [sleeper, EchoProcessor()])
    loop.add("buggy", sockets[1], [raiser, EchoProcessor()])
    loop.add("good-1", sockets[2], [good[0]])
    loop.add("good-2", sockets[3], [good[1]])
    stop = threading.Event()

    def feed() -> None:
        deadline = clock.now()
        for i in range(frames):
            for socket in sockets:
                socket.receive_ring.push(frame(i))
            deadline += TICK_SECONDS
            if clock.wait_until(deadline, stop):  # pacing the feed, not waiting for an event
                return

    feeder = threading.Thread(target=feed, name="feeder")
    loop.start()
    feeder.start()
    try:
        for counter in good:
            assert counter.done.wait(WAIT_SECONDS)
    finally:
        stop.set()
        feeder.join(WAIT_SECONDS)
        loop.stop()
    assert sleeper.calls == 1
    assert raiser.calls == 5
    for counter, socket in zip(good, sockets[2:], strict=True):
        assert counter.sequences == list(range(frames))
        assert socket.stats["receive_dropped"] == 0
        assert socket.stats["sent"] == frames
    reasons = {(e.session_id, e.reason) for e in sink.all() if isinstance(e, ProcessorDisabled)}
    assert reasons == {("sleepy", "slow"), ("buggy", "raised")}
    # The sessions whose processors were disabled keep flowing through the rest (the echo).
    assert sockets[0].stats["sent"] == sockets[1].stats["sent"] == frames
    # The 100 ms stall made at most a few ticks late once; the loop caught up from the rings.
    assert loop.stats.late_ticks <= 2


def test_remove_closes_open_segments_and_returns_the_processors() -> None:
    sink = Batches()
    loop = HotLoop(FakeClock(), sink=sink)
    socket = AudioSocket()
    listener = Listener()
    loop.add("s", socket, [listener])
    voice = VoiceLikeSignal(5)
    for i in range(5):
        socket.receive_ring.push(frame(i, voice.next_frame(), msi=3))
    loop.tick()
    assert loop.remove("s") == [listener]
    stopped = [e for e in sink.all() if isinstance(e, SpeechStopped)]
    assert [(e.msi, e.start, e.end) for e in stopped] == [(3, 0, 5 * FRAME_TICKS)]
    assert listener.log[-1] == "SpeechStopped"
    assert loop.remove("s") == []


class Pictures:
    """A video processor: remembers (socket, msi, size) of what it got."""

    name = "pictures"

    def __init__(self) -> None:
        self.seen: list[tuple[int, int | None, int]] = []

    def process_video(self, frame: VideoFrame) -> None:
        self.seen.append((frame.socket_id, frame.msi, frame.width))


def nv12(width: int, socket_id: int, msi: int) -> VideoFrame:
    data = np.zeros(width * (width // 2) * 3 // 2, np.uint8)
    return VideoFrame(data, width, width // 2, timestamp=0, msi=msi, socket_id=socket_id)


def test_video_processors_get_each_sockets_newest_frame_once() -> None:
    loop = HotLoop(FakeClock())
    sockets = [
        VideoSocket(i, VideoSocketSettings("recvonly"), lambda m: None, lambda e: None)
        for i in range(2)
    ]
    pictures = Pictures()
    loop.add("s", AudioSocket(), [pictures], video_sockets=sockets)
    sockets[0].receive_ring.push(nv12(320, 0, 7))
    sockets[0].receive_ring.push(nv12(640, 0, 7))  # latest frame wins
    sockets[1].receive_ring.push(nv12(320, 1, 8))
    loop.tick()
    loop.tick()  # nothing new: nothing delivered twice
    assert pictures.seen == [(0, 7, 640), (1, 8, 320)]


def test_without_video_processors_the_sockets_are_left_to_the_bot() -> None:
    loop = HotLoop(FakeClock())
    socket = VideoSocket(0, VideoSocketSettings("recvonly"), lambda m: None, lambda e: None)
    loop.add("s", AudioSocket(), [EchoProcessor()], video_sockets=[socket])
    socket.receive_ring.push(nv12(320, 0, 7))
    loop.tick()
    received = socket.receive()
    assert received is not None and received.width == 320


class Spiky:
    """Fast, except on the calls listed: those take 8 ms (over budget, under a tick)."""

    name = "spiky"

    def __init__(self, timer: Ticking, slow_on: set[int], gc: list[float] | None = None) -> None:
        self.timer = timer
        self.slow_on = slow_on
        self.gc = gc
        self.calls = 0

    def process(self, frame: AudioFrame) -> AudioFrame | None:
        self.calls += 1
        if self.calls in self.slow_on:
            self.timer.now += 0.008
        if self.gc is not None:  # a 40 ms full collection lands in every call
            self.timer.now += 0.040
            self.gc[0] += 0.040
        return None


def test_rare_slow_calls_are_forgiven_and_gc_pauses_are_not_the_processors() -> None:
    timer = Ticking()
    collected = [0.0]
    loop = HotLoop(FakeClock(), perf_counter=timer, gc_seconds=lambda: collected[0])
    rare = Spiky(timer, slow_on={10, 400, 800})  # three strikes, but 390 good calls apart
    unlucky = Spiky(timer, slow_on=set(), gc=collected)
    sockets = [AudioSocket(), AudioSocket()]
    loop.add("rare", sockets[0], [rare])
    loop.add("unlucky", sockets[1], [unlucky])
    for i in range(900):
        for socket in sockets:
            socket.receive_ring.push(frame(i))
        loop.tick()
    assert rare.calls == unlucky.calls == 900
    assert loop.stats.disabled == []
    assert loop.stats.slow_calls == 3
