"""Scripted meeting participants: who they are, when they talk, what camera and screen they show."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emulator.sources import AudioSource, LiveFeed, source_for

Talk = tuple[tuple[float, float], ...]
IDENTITY_KINDS = ("user", "guest", "phone")


@dataclass
class ParticipantScript:
    """Who joins the emulated meeting and what they do on the media link.

    talk: talk spurts as (start, end) seconds from the link's media start, start inclusive, end
    exclusive; None talks the whole time, () never. Outside its spurts a participant sends
    silence and is not audible (no CSRC, no unmixed stream). voice: what the microphone plays:
    None (the seeded voice-like signal, emulator/signal.py), "silence", or a WAV file path
    (relative to voice_base); it runs on whether or not the participant is talking, so a spurt
    cuts a window out of it. live: a live microphone (the browser join page) instead: audible
    whenever it carries sound, whatever `talk` says.
    identity_kind: how the roster shows them (identitySet.user, .guest or .phone; a phone's
    user_id is its number, e.g. "+14255550100").
    video_msi / camera: the MSI of its camera's video stream (None: camera off) and the camera's
    largest resolution; screen_msi: the MSI of its screen share (videoBasedScreenSharing).
    joins_at / leaves_at: seconds from the bot call's media start (0: there from the start;
    None: never leaves); later joins and leaves update the roster and the media as they happen.
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
    identity_kind: str = "user"
    voice: str | None = None
    voice_base: Path | None = None
    live: LiveFeed | None = None
    joins_at: float = 0.0
    leaves_at: float | None = None

    def talking(self, media_seconds: float) -> bool:
        """Does the participant talk at this time (seconds from the link's media start)?"""
        if self.talk is None:
            return True
        return any(start <= media_seconds < end for start, end in self.talk)

    def audio_source(self) -> AudioSource:
        """A fresh microphone for one link (sources keep their own read position)."""
        if self.live is not None:
            return self.live.subscribe()
        return source_for(self.voice, self.seed, self.voice_base)

    def identity(self, tenant_id: str | None = None) -> dict[str, Any]:
        """The identitySet entry the roster shows (https://learn.microsoft.com/en-us/graph/api/resources/identityset)."""
        entry: dict[str, Any] = {"id": self.user_id, "displayName": self.display_name}
        if self.identity_kind == "user" and tenant_id is not None:
            entry["tenantId"] = tenant_id
        return {self.identity_kind: entry}


@dataclass
class MeetingEvent:
    """Something a participant does at a time on the meeting's timeline (seconds from the bot
    call's media start): mute, unmute, cameraOn, cameraOff, shareStart, shareStop."""

    at: float
    participant_id: str
    action: str


@dataclass
class Meeting:
    thread_id: str
    organizer_id: str
    tenant_id: str
    participants: list[ParticipantScript] = field(default_factory=list)
    # joinMeetingIdMeetingInfo {joinMeetingId, passcode} (GDC meetinginfo); None: not offered.
    join_meeting_id: str | None = None
    passcode: str | None = None
    events: list[MeetingEvent] = field(default_factory=list)
    subject: str | None = None


@dataclass
class IncomingCall:
    """A call to the bot, rung `at` seconds after ring_incoming starts."""

    at: float
    caller: ParticipantScript
    policy_recording: bool = False
    app_id: str | None = None
    # Policy-based recording: others in the recorded group, joining at their joins_at (seconds
    # from the call's established); beyond the bot's participantCapacity each rings a new call.
    group: list[ParticipantScript] = field(default_factory=list)


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
