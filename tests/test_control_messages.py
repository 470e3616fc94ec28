"""webrtc-mp/1 message validation for the video and speaker messages (docs/media-protocol.md),
and the codes the bot's parser and the emulator's MP parser give the same bad input."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from emulator import mpcontrol
from media import control


@pytest.mark.parametrize(
    "text",
    [
        '{"type":"subscribe","socketId":1,"msi":42,"resolution":"sd360p"}',
        '{"type":"unsubscribe","socketId":0}',
        '{"type":"videoSource","socketId":2,"msi":null}',
        '{"type":"videoSource","socketId":2,"msi":4294967295}',
        '{"type":"dominantSpeaker","msi":7,"history":[3,2]}',
        '{"type":"dominantSpeaker","msi":4294967295}',
        '{"type":"unsubscribe","socketId":1.0}',
    ],
)
def test_valid_messages_parse(text: str) -> None:
    assert control.parse(text)["type"]


@pytest.mark.parametrize(
    "text",
    [
        '{"type":"subscribe","socketId":"1","msi":42,"resolution":"sd360p"}',
        '{"type":"subscribe","socketId":1,"msi":-1,"resolution":"sd360p"}',
        '{"type":"subscribe","socketId":1,"msi":42}',
        '{"type":"unsubscribe","socketId":true}',
        '{"type":"videoSource","socketId":2}',
        '{"type":"videoSource","socketId":2,"msi":4294967296}',
        '{"type":"dominantSpeaker","msi":1.5}',
        '{"type":"dominantSpeaker","msi":1,"history":[1,"2"]}',
        '{"type":"dominantSpeaker","msi":1,"history":{}}',
    ],
)
def test_malformed_messages_are_refused_with_a_reason(text: str) -> None:
    with pytest.raises(control.ControlError) as caught:
        control.parse(text)
    assert caught.value.code == "badMessage"


PARSERS: dict[str, tuple[Callable[[str], dict[str, Any]], type[ValueError]]] = {
    "bot": (control.parse, control.ControlError),
    "mp": (mpcontrol.parse, mpcontrol.ControlError),
}


@pytest.mark.parametrize("side", PARSERS)
@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{nope", "badMessage"),
        ("[1]", "badMessage"),
        ('{"sdp":"v=0"}', "badMessage"),  # the page: a required field missing, `type` included
        ('{"type":""}', "badMessage"),
        ('{"type":7}', "badMessage"),
        ('{"type":null}', "badMessage"),
        ('{"type":"launch"}', "unknownType"),
    ],
)
def test_both_sides_give_the_pages_code(side: str, text: str, code: str) -> None:
    parse, error = PARSERS[side]
    with pytest.raises(error) as caught:
        parse(text)
    assert caught.value.code == code  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "text",
    ['{"type":"error","code":"badState"}', '{"type":"error","code":"","message":"x"}'],
)
def test_a_malformed_error_is_badmessage_and_marked_as_an_error(text: str) -> None:
    """The server drops these unanswered (an error is never answered): it knows by `kind`."""
    with pytest.raises(control.ControlError) as caught:
        control.parse(text)
    assert caught.value.code == "badMessage" and caught.value.kind == "error"


def test_an_unknown_type_is_not_echoed_at_length() -> None:
    with pytest.raises(control.ControlError) as caught:
        control.parse('{"type":"' + "x" * 10_000 + '"}')
    assert caught.value.code == "unknownType" and len(str(caught.value)) < 200
