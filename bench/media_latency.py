"""One-way audio delay from the emulated participant to the bot's audio socket, against a stock
aiortc pair measured in the same run.

bot: the participant hands a 20 ms frame to its sender -> SRTP over loopback -> the bot's own
receive path (jitter buffer, decode, resample) -> the frame is pushed into the audio socket's
receive ring (AudioFrame.timestamp). stock: the same voice through a plain aiortc pair, from
hand-over to the receiving track's output (aiortc's jitter buffer included). Per-frame delays
come from emulator.analysis.frame_delays; p50/p99 are medians over the runs.

Prints one JSON object as the last line. --quick: 3 runs of 3 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stock_pair import stock_run  # noqa: E402

from bot.app import Bot  # noqa: E402
from bot.demo import start_local_environment  # noqa: E402
from emulator.analysis import Recording, frame_delays  # noqa: E402
from media.clock import TICKS_PER_SECOND  # noqa: E402
from media.frames import AudioFrame  # noqa: E402


class Received:
    """Keeps what the audio socket delivered, stamped when it entered the receive ring."""

    name = "received"

    def __init__(self) -> None:
        self.recording = Recording()

    def process(self, frame: AudioFrame) -> AudioFrame | None:
        self.recording.add(frame.timestamp / TICKS_PER_SECOND, frame.pcm)
        return None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def bot_run(seconds: float, out: Path) -> tuple[Recording, Recording]:
    env = await start_local_environment(out)
    emulator, meeting, thread = env.emulator, env.meeting, env.thread
    received = Received()
    bot = Bot(env.settings, processors=lambda ctx: [received])
    await bot.start()
    try:
        call = await bot.join(emulator.join_url(meeting))
        await call.wait_for("established", 30)
        await asyncio.sleep(seconds)  # the measurement window, not a wait for an event
        link = emulator.calls[call.id].link
        await call.hang_up()
        await call.wait_for("terminated", 30)
    finally:
        await bot.stop()
        await asyncio.to_thread(thread.stop)
    assert link is not None
    return link.sent, received.recording


async def main(runs: int, seconds: float) -> dict[str, object]:
    bot_p50, bot_p99, stock_p50, stock_p99 = [], [], [], []
    for i in range(runs):
        with tempfile.TemporaryDirectory() as out:
            sent, got = await bot_run(seconds, Path(out))
        bot = [d * 1000 for d in frame_delays(sent, got)]
        sent, got = await stock_run(seconds)
        stock = [d * 1000 for d in frame_delays(sent, got)]
        bot_p50.append(statistics.median(bot))
        bot_p99.append(percentile(bot, 0.99))
        stock_p50.append(statistics.median(stock))
        stock_p99.append(percentile(stock, 0.99))
        print(
            f"run {i + 1}: bot p50 {bot_p50[-1]:.1f} p99 {bot_p99[-1]:.1f} ms "
            f"({len(bot)} frames); stock p50 {stock_p50[-1]:.1f} p99 {stock_p99[-1]:.1f} ms",
            file=sys.stderr,
        )
    result: dict[str, object] = {
        "bot_p50_ms": round(statistics.median(bot_p50), 2),
        "bot_p99_ms": round(statistics.median(bot_p99), 2),
        "stock_p50_ms": round(statistics.median(stock_p50), 2),
        "stock_p99_ms": round(statistics.median(stock_p99), 2),
        "runs": runs,
        "seconds_per_run": seconds,
    }
    result["bot_over_stock_p50"] = round(
        statistics.median(bot_p50) / statistics.median(stock_p50), 3
    )
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 runs of 3 s (under a minute)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    runs, seconds = (3, 3.0) if args.quick else (max(3, args.runs), args.seconds)
    print(json.dumps(asyncio.run(main(runs, seconds))))
