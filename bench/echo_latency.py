"""Echo round-trip delay through the bot, against a stock aiortc pair's one-way delay.

Both are measured in this run, on this machine, by the same analysis (emulator/analysis.py):
- echo_delay_ms: the participant hands a frame to its sender -> the emulator's media processor
  -> the bot's receive path -> hot loop (echo) -> the bot's send path -> back at the participant
  (whose receiver is stock aiortc, with its fixed 80 ms jitter prefetch).
- stock_one_way_ms: a plain aiortc RTCPeerConnection pair on loopback, stock encoder and
  receiver, sending the same signal one way (perf-baseline.md measured about 108 ms).

Prints one JSON object as the last line. --quick: 3 runs of 3 s each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.demo import run_demo  # noqa: E402
from emulator.analysis import Listener, Recording, echo_report  # noqa: E402
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


async def stock_one_way(seconds: float) -> tuple[float, float]:
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
    report = echo_report(voice.sent, heard)
    return report.delay_ms, report.correlation


async def main(runs: int, seconds: float) -> dict[str, object]:
    echo_ms: list[float] = []
    echo_corr: list[float] = []
    stock_ms: list[float] = []
    stock_corr: list[float] = []
    wall: list[float] = []
    for i in range(runs):
        with tempfile.TemporaryDirectory() as out:
            summary = await run_demo(seconds, Path(out), show=False)
        echo_ms.append(float(summary["echo_delay_ms"]))
        echo_corr.append(float(summary["echo_correlation"]))
        wall.append(float(summary["wall_seconds"]))
        delay, corr = await stock_one_way(seconds)
        stock_ms.append(round(delay, 1))
        stock_corr.append(round(corr, 4))
        print(
            f"run {i + 1}: echo {echo_ms[-1]:.1f} ms (r={echo_corr[-1]:.3f}), "
            f"stock one-way {stock_ms[-1]:.1f} ms (r={stock_corr[-1]:.3f})",
            file=sys.stderr,
        )
    echo = statistics.median(echo_ms)
    stock = statistics.median(stock_ms)
    return {
        "echo_delay_ms": echo,
        "stock_one_way_ms": stock,
        "echo_over_stock_one_way": round(echo / stock, 3),
        "echo_correlation": statistics.median(echo_corr),
        "stock_correlation": statistics.median(stock_corr),
        "echo_delay_runs_ms": echo_ms,
        "stock_one_way_runs_ms": stock_ms,
        "demo_wall_seconds": statistics.median(wall),
        "runs": runs,
        "seconds_per_run": seconds,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 runs of 3 s (under a minute)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    runs, seconds = (3, 3.0) if args.quick else (max(3, args.runs), args.seconds)
    print(json.dumps(asyncio.run(main(runs, seconds))))
