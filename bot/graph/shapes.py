"""Request-body building blocks, in Graph's own shapes
(https://learn.microsoft.com/en-us/graph/api/resources/communications-api-overview)."""

from __future__ import annotations

from typing import Any

TONES = {
    **{str(d): f"tone{d}" for d in range(10)},
    "*": "star",
    "#": "pound",
    "A": "a",
    "B": "b",
    "C": "c",
    "D": "d",
}
TONE_NAMES = {*TONES.values(), "flash"}


def identity_set(
    *,
    user_id: str | None = None,
    display_name: str | None = None,
    tenant_id: str | None = None,
    application_id: str | None = None,
    guest_id: str | None = None,
    phone: str | None = None,
) -> dict[str, Any]:
    """An identitySet with exactly one of user, application, guest or phone."""
    kinds = [k for k in (user_id, application_id, guest_id, phone) if k is not None]
    if len(kinds) != 1:
        raise ValueError("an identity set names exactly one of user, application, guest, phone")
    body: dict[str, Any] = {"@odata.type": "#microsoft.graph.identitySet"}
    ident: dict[str, Any] = {"@odata.type": "#microsoft.graph.identity"}
    if display_name is not None:
        ident["displayName"] = display_name
    if user_id is not None:
        ident["id"] = user_id
        if tenant_id is not None:
            ident["tenantId"] = tenant_id
        body["user"] = ident
    elif application_id is not None:
        body["application"] = {**ident, "id": application_id}
    elif guest_id is not None:
        body["guest"] = {**ident, "id": guest_id}
    else:
        body["phone"] = {**ident, "id": phone}
    return body


def invitation_participant(
    identity: dict[str, Any], replaces_call_id: str | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "@odata.type": "#microsoft.graph.invitationParticipantInfo",
        "identity": identity,
    }
    if replaces_call_id is not None:
        body["replacesCallId"] = replaces_call_id
    return body


def app_hosted_media(blob: str) -> dict[str, Any]:
    return {"@odata.type": "#microsoft.graph.appHostedMediaConfig", "blob": blob}


def service_hosted_media(prefetch: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    """prefetch: (uri, resourceId) pairs of prompts Graph should fetch ahead."""
    return {
        "@odata.type": "#microsoft.graph.serviceHostedMediaConfig",
        "preFetchMedia": [{"uri": u, "resourceId": r} for u, r in prefetch or []],
    }


def media_prompt(uri: str, resource_id: str) -> dict[str, Any]:
    return {
        "@odata.type": "#microsoft.graph.mediaPrompt",
        "mediaInfo": {
            "@odata.type": "#microsoft.graph.mediaInfo",
            "uri": uri,
            "resourceId": resource_id,
        },
    }


def tone_names(tones: str | list[str]) -> list[str]:
    """ "12#" or ["tone1", "pound"] to Graph's tone names. Raises ValueError."""
    names = [TONES.get(t, t) for t in (list(tones) if isinstance(tones, str) else tones)]
    unknown = [n for n in names if n not in TONE_NAMES]
    if unknown:
        raise ValueError(f"unknown DTMF tones: {unknown}")
    return names
