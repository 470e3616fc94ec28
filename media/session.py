"""LocalMediaSession: one call's media, with its sockets, blob and peer connection."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import secrets
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpTransceiver, RTCSessionDescription

from media import dtmf, negotiation
from media.audio_socket import AudioSocket
from media.clock import Clock, to_ticks
from media.control import PROTOCOL
from media.engine import AudioReceiver, FrameSink, hook_receiver, new_peer_connection
from media.events import (
    NO_DOMINANT_SPEAKER,
    AudioSendStatusChanged,
    DominantSpeakerChanged,
    MediaProcessorError,
    SocketEvent,
    ToneReceived,
    VideoKeyFrameNeeded,
    VideoReceiveStatusChanged,
    VideoSendStatusChanged,
    VideoSourceChanged,
)
from media.frames import UnmixedAudioBuffer
from media.network import DROP_REASONS, NetworkSettings, PortRangeExhausted, drop_counts
from media.network import apply as apply_network
from media.pipeline.player import OutgoingPlayer
from media.ring import Ring
from media.sender import AudioSender, ParkedTrack
from media.unmixed import MAX_STREAMS, StreamSink, UnmixedAssembler
from media.video import (
    VideoSendTrack,
    VideoSocket,
    VideoSocketSettings,
    hook_video_receiver,
    read_video,
    validate,
    watch_key_frame_requests,
)

logger = logging.getLogger(__name__)

EVENT_RING = 64  # socket events kept for the bot's pipeline; older ones dropped and counted
LOST_DETAIL = "media processor lost: control connection ended without bye"


@functools.cache
def _stack_version() -> str:
    try:
        return metadata.version("graph-media-bot")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True, slots=True)
class MediaEvent:
    """A plain message from the media side to the control side.

    kind: "connecting", "connected", "failed", "closed" (the session), "mp_error" (the media
    processor sent an `error` message: a MediaProcessorError in `data`, "code: message" in
    `detail`), or a socket event's name ("tone", "dominantSpeaker", "audioSendStatus",
    "videoReceiveStatus", "videoSource", "videoSendStatus", "videoKeyFrameNeeded") with the
    event itself in `data`.
    "failed" says why in `detail`: ICE or DTLS failed (RFC 7675 consent lost included), or the
    media processor was lost (its control connection ended without `bye`; LOST_DETAIL). A
    failed session is closed right after ("closed") when its control connection is gone.
    "closed" has the reason in `detail`: the MP's bye reason, or the bot's close reason.
    """

    session_id: str
    kind: str
    detail: str = ""
    data: SocketEvent | MediaProcessorError | None = None


_EVENT_KINDS: dict[type, str] = {
    ToneReceived: "tone",
    DominantSpeakerChanged: "dominantSpeaker",
    AudioSendStatusChanged: "audioSendStatus",
    VideoReceiveStatusChanged: "videoReceiveStatus",
    VideoSourceChanged: "videoSource",
    VideoSendStatusChanged: "videoSendStatus",
    VideoKeyFrameNeeded: "videoKeyFrameNeeded",
}


@dataclass(frozen=True, slots=True)
class MediaSessionOptions:
    """What the call's media carries (AudioSocketSettings / VideoSocketSettings)."""

    receive_unmixed_meeting_audio: bool = False
    video_sockets: tuple[VideoSocketSettings, ...] = field(default=())

    def __post_init__(self) -> None:
        validate(self.video_sockets)

    @property
    def modalities(self) -> list[str]:
        """Graph's requestedModalities for these sockets."""
        kinds = {s.media_type for s in self.video_sockets}
        return (
            ["audio"]
            + (["video"] if "video" in kinds else [])
            + (["videoBasedScreenSharing"] if "vbss" in kinds else [])
        )


class LocalMediaSession:
    """Created on the control thread; its peer connection lives on the media loop."""

    def __init__(
        self,
        mp_uri_base: str,
        clock: Clock,
        emit: Callable[[MediaEvent], None],
        options: MediaSessionOptions | None = None,
        codec_executor: Executor | None = None,
        network: NetworkSettings | None = None,
    ) -> None:
        self.id = str(uuid.uuid4())
        self.token = secrets.token_urlsafe(32)
        self.mp_uri = f"{mp_uri_base}/MediaProcessor/{self.id}"
        self.options = options or MediaSessionOptions()
        self.audio_socket = AudioSocket()
        # What the bot says besides its processors' output: files, prompts, generated audio,
        # paced by the hot loop (the Windows library's AudioVideoFramePlayer role).
        self.player = OutgoingPlayer(self.id)
        self.events: Ring[SocketEvent] = Ring(EVENT_RING)
        self.video_sockets = [
            VideoSocket(i, s, self._send_control_threadsafe, self._socket_event)
            for i, s in enumerate(self.options.video_sockets)
        ]
        self.state = "created"
        self.dominant_speaker = NO_DOMINANT_SPEAKER
        self._clock = clock
        self._emit = emit
        self._codec_executor = codec_executor
        self._network = network
        self.answer_sdp = ""  # what we told the media processor (diagnostics, tests)
        self._audio_contexts = (str(uuid.uuid4()), str(uuid.uuid4()))
        self._video_contexts = [str(uuid.uuid4()) for _ in self.video_sockets]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pc: RTCPeerConnection | None = None
        self._receivers: list[AudioReceiver] = []
        self._sender: AudioSender | None = None
        self._video_tasks: list[asyncio.Task[None]] = []  # one reader per receiving socket
        self._assembler: UnmixedAssembler | None = None
        self._assembler_timer: asyncio.TimerHandle | None = None
        self._control: Callable[[dict[str, Any]], None] | None = None
        self._end_control: Callable[[str], None] | None = None
        self._closing = False
        self._close_reason = ""
        self.mp_attached = False

    @property
    def receive_unmixed_meeting_audio(self) -> bool:
        return self.options.receive_unmixed_meeting_audio

    def blob(self, call_id: str | None = None) -> str:
        """The appHostedMediaConfig blob (docs/media-protocol.md)."""
        source_context, render_context = self._audio_contexts
        return json.dumps(
            {
                "mpUri": self.mp_uri,
                "mpMediaSessionId": self.id,
                "callId": call_id,
                "protocol": PROTOCOL,
                "token": self.token,
                "supportedAudioFormat": "Pcm16K",
                "receiveUnmixedMeetingAudio": self.receive_unmixed_meeting_audio,
                "audioSourceContexts": [source_context],
                "audioRenderContexts": [render_context],
                "videoSourceContexts": [],
                "videoRenderContexts": self._video_contexts,
                "videoSockets": [
                    {
                        "socketId": s.socket_id,
                        "mediaType": s.settings.media_type,
                        "direction": s.settings.direction,
                    }
                    for s in self.video_sockets
                ],
                "mediaStackVersion": _stack_version(),
            }
        )

    # -- events and control ---------------------------------------------------------------------

    def _set_state(self, state: str, detail: str = "") -> None:
        if self.state == state:
            return
        self.state = state
        self._emit(MediaEvent(self.id, state, detail))

    def _socket_event(self, event: SocketEvent) -> None:
        self.events.push(event)
        self._emit(MediaEvent(self.id, _EVENT_KINDS[type(event)], data=event))

    def control_lost(self) -> None:
        """Media loop: the control connection ended without the MP's `bye` while the session
        was still ours to run (a crashed or unreachable MP): a "failed" event says so before
        close() reports "closed"."""
        if not self._closing:
            logger.warning("LocalMediaSession(%s) x %s", self.id, LOST_DETAIL)
            self._set_state("failed", LOST_DETAIL)

    def attach_control(
        self, send: Callable[[dict[str, Any]], None], end: Callable[[str], None]
    ) -> None:
        """Media loop: the control connection's sender, and its end (media/server.py): called
        with the reason when the session closes, it says bye to the MP (unless the MP said it
        first) and closes the WebSocket."""
        self._control = send
        self._end_control = end
        if self._closing:  # closed while the hello was being answered
            end(self._close_reason)

    @property
    def ended(self) -> bool:
        """Closed or closing: no MP can attach any more."""
        return self._closing

    @property
    def negotiated(self) -> bool:
        """The offer is answered (or being answered): webrtc-mp/1 takes one per session."""
        return self._pc is not None

    def report_mp_error(self, code: str, message: str) -> None:
        """Media loop: the MP's `error` message, for the application (never answered)."""
        logger.info("LocalMediaSession(%s) x media processor error %s: %s", self.id, code, message)
        self._emit(
            MediaEvent(
                self.id,
                "mp_error",
                f"{code}: {message}",
                MediaProcessorError(self.id, code, message),
            )
        )

    def _send_control_threadsafe(self, message: dict[str, Any]) -> None:
        loop = self._loop
        if loop is None or self._control is None:
            raise ConnectionError("the media processor is not connected")
        loop.call_soon_threadsafe(self._send_control, message)

    def _send_control(self, message: dict[str, Any]) -> None:
        if self._control is not None and not self._closing:
            self._control(message)

    def handle_control(self, message: dict[str, Any]) -> None:
        """Media loop: a validated message from the MP other than offer and bye.
        Raises ValueError for one that names a socket we do not have."""
        kind = message["type"]
        if kind == "dominantSpeaker":
            msi = int(message["msi"])
            history = tuple(int(m) for m in message.get("history", []))[:10]
            self.dominant_speaker = msi
            self._socket_event(DominantSpeakerChanged(msi, history))
        elif kind == "videoSource":
            socket_id = int(message["socketId"])
            if socket_id >= len(self.video_sockets):
                raise ValueError(f"no video socket {socket_id}")
            msi = message["msi"]
            self.video_sockets[socket_id].set_source(None if msi is None else int(msi))
        else:
            raise ValueError(f"unexpected {kind}")

    def send_dtmf(self, tones: str) -> None:
        """Thread-safe: send DTMF tones in-band (RFC 4733), 100 ms each.
        Raises DtmfError for an unknown tone or before the media is connected."""
        for tone in tones:
            dtmf.tone_code(tone)
        loop, sender = self._loop, self._sender
        if loop is None or sender is None or self.state != "connected":
            raise dtmf.DtmfError("the call's media is not connected")
        if not sender.dtmf_negotiated:
            raise dtmf.DtmfError("the peer did not negotiate telephone-event (RFC 4733)")
        loop.call_soon_threadsafe(sender.send_tones, tones)

    # -- negotiation ------------------------------------------------------------------------------

    async def accept_offer(self, offer_sdp: str) -> str:
        """Media loop: answer the MP's offer. Raises ValueError for an offer we cannot take
        (its m-lines are not the ones docs/media-protocol.md lists for this session), and
        whatever aiortc raises for one it cannot apply; the session can then take another."""
        if self._pc is not None:
            raise ValueError("this session already has its offer and answer")
        if self._closing:
            raise ValueError("this session has ended")
        wanted = (1, MAX_STREAMS) if self.receive_unmixed_meeting_audio else (1, 1)
        negotiation.check_m_lines(offer_sdp, wanted, len(self.video_sockets))
        negotiation.register()
        self._loop = asyncio.get_running_loop()
        self._pc = pc = new_peer_connection()

        @pc.on("connectionstatechange")
        def _on_state() -> None:
            if pc.connectionState == "connected":
                self._connected()
            elif pc.connectionState == "failed":
                self._set_state("failed", "ICE or DTLS failed")

        self._set_state("connecting")
        try:
            self.answer_sdp = await self._answer(pc, offer_sdp)
            return self.answer_sdp
        except Exception as exc:
            if isinstance(exc, PortRangeExhausted):
                # The MP only hears badOffer and Graph ends the call with its generic 7112:
                # the call's media_lost says why (media/network.py logs the range too).
                self._set_state("failed", f"no media port: {exc}")
            # Leave the session able to take a corrected offer.
            self._pc = None
            self._receivers = []
            self._sender = None
            self._cancel_video()
            await pc.close()
            if not self._closing:  # closed meanwhile: "closed" stays the last word
                self._set_state("created")
            raise

    async def _answer(self, pc: RTCPeerConnection, offer_sdp: str) -> str:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        transceivers = pc.getTransceivers()
        audio = [t for t in transceivers if t.kind == "audio"]
        video = [t for t in transceivers if t.kind == "video"]
        for i, transceiver in enumerate(audio):
            # What the answer lists is what the receivers decode: Opus, and DTMF on the first.
            transceiver._codecs = negotiation.answer_audio_codecs(transceiver._codecs, i == 0)
        negotiation.install_capture_time([t.receiver.transport for t in transceivers])
        self._hook_audio(audio)
        loop = asyncio.get_running_loop()
        self._sender = AudioSender(
            self.audio_socket.send_ring,
            loop,
            self._clock,
            self._codec_executor,
            lambda status: self._socket_event(AudioSendStatusChanged(status)),
        )
        pc.addTrack(ParkedTrack())  # the first audio m-line: aiortc's own loop stays parked
        self._hook_video(pc, video)
        # Before the answer: that is when candidates are gathered (media/network.py). Always,
        # range or not: the same connection screens what reaches DTLS and SRTP.
        apply_network(pc, self._network or NetworkSettings())
        await pc.setLocalDescription(await pc.createAnswer())
        self._sender.bind(audio[0])
        dtmf_pt = negotiation.payload_type(audio[0]._codecs, negotiation.TELEPHONE_EVENT, 48_000)
        self._receivers[0].dtmf_pt = dtmf_pt
        return str(pc.localDescription.sdp)

    def _hook_audio(self, audio: list[RTCRtpTransceiver]) -> None:
        on_tone: Callable[[str], None] | None = self._on_tone
        if self.receive_unmixed_meeting_audio:
            self._assembler = UnmixedAssembler(len(audio))
            sinks: list[FrameSink] = [StreamSink(i, self._unmixed) for i in range(len(audio))]
        else:
            sinks = [self.audio_socket.receive_ring]
        # The mix comes every 20 ms, silent or not (docs/media-protocol.md, Audio); an unmixed
        # stream with nobody on it sends nothing, so only the mix is played out when it stops.
        continuous = not self.receive_unmixed_meeting_audio
        for transceiver, sink in zip(audio, sinks, strict=True):
            receiver = AudioReceiver(sink, self._clock, on_tone=on_tone, continuous=continuous)
            hook_receiver(transceiver.receiver, receiver)
            self._receivers.append(receiver)
            on_tone = None  # DTMF comes on the first m-line only

    def _hook_video(self, pc: RTCPeerConnection, video: list[RTCRtpTransceiver]) -> None:
        loop = asyncio.get_running_loop()
        for transceiver, socket in zip(video, self.video_sockets, strict=True):
            if socket.settings.receives:
                seen = hook_video_receiver(transceiver.receiver, socket)
                self._video_tasks.append(
                    asyncio.create_task(
                        read_video(
                            transceiver.receiver.track,
                            socket,
                            seen,
                            self._clock,
                            self._codec_executor,
                        )
                    )
                )
            if socket.settings.sends:
                sender = pc.addTrack(VideoSendTrack(socket, loop))
                watch_key_frame_requests(sender, socket)
            if not socket.settings.sends:
                transceiver.direction = "recvonly"

    def _connected(self) -> None:
        self._set_state("connected")
        if self._sender is not None:
            self._sender.start()
        for socket in self.video_sockets:
            if socket.settings.receives:
                socket.set_receive_status("active")
            if socket.settings.sends:
                socket.set_send_status("active")

    def _on_tone(self, tone: str) -> None:
        self._socket_event(ToneReceived(tone, to_ticks(self._clock.now())))

    # -- unmixed audio ----------------------------------------------------------------------------

    def _unmixed(self, stream: int, buffer: UnmixedAudioBuffer) -> None:
        assert self._assembler is not None
        for frame in self._assembler.add(stream, buffer, self._clock.now()):
            self.audio_socket.receive_ring.push(frame)
        self._schedule_assembler()

    def _expire_assembler(self) -> None:
        self._assembler_timer = None
        if self._assembler is None or self._closing:
            return
        for frame in self._assembler.expire(self._clock.now()):
            self.audio_socket.receive_ring.push(frame)
        self._schedule_assembler()

    def _schedule_assembler(self) -> None:
        assert self._assembler is not None
        deadline = self._assembler.deadline
        if self._assembler_timer is not None:
            self._assembler_timer.cancel()
            self._assembler_timer = None
        if deadline is not None:
            loop = asyncio.get_running_loop()
            delay = max(0.0, deadline - self._clock.now())
            self._assembler_timer = loop.call_at(loop.time() + delay, self._expire_assembler)

    # -- teardown and figures ------------------------------------------------------------------

    def _cancel_video(self) -> list[asyncio.Task[None]]:
        tasks, self._video_tasks = self._video_tasks, []
        for task in tasks:
            task.cancel()
        return tasks

    async def close(self, reason: str = "") -> None:
        """Media loop: say bye to the MP and close the control connection (unless the MP ended
        it), stop sending and tear the peer connection down. Idempotent."""
        if self._closing:
            return
        self._closing = True
        self._close_reason = reason
        if self._end_control is not None:
            # First, so the bye goes before the DTLS close_notify and RTCP BYE of pc.close()
            # (other paths, so the MP may still see those first); the close handshake runs
            # beside the teardown, on the connection's own task.
            self._end_control(reason)
        if self._sender is not None:
            await self._sender.stop()
        for receiver in self._receivers:
            receiver.close()
        if self._assembler_timer is not None:
            self._assembler_timer.cancel()
        tasks = self._cancel_video()
        for socket in self.video_sockets:
            socket.set_receive_status("inactive")
            socket.set_send_status("inactive")
        if self._pc is not None:
            await self._pc.close()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._set_state("closed", reason)

    def quality(self) -> list[dict[str, int]]:
        """Per received audio stream: jitter, loss, concealment (like the Windows
        library's GetQualityOfExperienceData)."""
        out = []
        for i, r in enumerate(self._receivers):
            out.append(
                {
                    "stream": i,
                    "packets": r.stats.packets,
                    "lost": r.packets_lost,
                    "concealed": r.stats.concealed,
                    "concealment_skipped": r.jitter.skipped,
                    "jitter_us": round(r.jitter.jitter_seconds * 1e6),
                    "jitter_wait_us": round(r.jitter.wait_seconds * 1e6),
                    # The playout point moved back to follow a rise in delay (media/jitter.py).
                    "jitter_reanchors": r.jitter.reanchors,
                    "late_or_duplicate": r.stats.late_or_duplicate,
                    "decode_errors": r.stats.decode_errors,
                }
            )
        return out

    @property
    def stats(self) -> dict[str, int]:
        stats = dict(self.audio_socket.stats)
        streams = self.quality()
        if streams:
            for key in ("packets", "concealed", "concealment_skipped", "decode_errors"):
                stats[key if key != "packets" else "rtp_packets"] = sum(s[key] for s in streams)
            stats["rtp_late_or_duplicate"] = sum(s["late_or_duplicate"] for s in streams)
            stats["jitter_us"] = max(s["jitter_us"] for s in streams)
            stats["jitter_wait_us"] = max(s["jitter_wait_us"] for s in streams)
            stats["jitter_reanchors"] = sum(s["jitter_reanchors"] for s in streams)
            stats["tones_received"] = sum(r.stats.tones for r in self._receivers)
        if self._sender is not None:
            s = self._sender.stats
            stats.update(
                frames_to_encoder=s.frames, rtp_sent=s.packets, dtmf_packets_sent=s.dtmf_packets
            )
        stats["events_dropped"] = self.events.dropped
        # Datagrams dropped before aiortc saw them (RFC 7983 demultiplexing, source checks).
        pc = self._pc
        drops = drop_counts(pc) if pc is not None else dict.fromkeys(DROP_REASONS, 0)
        stats.update({f"udp_dropped_{reason}": count for reason, count in drops.items()})
        return stats
