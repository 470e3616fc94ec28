"""LocalMediaSession: one call's media, with its audio socket, blob and peer connection."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import secrets
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from importlib import metadata

from aiortc import RTCPeerConnection

from media.audio_socket import AudioSocket
from media.clock import Clock
from media.control import PROTOCOL
from media.engine import AudioReceiver, SendTrack, answer_audio_offer, new_peer_connection
from media.network import NetworkSettings

logger = logging.getLogger(__name__)


@functools.cache
def _stack_version() -> str:
    try:
        return metadata.version("graph-media-bot")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True, slots=True)
class MediaEvent:
    """A plain message from the media side to the control side (DESIGN.md section 3)."""

    session_id: str
    kind: str  # "mpConnected", "connected", "failed", "closed"
    detail: str = ""


class LocalMediaSession:
    """Created on the control thread; its peer connection lives on the media loop."""

    def __init__(
        self,
        mp_uri_base: str,
        clock: Clock,
        emit: Callable[[MediaEvent], None],
        receive_unmixed_meeting_audio: bool = False,
        codec_executor: Executor | None = None,
        network: NetworkSettings | None = None,
    ) -> None:
        self.id = str(uuid.uuid4())
        self.token = secrets.token_urlsafe(32)
        self.mp_uri = f"{mp_uri_base}/MediaProcessor/{self.id}"
        self.receive_unmixed_meeting_audio = receive_unmixed_meeting_audio
        self.audio_socket = AudioSocket()
        self.state = "created"
        self._clock = clock
        self._emit = emit
        self._codec_executor = codec_executor
        self._network = network
        self.answer_sdp = ""  # what we told the media processor (diagnostics, tests)
        self._audio_contexts = (str(uuid.uuid4()), str(uuid.uuid4()))
        self._pc: RTCPeerConnection | None = None
        self._receiver: AudioReceiver | None = None
        self._send_track: SendTrack | None = None
        self._closing = False
        self.mp_attached = False

    def blob(self, call_id: str | None = None) -> str:
        """The appHostedMediaConfig blob (DESIGN.md section 4)."""
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
                "videoRenderContexts": [],
                "mediaStackVersion": _stack_version(),
            }
        )

    def _set_state(self, state: str, detail: str = "") -> None:
        if self.state == state:
            return
        self.state = state
        self._emit(MediaEvent(self.id, state, detail))

    async def accept_offer(self, offer_sdp: str) -> str:
        """Media loop: answer the MP's offer. Raises ValueError for an offer we cannot take."""
        if self._pc is not None:
            raise ValueError("this session already has a peer connection (renegotiation: TODO)")
        loop = asyncio.get_running_loop()
        self._pc = pc = new_peer_connection()
        self._receiver = AudioReceiver(self.audio_socket.receive_ring, self._clock)
        self._send_track = SendTrack(
            self.audio_socket.send_ring, loop, self._clock, self._codec_executor
        )

        @pc.on("connectionstatechange")
        def _on_state() -> None:
            if pc.connectionState == "connected":
                self._set_state("connected")
            elif pc.connectionState == "failed":
                self._set_state("failed", "ICE or DTLS failed")

        self._set_state("connecting")
        try:
            self.answer_sdp = await answer_audio_offer(
                pc, offer_sdp, self._receiver, self._send_track, self._network
            )
            return self.answer_sdp
        except Exception:
            # Leave the session able to take a corrected offer.
            self._pc = None
            self._send_track.stop()
            await pc.close()
            self._set_state("created")
            raise

    async def close(self, reason: str = "") -> None:
        """Media loop: stop sending and tear the peer connection down. Idempotent."""
        if self._closing:
            return
        self._closing = True
        if self._send_track is not None:
            self._send_track.stop()
        if self._receiver is not None:
            self._receiver.close()
        if self._pc is not None:
            await self._pc.close()
        self._set_state("closed", reason)

    @property
    def stats(self) -> dict[str, int]:
        stats = dict(self.audio_socket.stats)
        if self._receiver is not None:
            r = self._receiver.stats
            stats.update(
                rtp_packets=r.packets,
                rtp_late_or_duplicate=r.late_or_duplicate,
                concealed=r.concealed,
                concealment_skipped=self._receiver.jitter.skipped,
                jitter_us=round(self._receiver.jitter.jitter_seconds * 1e6),
                jitter_wait_us=round(self._receiver.jitter.wait_seconds * 1e6),
                decode_errors=r.decode_errors,
            )
        if self._send_track is not None:
            stats["frames_to_encoder"] = self._send_track.frames_sent
        return stats
