"""Hardened TCP listeners: every listener the bot opens (the notification webhook, the
media-control endpoint, and later a call API and metrics) is started by `serve()`.

What an outsider can do to a listener with a public IP, and what stops it here:

- Hold connections open (idle, or sending headers one byte at a time, "slowloris"): each
  connection waits for its TLS handshake, then for the first byte of a request (idle
  timeout), then for the whole header (header timeout), then for the whole body (body
  timeout), and is aborted when its deadline passes. aiohttp alone waits 3,630 s for a
  request (`keepalive_timeout` in aiohttp/web_protocol.py) and asyncio 60 s for a handshake.
- Open more connections than the process has files: a cap on the connections per listener
  and per source address, and one process-wide budget below RLIMIT_NOFILE (getrlimit(2)) so
  the process keeps files for its calls. At the listener's cap the newest connection is
  accepted and the oldest one that is not in the middle of a request (handshaking, idle or
  still sending its header) is closed: a flood of idle connections cannot keep a genuine
  client out. With nothing to close, the new connection is accepted and reset at once.
- Make the process log per attempt: asyncio logs "socket.accept() out of system resource" on
  every accept that fails with EMFILE, once per pending connection and per retry
  (asyncio/selector_events.py `_accept_connection`), which filled 1.6 GB of log in minutes.
  Here the listener accepts by itself (`loop.add_reader` on the listening socket, then
  `loop.connect_accepted_socket`, on asyncio's loop and uvloop alike), pauses accepting for a
  second on EMFILE and says what it refused in at most one WARNING per interval.
- Guess credentials at full speed: `auth_failed(request)` counts a failed authentication in a
  bounded map of token buckets keyed by source address; an address over its budget is
  refused at accept, before any TLS work (its connections are reset).

TLS: 1.2 at least (RFC 8996 deprecates 1.0 and 1.1; `harden_tls`).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from media.admission import (
    AuthFailures,
    Conn,
    ConnectionTable,
    FileBudget,
    Refusal,
    Refusals,
    State,
    address_key,
    process_budget,
)

logger = logging.getLogger(__name__)

Clock = Callable[[], float]

# Accept errors that mean "out of files or memory now": retry later instead of spinning
# (the same set asyncio/selector_events.py `_accept_connection` treats so).
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_PAUSE_SECONDS = 1.0  # asyncio's ACCEPT_RETRY_DELAY (asyncio/constants.py)
ACCEPTS_PER_WAKEUP = 64  # bounded work per readiness event, so one listener cannot hog the loop
BACKLOG = 128  # aiohttp's TCPSite default
# SO_LINGER on, 0 s: close() sends RST and keeps no TIME_WAIT state (socket(7)).
_RESET_LINGER = struct.pack("ii", 1, 0)


@dataclass(frozen=True, slots=True)
class ListenerLimits:
    """Limits of one listener (bot/settings.py has them as `listener_*` settings)."""

    max_connections: int = 512
    max_connections_per_address: int = 64
    # Files the process keeps for everything but its listeners (calls' UDP sockets, log
    # files, Graph connections): all listeners together stay this far below RLIMIT_NOFILE.
    reserved_files: int = 256
    handshake_timeout_seconds: float = 10.0
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 30.0
    idle_timeout_seconds: float = 120.0
    auth_failures_per_minute: float = 30.0  # per source address; 0: not limited
    max_line_size: int = 8190  # request line and each header line (aiohttp's defaults)
    max_field_size: int = 8190
    warning_interval_seconds: float = 60.0


def harden_tls(context: ssl.SSLContext) -> ssl.SSLContext:
    """TLS 1.2 at least (RFC 8996; Python's default contexts already say so since 3.10, this
    keeps it true for a context made otherwise)."""
    if context.minimum_version < ssl.TLSVersion.TLSv1_2:
        context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


# -- the site --------------------------------------------------------------------------------


class _Guarded(asyncio.Protocol):
    """aiohttp's RequestHandler behind a per-connection deadline (the seam: aiohttp's
    web_protocol.py arms only its keep-alive timer, from connection_made, 3,630 s)."""

    __slots__ = ("_listener", "_conn", "_inner")

    def __init__(self, listener: HardenedListener, conn: Conn, inner: RequestHandler) -> None:
        self._listener = listener
        self._conn = conn
        self._inner = inner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._listener._connected(self._conn, self._inner, transport)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        conn = self._conn
        if conn.state is State.IDLE:
            self._listener._enter(conn, State.HEADERS)
        self._inner.data_received(data)
        if conn.state is State.BODY and (conn.payload is None or conn.payload.is_eof()):
            self._listener._enter(conn, State.ACTIVE)

    def eof_received(self) -> None:
        self._inner.eof_received()  # None, as aiohttp's: the transport closes on the peer's EOF

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self._inner.connection_lost(exc)
        finally:
            self._listener._lost(self._conn, self._inner)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class HardenedListener:
    """Accepts for one aiohttp runner on its own listening sockets (see the module doc)."""

    def __init__(
        self,
        name: str,
        runner: web.BaseRunner,
        limits: ListenerLimits,
        ssl_context: ssl.SSLContext | None,
        budget: FileBudget,
        auth: AuthFailures,
        clock: Clock = time.monotonic,
    ) -> None:
        self.name = name
        self.limits = limits
        self._runner = runner
        self._ssl = harden_tls(ssl_context) if ssl_context is not None else None
        self.table = ConnectionTable(
            limits.max_connections, limits.max_connections_per_address, budget
        )
        self.auth = auth
        self.refusals = Refusals(name, limits.warning_interval_seconds, clock)
        self.sockets: list[socket.socket] = []
        self._handlers: dict[RequestHandler, Conn] = {}
        self._handshakes: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._resume: asyncio.TimerHandle | None = None
        self._flush: asyncio.TimerHandle | None = None
        self._closed = False

    # -- listening ---------------------------------------------------------------------------

    async def start(self, host: str | None, port: int) -> None:
        loop = self._loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        seen: set[tuple[int, Any]] = set()
        try:
            for family, kind, proto, _name, address in infos:
                if (family, address) in seen:
                    continue
                seen.add((family, address))
                sock = socket.socket(family, kind, proto)
                self.sockets.append(sock)
                # As asyncio's create_server does on POSIX (asyncio/base_events.py).
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    sock.bind(address)
                except OSError as exc:
                    raise OSError(
                        exc.errno,
                        f"error while attempting to bind on address {address!r}: "
                        f"{(exc.strerror or str(exc)).lower()}",
                    ) from None
                sock.listen(BACKLOG)
                sock.setblocking(False)
        except BaseException:
            for sock in self.sockets:
                sock.close()
            self.sockets.clear()
            raise
        self._start_accepting()

    def _start_accepting(self) -> None:
        assert self._loop is not None
        self._resume = None
        if self._closed:
            return
        for sock in self.sockets:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def _stop_accepting(self) -> None:
        assert self._loop is not None
        for sock in self.sockets:
            self._loop.remove_reader(sock.fileno())

    def close(self) -> None:
        """Stop listening and drop every connection still handshaking (the runner's cleanup
        closes the others)."""
        if self._closed:
            return
        self._closed = True
        if self._loop is not None:
            self._stop_accepting()
        for handle in (self._resume, self._flush):
            if handle is not None:
                handle.cancel()
        for sock in self.sockets:
            sock.close()
        for task in list(self._handshakes):
            task.cancel()

    async def _cleaned_up(self, app: web.Application) -> None:
        """After the runner closed every connection: give back what any left holds of the
        process's file budget (one whose loop stopped before its connection_lost)."""
        for conn in list(self.table.conns.values()):
            self.table.release(conn)

    # -- accepting ---------------------------------------------------------------------------

    def _accept(self, listening: socket.socket) -> None:
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                sock, peer = listening.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno not in RESOURCE_ERRNOS:
                    raise  # the loop's handler logs it once
                # Out of files: stop reading the listening socket for a while instead of
                # failing on it on every loop iteration.
                self._note(f"accept failed ({errno.errorcode.get(exc.errno or 0, exc.errno)})")
                self._stop_accepting()
                assert self._loop is not None
                if self._resume is None:
                    self._resume = self._loop.call_later(
                        ACCEPT_PAUSE_SECONDS, self._start_accepting
                    )
                return
            self._admit(sock, peer)

    def _admit(self, sock: socket.socket, peer: Any) -> None:
        key = address_key(str(peer[0])) if isinstance(peer, tuple) and peer else "?"
        if self.auth.blocked(key):
            self.auth.limited += 1
            self._refuse(sock, Refusal.AUTH)
            return
        admitted = self.table.admit(key)
        if isinstance(admitted, Refusal):
            self._refuse(sock, admitted)
            return
        conn = admitted
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert self._loop is not None and self._runner.server is not None
        server = self._runner.server

        def protocol() -> asyncio.Protocol:
            return _Guarded(self, conn, server())

        handshake = self._loop.create_task(self._connect(conn, sock, protocol))
        self._handshakes.add(handshake)
        handshake.add_done_callback(self._handshakes.discard)
        conn.close = lambda: None if handshake.cancel() else None
        self._arm(conn, self.limits.handshake_timeout_seconds)

    async def _connect(
        self, conn: Conn, sock: socket.socket, protocol: Callable[[], asyncio.Protocol]
    ) -> None:
        assert self._loop is not None
        try:
            if self._ssl is None:
                await self._loop.connect_accepted_socket(protocol, sock)
            else:
                await self._loop.connect_accepted_socket(
                    protocol,
                    sock,
                    ssl=self._ssl,
                    ssl_handshake_timeout=self.limits.handshake_timeout_seconds,
                    # A peer that never answers close_notify must not hold the connection
                    # for asyncio's default 30 s.
                    ssl_shutdown_timeout=self.limits.handshake_timeout_seconds,
                )
        except asyncio.CancelledError:
            sock.close()  # the loop closes its transport; a socket never wrapped closes here
            if conn.state is State.HANDSHAKE:
                self.table.release(conn)
            raise
        except Exception:  # handshake failed or timed out: the peer's problem, counted only
            sock.close()
            if conn.state is State.HANDSHAKE:
                self._note("TLS handshake failed or timed out")
                self.table.release(conn)

    def _refuse(self, sock: socket.socket, why: Refusal) -> None:
        """Reset at once: no TLS, no FIN exchange, no TIME_WAIT."""
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_LINGER)
        except OSError:
            pass
        sock.close()
        self._note(why.value)

    def _note(self, what: str) -> None:
        self.refusals.note(what)
        due = self.refusals.due()
        if due is None:
            return
        if due == 0:
            self.refusals.flush()
            due = self.refusals.interval
        if self._flush is None and self._loop is not None and not self._closed:
            self._flush = self._loop.call_later(due, self._flush_refusals)

    def _flush_refusals(self) -> None:
        self._flush = None
        self.refusals.flush()
        due = self.refusals.due()
        if due is not None and self._loop is not None and not self._closed:
            self._flush = self._loop.call_later(max(due, 0.001), self._flush_refusals)

    # -- deadlines ---------------------------------------------------------------------------

    def _arm(self, conn: Conn, seconds: float | None) -> None:
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        if seconds is not None and self._loop is not None:
            conn.timer = self._loop.call_later(seconds, self._expired, conn)

    def _expired(self, conn: Conn) -> None:
        conn.timer = None
        if conn.id not in self.table.conns:
            return
        self._note(f"{conn.state.value} timeout")
        close = conn.close
        if conn.state is State.HANDSHAKE:
            self.table.release(conn)
        close()

    def _enter(self, conn: Conn, state: State) -> None:
        self.table.set_state(conn, state)
        timeouts = {
            State.IDLE: self.limits.idle_timeout_seconds,
            State.HEADERS: self.limits.header_timeout_seconds,
            State.BODY: self.limits.body_timeout_seconds,
        }
        self._arm(conn, timeouts.get(state))

    def _connected(
        self, conn: Conn, handler: RequestHandler, transport: asyncio.BaseTransport
    ) -> None:
        self._handlers[handler] = conn
        conn.close = transport.abort  # type: ignore[attr-defined]
        self._enter(conn, State.IDLE)

    def _lost(self, conn: Conn, handler: RequestHandler) -> None:
        self._handlers.pop(handler, None)
        self.table.release(conn)

    # -- requests ----------------------------------------------------------------------------

    def conn_of(self, request: web.BaseRequest) -> Conn | None:
        return self._handlers.get(request.protocol)

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        conn = self.conn_of(request)
        if conn is not None:
            conn.payload = request.content
            self._enter(conn, State.ACTIVE if request.content.is_eof() else State.BODY)
        try:
            return await handler(request)
        except ConnectionError:
            if request.transport is not None and not request.transport.is_closing():
                raise
            # The peer is gone (left, or closed at its deadline) while the handler read the
            # body: aiohttp would log this as an ERROR with its traceback, once per connection
            # any client cares to drop. An answer nobody reads ends it quietly (aiohttp's
            # finish_response takes the failed write as a premature disconnection).
            return web.Response(status=408)
        finally:
            if conn is not None:
                conn.payload = None
                if conn.id in self.table.conns:
                    # The response is written next: a peer that does not read it is idle.
                    self._enter(conn, State.IDLE)


LISTENER = web.AppKey("listener", HardenedListener)


class HardenedSite(web.BaseSite):
    """An aiohttp site whose connections go through a HardenedListener."""

    __slots__ = ("_listener", "_host", "_port")

    def __init__(
        self, runner: web.BaseRunner, listener: HardenedListener, host: str | None, port: int
    ) -> None:
        super().__init__(runner)
        self._listener = listener
        self._host = host
        self._port = port

    @property
    def name(self) -> str:
        scheme = "https" if self._listener._ssl else "http"
        return f"{scheme}://{self._host or '0.0.0.0'}:{self._port}"

    async def start(self) -> None:
        await super().start()
        await self._listener.start(self._host, self._port)
        self._server = _Sockets(self._listener)  # type: ignore[assignment]


class _Sockets:
    """What aiohttp's runner reads of a site's server: its sockets, and close()."""

    def __init__(self, listener: HardenedListener) -> None:
        self._listener = listener

    @property
    def sockets(self) -> list[socket.socket]:
        return [s for s in self._listener.sockets if s.fileno() >= 0]

    def close(self) -> None:
        self._listener.close()


async def serve(
    name: str,
    app: web.Application,
    host: str | None,
    port: int,
    ssl_context: ssl.SSLContext | None,
    limits: ListenerLimits,
    *,
    budget: FileBudget | None = None,
    clock: Clock = time.monotonic,
    **runner_kwargs: Any,
) -> tuple[web.AppRunner, HardenedListener]:
    """Set up `app` behind a hardened listener on host:port and start it; the caller cleans
    the runner up. Raises OSError when it cannot listen."""
    runner = web.AppRunner(
        app,
        # aiohttp's own timer, from connection_made and after each response: kept in step
        # with the idle timeout (the listener enforces the finer deadlines).
        keepalive_timeout=limits.idle_timeout_seconds,
        max_line_size=limits.max_line_size,
        max_field_size=limits.max_field_size,
        **runner_kwargs,
    )
    listener = HardenedListener(
        name,
        runner,
        limits,
        ssl_context,
        budget if budget is not None else process_budget(limits.reserved_files),
        AuthFailures(limits.auth_failures_per_minute, clock),
        clock,
    )
    app[LISTENER] = listener
    app.middlewares.append(listener.middleware)
    app.on_cleanup.append(listener._cleaned_up)
    await runner.setup()
    site = HardenedSite(runner, listener, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, listener


def auth_failed(request: web.BaseRequest) -> bool:
    """Count a failed authentication from the request's source address. True while the
    address is within its budget (answer as usual); False once over it: the connection is
    closed after this answer and the address is refused at accept until its budget refills."""
    listener = request.app.get(LISTENER) if isinstance(request, web.Request) else None
    if listener is None:
        return True
    key = address_key(request.remote or "?")
    if listener.auth.failed(key):
        return True
    listener._note(Refusal.AUTH.value)
    return False


def auth_blocked(request: web.BaseRequest) -> bool:
    """True if the request's address is over its failed-authentication budget (a request on
    a connection opened before it went over)."""
    listener = request.app.get(LISTENER) if isinstance(request, web.Request) else None
    if listener is None:
        return False
    if listener.auth.blocked(address_key(request.remote or "?")):
        listener.auth.limited += 1
        listener._note(Refusal.AUTH.value)
        return True
    return False


__all__ = [
    "LISTENER",
    "AuthFailures",
    "ConnectionTable",
    "FileBudget",
    "HardenedListener",
    "ListenerLimits",
    "Refusal",
    "State",
    "address_key",
    "auth_blocked",
    "auth_failed",
    "harden_tls",
    "serve",
]
