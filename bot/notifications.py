"""commsNotifications parsed into typed notifications
(https://learn.microsoft.com/en-us/graph/api/resources/commsnotifications).

Pure functions: no state, no I/O. Every form the documentation pages show is accepted:
- the legacy `resource` ("/app/calls/{id}") and the current `resourceUrl`
  ("/communications/calls/{id}"), with or without the leading slash, or as an absolute
  https://graph.microsoft.com/{version}/... URL; `resourceUrl` wins if both are given;
- `resourceData` as one entity or a collection ("either an entity or a collection of entities",
  https://learn.microsoft.com/en-us/graph/api/resources/commsnotification), for an item URL
  (".../operations/{id}", ".../participants/{id}", ".../contentsharingsessions/{id}") or for
  the collection; an item's id comes from the URL when the body has none (playPrompt,
  addLargeGalleryView and startHoldMusic notifications carry none);
- `changeType` `created`, `updated`, `deleted`, or none at all (some content-sharing examples
  have none): a missing change type is an update.
Ids are GUIDs in any case, with or without hyphens: every id is given in `canonical_id` form.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from bot.resources import canonical_id

_URL = re.compile(
    r"^(?:https://[^/]+/(?:v1\.0|beta))?/?(?:communications|app)/calls/(?P<call>[^/]+)"
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
    sessions: tuple[dict[str, Any], ...]  # each with its id (from the URL if the body had none)


Notification = CallChanged | RosterChanged | OperationChanged | ContentSharingChanged


def _entities(data: Any) -> tuple[dict[str, Any], ...]:
    """resourceData is "either an entity or a collection of entities" (commsNotification doc)."""
    if isinstance(data, list) and len(data) == 1 and _is_delta(data[0]):
        data = data[0]  # a deltaParticipants resource sent as a one-item collection
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


def _is_delta(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("participants"), list)


def _is_roster(data: Any) -> bool:
    """A collection of participant resources, whatever URL it was sent to."""
    return (
        isinstance(data, list)
        and bool(data)
        and all(
            isinstance(e, dict) and e.get("@odata.type") == "#microsoft.graph.participant"
            for e in data
        )
    )


def _is_delta_list(data: list[Any]) -> bool:
    return len(data) == 1 and _is_delta(data[0])


def _sequence(data: Any) -> int | None:
    """The notification's own order: deltaParticipants.sequenceNumber, when it is wrapped."""
    if isinstance(data, list) and len(data) == 1 and _is_delta(data[0]):
        data = data[0]
    if isinstance(data, dict) and isinstance(data.get("sequenceNumber"), int):
        return int(data["sequenceNumber"])
    return None


def _with_id(entity: dict[str, Any], sub: str | None) -> dict[str, Any]:
    """The item URL names the entity the body describes; a body without an id takes it."""
    if sub is not None and not entity.get("id"):
        return {**entity, "id": sub}
    return entity


def parse(item: Any) -> Notification:
    """One commsNotification. Raises ValueError naming what is wrong."""
    if not isinstance(item, dict):
        raise ValueError("a notification is an object")
    change = item.get("changeType", "updated")
    if change is None:
        change = "updated"
    if change not in CHANGE_TYPES:
        raise ValueError(f"unknown changeType {change!r}")
    url = item.get("resourceUrl") or item.get("resource")
    match = _URL.match(url) if isinstance(url, str) else None
    if match is None:
        raise ValueError(f"not a call resource: {url!r}")
    call_id = canonical_id(match.group("call"))
    kind, sub = match.group("kind"), match.group("sub")
    sub = canonical_id(sub) if sub is not None else None
    data = item.get("resourceData")
    if kind is None:
        if not isinstance(data, dict):
            raise ValueError("a call notification carries the call object")
        return CallChanged(call_id, change, data)
    kind = kind.lower()
    if kind == "operations" and _is_roster(data):
        # participant-invite's example sends the updated roster to the operation's URL
        # (https://learn.microsoft.com/en-us/graph/api/participant-invite, example 2): what
        # it carries decides, a roster.
        kind, sub = "participants", None
    if kind == "operations":
        if isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict):
            data = data[0]
        if not isinstance(data, dict):
            raise ValueError("an operation notification carries the operation")
        op_id = sub if sub is not None else data.get("id")
        if not isinstance(op_id, str) or not op_id:
            raise ValueError("an operation notification names the operation")
        return OperationChanged(call_id, canonical_id(op_id), change, _with_id(data, sub))
    entities = _entities(data) if data is not None else ()
    if sub is not None:
        entities = tuple(_with_id(e, sub) for e in entities) or ({"id": sub},)
    if kind == "participants":
        partial = (
            sub is not None or _is_delta(data) or (isinstance(data, list) and _is_delta_list(data))
        )
        return RosterChanged(call_id, change, entities, _sequence(data), partial)
    return ContentSharingChanged(call_id, change, entities)
