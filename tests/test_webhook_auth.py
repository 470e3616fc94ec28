"""Forged notifications get 401 and change nothing
(https://learn.microsoft.com/en-us/microsoftteams/platform/bots/calls-and-meetings/call-notifications)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import ssl
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from pytest_aiohttp import AiohttpClient

from bot.calls import CallCollection
from bot.inbound_auth import NotificationValidator
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
    assert registry.calls == {}
    assert validator.rejected == 1
    assert client.app[STATS].unauthorized == 1


async def test_valid_token_applies_the_notification(webhook: Any, emulator: Emulator) -> None:
    client, registry, _ = webhook
    assert await _post(client, _signed(emulator.notification_keys[0], _claims())) == 202
    assert registry.calls[CALL_ID].state == "established"


async def test_expiry_inside_the_leeway_is_accepted(webhook: Any, emulator: Emulator) -> None:
    client, registry, _ = webhook
    token = _signed(emulator.notification_keys[0], _claims(exp=int(time.time()) - 120))
    assert await _post(client, token) == 202
    assert CALL_ID in registry.calls


@pytest.mark.parametrize(
    "body", [b"{not json", b"[]", b'{"value": 3}', b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000]
)
async def test_malformed_body_is_400_and_changes_nothing(
    body: bytes, webhook: Any, emulator: Emulator
) -> None:
    client, registry, _ = webhook
    assert await _post(client, _signed(emulator.notification_keys[0], _claims()), body) == 400
    assert registry.calls == {}


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
        assert registry.calls == {}


async def test_key_refresh_is_rate_limited_whatever_the_kid(
    emulator: Emulator, client_ssl: ssl.SSLContext, aiohttp_client: AiohttpClient
) -> None:
    now = [1000.0]
    async with aiohttp.ClientSession() as session:
        validator = NotificationValidator(
            APP_ID,
            f"{emulator.base_url}/v1/.well-known/OpenIdConfiguration",
            session,
            client_ssl,
            clock=lambda: now[0],
        )
        client = await aiohttp_client(create_app(validator, CallCollection()))
        key = emulator.notification_keys[0]
        assert await _post(client, _signed(key, _claims())) == 202
        for _ in range(5):  # forged kids inside the minute: no fetch at all
            assert await _post(client, _signed(SigningKey(), _claims())) == 401
        assert emulator.hits["GET /v1/keys"] == 1
        now[0] += 61
        for _ in range(5):  # past the minute: one fetch for all of them
            assert await _post(client, _signed(SigningKey(), _claims())) == 401
        assert emulator.hits["GET /v1/keys"] == 2
        assert await _post(client, _signed(key, _claims())) == 202
        now[0] += 2 * 3600 + 1  # keys past their age are refreshed before use
        assert await _post(client, _signed(key, _claims())) == 202
        assert emulator.hits["GET /v1/keys"] == 3
