"""Scripted meeting participants and the aiortc tracks that carry their voices."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from fractions import Fraction

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from emulator.analysis import Recording
from emulator.codec import ParticipantEncoder
from emulator.signal import FRAME_SAMPLES, RATE_HZ, VoiceLikeSignal

FRAME_SECONDS = FRAME_SAMPLES / RATE_HZ
RTP_TICKS_PER_FRAME = 960  # Opus RTP runs a 48 kHz clock (RFC 7587 section 4.1)
RTP_TIME_BASE = Fraction(1, 48_000)


@dataclass
class ParticipantScript:
    """Who joins the emulated meeting and what they say (a seeded voice-like signal for now)."""

    display_name: str
    user_id: str
    msi: int  # media source id of the participant's audio stream (roster mediaStreams.sourceId)
    participant_id: str
    seed: int = 1


@dataclass
class Meeting:
    thread_id: str
    organizer_id: str
    tenant_id: str
    participants: list[ParticipantScript] = field(default_factory=list)
    # joinMeetingIdMeetingInfo {joinMeetingId, passcode} (GDC meetinginfo); None: not offered.
    join_meeting_id: str | None = None
    passcode: str | None = None


DEMO_MSI = 0x2A11
DEMO_THREAD_ID = "19:meeting_ZGVtby1tZWV0aW5n@thread.v2"


def demo_meeting(tenant_id: str) -> Meeting:
    """The meeting `make demo` and `python -m emulator serve` offer: one speaker, seeded voice."""
    return Meeting(
        thread_id=DEMO_THREAD_ID,
        organizer_id=str(uuid.UUID(int=0x0E6A)),
        tenant_id=tenant_id,
        participants=[
            ParticipantScript(
                display_name="Avery Speaker",
                user_id=str(uuid.UUID(int=0xA7E7)),
                msi=DEMO_MSI,
                participant_id=str(uuid.UUID(int=0x9A7)),
                seed=7,
            )
        ],
    )


class VoiceTrack(MediaStreamTrack):
    """A participant's microphone: one 20 ms Opus packet per 20 ms of the wall clock.

    Pacing a real-time source by the clock is the one place a sleep belongs: it is the source's
    rate, not a wait for some event. Every frame handed to aiortc is recorded with its time.
    """

    kind = "audio"

    def __init__(self, seed: int) -> None:
        super().__init__()
        self._signal = VoiceLikeSignal(seed)
        self._encoder = ParticipantEncoder()
        self._start: float | None = None
        self._index = 0
        self.sent = Recording()

    async def recv(self) -> av.Packet:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            now = time.monotonic()
            if self._start is None:
                self._start = now
            due = self._start + self._index * FRAME_SECONDS
            if due > now:
                await asyncio.sleep(due - now)
            pcm = self._signal.next_frame()
            payload = self._encoder.encode(pcm)
            index = self._index
            self._index += 1
            if payload is None:
                continue
            # Handed to aiortc pre-encoded: its pack() path takes the RTP timestamp from pts.
            packet = av.Packet(payload)
            packet.pts = index * RTP_TICKS_PER_FRAME
            packet.time_base = RTP_TIME_BASE
            self.sent.add(time.monotonic(), pcm)
            return packet
