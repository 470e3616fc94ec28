"""webrtc-mp/1 control messages as the media processor reads and writes them
(docs/media-protocol.md, Messages and Errors)."""

from __future__ import annotations

import json
from typing import Any

PROTOCOL = "webrtc-mp/1"
# At most this many bytes of UTF-8 per message. The WebSocket reader enforces it
# (emulator/mediaprocessor.py): past it the connection closes with 1009 (RFC 6455 section 7.4.1).
MAX_MESSAGE_BYTES = 256 * 1024
# Every type of the spec's table; the ones a bot may send after the answer are handled, the
# others are badState then.
TYPES = frozenset(
    {
        "hello",
        "welcome",
        "offer",
        "answer",
        "subscribe",
        "unsubscribe",
        "videoSource",
        "dominantSpeaker",
        "bye",
        "error",
    }
)
MAX_SOCKET_ID = 10
MAX_MSI = 0xFFFFFFFF


class ControlError(ValueError):
    """A message the MP cannot take; `code` goes back in an error message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def parse(text: str) -> dict[str, Any]:
    """One control message, checked for shape: badMessage or unknownType otherwise."""
    try:
        message = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ControlError("badMessage", f"not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ControlError("badMessage", "a message is a JSON object")
    kind = message.get("type")
    if not isinstance(kind, str) or not kind:
        raise ControlError("badMessage", "a message needs a string type")
    if kind not in TYPES:
        raise ControlError("unknownType", f"unknown message type {kind[:64]!r}")
    return message


def whole_number(message: dict[str, Any], field: str, high: int) -> int:
    """An integer field: a JSON number holding a whole value from 0 to high, else badMessage."""
    value = message.get(field)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ControlError("badMessage", f"{message['type']}: {field!r} must be a number")
    if isinstance(value, float) and not value.is_integer():
        raise ControlError("badMessage", f"{message['type']}: {field!r} must be a whole number")
    if not 0 <= value <= high:
        raise ControlError("badMessage", f"{message['type']}: {field!r} must be 0 to {high}")
    return int(value)


def encode(kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, **fields}, separators=(",", ":"))


def error(code: str, message: str) -> str:
    return encode("error", code=code, message=message)
