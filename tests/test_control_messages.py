"""webrtc-mp/1 message validation for the video and speaker messages (docs/media-protocol.md)."""

from __future__ import annotations

import pytest

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
