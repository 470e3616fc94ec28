"""The media processor (MP): Teams' side of the bot's media, speaking webrtc-mp/1.

It connects to the blob's mpUri over TLS, proves the session token, and offers (all BUNDLEd):
one sendrecv audio m-line (mixed audio), or four (unmixed: the first sendrecv, three sendonly),
then one video m-line per blob videoSockets entry with the bot's direction mirrored. It sends the
meeting's audio from its own RTP loop (emulator/mpaudio.py, emulator/rtpsend.py), the subscribed
participants' generated video (emulator/mpvideo.py, emulator/video.py), dominantSpeaker and
videoSource messages, and DTMF on request; it records what the bot sends back (audio, DTMF tones,
video frame counts) and the ground truth of what it sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp
import av
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcconfiguration import RTCBundlePolicy
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcrtpreceiver import StreamStatistics
from aiortc.rtp import RtcpRrPacket, RtpPacket, is_rtcp

from emulator import mpcontrol
from emulator.analysis import Listener, Recording
from emulator.dtmf import DtmfReceiver, event_of
from emulator.impairment import ImpairedPath, Impairment, ImpairmentCounts
from emulator.mpaudio import RECORD_FRAMES, MeetingAudio, SpeakingTick
from emulator.mpcontrol import PROTOCOL, ControlError
from emulator.mphooks import (
    _ice_connection,
    _key_frame,
    _restrict_host_candidates,
    _send_nothing,
    _without_telephone_event,
)
from emulator.mptypes import DominantChange, MediaProcessorError, Vanishing
from emulator.mpvideo import VideoSocket, VideoSubscriptions, parse_video_sockets
from emulator.participant import ParticipantScript
from emulator.rtpsend import (
    ParkedTrack,
    RtpStream,
    SendRtp,
    register_codecs,
    with_csrc,
)
from emulator.speakers import NO_SPEAKER, UNMIXED_STREAMS
from emulator.video import PatternVideoTrack

logger = logging.getLogger(__name__)

__all__ = [
    "PROTOCOL",
    "DominantChange",
    "MediaProcessorError",
    "MediaProcessorLink",
    "Vanishing",
]

OUTBOX_SIZE = 1000  # control messages waiting for the WebSocket
LOG_SIZE = 1000  # dominant changes, DTMF tones, control messages kept
ARRIVALS_KEPT = 60 * 50  # light mode: the last minute of packet arrival times
OPUS_RTP_RATE_HZ = 48_000


class MediaProcessorLink:
    """One call's media between the emulated meeting and the bot."""

    def __init__(
        self,
        blob: dict[str, Any],
        ssl_context: ssl.SSLContext | None,
        loss_rate: float = 0.0,
        loss_seed: int = 1,
        light: bool = False,
        impairment: Impairment | None = None,
        host_addresses: Sequence[str] = (),
    ) -> None:
        """impairment: loss, jitter, reordering and blackouts on the packets to the bot
        (emulator/impairment.py); loss_rate/loss_seed are its shorthand for random loss alone
        (ignored when impairment is given). light: the load-generator mode (mpaudio.py):
        pre-encoded audio, the bot's audio only counted. host_addresses: the only local
        addresses ICE host candidates are gathered on, loopback allowed (empty: every
        non-loopback interface, aioice's own discovery)."""
        for key in ("mpUri", "mpMediaSessionId", "token"):
            if not isinstance(blob.get(key), str):
                raise MediaProcessorError(f"the media config blob has no {key}")
        unmixed = blob.get("receiveUnmixedMeetingAudio", False)
        if not isinstance(unmixed, bool):
            raise MediaProcessorError("receiveUnmixedMeetingAudio must be true or false")
        try:
            self.video_sockets: list[VideoSocket] = parse_video_sockets(blob)
        except ValueError as exc:
            raise MediaProcessorError(f"bad videoSockets in the blob: {exc}") from None
        self._blob = blob
        self._ssl = ssl_context
        self.host_addresses = tuple(host_addresses)
        self.unmixed = unmixed
        self.light = light
        self.participants: list[ParticipantScript] = []
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._pc: RTCPeerConnection | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._audio: MeetingAudio | None = None
        self._video = VideoSubscriptions(self.video_sockets, lambda: self.participants, _key_frame)
        self._outbox: asyncio.Queue[str] = asyncio.Queue(OUTBOX_SIZE)
        self._send: SendRtp | None = None
        self._impairment = impairment or Impairment(loss_rate=loss_rate, seed=loss_seed)
        self._path: ImpairedPath | None = None
        self.vanished: Vanishing | None = None
        self._dtmf_rx = DtmfReceiver()
        # What the bot sent us.
        self.heard = Recording(max_frames=RECORD_FRAMES)
        self.heard_arrivals: deque[float] = deque(maxlen=ARRIVALS_KEPT)
        self.dtmf_heard: list[tuple[str, float]] = []  # (tone, time.monotonic()) once per tone
        self.dtmf_received = asyncio.Event()  # set on every tone heard; clear it to wait again
        self.errors_received: list[dict[str, Any]] = []  # the bot's error messages
        self.bye_reason: str | None = None
        # What the MP said.
        self.dominant_speaker = NO_SPEAKER
        self.dominant_history: list[int] = []  # as in the last dominantSpeaker message
        self.dominant_changes: list[DominantChange] = []
        self.dominant_changed = asyncio.Event()  # set on every change; clear it to wait again
        self.control_sent: deque[dict[str, Any]] = deque(maxlen=LOG_SIZE)
        self.control_received = asyncio.Event()  # set when the bot's control message was handled
        self.control_errors = 0  # error replies we sent
        self.receiver_reports: list[Any] = []
        self.report_received = asyncio.Event()
        self.connected = asyncio.Event()
        self.failed = asyncio.Event()
        # Taps on what the bot sends (the browser join page plays it): called on the loop with
        # each decoded frame, so they must only copy or hand off (emulator/browser.py).
        self.audio_taps: list[Callable[[av.AudioFrame], None]] = []
        self.video_taps: list[Callable[[av.VideoFrame], None]] = []

    # Ground truth of what was sent (empty before the media starts).

    @property
    def selected_pair(self) -> tuple[str, int, str, int] | None:
        """(local ip, port, bot's ip, port) of the ICE pair media flows on (RFC 8445 section
        8.1.1's nominated pair), once connected; None before. BUNDLE: one pair for all."""
        pc = self._pc
        if pc is None or not pc.getTransceivers():
            return None
        connection = _ice_connection(pc.getTransceivers()[0])
        pair = connection._nominated.get(1)  # component 1: RTP (rtcp-mux, RFC 5761)
        if pair is None:
            return None
        local = pair.local_candidate
        return (local.host, local.port, pair.remote_addr[0], pair.remote_addr[1])

    @property
    def sent(self) -> Recording:
        """The first participant's frames, stamped when handed to the network (echo analysis)."""
        return self._audio.sent if self._audio is not None else Recording()

    @property
    def sent_by_msi(self) -> dict[int, Recording]:
        """Every participant's frames (silence included), stamped with their capture time."""
        return self._audio.sent_by_msi if self._audio is not None else {}

    @property
    def speaking_log(self) -> Sequence[SpeakingTick]:
        """Per tick: audible MSIs and each audio m-line's CSRC list (the last 3 minutes)."""
        return self._audio.speaking_log if self._audio is not None else ()

    @property
    def dtmf_sent(self) -> list[tuple[str, float]]:
        return self._audio.dtmf_sent if self._audio is not None else []

    @property
    def media_start(self) -> float | None:
        """time.monotonic() of media time 0 (talk spurts count from here)."""
        return self._audio.start if self._audio is not None else None

    def media_seconds(self) -> float:
        """Seconds since media time 0 (0 before the media starts): blackouts count from here."""
        start = self.media_start
        return time.monotonic() - start if start is not None else 0.0

    # Network faults (emulator/impairment.py) and the MP's own crash.

    @property
    def impairment(self) -> Impairment:
        return self._impairment

    def set_impairment(self, impairment: Impairment) -> None:
        """Replace the impairment on the packets to the bot, from the next packet on."""
        self._impairment = impairment
        if self._path is not None:
            self._path.set(impairment)

    @property
    def impairment_counts(self) -> ImpairmentCounts:
        return self._path.counts if self._path is not None else ImpairmentCounts()

    @property
    def rtp_dropped(self) -> int:
        """RTP packets to the bot the impairment dropped (loss, bursts, blackouts)."""
        return self.impairment_counts.dropped

    async def vanish(self, vanishing: Vanishing | None = None) -> None:
        """The MP crashes: from now on nothing reaches the bot (no RTP, no RTCP BYE, no DTLS
        close_notify, no `bye`), the control connection's TCP is cut without a WebSocket close
        frame, and everything is released as after close(). Graph's side then ends the call as
        `vanishing` says (emulator/calls.py). Idempotent."""
        if self.vanished is not None:
            return
        self.vanished = vanishing or Vanishing()  # before failed: calls.py reads it then
        pc, ws = self._pc, self._ws
        self._ws = None  # close() must not say bye on it
        if pc is not None:
            for transceiver in pc.getTransceivers():
                # pc.close() would send a DTLS close_notify alert (RFC 6347 4.2.7, via TLS
                # 7.2.1) through the ICE transport's _send; a crashed MP sends nothing.
                ice = transceiver.sender.transport.transport
                ice._send = _send_nothing
        if ws is not None:
            connection = ws._conn  # aiohttp keeps the TCP connection here; no public handle
            if connection is not None and connection.transport is not None:
                connection.transport.abort()  # a reset, not a close handshake (RFC 6455 7.1.1)
        logger.info("MP x vanished (as if crashed)")
        self.failed.set()
        await self.close("vanished")

    async def connect(
        self, participants: Sequence[ParticipantScript], within_seconds: float
    ) -> None:
        """Connect, negotiate and wait until ICE and DTLS are up. Raises MediaProcessorError."""
        try:
            await asyncio.wait_for(self._connect(participants), within_seconds)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            await self.close("connect failed")
            raise MediaProcessorError(f"media endpoint unreachable: {exc!r}") from exc
        except MediaProcessorError:
            await self.close("connect failed")
            raise

    async def _connect(self, participants: Sequence[ParticipantScript]) -> None:
        self.participants = list(participants)
        self._session = aiohttp.ClientSession()
        self._ws = ws = await self._session.ws_connect(
            self._blob["mpUri"],
            ssl=self._ssl if self._ssl is not None else True,
            # At most MAX_MESSAGE_BYTES (aiohttp refuses max_msg_size itself: one more), no
            # permessage-deflate (docs/media-protocol.md, Transport).
            max_msg_size=mpcontrol.MAX_MESSAGE_BYTES + 1,
            compress=0,
        )
        await ws.send_str(
            mpcontrol.encode(
                "hello",
                protocol=PROTOCOL,
                mpMediaSessionId=self._blob["mpMediaSessionId"],
                token=self._blob["token"],
            )
        )
        welcome = await self._next_message(ws)
        if welcome.get("type") != "welcome":
            raise MediaProcessorError(f"the bot refused the media session: {welcome}")

        register_codecs()
        self._pc = pc = RTCPeerConnection(
            RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )
        audio = [
            pc.addTransceiver(ParkedTrack(), direction="sendrecv" if i == 0 else "sendonly")
            for i in range(UNMIXED_STREAMS if self.unmixed else 1)
        ]
        for transceiver in audio[1:]:
            _without_telephone_event(transceiver)  # DTMF is on the first audio m-line only
        for socket in self.video_sockets:
            if socket.bot_receives:
                socket.track = PatternVideoTrack()
                socket.transceiver = pc.addTransceiver(socket.track, direction=socket.mp_direction)
                sender = socket.transceiver.sender
                socket.ssrcs = {sender._ssrc, sender._rtx_ssrc}
            else:
                socket.transceiver = pc.addTransceiver("video", direction=socket.mp_direction)
        self._send = self._wrap_transport(audio[0].sender.transport)
        for transceiver in audio:
            self._watch_reports(transceiver.sender)

        if self.host_addresses:
            _restrict_host_candidates(pc, self.host_addresses)

        @pc.on("connectionstatechange")
        def _on_state() -> None:
            if pc.connectionState == "connected":
                self.connected.set()
                pair = self.selected_pair
                if pair is not None:
                    logger.info("MP x media connected: local %s:%d, bot %s:%d", *pair)
            elif pc.connectionState in ("failed", "closed"):
                self.failed.set()

        await pc.setLocalDescription(await pc.createOffer())
        await ws.send_str(mpcontrol.encode("offer", sdp=pc.localDescription.sdp))
        answer = await self._next_message(ws)
        if answer.get("type") != "answer" or not isinstance(answer.get("sdp"), str):
            raise MediaProcessorError(f"expected an answer, got {answer}")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))

        # Negotiated now: payload types, extension ids, mids.
        rng = random.Random()
        streams = [RtpStream(t, rng) for t in audio]
        self._hook_first_receiver(audio[0], streams[0].event_payload_type)
        track = audio[0].receiver.track
        if track is not None and not self.light:
            self._tasks.append(asyncio.create_task(self._record(track)))
        for socket in self.video_sockets:
            assert socket.transceiver is not None
            video = socket.transceiver.receiver.track
            if socket.bot_sends and video is not None:
                self._tasks.append(asyncio.create_task(self._watch_video(socket, video)))
        self._audio = MeetingAudio(
            streams, self.participants, self.unmixed, self.light, self._send, self._on_dominant
        )
        self._tasks.append(asyncio.create_task(self._watch_control(ws)))
        self._tasks.append(asyncio.create_task(self._send_control(ws)))
        await self.connected.wait()
        self._audio.start = time.monotonic()  # media time 0: known when connect() returns
        self._tasks.append(asyncio.create_task(self._audio.run()))

    def _wrap_transport(self, transport: RTCDtlsTransport) -> SendRtp:
        """Every RTP and RTCP packet of the (BUNDLE) transport passes here: the CSRC of the
        video m-lines (the stock video sender never sets one), then the impairment. Nothing
        passes once the MP has vanished. Returns the wrapped send."""
        send_rtp = transport._send_rtp
        csrc_of = self._video.csrc_by_ssrc()
        path = self._path = ImpairedPath(send_rtp, self._impairment, self.media_seconds)

        async def send(data: bytes) -> None:
            if self.vanished is not None:
                return
            if is_rtcp(data):
                await path.send(data, rtcp=True)
                return
            lookup = csrc_of.get(int.from_bytes(data[8:12], "big")) if csrc_of else None
            if lookup is not None and not data[0] & 0x0F:
                msi = lookup()
                if msi is not None:
                    data = with_csrc(data, msi)
            await path.send(data)

        transport._send_rtp = send  # type: ignore[method-assign]
        return send

    def _hook_first_receiver(
        self, transceiver: RTCRtpTransceiver, event_payload_type: int | None
    ) -> None:
        """Take the bot's DTMF events before aiortc's stock receiver, whose decoder thread dies on
        a packet it has no decoder for (get_decoder raises outside the try of decoder_worker,
        aiortc/src/aiortc/rtcrtpreceiver.py). In light mode take all of the bot's audio: count it
        and feed the RTCP statistics, decode nothing."""
        receiver = transceiver.receiver
        original = receiver._handle_rtp_packet
        streams: dict[int, StreamStatistics] = receiver._RTCRtpReceiver__remote_streams  # type: ignore[attr-defined]
        light = self.light

        async def handle(packet: RtpPacket, arrival_time_ms: int) -> None:
            if packet.payload_type == event_payload_type:
                tone = self._dtmf_rx.packet(packet.ssrc, packet.timestamp, packet.payload)
                if tone is not None:
                    self.dtmf_heard.append((tone, time.monotonic()))
                    del self.dtmf_heard[:-LOG_SIZE]
                    self.dtmf_received.set()
            elif light:
                self.heard_arrivals.append(time.monotonic())
                stats = streams.get(packet.ssrc)
                if stats is None:
                    stats = streams[packet.ssrc] = StreamStatistics(OPUS_RTP_RATE_HZ)
                stats.add(packet)
            else:
                await original(packet, arrival_time_ms)

        receiver._handle_rtp_packet = handle  # type: ignore[method-assign]

    def _watch_reports(self, sender: RTCRtpSender) -> None:
        """Keep the bot's RTCP receiver reports about our streams (what Teams' MP would use for
        its quality view): the router calls the sender's handler through the instance."""
        original = sender._handle_rtcp_packet

        async def handle(packet: Any) -> None:
            if isinstance(packet, RtcpRrPacket):
                self.receiver_reports.extend(packet.reports)
                del self.receiver_reports[:-100]  # bounded
                self.report_received.set()
            await original(packet)

        sender._handle_rtcp_packet = handle  # type: ignore[method-assign]

    # Control channel.

    @staticmethod
    async def _next_message(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
        msg = await ws.receive()
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise MediaProcessorError(f"control channel closed ({msg.type.name})")
        message = json.loads(msg.data)
        if not isinstance(message, dict):
            raise MediaProcessorError("control message is not an object")
        return message

    def _queue(self, message: dict[str, Any]) -> None:
        """Send a control message without waiting for the WebSocket (the tick loop calls this)."""
        self.control_sent.append(message)
        try:
            self._outbox.put_nowait(json.dumps(message, separators=(",", ":")))
        except asyncio.QueueFull:
            logger.warning("MP x control outbox full, dropped a %s", message["type"])

    async def _send_control(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            text = await self._outbox.get()
            try:
                await ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return  # the WebSocket is gone; _watch_control notices

    async def _watch_control(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self._handle_control(msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                self._reply_error(ControlError("badMessage", "text messages only"))
            if self.bye_reason is not None:
                break
        self.failed.set()  # the bot's endpoint went away, or said bye

    def _handle_control(self, text: str) -> None:
        logger.debug("MP < %s", text[:200])
        try:
            message = mpcontrol.parse(text)
            kind = message["type"]
            if kind == "subscribe":
                self._queue(self._video.subscribe(message))
            elif kind == "unsubscribe":
                self._queue(self._video.unsubscribe(message))
            elif kind == "error":
                self.errors_received.append(message)
                del self.errors_received[:-LOG_SIZE]
                logger.info("MP < error from the bot: %s", text[:200])
            elif kind == "bye":
                reason = message.get("reason")
                self.bye_reason = reason if isinstance(reason, str) else "bye"
            else:
                raise ControlError("badState", f"unexpected {kind} from the bot")
        except ControlError as exc:
            self._reply_error(exc)
        self.control_received.set()

    def _reply_error(self, exc: ControlError) -> None:
        self.control_errors += 1
        self._queue({"type": "error", "code": exc.code, "message": str(exc)})

    def _on_dominant(self, msi: int, history: list[int]) -> None:
        self.dominant_speaker = msi
        self.dominant_history = history
        self.dominant_changes.append(DominantChange(time.monotonic(), msi, tuple(history)))
        del self.dominant_changes[:-LOG_SIZE]
        self.dominant_changed.set()
        self._queue({"type": "dominantSpeaker", "msi": msi, "history": history})

    # The meeting changes.

    def add_participant(self, script: ParticipantScript) -> None:
        """Someone joined: they are heard (per their script) and their video can be subscribed."""
        if all(p.msi != script.msi for p in self.participants):
            self.participants.append(script)
        if self._audio is not None:
            self._audio.add(script)

    def remove_participant(self, msi: int) -> None:
        """Someone (by audio MSI) left: their audio stops and sockets showing them go blank."""
        gone = [p for p in self.participants if p.msi == msi]
        self.participants = [p for p in self.participants if p.msi != msi]
        if self._audio is not None:
            self._audio.remove(msi)
        msis = {m for p in gone for m in (p.video_msi, p.screen_msi) if m is not None}
        for reply in self._video.source_gone(msis):
            self._queue(reply)

    def stop_video(self, msi: int) -> None:
        """A camera or screen share (by its video MSI) is turned off: sockets showing it go
        blank (videoSource null) and new subscriptions to it fail."""
        self._video.stopped.add(msi)
        for reply in self._video.source_gone({msi}):
            self._queue(reply)

    def start_video(self, msi: int) -> None:
        """A camera or screen share (by its video MSI) is turned (back) on: it can be
        subscribed again."""
        self._video.stopped.discard(msi)

    def set_muted(self, msi: int, muted: bool) -> None:
        voice = self._audio.voice(msi) if self._audio is not None else None
        if voice is not None:
            voice.muted = muted

    async def send_dtmf(self, tones: str) -> None:
        """Send DTMF tones (0-9 * # A-D) to the bot on the first audio m-line, RFC 4733 events of
        100 ms; returns when the last one has been sent. Raises ValueError for a bad tone and
        MediaProcessorError when the media is not up or telephone-event was not negotiated."""
        events = [event_of(tone) for tone in tones]
        audio = self._audio
        if audio is None or not self.connected.is_set():
            raise MediaProcessorError("the media is not connected")
        if audio.streams[0].event_payload_type is None:
            raise MediaProcessorError("the bot's answer has no telephone-event/48000")
        loop = asyncio.get_running_loop()
        done = [loop.create_future() for _ in events]
        for event, future in zip(events, done, strict=True):
            audio.dtmf.add(event, future)
        await asyncio.gather(*done)

    # What the bot sends.

    async def _record(self, track: MediaStreamTrack) -> None:
        """Record what the bot sends, stamped with its arrival."""
        listener = Listener(self.heard)
        try:
            while True:
                frame = await track.recv()
                assert isinstance(frame, av.AudioFrame)
                listener.add(frame, time.monotonic())
                for tap in self.audio_taps:
                    tap(frame)
        except MediaStreamError:
            return

    async def request_key_frame(self, socket_id: int) -> None:
        """Ask the bot for a key frame on a socket it sends on (RTCP PLI, RFC 4585 6.3.1)."""
        socket = self.video_sockets[socket_id]
        if socket.transceiver is None or not socket.bot_sends:
            raise ValueError(f"the bot does not send on video socket {socket_id}")
        receiver = socket.transceiver.receiver
        for ssrc in list(receiver._RTCRtpReceiver__active_ssrc):  # type: ignore[attr-defined]
            await receiver._send_rtcp_pli(ssrc)

    async def _watch_video(self, socket: VideoSocket, track: MediaStreamTrack) -> None:
        """Decode and count the video the bot sends on a socket (its queue must not grow)."""
        try:
            while True:
                frame = await track.recv()
                assert isinstance(frame, av.VideoFrame)
                socket.frames_received += 1
                socket.size_received = (frame.width, frame.height)
                socket.received.set()
                for tap in self.video_taps:
                    tap(frame)
        except MediaStreamError:
            return

    async def close(self, reason: str = "bye") -> None:
        """Idempotent, and safe to cancel: what it took over is released whatever happens
        (a second close finds nothing left to release, so the first must finish the job)."""
        ws, pc, session = self._ws, self._pc, self._session
        self._ws = self._pc = self._session = None
        tasks, self._tasks = self._tasks, []
        if self._path is not None:
            pump = self._path.stop()  # held packets go nowhere
            if pump is not None:
                tasks.append(pump)
        try:
            for task in tasks:
                task.cancel()
            if ws is not None and not ws.closed:
                if self.bye_reason is None:  # a bye is not answered with one
                    try:
                        await ws.send_str(mpcontrol.encode("bye", reason=reason))
                    except (ConnectionError, RuntimeError):
                        pass
                await ws.close()
        finally:
            if self._audio is not None:
                self._audio.dtmf.cancel()
                self._audio.close()
            self._video.stop()
            try:
                if pc is not None:
                    await pc.close()
                await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                if session is not None:
                    await session.close()
