"""aiortc glue: our audio receive path on a hooked RTCRtpReceiver (sending: media/sender.py).

aiortc keeps ICE, DTLS, SRTP and SDP. Its stock audio receive path adds a fixed 80 ms jitter
prefetch, drops CSRCs and queues decoded frames without bound (aiortc/src/aiortc/rtcrtpreceiver.py
and jitterbuffer.py), so the receiver's `_handle_rtp_packet` is replaced on the instance
and every decrypted packet comes to AudioReceiver instead. tests/test_aiortc_internals.py fails
loudly if the internals this relies on change.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import av
import numpy as np
from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection
from aiortc.rtcrtpreceiver import RTCRtpReceiver, StreamStatistics
from aiortc.rtp import RtpPacket

from media.clock import TICKS_PER_SECOND, Clock, to_ticks
from media.codec import OPUS_RTP_RATE_HZ, OpusDecoder
from media.dtmf import DtmfError, ToneDetector
from media.frames import AUDIO_FRAME_SAMPLES, AUDIO_FRAME_SECONDS, AudioFrame, Pcm, silence
from media.jitter import JitterBuffer, JitterStats, Release
from media.opus import has_fec

logger = logging.getLogger(__name__)

TICKS_PER_FRAME = round(TICKS_PER_SECOND * AUDIO_FRAME_SECONDS)
# A timer that fires this late means the loop was stalled (GC, CPU): packets that arrived
# meanwhile are still queued, and a loop runs due timers before the I/O behind them, so it looks
# again after one round of I/O before giving a slot up.
STALL_SECONDS = 0.010
RECHECK_SECONDS = 0.002


class FrameSink(Protocol):
    def push(self, item: AudioFrame) -> None: ...


@dataclass(slots=True)
class ReceiveStats:
    packets: int = 0
    frames: int = 0
    concealed: int = 0
    late_or_duplicate: int = 0
    decode_errors: int = 0
    empty: int = 0
    stream_resets: int = 0
    dtmf_packets: int = 0
    tones: int = 0
    recovered: int = 0  # lost frames rebuilt from the next packet's in-band FEC


class AudioReceiver:
    """Turns decrypted Opus RTP packets into 20 ms 16 kHz frames tagged with their CSRCs.

    Runs inline in aiortc's DTLS receive task, so it does a bounded amount of work per packet and
    never awaits: jitter buffer (media/jitter.py), decode (~30 us) and resample (~12 us) per
    packet, measured on a 2-core machine. A lost packet's slot is concealed by the decoder once
    the buffer's wait is over; a loop timer fires then, so concealment is on time even if no
    packet follows. A continuous stream (mixed audio) keeps delivering a frame per 20 ms when
    packets stop coming (concealed, then silent frames flagged `concealed`), so the bot's 20 ms
    cadence survives a blackout; when they come back late for good (the delay rose), it plays
    them from there on (`jitter.reanchors`).
    """

    def __init__(
        self,
        ring: FrameSink,
        clock: Clock,
        on_packet: Callable[[RtpPacket], None] | None = None,
        on_tone: Callable[[str], None] | None = None,
        continuous: bool = False,
    ) -> None:
        """on_packet: sees every packet first (RTCP receiver statistics). on_tone: a DTMF tone
        arrived (once per RFC 4733 event). continuous: the sender never pauses by itself (mixed
        meeting audio), so a missing packet is played out on time (media/jitter.py)."""
        self._ring = ring
        self.on_packet = on_packet
        self.on_tone = on_tone
        self.dtmf_pt: int | None = None  # the negotiated telephone-event payload type
        self._tones = ToneDetector()
        self.rtcp_streams: dict[int, StreamStatistics] = {}
        self._last_capture = 0
        self._clock = clock
        self._decoder = OpusDecoder()
        self._continuous = continuous
        self._jitter = JitterBuffer(continuous=continuous)
        self._dropped_seen = 0  # late + duplicates of self._jitter already in our stats
        self._pending = np.empty(0, dtype=np.int16)
        self._ssrc: int | None = None
        self._last_payload: bytes | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_deadline = 0.0  # on self._clock
        self._rechecking = False
        self._closed = False
        self._sequence = 0
        self.stats = ReceiveStats()

    @property
    def jitter(self) -> JitterStats:
        return self._jitter.stats

    @property
    def deadline(self) -> float | None:
        """When expire() is due on the receiver's clock (what its loop timer waits for), or
        None: tests on an injected clock call expire() then themselves."""
        return self._jitter.deadline

    @property
    def packets_lost(self) -> int:
        """RFC 3550 cumulative loss over this stream's senders (what our RRs report)."""
        return sum(s.packets_lost for s in self.rtcp_streams.values())

    async def handle_rtp(self, packet: RtpPacket, arrival_time_ms: int = 0) -> None:
        """Replacement for RTCRtpReceiver._handle_rtp_packet (same signature, awaited inline)."""
        if self._closed:
            return
        self.stats.packets += 1
        if self.on_packet is not None:
            self.on_packet(packet)
        if self._ssrc is not None and packet.ssrc != self._ssrc:
            self.stats.stream_resets += 1
            # A new sender: a new sequence space.
            self._jitter = JitterBuffer(continuous=self._continuous)
            self._dropped_seen = 0
        self._ssrc = packet.ssrc
        now = self._clock.now()
        releases = self._jitter.expire(now)
        if packet.payload_type == self.dtmf_pt:
            self._tone(packet)
            # The event holds audio slots in the stream's sequence space: nothing to play.
            releases += self._jitter.add(
                packet.sequence_number, packet.timestamp, b"", (), now, audio=False
            )
        else:
            capture = getattr(packet.extensions, "capture_ticks", None) or 0
            releases += self._jitter.add(
                packet.sequence_number,
                packet.timestamp,
                packet.payload,
                tuple(packet.csrc),
                now,
                capture,
            )
        self._count_dropped()
        self._play(releases)
        self._schedule()

    def _count_dropped(self) -> None:
        """Late and duplicate packets the jitter buffer dropped since the last look. A late
        packet of a continuous stream is counted when the buffer plays on without it, which may
        be on its timer (media/jitter.py holds it in case the delay rose for good)."""
        dropped = self._jitter.stats.late + self._jitter.stats.duplicates
        self.stats.late_or_duplicate += dropped - self._dropped_seen
        self._dropped_seen = dropped

    def _tone(self, packet: RtpPacket) -> None:
        self.stats.dtmf_packets += 1
        try:
            tone = self._tones.add(packet.timestamp, packet.payload)
        except DtmfError:
            self.stats.decode_errors += 1
            return
        if tone is not None:
            self.stats.tones += 1
            if self.on_tone is not None:
                self.on_tone(tone)

    def _on_timer(self) -> None:
        self._timer = None
        now = self._clock.now()
        if now - self._timer_deadline > STALL_SECONDS and not self._rechecking:
            self._rechecking = True
            self._arm(now + RECHECK_SECONDS)
            return
        self._rechecking = False
        self.expire()

    def expire(self) -> None:
        """The jitter buffer's wait for a missing packet is over (its timer, or a test)."""
        self._timer = None
        releases = self._jitter.expire(self._clock.now())
        self._count_dropped()
        self._play(releases)
        self._schedule()

    def _schedule(self) -> None:
        deadline = self._jitter.deadline
        if deadline is None or self._closed:
            return  # a timer still armed finds nothing to do
        if self._timer is not None and self._timer_deadline <= deadline:
            # It fires early, finds nothing due and re-arms: a continuous stream's deadline
            # moves on with every packet, and a timer per packet would cost more than this.
            return
        self._arm(deadline)

    def _arm(self, deadline: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        delay = max(0.0, deadline - self._clock.now())
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(loop.time() + delay, self._on_timer)
        self._timer_deadline = deadline

    def close(self) -> None:
        """No more frames: the timer stops, and packets still arriving are ignored."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _play(self, releases: list[Release]) -> None:
        for i, release in enumerate(releases):
            if release.silent:
                # Nothing arrived for a while on a continuous stream: silence keeps the cadence.
                self._push([silence()], (), True, self._next_capture())
                continue
            if release.payload == b"":
                # Padding-only RTP is legal, and a telephone event holds slots too: the slot
                # passes in silence (an empty packet given to libopus would drain the decoder).
                self.stats.empty += 1
                continue
            try:
                if release.payload is None:
                    following = releases[i + 1].payload if i + 1 < len(releases) else None
                    if following and has_fec(following):
                        # The next packet is here and carries this frame's in-band FEC
                        # (RFC 6716 2.1.7): better than concealment (13 vs 6 dB SNR, E3).
                        chunks = self._decoder.recover(following)
                        self.stats.recovered += 1
                    else:
                        chunks = self._decoder.conceal(self._last_payload)
                else:
                    chunks = self._decoder.decode(release.payload)
                    self._last_payload = release.payload
            except (av.FFmpegError, ValueError) as exc:  # OpusError is a ValueError
                if isinstance(exc, EOFError):
                    self._decoder = OpusDecoder()  # drained: only a fresh decoder decodes again
                self.stats.decode_errors += 1
                logger.debug("AudioReceiver x undecodable packet %d: %s", release.seq, exc)
                continue
            concealed = release.payload is None
            capture = self._next_capture() if concealed else release.capture_ticks
            self._push(chunks, release.csrc, concealed, capture)

    def _next_capture(self) -> int:
        """A made-up frame's capture time: the previous frame's plus 20 ms (0 if unknown)."""
        return self._last_capture + TICKS_PER_FRAME if self._last_capture else 0

    def _push(
        self, chunks: list[Pcm], speakers: tuple[int, ...], concealed: bool, capture: int
    ) -> None:
        self._last_capture = capture
        if chunks:
            pending = np.concatenate([self._pending, *chunks]).astype(np.int16, copy=False)
            if self.stats.frames == 0 and pending.shape[0] % AUDIO_FRAME_SAMPLES:
                # The resampler holds back a few samples. Without this one-off pad, frame k would
                # complete only when packet k+1 arrives: 20 ms of standing delay for ~1 ms of
                # filter history.
                short = AUDIO_FRAME_SAMPLES - pending.shape[0] % AUDIO_FRAME_SAMPLES
                pending = np.concatenate([np.zeros(short, np.int16), pending])
            self._pending = pending
        while self._pending.shape[0] >= AUDIO_FRAME_SAMPLES:
            pcm = self._pending[:AUDIO_FRAME_SAMPLES].copy()
            self._pending = self._pending[AUDIO_FRAME_SAMPLES:]
            self._sequence += 1
            self.stats.frames += 1
            if concealed:
                self.stats.concealed += 1
            self._ring.push(
                AudioFrame(
                    pcm=pcm,
                    timestamp=to_ticks(self._clock.now()),
                    active_speakers=speakers,
                    is_silence=not speakers,
                    sequence=self._sequence,
                    concealed=concealed,
                    original_sender_timestamp=capture,
                )
            )


def receiver_statistics(rtp_receiver: RTCRtpReceiver) -> Callable[[RtpPacket], None]:
    """Feed aiortc's own per-SSRC statistics, which its RTCP loop turns into receiver reports.

    Bypassing the stock _handle_rtp_packet would otherwise silence RTCP RR: the sender would get
    no loss, jitter or round-trip figures (the stock one feeds them, aiortc/src/aiortc/
    rtcrtpreceiver.py). About 2 us a packet.
    """
    streams: dict[int, StreamStatistics] = rtp_receiver._RTCRtpReceiver__remote_streams  # type: ignore[attr-defined]

    def record(packet: RtpPacket) -> None:
        stream = streams.get(packet.ssrc)
        if stream is None:
            stream = streams[packet.ssrc] = StreamStatistics(OPUS_RTP_RATE_HZ)
        stream.add(packet)

    return record


def new_peer_connection() -> RTCPeerConnection:
    # iceServers=[]: otherwise aiortc falls back to a public STUN server (stun.l.google.com).
    # max-bundle: every m-line on one transport. With aiortc's default (balanced) the later
    # video m-lines keep transports that BUNDLE then stops, and never receive.
    return RTCPeerConnection(
        RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
    )


def hook_receiver(rtp_receiver: RTCRtpReceiver, receiver: AudioReceiver) -> None:
    """Route every decrypted packet of this m-line to our receiver.

    Safe right after setRemoteDescription: receive() and RTP registration happen later, once
    DTLS connects (RTCRtpReceiver.receive in aiortc/src/aiortc/rtcrtpreceiver.py).
    """
    rtp_receiver._handle_rtp_packet = receiver.handle_rtp  # type: ignore[method-assign]
    receiver.on_packet = receiver_statistics(rtp_receiver)
    receiver.rtcp_streams = rtp_receiver._RTCRtpReceiver__remote_streams  # type: ignore[attr-defined]
