"""The media processor's own RTP send path for audio (instead of RTCRtpSender._run_rtp in
aiortc/src/aiortc/rtcrtpsender.py).

aiortc's sender is parked with a track whose recv() never returns; packets are built here as raw
bytes (RFC 3550 header with a CSRC list, RFC 8285 one-byte header extensions) and handed to the
DTLS transport's _send_rtp, which protects them with SRTP. One RtpStream owns one SSRC's sequence
numbers and timestamps, so audio and RFC 4733 events share one sequence space (one SSRC, one
SRTP replay window: section 2, E7). The sender's RTCP SR counters are bumped per packet so its
sender reports stay truthful.

Registration (idempotent, process-wide, before any peer connection is made):
- the abs-capture-time header extension in aiortc.codecs.HEADER_EXTENSIONS["audio"], so offers
  carry its a=extmap. BUNDLE shares one id space across m-lines, so the id is the first one from
  4 up that neither the audio nor the video list uses (4 with stock aiortc);
- telephone-event/48000 in aiortc.codecs.CODECS["audio"], after opus (the sender uses codecs[0]
  and answers keep the offer's order), payload type 126, which aiortc's video codecs (97-102)
  do not use.
"""

from __future__ import annotations

import asyncio
import random
import struct
import time
from collections.abc import Callable, Coroutine
from typing import Any

from aiortc import MediaStreamTrack, RTCRtpSender, RTCRtpTransceiver
from aiortc.codecs import CODECS, HEADER_EXTENSIONS
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpHeaderExtensionParameters

ABS_CAPTURE_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time"
MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
TELEPHONE_EVENT = "audio/telephone-event"
TELEPHONE_EVENT_PT = 126
FIRST_FREE_EXTENSION_ID = 4
ONE_BYTE_PROFILE = 0xBEDE  # RFC 8285 section 4.2
NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900 to 1970 (RFC 5905)
RTP_TICKS_PER_FRAME = 960  # 20 ms at Opus' 48 kHz RTP clock (RFC 7587 section 4.1)

SendRtp = Callable[[bytes], Coroutine[Any, Any, None]]


def register_codecs() -> None:
    """Make aiortc offer abs-capture-time and telephone-event/48000 (idempotent)."""
    audio = HEADER_EXTENSIONS["audio"]
    if not any(ext.uri == ABS_CAPTURE_TIME_URI for ext in audio):
        used = {ext.id for kind in ("audio", "video") for ext in HEADER_EXTENSIONS[kind]}
        free = next(i for i in range(FIRST_FREE_EXTENSION_ID, 15) if i not in used)
        audio.append(RTCRtpHeaderExtensionParameters(id=free, uri=ABS_CAPTURE_TIME_URI))
    codecs = CODECS["audio"]
    if not any(c.mimeType.lower() == TELEPHONE_EVENT and c.clockRate == 48000 for c in codecs):
        codecs.append(
            RTCRtpCodecParameters(
                mimeType=TELEPHONE_EVENT,
                clockRate=48000,
                channels=1,
                payloadType=TELEPHONE_EVENT_PT,
                parameters={"0-16": None},
            )
        )


def ntp_uq32(seconds: float) -> int:
    """A time in seconds as a 64-bit NTP UQ32.32 value (no epoch shift)."""
    return round(seconds * (1 << 32)) & 0xFFFF_FFFF_FFFF_FFFF


def one_byte_extensions(elements: list[tuple[int, bytes]]) -> bytes:
    """An RFC 8285 one-byte-header extension block (ids 1-14, values 1-16 bytes), padded."""
    body = b"".join(bytes([(ext_id << 4) | (len(value) - 1)]) + value for ext_id, value in elements)
    body += b"\0" * (-len(body) % 4)
    return struct.pack("!HH", ONE_BYTE_PROFILE, len(body) // 4) + body


def rtp_packet(
    payload_type: int,
    sequence_number: int,
    timestamp: int,
    ssrc: int,
    payload: bytes,
    marker: bool = False,
    csrc: tuple[int, ...] = (),
    extensions: bytes = b"",
) -> bytes:
    """A serialized RTP packet (RFC 3550 section 5.1); `extensions` is a whole extension block."""
    first = 0x80 | (0x10 if extensions else 0) | len(csrc)
    head = struct.pack(
        "!BBHII", first, (0x80 if marker else 0) | payload_type, sequence_number, timestamp, ssrc
    )
    if csrc:
        head += struct.pack(f"!{len(csrc)}I", *csrc)
    return head + extensions + payload


def with_csrc(data: bytes, csrc: int) -> bytes:
    """An RTP packet without CSRCs, given one: CC becomes 1 and the 4 bytes go right after the
    12-byte fixed header (before any header extension)."""
    return bytes([data[0] | 1]) + data[1:12] + csrc.to_bytes(4, "big") + data[12:]


class ParkedTrack(MediaStreamTrack):
    """Keeps aiortc's own RTP loop waiting forever: recv() never returns, so the stock sender
    creates no encoder and sends nothing, yet its RTCP loop (sender reports) runs."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def recv(self) -> Any:
        await self._never
        raise AssertionError("a parked track never yields")


class RtpStream:
    """One SSRC's RTP state on an audio m-line whose sender is parked.

    The RTP timestamp of tick k is origin + 960 k: real time, whether or not a packet went out in
    between, so an idle stream's next packet says how long it was quiet. Sequence numbers count
    only the packets sent, so they stay contiguous across idle ticks. `marker` is set on the
    first packet after the stream was idle (a talkspurt's start, RFC 3551 section 4.1).
    """

    def __init__(self, transceiver: RTCRtpTransceiver, rng: random.Random) -> None:
        sender: RTCRtpSender = transceiver.sender
        self.sender = sender
        self.ssrc = sender._ssrc
        codecs = transceiver._codecs
        payload_type = codecs[0].payloadType
        assert payload_type is not None, "negotiated codecs have payload types"
        self.payload_type: int = payload_type
        self.event_payload_type = next(
            (
                c.payloadType
                for c in codecs
                if c.mimeType.lower() == TELEPHONE_EVENT and c.clockRate == 48000
            ),
            None,
        )
        # Only the extensions the answer accepted, with the ids it gave them (RFC 8285).
        ids = {ext.uri: ext.id for ext in transceiver._headerExtensions}
        mid = transceiver.mid
        self._mid = (
            bytes([(ids[MID_URI] << 4) | (len(mid.encode()) - 1)]) + mid.encode()
            if MID_URI in ids and mid
            else b""
        )
        self._abs_id = ids.get(ABS_CAPTURE_TIME_URI)
        self.sequence_number = rng.randrange(32768)  # as aiortc: no early wrap (rtcrtpsender)
        self.origin = rng.getrandbits(32)
        self.idle = True
        self.packets = 0

    @property
    def sends_capture_time(self) -> bool:
        return self._abs_id is not None

    def timestamp(self, tick: int) -> int:
        return (self.origin + tick * RTP_TICKS_PER_FRAME) & 0xFFFFFFFF

    def packet(
        self,
        payload: bytes,
        tick: int,
        capture_seconds: float,
        csrc: tuple[int, ...] = (),
        payload_type: int | None = None,
        marker: bool | None = None,
        timestamp_tick: int | None = None,
    ) -> bytes:
        """The next packet of this stream: it takes the next sequence number."""
        body = self._mid
        if self._abs_id is not None:
            body += bytes([(self._abs_id << 4) | 7]) + ntp_uq32(capture_seconds).to_bytes(8, "big")
        extensions = b""
        if body:
            body += b"\0" * (-len(body) % 4)
            extensions = struct.pack("!HH", ONE_BYTE_PROFILE, len(body) // 4) + body
        timestamp = self.timestamp(tick if timestamp_tick is None else timestamp_tick)
        data = rtp_packet(
            self.payload_type if payload_type is None else payload_type,
            self.sequence_number,
            timestamp,
            self.ssrc,
            payload,
            self.idle if marker is None else marker,
            csrc[:15],
            extensions,
        )
        self.sequence_number = (self.sequence_number + 1) & 0xFFFF
        self.idle = False
        self.packets += 1
        self._count(timestamp, len(payload))
        return data

    def _count(self, timestamp: int, payload_bytes: int) -> None:
        """What aiortc's _run_rtp does after each packet (rtcrtpsender.py), for the RTCP SR."""
        sender: Any = self.sender
        sender._RTCRtpSender__ntp_timestamp = ntp_uq32(time.time() + NTP_EPOCH_OFFSET)
        sender._RTCRtpSender__rtp_timestamp = timestamp
        sender._RTCRtpSender__octet_count += payload_bytes
        sender._RTCRtpSender__packet_count += 1
