"""Echo round-trip delay through the bot, against a stock aiortc pair's one-way delay.

Both are measured in this run, on this machine, by the same analysis (emulator/analysis.py):
- echo_delay_ms: the participant hands a frame to its sender -> the emulator's media processor
  -> the bot's receive path -> hot loop (echo) -> the bot's send path -> back at the participant
  (whose receiver is stock aiortc, with its fixed 80 ms jitter prefetch).
- stock_one_way_ms: a plain aiortc RTCPeerConnection pair on loopback, stock encoder and
  receiver, sending the same signal one way (about 108 ms measured on a 2-core machine).

Prints one JSON object as the last line. --quick: 3 runs of 3 s each.
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

from stock_pair import stock_one_way  # noqa: E402

from bot.demo import run_demo  # noqa: E402


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
