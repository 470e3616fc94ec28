"""The media processor (MP): Teams' side of the bot's media, speaking webrtc-mp/1.

It connects to the blob's mpUri over TLS, proves the session token, offers one audio m-line, and
then sends the meeting's audio to the bot with the speaking participants' MSIs as RTP CSRCs
(RFC 3550 section 5.1, mixer semantics) and records what the bot sends back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import aiohttp
import av
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RtcpRrPacket, is_rtcp

from emulator.analysis import Listener, Recording
from emulator.participant import ParticipantScript, VoiceTrack

logger = logging.getLogger(__name__)

PROTOCOL = "webrtc-mp/1"


class MediaProcessorError(Exception):
    """The bot's media endpoint could not be reached or refused us (Graph's 7112 case)."""


SendRtp = Callable[[bytes], Coroutine[Any, Any, None]]


def with_csrc(send_rtp: SendRtp, speakers: Callable[[], Sequence[int]]) -> SendRtp:
    """Wrap a DTLS transport's _send_rtp so RTP packets carry the current speakers as CSRCs.

    The CSRC list sits between the 12-byte fixed header and any header extension, and the CC
    field (low 4 bits of byte 0) counts it (RFC 3550 section 5.1). RTCP passes untouched.
    """

    async def send(data: bytes) -> None:
        csrcs = list(speakers())[:15]
        if not csrcs or is_rtcp(data) or data[0] & 0x0F:
            await send_rtp(data)
            return
        head = bytes([data[0] | len(csrcs)]) + data[1:12]
        await send_rtp(head + b"".join(c.to_bytes(4, "big") for c in csrcs) + data[12:])

    return send


class MediaProcessorLink:
    """One call's media between the emulated meeting and the bot."""

    def __init__(
        self,
        blob: dict[str, Any],
        ssl_context: ssl.SSLContext | None,
        loss_rate: float = 0.0,
        loss_seed: int = 1,
    ) -> None:
        """loss_rate: share of RTP packets to the bot dropped at random (seeded), standing in
        for a lossy network (tc netem is not available on these machines)."""
        for key in ("mpUri", "mpMediaSessionId", "token"):
            if not isinstance(blob.get(key), str):
                raise MediaProcessorError(f"the media config blob has no {key}")
        self._blob = blob
        self._ssl = ssl_context
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._pc: RTCPeerConnection | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._voice: VoiceTrack | None = None
        self._speaker: ParticipantScript | None = None
        self.heard = Recording()
        self._loss_rate = loss_rate
        self._loss = random.Random(loss_seed)
        self.rtp_dropped = 0
        self.receiver_reports: list[Any] = []
        self.report_received = asyncio.Event()
        self.connected = asyncio.Event()
        self.failed = asyncio.Event()

    @property
    def sent(self) -> Recording:
        return self._voice.sent if self._voice is not None else Recording()

    async def connect(self, speaker: ParticipantScript, within_seconds: float) -> None:
        """Connect, negotiate and wait until ICE and DTLS are up. Raises MediaProcessorError."""
        try:
            await asyncio.wait_for(self._connect(speaker), within_seconds)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            await self.close("connect failed")
            raise MediaProcessorError(f"media endpoint unreachable: {exc!r}") from exc

    async def _connect(self, speaker: ParticipantScript) -> None:
        self._session = aiohttp.ClientSession()
        self._ws = ws = await self._session.ws_connect(
            self._blob["mpUri"], ssl=self._ssl if self._ssl is not None else True
        )
        await ws.send_str(
            json.dumps(
                {
                    "type": "hello",
                    "protocol": PROTOCOL,
                    "mpMediaSessionId": self._blob["mpMediaSessionId"],
                    "token": self._blob["token"],
                }
            )
        )
        welcome = await self._next_message(ws)
        if welcome.get("type") != "welcome":
            raise MediaProcessorError(f"the bot refused the media session: {welcome}")

        self._pc = pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._speaker = speaker
        self._voice = VoiceTrack(speaker.seed)
        sender = pc.addTrack(self._voice)
        self._watch_reports(sender)
        sender.transport._send_rtp = self._lossy(  # type: ignore[method-assign,assignment]
            with_csrc(sender.transport._send_rtp, self._active_speakers)
        )

        @pc.on("track")
        def _on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                self._tasks.append(asyncio.create_task(self._record(track)))

        @pc.on("connectionstatechange")
        def _on_state() -> None:
            if pc.connectionState == "connected":
                self.connected.set()
            elif pc.connectionState in ("failed", "closed"):
                self.failed.set()

        await pc.setLocalDescription(await pc.createOffer())
        await ws.send_str(json.dumps({"type": "offer", "sdp": pc.localDescription.sdp}))
        answer = await self._next_message(ws)
        if answer.get("type") != "answer" or not isinstance(answer.get("sdp"), str):
            raise MediaProcessorError(f"expected an answer, got {answer}")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        self._tasks.append(asyncio.create_task(self._watch_control(ws)))
        await self.connected.wait()

    def _watch_reports(self, sender: Any) -> None:
        """Keep the bot's RTCP receiver reports about our stream (what Teams' MP would use for
        its quality view): the router calls the sender's handler through the instance."""
        original = sender._handle_rtcp_packet

        async def handle(packet: Any) -> None:
            if isinstance(packet, RtcpRrPacket):
                self.receiver_reports.extend(packet.reports)
                del self.receiver_reports[:-100]  # bounded
                self.report_received.set()
            await original(packet)

        sender._handle_rtcp_packet = handle

    def _lossy(self, send_rtp: SendRtp) -> SendRtp:
        if self._loss_rate <= 0:
            return send_rtp

        async def send(data: bytes) -> None:
            if not is_rtcp(data) and self._loss.random() < self._loss_rate:
                self.rtp_dropped += 1
                return
            await send_rtp(data)

        return send

    def _active_speakers(self) -> Sequence[int]:
        return (self._speaker.msi,) if self._speaker is not None else ()

    @staticmethod
    async def _next_message(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
        msg = await ws.receive()
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise MediaProcessorError(f"control channel closed ({msg.type.name})")
        message = json.loads(msg.data)
        if not isinstance(message, dict):
            raise MediaProcessorError("control message is not an object")
        return message

    async def _watch_control(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                logger.debug("MP < %s", msg.data[:200])
        self.failed.set()  # the bot's endpoint went away

    async def _record(self, track: MediaStreamTrack) -> None:
        """Record what the bot sends, stamped with its arrival."""
        listener = Listener(self.heard)
        try:
            while True:
                frame = await track.recv()
                assert isinstance(frame, av.AudioFrame)
                listener.add(frame, time.monotonic())
        except MediaStreamError:
            return

    async def close(self, reason: str = "bye") -> None:
        """Idempotent, and safe to cancel: what it took over is released whatever happens
        (a second close finds nothing left to release, so the first must finish the job)."""
        ws, pc, session = self._ws, self._pc, self._session
        self._ws = self._pc = self._session = None
        tasks, self._tasks = self._tasks, []
        try:
            if ws is not None and not ws.closed:
                try:
                    await ws.send_str(json.dumps({"type": "bye", "reason": reason}))
                except (ConnectionError, RuntimeError):
                    pass
                await ws.close()
        finally:
            if self._voice is not None:
                self._voice.stop()
            for task in tasks:
                task.cancel()
            try:
                if pc is not None:
                    await pc.close()
                await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                if session is not None:
                    await session.close()
