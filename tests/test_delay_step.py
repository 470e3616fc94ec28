"""A sustained change of the network delay on mixed audio (a route change, a Wi-Fi handover).

The real receive path (media/engine.py `AudioReceiver` over media/jitter.py, the project's Opus
encoder and decoder) on an injected clock: 20 ms packets of voice-like audio cross a simulated
path whose one-way delay steps up mid-call and, in most runs, back down later. The path is one
route with one queue, so packets never overtake each other: when the delay falls, the packets
queued behind the slow ones arrive together. Nothing is lost on the path.

What is expected, and why:

- Step up by S (a multiple of 20 ms, above the 100 ms underrun grace): no packet arrives for S.
  A continuous stream keeps its 20 ms cadence through that hole, so the buffer has to make up
  S / 20 ms frames, and that is all it may make up: the packets sent after the step come for
  slots it has already played out, and after a hold-off it moves its playout point back to them
  and plays every one.
- Step down: the queued packets arrive in a burst and are played at once; nothing is made up
  and no delay stays behind (the burst is the catch-up).
- So over a run, frames made up == the sum of S / 20 ms over the steps up, no packet is late or
  dropped, every packet is decoded exactly once, and from 2 s after each step at least 95% of the
  frames in every 1 s window come from packets (here: all of them).

The path's jitter is kept under half a packet (8 ms): within it the count above is exact, as
the buffer decides on the 20 ms playout clock.
"""

from __future__ import annotations

import functools
import logging
import random
from dataclasses import dataclass

from aiortc.rtp import RtpPacket

from emulator.signal import VoiceLikeSignal
from media.clock import TICKS_PER_SECOND, FakeClock, to_ticks
from media.codec import RTP_TICKS_PER_FRAME, OpusEncoder
from media.engine import AudioReceiver
from media.frames import AudioFrame
from media.ring import Ring

logger = logging.getLogger(__name__)

FRAME = 0.020
START = 10.0  # the media clock at the first packet (capture times of 0 mean "unknown")
BASE_DELAY = 0.040
PATH_JITTER = 0.008  # uniform [0, 8 ms) on top of the delay: under half a packet
SPEAKER = 0x5150
WINDOW = 1.0
SETTLE = 2.0  # the buffer has re-anchored by then: every window after it is checked
STREAM = 700  # packets in the longest run (14 s)


@functools.cache
def payloads() -> tuple[bytes, ...]:
    """20 ms Opus packets of voice-like audio, encoded once for every run here."""
    encoder, signal = OpusEncoder(), VoiceLikeSignal(11)
    return tuple(encoder.encode(signal.next_frame())[0] for _ in range(STREAM))


def packet(k: int) -> RtpPacket:
    p = RtpPacket(payload_type=111, sequence_number=(60_000 + k) & 0xFFFF, ssrc=0x1234)
    p.timestamp = (k * RTP_TICKS_PER_FRAME) & 0xFFFFFFFF
    p.payload = payloads()[k]
    p.csrc = [SPEAKER]
    # The capture time travels as abs-capture-time (media/negotiation.py reads it into this
    # attribute): each decoded frame says which packet it came from, hence its delay.
    p.extensions.capture_ticks = to_ticks(sent(k))  # type: ignore[attr-defined]
    return p


def sent(k: int) -> float:
    return START + k * FRAME


@dataclass(frozen=True)
class Step:
    at: float  # seconds into the call: packets sent from then on take the new delay
    by: float  # seconds added to the path's delay (negative: the delay falls)


def arrivals(n: int, steps: list[Step], seed: int = 7) -> list[float]:
    """One route, one queue: a packet waits the path's delay at its send time plus jitter, and
    never arrives before the packet ahead of it."""
    rng = random.Random(seed)
    out: list[float] = []
    for k in range(n):
        delay = BASE_DELAY + sum(s.by for s in steps if k * FRAME >= s.at)
        at = sent(k) + delay + rng.uniform(0.0, PATH_JITTER)
        out.append(max(at, out[-1]) if out else at)
    return out


@dataclass
class Run:
    n: int
    steps: list[Step]
    frames: list[AudioFrame]
    receiver: AudioReceiver

    def at(self, frame: AudioFrame) -> float:
        """Seconds into the call at which the frame came out of the receive path."""
        return frame.timestamp / TICKS_PER_SECOND - START

    def until(self, step: Step) -> float:
        """When the next step comes, or the run ends."""
        later = [s.at for s in self.steps if s.at > step.at]
        return min(later) if later else self.at(self.frames[-1])

    def windows(self, step: Step) -> list[tuple[float, float]]:
        """(start, share of frames decoded from packets) of each whole 1 s window from 2 s
        after the step to the next step or the end of the run."""
        end = self.until(step)
        out = []
        start = step.at + SETTLE
        while start + WINDOW <= end:
            inside = [f for f in self.frames if start <= self.at(f) < start + WINDOW]
            decoded = sum(not f.concealed for f in inside)
            out.append((start, decoded / len(inside) if inside else 0.0))
            start += WINDOW
        return out

    def delays_ms(self, start: float, end: float) -> list[float]:
        """Delivery delay of the decoded frames that came out in [start, end): capture to out."""
        return [
            (f.timestamp - f.original_sender_timestamp) / TICKS_PER_SECOND * 1000
            for f in self.frames
            if not f.concealed and start <= self.at(f) < end
        ]

    def silent_ms(self, step: Step) -> float:
        """How long the output went without a decoded frame around the step: from the last
        decoded frame before its packets' delay changed to the first decoded after."""
        decoded = [self.at(f) for f in self.frames if not f.concealed]
        before = max(t for t in decoded if t < step.at + BASE_DELAY)
        after = [t for t in decoded if t > before + FRAME / 2]
        return (min(after) - before) * 1000 if after else float("inf")


async def run(n: int, steps: list[Step]) -> Run:
    """Feed the arrivals in time order through the receiver, firing its deadline whenever it
    falls due before the next packet, as its loop timer does for real."""
    clock = FakeClock(START)
    ring: Ring[AudioFrame] = Ring(64)
    receiver = AudioReceiver(ring, clock, continuous=True)
    frames: list[AudioFrame] = []
    for k, arrival in enumerate(arrivals(n, steps)):
        while (deadline := receiver.deadline) is not None and deadline <= arrival:
            clock.advance(deadline - clock.now())
            receiver.expire()
            frames += ring.drain()
        clock.advance(arrival - clock.now())
        await receiver.handle_rtp(packet(k))
        frames += ring.drain()
    receiver.close()
    assert ring.dropped == 0
    return Run(n, steps, frames, receiver)


def check(result: Run, expected_made_up: int) -> None:
    receiver = result.receiver
    made_up = [f for f in result.frames if f.concealed]
    for step in result.steps:
        windows = result.windows(step)
        logger.info(
            "step %+.0f ms at %.1f s: output without decoded audio for %.0f ms; decoded per 1 s "
            "window from 2 s after: %s; re-anchors %d",
            step.by * 1000,
            step.at,
            result.silent_ms(step),
            [f"{share:.0%}" for _, share in windows],
            receiver.jitter.reanchors,
        )
        assert windows, "the run is too short to check this step"
        assert all(share >= 0.95 for _, share in windows), windows
        # And no delay beyond the path's stays behind (the burst after a fall is played at
        # once): every decoded frame 2 s on is out within the path's delay plus its jitter.
        delay = BASE_DELAY + sum(s.by for s in result.steps if s.at <= step.at)
        settled = result.delays_ms(step.at + SETTLE, result.until(step))
        late_ms = [d - delay * 1000 for d in settled]
        assert late_ms and max(late_ms) < PATH_JITTER * 1000 + 1, max(late_ms)
    assert receiver.stats.late_or_duplicate == 0  # every packet arrived in time to be played
    # Each packet decoded exactly once, in order (a frame carries its packet's capture time).
    decoded = [f.original_sender_timestamp for f in result.frames if not f.concealed]
    assert decoded == [to_ticks(sent(k)) for k in range(result.n)]
    assert len(made_up) == receiver.stats.concealed == expected_made_up
    assert receiver.stats.decode_errors == 0


async def test_a_300_ms_rise_then_fall_is_followed_both_ways() -> None:
    result = await run(700, [Step(3.0, 0.300), Step(8.0, -0.300)])
    # The rise leaves 15 slots with no packet (300 / 20); the fall makes none up.
    check(result, expected_made_up=15)
    assert result.receiver.jitter.reanchors == 1


async def test_a_120_ms_rise_then_fall_is_followed_both_ways() -> None:
    result = await run(550, [Step(3.0, 0.120), Step(7.0, -0.120)])
    check(result, expected_made_up=6)  # 120 / 20
    assert result.receiver.jitter.reanchors == 1


async def test_a_rise_that_never_comes_down() -> None:
    result = await run(550, [Step(3.0, 0.300)])
    check(result, expected_made_up=15)
    assert result.receiver.jitter.reanchors == 1
