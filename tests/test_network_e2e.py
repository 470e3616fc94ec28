"""The bot behind 1:1 NAT: all media candidates advertise the instance's public IP and use ports
from the configured range, and a real media processor still connects and sends audio."""

from __future__ import annotations

import asyncio

from aioice.ice import get_host_addresses

from bot.app import Bot
from bot.devcerts import DevCerts
from emulator import Emulator
from media.frames import AudioFrame
from media.network import candidates_in_sdp
from tests.conftest import settings_for
from tests.test_network import free_port_range

PUBLIC_IP = "203.0.113.7"  # TEST-NET-3 (RFC 5737): nothing answers there


class FirstFrame:
    name = "first-frame"

    def __init__(self) -> None:
        self.arrived = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    def process(self, frame: AudioFrame) -> AudioFrame | None:
        self._loop.call_soon_threadsafe(self.arrived.set)
        return None


async def test_candidates_use_the_public_ip_and_the_port_range(
    emulator: Emulator, certs: DevCerts
) -> None:
    start = free_port_range(get_host_addresses(use_ipv4=True, use_ipv6=True))
    settings = settings_for(emulator, certs).replace(
        instance_public_ip=PUBLIC_IP, media_port_min=start, media_port_max=start + 9
    )
    first = FirstFrame()
    bot = Bot(settings, processors=lambda ctx: [first])
    await bot.start()
    try:
        call = await bot.join(emulator.join_url(emulator.config.meetings[0]))
        await call.wait_for("established", 15)
        await asyncio.wait_for(first.arrived.wait(), 10)  # media flows despite the NAT address
        session = bot.media.session(call.media_session_id or "")
        assert session is not None
        candidates = candidates_in_sdp(session.answer_sdp)
        await call.hang_up()
        await call.wait_for("terminated", 15)
    finally:
        await bot.stop()
    ipv4 = [c for c in candidates if ":" not in c[0]]
    assert ipv4 and all(ip == PUBLIC_IP for ip, _, _ in ipv4)
    assert all(start <= port <= start + 9 for _, port, _ in candidates)
