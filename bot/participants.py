"""A call's roster (https://learn.microsoft.com/en-us/graph/api/resources/participant) and
what the bot can do to a participant.

Default mode: a roster notification carries the whole roster, so it replaces what we had and the
difference is who joined and who left. Delta mode (callOptions.isDeltaRosterEnabled): it carries
only changes since the last one; a participant with a `removedState` left; a delta whose sequence
number is not newer than the last applied one is stale and ignored.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol

from bot.notifications import RosterChanged
from bot.operations import Operation
from bot.resources import (
    LargeGalleryView,
    MediaStream,
    application_type,
    canonical_id,
    large_gallery_view,
    media_streams,
)
from media.control import MAX_MSI

logger = logging.getLogger(__name__)

DEPARTED_MEMORY = 4096  # participants remembered as departed, per call


@dataclass(frozen=True, slots=True)
class RosterUpdate:
    added: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.updated or self.removed)


class ParticipantCall(Protocol):
    """What a participant needs from its call (bot.call.Call is one): Graph requests under the
    call's URL. A Protocol, so that this module never imports bot/call.py, which imports it."""

    async def operation(self, path: str, body: dict[str, Any]) -> Operation:
        """POST an action under the call's URL that returns a commsOperation, tracked."""
        ...

    async def request(self, method: str, path: str = "") -> dict[str, Any]:
        """Send a request under the call's URL; the answer's JSON."""
        ...


class Participant:
    def __init__(self, call: ParticipantCall, resource: dict[str, Any]) -> None:
        self._call = call
        self.id = canonical_id(resource["id"])
        self.resource = resource

    @property
    def identity(self) -> dict[str, Any]:
        info = self.resource.get("info") or {}
        identity = info.get("identity") if isinstance(info, dict) else None
        return identity if isinstance(identity, dict) else {}

    @property
    def display_name(self) -> str:
        for kind in ("user", "guest", "phone", "application", "applicationInstance"):
            ident = self.identity.get(kind)
            if isinstance(ident, dict) and ident.get("displayName"):
                return str(ident["displayName"])
        return ""

    @property
    def is_muted(self) -> bool:
        return bool(self.resource.get("isMuted"))

    @property
    def is_in_lobby(self) -> bool:
        """participant.isInLobby (https://learn.microsoft.com/en-us/graph/api/resources/participant)."""
        return self.resource.get("isInLobby") is True

    @property
    def recording_info(self) -> dict[str, Any] | None:
        """recordingInfo {initiator, recordingStatus}
        (https://learn.microsoft.com/en-us/graph/api/resources/recordinginfo)."""
        info = self.resource.get("recordingInfo")
        return info if isinstance(info, dict) else None

    @property
    def recording_status(self) -> str | None:
        """notRecording, recording or failed, when the roster says."""
        status = (self.recording_info or {}).get("recordingStatus")
        return status if isinstance(status, str) else None

    @property
    def media_streams(self) -> tuple[MediaStream, ...]:
        return media_streams(self.resource.get("mediaStreams"), parse_msi)

    @property
    def is_sharing_screen(self) -> bool:
        """Its videoBasedScreenSharing stream sends: it shares its screen (VBSS)."""
        return any(
            s.media_type == "videoBasedScreenSharing" and s.sends for s in self.media_streams
        )

    @property
    def is_large_gallery(self) -> bool:
        """The large-gallery participant: ApplicationType LargeGallery-V2, a sendReceive video
        stream and paging metadata, the three marks
        https://learn.microsoft.com/en-us/graph/cloud-communications-identifylargegalleryview
        gives (a second LargeGallery-V2 participant, receive-only, is not the view)."""
        return (
            application_type(self.identity) == "LargeGallery-V2"
            and any(
                s.media_type == "video" and s.direction == "sendReceive" for s in self.media_streams
            )
            and self.large_gallery_view is not None
        )

    @property
    def large_gallery_view(self) -> LargeGalleryView | None:
        video = next((s.source_id for s in self.media_streams if s.media_type == "video"), None)
        return large_gallery_view(self.resource.get("metadata"), video)

    def msis(self, media_type: str = "audio") -> list[int]:
        """Media source ids of this participant's streams of one type (mediaStreams.sourceId)."""
        return [
            s.source_id
            for s in self.media_streams
            if s.media_type == media_type and s.source_id is not None
        ]

    async def mute(self, client_context: str | None = None) -> Operation:
        """POST .../participants/{id}/mute (https://learn.microsoft.com/en-us/graph/api/participant-mute)."""
        return await self._call.operation(f"/participants/{self.id}/mute", _context(client_context))

    async def remove(self) -> None:
        """DELETE .../participants/{id} (needs tenant admin consent,
        https://learn.microsoft.com/en-us/graph/api/participant-delete)."""
        await self._call.request("DELETE", f"/participants/{self.id}")

    def __repr__(self) -> str:
        return f"Participant({self.id} {self.display_name!r})"


@dataclass
class Roster:
    """A call's participants as the roster notifications and reads left them.

    Nothing stale is applied: a delta whose `sequenceNumber` is not newer than the last applied
    one, or an entry whose `rosterSequenceNumber` is older than what we hold for that
    participant (or than when they left). Graph
    does not promise in-order delivery, so these arrive after a reorder.
    A delta after a gap in `sequenceNumber` (one was lost) is applied and sets `resync_wanted`:
    the owner then reads the whole roster back (GET .../participants) and `resync`s from it.
    """

    call_id: str = ""
    participants: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_sequence: int | None = None  # of whole delta notifications
    participant_sequence: dict[str, int] = field(default_factory=dict)
    # Who left, at which rosterSequenceNumber: a late entry from before they left stays out.
    departed: OrderedDict[str, int] = field(default_factory=OrderedDict)
    high_water: int = 0  # the highest rosterSequenceNumber applied
    stale_ignored: int = 0
    gaps: int = 0
    resyncs: int = 0
    resync_wanted: bool = False

    def apply(self, change: RosterChanged, delta: bool) -> RosterUpdate:
        entries = {
            canonical_id(p["id"]): p for p in change.participants if isinstance(p.get("id"), str)
        }
        if change.sequence_number is not None:
            number, last = change.sequence_number, self.last_sequence
            if last is not None and number <= last:
                self.stale_ignored += 1
                logger.info(
                    "Call(%s) ignores stale roster delta %d (applied %d)",
                    self.call_id,
                    number,
                    last,
                    extra={"call_id": self.call_id},
                )
                return RosterUpdate()
            # The first delta after joining is 1 (deltaParticipants.sequenceNumber "identifies
            # the notification order"); anything else means one or more were lost.
            expected = 1 if last is None else last + 1
            if number != expected:
                self.gaps += 1
                self.resync_wanted = True
                logger.info(
                    "Call(%s) roster delta %d after %s: %d lost, resyncing",
                    self.call_id,
                    number,
                    last,
                    number - expected,
                    extra={"call_id": self.call_id},
                )
            self.last_sequence = number
        if change.change_type == "deleted":
            entries = {pid: p for pid, p in entries.items() if not self._stale(pid, p, delta)}
            gone = tuple(pid for pid in entries if pid in self.participants)
            for pid in gone:
                self._depart(pid, _number(entries[pid]))
            return RosterUpdate(removed=gone)
        if not delta:
            return self._replace(entries, whole_roster_notification=True)
        entries = {pid: p for pid, p in entries.items() if not self._stale(pid, p, True)}
        removed = tuple(
            pid for pid, p in entries.items() if p.get("removedState") and pid in self.participants
        )
        for pid in removed:
            self._depart(pid, _number(entries[pid]))
        entries = {pid: p for pid, p in entries.items() if not p.get("removedState")}
        return self._merge(entries, removed)

    def resync(self, entries: list[dict[str, Any]]) -> RosterUpdate:
        """The whole roster as GET .../participants returned it. Authoritative, except for what
        notifications applied since told us more recently (a higher rosterSequenceNumber)."""
        self.resyncs += 1
        self.resync_wanted = False
        by_id = {canonical_id(p["id"]): p for p in entries if isinstance(p.get("id"), str)}
        return self._replace(by_id, whole_roster_notification=False)

    def _replace(
        self, entries: dict[str, dict[str, Any]], whole_roster_notification: bool
    ) -> RosterUpdate:
        """A whole roster: authoritative for who is in the call. Each entry's
        rosterSequenceNumber is when that participant last changed
        (https://learn.microsoft.com/en-us/graph/api/resources/participant), so a roster
        sent after someone left lists only older numbers and cannot be told from a late one by
        its numbers: membership follows the newest whole roster to arrive (delta rosters are the
        reorder-safe mode). Entries older than what we hold are still not applied, and who left
        stays out of a late roster that lists them from before they left."""
        numbers = [n for n in (_number(p) for p in entries.values()) if n is not None]
        as_of = max(numbers) if numbers else None
        listed = set(entries)  # a stale entry still says they are there: they are not removed
        entries = {pid: p for pid, p in entries.items() if not self._stale(pid, p, False)}
        removed = tuple(pid for pid in self.participants if pid not in listed)
        for pid in removed:
            held = self.participant_sequence.get(pid)
            known = [n for n in (held, as_of) if n is not None]
            self._depart(pid, max(known) if known else None)
        return self._merge(entries, removed)

    def _merge(self, entries: dict[str, dict[str, Any]], removed: tuple[str, ...]) -> RosterUpdate:
        added = tuple(pid for pid in entries if pid not in self.participants)
        updated = tuple(
            pid
            for pid, p in entries.items()
            if pid in self.participants and self.participants[pid] != p
        )
        self.participants.update(entries)
        return RosterUpdate(added, updated, removed)

    def _stale(self, pid: str, participant: dict[str, Any], delta: bool) -> bool:
        """An entry older than what we hold for that participant, or from before they left. A
        delta entry is a change, so an equal number is a repeat; a whole roster repeats the
        unchanged entries with their numbers, so there only an older number is stale."""
        number = _number(participant)
        if number is None:
            return False
        left = self.departed.get(pid)
        last = self.participant_sequence.get(pid)
        if (left is not None and number <= left) or (
            last is not None and (number <= last if delta else number < last)
        ):
            self.stale_ignored += 1
            return True
        self.participant_sequence[pid] = number
        self.high_water = max(self.high_water, number)
        self.departed.pop(pid, None)  # back after leaving, with a newer number
        return False

    def _depart(self, pid: str, number: int | None) -> None:
        self.participants.pop(pid, None)
        self.participant_sequence.pop(pid, None)
        if number is not None:
            self.high_water = max(self.high_water, number)
            self.departed[pid] = number
            self.departed.move_to_end(pid)
            while len(self.departed) > DEPARTED_MEMORY:
                self.departed.popitem(last=False)


def parse_msi(value: object) -> int | None:
    """A mediaStream's sourceId as an MSI, or None: the roster sends it as a string of digits
    (https://learn.microsoft.com/en-us/graph/api/resources/mediastream), and an MSI is the
    RTP CSRC it appears as, 32 bits (RFC 3550 section 5.1). Only ASCII digits: str.isdigit()
    also takes "²" and other Unicode digits, which int() then refuses."""
    if type(value) is int:
        return value if 0 <= value <= MAX_MSI else None
    if not isinstance(value, str) or not 0 < len(value) <= len(str(MAX_MSI)):
        return None
    if not (value.isascii() and value.isdigit()):
        return None
    msi = int(value)
    return msi if msi <= MAX_MSI else None


def _number(participant: dict[str, Any]) -> int | None:
    number = participant.get("rosterSequenceNumber")
    return number if isinstance(number, int) and not isinstance(number, bool) else None


def _context(client_context: str | None) -> dict[str, Any]:
    if client_context is not None and len(client_context) > 256:
        raise ValueError("clientContext is at most 256 characters (Graph)")
    return {"clientContext": client_context} if client_context is not None else {}


def describe_identity(identity: Any) -> str:
    """An identitySet as a log line names it: `user Tess Tester (id)`, or `unknown`."""
    if isinstance(identity, dict):
        for kind in ("user", "guest", "phone", "application", "applicationInstance"):
            ident = identity.get(kind)
            if isinstance(ident, dict):
                name, ident_id = ident.get("displayName"), ident.get("id")
                parts = [kind, str(name)] if name else [kind]
                if ident_id:
                    parts.append(f"({ident_id})")
                return " ".join(parts)
    return "unknown"
