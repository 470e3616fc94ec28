"""Incoming call to answer request: how fast the bot decides while its media loop carries audio.

The emulator runs on its own thread and loop. The bot first joins a meeting whose participant
speaks and is echoed back, so the media loop, the codec threads and the hot loop are busy for the
whole run. Then, one after another, the emulator rings the bot (POST /emulator/calls/incoming);
a handler answers each with app-hosted media; the call establishes (the media processor connects
over TLS and ICE/DTLS), and the bot hangs up.

answer_ms = the emulator receiving POST .../answer minus the moment the bench asked the emulator
to ring (so it includes ringing, notification signing and delivery, JWT validation, dispatch,
media-session creation and the answer request). The floor measured in the same run:
https_rtt_ms, an HTTPS request to the emulator on the same connection.

Prints one JSON object as the last line. --quick: 40 calls.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.app import Bot  # noqa: E402
from bot.call import Call  # noqa: E402
from bot.demo import start_local_environment  # noqa: E402
from media.pipeline import EchoProcessor  # noqa: E402

WITHIN = 30.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(calls: int, out: Path) -> dict[str, Any]:
    env = await start_local_environment(out)
    settings, emulator, meeting, emulator_thread = (
        env.settings,
        env.emulator,
        env.meeting,
        env.thread,
    )
    base = emulator.base_url
    bot = Bot(settings, processors=lambda ctx: [EchoProcessor()])
    client_ssl = ssl.create_default_context(cafile=settings.ca_file)
    answered: dict[str, asyncio.Future[Call]] = {}

    @bot.calls.events.on("incoming_call")
    async def answer(call: Call) -> None:
        await call.answer()
        answered.setdefault(call.id, asyncio.get_running_loop().create_future()).set_result(call)

    latencies: list[float] = []
    rtts: list[float] = []
    await bot.start()
    try:
        meeting_call = await bot.join(emulator.join_url(meeting))
        await meeting_call.wait_for("established", WITHIN)
        media = bot.media.session(meeting_call.media_session_id or "")
        frames_before = media.stats["received"] if media else 0
        async with aiohttp.ClientSession() as admin:
            for _ in range(calls):
                t = time.monotonic()
                async with admin.get(f"{base}/emulator/calls", ssl=client_ssl) as response:
                    await response.read()
                rtts.append(time.monotonic() - t)
                t0 = time.monotonic()
                async with admin.post(
                    f"{base}/emulator/calls/incoming",
                    json={"appId": settings.app_id, "callbackUri": bot.callback_url},
                    ssl=client_ssl,
                ) as response:
                    call_id = (await response.json())["callId"]
                future = answered.setdefault(call_id, asyncio.get_running_loop().create_future())
                call = await asyncio.wait_for(future, WITHIN)
                await call.wait_for("established", WITHIN)
                request = next(
                    r for r in reversed(emulator.requests) if r.path.endswith(f"{call_id}/answer")
                )
                latencies.append(request.received_at - t0)
                await call.hang_up()
                await call.wait_for("terminated", WITHIN)
        frames_during = (media.stats["received"] if media else 0) - frames_before
        await meeting_call.hang_up()
    finally:
        await bot.stop()
        await asyncio.to_thread(emulator_thread.stop)
    return {
        "calls": len(latencies),
        "answer_p50_ms": round(statistics.median(latencies) * 1000, 2),
        "answer_p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "answer_max_ms": round(max(latencies) * 1000, 2),
        "https_rtt_p50_ms": round(statistics.median(rtts) * 1000, 2),
        "answer_p50_over_rtt": round(statistics.median(latencies) / statistics.median(rtts), 1),
        "media_frames_received_meanwhile": frames_during,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="40 calls (under a minute)")
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        result = asyncio.run(run(40 if args.quick else max(1, args.calls), Path(out)))
    print(json.dumps(result))
