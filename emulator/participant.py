"""Scripted meeting participants: who they are, when they talk, what camera and screen they show."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

Talk = tuple[tuple[float, float], ...]


@dataclass
class ParticipantScript:
    """Who joins the emulated meeting and what they do on the media link.

    talk: talk spurts as (start, end) seconds from the link's media start, start inclusive, end
    exclusive; None talks the whole time, () never. Outside its spurts a participant sends
    silence and is not audible (no CSRC, no unmixed stream). The voice is a seeded voice-like
    signal (emulator/signal.py), generated whether or not the participant is talking, so a spurt
    cuts a window out of the same signal.
    video_msi / camera: the MSI of its camera's video stream (None: camera off) and the camera's
    largest resolution; screen_msi: the MSI of its screen share (videoBasedScreenSharing).
    """

    display_name: str
    user_id: str
    msi: int  # media source id of the participant's audio stream (roster mediaStreams.sourceId)
    participant_id: str
    seed: int = 1
    talk: Talk | None = None
    video_msi: int | None = None
    camera: tuple[int, int] = (1280, 720)
    screen_msi: int | None = None

    def talking(self, media_seconds: float) -> bool:
        """Does the participant talk at this time (seconds from the link's media start)?"""
        if self.talk is None:
            return True
        return any(start <= media_seconds < end for start, end in self.talk)


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
