"""aiortc glue: our audio receive path on a hooked RTCRtpReceiver, and the send track.

aiortc keeps ICE, DTLS, SRTP and SDP. Its stock audio receive path adds a fixed 80 ms jitter
prefetch, drops CSRCs and queues decoded frames without bound (shared/reference/
aiortc-internals.md section 1), so the receiver's `_handle_rtp_packet` is replaced on the instance
and every decrypted packet comes to AudioReceiver instead. tests/test_aiortc_internals.py fails
loudly if the internals this relies on change.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpreceiver import RTCRtpReceiver, StreamStatistics
from aiortc.rtp import RtpPacket

from media.clock import Clock, to_ticks
from media.codec import OPUS_RTP_RATE_HZ, RTP_TICKS_PER_FRAME, OpusDecoder, OpusEncoder
from media.frames import AUDIO_FRAME_SAMPLES, AUDIO_FRAME_SECONDS, AudioFrame, Pcm
from media.jitter import JitterBuffer, JitterStats, Release
from media.network import NetworkSettings
from media.network import apply as apply_network
from media.ring import Ring

logger = logging.getLogger(__name__)

# A send-side allowance: RTP timestamps may lag real time by this many frames before they jump
# forward (a talkspurt gap), so steady 50 fps output stays contiguous despite scheduling jitter.
SEND_JITTER_ALLOWANCE_FRAMES = 3
OPUS_TIME_BASE = Fraction(1, 48_000)


@dataclass(slots=True)
class ReceiveStats:
    packets: int = 0
    frames: int = 0
    concealed: int = 0
    late_or_duplicate: int = 0
    decode_errors: int = 0
    empty: int = 0
    stream_resets: int = 0


class AudioReceiver:
    """Turns decrypted Opus RTP packets into 20 ms 16 kHz frames tagged with their CSRCs.

    Runs inline in aiortc's DTLS receive task, so it does a bounded amount of work per packet and
    never awaits: jitter buffer (media/jitter.py), decode (~30 us) and resample (~12 us) per
    perf-baseline.md. A lost packet's slot is concealed by the decoder once the buffer's wait is
    over; a loop timer fires then, so concealment is on time even if no packet follows.
    """

    def __init__(
        self,
        ring: Ring[AudioFrame],
        clock: Clock,
        on_packet: Callable[[RtpPacket], None] | None = None,
    ) -> None:
        """on_packet: sees every packet first (RTCP receiver statistics)."""
        self._ring = ring
        self.on_packet = on_packet
        self._clock = clock
        self._decoder = OpusDecoder()
        self._jitter = JitterBuffer()
        self._pending = np.empty(0, dtype=np.int16)
        self._ssrc: int | None = None
        self._last_payload: bytes | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._sequence = 0
        self.stats = ReceiveStats()

    @property
    def jitter(self) -> JitterStats:
        return self._jitter.stats

    async def handle_rtp(self, packet: RtpPacket, arrival_time_ms: int = 0) -> None:
        """Replacement for RTCRtpReceiver._handle_rtp_packet (same signature, awaited inline)."""
        self.stats.packets += 1
        if self.on_packet is not None:
            self.on_packet(packet)
        if self._ssrc is not None and packet.ssrc != self._ssrc:
            self.stats.stream_resets += 1
            self._jitter = JitterBuffer()  # a new sender: a new sequence space
        self._ssrc = packet.ssrc
        now = self._clock.now()
        before = self._jitter.stats.late + self._jitter.stats.duplicates
        releases = self._jitter.expire(now)
        releases += self._jitter.add(
            packet.sequence_number, packet.timestamp, packet.payload, tuple(packet.csrc), now
        )
        self.stats.late_or_duplicate += (
            self._jitter.stats.late + self._jitter.stats.duplicates - before
        )
        self._play(releases)
        self._schedule()

    def expire(self) -> None:
        """The jitter buffer's wait for a missing packet is over (its timer, or a test)."""
        self._timer = None
        self._play(self._jitter.expire(self._clock.now()))
        self._schedule()

    def _schedule(self) -> None:
        deadline = self._jitter.deadline
        if self._timer is not None and (deadline is None or self._timer.when() != deadline):
            self._timer.cancel()
            self._timer = None
        if deadline is not None and self._timer is None:
            delay = max(0.0, deadline - self._clock.now())
            loop = asyncio.get_running_loop()
            self._timer = loop.call_at(loop.time() + delay, self.expire)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _play(self, releases: list[Release]) -> None:
        for release in releases:
            if release.payload == b"":
                # Padding-only RTP is legal: its slot passes in silence (an empty packet given
                # to libopus would drain the decoder).
                self.stats.empty += 1
                continue
            try:
                if release.payload is None:
                    chunks = self._decoder.conceal(self._last_payload)
                else:
                    chunks = self._decoder.decode(release.payload)
                    self._last_payload = release.payload
            except (av.FFmpegError, ValueError) as exc:
                if isinstance(exc, EOFError):
                    self._decoder = OpusDecoder()  # drained: only a fresh decoder decodes again
                self.stats.decode_errors += 1
                logger.debug("AudioReceiver x undecodable packet %d: %s", release.seq, exc)
                continue
            self._push(chunks, release.csrc, concealed=release.payload is None)

    def _push(self, chunks: list[Pcm], speakers: tuple[int, ...], concealed: bool) -> None:
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
                )
            )


class SendTrack(MediaStreamTrack):
    """An aiortc audio track fed from the socket's send ring by the hot loop.

    It hands aiortc ready Opus packets (aiortc's pre-encoded path, aiortc-internals.md section 2)
    so the encoder is ours (media/codec.py) and runs on the codec executor, off the media loop.

    recv() waits for the next frame without polling: the hot loop's push wakes it through
    call_soon_threadsafe, but only while it is actually waiting (the `_armed` flag), so a busy
    stream costs no cross-thread wake-ups.

    RTP timestamps (via pts) stay contiguous while frames come at about real-time pace and jump
    forward after the application was quiet, so the far end's jitter buffer sees real time.
    """

    kind = "audio"

    def __init__(
        self,
        ring: Ring[AudioFrame],
        loop: asyncio.AbstractEventLoop,
        clock: Clock,
        executor: Executor | None = None,
    ) -> None:
        super().__init__()
        self._ring = ring
        self._media_loop = loop
        self._clock = clock
        self._executor = executor
        self._encoder = OpusEncoder()
        self._wake = asyncio.Event()
        self._armed = False
        self._start: float | None = None
        self._frame_index = 0
        self.frames_sent = 0
        ring.on_push = self._on_push

    def _on_push(self) -> None:
        if self._armed:
            self._armed = False
            self._media_loop.call_soon_threadsafe(self._wake.set)

    async def recv(self) -> av.Packet:
        while True:
            frame = await self._next_frame()
            payloads = await self._media_loop.run_in_executor(
                self._executor, self._encoder.encode, frame.pcm
            )
            if payloads:
                packet = av.Packet(payloads[0])
                packet.pts = self._next_index() * RTP_TICKS_PER_FRAME
                packet.time_base = OPUS_TIME_BASE
                self.frames_sent += 1
                return packet

    async def _next_frame(self) -> AudioFrame:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            frame = self._ring.pop()
            if frame is None:
                self._wake.clear()
                self._armed = True
                frame = self._ring.pop()  # a push between pop() and arming must not be lost
            if frame is not None:
                self._armed = False
                return frame
            await self._wake.wait()

    def _next_index(self) -> int:
        """The frame's slot on the RTP timeline: contiguous, or real time minus the allowance."""
        now = self._clock.now()
        if self._start is None:
            self._start = now
            index = 0
        else:
            real = int((now - self._start) / AUDIO_FRAME_SECONDS)
            index = max(self._frame_index + 1, real - SEND_JITTER_ALLOWANCE_FRAMES)
        self._frame_index = index
        return index

    def stop(self) -> None:
        super().stop()
        self._media_loop.call_soon_threadsafe(self._wake.set)


def receiver_statistics(rtp_receiver: RTCRtpReceiver) -> Callable[[RtpPacket], None]:
    """Feed aiortc's own per-SSRC statistics, which its RTCP loop turns into receiver reports.

    Bypassing the stock _handle_rtp_packet would otherwise silence RTCP RR: the sender would get
    no loss, jitter or round-trip figures (aiortc-internals.md section 5, E5). About 2 us a packet.
    """
    streams: dict[int, StreamStatistics] = rtp_receiver._RTCRtpReceiver__remote_streams  # type: ignore[attr-defined]

    def record(packet: RtpPacket) -> None:
        stream = streams.get(packet.ssrc)
        if stream is None:
            stream = streams[packet.ssrc] = StreamStatistics(OPUS_RTP_RATE_HZ)
        stream.add(packet)

    return record


def new_peer_connection() -> RTCPeerConnection:
    # iceServers=[]: otherwise aiortc falls back to a public STUN server (verified-facts.md).
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


async def answer_audio_offer(
    pc: RTCPeerConnection,
    offer_sdp: str,
    receiver: AudioReceiver,
    send_track: SendTrack,
    network: NetworkSettings | None = None,
) -> str:
    """Apply the MP's offer, hook the audio receiver, attach the send track; return the answer."""
    await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
    audio = [t for t in pc.getTransceivers() if t.kind == "audio"]
    if not audio:
        raise ValueError("the offer has no audio m-line")
    # Safe right after setRemoteDescription: receive() and RTP registration happen later, once
    # DTLS connects (aiortc-internals.md section 1, option A).
    rtp_receiver = audio[0].receiver
    rtp_receiver._handle_rtp_packet = receiver.handle_rtp  # type: ignore[method-assign]
    receiver.on_packet = receiver_statistics(rtp_receiver)
    pc.addTrack(send_track)
    if network is not None and network.changes_gathering:
        # Before the answer: that is when candidates are gathered (media/network.py).
        apply_network(pc, network)
    answer = await pc.createAnswer()
    await pc.setLocalDescription(answer)
    return pc.localDescription.sdp
