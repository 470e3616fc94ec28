"""The identity side: an OAuth 2.0 client-credentials token endpoint with OpenID discovery that
the real MSAL library accepts, and the OpenID configuration that publishes the key signing call
notifications (the https://api.aps.skype.com/v1/.well-known/OpenIdConfiguration document,
https://learn.microsoft.com/en-us/microsoftteams/platform/bots/calls-and-meetings/call-notifications)."""

from __future__ import annotations

import base64
import hmac
import time
from typing import TYPE_CHECKING

import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes

if TYPE_CHECKING:
    from emulator.server import AppRegistration, Emulator

GRAPH_RESOURCE = "https://graph.microsoft.com"
NOTIFICATION_ISSUER = "https://api.botframework.com"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_ASSERTION_LIFETIME_SECONDS = 3600.0
MAX_REMEMBERED_ASSERTIONS = 10_000


def routes(emulator: Emulator) -> list[web.RouteDef]:
    async def openid_configuration(request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        base = f"{emulator.base_url}/{tenant}"
        return web.json_response(
            {
                "issuer": f"https://login.microsoftonline.com/{tenant}/v2.0",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "response_types_supported": ["code", "id_token", "token"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": ["client_secret_post"],
                "tenant_region_scope": "EU",
            }
        )

    async def token(request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        form = await request.post()
        if form.get("grant_type") != "client_credentials":
            return _oauth_error(400, "unsupported_grant_type", "AADSTS70003: grant type")
        app = emulator.config.apps.get(str(form.get("client_id", "")))
        if app is None or app.tenant_id != tenant:
            return _oauth_error(400, "unauthorized_client", "AADSTS700016: unknown application")
        if form.get("client_assertion_type") == ASSERTION_TYPE:
            token_url = f"{emulator.base_url}/{tenant}/oauth2/v2.0/token"  # not from Host
            problem = _check_assertion(
                app, str(form.get("client_assertion", "")), token_url, emulator.seen_assertions
            )
            if problem:
                return _oauth_error(401, "invalid_client", problem)
        elif app.secret is None or not hmac.compare_digest(
            str(form.get("client_secret", "")).encode(), app.secret.encode()
        ):
            return _oauth_error(401, "invalid_client", "AADSTS7000215: invalid client secret")
        if form.get("scope") != f"{GRAPH_RESOURCE}/.default":
            return _oauth_error(400, "invalid_scope", "AADSTS70011: scope must be Graph .default")
        lifetime = emulator.config.token_lifetime_seconds
        access_token = emulator.token_key.sign(
            {
                "aud": GRAPH_RESOURCE,
                "iss": f"https://sts.windows.net/{tenant}/",
                "appid": app.app_id,
                "tid": tenant,
                "roles": ["Calls.JoinGroupCall.All", "Calls.AccessMedia.All"],
            },
            lifetime,
        )
        return web.json_response(
            {
                "token_type": "Bearer",
                "expires_in": int(lifetime),
                "ext_expires_in": int(lifetime),
                "access_token": access_token,
            }
        )

    async def keys(request: web.Request) -> web.Response:
        return web.json_response({"keys": [emulator.token_key.jwk()]})

    async def notification_openid(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": NOTIFICATION_ISSUER,
                "jwks_uri": f"{emulator.base_url}/v1/keys",
                "id_token_signing_alg_values_supported": ["RS256"],
            }
        )

    async def notification_keys(request: web.Request) -> web.Response:
        return web.json_response({"keys": [k.jwk() for k in emulator.notification_keys]})

    return [
        web.get("/{tenant}/v2.0/.well-known/openid-configuration", openid_configuration),
        web.post("/{tenant}/oauth2/v2.0/token", token),
        web.get("/{tenant}/discovery/v2.0/keys", keys),
        web.get("/v1/.well-known/OpenIdConfiguration", notification_openid),
        web.get("/v1/keys", notification_keys),
    ]


def _check_assertion(
    app: AppRegistration, assertion: str, token_url: str, seen: dict[str, float]
) -> str | None:
    """A certificate credential (RFC 7523 2.2; Microsoft identity platform "certificate
    credentials"): a JWT signed with the app's key, naming the certificate by thumbprint,
    with aud = the token endpoint and iss = sub = the client id."""
    if app.certificate_pem is None:
        return "AADSTS700027: no certificate is registered for this application"
    cert = x509.load_pem_x509_certificate(app.certificate_pem)
    try:
        header = jwt.get_unverified_header(assertion)
        # The certificate is named by its SHA-1 (x5t) or SHA-256 (x5t#S256) thumbprint
        # (RFC 7515 4.1.7, 4.1.8); MSAL sends the latter when it has the certificate itself.
        named = {
            "x5t": _thumbprint(cert, hashes.SHA1()),
            "x5t#S256": _thumbprint(cert, hashes.SHA256()),
        }
        # Compared without base64 padding: MSAL pads, JWS convention does not.
        if not any(str(header.get(k, "")).rstrip("=") == v for k, v in named.items()):
            return "AADSTS700027: the assertion names another certificate (x5t)"
        claims = jwt.decode(
            assertion,
            cert.public_key(),  # type: ignore[arg-type]
            algorithms=["RS256", "PS256"],
            audience=token_url,
            options={"require": ["exp", "iss", "sub", "aud", "jti"]},
        )
    except jwt.InvalidTokenError as exc:
        return f"AADSTS700027: client assertion failed validation: {exc}"
    if claims["iss"] != app.app_id or claims["sub"] != app.app_id:
        return "AADSTS700027: the assertion's iss and sub must be the client id"
    now = time.time()
    if float(claims["exp"]) - now > MAX_ASSERTION_LIFETIME_SECONDS:
        return "AADSTS700027: the assertion is valid for too long"
    for jti in [j for j, exp in seen.items() if exp < now]:
        del seen[jti]
    if claims["jti"] in seen or len(seen) >= MAX_REMEMBERED_ASSERTIONS:
        return "AADSTS700027: the assertion was already used"  # RFC 7523 3: jti replay
    seen[str(claims["jti"])] = float(claims["exp"])
    return None


def _thumbprint(cert: x509.Certificate, algorithm: hashes.HashAlgorithm) -> str:
    return base64.urlsafe_b64encode(cert.fingerprint(algorithm)).rstrip(b"=").decode()


def _oauth_error(status: int, error: str, description: str) -> web.Response:
    # RFC 6749 section 5.2 error response.
    return web.json_response({"error": error, "error_description": description}, status=status)
