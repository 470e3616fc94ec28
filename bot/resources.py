"""Typed views of what Graph's call resources carry, as the documentation pages show them.

Graph's examples are not uniform: `resultInfo.code` and `subcode` are numbers on some pages and
strings on others, and `subcode` is also spelled `subCode`
(https://learn.microsoft.com/en-us/graph/api/resources/resultinfo); ids are GUIDs that appear
upper- or lower-case, with or without hyphens. Everything here takes every documented form and
gives one: ints for codes, a canonical id for GUIDs. The raw resources are kept unchanged beside
these views (`Call.raw_resource`, `Participant.resource`, `Operation.resource`).

Pure functions and frozen values: no state, no I/O.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

V = TypeVar("V")

_GUID = re.compile(r"^\{?[0-9a-fA-F]{8}-?(?:[0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}\}?$")


def canonical_id(value: object) -> str:
    """A GUID in its canonical form (lower case, hyphenated); any other id as it is.

    GUIDs compare case-insensitively and with or without hyphens (RFC 9562 section 4), so
    `57DAB8B1894C409AB240BD8BEAE78896` and `57dab8b1-894c-409a-b240-bd8beae78896` name one call.
    """
    text = str(value)
    if _GUID.match(text):
        return str(uuid.UUID(text.strip("{}")))
    return text


class IdMap(dict[str, V]):
    """A dict keyed by `canonical_id`: a lookup with any form of a GUID finds its entry.

    Keys are stored canonical, so iteration shows the canonical form. (`update`, `setdefault`
    and `{**...}` bypass the canonicalisation: the bot uses only the methods below.)
    """

    def __getitem__(self, key: str) -> V:
        return super().__getitem__(canonical_id(key))

    def __setitem__(self, key: str, value: V) -> None:
        super().__setitem__(canonical_id(key), value)

    def __delitem__(self, key: str) -> None:
        super().__delitem__(canonical_id(key))

    def __contains__(self, key: object) -> bool:
        return super().__contains__(canonical_id(key))

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(canonical_id(key), default)

    def pop(self, key: str, *default: Any) -> Any:
        return super().pop(canonical_id(key), *default)


def _whole(value: object) -> int | None:
    """A documented Int32 given as a number or as a string of digits ("7015", "-1")."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,10}", value.strip()):
        return int(value.strip())
    return None


@dataclass(frozen=True, slots=True)
class ResultInfo:
    """resultInfo (https://learn.microsoft.com/en-us/graph/api/resources/resultinfo): code and
    subcode as ints whatever form they arrived in (0 when absent or unreadable)."""

    code: int = 0
    subcode: int = 0
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "subcode": self.subcode, "message": self.message}


def result_info(raw: object) -> ResultInfo | None:
    """A resultInfo in any documented form (`subcode` or `subCode`, numbers or strings)."""
    if not isinstance(raw, dict):
        return None
    subcode = raw.get("subcode", raw.get("subCode"))
    message = raw.get("message")
    return ResultInfo(
        code=_whole(raw.get("code")) or 0,
        subcode=_whole(subcode) or 0,
        message=message if isinstance(message, str) else "",
    )


@dataclass(frozen=True, slots=True)
class MediaStream:
    """One of a participant's mediaStreams
    (https://learn.microsoft.com/en-us/graph/api/resources/mediastream)."""

    media_type: str  # audio, video, videoBasedScreenSharing, data
    label: str
    source_id: int | None  # the MSI (sourceId is a string of digits)
    direction: str  # inactive, sendOnly, receiveOnly, sendReceive
    server_muted: bool

    @property
    def sends(self) -> bool:
        """The participant sends on this stream (sendOnly or sendReceive)."""
        return self.direction in ("sendOnly", "sendReceive")


def media_streams(raw: object, parse_msi: Any) -> tuple[MediaStream, ...]:
    if not isinstance(raw, list):
        return ()
    streams = []
    for entry in raw:
        if not isinstance(entry, dict):
            continue
        streams.append(
            MediaStream(
                media_type=str(entry.get("mediaType", "")),
                label=str(entry.get("label", "")),
                source_id=parse_msi(entry.get("sourceId")),
                direction=str(entry.get("direction", "")),
                server_muted=entry.get("serverMuted") is True,
            )
        )
    return tuple(streams)


@dataclass(frozen=True, slots=True)
class LargeGalleryView:
    """The large-gallery participant's paging metadata (audienceView), as
    https://learn.microsoft.com/en-us/graph/cloud-communications-identifylargegalleryview
    describes it: subscribe to `video_msi` to receive the view."""

    view_id: str
    page: int | None
    status: str  # "active" | "inactive"
    video_msi: int | None


def large_gallery_view(metadata: object, video_msi: int | None) -> LargeGalleryView | None:
    """The audienceView in a participant's `metadata` (a JSON string), or None."""
    if not isinstance(metadata, str) or len(metadata) > 64 * 1024:
        return None
    try:
        parsed = json.loads(metadata)
    except ValueError:
        return None
    view = parsed.get("audienceView") if isinstance(parsed, dict) else None
    if not isinstance(view, dict):
        return None
    page = _whole(view.get("page"))
    return LargeGalleryView(
        view_id=str(view.get("id", "")),
        page=page,
        status=str(view.get("status", "")),
        video_msi=video_msi,
    )


def application_type(identity: dict[str, Any]) -> str:
    """identity.application's ApplicationType (the page spells it with a capital A)."""
    app = identity.get("application")
    if not isinstance(app, dict):
        return ""
    for key, value in app.items():
        if key.lower() == "applicationtype" and isinstance(value, str):
            return value
    return ""


def ids_of(entities: Iterable[dict[str, Any]]) -> list[str]:
    return [canonical_id(e["id"]) for e in entities if isinstance(e.get("id"), str) and e["id"]]
