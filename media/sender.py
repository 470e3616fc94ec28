"""Our audio RTP send loop on a parked aiortc sender (instead of RTCRtpSender._run_rtp in
aiortc/src/aiortc/rtcrtpsender.py).

aiortc's sender keeps its sequence number and timestamp in locals of its own loop, sends every
packet with the M bit, cannot set CSRCs and has no DTMF. DTMF must share the audio stream's
sequence space (one SSRC, one SRTP replay window: the E7 trap), so the whole stream is ours:
aiortc's loop is parked on a track that never yields, and this loop builds the packets and
hands them to the DTLS transport. aiortc still does SRTP, RTCP and ICE; its sender-report
counters are kept truthful so the far end's RTCP view is right.

Pacing (docs/media-protocol.md, Audio): one packet per 20 ms slot. A burst from the application
is spread over real time with contiguous timestamps; after the application was silent for more
than the allowance the timeline jumps to real time and the packet carries the M bit (RFC 3551
section 4.1). The pure parts (SendTimeline here, ToneSender in media/dtmf.py) take time as
arguments; the loop itself runs on the media loop with the injected clock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from aiortc import MediaStreamTrack, RTCRtpTransceiver
from aiortc import clock as rtp_clock
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpparameters import RTCRtpSendParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket
from aiortc.utils import random16, random32

from media import dtmf
from media.clock import Clock
from media.codec import RTP_TICKS_PER_FRAME, OpusEncoder
from media.frames import AUDIO_FRAME_SECONDS, AudioFrame
from media.negotiation import TELEPHONE_EVENT, payload_type
from media.ring import Ring

logger = logging.getLogger(__name__)

# RTP timestamps may lag real time by this many slots before they jump forward (a new
# talkspurt), so steady 50 fps output stays contiguous despite scheduling jitter.
ALLOWANCE_SLOTS = 3
EARLY_SECONDS = 0.002  # a slot may go this much before its due time (timer granularity)
# The application hands over frames in real time (one per hot-loop tick), so frames that stay
# queued behind the one being sent for this many slots in a row are a standing queue (a
# stalled loop or bunched arrivals left a backlog that pacing alone keeps forever), not a
# burst still being spread: the surplus goes out at once. CoDel's rule (RFC 8289 section
# 3.2): act on the minimum queue over an interval, so a transient burst is left alone.
STANDING_QUEUE_SLOTS = 50  # 1 s of 20 ms slots


class ParkedTrack(MediaStreamTrack):
    """Keeps aiortc's own send loop waiting forever, with no wake-ups and no encoder."""

    kind = "audio"

    async def recv(self) -> Any:
        await asyncio.get_running_loop().create_future()  # cancelled when the sender stops
        raise MediaStreamError  # pragma: no cover - the future never completes


class StandingQueue:
    """Counts slots, not time: how many frames to send at once because they have stood in the
    send ring for STANDING_QUEUE_SLOTS slots in a row (the minimum depth over that run, less the
    frame a slot takes)."""

    def __init__(self, window_slots: int = STANDING_QUEUE_SLOTS) -> None:
        self._window = window_slots
        self._slots = 0
        self._min_depth: int | None = None

    def observe(self, depth: int) -> int:
        """The ring's depth when a slot takes its frame; returns the surplus to send now."""
        self._min_depth = depth if self._min_depth is None else min(self._min_depth, depth)
        self._slots += 1
        if self._slots < self._window:
            return 0
        surplus = max(0, self._min_depth - 1)
        self._slots, self._min_depth = 0, None
        return surplus


class SendTimeline:
    """Slot indices of the RTP timeline (index * 960 ticks at 48 kHz, RFC 7587)."""

    def __init__(self, allowance_slots: int = ALLOWANCE_SLOTS) -> None:
        self._allowance = allowance_slots
        self._start: float | None = None
        self.index = -1

    def next(self, now: float) -> tuple[int, bool]:
        """The next slot's index, and whether it starts a talkspurt (the M bit)."""
        if self._start is None:
            self._start = now
            self.index = 0
            return 0, True
        real = int((now - self._start) / AUDIO_FRAME_SECONDS)
        jumped = real - self._allowance > self.index + 1
        self.index = real - self._allowance if jumped else self.index + 1
        return self.index, jumped


@dataclass(slots=True)
class SendStats:
    packets: int = 0
    frames: int = 0
    dtmf_packets: int = 0
    replaced_by_dtmf: int = 0  # audio frames not sent because a tone held the slot
    talkspurts: int = 0
    encode_errors: int = 0
    send_errors: int = 0
    caught_up: int = 0  # frames sent without waiting for their slot: a standing queue's surplus


class AudioSender:
    """One audio m-line's outgoing stream: frames from the socket's send ring, tones on demand."""

    def __init__(
        self,
        ring: Ring[AudioFrame],
        loop: asyncio.AbstractEventLoop,
        clock: Clock,
        executor: Executor | None = None,
        on_status: Callable[[str], None] | None = None,
    ) -> None:
        self._ring = ring
        self._media_loop = loop
        self._clock = clock
        self._executor = executor
        self._on_status = on_status or (lambda status: None)
        self._encoder = OpusEncoder()
        self._tones = dtmf.ToneSender()
        self._timeline = SendTimeline()
        self._standing = StandingQueue()
        self._catch_up = 0  # frames still to send at once (StandingQueue)
        self._wake = asyncio.Event()
        self._armed = False
        self._task: asyncio.Task[None] | None = None
        self._transceiver: RTCRtpTransceiver | None = None
        self._map = HeaderExtensionsMap()
        self._opus_pt = 0
        self._dtmf_pt: int | None = None
        self._seq = 0
        self._origin = 0
        self._next_due: float | None = None
        self._event_timestamp = 0
        self.stats = SendStats()
        ring.on_push = self._on_push

    @property
    def dtmf_negotiated(self) -> bool:
        return self._dtmf_pt is not None

    def bind(self, transceiver: RTCRtpTransceiver) -> None:
        """After the answer: the negotiated payload types, mid and extension ids."""
        self._transceiver = transceiver
        codecs = transceiver._codecs
        if not codecs or codecs[0].mimeType.lower() != "audio/opus":
            raise ValueError("Opus was not negotiated first on the audio m-line")
        self._opus_pt = codecs[0].payloadType or 0
        self._dtmf_pt = payload_type(codecs, TELEPHONE_EVENT, 48_000)
        self._map.configure(RTCRtpSendParameters(headerExtensions=transceiver._headerExtensions))
        # Random starting points (RFC 3550 section 5.1), as aiortc's own loop would pick.
        self._seq = random16() & 0x7FFF
        self._origin = random32()

    def start(self) -> None:
        """Media loop, once the transport is connected: sending is active."""
        if self._task is None and self._transceiver is not None:
            self._task = asyncio.create_task(self._run())
            self._on_status("active")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            self._on_status("inactive")

    def send_tones(self, tones: str) -> None:
        """Media loop: queue DTMF tones. Raises DtmfError (unknown tone, or not negotiated)."""
        if self._dtmf_pt is None:
            raise dtmf.DtmfError("the peer did not negotiate telephone-event (RFC 4733)")
        self._tones.add(tones)
        self._wake.set()

    # -- the loop ---------------------------------------------------------------------------

    def _on_push(self) -> None:
        if self._armed:
            self._armed = False
            self._media_loop.call_soon_threadsafe(self._wake.set)

    async def _run(self) -> None:
        try:
            while True:
                await self._wait_for_work()
                await self._pace()
                await self._send_slot()
        except (ConnectionError, MediaStreamError):
            pass  # the transport went away: the session's close follows
        except Exception:  # a bug of ours: say so once; the session stays up, silent
            self.stats.send_errors += 1
            logger.exception("AudioSender x send loop stopped")

    async def _wait_for_work(self) -> None:
        while not self._tones.busy and len(self._ring) == 0:
            self._wake.clear()
            self._armed = True
            if len(self._ring) or self._tones.busy:  # a push between the check and arming
                self._armed = False
                return
            await self._wake.wait()

    async def _pace(self) -> None:
        now = self._clock.now()
        if self._catch_up and not self._tones.busy:
            self._catch_up -= 1
            self.stats.caught_up += 1
            self._next_due = now + AUDIO_FRAME_SECONDS
            return
        if self._next_due is None or now > self._next_due + ALLOWANCE_SLOTS * AUDIO_FRAME_SECONDS:
            self._next_due = now  # the application was late or quiet: restart the pace here
        elif now < self._next_due - EARLY_SECONDS:
            # A burst: spread it over real time. Pacing a real-time stream is a wait for the
            # clock, not for an event.
            await asyncio.sleep(self._next_due - now)
        self._next_due += AUDIO_FRAME_SECONDS

    async def _send_slot(self) -> None:
        index, talkspurt = self._timeline.next(self._clock.now())
        timestamp = (self._origin + index * RTP_TICKS_PER_FRAME) & 0xFFFFFFFF
        event = self._tones.next_slot(RTP_TICKS_PER_FRAME) if self._tones.busy else None
        if event is None:
            self._catch_up += self._standing.observe(len(self._ring))
        frame = self._ring.pop()
        if event is not None:
            self._catch_up = 0  # a tone holds its slots in real time; its frames are replaced
            if frame is not None:
                self.stats.replaced_by_dtmf += 1
            if event.first:
                self._event_timestamp = timestamp
            assert self._dtmf_pt is not None
            for payload in event.payloads:
                await self._send(self._dtmf_pt, event.marker, self._event_timestamp, payload)
                self.stats.dtmf_packets += 1
            return
        if frame is None:
            return  # a gap slot between tones with nothing to say
        try:
            payloads = await self._media_loop.run_in_executor(
                self._executor, self._encoder.encode, frame.pcm
            )
        except Exception as exc:  # libopus refused a frame: lose that frame, keep the stream
            self.stats.encode_errors += 1
            logger.debug("AudioSender x encode failed: %r", exc)
            return
        if talkspurt:
            self.stats.talkspurts += 1
        for payload in payloads:
            await self._send(self._opus_pt, talkspurt, timestamp, payload)
            self.stats.frames += 1

    async def _send(self, pt: int, marker: bool, timestamp: int, payload: bytes) -> None:
        transceiver = self._transceiver
        assert transceiver is not None
        sender = transceiver.sender
        packet = RtpPacket(
            payload_type=pt,
            marker=int(marker),
            sequence_number=self._seq,
            timestamp=timestamp,
            ssrc=sender._ssrc,
            payload=payload,
        )
        packet.extensions.mid = transceiver.mid
        self._seq = (self._seq + 1) & 0xFFFF
        await sender.transport._send_rtp(packet.serialize(self._map))
        self.stats.packets += 1
        # aiortc's sender reports read these (name-mangled) counters (RTCRtpSender._run_rtcp).
        counters: dict[str, int] = vars(sender)
        counters["_RTCRtpSender__ntp_timestamp"] = rtp_clock.current_ntp_time()
        counters["_RTCRtpSender__rtp_timestamp"] = timestamp
        counters["_RTCRtpSender__octet_count"] += len(payload)
        counters["_RTCRtpSender__packet_count"] += 1
