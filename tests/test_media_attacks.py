"""An outsider's datagrams against a live bot's media ports (issue 14): none may end a call.

A real Bot joins the emulator's meeting (real TLS, real aiortc on both sides, DTLS-SRTP on this
host's own addresses, loopback when it has no other) with its media sockets in a small
configured port range; plain UDP sockets play the attacker, who knows nothing but the bot's
address and port range (one firewall rule opens it to the Internet). Before media/network.py
screened datagrams, one empty datagram per port ended every live call's media (IndexError in
aiortc's RTCDtlsTransport._recv_next), DTLS fatal alerts sprayed over the range kept every
joining call from connecting, and an exhausted range ended calls with Graph's generic 7112 and
nothing said why.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
from aioice.ice import get_host_addresses

from bot.app import Bot
from bot.call import Call
from bot.devcerts import DevCerts
from emulator import Emulator
from emulator.calls import MEDIA_FAILED
from media.clock import TICKS_PER_SECOND
from media.frames import AudioFrame
from media.network import candidates_in_sdp
from media.pipeline.processor import ProcessorContext
from tests.conftest import SPEAKER_MSI, emulator_config, settings_for
from tests.test_network import free_port_range

LOOPBACK = "127.0.0.1"
# The addresses both sides gather on: aioice's own discovery (it skips loopback), or loopback
# alone on a host without another interface (media_host_addresses on both sides).
HOSTS = tuple(get_host_addresses(use_ipv4=True, use_ipv6=True))
CALLS = 3
RANGE = 2 * CALLS  # a small range: every port of it is attacked
HEARD_AFTER_SECONDS = 1.0  # media the bot must still hear, captured this long after the attack
TIMEOUT_S = 15.0

# The attacker's datagrams that are none of STUN, DTLS or RTP/RTCP (RFC 7983 section 7), each
# besides one empty datagram: a first byte in 4..15, ZRTP's 16..19, TURN channel's 64..79 (no
# TURN on a host socket) and 192..255; STUN's first byte with a header that does not parse; and
# STUN whose truncated attribute makes aioice's parser raise struct.error, not ValueError.
NOT_DEMULTIPLEXABLE = (
    b"\x04not a protocol",
    b"\x10ZRTP" + bytes(20),
    b"\x40\x00\x00\x04" + bytes(4),
    b"\xff" * 32,
    b"\x00\x01\x00",
    bytes.fromhex("010100122112a442d38160ca281fafe495741fd1002400037d97dc0d9373287756000517c109"),
)


def dtls_fatal_alert(sequence: int) -> bytes:
    """A well-formed DTLS 1.2 record: content type 21 (alert), epoch 0, fatal (2)
    handshake_failure (40) (RFC 6347 section 4.1, RFC 5246 section 7.2)."""
    return b"\x15\xfe\xfd\x00\x00" + sequence.to_bytes(6, "big") + b"\x00\x02\x02\x28"


class Heard:
    """The bot's processor for one session: wakes the test once the bot has delivered real
    audio (decoded, not concealed, the speaker's) captured at or after `after_ticks`."""

    name = "heard"

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.after_ticks = 0
        self.reached = asyncio.Event()
        self._loop = loop

    def process(self, frame: AudioFrame) -> AudioFrame | None:
        if (
            self.after_ticks
            and not frame.concealed
            and frame.active_speakers == (SPEAKER_MSI,)
            and frame.original_sender_timestamp >= self.after_ticks
        ):
            self.after_ticks = 0
            self._loop.call_soon_threadsafe(self.reached.set)  # the hot loop's own thread
        return None

    async def after(self, monotonic: float) -> None:
        """Until real audio the MP captured at `monotonic` (its clock is ours) has come."""
        self.reached.clear()
        self.after_ticks = round(monotonic * TICKS_PER_SECOND)
        await asyncio.wait_for(self.reached.wait(), TIMEOUT_S)


@dataclass
class Rig:
    emulator: Emulator
    bot: Bot
    port_min: int
    heard: dict[str, Heard] = field(default_factory=dict)  # media session id -> its processor

    @property
    def ports(self) -> range:
        return range(self.port_min, self.port_min + RANGE)

    def heard_by(self, call: Call) -> Heard:
        assert call.media_session_id is not None
        return self.heard[call.media_session_id]

    async def join(self) -> Call:
        call = await self.bot.join(self.emulator.join_url(self.emulator.config.meetings[0]))
        await call.wait_for("established", TIMEOUT_S)
        await self.heard_by(call).after(time.monotonic())  # audio flows
        return call

    def media_sockets(self, call: Call) -> list[tuple[str, int]]:
        """(address, port) of each of the call's media sockets: its host candidates."""
        session = self.bot.media_session(call)
        assert session is not None
        return [(ip, port) for ip, port, _ in candidates_in_sdp(session.answer_sdp)]

    @property
    def targets(self) -> list[tuple[str, int]]:
        """Every port of the range on every address the bot gathers on."""
        return [(address, port) for address in HOSTS or (LOOPBACK,) for port in self.ports]

    def stats(self, call: Call) -> dict[str, int]:
        session = self.bot.media_session(call)
        assert session is not None
        return dict(session.stats)

    async def end(self, calls: list[Call]) -> None:
        for call in calls:
            if call.state != "terminated":
                await call.hang_up()
                await call.wait_for("terminated", TIMEOUT_S)


class Attacker:
    """Sockets on the bot's own host, one per address family: no connectivity check ever
    passed from them."""

    def __init__(self) -> None:
        self.sockets: dict[int, socket.socket] = {}

    def send(self, data: bytes, target: tuple[str, int]) -> None:
        family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
        sock = self.sockets.get(family)
        if sock is None:
            sock = self.sockets[family] = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
        try:
            sock.sendto(data, target)
        except (BlockingIOError, ConnectionRefusedError):
            pass  # a full buffer, or a closed port's ICMP reported late: the next round comes

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close()


@contextmanager
def attacker() -> Iterator[Attacker]:
    made = Attacker()
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
async def rig(certs: DevCerts) -> AsyncIterator[Rig]:
    loopback_only = {} if HOSTS else {"media_host_addresses": (LOOPBACK,)}
    emulator = Emulator(emulator_config(certs, **loopback_only))
    await emulator.start()
    port_min = free_port_range(list(HOSTS or (LOOPBACK,)), size=RANGE)
    settings = settings_for(emulator, certs).replace(
        media_port_min=port_min, media_port_max=port_min + RANGE - 1, **loopback_only
    )
    loop = asyncio.get_running_loop()
    rig = Rig(emulator, Bot(settings, processors=lambda ctx: [heard(ctx)]), port_min)

    def heard(ctx: ProcessorContext) -> Heard:
        rig.heard[ctx.session_id] = made = Heard(loop)
        return made

    await rig.bot.start()
    try:
        yield rig
    finally:
        await rig.bot.stop()
        await emulator.stop()


def media_failures(bot: Bot) -> list[str]:
    return [f"{e.session_id}: {e.detail}" for e in bot.media_events if e.kind == "failed"]


async def test_empty_and_undemultiplexable_datagrams_leave_every_call_its_media(rig: Rig) -> None:
    calls = list(await asyncio.gather(*(rig.join() for _ in range(CALLS))))
    try:
        for call in calls:
            assert set(rig.media_sockets(call)) <= set(rig.targets)
        with attacker() as attack:
            attacked = time.monotonic()
            for target in rig.targets:  # every media port of the range, live call or not
                attack.send(b"", target)
                for data in NOT_DEMULTIPLEXABLE:
                    attack.send(data, target)
            # Media captured well after the attack still arrives, decoded, on every call.
            await asyncio.gather(
                *(rig.heard_by(c).after(attacked + HEARD_AFTER_SECONDS) for c in calls)
            )
        assert media_failures(rig.bot) == []
        for call in calls:
            assert call.state == "established"
            stats = rig.stats(call)
            # One socket per call and address (BUNDLE): each got each datagram once.
            sockets = len(rig.media_sockets(call))
            assert stats["udp_dropped_empty"] == sockets
            assert stats["udp_dropped_not_demultiplexable"] == sockets * len(NOT_DEMULTIPLEXABLE)
            # The MP's own DTLS and SRTP all came from its checked pair.
            assert stats["udp_dropped_unverified_source"] == 0
    finally:
        await rig.end(calls)


async def test_dtls_alerts_sprayed_over_the_range_do_not_stop_calls_joining(rig: Rig) -> None:
    stop = asyncio.Event()
    sent = 0

    async def spray(attack: Attacker) -> None:
        nonlocal sent
        while not stop.is_set():
            for target in rig.targets:
                attack.send(dtls_fatal_alert(sent), target)
                sent += 1
            # Pacing, not waiting: about one alert per port every few milliseconds, so every
            # handshake (a few ms on loopback) and every queued read before it meets some.
            await asyncio.sleep(0.003)

    with attacker() as attack:
        spraying = asyncio.create_task(spray(attack))
        try:
            calls = list(await asyncio.gather(*(rig.join() for _ in range(CALLS))))
        finally:
            stop.set()
            await spraying
    try:
        assert media_failures(rig.bot) == []
        assert all(call.state == "established" for call in calls)
        for call in calls:
            # The spray reached every call's socket while it joined, and went no further.
            assert rig.stats(call)["udp_dropped_unverified_source"] > 0
        # Media still flows once the spray has stopped.
        now = time.monotonic()
        await asyncio.gather(*(rig.heard_by(c).after(now) for c in calls))
    finally:
        await rig.end(calls)
    logging.getLogger(__name__).info("DTLS alerts sprayed: %d to %d ports", sent, len(rig.targets))


async def test_an_exhausted_port_range_says_why_the_call_failed(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    taken: list[socket.socket] = []
    try:
        for address, port in rig.targets:  # another process holds every port of the range
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            taken.append(sock)
            sock.bind((address, port))
        with caplog.at_level(logging.WARNING, logger="media.network"):
            call = await rig.bot.join(rig.emulator.join_url(rig.emulator.config.meetings[0]))
            await call.wait_for("terminated", TIMEOUT_S)
    finally:
        for sock in taken:
            sock.close()
    # Graph says no more than 7112 ...
    assert call.result_info is not None
    assert (call.result_info["code"], call.result_info["subcode"]) == (
        MEDIA_FAILED["code"],
        MEDIA_FAILED["subcode"],
    )
    # ... so the bot says which range ran out and which settings widen it.
    span = f"{rig.port_min}-{rig.port_min + RANGE - 1}"
    assert call.media_lost is not None
    assert span in call.media_lost and "BOT_MEDIA_PORT_MAX" in call.media_lost
    [warning] = [
        r for r in caplog.records if r.name == "media.network" and r.levelno == logging.WARNING
    ]
    assert span in warning.getMessage() and "BOT_MEDIA_PORT_MIN" in warning.getMessage()
