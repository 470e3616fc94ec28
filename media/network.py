"""ICE networking for a media bot: UDP ports from a fixed range, 1:1 NAT and a bounded queue.

aioice 0.13.0 gathers one host candidate per local address on a kernel-chosen ephemeral port and
has no port-range option, and aiortc 1.16.0 passes nothing but STUN/TURN through to it
(RTCIceGatherer in aiortc/src/aiortc/rtcicetransport.py). A bot behind a firewall that opens
only a port range, on a VM whose public address is a 1:1 NAT of its private one, needs both.
NetworkConnection is an `aioice.Connection` subclass that binds host candidates inside the range
and advertises the public IP; it also caps aioice's unbounded receive queue.

It also screens every datagram before aiortc sees it. Stock aioice hands anything that is not
STUN, from any address, to aiortc's DTLS transport (StunProtocol.datagram_received in
aioice/src/aioice/ice.py), which reads `data[0]` (an empty datagram raises IndexError and ends
the call's media) and feeds DTLS records to OpenSSL (a forged fatal alert fails the handshake);
aiortc never learns the source address (aiortc/src/aiortc/rtcdtlstransport.py `_recv_next`).
So each socket's protocol is a ScreenedProtocol, which sees the address:

- RFC 7983 section 7 demultiplexing on the first byte: [0..3] STUN (to aioice, which answers
  authenticated Binding requests from any address, as peer-reflexive discovery needs, RFC 8445
  section 7.3.1.3), [20..63] DTLS, [128..191] RTP/RTCP; empty datagrams, STUN that does not
  parse, and every other first byte are dropped.
- DTLS and SRTP(C) only from a checked source (RFC 8445 section 7.3: checks establish which
  5-tuples may carry media; RFC 7675 section 5.1): once a pair is selected, from the remote
  address of a nominated pair on that socket; before, from a remote address whose connectivity
  check succeeded, or whose authenticated Binding request aioice answered.
- Every drop is counted by reason (DROP_REASONS; `drop_counts(pc)`) and logged at 1, 2, 4, ...

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
import enum
import errno
import ipaddress
import logging
import random
import re
import socket
import struct
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, cast

from aioice import Candidate, Connection, TransportPolicy, stun, turn
from aioice.candidate import candidate_foundation, candidate_priority
from aioice.ice import CandidatePair, StunProtocol, server_reflexive_candidate
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


Address = tuple[str, int]
DropReason = Literal["empty", "not_demultiplexable", "unverified_source", "queue_full"]
# Fixed keys, so the counters stay bounded whatever arrives.
SCREEN_REASONS: tuple[DropReason, ...] = ("empty", "not_demultiplexable", "unverified_source")
DROP_REASONS: tuple[DropReason, ...] = (*SCREEN_REASONS, "queue_full")
# Remote addresses per socket that passed a check but are not (yet) a selected pair. Only a peer
# that knows the ICE password can add one (an authenticated Binding request or response), so a
# handful covers its candidates; past the cap the oldest is forgotten.
MAX_VERIFIED_SOURCES = 16


class Datagram(enum.Enum):
    """What a datagram is, from its first byte (RFC 7983 section 7)."""

    STUN = "stun"
    DTLS = "dtls"
    RTP = "rtp"  # RTP or RTCP, SRTP-protected once DTLS is done
    EMPTY = "empty"
    OTHER = "not_demultiplexable"  # ZRTP, TURN channel data (never on a host socket), junk


def classify(data: bytes) -> Datagram:
    """RFC 7983 section 7: [0..3] STUN, [20..63] DTLS, [128..191] RTP/RTCP, the rest not ours."""
    if not data:
        return Datagram.EMPTY
    first = data[0]
    if first <= 3:
        return Datagram.STUN
    if 20 <= first <= 63:
        return Datagram.DTLS
    if 128 <= first <= 191:
        return Datagram.RTP
    return Datagram.OTHER


def screen(
    kind: Datagram,
    source: Address,
    selected: Collection[Address] | None,
    verified: Collection[Address],
) -> DropReason | None:
    """Why a datagram is dropped, or None to hand it on (STUN to aioice, the rest to aiortc).

    `selected`: remote addresses of this socket's nominated pairs, None before selection (empty
    when the selected pair is on another socket); `verified`: remote addresses on this socket
    that passed a connectivity check. DTLS and SRTP(C) come only from the selected pair once
    there is one (RFC 8445 section 7.3, RFC 7675 section 5.1), before that only from a checked
    address.
    """
    if kind is Datagram.EMPTY:
        return "empty"
    if kind is Datagram.OTHER:
        return "not_demultiplexable"
    if kind is Datagram.STUN:
        return None  # aioice's own: it authenticates what needs authenticating
    if selected is not None:
        return None if source in selected else "unverified_source"
    return None if source in verified else "unverified_source"


def _parses_as_stun(data: bytes) -> bool:
    # aioice's parser raises struct.error on a truncated attribute as well as ValueError
    # (stun.py parse_message); either would escape datagram_received as a logged traceback.
    try:
        stun.parse_message(data)
    except (ValueError, struct.error):
        return False
    return True


class ScreenedProtocol(StunProtocol):
    """aioice's StunProtocol with the source address checked before data goes up.

    STUN that parses goes to aioice unchanged. Data goes to `Connection.data_received` (and so
    to aiortc) only when `screen()` lets it; the rest is counted on the connection.
    """

    receiver: NetworkConnection

    def __init__(self, receiver: NetworkConnection) -> None:
        super().__init__(receiver)
        self.verified: dict[Address, None] = {}  # insertion-ordered: oldest evicted first

    def verify(self, addr: Address) -> None:
        """`addr` passed a check on this socket (bounded by MAX_VERIFIED_SOURCES)."""
        self.verified.pop(addr, None)
        self.verified[addr] = None
        while len(self.verified) > MAX_VERIFIED_SOURCES:
            del self.verified[next(iter(self.verified))]

    def datagram_received(self, data: bytes | str, addr: tuple[Any, ...]) -> None:
        source: Address = (addr[0], addr[1])  # an IPv6 four-tuple as aioice keeps it
        raw = cast(bytes, data)  # a datagram endpoint delivers bytes (aioice casts too)
        kind = classify(raw)
        if kind is Datagram.STUN:
            if _parses_as_stun(raw):
                super().datagram_received(raw, source)
            else:
                self.receiver.count_drop("not_demultiplexable", source)
            return
        reason = screen(kind, source, self.receiver.selected_sources(self), self.verified)
        if reason is not None:
            self.receiver.count_drop(reason, source)
            return
        self.receiver.data_received(raw, self.local_candidate.component)

    def send_stun(self, message: stun.Message, addr: tuple[str, int]) -> None:
        super().send_stun(message, addr)
        # aioice sends a Binding success response only to a request whose USERNAME and
        # MESSAGE-INTEGRITY it checked (Connection.request_received): the source is a checked
        # one, possibly peer-reflexive (RFC 8445 section 7.3.1.3).
        if (
            message.message_method == stun.Method.BINDING
            and message.message_class == stun.Class.RESPONSE
        ):
            self.verify((addr[0], addr[1]))


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
        """Whether gathering differs from stock aioice (otherwise only the queue cap and the
        screening apply)."""
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
    """`aioice.Connection` that honours NetworkSettings; with none set it is stock aioice.

    With settings, every socket it gathers on is a ScreenedProtocol (module docstring).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Read once, when aiortc's RTCIceGatherer constructs the connection (addTransceiver or
        # setRemoteDescription); apply() may overwrite it until gathering starts.
        self.network_settings: NetworkSettings | None = _settings_var.get()
        self.dropped = 0  # queue_full drops
        self.screened: dict[DropReason, int] = dict.fromkeys(SCREEN_REASONS, 0)

    def drop_counts(self) -> dict[DropReason, int]:
        """Datagrams dropped before aiortc saw them, by reason (every key of DROP_REASONS)."""
        return {**self.screened, "queue_full": self.dropped}

    def count_drop(self, reason: DropReason, source: Address) -> None:
        count = self.screened[reason] = self.screened[reason] + 1
        if count & (count - 1) == 0:  # 1, 2, 4, 8, ...: log, but not per packet
            logger.info(
                "Connection(%s) dropped %d %s datagram(s) so far, the last from %s:%d",
                self._id,
                count,
                reason,
                source[0],
                source[1],
            )

    def selected_sources(self, protocol: StunProtocol) -> tuple[Address, ...] | None:
        """Remote addresses of the nominated pairs on `protocol`'s socket, None before selection
        (and () when the selected pair is on another of our sockets: nothing may come here).

        aioice's controlling side nominates every pair it checks (aggressive nomination, ice.py
        check_start) and each side keeps the last one that succeeded in `_nominated`, so the two
        sides may keep different ones: every pair of the socket either side nominated counts as
        selected (the peer's nomination came in an authenticated request, ice.py check_incoming).
        """
        selected = self._nominated.get(protocol.local_candidate.component)
        if selected is None:
            return None
        sources = [selected.remote_addr] if selected.protocol is protocol else []
        sources += [
            pair.remote_addr
            for pair in self._check_list
            if (pair.nominated or pair.remote_nominated)
            and pair.protocol is protocol
            and pair is not selected
        ]
        return tuple(sources)

    def check_state(self, pair: CandidatePair, state: CandidatePair.State) -> None:
        super().check_state(pair, state)
        # Our own check got an authenticated response from the address it was sent to (aioice
        # checks both before SUCCEEDED, ice.py check_start; RFC 8445 section 7.2.5.2.1).
        if state == CandidatePair.State.SUCCEEDED and isinstance(pair.protocol, ScreenedProtocol):
            pair.protocol.verify(pair.remote_addr)

    def _screen(self, protocols: list[StunProtocol]) -> None:
        """Make the stock code's protocols (TURN relays) ScreenedProtocols, in place.

        StunProtocol has no __slots__ and ScreenedProtocol adds one attribute, so re-classing is
        safe; TurnTransport keeps calling the same object's datagram_received (turn.py).
        """
        for protocol in protocols:
            if type(protocol) is StunProtocol:
                protocol.__class__ = ScreenedProtocol
                screened: ScreenedProtocol = protocol  # type: ignore[assignment]
                screened.verified = {}

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
        if settings is None:
            return await super().get_component_candidates(component, addresses, timeout)
        # The relay policy gathers no host candidates (RFC 9429 section 3.5.3; aioice passes no
        # addresses then), so configured bind addresses must not sneak them back in.
        if self._transport_policy != TransportPolicy.ALL:
            before = len(self._protocols)
            candidates = await super().get_component_candidates(component, addresses, timeout)
            self._screen(self._protocols[before:])
            return candidates
        # Host sockets are bound here even without a range, so that each is screened from its
        # first datagram (stock aioice binds the same (address, 0) sockets, ice.py).

        configured = settings.bind_addresses is not None
        bind_to = list(settings.bind_addresses) if settings.bind_addresses else addresses
        protocols: list[ScreenedProtocol] = []
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
        before = len(self._protocols)
        candidates += await super().get_component_candidates(component, [], timeout)
        self._screen(self._protocols[before:])
        if srflx:
            done, pending = await asyncio.wait(srflx, timeout=timeout)
            candidates += [t.result()[0] for t in done if t.exception() is None]
            for task in pending:
                task.cancel()
        return candidates

    async def _bind_host(
        self, component: int, address: str, settings: NetworkSettings, configured: bool
    ) -> ScreenedProtocol | None:
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
            # Each peer connection takes one port per bind address until it closes; the call
            # then fails with Graph's generic 7112, so the log says which setting to widen.
            message = (
                f"no free UDP port in {settings.port_min}-{settings.port_max} on {address}: "
                "every port of the media port range is in use (widen BOT_MEDIA_PORT_MIN/"
                "BOT_MEDIA_PORT_MAX: one port per call and bind address)"
            )
            logger.warning("Connection(%s) x %s", self._id, message)
            raise PortRangeExhausted(errno.EADDRINUSE, message)

        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, turn.UDP_SOCKET_BUFFER_SIZE)
            _, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: ScreenedProtocol(self), sock=sock
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
    # methods and three attributes, so the instance is re-classed in place and given them.
    connection.__class__ = NetworkConnection
    adopted: NetworkConnection = connection  # type: ignore[assignment]
    adopted.network_settings = None
    adopted.dropped = 0
    adopted.screened = dict.fromkeys(SCREEN_REASONS, 0)
    return adopted


def drop_counts(pc: RTCPeerConnection) -> dict[DropReason, int]:
    """Datagrams `pc`'s ICE connections dropped before aiortc saw them, by reason."""
    totals: dict[DropReason, int] = dict.fromkeys(DROP_REASONS, 0)
    for connection in ice_connections(pc):
        if isinstance(connection, NetworkConnection):
            for reason, count in connection.drop_counts().items():
                totals[reason] += count
    return totals


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
