"""Every call operation, by the bot, against the emulator over real HTTPS (real MSAL tokens,
real RS256 notifications): the request Graph saw, and the state and events that followed."""

from __future__ import annotations

import asyncio
import json
import ssl
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from bot.app import Bot
from bot.call import Call, CallEndedError
from bot.devcerts import DevCerts
from bot.errors import GraphThrottledError
from bot.graph import shapes
from bot.keepalive import KeepAlive
from bot.operations import OperationFailedError
from emulator import Emulator
from emulator.participant import Meeting, ParticipantScript
from tests.conftest import APP_ID, TENANT_ID, emulator_config, settings_for

SCALE = 0.05  # every Graph timing rule 20x faster (the 15 s answer window is 750 ms)
DECLINER = "dddddddd-0000-4000-8000-00000000d0d0"
MEETING_ID, PASSCODE = "3141592653", "pa55"
WITHIN = 15.0


class GatedSleep:
    """An injected sleep: returns at once `allow` times, then never (keeps loops quiet)."""

    def __init__(self, allow: int = 0) -> None:
        self.allow = allow
        self.calls: list[float] = []
        self.passed = asyncio.Event()
        self._never = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        if len(self.calls) > self.allow:
            self.passed.set()
            await self._never.wait()


@dataclass
class Rig:
    emulator: Emulator
    bot: Bot
    admin: aiohttp.ClientSession
    ssl: ssl.SSLContext
    keepalive_sleep: GatedSleep
    retry_delays: list[float] = field(default_factory=list)

    async def admin_post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.emulator.base_url}/emulator{path}"
        async with self.admin.post(url, json=body, ssl=self.ssl) as response:
            assert response.status < 300, await response.text()
            return await response.json() if response.status != 204 else {}

    def requests(self, suffix: str) -> list[Any]:
        return [r for r in self.emulator.requests if r.path.endswith(suffix)]

    async def incoming(self, **extra: Any) -> Call:
        created = await self.admin_post(
            "/calls/incoming", {"appId": APP_ID, "callbackUri": self.bot.callback_url, **extra}
        )
        return await self.bot.calls.wait_for_call(created["callId"], WITHIN)


def scripted_meeting() -> Meeting:
    return Meeting(
        thread_id="19:meeting_b3BlcmF0aW9ucw@thread.v2",
        organizer_id=str(uuid.UUID(int=11)),
        tenant_id=TENANT_ID,
        participants=[ParticipantScript("Ola", str(uuid.UUID(int=12)), 0x0A0A, "p-ola", seed=5)],
        join_meeting_id=MEETING_ID,
        passcode=PASSCODE,
    )


@pytest.fixture
async def rig(certs: DevCerts, client_ssl: ssl.SSLContext) -> AsyncIterator[Rig]:
    emulator = Emulator(
        emulator_config(
            certs,
            meetings=[scripted_meeting()],
            time_scale=SCALE,
            declining_users={DECLINER},
        )
    )
    await emulator.start()
    keepalive_sleep = GatedSleep()
    delays: list[float] = []

    async def retry_sleep(seconds: float) -> None:
        delays.append(seconds)

    bot = Bot(
        settings_for(emulator, certs),
        keepalive=KeepAlive(sleep=keepalive_sleep),
        window_scale=SCALE,
        retry_sleep=retry_sleep,
    )
    await bot.start()
    async with aiohttp.ClientSession() as admin:
        yield Rig(emulator, bot, admin, client_ssl, keepalive_sleep, delays)
    await bot.stop()
    await emulator.stop()


def user(n: int) -> dict[str, Any]:
    return shapes.identity_set(user_id=str(uuid.UUID(int=1000 + n)), tenant_id=TENANT_ID)


async def until(call: Call, predicate: Any) -> None:
    """Wait (on roster events, never a sleep) until predicate(call) holds."""
    changed = asyncio.Event()
    call.events.on("participants", lambda c, update: changed.set())
    async with asyncio.timeout(WITHIN):
        while not predicate(call):
            await changed.wait()
            changed.clear()


async def established_p2p(rig: Rig) -> Call:
    call = await rig.bot.create_call([user(1)])
    await call.wait_for("established", WITHIN)
    return call


# -- placing and joining -----------------------------------------------------------------------


async def test_join_by_meeting_id_and_passcode(rig: Rig) -> None:
    call = await rig.bot.join_by_meeting_id(MEETING_ID, PASSCODE)
    await call.wait_for("established", WITHIN)
    body = rig.requests("/communications/calls")[-1].json
    assert body["meetingInfo"] == {
        "@odata.type": "#microsoft.graph.joinMeetingIdMeetingInfo",
        "joinMeetingId": MEETING_ID,
        "passcode": PASSCODE,
    }
    assert body["mediaConfig"]["@odata.type"] == "#microsoft.graph.appHostedMediaConfig"
    wrong = await rig.bot.join_by_meeting_id(MEETING_ID, "nope")
    with pytest.raises(CallEndedError):
        await wrong.wait_for("established", WITHIN)
    assert wrong.result_info is not None and wrong.result_info["code"] == 403


async def test_join_as_guest(rig: Rig) -> None:
    url = rig.emulator.join_url(rig.emulator.config.meetings[0])
    call = await rig.bot.join(url, guest_name="Note Taker")
    await call.wait_for("established", WITHIN)
    source = rig.requests("/communications/calls")[-1].json["source"]
    assert source["identity"]["guest"]["displayName"] == "Note Taker"


async def test_p2p_and_group_calls(rig: Rig) -> None:
    p2p = await established_p2p(rig)
    group = await rig.bot.create_call([user(2), user(3)], subject="stand-up")
    await group.wait_for("established", WITHIN)
    bodies = [r.json for r in rig.requests("/communications/calls")]
    assert [len(b["targets"]) for b in bodies] == [1, 2]
    assert bodies[1]["subject"] == "stand-up"
    assert {p2p.state, group.state} == {"established"}
    # Every request names itself and its scenario, as the .NET SDK's do (Client-Request-Id,
    # Scenario-Id).
    for recorded in rig.emulator.requests:
        assert recorded.headers.get("Client-Request-Id")
        assert recorded.headers.get("Scenario-Id")


# -- incoming calls ----------------------------------------------------------------------------


async def test_incoming_call_is_answered_with_app_hosted_media(rig: Rig) -> None:
    call = await rig.incoming()
    await call.wait_for("established", WITHIN)
    answer = rig.requests("/answer")[-1].json
    assert answer["acceptedModalities"] == ["audio"]
    assert answer["mediaConfig"]["@odata.type"] == "#microsoft.graph.appHostedMediaConfig"
    assert answer["callbackUri"] == rig.bot.callback_url
    assert call.media_session_id is not None
    assert rig.bot.media.session(call.media_session_id) is not None


async def test_incoming_call_rejected_or_redirected_by_user_code(rig: Rig) -> None:
    @rig.bot.calls.events.on("incoming_call")
    async def decide(call: Call) -> None:
        if len(rig.requests("/reject")) == 0:
            await call.reject("busy")
        else:
            await call.redirect([user(7)], timeout_seconds=20)

    rejected = await rig.incoming()
    await rejected.wait_for("terminated", WITHIN)
    redirected = await rig.incoming()
    await redirected.wait_for("terminated", WITHIN)
    assert rig.requests("/reject")[-1].json == {"reason": "busy"}
    redirect = rig.requests("/redirect")[-1].json
    assert redirect["timeout"] == 20 and len(redirect["targets"]) == 1


async def test_policy_recording_call_is_answered_inside_its_5s_window(rig: Rig) -> None:
    @rig.bot.calls.events.on("incoming_call")
    async def answer(call: Call) -> None:
        assert call.is_policy_recording
        await call.answer(participant_capacity=200)

    call = await rig.incoming(policyRecording=True)
    await call.wait_for("established", WITHIN)
    assert rig.requests("/answer")[-1].json["participantCapacity"] == 200


# -- in-call operations ------------------------------------------------------------------------


async def test_blind_transfer_completes_and_a_declined_one_returns(rig: Rig) -> None:
    declined = await established_p2p(rig)
    await declined.transfer(shapes.identity_set(user_id=DECLINER, tenant_id=TENANT_ID))
    async with asyncio.timeout(WITHIN):
        while declined.states_seen[-1] != "established" or len(declined.states_seen) < 3:
            await declined._changed.wait()
            declined._changed.clear()
    assert declined.result_info is not None
    assert (declined.result_info["code"], declined.result_info["subcode"]) == (500, 7000)

    call = await established_p2p(rig)
    await call.transfer(user(4), replaces_call_id=declined.id)
    await call.wait_for("terminated", WITHIN)
    assert call.states_seen[-3:] == ["transferring", "transferAccepted", "terminated"]
    assert call.result_info is not None and call.result_info["subcode"] == 7015
    target = rig.requests("/transfer")[-1].json["transferTarget"]
    assert target["replacesCallId"] == declined.id


async def test_self_mute_and_unmute(rig: Rig) -> None:
    call = await established_p2p(rig)
    me = call.resource["myParticipantId"]
    await until(call, lambda c: me in c.participants)
    muted = await (await call.mute("ctx-1")).wait(WITHIN)
    assert muted.client_context == "ctx-1"
    await until(call, lambda c: c.participants[me].is_muted)
    await (await call.unmute()).wait(WITHIN)
    await until(call, lambda c: not c.participants[me].is_muted)
    assert [r.json for r in rig.requests("/mute")] == [{"clientContext": "ctx-1"}]


async def test_invite_mute_and_remove_participants(rig: Rig) -> None:
    call = await rig.bot.join(rig.emulator.join_url(rig.emulator.config.meetings[0]))
    await call.wait_for("established", WITHIN)
    await until(call, lambda c: "p-ola" in c.participants)
    invited_id = str(uuid.UUID(int=1005))

    def invited(c: Call) -> list[Any]:
        return [
            p for p in c.participants.values() if p.identity.get("user", {}).get("id") == invited_id
        ]

    op = await call.invite([shapes.identity_set(user_id=invited_id, tenant_id=TENANT_ID)])
    await op.wait(WITHIN)
    await until(call, lambda c: bool(invited(c)))
    invite = rig.requests("/participants/invite")[-1].json
    assert invite["participants"][0]["identity"]["user"]["id"] == invited_id
    await (await call.participants["p-ola"].mute()).wait(WITHIN)
    await until(call, lambda c: c.participants["p-ola"].is_muted)
    [new] = invited(call)
    await new.remove()
    await until(call, lambda c: not invited(c))


async def test_tones_are_subscribed_received_and_sent(rig: Rig) -> None:
    call = await established_p2p(rig)
    heard: asyncio.Queue[str] = asyncio.Queue()
    call.events.on("tone", lambda c, tone: heard.put_nowait(tone))
    await (await call.subscribe_to_tone()).wait(WITHIN)
    for tone in ("tone5", "pound"):
        await rig.admin_post(f"/calls/{call.id}/tones", {"tone": tone})
    assert [await asyncio.wait_for(heard.get(), WITHIN) for _ in range(2)] == ["tone5", "pound"]
    sent = await (await call.send_dtmf_tones("12#", delay_between_tones_ms=100)).wait(WITHIN)
    assert sent.resource["completionReason"] == "completedSuccessfully"
    assert rig.requests("/sendDtmfTones")[-1].json == {
        "tones": ["tone1", "tone2", "pound"],
        "delayBetweenTonesMs": 100,
    }


async def test_recording_status_and_screen_sharing_role(rig: Rig) -> None:
    call = await rig.bot.join(rig.emulator.join_url(rig.emulator.config.meetings[0]))
    await call.wait_for("established", WITHIN)
    done = await (await call.update_recording_status("recording", "rec-start")).wait(WITHIN)
    assert done.status == "completed"
    assert rig.requests("/updateRecordingStatus")[-1].json == {
        "status": "recording",
        "clientContext": "rec-start",
    }
    await call.change_screen_sharing_role("sharer")
    assert rig.requests("/changeScreenSharingRole")[-1].json == {"role": "sharer"}


async def test_service_hosted_prompts_record_and_cancel(rig: Rig) -> None:
    url = rig.emulator.join_url(rig.emulator.config.meetings[0])
    call = await rig.bot.join(url, media="service")
    await call.wait_for("established", WITHIN)
    prompt = await call.play_prompt([("https://cdn.contoso.com/beep.wav", "b1")])
    played = await prompt.wait(WITHIN)
    assert played.result_info is not None
    assert (played.result_info["code"], played.result_info["subcode"]) == (200, 0)
    recorded = await (await call.record(max_record_duration_seconds=2)).wait(WITHIN)
    assert recorded.resource["recordingLocation"].startswith("https://")
    long = await call.record(max_record_duration_seconds=120)
    await (await call.cancel_media_processing()).wait(WITHIN)
    with pytest.raises(OperationFailedError) as caught:
        await long.wait(WITHIN)
    assert caught.value.operation.result_info is not None
    assert caught.value.operation.result_info["subcode"] == 8508


async def test_large_gallery_view_joins_the_roster(rig: Rig) -> None:
    call = await rig.bot.join(rig.emulator.join_url(rig.emulator.config.meetings[0]))
    await call.wait_for("established", WITHIN)
    await (await call.add_large_gallery_view()).wait(WITHIN)
    await until(
        call,
        lambda c: "LargeGallery-V2" in json.dumps([p.identity for p in c.participants.values()]),
    )


async def test_hang_up_ends_the_call(rig: Rig) -> None:
    call = await established_p2p(rig)
    await call.hang_up()
    await call.wait_for("terminated", WITHIN)
    assert call.states_seen[-2:] == ["terminating", "terminated"]


# -- keep-alive and throttling -----------------------------------------------------------------


async def test_keepalive_is_scheduled_for_established_calls(rig: Rig) -> None:
    rig.keepalive_sleep.allow = 2
    call = await established_p2p(rig)
    await asyncio.wait_for(rig.keepalive_sleep.passed.wait(), WITHIN)
    assert len(rig.requests(f"/calls/{call.id}/keepAlive")) == 2
    assert rig.keepalive_sleep.calls[0] == rig.bot.keepalive.interval_seconds <= 15 * 60


async def test_throttled_requests_are_retried_honouring_retry_after(rig: Rig) -> None:
    call = await established_p2p(rig)
    await rig.admin_post("/faults", {"status": 429, "retryAfterSeconds": 3, "count": 2})
    await (await call.mute()).wait(WITHIN)
    attempts = rig.requests("/mute")
    assert len(attempts) == 3
    assert len({a.headers["Client-Request-Id"] for a in attempts}) == 1
    assert rig.retry_delays == [3.0, 3.0]

    await rig.admin_post("/faults", {"status": 503, "retryAfterSeconds": 1, "count": 10})
    with pytest.raises(GraphThrottledError) as caught:
        await call.unmute()
    assert caught.value.status == 503


async def test_a_slow_incoming_handler_still_gets_the_call_answered(rig: Rig) -> None:
    stuck = asyncio.Event()

    @rig.bot.calls.events.on("incoming_call")
    async def never_decides(call: Call) -> None:
        await stuck.wait()

    call = await rig.incoming()
    await call.wait_for("established", WITHIN)  # the fallback answered inside the window
    assert len(rig.requests(f"/calls/{call.id}/answer")) == 1
    stuck.set()


async def test_delta_roster_join_tracks_joins_and_removals(rig: Rig) -> None:
    call = await rig.bot.join(
        rig.emulator.join_url(rig.emulator.config.meetings[0]), delta_roster=True
    )
    await call.wait_for("established", WITHIN)
    body = rig.requests("/communications/calls")[-1].json
    assert body["callOptions"]["isDeltaRosterEnabled"] is True
    await until(call, lambda c: "p-ola" in c.participants)
    invited_id = str(uuid.UUID(int=1009))
    await (await call.invite([shapes.identity_set(user_id=invited_id, tenant_id=TENANT_ID)])).wait(
        WITHIN
    )

    def invited(c: Call) -> list[Any]:
        return [
            p for p in c.participants.values() if p.identity.get("user", {}).get("id") == invited_id
        ]

    await until(call, lambda c: bool(invited(c)))
    await invited(call)[0].remove()
    await until(call, lambda c: not invited(c))
    assert "p-ola" in call.participants  # a delta removes only whom it names


# -- stopping: leave every call through Graph --------------------------------------------------


async def test_stop_hangs_up_every_call_and_waits_for_graph(rig: Rig) -> None:
    p2p = await established_p2p(rig)
    incoming = await rig.incoming()
    await incoming.wait_for("established", WITHIN)
    left = await rig.bot.stop()
    assert left == []
    assert {p2p.state, incoming.state} == {"terminated"}
    deleted = {r.path.rsplit("/", 1)[-1] for r in rig.emulator.requests if r.method == "DELETE"}
    assert deleted == {p2p.id, incoming.id}
    assert {rig.emulator.calls[c].state for c in deleted} == {"terminated"}


async def test_a_stopping_bot_rejects_incoming_calls_and_places_none(rig: Rig) -> None:
    rig.bot.admitting = False  # what stop() sets first
    call = await rig.incoming()
    await call.wait_for("terminated", WITHIN)
    assert rig.requests("/reject")[-1].json == {"reason": "busy"}
    assert not rig.requests("/answer")
    with pytest.raises(RuntimeError, match="stopping"):
        await rig.bot.create_call([user(1)])


async def test_stop_says_which_calls_graph_did_not_let_it_leave(rig: Rig) -> None:
    call = await established_p2p(rig)
    # Graph refuses everything about the call until the bot gives up its retries.
    await rig.admin_post(
        "/faults",
        {
            "status": 503,
            "retryAfterSeconds": 0,
            "count": 50,
            "pathPrefix": f"/v1.0/communications/calls/{call.id}",
        },
    )
    assert await rig.bot.stop(timeout_seconds=WITHIN) == [f"{call.id} (established)"]
    assert len(rig.requests(call.id)) >= 4  # DELETE tried, and tried again, every time refused
