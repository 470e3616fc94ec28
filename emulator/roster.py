"""A call's participants and the roster notifications Graph sends about them.

Shapes follow https://learn.microsoft.com/en-us/graph/api/resources/participant and the
roster examples of https://learn.microsoft.com/en-us/graph/api/call-mute, .../participant-invite,
.../call-changescreensharingrole and
https://learn.microsoft.com/en-us/graph/cloud-communications-identifylargegalleryview.

Delta roster (callOptions.isDeltaRosterEnabled). https://learn.microsoft.com/en-us/graph/api/resources/deltaparticipants
documents a
`#microsoft.graph.deltaParticipants` entity, "published by communications servers as a
notification of participant changes since the last update", with `sequenceNumber` (Int64, "used
to identify the notification order") and a `participants` collection; resources/participant adds
`rosterSequenceNumber` ("the roster sequence number in which the participant was last updated")
and `removedState` {reason}. No doc shows a whole delta notification, so this emulator sends:
changeType "updated" on .../participants with resourceData one deltaParticipants entity
{sequenceNumber: n, participants: [only what changed in update n]}; each listed participant has
rosterSequenceNumber n, and a removed one carries removedState {reason}. The first delta after
the call is established lists everyone. resources/commsnotification allows resourceData to be
"an entity or a collection of entities", so one entity fits. Without delta roster, resourceData
is the whole roster as an array (the documented default), each entry still carrying
rosterSequenceNumber.
"""

from __future__ import annotations

import itertools
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from emulator.participant import ParticipantScript

LARGE_GALLERY = "LargeGallery-V2"  # identity.application.ApplicationType (identifylargegalleryview)
FIRST_GENERATED_MSI = 0x7000


def audio_stream(msi: int, direction: str = "sendReceive") -> dict[str, Any]:
    return media_stream("audio", "main-audio", msi, direction)


def media_stream(media_type: str, label: str, msi: int, direction: str) -> dict[str, Any]:
    return {
        "@odata.type": "#microsoft.graph.mediaStream",
        "mediaType": media_type,
        "label": label,
        "sourceId": str(msi),  # the MSI, as a string (resources/mediastream)
        "direction": direction,
        "serverMuted": False,
    }


@dataclass
class EmulatedParticipant:
    id: str
    identity: dict[str, Any]
    media_streams: list[dict[str, Any]] = field(default_factory=list)
    is_muted: bool = False
    metadata: str | None = None
    recording_info: dict[str, Any] | None = None
    roster_sequence_number: int = 0
    removed_reason: str | None = None
    script: ParticipantScript | None = None  # who speaks for this participant on the media link

    @property
    def user_id(self) -> str | None:
        for kind in ("user", "guest", "application", "applicationInstance", "phone"):
            value = self.identity.get(kind)
            if isinstance(value, dict) and isinstance(value.get("id"), str):
                return str(value["id"])
        return None

    def to_graph(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "@odata.type": "#microsoft.graph.participant",
            "id": self.id,
            "info": {
                "@odata.type": "#microsoft.graph.participantInfo",
                "identity": {"@odata.type": "#microsoft.graph.identitySet", **self.identity},
                "endpointType": "default",
                "participantId": self.id,
            },
            "mediaStreams": [dict(s) for s in self.media_streams],
            "isMuted": self.is_muted,
            "isInLobby": False,
            "rosterSequenceNumber": self.roster_sequence_number,
        }
        if self.metadata is not None:
            data["metadata"] = self.metadata
        if self.recording_info is not None:
            data["recordingInfo"] = self.recording_info
        if self.removed_reason is not None:
            data["removedState"] = {
                "@odata.type": "#microsoft.graph.removedState",
                "reason": self.removed_reason,
            }
        return data


def from_script(script: ParticipantScript) -> EmulatedParticipant:
    """A scripted participant's roster entry: its audio, and its camera and screen share when it
    has them, each with its own MSI. A camera that is on is a sendReceive main-video stream (as
    the large gallery entry below); a screen share is the sharer's sendOnly
    videoBasedScreenSharing stream labelled applicationsharing-video (the label real rosters show;
    a bot subscribes to the participant whose VBSS stream is sendOnly)."""
    streams = [audio_stream(script.msi)]
    if script.video_msi is not None:
        streams.append(camera_stream(script.video_msi))
    if script.screen_msi is not None:
        streams.append(screen_stream(script.screen_msi))
    return EmulatedParticipant(script.participant_id, script.identity(), streams, script=script)


def camera_stream(msi: int) -> dict[str, Any]:
    return media_stream("video", "main-video", msi, "sendReceive")


def screen_stream(msi: int) -> dict[str, Any]:
    return media_stream("videoBasedScreenSharing", "applicationsharing-video", msi, "sendOnly")


class Roster:
    """The participants of one call, with the roster sequence number and the delta mode."""

    def __init__(self, delta: bool = False) -> None:
        self.delta = delta
        self.sequence = 0
        self.participants: dict[str, EmulatedParticipant] = {}
        self._msis = itertools.count(FIRST_GENERATED_MSI)

    def next_msi(self) -> int:
        return next(self._msis)

    def add(self, participant: EmulatedParticipant) -> EmulatedParticipant:
        self.participants[participant.id] = participant
        return participant

    def add_identity(
        self, identity: dict[str, Any], tenant_id: str, talks: bool = True
    ) -> EmulatedParticipant:
        """Someone who joins from an invitation or a call target: a fresh id, MSI and script.
        talks: whether the script talks the whole time or stays silent."""
        identity = {k: v for k, v in identity.items() if not k.startswith("@") and v is not None}
        for value in identity.values():
            if isinstance(value, dict):
                value.setdefault("tenantId", tenant_id)
        msi = self.next_msi()
        participant = EmulatedParticipant(str(uuid.uuid4()), identity, [audio_stream(msi)])
        participant.script = ParticipantScript(
            display_name=_display_name(identity),
            user_id=participant.user_id or participant.id,
            msi=msi,
            participant_id=participant.id,
            seed=msi,
            talk=None if talks else (),
        )
        return self.add(participant)

    def add_large_gallery(self, app_id: str) -> EmulatedParticipant:
        """The large gallery view participant
        (https://learn.microsoft.com/en-us/graph/cloud-communications-identifylargegalleryview):
        ApplicationType LargeGallery-V2, receive-only audio, a sendReceive main video and paging
        metadata."""
        view_id = f"{uuid.uuid4()}/1"
        audio, video = self.next_msi(), self.next_msi()
        return self.add(
            EmulatedParticipant(
                str(uuid.uuid4()),
                {
                    "application": {
                        "id": app_id,
                        "identityProvider": "AAD",
                        "ApplicationType": LARGE_GALLERY,
                    }
                },
                [
                    audio_stream(audio, "receiveOnly"),
                    media_stream("video", "main-video", video, "sendReceive"),
                ],
                metadata=json.dumps(
                    {
                        "__platform": {"ui": {"hidden": True}},
                        "audienceView": {
                            "id": view_id,
                            "page": 1,
                            "status": "active",
                            "type": "lg",
                            "aspectRatio": "widescreen",
                        },
                    },
                    separators=(",", ":"),
                ),
            )
        )

    def remove(self, participant_id: str, reason: str) -> EmulatedParticipant | None:
        participant = self.participants.pop(participant_id, None)
        if participant is not None:
            participant.removed_reason = reason
        return participant

    def get(self, participant_id: str) -> EmulatedParticipant | None:
        return self.participants.get(participant_id)

    def snapshot(self) -> list[dict[str, Any]]:
        return [p.to_graph() for p in self.participants.values()]

    def update(self, changed: list[EmulatedParticipant]) -> Any:
        """Advance the sequence and return the resourceData of the roster notification."""
        self.sequence += 1
        for participant in changed:
            participant.roster_sequence_number = self.sequence
        if not self.delta:
            return self.snapshot()
        return {
            "@odata.type": "#microsoft.graph.deltaParticipants",
            "sequenceNumber": self.sequence,
            "participants": [p.to_graph() for p in changed],
        }


def _display_name(identity: dict[str, Any]) -> str:
    for value in identity.values():
        if isinstance(value, dict) and isinstance(value.get("displayName"), str):
            return str(value["displayName"])
    return "Invited participant"
