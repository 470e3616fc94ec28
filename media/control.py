"""The media-control protocol "webrtc-mp/1" (docs/media-protocol.md): JSON text messages over a
TLS WebSocket between the media processor (MP) and the bot's media platform.

This module only encodes and validates messages; media/server.py runs the endpoint.
"""

from __future__ import annotations

import json
from typing import Any

from media import safe_json

PROTOCOL = "webrtc-mp/1"
# The UTF-8 payload of one message, at most (an SDP offer with 16 m-lines is ~20 KB). Enforced by
# the WebSocket reader (media/server.py), which closes with 1009 past it before buffering more.
MAX_MESSAGE_BYTES = 256 * 1024

# Required string fields per message type, sent by either side.
_REQUIRED: dict[str, tuple[str, ...]] = {
    "hello": ("protocol", "mpMediaSessionId", "token"),
    "welcome": ("mpMediaSessionId",),
    "offer": ("sdp",),
    "answer": ("sdp",),
    "subscribe": ("resolution",),
    "unsubscribe": (),
    "videoSource": (),
    "dominantSpeaker": (),
    "bye": (),
    "error": ("code", "message"),
}
# Required whole-number fields: (name, nullable).
_INTEGERS: dict[str, tuple[tuple[str, bool], ...]] = {
    "subscribe": (("socketId", False), ("msi", False)),
    "unsubscribe": (("socketId", False),),
    "videoSource": (("socketId", False), ("msi", True)),
    "dominantSpeaker": (("msi", False),),
}
MAX_MSI = 0xFFFFFFFF


class ControlError(ValueError):
    """A control message that cannot be accepted; `code` goes back in an error message.
    `kind` is the message's type when it has a known one (an `error` is never answered)."""

    def __init__(self, code: str, message: str, kind: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.kind = kind


def parse(text: str | bytes) -> dict[str, Any]:
    """Decode and validate one control message. Raises ControlError with a precise reason."""
    try:
        message = safe_json.loads(text)
    except safe_json.JsonRefused as exc:
        raise ControlError("badMessage", str(exc)) from None
    if not isinstance(message, dict):
        raise ControlError("badMessage", "a message is a JSON object")
    kind = message.get("type")
    # `type` is a required string field like any other: missing, empty or not a string is
    # badMessage; only a type the table does not list is unknownType (docs/media-protocol.md).
    if not isinstance(kind, str) or not kind:
        raise ControlError("badMessage", "field 'type' must be a non-empty string")
    if kind not in _REQUIRED:
        raise ControlError("unknownType", f"unknown message type {kind[:64]!r}")
    for name in _REQUIRED[kind]:
        if not isinstance(message.get(name), str) or not message[name]:
            raise ControlError(
                "badMessage", f"{kind}: field {name!r} must be a non-empty string", kind
            )
    for name, nullable in _INTEGERS.get(kind, ()):
        value = message.get(name)
        if value is None and nullable and name in message:
            continue
        if not _is_uint32(value):
            raise ControlError("badMessage", f"{kind}: field {name!r} must be an integer", kind)
    if kind == "dominantSpeaker":
        history = message.get("history", [])
        if not isinstance(history, list) or not all(_is_uint32(m) for m in history):
            raise ControlError(
                "badMessage", "dominantSpeaker: history must be a list of MSIs", kind
            )
    return message


def _is_uint32(value: object) -> bool:
    # A JSON number with a whole value (1.0 included, as the spec says); bool is an int in
    # Python, and JSON true is not an MSI.
    if type(value) is float and value.is_integer():
        value = int(value)
    return type(value) is int and 0 <= value <= MAX_MSI


def encode(kind: str, **fields: Any) -> str:
    if kind not in _REQUIRED:
        raise ValueError(f"unknown message type {kind!r}")
    return json.dumps({"type": kind, **fields}, separators=(",", ":"))


def error(code: str, message: str) -> str:
    # `message` is a required field: never empty, whatever the exception said.
    return encode("error", code=code, message=message or code)
