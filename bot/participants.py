"""A call's roster (graph-comms.md section 1.5) and what the bot can do to a participant.

Default mode: a roster notification carries the whole roster, so it replaces what we had and the
difference is who joined and who left. Delta mode (callOptions.isDeltaRosterEnabled): it carries
only changes since the last one; a participant with a `removedState` left; a delta whose sequence
number is not newer than the last applied one is stale and ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bot.notifications import RosterChanged

if TYPE_CHECKING:
    from bot.call import Call
    from bot.operations import Operation


@dataclass(frozen=True, slots=True)
class RosterUpdate:
    added: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.updated or self.removed)


class Participant:
    def __init__(self, call: Call, resource: dict[str, Any]) -> None:
        self._call = call
        self.id = str(resource["id"])
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

    def msis(self, media_type: str = "audio") -> list[int]:
        """Media source ids of this participant's streams of one type (mediaStreams.sourceId)."""
        streams = self.resource.get("mediaStreams") or []
        return [
            int(s["sourceId"])
            for s in streams
            if isinstance(s, dict)
            and s.get("mediaType") == media_type
            and str(s.get("sourceId", "")).isdigit()
        ]

    async def mute(self, client_context: str | None = None) -> Operation:
        """POST .../participants/{id}/mute (participant-mute.md)."""
        return await self._call.operation(f"/participants/{self.id}/mute", _context(client_context))

    async def remove(self) -> None:
        """DELETE .../participants/{id} (participant-delete.md; needs tenant admin consent)."""
        await self._call.request("DELETE", f"/participants/{self.id}")

    def __repr__(self) -> str:
        return f"Participant({self.id} {self.display_name!r})"


@dataclass
class Roster:
    participants: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_sequence: int | None = None  # of whole delta notifications
    participant_sequence: dict[str, int] = field(default_factory=dict)
    stale_ignored: int = 0

    def apply(self, change: RosterChanged, delta: bool) -> RosterUpdate:
        entries = {str(p["id"]): p for p in change.participants if isinstance(p.get("id"), str)}
        if change.sequence_number is not None:
            if self.last_sequence is not None and change.sequence_number <= self.last_sequence:
                self.stale_ignored += 1
                return RosterUpdate()
            self.last_sequence = change.sequence_number
        if delta:
            entries = {pid: p for pid, p in entries.items() if not self._stale(pid, p)}
        if change.change_type == "deleted":
            gone = tuple(pid for pid in entries if self.participants.pop(pid, None) is not None)
            for pid in gone:
                self.participant_sequence.pop(pid, None)
            return RosterUpdate(removed=gone)
        if not delta:
            removed = tuple(pid for pid in self.participants if pid not in entries)
            for pid in removed:
                del self.participants[pid]
        else:
            removed = tuple(
                pid
                for pid, p in entries.items()
                if p.get("removedState") and self.participants.pop(pid, None) is not None
            )
            for pid in removed:
                self.participant_sequence.pop(pid, None)
            entries = {pid: p for pid, p in entries.items() if not p.get("removedState")}
        added = tuple(pid for pid in entries if pid not in self.participants)
        updated = tuple(
            pid
            for pid, p in entries.items()
            if pid in self.participants and self.participants[pid] != p
        )
        self.participants.update(entries)
        return RosterUpdate(added, updated, removed)

    def _stale(self, pid: str, participant: dict[str, Any]) -> bool:
        """A delta entry not newer than what we applied for that participant (a late delta)."""
        number = participant.get("rosterSequenceNumber")
        if not isinstance(number, int):
            return False
        last = self.participant_sequence.get(pid)
        if last is not None and number <= last:
            self.stale_ignored += 1
            return True
        self.participant_sequence[pid] = number
        return False


def _context(client_context: str | None) -> dict[str, Any]:
    if client_context is not None and len(client_context) > 256:
        raise ValueError("clientContext is at most 256 characters (Graph)")
    return {"clientContext": client_context} if client_context is not None else {}
