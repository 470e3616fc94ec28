"""BOT_UNKNOWN_CALLS against real Graph-shaped notifications for a call this bot never had.

The call is real (the emulator's): it was placed through Graph with this bot's callback URL by
someone else, the way a previous process or another instance behind the same callback placed
it. Its notifications then reach this bot, validly signed, and the policy decides.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp
import pytest

from bot.app import Bot
from bot.call import Call
from bot.call_requests import meeting_body
from bot.graph import shapes
from bot.join_url import parse_join_url
from emulator import Emulator
from tests.conftest import APP_ID, running_bot

WITHIN = 10.0
SCALE = 0.05


def running(certs: Any, policy: str) -> AbstractAsyncContextManager[tuple[Emulator, Bot]]:
    return running_bot(certs, SCALE, unknown_calls=policy)


async def someone_elses_call(emulator: Emulator, bot: Bot) -> str:
    """POST /communications/calls with this bot's callback, not through `bot.join` (so not
    inside `calls.creating()`): a call placed by another process of the same app."""
    info = parse_join_url(emulator.join_url(emulator.config.meetings[0]))
    request = {
        "@odata.type": "#microsoft.graph.call",
        "callbackUri": bot.callback_url,
        "requestedModalities": ["audio"],
        "mediaConfig": shapes.service_hosted_media(),
        "tenantId": info.tenant_id,
        **meeting_body(info.chat_info(), info.meeting_info(), None),
    }
    created = await bot.graph.request("POST", "/communications/calls", request)
    return str(created["id"])


async def all_delivered(emulator: Emulator, call_id: str) -> None:
    """Until the emulator has posted the call's last notification (its sender ends after the
    call's `deleted`): each was answered, so each was applied or held."""
    sender = emulator.calls[call_id].sender
    assert sender is not None
    await asyncio.wait_for(asyncio.shield(sender), WITHIN)


def deletes(emulator: Emulator, call_id: str) -> int:
    return sum(1 for r in emulator.requests if r.method == "DELETE" and r.path.endswith(call_id))


async def test_ignore_logs_once_and_keeps_only_the_bounded_record(
    certs: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot.calls")
    async with running(certs, "ignore") as (emulator, bot):
        call_id = await someone_elses_call(emulator, bot)
        # The other process hangs it up: the bot has then heard the call's whole life.
        await bot.graph.request("DELETE", f"/communications/calls/{call_id}")
        await all_delivered(emulator, call_id)
        assert call_id not in bot.calls.calls
        assert bot.calls.unknown.ignored_calls == 1
        assert bot.calls.held >= 3  # establishing, established, ..., deleted: held, not applied
        lines = [r for r in caplog.records if "not created or answered here" in r.getMessage()]
        assert len(lines) == 1 and call_id in lines[0].getMessage()
        assert deletes(emulator, call_id) == 1  # the other process's: the bot left it alone


async def test_adopt_tracks_the_call_and_can_hang_it_up(certs: Any) -> None:
    async with running(certs, "adopt") as (emulator, bot):
        call_id = await someone_elses_call(emulator, bot)
        call: Call = await bot.calls.wait_for_call(call_id, WITHIN)
        await call.wait_for("established", WITHIN)
        assert call.adopted and bot.calls.unknown.adopted == 1
        assert call.media_session_id is None  # its media died with the other process
        await call.hang_up()
        await call.wait_for("terminated", WITHIN)
        await all_delivered(emulator, call_id)
        assert emulator.calls[call_id].state == "terminated"
        assert deletes(emulator, call_id) == 1


async def test_hangup_deletes_the_call_through_graph(certs: Any) -> None:
    async with running(certs, "hangup") as (emulator, bot):
        call_id = await someone_elses_call(emulator, bot)
        await all_delivered(emulator, call_id)  # it ends: the bot's DELETE
        await bot.calls.unknown.idle()
        assert emulator.calls[call_id].state == "terminated"
        assert call_id not in bot.calls.calls
        assert bot.calls.unknown.hung_up == 1 and bot.calls.unknown.hang_up_failed == 0
        assert deletes(emulator, call_id) == 1  # once, however many notifications came


@pytest.mark.parametrize("policy", ["ignore", "adopt", "hangup"])
async def test_the_bots_own_call_is_never_taken_for_an_unknown_one(certs: Any, policy: str) -> None:
    """Graph notifies before it answers the POST: while the bot's own create is in flight,
    nothing is decided, so its own call is learned, not adopted or hung up."""
    async with running(certs, policy) as (emulator, bot):
        call = await bot.join(emulator.join_url(emulator.config.meetings[0]), media="service")
        await call.wait_for("established", WITHIN)
        assert not call.adopted
        unknown = bot.calls.unknown
        assert (unknown.adopted, unknown.hung_up, unknown.ignored_calls) == (0, 0, 0)
        await call.hang_up()
        await call.wait_for("terminated", WITHIN)


async def test_an_incoming_call_is_handled_as_incoming_whatever_the_policy(
    certs: Any, client_ssl: ssl.SSLContext
) -> None:
    async with running(certs, "hangup") as (emulator, bot), aiohttp.ClientSession() as admin:
        ring = {"appId": APP_ID, "callbackUri": bot.callback_url}
        url = f"{emulator.base_url}/emulator/calls/incoming"
        async with admin.post(url, json=ring, ssl=client_ssl) as answer:
            assert answer.status == 201, await answer.text()
            call_id = (await answer.json())["callId"]
        call = await bot.calls.wait_for_call(call_id, WITHIN)
        await call.wait_for("established", WITHIN)  # the fallback answered it
        assert bot.calls.unknown.hung_up == 0 and not call.adopted
        await call.hang_up()
        await call.wait_for("terminated", WITHIN)
