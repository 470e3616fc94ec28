"""Video sockets (like IVideoSocket of the Windows library): receive NV12 from subscribed
participants, send NV12.

Video keeps aiortc's own receive path (its jitter buffer, NACK, PLI and a decoder thread fit
video; the audio-only complaints of media/engine.py do not apply) with two
additions: a hook that notes the CSRC (the shown participant's MSI, docs/media-protocol.md) and
a reader task per socket that converts decoded frames to NV12 on the codec executor and keeps
only the latest (video's drop policy: latest frame wins). Sending hands
aiortc an av.VideoFrame; aiortc encodes (VP8 or H.264) off the loop, in its executor.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCRtpReceiver, RTCRtpSender
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RtcpPsfbPacket, RtpPacket

from media.clock import TICKS_PER_SECOND, Clock, to_ticks
from media.events import (
    SocketEvent,
    VideoKeyFrameNeeded,
    VideoReceiveStatusChanged,
    VideoSendStatusChanged,
    VideoSourceChanged,
)
from media.frames import VideoFrame
from media.ring import Ring

logger = logging.getLogger(__name__)

# MaxNumberOfVideoSocketsPerCall (MediaPlatform in https://microsoftgraph.github.io/microsoft-graph-comms-samples/docs/bot_media/index.html),
# plus one VBSS
MAX_VIDEO_SOCKETS = 10
RESOLUTIONS: dict[str, tuple[int, int]] = {
    "hd1080p": (1920, 1080),
    "hd720p": (1280, 720),
    "sd540p": (960, 540),
    "sd360p": (640, 360),
    "sd240p": (424, 240),
    "sd180p": (320, 180),
}
VIDEO_CLOCK = Fraction(1, 90_000)  # RTP video clock (RFC 6184, RFC 7741)
RTCP_PSFB_PLI = 1

Direction = Literal["sendrecv", "sendonly", "recvonly"]
MediaType = Literal["video", "vbss"]


class VideoSocketError(Exception):
    """A video socket operation that is not allowed now (the library's InvalidOperation)."""


@dataclass(frozen=True, slots=True)
class VideoSocketSettings:
    """As VideoSocketSettings of the Windows library: direction and media type. Received video
    is delivered as NV12; only socket 0 may send (CreateMediaConfiguration's rule)."""

    direction: Direction = "recvonly"
    media_type: MediaType = "video"

    @property
    def receives(self) -> bool:
        return self.direction in ("sendrecv", "recvonly")

    @property
    def sends(self) -> bool:
        return self.direction in ("sendrecv", "sendonly")


def validate(sockets: tuple[VideoSocketSettings, ...]) -> None:
    """Raises ValueError for a configuration the platform refuses."""
    video = [s for s in sockets if s.media_type == "video"]
    vbss = [s for s in sockets if s.media_type == "vbss"]
    if len(video) > MAX_VIDEO_SOCKETS:
        raise ValueError(f"at most {MAX_VIDEO_SOCKETS} video sockets per call")
    if len(vbss) > 1:
        raise ValueError("at most one screen-sharing (vbss) socket per call")
    if vbss and sockets[-1].media_type != "vbss":
        raise ValueError("the vbss socket comes after the video sockets")
    if any(s.sends for s in sockets[1:]):
        raise ValueError("only the first video socket may send")
    if vbss and vbss[0].sends:
        raise ValueError("the vbss socket receives only")


@dataclass(slots=True)
class VideoStats:
    received: int = 0
    receive_dropped: int = 0  # older frames replaced by a newer one before anyone read them
    sent: int = 0
    convert_errors: int = 0
    key_frames_requested: int = 0
    key_frames_needed: int = 0


class VideoSocket:
    """One video socket. Thread-safe for the bot; its media work runs on the media loop."""

    def __init__(
        self,
        socket_id: int,
        settings: VideoSocketSettings,
        control: Callable[[dict[str, Any]], None],
        emit: Callable[[SocketEvent], None],
    ) -> None:
        self.socket_id = socket_id
        self.settings = settings
        self._control = control  # sends a control message to the media processor
        self._emit = emit
        # Latest frame wins: a reader that falls behind sees the newest picture.
        self.receive_ring: Ring[VideoFrame] = Ring(1)
        self.send_ring: Ring[VideoFrame] = Ring(1)
        self.receive_status = "inactive"
        self.send_status = "inactive"
        self.msi: int | None = None  # whose video arrives now (the MP's videoSource)
        self.subscription: tuple[int, str] | None = None
        self.stats = VideoStats()
        self._key_frame_request: Callable[[], None] | None = None

    @property
    def media_type(self) -> MediaType:
        return self.settings.media_type

    def receive(self) -> VideoFrame | None:
        """The newest frame since the last call, or None."""
        return self.receive_ring.pop()

    def subscribe(self, msi: int, resolution: str = "sd360p") -> None:
        """Ask for this participant's video (its video or vbss MSI from the roster).

        Allowed once receive status is active (as the Windows library, #732); the frames that
        follow are tagged with `msi` and are at most `resolution`.
        """
        if not self.settings.receives:
            raise VideoSocketError(f"video socket {self.socket_id} does not receive")
        if self.receive_status != "active":
            raise VideoSocketError(
                f"video socket {self.socket_id}: subscribe only after receive status is active"
            )
        if resolution not in RESOLUTIONS:
            raise ValueError(f"resolution is one of {', '.join(RESOLUTIONS)}")
        if not 0 <= msi <= 0xFFFFFFFF:
            raise ValueError("an MSI is a 32-bit unsigned integer")
        self.subscription = (msi, resolution)
        self._control(
            {"type": "subscribe", "socketId": self.socket_id, "msi": msi, "resolution": resolution}
        )

    def unsubscribe(self) -> None:
        if self.subscription is None:
            return
        self.subscription = None
        self._control({"type": "unsubscribe", "socketId": self.socket_id})

    def request_key_frame(self) -> None:
        """Ask the sender for a key frame (RTCP PLI, RFC 4585 6.3.1)."""
        if self._key_frame_request is None:
            raise VideoSocketError(f"video socket {self.socket_id} is not receiving")
        self.stats.key_frames_requested += 1
        self._key_frame_request()

    def send(self, frame: VideoFrame) -> None:
        """Queue an NV12 frame to send (the newest queued frame wins)."""
        if not self.settings.sends:
            raise VideoSocketError(f"video socket {self.socket_id} does not send")
        self.send_ring.push(frame)

    # -- media loop side ---------------------------------------------------------------------

    def set_receive_status(self, status: str) -> None:
        if status != self.receive_status:
            self.receive_status = status
            self._emit(VideoReceiveStatusChanged(self.socket_id, status))

    def set_send_status(self, status: str) -> None:
        if status != self.send_status:
            self.send_status = status
            self._emit(VideoSendStatusChanged(self.socket_id, status))

    def set_source(self, msi: int | None) -> None:
        if msi != self.msi:
            self.msi = msi
            self._emit(VideoSourceChanged(self.socket_id, msi))

    def key_frame_needed(self) -> None:
        self.stats.key_frames_needed += 1
        self._emit(VideoKeyFrameNeeded(self.socket_id))


@dataclass(slots=True)
class _Csrc:
    msi: int | None = None
    ssrc: int | None = None


def hook_video_receiver(rtp_receiver: RTCRtpReceiver, socket: VideoSocket) -> _Csrc:
    """Note each packet's CSRC (the shown MSI) before aiortc's own video receive path."""
    seen = _Csrc()
    original = rtp_receiver._handle_rtp_packet

    async def handle(packet: RtpPacket, arrival_time_ms: int) -> None:
        if packet.csrc:
            seen.msi = packet.csrc[0]
        seen.ssrc = packet.ssrc
        await original(packet, arrival_time_ms)

    rtp_receiver._handle_rtp_packet = handle  # type: ignore[method-assign]

    def request() -> None:
        if seen.ssrc is not None:
            task = asyncio.ensure_future(rtp_receiver._send_rtcp_pli(seen.ssrc))
            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    socket._key_frame_request = request
    return seen


def to_nv12(frame: av.VideoFrame) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """A decoded frame as NV12: h rows of Y, then h/2 rows of interleaved UV (w*h*1.5 bytes)."""
    array = frame.reformat(format="nv12").to_ndarray()
    return np.asarray(array, dtype=np.uint8)


async def read_video(
    track: MediaStreamTrack,
    socket: VideoSocket,
    seen: _Csrc,
    clock: Clock,
    executor: Executor | None,
) -> None:
    """Decoded frames to the socket's ring as NV12, tagged with their MSI. Until the track ends."""
    loop = asyncio.get_running_loop()
    try:
        while True:
            frame = await track.recv()
            assert isinstance(frame, av.VideoFrame)
            try:
                data = await loop.run_in_executor(executor, to_nv12, frame)
            except (av.FFmpegError, ValueError) as exc:
                socket.stats.convert_errors += 1
                logger.debug("VideoSocket(%d) x frame not converted: %r", socket.socket_id, exc)
                continue
            socket.stats.received += 1
            if len(socket.receive_ring):
                socket.stats.receive_dropped += 1
            socket.receive_ring.push(
                VideoFrame(
                    data=data,
                    width=frame.width,
                    height=frame.height,
                    timestamp=to_ticks(clock.now()),
                    msi=seen.msi,
                    socket_id=socket.socket_id,
                )
            )
    except MediaStreamError:
        return


class VideoSendTrack(MediaStreamTrack):
    """The send socket's frames for aiortc's video sender, which encodes them off the loop."""

    kind = "video"

    def __init__(self, socket: VideoSocket, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._socket = socket
        self._media_loop = loop
        self._wake = asyncio.Event()
        self._armed = False
        self._first: int | None = None
        socket.send_ring.on_push = self._on_push

    def _on_push(self) -> None:
        if self._armed:
            self._armed = False
            self._media_loop.call_soon_threadsafe(self._wake.set)

    async def recv(self) -> av.VideoFrame:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            frame = self._socket.send_ring.pop()
            if frame is None:
                self._wake.clear()
                self._armed = True
                frame = self._socket.send_ring.pop()
            if frame is None:
                await self._wake.wait()
                continue
            self._armed = False
            return self._to_av(frame)

    def _to_av(self, frame: VideoFrame) -> av.VideoFrame:
        out = av.VideoFrame.from_ndarray(
            np.asarray(frame.data, dtype=np.uint8).reshape(frame.height * 3 // 2, frame.width),
            format="nv12",
        )
        if self._first is None:
            self._first = frame.timestamp
        # 100 ns ticks to the 90 kHz RTP clock: the frames' own timestamps pace the stream.
        out.pts = (frame.timestamp - self._first) * 90_000 // TICKS_PER_SECOND
        out.time_base = VIDEO_CLOCK
        self._socket.stats.sent += 1
        return out

    def stop(self) -> None:
        super().stop()
        self._media_loop.call_soon_threadsafe(self._wake.set)


def watch_key_frame_requests(sender: RTCRtpSender, socket: VideoSocket) -> None:
    """Report a PLI from the far end as key-frame-needed; aiortc's sender also forces one."""
    original = sender._handle_rtcp_packet

    async def handle(packet: Any) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_PLI:
            socket.key_frame_needed()
        await original(packet)

    sender._handle_rtcp_packet = handle  # type: ignore[method-assign]
