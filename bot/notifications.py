"""commsNotifications parsed into typed notifications
(https://learn.microsoft.com/en-us/graph/api/resources/commsnotifications).

Pure functions: no state, no I/O. Both the legacy `resource` ("/app/calls/{id}") and the current
`resourceUrl` ("/communications/calls/{id}") forms are accepted; `resourceUrl` wins if both are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_URL = re.compile(
    r"^/(?:communications|app)/calls/(?P<call>[^/]+)"
    r"(?:/(?P<kind>participants|operations|contentsharingsessions)(?:/(?P<sub>[^/]+))?)?/?$",
    re.IGNORECASE,
)
CHANGE_TYPES = ("created", "updated", "deleted")


@dataclass(frozen=True, slots=True)
class CallChanged:
    """The call resource itself: state, toneInfo, mediaState, resultInfo, ..."""

    call_id: str
    change_type: str
    resource: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RosterChanged:
    call_id: str
    change_type: str
    participants: tuple[dict[str, Any], ...]
    sequence_number: int | None  # delta roster: the notification's sequence number, if given
    partial: bool = False  # a deltaParticipants body, or one participant's URL: not the roster


@dataclass(frozen=True, slots=True)
class OperationChanged:
    call_id: str
    operation_id: str
    change_type: str
    resource: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ContentSharingChanged:
    call_id: str
    change_type: str
    sessions: tuple[dict[str, Any], ...]


Notification = CallChanged | RosterChanged | OperationChanged | ContentSharingChanged


def _entities(data: Any) -> tuple[dict[str, Any], ...]:
    """resourceData is "either an entity or a collection of entities" (commsNotification doc)."""
    if isinstance(data, dict):
        # A deltaParticipants resource wraps its collection.
        inner = data.get("participants")
        if isinstance(inner, list):
            data = inner
        elif isinstance(data.get("value"), list):
            data = data["value"]
        else:
            return (data,)
    if isinstance(data, list) and all(isinstance(e, dict) for e in data):
        return tuple(data)
    raise ValueError("resourceData must be an object or an array of objects")


def _sequence(data: Any) -> int | None:
    """The notification's own order: deltaParticipants.sequenceNumber, when it is wrapped."""
    if isinstance(data, dict) and isinstance(data.get("sequenceNumber"), int):
        return int(data["sequenceNumber"])
    return None


def parse(item: Any) -> Notification:
    """One commsNotification. Raises ValueError naming what is wrong."""
    if not isinstance(item, dict):
        raise ValueError("a notification is an object")
    change = item.get("changeType")
    if change not in CHANGE_TYPES:
        raise ValueError(f"unknown changeType {change!r}")
    url = item.get("resourceUrl") or item.get("resource")
    match = _URL.match(url) if isinstance(url, str) else None
    if match is None:
        raise ValueError(f"not a call resource: {url!r}")
    call_id, kind, sub = match.group("call"), match.group("kind"), match.group("sub")
    data = item.get("resourceData")
    if kind is None:
        if not isinstance(data, dict):
            raise ValueError("a call notification carries the call object")
        return CallChanged(call_id, change, data)
    kind = kind.lower()
    if kind == "operations":
        if sub is None or not isinstance(data, dict):
            raise ValueError("an operation notification names the operation and carries it")
        return OperationChanged(call_id, sub, change, data)
    entities = _entities(data) if data is not None else ()
    if kind == "participants":
        if sub is not None and not entities:
            entities = ({"id": sub},)
        partial = sub is not None or (isinstance(data, dict) and "participants" in data)
        return RosterChanged(call_id, change, entities, _sequence(data), partial)
    return ContentSharingChanged(call_id, change, entities)
