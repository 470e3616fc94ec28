"""The browser join page: a person joins an emulated meeting from a web browser, with their
microphone and camera, sees the roster with who is speaking, and hears and sees the bots.

Routes, on the emulator's HTTPS app (not under /emulator/, which answers loopback only):
- GET /meetings/{thread}/join: the page (emulator/static/join.html; /static/join.js and
  /static/join.css); {thread} is the meeting's thread id, URL-encoded;
- GET /meetings/{thread}/ws: the page's WebSocket, JSON text messages:
  page -> {"type": "join", "name", "sdp": a complete offer, "camera": {"width", "height"}};
  emulator -> {"type": "answer", "sdp", "participantId"}, then {"type": "state", ...} every
  STATE_SECONDS (the roster with who is speaking); page -> {"type": "leave"}; the emulator ends
  with {"type": "left", "reason"} or {"type": "error", "message"}.

Media: one aiortc RTCPeerConnection per person, host candidates only (iceServers=[]). aiortc does
not trickle, so the page sends its offer once ICE gathering is complete and gets a complete
answer. The person is in the meeting (presence.join_meeting: every bot call's roster and MP link)
from ICE connected until they leave, close the page, lose the connection or the emulator stops;
everything of theirs is released then.
- Their microphone, resampled to 16 kHz mono, feeds their LiveFeed: the MP links hear it like a
  scripted voice (audible when it carries sound).
- Their camera: the newest frame is what a bot subscribed to their video MSI gets (video.py).
- Back to the page: every bot's audio (the links' audio taps, mixed, paced at 20 ms) and one
  bot's video (the links' video taps, newest frame wins): emulator/browsermedia.py.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
import urllib.parse
import uuid
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import av
import numpy as np
from aiohttp import web
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.exceptions import InvalidAccessError, OperationError
from aiortc.mediastreams import MediaStreamError

from emulator.browsermedia import SPEAKING_HOLD_SECONDS, BotAudio, BotVideo
from emulator.calls import DEFAULT_APP_NAME, EmulatedCall
from emulator.mediaprocessor import MediaProcessorLink
from emulator.mpaudio import SpeakingTick
from emulator.participant import Meeting, ParticipantScript
from emulator.presence import calls_in, join_meeting, leave_meeting
from emulator.roster import EmulatedParticipant, from_script
from emulator.rtpsend import TELEPHONE_EVENT
from emulator.speakers import NO_SPEAKER
from emulator.video import LivePerson

if TYPE_CHECKING:
    from emulator.server import Emulator

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
MAX_PER_MEETING = 4  # browser people in one meeting
MAX_BROWSERS = 16  # in the whole emulator: each costs a peer connection and its codecs
FIRST_MSI = 45056  # browser people get audio MSI n, camera n + 1, from here up (0xB000)
STATE_SECONDS = 0.2  # roster pushes to the page
CONNECT_SECONDS = 15.0  # from the answer to ICE + DTLS connected
JOIN_MESSAGE_SECONDS = 30.0  # from the WebSocket opening to the join message
HEARTBEAT_SECONDS = 10.0
MAX_MESSAGE_BYTES = 64 * 1024  # an offer is 5-10 kB
MAX_NAME = 64
DEFAULT_CAMERA = (640, 480)
# The page, its script and its style only: nothing else is loaded, nothing from elsewhere.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:",
    "Cache-Control": "no-store",
}

Tap = Callable[[Any], None]


class BrowserError(Exception):
    """Why a browser cannot join (shown to the person)."""


@dataclass(frozen=True)
class JoinRequest:
    name: str
    sdp: str
    camera: tuple[int, int]


def parse_join(text: str) -> JoinRequest:
    """The page's join message. Raises BrowserError for anything else."""
    try:
        message = json.loads(text)
    except json.JSONDecodeError:
        raise BrowserError("the join message is not JSON") from None
    if not isinstance(message, dict) or message.get("type") != "join":
        raise BrowserError("the first message must be a join")
    sdp = message.get("sdp")
    if not isinstance(sdp, str) or "m=audio" not in sdp:
        raise BrowserError("the join message needs an SDP offer with audio")
    name = " ".join(str(message.get("name") or "").split())[:MAX_NAME]
    camera = message.get("camera")
    size = DEFAULT_CAMERA
    if isinstance(camera, dict):
        width, height = camera.get("width"), camera.get("height")
        if isinstance(width, int) and isinstance(height, int):
            if 16 <= width <= 4096 and 16 <= height <= 4096:
                size = (width & ~1, height & ~1)
    return JoinRequest(name or "Browser guest", sdp, size)


def recent_speakers(log: Sequence[SpeakingTick], since: float) -> set[int]:
    """Audio MSIs audible in the ticks captured at `since` or later."""
    found: set[int] = set()
    for tick in reversed(log):
        if tick.capture_time < since:
            break
        found.update(tick.audible)
    return found


def display_name(identity: dict[str, Any]) -> str:
    """The identity's displayName, as Teams shows it; an application without one (a bot whose
    roster entry carries its app id alone) is DEFAULT_APP_NAME, never a piece of its id."""
    for kind, value in identity.items():
        if isinstance(value, dict):
            if isinstance(value.get("displayName"), str) and value["displayName"].strip():
                return str(value["displayName"])
            if kind in ("application", "applicationInstance"):
                return DEFAULT_APP_NAME
    return "Participant"


def streams_view(streams: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """A roster entry's media streams for the page: mediaType and sourceId as Graph's
    participant mediaStreams carry them (the MSI in decimal, a string: resources/mediastream,
    https://learn.microsoft.com/en-us/graph/api/resources/mediastream)."""
    return [
        {"mediaType": str(s.get("mediaType", "")), "sourceId": str(s.get("sourceId", ""))}
        for s in streams
        if str(s.get("sourceId", "")).isdigit()
    ]


def _hidden(participant: EmulatedParticipant) -> bool:
    """The large gallery view participant is not a person on the page."""
    application = participant.identity.get("application")
    return isinstance(application, dict) and "ApplicationType" in application


def roster_view(
    calls: Sequence[EmulatedCall],
    meeting: Meeting,
    me: str,
    bot_speaking: Callable[[str], bool],
    now: float,
) -> list[dict[str, Any]]:
    """The page's roster: everyone in the meeting's calls (each call's roster has its own bot),
    or the meeting's people while no bot is in it; speaking from the MP links' ground truth."""
    entries: dict[str, EmulatedParticipant] = {}
    bots: dict[str, str] = {}  # a bot's participant id -> its call id
    audible: set[int] = set()
    dominant: set[int] = set()
    for call in calls:
        bots[call.my_participant_id] = call.id
        for participant in call.roster.participants.values():
            entries.setdefault(participant.id, participant)
        link = call.link
        if link is not None:
            audible |= recent_speakers(link.speaking_log, now - SPEAKING_HOLD_SECONDS)
            if link.dominant_speaker != NO_SPEAKER:
                dominant.add(link.dominant_speaker)
    people: list[
        tuple[str, dict[str, Any], ParticipantScript | None, bool, list[dict[str, Any]]]
    ] = [
        (p.id, p.identity, p.script, p.is_muted, p.media_streams)
        for p in entries.values()
        if not _hidden(p)
    ]
    if not calls:
        scripted = [from_script(s) for s in meeting.participants]
        people = [(p.id, p.identity, p.script, False, p.media_streams) for p in scripted]
    view = []
    for pid, identity, script, muted, streams in people:
        entry: dict[str, Any] = {
            "id": pid,
            "name": display_name(identity),
            "muted": muted,
            "streams": streams_view(streams),
        }
        if script is not None:
            entry["kind"] = "you" if pid == me else "person"
            entry["speaking"] = script.msi in audible
            entry["dominant"] = script.msi in dominant
        else:
            entry["kind"] = "bot" if pid in bots else "other"
            entry["speaking"] = pid in bots and bot_speaking(bots[pid])
            entry["dominant"] = False
        view.append(entry)
    return view


class BrowserSession:
    """One person on the join page: their peer connection, media pumps and meeting presence."""

    def __init__(
        self,
        emulator: Emulator,
        meeting: Meeting,
        ws: web.WebSocketResponse,
        request: JoinRequest,
        msis: tuple[int, int],
    ) -> None:
        self.emulator = emulator
        self.meeting = meeting
        self.ws = ws
        self.request = request
        self.person = LivePerson()
        self.script = ParticipantScript(
            display_name=request.name,
            user_id=str(uuid.uuid4()),
            msi=msis[0],
            participant_id=str(uuid.uuid4()),
            video_msi=msis[1],
            camera=request.camera,
            identity_kind="guest",  # an anonymous join from a browser: a guest, as in Teams
            live=self.person,
        )
        self.bot_audio = BotAudio()
        self.bot_video = BotVideo()
        self.pc: RTCPeerConnection | None = None
        self.joined = False
        self.connected = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        self._taps: dict[str, tuple[MediaProcessorLink, Tap, Tap]] = {}  # by call id
        self._released: asyncio.Future[None] | None = None
        self.end_reason: str | None = None
        self.error: str | None = None  # why the join failed, told to the page at the end

    @property
    def participant_id(self) -> str:
        return self.script.participant_id

    def __repr__(self) -> str:
        return f"BrowserSession({self.participant_id} {self.request.name!r})"

    async def negotiate(self) -> str:
        """Answer the page's offer; our transceivers exist first, so the offer's audio and video
        m-lines take them (with their tracks to the page and our codec choice)."""
        self.pc = pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        audio = pc.addTransceiver(self.bot_audio, direction="sendrecv")
        # The browser offers telephone-event; aiortc's stock decoder thread dies on it
        # (get_decoder raises outside the try of decoder_worker,
        # aiortc/src/aiortc/rtcrtpreceiver.py), and nobody dials from the page.
        codecs = RTCRtpSender.getCapabilities("audio").codecs
        audio.setCodecPreferences([c for c in codecs if c.mimeType.lower() != TELEPHONE_EVENT])
        video = pc.addTransceiver(self.bot_video, direction="sendrecv")

        @pc.on("connectionstatechange")
        def _on_state() -> None:
            if pc.connectionState == "connected":
                self.connected.set()
                self._join()
            elif pc.connectionState in ("failed", "closed"):
                self.end(f"connection {pc.connectionState}")

        try:
            await pc.setRemoteDescription(RTCSessionDescription(self.request.sdp, "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
        except (ValueError, KeyError, IndexError, InvalidAccessError, OperationError) as exc:
            raise BrowserError(f"the offer was not accepted: {exc!r}") from None
        except AssertionError:  # aiortc's SDP parser asserts on a malformed line
            raise BrowserError("the offer was not accepted: malformed SDP") from None
        if audio.receiver.track is not None:
            self._spawn(self._pump_audio(audio.receiver.track), "audio")
        if video.mid is not None and video.receiver.track is not None:
            self._spawn(self._pump_video(video.receiver.track), "video")
        else:
            self.script.video_msi = None  # no camera: the roster shows no video stream
        return str(pc.localDescription.sdp)

    async def run(self) -> None:
        """Answer, then serve the page until it leaves or goes away."""
        answer = await self.negotiate()
        await self.ws.send_json(
            {"type": "answer", "sdp": answer, "participantId": self.participant_id}
        )
        self._spawn(self._push_state(), "state")
        self._spawn(self._connect_deadline(), "connect")
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            try:
                kind = json.loads(msg.data).get("type")
            except (json.JSONDecodeError, AttributeError):
                kind = None
            if kind == "leave":
                self.end_reason = self.end_reason or "left"
                return
            await self.ws.send_json({"type": "error", "message": f"unexpected message {kind!r}"})

    def _spawn(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        task = asyncio.create_task(coro, name=f"browser:{self.participant_id}:{what}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _join(self) -> None:
        if self.joined or self._released is not None:
            return
        self.joined = True
        logger.info(
            "%r joins %s with audio MSI %d, camera MSI %s",
            self,
            self.meeting.thread_id,
            self.script.msi,
            self.script.video_msi,
        )
        join_meeting(self.emulator, self.meeting, self.script)
        self._refresh_taps()

    async def _connect_deadline(self) -> None:
        try:
            await asyncio.wait_for(self.connected.wait(), CONNECT_SECONDS)
        except TimeoutError:
            self.end("the media did not connect")

    async def _pump_audio(self, track: MediaStreamTrack) -> None:
        """The microphone to the meeting: 16 kHz mono into the person's LiveFeed."""
        resampler = av.AudioResampler(format="s16", layout="mono", rate=16_000)
        try:
            while True:
                frame = await track.recv()
                assert isinstance(frame, av.AudioFrame)
                for out in resampler.resample(frame):
                    self.person.push(out.to_ndarray().reshape(-1).astype(np.int16, copy=False))
        except MediaStreamError:
            return

    async def _pump_video(self, track: MediaStreamTrack) -> None:
        """The camera to the meeting: the newest decoded frame (aiortc decodes in its thread)."""
        try:
            while True:
                frame = await track.recv()
                assert isinstance(frame, av.VideoFrame)
                self.person.camera.put(frame)
        except MediaStreamError:
            return

    async def _push_state(self) -> None:
        # A periodic publisher: the speaking indicator changes every 20 ms tick, the page needs
        # a few updates a second.
        try:
            while True:
                self._refresh_taps()
                await self.ws.send_json(self.state())
                await asyncio.sleep(STATE_SECONDS)
        except (ConnectionError, RuntimeError):
            self.end("the page went away")

    def _calls(self) -> list[EmulatedCall]:
        return list(calls_in(self.emulator, self.meeting))

    def state(self) -> dict[str, Any]:
        now = time.monotonic()
        pc = self.pc
        calls = self._calls()
        owner = self.bot_video.owner
        return {
            "type": "state",
            "participantId": self.participant_id,
            "joined": self.joined,
            "connection": pc.connectionState if pc is not None else "new",
            "meeting": {"threadId": self.meeting.thread_id, "subject": self.meeting.subject},
            # The bot whose video the page's bot tile shows (its roster id), if any.
            "videoFrom": next((c.my_participant_id for c in calls if c.id == owner), None),
            "roster": roster_view(
                calls,
                self.meeting,
                self.participant_id,
                lambda call_id: self.bot_audio.speaking(call_id, now),
                now,
            ),
        }

    def _refresh_taps(self) -> None:
        """Hear and see the bots of the meeting's live calls: tap links as calls come and go."""
        links = {c.id: c.link for c in self._calls() if c.link is not None} if self.joined else {}
        for call_id in [k for k in self._taps if k not in links]:
            self._untap(call_id)
        for call_id, link in links.items():
            if call_id not in self._taps:
                audio = _keyed(self.bot_audio.push, call_id)
                video = _keyed(self.bot_video.put, call_id)
                link.audio_taps.append(audio)
                link.video_taps.append(video)
                self._taps[call_id] = (link, audio, video)

    def _untap(self, call_id: str) -> None:
        link, audio, video = self._taps.pop(call_id)
        if audio in link.audio_taps:
            link.audio_taps.remove(audio)
        if video in link.video_taps:
            link.video_taps.remove(video)
        self.bot_audio.forget(call_id)
        self.bot_video.forget(call_id)

    def end(self, reason: str) -> None:
        """Release everything (once), without waiting: callbacks and tasks call this."""
        if self._released is None:
            self.end_reason = self.end_reason or reason
            self._released = asyncio.ensure_future(self._release())

    async def close(self, reason: str) -> None:
        """End and wait until everything is released; safe to cancel (the release goes on)."""
        self.end(reason)
        assert self._released is not None
        await asyncio.shield(self._released)

    async def _release(self) -> None:
        logger.info("%r ends: %s", self, self.end_reason)
        self.emulator.browsers.discard(self)
        if self.joined:
            self.joined = False
            leave_meeting(self.emulator, self.meeting, self.participant_id)
        for call_id in list(self._taps):
            self._untap(call_id)
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        self.bot_audio.stop()
        self.bot_video.stop()
        if self.pc is not None:
            await self.pc.close()  # ends the remote tracks, so the pumps end too
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.error is not None:
            await _refuse(self.ws, self.error)
        elif not self.ws.closed:
            try:
                await self.ws.send_json({"type": "left", "reason": self.end_reason})
            except (ConnectionError, RuntimeError):
                pass
            await self.ws.close()


def _keyed(method: Callable[[str, Any], None], key: str) -> Tap:
    return lambda frame: method(key, frame)


class Browsers:
    """The emulator's browser people, bounded per meeting and in all."""

    def __init__(self) -> None:
        self.sessions: dict[str, BrowserSession] = {}
        self._msis = itertools.count(FIRST_MSI, 2)

    def in_meeting(self, meeting: Meeting) -> list[BrowserSession]:
        return [s for s in self.sessions.values() if s.meeting is meeting]

    def open(
        self,
        emulator: Emulator,
        meeting: Meeting,
        ws: web.WebSocketResponse,
        request: JoinRequest,
    ) -> BrowserSession:
        if len(self.sessions) >= MAX_BROWSERS:
            raise BrowserError(f"the emulator has {MAX_BROWSERS} browser participants already")
        if len(self.in_meeting(meeting)) >= MAX_PER_MEETING:
            raise BrowserError(f"the meeting has {MAX_PER_MEETING} browser participants already")
        session = BrowserSession(emulator, meeting, ws, request, self._allocate(emulator, meeting))
        self.sessions[session.participant_id] = session
        return session

    def _allocate(self, emulator: Emulator, meeting: Meeting) -> tuple[int, int]:
        """An audio and a camera MSI nobody in the meeting or its calls uses."""
        used = set(_msis_in(meeting, calls_in(emulator, meeting)))
        while True:
            audio = next(self._msis)
            if audio not in used and audio + 1 not in used:
                return audio, audio + 1

    def discard(self, session: BrowserSession) -> None:
        if self.sessions.get(session.participant_id) is session:
            del self.sessions[session.participant_id]

    async def close_all(self) -> None:
        await asyncio.gather(*(s.close("emulator stopping") for s in list(self.sessions.values())))


def _msis_in(meeting: Meeting, calls: Iterator[EmulatedCall]) -> Iterator[int]:
    for script in meeting.participants:
        yield from (m for m in (script.msi, script.video_msi, script.screen_msi) if m is not None)
    for call in calls:
        for participant in call.roster.participants.values():
            for stream in participant.media_streams:
                source = str(stream.get("sourceId", ""))
                if source.isdigit():
                    yield int(source)


def _same_origin(request: web.Request) -> bool:
    """A WebSocket is not bound by the same-origin policy: only our own page may open it."""
    origin = request.headers.get("Origin")
    return origin is None or urllib.parse.urlsplit(origin).netloc == request.host


def routes(emulator: Emulator) -> list[web.AbstractRouteDef]:
    def meeting_of(request: web.Request) -> Meeting:
        meeting = emulator.meeting(request.match_info["thread"])
        if meeting is None:
            raise web.HTTPNotFound(text="No such meeting in this emulator.\n")
        return meeting

    async def page(request: web.Request) -> web.StreamResponse:
        meeting_of(request)
        return web.FileResponse(STATIC_DIR / "join.html", headers=PAGE_HEADERS)

    def asset(name: str) -> web.RouteDef:
        # The page's own files only: the folder holds other pages (the loopback status page).
        async def serve(request: web.Request) -> web.StreamResponse:
            return web.FileResponse(STATIC_DIR / name, headers=PAGE_HEADERS)

        return web.get(f"/static/{name}", serve)

    async def socket(request: web.Request) -> web.StreamResponse:
        meeting = meeting_of(request)
        if not _same_origin(request):
            raise web.HTTPForbidden(text="Cross-origin WebSocket refused.\n")
        ws = web.WebSocketResponse(heartbeat=HEARTBEAT_SECONDS, max_msg_size=MAX_MESSAGE_BYTES)
        await ws.prepare(request)
        try:
            msg = await ws.receive(timeout=JOIN_MESSAGE_SECONDS)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise BrowserError("the first message must be a join")
            session = emulator.browsers.open(emulator, meeting, ws, parse_join(msg.data))
        except (BrowserError, TimeoutError) as exc:
            await _refuse(ws, str(exc) or "no join message in time")
            return ws
        try:
            await session.run()
        except BrowserError as exc:
            session.error = session.end_reason = str(exc)
        except (ConnectionError, RuntimeError):
            session.end_reason = "the page went away"
        finally:
            await session.close("the page closed")
        return ws

    return [
        web.get("/meetings/{thread}/join", page),
        web.get("/meetings/{thread}/ws", socket),
        asset("join.js"),
        asset("join.css"),
    ]


async def _refuse(ws: web.WebSocketResponse, message: str) -> None:
    if not ws.closed:
        try:
            await ws.send_json({"type": "error", "message": message})
        except (ConnectionError, RuntimeError):
            pass
        await ws.close()
