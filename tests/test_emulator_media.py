"""The emulator's media processor (MP) against a minimal bot-side stand-in written here from
docs/media-protocol.md: a TLS WebSocket endpoint and a plain aiortc answerer whose transport is
hooked to see every decrypted RTP packet as it arrived (CSRCs, header extensions, payload).

Neither bot nor media is imported: the MP and the bot are two implementations of one spec.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, TypeVar

import aiohttp
import av
import numpy as np
import pytest
from aiohttp import web
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcconfiguration import RTCBundlePolicy
from aiortc.rtp import HeaderExtensionsMap, RtpPacket, unpack_header_extensions
from aiortc.sdp import SessionDescription

from bot.devcerts import DevCerts
from emulator import Emulator
from emulator.dtmf import DtmfSender, event_of
from emulator.mediaprocessor import MediaProcessorError, MediaProcessorLink
from emulator.mpaudio import looped_voice
from emulator.participant import Meeting, ParticipantScript
from emulator.rtpsend import one_byte_extensions, rtp_packet
from emulator.speakers import NO_SPEAKER, DominantSpeaker, StreamAssigner
from emulator.video import RESOLUTIONS, decode_pattern, render
from tests.conftest import APP_ID, APP_SECRET, TENANT_ID, emulator_config

T = TypeVar("T")
ABS_CAPTURE_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time"
FRAME = 0.020


# ---------------------------------------------------------------------------------------------
# The bot-side stand-in


@dataclass
class Seen:
    """One RTP packet as the stand-in's transport decrypted it."""

    ssrc: int
    pt: int
    seq: int
    ts: int
    marker: bool
    csrc: tuple[int, ...]
    extensions: dict[int, bytes]
    payload: bytes
    arrival: float


def parse_rtp(data: bytes, arrival: float) -> Seen:
    cc, has_ext = data[0] & 0x0F, data[0] & 0x10
    seq, ts, ssrc = struct.unpack_from("!HII", data, 2)
    csrc = struct.unpack_from(f"!{cc}I", data, 12)
    offset = 12 + 4 * cc
    extensions: dict[int, bytes] = {}
    if has_ext:
        profile, words = struct.unpack_from("!HH", data, offset)
        value = data[offset + 4 : offset + 4 + 4 * words]
        extensions = dict(unpack_header_extensions(profile, value))
        offset += 4 + 4 * words
    end = len(data) - (data[-1] if data[0] & 0x20 else 0)
    return Seen(
        ssrc,
        data[1] & 0x7F,
        seq,
        ts,
        bool(data[1] & 0x80),
        csrc,
        extensions,
        data[offset:end],
        arrival,
    )


class Parked(MediaStreamTrack):
    """Gives the answer's first audio m-line a sender (sendrecv, a=ssrc) that never sends."""

    kind = "audio"

    async def recv(self) -> Any:
        await asyncio.Event().wait()


@dataclass
class VideoSeen:
    socket: int
    width: int
    height: int
    pattern: tuple[int, int] | None


@dataclass
class StandInSession:
    token: str
    offer: SessionDescription | None = None
    pc: RTCPeerConnection | None = None
    ws: web.WebSocketResponse | None = None
    packets: list[Seen] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    video: list[VideoSeen] = field(default_factory=list)
    connected: bool = False
    dtmf_seq: int = 0
    send_video: bool = False  # on the first video m-line, when the bot may send there

    def m_line_of(self, ssrc: int) -> int | None:
        assert self.offer is not None
        for index, media in enumerate(self.offer.media):
            if any(s.ssrc == ssrc for s in media.ssrc):
                return index
        return None

    def receivers_ready(self) -> bool:
        """Every SSRC the MP sends on has its receiver registered (aiortc registers them once
        DTLS is up; its router would pin an SSRC it does not know to the only receiver of that
        payload type, so a receiver missing then loses its m-line's media for good)."""
        assert self.offer is not None and self.pc is not None
        table = self.pc.getTransceivers()[0].receiver.transport._rtp_router.ssrc_table
        return all(
            media.ssrc[0].ssrc in table
            for media in self.offer.media
            if media.direction in ("sendrecv", "sendonly")
        )

    def extension_id(self, uri: str) -> int:
        assert self.offer is not None
        return next(e.id for e in self.offer.media[0].rtp.headerExtensions if e.uri == uri)

    def audio(self, stream: int = 0) -> list[Seen]:
        """Audio packets (not DTMF) of one audio m-line."""
        return [p for p in self.packets if self.m_line_of(p.ssrc) == stream and p.pt != self.te_pt]

    @property
    def te_pt(self) -> int:
        assert self.offer is not None
        return next(
            c.payloadType or 0
            for c in self.offer.media[0].rtp.codecs
            if c.mimeType.lower() == "audio/telephone-event"
        )

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == kind]

    async def send(self, message: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send_str(json.dumps(message))


class BotStandIn:
    """hello -> welcome, offer -> answer; then records packets, messages and decoded video."""

    def __init__(self, certs: DevCerts) -> None:
        self._certs = certs
        self._runner: web.AppRunner | None = None
        self.sessions: dict[str, StandInSession] = {}
        self.changed = asyncio.Event()  # set on every packet, message and video frame
        self.port = 0
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/MediaProcessor/{session}", self._serve)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self._certs.cert_file, self._certs.key_file)
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for session in self.sessions.values():
            if session.ws is not None:
                await session.ws.close()
            if session.pc is not None:
                await session.pc.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()

    def blob(
        self,
        unmixed: bool = False,
        video_sockets: list[dict[str, Any]] | None = None,
        send_video: bool = False,
    ) -> Any:
        session_id = str(uuid.uuid4())
        self.sessions[session_id] = StandInSession(uuid.uuid4().hex, send_video=send_video)
        blob: dict[str, Any] = {
            "mpUri": f"wss://127.0.0.1:{self.port}/MediaProcessor/{session_id}",
            "mpMediaSessionId": session_id,
            "callId": None,
            "protocol": "webrtc-mp/1",
            "token": self.sessions[session_id].token,
            "supportedAudioFormat": "Pcm16K",
            "receiveUnmixedMeetingAudio": unmixed,
        }
        if video_sockets is not None:
            blob["videoSockets"] = video_sockets
        return blob

    def session(self, blob: dict[str, Any]) -> StandInSession:
        return self.sessions[blob["mpMediaSessionId"]]

    async def _serve(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        session = self.sessions.get(request.match_info["session"])
        hello = await ws.receive_json()
        if session is None or hello.get("token") != session.token:
            await ws.send_json({"type": "error", "code": "unauthorized", "message": "no"})
            await ws.close()
            return ws
        session.ws = ws
        await ws.send_json({"type": "welcome", "mpMediaSessionId": hello["mpMediaSessionId"]})
        offer = await ws.receive_json()
        session.offer = SessionDescription.parse(offer["sdp"])
        # MAX_BUNDLE: with aiortc's default (BALANCED) an answerer puts the second and later
        # video m-lines on the first video m-line's own transport, which BUNDLE then stops.
        session.pc = pc = RTCPeerConnection(
            RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )

        @pc.on("connectionstatechange")
        def _state() -> None:
            session.connected = pc.connectionState == "connected"
            self.changed.set()

        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
        pc.addTrack(Parked())
        if session.send_video:
            pc.addTrack(VideoStreamTrack())  # aiortc's test pattern, 640x480
        transceivers = pc.getTransceivers()
        video = [t for t in transceivers if t.kind == "video"]
        for socket_id, transceiver in enumerate(video):
            track = transceiver.receiver.track
            if track is not None:
                self._tasks.append(asyncio.create_task(self._watch(session, socket_id, track)))
        audio_pts = {c.payloadType for t in transceivers if t.kind == "audio" for c in t._codecs}
        transport = transceivers[0].receiver.transport
        original = transport._handle_rtp_data

        async def hook(data: bytes, arrival_time_ms: int) -> None:
            seen = parse_rtp(data, time.monotonic())
            session.packets.append(seen)
            self.changed.set()
            if seen.pt not in audio_pts:  # audio stops here: no decoder threads, no DTMF trap
                await original(data, arrival_time_ms)

        transport._handle_rtp_data = hook  # type: ignore[method-assign]
        await pc.setLocalDescription(await pc.createAnswer())
        await ws.send_json({"type": "answer", "sdp": pc.localDescription.sdp})
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                session.messages.append(json.loads(msg.data))
                self.changed.set()
        return ws

    async def _watch(self, session: StandInSession, socket_id: int, track: Any) -> None:
        try:
            while True:
                frame = await track.recv()
                y = frame.to_ndarray(format="yuv420p")[: frame.height]
                session.video.append(
                    VideoSeen(socket_id, frame.width, frame.height, decode_pattern(y))
                )
                self.changed.set()
        except MediaStreamError:
            return

    async def send_dtmf(self, session: StandInSession, tone: int, timestamp: int) -> None:
        """One RFC 4733 tone on the first audio m-line, its packets back to back."""
        assert session.pc is not None
        transceiver = session.pc.getTransceivers()[0]
        pt = next(
            c.payloadType for c in transceiver._codecs if c.mimeType.endswith("telephone-event")
        )
        assert pt is not None
        for i in range(7):
            end = i >= 4
            duration = min(i + 1, 5) * 960
            packet = RtpPacket(
                payload_type=pt,
                marker=int(i == 0),
                sequence_number=session.dtmf_seq,
                timestamp=timestamp,
                ssrc=transceiver.sender._ssrc,
                payload=struct.pack("!BBH", tone, (0x80 if end else 0) | 10, duration),
            )
            session.dtmf_seq += 1
            await transceiver.sender.transport._send_rtp(packet.serialize(HeaderExtensionsMap()))

    async def send_opus(self, session: StandInSession, frames: int, timestamp: int) -> int:
        """Opus audio on the first audio m-line (continuing the DTMF sequence space)."""
        assert session.pc is not None
        transceiver = session.pc.getTransceivers()[0]
        encoder = av.CodecContext.create("libopus", "w")
        encoder.sample_rate, encoder.layout, encoder.format = 48000, "mono", "s16"
        t = np.arange(960) / 48000
        for i in range(frames):
            pcm = (8000 * np.sin(2 * np.pi * 440 * (t + i * FRAME))).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 48000, i * 960, Fraction(1, 48000)
            for payload in encoder.encode(frame):
                packet = RtpPacket(
                    payload_type=96,
                    sequence_number=session.dtmf_seq,
                    timestamp=timestamp + i * 960,
                    ssrc=transceiver.sender._ssrc,
                    payload=bytes(payload),
                )
                session.dtmf_seq += 1
                await transceiver.sender.transport._send_rtp(
                    packet.serialize(HeaderExtensionsMap())
                )
        return timestamp + frames * 960


async def until(check: Callable[[], T | None], changed: asyncio.Event, seconds: float = 5.0) -> T:
    """Wait (no polling) until check() is truthy; `changed` is set whenever it may have become
    so. Returns check()'s value."""
    async with asyncio.timeout(seconds):
        while True:
            changed.clear()
            result = check()
            if result:
                return result
            await changed.wait()


@pytest.fixture
async def stand_in(certs: DevCerts) -> AsyncIterator[BotStandIn]:
    bot = BotStandIn(certs)
    await bot.start()
    yield bot
    await bot.stop()


@pytest.fixture
async def links() -> AsyncIterator[list[MediaProcessorLink]]:
    made: list[MediaProcessorLink] = []
    yield made
    for link in made:
        await link.close()


async def connect(
    stand_in: BotStandIn,
    links: list[MediaProcessorLink],
    client_ssl: ssl.SSLContext,
    scripts: Sequence[ParticipantScript],
    light: bool = False,
    **blob: Any,
) -> tuple[MediaProcessorLink, StandInSession]:
    made = stand_in.blob(**blob)
    link = MediaProcessorLink(made, client_ssl, light=light)
    links.append(link)
    await link.connect(scripts, 5.0)
    session = stand_in.session(made)
    await until(lambda: session.connected and session.receivers_ready(), stand_in.changed)
    return link, session


def script(msi: int, talk: Any = None, **more: Any) -> ParticipantScript:
    return ParticipantScript(
        f"P{msi:x}", str(uuid.UUID(int=msi)), msi, f"p-{msi:x}", msi, talk, **more
    )


def tick_of(link: MediaProcessorLink, packet: Seen, abs_id: int) -> int:
    """The tick of a packet's frame, from its abs-capture-time (capture = start + k * 20 ms)."""
    assert link.media_start is not None
    capture = int.from_bytes(packet.extensions[abs_id][:8], "big") / 2**32
    return round((capture - link.media_start) / FRAME)


# ---------------------------------------------------------------------------------------------
# Pure pieces


def test_stream_assignment_is_sticky_and_fills_freed_streams_loudest_first() -> None:
    streams = StreamAssigner()
    assert streams.update([1, 2]) == (1, 2, None, None)
    assert streams.update([2, 1, 3, 4, 5]) == (1, 2, 3, 4)  # 5 waits: nobody is pre-empted
    assert streams.update([5, 6, 1, 2, 4]) == (1, 2, 5, 4)  # 3 stopped: the loudest waiter
    assert streams.update([6, 5]) == (6, None, 5, None)
    assert streams.update([]) == (None, None, None, None)


def test_dominant_speaker_rule() -> None:
    dominant = DominantSpeaker()
    assert not dominant.update([]) and dominant.current == NO_SPEAKER
    assert dominant.update([1]) and (dominant.current, dominant.history) == (1, [])
    for _ in range(10):
        dominant.update([1, 2])
    assert dominant.current == 1  # a tie keeps the current one
    changes = [dominant.update([2]) for _ in range(60)]
    assert changes.count(True) == 1 and (dominant.current, dominant.history) == (2, [1])
    for _ in range(60):
        dominant.update([1])
    assert (dominant.current, dominant.history) == (1, [2])  # no repeats, current not in history
    changes = [dominant.update([]) for _ in range(100)]
    assert changes[-1] and (dominant.current, dominant.history) == (NO_SPEAKER, [1, 2])


def test_packets_parse_as_rtp_with_csrcs_and_one_byte_extensions() -> None:
    ext = one_byte_extensions([(1, b"0"), (4, (123 << 32 | 1 << 31).to_bytes(8, "big"))])
    data = rtp_packet(96, 65535, 2**32 - 1, 0xDEADBEEF, b"opus", True, (7, 8, 9), ext)
    packet = RtpPacket.parse(data)
    assert (packet.sequence_number, packet.timestamp, packet.ssrc) == (65535, 2**32 - 1, 0xDEADBEEF)
    assert (packet.marker, packet.payload_type, packet.csrc, packet.payload) == (
        1,
        96,
        [7, 8, 9],
        b"opus",
    )
    seen = parse_rtp(data, 0.0)
    assert seen.extensions == {1: b"0", 4: (123 << 32 | 1 << 31).to_bytes(8, "big")}


async def test_dtmf_sender_shapes_tones_per_rfc_4733() -> None:
    sender, loop = DtmfSender(), asyncio.get_running_loop()
    done = [loop.create_future(), loop.create_future()]
    sender.add(event_of("1"), done[0])
    sender.add(event_of("#"), done[1])
    slots = [sender.slot(tick) for tick in range(20)]
    events = [(t, s) for t, s in enumerate(slots) if s is not None]
    first = [s for _, s in events if s.event == 1]
    assert [t for t, s in events] == [*range(0, 7), *range(9, 16)]  # 40 ms of audio between
    assert [s.marker for s in first] == [True] + [False] * 6
    assert [s.payload[1] >> 7 for s in first] == [0, 0, 0, 0, 1, 1, 1]
    assert [struct.unpack("!H", s.payload[2:])[0] for s in first] == [
        960,
        1920,
        2880,
        3840,
        4800,
        4800,
        4800,
    ]
    assert {s.start_tick for s in first} == {0} and events[7][1].payload[0] == 11
    assert all(f.done() for f in done)
    with pytest.raises(ValueError):
        event_of("x")


@pytest.mark.parametrize("resolution", list(RESOLUTIONS))
def test_video_pattern_survives_vp8_at_every_resolution(resolution: str) -> None:
    width, height = RESOLUTIONS[resolution]
    encoder = av.CodecContext.create("libvpx", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.bit_rate, encoder.time_base = 300_000, Fraction(1, 15)
    encoder.framerate = Fraction(15)
    decoder = av.CodecContext.create("vp8", "r")
    decoded = []
    for i in range(2):
        frame = av.VideoFrame.from_ndarray(render(0xCAFE0001, 41 + i, width, height), "yuv420p")
        frame.pts = i
        for packet in encoder.encode(frame):
            for out in decoder.decode(packet):
                plane = out.to_ndarray(format="yuv420p")[:height]
                decoded.append(decode_pattern(plane.astype(np.uint8)))
    assert decoded == [(0xCAFE0001, 41), (0xCAFE0001, 42)]
    assert decode_pattern(np.full((height, width), 128, np.uint8)) is None


# ---------------------------------------------------------------------------------------------
# The MP against the stand-in


async def test_mixed_audio_csrcs_follow_the_scripts_with_capture_times(
    stand_in: BotStandIn, links: list[MediaProcessorLink], client_ssl: ssl.SSLContext
) -> None:
    a, b, c = script(0xA, ((0.0, 0.4),)), script(0xB, ((0.2, 0.6),)), script(0xC, ())
    link, session = await connect(stand_in, links, client_ssl, [a, b, c])
    abs_id = session.extension_id(ABS_CAPTURE_TIME)
    await until(
        lambda: any(tick_of(link, p, abs_id) >= 40 for p in session.audio()), stand_in.changed
    )
    assert len(session.offer.media if session.offer else []) == 1
    packets = session.audio()
    truth = {entry.tick: entry for entry in link.speaking_log}
    seen_sets = set()
    for packet in packets:
        tick = tick_of(link, packet, abs_id)
        expected = {s.msi for s in (a, b, c) if s.talking(tick * FRAME)}
        assert set(packet.csrc) == expected, tick
        assert packet.csrc == truth[tick].streams[0] == truth[tick].audible
        seen_sets.add(frozenset(packet.csrc))
        # abs-capture-time: the frame's first sample on time.monotonic(), sent 20 ms later.
        capture = int.from_bytes(packet.extensions[abs_id], "big") / 2**32
        assert 0.015 < packet.arrival - capture < 0.5
    assert seen_sets >= {frozenset({0xA}), frozenset({0xA, 0xB}), frozenset({0xB}), frozenset()}
    seqs = [p.seq for p in packets]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # every tick sends, in mixed mode
    # Ground truth: every participant's frames, silence included, with capture times.
    assert set(link.sent_by_msi) == {0xA, 0xB, 0xC}
    recording = link.sent_by_msi[0xC]
    assert recording.times[0] == link.media_start and not any(f.any() for f in recording.frames)


async def test_unmixed_streams_carry_one_speaker_each_sticky_and_idle_when_nobody(
    stand_in: BotStandIn, links: list[MediaProcessorLink], client_ssl: ssl.SSLContext
) -> None:
    talk = {
        0x1: ((0.0, 1.0),),
        0x2: ((0.1, 1.0),),
        0x3: ((0.2, 0.5),),
        0x4: ((0.3, 1.0),),
        0x5: ((0.35, 1.0),),  # the fifth: waits until 3 stops, then takes its stream
        0x6: ((0.6, 1.3),),  # waits until everybody else stopped at 1.0
    }
    scripts = [script(msi, spurts) for msi, spurts in talk.items()]
    link, session = await connect(stand_in, links, client_ssl, scripts, unmixed=True)
    assert session.offer is not None
    assert [m.kind for m in session.offer.media] == ["audio"] * 4
    assert [m.direction for m in session.offer.media] == ["sendrecv"] + ["sendonly"] * 3
    # DTMF is offered on the first audio m-line only.
    assert [
        any(c.mimeType.lower() == "audio/telephone-event" for c in m.rtp.codecs)
        for m in session.offer.media
    ] == [True, False, False, False]
    abs_id = session.extension_id(ABS_CAPTURE_TIME)
    await until(
        lambda: any(tick_of(link, p, abs_id) >= 60 for p in session.audio(0)), stand_in.changed
    )
    by_stream = {i: session.audio(i) for i in range(4)}
    truth = {entry.tick: entry for entry in link.speaking_log}
    speakers: dict[int, dict[int, int]] = {i: {} for i in range(4)}  # stream -> tick -> MSI
    for i, packets in by_stream.items():
        for packet in packets:
            assert len(packet.csrc) == 1
            tick = tick_of(link, packet, abs_id)
            msi = packet.csrc[0]
            assert talk[msi][0][0] <= tick * FRAME < talk[msi][0][1]  # only while talking
            speakers[i][tick] = msi
            assert truth[tick].streams[i] == packet.csrc
        # Sequence numbers stay contiguous across idle ticks; a talkspurt starts with M.
        assert [p.seq for p in packets] == list(
            range(packets[0].seq, packets[0].seq + len(packets))
        )
        for before, after in zip(packets, packets[1:], strict=False):
            gap = tick_of(link, after, abs_id) - tick_of(link, before, abs_id)
            assert after.marker == (gap > 1 or after.csrc != before.csrc)
    first_ticks = [min(s) for s in speakers.values() if s]
    # Sticky: each stream's speaker changes only after the holder stopped talking.
    for i in range(4):
        ticks = sorted(speakers[i])
        for t0, t1 in zip(ticks, ticks[1:], strict=False):
            if speakers[i][t0] != speakers[i][t1]:
                old = speakers[i][t0]
                assert not talk[old][0][0] <= t1 * FRAME < talk[old][0][1]
    assert speakers[0][min(speakers[0])] == 0x1
    five = [i for i in range(4) if 0x5 in speakers[i].values()]
    three = [i for i in range(4) if 0x3 in speakers[i].values()]
    assert five == three  # the freed stream went to the waiting speaker
    assert min(t for t, m in speakers[five[0]].items() if m == 0x5) * FRAME >= 0.5
    six = [t for i in range(4) for t, m in speakers[i].items() if m == 0x6]
    assert six and min(six) * FRAME >= 1.0  # nobody was pre-empted for it
    # Idle streams are silent: packets per tick = speakers talking, at most four.
    for tick in range(max(first_ticks), 55):
        talking = sum(s.talking(tick * FRAME) for s in scripts)
        sending = sum(tick in speakers[i] for i in range(4))
        assert sending == min(4, talking), tick


async def test_dtmf_both_ways_and_the_stock_receiver_survives(
    stand_in: BotStandIn, links: list[MediaProcessorLink], client_ssl: ssl.SSLContext
) -> None:
    link, session = await connect(stand_in, links, client_ssl, [script(0xD)])
    await asyncio.wait_for(link.send_dtmf("12#"), 5)

    def events() -> list[Seen]:
        return [p for p in session.packets if p.pt == session.te_pt]

    last = (await until(lambda: events() if len(events()) == 21 else None, stand_in.changed))[
        -1
    ].seq
    after = await until(
        lambda: next((p for p in session.audio() if p.seq == (last + 1) & 0xFFFF), None),
        stand_in.changed,
    )
    assert after.marker  # the audio after a tone starts a talkspurt
    assert {p.ssrc for p in events()} == {session.audio()[0].ssrc}
    tones: dict[int, list[Seen]] = {}
    for packet in events():
        tones.setdefault(packet.ts, []).append(packet)
    assert [packets[0].payload[0] for packets in tones.values()] == [1, 2, 11]
    for packets in tones.values():
        assert [p.marker for p in packets] == [True] + [False] * 6
        assert [p.payload[1] >> 7 for p in packets] == [0, 0, 0, 0, 1, 1, 1]
    # One sequence space: no audio packet inside a tone, and the audio around it contiguous.
    first = events()[0].seq
    everything = [p.seq for p in session.packets if p.ssrc == after.ssrc]
    assert everything == [(everything[0] + i) & 0xFFFF for i in range(len(everything))]
    inside = [p for p in session.audio() if (p.seq - first) & 0xFFFF <= (last - first) & 0xFFFF]
    assert len(inside) == 2 * 2  # the two 40 ms gaps between the three tones
    assert [tone for tone, _ in link.dtmf_sent] == ["1", "2", "#"]

    # The bot's tones: heard once each; its audio afterwards still reaches the stock decoder.
    await stand_in.send_dtmf(session, 5, 1000)
    await stand_in.send_dtmf(session, 10, 1000 + 9600)
    await until(lambda: len(link.dtmf_heard) == 2, link.dtmf_received)
    assert [tone for tone, _ in link.dtmf_heard] == ["5", "*"]
    await until(
        lambda: all(0 < time.monotonic() - t < 5 for _, t in link.dtmf_heard),
        link.dtmf_received,
    )
    await stand_in.send_opus(session, 25, 1000 + 2 * 9600)
    await until(lambda: len(link.heard) > 0, stand_in.changed)  # MP packets wake us every 20 ms
    with pytest.raises(ValueError):
        await link.send_dtmf("1x")


async def test_dominant_speaker_messages(
    stand_in: BotStandIn,
    links: list[MediaProcessorLink],
    client_ssl: ssl.SSLContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("emulator.speakers.DOMINANT_SILENCE_TICKS", 25)  # 0.5 s
    a, b = script(0xA1, ((0.0, 0.3),)), script(0xB1, ((0.4, 0.8),))
    link, session = await connect(stand_in, links, client_ssl, [a, b])
    messages = await until(
        lambda: m if len(m := session.of_type("dominantSpeaker")) >= 3 else None,
        stand_in.changed,
    )
    assert [(m["msi"], m["history"]) for m in messages] == [
        (0xA1, []),
        (0xB1, [0xA1]),
        (NO_SPEAKER, [0xB1, 0xA1]),
    ]
    changes = link.dominant_changes
    assert [(c.msi, list(c.history)) for c in changes] == [
        (m["msi"], m["history"]) for m in messages
    ]
    assert link.dominant_speaker == NO_SPEAKER and link.dominant_history == [0xB1, 0xA1]
    assert link.media_start is not None
    # B overtakes A once it was audible in more frames of the last second: at 0.72 s.
    assert 0.6 < changes[1].time - link.media_start < 1.2


VIDEO_SOCKETS = [
    {"socketId": 0, "mediaType": "video", "direction": "sendrecv"},
    {"socketId": 1, "mediaType": "video", "direction": "recvonly"},
    {"socketId": 2, "mediaType": "vbss", "direction": "recvonly"},
]


async def test_video_subscriptions_send_the_participants_pattern(
    stand_in: BotStandIn, links: list[MediaProcessorLink], client_ssl: ssl.SSLContext
) -> None:
    alice = script(0xA, video_msi=0xA0, camera=(1280, 720))
    bob = script(0xB, video_msi=0xB0, camera=(640, 360), screen_msi=0xB5)
    link, session = await connect(
        stand_in, links, client_ssl, [alice, bob], video_sockets=VIDEO_SOCKETS, send_video=True
    )
    assert session.offer is not None
    assert [(m.kind, m.direction) for m in session.offer.media] == [
        ("audio", "sendrecv"),
        ("video", "sendrecv"),
        ("video", "sendonly"),
        ("video", "sendonly"),
    ]

    async def subscribe(socket: int, msi: int, resolution: str) -> dict[str, Any]:
        count = len(session.of_type("videoSource"))
        await session.send(
            {"type": "subscribe", "socketId": socket, "msi": msi, "resolution": resolution}
        )
        replies = await until(lambda: session.of_type("videoSource")[count:], stand_in.changed)
        return replies[0]

    def frames(socket: int, pattern_msi: int, size: tuple[int, int]) -> list[VideoSeen]:
        return [
            v
            for v in session.video
            if v.socket == socket
            and v.pattern
            and v.pattern[0] == pattern_msi
            and (v.width, v.height) == size
        ]

    assert await subscribe(1, 0xA0, "sd360p") == {"type": "videoSource", "socketId": 1, "msi": 0xA0}
    assert await subscribe(2, 0xB5, "sd180p") == {"type": "videoSource", "socketId": 2, "msi": 0xB5}
    assert (await subscribe(0, 0xB0, "hd1080p"))["msi"] == 0xB0  # Bob's camera is 640x360
    await until(
        lambda: (
            frames(1, 0xA0, (640, 360))
            and frames(2, 0xB5, (320, 180))
            and frames(0, 0xB0, (640, 360))
        ),
        stand_in.changed,
    )
    numbers = [v.pattern[1] for v in frames(1, 0xA0, (640, 360)) if v.pattern]
    assert numbers == sorted(numbers)
    # The bot's own video on socket 0 reaches the MP, decoded.
    await until(lambda: link.video_sockets[0].frames_received, stand_in.changed)
    assert link.video_sockets[0].size_received == (640, 480)
    # Every video packet carries its m-line's MSI as the only CSRC.
    for index, msi in ((1, 0xB0), (2, 0xA0), (3, 0xB5)):
        packets = [p for p in session.packets if session.m_line_of(p.ssrc) == index]
        assert packets and {p.csrc for p in packets} == {(msi,)}

    # A new subscription replaces the old one and starts with a key frame.
    assert await subscribe(1, 0xB0, "sd360p") == {"type": "videoSource", "socketId": 1, "msi": 0xB0}
    await until(lambda: frames(1, 0xB0, (640, 360)), stand_in.changed)
    switched = next(
        p for p in session.packets if session.m_line_of(p.ssrc) == 2 and p.csrc == (0xB0,)
    )
    assert vp8_key_frame(switched.payload)

    # Unsubscribe, a screen share that stops and a participant who leaves: videoSource null,
    # and the video stops.
    assert await subscribe(2, 0xB5, "sd180p") == {"type": "videoSource", "socketId": 2, "msi": 0xB5}
    link.stop_video(0xB5)
    await session.send({"type": "unsubscribe", "socketId": 2})
    link.remove_participant(0xB)  # Bob leaves: sockets 0 and 1 showed him

    def blanked() -> list[int] | None:
        ids = [m["socketId"] for m in session.of_type("videoSource") if m["msi"] is None]
        return ids if len(ids) >= 4 else None

    nulls = await until(blanked, stand_in.changed)
    assert sorted(nulls) == [0, 1, 2, 2]  # socket 2: the share stopped, then unsubscribed

    def video_frames() -> set[tuple[int, int]]:
        return {(p.ssrc, p.ts) for p in session.packets if session.m_line_of(p.ssrc) != 0}

    before = video_frames()
    audio_before = len(session.audio())
    await until(lambda: len(session.audio()) > audio_before + 15, stand_in.changed)  # 300 ms
    late = video_frames() - before
    # At most the frame each socket's encoder had in hand (and its RTX twin) came after.
    assert len({ssrc for ssrc, _ in late}) <= 6 and len(late) <= 6


def vp8_key_frame(payload: bytes) -> bool:
    """RFC 7741: skip the payload descriptor; the VP8 header's P bit is 0 on a key frame."""
    offset = 1
    if payload[0] & 0x80:
        flags = payload[1]
        offset = 2
        if flags & 0x80:
            offset += 2 if payload[offset] & 0x80 else 1
        if flags & 0x40:
            offset += 1
        if flags & 0x30:
            offset += 1
    return bool(payload[0] & 0x10) and not payload[offset] & 0x01


async def test_bad_subscriptions_get_errors_and_the_session_stays(
    stand_in: BotStandIn, links: list[MediaProcessorLink], client_ssl: ssl.SSLContext
) -> None:
    alice = script(0xA, video_msi=0xA0)
    quiet = script(0xC)  # no camera
    sockets = [
        {"socketId": 0, "mediaType": "video", "direction": "sendonly"},
        {"socketId": 1, "mediaType": "video", "direction": "recvonly"},
        {"socketId": 2, "mediaType": "vbss", "direction": "recvonly"},
    ]
    link, session = await connect(
        stand_in, links, client_ssl, [alice, quiet], video_sockets=sockets
    )
    cases: list[tuple[dict[str, Any], str]] = [
        ({"socketId": 3, "msi": 0xA0, "resolution": "sd180p"}, "badSubscription"),
        ({"socketId": 0, "msi": 0xA0, "resolution": "sd180p"}, "badSubscription"),  # bot sends
        ({"socketId": 1, "msi": 0xDEAD, "resolution": "sd180p"}, "badSubscription"),
        ({"socketId": 1, "msi": 0xC, "resolution": "sd180p"}, "badSubscription"),  # no video
        ({"socketId": 2, "msi": 0xA0, "resolution": "sd180p"}, "badSubscription"),  # no screen
        ({"socketId": 1, "msi": 0xA0, "resolution": "hd4k"}, "badSubscription"),
        ({"socketId": "1", "msi": 0xA0, "resolution": "sd180p"}, "badMessage"),
        ({"socketId": 1.5, "msi": 0xA0, "resolution": "sd180p"}, "badMessage"),
        ({"socketId": 1, "msi": -1, "resolution": "sd180p"}, "badMessage"),
        ({"socketId": 1, "msi": 0xA0}, "badMessage"),
    ]
    for body, _ in cases:
        await session.send({"type": "subscribe", **body})
    await session.send({"type": "unsubscribe", "socketId": 0})
    await session.send({"type": "launch"})
    await session.send({"type": "offer", "sdp": "v=0"})
    expected = [code for _, code in cases] + ["badSubscription", "unknownType", "badState"]
    errors = await until(
        lambda: e if len(e := session.of_type("error")) >= len(expected) else None,
        stand_in.changed,
    )
    assert [e["code"] for e in errors] == expected
    # The session is still up: a good subscription (a whole-valued float is a whole number).
    await session.send({"type": "subscribe", "socketId": 1.0, "msi": 0xA0, "resolution": "sd180p"})
    reply = await until(lambda: session.of_type("videoSource"), stand_in.changed)
    assert reply == [{"type": "videoSource", "socketId": 1, "msi": 0xA0}]
    assert not link.failed.is_set() and link.control_errors == len(expected)
    # A camera that is turned off: its socket goes blank, and it cannot be subscribed.
    link.stop_video(0xA0)
    await session.send({"type": "subscribe", "socketId": 1, "msi": 0xA0, "resolution": "sd180p"})
    error = await until(
        lambda: e[-1] if len(e := session.of_type("error")) > len(expected) else None,
        stand_in.changed,
    )
    assert error["code"] == "badSubscription"
    assert session.of_type("videoSource")[-1] == {"type": "videoSource", "socketId": 1, "msi": None}


async def test_a_blob_breaking_the_video_socket_rules_is_refused(
    client_ssl: ssl.SSLContext,
) -> None:
    blob = {"mpUri": "wss://127.0.0.1:1/MediaProcessor/x", "mpMediaSessionId": "x", "token": "t"}
    for sockets in (
        [{"socketId": 0, "mediaType": "video", "direction": "recvonly"}] * 2,
        [{"socketId": 0, "mediaType": "vbss", "direction": "recvonly"}, VIDEO_SOCKETS[1]],
        [VIDEO_SOCKETS[0], {"socketId": 1, "mediaType": "video", "direction": "sendrecv"}],
    ):
        with pytest.raises(MediaProcessorError):
            MediaProcessorLink({**blob, "videoSockets": sockets}, client_ssl)


async def test_light_mode_reuses_cached_packets_and_only_counts_the_bots_audio(
    stand_in: BotStandIn, links: list[MediaProcessorLink], client_ssl: ssl.SSLContext
) -> None:
    a, b = script(0x11, ((0.0, 0.3),)), script(0x12, ((0.2, 0.5),))
    link, session = await connect(stand_in, links, client_ssl, [a, b], light=True)
    abs_id = session.extension_id(ABS_CAPTURE_TIME)
    await until(
        lambda: any(tick_of(link, p, abs_id) >= 30 for p in session.audio()), stand_in.changed
    )
    cached = set(looped_voice(0x11).payloads) | set(looped_voice(0x12).payloads)
    for packet in session.audio():
        tick = tick_of(link, packet, abs_id)
        assert set(packet.csrc) == {s.msi for s in (a, b) if s.talking(tick * FRAME)}
        assert packet.payload in cached or not packet.csrc
    timestamp = await stand_in.send_opus(session, 5, 5000)
    await stand_in.send_dtmf(session, 7, timestamp)
    await until(lambda: link.dtmf_heard, link.dtmf_received)
    assert len(link.heard_arrivals) >= 5 and len(link.heard) == 0  # counted, not decoded
    assert link.sent_by_msi == {} and len(link.sent) == 0
    assert [tone for tone, _ in link.dtmf_heard] == ["7"]


async def test_meeting_scripts_reach_the_link_through_the_graph_api(
    certs: DevCerts, stand_in: BotStandIn, closed_port: int
) -> None:
    scripts = [
        script(0x21, video_msi=0x2100, screen_msi=0x2105),
        script(0x22, ((0.0, 0.2),)),
    ]
    meeting = Meeting("19:meeting_bWVkaWE@thread.v2", str(uuid.UUID(int=9)), TENANT_ID, scripts)
    emu = Emulator(emulator_config(certs, meetings=[meeting], media_light=True))
    await emu.start()
    try:
        trust = ssl.create_default_context(cafile=certs.ca_file)
        async with aiohttp.ClientSession() as http:
            form = {
                "grant_type": "client_credentials",
                "client_id": APP_ID,
                "client_secret": APP_SECRET,
                "scope": "https://graph.microsoft.com/.default",
            }
            url = f"{emu.base_url}/{TENANT_ID}/oauth2/v2.0/token"
            async with http.post(url, data=form, ssl=trust) as response:
                token = (await response.json())["access_token"]
            sockets = [{**VIDEO_SOCKETS[2], "socketId": 0}]  # a vbss socket only
            blob = stand_in.blob(video_sockets=sockets)
            body = {
                "@odata.type": "#microsoft.graph.call",
                "callbackUri": f"https://127.0.0.1:{closed_port}/callback",
                "requestedModalities": ["audio", "video"],
                "mediaConfig": {
                    "@odata.type": "#microsoft.graph.appHostedMediaConfig",
                    "blob": json.dumps(blob),
                },
                "chatInfo": {
                    "@odata.type": "#microsoft.graph.chatInfo",
                    "threadId": meeting.thread_id,
                },
                "meetingInfo": {
                    "@odata.type": "#microsoft.graph.organizerMeetingInfo",
                    "organizer": {"user": {"id": meeting.organizer_id, "tenantId": TENANT_ID}},
                },
                "tenantId": TENANT_ID,
            }
            headers = {"Authorization": f"Bearer {token}"}
            async with http.post(
                f"{emu.base_url}/v1.0/communications/calls", json=body, headers=headers, ssl=trust
            ) as response:
                assert response.status == 201, await response.text()
                call_id = (await response.json())["id"]
        call = emu.calls[call_id]
        session = stand_in.session(blob)
        await until(lambda: session.connected and call.link is not None, stand_in.changed)
        link = call.link
        assert link is not None and link.light and link.participants == scripts
        await until(lambda: session.audio(), stand_in.changed)
        streams = {
            (s["mediaType"], s["sourceId"], s["direction"])
            for p in call.roster.snapshot()
            for s in p["mediaStreams"]
        }
        assert {
            ("audio", str(0x21), "sendReceive"),
            ("video", str(0x2100), "sendReceive"),
            ("videoBasedScreenSharing", str(0x2105), "sendOnly"),
            ("audio", str(0x22), "sendReceive"),
        } <= streams
        await until(session.receivers_ready, stand_in.changed)
        await session.send(
            {"type": "subscribe", "socketId": 0, "msi": 0x2105, "resolution": "sd180p"}
        )
        await until(lambda: session.of_type("videoSource"), stand_in.changed)
    finally:
        await emu.stop()


def test_looped_voice_is_encoded_once_per_seed() -> None:
    assert looped_voice(3) is looped_voice(3)
    assert len(looped_voice(3).payloads) == 500  # 10 s
    assert looped_voice(4).payloads != looped_voice(3).payloads
