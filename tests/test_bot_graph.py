"""The bot against the emulator over real HTTPS, with real MSAL tokens."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import trustme

from bot.app import Bot
from bot.call import CallEndedError
from bot.devcerts import DevCerts
from bot.errors import GraphAuthError, GraphError, GraphThrottledError
from bot.graph.auth import TokenProvider
from bot.graph.client import GraphClient
from emulator import Emulator, EmulatorConfig
from emulator.server import AppRegistration
from tests.conftest import APP_ID, TENANT_ID, settings_for


@pytest.fixture
async def graph(emulator: Emulator, certs: DevCerts) -> AsyncIterator[GraphClient]:
    tokens = TokenProvider(APP_ID, "test-secret", f"{emulator.base_url}/{TENANT_ID}", certs.ca_file)
    async with aiohttp.ClientSession() as session:
        import ssl

        yield GraphClient(
            f"{emulator.base_url}/v1.0",
            tokens,
            session,
            ssl.create_default_context(cafile=certs.ca_file),
        )


async def test_wrong_secret_is_a_typed_auth_error(emulator: Emulator, certs: DevCerts) -> None:
    tokens = TokenProvider(APP_ID, "wrong", f"{emulator.base_url}/{TENANT_ID}", certs.ca_file)
    with pytest.raises(GraphAuthError) as caught:
        await tokens.token()
    assert caught.value.code == "invalid_client"


async def test_msal_token_is_cached(emulator: Emulator, certs: DevCerts) -> None:
    tokens = TokenProvider(APP_ID, "test-secret", f"{emulator.base_url}/{TENANT_ID}", certs.ca_file)
    assert await tokens.token() == await tokens.token()
    assert emulator.hits["POST /{tenant}/oauth2/v2.0/token"] == 1


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"@odata.type": "#microsoft.graph.call"}, 400),
        ({"@odata.type": "#microsoft.graph.call", "callbackUri": "http://plain"}, 400),
        ([1, 2, 3], 400),
    ],
)
async def test_graph_rejects_malformed_calls_with_typed_errors(
    graph: GraphClient, body: object, status: int
) -> None:
    with pytest.raises(GraphError) as caught:
        await graph.request("POST", "/communications/calls", body)  # type: ignore[arg-type]
    assert caught.value.status == status
    assert caught.value.code == "BadRequest"


async def test_unknown_call_is_404(graph: GraphClient) -> None:
    with pytest.raises(GraphError) as caught:
        await graph.request("DELETE", "/communications/calls/00000000-0000-0000-0000-000000000000")
    assert caught.value.status == 404


async def test_unreachable_media_endpoint_ends_the_call_with_7112(
    emulator: Emulator, certs: DevCerts, closed_port: int
) -> None:
    """The classic misconfiguration: the blob advertises a port nobody listens on."""
    bot = Bot(settings_for(emulator, certs).replace(instance_public_port=closed_port))
    await bot.start()
    try:
        call = await bot.join(emulator.join_url(emulator.config.meetings[0]))
        with pytest.raises(CallEndedError):
            await call.wait_for("established", 15.0)
    finally:
        await bot.stop()
    assert call.states_seen[-1] == "terminated"
    assert call.result_info is not None
    assert (call.result_info["code"], call.result_info["subcode"]) == (500, 7112)
    # Graph ended the call, so the bot released its media session without being told to.
    assert bot.media.hot_loop.session_count == 0


async def test_join_url_for_unknown_meeting_is_404_and_frees_the_media_session(
    emulator: Emulator, certs: DevCerts
) -> None:
    bot = Bot(settings_for(emulator, certs))
    await bot.start()
    try:
        url = emulator.join_url(emulator.config.meetings[0]).replace("dGVzdA", "bm9uZQ")
        with pytest.raises(GraphError) as caught:
            await bot.join(url)
        assert caught.value.status == 404
        assert bot.media.hot_loop.session_count == 0
    finally:
        await bot.stop()


async def test_certificate_credential_gets_a_token(certs: DevCerts, tmp_path: Path) -> None:
    """MSAL signs a client assertion with the app's certificate; the token endpoint checks it."""
    ca = trustme.CA(key_type=trustme.KeyType.RSA)  # certificate credentials are RSA keys
    app_cert = ca.issue_cert("graph-media-bot.example", key_type=trustme.KeyType.RSA)
    pem = tmp_path / "app.pem"
    app_cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
    other = tmp_path / "other.pem"
    stranger = ca.issue_cert("someone-else.example", key_type=trustme.KeyType.RSA)
    stranger.private_key_and_cert_chain_pem.write_to_path(str(other))
    emu = Emulator(
        EmulatorConfig(
            cert_file=certs.cert_file,
            key_file=certs.key_file,
            apps={
                APP_ID: AppRegistration(
                    APP_ID, None, TENANT_ID, app_cert.cert_chain_pems[0].bytes()
                )
            },
        )
    )
    await emu.start()
    try:
        authority = f"{emu.base_url}/{TENANT_ID}"
        token = await TokenProvider(APP_ID, None, authority, certs.ca_file, str(pem)).token()
        assert jwt.decode(token, options={"verify_signature": False})["appid"] == APP_ID
        with pytest.raises(GraphAuthError) as caught:
            await TokenProvider(APP_ID, None, authority, certs.ca_file, str(other)).token()
        assert caught.value.code == "invalid_client"
        with pytest.raises(GraphAuthError):  # a secret where only a certificate is registered
            await TokenProvider(APP_ID, "guess", authority, certs.ca_file).token()
    finally:
        await emu.stop()


async def test_tokens_near_expiry_are_refreshed(certs: DevCerts) -> None:
    """MSAL refreshes a token within 5 minutes of its expiry; a 60 s token is never reused."""
    emu = Emulator(
        EmulatorConfig(
            cert_file=certs.cert_file,
            key_file=certs.key_file,
            apps={APP_ID: AppRegistration(APP_ID, "test-secret", TENANT_ID)},
            token_lifetime_seconds=60.0,
        )
    )
    await emu.start()
    try:
        tokens = TokenProvider(APP_ID, "test-secret", f"{emu.base_url}/{TENANT_ID}", certs.ca_file)
        await tokens.token()
        await tokens.token()
        assert emu.hits["POST /{tenant}/oauth2/v2.0/token"] == 2
    finally:
        await emu.stop()


async def test_504_is_retried_for_reads_only(aiohttp_server: Any, certs: DevCerts) -> None:
    """A 504 may mean "done, but late": repeating a POST could answer or transfer twice."""
    from aiohttp import web

    seen: list[str] = []

    async def timeout(request: web.Request) -> web.Response:
        seen.append(request.method)
        return web.json_response({"error": {"code": "GatewayTimeout"}}, status=504)

    app = web.Application()
    app.router.add_route("*", "/x", timeout)
    server = await aiohttp_server(app)

    class NoToken(TokenProvider):
        async def token(self) -> str:
            return "t"

    async def no_sleep(seconds: float) -> None:
        return None

    async with aiohttp.ClientSession() as session:
        graph = GraphClient(
            str(server.make_url("")),
            NoToken("a", "s", "https://x/t", None),
            session,
            sleep=no_sleep,
        )
        with pytest.raises(GraphThrottledError):
            await graph.request("POST", "/x", {})
        with pytest.raises(GraphThrottledError):
            await graph.request("GET", "/x")
    assert seen == ["POST", "GET", "GET", "GET", "GET"]


async def test_a_client_assertion_cannot_be_replayed(certs: DevCerts) -> None:
    """RFC 7523 section 3: the token endpoint remembers each assertion's jti until it expires."""
    import base64
    import time
    import uuid

    from cryptography.hazmat.primitives import hashes

    ca = trustme.CA(key_type=trustme.KeyType.RSA)
    leaf = ca.issue_cert("graph-media-bot.example", key_type=trustme.KeyType.RSA)
    cert_pem = leaf.cert_chain_pems[0].bytes()
    emu = Emulator(
        EmulatorConfig(
            cert_file=certs.cert_file,
            key_file=certs.key_file,
            apps={APP_ID: AppRegistration(APP_ID, None, TENANT_ID, cert_pem)},
        )
    )
    await emu.start()
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
        token_url = f"{emu.base_url}/{TENANT_ID}/oauth2/v2.0/token"
        now = int(time.time())
        x5t = base64.urlsafe_b64encode(cert.fingerprint(hashes.SHA256())).decode()
        claims = {
            "iss": APP_ID,
            "sub": APP_ID,
            "aud": token_url,
            "jti": str(uuid.uuid4()),
            "nbf": now,
            "exp": now + 300,
        }
        assertion = jwt.encode(claims, key, "PS256", headers={"x5t#S256": x5t})  # type: ignore[arg-type]
        form = {
            "grant_type": "client_credentials",
            "client_id": APP_ID,
            "scope": "https://graph.microsoft.com/.default",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
        }
        import ssl as _ssl

        ctx = _ssl.create_default_context(cafile=certs.ca_file)
        async with aiohttp.ClientSession() as session:
            statuses = []
            for _ in range(2):
                async with session.post(token_url, data=form, ssl=ctx) as response:
                    statuses.append(response.status)
        assert statuses == [200, 401]
    finally:
        await emu.stop()


def test_the_admin_api_is_for_loopback_only() -> None:
    from emulator.admin import _loopback

    assert _loopback("127.0.0.1") and _loopback("::1")
    assert not _loopback("192.0.2.7") and not _loopback(None) and not _loopback("junk")
