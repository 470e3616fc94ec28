"""The TLS WebSocket media-control endpoint the media processor connects to
(docs/media-protocol.md).

Runs on the media loop. Authenticates before anything else, answers one offer per session, and
answers every malformed or unknown message with an error message (counted), never a crash. The
MP's own `error` messages go to the application as session events and are never answered. A
session ends with `bye` and the WebSocket close, whichever side ends it: the bot's session close
(hang-up, platform stop) says bye to the MP; the MP's bye gets the close alone.
"""

from __future__ import annotations

import asyncio
import contextvars
import hmac
import json
import logging
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import WSMsgType, web

from media import control
from media.listener import auth_failed
from media.session import LocalMediaSession

logger = logging.getLogger(__name__)

HELLO_TIMEOUT_SECONDS = 10.0
OUTBOX_MESSAGES = 256  # control messages to the MP waiting to be written
CLOSE_TIMEOUT_SECONDS = 2.0  # waiting for the peer's close frame; aiohttp's default is 10 s


@dataclass(slots=True)
class ControlStats:
    connections: int = 0
    rejected: int = 0
    rate_limited: int = 0  # rejections over the address's failed-authentication budget
    bad_messages: int = 0
    dropped_outgoing: int = 0


class SessionDirectory(Protocol):
    def session(self, session_id: str) -> LocalMediaSession | None: ...


SESSIONS = web.AppKey("sessions", SessionDirectory)
STATS = web.AppKey("stats", ControlStats)
HELLO_TIMEOUT = web.AppKey("hello_timeout", float)
# The request a handler task serves, for _reject to count a failed hello against its address.
_REQUEST: contextvars.ContextVar[web.Request] = contextvars.ContextVar("media_control_request")


def create_app(
    sessions: SessionDirectory, stats: ControlStats, hello_timeout: float = HELLO_TIMEOUT_SECONDS
) -> web.Application:
    app = web.Application()
    app[SESSIONS] = sessions
    app[STATS] = stats
    app[HELLO_TIMEOUT] = hello_timeout
    app[CONNECTIONS] = {}
    app.router.add_get("/MediaProcessor/{session_id}", _media_processor)
    return app


class _Connection:
    """One control WebSocket: its bounded outbox to the MP, and its end (`bye` at most once,
    then the close handshake), whoever ends it: the session's close, the platform's shutdown,
    the MP."""

    def __init__(
        self, ws: web.WebSocketResponse, transport: asyncio.Transport | None, stats: ControlStats
    ) -> None:
        self.ws = ws
        self.transport = transport
        self.bye_received = False  # the MP said bye: a bye is never answered with one
        self._stats = stats
        self._outbox: asyncio.Queue[str] = asyncio.Queue(OUTBOX_MESSAGES)
        self._pump: asyncio.Task[None] | None = None
        self._ending: asyncio.Task[None] | None = None

    def send(self, message: dict[str, Any]) -> None:
        """Media loop: queue a message to the MP. Bounded: a processor that stops reading loses
        the newest requests, counted."""
        try:
            self._outbox.put_nowait(json.dumps(message, separators=(",", ":")))
        except asyncio.QueueFull:
            self._stats.dropped_outgoing += 1

    def start(self) -> None:
        self._pump = asyncio.create_task(self._run_pump())

    async def _run_pump(self) -> None:
        while True:
            text = await self._outbox.get()
            try:
                await self.ws.send_str(text)
            except ConnectionError:
                return  # closing or gone: the reader sees it

    def end(self, reason: str) -> None:
        """Media loop: say bye (unless the MP said it first, or the connection is gone), then
        close. Idempotent; returns at once (wait() awaits the close handshake)."""
        if self._ending is None:
            self._ending = asyncio.create_task(self._end(reason))

    async def wait(self) -> None:
        if self._ending is not None:
            await asyncio.shield(self._ending)

    async def close(self, reason: str) -> None:
        """End, wait for the handshake, then drop the TLS transport: no close_notify exchange is
        left pending on a loop that is about to stop."""
        self.end(reason)
        await self.wait()
        if self.transport is not None:
            self.transport.abort()

    async def _end(self, reason: str) -> None:
        if self._pump is not None:
            # Requests still queued are moot; the bye must not interleave with a send.
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)
        if not self.bye_received and not self.ws.closed:
            try:
                await self.ws.send_str(control.encode("bye", reason=reason))
            except ConnectionError:
                pass  # the peer left first
        # RFC 6455 section 7.1.2: our close frame, then the MP's, at most CLOSE_TIMEOUT_SECONDS.
        # A reader blocked in receive() on another task is woken by aiohttp and sees CLOSING.
        await self.ws.close()


CONNECTIONS = web.AppKey("connections", dict[web.WebSocketResponse, _Connection])


async def _reject(ws: web.WebSocketResponse, stats: ControlStats, code: str, why: str) -> None:
    stats.rejected += 1
    request = _REQUEST.get(None)
    # Every rejection before the token proved right is a failed authentication (a wrong
    # token, a guessed session id, no hello); sessionBusy comes after a right token. Over the
    # address's budget, the listener refuses its next connections before TLS and says so in
    # its periodic warning, not here once per attempt.
    if request is not None and code != "sessionBusy" and not auth_failed(request):
        stats.rate_limited += 1
        if request.transport is not None:
            request.transport.abort()  # no error message, no close handshake: nothing to wait for
        return
    logger.info("MediaControl x rejected: %s (%s)", code, why)
    try:
        await ws.send_str(control.error(code, why))
    except ConnectionError:
        pass  # the peer left first; nothing more to tell it
    await ws.close()


async def _media_processor(request: web.Request) -> web.WebSocketResponse:
    stats = request.app[STATS]
    ws = web.WebSocketResponse(
        heartbeat=15.0,
        # aiohttp refuses a message of max_msg_size bytes or more (its reader compares with
        # >=): the page's limit is "at most", so one more. Past it the reader closes with 1009
        # (RFC 6455 section 7.4.1) before it buffers the payload.
        max_msg_size=control.MAX_MESSAGE_BYTES + 1,
        # No permessage-deflate (RFC 7692): aiohttp checks an inflated message against
        # max_msg_size with ">", so the limit would move by a byte; control messages are small.
        compress=False,
        timeout=CLOSE_TIMEOUT_SECONDS,
    )
    await ws.prepare(request)
    stats.connections += 1
    _REQUEST.set(request)
    connection = _Connection(ws, request.transport, stats)
    if request.transport is not None:
        request.app[CONNECTIONS][ws] = connection
    try:
        await _handle(request, connection, stats)
        await connection.wait()
    finally:
        request.app[CONNECTIONS].pop(ws, None)
        if request.transport is not None:
            # The WebSocket close handshake is done (or the peer is gone): end TLS here rather
            # than leave a close_notify exchange pending that may outlive the media loop
            # (uvloop then fails "Event loop is closed" at shutdown).
            request.transport.abort()
    return ws


async def close_all(app: web.Application, reason: str) -> None:
    """Say bye on every open control connection and close it (before the runner's cleanup,
    which would drop the transports and leave each handler waiting for a close frame)."""
    connections: dict[web.WebSocketResponse, _Connection] = app[CONNECTIONS]
    await asyncio.gather(*(c.close(reason) for c in list(connections.values())))


async def _handle(request: web.Request, connection: _Connection, stats: ControlStats) -> None:
    path_id = request.match_info["session_id"]
    ws = connection.ws
    try:
        first = await asyncio.wait_for(ws.receive(), request.app[HELLO_TIMEOUT])
    except TimeoutError:
        await _reject(ws, stats, "timeout", "no hello")
        return
    if first.type == WSMsgType.ERROR:
        # aiohttp has closed it already, 1009 for a message over max_msg_size (RFC 6455
        # section 7.4.1): nothing more can be sent.
        stats.rejected += 1
        logger.info("MediaControl x rejected: %s", first.data)
        return
    if first.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
        return  # the MP left, or the platform is closing this connection (close_all)
    if first.type != WSMsgType.TEXT:
        await _reject(ws, stats, "badMessage", "expected a hello text message")
        return
    try:
        hello = control.parse(first.data)
    except control.ControlError as exc:
        await _reject(ws, stats, exc.code, str(exc))
        return
    session = request.app[SESSIONS].session(path_id)
    if hello["type"] != "hello":
        await _reject(ws, stats, "badState", "the first message must be hello")
    elif hello["protocol"] != control.PROTOCOL:
        await _reject(ws, stats, "unsupportedProtocol", f"this endpoint speaks {control.PROTOCOL}")
    elif session is None or session.ended or hello["mpMediaSessionId"] != path_id:
        # An ended session is gone for the MP even while the bot still lists it (its call may
        # go on for a moment): the same answer as an id that never existed.
        await _reject(ws, stats, "unknownSession", "no such media session")
    elif not hmac.compare_digest(hello["token"].encode(), session.token.encode()):
        await _reject(ws, stats, "unauthorized", "bad session token")
    elif session.mp_attached or session.state != "created":
        await _reject(ws, stats, "sessionBusy", f"session is {session.state}")
    else:
        session.mp_attached = True  # claimed before any await: one MP per session
        await ws.send_str(control.encode("welcome", mpMediaSessionId=session.id))
        await _serve(connection, session, stats)


async def _serve(connection: _Connection, session: LocalMediaSession, stats: ControlStats) -> None:
    ws = connection.ws
    reason = "media processor disconnected"
    connection.start()
    session.attach_control(connection.send, connection.end)
    try:
        async for msg in ws:
            if msg.type == WSMsgType.ERROR:  # closed by aiohttp, e.g. 1009 too big (as above)
                stats.bad_messages += 1
                logger.info("MediaControl x %s: closed", msg.data)
                break
            reply: str | None
            if msg.type != WSMsgType.TEXT:
                stats.bad_messages += 1
                reply = control.error("badMessage", "text messages only")
            else:
                try:
                    message = control.parse(msg.data)
                except control.ControlError as exc:
                    reply = _refusal(exc, stats)
                else:
                    if message["type"] == "bye":
                        reason = str(message.get("reason") or "bye")
                        connection.bye_received = True
                        break
                    reply = await _respond(session, message, stats)
            if reply is not None:
                try:
                    await ws.send_str(reply)
                except ConnectionError:
                    break  # the session is ending under us (bye sent, close under way)
    finally:
        if not connection.bye_received:
            # The protocol treats a closed WebSocket as bye (docs/media-protocol.md), but one
            # that ends without a bye is how a crashed MP looks: say so before closing. A no-op
            # when the bot ended the session itself.
            session.control_lost()
        await session.close(reason)  # ends the connection: no bye back to the MP's bye
        connection.end(reason)  # already ending when the bot closed the session first
        await connection.wait()


def _refusal(exc: control.ControlError, stats: ControlStats) -> str | None:
    stats.bad_messages += 1
    if exc.kind == "error":
        # Never answered, malformed or not: two peers that each refuse the other's error
        # would trade them forever.
        logger.info("MediaControl x dropped a malformed error message: %s", exc)
        return None
    return control.error(exc.code, str(exc))


async def _respond(
    session: LocalMediaSession, message: dict[str, Any], stats: ControlStats
) -> str | None:
    """The reply to one valid message from the MP (other than bye), or None."""
    kind = message["type"]
    try:
        if kind == "offer":
            return await _answer(session, message["sdp"], stats)
        if kind == "error":
            session.report_mp_error(message["code"], message["message"])
            return None
        if kind in ("dominantSpeaker", "videoSource"):
            try:
                session.handle_control(message)
            except ValueError as exc:
                raise control.ControlError("badMessage", str(exc), kind) from None
            return None
        raise control.ControlError("badState", f"unexpected {kind}", kind)
    except control.ControlError as exc:
        return _refusal(exc, stats)


async def _answer(session: LocalMediaSession, sdp: str, stats: ControlStats) -> str:
    if session.negotiated:
        stats.bad_messages += 1
        # webrtc-mp/1 has one offer/answer per session: a changed set of m-lines or an ICE
        # restart needs a new session (docs/media-protocol.md, Sequence).
        return control.error("badState", "this session has its answer: one offer per session")
    try:
        answer = await session.accept_offer(sdp)
    except Exception as exc:  # an offer aiortc cannot take: it raises several types
        stats.bad_messages += 1
        logger.info("MediaControl x bad offer: %r", exc)
        return control.error("badOffer", f"{type(exc).__name__}: {exc}")
    return control.encode("answer", sdp=answer)
