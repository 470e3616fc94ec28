"""AudioSender's loop on the media loop, against an in-repo fake of the one aiortc seam it
uses (the transceiver: negotiated codecs, mid, sender SSRC, transport._send_rtp)."""

from __future__ import annotations

import asyncio
import selectors
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from aiortc import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from media import dtmf
from media.clock import MonotonicClock
from media.frames import AudioFrame
from media.ring import Ring
from media.sender import AudioSender

OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)
EVENTS = RTCRtpCodecParameters(
    mimeType="audio/telephone-event", clockRate=48000, channels=1, payloadType=126
)


@dataclass
class FakeTransport:
    sent: list[tuple[float, RtpPacket]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    wanted: int = 0

    async def _send_rtp(self, data: bytes) -> None:
        self.sent.append((asyncio.get_running_loop().time(), RtpPacket.parse(data)))
        if len(self.sent) >= self.wanted:
            self.arrived.set()


class FakeSender:
    def __init__(self, transport: FakeTransport) -> None:
        self._ssrc = 0x5EED
        self.transport = transport
        self._RTCRtpSender__ntp_timestamp = 0
        self._RTCRtpSender__rtp_timestamp = 0
        self._RTCRtpSender__octet_count = 0
        self._RTCRtpSender__packet_count = 0


class FakeTransceiver:
    def __init__(self, transport: FakeTransport, dtmf_too: bool = True) -> None:
        self._codecs = [OPUS, EVENTS] if dtmf_too else [OPUS]
        self._headerExtensions: list[Any] = []
        self.mid = "0"
        self.sender = FakeSender(transport)


def frame() -> AudioFrame:
    return AudioFrame(np.zeros(320, np.int16), timestamp=0)


async def run(ring: Ring[AudioFrame], transport: FakeTransport, wanted: int) -> AudioSender:
    sender = AudioSender(ring, asyncio.get_running_loop(), MonotonicClock())
    sender.bind(FakeTransceiver(transport))  # type: ignore[arg-type]
    transport.wanted = wanted
    sender.start()
    return sender


async def test_a_burst_is_paced_to_real_time_with_contiguous_timestamps() -> None:
    ring: Ring[AudioFrame] = Ring(16)
    transport = FakeTransport()
    for _ in range(6):
        ring.push(frame())  # the application hands over 120 ms at once
    sender = await run(ring, transport, 6)
    await asyncio.wait_for(transport.arrived.wait(), 5)
    await sender.stop()
    times = [t for t, _ in transport.sent]
    packets = [p for _, p in transport.sent]
    assert all(b - a >= 0.018 for a, b in zip(times, times[1:], strict=False))  # never early
    assert [p.timestamp - packets[0].timestamp for p in packets] == [i * 960 for i in range(6)]
    assert [(p.sequence_number - packets[0].sequence_number) & 0xFFFF for p in packets] == list(
        range(6)
    )
    assert [p.marker for p in packets] == [1, 0, 0, 0, 0, 0]
    assert {p.payload_type for p in packets} == {111} and all(p.ssrc == 0x5EED for p in packets)
    assert vars(transceiver_sender(sender))["_RTCRtpSender__packet_count"] == 6


def transceiver_sender(sender: AudioSender) -> Any:
    return sender._transceiver.sender  # type: ignore[union-attr]


async def test_a_tone_takes_audio_slots_in_the_same_sequence_space() -> None:
    ring: Ring[AudioFrame] = Ring(16)
    transport = FakeTransport()
    sender = await run(ring, transport, 1)
    sender.send_tones("7")
    # 5 event packets + 2 repeats of the end; audio frames pushed meanwhile are replaced.
    transport.wanted = 7
    ring.push(frame())
    await asyncio.wait_for(transport.arrived.wait(), 5)
    transport.arrived.clear()
    transport.wanted = 8
    ring.push(frame())  # after the tone (and its gap) audio resumes
    await asyncio.wait_for(transport.arrived.wait(), 5)
    await sender.stop()
    packets = [p for _, p in transport.sent]
    events = [p for p in packets if p.payload_type == 126]
    assert len(events) == 7
    assert {p.timestamp for p in events} == {events[0].timestamp}  # one event, one timestamp
    assert events[0].marker == 1 and dtmf.unpack(events[-1].payload)[:2] == (7, True)
    seqs = [p.sequence_number for p in packets]
    assert [(s - seqs[0]) & 0xFFFF for s in seqs] == list(range(len(seqs)))
    assert packets[-1].payload_type == 111
    assert sender.stats.replaced_by_dtmf == 1


async def test_tones_need_telephone_event_negotiated() -> None:
    ring: Ring[AudioFrame] = Ring(16)
    sender = AudioSender(ring, asyncio.get_running_loop(), MonotonicClock())
    sender.bind(FakeTransceiver(FakeTransport(), dtmf_too=False))  # type: ignore[arg-type]
    assert not sender.dtmf_negotiated
    with pytest.raises(dtmf.DtmfError, match="telephone-event"):
        sender.send_tones("1")


class JumpingSelector(selectors.DefaultSelector):
    """When nothing is ready, time jumps to the loop's next timer instead of waiting for it."""

    def __init__(self) -> None:
        super().__init__()
        self.virtual = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if not ready and timeout:
            self.virtual += timeout
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time, so paced sending runs deterministically and at once."""

    def __init__(self) -> None:
        self._jumping = JumpingSelector()
        super().__init__(self._jumping)

    def time(self) -> float:
        return self._jumping.virtual


class LoopClock:
    """The loop's (virtual) time as the sender's Clock."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def now(self) -> float:
        return self._loop.time()

    def wait_until(self, deadline: float, stop: Any) -> bool:  # pragma: no cover - unused
        raise NotImplementedError


class InlineExecutor(Executor):
    """Encodes on the calling thread: no thread finishes while virtual time jumps."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_result(fn(*args, **kwargs))
        return future


def test_a_backlog_left_by_a_stall_does_not_stay_as_standing_delay() -> None:
    # After a stall, 5 frames wait at once, and the application goes on handing over one
    # frame per 20 ms (the hot loop's ticks). Pacing alone keeps the 4 extra frames queued
    # forever: every frame after them would go out 80 ms late (bench/attack.py measured the
    # live call's echo delay stepping from ~95 ms to ~175 ms and staying there).
    loop = VirtualTimeLoop()
    try:
        sojourns, stats = loop.run_until_complete(_stall_then_real_time(loop))
    finally:
        loop.close()
    assert max(sojourns[:50]) >= 0.079  # the backlog waits at first: a burst is paced
    assert max(sojourns[-100:]) <= 0.001  # and is gone about a second later
    assert stats.caught_up == 4  # the 4 frames that stood, once


async def _stall_then_real_time(loop: asyncio.AbstractEventLoop) -> tuple[list[float], Any]:
    ring: Ring[AudioFrame] = Ring(16)
    transport = FakeTransport(wanted=200)
    sender = AudioSender(ring, loop, LoopClock(loop), executor=InlineExecutor())
    sender.bind(FakeTransceiver(transport))  # type: ignore[arg-type]
    pushed: list[float] = []
    t0 = loop.time()

    def push(k: int) -> None:
        pushed.append(loop.time())
        ring.push(frame())
        if k < 200:
            loop.call_at(t0 + (k + 1 - 4) * 0.020, push, k + 1)

    for _ in range(4):
        pushed.append(t0)
        ring.push(frame())
    push(4)
    sender.start()
    await asyncio.wait_for(transport.arrived.wait(), 60)  # virtual seconds
    await sender.stop()
    sent = [t for t, _ in transport.sent]
    return [s - p for s, p in zip(sent, pushed, strict=False)], sender.stats
