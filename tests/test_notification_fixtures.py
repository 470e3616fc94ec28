"""Every notification shape in fixtures/graph/ through the real webhook, validly signed.

Each fixture names the Graph document it follows and the state it must leave behind.
"""

from __future__ import annotations

import json
import ssl
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pytest_aiohttp import AiohttpClient

from bot.calls import CallCollection
from bot.inbound_auth import NotificationValidator
from bot.webhook import WEBHOOK_PATH, create_app
from emulator import Emulator
from tests.conftest import APP_ID, TENANT_ID

FIXTURES = sorted((Path(__file__).parent.parent / "fixtures" / "graph").glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _rings(fixture: dict[str, Any]) -> bool:
    """The fixture's call is an incoming one: its first notification is `created`, incoming."""
    first = fixture["batches"][0]["value"][0]
    data = first.get("resourceData")
    return (
        first.get("changeType") == "created"
        and isinstance(data, dict)
        and (data.get("state") == "incoming")
    )


def test_there_are_fixtures() -> None:
    assert len(FIXTURES) >= 20


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
async def test_fixture(
    path: Path, emulator: Emulator, client_ssl: ssl.SSLContext, aiohttp_client: AiohttpClient
) -> None:
    fixture = load(path)
    expect = fixture["expect"]
    calls = CallCollection()
    fired: Counter[str] = Counter()
    for name in (
        "state",
        "participants",
        "tone",
        "operation",
        "terminated",
        "content_sharing",
        "incoming_call",
    ):
        calls.events.on(name, lambda *args, _n=name: fired.update([_n]))
    if not _rings(fixture):  # else Graph rings the bot, and its `created` adds the call
        # The bot placed the call: its POST answer named it (notifications for calls it does
        # not know are only held, bot/calls.py).
        calls.get_or_add(fixture["call_id"]).delta_roster = bool(fixture.get("delta_roster"))
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
    if "events" in expect:
        assert {k: fired[k] for k in expect["events"]} == expect["events"]
    assert calls.duplicates == expect.get("duplicates", 0)
    assert calls.ignored == expect.get("ignored", 0)
