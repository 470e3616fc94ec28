"""Attacks on the notification webhook's authentication and on the call state behind it, sent
to the real bot (issue 14): an in-process Bot with its real webhook over TLS, tokens signed
with the emulator's keys (Graph's, for this test), the emulator playing Graph and Teams.

- a forged key id, or a flood of them, must not keep out Graph's genuine key rotation
  (bot/inbound_auth.py);
- another tenant's validly signed notifications are refused when BOT_ALLOWED_TENANTS is set,
  accepted when it is empty (bot/inbound_auth.py, bot/webhook.py);
- notifications naming call ids the bot does not know allocate only a bounded, expiring
  record, and Graph's notifications that beat the answer to the bot's own POST still apply
  (bot/calls.py, bot/app.py `_create`).

The forger's requests come from 127.0.0.2, Graph's (the emulator's) from 127.0.0.1: an
attacker is not at Graph's address, and per-address limits must not be what these measure.
"""

from __future__ import annotations

import asyncio
import json
import math
import ssl
import time
import uuid
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp
import jwt
import pytest

from bot.app import Bot
from bot.calls import HELD_BYTES, HELD_NOTIFICATIONS, HELD_SECONDS
from bot.devcerts import DevCerts
from bot.inbound_auth import UNKNOWN_KID_BURST
from emulator import Emulator
from emulator.keys import SigningKey
from tests.conftest import APP_ID, TENANT_ID, running_bot

SCALE = 0.05  # Graph's timing rules 20x faster (an incoming call rings 0.75 s)
WITHIN = 10.0
OTHER_TENANT = "7e7e7e7e-0000-4000-8000-000000000002"  # emulator/scenarios/two-tenants.toml
SPEAKER = "p-1"  # the test meeting's participant (tests/conftest.py)
FORGER = SigningKey()  # a key nobody published (made once: RSA key generation is slow)
ATTACKER = "127.0.0.2"
ISSUER = "https://api.botframework.com"


def running(certs: DevCerts, **changes: Any) -> AbstractAsyncContextManager[tuple[Emulator, Bot]]:
    return running_bot(certs, SCALE, **changes)


def _client(
    client_ssl: ssl.SSLContext, address: str = ATTACKER, limit: int = 20
) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(ssl=client_ssl, local_addr=(address, 0), limit=limit)
    return aiohttp.ClientSession(connector=connector)


async def _post(
    session: aiohttp.ClientSession, bot: Bot, token: str, items: list[dict[str, Any]]
) -> int:
    body = {"@odata.type": "#microsoft.graph.commsNotifications", "value": items}
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with session.post(bot.callback_url, data=json.dumps(body), headers=headers) as answer:
        return answer.status


def _forged() -> str:
    """Signed with a key nobody published, under a kid never seen before."""
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": APP_ID, "tid": TENANT_ID, "nbf": now, "exp": now + 600}
    return _signed_as(FORGER, uuid.uuid4().hex, claims)


def _signed_as(key: SigningKey, kid: str, claims: dict[str, Any]) -> str:
    return jwt.encode(claims, key.private_key, "RS256", headers={"kid": kid})


def _genuine(emulator: Emulator, tenant: str = TENANT_ID) -> str:
    """What Graph would send: signed with its published key, for this app."""
    return emulator.notification_keys[0].sign({"iss": ISSUER, "aud": APP_ID, "tid": tenant})


def _state(call_id: str, state: str) -> dict[str, Any]:
    return {
        "changeType": "deleted" if state == "terminated" else "updated",
        "resourceUrl": f"/communications/calls/{call_id}",
        "resourceData": {"@odata.type": "#microsoft.graph.call", "state": state},
    }


async def _arm_rotation(
    emulator: Emulator, admin: aiohttp.ClientSession, client_ssl: ssl.SSLContext
) -> None:
    """Graph rotates its signing key: the next notification is signed with a new kid, which
    is published first (emulator/notifyfaults.py), the old one withdrawn."""
    url = f"{emulator.base_url}/emulator/faults/signing"
    async with admin.post(url, json={"rotate": {"keepOld": False}}, ssl=client_ssl) as answer:
        assert answer.status == 204, await answer.text()


async def _join_and_end(emulator: Emulator, bot: Bot) -> None:
    call = await bot.join(emulator.join_url(emulator.config.meetings[0]), media="service")
    await call.wait_for("established", WITHIN)
    await call.hang_up()
    await call.wait_for("terminated", WITHIN)


# -- key rotation against forged kids ----------------------------------------------------------


async def test_a_forged_kid_does_not_keep_out_a_key_rotation(
    certs: DevCerts, client_ssl: ssl.SSLContext
) -> None:
    """One forged kid, then Graph rotates its key a moment later (on 59d3d3f: inside the one
    fetch per 60 s the forged kid used, so every notification of the call was 401)."""
    async with running(certs) as (emulator, bot), _client(client_ssl) as attacker:
        assert await _post(attacker, bot, _forged(), [_state("x", "established")]) == 401
        fetched = emulator.hits["GET /v1/keys"]
        await _arm_rotation(emulator, attacker, client_ssl)
        await _join_and_end(emulator, bot)

        stats = bot.webhook_stats
        assert stats is not None and bot.validator is not None
        assert dict(stats.unauthorized_reasons) == {"unknown_key": 1}  # the forger's only
        assert bot.validator.rejected == 1
        assert emulator.fault_injector.counts["rotated"] == 1
        assert emulator.hits["GET /v1/keys"] == fetched + 1  # the new kid, fetched once
        calls = [r for r in emulator.requests if r.method == "GET" and "/calls/" in r.path]
        assert calls == []  # nothing had to be read back: no notification was lost


async def test_a_flood_of_forged_kids_does_not_keep_out_a_key_rotation(
    certs: DevCerts, client_ssl: ssl.SSLContext
) -> None:
    """300 distinct forged kids from 15 addresses, 20 connections each (each address stays
    inside its failed-authentication budget, media/listener.py, so every one reaches the
    validator; the unit test floods 1,000 at once: tests/test_webhook_auth.py), then Graph
    rotates its key: its notifications are accepted, and the key endpoint saw the burst and
    then at most one fetch per interval."""
    interval = 0.5
    addresses = [f"127.0.1.{n}" for n in range(1, 16)]
    async with running(certs, notification_key_refresh_seconds=interval) as (emulator, bot):
        before = emulator.hits["GET /v1/keys"]
        started = time.monotonic()

        async def forge(address: str) -> list[int]:
            async with _client(client_ssl, address) as attacker:
                body = [_state("x", "established")]
                return await asyncio.gather(
                    *(_post(attacker, bot, _forged(), body) for _ in range(20))
                )

        per_address = await asyncio.wait_for(asyncio.gather(*map(forge, addresses)), WITHIN)
        elapsed = time.monotonic() - started
        statuses = [status for answers in per_address for status in answers]
        assert statuses == [401] * 300
        fetches = emulator.hits["GET /v1/keys"] - before
        assert 1 <= fetches <= UNKNOWN_KID_BURST + math.ceil(elapsed / interval) + 1

        async with aiohttp.ClientSession() as admin:
            await _arm_rotation(emulator, admin, client_ssl)
        await _join_and_end(emulator, bot)
        assert bot.validator is not None
        assert bot.validator.rejected == 300  # the forgers', not one of Graph's
        assert emulator.fault_injector.counts["rotated"] == 1


# -- tenants -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("allowed", "admitted"),
    [((TENANT_ID,), False), ((), True), ((TENANT_ID, OTHER_TENANT.upper()), True)],
    ids=["other-tenant-refused", "any-tenant", "listed-in-other-case"],
)
async def test_another_tenants_call_is_refused_unless_its_tenant_is_allowed(
    certs: DevCerts, client_ssl: ssl.SSLContext, allowed: tuple[str, ...], admitted: bool
) -> None:
    """Graph rings the bot from another tenant (a multi-tenant app's call, validly signed
    for this app with that tenant's tid): with BOT_ALLOWED_TENANTS set to the bot's own
    tenant, the webhook answers 403 before the body is read and no call exists; empty, or
    listing that tenant, the call is answered (the fallback) and established."""
    async with (
        running(certs, allowed_tenants=allowed) as (emulator, bot),
        aiohttp.ClientSession() as admin,
    ):
        url = f"{emulator.base_url}/emulator/calls/incoming"
        ring = {"appId": APP_ID, "callbackUri": bot.callback_url, "tenantId": OTHER_TENANT}
        async with admin.post(url, json=ring, ssl=client_ssl) as answer:
            assert answer.status == 201, await answer.text()
            call_id = (await answer.json())["callId"]
        stats = bot.webhook_stats
        assert stats is not None
        if admitted:
            call = await bot.calls.wait_for_call(call_id, WITHIN)
            await call.wait_for("established", WITHIN)
            await call.hang_up()
            await call.wait_for("terminated", WITHIN)
            assert stats.unauthorized == 0
        else:
            sender = emulator.calls[call_id].sender
            assert sender is not None
            await asyncio.wait_for(asyncio.shield(sender), WITHIN)  # rang out, unanswered
            assert call_id not in bot.calls.calls and bot.calls.held == 0
            assert stats.accepted == 0 and stats.unauthorized > 0
            assert dict(stats.unauthorized_reasons) == {"tenant_not_allowed": stats.unauthorized}
            assert emulator.calls[call_id].state == "terminated"
        # The bot's own tenant is accepted whatever the list.
        async with _client(client_ssl) as graph_like:
            assert await _post(graph_like, bot, _genuine(emulator), []) == 202


# -- notifications for calls the bot does not know --------------------------------------------


def _unknown_items(count: int) -> list[dict[str, Any]]:
    """Every kind of notification, for call ids nobody created."""
    items: list[dict[str, Any]] = []
    for n in range(count):
        call_id = f"unknown-{n}-{uuid.uuid4().hex[:8]}"
        kind = n % 6
        if kind == 0:
            items.append(_state(call_id, "established"))
        elif kind == 1:
            items.append(_state(call_id, "establishing"))
        elif kind == 2:
            items.append(_state(call_id, "terminated"))
        elif kind == 3:
            items.append(
                {
                    "changeType": "updated",
                    "resourceUrl": f"/communications/calls/{call_id}/participants",
                    "resourceData": [{"id": f"p-{n}", "isMuted": False}],
                }
            )
        elif kind == 4:
            items.append(
                {
                    "changeType": "deleted",
                    "resourceUrl": f"/communications/calls/{call_id}/operations/op-{n}",
                    "resourceData": {"id": f"op-{n}", "status": "completed"},
                }
            )
        else:  # an incoming call's state without its `created`: not an incoming call either
            items.append({**_state(call_id, "incoming"), "changeType": "updated"})
    return items


def _tasks() -> list[str]:
    """Every task but the webhook's connections (one per open connection, aiohttp's)."""
    names = (getattr(t.get_coro(), "__qualname__", "") for t in asyncio.all_tasks())
    return sorted(n for n in names if n != "RequestHandler.start")


def _call_tasks() -> list[str]:
    """Tasks a call owns: its event worker, keep-alive, reads back."""
    names = []
    for task in asyncio.all_tasks():
        qualname = getattr(task.get_coro(), "__qualname__", "")
        if qualname.split(".")[0] in ("CallCollection", "KeepAlive", "Reconciler"):
            names.append(qualname)
        elif task.get_name().startswith("keepalive:"):
            names.append(task.get_name())
    return names


async def test_notifications_for_unknown_calls_allocate_only_a_bounded_expiring_record(
    certs: DevCerts, client_ssl: ssl.SSLContext
) -> None:
    """1,000 validly signed notifications for call ids nobody created, established ones among
    them (on 59d3d3f: 1,000 calls, a keep-alive loop per established one). Now: no call, no
    task, at most HELD_NOTIFICATIONS held, and those expire."""
    now = [0.0]
    async with running(certs) as (emulator, bot), _client(client_ssl) as sender:
        bot.calls.clock = lambda: now[0]  # the held records' clock, moved by the test
        tasks_before = _tasks()
        items = _unknown_items(1000)
        token = _genuine(emulator)
        for start in range(0, len(items), 100):
            assert await _post(sender, bot, token, items[start : start + 100]) == 202

        assert bot.calls.calls == {}
        assert _call_tasks() == []
        assert bot.calls.held == 1000
        assert bot.calls.held_now == HELD_NOTIFICATIONS
        assert bot.calls.held_bytes <= HELD_BYTES
        assert bot.calls.held_dropped == 1000 - HELD_NOTIFICATIONS
        assert _tasks() == tasks_before

        now[0] += HELD_SECONDS
        bot.calls.expire_held()
        assert bot.calls.held_now == 0 and bot.calls.held_bytes == 0
        assert bot.calls.held_expired == HELD_NOTIFICATIONS
        assert bot.calls.calls == {} and _call_tasks() == []


async def test_notifications_before_the_create_answer_still_apply(
    certs: DevCerts, client_ssl: ssl.SSLContext
) -> None:
    """Graph's first notifications for a call the bot places can arrive before Graph's answer
    to the POST: they are held, and applied, in order, when the answer names the call. Here
    the answer is held back until the emulator has delivered the call's established and
    roster notifications to the bot's webhook (202), so they are certain to come first."""
    async with running(certs) as (emulator, bot):
        delivered = asyncio.Event()
        post_notifications = emulator.post_notifications

        async def post_and_tell(*args: Any, **kwargs: Any) -> int:
            status = await post_notifications(*args, **kwargs)
            items = args[1]
            if any(str(i.get("resourceUrl", "")).endswith("/participants") for i in items):
                delivered.set()  # the roster follows established
            return status

        emulator.post_notifications = post_and_tell  # type: ignore[method-assign]
        request = bot.graph.request

        async def answer_late(method: str, path: str, *args: Any, **kwargs: Any) -> Any:
            answer = await request(method, path, *args, **kwargs)
            if method == "POST" and path == "/communications/calls":
                await asyncio.wait_for(delivered.wait(), WITHIN)
            return answer

        bot.graph.request = answer_late  # type: ignore[method-assign]
        meeting = emulator.join_url(emulator.config.meetings[0])
        call = await bot.join(meeting, media="service", delta_roster=True)
        # Known as soon as join returns: established, the roster merged as a delta roster.
        assert call.state == "established"
        assert call.states_seen == ["establishing", "established"]
        assert SPEAKER in call.participants
        assert bot.calls.held_applied >= 2 and bot.calls.held_now == 0
        assert f"keepalive:{call.id}" in {t.get_name() for t in asyncio.all_tasks()}
        await call.hang_up()
        await call.wait_for("terminated", WITHIN)
        assert bot.webhook_stats is not None and bot.webhook_stats.unauthorized == 0
