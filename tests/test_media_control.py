"""The media-control endpoint (docs/media-protocol.md): bad input gets an error message, never a
crash, and the media processor's own errors reach the application. (tests/test_media_conformance.py
walks the whole page.)"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import pytest

from bot.app import Bot
from bot.devcerts import DevCerts
from emulator import Emulator
from media import MediaPlatform, MediaPlatformSettings
from media.control import PROTOCOL
from media.events import MediaProcessorError
from media.session import MediaEvent, MediaSessionOptions
from media.video import VideoSocketSettings
from tests.conftest import settings_for


def start_platform(
    certs: DevCerts, on_event: Callable[[MediaEvent], None] | None = None, **settings: Any
) -> MediaPlatform:
    """A started media platform on a free port with the test certificate (tests/conftest.py);
    `settings` are MediaPlatformSettings fields."""
    media = MediaPlatform(
        MediaPlatformSettings(
            certificate_file=certs.cert_file,
            private_key_file=certs.key_file,
            instance_internal_port=0,
            **settings,
        ),
        on_event=on_event,
    )
    media.start()
    return media


@pytest.fixture
def platform(certs: DevCerts) -> Iterator[MediaPlatform]:
    media = start_platform(certs)
    yield media
    media.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def hello(session_id: str, token: str) -> str:
    return json.dumps(
        {"type": "hello", "protocol": PROTOCOL, "mpMediaSessionId": session_id, "token": token}
    )


async def _exchange(
    http: aiohttp.ClientSession, ssl_ctx: ssl.SSLContext, uri: str, *messages: str | bytes
) -> list[dict[str, object]]:
    replies: list[dict[str, object]] = []
    async with http.ws_connect(uri, ssl=ssl_ctx) as ws:
        for message in messages:
            if isinstance(message, bytes):
                await ws.send_bytes(message)
            else:
                await ws.send_str(message)
            reply = await ws.receive(timeout=5)
            if reply.type != aiohttp.WSMsgType.TEXT:
                break
            replies.append(json.loads(reply.data))
    return replies


@pytest.mark.parametrize(
    ("first", "code"),
    [
        ("{not json", "badMessage"),
        ("[" * 100_000 + "]" * 100_000, "badMessage"),
        ('{"type": "offer", "sdp": "v=0"}', "badState"),
        ('{"type": "launch-missiles"}', "unknownType"),
        (b"\x00\x01", "badMessage"),
    ],
)
async def test_bad_first_message_is_refused(
    platform: MediaPlatform,
    http: aiohttp.ClientSession,
    client_ssl: ssl.SSLContext,
    first: str | bytes,
    code: str,
) -> None:
    session = platform.create_session()
    replies = await _exchange(http, client_ssl, session.mp_uri, first)
    assert replies[0]["type"] == "error" and replies[0]["code"] == code
    # Lost nothing: the real media processor can still claim the session.
    replies = await _exchange(http, client_ssl, session.mp_uri, hello(session.id, session.token))
    assert replies[0]["type"] == "welcome"


async def test_wrong_token_and_unknown_session_are_refused(
    platform: MediaPlatform, http: aiohttp.ClientSession, client_ssl: ssl.SSLContext
) -> None:
    session = platform.create_session()
    replies = await _exchange(http, client_ssl, session.mp_uri, hello(session.id, "forged"))
    assert replies[0]["code"] == "unauthorized"
    other = session.mp_uri.replace(session.id, "not-a-session")
    replies = await _exchange(http, client_ssl, other, hello("not-a-session", session.token))
    assert replies[0]["code"] == "unknownSession"
    assert platform.control_stats.rejected == 2


async def test_a_session_takes_one_media_processor(
    platform: MediaPlatform, http: aiohttp.ClientSession, client_ssl: ssl.SSLContext
) -> None:
    session = platform.create_session()
    async with http.ws_connect(session.mp_uri, ssl=client_ssl) as first:
        await first.send_str(hello(session.id, session.token))
        assert json.loads((await first.receive(timeout=5)).data)["type"] == "welcome"
        replies = await _exchange(
            http, client_ssl, session.mp_uri, hello(session.id, session.token)
        )
        assert replies[0]["code"] == "sessionBusy"


async def test_garbage_after_hello_is_answered_and_the_session_survives(
    platform: MediaPlatform, http: aiohttp.ClientSession, client_ssl: ssl.SSLContext
) -> None:
    session = platform.create_session()
    replies = await _exchange(
        http,
        client_ssl,
        session.mp_uri,
        hello(session.id, session.token),
        "[]",
        '{"type": "offer", "sdp": "this is not SDP"}',
        '{"type": "answer", "sdp": "v=0"}',
    )
    assert [r["type"] for r in replies] == ["welcome", "error", "error", "error"]
    assert [r["code"] for r in replies[1:]] == ["badMessage", "badOffer", "badState"]
    assert platform.control_stats.bad_messages == 3
    # The endpoint still serves everyone else.
    fresh = platform.create_session()
    replies = await _exchange(http, client_ssl, fresh.mp_uri, hello(fresh.id, fresh.token))
    assert replies[0]["type"] == "welcome"


async def test_a_media_processor_error_is_the_calls_media_event(
    emulator: Emulator, certs: DevCerts
) -> None:
    """The emulator's MP refuses a subscription to an MSI nobody has (badSubscription): the
    call's `media` handlers get it as a MediaProcessorError, through the bot's real path."""
    bot = Bot(settings_for(emulator, certs))
    await bot.start()
    try:
        options = MediaSessionOptions(video_sockets=(VideoSocketSettings("recvonly"),))
        call = await bot.join(emulator.join_url(emulator.config.meetings[0]), media_options=options)
        heard: asyncio.Queue[MediaProcessorError] = asyncio.Queue()
        call.events.on("media", heard.put_nowait)
        await call.wait_for("established", 15)
        session = bot.media_session(call)
        assert session is not None
        socket = session.video_sockets[0]
        if socket.receive_status != "active":
            await bot.wait_media_event(lambda e: socket.receive_status == "active", 10)
        socket.subscribe(0xBAD, "sd360p")
        error = await asyncio.wait_for(heard.get(), 10)
        assert error.session_id == session.id and error.code == "badSubscription", error
        assert error.message
    finally:
        await bot.stop()
