"""Every notification shape in fixtures/graph/ through the real webhook, validly signed.

Each fixture names the Graph document it follows and the state it must leave behind.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
import pytest
from pytest_aiohttp import AiohttpClient

from bot.inbound_auth import NotificationValidator
from bot.webhook import WEBHOOK_PATH, create_app
from emulator import Emulator
from tests.conftest import APP_ID, TENANT_ID
from tests.graph_fixtures import FIXTURES, GRAPH, INDEX, collection, load


def test_there_are_fixtures() -> None:
    assert len(FIXTURES) >= 20


def test_every_documented_example_has_its_fixture() -> None:
    """fixtures/graph/index.json lists the Graph pages' notification examples: each names a
    fixture that exists and says it follows that page, and each doc_ fixture is listed (pages
    with no notification example are listed apart, with why)."""
    index = load(INDEX)
    assert (index["format"], index["version"]) == ("graph-media-bot/graph-examples", 1)
    listed = set()
    for entry in index["examples"]:
        assert entry["page"].startswith("https://learn.microsoft.com/"), entry
        assert entry["fixture"], f"{entry['page']} {entry['example']!r} has no fixture"
        path = GRAPH / entry["fixture"]
        assert path.is_file(), f"{entry['fixture']} (for {entry['page']}) does not exist"
        fixture = load(path)
        assert fixture["source"].startswith(entry["page"]), entry["fixture"]
        if path.name.startswith("doc_"):  # the page's own example, named as the page heads it
            assert fixture["source"] == entry["page"], entry["fixture"]
            assert fixture["example"] == entry["example"], entry["fixture"]
        listed.add(path)
    unlisted = [p.name for p in FIXTURES if p.name.startswith("doc_") and p not in listed]
    assert not unlisted, f"not in index.json: {unlisted}"


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
async def test_fixture(
    path: Path, emulator: Emulator, client_ssl: ssl.SSLContext, aiohttp_client: AiohttpClient
) -> None:
    fixture = load(path)
    expect = fixture["expect"]
    calls, fired = collection(fixture)
    started = [
        calls.calls[fixture["call_id"]].operations[r["id"]]
        for r in fixture.get("started_operations", ())
    ]
    token = emulator.notification_keys[0].sign(
        {"iss": "https://api.botframework.com", "aud": APP_ID, "tid": TENANT_ID}
    )
    async with aiohttp.ClientSession() as session:
        validator = NotificationValidator(
            APP_ID, f"{emulator.base_url}/v1/.well-known/OpenIdConfiguration", session, client_ssl
        )
        client = await aiohttp_client(create_app(validator, calls))
        for body in fixture["batches"]:
            response = await client.post(
                WEBHOOK_PATH, json=body, headers={"Authorization": f"Bearer {token}"}
            )
            assert response.status == 202
        await calls.idle()

    call = calls.calls.get(fixture["call_id"])
    if "state" in expect:
        assert call is not None and call.state == expect["state"]
    if "states_seen" in expect:
        assert call is not None and call.states_seen == expect["states_seen"]
    if "result_info" in expect:
        assert call is not None and call.result_info is not None
        assert {k: call.result_info[k] for k in expect["result_info"]} == expect["result_info"]
    if "participants" in expect:
        assert call is not None and sorted(call.participants) == expect["participants"]
    if "muted" in expect:
        assert call is not None
        assert sorted(p.id for p in call.participants.values() if p.is_muted) == expect["muted"]
    if "msis" in expect:
        assert call is not None
        assert {str(k): v for k, v in call.msi_to_participant().items()} == expect["msis"]
    if "stale_rosters" in expect:
        assert call is not None and call.roster.stale_ignored == expect["stale_rosters"]
    if "tones" in expect:
        assert call is not None and list(call.tones_seen) == expect["tones"]
    if "operations" in expect:
        assert call is not None
        assert {k: op.status for k, op in call.operations.items()} == expect["operations"]
    if "resource" in expect:
        assert call is not None
        for key, value in expect["resource"].items():
            assert call.resource[key] == value
    if "operation_results" in expect:
        assert call is not None
        results = {k: call.operations[k].result for k in expect["operation_results"]}
        assert {
            k: {"code": r.code, "subcode": r.subcode} if r else None for k, r in results.items()
        } == expect["operation_results"]
    if "recording_locations" in expect:
        assert call is not None
        assert {
            k: call.operations[k].recording_location for k in expect["recording_locations"]
        } == expect["recording_locations"]
    if "completion_reasons" in expect:
        assert call is not None
        assert {
            k: call.operations[k].completion_reason for k in expect["completion_reasons"]
        } == expect["completion_reasons"]
    if "termination_reason" in expect:
        assert call is not None and call.termination_reason == expect["termination_reason"]
    if "lobby" in expect:
        assert call is not None and sorted(p.id for p in call.lobby) == expect["lobby"]
    if "participant_recording" in expect:
        assert call is not None
        assert {
            pid: call.participants[pid].recording_status for pid in expect["participant_recording"]
        } == expect["participant_recording"]
    if "screen_sharer" in expect:
        assert call is not None
        sharer = call.screen_sharer
        assert (sharer.id if sharer else None) == expect["screen_sharer"]
    if "large_gallery" in expect:
        assert call is not None
        gallery = call.large_gallery
        assert (gallery.id if gallery else None) == expect["large_gallery"]
        if gallery is not None:
            view = gallery.large_gallery_view
            assert view is not None and view.video_msi is not None
    if "media_state" in expect:
        assert call is not None and call.media_state == expect["media_state"]
    if "content_sharing_sessions" in expect:
        assert call is not None
        assert sorted(call.content_sharing) == expect["content_sharing_sessions"]
    for op in started:  # the action's waiter has the outcome the notification gave
        if op.status in ("completed", "failed"):
            assert op.done
    if "events" in expect:
        assert {k: fired[k] for k in expect["events"]} == expect["events"]
    assert calls.duplicates == expect.get("duplicates", 0)
    assert calls.ignored == expect.get("ignored", 0)
