"""ICE networking for a media bot: UDP ports from a fixed range, 1:1 NAT and a bounded queue.

aioice 0.13.0 gathers one host candidate per local address on a kernel-chosen ephemeral port and
has no port-range option, and aiortc 1.16.0 passes nothing but STUN/TURN through to it
(RTCIceGatherer in aiortc/src/aiortc/rtcicetransport.py). A bot behind a firewall that opens
only a port range, on a VM whose public address is a 1:1 NAT of its private one, needs both.
NetworkConnection is an `aioice.Connection` subclass that binds host candidates inside the range
and advertises the public IP; it also caps aioice's unbounded receive queue.

Two ways to give a peer connection its settings:

- `apply(pc, settings)` after `setRemoteDescription` (or `addTransceiver`) and before
  `setLocalDescription`, which is where aiortc gathers (section 4 "Gathering"). No global patch.
- `install()` once, then create or answer under `with use_network_settings(settings):`. Every
  NetworkConnection picks the settings up from a contextvar when it is constructed.

A connection without settings behaves exactly as stock aioice: kernel-chosen ports, aioice's own
address discovery and STUN srflx, and an unbounded queue.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import ipaddress
import logging
import random
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from aioice import Candidate, Connection, TransportPolicy, turn
from aioice.candidate import candidate_foundation, candidate_priority
from aioice.ice import StunProtocol, server_reflexive_candidate
from aiortc import RTCPeerConnection, rtcicetransport

logger = logging.getLogger(__name__)

PORT_FLOOR = 1024  # below this needs privileges; the bot runs unprivileged
PORT_CEILING = 65535

# RFC 8839 section 5.1: candidate-attribute = "candidate:" foundation SP component-id SP transport
# SP priority SP connection-address SP port SP "typ" SP cand-type ...
_CANDIDATE_RE = re.compile(
    r"^a=candidate:\S+ \d+ \S+ \d+ (?P<ip>\S+) (?P<port>\d+) typ (?P<type>\S+)", re.MULTILINE
)


class PortRangeExhausted(OSError):
    """Every port of the configured range is in use on one bind address.

    Stock aiortc would answer with no candidate at all ("c=IN IP4 0.0.0.0") and never start ICE
    (when every port of the range is taken); this fails `setLocalDescription` instead.
    """


@dataclass(frozen=True)
class NetworkSettings:
    """Per-peer-connection ICE network settings; every None field means stock aioice behaviour.

    `port_min`/`port_max`: inclusive UDP range for host candidates (None: kernel-chosen).
    `public_ip`: 1:1 NAT address advertised instead of the private host address of its family.
    `bind_addresses`: local addresses to bind (None: aioice's discovery, which skips 127.0.0.1).
    `queue_limit`: datagrams held in aioice's receive queue before new ones are dropped.
    Ports needed per peer connection = ICE transports before BUNDLE x bind addresses (section 4).
    """

    port_min: int | None = None
    port_max: int | None = None
    public_ip: str | None = None
    bind_addresses: tuple[str, ...] | None = None
    queue_limit: int = 256

    def __post_init__(self) -> None:
        if (self.port_min is None) != (self.port_max is None):
            raise ValueError("port_min and port_max must be set together (or both None)")
        if self.port_min is not None and self.port_max is not None:
            for name, port in (("port_min", self.port_min), ("port_max", self.port_max)):
                if not PORT_FLOOR <= port <= PORT_CEILING:
                    raise ValueError(
                        f"{name}={port} is outside {PORT_FLOOR}-{PORT_CEILING} "
                        "(unprivileged UDP ports)"
                    )
            if self.port_min > self.port_max:
                raise ValueError(
                    f"port_min={self.port_min} is greater than port_max={self.port_max}"
                )
        if self.public_ip is not None:
            public = _parse_ip("public_ip", self.public_ip)
            if public.is_unspecified:
                raise ValueError(f"public_ip={self.public_ip!r} is unspecified, not advertisable")
        if self.bind_addresses is not None:
            if isinstance(self.bind_addresses, str):
                raise ValueError("bind_addresses must be a tuple of IP addresses, not a string")
            # Accept any iterable, but store a tuple so the settings stay hashable.
            object.__setattr__(self, "bind_addresses", tuple(self.bind_addresses))
            if not self.bind_addresses:
                raise ValueError("bind_addresses is empty: no host candidate could be gathered")
            for address in self.bind_addresses:
                _parse_ip("bind_addresses entry", address)
        if self.queue_limit < 1:
            raise ValueError(f"queue_limit={self.queue_limit} must be at least 1")

    @property
    def changes_gathering(self) -> bool:
        """Whether gathering differs from stock aioice (otherwise only the queue cap applies)."""
        return not (
            self.port_min is None and self.public_ip is None and self.bind_addresses is None
        )

    def ports(self) -> list[int]:
        """The ports to try, in random order; `[0]` lets the kernel choose."""
        if self.port_min is None or self.port_max is None:
            return [0]
        ports = list(range(self.port_min, self.port_max + 1))
        # Random order spreads concurrent peer connections over the range instead of having
        # them all race for its first port (section 4 "Patch point").
        random.shuffle(ports)
        return ports


# Settings for NetworkConnections created in this context (after install()).
_settings_var: contextvars.ContextVar[NetworkSettings | None] = contextvars.ContextVar(
    "media_network_settings", default=None
)


def _parse_ip(name: str, value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{name} {value!r} is not a valid IPv4 or IPv6 address") from None


class NetworkConnection(Connection):
    """`aioice.Connection` that honours NetworkSettings; with none set it is stock aioice."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Read once, when aiortc's RTCIceGatherer constructs the connection (addTransceiver or
        # setRemoteDescription); apply() may overwrite it until gathering starts.
        self.network_settings: NetworkSettings | None = _settings_var.get()
        self.dropped = 0

    def data_received(self, data: bytes, component: int) -> None:
        # aioice's _queue is unbounded (ice.py:456); when the DTLS loop falls behind it grows
        # forever. STUN was parsed before this point, so consent checks (RFC 7675) still pass;
        # DTLS and SRTP(C) datagrams beyond the cap are dropped (section 5, E11).
        settings = self.network_settings
        if settings is not None and self._queue.qsize() >= settings.queue_limit:
            self.dropped += 1
            if self.dropped & (self.dropped - 1) == 0:  # 1, 2, 4, 8, ...: log, but not per packet
                logger.warning(
                    "Connection(%s) receive queue full (%d), dropped %d datagrams so far",
                    self._id,
                    settings.queue_limit,
                    self.dropped,
                )
            return
        super().data_received(data, component)

    # The override must keep aioice's signature, timeout parameter included (ice.py:1137).
    async def get_component_candidates(
        self,
        component: int,
        addresses: list[str],
        timeout: int = 5,  # noqa: ASYNC109
    ) -> list[Candidate]:
        settings = self.network_settings
        # The relay policy gathers no host candidates (RFC 9429 section 3.5.3; aioice passes no
        # addresses then), so configured bind addresses must not sneak them back in.
        if (
            settings is None
            or not settings.changes_gathering
            or self._transport_policy != TransportPolicy.ALL
        ):
            return await super().get_component_candidates(component, addresses, timeout)

        configured = settings.bind_addresses is not None
        bind_to = list(settings.bind_addresses) if settings.bind_addresses else addresses
        protocols: list[StunProtocol] = []
        try:
            for address in bind_to:
                protocol = await self._bind_host(component, address, settings, configured)
                if protocol is not None:
                    protocols.append(protocol)
        except BaseException:
            # Do not leak the sockets already bound for this component.
            for protocol in protocols:
                protocol.transport.close()
            raise
        self._protocols += protocols
        candidates = [protocol.local_candidate for protocol in protocols]

        # The stock STUN srflx query runs over the host protocols it binds itself, which here is
        # none, so it is redone for ours; with a public IP configured it would only repeat it.
        # TURN relay candidates come from the stock code, called with no addresses.
        srflx: list[asyncio.Task[tuple[Candidate, None]]] = []
        if self.stun_server and settings.public_ip is None:
            stun_server = self.stun_server
            srflx = [
                asyncio.create_task(server_reflexive_candidate(protocol, stun_server))
                for protocol in protocols
                if ipaddress.ip_address(protocol.local_candidate.host).version == 4
            ]
        candidates += await super().get_component_candidates(component, [], timeout)
        if srflx:
            done, pending = await asyncio.wait(srflx, timeout=timeout)
            candidates += [t.result()[0] for t in done if t.exception() is None]
            for task in pending:
                task.cancel()
        return candidates

    async def _bind_host(
        self, component: int, address: str, settings: NetworkSettings, configured: bool
    ) -> StunProtocol | None:
        """Bind one UDP socket on `address` inside the range and wrap it as a host candidate."""
        family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
        for port in settings.ports():
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.bind((address, port))
                break
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    continue
                if configured:
                    raise OSError(exc.errno, f"cannot bind UDP {address}: {exc.strerror}") from exc
                # Like stock aioice (ice.py:1157), a discovered address that cannot be bound
                # (for example an IPv6 address still in DAD) is skipped.
                logger.info("Connection(%s) could not bind to %s - %s", self._id, address, exc)
                return None
        else:
            raise PortRangeExhausted(
                errno.EADDRINUSE,
                f"no free UDP port in {settings.port_min}-{settings.port_max} on {address}",
            )

        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, turn.UDP_SOCKET_BUFFER_SIZE)
            _, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: StunProtocol(self), sock=sock
            )
        except BaseException:
            sock.close()
            raise
        bound_port = int(sock.getsockname()[1])

        # Option 2 of section 4: the host candidate carries the public IP and the real port,
        # instead of option 3's extra srflx next to the private host candidate. Under 1:1 NAT the
        # port is preserved, so this is the one address a remote peer (Teams' media processors,
        # on the Internet) can reach; it is checked at host priority instead of after a private
        # host pair that can only time out, and the private address is not disclosed. Peers that
        # can reach the private address still connect: they learn it as peer-reflexive from our
        # own checks (RFC 8445 section 7.3.1.3; E4). aioice never sends from a candidate's
        # address (sockets do), so only the SDP changes. Only the public IP's family is
        # replaced: an IPv6 socket cannot stand for an IPv4 address (candidate.py:128 pairing).
        advertised = address
        if settings.public_ip is not None:
            public = ipaddress.ip_address(settings.public_ip)
            if public.version == ipaddress.ip_address(address).version:
                advertised = str(public)
        protocol.local_candidate = Candidate(
            # The foundation is computed from the base (the private address), RFC 8445
            # section 5.1.1.3, so two private bases behind one public IP stay distinct.
            foundation=candidate_foundation("host", "udp", address),
            component=component,
            transport="udp",
            priority=candidate_priority(component, "host"),
            host=advertised,
            port=bound_port,
            type="host",
        )
        logger.info(
            "Connection(%s) host candidate %s:%d bound on %s",
            self._id,
            advertised,
            bound_port,
            address,
        )
        return protocol


def candidates_in_sdp(sdp: str) -> list[tuple[str, int, str]]:
    """(ip, port, type) of every `a=candidate` line of an SDP, in order (RFC 8839 section 5.1)."""
    return [
        (m["ip"], int(m["port"]), m["type"])
        for m in _CANDIDATE_RE.finditer(sdp.replace("\r\n", "\n"))
    ]


def ice_connections(pc: RTCPeerConnection) -> list[Connection]:
    """The aioice connections of every ICE transport `pc` has created so far (BUNDLE-deduped)."""
    dtls_transports = [t.receiver.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        dtls_transports.append(pc.sctp.transport)
    connections: dict[int, Connection] = {}
    for dtls in dtls_transports:
        # RTCIceTransport._connection is the gatherer's connection (rtcicetransport.py).
        connection = dtls.transport.iceGatherer._connection
        connections[id(connection)] = connection
    return list(connections.values())


def apply(pc: RTCPeerConnection, settings: NetworkSettings) -> None:
    """Make every ICE connection `pc` has so far use `settings`.

    Call it after `setRemoteDescription` (answerer) or `addTransceiver` (offerer) and before
    `setLocalDescription`, which gathers. Works with or without install().
    """
    connections = ice_connections(pc)
    if not connections:
        raise RuntimeError(
            "apply() found no ICE transport: call it after setRemoteDescription/addTransceiver"
        )
    for connection in connections:
        if connection._local_candidates_start:
            raise RuntimeError(
                "apply() is too late: candidates were already gathered; call it before "
                "createAnswer/setLocalDescription"
            )
    for connection in connections:
        _adopt(connection).network_settings = settings


def _adopt(connection: Connection) -> NetworkConnection:
    if isinstance(connection, NetworkConnection):
        return connection
    if type(connection) is not Connection:
        raise TypeError(f"cannot configure {type(connection).__qualname__}: not aioice.Connection")
    # Without install(), aiortc built a plain aioice.Connection. NetworkConnection adds only
    # methods and two attributes, so the instance is re-classed in place and given them.
    connection.__class__ = NetworkConnection
    adopted: NetworkConnection = connection  # type: ignore[assignment]
    adopted.network_settings = None
    adopted.dropped = 0
    return adopted


def install() -> None:
    """Make aiortc build NetworkConnection for every ICE transport (idempotent).

    aiortc's RTCIceGatherer looks `Connection` up in its module globals (rtcicetransport.py:202),
    so this is the patch point of section 4. Connections created outside use_network_settings()
    get no settings and behave as stock aioice.
    """
    current = rtcicetransport.Connection
    if current is NetworkConnection:
        return
    if current is not Connection:
        raise RuntimeError(f"aiortc.rtcicetransport.Connection is already patched ({current!r})")
    rtcicetransport.Connection = NetworkConnection  # type: ignore[misc]
    logger.info("aiortc ICE now uses %s.NetworkConnection", __name__)


def uninstall() -> None:
    """Undo install(); connections already created keep their class and settings."""
    if rtcicetransport.Connection is NetworkConnection:
        rtcicetransport.Connection = Connection  # type: ignore[misc]


@contextmanager
def use_network_settings(settings: NetworkSettings | None) -> Iterator[None]:
    """Within the block, NetworkConnections created (after install()) take `settings`."""
    token = _settings_var.set(settings)
    try:
        yield
    finally:
        _settings_var.reset(token)
