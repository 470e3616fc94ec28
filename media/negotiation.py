"""What our SDP negotiates beyond aiortc's defaults, and the RTP header extension it adds.

aiortc builds offers and answers from module-global tables (CODECS and HEADER_EXTENSIONS in
aiortc/src/aiortc/codecs/__init__.py),
so registration is process-wide and idempotent:

- `telephone-event/48000` (RFC 4733) after Opus, for DTMF both ways. aiortc has no DTMF, and a
  stock receiver that gets a telephone-event packet kills its decoder thread, so every receiver
  that negotiates it must be hooked (media/engine.py takes that payload type first).
- `useinbandfec=1` on Opus (RFC 7587 section 7): the peer may then send in-band FEC, which
  media/opus.py decodes.
- abs-capture-time (http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time): the original
  sender's capture time on unmixed streams (docs/media-protocol.md). aiortc drops header
  extensions it does not know, so the transport gets a map that keeps this one.

And what the bot's answers may hold, per offer rather than process-wide (the emulator shares
these tables in one process): the m-lines docs/media-protocol.md lists for the session, and on
audio only the codecs the receive path decodes. aiortc answers G.722, PCMU and PCMA when they
are offered, but media/engine.py decodes every audio payload as Opus.
"""

from __future__ import annotations

import re
import struct
from typing import Any

from aiortc import RTCRtpCodecParameters, RTCRtpHeaderExtensionParameters
from aiortc.codecs import CODECS, HEADER_EXTENSIONS
from aiortc.rtp import HeaderExtensions, HeaderExtensionsMap, unpack_header_extensions

from media.clock import TICKS_PER_SECOND

TELEPHONE_EVENT = "audio/telephone-event"
OPUS = "audio/opus"
_M_LINE = re.compile(r"^m=(\S+) ", re.MULTILINE)  # RFC 8866 section 5.14: m=<media> <port> ...
ABS_CAPTURE_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time"
# Our offers never carry this id; as answerer we take the offer's. It must not collide with the
# ids aiortc uses for audio or video, which share one space under BUNDLE (aiortc codecs table).
ABS_CAPTURE_TIME_ID = 9
_NTP_FRACTION = 1 << 32


def register() -> None:
    """Make every RTCPeerConnection created afterwards negotiate DTMF, FEC and capture time."""
    audio = CODECS["audio"]
    for codec in audio:
        if codec.mimeType.lower() == "audio/opus":
            codec.parameters.setdefault("useinbandfec", 1)
    if not any(c.mimeType.lower() == TELEPHONE_EVENT for c in audio):
        taken = {c.payloadType for kind in CODECS.values() for c in kind}
        payload_type = next(pt for pt in range(101, 128) if pt not in taken)
        # After Opus: aiortc sends the first codec, and an answer follows the offer's order.
        audio.append(
            RTCRtpCodecParameters(
                mimeType=TELEPHONE_EVENT,
                clockRate=48_000,
                channels=1,
                payloadType=payload_type,
                parameters={"0-16": None},
            )
        )
    extensions = HEADER_EXTENSIONS["audio"]
    if not any(x.uri == ABS_CAPTURE_TIME for x in extensions):
        extensions.append(
            RTCRtpHeaderExtensionParameters(id=ABS_CAPTURE_TIME_ID, uri=ABS_CAPTURE_TIME)
        )


def check_m_lines(offer_sdp: str, audio: tuple[int, int], video: int) -> None:
    """The offer's m-lines are the session's (docs/media-protocol.md, m-lines): `audio[0]` to
    `audio[1]` audio m-lines, then exactly `video` video m-lines, nothing else. Raises
    ValueError saying how they differ. The bot rejects no single m-line (no port 0): it takes
    the whole offer or refuses it, and the MP, which knows the blob, can offer again."""
    kinds = _M_LINE.findall(offer_sdp)
    n_audio = next((i for i, kind in enumerate(kinds) if kind != "audio"), len(kinds))
    low, high = audio
    if not low <= n_audio <= high:
        takes = f"{low} to {high}" if high > low else f"{low}"
        raise ValueError(
            f"the offer starts with {n_audio} audio m-lines; this session takes {takes}"
        )
    rest = kinds[n_audio:]
    if rest != ["video"] * video:
        raise ValueError(
            f"after the audio the offer has m-lines {rest}; this session takes {video} video"
        )


def answer_audio_codecs(
    codecs: list[RTCRtpCodecParameters], dtmf: bool
) -> list[RTCRtpCodecParameters]:
    """Of the codecs an audio m-line has in common with ours, the ones the bot answers: Opus
    first, then telephone-event/48000 if `dtmf` (the first m-line). Raises ValueError without
    Opus/48000/2."""
    opus = [c for c in codecs if c.mimeType.lower() == OPUS]
    if not opus:
        raise ValueError("an audio m-line without Opus/48000/2, the one audio codec the bot takes")
    events = [
        c
        for c in codecs
        if dtmf and c.mimeType.lower() == TELEPHONE_EVENT and c.clockRate == 48_000
    ]
    return opus + events


def capture_ticks(ntp_value: int) -> int:
    """A 64-bit NTP UQ32.32 time to 100 ns ticks (the unit of Graph's media timestamps)."""
    return ntp_value * TICKS_PER_SECOND // _NTP_FRACTION


class CaptureTimeMap(HeaderExtensionsMap):
    """aiortc's extension map plus abs-capture-time, read into `extensions.capture_ticks`.

    Installed on a DTLS transport before its receivers register (registration calls
    configure() with the negotiated ids).
    """

    def __init__(self) -> None:
        super().__init__()
        self._capture_id: int | None = None

    def configure(self, parameters: Any) -> None:
        super().configure(parameters)
        for ext in parameters.headerExtensions:
            if ext.uri == ABS_CAPTURE_TIME:
                self._capture_id = ext.id

    def get(self, extension_profile: int, extension_value: bytes) -> HeaderExtensions:
        values = super().get(extension_profile, extension_value)
        if self._capture_id is not None:
            for x_id, x_value in unpack_header_extensions(extension_profile, extension_value):
                # 8 bytes: capture time only; 16: with the estimated clock offset.
                if x_id == self._capture_id and len(x_value) in (8, 16):
                    values.capture_ticks = capture_ticks(struct.unpack_from("!Q", x_value)[0])  # type: ignore[attr-defined]
        return values


def install_capture_time(transports: list[Any]) -> None:
    """Give each distinct DTLS transport our map (before the connection registers receivers)."""
    seen: set[int] = set()
    for transport in transports:
        if transport is None or id(transport) in seen:
            continue
        seen.add(id(transport))
        if not isinstance(transport._rtp_header_extensions_map, CaptureTimeMap):
            transport._rtp_header_extensions_map = CaptureTimeMap()


def payload_type(codecs: list[RTCRtpCodecParameters], mime: str, clock_rate: int) -> int | None:
    """The negotiated payload type for a codec, or None if the peer did not take it."""
    for codec in codecs:
        if codec.mimeType.lower() == mime and codec.clockRate == clock_rate:
            return codec.payloadType
    return None
