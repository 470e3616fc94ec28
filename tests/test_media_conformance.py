"""docs/media-protocol.md, row by row, against the bot's real media side.

The media processor (MP) here is written from that page: an aiohttp WebSocket client over TLS on
loopback to the bot's real media-control server, and a plain aiortc peer that makes the offer the
page describes and carries the media. Every row of the page's Messages and Errors tables has at
least one case below, keyed by the row's first column. The tables are read from the page itself:
a row added there without a case here, or a case left for a row that is gone, fails
test_every_table_row_has_a_case (and the row's own parametrized test says "no case").
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.rtcconfiguration import RTCBundlePolicy
from aiortc.rtp import RtpPacket
from aiortc.sdp import SessionDescription

from bot.devcerts import DevCerts
from emulator.mediaprocessor import _restrict_host_candidates
from media import MediaPlatform
from media.clock import FakeClock
from media.engine import AudioReceiver
from media.events import (
    DominantSpeakerChanged,
    MediaProcessorError,
    VideoReceiveStatusChanged,
    VideoSourceChanged,
)
from media.frames import AudioFrame
from media.listener import ListenerLimits
from media.ring import Ring
from media.session import LocalMediaSession, MediaEvent, MediaSessionOptions
from media.video import VideoSocketSettings
from tests.test_engine import packets
from tests.test_media_control import hello, start_platform

DOC = Path(__file__).resolve().parent.parent / "docs/media-protocol.md"
MAX_MESSAGE_BYTES = 256 * 1024  # the page: "at most 256 KiB"
NO_SPEAKER = 4294967295
TIMEOUT = 10.0
LOOPBACK = "127.0.0.1"
ONE_VIDEO_SOCKET = MediaSessionOptions(video_sockets=(VideoSocketSettings("recvonly"),))
UNMIXED = MediaSessionOptions(receive_unmixed_meeting_audio=True)
# The page's m-lines: the MP-side direction mirrors the bot's.
MIRRORED = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly"}


def table_rows(section: str) -> list[str]:
    """The first column of the table under `## {section}` in the page (backticks dropped)."""
    text = DOC.read_text(encoding="utf-8")
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in body.splitlines() if line.startswith("|")]
    return [line.split("|")[1].strip().strip("`") for line in lines[2:]]  # past header, rule


# ---------------------------------------------------------------------------------------------
# The MP client


class EventLog:
    """The platform's MediaEvents (emitted on the media thread), awaited on a test's loop."""

    def __init__(self) -> None:
        self.events: list[MediaEvent] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._added = asyncio.Event()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            self._loop = loop
            self._added = asyncio.Event()

    def __call__(self, event: MediaEvent) -> None:
        with self._lock:
            self.events.append(event)
            loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._added.set)
            except RuntimeError:  # that test's loop closed in between
                pass

    async def wait(self, predicate: Callable[[MediaEvent], bool]) -> MediaEvent:
        async with asyncio.timeout(TIMEOUT):
            seen = 0
            while True:
                with self._lock:
                    events = self.events[seen:]
                for event in events:
                    if predicate(event):
                        return event
                seen += len(events)
                self._added.clear()
                with self._lock:
                    if len(self.events) > seen:
                        continue
                await self._added.wait()

    def of(self, session: LocalMediaSession, kind: str) -> list[MediaEvent]:
        with self._lock:
            return [e for e in self.events if e.session_id == session.id and e.kind == kind]


@dataclass
class Mp:
    """One control connection, as the MP sees it."""

    ws: aiohttp.ClientWebSocketResponse

    async def send(self, message: dict[str, Any] | str | bytes) -> None:
        if isinstance(message, bytes):
            await self.ws.send_bytes(message)
        else:
            await self.ws.send_str(message if isinstance(message, str) else json.dumps(message))

    async def next(self) -> dict[str, Any]:
        """The bot's next message: a text frame holding a JSON object with a string type."""
        msg = await self.ws.receive(timeout=TIMEOUT)
        assert msg.type == aiohttp.WSMsgType.TEXT, f"expected a message: {msg.type.name} {msg.data}"
        message = json.loads(msg.data)
        assert isinstance(message, dict) and isinstance(message.get("type"), str), message
        return message

    async def error(self, code: str) -> dict[str, Any]:
        """The next message is an error with this code (and a non-empty message, as the page
        requires of every listed field)."""
        message = await self.next()
        assert message["type"] == "error" and message.get("code") == code, message
        assert isinstance(message.get("message"), str) and message["message"], message
        return message

    async def closed(self) -> int:
        """The bot closes the connection next: its close code."""
        msg = await self.ws.receive(timeout=TIMEOUT)
        assert msg.type == aiohttp.WSMsgType.CLOSE, (
            f"expected the close: {msg.type.name} {msg.data}"
        )
        return int(msg.data)

    async def kept(self) -> None:
        """The connection still serves, and nothing is pending: the bot answers an `answer`
        from the MP (a valid message at the wrong time) with badState, and that is the next
        thing it says."""
        await self.send({"type": "answer", "sdp": "v=0"})
        await self.error("badState")


@dataclass
class Rig:
    platform: MediaPlatform
    events: EventLog
    http: aiohttp.ClientSession
    ssl: ssl.SSLContext
    certs: DevCerts
    sessions: list[LocalMediaSession] = field(default_factory=list)
    sockets: list[aiohttp.ClientWebSocketResponse] = field(default_factory=list)
    peers: list[RTCPeerConnection] = field(default_factory=list)

    def session(self, options: MediaSessionOptions = ONE_VIDEO_SOCKET) -> LocalMediaSession:
        session = self.platform.create_session(options=options)
        self.sessions.append(session)
        return session

    async def connect(self, uri: str) -> Mp:
        ws = await self.http.ws_connect(uri, ssl=self.ssl)
        self.sockets.append(ws)
        return Mp(ws)

    async def attach(self, session: LocalMediaSession) -> Mp:
        """Connected and welcomed: the session is the MP's."""
        mp = await self.connect(session.mp_uri)
        await mp.send(hello(session.id, session.token))
        welcome = await mp.next()
        assert welcome["type"] == "welcome" and welcome["mpMediaSessionId"] == session.id
        return mp

    def peer(self, session: LocalMediaSession, video: bool = True) -> RTCPeerConnection:
        """An offerer with the page's m-lines for the session's blob: the audio (one sendrecv,
        or four with the last three sendonly), then one video m-line per videoSockets entry."""
        blob = json.loads(session.blob())
        pc = RTCPeerConnection(
            RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )
        for i in range(4 if blob["receiveUnmixedMeetingAudio"] else 1):
            pc.addTransceiver("audio", direction="sendrecv" if i == 0 else "sendonly")
        for socket in blob["videoSockets"] if video else []:
            pc.addTransceiver("video", direction=MIRRORED[socket["direction"]])
        self.peers.append(pc)
        return pc

    async def offer(self, pc: RTCPeerConnection) -> dict[str, Any]:
        # Host candidates on loopback only (stock aioice never offers it): this machine's
        # interfaces do not matter.
        _restrict_host_candidates(pc, (LOOPBACK,))
        await pc.setLocalDescription(await pc.createOffer())
        return {"type": "offer", "sdp": pc.localDescription.sdp}

    async def negotiate(
        self, session: LocalMediaSession, mp: Mp | None = None
    ) -> tuple[Mp, RTCPeerConnection, str]:
        mp = mp or await self.attach(session)
        pc = self.peer(session)
        await mp.send(await self.offer(pc))
        answer = await mp.next()
        assert answer["type"] == "answer" and isinstance(answer["sdp"], str), answer
        return mp, pc, answer["sdp"]

    async def connected(self, session: LocalMediaSession) -> tuple[Mp, RTCPeerConnection]:
        """Negotiated, and ICE/DTLS up: the bot's receiving video socket is active."""
        mp, pc, answer = await self.negotiate(session)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await self.events.wait(
            lambda e: (
                e.session_id == session.id
                and isinstance(e.data, VideoReceiveStatusChanged)
                and e.data.status == "active"
            )
        )
        return mp, pc

    async def close(self) -> None:
        for ws in self.sockets:
            await ws.close()
        for pc in self.peers:
            await pc.close()
        for session in self.sessions:
            await self.platform.close_session(session.id, "test over")


@pytest.fixture(scope="module")
def shared_platform(certs: DevCerts) -> Iterator[tuple[MediaPlatform, EventLog]]:
    # One platform for the module: its own thread and loop, so each test's loop can use it.
    # No failed-hello budget: these cases fail hellos on purpose, from one address.
    events = EventLog()
    media = start_platform(
        certs,
        on_event=events,
        host_addresses=(LOOPBACK,),
        listener=ListenerLimits(auth_failures_per_minute=0),
    )
    yield media, events
    media.stop()


@pytest.fixture
async def rig(
    shared_platform: tuple[MediaPlatform, EventLog], client_ssl: ssl.SSLContext, certs: DevCerts
) -> AsyncIterator[Rig]:
    media, events = shared_platform
    events.bind(asyncio.get_running_loop())
    async with aiohttp.ClientSession() as http:
        made = Rig(media, events, http, client_ssl, certs)
        try:
            yield made
        finally:
            await made.close()


def of_session(session: LocalMediaSession, kind: str) -> Callable[[MediaEvent], bool]:
    return lambda e: e.session_id == session.id and e.kind == kind


def padded(message: dict[str, Any], size: int, char: str = "x") -> str:
    """`message` with an unlisted `pad` field (receivers ignore it) making its UTF-8 encoding
    `size` bytes (or the first length past it, for a multi-byte `char`)."""
    base = len(json.dumps({**message, "pad": ""}, separators=(",", ":")).encode())
    per_char = len(char.encode())
    count = -(-(size - base) // per_char)
    return json.dumps({**message, "pad": char * count}, separators=(",", ":"), ensure_ascii=False)


# ---------------------------------------------------------------------------------------------
# The cases, by table and row

Case = Callable[[Rig], Awaitable[None]]
CASES: dict[str, dict[str, list[tuple[str, Case]]]] = {"Messages": {}, "Errors": {}}


def case(table: str, row: str, variant: str) -> Callable[[Case], Case]:
    def register(fn: Case) -> Case:
        CASES[table].setdefault(row, []).append((variant, fn))
        return fn

    return register


# -- Messages ---------------------------------------------------------------------------------


@case("Messages", "hello", "answered with welcome")
async def _hello(rig: Rig) -> None:
    session = rig.session()
    mp = await rig.connect(session.mp_uri)
    await mp.send(hello(session.id, session.token))
    assert (await mp.next())["type"] == "welcome"


@case("Messages", "hello", "with a field the page does not list")
async def _hello_extra(rig: Rig) -> None:
    session = rig.session()
    mp = await rig.connect(session.mp_uri)
    await mp.send({**json.loads(hello(session.id, session.token)), "vendor": {"x": 1}})
    assert (await mp.next())["type"] == "welcome"


@case("Messages", "welcome", "names the session; from the MP it is badState")
async def _welcome(rig: Rig) -> None:
    session = rig.session()
    mp = await rig.attach(session)  # checks mpMediaSessionId
    await mp.send({"type": "welcome", "mpMediaSessionId": session.id})
    await mp.error("badState")
    await mp.kept()


@case("Messages", "offer", "mixed audio and a video socket")
async def _offer(rig: Rig) -> None:
    session = rig.session()
    _, pc, answer = await rig.negotiate(session)
    offered = SessionDescription.parse(pc.localDescription.sdp)
    assert len(SessionDescription.parse(answer).media) == len(offered.media) == 2
    await rig.events.wait(of_session(session, "connecting"))


@case("Messages", "offer", "unmixed: four audio m-lines")
async def _offer_unmixed(rig: Rig) -> None:
    session = rig.session(UNMIXED)
    _, pc, answer_sdp = await rig.negotiate(session)
    answer = SessionDescription.parse(answer_sdp)
    assert [m.kind for m in answer.media] == ["audio"] * 4
    assert [m.direction for m in answer.media] == ["sendrecv"] + ["recvonly"] * 3
    for i, media in enumerate(answer.media):
        names = {c.mimeType.lower() for c in media.rtp.codecs}
        # DTMF is on the first audio m-line only (the page's Audio section).
        allowed = {"audio/opus", "audio/telephone-event"} if i == 0 else {"audio/opus"}
        assert "audio/opus" in names and names <= allowed, (i, names)


@case("Messages", "answer", "every m-line answered, BUNDLEd, Opus only; media connects")
async def _answer(rig: Rig) -> None:
    session = rig.session()
    _, pc, answer_sdp = await rig.negotiate(session)
    offer = SessionDescription.parse(pc.localDescription.sdp)
    answer = SessionDescription.parse(answer_sdp)
    mids = [m.rtp.muxId for m in offer.media]
    assert [m.rtp.muxId for m in answer.media] == mids
    assert [m.kind for m in answer.media] == [m.kind for m in offer.media] == ["audio", "video"]
    assert all(m.port != 0 for m in answer.media)  # nothing rejected
    bundle = next(g for g in answer.group if g.semantic == "BUNDLE")
    assert bundle.items == mids
    audio, video = answer.media
    # Stock aiortc offers G.722, PCMU and PCMA besides Opus: the bot decodes only Opus, so it
    # must answer only Opus (and telephone-event, for DTMF).
    offered = {c.mimeType.lower() for c in offer.media[0].rtp.codecs}
    assert {"audio/g722", "audio/pcmu", "audio/pcma"} <= offered
    names = [c.mimeType.lower() for c in audio.rtp.codecs]
    assert names[0] == "audio/opus" and set(names) <= {"audio/opus", "audio/telephone-event"}
    assert audio.direction == "sendrecv" and audio.ssrc  # the bot sends: it signals its SSRC
    assert video.direction == "recvonly"  # the socket's direction, from the bot's side
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))
    await rig.events.wait(of_session(session, "connected"))


@case("Messages", "subscribe", "once the socket is active")
async def _subscribe(rig: Rig) -> None:
    session = rig.session()
    mp, _ = await rig.connected(session)
    session.video_sockets[0].subscribe(42, "sd360p")
    message = await mp.next()
    assert message == {"type": "subscribe", "socketId": 0, "msi": 42, "resolution": "sd360p"}
    assert type(message["socketId"]) is int and type(message["msi"]) is int


@case("Messages", "unsubscribe", "after a subscription")
async def _unsubscribe(rig: Rig) -> None:
    session = rig.session()
    mp, _ = await rig.connected(session)
    socket = session.video_sockets[0]
    socket.subscribe(42, "sd180p")
    assert (await mp.next())["type"] == "subscribe"
    socket.unsubscribe()
    assert await mp.next() == {"type": "unsubscribe", "socketId": 0}


@case("Messages", "videoSource", "an MSI, then null")
async def _video_source(rig: Rig) -> None:
    session = rig.session()
    mp = await rig.attach(session)
    await mp.send({"type": "videoSource", "socketId": 0, "msi": 42})
    event = await rig.events.wait(of_session(session, "videoSource"))
    assert event.data == VideoSourceChanged(0, 42)
    await mp.send({"type": "videoSource", "socketId": 0, "msi": None})
    await rig.events.wait(
        lambda e: e.session_id == session.id and e.data == VideoSourceChanged(0, None)
    )
    assert session.video_sockets[0].msi is None
    await mp.kept()


@case("Messages", "dominantSpeaker", "a speaker with history, then none without history")
async def _dominant(rig: Rig) -> None:
    session = rig.session()
    mp = await rig.attach(session)
    await mp.send({"type": "dominantSpeaker", "msi": 7, "history": [3, 2]})
    event = await rig.events.wait(of_session(session, "dominantSpeaker"))
    assert event.data == DominantSpeakerChanged(7, (3, 2))
    await mp.send({"type": "dominantSpeaker", "msi": NO_SPEAKER})  # history is optional
    await rig.events.wait(
        lambda e: e.session_id == session.id and e.data == DominantSpeakerChanged(NO_SPEAKER, ())
    )
    await mp.kept()


@case("Messages", "bye", "from the MP: the bot closes, with no bye back")
async def _bye_from_mp(rig: Rig) -> None:
    session = rig.session()
    mp, _, _ = await rig.negotiate(session)
    await mp.send({"type": "bye", "reason": "meeting over"})
    assert await mp.closed() == 1000
    closed = await rig.events.wait(of_session(session, "closed"))
    assert closed.detail == "meeting over"
    assert not rig.events.of(session, "failed")  # a bye is not a lost media processor


@case("Messages", "bye", "from the bot: the session is closed, then the WebSocket")
async def _bye_from_bot(rig: Rig) -> None:
    session = rig.session()
    mp, _ = await rig.connected(session)
    closing = asyncio.ensure_future(rig.platform.close_session(session.id, "call ended"))
    assert await mp.next() == {"type": "bye", "reason": "call ended"}
    assert await mp.closed() == 1000
    await closing
    await rig.events.wait(of_session(session, "closed"))
    assert not rig.events.of(session, "failed")


@case("Messages", "bye", "from the bot: the platform stops")
async def _bye_on_stop(rig: Rig) -> None:
    other = start_platform(rig.certs, host_addresses=(LOOPBACK,))
    stopping: asyncio.Future[None] | None = None
    try:
        session = other.create_session()
        mp = await rig.connect(session.mp_uri)
        await mp.send(hello(session.id, session.token))
        assert (await mp.next())["type"] == "welcome"
        stopping = asyncio.ensure_future(asyncio.to_thread(other.stop))
        assert await mp.next() == {"type": "bye", "reason": "platform shutdown"}
        assert await mp.closed() == 1000
    finally:
        await (stopping if stopping is not None else asyncio.to_thread(other.stop))


@case("Messages", "error", "from the MP: the application hears it, nobody answers it")
async def _error_from_mp(rig: Rig) -> None:
    session = rig.session()
    mp = await rig.attach(session)
    await mp.send({"type": "error", "code": "badSubscription", "message": "no such MSI"})
    event = await rig.events.wait(of_session(session, "mp_error"))
    assert event.data == MediaProcessorError(session.id, "badSubscription", "no such MSI")
    await mp.kept()  # its badState is the next thing the bot says: the error got no answer


@case("Messages", "error", "a malformed one from the MP: dropped, never answered")
async def _error_malformed(rig: Rig) -> None:
    session = rig.session()
    mp = await rig.attach(session)
    before = rig.platform.control_stats.bad_messages
    await mp.send({"type": "error", "message": "no code"})
    await mp.kept()
    assert rig.platform.control_stats.bad_messages == before + 2  # the error, then the probe
    assert not rig.events.of(session, "mp_error")


@case("Messages", "error", "from the bot: a code and a message")
async def _error_from_bot(rig: Rig) -> None:
    session = rig.session()
    mp = await rig.attach(session)
    await mp.send({"type": "launch"})
    await mp.error("unknownType")  # checks both fields


# -- Errors -----------------------------------------------------------------------------------


@case("Errors", "timeout", "no hello in time: closed")
async def _timeout(rig: Rig) -> None:
    other = start_platform(rig.certs, control_hello_timeout_seconds=0.2)
    try:
        session = other.create_session()
        mp = await rig.connect(session.mp_uri)
        await mp.error("timeout")
        assert await mp.closed() == 1000
    finally:
        await asyncio.to_thread(other.stop)


def _hello_without(session: LocalMediaSession, name: str, value: Any = None) -> dict[str, Any]:
    message = json.loads(hello(session.id, session.token))
    if value is None:
        del message[name]
    else:
        message[name] = value
    return message


BAD_FIRST: dict[str, Callable[[LocalMediaSession], dict[str, Any] | str | bytes]] = {
    "not JSON": lambda s: "{not json",
    "not an object": lambda s: "[]",
    "a binary frame": lambda s: b"\x00\x01",
    "type missing": lambda s: _hello_without(s, "type"),
    "type empty": lambda s: _hello_without(s, "type", ""),
    "type not a string": lambda s: _hello_without(s, "type", 5),
    "a required field missing": lambda s: _hello_without(s, "token"),
    "a required field empty": lambda s: _hello_without(s, "token", ""),
}
BAD_LATER: dict[str, dict[str, Any] | str | bytes] = {
    "not JSON": "{not json",
    "not an object": "[]",
    "a binary frame": b"\x00\x01",
    "type missing": {"sdp": "v=0"},
    "type empty": {"type": "", "sdp": "v=0"},
    "type not a string": {"type": ["offer"], "sdp": "v=0"},
    "a required field missing": {"type": "offer"},
    "a required field empty": {"type": "offer", "sdp": ""},
    "an integer not whole": {"type": "videoSource", "socketId": 0.5, "msi": 1},
    "an integer as a string": {"type": "dominantSpeaker", "msi": "7"},
    "an integer out of range": {"type": "dominantSpeaker", "msi": 4294967296},
    "true for an integer": {"type": "videoSource", "socketId": True, "msi": 1},
    "a history that is not a list": {"type": "dominantSpeaker", "msi": 1, "history": {}},
    "videoSource for a socket the blob lacks": {"type": "videoSource", "socketId": 5, "msi": 1},
}


def _refused_first(code: str, make: Callable[[LocalMediaSession], Any]) -> Case:
    async def run(rig: Rig) -> None:
        session = rig.session()
        mp = await rig.connect(session.mp_uri)
        await mp.send(make(session))
        await mp.error(code)
        assert await mp.closed() == 1000
        # Lost nothing: the MP can still claim the session.
        await rig.attach(session)

    return run


def _refused_later(code: str, message: Any) -> Case:
    async def run(rig: Rig) -> None:
        session = rig.session()
        mp = await rig.attach(session)
        await mp.send(message)
        await mp.error(code)
        await mp.kept()

    return run


for _name, _make in BAD_FIRST.items():
    case("Errors", "badMessage", f"before welcome, {_name}: closed")(
        _refused_first("badMessage", _make)
    )
for _name, _message in BAD_LATER.items():
    case("Errors", "badMessage", f"after welcome, {_name}: kept")(
        _refused_later("badMessage", _message)
    )
case("Errors", "unknownType", "before welcome: closed")(
    _refused_first("unknownType", lambda s: {"type": "launch-missiles"})
)
case("Errors", "unknownType", "after welcome: kept")(
    _refused_later("unknownType", {"type": "launch-missiles"})
)
case("Errors", "badState", "an offer before hello: closed")(
    _refused_first("badState", lambda s: {"type": "offer", "sdp": "v=0"})
)
case("Errors", "badState", "an error before hello: closed")(
    _refused_first("badState", lambda s: {"type": "error", "code": "x", "message": "y"})
)
case("Errors", "badState", "an answer from the MP: kept")(
    _refused_later("badState", {"type": "answer", "sdp": "v=0"})
)


@case("Errors", "badState", "a second hello: kept")
async def _second_hello(rig: Rig) -> None:
    session = rig.session()
    mp = await rig.attach(session)
    await mp.send(hello(session.id, session.token))
    await mp.error("badState")
    await mp.kept()


@case("Errors", "badState", "a second offer (no renegotiation): kept, media unchanged")
async def _second_offer(rig: Rig) -> None:
    session = rig.session()
    mp, pc, answer = await rig.negotiate(session)
    await mp.send({"type": "offer", "sdp": pc.localDescription.sdp})
    await mp.error("badState")
    await mp.kept()
    assert session.answer_sdp == answer and session.state == "connecting"


case("Errors", "unsupportedProtocol", "webrtc-mp/2: closed")(
    _refused_first("unsupportedProtocol", lambda s: _hello_without(s, "protocol", "webrtc-mp/2"))
)


@case("Errors", "unknownSession", "no such session: closed")
async def _unknown_session(rig: Rig) -> None:
    session = rig.session()
    mp = await rig.connect(session.mp_uri.replace(session.id, "not-a-session"))
    await mp.send(hello("not-a-session", session.token))
    await mp.error("unknownSession")
    assert await mp.closed() == 1000


@case("Errors", "unknownSession", "the hello's id differs from the path's: closed")
async def _other_session(rig: Rig) -> None:
    session, other = rig.session(), rig.session()
    mp = await rig.connect(session.mp_uri)
    await mp.send(hello(other.id, other.token))
    await mp.error("unknownSession")
    assert await mp.closed() == 1000


@case("Errors", "unknownSession", "a session the bot ended: closed")
async def _ended_by_bot(rig: Rig) -> None:
    session = rig.session()
    await rig.platform.close_session(session.id, "call ended")
    mp = await rig.connect(session.mp_uri)
    await mp.send(hello(session.id, session.token))
    await mp.error("unknownSession")
    assert await mp.closed() == 1000


@case("Errors", "unknownSession", "a session whose MP said bye: closed")
async def _ended_by_mp(rig: Rig) -> None:
    session = rig.session()
    first = await rig.attach(session)
    await first.send({"type": "bye"})
    assert await first.closed() == 1000
    await rig.events.wait(of_session(session, "closed"))
    mp = await rig.connect(session.mp_uri)  # the bot still lists it: its call goes on
    await mp.send(hello(session.id, session.token))
    await mp.error("unknownSession")
    assert await mp.closed() == 1000


case("Errors", "unauthorized", "a wrong token: closed")(
    _refused_first("unauthorized", lambda s: _hello_without(s, "token", "forged"))
)


@case("Errors", "sessionBusy", "a second MP: closed, the first kept")
async def _busy(rig: Rig) -> None:
    session = rig.session()
    first = await rig.attach(session)
    second = await rig.connect(session.mp_uri)
    await second.send(hello(session.id, session.token))
    await second.error("sessionBusy")
    assert await second.closed() == 1000
    await first.kept()


def _bad_offer(make: Callable[[Rig, LocalMediaSession], Awaitable[dict[str, Any]]]) -> Case:
    async def run(rig: Rig) -> None:
        session = rig.session()
        mp = await rig.attach(session)
        await mp.send(await make(rig, session))
        await mp.error("badOffer")
        await mp.kept()
        # The session can still take a corrected offer.
        await rig.negotiate(session, mp)

    return run


async def _not_sdp(rig: Rig, session: LocalMediaSession) -> dict[str, Any]:
    return {"type": "offer", "sdp": "this is not SDP"}


async def _video_only(rig: Rig, session: LocalMediaSession) -> dict[str, Any]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
    rig.peers.append(pc)
    pc.addTransceiver("video", direction="sendonly")
    return await rig.offer(pc)


async def _no_opus(rig: Rig, session: LocalMediaSession) -> dict[str, Any]:
    pc = rig.peer(session)
    codecs = RTCRtpSender.getCapabilities("audio").codecs
    pc.getTransceivers()[0].setCodecPreferences([c for c in codecs if c.mimeType == "audio/PCMU"])
    return await rig.offer(pc)


async def _two_audio(rig: Rig, session: LocalMediaSession) -> dict[str, Any]:
    pc = rig.peer(session)
    pc.addTransceiver("audio", direction="sendonly")
    return await rig.offer(pc)


async def _no_video(rig: Rig, session: LocalMediaSession) -> dict[str, Any]:
    return await rig.offer(rig.peer(session, video=False))


async def _data_channel(rig: Rig, session: LocalMediaSession) -> dict[str, Any]:
    pc = rig.peer(session)
    pc.createDataChannel("chat")
    return await rig.offer(pc)


async def _video_first(rig: Rig, session: LocalMediaSession) -> dict[str, Any]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
    rig.peers.append(pc)
    pc.addTransceiver("video", direction="sendonly")
    pc.addTransceiver("audio", direction="sendrecv")
    return await rig.offer(pc)


for _name, _make_offer in {
    "not SDP": _not_sdp,
    "no audio m-line": _video_only,
    "audio without Opus": _no_opus,
    "two audio m-lines for mixed audio": _two_audio,
    "fewer video m-lines than sockets": _no_video,
    "an application m-line": _data_channel,
    "video before audio": _video_first,
}.items():
    case("Errors", "badOffer", f"{_name}: kept, a corrected offer answered")(
        _bad_offer(_make_offer)
    )


@case("Errors", "badSubscription", "from the MP: the application hears it")
async def _bad_subscription(rig: Rig) -> None:
    session = rig.session()
    mp, _ = await rig.connected(session)
    session.video_sockets[0].subscribe(99, "hd720p")
    assert (await mp.next())["msi"] == 99
    await mp.send({"type": "error", "code": "badSubscription", "message": "MSI 99 has no video"})
    event = await rig.events.wait(of_session(session, "mp_error"))
    assert event.data == MediaProcessorError(session.id, "badSubscription", "MSI 99 has no video")
    await mp.kept()


# -- the tables, read from the page -----------------------------------------------------------


def _params(table: str) -> list[Any]:
    out = []
    for row in table_rows(table):
        variants: list[tuple[str, Case | None]] = [*CASES[table].get(row, [])]
        variants = variants or [("no case", None)]
        out += [pytest.param(row, variant, fn, id=f"{row}: {variant}") for variant, fn in variants]
    return out


def test_every_table_row_has_a_case() -> None:
    for table in CASES:
        rows = table_rows(table)
        assert rows, f"no {table} table in {DOC.name}"
        assert set(rows) == set(CASES[table]), (table, set(rows) ^ set(CASES[table]))


@pytest.mark.parametrize(("row", "variant", "run"), _params("Messages"))
async def test_messages_table(rig: Rig, row: str, variant: str, run: Case | None) -> None:
    if run is None:
        pytest.fail(f"the Messages row {row!r} has no test case")
    await run(rig)


@pytest.mark.parametrize(("row", "variant", "run"), _params("Errors"))
async def test_errors_table(rig: Rig, row: str, variant: str, run: Case | None) -> None:
    if run is None:
        pytest.fail(f"the Errors row {row!r} has no test case")
    await run(rig)


# -- the size limit ---------------------------------------------------------------------------


async def test_a_hello_of_exactly_the_limit_is_welcomed(rig: Rig) -> None:
    session = rig.session()
    mp = await rig.connect(session.mp_uri)
    text = padded(json.loads(hello(session.id, session.token)), MAX_MESSAGE_BYTES)
    assert len(text.encode()) == MAX_MESSAGE_BYTES
    await mp.send(text)
    assert (await mp.next())["type"] == "welcome"


async def test_a_message_of_exactly_the_limit_is_taken(rig: Rig) -> None:
    session = rig.session()
    mp = await rig.attach(session)
    text = padded({"type": "dominantSpeaker", "msi": 7, "history": []}, MAX_MESSAGE_BYTES)
    assert len(text.encode()) == MAX_MESSAGE_BYTES
    await mp.send(text)
    event = await rig.events.wait(of_session(session, "dominantSpeaker"))
    assert event.data == DominantSpeakerChanged(7, ())
    await mp.kept()


@pytest.mark.parametrize(
    ("when", "char"),
    [("before hello", "x"), ("after welcome", "x"), ("after welcome", "\u00e9")],
    ids=["before hello", "after welcome", "counted in UTF-8 bytes"],
)
async def test_a_message_over_the_limit_closes_1009(rig: Rig, when: str, char: str) -> None:
    session = rig.session()
    if when == "before hello":
        mp = await rig.connect(session.mp_uri)
    else:
        mp = await rig.attach(session)
    text = padded({"type": "dominantSpeaker", "msi": 7}, MAX_MESSAGE_BYTES + 1, char)
    assert len(text.encode()) == MAX_MESSAGE_BYTES + 1 and len(text) <= MAX_MESSAGE_BYTES + 1
    await mp.send(text)
    # RFC 6455 section 7.4.1: 1009, a message too big to process; no error message first.
    assert await mp.closed() == 1009
    if when != "before hello":
        await rig.events.wait(of_session(session, "closed"))
        assert rig.events.of(session, "failed")  # it ended without a bye


# -- DTMF slots -------------------------------------------------------------------------------


async def test_telephone_event_slots_deliver_no_frames() -> None:
    """The page (Audio): event packets hold audio slots with nothing to play. The bot's real
    receive path delivers no frame for them, conceals none of them, and reports the tone."""
    tones: list[str] = []
    ring: Ring[AudioFrame] = Ring(64)
    receiver = AudioReceiver(ring, FakeClock(), on_tone=tones.append)
    receiver.dtmf_pt = 101
    audio = packets(6, [])
    sequence = [audio[0].sequence_number + i for i in range(11)]
    events = []
    for i, duration in enumerate([160, 320, 480, 640, 640]):  # digit 5, the last with E
        end = 0x80 if i == 4 else 0
        events.append(
            RtpPacket(
                payload_type=101,
                sequence_number=sequence[3 + i] & 0xFFFF,
                timestamp=3 * 960,
                payload=bytes([5, end | 10]) + duration.to_bytes(2, "big"),
            )
        )
    for i, p in enumerate(audio[3:]):
        p.sequence_number = sequence[8 + i] & 0xFFFF
        p.timestamp = (8 + i) * 960
    for p in [*audio[:3], *events, *audio[3:]]:
        await receiver.handle_rtp(p, arrival_time_ms=0)
    receiver.close()
    frames = ring.drain()
    assert tones == ["5"]
    assert len(frames) == 6 and not any(f.concealed for f in frames)
