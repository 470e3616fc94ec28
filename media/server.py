"""The TLS WebSocket media-control endpoint the media processor connects to
(docs/media-protocol.md).

Runs on the media loop. Authenticates before anything else, answers one offer per session, and
answers every malformed or unknown message with an error message (counted), never a crash.
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
CONNECTIONS = web.AppKey("connections", dict[web.WebSocketResponse, asyncio.Transport])
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
        heartbeat=15.0, max_msg_size=control.MAX_MESSAGE_BYTES, timeout=CLOSE_TIMEOUT_SECONDS
    )
    await ws.prepare(request)
    stats.connections += 1
    _REQUEST.set(request)
    if request.transport is not None:
        request.app[CONNECTIONS][ws] = request.transport
    try:
        await _handle(request, ws, stats)
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
    connections: dict[web.WebSocketResponse, asyncio.Transport] = app[CONNECTIONS]
    await asyncio.gather(*(_close(ws, t, reason) for ws, t in list(connections.items())))


async def _close(ws: web.WebSocketResponse, transport: asyncio.Transport, reason: str) -> None:
    try:
        await ws.send_str(control.encode("bye", reason=reason))
    except ConnectionError:
        pass
    await ws.close()
    # The WebSocket said goodbye; skip TLS close_notify so no shutdown is left pending on a
    # loop that is about to stop.
    transport.abort()


async def _handle(request: web.Request, ws: web.WebSocketResponse, stats: ControlStats) -> None:
    path_id = request.match_info["session_id"]
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
    elif session is None or hello["mpMediaSessionId"] != path_id:
        await _reject(ws, stats, "unknownSession", "no such media session")
    elif not hmac.compare_digest(hello["token"].encode(), session.token.encode()):
        await _reject(ws, stats, "unauthorized", "bad session token")
    elif session.mp_attached or session.state != "created":
        await _reject(ws, stats, "sessionBusy", f"session is {session.state}")
    else:
        session.mp_attached = True  # claimed before any await: one MP per session
        await ws.send_str(control.encode("welcome", mpMediaSessionId=session.id))
        await _serve(ws, session, stats)


async def _serve(
    ws: web.WebSocketResponse, session: LocalMediaSession, stats: ControlStats
) -> None:
    reason = "media processor disconnected"
    said_bye = False
    outbox: asyncio.Queue[str] = asyncio.Queue(OUTBOX_MESSAGES)

    def send(message: dict[str, Any]) -> None:
        # Bounded: a processor that stops reading loses the newest requests, counted.
        try:
            outbox.put_nowait(json.dumps(message, separators=(",", ":")))
        except asyncio.QueueFull:
            stats.dropped_outgoing += 1

    async def pump() -> None:
        while True:
            text = await outbox.get()
            await ws.send_str(text)

    session.attach_control(send)
    pumping = asyncio.create_task(pump())
    try:
        async for msg in ws:
            if msg.type == WSMsgType.ERROR:  # closed by aiohttp, e.g. 1009 too big (as above)
                stats.bad_messages += 1
                logger.info("MediaControl x %s: closed", msg.data)
                break
            if msg.type != WSMsgType.TEXT:
                stats.bad_messages += 1
                await ws.send_str(control.error("badMessage", "text messages only"))
                continue
            try:
                message = control.parse(msg.data)
                if message["type"] == "offer":
                    answer = await session.accept_offer(message["sdp"])
                    await ws.send_str(control.encode("answer", sdp=answer))
                elif message["type"] == "bye":
                    reason = str(message.get("reason", "bye"))
                    said_bye = True
                    break
                elif message["type"] in ("dominantSpeaker", "videoSource"):
                    try:
                        session.handle_control(message)
                    except ValueError as exc:
                        raise control.ControlError("badMessage", str(exc)) from None
                else:
                    raise control.ControlError("badState", f"unexpected {message['type']}")
            except control.ControlError as exc:
                stats.bad_messages += 1
                await ws.send_str(control.error(exc.code, str(exc)))
            except Exception as exc:  # an offer aiortc cannot take: it raises several types
                stats.bad_messages += 1
                logger.info("MediaControl x bad offer: %r", exc)
                await ws.send_str(control.error("badOffer", f"{type(exc).__name__}: {exc}"))
    finally:
        pumping.cancel()
        await asyncio.gather(pumping, return_exceptions=True)
        if not said_bye:
            # The protocol treats a closed WebSocket as bye (docs/media-protocol.md), but one
            # that ends without a bye is how a crashed MP looks: say so before closing.
            session.control_lost()
        await session.close(reason)
        if not ws.closed:
            await ws.close()
