"""The webhook and the media-control endpoint against an outsider (issue 14): idle and
slowloris floods, more connections than the process has files, and a wrong-token flood, sent
to the real bot (`python -m bot serve`) with RLIMIT_NOFILE=256 and small timeouts. The
attacker connects from 127.0.0.2 (any 127/8 address is loopback on Linux), Graph and its media
processor from 127.0.0.1. Then the token buckets, the connection table and the warning
throttle of media/listener.py with an injected clock."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import ssl
import sys
import time
import uuid
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from bot.devcerts import DevCerts
from emulator import Emulator
from emulator.login import NOTIFICATION_ISSUER
from media.admission import (
    AuthFailures,
    ConnectionTable,
    FileBudget,
    Refusal,
    Refusals,
    State,
    address_key,
)
from media.clock import FakeClock
from media.listener import harden_tls
from tests.cli import clean_env, settings_env
from tests.conftest import APP_ID, TENANT_ID, settings_for

ATTACKER = "127.0.0.2"
FILE_LIMIT = 256
START_SECONDS = 30.0
HANDSHAKE = 2.0
HEADER = 2.0
IDLE = 5.0
SERVING = re.compile(r"serving: webhook (?P<webhook>\S+), media (?P<media>\S+)")
# What a flood may make the bot say: the listener's warning, asyncio's accept error.
FLOOD_LINE = re.compile(r"Listener |accept|Too many open files|rejected")

# The child sets its own file limit, then becomes the bot (no preexec_fn in a threaded test).
LIMITED = (
    "import os, resource, sys; "
    f"resource.setrlimit(resource.RLIMIT_NOFILE, ({FILE_LIMIT}, resource.getrlimit("
    "resource.RLIMIT_NOFILE)[1])); "
    "os.execv(sys.executable, [sys.executable, '-m', 'bot', *sys.argv[1:]])"
)


@dataclass
class Output:
    """A subprocess's stream read as it comes (bounded: counts every line, keeps 2,000)."""

    stream: asyncio.StreamReader
    lines: list[str] = field(default_factory=list)
    count: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    ended: bool = False

    async def pump(self) -> None:
        while raw := await self.stream.readline():
            self.count += 1
            if len(self.lines) < 2000:
                self.lines.append(raw.decode(errors="replace"))
            self.changed.set()
        self.ended = True
        self.changed.set()

    async def wait_for(self, pattern: re.Pattern[str], seconds: float) -> re.Match[str]:
        async with asyncio.timeout(seconds):
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    if found := pattern.search(line):
                        return found
                seen = len(self.lines)
                if self.ended:
                    raise AssertionError("the bot exited:\n" + "".join(self.lines))
                self.changed.clear()
                await self.changed.wait()


@dataclass
class RunningBot:
    webhook_url: str
    webhook_port: int
    media_port: int
    stdout: Output
    stderr: Output

    def flood_lines(self) -> list[str]:
        """What it said about the flood; and no error, no traceback, whatever the flood."""
        errors = [line for line in self.stderr.lines if " ERROR " in line or "Traceback" in line]
        assert not errors, "".join(self.stderr.lines[:50])
        return [line for line in self.stderr.lines if FLOOD_LINE.search(line)]


@asynccontextmanager
async def running_bot(
    emulator: Emulator, certs: DevCerts, tmp_path: Path, **extra: str
) -> AsyncIterator[RunningBot]:
    env = settings_env(settings_for(emulator, certs)) | {
        "BOT_LISTENER_HANDSHAKE_TIMEOUT_SECONDS": str(HANDSHAKE),
        "BOT_LISTENER_HEADER_TIMEOUT_SECONDS": str(HEADER),
        "BOT_LISTENER_IDLE_TIMEOUT_SECONDS": str(IDLE),
        "PYTHONUNBUFFERED": "1",  # the `serving:` line as soon as it is printed
        **extra,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        LIMITED,
        "serve",
        env=clean_env(env),
        cwd=tmp_path,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    out, err = Output(process.stdout), Output(process.stderr)
    pumps = [asyncio.create_task(out.pump()), asyncio.create_task(err.pump())]
    try:
        try:
            found = await out.wait_for(SERVING, START_SECONDS)
        except (AssertionError, TimeoutError):
            raise AssertionError("the bot did not start:\n" + "".join(err.lines)) from None
        webhook, media = found["webhook"], found["media"]
        yield RunningBot(webhook, _port(webhook), _port(media), out, err)
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)


def _port(url: str) -> int:
    return int(url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])


async def post_signed(
    emulator: Emulator, bot: RunningBot, client_ssl: ssl.SSLContext, seconds: float = 10.0
) -> int:
    """A genuine notification, signed with the emulator's (Graph's) key, from 127.0.0.1."""
    token = emulator.notification_keys[0].sign(
        {"iss": NOTIFICATION_ISSUER, "aud": APP_ID, "tid": TENANT_ID}, 600
    )
    body: dict[str, list[object]] = {"value": []}
    timeout = aiohttp.ClientTimeout(total=seconds)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(
            bot.webhook_url,
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            ssl=client_ssl,
        ) as response,
    ):
        return response.status


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def connect(port: int, tls: ssl.SSLContext | None, seconds: float = 3.0) -> Conn | None:
    """A connection from the attacker's address; None if it was refused or timed out."""
    try:
        return await asyncio.wait_for(
            asyncio.open_connection(
                "127.0.0.1",
                port,
                ssl=tls,
                server_hostname="localhost" if tls else None,
                local_addr=(ATTACKER, 0),
            ),
            seconds,
        )
    except (OSError, TimeoutError, ssl.SSLError):
        return None


async def closed_after(conn: Conn, started: float, seconds: float) -> float:
    """When the bot closed the connection (its EOF or reset), seconds after `started`."""
    reader, _ = conn
    with suppress(OSError, ssl.SSLError):
        async with asyncio.timeout(seconds):
            while await reader.read(4096):
                pass
    return time.monotonic() - started


def close_all(conns: list[Conn]) -> None:
    for _, writer in conns:
        writer.transport.abort()


async def test_more_connections_than_files_leave_the_webhook_answering(
    emulator: Emulator, certs: DevCerts, client_ssl: ssl.SSLContext, tmp_path: Path
) -> None:
    """300 TCP connections that never start TLS, from one address, with a file limit of 256:
    past the per-address cap they are reset at once, the rest closed after the handshake
    timeout; a genuine signed notification is answered meanwhile, and the bot says so in a
    few lines. (On 59d3d3f: asyncio failed accept() with EMFILE in a loop, logging each time,
    and the notification was never answered.)"""
    async with running_bot(emulator, certs, tmp_path) as bot:
        started = time.monotonic()
        opened = await asyncio.gather(*(connect(bot.webhook_port, None) for _ in range(300)))
        conns = [c for c in opened if c is not None]
        try:
            assert await post_signed(emulator, bot, client_ssl) == 202
            closed = await asyncio.gather(*(closed_after(c, started, HANDSHAKE + 5) for c in conns))
            assert max(closed) < HANDSHAKE + 4, sorted(closed)[-5:]
            assert await post_signed(emulator, bot, client_ssl) == 202
        finally:
            close_all(conns)
        lines = bot.flood_lines()
        assert len(lines) <= 3, f"{bot.stderr.count} lines, e.g. {lines[:5]}"
        assert any("per-address cap" in line for line in lines), lines


async def test_idle_slow_header_and_slow_body_connections_are_closed_in_time(
    emulator: Emulator, certs: DevCerts, client_ssl: ssl.SSLContext, tmp_path: Path
) -> None:
    """TLS connections that never send a request are closed once idle for the idle timeout;
    a slowloris (a header one byte at a time) after the header timeout, and a signed request
    whose body trickles after the body timeout, both sooner. (On 59d3d3f all three stayed
    open: aiohttp waits 3,630 s for a request and the handler for its body.)"""
    async with running_bot(
        emulator, certs, tmp_path, BOT_LISTENER_BODY_TIMEOUT_SECONDS=str(HEADER)
    ) as bot:
        started = time.monotonic()

        async def group(n: int) -> list[Conn]:
            opened = await asyncio.gather(
                *(connect(bot.webhook_port, client_ssl) for _ in range(n))
            )
            return [c for c in opened if c is not None]

        idle, slow_header, slow_body = await group(20), await group(20), await group(10)
        assert (len(idle), len(slow_header), len(slow_body)) == (20, 20, 10)
        token = emulator.notification_keys[0].sign(
            {"iss": NOTIFICATION_ISSUER, "aud": APP_ID, "tid": TENANT_ID}, 600
        )
        header_head = b"POST /api/calling HTTP/1.1\r\nHost: localhost\r\nX-Slow: "
        body_head = (
            b"POST /api/calling HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n"
            b"Authorization: Bearer " + token.encode() + b"\r\n\r\n"
        )
        stop = asyncio.Event()

        async def trickle(conn: Conn, head: bytes) -> None:
            _, writer = conn
            with suppress(OSError, ssl.SSLError):
                writer.write(head)
                while not stop.is_set():
                    writer.write(b"a")
                    await writer.drain()
                    with suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 0.25)

        trickling = [asyncio.create_task(trickle(c, header_head)) for c in slow_header]
        trickling += [asyncio.create_task(trickle(c, body_head)) for c in slow_body]
        try:
            gone = await asyncio.gather(
                *(closed_after(c, started, IDLE + 5) for c in slow_header + slow_body + idle)
            )
            header_closed, body_closed, idle_closed = gone[:20], gone[20:30], gone[30:]
            assert max(header_closed) < IDLE - 1, sorted(header_closed)  # the header timeout
            assert max(body_closed) < IDLE - 1, sorted(body_closed)  # the body timeout
            assert IDLE - 1 < min(idle_closed) and max(idle_closed) < IDLE + 3, idle_closed
            assert await post_signed(emulator, bot, client_ssl) == 202
        finally:
            stop.set()
            await asyncio.gather(*trickling, return_exceptions=True)
            close_all(idle + slow_header + slow_body)
        lines = bot.flood_lines()
        assert len(lines) <= 3, f"{bot.stderr.count} lines, e.g. {lines[:5]}"


async def _wrong_hello(port: int, client_ssl: ssl.SSLContext) -> str:
    """One wrong-token hello from the attacker: what the bot answered, or how it refused."""
    session_id = str(uuid.uuid4())
    connector = aiohttp.TCPConnector(local_addr=(ATTACKER, 0), ssl=client_ssl)
    timeout = aiohttp.ClientTimeout(total=5)
    try:
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
            session.ws_connect(f"wss://localhost:{port}/MediaProcessor/{session_id}") as ws,
        ):
            hello = {
                "type": "hello",
                "protocol": "webrtc-mp/1",
                "mpMediaSessionId": session_id,
                "token": "x" * 43,
            }
            await ws.send_str(json.dumps(hello))
            message = await ws.receive()
            if message.type == aiohttp.WSMsgType.TEXT:
                return str(json.loads(message.data).get("code", "?"))
            return "closed"
    except (aiohttp.ClientError, OSError, ssl.SSLError, TimeoutError):
        return "refused"


async def test_wrong_token_flood_is_rate_limited_and_the_real_media_processor_connects(
    emulator: Emulator, certs: DevCerts, client_ssl: ssl.SSLContext, tmp_path: Path
) -> None:
    """120 wrong-token hellos from one address as fast as 20 at a time go: past 10 failures
    (BOT_AUTH_FAILURES_PER_MINUTE=10) its connections are refused before TLS, cheaply; then
    a call rings and Graph's media processor, from another address, proves its token. (On
    59d3d3f every attempt got its TLS handshake and an `unauthorized` answer.)"""
    async with running_bot(emulator, certs, tmp_path, BOT_AUTH_FAILURES_PER_MINUTE="10") as bot:
        outcomes: list[str] = []
        started = time.monotonic()
        for _ in range(6):
            outcomes += await asyncio.gather(
                *(_wrong_hello(bot.media_port, client_ssl) for _ in range(20))
            )
        elapsed = time.monotonic() - started
        answered = [o for o in outcomes if o not in ("refused", "closed")]
        assert len(answered) <= 10 + 20, outcomes  # the budget, and those already in flight
        assert outcomes[-20:] == ["refused"] * 20, outcomes[-20:]
        assert elapsed < 20, elapsed

        async with aiohttp.ClientSession() as admin:
            body = {"appId": APP_ID, "callbackUri": bot.webhook_url}
            url = f"{emulator.base_url}/emulator/calls/incoming"
            async with admin.post(url, json=body, ssl=client_ssl) as response:
                assert response.status < 300, await response.text()
                call_id = (await response.json())["callId"]
        established = re.compile(rf"Call\({re.escape(call_id)}\) state \S+ -> established")
        await bot.stderr.wait_for(established, 30)
        assert emulator.calls[call_id].state == "established"
        rejections = [line for line in bot.flood_lines() if "MediaControl x rejected" in line]
        assert len(rejections) <= 10 + 20, len(rejections)


async def test_forged_notifications_are_rate_limited_by_address(
    emulator: Emulator, certs: DevCerts, client_ssl: ssl.SSLContext, tmp_path: Path
) -> None:
    """60 forged notifications from one address on fresh connections: 10 get their 401
    (BOT_AUTH_FAILURES_PER_MINUTE=10), the next a 429 and the rest are reset at accept;
    Graph's own, from another address, is still answered 202. (On 59d3d3f: 60 401s.)"""
    async with running_bot(emulator, certs, tmp_path, BOT_AUTH_FAILURES_PER_MINUTE="10") as bot:
        connector = aiohttp.TCPConnector(local_addr=(ATTACKER, 0), ssl=client_ssl, force_close=True)
        statuses: list[int | str] = []
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=5)
        ) as attacker:
            for _ in range(60):
                try:
                    async with attacker.post(
                        bot.webhook_url, json={"value": []}, headers={"Authorization": "Bearer x"}
                    ) as response:
                        statuses.append(response.status)
                except (aiohttp.ClientError, OSError, ssl.SSLError):
                    statuses.append("refused")
        assert statuses[:10] == [401] * 10, statuses
        assert set(statuses[10:]) <= {429, "refused"} and statuses[-1] == "refused", statuses
        assert await post_signed(emulator, bot, client_ssl) == 202
        bot.flood_lines()  # no error
        unauthorized = [line for line in bot.stderr.lines if "Webhook x 401" in line]
        assert len(unauthorized) == 10, unauthorized


# -- the logic, with an injected clock --------------------------------------------------------


def test_a_token_bucket_allows_a_minutes_worth_then_the_rate() -> None:
    clock = FakeClock()
    failures = AuthFailures(6, clock.now)
    assert [failures.failed("a") for _ in range(7)] == [True] * 6 + [False]
    assert failures.blocked("a") and not failures.blocked("b")
    clock.advance(9.9)  # 6 a minute: one more every 10 s
    assert failures.blocked("a")
    clock.advance(0.2)
    assert not failures.blocked("a")
    assert failures.failed("a") and not failures.failed("a")
    assert failures.limited == 2


def test_the_bucket_map_is_bounded_and_forgets_refilled_addresses() -> None:
    clock = FakeClock()
    failures = AuthFailures(6, clock.now, max_addresses=3)
    for address in "abcde":
        failures.failed(address)
    assert len(failures) == 3  # the least recently failed went first
    clock.advance(60)  # every bucket refilled: the next new address drops them all
    failures.failed("f")
    assert len(failures) == 1
    assert AuthFailures(0, clock.now).failed("x")  # 0: unlimited
    assert not AuthFailures(0, clock.now).blocked("x")


def test_at_the_cap_a_new_connection_evicts_the_oldest_idle_one() -> None:
    table = ConnectionTable(3, 2, FileBudget(100))
    closed: list[int] = []
    conns = []
    for key in ("a", "a", "b"):
        conn = table.admit(key)
        assert not isinstance(conn, Refusal)
        conn.close = functools.partial(closed.append, conn.id)
        conns.append(conn)
    assert table.admit("a") is Refusal.ADDRESS
    table.set_state(conns[0], State.ACTIVE)  # in a request: not evictable
    newest = table.admit("c")
    assert not isinstance(newest, Refusal)
    assert closed == [conns[1].id] and len(table) == 3
    for conn in list(table.conns.values()):
        table.set_state(conn, State.BODY)
    assert table.admit("d") is Refusal.FULL
    table.release(conns[0])
    table.release(conns[0])  # twice is once
    assert len(table) == 2 and table.per_address == {"b": 1, "c": 1}


def test_the_process_budget_is_shared_and_never_exceeded() -> None:
    budget = FileBudget(2)
    webhook, media = ConnectionTable(10, 10, budget), ConnectionTable(10, 10, budget)
    first = webhook.admit("a")
    assert not isinstance(first, Refusal)
    table_full = media.admit("a")
    assert not isinstance(table_full, Refusal)
    media.set_state(table_full, State.ACTIVE)
    assert media.admit("b") is Refusal.FILES  # nothing of its own to evict
    assert not isinstance(webhook.admit("b"), Refusal)  # evicts its own idle one
    assert budget.used == 2 and webhook.evicted == 1


def test_refusals_make_at_most_one_warning_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    refusals = Refusals("webhook", 60, clock.now)
    with caplog.at_level(logging.WARNING, "media.listener"):
        for _ in range(1000):
            refusals.note("per-address cap")
            refusals.flush()
        clock.advance(59)
        refusals.flush()
        clock.advance(1)
        refusals.flush()
    assert [r.getMessage() for r in caplog.records] == [
        "Listener webhook x refused or closed connections: 1 per-address cap",
        "Listener webhook x refused or closed connections: 999 per-address cap",
    ]


def test_addresses_are_counted_by_ipv4_or_ipv6_slash_64() -> None:
    assert address_key("192.0.2.7") == "192.0.2.7"
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert (
        address_key("2001:db8:1:2:3:4:5:6")
        == address_key("2001:db8:1:2::9")
        == ("2001:db8:1:2::/64")
    )


def test_a_context_that_allows_tls_1_0_is_raised_to_1_2() -> None:
    """RFC 8996. Python's default server contexts already say 1.2 (so did 59d3d3f's); this
    keeps it true for a context made otherwise."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # setting TLSv1 is deprecated
        context.minimum_version = ssl.TLSVersion.TLSv1
    assert harden_tls(context).minimum_version is ssl.TLSVersion.TLSv1_2
