"""The emulator's Graph calls API on its own: raw HTTPS requests with a token from its token
endpoint, notifications received by a small HTTPS webhook, and, for app-hosted media, a small
aiortc answerer standing in for the bot's media endpoint. Neither bot nor media is imported."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from emulator import Emulator, EmulatorConfig
from emulator.participant import Meeting, ParticipantScript
from emulator.server import AppRegistration

APP = "aaaaaaaa-0000-4000-8000-00000000a001"
OTHER_APP = "bbbbbbbb-0000-4000-8000-00000000b002"
SECRET = "emulator-test-secret"
TENANT = "eeeeeeee-0000-4000-8000-0000000000e1"
OTHER_TENANT = "ffffffff-0000-4000-8000-0000000000f2"
DECLINER = "dddddddd-0000-4000-8000-00000000d0d0"
THREAD = "19:meeting_ZW11bGF0b3I@thread.v2"
MEETING_ID = "3141592653"
PASSCODE = "pa55"
SPEAKER_MSI = 0x1234
CALL_TYPE = "#microsoft.graph.call"
SERVICE_MEDIA = {"@odata.type": "#microsoft.graph.serviceHostedMediaConfig"}
Item = dict[str, Any]


class CertFiles(Protocol):
    ca_file: str
    cert_file: str
    key_file: str


def user(user_id: str, name: str = "Someone") -> Item:
    return {
        "@odata.type": "#microsoft.graph.invitationParticipantInfo",
        "identity": {"user": {"id": user_id, "displayName": name}},
    }


def server_ssl(certs: CertFiles) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.cert_file, certs.key_file)
    return context


class Receiver:
    """The app's webhook: records every notification item, with the batch's bearer token."""

    def __init__(self) -> None:
        self.items: list[Item] = []
        self.tokens: list[str] = []
        self._changed = asyncio.Condition()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        async with self._changed:
            self.tokens.append(request.headers.get("Authorization", "")[len("Bearer ") :])
            self.items.extend(body["value"])
            self._changed.notify_all()
        return web.Response(status=202)

    async def wait(self, predicate: Callable[[list[Item]], bool], limit: float = 10.0) -> None:
        """Until the notifications so far satisfy the predicate (TimeoutError after limit s)."""
        async with asyncio.timeout(limit), self._changed:
            await self._changed.wait_for(lambda: predicate(self.items))

    def of(self, call_id: str, suffix: str = "") -> list[Item]:
        url = f"/communications/calls/{call_id}{suffix}"
        return [i for i in self.items if i["resourceUrl"] == url]

    def states(self, call_id: str) -> list[str]:
        states: list[str] = []
        for item in self.of(call_id):
            state = item["resourceData"].get("state")
            if not states or states[-1] != state:
                states.append(state)
        return states

    def rosters(self, call_id: str) -> list[Any]:
        return [i["resourceData"] for i in self.of(call_id, "/participants")]

    def operation(self, call_id: str, operation_id: str) -> list[Item]:
        return self.of(call_id, f"/operations/{operation_id}")

    async def until_state(self, call_id: str, state: str) -> Item:
        await self.wait(lambda _: state in self.states(call_id))
        return next(i for i in self.of(call_id) if i["resourceData"].get("state") == state)

    async def until_rosters(self, call_id: str, count: int) -> list[Any]:
        await self.wait(lambda _: len(self.rosters(call_id)) >= count)
        return self.rosters(call_id)

    async def until_operation(self, call_id: str, operation_id: str) -> Item:
        await self.wait(lambda _: bool(self.operation(call_id, operation_id)))
        return self.operation(call_id, operation_id)[0]


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]


class Graph:
    """Raw Graph requests with a client-credentials token, as an app would make them."""

    def __init__(self, session: aiohttp.ClientSession, emu: Emulator, trust: ssl.SSLContext):
        self._session, self._emu, self._ssl = session, emu, trust
        self.token = ""

    async def login(self, app_id: str = APP, tenant: str = TENANT) -> Graph:
        # The form MSAL posts for client credentials (RFC 6749 section 4.4).
        form = {
            "grant_type": "client_credentials",
            "client_id": app_id,
            "client_secret": SECRET,
            "scope": "https://graph.microsoft.com/.default",
        }
        url = f"{self._emu.base_url}/{tenant}/oauth2/v2.0/token"
        async with self._session.post(url, data=form, ssl=self._ssl) as response:
            assert response.status == 200, await response.text()
            self.token = (await response.json())["access_token"]
        return self

    async def send(
        self, method: str, path: str, body: Any = None, *, token: str | None = None
    ) -> Reply:
        headers = {"Authorization": f"Bearer {self.token if token is None else token}"}
        if token == "":
            headers = {}
        url = f"{self._emu.base_url}{path}" if path.startswith("/") else path
        data = None if body is None else json.dumps(body)
        if data is not None:
            headers["Content-Type"] = "application/json"
        async with self._session.request(
            method, url, data=data, headers=headers, ssl=self._ssl
        ) as response:
            raw = await response.read()
            is_json = response.content_type == "application/json"
            return Reply(
                response.status, json.loads(raw) if is_json else raw, dict(response.headers)
            )

    async def call(self, method: str, call_id: str, action: str = "", body: Any = None) -> Reply:
        path = f"/v1.0/communications/calls/{call_id}" + (f"/{action}" if action else "")
        return await self.send(method, path, body)


class MediaEndpoint:
    """The bot's media endpoint, reduced to what webrtc-mp/1 needs (docs/media-protocol.md):
    hello -> welcome, offer -> answer, then ICE and DTLS on loopback."""

    def __init__(self, certs: CertFiles) -> None:
        self._certs = certs
        self._runner: web.AppRunner | None = None
        self._sockets: list[web.WebSocketResponse] = []
        self._pcs: list[RTCPeerConnection] = []
        self.sessions: dict[str, str] = {}
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/MediaProcessor/{session}", self._serve)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=server_ssl(self._certs))
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    def media_config(self) -> Item:
        session, token = str(uuid.uuid4()), uuid.uuid4().hex
        self.sessions[session] = token
        blob = {
            "mpUri": f"wss://127.0.0.1:{self.port}/MediaProcessor/{session}",
            "mpMediaSessionId": session,
            "token": token,
            "protocol": "webrtc-mp/1",
        }
        return {"@odata.type": "#microsoft.graph.appHostedMediaConfig", "blob": json.dumps(blob)}

    async def _serve(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._sockets.append(ws)
        hello = await ws.receive_json()
        if self.sessions.get(hello.get("mpMediaSessionId")) != hello.get("token"):
            await ws.close()
            return ws
        await ws.send_json({"type": "welcome", "mpMediaSessionId": hello["mpMediaSessionId"]})
        offer = await ws.receive_json()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._pcs.append(pc)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        await ws.send_json({"type": "answer", "sdp": pc.localDescription.sdp})
        async for _ in ws:
            pass
        await pc.close()
        return ws

    async def drop(self) -> None:
        """The bot's media goes away (its WebSocket closes)."""
        for ws in self._sockets:
            await ws.close()

    async def stop(self) -> None:
        await self.drop()
        for pc in self._pcs:
            await pc.close()
        if self._runner is not None:
            await self._runner.cleanup()


StartEmulator = Callable[..., Awaitable[Emulator]]


@pytest.fixture
async def start_emulator(certs: CertFiles) -> AsyncIterator[StartEmulator]:
    started: list[Emulator] = []

    async def start(time_scale: float = 0.05) -> Emulator:
        meeting = Meeting(
            thread_id=THREAD,
            organizer_id=str(uuid.UUID(int=7)),
            tenant_id=TENANT,
            participants=[
                ParticipantScript("Meg Meeting", str(uuid.UUID(int=8)), SPEAKER_MSI, "p-8")
            ],
            join_meeting_id=MEETING_ID,
            passcode=PASSCODE,
        )
        emu = Emulator(
            EmulatorConfig(
                cert_file=certs.cert_file,
                key_file=certs.key_file,
                trust_file=certs.ca_file,
                apps={
                    APP: AppRegistration(APP, SECRET, TENANT),
                    OTHER_APP: AppRegistration(OTHER_APP, SECRET, OTHER_TENANT),
                },
                meetings=[meeting],
                media_connect_timeout_seconds=10.0,
                time_scale=time_scale,
                declining_users={DECLINER},
            )
        )
        await emu.start()
        started.append(emu)
        return emu

    yield start
    for emu in started:
        await emu.stop()


@pytest.fixture
async def emu(start_emulator: StartEmulator) -> Emulator:
    return await start_emulator()


@pytest.fixture
async def receiver(certs: CertFiles) -> AsyncIterator[Receiver]:
    hook = Receiver()
    app = web.Application()
    app.router.add_post("/callback", hook.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ssl(certs)).start()
    hook.url = f"https://127.0.0.1:{runner.addresses[0][1]}/callback"
    yield hook
    await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def trust(certs: CertFiles) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=certs.ca_file)


@pytest.fixture
async def graph(emu: Emulator, session: aiohttp.ClientSession, trust: ssl.SSLContext) -> Graph:
    return await Graph(session, emu, trust).login()


@pytest.fixture
async def media(certs: CertFiles) -> AsyncIterator[MediaEndpoint]:
    endpoint = MediaEndpoint(certs)
    await endpoint.start()
    yield endpoint
    await endpoint.stop()


def call_body(receiver: Receiver, **fields: Any) -> Item:
    body: Item = {
        "@odata.type": CALL_TYPE,
        "callbackUri": receiver.url,
        "requestedModalities": ["audio"],
        "mediaConfig": SERVICE_MEDIA,
        "tenantId": TENANT,
    }
    body.update(fields)
    return body


async def p2p_call(graph: Graph, receiver: Receiver, **fields: Any) -> str:
    """A service-hosted peer-to-peer call, established."""
    body = call_body(receiver, targets=[user(str(uuid.UUID(int=42)), "Pat Peer")], **fields)
    reply = await graph.send("POST", "/v1.0/communications/calls", body)
    assert reply.status == 201, reply.body
    await receiver.until_state(reply.body["id"], "established")
    return str(reply.body["id"])


async def incoming_call(graph: Graph, receiver: Receiver, **fields: Any) -> str:
    reply = await graph.send(
        "POST", "/emulator/calls/incoming", {"appId": APP, "callbackUri": receiver.url, **fields}
    )
    assert reply.status == 201, reply.body
    call_id = str(reply.body["callId"])
    await receiver.until_state(call_id, "incoming")
    return call_id


def assert_odata_error(reply: Reply, status: int, code: str) -> None:
    assert reply.status == status, reply.body
    error = reply.body["error"]
    assert error["code"] == code and isinstance(error["message"], str)
    assert set(error["innerError"]) >= {"request-id", "date"}


# -- creating calls -------------------------------------------------------------------------


async def test_missing_or_bad_token_is_401(graph: Graph) -> None:
    assert_odata_error(
        await graph.send("GET", f"/v1.0/communications/calls/{uuid.uuid4()}", token=""),
        401,
        "InvalidAuthenticationToken",
    )
    reply = await graph.send("POST", "/v1.0/communications/calls", {}, token="not-a-jwt")
    assert_odata_error(reply, 401, "InvalidAuthenticationToken")


async def test_p2p_call_establishes_with_signed_notifications(
    emu: Emulator, graph: Graph, receiver: Receiver
) -> None:
    body = call_body(receiver, targets=[user(str(uuid.UUID(int=42)), "Pat Peer")])
    reply = await graph.send("POST", "/v1.0/communications/calls", body)
    assert reply.status == 201
    call_id = reply.body["id"]
    assert reply.headers["Location"].endswith(f"/v1.0/communications/calls/{call_id}")
    assert reply.body["state"] == "establishing" and reply.body["direction"] == "outgoing"
    assert reply.body["myParticipantId"] and reply.body["callChainId"]

    roster = (await receiver.until_rosters(call_id, 1))[0]
    assert receiver.states(call_id) == ["establishing", "established"]
    first = receiver.of(call_id)[0]
    assert first["resource"] == f"/app/calls/{call_id}"  # the legacy path next to resourceUrl
    assert first["resourceData"]["@odata.type"] == CALL_TYPE
    ids = [p["info"]["identity"] for p in roster]
    assert {"user", "application"} == {k for i in ids for k in i if not k.startswith("@")}
    claims = jwt.decode(
        receiver.tokens[0],
        emu.notification_keys[0].private_key.public_key(),
        algorithms=["RS256"],
        audience=APP,
    )
    assert claims["iss"] == "https://api.botframework.com" and claims["tid"] == TENANT

    got = await graph.call("GET", call_id)
    assert got.status == 200 and got.body["state"] == "established"
    recorded = [r for r in emu.requests if r.method == "POST"]
    assert recorded[0].path == "/v1.0/communications/calls"
    assert recorded[0].json == body and recorded[0].app_id == APP
    assert "Authorization" not in recorded[0].headers  # bearer tokens are never kept


async def test_group_call_roster_has_every_target(graph: Graph, receiver: Receiver) -> None:
    targets = [user(str(uuid.UUID(int=100 + i)), f"User {i}") for i in range(3)]
    reply = await graph.send(
        "POST", "/v1.0/communications/calls", call_body(receiver, targets=targets)
    )
    assert reply.status == 201
    roster = (await receiver.until_rosters(reply.body["id"], 1))[0]
    users = {p["info"]["identity"]["user"]["id"] for p in roster if "user" in p["info"]["identity"]}
    assert users == {t["identity"]["user"]["id"] for t in targets}
    assert len({p["mediaStreams"][0]["sourceId"] for p in roster if p["mediaStreams"]}) == 3

    six = [user(str(uuid.UUID(int=200 + i))) for i in range(6)]
    reply = await graph.send("POST", "/v1.0/communications/calls", call_body(receiver, targets=six))
    assert_odata_error(reply, 400, "BadRequest")


@pytest.mark.parametrize(
    "change",
    [
        {"mediaConfig": None},
        {"mediaConfig": {"@odata.type": "#microsoft.graph.appHostedMediaConfig", "blob": "{"}},
        {"callbackUri": "http://plain.example/callback"},
        {"requestedModalities": ["smell"]},
        {"targets": None},
        {"targets": [{"identity": {}}]},
        {"meetingInfo": {"joinMeetingId": MEETING_ID}},
        {"callOptions": {"isDeltaRosterEnabled": "yes"}},
    ],
)
async def test_malformed_create_is_400(graph: Graph, receiver: Receiver, change: Item) -> None:
    body = call_body(receiver, targets=[user(str(uuid.UUID(int=42)))])
    body.update(change)
    body = {k: v for k, v in body.items() if v is not None}
    reply = await graph.send("POST", "/v1.0/communications/calls", body)
    assert_odata_error(reply, 400, "BadRequest")


async def test_join_by_meeting_id_checks_the_passcode(
    emu: Emulator, graph: Graph, receiver: Receiver
) -> None:
    def join(passcode: str | None, meeting_id: str = MEETING_ID) -> Item:
        info = {
            "@odata.type": "#microsoft.graph.joinMeetingIdMeetingInfo",
            "joinMeetingId": meeting_id,
            "passcode": passcode,
        }
        return call_body(receiver, meetingInfo=info)

    good = await graph.send("POST", "/v1.0/communications/calls", join(PASSCODE))
    assert good.status == 201
    roster = (await receiver.until_rosters(good.body["id"], 1))[0]
    assert str(SPEAKER_MSI) in {s["sourceId"] for p in roster for s in p["mediaStreams"]}

    wrong = await graph.send("POST", "/v1.0/communications/calls", join("nope"))
    assert wrong.status == 201
    ended = await receiver.until_state(wrong.body["id"], "terminated")
    assert ended["changeType"] == "deleted"
    assert ended["resourceData"]["resultInfo"]["code"] == 403
    assert receiver.states(wrong.body["id"]) == ["establishing", "terminated"]

    unknown = await graph.send("POST", "/v1.0/communications/calls", join(PASSCODE, "000"))
    assert_odata_error(unknown, 404, "NotFound")


async def test_guest_join_shows_the_app_as_guest(graph: Graph, receiver: Receiver) -> None:
    guest = {"identity": {"guest": {"displayName": "Emulated Guest", "id": "guest-1"}}}
    body = call_body(
        receiver,
        chatInfo={"@odata.type": "#microsoft.graph.chatInfo", "threadId": THREAD},
        meetingInfo={"@odata.type": "#microsoft.graph.organizerMeetingInfo"},
        source=guest,
    )
    reply = await graph.send("POST", "/v1.0/communications/calls", body)
    roster = (await receiver.until_rosters(reply.body["id"], 1))[0]
    me = next(p for p in roster if p["id"] == reply.body["myParticipantId"])
    assert me["info"]["identity"]["guest"]["displayName"] == "Emulated Guest"


async def test_hang_up_and_ended_calls_are_404(graph: Graph, receiver: Receiver) -> None:
    call_id = await p2p_call(graph, receiver)
    assert (await graph.call("DELETE", call_id)).status == 204
    ended = await receiver.until_state(call_id, "terminated")
    assert receiver.states(call_id)[-2:] == ["terminating", "terminated"]
    assert ended["resourceData"]["resultInfo"]["code"] == 0
    assert_odata_error(await graph.call("DELETE", call_id), 404, "NotFound")
    assert_odata_error(await graph.call("GET", call_id), 404, "NotFound")
    assert_odata_error(await graph.call("POST", call_id, "keepAlive"), 404, "NotFound")


async def test_another_apps_token_is_403(
    emu: Emulator, graph: Graph, receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    call_id = await p2p_call(graph, receiver)
    trust = ssl.create_default_context(cafile=emu.config.trust_file)
    other = await Graph(session, emu, trust).login(OTHER_APP, OTHER_TENANT)
    for method, action in [("GET", ""), ("DELETE", ""), ("POST", "mute")]:
        assert_odata_error(await other.call(method, call_id, action, {}), 403, "Forbidden")
    assert (await graph.call("GET", call_id)).body["state"] == "established"


# -- incoming calls -------------------------------------------------------------------------


async def test_incoming_call_answered_with_app_hosted_media(
    emu: Emulator, graph: Graph, receiver: Receiver, media: MediaEndpoint
) -> None:
    caller = {"userId": str(uuid.UUID(int=0xC0)), "displayName": "Cal Caller", "msi": 0xC0}
    call_id = await incoming_call(graph, receiver, caller=caller)
    created = receiver.of(call_id)[0]
    assert created["changeType"] == "created"
    call = created["resourceData"]
    assert (call["state"], call["direction"]) == ("incoming", "incoming")
    assert call["source"]["identity"]["user"]["id"] == caller["userId"]
    assert call["targets"][0]["identity"]["application"]["id"] == APP
    assert call["incomingContext"]["sourceParticipantId"] == call["source"]["id"]

    body = {"acceptedModalities": ["audio"], "mediaConfig": media.media_config()}
    assert (
        await graph.call("POST", call_id, "answer", {"mediaConfig": body["mediaConfig"]})
    ).status == 400
    assert (await graph.call("POST", call_id, "answer", body)).status == 202
    assert (await graph.call("POST", call_id, "answer", body)).status == 400  # not incoming now
    roster = (await receiver.until_rosters(call_id, 1))[0]
    assert receiver.states(call_id) == ["incoming", "establishing", "established"]
    assert str(0xC0) in {s["sourceId"] for p in roster for s in p["mediaStreams"]}
    speaker = emu.calls[call_id].speaker  # the caller speaks on the media link
    assert speaker is not None and speaker.msi == 0xC0

    # App-hosted: prompts are refused, screen sharing is allowed.
    prompt = {"prompts": [{"mediaInfo": {"uri": "https://cdn.example/beep.wav"}}]}
    assert_odata_error(await graph.call("POST", call_id, "playPrompt", prompt), 400, "BadRequest")
    assert (
        await graph.call("POST", call_id, "changeScreenSharingRole", {"role": "sharer"})
    ).status == 202
    me = next(
        p
        for p in (await receiver.until_rosters(call_id, 2))[1]
        if p["id"] == call["myParticipantId"]
    )
    vbss = [s for s in me["mediaStreams"] if s["mediaType"] == "videoBasedScreenSharing"]
    assert vbss[0]["direction"] == "sendOnly"

    await media.drop()  # the bot's media endpoint goes away: Graph ends the call with 7112
    ended = await receiver.until_state(call_id, "terminated")
    assert (
        ended["resourceData"]["resultInfo"]["code"],
        ended["resourceData"]["resultInfo"]["subcode"],
    ) == (500, 7112)


@pytest.mark.parametrize(("reason", "status"), [("busy", 202), ("Forbidden", 202), ("rude", 400)])
async def test_reject(graph: Graph, receiver: Receiver, reason: str, status: int) -> None:
    call_id = await incoming_call(graph, receiver)
    reply = await graph.call("POST", call_id, "reject", {"reason": reason})
    assert reply.status == status
    if status == 202:
        ended = await receiver.until_state(call_id, "terminated")
        assert ended["changeType"] == "deleted"


async def test_redirect(graph: Graph, receiver: Receiver) -> None:
    call_id = await incoming_call(graph, receiver)
    target = [user(str(uuid.UUID(int=55)))]
    bad = await graph.call("POST", call_id, "redirect", {"targets": target, "timeout": 10})
    assert_odata_error(bad, 400, "BadRequest")
    assert (await graph.call("POST", call_id, "redirect", {"targets": []})).status == 400
    assert (
        await graph.call("POST", call_id, "redirect", {"targets": target, "timeout": 30})
    ).status == 202
    ended = await receiver.until_state(call_id, "terminated")
    assert ended["changeType"] == "deleted"
    assert receiver.states(call_id) == ["incoming", "terminated"]


@pytest.mark.parametrize(("policy", "graph_seconds"), [(False, 15.0), (True, 5.0)])
async def test_unanswered_incoming_call_ends_at_the_scaled_deadline(
    start_emulator: StartEmulator,
    session: aiohttp.ClientSession,
    trust: ssl.SSLContext,
    receiver: Receiver,
    policy: bool,
    graph_seconds: float,
) -> None:
    emu = await start_emulator(time_scale=0.01)
    graph = await Graph(session, emu, trust).login()
    started = time.monotonic()
    call_id = await incoming_call(graph, receiver, policyRecording=policy)
    ended = await receiver.until_state(call_id, "terminated")
    assert time.monotonic() - started >= graph_seconds * 0.01
    assert ended["changeType"] == "deleted"
    assert ended["resourceData"]["resultInfo"]["code"] == 408
    created = receiver.of(call_id)[0]["resourceData"]
    if policy:
        assert created["incomingContext"]["observedParticipantId"] == created["source"]["id"]
        assert created["applicationMetadata"]["botData"]["inviteReasons"] == [
            "PolicyBasedRecording"
        ]
    else:
        assert "applicationMetadata" not in created


# -- transfer, keep-alive -------------------------------------------------------------------


async def test_transfer_completes(graph: Graph, receiver: Receiver) -> None:
    call_id = await p2p_call(graph, receiver)
    target = {"transferTarget": user(str(uuid.UUID(int=77)), "Tara Target")}
    assert (await graph.call("POST", call_id, "transfer", {"transferTarget": {}})).status == 400
    assert (await graph.call("POST", call_id, "transfer", target)).status == 202
    ended = await receiver.until_state(call_id, "terminated")
    assert receiver.states(call_id)[-3:] == ["transferring", "transferAccepted", "terminated"]
    result = ended["resourceData"]["resultInfo"]
    assert (result["code"], result["subcode"]) == (0, 7015)


async def test_declined_transfer_returns_to_established(graph: Graph, receiver: Receiver) -> None:
    call_id = await p2p_call(graph, receiver)
    reply = await graph.call("POST", call_id, "transfer", {"transferTarget": user(DECLINER)})
    assert reply.status == 202
    await receiver.wait(lambda _: receiver.states(call_id)[-2:] == ["transferring", "established"])
    result = receiver.of(call_id)[-1]["resourceData"]["resultInfo"]
    assert (result["code"], result["subcode"]) == (500, 7000)
    assert (await graph.call("GET", call_id)).body["state"] == "established"


async def test_keep_alive_and_inactivity(
    start_emulator: StartEmulator,
    session: aiohttp.ClientSession,
    trust: ssl.SSLContext,
    receiver: Receiver,
) -> None:
    emu = await start_emulator(time_scale=0.0005)  # 45 minutes of Graph time in 1.35 s
    graph = await Graph(session, emu, trust).login()
    call_id = await p2p_call(graph, receiver)
    reply = await graph.call("POST", call_id, "keepAlive")
    assert reply.status == 200
    started = time.monotonic()
    ended = await receiver.until_state(call_id, "terminated")
    assert time.monotonic() - started >= 45 * 60 * 0.0005 * 0.9
    assert ended["resourceData"]["resultInfo"]["code"] == 408
    assert_odata_error(await graph.call("POST", call_id, "keepAlive"), 404, "NotFound")


# -- operations -----------------------------------------------------------------------------


async def test_self_mute_and_unmute(emu: Emulator, graph: Graph, receiver: Receiver) -> None:
    call_id = await p2p_call(graph, receiver)
    reply = await graph.call("POST", call_id, "mute", {"clientContext": "ctx-1"})
    assert reply.status == 200
    assert reply.body["@odata.type"] == "#microsoft.graph.muteParticipantOperation"
    assert (reply.body["status"], reply.body["clientContext"]) == ("completed", "ctx-1")
    assert reply.headers["Location"].endswith(f"/operations/{reply.body['id']}")
    me = receiver.of(call_id)[0]["resourceData"]["myParticipantId"]
    roster = (await receiver.until_rosters(call_id, 2))[1]
    assert next(p for p in roster if p["id"] == me)["isMuted"] is True

    reply = await graph.call("POST", call_id, "unmute", {})
    assert reply.body["@odata.type"] == "#microsoft.graph.unmuteParticipantOperation"
    roster = (await receiver.until_rosters(call_id, 3))[2]
    assert next(p for p in roster if p["id"] == me)["isMuted"] is False
    too_long = await graph.call("POST", call_id, "mute", {"clientContext": "x" * 257})
    assert_odata_error(too_long, 400, "BadRequest")
    assert (await graph.call("POST", call_id, "mute", "[1]")).status == 400


async def test_invite_mute_and_remove_participants(
    emu: Emulator, graph: Graph, receiver: Receiver
) -> None:
    call_id = await p2p_call(graph, receiver)
    invitee = str(uuid.UUID(int=0x1E))
    body = {"participants": [user(invitee, "Ivy Invitee")], "clientContext": "inv"}
    reply = await graph.call("POST", call_id, "participants/invite", body)
    assert reply.status == 200 and reply.body["status"] == "running"
    assert reply.body["@odata.type"] == "#microsoft.graph.inviteParticipantsOperation"
    assert reply.headers["Location"].endswith(reply.body["id"])
    done = await receiver.until_operation(call_id, reply.body["id"])
    assert done["changeType"] == "deleted" and done["resourceData"]["status"] == "completed"
    roster = (await receiver.until_rosters(call_id, 2))[1]
    added = next(p for p in roster if p["info"]["identity"].get("user", {}).get("id") == invitee)
    assert receiver.items.index(done) < receiver.items.index(
        receiver.of(call_id, "/participants")[1]
    )

    muted = await graph.call("POST", call_id, f"participants/{added['id']}/mute", {})
    assert muted.status == 200 and muted.body["status"] == "completed"
    roster = (await receiver.until_rosters(call_id, 3))[2]
    assert next(p for p in roster if p["id"] == added["id"])["isMuted"] is True

    assert (await graph.call("DELETE", call_id, f"participants/{added['id']}")).status == 204
    roster = (await receiver.until_rosters(call_id, 4))[3]
    assert added["id"] not in {p["id"] for p in roster}
    assert (await graph.call("DELETE", call_id, f"participants/{added['id']}")).status == 404
    listed = await graph.call("GET", call_id, "participants")
    assert {p["id"] for p in listed.body["value"]} == {p["id"] for p in roster}
    assert (
        await graph.call("POST", call_id, "participants/invite", {"participants": []})
    ).status == 400


async def test_tones_after_subscribing(emu: Emulator, graph: Graph, receiver: Receiver) -> None:
    call_id = await p2p_call(graph, receiver)
    press = f"/emulator/calls/{call_id}/tones"
    assert (await graph.send("POST", press, {"tone": "tone5"})).status == 409
    reply = await graph.call("POST", call_id, "subscribeToTone", {"clientContext": "t"})
    assert reply.status == 200 and reply.body["status"] == "completed"
    assert reply.body["@odata.type"] == "#microsoft.graph.subscribeToToneOperation"
    assert (await graph.send("POST", press, {"tone": "tone5"})).status == 202
    assert (await graph.send("POST", press, {"tone": "star"})).status == 202
    assert (await graph.send("POST", press, {"tone": "tone12"})).status == 400

    def tones(_: list[Item]) -> list[Item]:
        return [
            i["resourceData"]["toneInfo"]
            for i in receiver.of(call_id)
            if "toneInfo" in i["resourceData"]
        ]

    await receiver.wait(lambda items: len(tones(items)) == 2)
    assert [(t["sequenceId"], t["tone"]) for t in tones([])] == [(1, "tone5"), (2, "star")]
    view = (await graph.send("GET", f"/emulator/calls/{call_id}")).body
    assert view["toneSubscribed"] is True and view["tones"] == ["tone5", "star"]


async def test_send_dtmf_tones(graph: Graph, receiver: Receiver) -> None:
    call_id = await p2p_call(graph, receiver)
    body = {"tones": ["tone1", "pound"], "delayBetweenTonesMs": 200, "clientContext": "d"}
    reply = await graph.call("POST", call_id, "sendDtmfTones", body)
    assert reply.status == 200 and reply.body["status"] == "running"
    assert reply.body["@odata.type"] == "#microsoft.graph.sendDtmfTonesOperation"
    done = (await receiver.until_operation(call_id, reply.body["id"]))["resourceData"]
    assert (done["status"], done["completionReason"]) == ("completed", "completedSuccessfully")
    assert done["clientContext"] == "d"
    assert (await graph.call("POST", call_id, "sendDtmfTones", {"tones": ["tone99"]})).status == 400


async def test_update_recording_status(emu: Emulator, graph: Graph, receiver: Receiver) -> None:
    call_id = await p2p_call(graph, receiver)
    reply = await graph.call("POST", call_id, "updateRecordingStatus", {"status": "recording"})
    assert reply.status == 200 and reply.body["status"] == "completed"
    assert reply.body["@odata.type"] == "#microsoft.graph.updateRecordingStatusOperation"
    assert "Location" in reply.headers
    roster = (await receiver.until_rosters(call_id, 2))[1]
    me = next(p for p in roster if "application" in p["info"]["identity"])
    assert me["recordingInfo"]["recordingStatus"] == "recording"
    view = (await graph.send("GET", f"/emulator/calls/{call_id}")).body
    assert view["recordingStatus"] == "recording"
    assert view["operations"][0]["type"] == "updateRecordingStatusOperation"
    bad = await graph.call("POST", call_id, "updateRecordingStatus", {"status": "paused"})
    assert_odata_error(bad, 400, "BadRequest")


async def test_screen_sharing_role_needs_app_hosted_media(graph: Graph, receiver: Receiver) -> None:
    call_id = await p2p_call(graph, receiver)
    reply = await graph.call("POST", call_id, "changeScreenSharingRole", {"role": "sharer"})
    assert_odata_error(reply, 400, "BadRequest")
    reply = await graph.call("POST", call_id, "changeScreenSharingRole", {"role": "boss"})
    assert_odata_error(reply, 400, "BadRequest")


async def test_prompt_record_and_cancel(
    emu: Emulator, graph: Graph, receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    call_id = await p2p_call(graph, receiver)
    prompt = {"mediaInfo": {"uri": "https://cdn.example/beep.wav", "resourceId": "beep"}}
    reply = await graph.call(
        "POST", call_id, "playPrompt", {"prompts": [prompt], "clientContext": "p"}
    )
    assert reply.status == 200 and reply.body["status"] == "running"
    assert reply.body["@odata.type"] == "#microsoft.graph.playPromptOperation"
    done = (await receiver.until_operation(call_id, reply.body["id"]))["resourceData"]
    assert done["status"] == "completed" and done["resultInfo"]["code"] == 200

    reply = await graph.call("POST", call_id, "recordResponse", {"maxRecordDurationInSeconds": 1})
    assert reply.body["@odata.type"] == "#microsoft.graph.recordOperation"
    assert reply.body["recordingLocation"] is None
    done = (await receiver.until_operation(call_id, reply.body["id"]))["resourceData"]
    assert (done["resultInfo"]["code"], done["resultInfo"]["subcode"]) == (200, 8515)
    wav = await graph.send("GET", done["recordingLocation"], token=done["recordingAccessToken"])
    assert wav.status == 200
    too_long = await graph.call(
        "POST", call_id, "recordResponse", {"maxRecordDurationInSeconds": 121}
    )
    assert_odata_error(too_long, 400, "BadRequest")

    # Twenty prompts (40 Graph seconds) and a record queued behind them; cancel both.
    long = await graph.call("POST", call_id, "playPrompt", {"prompts": [prompt] * 20})
    queued = await graph.call("POST", call_id, "recordResponse", {})
    cancel = await graph.call("POST", call_id, "cancelMediaProcessing", {"clientContext": "c"})
    assert cancel.status == 200 and cancel.body["status"] == "completed"
    assert cancel.body["@odata.type"] == "#microsoft.graph.cancelMediaProcessingOperation"
    for op_id in (long.body["id"], queued.body["id"]):
        failed = (await receiver.until_operation(call_id, op_id))["resourceData"]
        assert failed["status"] == "failed"
        assert (failed["resultInfo"]["code"], failed["resultInfo"]["subcode"]) == (400, 8508)
        assert failed["completionReason"] == "operationCanceled"
    assert (await graph.call("POST", call_id, "playPrompt", {"prompts": []})).status == 400


async def test_add_large_gallery_view(graph: Graph, receiver: Receiver) -> None:
    call_id = await p2p_call(graph, receiver)
    reply = await graph.call("POST", call_id, "addLargeGalleryView", {"clientContext": "lg"})
    assert reply.status == 202 and reply.body["status"] == "running"
    assert reply.body["@odata.type"] == "#microsoft.graph.addLargeGalleryViewOperation"
    assert "Location" in reply.headers
    done = await receiver.until_operation(call_id, reply.body["id"])
    assert done["resourceData"]["status"] == "completed"
    roster = (await receiver.until_rosters(call_id, 2))[1]
    gallery = [
        p for p in roster if p["info"]["identity"].get("application", {}).get("ApplicationType")
    ]
    assert gallery[0]["info"]["identity"]["application"]["ApplicationType"] == "LargeGallery-V2"
    video = next(s for s in gallery[0]["mediaStreams"] if s["mediaType"] == "video")
    assert video["direction"] == "sendReceive" and json.loads(gallery[0]["metadata"])


# -- roster modes ---------------------------------------------------------------------------


async def test_delta_roster_sends_changes_with_sequence_numbers(
    graph: Graph, receiver: Receiver
) -> None:
    options = {"@odata.type": "#microsoft.graph.outgoingCallOptions", "isDeltaRosterEnabled": True}
    call_id = await p2p_call(graph, receiver, callOptions=options)
    first = (await receiver.until_rosters(call_id, 1))[0]
    assert first["@odata.type"] == "#microsoft.graph.deltaParticipants"
    assert first["sequenceNumber"] == 1 and len(first["participants"]) == 2

    invite = {"participants": [user(str(uuid.UUID(int=0xDE)), "Del Ta")]}
    await graph.call("POST", call_id, "participants/invite", invite)
    second = (await receiver.until_rosters(call_id, 2))[1]
    assert second["sequenceNumber"] == 2 and len(second["participants"]) == 1
    added = second["participants"][0]
    assert added["rosterSequenceNumber"] == 2

    await graph.call("POST", call_id, f"participants/{added['id']}/mute", {})
    await graph.call("DELETE", call_id, f"participants/{added['id']}")
    deltas = await receiver.until_rosters(call_id, 4)
    assert [d["sequenceNumber"] for d in deltas] == [1, 2, 3, 4]
    assert deltas[2]["participants"][0]["isMuted"] is True
    removed = deltas[3]["participants"][0]
    assert removed["id"] == added["id"] and removed["removedState"]["reason"]


async def test_full_roster_by_default(graph: Graph, receiver: Receiver) -> None:
    call_id = await p2p_call(graph, receiver)
    await graph.call("POST", call_id, "mute", {})
    rosters = await receiver.until_rosters(call_id, 2)
    assert all(isinstance(r, list) and len(r) == 2 for r in rosters)
    me = receiver.of(call_id)[0]["resourceData"]["myParticipantId"]
    assert [next(p for p in r if p["id"] == me)["rosterSequenceNumber"] for r in rosters] == [1, 2]


# -- admin knobs ----------------------------------------------------------------------------


async def test_faults_answer_with_retry_after_and_change_nothing(
    emu: Emulator, graph: Graph, receiver: Receiver
) -> None:
    arm = {"status": 429, "retryAfterSeconds": 1.2, "count": 2}
    assert (await graph.send("POST", "/emulator/faults", arm)).status == 204
    body = call_body(receiver, targets=[user(str(uuid.UUID(int=42)))])
    for _ in range(2):
        reply = await graph.send("POST", "/v1.0/communications/calls", body)
        assert_odata_error(reply, 429, "TooManyRequests")
        assert reply.headers["Retry-After"] == "2"
    assert emu.calls == {} and len(emu.requests) == 2
    assert (await graph.send("POST", "/v1.0/communications/calls", body)).status == 201

    arm_503: Item = {"status": 503, "retryAfterSeconds": 3, "pathPrefix": "/v1.0/nowhere"}
    assert (await graph.send("POST", "/emulator/faults", arm_503)).status == 204
    assert (await graph.send("GET", "/v1.0/nowhere/at/all")).headers["Retry-After"] == "3"
    assert (await graph.send("POST", "/emulator/faults", {"status": 500})).status == 400


async def test_admin_view_and_unknown_calls(graph: Graph, receiver: Receiver) -> None:
    call_id = await p2p_call(graph, receiver)
    view = (await graph.send("GET", f"/emulator/calls/{call_id}")).body
    assert view["state"] == "established" and view["appId"] == APP
    assert view["statesNotified"] == ["establishing", "established"]
    assert view["mediaHosting"] == "service" and len(view["participants"]) == 2
    assert (await graph.send("GET", f"/emulator/calls/{uuid.uuid4()}")).status == 404
    assert (
        await graph.send("POST", f"/emulator/calls/{uuid.uuid4()}/tones", {"tone": "a"})
    ).status == 404
    bad_app = {"appId": "nobody", "callbackUri": receiver.url}
    assert (await graph.send("POST", "/emulator/calls/incoming", bad_app)).status == 400
