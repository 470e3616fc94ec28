"""The MP's video sockets: one m-line per blob `videoSockets` entry, and the bot's subscriptions.

A socket the bot receives on (its direction sendrecv or recvonly) has a PatternVideoTrack on the
MP's sender; subscribe points it at a participant's camera (video socket) or screen share (vbss
socket) at the asked resolution or the camera's largest, whichever is smaller, starting with a key
frame. Every RTP packet of the m-line then carries that MSI as its only CSRC: a wrapper around the
transport's _send_rtp recognises the m-line's SSRCs (media and RTX). A live participant's camera
(ParticipantScript.live a LivePerson: the browser join page) is sent instead of its pattern.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCRtpTransceiver

from emulator.mpcontrol import MAX_MSI, MAX_SOCKET_ID, ControlError, whole_number
from emulator.participant import ParticipantScript
from emulator.video import RESOLUTIONS, LiveCamera, LivePerson, PatternVideoTrack, fit

MAX_VIDEO_SOCKETS = 10
SCREEN_SIZE = (1920, 1080)  # a screen share's largest resolution
MP_DIRECTION = {"sendrecv": "sendrecv", "recvonly": "sendonly", "sendonly": "recvonly"}


@dataclass
class VideoSocket:
    socket_id: int
    media_type: str  # "video" or "vbss"
    direction: str  # the bot's: sendrecv, sendonly or recvonly
    transceiver: RTCRtpTransceiver | None = None
    track: PatternVideoTrack | None = None  # the MP's source, when the bot receives here
    frames_received: int = 0  # video the bot sent on this socket, decoded by the MP
    size_received: tuple[int, int] | None = None
    ssrcs: set[int] = field(default_factory=set)
    received: asyncio.Event = field(default_factory=asyncio.Event)  # set on each frame from the bot

    @property
    def mp_direction(self) -> str:
        return MP_DIRECTION[self.direction]

    @property
    def bot_receives(self) -> bool:
        return self.direction in ("sendrecv", "recvonly")

    @property
    def bot_sends(self) -> bool:
        return self.direction in ("sendrecv", "sendonly")


def parse_video_sockets(blob: dict[str, Any]) -> list[VideoSocket]:
    """The blob's videoSockets in socket-id order. Raises ValueError for what the spec forbids."""
    entries = blob.get("videoSockets") or []
    if not isinstance(entries, list):
        raise ValueError("videoSockets must be a list")
    sockets: list[VideoSocket] = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise ValueError("a videoSockets entry must be an object")
        socket_id, kind, direction = (
            entry.get("socketId"),
            entry.get("mediaType"),
            entry.get("direction"),
        )
        if isinstance(socket_id, bool) or not isinstance(socket_id, int):
            raise ValueError("videoSockets[].socketId must be an integer")
        if kind not in ("video", "vbss") or direction not in MP_DIRECTION:
            raise ValueError(f"videoSockets[{socket_id}]: bad mediaType or direction")
        sockets.append(VideoSocket(socket_id, kind, direction))
    sockets.sort(key=lambda s: s.socket_id)
    if [s.socket_id for s in sockets] != list(range(len(sockets))):
        raise ValueError("videoSockets socket ids must be 0, 1, 2, ...")
    kinds = [s.media_type for s in sockets]
    if kinds.count("video") > MAX_VIDEO_SOCKETS or kinds.count("vbss") > 1:
        raise ValueError("at most 10 video sockets and one vbss socket")
    if "vbss" in kinds and kinds[-1] != "vbss":
        raise ValueError("the vbss socket comes last")
    if any(s.direction != "recvonly" for s in sockets[1:]):
        raise ValueError("only socket 0 may send")
    if any(s.media_type == "vbss" and s.direction != "recvonly" for s in sockets):
        raise ValueError("the vbss socket receives only")
    return sockets


class VideoSubscriptions:
    """subscribe / unsubscribe against the meeting's participants; replies are message dicts."""

    def __init__(
        self,
        sockets: Sequence[VideoSocket],
        participants: Callable[[], Sequence[ParticipantScript]],
        key_frame: Callable[[VideoSocket], None],
    ) -> None:
        self.sockets = list(sockets)
        self._participants = participants
        self._key_frame = key_frame
        self.showing: dict[int, int] = {}  # socket id -> MSI it shows
        self.stopped: set[int] = set()  # video MSIs whose camera or screen share was turned off

    def csrc_by_ssrc(self) -> dict[int, Callable[[], int | None]]:
        """For the _send_rtp wrapper: each sending m-line's SSRCs -> its current MSI."""
        table: dict[int, Callable[[], int | None]] = {}
        for socket in self.sockets:
            track = socket.track
            if track is not None:
                for ssrc in socket.ssrcs:
                    table[ssrc] = _msi_of(track)
        return table

    def _receiving_socket(self, message: dict[str, Any]) -> VideoSocket:
        socket_id = whole_number(message, "socketId", MAX_SOCKET_ID)
        if socket_id >= len(self.sockets):
            raise ControlError("badSubscription", f"no video socket {socket_id}")
        socket = self.sockets[socket_id]
        if not socket.bot_receives or socket.track is None:
            raise ControlError("badSubscription", f"video socket {socket_id} cannot receive")
        return socket

    def subscribe(self, message: dict[str, Any]) -> dict[str, Any]:
        socket = self._receiving_socket(message)
        msi = whole_number(message, "msi", MAX_MSI)
        resolution = message.get("resolution")
        if not isinstance(resolution, str) or not resolution:
            raise ControlError("badMessage", "subscribe: 'resolution' must be a non-empty string")
        if resolution not in RESOLUTIONS:
            raise ControlError("badSubscription", f"unknown resolution {resolution!r}")
        size, camera = self._source(socket, msi)
        width, height = fit(RESOLUTIONS[resolution], size)
        assert socket.track is not None
        socket.track.show(msi, width, height, camera)
        self._key_frame(socket)  # a new subscription starts with a key frame
        self.showing[socket.socket_id] = msi
        return {"type": "videoSource", "socketId": socket.socket_id, "msi": msi}

    def _source(self, socket: VideoSocket, msi: int) -> tuple[tuple[int, int], LiveCamera | None]:
        """The subscribed video's largest size, and its live camera if it has one."""
        if msi in self.stopped:
            raise ControlError("badSubscription", f"the video of MSI {msi} is off")
        for script in self._participants():
            if socket.media_type == "video" and script.video_msi == msi:
                live = script.live
                return script.camera, live.camera if isinstance(live, LivePerson) else None
            if socket.media_type == "vbss" and script.screen_msi == msi:
                return SCREEN_SIZE, None
        kind = "video" if socket.media_type == "video" else "screen share"
        raise ControlError("badSubscription", f"no participant with {kind} MSI {msi}")

    def unsubscribe(self, message: dict[str, Any]) -> dict[str, Any]:
        socket = self._receiving_socket(message)
        assert socket.track is not None
        socket.track.blank()
        self.showing.pop(socket.socket_id, None)
        return {"type": "videoSource", "socketId": socket.socket_id, "msi": None}

    def source_gone(self, msis: set[int]) -> list[dict[str, Any]]:
        """Participants left or stopped their video: blank their sockets, say so."""
        replies = []
        for socket in self.sockets:
            if socket.track is not None and self.showing.get(socket.socket_id) in msis:
                socket.track.blank()
                del self.showing[socket.socket_id]
                replies.append({"type": "videoSource", "socketId": socket.socket_id, "msi": None})
        return replies

    def stop(self) -> None:
        for socket in self.sockets:
            if socket.track is not None:
                socket.track.stop()


def _msi_of(track: PatternVideoTrack) -> Callable[[], int | None]:
    return lambda: track.msi
