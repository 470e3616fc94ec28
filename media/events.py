"""Events the media side reports to the bot: plain messages, named after the Windows library's
event args (IAudioSocket and IVideoSocket in the media library reference,
https://microsoftgraph.github.io/microsoft-graph-comms-samples/docs/bot_media/index.html)."""

from __future__ import annotations

from dataclasses import dataclass

NO_DOMINANT_SPEAKER = 0xFFFFFFFF  # DominantSpeakerChangedEventArgs.None


@dataclass(frozen=True, slots=True)
class ToneReceived:
    tone: str  # "0"-"9", "*", "#", "A"-"D", "F" (flash)
    timestamp: int  # 100 ns ticks, when it arrived


@dataclass(frozen=True, slots=True)
class DominantSpeakerChanged:
    msi: int  # NO_DOMINANT_SPEAKER when nobody is
    history: tuple[int, ...]  # the previous dominant speakers, most recent first


@dataclass(frozen=True, slots=True)
class AudioSendStatusChanged:
    status: str  # "active" | "inactive": audio sent while inactive is discarded


@dataclass(frozen=True, slots=True)
class VideoReceiveStatusChanged:
    socket_id: int
    status: str  # "active": subscribe() is allowed


@dataclass(frozen=True, slots=True)
class VideoSourceChanged:
    socket_id: int
    msi: int | None  # whose video the socket now carries (None: nobody)


@dataclass(frozen=True, slots=True)
class VideoSendStatusChanged:
    socket_id: int
    status: str


@dataclass(frozen=True, slots=True)
class VideoKeyFrameNeeded:
    socket_id: int


@dataclass(frozen=True, slots=True)
class MediaProcessorError:
    """The media processor sent an `error` message (docs/media-protocol.md, Errors): it could
    not do what the bot asked (`badSubscription`) or refused something the bot sent."""

    session_id: str
    code: str
    message: str


SocketEvent = (
    ToneReceived
    | DominantSpeakerChanged
    | AudioSendStatusChanged
    | VideoReceiveStatusChanged
    | VideoSourceChanged
    | VideoSendStatusChanged
    | VideoKeyFrameNeeded
)
