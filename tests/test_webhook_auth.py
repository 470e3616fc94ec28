"""Forged notifications get 401 and change nothing
(https://learn.microsoft.com/en-us/microsoftteams/platform/bots/calls-and-meetings/call-notifications)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from pytest_aiohttp import AiohttpClient

from bot.calls import CallCollection
from bot.inbound_auth import (
    KEYS_MAX_AGE_SECONDS,
    KEYS_REFRESH_SECONDS,
    NEGATIVE_KID_SECONDS,
    UNKNOWN_KID_BURST,
    UNKNOWN_KID_REFRESH_SECONDS,
    NotificationValidator,
    TokenRejected,
)
from bot.webhook import STATS, WEBHOOK_PATH, create_app
from emulator import Emulator
from emulator.keys import SigningKey
from tests.conftest import APP_ID, TENANT_ID

CALL_ID = "0f1e2d3c-0000-4000-8000-00000000c411"
BODY = {
    "@odata.type": "#microsoft.graph.commsNotifications",
    "value": [
        {
            "@odata.type": "#microsoft.graph.commsNotification",
            "changeType": "updated",
            "resourceUrl": f"/communications/calls/{CALL_ID}",
            "resourceData": {"@odata.type": "#microsoft.graph.call", "state": "established"},
        }
    ],
}
GOOD_CLAIMS = {"iss": "https://api.botframework.com", "aud": APP_ID, "tid": TENANT_ID}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {**GOOD_CLAIMS, "iat": now, "nbf": now, "exp": now + 600, **changes}
    return {k: v for k, v in claims.items() if v is not None}


def _signed(key: SigningKey, claims: dict[str, Any], kid: str | None = None) -> str:
    return jwt.encode(claims, key.private_key, "RS256", headers={"kid": kid or key.kid})


def _hs256_with_public_key(key: SigningKey) -> str:
    """The classic algorithm-confusion forgery: HMAC keyed with the RSA public key's PEM."""
    pem = key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}).encode())
    body = _b64(json.dumps(_claims()).encode())
    mac = hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(mac)}"


def _flip_signature_byte(token: str) -> str:
    head, body, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=="))
    raw[10] ^= 0x01
    return f"{head}.{body}.{_b64(bytes(raw))}"


def _none_alg(key: SigningKey) -> str:
    head = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": key.kid}).encode())
    return f"{head}.{_b64(json.dumps(_claims()).encode())}."


Forgery = Callable[[SigningKey], str | None]
FORGERIES: dict[str, Forgery] = {
    "self-signed key": lambda k: _signed(SigningKey(), _claims(), kid=k.kid),
    "unknown kid": lambda k: _signed(SigningKey(), _claims()),
    "flipped byte": lambda k: _flip_signature_byte(_signed(k, _claims())),
    "alg none": _none_alg,
    "HS256 with the public key": _hs256_with_public_key,
    "wrong audience": lambda k: _signed(k, _claims(aud="someone-else")),
    "wrong issuer": lambda k: _signed(k, _claims(iss="https://evil.example")),
    "missing tenant": lambda k: _signed(k, _claims(tid=None)),
    "empty tenant": lambda k: _signed(k, _claims(tid="")),
    "expired beyond leeway": lambda k: _signed(k, _claims(exp=int(time.time()) - 301 - 10)),
    "not yet valid": lambda k: _signed(k, _claims(nbf=int(time.time()) + 900)),
    "missing header": lambda k: None,
    "garbage": lambda k: "not.a.jwt",
}


@pytest.fixture
async def webhook(
    emulator: Emulator, client_ssl: ssl.SSLContext, aiohttp_client: AiohttpClient
) -> Any:
    session = aiohttp.ClientSession()
    validator = NotificationValidator(
        APP_ID, f"{emulator.base_url}/v1/.well-known/OpenIdConfiguration", session, client_ssl
    )
    registry = CallCollection()
    client = await aiohttp_client(create_app(validator, registry))
    yield client, registry, validator
    await session.close()


async def _post(client: Any, token: str | None, body: Any = BODY) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await client.post(WEBHOOK_PATH, data=data, headers=headers)
    return int(response.status)


@pytest.mark.parametrize("name", sorted(FORGERIES))
async def test_forged_token_is_401_and_changes_nothing(
    name: str, webhook: Any, emulator: Emulator
) -> None:
    client, registry, validator = webhook
    token = FORGERIES[name](emulator.notification_keys[0])
    assert await _post(client, token) == 401
    assert registry.calls == {} and registry.held == 0
    assert validator.rejected == 1
    assert client.app[STATS].unauthorized == 1


async def test_valid_token_applies_the_notification(webhook: Any, emulator: Emulator) -> None:
    client, registry, _ = webhook
    registry.get_or_add(CALL_ID)  # a call the bot placed
    assert await _post(client, _signed(emulator.notification_keys[0], _claims())) == 202
    assert registry.calls[CALL_ID].state == "established"


async def test_expiry_inside_the_leeway_is_accepted(webhook: Any, emulator: Emulator) -> None:
    client, registry, _ = webhook
    registry.get_or_add(CALL_ID)  # a call the bot placed
    token = _signed(emulator.notification_keys[0], _claims(exp=int(time.time()) - 120))
    assert await _post(client, token) == 202
    assert registry.calls[CALL_ID].state == "established"


@pytest.mark.parametrize(
    "body", [b"{not json", b"[]", b'{"value": 3}', b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000]
)
async def test_malformed_body_is_400_and_changes_nothing(
    body: bytes, webhook: Any, emulator: Emulator
) -> None:
    client, registry, _ = webhook
    assert await _post(client, _signed(emulator.notification_keys[0], _claims()), body) == 400
    assert registry.calls == {} and registry.held == 0


async def test_unreachable_key_endpoint_fails_closed(
    client_ssl: ssl.SSLContext,
    emulator: Emulator,
    aiohttp_client: AiohttpClient,
    closed_port: int,
) -> None:
    async with aiohttp.ClientSession() as session:
        url = f"https://127.0.0.1:{closed_port}/v1/.well-known/OpenIdConfiguration"
        validator = NotificationValidator(APP_ID, url, session, client_ssl)
        registry = CallCollection()
        client = await aiohttp_client(create_app(validator, registry))
        assert await _post(client, _signed(emulator.notification_keys[0], _claims())) == 401
        assert registry.calls == {} and registry.held == 0


class FakeTime:
    """An injected clock and sleep: time moves only when the test says, and the test can wait
    until a given number of sleepers are asleep (the validator's schedule, a queued fetch)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.asleep = 0
        self._tick = asyncio.Event()
        self._changed = asyncio.Event()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        until = self.now + seconds
        self._count(+1)
        try:
            while self.now < until:
                await self._tick.wait()
        finally:
            self._count(-1)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()

    async def sleepers(self, count: int, within: float = 5.0) -> None:
        async with asyncio.timeout(within):
            while self.asleep != count:
                self._changed = asyncio.Event()
                await self._changed.wait()

    def _count(self, change: int) -> None:
        self.asleep += change
        self._changed.set()


def on_fake_time(
    emulator: Emulator, session: aiohttp.ClientSession, client_ssl: ssl.SSLContext, clock: FakeTime
) -> NotificationValidator:
    """The emulator's notification keys, fetched on the test's clock and sleep."""
    return NotificationValidator(
        APP_ID,
        f"{emulator.base_url}/v1/.well-known/OpenIdConfiguration",
        session,
        client_ssl,
        clock=clock,
        sleep=clock.sleep,
    )


@pytest.fixture
async def timed(
    emulator: Emulator, client_ssl: ssl.SSLContext, aiohttp_client: AiohttpClient
) -> AsyncIterator[tuple[Any, NotificationValidator, FakeTime]]:
    """The webhook with a validator on fake time, keys fetched at start-up, its schedule
    asleep."""
    clock = FakeTime()
    async with aiohttp.ClientSession() as session:
        validator = on_fake_time(emulator, session, client_ssl, clock)
        client = await aiohttp_client(create_app(validator, CallCollection()))
        await validator.prefetch()
        await clock.sleepers(1)  # the scheduled refresh, 2 h away
        assert emulator.hits["GET /v1/keys"] == 1
        yield client, validator, clock


FORGER = SigningKey()  # a key nobody published (made once: RSA key generation is slow)


def _forged() -> str:
    return _signed(FORGER, _claims(), kid=uuid.uuid4().hex)  # under a kid never seen


async def test_unknown_kids_get_a_burst_then_one_fetch_per_interval(
    timed: Any, emulator: Emulator
) -> None:
    client, validator, clock = timed
    forged = [_forged() for _ in range(UNKNOWN_KID_BURST)]
    for token in forged:  # the burst: each looked for at once
        assert await _post(client, token) == 401
    assert emulator.hits["GET /v1/keys"] == 1 + UNKNOWN_KID_BURST
    for token in forged:  # looked for already: refused at once, no fetch
        assert await _post(client, token) == 401
    assert emulator.hits["GET /v1/keys"] == 1 + UNKNOWN_KID_BURST
    assert validator.negative_hits == UNKNOWN_KID_BURST
    late = asyncio.ensure_future(_post(client, _forged()))  # the bucket is empty: it waits
    await clock.sleepers(2)
    assert not late.done() and emulator.hits["GET /v1/keys"] == 1 + UNKNOWN_KID_BURST
    clock.advance(UNKNOWN_KID_REFRESH_SECONDS)
    assert await asyncio.wait_for(late, 5) == 401
    assert emulator.hits["GET /v1/keys"] == 2 + UNKNOWN_KID_BURST
    assert await _post(client, _signed(emulator.notification_keys[0], _claims())) == 202
    clock.advance(NEGATIVE_KID_SECONDS + UNKNOWN_KID_REFRESH_SECONDS)  # forgotten, tokens back
    assert await _post(client, forged[0]) == 401
    assert emulator.hits["GET /v1/keys"] == 3 + UNKNOWN_KID_BURST


async def test_a_flood_of_forged_kids_costs_one_fetch_and_a_rotation_still_gets_in(
    timed: Any, emulator: Emulator
) -> None:
    """1,000 distinct forged kids at once share one fetch; with the bucket then emptied by
    more of them, Graph's new key waits for the next fetch (one interval) and is accepted."""
    client, validator, clock = timed
    flood = [validator.validate(f"Bearer {_forged()}") for _ in range(1000)]
    results = await asyncio.gather(*flood, return_exceptions=True)
    assert all(isinstance(r, TokenRejected) and r.reason == "unknown_key" for r in results)
    assert emulator.hits["GET /v1/keys"] == 2
    for _ in range(UNKNOWN_KID_BURST - 1):  # the rest of the burst, used up by forgers
        assert await _post(client, _forged()) == 401
    assert emulator.hits["GET /v1/keys"] == 1 + UNKNOWN_KID_BURST
    rotated = SigningKey()
    emulator.notification_keys.insert(0, rotated)  # Graph rotates its key
    genuine = asyncio.ensure_future(_post(client, _signed(rotated, _claims())))
    await clock.sleepers(2)  # it waits for the next fetch
    assert not genuine.done()

    async def advance() -> None:
        clock.advance(UNKNOWN_KID_REFRESH_SECONDS)

    # More forgers join the same fetch (tasks start in order: each has joined it before the
    # clock moves).
    more = [validator.validate(f"Bearer {_forged()}") for _ in range(50)]
    after = await asyncio.wait_for(asyncio.gather(*more, advance(), return_exceptions=True), 5)
    assert all(isinstance(r, TokenRejected) for r in after[:-1])
    assert await asyncio.wait_for(genuine, 5) == 202
    assert emulator.hits["GET /v1/keys"] == 2 + UNKNOWN_KID_BURST


async def test_an_outsized_kid_is_refused_without_a_fetch(timed: Any, emulator: Emulator) -> None:
    client, validator, _ = timed
    assert await _post(client, _signed(FORGER, _claims(), kid="k" * 4000)) == 401
    assert emulator.hits["GET /v1/keys"] == 1 and validator.negative_hits == 0


async def test_the_scheduled_refresh_picks_up_a_rotation_without_any_request(
    timed: Any, emulator: Emulator
) -> None:
    client, validator, clock = timed
    rotated = SigningKey()
    emulator.notification_keys.insert(0, rotated)
    clock.advance(KEYS_REFRESH_SECONDS)
    await clock.sleepers(0)  # awake: fetching
    await clock.sleepers(1)  # asleep again, until the next refresh
    assert emulator.hits["GET /v1/keys"] == 2 and validator.scheduled == 1
    assert await _post(client, _signed(rotated, _claims())) == 202
    assert emulator.hits["GET /v1/keys"] == 2 and validator.refreshes == 0


async def test_keys_nobody_could_refresh_are_dropped(
    client_ssl: ssl.SSLContext, emulator: Emulator, aiohttp_client: AiohttpClient
) -> None:
    """Fail closed: once the key endpoint has not answered for KEYS_MAX_AGE_SECONDS, even
    Graph's known key is refused."""
    clock = FakeTime()
    async with aiohttp.ClientSession() as session:
        validator = on_fake_time(emulator, session, client_ssl, clock)
        client = await aiohttp_client(create_app(validator, CallCollection()))
        await validator.prefetch()
        token = _signed(emulator.notification_keys[0], _claims())
        assert await _post(client, token) == 202
        await emulator.stop()  # the key endpoint goes away
        clock.advance(KEYS_MAX_AGE_SECONDS + 1)
        assert await _post(client, token) == 401
