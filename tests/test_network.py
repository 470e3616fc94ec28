"""media/network.py: ICE host candidates from a port range, 1:1 NAT advertisement, queue cap,
screening.

Real aiortc peer connections on this host's own addresses, always with iceServers=[] (no STUN
lookups, no network access). See media/network.py for why.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import logging
import random
import socket
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any, cast

import aioice
import av
import pytest
from aioice import Candidate, stun
from aioice.ice import get_host_addresses
from aiortc import (
    AudioStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
    rtcicetransport,
)

from emulator.mediaprocessor import _restrict_host_candidates
from media.network import (
    MAX_VERIFIED_SOURCES,
    Address,
    Datagram,
    NetworkConnection,
    NetworkSettings,
    PortRangeExhausted,
    ScreenedProtocol,
    apply,
    candidates_in_sdp,
    classify,
    ice_connections,
    install,
    screen,
    uninstall,
    use_network_settings,
)
from media.platform import MediaPlatformSettings

PUBLIC_IP = "203.0.113.7"  # TEST-NET-3 (RFC 5737): stands in for an unreachable public address
RANGE_SIZE = 10
TIMEOUT_S = 5.0
PEER = ("192.0.2.10", 5000)  # TEST-NET-1 (RFC 5737)
OTHER = ("192.0.2.11", 5000)


def host_ipv4() -> str:
    addresses = get_host_addresses(use_ipv4=True, use_ipv6=False)
    if not addresses:
        pytest.skip("no non-loopback IPv4 address on this host")
    return addresses[0]


def ephemeral_ports() -> range:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def free_port_range(addresses: list[str], size: int = RANGE_SIZE) -> int:
    """First port of `size` consecutive UDP ports free on every address.

    Picked below the kernel's ephemeral range when there is room, so no kernel-chosen port (ours
    or another process's) can land in it; otherwise from 40000-59000.
    """
    ephemeral = ephemeral_ports()
    low, high = (20000, ephemeral.start) if ephemeral.start > 20000 + size else (40000, 59000)
    rng = random.Random()
    for _ in range(100):
        start = rng.randrange(low, high - size)
        with ExitStack() as stack:
            try:
                for address in addresses:
                    family = socket.AF_INET6 if ":" in address else socket.AF_INET
                    for port in range(start, start + size):
                        sock = stack.enter_context(socket.socket(family, socket.SOCK_DGRAM))
                        sock.bind((address, port))
            except OSError:
                continue
        return start
    raise RuntimeError("no free UDP port range found")


def new_pc() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


def when_connected(pc: RTCPeerConnection) -> asyncio.Future[None]:
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_change() -> None:
        if done.done():
            return
        if pc.connectionState == "connected":
            done.set_result(None)
        elif pc.connectionState in ("failed", "closed"):
            done.set_exception(AssertionError(f"connectionState={pc.connectionState}"))

    pc.on("connectionstatechange", on_change)
    return done


async def local_offer(pc: RTCPeerConnection) -> str:
    await pc.setLocalDescription(await pc.createOffer())
    assert pc.localDescription is not None
    return pc.localDescription.sdp


@pytest.fixture
def installed() -> Iterator[None]:
    install()
    try:
        yield
    finally:
        uninstall()
    assert rtcicetransport.Connection is aioice.Connection


def test_the_patch_points_are_still_there() -> None:
    """Tripwire: the aioice/aiortc internals media/network.py overrides (doc section 4)."""
    params = inspect.signature(aioice.Connection.get_component_candidates).parameters
    assert list(params) == ["self", "component", "addresses", "timeout"]
    assert list(inspect.signature(aioice.Connection.data_received).parameters) == [
        "self",
        "data",
        "component",
    ]
    assert "Connection(" in inspect.getsource(rtcicetransport.RTCIceGatherer.__init__)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"port_min": 1000, "port_max": 2000}, "port_min=1000 is outside 1024-65535"),
        ({"port_min": 50000, "port_max": 70000}, "port_max=70000 is outside 1024-65535"),
        ({"port_min": 50010, "port_max": 50000}, "port_min=50010 is greater than port_max=50000"),
        ({"port_min": 50000}, "port_min and port_max must be set together"),
        ({"public_ip": "203.0.113.300"}, "public_ip '203.0.113.300' is not a valid IPv4 or IPv6"),
        ({"public_ip": "0.0.0.0"}, "unspecified"),
        ({"bind_addresses": ()}, "bind_addresses is empty"),
        ({"bind_addresses": "192.0.2.2"}, "not a string"),
        ({"bind_addresses": ("eth0",)}, "bind_addresses entry 'eth0' is not a valid"),
        ({"queue_limit": 0}, "queue_limit=0 must be at least 1"),
    ],
)
def test_settings_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NetworkSettings(**kwargs)


def test_settings_defaults_and_normalisation() -> None:
    assert not NetworkSettings().changes_gathering
    assert NetworkSettings().ports() == [0]
    settings = NetworkSettings(
        port_min=1024,
        port_max=1027,
        public_ip="2001:db8::1",
        bind_addresses=["192.0.2.2"],  # type: ignore[arg-type]
    )
    assert settings.bind_addresses == ("192.0.2.2",)
    assert sorted(settings.ports()) == [1024, 1025, 1026, 1027]
    assert hash(settings) == hash(settings)


def test_candidates_in_sdp() -> None:
    sdp = (
        "v=0\r\n"
        "c=IN IP4 203.0.113.7\r\n"
        "a=candidate:1a2b 1 udp 2130706431 203.0.113.7 41001 typ host\r\n"
        "a=candidate:3c4d 1 udp 1694498815 198.51.100.1 5000 typ srflx raddr 10.0.0.1 rport 41002"
        "\r\n"
        "a=end-of-candidates\r\n"
    )
    assert candidates_in_sdp(sdp) == [
        ("203.0.113.7", 41001, "host"),
        ("198.51.100.1", 5000, "srflx"),
    ]
    assert candidates_in_sdp("v=0\r\n") == []


def test_queue_cap_drops_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    connection = NetworkConnection(ice_controlling=False)
    connection.network_settings = NetworkSettings(queue_limit=3)
    with caplog.at_level(logging.WARNING, logger="media.network"):
        for i in range(8):
            connection.data_received(bytes([i]), 1)
    assert connection._queue.qsize() == 3
    assert [connection._queue.get_nowait() for _ in range(3)] == [
        (b"\x00", 1),
        (b"\x01", 1),
        (b"\x02", 1),
    ]
    assert connection.dropped == 5
    assert len(caplog.records) == 3  # drops 1, 2 and 4: rate-limited, not one line per datagram


def test_queue_is_unbounded_without_settings() -> None:
    connection = NetworkConnection(ice_controlling=False)
    assert connection.network_settings is None
    for _ in range(300):  # more than the default queue_limit of 256
        connection.data_received(b"x", 1)
    assert connection._queue.qsize() == 300
    assert connection.dropped == 0


async def test_answer_from_port_range_advertises_public_ip_and_carries_audio() -> None:
    address = host_ipv4()
    port_min = free_port_range([address])
    ports = range(port_min, port_min + RANGE_SIZE)
    settings = NetworkSettings(
        port_min=port_min,
        port_max=ports[-1],
        public_ip=PUBLIC_IP,
        bind_addresses=(address,),
    )
    offerer, answerer = new_pc(), new_pc()
    track = AudioStreamTrack()
    try:
        offerer.addTrack(track)
        connected = asyncio.gather(when_connected(offerer), when_connected(answerer))
        await local_offer(offerer)
        assert offerer.localDescription is not None
        await answerer.setRemoteDescription(offerer.localDescription)
        apply(answerer, settings)  # after setRemoteDescription, before createAnswer
        await answerer.setLocalDescription(await answerer.createAnswer())
        assert answerer.localDescription is not None
        answer = answerer.localDescription.sdp

        candidates = candidates_in_sdp(answer)
        assert candidates, answer
        assert all(port in ports for _, port, _ in candidates), candidates
        # Option 2: the host candidate carries the public IP; the private one is not disclosed.
        assert {(ip, kind) for ip, _, kind in candidates} == {(PUBLIC_IP, "host")}
        assert f"c=IN IP4 {PUBLIC_IP}" in answer
        assert address not in answer

        await offerer.setRemoteDescription(
            RTCSessionDescription(sdp=answer, type=answerer.localDescription.type)
        )
        receiver_track = answerer.getTransceivers()[0].receiver.track
        async with asyncio.timeout(TIMEOUT_S):
            await connected
            frame = await receiver_track.recv()
        assert offerer.connectionState == answerer.connectionState == "connected"
        assert isinstance(frame, av.AudioFrame)
        assert frame.sample_rate == 48000

        # The public IP is unreachable here, so the offerer learned the real bound address from
        # the answerer's own checks, as peer-reflexive (RFC 8445 section 7.3.1.3; doc E4).
        [offer_ice] = ice_connections(offerer)
        pair = offer_ice._nominated[1]
        assert pair.remote_candidate.type == "prflx"
        assert pair.remote_addr == (address, candidates[0][1])
        [answer_ice] = ice_connections(answerer)
        assert isinstance(answer_ice, NetworkConnection)
        assert answer_ice.dropped == 0
    finally:
        track.stop()
        await offerer.close()
        await answerer.close()


async def test_installed_contextvar_settings_and_stock_pc(installed: None) -> None:
    addresses = get_host_addresses(use_ipv4=True, use_ipv6=True)
    if not addresses:
        pytest.skip("no host address for aioice to discover")
    port_min = free_port_range(addresses, size=max(RANGE_SIZE, len(addresses)))
    ports = range(port_min, port_min + max(RANGE_SIZE, len(addresses)))
    settings = NetworkSettings(port_min=port_min, port_max=ports[-1])
    with use_network_settings(settings):
        configured = new_pc()
        configured.addTransceiver("audio")
    plain = new_pc()
    plain.addTransceiver("audio")
    try:
        [configured_ice] = ice_connections(configured)
        [plain_ice] = ice_connections(plain)
        assert isinstance(configured_ice, NetworkConnection)
        assert isinstance(plain_ice, NetworkConnection)
        assert configured_ice.network_settings is settings
        assert plain_ice.network_settings is None

        # Range only, no bind_addresses: aioice's own address discovery, every port in range.
        configured_candidates = candidates_in_sdp(await local_offer(configured))
        assert sorted(ip for ip, _, _ in configured_candidates) == sorted(addresses)
        assert all(port in ports for _, port, _ in configured_candidates)

        # No settings: stock aioice, one host candidate per address on a kernel-chosen port.
        plain_candidates = candidates_in_sdp(await local_offer(plain))
        assert sorted(ip for ip, _, _ in plain_candidates) == sorted(addresses)
        assert all(kind == "host" for _, _, kind in plain_candidates)
        assert all(port not in ports for _, port, _ in plain_candidates)
        ephemeral = ephemeral_ports()
        assert all(port in ephemeral for _, port, _ in plain_candidates), plain_candidates
    finally:
        await configured.close()
        await plain.close()


async def test_range_exhaustion_is_a_clear_error() -> None:
    address = host_ipv4()
    port = free_port_range([address, "127.0.0.1"], size=1)
    settings = NetworkSettings(port_min=port, port_max=port, bind_addresses=(address,))
    first, second, third = new_pc(), new_pc(), new_pc()
    try:
        first.addTransceiver("audio")
        apply(first, settings)
        assert candidates_in_sdp(await local_offer(first)) == [(address, port, "host")]

        # Stock aiortc would offer "c=IN IP4 0.0.0.0" with no candidate and never start ICE.
        second.addTransceiver("audio")
        apply(second, settings)
        with pytest.raises(PortRangeExhausted, match=f"no free UDP port in {port}-{port}") as err:
            await local_offer(second)
        assert err.value.errno == errno.EADDRINUSE

        # A failure on a later bind address releases the sockets bound before it.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
            taken.bind(("127.0.0.1", port))
            await first.close()  # frees address:port for the third PC's first bind
            third.addTransceiver("audio")
            apply(
                third,
                NetworkSettings(
                    port_min=port, port_max=port, bind_addresses=(address, "127.0.0.1")
                ),
            )
            with pytest.raises(PortRangeExhausted, match="on 127.0.0.1"):
                await local_offer(third)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((address, port))  # would raise EADDRINUSE had the socket leaked
    finally:
        for pc in (first, second, third):
            await pc.close()


class FakeStunServer(asyncio.DatagramProtocol):
    """Answers every Binding request as if a NAT mapped the sender to MAPPED_IP (RFC 8489)."""

    MAPPED_IP = "198.51.100.9"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        request = stun.parse_message(data)
        response = stun.Message(
            message_method=request.message_method,
            message_class=stun.Class.RESPONSE,
            transaction_id=request.transaction_id,
        )
        response.attributes["XOR-MAPPED-ADDRESS"] = (self.MAPPED_IP, addr[1])
        self.transport.sendto(bytes(response), addr)


async def test_range_without_public_ip_keeps_stun_srflx() -> None:
    """Binding the host sockets ourselves must not lose the stock STUN srflx candidates."""
    port = free_port_range(["127.0.0.1"], size=1)
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        FakeStunServer, local_addr=("127.0.0.1", 0)
    )
    stun_port = transport.get_extra_info("sockname")[1]
    connection = NetworkConnection(ice_controlling=False, stun_server=("127.0.0.1", stun_port))
    connection.network_settings = NetworkSettings(
        port_min=port, port_max=port, bind_addresses=("127.0.0.1",)
    )
    try:
        async with asyncio.timeout(TIMEOUT_S):
            await connection.gather_candidates()
        found = [(c.host, c.port, c.type, c.related_address) for c in connection.local_candidates]
        assert found == [
            ("127.0.0.1", port, "host", None),
            (FakeStunServer.MAPPED_IP, port, "srflx", "127.0.0.1"),
        ]
    finally:
        await connection.close()
        transport.close()


async def test_apply_needs_transports_and_must_precede_gathering() -> None:
    pc = new_pc()
    try:
        with pytest.raises(RuntimeError, match="no ICE transport"):
            apply(pc, NetworkSettings())
        pc.addTransceiver("audio")
        await local_offer(pc)
        with pytest.raises(RuntimeError, match="too late"):
            apply(pc, NetworkSettings())
    finally:
        await pc.close()


async def test_host_addresses_gather_only_those_loopback_included() -> None:
    """MediaPlatformSettings.host_addresses (BOT_MEDIA_HOST_ADDRESSES) and the emulator's
    --media-host: host candidates on exactly the given addresses, 127.0.0.1 included, which
    stock aioice never offers (get_host_addresses skips it)."""
    assert "127.0.0.1" not in get_host_addresses(use_ipv4=True, use_ipv6=True)
    assert MediaPlatformSettings().network().bind_addresses is None  # empty: stock discovery
    address = host_ipv4()
    bot_side, both, emulator_side = new_pc(), new_pc(), new_pc()
    try:
        bot_side.addTransceiver("audio")
        apply(bot_side, MediaPlatformSettings(host_addresses=("127.0.0.1",)).network())
        assert [(ip, kind) for ip, _, kind in candidates_in_sdp(await local_offer(bot_side))] == [
            ("127.0.0.1", "host")
        ]

        both.addTransceiver("audio")
        apply(both, MediaPlatformSettings(host_addresses=("127.0.0.1", address)).network())
        assert sorted(ip for ip, _, _ in candidates_in_sdp(await local_offer(both))) == sorted(
            ["127.0.0.1", address]
        )

        emulator_side.addTransceiver("audio")
        _restrict_host_candidates(emulator_side, ("127.0.0.1",))
        assert [
            (ip, kind) for ip, _, kind in candidates_in_sdp(await local_offer(emulator_side))
        ] == [("127.0.0.1", "host")]
    finally:
        for pc in (bot_side, both, emulator_side):
            await pc.close()


async def test_both_ends_on_loopback_connect_over_loopback() -> None:
    """The emulator's media processor (offerer) and the bot (answerer), both limited to
    127.0.0.1: ICE connects and the nominated pair is loopback on both ends."""
    offerer, answerer = new_pc(), new_pc()
    track = AudioStreamTrack()
    try:
        offerer.addTrack(track)
        _restrict_host_candidates(offerer, ("127.0.0.1",))
        connected = asyncio.gather(when_connected(offerer), when_connected(answerer))
        await answerer.setRemoteDescription(
            RTCSessionDescription(sdp=await local_offer(offerer), type="offer")
        )
        apply(answerer, MediaPlatformSettings(host_addresses=("127.0.0.1",)).network())
        await answerer.setLocalDescription(await answerer.createAnswer())
        assert answerer.localDescription is not None
        await offerer.setRemoteDescription(answerer.localDescription)
        async with asyncio.timeout(TIMEOUT_S):
            await connected
        for pc in (offerer, answerer):
            [connection] = ice_connections(pc)
            pair = connection._nominated[1]
            assert pair.local_candidate.host == "127.0.0.1"
            assert pair.remote_addr[0] == "127.0.0.1"
    finally:
        track.stop()
        await offerer.close()
        await answerer.close()


# ---------------------------------------------------------------------------------------------
# Screening (issue 14): RFC 7983 demultiplexing and the source check, before aiortc sees data


def test_classify_follows_rfc_7983_section_7() -> None:
    kinds = {first: classify(bytes([first, 0])) for first in range(256)}
    assert {f for f, k in kinds.items() if k is Datagram.STUN} == set(range(0, 4))
    assert {f for f, k in kinds.items() if k is Datagram.DTLS} == set(range(20, 64))
    assert {f for f, k in kinds.items() if k is Datagram.RTP} == set(range(128, 192))
    # ZRTP (16..19), TURN channels (64..79) and everything else: not ours.
    assert {f for f, k in kinds.items() if k is Datagram.OTHER} == (
        set(range(4, 20)) | set(range(64, 128)) | set(range(192, 256))
    )
    assert classify(b"") is Datagram.EMPTY


@pytest.mark.parametrize(
    ("kind", "selected", "verified", "expected"),
    [
        (Datagram.EMPTY, [PEER], [PEER], "empty"),
        (Datagram.OTHER, [PEER], [PEER], "not_demultiplexable"),
        (Datagram.STUN, None, [], None),  # aioice answers it, from anyone, if it authenticates
        # Before selection: only from an address that passed a check.
        (Datagram.DTLS, None, [], "unverified_source"),
        (Datagram.DTLS, None, [PEER], None),
        (Datagram.RTP, None, [OTHER], "unverified_source"),
        # Once selected: only from the selected pair, however checked the other address is.
        (Datagram.DTLS, [PEER], [PEER, OTHER], None),
        (Datagram.RTP, [OTHER], [PEER, OTHER], "unverified_source"),
        (Datagram.RTP, [PEER], [], None),
        # Selected on another of our sockets: nothing on this one.
        (Datagram.RTP, [], [PEER], "unverified_source"),
    ],
)
def test_screen_accepts_dtls_and_srtp_only_from_checked_sources(
    kind: Datagram, selected: list[Address] | None, verified: list[Address], expected: str | None
) -> None:
    assert screen(kind, PEER, selected, verified) == expected


class Collector(asyncio.DatagramProtocol):
    """A test peer's socket: what it receives, in order."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.received.put_nowait(data)


async def test_screened_socket_answers_stun_from_anyone_and_checks_the_source() -> None:
    """A real screened socket on 127.0.0.1 and two peers: `peer` passes a check with an
    authenticated Binding request, `other` never does, until it is the selected pair."""
    loop = asyncio.get_running_loop()
    connection = NetworkConnection(ice_controlling=False)
    connection.network_settings = NetworkSettings(bind_addresses=("127.0.0.1",))
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    # asyncio's transport.sendto() sends nothing for b"" (selector_events.py), so the raw
    # sockets send; the transports only receive.
    peer_sock, other_sock = sockets
    endpoints = [await loop.create_datagram_endpoint(Collector, sock=sock) for sock in sockets]
    (peer_transport, peer), (other_transport, other) = endpoints
    peer_addr = peer_sock.getsockname()
    other_addr = other_sock.getsockname()
    try:
        [local] = await connection.get_component_candidates(1, [])
        [protocol] = connection._protocols
        assert isinstance(protocol, ScreenedProtocol)
        target = (local.host, local.port)
        dtls = b"\x15\xfe\xfd" + bytes(8) + b"\x00\x02\x02\x28"  # a fatal alert record

        async def passed(data: bytes) -> None:
            """`peer` sends `data`; it reaches aiortc's queue. Loopback keeps the order of
            datagrams to one socket, so whatever was sent before it was screened by then."""
            peer_sock.sendto(data, target)
            assert await asyncio.wait_for(connection._queue.get(), TIMEOUT_S) == (data, 1)

        def binding(integrity: bool) -> stun.Message:
            request = stun.Message(
                message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST
            )
            request.attributes["USERNAME"] = f"{connection.local_username}:peer"
            request.attributes["PRIORITY"] = 1
            request.attributes["ICE-CONTROLLING"] = 1
            if integrity:
                request.add_message_integrity(connection.local_password.encode())
            return request

        async def answer(collector: Collector) -> Any:
            data = await asyncio.wait_for(collector.received.get(), TIMEOUT_S)
            return stun.parse_message(data)

        # Nobody has passed a check: DTLS and RTP from anyone are dropped, as are junk and
        # the empty datagram that used to end the call (IndexError in aiortc).
        for data in (b"", b"\xffjunk", b"\x00\x01\x00", dtls, b"\x80" + bytes(11)):
            peer_sock.sendto(data, target)
        # An unauthenticated Binding request is answered with an error and verifies nothing.
        other_sock.sendto(bytes(binding(integrity=False)), target)
        assert (await answer(other)).message_class == stun.Class.ERROR
        # An authenticated one, from an address nobody signalled, is answered (peer-reflexive
        # discovery, RFC 8445 section 7.3.1.3) and makes the address a checked one.
        peer_sock.sendto(bytes(binding(integrity=True)), target)
        response = await answer(peer)
        assert response.message_class == stun.Class.RESPONSE
        assert response.attributes["XOR-MAPPED-ADDRESS"] == peer_addr
        assert list(protocol.verified) == [peer_addr]
        await passed(dtls)
        await passed(b"\x80" + bytes(11))
        other_sock.sendto(dtls, target)
        await passed(dtls)
        assert connection.drop_counts() == {
            "empty": 1,
            "not_demultiplexable": 2,
            "unverified_source": 3,
            "queue_full": 0,
        }
        assert connection._queue.empty()

        # `other` becomes the selected pair (as for an ICE-lite peer): from now on only it.
        remote = Candidate(
            foundation="other",
            component=1,
            transport="udp",
            priority=1,
            host=other_addr[0],
            port=other_addr[1],
            type="host",
        )
        await connection.add_remote_candidate(remote)
        connection.set_selected_pair(1, local.foundation, "other")
        assert connection.selected_sources(protocol) == (other_addr,)
        peer_sock.sendto(dtls, target)  # checked before, but not the selected pair
        other_sock.sendto(dtls, target)
        assert await asyncio.wait_for(connection._queue.get(), TIMEOUT_S) == (dtls, 1)
        assert connection.drop_counts()["unverified_source"] == 4
    finally:
        peer_transport.close()
        other_transport.close()
        await connection.close()


async def test_verified_sources_are_bounded_oldest_first() -> None:
    # async: aioice's StunProtocol makes a future of the running loop
    connection = NetworkConnection(ice_controlling=False)
    protocol = ScreenedProtocol(connection)
    ports = range(1024, 1024 + MAX_VERIFIED_SOURCES + 4)
    for port in ports:
        protocol.verify(("192.0.2.1", port))
    assert [port for _, port in protocol.verified] == list(ports[4:])  # the 4 oldest forgotten
    protocol.verify(("192.0.2.1", ports[4]))  # checked again: the newest now
    protocol.verify(("192.0.2.1", 2000))
    assert len(protocol.verified) == MAX_VERIFIED_SOURCES
    assert [port for _, port in protocol.verified][0] == ports[6]
    assert [port for _, port in protocol.verified][-2:] == [ports[4], 2000]


def test_drop_logs_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    connection = NetworkConnection(ice_controlling=False)
    with caplog.at_level(logging.INFO, logger="media.network"):
        for _ in range(100):
            connection.count_drop("empty", PEER)
    assert connection.drop_counts()["empty"] == 100
    assert len(caplog.records) == 7  # 1, 2, 4, ..., 64: not one line per datagram
    assert "192.0.2.10:5000" in caplog.records[-1].getMessage()
