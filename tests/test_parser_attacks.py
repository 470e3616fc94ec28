"""Hostile bytes against the real bot get a clear error, never a crash (issue 14).

Each input goes where an outsider would send it: a signed notification POSTed over TLS to the
bot's real webhook (an RS256 token from the emulator's published key, as Graph signs them,
https://learn.microsoft.com/en-us/microsoftteams/platform/bots/calls-and-meetings/call-notifications),
a message over a real TLS WebSocket to its media-control endpoint (docs/media-protocol.md), a
roster notification during a real app-hosted call (aiortc on both sides), and a replay fixture
on disk. Every one of these crashed, hung or ballooned on commit 59d3d3f.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import struct
import tracemalloc
import uuid
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from bot.app import Bot
from bot.devcerts import DevCerts
from emulator import Emulator
from emulator.participant import Meeting, ParticipantScript
from media.control import MAX_MESSAGE_BYTES, PROTOCOL
from media.pipeline.replay import FixtureError, load, save_frames
from tests.conftest import APP_ID, TENANT_ID, emulator_config, settings_for

WITHIN = 10.0
HUGE = "9" * 5000  # past CPython's 4,300-digit int conversion limit
SPEAKER_MSI = 0x5EED
SPEAKER = "p-1"


@dataclass
class Rig:
    emulator: Emulator
    bot: Bot
    http: aiohttp.ClientSession
    ssl: ssl.SSLContext

    def token(self) -> str:
        claims = {"iss": "https://api.botframework.com", "aud": APP_ID, "tid": TENANT_ID}
        return self.emulator.notification_keys[0].sign(claims, 600)

    async def post(self, body: bytes) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token()}", "Content-Type": "application/json"}
        async with self.http.post(
            self.bot.callback_url, data=body, headers=headers, ssl=self.ssl
        ) as response:
            text = await response.text()
            return response.status, json.loads(text) if text else None

    async def ws(self) -> tuple[aiohttp.ClientWebSocketResponse, Any]:
        session = self.bot.media.create_session()
        ws = await self.http.ws_connect(session.mp_uri, ssl=self.ssl)
        return ws, session


def late_talker() -> Meeting:
    """The test meeting's participant, talking only from 1 s after media start: time for the
    test's roster to arrive before the bot hears them."""
    return Meeting(
        thread_id="19:meeting_cGFyc2Vy@thread.v2",
        organizer_id=str(uuid.UUID(int=1)),
        tenant_id=TENANT_ID,
        participants=[
            ParticipantScript(
                "Tess Tester", str(uuid.UUID(int=2)), SPEAKER_MSI, SPEAKER, 3, ((1.0, 4.0),)
            )
        ],
    )


@pytest.fixture
async def rig(certs: DevCerts, client_ssl: ssl.SSLContext) -> AsyncIterator[Rig]:
    emulator = Emulator(emulator_config(certs, meetings=[late_talker()]))
    await emulator.start()
    bot = Bot(settings_for(emulator, certs))
    await bot.start()
    try:
        async with aiohttp.ClientSession() as http:
            yield Rig(emulator, bot, http, client_ssl)
    finally:
        await bot.stop()
        await emulator.stop()


class LogWaiter(logging.Handler):
    """Wakes the test's loop when a matching record is logged on any thread (the media
    platform logs on its own loop's thread): the event to await, rather than a sleep."""

    def __init__(self, logger: str, text: str) -> None:
        super().__init__()
        self._logger, self._text = logging.getLogger(logger), text
        self._loop = asyncio.get_running_loop()
        self._seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self._text in record.getMessage():
            self._loop.call_soon_threadsafe(self._seen.set)

    async def __aenter__(self) -> LogWaiter:
        self._level = self._logger.level
        self._logger.setLevel(logging.INFO)  # the line is an info one
        self._logger.addHandler(self)
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                await asyncio.wait_for(self._seen.wait(), WITHIN)
        finally:
            self._logger.removeHandler(self)
            self._logger.setLevel(self._level)


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def call_item(call_id: str, **data: Any) -> dict[str, Any]:
    return {
        "@odata.type": "#microsoft.graph.commsNotification",
        "changeType": "updated",
        "resourceUrl": f"/communications/calls/{call_id}",
        "resourceData": {"@odata.type": "#microsoft.graph.call", "state": "established", **data},
    }


def body(*items: dict[str, Any]) -> str:
    return json.dumps({"value": list(items)})


# -- the webhook ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        # An integer past the digit limit, in an item and at the top: 500 on 59d3d3f.
        body(call_item("c-1")).replace('"state"', f'"n": {HUGE}, "state"'),
        f'{{"value": [], "n": -{HUGE}}}',
        # Not JSON (RFC 8259 section 6), which json.loads takes: applied on 59d3d3f.
        body(call_item("c-1")).replace('"state"', '"n": NaN, "state"'),
    ],
    ids=["huge integer in an item", "huge integer at the top", "NaN"],
)
async def test_a_signed_body_with_a_bad_number_is_400(
    rig: Rig, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    status, answer = await rig.post(text.encode())
    assert status == 400 and answer["error"] == "badRequest", answer
    stats = rig.bot.webhook_stats
    assert stats is not None and stats.malformed == 1 and stats.accepted == 0
    assert no_tracebacks(caplog) == []
    # The same post without the bad number is taken.
    status, _ = await rig.post(body(call_item("c-1")).encode())
    assert status == 202 and stats.accepted == 1 and stats.malformed == 1


# -- media control ---------------------------------------------------------------------------------


def hello(session: Any, **extra: Any) -> str:
    fields = {"protocol": PROTOCOL, "mpMediaSessionId": session.id, "token": session.token}
    return json.dumps({"type": "hello", **fields, **extra})


async def test_a_huge_integer_in_the_hello_is_refused_with_an_error_then_closed(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    ws, session = await rig.ws()
    async with ws:
        await ws.send_str(hello(session).replace('"type"', f'"n": {HUGE}, "type"'))
        reply = await ws.receive(timeout=WITHIN)
        assert reply.type == aiohttp.WSMsgType.TEXT, reply  # 59d3d3f: closed 1006
        error = json.loads(reply.data)
        assert error["type"] == "error" and error["code"] == "badMessage"
        assert "integer of 5000 digits" in error["message"]
        closing = await ws.receive(timeout=WITHIN)
        assert closing.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1000
    assert rig.bot.media.control_stats.rejected == 1
    assert no_tracebacks(caplog) == []
    # Nothing was taken: the real media processor still gets the session.
    async with rig.http.ws_connect(session.mp_uri, ssl=rig.ssl) as again:
        await again.send_str(hello(session))
        assert json.loads((await again.receive(timeout=WITHIN)).data)["type"] == "welcome"


async def test_a_huge_integer_after_hello_is_a_bad_message_and_the_session_serves_on(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    ws, session = await rig.ws()
    async with ws:
        await ws.send_str(hello(session))
        assert json.loads((await ws.receive(timeout=WITHIN)).data)["type"] == "welcome"
        await ws.send_str(f'{{"type": "dominantSpeaker", "msi": {HUGE}}}')
        error = json.loads((await ws.receive(timeout=WITHIN)).data)
        assert error["code"] == "badMessage", error  # 59d3d3f: "badOffer", a ValueError
        await ws.send_str('{"type": "dominantSpeaker", "msi": 7}')
        await ws.send_str('{"type": "answer", "sdp": "v=0"}')
        error = json.loads((await ws.receive(timeout=WITHIN)).data)
        assert error["code"] == "badState"  # still served, in order
    assert rig.bot.media.control_stats.bad_messages == 2
    assert no_tracebacks(caplog) == []


@pytest.mark.parametrize("after_hello", [False, True], ids=["first message", "after hello"])
async def test_a_message_over_the_size_limit_is_closed_1009_without_a_traceback(
    rig: Rig, after_hello: bool, caplog: pytest.LogCaptureFixture
) -> None:
    ws, session = await rig.ws()
    async with LogWaiter("media.server", "exceeds limit"), ws:
        if after_hello:
            await ws.send_str(hello(session))
            assert json.loads((await ws.receive(timeout=WITHIN)).data)["type"] == "welcome"
        await ws.send_str(" " * 300 * 1024)
        assert 300 * 1024 > MAX_MESSAGE_BYTES
        closing = await ws.receive(timeout=WITHIN)
        # RFC 6455 section 7.4.1: 1009, "a message that is too big for it to process".
        assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 1009, closing
    stats = rig.bot.media.control_stats
    assert (stats.bad_messages, stats.rejected) == ((1, 0) if after_hello else (0, 1))
    # 59d3d3f: "Error handling request" with a ClientConnectionResetError traceback.
    assert no_tracebacks(caplog) == []


# -- the roster in a live call ---------------------------------------------------------------------


async def test_a_unicode_digit_source_id_does_not_stop_the_speech_events(rig: Rig) -> None:
    """`"²".isdigit()` is True and int("²") raises: on 59d3d3f every pipeline batch that had to
    name a new speaker raised, and the bot never learned who spoke."""
    meeting = rig.emulator.config.meetings[0]
    call = await rig.bot.join(rig.emulator.join_url(meeting), media="app")
    await call.wait_for("established", WITHIN)
    changed = asyncio.Event()
    call.events.on("participants", lambda c, u: changed.set())
    async with asyncio.timeout(WITHIN):
        while SPEAKER not in call.participants:  # the emulator's roster first, then ours
            await changed.wait()
            changed.clear()
    speaker = dict(call.participants[SPEAKER].resource)
    hostile = {
        "id": "p-hostile",
        "info": {"identity": {"user": {"id": "u-hostile", "displayName": "Hostile"}}},
        "mediaStreams": [
            {"mediaType": "audio", "sourceId": "²", "direction": "sendRecv"},
            {"mediaType": "audio", "sourceId": "4294967296", "direction": "sendRecv"},
            {"mediaType": "audio", "sourceId": "٣", "direction": "sendRecv"},
        ],
    }
    roster = {
        "@odata.type": "#microsoft.graph.commsNotification",
        "changeType": "updated",
        "resourceUrl": f"/communications/calls/{call.id}/participants",
        "resourceData": [speaker, hostile],
    }
    status, _ = await rig.post(json.dumps({"value": [roster]}).encode())
    assert status == 202 and "p-hostile" in call.participants
    assert call.participants["p-hostile"].msis() == []
    await call.wait_until(lambda c: SPEAKER_MSI in c.speech.names, WITHIN)
    assert call.speech.names[SPEAKER_MSI] == "Tess Tester"
    assert "p-hostile" in call.participants  # the hostile entry was there all along
    await call.hang_up()
    await call.wait_for("terminated", WITHIN)


# -- replay fixtures -------------------------------------------------------------------------------

GIB_OF_PCM = (1 << 30) // (320 * 2)  # frames whose int16 PCM takes 1 GiB


def _npy_member(archive: zipfile.ZipFile, name: str, dtype: str, shape: tuple[int, ...]) -> None:
    """An npy member that declares `shape` and holds 1 MB of deflated zeros (truncated)."""
    header = {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape}
    with archive.open(f"{name}.npy", "w", force_zip64=True) as out:
        np.lib.format.write_array_header_1_0(out, header)
        out.write(bytes(1 << 20))


def hostile_fixture(directory: Path, frames: int, pcm_frames: int) -> Path:
    save_frames(directory, [], "hostile")
    manifest = json.loads((directory / "manifest.json").read_text())
    (directory / "manifest.json").write_text(json.dumps({**manifest, "frames": frames}))
    with zipfile.ZipFile(directory / "frames.npz", "w", zipfile.ZIP_DEFLATED) as archive:
        for name in ("timestamp", "original_sender_timestamp", "sequence"):
            _npy_member(archive, name, "int64", (frames,))
        for name in ("concealed", "is_silence"):
            _npy_member(archive, name, "bool", (frames,))
        _npy_member(archive, "active_speakers", "int64", (frames, 1))
        _npy_member(archive, "pcm", "int16", (pcm_frames, 320))
    return directory


@pytest.mark.parametrize(
    ("frames", "pcm_frames", "limit", "file", "problem"),
    [
        (GIB_OF_PCM, GIB_OF_PCM, None, "manifest.json", "at most 180000"),
        (100, GIB_OF_PCM, None, "frames.npz", f"array pcm is int16 ({GIB_OF_PCM}, 320)"),
        (150_000, 150_000, 1 << 20, "frames.npz", "more than the 1048576 allowed"),
    ],
    ids=["frames past an hour", "an array larger than the manifest says", "over max_bytes"],
)
def test_a_fixture_declaring_huge_arrays_is_refused_before_anything_is_allocated(
    tmp_path: Path, frames: int, pcm_frames: int, limit: int | None, file: str, problem: str
) -> None:
    directory = hostile_fixture(tmp_path, frames, pcm_frames)
    size = sum(p.stat().st_size for p in directory.iterdir())
    assert size < 2 * 1024 * 1024  # a small fixture on disk
    tracemalloc.start()
    try:
        with pytest.raises(FixtureError) as info:
            load(directory, **({"max_bytes": limit} if limit else {}))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.path == directory / file and problem in str(info.value), info.value
    # 59d3d3f allocated every declared array (1 GiB here) before it refused the fixture.
    assert peak < 16 * 1024 * 1024, peak


def test_a_corrupt_deflate_stream_is_a_fixture_error(tmp_path: Path) -> None:
    save_frames(tmp_path, [], "corrupt")
    npz = tmp_path / "frames.npz"
    with zipfile.ZipFile(npz) as archive:
        first = archive.infolist()[0]
    data = bytearray(npz.read_bytes())
    # The local file header: 30 bytes, then the name and extra field of the lengths it gives.
    name, extra = struct.unpack_from("<HH", data, first.header_offset + 26)
    start = first.header_offset + 30 + name + extra
    data[start : start + 8] = b"\xff" * 8  # not a deflate stream any more
    npz.write_bytes(bytes(data))
    with pytest.raises(FixtureError, match="frames.npz: unreadable"):
        load(tmp_path)
