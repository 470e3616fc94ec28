"""The stock baseline: a plain aiortc RTCPeerConnection pair on loopback, aiortc's own encoder
and receiver (its 80 ms jitter prefetch included), sending the emulated participant's voice one
way. Used by echo_latency.py and media_latency.py; run alone it prints its own figures.

Prints one JSON object as the last line. --quick: 3 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emulator.analysis import Listener, Recording, echo_report, frame_delays  # noqa: E402
from emulator.signal import VoiceLikeSignal  # noqa: E402


class StockVoiceTrack(MediaStreamTrack):
    """The same voice as the emulated participant, as raw frames for aiortc's own encoder."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._signal = VoiceLikeSignal(7)
        self._start: float | None = None
        self._index = 0
        self.sent = Recording()

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        self._start = self._start if self._start is not None else now
        due = self._start + self._index * 0.02
        if due > now:
            await asyncio.sleep(due - now)  # pacing a real-time source
        pcm = self._signal.next_frame()
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 16_000
        frame.pts = self._index * 320
        frame.time_base = Fraction(1, 16_000)
        self._index += 1
        self.sent.add(time.monotonic(), pcm)
        return frame


async def stock_run(seconds: float) -> tuple[Recording, Recording]:
    """What was handed to aiortc, and what came out of the receiving track, with times."""
    sender = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    receiver = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    voice = StockVoiceTrack()
    sender.addTrack(voice)
    heard = Recording()
    got_track: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()
    receiver.on("track", lambda track: got_track.set_result(track))
    await sender.setLocalDescription(await sender.createOffer())
    await receiver.setRemoteDescription(sender.localDescription)
    await receiver.setLocalDescription(await receiver.createAnswer())
    await sender.setRemoteDescription(receiver.localDescription)
    try:
        track = await asyncio.wait_for(got_track, 10)
        listener = Listener(heard)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            frame = await asyncio.wait_for(track.recv(), 5)
            assert isinstance(frame, av.AudioFrame)
            listener.add(frame, time.monotonic())
    finally:
        await sender.close()
        await receiver.close()
    return voice.sent, heard


async def stock_one_way(seconds: float) -> tuple[float, float]:
    """The playout-timeline delay (as echo_latency measures) and the correlation."""
    sent, heard = await stock_run(seconds)
    report = echo_report(sent, heard)
    return report.delay_ms, report.correlation


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s")
    args = parser.parse_args()
    sent, heard = asyncio.run(stock_run(3.0 if args.quick else 10.0))
    delays = sorted(d * 1000 for d in frame_delays(sent, heard))
    print(
        json.dumps(
            {
                "stock_p50_ms": round(statistics.median(delays), 1),
                "stock_p99_ms": round(delays[int(0.99 * (len(delays) - 1))], 1),
                "frames": len(delays),
            }
        )
    )
