"""What a call's notifications say beyond its state, and the events their changes raise:
content-sharing sessions, the lobby, participants' recording status, who shares the screen,
the large-gallery participant and the call's media state (docs/signaling.md, Events).

Each is read from the resources as they stand (accessors on Call and Participant); this module
compares a snapshot taken before a notification is applied with one taken after it, so an
event fires once per change, never for a repeat.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bot.notifications import ContentSharingChanged
from bot.resources import canonical_id

if TYPE_CHECKING:
    from bot.call import Call
    from bot.participants import Participant


@dataclass(frozen=True, slots=True)
class ContentSharingUpdate:
    """The `content_sharing` event's argument: sessions that started, changed and ended with
    one notification, and who shares the screen now (the participant whose
    videoBasedScreenSharing stream sends; contentSharingSession itself carries only an id,
    https://learn.microsoft.com/en-us/graph/api/resources/contentsharingsession)."""

    started: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    ended: tuple[str, ...] = ()
    sharer: Participant | None = None

    def __bool__(self) -> bool:
        return bool(self.started or self.updated or self.ended)


def apply_content_sharing(call: Call, note: ContentSharingChanged) -> ContentSharingUpdate:
    """`created`/`updated` add or change the listed sessions, `deleted` ends them (all of them
    when a collection URL is deleted with no body)."""
    sessions = call.content_sharing
    listed = {canonical_id(s["id"]): s for s in note.sessions if isinstance(s.get("id"), str)}
    if note.change_type == "deleted":
        gone = tuple(sid for sid in (listed or list(sessions)) if sid in sessions)
        for sid in gone:
            del sessions[sid]
        return ContentSharingUpdate(ended=gone, sharer=call.screen_sharer)
    started = tuple(sid for sid in listed if sid not in sessions)
    updated = tuple(sid for sid in listed if sid in sessions and sessions[sid] != listed[sid])
    for sid, session in listed.items():
        sessions[sid] = session
    return ContentSharingUpdate(started, updated, sharer=call.screen_sharer)


@dataclass(frozen=True, slots=True)
class Facets:
    """What the roster and the call resource say, at one moment."""

    participants: dict[str, Participant]
    lobby: frozenset[str]
    recording: dict[str, str | None]
    sharer: str | None
    large_gallery: str | None
    media_state: dict[str, str]


def facets(call: Call, roster: bool = True) -> Facets:
    """roster=False: only the call's own facets (a call notification changes no participant,
    and a large meeting's roster is not worth reading for it)."""
    if not roster:
        return Facets({}, frozenset(), {}, None, None, call.media_state)
    people = dict(call.participants.items())
    sharer = call.screen_sharer
    gallery = call.large_gallery
    return Facets(
        participants=people,
        lobby=frozenset(pid for pid, p in people.items() if p.is_in_lobby),
        recording={pid: p.recording_status for pid, p in people.items()},
        sharer=sharer.id if sharer is not None else None,
        large_gallery=gallery.id if gallery is not None else None,
        media_state=call.media_state,
    )


def changes(call: Call, before: Facets, after: Facets) -> list[tuple[str, tuple[Any, ...]]]:
    """The events, in a stable order, for what changed between two snapshots of one call."""
    events: list[tuple[str, tuple[Any, ...]]] = []

    def person(pid: str) -> Participant | None:
        return after.participants.get(pid) or before.participants.get(pid)

    # Someone who leaves the call from the lobby has left the lobby too.
    for pid in sorted(before.lobby ^ after.lobby):
        events.append(("lobby", (call, person(pid), pid in after.lobby)))
    # A participant nobody said anything about is not recording (recordingInfo's default).
    for pid in sorted(after.recording):
        now = after.recording[pid] or "notRecording"
        if now != (before.recording.get(pid) or "notRecording"):
            participant = after.participants[pid]
            events.append(
                ("participant_recording", (call, participant, participant.recording_info))
            )
    if after.sharer != before.sharer:
        events.append(("screen_sharing", (call, person(after.sharer) if after.sharer else None)))
    if after.large_gallery != before.large_gallery:
        gallery = person(after.large_gallery) if after.large_gallery else None
        events.append(("large_gallery", (call, gallery)))
    if after.media_state != before.media_state and after.media_state:
        events.append(("media_state", (call, after.media_state)))
    return events
