"""Notification and signing-key faults injected by the emulator, and the bot's reaction to each:
deduplicated, stale ones ignored, lost ones read back, refused ones answered 401 and recovered,
rotated keys fetched. Bot and emulator over real HTTPS with real MSAL tokens and RS256
notification tokens; every call-level test ends with nothing left over (tests/leaks.py)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import ssl
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import pytest

from bot.app import Bot
from bot.call import Call
from bot.calls import CallCollection
from bot.devcerts import DevCerts
from bot.graph import shapes
from emulator import Emulator
from emulator.notifyfaults import CallSchedule, FaultInjector, NotificationFaults, SigningFaults
from emulator.odata import BadRequest
from tests.conftest import TENANT_ID, emulator_config, settings_for
from tests.leaks import Resources, back_to_baseline, snapshot

SCALE = 0.05  # Graph's timing rules 20x faster
GRACE = 0.3  # state_reconcile_seconds: a lost state notification is read back after this
WITHIN = 10.0
SPEAKER = "p-1"  # the test meeting's participant (tests/conftest.py)
CONNECTIONS = 4  # more than any test has in flight at once, either way
# ThreadPoolExecutor's default size, which asyncio's default executor has (concurrent.futures).
DEFAULT_EXECUTOR_WORKERS = min(32, (os.cpu_count() or 1) + 4)


@dataclass
class Rig:
    emulator: Emulator
    bot: Bot
    admin: aiohttp.ClientSession
    ssl: ssl.SSLContext

    async def admin_send(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        url = f"{self.emulator.base_url}/emulator{path}"
        async with self.admin.request(method, url, json=body, ssl=self.ssl) as response:
            data = await response.json() if response.content_type == "application/json" else None
            return response.status, data

    async def arm(self, kind: Literal["notifications", "signing"], body: dict[str, Any]) -> None:
        status, data = await self.admin_send("POST", f"/faults/{kind}", body)
        assert status == 204, data

    def graph_requests(self, method: str, suffix: str) -> list[Any]:
        return [r for r in self.emulator.requests if r.method == method and r.path.endswith(suffix)]

    @property
    def meeting_url(self) -> str:
        return self.emulator.join_url(self.emulator.config.meetings[0])

    async def join(self, media: Literal["app", "service"] = "service", **kw: Any) -> Call:
        return await self.bot.join(self.meeting_url, media=media, **kw)

    async def end(self, call: Call) -> None:
        """Hang up, and wait until both sides are done with the call: the bot has handled every
        event, the emulator has posted every notification (delayed ones too)."""
        if call.state != "terminated":
            await call.hang_up()
        await call.wait_for("terminated", WITHIN)
        await self.settled(call)

    async def settled(self, call: Call) -> None:
        sender = self.emulator.calls[call.id].sender
        assert sender is not None
        await asyncio.wait_for(asyncio.shield(sender), WITHIN)
        await asyncio.wait_for(self.bot.calls.idle(), WITHIN)
        # Timers and reads for this call (leaks.py does not see timers; another call of the
        # test may still be reading its roster back).
        assert self.bot.calls.reconciler.pending(call.id) == 0

    async def warm_up(self, media: Literal["app", "service"] = "service") -> Resources:
        """One clean call, pools filled to what a test may use at once, then the baseline."""
        call = await self.join(media)
        await call.wait_for("established", WITHIN)
        await self.end(call)
        await self.fill_pools(call)
        return snapshot()

    async def fill_pools(self, call: Call) -> None:
        """Pools keep what they grew to, and how far they grow depends on how requests
        overlapped: that is not the call's leak, so fill them to their high-water mark first.
        Keep-alive connections each way (concurrent requests open one each), the default
        executor (MSAL runs in it on every Graph request), the media codec pool."""
        url = f"/communications/calls/{call.id}"
        await asyncio.gather(
            *(self.bot.graph.request("GET", url) for _ in range(CONNECTIONS)),
            return_exceptions=True,  # 404: the call is over; the connection is what counts
        )
        ended = self.emulator.calls[call.id]
        statuses = await asyncio.gather(
            *(self.emulator.post_notifications(ended, []) for _ in range(CONNECTIONS))
        )
        assert statuses == [202] * CONNECTIONS
        await fill_executor(None, DEFAULT_EXECUTOR_WORKERS)
        codecs = self.bot.media._codec_executor  # the platform has no public handle on it
        await fill_executor(codecs, codecs._max_workers)


@pytest.fixture
async def rig(certs: DevCerts, client_ssl: ssl.SSLContext) -> AsyncIterator[Rig]:
    emulator = Emulator(emulator_config(certs, time_scale=SCALE))
    await emulator.start()
    bot = Bot(
        settings_for(emulator, certs).replace(state_reconcile_seconds=GRACE),
        window_scale=SCALE,
    )
    await bot.start()
    # The admin client closes each connection: a pooled one opened after the baseline would
    # count as a leak (an idle keep-alive connection is not the call's).
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as admin:
        yield Rig(emulator, bot, admin, client_ssl)
    await bot.stop()
    await emulator.stop()


async def fill_executor(executor: concurrent.futures.ThreadPoolExecutor | None, size: int) -> None:
    """Start every thread the pool can have: each waits for all the others at a barrier."""
    barrier = threading.Barrier(size)
    loop = asyncio.get_running_loop()
    await asyncio.gather(
        *(loop.run_in_executor(executor, barrier.wait, WITHIN) for _ in range(size))
    )


async def until(call: Call, predicate: Callable[[Call], bool]) -> None:
    """Wait (on roster events, never a sleep) until predicate(call) holds."""
    changed = asyncio.Event()
    call.events.on("participants", lambda c, update: changed.set())
    async with asyncio.timeout(WITHIN):
        while not predicate(call):
            await changed.wait()
            changed.clear()


def muted(call: Call, participant_id: str) -> bool:
    participant = call.participants.get(participant_id)
    return participant is not None and participant.is_muted


# -- the admin API and the policies -------------------------------------------------------------


BAD_NOTIFICATION_FAULTS: list[tuple[Any, str]] = [
    ({}, "at least one"),
    ({"dorp": {"count": 1}}, "Unknown key 'dorp'"),
    ({"drop": {}}, "probability, a count"),
    ({"drop": {"count": 0}}, "drop.count"),
    ({"drop": {"probability": 1.5}}, "drop.probability"),
    ({"drop": {"count": 1, "resource": "calls"}}, "drop.resource"),
    ({"drop": {"count": 1, "changeType": []}}, "drop.changeType"),
    ({"duplicate": {"count": 1, "colour": "red"}}, "Unknown key 'colour'"),
    ({"delay": {"count": 1}}, "delay.seconds"),
    ({"delay": {"count": 1, "seconds": 0}}, "delay.seconds"),
    ({"reorder": {"count": 1, "holdBack": 0}}, "reorder.holdBack"),
    ({"drop": {"count": 1}, "seed": "7"}, "seed"),
    ({"drop": 3}, "drop must be an object"),
    ([1, 2], "JSON object"),
]
BAD_SIGNING_FAULTS: list[tuple[Any, str]] = [
    ({}, "at least one"),
    ({"expired": {"count": 1, "seconds": -5}}, "expired.seconds"),
    ({"forged": {"count": 1, "sameKid": 1}}, "forged.sameKid"),
    ({"rotate": {"keepOld": "yes"}}, "rotate.keepOld"),
    ({"rotate": {"count": 1}}, "Unknown key 'count'"),
    ({"notYetValid": {}}, "probability, a count"),
]


async def test_the_admin_api_rejects_malformed_fault_bodies(
    emulator: Emulator, client_ssl: ssl.SSLContext
) -> None:
    async with aiohttp.ClientSession() as session:

        async def send(method: str, path: str, body: Any = None, raw: bytes | None = None) -> Any:
            url = f"{emulator.base_url}/emulator/faults/{path}"
            kw: dict[str, Any] = {"data": raw} if raw is not None else {"json": body}
            async with session.request(method, url, ssl=client_ssl, **kw) as response:
                text = await response.text()
                return response.status, text

        for kind, cases in (
            ("notifications", BAD_NOTIFICATION_FAULTS),
            ("signing", BAD_SIGNING_FAULTS),
        ):
            for body, message in cases:
                status, text = await send("POST", kind, body)
                assert (status, message in text) == (400, True), (body, text)
            assert (await send("POST", kind, raw=b"{not json"))[0] == 400
            status, text = await send("GET", kind)
            assert status == 200 and '"notifications": null' in text and '"signing": null' in text

        armed = {"seed": 3, "drop": {"probability": 0.5, "resource": ["participants"]}}
        assert (await send("POST", "notifications", armed))[0] == 204
        assert emulator.fault_injector.notifications == NotificationFaults.parse(armed)
        assert (await send("DELETE", "notifications"))[0] == 204
        assert emulator.fault_injector.notifications is None


def test_policies_parse_what_they_describe_and_refuse_the_rest() -> None:
    """The scenario loader's path: the same keys, BadRequest with the key's name."""
    notifications = NotificationFaults.parse(
        {
            "seed": 9,
            "drop": {"count": 2, "after": 1, "resource": "participants"},
            "duplicate": {"probability": 0.25, "changeType": ["updated", "deleted"]},
            "delay": {"probability": 0.1, "count": 3, "seconds": 0.5, "state": "established"},
            "reorder": {"count": 1, "holdBack": 2, "maxHoldSeconds": 1.5},
        }
    )
    assert NotificationFaults.parse(notifications.describe()) == notifications
    signing = SigningFaults.parse(
        {
            "expired": {"count": 1, "seconds": 900},
            "notYetValid": {"probability": 0.5},
            "forged": {"count": 2, "sameKid": True},
            "rotate": {"after": 4, "keepOld": False},
        }
    )
    assert SigningFaults.parse(signing.describe()) == signing
    for body, message in BAD_NOTIFICATION_FAULTS[:-1]:
        with pytest.raises(BadRequest, match=message.replace("(", r"\(")):
            NotificationFaults.parse(body)
    for body, message in BAD_SIGNING_FAULTS:
        with pytest.raises(BadRequest, match=message):
            SigningFaults.parse(body)


def _item(n: int, kind: str = "participants") -> tuple[str, dict[str, Any]]:
    url = "/communications/calls/c1" + ("" if kind == "call" else f"/{kind}")
    return ("https://bot/cb", {"changeType": "updated", "resourceUrl": url, "n": n})


def test_the_schedule_is_deterministic_and_bounded_in_time() -> None:
    """Pure: the same seed, the same notifications, the same times give the same order. A held
    notification goes after `holdBack` later ones or at its deadline; a delayed one when due."""

    def run(seed: int) -> list[Any]:
        faults = NotificationFaults.parse(
            {
                "seed": seed,
                "drop": {"probability": 0.3, "resource": "call"},
                "delay": {"count": 1, "after": 1, "seconds": 1.0, "resource": "participants"},
                "reorder": {"count": 1, "holdBack": 2, "maxHoldSeconds": 5.0},
            }
        )
        schedule = CallSchedule(FaultInjector([], faults), "c1")
        out: list[Any] = []
        for n in range(6):
            schedule.push(_item(n, "call" if n == 4 else "participants"), now=0.0)
            out += [e[1]["n"] for e in schedule.take(0.0)]
        assert schedule.next_wakeup() == 1.0
        out += ["t=1"] + [e[1]["n"] for e in schedule.take(1.0)]
        assert schedule.next_wakeup() is None
        return out

    # 0 is held, passes after 2 later ones (2 and 3: 1 is delayed); 4 (a call item) is dropped
    # or not by the seeded draw; 1 goes out when due.
    assert run(1) == run(1)
    orders = {tuple(run(seed)) for seed in range(20)}
    assert orders == {(2, 3, 0, 4, 5, "t=1", 1), (2, 3, 0, 5, "t=1", 1)}

    held = CallSchedule(FaultInjector([], NotificationFaults.parse({"reorder": {"count": 1}})), "c")
    held.push(_item(0), now=0.0)
    assert held.take(0.0) == [] and held.next_wakeup() == 5.0  # nothing passes it: deadline
    assert [e[1]["n"] for e in held.take(5.0)] == [0]


async def test_a_late_whole_roster_does_not_bring_back_who_left() -> None:
    """Default (whole) rosters, delivered 1, 3, 2, then 1 again: the speaker was muted in 2 and
    the guest left in 3; neither late roster undoes that."""
    calls = CallCollection()
    calls.get_or_add("c-late")  # a call the bot placed (others' notifications are only held)

    def roster(*entries: tuple[str, int, bool]) -> dict[str, Any]:
        return {
            "changeType": "updated",
            "resourceUrl": "/communications/calls/c-late/participants",
            "resourceData": [
                {"id": pid, "rosterSequenceNumber": n, "isMuted": m} for pid, n, m in entries
            ],
        }

    first = roster(("p1", 1, False), ("p2", 1, False))
    for item in (
        first,
        roster(("p1", 2, True)),  # 3: the guest left (the speaker unchanged since 2)
        roster(("p1", 2, True), ("p2", 1, False)),  # 2: the speaker muted, late
        first,  # 1 again, later still
    ):
        calls.apply(item)
    await calls.idle()
    call = calls.calls["c-late"]
    assert sorted(call.participants) == ["p1"] and muted(call, "p1")
    # Entries ignored: the guest in the late 2; both entries of the late 1.
    assert call.roster.stale_ignored == 3
    await calls.close()


# -- delivery faults ----------------------------------------------------------------------------


async def test_duplicated_notifications_are_applied_once(rig: Rig) -> None:
    baseline = await rig.warm_up()
    await rig.arm("notifications", {"seed": 1, "duplicate": {"probability": 1.0}})
    states: list[str] = []
    rosters: list[Any] = []
    call = await rig.join(delta_roster=True)
    call.events.on("state", lambda c, state: states.append(state))
    call.events.on("participants", lambda c, update: rosters.append(update))
    await call.wait_for("established", WITHIN)
    await until(call, lambda c: SPEAKER in c.participants)
    await rig.end(call)

    duplicated = rig.emulator.fault_injector.counts["duplicated"]
    assert duplicated >= 4  # establishing, established, roster, terminating, terminated
    assert rig.bot.calls.duplicates == duplicated  # every second copy recognised
    assert call.states_seen == ["establishing", "established", "terminating", "terminated"]
    assert states == ["establishing", "established", "terminating", "terminated"]
    assert len(rosters) == 1 and call.roster.stale_ignored == 0
    await back_to_baseline(baseline)


async def test_a_delayed_established_after_terminated_is_ignored(rig: Rig) -> None:
    baseline = await rig.warm_up()
    await rig.arm(
        "notifications",
        {"delay": {"count": 1, "seconds": 0.5, "resource": "call", "state": "established"}},
    )
    call = await rig.join()
    await call.hang_up()  # before the delayed `established` is posted
    await call.wait_for("terminated", WITHIN)
    await rig.settled(call)  # ... which the emulator posts after `deleted`

    log = [r.fault for r in rig.emulator.fault_injector.log]
    assert log == ["delayed"]
    assert call.states_seen == ["establishing", "terminating", "terminated"]
    assert call.stale_states == 1 and call.state == "terminated"
    await back_to_baseline(baseline)


async def test_a_reordered_roster_delta_does_not_roll_the_roster_back(rig: Rig) -> None:
    """The first roster delta (everyone, unmuted) is held back behind the second (the speaker
    muted): the bot applies the second, sees the gap, reads the roster back, and ignores the
    first when it arrives."""
    baseline = await rig.warm_up()
    await rig.arm(
        "notifications",
        {"reorder": {"count": 1, "holdBack": 1, "resource": "participants"}},
    )
    call = await rig.join(delta_roster=True)
    await call.wait_for("established", WITHIN)
    await (await call.operation(f"/participants/{SPEAKER}/mute", {})).wait(WITHIN)
    me = str(call.resource["myParticipantId"])
    await until(call, lambda c: muted(c, SPEAKER) and me in c.participants)  # read back
    await rig.end(call)

    assert [r.fault for r in rig.emulator.fault_injector.log] == ["held"]
    assert call.roster.gaps == 1 and call.roster.resyncs == 1
    assert call.roster.stale_ignored == 1  # the held first delta, when it came
    assert muted(call, SPEAKER)  # not rolled back to unmuted
    assert len(rig.graph_requests("GET", f"/calls/{call.id}/participants")) == 1
    await back_to_baseline(baseline)


async def test_a_dropped_roster_delta_is_resynced(rig: Rig) -> None:
    baseline = await rig.warm_up()
    # The second roster delta (the speaker muted) is lost; the third (an invitee) shows a gap.
    await rig.arm("notifications", {"drop": {"count": 1, "after": 1, "resource": "participants"}})
    call = await rig.join(delta_roster=True)
    await until(call, lambda c: SPEAKER in c.participants)
    await (await call.operation(f"/participants/{SPEAKER}/mute", {})).wait(WITHIN)
    invitee = str(uuid.UUID(int=4242))
    await (await call.invite([shapes.identity_set(user_id=invitee, tenant_id=TENANT_ID)])).wait(
        WITHIN
    )

    def invited(c: Call) -> bool:
        return any(p.identity.get("user", {}).get("id") == invitee for p in c.participants.values())

    await until(call, lambda c: invited(c) and muted(c, SPEAKER))
    await rig.end(call)

    (dropped,) = rig.emulator.fault_injector.log
    assert (dropped.fault, dropped.resource, dropped.sequence_number) == (
        "dropped",
        "participants",
        2,
    )
    assert call.roster.gaps == 1 and call.roster.resyncs == 1
    assert len(rig.graph_requests("GET", f"/calls/{call.id}/participants")) == 1
    await back_to_baseline(baseline)


async def test_lost_state_notifications_are_read_back_and_the_call_ends_cleanly(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """App-hosted media: `established` and the final `terminated` are lost. The bot reads the
    call back after the grace period (established; then 404, ended), and releases its media."""
    baseline = await rig.warm_up("app")
    await rig.arm(
        "notifications",
        {"drop": {"count": 2, "resource": "call", "state": ["established", "terminated"]}},
    )
    caplog.set_level(logging.INFO, logger="bot")
    reads_before = rig.bot.calls.reconciler.state_reads
    call = await rig.join("app")
    await call.wait_for("established", WITHIN)
    await until(call, lambda c: SPEAKER in c.participants)  # the roster, read back with it
    assert rig.bot.media.hot_loop.session_count == 1
    await call.hang_up()
    await call.wait_for("terminated", WITHIN)
    await rig.settled(call)

    assert [r.state for r in rig.emulator.fault_injector.log] == ["established", "terminated"]
    assert call.states_seen[:2] == ["establishing", "established"]
    assert call.states_seen[-1] == "terminated"
    reads = rig.graph_requests("GET", f"/communications/calls/{call.id}")
    assert len(reads) >= 2 and rig.bot.calls.reconciler.state_reads - reads_before == len(reads)
    assert "reading the call back" in caplog.text and "gone from Graph (404)" in caplog.text
    assert rig.bot.media.hot_loop.session_count == 0  # media released without `terminated`
    await back_to_baseline(baseline)


# -- signing faults -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "reason"), [("expired", "expired"), ("notYetValid", "not_yet_valid")]
)
async def test_an_expired_token_is_refused_and_the_call_recovers(
    rig: Rig, fault: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    baseline = await rig.warm_up()
    other = await rig.join()  # someone else's call, served throughout
    await other.wait_for("established", WITHIN)
    await rig.arm("signing", {fault: {"count": 1, "resource": "call", "state": "established"}})
    caplog.set_level(logging.INFO, logger="bot")
    call = await rig.join(delta_roster=True)
    await call.wait_for("established", WITHIN)  # read back after the grace period
    await until(call, lambda c: SPEAKER in c.participants)
    await rig.end(other)  # its notifications still accepted
    await rig.end(call)

    stats = rig.bot.webhook_stats
    assert stats is not None
    assert (stats.unauthorized, dict(stats.unauthorized_reasons)) == (1, {reason: 1})
    assert f"401 ({reason})" in caplog.text
    assert len(rig.graph_requests("GET", f"/communications/calls/{call.id}")) == 1
    assert other.states_seen[-1] == call.states_seen[-1] == "terminated"
    await back_to_baseline(baseline)


@pytest.mark.parametrize("keep_old", [True, False])
async def test_a_rotated_key_is_fetched_at_once_after_start_up(rig: Rig, keep_old: bool) -> None:
    """The bot fetched the keys at start-up; a rotation a moment later is still accepted on the
    first notification with the new kid (no waiting out the refresh interval)."""
    baseline = await rig.warm_up()
    old_kid = rig.emulator.notification_keys[0].kid
    await rig.arm("signing", {"rotate": {"keepOld": keep_old}})
    call = await rig.join()
    await call.wait_for("established", WITHIN)
    await rig.end(call)

    kids = [k.kid for k in rig.emulator.notification_keys]
    assert kids[0] != old_kid and (old_kid in kids) == keep_old
    validator = rig.bot.validator
    assert validator is not None and validator.rejected == 0 and validator.refreshes == 1
    assert rig.emulator.hits["GET /v1/keys"] == 2  # start-up, then the new kid
    await back_to_baseline(baseline)


@pytest.mark.parametrize(
    ("same_kid", "reason", "fetches"), [(False, "unknown_key", 3), (True, "bad_signature", 0)]
)
async def test_forged_tokens_are_refused_without_hammering_the_key_endpoint(
    rig: Rig, same_kid: bool, reason: str, fetches: int
) -> None:
    """Every notification of the call's start is forged (a key nobody published): 401 each,
    one key fetch per unknown kid inside the burst (bot/inbound_auth.py: 3, then one per
    BOT_NOTIFICATION_KEY_REFRESH_SECONDS), and the call recovered by reading it back."""
    baseline = await rig.warm_up()
    await rig.arm("signing", {"forged": {"count": 3, "sameKid": same_kid}})
    call = await rig.join()
    await call.wait_for("established", WITHIN)
    await until(call, lambda c: SPEAKER in c.participants)
    await rig.end(call)

    assert rig.emulator.fault_injector.counts["forged"] == 3
    stats = rig.bot.webhook_stats
    assert stats is not None and dict(stats.unauthorized_reasons) == {reason: 3}
    assert rig.emulator.hits["GET /v1/keys"] == 1 + fetches
    assert len(rig.graph_requests("GET", f"/communications/calls/{call.id}")) == 1
    assert call.roster.resyncs == 1
    await back_to_baseline(baseline)


# -- Graph throttling and outages (emulator/faults.py) -------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
async def test_throttled_graph_requests_are_retried_after_retry_after(
    rig: Rig, status: int
) -> None:
    """Graph answers the join and then the hang-up with 429/503 and Retry-After
    (https://learn.microsoft.com/en-us/graph/throttling): the bot waits what it is told, retries
    with the same client-request-id, and the call joins and ends as if nothing happened."""
    baseline = await rig.warm_up()
    rule = {"status": status, "retryAfterSeconds": 1, "count": 1, "pathPrefix": "/v1.0/"}
    status_code, _ = await rig.admin_send("POST", "/faults", rule)
    assert status_code == 204
    retries = rig.bot.graph.retries
    call = await rig.join()
    await call.wait_for("established", WITHIN)
    status_code, _ = await rig.admin_send("POST", "/faults", rule)
    assert status_code == 204
    await rig.end(call)

    assert rig.bot.graph.retries - retries == 2
    creates = rig.graph_requests("POST", "/communications/calls")[-2:]
    deletes = rig.graph_requests("DELETE", f"/communications/calls/{call.id}")
    assert len(deletes) == 2
    for first, second in (creates, deletes):
        assert second.received_at - first.received_at >= 1.0  # Retry-After: 1 honoured
        ids = [
            {k.lower(): v for k, v in r.headers.items()}["client-request-id"]
            for r in (first, second)
        ]
        assert ids[0] == ids[1]
    assert call.states_seen[-1] == "terminated"
    assert call.result_info is not None and call.result_info["code"] == 0
    await back_to_baseline(baseline)
