"""Each form the Graph documentation gives a notification, and the state it leaves (issue 15's
findings, one test each). Pure: the call collection without a webhook, on the test's loop."""

from __future__ import annotations

from typing import Any

import pytest

from bot.call_views import ContentSharingUpdate
from bot.calls import CallCollection
from bot.operations import OperationFailedError
from bot.resources import ResultInfo, canonical_id

CALL = "57DAB8B1894C409AB240BD8BEAE78896"  # the call-answer page's form: upper case, no hyphens
CANONICAL = "57dab8b1-894c-409a-b240-bd8beae78896"


def note(url: str, data: Any, change: str | None = "updated") -> dict[str, Any]:
    item: dict[str, Any] = {"@odata.type": "#microsoft.graph.commsNotification"}
    if change is not None:
        item["changeType"] = change
    item["resourceUrl"] = url
    if data is not None:
        item["resourceData"] = data
    return item


def state(value: str, **extra: Any) -> dict[str, Any]:
    return {"@odata.type": "#microsoft.graph.call", "state": value, **extra}


def participant(pid: str, number: int | None = None, **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"@odata.type": "#microsoft.graph.participant", "id": pid}
    if number is not None:
        entry["rosterSequenceNumber"] = number
    return {**entry, **extra}


def placed(events: list[tuple[str, tuple[Any, ...]]] | None = None) -> CallCollection:
    """A collection that placed CALL (its POST answer named it), recording every event."""
    calls = CallCollection()
    if events is not None:
        for name in (
            "state",
            "participants",
            "operation",
            "content_sharing",
            "lobby",
            "participant_recording",
            "screen_sharing",
            "large_gallery",
            "media_state",
            "tone",
        ):
            calls.events.on(name, lambda *args, _n=name: events.append((_n, args)))
    calls.get_or_add(CALL)
    _MADE.append(calls)
    return calls


_MADE: list[CallCollection] = []


@pytest.fixture(autouse=True)
def _nothing_failed() -> Any:
    """Every collection a test made applied every item without an exception."""
    _MADE.clear()
    yield
    assert [c.failed for c in _MADE] == [0] * len(_MADE)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({"code": 200, "subcode": 0, "message": "ok"}, ResultInfo(200, 0, "ok")),
        ({"code": "200", "subcode": "5001", "message": "m"}, ResultInfo(200, 5001, "m")),
        ({"code": 500, "subCode": 7000}, ResultInfo(500, 7000, "")),
        ({"code": "0", "subCode": "7015"}, ResultInfo(0, 7015, "")),
        ({"code": "x", "subcode": None}, ResultInfo(0, 0, "")),
    ],
)
async def test_result_info_takes_numbers_strings_and_both_spellings(
    raw: dict[str, Any], expected: ResultInfo
) -> None:
    calls = placed()
    calls.apply(note(f"/communications/calls/{CALL}", {"state": "terminated", "resultInfo": raw}))
    call = calls.calls[CALL]
    assert call.result == expected
    assert call.result_info == expected.as_dict()
    assert call.resource["resultInfo"] == raw  # the raw resource is kept beside it


async def test_an_operation_without_id_in_its_body_finishes_the_one_the_url_names() -> None:
    events: list[tuple[str, tuple[Any, ...]]] = []
    calls = placed(events)
    call = calls.calls[CALL]
    op_id = "0FE0623F-D628-42ED-B4BD-8AC290072CC5"
    started = call.track_operation({"id": op_id.lower(), "status": "running"})
    failed = {"status": "failed", "resultInfo": {"code": "400", "subCode": "8508"}}
    calls.apply(note(f"communications/calls/{CALL}/operations/{op_id}", failed, "deleted"))
    assert started.done and started.status == "failed"
    with pytest.raises(OperationFailedError) as raised:
        await started.wait(1)
    assert (raised.value.status, raised.value.code) == (400, "8508")
    assert list(call.operations) == [canonical_id(op_id)]
    await calls.idle()
    assert [name for name, _ in events] == ["operation"]


@pytest.mark.parametrize(
    "form",
    [
        CALL,
        CALL.lower(),
        CANONICAL,
        CANONICAL.upper(),
        "{" + CANONICAL + "}",
    ],
)
async def test_a_guid_in_any_form_names_the_same_call(form: str) -> None:
    calls = placed()
    calls.apply(note(f"/communications/calls/{form}", state("established")))
    assert list(calls.calls) == [CANONICAL] and calls.held == 0
    assert calls.calls[form].state == "established"
    assert calls.calls[CALL].id == CALL  # the call keeps the form Graph first gave


@pytest.mark.parametrize(
    "url",
    [
        f"/communications/calls/{CALL}",
        f"communications/calls/{CALL}",
        f"/app/calls/{CALL}",
        f"app/calls/{CALL}",
        f"https://graph.microsoft.com/v1.0/communications/calls/{CALL}",
        f"https://graph.microsoft.com/beta/communications/calls/{CALL}/",
    ],
)
async def test_every_url_form_is_understood(url: str) -> None:
    calls = placed()
    calls.apply(note(url, state("established")))
    assert calls.ignored == 0 and calls.calls[CALL].state == "established"


async def test_a_missing_change_type_is_an_update() -> None:
    calls = placed()
    calls.apply(note(f"/communications/calls/{CALL}", state("established"), change=None))
    assert calls.ignored == 0 and calls.calls[CALL].state == "established"


async def test_an_older_resource_only_fills_in_what_is_missing() -> None:
    calls = placed()
    url = f"/communications/calls/{CALL}"
    calls.apply(note(url, state("established", mediaState={"audio": "active"})))
    older = state("establishing", mediaState={"audio": "inactive"}, callChainId="chain")
    calls.apply(note(url, older))
    call = calls.calls[CALL]
    assert call.state == "established" and call.resource["state"] == "established"
    assert call.media_state == {"audio": "active"}  # the newer value stays
    assert call.resource["callChainId"] == "chain"  # what only the older one said is kept
    assert call.raw_resource == older  # as Graph sent it
    assert call.stale_states == 1


async def test_content_sharing_sessions_are_kept_in_every_documented_form() -> None:
    events: list[tuple[str, tuple[Any, ...]]] = []
    calls = placed(events)
    url = f"/communications/calls/{CALL}/contentsharingsessions"
    session = {"@odata.type": "#microsoft.graph.contentSharingSession"}
    calls.apply(note(url, [{**session, "id": "s-1"}], "created"))  # the collection form
    calls.apply(note(f"{url}/s-2", session, change=None))  # per item, no id, no change type
    call = calls.calls[CALL]
    assert sorted(call.content_sharing) == ["s-1", "s-2"]
    calls.apply(note(f"{url}/s-1", None, "deleted"))  # per item, no body
    assert sorted(call.content_sharing) == ["s-2"]
    calls.apply(note(url, None, "deleted"))  # the collection: every session ended
    assert not call.content_sharing
    await calls.idle()
    updates = [args[1] for name, args in events if name == "content_sharing"]
    assert updates == [
        ContentSharingUpdate(started=("s-1",)),
        ContentSharingUpdate(started=("s-2",)),
        ContentSharingUpdate(ended=("s-1",)),
        ContentSharingUpdate(ended=("s-2",)),
    ]


def vbss(direction: str) -> dict[str, Any]:
    return {
        "@odata.type": "#microsoft.graph.mediaStream",
        "mediaType": "videoBasedScreenSharing",
        "label": "applicationsharing-video",
        "sourceId": "1655",
        "direction": direction,
        "serverMuted": False,
    }


async def test_lobby_recording_and_screen_sharing_raise_one_event_per_change() -> None:
    events: list[tuple[str, tuple[Any, ...]]] = []
    calls = placed(events)
    calls.calls[CALL].delta_roster = True
    url = f"/communications/calls/{CALL}/participants"
    recording = {"initiator": {}, "recordingStatus": "recording"}
    steps = [
        [participant("p-1", 1, isInLobby=True), participant("p-2", 2)],
        [participant("p-1", 3, isInLobby=False)],  # admitted
        [participant("p-2", 4, recordingInfo=recording)],  # starts recording
        [participant("p-2", 5, recordingInfo=recording, mediaStreams=[vbss("sendOnly")])],
        [participant("p-2", 6, recordingInfo=recording, mediaStreams=[vbss("receiveOnly")])],
    ]
    for entries in steps:
        calls.apply(note(url, entries))
    call = calls.calls[CALL]
    assert call.lobby == [] and call.screen_sharer is None
    assert call.participants["p-2"].recording_status == "recording"
    await calls.idle()
    said = [
        (name, *(getattr(a, "id", a) for a in args[1:]))
        for name, args in events
        if name != "participants"
    ]
    assert said == [
        ("lobby", "p-1", True),
        ("lobby", "p-1", False),
        ("participant_recording", "p-2", recording),
        ("screen_sharing", "p-2"),
        ("screen_sharing", None),
    ]


async def test_media_state_changes_are_events() -> None:
    events: list[tuple[str, tuple[Any, ...]]] = []
    calls = placed(events)
    url = f"/communications/calls/{CALL}"
    for audio in ("active", "active", "inactive"):
        calls.apply(note(url, state("established", mediaState={"audio": audio})))
    await calls.idle()
    assert [args[1] for name, args in events if name == "media_state"] == [
        {"audio": "active"},
        {"audio": "inactive"},
    ]


async def test_tones_are_ordered_by_their_sequence_id() -> None:
    events: list[tuple[str, tuple[Any, ...]]] = []
    calls = placed(events)
    url = f"/communications/calls/{CALL}"

    def tone(name: str, sequence: int) -> dict[str, Any]:
        return state("established", toneInfo={"tone": name, "sequenceId": sequence})

    for item in (tone("tone1", 1), tone("tone3", 3), tone("tone2", 2), tone("tone3", 3)):
        calls.apply(note(url, item))
    call = calls.calls[CALL]
    # The late tone2 is a key the caller pressed: kept, in its place; the second tone3 is a
    # re-delivery.
    assert list(call.tones_seen) == ["tone1", "tone2", "tone3"] and call.stale_tones == 1
    assert call.resource["toneInfo"]["tone"] == "tone3"  # the late tone2 did not overwrite it
    await calls.idle()
    assert [args[1] for name, args in events if name == "tone"] == ["tone1", "tone3", "tone2"]
