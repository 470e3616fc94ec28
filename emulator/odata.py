"""What every Graph handler shares: OData error bodies, bearer-token checks, JSON bodies and the
small field validators the request tables of the Graph docs imply."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import jwt
from aiohttp import web

from emulator.keys import verify
from emulator.login import GRAPH_RESOURCE

if TYPE_CHECKING:
    from emulator.server import Emulator

CALLS = "/v1.0/communications/calls"
CALL = CALLS + "/{call_id}"
MODALITIES = frozenset({"audio", "video", "videoBasedScreenSharing", "data"})
# toneInfo.tone (JSON representation in https://learn.microsoft.com/en-us/graph/api/resources/toneinfo).
TONES = frozenset([f"tone{i}" for i in range(10)] + ["star", "pound", "a", "b", "c", "d", "flash"])
APP_HOSTED = "#microsoft.graph.appHostedMediaConfig"
SERVICE_HOSTED = "#microsoft.graph.serviceHostedMediaConfig"
# "Max limit is 256 chars" (https://learn.microsoft.com/en-us/graph/api/call-mute,
# .../participant-invite ...)
CLIENT_CONTEXT_MAX = 256
IDENTITY_KINDS = ("user", "application", "applicationInstance", "phone", "guest", "device")


class BadRequest(Exception):
    """A request Graph would refuse with 400; the message goes into the OData error body."""


def graph_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """The OData error body Graph answers with: {"error": {code, message, innerError}}."""
    body = {
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "request-id": str(uuid.uuid4()),
                "date": datetime.now(UTC).isoformat(),
            },
        }
    }
    return web.json_response(body, status=status, headers=headers)


def bad_request(message: str) -> web.Response:
    return graph_error(400, "BadRequest", message)


def not_found(message: str = "Call not found.") -> web.Response:
    return graph_error(404, "NotFound", message)


def authenticate(emulator: Emulator, request: web.Request) -> dict[str, Any] | web.Response:
    """The token's claims, or the 401 Graph gives for a missing or invalid bearer token."""
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        return graph_error(401, "InvalidAuthenticationToken", "Access token is empty.")
    try:
        return verify(header[7:], emulator.token_key, GRAPH_RESOURCE)
    except jwt.InvalidTokenError as exc:
        return graph_error(401, "InvalidAuthenticationToken", f"Access token invalid: {exc}")


def app_id_of(emulator: Emulator, request: web.Request) -> str | None:
    """The app a request's valid bearer token belongs to, for the request log."""
    claims = authenticate(emulator, request)
    return None if isinstance(claims, web.Response) else str(claims.get("appid"))


async def read_object(request: web.Request, *, required: bool = True) -> dict[str, Any]:
    """The JSON object body. An absent body is {} when every parameter is optional."""
    raw = await request.read()
    if not raw.strip():
        if required:
            raise BadRequest("A request body is required.")
        return {}
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest("The request body is not valid JSON.") from exc
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    return body


def client_context(body: dict[str, Any]) -> str | None:
    value = body.get("clientContext")
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > CLIENT_CONTEXT_MAX:
        raise BadRequest(f"clientContext must be a string of at most {CLIENT_CONTEXT_MAX} chars.")
    return value


def https_uri(body: dict[str, Any], key: str, *, required: bool) -> str | None:
    """callbackUri "must be https" (https://learn.microsoft.com/en-us/graph/api/call-answer,
    .../call-reject, .../call-redirect)."""
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.startswith("https://"):
        raise BadRequest(f"{key} must be an https URL.")
    return value


def identity_set(info: Any, what: str) -> dict[str, Any]:
    """The identitySet of a participantInfo/invitationParticipantInfo: one known kind with an id
    (a guest may carry only a displayName)."""
    if not isinstance(info, dict) or not isinstance(info.get("identity"), dict):
        raise BadRequest(f"{what} needs an identity.")
    identity: dict[str, Any] = info["identity"]
    for kind in IDENTITY_KINDS:
        value = identity.get(kind)
        if isinstance(value, dict) and (
            isinstance(value.get("id"), str) or (kind == "guest" and "displayName" in value)
        ):
            return identity
    raise BadRequest(f"{what}.identity must hold a user, application, phone or guest with an id.")


def identity_id(identity: dict[str, Any]) -> str | None:
    for kind in IDENTITY_KINDS:
        value = identity.get(kind)
        if isinstance(value, dict) and isinstance(value.get("id"), str):
            return str(value["id"])
    return None


def media_config(body: dict[str, Any]) -> dict[str, Any]:
    """mediaConfig is required on create and answer: app-hosted (with our blob) or service-hosted
    (https://learn.microsoft.com/en-us/graph/api/call-answer, .../application-post-calls)."""
    media = body.get("mediaConfig")
    if not isinstance(media, dict):
        raise BadRequest("mediaConfig is required.")
    kind = media.get("@odata.type")
    if kind == SERVICE_HOSTED:
        return media
    if kind != APP_HOSTED:
        raise BadRequest("mediaConfig must be appHostedMediaConfig or serviceHostedMediaConfig.")
    blob = media_blob(media)
    if blob is None or not isinstance(blob.get("mpUri"), str):
        raise BadRequest("mediaConfig.blob must be a JSON string carrying mpUri.")
    return media


def media_blob(media: dict[str, Any] | None) -> dict[str, Any] | None:
    if media is None or media.get("@odata.type") != APP_HOSTED:
        return None
    try:
        blob = json.loads(media.get("blob", ""))
    except (TypeError, json.JSONDecodeError):
        return None
    return blob if isinstance(blob, dict) else None


def modalities(body: dict[str, Any], key: str, allowed: frozenset[str] = MODALITIES) -> list[str]:
    value = body.get(key)
    if not isinstance(value, list) or not value or not set(value) <= allowed:
        raise BadRequest(f"{key} must list one or more of {', '.join(sorted(allowed))}.")
    return [str(v) for v in value]


def bounded_int(body: dict[str, Any], key: str, low: int, high: int, default: int) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"{key} must be an integer from {low} to {high}.")
    return value


def optional_bool(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise BadRequest(f"{key} must be a boolean.")
    return value


def call_options(body: dict[str, Any]) -> dict[str, Any]:
    """callOptions (outgoingCallOptions / incomingCallOptions): booleans only (GDC callOptions)."""
    options = body.get("callOptions")
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise BadRequest("callOptions must be an object.")
    for key, value in options.items():
        if key.startswith(("is", "hide")) and not isinstance(value, bool):
            raise BadRequest(f"callOptions.{key} must be a boolean.")
    return options
