"""The attack traffic of bench/attack.py, as an outsider sends it, all on loopback, from the
attacker's own source address (127.0.0.2 by default: Linux routes all of 127.0.0.0/8 to lo), so
that per-address limits can tell it from Graph's and the media processor's (127.0.0.1):

- TlsFlood: idle TLS connections to the webhook (handshake done, then nothing), and slowloris
  ones (a request's headers trickled, never finished); who closed each, and when;
- Bruteforce: wrong-token hellos to the media-control endpoint at a fixed rate, one TLS
  WebSocket connection each (RFC 6455 section 4.1 handshake, then a masked text frame);
- udp_empty / DtlsSpray: empty UDP datagrams, and DTLS 1.2 fatal alert records (RFC 6347
  section 4.1 record layer, content type 21; RFC 5246 section 7.2 alert), to the bot's ports;
- post_notifications: genuine posts (the emulator's signed token), each on a new TLS connection
  from Graph's address, timed; a failure counts as the timeout.

Every loop is bounded by a count or a deadline; every socket is closed by close().
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import http.client
import ipaddress
import json
import os
import socket
import ssl
import struct
import threading
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from media.control import PROTOCOL

POST_TIMEOUT_SECONDS = 5.0
ANSWER_READ_BYTES = 65536


def insecure_context() -> ssl.SSLContext:
    """An attacker does not check the bot's certificate (and saves the verification's CPU)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


# -- idle and slowloris TLS connections -----------------------------------------------------------


class _Held(asyncio.Protocol):
    def __init__(self, flood: TlsFlood, kind: str) -> None:
        self.flood = flood
        self.kind = kind
        self.transport: asyncio.Transport | None = None
        self.opened_at = 0.0
        self.closed_at: float | None = None
        self.closed_by_us = False
        self.received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.opened_at = time.monotonic()
        if self.kind == "slowloris":
            transport.write(b"POST /api/calling HTTP/1.1\r\nHost: localhost\r\n")

    def data_received(self, data: bytes) -> None:
        self.received += len(data)  # a 408, an alert... the close that follows is what counts

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed_at is None:
            self.closed_at = time.monotonic()


@dataclass
class FloodCounts:
    attempted: int = 0
    established: int = 0
    refused: int = 0  # the connect or the handshake failed on the bot's side
    unanswered: int = 0  # the connect timed out: never accepted (a full listen backlog)
    pending: int = 0  # still connecting or handshaking at the end
    refusals: Counter[str] = field(default_factory=Counter)


class TlsFlood:
    """Idle and slowloris TLS connections to (host, port), held until close(), from the
    `sources` addresses in turn (several: a distributed attacker, whom per-address caps do
    not stop)."""

    def __init__(self, host: str, port: int, sources: list[str], trickle_seconds: float) -> None:
        self.host, self.port, self.sources = host, port, sources
        self.trickle_seconds = trickle_seconds
        self.context = insecure_context()
        self.held: dict[str, list[_Held]] = {"idle": [], "slowloris": []}
        self.counts: dict[str, FloodCounts] = {"idle": FloodCounts(), "slowloris": FloodCounts()}
        self._attempts: set[asyncio.Task[None]] = set()
        self._trickle: asyncio.Task[None] | None = None
        self.started_at = 0.0
        self.last_started = 0.0

    async def open(self, idle: int, slowloris: int, rate_per_second: float) -> None:
        """Start every attempt, paced at rate_per_second (idle and slowloris interleaved);
        returns once all are started. Attempts go on (the bot may take long to accept)."""
        order = _interleave(idle, slowloris)  # both kinds meet the bot in the same state
        self.started_at = time.monotonic()
        interval = 1.0 / rate_per_second
        for i, kind in enumerate(order):
            due = self.started_at + i * interval
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing the attack, not waiting for an event
            self.counts[kind].attempted += 1
            task = asyncio.create_task(self._attempt(kind, self.sources[i % len(self.sources)]))
            self._attempts.add(task)
            task.add_done_callback(self._attempts.discard)
        self.last_started = time.monotonic()
        if slowloris:
            self._trickle = asyncio.create_task(self._trickle_headers())

    async def _attempt(self, kind: str, source: str) -> None:
        counts = self.counts[kind]
        try:
            _, protocol = await asyncio.get_running_loop().create_connection(
                lambda: _Held(self, kind),
                self.host,
                self.port,
                ssl=self.context,
                server_hostname="localhost",
                local_addr=(source, 0),
                ssl_handshake_timeout=3600.0,  # ended by close(), not by us giving up
            )
        except asyncio.CancelledError:
            counts.pending += 1
            raise
        except TimeoutError:
            # The kernel gave up on our SYNs (tcp_syn_retries): the bot never accepted, which
            # is not the bot closing it.
            counts.unanswered += 1
            return
        except (OSError, ssl.SSLError) as exc:
            counts.refused += 1
            counts.refusals[type(exc).__name__] += 1
            return
        counts.established += 1
        self.held[kind].append(protocol)

    async def _trickle_headers(self) -> None:
        n = 0
        while True:
            await asyncio.sleep(self.trickle_seconds)  # slowloris' own pace
            n += 1
            line = f"X-Pad-{n}: {n}\r\n".encode()
            for held in self.held["slowloris"]:
                if held.closed_at is None and held.transport is not None:
                    held.transport.write(line)

    def report(self, kind: str) -> dict[str, Any]:
        """Of the attempts of this kind: how many the bot closed (after the handshake, or by
        refusing it) and how many are still open or pending, now."""
        counts = self.counts[kind]
        held = self.held[kind]
        closed = [h for h in held if h.closed_at is not None and not h.closed_by_us]
        lifetimes = sorted(h.closed_at - h.opened_at for h in closed if h.closed_at is not None)
        open_now = sum(1 for h in held if h.closed_at is None)
        pending = counts.attempted - counts.established - counts.refused - counts.unanswered
        return {
            "attempted": counts.attempted,
            "established": counts.established,
            "refused_by_bot": counts.refused,
            "refusals": dict(counts.refusals),
            "connect_timed_out": counts.unanswered,
            "closed_by_bot": len(closed),
            "open": open_now,
            "pending_handshake": pending,
            "closed_ratio": round((len(closed) + counts.refused) / max(1, counts.attempted), 4),
            "closed_after_s_median": _median(lifetimes),
        }

    def open_count(self) -> int:
        return sum(1 for hs in self.held.values() for h in hs if h.closed_at is None)

    async def close(self) -> None:
        if self._trickle is not None:
            self._trickle.cancel()
        attempts = list(self._attempts)
        for task in attempts:
            task.cancel()
        await asyncio.gather(*attempts, self._trickle or _nothing(), return_exceptions=True)
        for held in (h for hs in self.held.values() for h in hs):
            if held.closed_at is None and held.transport is not None:
                held.closed_by_us = True
                held.transport.abort()


def _interleave(a: int, b: int) -> list[str]:
    """a "idle" and b "slowloris", spread evenly."""
    total = a + b
    out = []
    placed_b = 0
    for i in range(total):
        if placed_b < b and (i + 1) * b >= (placed_b + 1) * total:
            out.append("slowloris")
            placed_b += 1
        else:
            out.append("idle")
    return out


async def _nothing() -> None:
    return None


def _median(values: list[float]) -> float | None:
    return round(values[len(values) // 2], 2) if values else None


# -- wrong-token hellos to the media-control endpoint ---------------------------------------------


def _ws_frame(text: str) -> bytes:
    """One masked FIN text frame (RFC 6455 section 5.2; a client masks every frame)."""
    payload = text.encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x81, 0x80 | n)
    else:
        header = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    return header + mask + masked


class Bruteforce:
    """Wrong-token hellos at `rate` per second to wss://host:port/MediaProcessor/SESSION, each on
    its own connection; at most `in_flight` at once (beyond: counted as skipped)."""

    def __init__(
        self, host: str, port: int, source: str, session_id: str, in_flight: int = 1024
    ) -> None:
        self.host, self.port, self.source, self.session_id = host, port, source, session_id
        self.context = insecure_context()
        self.in_flight = in_flight
        self.outcomes: Counter[str] = Counter()
        self.started = 0
        self.skipped = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.seconds = 0.0

    async def run(self, rate: float, seconds: float) -> None:
        t0 = time.monotonic()
        interval = 1.0 / rate
        for i in range(int(rate * seconds)):
            delay = t0 + i * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # the attack's pace
            if len(self._tasks) >= self.in_flight:
                self.skipped += 1
                continue
            self.started += 1
            task = asyncio.create_task(self._hello())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self.seconds = time.monotonic() - t0

    async def _hello(self) -> None:
        transport: asyncio.BaseTransport | None = None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self.host,
                    self.port,
                    ssl=self.context,
                    server_hostname="localhost",
                    local_addr=(self.source, 0),
                ),
                POST_TIMEOUT_SECONDS,
            )
            transport = writer.transport
            key = base64.b64encode(os.urandom(16)).decode()
            writer.write(
                (
                    f"GET /MediaProcessor/{self.session_id} HTTP/1.1\r\n"
                    f"Host: localhost:{self.port}\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                    "Sec-WebSocket-Version: 13\r\n\r\n"
                ).encode()
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), POST_TIMEOUT_SECONDS)
            status = head.split(b" ", 2)[1].decode(errors="replace") if b" " in head else "?"
            if status != "101":
                self.outcomes[f"http_{status}"] += 1
                return
            hello = {
                "type": "hello",
                "protocol": PROTOCOL,
                "mpMediaSessionId": self.session_id,
                "token": uuid.uuid4().hex,  # a guess: wrong
            }
            writer.write(_ws_frame(json.dumps(hello)))
            answer = await asyncio.wait_for(reader.read(ANSWER_READ_BYTES), POST_TIMEOUT_SECONDS)
            if b"welcome" in answer:
                self.outcomes["welcome"] += 1  # a guess that worked: must never happen
            elif b"unauthorized" in answer:
                self.outcomes["unauthorized"] += 1
            elif b"error" in answer:
                self.outcomes["other_error"] += 1
            else:
                self.outcomes["closed"] += 1
        except TimeoutError:
            self.outcomes["timeout"] += 1
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            self.outcomes["refused_or_reset"] += 1
        finally:
            if isinstance(transport, asyncio.Transport):
                transport.abort()  # the attacker leaves at once: no close handshake

    def report(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "skipped_in_flight_cap": self.skipped,
            "rate_offered": round((self.started + self.skipped) / self.seconds, 1)
            if self.seconds
            else 0.0,
            "rate_achieved": round(self.started / self.seconds, 1) if self.seconds else 0.0,
            "outcomes": dict(self.outcomes),
        }

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# -- UDP: empty datagrams and DTLS alerts ---------------------------------------------------------


def dtls_alert(sequence: int) -> bytes:
    """A DTLS 1.2 record (RFC 6347 section 4.1: type, version {254, 253}, epoch, 48-bit
    sequence number, length) holding a fatal handshake_failure alert (RFC 5246 section 7.2)."""
    header = struct.pack("!BHH", 21, 0xFEFD, 0) + sequence.to_bytes(6, "big")
    return header + struct.pack("!HBB", 2, 2, 40)


@dataclass(frozen=True)
class Attacker:
    """The attack's source addresses, one per family (IPv6 only when the bot's media is on
    an IPv6 address: a tree without BOT_MEDIA_HOST_ADDRESSES gathers on every interface)."""

    v4: str = "127.0.0.2"
    v6: str = "::1"

    def socket_for(self, host: str) -> socket.socket:
        """A UDP socket bound to the attacker's address of `host`'s family."""
        v6 = ipaddress.ip_address(host).version == 6
        sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((self.v6 if v6 else self.v4, 0))
        except OSError:
            sock.close()
            raise
        return sock


def udp_empty(attacker: Attacker, targets: list[tuple[str, int]]) -> int:
    """One zero-length datagram to each (address, port); returns how many were sent."""
    for host, port in targets:
        with attacker.socket_for(host) as sock:
            sock.sendto(b"", (host, port))
    return len(targets)


class DtlsSpray:
    """DTLS fatal alerts to every port of [low, high] on each of `hosts`, each port `rate`
    times a second, from one socket per host on the attacker's address, until stop()."""

    def __init__(
        self, attacker: Attacker, hosts: tuple[str, ...], low: int, high: int, rate: float
    ) -> None:
        self.attacker, self.hosts = attacker, hosts
        self.ports = list(range(low, high + 1))
        self.rate = rate
        self.sent = 0
        self.errors = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        with ExitStack() as stack:
            sockets = [(h, stack.enter_context(self.attacker.socket_for(h))) for h in self.hosts]
            for _, sock in sockets:
                sock.setblocking(False)
            t0 = time.monotonic()
            rounds = 0
            while True:
                for port in self.ports:
                    for host, sock in sockets:
                        try:
                            sock.sendto(dtls_alert(self.sent + self.errors), (host, port))
                            self.sent += 1
                        except OSError:  # ICMP unreachable (a port nobody holds), buffer full
                            self.errors += 1
                rounds += 1
                due = t0 + rounds / self.rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))  # the spray's pace

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


# -- genuine notifications ------------------------------------------------------------------------


def notification_body(call_id: str, n: int) -> bytes:
    """A commsNotifications batch Graph would send: the call `updated`, still established, with
    a changing field so that no post is a duplicate of the one before."""
    url = f"/communications/calls/{call_id}"
    item = {
        "@odata.type": "#microsoft.graph.commsNotification",
        "changeType": "updated",
        "resource": url.replace("/communications/", "/app/", 1),
        "resourceUrl": url,
        "resourceData": {
            "@odata.type": "#microsoft.graph.call",
            "@odata.id": url,
            "id": call_id,
            "state": "established",
            "benchSequence": n,
        },
    }
    return json.dumps(
        {"@odata.type": "#microsoft.graph.commsNotifications", "value": [item]}
    ).encode()


@dataclass
class PostResults:
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)

    def summary(self) -> dict[str, Any]:
        values = sorted(self.latencies_ms)
        return {
            "posts": len(values),
            "p50_ms": _percentile(values, 50),
            "p99_ms": _percentile(values, 99),
            "max_ms": round(values[-1], 1) if values else None,
            "statuses": dict(self.statuses),
            "answered_share": round(
                sum(n for s, n in self.statuses.items() if s.startswith("2")) / max(1, len(values)),
                4,
            ),
        }


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    rank = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return round(values[rank], 1)


def post_notifications(
    url_host: str,
    port: int,
    path: str,
    ca_file: str,
    token: str,
    call_id: str,
    rate: float,
    seconds: float,
    stop: threading.Event,
) -> PostResults:
    """`rate` posts a second for `seconds`, each on a new TLS connection from 127.0.0.1, as
    Graph connects, from a pool of threads (blocking http.client: the attack's loop does not
    time them) large enough that a stuck post never delays the next. A post's latency counts
    from when it was due (a late start is the bot's delay too); one that fails or takes longer
    than POST_TIMEOUT_SECONDS counts as that long. Returns within seconds + the timeout."""
    context = ssl.create_default_context(cafile=ca_file)
    results = PostResults()
    lock = threading.Lock()

    def post(n: int, due: float) -> None:
        body = notification_body(call_id, n)
        connection = http.client.HTTPSConnection(
            url_host,
            port,
            context=context,
            timeout=POST_TIMEOUT_SECONDS,
            source_address=("127.0.0.1", 0),
        )
        try:
            connection.request(
                "POST",
                path,
                body,
                {
                    "Authorization": f"Bearer {token}",
                    "Content-Type": "application/json",
                    "User-Agent": "Microsoft-Skype/3.0,(Calling/1.0)",
                    "X-Microsoft-Skype-Message-ID": str(uuid.uuid4()),
                },
            )
            response = connection.getresponse()
            response.read()
            status = str(response.status)
            elapsed = (time.monotonic() - due) * 1000
        except (OSError, http.client.HTTPException) as exc:
            status = type(exc).__name__
            elapsed = POST_TIMEOUT_SECONDS * 1000
        finally:
            connection.close()
        with lock:
            results.statuses[status] += 1
            results.latencies_ms.append(min(elapsed, POST_TIMEOUT_SECONDS * 1000))

    workers = int(rate * POST_TIMEOUT_SECONDS) + 2
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="post") as pool:
        for n in range(int(rate * seconds)):
            if stop.is_set():
                break
            due = t0 + n / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # the posts' pace
            pool.submit(post, n, due)
    return results
