"""10% random packet loss between the media processor and the bot, both sides real aiortc:
the bot's audio socket delivers concealed frames, not gaps, and nothing raises."""

from __future__ import annotations

import asyncio

from bot.app import Bot
from bot.devcerts import DevCerts
from emulator import Emulator
from media.frames import AudioFrame
from tests.conftest import emulator_config, settings_for

FRAMES = 150  # 3 s of audio


class Collect:
    name = "collect"

    def __init__(self) -> None:
        self.frames: list[AudioFrame] = []
        self.enough = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    def process(self, frame: AudioFrame) -> AudioFrame | None:
        self.frames.append(frame)
        if len(self.frames) == FRAMES:
            self._loop.call_soon_threadsafe(self.enough.set)  # the hot loop's own thread
        return None


async def test_ten_percent_loss_is_concealed_not_gapped(certs: DevCerts) -> None:
    emulator = Emulator(emulator_config(certs, media_loss_rate=0.10, media_loss_seed=11))
    await emulator.start()
    collect = Collect()
    bot = Bot(settings_for(emulator, certs), processors=lambda ctx: [collect])
    await bot.start()
    try:
        call = await bot.join(emulator.join_url(emulator.config.meetings[0]))
        await call.wait_for("established", 15)
        await asyncio.wait_for(collect.enough.wait(), 15)
        link = emulator.calls[call.id].link
        assert link is not None
        await asyncio.wait_for(link.report_received.wait(), 10)  # RTCP RR every 0.5-1.5 s
        reports = list(link.receiver_reports)
        dropped = link.rtp_dropped
        media = bot.media.session(call.media_session_id or "")
        assert media is not None
        stats = dict(media.stats)
        await call.hang_up()
        await call.wait_for("terminated", 15)
    finally:
        await bot.stop()
        await emulator.stop()
    frames = collect.frames[:FRAMES]
    concealed = sum(f.concealed for f in frames)
    assert dropped >= 5
    assert concealed >= 5  # lost packets became concealed frames
    # No gaps: consecutive frames, every one tagged with the speaker (concealment keeps it).
    assert [f.sequence for f in frames] == list(
        range(frames[0].sequence, frames[0].sequence + FRAMES)
    )
    assert all(f.active_speakers for f in frames)
    assert stats["decode_errors"] == 0
    # The bot's receiver reports tell the sender about the loss (RFC 3550 6.4.2).
    assert reports and max(r.packets_lost for r in reports) > 0
    # One concealed frame per lost packet (give or take the ones lost as we read the counters).
    assert abs(stats["concealed"] - dropped) <= 2
